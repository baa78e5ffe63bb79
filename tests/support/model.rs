//! The reference model of a fanout, shared by every property and model-based
//! test: what the crate promises, checked against what a test observes.
//!
//! The model knows none of the tuning: not the batch sizes, not the moment a
//! branch polls the upstream, not how much a branch reads ahead. It tracks
//! what it can see from outside:
//! - what each branch has yielded (its position: the next item it must
//!   yield), where it started, whether it is lossy, whether it has ended and
//!   whether its latest poll returned `Pending`;
//! - what the upstream has yielded, and whether it has ended;
//! - how many of the latest items the fanout keeps for replay
//!   ([`Model::with_replay`]), and where a branch that subscribes starts
//!   ([`Model::subscribe`]): at `max(head, pulled - replay)`, `head` being
//!   the oldest item still buffered, as a snapshot taken just before says;
//!
//! and checks, whenever the test tells it something, the promises:
//! - each branch yields every item in order; a lossy one in order with the
//!   gaps reported exactly by `Err(Lagged(k))` ([`Model::polled`]);
//! - with exact snapshots around a poll ([`Model::poll_synced`]): the poll
//!   returns what the snapshot before decides (the `Lagged(k)` of exactly the
//!   items given up and not reported yet, the next item held for it, the
//!   end), pulls only at the end of the buffer and only what fits in the free
//!   room, and only the lossy branches at the oldest position give an item
//!   up, all of them, one each; a branch waits or evicts only at a full
//!   buffer ([`Model::check_poll_between`]);
//! - `None` only once the upstream has ended and the branch has yielded
//!   everything; `Pending` only at the end of what was pulled, before the end;
//! - the upstream never yields more than `cap` items past the slowest
//!   lossless branch's position ([`Model::check_bounds`]), so no branch is
//!   more than `cap` ahead of it;
//! - at most `cap` items alive inside the crate, and every item a lossless
//!   branch still has to yield alive ([`Model::check_live`]); the one
//!   exception, documented on the crate: a fork gets a clone of its
//!   original's read-ahead (at most one batch, a quarter of `cap`), which may
//!   pass the capacity until the fork has yielded those clones, or until the
//!   upstream is polled again (it is polled only with free room); without
//!   forks, the bound is strict;
//! - at most one clone per reader but the last, per item, a fork made while
//!   the item is alive, or a branch that subscribes at or before it,
//!   counting as one more reader; with replay, one per reader, since the
//!   last reader of an item in the replay window clones it too
//!   ([`Model::check_clones`]);
//! - with subscribers but no branch, nothing is polled, and nothing is held
//!   but the items kept for replay ([`Model::observe_upstream`],
//!   [`Model::check_live`]);
//! - the items kept for replay: at most `replay`, all of the buffer once
//!   every branch has yielded everything, and exactly the items before
//!   every branch in an exact snapshot with nothing read ahead
//!   ([`Model::check_stats`], [`Model::check_synced`]); the latest `replay`
//!   items pulled all held, but for those a poll at the end of the buffer
//!   evicted ([`Model::check_stats_outside`]); they never make a branch
//!   wait for room ([`Model::check_waits_for_room`]);
//! - `stats()`: `buffered + read_ahead <= cap` (but for the same exception),
//!   the counters consistent with the positions, exact for the branch that
//!   takes the snapshot, and `slowest()` a lossless branch whenever there is
//!   one, the high-water mark never going down ([`Model::check_stats`]); a
//!   snapshot that every branch has visited ([`synced_stats`]) exact for
//!   every branch, counting each item inside the crate once
//!   ([`Model::check_synced`]);
//! - no lost wake-up: a branch whose latest poll returned `Pending` and that
//!   has not been woken since cannot make progress: polled again, from a new
//!   task, it returns `Pending` too ([`Model::check_parked`]). That re-poll is
//!   a real step: the branch is then polled from the new task, and the model
//!   records what it returned.
//!
//! Items are numbered by the upstream: the item at position `p` has value
//! `p` ([`Value`]).
//!
//! The model indexes branches like the test's list of [`Handle`]s: keep the
//! two in step ([`Model::fork`] and [`Model::subscribe`] append,
//! [`Model::remove`] removes at an index, like `Vec::push` and
//! `Vec::remove`).

use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use fanout::{Branch, Lagged, Lossy, Stats};
use futures::stream::FusedStream;
use futures::Stream;

use super::{entry, Tracked, WakeFlag};

/// An item whose value is its position in the upstream.
pub trait Value {
    fn value(&self) -> u64;
}

impl Value for u64 {
    fn value(&self) -> u64 {
        *self
    }
}

impl Value for Tracked {
    fn value(&self) -> u64 {
        self.value
    }
}

/// What one poll of a branch returned, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    Item(u64),
    Lagged(u64),
    End,
    Pending,
}

/// What the model knows of one branch.
#[derive(Debug, Clone)]
pub struct ModelBranch {
    pub id: usize,
    pub lossy: bool,
    /// The position of the next item it yields: exact for a lossless
    /// branch; for a lossy one, exact unless it has given up items it has
    /// not reported yet.
    pub next: u64,
    /// Where its entry in the snapshots starts: 0, where it subscribed, or
    /// where it was forked (past the clones of read-ahead a fork gets, see
    /// [`Model::fork`]).
    pub start: u64,
    /// Items it has yielded since it was created.
    pub received: u64,
    /// Items it has reported missed.
    pub missed: u64,
    /// It has returned `None`.
    pub ended: bool,
    /// Its latest poll returned `Pending`.
    pub pending: bool,
    /// For a fork: how many clones of its original's read-ahead it got
    /// (see [`Model::fork`]).
    pub copied: u64,
    /// How many of those it has not yielded yet: they are its next items.
    pub copies_left: u64,
    /// How many of those may still pass the capacity: those not yielded
    /// yet, none once the upstream has been polled since the fork.
    pub over: u64,
}

