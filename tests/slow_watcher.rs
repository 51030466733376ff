//! Slow watchers: clients that stop reading their watch streams while a stream of 4 KiB puts
//! flows. What must hold:
//! - the server does not buffer for them: its anonymous memory grows by far less than the
//!   bytes of the events they are owed (the events stay in the log);
//! - a watcher that keeps reading receives every event while they stall (its put-to-event lag
//!   is printed, not asserted: timing is measured in benchmarks);
//! - a stalled watcher that resumes catches up with every event, in order, from the log;
//! - a stalled watcher whose position is compacted away is canceled with the compacted
//!   revision (etcd's "required revision has been compacted").
//!
//! PUTS (default 20000, 80 MB of values) sets the number of puts.

mod common;

use common::{put_rev, rt, Server};
use etcd_client::{Client, WatchOptions, WatchStream};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WRITERS: usize = 8;
const VALUE: usize = 4096;
const KEYS: usize = 1000;

fn puts() -> usize {
    std::env::var("PUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Puts `n` values of VALUE bytes; returns (revision, send instant) of each.
async fn writer(url: String, w: usize, n: usize) -> Vec<(i64, Instant)> {
    let mut c = Client::connect([url], None).await.expect("connect");
    let value = vec![b'v'; VALUE];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("s/{:04}", (w * n + i) % KEYS);
        let sent = Instant::now();
        let r = c.put(key, value.clone(), None).await.expect("put");
        out.push((r.header().expect("header").revision(), sent));
    }
    out
}

/// Reads `stream` until revision `end` has been delivered (or it is canceled, or 120 s pass).
/// Returns the revisions received in order, arrival instants, and the cancel response's
/// compact revision if it was canceled.
async fn read_until(
    stream: &mut WatchStream,
    end: i64,
) -> (Vec<i64>, Vec<Instant>, Option<(i64, String)>) {
    let mut revs = Vec::new();
    let mut at = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while revs.last().is_none_or(|&r| r < end) {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("watch stalled for 120 s")
            .expect("watch stream error")
            .expect("watch stream ended");
        if msg.canceled() {
            return (
                revs,
                at,
                Some((msg.compact_revision(), msg.cancel_reason().to_string())),
            );
        }
        let now = Instant::now();
        for e in msg.events() {
            revs.push(e.kv().expect("kv").mod_revision());
            at.push(now);
        }
    }
    (revs, at, None)
}

fn contiguous(revs: &[i64], from: i64) -> bool {
    revs.iter().enumerate().all(|(i, &r)| r == from + i as i64)
}

#[test]
fn stalled_watchers_cost_no_memory_and_catch_up_or_are_canceled() {
    let server = Server::ferrocd(&[]);
    let n = puts() / WRITERS;
    rt().block_on(async {
        let url = server.url();
        let mut c = Client::connect([url.clone()], None).await.expect("connect");
        let start = put_rev(&mut c, "s/start", "x").await + 1;
        let opts = || Some(WatchOptions::new().with_prefix().with_start_revision(start));
        // Two stalled watchers, each on its own connection so that the fast one's flow control
        // is its own: they are created, then never read until the writes are over.
        let mut c1 = Client::connect([url.clone()], None).await.expect("connect");
        let mut slow1 = c1.watch("s/", opts()).await.expect("watch");
        let mut c2 = Client::connect([url.clone()], None).await.expect("connect");
        let mut slow2 = c2.watch("s/", opts()).await.expect("watch");
        let mut fast = c.watch("s/", opts()).await.expect("watch");
        let before = server.rss_anon();

        let handles: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(url.clone(), w, n)))
            .collect();
        let t0 = Instant::now();
        let end = start + (n * WRITERS) as i64 - 1;
        let (fast_revs, fast_at, canceled) = read_until(&mut fast, end).await;
        assert!(
            canceled.is_none(),
            "the reading watcher was canceled: {canceled:?}"
        );
        let mut sent: HashMap<i64, Instant> = HashMap::new();
        for h in handles {
            sent.extend(h.await.expect("writer"));
        }
        let elapsed = t0.elapsed();
        let after = server.rss_anon();
        assert!(
            contiguous(&fast_revs, start),
            "the reading watcher missed events"
        );
        assert_eq!(fast_revs.len(), n * WRITERS);

        let mut lag: Vec<Duration> = fast_revs
            .iter()
            .zip(&fast_at)
            .map(|(r, at)| at.duration_since(sent[r]))
            .collect();
        lag.sort();
        let pct = |p: f64| lag[((lag.len() - 1) as f64 * p) as usize];
        let owed = (n * WRITERS * VALUE) as u64 * 2;
        let growth = after.saturating_sub(before);
        eprintln!(
            "{} puts of {VALUE} B in {elapsed:?} ({:.0}/s); reading watcher's put-to-event lag \
             p50 {:?} p99 {:?} max {:?}; server RssAnon {} -> {} MiB (+{} MiB) while two \
             stalled watchers were owed {} MiB of events",
            n * WRITERS,
            (n * WRITERS) as f64 / elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.99),
            pct(1.0),
            before >> 20,
            after >> 20,
            growth >> 20,
            owed >> 20
        );
        assert!(
            growth < owed / 4,
            "server memory grew by {} MiB for {} MiB of undelivered events",
            growth >> 20,
            owed >> 20
        );

        // The first stalled watcher resumes and gets everything, in order.
        let t1 = Instant::now();
        let (revs, _, canceled) = read_until(&mut slow1, end).await;
        assert!(
            canceled.is_none(),
            "stalled watcher 1 canceled: {canceled:?}"
        );
        assert!(contiguous(&revs, start), "stalled watcher 1 missed events");
        assert_eq!(revs.len(), n * WRITERS);
        eprintln!(
            "stalled watcher 1 caught up {} events in {:?}",
            revs.len(),
            t1.elapsed()
        );

        // Compaction passes the second one: it is canceled with the compacted revision, after
        // a contiguous prefix of the events.
        let compact = end - 10;
        c.compact(compact, None).await.expect("compact");
        let (revs, _, canceled) = read_until(&mut slow2, end).await;
        let (rev, reason) = canceled.expect("stalled watcher 2 was not canceled");
        assert_eq!(rev, compact, "{reason}");
        assert!(
            contiguous(&revs, start),
            "stalled watcher 2 missed events before its cancel"
        );
        assert!(
            (revs.len() as i64) < compact - start,
            "stalled watcher 2 was owed little: {} events",
            revs.len()
        );
        eprintln!(
            "stalled watcher 2 got {} events, then was canceled at compacted revision {rev}",
            revs.len()
        );
        drop((c1, c2));
    });
}

