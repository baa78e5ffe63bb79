//! The waker handed to the upstream stream, and the branches it wakes.
//!
//! Whichever branch polls the upstream, the upstream never sees that
//! branch's own waker: it sees one waker owned by the whole fanout. When the
//! upstream wakes it, every branch that waits for the next upstream item is
//! woken, so a waiting branch never depends on the branch that happened to
//! poll last, which may since have been dropped, cancelled, or be busy
//! elsewhere.
//!
//! The signal is not generic over the stream, because a [`Waker`] must be
//! `'static` and the stream and its items need not be.

use std::sync::Arc;
use std::task::{Wake, Waker};

use crate::sync::{lock, Mutex};
use crate::waiters::{Waiters, Wakeups};

/// The fanout's waker for the upstream stream.
///
/// Lock order: a caller may lock this while it holds the state lock of the
/// shared buffer, never the other way round; the upstream's waker takes only
/// this lock.
#[derive(Debug, Default)]
pub(crate) struct UpstreamSignal {
    inner: Mutex<SignalState>,
}

#[derive(Debug, Default)]
struct SignalState {
    /// The upstream has woken its waker since the current (or last) poll of
    /// the upstream started. A branch that parks after the upstream returned
    /// `Pending` reads it to learn that a wake-up came too early to find it
    /// in `waiting`.
    woken: bool,
    /// Branches at the end of the buffer that wait for the upstream to
    /// yield, end, or wake.
    waiting: Waiters,
}

impl UpstreamSignal {
    /// Creates the signal and the waker the upstream is polled with.
    pub(crate) fn new() -> (Arc<Self>, Waker) {
        let signal = Arc::new(Self::default());
        let waker = Waker::from(Arc::clone(&signal));
        (signal, waker)
    }

    /// Parks branch `id` until the upstream yields, ends, or wakes.
    /// Returns the waker it replaces, to be dropped outside any lock.
    pub(crate) fn park(&self, id: usize, waker: &Waker) -> Option<Waker> {
        lock(&self.inner).waiting.register(id, waker)
    }

    /// Called just before a branch polls the upstream.
    pub(crate) fn start_poll(&self) {
        lock(&self.inner).woken = false;
    }

    /// Parks the branch whose poll of the upstream returned `Pending`, unless
    /// the upstream woke during that poll.
    ///
    /// Such an early wake-up may have found some waiting branches already
    /// gone and others not yet parked. Then this branch is not parked: every
    /// parked branch is returned to be woken, and the caller wakes itself too,
    /// so the next poll of the upstream happens without waiting for another
    /// wake-up. The poll is not retried here: an upstream that wakes itself
    /// and returns `Pending` (a cooperative yield) must not make us spin.
    pub(crate) fn park_after_pending(&self, id: usize, waker: &Waker) -> AfterPending {
        let mut inner = lock(&self.inner);
        if inner.woken {
            AfterPending::WokenDuringPoll(inner.waiting.take_all())
        } else {
            AfterPending::Parked(inner.waiting.register(id, waker))
        }
    }

    /// Forgets branch `id`; returns its waker, to be dropped outside any lock.
    pub(crate) fn remove(&self, id: usize) -> Option<Waker> {
        lock(&self.inner).waiting.remove(id)
    }

    /// Moves every parked branch into `due`, for the caller to wake outside
    /// any lock.
    pub(crate) fn move_all_to(&self, due: &mut Wakeups) {
        lock(&self.inner).waiting.move_all_to(due);
    }
}

/// What became of a branch whose poll of the upstream returned `Pending`.
#[derive(Debug)]
pub(crate) enum AfterPending {
    /// It waits for the upstream; holds the waker it replaced, to be dropped
    /// outside any lock.
    Parked(Option<Waker>),
    /// The upstream woke during the poll: the branch is not parked, and must
    /// wake itself and these parked branches.
    WokenDuringPoll(Wakeups),
}

impl Wake for UpstreamSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let wakeups = {
            let mut inner = lock(&self.inner);
            inner.woken = true;
            inner.waiting.take_all()
        };
        wakeups.wake();
    }
}
