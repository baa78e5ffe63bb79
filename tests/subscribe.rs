//! Branches that join later: `share`, `share_replay`, `Branch::subscriber`,
//! `Lossy::subscriber`, `Subscriber::subscribe`, `fanout_array`, and the
//! replay kept for late joiners.
//!
//! Each promise at the poll level: a subscriber holds no place in the buffer;
//! a new branch starts at the live edge (a poll in flight counts as after
//! the call), or with the latest items kept for replay, and is then an
//! ordinary branch; kept items count against the capacity but never make a
//! branch wait, and keep their room until they are dropped; the lifetime of
//! the upstream and of the items with only subscribers left; the end and the
//! panic of the upstream reaching branches subscribed afterwards; the clone
//! counts in the replay window; the panics of the constructors, at the call
//! site; and the auto traits.

mod support;

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::panic::{self, catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::thread;

use fanout::{Branch, StreamExt as _, Subscriber};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream};
use futures::StreamExt;
use tokio_test::task::{spawn, Spawn};

use support::model::synced_stats;
use support::{
    clear_hook, collect_all, drain_ready, entry, hang_guard, panic_message, panicking_upstream,
    poll_once, poll_with, set_hook, take, values, CallbackWaker, CountingPolls, DropFlag, Hook,
    Hooked, Rng, Tracked, Tracker, WakeFlag,
};

/// Polls `stream` once from `task`, whose waker records the wake-ups.
fn poll<S: Stream + Unpin>(task: &mut Spawn<()>, stream: &mut S) -> Poll<Option<S::Item>> {
    task.enter(|cx, _| Pin::new(stream).poll_next(cx))
}

/// Reads `count` items from `branch`, each in one poll that must not wait.
fn read_now<S: Stream + Unpin>(branch: &mut S, count: usize) -> Vec<S::Item> {
    (0..count)
        .map(|_| match poll_once(branch) {
            Poll::Ready(Some(item)) => item,
            other => panic!("expected an item at once, got {:?}", other.map(|_| "..")),
        })
        .collect()
}

/// Where the newest branch of a snapshot starts: what it has still to yield,
/// counted back from the end of what was pulled.
fn start_of(stats: &fanout::Stats, id: usize) -> u64 {
    let entry = entry(stats, id);
    stats.pulled - entry.lag as u64 - entry.delivered
}

// ------------------------------------------------------------ constructors

#[test]
fn share_polls_nothing_and_holds_no_branch() {
    let (upstream, dropped) = DropFlag::new(stream::iter(0..10u64));
    let (upstream, counts) = CountingPolls::new(upstream);
    let subscriber = upstream.share(4);
    assert_eq!(subscriber.branches(), 0);
    assert_eq!(subscriber.capacity(), 4);
    let stats = subscriber.stats();
    assert_eq!(
        (
            stats.capacity,
            stats.buffered,
            stats.pulled,
            stats.branches.len()
        ),
        (4, 0, 0, 0)
    );
    let copy = subscriber.clone();
    drop(subscriber);
    assert!(!dropped.load(Ordering::SeqCst), "a clone still holds it");
    drop(copy);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the last subscriber dropped it"
    );
    assert_eq!(counts.polls(), 0);
}

#[test]
fn the_free_share_and_the_methods_give_the_same_fanout() {
    let by_fn = fanout::share(stream::iter(0..20u64), 4);
    let by_method = stream::iter(0..20u64).share(4);
    let qualified = fanout::StreamExt::share(stream::iter(0..20u64), 4);
    let replaying = stream::iter(0..20u64).share_replay(4, 0);
    for subscriber in [by_fn, by_method, qualified, replaying] {
        let outputs = collect_all([subscriber.subscribe(), subscriber.subscribe()]);
        assert_eq!(outputs, [(0..20).collect::<Vec<_>>(), (0..20).collect()]);
        assert_eq!(subscriber.stats().kept_for_replay, 0);
    }
}

#[test]
fn share_replay_accepts_a_replay_equal_to_the_capacity() {
    let subscriber = stream::iter(0..10u64).share_replay(3, 3);
    let mut branch = subscriber.subscribe();
    assert_eq!(drain_ready(&mut branch), (0..10).collect::<Vec<_>>());
    assert_eq!(subscriber.capacity(), 3);
}

thread_local! {
    /// Whether [`panic_site`] is catching a panic on this thread.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// Where the panic it caught was raised.
    static SITE: RefCell<Option<(String, u32)>> = const { RefCell::new(None) };
}

/// Runs `f`, which must panic, and returns the panic's message and where it
/// was raised (file and line), as the panic hook sees it: with
/// `#[track_caller]`, the caller's call site.
fn panic_site<R>(f: impl FnOnce() -> R) -> (String, String, u32) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) {
                let site = info
                    .location()
                    .map(|location| (location.file().to_owned(), location.line()));
                SITE.with(|cell| *cell.borrow_mut() = site);
            } else {
                previous(info);
            }
        }));
    });
    CATCHING.with(|catching| catching.set(true));
    let caught = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|catching| catching.set(false));
    let payload = caught.err().expect("a panic");
    let (file, line) = SITE
        .with(|cell| cell.borrow_mut().take())
        .expect("the hook saw where");
    (panic_message(payload), file, line)
}

/// Runs `$call`, which must panic at its own call site: the line of this
/// macro's invocation, in this file. Returns the panic's message.
macro_rules! panics_here {
    ($call:expr) => {{
        let (message, file, line) = panic_site(|| $call);
        assert_eq!((file.as_str(), line), (file!(), line!()), "{message}");
        message
    }};
}

#[test]
fn share_replay_with_replay_above_the_capacity_panics_at_the_call_site() {
    let message = panics_here!(stream::iter(0..3u64).share_replay(2, 3));
    assert!(message.contains("replay"), "{message}");
    assert!(message.contains("3 > cap 2"), "names both: {message}");
    let message = panics_here!(fanout::StreamExt::share_replay(stream::iter(0..3u64), 1, 5));
    assert!(message.contains("replay"), "{message}");
}

#[test]
fn a_zero_capacity_panics_at_the_call_site_for_every_constructor() {
    let messages = [
        panics_here!(stream::iter(0..3u64).share(0)),
        panics_here!(fanout::share(stream::iter(0..3u64), 0)),
        panics_here!(stream::iter(0..3u64).share_replay(0, 0)),
        panics_here!(stream::iter(0..3u64).fanout_array::<2>(0)),
    ];
    for message in messages {
        assert!(message.contains("capacity"), "{message}");
        assert!(!message.contains("replay"), "{message}");
    }
}