impl ModelBranch {
    fn new(id: usize, start: u64, lossy: bool, ended: bool) -> Self {
        Self {
            id,
            lossy,
            next: start,
            start,
            received: 0,
            missed: 0,
            ended,
            pending: false,
            copied: 0,
            copies_left: 0,
            over: 0,
        }
    }
}

/// The reference model (see the module docs).
#[derive(Debug, Clone)]
pub struct Model {
    cap: usize,
    /// How many of the latest items pulled the fanout keeps for replay.
    replay: usize,
    /// The oldest item held, as the latest snapshot from outside the
    /// branches said ([`check_stats_outside`](Self::check_stats_outside)).
    head: u64,
    /// A poll since that snapshot may have evicted items kept for replay:
    /// it was at the end of the buffer, and pulled, or returned `Pending`
    /// or `None`.
    may_have_evicted: bool,
    /// Items the upstream has yielded.
    pulled: u64,
    upstream_ended: bool,
    next_id: usize,
    branches: Vec<ModelBranch>,
    /// The most clones each item may have had so far, by value.
    clone_budget: Vec<usize>,
    /// Items below this one are needed by no live branch: their clone count
    /// is final and checked.
    clones_checked: u64,
    /// The most that forks' clones of read-ahead have ever been allowed to
    /// pass the capacity by, as the snapshots count them (for `high_water`).
    most_excess: usize,
    /// The highest high-water mark seen: it never goes down.
    high_water: Cell<usize>,
}

/// The error of a failed check: what went wrong, with the model's state.
pub type Checked = Result<(), String>;

macro_rules! ensure {
    ($model:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("{}\n  model: {:?}", format!($($msg)+), $model));
        }
    };
}

impl Model {
    /// `n` lossless branches with ids `0..n` over a buffer of `cap`, nothing
    /// pulled yet.
    pub fn new(n: usize, cap: usize) -> Self {
        Self {
            cap,
            replay: 0,
            head: 0,
            may_have_evicted: false,
            pulled: 0,
            upstream_ended: false,
            next_id: n,
            branches: (0..n)
                .map(|id| ModelBranch::new(id, 0, false, false))
                .collect(),
            clone_budget: Vec::new(),
            clones_checked: 0,
            most_excess: 0,
            high_water: Cell::new(0),
        }
    }

