//! The lone-branch mode: when only one branch of a fanout is live and
//! nothing is buffered, that branch takes the upstream out of the shared
//! state and polls it directly, with its own task's waker.
//!
//! Covered here:
//! - a fanout of one polls the upstream exactly once per poll of the
//!   branch, buffers nothing (`buffered` and `high_water` stay 0), clones
//!   nothing, and its statistics (`pulled`, `delivered`, `lag`) are exact
//!   whenever they are read, although the items are recorded lazily; the end
//!   comes after `len + 1` polls and drops the upstream;
//! - a branch left alone by a dropped sibling drains the buffer without
//!   polling the upstream, then goes on one upstream poll per item;
//! - a fork of a lone branch yields exactly the same remaining items as the
//!   original, the counters are exact right after the fork, and from then on
//!   the shared buffer and its batches of `min(room, 32)` items apply;
//! - no lost wake-up when a fork takes the upstream back while the upstream
//!   holds only the lone branch's waker;
//! - a panic of the upstream while a lone branch polls it: the branch gets
//!   the upstream's own panic, later polls and forks get the fanout's, and
//!   nothing leaks;
//! - a lone lossy branch, the `size_hint` of a lone branch, and its `Debug`
//!   output.
//!
//! Wake-ups are checked with `tokio_test` mock tasks, whose `is_woken` tells
//! whether the waker of their latest poll has been woken.

mod support;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use fanout::{Branch, Lagged, StreamExt as _};
use futures::{stream, Stream};
use tokio_test::assert_pending;
use tokio_test::task::{spawn, Spawn};

use support::{
    collect_all, entry, panic_message, panicking_upstream, poll_once, values, CountingPolls,
    DropFlag, PollCounts, Tracked, Tracker,
};

/// The message the panicking test upstreams panic with.
const BOOM: &str = "solo upstream boom";

/// Polls `stream` once from `task`, whose waker records the wake-ups.
fn poll<S: Stream + Unpin>(task: &mut Spawn<()>, stream: &mut S) -> Poll<Option<S::Item>> {
    task.enter(|cx, _| Pin::new(stream).poll_next(cx))
}

/// The waker `task` polls with (every poll from `task` uses a clone of it).
fn waker_of(task: &mut Spawn<()>) -> Waker {
    task.enter(|cx, _| cx.waker().clone())
}

/// Polls `stream` once with a no-op waker, catching a panic.
fn try_poll<S: Stream + Unpin>(stream: &mut S) -> Result<Poll<Option<S::Item>>, String> {
    catch_unwind(AssertUnwindSafe(|| poll_once(stream))).map_err(panic_message)
}

/// The value a poll of a branch of tracked items yields.
fn value(polled: Poll<Option<Tracked>>) -> Poll<Option<u64>> {
    polled.map(|item| item.map(|item| item.value))
}

/// Asserts that `message` is the fanout's "the upstream panicked" message,
/// and not the upstream's own.
fn assert_fanout_message(message: &str) {
    assert!(
        message.contains("the upstream stream panicked while another branch polled it"),
        "not the fanout's message: {message:?}"
    );
    assert_ne!(message, BOOM);
}

fn one<T>(v: Vec<T>) -> T {
    let [branch]: [T; 1] = v.try_into().ok().expect("one branch");
    branch
}

fn two<T>(v: Vec<T>) -> [T; 2] {
    v.try_into().ok().expect("two branches")
}

/// Tracked items `0..len`, counting the upstream's polls and flagging its drop.
type TrackedUpstream = DropFlag<CountingPolls<Box<dyn Stream<Item = Tracked> + Send + Unpin>>>;

fn tracked_upstream(
    tracker: &Arc<Tracker>,
    len: u64,
) -> (
    TrackedUpstream,
    PollCounts,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let inner: Box<dyn Stream<Item = Tracked> + Send + Unpin> = Box::new(tracker.stream(len));
    let (counting, counts) = CountingPolls::new(inner);
    let (upstream, dropped) = DropFlag::new(counting);
    (upstream, counts, dropped)
}

