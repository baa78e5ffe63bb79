//! One consumer's view of a fanout.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::stream::{FusedStream, Stream};

use crate::read_ahead::ReadAhead;
use crate::shared::{Delivery, Pull, Shared};
use crate::sync::Arc;
use crate::{Lossy, Stats, Subscriber};

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
    /// This branch's key in the shared registry of branches.
    key: usize,
    /// Unique among the branches of this fanout, never reused.
    id: usize,
    /// This branch has yielded `None`.
    terminated: bool,
    /// The items taken from the buffer, to yield before anything else.
    ahead: ReadAhead<S::Item>,
}

impl<S: Stream> Branch<S> {
    /// Splits `upstream` into `branches` branches sharing a buffer of
    /// `capacity` items, pulled as `pull` says. Polls nothing.
    pub(crate) fn split(upstream: S, branches: usize, capacity: usize, pull: Pull) -> Vec<Self> {
        if branches == 0 {
            return Vec::new();
        }
        let shared = Arc::new(Shared::new(upstream, branches, capacity, 0, pull));
        (0..branches)
            .map(|id| Self::new(Arc::clone(&shared), id, id, false))
            .collect()
    }

    /// A new branch of the fanout `shared` (see [`Subscriber::subscribe`]).
    pub(crate) fn subscribed(shared: Arc<Shared<S>>) -> Self {
        let (key, id) = shared.subscribe();
        Self::new(shared, key, id, false)
    }

    fn new(shared: Arc<Shared<S>>, key: usize, id: usize, terminated: bool) -> Self {
        Self {
            shared,
            key,
            id,
            terminated,
            ahead: ReadAhead::default(),
        }
    }

    /// The position of the next item this branch yields.
    fn position(&self) -> u64 {
        let ahead = self.ahead.lock();
        self.shared.position(self.key, ahead.len())
    }

    /// Polls for the next item, or, for a lossy branch, the next report of
    /// missed items, as `D` yields them.
    #[inline]
    pub(crate) fn poll_delivery<D: Delivery<S::Item>>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<D::Output>>
    where
        S::Item: Clone,
    {
        if self.terminated {
            return Poll::Ready(None);
        }
        let ahead = self.ahead.get_mut();
        let polled = match ahead.len() {
            0 => self.shared.poll_next::<D>(self.key, ahead, cx),
            1 => Poll::Ready(Some(D::item(self.shared.take_last(self.key, ahead)))),
            _ => {
                let item = ahead.pop_front().expect("the read-ahead is not empty");
                return Poll::Ready(Some(D::item(item)));
            }
        };
        if let Poll::Ready(None) = polled {
            self.terminated = true;
        }
        polled
    }

    /// The bounds on the items this branch has still to yield, and whether
    /// it has a report of missed items to yield first.
    pub(crate) fn remaining(&self) -> ((usize, Option<usize>), bool) {
        let ahead = self.ahead.lock();
        self.shared.size_hint(self.key, ahead.len())
    }

    /// Returns the number of items taken from the upstream that this branch
    /// has not yielded yet, at most [`capacity`](Branch::capacity): those
    /// still buffered for it, and those it has read ahead.
    ///
    /// The branch that polls the upstream may pull several items ahead, up
    /// to a share of the free room, so the count can include items that no
    /// branch has yielded yet.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, stream, StreamExt};
    ///
    /// block_on(async {
    ///     let (mut fast, slow) = stream::iter(1..=10).tee(4);
    ///     assert_eq!(fast.next().await, Some(1));
    ///     // `slow` has yielded nothing of what `fast`'s poll pulled.
    ///     assert_eq!(slow.lag(), fast.lag() + 1);
    ///     assert!(slow.lag() <= slow.capacity());
    /// });
    /// ```
    pub fn lag(&self) -> usize {
        let ahead = self.ahead.lock();
        self.shared.lag(self.key, ahead.len())
    }

    /// Returns this branch's id: unique among the branches of its fanout
    /// (clones included), never reused, and the [`id`](crate::BranchStats::id)
    /// of its entry in [`stats`](Branch::stats).
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::stream;
    ///
    /// let (first, second) = stream::iter(0..3).tee(2);
    /// let fork = first.clone();
    /// assert_eq!([first.id(), second.id(), fork.id()], [0, 1, 2]);
    /// ```
    pub fn id(&self) -> usize {
        self.id
    }

