//! One Raft round on a single member, as the Raft loop (src/server/replica.rs) runs it, without
//! the disk: N puts proposed, the Ready taken, its entries and hard state appended to raft-rs's
//! storage (`consensus::LogStorage`, in memory: the durable write is the `log` bench's), the
//! append reported persisted (`advance_append_async`, `on_persist_ready`), and the committed
//! entries this makes applied to the state (`KvState::apply_logged`, 8 B keys among 100k, 256 B
//! values). Throughput is in entries, so the N=1 row is the cost of a round and the larger rows
//! what batching buys. Entries over 10,000 behind the applied index are forgotten, as after a
//! checkpoint (the loop keeps them as places in the log's mapping, which this bench has not).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrocd::consensus::{self, LogStorage};
use ferrocd::kv::{decode_write, encode_write, KvState, Request};
use ferrocd::proto::etcdserverpb as pb;
use raft::RawNode;

struct Member {
    raw: RawNode<LogStorage>,
    state: KvState,
    applied: u64,
    next_id: u64,
    seq: u64,
}

impl Member {
    fn new() -> Member {
        let mut storage = LogStorage::default();
        storage.set_conf_state(raft::eraftpb::ConfState {
            voters: vec![1],
            ..Default::default()
        });
        let config = raft::Config {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 1,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut m = Member {
            raw: RawNode::new(&config, storage, &logger).expect("raft starts"),
            state: KvState::in_memory(1, 1),
            applied: 0,
            next_id: 1,
            seq: 0,
        };
        m.raw.campaign().expect("campaign");
        m.settle();
        assert!(
            m.raw.raft.state == raft::StateRole::Leader,
            "a single voter leads"
        );
        m
    }

    /// Handles Readies until none is left: append, report persisted, apply what is committed.
    fn settle(&mut self) {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            let committed = rd.take_committed_entries();
            self.apply(committed);
            let entries = rd.take_entries();
            let store = self.raw.mut_store();
            store.append(&entries);
            for e in &entries {
                self.seq += 1;
                store.set_data(e.index, e.term, e.data.clone(), self.seq);
            }
            if let Some(hs) = rd.hs() {
                store.set_hard_state(hs.clone());
            }
            let number = rd.number();
            self.raw.advance_append_async(rd);
            self.raw.on_persist_ready(number);
        }
        let applied = self.applied;
        self.raw.advance_apply_to(applied);
        if applied > 20_000 && applied % 10_000 < 200 {
            assert!(
                self.raw.mut_store().compact(applied - 10_000),
                "applied entries"
            );
        }
    }

    fn apply(&mut self, entries: Vec<raft::eraftpb::Entry>) {
        for e in entries {
            if let Some((_, _, payload)) = consensus::parse_proposal(&e.data) {
                let req = decode_write(payload).expect("a logged put");
                self.state
                    .apply_logged(req, e.index)
                    .expect("a put applies");
            }
            self.applied = e.index;
        }
    }

    /// One round: `batch` proposed, then settled.
    fn round(&mut self, batch: &[Vec<u8>]) {
        for p in batch {
            let data = consensus::proposal(1, self.next_id, p);
            self.next_id += 1;
            self.raw.propose(vec![], data).expect("the leader takes it");
        }
        self.settle();
    }
}

fn payloads(n: usize, round: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            encode_write(&Request::Put(pb::PutRequest {
                key: Bytes::from(format!("{:08}", (round * n + i) % 100_000)),
                value: Bytes::from(vec![b'v'; 256]),
                ..Default::default()
            }))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("raft_round");
    for n in [1usize, 16, 128] {
        g.throughput(Throughput::Elements(n as u64));
        // A few distinct batches, so that keys move through the key space.
        let batches: Vec<Vec<Vec<u8>>> = (0..64).map(|r| payloads(n, r)).collect();
        g.bench_with_input(
            BenchmarkId::new("propose_ready_apply", n),
            &batches,
            |b, batches| {
                b.iter_custom(|iters| {
                    let mut m = Member::new();
                    let started = Instant::now();
                    for i in 0..iters as usize {
                        m.round(&batches[i % batches.len()]);
                    }
                    let took = started.elapsed();
                    assert_eq!(
                        m.state.store().rev() as u64,
                        1 + iters * n as u64,
                        "every put applied"
                    );
                    took
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
