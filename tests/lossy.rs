//! Lossy branches: they never hold anyone back, give up the oldest item when
//! a branch needs room, report every gap as `Err(Lagged(k))` with the exact
//! count, and show up in the statistics with what they missed. Backpressure
//! branches beside them keep holding each other back, and memory stays
//! bounded.

mod support;

use std::collections::HashSet;
use std::error::Error;
use std::task::Poll;
use std::time::Duration;

use fanout::{Branch, Lagged, Lossy, StreamExt as _};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream};

use support::model::{synced_stats, Handle, Model, Polled};
use support::{
    counted, drain_ready, entry, poll_once, poll_with, CountedUpstream, CountingPolls, Rng,
    Tracked, Tracker, WakeFlag,
};

/// Polls `branch` once and expects item `expected`.
fn read<S>(branch: &mut Branch<S>, expected: u64)
where
    S: Stream<Item = u64> + Unpin,
{
    assert_eq!(poll_once(branch), Poll::Ready(Some(expected)));
}

/// Polls a lossy branch once and expects `expected`.
fn expect<S>(branch: &mut Lossy<S>, expected: Result<u64, Lagged>)
where
    S: Stream<Item = u64> + Unpin,
{
    assert_eq!(poll_once(branch), Poll::Ready(Some(expected)));
}

/// Checks what a lossy branch yielded from position `start` of an upstream
/// of `len` items: increasing items, each gap reported by a `Lagged` with
/// its exact size, and reports plus items adding up to every item. Returns
/// the number of items missed.
fn check_gaps(yielded: &[Result<u64, Lagged>], start: u64, len: u64) -> u64 {
    let mut next = start;
    let mut missed = 0;
    let mut received = 0;
    for (i, outcome) in yielded.iter().enumerate() {
        match *outcome {
            Ok(item) => {
                assert_eq!(item, next, "item {i} of {yielded:?}");
                next += 1;
                received += 1;
            }
            Err(Lagged(k)) => {
                assert!(k > 0, "an empty report at {i} of {yielded:?}");
                next += k;
                missed += k;
            }
        }
    }
    assert_eq!(next, len, "reports and items do not add up: {yielded:?}");
    assert_eq!(missed + received, len - start);
    missed
}

// ---------------------------------------------------------------------------
// Nobody waits for a lossy branch

#[test]
fn a_lossy_branch_never_makes_a_backpressure_branch_wait() {
    const LEN: u64 = 1000;
    for cap in 1..=4 {
        for lossy in 1..=2 {
            let (mut branches, counts) = counted(LEN, 1 + lossy, cap);
            let mut main = branches.remove(0);
            let mut taps: Vec<_> = branches.into_iter().map(Branch::into_lossy).collect();
            for i in 0..LEN {
                assert_eq!(
                    poll_once(&mut main),
                    Poll::Ready(Some(i)),
                    "cap {cap}, {lossy} lossy: item {i}"
                );
                for tap in &taps {
                    assert!(tap.lag() <= cap);
                }
            }
            assert_eq!(poll_once(&mut main), Poll::Ready(None));
            // Batches that fit in the room until the buffer is full, then
            // each poll evicts one item and pulls one: the upstream is
            // polled once per item, and once for the end.
            assert_eq!(counts.polls(), LEN as usize + 1, "one poll per item");

            // To learn about the end, `main` needed one more slot: the taps
            // gave that up too, and kept the last `cap - 1` items.
            let missed = LEN - cap as u64 + 1;
            let stats = main.stats();
            assert_eq!(stats.pulled, LEN);
            assert_eq!(stats.buffered, cap - 1);
            for tap in &taps {
                let tap_stats = entry(&stats, tap.id());
                assert!(tap_stats.lossy);
                assert_eq!(tap_stats.missed, missed);
                assert_eq!(tap_stats.delivered, 0);
                assert_eq!(tap_stats.lag, cap - 1);
            }
            assert!(!entry(&stats, main.id()).lossy);
            assert_eq!(entry(&stats, main.id()).missed, 0);
            for tap in &mut taps {
                let mut want = vec![Err(Lagged(missed))];
                want.extend((missed..LEN).map(Ok));
                assert_eq!(drain_ready(tap), want, "cap {cap}");
                assert_eq!(entry(&tap.stats(), tap.id()).delivered, cap as u64 - 1);
            }
        }
    }
}

#[test]
fn a_lossy_branch_at_the_oldest_position_gives_it_up_even_if_the_upstream_then_waits() {
    let (tx, rx) = mpsc::unbounded::<u64>();
    let (mut main, tap) = rx.tee(2);
    let mut tap = tap.into_lossy();
    tx.unbounded_send(0).unwrap();
    tx.unbounded_send(1).unwrap();
    read(&mut main, 0);
    read(&mut main, 1);
    assert_eq!(tap.stats().buffered, 2);

    // `main` needs room to poll the channel, which has nothing: the tap's
    // oldest item is gone all the same.
    assert_eq!(poll_once(&mut main), Poll::Pending);
    let stats = tap.stats();
    assert_eq!(stats.buffered, 1);
    assert_eq!(entry(&stats, tap.id()).missed, 1);
    assert_eq!(tap.lag(), 1);
    expect(&mut tap, Err(Lagged(1)));
    expect(&mut tap, Ok(1));

    // The channel closes: the poll that learns it needs no room now.
    tx.unbounded_send(2).unwrap();
    read(&mut main, 2);
    drop(tx);
    assert_eq!(poll_once(&mut main), Poll::Ready(None));
    assert_eq!(drain_ready(&mut tap), [Ok(2)]);
    assert_eq!(entry(&tap.stats(), tap.id()).missed, 1);
}

