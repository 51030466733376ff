//! The server runtime: one glommio executor per shard, each accepting client connections on
//! every client address (`SO_REUSEPORT`: the kernel spreads connections over the shards).
//!
//! Shard 0 owns the state ([`crate::kv::KvState`]); the other shards decode requests and
//! forward them over bounded cross-shard channels ([`shard`]), then encode the answers
//! themselves, so the expensive per-request work (HTTP/2, protobuf) spreads over the cores
//! while the state has one writer and no locks.

pub(crate) mod access;
mod balance;
mod checkpoint_writer;
mod conn;
mod deadline;
mod gateway;
mod grpc;
pub(crate) mod h2srv;
mod hpack;
mod http1;
mod http2;
mod metrics;
mod peer;
mod recipes;
pub(crate) mod replica;
mod shard;
mod snapshot;
mod stream;
pub mod tls;
mod watch;

pub use gateway::{decode_gateway_request, gateway_paths};
pub use h2srv::fuzz_frames as fuzz_http2_frames;
pub use snapshot::SNAPSHOT_MAGIC;

pub use grpc::{
    decode_request, encode_response, frame, parse_timeout, percent_decode, percent_encode,
    with_deadline, UNARY_METHODS,
};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;

use glommio::{LocalExecutorBuilder, Placement};

use crate::kv::KvOptions;

/// What the etcd API's /version and Status report as the server version.
pub use crate::kv::ETCD_API_VERSION;

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Client addresses, and whether each serves TLS (an https:// URL).
    pub client_addrs: Vec<(SocketAddr, bool)>,
    /// The TLS setup of https client URLs ([`tls::server_config`]).
    pub tls: Option<std::sync::Arc<tls::ClientTls>>,
    /// `--listen-metrics-urls`: addresses serving only `/metrics` and the health endpoints.
    pub metrics_addrs: Vec<SocketAddr>,
    /// `--enable-grpc-gateway`.
    pub gateway: bool,
    /// `--metrics extensive`.
    pub metrics_extensive: bool,
    pub shards: usize,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    pub kv: KvOptions,
    /// Where the log lives; None keeps the state in memory only (tests).
    pub log_dir: Option<PathBuf>,
    /// Size of a log segment file.
    pub segment_bytes: u64,
    /// `--batch-wait-us`.
    pub batch_wait_us: u64,
    /// `--spin-before-park-us`.
    pub spin_before_park_us: u64,
    /// `--connection-placement`.
    pub connection_placement: crate::config::ConnectionPlacement,
    /// `--experimental-watch-progress-notify-interval`, in seconds.
    pub watch_progress_notify_secs: u64,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`.
    pub auto_compaction: crate::compactor::AutoCompaction,
    /// The member's cluster settings. With other members in the initial cluster (or joining
    /// one) Raft replicates the log; a member alone runs without Raft until its first
    /// membership change (None: it never can, e.g. no usable peer URL).
    pub cluster: Option<ClusterOptions>,
}

pub use replica::{ClusterOptions, MemberInfo};

/// The socket address of a peer URL (`http://host:port`).
pub fn peer_addr(url: &str) -> std::io::Result<SocketAddr> {
    peer::url_addr(url)
}

/// Per-shard settings shared by the connection handlers of a shard.
pub(crate) struct ShardCtx {
    pub max_request_bytes: usize,
    pub owner: shard::Owner,
    /// The owner's revision as this shard knows it; wakes watch streams.
    pub notifier: Rc<shard::Notifier>,
    pub watch_progress_notify_secs: u64,
    /// `--election-timeout`: how often streams that require a leader check for one.
    pub election: std::time::Duration,
    /// The JSON gateway is served (`--enable-grpc-gateway`).
    pub gateway: bool,
    /// This context serves a metrics URL: only `/metrics` and the health endpoints.
    pub metrics_only: bool,
    /// The auth state as published by the owner, and the token settings.
    pub auth: std::sync::Arc<crate::auth::AuthShared>,
}

/// The CPUs this process may run on (its affinity mask, as `taskset` or a container's cpuset
/// sets it), in ascending order: shard `i` is pinned to the `i`-th, so a server given CPUs
/// 4-5 runs on 4 and 5, not on 0 and 1.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    let cpus: Vec<usize> = if got == 0 {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `c` is below CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..n).collect();
    }
    cpus
}

