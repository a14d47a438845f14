//! The rule file: what it may contain, how it is read, and every check made before start.
//!
//! The full reference is `docs/rules.md`. In short:
//!
//! ```yaml
//! brokers:
//!   sensors: { url: "mqtt://127.0.0.1:1883?version=5" }
//!   events:  { url: "${KAFKA_URL:-kafka://127.0.0.1:9092}", password_file: /run/secrets/kafka }
//! routes:
//!   - name: temperatures
//!     from: { broker: sensors, topic: "sensors/+/temp", group: bridge }
//!     filter: "payload.celsius > -50.0"
//!     to:
//!       - broker: events
//!         destination: "sensors.{1}.temp"
//!         key: "{1}"
//!         headers: { set: { source: mqtt }, rename: { unit: x-unit }, drop: [debug] }
//!     on_error: { max_attempts: 5, dead_letter: { broker: events, destination: dead-letters } }
//! ```
//!
//! Reading never stops at the first problem: [`load`] returns every [`Diagnostic`] with its
//! line and column.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::Node;
use polybridge::{
    BrokerUrl, Capabilities, HeaderSupport, StartPosition, Subscription, Syntax, TopicPattern,
};

use crate::filter::Filter;
use crate::template::Template;
use crate::yaml::{position, scalar, start_span, Diagnostic, Diagnostics, MapReader};

/// A route's default `max_batch`: enough to spread a pipeline's fixed cost thin, small
/// enough that one batch is a fraction of the default window of 256.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// A loaded, checked rule file.
#[derive(Debug)]
pub struct Config {
    /// Named broker connections.
    pub brokers: BTreeMap<String, BrokerConfig>,
    /// Routes, in file order.
    pub routes: Vec<RouteConfig>,
    /// Admin HTTP server.
    pub admin: AdminConfig,
}

/// One named broker connection.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Its name in the file.
    pub name: String,
    /// The URL, with `password_file` and `options` applied (prints redacted).
    pub url: BrokerUrl,
    /// What the adapter can do with this URL.
    pub capabilities: Capabilities,
}

/// Where a route reads.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Broker name.
    pub broker: String,
    /// The topic pattern as written.
    pub topic: String,
    /// Level separator of the source broker's topics, for captures.
    pub separator: char,
    /// How many wildcard captures the pattern has.
    pub captures: usize,
    /// The subscription the route makes.
    pub subscription: Subscription,
}

/// How a route chooses among its `to` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// Every sink whose `when` holds (or that has none) gets the message: fan-out.
    All,
    /// Only the first sink whose `when` holds (or that has none): first match.
    First,
}

/// Order the bridge keeps while routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrdering {
    /// Messages are processed concurrently, up to `max_in_flight`.
    None,
    /// Messages with the same key (or source partition) are processed one after the other.
    PerKey,
}

/// How messages travel to a sink that cannot carry everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// The payload as it is; metadata in the sink's native fields.
    None,
    /// A JSON object with payload (text or base64), id, key, headers and metadata.
    Json,
    /// CloudEvents 1.0 structured mode (`application/cloudevents+json`).
    CloudEvents,
    /// CloudEvents 1.0 binary mode: the payload as it is, the event attributes in headers
    /// named by the sink protocol's binding (see [`crate::mapping::cloudevents_prefix`]).
    CloudEventsBinary,
}

/// Header edits on the way to a sink, applied in this order: drop, rename, set.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// Header names removed.
    pub drop: Vec<String>,
    /// (from, to) renames.
    pub rename: Vec<(String, String)>,
    /// Headers set (replacing existing values), from templates.
    pub set: Vec<(String, Template)>,
}

/// One destination of a route.
#[derive(Debug)]
pub struct SinkConfig {
    /// Broker name.
    pub broker: String,
    /// Destination template.
    pub destination: Template,
    /// Condition for this sink.
    pub when: Option<Filter>,
    /// Key template; `None` keeps the source key.
    pub key: Option<Template>,
    /// Header edits.
    pub headers: HeaderRules,
    /// Envelope.
    pub envelope: Envelope,
    /// Explicitly accept losing headers on a sink that cannot carry them.
    pub drop_headers: bool,
    /// The URL scheme of the sink broker (chooses the CloudEvents binary-mode binding).
    pub scheme: String,
}

