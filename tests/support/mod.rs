//! Instruments shared by the integration tests: items that count their
//! clones and live copies, upstreams that count their polls or flag their
//! drop, a deterministic pseudo-random generator, and small polling helpers.
//! The reference model that every property and model-based test checks the
//! fanout against is [`model`].

#![allow(dead_code)] // each test file uses a part of this module

pub mod model;

use std::any::Any;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use fanout::{Branch, BranchStats, Stats, StreamExt as _};
use futures::executor::block_on;
use futures::future::join_all;
use futures::task::noop_waker_ref;
use futures::{Stream, StreamExt};

/// Counters shared by every [`Tracked`] item made from one [`Tracker`].
#[derive(Debug, Default)]
pub struct Tracker {
    live: AtomicUsize,
    clones: AtomicUsize,
    /// Clones made of each value, if counted ([`Tracker::counting_each`]).
    clones_by_value: Option<Mutex<HashMap<u64, usize>>>,
}

impl Tracker {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A tracker that also counts the clones of each value
    /// ([`clones_of`](Self::clones_of)), at the cost of a lock per clone.
    pub fn counting_each() -> Arc<Self> {
        Arc::new(Self {
            clones_by_value: Some(Mutex::default()),
            ..Self::default()
        })
    }

    /// Clones made so far of the items with value `value`; only counted by
    /// a tracker made with [`counting_each`](Self::counting_each).
    pub fn clones_of(&self, value: u64) -> usize {
        let counts = self
            .clones_by_value
            .as_ref()
            .expect("a tracker made with `counting_each`");
        let counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&value).copied().unwrap_or(0)
    }

    /// Makes an item with value `value`, counted as live until dropped.
    pub fn item(self: &Arc<Self>, value: u64) -> Tracked {
        self.live.fetch_add(1, Ordering::SeqCst);
        Tracked {
            value,
            tracker: Arc::clone(self),
        }
    }

    /// Items (originals and clones) alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Clones made so far.
    pub fn clones(&self) -> usize {
        self.clones.load(Ordering::SeqCst)
    }

    /// A stream of `count` tracked items with values `0..count`.
    pub fn stream(self: &Arc<Self>, count: u64) -> impl Stream<Item = Tracked> + Unpin {
        let tracker = Arc::clone(self);
        futures::stream::iter((0..count).map(move |value| tracker.item(value)))
    }
}

/// An item whose clones and live copies are counted by its [`Tracker`].
#[derive(Debug)]
pub struct Tracked {
    pub value: u64,
    tracker: Arc<Tracker>,
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        self.tracker.clones.fetch_add(1, Ordering::SeqCst);
        if let Some(counts) = &self.tracker.clones_by_value {
            let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            *counts.entry(self.value).or_default() += 1;
        }
        self.tracker.item(self.value)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.tracker.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wraps a stream and counts the calls to its `poll_next`.
#[derive(Debug)]
pub struct CountingPolls<S> {
    inner: S,
    polls: Arc<AtomicUsize>,
    ready_items: Arc<AtomicUsize>,
    ends: Arc<AtomicUsize>,
}

/// Read-side of the counters of a [`CountingPolls`].
#[derive(Debug, Clone)]
pub struct PollCounts {
    polls: Arc<AtomicUsize>,
    ready_items: Arc<AtomicUsize>,
    ends: Arc<AtomicUsize>,
}

impl PollCounts {
    /// Calls to the upstream's `poll_next`.
    pub fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    /// Items the upstream has yielded.
    pub fn yielded(&self) -> usize {
        self.ready_items.load(Ordering::SeqCst)
    }

    /// Calls to the upstream's `poll_next` that returned `None`.
    pub fn ends(&self) -> usize {
        self.ends.load(Ordering::SeqCst)
    }

