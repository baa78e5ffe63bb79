//! The public surface: constructors and their panics, `n == 0`, `tee`, the
//! free function, `size_hint`, `lag`, `capacity`, auto traits, `Debug`, and
//! upstream panics.

mod support;

use std::marker::PhantomPinned;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use fanout::{Branch, StreamExt as _};
use futures::executor::block_on;
use futures::future;
use futures::stream::{self, FusedStream, Stream};
use futures::StreamExt;

use support::{collect_all, panic_message, poll_once, CountingPolls, DropFlag, Tracker};

fn assert_send_sync<T: Send + Sync>() {}
fn assert_unpin<T: Unpin>() {}
fn assert_fused<T: FusedStream>() {}

// ------------------------------------------------------------------ panics

#[test]
#[should_panic(expected = "capacity")]
fn fanout_with_zero_capacity_panics() {
    let _ = stream::iter(0..3).fanout(2, 0);
}

#[test]
#[should_panic(expected = "capacity")]
fn tee_with_zero_capacity_panics() {
    let _ = stream::iter(0..3).tee(0);
}

#[test]
#[should_panic(expected = "capacity")]
fn free_fanout_with_zero_capacity_panics() {
    let _ = fanout::fanout(stream::iter(0..3), 2, 0);
}

#[test]
#[should_panic(expected = "capacity")]
fn fanout_with_zero_capacity_panics_even_with_zero_branches() {
    let _ = stream::iter(0..3).fanout(0, 0);
}

#[test]
#[should_panic(expected = "capacity")]
fn fully_qualified_fanout_with_zero_capacity_panics() {
    let _ = fanout::StreamExt::fanout(stream::iter(0..3), 1, 0);
}

#[test]
fn zero_capacity_panic_message_names_the_capacity_and_value() {
    let panic = catch_unwind(|| stream::iter(0..3).fanout(2, 0)).unwrap_err();
    let message = panic_message(panic);
    assert!(message.contains("capacity"), "{message}");
    assert!(message.contains('0'), "{message}");
}

// --------------------------------------------------------------- n and tee

#[test]
fn zero_branches_returns_no_branch_and_drops_the_upstream_unpolled() {
    let (upstream, dropped) = DropFlag::new(stream::iter(0..3));
    let (upstream, counts) = CountingPolls::new(upstream);
    let branches = upstream.fanout(0, 4);
    assert!(branches.is_empty());
    assert!(dropped.load(Ordering::SeqCst), "the upstream was dropped");
    assert_eq!(counts.polls(), 0);

    let (upstream, dropped) = DropFlag::new(stream::iter(0..3));
    assert!(fanout::fanout(upstream, 0, 1).is_empty());
    assert!(dropped.load(Ordering::SeqCst));
}

#[test]
fn fanout_returns_n_branches() {
    for n in [1, 2, 3, 10, 100] {
        let branches = stream::iter(0..3).fanout(n, 2);
        assert_eq!(branches.len(), n);
        assert!(branches.iter().all(|branch| branch.capacity() == 2));
    }
}

#[test]
fn tee_returns_two_branches_sharing_one_buffer() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..10u64));
    let (mut a, b) = upstream.tee(3);
    assert_eq!(a.capacity(), 3);
    assert_eq!(b.capacity(), 3);
    // They share one buffer: `a` waits for `b` after 3 items.
    let mut read = Vec::new();
    while let Poll::Ready(Some(item)) = poll_once(&mut a) {
        read.push(item);
    }
    assert_eq!(read, [0, 1, 2]);
    assert_eq!(b.lag(), 3);
    assert_eq!(counts.polls(), 3);
    let (a, b) = block_on(future::join(a.collect::<Vec<_>>(), b.collect::<Vec<_>>()));
    assert_eq!(a, (3..10).collect::<Vec<_>>());
    assert_eq!(b, (0..10).collect::<Vec<_>>());
}

