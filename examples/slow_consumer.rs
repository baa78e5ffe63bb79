//! A fast and a slow consumer of one stream: `fanout`'s bounded tee against a
//! naive unbounded one, at 10 million events.
//!
//! One upstream yields small `Event`s. It is split in two: a *fast* branch
//! that does a few nanoseconds of work per event, and a *slow* branch that
//! does about a microsecond of CPU work per event (no sleeping), so it can
//! take only a fraction of the events the upstream and the fast branch could
//! go through. Each branch runs in its own task on a multi-threaded tokio
//! runtime. The same run is made twice:
//!
//! - **`fanout`**: `events.tee(cap)`. The two branches share one buffer of
//!   `cap` events; once the fast branch is `cap` events ahead of the slow one
//!   it waits. The slow branch's [`lag`](fanout::Branch::lag), which is the
//!   number of buffered events, never exceeds `cap`, and memory stays flat.
//! - **naive tee**: a task that pulls the upstream and pushes a copy of every
//!   event into one unbounded queue per consumer, the usual hand-written
//!   tee. Nothing holds the fast side back, so the slow consumer's backlog,
//!   and the process's memory, grow with the length of the stream.
//!
//! About once a second a progress line shows the events each branch has read,
//! the slow branch's backlog and the resident memory. In the `fanout`
//! scenario it is followed by the fanout's own statistics
//! ([`Branch::stats`](fanout::Branch::stats), a [`fanout::Stats`] table) and
//! by the name of the branch that holds the upstream back:
//! [`Stats::slowest`](fanout::Stats::slowest), told apart as fast or slow by
//! its [`id`](fanout::Branch::id). The branches live in the consumer tasks,
//! and a clone of one would be a third branch, holding the buffer back in
//! its turn; so the slow consumer itself publishes a snapshot every
//! `STATS_EVERY` events, and the printer shows the latest. When the run is
//! over, the final table shows how long each branch held the upstream back
//! (its [`stalled_upstream`](fanout::BranchStats::stalled_upstream): the time
//! the buffer was full with that branch at its oldest event): the slow one,
//! and the fast one hardly ever (only if the slow one overtook it while its
//! task was not running). It is a small part of the run, although the fast
//! branch waits for the slow one throughout: each event the slow one reads
//! frees a slot, and the buffer is not full again until the woken fast task
//! runs, which on tokio's multi-threaded runtime is when the slow task next
//! yields to the scheduler (`consume_budget`, about every 128 events).
//!
//! Each scenario runs in a child process (this binary, re-executed with
//! `--scenario`), so that each has its own peak resident memory (`VmHWM`,
//! read from `/proc/self/status`; "n/a" off Linux). The parent prints a
//! side-by-side comparison at the end. Both scenarios together take about
//! half a minute on two cores.
//!
//! Run it with (`--events` and `--cap` are optional):
//!
//! ```text
//! cargo run --release --example slow_consumer
//! cargo run --release --example slow_consumer -- --events 2000000 --cap 256
//! cargo run --release --example slow_consumer -- --scenario naive-tee
//! ```
//!
//! `--scenario` runs just that scenario, in this process: that is how the
//! parent runs each child, and the child's last line (`@outcome ...`) is its
//! report to the parent.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fanout::{Branch, BranchStats, Stats, StreamExt as _};
use futures::channel::mpsc::{self, UnboundedReceiver};
use futures::{stream, Future, Stream, StreamExt};

const DEFAULT_EVENTS: u64 = 10_000_000;
const DEFAULT_CAP: usize = 1024;
/// Rounds of hashing per event: the fast consumer's and the slow consumer's.
const FAST_WORK_ROUNDS: u32 = 1;
const SLOW_WORK_ROUNDS: u32 = 200;
/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often the slow consumer publishes a snapshot of the fanout's
/// statistics, in events read: at about a million events a second, some
/// fifteen times a second.
const STATS_EVERY: u64 = 1 << 16;
/// Marks the line on which a child process hands its outcome to the parent.
const OUTCOME_MARKER: &str = "@outcome";

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.scenario {
        Some(scenario) => {
            let outcome = run_scenario(scenario, &args.config);
            println!("{}", outcome.summary());
            println!("{OUTCOME_MARKER} {}", outcome.encode());
            ExitCode::SUCCESS
        }
        None => compare_scenarios(&args.config),
    }
}

