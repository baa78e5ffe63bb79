//! One bounded buffer: a branch `cap` items ahead of the slowest waits, the
//! upstream is never polled more than `cap` items past the slowest branch
//! (a poll pulls a batch that fits the room), a batch may end on `Pending`,
//! waiting branches are woken when room is freed or the upstream wakes, and
//! creating branches polls nothing.

mod support;

use std::task::Poll;

use fanout::{Branch, StreamExt as _};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream};
use futures::StreamExt;
use tokio_test::task::{spawn, Spawn};
use tokio_test::{assert_pending, assert_ready_eq};

use support::{batch_limit, poll_once, CountingPolls, PollCounts, Progress, Rng};

type Counted = CountingPolls<stream::Iter<std::ops::Range<u64>>>;

/// Fans `0..len` out into `n` branches of capacity `cap`, counting polls.
fn counted(len: u64, n: usize, cap: usize) -> (Vec<Branch<Counted>>, PollCounts) {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..len));
    (upstream.fanout(n, cap), counts)
}

type Channel = Branch<mpsc::UnboundedReceiver<u32>>;

/// Tees an unbounded channel with capacity 4 into two branches, each on its
/// own mock task, and parks both on the empty channel: the first returned
/// polls first, the second last.
fn parked_on_a_channel() -> (mpsc::UnboundedSender<u32>, Spawn<Channel>, Spawn<Channel>) {
    let (tx, rx) = mpsc::unbounded::<u32>();
    let (first, last) = rx.tee(4);
    let mut first = spawn(first);
    let mut last = spawn(last);
    assert_pending!(first.poll_next());
    assert_pending!(last.poll_next());
    (tx, first, last)
}

#[test]
fn creating_branches_polls_nothing() {
    for n in [1, 2, 3, 8] {
        for cap in [1, 2, 64] {
            let (branches, counts) = counted(10, n, cap);
            assert_eq!(counts.polls(), 0);
            // Neither do the accessors, forking, formatting, or dropping.
            for branch in &branches {
                assert_eq!(branch.lag(), 0);
                assert_eq!(branch.capacity(), cap);
                assert_eq!(branch.size_hint(), (10, Some(10)));
                assert!(!branch.is_terminated());
                let _ = format!("{branch:?}");
            }
            let fork = branches[0].clone();
            drop(fork);
            drop(branches);
            assert_eq!(counts.polls(), 0);
        }
    }

    let (upstream, counts) = CountingPolls::new(stream::iter(0..10u64));
    let (a, b) = upstream.tee(3);
    assert_eq!(counts.polls(), 0);
    drop((a, b));

    let (upstream, counts) = CountingPolls::new(stream::iter(0..10u64));
    let branches = fanout::fanout(upstream, 4, 3);
    assert_eq!(counts.polls(), 0);
    drop(branches);
    assert_eq!(counts.polls(), 0);
}

