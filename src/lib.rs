//! Split one [`Stream`](futures_core::Stream) into several branches that each
//! see every item, over **one bounded buffer**: memory stays bounded however
//! far one consumer lags, because the slowest branch holds the others back.
//!
//! An unbounded tee (Python's `itertools.tee`, and the clone-the-stream
//! helpers of Rust) keeps every item the slowest consumer has not read yet:
//! one consumer stalls and memory grows until the process dies. `fanout`
//! bounds it: `stream.fanout(n, cap)` returns `n` [`Branch`]es that share
//! one buffer of `cap` items, and a branch that is `cap` items ahead of the
//! slowest one waits. Backpressure instead of growth.
//!
//! ```
//! use fanout::StreamExt as _;
//! use futures::{executor::block_on, future, stream, StreamExt};
//!
//! let events = stream::iter(1..=1000);
//! let [parser, metrics, audit] = events.fanout_array(64);
//!
//! let (parsed, total, audited) = block_on(future::join3(
//!     parser.map(|n| n * 2).collect::<Vec<_>>(),
//!     metrics.fold(0, |sum, n| future::ready(sum + n)),
//!     audit.count(),
//! ));
//! assert_eq!(parsed.len(), 1000);
//! assert_eq!(total, 500_500);
//! assert_eq!(audited, 1000);
//! ```
//!
//! # The model
//!
//! - **Every branch yields every item**, in upstream order, then `None`, and
//!   stays terminated. Each branch is an ordinary [`Stream`](futures_core::Stream), and a
//!   [`FusedStream`](futures_core::FusedStream).
//! - **One buffer, shared.** Each item is stored once, whatever the number of
//!   branches, and held until every branch has read it. The branch that reads
//!   it last takes it by move; the others get clones, so an item is cloned at
//!   most `n - 1` times (wrap costly items in an `Arc`).
//! - **Who waits for whom.** At most `cap` items are alive inside the
//!   fanout at any moment: those buffered, those the branches have read
//!   ahead (below), and those being dropped. A branch that is `cap` items
//!   ahead of the slowest branch returns `Pending` until the slowest one
//!   yields (or is dropped), and until then the upstream is not polled. So
//!   the upstream is never polled more than `cap` items past what the
//!   slowest branch has yielded, and no branch yields more than `cap` items
//!   ahead of it. [`Branch::lag`] tells how far behind a branch is.
//! - **Batches.** A branch takes the items buffered for it several at a time
//!   under one lock into a small read-ahead of its own, and yields them from
//!   there without the lock; the branch that needs a new item polls the
//!   upstream again while it yields, up to a share of the free room, keeps a
//!   share of the batch and leaves the rest buffered. The read-ahead counts
//!   against `cap`, and its room is given back when the branch has yielded
//!   it, so a fast branch may wait until the slowest branch has yielded its
//!   read-ahead, not just one item. So a fast branch runs exactly `cap`
//!   items ahead of the slowest branch when no other branch holds
//!   read-ahead, and otherwise up to `cap` minus what they hold (at most a
//!   quarter of `cap` each). Batch sizes are an implementation detail.
//! - **No task is spawned.** Whichever branch needs an item that nobody has
//!   pulled yet polls the upstream itself. Creating branches polls nothing.
//!   The branches work on any executor, from one task (with `join` or
//!   `select`) or from many tasks and threads. The upstream needs neither
//!   `Unpin` nor [`FusedStream`](futures_core::FusedStream); it is never
//!   polled again once it returned `None`, and is dropped then.
//! - **Dropping a branch** detaches it at once: its unread items and its
//!   read-ahead are dropped, it never holds the others back again, and
//!   branches that were waiting for room are woken once those items are
//!   gone (never before: the room an item held is not reused while it is
//!   alive). When the last branch (and the last [`Subscriber`]) is dropped,
//!   the upstream and the buffered items are dropped.
//! - **Cloning a branch** forks it: the clone starts where the original is,
//!   yields the same remaining items, and from then on counts for
//!   backpressure like any other branch. It gets a clone of the original's
//!   read-ahead, which counts against `cap` too; the one exception to the
//!   memory bound is that these clones are made even when there is no room
//!   for them, so a fork can add at most one batch (a quarter of `cap`) to
//!   the items alive, until the branches have yielded them.
//! - **No lost wake-ups.** The upstream is always polled with a waker of the
//!   fanout's own, which wakes every branch waiting for the upstream, so a
//!   waiting branch does not depend on the branch that polled last (it may
//!   have been dropped, or be busy elsewhere). Wakers are woken after
//!   internal locks are released, so a waker may poll or drop branches.
//! - **A panic in the upstream** propagates to the branch that polled it;
//!   if the upstream had yielded items earlier in the same batch, that
//!   branch yields them first, and the panic reaches the first branch that
//!   reads past them. The other branches still get every buffered item, then
//!   panic with a message that says the upstream panicked; none of them
//!   hangs.
//! - **Cloning and dropping items.** An item is cloned while the fanout's
//!   internal lock is held, so its `Clone` must not touch a branch of the
//!   same fanout at all (no poll, clone, drop, [`lag`](Branch::lag),
//!   [`stats`](Branch::stats), `size_hint` or `Debug`, and no method of its
//!   [`Subscriber`]s: each takes that lock and would deadlock), and should be cheap: wrap costly items in an
//!   `Arc`. A `Clone` that panics propagates to the branch whose poll (or
//!   fork) made the clone, and leaves the fanout consistent: no item is lost
//!   or repeated, and what the poll took before the panic is kept. Items are
//!   dropped with no lock held, so a `Drop` may use the fanout, except the
//!   clones a fork had made when a `Clone` of it panicked, which are dropped
//!   at once, under the lock (and are the only clones made in vain).
//! - **Cancel safety.** A branch's `next()` future can be dropped without
//!   losing an item: the items a branch has read ahead are its own, and an
//!   item leaves the branch only when it is returned.
//!
//! A branch is `Send` and `Sync` when the upstream is `Send` and its items
//! are `Send`, and it is always `Unpin`. A branch can be read from a thread
//! without an async runtime through `futures::executor::block_on_stream`.
//!
//! # Backpressure or lossy: choosing per branch
//!
//! A [`Branch`] applies backpressure: it never misses an item, and when it
//! falls `cap` items behind, the upstream and every other branch wait for
//! it. That is right for consumers whose output must be complete: a parser,
//! an audit log, a metrics aggregator.
//!
//! A branch turned [`Lossy`] with [`Branch::into_lossy`] never makes anyone
//! wait: when the buffer is full and only lossy branches are at its oldest
//! item, they give that item up, and later yield `Err(Lagged(k))` with the
//! number of items they missed. That is right for consumers that only want
//! to be roughly up to date: a live dashboard, a sampler, a debug tap. Mix
//! both kinds freely; backpressure branches are never skipped.
//!
//! ```
//! use fanout::{Lagged, StreamExt as _};
//! use futures::{executor::block_on, stream, StreamExt};
//!
//! let (audit, dashboard) = stream::iter(0..1000).tee(16);
//! let dashboard = dashboard.into_lossy(); // may miss items, never slows `audit`
//! assert_eq!(block_on(audit.count()), 1000);
//! let seen: Vec<Result<i32, Lagged>> = block_on(dashboard.collect());
//! assert!(matches!(seen[0], Err(Lagged(_))));
//! ```
//!
//! # Consumers that come and go
//!
//! A server does not know its clients up front. [`share`](StreamExt::share)
//! returns a [`Subscriber`] rather than branches: a handle that holds no
//! place in the buffer and holds nothing back, and that adds a branch with
//! [`subscribe`](Subscriber::subscribe) whenever a client connects. The new
//! branch starts at the live edge and from then on is like any other: it
//! applies backpressure, or is made lossy (a dashboard that must never slow
//! the feed), and dropping it when the client leaves releases it at once.
//! While no branch is alive, nothing is polled. [`Subscriber::stats`]
//! serves a `/stats` endpoint without a branch of its own, and
//! [`Branch::subscriber`] gives a subscriber to a fanout made with `fanout`
//! or `tee`.
//!
//! [`share_replay`](StreamExt::share_replay) keeps the latest items for
//! clients that join late, so that they start with some context. Kept
//! items count against `cap` but never make a branch wait: when room is
//! needed, the oldest of them that no branch has still to read is dropped
//! first; [`Stats::kept_for_replay`] counts them.
//!
//! ```
//! use fanout::StreamExt as _;
//! use futures::{channel::mpsc, executor::block_on, StreamExt};
//!
//! let (events, feed) = mpsc::unbounded();
//! let feed = feed.share_replay(64, 2);
//! block_on(async {
//!     let mut first = feed.subscribe();
//!     for event in ["a", "b", "c"] {
//!         events.unbounded_send(event).unwrap();
//!         assert_eq!(first.next().await, Some(event));
//!     }
//!     // A client that connects now first gets the latest 2 events.
//!     let mut late = feed.subscribe();
//!     assert_eq!(late.next().await, Some("b"));
//!     assert_eq!(late.next().await, Some("c"));
//!     events.unbounded_send("d").unwrap();
//!     assert_eq!((first.next().await, late.next().await), (Some("d"), Some("d")));
//!     drop(events);
//!     assert_eq!((first.next().await, late.next().await), (None, None));
//! });
//! ```
//!
//! # Finding the bottleneck
//!
//! With backpressure, a slow consumer no longer shows up as memory growth
//! but as "everything is slow". [`Branch::stats`] answers which branch it is,
//! from any branch: a [`Stats`] snapshot of the buffer (held now, high-water
//! mark, items pulled) and of every branch (lag, items delivered and missed,
//! and [`stalled_upstream`](BranchStats::stalled_upstream), the time it held
//! the upstream back). Counters are kept under the lock the fanout takes
//! anyway, and the clock is read only when a branch starts or stops holding
//! the upstream back, never per item.
//!
//! ```
//! use fanout::StreamExt as _;
//! use futures::{executor::block_on, stream, StreamExt};
//!
//! let (mut parser, audit) = stream::iter(0..100).tee(4);
//! block_on(async {
//!     for _ in 0..4 {
//!         parser.next().await;
//!     }
//! });
//! let stats = parser.stats();
//! assert_eq!(stats.slowest().map(|branch| branch.id), Some(audit.id()));
//! println!("{stats}"); // a table, one line per branch
//! ```
//!
//! # Without an async runtime
//!
//! [`blocking`] splits a plain [`Iterator`] the same way, into branches that
//! are iterators, to be read on threads: same bounded buffer, and no thread
//! spawned. A thread that waits parks until another one makes room or pulls
//! the next item, and the iterator's `next` may block: every item it returns
//! reaches the other branches before it is called again.
//!
//! ```
//! use std::thread;
//!
//! let (count, sum) = fanout::blocking::tee(1..=100_000u64, 256);
//! thread::scope(|s| {
//!     let sum = s.spawn(move || sum.sum::<u64>());
//!     assert_eq!(count.count(), 100_000);
//!     assert_eq!(sum.join().unwrap(), 5_000_050_000);
//! });
//! ```
//!
//! # Recipes
//!
//! **Errors that are not `Clone`.** Items are cloned for every branch but
//! the last, so a stream of `Result`s whose error is not `Clone`
//! (`std::io::Error`, `reqwest::Error`) needs its errors shared first:
//! `map_err(Arc::new)` before `fanout`, and every branch sees the same
//! error.
//!
//! ```
//! use std::{io, sync::Arc};
//!
//! use fanout::StreamExt as _;
//! use futures::{executor::block_on, future, stream, StreamExt, TryStreamExt};
//!
//! let lines = stream::iter([Ok("GET /"), Err(io::Error::new(io::ErrorKind::Other, "disk gone"))]);
//! let [parser, audit] = lines.map_err(Arc::new).fanout_array(16);
//! let (parsed, audited) = block_on(future::join(
//!     parser.collect::<Vec<_>>(),
//!     audit.try_collect::<Vec<_>>(),
//! ));
//! assert_eq!(parsed.len(), 2);
//! assert_eq!(audited.unwrap_err().to_string(), "disk gone");
//! ```
//!
//! **Costly items.** A clone runs under the fanout's lock, once per branch
//! but the last, and `cap` bounds the number of items, not their bytes.
//! Put large or costly items behind an `Arc` (or use `bytes::Bytes` for
//! buffers), so that a clone is a reference count and the items held are
//! shared: `stream.map(Arc::new).fanout(n, cap)`.
//!
//! **On tokio: the co-op budget.** Branches do not take part in tokio's
//! co-op budget (this crate does not depend on tokio), and a branch reading
//! items that are buffered or read ahead never returns `Pending`. A branch
//! waits at the latest when it is `cap` items ahead of the slowest one, and
//! an upstream on tokio's resources (a channel, a socket) spends the budget
//! when it is polled; but a consumer loop over the slowest branch of an
//! upstream that is always ready, with no other `.await` on a tokio
//! resource, can keep its worker thread from the other tasks for a long
//! time. In such a loop, call `tokio::task::consume_budget().await` (it
//! yields only once the task's budget is spent), or wrap the `next()` in
//! `tokio::task::coop::cooperative` (tokio 1.44).
//!
//! ```
//! use fanout::StreamExt as _;
//! use futures::{stream, StreamExt};
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! runtime.block_on(async {
//!     let [mut sum, count] = stream::iter(0..10_000u64).fanout_array(256);
//!     let count = tokio::spawn(count.count());
//!     let mut total = 0;
//!     while let Some(n) = sum.next().await {
//!         total += n;
//!         tokio::task::consume_budget().await; // lets `count` run now and then
//!     }
//!     assert_eq!((total, count.await.unwrap()), (49_995_000, 10_000));
//! });
//! ```
//!
//! # Correctness
//!
//! The wake-up and memory logic is checked, not hoped for; `.ci/run` runs
//! all of it:
//!
//! - **loom models** (`tests/loom.rs`) explore every interleaving, up to two
//!   preemptions, of two and three threads reading, waiting for room,
//!   dropping and cloning branches while the upstream yields, waits and ends,
//!   dropping, forking and cancelling branches that hold read-ahead, and
//!   subscribing while another branch pulls or the last one is dropped.
//!   Items are loom `Arc`s, so a leak fails the model as a lost wake-up
//!   does. Run them with
//!   `RUSTFLAGS="--cfg fanout_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom`.
//! - **A model-based property test** (`tests/model.rs`, proptest) runs random
//!   programs of polls, drops, clones, subscribes and upstream events, with
//!   and without replay, against a reference model (`tests/support/`) and checks, after every step, the
//!   items, the memory bound with read-ahead, the upstream's pulls, the live
//!   items and clones, and that every branch that can make progress was
//!   woken.
//! - **Stress tests** (`tests/stress.rs`) on a multi-thread tokio runtime and
//!   on one OS thread per branch, with random yields and drops; a randomized
//!   scheduler that polls only woken branches (`tests/schedule.rs`); and
//!   tests of re-entrant wakers and of panicking upstreams and items.
//! - **Miri** runs six of the test files that need no async runtime (the
//!   API, backpressure, clone panic, drop and clone, re-entrancy and wake-up
//!   tests, less two long random schedules), so that a leak or undefined
//!   behaviour fails them; and the library is built with its declared
//!   `rust-version`.
//!
//! # Compared with
//!
//! - **`itertools::tee`, Python's `itertools.tee`, and unbounded Rust tees**
//!   (clone-the-stream helpers): same "everyone sees everything", but their
//!   buffer grows without bound behind a slow consumer.
//! - **`tokio::sync::broadcast`**: bounded, but lossy: a receiver that falls
//!   behind gets `Lagged` and loses items. `fanout` never drops an item.
//! - **`async-broadcast`, `postage`, or one bounded channel per consumer**:
//!   bounded and lossless, but they need a task that pulls the upstream and
//!   sends, shutdown logic, and a channel operation per item per consumer
//!   (or `n` queues). `fanout` is a combinator: no task, one buffer, and it
//!   pulls the upstream only on demand.
//!
//! # The name clash with `futures`
//!
//! This crate's trait is called [`StreamExt`], like `futures::StreamExt`:
//! import it anonymously with `use fanout::StreamExt as _;`. On a type that is
//! both a `Stream` and a `Sink`, `futures::SinkExt::fanout` is a method too,
//! and `value.fanout(..)` is ambiguous when both traits are in scope; call
//! the free function [`fanout()`] or `fanout::StreamExt::fanout(value, n,
//! cap)` instead:
//!
//! ```
//! use futures::{executor::block_on, future, stream, StreamExt};
//!
//! // Fully qualified, or with the free function: never ambiguous.
//! let [a, b] = fanout::StreamExt::fanout_array(stream::iter(["event"]), 16);
//! let more = fanout::fanout(stream::iter(["event"]), 2, 16);
//! let seen = block_on(future::join_all([a, b].into_iter().chain(more).map(StreamExt::count)));
//! assert_eq!(seen, [1, 1, 1, 1]);
//! ```
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![doc(test(attr(deny(warnings))))]

pub mod blocking;
mod branch;
mod lossy;
mod read_ahead;
mod registry;
mod shared;
mod stall;
mod stats;
mod stream_ext;
mod subscriber;
mod sync;
mod upstream;
mod upstream_signal;
mod waiters;

pub use branch::Branch;
pub use lossy::{Lagged, Lossy};
pub use stats::{BranchStats, Stats};
pub use stream_ext::{fanout, share, StreamExt};
pub use subscriber::Subscriber;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
