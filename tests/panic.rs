//! A panic in the upstream's `poll_next` propagates to the branch that polled
//! it, if it came in the first poll of that branch's batch; if it came after
//! the upstream yielded items in the same batch, the poller gets its first
//! item, and the panic (the same payload) reaches the first branch that
//! reads past the items of the batch. The other branches still get every
//! item the upstream yielded before, then panic with a message that says the
//! upstream panicked; none of them hangs, the waiting ones are woken, and
//! the upstream is never polled again.

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use fanout::{Branch, StreamExt as _};
use futures::{stream, Stream, StreamExt};
use tokio_test::assert_pending;
use tokio_test::task::{spawn, Spawn};

use support::{panic_message, panicking_upstream, Tracked, Tracker};

/// The message the test upstreams panic with.
const BOOM: &str = "upstream boom";

/// Hang guard only: never reached when the crate works.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Asserts that `message` is the fanout's "the upstream panicked" message,
/// and not the upstream's own.
fn assert_fanout_message(message: &str) {
    assert!(
        message.contains("upstream") && message.contains("panicked"),
        "the panic message does not say that the upstream panicked: {message:?}"
    );
    assert_ne!(message, BOOM);
}

/// Polls `stream` once from `task`, catching a panic.
fn try_poll<S: Stream + Unpin>(
    task: &mut Spawn<()>,
    stream: &mut S,
) -> Result<Poll<Option<S::Item>>, String> {
    catch_unwind(AssertUnwindSafe(|| {
        task.enter(|cx, _| Pin::new(&mut *stream).poll_next(cx))
    }))
    .map_err(panic_message)
}

/// Polls a branch of tracked items from `task` and expects it to yield
/// `values`, in order, without panicking.
fn expect_values<S>(task: &mut Spawn<()>, branch: &mut Branch<S>, values: std::ops::Range<u64>)
where
    S: Stream<Item = Tracked>,
{
    for value in values {
        assert_eq!(
            try_next_value(task, branch),
            Ok(Poll::Ready(Some(value))),
            "item {value}"
        );
    }
}

/// Polls a branch of tracked items and returns the value it yields.
fn try_next_value<S>(
    task: &mut Spawn<()>,
    branch: &mut Branch<S>,
) -> Result<Poll<Option<u64>>, String>
where
    S: Stream<Item = Tracked>,
{
    try_poll(task, branch).map(|poll| poll.map(|item| item.map(|item| item.value)))
}

/// A capacity with room for a batch of several items: the poller of an
/// empty buffer may pull that far ahead (a share of the free room), so that
/// a panic in a later poll of the same batch can be held. (With a tiny
/// capacity, every batch is one item.)
const ROOMY: usize = 64;

/// Asserts that the items alive are exactly those the fanout counts, the
/// buffered ones and the read-ahead, and within the capacity.
fn assert_live_items_are_counted<S: Stream>(tracker: &Tracker, branch: &Branch<S>) {
    let stats = branch.stats();
    assert_eq!(
        tracker.live(),
        stats.buffered + stats.read_ahead,
        "live items that the fanout does not count: {stats:?}"
    );
    assert!(stats.buffered + stats.read_ahead <= stats.capacity);
}

fn branches<T, const N: usize>(v: Vec<T>) -> [T; N] {
    v.try_into().ok().expect("as many branches as asked for")
}