/// A branch that needs room evicts one item, which leaves room for one: its
/// batch is that one item, however many the upstream has ready (a batch fits
/// in the free room), so a lossy branch gives up exactly one item per item
/// pulled past a full buffer. A batch that fits in the room costs it nothing.
#[test]
fn an_eviction_makes_room_for_a_batch_of_one_item_however_many_are_ready() {
    let (tx, rx) = mpsc::unbounded::<u64>();
    let (rx, counts) = CountingPolls::new(rx);
    let (mut main, tap) = rx.tee(4);
    let mut tap = tap.into_lossy();
    for i in 0..3 {
        tx.unbounded_send(i).unwrap();
    }

    // Three items ready, in a room of 4: `main` pulls them (in batches that
    // fit in the room), and nothing is given up.
    for i in 0..3 {
        read(&mut main, i);
    }
    assert_eq!(counts.yielded(), 3);
    let stats = main.stats();
    assert_eq!(
        (
            stats.buffered,
            stats.read_ahead,
            entry(&stats, tap.id()).missed
        ),
        (3, 0, 0)
    );

    // Seven ready now. `main` holds nothing ahead, and has never waited: a
    // room of 1, so a batch of one (the upstream is not polled past it), and
    // nothing given up.
    for i in 3..10 {
        tx.unbounded_send(i).unwrap();
    }
    let polls = counts.polls();
    read(&mut main, 3);
    assert_eq!((counts.yielded(), counts.polls()), (4, polls + 1));
    let stats = main.stats();
    assert_eq!((stats.buffered, entry(&stats, tap.id()).missed), (4, 0));

    // Full, the tap alone at the oldest position: each read evicts one item
    // and pulls one.
    for i in 4..8u64 {
        read(&mut main, i);
        assert_eq!(counts.yielded() as u64, i + 1, "item {i}");
        assert_eq!(counts.polls() as u64, polls as u64 + i - 2, "item {i}");
        let stats = main.stats();
        assert_eq!(stats.buffered, 4, "item {i}");
        assert_eq!(entry(&stats, tap.id()).missed, i - 3, "item {i}");
        assert_eq!(tap.lag(), 4, "item {i}");
    }
    expect(&mut tap, Err(Lagged(4)));
    for i in 4..8 {
        expect(&mut tap, Ok(i));
    }

    // Caught up, with an empty buffer: the tap's poll pulls a batch of the
    // two items left (one or both: a batch fits in the room), then perhaps
    // the channel's `Pending`, and gives nothing up.
    let polls = counts.polls();
    expect(&mut tap, Ok(8));
    let batch = counts.yielded() - 8;
    assert!((1..=2).contains(&batch), "a batch of {batch}");
    assert!((batch..=batch + 1).contains(&(counts.polls() - polls)));
    assert_eq!((tap.lag(), main.lag()), (batch - 1, batch));
    assert_eq!(entry(&main.stats(), tap.id()).missed, 4);
    read(&mut main, 8);
    read(&mut main, 9);
    expect(&mut tap, Ok(9));
    drop(tx);
    assert_eq!(poll_once(&mut main), Poll::Ready(None));
    assert_eq!(poll_once(&mut tap), Poll::Ready(None));
    let stats = main.stats();
    assert_eq!(
        (
            entry(&stats, tap.id()).missed,
            entry(&stats, tap.id()).delivered
        ),
        (4, 6)
    );
}

// ---------------------------------------------------------------------------
// Gaps and reports, scripted

