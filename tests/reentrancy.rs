//! Re-entrancy: wakers that poll or drop branches of their own fanout when
//! they are woken *or dropped*, and upstreams that do so from inside their
//! `poll_next` (the idea of tokio's `send_in_waker_drop` test).
//!
//! The fanout wakes and drops wakers only after its locks are released, so
//! none of this may deadlock or panic, and afterwards the fanout must keep
//! its semantics: the surviving branches get every item, in order, and no
//! item leaks. Every test runs under a hang guard, which fails it if it
//! does not finish (a deadlock); the guard is never a timing assertion.
//!
//! Branches that an action polls or drops live in a `Shared` slot, an
//! `Arc<Mutex<Option<Branch>>>`; the test never holds a slot's mutex while
//! it polls a branch whose wakers could lock the same slot.

mod support;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use fanout::{Branch, StreamExt as _};
use futures::channel::mpsc;
use futures::task::noop_waker_ref;
use futures::{stream, Stream};
use tokio_test::assert_pending;
use tokio_test::task::{spawn, Spawn};

use support::{
    clear_hook, collect_all, hang_guard, poll_once, poll_with, set_hook, share, take, values,
    CallbackWaker, DropFlag, Hooked, Shared, Tracked, Tracker, WakeFlag,
};

/// What the actions of a test saw, in order.
type Seen<T> = Arc<Mutex<Vec<T>>>;

fn is_gone<B>(shared: &Shared<B>) -> bool {
    shared.lock().unwrap().is_none()
}

/// The value a poll yielded, so that the tracked item itself is dropped.
fn value(polled: Poll<Option<Tracked>>) -> Poll<Option<u64>> {
    polled.map(|item| item.map(|item| item.value))
}

/// Polls the shared branch once with `waker`.
fn poll_shared<S>(shared: &Shared<Branch<S>>, waker: &Waker) -> Poll<Option<u64>>
where
    S: Stream<Item = Tracked>,
{
    let mut slot = shared.lock().unwrap();
    let branch = slot.as_mut().expect("the branch is still there");
    value(poll_with(branch, waker))
}

/// Polls `stream` once from the `tokio_test` task `task`.
fn poll<S: Stream + Unpin>(task: &mut Spawn<()>, stream: &mut S) -> Poll<Option<S::Item>> {
    task.enter(|cx, _| poll_with(stream, cx.waker()))
}

fn record<T>(seen: &Seen<T>, what: T) {
    seen.lock().unwrap().push(what);
}

fn seen<T>() -> Seen<T> {
    Arc::default()
}

fn two<T>(v: Vec<T>) -> [T; 2] {
    v.try_into().ok().expect("two branches")
}

fn three<T>(v: Vec<T>) -> [T; 3] {
    v.try_into().ok().expect("three branches")
}

/// Sends the tracked items `values` on `tx`.
fn send(tx: &mpsc::UnboundedSender<Tracked>, tracker: &Arc<Tracker>, values: &[u64]) {
    for &value in values {
        tx.unbounded_send(tracker.item(value)).unwrap();
    }
}

// ---------------------------------------------------------------------------
// A waker whose drop polls a branch: it is replaced by a newer waker.
// ---------------------------------------------------------------------------

