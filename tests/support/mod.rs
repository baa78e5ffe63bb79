//! Instruments shared by the integration tests: items that count their
//! clones and live copies, and upstreams that count their polls.

#![allow(dead_code)] // each test file uses a part of this module

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;

/// Counters shared by every [`Tracked`] item made from one [`Tracker`].
#[derive(Debug, Default)]
pub struct Tracker {
    live: AtomicUsize,
    clones: AtomicUsize,
}

impl Tracker {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Makes an item with value `value`, counted as live until dropped.
    pub fn item(self: &Arc<Self>, value: u64) -> Tracked {
        self.live.fetch_add(1, Ordering::SeqCst);
        Tracked {
            value,
            tracker: Arc::clone(self),
        }
    }

    /// Items (originals and clones) alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Clones made so far.
    pub fn clones(&self) -> usize {
        self.clones.load(Ordering::SeqCst)
    }

    /// A stream of `count` tracked items with values `0..count`.
    pub fn stream(self: &Arc<Self>, count: u64) -> impl Stream<Item = Tracked> + Unpin {
        let tracker = Arc::clone(self);
        futures::stream::iter((0..count).map(move |value| tracker.item(value)))
    }
}

/// An item whose clones and live copies are counted by its [`Tracker`].
#[derive(Debug)]
pub struct Tracked {
    pub value: u64,
    tracker: Arc<Tracker>,
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        self.tracker.clones.fetch_add(1, Ordering::SeqCst);
        self.tracker.item(self.value)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.tracker.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wraps a stream and counts the calls to its `poll_next`.
#[derive(Debug)]
pub struct CountingPolls<S> {
    inner: S,
    polls: Arc<AtomicUsize>,
    ready_items: Arc<AtomicUsize>,
}

/// Read-side of the counters of a [`CountingPolls`].
#[derive(Debug, Clone)]
pub struct PollCounts {
    polls: Arc<AtomicUsize>,
    ready_items: Arc<AtomicUsize>,
}

impl PollCounts {
    /// Calls to the upstream's `poll_next`.
    pub fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    /// Items the upstream has yielded.
    pub fn yielded(&self) -> usize {
        self.ready_items.load(Ordering::SeqCst)
    }
}

impl<S> CountingPolls<S> {
    pub fn new(inner: S) -> (Self, PollCounts) {
        let counts = PollCounts {
            polls: Arc::default(),
            ready_items: Arc::default(),
        };
        let stream = Self {
            inner,
            polls: Arc::clone(&counts.polls),
            ready_items: Arc::clone(&counts.ready_items),
        };
        (stream, counts)
    }
}

impl<S: Stream + Unpin> Stream for CountingPolls<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(_)) = polled {
            self.ready_items.fetch_add(1, Ordering::SeqCst);
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
