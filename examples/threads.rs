//! One large iterator, a fast consumer and a slow one, each on its own
//! thread, with `fanout::blocking::tee`: memory stays flat, because the fast
//! consumer waits for the slow one once it is `CAP` lines ahead.
//!
//! Then the same lines through `itertools::tee`, which cannot go to threads
//! (it is not `Send`) and keeps every line the slow half has not read: read
//! one half first, and it holds them all.
//!
//! Run it with `cargo run --release --example threads`.

use std::hint::black_box;
use std::thread;
use std::time::Instant;

use itertools::Itertools as _;

const LINES: u64 = 2_000_000;
const CAP: usize = 1024;

/// The input: generated CSV-like lines, about 40 bytes each.
fn lines() -> impl Iterator<Item = String> {
    (0..LINES).map(|n| format!("{n:>9},user{:05},page/{:04},view", n % 99_991, n % 7_919))
}

/// The fast consumer's work: count bytes.
fn fast(line: &str) -> u64 {
    line.len() as u64
}

/// The slow consumer's work: about a microsecond of hashing per line.
fn slow(line: &str) -> u64 {
    let mut hash = line.bytes().fold(0xcbf2_9ce4_8422_2325, |h: u64, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    for _ in 0..black_box(500) {
        hash = (hash ^ (hash >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    hash
}

/// This process's resident memory (`VmRSS`) or its peak (`VmHWM`), in MiB;
/// 0 off Linux.
fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn main() {
    println!("{LINES} lines, a fast and a slow consumer on their own threads\n");

    let started = Instant::now();
    let (fast_branch, slow_branch) = fanout::blocking::tee(lines(), CAP);
    let (fast_branch, slow_branch) = thread::scope(|s| {
        let fast_branch = s.spawn(move || {
            let mut branch = fast_branch;
            let bytes: u64 = branch.by_ref().map(|line| fast(&line)).sum();
            assert_eq!(bytes, 68_000_000);
            branch
        });
        let slow_branch = s.spawn(move || {
            let mut branch = slow_branch;
            let (mut digest, mut read) = (0u64, 0u64);
            while let Some(line) = branch.next() {
                digest ^= slow(&line);
                read += 1;
                if read % 400_000 == 0 {
                    println!(
                        "  slow consumer: {read:>9} lines read, lag {:>4}, resident {:.1} MiB",
                        branch.lag(),
                        memory_mib("VmRSS:")
                    );
                }
            }
            black_box(digest);
            branch
        });
        (fast_branch.join().unwrap(), slow_branch.join().unwrap())
    });
    let bounded_peak = memory_mib("VmHWM:");
    println!(
        "\nfanout::blocking::tee, cap {CAP}: done in {:.2} s; the fast branch is {}, the slow one {}",
        started.elapsed().as_secs_f64(),
        fast_branch.id(),
        slow_branch.id()
    );
    println!("{}", slow_branch.stats());
    println!("peak resident memory: {bounded_peak:.1} MiB\n");
    drop((fast_branch, slow_branch));

    let (fast_half, slow_half) = lines().tee();
    assert_eq!(fast_half.map(|line| fast(&line)).sum::<u64>(), 68_000_000);
    black_box(slow_half.fold(0, |digest, line| digest ^ slow(&line)));
    println!(
        "itertools::tee, unbounded: peak resident memory {:.1} MiB",
        memory_mib("VmHWM:")
    );
}
