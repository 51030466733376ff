//! loadgen: drives any etcd v3 endpoint (ferrocd or etcd) over gRPC and reports latency
//! histograms (HdrHistogram), throughput, and the CPU time the server and loadgen itself spent.
//!
//! `loadgen run` measures one endpoint set; `loadgen compare` runs the same workload against two
//! sets, alternating, and prints one table with the ratios. Closed loop: each client has one
//! request outstanding. On a terminal a progress line runs while measuring; Ctrl-C stops the
//! run cleanly and prints the report of what was measured so far.

mod plot;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ferrocd::client::Client;
use ferrocd::proto::etcdserverpb as pb;
use hdrhistogram::Histogram;

// The report goes through ferroctl's `outln!`: when the reader has gone (`loadgen ... | head`),
// the process ends with SIGPIPE's status (141), quietly; std's `println!` panics there.
use ferrocd::outln;

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator for etcd v3 endpoints")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure one endpoint set.
    Run {
        #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
        endpoints: Vec<String>,
        /// Process ids of the servers (comma-separated: every member of a cluster), to report
        /// their CPU time per request.
        #[arg(long, value_delimiter = ',')]
        server_pid: Vec<u32>,
        #[command(flatten)]
        w: Workload,
    },
    /// Raise the offered rate step by step (open loop) until the p99 exceeds --slo-p99-ms or
    /// the server no longer keeps up; report the highest rate that met the SLO.
    Sweep {
        #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
        endpoints: Vec<String>,
        /// p99 latency objective, in milliseconds.
        #[arg(long, default_value_t = 10.0)]
        slo_p99_ms: f64,
        /// First offered rate, requests per second.
        #[arg(long, default_value_t = 1000.0)]
        start_rate: f64,
        /// Each step multiplies the rate by this.
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        /// Seconds per step.
        #[arg(long, default_value_t = 3.0)]
        step_seconds: f64,
        /// Also write each step (offered and achieved rate, p50, p99, p99.9) as CSV, for
        /// `loadgen plot`.
        #[arg(long)]
        csv: Option<String>,
        #[command(flatten)]
        w: Workload,
    },
    /// Plot, as SVG: percentile distributions of `.hgrm` files (run --hgrm), or latency
    /// against throughput of sweep CSV files (sweep --csv); one line per file, each given as
    /// `name=path` or a path (named after the file).
    Plot {
        #[arg(long)]
        out: String,
        #[arg(long, default_value = "")]
        title: String,
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Run the same workload against two endpoint sets, alternating, and print the ratios.
    Compare {
        #[arg(long, value_delimiter = ',')]
        a: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        b: Vec<String>,
        #[arg(long, default_value = "a")]
        a_name: String,
        #[arg(long, default_value = "b")]
        b_name: String,
        #[arg(long, value_delimiter = ',')]
        a_pid: Vec<u32>,
        #[arg(long, value_delimiter = ',')]
        b_pid: Vec<u32>,
        /// Runs per side, alternating a, b, a, b, ...
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[command(flatten)]
        w: Workload,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Kind {
    Put,
    /// Linearizable point reads.
    Range,
    /// Serializable point reads.
    RangeSerializable,
    /// A txn that compares a key's mod revision and puts it.
    TxnPut,
    /// Puts to watched keys: --watchers watchers over --watch-streams streams, on
    /// --watch-keys distinct keys; reports put-to-event latency (from sending the put to the
    /// event's arrival) and events delivered per second.
    Watch,
    /// Each client grants a lease (TTL 60 s) before the run, then renews it on its own
    /// LeaseKeepAlive stream, one keepalive outstanding at a time.
    LeaseKeepalive,
    /// Linearizable point reads and puts on the same key space, --read-ratio of them reads.
    Mixed,
    /// A Kubernetes apiserver's traffic on objects /registry/pods/ns-NN/pod-NNNNNNNN
    /// (--key-space objects over 10 namespaces, --val-size bytes each): 70% optimistic
    /// updates (a txn comparing the mod revision the client last saw: put on success, read
    /// the object back on conflict, retried once; the first update of an object creates it),
    /// 25% linearizable gets, 5% lists (a linearizable range over the prefix with limit 500).
    /// One watch on the prefix with prev_kv (the apiserver's watch cache) reports
    /// update-to-event latency.
    K8s,
}

#[derive(Args, Clone, Debug)]
struct Workload {
    #[arg(long, value_enum, default_value = "put")]
    workload: Kind,
    /// HTTP/2 connections (spread over the threads).
    #[arg(long, default_value_t = 10)]
    conns: usize,
    /// Concurrent clients, each with one request outstanding.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 100_000)]
    total: u64,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    /// Keys in issue order: request i uses key i modulo --key-space (etcd's benchmark
    /// --sequential-keys). Without it, keys are spread at random over the key space.
    #[arg(long)]
    sequential_keys: bool,
    /// Open loop: offered requests per second in all (0: closed loop). Latency is measured
    /// from each request's intended send time, so a server that falls behind is not hidden
    /// by the clients waiting for it (coordinated omission).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// loadgen's own threads (one glommio executor each).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the full percentile distribution (HdrHistogram .hgrm text) here.
    #[arg(long)]
    hgrm: Option<String>,
    /// Watch workload: watchers in all.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Watch workload: watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    watch_streams: usize,
    /// Watch workload: distinct watched keys (1: every watcher on one key); puts go to them.
    #[arg(long, default_value_t = 1)]
    watch_keys: usize,
    /// Mixed workload: the share of requests that are reads (the rest are puts).
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    /// Range reads (range, range-serializable, mixed) read a prefix: every key that shares the
    /// drawn key's characters but its last N (10^N keys of the key space's decimal keys; N at
    /// least --key-size: every key). 0: the drawn key alone.
    #[arg(long, default_value_t = 0)]
    prefix_digits: usize,
    /// Range reads: at most this many keys in an answer (0: no limit).
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Range reads: keys without their values.
    #[arg(long)]
    keys_only: bool,
}

#[derive(Clone, Debug)]
struct Report {
    requests: u64,
    errors: u64,
    seconds: f64,
    hist: Histogram<u64>,
    server_cpu_s: Option<f64>,
    own_cpu_s: f64,
    /// Open loop: how late loadgen itself sent each request (part of the latency above).
    lateness: Histogram<u64>,
    /// Watch workload: put-to-event latency of every event delivered.
    events: Histogram<u64>,
}

impl Report {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn q_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn server_us_per_req(&self) -> Option<f64> {
        self.server_cpu_s
            .map(|c| c * 1e6 / self.requests.max(1) as f64)
    }

    fn print(&self, name: &str) {
        outln!(
            "{name}: {} requests ({} errors) in {:.2} s: {:.0} req/s; latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
            self.requests,
            self.errors,
            self.seconds,
            self.rate(),
            self.q_ms(0.5),
            self.q_ms(0.9),
            self.q_ms(0.99),
            self.q_ms(0.999),
            self.hist.max() as f64 / 1000.0
        );
        if !self.lateness.is_empty() {
            outln!(
                "{name}: open loop: loadgen sent late by p50 {:.3} ms, p99 {:.3} ms (counted in the latency)",
                self.lateness.value_at_quantile(0.5) as f64 / 1000.0,
                self.lateness.value_at_quantile(0.99) as f64 / 1000.0
            );
        }
        if let Some(us) = self.server_us_per_req() {
            outln!("{name}: server CPU {us:.1} us per request");
        }
        if !self.events.is_empty() {
            let q = |q: f64| self.events.value_at_quantile(q) as f64 / 1000.0;
            outln!(
                "{name}: {} events in {:.2} s: {:.0} events/s; put-to-event ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
                self.events.len(),
                self.seconds,
                self.events.len() as f64 / self.seconds,
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                self.events.max() as f64 / 1000.0
            );
        }
        let own = self.own_cpu_s * 1e6 / self.requests.max(1) as f64;
        outln!("{name}: loadgen CPU {own:.1} us per request");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if self.own_cpu_s / self.seconds > 0.8 * cores / 2.0 {
            outln!(
                "{name}: warning: loadgen used {:.0}% of a core per thread budget; it may be the bottleneck",
                100.0 * self.own_cpu_s / self.seconds
            );
        }
    }
}

/// Set by Ctrl-C: clients stop sending, and the partial report is printed.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    // A second Ctrl-C ends the process at once.
    // SAFETY: signal(2) is async-signal-safe; SIG_DFL is a valid disposition.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Prints "elapsed, done/total, rate" on one terminal line every half second until `finished`.
fn progress(shared: Arc<WatchShared>, total: u64, finished: Arc<std::sync::atomic::AtomicBool>) {
    // SAFETY: isatty(2) only inspects the descriptor.
    if unsafe { libc::isatty(2) } != 1 {
        return;
    }
    std::thread::spawn(move || {
        let start = Instant::now();
        while !finished.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(500));
            let n = shared.done.load(Ordering::Relaxed);
            let s = start.elapsed().as_secs_f64();
            eprint!(
                "\r{s:6.1} s  {n}/{total} requests  {:.0}/s   ",
                n as f64 / s.max(1e-9)
            );
        }
        eprint!("\r{:60}\r", "");
    });
}

