//! No lost wake-ups: every branch that returned `Pending` is woken once it can
//! make progress, whichever branch polled the upstream last and whatever
//! became of it, and it is its newest waker that is woken.
//!
//! The tests drive the branches by hand with `tokio_test` mock tasks, whose
//! `is_woken` tells whether the waker of their latest poll has been woken.
//! The upstreams are channels, or "gated" streams whose `poll_next` blocks
//! until the test tells it what to do, so that a branch can be polled on the
//! test thread while another branch is inside the upstream's `poll_next` on a
//! second thread.

mod support;

use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use fanout::{Branch, StreamExt as _};
use futures::channel::mpsc;
use futures::{stream, Stream, StreamExt};
use tokio_test::assert_pending;
use tokio_test::task::{spawn, Spawn};

use support::{poll_once, Tracked, Tracker};

/// Generous bound on how long a test waits for another thread: a hang guard
/// only, never reached when the crate works.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A capacity with room for a batch of several items: the branch that polls
/// the upstream may pull ahead up to a share of the free room, so with this
/// capacity and an empty buffer it pulls several items in one poll. (With a
/// small capacity, every batch may be a single item.)
const ROOMY: usize = 64;

/// Polls `stream` once from `task`, whose waker records the wake-ups.
fn poll<S: Stream + Unpin>(task: &mut Spawn<()>, stream: &mut S) -> Poll<Option<S::Item>> {
    task.enter(|cx, _| Pin::new(stream).poll_next(cx))
}

type Channel = Branch<mpsc::UnboundedReceiver<u32>>;

fn channel_fanout(n: usize, cap: usize) -> (mpsc::UnboundedSender<u32>, Vec<Channel>) {
    let (tx, rx) = mpsc::unbounded();
    (tx, rx.fanout(n, cap))
}

/// A channel fanned out into two branches, A and B, of capacity 4, each
/// polled once from its own task, A first: both wait on the empty channel.
fn two_waiting_on_a_channel() -> (mpsc::UnboundedSender<u32>, [Channel; 2], [Spawn<()>; 2]) {
    let (tx, branches) = channel_fanout(2, 4);
    let [mut a, mut b] = two(branches);
    let (mut ta, mut tb) = (spawn(()), spawn(()));
    assert_pending!(poll(&mut ta, &mut a));
    assert_pending!(poll(&mut tb, &mut b));
    (tx, [a, b], [ta, tb])
}

/// Sends `item` on `tx` to a branch that waits on the channel from `task`:
/// the task must be woken, and its next poll of `branch` yields the item.
fn send_and_expect_woken<S>(
    tx: &mpsc::UnboundedSender<u32>,
    item: u32,
    task: &mut Spawn<()>,
    branch: &mut S,
) where
    S: Stream<Item = u32> + Unpin,
{
    tx.unbounded_send(item).unwrap();
    assert!(
        task.is_woken(),
        "the upstream woke with item {item}, but the waiting branch was not woken"
    );
    assert_eq!(poll(task, branch), Poll::Ready(Some(item)));
}

/// Polls `branch` from `task`, which must yield `items` and then wait.
fn read_until_pending<S>(task: &mut Spawn<()>, branch: &mut S, items: Range<u32>)
where
    S: Stream<Item = u32> + Unpin,
{
    for item in items {
        assert_eq!(poll(task, branch), Poll::Ready(Some(item)));
    }
    assert_pending!(poll(task, branch));
}

fn two<T>(v: Vec<T>) -> [T; 2] {
    v.try_into().ok().expect("two branches")
}

fn three<T>(v: Vec<T>) -> [T; 3] {
    v.try_into().ok().expect("three branches")
}

// ---------------------------------------------------------------------------
// The branch that polled the upstream last is dropped, busy, or cancelled.
// ---------------------------------------------------------------------------

/// (a) A polls the empty upstream, B waits on it too, A is dropped: the item
/// that arrives later still wakes B.
#[test]
fn a_dropped_poller_does_not_strand_a_waiting_branch() {
    let (tx, [a, mut b], [_, mut tb]) = two_waiting_on_a_channel();
    drop(a);
    assert!(!tb.is_woken(), "nothing happened yet");
    send_and_expect_woken(&tx, 1, &mut tb, &mut b);

    // And again, now that B is the only branch.
    assert_pending!(poll(&mut tb, &mut b));
    send_and_expect_woken(&tx, 2, &mut tb, &mut b);
}

/// (a) with the other order: B polled first, then A, and A (the last
/// poller) is dropped.
#[test]
fn dropping_the_last_poller_does_not_strand_the_first() {
    let (tx, branches) = channel_fanout(3, 4);
    let [mut a, mut b, mut c] = three(branches);
    let (mut ta, mut tb) = (spawn(()), spawn(()));

    assert_pending!(poll(&mut tb, &mut b));
    assert_pending!(poll(&mut ta, &mut a));
    drop(a);
    send_and_expect_woken(&tx, 10, &mut tb, &mut b);
    // C never polled; it still gets the item.
    let mut tc = spawn(());
    assert_eq!(poll(&mut tc, &mut c), Poll::Ready(Some(10)));
}

/// (b) A polls the empty upstream, B waits on it too, A stays alive but is
/// never polled again: B is woken and gets the item, and A gets it later.
///
/// B runs four items ahead of A: exactly the capacity, since A holds no
/// read-ahead. B never waits for room here, only for the upstream.
#[test]
fn a_busy_poller_does_not_strand_a_waiting_branch() {
    let (tx, branches) = channel_fanout(2, 4);
    let [mut a, mut b] = two(branches);
    let (mut ta, mut tb) = (spawn(()), spawn(()));
    assert_pending!(poll(&mut ta, &mut a));
    assert_pending!(poll(&mut tb, &mut b));
    send_and_expect_woken(&tx, 1, &mut tb, &mut b);

    // B goes on alone while A is busy elsewhere: every item wakes it.
    for item in 2..=4 {
        assert_pending!(poll(&mut tb, &mut b));
        send_and_expect_woken(&tx, item, &mut tb, &mut b);
    }

    // A returned `Pending` and its item has arrived: it must have been woken.
    assert!(
        ta.is_woken(),
        "A waited for the upstream and was never woken"
    );
    for item in 1..=4 {
        assert_eq!(poll(&mut ta, &mut a), Poll::Ready(Some(item)));
    }
    assert_pending!(poll(&mut ta, &mut a));
}