/// Where messages go that failed every attempt.
#[derive(Debug)]
pub struct DeadLetterConfig {
    /// Broker name.
    pub broker: String,
    /// Destination template.
    pub destination: Template,
}

/// Retries and dead-lettering.
#[derive(Debug)]
pub struct ErrorPolicy {
    /// Attempts per sink before giving up on a message (at least 1).
    pub max_attempts: u32,
    /// First retry delay; doubled each time, with jitter.
    pub initial_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
    /// Where a message goes after the last attempt. Without one, the source delivery is
    /// nacked (after `max_backoff`) and the broker redelivers it: nothing is dropped.
    pub dead_letter: Option<DeadLetterConfig>,
}

/// One route.
#[derive(Debug)]
pub struct RouteConfig {
    /// Name (unique in the file).
    pub name: String,
    /// Source.
    pub source: SourceConfig,
    /// Messages for which this is false are acknowledged and not routed.
    pub filter: Option<Filter>,
    /// Fan-out or first match.
    pub dispatch: Dispatch,
    /// Destinations.
    pub sinks: Vec<SinkConfig>,
    /// Retries and dead-lettering.
    pub on_error: ErrorPolicy,
    /// Ordering.
    pub ordering: RouteOrdering,
    /// Deliveries processed at once (the route's in-flight window).
    pub max_in_flight: usize,
    /// Deliveries the source may hold beyond `max_in_flight`, ready for a slot as soon as
    /// one frees, so a freed slot does not wait for a broker round trip. The source holds
    /// at most `max_in_flight + prefetch` unsettled deliveries. Default: `max_in_flight`.
    pub prefetch: usize,
    /// Most deliveries published to the sinks together, in one `publish_batch` per sink, when
    /// several are already waiting at the source and every sink of the route pipelines
    /// batches ([`polybridge::Capabilities::batched_publish`]: Redis, NATS). A batch never
    /// waits to fill. `1` turns batching off. Default: [`DEFAULT_MAX_BATCH`].
    pub max_batch: usize,
    /// Line of the route in the file, for logs.
    pub line: usize,
}

/// Admin HTTP server settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Listen address; `127.0.0.1:9464` by default.
    pub listen: String,
    /// Whether the admin server runs.
    pub enabled: bool,
    /// Bearer token every endpoint but `/health` requires (`token` or `token_file`).
    pub token: Option<AdminToken>,
}

