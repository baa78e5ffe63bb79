//! Items whose `Clone` (or `Drop`) panics, and wakers that panic.
//!
//! A `Clone` that panics propagates to the branch that asked for the item
//! and leaves the fanout as it was: the other branches get every item, in
//! order; the branch that panicked, polled again, gets the item it failed to
//! get and goes on in order; nothing hangs and nothing leaks.
//!
//! The `f1_`, `f2_` and `f3_` tests, and the panicking waker test, are
//! regression tests for lost wake-ups on panic paths: a branch waiting for
//! the upstream or for room whose waker was taken out of its list but never
//! woken, because a panic unwound past the wake-up. Each checks that the
//! waiting branch's waker is woken, with a flag or a `tokio_test` task. The
//! `f4_` test does the same for the drop of an item evicted for a lossy
//! branch, which panics before the poller polls the upstream: the upstream
//! stays, not marked as panicked, and a branch waiting for room is woken
//! once the item is gone. The `f5_` test checks that a panicking drop of the
//! upstream after a batch loses none of the batch's items.

mod support;

use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;

use fanout::{Branch, Lagged, StreamExt as _};
use futures::task::noop_waker_ref;
use futures::{stream, Stream};
use tokio_test::assert_pending;
use tokio_test::task::{spawn, Spawn};

use support::{
    clear_hook, collect_all, entry, hang_guard, panic_message, poll_once, poll_with, set_hook,
    share, take, Action, CallbackWaker, DropFlag, Hooked, Progress, Rng, Shared, Tracked, Tracker,
    WakeFlag,
};

/// Which item's next `Clone`, and which item's next `Drop`, panic: each trap
/// is armed for one value, and fires once, then disarms itself. The drop
/// trap may also run an action just before it panics (foreign code that
/// polls a branch, say).
#[derive(Default)]
struct Traps {
    clone_armed: AtomicBool,
    clone_value: AtomicU64,
    drop_armed: AtomicBool,
    drop_value: AtomicU64,
    drop_action: Mutex<Option<Action>>,
}

impl Traps {
    fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The next clone of item `value` panics.
    fn arm_clone(&self, value: u64) {
        self.clone_value.store(value, Ordering::SeqCst);
        self.clone_armed.store(true, Ordering::SeqCst);
    }

    /// The next drop of a copy of item `value` panics.
    fn arm_drop(&self, value: u64) {
        self.drop_value.store(value, Ordering::SeqCst);
        self.drop_armed.store(true, Ordering::SeqCst);
    }

    /// The next drop of a copy of item `value` runs `action`, then panics.
    fn arm_drop_with(&self, value: u64, action: impl FnOnce() + Send + 'static) {
        *self.drop_action.lock().unwrap() = Some(Box::new(action));
        self.arm_drop(value);
    }

    /// The action armed with the drop trap, if any; taken out, so that it
    /// runs with no lock of the traps held.
    fn take_drop_action(&self) -> Option<Action> {
        self.drop_action.lock().unwrap().take()
    }

    fn clone_is_armed(&self) -> bool {
        self.clone_armed.load(Ordering::SeqCst)
    }

    fn clone_fires(&self, value: u64) -> bool {
        self.clone_value.load(Ordering::SeqCst) == value
            && self.clone_armed.swap(false, Ordering::SeqCst)
    }

    fn drop_fires(&self, value: u64) -> bool {
        self.drop_value.load(Ordering::SeqCst) == value
            && self.drop_armed.swap(false, Ordering::SeqCst)
    }
}

fn clone_boom(value: u64) -> String {
    format!("clone of item {value} panicked")
}

fn drop_boom(value: u64) -> String {
    format!("drop of item {value} panicked")
}

/// An item whose `Clone` and `Drop` panic when its [`Traps`] say so. Its
/// live copies and clones are counted by the [`Tracker`] of its `Tracked`;
/// a clone that panics makes no copy, and a copy whose drop panics still
/// drops its `Tracked`.
struct Fragile {
    tracked: Tracked,
    traps: Arc<Traps>,
}

impl Fragile {
    fn value(&self) -> u64 {
        self.tracked.value
    }
}

impl fmt::Debug for Fragile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fragile({})", self.value())
    }
}

impl Clone for Fragile {
    fn clone(&self) -> Self {
        if self.traps.clone_fires(self.value()) {
            panic!("{}", clone_boom(self.value()));
        }
        Self {
            tracked: self.tracked.clone(),
            traps: Arc::clone(&self.traps),
        }
    }
}

impl Drop for Fragile {
    fn drop(&mut self) {
        if self.traps.drop_fires(self.value()) {
            if let Some(action) = self.traps.take_drop_action() {
                action();
            }
            panic!("{}", drop_boom(self.value()));
        }
    }
}