/// The whole story on one thread: the poller gets the upstream's own panic,
/// every other branch reads all three items, then panics with the fanout's
/// message, and the upstream is never polled again.
///
/// A's first poll pulls a batch: items 0 to 2, then the poll that panics
/// (the buffer is empty and has room for [`ROOMY`] items, so the poller pulls
/// ahead that far). That panic comes after the batch's first item, so it is
/// held: A gets item 0, and the upstream is already dropped. A reads items 1
/// and 2 (from its read-ahead or the buffer), and its next poll, the first to
/// read past them, gets the upstream's own panic.
#[test]
fn the_poller_gets_the_upstream_panic_and_the_others_drain_then_panic() {
    let tracker = Tracker::new();
    let (upstream, counts, dropped) = panicking_upstream(&tracker, 3, BOOM);
    let [mut a, mut b, mut c] = branches(upstream.fanout(3, ROOMY));
    let (mut ta, mut tb, mut tc) = (spawn(()), spawn(()), spawn(()));

    assert_eq!(try_next_value(&mut ta, &mut a), Ok(Poll::Ready(Some(0))));
    assert!(
        dropped.load(Ordering::SeqCst),
        "scenario: A's first poll pulls ahead through items 0 to 2 and meets the panic, \
         and the panicked upstream is dropped"
    );
    assert_eq!(
        counts.polls(),
        4,
        "items 0 to 2, then the poll that panicked"
    );
    assert_live_items_are_counted(&tracker, &a);
    assert_eq!((a.lag(), b.lag(), c.lag()), (2, 3, 3));
    expect_values(&mut ta, &mut a, 1..3);
    let err =
        try_next_value(&mut ta, &mut a).expect_err("the upstream's panic must reach its poller");
    assert_eq!(err, BOOM, "the poller must get the upstream's own panic");
    assert_eq!(counts.polls(), 4);

    for (task, branch) in [(&mut tb, &mut b), (&mut tc, &mut c)] {
        expect_values(task, branch, 0..3);
        let err =
            try_next_value(task, branch).expect_err("after the buffered items, the branch panics");
        assert_fanout_message(&err);
        // Polled again, it does not mistake the panic for the end, nor hang.
        let err = try_next_value(task, branch).expect_err("the branch panics again");
        assert_fanout_message(&err);
    }

    // The poller, polled again, gets the fanout's message.
    let err = try_next_value(&mut ta, &mut a).expect_err("the poller panics again");
    assert_fanout_message(&err);

    assert_eq!(
        counts.polls(),
        4,
        "the upstream was polled after it panicked"
    );
    drop((a, b, c));
    assert_eq!(tracker.live(), 0);
}

/// A panic in a later poll of a batch is held until a branch reads past the
/// batch's items, and that branch need not be the poller: here B reads past
/// them first and gets the upstream's own panic (the same payload); A and C,
/// reading past them later, get the fanout's message.
#[test]
fn a_panic_after_a_batchs_first_item_reaches_the_first_branch_to_read_past_the_batch() {
    let tracker = Tracker::new();
    let (upstream, counts, dropped) = panicking_upstream(&tracker, 2, BOOM);
    let [mut a, mut b, mut c] = branches(upstream.fanout(3, ROOMY));
    let (mut ta, mut tb, mut tc) = (spawn(()), spawn(()), spawn(()));

    assert_eq!(try_next_value(&mut ta, &mut a), Ok(Poll::Ready(Some(0))));
    assert!(
        dropped.load(Ordering::SeqCst),
        "scenario: A's first poll pulls ahead through items 0 and 1 and meets the panic"
    );
    assert_eq!(counts.polls(), 3, "items 0 and 1, then the panic");
    assert_eq!((a.lag(), b.lag(), c.lag()), (1, 2, 2));
    assert_live_items_are_counted(&tracker, &a);

    expect_values(&mut tb, &mut b, 0..2);
    let err = try_next_value(&mut tb, &mut b)
        .expect_err("the first branch past the batch gets the held panic");
    assert_eq!(err, BOOM, "the held panic is the upstream's own");

    assert_eq!(try_next_value(&mut ta, &mut a), Ok(Poll::Ready(Some(1))));
    assert_fanout_message(&try_next_value(&mut ta, &mut a).unwrap_err());
    expect_values(&mut tc, &mut c, 0..2);
    assert_fanout_message(&try_next_value(&mut tc, &mut c).unwrap_err());
    assert_fanout_message(&try_next_value(&mut tb, &mut b).unwrap_err());
    assert_eq!(
        counts.polls(),
        3,
        "the upstream was polled after it panicked"
    );
    drop((a, b, c));
    assert_eq!(tracker.live(), 0);
}

