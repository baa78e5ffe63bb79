//! The extension trait that adds [`fanout`](StreamExt::fanout) and
//! [`tee`](StreamExt::tee) to every stream, and the free function behind it.

use futures_core::Stream;

use crate::shared::Pull;
use crate::Branch;

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
        let mut branches = fanout(self, 2, cap);
        let second = branches.pop().expect("fanout returns n = 2 branches");
        let first = branches.pop().expect("fanout returns n = 2 branches");
        (first, second)
    }
}

impl<S: Stream + ?Sized> StreamExt for S {}
