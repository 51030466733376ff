//! The MVCC index hot paths: put, point get, and a 100-key range over 1M keys.
//! Values are 256 B (etcd's benchmark default); the in-memory value store is used, so these
//! measure the index and the response building, not disk. `ordered_map` sets the index's
//! ordered map beside std's B-tree, lookups of keys not in cache.

use std::collections::BTreeMap;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use ferrocd::mvcc::index::Index;
use ferrocd::mvcc::{Key, KeySpan, ReadOpts, Store};

const KEYS: u64 = 1_000_000;
const VALUE: [u8; 256] = [7u8; 256];

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key/{i:012}"))
}

fn filled(n: u64) -> Store {
    let mut s = Store::default();
    for i in 0..n {
        s.write().put(&key(i), &VALUE, 0);
    }
    s
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(1));
    g.bench_function("put_new_key", |b| {
        let mut s = Store::default();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            s.write().put(&key(i), &VALUE, 0)
        })
    });
    let mut big = filled(KEYS);
    g.bench_function("put_overwrite_1m", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % KEYS;
            big.write().put(&key(i), &VALUE, 0)
        })
    });
    g.bench_function("get_point_1m", |b| {
        let mut i = 0u64;
        b.iter_batched(
            || {
                i = (i + 7919) % KEYS;
                key(i)
            },
            |k| big.range(KeySpan::Single(&k), ReadOpts::default()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("range_100_of_1m", |b| {
        let mut i = 0u64;
        b.iter_batched(
            || {
                i = (i + 7919) % (KEYS - 100);
                (key(i), key(i + 100))
            },
            |(from, to)| {
                let r = big
                    .range(KeySpan::Range(&from, &to), ReadOpts::default())
                    .unwrap();
                assert_eq!(r.kvs.len(), 100);
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// 0..n, in random order when `random` (Fisher-Yates driven by xorshift64 from a fixed seed).
fn shuffled(n: u64, random: bool) -> Vec<u64> {
    let mut all: Vec<u64> = (0..n).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..all.len()).rev().filter(|_| random) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        all.swap(i, (x % (i as u64 + 1)) as usize);
    }
    all
}

/// The index's ordered map against std's B-tree, side by side in one run: lookups among 1M
/// keys written in key order and in random order, values the size of a key's history (40 B).
fn ordered_map(c: &mut Criterion) {
    type History = [u64; 5];
    let mut g = c.benchmark_group("ordered_map");
    g.throughput(Throughput::Elements(1));
    let key = |i: u64| Key::new(format!("key/{i:012}").as_bytes());
    for (order, random) in [("in_order", false), ("random", true)] {
        let keys = || shuffled(KEYS, random);
        let mut index = Index::default();
        let mut btree = BTreeMap::new();
        for i in keys() {
            index.insert(&key(i), [i; 5] as History);
            btree.insert(key(i), [i; 5] as History);
        }
        let probes: Vec<Key> = (0..1u64 << 20).map(|i| key((i * 7919) % KEYS)).collect();
        let mut n = 0;
        g.bench_function(format!("get_{order}_1m/index"), |b| {
            b.iter(|| {
                n = (n + 1) % probes.len();
                index.get(&probes[n]).map(|h| h[0])
            })
        });
        g.bench_function(format!("get_{order}_1m/std_btree"), |b| {
            b.iter(|| {
                n = (n + 1) % probes.len();
                btree.get(&probes[n][..]).map(|h| h[0])
            })
        });
        g.bench_function(format!("insert_remove_{order}_1m/index"), |b| {
            b.iter(|| {
                n = (n + 1) % probes.len();
                let k = key(KEYS + n as u64);
                index.insert(&k, [0; 5]);
                index.remove(&k)
            })
        });
        g.bench_function(format!("insert_remove_{order}_1m/std_btree"), |b| {
            b.iter(|| {
                n = (n + 1) % probes.len();
                let k = key(KEYS + n as u64);
                btree.insert(k.clone(), [0; 5]);
                btree.remove(&k[..])
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench, ordered_map
}
criterion_main!(benches);