#[test]
fn gaps_match_the_lagged_reports_exactly() {
    let (branches, _) = counted(20, 2, 3);
    let [mut main, tap]: [_; 2] = branches.try_into().unwrap();
    let mut tap = tap.into_lossy();

    // 5 items through a buffer of 3: the tap gave up 0 and 1.
    for i in 0..5 {
        read(&mut main, i);
    }
    let stats = main.stats();
    assert_eq!(entry(&stats, tap.id()).missed, 2, "counted before reported");
    assert_eq!((stats.buffered, tap.lag()), (3, 3));
    expect(&mut tap, Err(Lagged(2)));
    assert_eq!(
        entry(&tap.stats(), tap.id()).missed,
        2,
        "reporting changes nothing"
    );
    expect(&mut tap, Ok(2));

    // Not full (3 and 4 left, the tap at 3): nothing is given up.
    read(&mut main, 5);
    assert_eq!(entry(&main.stats(), tap.id()).missed, 2);
    // Full: 3 and 4 go.
    read(&mut main, 6);
    read(&mut main, 7);
    expect(&mut tap, Err(Lagged(2)));
    expect(&mut tap, Ok(5));
    expect(&mut tap, Ok(6));
    expect(&mut tap, Ok(7));
    // Caught up, with an empty buffer: it polls the upstream itself, with
    // nothing to give up, and pulls a batch that fits in the room of 3.
    expect(&mut tap, Ok(8));
    let stats = tap.stats();
    let batch = (stats.pulled - 8) as usize;
    assert!((1..=3).contains(&batch), "a batch of {batch}");
    assert_eq!(entry(&stats, tap.id()).missed, 4);
    assert_eq!((tap.lag(), main.lag()), (batch - 1, batch));
    read(&mut main, 8);

    // (A read-ahead holds at most a quarter of the capacity, so with a
    // capacity of 3 no branch holds anything read ahead: every count below
    // follows from the items the branches have yielded.)

    // Two reports in a row: evicted again before it read anything.
    for i in 9..12 {
        read(&mut main, i);
    }
    let stats = main.stats();
    assert_eq!((stats.buffered, entry(&stats, tap.id()).missed), (3, 4));
    read(&mut main, 12); // gives up 9
    expect(&mut tap, Err(Lagged(1)));
    read(&mut main, 13); // gives up 10
    expect(&mut tap, Err(Lagged(1)));
    expect(&mut tap, Ok(11));

    let rest: Vec<u64> = drain_ready(&mut main);
    assert_eq!(rest, (14..20).collect::<Vec<_>>());
    // The tap, at 12, gave up 12 to 16 for `main` to read 15 to 19, and 17
    // for `main` to see the end.
    let tail = drain_ready(&mut tap);
    assert_eq!(tail, [Err(Lagged(6)), Ok(18), Ok(19)]);
    let stats = tap.stats();
    let tap_stats = entry(&stats, tap.id());
    assert_eq!((tap_stats.missed, tap_stats.delivered), (12, 8));
    assert_eq!(tap_stats.missed + tap_stats.delivered, 20);
}

#[test]
fn every_lossy_branch_at_the_oldest_position_gives_it_up_and_the_others_keep_it() {
    // Three lossy taps: one at the oldest position with another, one ahead.
    let (mut branches, _) = counted(20, 4, 3);
    let mut main = branches.remove(0);
    let mut taps: Vec<_> = branches.into_iter().map(Branch::into_lossy).collect();
    read(&mut main, 0);
    expect(&mut taps[2], Ok(0));
    read(&mut main, 1);
    read(&mut main, 2);
    // Full, taps 0 and 1 at 0, tap 2 at 1: the next item costs taps 0 and 1
    // one item each, and tap 2 nothing.
    read(&mut main, 3);
    let stats = main.stats();
    let missed: Vec<_> = taps.iter().map(|t| entry(&stats, t.id()).missed).collect();
    assert_eq!(missed, [1, 1, 0]);
    // Now all three are at the oldest position, 1.
    read(&mut main, 4);
    let stats = main.stats();
    let missed: Vec<_> = taps.iter().map(|t| entry(&stats, t.id()).missed).collect();
    assert_eq!(missed, [2, 2, 1]);
    expect(&mut taps[0], Err(Lagged(2)));
    expect(&mut taps[1], Err(Lagged(2)));
    expect(&mut taps[2], Err(Lagged(1)));
    for tap in &mut taps {
        expect(tap, Ok(2));
    }
}

// ---------------------------------------------------------------------------
// Forks and drops

#[test]
fn a_fork_of_a_lossy_branch_is_lossy_and_reports_its_own_gaps() {
    let (branches, _) = counted(20, 2, 2);
    let [mut main, tap]: [_; 2] = branches.try_into().unwrap();
    let mut tap = tap.into_lossy();
    read(&mut main, 0);
    read(&mut main, 1);
    let mut fork = tap.clone();
    assert_eq!(fork.id(), 2);
    let stats = fork.stats();
    let fork_stats = entry(&stats, fork.id());
    assert!(fork_stats.lossy);
    assert_eq!(
        (fork_stats.lag, fork_stats.delivered, fork_stats.missed),
        (2, 0, 0)
    );

    // Both are at the oldest position: both give item 0 up.
    read(&mut main, 2);
    let stats = main.stats();
    assert_eq!(entry(&stats, tap.id()).missed, 1);
    assert_eq!(entry(&stats, fork.id()).missed, 1);
    expect(&mut tap, Err(Lagged(1)));
    expect(&mut tap, Ok(1));

    // Only the fork is left at the oldest position, 1.
    read(&mut main, 3);
    let stats = main.stats();
    assert_eq!(entry(&stats, tap.id()).missed, 1);
    assert_eq!(entry(&stats, fork.id()).missed, 2);
    expect(&mut fork, Err(Lagged(2)));
    expect(&mut fork, Ok(2));
    expect(&mut tap, Ok(2));

    // A fork made while a report is pending starts with no report of its
    // own, at the same position; the report stays with the original.
    read(&mut main, 4); // full again: 3 and 4, both taps at 3
    read(&mut main, 5); // gives 3 up
    let mut late = fork.clone();
    assert!(entry(&late.stats(), late.id()).lossy);
    assert_eq!(entry(&late.stats(), late.id()).missed, 0);
    expect(&mut late, Ok(4));
    expect(&mut fork, Err(Lagged(1)));
    expect(&mut fork, Ok(4));

    // The original tap goes away mid-way; the forks go on.
    drop(tap);
    let ids: Vec<_> = main.stats().branches.iter().map(|b| b.id).collect();
    assert_eq!(ids, [0, 2, 3]);
    let rest: Vec<u64> = drain_ready(&mut main);
    assert_eq!(rest, (6..20).collect::<Vec<_>>());
    let fork_rest = drain_ready(&mut fork);
    let late_rest = drain_ready(&mut late);
    // Both forks were at 5 after reading 4; each reports its own gap.
    assert_eq!(check_gaps(&fork_rest, 5, 20), 14);
    assert_eq!(check_gaps(&late_rest, 5, 20), 14);
    let stats = main.stats();
    assert_eq!(entry(&stats, fork.id()).missed, 2 + 1 + 14);
    assert_eq!(entry(&stats, late.id()).missed, 14);
}

