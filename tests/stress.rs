//! Stress: many items through every combination of branch count and
//! capacity, on a multi-threaded tokio runtime (one task per branch, some
//! yielding at random) and on one OS thread per branch. Every branch must get
//! every item, in order, then `None`; a lost wake-up shows as a hang, which
//! the hang guard turns into a failure.

mod support;

use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use fanout::StreamExt as _;
use futures::{stream, Stream, StreamExt};

use support::{Rng, Tracker};

const BRANCHES: [usize; 3] = [2, 4, 8];
const CAPACITIES: [usize; 3] = [1, 16, 1024];

/// Hang guard only: far above the time a combination takes.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Items per combination on tokio tasks: a million in release builds (as
/// `.ci/run` runs this file), fewer in debug builds, which are ~20 times slower.
const ITEMS: u64 = if cfg!(debug_assertions) {
    100_000
} else {
    1_000_000
};
/// Items per combination on OS threads, which park and unpark on every wait
/// (up to 8 threads on 2 cores): a fifth of the task count, to keep the
/// file within CI's time.
const THREAD_ITEMS: u64 = ITEMS / 5;

/// Consumes `branch` on a tokio task, yielding at random if `yields`, and
/// checks it gets `0..items` in order, then `None`.
fn consume_on_task<S>(
    branch: S,
    items: u64,
    seed: u64,
    yields: bool,
) -> tokio::task::JoinHandle<u64>
where
    S: Stream<Item = u64> + Send + Unpin + 'static,
{
    let mut branch = branch;
    tokio::spawn(async move {
        let mut rng = Rng::new(seed);
        let mut expected = 0;
        while let Some(item) = branch.next().await {
            assert_eq!(item, expected, "branch {seed}: items out of order");
            expected += 1;
            if yields && rng.next() % 8 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(expected, items, "branch {seed}: ended early");
        assert_eq!(
            branch.next().await,
            None,
            "branch {seed}: polled after its end"
        );
        expected
    })
}

async fn join_all_within_guard(tasks: Vec<tokio::task::JoinHandle<u64>>, what: &str) {
    let joined = tokio::time::timeout(HANG_GUARD, futures::future::join_all(tasks))
        .await
        .unwrap_or_else(|_| panic!("{what}: hangs (lost wake-up?)"));
    for result in joined {
        if let Err(err) = result {
            std::panic::resume_unwind(err.into_panic());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_with_a_ready_upstream() {
    for n in BRANCHES {
        for cap in CAPACITIES {
            let items = ITEMS;
            let tasks = stream::iter(0..items)
                .fanout(n, cap)
                .into_iter()
                .enumerate()
                // Half of the branches yield at random, the others never do.
                .map(|(i, branch)| consume_on_task(branch, items, i as u64, i % 2 == 0))
                .collect();
            join_all_within_guard(tasks, &format!("iter upstream, n = {n}, cap = {cap}")).await;
        }
    }
}

/// The upstream is a bounded tokio channel fed by a producer task: it
/// returns `Pending` and is woken from another thread, and tokio's budget
/// makes it yield cooperatively now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_with_a_channel_upstream_fed_by_another_task() {
    for n in BRANCHES {
        for cap in CAPACITIES {
            let items = ITEMS / 2;
            let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(32);
            let producer = tokio::spawn(async move {
                let mut rng = Rng::new(items);
                for item in 0..items {
                    tx.send(item)
                        .await
                        .expect("the fanout dropped the receiver");
                    if rng.next() % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            });
            let upstream = stream::poll_fn(move |cx| rx.poll_recv(cx));
            let mut tasks: Vec<_> = upstream
                .fanout(n, cap)
                .into_iter()
                .enumerate()
                .map(|(i, branch)| consume_on_task(branch, items, i as u64, i % 2 == 1))
                .collect();
            tasks.push(tokio::spawn(async move {
                producer.await.unwrap();
                0
            }));
            join_all_within_guard(tasks, &format!("channel upstream, n = {n}, cap = {cap}")).await;
        }
    }
}

/// Tracked items under concurrency: each item is stored once and released,
/// none leaks, and each is cloned at most `n - 1` times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_release_every_item() {
    for n in BRANCHES {
        for cap in [1, 16] {
            let items = 5_000;
            let tracker = Tracker::new();
            let tasks = tracker
                .stream(items)
                .fanout(n, cap)
                .into_iter()
                .enumerate()
                .map(|(i, branch)| {
                    consume_on_task(branch.map(|item| item.value), items, i as u64, true)
                })
                .collect();
            join_all_within_guard(tasks, &format!("tracked, n = {n}, cap = {cap}")).await;
            assert_eq!(tracker.live(), 0, "n = {n}, cap = {cap}: items leaked");
            assert_eq!(
                tracker.clones(),
                items as usize * (n - 1),
                "n = {n}, cap = {cap}"
            );
        }
    }
}

/// Some branches stop early and are dropped mid-stream, from their own
/// task; the others still get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_that_drop_their_branch_midway_do_not_stall_the_others() {
    for n in BRANCHES {
        for cap in CAPACITIES {
            let items = ITEMS / 4;
            let mut tasks = Vec::new();
            for (i, mut branch) in stream::iter(0..items)
                .fanout(n, cap)
                .into_iter()
                .enumerate()
            {
                if i % 2 == 1 {
                    // Reads a part, then drops the branch.
                    let stop = items * i as u64 / (2 * n as u64);
                    tasks.push(tokio::spawn(async move {
                        for expected in 0..stop {
                            assert_eq!(branch.next().await, Some(expected));
                        }
                        drop(branch);
                        stop
                    }));
                } else {
                    tasks.push(consume_on_task(branch, items, i as u64, true));
                }
            }
            join_all_within_guard(tasks, &format!("early drops, n = {n}, cap = {cap}")).await;
        }
    }
}

/// Consumes `branch` on its own OS thread with `block_on_stream`.
fn consume_on_thread<S>(
    branch: S,
    items: u64,
    index: usize,
    done: std_mpsc::Sender<()>,
) -> thread::JoinHandle<()>
where
    S: Stream<Item = u64> + Send + Unpin + 'static,
{
    thread::spawn(move || {
        let mut expected = 0;
        for item in futures::executor::block_on_stream(branch) {
            assert_eq!(item, expected, "thread {index}: items out of order");
            expected += 1;
        }
        assert_eq!(expected, items, "thread {index}: ended early");
        let _ = done.send(());
    })
}

/// Fans `upstream` out into `n` branches of capacity `cap`, consumes each
/// on its own OS thread with [`consume_on_thread`], and waits for them all
/// within the hang guard; `what` names the upstream in a failure.
fn consume_on_threads<S>(upstream: S, n: usize, cap: usize, items: u64, what: &str)
where
    S: Stream<Item = u64> + Send + 'static,
{
    let (done_tx, done_rx) = std_mpsc::channel();
    let threads = upstream
        .fanout(n, cap)
        .into_iter()
        .enumerate()
        .map(|(i, branch)| consume_on_thread(branch, items, i, done_tx.clone()))
        .collect();
    drop(done_tx);
    join_threads_within_guard(threads, done_rx, &format!("{what}, n = {n}, cap = {cap}"));
}

fn join_threads_within_guard(
    threads: Vec<thread::JoinHandle<()>>,
    done: std_mpsc::Receiver<()>,
    what: &str,
) {
    for _ in 0..threads.len() {
        match done.recv_timeout(HANG_GUARD) {
            Ok(()) => {}
            // A thread panicked: its join below says why.
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std_mpsc::RecvTimeoutError::Timeout) => panic!("{what}: hangs (lost wake-up?)"),
        }
    }
    for handle in threads {
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn threads_with_a_ready_upstream() {
    for n in BRANCHES {
        for cap in CAPACITIES {
            let items = THREAD_ITEMS;
            consume_on_threads(stream::iter(0..items), n, cap, items, "threads");
        }
    }
}

/// The upstream is a futures channel fed from yet another thread.
#[test]
fn threads_with_a_channel_upstream_fed_by_another_thread() {
    for n in BRANCHES {
        for cap in CAPACITIES {
            let items = THREAD_ITEMS * 3 / 5;
            let (tx, rx) = futures::channel::mpsc::channel::<u64>(8);
            let producer = thread::spawn(move || {
                futures::executor::block_on(async move {
                    let mut tx = tx;
                    futures::SinkExt::send_all(&mut tx, &mut stream::iter((0..items).map(Ok)))
                        .await
                        .expect("the fanout dropped the receiver");
                });
            });
            consume_on_threads(rx, n, cap, items, "channel threads");
            producer.join().unwrap();
        }
    }
}

/// An upstream that yields cooperatively (wakes itself and returns
/// `Pending`) on every other poll, under threads: no spinning, no hang.
#[test]
fn threads_with_a_cooperatively_yielding_upstream() {
    struct Yielding {
        next: u64,
        items: u64,
        yield_now: bool,
    }
    impl Stream for Yielding {
        type Item = u64;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u64>> {
            self.yield_now = !self.yield_now;
            if self.yield_now {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if self.next == self.items {
                return Poll::Ready(None);
            }
            self.next += 1;
            Poll::Ready(Some(self.next - 1))
        }
    }
    for n in BRANCHES {
        for cap in [1, 16] {
            let items = THREAD_ITEMS;
            let upstream = Yielding {
                next: 0,
                items,
                yield_now: false,
            };
            consume_on_threads(upstream, n, cap, items, "yielding threads");
        }
    }
}
