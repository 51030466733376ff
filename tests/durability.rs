//! Acknowledged writes survive kill -9: clients loop acknowledged puts while the server is
//! SIGKILLed at random moments, for several rounds. After each restart every acknowledged put
//! is readable with the revision it was acknowledged with, and revisions go on from there.
//! The seed of the random kill times is printed; FERROCD_TEST_SEED replays a run.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{rt, Server};
use etcd_client::Client;

const ROUNDS: usize = 5;
const CLIENTS: usize = 16;

/// (key, value length, revision) of every acknowledged put.
type Acked = Arc<Mutex<Vec<(String, usize, i64)>>>;

/// A put's value: "value of <key>", repeated to `len` bytes.
fn value_for(key: &str, len: usize) -> String {
    let one = format!("value of {key}");
    one.repeat(len / one.len() + 1)[..len].to_string()
}

/// Defragment calls answered (by the one test that makes them), during the rounds and after
/// each restart.
static DEFRAGMENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What the writers and the server's flags exercise.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    Small,
    /// One client puts values of 200 KB to 1.2 MB (larger than a 1 MiB log segment, some of
    /// them), and another calls Defragment every 50 ms.
    LargeWithDefragments,
}

/// Puts until the server goes away; records what was acknowledged.
fn writer(url: String, round: usize, acked: Acked, load: Load) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        rt().block_on(async move {
            let Ok(client) = Client::connect([url], None).await else {
                return;
            };
            let mut tasks = Vec::new();
            for c in 0..CLIENTS {
                let mut kv = client.kv_client();
                let acked = acked.clone();
                let large = load == Load::LargeWithDefragments && c == 0;
                tasks.push(tokio::spawn(async move {
                    for i in 0.. {
                        let key = format!("r{round}/c{c}/{i}");
                        let len = if large {
                            200_000 + (i * 7919 % 11) * 100_000
                        } else {
                            format!("value of {key}").len()
                        };
                        let put = kv.put(key.clone(), value_for(&key, len), None);
                        match tokio::time::timeout(Duration::from_secs(5), put).await {
                            Ok(Ok(r)) => {
                                let rev = r.header().expect("header").revision();
                                acked.lock().unwrap().push((key, len, rev));
                            }
                            _ => return,
                        }
                    }
                }));
            }
            if load == Load::LargeWithDefragments {
                let mut m = client.maintenance_client();
                tasks.push(tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let defrag = m.defragment();
                        if !matches!(
                            tokio::time::timeout(Duration::from_secs(5), defrag).await,
                            Ok(Ok(_))
                        ) {
                            return;
                        }
                        DEFRAGMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    })
}

#[test]
fn acknowledged_puts_survive_kill9() {
    rounds_of_kill9("acknowledged_puts_survive_kill9", &[], Load::Small);
}

/// The same with a checkpoint every 64 KiB of log and 1 MiB segments: kills land while
/// checkpoints are written, installed and the log before them released.
#[test]
fn acknowledged_puts_survive_kill9_across_checkpoints() {
    rounds_of_kill9(
        "acknowledged_puts_survive_kill9_across_checkpoints",
        &[
            "--checkpoint-min-bytes",
            "65536",
            "--log-segment-bytes",
            "1048576",
        ],
        Load::Small,
    );
}

/// The same with values up to 1.2 MB, some larger than a segment, and a Defragment every
/// 50 ms: batches too large for the segment taking appends, segments started early for a
/// Defragment (a batch holding a large put may be the first into one), checkpoints taken in a
/// hurry; kills land among all of them. (Breaking the empty-segment fix did not fail this test
/// in 3 runs: `log::tests` and tests/checkpoint.rs are the ones that catch it.)
#[test]
fn acknowledged_large_puts_survive_kill9_across_defragments() {
    rounds_of_kill9(
        "acknowledged_large_puts_survive_kill9_across_defragments",
        &[
            "--checkpoint-min-bytes",
            "1048576",
            "--log-segment-bytes",
            "1048576",
        ],
        Load::LargeWithDefragments,
    );
}

fn rounds_of_kill9(name: &str, flags: &[&str], load: Load) {
    let seed: u64 = std::env::var("FERROCD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{name}: FERROCD_TEST_SEED={seed}");
    let mut x = seed | 1;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut server = Server::ferrocd(flags);
    let acked: Acked = Arc::default();
    let mut last_rev = 1;
    for round in 0..ROUNDS {
        let w = writer(server.url(), round, acked.clone(), load);
        std::thread::sleep(Duration::from_millis(150 + rand(400)));
        server.kill9();
        w.join().expect("writer thread");
        let deadline = Instant::now() + Duration::from_secs(30);
        server.restart();
        let acked = acked.lock().unwrap().clone();
        assert!(Instant::now() < deadline);
        rt().block_on(async {
            let mut c = Client::connect([server.url()], None).await.unwrap();
            let mut max_rev = last_rev;
            for (key, len, rev) in &acked {
                let r = c.get(key.as_str(), None).await.unwrap_or_else(|e| {
                    panic!(
                        "round {round}: get {key}: {e}; seed {seed}\n{}",
                        server.log()
                    )
                });
                let kv = r.kvs().first().unwrap_or_else(|| {
                    panic!("round {round}: acknowledged {key} (rev {rev}) lost; seed {seed}")
                });
                assert!(
                    kv.value_str().unwrap() == value_for(key, *len),
                    "{key}: a value of {} bytes read back otherwise; seed {seed}",
                    len
                );
                assert_eq!(kv.mod_revision(), *rev, "{key}: seed {seed}");
                max_rev = max_rev.max(*rev);
            }
            // A Defragment after each restart is answered (those of the writers' rounds may
            // all be cut by the kill: a hurried checkpoint of this much data can outlast a
            // round), and the reads above still hold after it.
            if load == Load::LargeWithDefragments {
                let started = Instant::now();
                tokio::time::timeout(Duration::from_secs(60), c.defragment())
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: a Defragment hung; seed {seed}"))
                    .unwrap_or_else(|e| panic!("round {round}: Defragment: {e}; seed {seed}"));
                DEFRAGMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                eprintln!("round {round}: Defragment in {:?}", started.elapsed());
                if let Some((key, len, _)) = acked.last() {
                    let r = c.get(key.as_str(), None).await.unwrap();
                    assert!(r.kvs()[0].value_str().unwrap() == value_for(key, *len));
                }
            }
            // Revisions go on from the last acknowledged one.
            let r = c.put("after-restart", "x", None).await.unwrap();
            let rev = r.header().unwrap().revision();
            assert!(
                rev > max_rev,
                "revision {rev} after restart, acknowledged up to {max_rev}; seed {seed}"
            );
            last_rev = rev;
        });
        eprintln!(
            "round {round}: {} acknowledged puts verified, revision {last_rev}",
            acked.len()
        );
    }
    assert!(
        acked.lock().unwrap().len() > ROUNDS * 10,
        "too few puts were acknowledged to mean anything"
    );
    if load == Load::LargeWithDefragments {
        let larger = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, len, _)| *len > 1 << 20)
            .count();
        assert!(larger > 0, "no acknowledged put larger than a segment");
        let defragments = DEFRAGMENTS.load(std::sync::atomic::Ordering::Relaxed);
        assert!(defragments > 0, "no Defragment was answered");
        eprintln!(
            "{name}: {larger} acknowledged puts larger than a segment, {defragments} Defragments"
        );
    }
    if !flags.is_empty() {
        let log = server.log();
        let restored = log.matches("checkpoint restored").count();
        assert!(
            restored > 0 && log.contains("the log before it is released"),
            "the rounds never restarted from a checkpoint ({restored}); seed {seed}"
        );
        eprintln!("{name}: {restored} restarts from a checkpoint");
    }
}
