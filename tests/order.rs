//! Every branch yields every upstream item, in upstream order, then `None`,
//! and stays terminated; the upstream is never polled again after its end.

mod support;

use std::fmt::Debug;
use std::pin::Pin;
use std::task::{Context, Poll};

use fanout::StreamExt as _;
use futures::executor::block_on;
use futures::future::join_all;
use futures::stream::{self, FusedStream, Stream};
use futures::StreamExt;

use support::{collect_all, poll_once, CountingPolls, Tracker};

const BRANCH_COUNTS: [usize; 4] = [1, 2, 3, 8];
const CAPACITIES: [usize; 4] = [1, 2, 7, 64];
const LEN: u64 = 100;

/// Every combination of [`BRANCH_COUNTS`] and [`CAPACITIES`].
fn shapes() -> impl Iterator<Item = (usize, usize)> {
    BRANCH_COUNTS
        .into_iter()
        .flat_map(|n| CAPACITIES.map(|cap| (n, cap)))
}

fn expected(len: u64) -> Vec<u64> {
    (0..len).collect()
}

/// Asserts that every branch's output is `expected`; `shape` names the run.
fn assert_every_output<T: PartialEq + Debug>(outputs: &[Vec<T>], expected: &[T], shape: &str) {
    for (i, output) in outputs.iter().enumerate() {
        assert_eq!(output, expected, "{shape}, branch {i}");
    }
}

/// An upstream that returns `Pending` (after waking its waker) before every
/// item and before its end, so that the branches meet a pending upstream.
struct Stutter<S> {
    inner: S,
    ready_next: bool,
}

impl<S> Stutter<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            ready_next: false,
        }
    }
}

impl<S: Stream + Unpin> Stream for Stutter<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if !self.ready_next {
            self.ready_next = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready_next = false;
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// An upstream that is not fused: after `None` it yields items again, and it
/// panics if it is polled more than `limit` times.
struct Resurrecting {
    polls: usize,
    limit: usize,
}

impl Stream for Resurrecting {
    type Item = usize;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<usize>> {
        self.polls += 1;
        assert!(
            self.polls <= self.limit,
            "upstream polled again after it returned None"
        );
        if self.polls % 2 == 0 {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(self.polls))
        }
    }
}

#[test]
fn join_all_of_collects_yields_every_item_in_order() {
    for (n, cap) in shapes() {
        let branches = stream::iter(0..LEN).fanout(n, cap);
        assert_eq!(branches.len(), n);
        let outputs = collect_all(branches);
        assert_eq!(outputs.len(), n);
        assert_every_output(&outputs, &expected(LEN), &format!("n = {n}, cap = {cap}"));
    }
}

#[test]
fn join_all_with_non_copy_items() {
    for (n, cap) in shapes() {
        let words: Vec<String> = (0..LEN).map(|i| format!("item-{i}")).collect();
        let outputs = collect_all(stream::iter(words.clone()).fanout(n, cap));
        assert_every_output(&outputs, &words, &format!("n = {n}, cap = {cap}"));
    }
}

#[test]
fn join_all_with_tracked_items_keeps_values_and_order() {
    for (n, cap) in shapes() {
        let tracker = Tracker::new();
        let branches = tracker.stream(LEN).fanout(n, cap);
        let outputs = collect_all(
            branches
                .into_iter()
                .map(|branch| branch.map(|item| item.value)),
        );
        assert_every_output(&outputs, &expected(LEN), &format!("n = {n}, cap = {cap}"));
        assert_eq!(tracker.live(), 0, "n = {n}, cap = {cap}");
    }
}

#[test]
fn join_all_over_an_upstream_that_returns_pending() {
    for (n, cap) in shapes() {
        let (upstream, counts) = CountingPolls::new(Stutter::new(stream::iter(0..LEN)));
        let outputs = collect_all(upstream.fanout(n, cap));
        assert_every_output(&outputs, &expected(LEN), &format!("n = {n}, cap = {cap}"));
        assert_eq!(counts.yielded(), LEN as usize);
        // One `Pending` before each item and before the end, then the
        // end: the upstream is polled exactly twice per item, plus two.
        assert_eq!(counts.polls(), 2 * LEN as usize + 2, "n = {n}, cap = {cap}");
    }
}

