//! Checkpoints of a single member: with a small threshold and 1 MiB log segments, the log
//! before a checkpoint is deleted while writes go on; after kill -9 the member restarts from
//! the checkpoint plus the log after it and serves exactly the same history (every key at
//! every revision, the watch history from revision 2, leases, auth); compaction plus
//! Defragment shrinks the files; `etcdctl defrag` and `ferroctl defrag` print the same; a
//! damaged checkpoint stops the start, naming the file.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{rt, Server};
use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};

const FLAGS: &[&str] = &[
    "--checkpoint-min-bytes",
    "1048576",
    "--log-segment-bytes",
    "1048576",
];

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Another ferrocd on `s`'s data directory, on a port of its own; its output once it exits
/// (it is expected to refuse to start).
fn start_on_the_same_data(s: &Server) -> common::Output {
    let data = s.dir.path().join("data").display().to_string();
    let url = format!("http://127.0.0.1:{}", common::free_port());
    common::run(
        env!("CARGO_BIN_EXE_ferrocd"),
        &[],
        &[
            "--data-dir".into(),
            data,
            "--listen-client-urls".into(),
            url.clone(),
            "--advertise-client-urls".into(),
            url,
        ],
        "",
    )
}

fn member(s: &Server) -> PathBuf {
    s.dir.path().join("data").join("member")
}

/// Everything a client can read of the history: every key at every revision (values
/// digested), and every event from revision 2 on.
async fn history(c: &mut Client, upto: i64) -> Vec<String> {
    let mut out = Vec::new();
    for rev in 1..=upto {
        let r = c
            .get(
                "",
                Some(GetOptions::new().with_all_keys().with_revision(rev)),
            )
            .await
            .unwrap_or_else(|e| panic!("read at {rev}: {e}"));
        for kv in r.kvs() {
            out.push(format!(
                "@{rev} {} c{} m{} v{} l{} {:x}",
                String::from_utf8_lossy(kv.key()),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
                digest(kv.value())
            ));
        }
    }
    let mut stream = c
        .watch(
            "",
            Some(
                WatchOptions::new()
                    .with_all_keys()
                    .with_start_revision(2)
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let mut last = 0;
    while last < upto {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("watch events in time")
            .unwrap()
            .expect("watch stream open");
        for e in resp.events() {
            let kv = e.kv().unwrap();
            last = kv.mod_revision();
            out.push(format!(
                "event {:?} {} m{} prev {:?} {:x}",
                e.event_type(),
                String::from_utf8_lossy(kv.key()),
                kv.mod_revision(),
                e.prev_kv().map(|p| p.mod_revision()),
                digest(kv.value())
            ));
        }
    }
    let leases = c.leases().await.unwrap();
    out.push(format!(
        "leases {:?}",
        leases.leases().iter().map(|l| l.id()).collect::<Vec<_>>()
    ));
    out
}

fn digest(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn checkpoints_release_the_log_and_a_restart_serves_the_same_history() {
    let mut s = Server::ferrocd(FLAGS);
    let (upto, lease) = rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        let lease = c.lease_grant(600, None).await.unwrap().id();
        let mut upto = 0;
        // About 3 MiB of puts over 60 keys, with deletes and a leased key: several
        // checkpoints and segments released along the way.
        for i in 0..1500u32 {
            let key = format!("k{:02}", i % 60);
            let value = vec![b'a' + (i % 26) as u8; 2000 + (i as usize % 7) * 10];
            let opts = (i % 100 == 7).then(|| PutOptions::new().with_lease(lease));
            let r = c.put(key.clone(), value, opts).await.unwrap();
            upto = r.header().unwrap().revision();
            if i % 97 == 0 {
                upto = c
                    .delete(key, None)
                    .await
                    .unwrap()
                    .header()
                    .unwrap()
                    .revision();
            }
        }
        (upto, lease)
    });
    // Checkpoints were taken and the log before them released (bounded wait: the walk and
    // the write run in the background).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ckpt = files(&member(&s).join("checkpoint"));
        let log = files(&member(&s).join("log"));
        let released = !log.iter().any(|f| f == "0000000000000001.log");
        if !ckpt.is_empty() && released {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint and release: checkpoint {ckpt:?} log {log:?}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log_bytes: u64 = files(&member(&s).join("log"))
        .iter()
        .filter(|f| f.ends_with(".log"))
        .map(|f| {
            std::fs::metadata(member(&s).join("log").join(f))
                .unwrap()
                .len()
        })
        .sum();
    assert!(
        log_bytes <= 3 << 20,
        "the log was released down to a few segments: {log_bytes} bytes"
    );
    let before = rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        history(&mut c, upto).await
    });
    assert!(before.iter().any(|l| l.contains(&format!(" l{lease} "))));
    s.kill9();
    s.restart();
    let after = rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        history(&mut c, upto).await
    });
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a, "the history differs after the restart");
    }
    assert!(s.log().contains("checkpoint restored"), "{}", s.log());
    // Compaction, then Defragment: one checkpoint of the live keys; the files shrink.
    let (size_before, size_after, in_use, current) = rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        let size_before = c.status().await.unwrap().db_size();
        c.compact(upto, None).await.unwrap();
        c.defragment().await.unwrap();
        let status = c.status().await.unwrap();
        let (size_after, in_use) = (status.db_size(), status.raft_used_db_size());
        let current = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap()
            .kvs()
            .iter()
            .map(|kv| format!("{:?} {}", kv.key(), digest(kv.value())))
            .collect::<Vec<_>>();
        (size_before, size_after, in_use, current)
    });
    assert!(
        size_after < size_before / 2,
        "dbSize {size_before} -> {size_after} after compaction and defragment"
    );
    // Every log segment before the Defragment's checkpoint is released (the one that took
    // appends too): what is left is the checkpoint, within twice the live data.
    assert!(
        size_after <= 2 * in_use,
        "dbSize {size_after} against {in_use} in use after compaction and defragment"
    );
    s.kill9();
    s.restart();
    let again = rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        c.get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap()
            .kvs()
            .iter()
            .map(|kv| format!("{:?} {}", kv.key(), digest(kv.value())))
            .collect::<Vec<_>>()
    });
    assert_eq!(current, again);
}

