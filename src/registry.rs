//! The live branches of a fanout: where each one is, what it has taken and
//! holds ahead, and how long it has held the upstream back.

use std::time::Instant;

use crate::stall::Stall;
use crate::stats::BranchStats;

/// One live branch, as the shared state sees it.
#[derive(Debug, Clone)]
pub(crate) struct BranchRecord {
    /// Unique within the fanout, never reused.
    pub(crate) id: usize,
    /// The position of the next item this branch takes from the buffer: the
    /// items before it are yielded, or in its read-ahead.
    pub(crate) position: u64,
    /// Items taken from the buffer so far, read-ahead included.
    pub(crate) taken: u64,
    /// Items of its read-ahead counted against the capacity: exactly its
    /// read-ahead when it last held the lock; at least what it holds now.
    pub(crate) reserved: usize,
    /// The room the branch holds for its read-ahead, `reserved` included:
    /// what it took in its latest batch, while it holds some of it. Zero
    /// once it holds nothing.
    pub(crate) allotment: usize,
    /// The branch gives up items instead of holding the others back.
    pub(crate) lossy: bool,
    /// Items given up so far.
    pub(crate) missed: u64,
    /// Items given up since the branch last reported a gap.
    pub(crate) unreported_missed: u64,
    /// The time it held the upstream back.
    pub(crate) stall: Stall,
}

impl BranchRecord {
    fn new(id: usize, position: u64, lossy: bool) -> Self {
        Self {
            id,
            position,
            taken: 0,
            reserved: 0,
            allotment: 0,
            lossy,
            missed: 0,
            unreported_missed: 0,
            stall: Stall::default(),
        }
    }

    /// Moves past the `count` items it has just taken.
    #[inline]
    pub(crate) fn take(&mut self, count: usize) {
        self.position += count as u64;
        self.taken += count as u64;
    }

    /// Moves past the next item without taking it.
    pub(crate) fn give_up_next(&mut self) {
        self.position += 1;
        self.missed += 1;
        self.unreported_missed += 1;
    }

    /// A snapshot, with `buffered_end` the position after the newest
    /// buffered item and `now` the time of the snapshot. Its read-ahead
    /// counts as not yielded yet: exact for the branch that takes the
    /// snapshot, which has just updated its reservation.
    pub(crate) fn stats(&self, buffered_end: u64, now: Instant) -> BranchStats {
        let unread = usize::try_from(buffered_end - self.position)
            .expect("a branch lags at most `capacity` items");
        BranchStats {
            id: self.id,
            lag: unread + self.reserved,
            delivered: self.taken - self.reserved as u64,
            lossy: self.lossy,
            missed: self.missed,
            stalled_upstream: self.stall.total(now),
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
    /// The live branches that are lossy.
    lossy: usize,
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
            lossy: 0,
        }
    }

    /// Registers a fork of the branch under `key`: at its position, lossy if
    /// it is. If `with_gap`, the gap the branch has still to report is the
    /// fork's too. Returns the fork's key and id.
    pub(crate) fn fork(&mut self, key: usize, with_gap: bool) -> (usize, usize) {
        let source = self.get(key);
        let mut record = BranchRecord::new(self.next_id, source.position, source.lossy);
        if with_gap {
            record.unreported_missed = source.unreported_missed;
            record.missed = source.unreported_missed;
        }
        self.insert(record)
    }

    /// Registers a new lossless branch at `position`. Returns its key and id.
    pub(crate) fn subscribe(&mut self, position: u64) -> (usize, usize) {
        self.insert(BranchRecord::new(self.next_id, position, false))
    }

    /// Registers `record`, whose id is `next_id`; returns its key and id.
    fn insert(&mut self, record: BranchRecord) -> (usize, usize) {
        let id = record.id;
        self.lossy += usize::from(record.lossy);
        self.next_id = id.checked_add(1).expect("fanout: too many branches");
        let record = Some(record);
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
        self.lossy -= usize::from(record.lossy);
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

    /// Makes the branch under `key` lossy.
    pub(crate) fn make_lossy(&mut self, key: usize) {
        let record = self.get_mut(key);
        if !record.lossy {
            record.lossy = true;
            self.lossy += 1;
        }
    }

    /// Whether some live branch is lossy.
    #[inline]
    pub(crate) fn any_lossy(&self) -> bool {
        self.lossy > 0
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
