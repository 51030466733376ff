//! `/metrics`: Prometheus text format (0.0.4), with etcd's metric names wherever the meaning is
//! the same, so that etcd's dashboards and alerts work unchanged, and `ferrocd_*` for what is
//! ours.
//!
//! The figures are plain atomics and prometheus-client histograms in one process-wide
//! [`METRICS`], written where the work happens (the shard that serves a call, the owner shard's
//! apply loop) and read by whichever shard answers the scrape. The per-call counters are fixed
//! arrays indexed by method and code: a call costs two relaxed atomic increments, no lock, no
//! allocation.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::grpc::METHODS;
use crate::error::Code;
use crate::kv::ETCD_API_VERSION;

/// The `Content-Type` of the answer.
pub(crate) const CONTENT_TYPE: (&str, &str) = (
    "Content-Type",
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
);

/// gRPC codes as go-grpc-prometheus names them, by wire value.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Everything the server counts.
pub(crate) struct Metrics {
    /// `etcd_disk_wal_fsync_duration_seconds`: each fdatasync of the log.
    pub wal_fsync: Histogram,
    /// `etcd_disk_backend_commit_duration_seconds`: a batch's write and fdatasync (our log is
    /// both etcd's WAL and its backend).
    pub backend_commit: Histogram,
    pub wal_write_bytes: Counter,
    /// `ferrocd_log_records_per_fdatasync`: the group commit at work.
    pub records_per_fsync: Histogram,
    /// `ferrocd_apply_batch_requests`: requests the owner shard took in one turn.
    pub apply_batch: Histogram,
    pub proposals_committed: Counter,
    pub proposals_applied: Counter,
    pub proposals_failed: Counter,
    pub proposals_pending: Gauge,
    pub db_total_size: Gauge,
    pub db_in_use: Gauge,
    pub keys_total: Gauge,
    pub range_total: Counter,
    pub put_total: Counter,
    pub delete_total: Counter,
    pub txn_total: Counter,
    pub watch_streams: Gauge,
    pub watchers: Gauge,
    /// `ferrocd_watch_pulls_total`: event pulls of watch streams from the owner shard.
    pub watch_pulls: Counter,
    pub quota_bytes: Gauge,
    /// `ferrocd_watch_catchup_pulls_total`: watch reads older than the change ring (a watcher
    /// catching up from the index); set from the store's count by the owner shard.
    pub watch_catchups: AtomicU64,
    /// `ferrocd_owner_requests_in_flight`: requests sent to the owner shard and not answered
    /// yet (its queue, the batch being applied and the one in its fdatasync), one slot per
    /// shard so that shards never write the same cache line.
    owner_in_flight: Vec<Padded>,
    /// The member's id, for `etcd_server_id`.
    pub member_id: AtomicU64,
    /// Raft: whether a leader is known, whether it is this member, leader changes seen (a
    /// single member is its own leader from its start: 1, 1, 1).
    pub has_leader: AtomicU64,
    pub is_leader: AtomicU64,
    pub leader_changes: AtomicU64,
    /// Raft messages to peers dropped because a peer's queue was full.
    pub peer_dropped: AtomicU64,
    /// Per peer (by member id): etcd's `etcd_network_peer_*` figures. Only the owner shard's
    /// peer links write them, once per batch of messages.
    peers: std::sync::Mutex<std::collections::BTreeMap<u64, PeerStats>>,
    grpc_started: Vec<AtomicU64>,
    grpc_handled: Vec<AtomicU64>,
    /// `--metrics extensive`: per-method handling time histograms (cumulative bucket counts,
    /// then the sum in microseconds), as go-grpc-prometheus's `grpc_server_handling_seconds`.
    extensive: std::sync::atomic::AtomicBool,
    handling: Vec<AtomicU64>,
    start_unix: AtomicI64,
}

/// A peer link's traffic and round trips.
#[derive(Default, Clone)]
struct PeerStats {
    sent_bytes: u64,
    received_bytes: u64,
    sent_failures: u64,
    /// Round-trip counts per bucket of `RTT_BUCKETS`, then +Inf; and their sum in seconds.
    rtt: [u64; RTT_BUCKETS.len() + 1],
    rtt_sum: f64,
}

