//! Acknowledgement for a JetStream consumer with ack policy `all` (`ack_policy=all`).
//!
//! The server takes an ack of stream sequence `n` as an ack of every message up to `n`
//! that it delivered to the consumer. The subscription settles messages in any order (a
//! route finishes them as its sink confirms them), so it acks only the longest run of
//! settled messages at the front, with the reply subject of the last of them, and never
//! past a message still unsettled: one ack for many messages, and none acknowledged before
//! it is done.
//!
//! The server ignores an ack whose delivery sequence is not above that of the last ack it
//! took. That happens when the last ack was of a redelivery (delivered later than the
//! messages after it) and is harmless: the messages it did not cover are redelivered
//! after `ack_wait`, and a redelivery of a message settled here is acked at once, not
//! handed out again ([`Arrival::AckAgain`]).

use std::collections::VecDeque;

use async_nats::Subject;

/// What the subscription does with a message the server delivered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// New, or not settled yet: hand it out.
    HandOut,
    /// Settled here and covered by an ack sent before, which the server did not take: ack
    /// it again with its reply subject (the ack covers settled messages only).
    AckAgain,
    /// Settled here, behind a message not settled yet: the ack that covers it comes when
    /// that one is settled.
    Hold,
}

/// The messages received and not yet covered by an ack, in stream order.
#[derive(Debug)]
pub(crate) struct CumulativeAcks {
    /// Received, not covered by an ack sent: ordered by stream sequence (new messages come
    /// in that order; only a redelivery of one from before this subscription is inserted
    /// in the middle), so a lookup is a binary search and nothing is allocated per message
    /// once the queue has grown to the window.
    slots: VecDeque<Slot>,
    /// Every stream sequence at or below this is settled and covered by an ack sent (or
    /// was acknowledged before this subscription began).
    acked_through: u64,
    /// Messages delivered before this subscription began and not acknowledged (a
    /// subscriber that stopped without settling them): the server redelivers them after
    /// `ack_wait`. Nothing is acked until they have all come back, since an ack covers
    /// them too.
    owed: u64,
    /// The highest stream sequence delivered before this subscription began: the owed
    /// messages are at or below it.
    owed_through: u64,
}

#[derive(Debug)]
struct Slot {
    sequence: u64,
    /// Set when settled: the reply subject of its latest delivery, for the ack.
    settled: Option<Subject>,
}

impl CumulativeAcks {
    /// The state of a consumer just bound or created: everything up to `ack_floor` is
    /// acknowledged, and `pending` messages up to `delivered` are delivered and not.
    pub(crate) fn new(ack_floor: u64, pending: u64, delivered: u64) -> CumulativeAcks {
        CumulativeAcks {
            slots: VecDeque::new(),
            acked_through: ack_floor,
            owed: pending,
            owed_through: delivered,
        }
    }

    /// Notes a delivery of `sequence` (with `reply`, its reply subject) and says what to do
    /// with it.
    pub(crate) fn received(&mut self, sequence: u64, reply: &Subject) -> Arrival {
        if sequence <= self.acked_through {
            return Arrival::AckAgain;
        }
        match self.slots.binary_search_by_key(&sequence, |s| s.sequence) {
            Ok(i) => match &mut self.slots[i].settled {
                // The newest delivery's reply: the server takes an ack of a later delivery.
                Some(settled) => {
                    *settled = reply.clone();
                    Arrival::Hold
                }
                None => Arrival::HandOut,
            },
            Err(i) => {
                if self.owed > 0 && sequence <= self.owed_through {
                    self.owed -= 1;
                }
                self.slots.insert(
                    i,
                    Slot {
                        sequence,
                        settled: None,
                    },
                );
                Arrival::HandOut
            }
        }
    }

    /// Notes that the message at `sequence` is done (acked, or rejected and dead-lettered),
    /// with the reply subject of the delivery that was settled.
    pub(crate) fn settled(&mut self, sequence: u64, reply: Subject) {
        // Not found: a second copy of a message already covered, or a delivery of a
        // consumer that was since created again (its copy comes again, and is tracked).
        if let Ok(i) = self.slots.binary_search_by_key(&sequence, |s| s.sequence) {
            self.slots[i].settled = Some(reply);
        }
    }

    /// The reply subject to ack now, the last of the settled run at the front, which the
    /// ack covers; `None` when there is no such run, or while messages delivered before this
    /// subscription are still owed.
    pub(crate) fn next_ack(&mut self) -> Option<Subject> {
        if self.owed > 0 {
            return None;
        }
        let mut last = None;
        while self.slots.front().is_some_and(|s| s.settled.is_some()) {
            if let Some(slot) = self.slots.pop_front() {
                self.acked_through = slot.sequence;
                last = slot.settled;
            }
        }
        last
    }

