//! etcd's configuration: the keys of its YAML config file, and the flags of the same names.
//!
//! Flags and YAML go through one path: flags are turned into the same key/value map a YAML
//! file gives, and one deserializer (which refuses unknown keys) reads both. As etcd does, when
//! `--config-file` is given every other flag is ignored (with a warning).
//!
//! Keys etcd has that ferrocd does not implement yet are recognised and refused at start with a
//! message naming them: a setting is never silently ignored.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use crate::compactor::AutoCompaction;
use crate::limits::{MAX_REQUEST_BYTES_DEFAULT, MAX_TXN_OPS_DEFAULT};

/// A configuration error; the message names the key or value at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("ferrocd: {0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Boolean flags, which (as Go's) may be given without a value: `--client-cert-auth`.
const BOOL_FLAGS: &[&str] = &[
    "client-cert-auth",
    "peer-client-cert-auth",
    "enable-authorization",
    "enable-v2",
    "enable-grpc-gateway",
    "auto-tls",
    "peer-auto-tls",
    "enable-pprof",
    "strict-reconfig-check",
    "force-new-cluster",
    "pre-vote",
    "unsafe-no-fsync",
    "socket-reuse-port",
    "socket-reuse-address",
    "experimental-initial-corrupt-check",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-v2v3",
    "experimental-memory-mlock",
    "experimental-peer-skip-client-san-verification",
];

/// Keys etcd accepts that later work implements; setting one is refused for now.
pub const NOT_IMPLEMENTED: &[&str] = &[
    "wal-dir",
    "snapshot-count",
    "initial-election-tick-advance",
    "max-snapshots",
    "max-wals",
    "cors",
    "backend-batch-limit",
    "backend-batch-interval",
    "backend-bbolt-freelist-type",
    "grpc-keepalive-min-time",
    "grpc-keepalive-interval",
    "grpc-keepalive-timeout",
    "listen-client-http-urls",
    "discovery",
    "discovery-fallback",
    "discovery-proxy",
    "discovery-srv",
    "discovery-srv-name",
    "strict-reconfig-check",
    "enable-pprof",
    "proxy",
    "proxy-failure-wait",
    "proxy-refresh-interval",
    "proxy-dial-timeout",
    "proxy-write-timeout",
    "proxy-read-timeout",
    "client-crl-file",
    "auto-tls",
    "peer-auto-tls",
    "peer-crl-file",
    "cipher-suites",
    "tls-min-version",
    "tls-max-version",
    "enable-log-rotation",
    "log-rotation-config-json",
    "self-signed-cert-validity",
    "force-new-cluster",
    "unsafe-no-fsync",
    "socket-reuse-port",
    "socket-reuse-address",
    "pre-vote",
    "max-learners",
    "experimental-initial-corrupt-check",
    "experimental-corrupt-check-time",
    "experimental-enable-v2v3",
    "experimental-enable-lease-checkpoint",
    "experimental-compaction-batch-limit",
    "experimental-peer-skip-client-san-verification",
    "experimental-warning-apply-duration",
    "experimental-memory-mlock",
    "experimental-txn-mode-write-with-shared-buffer",
    "experimental-bootstrap-defrag-threshold-megabytes",
];

/// Keys read now (the YAML spelling; flags use the same names).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    name: Option<String>,
    data_dir: Option<String>,
    listen_client_urls: Option<String>,
    advertise_client_urls: Option<String>,
    listen_peer_urls: Option<String>,
    initial_advertise_peer_urls: Option<String>,
    initial_cluster: Option<String>,
    initial_cluster_token: Option<String>,
    initial_cluster_state: Option<String>,
    /// Milliseconds (etcd's units).
    heartbeat_interval: Option<u64>,
    election_timeout: Option<u64>,
    max_request_bytes: Option<u64>,
    max_txn_ops: Option<u64>,
    log_level: Option<String>,
    logger: Option<String>,
    log_outputs: Option<String>,
    enable_v2: Option<bool>,
    /// ferrocd's own: executors (one per core).
    shards: Option<usize>,
    /// ferrocd's own: microseconds to wait for more requests before flushing a small batch.
    batch_wait_us: Option<u64>,
    /// ferrocd's own: microseconds an idle executor polls before it sleeps.
    spin_before_park_us: Option<u64>,
    /// ferrocd's own: which shard serves a client connection.
    connection_placement: Option<String>,
    /// ferrocd's own: append messages in flight to one follower.
    max_inflight_msgs: Option<usize>,
    /// ferrocd's own: the log grows at least this much between checkpoints.
    checkpoint_min_bytes: Option<u64>,
    /// ferrocd's own: size of a log segment file.
    log_segment_bytes: Option<u64>,
    /// ferrocd's own: keys a long Range walks per step.
    read_step_keys: Option<u64>,
    /// Entries a member keeps before its checkpoint for followers slightly behind.
    experimental_snapshot_catchup_entries: Option<u64>,
    /// A Go duration ("10m", "1m30s").
    experimental_watch_progress_notify_interval: Option<String>,
    auto_compaction_mode: Option<String>,
    quota_backend_bytes: Option<i64>,
    /// A number (hours, or revisions in revision mode) or a Go duration; YAML may give either.
    auto_compaction_retention: Option<Value>,
    listen_metrics_urls: Option<String>,
    enable_grpc_gateway: Option<bool>,
    metrics: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    trusted_ca_file: Option<String>,
    client_cert_auth: Option<bool>,
    peer_cert_file: Option<String>,
    peer_key_file: Option<String>,
    peer_trusted_ca_file: Option<String>,
    peer_client_cert_auth: Option<bool>,
    /// The config file's sections (etcd's YAML spelling of the flags above).
    client_transport_security: Option<TlsSection>,
    peer_transport_security: Option<TlsSection>,
    /// `simple`, `jwt,...`, or a bare shared secret (HMAC-signed JWTs; docs/auth.md).
    auth_token: Option<String>,
    /// Seconds a simple token lives after its last use.
    auth_token_ttl: Option<i64>,
    bcrypt_cost: Option<i64>,
    /// Not an etcd flag: the seed's. ferrocd serves no keys until auth is enabled.
    enable_authorization: Option<bool>,
}