/// Checks the statistics of a fanout whose only live branch is `branch`,
/// which has read `read` items, all of them straight from the upstream.
fn assert_lone_stats<S>(branch: &Branch<S>, read: u64)
where
    S: Stream,
{
    let stats = branch.stats();
    assert_eq!(
        stats.buffered, 0,
        "a lone branch buffers nothing: {stats:?}"
    );
    assert_eq!(
        stats.high_water, 0,
        "a lone branch buffers nothing: {stats:?}"
    );
    assert_eq!(stats.pulled, read, "pulled: {stats:?}");
    assert_eq!(stats.branches.len(), 1);
    let me = entry(&stats, branch.id());
    assert_eq!(me.delivered, read, "delivered: {stats:?}");
    assert_eq!(me.lag, 0);
    assert_eq!(me.missed, 0);
    assert_eq!(branch.lag(), 0);
}

// ---------------------------------------------------------------------------
// A fanout of one.
// ---------------------------------------------------------------------------

/// Every poll of the only branch polls the upstream exactly once and yields
/// its item without buffering or cloning it. The items read between two
/// reads of the statistics are recorded when the statistics are read, and
/// the end comes after `len + 1` polls, which drop the upstream.
#[test]
fn a_fanout_of_one_polls_the_upstream_once_per_item() {
    const LEN: u64 = 10;
    let tracker = Tracker::new();
    let (upstream, counts, dropped) = tracked_upstream(&tracker, LEN);
    // Capacity 4: a batching poll would pull 4 items at once.
    let mut branch = one(upstream.fanout(1, 4));
    assert_lone_stats(&branch, 0);
    assert_eq!(counts.polls(), 0, "splitting polls nothing");

    // Four items with no accessor in between: recorded all at once.
    for k in 0..4 {
        assert_eq!(value(poll_once(&mut branch)), Poll::Ready(Some(k)));
        assert_eq!(counts.polls(), k as usize + 1, "one upstream poll per item");
        assert_eq!(tracker.live(), 0, "nothing buffered, the item was dropped");
    }
    assert_lone_stats(&branch, 4);

    // The rest, reading the statistics after every item.
    for k in 4..LEN {
        assert_eq!(value(poll_once(&mut branch)), Poll::Ready(Some(k)));
        assert_eq!(counts.polls(), k as usize + 1, "one upstream poll per item");
        assert_eq!(counts.yielded(), k as usize + 1);
        assert_eq!(tracker.live(), 0);
        assert_lone_stats(&branch, k + 1);
        assert!(!branch.stats().upstream_done);
        assert!(!dropped.load(Ordering::SeqCst));
    }

    // The end: one more poll, which sees `None` and drops the upstream.
    assert_eq!(value(poll_once(&mut branch)), Poll::Ready(None));
    assert_eq!(counts.polls(), LEN as usize + 1);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the ended upstream is dropped"
    );
    assert_lone_stats(&branch, LEN);
    assert!(branch.stats().upstream_done);

    // Fused: the upstream is never polled again.
    assert_eq!(value(poll_once(&mut branch)), Poll::Ready(None));
    assert_eq!(counts.polls(), LEN as usize + 1);
    assert_eq!(tracker.clones(), 0, "a lone branch clones nothing");
    assert_eq!(branch.size_hint(), (0, Some(0)));
}

/// The end is recorded even when no accessor ran before it: the items read
/// straight from the upstream and its end both show in the statistics.
#[test]
fn a_lone_branch_records_its_items_and_the_end_without_an_accessor() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..7u64));
    let (upstream, dropped) = DropFlag::new(upstream);
    let mut branch = one(upstream.fanout(1, 2));
    for k in 0..7 {
        assert_eq!(poll_once(&mut branch), Poll::Ready(Some(k)));
    }
    assert_eq!(poll_once(&mut branch), Poll::Ready(None));
    assert_eq!(counts.polls(), 8);
    assert!(dropped.load(Ordering::SeqCst));
    let stats = branch.stats();
    assert!(stats.upstream_done);
    assert_lone_stats(&branch, 7);
}

// ---------------------------------------------------------------------------
// A branch left alone.
// ---------------------------------------------------------------------------

