//! The synchronisation primitives the crate uses, named in one place.
//!
//! Built with `--cfg fanout_loom`, they are [loom]'s, so that the loom models
//! in `tests/loom.rs` explore every interleaving of the same code that ships.
//! (The cfg is our own rather than `loom`, which would also switch tokio and
//! other dependencies of the tests to their loom builds.)
//!
//! [loom]: https://docs.rs/loom

use std::sync::PoisonError;

#[cfg(fanout_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(fanout_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

/// Locks `mutex`, ignoring poison.
///
/// No code of this crate panics while it holds a lock with the protected
/// state half-changed: the foreign code run under a lock, an item's `Clone`
/// and a waker's `clone`, runs before the state it belongs to is touched.
/// So a poisoned lock still guards a consistent state, and the branches that
/// did not panic go on.
#[inline]
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