#[test]
fn a_fork_of_a_backpressure_branch_beside_a_lossy_one_applies_backpressure() {
    let (branches, _) = counted(20, 2, 2);
    let [mut main, tap]: [_; 2] = branches.try_into().unwrap();
    let tap = tap.into_lossy();
    let mut fork = main.clone();
    assert!(!entry(&fork.stats(), fork.id()).lossy);
    read(&mut main, 0);
    read(&mut main, 1);
    // The fork is at the oldest position with the tap: `main` waits.
    assert_eq!(poll_once(&mut main), Poll::Pending);
    assert_eq!(entry(&main.stats(), tap.id()).missed, 0);
    read(&mut fork, 0);
    // Now only the tap holds item 0: `main` goes on, the tap gives it up.
    read(&mut main, 2);
    assert_eq!(entry(&main.stats(), tap.id()).missed, 1);
}

#[test]
fn dropping_a_lossy_branch_with_a_report_pending_frees_its_items() {
    let tracker = Tracker::new();
    let (mut main, tap) = tracker.stream(10).tee(3);
    let tap = tap.into_lossy();
    for i in 0..5 {
        assert_eq!(
            poll_once(&mut main).map(|o| o.map(|t| t.value)),
            Poll::Ready(Some(i))
        );
    }
    let stats = main.stats();
    assert_eq!((stats.buffered, entry(&stats, tap.id()).missed), (3, 2));
    assert_eq!(tracker.live(), 3);
    drop(tap);
    let stats = main.stats();
    assert_eq!(stats.buffered, 0);
    assert_eq!(stats.branches.len(), 1);
    assert_eq!(tracker.live(), 0);
    assert_eq!(drain_ready(&mut main).len(), 5);
    drop(main);
    assert_eq!(tracker.live(), 0);
}

// ---------------------------------------------------------------------------
// Every branch lossy

/// The fastest tap's polls pull batches that fit in the room until the
/// buffer is full; from then on the buffer is a full ring: each poll at its
/// end evicts the oldest item, which leaves room for one, and pulls exactly
/// one item.
#[test]
fn when_every_branch_is_lossy_the_buffer_is_a_ring_and_the_upstream_follows_the_fastest() {
    const LEN: u64 = 100;
    for cap in 1..=4 {
        for n in 2..=3 {
            let (branches, counts) = counted(LEN, n, cap);
            let mut taps: Vec<_> = branches.into_iter().map(Branch::into_lossy).collect();
            for i in 0..LEN {
                expect(&mut taps[0], Ok(i));
                // The fastest tap yields the first item of each batch it
                // pulls, and a batch fits in the room.
                let pulled = counts.yielded() as u64;
                assert!(
                    pulled > i && pulled - i <= cap as u64,
                    "cap {cap} n {n}: pulled {pulled} when the fastest read {i}"
                );
                let ring = (pulled as usize).min(cap);
                let stats = taps[0].stats();
                assert_eq!(
                    stats.buffered, ring,
                    "cap {cap} n {n}: a ring, full once filled"
                );
                assert_eq!(stats.pulled, pulled);
                assert_eq!(taps[0].lag() as u64, pulled - i - 1);
                for tap in &taps[1..] {
                    assert_eq!(tap.lag(), ring);
                }
            }
            assert_eq!(poll_once(&mut taps[0]), Poll::Ready(None));
            // One poll per item (the first batch too), and one for the end.
            assert_eq!(counts.polls(), LEN as usize + 1);
            let missed = LEN - cap as u64 + 1;
            for tap in &mut taps[1..] {
                let mut want = vec![Err(Lagged(missed))];
                want.extend((missed..LEN).map(Ok));
                assert_eq!(drain_ready(tap), want, "cap {cap} n {n}");
            }
            assert_eq!(entry(&taps[0].stats(), taps[0].id()).missed, 0);
        }
    }
}

// ---------------------------------------------------------------------------
// Stalls: a lossy branch never holds the upstream back

/// Lets time pass, so that a stall in progress is measurably non-zero. The
/// time itself is never compared with anything.
fn pause() {
    std::thread::sleep(Duration::from_millis(1));
}

