//! Statistics snapshots: the counters (`pulled`, `buffered`, `read_ahead`,
//! `high_water`, `delivered`, `upstream_done`) agree with what the branches
//! and the upstream did after every step of a scripted schedule (exactly for
//! the branch that takes the snapshot, whose read-ahead is counted as of
//! now), the `branches` list follows the live branches (sorted by id, fresh
//! ids for clones, never reused), `slowest` picks the lossless branch with the
//! largest lag, and `stalled_upstream` is charged only to the branches that
//! held a full buffer at its oldest position.
//!
//! How many items a poll pulls or reads ahead is the crate's tuning: nothing
//! here depends on it. Where a test needs the room that a branch's
//! read-ahead holds to be free, the branch yields what it read ahead first
//! ([`yield_read_ahead`]).
//!
//! Durations are never compared with a threshold: only `== Duration::ZERO`,
//! `> Duration::ZERO`, and orderings between snapshots (a stall in progress
//! grows, a finished one stays put).

mod support;

use std::collections::HashSet;
use std::task::Poll;
use std::thread::sleep;
use std::time::Duration;

use fanout::{Branch, Stats, StreamExt as _};
use futures::channel::mpsc;

use support::model::{Handle, Model};
use support::{counted, entry, poll_once, CountingPolls, PollCounts};

/// The ids of the entries, in their order.
fn ids(stats: &Stats) -> Vec<usize> {
    stats.branches.iter().map(|branch| branch.id).collect()
}

/// The time a stall must last to be measurable. Only ever used to make a
/// duration non-zero, never compared with.
fn pause() {
    sleep(Duration::from_millis(1));
}

/// The stall time of branch `id` in a fresh snapshot taken from `branch`.
fn stalled<S>(branch: &Branch<S>, id: usize) -> Duration
where
    S: futures::Stream,
{
    entry(&branch.stats(), id).stalled_upstream
}

/// Polls `branch` once and expects item `expected`.
fn read<S>(branch: &mut Branch<S>, expected: u64)
where
    S: futures::Stream<Item = u64> + Unpin,
{
    assert_eq!(poll_once(branch), Poll::Ready(Some(expected)));
}

/// What `branch` holds read ahead, from its own snapshot: exact as long as
/// the other branches hold nothing ahead (a branch that has just returned
/// `Pending`, or has yielded everything pulled, holds nothing).
fn read_ahead<S: futures::Stream>(branch: &Branch<S>) -> usize {
    branch.stats().read_ahead
}

/// Polls `branch` until it has yielded everything it read ahead, expecting
/// the items from `*next` on: the room its read-ahead holds is free only
/// then. See [`read_ahead`] for when this can tell.
fn yield_read_ahead<S>(branch: &mut Branch<S>, next: &mut u64)
where
    S: futures::Stream<Item = u64> + Unpin,
{
    while read_ahead(branch) > 0 {
        read(branch, *next);
        *next += 1;
    }
}

/// The upstream of [`fed`]: a channel, counting its polls.
type FedUpstream = CountingPolls<mpsc::UnboundedReceiver<u64>>;

/// Feeds the channel of [`fed`] with `0, 1, 2, ...`, only as far as a read
/// needs.
struct Feeder {
    tx: mpsc::UnboundedSender<u64>,
    sent: u64,
}

impl Feeder {
    /// Sends the items up to `expected` that are not sent yet, then polls
    /// `branch` once and expects `expected`. A read of a buffered item sends
    /// nothing; a read at the end of the buffer sends exactly its item, so
    /// the batch the poll pulls is that one item, ended by the channel's
    /// `Pending`.
    fn read(&mut self, branch: &mut Branch<FedUpstream>, expected: u64) {
        while self.sent <= expected {
            self.tx.unbounded_send(self.sent).unwrap();
            self.sent += 1;
        }
        read(branch, expected);
    }

    /// Reads with `branch` from `*next` on, sending each item just before
    /// the poll that needs it, until the branch waits (the item it waited
    /// for stays in the channel).
    fn read_until_pending(&mut self, branch: &mut Branch<FedUpstream>, next: &mut u64) {
        loop {
            if self.sent <= *next {
                self.tx.unbounded_send(self.sent).unwrap();
                self.sent += 1;
            }
            match poll_once(branch) {
                Poll::Ready(item) => {
                    assert_eq!(item, Some(*next));
                    *next += 1;
                }
                Poll::Pending => return,
            }
        }
    }
}

/// `n` branches of capacity `cap` over a channel that the test feeds one
/// item at a time through the [`Feeder`], so that each read at the end of the
/// buffer pulls one item and the buffer fills step by step. The tests of
/// stalls need those steps: over an upstream that is always ready, like
/// [`counted`]'s, the first poll pulls a whole batch, as many items as the
/// buffer has room for, and the buffer is full at once.
fn fed(n: usize, cap: usize) -> (Vec<Branch<FedUpstream>>, Feeder, PollCounts) {
    let (tx, rx) = mpsc::unbounded();
    let (upstream, counts) = CountingPolls::new(rx);
    (upstream.fanout(n, cap), Feeder { tx, sent: 0 }, counts)
}

// ---------------------------------------------------------------------------
// Counters

/// Checks a snapshot taken by branch `taker` against the shared reference
/// model, and the upstream's own counts: every item is polled once, the end
/// at most once, and `upstream_done` is exactly whether it was.
fn check(model: &Model, taker: usize, stats: &Stats, counts: &PollCounts, step: &str) {
    model
        .check_stats(taker, stats)
        .unwrap_or_else(|error| panic!("{step}: {error}"));
    assert_eq!(counts.yielded() as u64, stats.pulled, "{step}: upstream");
    assert!(counts.ends() <= 1, "{step}: polled after the end");
    assert_eq!(
        counts.polls(),
        counts.yielded() + counts.ends(),
        "{step}: upstream polls"
    );
    assert_eq!(
        stats.upstream_done,
        counts.ends() == 1,
        "{step}: upstream_done"
    );
}

