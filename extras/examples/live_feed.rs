//! A live event feed for web clients: one source, shared by every client.
//!
//! The server generates a numbered event every few milliseconds and shares
//! it with [`share_replay`](fanout::StreamExt::share_replay): each client that
//! connects [subscribes](fanout::Subscriber::subscribe) a branch of its own,
//! all over one bounded buffer, and nothing is spawned to drive the feed.
//!
//! - `GET /events`: the feed as server-sent events, the sequence number as
//!   the SSE `id`. A new client first gets the last [`REPLAY`] events, then
//!   the live ones. Every client gets every event, so one that stops reading
//!   holds the feed back once its socket buffers are full and it is (at
//!   most) [`CAPACITY`] events behind: backpressure, not a growing queue.
//! - `GET /events?lossy=1`: a dashboard on a [lossy](fanout::Lossy) branch. It
//!   never slows the feed; for each gap it gets an event named `lagged`,
//!   whose data is the number of events it missed.
//! - `GET /stats`: the fanout's [`Stats`](fanout::Stats) table, in which
//!   `<- slowest` marks the client that holds the feed back. The server logs
//!   each client's branch id when it connects.
//!
//! ```text
//! cargo run -p fanout-extras --example live_feed        # or: -- --port 8080
//! curl -N localhost:3000/events
//! curl -N 'localhost:3000/events?lossy=1'
//! curl localhost:3000/stats
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use fanout::{Lagged, StreamExt as _, Subscriber};
use futures::{stream, Stream, StreamExt};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::IntervalStream;

/// The most events the fanout holds: how far a client may fall behind the
/// fastest one before it holds the feed back.
pub const CAPACITY: usize = 64;
/// The latest events a new client gets first.
pub const REPLAY: usize = 16;
/// The time between two generated events.
const TICK: Duration = Duration::from_millis(2);

/// One event of the feed. The text is behind an `Arc`, so that the fanout's
/// clone for each client is a reference count.
#[derive(Debug, Clone)]
pub struct Event {
    /// The sequence number, from 0.
    pub seq: u64,
    /// What happened.
    pub text: Arc<str>,
}

impl Event {
    fn to_sse(&self) -> sse::Event {
        sse::Event::default()
            .id(self.seq.to_string())
            .data(&*self.text)
    }
}

/// The service, for any source of events: the example's generated feed, or
/// a test's channel.
pub fn router<S>(feed: Subscriber<S>) -> Router
where
    S: Stream<Item = Event> + Send + 'static,
{
    Router::new()
        .route("/events", get(events::<S>))
        .route("/stats", get(stats::<S>))
        .with_state(feed)
}

async fn events<S>(
    State(feed): State<Subscriber<S>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response
where
    S: Stream<Item = Event> + Send + 'static,
{
    // The branch lives in the response body. When the client disconnects,
    // hyper drops the body, and with it the branch: from then on it holds
    // nothing back.
    let branch = feed.subscribe();
    eprintln!("client connected: branch {}", branch.id());
    if query.get("lossy").is_some_and(|lossy| lossy == "1") {
        let dashboard = branch.into_lossy().map(|delivery| match delivery {
            Ok(event) => event.to_sse(),
            Err(Lagged(missed)) => sse::Event::default()
                .event("lagged")
                .data(missed.to_string()),
        });
        sse_response(dashboard)
    } else {
        sse_response(branch.map(|event| event.to_sse()))
    }
}

fn sse_response(events: impl Stream<Item = sse::Event> + Send + 'static) -> Response {
    Sse::new(events.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn stats<S: Stream>(State(feed): State<Subscriber<S>>) -> String {
    format!("{}\n", feed.stats())
}

/// The generated source: event `seq` every [`TICK`], with a made-up reading.
fn generated_feed() -> impl Stream<Item = Event> {
    let mut ticks = tokio::time::interval(TICK);
    // Once a slow client lets go, the feed goes on at its pace, not in a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    IntervalStream::new(ticks)
        .zip(stream::iter(0..))
        .map(|(_, seq): (_, u64)| Event {
            seq,
            text: format!("sensor {} reads {} C", seq % 4, 18 + seq % 7).into(),
        })
}

/// The port: `--port N`, or a first argument `N`; 3000 by default.
fn port() -> u16 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = match args.as_slice() {
        [] => return 3000,
        [flag, port, ..] if flag == "--port" => port,
        [port, ..] => port,
    };
    port.parse().expect("usage: live_feed [--port] N")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let feed = generated_feed().share_replay(CAPACITY, REPLAY);
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port())).await?;
    eprintln!("serving on http://{}", listener.local_addr()?);
    axum::serve(listener, router(feed)).await
}
