//! Throughput of splitting one stream into several consumers, side by side
//! with the peers a user would pick instead.
//!
//! Every implementation delivers the upstream's items to every consumer, each
//! consumer in its own tokio task:
//! - `fanout`: this crate, one branch per task;
//! - `async-broadcast`: a producer task and a receiver per consumer, overflow
//!   off, so it applies backpressure like `fanout`;
//! - `tokio broadcast`: a producer task and a receiver per consumer; it is
//!   **lossy**: a receiver that falls `cap` behind loses items (counted, not
//!   redelivered), so it does less work than the others;
//! - `mpsc per branch`: a forwarding task that sends a clone of each item to
//!   one bounded tokio mpsc channel per consumer;
//! - `baseline_n`: `n` independent copies of the upstream, each drained by
//!   its own task; the floor no fan-out can beat for cheap items.
//!
//! Run with `cargo bench -p fanout-extras --bench throughput`; the README's
//! performance table lists the ratios of one run.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fanout::StreamExt as _;
use futures::{future, stream, Stream, StreamExt};
use tokio::runtime::{Builder, Runtime};

/// Items each run pushes through.
const ITEMS: u64 = 200_000;

/// An item type, and how the upstream makes item `i`.
trait Item: Clone + Send + Sync + 'static {
    fn make(i: u64) -> Self;
    /// A value that depends on the item, so that consumers read it.
    fn weight(&self) -> u64;
}

impl Item for u64 {
    fn make(i: u64) -> Self {
        i
    }

    fn weight(&self) -> u64 {
        *self
    }
}

impl Item for String {
    /// 64 bytes of text: the upstream does real work per item.
    fn make(i: u64) -> Self {
        format!("{i:064}")
    }

    fn weight(&self) -> u64 {
        self.len() as u64
    }
}

fn upstream<T: Item>() -> impl Stream<Item = T> + Send + 'static {
    stream::iter((0..ITEMS).map(T::make))
}

/// Reads a consumer to its end; returns a digest, so that no read is elided.
async fn drain<T: Item>(consumer: impl Stream<Item = T>) -> u64 {
    consumer
        .fold(0u64, |digest, item| {
            future::ready(digest.wrapping_add(item.weight()))
        })
        .await
}

type Digests = Pin<Box<dyn Future<Output = Vec<u64>>>>;

/// Runs `consumers` as tasks and collects their digests.
async fn join_tasks(
    consumers: impl IntoIterator<Item = impl Future<Output = u64> + Send + 'static>,
) -> Vec<u64> {
    let tasks: Vec<_> = consumers.into_iter().map(tokio::spawn).collect();
    let mut digests = Vec::with_capacity(tasks.len());
    for task in tasks {
        digests.push(task.await.expect("a consumer panicked"));
    }
    digests
}

fn through_fanout<T: Item>(n: usize, cap: usize) -> Digests {
    Box::pin(join_tasks(
        upstream::<T>().fanout(n, cap).into_iter().map(drain),
    ))
}

/// `fanout`, with every branch also taking a `stats()` snapshot every 1024
/// items: the price of watching the pipeline.
fn through_fanout_with_stats<T: Item>(n: usize, cap: usize) -> Digests {
    let branches = upstream::<T>().fanout(n, cap);
    Box::pin(join_tasks(branches.into_iter().map(
        |mut branch| async move {
            let mut digest = 0u64;
            let mut read = 0u64;
            while let Some(item) = branch.next().await {
                digest = digest.wrapping_add(item.weight());
                read += 1;
                if read.is_multiple_of(1024) {
                    black_box(branch.stats());
                }
            }
            digest
        },
    )))
}

fn through_async_broadcast<T: Item>(n: usize, cap: usize) -> Digests {
    Box::pin(async move {
        let (mut sender, receiver) = async_broadcast::broadcast(cap);
        sender.set_overflow(false);
        let receivers: Vec<_> = (0..n).map(|_| receiver.clone()).collect();
        drop(receiver);
        let producer = tokio::spawn(async move {
            let mut items = std::pin::pin!(upstream::<T>());
            while let Some(item) = items.next().await {
                sender.broadcast(item).await.expect("receivers are alive");
            }
        });
        let digests = join_tasks(receivers.into_iter().map(drain)).await;
        producer.await.expect("the producer panicked");
        digests
    })
}