/// (c) A's `next()` future returns `Pending` and is dropped (cancelled): B,
/// waiting on the upstream too, is woken by the item, and A loses nothing.
#[test]
fn a_cancelled_next_does_not_strand_a_waiting_branch_nor_lose_the_item() {
    let (tx, branches) = channel_fanout(2, 4);
    let [mut a, mut b] = two(branches);

    let mut next_a = spawn(a.next());
    assert_pending!(next_a.poll());
    drop(next_a);

    let mut tb = spawn(());
    assert_pending!(poll(&mut tb, &mut b));
    send_and_expect_woken(&tx, 7, &mut tb, &mut b);

    let mut next_a = spawn(a.next());
    assert_eq!(next_a.poll(), Poll::Ready(Some(7)));
}

/// (c) The cancelled future was the waiting branch's own, and the branch is
/// then polled from a new future: that one is woken.
#[test]
fn a_new_next_future_after_a_cancelled_one_is_woken() {
    let (tx, branches) = channel_fanout(2, 4);
    let [mut a, _b] = two(branches);

    let mut first = spawn(a.next());
    assert_pending!(first.poll());
    drop(first);
    let mut second = spawn(a.next());
    assert_pending!(second.poll());

    tx.unbounded_send(3).unwrap();
    assert!(second.is_woken());
    assert_eq!(second.poll(), Poll::Ready(Some(3)));
}

// ---------------------------------------------------------------------------
// The end of the upstream.
// ---------------------------------------------------------------------------

/// (d) The channel is closed while branches wait: every waiting branch is
/// woken, reads what is buffered for it, then gets `None`, and stays ended.
#[test]
fn closing_the_upstream_wakes_every_waiting_branch() {
    let (tx, branches) = channel_fanout(3, 4);
    let [mut a, mut b, mut c] = three(branches);
    let (mut ta, mut tb, mut tc) = (spawn(()), spawn(()), spawn(()));

    tx.unbounded_send(0).unwrap();
    assert_eq!(poll(&mut ta, &mut a), Poll::Ready(Some(0)));
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(Some(0)));
    assert_pending!(poll(&mut ta, &mut a));
    assert_pending!(poll(&mut tb, &mut b));
    assert!(!ta.is_woken() && !tb.is_woken());

    drop(tx);
    assert!(
        ta.is_woken(),
        "A waits on the upstream and was not woken by its end"
    );
    assert!(
        tb.is_woken(),
        "B waits on the upstream and was not woken by its end"
    );
    assert_eq!(poll(&mut ta, &mut a), Poll::Ready(None));
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(None));
    assert_eq!(poll(&mut tc, &mut c), Poll::Ready(Some(0)));
    assert_eq!(poll(&mut tc, &mut c), Poll::Ready(None));
    for (task, branch) in [(&mut ta, &mut a), (&mut tb, &mut b), (&mut tc, &mut c)] {
        assert_eq!(poll(task, branch), Poll::Ready(None));
    }
}

/// (d) Nothing buffered, every branch waiting when the channel closes.
#[test]
fn closing_an_empty_upstream_wakes_all_and_all_end() {
    for n in 1..=4 {
        let (tx, mut branches) = channel_fanout(n, 2);
        let mut tasks: Vec<_> = (0..n).map(|_| spawn(())).collect();
        for (task, branch) in tasks.iter_mut().zip(&mut branches) {
            assert_pending!(poll(task, branch));
        }
        drop(tx);
        for (i, (task, branch)) in tasks.iter_mut().zip(&mut branches).enumerate() {
            assert!(
                task.is_woken(),
                "n = {n}: branch {i} was not woken by the end"
            );
            assert_eq!(poll(task, branch), Poll::Ready(None));
        }
    }
}

// ---------------------------------------------------------------------------
// Waiting for room.
// ---------------------------------------------------------------------------

/// (e) A fast branch `cap` items ahead waits for room, and is woken when the
/// slow one reads.
#[test]
fn a_branch_waiting_for_room_is_woken_when_the_slowest_reads() {
    let [mut fast, mut slow] = two(stream::iter(0..10u32).fanout(2, 2));
    let (mut tf, mut ts) = (spawn(()), spawn(()));

    read_until_pending(&mut tf, &mut fast, 0..2);
    assert!(!tf.is_woken());

    for item in 0..8 {
        assert_eq!(poll(&mut ts, &mut slow), Poll::Ready(Some(item)));
        assert!(
            tf.is_woken(),
            "the slow branch read item {item} and freed room, but the fast one was not woken"
        );
        assert_eq!(poll(&mut tf, &mut fast), Poll::Ready(Some(item + 2)));
        assert_pending!(poll(&mut tf, &mut fast));
    }
}

/// (e) A fast branch waiting for room is woken when the slow one is dropped,
/// and then runs to the end alone.
#[test]
fn a_branch_waiting_for_room_is_woken_when_the_slowest_is_dropped() {
    let [mut fast, mut slow] = two(stream::iter(0..10u32).fanout(2, 3));
    let (mut tf, mut ts) = (spawn(()), spawn(()));

    assert_eq!(poll(&mut ts, &mut slow), Poll::Ready(Some(0)));
    read_until_pending(&mut tf, &mut fast, 0..4);
    drop(slow);
    assert!(
        tf.is_woken(),
        "the slow branch was dropped, but the fast one was not woken"
    );
    for item in 4..10 {
        assert_eq!(poll(&mut tf, &mut fast), Poll::Ready(Some(item)));
    }
    assert_eq!(poll(&mut tf, &mut fast), Poll::Ready(None));
}

/// (e) With two slow branches, room is freed when the second of them reads
/// the oldest item: the waiting branch is woken then at the latest.
#[test]
fn room_freed_by_the_last_reader_of_the_oldest_item_wakes_the_waiter() {
    let [mut fast, mut slow1, mut slow2] = three(stream::iter(0..10u32).fanout(3, 2));
    let (mut tf, mut t1, mut t2) = (spawn(()), spawn(()), spawn(()));

    read_until_pending(&mut tf, &mut fast, 0..2);

    assert_eq!(poll(&mut t1, &mut slow1), Poll::Ready(Some(0)));
    if tf.is_woken() {
        // A spurious wake-up is allowed; the buffer is still full.
        assert_pending!(poll(&mut tf, &mut fast));
    }
    assert_eq!(poll(&mut t2, &mut slow2), Poll::Ready(Some(0)));
    assert!(
        tf.is_woken(),
        "the oldest item was read by everyone, but the waiter was not woken"
    );
    assert_eq!(poll(&mut tf, &mut fast), Poll::Ready(Some(2)));
}

