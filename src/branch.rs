//! One consumer's view of a fanout.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::stream::{FusedStream, Stream};

use crate::shared::Shared;
use crate::sync::Arc;

/// Stream for the [`fanout`](crate::StreamExt::fanout) and
/// [`tee`](crate::StreamExt::tee) methods: one of the branches that share an
/// upstream stream.
///
/// A branch yields every item of the upstream, in order, then `None`. All
/// branches of one fanout share one buffer of [`capacity`](Branch::capacity)
/// items; a branch that is that many items ahead of the slowest branch waits
/// for it. See the [crate documentation](crate) for the whole model.
///
/// Cloning a branch forks it: the clone starts where the original is and
/// yields the same remaining items. Dropping a branch detaches it: it stops
/// holding the other branches back at once.
///
/// # Examples
///
/// ```
/// use fanout::StreamExt as _;
/// use futures::{executor::block_on, stream, StreamExt};
///
/// block_on(async {
///     let (mut first, second) = stream::iter(1..=3).tee(2);
///     assert_eq!(first.next().await, Some(1));
///
///     let mut fork = first.clone();
///     assert_eq!(fork.next().await, Some(2));
///     assert_eq!(first.next().await, Some(2));
///     drop(second); // no longer holds the others back
///
///     assert_eq!(first.collect::<Vec<_>>().await, [3]);
///     assert_eq!(fork.collect::<Vec<_>>().await, [3]);
/// });
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct Branch<S: Stream> {
    shared: Arc<Shared<S>>,
    /// Unique among the branches of this fanout.
    id: usize,
    /// The position of the next item this branch yields.
    position: u64,
    /// This branch has yielded `None`.
    terminated: bool,
}

impl<S: Stream> Branch<S> {
    /// Splits `upstream` into `branches` branches sharing a buffer of
    /// `capacity` items. Polls nothing.
    pub(crate) fn split(upstream: S, branches: usize, capacity: usize) -> Vec<Self> {
        if branches == 0 {
            return Vec::new();
        }
        let shared = Arc::new(Shared::new(upstream, branches, capacity));
        (0..branches)
            .map(|id| Self {
                shared: Arc::clone(&shared),
                id,
                position: 0,
                terminated: false,
            })
            .collect()
    }

    /// Returns the number of items buffered that this branch has not read
    /// yet: how far the fastest branch is ahead of this one, at most
    /// [`capacity`](Branch::capacity).
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, stream, StreamExt};
    ///
    /// block_on(async {
    ///     let (mut fast, slow) = stream::iter(1..=10).tee(4);
    ///     fast.next().await;
    ///     fast.next().await;
    ///     assert_eq!(fast.lag(), 0);
    ///     assert_eq!(slow.lag(), 2);
    /// });
    /// ```
    pub fn lag(&self) -> usize {
        self.shared.lag(self.position)
    }

    /// Returns the capacity of the buffer this branch shares with its
    /// siblings: the `cap` the fanout was built with.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::stream;
    ///
    /// let branches = stream::iter(0..100).fanout(3, 16);
    /// assert!(branches.iter().all(|branch| branch.capacity() == 16));
    /// ```
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }
}

impl<S> Stream for Branch<S>
where
    S: Stream,
    S::Item: Clone,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        if this.terminated {
            return Poll::Ready(None);
        }
        let polled = this.shared.poll_next(this.id, &mut this.position, cx);
        if let Poll::Ready(None) = polled {
            this.terminated = true;
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.shared.size_hint(self.position)
    }
}

impl<S> FusedStream for Branch<S>
where
    S: Stream,
    S::Item: Clone,
{
    fn is_terminated(&self) -> bool {
        self.terminated
    }
}

impl<S: Stream> Clone for Branch<S> {
    /// Forks the branch: the clone starts at this branch's position, yields
    /// the same remaining items, and from now on holds the buffer like any
    /// other branch.
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            id: self.shared.fork(self.position),
            position: self.position,
            terminated: self.terminated,
        }
    }
}

impl<S: Stream> Drop for Branch<S> {
    fn drop(&mut self) {
        self.shared.release(self.id, self.position);
    }
}

impl<S: Stream> fmt::Debug for Branch<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Branch")
            .field("id", &self.id)
            .field("position", &self.position)
            .field("capacity", &self.capacity())
            .field("terminated", &self.terminated)
            .finish_non_exhaustive()
    }
}
