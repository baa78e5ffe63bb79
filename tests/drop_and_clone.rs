//! Dropping a branch detaches it at once; cloning a branch forks it at its
//! position, and the fork counts for backpressure like any other branch.

mod support;

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use fanout::{Branch, StreamExt as _};
use futures::executor::block_on;
use futures::future::join_all;
use futures::stream::{self, FusedStream, Stream};
use futures::task::ArcWake;
use futures::StreamExt;
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready_eq};

use support::{collect_all, poll_once, values, CountingPolls, Tracked, Tracker};

type Numbers = stream::Iter<Range<u64>>;
type CountedNumbers = CountingPolls<Numbers>;

/// Reads until the branch waits or ends; returns what it read.
fn drain_ready<S: Stream + Unpin>(stream: &mut S) -> Vec<S::Item> {
    let mut items = Vec::new();
    while let Poll::Ready(Some(item)) = poll_once(stream) {
        items.push(item);
    }
    items
}

/// Runs `branches` to their ends together and checks that branch `i`
/// yields the items `expected[i]`.
fn assert_read_to_the_end<S, const N: usize>(branches: [S; N], expected: [Range<u64>; N])
where
    S: Stream<Item = u64>,
{
    let outputs = collect_all(branches);
    for (i, (output, expected)) in outputs.into_iter().zip(expected).enumerate() {
        assert_eq!(output, expected.collect::<Vec<_>>(), "branch {i}");
    }
}

/// Reads `branch`, the only one left, to its end, checks that it yields
/// the items `expected` and takes them by move (no clone), and returns them.
fn read_alone_to_the_end<S>(
    tracker: &Tracker,
    branch: &mut Branch<S>,
    expected: Range<u64>,
) -> Vec<Tracked>
where
    S: Stream<Item = Tracked>,
{
    let clones = tracker.clones();
    let items = block_on(branch.collect::<Vec<_>>());
    assert_eq!(values(&items), expected.collect::<Vec<_>>());
    assert_eq!(
        tracker.clones(),
        clones,
        "a lone branch takes items by move"
    );
    items
}

// ---------------------------------------------------------------- dropping

#[test]
fn dropping_the_slow_branch_releases_its_unread_items_at_once() {
    let tracker = Tracker::new();
    let (mut fast, slow) = tracker.stream(20).tee(4);
    let read = drain_ready(&mut fast);
    assert_eq!(read.len(), 4);
    drop(read);
    assert_eq!(tracker.live(), 4, "the slow branch's unread items");
    assert_eq!(
        poll_once(&mut fast).map(|item| item.is_some()),
        Poll::Pending
    );

    drop(slow);
    assert_eq!(tracker.live(), 0);
    assert_eq!(fast.lag(), 0);

    // Alone now: the fast branch reads the rest, by move.
    read_alone_to_the_end(&tracker, &mut fast, 4..20);
}

#[test]
fn dropping_the_fast_branch_keeps_the_items_of_the_slow_one() {
    let tracker = Tracker::new();
    let (mut fast, mut slow) = tracker.stream(10).tee(4);
    drop(drain_ready(&mut fast));
    assert_eq!(tracker.live(), 4);
    drop(fast);
    assert_eq!(tracker.live(), 4);
    assert_eq!(slow.lag(), 4);
    let all = read_alone_to_the_end(&tracker, &mut slow, 0..10);
    drop(all);
    assert_eq!(tracker.live(), 0);
}

#[test]
fn dropping_the_slowest_branch_wakes_a_branch_waiting_for_room() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..10u64));
    let (fast, slow) = upstream.tee(2);
    let mut fast = spawn(fast);
    assert_ready_eq!(fast.poll_next(), Some(0));
    assert_ready_eq!(fast.poll_next(), Some(1));
    assert_pending!(fast.poll_next());
    assert!(!fast.is_woken());

    drop(slow);
    assert!(fast.is_woken(), "the dropped branch freed the whole buffer");
    for expected in 2..10 {
        assert_ready_eq!(fast.poll_next(), Some(expected));
    }
    assert_ready_eq!(fast.poll_next(), None);
    assert_eq!(counts.polls(), 11);
}

