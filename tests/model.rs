//! Model-based property test: random programs run against the crate and
//! against a reference model that is correct by construction.
//!
//! A program picks `n` and `cap`, then a sequence of operations: poll a
//! branch (from its task, or from a new one), drop it, clone it, offer the
//! upstream an item, wake the upstream for nothing, close it. The upstream is
//! scripted: it yields what was offered, returns `Pending` when nothing was,
//! and wakes its waker when something changes, like a channel.
//!
//! The model keeps one position per branch and the count of items pulled from
//! the upstream, and applies the capacity rule directly. After every step the
//! test checks that:
//! - every poll returns what the model returns: the same item, `Pending`, or
//!   the end;
//! - the upstream yielded exactly as many items as the model pulled (so
//!   never more than `cap` past the slowest branch), and is never polled after
//!   its end;
//! - the live items are exactly those still in the upstream plus those
//!   buffered, so the buffer never holds more than `cap`;
//! - a branch that returned `Pending` and was not woken since is one the
//!   model says cannot make progress: no lost wake-ups;
//! - once everything is dropped, no item is alive.

mod support;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use fanout::{Branch, StreamExt as _};
use futures::task::{waker, ArcWake};
use futures::Stream;
use proptest::prelude::*;
use support::{Tracked, Tracker};

/// One step of a program. Branch operands are reduced modulo the number of
/// live branches.
#[derive(Debug, Clone)]
enum Op {
    Poll(usize),
    PollFromNewTask(usize),
    Drop(usize),
    Clone(usize),
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

/// A branch under test, with the task it is polled from.
struct Handle {
    branch: Branch<Upstream>,
    flag: Arc<WokenFlag>,
    /// It returned `Pending` and has not been polled since.
    pending: bool,
}

impl Handle {
    fn new(branch: Branch<Upstream>) -> Self {
        Self {
            branch,
            flag: Arc::default(),
            pending: false,
        }
    }

    fn poll(&mut self) -> Poll<Option<u64>> {
        self.flag.0.store(false, Ordering::SeqCst);
        let waker = waker(Arc::clone(&self.flag));
        let polled = Pin::new(&mut self.branch).poll_next(&mut Context::from_waker(&waker));
        self.pending = polled.is_pending();
        polled.map(|item| item.map(|item| item.value))
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
    /// Some branch saw the end of the upstream.
    ended: bool,
    /// The next position of each live branch, in the order of `handles`.
    positions: Vec<u64>,
}

impl Model {
    fn slowest(&self) -> Option<u64> {
        self.positions.iter().copied().min()
    }

    fn buffered(&self) -> u64 {
        self.slowest().map_or(0, |slowest| self.pulled - slowest)
    }

    fn poll(&mut self, branch: usize) -> Poll<Option<u64>> {
        let position = self.positions[branch];
        if position < self.pulled {
            self.positions[branch] += 1;
            return Poll::Ready(Some(position));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        if self.buffered() >= self.cap {
            return Poll::Pending;
        }
        if self.pulled < self.offered {
            self.pulled += 1;
            self.positions[branch] += 1;
            return Poll::Ready(Some(position));
        }
        if self.closed {
            self.ended = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Whether a poll of `branch` now would return something.
    fn can_progress(&self, branch: usize) -> bool {
        let position = self.positions[branch];
        position < self.pulled
            || self.ended
            || (self.buffered() < self.cap && (self.pulled < self.offered || self.closed))
    }
}

fn run(n: usize, cap: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let tracker = Tracker::new();
    let script = Arc::new(Mutex::new(Script::default()));
    let mut handles: Vec<Handle> = Upstream(Arc::clone(&script))
        .fanout(n, cap)
        .into_iter()
        .map(Handle::new)
        .collect();
    let mut model = Model {
        cap: cap as u64,
        offered: 0,
        pulled: 0,
        closed: false,
        ended: false,
        positions: vec![0; n],
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
                model.positions.remove(i);
            }
            Op::Clone(i) if live > 0 => {
                let i = i % live;
                let fork = Handle::new(handles[i].branch.clone());
                handles.push(fork);
                model.positions.push(model.positions[i]);
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
        cases: if cfg!(debug_assertions) { 1_000 } else { 10_000 },
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
