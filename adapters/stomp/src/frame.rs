//! STOMP 1.2 frames and header escaping.
//!
//! A frame is a command, ordered headers (a repeated name keeps every value; STOMP 1.2 says
//! the first one counts, which [`Frame::header`] returns) and a body of bytes. Escaping of
//! header names and values (`\\` `\n` `\r` `\c` for `\`, LF, CR and `:`) happens in the
//! codec ([`crate::codec`]), never here: a `Frame` always holds the decoded text.

use bytes::Bytes;

/// One STOMP frame, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// The command, e.g. `SEND`, `MESSAGE`, `RECEIPT`.
    pub command: String,
    /// Headers in wire order, unescaped.
    pub headers: Vec<(String, String)>,
    /// The body (may contain NUL bytes when `content-length` is given).
    pub body: Bytes,
}

impl Frame {
    /// A frame with this command, no headers and no body.
    pub fn new(command: impl Into<String>) -> Self {
        Frame {
            command: command.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Appends a header.
    pub fn header_push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.push((name.into(), value.into()));
    }

    /// Appends a header, builder style.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.header_push(name, value);
        self
    }

    /// Sets the body, builder style.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of header `name` (STOMP 1.2: the first occurrence wins).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether headers of this command are written and read without escaping: the STOMP
    /// 1.2 specification exempts `CONNECT` and `CONNECTED` (for 1.0 compatibility).
    pub fn escapes_headers(command: &str) -> bool {
        !matches!(command, "CONNECT" | "CONNECTED")
    }
}

/// Escapes a header name or value: `\` → `\\`, LF → `\n`, CR → `\r`, `:` → `\c`.
pub fn escape(text: &str, out: &mut Vec<u8>) {
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b':' => out.extend_from_slice(b"\\c"),
            _ => out.push(b),
        }
    }
}

/// Undoes [`escape`]. An undefined escape sequence (`\t`, a trailing `\`) is an error, as
/// STOMP 1.2 requires.
pub fn unescape(raw: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'\\' {
            let next = raw.get(i + 1).copied();
            out.push(match next {
                Some(b'\\') => b'\\',
                Some(b'n') => b'\n',
                Some(b'r') => b'\r',
                Some(b'c') => b':',
                Some(other) => {
                    return Err(format!(
                        "undefined escape sequence \\{} in a header",
                        char::from(other).escape_default()
                    ))
                }
                None => return Err("a header ends with a lone backslash".into()),
            });
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a header is not valid UTF-8".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_every_special_character() {
        for text in [
            "",
            "plain",
            "a:b",
            "back\\slash",
            "line\nfeed",
            "cr\r",
            "\\c:\\n\n",
            "ünï:✓",
        ] {
            let mut out = Vec::new();
            escape(text, &mut out);
            assert!(!out.contains(&b':') && !out.contains(&b'\n') && !out.contains(&b'\r'));
            assert_eq!(unescape(&out).unwrap(), text);
        }
        let mut out = Vec::new();
        escape("a:b\\c\nd\re", &mut out);
        assert_eq!(out, b"a\\cb\\\\c\\nd\\re");
    }

    #[test]
    fn undefined_escapes_are_errors() {
        assert!(unescape(b"a\\tb").unwrap_err().contains("\\t"));
        assert!(unescape(b"a\\").unwrap_err().contains("backslash"));
        assert!(unescape(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn first_header_wins() {
        let f = Frame::new("MESSAGE")
            .with_header("a", "1")
            .with_header("a", "2");
        assert_eq!(f.header("a"), Some("1"));
        assert_eq!(f.header("b"), None);
        assert!(!Frame::escapes_headers("CONNECT"));
        assert!(!Frame::escapes_headers("CONNECTED"));
        assert!(Frame::escapes_headers("SEND"));
    }
}