#[test]
fn dropping_a_branch_that_is_not_the_slowest_leaves_the_others_held_back() {
    let [mut fast, middle, mut slow]: [_; 3] =
        stream::iter(0..10u64).fanout(3, 2).try_into().unwrap();
    let mut middle = middle;
    assert_eq!(drain_ready(&mut fast), [0, 1]);
    assert_eq!(poll_once(&mut middle), Poll::Ready(Some(0)));
    drop(middle);
    // `slow` still holds both items.
    assert_eq!(poll_once(&mut fast), Poll::Pending);
    assert_eq!(slow.lag(), 2);
    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut fast), Poll::Ready(Some(2)));
}

#[test]
fn dropping_an_unpolled_branch_stops_it_holding_the_others_back() {
    for n in [2, 3, 5] {
        let (upstream, counts) = CountingPolls::new(stream::iter(0..50u64));
        let mut branches = upstream.fanout(n, 1);
        let mut first = branches.remove(0);
        assert_eq!(poll_once(&mut first), Poll::Ready(Some(0)));
        assert_eq!(poll_once(&mut first), Poll::Pending);
        drop(branches);
        assert_eq!(first.lag(), 0);
        assert_eq!(
            block_on((&mut first).collect::<Vec<_>>()),
            (1..50).collect::<Vec<_>>()
        );
        assert_eq!(counts.polls(), 51);
    }
}

#[test]
fn the_last_branch_standing_reads_without_ever_waiting() {
    // Drop branches one by one, in several orders, while the rest read.
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
        let tracker = Tracker::new();
        let mut branches: Vec<Option<_>> = tracker
            .stream(40)
            .fanout(4, 3)
            .into_iter()
            .map(Some)
            .collect();
        let mut last = branches.pop().unwrap().unwrap();
        let mut last_read = Vec::new();
        for victim in order {
            // Everyone still alive reads what it can.
            for branch in branches.iter_mut().flatten() {
                drop(drain_ready(branch));
            }
            last_read.extend(drain_ready(&mut last).into_iter().map(|item| item.value));
            branches[victim] = None;
        }
        // Alone: never Pending, to the end.
        loop {
            match poll_once(&mut last) {
                Poll::Ready(Some(item)) => last_read.push(item.value),
                Poll::Ready(None) => break,
                Poll::Pending => panic!("the last branch waited for a dropped one"),
            }
        }
        assert_eq!(last_read, (0..40).collect::<Vec<_>>());
        assert_eq!(tracker.live(), 0);
    }
}

#[test]
fn dropping_a_pending_next_future_loses_no_item() {
    let (mut fast, mut slow) = stream::iter(0..5u64).tee(1);
    assert_eq!(block_on(fast.next()), Some(0));
    {
        let mut next = spawn(fast.next());
        assert_pending!(next.poll());
    }
    assert_eq!(block_on(slow.next()), Some(0));
    assert_eq!(block_on(fast.next()), Some(1));
    {
        // Dropped after it was woken, before it was polled again.
        let mut next = spawn(fast.next());
        assert_pending!(next.poll());
        assert_eq!(block_on(slow.next()), Some(1));
        assert!(next.is_woken());
    }
    let (fast, slow) = block_on(futures::future::join(
        fast.collect::<Vec<_>>(),
        slow.collect::<Vec<_>>(),
    ));
    assert_eq!(fast, [2, 3, 4]);
    assert_eq!(slow, [2, 3, 4]);
}

/// A waker that, when woken, drops the branch it holds.
struct DropOnWake {
    branch: Mutex<Option<Branch<Numbers>>>,
}

impl ArcWake for DropOnWake {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        let branch = arc_self.branch.lock().unwrap().take();
        drop(branch);
    }
}

/// A waker that, when woken, polls the branch it holds.
struct PollOnWake {
    branch: Mutex<Branch<CountedNumbers>>,
    got: Mutex<Vec<Poll<Option<u64>>>>,
}

impl ArcWake for PollOnWake {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        let polled = poll_once(&mut *arc_self.branch.lock().unwrap());
        arc_self.got.lock().unwrap().push(polled);
    }
}