/// CPU seconds (user + system) of the servers, summed, when their pids were given.
fn server_cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_seconds(Some(p))).sum()
}

/// CPU seconds (user + system) a process has used (None: this one), from /proc.
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A request's random number, drawn from its issue number (Fibonacci hashing).
fn spread(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11
}

/// The key (its number in the key space) a request uses: in issue order with
/// --sequential-keys, else drawn by the request's random `i`.
fn key_index(w: &Workload, i: u64, issued: u64) -> u64 {
    (if w.sequential_keys { issued } else { i }) % w.key_space.max(1)
}

fn key(i: u64, size: usize) -> Bytes {
    let mut s = format!("{i:0size$}").into_bytes();
    // Keep the last `size` digits: keys have exactly the asked size.
    let cut = s.len().saturating_sub(size.max(1));
    Bytes::from(s.split_off(cut))
}

/// The workload's name in a compare table: its kind, the read share of a mixed one, and the
/// shape of its range reads when they are not point reads.
fn label(w: &Workload) -> String {
    let mut s = if w.workload == Kind::Mixed {
        format!("Mixed {:.0}% reads", w.read_ratio * 100.0)
    } else {
        format!("{:?}", w.workload)
    };
    let ranges = matches!(
        w.workload,
        Kind::Range | Kind::RangeSerializable | Kind::Mixed
    );
    if ranges && w.prefix_digits > 0 {
        s += &format!(" prefix of 10^{}", w.prefix_digits);
    }
    if ranges && w.limit > 0 {
        s += &format!(" limit {}", w.limit);
    }
    if ranges && w.keys_only {
        s += " keys only";
    }
    s
}