/// (e) Dropping a slow branch that was the last holder of the oldest item
/// wakes the waiter even when another slow branch remains.
#[test]
fn dropping_one_of_two_slow_branches_frees_room_when_the_other_read() {
    let [mut fast, mut slow1, slow2] = three(stream::iter(0..10u32).fanout(3, 2));
    let (mut tf, mut t1) = (spawn(()), spawn(()));

    assert_eq!(poll(&mut tf, &mut fast), Poll::Ready(Some(0)));
    assert_eq!(poll(&mut tf, &mut fast), Poll::Ready(Some(1)));
    assert_eq!(poll(&mut t1, &mut slow1), Poll::Ready(Some(0)));
    assert_pending!(poll(&mut tf, &mut fast));
    drop(slow2);
    assert!(
        tf.is_woken(),
        "dropping the last holder of the oldest item did not wake the waiter"
    );
    assert_eq!(poll(&mut tf, &mut fast), Poll::Ready(Some(2)));
}

/// (e) Room wait with a channel upstream: the fast branch waits for room,
/// and the end of the upstream does not make it skip an item or end early;
/// the slow branch's read wakes it.
#[test]
fn a_room_waiter_gets_its_items_in_order_once_the_slow_branch_reads() {
    let (tx, branches) = channel_fanout(2, 1);
    let [mut fast, mut slow] = two(branches);
    let (mut tf, mut ts) = (spawn(()), spawn(()));

    tx.unbounded_send(1).unwrap();
    tx.unbounded_send(2).unwrap();
    read_until_pending(&mut tf, &mut fast, 1..2);
    drop(tx);
    if tf.is_woken() {
        assert_pending!(poll(&mut tf, &mut fast), "the buffer is still full");
    }
    assert_eq!(poll(&mut ts, &mut slow), Poll::Ready(Some(1)));
    assert!(tf.is_woken());
    assert_eq!(poll(&mut tf, &mut fast), Poll::Ready(Some(2)));
    // Whether the upstream has ended is not known before it is polled, and
    // it is not polled while the buffer is full.
    assert_pending!(poll(&mut tf, &mut fast));
    assert_eq!(poll(&mut ts, &mut slow), Poll::Ready(Some(2)));
    assert!(tf.is_woken());
    assert_eq!(poll(&mut tf, &mut fast), Poll::Ready(None));
    assert_eq!(poll(&mut ts, &mut slow), Poll::Ready(None));
}

// ---------------------------------------------------------------------------
// Read-ahead: room that a branch's read-ahead holds, and cancellation.
// ---------------------------------------------------------------------------

/// The capacity of the read-ahead tests: room for batches of several items.
const READ_AHEAD_CAP: usize = 16;

/// Tracked items `0..len` fanned out into a fast and a slow branch of
/// capacity [`READ_AHEAD_CAP`]. The fast one reads until it waits for room:
/// it is then exactly `cap` items ahead, since the slow one holds no
/// read-ahead.
fn fast_waiting_for_room(
    tracker: &Arc<Tracker>,
    len: u64,
) -> (
    [Branch<impl Stream<Item = Tracked> + Unpin>; 2],
    [Spawn<()>; 2],
) {
    let [mut fast, slow] = two(tracker.stream(len).fanout(2, READ_AHEAD_CAP));
    let (mut tf, ts) = (spawn(()), spawn(()));
    for item in 0..READ_AHEAD_CAP as u64 {
        assert_eq!(value(poll(&mut tf, &mut fast)), Poll::Ready(Some(item)));
    }
    assert_pending!(
        poll(&mut tf, &mut fast),
        "the fast branch is `cap` items ahead"
    );
    assert_within_bound(tracker, &fast);
    ([fast, slow], [tf, ts])
}

/// The value a poll yielded, so that the tracked item itself is dropped.
fn value(polled: Poll<Option<Tracked>>) -> Poll<Option<u64>> {
    polled.map(|item| item.map(|item| item.value))
}

/// Asserts the memory bound: the items alive are the ones the fanout
/// counts, buffered or read ahead, and at most `cap` of them.
fn assert_within_bound<S: Stream>(tracker: &Tracker, branch: &Branch<S>) {
    let stats = branch.stats();
    assert!(
        tracker.live() <= stats.capacity && stats.buffered + stats.read_ahead <= stats.capacity,
        "{} items alive, more than the capacity: {stats:?}",
        tracker.live()
    );
}

/// The items left in the read-ahead of `branch`, which has just polled:
/// its own snapshot counts its read-ahead exactly, and no other branch of
/// the tests that call this holds any.
fn read_ahead_of<S: Stream>(branch: &Branch<S>) -> usize {
    branch.stats().read_ahead
}

/// The slow branch takes a batch into its read-ahead: the room those items
/// held is not free until it has yielded the last of them, so the fast
/// branch, waiting for room, cannot go on before (if it is woken early, it
/// still waits). When the slow branch yields the last item of its
/// read-ahead, its reservation is released: the fast branch is woken, and
/// gets its next item.
#[test]
fn a_branch_waiting_for_room_is_woken_when_the_slowest_yields_the_last_item_of_its_read_ahead() {
    let tracker = Tracker::new();
    let ([mut fast, mut slow], [mut tf, mut ts]) = fast_waiting_for_room(&tracker, 40);
    let cap = READ_AHEAD_CAP as u64;

    assert_eq!(value(poll(&mut ts, &mut slow)), Poll::Ready(Some(0)));
    let held = read_ahead_of(&slow);
    assert!(
        held >= 1,
        "scenario: with this capacity, the slow branch takes several buffered items in one batch"
    );
    assert_within_bound(&tracker, &slow);
    // The slow branch yields its read-ahead but the last item.
    for item in 1..held as u64 {
        if tf.is_woken() {
            assert_pending!(
                poll(&mut tf, &mut fast),
                "the slow branch's read-ahead still holds the room (it yielded {item} items)"
            );
        }
        assert_eq!(value(poll(&mut ts, &mut slow)), Poll::Ready(Some(item)));
        assert_within_bound(&tracker, &slow);
    }
    if tf.is_woken() {
        assert_pending!(
            poll(&mut tf, &mut fast),
            "the slow branch's read-ahead still holds the room"
        );
    }

    // The last item of the read-ahead.
    let last = held as u64;
    assert_eq!(value(poll(&mut ts, &mut slow)), Poll::Ready(Some(last)));
    assert!(
        tf.is_woken(),
        "the slow branch yielded the last item of its read-ahead, which released its room, \
         but the fast branch, waiting for room, was not woken"
    );
    assert_eq!(value(poll(&mut tf, &mut fast)), Poll::Ready(Some(cap)));
    assert_within_bound(&tracker, &fast);

    // Both go on to the end, in order, neither more than `cap` items ahead
    // of what the other has yielded, each polled again only once woken.
    let mut read = [cap + 1, last + 1];
    let mut waiting = [false, false];
    let mut ended = [false, false];
    let mut tasks = [tf, ts];
    let mut branches = [fast, slow];
    while ended != [true, true] {
        let mut polled_any = false;
        for i in 0..2 {
            if ended[i] || (waiting[i] && !tasks[i].is_woken()) {
                continue;
            }
            polled_any = true;
            match value(poll(&mut tasks[i], &mut branches[i])) {
                Poll::Ready(Some(item)) => {
                    assert_eq!(item, read[i], "branch {i} out of order");
                    read[i] += 1;
                    waiting[i] = false;
                }
                Poll::Ready(None) => {
                    assert_eq!(read[i], 40, "branch {i} ended early");
                    ended[i] = true;
                }
                Poll::Pending => waiting[i] = true,
            }
            assert!(
                read[0].abs_diff(read[1]) <= cap,
                "a branch yielded more than `cap` items ahead of the other: {read:?}"
            );
            assert_within_bound(&tracker, &branches[i]);
        }
        assert!(
            polled_any,
            "both branches wait and neither was woken: a lost wake-up ({read:?})"
        );
    }
    drop(branches);
    assert_eq!(tracker.live(), 0);
    assert_eq!(tracker.clones(), 40, "one clone per item for two branches");
}