#[test]
fn a_lossy_branch_never_counts_as_holding_the_upstream_back() {
    for cap in 1..=4 {
        let (branches, _) = counted(100, 3, cap);
        let [mut main, slow, tap]: [_; 3] = branches.try_into().unwrap();
        let tap = tap.into_lossy();
        for i in 0..cap as u64 {
            read(&mut main, i);
        }
        // Full, with `slow` and the tap at the oldest position: only `slow`
        // holds the upstream back, and so does a backpressure fork of it,
        // but not a lossy fork of the tap.
        let tap_fork = tap.clone();
        let slow_fork = slow.clone();
        pause();
        let stats = main.stats();
        assert!(entry(&stats, slow.id()).stalled_upstream > Duration::ZERO);
        assert!(entry(&stats, slow_fork.id()).stalled_upstream > Duration::ZERO);
        assert_eq!(entry(&stats, tap.id()).stalled_upstream, Duration::ZERO);
        assert_eq!(
            entry(&stats, tap_fork.id()).stalled_upstream,
            Duration::ZERO
        );
        assert_eq!(entry(&stats, main.id()).stalled_upstream, Duration::ZERO);

        // `slow` turns lossy: its stall ends there and then, and is kept.
        drop(slow_fork);
        let slow = slow.into_lossy();
        let ended = entry(&main.stats(), slow.id()).stalled_upstream;
        assert!(ended > Duration::ZERO);
        pause();
        assert_eq!(entry(&main.stats(), slow.id()).stalled_upstream, ended);

        // Only lossy branches are left: `main` runs on, and the buffer is
        // full after every item, with nobody stalling.
        for i in cap as u64..cap as u64 + 10 {
            read(&mut main, i);
            pause();
            let stats = main.stats();
            assert_eq!(stats.buffered, cap);
            assert_eq!(entry(&stats, tap.id()).stalled_upstream, Duration::ZERO);
            assert_eq!(
                entry(&stats, tap_fork.id()).stalled_upstream,
                Duration::ZERO
            );
            assert_eq!(entry(&stats, slow.id()).stalled_upstream, ended);
            assert_eq!(entry(&stats, main.id()).stalled_upstream, Duration::ZERO);
        }
    }
}

// ---------------------------------------------------------------------------
// Backpressure among the backpressure branches

#[test]
fn backpressure_branches_still_hold_each_other_back_beside_a_lossy_one() {
    const LEN: u64 = 40;
    for cap in 1..=4 {
        let (branches, counts) = counted(LEN, 3, cap);
        let [mut fast, mut slow, tap]: [_; 3] = branches.try_into().unwrap();
        let _tap = tap.into_lossy();
        let mut fast_read = 0;
        for slow_read in 0..LEN {
            // `fast` reads until it is exactly `cap` items ahead of `slow`.
            loop {
                match poll_once(&mut fast) {
                    Poll::Ready(Some(item)) => {
                        assert_eq!(item, fast_read);
                        fast_read += 1;
                    }
                    Poll::Pending => break,
                    Poll::Ready(None) => break,
                }
                assert!(fast_read - slow_read <= cap as u64, "cap {cap}");
                assert!(counts.yielded() as u64 - slow_read <= cap as u64);
            }
            assert_eq!(fast_read, LEN.min(slow_read + cap as u64), "cap {cap}");
            read(&mut slow, slow_read);
        }
        assert_eq!(fast_read, LEN);
    }
}

// ---------------------------------------------------------------------------
// Wake-ups: a branch waiting for room is woken when only lossy branches are
// left at the oldest position, however that came about.

/// `main` full and waiting for room, `slow` and a lossy tap at the oldest
/// position.
fn waiting_beside_a_lossy_tap() -> (
    Branch<CountedUpstream>,
    Branch<CountedUpstream>,
    Lossy<CountedUpstream>,
    std::sync::Arc<WakeFlag>,
) {
    let (branches, _) = counted(10, 3, 2);
    let [mut main, slow, tap]: [_; 3] = branches.try_into().unwrap();
    let tap = tap.into_lossy();
    read(&mut main, 0);
    read(&mut main, 1);
    let flag = WakeFlag::new();
    assert_eq!(poll_with(&mut main, &flag.waker()), Poll::Pending);
    assert!(!flag.is_woken());
    (main, slow, tap, flag)
}

#[test]
fn a_room_waiter_is_woken_when_the_last_backpressure_branch_reads_past_the_oldest_item() {
    let (mut main, mut slow, tap, flag) = waiting_beside_a_lossy_tap();
    read(&mut slow, 0);
    assert!(flag.is_woken(), "only the tap holds item 0 now");
    read(&mut main, 2);
    assert_eq!(entry(&main.stats(), tap.id()).missed, 1);
}

#[test]
fn a_room_waiter_is_woken_when_the_last_backpressure_branch_at_the_oldest_item_is_dropped() {
    let (mut main, slow, tap, flag) = waiting_beside_a_lossy_tap();
    drop(slow);
    assert!(flag.is_woken(), "only the tap holds item 0 now");
    read(&mut main, 2);
    assert_eq!(entry(&main.stats(), tap.id()).missed, 1);
}

#[test]
fn a_room_waiter_is_woken_when_the_branch_at_the_oldest_item_turns_lossy() {
    let (mut main, slow, tap, flag) = waiting_beside_a_lossy_tap();
    let slow = slow.into_lossy();
    assert!(flag.is_woken(), "only lossy branches hold item 0 now");
    read(&mut main, 2);
    let stats = main.stats();
    assert_eq!(entry(&stats, tap.id()).missed, 1);
    assert_eq!(entry(&stats, slow.id()).missed, 1);
    assert!(entry(&stats, slow.id()).lossy);
}

