//! The one bounded buffer that all branches of a fanout share.
//!
//! # Algorithm
//!
//! Items are numbered by *position*, 0 for the first item the upstream
//! yields. Each branch's record in the [`Registry`] keeps the position of the
//! next item it will read. The
//! buffer holds the items from `head` (the oldest position some live branch
//! has not read) up to `head + slots.len()` (the next position the upstream
//! will yield), and each slot counts the live branches that have not read it
//! yet.
//!
//! A branch that polls does one of four things, all decided under the state
//! lock:
//!
//! 1. Its item is buffered: it takes it. If it is the last branch to read
//!    that slot, the slot is the oldest one (every other branch has passed
//!    it, and slots only get older towards the front), so it pops the slot
//!    and takes the item by move; otherwise it clones the item. Popping frees
//!    room, so the branches waiting for room are woken.
//! 2. It is at the end of the buffer and the buffer holds `capacity` items:
//!    it waits for room. The slowest branch frees room when it reads the
//!    oldest slot, or a dropped branch frees it by letting go of its slots.
//!    If only lossy branches are at the oldest position, nobody waits: they
//!    give up that slot (each counts one missed item and moves past it), and
//!    the poller goes on as in case 4.
//! 3. It is at the end and another branch is polling the upstream: it waits
//!    for the upstream (see [`UpstreamSignal`]).
//! 4. It is at the end and there is room: it takes the upstream out of the
//!    state, releases the lock, and polls the upstream itself, with the
//!    fanout's own waker. It polls again while the upstream yields and the
//!    batch fits in the room it saw (and in [`MAX_BATCH`]), so that one lock
//!    pushes many items: the room can only grow while it polls, because only
//!    the poller pushes. The yielded items are pushed with one reader per
//!    live branch and the first is read at once by the poller; the end of
//!    the upstream is recorded; either way the branches waiting for the
//!    upstream are woken. If the upstream returned `Pending` before yielding
//!    anything, the poller waits for it like case 3.
//!
//!    If it is the only live branch and nothing is buffered, it takes the
//!    upstream for good instead, and polls it directly from then on, with
//!    no lock and no buffer, until it forks (see [`Solo`]).
//!
//! So the upstream is polled by one branch at a time, never for more items
//! than the buffer has room for, and never with a lock held: it may wake its waker, and so any
//! branch, from inside `poll_next`. If it panics, the items it yielded before
//! are buffered, the upstream is marked as panicked, dropped, and every
//! waiting branch is woken: the branches still read what is buffered, then
//! panic with a message that says why.
//!
//! # Locks and wake-ups
//!
//! There are two locks: the state lock here, and the lock of the
//! [`UpstreamSignal`], which may be taken while the state lock is held but
//! never the other way round. Wakers are registered under these locks, but
//! they are woken, and the wakers or items they replace dropped, only after
//! both are released, because waking a waker or dropping an item runs
//! foreign code that may poll or drop a branch of this fanout. The state
//! lock is held through [`Locked`], which collects the wakers that are due
//! and wakes them when it releases the lock, also when a panic (in an item's
//! `Clone`, say) unwinds through it: a waker taken out of a list is always
//! woken.
//!
//! A branch that waits registers its waker under the same lock under which
//! it saw the reason to wait, and whoever removes that reason (frees room,
//! pushes an item, ends or wakes the upstream) takes the registered wakers
//! under that lock as well, so no wake-up falls between the two.

//! # Statistics
//!
//! Counters (items delivered and missed, the high-water mark) are
//! updated under the lock that is held anyway. The time a branch holds the
//! upstream back is measured only at transitions: when the buffer becomes
//! full, every backpressure branch at the oldest position starts a stall
//! (lossy branches never hold the upstream back); a branch ends its stall
//! when it reads past the oldest position or turns lossy, and every stall
//! ends when the buffer stops being full. The clock is read only while the buffer
//! is full.

use std::any::Any;
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_core::Stream;

use crate::registry::Registry;
use crate::solo::{Solo, SoloPoll};
use crate::stats::Stats;
use crate::sync::{lock, Mutex, MutexGuard};
use crate::upstream_signal::{AfterPending, UpstreamSignal};
use crate::waiters::{Waiters, Wakeups};

/// A stream's `size_hint`: lower and upper bounds on the items it has left.
pub(crate) type SizeHint = (usize, Option<usize>);

