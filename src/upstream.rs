//! The upstream stream, and one poll of it: a batch of items, pulled by the
//! branch that needs the next one, with the shared state's lock released.
//!
//! The branch that polls polls again while the upstream yields, up to the
//! limit the shared state gave it (a share of the free room), so that one
//! lock pushes many items. The room can only grow while it polls, because
//! only the poller adds items.
//!
//! If the first `poll_next` of a batch panics, the panic reaches the poller
//! at once, and the drop of [`UpstreamPoll`] records the upstream as
//! panicked, wakes every waiting branch, so that none of them waits for a
//! poll that will never end, and drops the upstream. A panic in a later
//! `poll_next` of the same batch is caught instead ([`BatchEnd::Panicked`]),
//! so that the items yielded before it are buffered and reach every branch
//! first; the first branch that reads past them resumes it.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_core::Stream;

use crate::shared::Shared;

/// A stream's `size_hint`: lower and upper bounds on the items it has left.
pub(crate) type SizeHint = (usize, Option<usize>);

/// What a panic carries, as `catch_unwind` returns it.
pub(crate) type PanicPayload = Box<dyn Any + Send>;

/// Where the upstream stream is. One meaning per variant.
pub(crate) enum Upstream<S> {
    /// In the shared state, ready to be polled by the next branch that needs
    /// an item.
    Idle(Pin<Box<S>>),
    /// Taken out by the branch that is polling it now.
    Polling,
    /// It returned `None`, and has been dropped.
    Done,
    /// Its `poll_next` panicked, and it has been dropped. Holds the panic's
    /// payload if the panic came after the upstream had yielded items in the
    /// same batch: the first branch to read past those items resumes it.
    Panicked(Option<PanicPayload>),
}

/// Why a poll of the upstream stopped pulling items.
pub(crate) enum BatchEnd {
    /// The batch is as large as the limit. Holds the upstream's latest
    /// `size_hint`.
    Limit(SizeHint),
    /// The upstream returned `Pending`. Holds its latest `size_hint`.
    Pending(SizeHint),
    /// The upstream returned `None`.
    End,
    /// The upstream panicked after it had yielded the first item of the
    /// batch; holds the panic's payload.
    Panicked(PanicPayload),
}

/// The upstream while one branch polls it. Dropped while it still holds the
/// upstream, it tells the shared state that the first poll panicked (see the
/// module docs).
pub(crate) struct UpstreamPoll<'a, S: Stream> {
    shared: &'a Shared<S>,
    /// `Some` until the poll returns normally.
    upstream: Option<Pin<Box<S>>>,
    /// The most items this poll may pull. At least 1.
    limit: usize,
}

impl<'a, S: Stream> UpstreamPoll<'a, S> {
    /// A poll of `upstream`, taken out of the shared state, for at most
    /// `limit` items.
    pub(crate) fn new(shared: &'a Shared<S>, upstream: Pin<Box<S>>, limit: usize) -> Self {
        debug_assert!(limit >= 1);
        Self {
            shared,
            upstream: Some(upstream),
            limit,
        }
    }

    /// Polls the upstream with `waker` until it has yielded `limit` items
    /// into `batch` (the poller's empty read-ahead), returned `Pending`,
    /// ended or panicked after the first item. Returns the upstream, and why
    /// the batch ended.
    pub(crate) fn pull(
        mut self,
        waker: &Waker,
        batch: &mut VecDeque<S::Item>,
    ) -> (Pin<Box<S>>, BatchEnd) {
        debug_assert!(batch.is_empty());
        let end = self.pull_batch(waker, batch);
        let upstream = self.upstream.take().expect("pulled once");
        (upstream, end)
    }

    fn pull_batch(&mut self, waker: &Waker, batch: &mut VecDeque<S::Item>) -> BatchEnd {
        let upstream = self.upstream.as_mut().expect("pulled once");
        let mut cx = Context::from_waker(waker);
        if let Some(end) = pull_one(upstream, &mut cx, batch) {
            return end;
        }
        let limit = self.limit;
        let rest = catch_unwind(AssertUnwindSafe(|| {
            while batch.len() < limit {
                if let Some(end) = pull_one(upstream, &mut cx, batch) {
                    return end;
                }
            }
            BatchEnd::Limit(upstream.size_hint())
        }));
        rest.unwrap_or_else(BatchEnd::Panicked)
    }
}

/// Polls `upstream` once: pushes the item it yields onto `batch`, or
/// returns why the batch ends there.
fn pull_one<S: Stream>(
    upstream: &mut Pin<Box<S>>,
    cx: &mut Context<'_>,
    batch: &mut VecDeque<S::Item>,
) -> Option<BatchEnd> {
    match upstream.as_mut().poll_next(cx) {
        Poll::Ready(Some(item)) => {
            batch.push_back(item);
            None
        }
        Poll::Ready(None) => Some(BatchEnd::End),
        Poll::Pending => Some(BatchEnd::Pending(upstream.size_hint())),
    }
}

impl<S: Stream> Drop for UpstreamPoll<'_, S> {
    fn drop(&mut self) {
        if let Some(upstream) = self.upstream.take() {
            self.shared.first_poll_panicked(upstream);
        }
    }
}

/// Panics in a branch that has read everything the upstream yielded before
/// it panicked: with the upstream's own `payload` if this branch is the
/// first to get it (see [`Upstream::Panicked`]), else with a message that
/// says what happened.
pub(crate) fn upstream_panicked(payload: Option<PanicPayload>) -> ! {
    if let Some(payload) = payload {
        resume_unwind(payload);
    }
    panic!("fanout: the upstream stream panicked while another branch polled it; every item it yielded before has been delivered to this branch");
}