/// A watcher owed large values catches up a bounded pull at a time: it reads 200 values of
/// 1 MiB from the log in responses a gRPC client accepts by default (under 4 MiB; without the
/// byte bound one response carried all 200 MiB), and the server's anonymous memory stays far
/// below what it sends.
#[test]
fn catching_up_through_large_values_is_bounded_in_memory() {
    let server = Server::ferrocd(&["--max-request-bytes", "2000000"]);
    let (start, end) = rt().block_on(async {
        let url = server.url();
        let mut c = Client::connect([url.clone()], None).await.expect("connect");
        let start = put_rev(&mut c, "big/start", "x").await + 1;
        let value = vec![b'v'; 1 << 20];
        let mut end = 0;
        for i in 0..200 {
            let r = c
                .put(format!("big/{i:03}"), value.clone(), None)
                .await
                .expect("put");
            end = r.header().expect("header").revision();
        }
        (start, end)
    });
    let before = server.rss_anon();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Samples the server's memory while the watcher catches up.
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        let pid_status = format!("/proc/{}/status", server.pid());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(s) = std::fs::read_to_string(&pid_status) {
                    if let Some(kb) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("RssAnon:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    {
                        peak.fetch_max(kb * 1024, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let t = Instant::now();
    let got = rt().block_on(async {
        let mut c = Client::connect([server.url()], None)
            .await
            .expect("connect");
        let mut w = c
            .watch(
                "big/",
                Some(WatchOptions::new().with_prefix().with_start_revision(start)),
            )
            .await
            .expect("watch");
        let (revs, _, canceled) = read_until(&mut w, end).await;
        assert!(canceled.is_none(), "{canceled:?}");
        revs
    });
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.join().expect("sampler");
    assert!(contiguous(&got, start), "missed events");
    assert_eq!(got.len(), 200);
    let growth = peak
        .load(std::sync::atomic::Ordering::SeqCst)
        .saturating_sub(before);
    eprintln!(
        "caught up 200 x 1 MiB in {:?}; server RssAnon peak +{} MiB",
        t.elapsed(),
        growth >> 20
    );
    assert!(
        growth < 64 << 20,
        "server memory grew {} MiB while sending 200 MiB of history",
        growth >> 20
    );
}
