//! The in-process broker: topics are append-only logs, consumer groups read them with a
//! cursor, and unsettled deliveries are tracked per group until acked.
//!
//! All state sits behind one mutex held only for short, allocation-light critical sections;
//! waiting happens outside it on per-group [`Notify`]s.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use polybridge_core::{
    well_known, DeliveryInfo, Error, Message, Position, Result, StartPosition, TopicPattern,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::MemoryConfig;

/// Level separator of memory topics: `orders.eu.created`.
pub const SEPARATOR: char = '.';

/// One named in-process broker, shared by every connection to its name.
pub(crate) struct SharedBroker {
    pub(crate) config: MemoryConfig,
    state: Mutex<State>,
}

/// Returns the broker called `config.name`, creating it on first use. Brokers live for the
/// rest of the process, like a running server: closing every connection loses nothing.
pub(crate) fn broker_named(config: &MemoryConfig) -> Arc<SharedBroker> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<SharedBroker>>>> = OnceLock::new();
    let registry = REGISTRY.get_or_init(Default::default);
    let mut brokers = registry.lock().unwrap_or_else(|e| e.into_inner());
    brokers
        .entry(config.name.clone())
        .or_insert_with(|| {
            Arc::new(SharedBroker {
                config: config.clone(),
                state: Mutex::new(State::default()),
            })
        })
        .clone()
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    groups: HashMap<String, Group>,
    next_token: u64,
    next_private: u64,
}

struct Topic {
    /// Offset of `log[0]`.
    base: u64,
    log: VecDeque<Stored>,
    /// Groups whose pattern matches this topic.
    groups: Vec<String>,
}

impl Topic {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }
}

struct Stored {
    message: Message,
    stored_at: SystemTime,
}

/// A message waiting to be (re)delivered to a group.
struct Pending {
    topic: String,
    offset: u64,
    message: Message,
    /// Deliveries so far.
    attempts: u32,
}

struct InFlight {
    pending: Pending,
    subscriber: u64,
}

struct Group {
    pattern: TopicPattern,
    private: bool,
    members: usize,
    /// Matching topics, in the order they were first seen, and the next offset to read.
    cursors: Vec<(String, u64)>,
    redeliver_now: VecDeque<Pending>,
    redeliver_later: BTreeMap<(Instant, u64), Pending>,
    in_flight: HashMap<u64, InFlight>,
    notify: Arc<Notify>,
}

/// What a subscriber's pump needs to wait for its next message.
pub(crate) struct Joined {
    pub(crate) group: String,
    pub(crate) subscriber: u64,
    pub(crate) notify: Arc<Notify>,
}

/// The next delivery for a subscriber, or when to look again.
// Returned once per delivery and destructured at once; boxing the big variant would add an
// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Next {
    Deliver {
        token: u64,
        message: Message,
        info: DeliveryInfo,
    },
    /// Nothing now; a delayed redelivery is due at this instant (if any).
    Wait(Option<Instant>),
}

impl SharedBroker {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // loses messages (each operation completes its edits before anything can panic),
        // so a poisoned lock is recovered rather than propagated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `message` to `topic` and wakes the groups reading it.
    pub(crate) fn append(&self, topic: &str, message: Message) -> Result<u64> {
        validate_topic(topic)?;
        if message.payload.len() > self.config.max_payload {
            return Err(Error::PayloadTooLarge {
                broker: "memory",
                destination: topic.to_owned(),
                size: message.payload.len(),
                limit: self.config.max_payload,
            });
        }
        let mut state = self.lock();
        let state = &mut *state;
        if !state.topics.contains_key(topic) {
            let mut groups = Vec::new();
            for (name, group) in state.groups.iter_mut() {
                if group.pattern.matches(topic, SEPARATOR) {
                    group.cursors.push((topic.to_owned(), 0));
                    groups.push(name.clone());
                }
            }
            state.topics.insert(
                topic.to_owned(),
                Topic {
                    base: 0,
                    log: VecDeque::new(),
                    groups,
                },
            );
        }
        let Some(t) = state.topics.get_mut(topic) else {
            return Err(Error::permanent("memory", topic, "topic vanished"));
        };
        let offset = t.end();
        t.log.push_back(Stored {
            message,
            stored_at: SystemTime::now(),
        });
        if t.log.len() > self.config.retention {
            t.log.pop_front();
            t.base += 1;
        }
        for name in &t.groups {
            if let Some(g) = state.groups.get(name) {
                g.notify.notify_waiters();
            }
        }
        Ok(offset)
    }

