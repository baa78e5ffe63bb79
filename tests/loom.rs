//! Loom models of the fanout's wake-up and memory logic.
//!
//! Each model runs a few threads over one fanout, and loom explores their
//! interleavings on the crate's own locks. The items are loom `Arc`s, so a
//! leaked item fails the model; a lost wake-up deadlocks it, which loom
//! reports too.
//!
//! Run with:
//!
//! ```sh
//! RUSTFLAGS="--cfg fanout_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test --release --test loom
//! ```
#![cfg(fanout_loom)]

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use fanout::{Branch, Lagged, Lossy, StreamExt as _};
use futures::{Stream, StreamExt};
use loom::future::block_on;
use loom::sync::{Arc, Mutex};
use loom::thread;

type Item = Arc<u32>;

/// An upstream fed by another thread: yields what was sent, waits when
/// nothing was, ends when closed.
struct Gate {
    state: Arc<Mutex<GateState>>,
}

#[derive(Default)]
struct GateState {
    items: VecDeque<Item>,
    closed: bool,
    waker: Option<Waker>,
}

/// The sending end of a [`Gate`].
#[derive(Clone)]
struct GateSender {
    state: Arc<Mutex<GateState>>,
}

fn gate() -> (GateSender, Gate) {
    let state = Arc::new(Mutex::new(GateState::default()));
    (
        GateSender {
            state: Arc::clone(&state),
        },
        Gate { state },
    )
}

impl GateSender {
    fn send(&self, value: u32) {
        self.change(|state| state.items.push_back(Arc::new(value)));
    }

    fn close(&self) {
        self.change(|state| state.closed = true);
    }