/// The slow branch is dropped while its read-ahead holds items: its
/// read-ahead and the items only it had left to read are dropped, and the
/// fast branch, waiting for room, is woken and reads to the end alone.
#[test]
fn a_branch_waiting_for_room_is_woken_when_the_slowest_is_dropped_with_a_read_ahead() {
    let tracker = Tracker::new();
    let ([mut fast, mut slow], [mut tf, mut ts]) = fast_waiting_for_room(&tracker, 40);

    assert_eq!(value(poll(&mut ts, &mut slow)), Poll::Ready(Some(0)));
    assert!(
        read_ahead_of(&slow) >= 1,
        "scenario: the slow branch holds a read-ahead"
    );
    drop(slow);
    assert_eq!(
        tracker.live(),
        0,
        "the slow branch's read-ahead and the items only it had left to read are dropped"
    );
    assert!(
        tf.is_woken(),
        "the slow branch was dropped with its read-ahead, but the fast one was not woken"
    );
    for item in READ_AHEAD_CAP as u64..40 {
        assert_eq!(value(poll(&mut tf, &mut fast)), Poll::Ready(Some(item)));
    }
    assert_eq!(value(poll(&mut tf, &mut fast)), Poll::Ready(None));
    drop(fast);
    assert_eq!(tracker.live(), 0);
}

/// A's `next()` future waits on the empty channel and is cancelled; B's
/// poll pulls a batch, and B yields the whole batch. A's next `next()` future takes the items into A's
/// read-ahead; `next()` futures dropped then (unpolled, or beaten by another
/// future in a `select`) lose nothing: A yields every item, in order, and
/// its lag counts its read-ahead all along.
#[test]
fn a_dropped_next_future_loses_nothing_of_a_non_empty_read_ahead() {
    const ITEMS: u32 = 10;
    let (tx, branches) = channel_fanout(2, READ_AHEAD_CAP);
    let [mut a, mut b] = two(branches);

    let mut first = spawn(a.next());
    assert_pending!(first.poll());
    drop(first);

    for item in 0..ITEMS {
        tx.unbounded_send(item).unwrap();
    }
    // B yields the batch it pulls, until it holds no read-ahead.
    let mut tb = spawn(());
    let mut b_read = 0;
    loop {
        assert_eq!(poll(&mut tb, &mut b), Poll::Ready(Some(b_read)));
        b_read += 1;
        if read_ahead_of(&b) == 0 {
            break;
        }
    }
    assert_eq!(a.lag(), b_read as usize, "A has yielded nothing yet");

    let mut second = spawn(a.next());
    assert_eq!(second.poll(), Poll::Ready(Some(0)));
    drop(second);
    assert!(
        read_ahead_of(&a) >= 1,
        "scenario: A took several items into its read-ahead"
    );
    for expected in 1..ITEMS {
        let lag = a.lag();
        // Dropped without being polled.
        drop(a.next());
        // Beaten by a ready future, and dropped without being polled.
        assert!(matches!(
            futures::executor::block_on(futures::future::select(
                futures::future::ready(()),
                a.next(),
            )),
            futures::future::Either::Left(_)
        ));
        assert_eq!(a.lag(), lag, "a dropped next() future took an item");
        let mut next = spawn(a.next());
        assert_eq!(
            next.poll(),
            Poll::Ready(Some(expected)),
            "A lost or repeated an item"
        );
    }
    drop(tx);
    assert_eq!(futures::executor::block_on(a.collect::<Vec<_>>()), []);
    let rest: Vec<_> = futures::executor::block_on(b.collect());
    assert_eq!(rest, (b_read..ITEMS).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// The newest waker is the one woken.
// ---------------------------------------------------------------------------

#[test]
fn the_newest_waker_is_woken_when_waiting_on_the_upstream() {
    let (tx, branches) = channel_fanout(2, 4);
    let [mut a, _other] = two(branches);
    let (mut task_a, mut task_b) = (spawn(()), spawn(()));

    assert_pending!(poll(&mut task_a, &mut a));
    assert_pending!(poll(&mut task_b, &mut a));
    tx.unbounded_send(5).unwrap();
    assert!(task_b.is_woken(), "the branch's newest waker was not woken");
    assert_eq!(poll(&mut task_b, &mut a), Poll::Ready(Some(5)));
}

#[test]
fn the_newest_waker_is_woken_when_waiting_on_the_upstream_polled_by_another_branch() {
    let (tx, branches) = channel_fanout(2, 4);
    let [mut a, mut b] = two(branches);
    let (mut task_a, mut task_b, mut tb) = (spawn(()), spawn(()), spawn(()));

    // B polls the upstream last, A's wakers are only parked.
    assert_pending!(poll(&mut task_a, &mut a));
    assert_pending!(poll(&mut tb, &mut b));
    assert_pending!(poll(&mut task_b, &mut a));
    assert_pending!(poll(&mut tb, &mut b));
    tx.unbounded_send(5).unwrap();
    assert!(task_b.is_woken(), "the branch's newest waker was not woken");
    assert!(tb.is_woken());
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(Some(5)));
    assert_eq!(poll(&mut task_b, &mut a), Poll::Ready(Some(5)));
}

#[test]
fn the_newest_waker_is_woken_when_waiting_for_room() {
    let [mut fast, mut slow] = two(stream::iter(0..10u32).fanout(2, 1));
    let (mut task_a, mut task_b, mut ts) = (spawn(()), spawn(()), spawn(()));

    read_until_pending(&mut task_a, &mut fast, 0..1);
    assert_pending!(poll(&mut task_b, &mut fast));
    assert_eq!(poll(&mut ts, &mut slow), Poll::Ready(Some(0)));
    assert!(task_b.is_woken(), "the branch's newest waker was not woken");
    assert_eq!(poll(&mut task_b, &mut fast), Poll::Ready(Some(1)));
}

/// Many re-polls with ever new tasks keep one waker per branch: the newest.
#[test]
fn repolling_with_many_tasks_wakes_the_last_one() {
    let (tx, branches) = channel_fanout(1, 4);
    let [mut a]: [_; 1] = branches.try_into().ok().unwrap();
    let mut tasks: Vec<_> = (0..50).map(|_| spawn(())).collect();
    for task in &mut tasks {
        assert_pending!(poll(task, &mut a));
    }
    tx.unbounded_send(1).unwrap();
    let last = tasks.last_mut().unwrap();
    assert!(last.is_woken());
    assert_eq!(poll(last, &mut a), Poll::Ready(Some(1)));
}

// ---------------------------------------------------------------------------
// Clones wait with their own wakers.
// ---------------------------------------------------------------------------

/// A clone of a waiting branch, polled with its own task, is woken as well,
/// also after the original is dropped.
#[test]
fn a_clone_of_a_waiting_branch_waits_with_its_own_waker() {
    let (tx, [a, mut b], [_, mut tb]) = two_waiting_on_a_channel();
    let mut c = a.clone();
    let mut tc = spawn(());
    assert_pending!(poll(&mut tc, &mut c));
    drop(a);

    tx.unbounded_send(8).unwrap();
    assert!(tb.is_woken());
    assert!(tc.is_woken(), "the clone was not woken");
    assert_eq!(poll(&mut tc, &mut c), Poll::Ready(Some(8)));
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(Some(8)));

    // The dropped original held nothing back: the two go on.
    assert_pending!(poll(&mut tb, &mut b));
    assert_pending!(poll(&mut tc, &mut c));
    drop(tx);
    assert!(tb.is_woken() && tc.is_woken());
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(None));
    assert_eq!(poll(&mut tc, &mut c), Poll::Ready(None));
}