#[test]
fn fast_branch_stops_exactly_cap_items_ahead_of_the_slow_one() {
    const LEN: u64 = 10;
    let (branches, counts) = counted(LEN, 2, 3);
    let [mut fast, mut slow]: [_; 2] = branches.try_into().unwrap();

    // The fast branch runs until it waits.
    let mut read = Vec::new();
    while let Poll::Ready(item) = poll_once(&mut fast) {
        read.push(item.expect("the upstream has 10 items"));
    }
    assert_eq!(read, [0, 1, 2]);
    assert_eq!(counts.yielded(), 3);
    assert_eq!(counts.polls(), 3);
    assert_eq!(slow.lag(), 3);
    assert_eq!(fast.lag(), 0);

    // Polling again changes nothing: the upstream is left alone.
    for _ in 0..5 {
        assert_eq!(poll_once(&mut fast), Poll::Pending);
    }
    assert_eq!(counts.polls(), 3);

    // Each item the slow branch reads lets the fast one read exactly one more.
    for next in 3..LEN {
        assert_eq!(poll_once(&mut slow), Poll::Ready(Some(next - 3)));
        assert_eq!(
            counts.polls(),
            next as usize,
            "the slow branch read a buffered item"
        );
        assert_eq!(slow.lag(), 2);

        assert_eq!(poll_once(&mut fast), Poll::Ready(Some(next)));
        assert_eq!(counts.yielded(), next as usize + 1);
        assert_eq!(poll_once(&mut fast), Poll::Pending);
        assert_eq!(counts.polls(), next as usize + 1);
        assert_eq!(slow.lag(), 3);
        assert_eq!(fast.lag(), 0);
    }

    // Even the end is not looked for while the buffer is full.
    assert_eq!(poll_once(&mut fast), Poll::Pending);
    assert_eq!(counts.polls(), LEN as usize);
    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(LEN - 3)));
    assert_eq!(poll_once(&mut fast), Poll::Ready(None));
    assert_eq!(counts.polls(), LEN as usize + 1);

    // The slow branch gets the rest from the buffer.
    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(LEN - 2)));
    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(LEN - 1)));
    assert_eq!(poll_once(&mut slow), Poll::Ready(None));
    assert_eq!(counts.polls(), LEN as usize + 1);
}

#[test]
fn slowest_branch_reads_without_waiting_then_is_held_back_in_turn() {
    let (branches, counts) = counted(20, 3, 2);
    let [mut a, mut b, mut c]: [_; 3] = branches.try_into().unwrap();
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(1)));
    assert_eq!(poll_once(&mut a), Poll::Pending);
    assert_eq!(poll_once(&mut b), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut b), Poll::Ready(Some(1)));
    assert_eq!(poll_once(&mut b), Poll::Pending);
    assert_eq!(counts.polls(), 2);

    // `c`, the slowest, reads the buffered items without polling upstream.
    assert_eq!(poll_once(&mut c), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut c), Poll::Ready(Some(1)));
    assert_eq!(counts.polls(), 2);
    // Then it pulls new items until it is `cap` ahead of `a` and `b`.
    assert_eq!(poll_once(&mut c), Poll::Ready(Some(2)));
    assert_eq!(poll_once(&mut c), Poll::Ready(Some(3)));
    assert_eq!(poll_once(&mut c), Poll::Pending);
    assert_eq!(counts.polls(), 4);
    assert_eq!((a.lag(), b.lag(), c.lag()), (2, 2, 0));

    // `a` reading both frees nothing while `b` still holds them.
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(2)));
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(3)));
    assert_eq!(poll_once(&mut c), Poll::Pending);
    assert_eq!(poll_once(&mut b), Poll::Ready(Some(2)));
    assert_eq!(poll_once(&mut c), Poll::Ready(Some(4)));
    assert_eq!(poll_once(&mut c), Poll::Pending);
    assert_eq!(counts.polls(), 5);
}

#[test]
fn middle_branch_reading_does_not_free_room() {
    let (branches, counts) = counted(10, 3, 2);
    let [mut fast, mut middle, mut slow]: [_; 3] = branches.try_into().unwrap();
    assert_eq!(poll_once(&mut fast), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut fast), Poll::Ready(Some(1)));
    assert_eq!(poll_once(&mut fast), Poll::Pending);

    // The middle branch reads both buffered items; the slow one still holds
    // them, so the buffer is still full.
    assert_eq!(poll_once(&mut middle), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut middle), Poll::Ready(Some(1)));
    assert_eq!(poll_once(&mut fast), Poll::Pending);
    assert_eq!(poll_once(&mut middle), Poll::Pending);
    assert_eq!(counts.polls(), 2);
    assert_eq!(slow.lag(), 2);
    assert_eq!(middle.lag(), 0);

    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut middle), Poll::Ready(Some(2)));
    assert_eq!(poll_once(&mut fast), Poll::Ready(Some(2)));
    assert_eq!(poll_once(&mut fast), Poll::Pending);
    assert_eq!(counts.polls(), 3);
}