/// The items `0..count`, as [`Fragile`] items.
fn fragile_stream(
    tracker: &Arc<Tracker>,
    traps: &Arc<Traps>,
    count: u64,
) -> impl Stream<Item = Fragile> + Send + Unpin {
    let (tracker, traps) = (Arc::clone(tracker), Arc::clone(traps));
    stream::iter((0..count).map(move |value| Fragile {
        tracked: tracker.item(value),
        traps: Arc::clone(&traps),
    }))
}

/// The items of `script`, in order, as [`Fragile`] items, where `None` is a
/// poll that returns `Pending`; after the script, the end.
///
/// A branch that polls the upstream may pull a batch: it may poll again
/// while the upstream yields items and the buffer has room (up to a batch
/// size that is the fanout's business). A `Pending` ends the batch at the
/// latest, so a script chooses the most items one poll of a branch pulls.
/// The `Pending` does not wake the waker (a wake-up of the upstream would
/// wake the waiting branches that the tests expect to be woken by something
/// else): every script puts it right after an item, so that it ends the
/// batch that pulled that item; if a smaller batch stops before it, the
/// next poll of the upstream gets it, and that branch waits until another
/// branch, which the test polls then, pulls the next item.
fn scripted_fragile_stream(
    tracker: &Arc<Tracker>,
    traps: &Arc<Traps>,
    script: &[Option<u64>],
) -> impl Stream<Item = Fragile> + Send + Unpin {
    let (tracker, traps) = (Arc::clone(tracker), Arc::clone(traps));
    let mut script: VecDeque<Option<u64>> = script.iter().copied().collect();
    stream::poll_fn(move |_: &mut Context<'_>| match script.pop_front() {
        Some(Some(value)) => Poll::Ready(Some(Fragile {
            tracked: tracker.item(value),
            traps: Arc::clone(&traps),
        })),
        Some(None) => Poll::Pending,
        None => Poll::Ready(None),
    })
}

/// The items `0..count`, as [`Fragile`] items; then `Pending` (without
/// waking the waker: the tests poll again by hand) until `open` is set; then
/// the end.
fn fragile_stream_ending_once_open(
    tracker: &Arc<Tracker>,
    traps: &Arc<Traps>,
    count: u64,
    open: &Arc<AtomicBool>,
) -> impl Stream<Item = Fragile> + Send + Unpin {
    let (tracker, traps, open) = (Arc::clone(tracker), Arc::clone(traps), Arc::clone(open));
    let mut next = 0;
    stream::poll_fn(move |_: &mut Context<'_>| {
        if next < count {
            next += 1;
            Poll::Ready(Some(Fragile {
                tracked: tracker.item(next - 1),
                traps: Arc::clone(&traps),
            }))
        } else if open.load(Ordering::SeqCst) {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    })
}

/// The message the upstream of the F2 test panics with when dropped.
const UPSTREAM_DROP_BOOM: &str = "upstream drop boom";

/// An upstream whose `Drop` panics (unless a panic is already unwinding).
struct PanicOnDrop<S>(S);

impl<S> Drop for PanicOnDrop<S> {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("{UPSTREAM_DROP_BOOM}");
        }
    }
}

impl<S: Stream + Unpin> Stream for PanicOnDrop<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<S::Item>> {
        std::pin::Pin::new(&mut self.0).poll_next(cx)
    }
}

/// The value a poll yielded, so that the item itself is dropped.
fn value(polled: Poll<Option<Fragile>>) -> Poll<Option<u64>> {
    polled.map(|item| item.map(|item| item.value()))
}

fn values(items: &[Fragile]) -> Vec<u64> {
    items.iter().map(Fragile::value).collect()
}

/// Polls `branch` once with `waker`, catching a panic; returns the value it
/// yields or the panic's message.
fn try_poll_with<S: Stream<Item = Fragile> + Unpin>(
    branch: &mut S,
    waker: &Waker,
) -> Result<Poll<Option<u64>>, String> {
    catch_unwind(AssertUnwindSafe(|| value(poll_with(branch, waker)))).map_err(panic_message)
}

/// [`try_poll_with`] a waker that does nothing.
fn try_poll<S: Stream<Item = Fragile> + Unpin>(
    branch: &mut S,
) -> Result<Poll<Option<u64>>, String> {
    try_poll_with(branch, noop_waker_ref())
}

fn poll_shared<S>(shared: &Shared<Branch<S>>, waker: &Waker) -> Poll<Option<u64>>
where
    S: Stream<Item = Fragile>,
{
    let mut slot = shared.lock().unwrap();
    value(poll_with(
        slot.as_mut().expect("the branch is there"),
        waker,
    ))
}

/// Polls `stream` once from the `tokio_test` task `task`.
fn poll<S: Stream + Unpin>(task: &mut Spawn<()>, stream: &mut S) -> Poll<Option<S::Item>> {
    task.enter(|cx, _| poll_with(stream, cx.waker()))
}

/// Reads `branch` to its end with a waker that does nothing; it must never
/// wait (the caller makes sure it has room).
fn read_to_end<S: Stream<Item = Fragile> + Unpin>(branch: &mut S) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match value(poll_once(branch)) {
            Poll::Ready(Some(value)) => got.push(value),
            Poll::Ready(None) => return got,
            Poll::Pending => panic!("the branch waited after {got:?}"),
        }
    }
}

