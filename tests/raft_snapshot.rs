//! Checkpoints in a cluster: every member checkpoints its state and deletes the log before it
//! (keeping a few entries for followers slightly behind); a follower too far behind receives
//! the leader's checkpoint as a Raft snapshot, installs it, and restarts from it after kill -9.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{rt, Cluster, Server};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Checkpoints every MiB of log, 1 MiB segments, 100 entries kept for followers.
const SMALL: [&str; 6] = [
    "--checkpoint-min-bytes",
    "1048576",
    "--log-segment-bytes",
    "1048576",
    "--experimental-snapshot-catchup-entries",
    "100",
];

/// Every key under `prefix` with its mod revision and value, read serializably from `server`
/// (its own state, not the leader's).
fn local_kvs(server: &Server, prefix: &str) -> BTreeMap<String, (i64, Vec<u8>)> {
    try_local_kvs(server, prefix).expect("a serializable range")
}

/// [`local_kvs`], or None while the server does not answer.
fn try_local_kvs(server: &Server, prefix: &str) -> Option<BTreeMap<String, (i64, Vec<u8>)>> {
    rt().block_on(async {
        let mut c = etcd_client::Client::connect([server.url()], None)
            .await
            .ok()?;
        let opts = etcd_client::GetOptions::new()
            .with_prefix()
            .with_serializable();
        let got = c.get(prefix, Some(opts)).await.ok()?;
        let kvs = got
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    (kv.mod_revision(), kv.value().to_vec()),
                )
            })
            .collect();
        Some(kvs)
    })
}

/// Puts `n` values of 1 KiB over 200 keys through `endpoint`; returns the last revision.
fn fill(endpoint: String, round: usize, n: usize) -> i64 {
    rt().block_on(async move {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("connect");
        let mut rev = 0;
        for i in 0..n {
            let value = format!("{round}-{i}-{}", "v".repeat(1000));
            rev = common::put_rev(&mut c, &format!("snap/{:03}", i % 200), &value).await;
        }
        rev
    })
}