#[test]
fn counters_agree_with_the_positions_after_every_step_of_a_scripted_schedule() {
    const LEN: u64 = 10;
    for n in [2, 3] {
        for cap in 1..=4 {
            let (branches, counts) = counted(LEN, n, cap);
            let mut handles: Vec<_> = branches.into_iter().map(Handle::new).collect();
            let mut model = Model::new(n, cap);
            let upstream = || counts.upstream();
            let step = format!("n={n} cap={cap} start");
            check(&model, 0, &handles[0].stats(), &counts, &step);
            let poll = |handles: &mut [Handle<_>], model: &mut Model, i: usize| {
                let (polled, _) = model
                    .poll(handles, i, &upstream)
                    .unwrap_or_else(|error| panic!("n={n} cap={cap} branch {i}: {error}"));
                polled
            };

            // Branch 0 reads until it waits: the others hold nothing, so
            // exactly `cap` items, all still buffered for them.
            for i in 0..cap {
                assert_eq!(
                    poll(&mut handles, &mut model, 0),
                    support::model::Polled::Item(i as u64)
                );
                let step = format!("n={n} cap={cap} fill {i}");
                check(&model, 0, &handles[0].stats(), &counts, &step);
            }
            assert_eq!(
                poll(&mut handles, &mut model, 0),
                support::model::Polled::Pending
            );
            let stats = handles[n - 1].stats();
            let step = format!("n={n} cap={cap} full");
            check(&model, n - 1, &stats, &counts, &step);
            assert_eq!((stats.pulled, stats.buffered), (cap as u64, cap));
            assert_eq!((stats.read_ahead, stats.high_water), (0, cap));
            assert_eq!(counts.polls(), cap, "a full buffer polls nothing");

            // The others read the oldest item: only the last one frees it.
            // The others hold nothing ahead: the full buffer leaves no room
            // for clones beyond the one each yields at once.
            for i in 1..n {
                assert_eq!(
                    poll(&mut handles, &mut model, i),
                    support::model::Polled::Item(0)
                );
                let stats = handles[i].stats();
                let step = format!("n={n} cap={cap} branch {i} reads 0");
                check(&model, i, &stats, &counts, &step);
                let held = stats.buffered + stats.read_ahead;
                assert_eq!(held, if i == n - 1 { cap - 1 } else { cap }, "{step}");
                assert_eq!(stats.high_water, cap);
            }

            // Round robin to the end, against the model.
            let mut rounds = 0;
            while !model.all_ended() {
                rounds += 1;
                assert!(rounds < 100, "no progress: {model:?}");
                for i in 0..n {
                    poll(&mut handles, &mut model, i);
                    let step = format!("n={n} cap={cap} round {rounds} branch {i}");
                    check(&model, i, &handles[i].stats(), &counts, &step);
                }
            }
            let stats = handles[0].stats();
            assert_eq!(
                (stats.pulled, stats.buffered, stats.read_ahead),
                (LEN, 0, 0)
            );
            assert_eq!(stats.high_water, cap);
            assert!(stats.upstream_done);
            assert!(stats.branches.iter().all(|b| b.delivered == LEN));
        }
    }
}

#[test]
fn upstream_done_turns_true_when_the_upstream_returns_none_not_before() {
    // The buffer's room is as large as the upstream: a batch may pull every
    // item, but never polls for more than the room, so the upstream has not
    // said it ended yet.
    let (branches, counts) = counted(3, 2, 3);
    let [mut a, mut b]: [_; 2] = branches.try_into().unwrap();
    assert!(!a.stats().upstream_done);
    read(&mut a, 0);
    read(&mut a, 1);
    read(&mut a, 2);
    let stats = b.stats();
    assert_eq!((stats.pulled, stats.buffered), (3, 3));
    assert!(!stats.upstream_done);
    assert_eq!(counts.polls(), 3);
    // A full buffer waits, and polls nothing, even though the upstream has
    // nothing left: the branch cannot know before it polls.
    assert_eq!(poll_once(&mut a), Poll::Pending);
    assert!(!b.stats().upstream_done);
    assert_eq!(counts.polls(), 3);

    // `b` frees room (once it has yielded what it read ahead): `a` polls the
    // upstream, which returns `None`.
    read(&mut b, 0);
    let mut b_next = 1;
    yield_read_ahead(&mut b, &mut b_next);
    assert!(!b.stats().upstream_done);
    assert_eq!(counts.polls(), 3);
    assert_eq!(poll_once(&mut a), Poll::Ready(None));
    assert_eq!(counts.polls(), 4);
    let stats = b.stats();
    assert!(stats.upstream_done);
    assert_eq!((stats.pulled, stats.buffered), (3, 3 - b_next as usize));
    assert_eq!(entry(&stats, b.id()).lag, 3 - b_next as usize);

    // A batch with room to spare may be cut short by the end: then the poll
    // that pulls the items also gets the `None`, and the upstream is done at
    // once, while every item is still buffered, all but one unread even by
    // the poller. If it pulled fewer, the end comes with a later poll.
    let (branches, counts) = counted(3, 2, 16);
    let [mut a, b]: [_; 2] = branches.try_into().unwrap();
    read(&mut a, 0);
    let pulled = counts.yielded();
    let stats = b.stats();
    assert_eq!(stats.upstream_done, counts.ends() == 1);
    assert_eq!(counts.polls(), pulled + counts.ends());
    if stats.upstream_done {
        assert_eq!(pulled, 3, "the end only after every item");
    }
    assert_eq!((stats.pulled, stats.buffered), (pulled as u64, pulled));
    assert_eq!(entry(&stats, b.id()).lag, pulled);
    // (`b`'s snapshot counts `a`'s read-ahead as of `a`'s latest visit to the
    // buffer; `a`'s own counts it as of now.)
    assert_eq!(entry(&a.stats(), a.id()).lag, pulled - 1);
    // `a` reads the rest, then the end, which it polls for only if it has
    // not already.
    read(&mut a, 1);
    read(&mut a, 2);
    assert_eq!(poll_once(&mut a), Poll::Ready(None));
    assert_eq!(counts.polls(), 4);
    assert!(b.stats().upstream_done);
    assert_eq!(entry(&b.stats(), b.id()).lag, 3);

    // An empty upstream: done after the first poll, nothing pulled.
    let (branches, _) = counted(0, 2, 4);
    let [mut a, b]: [_; 2] = branches.try_into().unwrap();
    assert!(!b.stats().upstream_done);
    assert_eq!(poll_once(&mut a), Poll::Ready(None));
    let stats = b.stats();
    assert!(stats.upstream_done);
    assert_eq!((stats.pulled, stats.buffered), (0, 0));
    assert_eq!((stats.read_ahead, stats.high_water), (0, 0));
}