// ------------------------------------------------------------ auto traits

/// Whether `$type` is `Send + Sync`, decided at compile time: an inherent
/// constant, which exists only when the bounds hold, wins over the trait's.
macro_rules! is_send_sync {
    ($type:ty) => {{
        #[allow(dead_code)]
        trait Fallback {
            const SEND_SYNC: bool = false;
        }
        impl<T: ?Sized> Fallback for T {}
        struct Probe<T: ?Sized>(PhantomData<T>);
        #[allow(dead_code)]
        impl<T: ?Sized + Send + Sync> Probe<T> {
            const SEND_SYNC: bool = true;
        }
        <Probe<$type>>::SEND_SYNC
    }};
}

type SendStream<T> = Pin<Box<dyn Stream<Item = T> + Send>>;
type LocalStream<T> = Pin<Box<dyn Stream<Item = T>>>;

#[test]
fn subscriber_is_send_and_sync_exactly_when_branch_is() {
    let pairs = [
        (
            is_send_sync!(Subscriber<SendStream<u64>>),
            is_send_sync!(Branch<SendStream<u64>>),
        ),
        (
            is_send_sync!(Subscriber<LocalStream<u64>>),
            is_send_sync!(Branch<LocalStream<u64>>),
        ),
        (
            is_send_sync!(Subscriber<SendStream<Rc<u64>>>),
            is_send_sync!(Branch<SendStream<Rc<u64>>>),
        ),
        (
            is_send_sync!(Subscriber<SendStream<Cell<u64>>>),
            is_send_sync!(Branch<SendStream<Cell<u64>>>),
        ),
    ];
    assert_eq!(
        pairs,
        [(true, true), (false, false), (false, false), (true, true)]
    );
}

#[test]
fn a_subscriber_moves_to_another_thread_and_subscribes_there() {
    hang_guard(|| {
        let subscriber = stream::iter(0..50u64).share(8);
        let copy = subscriber.clone();
        let remote = thread::spawn(move || {
            futures::executor::block_on(copy.subscribe().collect::<Vec<_>>())
        });
        let here = futures::executor::block_on(subscriber.subscribe().collect::<Vec<_>>());
        let there = remote.join().unwrap();
        // Each started at the live edge of its own subscribe: a suffix of
        // the items, to the end.
        for read in [here, there] {
            let first = read.first().copied().unwrap_or(50);
            assert_eq!(read, (first..50).collect::<Vec<_>>());
        }
    });
}

/// An upstream that is neither `Debug` nor yields `Debug` items.
struct Opaque;

#[derive(Clone)]
struct OpaqueItem;

impl Stream for Opaque {
    type Item = OpaqueItem;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<OpaqueItem>> {
        Poll::Ready(Some(OpaqueItem))
    }
}

#[test]
fn subscriber_clones_share_the_fanout_and_debug_needs_no_debug_upstream() {
    let subscriber = Opaque.share(6);
    let copy = subscriber.clone();
    let branch = copy.subscribe();
    assert_eq!((subscriber.branches(), copy.branches()), (1, 1));
    let shown = format!("{subscriber:?}");
    assert!(shown.starts_with("Subscriber"), "{shown}");
    assert!(shown.contains("branches: 1"), "{shown}");
    assert!(shown.contains("capacity: 6"), "{shown}");
    drop(branch);
    assert_eq!(
        format!("{copy:?}"),
        shown.replace("branches: 1", "branches: 0")
    );
}

// ----------------------------------------------------------- fanout_array

#[test]
fn fanout_array_gives_n_branches_of_one_buffer() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..30u64));
    let [mut a, b, c] = upstream.fanout_array(4);
    assert_eq!([a.id(), b.id(), c.id()], [0, 1, 2]);
    assert_eq!(counts.polls(), 0, "creating them polls nothing");
    assert_eq!(a.subscriber().branches(), 3);
    // One buffer: `a` runs exactly `cap` ahead of the others, which hold
    // nothing, and waits there.
    let mut task = spawn(());
    let mut read = 0;
    while let Poll::Ready(Some(item)) = poll(&mut task, &mut a) {
        assert_eq!(item, read);
        read += 1;
    }
    assert_eq!((read, b.lag(), c.lag()), (4, 4, 4));
    let outputs = collect_all([a, b, c]);
    assert_eq!(outputs[0], (4..30).collect::<Vec<_>>());
    assert_eq!(outputs[1], (0..30).collect::<Vec<_>>());
    assert_eq!(outputs[2], (0..30).collect::<Vec<_>>());
}

#[test]
fn fanout_array_of_one_and_of_none() {
    let [lone] = stream::iter(0..5u64).fanout_array(1);
    assert_eq!(collect_all([lone]), [[0, 1, 2, 3, 4]]);
    let (upstream, dropped) = DropFlag::new(stream::iter(0..5u64));
    let none: [Branch<_>; 0] = upstream.fanout_array(2);
    assert!(none.is_empty());
    assert!(dropped.load(Ordering::SeqCst), "dropped unpolled");
}

// ------------------------------------------------ holding nothing back

#[test]
fn a_subscriber_never_holds_the_upstream_or_a_branch_back() {
    for cap in [1, 2, 16] {
        let subscriber = stream::iter(0..200u64).share(cap);
        let _copies = (subscriber.clone(), subscriber.clone());
        let mut lone = subscriber.subscribe();
        assert_eq!(drain_ready(&mut lone), (0..200).collect::<Vec<_>>());
        // A fanout made with `fanout`, with subscribers taken from its
        // branches, lossy ones too.
        let [mut main, tap] = stream::iter(0..200u64).fanout_array(cap);
        let tap = tap.into_lossy();
        let (from_branch, from_lossy) = (main.subscriber(), tap.subscriber());
        assert_eq!((from_branch.branches(), from_lossy.branches()), (2, 2));
        assert_eq!(drain_ready(&mut main), (0..200).collect::<Vec<_>>());
        drop(tap);
        assert_eq!(from_lossy.branches(), 1, "only main");
    }
}

