//! The extension trait that adds [`fanout`](StreamExt::fanout),
//! [`share`](StreamExt::share) and their variants to every stream, and the
//! free functions behind it.

use futures_core::Stream;

use crate::shared::{Pull, Shared};
use crate::sync::Arc;
use crate::{Branch, Subscriber};

/// Splits `stream` into `n` branches that each yield every item, in order,
/// sharing one buffer of at most `cap` items.
///
/// This is the same as [`StreamExt::fanout`], for streams on which the method
/// is ambiguous: a type that is both a `Stream` and a `Sink` also has
/// `futures::SinkExt::fanout` when that trait is in scope.
///
/// # Panics
///
/// Panics if `cap` is 0.
///
/// # Examples
///
/// ```
/// use futures::{executor::block_on, future, stream, StreamExt};
///
/// let branches = fanout::fanout(stream::iter(["a", "b"]), 3, 8);
/// let outputs = block_on(future::join_all(branches.into_iter().map(|b| b.collect::<Vec<_>>())));
/// assert_eq!(outputs, [["a", "b"], ["a", "b"], ["a", "b"]]);
/// ```
#[track_caller]
#[must_use = "streams do nothing unless polled"]
pub fn fanout<S>(stream: S, n: usize, cap: usize) -> Vec<Branch<S>>
where
    S: Stream,
    S::Item: Clone,
{
    check_capacity(cap);
    Branch::split(stream, n, cap, Pull::Batches)
}

/// Shares `stream` between branches that [subscribe](Subscriber::subscribe)
/// later, over one buffer of at most `cap` items: no branch yet, and
/// nothing polled.
///
/// This is the same as [`StreamExt::share`], for streams on which the method
/// is ambiguous.
///
/// # Panics
///
/// Panics if `cap` is 0.
///
/// # Examples
///
/// ```
/// use futures::{executor::block_on, stream, StreamExt};
///
/// let feed = fanout::share(stream::iter(["a", "b"]), 8);
/// let client = feed.subscribe();
/// assert_eq!(block_on(client.collect::<Vec<_>>()), ["a", "b"]);
/// ```
#[track_caller]
#[must_use = "a subscriber does nothing until a branch subscribes"]
pub fn share<S>(stream: S, cap: usize) -> Subscriber<S>
where
    S: Stream,
    S::Item: Clone,
{
    share_replay(stream, cap, 0)
}

/// [`share`] that keeps the latest `replay` items for branches that
/// subscribe later.
#[track_caller]
fn share_replay<S>(stream: S, cap: usize, replay: usize) -> Subscriber<S>
where
    S: Stream,
    S::Item: Clone,
{
    check_capacity(cap);
    assert!(
        replay <= cap,
        "fanout: `replay` must be at most the capacity `cap`, got replay {replay} > cap {cap}"
    );
    let shared = Shared::new(stream, 0, cap, replay, Pull::Batches);
    Subscriber::new(Arc::new(shared))
}

/// Panics, at the caller's call site, if `cap` is 0.
#[track_caller]
pub(crate) fn check_capacity(cap: usize) {
    assert!(
        cap > 0,
        "fanout: the buffer capacity `cap` must be at least 1, got {cap}"
    );
}

/// An extension trait for [`Stream`]s that splits one stream into several
/// branches over one bounded buffer.
///
/// It is implemented for every `Stream`. Its name is the same as that of
/// `futures::StreamExt`, so import it anonymously, next to that one:
///
/// ```
/// use fanout::StreamExt as _;
/// use futures::StreamExt;
/// # let _ = futures::stream::iter([1]).map(|x| x).tee(1);
/// ```
///
/// or call it fully qualified, as `fanout::StreamExt::fanout(stream, n, cap)`,
/// or use the free function [`fanout()`](crate::fanout()).
pub trait StreamExt: Stream {
    /// Splits this stream into `n` branches that each yield every item, in
    /// order, sharing one buffer of at most `cap` items.
    ///
    /// Each item is stored once, however many branches there are, and
    /// cloned for every branch but the last to read it, which takes it by
    /// move. A branch that is `cap` items ahead of the slowest branch waits
    /// (returns `Pending`) until the slowest one reads, or is dropped; until
    /// then the upstream is not polled. So memory is bounded by `cap` items,
    /// and a slow branch slows the upstream down instead of making the
    /// buffer grow.
    ///
    /// Nothing is spawned: a branch that needs an item nobody has pulled yet
    /// polls this stream itself, so the branches work on any executor, in
    /// one task or in many. It may poll ahead while the stream has items
    /// ready, up to a share of the free room, and yields the first. Creating
    /// the branches polls nothing. With `n == 0` no branch is returned and
    /// the stream is dropped unpolled.
    ///
    /// # Panics
    ///
    /// Panics if `cap` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, stream, StreamExt};
    ///
    /// let mut branches = stream::iter(1..=4).fanout(3, 2);
    /// let mut slow = branches.pop().unwrap();
    ///
    /// block_on(async {
    ///     // The other two read ahead until they are `cap` = 2 items ahead of `slow`...
    ///     for fast in &mut branches {
    ///         assert_eq!(fast.next().await, Some(1));
    ///         assert_eq!(fast.next().await, Some(2));
    ///     }
    ///     assert_eq!(slow.lag(), 2);
    ///     // ...and there they wait, until `slow` reads and frees a slot.
    ///     assert!(futures::poll!(branches[0].next()).is_pending());
    ///     assert_eq!(slow.next().await, Some(1));
    ///     assert_eq!(branches[0].next().await, Some(3));
    /// });
    /// ```
    #[track_caller]
    #[must_use = "streams do nothing unless polled"]
    fn fanout(self, n: usize, cap: usize) -> Vec<Branch<Self>>
    where
        Self: Sized,
        Self::Item: Clone,
    {
        fanout(self, n, cap)
    }