/// `fast` waits for room with a waker whose drop polls `slow`; `fast` is
/// polled again from a new task, so the fanout replaces the old waker and
/// drops it. The drop polls `slow`, which reads the oldest item and frees
/// room: the new waker, registered just before, must be woken.
#[test]
fn a_replaced_waker_whose_drop_polls_a_branch_while_waiting_for_room() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let [mut fast, slow] = two(tracker.stream(6).fanout(2, 2));
        let slow = share(slow);
        let slow_got = seen();

        assert_eq!(value(poll_once(&mut fast)), Poll::Ready(Some(0)));
        assert_eq!(value(poll_once(&mut fast)), Poll::Ready(Some(1)));
        let old = CallbackWaker::on_drop({
            let (slow, slow_got) = (Arc::clone(&slow), Arc::clone(&slow_got));
            move || record(&slow_got, poll_shared(&slow, noop_waker_ref()))
        });
        assert_pending!(poll_with(&mut fast, &old), "the buffer is full");
        drop(old);
        assert!(
            slow_got.lock().unwrap().is_empty(),
            "the fanout holds the old waker until it is replaced"
        );

        let mut task = spawn(());
        assert_pending!(
            poll(&mut task, &mut fast),
            "the buffer is still full when the new waker is registered"
        );
        assert_eq!(
            *slow_got.lock().unwrap(),
            [Poll::Ready(Some(0))],
            "the replaced waker must have been dropped, and its poll of `slow` must read item 0"
        );
        assert!(
            task.is_woken(),
            "slow's read, inside the old waker's drop, freed room: the new waker must be woken"
        );
        assert_eq!(value(poll(&mut task, &mut fast)), Poll::Ready(Some(2)));

        let got = collect_all([fast, take(&slow)]);
        assert_eq!(values(&got[0]), [3, 4, 5]);
        assert_eq!(values(&got[1]), [1, 2, 3, 4, 5]);
        drop(got);
        assert_eq!(tracker.live(), 0);
        assert_eq!(
            tracker.clones(),
            6,
            "each item cloned once for two branches"
        );
    });
}

/// A waits on an empty channel with a waker whose drop polls B; A is polled
/// again from a new task, so the old waker is replaced and dropped, and B,
/// polled from inside that drop, waits on the channel too. An item then
/// wakes both, and both read it.
#[test]
fn a_replaced_waker_whose_drop_polls_a_branch_while_waiting_on_the_upstream() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let (tx, rx) = mpsc::unbounded();
        let [mut a, b] = two(rx.fanout(2, 4));
        let b = share(b);
        let b_flag = WakeFlag::new();
        let b_got = seen();

        let old = CallbackWaker::on_drop({
            let (b, b_got, b_waker) = (Arc::clone(&b), Arc::clone(&b_got), b_flag.waker());
            move || record(&b_got, poll_shared(&b, &b_waker))
        });
        assert_pending!(poll_with(&mut a, &old), "the channel is empty");
        drop(old);
        assert!(b_got.lock().unwrap().is_empty());

        let mut ta = spawn(());
        assert_pending!(poll(&mut ta, &mut a));
        assert_eq!(
            *b_got.lock().unwrap(),
            [Poll::Pending],
            "the replaced waker must have been dropped, and B, polled on its drop, must wait"
        );
        assert!(!ta.is_woken() && !b_flag.is_woken(), "nothing arrived yet");

        send(&tx, &tracker, &[0]);
        assert!(ta.is_woken(), "A's new waker was not woken by the item");
        assert!(
            b_flag.is_woken(),
            "B, which started waiting inside a dropped waker, was not woken by the item"
        );
        assert_eq!(value(poll(&mut ta, &mut a)), Poll::Ready(Some(0)));
        let mut b = take(&b);
        assert_eq!(value(poll_once(&mut b)), Poll::Ready(Some(0)));

        send(&tx, &tracker, &[1, 2, 3]);
        drop(tx);
        let got = collect_all([a, b]);
        assert_eq!(values(&got[0]), [1, 2, 3]);
        assert_eq!(values(&got[1]), [1, 2, 3]);
        drop(got);
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 4);
    });
}

// ---------------------------------------------------------------------------
// A waker whose drop drops a branch: its own branch is dropped (release).
// ---------------------------------------------------------------------------

