//! Throughput of splitting one plain iterator into consumers on OS threads,
//! side by side with the hand-written alternatives.
//!
//! Every implementation delivers every `u64` of the iterator to each of
//! [`CONSUMERS`] consumer threads, each of which sums what it gets:
//! - `blocking::fanout`: this crate, one branch per thread, no other
//!   thread: the consumer that needs the next item pulls the iterator;
//! - `mpsc sync_channel`: a producer thread that sends every item into one
//!   `std::sync::mpsc::sync_channel(cap)` per consumer;
//! - `crossbeam-channel`: the same with `crossbeam_channel::bounded(cap)`.
//!
//! Each run spawns its threads (scoped), so the cost of starting them is in
//! every implementation alike. Memory is not measured here: see the
//! `threads` example and `tests/blocking.rs`, which count items.
//!
//! Run with `cargo bench -p fanout-extras --bench threads`.

use std::hint::black_box;
use std::thread;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Items each run pushes through.
const ITEMS: u64 = 200_000;
/// Consumer threads.
const CONSUMERS: usize = 4;
/// Items each buffer (the fanout's, or each channel) holds at most.
const CAP: usize = 1024;

/// Sums what a consumer gets, so that no read is elided.
fn drain(consumer: impl Iterator<Item = u64>) -> u64 {
    consumer.fold(0, |sum, item| sum.wrapping_add(black_box(item)))
}

/// The sum each consumer must find.
const SUM: u64 = ITEMS * (ITEMS - 1) / 2;

fn through_fanout() {
    let branches = fanout::blocking::fanout(0..ITEMS, CONSUMERS, CAP);
    thread::scope(|s| {
        let consumers: Vec<_> = branches
            .into_iter()
            .map(|branch| s.spawn(move || drain(branch)))
            .collect();
        for consumer in consumers {
            assert_eq!(consumer.join().unwrap(), SUM);
        }
    });
}

/// A producer thread sends every item into one channel per consumer, made
/// by `channel`, whose sending and receiving ends `send` and `into_iter`
/// drive.
fn through_channels<Tx, Rx>(channel: impl Fn() -> (Tx, Rx), send: impl Fn(&Tx, u64) + Send)
where
    Tx: Send,
    Rx: IntoIterator<Item = u64> + Send,
{
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..CONSUMERS).map(|_| channel()).unzip();
    thread::scope(|s| {
        s.spawn(move || {
            for item in 0..ITEMS {
                for sender in &senders {
                    send(sender, item);
                }
            }
        });
        let consumers: Vec<_> = receivers
            .into_iter()
            .map(|receiver| s.spawn(move || drain(receiver.into_iter())))
            .collect();
        for consumer in consumers {
            assert_eq!(consumer.join().unwrap(), SUM);
        }
    });
}

fn through_sync_channels() {
    through_channels(
        || std::sync::mpsc::sync_channel::<u64>(CAP),
        |sender, item| sender.send(item).unwrap(),
    );
}

fn through_crossbeam_channels() {
    through_channels(
        || crossbeam_channel::bounded::<u64>(CAP),
        |sender, item| sender.send(item).unwrap(),
    );
}

fn threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("threads");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(20);
    let name = |peer: &str| format!("{CONSUMERS} consumers, cap {CAP} / {peer}");
    group.bench_function(name("blocking::fanout"), |b| b.iter(through_fanout));
    group.bench_function(name("mpsc sync_channel"), |b| b.iter(through_sync_channels));
    group.bench_function(name("crossbeam-channel"), |b| {
        b.iter(through_crossbeam_channels)
    });
    group.finish();
}

criterion_group!(benches, threads);
criterion_main!(benches);