/// A range read of key `k` as the workload's range options shape it.
fn range_req(w: &Workload, k: Bytes, serializable: bool) -> pb::RangeRequest {
    let (key, range_end) = if w.prefix_digits == 0 {
        (k, Bytes::new())
    } else if w.prefix_digits >= k.len() {
        // From the smallest key on: every key.
        (Bytes::from_static(b"\0"), Bytes::from_static(b"\0"))
    } else {
        let prefix = k.slice(..k.len() - w.prefix_digits);
        let mut end = prefix.to_vec();
        // Decimal digits: the last one is below 0xff, so this is the prefix's range end.
        *end.last_mut().expect("non-empty prefix") += 1;
        (prefix, Bytes::from(end))
    };
    pb::RangeRequest {
        key,
        range_end,
        limit: w.limit,
        keys_only: w.keys_only,
        serializable,
        ..Default::default()
    }
}

/// A put's value for the watch workload: the send time (ns since `epoch`) in its first 8 bytes.
fn stamped(value: &Bytes, epoch: Instant) -> Bytes {
    let mut v = value.to_vec();
    v.resize(v.len().max(8), b'v');
    let ns = epoch.elapsed().as_nanos() as u64;
    v[..8].copy_from_slice(&ns.to_le_bytes());
    Bytes::from(v)
}

type KeepAlive = ferrocd::client::BidiStream<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>;

/// The lease-keepalive workload's per-client state: a lease and its keepalive stream.
async fn open_keepalive(c: &mut Client) -> (i64, KeepAlive) {
    let t = Some(Duration::from_secs(10));
    let grant = pb::LeaseGrantRequest { ttl: 60, id: 0 };
    let id = c.lease_grant(&grant, t).await.expect("lease grant").id;
    let mut s = c
        .keep_alive(&pb::LeaseKeepAliveRequest { id })
        .await
        .expect("keepalive stream");
    // The stream opens with one keepalive (etcd sends its headers with the first answer);
    // its answer is read here, before the measured run.
    s.next().await.expect("first keepalive");
    (id, s)
}

async fn keep_alive_once(id: i64, s: &mut KeepAlive) -> bool {
    if s.send(&pb::LeaseKeepAliveRequest { id }).is_err() {
        return false;
    }
    s.next().await.is_ok_and(|r| r.ttl > 0)
}

/// One request: `i` is random (it draws the key and the workload's choices), `issued` the
/// request's number in issue order (the key with --sequential-keys).
async fn one(
    c: &mut Client,
    w: &Workload,
    (i, issued): (u64, u64),
    value: &Bytes,
    epoch: Instant,
) -> bool {
    let t = Some(Duration::from_secs(10));
    let k = key(key_index(w, i, issued), w.key_size);
    match w.workload {
        Kind::LeaseKeepalive => unreachable!("keepalives go on their own stream"),
        Kind::K8s => k8s_op(c, w, i, value, epoch).await,
        Kind::Watch => {
            let req = pb::PutRequest {
                key: key(i % w.watch_keys.max(1) as u64, w.key_size),
                value: stamped(value, epoch),
                ..Default::default()
            };
            c.put(&req, t).await.is_ok()
        }
        Kind::Put => {
            let req = pb::PutRequest {
                key: k,
                value: value.clone(),
                ..Default::default()
            };
            c.put(&req, t).await.is_ok()
        }
        Kind::Mixed => {
            // High bits of the (hashed) request number pick read or write; the key comes from
            // the low ones, so every key is both read and written.
            if ((i >> 32) & 0xffff) as f64 / 65536.0 < w.read_ratio {
                c.range(&range_req(w, k, false), t).await.is_ok()
            } else {
                let req = pb::PutRequest {
                    key: k,
                    value: value.clone(),
                    ..Default::default()
                };
                c.put(&req, t).await.is_ok()
            }
        }
        Kind::Range | Kind::RangeSerializable => {
            let req = range_req(w, k, w.workload == Kind::RangeSerializable);
            c.range(&req, t).await.is_ok()
        }
        Kind::TxnPut => {
            use pb::compare::{CompareResult, CompareTarget, TargetUnion};
            let req = pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: CompareResult::Greater as i32,
                    target: CompareTarget::Mod as i32,
                    key: k.clone(),
                    target_union: Some(TargetUnion::ModRevision(-1)),
                    ..Default::default()
                }],
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: k,
                        value: value.clone(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            c.txn(&req, t).await.is_ok()
        }
    }
}