    /// The server's count of messages delivered and not acknowledged: the owed messages can
    /// be no more than those of them not received here (a message deleted from the stream
    /// leaves it uncounted, so the subscription does not wait for it forever).
    pub(crate) fn server_pending(&mut self, pending: u64) {
        let received = u64::try_from(self.slots.len()).unwrap_or(u64::MAX);
        self.owed = self.owed.min(pending.saturating_sub(received));
    }

    /// Whether acks wait for messages delivered before this subscription.
    pub(crate) fn owes(&self) -> bool {
        self.owed > 0
    }

    /// The reply subjects of the messages settled and not covered by an ack (on close: they
    /// are nacked, so that the next subscriber gets them at once, not after `ack_wait`).
    pub(crate) fn take_settled(&mut self) -> impl Iterator<Item = Subject> + '_ {
        self.slots.drain(..).filter_map(|s| s.settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(n: u64) -> Subject {
        Subject::from(format!("$JS.ACK.S.C.1.{n}.{n}.0.0"))
    }

    fn receive(acks: &mut CumulativeAcks, sequences: impl IntoIterator<Item = u64>) {
        for n in sequences {
            assert_eq!(acks.received(n, &reply(n)), Arrival::HandOut, "{n}");
        }
    }

    #[test]
    fn acks_the_settled_run_at_the_front_and_never_past_an_unsettled_message() {
        let mut acks = CumulativeAcks::new(0, 0, 0);
        receive(&mut acks, 1..=5);
        acks.settled(2, reply(2));
        acks.settled(3, reply(3));
        assert_eq!(acks.next_ack(), None, "1 is not settled: 2 and 3 wait");
        acks.settled(1, reply(1));
        assert_eq!(acks.next_ack(), Some(reply(3)), "1 to 3 in one ack");
        assert_eq!(acks.next_ack(), None, "nothing new");
        acks.settled(5, reply(5));
        assert_eq!(acks.next_ack(), None, "4 is not settled");
        acks.settled(4, reply(4));
        assert_eq!(acks.next_ack(), Some(reply(5)));
    }

    #[test]
    fn a_redelivery_of_a_settled_message_is_held_or_acked_again_never_handed_out() {
        let mut acks = CumulativeAcks::new(0, 0, 0);
        receive(&mut acks, 1..=3);
        acks.settled(1, reply(1));
        assert_eq!(acks.next_ack(), Some(reply(1)));
        acks.settled(3, reply(3));
        // 1 is covered by an ack sent: its redelivery means the server did not take it.
        assert_eq!(acks.received(1, &reply(11)), Arrival::AckAgain);
        // 3 waits behind 2: its redelivery is held, and its newer reply used for the ack.
        assert_eq!(acks.received(3, &reply(13)), Arrival::Hold);
        // 2 was nacked and comes again: handed out again.
        assert_eq!(acks.received(2, &reply(12)), Arrival::HandOut);
        acks.settled(2, reply(12));
        assert_eq!(acks.next_ack(), Some(reply(13)));
    }

    #[test]
    fn messages_owed_from_an_earlier_subscriber_hold_every_ack_until_they_are_back() {
        // Acked through 10; 3 of the messages up to 20 were delivered and not acked.
        let mut acks = CumulativeAcks::new(10, 3, 20);
        receive(&mut acks, [21, 22]);
        acks.settled(21, reply(21));
        acks.settled(22, reply(22));
        assert_eq!(
            acks.next_ack(),
            None,
            "an ack of 22 would cover the owed ones"
        );
        receive(&mut acks, [12, 15]);
        acks.settled(12, reply(12));
        acks.settled(15, reply(15));
        assert_eq!(acks.next_ack(), None, "one is still owed");
        receive(&mut acks, [18]);
        acks.settled(18, reply(18));
        assert_eq!(acks.next_ack(), Some(reply(22)));
    }

    #[test]
    fn the_server_count_releases_owed_messages_that_will_not_come() {
        let mut acks = CumulativeAcks::new(0, 2, 5);
        receive(&mut acks, [6]);
        acks.settled(6, reply(6));
        assert!(acks.owes());
        // The server holds 1 unacknowledged: the one received here.
        acks.server_pending(1);
        assert!(!acks.owes());
        assert_eq!(acks.next_ack(), Some(reply(6)));
        // A count that includes deliveries still on the wire keeps what is owed.
        let mut acks = CumulativeAcks::new(0, 2, 5);
        acks.server_pending(7);
        assert!(acks.owes());
    }

    #[test]
    fn closing_gives_the_settled_messages_not_covered() {
        let mut acks = CumulativeAcks::new(0, 0, 0);
        receive(&mut acks, 1..=3);
        acks.settled(2, reply(2));
        acks.settled(3, reply(3));
        let left: Vec<Subject> = acks.take_settled().collect();
        assert_eq!(left, [reply(2), reply(3)]);
    }
}