/// Dropping a clone must not forget the original's waker (each branch has
/// its own registration).
#[test]
fn dropping_a_clone_keeps_the_originals_registration() {
    let (tx, branches) = channel_fanout(1, 4);
    let [mut a]: [_; 1] = branches.try_into().ok().unwrap();
    let mut ta = spawn(());
    let mut c = a.clone();
    let mut tc = spawn(());
    assert_pending!(poll(&mut tc, &mut c));
    assert_pending!(poll(&mut ta, &mut a));
    drop(c);
    tx.unbounded_send(1).unwrap();
    assert!(
        ta.is_woken(),
        "dropping the clone dropped the original's waker"
    );
    assert_eq!(poll(&mut ta, &mut a), Poll::Ready(Some(1)));
}

// ---------------------------------------------------------------------------
// An upstream that wakes itself from inside `poll_next` (cooperative yield).
// ---------------------------------------------------------------------------

/// An upstream that, on the polls `yield_on` says, wakes its waker and
/// returns `Pending` (as tokio's budget does), and otherwise yields the next
/// number. It panics if polled more than `limit` times, as a hang guard.
fn yielding_upstream(
    yield_on: impl Fn(usize) -> bool + Send + 'static,
    items: u32,
) -> (impl Stream<Item = u32> + Send + Unpin, Arc<AtomicUsize>) {
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&polls);
    let mut next = 0;
    let upstream = stream::poll_fn(move |cx: &mut Context<'_>| {
        let poll = counter.fetch_add(1, Ordering::SeqCst);
        assert!(poll < 10_000, "the upstream is polled in a loop");
        if yield_on(poll) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if next == items {
            return Poll::Ready(None);
        }
        next += 1;
        Poll::Ready(Some(next - 1))
    });
    (upstream, polls)
}

/// (f) No spinning: one poll of the branch polls the upstream a bounded
/// number of times, at most once more than the items it pulled (a branch
/// that polls the upstream polls it again while it yields items, and stops
/// at the first `Pending`); a poll that returns `Pending` pulled nothing and
/// polled the upstream exactly once, and the task is woken.
#[test]
fn an_upstream_that_yields_cooperatively_does_not_make_poll_next_spin() {
    // Yields on every poll but every fourth.
    let (upstream, polls) = yielding_upstream(|poll| poll % 4 != 3, 5);
    let [mut a]: [_; 1] = upstream.fanout(1, 2).try_into().ok().unwrap();
    let mut ta = spawn(());

    let mut got = Vec::new();
    for round in 0.. {
        let (polls_before, pulled_before) = (polls.load(Ordering::SeqCst), a.stats().pulled);
        let polled = poll(&mut ta, &mut a);
        let polls_made = polls.load(Ordering::SeqCst) - polls_before;
        let pulled = usize::try_from(a.stats().pulled - pulled_before).unwrap();
        assert!(
            polls_made <= pulled + 1,
            "round {round}: one branch poll polled the upstream {polls_made} times for {pulled} items"
        );
        match polled {
            Poll::Pending => {
                assert_eq!(
                    (polls_made, pulled),
                    (1, 0),
                    "round {round}: a branch poll that returns Pending polls the upstream once"
                );
                assert!(
                    ta.is_woken(),
                    "round {round}: the upstream woke itself, the task must be woken"
                );
            }
            Poll::Ready(Some(item)) => got.push(item),
            Poll::Ready(None) => break,
        }
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);
    // Polls 0 to 22 yield an item every fourth poll, each followed by a
    // yield that ends its batch; poll 23 finds the end.
    assert_eq!(polls.load(Ordering::SeqCst), 24);
}

/// (f) An upstream that always yields: each poll returns `Pending` promptly.
#[test]
fn an_upstream_that_always_yields_never_blocks_a_poll() {
    let (upstream, polls) = yielding_upstream(|_| true, 0);
    let [mut a, mut b] = two(upstream.fanout(2, 2));
    let (mut ta, mut tb) = (spawn(()), spawn(()));
    for round in 1..=20 {
        assert_pending!(poll(&mut ta, &mut a));
        assert!(ta.is_woken());
        assert_pending!(poll(&mut tb, &mut b));
        assert!(tb.is_woken());
        assert_eq!(polls.load(Ordering::SeqCst), 2 * round);
    }
}