/// A and B share a buffer of 8. A's first poll pulls a batch of 8. B is
/// dropped: A reads the 7 items left in the buffer without polling the
/// upstream, then, with the buffer empty, polls the upstream once per item,
/// buffering and cloning nothing.
#[test]
fn a_branch_left_alone_drains_the_buffer_then_polls_once_per_item() {
    const LEN: u64 = 20;
    let tracker = Tracker::new();
    let (upstream, counts, dropped) = tracked_upstream(&tracker, LEN);
    let [mut a, b] = two(upstream.fanout(2, 8));

    assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(0)));
    assert_eq!(counts.polls(), 8, "the shared path pulls a batch of 8");
    assert_eq!(a.lag(), 7);
    assert_eq!(
        tracker.clones(),
        1,
        "item 0 is cloned for A, B still holds it"
    );

    drop(b);
    let stats = a.stats();
    assert_eq!((stats.buffered, stats.high_water, stats.pulled), (7, 8, 8));
    assert_eq!(tracker.live(), 7, "B's copy of item 0 is released");

    // The buffered items: read from the buffer, by move.
    for k in 1..8 {
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(k)));
        assert_eq!(
            counts.polls(),
            8,
            "no upstream poll while items are buffered"
        );
        assert_eq!(a.lag(), 7 - k as usize);
    }
    assert_eq!(a.stats().buffered, 0);

    // Alone with an empty buffer: one upstream poll per item.
    for k in 8..LEN {
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(k)));
        assert_eq!(counts.polls(), k as usize + 1, "one upstream poll per item");
        assert_eq!(tracker.live(), 0, "nothing buffered");
        let stats = a.stats();
        assert_eq!(stats.buffered, 0);
        assert_eq!(stats.high_water, 8, "unchanged since B was dropped");
        assert_eq!(stats.pulled, k + 1);
        assert_eq!(entry(&stats, a.id()).delivered, k + 1);
        assert_eq!(a.lag(), 0);
    }
    assert_eq!(value(poll_once(&mut a)), Poll::Ready(None));
    assert_eq!(counts.polls(), LEN as usize + 1);
    assert!(dropped.load(Ordering::SeqCst));
    assert!(a.stats().upstream_done);
    assert_eq!(tracker.clones(), 1, "nothing cloned after B was dropped");
    drop(a);
    assert_eq!(tracker.live(), 0);
}

/// The same when the buffer is already empty when B is dropped: A's very
/// next poll polls the upstream once.
#[test]
fn a_branch_left_alone_with_an_empty_buffer_polls_once_per_item() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..12u64));
    let [mut a, mut b] = two(upstream.fanout(2, 4));
    for k in 0..4 {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(k)));
        assert_eq!(poll_once(&mut b), Poll::Ready(Some(k)));
    }
    assert_eq!(counts.polls(), 4);
    assert_eq!(a.stats().buffered, 0);
    drop(b);
    for k in 4..12 {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(k)));
        assert_eq!(counts.polls(), k as usize + 1);
        assert_eq!(a.stats().buffered, 0);
    }
    assert_eq!(poll_once(&mut a), Poll::Ready(None));
    assert_eq!(counts.polls(), 13);
}

// ---------------------------------------------------------------------------
// Forks of a lone branch.
// ---------------------------------------------------------------------------