/// A `client-transport-security` or `peer-transport-security` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TlsSection {
    cert_file: Option<String>,
    key_file: Option<String>,
    trusted_ca_file: Option<String>,
    client_cert_auth: Option<bool>,
    auto_tls: Option<bool>,
}

/// TLS settings of one side (client or peer), as etcd's `TLSInfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub trusted_ca_file: Option<String>,
    pub client_cert_auth: bool,
}

impl TlsInfo {
    /// No certificate given: plain TCP.
    pub fn is_empty(&self) -> bool {
        self.cert_file.is_none() && self.key_file.is_none()
    }

    fn resolve(
        side: &str,
        flags: [Option<String>; 3],
        cert_auth: Option<bool>,
        section: Option<TlsSection>,
    ) -> Result<TlsInfo, ConfigError> {
        let [cert_file, key_file, trusted_ca_file] = flags;
        let section = section.unwrap_or_default();
        if section.auto_tls == Some(true) {
            return err(format!(
                "{side}-transport-security: auto-tls is recognised but not implemented yet"
            ));
        }
        let info = TlsInfo {
            cert_file: section.cert_file.or(cert_file),
            key_file: section.key_file.or(key_file),
            trusted_ca_file: section.trusted_ca_file.or(trusted_ca_file),
            client_cert_auth: section.client_cert_auth.or(cert_auth).unwrap_or(false),
        };
        if info.cert_file.is_some() != info.key_file.is_some() {
            return err(format!(
                "{side} TLS needs both a certificate and its key (cert-file and key-file)"
            ));
        }
        Ok(info)
    }
}

/// Which shard serves a client connection (`--connection-placement`; src/server/balance.rs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConnectionPlacement {
    /// The shard that holds the state while it is not busy; then the fewest connections.
    #[default]
    OwnerFirst,
    /// The fewest connections, ties to the lowest shard.
    Spread,
    /// The fewest connections among the shards that do not hold the state (with one shard,
    /// that one): every request crosses between shards.
    Others,
}

/// The resolved configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub data_dir: String,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// name -> peer URLs, sorted.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub initial_cluster_token: String,
    pub initial_cluster_state: String,
    /// `--heartbeat-interval` and `--election-timeout`, in milliseconds.
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub log_level: String,
    pub shards: usize,
    /// Microseconds the log waits for more requests before flushing a small batch (0: never).
    pub batch_wait_us: u64,
    /// Microseconds an idle executor keeps polling before it sleeps (0: sleeps at once).
    pub spin_before_park_us: u64,
    /// `--connection-placement`.
    pub connection_placement: ConnectionPlacement,
    /// `--max-inflight-msgs`: append messages in flight to one follower (pipelining).
    pub max_inflight_msgs: usize,
    /// Seconds between progress notifications to watchers that asked for them.
    pub watch_progress_notify_secs: u64,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`.
    pub auto_compaction: AutoCompaction,
    /// `--quota-backend-bytes`, as etcd reads it: 0 (default) is 2 GiB, negative is none.
    pub quota_backend_bytes: Option<u64>,
    /// Flags ignored because --config-file was given (etcd warns about them too).
    pub ignored_flags: Vec<String>,
    /// `--listen-metrics-urls`: extra addresses serving only `/metrics` and the health
    /// endpoints (none by default).
    pub listen_metrics_urls: Vec<String>,
    /// `--enable-grpc-gateway` (default true): the JSON gateway on the client port.
    pub enable_grpc_gateway: bool,
    /// `--metrics extensive` (default basic): also export per-method handling time
    /// histograms (`grpc_server_handling_seconds`).
    pub metrics_extensive: bool,
    /// `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, or the
    /// `client-transport-security` section: TLS on https:// client URLs.
    pub client_tls: TlsInfo,
    /// The `peer-*` equivalents, for the peer links of a cluster.
    pub peer_tls: TlsInfo,
    /// `--auth-token` as given (read by `auth::TokenKind::from_spec`).
    pub auth_token: String,
    /// `--auth-token-ttl`, in seconds (300 when not positive, as etcd).
    pub auth_token_ttl_secs: u64,
    /// `--bcrypt-cost` (etcd's default 10; outside 4..=31 the default, with a warning).
    pub bcrypt_cost: u32,
    /// `--enable-authorization` (the seed's key): refuse every key until auth is enabled.
    pub enable_authorization: bool,
    /// `--checkpoint-min-bytes` (ferrocd's own; 0: only Defragment takes one).
    pub checkpoint_min_bytes: u64,
    /// `--log-segment-bytes` (ferrocd's own; at least 1 MiB, default 64 MiB).
    pub log_segment_bytes: u64,
    /// `--read-step-keys` (ferrocd's own; at least 1, default 10,000).
    pub read_step_keys: usize,
    /// `--experimental-snapshot-catchup-entries` (etcd 3.5's, default 5000): entries a member
    /// keeps before its newest checkpoint, so that a follower slightly behind catches up from
    /// entries rather than a snapshot.
    pub snapshot_catchup_entries: u64,
}

