//! Each item is stored once and cloned at most `n - 1` times, at most `cap`
//! items are alive inside the fanout (buffered, read ahead, or being
//! dropped), nothing leaks, and the upstream is dropped when it ends or when
//! the last branch goes.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::thread;
use std::time::Duration;

use fanout::{Branch, Stats, StreamExt as _};
use futures::channel::mpsc;
use futures::executor::block_on;
use futures::future::join_all;
use futures::stream::{self, Stream};
use futures::StreamExt;

use support::{
    collect_all, entry, first_batch, hang_guard, poll_once, values, CountingPolls, DropFlag,
    Progress, Rng, Tracked, Tracker,
};

/// A snapshot in which every branch's read-ahead is exact: a snapshot counts
/// each branch's read-ahead as of its latest visit to the buffer, exactly for
/// the branch that takes it, so each branch takes one in turn and the last
/// one is exact for all.
fn synced_stats<S: Stream>(branches: &[Branch<S>]) -> Stats {
    branches
        .iter()
        .map(Branch::stats)
        .last()
        .expect("at least one branch")
}

#[test]
fn each_item_is_cloned_exactly_n_minus_one_times() {
    const LEN: u64 = 50;
    for n in [1, 2, 3, 8] {
        for cap in [1, 4, 64] {
            let tracker = Tracker::new();
            let outputs = collect_all(tracker.stream(LEN).fanout(n, cap));
            for output in &outputs {
                assert_eq!(values(output), (0..LEN).collect::<Vec<_>>());
            }
            assert_eq!(
                tracker.clones(),
                LEN as usize * (n - 1),
                "n = {n}, cap = {cap}"
            );
            // The outputs hold n copies of each item; nothing else does.
            assert_eq!(tracker.live(), LEN as usize * n);
            drop(outputs);
            assert_eq!(tracker.live(), 0, "n = {n}, cap = {cap}");
        }
    }
}

#[test]
fn single_branch_never_clones() {
    let tracker = Tracker::new();
    let [branch]: [_; 1] = tracker.stream(100).fanout(1, 1).try_into().unwrap();
    let mut branch = branch;
    for expected in 0..100 {
        let item = block_on(branch.next()).unwrap();
        assert_eq!(item.value, expected);
        assert_eq!(tracker.live(), 1, "only the item the test holds is alive");
    }
    assert!(block_on(branch.next()).is_none());
    assert_eq!(tracker.clones(), 0);
    assert_eq!(tracker.live(), 0);
}

#[test]
fn clone_count_is_exact_whichever_branch_reads_last() {
    // Uneven, interleaved reading: the branch that reads an item last varies.
    const LEN: u64 = 60;
    for n in [2, 3, 5] {
        for cap in [1, 3, 10] {
            let tracker = Tracker::new();
            let mut branches = tracker.stream(LEN).fanout(n, cap);
            let mut progress = Progress::new(n, LEN, 10_000);
            let mut round = 0usize;
            while progress.unfinished() {
                round += 1;
                for (i, branch) in branches.iter_mut().enumerate() {
                    // Branch i reads on rounds where (round + i) % (i + 1) == 0.
                    if (round + i) % (i + 1) != 0 {
                        continue;
                    }
                    match poll_once(branch) {
                        Poll::Ready(Some(item)) => progress.item(i, item.value),
                        Poll::Ready(None) => progress.end(i),
                        Poll::Pending => {}
                    }
                }
            }
            assert_eq!(
                tracker.clones(),
                LEN as usize * (n - 1),
                "n = {n}, cap = {cap}"
            );
            assert_eq!(tracker.live(), 0);
        }
    }
}

#[test]
fn clone_count_with_a_fork_mid_way() {
    const LEN: u64 = 20;
    let tracker = Tracker::new();
    let (mut a, b) = tracker.stream(LEN).tee(8);
    for expected in 0..3 {
        assert_eq!(block_on(a.next()).unwrap().value, expected);
    }
    // `b` has not polled, so `a` got a clone of every item it took: the
    // three it yielded, and those it holds read ahead.
    let ahead = a.stats().read_ahead;
    assert_eq!(tracker.clones(), 3 + ahead);
    let c = a.clone();
    let outputs = collect_all([a, b, c]);
    assert_eq!(values(&outputs[0]), (3..LEN).collect::<Vec<_>>());
    assert_eq!(values(&outputs[1]), (0..LEN).collect::<Vec<_>>());
    assert_eq!(values(&outputs[2]), (3..LEN).collect::<Vec<_>>());
    // Items 0..3 have two readers, the others three: one clone fewer than
    // readers each, however the fork found `a`'s read-ahead.
    assert_eq!(
        tracker.clones(),
        3 + (LEN as usize - 3) * 2,
        "n - 1 clones per item ({ahead} items were read ahead at the fork)"
    );
    drop(outputs);
    assert_eq!(tracker.live(), 0);
}

