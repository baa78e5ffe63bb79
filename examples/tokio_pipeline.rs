//! The shape of a tokio service: one event source fanned out to three
//! lossless consumers, with backpressure from the slowest all the way to the
//! producer, and to a lossy live dashboard that never holds anyone back.
//!
//! A producer task generates fake JSON-ish access-log lines and sends them
//! into a bounded tokio `mpsc` channel. The receiving end, turned into a
//! `Stream` with `futures::stream::unfold`, is split with `fanout(4, CAP)`
//! into four branches, each consumed by a task of its own:
//!
//! - a **parser**, which parses every line and counts lines per service and
//!   malformed lines;
//! - a **metrics aggregator**, which counts log levels and status classes and
//!   computes latency percentiles;
//! - an **audit writer**, which writes every raw line to an audit log and
//!   flushes it every `AUDIT_BATCH` lines, sleeping to simulate a slow disk;
//! - a **live dashboard**, which shows the error rate of the lines it gets
//!   and redraws after every `DASHBOARD_BATCH` of them, each redraw taking
//!   `DASHBOARD_REDRAW`: several times slower than the audit writer. Its
//!   branch is turned [`into_lossy`](fanout::Branch::into_lossy): it never
//!   applies backpressure, and when the others need the room it gives lines
//!   up, then yields `Err(Lagged(k))` with the number `k` it missed.
//!
//! The audit writer is the slowest of the lossless consumers: its lag
//! reaches the fanout's capacity, the parser and the metrics aggregator wait
//! for it, the fanout stops pulling the channel, and the producer's `send`
//! waits for room. Nothing grows: at most `CAP` lines are buffered by the
//! fanout, and `SOURCE_QUEUE` by the channel. Lines are `Arc<str>`, so the
//! copy each branch gets is a reference count, not a string.
//!
//! At the end each lossless consumer reports what it found, how many lines
//! it read (every line, for all three), its lag (read with `Branch::lag`)
//! and how long it waited for lines: the parser and the metrics aggregator
//! spend most of the run waiting for the audit writer, which hardly waits at
//! all, so nothing held it back, not even the slower dashboard. The
//! dashboard reports the lines it showed and the ones it missed (together,
//! every line) and how close its sampled error rate is to the exact one.
//! Last comes the final [`fanout::Stats`] table, taken from one branch once
//! every consumer is done: how long each branch held the upstream back, and
//! what the lossy one missed.
//!
//! Run it with:
//!
//! ```text
//! cargo run --release --example tokio_pipeline
//! ```
//!
//! It takes about two seconds, most of it in the audit writer's simulated
//! flushes.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::{Branch, Lagged, Lossy, Stats, StreamExt as _};
use futures::stream::{self, BoxStream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// Log lines the producer generates.
const LINES: u64 = 20_000;
/// Lines the bounded channel from the producer holds.
const SOURCE_QUEUE: usize = 256;
/// Lines the fanout's shared buffer holds.
const CAP: usize = 128;
/// The audit writer flushes every `AUDIT_BATCH` lines...
const AUDIT_BATCH: u64 = 200;
/// ...and each flush takes this long (a slow disk).
const AUDIT_FLUSH_DELAY: Duration = Duration::from_millis(20);
/// The dashboard redraws after every `DASHBOARD_BATCH` lines it shows...
const DASHBOARD_BATCH: u64 = 50;
/// ...and each redraw takes this long: the dashboard keeps up with about a
/// quarter of the lines the audit writer can take.
const DASHBOARD_REDRAW: Duration = Duration::from_millis(20);

/// One log line, shared by the branches rather than copied.
type Line = Arc<str>;
/// The event source: the channel's receiving end, as a stream.
type Source = BoxStream<'static, Line>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let (sender, receiver) = mpsc::channel(SOURCE_QUEUE);
    let producer = tokio::spawn(produce(sender, LINES));

    let [parser, metrics, audit, dashboard]: [Branch<Source>; 4] = receiver_stream(receiver)
        .fanout(4, CAP)
        .try_into()
        .expect("fanout(4, ..) returns four branches");
    let parser = tokio::spawn(parse_lines(parser));
    let metrics = tokio::spawn(aggregate_metrics(metrics));
    let audit = tokio::spawn(write_audit_log(audit, tokio::io::sink()));
    let dashboard = tokio::spawn(show_dashboard(dashboard.into_lossy()));

    let produced = producer.await?;
    let parser = parser.await?;
    let metrics = metrics.await?;
    let audit = audit.await??;
    let dashboard = dashboard.await?;
    let elapsed = started.elapsed();
    // Every consumer still holds its branch, so the snapshot lists them all.
    let stats = audit.input.branch.stats();

    print_summary(&produced, &parser, &metrics, &audit, &dashboard);
    print_stats(&stats, &parser, &metrics, &audit, &dashboard);
    println!("\nelapsed {:.2} s", elapsed.as_secs_f64());
    for input in [&parser.input, &metrics.input, &audit.input] {
        assert_eq!(
            input.seen.lines, produced.lines,
            "every lossless consumer sees every line"
        );
    }
    assert_eq!(
        dashboard.seen.shown + dashboard.seen.missed,
        produced.lines,
        "the dashboard shows every line or reports it missed"
    );
    Ok(())
}