/// What `--help` prints.
pub const HELP: &str = "\
usage: ferrocd [flags]

Starts a ferrocd member. Flags have etcd's names and meanings; the same names are the keys of
the YAML file given with --config-file. When --config-file is given, other flags are ignored
(as etcd does).

  --config-file FILE                 YAML configuration file with etcd's keys
  --name NAME                        member name (default \"default\")
  --data-dir DIR                     data directory (default \"${name}.ferrocd\")
  --listen-client-urls URLS          client URLs to listen on (default http://localhost:2379)
  --advertise-client-urls URLS       client URLs advertised to the cluster (default http://localhost:2379)
  --listen-peer-urls URLS            peer URLs to listen on (default http://localhost:2380)
  --initial-advertise-peer-urls URLS peer URLs advertised to the cluster (default http://localhost:2380)
  --initial-cluster NAME=URL,...     initial cluster configuration (default \"default=http://localhost:2380\")
  --initial-cluster-token TOKEN      initial cluster token (default \"etcd-cluster\")
  --initial-cluster-state STATE      new or existing (default \"new\")
  --heartbeat-interval MS            time between leader heartbeats (default 100)
  --election-timeout MS              time before a follower without a leader campaigns (default 1000)
  --max-request-bytes N              largest client request accepted (default 1572864)
  --max-txn-ops N                    most operations in one txn (default 128)
  --log-level LEVEL                  debug, info, warn or error (default info)
  --shards N                         executors, one per core (default: the cores the process
                                     may run on; shard i is pinned to the i-th of them)
  --max-inflight-msgs N              append messages in flight to one follower (default 512)
  --batch-wait-us N                  wait up to N us for more requests before flushing a small
                                     batch to the log (default 0: flush at once; at most 10000)
  --spin-before-park-us N            an idle executor polls for N us before it sleeps (default
                                     0: sleeps at once; at most 10000)
  --connection-placement P           which shard serves a client connection: owner-first (default:
                                     the shard holding the state while it is not busy, then the
                                     fewest connections), spread (the fewest connections) or
                                     others (the fewest among the shards not holding the state)
  --experimental-watch-progress-notify-interval DURATION
                                     progress notifications to watchers that ask for them
                                     (default 10m; whole seconds, at least 1s)
  --auto-compaction-mode MODE        periodic or revision (default periodic)
  --auto-compaction-retention R      periodic: a duration (\"1h\", \"30m\") or a number of hours;
                                     revision: a number of revisions; 0 (default) turns it off
  --quota-backend-bytes N            database size that raises the NOSPACE alarm (default 0:
                                     2 GiB, as etcd; negative: no quota). Counted as bytes written
                                     to the log.
  --auth-token SPEC                  simple (default), jwt,priv-key=F,pub-key=F,sign-method=ALG
                                     [,ttl=5m] as etcd, or a bare shared secret (at least 16
                                     bytes): HS256 JWTs signed with it (docs/auth.md)
  --auth-token-ttl SECONDS           life of a simple token after its last use (default 300)
  --bcrypt-cost N                    bcrypt cost of stored passwords (default 10)
  --enable-authorization             refuse every call that reads or writes keys until auth
                                     is enabled (not an etcd flag; docs/auth.md)
  --checkpoint-min-bytes N           ferrocd's own: a checkpoint of the state is written once the
                                     log grew by this much and by the live data since the last
                                     (default 64 MiB); the log before it is then deleted. 0:
                                     only the Defragment call takes one
  --read-step-keys N                 ferrocd's own: a Range over more keys than this is walked
                                     N keys at a time between the batches of the apply loop
                                     (or turns of the Raft loop), at the revision it began
                                     (default 10000, at least 1)
  --log-segment-bytes N              ferrocd's own: size of a log segment file (default 64 MiB,
                                     at least 1 MiB); the log is released a segment at a time
  --experimental-snapshot-catchup-entries N
                                     entries a cluster member keeps before its newest checkpoint
                                     for followers slightly behind (default 5000); a follower
                                     further behind receives the checkpoint as a Raft snapshot
  --version                          print the version and exit
  -h, --help                         print this help

etcd keys that ferrocd recognises but does not implement yet are refused at start, naming the
key (see ARCHITECTURE.md, state of the build).
";

impl Config {
    /// Reads the arguments (without the program name).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Config, ConfigError> {
        let mut flags = Mapping::new();
        let mut config_file = None;
        let mut order = Vec::new();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                return err(format!("unexpected argument {arg:?}; see 'ferrocd --help'"));
            };
            let (key, value) = match flag.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                // Go's boolean flags may stand alone.
                None if BOOL_FLAGS.contains(&flag) => (flag.to_string(), "true".to_string()),
                None => {
                    let v = it
                        .next()
                        .ok_or_else(|| ConfigError(format!("flag --{flag} needs a value")))?;
                    (flag.to_string(), v)
                }
            };
            if key == "config-file" {
                config_file = Some(value);
                continue;
            }
            order.push(key.clone());
            flags.insert(Value::String(key), scalar(&value));
        }
        let (map, ignored) = match config_file {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError(format!("cannot read config file {path}: {e}")))?;
                let v: Value = serde_yaml_ng::from_str(&text)
                    .map_err(|e| ConfigError(format!("config file {path}: {e}")))?;
                match v {
                    Value::Mapping(m) => (m, order),
                    Value::Null => (Mapping::new(), order),
                    _ => return err(format!("config file {path}: not a mapping of keys")),
                }
            }
            None => (flags, Vec::new()),
        };
        Self::from_map(map, ignored)
    }

    fn from_map(map: Mapping, ignored_flags: Vec<String>) -> Result<Config, ConfigError> {
        for key in map.keys() {
            let k = key.as_str().unwrap_or_default();
            if NOT_IMPLEMENTED.contains(&k) {
                return err(format!("{k} is recognised but not implemented yet"));
            }
        }
        let raw: Raw = serde_yaml_ng::from_value(Value::Mapping(map)).map_err(|e| {
            let msg = e.to_string();
            ConfigError(match msg.strip_prefix("unknown field `") {
                Some(rest) => format!(
                    "unknown configuration key or flag '{}'; see 'ferrocd --help'",
                    rest.split('`').next().unwrap_or(rest)
                ),
                None => format!("invalid configuration: {msg}"),
            })
        })?;
        Self::resolve(raw, ignored_flags)
    }

    fn resolve(raw: Raw, ignored_flags: Vec<String>) -> Result<Config, ConfigError> {
        let name = raw.name.unwrap_or_else(|| "default".into());
        let urls =
            |key: &str, v: Option<String>, default: &str| -> Result<Vec<String>, ConfigError> {
                let list = v.unwrap_or_else(|| default.to_string());
                let list: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
                for u in &list {
                    check_url(key, u)?;
                }
                Ok(list)
            };
        let listen_client_urls = urls(
            "listen-client-urls",
            raw.listen_client_urls,
            "http://localhost:2379",
        )?;
        let advertise_client_urls = urls(
            "advertise-client-urls",
            raw.advertise_client_urls,
            "http://localhost:2379",
        )?;
        let listen_peer_urls = urls(
            "listen-peer-urls",
            raw.listen_peer_urls,
            "http://localhost:2380",
        )?;
        let initial_advertise_peer_urls = urls(
            "initial-advertise-peer-urls",
            raw.initial_advertise_peer_urls,
            "http://localhost:2380",
        )?;
        let listen_metrics_urls = match raw.listen_metrics_urls.as_deref() {
            None | Some("") => Vec::new(),
            Some(v) => urls("listen-metrics-urls", Some(v.to_string()), "")?,
        };
        let client_tls = TlsInfo::resolve(
            "client",
            [raw.cert_file, raw.key_file, raw.trusted_ca_file],
            raw.client_cert_auth,
            raw.client_transport_security,
        )?;
        let peer_tls = TlsInfo::resolve(
            "peer",
            [
                raw.peer_cert_file,
                raw.peer_key_file,
                raw.peer_trusted_ca_file,
            ],
            raw.peer_client_cert_auth,
            raw.peer_transport_security,
        )?;
        for u in listen_client_urls.iter().chain(&listen_metrics_urls) {
            if u.starts_with("https://") && client_tls.is_empty() {
                return err(format!(
                    "{u}: an https URL needs a certificate and key (--cert-file, --key-file)"
                ));
            }
        }
        for u in &listen_peer_urls {
            if u.starts_with("https://") && peer_tls.is_empty() {
                return err(format!(
                    "{u}: an https URL needs a certificate and key (--peer-cert-file, --peer-key-file)"
                ));
            }
        }
        let initial_cluster = match raw.initial_cluster {
            Some(s) => parse_cluster(&s)?,
            None => BTreeMap::from([(name.clone(), sorted(initial_advertise_peer_urls.clone()))]),
        };
        match initial_cluster.get(&name) {
            None => {
                return err(format!(
                    "couldn't find local name {name:?} in the initial cluster configuration"
                ))
            }
            Some(urls) if *urls != sorted(initial_advertise_peer_urls.clone()) => {
                return err(format!(
                    "--initial-cluster has {name}={} but --initial-advertise-peer-urls is {}",
                    urls.join(","),
                    initial_advertise_peer_urls.join(",")
                ))
            }
            Some(_) => {}
        }
        let state = raw.initial_cluster_state.unwrap_or_else(|| "new".into());
        if state != "new" && state != "existing" {
            return err(format!(
                "initial-cluster-state must be new or existing, not {state:?}"
            ));
        }
        if state == "existing" && initial_cluster.len() < 2 {
            return err("initial-cluster-state existing: --initial-cluster must list the members of the cluster to join");
        }
        let heartbeat_ms = raw.heartbeat_interval.unwrap_or(100);
        let election_ms = raw.election_timeout.unwrap_or(1000);
        // etcd's checks, with its messages.
        if heartbeat_ms == 0 {
            return err("--heartbeat-interval must be at least 1 (milliseconds)");
        }
        if election_ms < 5 * heartbeat_ms {
            return err(format!(
                "--election-timeout[{election_ms}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat_ms}ms]"
            ));
        }
        if election_ms > 50_000 {
            return err(format!(
                "--election-timeout[{election_ms}ms] is too long, and should be set less than 50000ms"
            ));
        }
        let log_level = raw.log_level.unwrap_or_else(|| "info".into());
        if !["debug", "info", "warn", "error", "panic", "fatal"].contains(&log_level.as_str()) {
            return err(format!("unknown log-level {log_level:?}"));
        }
        if raw.logger.as_deref().is_some_and(|l| l != "zap") {
            return err("logger: only \"zap\" (structured logs to stderr) is supported");
        }
        if raw
            .log_outputs
            .as_deref()
            .is_some_and(|l| l != "stderr" && l != "default")
        {
            return err("log-outputs: only stderr is supported yet");
        }
        if raw.enable_v2 == Some(true) {
            return err("enable-v2: the v2 API is not supported");
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = raw.shards.unwrap_or(cores);
        if shards == 0 || shards > 1024 {
            return err(format!("shards must be between 1 and 1024, not {shards}"));
        }
        Ok(Config {
            data_dir: raw.data_dir.unwrap_or_else(|| format!("{name}.ferrocd")),
            name,
            listen_client_urls,
            advertise_client_urls,
            listen_peer_urls,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_token: raw
                .initial_cluster_token
                .unwrap_or_else(|| "etcd-cluster".into()),
            initial_cluster_state: state,
            heartbeat_ms,
            election_ms,
            max_request_bytes: raw
                .max_request_bytes
                .map_or(MAX_REQUEST_BYTES_DEFAULT, |v| v as usize),
            max_txn_ops: raw.max_txn_ops.map_or(MAX_TXN_OPS_DEFAULT, |v| v as usize),
            log_level,
            shards,
            batch_wait_us: raw.batch_wait_us.unwrap_or(0).min(10_000),
            spin_before_park_us: raw.spin_before_park_us.unwrap_or(0).min(10_000),
            connection_placement: match raw.connection_placement.as_deref() {
                None | Some("owner-first") => ConnectionPlacement::OwnerFirst,
                Some("spread") => ConnectionPlacement::Spread,
                Some("others") => ConnectionPlacement::Others,
                Some(other) => {
                    return err(format!(
                        "connection-placement must be owner-first, spread or others, not {other:?}"
                    ))
                }
            },
            max_inflight_msgs: match raw.max_inflight_msgs {
                None => crate::limits::RAFT_INFLIGHT_MSGS,
                Some(n) if (1..=65_536).contains(&n) => n,
                Some(n) => {
                    return err(format!(
                        "max-inflight-msgs must be between 1 and 65536, not {n}"
                    ))
                }
            },
            watch_progress_notify_secs: match &raw.experimental_watch_progress_notify_interval {
                None => 600,
                Some(d) => {
                    let secs = parse_go_duration(d)
                        .ok_or_else(|| {
                            ConfigError(format!(
                                "experimental-watch-progress-notify-interval: invalid duration {d:?}"
                            ))
                        })?
                        .as_secs();
                    if secs == 0 {
                        return err(
                            "experimental-watch-progress-notify-interval: must be at least 1s",
                        );
                    }
                    secs
                }
            },
            quota_backend_bytes: match raw.quota_backend_bytes.unwrap_or(0) {
                0 => Some(QUOTA_BACKEND_BYTES_DEFAULT),
                q if q < 0 => None,
                q => Some(q as u64),
            },
            auto_compaction: auto_compaction(
                raw.auto_compaction_mode.as_deref(),
                raw.auto_compaction_retention.as_ref(),
            )?,
            ignored_flags,
            listen_metrics_urls,
            enable_grpc_gateway: raw.enable_grpc_gateway.unwrap_or(true),
            metrics_extensive: match raw.metrics.as_deref() {
                None | Some("basic") => false,
                Some("extensive") => true,
                Some(other) => {
                    return err(format!(
                        "metrics: {other:?} is not basic or extensive (etcd's two levels)"
                    ))
                }
            },
            client_tls,
            peer_tls,
            auth_token: match raw.auth_token {
                None => "simple".into(),
                Some(t) => t,
            },
            auth_token_ttl_secs: match raw.auth_token_ttl {
                Some(t) if t > 0 => t as u64,
                _ => 300,
            },
            bcrypt_cost: match raw.bcrypt_cost {
                None => 10,
                Some(c) if (4..=31).contains(&c) => c as u32,
                Some(c) => {
                    tracing::warn!(cost = c, "bcrypt-cost outside 4..=31: using 10, as etcd");
                    10
                }
            },
            enable_authorization: raw.enable_authorization.unwrap_or(false),
            checkpoint_min_bytes: raw
                .checkpoint_min_bytes
                .unwrap_or(crate::limits::CHECKPOINT_MIN_BYTES_DEFAULT),
            read_step_keys: raw
                .read_step_keys
                .map_or(crate::limits::READ_STEP_KEYS_DEFAULT, |n| n.max(1) as usize),
            log_segment_bytes: raw
                .log_segment_bytes
                .unwrap_or(crate::log::SEGMENT_BYTES_DEFAULT)
                .max(1 << 20),
            snapshot_catchup_entries: raw.experimental_snapshot_catchup_entries.unwrap_or(5000),
        })
    }

    /// The socket addresses of the client listen URLs (`localhost` resolved).
    pub fn client_socket_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        Self::socket_addrs("listen-client-urls", &self.listen_client_urls)
    }

    /// The client listen addresses, each with whether its URL is https.
    pub fn client_url_is_tls(&self) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
        let mut out: Vec<(SocketAddr, bool)> = Vec::new();
        for u in &self.listen_client_urls {
            let tls = u.starts_with("https://");
            for a in Self::socket_addrs("listen-client-urls", std::slice::from_ref(u))? {
                if !out.iter().any(|(b, _)| *b == a) {
                    out.push((a, tls));
                }
            }
        }
        Ok(out)
    }

    /// The socket addresses of the metrics listen URLs.
    pub fn metrics_socket_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        Self::socket_addrs("listen-metrics-urls", &self.listen_metrics_urls)
    }

    fn socket_addrs(key: &str, urls: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
        let mut out = Vec::new();
        for u in urls {
            let host_port = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
            let host_port = host_port.trim_end_matches('/');
            let addrs = host_port
                .to_socket_addrs()
                .map_err(|e| ConfigError(format!("{key}: {u}: {e}")))?;
            // localhost resolves to both families; etcd listens on the first address.
            let first = addrs
                .into_iter()
                .find(|a| a.is_ipv4())
                .ok_or_else(|| ConfigError(format!("{key}: {u}: no IPv4 address")))?;
            if !out.contains(&first) {
                out.push(first);
            }
        }
        Ok(out)
    }

    /// This member's id, computed as etcd computes it for a new cluster: the first 8 bytes of
    /// SHA-1 over the sorted peer URLs joined, then the cluster token.
    pub fn member_id(&self) -> u64 {
        member_id(
            &self.initial_cluster[&self.name],
            &self.initial_cluster_token,
        )
    }

    /// Every member of the initial cluster: id, name, peer URLs (sorted by name).
    pub fn members(&self) -> Vec<(u64, String, Vec<String>)> {
        self.initial_cluster
            .iter()
            .map(|(name, urls)| {
                (
                    member_id(urls, &self.initial_cluster_token),
                    name.clone(),
                    urls.clone(),
                )
            })
            .collect()
    }

    /// The cluster id, as etcd: SHA-1 over the sorted member ids (big endian).
    pub fn cluster_id(&self) -> u64 {
        let mut ids: Vec<u64> = self
            .initial_cluster
            .values()
            .map(|urls| member_id(urls, &self.initial_cluster_token))
            .collect();
        ids.sort_unstable();
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
        first_8_of_sha1(&bytes)
    }
}

fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut b = sorted(peer_urls.to_vec()).concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    first_8_of_sha1(&b)
}