#[test]
fn live_items_stay_within_cap_when_one_branch_lags() {
    for cap in [1, 2, 5, 16] {
        let tracker = Tracker::new();
        let (mut fast, mut slow) = tracker.stream(100).tee(cap);
        // The fast branch reads until it waits, dropping what it reads: only
        // the buffer holds items.
        let mut fast_read = 0;
        loop {
            match poll_once(&mut fast) {
                Poll::Ready(Some(item)) => {
                    assert_eq!(item.value, fast_read);
                    fast_read += 1;
                    drop(item);
                    assert!(tracker.live() <= cap);
                }
                Poll::Ready(None) => unreachable!("the slow branch holds the fast one back"),
                Poll::Pending => break,
            }
        }
        assert_eq!(fast_read, cap as u64);
        assert_eq!(tracker.live(), cap, "each item stored once");

        // Many more polls of the fast branch do not grow the buffer.
        for _ in 0..100 {
            assert_eq!(
                poll_once(&mut fast).map(|item| item.is_some()),
                Poll::Pending
            );
        }
        assert_eq!(tracker.live(), cap);

        // The slow branch holds what it reads: live = buffer + held.
        let mut held = Vec::new();
        for expected in 0..cap as u64 {
            let Poll::Ready(Some(item)) = poll_once(&mut slow) else {
                panic!("a buffered item")
            };
            assert_eq!(item.value, expected);
            held.push(item);
            assert_eq!(tracker.live(), cap);
            assert!(tracker.live() <= cap + held.len());
        }
        assert_eq!(slow.lag(), 0);
        // The slow branch took the last copies by move.
        assert_eq!(tracker.clones(), cap);
        drop(held);
        assert_eq!(tracker.live(), 0);
        drop((fast, slow));
        assert_eq!(tracker.live(), 0);
    }
}

#[test]
fn live_items_are_exactly_the_buffer_the_read_ahead_and_what_the_test_holds() {
    const LEN: u64 = 150;
    for n in [2, 3, 4] {
        for cap in [1, 3, 8] {
            let tracker = Tracker::new();
            // Counted: a poll may pull ahead, so the upstream may have
            // yielded more items than the fastest branch has read.
            let (upstream, counts) = CountingPolls::new(tracker.stream(LEN));
            let mut branches = upstream.fanout(n, cap);
            let mut rng = Rng::new(n as u64 * 100 + cap as u64);
            // The test holds the latest item of each branch.
            let mut held: Vec<Option<Tracked>> = (0..n).map(|_| None).collect();
            let mut progress = Progress::new(n, LEN, 100_000);
            while progress.unfinished() {
                let i = if rng.below(3) == 0 { 0 } else { rng.below(n) };
                match poll_once(&mut branches[i]) {
                    Poll::Ready(Some(item)) => {
                        progress.item(i, item.value);
                        held[i] = Some(item);
                    }
                    Poll::Ready(None) => progress.end(i),
                    Poll::Pending => {}
                }
                let holding = held.iter().flatten().count();
                // The upstream has yielded at least what the fastest branch
                // has read, and at most `cap` items past the slowest one.
                let yielded = counts.yielded() as u64;
                assert!(yielded >= progress.fastest());
                assert!(yielded - progress.slowest() <= cap as u64);
                // Every item alive is stored once: in the buffer, in the
                // read-ahead of one branch, or held by the test; and the
                // fanout holds at most `cap` of them.
                let stats = synced_stats(&branches);
                assert_eq!(stats.pulled, yielded);
                let inside = stats.buffered + stats.read_ahead;
                assert!(inside <= cap, "n = {n}, cap = {cap}: {stats:?}");
                assert!(tracker.live() <= cap + holding, "n = {n}, cap = {cap}");
                assert_eq!(
                    tracker.live(),
                    inside + holding,
                    "n = {n}, cap = {cap}: each item stored once"
                );
            }
            drop(held);
            assert_eq!(tracker.live(), 0);
            assert_eq!(tracker.clones(), LEN as usize * (n - 1));
        }
    }
}

