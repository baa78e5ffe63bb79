//! Model-based property test: random programs run against the crate and
//! against a reference model that is correct by construction.
//!
//! A program picks `n` and `cap`, then a sequence of operations: poll a
//! branch (from its task, or from a new one), drop it, clone it, make it
//! lossy, offer the upstream an item, wake the upstream for nothing, close
//! it. The upstream is
//! scripted: it yields what was offered, returns `Pending` when nothing was,
//! and wakes its waker when something changes, like a channel.
//!
//! The model keeps one position per branch and the count of items pulled from
//! the upstream, and applies the capacity rule directly: a branch that polls
//! the upstream pulls every offered item the room allows, in one batch. After every step the
//! test checks that:
//! - every poll returns what the model returns: the same item, the same
//!   report of missed items, `Pending`, or the end;
//! - the upstream yielded exactly as many items as the model pulled (so
//!   never more than `cap` past the slowest branch), and is never polled after
//!   its end;
//! - the live items are exactly those still in the upstream plus those
//!   buffered, so the buffer never holds more than `cap`;
//! - a branch that returned `Pending` and was not woken since is one the
//!   model says cannot make progress: no lost wake-ups;
//! - once everything is dropped, no item is alive.
//!
//! The programs run on one thread, so no poll overlaps another: a branch
//! waiting while another polls the upstream is the loom models' part.

mod support;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use fanout::{Branch, Lagged, Lossy, StreamExt as _};
use futures::task::{waker, ArcWake};
use futures::Stream;
use proptest::prelude::*;
use support::{batch_limit, Tracked, Tracker};

/// One step of a program. Branch operands are reduced modulo the number of
/// live branches.
#[derive(Debug, Clone)]
enum Op {
    Poll(usize),
    PollFromNewTask(usize),
    Drop(usize),
    Clone(usize),
    MakeLossy(usize),
    Offer,
    WakeUpstream,
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..8usize).prop_map(Op::Poll),
        1 => (0..8usize).prop_map(Op::PollFromNewTask),
        1 => (0..8usize).prop_map(Op::Drop),
        1 => (0..8usize).prop_map(Op::Clone),
        1 => (0..8usize).prop_map(Op::MakeLossy),
        4 => Just(Op::Offer),
        1 => Just(Op::WakeUpstream),
        1 => Just(Op::Close),
    ]
}

/// The scripted upstream's state, shared with the test.
#[derive(Default)]
struct Script {
    offered: std::collections::VecDeque<Tracked>,
    closed: bool,
    waker: Option<Waker>,
    yielded: u64,
    ended: bool,
    polls_after_end: usize,
}

struct Upstream(Arc<Mutex<Script>>);

