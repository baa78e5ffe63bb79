//! Read-ahead: each lossless branch takes items from the shared buffer in
//! batches, under one lock, into a queue of its own, and yields them from
//! there; the branch that polls the upstream may pull ahead, up to the free
//! room. These tests state what must still hold with it.
//!
//! Covered here:
//! - a lone branch (a fanout of one, a branch left alone by a dropped
//!   sibling, forks of a lone branch): it yields every item in order, clones
//!   nothing, its statistics are exact whenever they are read, it never
//!   polls the upstream while items are pulled for it, never more than `cap`
//!   items ahead of what it has yielded, and never after the upstream's end;
//! - forks of a branch that holds read-ahead: the fork yields exactly what
//!   its parent yields, at most `cap` items are alive at any moment, also
//!   just after the fork, and each item is cloned at most once less than the
//!   number of branches that read it;
//! - a branch with read-ahead turned lossy, dropped, or whose `next()` is
//!   cancelled: nothing lost, its items released, the branch waiting for the
//!   room it held woken;
//! - `lag()` and `stats()` count the read-ahead, and `buffered + read_ahead`
//!   never exceeds `cap`;
//! - a lone branch waiting on the upstream, forked (also from another
//!   thread): no lost wake-up;
//! - the upstream's panics and end while a branch is alone.
//!
//! The batch sizes are an implementation detail: no test depends on them.
//! Where a test needs a read-ahead to exist, it checks that first ("setup").
//! Wake-ups are checked with `tokio_test` mock tasks, whose `is_woken` tells
//! whether the waker of their latest poll has been woken.

mod support;

use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use fanout::{Branch, Lagged, Stats, StreamExt as _};
use futures::channel::mpsc;
use futures::{stream, Stream, StreamExt as _};
use tokio_test::task::{spawn, Spawn};
use tokio_test::{assert_pending, assert_ready_eq};

use support::model::{Handle, Model, Value};
use support::{
    collect_all, entry, hang_guard, panic_message, panicking_upstream, poll_once, values,
    CountingPolls, DropFlag, PollCounts, Rng, Tracked, Tracker,
};

/// The message the panicking test upstreams panic with.
const BOOM: &str = "read-ahead upstream boom";

/// Capacities from "no read-ahead possible" to "many batches of room".
const CAPS: [usize; 7] = [1, 2, 3, 4, 7, 16, 64];

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// Polls `stream` once from `task`, whose waker records the wake-ups.
fn poll<S: Stream + Unpin>(task: &mut Spawn<()>, stream: &mut S) -> Poll<Option<S::Item>> {
    task.enter(|cx, _| Pin::new(stream).poll_next(cx))
}

/// Polls `stream` once with a no-op waker, catching a panic.
fn try_poll<S: Stream + Unpin>(stream: &mut S) -> Result<Poll<Option<S::Item>>, String> {
    catch_unwind(AssertUnwindSafe(|| poll_once(stream))).map_err(panic_message)
}

/// The value a poll of a branch of tracked items yields; the item itself is
/// dropped, so that the tracker's live count is what the fanout holds.
fn value(polled: Poll<Option<Tracked>>) -> Poll<Option<u64>> {
    polled.map(|item| item.map(|item| item.value))
}

/// The same for a lossy branch.
fn lossy_value(polled: Poll<Option<Result<Tracked, Lagged>>>) -> Poll<Option<Result<u64, Lagged>>> {
    polled.map(|item| item.map(|item| item.map(|item| item.value)))
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

fn three<T>(v: Vec<T>) -> [T; 3] {
    v.try_into().ok().expect("three branches")
}

/// Tracked items `0..len`, counting the upstream's polls and flagging its drop.
type TrackedUpstream = DropFlag<CountingPolls<Box<dyn Stream<Item = Tracked> + Send + Unpin>>>;

fn tracked_upstream(
    tracker: &Arc<Tracker>,
    len: u64,
) -> (TrackedUpstream, PollCounts, Arc<AtomicBool>) {
    let inner: Box<dyn Stream<Item = Tracked> + Send + Unpin> =
        Box::new(EndGuard::new(tracker.stream(len)));
    let (counting, counts) = CountingPolls::new(inner);
    let (upstream, dropped) = DropFlag::new(counting);
    (upstream, counts, dropped)
}

/// Items the upstream has yielded so far.
fn pulled(counts: &PollCounts) -> u64 {
    counts.yielded() as u64
}

/// The bounds that hold whenever the lock is free, as a snapshot shows them.
fn assert_snapshot_bounds(stats: &Stats) {
    assert_snapshot_bounds_with(stats, 0);
}

/// The same, with `extra` items above the capacity allowed: the documented
/// exception after forks (see [`fork_allowance`]).
fn assert_snapshot_bounds_with(stats: &Stats, extra: usize) {
    let limit = stats.capacity + extra;
    assert!(
        stats.buffered + stats.read_ahead <= limit,
        "buffered + read_ahead exceeds the capacity (+ {extra}): {stats:?}"
    );
    assert!(
        stats.high_water <= limit,
        "the high-water mark exceeds the capacity (+ {extra}): {stats:?}"
    );
    assert!(
        stats.high_water >= stats.buffered + stats.read_ahead,
        "the high-water mark is below what is held now: {stats:?}"
    );
}

/// Asserts that at most `cap` items are alive. The tests drop every item
/// they are given at once, so these are the items inside the fanout.
fn assert_live_within(tracker: &Tracker, cap: usize, when: &str) {
    assert!(
        tracker.live() <= cap,
        "{} items alive with capacity {cap} ({when})",
        tracker.live()
    );
}

/// The one documented exception to the memory bound (crate docs, "Cloning a
/// branch"; `Stats::read_ahead`): a fork gets a copy of its original's
/// read-ahead, so each fork may add up to one batch, at most a quarter of
/// the capacity, to the items alive, until the branches have yielded them.
fn fork_allowance(cap: usize) -> usize {
    cap / 4
}

/// The memory bound as documented: at most `cap` items alive, except that
/// each fork may add up to [`fork_allowance`] until the branches have
/// yielded the copies. The test cannot see when that is, but it can see a
/// pull: the upstream is polled only with free room, so after a pull the
/// excess of the forks before it is gone. So after any step, at most `cap`
/// items plus one allowance per fork made since the upstream last yielded
/// an item are alive. The tests drop every item they are given at once, so
/// the tracker's live count is what the fanout holds.
struct LiveBound {
    cap: usize,
    counts: PollCounts,
    /// Forks made since the upstream yielded `pulled` items.
    forks: usize,
    pulled: u64,
}

impl LiveBound {
    fn new(cap: usize, tracker: &Tracker, counts: &PollCounts) -> Self {
        assert!(tracker.live() <= cap);
        Self {
            cap,
            counts: counts.clone(),
            forks: 0,
            pulled: pulled(counts),
        }
    }

    /// The most items that may be alive now.
    fn limit(&mut self) -> usize {
        if pulled(&self.counts) != self.pulled {
            self.pulled = pulled(&self.counts);
            self.forks = 0;
        }
        self.cap + self.forks * fork_allowance(self.cap)
    }

    fn check(&mut self, tracker: &Tracker, when: &str) {
        let limit = self.limit();
        assert!(
            tracker.live() <= limit,
            "{} items alive with capacity {} ({} forks since the last pull), {when}",
            tracker.live(),
            self.cap,
            self.forks
        );
    }

    /// Forks `branch`, checking the count before and after.
    fn fork<B: Clone>(&mut self, tracker: &Tracker, branch: &B, when: &str) -> B {
        self.check(tracker, when);
        let fork = branch.clone();
        self.forks += 1;
        self.check(tracker, when);
        fork
    }
}

/// Checks a fanout whose only live branch is `branch`, which has yielded
/// `yielded` items since the start: its lag and its statistics are exact,
/// and the items alive are exactly those pulled and not yielded yet.
fn assert_lone<S: Stream>(
    branch: &Branch<S>,
    tracker: &Tracker,
    counts: &PollCounts,
    yielded: u64,
) {
    let cap = branch.capacity();
    let pulled = pulled(counts);
    let lag = branch.lag();
    assert_eq!(
        lag as u64,
        pulled - yielded,
        "lag: items pulled and not yielded"
    );
    assert!(lag <= cap, "lag {lag} over the capacity {cap}");
    assert_eq!(
        tracker.live(),
        lag,
        "alive: exactly the items pulled and not yielded yet"
    );
    let stats = branch.stats();
    assert_snapshot_bounds(&stats);
    assert_eq!(stats.pulled, pulled, "pulled: {stats:?}");
    assert_eq!(
        stats.buffered + stats.read_ahead,
        lag,
        "a lone branch: what it has not yielded is buffered or read ahead: {stats:?}"
    );
    assert_eq!(stats.branches.len(), 1);
    let me = entry(&stats, branch.id());
    assert_eq!(me.delivered, yielded, "delivered: {stats:?}");
    assert_eq!(me.lag, lag, "lag in the snapshot: {stats:?}");
    assert_eq!(me.missed, 0);
}

/// Wraps a stream and fails the test if it is polled after it returned
/// `None`.
struct EndGuard<S> {
    inner: S,
    ended: bool,
}

impl<S> EndGuard<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            ended: false,
        }
    }
}

