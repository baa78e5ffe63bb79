//! Branches of a plain [`Iterator`], for threads, without an async runtime.
//!
//! [`fanout`], [`tee`] and [`fanout_array`] split one iterator (the lines of
//! a file, the rows of a CSV reader, a database cursor) into [`Branch`]es
//! that are iterators themselves, each yielding every item, in order. The
//! model is the crate's (see the [crate documentation](crate)):
//!
//! - **One buffer of `cap` items**, shared: a branch that is `cap` items
//!   ahead of the slowest one waits, so memory stays bounded however far a
//!   consumer lags. An item is cloned at most `n - 1` times (the last branch
//!   to read it takes it by move). A dropped branch holds nobody back.
//! - **No thread is spawned**: the thread whose branch needs an item that
//!   nobody has pulled yet calls the iterator's `next` itself. A thread that
//!   waits parks, and whoever makes its progress possible unparks it; it
//!   never spins and never sleeps on a timer.
//! - **`next` may block** (a channel's receiver, a socket, a cursor waiting
//!   on a server): it is called for one item at a time, and every item it
//!   returns is buffered for the other branches before it is called again.
//!   So while one thread waits inside `next`, the others read everything
//!   pulled before, and [`stats`](Branch::stats), [`lag`](Branch::lag),
//!   `clone` and `Debug` of any branch never wait for that thread. (Reading
//!   what is buffered is still done several items at a time.)
//! - **A panic in `next`** reaches the thread that called it; the other
//!   branches yield every item pulled before, then panic with a message
//!   that says the upstream panicked. No thread hangs.
//!
//! ```
//! use std::thread;
//!
//! let rows = (1..=10_000u64).map(|n| format!("row {n}"));
//! let [parser, counter] = fanout::blocking::fanout_array(rows, 64);
//! thread::scope(|s| {
//!     let parsed = s.spawn(move || parser.map(|row| row[4..].parse::<u64>().unwrap()).sum::<u64>());
//!     let counted = s.spawn(move || counter.count());
//!     assert_eq!(parsed.join().unwrap(), 50_005_000);
//!     assert_eq!(counted.join().unwrap(), 10_000);
//! });
//! ```
//!
//! # Async branches on threads
//!
//! An async [`Branch`](crate::Branch) can be read from a thread too, through
//! `futures::executor::block_on_stream`: that is the way when the upstream is
//! a [`Stream`]. For an iterator, use this module rather than wrapping it in
//! a stream: an async branch pulls several items in one poll of a stream
//! that is ready, so a `next` that blocks would keep the items pulled before
//! it from the other branches until it returns.
//!
//! ```
//! use fanout::StreamExt as _;
//! use futures::{executor::block_on_stream, stream};
//! use std::thread;
//!
//! let (first, second) = stream::iter(0..100).tee(16);
//! thread::scope(|s| {
//!     let first = s.spawn(move || block_on_stream(first).sum::<i32>());
//!     assert_eq!(block_on_stream(second).count(), 100);
//!     assert_eq!(first.join().unwrap(), 4950);
//! });
//! ```

use std::fmt;
use std::iter::FusedIterator;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use futures_core::Stream;

use crate::shared::Pull;
use crate::stream_ext::check_capacity;
use crate::Stats;

/// Splits `iter` into `n` branches that each yield every item, in order,
/// sharing one buffer of at most `cap` items; each branch can be read on a
/// thread of its own.
///
/// A branch that is `cap` items ahead of the slowest one waits (its thread
/// parks) until the slowest one reads, or is dropped; until then the
/// iterator is not advanced. The thread whose branch needs an item nobody
/// has pulled yet calls `next` on the iterator itself, one item at a time.
/// Creating the branches calls nothing. With `n == 0` no branch is returned
/// and the iterator is dropped untouched.
///
/// # Panics
///
/// Panics if `cap` is 0.
///
/// # Examples
///
/// ```
/// use std::thread;
///
/// let branches = fanout::blocking::fanout(1..=100, 4, 8);
/// thread::scope(|s| {
///     let sums: Vec<_> = branches
///         .into_iter()
///         .map(|branch| s.spawn(move || branch.sum::<u32>()))
///         .collect();
///     for sum in sums {
///         assert_eq!(sum.join().unwrap(), 5050);
///     }
/// });
/// ```
#[track_caller]
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub fn fanout<I>(iter: I, n: usize, cap: usize) -> Vec<Branch<I::IntoIter>>
where
    I: IntoIterator,
    I::Item: Clone,
{
    check_capacity(cap);
    crate::Branch::split(IterStream(iter.into_iter()), n, cap, Pull::OneAtATime)
        .into_iter()
        .map(|branch| Branch { branch })
        .collect()
}