/// etcd's buckets for `etcd_network_peer_round_trip_time_seconds`: 0.1 ms doubling, 16 of them.
const RTT_BUCKETS: [f64; 16] = {
    let mut b = [0.0001; 16];
    let mut i = 1;
    while i < 16 {
        b[i] = b[i - 1] * 2.0;
        i += 1;
    }
    b
};

impl Metrics {
    fn peer(&self, id: u64, f: impl FnOnce(&mut PeerStats)) {
        if let Ok(mut p) = self.peers.lock() {
            f(p.entry(id).or_default());
        }
    }

    /// Bytes written to peer `id`.
    pub fn peer_sent(&self, id: u64, bytes: u64) {
        self.peer(id, |p| p.sent_bytes += bytes);
    }

    /// Bytes read from peer `id`.
    pub fn peer_received(&self, id: u64, bytes: u64) {
        self.peer(id, |p| p.received_bytes += bytes);
    }

    /// A write to peer `id` that failed (the link is reopened).
    pub fn peer_send_failed(&self, id: u64) {
        self.peer(id, |p| p.sent_failures += 1);
    }

    /// A round trip to peer `id` (a ping on its link answered).
    pub fn peer_rtt(&self, id: u64, seconds: f64) {
        self.peer(id, |p| {
            let i = RTT_BUCKETS
                .iter()
                .position(|&b| seconds <= b)
                .unwrap_or(RTT_BUCKETS.len());
            p.rtt[i] += 1;
            p.rtt_sum += seconds;
        });
    }
}

/// Whether this member knows a leader (a single member is always its own), from any shard.
pub(crate) fn has_leader() -> bool {
    METRICS
        .has_leader
        .load(std::sync::atomic::Ordering::Relaxed)
        != 0
}

/// Whether this member is the leader (a single member always is).
pub(crate) fn is_leader() -> bool {
    METRICS.is_leader.load(std::sync::atomic::Ordering::Relaxed) != 0
}

/// Per-shard slots of the in-flight count (shards beyond share slots).
const SHARD_SLOTS: usize = 64;

/// An atomic alone on its cache line(s).
#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicI64);