/// A panic on the very first poll: nothing is buffered, every other branch
/// panics at once.
#[test]
fn a_panic_on_the_first_poll_reaches_every_branch_at_once() {
    for n in 1..=4 {
        let tracker = Tracker::new();
        let (upstream, counts, _) = panicking_upstream(&tracker, 0, BOOM);
        let mut all = upstream.fanout(n, 2);
        let mut tasks: Vec<_> = (0..n).map(|_| spawn(())).collect();

        let err = try_next_value(&mut tasks[0], &mut all[0]).expect_err("the poller panics");
        assert_eq!(err, BOOM);
        for (task, branch) in tasks.iter_mut().zip(&mut all).skip(1) {
            let err = try_next_value(task, branch).expect_err("every branch panics");
            assert_fanout_message(&err);
        }
        assert_eq!(counts.polls(), 1, "n = {n}");
    }
}

/// A branch that lags by several items, and a clone made after the panic,
/// still read everything buffered for them.
#[test]
fn lagging_branches_and_clones_read_everything_buffered_after_the_panic() {
    let tracker = Tracker::new();
    let (upstream, counts, _) = panicking_upstream(&tracker, 4, BOOM);
    let [mut a, mut b] = branches(upstream.fanout(2, 4));
    let (mut ta, mut tb, mut tc) = (spawn(()), spawn(()), spawn(()));

    assert_eq!(try_next_value(&mut tb, &mut b), Ok(Poll::Ready(Some(0))));
    expect_values(&mut ta, &mut a, 0..4);
    assert_eq!(try_next_value(&mut ta, &mut a).unwrap_err(), BOOM);

    assert_eq!(try_next_value(&mut tb, &mut b), Ok(Poll::Ready(Some(1))));
    let mut c = b.clone();
    expect_values(&mut tb, &mut b, 2..4);
    assert_fanout_message(&try_next_value(&mut tb, &mut b).unwrap_err());
    expect_values(&mut tc, &mut c, 2..4);
    assert_fanout_message(&try_next_value(&mut tc, &mut c).unwrap_err());
    assert_eq!(counts.polls(), 5);
    drop((a, b, c));
    assert_eq!(tracker.live(), 0);
}

/// Dropping the branches after the panic, read or not, releases every item
/// and does not panic.
#[test]
fn dropping_the_branches_after_the_panic_releases_everything() {
    let tracker = Tracker::new();
    let (upstream, _, dropped) = panicking_upstream(&tracker, 3, BOOM);
    let [mut a, b, c] = branches(upstream.fanout(3, 4));
    let mut ta = spawn(());
    expect_values(&mut ta, &mut a, 0..3);
    assert_eq!(try_next_value(&mut ta, &mut a).unwrap_err(), BOOM);
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(tracker.live(), 3, "three items stay buffered for b and c");
    drop(b);
    assert_eq!(tracker.live(), 3, "c has not read them yet");
    drop(c);
    assert_eq!(tracker.live(), 0);
    drop(a);
}

// ---------------------------------------------------------------------------
// Branches that wait on the upstream while it panics are woken.
// ---------------------------------------------------------------------------

/// What the gated upstream does next inside its current `poll_next`.
enum Step {
    Return(Poll<Option<u32>>),
    Panic,
}

/// An upstream whose `poll_next` reports "entered", then does what the
/// test says.
fn gated() -> (
    impl Stream<Item = u32> + Send + Unpin,
    std_mpsc::Sender<Step>,
    std_mpsc::Receiver<&'static str>,
) {
    let (steps_tx, steps_rx) = std_mpsc::channel::<Step>();
    let (events_tx, events_rx) = std_mpsc::channel();
    let upstream = stream::poll_fn(move |_: &mut Context<'_>| {
        let _ = events_tx.send("entered");
        match steps_rx
            .recv_timeout(HANG_GUARD)
            .expect("the test sent no step")
        {
            Step::Return(poll) => poll,
            Step::Panic => panic!("{}", BOOM),
        }
    });
    (upstream, steps_tx, events_rx)
}

/// Waits until the gated upstream has entered a `poll_next`.
fn expect_entered(events: &std_mpsc::Receiver<&'static str>) {
    assert_eq!(events.recv_timeout(HANG_GUARD), Ok("entered"));
}