/// What a panic carries, as `catch_unwind` returns it.
type PanicPayload = Box<dyn Any + Send>;

/// The most items one poll of a branch pulls from the upstream, however
/// much room the buffer has: enough to spread the cost of the lock over many
/// items, few enough that the poller's own consumer and the branches waiting
/// for the upstream do not wait long for the first of them.
const MAX_BATCH: usize = 32;

/// What a kind of branch yields, built straight from what the buffer hands
/// it, so that an item is moved once on its way out rather than through an
/// intermediate enum (with 24-byte items such as `String`, each extra move
/// of the poll's result cost a store-forwarding stall).
pub(crate) trait Delivery<T> {
    /// What the branch's `poll_next` yields.
    type Output;

    /// The next item.
    fn item(item: T) -> Self::Output;

    /// A report that a lossy branch gave up `missed` items since it last
    /// said so.
    fn missed(missed: u64) -> Self::Output;
}

/// The state that all branches of one fanout share.
pub(crate) struct Shared<S: Stream> {
    /// The most items the buffer may hold. At least 1. (A copy of
    /// `State::capacity`, readable without the lock.)
    capacity: usize,
    state: Mutex<State<S>>,
    /// Branches waiting for the upstream; the upstream's waker wakes them.
    signal: std::sync::Arc<UpstreamSignal>,
    /// The waker the upstream is always polled with; it wakes `signal`.
    upstream_waker: Waker,
}

struct State<S: Stream> {
    /// The buffered items, oldest first. Invariants: `slots.len() <=
    /// capacity`; every slot has `unread_by >= 1`; `unread_by` never
    /// decreases from front to back.
    slots: VecDeque<Slot<S::Item>>,
    capacity: usize,
    /// The position of `slots[0]`: every live branch is at `head` or later,
    /// and at `head + slots.len()` at the latest.
    head: u64,
    /// The live branches. A slot's `unread_by` is the number of them at its
    /// position or before.
    branches: Registry,
    upstream: Upstream<S>,
    /// The upstream's `size_hint` after its latest poll.
    upstream_hint: SizeHint,
    /// The most items ever buffered at once.
    high_water: usize,
    /// Branches at the end of a full buffer. Woken whenever a slot is freed.
    waiting_for_room: Waiters,
    /// An empty vector, kept so that a poll of the upstream collects its
    /// batch without allocating. Taken out, with the upstream, by the poller.
    spare_batch: Vec<S::Item>,
    /// Wakers taken out of a list under this lock, to be woken when it is
    /// released. Empty whenever the lock is free (see [`Locked`]).
    due: Wakeups,
}

/// One buffered item.
struct Slot<T> {
    item: T,
    /// The live branches that have not read this item yet: those at its
    /// position or before.
    unread_by: usize,
}

/// Where the upstream stream is.
enum Upstream<S> {
    /// In the state, ready to be polled by the next branch that needs an item.
    Idle(Pin<Box<S>>),
    /// Taken out by the branch that is polling it now.
    Polling,
    /// Taken by the only live branch, which polls it directly while the
    /// buffer is empty (see [`Solo`]). If that branch no longer holds it,
    /// a poll of it panicked.
    Solo,
    /// It returned `None`, and has been dropped.
    Done,
    /// Its `poll_next` panicked, and it has been dropped. Holds the panic's
    /// payload if the panic came after the upstream had yielded items in the
    /// same poll: the first branch to read past those items resumes it.
    Panicked(Option<PanicPayload>),
}

/// The buffer is full and backpressure branches hold its oldest slot.
struct NoRoom;

impl<S: Stream> Shared<S> {
    /// Wraps `upstream` for `branches` branches with keys and ids
    /// `0..branches`. Polls nothing.
    pub(crate) fn new(upstream: S, branches: usize, capacity: usize) -> Self {
        let (signal, upstream_waker) = UpstreamSignal::new();
        let upstream_hint = upstream.size_hint();
        Self {
            capacity,
            state: Mutex::new(State {
                slots: VecDeque::new(),
                capacity,
                head: 0,
                branches: Registry::new(branches),
                upstream: Upstream::Idle(Box::pin(upstream)),
                upstream_hint,
                high_water: 0,
                waiting_for_room: Waiters::default(),
                spare_batch: Vec::new(),
                due: Wakeups::default(),
            }),
            signal,
            upstream_waker,
        }
    }

