//! Topic patterns: one canonical form, converted exactly to and from each broker's syntax.
//!
//! A pattern is a list of levels. [`Segment::Literal`] matches one level equal to it,
//! [`Segment::Single`] matches exactly one level (which may be empty where the broker allows
//! empty levels) and [`Segment::AnyLevels`] — only last — matches zero or more levels. "One
//! or more levels" (NATS `>`) is `Single` followed by `AnyLevels`.
//!
//! The canonical text form separates levels with `.`: `*` is one level, `>` one or more
//! levels, `#` zero or more levels (the last two only at the end). `a.*.#` and `a.*.>` mean
//! the same and both display as `a.>`.
//!
//! | canonical | MQTT | NATS | AMQP binding key | Redis glob (`.` levels) | Kafka subscription |
//! |---|---|---|---|---|---|
//! | `a.b` | `a/b` | `a.b` | `a.b` | `a.b` | `a.b` (a plain topic) |
//! | `a.*.c` | `a/+/c` | `a.*.c` | `a.*.c` | refused | `^a\.[^.]*\.c$` |
//! | `a.>` | `a/+/#` | `a.>` | `a.*.#` | `a.*` | `^a\..*$` |
//! | `a.#` | `a/#` | refused | `a.#` | refused | `^a(\..*)?$` |
//! | `#` | `#` | `>` | `#` | `*` | `^.*$` |
//!
//! Refusals, with the reason in the error:
//! - NATS cannot match "zero or more levels after `a`" (`a/#` also matches `a` itself): use
//!   `a.>` (one or more) or two subscriptions.
//! - A Redis glob `*` also matches the separator, so a single-level wildcard before the end,
//!   or zero-or-more after a literal, cannot be expressed; `?` and `[..]` globs have no
//!   pattern equivalent.
//! - AMQP allows `#` anywhere; only a trailing `#` is accepted.
//! - A literal level containing the broker's separator or wildcard characters.
//! - Kafka accepts, as a regex, only the shapes produced by [`TopicPattern::to_kafka_regex`].
//!
//! MQTT note: wildcards in the first level do not match topics starting with `$` (such as
//! `$SYS/...`), as the MQTT specification requires; the pattern model does not represent
//! this, and [`TopicPattern::matches`] does not apply it.
//!
//! Captures ([`TopicPattern::captures`]) are numbered from 1 in the order the wildcards are
//! written; a trailing `>`/`#` is one capture holding the rest of the topic joined with the
//! separator. The bridge's destination templates use them: MQTT `sensors/+/temp` on
//! `sensors/kitchen/temp` gives `{1}` = `kitchen`.

use std::fmt;

/// One level of a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A level equal to this text.
    Literal(String),
    /// Exactly one level.
    Single,
    /// Zero or more levels; only as the last segment.
    AnyLevels,
}

/// A pattern syntax: the canonical form, or a broker's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Syntax {
    /// `a.*.>` — polybridge's canonical form.
    Canonical,
    /// MQTT topic filters: `a/+/#`.
    Mqtt,
    /// NATS subjects: `a.*.>`.
    Nats,
    /// AMQP topic-exchange binding keys: `a.*.#`.
    Amqp,
    /// Redis `PSUBSCRIBE` globs, with `.` as the level separator.
    RedisGlob,
    /// Kafka topic names or `^regex` subscriptions, with `.` as the level separator.
    KafkaRegex,
}

impl Syntax {
    fn name(self) -> &'static str {
        match self {
            Syntax::Canonical => "canonical",
            Syntax::Mqtt => "MQTT",
            Syntax::Nats => "NATS",
            Syntax::Amqp => "AMQP",
            Syntax::RedisGlob => "Redis",
            Syntax::KafkaRegex => "Kafka",
        }
    }
}

impl fmt::Display for Syntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A pattern that is invalid, or that a broker cannot express exactly.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The text is not a valid pattern in its syntax.
    #[error("invalid {syntax} pattern {pattern:?}: {reason}")]
    Invalid {
        /// The syntax it was read in.
        syntax: Syntax,
        /// The text.
        pattern: String,
        /// What is wrong.
        reason: String,
    },
    /// The pattern is valid but this broker's syntax cannot express it exactly.
    #[error("{syntax} cannot express {pattern:?}: {reason}")]
    Unsupported {
        /// The target syntax.
        syntax: Syntax,
        /// The pattern, in canonical form.
        pattern: String,
        /// Why, and what to use instead.
        reason: String,
    },
}

/// A topic pattern in canonical form. Construct it by parsing (`"a.*".parse()`,
/// [`TopicPattern::parse_as`]) or from segments ([`TopicPattern::from_segments`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    segments: Vec<Segment>,
}