#[test]
fn with_subscribers_but_no_branch_nothing_is_polled_or_buffered() {
    let tracker = Tracker::new();
    let (upstream, counts) = CountingPolls::new(tracker.stream(100));
    let (upstream, dropped) = DropFlag::new(upstream);
    let subscriber = upstream.share(16);
    let mut branch = subscriber.subscribe();
    assert_eq!(values(&read_now(&mut branch, 3)), [0, 1, 2]);
    let pulled = subscriber.stats().pulled;
    assert!(
        (3..=3 + 16).contains(&pulled),
        "within the capacity: {pulled}"
    );
    drop(branch);
    // What the branch had read ahead is gone at once; nothing is kept.
    assert_eq!(tracker.live(), 0);
    let stats = subscriber.stats();
    assert_eq!(
        (stats.buffered, stats.read_ahead, stats.pulled),
        (0, 0, pulled)
    );
    assert!(!dropped.load(Ordering::SeqCst), "the subscriber holds it");
    let polls = counts.polls();
    for _ in 0..3 {
        let _ = (
            subscriber.stats(),
            subscriber.branches(),
            subscriber.clone(),
        );
    }
    assert_eq!(counts.polls(), polls, "nothing polls it");
    // The next branch takes in what comes next.
    let mut late = subscriber.subscribe();
    assert_eq!(counts.polls(), polls, "subscribing polls nothing");
    assert_eq!(read_now(&mut late, 1)[0].value, pulled);
}

// --------------------------------------------------------------- live edge

#[test]
fn subscribe_starts_at_the_live_edge() {
    let subscriber = stream::iter(0..40u64).share(16);
    let mut first = subscriber.subscribe();
    assert_eq!(read_now(&mut first, 3), [0, 1, 2]);
    let edge = subscriber.stats().pulled;
    let late = subscriber.subscribe();
    assert_eq!(late.lag(), 0, "it holds no slot");
    let stats = late.stats();
    assert_eq!(entry(&stats, late.id()).delivered, 0);
    assert_eq!(start_of(&stats, late.id()), edge);
    assert_eq!(subscriber.branches(), 2);
    let outputs = collect_all([first, late]);
    assert_eq!(outputs[0], (3..40).collect::<Vec<_>>());
    assert_eq!(outputs[1], (edge..40).collect::<Vec<_>>());
}

/// The upstream of [`subscribe_inside_the_poll`]: `0..len`, counting its
/// polls, running a hook at the start of each.
type HookedRange = Hooked<CountingPolls<stream::Iter<std::ops::Range<u64>>>>;

/// What a subscribe from inside the upstream's `poll_next` saw.
struct Inside {
    /// A snapshot taken just before the subscribe.
    before: fanout::Stats,
    /// The position of the item the upstream was about to yield.
    in_flight: u64,
    /// A branch subscribed once both had read everything.
    after: Branch<HookedRange>,
}

/// Shares `0..len` over `cap` with `replay`, and reads one branch until,
/// from inside the upstream's `at`-th `poll_next` (0-based), a hook has
/// subscribed a new branch: a subscribe while that branch's poll, and so
/// its batch, is in flight. Then reads both to their ends. Returns what the
/// first branch read, what the subscribe saw, and what the new branch read.
fn subscribe_inside_the_poll(
    len: u64,
    cap: usize,
    replay: usize,
    at: usize,
) -> (Vec<u64>, Inside, Vec<u64>) {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..len));
    let (upstream, hook) = Hooked::new(upstream);
    let subscriber = upstream.share_replay(cap, replay);
    let mut first = subscriber.subscribe();
    let inside = Arc::new(Mutex::new(None));
    set_hook(&hook, {
        let (subscriber, inside) = (subscriber.clone(), Arc::clone(&inside));
        move || {
            if counts.polls() == at {
                let before = subscriber.stats();
                let branch = subscriber.subscribe();
                let in_flight = counts.yielded() as u64;
                *inside.lock().unwrap() = Some((before, in_flight, branch));
            }
        }
    });
    let mut read = Vec::new();
    while inside.lock().unwrap().is_none() {
        match poll_once(&mut first) {
            Poll::Ready(Some(item)) => read.push(item),
            Poll::Ready(None) => break,
            Poll::Pending => panic!("nothing makes the first branch wait"),
        }
    }
    // The hook holds a subscriber: the fanout would hold itself.
    clear_hook(&hook);
    let (before, in_flight, branch) = inside.lock().unwrap().take().unwrap();
    let late_id = branch.id();
    let [rest, late] = collect_all([first, branch]).try_into().unwrap();
    read.extend(rest);
    assert_eq!(subscriber.branches(), 0);
    let inside = Inside {
        before,
        in_flight,
        after: subscriber.subscribe(),
    };
    assert_eq!(inside.after.id(), late_id + 1);
    (read, inside, late)
}

#[test]
fn a_subscribe_inside_the_upstreams_poll_takes_the_whole_batch_in_flight() {
    const LEN: u64 = 40;
    for at in [0, 1, 2, 3, 5, 17, LEN as usize] {
        let (first, inside, late) = subscribe_inside_the_poll(LEN, 16, 0, at);
        assert_eq!(first, (0..LEN).collect::<Vec<_>>(), "at {at}");
        // The items of the batch in flight were taken in after the call,
        // even those the upstream yielded before it: they are all the new
        // branch's, from the first of the batch on.
        let start = inside.before.pulled;
        assert!(
            start <= inside.in_flight,
            "at {at}: {start} > {}",
            inside.in_flight
        );
        assert_eq!(late, (start..LEN).collect::<Vec<_>>(), "at {at}");
    }
}

#[test]
fn with_replay_a_subscribe_inside_the_upstreams_poll_gets_the_replay_then_the_batch() {
    const LEN: u64 = 40;
    for replay in [1, 3, 8] {
        for at in [0, 1, 2, 6, 17, LEN as usize] {
            let (first, inside, late) = subscribe_inside_the_poll(LEN, 16, replay, at);
            assert_eq!(first, (0..LEN).collect::<Vec<_>>());
            let before = &inside.before;
            let head = before.pulled - before.buffered as u64;
            let start = head.max(before.pulled.saturating_sub(replay as u64));
            assert!(before.pulled <= inside.in_flight);
            assert_eq!(
                late,
                (start..LEN).collect::<Vec<_>>(),
                "replay {replay}, at {at}, {before:?}"
            );
        }
    }
}

