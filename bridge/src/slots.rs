//! The in-flight slots of a route: a fixed pool of futures, reused, polled when woken.
//!
//! A route processes up to `max_in_flight` deliveries at once. `FuturesUnordered` would
//! allocate a task node for every pushed future (the route's `process` future is about
//! 2 KB) and free it when the future completes: an allocation, a free and a copy per
//! message. [`Slots`] keeps each future in a box that is allocated once, the first time
//! the slot is used, and then reused: a finished slot is emptied in place and the next
//! delivery goes into it.
//!
//! A future's output is the number of deliveries it carried (one, or a batch), so the
//! route counts its window in deliveries, not in futures.
//!
//! Each slot has its own waker. Waking a slot sets its bit in a shared bitmap and wakes
//! the task polling the pool; [`Slots::poll_next`] takes the bitmap and polls only the
//! slots whose bit was set. No lock, no allocation once the slots in use exist.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Up to `capacity` futures running in the task that polls them.
pub struct Slots<F> {
    slots: Vec<Slot<F>>,
    /// Indexes of the empty slots in `slots`.
    free: Vec<usize>,
    ready: Arc<Ready>,
    capacity: usize,
}

/// One slot: its future while it runs (`None` when free) and the waker that marks it.
struct Slot<F> {
    future: Pin<Box<Option<F>>>,
    waker: Waker,
}

/// Which slots were woken since the last poll, and who polls them.
struct Ready {
    /// Bit `i % 64` of word `i / 64` is set when slot `i` was woken.
    bits: Box<[AtomicU64]>,
    /// The task polling the pool.
    poller: AtomicWaker,
}

impl Ready {
    /// Slot `index` is to be polled by the next [`Slots::poll_next`].
    fn set(&self, index: usize) {
        if let Some(word) = self.bits.get(index / 64) {
            word.fetch_or(1 << (index % 64), Ordering::AcqRel);
        }
    }

    /// Slot `index` was woken: set its bit and wake the task polling the pool.
    fn mark(&self, index: usize) {
        self.set(index);
        self.poller.wake();
    }
}

/// The waker of slot `index`.
struct SlotWaker {
    index: usize,
    ready: Arc<Ready>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.ready.mark(self.index);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.mark(self.index);
    }
}

