//! Each item is stored once and cloned at most `n - 1` times, at most `cap`
//! items are alive in the buffer, nothing leaks, and the upstream is dropped
//! when it ends or when the last branch goes.

mod support;

use std::sync::atomic::Ordering;
use std::task::Poll;

use fanout::StreamExt as _;
use futures::channel::mpsc;
use futures::executor::block_on;
use futures::future::join_all;
use futures::stream;
use futures::StreamExt;

use support::{
    collect_all, poll_once, values, CountingPolls, DropFlag, Progress, Rng, Tracked, Tracker,
};

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
    assert_eq!(tracker.clones(), 3);
    let c = a.clone();
    let outputs = collect_all([a, b, c]);
    assert_eq!(values(&outputs[0]), (3..LEN).collect::<Vec<_>>());
    assert_eq!(values(&outputs[1]), (0..LEN).collect::<Vec<_>>());
    assert_eq!(values(&outputs[2]), (3..LEN).collect::<Vec<_>>());
    // Items 0..3 have two readers, the others three.
    assert_eq!(tracker.clones(), 3 + (LEN as usize - 3) * 2);
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
fn live_items_are_exactly_the_buffer_plus_what_the_test_holds() {
    const LEN: u64 = 150;
    for n in [2, 3, 4] {
        for cap in [1, 3, 8] {
            let tracker = Tracker::new();
            // Counted: a poll pulls a batch, so the upstream may have
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
                // The buffer holds what the upstream yielded and the slowest
                // branch has not read: at least what the fastest has read
                // past it, at most `cap`.
                let yielded = counts.yielded() as u64;
                assert!(yielded >= progress.fastest());
                let buffered = yielded - progress.slowest();
                assert!(buffered <= cap as u64);
                assert!(tracker.live() <= cap + holding, "n = {n}, cap = {cap}");
                assert_eq!(
                    tracker.live(),
                    buffered as usize + holding,
                    "n = {n}, cap = {cap}: each buffered item stored once"
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
    // poller has read the rest of the batch.
    let (upstream, dropped) = DropFlag::new(stream::iter(0..3));
    let (upstream, counts) = CountingPolls::new(upstream);
    let (mut fast, slow) = upstream.tee(4);
    assert_eq!(poll_once(&mut fast), Poll::Ready(Some(0)));
    assert_eq!(counts.polls(), 4, "3 items and the end");
    assert!(dropped.load(Ordering::SeqCst));
    assert!(fast.stats().upstream_done);
    assert_eq!((fast.lag(), slow.lag()), (2, 3));
    assert_eq!(block_on((&mut fast).collect::<Vec<_>>()), [1, 2]);
    assert_eq!(block_on(slow.collect::<Vec<_>>()), [0, 1, 2]);
    assert_eq!(counts.polls(), 4);
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
    // Once detached, the fast branch runs freely and alone: it polls the
    // upstream itself, one item per poll, and buffers nothing, so no item
    // outlives its read and none is cloned.
    let clones_before = tracker.clones();
    for _ in 0..1_000 {
        assert!(matches!(poll_once(&mut fast), Poll::Ready(Some(_))));
        assert_eq!(tracker.live(), 0);
        assert_eq!(fast.lag(), 0);
    }
    assert_eq!(tracker.clones(), clones_before);
    assert_eq!(counts.yielded(), 32 + 1_000);
    drop(fast);
    assert_eq!(tracker.live(), 0);
}