/// What the upstream of [`counted`] has done, as the batching rule predicts
/// it: a branch at the end of a buffer with room pulls a batch of
/// `min(room, MAX_BATCH)` items, fewer if the upstream ends first, in which
/// case one more poll sees the end. A lone branch with nothing buffered
/// pulls one item per poll.
#[derive(Debug, Default)]
struct UpstreamModel {
    yielded: u64,
    polls: usize,
    done: bool,
}

impl UpstreamModel {
    /// Branch `read` items in polls, with the slowest branch `slowest` items
    /// in; returns what the poll yields.
    fn poll(
        &mut self,
        read: u64,
        slowest: u64,
        len: u64,
        cap: usize,
        n: usize,
    ) -> Poll<Option<u64>> {
        if read < self.yielded {
            return Poll::Ready(Some(read));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let room = cap - (self.yielded - slowest) as usize;
        if room == 0 {
            return Poll::Pending;
        }
        let limit = batch_limit(n, cap, cap - room) as u64;
        let pulled = limit.min(len - self.yielded);
        self.yielded += pulled;
        self.polls += pulled as usize;
        if pulled < limit {
            self.polls += 1;
            self.done = true;
        }
        if pulled == 0 {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(read))
        }
    }
}

#[test]
fn exact_bound_under_an_arbitrary_polling_schedule() {
    const LEN: u64 = 200;
    // Capacity 40 lets a batch be cut by `MAX_BATCH` rather than the room.
    for n in [1, 2, 3, 5] {
        for cap in [1, 2, 3, 8, 40] {
            for seed in 0..4 {
                let mut rng = Rng::new(seed * 1_000 + n as u64 * 10 + cap as u64);
                let (mut branches, counts) = counted(LEN, n, cap);
                let mut progress = Progress::new(n, LEN, 100_000);
                let mut model = UpstreamModel::default();
                while progress.unfinished() {
                    // Skewed: branch 0 is polled more often than the others, so it keeps running into the buffer limit.
                    let i = if rng.below(4) == 0 { 0 } else { rng.below(n) };
                    let slowest_before = progress.slowest();
                    let expected = model.poll(progress.read[i], slowest_before, LEN, cap, n);
                    let polled = poll_once(&mut branches[i]);
                    assert_eq!(polled, expected, "n = {n}, cap = {cap}: branch {i}");
                    match polled {
                        Poll::Ready(Some(item)) => progress.item(i, item),
                        Poll::Ready(None) => progress.end(i),
                        Poll::Pending => {
                            // Only a branch exactly `cap` items ahead of the
                            // slowest one waits (the upstream never does).
                            assert_eq!(
                                progress.read[i] - slowest_before,
                                cap as u64,
                                "n = {n}, cap = {cap}: branch {i} waited without cause"
                            );
                        }
                    }
                    let slowest = progress.slowest();
                    let yielded = counts.yielded() as u64;
                    let fastest = progress.fastest();
                    // Pulled on demand only, in batches that fit the room
                    // (the model), and never past the bound.
                    assert_eq!(yielded, model.yielded, "n = {n}, cap = {cap}");
                    assert!(yielded >= fastest, "n = {n}, cap = {cap}");
                    assert!(
                        yielded <= slowest + cap as u64,
                        "n = {n}, cap = {cap}: upstream yielded {yielded}, slowest read {slowest}"
                    );
                    // Each item is polled once, the end at most once.
                    assert_eq!(counts.polls(), model.polls, "n = {n}, cap = {cap}");
                    assert_eq!(counts.polls(), yielded as usize + usize::from(model.done));
                    for (j, branch) in branches.iter().enumerate() {
                        assert_eq!(
                            branch.lag() as u64,
                            yielded - progress.read[j],
                            "lag of branch {j}"
                        );
                        assert!(branch.lag() <= cap);
                    }
                }
                assert_eq!(counts.polls(), LEN as usize + 1);
            }
        }
    }
}

