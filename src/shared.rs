//! The one bounded buffer that all branches of a fanout share.
//!
//! # Algorithm
//!
//! Items are numbered by *position*, 0 for the first item the upstream
//! yields. Each branch's record in the [`Registry`] keeps the position of the
//! next item it takes. The buffer holds the items from `head` (the oldest
//! position some live branch has not taken, or the oldest kept for replay)
//! up to `head + slots.len()` (the next position the upstream will yield),
//! and each slot counts the live branches that have not taken it yet.
//!
//! # Branches that come and go
//!
//! A branch can join at any time ([`Shared::subscribe`]): it is registered
//! at the end of the buffer, the live edge, so it holds no slot, and its
//! first item is the first one a poll of the upstream pushes after that
//! (a poll in flight included). A fanout made to replay keeps the latest
//! `replay` items pulled even once every branch has read them: slots with
//! `unread_by == 0`, always at the front, since `unread_by` never decreases
//! from front to back. A new branch starts at the oldest of them still
//! held, so it takes them first. Kept slots count in the occupancy like any
//! slot, but a branch that needs room evicts the oldest of them (step 4 below)
//! rather than wait; the last reader of an item in the replay window clones
//! it rather than take it by move; and a slot that falls out of the window
//! with nobody left to read it is freed ([`State::pop_unneeded`]). Without
//! replay, every slot has `unread_by >= 1`.
//!
//! A branch takes items in batches, under one lock, into its
//! [`ReadAhead`](crate::read_ahead::ReadAhead),
//! and yields them from there without the lock. Taking an item clones it,
//! or, for the last branch to take it, moves it out of the buffer: the slot
//! is then the oldest one (every other branch has passed it, and slots only
//! get older towards the front), and it is popped.
//!
//! # The memory bound
//!
//! The *occupancy* counts every item alive inside the crate, and the room
//! set aside for some: the buffered slots; each branch's *allotment*, which
//! covers its *reservation* (its read-ahead, counted until it next takes the
//! lock, which it does at the latest when it yields the last item of it)
//! and the room of the item it yielded last, while it holds more; and the
//! items freed under the lock and being dropped outside it. Invariant,
//! whenever the lock is free: occupancy `<= capacity`.
//!
//! - A move into a read-ahead turns a slot into a reservation: no change.
//! - A clone into a read-ahead is taken only within the branch's allotment
//!   and half the free room ([`State::clone_budget`]); but the first item of
//!   a poll that has nothing ahead is always taken: it is yielded at once,
//!   without a reservation.
//! - The upstream is polled only with free room, for at most that many
//!   items ([`batch_limit`]), and that room stays set aside while the poll
//!   is in flight (`pulling`), so that the branches taking clones meanwhile
//!   cannot fill it too; the poller keeps clones of its batch within half of
//!   the room that is left, and the buffer gets the rest.
//! - A branch keeps the allotment of its batch while it holds items, so
//!   that its next batch is as large (it is never larger than what it held
//!   plus one), and has none once it holds nothing: room is never set aside
//!   for a branch that holds nothing, so a fast branch runs exactly
//!   `capacity` items ahead of the slowest when no other branch holds
//!   read-ahead.
//! - A fork gets a clone of its original's read-ahead, reserved like any
//!   read-ahead: the one place where the occupancy may pass the capacity
//!   (by that read-ahead, at most a batch), because the fork needs its own
//!   copy and taking the original's back would cost it a second clone. Then
//!   the occupancy does not grow until it is below the capacity again:
//!   nobody pulls, and a branch clones ahead only within the allotment it
//!   already has. A branch turned lossy keeps its read-ahead, yields it first, and
//!   takes nothing ahead from then on.
//! - Freed items (a dropped branch's read-ahead and the slots only it had
//!   left to read, items that lossy branches give up, kept items evicted or
//!   pushed out of the replay window by a batch) stay counted until they
//!   are dropped ([`Freed`]): room is never reused before the item that
//!   held it is gone, not even by the batch that pushed it out.
//!
//! The slowest lossless branch has yielded at least its position minus its
//! reservation, so the upstream is never polled more than `capacity` items
//! past what it has yielded.
//!
//! # What a poll does
//!
//! A branch with two or more items ahead yields one, without the lock. With
//! one left, it takes the lock, takes more if it can, and yields it; so it
//! never keeps a reservation for items it has yielded. With none, under the
//! lock:
//!
//! 1. A buffered item for it: it takes a batch, and yields the first.
//! 2. At the end of the buffer, the upstream being polled by another
//!    branch: it waits for the upstream (see [`UpstreamSignal`]).
//! 3. At the end, with free room: it takes the upstream out of the state,
//!    releases the lock, and polls it itself, with the fanout's own waker,
//!    for a batch ([`UpstreamPoll`]), straight into its read-ahead. Under the
//!    lock again, it keeps the items it has room for, and the buffer gets a
//!    clone of each for the other branches, and the items it does not keep
//!    ([`State::push_pulled`]); alone, it keeps them all and the buffer gets
//!    nothing. If the upstream returned `Pending` before yielding anything,
//!    the poller waits for it like case 2.
//! 4. At the end of a full buffer whose oldest slot is kept only for
//!    replay, or held only by lossy branches: it is evicted (each of those
//!    branches counts one missed item and moves past it), and the poll
//!    starts again once the item is dropped.
//! 5. At the end of a full buffer otherwise: it waits for room.
//!
//! So the upstream is polled by one branch at a time, and never with a lock
//! held: it may wake its waker, and so any branch, from inside `poll_next`.
//!
//! # Wake-ups: who is woken, and by whom
//!
//! | event | who is woken | the one place |
//! |---|---|---|
//! | room frees up: a reservation released, a slot popped, freed items dropped, a branch dropped or forked | branches waiting for room | [`State::settle`], on every release of the lock |
//! | only lossy branches hold the oldest slot of a full buffer (a backpressure branch read past it, was dropped, or turned lossy), or nobody but the replay does | branches waiting for room | [`State::settle`] |
//! | the upstream ends, or its poll panics | branches waiting for room | [`State::settle`] |
//! | a batch is pushed; the upstream ends; its poll panics | branches waiting for the upstream | [`State::upstream_returned`] |
//! | the upstream wakes its waker | branches waiting for the upstream | [`UpstreamSignal`]'s `wake` |
//! | a branch subscribes | nobody: it frees no room, and holds only slots kept for replay, which nobody waits for | |
//!
//! (A branch that waits for room waits for the occupancy to drop, and every
//! change of the occupancy happens under the lock, so the first row covers
//! allotments shrinking and freed items uncounted.)
//!
//! A branch that waits registers its waker under the same lock under which
//! it saw the reason to wait, and every change of that reason happens under
//! the lock too, so [`State::settle`], which runs on every release of the
//! state lock, sees it: no wake-up falls between the two. Branches waiting
//! for room are woken only while the upstream is not being polled (a poll
//! ends under the lock, and its release wakes them then if room is left),
//! so a waiter is woken when there is room it can use, once per release
//! rather than once per item.
//!
//! # Locks
//!
//! There are two locks: the state lock here, and the lock of the
//! [`UpstreamSignal`], which may be taken while the state lock is held but
//! never the other way round. (A branch's read-ahead lock is taken before
//! the state lock, never after.) Wakers are registered under these locks,
//! but they are woken, and the wakers or items they replace dropped, only
//! after both are released, because waking a waker or dropping an item runs
//! foreign code that may poll or drop a branch of this fanout. The state lock
//! is held through [`Locked`], which collects the wakers that are due and
//! wakes them when it releases the lock, also when a panic (in an item's
//! `Clone`, say) unwinds through it: a waker taken out of a list is always
//! woken.
//!
//! # Statistics
//!
//! Counters (items taken and missed, the high-water mark) are updated under
//! the lock that is held anyway. A backpressure branch *stalls* the upstream
//! while the buffer is full and it is at the oldest slot; [`State::settle`]
//! starts and ends stalls (see [`Stall`](crate::stall::Stall)), and reads
//! the clock only when one starts or ends.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_core::Stream;