/// Polls `branch` on another thread; the gated upstream returns `Pending`,
/// so that the branch waits on it.
fn wait_on_a_pending_upstream<S: Stream + Unpin + Send>(
    task: &mut Spawn<()>,
    branch: &mut S,
    steps: &std_mpsc::Sender<Step>,
    events: &std_mpsc::Receiver<&'static str>,
) where
    S::Item: Send + std::fmt::Debug,
{
    let polled = thread::scope(|scope| {
        let poller = scope.spawn(|| try_poll(task, branch));
        expect_entered(events);
        steps.send(Step::Return(Poll::Pending)).unwrap();
        poller.join().expect("try_poll catches panics")
    });
    assert_pending!(polled.unwrap());
}

/// B polls while A, on another thread, is inside the upstream's
/// `poll_next`; D waits on the upstream since an earlier `Pending`. The
/// upstream panics: A's thread gets the panic, B and D are woken, and each
/// panics with the fanout's message when polled.
#[test]
fn branches_waiting_on_the_upstream_are_woken_when_it_panics() {
    let (upstream, steps, events) = gated();
    let [mut a, mut b, mut d] = branches(upstream.fanout(3, 4));
    let (mut tb, mut td) = (spawn(()), spawn(()));
    let expect_entered = || expect_entered(&events);

    wait_on_a_pending_upstream(&mut td, &mut d, &steps, &events);

    // A polls on another thread; B parks while A is inside the upstream.
    let from_a = thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let mut ta = spawn(());
            try_poll(&mut ta, &mut a)
        });
        expect_entered();
        assert_pending!(try_poll(&mut tb, &mut b).unwrap());
        assert!(!tb.is_woken() && !td.is_woken(), "nothing happened yet");
        steps.send(Step::Panic).unwrap();
        poller.join().expect("try_poll catches the panic")
    });
    assert_eq!(from_a.unwrap_err(), BOOM);

    assert!(
        tb.is_woken(),
        "B was parked during the poll that panicked, and was not woken"
    );
    assert!(
        td.is_woken(),
        "D waited on the upstream when it panicked, and was not woken"
    );
    assert_fanout_message(&try_poll(&mut tb, &mut b).unwrap_err());
    assert_fanout_message(&try_poll(&mut td, &mut d).unwrap_err());
    assert!(
        events.try_recv().is_err(),
        "the upstream was polled after it panicked"
    );
}

/// As above, but the upstream yields an item before it panics, in the same
/// poll of A (a batch: the buffer has room for [`ROOMY`]): A gets the item,
/// not the panic, and B, parked during A's poll, and D, waiting since an
/// earlier `Pending`, are woken. Each reads the item; B, the first to read
/// past it, gets the upstream's own panic, and D the fanout's message.
#[test]
fn branches_waiting_on_the_upstream_are_woken_when_it_panics_after_an_item() {
    let (upstream, steps, events) = gated();
    let [mut a, mut b, mut d] = branches(upstream.fanout(3, ROOMY));
    let (mut ta, mut tb, mut td) = (spawn(()), spawn(()), spawn(()));
    let expect_entered = || expect_entered(&events);

    wait_on_a_pending_upstream(&mut td, &mut d, &steps, &events);

    let from_a = thread::scope(|scope| {
        let poller = scope.spawn(|| try_poll(&mut ta, &mut a));
        expect_entered();
        assert_pending!(try_poll(&mut tb, &mut b).unwrap());
        steps.send(Step::Return(Poll::Ready(Some(7)))).unwrap();
        // The batch goes on: A polls the upstream again, and it panics.
        expect_entered();
        assert!(!tb.is_woken() && !td.is_woken(), "nothing is pushed yet");
        steps.send(Step::Panic).unwrap();
        poller.join().expect("try_poll catches panics")
    });
    assert_eq!(
        from_a,
        Ok(Poll::Ready(Some(7))),
        "the panic came after the batch's first item: A gets the item"
    );
    assert!(
        tb.is_woken(),
        "B was parked during A's poll, and was not woken"
    );
    assert!(td.is_woken(), "D waited on the upstream, and was not woken");

    assert_eq!(try_poll(&mut tb, &mut b), Ok(Poll::Ready(Some(7))));
    assert_eq!(
        try_poll(&mut tb, &mut b).unwrap_err(),
        BOOM,
        "B is the first branch to read past the batch"
    );
    assert_eq!(try_poll(&mut td, &mut d), Ok(Poll::Ready(Some(7))));
    assert_fanout_message(&try_poll(&mut td, &mut d).unwrap_err());
    assert_fanout_message(&try_poll(&mut ta, &mut a).unwrap_err());
    assert!(
        events.try_recv().is_err(),
        "the upstream was polled after it panicked"
    );
}