/// A lone branch reads 5 items straight from the upstream, then forks. Right
/// after the fork every counter is exact (the 5 unrecorded items were
/// recorded by the fork), and the fork starts where A is. From then on the
/// shared buffer applies: a poll pulls `min(room, 32)` items, and A and the
/// fork yield exactly the same remaining items.
#[test]
fn a_fork_of_a_lone_branch_yields_the_same_items_and_batches_resume() {
    const LEN: u64 = 100;
    let tracker = Tracker::new();
    let (upstream, counts, dropped) = tracked_upstream(&tracker, LEN);
    let mut a = one(upstream.fanout(1, 64));
    for k in 0..5 {
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(k)));
    }
    assert_eq!(counts.polls(), 5);

    // The fork; no accessor has run since the five items were read.
    let mut b = a.clone();
    assert_eq!(counts.polls(), 5, "forking polls nothing");
    let stats = b.stats();
    assert_eq!(stats.pulled, 5);
    assert_eq!((stats.buffered, stats.high_water), (0, 0));
    assert!(!stats.upstream_done);
    assert_eq!(stats.branches.len(), 2);
    assert_eq!(entry(&stats, a.id()).delivered, 5);
    assert_eq!(entry(&stats, a.id()).lag, 0);
    assert_eq!(entry(&stats, b.id()).delivered, 0);
    assert_eq!(entry(&stats, b.id()).lag, 0);
    assert_eq!((a.lag(), b.lag()), (0, 0));
    assert_eq!(a.size_hint(), (95, Some(95)));
    assert_eq!(b.size_hint(), (95, Some(95)));
    assert!(format!("{b:?}").contains("position: 5"), "{b:?}");

    // A batch of min(room 64, 32) = 32 items, the first read by A.
    assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(5)));
    assert_eq!(
        counts.polls(),
        5 + 32,
        "one poll of a branch pulls 32 items"
    );
    let stats = a.stats();
    assert_eq!(
        (stats.buffered, stats.high_water, stats.pulled),
        (32, 32, 37)
    );
    assert_eq!((a.lag(), b.lag()), (31, 32));

    // A reads the rest of the batch from the buffer, then pulls another
    // batch of min(room 32, 32) = 32, then reads until it is 64 items ahead
    // of B: the buffer is full and A waits for room.
    for k in 6..37 {
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(k)));
    }
    assert_eq!(counts.polls(), 37);
    assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(37)));
    assert_eq!(counts.polls(), 37 + 32);
    for k in 38..69 {
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(k)));
    }
    assert_pending!(value(poll_once(&mut a)));
    let stats = a.stats();
    assert_eq!(
        (stats.buffered, stats.high_water, stats.pulled),
        (64, 64, 69)
    );
    assert_eq!(entry(&stats, a.id()).delivered, 69);
    assert_eq!(entry(&stats, b.id()).delivered, 0);
    assert_eq!(entry(&stats, b.id()).lag, 64);

    // B reads what A read since the fork; then both read to the end.
    for k in 5..69 {
        assert_eq!(value(poll_once(&mut b)), Poll::Ready(Some(k)));
    }
    let rest = collect_all([a, b]);
    let expected: Vec<u64> = (69..LEN).collect();
    assert_eq!(values(&rest[0]), expected);
    assert_eq!(values(&rest[1]), expected);
    assert!(dropped.load(Ordering::SeqCst));
    drop(rest);
    assert_eq!(tracker.live(), 0);
}

/// Forks, drops the fork, and forks again, with lone stretches in between:
/// no item is lost or duplicated, and the counters add up.
#[test]
fn a_branch_alternates_between_lone_and_shared_without_losing_items() {
    const LEN: u64 = 40;
    let tracker = Tracker::new();
    let (upstream, counts, _dropped) = tracked_upstream(&tracker, LEN);
    let mut a = one(upstream.fanout(1, 4));
    let mut read = Vec::new();

    // Lone: 3 items, 3 polls.
    for _ in 0..3 {
        read.push(value(poll_once(&mut a)));
    }
    assert_eq!(counts.polls(), 3);

    // Shared: the fork reads 6 items along with A (batches of 4).
    let mut b = a.clone();
    let mut forked = Vec::new();
    for _ in 0..6 {
        read.push(value(poll_once(&mut a)));
        forked.push(value(poll_once(&mut b)));
    }
    assert_eq!(counts.polls(), 3 + 4 + 4, "two batches of 4");
    // A and B have both read 3..9; 2 items of the second batch are buffered.
    assert_eq!((a.lag(), b.lag()), (2, 2));
    drop(b);

    // Alone again: the 2 buffered items, then one poll per item.
    for _ in 0..2 {
        read.push(value(poll_once(&mut a)));
    }
    assert_eq!(counts.polls(), 11);
    for k in 0..5 {
        read.push(value(poll_once(&mut a)));
        assert_eq!(counts.polls(), 12 + k);
    }
    let stats = a.stats();
    assert_eq!((stats.buffered, stats.pulled), (0, 16));
    assert_eq!(entry(&stats, a.id()).delivered, 16);

    // A second fork, then both to the end.
    let c = a.clone();
    let rest = collect_all([a, c]);
    assert_eq!(
        forked,
        (3..9).map(|k| Poll::Ready(Some(k))).collect::<Vec<_>>()
    );
    assert_eq!(
        read,
        (0..16).map(|k| Poll::Ready(Some(k))).collect::<Vec<_>>()
    );
    let expected: Vec<u64> = (16..LEN).collect();
    assert_eq!(values(&rest[0]), expected);
    assert_eq!(values(&rest[1]), expected);
    drop(rest);
    assert_eq!(tracker.live(), 0);
}

// ---------------------------------------------------------------------------
// The lost wake-up when a fork takes the upstream back.
// ---------------------------------------------------------------------------

/// What a [`Pushed`] upstream and the test share.
#[derive(Default)]
struct PushedState {
    items: VecDeque<u64>,
    /// The waker of the latest poll that returned `Pending`; only that one.
    waker: Option<Waker>,
    polls: usize,
}