#[test]
fn free_function_and_method_behave_alike() {
    for (n, cap) in [(1, 1), (3, 2), (4, 16)] {
        let by_fn = fanout::fanout(stream::iter(0..20u64), n, cap);
        let by_method = stream::iter(0..20u64).fanout(n, cap);
        let by_path = fanout::StreamExt::fanout(stream::iter(0..20u64), n, cap);
        for branches in [by_fn, by_method, by_path] {
            assert_eq!(branches.len(), n);
            assert!(branches.iter().all(|branch| branch.capacity() == cap));
            for output in collect_all(branches) {
                assert_eq!(output, (0..20).collect::<Vec<_>>());
            }
        }
    }
}

#[test]
fn free_function_exact_bound() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..10u64));
    let mut branches = fanout::fanout(upstream, 3, 2);
    let mut slow = branches.pop().unwrap();
    for branch in &mut branches {
        assert_eq!(poll_once(branch), Poll::Ready(Some(0)));
        assert_eq!(poll_once(branch), Poll::Ready(Some(1)));
        assert_eq!(poll_once(branch), Poll::Pending);
    }
    assert_eq!(counts.polls(), 2);
    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut branches[0]), Poll::Ready(Some(2)));
    assert_eq!(poll_once(&mut branches[1]), Poll::Ready(Some(2)));
    assert_eq!(counts.polls(), 3);
}

// ----------------------------------------------------------- size_hint, lag

#[test]
fn size_hint_is_buffered_items_plus_the_upstream_hint() {
    let (mut fast, mut slow) = stream::iter(0..10).tee(4);
    assert_eq!(fast.size_hint(), (10, Some(10)));
    assert_eq!(slow.size_hint(), (10, Some(10)));
    for _ in 0..3 {
        block_on(fast.next()).unwrap();
    }
    assert_eq!(slow.size_hint(), (10, Some(10)));
    assert_eq!(fast.size_hint(), (7, Some(7)));
    block_on(slow.next()).unwrap();
    assert_eq!(slow.size_hint(), (9, Some(9)));
    assert_eq!(fast.size_hint(), (7, Some(7)));

    // `fast` goes as far as the buffer lets it: 4 items ahead of `slow`.
    let fast_rest = block_on((&mut fast).take(2).collect::<Vec<_>>());
    assert_eq!(fast_rest, [3, 4]);
    assert_eq!(fast.size_hint(), (5, Some(5)));
    assert_eq!(slow.size_hint(), (9, Some(9)));
    assert_eq!(slow.lag(), 4);

    let rest = block_on(future::join(
        (&mut fast).collect::<Vec<_>>(),
        (&mut slow).collect::<Vec<_>>(),
    ));
    assert_eq!(rest.0, [5, 6, 7, 8, 9]);
    assert_eq!(rest.1, (1..10).collect::<Vec<_>>());
    assert_eq!(fast.size_hint(), (0, Some(0)));
    assert_eq!(slow.size_hint(), (0, Some(0)));
}

#[test]
fn size_hint_with_inexact_and_unbounded_upstreams() {
    // A filter knows only an upper bound.
    let filtered = stream::iter(0..10).filter(|x| future::ready(x % 2 == 0));
    let (mut fast, slow) = filtered.tee(8);
    assert_eq!(fast.size_hint(), (0, Some(10)));
    assert_eq!(block_on(fast.next()), Some(0));
    assert_eq!(block_on(fast.next()), Some(2));
    // Upstream has consumed 0..3: at most 7 left, none known for sure.
    assert_eq!(fast.size_hint(), (0, Some(7)));
    assert_eq!(slow.size_hint(), (2, Some(9)));

    // An endless stream has no upper bound.
    let (mut a, b) = stream::repeat(1u8).tee(4);
    assert_eq!(a.size_hint(), (usize::MAX, None));
    block_on(a.next()).unwrap();
    assert_eq!(b.size_hint(), (usize::MAX, None), "saturates");
    assert_eq!(b.lag(), 1);
}

#[test]
fn size_hint_after_termination_is_zero() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..2u64));
    let [branch]: [_; 1] = upstream.fanout(1, 1).try_into().unwrap();
    let mut branch = branch;
    assert_eq!(block_on((&mut branch).collect::<Vec<_>>()), [0, 1]);
    assert_eq!(branch.size_hint(), (0, Some(0)));
    assert_eq!(counts.polls(), 3);
}