// ---------------------------------------------------------------------------
// Command line

const USAGE: &str = "usage: slow_consumer [--events N] [--cap N] [--scenario fanout|naive-tee]";

#[derive(Clone, Copy, Debug)]
struct Config {
    events: u64,
    cap: usize,
}

#[derive(Debug)]
struct Args {
    config: Config,
    /// Run just this scenario, in this process.
    scenario: Option<Scenario>,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut parsed = Args {
            config: Config {
                events: DEFAULT_EVENTS,
                cap: DEFAULT_CAP,
            },
            scenario: None,
        };
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .ok_or_else(|| format!("`{flag}` needs a value"))?;
            match flag.as_str() {
                "--events" => parsed.config.events = parse_count(&value)?,
                "--cap" => parsed.config.cap = parse_count(&value)?,
                "--scenario" => parsed.scenario = Some(Scenario::from_name(&value)?),
                _ => return Err(format!("unknown argument `{flag}`")),
            }
        }
        if parsed.config.cap == 0 {
            return Err("`--cap` must be at least 1".into());
        }
        Ok(parsed)
    }
}

/// Parses a count, allowing `_` and `,` as digit separators.
fn parse_count<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    let digits: String = value.chars().filter(|c| !matches!(c, '_' | ',')).collect();
    digits
        .parse()
        .map_err(|_| format!("`{value}` is not a count"))
}

// ---------------------------------------------------------------------------
// The events and the work done on them

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    View,
    Click,
    Purchase,
}

/// One upstream event: small and `Copy`, so cloning it for a branch is cheap.
#[derive(Clone, Copy, Debug)]
struct Event {
    id: u64,
    timestamp_ms: u64,
    user_id: u32,
    kind: EventKind,
}

impl Event {
    fn new(id: u64) -> Self {
        let kind = match id % 10 {
            0 => EventKind::Purchase,
            1..=3 => EventKind::Click,
            _ => EventKind::View,
        };
        Event {
            id,
            timestamp_ms: 1_700_000_000_000 + id / 8,
            user_id: (id.wrapping_mul(2_654_435_761) % 100_000) as u32,
            kind,
        }
    }
}

/// The upstream: events numbered `0..events`.
fn upstream(events: u64) -> impl Stream<Item = Event> {
    stream::iter(0..events).map(Event::new)
}

/// The two consumers of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Fast,
    Slow,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Fast => "fast",
            Role::Slow => "slow",
        }
    }

    /// The per-event work: `rounds` of a 64-bit mix over the event's fields.
    fn process(self, event: &Event) -> u64 {
        let rounds = match self {
            Role::Fast => FAST_WORK_ROUNDS,
            Role::Slow => SLOW_WORK_ROUNDS,
        };
        let mut hash = event.id
            ^ event.timestamp_ms.rotate_left(17)
            ^ u64::from(event.user_id).rotate_left(42)
            ^ event.kind as u64;
        for _ in 0..black_box(rounds) {
            hash = mix(hash);
        }
        hash
    }
}

/// Times `role`'s work on its own, without a stream around it: the best of
/// a few rounds, so that a busy machine inflates it less.
fn work_per_event(role: Role) -> Duration {
    const ROUNDS: usize = 5;
    const SAMPLE: u32 = 20_000;
    let time_one_round = || {
        let started = Instant::now();
        let checksum = (0..u64::from(SAMPLE))
            .map(|id| role.process(&Event::new(id)))
            .fold(0, u64::wrapping_add);
        black_box(checksum);
        started.elapsed() / SAMPLE
    };
    (0..ROUNDS)
        .map(|_| time_one_round())
        .min()
        .expect("at least one round")
}

/// The SplitMix64 finaliser.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

// ---------------------------------------------------------------------------
// Progress, shared by the consumers and the sampling thread

/// Counters the consumers update and the sampling thread reads.
#[derive(Debug, Default)]
struct Progress {
    /// Events the upstream has yielded (counted by the naive tee only).
    produced: AtomicU64,
    fast_read: AtomicU64,
    slow_read: AtomicU64,
    /// The slow branch's backlog at its latest read, and the highest seen.
    buffered: AtomicUsize,
    peak_buffered: AtomicUsize,
    /// The latest snapshot of the fanout's statistics (`fanout` only).
    stats: Mutex<Option<FanoutStats>>,
}