#[test]
fn a_damaged_checkpoint_stops_the_start_naming_the_file() {
    if !common::etcd_tools_or_skip("a_damaged_checkpoint_stops_the_start_naming_the_file") {
        return;
    }
    let mut s = Server::ferrocd(FLAGS);
    rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        c.put("k", "v", None).await.unwrap();
    });
    // etcdctl's defrag, and ferroctl's printing the same.
    let by_etcdctl = common::etcdctl(&s.endpoint(), &["defrag"], "");
    let by_ferroctl = common::run(
        env!("CARGO_BIN_EXE_ferroctl"),
        &[],
        &[format!("--endpoints={}", s.endpoint()), "defrag".into()],
        "",
    );
    assert_eq!(
        by_etcdctl.stdout,
        format!("Finished defragmenting etcd member[{}]\n", s.endpoint())
    );
    assert_eq!(by_ferroctl.stdout, by_etcdctl.stdout);
    assert_eq!(by_ferroctl.code, 0);
    s.kill9();
    let dir = member(&s).join("checkpoint");
    let name = files(&dir).pop().expect("a checkpoint after Defragment");
    let path = dir.join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = start_on_the_same_data(&s);
    assert_ne!(out.code, 0, "started on a damaged checkpoint");
    assert!(
        out.stderr.contains("checkpoint corrupt") && out.stderr.contains(&name),
        "{}",
        out.stderr
    );
}

