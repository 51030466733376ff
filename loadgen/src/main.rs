//! loadgen: drives any etcd v3 endpoint (ferrocd or etcd) over gRPC and reports latency
//! histograms (HdrHistogram), throughput, and the CPU time the server and loadgen itself spent.
//!
//! `loadgen run` measures one endpoint set; `loadgen compare` runs the same workload against two
//! sets, alternating, and prints one table with the ratios. Closed loop: each client has one
//! request outstanding.

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
        /// Process id of the server, to report its CPU time per request.
        #[arg(long)]
        server_pid: Option<u32>,
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
        #[command(flatten)]
        w: Workload,
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
        #[arg(long)]
        a_pid: Option<u32>,
        #[arg(long)]
        b_pid: Option<u32>,
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
        println!(
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
            println!(
                "{name}: open loop: loadgen sent late by p50 {:.3} ms, p99 {:.3} ms (counted in the latency)",
                self.lateness.value_at_quantile(0.5) as f64 / 1000.0,
                self.lateness.value_at_quantile(0.99) as f64 / 1000.0
            );
        }
        if let Some(us) = self.server_us_per_req() {
            println!("{name}: server CPU {us:.1} us per request");
        }
        let own = self.own_cpu_s * 1e6 / self.requests.max(1) as f64;
        println!("{name}: loadgen CPU {own:.1} us per request");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if self.own_cpu_s / self.seconds > 0.8 * cores / 2.0 {
            println!(
                "{name}: warning: loadgen used {:.0}% of a core per thread budget; it may be the bottleneck",
                100.0 * self.own_cpu_s / self.seconds
            );
        }
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
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

fn key(i: u64, size: usize) -> Bytes {
    let mut s = format!("{i:0size$}").into_bytes();
    // Keep the last `size` digits: keys have exactly the asked size.
    let cut = s.len().saturating_sub(size.max(1));
    Bytes::from(s.split_off(cut))
}