/// The upstream's `poll_next` blocks on another thread, inside its `at`-th
/// call, while this thread subscribes: the new branch gets the batch in
/// flight and everything after it.
#[test]
fn a_subscribe_on_another_thread_while_a_branch_is_inside_the_upstreams_poll() {
    hang_guard(|| {
        const LEN: u64 = 30;
        for (cap, at) in [(16, 0), (16, 2), (16, 9), (2, 5), (16, LEN)] {
            let (inside_tx, inside_rx) = std_mpsc::channel();
            let (go_tx, go_rx) = std_mpsc::channel::<()>();
            let mut next = 0;
            let upstream = stream::poll_fn(move |_: &mut Context<'_>| {
                if next == at {
                    inside_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                }
                if next == LEN {
                    return Poll::Ready(None);
                }
                next += 1;
                Poll::Ready(Some(next - 1))
            });
            let subscriber = upstream.share(cap);
            let first = subscriber.subscribe();
            let reader =
                thread::spawn(move || futures::executor::block_on(first.collect::<Vec<_>>()));
            inside_rx.recv().unwrap();
            let before = subscriber.stats();
            let late = subscriber.subscribe();
            go_tx.send(()).unwrap();
            let late = futures::executor::block_on(late.collect::<Vec<_>>());
            assert_eq!(reader.join().unwrap(), (0..LEN).collect::<Vec<_>>());
            assert!(before.pulled <= at, "{before:?}");
            assert_eq!(
                late,
                (before.pulled..LEN).collect::<Vec<_>>(),
                "cap {cap}, at {at}"
            );
        }
    });
}

// --------------------------------------------------------- ordinary branch

#[test]
fn a_subscribed_branch_holds_the_others_back_and_frees_them_like_any_branch() {
    let cap = 4;
    let subscriber = stream::iter(0..100u64).share(cap);
    let mut fast = subscriber.subscribe();
    let mut task = spawn(());
    assert_eq!(read_now(&mut fast, 2), [0, 1]);
    let mut slow = subscriber.subscribe();
    let start = start_of(&slow.stats(), slow.id());
    let mut next = 2;
    while let Poll::Ready(Some(item)) = poll(&mut task, &mut fast) {
        assert_eq!(item, next);
        next += 1;
        assert!(next < 100, "never held back");
    }
    // Nobody holds read-ahead: `fast` waits exactly `cap` ahead of `slow`.
    assert_eq!((slow.lag(), next - start), (cap, cap as u64));
    assert!(!task.is_woken());
    let mut read = 0;
    while !task.is_woken() {
        assert_eq!(read_now(&mut slow, 1), [start + read]);
        read += 1;
        assert!(
            read <= cap as u64,
            "`fast` not woken after `slow` read {read}"
        );
    }
    assert_eq!(poll(&mut task, &mut fast), Poll::Ready(Some(next)));
    // A fork of it yields the same; turned lossy, it holds nobody back; and
    // dropped, it frees the others.
    let fork = slow.clone();
    let tap = slow.into_lossy();
    let outputs = collect_all([fork, fast]);
    assert_eq!(outputs[0], (start + read..100).collect::<Vec<_>>());
    assert_eq!(outputs[1], (next + 1..100).collect::<Vec<_>>());
    let deliveries: Vec<_> = futures::executor::block_on(tap.collect());
    assert!(
        deliveries.iter().any(|delivery| delivery.is_err()),
        "the idle tap missed items"
    );
    assert_eq!(subscriber.branches(), 0);
}

#[test]
fn a_branch_turned_lossy_subscribes_like_the_others() {
    let [main, tap] = stream::iter(0..20u64).fanout_array(4);
    let tap = tap.into_lossy();
    let subscriber = tap.subscriber();
    let late = subscriber.subscribe();
    assert_eq!(subscriber.branches(), 3);
    assert_eq!(late.capacity(), 4);
    drop(tap);
    assert_eq!(
        collect_all([main, late]),
        [(0..20).collect::<Vec<_>>(), (0..20).collect()]
    );
}

// ------------------------------------------------------------ branch drops

#[test]
fn subscribe_right_after_the_last_branch_is_dropped_starts_at_the_live_edge() {
    let tracker = Tracker::new();
    let (upstream, counts) = CountingPolls::new(tracker.stream(50));
    let subscriber = upstream.share(16);
    let mut first = subscriber.subscribe();
    assert_eq!(values(&read_now(&mut first, 2)), [0, 1]);
    let read_ahead = first.lag();
    drop(first);
    assert_eq!(tracker.live(), 0, "its read-ahead went with it");
    let edge = subscriber.stats().pulled;
    assert_eq!(edge, 2 + read_ahead as u64);
    let polls = counts.polls();
    let mut late = subscriber.subscribe();
    assert_eq!(counts.polls(), polls);
    // The items the dropped branch had read ahead were taken in before the
    // call: the new branch starts after them.
    let read = drain_ready(&mut late);
    assert_eq!(values(&read), (edge..50).collect::<Vec<_>>());
    drop((read, late, subscriber));
    assert_eq!(tracker.live(), 0);
}

#[test]
fn with_replay_the_items_only_a_dropped_branch_had_left_go_but_the_replay_stays() {
    let tracker = Tracker::new();
    let subscriber = tracker.stream(40).share_replay(8, 3);
    let (mut fast, slow) = (subscriber.subscribe(), subscriber.subscribe());
    let mut task = spawn(());
    let mut next = 0;
    while let Poll::Ready(Some(item)) = poll(&mut task, &mut fast) {
        assert_eq!(item.value, next);
        next += 1;
    }
    assert_eq!(
        (next, slow.lag(), tracker.live()),
        (8, 8, 8),
        "slow holds it all"
    );
    drop(slow);
    assert!(task.is_woken(), "the waiting branch is woken");
    assert_eq!(tracker.live(), 3, "all but the replay released at once");
    let stats = subscriber.stats();
    assert_eq!((stats.buffered, stats.kept_for_replay), (3, 3));
    let late = subscriber.subscribe();
    let outputs = collect_all([fast, late]);
    assert_eq!(values(&outputs[0]), (8..40).collect::<Vec<_>>());
    assert_eq!(values(&outputs[1]), (5..40).collect::<Vec<_>>());
}