    /// Adds a subscriber to `group` (a private group when `None`).
    pub(crate) fn join(
        &self,
        group: Option<&str>,
        pattern: &TopicPattern,
        start: &StartPosition,
    ) -> Result<Joined> {
        let mut state = self.lock();
        let state = &mut *state;
        state.next_token += 1;
        let subscriber = state.next_token;
        let name = match group {
            Some(g) => g.to_owned(),
            None => {
                state.next_private += 1;
                format!("\u{0}private-{}", state.next_private)
            }
        };
        if let Some(existing) = state.groups.get_mut(&name) {
            if existing.pattern != *pattern {
                return Err(Error::config(
                    "memory",
                    format!(
                        "consumer group {name:?} already subscribes to {}; a group has one pattern, got {pattern}",
                        existing.pattern
                    ),
                ));
            }
            existing.members += 1;
            return Ok(Joined {
                group: name,
                subscriber,
                notify: existing.notify.clone(),
            });
        }
        let mut cursors = Vec::new();
        for (topic_name, topic) in state.topics.iter_mut() {
            if pattern.matches(topic_name, SEPARATOR) {
                cursors.push((topic_name.clone(), start_offset(topic, start)?));
                topic.groups.push(name.clone());
            }
        }
        let notify = Arc::new(Notify::new());
        state.groups.insert(
            name.clone(),
            Group {
                pattern: pattern.clone(),
                private: group.is_none(),
                members: 1,
                cursors,
                redeliver_now: VecDeque::new(),
                redeliver_later: BTreeMap::new(),
                in_flight: HashMap::new(),
                notify: notify.clone(),
            },
        );
        Ok(Joined {
            group: name,
            subscriber,
            notify,
        })
    }

    /// Takes the next message for `subscriber` of `group` and marks it in flight.
    pub(crate) fn next(&self, group: &str, subscriber: u64) -> Next {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(g) = state.groups.get_mut(group) else {
            return Next::Wait(None);
        };
        let now = Instant::now();
        while let Some(entry) = g.redeliver_later.first_entry() {
            if entry.key().0 > now {
                break;
            }
            g.redeliver_now.push_back(entry.remove());
        }
        let pending = match g.redeliver_now.pop_front() {
            Some(p) => Some(p),
            None => read_next(g, &state.topics),
        };
        let Some(mut pending) = pending else {
            return Next::Wait(g.redeliver_later.keys().next().map(|(due, _)| *due));
        };
        state.next_token += 1;
        let token = state.next_token;
        pending.attempts += 1;
        let info = DeliveryInfo {
            topic: pending.topic.clone(),
            attempt: pending.attempts,
            redelivered: pending.attempts > 1,
            position: Some(Position::Sequence(pending.offset)),
            partition: None,
        };
        let message = pending.message.clone();
        g.in_flight.insert(
            token,
            InFlight {
                pending,
                subscriber,
            },
        );
        Next::Deliver {
            token,
            message,
            info,
        }
    }