#[test]
fn nothing_leaks_when_branches_are_dropped_mid_way() {
    for n in [1, 2, 3] {
        for cap in [1, 4] {
            for reads in 0..6 {
                let tracker = Tracker::new();
                let mut branches = tracker.stream(20).fanout(n, cap);
                // Branch 0 reads ahead as far as it may, then a fork of it.
                for _ in 0..reads {
                    let _ = poll_once(&mut branches[0]);
                }
                let fork = branches[0].clone();
                branches.push(fork);
                assert!(tracker.live() <= cap);
                drop(branches);
                assert_eq!(tracker.live(), 0, "n = {n}, cap = {cap}, reads = {reads}");
            }
        }
    }
}

#[test]
fn nothing_leaks_after_termination() {
    let tracker = Tracker::new();
    let branches = tracker.stream(30).fanout(3, 4);
    let counts = block_on(join_all(branches.into_iter().map(|branch| branch.count())));
    assert_eq!(counts, [30, 30, 30]);
    assert_eq!(tracker.live(), 0);
    assert_eq!(tracker.clones(), 60);
}

#[test]
fn dropping_all_branches_drops_the_upstream_and_the_buffer() {
    let tracker = Tracker::new();
    let (upstream, dropped) = DropFlag::new(tracker.stream(10));
    let (mut fast, slow) = upstream.tee(4);
    for _ in 0..4 {
        drop(block_on(fast.next()));
    }
    assert_eq!(tracker.live(), 4);
    assert!(!dropped.load(Ordering::SeqCst));

    drop(fast);
    assert!(!dropped.load(Ordering::SeqCst), "one branch is left");
    assert_eq!(tracker.live(), 4, "the slow branch has not read them");

    drop(slow);
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(tracker.live(), 0);
}

#[test]
fn dropping_all_branches_unpolled_drops_the_upstream() {
    let (upstream, dropped) = DropFlag::new(stream::iter(0..10));
    let (upstream, counts) = CountingPolls::new(upstream);
    let branches = upstream.fanout(3, 2);
    drop(branches);
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(counts.polls(), 0);
}

#[test]
fn dropping_the_last_fork_drops_the_upstream() {
    let (upstream, dropped) = DropFlag::new(stream::iter(0..10));
    let [a]: [_; 1] = upstream.fanout(1, 2).try_into().unwrap();
    let fork = a.clone();
    drop(a);
    assert!(!dropped.load(Ordering::SeqCst));
    drop(fork);
    assert!(dropped.load(Ordering::SeqCst));
}

#[test]
fn upstream_is_dropped_once_it_ends() {
    // The lib docs: the upstream is dropped once it returned `None`, even
    // while branches still read buffered items.
    let (upstream, dropped) = DropFlag::new(stream::iter(0..3));
    let (mut fast, mut slow) = upstream.tee(4);
    let got = block_on((&mut fast).collect::<Vec<_>>());
    assert_eq!(got, [0, 1, 2]);
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(slow.lag(), 3);
    assert_eq!(block_on((&mut slow).collect::<Vec<_>>()), [0, 1, 2]);
}

#[test]
fn upstream_is_dropped_by_the_batch_that_sees_its_end() {
    // A batch that stops on `None` drops the upstream at once, before the
    // poller has read the rest of the batch. The upstream has one item fewer
    // than the first batch of this fanout (observed), so that the first
    // poll pulls every item and then the end.
    const CAP: usize = 64;
    let batch = first_batch(2, CAP);
    assert!(
        batch >= 3,
        "this test needs a first batch of 3 or more items; with {CAP} free, it was {batch}"
    );
    let len = batch as u64 - 1;
    let (upstream, dropped) = DropFlag::new(stream::iter(0..len));
    let (upstream, counts) = CountingPolls::new(upstream);
    let (mut fast, slow) = upstream.tee(CAP);
    assert_eq!(poll_once(&mut fast), Poll::Ready(Some(0)));
    assert_eq!(counts.polls(), batch, "every item and the end");
    assert!(dropped.load(Ordering::SeqCst));
    assert!(fast.stats().upstream_done);
    assert_eq!((fast.lag() as u64, slow.lag() as u64), (len - 1, len));
    assert_eq!(
        block_on((&mut fast).collect::<Vec<_>>()),
        (1..len).collect::<Vec<_>>()
    );
    assert_eq!(
        block_on(slow.collect::<Vec<_>>()),
        (0..len).collect::<Vec<_>>()
    );
    assert_eq!(counts.polls(), batch);
}

