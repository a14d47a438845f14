//! The topic-pattern parser in every syntax on arbitrary text: it never panics; a pattern
//! it accepts prints back (in any syntax that can express it) to text that parses to the
//! same pattern; matching and captures agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polybridge_core::{Segment, Syntax, TopicPattern};

const SYNTAXES: [Syntax; 6] = [
    Syntax::Canonical,
    Syntax::Mqtt,
    Syntax::Nats,
    Syntax::Amqp,
    Syntax::RedisGlob,
    Syntax::KafkaRegex,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `pattern\ntopic`: the topic is matched against whatever parsed.
    let (pattern_text, topic) = text.split_once('\n').unwrap_or((text, "a.b.c"));
    for syntax in SYNTAXES {
        let Ok(pattern) = TopicPattern::parse_as(syntax, pattern_text) else {
            continue;
        };
        for to in SYNTAXES {
            if let Ok(printed) = pattern.to_syntax(to) {
                let back = TopicPattern::parse_as(to, &printed).unwrap_or_else(|e| {
                    panic!(
                        "{pattern:?} printed in {to:?} as {printed:?}, which does not parse: {e}"
                    )
                });
                // The one intended difference: every topic has at least one level, so
                // "zero or more levels" and "one or more levels" alone both mean "every
                // topic", which some syntaxes write one way only (NATS `>`, Redis `*`).
                let all = |p: &TopicPattern| {
                    p.segments() == [Segment::AnyLevels]
                        || p.segments() == [Segment::Single, Segment::AnyLevels]
                };
                let everything = all(&pattern) && all(&back);
                assert!(
                    back == pattern || everything,
                    "{syntax:?} {pattern_text:?} -> {to:?} {printed:?}: {back:?} != {pattern:?}"
                );
            }
        }
        for sep in ['.', '/'] {
            let captures = pattern.captures(topic, sep);
            assert_eq!(captures.is_some(), pattern.matches(topic, sep));
            if let Some(c) = captures {
                assert_eq!(c.len(), pattern.capture_count());
            }
        }
    }
});