#[test]
fn a_waker_may_drop_a_branch_of_the_same_fanout() {
    let (mut fast, mut slow) = stream::iter(0..10u64).tee(2);
    assert_eq!(drain_ready(&mut fast), [0, 1]);
    // A fork at `fast`'s position, held by the waker `fast` waits with.
    let holder = Arc::new(DropOnWake {
        branch: Mutex::new(Some(fast.clone())),
    });
    let waker = futures::task::waker(Arc::clone(&holder));
    assert_eq!(
        fast.poll_next_unpin(&mut Context::from_waker(&waker)),
        Poll::Pending
    );
    assert!(holder.branch.lock().unwrap().is_some());

    // `slow` frees a slot: `fast`'s waker runs, and drops the fork, which
    // takes the fanout's lock; so the waker must run with no lock held.
    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(0)));
    assert!(holder.branch.lock().unwrap().is_none(), "the waker ran");

    assert_eq!(poll_once(&mut fast), Poll::Ready(Some(2)));
    assert_read_to_the_end([fast, slow], [3..10, 1..10]);
}

#[test]
fn a_waker_may_poll_a_branch_of_the_same_fanout() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..10u64));
    let (mut fast, mut slow) = upstream.tee(2);
    assert_eq!(drain_ready(&mut fast), [0, 1]);
    let poller = Arc::new(PollOnWake {
        branch: Mutex::new(fast.clone()),
        got: Mutex::new(Vec::new()),
    });
    let waker = futures::task::waker(Arc::clone(&poller));
    assert_eq!(
        fast.poll_next_unpin(&mut Context::from_waker(&waker)),
        Poll::Pending
    );
    // `slow` frees a slot: the waker polls the fork from inside the wake-up,
    // and the fork pulls item 2 from the upstream.
    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(0)));
    assert_eq!(*poller.got.lock().unwrap(), [Poll::Ready(Some(2))]);
    assert_eq!(counts.polls(), 3);
    assert_eq!(poll_once(&mut fast), Poll::Ready(Some(2)));
    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(1)));
    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(2)));
}

// ----------------------------------------------------------------- cloning

#[test]
fn a_clone_of_a_branch_mid_way_yields_the_same_remaining_items() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..10u64));
    let (mut a, b) = upstream.tee(8);
    assert_eq!(block_on((&mut a).take(3).collect::<Vec<_>>()), [0, 1, 2]);
    let polls = counts.polls();
    let c = a.clone();
    assert_eq!(counts.polls(), polls, "forking polls nothing");
    assert_eq!(c.lag(), a.lag());
    assert_eq!(c.size_hint(), a.size_hint());
    assert!(!c.is_terminated());
    assert_eq!(c.capacity(), 8);
    assert_read_to_the_end([a, b, c], [3..10, 0..10, 3..10]);
    assert_eq!(counts.polls(), 11);
}

#[test]
fn a_clone_of_a_lagging_branch_sees_the_buffered_items() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..10u64));
    let (mut fast, slow) = upstream.tee(5);
    assert_eq!(drain_ready(&mut fast), [0, 1, 2, 3, 4]);
    let mut fork = slow.clone();
    assert_eq!(fork.lag(), 5);
    assert_eq!(drain_ready(&mut fork), [0, 1, 2, 3, 4]);
    // The fork is now 5 ahead of `slow`: it waits too.
    assert_eq!(poll_once(&mut fork), Poll::Pending);
    assert_eq!(counts.polls(), 5);
    assert_read_to_the_end([fast, slow, fork], [5..10, 0..10, 5..10]);
}

#[test]
fn a_clone_of_a_terminated_branch_is_terminated() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..3u64));
    let (mut a, mut b) = upstream.tee(4);
    assert_eq!(block_on((&mut a).collect::<Vec<_>>()), [0, 1, 2]);
    assert!(a.is_terminated());
    let mut fork = a.clone();
    assert!(fork.is_terminated());
    assert_eq!(fork.lag(), 0);
    assert_eq!(poll_once(&mut fork), Poll::Ready(None));
    assert_eq!(poll_once(&mut fork), Poll::Ready(None));
    // The other branch still gets everything.
    assert_eq!(block_on((&mut b).collect::<Vec<_>>()), [0, 1, 2]);
    assert_eq!(counts.polls(), 4);
}

#[test]
fn a_clone_taken_at_the_end_after_the_upstream_ended_yields_none() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..3u64));
    let (mut a, mut b) = upstream.tee(4);
    // `a` reads every item but not the end; `b` meets the end.
    for expected in 0..3 {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(expected)));
    }
    assert_eq!(block_on((&mut b).collect::<Vec<_>>()), [0, 1, 2]);
    assert!(!a.is_terminated());
    let mut fork = a.clone();
    assert!(!fork.is_terminated());
    assert_eq!(poll_once(&mut fork), Poll::Ready(None));
    assert!(fork.is_terminated());
    assert_eq!(poll_once(&mut a), Poll::Ready(None));
    assert_eq!(counts.polls(), 4);
}