#[test]
fn lag_counts_unread_buffered_items_and_capacity_is_fixed() {
    let [mut a, mut b, c]: [_; 3] = stream::iter(0..10u64).fanout(3, 5).try_into().unwrap();
    assert_eq!((a.lag(), b.lag(), c.lag()), (0, 0, 0));
    for lag in 1..=5 {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(lag as u64 - 1)));
        assert_eq!((a.lag(), b.lag(), c.lag()), (0, lag, lag));
    }
    assert_eq!(poll_once(&mut a), Poll::Pending);
    assert_eq!(c.lag(), 5, "at most the capacity");
    assert_eq!(poll_once(&mut b), Poll::Ready(Some(0)));
    assert_eq!((a.lag(), b.lag(), c.lag()), (0, 4, 5));
    for branch in [&a, &b, &c] {
        assert_eq!(branch.capacity(), 5);
    }
    assert_eq!(a.clone().capacity(), 5);
}

// ------------------------------------------------------ auto traits, Debug

type BoxedSend = Pin<Box<dyn Stream<Item = u64> + Send>>;

#[test]
fn branch_is_send_and_sync_for_a_send_upstream() {
    assert_send_sync::<Branch<BoxedSend>>();
    assert_send_sync::<Branch<stream::Iter<std::vec::IntoIter<String>>>>();
    // Items need only be `Send`, not `Sync`: the upstream above is `!Sync`
    // too, and so is this item type.
    assert_send_sync::<Branch<stream::Iter<std::vec::IntoIter<std::cell::Cell<u64>>>>>();
    assert_send_sync::<Branch<CountingPolls<stream::Iter<std::ops::Range<u64>>>>>();

    // And it really moves to and is used on other threads.
    let upstream: BoxedSend = Box::pin(stream::iter(0..100u64));
    let branches = upstream.fanout(3, 4);
    let handles: Vec<_> = branches
        .into_iter()
        .map(|branch| std::thread::spawn(move || block_on(branch.collect::<Vec<_>>())))
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), (0..100).collect::<Vec<_>>());
    }
}

#[test]
fn branch_is_always_unpin_and_fused() {
    assert_unpin::<Branch<NotUnpinBoxed>>();
    assert_unpin::<Branch<BoxedSend>>();
    assert_unpin::<Branch<stream::Iter<std::ops::Range<u8>>>>();
    assert_fused::<Branch<NotUnpinBoxed>>();
    assert_fused::<Branch<BoxedSend>>();
}

/// A `!Unpin`, non-`Debug` stream that keeps its counter out of line, so that
/// it needs no unsafe code to be polled through a pin.
struct NotUnpinBoxed {
    state: std::cell::Cell<(u64, u64)>,
    _pinned: PhantomPinned,
}

impl NotUnpinBoxed {
    fn new(end: u64) -> Self {
        Self {
            state: std::cell::Cell::new((0, end)),
            _pinned: PhantomPinned,
        }
    }
}

impl Stream for NotUnpinBoxed {
    type Item = u64;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<u64>> {
        let (next, end) = self.state.get();
        if next < end {
            self.state.set((next + 1, end));
            Poll::Ready(Some(next))
        } else {
            Poll::Ready(None)
        }
    }
}

#[test]
fn a_not_unpin_upstream_works() {
    let branches = NotUnpinBoxed::new(20).fanout(3, 2);
    for output in collect_all(branches) {
        assert_eq!(output, (0..20).collect::<Vec<_>>());
    }

    // Async blocks are `!Unpin` too.
    let upstream = stream::iter(0..10u64).then(|x| async move { x * 2 });
    let (a, b) = upstream.tee(1);
    let (a, b) = block_on(future::join(a.collect::<Vec<_>>(), b.collect::<Vec<_>>()));
    assert_eq!(a, (0..10).map(|x| x * 2).collect::<Vec<_>>());
    assert_eq!(a, b);
}

