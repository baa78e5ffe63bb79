//! Randomized schedules, deterministic per seed.
//!
//! A single-threaded scheduler polls only the branches whose waker has been
//! woken, and at random also wakes the upstream, drops branches and clones
//! them, and polls branches with a new waker (a new "task"). If at some point
//! no branch is woken, the upstream has nothing left to wake it, and some live
//! branch has not ended, a wake-up was lost: the test fails with the seed and
//! the last steps.
//!
//! Along the way it checks that every branch yields every item in order then
//! `None`, that no branch runs more than `cap` items ahead of the slowest,
//! that the upstream is never polled past `cap` items ahead of the slowest
//! branch, nor after it ended, and that no item leaks.

mod support;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use fanout::{Branch, StreamExt as _};
use futures::channel::mpsc;
use futures::Stream;

use support::{Rng, Tracked, Tracker};

const SEEDS: u64 = 500;
/// A run that takes more steps than this is spinning.
const MAX_STEPS: usize = 100_000;

/// A waker that raises a flag.
#[derive(Debug, Default)]
struct Flag(AtomicBool);

impl Flag {
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn wake_by_ref_flag(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The scheduler's view of the upstream: what it may do to make it progress.
trait Environment {
    /// Does something the upstream was waiting for (fires a stored waker,
    /// sends an item, closes a channel). Returns false if there is nothing
    /// left to do: no event will ever wake the upstream again.
    fn act(&mut self, rng: &mut Rng) -> bool;
    /// Whether [`act`](Environment::act) has anything left to do.
    fn can_act(&self) -> bool;
    /// The items the upstream has handed to the fanout so far.
    fn pulled(&self) -> u64;
    /// The items alive outside the fanout (queued in a channel).
    fn outside(&self) -> usize {
        0
    }
}

// ---------------------------------------------------------------------------
// A scripted upstream: random `Ready`, `Pending` with a stored waker, or a
// cooperative yield (wakes its waker and returns `Pending`).
// ---------------------------------------------------------------------------

struct ScriptState {
    tracker: Arc<Tracker>,
    rng: Rng,
    next: u64,
    total: u64,
    ended: bool,
    /// The waker of the latest `Pending`, for the environment to fire.
    stored: Option<Waker>,
}

struct Scripted(Arc<Mutex<ScriptState>>);

impl Stream for Scripted {
    type Item = Tracked;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Tracked>> {
        let mut state = self.0.lock().unwrap();
        assert!(
            !state.ended,
            "the upstream was polled after it returned None"
        );
        match state.rng.next() % 10 {
            0..=4 => {
                if state.next == state.total {
                    state.ended = true;
                    Poll::Ready(None)
                } else {
                    state.next += 1;
                    Poll::Ready(Some(state.tracker.item(state.next - 1)))
                }
            }
            5..=7 => {
                state.stored = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => {
                drop(state);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

struct ScriptEnv(Arc<Mutex<ScriptState>>);

impl Environment for ScriptEnv {
    fn act(&mut self, _: &mut Rng) -> bool {
        let stored = self.0.lock().unwrap().stored.take();
        match stored {
            Some(waker) => {
                waker.wake();
                true
            }
            None => false,
        }
    }

    fn can_act(&self) -> bool {
        self.0.lock().unwrap().stored.is_some()
    }

    fn pulled(&self) -> u64 {
        self.0.lock().unwrap().next
    }
}

// ---------------------------------------------------------------------------
// A channel upstream: the environment sends the items, then closes.
// ---------------------------------------------------------------------------

struct ChannelEnv {
    tracker: Arc<Tracker>,
    sender: Option<mpsc::UnboundedSender<Tracked>>,
    sent: u64,
    total: u64,
    /// Items the fanout took from the channel.
    taken: Arc<Mutex<u64>>,
}

/// The receiving end, counting what it hands out.
struct Counted {
    receiver: mpsc::UnboundedReceiver<Tracked>,
    taken: Arc<Mutex<u64>>,
}

impl Stream for Counted {
    type Item = Tracked;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Tracked>> {
        let polled = Pin::new(&mut self.receiver).poll_next(cx);
        if let Poll::Ready(Some(_)) = polled {
            *self.taken.lock().unwrap() += 1;
        }
        polled
    }
}

impl Environment for ChannelEnv {
    fn act(&mut self, rng: &mut Rng) -> bool {
        let Some(sender) = &self.sender else {
            return false;
        };
        if self.sent == self.total {
            self.sender = None;
            return true;
        }
        // Send a small burst.
        let burst = 1 + rng.below(3) as u64;
        for _ in 0..burst.min(self.total - self.sent) {
            sender.unbounded_send(self.tracker.item(self.sent)).unwrap();
            self.sent += 1;
        }
        true
    }

    fn can_act(&self) -> bool {
        self.sender.is_some()
    }

    fn pulled(&self) -> u64 {
        *self.taken.lock().unwrap()
    }

    fn outside(&self) -> usize {
        (self.sent - self.pulled()) as usize
    }
}

// ---------------------------------------------------------------------------
// The scheduler.
// ---------------------------------------------------------------------------

struct Consumer<S: Stream> {
    name: usize,
    branch: Branch<S>,
    /// The waker of the branch's latest poll.
    flag: Arc<Flag>,
    received: Vec<u64>,
    done: bool,
}

/// What happened in runs, to make sure the random schedules exercise
/// something.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    pendings: usize,
    new_tasks: usize,
    clones: usize,
    drops: usize,
    env_acts: usize,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Self) {
        self.pendings += other.pendings;
        self.new_tasks += other.new_tasks;
        self.clones += other.clones;
        self.drops += other.drops;
        self.env_acts += other.env_acts;
    }
}

struct Run<S: Stream, E> {
    seed: u64,
    n: usize,
    cap: usize,
    total: u64,
    rng: Rng,
    env: E,
    consumers: Vec<Consumer<S>>,
    next_name: usize,
    trace: VecDeque<String>,
    stats: Stats,
}

impl<S, E> Run<S, E>
where
    S: Stream<Item = Tracked>,
    E: Environment,
{
    fn new(seed: u64, n: usize, cap: usize, total: u64, rng: Rng, env: E, upstream: S) -> Self {
        let consumers = upstream
            .fanout(n, cap)
            .into_iter()
            .enumerate()
            .map(|(name, branch)| Consumer {
                name,
                branch,
                // Never polled: it needs a first poll, as if woken.
                flag: Arc::new(Flag(AtomicBool::new(true))),
                received: Vec::new(),
                done: false,
            })
            .collect();
        Self {
            seed,
            n,
            cap,
            total,
            rng,
            env,
            consumers,
            next_name: n,
            trace: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    fn note(&mut self, step: String) {
        if self.trace.len() == 40 {
            self.trace.pop_front();
        }
        self.trace.push_back(step);
    }

    fn fail(&self, why: &str) -> ! {
        let mut report = format!(
            "seed {}, n = {}, cap = {}, items = {}: {why}\nbranches:",
            self.seed, self.n, self.cap, self.total
        );
        for c in &self.consumers {
            let _ = write!(
                report,
                "\n  #{}: received {}, done {}, woken {}, lag {}",
                c.name,
                c.received.len(),
                c.done,
                c.flag.is_set(),
                c.branch.lag()
            );
        }
        report.push_str("\nlast steps:");
        for step in &self.trace {
            let _ = write!(report, "\n  {step}");
        }
        panic!("{report}");
    }

    fn poll_one(&mut self, index: usize, new_task: bool) {
        if new_task || self.rng.percent(10) {
            // Poll from another task: only the new waker counts from now on.
            self.consumers[index].flag = Arc::default();
            self.stats.new_tasks += 1;
        }
        let consumer = &mut self.consumers[index];
        consumer.flag.take();
        let waker = Waker::from(Arc::clone(&consumer.flag));
        let polled = Pin::new(&mut consumer.branch)
            .poll_next(&mut Context::from_waker(&waker))
            .map(|item| item.map(|item| item.value));
        let name = consumer.name;
        let got = consumer.received.len() as u64;
        match polled {
            Poll::Pending => {
                self.stats.pendings += 1;
                self.note(format!("poll #{name}: Pending"));
            }
            Poll::Ready(Some(value)) => {
                if value != got {
                    self.fail(&format!("#{name} got item {value}, expected {got}"));
                }
                let consumer = &mut self.consumers[index];
                consumer.received.push(value);
                // A consumer that got an item comes back for the next one
                // (it is runnable, as if woken).
                consumer.flag.wake_by_ref_flag();
                self.note(format!("poll #{name}: item {value}"));
            }
            Poll::Ready(None) => {
                if got != self.total {
                    self.fail(&format!("#{name} ended after {got} items"));
                }
                self.consumers[index].done = true;
                self.note(format!("poll #{name}: None"));
            }
        }
    }

    fn drop_one(&mut self) {
        let index = self.rng.below(self.consumers.len());
        let consumer = self.consumers.swap_remove(index);
        self.stats.drops += 1;
        self.note(format!(
            "drop #{} at {}",
            consumer.name,
            consumer.received.len()
        ));
    }

    fn clone_one(&mut self) {
        let index = self.rng.below(self.consumers.len());
        let original = &self.consumers[index];
        let clone = Consumer {
            name: self.next_name,
            branch: original.branch.clone(),
            flag: Arc::new(Flag(AtomicBool::new(true))),
            received: original.received.clone(),
            done: original.done,
        };
        self.next_name += 1;
        self.stats.clones += 1;
        self.note(format!(
            "clone #{} at {} as #{}",
            original.name,
            original.received.len(),
            clone.name
        ));
        self.consumers.push(clone);
    }

    fn check_bounds(&self, tracker: &Tracker) {
        if tracker.live() > self.cap + self.env.outside() {
            self.fail(&format!("{} items alive, more than cap", tracker.live()));
        }
        let Some(slowest) = self.consumers.iter().map(|c| c.received.len() as u64).min() else {
            return;
        };
        let fastest = self
            .consumers
            .iter()
            .map(|c| c.received.len() as u64)
            .max()
            .unwrap();
        if fastest - slowest > self.cap as u64 {
            self.fail("a branch ran more than cap items ahead of the slowest");
        }
        if self.env.pulled() - slowest > self.cap as u64 {
            self.fail("the upstream was polled more than cap items past the slowest branch");
        }
        for c in &self.consumers {
            if c.branch.lag() > self.cap {
                self.fail(&format!("#{} lags more than cap", c.name));
            }
        }
    }

    fn run(mut self, tracker: &Tracker) -> Stats {
        let mut drops_left = 2;
        let mut clones_left = 4;
        for _ in 0..MAX_STEPS {
            let woken: Vec<usize> = (0..self.consumers.len())
                .filter(|&i| !self.consumers[i].done && self.consumers[i].flag.is_set())
                .collect();
            if self.consumers.iter().all(|c| c.done) {
                // Every live branch has ended: check and release.
                for c in &self.consumers {
                    assert_eq!(c.received, (0..self.total).collect::<Vec<_>>());
                }
                if tracker.live() != 0 {
                    self.fail(&format!(
                        "{} items alive after every branch ended",
                        tracker.live()
                    ));
                }
                let stats = self.stats;
                drop(self);
                assert_eq!(tracker.live(), 0);
                return stats;
            }
            if woken.is_empty() && !self.env.can_act() {
                self.fail("lost wake-up: no branch is woken, nothing can wake the upstream, and some branch has not ended");
            }

            let roll = self.rng.below(100);
            if woken.is_empty() || (roll < 12 && self.env.can_act()) {
                self.env.act(&mut self.rng);
                self.stats.env_acts += 1;
                self.note("environment acts".to_owned());
            } else if roll < 15 && drops_left > 0 && self.consumers.len() > 1 {
                drops_left -= 1;
                self.drop_one();
            } else if roll < 18 && clones_left > 0 {
                clones_left -= 1;
                self.clone_one();
            } else if roll < 22 {
                // The branch moves to another task, which polls it whether
                // it was woken or not; only that task's waker counts then.
                let pending: Vec<usize> = (0..self.consumers.len())
                    .filter(|&i| !self.consumers[i].done)
                    .collect();
                let index = pending[self.rng.below(pending.len())];
                self.note(format!(
                    "#{} moves to a new task",
                    self.consumers[index].name
                ));
                self.poll_one(index, true);
            } else {
                let index = woken[self.rng.below(woken.len())];
                self.poll_one(index, false);
            }
            self.check_bounds(tracker);
        }
        self.fail("no end after MAX_STEPS steps: the branches spin");
    }
}

/// The `n` and `cap` of a seed: every combination of 1..=4 and 1..=4 in turn.
fn shape(seed: u64) -> (usize, usize) {
    (1 + (seed % 4) as usize, 1 + (seed / 4 % 4) as usize)
}

#[test]
fn random_schedules_with_a_scripted_upstream_lose_no_wake_up() {
    let mut stats = Stats::default();
    for seed in 0..SEEDS {
        let (n, cap) = shape(seed);
        let mut rng = Rng::new(seed);
        let total = 5 + rng.below(60) as u64;
        let tracker = Tracker::new();
        let state = Arc::new(Mutex::new(ScriptState {
            tracker: Arc::clone(&tracker),
            rng: Rng::new(seed ^ 0xA5A5_A5A5),
            next: 0,
            total,
            ended: false,
            stored: None,
        }));
        let env = ScriptEnv(Arc::clone(&state));
        stats += Run::new(seed, n, cap, total, rng, env, Scripted(state)).run(&tracker);
        assert_eq!(tracker.live(), 0, "seed {seed}");
    }
    assert_exercised(stats);
}

#[test]
fn random_schedules_with_a_channel_upstream_lose_no_wake_up() {
    let mut stats = Stats::default();
    for seed in 0..SEEDS {
        let (n, cap) = shape(seed);
        let mut rng = Rng::new(seed.wrapping_add(1_000_003));
        let total = 5 + rng.below(60) as u64;
        let tracker = Tracker::new();
        let (sender, receiver) = mpsc::unbounded();
        let taken = Arc::new(Mutex::new(0));
        let env = ChannelEnv {
            tracker: Arc::clone(&tracker),
            sender: Some(sender),
            sent: 0,
            total,
            taken: Arc::clone(&taken),
        };
        let upstream = Counted { receiver, taken };
        stats += Run::new(seed, n, cap, total, rng, env, upstream).run(&tracker);
        assert_eq!(tracker.live(), 0, "seed {seed}");
    }
    assert_exercised(stats);
}

fn assert_exercised(stats: Stats) {
    let runs = SEEDS as usize;
    assert!(stats.pendings > 10 * runs, "{stats:?}");
    assert!(stats.new_tasks > runs, "{stats:?}");
    assert!(stats.clones > runs, "{stats:?}");
    assert!(stats.drops > runs / 2, "{stats:?}");
    assert!(stats.env_acts > runs, "{stats:?}");
}

/// The scheduler itself must be able to fail: a stream that drops its waker
/// on `Pending` (a broken upstream) is reported as a lost wake-up, not
/// waited on forever. This keeps the lost-wake-up check honest.
#[test]
#[should_panic(expected = "lost wake-up")]
fn the_scheduler_detects_a_lost_wake_up() {
    struct Forgetful;
    impl Stream for Forgetful {
        type Item = Tracked;
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Tracked>> {
            Poll::Pending
        }
    }
    struct Idle;
    impl Environment for Idle {
        fn act(&mut self, _: &mut Rng) -> bool {
            false
        }
        fn can_act(&self) -> bool {
            false
        }
        fn pulled(&self) -> u64 {
            0
        }
    }
    let tracker = Tracker::new();
    let _ = Run::new(0, 2, 2, 3, Rng::new(0), Idle, Forgetful).run(&tracker);
}
