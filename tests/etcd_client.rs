//! The `etcd-client` crate (tonic-based, as Rust users talk to etcd) against ferrocd: KV, Txn,
//! compaction, and the gRPC codes and messages of the errors.

mod common;

use common::{rt, Cluster, Server};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

async fn client(s: &Server) -> Client {
    Client::connect([s.url()], None).await.expect("connect")
}

fn status(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

#[test]
fn kv_txn_and_compaction() {
    let server = Server::ferrocd(&[]);
    rt().block_on(async {
        let mut c = client(&server).await;
        let r = c.put("k1", "v1", None).await.unwrap();
        assert_eq!(r.header().unwrap().revision(), 2);
        c.put("k2", "v2", None).await.unwrap();
        let r = c
            .put("k1", "v1b", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(r.prev_key().unwrap().value(), b"v1");

        let r = c
            .get(
                "k",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Mod, SortOrder::Descend),
                ),
            )
            .await
            .unwrap();
        let keys: Vec<_> = r.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
        assert_eq!(keys, ["k1", "k2"]);
        assert_eq!(r.kvs()[0].version(), 2);
        assert_eq!(r.kvs()[0].create_revision(), 2);
        assert_eq!(r.kvs()[0].mod_revision(), 4);

        let r = c
            .get("k", Some(GetOptions::new().with_prefix().with_limit(1)))
            .await
            .unwrap();
        assert!(r.more());
        assert_eq!(r.count(), 2);
        let r = c
            .get("k", Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .unwrap();
        assert_eq!(
            (r.count(), r.kvs().len()),
            (2, 0),
            "count only: no key-values"
        );
        let r = c
            .get("k", Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .unwrap();
        assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
        assert_eq!(r.kvs().len(), 2);

        // Txn: the success branch writes and reads in one revision.
        let txn = Txn::new()
            .when([Compare::value("k1", CompareOp::Equal, "v1b")])
            .and_then([TxnOp::put("k3", "v3", None), TxnOp::get("k3", None)])
            .or_else([TxnOp::put("never", "x", None)]);
        let r = c.txn(txn).await.unwrap();
        assert!(r.succeeded());
        assert_eq!(r.header().unwrap().revision(), 5);
        match &r.op_responses()[1] {
            TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"v3"),
            other => panic!("unexpected {other:?}"),
        }
        let txn = Txn::new()
            .when([Compare::version("k1", CompareOp::Greater, 5)])
            .and_then([TxnOp::put("never", "x", None)])
            .or_else([TxnOp::delete("k3", None)]);
        let r = c.txn(txn).await.unwrap();
        assert!(!r.succeeded());
        assert_eq!(c.get("never", None).await.unwrap().count(), 0);
        assert_eq!(c.get("k3", None).await.unwrap().count(), 0);

        let r = c
            .delete("k", Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(r.deleted(), 2);

        // History and compaction.
        let r = c
            .get("k1", Some(GetOptions::new().with_revision(3)))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), b"v1");
        c.compact(4, None).await.unwrap();
        let e = c
            .get("k1", Some(GetOptions::new().with_revision(3)))
            .await
            .unwrap_err();
        assert_eq!(
            status(e),
            (
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted".into()
            )
        );
        let e = c
            .get("k1", Some(GetOptions::new().with_revision(1000)))
            .await
            .unwrap_err();
        assert_eq!(
            status(e),
            (
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision".into()
            )
        );
    });
}

