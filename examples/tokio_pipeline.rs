//! The shape of a tokio service: events from a producer task arrive on an
//! `mpsc` channel and are fanned out, over one buffer of `CAP` events, to
//! four tasks: a parser, a metrics aggregator, a slow audit writer, and a
//! lossy dashboard that never holds anyone back.
//!
//! The audit writer pauses every `AUDIT_BATCH` events (a slow disk), so the
//! parser and the metrics aggregator wait for it, and the producer waits for
//! room in the channel: memory stays bounded. The reporter's periodic
//! statistics name the audit writer as the slowest branch, and show the
//! events the dashboard missed; the dashboard reports them as `Lagged` gaps.
//!
//! Run it with `cargo run --release --example tokio_pipeline [-- --events N]`.

use std::error::Error;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use fanout::{Branch, Lagged, Lossy, StreamExt as _, Subscriber};
use futures::{FutureExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio::time::{self, Instant};
use tokio_stream::wrappers::ReceiverStream;

const USAGE: &str = "usage: tokio_pipeline [--events N]";
const DEFAULT_EVENTS: u64 = 20_000;
/// Events the fanout's shared buffer holds.
const CAP: usize = 256;
/// The audit writer flushes every `AUDIT_BATCH` events, and each flush takes
/// `AUDIT_FLUSH`.
const AUDIT_BATCH: u64 = 100;
const AUDIT_FLUSH: Duration = Duration::from_millis(5);
const DASHBOARD_TICK: Duration = Duration::from_millis(250);
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// One event: a sequence number and a log line, shared rather than copied.
#[derive(Clone)]
struct Event {
    seq: u64,
    line: Arc<str>,
}

type Events = ReceiverStream<Event>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let events = events_from_args()?;
    let (sender, receiver) = mpsc::channel(64);
    let producer = tokio::spawn(produce(sender, events));

    let [parser, metrics, audit, dashboard] = ReceiverStream::new(receiver).fanout_array(CAP);
    let ids = [parser.id(), metrics.id(), audit.id(), dashboard.id()];
    println!("{events} events, cap {CAP}; branches {ids:?}: parser, metrics, audit, dashboard");
    let feed = parser.subscriber();
    let reporter = tokio::spawn(report(feed.clone()));
    let parser = tokio::spawn(parse(InOrder::new(parser)));
    let metrics = tokio::spawn(aggregate(InOrder::new(metrics)));
    let audit = tokio::spawn(write_audit_log(InOrder::new(audit)));
    let dashboard = tokio::spawn(show_dashboard(dashboard.into_lossy()));

    producer.await?;
    let lossless = [parser.await?, metrics.await?, audit.await??];
    let (_dashboard_branch, dashboard) = dashboard.await?;
    reporter.await?;

    // Every consumer has handed its branch back, so the table lists them all.
    let stats = feed.stats();
    println!("\nsummary: {events} events");
    for (name, (input, detail)) in ["parser", "metrics", "audit"].iter().zip(&lossless) {
        println!("{name:<9} saw {} events, {detail}", input.seen);
    }
    println!(
        "dashboard showed {} events, missed {} in {} gaps\n\n{stats}",
        dashboard.shown, dashboard.missed, dashboard.gaps
    );

    let saw_all = lossless.iter().all(|(input, _)| input.seen == events);
    assert!(saw_all, "every lossless consumer saw every event, in order");
    assert_eq!(dashboard.shown + dashboard.missed, events);
    assert!(stats.high_water <= CAP, "memory stays bounded");
    Ok(())
}

fn events_from_args() -> Result<u64, &'static str> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(DEFAULT_EVENTS),
        [flag, n] if flag == "--events" => n.parse().map_err(|_| USAGE),
        _ => Err(USAGE),
    }
}

/// Sends `events` events, then drops the sender, which ends the stream.
async fn produce(sender: mpsc::Sender<Event>, events: u64) {
    for seq in 0..events {
        let status = if seq % 97 == 0 { 500 } else { 200 };
        let line = format!("GET /api/{} {status} {}ms", seq % 7, seq * 7919 % 250).into();
        let sent = sender.send(Event { seq, line }).await;
        sent.expect("the fanout holds the receiver while a branch is alive");
    }
}

/// Prints the fanout's statistics every `REPORT_EVERY`, while the upstream is open.
async fn report(feed: Subscriber<Events>) {
    let mut ticks = time::interval_at(Instant::now() + REPORT_EVERY, REPORT_EVERY);
    loop {
        ticks.tick().await;
        let stats = feed.stats();
        if stats.upstream_done {
            return;
        }
        println!("\nreporter:\n{stats}\n");
    }
}

/// A lossless consumer's branch, which checks that it yields every event, in
/// order, and counts them. A consumer hands it back at the end, so that the
/// final statistics still list its branch.
struct InOrder {
    branch: Branch<Events>,
    seen: u64,
}

impl InOrder {
    fn new(branch: Branch<Events>) -> Self {
        InOrder { branch, seen: 0 }
    }

    async fn next(&mut self) -> Option<Event> {
        let event = self.branch.next().await?;
        assert_eq!(event.seq, self.seen, "an event skipped or reordered");
        self.seen += 1;
        Some(event)
    }
}

/// Parses every line and counts the server errors.
async fn parse(mut events: InOrder) -> (InOrder, String) {
    let mut errors = 0;
    while let Some(event) = events.next().await {
        let status = event.line.split(' ').nth(2).expect("a status field");
        errors += u64::from(status.parse::<u16>().expect("a number") >= 500);
    }
    (events, format!("{errors} server errors"))
}

/// Adds up the bytes of every line.
async fn aggregate(mut events: InOrder) -> (InOrder, String) {
    let mut bytes = 0;
    while let Some(event) = events.next().await {
        bytes += event.line.len();
    }
    (events, format!("{bytes} bytes"))
}

/// Writes every line to the audit log, flushing it every `AUDIT_BATCH` lines.
async fn write_audit_log(mut events: InOrder) -> io::Result<(InOrder, String)> {
    let mut log = tokio::io::sink();
    while let Some(event) = events.next().await {
        let line = format!("{} {}\n", event.seq, event.line);
        log.write_all(line.as_bytes()).await?;
        if events.seen % AUDIT_BATCH == 0 {
            log.flush().await?;
            time::sleep(AUDIT_FLUSH).await;
        }
    }
    let flushes = events.seen / AUDIT_BATCH;
    Ok((events, format!("{flushes} flushes")))
}

/// What the dashboard showed and missed.
#[derive(Default)]
struct Dashboard {
    shown: u64,
    latest: u64,
    missed: u64,
    gaps: u64,
}

/// On every tick, takes the events that are ready and shows the latest one;
/// the events it had no time for come as `Lagged` gaps. Hands its branch
/// back at the end, like [`InOrder`].
async fn show_dashboard(mut branch: Lossy<Events>) -> (Lossy<Events>, Dashboard) {
    let mut view = Dashboard::default();
    let mut ticks = time::interval(DASHBOARD_TICK);
    loop {
        ticks.tick().await;
        while let Some(delivery) = branch.next().now_or_never() {
            match delivery {
                Some(Ok(event)) => {
                    view.shown += 1;
                    view.latest = event.seq;
                }
                Some(Err(Lagged(missed))) => {
                    view.missed += missed;
                    view.gaps += 1;
                }
                None => return (branch, view),
            }
        }
        println!(
            "dashboard: at event {}, {} missed so far, gaps: {}",
            view.latest, view.missed, view.gaps
        );
    }
}
