//! How much memory a [`KvMap`] takes per key, measured rather than guessed.
//!
//! ```sh
//! cargo run --release -p kv-server --example map_memory            # 1,000,000 keys, 100-byte values
//! cargo run --release -p kv-server --example map_memory -- 200000 1000
//! ```
//!
//! It fills a map the way the shared benchmark's `loadgen --seq-keys` does (keys
//! `k0000000000`, `k0000000001`, ... in order, every value the same length), and reports what
//! the map holds per key: the bytes asked of the allocator, the bytes glibc's malloc really
//! sets aside for them (`malloc_usable_size`, plus its 8-byte chunk header), and the
//! process's resident memory. Live allocations are also listed by size, which is how the
//! map's parts (strings, B-tree leaves, B-tree branches) are told apart. The "malloc holds"
//! figures need Linux with glibc, like the benchmark machine; elsewhere (macOS, musl) they
//! fall back to the bytes requested, and the resident memory reads 0 where there is no
//! `/proc`.
//!
//! Then it does what a snapshot does to the map: clone it (O(1)), overwrite 10% of the keys
//! at random while the clone is alive, and drop the clone, reporting the extra memory the
//! shared nodes' copies take at the peak.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

use kv_server::protocol::Command;
use kv_server::store::KvMap;

/// glibc's malloc puts an 8-byte header (the chunk size) before every allocation it hands
/// out; `malloc_usable_size` does not count it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const CHUNK_HEADER: usize = 8;

/// The system allocator, counting what is live.
struct Counting;

static REQUESTED: AtomicIsize = AtomicIsize::new(0);
static HELD: AtomicIsize = AtomicIsize::new(0);
static COUNT: AtomicIsize = AtomicIsize::new(0);
/// Live allocations by the size malloc holds for them, while `TRACK_SIZES` is on.
static BY_SIZE: Mutex<BTreeMap<usize, isize>> = Mutex::new(BTreeMap::new());
static TRACK_SIZES: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while this thread updates `BY_SIZE`, whose own allocations must not be counted.
    static IN_TRACKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The bytes malloc sets aside for the allocation at `ptr`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn held_by(ptr: *mut u8, _layout: Layout) -> usize {
    // SAFETY: `ptr` was returned by the system allocator (glibc malloc) and not yet freed.
    unsafe { libc::malloc_usable_size(ptr.cast()) + CHUNK_HEADER }
}

/// Without glibc's `malloc_usable_size`: the bytes requested.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn held_by(_ptr: *mut u8, layout: Layout) -> usize {
    layout.size()
}

fn track(held: usize, delta: isize) {
    if !TRACK_SIZES.load(Relaxed) || IN_TRACKER.with(|t| t.replace(true)) {
        return;
    }
    if let Ok(mut sizes) = BY_SIZE.lock() {
        *sizes.entry(held).or_default() += delta;
    }
    IN_TRACKER.with(|t| t.set(false));
}

// SAFETY: every call is passed on to `System` unchanged; only counters are updated around it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System::alloc`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let held = held_by(ptr, layout);
            REQUESTED.fetch_add(layout.size() as isize, Relaxed);
            HELD.fetch_add(held as isize, Relaxed);
            COUNT.fetch_add(1, Relaxed);
            track(held, 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let held = held_by(ptr, layout);
        REQUESTED.fetch_sub(layout.size() as isize, Relaxed);
        HELD.fetch_sub(held as isize, Relaxed);
        COUNT.fetch_sub(1, Relaxed);
        track(held, -1);
        // SAFETY: the caller's contract is `System::dealloc`'s.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What the allocator and the kernel say at one moment.
#[derive(Clone, Copy)]
struct Reading {
    requested: isize,
    held: isize,
    count: isize,
    rss: isize,
}

fn read() -> Reading {
    Reading {
        requested: REQUESTED.load(Relaxed),
        held: HELD.load(Relaxed),
        count: COUNT.load(Relaxed),
        rss: rss_bytes(),
    }
}

/// VmRSS of this process, in bytes (0 where /proc is not there).
fn rss_bytes() -> isize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<isize>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn report(what: &str, before: Reading, after: Reading, keys: usize, raw: usize) {
    let per_key = |bytes: isize| bytes as f64 / keys as f64;
    let held = after.held - before.held;
    let rss = after.rss - before.rss;
    println!(
        "{what}: {} allocations; requested {:.1} B/key, malloc holds {:.1} B/key ({:.2}x the raw data), RSS grew {:.1} B/key ({:.2}x)",
        after.count - before.count,
        per_key(after.requested - before.requested),
        per_key(held),
        held as f64 / raw as f64,
        per_key(rss),
        rss as f64 / raw as f64,
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let keys: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let value_size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let key = |i: usize| format!("k{i:010}");
    let value = "v".repeat(value_size);
    let raw = keys * (key(0).len() + value_size);
    println!(
        "{keys} keys of {} bytes, values of {value_size} bytes: {raw} bytes of raw data",
        key(0).len()
    );

    let empty = read();
    TRACK_SIZES.store(true, Relaxed);
    let mut map = KvMap::default();
    for i in 0..keys {
        map.apply(Command::Put {
            key: key(i),
            value: value.clone(),
        });
    }
    TRACK_SIZES.store(false, Relaxed);
    let full = read();
    report("map", empty, full, keys, raw);

    println!("live allocations made while filling, by size malloc holds (>= 0.5% of keys):");
    let sizes = BY_SIZE.lock().map(|s| s.clone()).unwrap_or_default();
    for (size, count) in sizes {
        if count as usize * 200 >= keys {
            println!(
                "  {count:>9} x {size:>5} B = {:>11} B ({:.1} B/key)",
                count as usize * size,
                (count as usize * size) as f64 / keys as f64
            );
        }
    }

    // A snapshot clones the map and writes the clone out while the node keeps writing.
    let snapshot = map.clone();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for _ in 0..keys / 10 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        map.apply(Command::Put {
            key: key(state as usize % keys),
            value: value.clone(),
        });
    }
    let peak = read();
    report(
        "clone + 10% of keys overwritten at random (the peak while a snapshot is written)",
        full,
        peak,
        keys,
        raw,
    );
    drop(snapshot);
    report(
        "after the clone is dropped, against the full map",
        full,
        read(),
        keys,
        raw,
    );
}
