//! One stream of 10 million events to a fast and a slow consumer (CPU work per
//! event, no sleeping), through `fanout`'s `tee(cap)`, then through a naive tee:
//! a task pushing a copy of each event into one unbounded channel per consumer.
//! With `fanout` the fast one waits once it is `cap` events ahead and the heap
//! stays flat; with the naive tee it races ahead and the heap grows with the slow
//! one's backlog. `fanout`'s figures, on the bars and in the report, come from one
//! [`fanout::Subscriber`], the heap's from a `peak_alloc` global allocator. The
//! program fails if a promise breaks.
//!
//! ```text
//! cargo run --release --example slow_consumer -- [--events N] [--cap N] [--short] [--csv PATH]
//! ```
//!
//! `--short` runs 200,000 events, for CI; `--csv` writes the samples that
//! `cargo run -p fanout-extras --bin plot_memory` draws.

use std::hint::black_box;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::StreamExt as _;
use futures::stream::{self, Stream, StreamExt};
use indicatif::{BinaryBytes, HumanCount, MultiProgress, ProgressBar, ProgressStyle};
use peak_alloc::PeakAlloc;
use tokio::sync::mpsc::unbounded_channel;
use tokio_stream::wrappers::UnboundedReceiverStream;

const USAGE: &str = "usage: slow_consumer [--events N] [--cap N] [--short] [--csv PATH]";

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

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

/// Reads all `expected` events in order, hashing each `rounds` times; returns when done.
async fn consume(events: impl Stream<Item = Event>, rounds: u32, expected: u64) -> Instant {
    let mut events = std::pin::pin!(events);
    let mut read = 0;
    while let Some(event) = events.next().await {
        assert_eq!(event.id, read, "an event missing or out of order");
        read += 1;
        let mut x = event.id ^ event.timestamp_ms.rotate_left(17) ^ u64::from(event.user_id);
        for _ in 0..black_box(rounds) {
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^= x >> 31;
        }
        black_box(x);
        // Buffered items do not spend tokio's co-op budget: yield now and then.
        tokio::task::coop::consume_budget().await;
    }
    assert_eq!(read, expected, "events missing at the end");
    Instant::now()
}

/// A scenario's time until both consumers were done, most events held, and peak heap.
type Outcome = (Duration, u64, u64);

/// Runs both consumers to the end, sampling the heap and `probe` (events read by
/// each, held now, held at most) for the bars and the CSV.
async fn run<S: Stream<Item = Event>>(
    name: &str,
    (events, buffer_len): (u64, u64),
    (fast, slow): (S, S),
    probe: impl Fn() -> [u64; 4],
    csv: &mut dyn Write,
) -> Outcome {
    println!("{name}:");
    let (multi, started) = (MultiProgress::new(), Instant::now());
    let counts = "{prefix:>9} [{bar:40}] {human_pos}/{human_len}";
    let bars = [
        ("fast", events, counts),
        ("slow", events, counts),
        ("buffered", buffer_len, counts),
        ("heap", 0, "{prefix:>9} {binary_bytes} in use"),
    ]
    .map(|(prefix, len, template)| {
        let style = ProgressStyle::with_template(template).expect("a valid template");
        multi.add(ProgressBar::new(len).with_style(style).with_prefix(prefix))
    });
    HEAP.reset_peak_usage();
    // The slow consumer hashes each event 150 times, the fast one once.
    let consumers = futures::future::join(consume(fast, 1, events), consume(slow, 150, events));
    let mut consumers = std::pin::pin!(consumers);
    loop {
        let finished = tokio::time::timeout(Duration::from_millis(20), &mut consumers).await;
        let ([fast_read, slow_read, held, peak_held], heap) = (probe(), HEAP.current_usage());
        // A bar draws itself only now and then: draw each, so that all show this sample.
        for (bar, position) in bars.iter().zip([fast_read, slow_read, held, heap as u64]) {
            bar.set_position(position);
            bar.force_draw();
        }
        let seconds = started.elapsed().as_secs_f64();
        writeln!(csv, "{name},{seconds:.3},{heap},{held}").expect("writing the CSV");
        if let Ok((fast_done, slow_done)) = finished {
            bars.iter().for_each(ProgressBar::abandon);
            let elapsed = fast_done.max(slow_done) - started;
            return (elapsed, peak_held, HEAP.peak_usage() as u64);
        }
    }
}

