//! One bounded buffer: a branch `cap` items ahead of the slowest waits, the
//! upstream is never polled more than `cap` items past the slowest branch
//! (a poll may pull ahead, up to the free room), a batch may end on
//! `Pending`, waiting branches are woken when room is freed or the upstream
//! wakes, and creating branches polls nothing.
//!
//! The batch sizes are the crate's tuning: nothing here depends on them. A
//! branch may read several buffered items ahead in one poll, and the room
//! they hold frees up once it has yielded them; where a test needs to know,
//! it asks the branch (`stats().read_ahead`, its own read-ahead when the
//! other branches hold nothing ahead).

mod support;

use std::task::Poll;

use fanout::{Branch, StreamExt as _};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream};
use futures::StreamExt;
use tokio_test::task::{spawn, Spawn};
use tokio_test::{assert_pending, assert_ready_eq};

use support::model::{Handle, Model};
use support::{poll_once, CountingPolls, PollCounts, Rng};

type Counted = CountingPolls<stream::Iter<std::ops::Range<u64>>>;

/// Fans `0..len` out into `n` branches of capacity `cap`, counting polls.
fn counted(len: u64, n: usize, cap: usize) -> (Vec<Branch<Counted>>, PollCounts) {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..len));
    (upstream.fanout(n, cap), counts)
}

/// What `branch` holds read ahead, from its own snapshot: exact as long as
/// the other branches hold nothing ahead (a branch that has just returned
/// `Pending`, or has yielded everything pulled, holds nothing).
fn read_ahead<S: Stream>(branch: &Branch<S>) -> usize {
    branch.stats().read_ahead
}

/// Polls `branch` until it has yielded everything it read ahead, expecting
/// the items from `*next` on: the room its read-ahead holds frees up only
/// then. See [`read_ahead`] for when this can tell.
fn yield_read_ahead<S>(branch: &mut Branch<S>, next: &mut u64)
where
    S: Stream<Item = u64> + Unpin,
{
    while read_ahead(branch) > 0 {
        assert_eq!(poll_once(branch), Poll::Ready(Some(*next)));
        *next += 1;
    }
}

/// [`yield_read_ahead`] for a branch on a mock task.
fn spawned_yield_read_ahead<S>(branch: &mut Spawn<Branch<S>>, next: &mut u64)
where
    S: Stream<Item = u64> + Unpin,
{
    while read_ahead(branch) > 0 {
        assert_ready_eq!(branch.poll_next(), Some(*next));
        *next += 1;
    }
}

