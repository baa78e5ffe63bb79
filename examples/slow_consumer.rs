//! A fast and a slow consumer of one stream of 10 million events: `fanout`'s
//! bounded tee against a naive unbounded one, side by side in one process.
//!
//! The slow consumer does some CPU work per event (no sleeping). Through
//! `tee(cap)`, the fast consumer waits once it is `cap` events ahead, and
//! memory stays flat. Through the naive tee (a task that pushes a copy of
//! each event into one unbounded channel per consumer), the fast side races
//! ahead and the slow consumer's backlog, and the heap, grow with the stream.
//! Progress bars show it live; `fanout`'s figures, on the bars and in the
//! final report alike, come from one [`fanout::Subscriber`]'s `stats()`.
//! The heap is counted by a `stats_alloc` global allocator. The program
//! checks its own report and fails if a promise does not hold.
//!
//! ```text
//! cargo run --release --example slow_consumer -- [--events N] [--cap N] [--short] [--csv PATH]
//! ```
//!
//! `--short` runs 200,000 events, for CI; `--csv` writes the samples that
//! `cargo run -p fanout-extras --bin plot_memory` draws.

use std::alloc::System;
use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::{BranchStats, Stats, StreamExt as _};
use futures::{stream, Stream, StreamExt};
use indicatif::{BinaryBytes, HumanCount, MultiProgress, ProgressBar, ProgressStyle};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::unbounded_channel;
use tokio::task::coop::consume_budget;
use tokio_stream::wrappers::UnboundedReceiverStream;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Rounds of hashing per event: the fast consumer's and the slow consumer's.
const FAST_ROUNDS: u32 = 1;
const SLOW_ROUNDS: u32 = 150;
/// How often the bars, the heap's peak and the CSV are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
const USAGE: &str = "usage: slow_consumer [--events N] [--cap N] [--short] [--csv PATH]";

/// One upstream event: small and `Copy`, so a copy for each consumer is cheap.
#[derive(Clone, Copy, Debug)]
struct Event {
    id: u64,
    timestamp_ms: u64,
    user_id: u32,
}

fn upstream(events: u64) -> impl Stream<Item = Event> {
    stream::iter(0..events).map(|id| Event {
        id,
        timestamp_ms: 1_700_000_000_000 + id / 8,
        user_id: (id.wrapping_mul(2_654_435_761) % 100_000) as u32,
    })
}