/// (f) The cooperative yield also wakes the other branches that wait on the
/// upstream: the upstream has asked to be polled again, and the branch that
/// polled it may not come back.
#[test]
fn a_cooperative_yield_wakes_the_branches_waiting_on_the_upstream() {
    let stored: Arc<Mutex<Option<Waker>>> = Arc::default();
    let store = Arc::clone(&stored);
    let mut poll_no = 0;
    // Polls 0 and 1: `Pending`, waker stored. Poll 2: cooperative yield.
    // Poll 3: the item 10. Then the end.
    let upstream = stream::poll_fn(move |cx: &mut Context<'_>| {
        poll_no += 1;
        match poll_no {
            1 | 2 => {
                *store.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }
            3 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            4 => Poll::Ready(Some(10)),
            _ => Poll::Ready(None),
        }
    });
    let [mut a, mut b] = two(upstream.fanout(2, 2));
    let (mut ta, mut tb) = (spawn(()), spawn(()));

    assert_pending!(poll(&mut ta, &mut a));
    assert_pending!(poll(&mut tb, &mut b));
    stored.lock().unwrap().take().unwrap().wake();
    assert!(ta.is_woken() && tb.is_woken());

    // A polls, the upstream yields: A returns, and both are woken.
    assert_pending!(poll(&mut ta, &mut a));
    assert!(
        ta.is_woken(),
        "the yielding upstream asked to be polled again"
    );
    assert!(
        tb.is_woken(),
        "B waits on the upstream, which asked to be polled again"
    );

    // A is busy elsewhere now: B polls and gets the item, which wakes A.
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(Some(10)));
    assert_eq!(poll(&mut ta, &mut a), Poll::Ready(Some(10)));
    assert_eq!(poll(&mut ta, &mut a), Poll::Ready(None));
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(None));
}

// ---------------------------------------------------------------------------
// A branch that parks while another branch is inside the upstream's poll.
// ---------------------------------------------------------------------------

/// What the gated upstream does next inside its current `poll_next`.
enum Step {
    /// Wake the waker it is polled with, report it, and wait for more.
    Wake,
    /// Return this from `poll_next`.
    Return(Poll<Option<u32>>),
    /// Return this item from `poll_next`, and end the batch there: if the
    /// same poll of the branch polls the upstream again, that `poll_next`
    /// returns `Pending` at once, without waking, reporting or taking a step.
    YieldOne(u32),
}

/// The test's side of a gated upstream.
struct Gate {
    steps: std_mpsc::Sender<Step>,
    /// One message when a `poll_next` starts, and one per `Step::Wake` done.
    events: std_mpsc::Receiver<&'static str>,
    /// The waker of the latest `poll_next`.
    stored: Arc<Mutex<Option<Waker>>>,
    /// Counts the polls of branches made through the gate ([`Gate::poll`],
    /// [`Gate::poll_inside`]): the upstream tells by it whether a
    /// `poll_next` belongs to the same poll of a branch as the one before.
    branch_polls: Arc<AtomicUsize>,
}

impl Gate {
    fn expect(&self, event: &str) {
        let got = self
            .events
            .recv_timeout(HANG_GUARD)
            .expect("the gated upstream did not report in time");
        assert_eq!(got, event);
    }

    fn step(&self, step: Step) {
        self.steps.send(step).expect("the gated upstream is gone");
    }

    /// Answers the current `poll_next` with `item`, so that the branch's
    /// poll pulls this one item: a branch that polls the upstream may poll it
    /// again at once while it yields items (a batch, whose size is the
    /// fanout's business), and then a `Pending` ends that batch.
    fn yield_one(&self, item: u32) {
        self.step(Step::YieldOne(item));
    }

    /// Polls `branch` from `task` on this thread.
    fn poll<S: Stream + Unpin>(
        &self,
        task: &mut Spawn<()>,
        branch: &mut S,
    ) -> Poll<Option<S::Item>> {
        self.branch_polls.fetch_add(1, Ordering::SeqCst);
        poll(task, branch)
    }

    fn no_more_events(&self) {
        assert!(self.events.try_recv().is_err(), "unexpected upstream poll");
    }

    /// Polls `branch` on another thread (from a fresh task) and, once that
    /// poll has entered the upstream's `poll_next`, runs `during` on this
    /// one; returns the other thread's poll result.
    fn poll_inside<S>(&self, branch: &mut Branch<S>, during: impl FnOnce()) -> Poll<Option<S::Item>>
    where
        S: Stream + Send,
        S::Item: Clone + Send,
    {
        self.branch_polls.fetch_add(1, Ordering::SeqCst);
        thread::scope(|scope| {
            let poller = scope.spawn(move || {
                let mut task = spawn(());
                poll(&mut task, branch)
            });
            self.expect("entered");
            during();
            poller.join().expect("the polling thread panicked")
        })
    }
}

/// An upstream whose `poll_next` reports `"entered"`, then does what the
/// test's steps tell it.
fn gated() -> (impl Stream<Item = u32> + Send + Unpin, Gate) {
    let (steps_tx, steps_rx) = std_mpsc::channel::<Step>();
    let (events_tx, events_rx) = std_mpsc::channel();
    let stored: Arc<Mutex<Option<Waker>>> = Arc::default();
    let store = Arc::clone(&stored);
    let branch_polls = Arc::new(AtomicUsize::new(0));
    let polls = Arc::clone(&branch_polls);
    // The branch poll whose batch a `Step::YieldOne` ended.
    let mut batch_ended_in = None;
    let upstream = stream::poll_fn(move |cx: &mut Context<'_>| {
        let branch_poll = polls.load(Ordering::SeqCst);
        if batch_ended_in == Some(branch_poll) {
            return Poll::Pending;
        }
        *store.lock().unwrap() = Some(cx.waker().clone());
        let _ = events_tx.send("entered");
        loop {
            match steps_rx
                .recv_timeout(HANG_GUARD)
                .expect("the test sent no step")
            {
                Step::Wake => {
                    cx.waker().wake_by_ref();
                    let _ = events_tx.send("woke");
                }
                Step::Return(poll) => return poll,
                Step::YieldOne(item) => {
                    // The branch poll going on now: another branch may have
                    // been polled while this one waited for the step.
                    batch_ended_in = Some(polls.load(Ordering::SeqCst));
                    return Poll::Ready(Some(item));
                }
            }
        }
    });
    (
        upstream,
        Gate {
            steps: steps_tx,
            events: events_rx,
            stored,
            branch_polls,
        },
    )
}

/// A gated upstream fanned out into two branches, A and B, of capacity 4.
fn gated_pair() -> (Gate, [Branch<impl Stream<Item = u32> + Send + Unpin>; 2]) {
    gated_pair_of(4)
}