    /// Returns a snapshot of the statistics of the whole fanout: the buffer,
    /// the upstream, and every live branch, so that any branch can tell which
    /// one holds the upstream back.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, stream, StreamExt};
    ///
    /// let (mut fast, slow) = stream::iter(0..10).tee(3);
    /// block_on(async {
    ///     for _ in 0..3 {
    ///         fast.next().await;
    ///     }
    /// });
    /// let stats = fast.stats();
    /// assert_eq!((stats.buffered, stats.pulled), (3, 3));
    /// assert_eq!(stats.slowest().unwrap().id, slow.id());
    /// ```
    pub fn stats(&self) -> Stats {
        let ahead = self.ahead.lock();
        self.shared.stats(self.key, ahead.len())
    }

    /// Turns this branch into a [`Lossy`] one, which never holds the other
    /// branches back: when the buffer is full and only lossy branches are at
    /// its oldest item, they give that item up, and later report how many
    /// items they missed as an `Err(Lagged(k))`.
    ///
    /// Items this branch has already read ahead are its own: it yields them
    /// first, and from then on reads one item at a time.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::{Lagged, StreamExt as _};
    /// use futures::{executor::block_on, stream, StreamExt};
    ///
    /// let (mut main, dashboard) = stream::iter(0..10).tee(4);
    /// let mut dashboard = dashboard.into_lossy();
    /// block_on(async {
    ///     // `main` does not wait for the idle dashboard.
    ///     for expected in 0..10 {
    ///         assert_eq!(main.next().await, Some(expected));
    ///     }
    ///     // The dashboard missed the oldest items and reads the last 4.
    ///     assert_eq!(dashboard.next().await, Some(Err(Lagged(6))));
    ///     assert_eq!(dashboard.next().await, Some(Ok(6)));
    /// });
    /// ```
    pub fn into_lossy(mut self) -> Lossy<S> {
        let ahead = self.ahead.get_mut().len();
        self.shared.make_lossy(self.key, ahead);
        Lossy::new(self)
    }

    /// Returns a [`Subscriber`] to this branch's fanout, which adds branches
    /// to it later without holding anything back itself.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, future, stream, StreamExt};
    ///
    /// let [parser, audit] = stream::iter(0..100).fanout_array(16);
    /// let subscriber = parser.subscriber();
    /// drop(audit);
    /// let metrics = subscriber.subscribe();
    /// assert_eq!(subscriber.branches(), 2);
    /// let (parsed, counted) = block_on(future::join(parser.count(), metrics.count()));
    /// assert_eq!((parsed, counted), (100, 100));
    /// ```
    pub fn subscriber(&self) -> Subscriber<S> {
        Subscriber::new(Arc::clone(&self.shared))
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

/// The items of the read-ahead are never pinned, so a branch is `Unpin`
/// whatever they are.
impl<S: Stream> Unpin for Branch<S> {}

impl<S> Stream for Branch<S>
where
    S: Stream,
    S::Item: Clone,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.get_mut().poll_delivery::<Self>(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.remaining().0
    }
}

/// A branch with backpressure yields the items themselves.
impl<S: Stream> Delivery<S::Item> for Branch<S> {
    type Output = S::Item;

    #[inline]
    fn item(item: S::Item) -> S::Item {
        item
    }

    fn missed(_: u64) -> S::Item {
        unreachable!("a branch with backpressure never misses items")
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

impl<S> Clone for Branch<S>
where
    S: Stream,
    S::Item: Clone,
{
    /// Forks the branch: the clone starts at this branch's position, yields
    /// the same remaining items, and from now on holds the buffer like any
    /// other branch. It gets a clone of what this branch has read ahead,
    /// counted against the capacity, even beyond it if there is no room:
    /// then the fanout holds at most a quarter of the capacity more until
    /// the branches have yielded those items.
    fn clone(&self) -> Self {
        let (key, id, ahead) = self.shared.fork(self.key, &self.ahead.lock());
        let mut fork = Self::new(Arc::clone(&self.shared), key, id, self.terminated);
        *fork.ahead.get_mut() = ahead;
        fork
    }
}

impl<S: Stream> Drop for Branch<S> {
    fn drop(&mut self) {
        self.shared.release(self.key, self.ahead.take());
    }
}

impl<S: Stream> fmt::Debug for Branch<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Branch")
            .field("id", &self.id)
            .field("position", &self.position())
            .field("read_ahead", &self.ahead.lock().len())
            .field("capacity", &self.capacity())
            .field("terminated", &self.terminated)
            .finish_non_exhaustive()
    }
}