    /// The same, for a fanout that keeps the latest `replay` items pulled
    /// (`share_replay(cap, replay)`, with `n` branches subscribed before
    /// anything was pulled).
    pub fn with_replay(self, replay: usize) -> Self {
        assert!(replay <= self.cap);
        Self { replay, ..self }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Items the upstream has yielded, as last observed.
    pub fn pulled(&self) -> u64 {
        self.pulled
    }

    pub fn upstream_ended(&self) -> bool {
        self.upstream_ended
    }

    pub fn branches(&self) -> &[ModelBranch] {
        &self.branches
    }

    pub fn branch(&self, i: usize) -> &ModelBranch {
        &self.branches[i]
    }

    /// Whether every branch has returned `None`.
    pub fn all_ended(&self) -> bool {
        self.branches.iter().all(|branch| branch.ended)
    }

    /// The position of the slowest lossless branch, if there is one.
    pub fn slowest_lossless(&self) -> Option<u64> {
        self.branches
            .iter()
            .filter(|branch| !branch.lossy)
            .map(|branch| branch.next)
            .min()
    }

    /// A branch that has yielded everything pulled (or ended): it holds
    /// nothing ahead, so its `stats()`, `lag()` or `Debug` change nothing in
    /// the fanout (they would release the reservation of items read ahead).
    pub fn idle_branch(&self) -> Option<usize> {
        self.branches
            .iter()
            .position(|branch| branch.ended || branch.next == self.pulled)
    }

    /// Records what the upstream has done so far: `yielded` items in all,
    /// and whether it has returned `None`. Call it after every step that may
    /// have polled it, before [`polled`](Self::polled).
    pub fn observe_upstream(&mut self, yielded: u64, ended: bool) -> Checked {
        ensure!(
            self,
            yielded >= self.pulled,
            "the upstream's count went down to {yielded}"
        );
        ensure!(
            self,
            !self.upstream_ended || (ended && yielded == self.pulled),
            "the upstream was polled after its end (yielded {yielded}, ended {ended})"
        );
        ensure!(
            self,
            !self.branches.is_empty() || (yielded, ended) == (self.pulled, self.upstream_ended),
            "the upstream was polled with no branch alive (yielded {yielded}, ended {ended})"
        );
        // Every branch alive now needs each new item; the last reader moves
        // it, unless it is in the replay window then.
        let readers = self.branches.len();
        let clones = if self.replay > 0 {
            readers
        } else {
            readers.saturating_sub(1)
        };
        self.clone_budget.resize(yielded as usize, clones);
        if yielded > self.pulled {
            self.may_have_evicted = true;
            // The upstream is polled only with free room: what forks copied
            // is within the capacity now.
            for branch in &mut self.branches {
                branch.over = 0;
            }
        }
        self.pulled = yielded;
        self.upstream_ended = ended;
        Ok(())
    }

    /// Records that branch `i` returned `polled`, and checks that it may.
    pub fn polled(&mut self, i: usize, polled: Polled) -> Checked {
        let (pulled, cap, ended) = (self.pulled, self.cap as u64, self.upstream_ended);
        let branch = self.branches[i].clone();
        let id = branch.id;
        match polled {
            Polled::Item(value) => {
                ensure!(self, !branch.ended, "branch {id}: item {value} after None");
                ensure!(
                    self,
                    value == branch.next,
                    "branch {id}: yielded {value}, expected {} (lost, duplicated or reordered, or a gap not reported)",
                    branch.next
                );
                ensure!(
                    self,
                    value < pulled,
                    "branch {id}: yielded {value}, which the upstream has not yielded"
                );
                // (How far behind the upstream: for a lossless branch, see
                // `check_bounds`. A branch turned lossy yields the read-ahead
                // it kept first, however far the upstream has run on.)
                let branch = &mut self.branches[i];
                branch.next += 1;
                branch.received += 1;
                branch.copies_left = branch.copies_left.saturating_sub(1);
                branch.over = branch.over.saturating_sub(1);
            }
            Polled::Lagged(missed) => {
                ensure!(
                    self,
                    branch.lossy,
                    "branch {id}: lossless, but missed {missed}"
                );
                ensure!(self, !branch.ended, "branch {id}: a gap after None");
                ensure!(self, missed > 0, "branch {id}: a gap of 0");
                let after = branch.next + missed;
                ensure!(
                    self,
                    after <= pulled,
                    "branch {id}: missed {missed} from {}, past the upstream's {pulled}",
                    branch.next
                );
                ensure!(
                    self,
                    pulled - after <= cap,
                    "branch {id}: after a gap of {missed}, still more than cap {cap} behind"
                );
                let branch = &mut self.branches[i];
                branch.next = after;
                branch.missed += missed;
            }
            Polled::End => {
                ensure!(self, ended, "branch {id}: None before the upstream ended");
                ensure!(
                    self,
                    branch.next == pulled,
                    "branch {id}: None at {}, before the upstream's {pulled} items (a lost item, or a gap not reported)",
                    branch.next
                );
                self.branches[i].ended = true;
            }
            Polled::Pending => {
                ensure!(self, !branch.ended, "branch {id}: Pending after None");
                ensure!(
                    self,
                    branch.next == pulled && !ended,
                    "branch {id}: Pending at {} with the upstream at {pulled} (ended {ended}): it can make progress",
                    branch.next
                );
            }
        }
        self.branches[i].pending = polled == Polled::Pending;
        self.may_have_evicted |= matches!(polled, Polled::Pending | Polled::End);
        Ok(())
    }

    /// Records a fork of branch `i`, appended; `id` is the fork's id,
    /// `start` where its entry in the snapshots starts, and `copied` the
    /// clones of the original's read-ahead it got (both as
    /// [`Handle::fork_counting_copies`] measures them, which changes nothing
    /// in the fanout). Returns its index.
    ///
    /// Those clones are the one exception to the memory bound (documented on
    /// the crate): they are made even without room, at most one batch (a
    /// quarter of `cap`), and may pass the capacity until the fork has
    /// yielded them.
    pub fn fork(&mut self, i: usize, id: usize, start: u64, copied: u64) -> Result<usize, String> {
        let parent = self.branches[i].clone();
        ensure!(
            self,
            copied <= self.pulled - parent.next && copied <= self.cap as u64 / 4,
            "the fork of branch {} got {copied} clones of read-ahead: more than it has to yield ({}) or than a batch (a quarter of cap {})",
            parent.id,
            self.pulled - parent.next,
            self.cap
        );
        ensure!(
            self,
            id == self.next_id,
            "the fork of branch {} got id {id}, expected {}",
            parent.id,
            self.next_id
        );
        if parent.lossy {
            // It starts where the parent is: with its read-ahead, if it kept
            // one (from before it turned lossy), else past the gaps that the
            // parent has not reported yet.
            ensure!(
                self,
                (parent.next..=self.pulled).contains(&start),
                "the fork of lossy branch {} starts at {start}, outside {}..={}",
                parent.id,
                parent.next,
                self.pulled
            );
        } else {
            ensure!(
                self,
                start == parent.next,
                "the fork of branch {} starts at {start}, not at its position {}",
                parent.id,
                parent.next
            );
        }
        self.next_id += 1;
        // One more branch needs the items from where it starts.
        self.add_clone_budget(parent.next.min(start), 1);
        let mut fork = ModelBranch::new(id, start, parent.lossy, parent.ended);
        if copied > 0 {
            // Its first items are its clones of the parent's read-ahead,
            // which are the parent's next items; any gap after them is the
            // fork's to report too. (`start`, where its record in the
            // snapshots starts, is past them, and past such a gap.)
            fork.next = parent.next;
        }
        fork.copied = copied;
        fork.copies_left = copied;
        fork.over = copied;
        self.branches.push(fork);
        self.most_excess = self.most_excess.max(self.counted_excess());
        Ok(self.branches.len() - 1)
    }

    /// Records a branch subscribed through a `Subscriber`, appended: `id` is
    /// its id, `before` a snapshot taken just before the subscribe (from the
    /// subscriber: it changes nothing), and `after` the new branch's own,
    /// just after. It starts at `max(head, pulled - replay)`: the live edge,
    /// or the oldest item still kept for replay, which it yields first.
    /// Returns its index.
    pub fn subscribe(&mut self, id: usize, before: &Stats, after: &Stats) -> Result<usize, String> {
        ensure!(
            self,
            id == self.next_id,
            "a subscribed branch got id {id}, expected {}",
            self.next_id
        );
        ensure!(
            self,
            before.pulled == self.pulled && after.pulled == self.pulled,
            "subscribing pulled: {} before, {} after, the upstream yielded {}",
            before.pulled,
            after.pulled,
            self.pulled
        );
        let head = self.pulled - before.buffered as u64;
        let start = head.max(self.pulled.saturating_sub(self.replay as u64));
        let entry = entry(after, id);
        ensure!(
            self,
            !entry.lossy
                && (entry.delivered, entry.missed) == (0, 0)
                && entry.lag as u64 == self.pulled - start,
            "branch {id} subscribed as {entry:?}: it starts at {start} (head {head}, replay {})",
            self.replay
        );
        self.next_id += 1;
        // One more branch needs the items from where it starts.
        self.add_clone_budget(start, 1);
        self.branches
            .push(ModelBranch::new(id, start, false, false));
        Ok(self.branches.len() - 1)
    }

    /// How far the items alive may pass the capacity now: the clones of
    /// read-ahead that forks got and have not yielded yet, none once the
    /// upstream has been polled since (it is polled only with free room).
    /// Without forks, none: the bound is strict.
    pub fn excess(&self) -> usize {
        self.branches
            .iter()
            .map(|branch| branch.over as usize)
            .sum()
    }

    /// How far the counts of `stats()` may pass the capacity now: a fork's
    /// clones stay counted, as its read-ahead, until it takes the lock, at
    /// the latest when it yields the last of them.
    pub fn counted_excess(&self) -> usize {
        self.branches
            .iter()
            .filter(|branch| branch.copies_left > 0)
            .map(|branch| branch.copied as usize)
            .sum()
    }

    /// Records that branch `i` was turned lossy (it keeps its read-ahead).
    pub fn make_lossy(&mut self, i: usize) {
        self.branches[i].lossy = true;
    }

    /// Records that branch `i` was dropped.
    pub fn remove(&mut self, i: usize) -> ModelBranch {
        self.branches.remove(i)
    }

    fn add_clone_budget(&mut self, from: u64, extra: usize) {
        for budget in self.clone_budget.iter_mut().skip(from as usize) {
            *budget += extra;
        }
    }

    /// The bound on the upstream: never more than `cap` items past the
    /// slowest lossless branch.
    pub fn check_bounds(&self) -> Checked {
        if let Some(slowest) = self.slowest_lossless() {
            ensure!(
                self,
                self.pulled - slowest <= self.cap as u64,
                "the upstream yielded {} items, more than cap {} past the slowest lossless branch at {slowest}",
                self.pulled,
                self.cap
            );
        }
        Ok(())
    }

    /// The memory bound: `live` items alive in all (a `Tracker`'s count),
    /// of which `held` by the test and `in_upstream` not yielded by the
    /// upstream yet. At most `cap` are inside the crate (plus the forks'
    /// clones of read-ahead not yielded yet, [`excess`](Self::excess)), and
    /// at least those a lossless branch has still to yield; with no branch,
    /// at most those kept for replay.
    pub fn check_live(&self, live: usize, held: usize, in_upstream: usize) -> Checked {
        let excess = self.excess();
        ensure!(
            self,
            live <= self.cap + excess + held + in_upstream,
            "{live} items alive: more than cap {} + {excess} forks' clones of read-ahead + {held} held by the test + {in_upstream} in the upstream",
            self.cap
        );
        let inside = live - held - in_upstream;
        ensure!(
            self,
            !self.branches.is_empty() || inside <= self.replay,
            "{inside} items alive inside the crate with no branch: more than the replay of {}",
            self.replay
        );
        let needed = self
            .slowest_lossless()
            .map_or(0, |slowest| self.pulled - slowest);
        ensure!(
            self,
            inside as u64 >= needed,
            "{inside} items alive inside the crate, but the slowest lossless branch has {needed} to yield"
        );
        Ok(())
    }

    /// The clone counts, `clones_of(value)` for each item: at most one per
    /// branch that needs the item but the last (a fork made while the item is
    /// alive, or a branch that subscribes at or before it, counts as one more
    /// such branch; with replay, the last one clones too). An item's count is
    /// checked once no live branch needs it any more and it is out of the
    /// replay window (no branch that subscribes later can need it), and then
    /// no longer changes.
    pub fn check_clones(&mut self, clones_of: impl Fn(u64) -> usize) -> Checked {
        let floor = self
            .branches
            .iter()
            .map(|branch| branch.next)
            .min()
            .unwrap_or(self.pulled)
            .min(self.pulled.saturating_sub(self.replay as u64));
        for value in self.clones_checked..self.pulled {
            let clones = clones_of(value);
            let budget = self.clone_budget[value as usize];
            ensure!(
                self,
                clones <= budget,
                "item {value} was cloned {clones} times, at most {budget} allowed"
            );
        }
        self.clones_checked = self.clones_checked.max(floor);
        Ok(())
    }

    /// Checks a snapshot taken by branch `taker`: the bound, the counters
    /// against the positions (exact for the taker, whose read-ahead is
    /// counted as of now), the ids, `slowest()`, and the items kept for
    /// replay: at most `replay`, and all of the buffer once every branch has
    /// yielded everything.
    pub fn check_stats(&self, taker: usize, stats: &Stats) -> Checked {
        self.check_snapshot(Some(taker), stats)
    }

    /// Checks a snapshot taken from a subscriber, outside every branch: as
    /// [`check_stats`](Self::check_stats), exact for no branch; and that
    /// the items kept for replay are given up only when room is needed:
    /// since the previous such snapshot, the oldest item held moved into the
    /// window of the latest `replay` items pulled only if a poll at the end
    /// of the buffer may have evicted some (it pulled, or returned `Pending`
    /// or `None`). So the latest `replay` items pulled are all held, but for
    /// those evictions.
    pub fn check_stats_outside(&mut self, stats: &Stats) -> Checked {
        self.check_snapshot(None, stats)?;
        let head = stats.pulled - stats.buffered as u64;
        let window = self.pulled.saturating_sub(self.replay as u64);
        ensure!(
            self,
            self.may_have_evicted || head <= self.head.max(window),
            "items kept for replay were dropped with no need for room: the oldest item held went from {} to {head}, the replay window starts at {window}",
            self.head
        );
        self.head = head;
        self.may_have_evicted = false;
        Ok(())
    }

    fn check_snapshot(&self, taker: Option<usize>, stats: &Stats) -> Checked {
        let cap = self.cap;
        ensure!(
            self,
            stats.capacity == cap,
            "stats: capacity {}",
            stats.capacity
        );
        let excess = self.counted_excess();
        ensure!(
            self,
            stats.buffered + stats.read_ahead <= cap + excess,
            "stats: buffered {} + read ahead {} > cap {cap} + {excess} forks' clones of read-ahead",
            stats.buffered,
            stats.read_ahead
        );
        ensure!(
            self,
            stats.buffered + stats.read_ahead <= stats.high_water
                && stats.high_water <= cap + self.most_excess,
            "stats: high water {} outside buffered {} + read ahead {} ..= cap {cap} + {} forks' clones of read-ahead",
            stats.high_water,
            stats.buffered,
            stats.read_ahead,
            self.most_excess
        );
        ensure!(
            self,
            stats.kept_for_replay <= self.replay.min(stats.buffered),
            "stats: {} kept for replay, of {} buffered, with a replay of {}",
            stats.kept_for_replay,
            stats.buffered,
            self.replay
        );
        let all_yielded = self
            .branches
            .iter()
            .all(|branch| branch.ended || branch.next == self.pulled);
        ensure!(
            self,
            !all_yielded || stats.kept_for_replay == stats.buffered,
            "stats: every branch has yielded everything, but only {} of the {} buffered are kept for replay",
            stats.kept_for_replay,
            stats.buffered
        );
        ensure!(
            self,
            stats.high_water >= self.high_water.get(),
            "stats: high water {} went down from {}",
            stats.high_water,
            self.high_water.get()
        );
        self.high_water.set(stats.high_water);
        ensure!(
            self,
            stats.pulled == self.pulled,
            "stats: pulled {}, the upstream yielded {}",
            stats.pulled,
            self.pulled
        );
        ensure!(
            self,
            stats.upstream_done == self.upstream_ended,
            "stats: upstream_done {}",
            stats.upstream_done
        );
        let mut ids: Vec<_> = self.branches.iter().map(|branch| branch.id).collect();
        ids.sort_unstable();
        let got: Vec<_> = stats.branches.iter().map(|branch| branch.id).collect();
        ensure!(self, got == ids, "stats: ids {got:?}, expected {ids:?}");
        for (i, branch) in self.branches.iter().enumerate() {
            let id = branch.id;
            let entry = entry(stats, id);
            ensure!(self, entry.lossy == branch.lossy, "stats: lossy of {id}");
            ensure!(
                self,
                entry.lag <= cap,
                "stats: lag {} of {id} > cap",
                entry.lag
            );
            // Everything since its start is yielded, missed, or not yielded
            // yet, whatever its read-ahead was at its latest visit.
            ensure!(
                self,
                entry.lag as u64 + entry.delivered + entry.missed == self.pulled - branch.start,
                "stats: branch {id}: lag {} + delivered {} + missed {} != pulled {} - start {}",
                entry.lag,
                entry.delivered,
                entry.missed,
                self.pulled,
                branch.start
            );
            ensure!(
                self,
                entry.missed >= branch.missed,
                "stats: branch {id} missed {}, but reported {}",
                entry.missed,
                branch.missed
            );
            if !branch.lossy {
                ensure!(self, entry.missed == 0, "stats: lossless {id} missed items");
            }
            if Some(i) == taker {
                ensure!(
                    self,
                    entry.delivered == branch.received,
                    "stats: the taker {id} delivered {}, it yielded {}",
                    entry.delivered,
                    branch.received
                );
                if !branch.lossy {
                    ensure!(
                        self,
                        entry.lag as u64 == self.pulled - branch.next,
                        "stats: the taker {id} has lag {}, it has {} to yield",
                        entry.lag,
                        self.pulled - branch.next
                    );
                }
            } else {
                ensure!(
                    self,
                    entry.delivered <= branch.received,
                    "stats: branch {id} delivered {}, it yielded {}",
                    entry.delivered,
                    branch.received
                );
            }
        }
        // `slowest()`: the lossless branch with the largest lag, the smallest
        // id among equals; a lossy one only if every branch is lossy.
        let any_lossless = stats.branches.iter().any(|entry| !entry.lossy);
        let pool = || {
            stats
                .branches
                .iter()
                .filter(move |entry| !any_lossless || !entry.lossy)
        };
        let expected = pool()
            .map(|entry| entry.lag)
            .max()
            .and_then(|lag| pool().find(|entry| entry.lag == lag));
        ensure!(
            self,
            stats.slowest() == expected,
            "stats: slowest {:?}, expected {expected:?}",
            stats.slowest()
        );
        let table = stats.to_string();
        for row in table.lines().filter(|row| row.contains("<- slowest")) {
            let id: usize = row.split_whitespace().next().unwrap().parse().unwrap();
            ensure!(
                self,
                expected.is_some_and(|entry| entry.id == id && entry.lag > 0),
                "stats: row of branch {id} marked slowest:\n{table}"
            );
        }
        Ok(())
    }

    /// Checks a snapshot that every branch has visited ([`synced_stats`]),
    /// with `inside` items alive inside the crate: all of
    /// [`check_stats`](Self::check_stats), and exact for every branch (its
    /// position is the next item it yields plus the gap it has yet to report,
    /// it has delivered what it yielded), every item inside the crate
    /// counted once, buffered or read ahead, and, with nothing read ahead,
    /// the items kept for replay exactly those before every branch.
    pub fn check_synced(&self, stats: &Stats, inside: usize) -> Checked {
        let last = self.branches.len().checked_sub(1).expect("a branch");
        self.check_stats(last, stats)?;
        for branch in &self.branches {
            let id = branch.id;
            let entry = entry(stats, id);
            let unreported = entry.missed - branch.missed;
            ensure!(
                self,
                self.pulled - entry.lag as u64 == branch.next + unreported,
                "synced stats: branch {id} at {} (lag {}), it is at {} with {unreported} not reported",
                self.pulled - entry.lag as u64,
                entry.lag,
                branch.next
            );
            ensure!(
                self,
                entry.delivered == branch.received,
                "synced stats: branch {id} delivered {}, it yielded {}",
                entry.delivered,
                branch.received
            );
        }
        if stats.read_ahead == 0 {
            // Every branch's lag is what it has still to take from the buffer.
            let most_lag = stats.branches.iter().map(|entry| entry.lag).max();
            let passed_by_all = stats.buffered.checked_sub(most_lag.unwrap_or(0));
            ensure!(
                self,
                passed_by_all == Some(stats.kept_for_replay),
                "synced stats: {} kept for replay, but {passed_by_all:?} buffered items are before every branch",
                stats.kept_for_replay
            );
        }
        ensure!(
            self,
            inside == stats.buffered + stats.read_ahead,
            "{inside} items alive inside the crate, but buffered {} + read ahead {}: each item is stored once",
            stats.buffered,
            stats.read_ahead
        );
        Ok(())
    }

    /// The position of branch `i` in an exact snapshot: the next item it
    /// yields, or gives up.
    fn position_in(&self, stats: &Stats, i: usize) -> u64 {
        let id = self.branches[i].id;
        let entry = entry(stats, id);
        stats.pulled - entry.lag as u64
    }

    /// Checks a poll of branch `i` that returned `polled`, against exact
    /// snapshots `before` and `after` it ([`synced_stats`]), before the
    /// model records it. What the snapshot before decides, the poll must
    /// return: the `Lagged(k)` of exactly the items given up and not reported
    /// yet, else the next item held for it, else the end; none of those
    /// pulls or gives anything up. At the end of the buffer, a batch fits in
    /// the free room (plus the item given up for it, then at most one, and
    /// the items kept for replay, which it may evict). Only
    /// and every lossy branch at the oldest position gives an item up, one
    /// each (more only to bring back within `cap` what forks took past it),
    /// and no lossless branch is left behind by it. A branch waits or gives
    /// up an item only at a full buffer: when nothing is read ahead, `cap`
    /// items, and it waits exactly when a lossless branch is at the oldest
    /// of them.
    pub fn check_poll_between(
        &self,
        i: usize,
        polled: Polled,
        before: &Stats,
        after: &Stats,
    ) -> Checked {
        let cap = self.cap;
        let pulled = after.pulled - before.pulled;
        let id = self.branches[i].id;
        let most = 1 + self.counted_excess() as u64;
        let mut gave_up = Vec::with_capacity(self.branches.len());
        for branch in &self.branches {
            let missed = entry(after, branch.id).missed - entry(before, branch.id).missed;
            ensure!(
                self,
                missed <= most,
                "poll of branch {id}: branch {} gave up {missed} items, at most {most}",
                branch.id
            );
            gave_up.push(missed > 0);
        }
        let evicted = gave_up.contains(&true);
        if evicted {
            // A lossy branch never reads ahead: its position is where it
            // takes its next item.
            let oldest = (0..self.branches.len())
                .filter(|&j| self.branches[j].lossy)
                .map(|j| self.position_in(before, j))
                .min();
            ensure!(
                self,
                oldest.is_some(),
                "poll of branch {id}: a lossless branch gave an item up"
            );
            let oldest = oldest.unwrap_or_default();
            for (j, branch) in self.branches.iter().enumerate() {
                let position = self.position_in(before, j);
                ensure!(
                    self,
                    gave_up[j] == (branch.lossy && position == oldest),
                    "poll of branch {id}: branch {} gave up an item: {}, but only and every lossy branch at the oldest position {oldest} does",
                    branch.id,
                    gave_up[j]
                );
                ensure!(
                    self,
                    branch.lossy || before.read_ahead > 0 || position > oldest,
                    "poll of branch {id}: lossless branch {} at {position} lost the oldest item {oldest}",
                    branch.id
                );
            }
        }
        let me = &self.branches[i];
        let entry = entry(before, id);
        let unreported = entry.missed - me.missed;
        let position = self.position_in(before, i);
        let decided = if unreported > 0 {
            Some(Polled::Lagged(unreported))
        } else if position < before.pulled {
            Some(Polled::Item(position))
        } else if before.upstream_done {
            Some(Polled::End)
        } else {
            None
        };
        if let Some(expected) = decided {
            ensure!(
                self,
                polled == expected,
                "poll of branch {id}: {polled:?}, the snapshot before says {expected:?}"
            );
            ensure!(
                self,
                !evicted && pulled == 0,
                "poll of branch {id}: pulled {pulled} or gave up an item ({evicted}) without need"
            );
            return Ok(());
        }
        // At the end of the buffer: it pulls and yields its next item, or
        // learns of the end, or waits.
        let free = (cap + usize::from(evicted) + before.kept_for_replay)
            .saturating_sub(before.buffered + before.read_ahead);
        ensure!(
            self,
            pulled as usize <= free,
            "poll of branch {id}: a batch of {pulled}, {free} free"
        );
        if evicted {
            ensure!(
                self,
                before.buffered > 0 && pulled <= 1,
                "poll of branch {id}: gave up an item of {} buffered, for a batch of {pulled}",
                before.buffered
            );
        }
        match polled {
            Polled::Item(value) => ensure!(
                self,
                value == position && pulled >= 1,
                "poll of branch {id}: item {value} at the end ({position}), {pulled} pulled"
            ),
            Polled::End => ensure!(
                self,
                pulled == 0 && after.upstream_done,
                "poll of branch {id}: None, with {pulled} pulled"
            ),
            Polled::Pending => ensure!(
                self,
                pulled == 0 && !evicted,
                "poll of branch {id}: Pending, with {pulled} pulled or an item given up ({evicted})"
            ),
            Polled::Lagged(_) => ensure!(self, false, "poll of branch {id}: a report at the end"),
        }
        // Room is set aside only for branches that hold read-ahead.
        let room_is_known = before.read_ahead == 0;
        if (polled == Polled::Pending || evicted) && room_is_known {
            ensure!(
                self,
                before.buffered == cap,
                "poll of branch {id}: waited or gave up an item with {} buffered, nothing read ahead",
                before.buffered
            );
            let blocked = before
                .branches
                .iter()
                .any(|entry| !entry.lossy && entry.lag == cap);
            ensure!(
                self,
                blocked == (polled == Polled::Pending),
                "poll of branch {id}: {polled:?}, a lossless branch at the oldest item: {blocked}"
            );
        }
        Ok(())
    }

    /// Checks that branch `i` has a reason to wait for room: its latest poll
    /// returned `Pending` while the upstream had an item ready, and it has
    /// not been woken since. In `stats`, a snapshot taken now that changes
    /// nothing (from a subscriber), nothing may be kept for replay (a kept
    /// item is evicted when room is needed, never waited for), and another
    /// branch must hold something it has not yielded.
    pub fn check_waits_for_room(&self, i: usize, stats: &Stats) -> Checked {
        let id = self.branches[i].id;
        ensure!(
            self,
            stats.kept_for_replay == 0,
            "branch {id} waits for room while {} items are kept only for replay: {stats:?}",
            stats.kept_for_replay
        );
        ensure!(
            self,
            stats
                .branches
                .iter()
                .any(|entry| entry.id != id && entry.lag > 0),
            "branch {id} waits for room, but no other branch holds anything: {stats:?}"
        );
        Ok(())
    }

    /// Polls `handles[i]` like [`poll`](Self::poll), between exact snapshots
    /// ([`synced_stats`]) that it checks the poll against
    /// ([`check_poll_between`](Self::check_poll_between)); returns the
    /// snapshot after it too, for [`check_synced`](Self::check_synced).
    pub fn poll_synced<S>(
        &mut self,
        handles: &mut [Handle<S>],
        i: usize,
        upstream: &impl Fn() -> (u64, bool),
    ) -> Result<(Polled, Option<S::Item>, Stats), String>
    where
        S: Stream,
        S::Item: Clone + Value,
    {
        let before = synced_stats(handles);
        let (polled, item) = handles[i].poll();
        let after = synced_stats(handles);
        self.check_poll_between(i, polled, &before, &after)?;
        let (yielded, ended) = upstream();
        self.observe_upstream(yielded, ended)?;
        self.polled(i, polled)
            .map_err(|error| format!("poll of branch {}: {error}", self.branches[i].id))?;
        Ok((polled, item, after))
    }

    /// Polls `handles[i]` from its task, records the upstream's state
    /// (`upstream()`: items yielded, ended) and what the poll returned, and
    /// returns it with the item.
    pub fn poll<S>(
        &mut self,
        handles: &mut [Handle<S>],
        i: usize,
        upstream: &impl Fn() -> (u64, bool),
    ) -> Result<(Polled, Option<S::Item>), String>
    where
        S: Stream,
        S::Item: Clone + Value,
    {
        let (polled, item) = handles[i].poll();
        let (yielded, ended) = upstream();
        self.observe_upstream(yielded, ended)?;
        self.polled(i, polled)
            .map_err(|error| format!("poll of branch {}: {error}", self.branches[i].id))?;
        Ok((polled, item))
    }

    /// The no-lost-wake-up check: every handle whose latest poll returned
    /// `Pending` and that has not been woken since is polled again from a
    /// new task, and must return `Pending` again. The re-poll is recorded as
    /// a real step.
    pub fn check_parked<S>(
        &mut self,
        handles: &mut [Handle<S>],
        upstream: &impl Fn() -> (u64, bool),
    ) -> Checked
    where
        S: Stream,
        S::Item: Clone + Value,
    {
        for i in 0..handles.len() {
            if !handles[i].parked() {
                continue;
            }
            handles[i].new_task();
            let (polled, _item) = self.poll(handles, i, upstream)?;
            ensure!(
                self,
                polled == Polled::Pending,
                "branch {} was not woken, but polled again it returned {polled:?}: a lost wake-up",
                self.branches[i].id
            );
        }
        Ok(())
    }

    /// Runs every branch to its end, polling only those that are not parked
    /// (woken since their `Pending`, or not waiting), in turns, and calling
    /// `after_each` after every poll. Fails if every unfinished branch is
    /// parked (a hang), or after `max_polls` polls.
    pub fn drain<S>(
        &mut self,
        handles: &mut [Handle<S>],
        upstream: &impl Fn() -> (u64, bool),
        max_polls: usize,
        mut after_each: impl FnMut(&mut Self, &mut [Handle<S>]) -> Checked,
    ) -> Checked
    where
        S: Stream,
        S::Item: Clone + Value,
    {
        let mut polls = 0;
        while !self.all_ended() {
            let runnable: Vec<_> = (0..handles.len())
                .filter(|&i| !self.branches[i].ended && !handles[i].parked())
                .collect();
            ensure!(
                self,
                !runnable.is_empty(),
                "every unfinished branch waits, none was woken: a hang"
            );
            for i in runnable {
                polls += 1;
                ensure!(self, polls <= max_polls, "no end after {max_polls} polls");
                self.poll(handles, i, upstream)?;
                after_each(self, handles)?;
            }
        }
        Ok(())
    }
}

/// A snapshot that is exact for every branch: a snapshot counts each
/// branch's read-ahead as of its latest visit to the buffer, exactly for the
/// branch that takes it, so each branch takes one in turn, and the last one
/// is exact for all. (Each is a step of its branch: it releases the
/// reservation of what it has yielded from its read-ahead.)
pub fn synced_stats<S: Stream>(handles: &[Handle<S>]) -> Stats {
    handles
        .iter()
        .map(Handle::stats)
        .last()
        .expect("at least one branch")
}

/// A fork, as [`Handle::fork_counting_copies`] returns it: what
/// [`Model::fork`] takes.
pub struct Forked<S: Stream> {
    pub handle: Handle<S>,
    /// The clones of the original's read-ahead it got.
    pub copied: u64,
    /// Where its entry in the snapshots starts: `pulled` minus its `lag`,
    /// `delivered` and `missed`, all from its own snapshot.
    pub start: u64,
}

/// A branch under test, of either kind.
pub enum Kind<S: Stream> {
    Lossless(Branch<S>),
    Lossy(Lossy<S>),
}

/// A branch under test, with the task it is polled from.
pub struct Handle<S: Stream> {
    kind: Option<Kind<S>>,
    task: Arc<WakeFlag>,
    /// Its latest poll returned `Pending`.
    pending: bool,
}

impl<S: Stream> Handle<S> {
    pub fn new(branch: Branch<S>) -> Self {
        Self::of(Kind::Lossless(branch))
    }

