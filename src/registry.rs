//! The live branches of a fanout: where each one is, what it has received,
//! and how long it has held the upstream back.

use std::time::{Duration, Instant};

use crate::stats::BranchStats;

/// One live branch, as the shared state sees it.
#[derive(Debug, Clone)]
pub(crate) struct BranchRecord {
    /// Unique within the fanout, never reused.
    pub(crate) id: usize,
    /// The position of the next item this branch yields.
    pub(crate) position: u64,
    /// Items yielded so far.
    pub(crate) delivered: u64,
    /// The branch gives up items instead of holding the others back.
    pub(crate) lossy: bool,
    /// Items given up so far.
    pub(crate) missed: u64,
    /// Items given up since the branch last reported a gap.
    pub(crate) unreported_missed: u64,
    /// Total time the branch held the upstream back, not counting the
    /// current stall.
    stalled: Duration,
    /// `Some` while the buffer is full and this branch is at the oldest
    /// position: since when.
    stalled_since: Option<Instant>,
}

impl BranchRecord {
    fn new(id: usize, position: u64, lossy: bool) -> Self {
        Self {
            id,
            position,
            delivered: 0,
            lossy,
            missed: 0,
            unreported_missed: 0,
            stalled: Duration::ZERO,
            stalled_since: None,
        }
    }

    /// Moves past the item it has just yielded.
    #[inline]
    pub(crate) fn deliver_next(&mut self) {
        self.deliver(1);
    }

    /// Moves past `count` items it has yielded.
    #[inline]
    pub(crate) fn deliver(&mut self, count: u64) {
        self.position += count;
        self.delivered += count;
    }

    /// Moves past the next item without yielding it.
    pub(crate) fn give_up_next(&mut self) {
        self.position += 1;
        self.missed += 1;
        self.unreported_missed += 1;
    }

    /// Starts counting a stall, if not counting one already.
    pub(crate) fn start_stall(&mut self, now: Instant) {
        self.stalled_since.get_or_insert(now);
    }

    /// Stops counting the current stall, if any.
    pub(crate) fn end_stall(&mut self, now: Instant) {
        if let Some(since) = self.stalled_since.take() {
            self.stalled += now.saturating_duration_since(since);
        }
    }

    /// A snapshot, with `buffered_end` the position after the newest
    /// buffered item and `now` the time of the snapshot.
    pub(crate) fn stats(&self, buffered_end: u64, now: Instant) -> BranchStats {
        let current_stall = self
            .stalled_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        BranchStats {
            id: self.id,
            lag: usize::try_from(buffered_end - self.position)
                .expect("a branch lags at most `capacity` items"),
            delivered: self.delivered,
            lossy: self.lossy,
            missed: self.missed,
            stalled_upstream: self.stalled + current_stall,
        }
    }
}

/// The records of the live branches, each under a key that stays the same
/// for the life of the branch (a slab).
#[derive(Debug)]
pub(crate) struct Registry {
    /// Invariant: `None` exactly at the keys listed in `free`.
    records: Vec<Option<BranchRecord>>,
    free: Vec<usize>,
    /// The id the next registered branch gets.
    next_id: usize,
}

impl Registry {
    /// A registry of `count` branches at position 0, with ids and keys
    /// `0..count`.
    pub(crate) fn new(count: usize) -> Self {
        Self {
            records: (0..count)
                .map(|id| Some(BranchRecord::new(id, 0, false)))
                .collect(),
            free: Vec::new(),
            next_id: count,
        }
    }

    /// Registers a new branch at `position`; returns its key and id.
    pub(crate) fn insert(&mut self, position: u64, lossy: bool) -> (usize, usize) {
        let id = self.next_id;
        self.next_id = id.checked_add(1).expect("fanout: too many branches");
        let record = Some(BranchRecord::new(id, position, lossy));
        let key = match self.free.pop() {
            Some(key) => {
                self.records[key] = record;
                key
            }
            None => {
                self.records.push(record);
                self.records.len() - 1
            }
        };
        (key, id)
    }

    /// Unregisters the branch under `key`, returning its record.
    pub(crate) fn remove(&mut self, key: usize) -> BranchRecord {
        let record = self.records[key].take().expect("a live branch's key");
        self.free.push(key);
        record
    }

    #[inline]
    pub(crate) fn get(&self, key: usize) -> &BranchRecord {
        self.records[key].as_ref().expect("a live branch's key")
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, key: usize) -> &mut BranchRecord {
        self.records[key].as_mut().expect("a live branch's key")
    }

    /// The number of live branches.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.records.len() - self.free.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &BranchRecord> {
        self.records.iter().flatten()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut BranchRecord> {
        self.records.iter_mut().flatten()
    }

    /// The live branches at `position`.
    pub(crate) fn at(&self, position: u64) -> impl Iterator<Item = &BranchRecord> {
        self.iter()
            .filter(move |record| record.position == position)
    }

    /// The live branches at `position`, to change.
    pub(crate) fn at_mut(&mut self, position: u64) -> impl Iterator<Item = &mut BranchRecord> {
        self.iter_mut()
            .filter(move |record| record.position == position)
    }
}