/// Polls `branch` until it returns `Pending` (or ends), expecting the items
/// from `*next` on; returns whether it ended.
fn read_until_pending<S>(branch: &mut Branch<S>, next: &mut u64) -> bool
where
    S: Stream<Item = u64> + Unpin,
{
    loop {
        match poll_once(branch) {
            Poll::Ready(Some(item)) => {
                assert_eq!(item, *next);
                *next += 1;
            }
            Poll::Ready(None) => return true,
            Poll::Pending => return false,
        }
    }
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
    const CAP: u64 = 3;
    let (branches, counts) = counted(LEN, 2, CAP as usize);
    let [mut fast, mut slow]: [_; 2] = branches.try_into().unwrap();

    // The fast branch runs until it waits: the slow one holds nothing ahead,
    // so exactly `cap` items ahead.
    let mut read = Vec::new();
    while let Poll::Ready(item) = poll_once(&mut fast) {
        read.push(item.expect("the upstream has 10 items"));
    }
    assert_eq!(read, [0, 1, 2]);
    assert_eq!(counts.yielded(), 3);
    // Each poll of the upstream yielded an item: it was not polled for more.
    assert_eq!(counts.polls(), 3);
    assert_eq!(slow.lag(), 3);
    assert_eq!(fast.lag(), 0);

    // Polling again changes nothing: the upstream is left alone.
    for _ in 0..5 {
        assert_eq!(poll_once(&mut fast), Poll::Pending);
    }
    assert_eq!(counts.polls(), 3);

    // The slow branch reads one item at a time (taking, maybe, more ahead);
    // the fast one runs until it waits again: never more than `cap` ahead,
    // exactly `cap` whenever the slow one holds nothing ahead. The upstream
    // is polled only for items, and for its end only once there is room.
    let (mut fast_next, mut slow_next) = (3, 0);
    let mut fast_ended = false;
    while !fast_ended {
        let buffered = slow_next < counts.yielded() as u64;
        let polls = counts.polls();
        assert_eq!(poll_once(&mut slow), Poll::Ready(Some(slow_next)));
        slow_next += 1;
        if buffered {
            assert_eq!(
                counts.polls(),
                polls,
                "the slow branch read a buffered item"
            );
        }
        fast_ended = read_until_pending(&mut fast, &mut fast_next);
        assert!(
            fast_next - slow_next <= CAP,
            "the fast branch ran past the bound"
        );
        assert_eq!(slow.lag() as u64, counts.yielded() as u64 - slow_next);
        if !fast_ended {
            if read_ahead(&slow) == 0 {
                assert_eq!(fast_next - slow_next, CAP, "the fast branch waited early");
            }
            // Even the end is not looked for while the buffer is full.
            assert_eq!(counts.polls(), counts.yielded());
            assert_eq!(fast.lag(), 0);
        }
    }
    assert_eq!(fast_next, LEN);
    assert_eq!(counts.polls(), LEN as usize + 1);

    // The slow branch gets the rest from the buffer.
    while slow_next < LEN {
        assert_eq!(poll_once(&mut slow), Poll::Ready(Some(slow_next)));
        slow_next += 1;
    }
    assert_eq!(poll_once(&mut slow), Poll::Ready(None));
    assert_eq!(counts.polls(), LEN as usize + 1);
}

#[test]
fn slowest_branch_reads_without_waiting_then_is_held_back_in_turn() {
    const CAP: u64 = 2;
    let (branches, counts) = counted(20, 3, CAP as usize);
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
    // Then it finds room and pulls new items, until it waits `cap` items
    // ahead of `a` and `b`, which hold nothing read ahead.
    assert_eq!(poll_once(&mut c), Poll::Ready(Some(2)));
    let mut c_next = 3;
    assert!(!read_until_pending(&mut c, &mut c_next));
    assert_eq!(c_next - 2, CAP);
    let pulled = counts.yielded();
    assert_eq!(pulled as u64, c_next);
    assert_eq!((a.lag(), b.lag(), c.lag()), (pulled - 2, pulled - 2, 0));

    // `a` reading what `c` pulled frees nothing while `b` still holds it: `c`
    // never gets more than `cap` past `b`.
    let mut a_next = 2;
    while a_next < pulled as u64 {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(a_next)));
        a_next += 1;
    }
    assert!(!read_until_pending(&mut c, &mut c_next));
    assert_eq!(c_next - 2, CAP);

    // Once `a` and `b` have read up to `c`, `c` goes on.
    while a_next < c_next {
        assert_eq!(poll_once(&mut a), Poll::Ready(Some(a_next)));
        a_next += 1;
    }
    let mut b_next = 2;
    while b_next < c_next {
        assert_eq!(poll_once(&mut b), Poll::Ready(Some(b_next)));
        b_next += 1;
    }
    assert_eq!(poll_once(&mut c), Poll::Ready(Some(c_next)));
    assert_eq!(counts.polls(), counts.yielded());
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

    // The slow branch reads the oldest item, and whatever it took ahead with
    // it: room frees up, and the middle branch pulls the next item, which the
    // fast one reads from the buffer.
    assert_eq!(poll_once(&mut slow), Poll::Ready(Some(0)));
    let mut slow_next = 1;
    yield_read_ahead(&mut slow, &mut slow_next);
    assert_eq!(poll_once(&mut middle), Poll::Ready(Some(2)));
    let polls = counts.polls();
    assert_eq!(poll_once(&mut fast), Poll::Ready(Some(2)));
    assert_eq!(counts.polls(), polls);
    // And no further than `cap` past the slow branch.
    let mut fast_next = 3;
    assert!(!read_until_pending(&mut fast, &mut fast_next));
    assert!(fast_next - slow_next <= 2);
    assert_eq!(counts.polls(), counts.yielded());
}