impl<S: Stream + Unpin> Stream for EndGuard<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        assert!(
            !self.ended,
            "the upstream was polled after it returned None"
        );
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// Wraps a stream and returns `Pending` on every `every`th poll, after
/// waking the waker it was polled with (a cooperative yield).
struct Stutter<S> {
    inner: S,
    every: usize,
    polls: usize,
}

impl<S: Stream + Unpin> Stream for Stutter<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.polls += 1;
        if self.polls % self.every == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

// ---------------------------------------------------------------------------
// A fanout of one.
// ---------------------------------------------------------------------------

/// The only branch yields every item in order and clones none. Whenever its
/// statistics are read (also after many items with no accessor in between)
/// they are exact, and the items alive are exactly those pulled and not
/// yielded yet, at most `cap`. A poll while items are pulled for it does not
/// poll the upstream. The end comes after `len + 1` polls of the upstream
/// (every poll of this upstream yields an item or the end, and it is never
/// polled after the end), which drop the upstream.
#[test]
fn a_fanout_of_one_yields_every_item_in_order_within_cap_and_clones_nothing() {
    const LEN: u64 = 100;
    for cap in CAPS.into_iter().chain([1000]) {
        let tracker = Tracker::new();
        let (upstream, counts, dropped) = tracked_upstream(&tracker, LEN);
        let mut branch = one(upstream.fanout(1, cap));
        assert_lone(&branch, &tracker, &counts, 0);
        assert_eq!(counts.polls(), 0, "splitting polls nothing");

        // Half the items with no accessor in between.
        for k in 0..LEN / 2 {
            assert_eq!(value(poll_once(&mut branch)), Poll::Ready(Some(k)));
            assert!(
                pulled(&counts) - (k + 1) <= cap as u64,
                "cap {cap}: the upstream was polled more than cap items ahead"
            );
            assert_live_within(&tracker, cap, "a lone branch");
        }
        assert_lone(&branch, &tracker, &counts, LEN / 2);

        // The rest, checking everything after every item.
        for k in LEN / 2..LEN {
            let (lag, polls) = (branch.lag(), counts.polls());
            assert_eq!(value(poll_once(&mut branch)), Poll::Ready(Some(k)));
            if lag > 0 {
                assert_eq!(
                    counts.polls(),
                    polls,
                    "cap {cap}: polled the upstream with items pulled for it"
                );
            }
            assert_lone(&branch, &tracker, &counts, k + 1);
            assert_eq!(
                branch.stats().upstream_done,
                dropped.load(Ordering::SeqCst),
                "the upstream is dropped exactly when it has ended"
            );
        }

        assert_eq!(value(poll_once(&mut branch)), Poll::Ready(None));
        assert_eq!(counts.polls(), LEN as usize + 1, "cap {cap}");
        assert!(
            dropped.load(Ordering::SeqCst),
            "the ended upstream is dropped"
        );
        assert!(branch.stats().upstream_done);
        assert_lone(&branch, &tracker, &counts, LEN);

        // Fused: the upstream is never polled again.
        assert_eq!(value(poll_once(&mut branch)), Poll::Ready(None));
        assert_eq!(counts.polls(), LEN as usize + 1);
        assert_eq!(tracker.clones(), 0, "a lone branch clones nothing");
        assert_eq!(branch.size_hint(), (0, Some(0)));
    }
}

/// The end is recorded even when no accessor ran before it: the items and
/// the end both show in the statistics read afterwards.
#[test]
fn a_lone_branch_records_its_items_and_the_end_without_an_accessor() {
    for cap in CAPS {
        let tracker = Tracker::new();
        let (upstream, counts, dropped) = tracked_upstream(&tracker, 7);
        let mut branch = one(upstream.fanout(1, cap));
        for k in 0..7 {
            assert_eq!(value(poll_once(&mut branch)), Poll::Ready(Some(k)));
        }
        assert_eq!(value(poll_once(&mut branch)), Poll::Ready(None));
        assert_eq!(counts.polls(), 8);
        assert!(dropped.load(Ordering::SeqCst));
        assert!(branch.stats().upstream_done);
        assert_lone(&branch, &tracker, &counts, 7);
    }
}

/// An upstream that sometimes returns `Pending` (and wakes its waker): a
/// lone branch yields every item in order, is woken after each `Pending`,
/// is never more than `cap` items behind the upstream, and the upstream is
/// never polled after its end (`EndGuard` fails the test otherwise).
#[test]
fn a_lone_branch_over_a_stuttering_upstream_yields_everything_within_the_poll_bounds() {
    const LEN: u64 = 60;
    for cap in CAPS {
        for every in [2, 3, 5] {
            let tracker = Tracker::new();
            let inner = Stutter {
                inner: EndGuard::new(tracker.stream(LEN)),
                every,
                polls: 0,
            };
            let (upstream, counts) = CountingPolls::new(inner);
            let mut branch = one(upstream.fanout(1, cap));
            let mut task = spawn(());
            let mut next = 0;
            let mut steps = 0;
            loop {
                steps += 1;
                assert!(steps < 10_000, "no progress at item {next}");
                match value(poll(&mut task, &mut branch)) {
                    Poll::Ready(Some(k)) => {
                        assert_eq!(k, next, "cap {cap}, every {every}: out of order");
                        next += 1;
                    }
                    Poll::Ready(None) => break,
                    Poll::Pending => assert!(
                        task.is_woken(),
                        "cap {cap}, every {every}: the upstream woke, the branch was not woken"
                    ),
                }
                assert!(pulled(&counts) - next <= cap as u64);
                assert_live_within(&tracker, cap, "a lone branch");
                assert_eq!(tracker.live() as u64, pulled(&counts) - next);
            }
            assert_eq!(next, LEN, "cap {cap}, every {every}: ended early");
            let polls = counts.polls();
            assert_eq!(value(poll(&mut task, &mut branch)), Poll::Ready(None));
            assert_eq!(counts.polls(), polls, "polled after the end");
            assert_eq!(tracker.clones(), 0);
        }
    }
}

// ---------------------------------------------------------------------------
// A branch left alone.
// ---------------------------------------------------------------------------

/// A and B share a buffer; each reads some items (so that either may hold
/// read-ahead, or the buffer may be drained), then B is dropped: B's copies
/// are released at once (what is alive is exactly what A has not yielded),
/// and A yields the rest in order without cloning anything, and without
/// polling the upstream while items are pulled for it.
#[test]
fn a_branch_left_alone_by_a_dropped_sibling_reads_on_in_order_without_cloning() {
    const LEN: u64 = 40;
    // (capacity, items A reads first, items B reads then)
    let cases = [
        (8, 1, 0),
        (8, 3, 3),
        (8, 8, 2),
        (8, 2, 9),
        (16, 5, 12),
        (4, 4, 4),
        (64, 10, 1),
        (1, 1, 1),
    ];
    for (cap, a_reads, b_reads) in cases {
        let case = format!("cap {cap}, A reads {a_reads}, B reads {b_reads}");
        let tracker = Tracker::new();
        let (upstream, counts, dropped) = tracked_upstream(&tracker, LEN);
        let [mut a, mut b] = two(upstream.fanout(2, cap));
        for k in 0..a_reads {
            assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(k)), "{case}");
            assert_live_within(&tracker, cap, &case);
        }
        for k in 0..b_reads {
            assert_eq!(value(poll_once(&mut b)), Poll::Ready(Some(k)), "{case}");
            assert_live_within(&tracker, cap, &case);
        }

        drop(b);
        assert_eq!(
            tracker.live(),
            a.lag(),
            "{case}: B's copies were not released when it was dropped"
        );
        assert_eq!(a.lag() as u64, pulled(&counts) - a_reads);
        let clones = tracker.clones();
        for k in a_reads..LEN {
            let (lag, polls) = (a.lag(), counts.polls());
            assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(k)), "{case}");
            if lag > 0 {
                assert_eq!(
                    counts.polls(),
                    polls,
                    "{case}: polled the upstream with items pulled for it"
                );
            }
            assert_lone(&a, &tracker, &counts, k + 1);
        }
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(None));
        assert_eq!(counts.polls(), LEN as usize + 1, "{case}");
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(
            tracker.clones(),
            clones,
            "{case}: cloned after B was dropped"
        );
        drop(a);
        assert_eq!(tracker.live(), 0);
    }
}

// ---------------------------------------------------------------------------
// Forks of a lone branch.
// ---------------------------------------------------------------------------