// ---------------------------------------------------------------------------
// Memory

#[test]
fn live_items_are_the_buffer_the_read_ahead_and_the_held_ones_and_nothing_leaks() {
    for cap in 1..=4 {
        let tracker = Tracker::new();
        let (mut main, tap) = tracker.stream(50).tee(cap);
        let mut tap = tap.into_lossy();
        let mut held: Vec<Tracked> = Vec::new();
        let mut rng = Rng::new(cap as u64);
        let mut main_done = false;
        let mut tap_done = false;
        while !(main_done && tap_done) {
            if !main_done && rng.percent(70) {
                match poll_once(&mut main) {
                    Poll::Ready(Some(item)) => held.push(item),
                    Poll::Ready(None) => main_done = true,
                    Poll::Pending => unreachable!("nothing makes `main` wait"),
                }
            } else if !tap_done {
                match poll_once(&mut tap) {
                    Poll::Ready(Some(Ok(item))) => held.push(item),
                    Poll::Ready(Some(Err(_))) => {}
                    Poll::Ready(None) => tap_done = true,
                    // `cap` items ahead of `main`, the tap waits for it (up
                    // to `cap`: exactly `cap` if `main` holds nothing read
                    // ahead).
                    Poll::Pending => {
                        let ahead = main.stats().read_ahead;
                        assert!(main.lag() <= cap);
                        if ahead == 0 {
                            assert_eq!(main.lag(), cap);
                        }
                    }
                }
            }
            if rng.percent(40) {
                held.clear();
            }
            // `main`'s snapshot is exact for its read-ahead, and a lossy
            // branch never reads ahead.
            let stats = main.stats();
            let inside = stats.buffered + stats.read_ahead;
            assert!(inside <= cap);
            assert_eq!(tracker.live(), inside + held.len(), "cap {cap}");
        }
        drop(held);
        assert_eq!(tracker.live(), 0);
        drop((main, tap));
        assert_eq!(tracker.live(), 0);
    }
}

// ---------------------------------------------------------------------------
// Random interleavings, checked against the shared reference model

/// What `size_hint` returns.
type SizeHint = (usize, Option<usize>);

/// One random program: `lossy[i]` says whether branch `i` is lossy. Every
/// poll is checked against the model between exact snapshots
/// ([`Model::poll_synced`]: what the poll returns, the exact `Lagged(k)`,
/// who gives an item up, the batch in the free room), and after every step
/// the bounds, the items alive (each stored once) and the clone counts. The
/// upstream never returns `Pending`, so every poll of it yields an item or
/// the end, and a branch waits only for a backpressure branch.
fn run_random(seed: u64, cap: usize, len: u64, lossy: &[bool], forks_and_drops: bool) {
    let context = format!("seed {seed}, cap {cap}, len {len}, lossy {lossy:?}");
    let mut rng = Rng::new(seed);
    let tracker = Tracker::counting_each();
    let (upstream, counts) = CountingPolls::new(tracker.stream(len));
    let mut live: Vec<Handle<_>> = upstream
        .fanout(lossy.len(), cap)
        .into_iter()
        .zip(lossy)
        .map(|(branch, &lossy)| {
            let mut handle = Handle::new(branch);
            if lossy {
                handle.make_lossy();
            }
            handle
        })
        .collect();
    let mut model = Model::new(lossy.len(), cap);
    for (i, _) in lossy.iter().enumerate().filter(|(_, &lossy)| lossy) {
        model.make_lossy(i);
    }
    let upstream = || counts.upstream();
    // Each branch's yields (items and reports), and its `size_hint` before
    // each poll with its yields up to then.
    let mut yields = vec![0u64; lossy.len()];
    let mut hints: Vec<Vec<(SizeHint, u64)>> = vec![Vec::new(); lossy.len()];
    let mut held: Vec<Tracked> = Vec::new();
    let all_lossy = lossy.iter().all(|&l| l);

    let mut steps = 0;
    while !model.all_ended() {
        steps += 1;
        assert!(steps < 20_000, "{context}: no progress: {model:?}");
        let step = format!("{context}: step {steps}");
        let roll = rng.below(100);
        if forks_and_drops && roll < 4 && live.len() < 6 {
            let i = rng.below(live.len());
            let fork = live[i].fork_counting_copies();
            assert_eq!(fork.handle.is_terminated(), live[i].is_terminated());
            let id = fork.handle.id();
            live.push(fork.handle);
            yields.push(0);
            hints.push(Vec::new());
            model
                .fork(i, id, fork.start, fork.copied)
                .unwrap_or_else(|error| panic!("{step}: {error}"));
        } else if forks_and_drops && roll < 8 && live.len() > 1 {
            let i = rng.below(live.len());
            drop(live.remove(i));
            model.remove(i);
            yields.remove(i);
            hints.remove(i);
        } else {
            let i = rng.below(live.len());
            hints[i].push((live[i].size_hint(), yields[i]));
            let (polled, item, _) = model
                .poll_synced(&mut live, i, &upstream)
                .unwrap_or_else(|error| panic!("{step}: {error}"));
            match polled {
                Polled::End => {
                    assert!(live[i].is_terminated(), "{step}");
                    // Every size hint bounded what was still to come.
                    for &((lower, upper), before) in &hints[i] {
                        let remaining = (yields[i] - before) as usize;
                        assert!(lower <= remaining, "{step}: lower {lower} > {remaining}");
                        if let Some(upper) = upper {
                            assert!(upper >= remaining, "{step}: upper {upper} < {remaining}");
                        }
                    }
                }
                Polled::Pending => assert!(
                    !all_lossy,
                    "{step}: nobody waits when every branch is lossy"
                ),
                Polled::Item(_) | Polled::Lagged(_) => yields[i] += 1,
            }
            held.extend(item.filter(|_| rng.percent(30)));
            if rng.percent(20) {
                held.clear();
            }
        }

        let stats = synced_stats(&live);
        let checked = model
            .observe_upstream(counts.upstream().0, counts.upstream().1)
            .and_then(|()| model.check_synced(&stats, tracker.live() - held.len()))
            .and_then(|()| model.check_bounds())
            .and_then(|()| model.check_live(tracker.live(), held.len(), 0))
            .and_then(|()| model.check_clones(|value| tracker.clones_of(value)));
        if let Err(error) = checked {
            panic!("{step}: {error}");
        }
        // Every item is pulled once, the end once, and nothing after it.
        assert_eq!(
            counts.polls(),
            counts.yielded() + usize::from(stats.upstream_done),
            "{step}: upstream polls"
        );
        if all_lossy && !forks_and_drops {
            // The upstream runs ahead of the fastest branch by at most the
            // rest of the batch that branch pulled last: at most `cap - 1`
            // items, since a batch fits in the room and its poller yields
            // the first item at once.
            let fastest = model.branches().iter().map(|b| b.next).max().unwrap();
            let pulled = model.pulled();
            assert!(
                pulled - fastest < cap as u64,
                "{step}: pulled {pulled}, more than a batch past the fastest at {fastest}"
            );
        }
    }

    drop(live);
    drop(held);
    assert_eq!(tracker.live(), 0, "{context}: leaked items");
}

