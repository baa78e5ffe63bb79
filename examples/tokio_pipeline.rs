//! The shape of a tokio service: events from a producer task arrive on an
//! `mpsc` channel and are fanned out, over one buffer of `CAP` events, to a
//! parser, a metrics aggregator, a slow audit writer and a lossy dashboard.
//!
//! The audit writer pauses every 100 events (a slow disk), so the parser and
//! the metrics aggregator wait for it, and the producer waits for room in the
//! channel: memory stays bounded. The reporter's statistics name the audit
//! writer as the slowest branch; the dashboard never holds anyone back, and
//! gets the events it had no time for as `Lagged` gaps.
//!
//! Run it with `cargo run --release --example tokio_pipeline [-- --events N]`.

use std::sync::Arc;
use std::time::Duration;

use fanout::{Branch, Lagged, Lossy, StreamExt as _, Subscriber};
use futures::{FutureExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio::time::{self, Instant};
use tokio_stream::wrappers::ReceiverStream;

const CAP: usize = 256;
const USAGE: &str = "usage: tokio_pipeline [--events N]";

#[derive(Clone)]
struct Event {
    seq: u64,
    line: Arc<str>,
}

type Events = ReceiverStream<Event>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: u64 = match std::env::args().skip_while(|arg| arg != "--events").nth(1) {
        Some(n) => n.parse().map_err(|_| USAGE)?,
        None => 20_000,
    };

    let (sender, receiver) = mpsc::channel(64);
    let producer = tokio::spawn(async move {
        for seq in 0..events {
            let status = if seq % 97 == 0 { 500 } else { 200 };
            let line = format!("GET /api/{} {status} {}ms", seq % 7, seq * 7919 % 250).into();
            // Dropping the sender at the end ends the stream.
            let sent = sender.send(Event { seq, line }).await;
            sent.expect("the fanout holds the receiver while a branch is alive");
        }
    });

    let [parser, metrics, audit, dashboard] = ReceiverStream::new(receiver).fanout_array(CAP);
    let ids = [parser.id(), metrics.id(), audit.id(), dashboard.id()];
    println!("{events} events, cap {CAP}; branches {ids:?}: parser, metrics, audit, dashboard");
    let feed = parser.subscriber();
    let reporter = tokio::spawn(report(feed.clone()));
    let parser = tokio::spawn(parse(parser));
    let metrics = tokio::spawn(aggregate(metrics));
    let audit = tokio::spawn(write_audit_log(audit));
    let dashboard = tokio::spawn(show_dashboard(dashboard.into_lossy()));

    producer.await?;
    // Each consumer hands its branch back, so the final table still lists it.
    let lossless = [parser.await?, metrics.await?, audit.await??];
    let (_dashboard, shown, missed, gaps) = dashboard.await?;
    reporter.await?;

    let stats = feed.stats();
    println!("\nsummary: {events} events");
    for (name, (_branch, seen, detail)) in ["parser", "metrics", "audit"].iter().zip(&lossless) {
        println!("{name:<9} saw {seen} events, {detail}");
        assert_eq!(*seen, events, "{name} saw every event");
    }
    println!("dashboard showed {shown} events, missed {missed} in {gaps} gaps\n\n{stats}");
    assert_eq!(shown + missed, events);
    assert!(stats.high_water <= CAP, "memory stays bounded");
    Ok(())
}

/// Prints the fanout's statistics every half second while the upstream is open.
async fn report(feed: Subscriber<Events>) {
    let every = Duration::from_millis(500);
    let mut ticks = time::interval_at(Instant::now() + every, every);
    loop {
        ticks.tick().await;
        let stats = feed.stats();
        if stats.upstream_done {
            return;
        }
        println!("\nreporter:\n{stats}\n");
    }
}

/// A lossless consumer's result: its branch, the events it saw, and a detail.
type Done = (Branch<Events>, u64, String);

/// Parses every line and counts the server errors.
async fn parse(mut branch: Branch<Events>) -> Done {
    let (mut seen, mut errors) = (0, 0);
    while let Some(event) = branch.next().await {
        assert_eq!(event.seq, seen, "parser: an event skipped or reordered");
        seen += 1;
        let status = event.line.split(' ').nth(2).expect("a status field");
        errors += u64::from(status.parse::<u16>().expect("a number") >= 500);
    }
    (branch, seen, format!("{errors} server errors"))
}

/// Adds up the bytes of every line.
async fn aggregate(mut branch: Branch<Events>) -> Done {
    let (mut seen, mut bytes) = (0, 0);
    while let Some(event) = branch.next().await {
        assert_eq!(event.seq, seen, "metrics: an event skipped or reordered");
        seen += 1;
        bytes += event.line.len();
    }
    (branch, seen, format!("{bytes} bytes"))
}

/// Writes every line to the audit log, and flushes it, slowly, every 100 lines.
async fn write_audit_log(mut branch: Branch<Events>) -> std::io::Result<Done> {
    let (mut log, mut seen) = (tokio::io::sink(), 0);
    while let Some(event) = branch.next().await {
        assert_eq!(event.seq, seen, "audit: an event skipped or reordered");
        seen += 1;
        let line = format!("{} {}\n", event.seq, event.line);
        log.write_all(line.as_bytes()).await?;
        if seen % 100 == 0 {
            log.flush().await?;
            time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok((branch, seen, format!("{} flushes", seen / 100)))
}

/// Every quarter second, takes the events that are ready and shows the latest
/// one; returns its branch and the events it showed, missed, and in how many gaps.
async fn show_dashboard(mut branch: Lossy<Events>) -> (Lossy<Events>, u64, u64, u64) {
    let (mut shown, mut latest, mut missed, mut gaps) = (0, 0, 0, 0);
    let mut ticks = time::interval(Duration::from_millis(250));
    loop {
        ticks.tick().await;
        while let Some(delivery) = branch.next().now_or_never() {
            match delivery {
                Some(Ok(event)) => (shown, latest) = (shown + 1, event.seq),
                Some(Err(Lagged(n))) => (missed, gaps) = (missed + n, gaps + 1),
                None => return (branch, shown, missed, gaps),
            }
        }
        println!("dashboard: at event {latest}, {missed} missed so far, gaps: {gaps}");
    }
}
