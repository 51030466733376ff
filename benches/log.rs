//! The log's group commit: one batch of N records (puts of 8 B keys and 256 B values, encoded
//! as the apply loop encodes them) written with one write and made durable with one
//! fdatasync, on the machine's disk (a temporary directory). Throughput is in records, so the
//! N=1 row is the disk's fdatasync rate and the larger rows show what batching buys.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrocd::kv::{encode_write, Request};
use ferrocd::log::Log;
use ferrocd::proto::etcdserverpb as pb;

fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            encode_write(&Request::Put(pb::PutRequest {
                key: Bytes::from(format!("{i:08}")),
                value: Bytes::from(vec![b'v'; 256]),
                ..Default::default()
            }))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_group_commit");
    let ex = glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor");
    for n in [1usize, 16, 128] {
        g.throughput(Throughput::Elements(n as u64));
        let batch = payloads(n);
        g.bench_with_input(
            BenchmarkId::new("append_fdatasync", n),
            &batch,
            |b, batch| {
                b.iter_custom(|iters| {
                    let batch = batch.clone();
                    ex.run(async move {
                        let dir = tempfile::tempdir().expect("temp dir");
                        let mut log = Log::open(dir.path(), 64 << 20, 1).await.expect("log").log;
                        let start = Instant::now();
                        for _ in 0..iters {
                            log.append(&batch).await.expect("append");
                        }
                        start.elapsed()
                    })
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
