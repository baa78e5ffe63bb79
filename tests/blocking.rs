//! `fanout::blocking`: branches of a plain iterator, read on OS threads.
//!
//! Every branch gets every item, in order, then `None`; a dropped branch
//! holds nobody back; a panic in the iterator reaches the thread that called
//! it and, after the buffered items, every other one; an iterator whose
//! `next` blocks holds back no item it returned before; memory stays within
//! the capacity. A lost wake-up or a deadlock shows as a hang, which the hang
//! guard turns into a failure; nothing here is timed.

mod support;

use std::cell::Cell;
use std::marker::PhantomPinned;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use fanout::blocking::{self, Branch};
use itertools::Itertools as _;

use support::{hang_guard, panic_message, Rng, Tracker};

const BRANCHES: [usize; 4] = [1, 2, 4, 8];
const CAPACITIES: [usize; 3] = [1, 16, 1024];

/// Items per combination: threads park and unpark on every wait (up to 8
/// threads on 2 cores), and debug builds are much slower.
const ITEMS: u64 = if cfg!(debug_assertions) {
    20_000
} else {
    50_000
};

/// The crate's message for a branch that finds the upstream panicked on
/// another thread.
const UPSTREAM_PANICKED: &str = "fanout: the upstream stream panicked";

fn assert_send_sync_unpin<T: Send + Sync + Unpin>() {}

/// An iterator that is `Send` but not `Unpin`.
struct Unmovable(std::ops::Range<u64>, PhantomPinned);

impl Iterator for Unmovable {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.0.next()
    }
}

#[test]
fn branches_are_send_sync_and_unpin() {
    assert_send_sync_unpin::<Branch<std::vec::IntoIter<String>>>();
    // Items that are `Send` but not `Sync` are enough: a branch never lends
    // an item out through `&self`.
    assert_send_sync_unpin::<Branch<std::vec::IntoIter<Cell<u8>>>>();
    // A branch is `Unpin` whatever the iterator.
    assert_send_sync_unpin::<Branch<Unmovable>>();
    let [branch] = blocking::fanout_array(Unmovable(0..3, PhantomPinned), 1);
    assert_eq!(branch.sum::<u64>(), 3);
}

/// Reads `branch` to its end, checking that it yields `0..items` in order,
/// then `None` again, and that its `size_hint` brackets what is left; yields
/// the thread at random if `rng` is given.
fn consume(mut branch: Branch<std::ops::Range<u64>>, items: u64, mut rng: Option<Rng>) {
    let id = branch.id();
    assert_eq!(branch.size_hint(), (items as usize, Some(items as usize)));
    let mut expected = 0;
    while let Some(item) = branch.next() {
        assert_eq!(item, expected, "branch {id}: items out of order");
        expected += 1;
        if expected % 64 == 0 {
            let left = (items - expected) as usize;
            let (lower, upper) = branch.size_hint();
            assert!(
                lower <= left && upper.is_some_and(|upper| upper >= left),
                "branch {id}: size_hint {:?} with {left} items left",
                (lower, upper)
            );
        }
        if let Some(rng) = &mut rng {
            if rng.percent(10) {
                thread::yield_now();
            }
        }
    }
    assert_eq!(expected, items, "branch {id}: ended early");
    assert_eq!(branch.size_hint(), (0, Some(0)));
    assert_eq!(branch.next(), None, "branch {id}: not fused");
}

#[test]
fn every_branch_gets_every_item_in_order_across_threads() {
    for n in BRANCHES {
        for cap in CAPACITIES {
            hang_guard(move || {
                let branches = blocking::fanout(0..ITEMS, n, cap);
                assert_eq!(branches.len(), n);
                thread::scope(|s| {
                    for (i, branch) in branches.into_iter().enumerate() {
                        // Half of the threads yield at random, the others never do.
                        let rng = (i % 2 == 1).then(|| Rng::new((n * 10_000 + cap + i) as u64));
                        s.spawn(move || consume(branch, ITEMS, rng));
                    }
                });
            });
        }
    }
}

#[test]
fn a_thread_that_drops_its_branch_midway_stops_holding_the_others_back() {
    for cap in [1, 4, 64] {
        hang_guard(move || {
            let [quitter, first, second] = blocking::fanout_array(0..ITEMS, cap);
            let quitter_id = quitter.id();
            thread::scope(|s| {
                s.spawn(move || {
                    let mut quitter = quitter;
                    let read: Vec<u64> = quitter.by_ref().take(10).collect();
                    assert_eq!(read, (0..10).collect::<Vec<_>>());
                    // Dropped here, far behind the others' end.
                });
                let others = [first, second].map(|branch| {
                    s.spawn(move || {
                        let mut branch = branch;
                        let read: Vec<u64> = branch.by_ref().collect();
                        assert_eq!(read, (0..ITEMS).collect::<Vec<_>>());
                        branch.stats()
                    })
                });
                for other in others {
                    let stats = other.join().unwrap();
                    assert!(stats.branches.iter().all(|branch| branch.id != quitter_id));
                    assert!(stats.upstream_done);
                }
            });
        });
    }
}