thread_local! {
    /// The shard this thread runs.
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Records which shard the calling thread runs (for per-shard counters).
pub(crate) fn set_shard(id: usize) {
    SHARD.with(|s| s.set(id));
}

/// go-grpc-prometheus's default buckets, in seconds.
const HANDLING_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Per method: one count per bucket, the +Inf count, the sum in microseconds.
const HANDLING_SLOTS: usize = HANDLING_BUCKETS.len() + 2;

/// The process's metrics.
pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Metrics {
            wal_fsync: seconds(),
            backend_commit: seconds(),
            wal_write_bytes: Counter::default(),
            records_per_fsync: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            apply_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            proposals_committed: Counter::default(),
            proposals_applied: Counter::default(),
            proposals_failed: Counter::default(),
            proposals_pending: Gauge::default(),
            db_total_size: Gauge::default(),
            db_in_use: Gauge::default(),
            keys_total: Gauge::default(),
            range_total: Counter::default(),
            put_total: Counter::default(),
            delete_total: Counter::default(),
            txn_total: Counter::default(),
            watch_streams: Gauge::default(),
            watchers: Gauge::default(),
            watch_pulls: Counter::default(),
            quota_bytes: Gauge::default(),
            watch_catchups: AtomicU64::new(0),
            owner_in_flight: (0..SHARD_SLOTS).map(|_| Padded::default()).collect(),
            member_id: AtomicU64::new(0),
            has_leader: AtomicU64::new(1),
            is_leader: AtomicU64::new(1),
            leader_changes: AtomicU64::new(1),
            peer_dropped: AtomicU64::new(0),
            peers: Default::default(),
            grpc_started: (0..METHODS.len()).map(|_| AtomicU64::new(0)).collect(),
            grpc_handled: (0..METHODS.len() * CODES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            extensive: std::sync::atomic::AtomicBool::new(false),
            handling: (0..METHODS.len() * HANDLING_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            start_unix: AtomicI64::new(start),
        }
    }

    /// A call of `METHODS[method]` began.
    pub fn grpc_started(&self, method: usize) {
        self.grpc_started[method].fetch_add(1, Relaxed);
    }

    /// When a call begins: the time, only if calls are timed (`--metrics extensive`), so that
    /// the common case reads no clock.
    pub fn clock(&self) -> Option<std::time::Instant> {
        self.extensive.load(Relaxed).then(std::time::Instant::now)
    }

    /// A call of `METHODS[method]` ended with `code`; `started` is its [`Metrics::clock`].
    pub fn grpc_handled(&self, method: usize, code: Code, started: Option<std::time::Instant>) {
        let c = (code.as_i32() as usize).min(CODES.len() - 1);
        self.grpc_handled[method * CODES.len() + c].fetch_add(1, Relaxed);
        if let Some(started) = started {
            let took = started.elapsed();
            let base = method * HANDLING_SLOTS;
            let b = HANDLING_BUCKETS
                .iter()
                .position(|&le| took.as_secs_f64() <= le)
                .unwrap_or(HANDLING_BUCKETS.len());
            self.handling[base + b].fetch_add(1, Relaxed);
            self.handling[base + HANDLING_SLOTS - 1].fetch_add(took.as_micros() as u64, Relaxed);
        }
    }

    /// A request to the owner shard was sent (+1) or answered (-1), on this shard.
    pub fn owner_in_flight(&self, delta: i64) {
        let slot = SHARD.with(|s| s.get()) % SHARD_SLOTS;
        self.owner_in_flight[slot].0.fetch_add(delta, Relaxed);
    }

    /// `--metrics extensive`: also time every call.
    pub fn set_extensive(&self, on: bool) {
        self.extensive.store(on, Relaxed);
    }
}

/// The exposition of every metric.
pub(crate) fn render() -> String {
    let m = &*METRICS;
    let mut r = Registry::default();
    r.register(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL",
        m.wal_fsync.clone(),
    );
    r.register(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend",
        m.backend_commit.clone(),
    );
    r.register(
        "etcd_disk_wal_write_bytes",
        "Total number of bytes written in WAL",
        m.wal_write_bytes.clone(),
    );
    r.register(
        "etcd_server_proposals_committed",
        "The total number of consensus proposals committed",
        m.proposals_committed.clone(),
    );
    r.register(
        "etcd_server_proposals_applied",
        "The total number of consensus proposals applied",
        m.proposals_applied.clone(),
    );
    r.register(
        "etcd_server_proposals_failed",
        "The total number of failed proposals seen",
        m.proposals_failed.clone(),
    );
    r.register(
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit",
        m.proposals_pending.clone(),
    );
    r.register(
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes",
        m.db_total_size.clone(),
    );
    r.register(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes",
        m.db_in_use.clone(),
    );
    r.register(
        "etcd_debugging_mvcc_keys_total",
        "Total number of keys",
        m.keys_total.clone(),
    );
    r.register(
        "etcd_mvcc_range",
        "Total number of ranges seen by this member",
        m.range_total.clone(),
    );
    r.register(
        "etcd_mvcc_put",
        "Total number of puts seen by this member",
        m.put_total.clone(),
    );
    r.register(
        "etcd_mvcc_delete",
        "Total number of deletes seen by this member",
        m.delete_total.clone(),
    );
    r.register(
        "etcd_mvcc_txn",
        "Total number of txns seen by this member",
        m.txn_total.clone(),
    );
    r.register(
        "etcd_debugging_mvcc_watch_stream_total",
        "Total number of watch streams",
        m.watch_streams.clone(),
    );
    r.register(
        "etcd_debugging_mvcc_watcher_total",
        "Total number of watchers",
        m.watchers.clone(),
    );
    r.register(
        "etcd_server_quota_backend_bytes",
        "Current backend storage quota size in bytes",
        m.quota_bytes.clone(),
    );
    r.register(
        "ferrocd_log_records_per_fdatasync",
        "Records made durable by one fdatasync of the log (group commit)",
        m.records_per_fsync.clone(),
    );
    r.register(
        "ferrocd_apply_batch_requests",
        "Requests the owner shard took in one turn of its loop",
        m.apply_batch.clone(),
    );
    r.register(
        "ferrocd_watch_pulls",
        "Event pulls by watch streams from the owner shard",
        m.watch_pulls.clone(),
    );
    r.register_collector(Box::new(Dynamic));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &r)
        .expect("writing to a String does not fail");
    out
}

/// What is computed at each scrape: the single member's leadership, the gRPC call counters,
/// and the process figures.
#[derive(Debug)]
struct Dynamic;