/// `fast` waits for room with a waker whose drop drops `slow`; dropping
/// `fast` drops its waker, which drops `slow` from inside `fast`'s release.
/// `mid`, the survivor, reads everything.
#[test]
fn dropping_a_branch_drops_its_waker_which_drops_another_branch_room() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let [mut fast, mut mid, slow] = three(tracker.stream(6).fanout(3, 2));
        let slow = share(slow);

        assert_eq!(value(poll_once(&mut fast)), Poll::Ready(Some(0)));
        assert_eq!(value(poll_once(&mut fast)), Poll::Ready(Some(1)));
        let waker = CallbackWaker::on_drop({
            let slow = Arc::clone(&slow);
            move || drop(take(&slow))
        });
        assert_pending!(poll_with(&mut fast, &waker), "the buffer is full");
        drop(waker);
        assert_eq!(value(poll_once(&mut mid)), Poll::Ready(Some(0)));
        assert_eq!(tracker.live(), 2, "items 0 and 1 are buffered for slow");

        drop(fast);
        assert!(
            is_gone(&slow),
            "dropping fast must drop its waker, which drops slow"
        );
        assert_eq!(
            tracker.live(),
            1,
            "slow's release freed item 0; item 1 waits for mid"
        );

        let got = collect_all([mid]);
        assert_eq!(values(&got[0]), [1, 2, 3, 4, 5]);
        drop(got);
        assert_eq!(tracker.live(), 0);
        // Item 0 cloned for fast and mid, item 1 for fast; mid reads the
        // rest alone, by move.
        assert_eq!(tracker.clones(), 3);
    });
}

/// A waits on an empty channel with a waker whose drop drops C; dropping A
/// drops C. B, waiting on the channel as well, is still woken by every item
/// and reads them all.
#[test]
fn dropping_a_branch_drops_its_waker_which_drops_another_branch_upstream() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let (tx, rx) = mpsc::unbounded();
        let [mut a, mut b, c] = three(rx.fanout(3, 4));
        let c = share(c);

        let waker = CallbackWaker::on_drop({
            let c = Arc::clone(&c);
            move || drop(take(&c))
        });
        assert_pending!(poll_with(&mut a, &waker));
        drop(waker);
        let mut tb = spawn(());
        assert_pending!(poll(&mut tb, &mut b));

        drop(a);
        assert!(is_gone(&c), "dropping A must drop its waker, which drops C");

        for item in 0..3 {
            send(&tx, &tracker, &[item]);
            assert!(tb.is_woken(), "B was not woken by item {item}");
            assert_eq!(value(poll(&mut tb, &mut b)), Poll::Ready(Some(item)));
            assert_pending!(poll(&mut tb, &mut b));
        }
        drop(tx);
        assert!(tb.is_woken(), "B was not woken by the end");
        assert_eq!(value(poll(&mut tb, &mut b)), Poll::Ready(None));
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 0, "B reads alone, by move");
    });
}

// ---------------------------------------------------------------------------
// Wakers whose drop polls and drops branches while the fanout is torn down.
// ---------------------------------------------------------------------------

/// The test drops every branch it holds: A, then B. A's waker, dropped by
/// A's release, polls B; B re-registers, which drops B's old waker; that one
/// owns C (only the fanout's waiter list reached it), polls it and drops
/// it. Then B, the last branch, is dropped, and with it the upstream.
#[test]
fn wakers_whose_drop_polls_and_drops_branches_while_the_whole_fanout_is_dropped() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let (tx, rx) = mpsc::unbounded();
        let (upstream, upstream_dropped) = DropFlag::new(rx);
        let [mut a, mut b, c] = three(upstream.fanout(3, 4));
        send(&tx, &tracker, &[0]);

        let c_got = seen();
        let b_old = CallbackWaker::on_drop({
            let c_got = Arc::clone(&c_got);
            let mut c = c;
            move || {
                record(&c_got, value(poll_once(&mut c)));
                drop(c);
            }
        });
        assert_eq!(value(poll_once(&mut b)), Poll::Ready(Some(0)));
        assert_pending!(poll_with(&mut b, &b_old));
        drop(b_old);

        let b = share(b);
        let b_got = seen();
        let a_waker = CallbackWaker::on_drop({
            let (b, b_got) = (Arc::clone(&b), Arc::clone(&b_got));
            move || record(&b_got, poll_shared(&b, noop_waker_ref()))
        });
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(0)));
        assert_pending!(poll_with(&mut a, &a_waker));
        drop(a_waker);
        assert_eq!(tracker.live(), 1, "item 0 is buffered for C");

        drop(a);
        assert_eq!(
            *b_got.lock().unwrap(),
            [Poll::Pending],
            "A's waker, dropped with A, must have polled B"
        );
        assert_eq!(
            *c_got.lock().unwrap(),
            [Poll::Ready(Some(0))],
            "B's replaced waker, dropped inside that poll, must have polled C"
        );
        assert_eq!(tracker.live(), 0, "C read item 0, and was dropped");
        assert!(!upstream_dropped.load(Ordering::SeqCst), "B is alive");

        drop(take(&b));
        assert!(
            upstream_dropped.load(Ordering::SeqCst),
            "the last branch is gone: the upstream must be dropped"
        );
        let unsent = tx.unbounded_send(tracker.item(1)).unwrap_err();
        assert!(unsent.is_disconnected(), "the receiver must be gone");
        drop(unsent);
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 2);
    });
}