/// The k8s workload's objects live under this prefix.
const K8S_PREFIX: &[u8] = b"/registry/pods/";
/// The end of the prefix's range.
const K8S_PREFIX_END: &[u8] = b"/registry/pods0";

fn k8s_key(n: u64) -> Bytes {
    Bytes::from(format!("/registry/pods/ns-{:02}/pod-{n:08}", n % 10))
}

thread_local! {
    /// The mod revision each object had when this thread last wrote or read it (what an
    /// apiserver's cache holds); 0: never seen (an update then creates it).
    static SEEN: RefCell<std::collections::HashMap<u64, i64>> = RefCell::default();
}

/// One operation of the k8s workload (see `Kind::K8s`).
async fn k8s_op(c: &mut Client, w: &Workload, i: u64, value: &Bytes, epoch: Instant) -> bool {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let t = Some(Duration::from_secs(10));
    let n = i % w.key_space.max(1);
    let key = k8s_key(n);
    let p = ((i >> 32) & 0xffff) as f64 / 65536.0;
    if p < 0.05 {
        let list = pb::RangeRequest {
            key: Bytes::from_static(K8S_PREFIX),
            range_end: Bytes::from_static(K8S_PREFIX_END),
            limit: 500,
            ..Default::default()
        };
        return c.range(&list, t).await.is_ok();
    }
    if p < 0.30 {
        let get = pb::RangeRequest {
            key,
            ..Default::default()
        };
        return match c.range(&get, t).await {
            Ok(r) => {
                let rev = r.kvs.first().map_or(0, |kv| kv.mod_revision);
                SEEN.with(|s| s.borrow_mut().insert(n, rev));
                true
            }
            Err(_) => false,
        };
    }
    for _ in 0..2 {
        let seen = SEEN.with(|s| s.borrow().get(&n).copied().unwrap_or(0));
        let update = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.clone(),
                target_union: Some(TargetUnion::ModRevision(seen)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.clone(),
                    value: stamped(value, epoch),
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })),
            }],
        };
        let Ok(r) = c.txn(&update, t).await else {
            return false;
        };
        if r.succeeded {
            let rev = r.header.map_or(0, |h| h.revision);
            SEEN.with(|s| s.borrow_mut().insert(n, rev));
            return true;
        }
        // A conflict: another writer moved the object; retry from what the txn read.
        let now = r
            .responses
            .first()
            .and_then(|op| match &op.response {
                Some(pb::response_op::Response::ResponseRange(rr)) => {
                    rr.kvs.first().map(|kv| kv.mod_revision)
                }
                _ => None,
            })
            .unwrap_or(0);
        SEEN.with(|s| s.borrow_mut().insert(n, now));
    }
    // Two conflicts in a row: the apiserver would go on retrying; counted as done.
    true
}