#[test]
fn a_clone_that_does_not_read_holds_the_others_back() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..10u64));
    let [mut a]: [_; 1] = upstream.fanout(1, 2).try_into().unwrap();
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(0)));
    let mut fork = a.clone();
    // Exactly `cap` items past the fork, then `a` waits.
    assert_eq!(drain_ready(&mut a), [1, 2]);
    assert_eq!(poll_once(&mut a), Poll::Pending);
    assert_eq!(counts.polls(), 3);
    assert_eq!(fork.lag(), 2);

    let mut a = spawn(a);
    assert_pending!(a.poll_next());
    assert_eq!(poll_once(&mut fork), Poll::Ready(Some(1)));
    assert!(a.is_woken());
    assert_ready_eq!(a.poll_next(), Some(3));
    assert_pending!(a.poll_next());

    // Dropping the fork releases `a` altogether.
    drop(fork);
    assert!(a.is_woken());
    assert_eq!(
        block_on((&mut *a).collect::<Vec<_>>()),
        (4..10).collect::<Vec<_>>()
    );
}

#[test]
fn a_clone_of_a_waiting_branch_waits_too() {
    let (mut fast, mut slow) = stream::iter(0..10u64).tee(2);
    assert_eq!(drain_ready(&mut fast), [0, 1]);
    assert_eq!(poll_once(&mut fast), Poll::Pending);
    let mut fork = spawn(fast.clone());
    assert_pending!(fork.poll_next());
    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(0)));
    assert!(fork.is_woken());
    assert_ready_eq!(fork.poll_next(), Some(2));
    assert_eq!(poll_once(&mut fast), Poll::Ready(Some(2)));
    assert_read_to_the_end([fast, slow, fork.into_inner()], [3..10, 1..10, 3..10]);
}

#[test]
fn clones_of_clones_all_see_every_remaining_item() {
    let tracker = Tracker::new();
    let [mut root]: [_; 1] = tracker.stream(30).fanout(1, 3).try_into().unwrap();
    let mut forks = Vec::new();
    for start in 0..5u64 {
        assert_eq!(block_on(root.next()).unwrap().value, start);
        let fork = root.clone();
        let fork_of_fork = fork.clone();
        forks.push((start + 1, fork));
        forks.push((start + 1, fork_of_fork));
        // Every fork must read before `root` can go further.
        for (_, fork) in &mut forks {
            let _ = drain_ready(fork);
        }
    }
    // The root reads along with the forks: it holds them back too.
    let (root_rest, remaining) = block_on(futures::future::join(
        root.map(|item| item.value).collect::<Vec<_>>(),
        join_all(forks.into_iter().map(|(start, fork)| async move {
            (start, fork.map(|item| item.value).collect::<Vec<_>>().await)
        })),
    ));
    assert_eq!(root_rest, (5..30).collect::<Vec<_>>());
    for (start, items) in remaining {
        // Each fork drained some items itself; what is left ends at 29 and
        // is contiguous.
        assert_eq!(items.last(), Some(&29), "fork from {start}");
        let first = items[0];
        assert!(first >= start);
        assert_eq!(items, (first..30).collect::<Vec<_>>());
    }
    assert_eq!(tracker.live(), 0);
}

#[test]
fn cloning_and_dropping_forks_leaves_the_fanout_consistent() {
    let tracker = Tracker::new();
    let (mut a, mut b) = tracker.stream(100).tee(3);
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for round in 0..100 {
        let fork = if round % 2 == 0 { a.clone() } else { b.clone() };
        got_a.extend(drain_ready(&mut a).into_iter().map(|item| item.value));
        drop(fork);
        got_b.extend(drain_ready(&mut b).into_iter().map(|item| item.value));
        assert!(tracker.live() <= 3);
    }
    got_a.extend(block_on(a.map(|item| item.value).collect::<Vec<_>>()));
    got_b.extend(block_on(b.map(|item| item.value).collect::<Vec<_>>()));
    assert_eq!(got_a, (0..100).collect::<Vec<_>>());
    assert_eq!(got_b, (0..100).collect::<Vec<_>>());
    assert_eq!(tracker.live(), 0);
}