// ---------------------------------------------------------------------------
// Many tasks, many threads: nothing hangs.
// ---------------------------------------------------------------------------

/// What one branch's consumer saw: the values, then how it ended.
type Outcome = (Vec<u64>, Result<(), String>);

fn check_outcomes(outcomes: Vec<Outcome>, items: u64) {
    let mut raw_panics = 0;
    for (i, (values, end)) in outcomes.into_iter().enumerate() {
        assert_eq!(
            values,
            (0..items).collect::<Vec<_>>(),
            "branch {i} missed buffered items"
        );
        let message = end.expect_err("every branch ends in a panic");
        if message == BOOM {
            raw_panics += 1;
        } else {
            assert_fanout_message(&message);
        }
    }
    assert_eq!(
        raw_panics, 1,
        "exactly one branch polled the upstream when it panicked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_reaches_every_task_and_none_hangs() {
    const ITEMS: u64 = 200;
    for (n, cap) in [(2, 1), (3, 4), (4, 16), (8, 3)] {
        let tracker = Tracker::new();
        let (upstream, counts, _) = panicking_upstream(&tracker, ITEMS, BOOM);
        let tasks: Vec<_> = upstream
            .fanout(n, cap)
            .into_iter()
            .enumerate()
            .map(|(i, mut branch)| {
                let seen = Arc::new(Mutex::new(Vec::new()));
                let record = Arc::clone(&seen);
                let task = tokio::spawn(async move {
                    while let Some(item) = branch.next().await {
                        record.lock().unwrap().push(item.value);
                        if item.value % (i as u64 + 2) == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                });
                (seen, task)
            })
            .collect();

        let mut outcomes = Vec::new();
        for (seen, task) in tasks {
            let end = tokio::time::timeout(HANG_GUARD, task)
                .await
                .unwrap_or_else(|_| panic!("n = {n}, cap = {cap}: a branch hangs after the panic"));
            let end = end.map_err(|err| panic_message(err.into_panic()));
            let values = std::mem::take(&mut *seen.lock().unwrap());
            outcomes.push((values, end));
        }
        check_outcomes(outcomes, ITEMS);
        assert_eq!(
            counts.polls() as u64,
            ITEMS + 1,
            "the upstream was polled after it panicked"
        );
        assert_eq!(tracker.live(), 0);
    }
}

#[test]
fn a_panic_reaches_every_thread_and_none_hangs() {
    const ITEMS: u64 = 200;
    for (n, cap) in [(2, 1), (4, 8)] {
        let tracker = Tracker::new();
        let (upstream, counts, _) = panicking_upstream(&tracker, ITEMS, BOOM);
        let (done_tx, done_rx) = std_mpsc::channel();
        let threads: Vec<_> = upstream
            .fanout(n, cap)
            .into_iter()
            .map(|branch| {
                let done = done_tx.clone();
                thread::spawn(move || {
                    let mut values = Vec::new();
                    let end = catch_unwind(AssertUnwindSafe(|| {
                        for item in futures::executor::block_on_stream(branch) {
                            values.push(item.value);
                        }
                    }))
                    .map_err(panic_message);
                    let _ = done.send(());
                    (values, end)
                })
            })
            .collect();
        for _ in 0..n {
            done_rx
                .recv_timeout(HANG_GUARD)
                .unwrap_or_else(|_| panic!("n = {n}, cap = {cap}: a branch hangs after the panic"));
        }
        let outcomes = threads.into_iter().map(|t| t.join().unwrap()).collect();
        check_outcomes(outcomes, ITEMS);
        assert_eq!(counts.polls() as u64, ITEMS + 1);
        assert_eq!(tracker.live(), 0);
    }
}