/// A lone branch reads 5 items (it holds read-ahead), then forks. Forking
/// polls nothing and adds at most one batch to the items alive (the
/// documented exception). Right after it every counter is exact, and the
/// fork starts where A is: the same lag, hint and position. A then runs
/// ahead of the fork, which has never been polled, by at most `cap` items
/// and at least `cap` minus what the branches hold ahead, and waits; once
/// the fork has yielded what was held ahead at the fork, at most `cap` items
/// are alive again; and both yield exactly the same remaining items.
#[test]
fn a_fork_of_a_lone_branch_with_read_ahead_yields_the_same_items() {
    hang_guard(|| {
        const LEN: u64 = 200;
        const CAP: usize = 64;
        let tracker = Tracker::new();
        let (upstream, counts, dropped) = tracked_upstream(&tracker, LEN);
        let mut a = one(upstream.fanout(1, CAP));
        for k in 0..5 {
            assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(k)));
        }
        // Exact: A is the only branch, and its own snapshot syncs it.
        let held = a.stats().read_ahead;
        assert!(held > 0, "setup: the lone branch holds read-ahead");
        let (polls, pulled_before) = (counts.polls(), pulled(&counts));

        let mut bound = LiveBound::new(CAP, &tracker, &counts);
        let mut b = bound.fork(&tracker, &a, "forking the lone branch");
        assert_eq!(counts.polls(), polls, "forking polls nothing");
        let stats = b.stats();
        assert_snapshot_bounds_with(&stats, fork_allowance(CAP));
        assert_eq!(stats.pulled, pulled_before);
        assert!(!stats.upstream_done);
        assert_eq!(stats.branches.len(), 2);
        let lag = pulled_before - 5;
        assert_eq!(entry(&stats, a.id()).delivered, 5);
        assert_eq!(entry(&stats, a.id()).lag as u64, lag);
        assert_eq!(entry(&stats, b.id()).delivered, 0);
        assert_eq!(entry(&stats, b.id()).lag as u64, lag);
        assert_eq!((a.lag() as u64, b.lag() as u64), (lag, lag));
        let left = LEN as usize - 5;
        assert_eq!(a.size_hint(), (left, Some(left)));
        assert_eq!(b.size_hint(), (left, Some(left)));
        assert!(format!("{a:?}").contains("position: 5"), "{a:?}");
        assert!(format!("{b:?}").contains("position: 5"), "{b:?}");
        let held_after_fork = b.stats().read_ahead;

        // A runs ahead of B, which is never polled meanwhile.
        let mut ahead = 5;
        let mut task = spawn(());
        loop {
            match value(poll(&mut task, &mut a)) {
                Poll::Ready(Some(k)) => {
                    assert_eq!(k, ahead);
                    ahead += 1;
                }
                Poll::Ready(None) => panic!("A ended while B was {CAP} items behind"),
                Poll::Pending => break,
            }
            assert!(
                ahead - 5 <= CAP as u64,
                "A yielded more than cap items ahead of B"
            );
            assert!(
                pulled(&counts) - 5 <= CAP as u64,
                "pulled more than cap items ahead of B"
            );
            bound.check(&tracker, "A running ahead");
            assert_snapshot_bounds_with(&a.stats(), fork_allowance(CAP));
        }
        let run = (ahead - 5) as usize;
        assert!(
            run <= CAP && run + held_after_fork >= CAP,
            "A waits {run} items ahead of B, with {held_after_fork} items held ahead (cap {CAP})"
        );
        let stats = a.stats();
        assert_eq!(entry(&stats, a.id()).delivered, ahead);
        assert_eq!(entry(&stats, b.id()).delivered, 0);
        assert_eq!(entry(&stats, b.id()).lag as u64, pulled(&counts) - 5);

        // B reads what A read since the fork; then both read to the end.
        for k in 5..ahead {
            assert_eq!(value(poll_once(&mut b)), Poll::Ready(Some(k)));
            bound.check(&tracker, "B catching up");
            if k + 1 >= 5 + held as u64 {
                assert_live_within(&tracker, CAP, "the fork has yielded its copies");
            }
        }
        assert!(task.is_woken(), "B freed room, A was not woken");
        let rest = collect_all([a, b]);
        let expected: Vec<u64> = (ahead..LEN).collect();
        assert_eq!(values(&rest[0]), expected);
        assert_eq!(values(&rest[1]), expected);
        assert!(dropped.load(Ordering::SeqCst));
        drop(rest);
        assert_eq!(tracker.live(), 0);
    });
}

/// Forks, drops the fork, and forks again, each time with read-ahead held:
/// no item is lost or duplicated, the bound holds, and the counters add up.
#[test]
fn a_branch_alternating_between_lone_and_shared_loses_no_item() {
    hang_guard(|| {
        const LEN: u64 = 60;
        for cap in CAPS {
            let tracker = Tracker::new();
            let (upstream, counts, _dropped) = tracked_upstream(&tracker, LEN);
            let mut a = one(upstream.fanout(1, cap));
            let mut read = Vec::new();
            let mut forked = Vec::new();

            // Alone: 3 items.
            for _ in 0..3 {
                read.push(value(poll_once(&mut a)));
            }
            let mut bound = LiveBound::new(cap, &tracker, &counts);
            let mut b = bound.fork(&tracker, &a, "the first fork");

            // Shared: the fork reads along with A.
            for _ in 0..6 {
                read.push(value(poll_once(&mut a)));
                bound.check(&tracker, "shared");
                forked.push(value(poll_once(&mut b)));
                bound.check(&tracker, "shared");
            }
            drop(b);
            assert_eq!(
                tracker.live(),
                a.lag(),
                "cap {cap}: B's items were not released"
            );

            // Alone again.
            for _ in 0..7 {
                read.push(value(poll_once(&mut a)));
                bound.check(&tracker, "alone again");
            }
            let stats = a.stats();
            assert_snapshot_bounds_with(&stats, fork_allowance(cap));
            assert_eq!(stats.pulled, pulled(&counts));
            assert_eq!(entry(&stats, a.id()).delivered, 16);
            assert_eq!(entry(&stats, a.id()).lag as u64, pulled(&counts) - 16);

            // A second fork, then both to the end.
            let c = bound.fork(&tracker, &a, "the second fork");
            let rest = collect_all([a, c]);
            let ready = |range: std::ops::Range<u64>| {
                range.map(|k| Poll::Ready(Some(k))).collect::<Vec<_>>()
            };
            assert_eq!(forked, ready(3..9), "cap {cap}");
            assert_eq!(read, ready(0..16), "cap {cap}");
            let expected: Vec<u64> = (16..LEN).collect();
            assert_eq!(values(&rest[0]), expected, "cap {cap}");
            assert_eq!(values(&rest[1]), expected, "cap {cap}");
            drop(rest);
            assert_eq!(tracker.live(), 0);
        }
    });
}

// ---------------------------------------------------------------------------
// A lone branch waiting on the upstream, forked.
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
    /// Queues `items`, then wakes the stored waker, if any, with no lock held.
    fn push_and_wake(&self, items: impl IntoIterator<Item = u64>) {
        let waker = {
            let mut state = self.0.lock().unwrap();
            state.items.extend(items);
            state.waker.take()
        };
        waker.expect("the upstream holds a waker").wake();
    }

    fn polls(&self) -> usize {
        self.0.lock().unwrap().polls
    }
}

/// Forks `branch` on another thread, and returns the fork.
fn fork_on_another_thread<B: Clone + Send + Sync>(branch: &B) -> B {
    std::thread::scope(|scope| scope.spawn(|| branch.clone()).join().unwrap())
}

/// The lone branch A waits on the empty upstream; another thread forks it,
/// and the fork B waits too. An item pushed later wakes both, and both read
/// it; again with B polled first. Then a batch is pushed, A reads one item
/// of it (holding the rest ahead, if it reads ahead), and another thread
/// forks it again: the new fork yields exactly what A yields.
#[test]
fn a_lone_branch_waiting_on_the_upstream_forked_from_another_thread_gets_every_item() {
    let (upstream, pusher) = pushed();
    let mut a = one(upstream.fanout(1, 16));
    let (mut ta, mut tb) = (spawn(()), spawn(()));

    assert_pending!(poll(&mut ta, &mut a));
    assert_eq!(pusher.polls(), 1);
    let mut b = fork_on_another_thread(&a);
    assert_pending!(poll(&mut tb, &mut b));

    pusher.push_and_wake([7]);
    assert!(
        ta.is_woken(),
        "A waited on the upstream before the fork, and was not woken"
    );
    assert!(tb.is_woken(), "the upstream woke, but B was not woken");
    assert_ready_eq!(poll(&mut ta, &mut a), Some(7));
    assert_ready_eq!(poll(&mut tb, &mut b), Some(7));

    // And once more, with B polling first this time.
    assert_pending!(poll(&mut tb, &mut b));
    assert_pending!(poll(&mut ta, &mut a));
    pusher.push_and_wake([8]);
    assert!(ta.is_woken() && tb.is_woken());
    assert_ready_eq!(poll(&mut tb, &mut b), Some(8));
    assert_ready_eq!(poll(&mut ta, &mut a), Some(8));

    // A batch; A reads one item of it, then is forked again.
    drop(b);
    assert_pending!(poll(&mut ta, &mut a));
    pusher.push_and_wake(10..20);
    assert!(ta.is_woken());
    assert_ready_eq!(poll(&mut ta, &mut a), Some(10));
    let mut c = fork_on_another_thread(&a);
    let mut tc = spawn(());
    for k in 11..20 {
        assert_ready_eq!(poll(&mut tc, &mut c), Some(k));
        assert_ready_eq!(poll(&mut ta, &mut a), Some(k));
    }
    assert_pending!(poll(&mut ta, &mut a));
    assert_pending!(poll(&mut tc, &mut c));
    pusher.push_and_wake([20]);
    assert!(ta.is_woken() && tc.is_woken());
    assert_ready_eq!(poll(&mut tc, &mut c), Some(20));
    assert_ready_eq!(poll(&mut ta, &mut a), Some(20));
}