/// The admin bearer token: compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        AdminToken(token.into())
    }

    /// Whether an `Authorization` header value (`Bearer <token>`) carries this token.
    pub fn accepts(&self, authorization: &str) -> bool {
        let Some(given) = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("bearer "))
        else {
            return false;
        };
        let (a, b) = (given.trim().as_bytes(), self.0.as_bytes());
        // Constant time for tokens of equal length.
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// A rule file that could not be loaded: every problem, with positions.
#[derive(Debug)]
pub struct ConfigErrors {
    /// The file.
    pub file: String,
    /// The problems.
    pub diagnostics: Vec<Diagnostic>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{d}", self.file)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and checks the rule file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: file.clone(),
        diagnostics: vec![Diagnostic {
            line: 1,
            column: 1,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    load(&text, &file, &|name| std::env::var(name).ok())
}

/// Reads and checks rule-file `text`; `file` names it in errors; `env` looks up
/// environment variables.
pub fn load(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let fail = |diagnostics| ConfigErrors {
        file: file.to_owned(),
        diagnostics,
    };
    let root = match marked_yaml::parse_yaml_with_options(
        0,
        text,
        marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true),
    ) {
        Ok(root) => root,
        Err(e) => return Err(fail(vec![load_error(&e)])),
    };
    let mut diags = Diagnostics::default();
    let reader = Loader {
        env,
        diags: &mut diags,
    };
    let config = reader.root(&root);
    match config {
        Some(config) if diags.is_empty() => Ok(config),
        _ => Err(fail(diags.into_sorted())),
    }
}

fn load_error(e: &marked_yaml::LoadError) -> Diagnostic {
    use marked_yaml::LoadError::*;
    let (marker, message): (Option<marked_yaml::Marker>, String) = match e {
        TopLevelMustBeMapping(m) => (
            Some(*m),
            "the file must be a mapping with `brokers:` and `routes:`".to_owned(),
        ),
        TopLevelMustBeSequence(m) => (Some(*m), "unexpected top-level sequence".to_owned()),
        UnexpectedAnchor(m) => (
            Some(*m),
            "YAML anchors and aliases are not supported".to_owned(),
        ),
        MappingKeyMustBeScalar(m) => (Some(*m), "mapping keys must be plain values".to_owned()),
        UnexpectedTag(m) => (Some(*m), "YAML tags are not supported".to_owned()),
        ScanError(m, s) => (Some(*m), format!("YAML syntax error: {s}")),
        DuplicateKey(inner) => {
            let m = inner.key.span().start().copied();
            (m, format!("duplicate key `{}`", inner.key.as_str()))
        }
    };
    let (line, column) = marker.map(|m| (m.line(), m.column())).unwrap_or((1, 1));
    Diagnostic {
        line,
        column,
        message,
    }
}

struct Loader<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    diags: &'a mut Diagnostics,
}