/// Through `fanout`'s `tee(cap)`, read by a `Subscriber`; also says how long
/// each branch held the upstream back.
async fn through_fanout(events: u64, cap: usize, csv: &mut dyn Write) -> (Outcome, String) {
    let (mut fast, mut slow) = upstream(events).tee(cap);
    let feed = fast.subscriber();
    // The statistics list the live branches by id: `fast` (0), then `slow` (1).
    let probe = || {
        let stats = feed.stats();
        let [fast, slow] = [0, 1].map(|i| stats.branches[i].delivered);
        let held = stats.buffered + stats.read_ahead;
        [fast, slow, held as u64, stats.high_water as u64]
    };
    let streams = (&mut fast, &mut slow);
    let outcome = run("fanout", (events, cap as u64), streams, probe, csv).await;
    let stats = feed.stats();
    let [fast, slow] = [0, 1].map(|i| stats.branches[i].stalled_upstream.as_secs_f64());
    (outcome, format!("fast {fast:.2} s, slow {slow:.2} s"))
}

async fn through_naive_tee(events: u64, csv: &mut dyn Write) -> Outcome {
    // Events pushed, read by the fast and by the slow consumer, the largest backlog.
    let counts: Arc<[AtomicU64; 4]> = Arc::default();
    let ((fast_tx, fast_rx), (slow_tx, slow_rx)) = (unbounded_channel(), unbounded_channel());
    let pushes = Arc::clone(&counts);
    tokio::spawn(async move {
        let mut upstream = upstream(events);
        let [pushed, _, slow_read, peak_backlog] = &*pushes;
        while let Some(event) = upstream.next().await {
            let pushed = pushed.fetch_add(1, Relaxed) + 1;
            peak_backlog.fetch_max(pushed.saturating_sub(slow_read.load(Relaxed)), Relaxed);
            let _ = (fast_tx.send(event), slow_tx.send(event));
            // Sending never waits: let the other tasks in now and then.
            if pushed % 1024 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let counted = |rx, index: usize| {
        let counts = Arc::clone(&counts);
        UnboundedReceiverStream::new(rx).inspect(move |_| _ = counts[index].fetch_add(1, Relaxed))
    };
    let streams = (counted(fast_rx, 1), counted(slow_rx, 2));
    let probe = || {
        let [pushed, fast, slow, peak] = [0, 1, 2, 3].map(|index| counts[index].load(Relaxed));
        [fast, slow, pushed.saturating_sub(slow), peak]
    };
    run("naive tee", (events, events), streams, probe, csv).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let (events, cap, csv_path) = parse_args().unwrap_or_else(|error| {
        eprintln!("error: {error}\n{USAGE}");
        std::process::exit(2)
    });
    let mut csv: Box<dyn Write> = match csv_path {
        Some(path) => Box::new(std::fs::File::create(path).expect("creating the CSV")),
        None => Box::new(std::io::sink()),
    };
    writeln!(csv, "scenario,seconds,heap_bytes,buffered").expect("writing the CSV");
    let count = HumanCount(events).to_string();
    println!("{count} events, to a fast consumer and a slow one");
    let (fanout, held) = through_fanout(events, cap, &mut csv).await;
    let naive = through_naive_tee(events, &mut csv).await;
    println!("\n                 items   elapsed  throughput           peak buffered  peak heap*");
    let rows = [
        ("fanout", format!("cap {cap}"), fanout),
        ("naive tee", "unbounded".into(), naive),
    ];
    for (name, bound, (elapsed, peak_held, peak_heap)) in rows {
        let (seconds, heap) = (elapsed.as_secs_f64(), BinaryBytes(peak_heap).to_string());
        let rate = events as f64 / seconds / 1e6;
        let buffered = format!("{} ({bound})", HumanCount(peak_held));
        println!("{name:10}{count:>12}{seconds:>8.2} s{rate:>8.2} M/s{buffered:>24}{heap:>12}");
    }
    println!("* the exact peak of the whole program's heap in use during the scenario");
    println!("\nheld the upstream back in fanout: {held}");
    println!("  (the time the buffer was full with that branch at its oldest item, not all the");
    println!("  time the other one waited: each read frees a slot, and the buffer is full again");
    println!("  only once the woken task has run)");
    let ((_, fanout_held, fanout_heap), (_, _, naive_heap)) = (fanout, naive);
    let (over_cap, heap_too_big) = (fanout_held > cap as u64, fanout_heap * 10 >= naive_heap);
    if over_cap {
        eprintln!("FAILED: fanout buffered more than its cap");
    }
    if heap_too_big {
        eprintln!("FAILED: fanout's peak heap is not below a tenth of the naive tee's");
    }
    ExitCode::from(u8::from(over_cap || heap_too_big))
}

fn parse_args() -> Result<(u64, usize, Option<std::path::PathBuf>), lexopt::Error> {
    use lexopt::prelude::*;
    let (mut events, mut cap, mut csv) = (10_000_000, 1024, None);
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("events") => events = parser.value()?.parse()?,
            Long("cap") => cap = parser.value()?.parse::<std::num::NonZeroUsize>()?.get(),
            Long("short") => events = 200_000,
            Long("csv") => csv = Some(parser.value()?.into()),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok((events, cap, csv))
}