/// The same, but A is not re-polled between the fork and the item: A, which
/// last polled before the fork, is woken by the item and reads it first.
#[test]
fn a_lone_branch_not_repolled_after_the_fork_still_gets_the_item() {
    let (upstream, pusher) = pushed();
    let mut a = one(upstream.fanout(1, 4));
    let (mut ta, mut tb) = (spawn(()), spawn(()));

    assert_pending!(poll(&mut ta, &mut a));
    let mut b = a.clone();
    assert_pending!(poll(&mut tb, &mut b));

    pusher.push_and_wake([7]);
    assert!(tb.is_woken());
    assert!(
        ta.is_woken(),
        "A waited since before the fork, and was not woken"
    );
    assert_ready_eq!(poll(&mut ta, &mut a), Some(7));
    assert_ready_eq!(poll(&mut tb, &mut b), Some(7));
}

/// A variant where the fork reads first: B pulls the pushed item, and A,
/// woken, reads it from the buffer without polling the upstream.
#[test]
fn a_lone_branch_forked_while_waiting_reads_what_the_fork_pulled() {
    let (upstream, pusher) = pushed();
    let mut a = one(upstream.fanout(1, 4));
    let (mut ta, mut tb) = (spawn(()), spawn(()));

    assert_pending!(poll(&mut ta, &mut a));
    let mut b = a.clone();
    assert_pending!(poll(&mut tb, &mut b));
    pusher.push_and_wake([7]);
    assert!(tb.is_woken());
    assert_ready_eq!(poll(&mut tb, &mut b), Some(7));
    let polls = pusher.polls();
    assert!(ta.is_woken());
    assert_ready_eq!(poll(&mut ta, &mut a), Some(7));
    assert_eq!(pusher.polls(), polls, "A reads the buffered item");
}

// ---------------------------------------------------------------------------
// A panic of the upstream while a branch is alone.
// ---------------------------------------------------------------------------

/// The lone branch reads the 3 items the upstream yields, then gets the
/// upstream's own panic, and the upstream is dropped; whether the 3 items
/// came in one batch or not. The next poll, and any poll of a fork made
/// afterwards, panics with the fanout's message; the upstream is never
/// polled again and nothing leaks.
#[test]
fn a_panic_while_alone_reaches_the_branch_after_its_items_then_the_fanout_message() {
    for cap in CAPS {
        let tracker = Tracker::new();
        let (upstream, counts, dropped) = panicking_upstream(&tracker, 3, BOOM);
        let mut a = one(upstream.fanout(1, cap));
        for k in 0..3 {
            assert_eq!(
                try_poll(&mut a).map(value),
                Ok(Poll::Ready(Some(k))),
                "cap {cap}"
            );
        }
        let first = try_poll(&mut a).expect_err("the upstream panicked");
        assert_eq!(
            first, BOOM,
            "cap {cap}: the branch gets the upstream's own panic"
        );
        assert_eq!(counts.polls(), 4, "cap {cap}");
        assert!(
            dropped.load(Ordering::SeqCst),
            "the panicked upstream is dropped"
        );
        assert_eq!(tracker.live(), 0);

        let second = try_poll(&mut a).expect_err("the upstream is gone");
        assert_fanout_message(&second);
        assert_eq!(counts.polls(), 4, "never polled again");

        let stats = a.stats();
        assert_snapshot_bounds(&stats);
        assert_eq!((stats.pulled, stats.buffered, stats.read_ahead), (3, 0, 0));
        assert_eq!(entry(&stats, a.id()).delivered, 3);
        assert_eq!(a.lag(), 0);

        let mut fork = a.clone();
        assert!(format!("{fork:?}").contains("position: 3"), "{fork:?}");
        assert_fanout_message(&try_poll(&mut fork).expect_err("the fork's upstream is gone"));
        assert_fanout_message(&try_poll(&mut a).expect_err("still gone"));
        assert_eq!(counts.polls(), 4);

        drop((a, fork));
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 0);
    }
}