/// A tokio `mpsc` receiver as a `Stream`, which is what
/// `tokio_stream::wrappers::ReceiverStream` does; it ends when every sender
/// is dropped and the channel is empty.
fn receiver_stream(receiver: mpsc::Receiver<Line>) -> Source {
    stream::unfold(receiver, |mut receiver| async move {
        let line = receiver.recv().await?;
        Some((line, receiver))
    })
    .boxed()
}

// ---------------------------------------------------------------------------
// The producer

struct ProducerReport {
    lines: u64,
    /// Time spent waiting in `send` for room in the channel.
    waited: Duration,
}

/// Sends `lines` fake log lines, then drops the sender, which ends the stream.
async fn produce(sender: mpsc::Sender<Line>, lines: u64) -> ProducerReport {
    let mut waited = Duration::ZERO;
    for line in FakeLog::new(0x5eed).take(lines as usize) {
        let send_started = Instant::now();
        sender
            .send(line.into())
            .await
            .expect("the fanout holds the receiver until the stream ends");
        waited += send_started.elapsed();
    }
    ProducerReport { lines, waited }
}

/// An endless, deterministic source of access-log lines, about one in 500
/// cut short (malformed).
struct FakeLog {
    rng: u64,
    timestamp_ms: u64,
}

const SERVICES: [&str; 4] = ["auth", "cart", "checkout", "search"];
const ROUTES: [&str; 5] = ["/login", "/api/cart", "/api/pay", "/search", "/health"];

impl FakeLog {
    fn new(seed: u64) -> Self {
        FakeLog {
            rng: seed | 1,
            timestamp_ms: 1_700_000_000_000,
        }
    }

    /// A pseudo-random number in `0..n` (xorshift64*).
    fn below(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        choices[self.below(choices.len() as u64) as usize]
    }
}

impl Iterator for FakeLog {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        self.timestamp_ms += 1 + self.below(5);
        let status = match self.below(100) {
            0 => 503,
            1..=2 => 500,
            3..=9 => 404,
            _ => 200,
        };
        let level = match status {
            500.. => Level::Error,
            400.. => Level::Warn,
            _ if self.below(10) == 0 => Level::Debug,
            _ => Level::Info,
        };
        let latency_ms = match self.below(100) {
            0 => 200 + self.below(1800),
            _ => 2 + self.below(60),
        };
        let (service, route) = (self.pick(&SERVICES), self.pick(&ROUTES));
        let mut line = format!(
            r#"{{"ts":{},"level":"{level}","service":"{service}","route":"{route}","status":{status},"latency_ms":{latency_ms}}}"#,
            self.timestamp_ms,
        );
        if self.below(500) == 0 {
            line.truncate(line.len() / 2);
        }
        Some(line)
    }
}