impl Stream for Upstream {
    type Item = Tracked;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Tracked>> {
        let mut script = self.0.lock().unwrap();
        if script.ended {
            script.polls_after_end += 1;
        }
        if let Some(item) = script.offered.pop_front() {
            script.yielded += 1;
            Poll::Ready(Some(item))
        } else if script.closed {
            script.ended = true;
            Poll::Ready(None)
        } else {
            script.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Changes the script and wakes the upstream's waker, outside the lock.
fn change_script(script: &Mutex<Script>, change: impl FnOnce(&mut Script)) {
    let waker = {
        let mut script = script.lock().unwrap();
        change(&mut script);
        script.waker.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// A waker that records that it was woken.
#[derive(Default)]
struct WokenFlag(AtomicBool);

impl ArcWake for WokenFlag {
    fn wake_by_ref(flag: &Arc<Self>) {
        flag.0.store(true, Ordering::SeqCst);
    }
}

/// What a poll yields, as the model sees it.
#[derive(Debug, PartialEq)]
enum Yield {
    Item(u64),
    Missed(u64),
}

/// A branch under test, of either kind.
enum Kind {
    Backpressure(Branch<Upstream>),
    Lossy(Lossy<Upstream>),
}

/// A branch under test, with the task it is polled from.
struct Handle {
    branch: Option<Kind>,
    flag: Arc<WokenFlag>,
    /// It returned `Pending` and has not been polled since.
    pending: bool,
}

impl Handle {
    fn new(branch: Kind) -> Self {
        Self {
            branch: Some(branch),
            flag: Arc::default(),
            pending: false,
        }
    }

    fn poll(&mut self) -> Poll<Option<Yield>> {
        self.flag.0.store(false, Ordering::SeqCst);
        let waker = waker(Arc::clone(&self.flag));
        let mut cx = Context::from_waker(&waker);
        let polled = match self.branch.as_mut().expect("a live handle") {
            Kind::Backpressure(branch) => Pin::new(branch)
                .poll_next(&mut cx)
                .map(|item| item.map(|item| Yield::Item(item.value))),
            Kind::Lossy(branch) => Pin::new(branch).poll_next(&mut cx).map(|item| {
                item.map(|item| match item {
                    Ok(item) => Yield::Item(item.value),
                    Err(Lagged(missed)) => Yield::Missed(missed),
                })
            }),
        };
        self.pending = polled.is_pending();
        polled
    }

    fn fork(&self) -> Self {
        Self::new(match self.branch.as_ref().expect("a live handle") {
            Kind::Backpressure(branch) => Kind::Backpressure(branch.clone()),
            Kind::Lossy(branch) => Kind::Lossy(branch.clone()),
        })
    }

    /// Makes the branch lossy; the task it is polled from stays the same.
    fn make_lossy(&mut self) {
        self.branch = self.branch.take().map(|branch| match branch {
            Kind::Backpressure(branch) => Kind::Lossy(branch.into_lossy()),
            lossy => lossy,
        });
    }

    /// Whether it waits for a wake-up that has not come.
    fn parked(&self) -> bool {
        self.pending && !self.flag.0.load(Ordering::SeqCst)
    }
}

/// The reference: positions and the capacity rule, nothing else.
struct Model {
    cap: u64,
    /// Items offered to the upstream so far.
    offered: u64,
    /// Items the fanout took from the upstream.
    pulled: u64,
    closed: bool,
    /// The upstream returned `None`.
    ended: bool,
    /// Each live branch, in the order of `handles`.
    branches: Vec<ModelBranch>,
}

#[derive(Clone, Copy)]
struct ModelBranch {
    /// The position of the next item it yields.
    position: u64,
    lossy: bool,
    /// Items given up since it last reported them.
    unreported: u64,
}

impl Model {
    fn slowest(&self) -> Option<u64> {
        self.branches.iter().map(|branch| branch.position).min()
    }

    fn buffered(&self) -> u64 {
        self.slowest().map_or(0, |slowest| self.pulled - slowest)
    }

    /// Whether the upstream may be polled now: there is room, or the oldest
    /// item is held by lossy branches only, which would give it up.
    fn room_or_evictable(&self) -> bool {
        let slowest = self.slowest();
        self.buffered() < self.cap
            || self
                .branches
                .iter()
                .filter(|branch| Some(branch.position) == slowest)
                .all(|branch| branch.lossy)
    }

    fn poll(&mut self, index: usize) -> Poll<Option<Yield>> {
        let branch = self.branches[index];
        if branch.unreported > 0 {
            self.branches[index].unreported = 0;
            return Poll::Ready(Some(Yield::Missed(branch.unreported)));
        }
        if branch.position < self.pulled {
            self.branches[index].position += 1;
            return Poll::Ready(Some(Yield::Item(branch.position)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        if !self.room_or_evictable() {
            return Poll::Pending;
        }
        if self.buffered() >= self.cap {
            let slowest = self.slowest();
            for branch in &mut self.branches {
                if Some(branch.position) == slowest {
                    branch.position += 1;
                    branch.unreported += 1;
                }
            }
        }
        if self.pulled < self.offered {
            // One poll pulls a batch: as many offered items as the room
            // allows. If fewer were offered, the upstream is polled once
            // more in the same batch, and ends there if it is closed. A lone
            // branch with nothing buffered takes one item straight from the
            // upstream instead.
            let limit = batch_limit(
                self.branches.len(),
                self.cap as usize,
                self.buffered() as usize,
            ) as u64;
            let batch = limit.min(self.offered - self.pulled);
            if batch < limit && self.closed {
                self.ended = true;
            }
            self.pulled += batch;
            self.branches[index].position += 1;
            return Poll::Ready(Some(Yield::Item(branch.position)));
        }
        if self.closed {
            self.ended = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Whether a poll of `branch` now would return something.
    fn can_progress(&self, index: usize) -> bool {
        let branch = self.branches[index];
        branch.unreported > 0
            || branch.position < self.pulled
            || self.ended
            || (self.room_or_evictable() && (self.pulled < self.offered || self.closed))
    }
}

fn run(n: usize, cap: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let tracker = Tracker::new();
    let script = Arc::new(Mutex::new(Script::default()));
    let mut handles: Vec<Handle> = Upstream(Arc::clone(&script))
        .fanout(n, cap)
        .into_iter()
        .map(|branch| Handle::new(Kind::Backpressure(branch)))
        .collect();
    let mut model = Model {
        cap: cap as u64,
        offered: 0,
        pulled: 0,
        closed: false,
        ended: false,
        branches: vec![
            ModelBranch {
                position: 0,
                lossy: false,
                unreported: 0,
            };
            n
        ],
    };

    for (step, op) in ops.iter().enumerate() {
        let live = handles.len();
        match *op {
            Op::Poll(i) | Op::PollFromNewTask(i) if live > 0 => {
                let i = i % live;
                if let Op::PollFromNewTask(_) = op {
                    handles[i].flag = Arc::default();
                }
                let expected = model.poll(i);
                let polled = handles[i].poll();
                prop_assert_eq!(polled, expected, "step {}: {:?}", step, op);
            }
            Op::Drop(i) if live > 0 => {
                let i = i % live;
                drop(handles.remove(i));
                model.branches.remove(i);
            }
            Op::Clone(i) if live > 0 => {
                let i = i % live;
                let fork = handles[i].fork();
                handles.push(fork);
                model.branches.push(ModelBranch {
                    unreported: 0,
                    ..model.branches[i]
                });
            }
            Op::MakeLossy(i) if live > 0 => {
                let i = i % live;
                handles[i].make_lossy();
                model.branches[i].lossy = true;
            }
            Op::Offer if !model.closed => {
                let item = tracker.item(model.offered);
                change_script(&script, |script| script.offered.push_back(item));
                model.offered += 1;
            }
            Op::WakeUpstream => change_script(&script, |_| {}),
            Op::Close => {
                change_script(&script, |script| script.closed = true);
                model.closed = true;
            }
            _ => {}
        }

        let (yielded, polls_after_end) = {
            let script = script.lock().unwrap();
            (script.yielded, script.polls_after_end)
        };
        prop_assert_eq!(yielded, model.pulled, "step {}: items pulled", step);
        prop_assert_eq!(polls_after_end, 0, "step {}: polled after the end", step);
        prop_assert!(model.buffered() <= model.cap);
        let expected_live = (model.offered - model.pulled) + model.buffered();
        prop_assert_eq!(
            tracker.live() as u64,
            expected_live,
            "step {}: live items (upstream + buffer)",
            step
        );
        for (i, handle) in handles.iter().enumerate() {
            prop_assert!(
                !(handle.parked() && model.can_progress(i)),
                "step {}: branch {} can make progress but was not woken",
                step,
                i
            );
        }
    }

    drop(handles);
    drop(script);
    prop_assert_eq!(tracker.live(), 0, "items alive after everything is dropped");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(debug_assertions) { 1_000 } else { 50_000 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn fanout_behaves_like_the_model(
        n in 1..=4usize,
        cap in 1..=4usize,
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        run(n, cap, &ops)?;
    }
}