#[test]
fn errors_carry_etcds_codes_and_messages() {
    let server = Server::ferrocd(&["--max-request-bytes", "1024", "--max-txn-ops", "4"]);
    rt().block_on(async {
        let mut c = client(&server).await;
        let e = c.put("", "v", None).await.unwrap_err();
        assert_eq!(
            status(e),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: key is not provided".into()
            )
        );
        let e = c
            .put("k", "v", Some(PutOptions::new().with_lease(42)))
            .await
            .unwrap_err();
        assert_eq!(
            status(e),
            (
                tonic::Code::NotFound,
                "etcdserver: requested lease not found".into()
            )
        );
        let e = c.put("k", vec![b'x'; 2048], None).await.unwrap_err();
        assert_eq!(
            status(e),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: request is too large".into()
            )
        );
        let ops: Vec<_> = (0..5)
            .map(|i| TxnOp::put(format!("t{i}"), "v", None))
            .collect();
        let e = c.txn(Txn::new().and_then(ops)).await.unwrap_err();
        assert_eq!(
            status(e),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: too many operations in txn request".into()
            )
        );
        let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
        let e = c.txn(dup).await.unwrap_err();
        assert_eq!(
            status(e),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request".into()
            )
        );
        // Nothing of the refused requests was written.
        let r = c
            .get("\0", Some(GetOptions::new().with_from_key()))
            .await
            .unwrap();
        assert_eq!(r.count(), 0);
        assert_eq!(r.header().unwrap().revision(), 1);
    });
}