impl Collector for Dynamic {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &*METRICS;
        let gauge = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64| {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
        };
        let counter = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64| {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
        };
        gauge(
            &mut enc,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            m.has_leader.load(Relaxed) as i64,
        )?;
        gauge(
            &mut enc,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            m.is_leader.load(Relaxed) as i64,
        )?;
        counter(
            &mut enc,
            "ferrocd_raft_entries_read_from_log",
            "Old Raft entries read back from the log for a follower far behind.",
            crate::consensus::ENTRIES_READ_FROM_LOG.load(Relaxed) as f64,
        )?;
        counter(
            &mut enc,
            "ferrocd_peer_messages_dropped",
            "Raft messages to peers dropped because the peer's queue was full.",
            m.peer_dropped.load(Relaxed) as f64,
        )?;
        gauge(
            &mut enc,
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            0,
        )?;
        {
            let c = ConstCounter::new(m.leader_changes.load(Relaxed));
            c.encode(enc.encode_descriptor(
                "etcd_server_leader_changes_seen",
                "The number of leader changes seen.",
                None,
                c.metric_type(),
            )?)?;
        }
        {
            let id = format!("{:x}", m.member_id.load(Relaxed));
            let g = ConstGauge::new(1i64);
            let mut e = enc.encode_descriptor(
                "etcd_server_id",
                "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                None,
                g.metric_type(),
            )?;
            g.encode(e.encode_family(&[("server_id", id.as_str())])?)?;
        }
        {
            let g = ConstGauge::new(1i64);
            let mut e = enc.encode_descriptor(
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version.",
                None,
                g.metric_type(),
            )?;
            g.encode(e.encode_family(&[("server_version", ETCD_API_VERSION)])?)?;
        }
        {
            let peers = m.peers.lock().map(|p| p.clone()).unwrap_or_default();
            let per_peer = |enc: &mut DescriptorEncoder,
                            name: &str,
                            help: &str,
                            label: &str,
                            v: &dyn Fn(&PeerStats) -> u64|
             -> Result<(), std::fmt::Error> {
                if peers.is_empty() {
                    return Ok(());
                }
                let c = ConstCounter::new(0u64);
                let mut e = enc.encode_descriptor(name, help, None, c.metric_type())?;
                for (id, p) in &peers {
                    let id = format!("{id:x}");
                    ConstCounter::new(v(p)).encode(e.encode_family(&[(label, id.as_str())])?)?;
                }
                Ok(())
            };
            per_peer(
                &mut enc,
                "etcd_network_peer_sent_bytes",
                "The total number of bytes sent to peers.",
                "To",
                &|p| p.sent_bytes,
            )?;
            per_peer(
                &mut enc,
                "etcd_network_peer_received_bytes",
                "The total number of bytes received from peers.",
                "From",
                &|p| p.received_bytes,
            )?;
            per_peer(
                &mut enc,
                "etcd_network_peer_sent_failures",
                "The total number of send failures from peers.",
                "To",
                &|p| p.sent_failures,
            )?;
            if !peers.is_empty() {
                let h = prometheus_client::metrics::histogram::Histogram::new(
                    RTT_BUCKETS.iter().copied(),
                );
                let mut e = enc.encode_descriptor(
                    "etcd_network_peer_round_trip_time_seconds",
                    "Round-Trip-Time histogram between peers",
                    None,
                    h.metric_type(),
                )?;
                for (id, p) in &peers {
                    let id = format!("{id:x}");
                    let buckets: Vec<(f64, u64)> = RTT_BUCKETS
                        .iter()
                        .copied()
                        .chain([f64::INFINITY])
                        .zip(p.rtt)
                        .collect();
                    let count = p.rtt.iter().sum();
                    e.encode_family(&[("To", id.as_str())])?
                        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        p.rtt_sum, count, &buckets, None,
                    )?;
                }
            }
        }
        {
            let c = ConstCounter::new(0u64);
            let mut e = enc.encode_descriptor(
                "grpc_server_started",
                "Total number of RPCs started on the server.",
                None,
                c.metric_type(),
            )?;
            for (i, &(service, method, kind)) in METHODS.iter().enumerate() {
                let v = m.grpc_started[i].load(Relaxed);
                if v == 0 {
                    continue;
                }
                let labels = [
                    ("grpc_method", method),
                    ("grpc_service", service),
                    ("grpc_type", kind),
                ];
                ConstCounter::new(v).encode(e.encode_family(&labels)?)?;
            }
        }
        {
            let c = ConstCounter::new(0u64);
            let mut e = enc.encode_descriptor(
                "grpc_server_handled",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                None,
                c.metric_type(),
            )?;
            for (i, &(service, method, kind)) in METHODS.iter().enumerate() {
                for (c, code) in CODES.iter().enumerate() {
                    let v = m.grpc_handled[i * CODES.len() + c].load(Relaxed);
                    if v == 0 {
                        continue;
                    }
                    let labels = [
                        ("grpc_code", *code),
                        ("grpc_method", method),
                        ("grpc_service", service),
                        ("grpc_type", kind),
                    ];
                    ConstCounter::new(v).encode(e.encode_family(&labels)?)?;
                }
            }
        }
        if m.extensive.load(Relaxed) {
            let mut e = enc.encode_descriptor(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            for (i, &(service, method, kind)) in METHODS.iter().enumerate() {
                let base = i * HANDLING_SLOTS;
                let counts: Vec<u64> = (0..=HANDLING_BUCKETS.len())
                    .map(|b| m.handling[base + b].load(Relaxed))
                    .collect();
                let count: u64 = counts.iter().sum();
                if count == 0 {
                    continue;
                }
                // Per bucket, not cumulative: the encoder sums them up, and writes the last
                // bound (infinity) as "+Inf".
                let buckets: Vec<(f64, u64)> = HANDLING_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(counts)
                    .collect();
                let sum = m.handling[base + HANDLING_SLOTS - 1].load(Relaxed) as f64 / 1e6;
                let labels = [
                    ("grpc_method", method),
                    ("grpc_service", service),
                    ("grpc_type", kind),
                ];
                e.encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
            }
        }
        gauge(
            &mut enc,
            "ferrocd_owner_requests_in_flight",
            "Requests sent to the owner shard and not answered yet (queued, applying, or waiting for their fdatasync)",
            m.owner_in_flight.iter().map(|p| p.0.load(Relaxed)).sum(),
        )?;
        {
            let c = ConstCounter::new(m.watch_catchups.load(Relaxed));
            c.encode(enc.encode_descriptor(
                "ferrocd_watch_catchup_pulls",
                "Watch reads of history older than the change ring, served by walking the index (watchers catching up)",
                None,
                c.metric_type(),
            )?)?;
        }
        let p = process();
        counter(
            &mut enc,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        )?;
        gauge(
            &mut enc,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.rss_bytes,
        )?;
        gauge(
            &mut enc,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.virtual_bytes,
        )?;
        gauge(
            &mut enc,
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds,
        )?;
        gauge(
            &mut enc,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            p.max_fds,
        )?;
        gauge(
            &mut enc,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            m.start_unix.load(Relaxed),
        )?;
        Ok(())
    }
}

