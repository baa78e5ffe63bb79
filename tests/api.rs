//! The public surface: constructors and their panics, `n == 0`, `tee`, the
//! free function, `size_hint`, `lag`, `capacity`, the bounds on the batch
//! one poll pulls, auto traits, `Debug`, and upstream panics (also in the
//! middle of a batch).

mod support;

use std::marker::PhantomPinned;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use fanout::{Branch, StreamExt as _};
use futures::channel::mpsc;
use futures::executor::block_on;
use futures::future;
use futures::stream::{self, FusedStream, Stream};
use futures::StreamExt;

use support::{
    collect_all, first_batch, panic_message, poll_once, CountingPolls, DropFlag, Tracker,
};

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
    // A filter knows only an upper bound. Capacity 2, so that a poll pulls at
    // most 2 items (the free room) and leaves the upstream unfinished: with a
    // larger capacity one batch could pull every even number and see the
    // end, and the hints would be exact. Once the branches have pulled
    // `pulled` even numbers, the filter has consumed `0..2 * pulled - 1` of
    // `0..10` and knows that at most `11 - 2 * pulled` items are left, none
    // for sure; a branch adds the `lag` items it has not yielded yet.
    let hint = |lag: usize, pulled: u64| (lag, Some(lag + 11 - 2 * pulled as usize));
    let filtered = stream::iter(0..10).filter(|x| future::ready(x % 2 == 0));
    let (mut fast, slow) = filtered.tee(2);
    assert_eq!(fast.size_hint(), (0, Some(10)));
    assert_eq!(block_on(fast.next()), Some(0));
    let pulled = fast.stats().pulled;
    assert!(
        (1..=2).contains(&pulled),
        "the first batch fits in the room"
    );
    assert_eq!(fast.lag() as u64, pulled - 1);
    assert_eq!(fast.size_hint(), hint(fast.lag(), pulled));
    assert_eq!(block_on(fast.next()), Some(2));
    let pulled = fast.stats().pulled;
    assert_eq!(
        pulled, 2,
        "at most `cap` past `slow`, at least what `fast` read"
    );
    assert_eq!((fast.lag(), slow.lag()), (0, 2));
    assert_eq!(fast.size_hint(), hint(0, pulled));
    assert_eq!(fast.size_hint(), (0, Some(7)));
    assert_eq!(slow.size_hint(), (2, Some(9)));

    // An endless stream has no upper bound. The first poll pulls a batch of
    // at most 4, the room of the buffer: `a` has all of it but the first
    // left, `b` all of it.
    let (mut a, b) = stream::repeat(1u8).tee(4);
    assert_eq!(a.size_hint(), (usize::MAX, None));
    block_on(a.next()).unwrap();
    let pulled = a.stats().pulled as usize;
    assert!(
        (1..=4).contains(&pulled),
        "the first batch fits in the room"
    );
    assert_eq!(a.size_hint(), (usize::MAX, None), "saturates");
    assert_eq!(b.size_hint(), (usize::MAX, None), "saturates");
    assert_eq!(a.lag(), pulled - 1);
    assert_eq!(b.lag(), pulled);
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
    // A channel fed one item before each poll, so that each poll of `a`
    // pulls exactly one item (the next poll of the upstream in the batch
    // returns `Pending`) and the lags of `b` and `c` grow one by one.
    let (tx, rx) = mpsc::unbounded::<u64>();
    let [mut a, mut b, c]: [_; 3] = rx.fanout(3, 5).try_into().unwrap();
    assert_eq!((a.lag(), b.lag(), c.lag()), (0, 0, 0));
    for lag in 1..=5 {
        tx.unbounded_send(lag as u64 - 1).unwrap();
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(lag as u64 - 1)));
        assert_eq!((a.lag(), b.lag(), c.lag()), (0, lag, lag));
    }
    // The channel has an item, but the buffer is full.
    tx.unbounded_send(5).unwrap();
    a_full_buffer_of_5_waits_for_b(&mut a, &mut b, &c);
    assert_eq!(a.clone().capacity(), 5);

    // An upstream that is always ready: a poll of `a` may pull ahead, up to
    // the free room; the poller's lag counts what it pulled and has not
    // yielded yet (read ahead or buffered), and the others' lags count all of
    // it.
    let [mut a, mut b, c]: [_; 3] = stream::iter(0..10u64).fanout(3, 5).try_into().unwrap();
    assert_eq!((a.lag(), b.lag(), c.lag()), (0, 0, 0));
    for read in 1..=5 {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(read as u64 - 1)));
        let pulled = a.stats().pulled as usize;
        assert!((read..=5).contains(&pulled), "pulled {pulled} after {read}");
        assert_eq!((a.lag(), b.lag(), c.lag()), (pulled - read, pulled, pulled));
    }
    a_full_buffer_of_5_waits_for_b(&mut a, &mut b, &c);
}