/// Runs the workload against `endpoints`; returns the merged report.
fn run(endpoints: &[String], w: &Workload, server_pid: &[u32]) -> Report {
    let issued = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = Arc::new(WatchShared {
        done: AtomicU64::new(0),
        ready: AtomicU64::new(0),
        events: AtomicU64::new(0),
        puts_done: AtomicU64::new(0),
        load_end_ns: AtomicU64::new(0),
        epoch: Instant::now(),
        puts_start_ns: AtomicU64::new(0),
        server_cpu_at_start: AtomicU64::new(f64::NAN.to_bits()),
        server_pid: server_pid.to_vec(),
    });
    progress(watch.clone(), w.total, finished.clone());
    let threads = w.threads.max(1);
    let server_before = server_cpu_seconds(server_pid);
    let own_before = cpu_seconds(None).unwrap_or(0.0);
    let start = Instant::now() + Duration::from_millis(200);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let endpoints = endpoints.to_vec();
            let w = w.clone();
            let issued = issued.clone();
            let watch = watch.clone();
            // Connections are set up first; the load starts at `start`.
            let start_at = start;
            std::thread::spawn(move || {
                glommio::LocalExecutorBuilder::default()
                    .make()
                    .expect("executor")
                    .run(thread_main(
                        t, threads, endpoints, w, issued, start_at, watch,
                    ))
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors = 0;
    let mut lateness = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut events = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for h in handles {
        let (hh, e, l, ev) = h.join().expect("loadgen thread");
        hist.add(hh).expect("same bounds");
        lateness.add(l).expect("same bounds");
        events.add(ev).expect("same bounds");
        errors += e;
    }
    finished.store(true, Ordering::SeqCst);
    if stopped() {
        outln!("interrupted: the report covers what was measured until Ctrl-C");
    }
    // A watch run is timed from its first put (creating the watchers is not part of it) to
    // its last event; other runs from the start to their last answer (a k8s run's watch
    // reader then waits a little for the last events, which is not part of it).
    let seconds = if w.workload == Kind::Watch {
        let from = Duration::from_nanos(watch.puts_start_ns.load(Ordering::SeqCst));
        (watch.epoch.elapsed() - from).as_secs_f64()
    } else {
        let end = Duration::from_nanos(watch.load_end_ns.load(Ordering::SeqCst));
        (watch.epoch + end)
            .saturating_duration_since(start)
            .as_secs_f64()
    };
    Report {
        requests: hist.len(),
        errors,
        seconds,
        server_cpu_s: match (
            if w.workload == Kind::Watch {
                Some(f64::from_bits(
                    watch.server_cpu_at_start.load(Ordering::SeqCst),
                ))
                .filter(|c| !c.is_nan())
            } else {
                server_before
            },
            server_cpu_seconds(server_pid),
        ) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        own_cpu_s: cpu_seconds(None).unwrap_or(0.0) - own_before,
        hist,
        lateness,
        events,
    }
}

/// What the threads of a run share (most of it for the watch workload).
struct WatchShared {
    /// Requests completed so far (the progress line).
    done: AtomicU64,
    /// Watchers created so far (puts start when all are).
    ready: AtomicU64,
    /// Events received so far.
    events: AtomicU64,
    /// Threads whose puts are done.
    puts_done: AtomicU64,
    /// When the last thread's requests were all answered, ns after `epoch`.
    load_end_ns: AtomicU64,
    /// Time zero of the send stamps in put values.
    epoch: Instant,
    /// When the puts started, ns after `epoch`.
    puts_start_ns: AtomicU64,
    /// The server's CPU seconds (f64 bits) when the puts started, so that creating the
    /// watchers is not counted.
    server_cpu_at_start: AtomicU64,
    server_pid: Vec<u32>,
}

/// Opens this thread's share of the watch streams (stream s on thread s % threads), creates
/// its watchers, and spawns a reader per stream recording put-to-event latency. Returns the
/// reader tasks.
async fn start_watchers(
    t: usize,
    threads: usize,
    endpoints: &[String],
    w: &Workload,
    watch: &Arc<WatchShared>,
    events: &Rc<RefCell<Histogram<u64>>>,
) -> Vec<glommio::Task<()>> {
    let k8s = w.workload == Kind::K8s;
    let streams = if k8s { 1 } else { w.watch_streams.max(1) };
    let keys = w.watch_keys.max(1);
    // Each key has about watchers / keys watchers; every put reaches them all. (A k8s run
    // does not know how many of its operations will be updates.)
    let expected = if k8s {
        u64::MAX
    } else {
        w.total * (w.watchers / keys).max(1) as u64
    };
    let watchers = if k8s { 1 } else { w.watchers };
    let mut readers = Vec::new();
    for s in (0..streams).filter(|s| s % threads == t) {
        let ep = &endpoints[s % endpoints.len()];
        let mut client = Client::connect(ep, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {ep}: {e}"));
        let creates: Vec<pb::WatchRequest> = (0..watchers)
            .filter(|i| i % streams == s)
            .map(|i| pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(if k8s {
                    pb::WatchCreateRequest {
                        key: Bytes::from_static(K8S_PREFIX),
                        range_end: Bytes::from_static(K8S_PREFIX_END),
                        prev_kv: true,
                        ..Default::default()
                    }
                } else {
                    pb::WatchCreateRequest {
                        key: key((i % keys) as u64, w.key_size),
                        ..Default::default()
                    }
                })),
            })
            .collect();
        let n = creates.len();
        if n == 0 {
            continue;
        }
        // Created a chunk at a time, reading the answers in between: an HTTP/2 client holds
        // few unread small frames (h2 closes a connection flooded with them).
        const CHUNK: usize = 50;
        let mut stream = client
            .watch(&creates[..CHUNK.min(n)])
            .await
            .unwrap_or_else(|e| panic!("watch on {ep}: {e}"));
        let mut created = 0;
        while created < n {
            let r = stream.next().await.unwrap_or_else(|e| panic!("watch: {e}"));
            assert!(!r.canceled, "watch refused: {}", r.cancel_reason);
            created += usize::from(r.created);
            if created % CHUNK == 0 && created < n {
                for c in &creates[created..(created + CHUNK).min(n)] {
                    stream.send(c).unwrap_or_else(|e| panic!("watch: {e}"));
                }
            }
        }
        watch.ready.fetch_add(n as u64, Ordering::SeqCst);
        let (watch, events) = (watch.clone(), events.clone());
        let threads = threads as u64;
        readers.push(glommio::spawn_local(async move {
            let _client = client;
            let mut last = Instant::now();
            loop {
                // Done when every event arrived, or the puts are over and 3 s pass quietly.
                if watch.events.load(Ordering::SeqCst) >= expected || stopped() {
                    break;
                }
                let quiet = last.elapsed() > Duration::from_secs(if k8s { 1 } else { 3 });
                if quiet && watch.puts_done.load(Ordering::SeqCst) >= threads {
                    break;
                }
                let next = futures_lite::future::or(async { Some(stream.next().await) }, async {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    None
                })
                .await;
                let r = match next {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        eprintln!("watch stream ended: {e}");
                        break;
                    }
                    None => continue,
                };
                last = Instant::now();
                let now = watch.epoch.elapsed().as_nanos() as u64;
                let mut h = events.borrow_mut();
                for e in &r.events {
                    let Some(kv) = &e.kv else { continue };
                    if kv.value.len() >= 8 {
                        let sent = u64::from_le_bytes(kv.value[..8].try_into().expect("8 bytes"));
                        let us = (now.saturating_sub(sent) / 1000).max(1);
                        let _ = h.record(us.min(60_000_000));
                    }
                }
                watch
                    .events
                    .fetch_add(r.events.len() as u64, Ordering::SeqCst);
            }
        }));
    }
    readers
}