fn first_8_of_sha1(b: &[u8]) -> u64 {
    let digest = sha1_smol::Sha1::from(b).digest().bytes();
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 has 20 bytes"))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A flag's value as the YAML scalar it would be in a file ("true" is a bool, "5" a number).
fn scalar(v: &str) -> Value {
    match serde_yaml_ng::from_str::<Value>(v) {
        Ok(s @ (Value::Bool(_) | Value::Number(_))) => s,
        _ => Value::String(v.to_string()),
    }
}

fn check_url(key: &str, u: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| err(format!("{key}: invalid URL {u:?}: {why}"));
    let Some((scheme, rest)) = u.split_once("://") else {
        return bad("no scheme (http:// or https://)");
    };
    if scheme != "http" && scheme != "https" {
        return bad("scheme must be http or https");
    }
    let host_port = rest.trim_end_matches('/');
    if host_port.contains('/') {
        return bad("a path is not allowed");
    }
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return bad("no port");
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return bad("host and a numeric port are needed");
    }
    if host.contains('<') || host.contains('>') {
        return bad("placeholder left in the host");
    }
    Ok(())
}

/// A Go duration: one or more numbers with units (ns, us, ms, s, m, h), e.g. "1m30s".
/// etcd's default space quota (2 GiB).
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 << 30;