/// The slow branch's drop wakes the fast one, waiting for room, whose waker
/// subscribes: foreign code run by a drop, with no lock held.
#[test]
fn a_waker_woken_by_a_branchs_drop_subscribes() {
    hang_guard(|| {
        let subscriber = stream::iter(0..30u64).share(4);
        let (mut fast, slow) = (subscriber.subscribe(), subscriber.subscribe());
        assert_eq!(read_now(&mut fast, 4), [0, 1, 2, 3]);
        let subscribed = Arc::new(Mutex::new(None));
        let waker = CallbackWaker::on_wake({
            let (subscriber, subscribed) = (subscriber.clone(), Arc::clone(&subscribed));
            move || {
                let before = subscriber.stats();
                *subscribed.lock().unwrap() = Some((before, subscriber.subscribe()));
            }
        });
        assert_eq!(poll_with(&mut fast, &waker), Poll::Pending);
        drop(slow);
        let (before, late) = subscribed
            .lock()
            .unwrap()
            .take()
            .expect("woken, it subscribed");
        assert_eq!((before.pulled, before.branches.len()), (4, 1));
        assert_eq!(
            collect_all([fast, late]),
            [(4..30).collect::<Vec<_>>(), (4..30).collect()]
        );
    });
}

// ---------------------------------------------------------- upstream's end

#[test]
fn a_branch_subscribed_after_the_end_yields_none_without_polling() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..5u64));
    let subscriber = upstream.share(4);
    let mut first = subscriber.subscribe();
    assert_eq!(drain_ready(&mut first), [0, 1, 2, 3, 4]);
    let polls = counts.polls();
    let mut late = subscriber.subscribe();
    assert!(!late.is_terminated());
    assert_eq!(late.size_hint(), (0, Some(0)));
    assert_eq!(poll_once(&mut late), Poll::Ready(None));
    assert!(late.is_terminated());
    drop(first);
    let mut later = subscriber.subscribe();
    assert_eq!(poll_once(&mut later), Poll::Ready(None));
    assert_eq!((counts.polls(), counts.ends()), (polls, 1));
    assert!(subscriber.stats().upstream_done);
}

#[test]
fn with_replay_a_branch_subscribed_after_the_end_yields_the_replay_then_none() {
    for (len, replay, expected) in [(10, 3, 7..10u64), (2, 5, 0..2), (0, 2, 0..0)] {
        let subscriber = stream::iter(0..len).share_replay(8, replay);
        let mut first = subscriber.subscribe();
        assert_eq!(drain_ready(&mut first), (0..len).collect::<Vec<_>>());
        let mut late = subscriber.subscribe();
        assert_eq!(
            late.size_hint(),
            (expected.clone().count(), Some(expected.clone().count()))
        );
        assert_eq!(drain_ready(&mut late), expected.clone().collect::<Vec<_>>());
        // Also with no branch left.
        drop((first, late));
        let mut later = subscriber.subscribe();
        assert_eq!(drain_ready(&mut later), expected.collect::<Vec<_>>());
    }
}

#[test]
fn a_subscribe_inside_the_poll_that_finds_the_end_yields_what_is_left_then_none() {
    for replay in [0, 2] {
        let len = 6;
        let (first, inside, late) = subscribe_inside_the_poll(len, 4, replay, len as usize);
        assert_eq!(first, (0..len).collect::<Vec<_>>());
        let before = &inside.before;
        let head = before.pulled - before.buffered as u64;
        let start = head.max(before.pulled.saturating_sub(replay as u64));
        assert_eq!(late, (start..len).collect::<Vec<_>>(), "replay {replay}");
        // And the branch subscribed once everything was read.
        let mut after = inside.after;
        let expected: Vec<_> = (len - replay as u64..len).collect();
        assert_eq!(drain_ready(&mut after), expected);
    }
}

// ------------------------------------------------- outliving every branch

#[test]
fn a_subscriber_that_outlives_every_branch_replays_sees_the_end_and_leaks_nothing() {
    const LEN: u64 = 20;
    let tracker = Tracker::new();
    let (upstream, counts) = CountingPolls::new(tracker.stream(LEN));
    let (upstream, dropped) = DropFlag::new(upstream);
    let subscriber = upstream.share_replay(8, 3);
    let mut first = subscriber.subscribe();
    assert_eq!(
        values(&read_now(&mut first, 10)),
        (0..10).collect::<Vec<_>>()
    );
    drop(first);
    let stats = subscriber.stats();
    let pulled = stats.pulled;
    assert!((10..=18).contains(&pulled), "{stats:?}");
    assert_eq!(
        (stats.buffered, stats.kept_for_replay, stats.read_ahead),
        (3, 3, 0)
    );
    assert_eq!(tracker.live(), 3, "only the replay is held");
    let polls = counts.polls();

    let mut second = subscriber.subscribe();
    assert_eq!(counts.polls(), polls);
    let read = drain_ready(&mut second);
    assert_eq!(values(&read), (pulled - 3..LEN).collect::<Vec<_>>());
    drop(read);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the upstream is dropped at its end"
    );
    drop(second);
    assert_eq!(tracker.live(), 3);

    let mut third = subscriber.subscribe();
    assert_eq!(values(&drain_ready(&mut third)), [17, 18, 19]);
    assert_eq!(
        poll_once(&mut third).map(|item| item.map(|_| ())),
        Poll::Ready(None)
    );
    let copy = subscriber.clone();
    drop((third, subscriber));
    assert_eq!(
        tracker.live(),
        3,
        "a clone of the subscriber keeps the replay"
    );
    drop(copy);
    assert_eq!(tracker.live(), 0);
}

#[test]
fn without_replay_a_subscriber_alone_holds_no_item_but_keeps_the_upstream() {
    let tracker = Tracker::new();
    let (upstream, dropped) = DropFlag::new(tracker.stream(30));
    let subscriber = upstream.share(8);
    let (mut fast, slow) = (subscriber.subscribe(), subscriber.subscribe());
    assert_eq!(values(&read_now(&mut fast, 8)), (0..8).collect::<Vec<_>>());
    assert_eq!(tracker.live(), 8);
    drop((fast, slow));
    assert_eq!(tracker.live(), 0);
    assert!(!dropped.load(Ordering::SeqCst));
    let mut late = subscriber.subscribe();
    assert_eq!(values(&drain_ready(&mut late)), (8..30).collect::<Vec<_>>());
    drop(late);
    assert_eq!(tracker.live(), 0);
    drop(subscriber);
    assert!(dropped.load(Ordering::SeqCst));
}