/// An upstream that yields the items the test pushes and otherwise returns
/// `Pending`, keeping only the latest waker, as many real streams do.
struct Pushed(Arc<Mutex<PushedState>>);

/// The test's side of a [`Pushed`] upstream.
#[derive(Clone)]
struct Pusher(Arc<Mutex<PushedState>>);

fn pushed() -> (Pushed, Pusher) {
    let state = Arc::new(Mutex::new(PushedState::default()));
    (Pushed(Arc::clone(&state)), Pusher(state))
}

impl Stream for Pushed {
    type Item = u64;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u64>> {
        let mut state = self.0.lock().unwrap();
        state.polls += 1;
        match state.items.pop_front() {
            Some(item) => Poll::Ready(Some(item)),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Pusher {
    /// Queues `item`, then wakes the stored waker, if any, with no lock held.
    fn push_and_wake(&self, item: u64) {
        let waker = {
            let mut state = self.0.lock().unwrap();
            state.items.push_back(item);
            state.waker.take()
        };
        waker.expect("the upstream holds a waker").wake();
    }

    /// Whether the stored waker would wake the same task as `waker`.
    fn holds(&self, waker: &Waker) -> bool {
        let state = self.0.lock().unwrap();
        state.waker.as_ref().is_some_and(|w| w.will_wake(waker))
    }

    fn polls(&self) -> usize {
        self.0.lock().unwrap().polls
    }
}

/// The lone branch A polls the empty upstream, which then holds only A's
/// waker. The fork B takes the upstream back, and must wake A, because B's
/// poll registers the fanout's waker in the upstream in place of A's. With
/// A re-polled after that wake-up, an item pushed later wakes both A and B,
/// and both read it.
#[test]
fn a_fork_wakes_the_lone_branch_whose_waker_the_upstream_held() {
    let (upstream, pusher) = pushed();
    let mut a = one(upstream.fanout(1, 4));
    let (mut ta, mut tb) = (spawn(()), spawn(()));
    let wa = waker_of(&mut ta);

    assert_pending!(poll(&mut ta, &mut a));
    assert_eq!(pusher.polls(), 1);
    assert!(pusher.holds(&wa), "a lone branch polls with its own waker");
    assert!(!ta.is_woken());

    let mut b = a.clone();
    assert!(
        ta.is_woken(),
        "the fork took the upstream back, which held only A's waker, but A was not woken"
    );

    assert_pending!(poll(&mut tb, &mut b));
    assert_eq!(pusher.polls(), 2, "B polls the upstream itself");
    assert!(
        !pusher.holds(&wa),
        "B polled with the fanout's waker, which replaced A's"
    );

    assert_pending!(poll(&mut ta, &mut a));
    assert!(!ta.is_woken() && !tb.is_woken(), "nothing happened yet");

    pusher.push_and_wake(7);
    assert!(ta.is_woken(), "the upstream woke, but A was not woken");
    assert!(tb.is_woken(), "the upstream woke, but B was not woken");
    assert_eq!(poll(&mut ta, &mut a), Poll::Ready(Some(7)));
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(Some(7)));

    // And once more, with B polling the upstream first this time.
    assert_pending!(poll(&mut tb, &mut b));
    assert_pending!(poll(&mut ta, &mut a));
    pusher.push_and_wake(8);
    assert!(ta.is_woken() && tb.is_woken());
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(Some(8)));
    assert_eq!(poll(&mut ta, &mut a), Poll::Ready(Some(8)));
}

/// The same, but A is not re-polled after the fork's wake-up: B's poll
/// replaces A's waker in the upstream, the test pushes an item, and A, woken
/// by the fork, still gets it when it is polled.
#[test]
fn a_lone_branch_not_repolled_after_the_forks_wake_up_still_gets_the_item() {
    let (upstream, pusher) = pushed();
    let mut a = one(upstream.fanout(1, 4));
    let (mut ta, mut tb) = (spawn(()), spawn(()));
    let wa = waker_of(&mut ta);

    assert_pending!(poll(&mut ta, &mut a));
    let mut b = a.clone();
    assert!(ta.is_woken(), "the fork did not wake A");
    assert_pending!(poll(&mut tb, &mut b));
    assert!(!pusher.holds(&wa));

    pusher.push_and_wake(7);
    assert!(tb.is_woken());
    assert!(ta.is_woken(), "A's wake-up from the fork is still pending");
    // A first: it polls the upstream itself and pulls the item.
    assert_eq!(poll(&mut ta, &mut a), Poll::Ready(Some(7)));
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(Some(7)));
}