/// Random polling schedules, checked by the shared reference model after
/// every poll: each branch yields every item in order, then `None`; the
/// upstream is polled only for items, and for its end once, and never more
/// than `cap` items past the slowest branch; a branch waits only at the end of
/// what was pulled, behind a slower one, and only if it could not go on
/// without a wake-up. Whatever the batches.
#[test]
fn the_bound_holds_under_an_arbitrary_polling_schedule() {
    const LEN: u64 = 200;
    // Capacity 40 lets a batch be cut by the batch limit rather than the
    // room, whatever the limit is.
    for n in [1, 2, 3, 5] {
        for cap in [1, 2, 3, 8, 40] {
            for seed in 0..4 {
                let context = format!("n = {n}, cap = {cap}, seed {seed}");
                let mut rng = Rng::new(seed * 1_000 + n as u64 * 10 + cap as u64);
                let (branches, counts) = counted(LEN, n, cap);
                let mut handles: Vec<_> = branches.into_iter().map(Handle::new).collect();
                let mut model = Model::new(n, cap);
                let upstream = || counts.upstream();
                let mut polls = 0;
                while !model.all_ended() {
                    polls += 1;
                    assert!(polls < 100_000, "{context}: no progress: {model:?}");
                    // Skewed: branch 0 is polled more often than the others,
                    // so it keeps running into the buffer limit.
                    let i = if rng.below(4) == 0 { 0 } else { rng.below(n) };
                    let (polled, _) = model
                        .poll(&mut handles, i, &upstream)
                        .unwrap_or_else(|error| panic!("{context}: {error}"));
                    if polled == support::model::Polled::Pending {
                        // The upstream never waits: only a branch ahead of a
                        // slower one does.
                        let slowest = model.slowest_lossless().unwrap();
                        assert!(
                            slowest < model.pulled(),
                            "{context}: branch {i} waited without cause"
                        );
                    }
                    // No branch that waits could go on without a wake-up.
                    model
                        .check_parked(&mut handles, &upstream)
                        .and_then(|()| model.check_bounds())
                        .unwrap_or_else(|error| panic!("{context}: {error}"));
                    // Each item is polled once, the end at most once.
                    assert!(counts.ends() <= 1, "{context}: polled after the end");
                    assert_eq!(
                        counts.polls(),
                        counts.yielded() + counts.ends(),
                        "{context}"
                    );
                    // One branch's lag per step (asking releases the room of
                    // what it has yielded of its read-ahead: not for all).
                    let j = rng.below(n);
                    let lag = handles[j].lag() as u64;
                    assert_eq!(
                        lag,
                        model.pulled() - model.branch(j).next,
                        "{context}: lag of branch {j}"
                    );
                    assert!(lag <= cap as u64, "{context}: lag of branch {j}");
                }
                assert_eq!(counts.polls(), LEN as usize + 1, "{context}");
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

    // The slowest branch reads the oldest item (and yields what it took
    // ahead with it, whose room frees up only then): the fast one is woken.
    assert_ready_eq!(slow.poll_next(), Some(0));
    let mut slow_next = 1;
    spawned_yield_read_ahead(&mut slow, &mut slow_next);
    assert!(fast.is_woken(), "the slowest branch freed room");
    let mut fast_next = 2;
    while let Poll::Ready(item) = fast.poll_next() {
        assert_eq!(item, Some(fast_next));
        fast_next += 1;
    }
    assert!(fast_next > 2, "the woken branch made progress");
    assert!(fast_next - slow_next <= 2);
    assert!(!fast.is_woken());

    // Again, from wherever the slow branch is now.
    assert_ready_eq!(slow.poll_next(), Some(slow_next));
    slow_next += 1;
    spawned_yield_read_ahead(&mut slow, &mut slow_next);
    assert!(fast.is_woken());
    assert_ready_eq!(fast.poll_next(), Some(fast_next));
    assert_eq!(counts.polls(), counts.yielded());
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
    // The slow branch frees room once it has yielded what it read ahead.
    assert_ready_eq!(slow.poll_next(), Some(0));
    let mut slow_next = 1;
    while read_ahead(&slow) > 0 {
        assert_ready_eq!(slow.poll_next(), Some(slow_next));
        slow_next += 1;
    }
    assert!(fast.is_woken());
    assert_ready_eq!(fast.poll_next(), Some(2));
    assert!(counts.yielded() > 2);
    assert!(
        counts.yielded() as u32 <= slow_next + 2,
        "never past the bound"
    );
}

#[test]
fn a_batch_that_ends_on_pending_yields_its_first_item_and_the_next_poller_goes_on() {
    let (tx, rx) = mpsc::unbounded::<u32>();
    let (upstream, counts) = CountingPolls::new(rx);
    let (a, b) = upstream.tee(16);
    let mut a = spawn(a);
    let mut b = spawn(b);
    for i in 0..3 {
        tx.unbounded_send(i).unwrap();
    }
    // One poll of `a` pulls a batch of the 3 items or fewer (it may pull
    // ahead up to the free room); a batch that takes all 3 polls the channel
    // once more, gets `Pending`, and ends there. Either way `a` returns the
    // first item.
    assert_ready_eq!(a.poll_next(), Some(0));
    let pulled = counts.yielded();
    assert!((1..=3).contains(&pulled));
    let ended_on_pending = counts.polls() == pulled + 1;
    assert!(
        counts.polls() == pulled || (pulled == 3 && ended_on_pending),
        "polled {} times for {pulled} items: `Pending` is polled only from an empty channel",
        counts.polls()
    );
    assert_eq!((a.lag(), b.lag()), (pulled - 1, pulled));

    // If the batch ended on `Pending`, the channel holds the fanout's waker,
    // but `a` is not parked on it: it returned an item.
    tx.unbounded_send(3).unwrap();
    assert!(!a.is_woken());
    assert!(!b.is_woken());

    // `b` reads the batch from the buffer, polling nothing, then, at the
    // end, polls the upstream itself and pulls the rest.
    for expected in 0..4 {
        let buffered = (expected as usize) < counts.yielded();
        let polls = counts.polls();
        assert_ready_eq!(b.poll_next(), Some(expected));
        if buffered {
            assert_eq!(counts.polls(), polls, "item {expected} was buffered");
        }
    }
    assert_eq!(counts.yielded(), 4);

    // `a` reads everything from the buffer, then waits for the upstream,
    // which it polls once, and is woken by it.
    let polls = counts.polls();
    for expected in 1..4 {
        assert_ready_eq!(a.poll_next(), Some(expected));
    }
    assert_eq!(counts.polls(), polls);
    assert_pending!(a.poll_next());
    assert_eq!(counts.polls(), polls + 1);
    tx.unbounded_send(4).unwrap();
    assert!(a.is_woken());
    assert_ready_eq!(a.poll_next(), Some(4));
    let polls = counts.polls();
    assert_ready_eq!(b.poll_next(), Some(4));
    assert_eq!(counts.polls(), polls, "`b` read item 4 from the buffer");
    assert_eq!(counts.yielded(), 5);
}

/// A slow branch that waits at the end of the buffer, and holds nothing read
/// ahead, takes no room from a fast one: the fast one runs exactly `cap`
/// items ahead of it, however large the batches are. (A design that set
/// room aside for waiting branches would stop the fast one short.)
#[test]
fn a_waiting_slow_branch_holding_nothing_leaves_the_fast_one_the_whole_capacity() {
    const CAP: usize = 64;
    let (tx, rx) = futures::channel::mpsc::unbounded::<u64>();
    let (mut fast, mut slow) = rx.tee(CAP);
    assert_eq!(poll_once(&mut slow), Poll::Pending);
    for item in 0..2 * CAP as u64 {
        tx.unbounded_send(item).unwrap();
    }
    let mut yielded = 0;
    while let Poll::Ready(Some(item)) = poll_once(&mut fast) {
        assert_eq!(item, yielded);
        yielded += 1;
    }
    assert_eq!(yielded, CAP as u64);
    assert_eq!(slow.lag(), CAP);
}