    /// Splits this stream into two branches that share one buffer of at most
    /// `cap` items: [`fanout`](StreamExt::fanout) with `n = 2`.
    ///
    /// Unlike an unbounded tee, a branch that is `cap` items ahead of the
    /// other waits for it, so memory stays bounded when one consumer lags.
    ///
    /// # Panics
    ///
    /// Panics if `cap` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, future, stream, StreamExt};
    ///
    /// let (evens, all) = stream::iter(0..6).tee(4);
    /// let (evens, all) = block_on(future::join(
    ///     evens.filter(|x| future::ready(x % 2 == 0)).collect::<Vec<_>>(),
    ///     all.collect::<Vec<_>>(),
    /// ));
    /// assert_eq!(evens, [0, 2, 4]);
    /// assert_eq!(all, [0, 1, 2, 3, 4, 5]);
    /// ```
    #[track_caller]
    #[must_use = "streams do nothing unless polled"]
    fn tee(self, cap: usize) -> (Branch<Self>, Branch<Self>)
    where
        Self: Sized,
        Self::Item: Clone,
    {
        let [first, second] = self.fanout_array(cap);
        (first, second)
    }

    /// Splits this stream into `N` branches, as an array:
    /// [`fanout`](StreamExt::fanout) with `n = N`, for a fixed set of
    /// consumers, destructured in place.
    ///
    /// # Panics
    ///
    /// Panics if `cap` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, future, stream, StreamExt};
    ///
    /// let [parser, metrics, audit] = stream::iter(1..=100).fanout_array(16);
    /// let (parsed, total, audited) = block_on(future::join3(
    ///     parser.map(|n| n * 2).collect::<Vec<_>>(),
    ///     metrics.fold(0, |sum, n| future::ready(sum + n)),
    ///     audit.count(),
    /// ));
    /// assert_eq!((parsed.len(), total, audited), (100, 5050, 100));
    /// ```
    #[track_caller]
    #[must_use = "streams do nothing unless polled"]
    fn fanout_array<const N: usize>(self, cap: usize) -> [Branch<Self>; N]
    where
        Self: Sized,
        Self::Item: Clone,
    {
        fanout(self, N, cap)
            .try_into()
            .expect("fanout returns n = N branches")
    }

    /// Shares this stream between branches that
    /// [subscribe](Subscriber::subscribe) at any time, over one buffer of at
    /// most `cap` items: for consumers that come and go, such as the
    /// clients of a server.
    ///
    /// The [`Subscriber`] holds no branch and polls nothing; each
    /// [`subscribe`](Subscriber::subscribe) adds a lossless branch that
    /// starts at the live edge, and from then on is like the branches of
    /// [`fanout`](StreamExt::fanout). While no branch is alive, nothing is
    /// polled and nothing new is buffered.
    ///
    /// # Panics
    ///
    /// Panics if `cap` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, future, stream, StreamExt};
    ///
    /// let feed = stream::iter(0..1000).share(64);
    /// let clients: Vec<_> = (0..3).map(|_| feed.subscribe()).collect();
    /// let totals = block_on(future::join_all(clients.into_iter().map(|client| client.count())));
    /// assert_eq!(totals, [1000, 1000, 1000]);
    /// ```
    #[track_caller]
    #[must_use = "a subscriber does nothing until a branch subscribes"]
    fn share(self, cap: usize) -> Subscriber<Self>
    where
        Self: Sized,
        Self::Item: Clone,
    {
        share(self, cap)
    }

    /// [`share`](StreamExt::share), and keep the latest `replay` items pulled
    /// for branches that subscribe later: a new branch first yields the
    /// latest items pulled before it subscribed (at most `replay`, and only
    /// those still held), then the live ones. Like Kotlin's `SharedFlow`
    /// with a replay cache, for a late client that needs some context.
    ///
    /// The items are kept even after every branch has read them. They count
    /// against `cap`, but never make anyone wait: when a branch needs room,
    /// the oldest kept item that no branch has still to read is dropped
    /// first. Items in the replay window are cloned for every branch that
    /// reads them, the last one too, since the fanout keeps the original.
    /// A branch needs a free slot to poll the upstream, so with
    /// `replay == cap` a poll drops the oldest kept item even if the upstream
    /// turns out to have nothing new: choose `replay` below `cap` to keep
    /// exactly `replay`.
    ///
    /// # Panics
    ///
    /// Panics if `cap` is 0, or if `replay` is greater than `cap`.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, stream, StreamExt};
    ///
    /// let feed = stream::iter(0..100).share_replay(32, 3);
    /// let first = feed.subscribe();
    /// assert_eq!(block_on(first.count()), 100);
    /// // Every branch has read every item; the last 3 are kept for late ones.
    /// assert_eq!(feed.stats().kept_for_replay, 3);
    /// let late = feed.subscribe();
    /// assert_eq!(block_on(late.collect::<Vec<_>>()), [97, 98, 99]);
    /// ```
    #[track_caller]
    #[must_use = "a subscriber does nothing until a branch subscribes"]
    fn share_replay(self, cap: usize, replay: usize) -> Subscriber<Self>
    where
        Self: Sized,
        Self::Item: Clone,
    {
        share_replay(self, cap, replay)
    }
}

impl<S: Stream + ?Sized> StreamExt for S {}