use crate::registry::Registry;
use crate::stats::Stats;
use crate::sync::{lock, Mutex, MutexGuard};
use crate::upstream::{
    upstream_panicked, BatchEnd, PanicPayload, SizeHint, Upstream, UpstreamPoll,
};
use crate::upstream_signal::{AfterPending, UpstreamSignal};
use crate::waiters::{Waiters, Wakeups};

/// The most items a branch takes ahead, or pulls from the upstream, in one
/// batch, however much room there is: enough to spread the cost of the lock
/// over many items, few enough that the branches waiting for the upstream do
/// not wait long for the first of them.
const MAX_BATCH: usize = 32;

/// The most items a branch that is the only live one pulls from the
/// upstream in one poll: nobody waits for them, so the batch can be larger.
const LONE_BATCH: usize = 128;

/// [`batch_limit`] for a branch that is the only live one: a quarter of the
/// capacity too (what a fork of it copies), up to [`LONE_BATCH`].
#[inline]
fn lone_batch_limit(capacity: usize) -> usize {
    (capacity / 4).clamp(1, LONE_BATCH)
}

/// The most items a branch takes in one batch, from the buffer or the
/// upstream, with a buffer of `capacity`: [`MAX_BATCH`], but at most a
/// quarter of the capacity, because a branch's read-ahead holds room that
/// the others cannot use until it has yielded it.
#[inline]
fn batch_limit(capacity: usize) -> usize {
    (capacity / 4).clamp(1, MAX_BATCH)
}

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
    /// The most items alive at once. At least 1. (A copy of
    /// `State::capacity`, readable without the lock.)
    capacity: usize,
    /// How the upstream is pulled.
    pull: Pull,
    state: Mutex<State<S>>,
    /// Branches waiting for the upstream; the upstream's waker wakes them.
    signal: std::sync::Arc<UpstreamSignal>,
    /// The waker the upstream is always polled with; it wakes `signal`.
    upstream_waker: Waker,
}

