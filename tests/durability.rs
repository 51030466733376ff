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

/// (key, value, revision) of every acknowledged put.
type Acked = Arc<Mutex<Vec<(String, String, i64)>>>;

/// Puts until the server goes away; records what was acknowledged.
fn writer(url: String, round: usize, acked: Acked) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        rt().block_on(async move {
            let Ok(client) = Client::connect([url], None).await else {
                return;
            };
            let mut tasks = Vec::new();
            for c in 0..CLIENTS {
                let mut kv = client.kv_client();
                let acked = acked.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0.. {
                        let key = format!("r{round}/c{c}/{i}");
                        let value = format!("value of {key}");
                        let put = kv.put(key.clone(), value.clone(), None);
                        match tokio::time::timeout(Duration::from_secs(5), put).await {
                            Ok(Ok(r)) => {
                                let rev = r.header().expect("header").revision();
                                acked.lock().unwrap().push((key, value, rev));
                            }
                            _ => return,
                        }
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
    rounds_of_kill9("acknowledged_puts_survive_kill9", &[]);
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
    );
}

fn rounds_of_kill9(name: &str, flags: &[&str]) {
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
        let w = writer(server.url(), round, acked.clone());
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
            for (key, value, rev) in &acked {
                let r = c.get(key.as_str(), None).await.unwrap_or_else(|e| {
                    panic!(
                        "round {round}: get {key}: {e}; seed {seed}\n{}",
                        server.log()
                    )
                });
                let kv = r.kvs().first().unwrap_or_else(|| {
                    panic!("round {round}: acknowledged {key} (rev {rev}) lost; seed {seed}")
                });
                assert_eq!(kv.value_str().unwrap(), value, "seed {seed}");
                assert_eq!(kv.mod_revision(), *rev, "{key}: seed {seed}");
                max_rev = max_rev.max(*rev);
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
