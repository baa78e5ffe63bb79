//! The `live_feed` example's server, on a source the test controls, read by
//! real HTTP clients.
//!
//! No assertion is timed: each test waits for the conditions it checks, and
//! [`HANG_GUARD`] fails it only if it hangs.

#[path = "../examples/live_feed.rs"]
#[allow(dead_code)] // `main` and its generated feed
mod live_feed;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::{StreamExt as _, Subscriber};
use live_feed::{Event, CAPACITY, REPLAY};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const HANG_GUARD: Duration = Duration::from_secs(60);
/// The events the source channel holds before its sender waits.
const SOURCE_CAPACITY: usize = 4;
/// Large events, so that a client that stops reading soon fills its socket
/// buffers.
const PAYLOAD: usize = 8 * 1024;
/// More bytes than the kernel's socket buffers of one connection hold (a few
/// MiB).
const SOCKET_BUFFERS_BOUND: usize = 64 << 20;

/// The example's router on `127.0.0.1:0`, fed by the returned sender.
async fn start() -> (Server, mpsc::Sender<Event>) {
    let (source, events) = mpsc::channel(SOURCE_CAPACITY);
    let feed = ReceiverStream::new(events).share_replay(CAPACITY, REPLAY);
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let router = live_feed::router(feed.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let http = reqwest::Client::new();
    (Server { addr, feed, http }, source)
}

struct Server {
    addr: SocketAddr,
    /// The server's feed, to look at from the test.
    feed: Subscriber<ReceiverStream<Event>>,
    http: reqwest::Client,
}

impl Server {
    /// Connects a client to `/events{query}`: once this returns, its branch
    /// is subscribed.
    async fn events(&self, query: &str) -> SseClient {
        let url = format!("http://{}/events{query}", self.addr);
        let response = self.http.get(url).send().await.unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseClient {
            response,
            buffer: Vec::new(),
        }
    }

    async fn stats(&self) -> String {
        let url = format!("http://{}/stats", self.addr);
        let response = self.http.get(url).send().await.unwrap();
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        response.text().await.unwrap()
    }
}

fn event(seq: u64) -> Event {
    let text = format!("event {seq} {}", "x".repeat(PAYLOAD));
    Event {
        seq,
        text: text.into(),
    }
}

/// One SSE event, as the example sends them.
#[derive(Debug, PartialEq)]
enum Frame {
    /// An event of the feed: its `id`.
    Event(u64),
    /// A `lagged` event: the number missed.
    Lagged(u64),
}

/// A client reading an SSE body.
struct SseClient {
    response: reqwest::Response,
    /// Bytes received that do not make a whole event yet.
    buffer: Vec<u8>,
}

impl SseClient {
    /// The next event, or `None` at the end of the body. Comments (the
    /// keep-alives) are skipped.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
                let frame: Vec<u8> = self.buffer.drain(..end + 2).collect();
                match parse(std::str::from_utf8(&frame[..end]).unwrap()) {
                    Some(frame) => return Some(frame),
                    None => continue,
                }
            }
            match self.response.chunk().await.unwrap() {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => {
                    assert!(self.buffer.is_empty(), "a partial event at the end");
                    return None;
                }
            }
        }
    }

    /// The feed's events up to the end of the body, checking each one's data.
    async fn rest(&mut self) -> Vec<u64> {
        let mut ids = Vec::new();
        while let Some(frame) = self.next().await {
            match frame {
                Frame::Event(id) => ids.push(id),
                Frame::Lagged(missed) => panic!("a lossless client missed {missed}"),
            }
        }
        ids
    }
}

/// Parses one SSE event (without its blank line); `None` for a comment.
fn parse(frame: &str) -> Option<Frame> {
    let (mut name, mut id, mut data) = (None, None, None);
    for line in frame.lines() {
        match line.split_once(": ") {
            Some(("event", value)) => name = Some(value),
            Some(("id", value)) => id = Some(value.parse().unwrap()),
            Some(("data", value)) => data = Some(value),
            _ => assert!(line.starts_with(':'), "unexpected line {line:?}"),
        }
    }
    match (name, id, data) {
        (None, None, None) => None,
        (None, Some(id), Some(data)) => {
            assert_eq!(data, &*event(id).text);
            Some(Frame::Event(id))
        }
        (Some("lagged"), None, Some(missed)) => Some(Frame::Lagged(missed.parse().unwrap())),
        _ => panic!("unexpected event {frame:?}"),
    }
}

/// Runs `test` with the hang guard, and prints how long it took.
async fn guarded(name: &str, test: impl Future<Output = ()>) {
    let start = Instant::now();
    tokio::time::timeout(HANG_GUARD, test)
        .await
        .unwrap_or_else(|_| panic!("{name} hung"));
    println!("{name}: {:?}", start.elapsed());
}