/// etcd's reading of the auto-compaction keys: an integer retention is hours (periodic) or
/// revisions (revision); otherwise a Go duration (periodic only); 0 turns compaction off.
fn auto_compaction(
    mode: Option<&str>,
    retention: Option<&Value>,
) -> Result<AutoCompaction, ConfigError> {
    let mode = mode.unwrap_or("periodic");
    if mode != "periodic" && mode != "revision" {
        return err(format!(
            "auto-compaction-mode: unknown mode {mode:?} (periodic or revision)"
        ));
    }
    let retention = match retention {
        None => return Ok(AutoCompaction::Off),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(other) => {
            return err(format!(
                "auto-compaction-retention: expected a number or a duration, not {other:?}"
            ))
        }
    };
    if let Ok(n) = retention.parse::<i64>() {
        if n < 0 {
            return err(format!("auto-compaction-retention: {n} is negative"));
        }
        return Ok(match (n, mode) {
            (0, _) => AutoCompaction::Off,
            (n, "revision") => AutoCompaction::Revision(n),
            (h, _) => AutoCompaction::Periodic(std::time::Duration::from_secs(h as u64 * 3600)),
        });
    }
    if mode == "revision" {
        return err(format!(
            "auto-compaction-retention: revision mode takes a number of revisions, not {retention:?}"
        ));
    }
    match parse_go_duration(&retention) {
        Some(d) if d.is_zero() => Ok(AutoCompaction::Off),
        Some(d) if d < std::time::Duration::from_millis(10) => err(format!(
            "auto-compaction-retention: {retention:?} is too short"
        )),
        Some(d) => Ok(AutoCompaction::Periodic(d)),
        None => err(format!(
            "auto-compaction-retention: invalid duration {retention:?}"
        )),
    }
}