/// A gated upstream fanned out into two branches, A and B, of capacity `cap`.
fn gated_pair_of(cap: usize) -> (Gate, [Branch<impl Stream<Item = u32> + Send + Unpin>; 2]) {
    let (upstream, gate) = gated();
    (gate, two(upstream.fanout(2, cap)))
}

/// B polls while A is inside the upstream's `poll_next`, which then returns
/// `outcome` (an item or the end): B is woken, and reads the same outcome
/// from the buffer without polling the upstream. `what` says what happened.
/// An item is followed by a `Pending` (see [`Gate::yield_one`]), so that A
/// pulls that item only.
fn a_branch_parked_during_a_poll_is_woken_by(outcome: Poll<Option<u32>>, what: &str) {
    let (gate, [mut a, mut b]) = gated_pair();
    let mut tb = spawn(());

    let polled = gate.poll_inside(&mut a, || {
        assert_pending!(gate.poll(&mut tb, &mut b));
        assert!(!tb.is_woken());
        match outcome {
            Poll::Ready(Some(item)) => gate.yield_one(item),
            _ => gate.step(Step::Return(outcome)),
        }
    });
    assert_eq!(polled, outcome);
    assert!(
        tb.is_woken(),
        "{what}, but B, parked during the poll, was not woken"
    );
    assert_eq!(gate.poll(&mut tb, &mut b), outcome);
    gate.no_more_events();
}

/// B polls while A is inside the upstream's `poll_next`; the item A gets
/// wakes B, which reads it from the buffer without polling the upstream.
#[test]
fn a_branch_parked_during_another_branchs_poll_is_woken_by_the_item() {
    a_branch_parked_during_a_poll_is_woken_by(Poll::Ready(Some(5)), "A pushed an item");
}

/// B polls while A is inside the upstream's `poll_next`; the upstream ends.
#[test]
fn a_branch_parked_during_another_branchs_poll_is_woken_by_the_end() {
    a_branch_parked_during_a_poll_is_woken_by(Poll::Ready(None), "the upstream ended");
}

/// A batch that ends on `Pending` after items. B waits on the upstream since
/// an earlier `Pending`. A's poll pulls items 1 and 2, then the upstream
/// returns `Pending`: A gets item 1 and is not parked, B is woken by the
/// items, and both read them from the buffer without polling the upstream.
/// The upstream is left idle, with the fanout's waker: the next branch at
/// the end polls it, and the upstream's later wake-up wakes the branch that
/// waits then, and not A. (All on one thread: the steps are sent before the
/// polls that take them.)
///
/// The buffer has room for [`ROOMY`] items, so that A's poll of the empty
/// buffer may pull ahead while the upstream yields (up to a share of the
/// free room): here two items and the `Pending`, in one poll.
#[test]
fn a_batch_that_ends_on_pending_wakes_the_waiting_branches_and_leaves_the_upstream_idle() {
    let (gate, [mut a, mut b]) = gated_pair_of(ROOMY);
    let (mut ta, mut tb) = (spawn(()), spawn(()));

    gate.step(Step::Return(Poll::Pending));
    assert_pending!(gate.poll(&mut tb, &mut b));
    gate.expect("entered");

    for item in [1, 2] {
        gate.step(Step::Return(Poll::Ready(Some(item))));
    }
    gate.step(Step::Return(Poll::Pending));
    assert_eq!(gate.poll(&mut ta, &mut a), Poll::Ready(Some(1)));
    for poll in ["item 1", "item 2", "the Pending"] {
        assert_eq!(
            gate.events.try_recv(),
            Ok("entered"),
            "scenario: A's poll pulls ahead through the batch, but did not poll for {poll}"
        );
    }
    assert!(
        tb.is_woken(),
        "A's batch pushed items 1 and 2, but B, waiting on the upstream, was not woken"
    );
    assert_eq!((a.lag(), b.lag()), (1, 2));
    assert_eq!(gate.poll(&mut ta, &mut a), Poll::Ready(Some(2)));
    for item in [1, 2] {
        assert_eq!(gate.poll(&mut tb, &mut b), Poll::Ready(Some(item)));
    }
    gate.no_more_events();

    gate.step(Step::Return(Poll::Pending));
    assert_pending!(gate.poll(&mut tb, &mut b));
    gate.expect("entered");
    let waker = gate.stored.lock().unwrap().take().unwrap();
    waker.wake();
    assert!(
        tb.is_woken(),
        "the upstream woke, but B, waiting on it, was not"
    );
    assert!(
        !ta.is_woken(),
        "A got an item from its batch and does not wait: nothing wakes it"
    );

    gate.step(Step::Return(Poll::Ready(Some(3))));
    gate.step(Step::Return(Poll::Pending));
    assert_eq!(gate.poll(&mut ta, &mut a), Poll::Ready(Some(3)));
    gate.expect("entered");
    gate.expect("entered");
    assert_eq!(gate.poll(&mut tb, &mut b), Poll::Ready(Some(3)));
    gate.no_more_events();
}

/// B parks while A is inside the upstream's `poll_next`, in a buffer with
/// room for a batch: A's poll pulls items 5 and 6, keeps a share of them in
/// its read-ahead and leaves clones buffered for B. B is woken by the batch,
/// and both read both items, in order, from the buffer or A's read-ahead,
/// without polling the upstream again; each one's lag counts what it has
/// not yielded, read-ahead included.
#[test]
fn a_branch_parked_during_a_batch_is_woken_and_reads_what_the_poller_read_ahead() {
    let (gate, [mut a, mut b]) = gated_pair_of(ROOMY);
    let (mut ta, mut tb) = (spawn(()), spawn(()));

    let polled = gate.poll_inside(&mut a, || {
        assert_pending!(gate.poll(&mut tb, &mut b));
        gate.step(Step::Return(Poll::Ready(Some(5))));
        gate.expect("entered");
        assert!(!tb.is_woken(), "nothing is pushed before the batch ends");
        gate.yield_one(6);
    });
    assert_eq!(polled, Poll::Ready(Some(5)));
    assert!(
        tb.is_woken(),
        "A's batch pushed items 5 and 6, but B, parked during A's poll, was not woken"
    );
    assert_eq!((a.lag(), b.lag()), (1, 2));
    assert_eq!(gate.poll(&mut ta, &mut a), Poll::Ready(Some(6)));
    assert_eq!(a.lag(), 0);
    assert_eq!(gate.poll(&mut tb, &mut b), Poll::Ready(Some(5)));
    assert_eq!(b.lag(), 1);
    assert_eq!(gate.poll(&mut tb, &mut b), Poll::Ready(Some(6)));
    assert_eq!(b.lag(), 0);
    assert!(!ta.is_woken(), "A never waited");
    gate.no_more_events();
}