#[test]
fn dropping_all_branches_closes_a_pending_channel_upstream() {
    let (tx, rx) = mpsc::unbounded::<u32>();
    let (mut a, mut b) = rx.tee(2);
    assert_eq!(poll_once(&mut a), Poll::Pending);
    assert_eq!(poll_once(&mut b), Poll::Pending);
    assert!(!tx.is_closed());
    drop(a);
    assert!(!tx.is_closed());
    drop(b);
    assert!(
        tx.is_closed(),
        "the receiver was dropped with the last branch"
    );
}

#[test]
fn large_lag_does_not_grow_memory() {
    // A consumer that never reads keeps at most `cap` items alive, however
    // often the other one polls.
    let tracker = Tracker::new();
    let (upstream, counts) = CountingPolls::new(tracker.stream(1_000_000));
    let (mut fast, stalled) = upstream.tee(32);
    for _ in 0..10_000 {
        match poll_once(&mut fast) {
            Poll::Ready(item) => drop(item),
            Poll::Pending => {}
        }
    }
    assert_eq!(counts.yielded(), 32);
    assert_eq!(tracker.live(), 32);
    assert_eq!(stalled.lag(), 32);
    drop(stalled);
    // The items only the stalled branch had left went with it. Once
    // detached, the fast branch runs freely and alone: every item alive is
    // one it has pulled and not yielded yet, at most `cap` of them, and none
    // is cloned (nobody else reads them).
    assert_eq!(tracker.live(), 0);
    let clones_before = tracker.clones();
    for read in 1..=1_000 {
        assert!(matches!(poll_once(&mut fast), Poll::Ready(Some(_))));
        let lag = fast.lag();
        assert!(lag <= 32);
        assert_eq!(tracker.live(), lag);
        assert_eq!(counts.yielded(), 32 + read + lag);
    }
    assert_eq!(tracker.clones(), clones_before);
    drop(fast);
    assert_eq!(tracker.live(), 0);
}

// ---------------------------------------------------------------------------
// Freed items keep their room until they are gone (issue 9, bug 1)

/// How long an item of the tests below takes to drop: long enough that
/// another thread gets to run while the fanout drops a few of them. Never
/// compared with anything.
const SLOW_DROP: Duration = Duration::from_micros(200);

/// Counts the [`SlowDrop`] items of one test. An item is *inside* the fanout
/// from when it is made (by the upstream, or by a `Clone`) until a consumer
/// takes it out with [`SlowDrop::take_out`], or until its `Drop` (by the
/// fanout) has finished.
#[derive(Debug, Default)]
struct Census {
    inside: AtomicUsize,
    /// While set, `max_inside` and `overdrawn` are kept.
    armed: AtomicBool,
    /// The most items inside at once, observed whenever one is made.
    max_inside: AtomicUsize,
    /// Items the upstream has made.
    made: AtomicUsize,
    /// Items whose `Drop` ran to its end while they were inside.
    dropped_inside: AtomicUsize,
    /// `made` and `dropped_inside` when the census was armed.
    made_base: AtomicUsize,
    dropped_base: AtomicUsize,
    /// The most items the upstream made beyond those dropped inside since
    /// the census was armed, observed whenever it makes one.
    overdrawn: AtomicUsize,
}

impl Census {
    fn new() -> Arc<Self> {
        Arc::default()
    }

    /// An upstream of items `0..`, made as they are polled.
    fn upstream(self: &Arc<Self>) -> impl Stream<Item = SlowDrop> + Send + Unpin {
        let census = Arc::clone(self);
        stream::iter((0..).map(move |value| census.make(value)))
    }

    fn make(self: &Arc<Self>, value: u64) -> SlowDrop {
        let made = self.made.fetch_add(1, Ordering::SeqCst) + 1;
        if self.armed.load(Ordering::SeqCst) {
            let made = made - self.made_base.load(Ordering::SeqCst);
            let freed = self.dropped_inside.load(Ordering::SeqCst)
                - self.dropped_base.load(Ordering::SeqCst);
            self.overdrawn
                .fetch_max(made.saturating_sub(freed), Ordering::SeqCst);
        }
        self.enter();
        SlowDrop {
            value,
            census: Arc::clone(self),
            out: false,
        }
    }

