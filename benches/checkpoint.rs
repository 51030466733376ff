//! Restoring a checkpoint, as a restart does: `checkpoint::load` (map and check every part:
//! CRCs, sequence, end record) and then `KvState::restore_checkpoint` (the index rebuilt,
//! values left in the mapping), for 100k and 1M keys of 256 B values, one revision each.
//! The checkpoint is written once per size into a temporary directory (the page cache holds
//! it, as after a recent write). Throughput is in revisions.
//!
//! And the owner's share of taking one (`walk`): every `KvState::checkpoint_step` of
//! `CHECKPOINT_KEYS_PER_STEP` keys, as the shard runs them between batches, over 100k keys
//! (the writer's encoding and writes left out).

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrocd::kv::{KvState, Request};
use ferrocd::log::checkpoint;
use ferrocd::proto::etcdserverpb as pb;

/// A checkpoint of `n` keys in `dir`: its seq and parts.
fn write(dir: &std::path::Path, n: usize) -> (u64, Vec<std::path::PathBuf>) {
    let mut s = filled(n);
    let (rev, meta) = s.checkpoint_begin(None);
    let mut w = checkpoint::Writer::create(dir, 1, &meta).expect("writer");
    let mut after = None;
    loop {
        let (items, next) = s
            .checkpoint_step(after.as_ref(), rev, 10_000)
            .expect("not abandoned");
        for it in &items {
            w.item(it).expect("item");
        }
        match next {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    (1, w.finish().expect("finish"))
}

/// A state of `n` keys of 256 B values, one revision each.
fn filled(n: usize) -> KvState {
    let mut s = KvState::in_memory(1, 1);
    for i in 0..n {
        s.execute(Request::Put(pb::PutRequest {
            key: Bytes::from(format!("{i:08}")),
            value: Bytes::from(vec![b'v'; 256]),
            ..Default::default()
        }))
        .expect("put");
    }
    s
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("checkpoint");
    let n = 100_000usize;
    let mut s = filled(n);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new("walk", n), |b| {
        b.iter(|| {
            let (rev, _meta) = s.checkpoint_begin(None);
            let (mut after, mut items) = (None, 0);
            loop {
                let (step, next) = s
                    .checkpoint_step(
                        after.as_ref(),
                        rev,
                        ferrocd::limits::CHECKPOINT_KEYS_PER_STEP,
                    )
                    .expect("not abandoned");
                items += step.len();
                match next {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
            assert_eq!(items, n);
        })
    });
    for n in [100_000usize, 1_000_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (seq, parts) = write(dir.path(), n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("load", n), &parts, |b, parts| {
            b.iter(|| checkpoint::load(seq, parts).expect("load"))
        });
        g.bench_with_input(
            BenchmarkId::new("load_and_restore", n),
            &parts,
            |b, parts| {
                b.iter(|| {
                    let loaded = checkpoint::load(seq, parts).expect("load");
                    let mut s = KvState::in_memory(1, 1);
                    s.restore_checkpoint(loaded, 0).expect("restore");
                    s
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