/// A variant where the fork reads first: B pulls the pushed item into the
/// buffer, and A, woken only by the fork, reads it from there.
#[test]
fn a_lone_branch_woken_by_the_fork_reads_what_the_fork_pulled() {
    let (upstream, pusher) = pushed();
    let mut a = one(upstream.fanout(1, 4));
    let (mut ta, mut tb) = (spawn(()), spawn(()));

    assert_pending!(poll(&mut ta, &mut a));
    let mut b = a.clone();
    assert!(ta.is_woken());
    assert_pending!(poll(&mut tb, &mut b));
    pusher.push_and_wake(7);
    assert!(tb.is_woken());
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(Some(7)));
    let polls = pusher.polls();
    assert!(ta.is_woken());
    assert_eq!(poll(&mut ta, &mut a), Poll::Ready(Some(7)));
    assert_eq!(pusher.polls(), polls, "A reads the buffered item");
}

/// A lone branch whose last poll returned an item holds no waker to wake:
/// the fork does not wake it, and the fork and A both read the next item.
#[test]
fn a_fork_after_a_ready_poll_wakes_nobody() {
    let (upstream, pusher) = pushed();
    let mut a = one(upstream.fanout(1, 4));
    let (mut ta, mut tb) = (spawn(()), spawn(()));
    assert_pending!(poll(&mut ta, &mut a));
    pusher.push_and_wake(1);
    assert!(ta.is_woken());
    assert_eq!(poll(&mut ta, &mut a), Poll::Ready(Some(1)));
    let mut b = a.clone();
    assert!(!ta.is_woken(), "A's last poll returned an item");
    assert_pending!(poll(&mut tb, &mut b));
    assert_pending!(poll(&mut ta, &mut a));
    pusher.push_and_wake(2);
    assert!(ta.is_woken() && tb.is_woken());
    assert_eq!(poll(&mut ta, &mut a), Poll::Ready(Some(2)));
    assert_eq!(poll(&mut tb, &mut b), Poll::Ready(Some(2)));
}

// ---------------------------------------------------------------------------
// A panic of the upstream while a lone branch polls it.
// ---------------------------------------------------------------------------

/// The lone branch reads 3 items, then its poll panics with the upstream's
/// own message, and the upstream is dropped. The next poll, and any poll of
/// a fork made afterwards, panics with the fanout's message; the upstream is
/// never polled again and nothing leaks.
#[test]
fn a_panic_while_a_lone_branch_polls_reaches_it_then_the_fanout_message() {
    let tracker = Tracker::new();
    let (upstream, counts, dropped) = panicking_upstream(&tracker, 3, BOOM);
    let mut a = one(upstream.fanout(1, 4));
    for k in 0..3 {
        assert_eq!(try_poll(&mut a).map(value), Ok(Poll::Ready(Some(k))));
    }
    assert_eq!(counts.polls(), 3);

    let first = try_poll(&mut a).expect_err("the upstream panicked");
    assert_eq!(first, BOOM, "the lone branch gets the upstream's own panic");
    assert_eq!(counts.polls(), 4);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the panicked upstream is dropped"
    );
    assert_eq!(tracker.live(), 0);

    let second = try_poll(&mut a).expect_err("the upstream is gone");
    assert_fanout_message(&second);
    assert_eq!(counts.polls(), 4, "never polled again");

    // The items read before the panic are recorded.
    let stats = a.stats();
    assert_eq!((stats.pulled, stats.buffered), (3, 0));
    assert_eq!(entry(&stats, a.id()).delivered, 3);

    let mut fork = a.clone();
    assert!(format!("{fork:?}").contains("position: 3"), "{fork:?}");
    let forked = try_poll(&mut fork).expect_err("the fork's upstream is gone");
    assert_fanout_message(&forked);
    let again = try_poll(&mut a).expect_err("still gone");
    assert_fanout_message(&again);
    assert_eq!(counts.polls(), 4);

    drop(a);
    drop(fork);
    assert_eq!(tracker.live(), 0);
    assert_eq!(tracker.clones(), 0);
}