#[test]
fn waiting_branch_is_woken_when_the_slowest_reads() {
    let (branches, counts) = counted(10, 2, 2);
    let [fast, slow]: [_; 2] = branches.try_into().unwrap();
    let mut fast = spawn(fast);
    let mut slow = spawn(slow);

    assert_ready_eq!(fast.poll_next(), Some(0));
    assert_ready_eq!(fast.poll_next(), Some(1));
    assert_pending!(fast.poll_next());
    assert!(!fast.is_woken());
    assert_eq!(counts.polls(), 2);

    assert_ready_eq!(slow.poll_next(), Some(0));
    assert!(fast.is_woken(), "the slowest branch freed a slot");
    assert_ready_eq!(fast.poll_next(), Some(2));
    assert_pending!(fast.poll_next());
    assert!(!fast.is_woken());

    assert_ready_eq!(slow.poll_next(), Some(1));
    assert!(fast.is_woken());
    assert_ready_eq!(fast.poll_next(), Some(3));
    assert_eq!(counts.polls(), 4);
}

#[test]
fn every_waiting_branch_is_woken_when_room_is_freed() {
    let (branches, _counts) = counted(10, 4, 1);
    let mut branches: Vec<_> = branches.into_iter().map(spawn).collect();
    let mut slow = branches.pop().unwrap();
    for branch in &mut branches {
        assert_ready_eq!(branch.poll_next(), Some(0));
        assert_pending!(branch.poll_next());
    }
    assert_ready_eq!(slow.poll_next(), Some(0));
    for (i, branch) in branches.iter_mut().enumerate() {
        assert!(branch.is_woken(), "waiting branch {i} not woken");
    }
    // One of them pulls item 1; the others read it from the buffer.
    for branch in &mut branches {
        assert_ready_eq!(branch.poll_next(), Some(1));
    }
}

#[test]
fn waiting_next_future_is_woken_when_the_slowest_reads() {
    let (branches, _counts) = counted(10, 2, 1);
    let [mut fast, mut slow]: [_; 2] = branches.try_into().unwrap();
    assert_eq!(poll_once(&mut fast), Poll::Ready(Some(0)));
    {
        let mut next = spawn(fast.next());
        assert_pending!(next.poll());
        assert_eq!(poll_once(&mut slow), Poll::Ready(Some(0)));
        assert!(next.is_woken());
        assert_ready_eq!(next.poll(), Some(1));
    }
    let mut next = spawn(slow.next());
    assert_ready_eq!(next.poll(), Some(1));
}

#[test]
fn branches_waiting_for_the_upstream_are_woken_when_it_yields() {
    let (tx, mut a, mut b) = parked_on_a_channel();
    assert!(!a.is_woken());
    assert!(!b.is_woken());

    tx.unbounded_send(7).unwrap();
    assert!(a.is_woken());
    assert!(b.is_woken());
    assert_ready_eq!(b.poll_next(), Some(7));
    assert_ready_eq!(a.poll_next(), Some(7));

    assert_pending!(a.poll_next());
    assert_pending!(b.poll_next());
    drop(tx);
    assert!(a.is_woken());
    assert!(b.is_woken());
    assert_ready_eq!(a.poll_next(), None);
    assert_ready_eq!(b.poll_next(), None);
}

#[test]
fn waiting_branch_does_not_depend_on_the_branch_that_polled_the_upstream() {
    // `poller` polls last: an upstream that keeps only the latest waker
    // would know only `poller`'s task.
    let (tx, mut waiter, poller) = parked_on_a_channel();
    // The branch that polled the upstream last goes away.
    drop(poller);
    tx.unbounded_send(1).unwrap();
    assert!(waiter.is_woken());
    assert_ready_eq!(waiter.poll_next(), Some(1));

    assert_pending!(waiter.poll_next());
    drop(tx);
    assert!(waiter.is_woken());
    assert_ready_eq!(waiter.poll_next(), None);
}