// ------------------------------------------------------ replay never waits

#[test]
fn items_kept_for_replay_never_make_a_branch_wait() {
    const LEN: u64 = 300;
    for cap in [1, 2, 3, 5, 16, 64] {
        for replay in [cap, cap / 2, 1] {
            let subscriber = stream::iter(0..LEN).share_replay(cap, replay);
            let mut lone = subscriber.subscribe();
            assert_eq!(drain_ready(&mut lone), (0..LEN).collect::<Vec<_>>());
            let stats = subscriber.stats();
            assert!(stats.high_water <= cap, "cap {cap}: {stats:?}");
            assert!(stats.kept_for_replay <= replay, "cap {cap}: {stats:?}");
            if replay < cap {
                // A lone branch at the end holds nothing: the kept items
                // never fill the buffer, so none is given up.
                assert_eq!(stats.kept_for_replay, replay, "cap {cap}: {stats:?}");
            }
            // Two branches taking turns, each caught up in turn.
            let (mut a, mut b) = (subscriber.subscribe(), subscriber.subscribe());
            let kept = stats.kept_for_replay as u64;
            for expected in LEN - kept..LEN {
                assert_eq!(read_now(&mut a, 1), [expected]);
                assert_eq!(read_now(&mut b, 1), [expected]);
            }
            assert_eq!(
                (poll_once(&mut a), poll_once(&mut b)),
                (Poll::Ready(None), Poll::Ready(None))
            );
        }
    }
}

#[test]
fn a_lone_branch_over_a_buffer_full_of_kept_items_is_woken_by_the_next_item() {
    let cap = 4;
    let (tx, rx) = mpsc::unbounded::<u64>();
    let subscriber = rx.share_replay(cap, cap);
    let mut lone = subscriber.subscribe();
    let mut task = spawn(());
    let mut sent = 0;
    for round in 0..5 {
        for _ in 0..cap {
            tx.unbounded_send(sent).unwrap();
            sent += 1;
        }
        for expected in sent - cap as u64..sent {
            assert_eq!(
                poll(&mut task, &mut lone),
                Poll::Ready(Some(expected)),
                "round {round}"
            );
        }
        // Waiting for the upstream, never for room.
        assert_eq!(poll(&mut task, &mut lone), Poll::Pending);
        let stats = subscriber.stats();
        assert!(
            stats.buffered <= cap && stats.kept_for_replay == stats.buffered,
            "{stats:?}"
        );
        tx.unbounded_send(sent).unwrap();
        sent += 1;
        assert!(task.is_woken(), "round {round}: the item did not wake it");
        assert_eq!(poll(&mut task, &mut lone), Poll::Ready(Some(sent - 1)));
    }
}

/// An item that runs the hook it shares with its clones, if one is set, the
/// first time one of them is dropped (while it is still alive).
#[derive(Clone)]
struct Noted {
    tracked: Tracked,
    on_drop: Hook,
}

/// The items `0..len`, tracked by `tracker`, sharing `hook`.
fn noted(
    tracker: &Arc<Tracker>,
    hook: &Hook,
    len: u64,
) -> impl Stream<Item = Noted> + Send + Unpin {
    let (tracker, hook) = (Arc::clone(tracker), Arc::clone(hook));
    stream::iter((0..len).map(move |value| Noted {
        tracked: tracker.item(value),
        on_drop: Arc::clone(&hook),
    }))
}

impl Drop for Noted {
    fn drop(&mut self) {
        let hook = self.on_drop.lock().unwrap().take();
        if let Some(mut hook) = hook {
            hook();
        }
    }
}

/// Capacity 1, replay 1: both branches have read item 0, which is kept and
/// fills the buffer. `a` evicts it to pull item 1; while it is being dropped,
/// its room is still counted: `b`, polled from its `Drop`, waits, and is
/// woken once it is gone.
#[test]
fn an_evicted_kept_item_keeps_its_room_until_it_is_dropped() {
    hang_guard(|| {
        let tracker = Tracker::new();
        let hook = Hook::default();
        let items = noted(&tracker, &hook, 4);
        let subscriber = items.share_replay(1, 1);
        let (mut a, b) = (subscriber.subscribe(), subscriber.subscribe());
        let b = support::share(b);
        assert_eq!(read_now(&mut a, 1)[0].tracked.value, 0);
        let item = read_now(b.lock().unwrap().as_mut().unwrap(), 1);
        assert_eq!(item[0].tracked.value, 0);
        drop(item);
        assert_eq!(subscriber.stats().kept_for_replay, 1);
        assert_eq!(tracker.live(), 1);

        let flag = WakeFlag::new();
        let seen = Arc::new(Mutex::new(None));
        set_hook(&hook, {
            let (b, seen, waker, tracker) = (
                Arc::clone(&b),
                Arc::clone(&seen),
                flag.waker(),
                Arc::clone(&tracker),
            );
            move || {
                let polled = poll_with(b.lock().unwrap().as_mut().unwrap(), &waker);
                let polled = polled.map(|item| item.map(|item| item.tracked.value));
                *seen.lock().unwrap() = Some((polled, tracker.live()));
            }
        });
        assert_eq!(read_now(&mut a, 1)[0].tracked.value, 1);
        assert_eq!(
            seen.lock().unwrap().take(),
            Some((Poll::Pending, 1)),
            "polled while item 0 was being dropped, b must wait for its room"
        );
        assert!(flag.is_woken(), "b is woken once item 0 is gone");
        let mut b = take(&b);
        assert_eq!(read_now(&mut b, 1)[0].tracked.value, 1);
        clear_hook(&hook);
        drop((a, b, subscriber));
        assert_eq!(tracker.live(), 0);
    });
}