impl Progress {
    fn read_by(&self, role: Role) -> &AtomicU64 {
        match role {
            Role::Fast => &self.fast_read,
            Role::Slow => &self.slow_read,
        }
    }

    fn record_buffered(&self, buffered: usize) {
        self.buffered.store(buffered, Relaxed);
        if buffered > self.peak_buffered.load(Relaxed) {
            self.peak_buffered.fetch_max(buffered, Relaxed);
        }
    }

    /// Replaces the latest snapshot of the fanout's statistics.
    fn publish_stats(&self, stats: FanoutStats) {
        *self.stats.lock().expect("a stats publisher panicked") = Some(stats);
    }

    fn latest_stats(&self) -> Option<FanoutStats> {
        self.stats
            .lock()
            .expect("a stats publisher panicked")
            .clone()
    }

    /// The slow consumer's backlog in the naive tee: events produced that it
    /// has not read yet, all held in its queue.
    fn naive_backlog(&self) -> usize {
        let backlog = self.produced.load(Relaxed) - self.slow_read.load(Relaxed);
        usize::try_from(backlog).unwrap_or(usize::MAX)
    }
}

/// Prints a progress line every [`PROGRESS_EVERY`] from a thread of its own,
/// so that it keeps its beat however busy the runtime's workers are.
struct ProgressPrinter {
    /// Never sent on: dropping it disconnects the channel, which stops the
    /// thread.
    stop: std_mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl ProgressPrinter {
    fn start(progress: Arc<Progress>, started: Instant, cap: Option<usize>) -> Self {
        let (stop, stopped) = std_mpsc::channel();
        let thread = thread::spawn(move || {
            let mut next_tick = started + PROGRESS_EVERY;
            while let Err(std_mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(next_tick.saturating_duration_since(Instant::now()))
            {
                print_progress(&progress, started.elapsed(), cap);
                next_tick += PROGRESS_EVERY;
            }
        });
        ProgressPrinter { stop, thread }
    }

    fn stop(self) {
        drop(self.stop);
        self.thread.join().expect("the progress thread panicked");
    }
}

fn print_progress(progress: &Progress, elapsed: Duration, cap: Option<usize>) {
    println!(
        "  {:4.1} s  fast {:>10}  slow {:>10}  buffered {:>9} (peak {:>9}, cap {})  RSS {}",
        elapsed.as_secs_f64(),
        group_digits(progress.fast_read.load(Relaxed)),
        group_digits(progress.slow_read.load(Relaxed)),
        group_digits(progress.buffered.load(Relaxed) as u64),
        group_digits(progress.peak_buffered.load(Relaxed) as u64),
        cap_text(cap),
        mib(memory_kib(MemoryField::Current)),
    );
    if let Some(stats) = progress.latest_stats() {
        stats.print_table();
        stats.print_slowest();
    }
}

// ---------------------------------------------------------------------------
// The fanout's statistics

/// The ids of the branches the two consumers read, to tell them apart in a
/// [`Stats`] snapshot.
#[derive(Clone, Copy, Debug)]
struct BranchRoles {
    fast: usize,
    slow: usize,
}

impl BranchRoles {
    fn of<S: Stream>(fast: &Branch<S>, slow: &Branch<S>) -> Self {
        BranchRoles {
            fast: fast.id(),
            slow: slow.id(),
        }
    }

    fn id(self, role: Role) -> usize {
        match role {
            Role::Fast => self.fast,
            Role::Slow => self.slow,
        }
    }

    fn role(self, id: usize) -> Option<Role> {
        [Role::Fast, Role::Slow]
            .into_iter()
            .find(|&role| self.id(role) == id)
    }
}

/// A [`Stats`] snapshot of the fanout, taken from one of its branches, and
/// which branch is which.
#[derive(Clone, Debug)]
struct FanoutStats {
    stats: Stats,
    roles: BranchRoles,
}

impl FanoutStats {
    fn of<S: Stream>(branch: &Branch<S>, roles: BranchRoles) -> Self {
        FanoutStats {
            stats: branch.stats(),
            roles,
        }
    }

    /// How long `role`'s branch has held the upstream back.
    fn held_upstream(&self, role: Role) -> Duration {
        let id = self.roles.id(role);
        self.stats
            .branches
            .iter()
            .find(|branch| branch.id == id)
            .map_or(Duration::ZERO, |branch| branch.stalled_upstream)
    }

    /// `"the slow branch (id 1)"`.
    fn name(&self, branch: &BranchStats) -> String {
        match self.roles.role(branch.id) {
            Some(role) => format!("the {} branch (id {})", role.name(), branch.id),
            None => format!("branch {}", branch.id),
        }
    }

    fn print_table(&self) {
        for line in self.stats.to_string().lines() {
            println!("        {line}");
        }
    }

    /// Names the branch that lags the most: the one that holds the upstream
    /// back whenever the buffer is full.
    fn print_slowest(&self) {
        if let Some(slowest) = self.stats.slowest() {
            println!(
                "        slowest: {}, lag {} of {}; it held the upstream back {:.2} s so far",
                self.name(slowest),
                group_digits(slowest.lag as u64),
                group_digits(self.stats.capacity as u64),
                slowest.stalled_upstream.as_secs_f64(),
            );
        }
    }

    /// How long each branch held the upstream back, in a run of `elapsed`.
    fn print_held_upstream(&self, elapsed: Duration) {
        let shares: Vec<String> = self
            .stats
            .branches
            .iter()
            .map(|branch| {
                format!(
                    "{} {:.2} s ({:.0}%)",
                    self.name(branch),
                    branch.stalled_upstream.as_secs_f64(),
                    100.0 * branch.stalled_upstream.as_secs_f64() / elapsed.as_secs_f64(),
                )
            })
            .collect();
        println!(
            "        held the upstream back, in a {:.2} s run: {}",
            elapsed.as_secs_f64(),
            shares.join(", "),
        );
    }
}

// ---------------------------------------------------------------------------
// The consumers

/// A consumer that has read its whole stream: when it finished, and the
/// stream, still alive, so that a fanout's final statistics still list its
/// branch.
struct Consumed<S> {
    stream: S,
    finished: Instant,
}

/// Reads every event of `events` and does `role`'s work on it, checking
/// that the events come in order with none missing; calls `after_read` with
/// the stream and the number of events read so far after each event.
/// Returns when the stream ended.
async fn consume<S>(
    mut events: S,
    role: Role,
    progress: Arc<Progress>,
    after_read: impl Fn(&S, u64),
) -> Consumed<S>
where
    S: Stream<Item = Event> + Unpin,
{
    let read = progress.read_by(role);
    let mut expected_id = 0;
    let mut checksum = 0_u64;
    while let Some(event) = events.next().await {
        assert_eq!(
            event.id, expected_id,
            "{role:?} consumer: event out of order"
        );
        expected_id += 1;
        checksum = checksum.wrapping_add(role.process(&event));
        read.fetch_add(1, Relaxed);
        after_read(&events, expected_id);
        // Let the scheduler in now and then: this loop is CPU-bound, and
        // neither a branch nor an unbounded receiver takes part in tokio's
        // cooperative budget, so it would otherwise hog its worker thread.
        tokio::task::coop::consume_budget().await;
    }
    black_box(checksum);
    Consumed {
        stream: events,
        finished: Instant::now(),
    }
}

/// Spawns the fast and the slow consumer, each in a task of its own, and
/// returns them when both are done. `observe_slow` is called with the slow
/// consumer's stream and its count of events read, after each read.
async fn run_consumers<F, S>(
    fast: F,
    slow: S,
    progress: &Arc<Progress>,
    observe_slow: impl Fn(&S, u64) + Send + 'static,
) -> (Consumed<F>, Consumed<S>)
where
    F: Stream<Item = Event> + Unpin + Send + 'static,
    S: Stream<Item = Event> + Unpin + Send + 'static,
{
    let fast = tokio::spawn(consume(fast, Role::Fast, Arc::clone(progress), |_, _| {}));
    let slow = tokio::spawn(consume(
        slow,
        Role::Slow,
        Arc::clone(progress),
        observe_slow,
    ));
    (
        fast.await.expect("the fast consumer panicked"),
        slow.await.expect("the slow consumer panicked"),
    )
}

/// When each consumer finished.
struct Finished {
    fast: Instant,
    slow: Instant,
}

impl Finished {
    fn of<F, S>(fast: &Consumed<F>, slow: &Consumed<S>) -> Self {
        Finished {
            fast: fast.finished,
            slow: slow.finished,
        }
    }
}

// ---------------------------------------------------------------------------
// The two scenarios

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Fanout,
    NaiveTee,
}

impl Scenario {
    const ALL: [Scenario; 2] = [Scenario::Fanout, Scenario::NaiveTee];

    fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::NaiveTee => "naive-tee",
        }
    }

    fn from_name(name: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|scenario| scenario.name() == name)
            .ok_or_else(|| format!("unknown scenario `{name}`"))
    }

    /// The bound on buffered events, if any.
    fn cap(self, config: &Config) -> Option<usize> {
        match self {
            Scenario::Fanout => Some(config.cap),
            Scenario::NaiveTee => None,
        }
    }

    async fn run(self, config: Config, progress: &Arc<Progress>) -> Finished {
        match self {
            Scenario::Fanout => through_fanout(config, progress).await,
            Scenario::NaiveTee => through_naive_tee(config, progress).await,
        }
    }
}

/// `fanout`'s tee: the slow branch's lag is the number of buffered events,
/// and the slow consumer publishes a snapshot of the statistics every
/// `STATS_EVERY` events. The final snapshot is taken when both consumers are
/// done but still hold their branches, so that it lists both.
async fn through_fanout(config: Config, progress: &Arc<Progress>) -> Finished {
    let (fast, slow) = upstream(config.events).tee(config.cap);
    let roles = BranchRoles::of(&fast, &slow);
    let recorder = Arc::clone(progress);
    let (fast, slow) = run_consumers(fast, slow, progress, move |slow, read| {
        recorder.record_buffered(slow.lag());
        if read % STATS_EVERY == 0 {
            recorder.publish_stats(FanoutStats::of(slow, roles));
        }
    })
    .await;
    progress.publish_stats(FanoutStats::of(&slow.stream, roles));
    Finished::of(&fast, &slow)
}