/// A random mix of lossy and backpressure branches.
fn random_kinds(rng: &mut Rng, n: usize) -> Vec<bool> {
    (0..n).map(|_| rng.percent(50)).collect()
}

#[test]
fn random_interleavings_account_for_every_item() {
    for seed in 0..400 {
        let mut rng = Rng::new(seed);
        let n = 1 + rng.below(4);
        let cap = 1 + rng.below(4);
        let len = rng.below(40) as u64;
        let lossy = random_kinds(&mut rng, n);
        run_random(seed, cap, len, &lossy, false);
    }
}

#[test]
fn random_interleavings_with_forks_and_drops_account_for_every_item() {
    for seed in 0..400 {
        let mut rng = Rng::new(seed ^ 0xF0F0);
        let n = 1 + rng.below(4);
        let cap = 1 + rng.below(4);
        let len = rng.below(40) as u64;
        let lossy = random_kinds(&mut rng, n);
        run_random(seed, cap, len, &lossy, true);
    }
}

#[test]
fn random_interleavings_of_lossy_branches_only_never_wait() {
    for seed in 0..200 {
        let mut rng = Rng::new(seed ^ 0xABCD);
        let n = 1 + rng.below(4);
        let cap = 1 + rng.below(4);
        let len = rng.below(60) as u64;
        run_random(seed, cap, len, &vec![true; n], false);
    }
}

#[test]
fn random_interleavings_with_room_to_read_ahead_account_for_every_item() {
    // Larger capacities, where backpressure branches take items ahead.
    for seed in 0..300 {
        let mut rng = Rng::new(seed ^ 0x5EED);
        let n = 1 + rng.below(4);
        let cap = 5 + rng.below(16);
        let len = rng.below(80) as u64;
        let lossy = random_kinds(&mut rng, n);
        run_random(seed, cap, len, &lossy, seed % 2 == 1);
    }
}

