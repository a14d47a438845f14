//! Broker URLs: parsed once, printed with the password redacted everywhere.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// A parsed broker URL such as `amqp://user:pass@host:5672/vhost?prefetch=100`.
///
/// `Display` and `Debug` redact the password (`amqp://user:***@host:5672/vhost`), so a
/// `BrokerUrl` can be logged and put into errors. [`BrokerUrl::password`] gives the secret to
/// the adapter that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// The text as given (with the password): the source of `hosts` and, redacted, of `Display`.
    raw: String,
    /// Parsed form; for a host list, parsed with the first host only.
    url: url::Url,
    options: BTreeMap<String, String>,
}

impl BrokerUrl {
    /// Parses `text`. Query options become [`BrokerUrl::options`]; a repeated option is an error.
    pub fn parse(text: &str) -> Result<Self> {
        let url = url::Url::parse(&first_host_only(text)).map_err(|e| {
            Error::config(
                "polybridge",
                format!("invalid broker URL {:?}: {e}", redact_text(text)),
            )
        })?;
        let mut options = BTreeMap::new();
        for (k, v) in url.query_pairs() {
            if options.insert(k.to_string(), v.to_string()).is_some() {
                return Err(Error::config(
                    "polybridge",
                    format!("option {k:?} is given twice in {}", redact_text(text)),
                ));
            }
        }
        Ok(BrokerUrl {
            raw: text.to_owned(),
            url,
            options,
        })
    }

    /// The scheme, e.g. `amqp`.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The host, if any.
    pub fn host(&self) -> Option<&str> {
        self.url.host_str()
    }

    /// The port, if given.
    pub fn port(&self) -> Option<u16> {
        self.url.port()
    }

    /// The user name, if given (percent-decoded).
    pub fn username(&self) -> Option<String> {
        let u = self.url.username();
        (!u.is_empty()).then(|| percent_decode(u))
    }

    /// The password, if given (percent-decoded). Never log it.
    pub fn password(&self) -> Option<String> {
        self.url.password().map(percent_decode)
    }

    /// The path without its leading `/` (percent-decoded): AMQP vhost, Redis db index, …
    pub fn path(&self) -> String {
        percent_decode(self.url.path().trim_start_matches('/'))
    }

    /// Query options.
    pub fn options(&self) -> &BTreeMap<String, String> {
        &self.options
    }

    /// One query option.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    /// The `host:port` pairs of a comma-separated host list (`kafka://h1:9092,h2:9092`).
    /// The `url` crate accepts only one host, so this reads the authority text itself.
    pub fn hosts(&self, default_port: u16) -> Vec<(String, u16)> {
        let s = self.raw.as_str();
        let after_scheme = s.split_once("://").map(|(_, r)| r).unwrap_or(s);
        let authority = after_scheme
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        let hosts = authority
            .rsplit_once('@')
            .map(|(_, h)| h)
            .unwrap_or(authority);
        hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| match h.rsplit_once(':') {
                Some((host, port)) if !port.contains(']') => {
                    (host.to_owned(), port.parse().unwrap_or(default_port))
                }
                _ => (h.to_owned(), default_port),
            })
            .collect()
    }

    /// The underlying URL (with the password; for a host list, only the first host). Never
    /// log it.
    pub fn as_url(&self) -> &url::Url {
        &self.url
    }

    /// Rejects options that are not in `known`, naming the unknown one and the known ones.
    pub fn check_options(&self, broker: &'static str, known: &[&str]) -> Result<()> {
        for name in self.options.keys() {
            if !known.contains(&name.as_str()) {
                return Err(Error::config(
                    broker,
                    format!(
                        "unknown option {name:?} in {self}; known options: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Parses an option with `FromStr`, naming the option and the URL on error.
    pub fn parse_option<T: std::str::FromStr>(
        &self,
        broker: &'static str,
        name: &str,
    ) -> Result<Option<T>>
    where
        T::Err: fmt::Display,
    {
        match self.option(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| Error::config(broker, format!("option {name}={v:?} in {self}: {e}"))),
        }
    }
    /// Parses a duration option (`250ms`, `5s`, `2m`, `1h`), naming the option and the URL
    /// on error.
    pub fn duration_option(&self, broker: &'static str, name: &str) -> Result<Option<Duration>> {
        match self.option(name) {
            None => Ok(None),
            Some(v) => crate::deadline::parse_duration(v)
                .map(Some)
                .map_err(|e| Error::config(broker, format!("option {name} in {self}: {e}"))),
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_text(&self.raw))
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BrokerUrl::parse(s)
    }
}

/// `scheme://user@h1:1,h2:2/path` → `scheme://user@h1:1/path`, for the `url` crate, which
/// accepts one host only.
fn first_host_only(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let first = hosts.split(',').next().unwrap_or_default();
    format!("{scheme}://{userinfo}{first}{tail}")
}

/// Redacts the password of any `scheme://user:password@host…` text, even one that does not
/// parse as a URL. Use it before putting a user-supplied URL into a log line or an error.
pub fn redact_text(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{hosts}{tail}"),
            None => text.to_owned(),
        },
        None => text.to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted_in_display_debug_and_errors() {
        let u = BrokerUrl::parse("amqp://app:s3cr%40t@rabbit:5672/prod?prefetch=10").unwrap();
        assert_eq!(u.to_string(), "amqp://app:***@rabbit:5672/prod?prefetch=10");
        assert!(!format!("{u:?}").contains("s3cr"));
        assert_eq!(u.password().as_deref(), Some("s3cr@t"));
        assert_eq!(u.username().as_deref(), Some("app"));
        assert_eq!(u.path(), "prod");
        assert_eq!(u.option("prefetch"), Some("10"));
        let e = u
            .check_options("amqp", &["heartbeat"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown option \"prefetch\""), "{e}");
        assert!(!e.contains("s3cr"), "{e}");
        let e = BrokerUrl::parse("amqp://app:secret@bad host/")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn host_lists_and_options() {
        let u = BrokerUrl::parse("kafka://h1:9092,h2:9093,h3/?acks=all").unwrap();
        assert_eq!(
            u.hosts(9092),
            [
                ("h1".into(), 9092),
                ("h2".into(), 9093),
                ("h3".into(), 9092)
            ]
        );
        let u = BrokerUrl::parse("redis://127.0.0.1:6379/2?max=5&max=6");
        assert!(u.is_err());
        let u = BrokerUrl::parse("memory://local?max_payload=12").unwrap();
        assert_eq!(
            u.parse_option::<usize>("memory", "max_payload").unwrap(),
            Some(12)
        );
        let e = BrokerUrl::parse("memory://x?max_payload=big")
            .unwrap()
            .parse_option::<usize>("memory", "max_payload")
            .unwrap_err();
        assert!(e.to_string().contains("max_payload"), "{e}");
        assert_eq!(redact_text("not a url"), "not a url");
        assert_eq!(redact_text("x://u:p@h,i/p"), "x://u:***@h,i/p");
    }
}
