//! Throughput of splitting one stream into several consumers, side by side
//! with the peers a user would pick instead.
//!
//! Every implementation delivers every item to every consumer and applies
//! backpressure; `baseline_n` drains `n` independent copies of the upstream,
//! the floor no fan-out can beat for cheap items.
//!
//! Run with `cargo bench --bench throughput`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fanout::StreamExt as _;
use futures::executor::block_on;
use futures::{future, stream, Stream, StreamExt};

/// Items each scenario pushes through.
const ITEMS: u64 = 200_000;

/// One split scenario: how many consumers, how large the buffer.
#[derive(Clone, Copy)]
struct Scenario {
    branches: usize,
    capacity: usize,
}

impl Scenario {
    fn name(self) -> String {
        format!("u64, {} branches, cap {}", self.branches, self.capacity)
    }
}

/// Runs one scenario to the end, returning each consumer's sum.
type Implementation = fn(Scenario) -> Vec<u64>;

fn upstream() -> impl Stream<Item = u64> {
    stream::iter(0..ITEMS)
}

/// Sums a consumer's items, so that no item goes unread.
async fn drain(consumer: impl Stream<Item = u64>) -> u64 {
    consumer
        .fold(0u64, |sum, item| future::ready(sum.wrapping_add(item)))
        .await
}

fn through_fanout(scenario: Scenario) -> Vec<u64> {
    let branches = upstream().fanout(scenario.branches, scenario.capacity);
    block_on(future::join_all(branches.into_iter().map(drain)))
}

fn through_async_broadcast(scenario: Scenario) -> Vec<u64> {
    let (mut sender, receiver) = async_broadcast::broadcast(scenario.capacity);
    sender.set_overflow(false);
    let receivers: Vec<_> = (0..scenario.branches).map(|_| receiver.clone()).collect();
    drop(receiver);
    let produce = async move {
        let mut items = upstream();
        while let Some(item) = items.next().await {
            sender.broadcast(item).await.expect("receivers are alive");
        }
    };
    let consume = future::join_all(receivers.into_iter().map(drain));
    block_on(future::join(produce, consume)).1
}

fn through_baseline_n(scenario: Scenario) -> Vec<u64> {
    block_on(future::join_all(
        (0..scenario.branches).map(|_| drain(upstream())),
    ))
}

fn split_throughput(c: &mut Criterion) {
    let implementations: [(&str, Implementation); 3] = [
        ("fanout", through_fanout),
        ("async-broadcast", through_async_broadcast),
        ("baseline_n", through_baseline_n),
    ];
    for scenario in [
        Scenario {
            branches: 4,
            capacity: 1024,
        },
        Scenario {
            branches: 4,
            capacity: 16,
        },
    ] {
        let mut group = c.benchmark_group(scenario.name());
        group.throughput(Throughput::Elements(ITEMS));
        group.sample_size(10);
        for (name, run) in implementations {
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| black_box(run(scenario)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, split_throughput);
criterion_main!(benches);
