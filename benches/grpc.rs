//! One unary call's CPU work on the server, without the network: decode the gRPC message,
//! execute it on the state, encode the response frame. Put of 8 B keys and 256 B values
//! (etcd's benchmark defaults) into 100k keys, a point Range over them, and applying a Txn
//! (compare the mod revision, put or read).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrocd::error::{Code, Status};
use ferrocd::kv::KvState;
use ferrocd::proto::etcdserverpb as pb;
use ferrocd::server::{decode_request, encode_response, with_deadline};
use prost::Message;

const KEYS: u64 = 100_000;

fn state() -> KvState {
    KvState::in_memory(1, 2)
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("{:08}", i % KEYS))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("grpc_unary");
    g.throughput(Throughput::Elements(1));
    let mut s = state();
    let value = Bytes::from(vec![b'v'; 256]);
    // Encoded requests prepared outside the timed loop, as they arrive off the wire.
    let puts: Vec<Bytes> = (0..KEYS)
        .map(|i| {
            Bytes::from(
                pb::PutRequest {
                    key: key(i),
                    value: value.clone(),
                    ..Default::default()
                }
                .encode_to_vec(),
            )
        })
        .collect();
    let mut i = 0usize;
    g.bench_function("put_256b", |b| {
        b.iter(|| {
            i = (i + 1) % puts.len();
            let req = decode_request("/etcdserverpb.KV/Put", puts[i].clone(), 1 << 20).unwrap();
            encode_response(&s.execute(req).unwrap())
        })
    });
    let gets: Vec<Bytes> = (0..KEYS)
        .map(|i| {
            Bytes::from(
                pb::RangeRequest {
                    key: key(i * 7919),
                    ..Default::default()
                }
                .encode_to_vec(),
            )
        })
        .collect();
    g.bench_function("range_point_256b", |b| {
        b.iter(|| {
            i = (i + 1) % gets.len();
            let req = decode_request("/etcdserverpb.KV/Range", gets[i].clone(), 1 << 20).unwrap();
            encode_response(&s.execute(req).unwrap())
        })
    });
    // A txn as etcd clients send them for optimistic updates (k8s): compare the key's mod
    // revision, put on success, read it on failure. Half the keys were put above, so both
    // branches run.
    let txns: Vec<Bytes> = (0..KEYS)
        .map(|i| {
            use pb::compare::{CompareResult, CompareTarget, TargetUnion};
            let k = key(i * 31);
            Bytes::from(
                pb::TxnRequest {
                    compare: vec![pb::Compare {
                        result: CompareResult::Greater as i32,
                        target: CompareTarget::Mod as i32,
                        key: k.clone(),
                        target_union: Some(TargetUnion::ModRevision(0)),
                        ..Default::default()
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: k.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                            key: k,
                            ..Default::default()
                        })),
                    }],
                }
                .encode_to_vec(),
            )
        })
        .collect();
    g.bench_function("txn_compare_put_256b", |b| {
        b.iter(|| {
            i = (i + 1) % txns.len();
            let req = decode_request("/etcdserverpb.KV/Txn", txns[i].clone(), 1 << 20).unwrap();
            encode_response(&s.execute(req).unwrap())
        })
    });
    g.finish();
}

/// A call's deadline (`grpc-timeout`) around work that waits once, as a unary call waits for
/// its batch: `with_deadline` (one list per executor, swept by one timer) against a glommio
/// timer per call, which it was until 2026-11-27 (the same `or` around `timer::sleep`).
fn deadline(c: &mut Criterion) {
    use std::time::{Duration, Instant};
    let mut g = c.benchmark_group("deadline");
    g.throughput(Throughput::Elements(1));
    let ex = glommio::LocalExecutor::default();
    let d = Duration::from_secs(5);
    fn work() -> impl std::future::Future<Output = Result<u8, Status>> {
        let mut waited = false;
        std::future::poll_fn(move |cx| {
            if waited {
                return std::task::Poll::Ready(Ok(1));
            }
            waited = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        })
    }
    /// `iters` calls of `call`, one after the other, on the executor.
    fn timed<F, Fut>(ex: &glommio::LocalExecutor, iters: u64, mut call: F) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<u8, Status>>,
    {
        ex.run(async {
            let t0 = Instant::now();
            for _ in 0..iters {
                call().await.unwrap();
            }
            t0.elapsed()
        })
    }
    g.bench_function("with_deadline", |b| {
        b.iter_custom(|iters| timed(&ex, iters, || with_deadline(work(), d)))
    });
    g.bench_function("glommio_timer_per_call", |b| {
        b.iter_custom(|iters| {
            timed(&ex, iters, || {
                futures_lite::future::or(work(), async {
                    glommio::timer::sleep(d).await;
                    Err(Status::new(Code::DeadlineExceeded, "deadline"))
                })
            })
        })
    });
    g.bench_function("no_deadline", |b| {
        b.iter_custom(|iters| timed(&ex, iters, work))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench, deadline
}
criterion_main!(benches);
