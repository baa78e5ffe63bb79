//! Model-based property test: random programs run against the crate, and
//! checked against the shared reference model (`support::model`), which
//! states the promises and none of the tuning.
//!
//! A program picks `n`, `cap` and a replay (none, or up to `cap`), and how
//! the fanout is made: `fanout(n, cap)` and a subscriber from its first
//! branch, or `share_replay(cap, replay)` and `n` subscribes. Then a
//! sequence of operations: poll a branch (from its task, or from a new one,
//! or until it waits), drop it, clone it, make it lossy, subscribe a new
//! one, offer the upstream an item (or several), wake the upstream for
//! nothing, close it, take a `stats()` snapshot, or an exact one through
//! every branch. The upstream is scripted: it yields what was offered, returns `Pending` when
//! nothing was, and wakes its waker when something changes, like a channel.
//! The subscriber lives through the program, so every branch may be gone
//! for a while.
//!
//! After every step the test checks, with the model:
//! - every poll: each branch yields every item in order (a lossy one with
//!   every gap reported exactly), `None` only after the upstream's end and
//!   every item, `Pending` only at the end of what was pulled;
//! - the upstream never yielded more than `cap` items past the slowest
//!   lossless branch, and is never polled after its end;
//! - at most `cap` items alive inside the crate (buffered, read ahead, or
//!   being dropped) beside those still in the upstream, but for the clones
//!   of read-ahead that a fork gets (at most a batch per fork, until it has
//!   yielded them), and every item a lossless branch has still to yield
//!   alive;
//! - at most one clone per reader but the last, per item (plus one per fork
//!   or branch turned lossy while it is alive, for the read-ahead they give
//!   back, and one per branch subscribed at or before it); with replay, one
//!   per reader;
//! - a subscribed branch starts at `max(head, pulled - replay)`; with no
//!   branch alive, nothing is polled and only the items kept for replay are
//!   held; the items kept for replay are at most `replay`, and never make a
//!   branch wait for room (a branch parked while the upstream has an item
//!   ready sees none kept, and another branch holding something);
//! - a `stats()` snapshot, taken from a branch that holds nothing ahead so
//!   that it changes nothing: `buffered + read_ahead <= cap`, counters
//!   consistent with the positions, `slowest()` a lossless branch; the
//!   snapshot operation checks one from any branch, and the subscriber's
//!   snapshot, which changes nothing, is checked after every step;
//! - no lost wake-up: every branch that returned `Pending` and was not woken
//!   since is polled again from a new task, and must return `Pending` again
//!   (the re-poll is a real step of the program).
//!
//! Each program runs twice: once ending with everything dropped as it is,
//! once closing the upstream and running every branch to its end, polling
//! only the branches that were woken (a hang fails), with the same checks
//! after every poll. Then, with every branch dropped, only the items kept
//! for replay may be alive; a last branch subscribes, yields them and what
//! comes after (in the second run, the end); and once it and the
//! subscriber are dropped, the upstream and every item are gone.
//!
//! The programs run on one thread, so no poll overlaps another: a branch
//! waiting while another polls the upstream is the loom models' part.

mod support;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use fanout::{StreamExt as _, Subscriber};
use futures::Stream;
use proptest::prelude::*;
use support::model::{synced_stats, Handle, Model, Polled};
use support::{Tracked, Tracker};

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
    Snapshot(usize),
    /// Offers several items at once.
    OfferMany,
    /// Polls a branch until it waits or ends (at most 32 polls), each poll a
    /// step of its own: so that larger buffers fill up too.
    Run(usize),
    /// Subscribes a new branch.
    Subscribe,
    /// Takes a snapshot through every branch, exact for all of them.
    SyncedSnapshot,
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
        1 => (0..8usize).prop_map(Op::Snapshot),
        1 => Just(Op::OfferMany),
        1 => (0..8usize).prop_map(Op::Run),
        2 => Just(Op::Subscribe),
        1 => Just(Op::SyncedSnapshot),
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

/// How a program ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    /// Everything is dropped as it is.
    Drop,
    /// The upstream is closed and every branch runs to its end.
    Drain,
}

/// How the fanout of a program is made.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Made {
    /// `fanout(n, cap)`, and a subscriber from its first branch.
    Fanout,
    /// `share_replay(cap, replay)`, and `n` subscribes.
    Share,
}