// ---------------------------------------------------------------------------
// Wakers that poll or drop branches when woken.
// ---------------------------------------------------------------------------

/// `fast` waits for room; `slow`'s read frees it and wakes `fast`'s waker,
/// which polls `fast` itself (which pulls the next item) and `other`.
#[test]
fn a_waker_woken_by_freed_room_polls_its_own_branch_and_another() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let [fast, other, mut slow] = three(tracker.stream(6).fanout(3, 2));
        let (fast, other) = (share(fast), share(other));
        let woken_got = seen();

        let noop = noop_waker_ref();
        assert_eq!(poll_shared(&fast, noop), Poll::Ready(Some(0)));
        assert_eq!(poll_shared(&fast, noop), Poll::Ready(Some(1)));
        assert_eq!(poll_shared(&other, noop), Poll::Ready(Some(0)));
        let waker = CallbackWaker::on_wake({
            let (fast, other, got) = (
                Arc::clone(&fast),
                Arc::clone(&other),
                Arc::clone(&woken_got),
            );
            move || {
                let from_fast = poll_shared(&fast, noop_waker_ref());
                let from_other = poll_shared(&other, noop_waker_ref());
                record(&got, (from_fast, from_other));
            }
        });
        assert_pending!(poll_shared(&fast, &waker), "the buffer is full");
        drop(waker);

        assert_eq!(value(poll_once(&mut slow)), Poll::Ready(Some(0)));
        assert_eq!(
            *woken_got.lock().unwrap(),
            [(Poll::Ready(Some(2)), Poll::Ready(Some(1)))],
            "fast's waker must have run, fast pulled item 2 and other read item 1"
        );

        let got = collect_all([take(&fast), take(&other), slow]);
        assert_eq!(values(&got[0]), [3, 4, 5]);
        assert_eq!(values(&got[1]), [2, 3, 4, 5]);
        assert_eq!(values(&got[2]), [1, 2, 3, 4, 5]);
        drop(got);
        assert_eq!(tracker.live(), 0);
        assert_eq!(
            tracker.clones(),
            12,
            "each item cloned twice for three branches"
        );
    });
}