impl<F: Future<Output = usize>> Slots<F> {
    /// An empty pool of at most `capacity` (at least 1) slots. Allocates only the bitmap;
    /// a slot's box is allocated the first time it is used.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let words = capacity.div_ceil(64);
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
            ready: Arc::new(Ready {
                bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
                poller: AtomicWaker::new(),
            }),
            capacity,
        }
    }

    /// How many futures are running.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// True when no future is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts `future` in a free slot (it is polled by the next [`Slots::poll_next`]), or
    /// gives it back when all `capacity` slots are taken.
    pub fn push(&mut self, future: F) -> Result<(), F> {
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index].future.as_mut().set(Some(future));
                index
            }
            None if self.slots.len() < self.capacity => {
                let index = self.slots.len();
                let waker = Waker::from(Arc::new(SlotWaker {
                    index,
                    ready: self.ready.clone(),
                }));
                self.slots.push(Slot {
                    future: Box::pin(Some(future)),
                    waker,
                });
                index
            }
            None => return Err(future),
        };
        // Only the bit: whoever pushed holds the pool and polls it next, so waking the
        // polling task here would only schedule it once more.
        self.ready.set(index);
        Ok(())
    }

    /// Polls the slots woken since the last call. Ready with the sum of the outputs of the
    /// futures that finished (their slots are free again), `None` when no future is
    /// running; pending when futures run and none finished.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<usize>> {
        if self.is_empty() {
            return Poll::Ready(None);
        }
        // Registered before the bitmap is read: a wake after the read wakes this task.
        self.ready.poller.register(cx.waker());
        let mut finished = 0;
        let mut carried = 0;
        for word in 0..self.ready.bits.len() {
            let mut woken = self.ready.bits[word].swap(0, Ordering::AcqRel);
            while woken != 0 {
                let bit = woken.trailing_zeros() as usize;
                woken &= woken - 1;
                let index = word * 64 + bit;
                // A slot may be woken after its future finished: nothing to poll then.
                let Some(slot) = self.slots.get_mut(index) else {
                    continue;
                };
                let Some(future) = slot.future.as_mut().as_pin_mut() else {
                    continue;
                };
                if let Poll::Ready(n) = future.poll(&mut Context::from_waker(&slot.waker)) {
                    slot.future.as_mut().set(None);
                    self.free.push(index);
                    finished += 1;
                    carried += n;
                }
            }
        }
        if finished > 0 {
            Poll::Ready(Some(carried))
        } else {
            Poll::Pending
        }
    }

    /// Waits until at least one running future finished: the sum of the outputs of those
    /// that did, or `None` when none runs. Cancel-safe (the state is in the pool).
    pub async fn next(&mut self) -> Option<usize> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::oneshot;

    /// A future that finishes when its sender fires, counting how often it was polled.
    fn gated(polls: Arc<AtomicUsize>) -> (oneshot::Sender<()>, impl Future<Output = usize>) {
        let (tx, rx) = oneshot::channel::<()>();
        let future = async move {
            let mut rx = rx;
            std::future::poll_fn(|cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                Pin::new(&mut rx).poll(cx).map(|_| 1)
            })
            .await
        };
        (tx, future)
    }

    #[tokio::test]
    async fn runs_futures_to_completion_and_reuses_their_slots() {
        let done = Arc::new(AtomicUsize::new(0));
        let mut slots = Slots::new(4);
        for round in 0..3 {
            for _ in 0..4 {
                let done = done.clone();
                let pushed = slots.push(async move {
                    tokio::task::yield_now().await;
                    done.fetch_add(1, Ordering::Relaxed);
                    1
                });
                assert!(pushed.is_ok(), "a slot is free in round {round}");
            }
            assert_eq!(slots.len(), 4);
            while slots.next().await.is_some() {}
            assert!(slots.is_empty());
        }
        assert_eq!(done.load(Ordering::Relaxed), 12);
        // Three rounds of four futures used the same four boxes.
        assert_eq!(slots.slots.len(), 4);
    }

    #[tokio::test]
    async fn next_gives_the_deliveries_the_finished_futures_carried() {
        let mut slots = Slots::new(3);
        for carried in [1, 5, 64] {
            assert!(slots.push(async move { carried }).is_ok());
        }
        let mut total = 0;
        while let Some(n) = slots.next().await {
            total += n;
        }
        assert_eq!(total, 70);
    }

    #[tokio::test]
    async fn refuses_a_future_when_every_slot_is_taken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut slots = Slots::new(2);
        let (_a, fa) = gated(polls.clone());
        let (_b, fb) = gated(polls.clone());
        let (_c, fc) = gated(polls.clone());
        assert!(slots.push(fa).is_ok());
        assert!(slots.push(fb).is_ok());
        assert!(slots.push(fc).is_err());
        assert_eq!(slots.len(), 2);
    }

    #[tokio::test]
    async fn polls_only_the_slots_that_were_woken() {
        let polls: Vec<_> = (0..100).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        let mut slots = Slots::new(100);
        let mut gates = Vec::new();
        for p in &polls {
            let (tx, f) = gated(p.clone());
            gates.push(Some(tx));
            assert!(slots.push(f).is_ok());
        }
        // The first poll polls every new future once; none is ready.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(slots.poll_next(&mut cx).is_pending());
        assert!(polls.iter().all(|p| p.load(Ordering::Relaxed) == 1));
        // Opening gate 70 (second bitmap word) wakes that slot alone.
        if let Some(tx) = gates[70].take() {
            let _ = tx.send(());
        }
        assert_eq!(slots.poll_next(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(polls[70].load(Ordering::Relaxed), 2);
        let polled_again = polls
            .iter()
            .enumerate()
            .filter(|(i, p)| *i != 70 && p.load(Ordering::Relaxed) > 1)
            .count();
        assert_eq!(polled_again, 0);
        assert_eq!(slots.len(), 99);
        // Nothing woken: nothing polled, pending.
        assert!(slots.poll_next(&mut cx).is_pending());
        assert_eq!(polls[0].load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn dropping_the_pool_drops_the_running_futures() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut slots = Slots::new(3);
        let (tx, f) = gated(polls);
        assert!(slots.push(f).is_ok());
        drop(slots);
        // The receiver inside the future is gone: the gate's send fails.
        assert!(tx.send(()).is_err());
    }
}
