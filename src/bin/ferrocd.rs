//! The ferrocd server: reads etcd's configuration, then runs the shards.

use ferrocd::config::{Config, HELP};
use ferrocd::kv::{Identity, KvOptions, ETCD_API_VERSION};
use ferrocd::server::{self, ClusterOptions, MemberInfo, ServerOptions};

/// mimalloc rather than glibc's malloc: glibc gives each shard thread an arena that grows a
/// page at a time with mprotect (taking the process's mmap lock while the other shards fault
/// pages in), and its malloc/free took 7-9% of a put's server CPU; with mimalloc a put costs
/// 1.4-5.3 us less server CPU and a txn-put about 7 us less (tuning/results/2026-11-26-allocator.md).
/// Built without asking for transparent huge pages (`no_thp`): with them a restart zeroed
/// 2 MiB pages as it built the index. A host whose THP mode is `always` may still give
/// them (only `madvise` was measured).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `ferrocd --help | head` ends quietly (std's `print!` panics when the reader is gone).
    if args.iter().any(|a| a == "-h" || a == "--help") {
        ferrocd::out!("{HELP}");
        return;
    }
    if args.iter().any(|a| a == "--version") {
        ferrocd::outln!(
            "ferrocd Version: {}\netcd API Version: {ETCD_API_VERSION}",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    let cfg = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(cfg) {
        eprintln!("ferrocd: {e}");
        std::process::exit(1);
    }
}

fn run(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    let level = match cfg.log_level.as_str() {
        "debug" => tracing::Level::DEBUG,
        "warn" => tracing::Level::WARN,
        "error" | "panic" | "fatal" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if !cfg.ignored_flags.is_empty() {
        tracing::warn!(
            flags = ?cfg.ignored_flags,
            "--config-file is set: other flags are ignored, as etcd does"
        );
    }
    create_data_dir(&cfg.data_dir)?;
    let opts = ServerOptions {
        client_addrs: cfg.client_url_is_tls()?,
        tls: client_tls(&cfg)?,
        metrics_addrs: cfg.metrics_socket_addrs()?,
        gateway: cfg.enable_grpc_gateway,
        metrics_extensive: cfg.metrics_extensive,
        shards: cfg.shards,
        max_request_bytes: cfg.max_request_bytes,
        kv: KvOptions {
            identity: Identity {
                cluster_id: cfg.cluster_id(),
                member_id: cfg.member_id(),
                name: cfg.name.clone(),
                peer_urls: cfg.initial_advertise_peer_urls.clone(),
                client_urls: cfg.advertise_client_urls.clone(),
            },
            max_txn_ops: cfg.max_txn_ops,
            quota_bytes: cfg.quota_backend_bytes,
            auth: std::sync::Arc::new(ferrocd::auth::AuthShared::new(
                ferrocd::auth::TokenKind::from_spec(&cfg.auth_token)?,
                std::time::Duration::from_secs(cfg.auth_token_ttl_secs),
                cfg.bcrypt_cost,
                cfg.enable_authorization,
            )),
            checkpoint_min_bytes: cfg.checkpoint_min_bytes,
            read_step_keys: cfg.read_step_keys,
        },
        log_dir: Some(
            std::path::Path::new(&cfg.data_dir)
                .join("member")
                .join("log"),
        ),
        segment_bytes: cfg.log_segment_bytes,
        batch_wait_us: cfg.batch_wait_us,
        spin_before_park_us: cfg.spin_before_park_us,
        connection_placement: cfg.connection_placement,
        auto_compaction: cfg.auto_compaction,
        watch_progress_notify_secs: cfg.watch_progress_notify_secs,
        cluster: cluster(&cfg)?,
    };
    tracing::info!(
        name = %cfg.name,
        member_id = %format!("{:x}", opts.kv.identity.member_id),
        cluster_id = %format!("{:x}", opts.kv.identity.cluster_id),
        "starting ferrocd {}",
        env!("CARGO_PKG_VERSION")
    );
    if cfg.enable_authorization {
        tracing::warn!(
            "enable-authorization: until auth is enabled (a root user with the root role, then \
             'auth enable'), every call that reads or writes keys is refused"
        );
    }
    server::run(opts)?;
    Ok(())
}

/// The cluster this member belongs to. A member alone in its initial cluster runs without
/// Raft until its first membership change; a peer setting it cannot use then only warns (it
/// never used them before), and that member cannot grow.
fn cluster(cfg: &Config) -> Result<Option<ClusterOptions>, Box<dyn std::error::Error>> {
    match cluster_options(cfg) {
        Ok(c) => Ok(Some(c)),
        Err(e) if cfg.initial_cluster.len() < 2 => {
            tracing::warn!(error = %e, "peer settings unusable: this member cannot add members");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn cluster_options(cfg: &Config) -> Result<ClusterOptions, Box<dyn std::error::Error>> {
    let https = cfg
        .listen_peer_urls
        .iter()
        .chain(cfg.initial_cluster.values().flatten())
        .any(|u| u.starts_with("https://"));
    if https && cfg.peer_tls.is_empty() {
        return Err(
            "https:// peer URLs need --peer-cert-file, --peer-key-file and \
             --peer-trusted-ca-file"
                .into(),
        );
    }
    // As etcd: certificates with http:// peer URLs are ignored, with a warning.
    let peer_tls = if cfg.peer_tls.is_empty() {
        None
    } else if !https {
        tracing::warn!(
            "peer URLs are http:// while peer certificates are given: the peer links run plain \
             TCP (etcd ignores the certificates too)"
        );
        None
    } else {
        Some(server::tls::peer_config(&cfg.peer_tls).map_err(|e| format!("peer TLS: {e}"))?)
    };
    let mut listen_peer = Vec::new();
    for u in &cfg.listen_peer_urls {
        listen_peer.push(
            ferrocd::server::peer_addr(u).map_err(|e| format!("listen-peer-urls: {u}: {e}"))?,
        );
    }
    let members = cfg
        .members()
        .into_iter()
        .map(|(id, name, peer_urls)| MemberInfo {
            id,
            name,
            peer_urls,
        })
        .collect();
    Ok(ClusterOptions {
        members,
        listen_peer,
        heartbeat: std::time::Duration::from_millis(cfg.heartbeat_ms),
        election: std::time::Duration::from_millis(cfg.election_ms),
        token: cfg.initial_cluster_token.clone(),
        join: cfg.initial_cluster_state == "existing",
        max_inflight_msgs: cfg.max_inflight_msgs,
        peer_tls,
        snapshot_catchup_entries: cfg.snapshot_catchup_entries,
    })
}

fn create_data_dir(dir: &str) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot create data dir {dir}: {e}")))
}

/// The TLS setup of the client URLs: built when a certificate is given (an error names the
/// file); an https URL needs one (the configuration checks that), an http URL ignores it, as
/// etcd does, with a warning.
fn client_tls(
    cfg: &Config,
) -> Result<Option<std::sync::Arc<server::tls::ClientTls>>, Box<dyn std::error::Error>> {
    if !cfg.peer_tls.is_empty() {
        // Checked now, so that a bad file is found at start, not when peers connect (a single
        // member has no peer links to use it on).
        server::tls::server_config(&cfg.peer_tls).map_err(|e| format!("peer TLS: {e}"))?;
    }
    if cfg.client_tls.is_empty() {
        return Ok(None);
    }
    let config =
        server::tls::client_tls(&cfg.client_tls).map_err(|e| format!("client TLS: {e}"))?;
    for u in cfg
        .listen_client_urls
        .iter()
        .filter(|u| u.starts_with("http://"))
    {
        tracing::warn!(
            url = %u,
            "scheme is http while a certificate and key are given: this URL serves plain TCP"
        );
    }
    Ok(Some(config))
}