fn through_tokio_broadcast<T: Item>(n: usize, cap: usize) -> Digests {
    Box::pin(async move {
        let (sender, _) = tokio::sync::broadcast::channel::<T>(cap);
        let receivers: Vec<_> = (0..n).map(|_| sender.subscribe()).collect();
        let producer = tokio::spawn(async move {
            let mut items = std::pin::pin!(upstream::<T>());
            while let Some(item) = items.next().await {
                let _ = sender.send(item);
                // Sending never waits: give the receivers a turn whenever
                // tokio's co-operative budget says so, or they lose nearly
                // everything.
                tokio::task::coop::consume_budget().await;
            }
        });
        let consumers = receivers.into_iter().map(|mut receiver| async move {
            let mut digest = 0u64;
            loop {
                match receiver.recv().await {
                    Ok(item) => digest = digest.wrapping_add(item.weight()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        digest = digest.wrapping_add(missed)
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return digest,
                }
            }
        });
        let digests = join_tasks(consumers).await;
        producer.await.expect("the producer panicked");
        digests
    })
}

fn through_mpsc_per_branch<T: Item>(n: usize, cap: usize) -> Digests {
    Box::pin(async move {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| tokio::sync::mpsc::channel::<T>(cap)).unzip();
        let forwarder = tokio::spawn(async move {
            let mut items = std::pin::pin!(upstream::<T>());
            while let Some(item) = items.next().await {
                for sender in &senders {
                    sender
                        .send(item.clone())
                        .await
                        .expect("receivers are alive");
                }
            }
        });
        let consumers = receivers.into_iter().map(|mut receiver| async move {
            let mut digest = 0u64;
            while let Some(item) = receiver.recv().await {
                digest = digest.wrapping_add(item.weight());
            }
            digest
        });
        let digests = join_tasks(consumers).await;
        forwarder.await.expect("the forwarder panicked");
        digests
    })
}

fn through_baseline_n<T: Item>(n: usize, _cap: usize) -> Digests {
    Box::pin(join_tasks((0..n).map(|_| drain(upstream::<T>()))))
}

/// One implementation: builds the run for `n` consumers and capacity `cap`.
type Implementation = fn(usize, usize) -> Digests;

fn peers<T: Item>() -> [(&'static str, Implementation); 5] {
    [
        ("fanout", through_fanout::<T>),
        ("async-broadcast", through_async_broadcast::<T>),
        ("tokio broadcast (lossy)", through_tokio_broadcast::<T>),
        ("mpsc per branch", through_mpsc_per_branch::<T>),
        ("baseline_n", through_baseline_n::<T>),
    ]
}

fn current_thread() -> Runtime {
    Builder::new_current_thread().build().expect("a runtime")
}

fn two_workers() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a runtime")
}

/// Benches every implementation on one scenario, as one criterion group.
fn scenario(
    c: &mut Criterion,
    name: &str,
    runtime: &Runtime,
    n: usize,
    cap: usize,
    implementations: &[(&str, Implementation)],
) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(10);
    for &(implementation, run) in implementations {
        group.bench_function(BenchmarkId::from_parameter(implementation), |b| {
            b.iter(|| black_box(runtime.block_on(run(n, cap))))
        });
    }
    group.finish();
}

fn split_throughput(c: &mut Criterion) {
    let current = current_thread();
    let multi = two_workers();
    let u64_peers = peers::<u64>();
    scenario(
        c,
        "u64, 4 branches, cap 1024",
        &current,
        4,
        1024,
        &u64_peers,
    );
    scenario(c, "u64, 4 branches, cap 16", &current, 4, 16, &u64_peers);
    scenario(
        c,
        "u64, 4 branches, cap 1024, 2 workers",
        &multi,
        4,
        1024,
        &u64_peers,
    );
    scenario(
        c,
        "String, 8 branches, cap 1024",
        &current,
        8,
        1024,
        &peers::<String>(),
    );
    scenario(
        c,
        "u64, 1 branch, cap 1024",
        &current,
        1,
        1024,
        &[
            ("fanout", through_fanout::<u64>),
            ("baseline_n", through_baseline_n::<u64>),
        ],
    );
    scenario(
        c,
        "String, 1 branch, cap 1024",
        &current,
        1,
        1024,
        &[
            ("fanout", through_fanout::<String>),
            ("baseline_n", through_baseline_n::<String>),
        ],
    );
    scenario(
        c,
        "u64, 4 branches, cap 1024, statistics",
        &current,
        4,
        1024,
        &[
            ("fanout", through_fanout::<u64>),
            (
                "fanout + stats() every 1024 items",
                through_fanout_with_stats::<u64>,
            ),
        ],
    );
}

criterion_group!(benches, split_throughput);
criterion_main!(benches);