pub fn parse_go_duration(s: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .filter(|&n| n > 0)?;
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(n * secs).ok()?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

fn parse_cluster(s: &str) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return err(format!("initial-cluster: {part:?} is not NAME=URL"));
        };
        check_url("initial-cluster", url)?;
        out.entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    for urls in out.values_mut() {
        urls.sort();
    }
    if out.is_empty() {
        return err("initial-cluster is empty");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn auto_compaction_as_etcd_reads_it() {
        use std::time::Duration;
        let ac = |a: &[&str]| args(a).unwrap().auto_compaction;
        assert_eq!(ac(&[]), AutoCompaction::Off);
        assert_eq!(
            ac(&["--auto-compaction-retention", "1h"]),
            AutoCompaction::Periodic(Duration::from_secs(3600))
        );
        assert_eq!(
            ac(&["--auto-compaction-retention", "2"]),
            AutoCompaction::Periodic(Duration::from_secs(7200)),
            "a bare number is hours"
        );
        assert_eq!(
            ac(&[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1000"
            ]),
            AutoCompaction::Revision(1000)
        );
        assert_eq!(
            ac(&["--auto-compaction-retention", "0"]),
            AutoCompaction::Off
        );
        // In YAML, a number or a string (the seed's form).
        let dir = tempfile::tempdir().unwrap();
        for (yaml, want) in [
            (
                "auto-compaction-mode: periodic\nauto-compaction-retention: \"1h\"\n",
                3600,
            ),
            ("auto-compaction-retention: 3\n", 3 * 3600),
        ] {
            let path = dir.path().join("c.yml");
            std::fs::write(&path, yaml).unwrap();
            assert_eq!(
                args(&["--config-file", path.to_str().unwrap()])
                    .unwrap()
                    .auto_compaction,
                AutoCompaction::Periodic(Duration::from_secs(want))
            );
        }
    }

    #[test]
    fn raft_timing_is_checked_as_etcd_checks_it() {
        let c = args(&[]).unwrap();
        assert_eq!((c.heartbeat_ms, c.election_ms), (100, 1000));
        assert_eq!(c.max_inflight_msgs, crate::limits::RAFT_INFLIGHT_MSGS);
        let e = args(&["--heartbeat-interval", "100", "--election-timeout", "400"]).unwrap_err();
        assert!(e.0.contains("should be at least as 5 times as"), "{e}");
        let e = args(&["--election-timeout", "60000"]).unwrap_err();
        assert!(e.0.contains("is too long"), "{e}");
        assert!(args(&["--max-inflight-msgs", "0"]).is_err());
        let c = args(&["--max-inflight-msgs", "64", "--heartbeat-interval", "50"]).unwrap();
        assert_eq!((c.max_inflight_msgs, c.heartbeat_ms), (64, 50));
        let e = args(&["--initial-cluster-state", "existing"]).unwrap_err();
        assert!(e.0.contains("must list the members"), "{e}");
    }

    #[test]
    fn ferrocds_own_executor_knobs_are_bounded() {
        let c = args(&[]).unwrap();
        assert_eq!((c.batch_wait_us, c.spin_before_park_us), (0, 0));
        let c = args(&["--spin-before-park-us", "100", "--batch-wait-us=50"]).unwrap();
        assert_eq!((c.batch_wait_us, c.spin_before_park_us), (50, 100));
        let c = args(&["--spin-before-park-us", "999999"]).unwrap();
        assert_eq!(c.spin_before_park_us, 10_000);
        assert!(args(&["--spin-before-park-us", "soon"]).is_err());
        let c = args(&[]).unwrap();
        assert_eq!(c.read_step_keys, crate::limits::READ_STEP_KEYS_DEFAULT);
        let c = args(&["--read-step-keys", "0"]).unwrap();
        assert_eq!(c.read_step_keys, 1);
        let c = args(&["--read-step-keys=250"]).unwrap();
        assert_eq!(c.read_step_keys, 250);
        let c = args(&[]).unwrap();
        assert_eq!(c.connection_placement, ConnectionPlacement::OwnerFirst);
        let c = args(&["--connection-placement", "others"]).unwrap();
        assert_eq!(c.connection_placement, ConnectionPlacement::Others);
        let c = args(&["--connection-placement=spread"]).unwrap();
        assert_eq!(c.connection_placement, ConnectionPlacement::Spread);
        assert!(args(&["--connection-placement", "everywhere"]).is_err());
    }

    #[test]
    fn defaults_are_etcds() {
        let c = args(&[]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, "default.ferrocd");
        assert_eq!(c.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(c.initial_cluster_token, "etcd-cluster");
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(
            c.client_socket_addrs().unwrap(),
            vec!["127.0.0.1:2379".parse().unwrap()]
        );
    }

    #[test]
    fn flags_and_yaml_agree() {
        let flags = args(&[
            "--name",
            "n1",
            "--listen-client-urls=http://127.0.0.1:3379",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:3380",
            "--initial-cluster",
            "n1=http://127.0.0.1:3380",
            "--max-txn-ops",
            "7",
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yml");
        std::fs::write(
            &path,
            "name: n1\nlisten-client-urls: http://127.0.0.1:3379\ninitial-advertise-peer-urls: http://127.0.0.1:3380\ninitial-cluster: n1=http://127.0.0.1:3380\nmax-txn-ops: 7\n",
        )
        .unwrap();
        let yaml = args(&["--config-file", path.to_str().unwrap()]).unwrap();
        assert_eq!(flags, yaml);
        // Other flags are ignored when a config file is given, as etcd does.
        let y2 = args(&["--config-file", path.to_str().unwrap(), "--name", "zz"]).unwrap();
        assert_eq!(y2.name, "n1");
        assert_eq!(y2.ignored_flags, vec!["name"]);
    }

    #[test]
    fn tls_flags_and_yaml_sections_agree() {
        let flags = args(&[
            "--listen-client-urls=https://127.0.0.1:3379",
            "--cert-file",
            "/c.crt",
            "--key-file=/c.key",
            "--trusted-ca-file",
            "/ca.crt",
            "--client-cert-auth",
            "--peer-cert-file",
            "/p.crt",
            "--peer-key-file",
            "/p.key",
        ])
        .unwrap();
        assert_eq!(
            flags.client_tls,
            TlsInfo {
                cert_file: Some("/c.crt".into()),
                key_file: Some("/c.key".into()),
                trusted_ca_file: Some("/ca.crt".into()),
                client_cert_auth: true,
            }
        );
        assert!(flags.client_url_is_tls().unwrap()[0].1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yml");
        std::fs::write(
            &path,
            "listen-client-urls: https://127.0.0.1:3379\nclient-transport-security:\n  cert-file: /c.crt\n  key-file: /c.key\n  client-cert-auth: true\n  trusted-ca-file: /ca.crt\npeer-transport-security:\n  cert-file: /p.crt\n  key-file: /p.key\n",
        )
        .unwrap();
        let yaml = args(&["--config-file", path.to_str().unwrap()]).unwrap();
        assert_eq!(flags, yaml);
        // Refused: an https URL without a certificate, half a pair, auto-tls.
        let e = args(&["--listen-client-urls=https://127.0.0.1:3379"]).unwrap_err();
        assert!(e.0.contains("--cert-file"), "{e}");
        let e = args(&["--cert-file", "/c.crt"]).unwrap_err();
        assert!(e.0.contains("key-file"), "{e}");
        std::fs::write(&path, "client-transport-security:\n  auto-tls: true\n").unwrap();
        let e = args(&["--config-file", path.to_str().unwrap()]).unwrap_err();
        assert!(e.0.contains("auto-tls"), "{e}");
    }

    #[test]
    fn errors_name_the_key_or_value() {
        let e = args(&["--metrics", "verbose"]).unwrap_err();
        assert!(e.0.contains("\"verbose\" is not basic or extensive"), "{e}");
        assert!(args(&["--metrics", "extensive"]).unwrap().metrics_extensive);
        let e = args(&["--no-such-flag", "1"]).unwrap_err();
        assert!(e.0.contains("'no-such-flag'"), "{e}");
        let e = args(&["--listen-client-urls", "127.0.0.1:2379"]).unwrap_err();
        assert!(e.0.contains("\"127.0.0.1:2379\""), "{e}");
        let e = args(&["--auto-compaction-mode", "daily"]).unwrap_err();
        assert!(e.0.contains("unknown mode \"daily\""), "{e}");
        let e = args(&[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "1h",
        ])
        .unwrap_err();
        assert!(e.0.contains("number of revisions"), "{e}");
        let e = args(&["--auto-compaction-retention", "1x"]).unwrap_err();
        assert!(e.0.contains("invalid duration"), "{e}");
        let e = args(&[
            "--name",
            "x",
            "--initial-cluster",
            "y=http://127.0.0.1:2380",
        ])
        .unwrap_err();
        assert!(e.0.contains("couldn't find local name"), "{e}");
    }

    #[test]
    fn ids_follow_etcds_derivation() {
        // What etcd reports when started with no flags at all.
        let c = args(&[]).unwrap();
        assert_eq!(format!("{:x}", c.member_id()), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", c.cluster_id()), "cdf818194e3a8c32");
    }
}