/// The checks after every step (see the module docs).
fn check_step(
    model: &mut Model,
    handles: &mut [Handle<Upstream>],
    subscriber: &Subscriber<Upstream>,
    script: &Mutex<Script>,
    tracker: &Tracker,
) -> Result<(), String> {
    let upstream = || {
        let script = script.lock().unwrap();
        (script.yielded, script.ended)
    };
    model.observe_upstream(upstream().0, upstream().1)?;
    model.check_parked(handles, &upstream)?;
    let (polls_after_end, in_upstream) = {
        let script = script.lock().unwrap();
        (script.polls_after_end, script.offered.len())
    };
    if polls_after_end > 0 {
        return Err("the upstream was polled after its end".into());
    }
    model.check_bounds()?;
    model.check_live(tracker.live(), 0, in_upstream)?;
    model.check_clones(|value| tracker.clones_of(value))?;
    if let Some(taker) = model.idle_branch() {
        model.check_stats(taker, &handles[taker].stats())?;
    }
    let stats = subscriber.stats();
    model.check_stats_outside(&stats)?;
    if in_upstream > 0 {
        // The upstream has an item ready: a branch still parked waits for
        // room.
        for i in (0..handles.len()).filter(|&i| handles[i].parked()) {
            model.check_waits_for_room(i, &stats)?;
        }
    }
    Ok(())
}

/// Subscribes a new branch, appended to `handles` and to the model.
fn subscribe(
    model: &mut Model,
    handles: &mut Vec<Handle<Upstream>>,
    subscriber: &Subscriber<Upstream>,
) -> Result<(), String> {
    let before = subscriber.stats();
    let branch = subscriber.subscribe();
    let (id, after) = (branch.id(), branch.stats());
    handles.push(Handle::new(branch));
    model.subscribe(id, &before, &after).map(drop)
}