// ---------------------------------------------------------------------------
// Parsing

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    const ALL: [Level; 4] = [Level::Debug, Level::Info, Level::Warn, Level::Error];

    fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An HTTP status class: 2 for 2xx, and so on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StatusClass(u16);

impl fmt::Display for StatusClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}xx", self.0)
    }
}

/// The fields of a log line the consumers use.
struct LogRecord<'a> {
    level: Level,
    service: &'a str,
    status: u16,
    latency_ms: u32,
}

impl<'a> LogRecord<'a> {
    /// Parses a line, or returns `None` if it is malformed.
    fn parse(line: &'a str) -> Option<Self> {
        if !(line.starts_with('{') && line.ends_with('}')) {
            return None;
        }
        let level = json_field(line, "level")?;
        let level = Level::ALL.into_iter().find(|known| known.name() == level)?;
        Some(LogRecord {
            level,
            service: json_field(line, "service")?,
            status: json_field(line, "status")?.parse().ok()?,
            latency_ms: json_field(line, "latency_ms")?.parse().ok()?,
        })
    }
}

/// The value of `"key":value` in a flat JSON object, without quotes. Good
/// enough for these lines, which have no nesting and no escapes.
fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (_, rest) = line.split_once(&format!(r#""{key}":"#))?;
    let end = rest.find([',', '}'])?;
    Some(rest[..end].trim_matches('"'))
}

// ---------------------------------------------------------------------------
// The consumers

/// A consumer's branch, recording how many lines it read, how far behind
/// it was, and how long it waited for lines. The consumer's report keeps it,
/// and with it the branch, so that the final statistics still list it.
struct Input {
    branch: Branch<Source>,
    seen: InputReport,
}

impl Input {
    fn new(branch: Branch<Source>) -> Self {
        let seen = InputReport {
            capacity: branch.capacity(),
            ..InputReport::default()
        };
        Input { branch, seen }
    }

    async fn next(&mut self) -> Option<Line> {
        let lag = self.branch.lag();
        let wait_started = Instant::now();
        let line = self.branch.next().await;
        self.seen.waited += wait_started.elapsed();
        let line = line?;
        self.seen.lines += 1;
        self.seen.total_lag += lag as u64;
        self.seen.max_lag = self.seen.max_lag.max(lag);
        Some(line)
    }
}

/// What a consumer read.
#[derive(Debug, Default)]
struct InputReport {
    lines: u64,
    /// The branch's lag before each read (the lines buffered that this
    /// consumer had not read yet), summed over the reads, and the highest.
    total_lag: u64,
    max_lag: usize,
    /// The branch's capacity: the most its lag can be.
    capacity: usize,
    /// Time spent waiting for the next line.
    waited: Duration,
}

impl InputReport {
    fn mean_lag(&self) -> f64 {
        self.total_lag as f64 / self.lines.max(1) as f64
    }
}

struct ParserReport {
    input: Input,
    malformed: u64,
    per_service: BTreeMap<String, u64>,
}

/// Parses every line and counts the records per service.
async fn parse_lines(branch: Branch<Source>) -> ParserReport {
    let mut input = Input::new(branch);
    let mut malformed = 0;
    let mut per_service = BTreeMap::<String, u64>::new();
    while let Some(line) = input.next().await {
        match LogRecord::parse(&line) {
            Some(record) => *per_service.entry(record.service.to_owned()).or_default() += 1,
            None => malformed += 1,
        }
    }
    ParserReport {
        input,
        malformed,
        per_service,
    }
}

struct MetricsReport {
    input: Input,
    per_level: BTreeMap<Level, u64>,
    per_status_class: BTreeMap<StatusClass, u64>,
    /// Latencies of all well-formed lines, sorted.
    latencies_ms: Vec<u32>,
}

impl MetricsReport {
    /// The latency below which `fraction` of the requests fall.
    fn latency_percentile(&self, fraction: f64) -> u32 {
        let last = self.latencies_ms.len().saturating_sub(1);
        let index = (last as f64 * fraction).round() as usize;
        self.latencies_ms.get(index).copied().unwrap_or(0)
    }

    /// The share of well-formed lines logged at `ERROR`.
    fn error_rate(&self) -> f64 {
        let errors = self.per_level.get(&Level::Error).copied().unwrap_or(0);
        errors as f64 / self.latencies_ms.len().max(1) as f64
    }
}

/// Counts levels and status classes, and collects latencies.
async fn aggregate_metrics(branch: Branch<Source>) -> MetricsReport {
    let mut input = Input::new(branch);
    let mut per_level = BTreeMap::new();
    let mut per_status_class = BTreeMap::new();
    let mut latencies_ms = Vec::new();
    while let Some(line) = input.next().await {
        let Some(record) = LogRecord::parse(&line) else {
            continue;
        };
        *per_level.entry(record.level).or_default() += 1;
        *per_status_class
            .entry(StatusClass(record.status / 100))
            .or_default() += 1;
        latencies_ms.push(record.latency_ms);
    }
    latencies_ms.sort_unstable();
    MetricsReport {
        input,
        per_level,
        per_status_class,
        latencies_ms,
    }
}

struct AuditReport {
    input: Input,
    bytes: u64,
    flushes: u64,
}

/// Writes every raw line to `log`, flushing every `AUDIT_BATCH` lines.
async fn write_audit_log(
    branch: Branch<Source>,
    log: impl AsyncWrite + Unpin,
) -> io::Result<AuditReport> {
    let mut input = Input::new(branch);
    let mut log = AuditLog::new(log);
    while let Some(line) = input.next().await {
        log.append(&line).await?;
        if input.seen.lines % AUDIT_BATCH == 0 {
            log.flush().await?;
        }
    }
    log.flush().await?;
    Ok(AuditReport {
        input,
        bytes: log.bytes,
        flushes: log.flushes,
    })
}

/// An append-only log on a slow disk: each flush takes `AUDIT_FLUSH_DELAY`.
struct AuditLog<W> {
    writer: BufWriter<W>,
    bytes: u64,
    flushes: u64,
}

impl<W: AsyncWrite + Unpin> AuditLog<W> {
    fn new(writer: W) -> Self {
        AuditLog {
            writer: BufWriter::new(writer),
            bytes: 0,
            flushes: 0,
        }
    }

    async fn append(&mut self, line: &str) -> io::Result<()> {
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.write_all(b"\n").await?;
        self.bytes += line.len() as u64 + 1;
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().await?;
        tokio::time::sleep(AUDIT_FLUSH_DELAY).await;
        self.flushes += 1;
        Ok(())
    }
}

/// What the dashboard showed and missed.
#[derive(Debug, Default)]
struct DashboardView {
    /// Lines shown, and among their well-formed ones, those at `ERROR`.
    shown: u64,
    well_formed: u64,
    errors: u64,
    /// Lines missed, and the `Err(Lagged(_))` reports that told so.
    missed: u64,
    gaps: u64,
}

impl DashboardView {
    /// Shows `line`; returns whether it is time to redraw.
    fn show(&mut self, line: &str) -> bool {
        self.shown += 1;
        if let Some(record) = LogRecord::parse(line) {
            self.well_formed += 1;
            self.errors += u64::from(record.level == Level::Error);
        }
        self.shown % DASHBOARD_BATCH == 0
    }

    fn skip(&mut self, Lagged(missed): Lagged) {
        self.missed += missed;
        self.gaps += 1;
    }

    /// The share of `ERROR` lines among the well-formed lines shown: an
    /// estimate, from a sample, of the exact rate.
    fn error_rate(&self) -> f64 {
        self.errors as f64 / self.well_formed.max(1) as f64
    }
}

struct DashboardReport {
    /// Kept so that the final statistics still list it.
    branch: Lossy<Source>,
    seen: DashboardView,
}

/// Shows the error rate of the lines it gets, redrawing after every
/// `DASHBOARD_BATCH` of them; the lines it has no time for are given up.
async fn show_dashboard(mut branch: Lossy<Source>) -> DashboardReport {
    let mut seen = DashboardView::default();
    while let Some(delivery) = branch.next().await {
        match delivery {
            Ok(line) => {
                if seen.show(&line) {
                    tokio::time::sleep(DASHBOARD_REDRAW).await;
                }
            }
            Err(lagged) => seen.skip(lagged),
        }
    }
    DashboardReport { branch, seen }
}

// ---------------------------------------------------------------------------
// The summary

fn print_summary(
    produced: &ProducerReport,
    parser: &ParserReport,
    metrics: &MetricsReport,
    audit: &AuditReport,
    dashboard: &DashboardReport,
) {
    println!(
        "{} log lines -> fanout(4, cap {CAP}) -> parser, metrics, audit writer, \
         lossy dashboard\n",
        produced.lines
    );
    println!(
        "producer  sent {} lines, waited {:.2} s in total for room in the channel",
        produced.lines,
        produced.waited.as_secs_f64(),
    );
    print_input("parser", &parser.input);
    println!(
        "          {} malformed; per service: {}",
        parser.malformed,
        join_counts(&parser.per_service),
    );
    print_input("metrics", &metrics.input);
    println!(
        "          levels: {}; status classes: {}",
        join_counts(&metrics.per_level),
        join_counts(&metrics.per_status_class),
    );
    println!(
        "          latency p50 {} ms, p99 {} ms, max {} ms",
        metrics.latency_percentile(0.50),
        metrics.latency_percentile(0.99),
        metrics.latency_percentile(1.0),
    );
    print_input("audit", &audit.input);
    println!(
        "          wrote {} bytes in {} flushes of {} ms each",
        audit.bytes,
        audit.flushes,
        AUDIT_FLUSH_DELAY.as_millis(),
    );
    let view = &dashboard.seen;
    println!(
        "dashboard showed {} lines and missed {} (told in {} `Lagged` reports), \
         redrew {} times",
        view.shown,
        view.missed,
        view.gaps,
        view.shown / DASHBOARD_BATCH,
    );
    println!(
        "          ERROR rate in the lines shown {:.2}%, exact {:.2}%",
        100.0 * view.error_rate(),
        100.0 * metrics.error_rate(),
    );
}

fn print_input(consumer: &str, input: &Input) {
    let seen = &input.seen;
    println!(
        "{consumer:<9} read {} lines, waited {:.2} s for them; lag mean {:5.1}, max {:>3} of {}",
        seen.lines,
        seen.waited.as_secs_f64(),
        seen.mean_lag(),
        seen.max_lag,
        seen.capacity,
    );
}

/// The final statistics, and which consumer reads which branch.
fn print_stats(
    stats: &Stats,
    parser: &ParserReport,
    metrics: &MetricsReport,
    audit: &AuditReport,
    dashboard: &DashboardReport,
) {
    let consumers = [
        ("parser", parser.input.branch.id()),
        ("metrics", metrics.input.branch.id()),
        ("audit", audit.input.branch.id()),
        ("dashboard", dashboard.branch.id()),
    ];
    let legend: Vec<String> = consumers
        .iter()
        .map(|(consumer, id)| format!("{id} {consumer}"))
        .collect();
    println!(
        "\nfinal statistics (branches: {}):\n{stats}",
        legend.join(", ")
    );
}

/// `{a: 1, b: 2}` as `"a 1, b 2"`.
fn join_counts<K: fmt::Display>(counts: &BTreeMap<K, u64>) -> String {
    counts
        .iter()
        .map(|(key, count)| format!("{key} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}