struct State<S: Stream> {
    /// The buffered items, oldest first. Invariants: `unread_by` never
    /// decreases from front to back; a slot with `unread_by == 0` is kept
    /// for replay: it is one of the last `replay` items pulled.
    slots: VecDeque<Slot<S::Item>>,
    capacity: usize,
    /// How many of the latest items pulled are kept for branches that
    /// subscribe later, even once every branch has read them.
    replay: usize,
    /// The position of `slots[0]`: every live branch is at `head` or later,
    /// and at `head + slots.len()` at the latest.
    head: u64,
    /// The live branches. A slot's `unread_by` is the number of them at its
    /// position or before.
    branches: Registry,
    /// The sum of the branches' reservations.
    reserved: usize,
    /// The sum of the branches' allotments: at least `reserved`.
    allotted: usize,
    /// Items freed under the lock and not dropped yet (see [`Freed`]).
    dropping: usize,
    /// The most items the poll of the upstream in flight may push: room
    /// that other branches may not fill with clones meanwhile.
    pulling: usize,
    upstream: Upstream<S>,
    /// The upstream's `size_hint` after its latest poll.
    upstream_hint: SizeHint,
    /// The most items ever held at once, buffered or read ahead.
    high_water: usize,
    /// What the stalls were last set for: `Some(head)` if the buffer was
    /// full, `None` if it was not.
    stalls_set_for: Option<u64>,
    /// A branch left the oldest slot, or the branches changed, since the
    /// stalls were last set.
    stalls_outdated: bool,
    /// Branches at the end of a full buffer.
    waiting_for_room: Waiters,
    /// Wakers taken out of a list under this lock, to be woken when it is
    /// released. Empty whenever the lock is free (see [`Locked`]).
    due: Wakeups,
}

/// One buffered item.
struct Slot<T> {
    item: T,
    /// The live branches that have not taken this item yet: those at its
    /// position or before.
    unread_by: usize,
}

/// How many items one poll of the upstream may pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pull {
    /// As many as it has ready, up to the free room and a batch: for
    /// streams, whose `Pending` ends a batch.
    Batches,
    /// One: for iterators, whose `next` may block, so that every item
    /// reaches the other branches before the next one is asked for.
    OneAtATime,
}

/// What a branch at the end of the buffer can do about the upstream.
enum Room {
    /// Poll it: there is this much room.
    Pull(usize),
    /// Nothing yet: the buffer is full, and backpressure branches hold it.
    Full,
    /// Make room first: only lossy branches hold the oldest slot.
    Evict,
}