/// Splits `iter` into two branches that share one buffer of at most `cap`
/// items: [`fanout`] with `n = 2`.
///
/// Unlike `itertools::tee`, which keeps every item that the slower half has
/// not read, a branch that is `cap` items ahead of the other waits for it,
/// and the two halves can be read on two threads.
///
/// # Panics
///
/// Panics if `cap` is 0.
///
/// # Examples
///
/// ```
/// use std::thread;
///
/// let (evens, all) = fanout::blocking::tee(0..1000, 16);
/// thread::scope(|s| {
///     let evens = s.spawn(move || evens.filter(|n| n % 2 == 0).count());
///     assert_eq!(all.count(), 1000);
///     assert_eq!(evens.join().unwrap(), 500);
/// });
/// ```
#[track_caller]
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub fn tee<I>(iter: I, cap: usize) -> (Branch<I::IntoIter>, Branch<I::IntoIter>)
where
    I: IntoIterator,
    I::Item: Clone,
{
    let [first, second] = fanout_array(iter, cap);
    (first, second)
}

/// Splits `iter` into `N` branches that share one buffer of at most `cap`
/// items, as an array: [`fanout`] with `n = N`, for destructuring.
///
/// # Panics
///
/// Panics if `cap` is 0.
///
/// # Examples
///
/// ```
/// use std::thread;
///
/// let words = ["alpha", "beta", "gamma"];
/// let [upper, lengths, count] = fanout::blocking::fanout_array(words, 2);
/// thread::scope(|s| {
///     let upper = s.spawn(move || upper.map(str::to_uppercase).collect::<Vec<_>>());
///     let lengths = s.spawn(move || lengths.map(str::len).sum::<usize>());
///     assert_eq!(count.count(), 3);
///     assert_eq!(upper.join().unwrap(), ["ALPHA", "BETA", "GAMMA"]);
///     assert_eq!(lengths.join().unwrap(), 14);
/// });
/// ```
#[track_caller]
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub fn fanout_array<const N: usize, I>(iter: I, cap: usize) -> [Branch<I::IntoIter>; N]
where
    I: IntoIterator,
    I::Item: Clone,
{
    fanout(iter, N, cap)
        .try_into()
        .expect("fanout returns n = N branches")
}

/// Iterator for the [`fanout`], [`tee`] and [`fanout_array`] functions: one
/// of the branches that share an iterator, to be read on a thread of its
/// own.
///
/// A branch yields every item of the iterator, in order, then `None`, and
/// stays ended. All branches of one fanout share one buffer of
/// [`capacity`](Branch::capacity) items; a branch that is that many items
/// ahead of the slowest branch parks its thread until the slowest one
/// reads. See the [module documentation](self) for the whole model.
///
/// Cloning a branch forks it: the clone starts where the original is and
/// yields the same remaining items. Dropping a branch detaches it: it stops
/// holding the other branches back at once.
///
/// A branch is `Send` and `Sync` when the iterator and its items are `Send`,
/// so it can move to a thread of its own.
///
/// # Examples
///
/// ```
/// use std::thread;
///
/// let lines = (1..=1000).map(|n| format!("line {n}"));
/// let (lengths, count) = fanout::blocking::tee(lines, 64);
/// thread::scope(|s| {
///     let lengths = s.spawn(move || lengths.map(|line| line.len()).sum::<usize>());
///     let count = s.spawn(move || count.count());
///     assert_eq!(lengths.join().unwrap(), 7893);
///     assert_eq!(count.join().unwrap(), 1000);
/// });
/// ```
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct Branch<I: Iterator> {
    /// The async branch this one polls, parking between polls.
    branch: crate::Branch<IterStream<I>>,
}

impl<I: Iterator> Branch<I> {
    /// Returns the number of items taken from the iterator that this branch
    /// has not yielded yet, at most [`capacity`](Branch::capacity): those
    /// still buffered for it, and those it has read ahead. It never waits for
    /// a thread that is inside the iterator's `next`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::thread;
    ///
    /// let (mut fast, slow) = fanout::blocking::tee(1..=10, 4);
    /// thread::scope(|s| {
    ///     s.spawn(|| assert_eq!(fast.next(), Some(1)));
    /// });
    /// // `slow` has yielded nothing of what `fast` pulled.
    /// assert_eq!((fast.lag(), slow.lag()), (0, 1));
    /// ```
    pub fn lag(&self) -> usize {
        self.branch.lag()
    }

    /// Returns the capacity of the buffer this branch shares with its
    /// siblings: the `cap` the fanout was built with.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::thread;
    ///
    /// let branches = fanout::blocking::fanout(0..100, 3, 16);
    /// thread::scope(|s| {
    ///     for branch in branches {
    ///         s.spawn(move || assert_eq!(branch.capacity(), 16));
    ///     }
    /// });
    /// ```
    pub fn capacity(&self) -> usize {
        self.branch.capacity()
    }

    /// Returns this branch's id: unique among the branches of its fanout
    /// (clones included), never reused, and the
    /// [`id`](crate::BranchStats::id) of its entry in
    /// [`stats`](Branch::stats).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::thread;
    ///
    /// let (first, second) = fanout::blocking::tee(0..3, 2);
    /// let fork = first.clone();
    /// assert_eq!([first.id(), second.id(), fork.id()], [0, 1, 2]);
    /// thread::scope(|s| {
    ///     s.spawn(move || assert_eq!(second.count(), 3));
    ///     s.spawn(move || assert_eq!(fork.count(), 3));
    ///     assert_eq!(first.count(), 3);
    /// });
    /// ```
    pub fn id(&self) -> usize {
        self.branch.id()
    }