/// The panic in the very first poll: the same outcome.
#[test]
fn a_panic_in_the_first_poll_of_a_lone_branch() {
    for cap in CAPS {
        let tracker = Tracker::new();
        let (upstream, counts, dropped) = panicking_upstream(&tracker, 0, BOOM);
        let mut a = one(upstream.fanout(1, cap));
        assert_eq!(try_poll(&mut a).expect_err("panics"), BOOM);
        assert!(dropped.load(Ordering::SeqCst));
        assert_fanout_message(&try_poll(&mut a).expect_err("panics again"));
        let mut fork = a.clone();
        assert_fanout_message(&try_poll(&mut fork).expect_err("the fork panics"));
        assert_eq!(counts.polls(), 1);
        drop((a, fork));
        assert_eq!(tracker.live(), 0);
    }
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

/// After the panic has reached a branch, it will never yield another item,
/// so its `size_hint` (and a fork's) promises none; and a sibling's hint
/// drops to `(0, Some(0))` as soon as the poll of the upstream panicked.
#[test]
fn size_hint_after_a_panic_promises_no_items() {
    let tracker = Tracker::new();
    let (upstream, _counts, _dropped) = panicking_upstream(&tracker, 0, BOOM);
    let (mut a, b) = Hinted(upstream, 10).tee(4);
    assert_eq!(b.size_hint(), (10, Some(10)));
    assert_eq!(try_poll(&mut a).expect_err("panics"), BOOM);
    assert_eq!(a.size_hint(), (0, Some(0)));
    assert_eq!(b.size_hint(), (0, Some(0)));
    drop((a, b));

    for cap in CAPS {
        let (upstream, _counts, _dropped) = panicking_upstream(&tracker, 3, BOOM);
        let mut a = one(Hinted(upstream, 10).fanout(1, cap));
        assert_eq!(a.size_hint(), (10, Some(10)));
        for k in 0..3 {
            assert_eq!(try_poll(&mut a).map(value), Ok(Poll::Ready(Some(k))));
        }
        assert_eq!(try_poll(&mut a).expect_err("panics"), BOOM);
        assert_eq!(
            a.size_hint(),
            (0, Some(0)),
            "cap {cap}: a branch whose upstream panicked promises no more items"
        );
        assert_eq!(a.clone().size_hint(), (0, Some(0)));
    }
    assert_eq!(tracker.live(), 0);
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
/// gets that panic once (at whichever poll saw the end), but the end is
/// recorded first and no item is lost: polled on, the branch yields each
/// item exactly once, in order, then ends, and so does a fork made after
/// the panic.
#[test]
fn a_panicking_upstream_drop_after_the_end_still_ends_a_lone_branch() {
    const LEN: u32 = 5;
    for cap in CAPS {
        let mut a = one(PanicsOnDrop(stream::iter(0..LEN)).fanout(1, cap));
        let mut items = Vec::new();
        let mut panics = Vec::new();
        let mut fork = None;
        for _ in 0..2 * LEN + 4 {
            match try_poll(&mut a) {
                Ok(Poll::Ready(Some(item))) => items.push(item),
                Ok(Poll::Ready(None)) => break,
                Ok(Poll::Pending) => panic!("cap {cap}: pending on a ready upstream"),
                Err(message) => {
                    assert!(a.stats().upstream_done, "the upstream returned None");
                    panics.push(message);
                    fork = Some((a.clone(), items.len() as u32));
                }
            }
        }
        assert_eq!(items, (0..LEN).collect::<Vec<_>>(), "cap {cap}");
        assert_eq!(panics, ["upstream drop boom"], "cap {cap}");
        assert_eq!(poll_once(&mut a), Poll::Ready(None));
        let (fork, from) = fork.expect("a fork made after the panic");
        let rest: Vec<u32> = futures::executor::block_on(fork.collect());
        assert_eq!(rest, (from..LEN).collect::<Vec<_>>(), "cap {cap}: the fork");
    }
}

// ---------------------------------------------------------------------------
// Lossy, size_hint, Debug of a lone branch.
// ---------------------------------------------------------------------------

/// A lossy branch that is the only one yields every item as `Ok`: alone, it
/// never misses anything, and it never reads ahead.
#[test]
fn a_lone_lossy_branch_yields_every_item_and_never_reads_ahead() {
    const LEN: u64 = 30;
    for cap in CAPS {
        let tracker = Tracker::new();
        let (upstream, counts, _dropped) = tracked_upstream(&tracker, LEN);
        let mut lossy = one(upstream.fanout(1, cap)).into_lossy();
        for k in 0..LEN {
            assert_eq!(lossy_value(poll_once(&mut lossy)), Poll::Ready(Some(Ok(k))));
            let stats = lossy.stats();
            assert_snapshot_bounds(&stats);
            assert_eq!(
                stats.read_ahead, 0,
                "cap {cap}: a lossy branch reads ahead: {stats:?}"
            );
            assert_eq!(stats.pulled, pulled(&counts));
            assert!(stats.pulled - (k + 1) <= cap as u64);
            let me = entry(&stats, lossy.id());
            assert!(me.lossy);
            assert_eq!((me.delivered, me.missed), (k + 1, 0));
            assert_eq!(me.lag as u64, stats.pulled - (k + 1));
            assert_eq!(lossy.lag(), me.lag);
            assert_eq!(tracker.live(), me.lag);
        }
        assert_eq!(lossy_value(poll_once(&mut lossy)), Poll::Ready(None));
        assert_eq!(counts.polls(), LEN as usize + 1);
        assert!(lossy.stats().upstream_done);
        assert_eq!(tracker.clones(), 0);
    }
}

/// A lossy tap that missed items while the main branch (holding read-ahead)
/// ran ahead is left alone: it first reports the gap, then reads what is
/// buffered without polling the upstream, then reads on, never missing
/// another item.
#[test]
fn a_lossy_branch_left_alone_reports_its_gap_then_reads_everything() {
    const LEN: u64 = 30;
    for cap in [2, 4, 8] {
        let tracker = Tracker::new();
        let (upstream, counts, _dropped) = tracked_upstream(&tracker, LEN);
        let (mut main, tap) = upstream.tee(cap);
        let mut tap = tap.into_lossy();
        for k in 0..10 {
            assert_eq!(value(poll_once(&mut main)), Poll::Ready(Some(k)));
            assert_live_within(&tracker, cap, "main running ahead");
        }
        drop(main);
        let stats = tap.stats();
        assert_snapshot_bounds(&stats);
        let (pulled_now, buffered) = (stats.pulled, stats.buffered as u64);
        let missed = entry(&stats, tap.id()).missed;
        assert!(missed > 0, "cap {cap}: the tap missed items: {stats:?}");
        assert_eq!(missed + buffered, pulled_now, "{stats:?}");
        assert_eq!(
            tracker.live() as u64,
            buffered,
            "main's items were released"
        );

        assert_eq!(
            lossy_value(poll_once(&mut tap)),
            Poll::Ready(Some(Err(Lagged(missed))))
        );
        let polls = counts.polls();
        for k in missed..pulled_now {
            assert_eq!(lossy_value(poll_once(&mut tap)), Poll::Ready(Some(Ok(k))));
        }
        assert_eq!(counts.polls(), polls, "the buffered items need no poll");
        for k in pulled_now..LEN {
            assert_eq!(lossy_value(poll_once(&mut tap)), Poll::Ready(Some(Ok(k))));
        }
        assert_eq!(lossy_value(poll_once(&mut tap)), Poll::Ready(None));
        let stats = tap.stats();
        assert_eq!(entry(&stats, tap.id()).missed, missed, "no further misses");
        assert_eq!(entry(&stats, tap.id()).delivered, LEN - missed);
    }
}

/// The `size_hint` of a lone branch over an exact-size upstream is exact as
/// it advances, read ahead or not, and `(0, Some(0))` at the end; a fork's
/// equals the original's.
#[test]
fn size_hint_of_a_lone_branch_is_exact() {
    for cap in CAPS {
        let mut a = one(stream::iter(0..10u64).fanout(1, cap));
        for k in 0..10 {
            let left = 10 - k as usize;
            assert_eq!(
                a.size_hint(),
                (left, Some(left)),
                "cap {cap}, after {k} items"
            );
            assert_eq!(poll_once(&mut a), Poll::Ready(Some(k)));
        }
        assert_eq!(a.size_hint(), (0, Some(0)));
        assert_eq!(poll_once(&mut a), Poll::Ready(None));
        assert_eq!(a.size_hint(), (0, Some(0)));

        // Several items read without a call in between, then a fork.
        let mut b = one(stream::iter(0..10u64).fanout(1, cap));
        for k in 0..6 {
            assert_eq!(poll_once(&mut b), Poll::Ready(Some(k)));
        }
        let fork = b.clone();
        assert_eq!(fork.size_hint(), (4, Some(4)), "cap {cap}");
        assert_eq!(b.size_hint(), (4, Some(4)), "cap {cap}");
    }
}

/// The `Debug` output of a lone branch shows the position it has yielded up
/// to, whatever it holds ahead, also when no accessor ran while it read.
#[test]
fn debug_of_a_lone_branch_shows_its_position() {
    for cap in CAPS {
        let mut a = one(stream::iter(0..10u64).fanout(1, cap));
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
}

// ---------------------------------------------------------------------------
// Forks of a branch with read-ahead.
// ---------------------------------------------------------------------------

/// Polls `branches` in a seeded random order until all have ended, dropping
/// every item at once; checks after every poll the documented memory bound
/// (`bound`), at most `cap` items alive once `settled` says so, and that a
/// snapshot keeps the bounds (up to one fork's allowance); returns what each
/// yielded.
fn drain_randomly(
    branches: &mut [Branch<TrackedUpstream>],
    tracker: &Tracker,
    bound: &mut LiveBound,
    settled: impl Fn(&[Vec<u64>]) -> bool,
    seed: u64,
    case: &str,
) -> Vec<Vec<u64>> {
    let cap = branches[0].capacity();
    let mut rng = Rng::new(seed);
    let mut out = vec![Vec::new(); branches.len()];
    let mut ended = vec![false; branches.len()];
    let mut steps = 0;
    while ended.iter().any(|&ended| !ended) {
        steps += 1;
        assert!(steps < 100_000, "{case}: no progress");
        let i = rng.below(branches.len());
        if ended[i] {
            continue;
        }
        match value(poll_once(&mut branches[i])) {
            Poll::Ready(Some(k)) => out[i].push(k),
            Poll::Ready(None) => ended[i] = true,
            Poll::Pending => {}
        }
        bound.check(tracker, case);
        if settled(&out) {
            assert_live_within(tracker, cap, case);
        }
        if rng.percent(20) {
            let stats = branches[rng.below(branches.len())].stats();
            assert_snapshot_bounds_with(&stats, fork_allowance(cap));
        }
    }
    assert_eq!(
        tracker.live(),
        0,
        "{case}: every branch ended, items still alive"
    );
    out
}

/// A fork of a branch that holds read-ahead, of clones (its sibling has not
/// read those items) or of moved items (it is their last reader): forking
/// polls nothing and adds at most one batch to the items alive (the
/// documented exception; see [`LiveBound`] for the bound afterwards), both
/// report the same lag and hint, at most `cap` items are alive again once
/// both have yielded what A held ahead, and the fork yields exactly the
/// same remaining items as its parent.
#[test]
fn a_fork_of_a_branch_with_read_ahead_yields_the_same_items_within_the_bound() {
    hang_guard(|| {
        const LEN: u64 = 120;
        for cap in [8, 16, 64] {
            for moved in [false, true] {
                for seed in 0..4 {
                    let case = format!("cap {cap}, moved {moved}, seed {seed}");
                    let tracker = Tracker::new();
                    let (upstream, counts, _dropped) = tracked_upstream(&tracker, LEN);
                    let [mut a, mut b] = two(upstream.fanout(2, cap));
                    let mut b_read = 0;
                    if moved {
                        // B runs `cap` items ahead and waits (holding
                        // nothing ahead): A is the last reader of all.
                        while let Poll::Ready(Some(k)) = value(poll_once(&mut b)) {
                            assert_eq!(k, b_read);
                            b_read += 1;
                        }
                    }
                    assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(0)), "{case}");
                    // Exact: B holds nothing ahead (never polled, or waiting).
                    let held = a.stats().read_ahead;
                    assert!(held > 0, "setup, {case}: A holds read-ahead");
                    let (polls, pulled_before) = (counts.polls(), pulled(&counts));

                    let mut bound = LiveBound::new(cap, &tracker, &counts);
                    let c = bound.fork(&tracker, &a, &case);
                    assert_eq!(counts.polls(), polls, "{case}: forking polls nothing");
                    let stats = c.stats();
                    assert_snapshot_bounds_with(&stats, fork_allowance(cap));
                    assert_eq!(stats.pulled, pulled_before);
                    let lag = pulled_before as usize - 1;
                    assert_eq!((a.lag(), c.lag()), (lag, lag), "{case}");
                    assert_eq!(a.size_hint(), c.size_hint(), "{case}");
                    assert_eq!(entry(&stats, c.id()).lag, lag);
                    assert_eq!(entry(&stats, c.id()).delivered, 0);
                    assert_eq!(entry(&stats, a.id()).delivered, 1);

                    let mut branches = [a, b, c];
                    let settled = |out: &[Vec<u64>]| out[0].len() >= held && out[2].len() >= held;
                    let out =
                        drain_randomly(&mut branches, &tracker, &mut bound, settled, seed, &case);
                    let expected: Vec<u64> = (1..LEN).collect();
                    assert_eq!(out[0], expected, "{case}: A");
                    assert_eq!(out[2], expected, "{case}: the fork");
                    assert_eq!(out[1], (b_read..LEN).collect::<Vec<_>>(), "{case}: B");
                }
            }
        }
    });
}

/// Per-value clone counters, shared by the items of one [`probed_upstream`].
#[derive(Debug)]
struct Probes(Vec<AtomicUsize>);

impl Probes {
    fn clones(&self, value: u64) -> usize {
        self.0[value as usize].load(Ordering::SeqCst)
    }
}

/// An item that is tracked (live count) and counts its clones per value.
struct Probed {
    tracked: Tracked,
    probes: Arc<Probes>,
}

impl Value for Probed {
    fn value(&self) -> u64 {
        self.tracked.value
    }
}

impl Clone for Probed {
    fn clone(&self) -> Self {
        self.probes.0[self.value() as usize].fetch_add(1, Ordering::SeqCst);
        Self {
            tracked: self.tracked.clone(),
            probes: Arc::clone(&self.probes),
        }
    }
}

impl fmt::Debug for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Probed({})", self.value())
    }
}