    fn change(&self, change: impl FnOnce(&mut GateState)) {
        let waker = {
            let mut state = self.state.lock().unwrap();
            change(&mut state);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Stream for Gate {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let mut state = self.state.lock().unwrap();
        if let Some(item) = state.items.pop_front() {
            Poll::Ready(Some(item))
        } else if state.closed {
            Poll::Ready(None)
        } else {
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// An upstream that always has its items ready.
fn ready_items(count: u32) -> impl Stream<Item = Item> {
    futures::stream::iter((0..count).map(Arc::new))
}

/// Reads a branch to its end on the current (loom) thread.
fn read_all<S>(branch: Branch<S>) -> Vec<u32>
where
    S: Stream<Item = Item>,
{
    block_on(branch.map(|item| *item).collect())
}

/// Reads a lossy branch to its end: the items it got, and the items it
/// reported missed.
fn read_all_lossy<S>(branch: Lossy<S>) -> (Vec<u32>, u64)
where
    S: Stream<Item = Item>,
{
    let deliveries: Vec<_> = block_on(branch.collect());
    let mut received = Vec::new();
    let mut missed = 0;
    for delivery in deliveries {
        match delivery {
            Ok(item) => received.push(*item),
            Err(Lagged(count)) => missed += count,
        }
    }
    (received, missed)
}

fn spawn_reader<S>(branch: Branch<S>) -> thread::JoinHandle<Vec<u32>>
where
    S: Stream<Item = Item> + Send + 'static,
{
    thread::spawn(move || read_all(branch))
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

#[test]
fn two_branches_read_a_shared_item_concurrently() {
    model(|| {
        let [a, b]: [_; 2] = ready_items(2).fanout(2, 2).try_into().unwrap();
        let a = spawn_reader(a);
        assert_eq!(read_all(b), [0, 1]);
        assert_eq!(a.join().unwrap(), [0, 1]);
    });
}

#[test]
fn three_branches_read_concurrently_with_capacity_one() {
    model(|| {
        let [a, b, c]: [_; 3] = ready_items(1).fanout(3, 1).try_into().unwrap();
        let a = spawn_reader(a);
        let b = spawn_reader(b);
        assert_eq!(read_all(c), [0]);
        assert_eq!(a.join().unwrap(), [0]);
        assert_eq!(b.join().unwrap(), [0]);
    });
}

#[test]
fn fast_branch_waits_for_room_that_the_slow_one_frees() {
    model(|| {
        let (fast, slow) = ready_items(2).tee(1);
        let fast = spawn_reader(fast);
        assert_eq!(read_all(slow), [0, 1]);
        assert_eq!(fast.join().unwrap(), [0, 1]);
    });
}

#[test]
fn dropping_the_slow_branch_frees_the_fast_one() {
    model(|| {
        let (fast, slow) = ready_items(2).tee(1);
        let fast = spawn_reader(fast);
        drop(slow);
        assert_eq!(fast.join().unwrap(), [0, 1]);
    });
}

#[test]
fn dropping_one_of_three_branches_while_another_waits_on_it() {
    model(|| {
        let [fast, slow, dropped]: [_; 3] = ready_items(2).fanout(3, 1).try_into().unwrap();
        let fast = spawn_reader(fast);
        let dropper = thread::spawn(move || drop(dropped));
        assert_eq!(read_all(slow), [0, 1]);
        dropper.join().unwrap();
        assert_eq!(fast.join().unwrap(), [0, 1]);
    });
}

#[test]
fn a_branch_dropped_after_polling_the_upstream_does_not_strand_the_other() {
    model(|| {
        let (sender, upstream) = gate();
        let (mut first, second) = upstream.tee(1);
        let first = thread::spawn(move || {
            let polled = block_on(async { futures::poll!(first.next()) });
            drop(first);
            polled.map(|item| item.map(|item| *item))
        });
        let producer = thread::spawn(move || {
            sender.send(7);
            sender.close();
        });
        assert_eq!(read_all(second), [7]);
        let polled = first.join().unwrap();
        assert!(polled == Poll::Pending || polled == Poll::Ready(Some(7)));
        producer.join().unwrap();
    });
}

#[test]
fn the_upstream_ending_wakes_every_waiting_branch() {
    model(|| {
        let (sender, upstream) = gate();
        let (first, second) = upstream.tee(2);
        let first = spawn_reader(first);
        let second = spawn_reader(second);
        sender.close();
        assert_eq!(first.join().unwrap(), Vec::<u32>::new());
        assert_eq!(second.join().unwrap(), Vec::<u32>::new());
    });
}

#[test]
fn an_item_sent_while_both_branches_wait_reaches_both() {
    model(|| {
        let (sender, upstream) = gate();
        let (first, second) = upstream.tee(1);
        let first = spawn_reader(first);
        let second = spawn_reader(second);
        sender.send(1);
        sender.close();
        assert_eq!(first.join().unwrap(), [1]);
        assert_eq!(second.join().unwrap(), [1]);
    });
}

#[test]
fn cloning_a_branch_while_another_thread_reads() {
    model(|| {
        let (reader, original) = ready_items(2).tee(1);
        let reader = spawn_reader(reader);
        let fork = original.clone();
        let fork = spawn_reader(fork);
        assert_eq!(read_all(original), [0, 1]);
        assert_eq!(reader.join().unwrap(), [0, 1]);
        assert_eq!(fork.join().unwrap(), [0, 1]);
    });
}

#[test]
fn a_lossy_branch_never_holds_back_a_concurrent_reader() {
    model(|| {
        let (main, tap) = ready_items(2).tee(1);
        let tap = tap.into_lossy();
        let tap = thread::spawn(move || read_all_lossy(tap));
        assert_eq!(read_all(main), [0, 1]);
        let (received, missed) = tap.join().unwrap();
        assert_eq!(received.len() as u64 + missed, 2);
        assert!(received.windows(2).all(|pair| pair[0] < pair[1]));
    });
}

#[test]
fn turning_the_slow_branch_lossy_frees_the_waiting_fast_one() {
    model(|| {
        let (fast, slow) = ready_items(2).tee(1);
        let fast = spawn_reader(fast);
        // Not read until `fast` is done: only becoming lossy can free it.
        let tap = slow.into_lossy();
        assert_eq!(fast.join().unwrap(), [0, 1]);
        let (received, missed) = read_all_lossy(tap);
        assert_eq!(received.len() as u64 + missed, 2);
    });
}

/// A branch waiting on the upstream is forked from another thread (through
/// a shared slot, as the waiting task cannot): the fork may poll the
/// upstream first, and the waiting branch must still get the item.
#[test]
fn a_branch_waiting_on_the_upstream_is_forked_from_another_thread() {
    model(|| {
        let (sender, upstream) = gate();
        let [lone]: [_; 1] = upstream.fanout(1, 1).try_into().unwrap();
        let lone = Arc::new(Mutex::new(lone));
        let reader = {
            let lone = Arc::clone(&lone);
            thread::spawn(move || {
                let next = |cx: &mut Context<'_>| lone.lock().unwrap().poll_next_unpin(cx);
                block_on(
                    futures::stream::poll_fn(next)
                        .map(|item| *item)
                        .collect::<Vec<_>>(),
                )
            })
        };
        let fork = lone.lock().unwrap().clone();
        let producer = thread::spawn(move || {
            sender.send(0);
            sender.close();
        });
        assert_eq!(read_all(fork), [0]);
        producer.join().unwrap();
        assert_eq!(reader.join().unwrap(), [0]);
    });
}

// Read-ahead: with a capacity of 8, a branch takes up to 2 items per lock.

/// Capacity at which a branch reads ahead (see the header of `shared.rs`).
const READ_AHEAD_CAP: usize = 8;

/// Reads `count` items from `branch` (fewer if it ends first).
fn read_some<S>(branch: &mut Branch<S>, count: usize) -> Vec<u32>
where
    S: Stream<Item = Item> + Unpin,
{
    block_on(async {
        let mut read = Vec::new();
        while read.len() < count {
            match branch.next().await {
                Some(item) => read.push(*item),
                None => break,
            }
        }
        read
    })
}

/// The slow branch takes and yields read-ahead on one thread while the fast
/// one, `cap` items ahead, waits for the room that it releases.
#[test]
fn a_read_ahead_released_while_another_branch_waits_for_room() {
    model(|| {
        let count = READ_AHEAD_CAP as u32 + 2;
        let (fast, slow) = ready_items(count).tee(READ_AHEAD_CAP);
        let fast = spawn_reader(fast);
        assert_eq!(read_all(slow), (0..count).collect::<Vec<_>>());
        assert_eq!(fast.join().unwrap(), (0..count).collect::<Vec<_>>());
    });
}

/// The slowest branch, holding read-ahead, is dropped while the fast one
/// waits for room: its items are released (the loom `Arc`s would leak
/// otherwise) and the fast one finishes.
#[test]
fn a_branch_with_read_ahead_dropped_while_another_waits_for_room() {
    model(|| {
        let count = READ_AHEAD_CAP as u32 + 2;
        let (fast, mut slow) = ready_items(count).tee(READ_AHEAD_CAP);
        let fast = spawn_reader(fast);
        assert_eq!(read_some(&mut slow, 1), [0]);
        drop(slow);
        assert_eq!(fast.join().unwrap(), (0..count).collect::<Vec<_>>());
    });
}

/// A branch with read-ahead is forked while another thread reads: the
/// original and the fork yield the same remaining items.
#[test]
fn a_branch_with_read_ahead_forked_while_another_thread_reads() {
    model(|| {
        let count = 5;
        let (other, mut original) = ready_items(count).tee(READ_AHEAD_CAP);
        let other = spawn_reader(other);
        assert_eq!(read_some(&mut original, 1), [0]);
        let fork = spawn_reader(original.clone());
        let rest: Vec<_> = (1..count).collect();
        assert_eq!(read_all(original), rest);
        assert_eq!(fork.join().unwrap(), rest);
        assert_eq!(other.join().unwrap(), (0..count).collect::<Vec<_>>());
    });
}

/// A `next()` future is polled once and dropped while another thread pulls
/// and reads: whatever the first poll returned, the branch then yields the
/// rest exactly once.
#[test]
fn a_cancelled_next_loses_nothing_while_another_thread_reads() {
    model(|| {
        let (sender, upstream) = gate();
        let (other, mut cancelled) = upstream.tee(READ_AHEAD_CAP);
        let other = spawn_reader(other);
        let producer = thread::spawn(move || {
            for value in 0..3 {
                sender.send(value);
            }
            sender.close();
        });
        let first = block_on(async { futures::poll!(cancelled.next()) });
        let mut seen: Vec<u32> = match first {
            Poll::Ready(Some(item)) => vec![*item],
            Poll::Ready(None) => unreachable!("three items come before the end"),
            Poll::Pending => Vec::new(),
        };
        seen.extend(read_all(cancelled));
        assert_eq!(seen, [0, 1, 2]);
        producer.join().unwrap();
        assert_eq!(other.join().unwrap(), [0, 1, 2]);
    });
}

// Branches that join later.

/// The position a branch that has read nothing starts at, from its own
/// snapshot: what it has still to yield, counted back from what was pulled.
fn start_of<S>(branch: &Branch<S>) -> u32
where
    S: Stream<Item = Item>,
{
    let stats = branch.stats();
    let entry = stats
        .branches
        .iter()
        .find(|entry| entry.id == branch.id())
        .expect("its own entry");
    assert_eq!(entry.delivered, 0);
    (stats.pulled - entry.lag as u64) as u32
}

/// A branch subscribes on this thread while the only other branch, on
/// another one, pulls batches from the upstream (the capacity leaves room
/// for batches of several items) and reads on: the new branch starts at
/// the live edge of its subscribe, a batch in flight counting as after it,
/// or up to `replay` items before it, and yields every item from there, in
/// order; the other one yields everything.
fn subscribe_while_another_branch_pulls(replay: usize) {
    model(move || {
        let count = 3;
        let subscriber = ready_items(count).share_replay(READ_AHEAD_CAP, replay);
        let first = spawn_reader(subscriber.subscribe());
        let before = subscriber.stats().pulled as u32;
        let late = subscriber.subscribe();
        let start = start_of(&late);
        let earliest = before.saturating_sub(replay as u32);
        assert!(start >= earliest, "it starts at {start}, before {earliest}");
        assert_eq!(read_all(late), (start..count).collect::<Vec<_>>());
        assert_eq!(first.join().unwrap(), (0..count).collect::<Vec<_>>());
    });
}

#[test]
fn subscribing_while_another_branch_pulls_a_batch() {
    subscribe_while_another_branch_pulls(0);
}

#[test]
fn subscribing_with_replay_while_another_branch_pulls_a_batch() {
    subscribe_while_another_branch_pulls(1);
}

/// The last branch reads `reads` of the 3 items (all of them: to its end)
/// and is dropped on another thread while this one subscribes through a
/// subscriber that keeps 1 item for replay: whichever comes first, the new
/// branch yields the items from where it started (the kept one, then the
/// live ones) and then the end; no poll hangs, and once everything is
/// dropped no item is left (loom's `Arc`s would leak).
fn drop_the_last_branch_while_subscribing(reads: usize) {
    model(move || {
        let count = 3;
        let subscriber = ready_items(count).share_replay(READ_AHEAD_CAP, 1);
        let mut last = subscriber.subscribe();
        let last = thread::spawn(move || read_some(&mut last, reads));
        let late = subscriber.subscribe();
        let start = start_of(&late);
        assert_eq!(read_all(late), (start..count).collect::<Vec<_>>());
        let read = last.join().unwrap();
        assert_eq!(read, (0..reads as u32).collect::<Vec<_>>());
        assert_eq!(subscriber.branches(), 0);
        let stats = subscriber.stats();
        assert_eq!((stats.buffered, stats.kept_for_replay), (1, 1));
    });
}

#[test]
fn the_last_branch_dropped_at_its_end_while_a_subscriber_on_another_thread_subscribes() {
    drop_the_last_branch_while_subscribing(3);
}

#[test]
fn the_last_branch_dropped_midway_while_a_subscriber_on_another_thread_subscribes() {
    drop_the_last_branch_while_subscribing(1);
}
