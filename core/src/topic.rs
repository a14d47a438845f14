//! Topic patterns (interim: canonical syntax only; the full module with every broker syntax
//! replaces this file).

use std::fmt;

/// A level of a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A literal level.
    Literal(String),
    /// Exactly one level.
    Single,
    /// Zero or more levels (last only).
    AnyLevels,
}

/// Pattern syntaxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Syntax {
    /// `a.*.>`
    Canonical,
    /// MQTT.
    Mqtt,
    /// NATS.
    Nats,
    /// AMQP.
    Amqp,
    /// Redis glob.
    RedisGlob,
    /// Kafka regex.
    KafkaRegex,
}

/// An invalid or inexpressible pattern.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// Invalid.
    #[error("invalid pattern {pattern:?}: {reason}")]
    Invalid {
        /// Pattern.
        pattern: String,
        /// Reason.
        reason: String,
    },
}

/// A topic pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    segments: Vec<Segment>,
}

impl TopicPattern {
    /// Parses canonical syntax.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        let parts: Vec<&str> = s.split('.').collect();
        let mut segments = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            match *p {
                "" => {
                    return Err(PatternError::Invalid {
                        pattern: s.into(),
                        reason: "empty level".into(),
                    })
                }
                "*" => segments.push(Segment::Single),
                ">" if last => {
                    segments.push(Segment::Single);
                    segments.push(Segment::AnyLevels)
                }
                "#" if last => segments.push(Segment::AnyLevels),
                ">" | "#" => {
                    return Err(PatternError::Invalid {
                        pattern: s.into(),
                        reason: "multi-level wildcard must be last".into(),
                    })
                }
                lit => segments.push(Segment::Literal(lit.into())),
            }
        }
        Ok(TopicPattern { segments })
    }

    /// Parses in `syntax` (interim: canonical and MQTT only).
    pub fn parse_as(syntax: Syntax, s: &str) -> Result<Self, PatternError> {
        match syntax {
            Syntax::Mqtt => TopicPattern::parse(&s.replace('+', "*").replace('/', ".")),
            _ => TopicPattern::parse(s),
        }
    }

    /// Wildcard captures (interim).
    pub fn captures<'t>(&self, topic: &'t str, separator: char) -> Option<Vec<&'t str>> {
        let levels: Vec<&str> = topic.split(separator).collect();
        let mut out = Vec::new();
        let mut pos = 0usize;
        let n = self.segments.len();
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Literal(_) => pos += 1,
                Segment::Single if i + 2 == n && self.segments[i + 1] == Segment::AnyLevels => {
                    let start: usize = levels[..pos].iter().map(|l| l.len() + 1).sum();
                    out.push(topic.get(start..)?);
                    return Some(out);
                }
                Segment::Single => {
                    out.push(*levels.get(pos)?);
                    pos += 1;
                }
                Segment::AnyLevels => {
                    let start: usize = levels[..pos].iter().map(|l| l.len() + 1).sum();
                    out.push(topic.get(start.min(topic.len())..)?);
                    return Some(out);
                }
            }
        }
        Some(out)
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether it has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str, separator: char) -> bool {
        let levels: Vec<&str> = topic.split(separator).collect();
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::AnyLevels => return true,
                Segment::Single => {
                    if i >= levels.len() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if levels.get(i) != Some(&l.as_str()) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == levels.len()
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let n = self.segments.len();
        let mut i = 0;
        while i < n {
            match &self.segments[i] {
                Segment::Single if i + 2 == n && self.segments[i + 1] == Segment::AnyLevels => {
                    parts.push(">".to_string());
                    i += 1;
                }
                Segment::Single => parts.push("*".into()),
                Segment::AnyLevels => parts.push("#".into()),
                Segment::Literal(l) => parts.push(l.clone()),
            }
            i += 1;
        }
        f.write_str(&parts.join("."))
    }
}

impl std::str::FromStr for TopicPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, PatternError> {
        TopicPattern::parse(s)
    }
}