/// Waits until `condition` holds, checking it every few milliseconds.
async fn wait_until(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_gets_every_event_in_order() {
    guarded("every client gets every event", async {
        const EVENTS: u64 = 300;
        let (server, source) = start().await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(server.events("").await);
        }
        assert_eq!(server.feed.branches(), 3);
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut client| tokio::spawn(async move { client.rest().await }))
            .collect();
        for seq in 0..EVENTS {
            source.send(event(seq)).await.unwrap();
        }
        drop(source);
        for reader in readers {
            assert_eq!(reader.await.unwrap(), (0..EVENTS).collect::<Vec<_>>());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_client_first_gets_the_replay() {
    guarded("a late client first gets the replay", async {
        const BEFORE: u64 = 40;
        const AFTER: u64 = 10;
        let (server, source) = start().await;
        let mut early = server.events("").await;
        for seq in 0..BEFORE {
            source.send(event(seq)).await.unwrap();
            assert_eq!(early.next().await, Some(Frame::Event(seq)));
        }
        // Everything sent has been pulled: the late client's replay is the
        // last `REPLAY` of it.
        let mut late = server.events("").await;
        for seq in BEFORE..BEFORE + AFTER {
            source.send(event(seq)).await.unwrap();
        }
        drop(source);
        assert_eq!(
            late.rest().await,
            (BEFORE - REPLAY as u64..BEFORE + AFTER).collect::<Vec<_>>()
        );
        assert_eq!(
            early.rest().await,
            (BEFORE..BEFORE + AFTER).collect::<Vec<_>>()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_holds_the_feed_back_until_it_goes() {
    guarded("a slow client holds the feed back until it goes", async {
        const SLOW_READS: u64 = 3;
        let (server, source) = start().await;
        // Branch ids follow the order of subscription, from 0.
        let mut fast = server.events("").await;
        let mut slow = server.events("").await;
        let mut dashboard = server.events("?lossy=1").await;
        let (slow_id, dashboard_id) = (1, 2);

        let sent = Arc::new(AtomicU64::new(0));
        let producer = tokio::spawn({
            let sent = Arc::clone(&sent);
            async move {
                for seq in 0.. {
                    source.send(event(seq)).await.unwrap();
                    sent.store(seq + 1, Ordering::SeqCst);
                }
            }
        });
        let received = Arc::new(AtomicU64::new(0));
        let fast_reader = tokio::spawn({
            let received = Arc::clone(&received);
            async move {
                let mut count = 0;
                while let Some(frame) = fast.next().await {
                    assert_eq!(frame, Frame::Event(count));
                    count += 1;
                    received.store(count, Ordering::SeqCst);
                }
                count
            }
        });
        for seq in 0..SLOW_READS {
            assert_eq!(slow.next().await, Some(Frame::Event(seq)));
        }

        // The slow client reads no more. Once its socket buffers are full,
        // the feed stops: the fast client has read everything pulled, the
        // source channel is full, and nothing moves. (Its branch lags by
        // the capacity, less what it has read ahead: batches are tuning.)
        // Seeing the state settle too early would only make the checks
        // below weaker, never fail them.
        let stalled = |stats: &fanout::Stats| {
            stats.slowest().is_some_and(|branch| branch.id == slow_id)
                && received.load(Ordering::SeqCst) == stats.pulled
                && sent.load(Ordering::SeqCst) == stats.pulled + SOURCE_CAPACITY as u64
        };
        let mut previous = None;
        loop {
            let stats = server.feed.stats();
            let now = stalled(&stats).then_some(stats.pulled);
            if now.is_some() && now == previous {
                break;
            }
            previous = now;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stalled_at = sent.load(Ordering::SeqCst);
        let table = server.stats().await;
        println!("{table}");
        let slowest: Vec<usize> = table
            .lines()
            .filter(|line| line.ends_with("<- slowest"))
            .map(|line| line.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(slowest, [slow_id]);
        // The source got ahead of what the slow client read by at most the
        // fanout's capacity, the source channel, and what the sockets hold.
        let ahead = stalled_at - SLOW_READS;
        println!("stalled {ahead} events ahead of what the slow client read");
        assert!(ahead <= (CAPACITY + SOURCE_CAPACITY + SOCKET_BUFFERS_BOUND / PAYLOAD) as u64);

        // A gone client holds nothing back: the feed goes on, and the
        // dashboard, which is not read either, gives events up instead of
        // slowing it.
        drop(slow);
        wait_until(|| server.feed.branches() == 2).await;
        wait_until(|| {
            let stats = server.feed.stats();
            let dashboard = stats
                .branches
                .iter()
                .find(|branch| branch.id == dashboard_id);
            sent.load(Ordering::SeqCst) > stalled_at && dashboard.unwrap().missed > 0
        })
        .await;

        producer.abort();
        assert!(producer.await.unwrap_err().is_cancelled());
        let total = sent.load(Ordering::SeqCst);
        assert_eq!(fast_reader.await.unwrap(), total);
        // The dashboard gets each event in order, or a `lagged` for it.
        let (mut next, mut gaps) = (0, 0);
        while let Some(frame) = dashboard.next().await {
            match frame {
                Frame::Event(id) => {
                    assert_eq!(id, next);
                    next += 1;
                }
                Frame::Lagged(missed) => {
                    assert!(missed > 0);
                    next += missed;
                    gaps += 1;
                }
            }
        }
        assert_eq!(next, total);
        assert!(gaps > 0);
        println!("{total} events sent; gaps the dashboard was told of: {gaps}");
    })
    .await;
}