    /// Returns a snapshot of the statistics of the whole fanout: the buffer,
    /// the iterator, and every live branch, so that any branch can tell which
    /// one holds the others back. It never waits for a thread that is inside
    /// the iterator's `next`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::thread;
    ///
    /// let (mut fast, slow) = fanout::blocking::tee(0..10, 3);
    /// thread::scope(|s| {
    ///     // `fast` reads until it is `cap` = 3 items ahead of the idle `slow`.
    ///     s.spawn(|| (&mut fast).take(3).for_each(drop));
    /// });
    /// let stats = fast.stats();
    /// assert_eq!((stats.buffered, stats.pulled), (3, 3));
    /// assert_eq!(stats.slowest().unwrap().id, slow.id());
    /// println!("{stats}"); // a table, one line per branch
    /// ```
    pub fn stats(&self) -> Stats {
        self.branch.stats()
    }
}

impl<I> Iterator for Branch<I>
where
    I: Iterator,
    I::Item: Clone,
{
    type Item = I::Item;

    /// Yields the next item: one buffered for this branch, or, at the end of
    /// the buffer, the iterator's next one, which this thread pulls itself
    /// if no other thread is pulling. Parks this thread while it has to wait:
    /// for room, when this branch is `cap` items ahead of the slowest one, or
    /// for another thread's `next` to return.
    ///
    /// # Panics
    ///
    /// Panics with the iterator's panic if the iterator's `next` panics when
    /// this thread calls it, and with a message that says so once this
    /// branch has yielded every item pulled before the iterator panicked on
    /// another thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::thread;
    ///
    /// let (mut first, mut second) = fanout::blocking::tee(["a", "b"], 1);
    /// thread::scope(|s| {
    ///     // `first` waits for `second` to read "a" before it reads "b".
    ///     s.spawn(move || assert_eq!(first.by_ref().collect::<Vec<_>>(), ["a", "b"]));
    ///     assert_eq!(second.next(), Some("a"));
    ///     assert_eq!(second.next(), Some("b"));
    ///     assert_eq!(second.next(), None);
    /// });
    /// ```
    fn next(&mut self) -> Option<I::Item> {
        match THREAD_WAKER.try_with(|waker| self.wait_for_next(waker)) {
            Ok(item) => item,
            // Called while this thread's locals are destroyed: a waker for
            // this call only.
            Err(_) => self.wait_for_next(&thread_waker()),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.branch.size_hint()
    }
}

impl<I> Branch<I>
where
    I: Iterator,
    I::Item: Clone,
{
    /// Polls the async branch with `waker`, which unparks this thread, and
    /// parks until it is ready. An unpark that was meant for something else
    /// costs a poll, nothing more.
    fn wait_for_next(&mut self, waker: &Waker) -> Option<I::Item> {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(item) = Pin::new(&mut self.branch).poll_next(&mut cx) {
                return item;
            }
            thread::park();
        }
    }
}

/// A branch yields `None` forever once it has yielded `None`.
impl<I> FusedIterator for Branch<I>
where
    I: Iterator,
    I::Item: Clone,
{
}

impl<I> Clone for Branch<I>
where
    I: Iterator,
    I::Item: Clone,
{
    /// Forks the branch: the clone starts at this branch's position, yields
    /// the same remaining items, and from now on holds the buffer like any
    /// other branch. It never waits for a thread that is inside the
    /// iterator's `next`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::thread;
    ///
    /// let (mut first, second) = fanout::blocking::tee(1..=3, 2);
    /// assert_eq!(first.next(), Some(1));
    /// let fork = first.clone();
    /// thread::scope(|s| {
    ///     s.spawn(move || assert_eq!(fork.collect::<Vec<_>>(), [2, 3]));
    ///     s.spawn(move || assert_eq!(second.collect::<Vec<_>>(), [1, 2, 3]));
    ///     assert_eq!(first.collect::<Vec<_>>(), [2, 3]);
    /// });
    /// ```
    fn clone(&self) -> Self {
        Self {
            branch: self.branch.clone(),
        }
    }
}

impl<I: Iterator> fmt::Debug for Branch<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.branch, f)
    }
}

/// An iterator as the upstream of a fanout: each poll calls `next` once, and
/// is never `Pending`.
struct IterStream<I>(I);

/// The iterator is never pinned: `next` takes it by `&mut`.
impl<I> Unpin for IterStream<I> {}

impl<I: Iterator> Stream for IterStream<I> {
    type Item = I::Item;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
        Poll::Ready(self.get_mut().0.next())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

thread_local! {
    /// The waker of the thread that polls: it unparks this thread. Made
    /// once per thread, so that a poll costs no allocation.
    static THREAD_WAKER: Waker = thread_waker();
}

/// A waker that unparks the current thread.
fn thread_waker() -> Waker {
    Waker::from(Arc::new(Unparker(thread::current())))
}

/// Wakes a thread that parks in [`Branch::next`] by unparking it.
struct Unparker(Thread);

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}
