//! The fast path of a branch that is the only live one.
//!
//! A fanout with one live branch has nobody to share with: when that branch
//! has read everything buffered and needs the next item, it takes the
//! upstream out of the shared state and polls it directly, with its own
//! waker, taking no lock and buffering nothing. Each item goes straight from
//! the upstream to the branch's consumer, so a fanout of one costs little
//! more than the upstream itself.
//!
//! Invariants, while the branch holds the upstream (the shared state
//! records it as taken by a lone branch):
//! - it is the only live branch, and the buffer is empty: only this branch
//!   can create another one, by forking, and a fork first gives the upstream
//!   back;
//! - the items it has yielded since it took the upstream are counted here,
//!   not in the shared state, until [`Solo::take_unrecorded`] hands them
//!   over; every accessor that reads the shared state for this branch does
//!   so first.
//!
//! The upstream is taken out of this struct for each poll, so that if the
//! poll panics it is dropped during the unwinding and never polled again;
//! the shared state still records it as taken, which the next poll of the
//! branch reads as a panic.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_core::Stream;

use crate::shared::SizeHint;

/// What a lone branch keeps of the upstream it polls directly.
pub(crate) struct Solo<S: Stream> {
    /// The upstream, while this branch polls it directly.
    upstream: Option<Pin<Box<S>>>,
    /// Items yielded since the shared state last recorded them.
    unrecorded: u64,
    /// The waker of the last poll, if that poll returned `Pending`: the
    /// upstream may hold only this waker, so giving the upstream back wakes it.
    parked: Option<Waker>,
}

/// The outcome of polling the upstream directly.
pub(crate) enum SoloPoll<S: Stream> {
    /// Not a lone branch: the shared state decides.
    NotAlone,
    /// What the upstream returned, except its end.
    Polled(Poll<S::Item>),
    /// The upstream ended: the shared state is to record its end before
    /// the upstream is dropped, so that a panicking `Drop` does not leave it
    /// recorded as taken (which reads as a panic of its `poll_next`).
    Ended(Pin<Box<S>>),
}

impl<S: Stream> Default for Solo<S> {
    fn default() -> Self {
        Self {
            upstream: None,
            unrecorded: 0,
            parked: None,
        }
    }
}

impl<S: Stream> Solo<S> {
    /// Whether the branch polls the upstream directly.
    #[inline]
    pub(crate) fn is_alone(&self) -> bool {
        self.upstream.is_some()
    }

    /// Takes over `upstream`, which the shared state has marked as taken.
    pub(crate) fn take_over(&mut self, upstream: Pin<Box<S>>) {
        self.upstream = Some(upstream);
    }

    /// Polls the upstream directly with the branch's own waker, if the
    /// branch holds it. On its end, the upstream is handed back.
    #[inline]
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> SoloPoll<S> {
        let Some(mut upstream) = self.upstream.take() else {
            return SoloPoll::NotAlone;
        };
        match upstream.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => {
                self.upstream = Some(upstream);
                self.unrecorded += 1;
                self.parked = None;
                SoloPoll::Polled(Poll::Ready(item))
            }
            Poll::Pending => {
                self.upstream = Some(upstream);
                match &self.parked {
                    Some(parked) if parked.will_wake(cx.waker()) => {}
                    _ => self.parked = Some(cx.waker().clone()),
                }
                SoloPoll::Polled(Poll::Pending)
            }
            Poll::Ready(None) => {
                self.parked = None;
                SoloPoll::Ended(upstream)
            }
        }
    }

    /// Hands the count of items yielded since the last call over to the
    /// caller, to be recorded in the shared state, with the upstream's
    /// current `size_hint` if the branch holds it.
    pub(crate) fn take_unrecorded(&mut self) -> (u64, Option<SizeHint>) {
        let hint = self.upstream.as_ref().map(|upstream| upstream.size_hint());
        (std::mem::take(&mut self.unrecorded), hint)
    }

    /// Gives the upstream up, to be put back in the shared state, with the
    /// waker to wake once it is (see [`Solo::parked`]).
    pub(crate) fn give_back(&mut self) -> Option<(Pin<Box<S>>, Option<Waker>)> {
        let upstream = self.upstream.take()?;
        Some((upstream, self.parked.take()))
    }
}