/// The naive tee, with a pump task that feeds the unbounded queues.
async fn through_naive_tee(config: Config, progress: &Arc<Progress>) -> Finished {
    let counter = Arc::clone(progress);
    let counted = upstream(config.events).inspect(move |_| {
        counter.produced.fetch_add(1, Relaxed);
    });
    let (pump, fast, slow) = naive_tee(counted);
    let pump = tokio::spawn(pump);
    let recorder = Arc::clone(progress);
    let (fast, slow) = run_consumers(fast, slow, progress, move |_, _| {
        recorder.record_buffered(recorder.naive_backlog());
    })
    .await;
    pump.await.expect("the pump panicked");
    Finished::of(&fast, &slow)
}

/// An unbounded tee as it is often written by hand: a pump that pulls the
/// upstream as fast as it can and pushes a copy of every item into one
/// unbounded queue per consumer. Returns the pump, to be spawned, and the
/// two queues' receiving ends.
fn naive_tee<S>(
    upstream: S,
) -> (
    impl Future<Output = ()>,
    UnboundedReceiver<S::Item>,
    UnboundedReceiver<S::Item>,
)
where
    S: Stream,
    S::Item: Clone,
{
    let (first_tx, first_rx) = mpsc::unbounded();
    let (second_tx, second_rx) = mpsc::unbounded();
    let pump = async move {
        let mut upstream = std::pin::pin!(upstream);
        while let Some(item) = upstream.next().await {
            // A consumer that is gone no longer needs its copies.
            let _ = first_tx.unbounded_send(item.clone());
            let _ = second_tx.unbounded_send(item);
            tokio::task::coop::consume_budget().await;
        }
    };
    (pump, first_rx, second_rx)
}

/// Runs one scenario in this process, printing progress while it runs.
fn run_scenario(scenario: Scenario, config: &Config) -> Outcome {
    let cap = scenario.cap(config);
    println!(
        "[{}] {} events, buffer cap {}",
        scenario.name(),
        group_digits(config.events),
        cap_text(cap),
    );
    let runtime = tokio::runtime::Runtime::new().expect("failed to start the tokio runtime");
    let progress = Arc::new(Progress::default());
    let rss_at_start = memory_kib(MemoryField::Current);

    let started = Instant::now();
    let printer = ProgressPrinter::start(Arc::clone(&progress), started, cap);
    let finished = runtime.block_on(scenario.run(*config, &progress));
    let elapsed = started.elapsed();
    printer.stop();
    for role in [Role::Fast, Role::Slow] {
        let read = progress.read_by(role).load(Relaxed);
        assert_eq!(read, config.events, "the {role:?} consumer missed events");
    }
    let final_stats = progress.latest_stats();
    if let Some(stats) = &final_stats {
        println!("  final statistics of the fanout:");
        stats.print_table();
        stats.print_held_upstream(elapsed);
    }
    let held_upstream = |role| final_stats.as_ref().map(|stats| stats.held_upstream(role));

    Outcome {
        scenario,
        cap,
        events: config.events,
        elapsed,
        fast_done: finished.fast - started,
        slow_done: finished.slow - started,
        peak_buffered: progress.peak_buffered.load(Relaxed),
        fast_held_upstream: held_upstream(Role::Fast),
        slow_held_upstream: held_upstream(Role::Slow),
        rss_at_start,
        peak_rss: memory_kib(MemoryField::Peak),
    }
}