#[test]
fn debug_is_implemented_without_requiring_debug_upstream_or_items() {
    #[derive(Clone)]
    struct Opaque;
    let upstream = NotUnpinBoxed::new(3).map(|_| Opaque);
    let (mut a, b) = upstream.tee(7);
    let before = format!("{a:?}");
    assert!(before.contains("Branch"), "{before}");
    assert!(before.contains('7'), "the capacity is shown: {before}");
    assert!(poll_once(&mut a).is_ready());
    let after = format!("{a:?}");
    assert_ne!(before, after, "the position is shown");
    let _ = format!("{b:#?}");
}

// --------------------------------------------------------- upstream panics

/// Yields `0..panic_at`, then panics.
struct PanicsAt {
    next: u64,
    panic_at: u64,
}

impl Stream for PanicsAt {
    type Item = u64;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<u64>> {
        if self.next == self.panic_at {
            panic!("upstream boom");
        }
        self.next += 1;
        Poll::Ready(Some(self.next - 1))
    }
}

#[test]
fn an_upstream_panic_reaches_the_poller_and_then_the_others() {
    let (mut a, mut b) = PanicsAt {
        next: 0,
        panic_at: 3,
    }
    .tee(8);
    for expected in 0..3 {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(expected)));
    }
    let panic = catch_unwind(AssertUnwindSafe(|| poll_once(&mut a))).unwrap_err();
    assert_eq!(panic_message(panic), "upstream boom");

    // `b` still gets every item that was yielded, then panics with a
    // message that says the upstream panicked.
    for expected in 0..3 {
        assert_eq!(poll_once(&mut b), Poll::Ready(Some(expected)));
    }
    let panic = catch_unwind(AssertUnwindSafe(|| poll_once(&mut b))).unwrap_err();
    let message = panic_message(panic);
    assert!(message.contains("upstream"), "{message}");
    assert!(message.contains("panicked"), "{message}");
}

#[test]
fn a_branch_waiting_for_room_is_woken_by_an_upstream_panic() {
    let (a, b) = PanicsAt {
        next: 0,
        panic_at: 3,
    }
    .tee(3);
    let mut a = tokio_test::task::spawn(a);
    let mut b = tokio_test::task::spawn(b);
    for expected in 0..3 {
        tokio_test::assert_ready_eq!(a.poll_next(), Some(expected));
    }
    tokio_test::assert_pending!(a.poll_next());
    for expected in 0..3 {
        tokio_test::assert_ready_eq!(b.poll_next(), Some(expected));
    }
    assert!(a.is_woken(), "room was freed");
    let panic = catch_unwind(AssertUnwindSafe(|| b.poll_next())).unwrap_err();
    assert_eq!(panic_message(panic), "upstream boom");
    let panic = catch_unwind(AssertUnwindSafe(|| a.poll_next())).unwrap_err();
    let message = panic_message(panic);
    assert!(message.contains("upstream"), "{message}");
    assert!(message.contains("panicked"), "{message}");
    // And it keeps saying so rather than hanging or yielding `None`.
    let panic = catch_unwind(AssertUnwindSafe(|| b.poll_next())).unwrap_err();
    assert!(panic_message(panic).contains("panicked"));
}

#[test]
fn tracked_items_are_not_leaked_by_an_upstream_panic() {
    let tracker = Tracker::new();
    let items = tracker.stream(2);
    let upstream = items.chain(stream::poll_fn(|_| -> Poll<Option<support::Tracked>> {
        panic!("upstream boom")
    }));
    let (mut a, b) = upstream.tee(4);
    assert!(matches!(poll_once(&mut a), Poll::Ready(Some(_))));
    assert!(matches!(poll_once(&mut a), Poll::Ready(Some(_))));
    assert_eq!(tracker.live(), 2, "buffered for `b`");
    assert!(catch_unwind(AssertUnwindSafe(|| poll_once(&mut a))).is_err());
    assert_eq!(tracker.live(), 2);
    drop((a, b));
    assert_eq!(tracker.live(), 0);
}