#[test]
fn branch_that_only_waits_is_woken_when_another_pulled_the_upstream() {
    // `a` polls the upstream and parks; `b` parks too.
    let (tx, mut a, mut b) = parked_on_a_channel();
    tx.unbounded_send(1).unwrap();
    tx.unbounded_send(2).unwrap();
    // `a` pulls both; `b` must be able to read them without another wake-up
    // from the channel.
    assert!(a.is_woken());
    assert_ready_eq!(a.poll_next(), Some(1));
    assert_ready_eq!(a.poll_next(), Some(2));
    assert!(b.is_woken());
    assert_ready_eq!(b.poll_next(), Some(1));
    assert_ready_eq!(b.poll_next(), Some(2));
}

#[test]
fn waiting_for_room_under_a_pending_upstream() {
    // A bounded buffer also bounds how far a fast branch drains a channel.
    let (tx, rx) = mpsc::unbounded::<u32>();
    let (upstream, counts) = CountingPolls::new(rx);
    let [fast, slow]: [_; 2] = upstream.fanout(2, 2).try_into().unwrap();
    let mut fast = spawn(fast);
    let mut slow = spawn(slow);
    for i in 0..10 {
        tx.unbounded_send(i).unwrap();
    }
    assert_ready_eq!(fast.poll_next(), Some(0));
    assert_ready_eq!(fast.poll_next(), Some(1));
    assert_pending!(fast.poll_next());
    assert_eq!(counts.yielded(), 2);
    assert_eq!(counts.polls(), 2);
    assert_ready_eq!(slow.poll_next(), Some(0));
    assert!(fast.is_woken());
    assert_ready_eq!(fast.poll_next(), Some(2));
    assert_eq!(counts.yielded(), 3);
}

#[test]
fn a_batch_that_ends_on_pending_yields_its_first_item_and_the_next_poller_goes_on() {
    let (tx, rx) = mpsc::unbounded::<u32>();
    let (upstream, counts) = CountingPolls::new(rx);
    let (a, b) = upstream.tee(8);
    let mut a = spawn(a);
    let mut b = spawn(b);
    for i in 0..3 {
        tx.unbounded_send(i).unwrap();
    }
    // One poll of `a` pulls the 3 items; the fourth poll of the upstream
    // returns `Pending`, which ends the batch: `a` returns the first item.
    assert_ready_eq!(a.poll_next(), Some(0));
    assert_eq!(counts.polls(), 4);
    assert_eq!(counts.yielded(), 3);
    assert_eq!((a.lag(), b.lag()), (2, 3));

    // The channel holds the fanout's waker, but `a` is not parked on it: it
    // returned an item.
    tx.unbounded_send(3).unwrap();
    assert!(!a.is_woken());
    assert!(!b.is_woken());

    // `b` reads the batch from the buffer, then, at the end, polls the
    // upstream itself and pulls the new item (the batch ends on `Pending`).
    for expected in 0..3 {
        assert_ready_eq!(b.poll_next(), Some(expected));
    }
    assert_eq!(counts.polls(), 4);
    assert_ready_eq!(b.poll_next(), Some(3));
    assert_eq!(counts.polls(), 6);

    // `a` reads everything from the buffer, then waits for the upstream, and
    // is woken by it.
    for expected in 1..4 {
        assert_ready_eq!(a.poll_next(), Some(expected));
    }
    assert_eq!(counts.polls(), 6);
    assert_pending!(a.poll_next());
    assert_eq!(counts.polls(), 7);
    tx.unbounded_send(4).unwrap();
    assert!(a.is_woken());
    assert_ready_eq!(a.poll_next(), Some(4));
    assert_ready_eq!(b.poll_next(), Some(4));
    assert_eq!(counts.polls(), 9);
}