/// B parks while A is polling; the upstream returns `Pending` and later
/// wakes its waker: B is woken even though A has been dropped since.
#[test]
fn a_branch_parked_during_a_poll_is_woken_after_the_poller_is_dropped() {
    let (gate, [mut a, mut b]) = gated_pair();
    let mut tb = spawn(());

    let polled = gate.poll_inside(&mut a, || {
        assert_pending!(gate.poll(&mut tb, &mut b));
        gate.step(Step::Return(Poll::Pending));
    });
    assert_eq!(polled, Poll::Pending);
    drop(a);

    let waker = gate.stored.lock().unwrap().take().unwrap();
    waker.wake();
    assert!(
        tb.is_woken(),
        "the upstream woke, but B, parked during A's poll, was not woken"
    );

    // B polls the upstream itself now, and gets the item (which ends its
    // batch, if it pulls one).
    let polled = gate.poll_inside(&mut b, || gate.yield_one(6));
    assert_eq!(polled, Poll::Ready(Some(6)));
    gate.no_more_events();
}

/// The upstream wakes its waker during A's poll *before* B parks, then
/// returns `Pending`: the wake-up found nobody to wake, yet B must not wait
/// forever (A, the poller, may be busy elsewhere).
#[test]
fn a_wake_up_during_a_poll_before_a_branch_parked_is_not_lost() {
    let (gate, [mut a, mut b]) = gated_pair();
    let mut tb = spawn(());

    let polled = gate.poll_inside(&mut a, || {
        gate.step(Step::Wake);
        gate.expect("woke");
        assert_pending!(gate.poll(&mut tb, &mut b));
        gate.step(Step::Return(Poll::Pending));
    });
    assert_eq!(polled, Poll::Pending);
    assert!(
        tb.is_woken(),
        "the upstream woke during the poll, and B, parked after that, was never woken"
    );

    let polled = gate.poll_inside(&mut b, || gate.yield_one(9));
    assert_eq!(polled, Poll::Ready(Some(9)));
    let mut ta = spawn(());
    assert_eq!(gate.poll(&mut ta, &mut a), Poll::Ready(Some(9)));
    gate.no_more_events();
}

/// The upstream wakes its waker during A's poll *after* B parked, then
/// returns `Pending`: B is woken.
#[test]
fn a_wake_up_during_a_poll_after_a_branch_parked_wakes_it() {
    let (gate, [mut a, mut b]) = gated_pair();
    let mut tb = spawn(());

    let polled = gate.poll_inside(&mut a, || {
        assert_pending!(gate.poll(&mut tb, &mut b));
        gate.step(Step::Wake);
        gate.expect("woke");
        assert!(tb.is_woken(), "the upstream woke while B was parked");
        gate.step(Step::Return(Poll::Pending));
    });
    assert_eq!(polled, Poll::Pending);
}

// ---------------------------------------------------------------------------
// Wakers that poll or drop branches when woken.
// ---------------------------------------------------------------------------

/// A waker that runs an action, once, when woken.
struct ActionWaker(Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl ActionWaker {
    fn waker(action: impl FnOnce() + Send + 'static) -> Waker {
        Waker::from(Arc::new(Self(Mutex::new(Some(Box::new(action))))))
    }
}

impl Wake for ActionWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let action = self.0.lock().unwrap().take();
        if let Some(action) = action {
            action();
        }
    }
}

/// Runs `test` on its own thread and fails if it takes longer than the hang
/// guard (a deadlock), re-raising its panic if it panics.
fn without_deadlock(test: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = std_mpsc::channel();
    let handle = thread::spawn(move || {
        test();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(HANG_GUARD) {
        Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std_mpsc::RecvTimeoutError::Timeout) => {
            panic!("deadlock: a waker ran while a lock of the fanout was held")
        }
    }
}

/// The upstream's wake-up runs a waker that drops one branch and polls
/// another of the same fanout: wakers run with no lock held.
#[test]
fn a_waker_woken_by_the_upstream_may_drop_and_poll_branches() {
    without_deadlock(|| {
        let tracker = Tracker::new();
        let (tx, rx) = mpsc::unbounded();
        let [mut a, b, c] = three(rx.fanout(3, 4));
        let b = Arc::new(Mutex::new(Some(b)));
        let c = Arc::new(Mutex::new(Some(c)));
        let seen = Arc::new(Mutex::new(None));

        let waker = {
            let (b, c, seen) = (Arc::clone(&b), Arc::clone(&c), Arc::clone(&seen));
            ActionWaker::waker(move || {
                drop(c.lock().unwrap().take());
                let mut b = b.lock().unwrap();
                let b = b.as_mut().unwrap();
                let polled = poll_once(b);
                *seen.lock().unwrap() =
                    Some(polled.map(|item| item.map(|t: support::Tracked| t.value)));
            })
        };
        assert!(Pin::new(&mut a)
            .poll_next(&mut Context::from_waker(&waker))
            .is_pending());
        tx.unbounded_send(tracker.item(4)).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            Some(Poll::Ready(Some(4))),
            "the waker did not run, or B did not get the item"
        );
        assert!(c.lock().unwrap().is_none());
        let got = poll_once(&mut a);
        assert_eq!(got.map(|item| item.map(|t| t.value)), Poll::Ready(Some(4)));
        drop((a, b, c));
        assert_eq!(tracker.live(), 0);
    });
}

/// Room freed by a read runs the waiting branch's waker, which polls that
/// very branch: no deadlock, and it gets its item.
#[test]
fn a_waker_woken_by_freed_room_may_poll_the_waiting_branch() {
    without_deadlock(|| {
        let [fast, mut slow] = two(stream::iter(0..4u32).fanout(2, 1));
        let fast = Arc::new(Mutex::new(fast));
        let seen = Arc::new(Mutex::new(Vec::new()));

        assert_eq!(poll_once(&mut *fast.lock().unwrap()), Poll::Ready(Some(0)));
        let waker = {
            let (fast, seen) = (Arc::clone(&fast), Arc::clone(&seen));
            ActionWaker::waker(move || {
                let polled = poll_once(&mut *fast.lock().unwrap());
                seen.lock().unwrap().push(polled);
            })
        };
        assert!(Pin::new(&mut *fast.lock().unwrap())
            .poll_next(&mut Context::from_waker(&waker))
            .is_pending());
        assert_eq!(poll_once(&mut slow), Poll::Ready(Some(0)));
        assert_eq!(*seen.lock().unwrap(), [Poll::Ready(Some(1))]);
    });
}