    /// What the upstream has done, as [`model::Model::observe_upstream`]
    /// takes it: items yielded, and whether it has returned `None`.
    pub fn upstream(&self) -> (u64, bool) {
        (self.yielded() as u64, self.ends() > 0)
    }
}

impl<S> CountingPolls<S> {
    pub fn new(inner: S) -> (Self, PollCounts) {
        let counts = PollCounts {
            polls: Arc::default(),
            ready_items: Arc::default(),
            ends: Arc::default(),
        };
        let stream = Self {
            inner,
            polls: Arc::clone(&counts.polls),
            ready_items: Arc::clone(&counts.ready_items),
            ends: Arc::clone(&counts.ends),
        };
        (stream, counts)
    }
}

impl<S: Stream + Unpin> Stream for CountingPolls<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        match polled {
            Poll::Ready(Some(_)) => self.ready_items.fetch_add(1, Ordering::SeqCst),
            Poll::Ready(None) => self.ends.fetch_add(1, Ordering::SeqCst),
            Poll::Pending => 0,
        };
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// Polls `stream` once with a waker that does nothing.
pub fn poll_once<S: Stream + Unpin>(stream: &mut S) -> Poll<Option<S::Item>> {
    stream.poll_next_unpin(&mut Context::from_waker(noop_waker_ref()))
}

/// Everything `stream` yields until `None`, polling it alone: it must never
/// wait (for an upstream that is always ready, a `Pending` means it waits
/// for another branch), which fails the test instead of hanging it.
pub fn drain_ready<S: Stream + Unpin>(stream: &mut S) -> Vec<S::Item> {
    let mut items = Vec::new();
    loop {
        match poll_once(stream) {
            Poll::Ready(Some(item)) => items.push(item),
            Poll::Ready(None) => return items,
            Poll::Pending => panic!("waited after {} items", items.len()),
        }
    }
}

/// Runs every branch to its end, concurrently on this thread, and returns
/// what each one yielded, in the order of `branches`.
pub fn collect_all<S: Stream>(branches: impl IntoIterator<Item = S>) -> Vec<Vec<S::Item>> {
    block_on(join_all(
        branches
            .into_iter()
            .map(|branch| branch.collect::<Vec<_>>()),
    ))
}

/// The values of tracked items, in order.
pub fn values(items: &[Tracked]) -> Vec<u64> {
    items.iter().map(|item| item.value).collect()
}

/// The message of a caught panic, which must be a string.
pub fn panic_message(payload: Box<dyn Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .expect("a string panic message")
}

/// Wraps a stream and records in a flag when it is dropped; dropping it
/// twice fails the test.
pub struct DropFlag<S> {
    inner: S,
    dropped: Arc<AtomicBool>,
}

impl<S> DropFlag<S> {
    /// Wraps `inner`; the flag is set when the wrapper is dropped.
    pub fn new(inner: S) -> (Self, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        (
            Self {
                inner,
                dropped: Arc::clone(&dropped),
            },
            dropped,
        )
    }
}

impl<S> Drop for DropFlag<S> {
    fn drop(&mut self) {
        assert!(!self.dropped.swap(true, Ordering::SeqCst), "dropped twice");
    }
}

impl<S: Stream + Unpin> Stream for DropFlag<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// xorshift64*: a small deterministic pseudo-random generator, good enough
/// for polling schedules. The same seed gives the same sequence.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Mix the seed so that nearby seeds give unrelated sequences; never 0.
        let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((x ^ (x >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Bookkeeping for a test that polls `n` branches of `len` items by hand
/// until each has returned `None`: what each has read, which have ended,
/// and a guard that fails the test when the polling makes no progress.
#[derive(Debug)]
pub struct Progress {
    /// Items each branch has read; each read the items `0..read[i]`.
    pub read: Vec<u64>,
    /// Which branches have returned `None`.
    pub ended: Vec<bool>,
    len: u64,
    steps: usize,
    max_steps: usize,
}

impl Progress {
    pub fn new(n: usize, len: u64, max_steps: usize) -> Self {
        Self {
            read: vec![0; n],
            ended: vec![false; n],
            len,
            steps: 0,
            max_steps,
        }
    }

    /// Whether some branch has not ended yet. Each call is a step; the test
    /// fails at the `max_steps`th.
    pub fn unfinished(&mut self) -> bool {
        if self.ended.iter().all(|&ended| ended) {
            return false;
        }
        self.steps += 1;
        assert!(
            self.steps < self.max_steps,
            "no progress: read {:?}, ended {:?}",
            self.read,
            self.ended
        );
        true
    }

    /// Records that branch `i` yielded `value`, which must be its next item.
    pub fn item(&mut self, i: usize, value: u64) {
        assert!(!self.ended[i], "branch {i}: an item after None");
        assert_eq!(value, self.read[i], "branch {i} out of order");
        self.read[i] += 1;
    }

    /// Records that branch `i` returned `None`, which it may only after
    /// every item.
    pub fn end(&mut self, i: usize) {
        assert_eq!(self.read[i], self.len, "branch {i} ended early");
        self.ended[i] = true;
    }

    /// Whether some branch has returned `None`.
    pub fn any_ended(&self) -> bool {
        self.ended.iter().any(|&ended| ended)
    }

    /// Items read by the branch that has read the fewest.
    pub fn slowest(&self) -> u64 {
        *self.read.iter().min().unwrap()
    }

    /// Items read by the branch that has read the most.
    pub fn fastest(&self) -> u64 {
        *self.read.iter().max().unwrap()
    }
}

/// How long [`hang_guard`] waits for a test: generous, a guard against a
/// deadlock or a lost wake-up only, never an assertion about speed.
pub const HANG_GUARD: Duration = Duration::from_secs(10);

/// Runs `test` on its own thread and fails if it has not finished within
/// [`HANG_GUARD`] (a deadlock, or a wait that never ends); re-raises its
/// panic if it panics.
pub fn hang_guard(test: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        test();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(HANG_GUARD) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "the test did not finish within {HANG_GUARD:?}: a deadlock or a wake-up that never came"
        ),
    }
}

/// Polls `stream` once with `waker`.
pub fn poll_with<S: Stream + Unpin>(stream: &mut S, waker: &Waker) -> Poll<Option<S::Item>> {
    stream.poll_next_unpin(&mut Context::from_waker(waker))
}

/// A waker that records that it has been woken. It can be used where a
/// `tokio_test` task cannot, from inside another waker or an upstream.
#[derive(Debug, Default)]
pub struct WakeFlag(AtomicBool);

impl WakeFlag {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A waker that sets this flag.
    pub fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(Arc::clone(self))
    }

    /// Whether a waker of this flag has been woken since the last `take`.
    pub fn is_woken(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Whether a waker of this flag has been woken; clears the flag.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A one-off action, run by a [`CallbackWaker`].
pub type Action = Box<dyn FnOnce() + Send>;

/// A waker that runs one action the first time it is woken, and another
/// one when its last clone is dropped. The actions may poll or drop
/// branches: they run the foreign code a fanout must expect from a waker.
pub struct CallbackWaker {
    on_wake: Mutex<Option<Action>>,
    on_drop: Mutex<Option<Action>>,
}

impl CallbackWaker {
    /// A waker that runs `action` when woken, once.
    pub fn on_wake(action: impl FnOnce() + Send + 'static) -> Waker {
        Self::waker(Some(Box::new(action)), None)
    }

    /// A waker that runs `action` when its last clone is dropped.
    pub fn on_drop(action: impl FnOnce() + Send + 'static) -> Waker {
        Self::waker(None, Some(Box::new(action)))
    }

    fn waker(on_wake: Option<Action>, on_drop: Option<Action>) -> Waker {
        Waker::from(Arc::new(Self {
            on_wake: Mutex::new(on_wake),
            on_drop: Mutex::new(on_drop),
        }))
    }
}

impl Wake for CallbackWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Taken out first: the action runs with no lock of the waker held.
        let action = self
            .on_wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(action) = action {
            action();
        }
    }
}

impl Drop for CallbackWaker {
    fn drop(&mut self) {
        let action = self
            .on_drop
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(action) = action {
            action();
        }
    }
}

/// What a [`Hooked`] upstream runs at the start of each `poll_next`. Set
/// after the branches exist, so that it can poll or drop them; a boxed
/// closure breaks the type recursion (the upstream's type is part of the
/// branches' type).
pub type Hook = Arc<Mutex<Option<Box<dyn FnMut() + Send>>>>;

/// Sets the hook of a [`Hooked`] upstream.
pub fn set_hook(hook: &Hook, action: impl FnMut() + Send + 'static) {
    *hook.lock().unwrap() = Some(Box::new(action));
}

/// Removes the hook of a [`Hooked`] upstream, and with it what the hook
/// holds (a hook that holds a branch keeps the fanout alive).
pub fn clear_hook(hook: &Hook) {
    drop(hook.lock().unwrap().take());
}

/// Wraps a stream and runs its hook, if one is set, at the start of every
/// `poll_next`: from inside the upstream's poll, while a branch polls it.
pub struct Hooked<S> {
    inner: S,
    hook: Hook,
}

impl<S> Hooked<S> {
    /// Wraps `inner`, with no hook set yet.
    pub fn new(inner: S) -> (Self, Hook) {
        let hook = Hook::default();
        (
            Self {
                inner,
                hook: Arc::clone(&hook),
            },
            hook,
        )
    }
}

impl<S: Stream + Unpin> Stream for Hooked<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        // Taken out while it runs, so that the hook's mutex is not held.
        let hook = self.hook.lock().unwrap().take();
        if let Some(mut hook) = hook {
            hook();
            let mut slot = self.hook.lock().unwrap();
            if slot.is_none() {
                *slot = Some(hook);
            }
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// The upstream of [`counted`]: `0..len`, counting its polls.
pub type CountedUpstream = CountingPolls<futures::stream::Iter<std::ops::Range<u64>>>;

/// Fans `0..len` out into `n` branches of capacity `cap`, counting polls.
pub fn counted(len: u64, n: usize, cap: usize) -> (Vec<Branch<CountedUpstream>>, PollCounts) {
    let (upstream, counts) = CountingPolls::new(futures::stream::iter(0..len));
    (upstream.fanout(n, cap), counts)
}

/// The entry of branch `id` in `stats`.
pub fn entry(stats: &Stats, id: usize) -> &BranchStats {
    stats
        .branches
        .iter()
        .find(|branch| branch.id == id)
        .unwrap_or_else(|| panic!("no entry for branch {id} in {stats:?}"))
}

/// A branch that a waker's, a hook's or an upstream's action can reach.
pub type Shared<B> = Arc<Mutex<Option<B>>>;

pub fn share<B>(branch: B) -> Shared<B> {
    Arc::new(Mutex::new(Some(branch)))
}

/// Takes the branch out of its slot, which must still hold it.
pub fn take<B>(shared: &Shared<B>) -> B {
    shared
        .lock()
        .unwrap()
        .take()
        .expect("the branch is still there")
}

/// An upstream that yields tracked items `0..items`, then panics with
/// `message` on the next poll. Returns it with its poll counts and a flag set
/// when it is dropped.
pub fn panicking_upstream(
    tracker: &Arc<Tracker>,
    items: u64,
    message: &'static str,
) -> (
    impl Stream<Item = Tracked> + Send + Unpin,
    PollCounts,
    Arc<AtomicBool>,
) {
    let tracker = Arc::clone(tracker);
    let mut next = 0;
    let inner = futures::stream::poll_fn(move |_: &mut Context<'_>| {
        if next == items {
            panic!("{message}");
        }
        next += 1;
        Poll::Ready(Some(tracker.item(next - 1)))
    });
    let (counting, counts) = CountingPolls::new(inner);
    let (upstream, dropped) = DropFlag::new(counting);
    (upstream, counts, dropped)
}

/// How many items the first poll of a fresh fanout of `n` branches of
/// capacity `cap` pulls from an upstream that is always ready. The batch size
/// is the crate's to choose (it is documented only to fit in the free room),
/// so the tests that need a batch of a known size observe it here first: a
/// fresh fanout with the same `n` and `cap` pulls the same batch.
pub fn first_batch(n: usize, cap: usize) -> usize {
    let (upstream, counts) = CountingPolls::new(futures::stream::repeat(7u8));
    let mut branches = upstream.fanout(n, cap);
    assert_eq!(poll_once(&mut branches[0]), Poll::Ready(Some(7)));
    let batch = counts.yielded();
    assert!((1..=cap).contains(&batch), "a batch fits in the free room");
    assert_eq!(counts.polls(), batch, "no poll past a full batch");
    batch
}
