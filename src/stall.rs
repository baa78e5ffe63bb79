//! The time a branch holds the upstream back.
//!
//! A backpressure branch *stalls* the upstream while the buffer is full and
//! it is at the oldest buffered item: nobody may pull until it reads on. The
//! shared state decides, each time it releases its lock, which branches
//! stall (see `State::settle`); a [`Stall`] adds up the time. The clock is
//! read only when a stall starts or ends, never per item.

use std::time::{Duration, Instant};

/// Time spent stalling the upstream: finished stalls, and the current one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stall {
    /// Total length of the finished stalls.
    finished: Duration,
    /// `Some` while the branch stalls the upstream: since when.
    since: Option<Instant>,
}

impl Stall {
    /// Whether a stall is running.
    #[inline]
    pub(crate) fn is_running(&self) -> bool {
        self.since.is_some()
    }

    /// Starts a stall at `now`, if none is running.
    pub(crate) fn start(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// Ends the running stall at `now`, if any.
    pub(crate) fn end(&mut self, now: Instant) {
        if let Some(since) = self.since.take() {
            self.finished += now.saturating_duration_since(since);
        }
    }

    /// The total time, the running stall counted up to `now`.
    pub(crate) fn total(&self, now: Instant) -> Duration {
        let running = self
            .since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        self.finished + running
    }
}