/// A batch is counted whole as soon as it is pulled, whether it ends on
/// `Pending` or on `None`: `pulled`, `buffered`, `read_ahead` and
/// `high_water` jump by the batch, the poller has yielded only its first
/// item, and the end is recorded with the batch. (How many items a batch
/// takes is the crate's tuning; the room here is larger than the channel
/// holds, so a batch may end on the channel's `Pending` or `None`.)
#[test]
fn a_batch_is_counted_whole_whether_it_ends_on_pending_or_on_none() {
    let (branches, feeder, counts) = fed(2, 16);
    let [mut a, b]: [_; 2] = branches.try_into().unwrap();
    let tx = feeder.tx;
    // A snapshot taken by `a`, which has yielded the items before `a_next`:
    // exact for `a`, whose read-ahead it counts as of now, and for `b`,
    // which holds nothing ahead.
    let whole = |a: &Branch<FedUpstream>, a_next: u64, context: &str| {
        let stats = a.stats();
        let pulled = counts.yielded();
        assert_eq!(stats.pulled, pulled as u64, "{context}");
        assert_eq!(stats.buffered, pulled, "{context}: `b` has read nothing");
        assert_eq!(
            entry(&stats, a.id()).lag,
            pulled - a_next as usize,
            "{context}"
        );
        assert_eq!(entry(&stats, a.id()).delivered, a_next, "{context}");
        assert_eq!(entry(&stats, b.id()).lag, pulled, "{context}");
        assert!(stats.high_water >= stats.buffered + stats.read_ahead);
        assert_eq!(stats.upstream_done, counts.ends() == 1, "{context}");
        stats
    };
    for i in 0..3 {
        tx.unbounded_send(i).unwrap();
    }

    // Three items, then `Pending`: the poll pulls some or all of them (if
    // all, it finds the channel empty, and the batch ends on `Pending`).
    read(&mut a, 0);
    let pulled = counts.yielded();
    assert!((1..=3).contains(&pulled));
    assert!(
        counts.polls() == pulled || (pulled == 3 && counts.polls() == 4),
        "`Pending` is polled only from an empty channel"
    );
    let stats = whole(&a, 1, "first batch");
    assert_eq!(stats.high_water, stats.buffered + stats.read_ahead);
    assert!(!stats.upstream_done);

    // The rest of the batch comes from the buffer, polling nothing; the rest
    // of the channel with another poll. Then the channel is empty, and `a`
    // waits for it.
    for i in 1..3 {
        let buffered = (i as usize) < counts.yielded();
        let polls = counts.polls();
        read(&mut a, i);
        if buffered {
            assert_eq!(counts.polls(), polls, "item {i} was buffered");
        }
        whole(&a, i + 1, "the rest");
    }
    let polls = counts.polls();
    assert_eq!(poll_once(&mut a), Poll::Pending);
    assert_eq!(counts.polls(), polls + 1, "one poll, which found `Pending`");
    let stats = whole(&a, 3, "waiting");
    assert_eq!((stats.pulled, stats.buffered), (3, 3));
    assert!(!stats.upstream_done);

    // Two items, then `None`: a batch of both and the end, in one poll, if
    // the batch takes them all; else the end comes with a later poll.
    tx.unbounded_send(3).unwrap();
    tx.unbounded_send(4).unwrap();
    drop(tx);
    let polls = counts.polls();
    read(&mut a, 3);
    let batch = counts.yielded() - 3;
    assert!((1..=2).contains(&batch));
    assert_eq!(
        counts.polls() - polls,
        batch + counts.ends(),
        "the end is polled only after every item"
    );
    if counts.ends() == 1 {
        assert_eq!(batch, 2);
    }
    whole(&a, 4, "the end is recorded with the batch");

    // Both read the rest and the end; the upstream is polled for the end
    // once in all.
    read(&mut a, 4);
    assert_eq!(poll_once(&mut a), Poll::Ready(None));
    assert_eq!(counts.ends(), 1);
    let mut b = b;
    for i in 0..5 {
        read(&mut b, i);
    }
    assert_eq!(poll_once(&mut b), Poll::Ready(None));
    assert_eq!(counts.ends(), 1);
    assert_eq!(counts.yielded(), 5);
    let stats = b.stats();
    assert_eq!((stats.pulled, stats.buffered, stats.read_ahead), (5, 0, 0));
    assert!(stats.high_water <= 16);
    assert!(stats.branches.iter().all(|branch| branch.delivered == 5));
}