fn files(dir: &std::path::Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits (bounded) until every member in `among` holds the same keys as `reference`.
fn wait_same(c: &Cluster, among: &[usize], reference: usize, what: &str) {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let want = try_local_kvs(&c.members[reference], "snap/");
        let differ: Vec<usize> = among
            .iter()
            .copied()
            .filter(|&i| want.is_none() || try_local_kvs(&c.members[i], "snap/") != want)
            .collect();
        if differ.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: members {differ:?} differ from m{reference}\n{}",
            differ
                .iter()
                .map(|&i| c.members[i].log())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (bounded) until `leader` released every log segment its newest checkpoint covers.
fn wait_released(c: &Cluster, leader: usize) {
    let member_dir = |i: usize| c.members[i].dir.path().join("data").join("member");
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let logs = files(&member_dir(leader).join("log"), ".log");
        let ckpts = files(&member_dir(leader).join("checkpoint"), ".ckpt");
        // Released: every segment whose records the newest checkpoint covers is gone, so each
        // segment but the newest ends (where the next begins) after the checkpoint's record.
        // Without checkpoints the leader's log would hold 6+ MiB, 7 segments or more, from
        // the first record on. (Counting segments instead depended on where the last
        // checkpoint of the fill fell: 5 left was as right as 4.)
        let seq = |name: &String| u64::from_str_radix(&name[..16], 16).unwrap();
        let released = ckpts.last().is_some_and(|c| {
            let covered = seq(c);
            let starts: Vec<u64> = logs.iter().map(seq).collect();
            !starts.is_empty() && starts.windows(2).all(|w| w[1] - 1 > covered)
        });
        if released {
            eprintln!("leader: log segments {logs:?}, checkpoint {ckpts:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leader's log was not released: {logs:?} {ckpts:?}\n{}",
            c.members[leader].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_follower_far_behind_catches_up_from_a_snapshot_and_logs_are_released() {
    if !common::etcd_tools_or_skip(
        "a_follower_far_behind_catches_up_from_a_snapshot_and_logs_are_released",
    ) {
        return;
    }
    let mut c = Cluster::ferrocd(3, &SMALL);
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let behind = (leader + 1) % 3;
    let other = 3 - leader - behind;
    fill(c.members[leader].url(), 0, 500);
    wait_same(&c, &[behind, other], leader, "before the stop");

    // One follower stops; the others write 6 MiB (over 200 keys), checkpoint it and let the
    // log before their checkpoints go.
    c.members[behind].kill9();
    let last_rev = fill(c.members[leader].url(), 1, 6000);
    wait_released(&c, leader);

    // The follower comes back: the entries it needs are gone, so it gets a snapshot.
    c.members[behind].relaunch();
    c.members[behind].wait_healthy();
    wait_same(&c, &[behind, other], leader, "after the snapshot");
    let log = c.members[behind].log();
    for line in log.lines().filter(|l| l.contains("snapshot")) {
        eprintln!("m{behind}: {line}");
    }
    assert!(log.contains("raft: snapshot installed"), "{log}");
    assert!(
        c.members[leader].log().contains("raft snapshot sent"),
        "{}",
        c.members[leader].log()
    );
    let kvs = local_kvs(&c.members[behind], "snap/");
    assert_eq!(kvs.len(), 200);
    assert_eq!(kvs.values().map(|(r, _)| *r).max(), Some(last_rev));

    // It restarts from the installed snapshot after kill -9, and keeps up with new writes.
    c.members[behind].kill9();
    c.members[behind].relaunch();
    c.members[behind].wait_healthy();
    fill(c.members[other].url(), 2, 300);
    wait_same(&c, &[behind, other], leader, "after the follower's restart");

    // Every member, the leader too, restarts from its own checkpoint and the log after it.
    for m in &mut c.members {
        m.kill9();
    }
    for m in &mut c.members {
        m.relaunch();
    }
    for m in &mut c.members {
        m.wait_healthy();
    }
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let rev = fill(c.members[leader].url(), 3, 50);
    wait_same(&c, &[0, 1, 2], leader, "after a restart of every member");
    let kvs = local_kvs(&c.members[behind], "snap/");
    assert_eq!(kvs.values().map(|(r, _)| *r).max(), Some(rev));
    for m in &c.members {
        let log = m.log();
        assert!(log.contains("checkpoint restored"), "{log}");
    }
}

#[test]
fn a_member_added_after_the_log_was_released_starts_from_a_snapshot() {
    if !common::etcd_tools_or_skip(
        "a_member_added_after_the_log_was_released_starts_from_a_snapshot",
    ) {
        return;
    }
    let mut c = Cluster::ferrocd(3, &SMALL);
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let last_rev = fill(c.members[leader].url(), 0, 3000);
    let ckpt_dir = c.members[leader].dir.path().join("data/member/checkpoint");
    let deadline = Instant::now() + LEADER_TIMEOUT;
    while files(&ckpt_dir, ".ckpt").is_empty() {
        assert!(Instant::now() < deadline, "no checkpoint on the leader");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A learner added now cannot get the cluster's first entries: it gets the snapshot.
    let (out, new) = c.add_member("m3", true, &SMALL);
    let id = out
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no member id in {out:?}"))
        .to_string();
    wait_same(&c, &[new], leader, "the new member did not catch up");
    let log = c.members[new].log();
    assert!(log.contains("raft: snapshot installed"), "{log}");
    let kvs = local_kvs(&c.members[new], "snap/");
    assert_eq!(kvs.values().map(|(r, _)| *r).max(), Some(last_rev));

    // It is promoted once caught up, and takes part in the writes that follow.
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let out = common::etcdctl(&c.endpoints(), &["member", "promote", &id], "");
        if out.code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no promotion: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    fill(c.members[leader].url(), 1, 200);
    wait_same(&c, &[0, 1, 2, new], leader, "after the promotion");
    let out = common::etcdctl(&c.endpoints(), &["member", "list"], "");
    assert_eq!(out.stdout.lines().count(), 4, "{out:?}");
    assert!(!out.stdout.contains("true"), "a learner left: {out:?}");
}

/// A follower cut off from the leader still serves serializable reads of its own state. When
/// the cut heals and the leader's log no longer holds what it missed, it installs a snapshot.
/// A read walked in steps (`--read-step-keys 1`: one key per turn of its Raft loop) when the
/// snapshot's state replaces its own is first walked to its end in the state it began in:
/// every read answers exactly the keys at its header revision, though the snapshot's state
/// holds the overwrites and a physical compaction past that revision.
#[test]
fn a_read_under_way_when_a_snapshot_installs_answers_the_state_it_began_in() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    // With one key per step (a turn of the Raft loop, about 0.1 ms here), a read takes
    // seconds: the install comes in the middle of the first.
    const KEYS: usize = 20_000;
    const TXN_PUTS: usize = 10_000;
    let mut flags = SMALL.to_vec();
    flags.extend(["--read-step-keys", "1", "--max-txn-ops", "10000"]);
    let mut c = Cluster::launch_proxied("ferrocd", Cluster::ferrocd_bin(), 3, &flags);
    for m in &mut c.members {
        m.wait_healthy();
    }
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let behind = (leader + 1) % 3;
    // Each chunk of keys written with one value per txn: (revision, value) per chunk, in order.
    let mut history: Vec<Vec<(i64, &str)>> = vec![Vec::new(); KEYS / TXN_PUTS];
    let write_all = |value: &'static str, history: &mut Vec<Vec<(i64, &str)>>| {
        rt().block_on(async {
            let mut cl = etcd_client::Client::connect([c.members[leader].url()], None)
                .await
                .expect("connect");
            for (chunk, h) in history.iter_mut().enumerate() {
                let ops: Vec<etcd_client::TxnOp> = (chunk * TXN_PUTS..(chunk + 1) * TXN_PUTS)
                    .map(|i| etcd_client::TxnOp::put(format!("big/{i:06}"), value, None))
                    .collect();
                let r = cl.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
                h.push((r.header().unwrap().revision(), value));
            }
        })
    };
    write_all("a", &mut history);
    let deadline = Instant::now() + LEADER_TIMEOUT;
    while try_local_kvs(&c.members[behind], "big/").map(|k| k.len()) != Some(KEYS) {
        assert!(Instant::now() < deadline, "m{behind} did not get the keys");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Cut off, it misses the overwrites, a physical compaction past them and enough entries
    // (and a checkpoint after them) for the leader's log to no longer hold them.
    // The compaction comes first, so that the checkpoints the fill brings (one of them is the
    // snapshot) hold no revision before the overwrites.
    c.proxies[behind].cut(true);
    write_all("b", &mut history);
    let rev = history.last().unwrap().last().unwrap().0;
    rt().block_on(async {
        let mut cl = etcd_client::Client::connect([c.members[leader].url()], None)
            .await
            .expect("connect");
        let physical = etcd_client::CompactionOptions::new().with_physical();
        cl.compact(rev, Some(physical)).await.expect("compact");
    });
    fill(c.members[leader].url(), 0, 1500);
    wait_released(&c, leader);

    // Reads of every key on it, one after the other, from before the cut heals until after
    // it installed the snapshot.
    let (stop, done) = (AtomicBool::new(false), AtomicUsize::new(0));
    let reads = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                reads.push(read_keys(&c.members[behind], "big/"));
                eprintln!("read at {} took {:?}", reads.last().unwrap().0, t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            reads
        });
        // The reader stops however this thread ends (a failed assertion too).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(300));
        c.proxies[behind].cut(false);
        let healed = Instant::now();
        let deadline = Instant::now() + LEADER_TIMEOUT;
        while !c.members[behind].log().contains("raft: snapshot installed") {
            assert!(
                Instant::now() < deadline,
                "no snapshot installed\n{}",
                c.members[behind].log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("installed {:?} after the heal", healed.elapsed());
        // Two more reads after the install (the first may have begun before it).
        let until = done.load(Ordering::Relaxed) + 2;
        while done.load(Ordering::Relaxed) < until {
            assert!(Instant::now() < deadline, "the reads stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("reader")
    });
    let revs: Vec<i64> = reads.iter().map(|(r, _)| *r).collect();
    eprintln!("{} reads at revisions {revs:?}", reads.len());
    for (rev, found) in &reads {
        let want: Vec<(String, i64)> = (0..KEYS)
            .filter_map(|i| {
                let chunk = &history[i / TXN_PUTS];
                let (r, _) = chunk.iter().rev().find(|(r, _)| *r <= *rev)?;
                Some((format!("big/{i:06}"), *r))
            })
            .collect();
        assert_eq!(found.len(), want.len(), "keys at revision {rev}");
        assert!(*found == want, "the keys at revision {rev} differ");
    }
    assert!(
        revs.first() < revs.last(),
        "no read before and after the install: {revs:?}"
    );
}

/// Every key under `prefix` on `server` and its mod revision (a serializable, keys-only
/// range), with the revision the answer is at.
fn read_keys(server: &Server, prefix: &str) -> (i64, Vec<(String, i64)>) {
    rt().block_on(async {
        let mut c = etcd_client::Client::connect([server.url()], None)
            .await
            .expect("connect");
        let opts = etcd_client::GetOptions::new()
            .with_prefix()
            .with_serializable()
            .with_keys_only();
        let got = c
            .get(prefix, Some(opts))
            .await
            .expect("a serializable range");
        let kvs = got
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
            .collect();
        (got.header().unwrap().revision(), kvs)
    })
}