fn two<T>(v: Vec<T>) -> [T; 2] {
    v.try_into().ok().expect("two branches")
}

fn three<T>(v: Vec<T>) -> [T; 3] {
    v.try_into().ok().expect("three branches")
}

fn four<T>(v: Vec<T>) -> [T; 4] {
    v.try_into().ok().expect("four branches")
}

// ---------------------------------------------------------------------------
// A panicking `Clone` leaves the fanout as it was.
// ---------------------------------------------------------------------------

/// A polls the upstream for item 2, pushes it, and its clone of it panics:
/// A gets the panic; B and C read every item; A, polled again, gets item 2
/// and the rest.
///
/// The upstream returns `Pending` after each of items 0, 1 and 2, so that
/// each of A's polls pulls one item (a poll of the upstream may pull a
/// batch, which a `Pending` ends) and A's third poll pulls item 2 alone.
/// Items 3 to 5 are pulled by B, in batches of the fanout's choosing.
#[test]
fn a_panicking_clone_of_a_pulled_item_reaches_the_poller_and_changes_nothing() {
    hang_guard(|| {
        let (tracker, traps) = (Tracker::new(), Traps::new());
        let script = [
            Some(0),
            None,
            Some(1),
            None,
            Some(2),
            None,
            Some(3),
            Some(4),
            Some(5),
        ];
        let [mut a, mut b, mut c] =
            three(scripted_fragile_stream(&tracker, &traps, &script).fanout(3, 8));

        assert_eq!(try_poll(&mut a), Ok(Poll::Ready(Some(0))));
        assert_eq!(try_poll(&mut a), Ok(Poll::Ready(Some(1))));
        traps.arm_clone(2);
        assert_eq!(
            try_poll(&mut a),
            Err(clone_boom(2)),
            "the clone's panic must reach the branch that asked for the item"
        );
        assert_eq!(
            (a.lag(), b.lag(), c.lag()),
            (1, 3, 3),
            "item 2 was pushed, and A has not read it"
        );
        assert_eq!(
            tracker.live(),
            3,
            "items 0 to 2 are buffered, no copy was made"
        );

        assert_eq!(read_to_end(&mut b), [0, 1, 2, 3, 4, 5]);
        assert_eq!(read_to_end(&mut c), [0, 1, 2, 3, 4, 5]);
        assert_eq!(
            read_to_end(&mut a),
            [2, 3, 4, 5],
            "A, polled again, gets the item whose clone panicked, then the rest"
        );
        drop((a, b, c));
        assert_eq!(tracker.live(), 0);
        assert_eq!(
            tracker.clones(),
            12,
            "two clones per item; the clone that panicked made none"
        );
    });
}

/// B reads a buffered item and its clone of it panics: B gets the panic;
/// its position and lag do not change; A and C read every item; B, polled
/// again, gets the item and the rest.
#[test]
fn a_panicking_clone_of_a_buffered_item_reaches_the_reader_and_changes_nothing() {
    hang_guard(|| {
        let (tracker, traps) = (Tracker::new(), Traps::new());
        let [mut a, mut b, mut c] = three(fragile_stream(&tracker, &traps, 6).fanout(3, 4));

        for item in 0..4 {
            assert_eq!(try_poll(&mut a), Ok(Poll::Ready(Some(item))));
        }
        assert_pending!(try_poll(&mut a).unwrap(), "the buffer is full");
        assert_eq!(try_poll(&mut b), Ok(Poll::Ready(Some(0))));
        traps.arm_clone(1);
        let lag = b.lag();
        assert_eq!(try_poll(&mut b), Err(clone_boom(1)));
        assert_eq!(b.lag(), lag, "B did not move");
        assert_eq!(
            tracker.live(),
            4,
            "items 0 to 3 are buffered, no copy was made"
        );

        // C's read of item 0, the last, frees room, and C pulls item 4.
        for item in 0..5 {
            assert_eq!(try_poll(&mut c), Ok(Poll::Ready(Some(item))));
        }
        assert_pending!(try_poll(&mut c).unwrap(), "B holds the buffer");
        assert_eq!(
            try_poll(&mut b),
            Ok(Poll::Ready(Some(1))),
            "B, polled again, gets the item whose clone panicked"
        );
        let got = collect_all([a, b, c]);
        assert_eq!(values(&got[0]), [4, 5]);
        assert_eq!(values(&got[1]), [2, 3, 4, 5]);
        assert_eq!(values(&got[2]), [5]);
        drop(got);
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 12);
    });
}

