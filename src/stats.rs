//! Snapshots of a fanout's statistics: which branch holds the upstream back.

use std::fmt;
use std::time::Duration;

/// A snapshot of a whole fanout, taken by [`Branch::stats`](crate::Branch::stats)
/// or [`Lossy::stats`](crate::Lossy::stats) from any of its branches.
///
/// With backpressure, a slow consumer shows up as "everything is slow"
/// rather than as "out of memory"; the snapshot says which branch it is:
/// [`slowest`](Stats::slowest) lags the most, and
/// [`stalled_upstream`](BranchStats::stalled_upstream) says how long each
/// branch has kept the buffer full. Its [`Display`](fmt::Display) is a
/// compact table.
///
/// # Examples
///
/// ```
/// use fanout::StreamExt as _;
/// use futures::{executor::block_on, stream, StreamExt};
///
/// let (mut fast, slow) = stream::iter(0..100).tee(8);
/// // `fast` reads until it is `cap` items ahead of the idle `slow`.
/// block_on(async {
///     for _ in 0..8 {
///         fast.next().await;
///     }
/// });
/// let stats = fast.stats();
/// assert_eq!((stats.buffered, stats.high_water, stats.pulled), (8, 8, 8));
/// assert_eq!(stats.slowest().map(|branch| branch.id), Some(slow.id()));
/// println!("{stats}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The most items the buffer may hold: the `cap` the fanout was built with.
    pub capacity: usize,
    /// Items buffered now: for the branches that have not taken them yet,
    /// and those kept for replay.
    pub buffered: usize,
    /// Of the `buffered` items, those that every branch has read and that
    /// are kept only for branches that subscribe later (see
    /// [`share_replay`](crate::StreamExt::share_replay)). They hold nobody
    /// back: the oldest of them is dropped when room is needed. Always 0
    /// without replay.
    pub kept_for_replay: usize,
    /// Items the branches have taken ahead of what they yielded, to yield
    /// them without a lock, as of each branch's latest visit to the buffer.
    /// They count against the capacity: `buffered + read_ahead <= capacity`,
    /// except just after a fork of a branch that had read ahead (see
    /// [`Branch`](crate::Branch)'s `Clone`).
    pub read_ahead: usize,
    /// The most items ever held at once, buffered or read ahead: at most
    /// the capacity, but for that same exception.
    pub high_water: usize,
    /// Items taken from the upstream so far.
    pub pulled: u64,
    /// Whether the upstream has ended (returned `None`).
    pub upstream_done: bool,
    /// One entry per live branch, by increasing [`id`](BranchStats::id).
    pub branches: Vec<BranchStats>,
}

impl Stats {
    /// The lossless branch with the largest lag (the one with the smallest id
    /// among equals), or `None` if no branch is alive. A lossy branch never
    /// holds the upstream back, so it is the answer only when every branch
    /// is lossy.
    ///
    /// When the buffer is full, this is a branch that holds the upstream back.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::StreamExt as _;
    /// use futures::{executor::block_on, stream, StreamExt};
    ///
    /// let mut branches = stream::iter(0..10).fanout(3, 4);
    /// let dashboard = branches.pop().unwrap().into_lossy();
    /// let (mut reader, idle) = (branches.remove(0), branches.remove(0));
    /// block_on(async {
    ///     for _ in 0..3 {
    ///         reader.next().await;
    ///     }
    /// });
    /// let stats = reader.stats();
    /// let slowest = stats.slowest().unwrap();
    /// // `idle` has yielded nothing of what was pulled; the lossy dashboard,
    /// // as far behind, never holds anyone back, so it is not the answer.
    /// assert_eq!(slowest.id, idle.id());
    /// assert_eq!(slowest.lag as u64, stats.pulled);
    /// # drop(dashboard);
    /// ```
    pub fn slowest(&self) -> Option<&BranchStats> {
        let slowest_of = |lossy: bool| {
            self.branches
                .iter()
                .rev()
                .filter(|branch| branch.lossy == lossy)
                .max_by_key(|branch| branch.lag)
        };
        slowest_of(false).or_else(|| slowest_of(true))
    }
}

/// One branch in a [`Stats`] snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BranchStats {
    /// The branch's [`id`](crate::Branch::id), unique within its fanout.
    pub id: usize,
    /// Items taken from the upstream that the branch has not yielded yet
    /// (see [`Stats::read_ahead`]).
    pub lag: usize,
    /// Items the branch has yielded so far (as of its latest visit to the
    /// buffer).
    pub delivered: u64,
    /// Whether the branch is [`Lossy`](crate::Lossy).
    pub lossy: bool,
    /// Items a lossy branch has given up so far; always 0 for a branch that
    /// applies backpressure.
    pub missed: u64,
    /// The total time during which the buffer was full and this branch was
    /// one of the backpressure branches at the oldest position: the time it
    /// held the upstream back. A lossy branch adds nothing to it.
    /// Measured only when the buffer becomes full and when it stops being
    /// full for this branch, never per item.
    pub stalled_upstream: Duration,
}

impl fmt::Display for BranchStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "branch {}: lag {}, delivered {}, held the upstream back {:.3} s",
            self.id,
            self.lag,
            self.delivered,
            self.stalled_upstream.as_secs_f64()
        )?;
        if self.lossy {
            write!(f, ", lossy, missed {}", self.missed)?;
        }
        Ok(())
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "buffered {}", self.buffered)?;
        if self.kept_for_replay > 0 {
            write!(f, " ({} kept for replay)", self.kept_for_replay)?;
        }
        writeln!(
            f,
            " + read ahead {} of {} (high water {}), pulled {}, upstream {}",
            self.read_ahead,
            self.capacity,
            self.high_water,
            self.pulled,
            if self.upstream_done { "done" } else { "open" }
        )?;
        write!(
            f,
            "{:>6} {:>8} {:>10} {:>14} {:>10} {:>14}",
            "branch", "mode", "lag", "delivered", "missed", "held back (s)"
        )?;
        let slowest = self.slowest().map(|branch| branch.id);
        for branch in &self.branches {
            write!(
                f,
                "\n{:>6} {:>8} {:>10} {:>14} {:>10} {:>14.3}",
                branch.id,
                if branch.lossy { "lossy" } else { "lossless" },
                branch.lag,
                branch.delivered,
                branch.missed,
                branch.stalled_upstream.as_secs_f64()
            )?;
            if Some(branch.id) == slowest && branch.lag > 0 {
                f.write_str("  <- slowest")?;
            }
        }
        Ok(())
    }
}