/// `a` has read all 5 items of a full buffer, `b` and `c` none: `a` waits,
/// and `b` frees a slot by reading.
fn a_full_buffer_of_5_waits_for_b<S: Stream<Item = u64>>(
    a: &mut Branch<S>,
    b: &mut Branch<S>,
    c: &Branch<S>,
) {
    assert_eq!(poll_once(&mut *a), Poll::Pending);
    assert_eq!(c.lag(), 5, "at most the capacity");
    assert_eq!(poll_once(&mut *b), Poll::Ready(Some(0)));
    assert_eq!((a.lag(), b.lag(), c.lag()), (0, 4, 5));
    for branch in [&*a, &*b, c] {
        assert_eq!(branch.capacity(), 5);
    }
}

#[test]
fn one_poll_pulls_a_batch_within_the_free_room() {
    // A large buffer: one poll of a branch at the end may pull several items
    // from an upstream that is always ready, never more than the free room,
    // and never polls the upstream past its batch.
    const CAP: usize = 1024;
    let (upstream, counts) = CountingPolls::new(stream::iter(0..10_000u64));
    let (mut a, b) = upstream.tee(CAP);
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(0)));
    let batch = counts.yielded();
    assert!((1..=CAP).contains(&batch));
    assert_eq!(counts.polls(), batch);
    assert_eq!((a.lag(), b.lag()), (batch - 1, batch));
    let stats = a.stats();
    assert_eq!(stats.pulled, batch as u64);
    assert!(stats.buffered + stats.read_ahead <= CAP);
    // The poller yields the rest of its batch (from its read-ahead or the
    // buffer) without polling the upstream again.
    for expected in 1..batch as u64 {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(expected)));
    }
    assert_eq!(counts.polls(), batch);
    assert_eq!(a.lag(), 0);
    // At the end again, with room for more: another batch, which fits in
    // the room that is free (at most what the buffer and the read-aheads
    // leave).
    let stats = a.stats();
    let free = CAP - stats.buffered - stats.read_ahead;
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(batch as u64)));
    let next = counts.yielded() - batch;
    assert!((1..=free).contains(&next), "a batch of {next}, {free} free");
    assert_eq!(counts.polls(), batch + next);
    assert_eq!((a.lag(), b.lag()), (next - 1, batch + next));

    // A small buffer: `a` reads exactly `cap` items ahead of `b`, which holds
    // nothing (it has not polled), and the upstream is polled for exactly
    // those items.
    const SMALL: usize = 5;
    let (upstream, counts) = CountingPolls::new(stream::iter(0..10_000u64));
    let (mut a, mut b) = upstream.tee(SMALL);
    for expected in 0..SMALL as u64 {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(expected)));
        assert!(counts.yielded() <= SMALL);
    }
    assert_eq!(poll_once(&mut a), Poll::Pending);
    assert_eq!(counts.polls(), SMALL);
    // `b` frees room by reading 2 items. Each batch `a` pulls now fits in the
    // room that is free when its poll starts, the upstream is never polled
    // more than `cap` items past what `b` has yielded, and `a` runs at most
    // `cap` items ahead of `b`: exactly `cap` if `b` holds nothing read
    // ahead.
    assert_eq!(poll_once(&mut b), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut b), Poll::Ready(Some(1)));
    let b_ahead = b.stats().read_ahead;
    let mut a_next = SMALL as u64;
    loop {
        let stats = a.stats();
        let free = SMALL - stats.buffered - stats.read_ahead;
        let before = counts.yielded();
        match poll_once(&mut a) {
            Poll::Ready(Some(item)) => {
                assert_eq!(item, a_next);
                a_next += 1;
            }
            Poll::Ready(None) => unreachable!("`b` holds `a` back"),
            Poll::Pending => break,
        }
        assert!(counts.yielded() - before <= free, "a batch beyond the room");
        assert!(counts.yielded() <= 2 + SMALL, "polled past the bound");
        assert_eq!(counts.polls(), counts.yielded());
    }
    assert!(a_next <= 2 + SMALL as u64, "`a` ran past the bound");
    if b_ahead == 0 {
        assert_eq!(a_next, 2 + SMALL as u64, "`b` holds nothing ahead");
    }
    assert_eq!(poll_once(&mut a), Poll::Pending);
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