impl Loader<'_> {
    fn root(mut self, root: &Node) -> Option<Config> {
        let mut top = MapReader::new(root, "the rule file", self.diags)?;
        let brokers = match top.node("brokers") {
            Some(node) => self.brokers(node),
            None => {
                self.diags.error(
                    top.span(),
                    "the rule file needs `brokers:` (named broker URLs)",
                );
                BTreeMap::new()
            }
        };
        let routes = match top.node("routes") {
            Some(node) => self.routes(node, &brokers),
            None => {
                self.diags
                    .error(top.span(), "the rule file needs `routes:`");
                Vec::new()
            }
        };
        let admin = match top.node("admin") {
            Some(node) => self.admin(node),
            None => Some(AdminConfig {
                listen: "127.0.0.1:9464".into(),
                enabled: true,
                token: None,
            }),
        };
        top.finish(self.diags);
        Some(Config {
            brokers,
            routes,
            admin: admin?,
        })
    }

    /// `${VAR}` and `${VAR:-default}` in `s`.
    fn expand(&mut self, s: &MarkedScalarNode) -> Option<String> {
        match expand_env(s.as_str(), self.env) {
            Ok(v) => Some(v),
            Err(e) => {
                self.diags.error(s.span(), e);
                None
            }
        }
    }

    fn brokers(&mut self, node: &Node) -> BTreeMap<String, BrokerConfig> {
        let mut out = BTreeMap::new();
        let Some(map) = node.as_mapping() else {
            self.diags
                .error(node.span(), "`brokers` must map names to broker settings");
            return out;
        };
        for (name, value) in map.iter() {
            if let Some(b) = self.broker(name.as_str(), value) {
                out.insert(name.as_str().to_owned(), b);
            }
        }
        out
    }

    fn broker(&mut self, name: &str, node: &Node) -> Option<BrokerConfig> {
        let mut m = MapReader::new(node, "a broker", self.diags)?;
        let url_node = m.required_str("url", self.diags);
        let password_file = m.optional_str("password_file", self.diags);
        let options = m.node("options");
        m.finish(self.diags);
        let url_node = url_node?;
        let mut url_text = self.expand(url_node)?;
        if let Some(options) = options {
            let Some(map) = options.as_mapping() else {
                self.diags
                    .error(options.span(), "`options` must map option names to values");
                return None;
            };
            for (k, v) in map.iter() {
                let v = scalar(v, k.as_str(), self.diags)?;
                let v = self.expand(v)?;
                let sep = if url_text.contains('?') { '&' } else { '?' };
                url_text.push(sep);
                url_text.push_str(&encode_query(k.as_str()));
                url_text.push('=');
                url_text.push_str(&encode_query(&v));
            }
        }
        let mut url = match BrokerUrl::parse(&url_text) {
            Ok(u) => u,
            Err(e) => {
                self.diags
                    .error(url_node.span(), format!("broker {name:?}: {e}"));
                return None;
            }
        };
        if let Some(pf) = password_file {
            let path = self.expand(pf)?;
            if url.password().is_some() {
                self.diags.error(
                    pf.span(),
                    format!(
                        "broker {name:?} has a password in its URL and a `password_file`: keep one"
                    ),
                );
                return None;
            }
            let password = match std::fs::read_to_string(&path) {
                Ok(p) => p.trim_end_matches(['\n', '\r']).to_owned(),
                Err(e) => {
                    self.diags.error(
                        pf.span(),
                        format!("cannot read password_file {path:?}: {e}"),
                    );
                    return None;
                }
            };
            let mut raw = url.as_url().clone();
            if raw.username().is_empty() || raw.set_password(Some(&password)).is_err() {
                self.diags.error(pf.span(), format!("broker {name:?}: `password_file` needs a user name in the URL (scheme://user@host)"));
                return None;
            }
            match BrokerUrl::parse(raw.as_str()) {
                Ok(u) => url = u,
                Err(e) => {
                    self.diags.error(pf.span(), format!("broker {name:?}: {e}"));
                    return None;
                }
            }
        }
        let capabilities = match crate::builtin::capabilities_for(&url) {
            Ok(c) => c,
            Err(e) => {
                self.diags
                    .error(url_node.span(), format!("broker {name:?}: {e}"));
                return None;
            }
        };
        Some(BrokerConfig {
            name: name.to_owned(),
            url,
            capabilities,
        })
    }

    fn admin(&mut self, node: &Node) -> Option<AdminConfig> {
        let mut m = MapReader::new(node, "`admin`", self.diags)?;
        let listen = m.optional_str("listen", self.diags);
        let enabled = m.optional_bool("enabled", self.diags);
        let token = m.optional_str("token", self.diags);
        let token_file = m.optional_str("token_file", self.diags);
        m.finish(self.diags);
        let token = match (token, token_file) {
            (Some(_), Some(f)) => {
                self.diags.error(
                    f.span(),
                    "`admin` has a `token` and a `token_file`: keep one",
                );
                return None;
            }
            (Some(t), None) => Some(self.expand(t)?),
            (None, Some(f)) => {
                let path = self.expand(f)?;
                match std::fs::read_to_string(&path) {
                    Ok(t) => Some(t.trim().to_owned()),
                    Err(e) => {
                        self.diags
                            .error(f.span(), format!("cannot read token_file {path:?}: {e}"));
                        return None;
                    }
                }
            }
            (None, None) => None,
        };
        if token.as_deref() == Some("") {
            self.diags
                .error(node.span(), "the admin token is empty: set a non-empty one");
            return None;
        }
        let token = token.map(AdminToken::new);
        let listen = match listen {
            Some(l) => {
                let v = self.expand(l)?;
                if v.parse::<std::net::SocketAddr>().is_err() {
                    self.diags.error(
                        l.span(),
                        format!("`listen` must be IP:PORT, e.g. 127.0.0.1:9464, got {v:?}"),
                    );
                    return None;
                }
                v
            }
            None => "127.0.0.1:9464".into(),
        };
        Some(AdminConfig {
            listen,
            enabled: enabled.unwrap_or(true),
            token,
        })
    }

    fn routes(
        &mut self,
        node: &Node,
        brokers: &BTreeMap<String, BrokerConfig>,
    ) -> Vec<RouteConfig> {
        let Some(seq) = node.as_sequence() else {
            self.diags.error(
                node.span(),
                "`routes` must be a list of routes (each starting with `- name:`)",
            );
            return Vec::new();
        };
        let mut routes: Vec<RouteConfig> = Vec::new();
        for item in seq.iter() {
            if let Some(r) = self.route(item, brokers) {
                if routes.iter().any(|other| other.name == r.name) {
                    self.diags.error(
                        start_span(item),
                        format!("route name {:?} is used twice", r.name),
                    );
                } else {
                    routes.push(r);
                }
            }
        }
        routes
    }

    fn broker_ref<'b>(
        &mut self,
        s: &MarkedScalarNode,
        brokers: &'b BTreeMap<String, BrokerConfig>,
    ) -> Option<&'b BrokerConfig> {
        let name = s.as_str();
        match brokers.get(name) {
            Some(b) => Some(b),
            None => {
                let names: Vec<&str> = brokers.keys().map(String::as_str).collect();
                let hint = match crate::yaml::did_you_mean(name, &names) {
                    Some(n) => format!("; did you mean {n:?}?"),
                    None => format!("; defined brokers: {}", names.join(", ")),
                };
                self.diags
                    .error(s.span(), format!("unknown broker {name:?}{hint}"));
                None
            }
        }
    }

    fn route(
        &mut self,
        node: &Node,
        brokers: &BTreeMap<String, BrokerConfig>,
    ) -> Option<RouteConfig> {
        let mut m = MapReader::new(node, "a route", self.diags)?;
        let name = m.required_str("name", self.diags);
        let from = m.node("from");
        let filter = m.optional_str("filter", self.diags);
        let dispatch = m.optional_str("dispatch", self.diags);
        let to = m.node("to");
        let on_error = m.node("on_error");
        let ordering = m.optional_str("ordering", self.diags);
        let max_in_flight = m
            .optional_usize("max_in_flight", self.diags)
            .unwrap_or(polybridge::DEFAULT_MAX_IN_FLIGHT);
        let prefetch = m
            .optional_count("prefetch", self.diags)
            .unwrap_or(max_in_flight);
        let max_batch = m
            .optional_usize("max_batch", self.diags)
            .unwrap_or(DEFAULT_MAX_BATCH);
        let route_span = *m.span();
        m.finish(self.diags);

        let source = match from {
            Some(f) => self.source(f, brokers, max_in_flight.saturating_add(prefetch)),
            None => {
                self.diags
                    .error(&route_span, "a route needs `from:` (broker and topic)");
                None
            }
        };
        let filter = filter.and_then(|f| match Filter::compile(f.as_str()) {
            Ok(f) => Some(f),
            Err(e) => {
                self.diags.error(f.span(), e);
                None
            }
        });
        let dispatch = match dispatch.map(|d| (d, d.as_str())) {
            None | Some((_, "all")) => Dispatch::All,
            Some((_, "first")) => Dispatch::First,
            Some((d, other)) => {
                self.diags.error(d.span(), format!("`dispatch` must be `all` (fan-out) or `first` (first match), got {other:?}"));
                Dispatch::All
            }
        };
        let ordering = match ordering.map(|o| (o, o.as_str())) {
            None | Some((_, "none")) => RouteOrdering::None,
            Some((_, "per_key")) => RouteOrdering::PerKey,
            Some((o, other)) => {
                self.diags.error(
                    o.span(),
                    format!("`ordering` must be `none` or `per_key`, got {other:?}"),
                );
                RouteOrdering::None
            }
        };
        let captures = source.as_ref().map(|s| s.captures).unwrap_or(usize::MAX);
        let sinks = match to {
            None => {
                self.diags.error(
                    &route_span,
                    "a route needs `to:` (one or more destinations)",
                );
                Vec::new()
            }
            Some(to) => match to.as_sequence() {
                Some(seq) if !seq.is_empty() => seq
                    .iter()
                    .filter_map(|s| self.sink(s, brokers, captures))
                    .collect(),
                _ => {
                    self.diags
                        .error(to.span(), "`to` must be a non-empty list of destinations");
                    Vec::new()
                }
            },
        };
        let on_error = match on_error {
            Some(n) => self.on_error(n, brokers, captures)?,
            None => ErrorPolicy {
                max_attempts: 5,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                dead_letter: None,
            },
        };
        let source = source?;
        if let Some(src) = brokers.get(&source.broker) {
            if ordering == RouteOrdering::PerKey
                && src.capabilities.ordering == polybridge::Ordering::None
            {
                let span = ordering_span(node);
                self.diags.error(&span, format!("`ordering: per_key` needs a source that keeps order, but broker {:?} ({}) does not", source.broker, src.url.scheme()));
            }
        }
        for sink in &sinks {
            if let Some(b) = brokers.get(&sink.broker) {
                if b.capabilities.headers == HeaderSupport::None
                    && sink.envelope == Envelope::CloudEventsBinary
                {
                    self.diags.error(&route_span, format!(
                        "route {:?}: broker {:?} ({}) cannot carry headers, so it cannot take CloudEvents binary mode; use `envelope: cloudevents` (structured mode)",
                        name.map(|n| n.as_str()).unwrap_or("?"), sink.broker, b.url
                    ));
                } else if b.capabilities.headers == HeaderSupport::None
                    && sink.envelope == Envelope::None
                    && !sink.drop_headers
                {
                    self.diags.error(&route_span, format!(
                        "route {:?}: broker {:?} ({}) cannot carry headers; choose `envelope: json`, `envelope: cloudevents`, or `drop_headers: true` on that destination",
                        name.map(|n| n.as_str()).unwrap_or("?"), sink.broker, b.url
                    ));
                }
            }
        }
        Some(RouteConfig {
            name: name?.as_str().to_owned(),
            source,
            filter,
            dispatch,
            sinks,
            on_error,
            ordering,
            max_in_flight,
            prefetch,
            max_batch,
            line: position(&route_span).0,
        })
    }

    /// The route's source; `unsettled` is the most deliveries its subscription may hold
    /// (the route's window plus its prefetch).
    fn source(
        &mut self,
        node: &Node,
        brokers: &BTreeMap<String, BrokerConfig>,
        unsettled: usize,
    ) -> Option<SourceConfig> {
        let mut m = MapReader::new(node, "`from`", self.diags)?;
        let broker = m.required_str("broker", self.diags);
        let topic = m.required_str("topic", self.diags);
        let group = m.optional_str("group", self.diags);
        let start = m.optional_str("start", self.diags);
        let options = m.node("options");
        m.finish(self.diags);
        let broker_node = broker?;
        let broker = self.broker_ref(broker_node, brokers);
        let topic = topic?;
        let scheme = broker.map(|b| b.url.scheme().to_owned());
        let syntax = scheme
            .as_deref()
            .map(syntax_for)
            .unwrap_or(Syntax::Canonical);
        let pattern = match TopicPattern::parse_as(syntax, topic.as_str()) {
            Ok(p) => Some(p),
            Err(e) => {
                self.diags.error(topic.span(), format!("{e}"));
                None
            }
        };
        let start = match start.map(|s| (s, s.as_str())) {
            None | Some((_, "latest")) => StartPosition::Latest,
            Some((_, "earliest")) => StartPosition::Earliest,
            Some((s, other)) => match other.strip_prefix("position:") {
                Some(p) => StartPosition::Position(p.to_owned()),
                None => {
                    self.diags.error(s.span(), format!("`start` must be `latest`, `earliest` or `position:<broker position>`, got {other:?}"));
                    StartPosition::Latest
                }
            },
        };
        let mut options_map = BTreeMap::new();
        if let Some(o) = options {
            match o.as_mapping() {
                Some(map) => {
                    for (k, v) in map.iter() {
                        if let Some(v) = scalar(v, k.as_str(), self.diags) {
                            if let Some(v) = self.expand(v) {
                                options_map.insert(k.as_str().to_owned(), v);
                            }
                        }
                    }
                }
                None => self
                    .diags
                    .error(o.span(), "`options` must map option names to values"),
            }
        }
        let group = match group {
            Some(g) => Some(self.expand(g)?),
            None => None,
        };
        let broker = broker?;
        let pattern = pattern?;
        let captures = pattern.capture_count();
        let mut subscription = Subscription::new(pattern)
            .start(start)
            .max_in_flight(unsettled);
        subscription.group = group;
        subscription.options = options_map;
        Some(SourceConfig {
            broker: broker.name.clone(),
            topic: topic.as_str().to_owned(),
            separator: separator_for(broker.url.scheme()),
            captures,
            subscription,
        })
    }

    fn template(&mut self, s: &MarkedScalarNode, captures: usize) -> Option<Template> {
        // When the source pattern failed to load, capture numbers cannot be checked.
        let captures = if captures == usize::MAX { 99 } else { captures };
        match Template::parse(s.as_str(), captures) {
            Ok(t) => Some(t),
            Err(e) => {
                self.diags
                    .error(s.span(), format!("template {:?}: {e}", s.as_str()));
                None
            }
        }
    }

    /// A destination template: as [`Self::template`], and not empty (no broker takes an
    /// empty destination, so it would fail every message at run time).
    fn destination(&mut self, s: &MarkedScalarNode, captures: usize) -> Option<Template> {
        if s.as_str().is_empty() {
            self.diags.error(s.span(), "`destination` cannot be empty");
            return None;
        }
        self.template(s, captures)
    }

    fn sink(
        &mut self,
        node: &Node,
        brokers: &BTreeMap<String, BrokerConfig>,
        captures: usize,
    ) -> Option<SinkConfig> {
        let mut m = MapReader::new(node, "a destination (`to` entry)", self.diags)?;
        let broker = m.required_str("broker", self.diags);
        let destination = m.required_str("destination", self.diags);
        let when = m.optional_str("when", self.diags);
        let key = m.optional_str("key", self.diags);
        let headers = m.node("headers");
        let envelope = m.optional_str("envelope", self.diags);
        let drop_headers = m.optional_bool("drop_headers", self.diags);
        m.finish(self.diags);
        let broker = broker.and_then(|b| self.broker_ref(b, brokers));
        let destination = destination.and_then(|d| self.destination(d, captures));
        let when = when.and_then(|w| match Filter::compile(w.as_str()) {
            Ok(f) => Some(f),
            Err(e) => {
                self.diags.error(w.span(), e);
                None
            }
        });
        let key = match key {
            Some(k) => Some(self.template(k, captures)?),
            None => None,
        };
        let headers = match headers {
            Some(h) => self.header_rules(h, captures)?,
            None => HeaderRules::default(),
        };
        let envelope = match envelope.map(|e| (e, e.as_str())) {
            None | Some((_, "none")) => Envelope::None,
            Some((_, "json")) => Envelope::Json,
            Some((_, "cloudevents")) => Envelope::CloudEvents,
            Some((_, "cloudevents-binary")) => Envelope::CloudEventsBinary,
            Some((e, other)) => {
                self.diags.error(
                    e.span(),
                    format!("`envelope` must be `none`, `json`, `cloudevents` or `cloudevents-binary`, got {other:?}"),
                );
                Envelope::None
            }
        };
        let broker = broker?;
        Some(SinkConfig {
            scheme: broker.url.scheme().to_owned(),
            broker: broker.name.clone(),
            destination: destination?,
            when,
            key,
            headers,
            envelope,
            drop_headers: drop_headers.unwrap_or(false),
        })
    }

    fn header_rules(&mut self, node: &Node, captures: usize) -> Option<HeaderRules> {
        let mut m = MapReader::new(node, "`headers`", self.diags)?;
        let set = m.node("set");
        let rename = m.node("rename");
        let drop = m.node("drop");
        m.finish(self.diags);
        let mut rules = HeaderRules::default();
        if let Some(set) = set {
            let Some(map) = set.as_mapping() else {
                self.diags
                    .error(set.span(), "`headers.set` must map header names to values");
                return None;
            };
            for (k, v) in map.iter() {
                let v = scalar(v, k.as_str(), self.diags)?;
                let t = self.template(v, captures)?;
                rules.set.push((k.as_str().to_owned(), t));
            }
        }
        if let Some(rename) = rename {
            let Some(map) = rename.as_mapping() else {
                self.diags.error(
                    rename.span(),
                    "`headers.rename` must map old names to new names",
                );
                return None;
            };
            for (k, v) in map.iter() {
                let v = scalar(v, k.as_str(), self.diags)?;
                rules
                    .rename
                    .push((k.as_str().to_owned(), v.as_str().to_owned()));
            }
        }
        if let Some(drop) = drop {
            let Some(seq) = drop.as_sequence() else {
                self.diags
                    .error(drop.span(), "`headers.drop` must be a list of header names");
                return None;
            };
            for item in seq.iter() {
                let s = scalar(item, "drop", self.diags)?;
                rules.drop.push(s.as_str().to_owned());
            }
        }
        Some(rules)
    }

    fn on_error(
        &mut self,
        node: &Node,
        brokers: &BTreeMap<String, BrokerConfig>,
        captures: usize,
    ) -> Option<ErrorPolicy> {
        let mut m = MapReader::new(node, "`on_error`", self.diags)?;
        let max_attempts = m.optional_usize("max_attempts", self.diags);
        let initial = m.optional_str("initial_backoff", self.diags);
        let max = m.optional_str("max_backoff", self.diags);
        let dead_letter = m.node("dead_letter");
        m.finish(self.diags);
        let mut duration = |s: Option<&MarkedScalarNode>, default: Duration| match s {
            None => Some(default),
            Some(s) => match parse_duration(s.as_str()) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.diags.error(s.span(), e);
                    None
                }
            },
        };
        let initial_backoff = duration(initial, Duration::from_millis(100));
        let max_backoff = duration(max, Duration::from_secs(10));
        let dead_letter = match dead_letter {
            None => None,
            Some(d) => {
                let mut dm = MapReader::new(d, "`dead_letter`", self.diags)?;
                let broker = dm.required_str("broker", self.diags);
                let destination = dm.required_str("destination", self.diags);
                dm.finish(self.diags);
                let broker = broker.and_then(|b| self.broker_ref(b, brokers));
                let destination = destination.and_then(|t| self.destination(t, captures));
                Some(DeadLetterConfig {
                    broker: broker?.name.clone(),
                    destination: destination?,
                })
            }
        };
        Some(ErrorPolicy {
            max_attempts: u32::try_from(max_attempts.unwrap_or(5)).unwrap_or(u32::MAX),
            initial_backoff: initial_backoff?,
            max_backoff: max_backoff?,
            dead_letter,
        })
    }
}

fn ordering_span(route: &Node) -> marked_yaml::Span {
    route
        .as_mapping()
        .and_then(|m| m.get_node("ordering"))
        .map(|n| *n.span())
        .unwrap_or_else(|| *route.span())
}

/// The topic syntax a route's `from.topic` is written in, by the source broker's scheme.
pub fn syntax_for(scheme: &str) -> Syntax {
    match scheme {
        "mqtt" | "mqtts" => Syntax::Mqtt,
        "nats" | "jetstream" | "tls" => Syntax::Nats,
        "amqp" | "amqps" => Syntax::Amqp,
        "redis" | "rediss" => Syntax::RedisGlob,
        _ => Syntax::Canonical,
    }
}

/// The level separator of a broker's topics.
pub fn separator_for(scheme: &str) -> char {
    match scheme {
        "mqtt" | "mqtts" => '/',
        _ => '.',
    }
}

/// Expands `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`.
pub fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let Some(end) = r.find('}') else {
                return Err(format!("unclosed `${{` in {s:?}"));
            };
            let expr = &r[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?} in {s:?}"));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                    ))
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

pub use polybridge::parse_duration;

fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