impl TopicPattern {
    /// A pattern from segments: non-empty, `AnyLevels` only last.
    pub fn from_segments(segments: Vec<Segment>) -> Result<Self, PatternError> {
        let invalid = |reason: &str| PatternError::Invalid {
            syntax: Syntax::Canonical,
            pattern: format!("{segments:?}"),
            reason: reason.into(),
        };
        if segments.is_empty() {
            return Err(invalid("a pattern needs at least one level"));
        }
        if let Some(i) = segments.iter().position(|s| *s == Segment::AnyLevels) {
            if i + 1 != segments.len() {
                return Err(invalid("a multi-level wildcard must be the last level"));
            }
        }
        Ok(TopicPattern { segments })
    }

    /// The pattern matching exactly `topic` (levels split at `separator`).
    pub fn literal(topic: &str, separator: char) -> Self {
        TopicPattern {
            segments: topic
                .split(separator)
                .map(|l| Segment::Literal(l.to_owned()))
                .collect(),
        }
    }

    /// Parses the canonical form (`a.*.>`).
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        Self::parse_as(Syntax::Canonical, text)
    }

    /// Parses `text` written in `syntax`.
    pub fn parse_as(syntax: Syntax, text: &str) -> Result<Self, PatternError> {
        match syntax {
            Syntax::Canonical => parse_levels(Syntax::Canonical, text, '.', "*", &[">", "#"]),
            Syntax::Mqtt => Self::from_mqtt(text),
            Syntax::Nats => Self::from_nats(text),
            Syntax::Amqp => Self::from_amqp(text),
            Syntax::RedisGlob => Self::from_redis_glob(text),
            Syntax::KafkaRegex => Self::from_kafka_regex(text),
        }
    }

    /// Writes the pattern in `syntax`, or explains why it cannot.
    pub fn to_syntax(&self, syntax: Syntax) -> Result<String, PatternError> {
        match syntax {
            Syntax::Canonical => self.to_canonical(),
            Syntax::Mqtt => self.to_mqtt(),
            Syntax::Nats => self.to_nats(),
            Syntax::Amqp => self.to_amqp(),
            Syntax::RedisGlob => self.to_redis_glob(),
            Syntax::KafkaRegex => self.to_kafka_regex(),
        }
    }

    /// The canonical text, when it reads back as this pattern: a pattern from another
    /// syntax may have a literal level the canonical form cannot write (`a.b` or `*` in
    /// MQTT, an empty level). [`fmt::Display`] writes such patterns anyway, for messages.
    fn to_canonical(&self) -> Result<String, PatternError> {
        self.check_literals(Syntax::Canonical, &['.'], &["*", ">", "#"])?;
        if self
            .segments
            .iter()
            .any(|s| matches!(s, Segment::Literal(l) if l.is_empty()))
        {
            return Err(
                self.unsupported(Syntax::Canonical, "the canonical form has no empty levels")
            );
        }
        Ok(self.to_string())
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether the pattern has no wildcard (it names one topic).
    pub fn is_literal(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// How many captures a match yields (see [`TopicPattern::captures`]).
    pub fn capture_count(&self) -> usize {
        self.segments
            .iter()
            .enumerate()
            .filter(|(i, s)| match s {
                Segment::Single => !self.is_one_or_more_at(*i),
                Segment::AnyLevels => true,
                Segment::Literal(_) => false,
            })
            .count()
    }

    /// Whether `topic` (levels split at `separator`) matches.
    pub fn matches(&self, topic: &str, separator: char) -> bool {
        self.captures(topic, separator).is_some()
    }

    /// The parts of `topic` matched by the wildcards, in order, or `None` if it does not
    /// match. A trailing multi-level wildcard captures the rest of the topic as one string
    /// (empty when `#` matched zero levels).
    pub fn captures<'t>(&self, topic: &'t str, separator: char) -> Option<Vec<&'t str>> {
        let mut captures = Vec::new();
        let mut rest = Some(topic);
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Single if self.is_one_or_more_at(i) => {
                    // `>`: at least one more level; capture everything that is left.
                    captures.push(rest?);
                    return Some(captures);
                }
                Segment::AnyLevels => {
                    captures.push(rest.unwrap_or(""));
                    return Some(captures);
                }
                Segment::Single | Segment::Literal(_) => {
                    let r = rest?;
                    let (level, after) = match r.find(separator) {
                        Some(i) => (&r[..i], Some(&r[i + separator.len_utf8()..])),
                        None => (r, None),
                    };
                    if let Segment::Literal(l) = seg {
                        if l != level {
                            return None;
                        }
                    } else {
                        captures.push(level);
                    }
                    rest = after;
                }
            }
        }
        rest.is_none().then_some(captures)
    }

    /// Whether segment `i` is the `Single` of a trailing "one or more" (`>`).
    fn is_one_or_more_at(&self, i: usize) -> bool {
        self.segments[i] == Segment::Single
            && i + 2 == self.segments.len()
            && self.segments[i + 1] == Segment::AnyLevels
    }

    fn unsupported(&self, syntax: Syntax, reason: impl Into<String>) -> PatternError {
        PatternError::Unsupported {
            syntax,
            pattern: self.to_string(),
            reason: reason.into(),
        }
    }

    /// Literal levels, checked against characters `syntax` reserves.
    fn check_literals(
        &self,
        syntax: Syntax,
        reserved: &[char],
        whole: &[&str],
    ) -> Result<(), PatternError> {
        for s in &self.segments {
            if let Segment::Literal(l) = s {
                if let Some(c) = l.chars().find(|c| reserved.contains(c)) {
                    return Err(self.unsupported(
                        syntax,
                        format!("the level {l:?} contains {c:?}, which {syntax} reserves"),
                    ));
                }
                if whole.contains(&l.as_str()) {
                    return Err(
                        self.unsupported(syntax, format!("the level {l:?} is a {syntax} wildcard"))
                    );
                }
            }
        }
        Ok(())
    }

    /// Reads an MQTT topic filter (`a/+/#`).
    pub fn from_mqtt(text: &str) -> Result<Self, PatternError> {
        let invalid = |reason: &str| PatternError::Invalid {
            syntax: Syntax::Mqtt,
            pattern: text.to_owned(),
            reason: reason.into(),
        };
        if text.is_empty() {
            return Err(invalid("an MQTT topic filter cannot be empty"));
        }
        if text.len() > 65535 {
            return Err(invalid("an MQTT topic filter is at most 65535 bytes"));
        }
        if text.contains('\0') {
            return Err(invalid("an MQTT topic filter cannot contain NUL"));
        }
        let levels: Vec<&str> = text.split('/').collect();
        let mut segments = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            match *level {
                "+" => segments.push(Segment::Single),
                "#" if i + 1 == levels.len() => segments.push(Segment::AnyLevels),
                "#" => return Err(invalid("'#' must be the last level")),
                l if l.contains(['+', '#']) => {
                    return Err(invalid("'+' and '#' must occupy a whole level"))
                }
                l => segments.push(Segment::Literal(l.to_owned())),
            }
        }
        Ok(TopicPattern { segments })
    }

    /// Writes an MQTT topic filter.
    pub fn to_mqtt(&self) -> Result<String, PatternError> {
        self.check_literals(Syntax::Mqtt, &['/', '+', '#', '\0'], &[])?;
        let text = self.join('/', "+", None, "#");
        if text.is_empty() {
            // One empty level, e.g. the AMQP binding key "".
            return Err(self.unsupported(Syntax::Mqtt, "an MQTT topic filter cannot be empty"));
        }
        if text.len() > 65535 {
            return Err(
                self.unsupported(Syntax::Mqtt, "an MQTT topic filter is at most 65535 bytes")
            );
        }
        Ok(text)
    }

    /// Reads a NATS subject (`a.*.>`).
    pub fn from_nats(text: &str) -> Result<Self, PatternError> {
        let invalid = |reason: &str| PatternError::Invalid {
            syntax: Syntax::Nats,
            pattern: text.to_owned(),
            reason: reason.into(),
        };
        if text.chars().any(char::is_whitespace) {
            return Err(invalid("NATS subjects cannot contain whitespace"));
        }
        let levels: Vec<&str> = text.split('.').collect();
        let mut segments = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            match *level {
                "" => return Err(invalid("NATS subjects cannot have empty tokens")),
                "*" => segments.push(Segment::Single),
                ">" if i + 1 == levels.len() => {
                    segments.push(Segment::Single);
                    segments.push(Segment::AnyLevels);
                }
                ">" => return Err(invalid("'>' must be the last token")),
                l => segments.push(Segment::Literal(l.to_owned())),
            }
        }
        Ok(TopicPattern { segments })
    }

    /// Writes a NATS subject.
    pub fn to_nats(&self) -> Result<String, PatternError> {
        self.check_literals(Syntax::Nats, &['.', ' ', '\t', '\r', '\n'], &["*", ">"])?;
        // Any Unicode whitespace, as `from_nats` refuses (found by the fuzz target: a
        // vertical tab printed as a subject that did not parse back).
        if let Some(l) = self.segments.iter().find_map(|s| match s {
            Segment::Literal(l) if l.chars().any(char::is_whitespace) => Some(l),
            _ => None,
        }) {
            return Err(self.unsupported(
                Syntax::Nats,
                format!("the level {l:?} contains whitespace, which NATS subjects cannot"),
            ));
        }
        if self
            .segments
            .iter()
            .any(|s| matches!(s, Segment::Literal(l) if l.is_empty()))
        {
            return Err(self.unsupported(Syntax::Nats, "NATS subjects cannot have empty tokens"));
        }
        if self.segments == [Segment::AnyLevels] {
            // Every subject has at least one token, so "zero or more" is ">".
            return Ok(">".into());
        }
        let n = self.segments.len();
        if self.segments.last() == Some(&Segment::AnyLevels)
            && !self.is_one_or_more_at(n.saturating_sub(2))
        {
            return Err(self.unsupported(
                Syntax::Nats,
                "a multi-level wildcard after a literal also matches the parent level itself, which a NATS subject cannot; use `>` (one or more levels, canonical `a.>`) or subscribe to the parent as well",
            ));
        }
        Ok(self.join('.', "*", Some(">"), "#"))
    }

    /// Reads an AMQP topic-exchange binding key (`a.*.#`).
    pub fn from_amqp(text: &str) -> Result<Self, PatternError> {
        let invalid = |reason: &str| PatternError::Invalid {
            syntax: Syntax::Amqp,
            pattern: text.to_owned(),
            reason: reason.into(),
        };
        if text.len() > 255 {
            return Err(invalid("an AMQP binding key is at most 255 bytes"));
        }
        let levels: Vec<&str> = text.split('.').collect();
        let mut segments = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            match *level {
                "*" => segments.push(Segment::Single),
                "#" if i + 1 == levels.len() => segments.push(Segment::AnyLevels),
                "#" => {
                    return Err(PatternError::Unsupported {
                        syntax: Syntax::Canonical,
                        pattern: text.to_owned(),
                        reason: "AMQP allows '#' anywhere, but polybridge patterns accept it only as the last word".into(),
                    })
                }
                l => segments.push(Segment::Literal(l.to_owned())),
            }
        }
        Ok(TopicPattern { segments })
    }

    /// Writes an AMQP topic-exchange binding key.
    pub fn to_amqp(&self) -> Result<String, PatternError> {
        self.check_literals(Syntax::Amqp, &['.'], &["*", "#"])?;
        let text = self.join('.', "*", None, "#");
        if text.len() > 255 {
            return Err(self.unsupported(Syntax::Amqp, "an AMQP binding key is at most 255 bytes"));
        }
        Ok(text)
    }

    /// Reads a Redis `PSUBSCRIBE` glob: escaped literals, optionally ending in `.*`, or `*`.
    pub fn from_redis_glob(text: &str) -> Result<Self, PatternError> {
        let unsupported = |reason: &str| PatternError::Unsupported {
            syntax: Syntax::Canonical,
            pattern: text.to_owned(),
            reason: reason.into(),
        };
        if text == "*" {
            return Ok(TopicPattern {
                segments: vec![Segment::AnyLevels],
            });
        }
        let (body, one_or_more) = match text.strip_suffix(".*") {
            // `\.*` is an escaped '.', but `\\.*` is an escaped backslash before `.*`:
            // the '.' is escaped only after an odd number of backslashes (found by the fuzz
            // target: a literal level ending in '\' did not read back).
            Some(b) if b.chars().rev().take_while(|c| *c == '\\').count() % 2 == 0 => (b, true),
            _ => (text, false),
        };
        let mut literal = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e) => literal.push(e),
                    None => return Err(PatternError::Invalid {
                        syntax: Syntax::RedisGlob,
                        pattern: text.to_owned(),
                        reason: "a trailing backslash escapes nothing".into(),
                    }),
                },
                '*' => return Err(unsupported("a glob '*' before the end also matches '.', so it is not a level wildcard; only a trailing '.*' (or '*' alone) is accepted")),
                '?' | '[' => return Err(unsupported("'?' and '[...]' globs match characters, not levels, and have no pattern equivalent")),
                c => literal.push(c),
            }
        }
        if body.is_empty() {
            return Err(PatternError::Invalid {
                syntax: Syntax::RedisGlob,
                pattern: text.to_owned(),
                reason: "empty".into(),
            });
        }
        let mut segments: Vec<Segment> = literal
            .split('.')
            .map(|l| Segment::Literal(l.to_owned()))
            .collect();
        if one_or_more {
            segments.push(Segment::Single);
            segments.push(Segment::AnyLevels);
        }
        Ok(TopicPattern { segments })
    }

    /// Writes a Redis `PSUBSCRIBE` glob (levels joined with `.`).
    pub fn to_redis_glob(&self) -> Result<String, PatternError> {
        let n = self.segments.len();
        if self.segments == [Segment::AnyLevels]
            || self.segments == [Segment::Single, Segment::AnyLevels]
        {
            return Ok("*".into());
        }
        let (literals, tail) = if n >= 2 && self.is_one_or_more_at(n - 2) {
            (&self.segments[..n - 2], ".*")
        } else {
            (&self.segments[..], "")
        };
        let mut out = String::new();
        for (i, s) in literals.iter().enumerate() {
            match s {
                Segment::Literal(l) => {
                    if l.contains('.') {
                        return Err(self.unsupported(Syntax::RedisGlob, format!("the level {l:?} contains '.', the level separator")));
                    }
                    if i > 0 {
                        out.push('.');
                    }
                    for c in l.chars() {
                        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                }
                Segment::Single => return Err(self.unsupported(Syntax::RedisGlob, "a glob '*' also matches '.', so a single-level wildcard before the end cannot be expressed")),
                Segment::AnyLevels => return Err(self.unsupported(Syntax::RedisGlob, "zero-or-more levels after a literal would also need to match the parent channel, which one glob cannot; use one-or-more (canonical `a.>`)")),
            }
        }
        if out.is_empty() {
            // One empty level (the AMQP binding key ""), alone or before `.*`.
            return Err(self.unsupported(
                Syntax::RedisGlob,
                "a Redis glob needs a non-empty channel name",
            ));
        }
        out.push_str(tail);
        Ok(out)
    }

    /// Reads a Kafka topic name (split into levels at `.`) or a `^regex` in one of the
    /// shapes [`TopicPattern::to_kafka_regex`] writes.
    pub fn from_kafka_regex(text: &str) -> Result<Self, PatternError> {
        let Some(re) = text.strip_prefix('^') else {
            check_kafka_topic(text).map_err(|reason| PatternError::Invalid {
                syntax: Syntax::KafkaRegex,
                pattern: text.to_owned(),
                reason,
            })?;
            return Ok(TopicPattern::literal(text, '.'));
        };
        let unsupported = || {
            PatternError::Unsupported {
            syntax: Syntax::Canonical,
            pattern: text.to_owned(),
            reason: "only regexes produced from a topic pattern are accepted (levels as escaped literals or [^.]*, ending in $, \\..*$ or (\\..*)?$)".into(),
        }
        };
        let body = re.strip_suffix('$').ok_or_else(unsupported)?;
        if body == ".*" {
            return Ok(TopicPattern {
                segments: vec![Segment::AnyLevels],
            });
        }
        let (levels_text, tail) = if let Some(b) = body.strip_suffix(r"(\..*)?") {
            (b, Some(false))
        } else if let Some(b) = body.strip_suffix(r"\..*") {
            (b, Some(true))
        } else {
            (body, None)
        };
        let mut segments = Vec::new();
        for level in levels_text.split(r"\.") {
            if level == "[^.]*" {
                segments.push(Segment::Single);
                continue;
            }
            let mut lit = String::new();
            let mut chars = level.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => lit.push(chars.next().ok_or_else(unsupported)?),
                    c if c.is_ascii_alphanumeric() || c == '_' => lit.push(c),
                    '-' => lit.push(c),
                    _ => return Err(unsupported()),
                }
            }
            if lit.is_empty() {
                return Err(unsupported());
            }
            segments.push(Segment::Literal(lit));
        }
        match tail {
            Some(true) => {
                segments.push(Segment::Single);
                segments.push(Segment::AnyLevels);
            }
            Some(false) => segments.push(Segment::AnyLevels),
            None => {}
        }
        Ok(TopicPattern { segments })
    }

    /// Writes a Kafka subscription: a plain topic name for a literal pattern, else an
    /// anchored regex over `.`-separated levels (rdkafka treats a leading `^` as a regex).
    pub fn to_kafka_regex(&self) -> Result<String, PatternError> {
        for s in &self.segments {
            if let Segment::Literal(l) = s {
                if l.is_empty()
                    || !l
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(self.unsupported(Syntax::KafkaRegex, format!("the level {l:?} is not a Kafka topic name part (letters, digits, '_' and '-')")));
                }
            }
        }
        if self.is_literal() {
            let topic = self.join('.', "", None, "");
            check_kafka_topic(&topic)
                .map_err(|reason| self.unsupported(Syntax::KafkaRegex, reason))?;
            return Ok(topic);
        }
        if self.segments == [Segment::AnyLevels]
            || self.segments == [Segment::Single, Segment::AnyLevels]
        {
            return Ok("^.*$".into());
        }
        let mut out = String::from("^");
        let mut first = true;
        for (i, s) in self.segments.iter().enumerate() {
            match s {
                Segment::Single if self.is_one_or_more_at(i) => {
                    out.push_str(r"\..*");
                    break;
                }
                Segment::AnyLevels => out.push_str(r"(\..*)?"),
                Segment::Single | Segment::Literal(_) => {
                    if !first {
                        out.push_str(r"\.");
                    }
                    first = false;
                    match s {
                        Segment::Single => out.push_str("[^.]*"),
                        Segment::Literal(l) => out.push_str(&l.replace('-', r"\-")),
                        Segment::AnyLevels => {}
                    }
                }
            }
        }
        out.push('$');
        Ok(out)
    }

    /// Joins levels with `sep`, writing `single` for a one-level wildcard, `zero_or_more` for
    /// a trailing multi-level one, and `one_or_more` (if the syntax has such a token, like
    /// NATS `>`) for a trailing "one or more" — otherwise it is written `single` + `zero_or_more`.
    fn join(
        &self,
        sep: char,
        single: &str,
        one_or_more: Option<&str>,
        zero_or_more: &str,
    ) -> String {
        let mut parts: Vec<&str> = Vec::with_capacity(self.segments.len());
        let mut i = 0;
        while i < self.segments.len() {
            match &self.segments[i] {
                Segment::Literal(l) => parts.push(l),
                Segment::Single if self.is_one_or_more_at(i) => {
                    match one_or_more {
                        Some(token) => parts.push(token),
                        None => parts.extend([single, zero_or_more]),
                    }
                    i += 1;
                }
                Segment::Single => parts.push(single),
                Segment::AnyLevels => parts.push(zero_or_more),
            }
            i += 1;
        }
        parts.join(&sep.to_string())
    }
}

