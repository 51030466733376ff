//! The MVCC index's memory per key revision, values excluded (issue 3's goal: under 100 B).
//!
//! Not a criterion bench: it builds stores and prints the heap the index takes, as glibc's
//! allocator counts it (`mallinfo2().uordblks`: bytes in chunks handed out, each chunk's
//! header and rounding included), divided by the revisions the index holds. The values go to
//! a store that keeps none, so only the index (B-tree, keys, generations, revisions) and the
//! store's own bookkeeping are counted. The change ring for watchers is emptied before each
//! measurement (it is bounded and counted apart: `--experimental-watch-history`).
//!
//! Run: `cargo bench --bench index_memory`.

use bytes::Bytes;
use ferrocd::mvcc::{Revision, Store, ValueRef, ValueStore};

/// Values kept nowhere: the index's handles point at nothing.
struct NoValues;

impl ValueStore for NoValues {
    fn append(&mut self, _rev: Revision, _key: &[u8], value: &[u8]) -> ValueRef {
        ValueRef {
            seg: 0,
            off: 0,
            len: value.len() as u32,
        }
    }
    fn get(&self, _r: ValueRef) -> Bytes {
        Bytes::new()
    }
    fn release(&mut self, _r: ValueRef) {}
    fn live_bytes(&self) -> u64 {
        0
    }
    fn total_bytes(&self) -> u64 {
        0
    }
}

fn heap() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    unsafe { libc::mallinfo2() }.uordblks
}

/// The loadgen's keys: the index in decimal, zero-padded to `size` bytes.
fn key(i: u64, size: usize) -> Bytes {
    Bytes::from(format!("{i:0size$}"))
}

/// A permutation of 0..n in random order (Fisher-Yates driven by xorshift64 from a fixed seed,
/// so runs are alike).
fn shuffled(n: u64) -> impl Iterator<Item = u64> {
    let mut all: Vec<u64> = (0..n).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..all.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        all.swap(i, (x % (i as u64 + 1)) as usize);
    }
    all.into_iter()
}

fn measure(name: &str, build: impl FnOnce() -> Store<NoValues>) {
    let before = heap();
    let mut s = build();
    s.set_history_capacity(1);
    let after = heap();
    let revs = s.revisions_indexed();
    println!(
        "| {name} | {} | {revs} | {:.1} |",
        s.keys_indexed(),
        (after - before) as f64 / revs as f64
    );
    drop(s);
}

/// A store given puts of (key, lease), the change ring kept to one entry while it fills.
fn filled(puts: impl Iterator<Item = (Bytes, i64)>) -> Store<NoValues> {
    let value = [7u8; 256];
    let mut s = Store::new(NoValues);
    s.set_history_capacity(1);
    for (k, lease) in puts {
        s.write().put(&k, &value, lease);
    }
    s
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    const N: u64 = 1_000_000;
    println!("| index | keys | revisions | heap bytes per revision |");
    println!("|---|---|---|---|");
    for size in [8usize, 16, 32] {
        measure(
            &format!("{N} keys of {size} B, one put each, random order"),
            || filled(shuffled(N).map(|i| (key(i, size), 0))),
        );
    }
    measure(
        &format!("{N} keys of 8 B, one put each, in key order"),
        || filled((0..N).map(|i| (key(i, 8), 0))),
    );
    measure(
        &format!("{N} keys of 8 B, random order, a quarter with a lease"),
        || filled(shuffled(N).map(|i| (key(i, 8), if i % 4 == 0 { 7 } else { 0 }))),
    );
    measure(
        &format!("{N} keys of 8 B, one put each, restored from a checkpoint"),
        || {
            use ferrocd::mvcc::key_index::{KeyIndex, RevEntry};
            let mut s = Store::new(NoValues);
            let keys = (0..N)
                .map(|i| {
                    let rev = Revision {
                        main: i as i64 + 2,
                        sub: 0,
                    };
                    let entry = RevEntry {
                        rev,
                        lease: 0,
                        value: ValueRef {
                            seg: 0,
                            off: 0,
                            len: 256,
                        },
                    };
                    let ki = KeyIndex::from_single(1, rev, entry).expect("a put");
                    (ferrocd::mvcc::Key::new(&key(i, 8)), ki)
                })
                .collect();
            s.restore_keys(keys);
            s
        },
    );
    let ten_puts = || {
        (0..10)
            .flat_map(|_| shuffled(100_000))
            .map(|i| (key(i, 8), 0))
    };
    measure("100000 keys of 8 B, 10 puts each", || filled(ten_puts()));
    measure(
        "100000 keys of 8 B, 10 puts each, compacted at the last revision",
        || {
            let mut s = filled(ten_puts());
            let rev = s.rev();
            s.compact_now(rev).expect("compact");
            s
        },
    );
}
