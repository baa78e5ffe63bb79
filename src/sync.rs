//! The synchronisation primitives the crate uses, named in one place.

use std::sync::PoisonError;

pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

/// Locks `mutex`, ignoring poison.
///
/// No code of this crate panics while it holds a lock with the protected
/// state half-changed: the foreign code run under a lock, an item's `Clone`
/// and a waker's `clone`, runs before the state it belongs to is touched. So a poisoned lock still
/// guards a consistent state, and the branches that did not panic go on.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