// ---------------------------------------------------------------------------
// Outcomes: measured in a child, handed to the parent, compared

/// What one scenario measured.
#[derive(Debug)]
struct Outcome {
    scenario: Scenario,
    cap: Option<usize>,
    /// Events each branch read: all of them.
    events: u64,
    elapsed: Duration,
    fast_done: Duration,
    slow_done: Duration,
    /// The largest backlog of the slow consumer seen, in events.
    peak_buffered: usize,
    /// How long each branch held the upstream back (`fanout` only).
    fast_held_upstream: Option<Duration>,
    slow_held_upstream: Option<Duration>,
    rss_at_start: Option<u64>,
    peak_rss: Option<u64>,
}

impl Outcome {
    fn throughput(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn summary(&self) -> String {
        format!(
            "  done: {} events to each branch in {:.2} s ({:.2} M events/s); \
             peak buffered {} (cap {}); peak RSS {}",
            group_digits(self.events),
            self.elapsed.as_secs_f64(),
            self.throughput() / 1e6,
            group_digits(self.peak_buffered as u64),
            cap_text(self.cap),
            mib(self.peak_rss),
        )
    }

    /// One line of `key=value` pairs, for the parent process.
    fn encode(&self) -> String {
        let optional = |value: Option<u64>| value.map_or("-".to_string(), |v| v.to_string());
        let nanos = |duration: Option<Duration>| optional(duration.map(|d| d.as_nanos() as u64));
        format!(
            "scenario={} cap={} events={} elapsed_ns={} fast_done_ns={} slow_done_ns={} \
             peak_buffered={} fast_held_ns={} slow_held_ns={} rss_at_start={} peak_rss={}",
            self.scenario.name(),
            optional(self.cap.map(|cap| cap as u64)),
            self.events,
            self.elapsed.as_nanos(),
            self.fast_done.as_nanos(),
            self.slow_done.as_nanos(),
            self.peak_buffered,
            nanos(self.fast_held_upstream),
            nanos(self.slow_held_upstream),
            optional(self.rss_at_start),
            optional(self.peak_rss),
        )
    }

    fn decode(line: &str) -> Result<Self, String> {
        let fields: HashMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .collect();
        let field = |key: &str| {
            fields
                .get(key)
                .copied()
                .ok_or_else(|| format!("outcome without `{key}`"))
        };
        let number = |key: &str| -> Result<u64, String> {
            field(key)?
                .parse()
                .map_err(|_| format!("bad `{key}` in outcome"))
        };
        let optional = |key: &str| -> Result<Option<u64>, String> {
            match field(key)? {
                "-" => Ok(None),
                _ => number(key).map(Some),
            }
        };
        Ok(Outcome {
            scenario: Scenario::from_name(field("scenario")?)?,
            cap: optional("cap")?.map(|cap| cap as usize),
            events: number("events")?,
            elapsed: Duration::from_nanos(number("elapsed_ns")?),
            fast_done: Duration::from_nanos(number("fast_done_ns")?),
            slow_done: Duration::from_nanos(number("slow_done_ns")?),
            peak_buffered: number("peak_buffered")? as usize,
            fast_held_upstream: optional("fast_held_ns")?.map(Duration::from_nanos),
            slow_held_upstream: optional("slow_held_ns")?.map(Duration::from_nanos),
            rss_at_start: optional("rss_at_start")?,
            peak_rss: optional("peak_rss")?,
        })
    }
}

/// Runs each scenario in a child process of its own, so that each has its
/// own peak RSS, then prints them side by side.
fn compare_scenarios(config: &Config) -> ExitCode {
    let fast_work = work_per_event(Role::Fast);
    let slow_work = work_per_event(Role::Slow);
    println!(
        "One upstream of {} events, teed into a fast consumer and a slow one.\n\
         Work per event, measured alone: fast {} ns, slow {} ns (~{}x).\n",
        group_digits(config.events),
        fast_work.as_nanos(),
        group_digits(slow_work.as_nanos() as u64),
        slow_work.as_nanos() / fast_work.as_nanos().max(1),
    );
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for scenario in Scenario::ALL {
        match run_child(scenario, config) {
            Ok(outcome) => outcomes.push(outcome),
            Err(message) => {
                eprintln!("error: scenario {}: {message}", scenario.name());
                return ExitCode::FAILURE;
            }
        }
        println!();
    }
    print_comparison(&outcomes);
    println!(
        "\ntotal wall time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// Runs `scenario` in a child process, echoing its progress lines, and
/// returns the outcome it reports.
fn run_child(scenario: Scenario, config: &Config) -> Result<Outcome, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut child = Command::new(exe)
        .args(["--scenario", scenario.name()])
        .args(["--events", &config.events.to_string()])
        .args(["--cap", &config.cap.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the child process: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut outcome = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("cannot read the child's output: {e}"))?;
        match line.strip_prefix(OUTCOME_MARKER) {
            Some(encoded) => outcome = Some(Outcome::decode(encoded)?),
            None => println!("{line}"),
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the child process failed: {status}"));
    }
    outcome.ok_or_else(|| "the child process reported no outcome".to_string())
}

/// One row of the comparison table: its label, and how to show an outcome in it.
type Row = (&'static str, fn(&Outcome) -> String);

fn print_comparison(outcomes: &[Outcome]) {
    let rows: [Row; 11] = [
        ("events per branch", |o| group_digits(o.events)),
        ("elapsed", |o| format!("{:.2} s", o.elapsed.as_secs_f64())),
        ("throughput", |o| {
            format!("{:.2} M events/s", o.throughput() / 1e6)
        }),
        ("fast branch done at", |o| {
            format!("{:.2} s", o.fast_done.as_secs_f64())
        }),
        ("slow branch done at", |o| {
            format!("{:.2} s", o.slow_done.as_secs_f64())
        }),
        ("buffer cap", |o| cap_text(o.cap)),
        ("peak buffered", |o| group_digits(o.peak_buffered as u64)),
        ("fast held upstream", |o| {
            held_upstream(o.fast_held_upstream)
        }),
        ("slow held upstream", |o| {
            held_upstream(o.slow_held_upstream)
        }),
        ("RSS at start", |o| mib(o.rss_at_start)),
        ("peak RSS (VmHWM)", |o| mib(o.peak_rss)),
    ];
    print!("{:<22}", "");
    for outcome in outcomes {
        print!("{:>20}", outcome.scenario.name());
    }
    println!();
    for (label, cell) in rows {
        print!("{label:<22}");
        for outcome in outcomes {
            print!("{:>20}", cell(outcome));
        }
        println!();
    }
}

// ---------------------------------------------------------------------------
// Memory and formatting

#[derive(Clone, Copy, Debug)]
enum MemoryField {
    /// `VmRSS`: resident memory now.
    Current,
    /// `VmHWM`: the peak resident memory of this process so far.
    Peak,
}

/// Reads a memory figure of this process, in KiB, from `/proc/self/status`.
/// `None` where there is no such file (off Linux).
fn memory_kib(field: MemoryField) -> Option<u64> {
    let key = match field {
        MemoryField::Current => "VmRSS:",
        MemoryField::Peak => "VmHWM:",
    };
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix(key))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// A memory figure in KiB, shown in MiB, or "n/a" when unknown.
fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".to_string(), |kib| {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    })
}

/// How long a branch held the upstream back, or "never" for the naive tee,
/// whose pump nothing holds back.
fn held_upstream(held: Option<Duration>) -> String {
    held.map_or("never".to_string(), |held| {
        format!("{:.2} s", held.as_secs_f64())
    })
}

/// A buffer bound, or "unbounded".
fn cap_text(cap: Option<usize>) -> String {
    cap.map_or("unbounded".to_string(), |cap| group_digits(cap as u64))
}

/// `1234567` as `"1,234,567"`.
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}