/// Reads levels split at `sep`, with `single` and the trailing multi-level tokens
/// (`multi[0]` one or more, `multi[1]` zero or more).
fn parse_levels(
    syntax: Syntax,
    text: &str,
    sep: char,
    single: &str,
    multi: &[&str; 2],
) -> Result<TopicPattern, PatternError> {
    let invalid = |reason: String| PatternError::Invalid {
        syntax,
        pattern: text.to_owned(),
        reason,
    };
    let levels: Vec<&str> = text.split(sep).collect();
    let mut segments = Vec::new();
    for (i, level) in levels.iter().enumerate() {
        let last = i + 1 == levels.len();
        if level.is_empty() {
            return Err(invalid(format!(
                "empty level (levels are separated by '{sep}')"
            )));
        } else if *level == single {
            segments.push(Segment::Single);
        } else if *level == multi[0] || *level == multi[1] {
            if !last {
                return Err(invalid(format!("'{level}' must be the last level")));
            }
            if *level == multi[0] {
                segments.push(Segment::Single);
            }
            segments.push(Segment::AnyLevels);
        } else {
            segments.push(Segment::Literal((*level).to_owned()));
        }
    }
    Ok(TopicPattern { segments })
}

fn check_kafka_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic == "." || topic == ".." {
        return Err("a Kafka topic name cannot be empty, '.' or '..'".into());
    }
    if topic.len() > 249 {
        return Err("a Kafka topic name is at most 249 characters".into());
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "a Kafka topic name may contain only letters, digits, '.', '_' and '-', not {c:?}"
        ));
    }
    Ok(())
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.join('.', "*", Some(">"), "#"))
    }
}