#[test]
fn delivered_counts_clones_and_moves_alike() {
    // Three branches read the same five items in different orders: the last
    // reader of each item takes it by move, the others clone it.
    let (branches, _) = counted(5, 3, 5);
    let [mut a, mut b, mut c]: [_; 3] = branches.try_into().unwrap();
    for i in 0..5 {
        read(&mut c, i);
    }
    for i in 0..3 {
        read(&mut a, i);
    }
    read(&mut b, 0);
    let stats = a.stats();
    let delivered: Vec<_> = stats.branches.iter().map(|b| b.delivered).collect();
    assert_eq!(delivered, [3, 1, 5]);
    // Lags count what a branch read ahead (as of its latest visit to the
    // buffer, which for `b` was its read): four items are held for `b`,
    // buffered or read ahead.
    let lags: Vec<_> = stats.branches.iter().map(|b| b.lag).collect();
    assert_eq!(lags, [2, 4, 0]);
    assert_eq!(stats.buffered + stats.read_ahead, 4);
    assert_eq!((stats.high_water, stats.pulled), (5, 5));
}

// ---------------------------------------------------------------------------
// The list of branches

#[test]
fn one_entry_per_live_branch_sorted_by_id_with_fresh_ids_for_clones() {
    let (branches, _) = counted(10, 3, 4);
    let [mut b0, b1, b2]: [_; 3] = branches.try_into().unwrap();
    assert_eq!([b0.id(), b1.id(), b2.id()], [0, 1, 2]);
    assert_eq!(ids(&b0.stats()), [0, 1, 2]);

    drop(b1);
    assert_eq!(ids(&b0.stats()), [0, 2]);

    // The clone of b0 takes over b1's slot internally, but gets a new id and
    // still comes after b2 in the list.
    read(&mut b0, 0);
    let c3 = b0.clone();
    assert_eq!(c3.id(), 3);
    let stats = b2.stats();
    assert_eq!(ids(&stats), [0, 2, 3]);
    assert_eq!(entry(&stats, 3).lag, entry(&stats, 0).lag);
    assert_eq!(entry(&stats, 3).delivered, 0, "a clone starts afresh");
    assert_eq!(entry(&stats, 0).delivered, 1);

    // b0's read pulled one item or more (it may pull ahead, up to the free
    // room), none of which b2 has read: its clone starts with the same lag.
    let pulled = stats.pulled as usize;
    assert!(pulled >= 1);
    let c4 = b2.clone();
    assert_eq!(c4.id(), 4);
    assert_eq!(ids(&c4.stats()), [0, 2, 3, 4]);
    assert_eq!(entry(&c4.stats(), 4).lag, pulled);
    assert_eq!(entry(&c4.stats(), 2).lag, pulled);

    drop(b0);
    let c5 = c4.clone();
    assert_eq!(c5.id(), 5);
    assert_eq!(ids(&c5.stats()), [2, 3, 4, 5]);

    drop(c3);
    drop(b2);
    assert_eq!(ids(&c5.stats()), [4, 5]);
    let c6 = c5.clone();
    let c7 = c6.clone();
    assert_eq!(ids(&c7.stats()), [4, 5, 6, 7]);
    drop((c4, c5, c6));
    assert_eq!(ids(&c7.stats()), [7]);
    assert_eq!(c7.stats().branches.len(), 1);
}

#[test]
fn ids_are_unique_and_never_reused_after_drops_and_clones() {
    let (branches, _) = counted(50, 3, 4);
    let mut live: Vec<_> = branches;
    let mut seen: HashSet<usize> = live.iter().map(Branch::id).collect();
    let mut rng = support::Rng::new(7);
    for step in 0..300 {
        if live.len() > 1 && rng.percent(40) {
            let victim = rng.below(live.len());
            drop(live.swap_remove(victim));
        } else {
            let source = rng.below(live.len());
            let fork = live[source].clone();
            assert!(
                seen.insert(fork.id()),
                "step {step}: id {} reused",
                fork.id()
            );
            live.push(fork);
        }
        if rng.percent(30) {
            let i = rng.below(live.len());
            let _ = poll_once(&mut live[i]);
        }
        let stats = live[0].stats();
        let mut want: Vec<_> = live.iter().map(Branch::id).collect();
        want.sort_unstable();
        assert_eq!(ids(&stats), want, "step {step}");
    }
}

#[test]
fn every_branch_takes_the_same_snapshot() {
    // Fed one item at a time: over an always-ready upstream, `a`'s first
    // read would fill the buffer with a batch.
    let (branches, mut feeder, _) = fed(3, 4);
    let [mut a, mut b, c]: [_; 3] = branches.try_into().unwrap();
    feeder.read(&mut a, 0);
    feeder.read(&mut a, 1);
    feeder.read(&mut b, 0);
    // Not full: no stall in progress, so snapshots do not depend on time.
    let snapshot = a.stats();
    assert_eq!((snapshot.buffered, snapshot.pulled), (2, 2));
    assert_eq!(b.stats(), snapshot);
    assert_eq!(c.stats(), snapshot);
    assert_eq!(snapshot.clone(), snapshot);
}

// ---------------------------------------------------------------------------
// slowest