    pub fn of(kind: Kind<S>) -> Self {
        Self {
            kind: Some(kind),
            task: WakeFlag::new(),
            pending: false,
        }
    }

    pub fn kind(&self) -> &Kind<S> {
        self.kind.as_ref().expect("a live handle")
    }

    pub fn is_lossy(&self) -> bool {
        matches!(self.kind(), Kind::Lossy(_))
    }

    /// From now on, it is polled from a new task.
    pub fn new_task(&mut self) {
        self.task = WakeFlag::new();
    }

    /// Whether its task has been woken since its latest poll.
    pub fn is_woken(&self) -> bool {
        self.task.is_woken()
    }

    /// Whether it waits for a wake-up that has not come.
    pub fn parked(&self) -> bool {
        self.pending && !self.task.is_woken()
    }

    /// Makes it lossy; the task it is polled from stays the same.
    pub fn make_lossy(&mut self) {
        self.kind = self.kind.take().map(|kind| match kind {
            Kind::Lossless(branch) => Kind::Lossy(branch.into_lossy()),
            lossy => lossy,
        });
    }

    pub fn id(&self) -> usize {
        match self.kind() {
            Kind::Lossless(branch) => branch.id(),
            Kind::Lossy(branch) => branch.id(),
        }
    }

    /// Its `lag()`. Releases the reservation of what it has yielded from
    /// its read-ahead: a step of its own unless it holds nothing ahead.
    pub fn lag(&self) -> usize {
        match self.kind() {
            Kind::Lossless(branch) => branch.lag(),
            Kind::Lossy(branch) => branch.lag(),
        }
    }