/// The storage issue's space goal: 1,000 keys of 256 B overwritten 20 times (all in the one
/// segment taking appends, 64 MiB by default), then compaction and Defragment bring dbSize
/// within twice the live data: the Defragment's checkpoint releases every segment before it,
/// the one that took the writes included.
#[test]
fn compaction_and_defragment_bring_the_database_within_twice_its_live_data() {
    let s = Server::ferrocd(&[]);
    let (written, size, in_use) = rt().block_on(async {
        // Ten writers, a hundred keys each, twenty rounds.
        let mut writers = Vec::new();
        for w in 0..10 {
            let url = s.url();
            writers.push(tokio::spawn(async move {
                let mut c = Client::connect([url], None).await.unwrap();
                for _round in 0..20 {
                    for k in (w..1000).step_by(10) {
                        c.put(format!("key/{k:04}"), vec![b'v'; 256], None)
                            .await
                            .unwrap();
                    }
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let mut c = Client::connect([s.url()], None).await.unwrap();
        let rev = c.status().await.unwrap().header().unwrap().revision();
        let written = c.status().await.unwrap().db_size();
        c.compact(rev, None).await.unwrap();
        c.defragment().await.unwrap();
        let status = c.status().await.unwrap();
        (written, status.db_size(), status.raft_used_db_size())
    });
    eprintln!(
        "dbSize {written} after the writes, {size} after compaction and defragment; \
         {in_use} in use"
    );
    assert!(in_use >= 1000 * 256, "{in_use} bytes in use");
    assert!(
        written > 20 * in_use,
        "{written} written for {in_use} in use"
    );
    assert!(
        size <= 2 * in_use,
        "dbSize {size} against {in_use} in use after compaction and defragment"
    );
    // The log keeps one segment (the one taking appends), besides the checkpoint.
    let segments = files(&member(&s).join("log"))
        .into_iter()
        .filter(|f| !f.starts_with("LOCK"))
        .count();
    assert_eq!(segments, 1, "{:?}", files(&member(&s).join("log")));
}

/// Each file of `dir` with its inode (a file replaced under the same name gets another).
fn inodes(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    files(dir)
        .into_iter()
        .map(|f| {
            let ino = std::fs::metadata(dir.join(&f)).map_or(0, |m| m.ino());
            (f, ino)
        })
        .collect()
}

/// Puts one value larger than a log segment (1 MiB here) and larger than the checkpoint
/// threshold into a fresh member, and waits (bounded) for the checkpoint it makes due.
fn put_one_big_value_and_wait_for_its_checkpoint(s: &Server) -> Vec<u8> {
    let big: Vec<u8> = (0..1_100_000u32).map(|i| (i % 251) as u8).collect();
    rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        c.put("big", big.clone(), None).await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.log().contains("checkpoint taken") {
        assert!(Instant::now() < deadline, "no checkpoint:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    big
}

fn segments(s: &Server) -> Vec<String> {
    files(&member(s).join("log"))
        .into_iter()
        .filter(|f| f.ends_with(".log"))
        .collect()
}

/// A put larger than a whole log segment into a member whose segment holds no record yet: the
/// new, larger segment has the same first record, so the same name. The checkpoint that
/// released the empty segment removed the file by that name, which was the segment taking
/// appends: every write acknowledged after it was lost at the next start (found this way).
#[test]
fn a_put_larger_than_a_log_segment_and_the_writes_after_it_survive_a_checkpoint_and_kill_9() {
    let mut s = Server::ferrocd(FLAGS);
    let big = put_one_big_value_and_wait_for_its_checkpoint(&s);
    assert_eq!(
        segments(&s).len(),
        1,
        "{:?}",
        files(&member(&s).join("log"))
    );
    rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        c.put("after", "acknowledged", None).await.unwrap();
    });
    s.kill9();
    s.restart();
    rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        let r = c.get("after", None).await.unwrap();
        assert_eq!(r.kvs().len(), 1, "an acknowledged put was lost");
        assert_eq!(r.kvs()[0].value(), b"acknowledged");
        let r = c.get("big", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), &big[..]);
    });
}

/// A Defragment with nothing logged since the newest checkpoint takes no checkpoint: that
/// one's files stay as they are (one of the same record would be renamed over them, part by
/// part, and a crash in between would leave parts of two checkpoints). The segment it covers
/// that was still taking appends goes; the value in it is read from the checkpoint.
#[test]
fn a_defragment_with_nothing_new_keeps_the_checkpoint_and_releases_the_log_it_covers() {
    let mut s = Server::ferrocd(FLAGS);
    let big = put_one_big_value_and_wait_for_its_checkpoint(&s);
    let ckpt = member(&s).join("checkpoint");
    let (parts, log) = (inodes(&ckpt), segments(&s));
    assert!(!parts.is_empty() && log.len() == 1, "{parts:?} {log:?}");
    let size_before = rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        c.status().await.unwrap().db_size()
    });
    for round in 0..2 {
        rt().block_on(async {
            let mut c = Client::connect([s.url()], None).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), c.defragment())
                .await
                .expect("the Defragment was answered")
                .unwrap();
        });
        assert_eq!(inodes(&ckpt), parts, "round {round}");
        assert_eq!(
            s.log().matches("checkpoint taken").count(),
            1,
            "{}",
            s.log()
        );
        let now = segments(&s);
        assert_eq!(now.len(), 1, "round {round}: {now:?}");
        assert_ne!(now, log, "the segment the checkpoint covers stayed");
    }
    let (size_after, value) = rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        let size = c.status().await.unwrap().db_size();
        let r = c.get("big", None).await.unwrap();
        (size, r.kvs()[0].value().to_vec())
    });
    assert_eq!(value, big);
    assert!(
        size_after + (1 << 20) <= size_before,
        "dbSize {size_before} -> {size_after}"
    );
    s.kill9();
    s.restart();
    rt().block_on(async {
        let mut c = Client::connect([s.url()], None).await.unwrap();
        let r = c.get("big", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), &big[..]);
    });
}

/// A second ferrocd started on a member's data directory stops before it changes anything in
/// it: finding the newest checkpoint removes unfinished parts and older checkpoints, which
/// would have taken the running member's parts as it writes or renames them (found by a
/// read-only review: the lock was taken after that clean-up).
#[test]
fn a_second_process_on_the_data_directory_stops_before_removing_anything() {
    let s = Server::ferrocd(FLAGS);
    let ckpt = member(&s).join("checkpoint");
    std::fs::create_dir_all(&ckpt).unwrap();
    // As a checkpoint being written leaves it: a temporary part, and a later part renamed
    // before part 0.
    let planted = [
        "0000000000000009-0000.ckpt.1-1.tmp",
        "0000000000000009-0001.ckpt",
    ];
    for p in planted {
        std::fs::write(ckpt.join(p), b"being written").unwrap();
    }
    let out = start_on_the_same_data(&s);
    assert_ne!(
        out.code, 0,
        "a second process started on a data directory in use"
    );
    assert!(out.stderr.contains("in use"), "{}", out.stderr);
    for p in planted {
        assert!(ckpt.join(p).exists(), "{p} was removed: {:?}", files(&ckpt));
    }
}