    fn enter(&self) {
        let inside = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        if self.armed.load(Ordering::SeqCst) {
            self.max_inside.fetch_max(inside, Ordering::SeqCst);
        }
    }

    /// Starts watching, from the counts as they are now.
    fn arm(&self) {
        self.made_base
            .store(self.made.load(Ordering::SeqCst), Ordering::SeqCst);
        self.dropped_base
            .store(self.dropped_inside.load(Ordering::SeqCst), Ordering::SeqCst);
        self.max_inside
            .store(self.inside.load(Ordering::SeqCst), Ordering::SeqCst);
        self.overdrawn.store(0, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    fn inside(&self) -> usize {
        self.inside.load(Ordering::SeqCst)
    }
}

/// An item that is slow to drop while it is inside the fanout.
#[derive(Debug)]
struct SlowDrop {
    value: u64,
    census: Arc<Census>,
    /// A consumer took it out: no longer counted, and quick to drop.
    out: bool,
}

impl SlowDrop {
    /// A consumer has it: it no longer counts as inside the fanout.
    fn take_out(mut self) -> u64 {
        self.out = true;
        self.census.inside.fetch_sub(1, Ordering::SeqCst);
        self.value
    }
}

impl Clone for SlowDrop {
    fn clone(&self) -> Self {
        assert!(!self.out, "only the fanout clones items");
        self.census.enter();
        Self {
            value: self.value,
            census: Arc::clone(&self.census),
            out: false,
        }
    }
}

impl Drop for SlowDrop {
    fn drop(&mut self) {
        if self.out {
            return;
        }
        thread::sleep(SLOW_DROP);
        self.census.inside.fetch_sub(1, Ordering::SeqCst);
        self.census.dropped_inside.fetch_add(1, Ordering::SeqCst);
    }
}

/// Issue 9, bug 1: a client that disconnects while it is the slowest. The
/// slow branch is dropped while the fast one, on another thread, waits for
/// room; the `cap` items only the slow branch had left are dropped then, each
/// slowly. The fast branch may refill the buffer only once they are gone: at
/// no moment are more than `cap` items inside the fanout. (Code that wakes
/// the fast branch before it drops the freed items lets it pull a batch into
/// the room of items still being dropped, on its own thread, at once: with
/// 64 items of 200 µs each, it has 13 ms to do so.)
#[test]
fn dropping_the_slowest_branch_reuses_its_room_only_once_its_items_are_gone() {
    hang_guard(|| {
        const CAP: usize = 64;
        const LEN: u64 = 4 * CAP as u64;
        let census = Census::new();
        let (mut fast, slow) = census.upstream().tee(CAP);
        let read = Arc::new(AtomicUsize::new(0));
        let reader = {
            let read = Arc::clone(&read);
            thread::spawn(move || {
                for expected in 0..LEN {
                    let item = block_on(fast.next()).expect("an endless upstream");
                    assert_eq!(item.take_out(), expected);
                    read.fetch_add(1, Ordering::SeqCst);
                }
                fast
            })
        };
        // `fast` reads `cap` items and waits for room: `slow` holds them all.
        while read.load(Ordering::SeqCst) < CAP {
            thread::sleep(Duration::from_millis(1));
        }
        // Not a timed assertion: only to let `fast` get to its wait first.
        thread::sleep(Duration::from_millis(20));
        assert_eq!(read.load(Ordering::SeqCst), CAP, "`slow` holds `fast` back");
        assert_eq!(
            census.inside(),
            CAP,
            "the buffer holds what `slow` has not read"
        );
        // (Armed only now: a branch's poll may make the clone of the item it
        // yields before it hands the item out.)
        census.arm();
        drop(slow);
        let fast = reader.join().expect("the reader thread");
        census.disarm();
        let max = census.max_inside.load(Ordering::SeqCst);
        assert!(
            max <= CAP,
            "{max} items alive inside the fanout at once, with cap {CAP}"
        );
        assert_eq!(census.dropped_inside.load(Ordering::SeqCst), CAP);
        assert_eq!(census.inside(), fast.lag(), "only what `fast` holds ahead");
        drop(fast);
        assert_eq!(census.inside(), 0);
    });
}

/// Issue 9, bug 1, for the items lossy branches give up: the room an item
/// given up frees is reused only once the item is gone. Two backpressure
/// branches read on two threads beside an idle lossy tap, which holds the
/// whole buffer: each item pulled past the full buffer needs an item the tap
/// gives up, so at no moment may the upstream have made more items (since
/// the buffer filled) than the fanout has dropped. (Counted this way rather
/// than as items alive, because each reading thread may hold the clone it is
/// about to yield on top of the full buffer. Code that frees the room before
/// it drops the given-up item lets the other thread pull into it while that
/// item is still being dropped.)
#[test]
fn items_lossy_branches_give_up_keep_their_room_until_they_are_gone() {
    hang_guard(|| {
        const CAP: usize = 8;
        const READS: u64 = 500;
        let census = Census::new();
        let [mut a, mut b, tap]: [_; 3] = census.upstream().fanout(3, CAP).try_into().unwrap();
        let tap = tap.into_lossy();
        // On this thread, until the buffer is full of items only the tap
        // holds, and `a` and `b` have yielded everything pulled.
        let mut next = 0;
        while next < 2 * CAP as u64 || a.lag() + b.lag() > 0 {
            for branch in [&mut a, &mut b] {
                match poll_once(branch) {
                    Poll::Ready(Some(item)) => assert_eq!(item.take_out(), next),
                    other => panic!("nothing makes `a` or `b` wait: {other:?}"),
                }
            }
            next += 1;
            assert!(next < 100 * CAP as u64, "no progress");
        }
        let branches = [a, b];
        let stats = synced_stats(&branches);
        assert_eq!((stats.buffered, stats.read_ahead), (CAP, 0), "{stats:?}");
        assert_eq!(census.inside(), CAP);
        let [a, b] = branches;

        census.arm();
        let readers: Vec<_> = [a, b]
            .into_iter()
            .map(|mut branch| {
                thread::spawn(move || {
                    for expected in next..next + READS {
                        let item = block_on(branch.next()).expect("an endless upstream");
                        assert_eq!(item.take_out(), expected);
                    }
                    branch
                })
            })
            .collect();
        let branches: Vec<_> = readers
            .into_iter()
            .map(|reader| reader.join().expect("a reader thread"))
            .collect();
        census.disarm();
        let overdrawn = census.overdrawn.load(Ordering::SeqCst);
        assert_eq!(
            overdrawn, 0,
            "the upstream made {overdrawn} item(s) into the room of items still being dropped"
        );
        // Every item dropped inside is one the tap gave up.
        let stats = synced_stats(&branches);
        assert_eq!(
            entry(&tap.stats(), tap.id()).missed as usize,
            census.dropped_inside.load(Ordering::SeqCst)
        );
        assert_eq!(census.inside(), stats.buffered + stats.read_ahead);
        drop(branches);
        drop(tap);
        assert_eq!(census.inside(), 0);
    });
}

/// A branch that reads clones while another one polls the upstream may not
/// fill the room that poll is about to push into. Here the upstream itself
/// polls the other branch during the pull, a late subscriber with items to
/// replay and nothing read ahead, while the buffer has room for one batch.
#[test]
fn clones_taken_during_a_pull_leave_room_for_its_batch() {
    type Upstream = std::pin::Pin<Box<dyn Stream<Item = Tracked> + Send>>;
    const CAP: usize = 16;
    let tracker = Tracker::new();
    let during_pull: Arc<std::sync::Mutex<Option<Branch<Upstream>>>> = Arc::default();
    let (hook, items) = (Arc::clone(&during_pull), Arc::clone(&tracker));
    let (mut next, mut polled_it) = (0, false);
    let upstream: Upstream = Box::pin(stream::poll_fn(move |_| {
        if let Some(branch) = hook.lock().unwrap().as_mut().filter(|_| !polled_it) {
            drop(poll_once(branch));
            polled_it = true;
        }
        next += 1;
        Poll::Ready(Some(items.item(next)))
    }));
    let feed = upstream.share_replay(CAP, 3);
    let (mut fast, _idle) = (feed.subscribe(), feed.subscribe());
    let room_for_one_batch = CAP - first_batch(2, CAP);
    for _ in 0..room_for_one_batch {
        assert!(matches!(poll_once(&mut fast), Poll::Ready(Some(_))));
    }
    assert_eq!(feed.stats().pulled, room_for_one_batch as u64);
    *during_pull.lock().unwrap() = Some(feed.subscribe());

    assert!(matches!(poll_once(&mut fast), Poll::Ready(Some(_))));
    assert!(
        tracker.live() <= CAP,
        "{} items alive, cap {CAP}",
        tracker.live()
    );
}