/// Capacity 16: `fast` is `cap` items ahead and waits for room; `slow`
/// takes a batch into its read-ahead. When `slow` yields the last item of
/// it, its reservation is released, which wakes `fast`'s waker, inside
/// `slow`'s poll: the waker polls `fast` (which pulls the next item), takes
/// a snapshot of the stats, and drops `fast`. No lock is held: none of this
/// deadlocks, and `slow` then reads every item alone.
#[test]
fn a_waker_woken_by_a_released_read_ahead_polls_and_drops_its_branch() {
    const CAP: usize = 16;
    const ITEMS: u64 = 40;
    hang_guard(|| {
        let tracker = Tracker::new();
        let [fast, mut slow] = two(tracker.stream(ITEMS).fanout(2, CAP));
        let fast = share(fast);
        let woken_got = seen();

        for item in 0..CAP as u64 {
            assert_eq!(
                poll_shared(&fast, noop_waker_ref()),
                Poll::Ready(Some(item))
            );
        }
        let waker = CallbackWaker::on_wake({
            let (fast, got) = (Arc::clone(&fast), Arc::clone(&woken_got));
            move || {
                let polled = poll_shared(&fast, noop_waker_ref());
                let stats = fast
                    .lock()
                    .unwrap()
                    .as_ref()
                    .expect("fast is there")
                    .stats();
                drop(take(&fast));
                record(&got, (polled, stats));
            }
        });
        assert_pending!(poll_shared(&fast, &waker), "fast is `cap` items ahead");
        drop(waker);

        assert_eq!(value(poll_once(&mut slow)), Poll::Ready(Some(0)));
        let held = slow.stats().read_ahead as u64;
        assert!(held >= 1, "scenario: slow took a batch into its read-ahead");
        for item in 1..=held {
            assert!(
                woken_got.lock().unwrap().is_empty(),
                "fast's waker ran before slow yielded its read-ahead"
            );
            assert_eq!(value(poll_once(&mut slow)), Poll::Ready(Some(item)));
        }
        let got = std::mem::take(&mut *woken_got.lock().unwrap());
        let [(polled, stats)]: [_; 1] = got.try_into().unwrap_or_else(|got: Vec<_>| {
            panic!(
                "slow yielded its read-ahead: fast's waker must have run once, ran {} times",
                got.len()
            )
        });
        assert_eq!(
            polled,
            Poll::Ready(Some(CAP as u64)),
            "fast pulled its next item"
        );
        assert!(stats.buffered + stats.read_ahead <= CAP, "{stats:?}");
        assert!(is_gone(&fast));

        let rest: Vec<_> = collect_all([slow]).remove(0);
        assert_eq!(values(&rest), (held + 1..ITEMS).collect::<Vec<_>>());
        drop(rest);
        assert_eq!(tracker.live(), 0);
    });
}

/// A waits on the channel; an item wakes A's waker, which polls A itself
/// (which pulls the item from the channel, inside the channel's wake-up)
/// and B, which waits on the channel as well.
#[test]
fn a_waker_woken_by_the_upstream_polls_its_own_branch_and_another() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let (tx, rx) = mpsc::unbounded();
        let [a, b, c] = three(rx.fanout(3, 4));
        let (a, b) = (share(a), share(b));
        let b_flag = WakeFlag::new();
        let woken_got = seen();

        let waker = CallbackWaker::on_wake({
            let (a, b, got) = (Arc::clone(&a), Arc::clone(&b), Arc::clone(&woken_got));
            move || {
                let from_a = poll_shared(&a, noop_waker_ref());
                let from_b = poll_shared(&b, noop_waker_ref());
                record(&got, (from_a, from_b));
            }
        });
        assert_pending!(poll_shared(&a, &waker));
        drop(waker);
        assert_pending!(poll_shared(&b, &b_flag.waker()));

        send(&tx, &tracker, &[0]);
        assert_eq!(
            *woken_got.lock().unwrap(),
            [(Poll::Ready(Some(0)), Poll::Ready(Some(0)))],
            "A's waker must have run, and A and B read item 0"
        );
        assert!(b_flag.is_woken(), "B waited on the channel as well");

        send(&tx, &tracker, &[1, 2]);
        drop(tx);
        let got = collect_all([take(&a), take(&b), c]);
        assert_eq!(values(&got[0]), [1, 2]);
        assert_eq!(values(&got[1]), [1, 2]);
        assert_eq!(values(&got[2]), [0, 1, 2]);
        drop(got);
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 6);
    });
}