/// The panic in the very first poll, which takes the upstream over and
/// polls it in the same call: the same outcome.
#[test]
fn a_panic_in_the_first_poll_of_a_lone_branch() {
    let tracker = Tracker::new();
    let (upstream, counts, dropped) = panicking_upstream(&tracker, 0, BOOM);
    let mut a = one(upstream.fanout(1, 4));
    assert_eq!(try_poll(&mut a).expect_err("panics"), BOOM);
    assert!(dropped.load(Ordering::SeqCst));
    assert_fanout_message(&try_poll(&mut a).expect_err("panics again"));
    let mut fork = a.clone();
    assert_fanout_message(&try_poll(&mut fork).expect_err("the fork panics"));
    assert_eq!(counts.polls(), 1);
    drop((a, fork));
    assert_eq!(tracker.live(), 0);
}

/// After the panic the branch will never yield another item, so its
/// `size_hint` must not promise any: the shared path reports `(0, Some(0))`
/// once the upstream has panicked, and so should a lone branch.
#[test]
fn size_hint_after_a_panic_in_a_lone_branch_promises_no_items() {
    // The shared path, for comparison: B's hint drops to (0, Some(0)) as
    // soon as A's poll of the upstream panics.
    let tracker = Tracker::new();
    let (upstream, _counts, _dropped) = panicking_upstream(&tracker, 0, BOOM);
    let (mut a, b) = Hinted(upstream, 10).tee(4);
    assert_eq!(b.size_hint(), (10, Some(10)));
    assert_eq!(try_poll(&mut a).expect_err("panics"), BOOM);
    assert_eq!(a.size_hint(), (0, Some(0)));
    assert_eq!(b.size_hint(), (0, Some(0)));
    drop((a, b));

    let (upstream, _counts, _dropped) = panicking_upstream(&tracker, 3, BOOM);
    // The upstream's own hint is (0, None) (a `poll_fn`); wrap it in one
    // that claims 10 items, as an exact-size source would.
    let upstream = Hinted(upstream, 10);
    let mut a = one(upstream.fanout(1, 4));
    assert_eq!(a.size_hint(), (10, Some(10)));
    for k in 0..3 {
        assert_eq!(try_poll(&mut a).map(value), Ok(Poll::Ready(Some(k))));
    }
    assert_eq!(a.size_hint(), (7, Some(7)));
    assert_eq!(try_poll(&mut a).expect_err("panics"), BOOM);
    assert_eq!(
        a.size_hint(),
        (0, Some(0)),
        "a branch whose upstream panicked promises no more items"
    );
}

/// Wraps a stream and reports an exact `size_hint` that counts down from
/// `.1` as it yields.
struct Hinted<S>(S, usize);

impl<S: Stream + Unpin> Stream for Hinted<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let polled = Pin::new(&mut self.0).poll_next(cx);
        if let Poll::Ready(Some(_)) = polled {
            self.1 -= 1;
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}

// ---------------------------------------------------------------------------
// Lossy, size_hint, Debug.
// ---------------------------------------------------------------------------

/// A lossy branch that is the only one polls the upstream once per item and
/// yields every item as `Ok`: alone, it never misses anything.
#[test]
fn a_lone_lossy_branch_yields_every_item_one_poll_each() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..10u64));
    let mut lossy = one(upstream.fanout(1, 2)).into_lossy();
    for k in 0..10 {
        assert_eq!(poll_once(&mut lossy), Poll::Ready(Some(Ok(k))));
        assert_eq!(counts.polls(), k as usize + 1);
        let stats = lossy.stats();
        assert_eq!(
            (stats.buffered, stats.high_water, stats.pulled),
            (0, 0, k + 1)
        );
        let me = entry(&stats, lossy.id());
        assert!(me.lossy);
        assert_eq!((me.delivered, me.missed, me.lag), (k + 1, 0, 0));
    }
    assert_eq!(poll_once(&mut lossy), Poll::Ready(None));
    assert_eq!(counts.polls(), 11);
    assert!(lossy.stats().upstream_done);
}