/// Polls the branches round-robin, branch `i` `i + 1` times per round, so
/// that the faster ones run into a full buffer, and checks the outputs.
fn round_robin(n: usize, cap: usize, len: u64) {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..len));
    let mut branches = upstream.fanout(n, cap);
    let mut outputs = vec![Vec::new(); n];
    let mut ended = vec![false; n];
    let mut pendings = 0;
    let mut rounds = 0;
    while !ended.iter().all(|&ended| ended) {
        rounds += 1;
        // The slowest branch is never held back, so it reads an item (or
        // the end) every round.
        assert!(
            rounds <= len as usize + 1,
            "no progress: n = {n}, cap = {cap}, outputs = {outputs:?}"
        );
        for (i, branch) in branches.iter_mut().enumerate() {
            for _ in 0..=i {
                match poll_once(branch) {
                    Poll::Ready(Some(item)) => {
                        assert!(!ended[i], "an item after None on branch {i}");
                        outputs[i].push(item);
                    }
                    Poll::Ready(None) => {
                        ended[i] = true;
                        assert!(branch.is_terminated());
                    }
                    Poll::Pending => {
                        pendings += 1;
                        assert!(!ended[i], "Pending after None on branch {i}");
                    }
                }
            }
        }
    }
    assert_every_output(&outputs, &expected(len), &format!("n = {n}, cap = {cap}"));
    // Branch 1 reads twice as fast as branch 0, so it gets up to `len / 2`
    // items ahead of it unless the buffer stops it.
    if n > 1 && (cap as u64) < len / 2 {
        assert!(
            pendings > 0,
            "the fast branches never waited: n = {n}, cap = {cap}"
        );
    }
    assert_eq!(counts.polls(), len as usize + 1);
}

#[test]
fn interleaved_round_robin_polling_yields_every_item_in_order() {
    for (n, cap) in shapes() {
        round_robin(n, cap, LEN);
    }
}

#[test]
fn one_item_at_a_time_in_lockstep() {
    for (n, cap) in shapes() {
        let mut branches = stream::iter(0..LEN).fanout(n, cap);
        for expected in 0..LEN {
            for (i, branch) in branches.iter_mut().enumerate() {
                assert_eq!(
                    poll_once(branch),
                    Poll::Ready(Some(expected)),
                    "n = {n}, cap = {cap}, branch {i}"
                );
            }
        }
        for branch in &mut branches {
            assert_eq!(poll_once(branch), Poll::Ready(None));
        }
    }
}

#[test]
fn one_branch_reads_everything_it_can_before_the_others() {
    // Sequential: each branch in turn drains as much as it can.
    for n in [2, 3, 8] {
        for cap in CAPACITIES {
            let mut branches = stream::iter(0..LEN).fanout(n, cap);
            let mut outputs = vec![Vec::new(); n];
            let mut ended = vec![false; n];
            while !ended.iter().all(|&ended| ended) {
                for (i, branch) in branches.iter_mut().enumerate() {
                    while let Poll::Ready(item) = poll_once(branch) {
                        match item {
                            Some(item) => outputs[i].push(item),
                            None => {
                                ended[i] = true;
                                break;
                            }
                        }
                    }
                }
            }
            assert_every_output(&outputs, &expected(LEN), &format!("n = {n}, cap = {cap}"));
        }
    }
}

#[test]
fn branches_stay_terminated_after_none() {
    for (n, cap) in shapes() {
        let (upstream, counts) = CountingPolls::new(stream::iter(0..5u64));
        let mut branches = upstream.fanout(n, cap);
        for branch in &branches {
            assert!(!branch.is_terminated());
        }
        let outputs = block_on(join_all(branches.iter_mut().map(|branch| async move {
            let mut items = Vec::new();
            while let Some(item) = branch.next().await {
                assert!(!branch.is_terminated());
                items.push(item);
            }
            items
        })));
        assert_every_output(&outputs, &expected(5), &format!("n = {n}, cap = {cap}"));
        for branch in &mut branches {
            assert!(branch.is_terminated());
            for _ in 0..5 {
                assert_eq!(poll_once(branch), Poll::Ready(None));
                assert!(branch.is_terminated());
            }
        }
        // Five items and one end: nothing after the end.
        assert_eq!(counts.polls(), 6, "n = {n}, cap = {cap}");
    }
}