/// Random schedules of three branches, capacity 2, with the clone trap
/// re-armed after each panic: for the next item to be pulled, or for a
/// buffered one. Every branch yields every item in order; each panic names
/// the very item the polled branch was about to read; exactly the traps
/// that could fire fired; nothing leaks.
#[test]
fn random_schedules_with_panicking_clones_keep_every_branch_in_order() {
    const N: usize = 3;
    const ITEMS: u64 = 30;
    hang_guard(|| {
        // Traps armed for an item not pulled yet, and for a buffered one.
        let (mut pulled_arms, mut buffered_arms) = (0, 0);
        for seed in 0..40 {
            let (tracker, traps) = (Tracker::new(), Traps::new());
            let mut branches = fragile_stream(&tracker, &traps, ITEMS).fanout(N, 2);
            let mut progress = Progress::new(N, ITEMS, 20_000);
            let mut rng = Rng::new(seed);
            let (mut expected_panics, mut panics) = (0, 0);

            while progress.unfinished() {
                if !traps.clone_is_armed() && rng.percent(30) {
                    // An item not pulled yet: the first reader clones it (the
                    // poller, with two others to read it). A buffered item:
                    // it is cloned again if more than one branch has not
                    // read it yet (the last one takes it by move).
                    let (next, slowest) = (progress.fastest(), progress.slowest());
                    let value = if next > slowest && rng.percent(50) {
                        slowest + rng.below((next - slowest) as usize) as u64
                    } else {
                        next
                    };
                    let unread_by = progress.read.iter().filter(|&&read| read <= value).count();
                    if value < ITEMS && (value == next || unread_by > 1) {
                        traps.arm_clone(value);
                        expected_panics += 1;
                        if value == next {
                            pulled_arms += 1;
                        } else {
                            buffered_arms += 1;
                        }
                    }
                }
                let i = rng.below(N);
                if progress.ended[i] {
                    continue;
                }
                match try_poll(&mut branches[i]) {
                    Ok(Poll::Ready(Some(value))) => progress.item(i, value),
                    Ok(Poll::Ready(None)) => progress.end(i),
                    Ok(Poll::Pending) => {}
                    Err(message) => {
                        panics += 1;
                        assert_eq!(
                            message,
                            clone_boom(progress.read[i]),
                            "seed {seed}: branch {i} panicked on another item than its next"
                        );
                    }
                }
            }
            assert!(!traps.clone_is_armed(), "seed {seed}: a trap never fired");
            assert_eq!(panics, expected_panics, "seed {seed}");
            drop(branches);
            assert_eq!(tracker.live(), 0, "seed {seed}");
            assert_eq!(tracker.clones(), 2 * ITEMS as usize, "seed {seed}");
        }
        assert!(
            pulled_arms > 50 && buffered_arms > 50,
            "the schedules exercise both kinds of clone: {pulled_arms} pulled, {buffered_arms} buffered"
        );
    });
}

// ---------------------------------------------------------------------------
// A panicking `Clone` in the middle of a batch taken into a read-ahead.
// ---------------------------------------------------------------------------

/// The value of the item a `clone_boom` message names.
fn boom_value(message: &str) -> u64 {
    message
        .strip_prefix("clone of item ")
        .and_then(|rest| rest.strip_suffix(" panicked"))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("not a clone panic: {message:?}"))
}

/// Capacity 8, so that a branch takes a batch of several items. A reaches
/// a batch that starts with item 2, which only A has left to read (a move),
/// and goes on with item 3, which B has not read yet (a clone), and that
/// clone panics: A gets the panic, and the fanout stays consistent. A has
/// yielded nothing of the batch, its lag still counts items 2 and 3, and
/// every branch then reads every item, in order, once.
///
/// How C, A and B get there: C pulls items 0 and 1 and A reads them; C pulls
/// items 2 and 3; B, the last reader of items 0 and 1, moves them, and,
/// yielding the last item of that batch, takes a clone of item 2.
#[test]
fn a_panicking_clone_after_moves_in_a_batch_leaves_the_fanout_consistent() {
    hang_guard(|| {
        let (tracker, traps) = (Tracker::new(), Traps::new());
        let [mut a, mut b, mut c] = three(fragile_stream(&tracker, &traps, 4).fanout(3, 8));
        assert_eq!(try_poll(&mut c), Ok(Poll::Ready(Some(0))));
        assert_eq!(try_poll(&mut a), Ok(Poll::Ready(Some(0))));
        assert_eq!(try_poll(&mut a), Ok(Poll::Ready(Some(1))));
        assert_eq!(try_poll(&mut c), Ok(Poll::Ready(Some(1))));
        assert_eq!(try_poll(&mut c), Ok(Poll::Ready(Some(2))));
        assert_eq!(try_poll(&mut b), Ok(Poll::Ready(Some(0))));
        assert_eq!(try_poll(&mut b), Ok(Poll::Ready(Some(1))));
        assert_eq!((a.lag(), b.lag(), c.lag()), (2, 2, 1));

        traps.arm_clone(3);
        assert_eq!(try_poll(&mut a), Err(clone_boom(3)));
        assert_eq!(a.lag(), 2, "A has yielded neither item 2 nor item 3");
        let stats = a.stats();
        assert_eq!(
            tracker.live(),
            stats.buffered + stats.read_ahead,
            "every live item is counted: {stats:?}"
        );
        assert_eq!(read_to_end(&mut a), [2, 3]);
        assert_eq!(read_to_end(&mut b), [2, 3]);
        assert_eq!(read_to_end(&mut c), [3]);
        drop((a, b, c));
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 8, "two clones per item");
    });
}