#[test]
fn a_fork_made_on_one_thread_yields_the_same_remaining_items_on_another() {
    hang_guard(|| {
        let (mut original, other) = blocking::tee(0..ITEMS, 8);
        thread::scope(|s| {
            s.spawn(move || assert_eq!(other.count() as u64, ITEMS));
            assert_eq!(original.by_ref().take(100).count(), 100);
            let fork = original.clone();
            assert_ne!(fork.id(), original.id());
            let fork = s.spawn(move || fork.collect::<Vec<_>>());
            assert_eq!(
                original.collect::<Vec<_>>(),
                (100..ITEMS).collect::<Vec<_>>()
            );
            assert_eq!(fork.join().unwrap(), (100..ITEMS).collect::<Vec<_>>());
        });
    });
}

/// Reads `branch` on this thread until it ends or panics; returns the items
/// it yielded, and the panic's message if it panicked.
fn read_until_panic<I>(branch: &mut Branch<I>) -> (Vec<u64>, Option<String>)
where
    I: Iterator<Item = u64>,
{
    let mut read = Vec::new();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        for item in branch {
            read.push(item);
        }
    }));
    (read, outcome.err().map(panic_message))
}

/// Checks the outcomes of the branches of an iterator that yielded
/// `0..yielded` and then panicked with `message`: every branch read all of
/// those items; the one thread that called `next` got the iterator's own
/// panic, every other one the crate's message.
fn assert_panicked_once(outcomes: &[(Vec<u64>, Option<String>)], yielded: u64, message: &str) {
    for (read, _) in outcomes {
        assert_eq!(read, &(0..yielded).collect::<Vec<_>>());
    }
    let messages: Vec<&str> = outcomes
        .iter()
        .map(|(_, panic)| panic.as_deref().expect("every branch panics"))
        .collect();
    let own = messages.iter().filter(|m| **m == message).count();
    assert_eq!(own, 1, "one thread gets the iterator's panic: {messages:?}");
    assert!(
        messages
            .iter()
            .all(|m| *m == message || m.starts_with(UPSTREAM_PANICKED)),
        "the others get the crate's message: {messages:?}"
    );
}