/// `fast` waits for room; dropping `slow` frees it and wakes `fast`'s
/// waker, which drops `other`, the last branch but `fast`. `fast` then
/// reads the rest alone, never waiting, and nothing stays buffered.
#[test]
fn a_waker_woken_by_freed_room_drops_the_last_other_branch() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let [mut fast, slow, other] = three(tracker.stream(5).fanout(3, 2));
        let other = share(other);

        assert_eq!(poll_shared(&other, noop_waker_ref()), Poll::Ready(Some(0)));
        assert_eq!(value(poll_once(&mut fast)), Poll::Ready(Some(0)));
        assert_eq!(value(poll_once(&mut fast)), Poll::Ready(Some(1)));
        let waker = CallbackWaker::on_wake({
            let other = Arc::clone(&other);
            move || drop(take(&other))
        });
        assert_pending!(poll_with(&mut fast, &waker), "the buffer is full");
        drop(waker);

        drop(slow);
        assert!(
            is_gone(&other),
            "fast's waker, woken by slow's release, must have dropped other"
        );
        assert_eq!(
            tracker.live(),
            0,
            "fast has read items 0 and 1, and their other readers are gone"
        );
        for item in 2..5 {
            assert_eq!(
                value(poll_once(&mut fast)),
                Poll::Ready(Some(item)),
                "the last branch standing never waits"
            );
        }
        assert_eq!(value(poll_once(&mut fast)), Poll::Ready(None));
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 3);
    });
}

/// A and B wait on the channel; an item wakes both, and A's waker drops B,
/// the last other branch. A then reads every item alone.
#[test]
fn a_waker_woken_by_the_upstream_drops_the_last_other_branch() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let (tx, rx) = mpsc::unbounded();
        let [mut a, b] = two(rx.fanout(2, 4));
        let b = share(b);
        let b_flag = WakeFlag::new();

        let waker = CallbackWaker::on_wake({
            let b = Arc::clone(&b);
            move || drop(take(&b))
        });
        assert_pending!(poll_with(&mut a, &waker));
        drop(waker);
        assert_pending!(poll_shared(&b, &b_flag.waker()));

        send(&tx, &tracker, &[0]);
        assert!(
            is_gone(&b),
            "A's waker, woken by the item, must have dropped B"
        );
        assert!(b_flag.is_woken(), "B waited on the channel as well");
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(0)));

        send(&tx, &tracker, &[1, 2]);
        drop(tx);
        let got = collect_all([a]);
        assert_eq!(values(&got[0]), [1, 2]);
        drop(got);
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 0, "A reads alone, by move");
    });
}

// ---------------------------------------------------------------------------
// Re-entry through the fanout's own upstream waker.
// ---------------------------------------------------------------------------

/// An upstream that wakes the waker it is polled with from inside
/// `poll_next`, in phases that the test starts ([`SelfWaking::start`]):
///
/// 1. (from the start) it returns `Pending`;
/// 2. it wakes, then yields item 0, then returns `Pending` without waking;
/// 3. it wakes, then returns `Pending` (a cooperative yield); then it yields
///    item 1, then ends.
///
/// A branch that polls the upstream may poll it again while it yields items
/// (a batch, of a size that is the fanout's business): the `Pending` after
/// item 0 ends such a batch, and phase 3 waits for the test, so that the
/// cooperative yield comes alone, in a poll of its own, whatever the size
/// of the batches.
fn self_waking_upstream(
    tracker: &Arc<Tracker>,
) -> (impl Stream<Item = Tracked> + Send + Unpin, SelfWaking) {
    let tracker = Arc::clone(tracker);
    let phase = SelfWaking(Arc::new(AtomicUsize::new(1)));
    let step = SelfWaking(Arc::clone(&phase.0));
    let upstream =
        stream::poll_fn(
            move |cx: &mut Context<'_>| match step.0.load(Ordering::SeqCst) {
                2 => {
                    step.0.store(WAIT_FOR_PHASE_3, Ordering::SeqCst);
                    cx.waker().wake_by_ref();
                    Poll::Ready(Some(tracker.item(0)))
                }
                3 => {
                    step.0.store(ITEM_1, Ordering::SeqCst);
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                ITEM_1 => {
                    step.0.store(END, Ordering::SeqCst);
                    Poll::Ready(Some(tracker.item(1)))
                }
                END => Poll::Ready(None),
                _ => Poll::Pending,
            },
        );
    (upstream, phase)
}