    /// The capacity the fanout was built with.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock_state(&self) -> Locked<'_, S> {
        Locked(Some(lock(&self.state)))
    }

    /// Locks the state for branch `key`, whose lone-branch state is `solo`,
    /// after recording the items it has yielded straight from the upstream
    /// (see [`Solo`]), so that every read of its position sees them. The
    /// count, with the upstream's `size_hint`, is taken before the lock:
    /// `size_hint` is the upstream's code.
    fn lock_recorded(&self, key: usize, solo: &mut Solo<S>) -> Locked<'_, S> {
        let unrecorded = solo.take_unrecorded();
        let mut state = self.lock_state();
        state.record_solo(key, unrecorded);
        state
    }

    /// Registers a new branch where branch `key` is, lossy if it is; returns
    /// the new branch's key and id.
    ///
    /// If branch `key` is the only live one and holds the upstream (see
    /// [`Solo`]), it gives it back first. Then the waker of its last poll of
    /// the upstream is returned too, if that poll returned `Pending`, for the
    /// caller to wake once it holds no lock: the upstream may know only that
    /// waker, and the fork may poll it first, with the fanout's.
    pub(crate) fn fork(&self, key: usize, solo: &mut Solo<S>) -> (usize, usize, Option<Waker>) {
        let mut state = self.lock_recorded(key, solo);
        let parked = solo.give_back().and_then(|(upstream, parked)| {
            state.upstream = Upstream::Idle(upstream);
            parked
        });
        let source = state.branches.get(key);
        let (position, lossy) = (source.position, source.lossy);
        let (fork, id) = state.branches.insert(position, lossy);
        let first_unread = state.index_of(position);
        for slot in state.slots.range_mut(first_unread..) {
            slot.unread_by += 1;
        }
        if state.is_full() && first_unread == 0 && !lossy {
            state.branches.get_mut(fork).start_stall(Instant::now());
        }
        (fork, id, parked)
    }

    /// Unregisters branch `key`: its unread slots are released and the
    /// branches waiting for the room this frees are woken.
    pub(crate) fn release(&self, key: usize) {
        let mut state = self.lock_state();
        let position = state.branches.remove(key).position;
        let first_unread = state.index_of(position);
        for slot in state.slots.range_mut(first_unread..) {
            slot.unread_by -= 1;
        }
        let mut freed = Vec::new();
        while state.slots.front().is_some_and(|slot| slot.unread_by == 0) {
            freed.extend(state.pop_front());
        }
        state.wake_if_room_can_be_made();
        let replaced = (state.waiting_for_room.remove(key), self.signal.remove(key));
        drop(state);
        drop(replaced);
        drop(freed);
    }

    /// Makes branch `key` lossy. If it held the oldest slot of a full
    /// buffer, the branches waiting for room may now make room by evicting
    /// that slot, so they are woken.
    pub(crate) fn make_lossy(&self, key: usize) {
        let mut state = self.lock_state();
        let record = state.branches.get_mut(key);
        record.lossy = true;
        record.end_stall(Instant::now());
        state.wake_if_room_can_be_made();
    }

    /// The position of the next item branch `key`, whose lone-branch state
    /// is `solo`, yields.
    pub(crate) fn position(&self, key: usize, solo: &mut Solo<S>) -> u64 {
        self.lock_recorded(key, solo).branches.get(key).position
    }

    /// The number of buffered items branch `key`, whose lone-branch state is
    /// `solo`, has not read.
    pub(crate) fn lag(&self, key: usize, solo: &mut Solo<S>) -> usize {
        let state = self.lock_recorded(key, solo);
        state.buffered_from(state.branches.get(key).position)
    }

    /// The bounds on the items branch `key`, whose lone-branch state is
    /// `solo`, has still to yield, and whether it has a gap to report first.
    pub(crate) fn size_hint(&self, key: usize, solo: &mut Solo<S>) -> (SizeHint, bool) {
        let state = self.lock_recorded(key, solo);
        let record = state.branches.get(key);
        let buffered = state.buffered_from(record.position);
        let (lower, upper) = match state.upstream {
            Upstream::Idle(_) | Upstream::Polling => state.upstream_hint,
            Upstream::Solo if solo.is_alone() => state.upstream_hint,
            // Taken by a lone branch that no longer holds it: it panicked.
            Upstream::Solo | Upstream::Done | Upstream::Panicked(_) => (0, Some(0)),
        };
        let hint = (
            lower.saturating_add(buffered),
            upper.and_then(|upper| upper.checked_add(buffered)),
        );
        (hint, record.unreported_missed > 0)
    }

    /// A snapshot of the fanout's statistics, taken by branch `key`, whose
    /// lone-branch state is `solo`.
    pub(crate) fn stats(&self, key: usize, solo: &mut Solo<S>) -> Stats {
        let now = Instant::now();
        let state = self.lock_recorded(key, solo);
        let end = state.pulled();
        let mut branches: Vec<_> = state
            .branches
            .iter()
            .map(|record| record.stats(end, now))
            .collect();
        branches.sort_unstable_by_key(|branch| branch.id);
        Stats {
            capacity: state.capacity,
            buffered: state.slots.len(),
            high_water: state.high_water,
            pulled: end,
            upstream_done: matches!(state.upstream, Upstream::Done),
            branches,
        }
    }
}