    /// Its `stats()`; see [`lag`](Self::lag).
    pub fn stats(&self) -> Stats {
        match self.kind() {
            Kind::Lossless(branch) => branch.stats(),
            Kind::Lossy(branch) => branch.stats(),
        }
    }
}

impl<S> Handle<S>
where
    S: Stream,
    S::Item: Clone,
{
    /// Its `size_hint()`.
    pub fn size_hint(&self) -> (usize, Option<usize>) {
        match self.kind() {
            Kind::Lossless(branch) => branch.size_hint(),
            Kind::Lossy(branch) => branch.size_hint(),
        }
    }

    /// Its `is_terminated()`.
    pub fn is_terminated(&self) -> bool {
        match self.kind() {
            Kind::Lossless(branch) => branch.is_terminated(),
            Kind::Lossy(branch) => branch.is_terminated(),
        }
    }
}

impl<S> Handle<S>
where
    S: Stream,
    S::Item: Clone + Value,
{
    /// Polls it once from its task; returns what it yielded, as the model
    /// sees it, and the item.
    pub fn poll(&mut self) -> (Polled, Option<S::Item>) {
        self.task.take();
        let waker = self.task.waker();
        let mut cx = Context::from_waker(&waker);
        let kind = self.kind.as_mut().expect("a live handle");
        let (polled, item) = match kind {
            Kind::Lossless(branch) => match Pin::new(branch).poll_next(&mut cx) {
                Poll::Ready(Some(item)) => (Polled::Item(item.value()), Some(item)),
                Poll::Ready(None) => (Polled::End, None),
                Poll::Pending => (Polled::Pending, None),
            },
            Kind::Lossy(branch) => match Pin::new(branch).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(item))) => (Polled::Item(item.value()), Some(item)),
                Poll::Ready(Some(Err(Lagged(missed)))) => (Polled::Lagged(missed), None),
                Poll::Ready(None) => (Polled::End, None),
                Poll::Pending => (Polled::Pending, None),
            },
        };
        self.pending = polled == Polled::Pending;
        (polled, item)
    }

    /// Forks it; the fork is polled from a task of its own.
    pub fn fork(&self) -> Self {
        Self::of(match self.kind() {
            Kind::Lossless(branch) => Kind::Lossless(branch.clone()),
            Kind::Lossy(branch) => Kind::Lossy(branch.clone()),
        })
    }

    /// Forks it, and returns the fork with the number of clones of this
    /// branch's read-ahead it got: what the fork adds to the read-ahead that
    /// the snapshots count. (The snapshot before counts this branch's
    /// read-ahead as of now, which the fork does anyway: it changes nothing
    /// that the fork does not.)
    pub fn fork_counting_copies(&self) -> Forked<S> {
        let before = self.stats().read_ahead;
        let fork = self.fork();
        let stats = fork.stats();
        let entry = entry(&stats, fork.id());
        let start = stats.pulled - (entry.lag as u64 + entry.delivered + entry.missed);
        Forked {
            copied: (stats.read_ahead - before) as u64,
            start,
            handle: fork,
        }
    }
}