    /// Settles delivery `token` of `group`.
    pub(crate) fn settle(
        &self,
        group: &str,
        token: u64,
        settlement: polybridge_core::Settlement,
        dead_letter: Option<&str>,
    ) -> Result<()> {
        use polybridge_core::Settlement;
        let rejected = {
            let mut state = self.lock();
            let Some(g) = state.groups.get_mut(group) else {
                return Err(Error::closed("memory", format!("consumer group {group:?}")));
            };
            let Some(InFlight { pending, .. }) = g.in_flight.remove(&token) else {
                return Err(Error::closed(
                    "memory",
                    format!("delivery {token} (its subscription ended and it was returned to the group)"),
                ));
            };
            match settlement {
                Settlement::Ack => None,
                Settlement::Nack { delay: None } => {
                    g.redeliver_now.push_back(pending);
                    g.notify.notify_waiters();
                    None
                }
                Settlement::Nack { delay: Some(d) } => {
                    g.redeliver_later
                        .insert((Instant::now() + d, token), pending);
                    g.notify.notify_waiters();
                    None
                }
                Settlement::Reject { reason } => Some((pending, reason)),
            }
        };
        if let Some((pending, reason)) = rejected {
            let destination = match dead_letter {
                Some(d) => d.to_owned(),
                None => format!("{}{SEPARATOR}dlq", pending.topic),
            };
            let mut message = pending.message;
            message.headers.set(well_known::REJECT_REASON, reason);
            message
                .headers
                .set(well_known::ORIGINAL_TOPIC, pending.topic.as_str());
            message
                .headers
                .set(well_known::ATTEMPTS, pending.attempts.to_string());
            self.append(&destination, message)?;
        }
        Ok(())
    }

    /// Removes `subscriber` from `group`: its unsettled deliveries go back to the front of
    /// the group's queue, and a private group is deleted with its last member.
    pub(crate) fn leave(&self, group: &str, subscriber: u64) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(g) = state.groups.get_mut(group) else {
            return;
        };
        let mut returned: Vec<(u64, InFlight)> = g
            .in_flight
            .extract_if(|_, f| f.subscriber == subscriber)
            .collect();
        // Back to the front, oldest first, so they are the next ones delivered.
        returned.sort_by_key(|(token, _)| *token);
        for (_, f) in returned.into_iter().rev() {
            g.redeliver_now.push_front(f.pending);
        }
        g.members = g.members.saturating_sub(1);
        g.notify.notify_waiters();
        if g.private && g.members == 0 {
            state.groups.remove(group);
            for t in state.topics.values_mut() {
                t.groups.retain(|n| n != group);
            }
        }
    }
}

/// Reads the next unread message of any topic the group follows.
fn read_next(g: &mut Group, topics: &HashMap<String, Topic>) -> Option<Pending> {
    for (topic_name, cursor) in g.cursors.iter_mut() {
        let Some(topic) = topics.get(topic_name) else {
            continue;
        };
        if *cursor < topic.base {
            tracing::warn!(
                topic = %topic_name,
                skipped = topic.base - *cursor,
                "memory broker: messages were dropped by retention before this group read them"
            );
            *cursor = topic.base;
        }
        if *cursor < topic.end() {
            let offset = *cursor;
            *cursor += 1;
            let index = usize::try_from(offset - topic.base).ok()?;
            let stored = topic.log.get(index)?;
            return Some(Pending {
                topic: topic_name.clone(),
                offset,
                message: stored.message.clone(),
                attempts: 0,
            });
        }
    }
    None
}

/// Where a new group starts in an existing topic.
fn start_offset(topic: &Topic, start: &StartPosition) -> Result<u64> {
    Ok(match start {
        StartPosition::Latest => topic.end(),
        StartPosition::Earliest => topic.base,
        StartPosition::Time(t) => topic
            .log
            .iter()
            .position(|s| s.stored_at >= *t)
            .map(|i| topic.base + i as u64)
            .unwrap_or_else(|| topic.end()),
        StartPosition::Position(p) => {
            let offset: u64 = p.parse().map_err(|_| {
                Error::config(
                    "memory",
                    format!("start position {p:?} is not an offset (a non-negative integer)"),
                )
            })?;
            offset.clamp(topic.base, topic.end())
        }
    })
}

/// A topic to publish to: non-empty levels, no wildcards.
fn validate_topic(topic: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::permanent(
            "memory",
            topic,
            format!("invalid topic: {reason}"),
        ))
    };
    if topic.is_empty() {
        return bad("empty");
    }
    for level in topic.split(SEPARATOR) {
        match level {
            "" => return bad("empty level (topics are levels separated by '.')"),
            "*" | ">" | "#" => return bad("wildcards are for subscriptions, not destinations"),
            _ => {}
        }
    }
    Ok(())
}