/// The phases of [`self_waking_upstream`] after the ones the test starts.
const WAIT_FOR_PHASE_3: usize = 20;
const ITEM_1: usize = 30;
const END: usize = 40;

/// Starts the phases of a [`self_waking_upstream`].
struct SelfWaking(Arc<AtomicUsize>);

impl SelfWaking {
    fn start(&self, phase: usize) {
        self.0.store(phase, Ordering::SeqCst);
    }
}

/// The upstream wakes the fanout's waker synchronously from inside A's
/// poll; that wakes B's waker, which polls B and C while A is still inside
/// the upstream: both must wait, not deadlock, and be woken by the item A
/// then pushes. Later the upstream's self-wake during A's poll runs A's own
/// waker, which polls C, which polls the upstream again and gets item 1.
#[test]
fn an_upstream_that_wakes_itself_runs_wakers_that_poll_branches() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let (upstream, phases) = self_waking_upstream(&tracker);
        let [mut a, b, c] = three(upstream.fanout(3, 4));
        let (b, c) = (share(b), share(c));
        let (b_flag, c_flag) = (WakeFlag::new(), WakeFlag::new());
        let woken_got = seen();

        // Phase 1: B waits on the upstream, with a waker that polls B and C.
        let b_waker = CallbackWaker::on_wake({
            let (b, c, got) = (Arc::clone(&b), Arc::clone(&c), Arc::clone(&woken_got));
            let (b_waker, c_waker) = (b_flag.waker(), c_flag.waker());
            move || {
                let from_b = poll_shared(&b, &b_waker);
                let from_c = poll_shared(&c, &c_waker);
                record(&got, (from_b, from_c));
            }
        });
        assert_pending!(poll_shared(&b, &b_waker));
        drop(b_waker);

        // Phase 2, polled by A: the upstream's wake-up runs B's waker, inside
        // A's poll of the upstream.
        phases.start(2);
        let mut ta = spawn(());
        assert_eq!(value(poll(&mut ta, &mut a)), Poll::Ready(Some(0)));
        assert_eq!(
            *woken_got.lock().unwrap(),
            [(Poll::Pending, Poll::Pending)],
            "B's waker must have run inside A's poll, and B and C must wait for it"
        );
        assert!(b_flag.is_woken(), "B waited for the item A pushed");
        assert!(c_flag.is_woken(), "C waited for the item A pushed");
        assert_eq!(poll_shared(&b, noop_waker_ref()), Poll::Ready(Some(0)));
        assert_eq!(poll_shared(&c, noop_waker_ref()), Poll::Ready(Some(0)));

        // Phase 3, polled by A: a cooperative yield wakes A's own waker,
        // which polls C; C polls the upstream and gets item 1.
        phases.start(3);
        let c_got = seen();
        let a_waker = CallbackWaker::on_wake({
            let (c, c_got) = (Arc::clone(&c), Arc::clone(&c_got));
            move || record(&c_got, poll_shared(&c, noop_waker_ref()))
        });
        assert_pending!(poll_with(&mut a, &a_waker));
        drop(a_waker);
        assert_eq!(
            *c_got.lock().unwrap(),
            [Poll::Ready(Some(1))],
            "the upstream woke during A's poll: A's waker must have run and C pulled item 1"
        );

        let got = collect_all([a, take(&b), take(&c)]);
        assert_eq!(values(&got[0]), [1]);
        assert_eq!(values(&got[1]), [1]);
        assert_eq!(values(&got[2]), [] as [u64; 0]);
        drop(got);
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.clones(), 4);
    });
}

// ---------------------------------------------------------------------------
// An upstream whose `poll_next` polls and drops branches of its own fanout.
// ---------------------------------------------------------------------------