async fn one(c: &mut Client, w: &Workload, i: u64, value: &Bytes) -> bool {
    let t = Some(Duration::from_secs(10));
    let k = key(i % w.key_space, w.key_size);
    match w.workload {
        Kind::Put => {
            let req = pb::PutRequest {
                key: k,
                value: value.clone(),
                ..Default::default()
            };
            c.put(&req, t).await.is_ok()
        }
        Kind::Range | Kind::RangeSerializable => {
            let req = pb::RangeRequest {
                key: k,
                serializable: w.workload == Kind::RangeSerializable,
                ..Default::default()
            };
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

/// Runs the workload against `endpoints`; returns the merged report.
fn run(endpoints: &[String], w: &Workload, server_pid: Option<u32>) -> Report {
    let issued = Arc::new(AtomicU64::new(0));
    let threads = w.threads.max(1);
    let server_before = cpu_seconds(server_pid);
    let own_before = cpu_seconds(None).unwrap_or(0.0);
    let start = Instant::now() + Duration::from_millis(200);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let endpoints = endpoints.to_vec();
            let w = w.clone();
            let issued = issued.clone();
            // Connections are set up first; the load starts at `start`.
            let start_at = start;
            std::thread::spawn(move || {
                glommio::LocalExecutorBuilder::default()
                    .make()
                    .expect("executor")
                    .run(thread_main(t, threads, endpoints, w, issued, start_at))
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors = 0;
    let mut lateness = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for h in handles {
        let (hh, e, l) = h.join().expect("loadgen thread");
        hist.add(hh).expect("same bounds");
        lateness.add(l).expect("same bounds");
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    Report {
        requests: hist.len(),
        errors,
        seconds,
        server_cpu_s: match (server_before, cpu_seconds(server_pid)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        own_cpu_s: cpu_seconds(None).unwrap_or(0.0) - own_before,
        hist,
        lateness,
    }
}

async fn thread_main(
    t: usize,
    threads: usize,
    endpoints: Vec<String>,
    w: Workload,
    issued: Arc<AtomicU64>,
    start_at: Instant,
) -> (Histogram<u64>, u64, Histogram<u64>) {
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let errors = Rc::new(RefCell::new(0u64));
    let lateness = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let conns: Vec<usize> = (0..w.conns.max(1)).filter(|c| c % threads == t).collect();
    // Global client numbers: thread t's clients follow those of the threads before it.
    let issued_clients = std::cell::Cell::new(t * (w.clients / threads.max(1)));
    let started = start_at;
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
                // Everyone starts together, once every connection is up.
                let now = Instant::now();
                if started > now {
                    glommio::timer::sleep(started - now).await;
                }
                loop {
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
                    let n = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
                    if one(&mut client, &w, n, &value).await {
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
    let h = hist.borrow().clone();
    let e = *errors.borrow();
    let l = lateness.borrow().clone();
    (h, e, l)
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
    match cli.cmd {
        Cmd::Run {
            endpoints,
            server_pid,
            w,
        } => {
            let r = run(&endpoints, &w, server_pid);
            r.print(&endpoints.join(","));
            if let Some(p) = &w.hgrm {
                write_hgrm(p, &r);
            }
            let summary = serde_json::json!({
                "workload": format!("{:?}", w.workload), "requests": r.requests, "errors": r.errors,
                "seconds": r.seconds, "rate": r.rate(), "p50_ms": r.q_ms(0.5), "p99_ms": r.q_ms(0.99),
                "p999_ms": r.q_ms(0.999), "server_cpu_us_per_req": r.server_us_per_req(),
            });
            println!("{summary}");
        }
        Cmd::Sweep {
            endpoints,
            slo_p99_ms,
            start_rate,
            factor,
            step_seconds,
            w,
        } => {
            println!("| offered req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | meets SLO |");
            println!("|---|---|---|---|---|---|");
            let mut best = None;
            let mut rate = start_rate;
            for _ in 0..40 {
                let step = Workload {
                    rate,
                    total: (rate * step_seconds).max(100.0) as u64,
                    ..w.clone()
                };
                let r = run(&endpoints, &step, None);
                // Keeping up: the run took no longer than its schedule (5% slack).
                let kept_up = r.seconds <= step_seconds * 1.05 + 0.05 && r.errors == 0;
                let ok = kept_up && r.q_ms(0.99) <= slo_p99_ms;
                println!(
                    "| {rate:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
                    r.rate(),
                    r.q_ms(0.5),
                    r.q_ms(0.99),
                    r.q_ms(0.999),
                    if ok { "yes" } else { "no" }
                );
                if !ok {
                    break;
                }
                best = Some(rate);
                rate *= factor.max(1.01);
            }
            match best {
                Some(b) => println!(
                    "highest offered rate meeting p99 <= {slo_p99_ms} ms: {b:.0} req/s ({:?}, {} clients)",
                    w.workload, w.clients
                ),
                None => println!("no rate met p99 <= {slo_p99_ms} ms"),
            }
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
                let r = run(&a, &w, a_pid);
                r.print(&a_name);
                ra.push(r);
                let r = run(&b, &w, b_pid);
                r.print(&b_name);
                rb.push(r);
            }
            // The best round of each side (least disturbed by the noisy machine).
            let best = |v: &[Report]| {
                v.iter()
                    .max_by(|x, y| x.rate().total_cmp(&y.rate()))
                    .cloned()
                    .expect("a round")
            };
            let (x, y) = (best(&ra), best(&rb));
            println!();
            println!(
                "| workload | {a_name} req/s | {b_name} req/s | ratio | {a_name} p50 ms | {b_name} p50 ms | {a_name} p99 ms | {b_name} p99 ms | {a_name} CPU us/req | {b_name} CPU us/req |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|");
            let cpu = |r: &Report| {
                r.server_us_per_req()
                    .map_or("-".to_string(), |c| format!("{c:.1}"))
            };
            let rate = if w.rate > 0.0 {
                format!(" at {:.0}/s", w.rate)
            } else {
                String::new()
            };
            println!(
                "| {:?} c={} conns={}{rate} | {:.0} | {:.0} | {:.2}x | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
                w.workload,
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