impl<S> Shared<S>
where
    S: Stream,
    S::Item: Clone,
{
    /// Polls the upstream for lone branch `key`, which holds it (see
    /// [`Solo`]).
    #[inline]
    pub(crate) fn poll_solo<D: Delivery<S::Item>>(
        &self,
        key: usize,
        solo: &mut Solo<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<D::Output>> {
        match solo.poll(cx) {
            SoloPoll::Polled(polled) => polled.map(|item| Some(D::item(item))),
            SoloPoll::Ended(upstream) => {
                self.lock_recorded(key, solo).upstream = Upstream::Done;
                drop(upstream);
                Poll::Ready(None)
            }
            SoloPoll::NotAlone => unreachable!("only a lone branch polls the upstream directly"),
        }
    }

    /// Polls for the next delivery to branch `key`, which does not hold the
    /// upstream (see [`Shared::poll_solo`]): from the buffer or the upstream.
    /// If it is the only live branch and nothing is buffered, it takes the
    /// upstream for good and polls it directly; `solo` keeps it.
    #[inline]
    pub(crate) fn poll_next<D: Delivery<S::Item>>(
        &self,
        key: usize,
        solo: &mut Solo<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<D::Output>> {
        let mut state = self.lock_state();
        let record = state.branches.get_mut(key);
        if record.unreported_missed > 0 {
            let missed = std::mem::take(&mut record.unreported_missed);
            return Poll::Ready(Some(D::missed(missed)));
        }
        let position = record.position;
        if let Some(item) = state.read(key, position) {
            drop(state);
            return Poll::Ready(Some(D::item(item)));
        }
        let alone = state.branches.len() == 1 && state.slots.is_empty();
        let replaced = match state.upstream {
            Upstream::Done => return Poll::Ready(None),
            Upstream::Panicked(ref mut payload) => {
                let payload = payload.take();
                drop(state);
                upstream_panicked(payload)
            }
            // Taken by a lone branch that no longer holds it: it panicked.
            Upstream::Solo => {
                drop(state);
                upstream_panicked(None)
            }
            Upstream::Polling => self.signal.park(key, cx.waker()),
            Upstream::Idle(_) if alone => {
                solo.take_over(state.take_upstream(Upstream::Solo));
                drop(state);
                return self.poll_solo::<D>(key, solo, cx);
            }
            Upstream::Idle(_) => match state.make_room() {
                Err(NoRoom) => state.waiting_for_room.register(key, cx.waker()),
                Ok(evicted) => {
                    let poll = UpstreamPoll {
                        shared: self,
                        upstream: Some(state.take_upstream(Upstream::Polling)),
                        started: false,
                        batch: std::mem::take(&mut state.spare_batch),
                        limit: state.room().min(MAX_BATCH),
                    };
                    self.signal.start_poll();
                    drop(state);
                    drop(evicted);
                    return self.poll_upstream::<D>(key, poll, solo, cx);
                }
            },
        };
        drop(state);
        drop(replaced);
        Poll::Pending
    }

    /// Polls the upstream, which branch `key` has taken out of the state, and
    /// puts it back (or records its end) with the batch it yielded. Once per
    /// batch: kept out of line, so that the path that reads a buffered item
    /// stays small.
    #[inline(never)]
    fn poll_upstream<D: Delivery<S::Item>>(
        &self,
        key: usize,
        mut poll: UpstreamPoll<'_, S>,
        solo: &mut Solo<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<D::Output>> {
        let end = poll.pull(&self.upstream_waker);
        let (upstream, batch) = poll.finish();

        let mut state = self.lock_state();
        let first = state.pulled();
        let pulled_any = !batch.is_empty();
        state.push_batch(batch);
        let retired = match end {
            BatchEnd::Limit(hint) | BatchEnd::Pending(hint) => {
                state.upstream_hint = hint;
                state.upstream = Upstream::Idle(upstream);
                None
            }
            BatchEnd::End => {
                state.upstream = Upstream::Done;
                Some(upstream)
            }
            BatchEnd::Panicked(payload) => {
                state.upstream = Upstream::Panicked(Some(payload));
                let fields = &mut *state;
                fields.waiting_for_room.move_all_to(&mut fields.due);
                Some(upstream)
            }
        };
        if pulled_any || retired.is_some() {
            self.signal.move_all_to(&mut state.due);
        }
        if let Some(upstream) = retired {
            // Dropped before the poller reads anything: if the drop panics,
            // the batch stays buffered for it too. Then it reads as any
            // branch does, from the buffer or the recorded end.
            drop(state);
            drop(upstream);
            return self.poll_next::<D>(key, solo, cx);
        }
        if pulled_any {
            state.start_stalls_if_full(key);
            let item = state
                .read(key, first)
                .expect("the poller reads the first item it pushed");
            drop(state);
            return Poll::Ready(Some(D::item(item)));
        }
        match self.signal.park_after_pending(key, cx.waker()) {
            AfterPending::Parked(replaced) => {
                drop(state);
                drop(replaced);
            }
            AfterPending::WokenDuringPoll(parked) => {
                state.due.append(parked);
                drop(state);
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}

impl<S: Stream> State<S> {
    /// The index in `slots` of `position`, which is a live branch's.
    fn index_of(&self, position: u64) -> usize {
        usize::try_from(position - self.head)
            .expect("a branch is at most `capacity` items past head")
    }

    /// Moves lone branch `key`, and the empty buffer, past the items it has
    /// yielded straight from the upstream, as [`Solo::take_unrecorded`]
    /// returned them (taken before the lock: it runs the upstream's
    /// `size_hint`).
    fn record_solo(&mut self, key: usize, (yielded, hint): (u64, Option<SizeHint>)) {
        if yielded == 0 && hint.is_none() {
            return;
        }
        debug_assert!(
            self.slots.is_empty(),
            "a lone branch leaves nothing buffered"
        );
        self.branches.get_mut(key).deliver(yielded);
        self.head += yielded;
        if let Some(hint) = hint {
            self.upstream_hint = hint;
        }
    }

    /// The number of buffered items at `position` or later.
    fn buffered_from(&self, position: u64) -> usize {
        self.slots.len() - self.index_of(position)
    }

    /// Items taken from the upstream so far: the position after the newest
    /// buffered item.
    fn pulled(&self) -> u64 {
        self.head + self.slots.len() as u64
    }

    fn is_full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    /// The items the buffer can take before it is full.
    fn room(&self) -> usize {
        self.capacity - self.slots.len()
    }

    /// Takes the idle upstream out of the state for a poll, leaving `taken`
    /// (`Polling` or `Solo`) in its place.
    fn take_upstream(&mut self, taken: Upstream<S>) -> Pin<Box<S>> {
        match std::mem::replace(&mut self.upstream, taken) {
            Upstream::Idle(upstream) => upstream,
            _ => unreachable!("only an idle upstream is taken for a poll"),
        }
    }

    /// Buffers the items of `batch`, each unread by every live branch, and
    /// keeps the emptied vector for the next batch.
    fn push_batch(&mut self, mut batch: Vec<S::Item>) {
        let unread_by = self.branches.len();
        self.slots
            .extend(batch.drain(..).map(|item| Slot { item, unread_by }));
        self.high_water = self.high_water.max(self.slots.len());
        self.spare_batch = batch;
    }

    /// Called when the buffer may have become full, after a push: the
    /// backpressure branches at the oldest position start stalling, but for
    /// branch `poller`, which is about to read past it. (Called before that
    /// read, so that a panicking `Clone` in it does not skip the others'
    /// stalls.) Lossy ones never hold the upstream back.
    fn start_stalls_if_full(&mut self, poller: usize) {
        if self.is_full() {
            let poller = self.branches.get(poller).id;
            let now = Instant::now();
            for record in self.branches.at_mut(self.head) {
                if !record.lossy && record.id != poller {
                    record.start_stall(now);
                }
            }
        }
    }

    /// Pops the oldest slot, returning its item. The branches waiting for
    /// room are due to be woken, and every stall ends.
    fn pop_front(&mut self) -> Option<S::Item> {
        if self.is_full() {
            let now = Instant::now();
            for record in self.branches.iter_mut() {
                record.end_stall(now);
            }
        }
        let slot = self.slots.pop_front()?;
        self.head += 1;
        self.waiting_for_room.move_all_to(&mut self.due);
        Some(slot.item)
    }

    /// Makes room for one more item if the buffer is full and only lossy
    /// branches hold its oldest slot: they give it up. Returns the item given
    /// up, to be dropped outside the lock.
    fn make_room(&mut self) -> Result<Option<S::Item>, NoRoom> {
        if !self.is_full() {
            return Ok(None);
        }
        if !self.only_lossy_at_head() {
            return Err(NoRoom);
        }
        for record in self.branches.at_mut(self.head) {
            record.give_up_next();
        }
        Ok(self.pop_front())
    }

    /// Whether every branch at the oldest position is lossy, so that a branch
    /// that needs room may evict the oldest slot.
    fn only_lossy_at_head(&self) -> bool {
        self.branches.at(self.head).all(|record| record.lossy)
    }

    /// Wakes the branches waiting for room if they no longer have to: the
    /// buffer is full, but only lossy branches hold its oldest slot.
    fn wake_if_room_can_be_made(&mut self) {
        if self.is_full() && self.only_lossy_at_head() {
            self.waiting_for_room.move_all_to(&mut self.due);
        }
    }
}

impl<S> State<S>
where
    S: Stream,
    S::Item: Clone,
{
    /// Reads the next item for branch `key`, at `position`, if it is
    /// buffered: a clone, or the item itself for its last reader, which frees
    /// its slot.
    #[inline]
    fn read(&mut self, key: usize, position: u64) -> Option<S::Item> {
        let index = self.index_of(position);
        let slot = self.slots.get_mut(index)?;
        let item = if slot.unread_by > 1 {
            // Cloned before anything changes, so a panicking `Clone` leaves
            // the state as it was.
            let item = slot.item.clone();
            slot.unread_by -= 1;
            item
        } else {
            debug_assert_eq!(index, 0, "only the oldest slot can have one reader left");
            self.pop_front()?
        };
        self.branches.get_mut(key).deliver_next();
        if index == 0 && self.is_full() {
            // It left the oldest position of a full buffer without freeing
            // the slot: its stall ends, and the branches still there may all
            // be lossy now.
            self.branches.get_mut(key).end_stall(Instant::now());
            self.wake_if_room_can_be_made();
        }
        Some(item)
    }
}

/// Panics in a branch that has read everything the upstream yielded before
/// it panicked: with the upstream's own `payload` if this branch is the
/// first to get it (see [`Upstream::Panicked`]), else with a message that
/// says what happened.
fn upstream_panicked(payload: Option<PanicPayload>) -> ! {
    if let Some(payload) = payload {
        resume_unwind(payload);
    }
    panic!("fanout: the upstream stream panicked while another branch polled it; every item it yielded before has been delivered to this branch");
}

/// Why a poll of the upstream stopped pulling items.
enum BatchEnd {
    /// The batch is as large as the room allowed. Holds the upstream's
    /// latest `size_hint`.
    Limit(SizeHint),
    /// The upstream returned `Pending`. Holds its latest `size_hint`.
    Pending(SizeHint),
    /// The upstream returned `None`.
    End,
    /// The upstream panicked after it had yielded the first item of the
    /// batch; holds the panic's payload.
    Panicked(PanicPayload),
}

/// The upstream while one branch polls it, and the batch of items it has
/// yielded so far.
///
/// If the first `poll_next` panics, the panic reaches the poller at once,
/// and the drop of this guard marks the upstream as panicked, wakes every
/// waiting branch, so that none of them waits for a poll that will never
/// end, and drops the upstream. A panic in a later `poll_next` of the same
/// batch is caught instead (see [`BatchEnd::Panicked`]), so that the items
/// yielded before it are buffered and reach every branch first. If
/// something else panics before the first poll (the drop of an evicted
/// item), the guard puts the upstream back, and wakes the branches waiting
/// for it, so that one of them polls it.
struct UpstreamPoll<'a, S: Stream> {
    shared: &'a Shared<S>,
    /// `Some` until the poll returns normally.
    upstream: Option<Pin<Box<S>>>,
    /// The upstream's `poll_next` has been called.
    started: bool,
    /// The items yielded by this poll, at most `limit`.
    batch: Vec<S::Item>,
    /// The room the buffer had when the poll started, capped by
    /// [`MAX_BATCH`]. At least 1.
    limit: usize,
}

impl<S: Stream> UpstreamPoll<'_, S> {
    /// Polls the upstream until it has yielded `limit` items, returned
    /// `Pending`, ended or panicked after the first item.
    fn pull(&mut self, waker: &Waker) -> BatchEnd {
        let upstream = self.upstream.as_mut().expect("polled once");
        self.started = true;
        let mut cx = Context::from_waker(waker);
        let batch = &mut self.batch;
        if let Some(end) = pull_one(upstream, &mut cx, batch) {
            return end;
        }
        let limit = self.limit;
        let rest = catch_unwind(AssertUnwindSafe(|| {
            while batch.len() < limit {
                if let Some(end) = pull_one(upstream, &mut cx, batch) {
                    return end;
                }
            }
            BatchEnd::Limit(upstream.size_hint())
        }));
        rest.unwrap_or_else(BatchEnd::Panicked)
    }

    fn finish(mut self) -> (Pin<Box<S>>, Vec<S::Item>) {
        let upstream = self.upstream.take().expect("finished once");
        (upstream, std::mem::take(&mut self.batch))
    }
}

/// Polls `upstream` once: pushes the item it yields onto `batch`, or
/// returns why the batch ends there.
fn pull_one<S: Stream>(
    upstream: &mut Pin<Box<S>>,
    cx: &mut Context<'_>,
    batch: &mut Vec<S::Item>,
) -> Option<BatchEnd> {
    match upstream.as_mut().poll_next(cx) {
        Poll::Ready(Some(item)) => {
            batch.push(item);
            None
        }
        Poll::Ready(None) => Some(BatchEnd::End),
        Poll::Pending => Some(BatchEnd::Pending(upstream.size_hint())),
    }
}

impl<S: Stream> Drop for UpstreamPoll<'_, S> {
    fn drop(&mut self) {
        let Some(upstream) = self.upstream.take() else {
            return;
        };
        let mut state = self.shared.lock_state();
        let panicked = if self.started {
            state.upstream = Upstream::Panicked(None);
            Some(upstream)
        } else {
            state.upstream = Upstream::Idle(upstream);
            None
        };
        let fields = &mut *state;
        fields.waiting_for_room.move_all_to(&mut fields.due);
        self.shared.signal.move_all_to(&mut fields.due);
        drop(state);
        drop(panicked);
    }
}

/// The state lock, held. Releasing it, by drop or by the unwinding of a
/// panic, first unlocks and then wakes the wakers that became due under it.
struct Locked<'a, S: Stream>(Option<MutexGuard<'a, State<S>>>);

impl<S: Stream> Deref for Locked<'_, S> {
    type Target = State<S>;

    fn deref(&self) -> &State<S> {
        self.0.as_ref().expect("the lock is held until dropped")
    }
}

impl<S: Stream> DerefMut for Locked<'_, S> {
    fn deref_mut(&mut self) -> &mut State<S> {
        self.0.as_mut().expect("the lock is held until dropped")
    }
}

impl<S: Stream> Drop for Locked<'_, S> {
    fn drop(&mut self) {
        let Some(mut state) = self.0.take() else {
            return;
        };
        if state.due.is_empty() {
            return;
        }
        let due = std::mem::take(&mut state.due);
        drop(state);
        due.wake();
    }
}