/// `n` reads of every key under "k": each read's revision, count, and (key, mod revision, value)s.
async fn read_everything(mut c: Client, n: usize) -> Vec<(i64, i64, Vec<(String, i64, String)>)> {
    let mut reads = Vec::new();
    for _ in 0..n {
        let r = c
            .get("k", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let found: Vec<(String, i64, String)> = r
            .kvs()
            .iter()
            .map(|kv| {
                let k = kv.key_str().unwrap().to_string();
                (k, kv.mod_revision(), kv.value_str().unwrap().to_string())
            })
            .collect();
        reads.push((r.header().unwrap().revision(), r.count(), found));
    }
    reads
}

/// A Range over many keys is walked a step at a time between the owner's batches of writes
/// (`kv::KvState::read_begin`). While a writer overwrites keys and creates new ones, each read
/// must answer exactly the store as it was at its header's revision: every key with the
/// revision and value of the last acknowledged write at or before it, nothing written after,
/// and the count, though compactions past that revision come meanwhile.
#[test]
fn a_range_over_many_keys_answers_its_revision_while_writes_go_on() {
    let server = Server::ferrocd(&["--max-txn-ops", "10000", "--read-step-keys", "500"]);
    reads_at_their_revision_while_writes_go_on(&[&server]);
}

/// The same on a cluster: a member's Raft loop walks the Range in steps between its turns
/// (`replica.rs`), and a physical compaction applied from the log first ends the reads below
/// it. The writers write through every member; the two readers read through members 1 and 2
/// (one of them at least a follower).
#[test]
fn a_range_over_many_keys_on_a_cluster_member_answers_its_revision_while_writes_go_on() {
    // Long election timeouts: a leader change under a loaded CI machine would fail a write
    // whose outcome the exact check then cannot know.
    let flags = [
        "--max-txn-ops",
        "10000",
        "--read-step-keys",
        "500",
        "--heartbeat-interval",
        "300",
        "--election-timeout",
        "3000",
    ];
    let cluster = Cluster::ferrocd(3, &flags);
    let members: Vec<&Server> = cluster.members.iter().collect();
    reads_at_their_revision_while_writes_go_on(&members);
}

/// Writer `i` writes through `members[i % len]`, reader `j` reads through
/// `members[(j + 1) % len]`. The members walk 500 keys per step (`--read-step-keys`), so that
/// a read spans many turns of the loop and writes and compactions come between its steps.
fn reads_at_their_revision_while_writes_go_on(members: &[&Server]) {
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;
    const KEYS: usize = 60_000;
    const TXN_PUTS: usize = 10_000;
    const WRITERS: usize = 4;
    let at = |i: usize| members[i % members.len()];
    rt().block_on(async {
        let mut c = client(at(0)).await;
        // Every write acknowledged: key -> [(revision, value)], in revision order.
        let written: RefCell<BTreeMap<String, Vec<(i64, String)>>> = RefCell::default();
        for chunk in 0..KEYS / TXN_PUTS {
            let ops: Vec<TxnOp> = (chunk * TXN_PUTS..(chunk + 1) * TXN_PUTS)
                .map(|i| TxnOp::put(format!("k{i:07}"), "fill", None))
                .collect();
            let r = c.txn(Txn::new().and_then(ops)).await.unwrap();
            let rev = r.header().unwrap().revision();
            let mut w = written.borrow_mut();
            for i in chunk * TXN_PUTS..(chunk + 1) * TXN_PUTS {
                w.insert(format!("k{i:07}"), vec![(rev, "fill".to_string())]);
            }
        }
        let stop = Cell::new(false);
        let readers = Cell::new(2);
        let mut writers = Vec::new();
        for i in 0..WRITERS {
            writers.push(client(at(i)).await);
        }
        let mut writers = writers.into_iter();
        let mut next = || writers.next().unwrap();
        // Several writers, so that each step of a read has writes between it and the next.
        let write = |mut w: Client, id: u64| {
            let (stop, written) = (&stop, &written);
            async move {
                let mut n = 0u64;
                while !stop.get() {
                    // Overwrites spread over the keys, and new keys past the filled ones.
                    n += 1;
                    let m = n * WRITERS as u64 + id;
                    // A third of the overwrites go to the last 1,000 keys, which a read walks
                    // last: a compaction that drops what a read under way still has to read
                    // is then likely to hit it.
                    let key = match n % 3 {
                        0 => format!("k{:07}", KEYS as u64 + m),
                        1 => format!("k{:07}", KEYS as u64 - 1 - m % 1000),
                        _ => format!("k{:07}", (m * 7919) % KEYS as u64),
                    };
                    let value = format!("w{m}");
                    let rev = w
                        .put(key.clone(), value.clone(), None)
                        .await
                        .unwrap()
                        .header()
                        .unwrap()
                        .revision();
                    written
                        .borrow_mut()
                        .entry(key)
                        .or_default()
                        .push((rev, value));
                    // (Another writer may have compacted past this revision already.)
                    // Compactions, every fifth put: physical ones trim the index at once, the
                    // others between batches; the reads under way still read what they drop.
                    if n % 5 == 0 {
                        let physical =
                            (n % 10 == 0).then(|| CompactionOptions::new().with_physical());
                        if let Err(e) = w.compact(rev, physical).await {
                            let (code, _) = status(e);
                            assert_eq!(code, tonic::Code::OutOfRange);
                        }
                    }
                }
                n
            }
        };
        // Two readers, so that reads take turns and a trimming walk could overtake one.
        let (c, c2) = (client(at(1)).await, client(at(2)).await);
        let reader = |c: Client| {
            let (stop, readers) = (&stop, &readers);
            async move {
                let reads = read_everything(c, 12).await;
                readers.set(readers.get() - 1);
                if readers.get() == 0 {
                    stop.set(true);
                }
                reads
            }
        };
        let (p0, p1, p2, p3, mut reads, reads2) = tokio::join!(
            write(next(), 0),
            write(next(), 1),
            write(next(), 2),
            write(next(), 3),
            reader(c),
            reader(c2),
        );
        reads.extend(reads2);
        let puts = p0 + p1 + p2 + p3;
        let written = written.into_inner();
        for (rev, count, found) in reads {
            let want: Vec<(String, i64, String)> = written
                .iter()
                .filter_map(|(k, ws)| {
                    let (r, v) = ws.iter().rev().find(|(r, _)| *r <= rev)?;
                    Some((k.clone(), *r, v.clone()))
                })
                .collect();
            assert_eq!(count as usize, want.len(), "count at revision {rev}");
            assert!(found == want, "the keys at revision {rev} differ");
        }
        assert!(puts > 0, "no write came");
    });
}
