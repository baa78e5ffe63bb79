//! A branch's read-ahead: the items it took from the shared buffer under one
//! lock, to yield one by one without taking the lock again.
//!
//! The shared state counts these items against the capacity (the branch's
//! *reservation*) until the branch next takes the lock, which it does at the
//! latest when it yields the last of them. So the count is exact whenever
//! the lock is free, or too high by the items yielded since: never too low.
//!
//! The queue is only changed through `&mut` (a poll, a drop) or while the
//! shared state lock is held (a fork, which gives the read-ahead back).
//! The mutex is there so that a branch stays `Sync` when its items are only
//! `Send`; a poll reaches the queue through [`ReadAhead::get_mut`], which
//! takes no lock.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The items a branch has taken ahead, oldest first.
#[derive(Debug)]
pub(crate) struct ReadAhead<T> {
    items: Mutex<VecDeque<T>>,
}

impl<T> Default for ReadAhead<T> {
    fn default() -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
        }
    }
}

impl<T> ReadAhead<T> {
    /// The queue, through `&mut`: no lock is taken.
    #[inline]
    pub(crate) fn get_mut(&mut self) -> &mut VecDeque<T> {
        self.items.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// The queue, through `&`. Nothing else can hold it at the same time for
    /// long: a poll or a drop needs `&mut` of the branch.
    pub(crate) fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the queue out, leaving an empty one.
    pub(crate) fn take(&mut self) -> VecDeque<T> {
        std::mem::take(self.get_mut())
    }
}