#[test]
fn upstream_is_never_polled_after_it_returned_none() {
    let (upstream, counts) = CountingPolls::new(stream::iter(0..3u64));
    let [mut a, mut b, mut c]: [_; 3] = upstream.fanout(3, 3).try_into().unwrap();

    assert_eq!(poll_once(&mut a), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(1)));
    assert_eq!(poll_once(&mut b), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut c), Poll::Ready(Some(0)));
    assert_eq!(poll_once(&mut a), Poll::Ready(Some(2)));
    assert_eq!(counts.polls(), 3);

    // `a` meets the end.
    assert_eq!(poll_once(&mut a), Poll::Ready(None));
    assert_eq!(counts.polls(), 4);

    // The others read the buffered items, then the end, without a poll.
    assert_eq!(poll_once(&mut b), Poll::Ready(Some(1)));
    assert_eq!(poll_once(&mut b), Poll::Ready(Some(2)));
    assert_eq!(poll_once(&mut b), Poll::Ready(None));
    assert_eq!(poll_once(&mut c), Poll::Ready(Some(1)));
    assert_eq!(poll_once(&mut c), Poll::Ready(Some(2)));
    assert_eq!(poll_once(&mut c), Poll::Ready(None));
    assert_eq!(counts.polls(), 4);

    for _ in 0..10 {
        for branch in [&mut a, &mut b, &mut c] {
            assert_eq!(poll_once(branch), Poll::Ready(None));
        }
    }
    let fork = a.clone();
    assert!(fork.is_terminated());
    assert_eq!(block_on(fork.collect::<Vec<_>>()), Vec::<u64>::new());
    assert_eq!(counts.polls(), 4);
}

#[test]
fn non_fused_upstream_is_not_polled_after_its_first_none() {
    for (n, cap) in shapes() {
        // Yields 1, then None, then would yield 3 and panic on a 3rd poll.
        let upstream = Resurrecting { polls: 0, limit: 2 };
        let mut branches = upstream.fanout(n, cap);
        for branch in &mut branches {
            assert_eq!(poll_once(branch), Poll::Ready(Some(1)));
        }
        for branch in &mut branches {
            assert_eq!(poll_once(branch), Poll::Ready(None));
            assert_eq!(poll_once(branch), Poll::Ready(None));
            assert!(branch.is_terminated());
        }
    }
}

#[test]
fn empty_upstream_ends_every_branch() {
    for (n, cap) in shapes() {
        let (upstream, counts) = CountingPolls::new(stream::empty::<u64>());
        let outputs = collect_all(upstream.fanout(n, cap));
        assert!(outputs.iter().all(Vec::is_empty));
        assert_eq!(counts.polls(), 1, "n = {n}, cap = {cap}");
    }
}

#[test]
fn branches_on_separate_threads_yield_every_item_in_order() {
    const ITEMS: u64 = 2_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    for (n, cap) in [(2, 1), (3, 2), (4, 7), (8, 64)] {
        let (upstream, counts) = CountingPolls::new(stream::iter(0..ITEMS));
        let branches = upstream.fanout(n, cap);
        let outputs = runtime.block_on(async {
            let tasks: Vec<_> = branches
                .into_iter()
                .enumerate()
                .map(|(i, mut branch)| {
                    tokio::spawn(async move {
                        let mut items = Vec::new();
                        while let Some(item) = branch.next().await {
                            items.push(item);
                            // Uneven speeds: branch i yields to the scheduler
                            // every (i + 1)th item.
                            if items.len() % (i + 1) == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                        items
                    })
                })
                .collect();
            let mut outputs = Vec::new();
            for task in tasks {
                outputs.push(task.await.unwrap());
            }
            outputs
        });
        assert_every_output(&outputs, &expected(ITEMS), &format!("n = {n}, cap = {cap}"));
        assert_eq!(counts.polls(), ITEMS as usize + 1);
    }
}