/// Starts every shard and blocks until they stop. They run until the process is killed:
/// nothing is acknowledged before it is durable, so SIGTERM's (or SIGKILL's) default action
/// is a correct shutdown.
pub fn run(opts: ServerOptions) -> std::io::Result<()> {
    metrics::METRICS.set_extensive(opts.metrics_extensive);
    let shards = opts.shards.max(1);
    let cpus = allowed_cpus();
    let mut handles = Vec::with_capacity(shards);
    // Each shard reports whether its listeners are bound; `run` fails if any could not bind.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    // Before any shard listens: another server on these ports is refused (see
    // `conn::refuse_if_taken`); peer addresses are checked where they are listened on.
    for (addr, what) in opts
        .client_addrs
        .iter()
        .map(|(a, _)| (a, "client"))
        .chain(opts.metrics_addrs.iter().map(|a| (a, "metrics")))
    {
        conn::refuse_if_taken(*addr).map_err(|e| {
            std::io::Error::other(format!("cannot listen on {what} address {addr}: {e}"))
        })?;
    }
    let handovers = balance::mesh(shards, opts.connection_placement);
    for (id, (links, handover)) in shard::mesh(shards).into_iter().zip(handovers).enumerate() {
        let opts = opts.clone();
        let ready = ready_tx.clone();
        let placement = if shards <= cpus.len() {
            Placement::Fixed(cpus[id])
        } else {
            Placement::Unbound
        };
        let mut builder = LocalExecutorBuilder::new(placement).name(&format!("shard-{id}"));
        if opts.spin_before_park_us > 0 {
            builder = builder
                .spin_before_park(std::time::Duration::from_micros(opts.spin_before_park_us));
        }
        let handle = builder.spawn(move || async move {
            metrics::set_shard(id);
            // Before the state: the owner's recovery may take a while, and every shard's
            // channel ends wait for the others'.
            let (balance, handed) = handover.connect(id).await;
            let state_opts = shard::StateOptions {
                kv: opts.kv.clone(),
                log_dir: opts.log_dir.clone(),
                segment_bytes: opts.segment_bytes,
                batch_wait_us: opts.batch_wait_us,
                auto_compaction: opts.auto_compaction,
                cluster: opts.cluster.clone(),
            };
            let (owner, notifier) = match links.connect(state_opts).await {
                Ok(o) => o,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let ctx = Rc::new(ShardCtx {
                max_request_bytes: opts.max_request_bytes,
                owner,
                notifier,
                watch_progress_notify_secs: opts.watch_progress_notify_secs,
                election: opts
                    .cluster
                    .as_ref()
                    .map_or(std::time::Duration::from_secs(1), |c| c.election),
                gateway: opts.gateway,
                metrics_only: false,
                auth: opts.kv.auth.clone(),
            });
            let metrics_ctx = Rc::new(ShardCtx {
                max_request_bytes: ctx.max_request_bytes,
                owner: ctx.owner.clone(),
                notifier: ctx.notifier.clone(),
                watch_progress_notify_secs: ctx.watch_progress_notify_secs,
                election: ctx.election,
                gateway: false,
                metrics_only: true,
                auth: ctx.auth.clone(),
            });
            let mut listeners = Vec::new();
            let mut client_tls = Vec::new();
            for (addr, tls) in &opts.client_addrs {
                let acceptor = match (tls, &opts.tls) {
                    (true, Some(c)) => Some(c.clone()),
                    (true, None) => {
                        let msg = format!("https client address {addr} without TLS set up");
                        let _ = ready.send(Err(std::io::Error::other(msg)));
                        return;
                    }
                    (false, _) => None,
                };
                match conn::listen(*addr) {
                    Ok(l) => listeners.push(l),
                    Err(e) => {
                        let msg = format!("cannot listen on client address {addr}: {e}");
                        let _ = ready.send(Err(std::io::Error::other(msg)));
                        return;
                    }
                }
                client_tls.push(acceptor);
            }
            // The metrics URLs are served by the first shard alone.
            let mut metrics_listeners = Vec::new();
            for addr in opts.metrics_addrs.iter().filter(|_| id == 0) {
                match conn::listen(*addr) {
                    Ok(l) => metrics_listeners.push(l),
                    Err(e) => {
                        let msg = format!("cannot listen on metrics address {addr}: {e}");
                        let _ = ready.send(Err(std::io::Error::other(msg)));
                        return;
                    }
                }
            }
            let _ = ready.send(Ok(()));
            let client_tls: Rc<[_]> = client_tls.into();
            for rx in handed {
                let take = conn::take_handed(rx, ctx.clone(), client_tls.clone(), balance.clone());
                glommio::spawn_local(take).detach();
            }
            let accepts: Vec<_> = listeners
                .into_iter()
                .enumerate()
                .map(|(i, l)| {
                    let (tls, placement) = (client_tls[i].clone(), Some((balance.clone(), i)));
                    glommio::spawn_local(conn::accept_loop(l, ctx.clone(), tls, placement))
                })
                .chain(metrics_listeners.into_iter().map(|l| {
                    glommio::spawn_local(conn::accept_loop(l, metrics_ctx.clone(), None, None))
                }))
                .collect();
            for a in accepts {
                a.await;
            }
        })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("a shard stopped while starting")),
        }
    }
    tracing::info!(
        addresses = ?opts.client_addrs,
        shards,
        "ready to serve client requests"
    );
    for h in handles {
        h.join()
            .map_err(|e| std::io::Error::other(format!("shard failed: {e:?}")))?;
    }
    Ok(())
}