#[test]
fn slowest_is_the_largest_lag_and_the_smallest_id_among_equals() {
    let (branches, _) = counted(20, 4, 4);
    let [mut b0, mut b1, mut b2, b3]: [_; 4] = branches.try_into().unwrap();

    // All at lag 0: the smallest id.
    let stats = b0.stats();
    let slowest = stats.slowest().unwrap();
    assert_eq!((slowest.id, slowest.lag), (0, 0));

    for i in 0..4 {
        read(&mut b0, i);
    }
    read(&mut b1, 0);
    for i in 0..3 {
        read(&mut b2, i);
    }
    // Lags 0, 3, 1, 4.
    let stats = b0.stats();
    let lags: Vec<_> = stats.branches.iter().map(|b| b.lag).collect();
    assert_eq!(lags, [0, 3, 1, 4]);
    assert_eq!(stats.slowest().map(|b| (b.id, b.lag)), Some((3, 4)));

    // b3 dropped: b1 alone has the largest lag.
    drop(b3);
    let stats = b0.stats();
    assert_eq!(stats.slowest().map(|b| (b.id, b.lag)), Some((1, 3)));

    // A clone of b1 ties with it: the smaller id wins.
    let b4 = b1.clone();
    let stats = b4.stats();
    assert_eq!(stats.slowest().map(|b| (b.id, b.lag)), Some((1, 3)));

    // b1 reads on: its clone is now the slowest.
    read(&mut b1, 1);
    let stats = b4.stats();
    assert_eq!(stats.slowest().map(|b| (b.id, b.lag)), Some((4, 3)));

    // A tie between b1, b2 and a clone made later, all behind b0. (Taken by
    // b1, which may have yielded item 2 from what it read ahead: its own
    // snapshot counts its read-ahead as of now.)
    drop(b4);
    read(&mut b1, 2);
    let b5 = b2.clone();
    let stats = b1.stats();
    assert_eq!(b5.stats(), stats);
    let lags: Vec<_> = stats.branches.iter().map(|b| b.lag).collect();
    assert_eq!(lags, [0, 1, 1, 1]);
    assert_eq!(stats.slowest().map(|b| (b.id, b.lag)), Some((1, 1)));

    // A snapshot from a live branch always has a slowest; an emptied list
    // has none.
    let mut emptied = stats.clone();
    emptied.branches.clear();
    assert_eq!(emptied.slowest(), None);
}