#[test]
fn random_interleavings_of_every_mix_of_kinds() {
    // Every assignment of kinds to up to four branches, each on a few seeds.
    for n in 1..=4usize {
        for mask in 0..1u32 << n {
            let lossy: Vec<bool> = (0..n).map(|i| mask & (1 << i) != 0).collect();
            for cap in 1..=3 {
                for seed in 0..3 {
                    run_random(seed * 31 + u64::from(mask), cap, 25, &lossy, seed == 2);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Stream traits, accessors, Lagged

#[test]
fn a_lossy_branch_is_terminated_after_none_and_stays_so() {
    let (branches, _) = counted(5, 2, 2);
    let [mut main, tap]: [_; 2] = branches.try_into().unwrap();
    let mut tap = tap.into_lossy();
    assert!(!tap.is_terminated());
    assert_eq!(drain_ready(&mut main).len(), 5);
    drop(main);
    assert!(
        !tap.is_terminated(),
        "a report and an item are still to come"
    );
    expect(&mut tap, Err(Lagged(4)));
    assert!(!tap.is_terminated());
    expect(&mut tap, Ok(4));
    assert!(!tap.is_terminated());
    assert_eq!(poll_once(&mut tap), Poll::Ready(None));
    assert!(tap.is_terminated());
    assert_eq!(poll_once(&mut tap), Poll::Ready(None));
    let fork = tap.clone();
    assert!(fork.is_terminated());
    assert_eq!(tap.size_hint(), (0, Some(0)));
}

#[test]
fn size_hint_counts_a_pending_report_and_bounds_the_rest() {
    let (branches, _) = counted(10, 2, 3);
    let [mut main, tap]: [_; 2] = branches.try_into().unwrap();
    let mut tap = tap.into_lossy();
    assert_eq!(tap.size_hint(), (1, Some(10)));
    for i in 0..5 {
        read(&mut main, i);
    }
    // At 2 with a report pending: at most the 8 items left plus the report.
    assert_eq!(tap.size_hint(), (1, Some(9)));
    assert_eq!(main.size_hint(), (5, Some(5)));
    expect(&mut tap, Err(Lagged(2)));
    assert_eq!(tap.size_hint(), (1, Some(8)));
    // Alone, it misses nothing more: exactly the 8 items.
    drop(main);
    let rest = drain_ready(&mut tap);
    assert_eq!(rest, (2..10).map(Ok).collect::<Vec<_>>());
    assert_eq!(tap.size_hint(), (0, Some(0)));
}

/// `stream::repeat` says it has `usize::MAX` items left: a pending report on
/// top of that must not overflow.
#[test]
fn size_hint_with_an_endless_upstream_and_a_report_pending() {
    let (mut main, tap) = stream::repeat(7u8).tee(2);
    let tap = tap.into_lossy();
    assert_eq!(main.size_hint(), (usize::MAX, None));
    assert_eq!(tap.size_hint(), (1, None));
    for _ in 0..3 {
        assert_eq!(poll_once(&mut main), Poll::Ready(Some(7)));
    }
    assert_eq!(entry(&tap.stats(), tap.id()).missed, 1);
    assert_eq!(tap.size_hint(), (1, None));
}

#[test]
fn accessors_and_debug_of_a_lossy_branch() {
    // A capacity above the length: the buffer is never full, so no stall is
    // in progress, and every branch's snapshot is the same (once `main`'s
    // read-ahead is counted as it is, which its own `lag` makes it).
    let (branches, _) = counted(10, 3, 16);
    let [mut main, other, tap]: [_; 3] = branches.try_into().unwrap();
    let tap = tap.into_lossy();
    assert_eq!(tap.id(), 2);
    read(&mut main, 0);
    read(&mut main, 1);
    let pulled = main.stats().pulled as usize;
    assert!((2..=10).contains(&pulled));
    assert_eq!(main.lag(), pulled - 2);
    assert_eq!(tap.lag(), pulled);
    assert_eq!(tap.stats(), main.stats());
    assert_eq!(tap.stats(), other.stats());
    let debug = format!("{tap:?}");
    assert!(debug.starts_with("Lossy("), "{debug}");
    assert!(debug.contains("Branch"), "{debug}");
    let fork = tap.clone();
    assert_eq!(fork.id(), 3);
    assert_eq!(fork.lag(), pulled);
}

#[test]
fn lagged_is_a_comparable_copyable_error_with_its_count() {
    let lagged = Lagged(3);
    let copy = lagged;
    assert_eq!(copy, lagged);
    assert_eq!(lagged.clone(), Lagged(3));
    assert_ne!(Lagged(3), Lagged(4));
    assert_eq!(lagged.0, 3);
    assert_eq!(format!("{lagged:?}"), "Lagged(3)");
    let text = lagged.to_string();
    assert!(text.contains('3'), "{text}");
    assert!(text.contains("missed"), "{text}");
    assert_ne!(Lagged(12).to_string(), Lagged(13).to_string());

    let error: Box<dyn Error + Send + Sync + 'static> = Box::new(Lagged(5));
    assert!(error.source().is_none());
    assert_eq!(error.to_string(), Lagged(5).to_string());
    assert_eq!(error.downcast_ref::<Lagged>(), Some(&Lagged(5)));

    let set: HashSet<Lagged> = [Lagged(1), Lagged(2), Lagged(1)].into_iter().collect();
    assert_eq!(set.len(), 2);
    assert!(set.contains(&Lagged(2)));

    // `?` works with it as an error.
    fn first(
        stream: &mut (impl Stream<Item = Result<u64, Lagged>> + Unpin),
    ) -> Result<u64, Box<dyn Error>> {
        match poll_once(stream) {
            Poll::Ready(Some(outcome)) => Ok(outcome?),
            other => panic!("expected an item or a report, got {other:?}"),
        }
    }
    let (branches, _) = counted(10, 2, 1);
    let [mut main, tap]: [_; 2] = branches.try_into().unwrap();
    let mut tap = tap.into_lossy();
    read(&mut main, 0);
    read(&mut main, 1);
    let error = first(&mut tap).unwrap_err();
    assert_eq!(error.downcast_ref::<Lagged>(), Some(&Lagged(1)));
    assert_eq!(first(&mut tap).unwrap(), 1);
}
