//! HTTP Basic authentication (RFC 7617) from a URL's `user:password@`, for the adapters
//! that speak HTTP (the webhook adapter and the WebSocket upgrade).
//!
//! The password only leaves a [`BasicAuth`] as the `Authorization` header value it sends;
//! `Debug` shows the user name and `***`. Basic auth sends the password base64-encoded,
//! which is not encryption: use it over `https://` / `wss://`.

use std::fmt;

use base64::Engine;

use crate::url::BrokerUrl;

/// The realm a server names in its `WWW-Authenticate` challenge.
pub const REALM: &str = "polybridge";

/// The `WWW-Authenticate` value of a `401` answer: `Basic realm="polybridge"`.
pub const CHALLENGE: &str = "Basic realm=\"polybridge\"";

/// A user name and password, held as the `Authorization: Basic …` value they make.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    user: String,
    header: String,
}

impl BasicAuth {
    /// The credentials of `user` with `password`.
    pub fn new(user: &str, password: &str) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        BasicAuth {
            user: user.to_owned(),
            header: format!("Basic {token}"),
        }
    }

    /// The credentials in `url` (`scheme://user:password@host…`), `None` without any. A
    /// user without a password has the empty password.
    pub fn from_url(url: &BrokerUrl) -> Option<Self> {
        let user = url.username();
        let password = url.password();
        if user.is_none() && password.is_none() {
            return None;
        }
        Some(BasicAuth::new(
            user.as_deref().unwrap_or(""),
            password.as_deref().unwrap_or(""),
        ))
    }

    /// The user name (safe to log).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The `Authorization` header value, `Basic base64(user:password)`. It holds the
    /// password: send it, never log it.
    pub fn header_value(&self) -> &str {
        &self.header
    }

    /// Whether an `Authorization` header value (`None`: the request had none) carries
    /// these credentials. Compares in time independent of where the values differ.
    pub fn matches(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization else {
            return false;
        };
        // The scheme name is case-insensitive (RFC 7617 §2, RFC 9110 §11.1).
        let expected = self.header.as_bytes();
        let scheme = "Basic ".len();
        if given.len() < scheme || !given[..scheme].eq_ignore_ascii_case(&expected[..scheme]) {
            return false;
        }
        constant_time_eq(&given[scheme..], &expected[scheme..])
    }
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// `a == b`, taking the same time for every pair of inputs of the same lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_matching_and_redaction() {
        // RFC 7617 §2's example.
        let a = BasicAuth::new("Aladdin", "open sesame");
        assert_eq!(a.header_value(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(a.matches(Some(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")));
        assert!(a.matches(Some(b"basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")));
        assert!(!a.matches(Some(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=")));
        assert!(!a.matches(Some(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==x")));
        assert!(!a.matches(Some(b"Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ==")));
        assert!(!a.matches(Some(b"Basic")));
        assert!(!a.matches(None));
        let debug = format!("{a:?}");
        assert!(
            debug.contains("Aladdin") && !debug.contains("sesame"),
            "{debug}"
        );
        assert!(!debug.contains("QWxh"), "{debug}");

        let url: BrokerUrl = "https://app:p%40ss@h/x".parse().unwrap();
        let a = BasicAuth::from_url(&url).unwrap();
        assert_eq!(a, BasicAuth::new("app", "p@ss"));
        assert!(BasicAuth::from_url(&"https://h/x".parse().unwrap()).is_none());
        assert_eq!(
            BasicAuth::from_url(&"http://app@h".parse().unwrap()),
            Some(BasicAuth::new("app", ""))
        );
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b""));
    }
}