/// A lossy tap that missed items while the main branch ran ahead is left
/// alone: it first reports the gap, then reads what is buffered without
/// polling the upstream, then polls once per item, never missing another.
#[test]
fn a_lossy_branch_left_alone_reports_its_gap_then_polls_once_per_item() {
    const LEN: u64 = 30;
    let (upstream, counts) = CountingPolls::new(stream::iter(0..LEN));
    let (mut main, tap) = upstream.tee(4);
    let mut tap = tap.into_lossy();
    for k in 0..10 {
        assert_eq!(poll_once(&mut main), Poll::Ready(Some(k)));
    }
    drop(main);
    let stats = tap.stats();
    let (pulled, buffered) = (stats.pulled, stats.buffered as u64);
    let missed = entry(&stats, tap.id()).missed;
    assert!(missed > 0, "the tap missed items: {stats:?}");
    assert_eq!(missed + buffered, pulled);

    assert_eq!(poll_once(&mut tap), Poll::Ready(Some(Err(Lagged(missed)))));
    let polls = counts.polls();
    for k in missed..pulled {
        assert_eq!(poll_once(&mut tap), Poll::Ready(Some(Ok(k))));
    }
    assert_eq!(counts.polls(), polls, "the buffered items need no poll");
    for k in pulled..LEN {
        assert_eq!(poll_once(&mut tap), Poll::Ready(Some(Ok(k))));
        assert_eq!(counts.polls() as u64, polls as u64 + k - pulled + 1);
    }
    assert_eq!(poll_once(&mut tap), Poll::Ready(None));
    let stats = tap.stats();
    assert_eq!(entry(&stats, tap.id()).missed, missed, "no further misses");
    assert_eq!(entry(&stats, tap.id()).delivered, LEN - missed);
}

/// The `size_hint` of a lone branch over an exact-size upstream is exact as
/// it advances, and `(0, Some(0))` at the end; a fork's equals the
/// original's.
#[test]
fn size_hint_of_a_lone_branch_is_exact() {
    let mut a = one(stream::iter(0..10u64).fanout(1, 4));
    for k in 0..10 {
        let left = 10 - k as usize;
        assert_eq!(a.size_hint(), (left, Some(left)), "after {k} items");
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(k)));
    }
    assert_eq!(a.size_hint(), (0, Some(0)));
    assert_eq!(poll_once(&mut a), Poll::Ready(None));
    assert_eq!(a.size_hint(), (0, Some(0)));

    // Several items read without a call in between, then a fork.
    let mut b = one(stream::iter(0..10u64).fanout(1, 4));
    for k in 0..6 {
        assert_eq!(poll_once(&mut b), Poll::Ready(Some(k)));
    }
    let fork = b.clone();
    assert_eq!(fork.size_hint(), (4, Some(4)));
    assert_eq!(b.size_hint(), (4, Some(4)));
}

/// The `Debug` output of a lone branch shows the position it has reached,
/// also when no accessor ran while it read.
#[test]
fn debug_of_a_lone_branch_shows_its_position() {
    let mut a = one(stream::iter(0..10u64).fanout(1, 4));
    assert!(format!("{a:?}").contains("position: 0"), "{a:?}");
    for _ in 0..3 {
        assert!(poll_once(&mut a).is_ready());
    }
    let debug = format!("{a:?}");
    assert!(debug.contains("position: 3"), "{debug}");
    assert!(debug.contains("terminated: false"), "{debug}");
    for k in 4..=7 {
        assert!(poll_once(&mut a).is_ready());
        assert!(
            format!("{a:?}").contains(&format!("position: {k}")),
            "{a:?}"
        );
    }
    let mut lossy = a.into_lossy();
    assert!(poll_once(&mut lossy).is_ready());
    assert!(format!("{lossy:?}").contains("position: 8"), "{lossy:?}");
}

/// An upstream whose `Drop` panics (unless a panic is already unwinding).
struct PanicsOnDrop<S>(S);

impl<S> Drop for PanicsOnDrop<S> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("upstream drop boom");
        }
    }
}

impl<S: Stream + Unpin> Stream for PanicsOnDrop<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}

/// The upstream of a lone branch ends, and its `Drop` panics: the branch
/// gets that panic, but the end is recorded first, so the branch then ends
/// normally, as on the shared path, and so does a fork.
#[test]
fn a_panicking_upstream_drop_after_the_end_still_ends_a_lone_branch() {
    let mut a = one(PanicsOnDrop(stream::iter(0..2u32)).fanout(1, 4));
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(1)));
    let dropped = catch_unwind(AssertUnwindSafe(|| poll_once(&mut a))).map_err(panic_message);
    assert_eq!(dropped, Err("upstream drop boom".to_string()));
    assert!(a.stats().upstream_done, "the upstream returned None");
    let mut fork = a.clone();
    assert_eq!(poll_once(&mut a), Poll::Ready(None));
    assert_eq!(poll_once(&mut fork), Poll::Ready(None));
}