impl std::str::FromStr for TopicPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, PatternError> {
        TopicPattern::parse(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s).unwrap()
    }

    #[test]
    fn canonical_form_parses_and_normalises() {
        assert_eq!(p("a.*.#").to_string(), "a.>");
        assert_eq!(
            p("a.>").segments(),
            &[
                Segment::Literal("a".into()),
                Segment::Single,
                Segment::AnyLevels
            ]
        );
        assert_eq!(p("a.>").to_string(), "a.>");
        assert_eq!(p("#").to_string(), "#");
        assert!(p("a.b").is_literal());
        for bad in ["a..b", ".a", "a.", "a.>.b", "#.a", ""] {
            let e = TopicPattern::parse(bad).unwrap_err();
            assert!(matches!(e, PatternError::Invalid { .. }), "{bad}: {e}");
        }
        assert!(TopicPattern::parse("a.#.b")
            .unwrap_err()
            .to_string()
            .contains("must be the last level"));
    }

    #[test]
    fn mqtt_round_trips_and_conversions() {
        for s in [
            "a/b", "a/+/c", "a/#", "#", "+", "a//b", "/a", "a/+/#", "$SYS/#",
        ] {
            assert_eq!(
                TopicPattern::from_mqtt(s).unwrap().to_mqtt().unwrap(),
                s,
                "{s}"
            );
        }
        assert_eq!(
            TopicPattern::from_nats("a.>").unwrap().to_mqtt().unwrap(),
            "a/+/#"
        );
        assert_eq!(
            TopicPattern::from_mqtt("a/+/#").unwrap().to_nats().unwrap(),
            "a.>"
        );
        for bad in ["a/#/b", "a/b+", "a#", ""] {
            assert!(
                matches!(
                    TopicPattern::from_mqtt(bad),
                    Err(PatternError::Invalid { .. })
                ),
                "{bad}"
            );
        }
        assert!(TopicPattern::from_mqtt(&"a".repeat(65536)).is_err());
        let e = TopicPattern::literal("a/b", '.').to_mqtt().unwrap_err();
        assert!(e.to_string().contains("MQTT reserves"), "{e}");
    }

    #[test]
    fn nats_round_trips_and_refusals() {
        for s in ["a.b", "a.*.c", "a.>", ">", "*", "a.*.>"] {
            assert_eq!(
                TopicPattern::from_nats(s).unwrap().to_nats().unwrap(),
                s,
                "{s}"
            );
        }
        assert_eq!(p("#").to_nats().unwrap(), ">");
        let e = TopicPattern::from_mqtt("a/#")
            .unwrap()
            .to_nats()
            .unwrap_err();
        assert!(
            matches!(
                e,
                PatternError::Unsupported {
                    syntax: Syntax::Nats,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("parent level"), "{e}");
        for bad in ["a..b", "a.>.b", "a b"] {
            assert!(
                matches!(
                    TopicPattern::from_nats(bad),
                    Err(PatternError::Invalid { .. })
                ),
                "{bad}"
            );
        }
        assert!(TopicPattern::from_mqtt("a//b").unwrap().to_nats().is_err());
    }

    #[test]
    fn amqp_round_trips_and_refusals() {
        for s in ["a.b", "a.*.c", "a.#", "#", "a.*.#", "a..b"] {
            assert_eq!(
                TopicPattern::from_amqp(s).unwrap().to_amqp().unwrap(),
                s,
                "{s}"
            );
        }
        assert_eq!(
            TopicPattern::from_nats("a.>").unwrap().to_amqp().unwrap(),
            "a.*.#"
        );
        let e = TopicPattern::from_amqp("a.#.b").unwrap_err();
        assert!(e.to_string().contains("only as the last word"), "{e}");
        assert!(TopicPattern::from_amqp(&"a".repeat(256)).is_err());
        assert!(TopicPattern::from_mqtt("a.b/c").unwrap().to_amqp().is_err());
    }

    #[test]
    fn redis_glob_round_trips_and_refusals() {
        for s in ["a.b", "a.*", "*", r"a\*b.c"] {
            assert_eq!(
                TopicPattern::from_redis_glob(s)
                    .unwrap()
                    .to_redis_glob()
                    .unwrap(),
                s,
                "{s}"
            );
        }
        assert_eq!(p("a.>").to_redis_glob().unwrap(), "a.*");
        assert_eq!(p(">").to_redis_glob().unwrap(), "*");
        let e = p("a.*.b").to_redis_glob().unwrap_err();
        assert!(
            matches!(
                e,
                PatternError::Unsupported {
                    syntax: Syntax::RedisGlob,
                    ..
                }
            ),
            "{e}"
        );
        assert!(p("a.#").to_redis_glob().is_err());
        for bad in ["h?llo", "a[bc]", "a*", "a.*.b"] {
            assert!(TopicPattern::from_redis_glob(bad).is_err(), "{bad}");
        }
        assert!(TopicPattern::from_redis_glob(r"a\*b")
            .unwrap()
            .matches("a*b", '.'));
    }

    #[test]
    fn kafka_round_trips_and_refusals() {
        assert_eq!(
            p("orders.created").to_kafka_regex().unwrap(),
            "orders.created"
        );
        assert_eq!(p("orders.*").to_kafka_regex().unwrap(), r"^orders\.[^.]*$");
        assert_eq!(p("a.*.c").to_kafka_regex().unwrap(), r"^a\.[^.]*\.c$");
        assert_eq!(p("a.>").to_kafka_regex().unwrap(), r"^a\..*$");
        assert_eq!(p("a.#").to_kafka_regex().unwrap(), r"^a(\..*)?$");
        assert_eq!(p("#").to_kafka_regex().unwrap(), "^.*$");
        assert_eq!(
            p("my-topic.*").to_kafka_regex().unwrap(),
            r"^my\-topic\.[^.]*$"
        );
        for s in [
            "orders.created",
            r"^orders\.[^.]*$",
            r"^a\.[^.]*\.c$",
            r"^a\..*$",
            r"^a(\..*)?$",
            r"^my\-topic\.[^.]*$",
        ] {
            assert_eq!(
                TopicPattern::from_kafka_regex(s)
                    .unwrap()
                    .to_kafka_regex()
                    .unwrap(),
                s,
                "{s}"
            );
        }
        assert!(TopicPattern::from_kafka_regex("^(foo|bar)$").is_err());
        assert!(TopicPattern::from_kafka_regex("bad topic").is_err());
        assert!(TopicPattern::from_kafka_regex(&"a".repeat(250)).is_err());
        assert!(TopicPattern::from_mqtt("a b/c")
            .unwrap()
            .to_kafka_regex()
            .is_err());
    }

    /// The `topic_pattern` fuzz target's round-trip property: `to_syntax(Canonical)` of a
    /// pattern read in another syntax must refuse what the canonical form cannot write.
    #[test]
    fn canonical_refuses_literals_it_cannot_write() {
        for mqtt in ["a.b/c", "a/*", "x/>", "a//b", "/a"] {
            let Ok(p) = TopicPattern::from_mqtt(mqtt) else {
                continue;
            };
            assert!(
                p.to_syntax(Syntax::Canonical).is_err(),
                "{mqtt:?} printed as {:?}",
                p.to_syntax(Syntax::Canonical)
            );
        }
        // Found by the fuzz target: the empty AMQP binding key printed as the empty MQTT
        // filter, which MQTT refuses.
        let empty = TopicPattern::from_amqp("").unwrap();
        assert!(empty.to_mqtt().is_err());
        assert!(empty.to_redis_glob().is_err());
        let backslash = TopicPattern::from_mqtt("a\\/+/#").unwrap();
        let glob = backslash.to_redis_glob().unwrap();
        assert_eq!(glob, "a\\\\.*");
        assert_eq!(TopicPattern::from_redis_glob(&glob).unwrap(), backslash);
        let vt = TopicPattern::from_mqtt("a\u{b}b/c\u{85}").unwrap();
        assert!(vt.to_nats().is_err());
        assert!(TopicPattern::from_amqp(".*")
            .unwrap()
            .to_redis_glob()
            .is_err());
        let p = TopicPattern::from_mqtt("a/+/#").unwrap();
        assert_eq!(p.to_syntax(Syntax::Canonical).unwrap(), "a.>");
        assert_eq!(TopicPattern::parse("a.>").unwrap(), p);
    }

    #[test]
    fn parse_as_and_to_syntax_dispatch() {
        let all = [
            Syntax::Canonical,
            Syntax::Mqtt,
            Syntax::Nats,
            Syntax::Amqp,
            Syntax::RedisGlob,
            Syntax::KafkaRegex,
        ];
        let pattern = p("a.>");
        for s in all {
            let text = pattern.to_syntax(s).unwrap();
            assert_eq!(
                TopicPattern::parse_as(s, &text).unwrap(),
                pattern,
                "{s}: {text}"
            );
        }
    }

    #[test]
    fn matching_and_captures() {
        let m = TopicPattern::from_mqtt("sensors/+/temp").unwrap();
        assert_eq!(
            m.captures("sensors/kitchen/temp", '/'),
            Some(vec!["kitchen"])
        );
        assert_eq!(m.captures("sensors//temp", '/'), Some(vec![""]));
        assert_eq!(m.captures("sensors/a/b/temp", '/'), None);
        assert_eq!(m.capture_count(), 1);
        let gt = p("a.>");
        assert_eq!(gt.captures("a.b.c", '.'), Some(vec!["b.c"]));
        assert_eq!(gt.captures("a", '.'), None);
        assert_eq!(gt.capture_count(), 1);
        let hash = p("a.#");
        assert_eq!(hash.captures("a", '.'), Some(vec![""]));
        assert_eq!(hash.captures("a.b.c", '.'), Some(vec!["b.c"]));
        assert_eq!(hash.captures("ab", '.'), None);
        let two = p("*.x.*.>");
        assert_eq!(two.captures("1.x.2.3.4", '.'), Some(vec!["1", "2", "3.4"]));
        assert_eq!(two.capture_count(), 3);
        assert!(p("#").matches("anything.at.all", '.'));
        assert!(!p("a.b").matches("a.b.c", '.'));
        assert!(p("a.b").matches("a.b", '.'));
    }

    /// For many patterns × topics, `matches` agrees with a plain recursive matcher over
    /// levels, in canonical and MQTT form.
    #[test]
    fn matching_agrees_with_a_reference_matcher() {
        fn reference(pattern: &[Segment], levels: &[&str]) -> bool {
            match (pattern.first(), levels.first()) {
                (None, None) => true,
                (Some(Segment::AnyLevels), _) => true,
                (Some(Segment::Single), Some(_)) => reference(&pattern[1..], &levels[1..]),
                (Some(Segment::Literal(l)), Some(t)) => {
                    l == t && reference(&pattern[1..], &levels[1..])
                }
                _ => false,
            }
        }
        let patterns = [
            "a", "a.b", "*", "a.*", "*.b", "a.>", "a.#", "#", ">", "*.*", "a.*.c", "*.>", "a.b.#",
        ];
        let topics = [
            "a", "b", "a.b", "a.c", "b.b", "a.b.c", "a.x.c", "a.b.c.d", "x.y", "a..c", "",
        ];
        for pat in patterns {
            let pattern = p(pat);
            let mqtt = TopicPattern::from_mqtt(&pattern.to_mqtt().unwrap()).unwrap();
            for topic in topics {
                let levels: Vec<&str> = topic.split('.').collect();
                let expected = reference(pattern.segments(), &levels);
                assert_eq!(pattern.matches(topic, '.'), expected, "{pat} on {topic:?}");
                assert_eq!(
                    mqtt.matches(&topic.replace('.', "/"), '/'),
                    expected,
                    "mqtt {pat} on {topic:?}"
                );
            }
        }
    }
}