async fn thread_main(
    t: usize,
    threads: usize,
    endpoints: Vec<String>,
    w: Workload,
    issued: Arc<AtomicU64>,
    start_at: Instant,
    watch: Arc<WatchShared>,
) -> (Histogram<u64>, u64, Histogram<u64>, Histogram<u64>) {
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let errors = Rc::new(RefCell::new(0u64));
    let lateness = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let events = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let readers = match w.workload {
        Kind::Watch => start_watchers(t, threads, &endpoints, &w, &watch, &events).await,
        Kind::K8s if t == 0 => start_watchers(t, 1, &endpoints, &w, &watch, &events).await,
        _ => Vec::new(),
    };
    let conns: Vec<usize> = (0..w.conns.max(1)).filter(|c| c % threads == t).collect();
    // Global client numbers: thread t's clients follow those of the threads before it.
    let issued_clients = std::cell::Cell::new(t * (w.clients / threads.max(1)));
    // The watch workload starts its puts once every thread's watchers exist.
    let mut started = start_at;
    if w.workload == Kind::Watch {
        let deadline = Instant::now() + Duration::from_secs(120);
        while watch.ready.load(Ordering::SeqCst) < w.watchers as u64 {
            assert!(Instant::now() < deadline, "watchers not created in 120 s");
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        started = started.max(Instant::now());
        let ns = started.duration_since(watch.epoch).as_nanos() as u64;
        watch.puts_start_ns.fetch_max(ns, Ordering::SeqCst);
        if t == 0 {
            if let Some(c) = server_cpu_seconds(&watch.server_pid) {
                watch
                    .server_cpu_at_start
                    .store(c.to_bits(), Ordering::SeqCst);
            }
        }
    }
    let mut tasks = Vec::new();
    let value = Bytes::from(vec![b'v'; w.val_size]);
    for (ci, c) in conns.iter().enumerate() {
        let ep = &endpoints[c % endpoints.len()];
        let client = Client::connect(ep, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {ep}: {e}"));
        // Clients are spread evenly over all connections.
        let per_conn =
            (w.clients / w.conns.max(1)).max(1) + usize::from(ci + t < w.clients % w.conns.max(1));
        for _ in 0..per_conn {
            let mut client = client.clone();
            let epoch = watch.epoch;
            let shared = watch.clone();
            let (w, issued, hist, errors, value, lateness) = (
                w.clone(),
                issued.clone(),
                hist.clone(),
                errors.clone(),
                value.clone(),
                lateness.clone(),
            );
            // Open loop: this client sends requests gi, gi + clients, gi + 2 * clients, ...
            // each at start + k / rate.
            let gi = issued_clients.get();
            issued_clients.set(gi + 1);
            tasks.push(glommio::spawn_local(async move {
                let mut k = gi as u64;
                let mut keepalive = if w.workload == Kind::LeaseKeepalive {
                    Some(open_keepalive(&mut client).await)
                } else {
                    None
                };
                // Everyone starts together, once every connection is up.
                let now = Instant::now();
                if started > now {
                    glommio::timer::sleep(started - now).await;
                }
                loop {
                    if stopped() {
                        break;
                    }
                    let (i, intended) = if w.rate > 0.0 {
                        if k >= w.total {
                            break;
                        }
                        let at = started + Duration::from_secs_f64(k as f64 / w.rate);
                        let this = k;
                        k += w.clients.max(1) as u64;
                        let now = Instant::now();
                        if at > now {
                            glommio::timer::sleep(at - now).await;
                        }
                        let late = at.elapsed().as_micros().max(1) as u64;
                        let _ = lateness.borrow_mut().record(late.min(60_000_000));
                        (this, at)
                    } else {
                        let i = issued.fetch_add(1, Ordering::Relaxed);
                        if i >= w.total {
                            break;
                        }
                        (i, Instant::now())
                    };
                    let n = spread(i);
                    let ok = match &mut keepalive {
                        Some((id, s)) => keep_alive_once(*id, s).await,
                        None => one(&mut client, &w, (n, i), &value, epoch).await,
                    };
                    shared.done.fetch_add(1, Ordering::Relaxed);
                    if ok {
                        let us = intended.elapsed().as_micros().max(1) as u64;
                        let _ = hist.borrow_mut().record(us.min(60_000_000));
                    } else {
                        *errors.borrow_mut() += 1;
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await;
    }
    let end = watch.epoch.elapsed().as_nanos() as u64;
    watch.load_end_ns.fetch_max(end, Ordering::SeqCst);
    watch.puts_done.fetch_add(1, Ordering::SeqCst);
    for r in readers {
        r.await;
    }
    let h = hist.borrow().clone();
    let e = *errors.borrow();
    let l = lateness.borrow().clone();
    let ev = events.borrow().clone();
    (h, e, l, ev)
}

fn write_hgrm(path: &str, r: &Report) {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in r.hist.iter_quantiles(1) {
        let q = v.quantile_iterated_to();
        out.push_str(&format!(
            "{:12.3} {:14.12} {:10} {:14.2}\n",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            v.count_since_last_iteration(),
            if q < 1.0 {
                1.0 / (1.0 - q)
            } else {
                f64::INFINITY
            }
        ));
    }
    let _ = std::fs::write(path, out);
}

fn main() {
    let cli = Cli::parse();
    // SAFETY: installs a handler that only stores to an atomic and calls signal(2).
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    match cli.cmd {
        Cmd::Run {
            endpoints,
            server_pid,
            w,
        } => {
            let r = run(&endpoints, &w, &server_pid);
            // The files first: a reader of stdout gone (`| head`) ends the process.
            if let Some(p) = &w.hgrm {
                write_hgrm(p, &r);
            }
            r.print(&endpoints.join(","));
            let summary = serde_json::json!({
                "workload": format!("{:?}", w.workload), "requests": r.requests, "errors": r.errors,
                "seconds": r.seconds, "rate": r.rate(), "p50_ms": r.q_ms(0.5), "p99_ms": r.q_ms(0.99),
                "p999_ms": r.q_ms(0.999), "server_cpu_us_per_req": r.server_us_per_req(),
            });
            outln!("{summary}");
        }
        Cmd::Sweep {
            endpoints,
            slo_p99_ms,
            start_rate,
            factor,
            step_seconds,
            csv,
            w,
        } => {
            let mut rows = vec![plot::SWEEP_CSV_HEADER.to_string()];
            outln!("| offered req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | meets SLO |");
            outln!("|---|---|---|---|---|---|");
            let mut best = None;
            let mut rate = start_rate;
            for _ in 0..40 {
                let step = Workload {
                    rate,
                    total: (rate * step_seconds).max(100.0) as u64,
                    ..w.clone()
                };
                let r = run(&endpoints, &step, &[]);
                // Keeping up: the run took no longer than its schedule (5% slack).
                let kept_up = r.seconds <= step_seconds * 1.05 + 0.05 && r.errors == 0;
                let ok = kept_up && r.q_ms(0.99) <= slo_p99_ms;
                rows.push(format!(
                    "{rate:.0},{:.0},{:.3},{:.3},{:.3}",
                    r.rate(),
                    r.q_ms(0.5),
                    r.q_ms(0.99),
                    r.q_ms(0.999)
                ));
                // Written after every step, before its row is printed: the CSV holds every
                // step measured even if the run stops (Ctrl-C, a reader of stdout gone).
                if let Some(path) = &csv {
                    if let Err(e) = std::fs::write(path, rows.join("\n") + "\n") {
                        eprintln!("cannot write {path}: {e}");
                        std::process::exit(1);
                    }
                }
                outln!(
                    "| {rate:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
                    r.rate(),
                    r.q_ms(0.5),
                    r.q_ms(0.99),
                    r.q_ms(0.999),
                    if ok { "yes" } else { "no" }
                );
                if !ok || stopped() {
                    break;
                }
                best = Some(rate);
                rate *= factor.max(1.01);
            }
            match best {
                Some(b) => outln!(
                    "highest offered rate meeting p99 <= {slo_p99_ms} ms: {b:.0} req/s ({:?}, {} clients)",
                    w.workload, w.clients
                ),
                None => outln!("no rate met p99 <= {slo_p99_ms} ms"),
            }
        }
        Cmd::Plot { out, title, files } => {
            if let Err(e) = plot::plot(&out, &title, &files) {
                eprintln!("loadgen plot: {e}");
                std::process::exit(1);
            }
            outln!("written: {out}");
        }
        Cmd::Compare {
            a,
            b,
            a_name,
            b_name,
            a_pid,
            b_pid,
            rounds,
            w,
        } => {
            let mut ra = Vec::new();
            let mut rb = Vec::new();
            for _ in 0..rounds.max(1) {
                let r = run(&a, &w, &a_pid);
                r.print(&a_name);
                ra.push(r);
                if stopped() {
                    return;
                }
                let r = run(&b, &w, &b_pid);
                r.print(&b_name);
                rb.push(r);
                if stopped() {
                    return;
                }
            }
            // The best round of each side (least disturbed by the noisy machine).
            let score = |r: &Report| {
                if w.workload == Kind::Watch {
                    r.events.len() as f64 / r.seconds
                } else {
                    r.rate()
                }
            };
            let best = |v: &[Report]| {
                v.iter()
                    .max_by(|x, y| score(x).total_cmp(&score(y)))
                    .cloned()
                    .expect("a round")
            };
            let (x, y) = (best(&ra), best(&rb));
            outln!();
            outln!(
                "| workload | {a_name} req/s | {b_name} req/s | ratio | {a_name} p50 ms | {b_name} p50 ms | {a_name} p99 ms | {b_name} p99 ms | {a_name} CPU us/req | {b_name} CPU us/req |"
            );
            outln!("|---|---|---|---|---|---|---|---|---|---|");
            let cpu = |r: &Report| {
                r.server_us_per_req()
                    .map_or("-".to_string(), |c| format!("{c:.1}"))
            };
            let rate = if w.rate > 0.0 {
                format!(" at {:.0}/s", w.rate)
            } else {
                String::new()
            };
            if w.workload == Kind::Watch {
                // The row is about events: delivered per second, put-to-event latency, and
                // server CPU per event delivered.
                let ev = |r: &Report| r.events.len() as f64 / r.seconds;
                let q = |r: &Report, q: f64| r.events.value_at_quantile(q) as f64 / 1000.0;
                let cpu = |r: &Report| {
                    r.server_cpu_s.map_or("-".to_string(), |c| {
                        format!("{:.2}", c * 1e6 / r.events.len().max(1) as f64)
                    })
                };
                outln!(
                    "| watch events: {} watchers on {} key(s), {} streams, puts c={}{rate} | {:.0} | {:.0} | {:.2}x | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
                    w.watchers,
                    w.watch_keys,
                    w.watch_streams,
                    w.clients,
                    ev(&x),
                    ev(&y),
                    ev(&x) / ev(&y),
                    q(&x, 0.5),
                    q(&y, 0.5),
                    q(&x, 0.99),
                    q(&y, 0.99),
                    cpu(&x),
                    cpu(&y)
                );
                return;
            }
            outln!(
                "| {} c={} conns={}{rate} | {:.0} | {:.0} | {:.2}x | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
                label(&w),
                w.clients,
                w.conns,
                x.rate(),
                y.rate(),
                x.rate() / y.rate(),
                x.q_ms(0.5),
                y.q_ms(0.5),
                x.q_ms(0.99),
                y.q_ms(0.99),
                cpu(&x),
                cpu(&y)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(args: &[&str]) -> Workload {
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            w: Workload,
        }
        let mut all = vec!["w"];
        all.extend(args);
        W::parse_from(all).w
    }

    #[test]
    fn sequential_keys_follow_the_issue_order_and_random_ones_cover_the_space() {
        let seq = workload(&["--key-space", "1000", "--sequential-keys"]);
        let keys: Vec<u64> = (0..2500).map(|i| key_index(&seq, spread(i), i)).collect();
        assert_eq!(keys[..3], [0, 1, 2]);
        assert_eq!(keys[999..1002], [999, 0, 1]);
        let random = workload(&["--key-space", "1000"]);
        let keys: std::collections::BTreeSet<u64> = (0..20_000)
            .map(|i| key_index(&random, spread(i), i))
            .collect();
        assert!(keys.len() > 990, "{} distinct keys", keys.len());
        assert!(keys.iter().all(|&k| k < 1000));
        assert_eq!(key(7, 8), Bytes::from_static(b"00000007"));
    }

    #[test]
    fn a_prefix_read_covers_the_keys_that_share_the_drawn_keys_leading_digits() {
        let point = workload(&[]);
        let r = range_req(&point, key(12345, 8), true);
        assert_eq!((&r.key[..], &r.range_end[..]), (&b"00012345"[..], &b""[..]));
        assert!(r.serializable && r.limit == 0 && !r.keys_only);
        let w = workload(&["--prefix-digits", "2", "--limit", "50", "--keys-only"]);
        let r = range_req(&w, key(12345, 8), false);
        assert_eq!(
            (&r.key[..], &r.range_end[..]),
            (&b"000123"[..], &b"000124"[..])
        );
        assert!(!r.serializable && r.limit == 50 && r.keys_only);
        // Exactly the 100 keys 12300..=12399 fall in it.
        let inside = |i: u64| {
            let k = key(i, 8);
            k[..] >= r.key[..] && k[..] < r.range_end[..]
        };
        assert_eq!((0..100_000).filter(|&i| inside(i)).count(), 100);
        assert!(inside(12300) && inside(12399) && !inside(12299) && !inside(12400));
        // The label names the range options only for workloads that read.
        assert_eq!(label(&w), "Put");
        let list = workload(&[
            "--workload",
            "range",
            "--prefix-digits",
            "2",
            "--limit",
            "50",
        ]);
        assert_eq!(label(&list), "Range prefix of 10^2 limit 50");
        let all = workload(&["--prefix-digits", "8"]);
        let r = range_req(&all, key(5, 8), false);
        assert_eq!((&r.key[..], &r.range_end[..]), (&b"\0"[..], &b"\0"[..]));
    }
}