type ProbedUpstream = DropFlag<CountingPolls<Box<dyn Stream<Item = Probed> + Send + Unpin>>>;

/// Items `0..len` that count their clones per value, tracked by `tracker`;
/// the upstream counts its polls, fails the test if polled after its end,
/// and flags its drop.
fn probed_upstream(
    tracker: &Arc<Tracker>,
    len: u64,
) -> (ProbedUpstream, PollCounts, Arc<AtomicBool>, Arc<Probes>) {
    let probes = Arc::new(Probes((0..len).map(|_| AtomicUsize::new(0)).collect()));
    let items = {
        let probes = Arc::clone(&probes);
        tracker.stream(len).map(move |tracked| Probed {
            tracked,
            probes: Arc::clone(&probes),
        })
    };
    let inner: Box<dyn Stream<Item = Probed> + Send + Unpin> = Box::new(EndGuard::new(items));
    let (counting, counts) = CountingPolls::new(inner);
    let (upstream, dropped) = DropFlag::new(counting);
    (upstream, counts, dropped, probes)
}

/// The smallest case: A takes items ahead by clone (B has not read them),
/// then forks. Each item is read by three branches from then on (A, B and
/// the fork), so it may be cloned at most twice; the last reader moves it.
#[test]
fn forking_a_branch_that_holds_clones_ahead_clones_each_item_at_most_readers_minus_one_times() {
    hang_guard(|| {
        const LEN: u64 = 20;
        const CAP: usize = 16;
        let tracker = Tracker::new();
        let (upstream, _counts, _dropped, probes) = probed_upstream(&tracker, LEN);
        let [mut a, b] = two(upstream.fanout(2, CAP));
        assert_eq!(
            poll_once(&mut a).map(|item| item.map(|item| item.value())),
            Poll::Ready(Some(0))
        );
        assert!(a.stats().read_ahead > 0, "setup: A holds clones ahead");
        let c = a.clone();
        let out = collect_all([a, b, c]);
        for (i, from) in [(0, 1), (1, 0), (2, 1)] {
            let got: Vec<u64> = out[i].iter().map(Probed::value).collect();
            assert_eq!(got, (from..LEN).collect::<Vec<_>>(), "branch {i}");
        }
        let excess: Vec<(u64, usize)> = (0..LEN)
            .map(|v| (v, probes.clones(v)))
            .filter(|&(v, clones)| clones > if v == 0 { 1 } else { 2 })
            .collect();
        assert!(
            excess.is_empty(),
            "items cloned more than readers - 1 times, (value, clones): {excess:?}"
        );
        drop(out);
        assert_eq!(tracker.live(), 0);
    });
}

// ---------------------------------------------------------------------------
// A random mix of polls, forks, drops and lossy turns.
// ---------------------------------------------------------------------------

/// A seeded random program over one fanout, checked after every step
/// against the shared reference model (`support::model`).
struct Run {
    cap: usize,
    len: u64,
    tracker: Arc<Tracker>,
    counts: PollCounts,
    dropped: Arc<AtomicBool>,
    probes: Arc<Probes>,
    handles: Vec<Handle<ProbedUpstream>>,
    model: Model,
    rng: Rng,
    forks: bool,
    lossy_turns: bool,
}

const MAX_LANES: usize = 6;

impl Run {
    fn new(n: usize, cap: usize, len: u64, seed: u64, forks: bool, lossy_turns: bool) -> Self {
        let tracker = Tracker::new();
        let (upstream, counts, dropped, probes) = probed_upstream(&tracker, len);
        let handles = upstream
            .fanout(n, cap)
            .into_iter()
            .map(Handle::new)
            .collect();
        Self {
            cap,
            len,
            tracker,
            counts,
            dropped,
            probes,
            handles,
            model: Model::new(n, cap),
            rng: Rng::new(seed),
            forks,
            lossy_turns,
        }
    }

    /// Panics with `error` if there is one.
    fn ok<T>(&self, checked: Result<T, String>) -> T {
        checked.unwrap_or_else(|error| panic!("cap {}: {error}", self.cap))
    }

    fn run(mut self, max_steps: usize) {
        let mut steps = 0;
        while !self.model.all_ended() {
            steps += 1;
            assert!(steps < max_steps, "no progress: {:?}", self.model);
            let i = self.rng.below(self.handles.len());
            match self.rng.below(100) {
                0..=71 => self.poll(i),
                72..=77 if self.forks && self.handles.len() < MAX_LANES => self.fork(i),
                78..=83 if self.handles.len() > 1 => self.drop_lane(i),
                84..=86 if self.lossy_turns => self.make_lossy(i),
                _ => self.check_stats(i),
            }
            self.check_bounds();
        }
        assert_eq!(
            self.tracker.live(),
            0,
            "every branch ended, items still alive: {:?}",
            self.model
        );
        let check = self.rng.below(self.handles.len());
        self.check_stats(check);
        assert!(
            self.dropped.load(Ordering::SeqCst),
            "the ended upstream is dropped"
        );
        assert_eq!(pulled(&self.counts), self.len);
        self.handles.clear();
        assert_eq!(self.tracker.live(), 0, "leak: {:?}", self.model);
    }

    fn poll(&mut self, i: usize) {
        let counts = self.counts.clone();
        let polled = self
            .model
            .poll(&mut self.handles, i, &|| counts.upstream())
            .map(drop);
        self.ok(polled);
    }

    fn fork(&mut self, i: usize) {
        let fork = self.handles[i].fork_counting_copies();
        let id = fork.handle.id();
        self.handles.push(fork.handle);
        let forked = self.model.fork(i, id, fork.start, fork.copied).map(drop);
        self.ok(forked);
    }

    fn drop_lane(&mut self, i: usize) {
        drop(self.handles.remove(i));
        self.model.remove(i);
    }

    fn make_lossy(&mut self, i: usize) {
        if self.handles[i].is_lossy() {
            return;
        }
        let live = self.tracker.live();
        self.handles[i].make_lossy();
        self.model.make_lossy(i);
        assert!(self.tracker.live() <= live, "a lossy turn allocated items");
    }

    /// Checks a snapshot taken from branch `i` (and that the upstream is
    /// dropped as soon as it ends), and its `lag()`.
    fn check_stats(&mut self, i: usize) {
        let stats = self.handles[i].stats();
        let checked = self.model.check_stats(i, &stats);
        self.ok(checked);
        assert_eq!(
            stats.upstream_done,
            self.dropped.load(Ordering::SeqCst),
            "the upstream is dropped once it has ended"
        );
        if !self.handles[i].is_lossy() {
            assert_eq!(
                self.handles[i].lag() as u64,
                self.model.pulled() - self.model.branch(i).next,
                "lag() of branch {}",
                self.handles[i].id()
            );
        }
    }

    /// The checks after every step: the model's (no lost wake-up, the poll
    /// bound, the items alive, the clone counts), and, since the upstream is
    /// always ready, that some unfinished branch can go on or was woken.
    fn check_bounds(&mut self) {
        let counts = self.counts.clone();
        let upstream = || counts.upstream();
        let (yielded, ended) = upstream();
        let probes = Arc::clone(&self.probes);
        let checked = self
            .model
            .observe_upstream(yielded, ended)
            .and_then(|()| self.model.check_parked(&mut self.handles, &upstream))
            .and_then(|()| self.model.check_bounds())
            .and_then(|()| self.model.check_live(self.tracker.live(), 0, 0))
            .and_then(|()| self.model.check_clones(|value| probes.clones(value)));
        self.ok(checked);
        let unfinished: Vec<_> = (0..self.handles.len())
            .filter(|&i| !self.model.branch(i).ended)
            .collect();
        if !unfinished.is_empty() && unfinished.iter().all(|&i| self.handles[i].parked()) {
            panic!("every branch waits and none was woken: {:?}", self.model);
        }
    }
}

/// Random programs of 150 steps for every `cap` in a spread and `n` in
/// 1..=4, six seeds each (spread by `seed_factor`), with or without forks
/// and lossy turns.
fn run_random_programs(seed_factor: u64, forks: bool, lossy_turns: bool) {
    hang_guard(move || {
        for cap in [1, 2, 3, 5, 8, 16, 64] {
            for n in 1..=4 {
                for seed in 0..6 {
                    let seed = seed * seed_factor + n as u64;
                    Run::new(n, cap, 150, seed, forks, lossy_turns).run(200_000);
                }
            }
        }
    });
}

