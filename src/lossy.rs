//! Branches that give up items instead of holding the others back.

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::stream::{FusedStream, Stream};

use crate::shared::Delivery;
use crate::{Branch, Stats, Subscriber};

/// Stream for the [`into_lossy`](Branch::into_lossy) method: a branch that
/// never applies backpressure, and says so when it misses items.
///
/// When the buffer is full and lossy branches are the only ones still at its
/// oldest item, the branch that needs room to poll the upstream does not
/// wait: the lossy branches give that item up, even if the upstream then has
/// nothing new. A lossy branch's next poll then yields
/// `Err(Lagged(k))`, with `k` the items it missed, and it goes on from the
/// oldest item still buffered. Branches with backpressure are never skipped,
/// so a lossy branch slows nobody down; if every branch is lossy, the
/// upstream runs as fast as the fastest branch and the buffer holds the last
/// `cap` items, like a ring.
///
/// Use it for consumers that must not hold up the pipeline and can live
/// with gaps: a live dashboard, a sampler, a debug tap. Its [`Stats`] entry
/// has `lossy: true` and counts the items it `missed`.
///
/// Cloning a lossy branch forks it into another lossy branch at the same
/// position.
///
/// # Examples
///
/// ```
/// use fanout::{Lagged, StreamExt as _};
/// use futures::{executor::block_on, stream, StreamExt};
///
/// let (audit, dashboard) = stream::iter(0..100).tee(8);
/// let mut dashboard = dashboard.into_lossy();
///
/// // The audit log reads everything, never waiting for the dashboard.
/// assert_eq!(block_on(audit.count()), 100);
///
/// // The dashboard sees how much it missed, then the newest items. (To find
/// // the end of the upstream, the audit log needed one more slot: the
/// // dashboard gave that up too, and kept the last 7 items.)
/// assert_eq!(block_on(dashboard.next()), Some(Err(Lagged(93))));
/// let rest: Vec<_> = block_on(dashboard.collect());
/// assert_eq!(rest, (93..100).map(Ok).collect::<Vec<_>>());
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct Lossy<S: Stream> {
    branch: Branch<S>,
}

impl<S: Stream> Lossy<S> {
    /// Wraps `branch`, which the shared state already counts as lossy.
    pub(crate) fn new(branch: Branch<S>) -> Self {
        Self { branch }
    }

    /// Returns the number of items buffered that this branch has not read
    /// yet. See [`Branch::lag`].
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, stream, StreamExt};
    ///
    /// let (mut main, tap) = stream::iter(0..10).tee(4);
    /// let tap = tap.into_lossy();
    /// block_on(async {
    ///     for _ in 0..6 {
    ///         main.next().await;
    ///     }
    /// });
    /// assert_eq!(tap.lag(), 4); // never more than the capacity
    /// ```
    pub fn lag(&self) -> usize {
        self.branch.lag()
    }

    /// Returns this branch's id, unique within its fanout. See
    /// [`Branch::id`].
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::stream;
    ///
    /// let (_main, tap) = stream::iter(0..3).tee(2);
    /// assert_eq!(tap.into_lossy().id(), 1);
    /// ```
    pub fn id(&self) -> usize {
        self.branch.id()
    }

    /// Returns a [`Subscriber`] to this branch's fanout. See
    /// [`Branch::subscriber`].
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::stream;
    ///
    /// let (main, tap) = stream::iter(0..3).tee(2);
    /// let tap = tap.into_lossy();
    /// let subscriber = tap.subscriber();
    /// drop(main);
    /// assert_eq!(subscriber.branches(), 1);
    /// ```
    pub fn subscriber(&self) -> Subscriber<S> {
        self.branch.subscriber()
    }

    /// Returns a snapshot of the statistics of the whole fanout. See
    /// [`Branch::stats`].
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, stream, StreamExt};
    ///
    /// let (main, tap) = stream::iter(0..10).tee(4);
    /// let tap = tap.into_lossy();
    /// block_on(main.take(10).count());
    /// let stats = tap.stats();
    /// let entry = stats.branches.iter().find(|b| b.id == tap.id()).unwrap();
    /// assert!(entry.lossy);
    /// assert_eq!(entry.missed, 6);
    /// ```
    pub fn stats(&self) -> Stats {
        self.branch.stats()
    }
}

impl<S> Stream for Lossy<S>
where
    S: Stream,
    S::Item: Clone,
{
    type Item = Result<S::Item, Lagged>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().branch.poll_delivery::<Self>(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // A gap may still replace any number of the remaining items by one
        // report; a pending report comes on top of them.
        let ((lower, upper), gap_to_report) = self.branch.remaining();
        let pending = usize::from(gap_to_report);
        (
            usize::from(lower > 0 || gap_to_report),
            upper.and_then(|upper| upper.checked_add(pending)),
        )
    }
}

/// A lossy branch yields each item as `Ok`, and each gap as
/// `Err(Lagged(missed))`.
impl<S: Stream> Delivery<S::Item> for Lossy<S> {
    type Output = Result<S::Item, Lagged>;

    #[inline]
    fn item(item: S::Item) -> Self::Output {
        Ok(item)
    }

    fn missed(missed: u64) -> Self::Output {
        Err(Lagged(missed))
    }
}

impl<S> FusedStream for Lossy<S>
where
    S: Stream,
    S::Item: Clone,
{
    fn is_terminated(&self) -> bool {
        self.branch.is_terminated()
    }
}

impl<S> Clone for Lossy<S>
where
    S: Stream,
    S::Item: Clone,
{
    /// Forks the branch into another lossy branch at the same position.
    fn clone(&self) -> Self {
        Self::new(self.branch.clone())
    }
}

impl<S: Stream> fmt::Debug for Lossy<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Lossy").field(&self.branch).finish()
    }
}

/// The error a [`Lossy`] branch yields when it missed items: how many.
///
/// # Examples
///
/// ```
/// use fanout::Lagged;
///
/// let lagged = Lagged(3);
/// assert_eq!(lagged.to_string(), "the branch lagged behind and missed 3 items");
/// let error: Box<dyn std::error::Error> = Box::new(lagged);
/// # let _ = error;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lagged(pub u64);

impl fmt::Display for Lagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the branch lagged behind and missed {} items", self.0)
    }
}

impl Error for Lagged {}
