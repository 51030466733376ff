//! One unary call's CPU work on the server, without the network: decode the gRPC message,
//! execute it on the state, encode the response frame. Put of 8 B keys and 256 B values
//! (etcd's benchmark defaults) into 100k keys, and a point Range over them.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrocd::kv::KvState;
use ferrocd::proto::etcdserverpb as pb;
use ferrocd::server::{decode_request, encode_response};
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
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