/// Capacity 8, replay 6, two branches that have read everything: the 6 kept
/// items leave room for a batch of 2 at most. The batch `a` pulls pushes 2
/// kept items out of the window; while they are being dropped, they still
/// count, so what `a` keeps of the batch must fit in the room left beside
/// them: at most `cap` items inside, with the one `a` is about to yield
/// beside them.
#[test]
fn the_kept_items_a_batch_pushes_out_count_until_they_are_dropped() {
    const CAP: usize = 8;
    let tracker = Tracker::new();
    let hook = Hook::default();
    let items = noted(&tracker, &hook, 100);
    let subscriber = items.share_replay(CAP, 6);
    let (mut a, mut b) = (subscriber.subscribe(), subscriber.subscribe());
    let mut next = 0;
    while next < CAP as u64 || a.lag() + b.lag() > 0 {
        assert_eq!(read_now(&mut a, 1)[0].tracked.value, next);
        assert_eq!(read_now(&mut b, 1)[0].tracked.value, next);
        next += 1;
        assert!(next < 50, "a and b never both caught up");
    }
    // Each snapshot makes its taker's count exact: the second is exact.
    let _ = a.stats();
    let stats = b.stats();
    assert_eq!(
        (stats.buffered, stats.kept_for_replay, stats.read_ahead),
        (6, 6, 0),
        "{stats:?}"
    );
    assert_eq!(tracker.live(), 6);

    let live = Arc::new(Mutex::new(None));
    set_hook(&hook, {
        let (tracker, live) = (Arc::clone(&tracker), Arc::clone(&live));
        move || *live.lock().unwrap() = Some(tracker.live())
    });
    let item = read_now(&mut a, 1);
    assert_eq!(item[0].tracked.value, next);
    let live = live
        .lock()
        .unwrap()
        .take()
        .expect("a's poll dropped kept items");
    assert!(
        live <= CAP + 1,
        "{live} items alive while the kept ones pushed out were dropped: more than cap {CAP} and the one yielded"
    );
    clear_hook(&hook);
    let stats = a.stats();
    assert!(stats.buffered + stats.read_ahead <= CAP, "{stats:?}");
}

// ----------------------------------------------------------- memory bound

/// Random schedules of subscribes, polls, drops and lossy turns over a
/// replaying fanout: at every step at most `cap` items are alive (each item
/// yielded is dropped at once), and, whenever an exact snapshot shows
/// nothing read ahead, the items kept for replay are exactly those every
/// branch has passed.
#[test]
fn kept_items_stay_within_the_memory_bound_at_every_step() {
    use support::model::Handle;
    let seeds = if cfg!(debug_assertions) { 60 } else { 600 };
    for seed in 0..seeds {
        let mut rng = Rng::new(seed);
        let cap = 1 + rng.below(12);
        let replay = rng.below(cap + 1);
        let tracker = Tracker::new();
        let subscriber = tracker.stream(100_000).share_replay(cap, replay);
        let mut handles: Vec<Handle<_>> = Vec::new();
        let mut most_kept = 0;
        for step in 0..400 {
            match rng.below(10) {
                0 | 1 if handles.len() < 4 => handles.push(Handle::new(subscriber.subscribe())),
                2 if !handles.is_empty() => drop(handles.remove(rng.below(handles.len()))),
                3 if !handles.is_empty() => {
                    let i = rng.below(handles.len());
                    handles[i].make_lossy();
                }
                _ if !handles.is_empty() => {
                    let i = rng.below(handles.len());
                    let (_, item) = handles[i].poll();
                    drop(item);
                }
                _ => {}
            }
            let live = tracker.live();
            assert!(
                live <= cap,
                "seed {seed}, step {step}: {live} alive, cap {cap}"
            );
            let stats = if handles.is_empty() {
                subscriber.stats()
            } else {
                synced_stats(&handles)
            };
            assert!(
                stats.kept_for_replay <= replay.min(stats.buffered),
                "seed {seed}: {stats:?}"
            );
            if stats.read_ahead == 0 {
                let most_lag = stats
                    .branches
                    .iter()
                    .map(|branch| branch.lag)
                    .max()
                    .unwrap_or(0);
                assert_eq!(
                    stats.kept_for_replay,
                    stats.buffered - most_lag,
                    "seed {seed}, step {step}: {stats:?}"
                );
                assert_eq!(live, stats.buffered, "seed {seed}, step {step}");
            }
            most_kept = most_kept.max(stats.kept_for_replay);
        }
        assert!(
            replay == 0 || most_kept > 0,
            "seed {seed}: nothing was ever kept"
        );
        drop((handles, subscriber));
        assert_eq!(tracker.live(), 0);
    }
}

// ------------------------------------------------------- kept_for_replay

#[test]
fn kept_for_replay_counts_exactly_the_items_every_branch_has_taken_in_the_window() {
    let (tx, rx) = mpsc::unbounded::<u64>();
    let subscriber = rx.share_replay(16, 5);
    let mut first = subscriber.subscribe();
    let mut task = spawn(());
    let mut send_and_read = |values: std::ops::Range<u64>, branch: &mut Branch<_>| {
        for value in values.clone() {
            tx.unbounded_send(value).unwrap();
        }
        for value in values {
            assert_eq!(poll(&mut task, branch), Poll::Ready(Some(value)));
        }
        assert_eq!(poll(&mut task, branch), Poll::Pending);
    };
    assert_eq!(subscriber.stats().kept_for_replay, 0);
    send_and_read(0..3, &mut first);
    let stats = subscriber.stats();
    assert_eq!((stats.buffered, stats.kept_for_replay), (3, 3));
    send_and_read(3..7, &mut first);
    let stats = first.stats();
    assert_eq!(
        (stats.buffered, stats.kept_for_replay, stats.pulled),
        (5, 5, 7)
    );
    // A new branch has them all still to read: nothing is kept only for
    // replay while it has not taken them.
    let mut late = subscriber.subscribe();
    let stats = late.stats();
    assert_eq!(
        (stats.kept_for_replay, entry(&stats, late.id()).lag),
        (0, 5)
    );
    for expected in 2..7 {
        assert_eq!(read_now(&mut late, 1), [expected]);
        // Only `late` holds read-ahead, and its own snapshot is exact: what
        // it has not taken yet is its lag less its read-ahead.
        let stats = late.stats();
        let untaken = entry(&stats, late.id()).lag - stats.read_ahead;
        assert_eq!(stats.kept_for_replay, stats.buffered - untaken, "{stats:?}");
        assert_eq!(subscriber.stats().kept_for_replay, stats.kept_for_replay);
    }
    assert_eq!(subscriber.stats().kept_for_replay, 5);
    let tap = late.into_lossy();
    assert_eq!(tap.stats().kept_for_replay, 5);
    drop((first, tap));
    drop(tx);
    let again = subscriber.subscribe();
    assert_eq!(collect_all([again]), [[2, 3, 4, 5, 6]]);
    assert_eq!(
        subscriber.stats().kept_for_replay,
        5,
        "the end needed no room"
    );
}