/// The start of the message a branch panics with when the upstream panicked
/// in another branch's poll.
const FANOUT_PANIC: &str = "fanout: the upstream stream panicked while another branch polled it";

/// The capacity of the mid-batch panic tests: room for a first batch of
/// several items.
const PANIC_CAP: usize = 64;

/// The number of items an upstream yields before it panics, so that the
/// first poll of a fresh `tee(PANIC_CAP)` pulls them all and panics in the
/// last poll of its batch (see [`first_batch`]).
fn items_before_a_mid_batch_panic() -> u64 {
    let batch = first_batch(2, PANIC_CAP) as u64;
    assert!(
        batch >= 3,
        "these tests need a first batch of 3 or more items; with {PANIC_CAP} free, it was {batch}"
    );
    batch - 1
}

#[test]
fn a_panic_after_the_first_item_of_a_batch_reaches_the_poller_after_the_items() {
    let items = items_before_a_mid_batch_panic();
    let (upstream, dropped) = DropFlag::new(PanicsAt {
        next: 0,
        panic_at: items,
    });
    let (upstream, counts) = CountingPolls::new(upstream);
    let (mut a, mut b) = upstream.tee(PANIC_CAP);
    // One poll of `a` pulls `0..items`, and the upstream panics in the last
    // poll of the batch: the panic is caught, the items are kept (read ahead
    // by `a` or buffered), and `a` returns the first of them normally.
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(0)));
    assert_eq!(counts.polls() as u64, items + 1);
    assert_eq!(counts.yielded() as u64, items);
    assert_eq!((a.lag() as u64, b.lag() as u64), (items - 1, items));
    assert!(
        dropped.load(Ordering::SeqCst),
        "a panicked upstream is dropped"
    );
    let stats = a.stats();
    assert_eq!(stats.pulled, items);
    assert_eq!(stats.buffered as u64, items, "all of them, for `b`");
    assert!(!stats.upstream_done, "it panicked, it did not end");

    // `a` reads the rest of the batch, then, reading past it, gets the
    // upstream's own panic, with its payload.
    for expected in 1..items {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(expected)));
    }
    let panic = catch_unwind(AssertUnwindSafe(|| poll_once(&mut a))).unwrap_err();
    assert_eq!(panic_message(panic), "upstream boom");

    // `b` gets every item, then the fanout's message: the payload went to
    // `a`.
    for expected in 0..items {
        assert_eq!(poll_once(&mut b), Poll::Ready(Some(expected)));
    }
    let panic = catch_unwind(AssertUnwindSafe(|| poll_once(&mut b))).unwrap_err();
    let message = panic_message(panic);
    assert!(message.starts_with(FANOUT_PANIC), "{message}");
    // The payload is resumed once: polled again, `a` gets the fanout's
    // message too.
    let panic = catch_unwind(AssertUnwindSafe(|| poll_once(&mut a))).unwrap_err();
    let message = panic_message(panic);
    assert!(message.starts_with(FANOUT_PANIC), "{message}");
    assert_eq!(
        counts.polls() as u64,
        items + 1,
        "a panicked upstream is not polled again"
    );
}

#[test]
fn after_a_mid_batch_panic_the_first_branch_to_read_past_the_items_gets_the_payload() {
    let items = items_before_a_mid_batch_panic();
    let (upstream, counts) = CountingPolls::new(PanicsAt {
        next: 0,
        panic_at: items,
    });
    let (mut a, mut b) = upstream.tee(PANIC_CAP);
    // `a` polls the upstream: a batch of `0..items`, then the panic.
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(0)));
    assert_eq!(counts.polls() as u64, items + 1);

    // `b` reads past the batch first, and so gets the upstream's panic,
    // although `a` was the poller.
    for expected in 0..items {
        assert_eq!(poll_once(&mut b), Poll::Ready(Some(expected)));
    }
    let panic = catch_unwind(AssertUnwindSafe(|| poll_once(&mut b))).unwrap_err();
    assert_eq!(panic_message(panic), "upstream boom");

    // `a` still gets the items it has not read, then the fanout's message.
    for expected in 1..items {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(expected)));
    }
    let panic = catch_unwind(AssertUnwindSafe(|| poll_once(&mut a))).unwrap_err();
    let message = panic_message(panic);
    assert!(message.starts_with(FANOUT_PANIC), "{message}");
    assert_eq!(counts.polls() as u64, items + 1);
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
    // `b` starts a batch whose first poll of the upstream panics: the panic
    // reaches `b` at once.
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
