//! A list of parked branches: at most one waker per branch, the newest one.
//!
//! The list never wakes or drops a waker itself. Every method that lets go
//! of wakers hands them back to the caller, who holds a lock at the time
//! and must wake or drop them only after the lock is released: waking or
//! dropping a waker runs foreign code, which may poll or drop a branch of
//! the same fanout and so take the same lock again.

use std::task::Waker;

/// Wakers of the branches that wait for one kind of event, keyed by branch id.
///
/// Invariant: each branch id appears at most once, so the list holds at most
/// one waker per live branch however often a branch is polled while it waits.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    entries: Vec<(usize, Waker)>,
}

impl Waiters {
    /// Records `waker` as the one to wake for branch `id`.
    ///
    /// Returns the waker it replaces, if that one would not wake the same
    /// task, so that the caller drops it outside the lock.
    pub(crate) fn register(&mut self, id: usize, waker: &Waker) -> Option<Waker> {
        match self
            .entries
            .iter_mut()
            .find(|(entry_id, _)| *entry_id == id)
        {
            Some((_, registered)) if registered.will_wake(waker) => None,
            Some((_, registered)) => Some(std::mem::replace(registered, waker.clone())),
            None => {
                self.entries.push((id, waker.clone()));
                None
            }
        }
    }

    /// Whether no branch waits.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets branch `id`, returning its waker so that the caller drops it
    /// outside the lock.
    pub(crate) fn remove(&mut self, id: usize) -> Option<Waker> {
        let index = self
            .entries
            .iter()
            .position(|(entry_id, _)| *entry_id == id)?;
        Some(self.entries.swap_remove(index).1)
    }

    /// Takes every waker out of the list, for the caller to wake outside the lock.
    pub(crate) fn take_all(&mut self) -> Wakeups {
        Wakeups(std::mem::take(&mut self.entries))
    }

    /// Moves every waker into `due`, for the caller to wake outside the lock.
    #[inline]
    pub(crate) fn move_all_to(&mut self, due: &mut Wakeups) {
        due.0.append(&mut self.entries);
    }
}

/// Wakers taken out of a [`Waiters`] list, to be woken once no lock is held.
///
/// Dropping it wakes every waker it still holds, so that wakers taken out of
/// a list are woken even when a panic unwinds past them: a waker that is
/// taken and never woken is a lost wake-up.
#[derive(Debug, Default)]
pub(crate) struct Wakeups(Vec<(usize, Waker)>);

impl Wakeups {
    /// Whether there is no waker to wake.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the wakers of `more` to these.
    pub(crate) fn append(&mut self, mut more: Wakeups) {
        self.0.append(&mut more.0);
    }

    /// Wakes every task. Call with no lock held.
    pub(crate) fn wake(self) {
        drop(self);
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        // The wakers move into a local of this same type: if one of them
        // panics, the unwinding drops `rest`, which wakes the others.
        let mut rest = Wakeups(std::mem::take(&mut self.0));
        while let Some((_, waker)) = rest.0.pop() {
            waker.wake();
        }
    }
}