#[test]
fn without_replay_nothing_is_kept() {
    let [a, b] = stream::iter(0..50u64).fanout_array(8);
    let subscriber = a.subscriber();
    collect_all([a, b]);
    let stats = subscriber.stats();
    assert_eq!(
        (stats.buffered, stats.kept_for_replay, stats.pulled),
        (0, 0, 50)
    );
}

// ---------------------------------------------------------------- clones

#[test]
fn the_last_reader_of_an_item_in_the_replay_window_clones_it() {
    let tracker = Tracker::counting_each();
    let subscriber = tracker.stream(20).share_replay(8, 3);
    let (mut fast, mut slow) = (subscriber.subscribe(), subscriber.subscribe());
    let mut task = spawn(());
    let mut held = Vec::new();
    while let Poll::Ready(Some(item)) = poll(&mut task, &mut fast) {
        held.push(item);
    }
    assert_eq!(
        values(&held),
        (0..8).collect::<Vec<_>>(),
        "`cap` ahead of `slow`"
    );
    // `slow` reads items 0..5 after they left the window of the latest 3:
    // as their last reader, it takes them by move; items 5..8 it clones,
    // since the fanout keeps them.
    held.extend(read_now(&mut slow, 8));
    assert_eq!(tracker.live(), 8 + 8 + 3, "every copy is alive");
    // So each was cloned at least once, and 5..8 twice; at most n - 1 = 1
    // times out of the window, n = 2 in it.
    let clones: Vec<_> = (0..8).map(|value| tracker.clones_of(value)).collect();
    assert_eq!(clones, [1, 1, 1, 1, 1, 2, 2, 2]);
    // A late branch clones the kept items once more; they stay kept.
    let mut late = subscriber.subscribe();
    held.extend(read_now(&mut late, 3));
    assert_eq!(values(&held[16..]), [5, 6, 7]);
    let clones: Vec<_> = (5..8).map(|value| tracker.clones_of(value)).collect();
    assert_eq!(clones, [3, 3, 3]);
    drop((held, fast, slow, late));
    assert_eq!(tracker.live(), 3);
    drop(subscriber);
    assert_eq!(tracker.live(), 0);

    // A lone branch, n = 1, clones at most once the items it takes in the
    // window, and the latest 3 are kept: cloned once each.
    let tracker = Tracker::counting_each();
    let subscriber = tracker.stream(20).share_replay(8, 3);
    let read = collect_all([subscriber.subscribe()]);
    assert_eq!(tracker.live(), 20 + 3);
    let clones: Vec<_> = (0..20).map(|value| tracker.clones_of(value)).collect();
    assert!(clones.iter().all(|&count| count <= 1), "{clones:?}");
    assert_eq!(clones[17..], [1, 1, 1], "{clones:?}");
    drop((read, subscriber));
    assert_eq!(tracker.live(), 0);
}

// ---------------------------------------------------------------- panics

/// Reads `branch` until it panics; returns what it yielded and the panic's
/// message.
fn read_until_panic<S>(branch: &mut Branch<S>) -> (Vec<u64>, String)
where
    S: Stream<Item = Tracked>,
{
    let mut read = Vec::new();
    loop {
        match catch_unwind(AssertUnwindSafe(|| poll_once(branch))) {
            Ok(Poll::Ready(Some(item))) => read.push(item.value),
            Ok(Poll::Ready(None)) => panic!("the end instead of the upstream's panic"),
            Ok(Poll::Pending) => panic!("Pending instead of the upstream's panic"),
            Err(payload) => return (read, panic_message(payload)),
        }
    }
}

#[test]
fn an_upstream_panic_reaches_the_branches_subscribed_afterwards() {
    let tracker = Tracker::new();
    let (upstream, counts, dropped) = panicking_upstream(&tracker, 3, "boom");
    let subscriber = upstream.share_replay(8, 2);
    let mut first = subscriber.subscribe();
    assert_eq!(
        read_until_panic(&mut first),
        (vec![0, 1, 2], "boom".to_owned())
    );
    assert!(dropped.load(Ordering::SeqCst));
    let polls = counts.polls();
    let (read, message) = read_until_panic(&mut subscriber.subscribe());
    assert_eq!(read, [1, 2], "the replay first");
    assert!(message.contains("panicked"), "{message}");
    drop(first);
    let (read, _) = read_until_panic(&mut subscriber.subscribe());
    assert_eq!(read, [1, 2], "with no branch left too");
    assert_eq!(counts.polls(), polls);
    drop(subscriber);
    assert_eq!(tracker.live(), 0);

    let (upstream, _, _) = panicking_upstream(&tracker, 3, "boom");
    let subscriber = upstream.share(8);
    read_until_panic(&mut subscriber.subscribe());
    assert_eq!(read_until_panic(&mut subscriber.subscribe()).0, [0u64; 0]);
}

/// A branch subscribes after a batch whose end panicked was pushed, while
/// the first branch has not read past it: whoever reads past the items first
/// gets the upstream's own payload, the other one the fanout's message.
#[test]
fn a_branch_subscribed_while_a_panic_is_held_gets_it_or_the_fanouts_message() {
    let tracker = Tracker::new();
    let (upstream, _, _) = panicking_upstream(&tracker, 3, "boom");
    let subscriber = upstream.share(16);
    let mut first = subscriber.subscribe();
    assert_eq!(read_now(&mut first, 1)[0].value, 0);
    let mut late = subscriber.subscribe();
    let start = start_of(&late.stats(), late.id());
    let (late_read, late_message) = read_until_panic(&mut late);
    let (first_read, first_message) = read_until_panic(&mut first);
    assert_eq!(late_read, (start..3).collect::<Vec<_>>());
    assert_eq!(first_read, (1..3).collect::<Vec<_>>());
    let boom = [&late_message, &first_message]
        .iter()
        .filter(|message| message.as_str() == "boom")
        .count();
    assert_eq!(boom, 1, "{late_message:?}, {first_message:?}");
    drop((first, late, subscriber));
    assert_eq!(tracker.live(), 0);
}