/// The work per event: `rounds` of the SplitMix64 finaliser over its fields.
fn work(event: &Event, rounds: u32) -> u64 {
    let mut x = event.id ^ event.timestamp_ms.rotate_left(17) ^ u64::from(event.user_id);
    for _ in 0..black_box(rounds) {
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

/// Reads all `expected` events in order, working on each; returns the
/// stream, still alive so that the final statistics still list its branch,
/// and when it was done.
async fn consume<S: Stream<Item = Event> + Unpin>(
    mut events: S,
    rounds: u32,
    expected: u64,
) -> (S, Instant) {
    let (mut read, mut checksum) = (0, 0_u64);
    while let Some(event) = events.next().await {
        assert_eq!(event.id, read, "an event missing or out of order");
        read += 1;
        checksum = checksum.wrapping_add(work(&event, rounds));
        // Buffered items do not spend tokio's co-op budget: yield now and then.
        consume_budget().await;
    }
    assert_eq!(read, expected, "events missing at the end");
    black_box(checksum);
    (events, Instant::now())
}

/// What one scenario measured.
struct Outcome {
    name: &'static str,
    elapsed: Duration,
    /// The most events held at once, and the bound on them, if any.
    peak_buffered: u64,
    cap: Option<usize>,
    /// The most heap in use above the scenario's start, sampled.
    peak_heap: u64,
}

impl Outcome {
    /// Prints the scenario's row of the final table.
    fn print_row(&self, events: u64) {
        let (name, seconds) = (self.name, self.elapsed.as_secs_f64());
        let (items, rate) = (
            HumanCount(events).to_string(),
            events as f64 / seconds / 1e6,
        );
        let bound = self
            .cap
            .map_or("unbounded".into(), |cap| format!("cap {cap}"));
        let buffered = format!("{} ({bound})", HumanCount(self.peak_buffered));
        let heap = BinaryBytes(self.peak_heap).to_string();
        println!("{name:10}{items:>12}{seconds:>8.2} s{rate:>8.2} M/s{buffered:>24}{heap:>12}");
    }
}

struct Run<'a> {
    runtime: &'a Runtime,
    events: u64,
    csv: Option<BufWriter<File>>,
}

impl Run<'_> {
    /// Runs the two consumers until both are done, sampling the heap and
    /// `probe` (events read by the fast and the slow one, and those buffered)
    /// into the bars and the CSV. Returns the streams, still alive.
    fn watch<F, S>(
        &mut self,
        (name, cap): (&'static str, Option<usize>),
        (fast, slow): (F, S),
        probe: impl Fn() -> [u64; 3],
    ) -> ((F, S), Outcome)
    where
        F: Stream<Item = Event> + Unpin + Send + 'static,
        S: Stream<Item = Event> + Unpin + Send + 'static,
    {
        println!("{name}:");
        let (events, multi) = (self.events, MultiProgress::new());
        let fill = cap.map_or(events, |cap| cap as u64);
        let counts = "{prefix:>9} [{bar:40}] {human_pos}/{human_len}";
        let heap = "{prefix:>9} {binary_bytes} in use";
        let bars = [
            ("fast", events, counts),
            ("slow", events, counts),
            ("buffered", fill, counts),
            ("heap", 0, heap),
        ]
        .map(|(prefix, len, template)| {
            let style = ProgressStyle::with_template(template).expect("a valid template");
            multi.add(ProgressBar::new(len).with_style(style).with_prefix(prefix))
        });
        let (region, started) = (Region::new(GLOBAL), Instant::now());
        let fast = self.runtime.spawn(consume(fast, FAST_ROUNDS, events));
        let slow = self.runtime.spawn(consume(slow, SLOW_ROUNDS, events));
        let mut peak_heap = 0;
        loop {
            let done = fast.is_finished() && slow.is_finished();
            let ([fast_read, slow_read, buffered], heap) = (probe(), region.change());
            let heap = heap.bytes_allocated.saturating_sub(heap.bytes_deallocated) as u64;
            peak_heap = peak_heap.max(heap);
            for (bar, position) in bars.iter().zip([fast_read, slow_read, buffered, heap]) {
                bar.set_position(position);
            }
            // Each bar draws itself, rate-limited: redraw all so that they show one sample.
            bars.iter().for_each(ProgressBar::force_draw);
            if let Some(csv) = &mut self.csv {
                let seconds = started.elapsed().as_secs_f64();
                writeln!(csv, "{name},{seconds:.3},{heap},{buffered}").expect("writing the CSV");
            }
            if done {
                break;
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
        bars.iter().for_each(ProgressBar::abandon);
        let ((fast, fast_done), (slow, slow_done)) = self.runtime.block_on(async {
            let fast = fast.await.expect("the fast consumer");
            (fast, slow.await.expect("the slow consumer"))
        });
        let elapsed = fast_done.max(slow_done) - started;
        let outcome = Outcome {
            name,
            elapsed,
            peak_buffered: 0,
            cap,
            peak_heap,
        };
        ((fast, slow), outcome)
    }
}

/// A branch's entry in a snapshot of the fanout's statistics.
fn branch(stats: &Stats, id: usize) -> &BranchStats {
    let mut branches = stats.branches.iter();
    branches
        .find(|branch| branch.id == id)
        .expect("a live branch")
}

/// Through `fanout`: `tee(cap)`, its statistics from a `Subscriber`. Also
/// returns how long each branch held the upstream back.
fn through_fanout(run: &mut Run<'_>, cap: usize) -> (Outcome, [String; 2]) {
    let (fast, slow) = upstream(run.events).tee(cap);
    let ids = [("fast", fast.id()), ("slow", slow.id())];
    let feed = fast.subscriber();
    let (branches, mut outcome) = run.watch(("fanout", Some(cap)), (fast, slow), || {
        let stats = feed.stats();
        let [fast, slow] = ids.map(|(_, id)| branch(&stats, id).delivered);
        [fast, slow, (stats.buffered + stats.read_ahead) as u64]
    });
    let stats = feed.stats();
    drop(branches);
    outcome.peak_buffered = stats.high_water as u64;
    let held = ids.map(|(name, id)| {
        let held = branch(&stats, id).stalled_upstream.as_secs_f64();
        format!("{name} {held:.2} s")
    });
    (outcome, held)
}

/// Through a naive tee: a task that pushes a copy of each event into one
/// unbounded channel per consumer, and returns the slow one's largest backlog.
fn through_naive_tee(run: &mut Run<'_>) -> Outcome {
    let [pushed, fast_read, slow_read] = [(); 3].map(|()| Arc::new(AtomicU64::new(0)));
    let ((fast_tx, fast_rx), (slow_tx, slow_rx)) = (unbounded_channel(), unbounded_channel());
    let (events, pushes, slow_reads) = (run.events, Arc::clone(&pushed), Arc::clone(&slow_read));
    let pump = run.runtime.spawn(async move {
        let (mut upstream, mut peak_backlog) = (std::pin::pin!(upstream(events)), 0);
        while let Some(event) = upstream.next().await {
            let pushed = pushes.fetch_add(1, Relaxed) + 1;
            let _ = (fast_tx.send(event), slow_tx.send(event));
            peak_backlog = peak_backlog.max(pushed.saturating_sub(slow_reads.load(Relaxed)));
            // Sending never waits: let the other tasks in now and then.
            if pushed % 1024 == 0 {
                tokio::task::yield_now().await;
            }
        }
        peak_backlog
    });
    let counted = |rx, read: &Arc<AtomicU64>| {
        let read = Arc::clone(read);
        UnboundedReceiverStream::new(rx).inspect(move |_| _ = read.fetch_add(1, Relaxed))
    };
    let streams = (counted(fast_rx, &fast_read), counted(slow_rx, &slow_read));
    let (_, mut outcome) = run.watch(("naive tee", None), streams, || {
        let slow = slow_read.load(Relaxed);
        let backlog = pushed.load(Relaxed).saturating_sub(slow);
        [fast_read.load(Relaxed), slow, backlog]
    });
    outcome.peak_buffered = run.runtime.block_on(pump).expect("the pump");
    outcome
}

fn main() -> ExitCode {
    let (events, cap, csv) = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let csv = csv.map(|path| {
        let mut csv = BufWriter::new(File::create(path).expect("creating the CSV"));
        writeln!(csv, "scenario,seconds,heap_bytes,buffered").expect("writing the CSV");
        csv
    });
    let runtime = Runtime::new().expect("a tokio runtime");
    let mut run = Run {
        runtime: &runtime,
        events,
        csv,
    };
    println!(
        "{} events, to a fast consumer and a slow one",
        HumanCount(events)
    );
    let (fanout, held) = through_fanout(&mut run, cap);
    let naive = through_naive_tee(&mut run);
    if let Some(csv) = &mut run.csv {
        csv.flush().expect("writing the CSV");
    }

    println!(
        "\n{:10}{:>12}{:>10}{:>12}{:>24}{:>12}",
        "", "items", "elapsed", "throughput", "peak buffered", "peak heap*"
    );
    fanout.print_row(events);
    naive.print_row(events);
    let every = SAMPLE_EVERY.as_millis();
    println!("* heap allocated during the scenario, peak sampled every {every} ms");
    println!(
        "\nheld the upstream back in fanout: {}\n  (the time the buffer was full with that branch at \
         its oldest item, not all the time\n  the other one waited: each read frees a slot, and the \
         buffer is full again only once the\n  woken task has run)",
        held.join(", ")
    );
    let mut failures = Vec::new();
    if fanout.peak_buffered > cap as u64 {
        failures.push("fanout buffered more than its cap");
    }
    if fanout.peak_heap * 10 >= naive.peak_heap {
        failures.push("fanout's peak heap is not below a tenth of the naive tee's");
    }
    for failure in &failures {
        eprintln!("FAILED: {failure}");
    }
    ExitCode::from(u8::from(!failures.is_empty()))
}

fn parse_args() -> Result<(u64, usize, Option<std::path::PathBuf>), lexopt::Error> {
    use lexopt::prelude::*;
    let (mut events, mut cap, mut csv) = (10_000_000, 1024, None);
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("events") => events = parser.value()?.parse()?,
            Long("cap") => cap = parser.value()?.parse()?,
            Long("short") => events = 200_000,
            Long("csv") => csv = Some(parser.value()?.into()),
            _ => return Err(arg.unexpected()),
        }
    }
    if cap == 0 {
        return Err("--cap must be at least 1".into());
    }
    Ok((events, cap, csv))
}