/// A `Clone` that panics in the middle of a batch of clones must not make
/// the clones before it in vain: an item is cloned at most `n - 1` times.
/// (Whether the branch gets the panic at once or when it reaches the item
/// is the fanout's choice; it gets it once, and then every item in order.)
///
/// Capacity 8: A pulls items 0 and 1, and B takes a batch of clones of
/// both, whose second clone panics.
#[test]
fn a_panicking_clone_in_a_batch_makes_no_clone_in_vain() {
    hang_guard(|| {
        let (tracker, traps) = (Tracker::new(), Traps::new());
        let [mut a, mut b, mut c] = three(fragile_stream(&tracker, &traps, 2).fanout(3, 8));
        assert_eq!(try_poll(&mut a), Ok(Poll::Ready(Some(0))));
        traps.arm_clone(1);
        let mut got = Vec::new();
        let mut panics = 0;
        loop {
            match try_poll(&mut b) {
                Ok(Poll::Ready(Some(value))) => got.push(value),
                Ok(Poll::Ready(None)) => break,
                Ok(Poll::Pending) => panic!("B waited after {got:?}"),
                Err(message) => {
                    assert_eq!(message, clone_boom(1));
                    panics += 1;
                }
            }
        }
        assert_eq!((got, panics), (vec![0, 1], 1));
        assert_eq!(read_to_end(&mut a), [1]);
        assert_eq!(read_to_end(&mut c), [0, 1]);
        drop((a, b, c));
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 4, "at most n - 1 = 2 clones per item");
    });
}