#[derive(Default)]
struct Process {
    cpu_seconds: f64,
    rss_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    max_fds: i64,
}

/// The process's figures from /proc (zero where they cannot be read).
fn process() -> Process {
    let mut p = Process::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // The command name may hold spaces; the fields after it are space separated.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            // SAFETY: sysconf has no preconditions.
            let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            // SAFETY: as above.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1);
            // Fields 14 and 15 (utime, stime), 23 (vsize), 24 (rss) of proc(5); `f[0]` is 3.
            p.cpu_seconds = (num(11) + num(12)) as f64 / ticks;
            p.virtual_bytes = num(20);
            p.rss_bytes = num(21) * page;
        }
    }
    p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to write to.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        p.max_fds = lim.rlim_cur as i64;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_etcds_names_and_counts_calls() {
        let range = METHODS.iter().position(|&(_, m, _)| m == "Range").unwrap();
        METRICS.grpc_started(range);
        METRICS.set_extensive(true);
        METRICS.grpc_handled(range, Code::OutOfRange, METRICS.clock());
        METRICS.wal_fsync.observe(0.0015);
        let text = render();
        for line in [
            "etcd_server_has_leader 1",
            "# TYPE etcd_disk_wal_fsync_duration_seconds histogram",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.002\"} ",
            "# TYPE etcd_server_proposals_committed_total counter",
            "grpc_server_handled_total{grpc_code=\"OutOfRange\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} ",
            "process_resident_memory_bytes ",
            "grpc_server_handling_seconds_bucket{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\",le=\"0.005\"} ",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(
            !text.contains("# EOF"),
            "the 0.0.4 text format has no EOF line"
        );
        assert!(process().rss_bytes > 0);
    }
}