/// Random programs of polls, forks (of branches holding read-ahead or not),
/// drops and lossy turns, checked after every step against the shared
/// reference model: the memory bound as documented (at most `cap` items
/// alive, but for the clones of read-ahead a fork gets, until they are
/// yielded or the upstream is polled again), the upstream never more than
/// `cap` items past the slowest lossless branch (so no lossless branch is
/// more than `cap` ahead of another), no lost wake-up, some branch able to
/// go on or woken; every branch yields its items in order (a lossy one
/// reports every gap); the clone counts; nothing is alive once every branch
/// has ended; a snapshot from any branch keeps the bounds and is exact for
/// that branch, never too low for the others.
#[test]
fn random_polls_forks_drops_and_lossy_turns_keep_every_bound() {
    run_random_programs(31, true, true);
}

/// The same without forks, where the model allows no excess: at most `cap`
/// items alive after every step, and `buffered + read_ahead <= cap` in every
/// snapshot, from any branch.
#[test]
fn random_polls_drops_and_lossy_turns_without_forks_keep_the_strict_bound() {
    run_random_programs(7, false, true);
}

/// The same without lossy turns: each item is cloned at most once less than
/// the number of branches that were its readers (alive when it was pulled,
/// or forked later from before it), forks mid-way included.
#[test]
fn clone_counts_stay_within_readers_minus_one_with_forks_mid_way() {
    run_random_programs(17, true, false);
}

/// `buffered + read_ahead <= cap` seen from every branch after every step,
/// with four branches read at different speeds (branch `i` reads `i + 1`
/// items per round).
#[test]
fn buffered_and_read_ahead_never_exceed_cap_together() {
    const LEN: u64 = 200;
    for cap in 1..=20 {
        let tracker = Tracker::new();
        let (upstream, counts, _dropped) = tracked_upstream(&tracker, LEN);
        let mut branches = upstream.fanout(4, cap);
        let mut next = [0u64; 4];
        let mut ended = [false; 4];
        let mut rounds = 0;
        let mut saw_read_ahead = false;
        while ended.iter().any(|&ended| !ended) {
            rounds += 1;
            assert!(rounds < 10_000, "cap {cap}: no progress");
            for i in 0..4 {
                for _ in 0..=i {
                    match value(poll_once(&mut branches[i])) {
                        Poll::Ready(Some(k)) => {
                            assert_eq!(k, next[i]);
                            next[i] += 1;
                        }
                        Poll::Ready(None) => ended[i] = true,
                        Poll::Pending => break,
                    }
                    assert_live_within(&tracker, cap, "four speeds");
                    for branch in &branches {
                        let stats = branch.stats();
                        assert_snapshot_bounds(&stats);
                        assert!(stats.pulled - next.iter().min().unwrap() <= cap as u64);
                        saw_read_ahead |= stats.read_ahead > 0;
                    }
                }
            }
        }
        assert_eq!(next, [LEN; 4]);
        assert_eq!(pulled(&counts), LEN);
        if cap >= 8 {
            assert!(saw_read_ahead, "setup, cap {cap}: some branch read ahead");
        }
    }
}

// ---------------------------------------------------------------------------
// Lossy turns, drops and cancellation with read-ahead.
// ---------------------------------------------------------------------------

/// A branch that holds read-ahead is turned lossy. Turning it allocates
/// nothing and misses nothing: the items it had taken are its own (crate
/// docs, cancel safety), and it holds no more ahead than it did. Then either
/// it is read at once, and yields as `Ok` every item A had pulled, from where
/// A was; or it stays idle while the other branch runs to the end without
/// ever waiting for it, and then yields the items A had read ahead first.
/// Either way it accounts for every later item exactly once, in order:
/// yielded as `Ok`, or counted in an `Err(Lagged(k))`; and it takes nothing
/// ahead after its read-ahead.
#[test]
fn a_branch_with_read_ahead_turned_lossy_loses_nothing_unreported() {
    hang_guard(|| {
        const LEN: u64 = 100;
        for cap in [8, 16, 64] {
            for moved in [false, true] {
                for idle in [false, true] {
                    let case = format!("cap {cap}, moved {moved}, idle {idle}");
                    let tracker = Tracker::new();
                    let (upstream, counts, _dropped) = tracked_upstream(&tracker, LEN);
                    let [mut a, mut b] = two(upstream.fanout(2, cap));
                    let mut b_next = 0;
                    if moved {
                        while let Poll::Ready(Some(k)) = value(poll_once(&mut b)) {
                            assert_eq!(k, b_next);
                            b_next += 1;
                        }
                    }
                    assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(0)));
                    // Exact: B holds nothing ahead (never polled, or waiting).
                    let held = a.stats().read_ahead;
                    assert!(held > 0, "setup, {case}: A holds read-ahead");
                    let (live, pulled_before) = (tracker.live(), pulled(&counts));

                    let mut lossy = a.into_lossy();
                    assert!(
                        tracker.live() <= live,
                        "{case}: turning lossy allocated items"
                    );
                    let stats = lossy.stats();
                    assert_snapshot_bounds(&stats);
                    assert!(
                        stats.read_ahead <= held,
                        "{case}: took more ahead: {stats:?}"
                    );
                    let me = entry(&stats, lossy.id());
                    assert!(me.lossy);
                    assert_eq!((me.missed, me.delivered), (0, 1), "{case}: {stats:?}");
                    assert_eq!(me.lag as u64, pulled_before - 1);
                    assert_eq!(lossy.lag() as u64, pulled_before - 1);

                    let mut next = 1;
                    if idle {
                        // B runs to the end; the idle lossy branch never
                        // holds it back.
                        for k in b_next..LEN {
                            assert_eq!(
                                value(poll_once(&mut b)),
                                Poll::Ready(Some(k)),
                                "{case}: B waited for the lossy branch"
                            );
                            assert_live_within(&tracker, cap, &case);
                        }
                        assert_eq!(value(poll_once(&mut b)), Poll::Ready(None));
                        for k in 1..=held as u64 {
                            assert_eq!(
                                lossy_value(poll_once(&mut lossy)),
                                Poll::Ready(Some(Ok(k))),
                                "{case}: the items A had read ahead"
                            );
                        }
                        next = 1 + held as u64;
                    } else {
                        let mut ahead = lossy.stats().read_ahead;
                        for k in 1..pulled_before {
                            assert_eq!(
                                lossy_value(poll_once(&mut lossy)),
                                Poll::Ready(Some(Ok(k))),
                                "{case}: what A had pulled"
                            );
                            next = k + 1;
                            let now = lossy.stats().read_ahead;
                            assert!(now <= ahead, "{case}: the lossy branch took more ahead");
                            ahead = now;
                        }
                        assert_eq!(ahead, 0, "{case}: the lossy branch still holds read-ahead");
                        for k in b_next..LEN {
                            assert_eq!(value(poll_once(&mut b)), Poll::Ready(Some(k)), "{case}");
                            assert_live_within(&tracker, cap, &case);
                        }
                        assert_eq!(value(poll_once(&mut b)), Poll::Ready(None));
                    }

                    loop {
                        match lossy_value(poll_once(&mut lossy)) {
                            Poll::Ready(Some(Ok(k))) => {
                                assert_eq!(k, next, "{case}: an unreported gap or a repeat");
                                next += 1;
                            }
                            Poll::Ready(Some(Err(Lagged(missed)))) => {
                                assert!(missed > 0);
                                next += missed;
                            }
                            Poll::Ready(None) => break,
                            Poll::Pending => panic!("{case}: pending after the upstream ended"),
                        }
                        assert_eq!(
                            lossy.stats().read_ahead,
                            0,
                            "{case}: the lossy branch read ahead"
                        );
                    }
                    assert_eq!(next, LEN, "{case}: the lossy branch's items and gaps");
                    let stats = lossy.stats();
                    let me = entry(&stats, lossy.id());
                    assert_eq!(me.delivered + me.missed, LEN, "{case}: {stats:?}");
                    drop((b, lossy));
                    assert_eq!(tracker.live(), 0);
                }
            }
        }
    });
}

/// Two branches, `cap` 8: A reads one item and holds read-ahead, B reads
/// until it waits for room. Returns them with B's task and B's count.
fn slow_a_with_read_ahead_and_b_waiting_for_room(
    tracker: &Arc<Tracker>,
    moved: bool,
) -> (
    Branch<TrackedUpstream>,
    Branch<TrackedUpstream>,
    Spawn<()>,
    u64,
    PollCounts,
) {
    const CAP: usize = 8;
    let (upstream, counts, _dropped) = tracked_upstream(tracker, 100);
    let [mut a, mut b] = two(upstream.fanout(2, CAP));
    let mut tb = spawn(());
    let mut b_next = 0;
    if moved {
        // B first: A then reads the items it is the last reader of, by move.
        while let Poll::Ready(Some(k)) = value(poll(&mut tb, &mut b)) {
            assert_eq!(k, b_next);
            b_next += 1;
        }
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(0)));
    } else {
        // A first: it takes its share of the batch it pulls, by clone.
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(0)));
    }
    assert!(a.stats().read_ahead > 0, "setup: A holds read-ahead");
    loop {
        match value(poll(&mut tb, &mut b)) {
            Poll::Ready(Some(k)) => {
                assert_eq!(k, b_next);
                b_next += 1;
            }
            Poll::Ready(None) => panic!("setup: B ended"),
            Poll::Pending => break,
        }
    }
    assert!(!tb.is_woken(), "setup: B waits for room");
    assert_live_within(tracker, CAP, "setup");
    (a, b, tb, b_next, counts)
}