#[test]
fn a_panicking_iterator_reaches_its_caller_and_the_others_after_the_buffered_items() {
    const PANIC_AT: u64 = 40;
    for cap in [1, 16, 1024] {
        hang_guard(move || {
            let iter = (0..).inspect(|&n| assert!(n != PANIC_AT, "the iterator broke"));
            let branches = blocking::fanout(iter, 3, cap);
            let outcomes: Vec<_> = thread::scope(|s| {
                let threads: Vec<_> = branches
                    .into_iter()
                    .map(|mut branch| s.spawn(move || read_until_panic(&mut branch)))
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            assert_panicked_once(&outcomes, PANIC_AT, "the iterator broke");
        });
    }
}

#[test]
fn threads_waiting_for_a_blocked_next_are_woken_by_its_panic() {
    hang_guard(|| {
        let (items_tx, items_rx) = mpsc::channel::<Option<u64>>();
        // `next` blocks until told to yield an item, end, or (`None`) panic.
        let iter = std::iter::from_fn(move || match items_rx.recv() {
            Ok(Some(item)) => Some(item),
            Ok(None) => panic!("the source broke"),
            Err(mpsc::RecvError) => None,
        });
        let [first, second, third, mut watcher] = blocking::fanout_array(iter, 4);
        thread::scope(|s| {
            let threads: Vec<_> = [first, second, third]
                .into_iter()
                .map(|mut branch| s.spawn(move || read_until_panic(&mut branch)))
                .collect();
            items_tx.send(Some(0)).unwrap();
            items_tx.send(Some(1)).unwrap();
            // The watcher reads what the others read, so that they all wait
            // at the end of the buffer, one inside `next`, when it panics.
            assert_eq!(watcher.next(), Some(0));
            assert_eq!(watcher.next(), Some(1));
            items_tx.send(None).unwrap();
            let mut outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let (read, panic) = read_until_panic(&mut watcher);
            outcomes.push(([0, 1].into_iter().chain(read).collect(), panic));
            assert_panicked_once(&outcomes, 2, "the source broke");
        });
    });
}

#[test]
fn a_next_that_blocks_holds_back_no_item_it_returned_and_blocks_no_other_call() {
    const SENT: u64 = 50;
    hang_guard(|| {
        let (items_tx, items_rx) = mpsc::channel::<u64>();
        // One message each time `next` is entered.
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let iter = std::iter::from_fn(move || {
            let _ = entered_tx.send(());
            items_rx.recv().ok()
        });
        let [first, second, mut watcher] = blocking::fanout_array(iter, 8);
        thread::scope(|s| {
            let readers = [first, second].map(|branch| s.spawn(move || branch.collect::<Vec<_>>()));

            // A reader's thread is inside `next`, blocked on the channel;
            // the other one waits for it. From this thread, the other calls
            // return at once.
            entered_rx.recv().unwrap();
            let stats = watcher.stats();
            assert_eq!(
                (stats.pulled, stats.buffered, stats.upstream_done),
                (0, 0, false)
            );
            assert_eq!(watcher.lag(), 0);
            assert!(format!("{watcher:?}").starts_with("Branch"));
            let mut fork = watcher.clone();
            assert_eq!(fork.stats().branches.len(), 4);

            for item in 0..SENT {
                items_tx.send(item).unwrap();
                // `next` is called again only once `item` is buffered for
                // the others: this thread reads it while `next` blocks.
                entered_rx.recv().unwrap();
                assert_eq!(watcher.stats().pulled, item + 1);
                assert_eq!(watcher.lag(), 1);
                assert_eq!(watcher.next(), Some(item));
                assert_eq!(fork.next(), Some(item));
                assert_eq!(watcher.lag(), 0);
            }
            drop(items_tx);
            assert_eq!(watcher.next(), None);
            assert_eq!(fork.next(), None);
            for reader in readers {
                assert_eq!(reader.join().unwrap(), (0..SENT).collect::<Vec<_>>());
            }
        });
    });
}

/// Runs `items` counted items through `n` branches of capacity `cap`, each
/// on its own thread, the first one slow; returns the most items alive at
/// once, as seen by the consumers and the iterator. Checks that every item
/// arrives, none leaks, and each is cloned at most `n - 1` times.
fn peak_live_items(n: usize, cap: usize, items: u64) -> usize {
    let tracker = Tracker::new();
    let peak = Arc::new(AtomicUsize::new(0));
    let record = {
        let (tracker, peak) = (Arc::clone(&tracker), Arc::clone(&peak));
        move || peak.fetch_max(tracker.live(), Ordering::SeqCst)
    };
    let iter = {
        let (tracker, record) = (Arc::clone(&tracker), record.clone());
        (0..items).map(move |value| {
            let item = tracker.item(value);
            record();
            item
        })
    };
    let branches = blocking::fanout(iter, n, cap);
    thread::scope(|s| {
        for (i, branch) in branches.into_iter().enumerate() {
            let record = record.clone();
            s.spawn(move || {
                let mut branch = branch;
                let mut expected = 0;
                for item in branch.by_ref() {
                    assert_eq!(item.value, expected);
                    expected += 1;
                    record();
                    if i == 0 {
                        // The slow consumer: the others wait for it.
                        thread::yield_now();
                    }
                }
                assert_eq!(expected, items);
                let stats = branch.stats();
                assert!(stats.high_water <= cap, "high water {}", stats.high_water);
            });
        }
    });
    assert_eq!(tracker.live(), 0, "items leaked");
    assert!(tracker.clones() as u64 <= (n as u64 - 1) * items);
    peak.load(Ordering::SeqCst)
}

#[test]
fn at_most_cap_items_are_alive_inside_the_fanout() {
    for n in [2, 4] {
        for cap in [1, 16, 256] {
            hang_guard(move || {
                let peak = peak_live_items(n, cap, ITEMS);
                // The fanout holds at most `cap`; each consumer at most the
                // one item it was just given.
                assert!(peak <= cap + n, "n = {n}, cap = {cap}: {peak} items alive");
            });
        }
    }
}

#[test]
fn memory_stays_bounded_where_itertools_tee_grows() {
    const CAP: usize = 64;
    let items = ITEMS * 4;
    // `itertools::tee` is not `Send`: one thread reads one half, then the
    // other, and every item the second half has not read stays buffered.
    let tracker = Tracker::new();
    let (first, second) = (0..items).map(|value| tracker.item(value)).tee();
    let mut unbounded_peak = 0;
    for item in first {
        drop(item);
        unbounded_peak = unbounded_peak.max(tracker.live());
    }
    assert_eq!(second.count() as u64, items);
    assert_eq!(unbounded_peak as u64, items);

    hang_guard(move || {
        let bounded_peak = peak_live_items(2, CAP, items);
        assert!(bounded_peak <= CAP + 2);
        println!(
            "{items} counted items, a fast and a slow reader: at most {bounded_peak} alive with \
             fanout::blocking::tee (cap {CAP}), {unbounded_peak} with itertools::tee"
        );
    });
}

#[test]
fn no_branch_means_the_iterator_is_dropped_untouched() {
    let advanced = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&advanced);
    let iter = (0..10).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    assert!(blocking::fanout(iter, 0, 4).is_empty());
    assert_eq!(advanced.load(Ordering::SeqCst), 0);
    assert_eq!(Arc::strong_count(&advanced), 1, "the iterator was dropped");
}

#[test]
fn a_capacity_of_zero_panics_in_every_constructor() {
    let message = "fanout: the buffer capacity `cap` must be at least 1, got 0";
    let panics = [
        catch_unwind(|| drop(blocking::fanout(0..3, 2, 0))),
        catch_unwind(|| drop(blocking::tee(0..3, 0))),
        catch_unwind(|| drop(blocking::fanout_array::<3, _>(0..3, 0))),
    ];
    for panic in panics {
        assert_eq!(panic_message(panic.unwrap_err()), message);
    }
}