fn run(
    n: usize,
    cap: usize,
    replay: usize,
    made: Made,
    ops: &[Op],
    ending: Ending,
) -> Result<(), String> {
    let tracker = Tracker::counting_each();
    let script = Arc::new(Mutex::new(Script::default()));
    let upstream = Upstream(Arc::clone(&script));
    let (subscriber, branches) = match made {
        Made::Fanout => {
            let branches = upstream.fanout(n, cap);
            (branches[0].subscriber(), branches)
        }
        Made::Share => {
            let subscriber = upstream.share_replay(cap, replay);
            let branches = (0..n).map(|_| subscriber.subscribe()).collect();
            (subscriber, branches)
        }
    };
    let mut handles: Vec<Handle<Upstream>> = branches.into_iter().map(Handle::new).collect();
    let replay = if made == Made::Share { replay } else { 0 };
    let mut model = Model::new(n, cap).with_replay(replay);
    let upstream = || {
        let script = script.lock().unwrap();
        (script.yielded, script.ended)
    };
    let mut offered = 0;
    let mut closed = false;

    for (step, op) in ops.iter().enumerate() {
        let live = handles.len();
        let done = match *op {
            Op::Poll(i) | Op::PollFromNewTask(i) if live > 0 => {
                let i = i % live;
                if let Op::PollFromNewTask(_) = op {
                    handles[i].new_task();
                }
                model.poll(&mut handles, i, &upstream).map(drop)
            }
            Op::Drop(i) if live > 0 => {
                let i = i % live;
                drop(handles.remove(i));
                model.remove(i);
                Ok(())
            }
            Op::Clone(i) if live > 0 => {
                let i = i % live;
                let fork = handles[i].fork_counting_copies();
                let id = fork.handle.id();
                handles.push(fork.handle);
                model.fork(i, id, fork.start, fork.copied).map(drop)
            }
            Op::MakeLossy(i) if live > 0 => {
                let i = i % live;
                handles[i].make_lossy();
                model.make_lossy(i);
                Ok(())
            }
            Op::Offer | Op::OfferMany if !closed => {
                let count = if let Op::Offer = op { 1 } else { 4 };
                for _ in 0..count {
                    let item = tracker.item(offered);
                    change_script(&script, |script| script.offered.push_back(item));
                    offered += 1;
                }
                Ok(())
            }
            Op::Run(i) if live > 0 => {
                let i = i % live;
                let mut done = Ok(());
                for _ in 0..32 {
                    match model.poll(&mut handles, i, &upstream) {
                        Ok((Polled::Item(_) | Polled::Lagged(_), item)) => {
                            drop(item);
                            if let Err(error) =
                                check_step(&mut model, &mut handles, &subscriber, &script, &tracker)
                            {
                                done = Err(error);
                                break;
                            }
                        }
                        Ok(_) => break,
                        Err(error) => {
                            done = Err(error);
                            break;
                        }
                    }
                }
                done
            }
            Op::Subscribe => subscribe(&mut model, &mut handles, &subscriber),
            Op::SyncedSnapshot if live > 0 => {
                let stats = synced_stats(&handles);
                let in_upstream = script.lock().unwrap().offered.len();
                model.check_synced(&stats, tracker.live() - in_upstream)
            }
            Op::WakeUpstream => {
                change_script(&script, |_| {});
                Ok(())
            }
            Op::Close => {
                change_script(&script, |script| script.closed = true);
                closed = true;
                Ok(())
            }
            Op::Snapshot(i) if live > 0 => {
                let i = i % live;
                let stats = handles[i].stats();
                model.check_stats(i, &stats).and_then(|()| {
                    // Both exact now: the snapshot released its reservation.
                    let lag = handles[i].lag();
                    let entry = stats.branches.iter().find(|b| b.id == handles[i].id());
                    match entry {
                        Some(entry) if entry.lag == lag => Ok(()),
                        _ => Err(format!("lag() {lag} disagrees with {entry:?}")),
                    }
                })
            }
            _ => Ok(()),
        };
        done.and_then(|()| check_step(&mut model, &mut handles, &subscriber, &script, &tracker))
            .map_err(|error| format!("step {step} ({op:?}): {error}"))?;
    }

    let check = |model: &mut Model, handles: &mut [Handle<Upstream>]| {
        check_step(model, handles, &subscriber, &script, &tracker)
    };
    if ending == Ending::Drain {
        change_script(&script, |script| script.closed = true);
        check(&mut model, &mut handles)
            .and_then(|()| model.drain(&mut handles, &upstream, 100_000, check))
            .map_err(|error| format!("draining: {error}"))?;
    }

    // Only the subscriber is left: it holds the upstream, and nothing but
    // the items kept for replay (`check_live`).
    while !handles.is_empty() {
        drop(handles.pop());
        model.remove(handles.len());
    }
    check(&mut model, &mut handles).map_err(|error| format!("every branch dropped: {error}"))?;
    // A last branch yields the replay, and what comes after it.
    subscribe(&mut model, &mut handles, &subscriber)
        .and_then(|()| match ending {
            Ending::Drain => model.drain(&mut handles, &upstream, 100_000, check),
            Ending::Drop => (0..64).try_for_each(|_| {
                model.poll(&mut handles, 0, &upstream)?;
                check(&mut model, &mut handles)
            }),
        })
        .map_err(|error| format!("the last subscribe: {error}"))?;

    drop(handles);
    // (At its end, the upstream is dropped at once.)
    let ended = script.lock().unwrap().ended;
    if !ended && Arc::strong_count(&script) != 2 {
        return Err("the upstream was dropped while the subscriber lived".into());
    }
    drop(subscriber);
    if Arc::strong_count(&script) != 1 {
        return Err("the upstream outlived every branch and subscriber".into());
    }
    drop(script);
    if tracker.live() != 0 {
        return Err(format!(
            "{} items alive after everything is dropped",
            tracker.live()
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(debug_assertions) { 1_000 } else { 50_000 },
        ..ProptestConfig::default()
    })]

    // Small capacities for the edge cases; larger ones too, because a branch
    // reads ahead, and pulls, only a share of the capacity at a time: with a
    // capacity of 4 or less, a share may be a single item.
    #[test]
    fn fanout_keeps_the_models_promises(
        n in 1..=4usize,
        cap in prop_oneof![1..=4usize, 5..=16usize],
        replay in prop_oneof![2 => Just(0usize), 1 => 1..=16usize],
        made in prop_oneof![Just(Made::Fanout), Just(Made::Share)],
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let replay = replay.min(cap);
        for ending in [Ending::Drop, Ending::Drain] {
            run(n, cap, replay, made, &ops, ending)
                .map_err(|error| TestCaseError::fail(format!("{ending:?}: {error}")))?;
        }
    }
}