/// As [`random_schedules_with_panicking_clones_keep_every_branch_in_order`],
/// with capacities that let the branches take batches into their
/// read-ahead, where a clone in the middle of a batch may panic: every
/// branch yields every item in order; each panic names an item the polled
/// branch has not yielded yet; every armed trap fires; at most `cap` items
/// are alive after every step; at most `n - 1` clones per item.
#[test]
fn random_schedules_with_panicking_clones_in_batches_keep_every_branch_in_order() {
    const N: usize = 3;
    const ITEMS: u64 = 60;
    hang_guard(|| {
        for cap in [8, 16] {
            for seed in 0..100 {
                let (tracker, traps) = (Tracker::new(), Traps::new());
                let mut branches = fragile_stream(&tracker, &traps, ITEMS).fanout(N, cap);
                let mut progress = Progress::new(N, ITEMS, 20_000);
                let mut rng = Rng::new(seed);
                let (mut armed, mut panics) = (0, 0);

                while progress.unfinished() {
                    if !traps.clone_is_armed() && rng.percent(30) {
                        // An item not pulled yet: with three branches it is
                        // cloned twice, by the poller for the buffer or by a
                        // branch that takes it into its read-ahead, whatever
                        // the batches. (Which buffered items are still to be
                        // cloned depends on the read-aheads.)
                        let value = branches[0].stats().pulled + rng.below(4) as u64;
                        if value < ITEMS {
                            traps.arm_clone(value);
                            armed += 1;
                        }
                    }
                    let i = rng.below(N);
                    if progress.ended[i] {
                        continue;
                    }
                    match try_poll(&mut branches[i]) {
                        Ok(Poll::Ready(Some(value))) => progress.item(i, value),
                        Ok(Poll::Ready(None)) => progress.end(i),
                        Ok(Poll::Pending) => {}
                        Err(message) => {
                            panics += 1;
                            assert!(
                                boom_value(&message) >= progress.read[i],
                                "cap {cap}, seed {seed}: branch {i} panicked on an item it has yielded"
                            );
                        }
                    }
                    let stats = branches[0].stats();
                    assert!(
                        tracker.live() <= cap && stats.buffered + stats.read_ahead <= cap,
                        "cap {cap}, seed {seed}: {} items alive: {stats:?}",
                        tracker.live()
                    );
                }
                assert!(
                    !traps.clone_is_armed(),
                    "cap {cap}, seed {seed}: a trap never fired"
                );
                assert_eq!(panics, armed, "cap {cap}, seed {seed}");
                drop(branches);
                assert_eq!(tracker.live(), 0, "cap {cap}, seed {seed}");
                assert_eq!(
                    tracker.clones(),
                    2 * ITEMS as usize,
                    "cap {cap}, seed {seed}"
                );
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Regressions: wake-ups lost when a panic unwinds past them.
// ---------------------------------------------------------------------------

/// F1. B waits for the upstream while A polls it (the upstream's hook polls
/// B, which must return `Pending`); the upstream yields item 0, and A's
/// clone of it panics. The item is buffered: B must be woken, and get it.
///
/// The upstream returns `Pending` after item 0, which ends A's batch at the
/// latest (a batch may be smaller), so that the upstream does not end in the
/// same poll: only the item pushed can wake B. A's poll polls the upstream
/// once or twice (item 0, then perhaps `Pending`), and the hook polls B each
/// time.
#[test]
fn f1_a_branch_waiting_for_the_upstream_is_woken_when_the_pollers_clone_panics() {
    hang_guard(|| {
        let (tracker, traps) = (Tracker::new(), Traps::new());
        let script = [Some(0), None, Some(1), Some(2)];
        let (upstream, hook) = Hooked::new(scripted_fragile_stream(&tracker, &traps, &script));
        let [mut a, b] = two(upstream.fanout(2, 4));
        let b = share(b);
        let b_flag = WakeFlag::new();
        let b_got = Arc::new(Mutex::new(Vec::new()));
        set_hook(&hook, {
            let (b, b_got, b_waker) = (Arc::clone(&b), Arc::clone(&b_got), b_flag.waker());
            move || b_got.lock().unwrap().push(poll_shared(&b, &b_waker))
        });

        traps.arm_clone(0);
        assert_eq!(try_poll(&mut a), Err(clone_boom(0)));
        clear_hook(&hook);
        let b_got = std::mem::take(&mut *b_got.lock().unwrap());
        assert!(
            (1..=2).contains(&b_got.len()) && b_got.iter().all(Poll::is_pending),
            "B, polled during each of A's polls of the upstream, must have waited: {b_got:?}"
        );
        assert!(
            b_flag.is_woken(),
            "F1: A pushed item 0 and its clone panicked; B, waiting for the upstream, was not woken"
        );
        assert_eq!(poll_shared(&b, noop_waker_ref()), Poll::Ready(Some(0)));
        assert_eq!(
            try_poll(&mut a),
            Ok(Poll::Ready(Some(0))),
            "A, polled again, gets the item whose clone panicked"
        );

        let got = collect_all([a, take(&b)]);
        assert_eq!(values(&got[0]), [1, 2]);
        assert_eq!(values(&got[1]), [1, 2]);
        drop(got);
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 3);
    });
}

/// F2. B waits for the upstream while A polls it (hook); the upstream ends,
/// A's poll drops it, and its `Drop` panics: A gets that panic. The end is
/// recorded: B must be woken, and get `None`.
///
/// The upstream yields items 0 and 1, then returns `Pending` (without a
/// wake-up) until the test opens it, and ends after that: so that the end
/// comes alone, in a later poll of A, with the hook set, whatever the size
/// of A's batches.
#[test]
fn f2_a_branch_waiting_for_the_upstream_is_woken_when_the_upstreams_drop_panics() {
    hang_guard(|| {
        let (tracker, traps) = (Tracker::new(), Traps::new());
        let open = Arc::new(AtomicBool::new(false));
        let (inner, upstream_dropped) =
            DropFlag::new(fragile_stream_ending_once_open(&tracker, &traps, 2, &open));
        let (upstream, hook) = Hooked::new(PanicOnDrop(inner));
        let [mut a, b] = two(upstream.fanout(2, 4));
        let b = share(b);

        for item in 0..2 {
            assert_eq!(try_poll(&mut a), Ok(Poll::Ready(Some(item))));
            assert_eq!(poll_shared(&b, noop_waker_ref()), Poll::Ready(Some(item)));
        }
        open.store(true, Ordering::SeqCst);
        let b_flag = WakeFlag::new();
        let b_got = Arc::new(Mutex::new(Vec::new()));
        set_hook(&hook, {
            let (b, b_got, b_waker) = (Arc::clone(&b), Arc::clone(&b_got), b_flag.waker());
            move || b_got.lock().unwrap().push(poll_shared(&b, &b_waker))
        });

        assert_eq!(
            try_poll(&mut a),
            Err(UPSTREAM_DROP_BOOM.to_string()),
            "A's poll ended the upstream and dropped it, and its drop panicked"
        );
        assert!(upstream_dropped.load(Ordering::SeqCst));
        assert_eq!(
            *b_got.lock().unwrap(),
            [Poll::Pending],
            "B, polled while A polled the upstream, must have waited"
        );
        assert!(
            b_flag.is_woken(),
            "F2: the upstream ended and its drop panicked; B, waiting for it, was not woken"
        );
        assert_eq!(poll_shared(&b, noop_waker_ref()), Poll::Ready(None));
        assert_eq!(try_poll(&mut a), Ok(Poll::Ready(None)));
        drop((a, b));
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 2);
    });
}

/// F5. A batch ends on `None` after items, and the upstream's `Drop` panics:
/// the poller gets the panic before it reads anything, so no item it pulled
/// is lost (they are in its read-ahead or buffered); it reads them all on
/// its next polls, as the other branch does.
///
/// The capacity leaves room for a batch of several items: the poller of an
/// empty buffer may pull that far ahead, here items 0 and 1 and the end, in
/// one poll.
#[test]
fn f5_a_panicking_upstream_drop_after_a_batch_loses_no_item_of_the_poller() {
    hang_guard(|| {
        let (tracker, traps) = (Tracker::new(), Traps::new());
        let [mut a, mut b] = two(PanicOnDrop(fragile_stream(&tracker, &traps, 2)).fanout(2, 64));
        assert_eq!(
            try_poll(&mut a),
            Err(UPSTREAM_DROP_BOOM.to_string()),
            "scenario: A's first poll pulls the batch 0, 1, end, which dropped the upstream, \
             and its drop panicked"
        );
        assert_eq!(a.lag(), 2, "A has read nothing yet");
        assert_eq!(b.lag(), 2, "B has read nothing yet");
        let stats = a.stats();
        assert!(stats.upstream_done);
        assert_eq!(
            tracker.live(),
            stats.buffered + stats.read_ahead,
            "every live item is counted: {stats:?}"
        );
        assert_eq!(read_to_end(&mut a), [0, 1]);
        assert_eq!(read_to_end(&mut b), [0, 1]);
        drop((a, b));
        assert_eq!(tracker.live(), 0);
    });
}

/// F3. Capacity 1: `fast` reads item 0 and waits for room. Dropping `slow`
/// releases item 0, whose `Drop` panics. The room is free all the same:
/// `fast` must be woken, and read item 1 and the rest.
#[test]
fn f3_a_branch_waiting_for_room_is_woken_when_a_released_items_drop_panics() {
    hang_guard(|| {
        let (tracker, traps) = (Tracker::new(), Traps::new());
        let [mut fast, slow] = two(fragile_stream(&tracker, &traps, 4).fanout(2, 1));
        let mut tf = spawn(());

        assert_eq!(value(poll(&mut tf, &mut fast)), Poll::Ready(Some(0)));
        assert_pending!(poll(&mut tf, &mut fast), "the buffer is full");
        traps.arm_drop(0);
        let dropped = catch_unwind(AssertUnwindSafe(|| drop(slow))).map_err(panic_message);
        assert_eq!(
            dropped,
            Err(drop_boom(0)),
            "dropping slow dropped item 0, whose drop panicked"
        );
        assert!(
            tf.is_woken(),
            "F3: slow's release freed room and item 0's drop panicked; fast, waiting for room, was not woken"
        );
        for item in 1..4 {
            assert_eq!(value(poll(&mut tf, &mut fast)), Poll::Ready(Some(item)));
        }
        assert_eq!(value(poll(&mut tf, &mut fast)), Poll::Ready(None));
        assert_eq!(
            tracker.live(),
            0,
            "item 0's copy was freed despite the panic"
        );
        assert_eq!(tracker.clones(), 1);
    });
}

/// The value or the gap a lossy branch yielded, so that the item is dropped.
fn lossy_value(polled: Poll<Option<Result<Fragile, Lagged>>>) -> Poll<Option<Result<u64, Lagged>>> {
    polled.map(|item| item.map(|item| item.map(|item| item.value())))
}

/// F4. Capacity 2: `tap`, lossy, alone holds the oldest slot (item 0) of the
/// full buffer when `main` polls at the end: `main` evicts item 0 before it
/// polls the upstream, and item 0's `Drop` panics. First, that drop polls
/// `d`, also at the end, which must wait for room: `slow`, with
/// backpressure, holds the next slot (item 1), and item 0 counts until it is
/// gone. The panic reaches `main`; the upstream is left in place, not marked
/// as panicked; and `d` is woken once item 0 is gone, despite the panic. `d`
/// polls the upstream itself and gets item 2, and every branch then reads
/// the rest normally, `tap` after reporting the item it missed.
#[test]
fn f4_a_panicking_drop_of_an_evicted_item_reaches_the_poller_and_leaves_the_upstream() {
    hang_guard(|| {
        let (tracker, traps) = (Tracker::new(), Traps::new());
        let [mut main, tap, mut slow, d] = four(fragile_stream(&tracker, &traps, 6).fanout(4, 2));
        let mut tap = tap.into_lossy();
        let d = share(d);

        for item in 0..2 {
            assert_eq!(try_poll(&mut main), Ok(Poll::Ready(Some(item))));
        }
        assert_eq!(try_poll(&mut slow), Ok(Poll::Ready(Some(0))));
        for item in 0..2 {
            assert_eq!(poll_shared(&d, noop_waker_ref()), Poll::Ready(Some(item)));
        }
        let stats = main.stats();
        assert_eq!(
            (stats.buffered, stats.read_ahead, stats.pulled),
            (2, 0, 2),
            "the buffer is full: {stats:?}"
        );
        assert_eq!(
            (main.lag(), slow.lag(), tap.lag()),
            (0, 1, 2),
            "only tap, lossy, holds the oldest slot; slow holds the next one"
        );

        let d_flag = WakeFlag::new();
        let d_got = Arc::new(Mutex::new(Vec::new()));
        traps.arm_drop_with(0, {
            let (d, d_got, d_waker) = (Arc::clone(&d), Arc::clone(&d_got), d_flag.waker());
            move || d_got.lock().unwrap().push(poll_shared(&d, &d_waker))
        });
        assert_eq!(
            try_poll(&mut main),
            Err(drop_boom(0)),
            "main evicted item 0, whose drop panicked: the panic must reach main"
        );
        assert_eq!(
            *d_got.lock().unwrap(),
            [Poll::Pending],
            "d, polled while item 0 was being dropped, must have waited for room"
        );
        assert!(
            d_flag.is_woken(),
            "F4: the evicted item's drop panicked, and once it was gone, d, waiting for room, was not woken"
        );
        let stats = main.stats();
        assert!(!stats.upstream_done);
        assert_eq!(entry(&stats, tap.id()).missed, 1, "tap gave up item 0");
        assert_eq!(
            (stats.buffered, stats.pulled, tap.lag()),
            (1, 2, 1),
            "item 1 is left, for slow and tap; the upstream was not polled"
        );
        assert_eq!(
            tracker.live(),
            1,
            "item 0 was freed despite the panic; item 1 is buffered"
        );

        // The upstream is not marked as panicked: d, woken, polls it.
        assert_eq!(poll_shared(&d, noop_waker_ref()), Poll::Ready(Some(2)));
        assert_eq!(try_poll(&mut main), Ok(Poll::Ready(Some(2))));
        assert_eq!(
            lossy_value(poll_once(&mut tap)),
            Poll::Ready(Some(Err(Lagged(1))))
        );
        for item in 1..3 {
            assert_eq!(
                lossy_value(poll_once(&mut tap)),
                Poll::Ready(Some(Ok(item)))
            );
            assert_eq!(try_poll(&mut slow), Ok(Poll::Ready(Some(item))));
        }
        for item in 3..6 {
            assert_eq!(try_poll(&mut main), Ok(Poll::Ready(Some(item))));
            assert_eq!(poll_shared(&d, noop_waker_ref()), Poll::Ready(Some(item)));
            assert_eq!(try_poll(&mut slow), Ok(Poll::Ready(Some(item))));
            assert_eq!(
                lossy_value(poll_once(&mut tap)),
                Poll::Ready(Some(Ok(item)))
            );
        }
        assert_eq!(try_poll(&mut main), Ok(Poll::Ready(None)));
        assert_eq!(poll_shared(&d, noop_waker_ref()), Poll::Ready(None));
        assert_eq!(try_poll(&mut slow), Ok(Poll::Ready(None)));
        assert_eq!(lossy_value(poll_once(&mut tap)), Poll::Ready(None));
        assert!(main.stats().upstream_done);
        drop((main, tap, slow, d));
        assert_eq!(tracker.live(), 0);
        assert_eq!(
            tracker.clones(),
            18,
            "three clones per item: item 0 for main, slow and d (the eviction moved it), \
             every other item for all but its last reader, which moves it"
        );
    });
}

/// Four branches wait for room; one of their wakers panics when woken.
/// Dropping the slowest branch frees room and wakes them: the panic reaches
/// the drop, and the other three waiters are woken all the same (a waker
/// taken out of the list is woken even when another one panics), then read
/// every item.
#[test]
fn a_panicking_waker_does_not_keep_the_other_room_waiters_from_being_woken() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let mut branches = tracker.stream(4).fanout(5, 1);
        let slow = branches.pop().unwrap();
        let flags: Vec<_> = (0..4).map(|_| WakeFlag::new()).collect();

        for (i, branch) in branches.iter_mut().enumerate() {
            assert_eq!(
                poll_once(branch).map(|item| item.map(|item| item.value)),
                Poll::Ready(Some(0))
            );
            // The second of the four, in the order they wait, panics.
            let waker = if i == 1 {
                CallbackWaker::on_wake(|| panic!("waker boom"))
            } else {
                flags[i].waker()
            };
            assert!(poll_with(branch, &waker).is_pending(), "the buffer is full");
        }

        let dropped = catch_unwind(AssertUnwindSafe(|| drop(slow))).map_err(panic_message);
        assert_eq!(dropped, Err("waker boom".to_string()));
        for i in [0, 2, 3] {
            assert!(
                flags[i].is_woken(),
                "waiter {i} was not woken: the panic of waiter 1's waker lost its wake-up"
            );
        }

        let got = collect_all(branches);
        for (i, items) in got.iter().enumerate() {
            assert_eq!(support::values(items), [1, 2, 3], "waiter {i}");
        }
        drop(got);
        assert_eq!(tracker.live(), 0);
        // Item 0 was cloned for the four waiters, and its original dropped
        // with `slow`; items 1 to 3, three clones each for four branches.
        assert_eq!(tracker.clones(), 4 + 3 * 3);
    });
}
