//! A handle that adds branches to a fanout at any time.

use std::fmt;

use futures_core::Stream;

use crate::shared::Shared;
use crate::sync::Arc;
use crate::{Branch, Stats};

/// A handle to a fanout that adds branches to it at any time: made by
/// [`share`](crate::StreamExt::share),
/// [`share_replay`](crate::StreamExt::share_replay), or
/// [`subscriber`](Branch::subscriber) on a branch of an existing fanout.
///
/// A subscriber holds no place in the buffer: it never holds the upstream or
/// any branch back, and a fanout that has subscribers but no branches polls
/// nothing and buffers nothing new. [`subscribe`](Subscriber::subscribe)
/// adds a lossless branch at the live edge (after the items kept for
/// replay, if any), which from then on is a branch like any other.
///
/// Cloning a subscriber is cheap: the clones share the fanout. The upstream
/// and every item held are dropped when the last branch and the last
/// subscriber are.
///
/// # Examples
///
/// ```
/// use fanout::StreamExt as _;
/// use futures::{executor::block_on, future, stream, StreamExt};
///
/// let feed = stream::iter(0..6).share(4);
/// let mut first = feed.subscribe();
/// block_on(async {
///     assert_eq!(first.next().await, Some(0));
///     // A later branch starts at the live edge: the next item pulled.
///     let late = feed.subscribe();
///     assert_eq!(feed.branches(), 2);
///     let (first, late) = future::join(first.collect::<Vec<_>>(), late.collect::<Vec<_>>()).await;
///     assert_eq!(first, [1, 2, 3, 4, 5]);
///     assert_eq!(late, [1, 2, 3, 4, 5]);
/// });
/// ```
pub struct Subscriber<S: Stream> {
    shared: Arc<Shared<S>>,
}

impl<S: Stream> Subscriber<S> {
    pub(crate) fn new(shared: Arc<Shared<S>>) -> Self {
        Self { shared }
    }

    /// Adds a new lossless branch to the fanout.
    ///
    /// The branch starts at the live edge: its first item is the first one
    /// the fanout takes in from the upstream after this call. (The branch
    /// that polls the upstream takes items in batches and reads some of them
    /// ahead, so an item taken in before the call is not the new branch's
    /// even if no branch has yielded it yet.) With [`share_replay`](crate::StreamExt::share_replay)
    /// the branch starts earlier, with the latest items pulled before the
    /// call that are still kept for replay.
    ///
    /// From then on the branch is like any other: it holds the others back
    /// when it lags by the capacity, and can be cloned, made
    /// [lossy](Branch::into_lossy) and dropped. If the upstream has ended,
    /// it yields what it has to replay, then `None`; if the upstream
    /// panicked, it yields what it has to replay, then panics.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, stream, StreamExt};
    ///
    /// let feed = stream::iter(1..=3).share_replay(8, 2);
    /// let first = feed.subscribe();
    /// assert_eq!(block_on(first.collect::<Vec<_>>()), [1, 2, 3]);
    /// // The upstream has ended; a late branch still gets the last 2 items.
    /// assert_eq!(block_on(feed.subscribe().collect::<Vec<_>>()), [2, 3]);
    /// ```
    pub fn subscribe(&self) -> Branch<S> {
        Branch::subscribed(Arc::clone(&self.shared))
    }

    /// Returns the number of live branches of the fanout, forks and lossy
    /// ones included.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::stream;
    ///
    /// let feed = stream::iter(0..10).share(4);
    /// assert_eq!(feed.branches(), 0);
    /// let branch = feed.subscribe();
    /// let fork = branch.clone();
    /// assert_eq!(feed.branches(), 2);
    /// drop((branch, fork));
    /// assert_eq!(feed.branches(), 0);
    /// ```
    pub fn branches(&self) -> usize {
        self.shared.branches()
    }

    /// Returns the capacity of the fanout's buffer: the `cap` it was built
    /// with.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::stream;
    ///
    /// assert_eq!(stream::iter(0..10).share(16).capacity(), 16);
    /// ```
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// Returns a snapshot of the statistics of the whole fanout, the same as
    /// [`Branch::stats`] gives, without holding a branch: for a `/stats`
    /// endpoint or a progress display.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, stream, StreamExt};
    ///
    /// let feed = stream::iter(0..100).share_replay(8, 4);
    /// let (mut fast, slow) = (feed.subscribe(), feed.subscribe());
    /// block_on(async {
    ///     for _ in 0..8 {
    ///         fast.next().await;
    ///     }
    /// });
    /// let stats = feed.stats();
    /// assert_eq!((stats.buffered, stats.pulled), (8, 8));
    /// assert_eq!(stats.slowest().map(|branch| branch.id), Some(slow.id()));
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared.stats_outside()
    }
}

impl<S: Stream> Clone for Subscriber<S> {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.shared))
    }
}

impl<S: Stream> fmt::Debug for Subscriber<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("branches", &self.branches())
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}