impl<S: Stream> Shared<S> {
    /// Wraps `upstream` for `branches` branches with keys and ids
    /// `0..branches`, keeping the latest `replay` items pulled for branches
    /// that subscribe later, to be pulled as `pull` says. Polls nothing.
    pub(crate) fn new(
        upstream: S,
        branches: usize,
        capacity: usize,
        replay: usize,
        pull: Pull,
    ) -> Self {
        debug_assert!(replay <= capacity);
        let (signal, upstream_waker) = UpstreamSignal::new();
        let upstream_hint = upstream.size_hint();
        Self {
            capacity,
            pull,
            state: Mutex::new(State {
                slots: VecDeque::new(),
                capacity,
                replay,
                head: 0,
                branches: Registry::new(branches),
                reserved: 0,
                allotted: 0,
                dropping: 0,
                pulling: 0,
                upstream: Upstream::Idle(Box::pin(upstream)),
                upstream_hint,
                high_water: 0,
                stalls_set_for: None,
                stalls_outdated: false,
                waiting_for_room: Waiters::default(),
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

    /// Locks the state for branch `key`, which holds `ahead` items ahead:
    /// its reservation becomes exact.
    fn lock_for(&self, key: usize, ahead: usize) -> Locked<'_, S> {
        let mut state = self.lock_state();
        state.sync_reservation(key, ahead);
        state
    }

    /// Unregisters branch `key`, whose read-ahead was `ahead`: its read-ahead
    /// and the slots only it had left to read are dropped, and the room they
    /// held is free once they are.
    pub(crate) fn release(&self, key: usize, ahead: VecDeque<S::Item>) {
        let mut state = self.lock_for(key, ahead.len());
        let record = state.branches.remove(key);
        state.stalls_outdated = true;
        state.reserved -= record.reserved;
        state.allotted -= record.allotment;
        let mut freed = Vec::from(ahead);
        let first_unread = state.index_of(record.position);
        for slot in state.slots.range_mut(first_unread..) {
            slot.unread_by -= 1;
        }
        let end = state.pulled();
        state.pop_unneeded(end, &mut freed);
        state.dropping += freed.len();
        let freed = Freed::new(self, freed);
        let replaced = (state.waiting_for_room.remove(key), self.signal.remove(key));
        drop(state);
        drop(replaced);
        drop(freed);
    }

    /// Makes branch `key`, with `ahead` items read ahead, lossy. It yields
    /// those first, and takes no more ahead.
    pub(crate) fn make_lossy(&self, key: usize, ahead: usize) {
        let mut state = self.lock_for(key, ahead);
        state.branches.make_lossy(key);
        state.stalls_outdated = true;
    }

    /// The position of the next item branch `key`, with `ahead` items ahead,
    /// yields.
    pub(crate) fn position(&self, key: usize, ahead: usize) -> u64 {
        self.lock_for(key, ahead).branches.get(key).position - ahead as u64
    }

    /// The number of items branch `key`, with `ahead` items ahead, has not
    /// yielded yet, of those taken from the upstream.
    pub(crate) fn lag(&self, key: usize, ahead: usize) -> usize {
        let state = self.lock_for(key, ahead);
        state.buffered_from(state.branches.get(key).position) + ahead
    }

    /// The bounds on the items branch `key`, with `ahead` items ahead, has
    /// still to yield, and whether it has a gap to report first.
    pub(crate) fn size_hint(&self, key: usize, ahead: usize) -> (SizeHint, bool) {
        let state = self.lock_for(key, ahead);
        let record = state.branches.get(key);
        let held = state.buffered_from(record.position) + ahead;
        let (lower, upper) = match state.upstream {
            Upstream::Idle(_) | Upstream::Polling => state.upstream_hint,
            Upstream::Done | Upstream::Panicked(_) => (0, Some(0)),
        };
        let hint = (
            lower.saturating_add(held),
            upper.and_then(|upper| upper.checked_add(held)),
        );
        (hint, record.unreported_missed > 0)
    }

    /// Registers a new lossless branch at the live edge, or, with replay, at
    /// the oldest item still kept for it; returns its key and id.
    pub(crate) fn subscribe(&self) -> (usize, usize) {
        let mut state = self.lock_state();
        let start = state.replay_start(state.pulled()).max(state.head);
        let (key, id) = state.branches.subscribe(start);
        state.add_reader_at(start);
        (key, id)
    }

    /// The number of live branches.
    pub(crate) fn branches(&self) -> usize {
        self.lock_state().branches.len()
    }

    /// A snapshot of the fanout's statistics, taken by branch `key`, with
    /// `ahead` items ahead.
    pub(crate) fn stats(&self, key: usize, ahead: usize) -> Stats {
        let now = Instant::now();
        State::stats(&self.lock_for(key, ahead), now)
    }

    /// A snapshot of the fanout's statistics, taken from outside any branch.
    pub(crate) fn stats_outside(&self) -> Stats {
        let now = Instant::now();
        State::stats(&self.lock_state(), now)
    }

    /// Records that the first `poll_next` of a batch panicked: the upstream,
    /// taken out for the poll, is dropped, and every waiting branch is woken
    /// to find out.
    pub(crate) fn first_poll_panicked(&self, upstream: std::pin::Pin<Box<S>>) {
        let mut state = self.lock_state();
        state.pulling = 0;
        state.upstream = Upstream::Panicked(None);
        state.upstream_returned(&self.signal);
        drop(state);
        drop(upstream);
    }
}

impl<S> Shared<S>
where
    S: Stream,
    S::Item: Clone,
{
    /// Registers a new branch where branch `key`, with read-ahead `ahead`,
    /// is, lossy if it is; returns the new branch's key and id, and its
    /// read-ahead: a clone of `ahead`. The clones count against the capacity
    /// like any read-ahead, beyond it if there is not room for them (by at
    /// most one batch, until the branches yield them): the fork needs its
    /// own copy of those items, and taking them back from `ahead` would
    /// cost the original a second clone of each.
    pub(crate) fn fork(
        &self,
        key: usize,
        ahead: &VecDeque<S::Item>,
    ) -> (usize, usize, VecDeque<S::Item>) {
        let mut state = self.lock_for(key, ahead.len());
        // Cloned before anything changes, so a panicking `Clone` leaves the
        // state as it was.
        let copy: VecDeque<S::Item> = ahead.iter().cloned().collect();
        let position = state.branches.get(key).position;
        // A fork starts where its original is, past any gap that the original
        // has yet to report, with no gap of its own; but a fork that starts
        // with a copy of read-ahead reports the gap after it, as its
        // original does, rather than skip it silently.
        let (fork, id) = state.branches.fork(key, !copy.is_empty());
        state.add_reader_at(position);
        // Its position is the original's, past the read-ahead it copies.
        state.branches.get_mut(fork).taken = copy.len() as u64;
        state.reserve(fork, copy.len());
        (fork, id, copy)
    }

    /// Yields the last item of branch `key`'s read-ahead, `ahead`, after
    /// taking the next batch behind it if there is one: so the branch holds
    /// no reservation for items it has yielded.
    #[inline(never)]
    pub(crate) fn take_last(&self, key: usize, ahead: &mut VecDeque<S::Item>) -> S::Item {
        let mut state = self.lock_for(key, ahead.len());
        state.take_ahead(key, ahead);
        let item = ahead
            .pop_front()
            .expect("the read-ahead holds its last item");
        state.unreserve_one(key);
        item
    }

    /// Polls for the next delivery to branch `key`, whose read-ahead `ahead`
    /// is empty: from the buffer or the upstream.
    #[inline(never)]
    pub(crate) fn poll_next<D: Delivery<S::Item>>(
        &self,
        key: usize,
        ahead: &mut VecDeque<S::Item>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<D::Output>> {
        debug_assert!(ahead.is_empty());
        loop {
            let mut state = self.lock_for(key, 0);
            let record = state.branches.get_mut(key);
            if record.unreported_missed > 0 {
                let missed = std::mem::take(&mut record.unreported_missed);
                return Poll::Ready(Some(D::missed(missed)));
            }
            if let Some(item) = state.read(key, ahead) {
                drop(state);
                return Poll::Ready(Some(D::item(item)));
            }
            let replaced = match state.upstream {
                Upstream::Done => return Poll::Ready(None),
                Upstream::Panicked(ref mut payload) => {
                    let payload = payload.take();
                    drop(state);
                    upstream_panicked(payload)
                }
                Upstream::Polling => self.signal.park(key, cx.waker()),
                Upstream::Idle(_) => match state.room_to_pull() {
                    Room::Pull(room) => {
                        let limit = match self.pull {
                            Pull::OneAtATime => 1,
                            Pull::Batches if state.branches.len() == 1 => {
                                room.min(lone_batch_limit(self.capacity))
                            }
                            Pull::Batches => room.min(batch_limit(self.capacity)),
                        };
                        state.pulling = limit;
                        let poll = UpstreamPoll::new(self, state.take_upstream(), limit);
                        self.signal.start_poll();
                        drop(state);
                        return self.poll_upstream::<D>(key, poll, ahead, cx);
                    }
                    Room::Evict => {
                        let evicted = state.evict_head();
                        let evicted = Freed::new(self, evicted);
                        drop(state);
                        drop(evicted);
                        continue;
                    }
                    Room::Full => state.waiting_for_room.register(key, cx.waker()),
                },
            };
            drop(state);
            drop(replaced);
            return Poll::Pending;
        }
    }

    /// Polls the upstream, which branch `key` has taken out of the state,
    /// into its read-ahead `ahead`, and puts it back (or records its end)
    /// with the batch it yielded.
    fn poll_upstream<D: Delivery<S::Item>>(
        &self,
        key: usize,
        poll: UpstreamPoll<'_, S>,
        ahead: &mut VecDeque<S::Item>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<D::Output>> {
        let (upstream, end) = poll.pull(&self.upstream_waker, ahead);

        let mut state = self.lock_state();
        state.pulling = 0;
        let pulled = ahead.len();
        let mut expired = Vec::new();
        let cloned = state.push_pulled(key, ahead, &mut expired);
        // Counted by `push_pulled`; dropped after the lock is released, on
        // every path below.
        let expired = Freed::new(self, expired);
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
                Some(upstream)
            }
        };
        if pulled > 0 || retired.is_some() {
            state.upstream_returned(&self.signal);
        }
        if let Err(payload) = cloned {
            drop(state);
            drop(retired);
            resume_unwind(payload);
        }
        if let Some(upstream) = retired {
            // Dropped before the poller yields anything: if the drop panics,
            // the batch stays in its read-ahead. (Its reservation stays one
            // too high until its next lock: nobody can pull any more.)
            drop(state);
            drop(expired);
            drop(upstream);
            return match ahead.pop_front() {
                Some(item) => Poll::Ready(Some(D::item(item))),
                None => self.poll_next::<D>(key, ahead, cx),
            };
        }
        if let Some(item) = ahead.pop_front() {
            state.unreserve_one(key);
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

    /// The number of buffered items at `position` or later.
    fn buffered_from(&self, position: u64) -> usize {
        self.slots.len() - self.index_of(position)
    }

    /// Items taken from the upstream so far: the position after the newest
    /// buffered item.
    fn pulled(&self) -> u64 {
        self.head + self.slots.len() as u64
    }

    /// Items alive inside the crate (see the module docs).
    fn occupancy(&self) -> usize {
        self.slots.len() + self.allotted + self.dropping
    }

    fn is_full(&self) -> bool {
        self.occupancy() >= self.capacity
    }

    /// The items that can be added before the buffer is full, besides
    /// those that the poll in flight may push.
    fn room(&self) -> usize {
        self.capacity
            .saturating_sub(self.occupancy() + self.pulling)
    }

    /// Sets branch `key`'s reservation to `ahead`, the items it holds now:
    /// those it has yielded since it last held the lock are released.
    fn sync_reservation(&mut self, key: usize, ahead: usize) {
        let record = self.branches.get_mut(key);
        debug_assert!(
            ahead <= record.reserved,
            "a reservation covers the read-ahead"
        );
        self.reserved -= record.reserved - ahead;
        record.reserved = ahead;
    }

    /// Branch `key` is about to yield one item of its read-ahead, just
    /// taken: its allotment keeps the room of its batch, so that its next
    /// batch can be as large, but none once it holds nothing.
    fn unreserve_one(&mut self, key: usize) {
        let record = self.branches.get_mut(key);
        record.reserved -= 1;
        self.reserved -= 1;
        let held = record.reserved;
        self.set_allotment(key, if held == 0 { 0 } else { held + 1 });
    }

    /// Counts `count` items just put into branch `key`'s read-ahead in its
    /// reservation, growing its allotment to cover them.
    fn reserve(&mut self, key: usize, count: usize) {
        let record = self.branches.get_mut(key);
        record.reserved += count;
        self.reserved += count;
        if record.reserved > record.allotment {
            self.allotted += record.reserved - record.allotment;
            record.allotment = record.reserved;
        }
    }

    /// Sets branch `key`'s allotment, which must cover its reservation.
    fn set_allotment(&mut self, key: usize, allotment: usize) {
        let record = self.branches.get_mut(key);
        debug_assert!(allotment >= record.reserved);
        self.allotted = self.allotted - record.allotment + allotment;
        record.allotment = allotment;
    }

    /// Takes the idle upstream out of the state for a poll.
    fn take_upstream(&mut self) -> std::pin::Pin<Box<S>> {
        match std::mem::replace(&mut self.upstream, Upstream::Polling) {
            Upstream::Idle(upstream) => upstream,
            _ => unreachable!("only an idle upstream is taken for a poll"),
        }
    }

    /// A poll of the upstream returned items, its end or a panic: the
    /// branches waiting for it are due to be woken.
    fn upstream_returned(&mut self, signal: &UpstreamSignal) {
        signal.move_all_to(&mut self.due);
    }

    /// Pops the oldest slot, returning its item.
    fn pop_slot(&mut self) -> Option<S::Item> {
        let slot = self.slots.pop_front()?;
        self.head += 1;
        Some(slot.item)
    }

    /// A new branch, just registered at `position`, has the slots from there
    /// on still to read.
    fn add_reader_at(&mut self, position: u64) {
        self.stalls_outdated = true;
        let first_unread = self.index_of(position);
        for slot in self.slots.range_mut(first_unread..) {
            slot.unread_by += 1;
        }
    }

    /// The oldest position kept for replay once `end` items are pulled.
    fn replay_start(&self, end: u64) -> u64 {
        end.saturating_sub(self.replay as u64)
    }

    /// Pops, into `freed`, the oldest slots that every branch has read and
    /// that are not kept for replay once `end` items are pulled.
    fn pop_unneeded(&mut self, end: u64, freed: &mut Vec<S::Item>) {
        let replay_start = self.replay_start(end);
        while self.head < replay_start && self.slots.front().is_some_and(|slot| slot.unread_by == 0)
        {
            freed.extend(self.pop_slot());
        }
    }

    /// A snapshot of the statistics, taken at `now`.
    fn stats(&self, now: Instant) -> Stats {
        let end = self.pulled();
        let mut branches: Vec<_> = self
            .branches
            .iter()
            .map(|record| record.stats(end, now))
            .collect();
        branches.sort_unstable_by_key(|branch| branch.id);
        Stats {
            capacity: self.capacity,
            buffered: self.slots.len(),
            kept_for_replay: self.kept_for_replay(),
            read_ahead: self.reserved,
            high_water: self.high_water,
            pulled: end,
            upstream_done: matches!(self.upstream, Upstream::Done),
            branches,
        }
    }

    /// The buffered items that every branch has read, kept for replay.
    fn kept_for_replay(&self) -> usize {
        self.slots
            .iter()
            .take_while(|slot| slot.unread_by == 0)
            .count()
    }

    /// What a branch at the end of the buffer may do about the upstream.
    fn room_to_pull(&self) -> Room {
        match self.room() {
            0 if self.head_is_evictable() => Room::Evict,
            0 => Room::Full,
            room => Room::Pull(room),
        }
    }

    /// Whether a branch that needs room may evict the oldest slot: it is
    /// kept only for replay, or every branch at it is lossy.
    fn head_is_evictable(&self) -> bool {
        match self.slots.front() {
            None => false,
            Some(slot) if slot.unread_by == 0 => true,
            Some(_) => {
                self.branches.any_lossy() && self.branches.at(self.head).all(|record| record.lossy)
            }
        }
    }

    /// The oldest slot is evicted, and the lossy branches at it, if any,
    /// give it up. Returns its item, counted until it is dropped.
    fn evict_head(&mut self) -> Vec<S::Item> {
        for record in self.branches.at_mut(self.head) {
            record.give_up_next();
        }
        let evicted: Vec<_> = self.pop_slot().into_iter().collect();
        self.dropping += evicted.len();
        evicted
    }

    /// The most clones branch `key` may take ahead now, beyond the first
    /// item of a poll: the unused part of its allotment (less what the
    /// occupancy is past the capacity), and half the free room, so that the
    /// read-ahead shrinks as the buffer fills and leaves room for the
    /// others.
    fn clone_budget(&self, key: usize) -> usize {
        let record = self.branches.get(key);
        // Past the capacity (after a fork), the allotment gives up the excess
        // first, so that the occupancy comes back within the capacity.
        let excess = self.occupancy().saturating_sub(self.capacity);
        (record.allotment - record.reserved).saturating_sub(excess) + self.room() / 2
    }

    /// Runs whenever the lock is released (see [`Locked`]): keeps the
    /// high-water mark and the stalls, and wakes the branches waiting for
    /// room if they can use what there is now. The one place where they are
    /// woken.
    fn settle(&mut self) {
        self.high_water = self.high_water.max(self.slots.len() + self.reserved);
        self.update_stalls();
        if !self.waiting_for_room.is_empty() && self.room_waiters_can_go() {
            self.waiting_for_room.move_all_to(&mut self.due);
        }
    }

    /// Whether a branch waiting for room would get further now: it can poll
    /// the upstream, make room, or find the upstream's end.
    fn room_waiters_can_go(&self) -> bool {
        match self.upstream {
            Upstream::Idle(_) => !matches!(self.room_to_pull(), Room::Full),
            Upstream::Polling => false,
            Upstream::Done | Upstream::Panicked(_) => true,
        }
    }

    /// Branch `key` read past the oldest slot by a clone, leaving it to the
    /// others: its stall, if any, ends now. (Every other change of who
    /// stalls moves `head` or marks the stalls outdated.)
    fn left_the_oldest_slot(&mut self, key: usize) {
        let stall = &mut self.branches.get_mut(key).stall;
        if stall.is_running() {
            stall.end(Instant::now());
        }
    }

    /// Starts the stall of each backpressure branch at the oldest slot of a
    /// full buffer, and ends every other stall.
    fn update_stalls(&mut self) {
        let full = self.is_full() && !self.slots.is_empty();
        let head = self.head;
        let set_for = full.then_some(head);
        if set_for == self.stalls_set_for && !self.stalls_outdated {
            return;
        }
        self.stalls_set_for = set_for;
        self.stalls_outdated = false;
        let mut now = None;
        for record in self.branches.iter_mut() {
            let stalls = full && !record.lossy && record.position == head;
            if stalls != record.stall.is_running() {
                let now = *now.get_or_insert_with(Instant::now);
                if stalls {
                    record.stall.start(now);
                } else {
                    record.stall.end(now);
                }
            }
        }
    }
}

impl<S> State<S>
where
    S: Stream,
    S::Item: Clone,
{
    /// Records the batch that branch `key`, at the end of the buffer, has
    /// pulled into its read-ahead `ahead`: the branch keeps the items (a
    /// lossy one only the first, which it yields at once), and the buffer
    /// gets a clone of each for the other branches and for replay, and the
    /// items it does not keep. The items kept for replay that the batch
    /// pushes out go into `freed` (empty before), counted as being dropped
    /// before the batch is shared out, so that what the poller keeps fits in
    /// the room left beside them. If a `Clone` panics, the items from there
    /// on are moved into the buffer instead, for every branch, and the panic
    /// is returned.
    fn push_pulled(
        &mut self,
        key: usize,
        ahead: &mut VecDeque<S::Item>,
        freed: &mut Vec<S::Item>,
    ) -> Result<(), PanicPayload> {
        let record = self.branches.get(key);
        let (start, lossy) = (record.position, record.lossy);
        debug_assert_eq!(start, self.pulled(), "the poller is at the end");
        let end = start + ahead.len() as u64;
        debug_assert!(freed.is_empty());
        self.pop_unneeded(end, freed);
        self.dropping += freed.len();
        let others = self.branches.len() - 1;
        let keep = if lossy {
            1
        } else if others == 0 && self.replay == 0 {
            ahead.len()
        } else {
            1 + self.room().saturating_sub(ahead.len()) / 2
        }
        .min(ahead.len());
        // Kept items that nobody else reads and that are not kept for replay
        // skip the buffer. (Then the buffer is empty: its slots were all
        // read, and older than the replay.)
        let skip = if others == 0 {
            let before_replay = self.replay_start(end).saturating_sub(start);
            keep.min(usize::try_from(before_replay).unwrap_or(usize::MAX))
        } else {
            0
        };
        debug_assert!(skip == 0 || self.slots.is_empty());
        self.head += skip as u64;
        let buffered = self.slots.len();
        let slots = &mut self.slots;
        let cloned = if skip == keep {
            Ok(())
        } else {
            catch_unwind(AssertUnwindSafe(|| {
                slots.extend(ahead.range(skip..keep).map(|item| Slot {
                    item: item.clone(),
                    unread_by: others,
                }));
            }))
        };
        let kept = skip + (self.slots.len() - buffered);
        let unread_by = others + 1;
        self.slots
            .extend(ahead.drain(kept..).map(|item| Slot { item, unread_by }));
        self.branches.get_mut(key).take(kept);
        self.reserve(key, kept);
        cloned
    }

    /// Takes a batch for branch `key`, whose read-ahead `ahead` is empty,
    /// and returns its first item, if an item is buffered for it. A batch of
    /// one skips the read-ahead.
    #[inline]
    fn read(&mut self, key: usize, ahead: &mut VecDeque<S::Item>) -> Option<S::Item> {
        match self.plan_batch(key, 0) {
            (0, 0) => {
                // At the end of the buffer: it holds nothing.
                self.set_allotment(key, 0);
                None
            }
            (moves, clones) if moves + clones == 1 => {
                let record = self.branches.get(key);
                let index = self.index_of(record.position);
                let item = if moves == 1 {
                    self.pop_slot().expect("a slot to move")
                } else {
                    // Cloned before anything changes, so a panicking `Clone`
                    // leaves the state as it was.
                    let slot = &mut self.slots[index];
                    let item = slot.item.clone();
                    slot.unread_by -= 1;
                    item
                };
                self.branches.get_mut(key).take(1);
                self.set_allotment(key, 0);
                if index == 0 && moves == 0 {
                    self.left_the_oldest_slot(key);
                }
                Some(item)
            }
            (moves, clones) => {
                self.take_batch(key, ahead, moves, clones);
                let item = ahead.pop_front().expect("a batch of two or more");
                self.unreserve_one(key);
                Some(item)
            }
        }
    }

    /// Takes the next batch for branch `key` into its read-ahead `ahead`
    /// (see [`plan_batch`](Self::plan_batch)).
    fn take_ahead(&mut self, key: usize, ahead: &mut VecDeque<S::Item>) {
        let (moves, clones) = self.plan_batch(key, ahead.len());
        self.take_batch(key, ahead, moves, clones);
    }

    /// How many of the buffered items after branch `key`'s position it takes
    /// next, with `held` items in its read-ahead: up to [`MAX_BATCH`] held
    /// (one for a lossy branch, which holds nothing ahead); the last
    /// reader's items by move, the others by clone within the
    /// [`clone_budget`](Self::clone_budget). With nothing held, the first
    /// item is taken whatever the room: it is about to be yielded. Returns
    /// the moves and the clones; the moves come first, since `unread_by`
    /// never decreases from front to back.
    fn plan_batch(&self, key: usize, held: usize) -> (usize, usize) {
        let record = self.branches.get(key);
        let limit = if record.lossy {
            1
        } else {
            batch_limit(self.capacity)
        };
        let wanted = limit.saturating_sub(held);
        let index = self.index_of(record.position);
        let last_reader = index == 0 && self.slots.front().is_some_and(|slot| slot.unread_by == 1);
        let moves = if last_reader {
            // Items kept for replay are cloned even for their last reader.
            let movable = self.slots.len().saturating_sub(self.replay);
            self.slots
                .iter()
                .take(wanted.min(movable))
                .take_while(|slot| slot.unread_by == 1)
                .count()
        } else {
            0
        };
        let buffered = self.slots.len() - index;
        if moves == buffered || moves == wanted {
            return (moves, 0);
        }
        let budget = usize::from(held == 0 && moves == 0) + self.clone_budget(key);
        (moves, (buffered - moves).min(wanted - moves).min(budget))
    }

    /// Takes `moves` items by move and then `clones` by clone into branch
    /// `key`'s read-ahead `ahead`, reserving them. If a `Clone` panics, what
    /// was taken before it is kept and accounted for, and the panic goes
    /// on: no item is lost, and no clone is made in vain.
    fn take_batch(
        &mut self,
        key: usize,
        ahead: &mut VecDeque<S::Item>,
        moves: usize,
        clones: usize,
    ) {
        let first = self.index_of(self.branches.get(key).position);
        if moves > 0 {
            ahead.extend(self.slots.drain(..moves).map(|slot| slot.item));
            self.head += moves as u64;
            self.branches.get_mut(key).take(moves);
            self.reserve(key, moves);
        }
        if clones == 0 {
            return;
        }
        // The moves were the oldest slots, so the clones start at index 0
        // after them, as `first` already says.
        let mut cloned = 0;
        let slots = &self.slots;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            for slot in slots.range(first..first + clones) {
                ahead.push_back(slot.item.clone());
                cloned += 1;
            }
        }));
        for slot in self.slots.range_mut(first..first + cloned) {
            slot.unread_by -= 1;
        }
        self.branches.get_mut(key).take(cloned);
        self.reserve(key, cloned);
        if first == 0 && cloned > 0 {
            self.left_the_oldest_slot(key);
        }
        if let Err(payload) = outcome {
            resume_unwind(payload);
        }
    }
}

/// Items freed under the state lock, still counted in `State::dropping`:
/// dropping this drops them, with no lock held, and then uncounts them, so
/// that the room they held is reused only once they are gone (also when a
/// `Drop` of theirs panics).
struct Freed<'a, S: Stream> {
    shared: &'a Shared<S>,
    items: Vec<S::Item>,
}

impl<'a, S: Stream> Freed<'a, S> {
    fn new(shared: &'a Shared<S>, items: Vec<S::Item>) -> Self {
        Self { shared, items }
    }
}

impl<S: Stream> Drop for Freed<'_, S> {
    fn drop(&mut self) {
        let count = self.items.len();
        if count == 0 {
            return;
        }
        let _uncount = Uncount {
            shared: self.shared,
            count,
        };
        drop(std::mem::take(&mut self.items));
    }
}

/// Uncounts `count` dropped items when dropped, even during a panic.
struct Uncount<'a, S: Stream> {
    shared: &'a Shared<S>,
    count: usize,
}

impl<S: Stream> Drop for Uncount<'_, S> {
    fn drop(&mut self) {
        self.shared.lock_state().dropping -= self.count;
    }
}

/// The state lock, held. Releasing it, by drop or by the unwinding of a
/// panic, first settles the state ([`State::settle`]), then unlocks, then
/// wakes the wakers that became due under it.
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
        state.settle();
        if state.due.is_empty() {
            return;
        }
        let due = std::mem::take(&mut state.due);
        drop(state);
        due.wake();
    }
}