/// Dropping a branch that holds read-ahead releases its items at once (what
/// is alive is then exactly what B has not yielded) and wakes B, which waits
/// for the room A held; B then reads to the end.
#[test]
fn dropping_a_branch_with_read_ahead_releases_its_items_and_wakes_the_branch_waiting_for_room() {
    for moved in [false, true] {
        let tracker = Tracker::new();
        let (a, mut b, mut tb, b_next, _counts) =
            slow_a_with_read_ahead_and_b_waiting_for_room(&tracker, moved);
        let live = tracker.live();
        drop(a);
        assert!(
            tracker.live() < live,
            "moved {moved}: A's items were not released"
        );
        assert_eq!(
            tracker.live(),
            b.lag(),
            "moved {moved}: only B's items are alive"
        );
        assert!(
            tb.is_woken(),
            "moved {moved}: A was dropped, B waits for room and was not woken"
        );
        for k in b_next..100 {
            assert_eq!(value(poll(&mut tb, &mut b)), Poll::Ready(Some(k)));
        }
        assert_eq!(value(poll(&mut tb, &mut b)), Poll::Ready(None));
        assert_eq!(tracker.live(), 0);
    }
}

/// The slow branch A, which holds read-ahead, turns lossy: it gives its
/// read-ahead back and holds nobody back any more, so B, waiting for the
/// room A held, is woken and goes on.
#[test]
fn turning_a_branch_with_read_ahead_lossy_wakes_the_branch_waiting_for_room() {
    for moved in [false, true] {
        let tracker = Tracker::new();
        let (a, mut b, mut tb, b_next, _counts) =
            slow_a_with_read_ahead_and_b_waiting_for_room(&tracker, moved);
        let lossy = a.into_lossy();
        assert!(
            tb.is_woken(),
            "moved {moved}: A turned lossy, B waits for room and was not woken"
        );
        assert_eq!(
            value(poll(&mut tb, &mut b)),
            Poll::Ready(Some(b_next)),
            "moved {moved}: B was woken but cannot go on"
        );
        assert_live_within(&tracker, 8, "after the lossy turn");
        drop(lossy);
    }
}

/// The slow branch A yields the items it holds ahead: at the latest when it
/// has yielded all of them, the room they held is free, and B, waiting for
/// room, is woken and goes on.
#[test]
fn a_branch_waiting_for_room_is_woken_once_the_slow_branch_has_yielded_its_read_ahead() {
    for moved in [false, true] {
        let tracker = Tracker::new();
        let (mut a, mut b, mut tb, b_next, _counts) =
            slow_a_with_read_ahead_and_b_waiting_for_room(&tracker, moved);
        // Exact: B holds nothing ahead (it waits), and A's snapshot counts
        // its own read-ahead exactly.
        let held = a.stats().read_ahead;
        assert!(held > 0, "setup");
        for k in 1..=held as u64 {
            assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(k)));
            assert_live_within(&tracker, 8, "A yielding its read-ahead");
        }
        assert!(
            tb.is_woken(),
            "moved {moved}: A yielded its {held} items ahead, B waits for room and was not woken"
        );
        assert_eq!(
            value(poll(&mut tb, &mut b)),
            Poll::Ready(Some(b_next)),
            "moved {moved}: B was woken but cannot go on"
        );
    }
}

/// A `next()` future that returned `Pending` is dropped after items arrived
/// and another branch pulled them;
/// futures made and dropped while A holds read-ahead; a `Pending` one at
/// the end of the buffer, dropped: A loses nothing, and every counter stays
/// exact.
#[test]
fn a_cancelled_next_loses_nothing_with_read_ahead() {
    hang_guard(|| {
        const CAP: usize = 16;
        let tracker = Tracker::new();
        let (tx, rx) = mpsc::unbounded::<Tracked>();
        let [mut a, mut b] = two(rx.fanout(2, CAP));
        let mut a_read = Vec::new();
        let mut b_read = Vec::new();

        {
            let mut next = spawn(a.next());
            assert_pending!(next.poll());
            for k in 0..10 {
                tx.unbounded_send(tracker.item(k)).unwrap();
            }
            assert!(
                next.is_woken(),
                "the upstream woke, A's next() was not woken"
            );
            // B pulls the items while A's future is pending, then A's future
            // is cancelled.
            b_read.push(value(poll_once(&mut b)));
        }
        let stats = a.stats();
        assert_snapshot_bounds(&stats);
        assert_eq!(a.lag() as u64, stats.pulled, "nothing taken from A");
        assert_eq!(entry(&stats, a.id()).delivered, 0);

        {
            let mut next = spawn(a.next());
            a_read.push(value(next.poll()));
        }
        assert!(a.stats().read_ahead > 0, "setup: A holds read-ahead");
        let lag = a.lag();
        for _ in 0..3 {
            drop(a.next());
            drop(spawn(a.next()));
        }
        assert_eq!(a.lag(), lag, "futures dropped unpolled took items");

        // A reads all there is, then its next() waits and is cancelled.
        loop {
            let mut next = spawn(a.next());
            match value(next.poll()) {
                Poll::Ready(item) => a_read.push(Poll::Ready(item)),
                Poll::Pending => break,
            }
        }
        for k in 10..20 {
            tx.unbounded_send(tracker.item(k)).unwrap();
        }
        drop(tx);
        assert_live_within(&tracker, CAP + 10, "the channel holds 10 items");
        let rest = collect_all([a, b]);
        let ready =
            |range: std::ops::Range<u64>| range.map(|k| Poll::Ready(Some(k))).collect::<Vec<_>>();
        let mut a_all: Vec<u64> = a_read
            .iter()
            .map(|item| match item {
                Poll::Ready(Some(k)) => *k,
                other => panic!("A yielded {other:?}"),
            })
            .collect();
        a_all.extend(values(&rest[0]));
        assert_eq!(
            a_all,
            (0..20).collect::<Vec<_>>(),
            "A lost or repeated items"
        );
        assert_eq!(b_read, ready(0..1));
        assert_eq!(values(&rest[1]), (1..20).collect::<Vec<_>>());
        drop(rest);
        assert_eq!(tracker.live(), 0);
    });
}

/// `lag()` counts the items a branch holds ahead: it is the number of items
/// pulled that the branch has not yielded, also while it yields them from
/// its read-ahead without the lock. Another branch's snapshot counts A's
/// read-ahead as of A's latest visit to the buffer: never less than A's
/// true lag, never more delivered than A yielded, and exact once A has
/// visited again.
#[test]
fn lag_counts_the_read_ahead() {
    const LEN: u64 = 100;
    for cap in [8, 16, 64] {
        let tracker = Tracker::new();
        let (upstream, counts, _dropped) = tracked_upstream(&tracker, LEN);
        let [mut a, mut b, c] = three(upstream.fanout(3, cap));
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(0)));
        let stats = a.stats();
        assert!(stats.read_ahead > 0, "setup, cap {cap}: A holds read-ahead");
        let held = stats.read_ahead as u64;
        assert_eq!(a.lag() as u64, pulled(&counts) - 1, "cap {cap}");
        assert_eq!(entry(&stats, a.id()).lag as u64, pulled(&counts) - 1);
        assert_eq!(entry(&stats, a.id()).delivered, 1);
        assert!(a.lag() <= cap);

        // A yields from its read-ahead; C's snapshots, then A's exact lag.
        let mut yielded = 1;
        for _ in 0..held.saturating_sub(1) {
            assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(yielded)));
            yielded += 1;
            let pulled = pulled(&counts);
            let seen = c.stats();
            let a_entry = entry(&seen, a.id());
            assert!(
                a_entry.lag as u64 >= pulled - yielded,
                "cap {cap}: {seen:?}"
            );
            assert!(a_entry.delivered <= yielded, "cap {cap}: {seen:?}");
            assert_eq!(a.lag() as u64, pulled - yielded, "cap {cap}: A's lag");
            let seen = c.stats();
            let a_entry = entry(&seen, a.id());
            assert_eq!(
                a_entry.lag as u64,
                pulled - yielded,
                "cap {cap}: after A's visit"
            );
            assert_eq!(a_entry.delivered, yielded, "cap {cap}: after A's visit");
            assert_eq!(
                entry(&seen, c.id()).lag as u64,
                pulled,
                "C has yielded nothing"
            );
        }

        // B reads a few (and may hold read-ahead of its own): the same.
        for k in 0..3 {
            assert_eq!(value(poll_once(&mut b)), Poll::Ready(Some(k)));
            assert_eq!(
                b.lag() as u64,
                pulled(&counts) - (k + 1),
                "cap {cap}: B's lag"
            );
            assert_eq!(
                a.lag() as u64,
                pulled(&counts) - yielded,
                "cap {cap}: A's lag"
            );
            assert_eq!(c.lag() as u64, pulled(&counts), "cap {cap}: C's lag");
            assert!(b.lag() <= cap && c.lag() <= cap);
        }
        drop((a, b, c));
        assert_eq!(tracker.live(), 0);
    }
}