/// Wraps a stream, and passes on only as many items as the test allows
/// ([`Ration::allow`]): once it has passed them, it returns `Pending`
/// without polling the stream or waking, until the test allows more.
///
/// A branch that polls the upstream may poll it again while it yields items
/// (a batch): the ration ends the batch, so that each of the branch's polls
/// pulls exactly the items the test allowed, and polls the wrapped stream
/// once per item. The ration never runs out at the start of a branch's
/// poll of the upstream, so no branch waits for it.
struct Rationed<S> {
    inner: S,
    passed: usize,
    allowed: Arc<AtomicUsize>,
}

/// The items a [`Rationed`] upstream may pass in all.
struct Ration(Arc<AtomicUsize>);

impl Ration {
    fn allow(&self, items: usize) {
        self.0.store(items, Ordering::SeqCst);
    }
}

impl<S> Rationed<S> {
    /// Wraps `inner`, with a ration of `allowed` items.
    fn new(inner: S, allowed: usize) -> (Self, Ration) {
        let allowed = Arc::new(AtomicUsize::new(allowed));
        let ration = Ration(Arc::clone(&allowed));
        let stream = Self {
            inner,
            passed: 0,
            allowed,
        };
        (stream, ration)
    }
}

impl<S: Stream + Unpin> Stream for Rationed<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.passed >= self.allowed.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if matches!(polled, Poll::Ready(Some(_))) {
            self.passed += 1;
        }
        polled
    }
}

/// The upstream polls B from inside A's poll of it: the first time B finds
/// nothing buffered and the upstream busy, and must wait (not deadlock, not
/// poll the upstream re-entrantly); the item A pushes wakes it. The second
/// time B reads a buffered item, and the upstream drops C, the last reader
/// of that item, which frees it.
///
/// Each of A's two polls pulls one item ([`Rationed`]), and runs the hook
/// once: without that, A's first poll could pull several items in one
/// batch, and its second read item 1 from its read-ahead or the buffer.
#[test]
fn an_upstream_that_polls_and_drops_branches_of_its_own_fanout() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let (upstream, hook) = Hooked::new(tracker.stream(5));
        let (upstream, ration) = Rationed::new(upstream, 1);
        let [mut a, b, c] = three(upstream.fanout(3, 4));
        let (b, c) = (share(b), share(c));
        let b_flag = WakeFlag::new();
        let b_got = seen();

        set_hook(&hook, {
            let (b, c, b_got, b_waker) = (
                Arc::clone(&b),
                Arc::clone(&c),
                Arc::clone(&b_got),
                b_flag.waker(),
            );
            let mut upstream_polls = 0;
            move || {
                upstream_polls += 1;
                record(&b_got, poll_shared(&b, &b_waker));
                if upstream_polls == 2 {
                    drop(take(&c));
                }
            }
        });

        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(0)));
        assert_eq!(
            *b_got.lock().unwrap(),
            [Poll::Pending],
            "B, polled while A polls the upstream, must wait"
        );
        assert!(b_flag.take(), "the item A pushed must wake B");

        ration.allow(2);
        assert_eq!(value(poll_once(&mut a)), Poll::Ready(Some(1)));
        assert_eq!(
            *b_got.lock().unwrap(),
            [Poll::Pending, Poll::Ready(Some(0))],
            "B, polled inside A's second poll of the upstream, reads the buffered item 0"
        );
        assert!(is_gone(&c));
        assert_eq!(
            tracker.live(),
            1,
            "item 1 is buffered for B; item 0 was freed with C, its last reader"
        );

        // The hook holds B: remove it, so that B can be taken and the hook
        // does not keep the fanout alive.
        clear_hook(&hook);
        ration.allow(usize::MAX);
        let got = collect_all([a, take(&b)]);
        assert_eq!(values(&got[0]), [2, 3, 4]);
        assert_eq!(values(&got[1]), [1, 2, 3, 4]);
        drop(got);
        assert_eq!(tracker.live(), 0);
        // Item 0: cloned for A and B (C was dropped); items 1 to 4: for A.
        assert_eq!(tracker.clones(), 6);
    });
}