#[test]
fn slowest_agrees_with_the_lags_on_random_schedules() {
    for seed in 0..50 {
        let mut rng = support::Rng::new(seed);
        let n = 2 + rng.below(3);
        let cap = 1 + rng.below(4);
        let (mut branches, _) = counted(30, n, cap);
        for _ in 0..100 {
            let i = rng.below(branches.len());
            let _ = poll_once(&mut branches[i]);
            // Each `lag()` counts the branch's read-ahead as of now, and so
            // does the snapshot for every branch after them.
            let lags: Vec<_> = branches.iter().map(Branch::lag).collect();
            let stats = branches[0].stats();
            let slowest = stats.slowest().expect("a live branch");
            let max_lag = stats.branches.iter().map(|b| b.lag).max().unwrap();
            let first_with_max = stats.branches.iter().find(|b| b.lag == max_lag);
            assert_eq!(Some(slowest), first_with_max, "seed {seed}: {stats:?}");
            for (branch, lag) in branches.iter().zip(lags) {
                assert_eq!(entry(&stats, branch.id()).lag, lag);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// stalled_upstream

#[test]
fn only_the_branch_that_holds_a_full_buffer_stalls() {
    for cap in 2..=4 {
        // Fed one item at a time, so that the buffer is seen not full yet.
        let (branches, mut feeder, _) = fed(2, cap);
        let [mut fast, mut slow]: [_; 2] = branches.try_into().unwrap();
        let (f, s) = (fast.id(), slow.id());
        assert_eq!(stalled(&fast, s), Duration::ZERO);

        // Not full yet: nobody stalls, however long it takes.
        for i in 0..cap as u64 - 1 {
            feeder.read(&mut fast, i);
        }
        assert_eq!(fast.stats().buffered, cap - 1);
        pause();
        assert_eq!(stalled(&fast, s), Duration::ZERO, "cap {cap}: not full");

        // Full: the slow branch, at the oldest position, holds it.
        feeder.read(&mut fast, cap as u64 - 1);
        assert_eq!(poll_once(&mut fast), Poll::Pending);
        pause();
        let first = fast.stats();
        assert!(
            entry(&first, s).stalled_upstream > Duration::ZERO,
            "cap {cap}"
        );
        assert_eq!(
            entry(&first, f).stalled_upstream,
            Duration::ZERO,
            "cap {cap}"
        );

        // Still full: the snapshot includes the stall in progress.
        pause();
        let second = slow.stats();
        assert!(entry(&second, s).stalled_upstream >= entry(&first, s).stalled_upstream);
        assert_eq!(entry(&second, f).stalled_upstream, Duration::ZERO);

        // The slow branch frees room (once it has yielded what it read ahead
        // with the oldest item): its stall ends and stays put.
        feeder.read(&mut slow, 0);
        let mut slow_next = 1;
        yield_read_ahead(&mut slow, &mut slow_next);
        let ended = stalled(&fast, s);
        assert!(ended >= entry(&second, s).stalled_upstream);
        pause();
        assert_eq!(stalled(&fast, s), ended, "cap {cap}: the stall has ended");
        assert_eq!(stalled(&slow, f), Duration::ZERO);

        // The slow branch catches up and overtakes until it waits for room:
        // the buffer is full again, and now the formerly fast branch, at its
        // oldest position, holds it.
        feeder.read_until_pending(&mut slow, &mut slow_next);
        assert!(
            slow_next > cap as u64,
            "cap {cap}: the slow branch overtook"
        );
        assert!(slow_next - cap as u64 <= cap as u64);
        pause();
        let stats = slow.stats();
        assert!(
            entry(&stats, f).stalled_upstream > Duration::ZERO,
            "cap {cap}"
        );
        assert_eq!(entry(&stats, s).stalled_upstream, ended, "cap {cap}");
    }
}

/// With capacity 1 the poller pushes an item into an empty buffer, which is
/// then full while the poller is, for an instant under the lock, at the
/// oldest position. It never held the upstream back: no other branch waited
/// for it, and no snapshot can see it there.
#[test]
fn the_branch_that_fills_a_capacity_one_buffer_does_not_stall() {
    let (branches, _) = counted(10, 2, 1);
    let [mut fast, slow]: [_; 2] = branches.try_into().unwrap();
    read(&mut fast, 0);
    assert_eq!(poll_once(&mut fast), Poll::Pending);
    pause();
    let stats = fast.stats();
    assert!(entry(&stats, slow.id()).stalled_upstream > Duration::ZERO);
    assert_eq!(
        entry(&stats, fast.id()).stalled_upstream,
        Duration::ZERO,
        "the poller of a capacity-1 buffer is charged a stall: {stats:?}"
    );
}

#[test]
fn a_branch_never_at_the_oldest_position_of_a_full_buffer_never_stalls() {
    for cap in 2..=4 {
        // Fed one item at a time: over an always-ready upstream, `fast`'s
        // first read would fill the buffer with `middle` still at 0.
        let (branches, mut feeder, _) = fed(3, cap);
        let [mut fast, mut middle, mut slow]: [_; 3] = branches.try_into().unwrap();
        let (f, m, s) = (fast.id(), middle.id(), slow.id());
        // `middle` leaves position 0 before the buffer is full.
        feeder.read(&mut fast, 0);
        feeder.read(&mut middle, 0);
        for i in 1..cap as u64 {
            feeder.read(&mut fast, i);
        }
        assert_eq!(poll_once(&mut fast), Poll::Pending);
        pause();
        let stats = fast.stats();
        assert!(
            entry(&stats, s).stalled_upstream > Duration::ZERO,
            "cap {cap}"
        );
        assert_eq!(
            entry(&stats, m).stalled_upstream,
            Duration::ZERO,
            "cap {cap}"
        );
        assert_eq!(
            entry(&stats, f).stalled_upstream,
            Duration::ZERO,
            "cap {cap}"
        );

        // `slow` frees the oldest slot, `fast` fills the buffer again: now
        // `middle` is at the oldest position, and stalls.
        feeder.read(&mut slow, 0);
        let slow_total = stalled(&fast, s);
        feeder.read(&mut fast, cap as u64);
        assert_eq!(fast.stats().buffered, cap);
        pause();
        let stats = fast.stats();
        assert!(
            entry(&stats, m).stalled_upstream > Duration::ZERO,
            "cap {cap}"
        );
        assert!(entry(&stats, s).stalled_upstream > slow_total, "cap {cap}");
        assert_eq!(
            entry(&stats, f).stalled_upstream,
            Duration::ZERO,
            "cap {cap}"
        );
    }
}

#[test]
fn every_branch_at_the_oldest_position_stalls_until_it_reads_past_it() {
    for cap in 2..=4 {
        let (branches, _) = counted(100, 3, cap);
        let [mut fast, mut slow1, mut slow2]: [_; 3] = branches.try_into().unwrap();
        let (f, s1, s2) = (fast.id(), slow1.id(), slow2.id());
        for i in 0..cap as u64 {
            read(&mut fast, i);
        }
        pause();
        let stats = fast.stats();
        assert!(
            entry(&stats, s1).stalled_upstream > Duration::ZERO,
            "cap {cap}"
        );
        assert!(
            entry(&stats, s2).stalled_upstream > Duration::ZERO,
            "cap {cap}"
        );
        assert_eq!(entry(&stats, f).stalled_upstream, Duration::ZERO);

        // slow1 reads past the oldest item, which slow2 still holds: the
        // buffer stays full, slow1's stall ends, slow2's goes on.
        read(&mut slow1, 0);
        let stats = fast.stats();
        assert_eq!(stats.buffered, cap);
        let (done1, ongoing2) = (
            entry(&stats, s1).stalled_upstream,
            entry(&stats, s2).stalled_upstream,
        );
        pause();
        let stats = fast.stats();
        assert_eq!(entry(&stats, s1).stalled_upstream, done1, "cap {cap}");
        assert!(entry(&stats, s2).stalled_upstream > ongoing2, "cap {cap}");

        // slow2 frees the slot: its stall ends too.
        read(&mut slow2, 0);
        let done2 = stalled(&fast, s2);
        pause();
        let stats = fast.stats();
        assert_eq!(entry(&stats, s1).stalled_upstream, done1);
        assert_eq!(entry(&stats, s2).stalled_upstream, done2);
        assert_eq!(entry(&stats, f).stalled_upstream, Duration::ZERO);
    }
}

#[test]
fn a_stall_in_progress_grows_between_snapshots_and_is_kept_when_it_ends() {
    let (branches, _) = counted(100, 2, 3);
    let [mut fast, mut slow]: [_; 2] = branches.try_into().unwrap();
    for i in 0..3 {
        read(&mut fast, i);
    }
    let mut previous = Duration::ZERO;
    for _ in 0..3 {
        pause();
        let now = stalled(&fast, slow.id());
        assert!(now > Duration::ZERO);
        assert!(
            now > previous,
            "a stall in progress grows: {now:?} <= {previous:?}"
        );
        previous = now;
    }
    // The slow branch frees room once it has yielded what it read ahead
    // with the oldest item: its stall ends.
    read(&mut slow, 0);
    let mut slow_next = 1;
    yield_read_ahead(&mut slow, &mut slow_next);
    let total = stalled(&fast, slow.id());
    assert!(total >= previous);
    pause();
    assert_eq!(stalled(&fast, slow.id()), total);

    // A second stall, once the fast branch has filled the buffer again, adds
    // to the first.
    let mut fast_next = 3;
    while let Poll::Ready(item) = poll_once(&mut fast) {
        assert_eq!(item, Some(fast_next));
        fast_next += 1;
    }
    assert_eq!(fast_next - slow_next, 3);
    pause();
    assert!(stalled(&fast, slow.id()) > total);
}

#[test]
fn a_fork_stalls_from_the_fork_on_only_if_it_starts_at_the_oldest_position_of_a_full_buffer() {
    // Fed one item at a time: over an always-ready upstream, `fast`'s first
    // read would fill the buffer.
    let (branches, mut feeder, _) = fed(2, 3);
    let [mut fast, mut slow]: [_; 2] = branches.try_into().unwrap();
    feeder.read(&mut fast, 0);
    // Forked while the buffer is not full: no stall.
    let early = slow.clone();
    pause();
    assert_eq!(stalled(&fast, early.id()), Duration::ZERO);
    drop(early);

    feeder.read(&mut fast, 1);
    feeder.read(&mut fast, 2);
    assert_eq!(fast.stats().buffered, 3);
    pause();
    // Forked at the oldest position of the full buffer: stalls from now on,
    // less than the original, whose stall began earlier.
    let fork = slow.clone();
    // Forked at the newest position: never at the oldest one.
    let fast_fork = fast.clone();
    pause();
    let stats = fast.stats();
    let fork_stall = entry(&stats, fork.id()).stalled_upstream;
    assert!(fork_stall > Duration::ZERO);
    assert!(entry(&stats, slow.id()).stalled_upstream > fork_stall);
    assert_eq!(
        entry(&stats, fast_fork.id()).stalled_upstream,
        Duration::ZERO
    );

    // The original reads past; the fork still holds the slot and stalls on.
    feeder.read(&mut slow, 0);
    let slow_total = stalled(&fast, slow.id());
    let fork_so_far = stalled(&fast, fork.id());
    pause();
    assert_eq!(stalled(&fast, slow.id()), slow_total);
    assert!(stalled(&fast, fork.id()) > fork_so_far);

    // Dropping the fork frees the slot; its entry is gone.
    drop(fork);
    let stats = fast.stats();
    assert_eq!(stats.buffered, 2);
    assert_eq!(ids(&stats), [0, 1, 4]);
}

#[test]
fn dropping_one_of_two_holders_keeps_the_other_stalling() {
    let (branches, _) = counted(100, 3, 2);
    let [mut fast, slow1, slow2]: [_; 3] = branches.try_into().unwrap();
    read(&mut fast, 0);
    read(&mut fast, 1);
    pause();
    drop(slow1);
    let stats = fast.stats();
    assert_eq!(stats.buffered, 2, "slow2 still holds both items");
    let before = entry(&stats, slow2.id()).stalled_upstream;
    assert!(before > Duration::ZERO);
    pause();
    assert!(stalled(&fast, slow2.id()) > before);
    assert_eq!(stalled(&fast, fast.id()), Duration::ZERO);
}

// ---------------------------------------------------------------------------
// Display, Clone, PartialEq

/// The rows of a `Stats` table: the lines after the summary and the header.
fn table_rows(display: &str) -> Vec<&str> {
    display.lines().skip(2).collect()
}

fn row_id(row: &str) -> usize {
    row.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn the_table_has_a_row_per_branch_and_marks_the_slowest_when_it_lags() {
    let (branches, _) = counted(20, 3, 4);
    let [mut a, mut b, c]: [_; 3] = branches.try_into().unwrap();

    // Nobody lags: no row is marked.
    let text = a.stats().to_string();
    assert!(text.contains("buffered 0 + read ahead 0 of 4"), "{text}");
    assert!(text.contains("open"), "{text}");
    assert_eq!(
        table_rows(&text)
            .iter()
            .map(|r| row_id(r))
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(!text.contains("slowest"), "{text}");

    // `a` reads 3 items (pulling them, and maybe one more: it may pull
    // ahead, up to the free room), `b` one, `c` none: `c` lags the most.
    for i in 0..3 {
        read(&mut a, i);
    }
    read(&mut b, 0);
    let stats = a.stats();
    assert!((3..=4).contains(&stats.pulled), "{stats:?}");
    let text = stats.to_string();
    let summary = format!(
        "buffered {} + read ahead {} of 4 (high water {}), pulled {}, upstream open",
        stats.buffered, stats.read_ahead, stats.high_water, stats.pulled
    );
    assert!(text.starts_with(&summary), "{text}");
    let rows = table_rows(&text);
    assert_eq!(
        rows.iter().map(|r| row_id(r)).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let marked: Vec<_> = rows.iter().filter(|r| r.contains("slowest")).collect();
    assert_eq!(marked.len(), 1, "{text}");
    assert_eq!(row_id(marked[0]), c.id());
    for row in &rows {
        assert!(row.contains("lossless"), "{row}");
    }

    // Clones, drops, and ids that no longer start at 0.
    drop(a);
    let d = c.clone();
    let text = b.stats().to_string();
    let rows = table_rows(&text);
    assert_eq!(
        rows.iter().map(|r| row_id(r)).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let marked: Vec<_> = rows.iter().filter(|r| r.contains("slowest")).collect();
    assert_eq!(marked.len(), 1, "{text}");
    assert_eq!(row_id(marked[0]), c.id(), "the smaller id of a tie: {text}");
    drop((c, d));

    // The end of the upstream shows.
    let mut b = b;
    while let Poll::Ready(Some(_)) = poll_once(&mut b) {}
    assert!(b.stats().to_string().contains("done"));
}

#[test]
fn branch_stats_display_names_the_branch_and_its_counters() {
    let (branches, _) = counted(20, 2, 4);
    let [mut a, b]: [_; 2] = branches.try_into().unwrap();
    // `a` reads 3 items; `b`, which has read nothing, lags by all it pulled.
    for i in 0..3 {
        read(&mut a, i);
    }
    let stats = a.stats();
    let text = entry(&stats, b.id()).to_string();
    assert!(text.contains("branch 1"), "{text}");
    assert!(text.contains(&format!("lag {},", stats.pulled)), "{text}");
    assert!(text.contains("delivered 0"), "{text}");
    assert!(!text.contains("lossy"), "{text}");
    assert!(!text.contains("missed"), "{text}");
    let text = entry(&stats, a.id()).to_string();
    assert!(text.contains("branch 0"), "{text}");
    assert!(text.contains("delivered 3"), "{text}");

    // A lossy branch says so, with what it missed: to read item 4, `a`
    // needs a fifth item pulled, and room for it, which `b` gives up items
    // for.
    let b = b.into_lossy();
    read(&mut a, 3);
    read(&mut a, 4);
    let stats = a.stats();
    let lossy = entry(&stats, b.id());
    assert!(lossy.lossy);
    assert!(lossy.missed >= 1, "{stats:?}");
    let text = lossy.to_string();
    assert!(text.contains("lossy"), "{text}");
    assert!(text.contains(&format!("missed {}", lossy.missed)), "{text}");
    let table = stats.to_string();
    let row = table_rows(&table)
        .into_iter()
        .find(|row| row_id(row) == b.id())
        .unwrap();
    assert!(
        row.split_whitespace().any(|word| word == "lossy"),
        "{table}"
    );
}

#[test]
fn snapshots_clone_and_compare() {
    // Fed one item at a time: over an always-ready upstream, `a`'s first
    // read would fill the buffer, and `b`'s stall would make every snapshot
    // differ.
    let (branches, mut feeder, _) = fed(2, 4);
    let [mut a, b]: [_; 2] = branches.try_into().unwrap();
    feeder.read(&mut a, 0);
    let stats = a.stats();
    let copy = stats.clone();
    assert_eq!(copy, stats);
    assert_eq!(copy.branches[0].clone(), stats.branches[0]);
    assert_ne!(stats.branches[0], stats.branches[1]);

    // Nothing changed, nothing full: an equal snapshot.
    assert_eq!(b.stats(), stats);

    // One more item: a different snapshot.
    feeder.read(&mut a, 1);
    let later = b.stats();
    assert_ne!(later, stats);
    assert_ne!(later.branches, stats.branches);

    let mut changed = stats.clone();
    changed.high_water += 1;
    assert_ne!(changed, stats);
    let mut changed = stats.clone();
    changed.branches[1].stalled_upstream = Duration::from_nanos(1);
    assert_ne!(changed, stats);
    assert_ne!(format!("{changed:?}"), "");
}

/// An item whose next `Clone` panics once [`CLONE_BOOM`] is set.
#[derive(Debug, PartialEq)]
struct FragileClone(u32);

/// Makes the next clone of a [`FragileClone`] panic; only the test below
/// sets it.
static CLONE_BOOM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Clone for FragileClone {
    fn clone(&self) -> Self {
        if CLONE_BOOM.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("clone boom");
        }
        Self(self.0)
    }
}

/// The poller's batch fills the buffer (with capacity 1, any batch does),
/// and its clone of the first item panics: the batch is buffered for every
/// branch, the branches at the oldest position hold the full buffer all the
/// same, and their stall is counted from then on.
#[test]
fn a_panicking_clone_in_the_pollers_read_does_not_skip_the_others_stalls() {
    let [mut a, b, c]: [_; 3] = futures::stream::iter((0..4).map(FragileClone))
        .fanout(3, 1)
        .try_into()
        .ok()
        .unwrap();
    CLONE_BOOM.store(true, std::sync::atomic::Ordering::SeqCst);
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_once(&mut a)));
    assert!(polled.is_err(), "the clone panicked");
    let stats = a.stats();
    assert_eq!(
        (stats.pulled, stats.buffered, stats.read_ahead),
        (1, 1, 0),
        "the batch is buffered, for every branch"
    );
    pause();
    let stats = a.stats();
    let mut stalls = Vec::new();
    for held in [&b, &c] {
        let stall = entry(&stats, held.id()).stalled_upstream;
        assert!(
            stall > Duration::ZERO,
            "branch {} holds the full buffer: {stats:?}",
            held.id()
        );
        stalls.push(stall);
    }

    // `a` reads the item, and waits: `b` and `c` still hold it.
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(FragileClone(0))));
    assert!(poll_once(&mut a).is_pending(), "full");
    pause();
    let stats = a.stats();
    for (held, before) in [&b, &c].into_iter().zip(stalls) {
        assert!(
            entry(&stats, held.id()).stalled_upstream > before,
            "branch {} still holds the full buffer: {stats:?}",
            held.id()
        );
    }
}

/// Bug 2 of issue 9: `slowest()` took the largest lag over every branch, and
/// so named a lossy branch, which never holds the upstream back, and the table
/// marked it "<- slowest". It names the lossless branch with the largest lag;
/// a lossy one only when every branch is lossy.
#[test]
fn slowest_never_names_a_lossy_branch_while_a_lossless_one_is_alive() {
    let (mut reader, tap) = futures::stream::iter(0..100u64).tee(4);
    let tap = tap.into_lossy();
    for i in 0..10 {
        read(&mut reader, i);
    }
    let stats = reader.stats();
    // The tap still has item 9 to read (nobody needed its room since): it
    // lags more than the reader, which has yielded up to 9 and lags only by
    // what it may have read ahead. The old rule named it.
    let (tap_lag, reader_lag) = (entry(&stats, tap.id()).lag, entry(&stats, reader.id()).lag);
    assert!(tap_lag > reader_lag, "{stats:?}");
    let slowest = stats.slowest().expect("live branches");
    assert_eq!(slowest.id, reader.id(), "{stats:?}");
    assert!(!slowest.lossy);
    let table = stats.to_string();
    for row in table_rows(&table) {
        if row_id(row) == tap.id() {
            assert!(!row.contains("<- slowest"), "{table}");
        }
        if row.contains("<- slowest") {
            assert_eq!(row_id(row), reader.id(), "{table}");
        }
    }

    // With every branch lossy, the one with the largest lag it is.
    let reader = reader.into_lossy();
    let stats = reader.stats();
    assert_eq!(stats.slowest().map(|branch| branch.id), Some(tap.id()));
    assert!(table_rows(&stats.to_string())
        .iter()
        .any(|row| row_id(row) == tap.id() && row.contains("<- slowest")));
}
