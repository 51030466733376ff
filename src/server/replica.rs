//! A member of a cluster: the Raft loop on the owner shard (raft-rs `RawNode`), in place of
//! the single member's apply loop (`shard.rs`).
//!
//! One turn of the loop takes every client request and peer message that is queued, proposes
//! the writes (each entry carries its proposer and request id, so the proposer answers its
//! client when the entry is applied), starts one ReadIndex round for all linearizable reads of
//! the turn, then handles Ready: messages to followers first, committed entries applied, new
//! entries and the hard state appended to the log with one write and one fdatasync, then the
//! messages that must follow the fdatasync (a follower's acknowledgements).
//!
//! Writes that reach a follower are proposed there and forwarded to the leader by raft-rs;
//! the follower answers its client when it applies the entry. A proposal that is lost (the
//! leader changed before it was committed) is answered "request timed out", as etcd does.
//! Lease expiry is decided by the leader only; a follower logs the keepalives it receives, so
//! that the leader sees them, and a new leader gives every lease its whole TTL again plus an
//! election timeout (etcd's promotion).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use raft::eraftpb::{Entry, EntryType};
use raft::{RawNode, StateRole};

use super::metrics::METRICS;
use super::peer::{self, Event, Peers};
use super::shard::{self, Job, Notifier, Reply, StateOptions};
use crate::consensus::{self, LogStorage};
use crate::error::EtcdError;
use crate::kv::{self, KvState, RaftInfo, Request, Response};
use crate::limits::{
    APPLY_BATCH_REQUESTS_MAX, RAFT_ENTRIES_WHOLE, RAFT_EVENTS_DEPTH, RAFT_MSG_BYTES_MAX,
    RAFT_UNCOMMITTED_BYTES_MAX,
};
use crate::log::Log;
use crate::proto::etcdserverpb as pb;

/// A member of the initial cluster.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// How this member takes part in a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub members: Vec<MemberInfo>,
    pub listen_peer: Vec<std::net::SocketAddr>,
    pub heartbeat: Duration,
    pub election: Duration,
    /// `--initial-cluster-token` (new members' ids are derived from it, as etcd's).
    pub token: String,
    /// `--initial-cluster-state existing`: this member joins a running cluster that added it.
    pub join: bool,
    /// `--max-inflight-msgs`.
    pub max_inflight_msgs: usize,
    /// TLS on the peer links (`peer-*` settings, https:// peer URLs).
    pub peer_tls: Option<super::tls::PeerTls>,
    /// `--experimental-snapshot-catchup-entries`.
    pub snapshot_catchup_entries: u64,
}

/// How long a peer link must have been up for the peer to count as healthy (etcd's
/// `HealthInterval`).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

impl ClusterOptions {
    /// Whether Raft runs from the start: the initial cluster has other members, or this
    /// member joins one. A member alone runs without Raft until its first membership change.
    pub fn is_several(&self) -> bool {
        self.members.len() > 1 || self.join
    }
}

/// The tag of a proposal that publishes a member's name and client URLs (as etcd's
/// attributes), inside the proposal data in place of a request.
const TAG_PUBLISH: u8 = 0x30;
/// The tag of a proposal that changes a member's peer URLs (MemberUpdate).
const TAG_UPDATE: u8 = 0x31;
/// A follower's MemberPromote (learner id, u64 LE), for the leader to check and carry out.
const TAG_PROMOTE: u8 = 0x32;
/// The leader's refusal of a follower's MemberPromote, MemberAdd or MemberRemove (a reason
/// code, `refusal_code`), for its client.
const TAG_REFUSED: u8 = 0x33;
/// A follower's MemberAdd or MemberRemove (the answer's kind, then the configuration change
/// as raft-rs encodes it), for the leader to propose. raft-rs passes a follower's
/// configuration change on to the leader as it is, and the leader's raft-rs turns it into an
/// empty entry while another change is not applied yet (its client then timed out, as on
/// etcd); logged this way, the leader holds it until Raft takes it, as its own.
const TAG_CONF: u8 = 0x34;

/// The reason a leader logs when it refuses a follower's membership request (docs/log-format.md).
fn refusal_code(e: &EtcdError) -> u8 {
    match e {
        EtcdError::MemberNotFound => 1,
        EtcdError::MemberNotLearner => 2,
        EtcdError::LearnerNotReady => 3,
        EtcdError::TooManyRequests => 4,
        EtcdError::Timeout => 5,
        EtcdError::LeaderChanged => 6,
        EtcdError::NoLeader => 7,
        EtcdError::NotEnoughStartedMembers => 8,
        EtcdError::Unhealthy => 9,
        _ => 0,
    }
}

/// The error a logged refusal's reason stands for (0 or unknown: the request timed out).
fn refusal_error(code: u8) -> EtcdError {
    match code {
        1 => EtcdError::MemberNotFound,
        2 => EtcdError::MemberNotLearner,
        3 => EtcdError::LearnerNotReady,
        4 => EtcdError::TooManyRequests,
        6 => EtcdError::LeaderChanged,
        7 => EtcdError::NoLeader,
        8 => EtcdError::NotEnoughStartedMembers,
        9 => EtcdError::Unhealthy,
        _ => EtcdError::Timeout,
    }
}

/// A follower's MemberPromote, logged for the leader (which alone knows how far the learner
/// is).
pub(crate) fn promote_request(learner: u64) -> Vec<u8> {
    let mut payload = vec![TAG_PROMOTE];
    payload.extend_from_slice(&learner.to_le_bytes());
    payload
}

/// A follower's configuration change (`kind`: what it answers), logged for the leader.
pub(crate) fn conf_request(kind: u8, cc: &raft::eraftpb::ConfChange) -> Vec<u8> {
    use protobuf::Message as _;
    let mut payload = vec![TAG_CONF, kind];
    payload.extend_from_slice(&cc.write_to_bytes().expect("a conf change encodes"));
    payload
}

/// The leader's refusal of follower `origin`'s request `id`, logged for its client.
pub(crate) fn refusal(origin: u64, id: u64, e: &EtcdError) -> Vec<u8> {
    consensus::proposal(origin, id, &[TAG_REFUSED, refusal_code(e)])
}

/// The configuration change that promotes learner `id`.
fn promotion(id: u64, m: &pb::Member) -> raft::eraftpb::ConfChange {
    raft::eraftpb::ConfChange {
        change_type: raft::eraftpb::ConfChangeType::AddNode,
        node_id: id,
        context: consensus::member_context(&m.peer_ur_ls, false).into(),
        ..Default::default()
    }
}
/// The request id of a publishing proposal ([`request_id_base`] never gives it).
pub(crate) const PUBLISH_ID: u64 = 0;
/// What a configuration change answers (the last byte of its entry's context).
pub(crate) const KIND_ADD: u8 = 1;
pub(crate) const KIND_REMOVE: u8 = 2;
const KIND_PROMOTE: u8 = 3;

/// The id of a member added to the cluster, as etcd computes it: SHA-1 over the sorted peer
/// URLs, the cluster token and the time in seconds; the first 8 bytes, big endian.
fn new_member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let b = format!("{}{token}{now}", urls.concat());
    let digest = sha1_smol::Sha1::from(b.as_bytes()).digest().bytes();
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 has 20 bytes"))
}
/// How long a proposal or read may wait for its answer (etcd: 5 s plus two election
/// timeouts).
fn request_timeout(election: Duration) -> Duration {
    Duration::from_secs(5) + 2 * election
}

/// What a cluster member starts from.
pub(crate) struct Recovered {
    pub state: KvState,
    pub log: Log,
    pub storage: LogStorage,
    pub members: Members,
    /// The member's identity, with the cluster id a joining member learned.
    pub identity: kv::Identity,
    pub checkpoints: std::path::PathBuf,
    pub staging: std::path::PathBuf,
    /// Defragment calls waiting for a checkpoint (handed over by a single member that grows).
    pub demands: shard::Demands,
}

/// Opens the log of a cluster member, rebuilds Raft's storage from it and applies what was
/// committed. A new cluster's members first log the same bootstrap entries (one AddNode per
/// member); a joining member starts empty and learns everything from the leader. Refuses a log
/// written by a single member without peers.
pub(crate) async fn recover(
    opts: &StateOptions,
    cluster: &ClusterOptions,
) -> io::Result<Recovered> {
    let mut opts = opts.clone();
    let dir = opts
        .log_dir
        .clone()
        .ok_or_else(|| io::Error::other("a cluster member needs a data directory"))?;
    if cluster.join {
        let (c, m) = joined_identity(&dir, cluster, &opts.kv.identity).await?;
        opts.kv.identity.cluster_id = c;
        opts.kv.identity.member_id = m;
    } else {
        stored_identity(&dir, &mut opts.kv.identity);
    }
    let opened = shard::open(&opts).await?;
    recover_opened(opened, &opts, cluster).await
}

/// [`recover`] once the data directory is open (`opts` has the member's identity).
pub(crate) async fn recover_opened(
    opened: shard::Opened,
    opts: &StateOptions,
    cluster: &ClusterOptions,
) -> io::Result<Recovered> {
    let dir = opts
        .log_dir
        .clone()
        .ok_or_else(|| io::Error::other("a cluster member needs a data directory"))?;
    let shard::Opened {
        mut state,
        rec,
        raft: checkpointed,
        checkpoint_seq,
    } = opened;
    let Some(mut rec) = rec else {
        return Err(io::Error::other("a cluster member needs a data directory"));
    };
    // Leftovers of a snapshot being received when the member stopped.
    let _ = std::fs::remove_dir_all(snapshot_staging(&dir));
    // A member that ran alone: its own records come first, then Raft's start.
    let grown = checkpointed.is_none()
        && rec
            .payloads
            .iter()
            .any(|p| p.first() == Some(&consensus::TAG_START));
    if checkpoint_seq != 0 && checkpointed.is_none() && !grown {
        return Err(io::Error::other(format!(
            "{}: checkpoints of a single member; a cluster member cannot start from them \
             (start it without the other members in --initial-cluster and add them with \
             MemberAdd)",
            shard::checkpoint_dir(&dir).display()
        )));
    }
    if rec.payloads.is_empty() && !cluster.join && checkpointed.is_none() && !grown {
        let members: Vec<(u64, Vec<String>)> = cluster
            .members
            .iter()
            .map(|m| (m.id, m.peer_urls.clone()))
            .collect();
        let entries = consensus::bootstrap_entries(&members);
        let mut payloads: Vec<Vec<u8>> = entries.iter().map(consensus::encode_entry).collect();
        payloads.push(consensus::encode_hard_state(&raft::eraftpb::HardState {
            term: 1,
            commit: entries.len() as u64,
            ..Default::default()
        }));
        let first = rec.log.next_seq();
        rec.payloads = rec.log.append(&payloads).await?;
        rec.seqs = (first..first + payloads.len() as u64).collect();
        let known = state.log_segments_known();
        for m in rec.log.segment_maps_since(known) {
            state.add_log_segment(m.clone());
        }
    }
    let mut storage = storage_over(&rec.log);
    let mut members = Members::new(&opts.kv.identity);
    let mut conf = raft::eraftpb::ConfState::default();
    if let Some((meta, seq)) = &checkpointed {
        storage.start_from(
            meta.index,
            meta.term,
            meta.conf_state(),
            meta.raft_hard_state(),
        );
        storage.set_snapshot(meta.snapshot(*seq));
        conf = adopt_members(meta, &mut members, &mut state);
    }
    let records = rec.payloads.len();
    let mut started = !grown;
    for (p, seq) in rec.payloads.into_iter().zip(rec.seqs) {
        if !started && !consensus::is_raft_record(&p) {
            // The single member's own records, before Raft's start.
            let req = kv::decode_write(p)
                .map_err(|e| io::Error::other(format!("log {}: {e}", dir.display())))?;
            let _ = state.execute(req);
            continue;
        }
        if !consensus::is_raft_record(&p) {
            return Err(io::Error::other(format!(
                "log {}: written by a single member without peers; it cannot become a \
                 member of a cluster (start it without the other members in --initial-cluster \
                 and add them with MemberAdd)",
                dir.display()
            )));
        }
        let r = consensus::decode(p).map_err(|e| io::Error::other(format!("log: {e}")))?;
        if let consensus::Record::Start(meta) = &r {
            if started {
                return Err(io::Error::other(format!(
                    "log {}: a raft start record where raft had started already",
                    dir.display()
                )));
            }
            started = true;
            conf = adopt_members(meta, &mut members, &mut state);
        }
        storage
            .recover(r, seq)
            .map_err(|e| io::Error::other(format!("log {}: {e}", dir.display())))?;
    }
    let commit = replay(&mut state, &mut members, &mut storage, conf)
        .map_err(|e| io::Error::other(format!("log {}: {e}", dir.display())))?;
    // Published again on every start (the URLs may have changed).
    members.published = false;
    state.set_members(members.list());
    let log = rec.log;
    shard::finish_recovery(&mut state, &log);
    tracing::info!(
        records,
        commit,
        term = storage.hard_state().term,
        revision = state.store().rev(),
        voters = ?storage.voters(),
        "raft log replayed"
    );
    Ok(Recovered {
        state,
        log,
        storage,
        members,
        identity: opts.kv.identity.clone(),
        checkpoints: shard::checkpoint_dir(&dir),
        staging: snapshot_staging(&dir),
        demands: shard::Demands::default(),
    })
}

/// Raft's storage over the log's segments, numbered by the log's ordinals as the value store
/// numbers them (segments this process released already come first, empty).
fn storage_over(log: &Log) -> LogStorage {
    let mut storage = LogStorage::default();
    for _ in 0..log.released() {
        storage.add_segment(bytes::Bytes::new());
    }
    for m in log.segment_maps() {
        storage.add_segment(m.clone());
    }
    storage
}

/// The members a checkpoint or a start record knows, taken by `members` and the state; returns
/// Raft's configuration then.
pub(crate) fn adopt_members(
    meta: &consensus::RaftMeta,
    members: &mut Members,
    state: &mut KvState,
) -> raft::eraftpb::ConfState {
    members.restore(&meta.members);
    state.set_members(members.list());
    meta.conf_state()
}

/// A single member's first membership change: Raft starts on it, a cluster of one, from its
/// state as it is. Its ids are kept beside the log, then a start record (this member alone, at
/// the index and term its Status reported: the revision, and term 1) follows its own records in
/// the log; Raft's entries come after it, so a
/// member added later is sent a snapshot (this member's first checkpoint as a cluster member),
/// never the records before. An error here (a failed write) must stop the node.
pub(crate) async fn grow(
    mut state: KvState,
    mut log: Log,
    cluster: ClusterOptions,
    log_dir: &std::path::Path,
    notifier: Rc<Notifier>,
    demands: shard::Demands,
) -> io::Result<LocalSender<Job>> {
    let identity = state.identity().clone();
    write_identity(log_dir, identity.cluster_id, identity.member_id)?;
    // Status's raft index and term go on from what the single member reported.
    let (index, term) = ((state.store().rev() as u64).max(1), state.term().max(1));
    let meta = consensus::RaftMeta {
        index,
        term,
        voters: vec![identity.member_id],
        learners: Vec::new(),
        hard_state: (term, 0, index),
        members: vec![consensus::MemberMeta {
            id: identity.member_id,
            name: identity.name.clone(),
            peer_urls: identity.peer_urls.clone(),
            client_urls: identity.client_urls.clone(),
            is_learner: false,
        }],
    };
    let (before, started) = (log.stats(), Instant::now());
    log.append(&[consensus::encode_start(&meta)]).await?;
    shard::after_append(&mut state, &log, &before, started, 1);
    let mut storage = storage_over(&log);
    debug_assert_eq!(storage.segment_maps().len(), state.log_segments_known());
    let mut members = Members::new(&identity);
    adopt_members(&meta, &mut members, &mut state);
    storage
        .recover(consensus::Record::Start(meta), 0)
        .map_err(io::Error::other)?;
    tracing::info!(
        member_id = %format!("{:x}", identity.member_id),
        revision = state.store().rev(),
        "a single member's first membership change: raft starts, a cluster of one"
    );
    let rec = Recovered {
        state,
        log,
        storage,
        members,
        identity,
        checkpoints: shard::checkpoint_dir(log_dir),
        staging: snapshot_staging(log_dir),
        demands,
    };
    start(rec, cluster, notifier)
}

/// Applies the committed entries Raft's storage holds after recovery (after its checkpoint, if
/// any) to `state` and `members`, starting from configuration `conf`; sets the storage's
/// configuration and returns the commit index. The commit index is at least the checkpoint's
/// (its hard state may not have been durable yet) and at most the last entry kept (a crash
/// between a snapshot's hard state and its checkpoint leaves the hard state ahead of the
/// entries: the leader sends the snapshot again).
pub(crate) fn replay(
    state: &mut KvState,
    members: &mut Members,
    storage: &mut LogStorage,
    mut conf: raft::eraftpb::ConfState,
) -> Result<u64, String> {
    let (snap_index, _) = storage.snapshot_point();
    let last = raft::Storage::last_index(storage).unwrap_or(snap_index);
    let mut hs = storage.hard_state().clone();
    hs.commit = hs.commit.clamp(snap_index, last);
    storage.set_hard_state(hs);
    let commit = storage.hard_state().commit;
    for e in &storage.slice(snap_index + 1, commit + 1) {
        if let Applied::Conf(cc) = apply_entry(state, members, e)? {
            consensus::change_conf(&mut conf, &cc);
        }
    }
    storage.set_conf_state(conf);
    storage.trim_before(commit.saturating_sub(RAFT_ENTRIES_WHOLE));
    Ok(commit)
}

/// Where a snapshot received from the leader waits to be installed: beside the log.
fn snapshot_staging(log_dir: &std::path::Path) -> std::path::PathBuf {
    log_dir
        .parent()
        .map_or_else(|| log_dir.join("snap"), |p| p.join("snap"))
}

/// Where a member keeps the cluster id and its own id when they do not follow from its
/// configuration (it joined a cluster, or grew one from a single member).
fn identity_file(log_dir: &std::path::Path) -> std::path::PathBuf {
    log_dir.parent().unwrap_or(log_dir).join("cluster")
}

fn read_identity(log_dir: &std::path::Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(identity_file(log_dir)).ok()?;
    let ids: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| u64::from_str_radix(w, 16).ok())
        .collect();
    match ids[..] {
        [c, m] => Some((c, m)),
        _ => None,
    }
}

/// Keeps the cluster id and member id (temporary file, fsync, rename, directory fsync).
fn write_identity(log_dir: &std::path::Path, cluster_id: u64, member_id: u64) -> io::Result<()> {
    let file = identity_file(log_dir);
    let dir = file.parent().unwrap_or(log_dir);
    let tmp = file.with_extension("tmp");
    std::fs::create_dir_all(dir)?;
    std::fs::write(&tmp, format!("{cluster_id:x} {member_id:x}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &file)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A member's ids as kept in its data directory win over those its configuration gives (as
/// etcd, which ignores `--initial-cluster` once a member has data).
pub(crate) fn stored_identity(log_dir: &std::path::Path, me: &mut kv::Identity) {
    if let Some((c, m)) = read_identity(log_dir) {
        me.cluster_id = c;
        me.member_id = m;
    }
}

/// The cluster id of the cluster this member joins, and the id the cluster gave this member
/// (found by its peer URLs, as etcd does): kept in `<data-dir>/member/cluster` once learned
/// from a peer.
async fn joined_identity(
    log_dir: &std::path::Path,
    cluster: &ClusterOptions,
    me: &kv::Identity,
) -> io::Result<(u64, u64)> {
    if let Some(ids) = read_identity(log_dir) {
        return Ok(ids);
    }
    let urls: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| m.peer_urls != me.peer_urls)
        .flat_map(|m| m.peer_urls.clone())
        .collect();
    let mut last = None;
    for _ in 0..50 {
        match peer::ask_identity(&urls, cluster.peer_tls.as_ref(), &me.peer_urls).await {
            Ok((c, m)) => {
                write_identity(log_dir, c, m)?;
                tracing::info!(
                    cluster_id = %format!("{c:x}"),
                    member_id = %format!("{m:x}"),
                    "joining an existing cluster"
                );
                return Ok((c, m));
            }
            Err(e) => last = Some(e),
        }
        glommio::timer::sleep(Duration::from_millis(200)).await;
    }
    Err(io::Error::other(format!(
        "initial-cluster-state existing: no member of the cluster knows this member (add it \
         first with MemberAdd): {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// What etcd's strict reconfiguration checks need besides the member list: the asking
/// member's links and Raft's view of the members' logs (replica.rs gives its peer links and
/// raft-rs's progress; the seeded simulation its own network's).
pub(crate) struct Reconfig<'a> {
    pub(crate) now: Instant,
    /// Since when this member's link to member `id` is up (None: down).
    pub(crate) link_up: &'a dyn Fn(u64) -> Option<Instant>,
    /// How much of the log member `id` holds, as the leader knows it.
    pub(crate) matched: &'a dyn Fn(u64) -> u64,
    /// The leader's last index.
    pub(crate) last_index: u64,
    /// How long a link must have been up to count (etcd's 5 s).
    pub(crate) healthy_after: Duration,
}

impl Reconfig<'_> {
    fn healthy(&self, id: u64) -> bool {
        (self.link_up)(id)
            .is_some_and(|t| self.now.saturating_duration_since(t) >= self.healthy_after)
    }
}

/// The cluster's members with what they published.
pub(crate) struct Members {
    me: u64,
    list: BTreeMap<u64, pb::Member>,
    /// This member's attributes were applied from the log (since its start).
    published: bool,
}

impl Members {
    /// No members yet: the log's configuration changes add them (a new cluster's bootstrap
    /// entries, then MemberAdd and MemberRemove).
    pub(crate) fn new(me: &kv::Identity) -> Members {
        Members {
            me: me.member_id,
            list: BTreeMap::new(),
            published: false,
        }
    }

    fn list(&self) -> Vec<pb::Member> {
        self.list.values().cloned().collect()
    }

    /// The members a checkpoint holds, in place of these.
    pub(crate) fn restore(&mut self, members: &[consensus::MemberMeta]) {
        self.list = members
            .iter()
            .map(|m| {
                let member = pb::Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_ur_ls: m.peer_urls.clone(),
                    client_ur_ls: m.client_urls.clone(),
                    is_learner: m.is_learner,
                };
                (m.id, member)
            })
            .collect();
    }

    /// The members as a checkpoint keeps them.
    pub(crate) fn to_meta(&self) -> Vec<consensus::MemberMeta> {
        self.list
            .values()
            .map(|m| consensus::MemberMeta {
                id: m.id,
                name: m.name.clone(),
                peer_urls: m.peer_ur_ls.clone(),
                client_urls: m.client_ur_ls.clone(),
                is_learner: m.is_learner,
            })
            .collect()
    }

    pub(crate) fn published(&self) -> bool {
        self.published
    }

    /// Whether member `id` has published its name (etcd's "started").
    pub(crate) fn is_started(&self, id: u64) -> bool {
        self.list.get(&id).is_some_and(|m| !m.name.is_empty())
    }

    /// etcd's strict reconfiguration checks, as a member asked makes them and again as the
    /// leader proposes a change (no other is pending then, so the list is up to date): a
    /// change checked when it was asked, then held behind others (or asked of a follower), was
    /// checked against a list without them. Three voters added at once to three members were
    /// all checked against three started voters and would have left three of six started, no
    /// quorum; etcd lets only one of them through (raft empties the others, whose clients time
    /// out).
    pub(crate) fn still_allowed(
        &self,
        cc: &raft::eraftpb::ConfChange,
        r: &Reconfig<'_>,
    ) -> Result<(), EtcdError> {
        use raft::eraftpb::ConfChangeType;
        let id = cc.node_id;
        let learner = self.list.get(&id).map(|m| m.is_learner);
        match cc.get_change_type() {
            ConfChangeType::AddNode if learner == Some(true) => self.promotable(id, r),
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let voter = cc.get_change_type() == ConfChangeType::AddNode;
                if learner.is_none() && voter && !self.ready_to_add_voter() {
                    return Err(EtcdError::NotEnoughStartedMembers);
                }
                if learner.is_none() && !self.voters_connected(r) {
                    return Err(EtcdError::Unhealthy);
                }
                Ok(())
            }
            ConfChangeType::RemoveNode if learner == Some(false) => {
                if self.removal_keeps_quorum(id, r) {
                    Ok(())
                } else {
                    Err(EtcdError::Unhealthy)
                }
            }
            // Refused at apply if not a member (`Members::refusal`).
            ConfChangeType::RemoveNode => Ok(()),
        }
    }

    /// etcd's strict reconfiguration check for removing voter `id`: a member whose link is
    /// down may go; otherwise the voters this member has been connected to for
    /// `healthy_after` (itself included), less the one removed, must stay a quorum.
    fn removal_keeps_quorum(&self, id: u64, r: &Reconfig<'_>) -> bool {
        if id != self.me && (r.link_up)(id).is_none() {
            return true;
        }
        let voters: Vec<u64> = self
            .list
            .values()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect();
        let active = voters
            .iter()
            .filter(|&&v| v == self.me || r.healthy(v))
            .count();
        active.saturating_sub(1) > (voters.len() - 1) / 2
    }

    /// etcd's strict reconfiguration check for adding any member: this member has been
    /// connected to every voter for `healthy_after`.
    fn voters_connected(&self, r: &Reconfig<'_>) -> bool {
        self.list
            .values()
            .filter(|m| !m.is_learner && m.id != self.me)
            .all(|m| r.healthy(m.id))
    }

    /// etcd's strict reconfiguration check for adding a voter: the started voters (those that
    /// published their name) stay a quorum of the voters with the new one; a cluster of one
    /// may always add a second.
    fn ready_to_add_voter(&self) -> bool {
        let voters: Vec<&pb::Member> = self.list.values().filter(|m| !m.is_learner).collect();
        let members = voters.len() + 1;
        let started = voters.iter().filter(|m| self.is_started(m.id)).count();
        (started == 1 && members == 2) || started > members / 2
    }

    /// A follower's request applied on the member that led the term it was logged in
    /// (`leading`: it still does): the configuration change to propose, answered to the
    /// follower's client when applied (a promotion checked here first: only the leader knows
    /// how far the learner is; other changes were checked by the follower, and again as they
    /// are proposed), or the refusal to log ("leader changed" if it no longer leads: nobody
    /// else will carry it out).
    pub(crate) fn carry_out(&self, asked: Asked, leading: bool, r: &Reconfig<'_>) -> Carried {
        let (origin, id) = match &asked {
            Asked::Promote(origin, id, _) | Asked::Conf(origin, id, _, _) => (*origin, *id),
        };
        if !leading {
            return Carried::Refuse(origin, id, EtcdError::LeaderChanged);
        }
        match asked {
            Asked::Promote(_, _, learner) => match self.promotable(learner, r) {
                Ok(()) => Carried::Propose(
                    consensus::proposal(origin, id, &[KIND_PROMOTE]),
                    promotion(learner, &self.list[&learner]),
                ),
                Err(e) => Carried::Refuse(origin, id, e),
            },
            Asked::Conf(_, _, kind, cc) => {
                Carried::Propose(consensus::proposal(origin, id, &[kind]), cc)
            }
        }
    }

    /// Whether the leader may promote `id` now (etcd: a learner, at 90% of the leader's log).
    pub(crate) fn promotable(&self, id: u64, r: &Reconfig<'_>) -> Result<(), EtcdError> {
        match self.list.get(&id) {
            None => return Err(EtcdError::MemberNotFound),
            Some(m) if !m.is_learner => return Err(EtcdError::MemberNotLearner),
            Some(_) => {}
        }
        if ((r.matched)(id) as f64) < (r.last_index as f64) * 0.9 {
            return Err(EtcdError::LearnerNotReady);
        }
        Ok(())
    }

    /// Why a committed configuration change cannot apply to these members, if it cannot
    /// (etcd's `ValidateConfigurationChange`): checked when the entry is applied, the same on
    /// every member, because the checks a member made when it proposed the change saw the
    /// list as it was then (a change held behind another, or proposed by a follower whose
    /// list lagged). A refused change leaves Raft's configuration and the list as they are.
    fn refusal(&self, cc: &raft::eraftpb::ConfChange, urls: &[String]) -> Option<EtcdError> {
        use raft::eraftpb::ConfChangeType;
        let id = cc.node_id;
        match cc.get_change_type() {
            t @ (ConfChangeType::AddNode | ConfChangeType::AddLearnerNode) => {
                let learner = t == ConfChangeType::AddLearnerNode;
                match self.list.get(&id) {
                    // Adding a voter that is a learner is a promotion.
                    Some(m) if learner || !m.is_learner => return Some(EtcdError::MemberExist),
                    Some(_) => {}
                    None if learner && self.list.values().any(|m| m.is_learner) => {
                        return Some(EtcdError::TooManyLearners)
                    }
                    None => {}
                }
                let taken = self
                    .list
                    .values()
                    .any(|m| m.id != id && m.peer_ur_ls.iter().any(|u| urls.contains(u)));
                taken.then_some(EtcdError::PeerUrlExist)
            }
            ConfChangeType::RemoveNode => match self.list.get(&id) {
                None => Some(EtcdError::MemberNotFound),
                Some(m)
                    if !m.is_learner
                        && !self.list.values().any(|v| !v.is_learner && v.id != id) =>
                {
                    Some(EtcdError::NotEnoughStartedMembers)
                }
                Some(_) => None,
            },
        }
    }

    fn conf_change(&mut self, cc: &raft::eraftpb::ConfChange, urls: Vec<String>) {
        use raft::eraftpb::ConfChangeType;
        let id = cc.node_id;
        match cc.get_change_type() {
            t @ (ConfChangeType::AddNode | ConfChangeType::AddLearnerNode) => {
                let learner = t == ConfChangeType::AddLearnerNode;
                let m = self.list.entry(id).or_insert_with(|| pb::Member {
                    id,
                    ..Default::default()
                });
                m.is_learner = learner;
                if !urls.is_empty() {
                    m.peer_ur_ls = urls;
                }
            }
            ConfChangeType::RemoveNode => {
                self.list.remove(&id);
            }
        }
    }
}

/// What applying an entry gave.
pub(crate) enum Applied {
    Nothing,
    /// A request's answer, for its proposer (member id, request id).
    Answer(u64, u64, shard::Answer),
    /// A configuration change, applied to the members already.
    Conf(raft::eraftpb::ConfChange),
    /// A configuration change refused at apply (`Members::refusal`): nothing changed.
    ConfRefused(EtcdError),
    /// A member's peer URLs changed (proposer, request id, member id, answer).
    Updated(u64, u64, u64, shard::Answer),
    /// A follower asks the leader to promote a learner or to propose a configuration change
    /// (carried out by the leader of the entry's term: [`Members::carry_out`]).
    Asked(Asked),
}

/// The proposal data that publishes this member's name and client URLs.
pub(crate) fn publish_payload(id: &kv::Identity) -> Vec<u8> {
    let mut out = vec![TAG_PUBLISH];
    let body = serde_json::json!({
        "id": id.member_id,
        "name": id.name,
        "client_urls": id.client_urls,
    });
    out.extend_from_slice(body.to_string().as_bytes());
    out
}

/// Applies one committed entry.
pub(crate) fn apply_entry(
    state: &mut KvState,
    members: &mut Members,
    e: &Entry,
) -> Result<Applied, String> {
    match e.get_entry_type() {
        EntryType::EntryNormal => {}
        EntryType::EntryConfChange => {
            let (cc, urls) = consensus::parse_conf_change(e)?;
            if let Some(err) = members.refusal(&cc, &urls) {
                tracing::warn!(
                    index = e.index,
                    member = %format!("{:x}", cc.node_id),
                    change = ?cc.get_change_type(),
                    error = %err,
                    "raft: a committed configuration change refused"
                );
                return Ok(Applied::ConfRefused(err));
            }
            members.conf_change(&cc, urls);
            state.set_members(members.list());
            return Ok(Applied::Conf(cc));
        }
        EntryType::EntryConfChangeV2 => {
            return Err(format!(
                "raft entry {}: a joint configuration change",
                e.index
            ));
        }
    }
    if e.data.is_empty() {
        // A new leader's empty entry.
        return Ok(Applied::Nothing);
    }
    let (origin, id, payload) = consensus::parse_proposal(&e.data)
        .ok_or_else(|| format!("raft entry {}: undecodable proposal", e.index))?;
    if payload.first() == Some(&TAG_PUBLISH) {
        let v: serde_json::Value = serde_json::from_slice(&payload[1..])
            .map_err(|err| format!("raft entry {}: bad member attributes: {err}", e.index))?;
        let mid = v["id"].as_u64().unwrap_or(0);
        if mid == members.me && id == PUBLISH_ID {
            members.published = true;
        }
        if let Some(m) = members.list.get_mut(&mid) {
            m.name = v["name"].as_str().unwrap_or_default().to_string();
            m.client_ur_ls = consensus::strings(&v["client_urls"]);
        }
        state.set_members(members.list());
        return Ok(Applied::Nothing);
    }
    if payload.first() == Some(&TAG_PROMOTE) && payload.len() == 9 {
        let learner = u64::from_le_bytes(payload[1..9].try_into().expect("8 bytes"));
        return Ok(Applied::Asked(Asked::Promote(origin, id, learner)));
    }
    if payload.first() == Some(&TAG_CONF) && payload.len() >= 2 {
        use protobuf::Message as _;
        let cc = raft::eraftpb::ConfChange::parse_from_bytes(&payload[2..]).map_err(|err| {
            format!(
                "raft entry {}: bad configuration change request: {err}",
                e.index
            )
        })?;
        return Ok(Applied::Asked(Asked::Conf(origin, id, payload[1], cc)));
    }
    if payload.first() == Some(&TAG_REFUSED) {
        let e = refusal_error(payload.get(1).copied().unwrap_or(0));
        return Ok(Applied::Answer(origin, id, Err(e)));
    }
    if payload.first() == Some(&TAG_UPDATE) {
        let v: serde_json::Value = serde_json::from_slice(&payload[1..])
            .map_err(|err| format!("raft entry {}: bad member update: {err}", e.index))?;
        let mid = v["id"].as_u64().unwrap_or(0);
        let urls = consensus::strings(&v["peer_urls"]);
        if let Some(m) = members.list.get_mut(&mid) {
            m.peer_ur_ls = urls;
        }
        state.set_members(members.list());
        let resp = pb::MemberUpdateResponse {
            header: Some(state.cluster_header()),
            members: state.members(),
        };
        return Ok(Applied::Updated(
            origin,
            id,
            mid,
            Ok(Response::MemberUpdate(resp)),
        ));
    }
    let req = kv::decode_write(payload).map_err(|err| format!("raft entry {}: {err}", e.index))?;
    Ok(Applied::Answer(
        origin,
        id,
        state.apply_logged(req, e.index),
    ))
}

/// The revision entry `e` trims the index to as it is applied (a physical compaction), if it
/// does: stepped reads below it must end first. Asked only while reads are under way; a
/// membership payload's tag is no compaction's.
fn trims_now(e: &Entry) -> Option<i64> {
    if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
        return None;
    }
    let (_, _, payload) = consensus::parse_proposal(&e.data)?;
    kv::payload_trims_now(&payload)
}

/// A slog drain that hands raft-rs's messages (elections, leader changes) to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", record.msg()),
            _ => {}
        }
        Ok(())
    }
}

/// Starts the Raft loop, its ticker and the peer links; returns the queue of client requests.
pub(crate) fn start(
    rec: Recovered,
    cluster: ClusterOptions,
    notifier: Rc<Notifier>,
) -> io::Result<LocalSender<Job>> {
    let Recovered {
        state,
        log,
        storage,
        members,
        identity,
        checkpoints,
        staging,
        demands,
    } = rec;
    let (events_tx, events_rx) = local_channel::new_bounded(RAFT_EVENTS_DEPTH);
    let events_tx = Rc::new(events_tx);
    // The members the log knows, and those of --initial-cluster it does not (a joining member
    // knows no member from its log yet, and must answer the leader to learn them).
    let mut peers: Vec<(u64, Vec<String>)> = members
        .list
        .values()
        .map(|m| (m.id, m.peer_ur_ls.clone()))
        .collect();
    for m in &cluster.members {
        if m.peer_urls != identity.peer_urls && !members.list.contains_key(&m.id) {
            peers.push((m.id, m.peer_urls.clone()));
        }
    }
    let known: Vec<(u64, Vec<String>)> = members
        .list
        .values()
        .map(|m| (m.id, m.peer_ur_ls.clone()))
        .collect();
    let directory: peer::Directory = Rc::new(std::cell::RefCell::new(known));
    let here = peer::Here {
        me: identity.member_id,
        cluster_id: identity.cluster_id,
        events: events_tx.clone(),
        directory: directory.clone(),
        snapshots: Rc::new(peer::Snapshots::new(checkpoints.clone(), staging.clone())),
    };
    let peers = peer::start(here, &cluster.listen_peer, &peers, cluster.peer_tls.clone())?;
    let applied = storage.hard_state().commit;
    // The only voter need not wait an election timeout to lead.
    let alone = storage.voters() == [identity.member_id];
    let election_ticks = (cluster.election.as_millis() / cluster.heartbeat.as_millis()).max(2);
    let cfg = raft::Config {
        id: identity.member_id,
        election_tick: election_ticks as usize,
        heartbeat_tick: 1,
        applied,
        max_size_per_msg: RAFT_MSG_BYTES_MAX,
        max_inflight_msgs: cluster.max_inflight_msgs,
        check_quorum: true,
        pre_vote: true,
        max_uncommitted_size: RAFT_UNCOMMITTED_BYTES_MAX,
        // Appends to one follower queued in the same turn go as one message.
        batch_append: true,
        ..Default::default()
    };
    cfg.validate()
        .map_err(|e| io::Error::other(format!("raft configuration: {e}")))?;
    let logger = slog::Logger::root(slog::Fuse(TracingDrain), slog::o!());
    let mut raw =
        RawNode::new(&cfg, storage, &logger).map_err(|e| io::Error::other(format!("raft: {e}")))?;
    if alone {
        raw.campaign()
            .map_err(|e| io::Error::other(format!("raft: {e}")))?;
    }
    METRICS.has_leader.store(0, Relaxed);
    METRICS.is_leader.store(0, Relaxed);
    METRICS.leader_changes.store(0, Relaxed);
    let (tx, rx) = local_channel::new_bounded(crate::limits::SHARD_QUEUE_DEPTH);
    let (append_tx, append_rx) = local_channel::new_bounded(APPENDS_IN_FLIGHT_MAX + 1);
    let (done_tx, done_rx) = local_channel::new_bounded(APPENDS_IN_FLIGHT_MAX + 1);
    let durable_next = log.next_seq();
    let durable_hs = raw.store().hard_state().clone();
    glommio::spawn_local(appender(log, append_rx, done_tx, checkpoints.clone())).detach();
    let mut node = Node {
        raw,
        state,
        appends: 0,
        to_appender: append_tx,
        peers,
        me: identity.member_id,
        publish: publish_payload(&identity),
        members,
        applied,
        next_req: request_id_base(),
        pending: HashMap::new(),
        reads: Vec::new(),
        reads_held: None,
        rounds: HashMap::new(),
        next_round: 0,
        ready_reads: Vec::new(),
        stepped: shard::SteppedReads::default(),
        timeout: request_timeout(cluster.election),
        election: cluster.election,
        read_retry: 3 * cluster.heartbeat,
        leader: 0,
        last_publish: None,
        abandoned: Vec::new(),
        held_confs: HeldConfs::new(),
        asked: Vec::new(),
        moving: Vec::new(),
        token: cluster.token.clone(),
        directory,
        trimmed_at: applied,
        durable_next,
        durable_hs,
        log_written: 0,
        checkpoints,
        staging,
        catchup: cluster.snapshot_catchup_entries,
        building: None,
        releasing: None,
        demands,
        notifier: notifier.clone(),
    };
    if let Some(m) = node.members.list.get_mut(&node.me) {
        // Until this member's attributes are applied, it shows its own as it knows them.
        m.name = identity.name.clone();
        m.client_ur_ls = identity.client_urls.clone();
    }
    node.state.set_members(node.members.list());
    node.update_role();
    let heartbeat = cluster.heartbeat;
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(heartbeat).await;
            // A full queue already has work that will run the loop; a tick may be skipped.
            if let Err(glommio::GlommioError::Closed(_)) = events_tx.try_send(Event::Tick) {
                return;
            }
        }
    })
    .detach();
    glommio::spawn_local(run(node, rx, events_rx, done_rx, notifier)).detach();
    Ok(tx)
}

/// Request ids start from the clock, so that ids of entries proposed before a restart (and
/// applied after it) never match a request waiting after it.
fn request_id_base() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        << 12
}

struct Node {
    raw: RawNode<LogStorage>,
    state: KvState,
    /// Readies being made durable by the appender, and the way there.
    appends: usize,
    to_appender: LocalSender<AppendReq>,
    peers: Peers,
    me: u64,
    publish: Vec<u8>,
    members: Members,
    applied: u64,
    next_req: u64,
    /// Proposals of this member waiting to be applied: request id -> (client, since).
    pending: HashMap<u64, (Reply, Instant)>,
    /// Linearizable reads of this turn, for one ReadIndex round.
    reads: Vec<Job>,
    /// Since when `reads` wait for a new leader's first commit.
    reads_held: Option<Instant>,
    /// ReadIndex rounds in flight: context -> (reads, first asked, last asked).
    rounds: HashMap<u64, (Vec<Job>, Instant, Instant)>,
    next_round: u64,
    /// Reads whose read index is known, waiting for it to be applied.
    ready_reads: Vec<(u64, Vec<Job>)>,
    /// Ranges over many keys, walked a step at a time between the loop's turns (as the
    /// single member's apply loop does): a turn never holds ticks, heartbeats and Readies for
    /// a whole walk.
    stepped: shard::SteppedReads,
    timeout: Duration,
    election: Duration,
    read_retry: Duration,
    leader: u64,
    last_publish: Option<Instant>,
    /// Clients to answer "leader changed" (collected where the loop cannot wait).
    abandoned: Vec<Reply>,
    /// Configuration changes waiting for the one before to be applied (raft-rs would turn
    /// them into empty entries, and their clients would time out), in arrival order.
    held_confs: HeldConfs<Option<(u64, Reply)>>,
    /// Followers' requests (promotions, configuration changes) applied while a Ready was
    /// handled, carried out after it: raft-rs takes no proposal between `ready()` and
    /// `advance_append_async` (the Ready's last entry would no longer be the unstable log's:
    /// raft-rs panics).
    asked: Vec<Asked>,
    /// MoveLeader calls waiting for the leadership to reach their target.
    moving: Vec<(u64, Reply, Instant)>,
    /// `--initial-cluster-token`, for the ids of added members.
    token: String,
    /// Members' peer URLs for the peer links' identity answers.
    directory: peer::Directory,
    /// The applied index at the last trim of whole entries.
    trimmed_at: u64,
    /// The log's next record seq after the last durable append, and the hard state durable
    /// then.
    durable_next: u64,
    durable_hs: raft::eraftpb::HardState,
    /// Bytes the log wrote since the start (checkpoints are due by it).
    log_written: u64,
    /// This member's checkpoints, and where a leader's snapshot waits to be installed.
    checkpoints: std::path::PathBuf,
    staging: std::path::PathBuf,
    /// Entries kept before a checkpoint for followers slightly behind
    /// (`--experimental-snapshot-catchup-entries`).
    catchup: u64,
    /// The checkpoint under way: Raft's state at it, and the first entry kept after it.
    building: Option<(consensus::RaftMeta, u64)>,
    /// A checkpoint's Release waiting for the appender to let go of the log before it.
    releasing: Option<Releasing>,
    /// Defragment calls waiting for a checkpoint.
    demands: shard::Demands,
    notifier: Rc<Notifier>,
}

/// A follower's request the leader carries out (see `Node::asked`): (proposer, request id,
/// then the learner to promote, or the answer's kind and the configuration change).
pub(crate) enum Asked {
    Promote(u64, u64, u64),
    Conf(u64, u64, u8, raft::eraftpb::ConfChange),
}

/// What the leader that logged a follower's request does with it ([`Members::carry_out`]).
pub(crate) enum Carried {
    /// Propose it (held behind a pending change as any other).
    Propose(Vec<u8>, raft::eraftpb::ConfChange),
    /// Log a refusal for the follower's client: (origin, request id, why).
    Refuse(u64, u64, EtcdError),
}

/// A configuration change held until Raft takes one again: its proposal's context, the client
/// to answer (in the Raft loop: with its request id, when this member's own client asked), and
/// since when it waits.
pub(crate) struct HeldConf<C> {
    pub(crate) ctx: Vec<u8>,
    pub(crate) cc: raft::eraftpb::ConfChange,
    pub(crate) client: C,
    pub(crate) since: Instant,
}

/// At most this many configuration changes wait for the one before (more are refused).
const HELD_CONFS_MAX: usize = 64;

/// Configuration changes waiting for the one before to be applied (raft-rs would turn them
/// into empty entries, and their clients would time out), in arrival order; `C` is how the
/// asker is answered. The Raft loop and the seeded simulation keep one each.
pub(crate) struct HeldConfs<C> {
    queue: std::collections::VecDeque<HeldConf<C>>,
}

/// What the leader does with a configuration change now.
pub(crate) enum ConfTurn<C> {
    Propose(HeldConf<C>),
    Refuse(HeldConf<C>, EtcdError),
}

impl<C> HeldConfs<C> {
    pub(crate) fn new() -> HeldConfs<C> {
        HeldConfs {
            queue: Default::default(),
        }
    }

    /// A change asked of the leader (`pending`: Raft has one not applied yet): proposed now
    /// if Raft takes it and none waits before it, else held; refused when too many wait.
    pub(crate) fn ask(&mut self, h: HeldConf<C>, pending: bool) -> Option<ConfTurn<C>> {
        if !pending && self.queue.is_empty() {
            Some(ConfTurn::Propose(h))
        } else if self.queue.len() < HELD_CONFS_MAX {
            self.queue.push_back(h);
            None
        } else {
            Some(ConfTurn::Refuse(h, EtcdError::TooManyRequests))
        }
    }

    /// The next held change to carry out, called again until None: the oldest, proposed if
    /// this member leads and Raft takes a change (`pending` is read again after each
    /// proposal: one at a time), refused if this member no longer leads ("leader changed", as
    /// the proposals pending when the leadership moved) or it waited longer than `timeout`.
    pub(crate) fn next(
        &mut self,
        leading: bool,
        pending: bool,
        now: Instant,
        timeout: Duration,
    ) -> Option<ConfTurn<C>> {
        let late = now.saturating_duration_since(self.queue.front()?.since) > timeout;
        if leading && !late && pending {
            return None;
        }
        let h = self.queue.pop_front()?;
        Some(match (leading, late) {
            (true, false) => ConfTurn::Propose(h),
            (_, true) => ConfTurn::Refuse(h, EtcdError::Timeout),
            (false, false) => ConfTurn::Refuse(h, EtcdError::LeaderChanged),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// A Release of a checkpoint, answered when the log before it is let go of.
struct Releasing {
    tx: Reply,
    seq: u64,
    at_rev: i64,
    parts: Vec<u32>,
    bytes: u64,
}

enum Input {
    Job(Job),
    Event(Event),
    Persisted(Box<Persisted>),
}

/// Readies handed to the appender and not yet durable, at most (the appender's queues hold
/// this many, so the loop never waits on them).
const APPENDS_IN_FLIGHT_MAX: usize = 8;

/// A Ready's share of the log: what to append (entries, then the hard state; nothing for a
/// Ready with nothing to persist, which still completes in order), and the messages that may
/// leave only once it is durable.
struct AppendReq {
    /// The Ready's number (0: not a Ready, only a release).
    number: u64,
    /// (index, term) of each entry, in the order of their payloads: the first ones, or, with
    /// a snapshot to install, those after its two hard states.
    entries: Vec<(u64, u64)>,
    payloads: Vec<Vec<u8>>,
    /// The hard state among the payloads, if any.
    hard_state: Option<raft::eraftpb::HardState>,
    persisted: Vec<raft::eraftpb::Message>,
    /// After the payloads: the staged snapshot to make this member's checkpoint, or the log
    /// to let go of before a record seq (a checkpoint covers it).
    then: Then,
}

enum Then {
    Nothing,
    Install(std::path::PathBuf),
    Release(u64),
}

/// An [`AppendReq`] made durable.
struct Persisted {
    number: u64,
    entries: Vec<(u64, u64)>,
    /// The entries' payloads as they are in the log's mapping, and the record seq of the
    /// first (the others follow it).
    written: Vec<bytes::Bytes>,
    first_seq: u64,
    hard_state: Option<raft::eraftpb::HardState>,
    persisted: Vec<raft::eraftpb::Message>,
    /// What the append changed in the log (None when nothing was written); one report per
    /// append, given with its first request.
    report: Option<(shard::LogReport, usize)>,
    /// The log's next record seq now, and the bytes its records take.
    next_seq: u64,
    log_bytes: u64,
    /// A snapshot installed as checkpoint (seq, parts, bytes).
    installed: Option<(u64, Vec<std::path::PathBuf>, u64)>,
    /// The log segments let go of (ordinals), their files being removed.
    released: Option<Vec<usize>>,
}

/// Owns the log: appends the Readies it is handed, in order, each group of queued ones with one
/// write and one fdatasync (group commit across Readies), and hands them back durable. A Ready
/// with a snapshot, and a checkpoint's release, are done alone, in their turn. A failed write,
/// fdatasync or snapshot install stops the node.
async fn appender(
    mut log: Log,
    rx: LocalReceiver<AppendReq>,
    done: LocalSender<Persisted>,
    checkpoints: std::path::PathBuf,
) {
    let mut known = log.opened();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Some(Some(r)) = futures_lite::future::poll_once(rx.recv()).await {
            batch.push(r);
        }
        // Runs of plain appends share one write; a request with something to do after its
        // payloads ends its run.
        let mut run = Vec::new();
        for r in batch {
            let last = !matches!(r.then, Then::Nothing);
            run.push(r);
            if last {
                let out =
                    append_run(&mut log, &mut known, std::mem::take(&mut run), &checkpoints).await;
                for p in out {
                    if done.send(p).await.is_err() {
                        return;
                    }
                }
            }
        }
        if !run.is_empty() {
            for p in append_run(&mut log, &mut known, run, &checkpoints).await {
                if done.send(p).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Appends a run of requests with one write (only the last may have something to do after).
async fn append_run(
    log: &mut Log,
    known: &mut usize,
    mut batch: Vec<AppendReq>,
    checkpoints: &std::path::Path,
) -> Vec<Persisted> {
    let stop = |what: &str, e: &dyn std::fmt::Display| -> ! {
        tracing::error!(error = %e, "{what}: stopping the node");
        std::process::exit(1);
    };
    let counts: Vec<usize> = batch.iter().map(|r| r.payloads.len()).collect();
    let all: Vec<Vec<u8>> = batch
        .iter_mut()
        .flat_map(|r| std::mem::take(&mut r.payloads))
        .collect();
    let (mut written, mut report) = (Vec::new(), None);
    let first_seq = log.next_seq();
    if !all.is_empty() {
        let before = log.stats();
        let started = Instant::now();
        let how = crate::log::SyncMode::for_batch(all.len());
        written = match log.append_with(&all, how).await {
            Ok(w) => w,
            Err(e) => stop("log write failed", &e),
        };
        let r = shard::LogReport::of(log, *known, before, started);
        *known += r.new_segments.len();
        report = Some((r, all.len()));
    }
    let (mut installed, mut released) = (None, None);
    match batch.last().map(|r| &r.then) {
        Some(Then::Install(staged)) => {
            // The snapshot's hard state is the request's first payload, written twice: the
            // checkpoint covers the records up to the first, and replay starts at the second
            // (then the Ready's entries, if any).
            debug_assert!(counts.last().is_some_and(|&n| n >= 2), "{counts:?}");
            let before = counts[..counts.len() - 1].iter().sum::<usize>();
            let seq = first_seq + before as u64;
            let staged_parts = staged_parts(staged).unwrap_or_else(|e| stop("snapshot", &e));
            let finals = crate::log::checkpoint::adopt(&staged_parts, checkpoints, seq)
                .unwrap_or_else(|e| stop("snapshot install failed", &e));
            let _ = std::fs::remove_dir_all(staged);
            let bytes = finals
                .iter()
                .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
                .sum();
            installed = Some((seq, finals, bytes));
            released = Some(release(log, seq + 1));
        }
        Some(Then::Release(seq)) => released = Some(release(log, *seq)),
        _ => {}
    }
    let mut out = Vec::with_capacity(batch.len());
    let mut written = written.into_iter();
    let mut seq = first_seq;
    for (r, n) in batch.into_iter().zip(counts) {
        let mine: Vec<bytes::Bytes> = written.by_ref().take(n).collect();
        let k = r.entries.len();
        // An install's entries follow its two hard states; others' come first.
        let at = if matches!(r.then, Then::Install(_)) {
            n - k
        } else {
            0
        };
        out.push(Persisted {
            number: r.number,
            written: mine.into_iter().skip(at).take(k).collect(),
            first_seq: seq + at as u64,
            entries: r.entries,
            hard_state: r.hard_state,
            persisted: r.persisted,
            report: report.take(),
            next_seq: log.next_seq(),
            log_bytes: log.used_bytes(),
            installed: None,
            released: None,
        });
        seq += n as u64;
    }
    if let Some(last) = out.last_mut() {
        last.installed = installed;
        last.released = released;
    }
    out
}

/// The parts of a staged snapshot, in order.
fn staged_parts(dir: &std::path::Path) -> io::Result<Vec<std::path::PathBuf>> {
    let mut parts: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("part-"))
        })
        .collect();
    parts.sort();
    if parts.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no staged snapshot",
            dir.display()
        )));
    }
    Ok(parts)
}

/// Lets go of the log before record `seq`; the files are removed on a thread of their own.
fn release(log: &mut Log, seq: u64) -> Vec<usize> {
    let gone = log.release_before(seq);
    let ordinals = gone.iter().map(|r| r.ordinal).collect();
    if !gone.is_empty() {
        std::thread::spawn(move || {
            if let Err(e) = crate::log::remove_released(&gone, crate::log::CUT_PAUSE) {
                tracing::warn!(error = %e, "cannot remove released segments");
            }
        });
    }
    ordinals
}

async fn run(
    mut node: Node,
    rx: LocalReceiver<Job>,
    events: LocalReceiver<Event>,
    done: LocalReceiver<Persisted>,
    notifier: Rc<Notifier>,
) {
    notifier.notify(node.state.store().rev());
    loop {
        let next = async {
            futures_lite::future::or(
                async { done.recv().await.map(|p| Input::Persisted(Box::new(p))) },
                futures_lite::future::or(async { rx.recv().await.map(Input::Job) }, async {
                    events.recv().await.map(Input::Event)
                }),
            )
            .await
        };
        let first = if node.state.compaction_pending() || !node.stepped.is_empty() {
            match futures_lite::future::poll_once(next).await {
                Some(i) => i,
                None => {
                    node.stepped.between_turns(&mut node.state).await;
                    shard::let_io_in().await;
                    continue;
                }
            }
        } else {
            next.await
        };
        match first {
            Some(Input::Job(j)) => node.job(j).await,
            Some(Input::Event(e)) => node.event(e).await,
            Some(Input::Persisted(p)) => node.persisted(*p).await,
            None => {
                node.stepped.finish(&node.state, i64::MAX).await;
                return;
            }
        }
        while let Some(Some(p)) = futures_lite::future::poll_once(done.recv()).await {
            node.persisted(p).await;
        }
        for _ in 0..APPLY_BATCH_REQUESTS_MAX {
            match futures_lite::future::poll_once(rx.recv()).await {
                Some(Some(j)) => node.job(j).await,
                _ => break,
            }
        }
        for _ in 0..RAFT_EVENTS_DEPTH {
            match futures_lite::future::poll_once(events.recv()).await {
                Some(Some(e)) => node.event(e).await,
                _ => break,
            }
        }
        node.start_reads().await;
        while node.appends < APPENDS_IN_FLIGHT_MAX && node.raw.has_ready() {
            node.ready().await;
        }
        node.carry_out_asked().await;
        node.release_held_confs().await;
        node.answer_reads().await;
        notifier.notify(node.state.store().rev());
        node.stepped.between_turns(&mut node.state).await;
    }
}

/// Reads that must see every write acknowledged before they arrived (ReadIndex).
fn is_linearizable_read(req: &Request) -> bool {
    match req {
        Request::Range(r) => !r.serializable,
        Request::Txn(_) => true,
        Request::LeaseTimeToLive(_) | Request::LeaseLeases(_) => true,
        Request::Authed(a) => is_linearizable_read(&a.req),
        _ => false,
    }
}

impl Node {
    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Whether this member leads the term entry `e` was logged in.
    fn leads_term(&self, e: &raft::eraftpb::Entry) -> bool {
        self.is_leader() && e.term == self.raw.raft.term
    }

    async fn job(&mut self, (mut req, tx): Job) {
        shard::count(&req);
        match &req {
            // Only the leader decides which leases expired.
            Request::LeaseExpire(_) if !self.is_leader() => {
                tx.send(Ok(Response::LeaseExpire(0))).await;
                return;
            }
            Request::MoveLeader(r) => {
                let target = r.target_id;
                if !self.is_leader() {
                    tx.send(Err(EtcdError::NotLeader)).await;
                } else if !self.raw.store().voters().contains(&target) {
                    tx.send(Err(EtcdError::BadLeaderTransferee)).await;
                } else if target == self.me {
                    let done = self.state.move_leader_done();
                    tx.send(Ok(Response::MoveLeader(done))).await;
                } else {
                    tracing::info!(to = %format!("{target:x}"), "raft: moving the leadership");
                    self.raw.transfer_leader(target);
                    self.moving.push((target, tx, Instant::now()));
                }
                return;
            }
            Request::MemberAdd(_)
            | Request::MemberRemove(_)
            | Request::MemberPromote(_)
            | Request::MemberUpdate(_) => {
                let r = std::mem::replace(&mut req, Request::LeaseLeases(Default::default()));
                self.membership(r, tx).await;
                return;
            }
            Request::Checkpoint(_) => {
                let Request::Checkpoint(op) =
                    std::mem::replace(&mut req, Request::LeaseLeases(Default::default()))
                else {
                    unreachable!("matched")
                };
                self.checkpoint(op, tx).await;
                return;
            }
            // Each member checkpoints its own state; Defragment waits for the next one.
            Request::Defragment(_) => {
                self.demands.push(tx);
                return;
            }
            // Every keepalive is logged and renews the lease on every member as it is applied,
            // so that a new leader knows each deadline a client was told of (a leader that
            // renewed in memory and answered at once could lose a renewal its client counts
            // on: the seeded simulation finds that in a few seeds).
            Request::LeaseKeepAlive(_) => {
                let payload = kv::encode_write(&req);
                self.propose(payload, Some(tx)).await;
                return;
            }
            _ => {}
        }
        self.state.prepare(&mut req);
        if let Request::LeaseExpire(x) = &mut req {
            x.seen = Some(self.applied);
        }
        if let Err(e) = self.state.precheck(&req) {
            for raise in self.state.take_raised() {
                self.propose(kv::encode_write(&raise), None).await;
            }
            tx.send(Err(e)).await;
            return;
        }
        if kv::is_write(&req) {
            self.propose(kv::encode_write(&req), Some(tx)).await;
        } else if is_linearizable_read(&req) {
            self.reads.push((req, tx));
        } else {
            self.stepped.start(&mut self.state, req, tx).await;
        }
    }

    /// MemberAdd, MemberRemove and MemberPromote: checked as etcd checks them, then proposed
    /// as a configuration change, answered when it is applied.
    async fn membership(&mut self, req: Request, tx: Reply) {
        use raft::eraftpb::{ConfChange, ConfChangeType};
        let exists = |id: u64| self.members.list.get(&id).cloned();
        let (cc, kind) = match req {
            Request::MemberAdd(r) => {
                if r.peer_ur_ls.is_empty()
                    || r.peer_ur_ls.iter().any(|u| peer::url_addr(u).is_err())
                {
                    return tx.send(Err(EtcdError::MemberBadUrls)).await;
                }
                let taken = self
                    .members
                    .list
                    .values()
                    .any(|m| m.peer_ur_ls.iter().any(|u| r.peer_ur_ls.contains(u)));
                if taken {
                    return tx.send(Err(EtcdError::PeerUrlExist)).await;
                }
                if r.is_learner && self.members.list.values().any(|m| m.is_learner) {
                    // etcd's --max-learners default: one.
                    return tx.send(Err(EtcdError::TooManyLearners)).await;
                }
                let id = new_member_id(&r.peer_ur_ls, &self.token);
                if exists(id).is_some() {
                    return tx.send(Err(EtcdError::MemberExist)).await;
                }
                let cc = ConfChange {
                    change_type: if r.is_learner {
                        ConfChangeType::AddLearnerNode
                    } else {
                        ConfChangeType::AddNode
                    },
                    node_id: id,
                    context: consensus::member_context(&r.peer_ur_ls, r.is_learner).into(),
                    ..Default::default()
                };
                (cc, KIND_ADD)
            }
            Request::MemberRemove(r) => {
                let Some(m) = exists(r.id) else {
                    return tx.send(Err(EtcdError::MemberNotFound)).await;
                };
                // etcd's strict reconfiguration check: never remove the last voter.
                let other_voters = self
                    .members
                    .list
                    .values()
                    .filter(|v| !v.is_learner && v.id != r.id)
                    .count();
                if !m.is_learner && other_voters == 0 {
                    return tx.send(Err(EtcdError::NotEnoughStartedMembers)).await;
                }
                let cc = ConfChange {
                    change_type: ConfChangeType::RemoveNode,
                    node_id: r.id,
                    ..Default::default()
                };
                (cc, KIND_REMOVE)
            }
            Request::MemberPromote(r) => {
                let Some(m) = exists(r.id) else {
                    return tx.send(Err(EtcdError::MemberNotFound)).await;
                };
                if !m.is_learner {
                    return tx.send(Err(EtcdError::MemberNotLearner)).await;
                }
                // Only the leader knows how far the learner is (etcd forwards the call to it):
                // a follower logs the request; the leader answers it through the log.
                if !self.is_leader() {
                    self.propose(promote_request(r.id), Some(tx)).await;
                    return;
                }
                (promotion(r.id, &m), KIND_PROMOTE)
            }
            Request::MemberUpdate(r) => {
                if exists(r.id).is_none() {
                    return tx.send(Err(EtcdError::MemberNotFound)).await;
                }
                if r.peer_ur_ls.is_empty()
                    || r.peer_ur_ls.iter().any(|u| peer::url_addr(u).is_err())
                {
                    return tx.send(Err(EtcdError::MemberBadUrls)).await;
                }
                let taken =
                    self.members.list.values().any(|m| {
                        m.id != r.id && m.peer_ur_ls.iter().any(|u| r.peer_ur_ls.contains(u))
                    });
                if taken {
                    return tx.send(Err(EtcdError::PeerUrlExist)).await;
                }
                // Not a change of Raft's configuration: an entry the members apply to their list.
                let mut payload = vec![TAG_UPDATE];
                let body = serde_json::json!({"id": r.id, "peer_urls": r.peer_ur_ls});
                payload.extend_from_slice(body.to_string().as_bytes());
                self.propose(payload, Some(tx)).await;
                return;
            }
            _ => unreachable!("not a membership request"),
        };
        // etcd's strict reconfiguration checks (the leader makes them again as it proposes).
        if let Err(e) = self.still_allowed(&cc) {
            return tx.send(Err(e)).await;
        }
        if !self.is_leader() {
            // Through the log to the leader, which proposes it (TAG_CONF).
            self.propose(conf_request(kind, &cc), Some(tx)).await;
            return;
        }
        let id = self.next_req;
        self.next_req += 1;
        let ctx = consensus::proposal(self.me, id, &[kind]);
        self.propose_conf(ctx, cc, Some((id, tx))).await;
    }

    /// Proposes a configuration change, or holds it while one proposed before is not applied
    /// yet (a new leader's first entry counts as one): raft-rs would replace it with an
    /// empty entry. Etcd's servers let such a change time out; here it goes once Raft takes
    /// it (`release_held_confs`), within the request timeout.
    async fn propose_conf(
        &mut self,
        ctx: Vec<u8>,
        cc: raft::eraftpb::ConfChange,
        client: Option<(u64, Reply)>,
    ) {
        let h = HeldConf {
            ctx,
            cc,
            client,
            since: Instant::now(),
        };
        let pending = self.raw.raft.has_pending_conf();
        if let Some(turn) = self.held_confs.ask(h, pending) {
            self.conf_turn(turn).await;
        }
    }

    async fn conf_turn(&mut self, turn: ConfTurn<Option<(u64, Reply)>>) {
        match turn {
            ConfTurn::Propose(h) => self.propose_held(h).await,
            ConfTurn::Refuse(h, e) => {
                METRICS.proposals_failed.inc();
                self.answer_held(h, e).await;
            }
        }
    }

    /// Answers a configuration change that will not be proposed: its client if this member's,
    /// else the follower that logged it, through a logged refusal (forwarded to the leader if
    /// this member no longer leads; lost only if there is none, and its client times out).
    async fn answer_held(&mut self, h: HeldConf<Option<(u64, Reply)>>, e: EtcdError) {
        if let Some((_, tx)) = h.client {
            return tx.send(Err(e)).await;
        }
        if let Some((origin, id, _)) = consensus::parse_proposal(&bytes::Bytes::from(h.ctx)) {
            self.log_refusal(origin, id, &e);
        }
    }

    /// Logs the refusal of follower `origin`'s request `id`, for its client.
    fn log_refusal(&mut self, origin: u64, id: u64, e: &EtcdError) {
        if self.raw.propose(vec![], refusal(origin, id, e)).is_err() {
            METRICS.proposals_failed.inc();
        }
    }

    /// Proposes a configuration change now; its client waits for it to be applied (from when
    /// it asked), or hears why Raft refused it.
    async fn propose_held(&mut self, h: HeldConf<Option<(u64, Reply)>>) {
        if let Err(e) = self.still_allowed(&h.cc) {
            METRICS.proposals_failed.inc();
            return self.answer_held(h, e).await;
        }
        match self.raw.propose_conf_change(h.ctx.clone(), h.cc.clone()) {
            Ok(()) => {
                if let Some((id, tx)) = h.client {
                    self.pending.insert(id, (tx, h.since));
                }
            }
            Err(_) => {
                let e = self.refused();
                self.answer_held(h, e).await;
            }
        }
    }

    /// Proposes the held configuration changes Raft takes now (one at a time: each waits
    /// for the one before to be applied); answers them all if this member no longer leads,
    /// and those held longer than the request timeout.
    async fn release_held_confs(&mut self) {
        if self.held_confs.is_empty() {
            return;
        }
        let now = Instant::now();
        let leading = self.is_leader();
        loop {
            let pending = self.raw.raft.has_pending_conf();
            let Some(turn) = self.held_confs.next(leading, pending, now, self.timeout) else {
                break;
            };
            self.conf_turn(turn).await;
        }
    }

    /// etcd's strict reconfiguration checks, against this member's links and Raft's view
    /// (`Members::still_allowed`).
    fn still_allowed(&self, cc: &raft::eraftpb::ConfChange) -> Result<(), EtcdError> {
        self.with_reconfig(|m, r| m.still_allowed(cc, r))
    }

    fn with_reconfig<T>(&self, f: impl FnOnce(&Members, &Reconfig<'_>) -> T) -> T {
        let link_up = |id: u64| self.peers.active_since(id);
        let matched = |id: u64| self.raw.raft.prs().get(id).map_or(0, |p| p.matched);
        let r = Reconfig {
            now: Instant::now(),
            link_up: &link_up,
            matched: &matched,
            last_index: self.raw.raft.raft_log.last_index(),
            healthy_after: HEALTH_INTERVAL,
        };
        f(&self.members, &r)
    }

    /// Why raft-rs dropped a proposal (counted as failed): no leader to take it, or too much
    /// uncommitted (or, for a configuration change, another one still being applied).
    fn refused(&self) -> EtcdError {
        METRICS.proposals_failed.inc();
        if self.raw.raft.leader_id == 0 {
            EtcdError::NoLeader
        } else {
            EtcdError::TooManyRequests
        }
    }

    /// Carries out the followers' requests applied since the last call (outside any Ready):
    /// `Members::carry_out`.
    async fn carry_out_asked(&mut self) {
        let leading = self.is_leader();
        for a in std::mem::take(&mut self.asked) {
            match self.with_reconfig(|m, r| m.carry_out(a, leading, r)) {
                Carried::Propose(ctx, cc) => self.propose_conf(ctx, cc, None).await,
                Carried::Refuse(origin, id, e) => self.log_refusal(origin, id, &e),
            }
        }
    }

    /// The members' peer URLs, for the peer links' identity answers.
    fn refresh_directory(&self) {
        *self.directory.borrow_mut() = self
            .members
            .list
            .values()
            .map(|m| (m.id, m.peer_ur_ls.clone()))
            .collect();
    }

    /// A committed configuration change: raft-rs applies it, the links follow, and the
    /// proposer answers its client. A member that removed itself stops.
    async fn conf_changed(&mut self, e: &Entry, cc: raft::eraftpb::ConfChange) {
        use raft::eraftpb::ConfChangeType;
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => self.raw.mut_store().set_conf_state(cs),
            Err(err) => {
                tracing::error!(error = %err, "raft refused a committed configuration change");
            }
        }
        let id = cc.node_id;
        let removed_me = cc.get_change_type() == ConfChangeType::RemoveNode && id == self.me;
        self.refresh_directory();
        match cc.get_change_type() {
            ConfChangeType::RemoveNode => self.peers.remove(id),
            _ => {
                if let Some(m) = self.members.list.get(&id) {
                    self.peers.add(id, m.peer_ur_ls.clone());
                }
            }
        }
        tracing::info!(
            member = %format!("{id:x}"),
            change = ?cc.get_change_type(),
            voters = ?self.raw.store().voters(),
            learners = ?self.raw.store().learners(),
            "raft: membership changed"
        );
        if let Some((origin, rid, kind)) = consensus::parse_proposal(&e.context)
            .map(|(o, r, k)| (o, r, k.first().copied().unwrap_or(0)))
        {
            if origin == self.me {
                if let Some((tx, _)) = self.pending.remove(&rid) {
                    let header = Some(self.state.cluster_header());
                    let members = self.state.members();
                    let resp = match kind {
                        KIND_ADD => Response::MemberAdd(pb::MemberAddResponse {
                            header,
                            member: self.members.list.get(&id).cloned(),
                            members,
                        }),
                        KIND_REMOVE => {
                            Response::MemberRemove(pb::MemberRemoveResponse { header, members })
                        }
                        _ => Response::MemberPromote(pb::MemberPromoteResponse { header, members }),
                    };
                    tx.send(Ok(resp)).await;
                }
            }
        }
        if removed_me {
            // Reads under way are answered before the process goes.
            self.stepped.finish(&self.state, i64::MAX).await;
            tracing::warn!("this member was removed from the cluster: stopping");
            glommio::spawn_local(async {
                glommio::timer::sleep(Duration::from_millis(500)).await;
                std::process::exit(0);
            })
            .detach();
        }
    }

    /// Answers this member's client of a configuration change refused when applied.
    async fn conf_refused(&mut self, e: &Entry, err: EtcdError) {
        if let Some((origin, rid, _)) = consensus::parse_proposal(&e.context) {
            self.answer_own(origin, rid, Err(err)).await;
        }
    }

    /// Answers the client waiting on this member for request `id`, if `origin` is this member
    /// (an applied entry's proposer) and the client still waits.
    async fn answer_own(&mut self, origin: u64, id: u64, answer: shard::Answer) {
        if origin == self.me {
            if let Some((tx, _)) = self.pending.remove(&id) {
                tx.send(answer).await;
            }
        }
    }

    async fn propose(&mut self, payload: Vec<u8>, tx: Option<Reply>) {
        let id = self.next_req;
        self.next_req += 1;
        let data = consensus::proposal(self.me, id, &payload);
        match self.raw.propose(vec![], data) {
            Ok(()) => {
                if let Some(tx) = tx {
                    self.pending.insert(id, (tx, Instant::now()));
                }
            }
            Err(_) => {
                let e = self.refused();
                if let Some(tx) = tx {
                    tx.send(Err(e)).await;
                }
            }
        }
    }

    async fn event(&mut self, e: Event) {
        match e {
            Event::Peer(m) => {
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!(error = %e, "raft message refused");
                }
            }
            Event::Tick => {
                self.raw.tick();
                self.on_tick().await;
            }
            Event::SnapshotSent(to, ok) => {
                use raft::SnapshotStatus;
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
        }
    }

    /// A step of a checkpoint of this member's state (see `shard::take_checkpoint`). It
    /// covers the entries up to the applied index; the log is kept from the first entry of
    /// the last `catchup` before it (followers slightly behind catch up from entries, others
    /// get the checkpoint as a snapshot), or from the first entry not applied if earlier.
    async fn checkpoint(&mut self, op: kv::CheckpointOp, tx: Reply) {
        use kv::{CheckpointAnswer as A, CheckpointOp as Op};
        let answer = match op {
            // A compaction's trimming first, for a while (`KvState::checkpoint_may_begin`; a
            // wanted snapshot stays wanted meanwhile).
            Op::Begin if !self.state.checkpoint_may_begin(Instant::now()) => Ok(A::Begun(None)),
            Op::Begin => {
                let wanted = self.raw.store().take_snapshot_wanted();
                let forced = wanted || self.demands.forcing();
                if !forced && !self.state.checkpoint_due(self.log_written) {
                    Ok(A::Begun(None))
                } else {
                    self.checkpoint_begin(forced)
                }
            }
            Op::Abandon => {
                self.state.checkpoint_abandon();
                self.demands.abandoned();
                self.building = None;
                Ok(A::Done)
            }
            Op::Finished => {
                for d in self.demands.finished() {
                    d.send(Ok(Response::Defragment(shard::defragmented(&self.state))))
                        .await;
                }
                Ok(A::Done)
            }
            // A snapshot installed since the checkpoint began: it is abandoned.
            _ if self.building.is_none() => Err(EtcdError::Stopped),
            Op::Release {
                seq,
                at_rev,
                parts,
                bytes,
            } => {
                let (meta, keep_from) = self.building.take().expect("checked");
                let store = self.raw.mut_store();
                if !store.compact(keep_from - 1) {
                    tracing::warn!(keep_from, "raft: entries to compact are not all kept");
                }
                store.set_snapshot(meta.snapshot(seq));
                self.releasing = Some(Releasing {
                    tx,
                    seq,
                    at_rev,
                    parts,
                    bytes,
                });
                self.hand_to_appender(AppendReq {
                    number: 0,
                    entries: Vec::new(),
                    payloads: Vec::new(),
                    hard_state: None,
                    persisted: Vec::new(),
                    then: Then::Release(seq + 1),
                });
                return;
            }
            op => Ok(shard::checkpoint_state_op(&mut self.state, op)),
        };
        tx.send(answer.map(Response::Checkpoint)).await;
    }

    /// Begins a checkpoint at the applied index; `forced` (a snapshot is wanted, or
    /// Defragment) takes one even if the log it lets go of is shorter than the catch-up window.
    fn checkpoint_begin(&mut self, forced: bool) -> Result<kv::CheckpointAnswer, EtcdError> {
        use kv::CheckpointAnswer as A;
        let applied = self.applied;
        let store = self.raw.store();
        let Some((keep_from, seq)) =
            store.checkpoint_point(applied, self.catchup, self.durable_next, forced)
        else {
            return Ok(A::Begun(None));
        };
        let Ok(term) = raft::Storage::term(store, applied) else {
            return Ok(A::Begun(None));
        };
        let hs = &self.durable_hs;
        let cs = store.conf_state();
        let meta = consensus::RaftMeta {
            index: applied,
            term,
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            hard_state: (hs.term, hs.vote, hs.commit),
            members: self.members.to_meta(),
        };
        let hurry = self.demands.begun(forced);
        self.state.checkpoint_started(self.log_written);
        let (rev, json) = self.state.checkpoint_begin(Some(meta.clone()));
        self.building = Some((meta, keep_from));
        Ok(A::Begun(Some((seq, rev, json, hurry))))
    }

    /// Time-outs, ReadIndex retries, and publishing this member's attributes.
    async fn on_tick(&mut self) {
        self.answer_moves().await;
        // A member waits for a snapshot while a checkpoint is under way: it is the next one's
        // turn after this, and neither should crawl at nice 19.
        if self.building.is_some() && self.raw.store().snapshot_wanted() {
            self.demands.hurry();
        }
        let now = Instant::now();
        // (Held configuration changes time out in the loop's turn after this tick.)
        self.state.drop_resident_pages_now_and_then(now);
        let timeout = self.timeout;
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, since))| now - *since > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((tx, _)) = self.pending.remove(&id) {
                METRICS.proposals_failed.inc();
                tx.send(Err(EtcdError::Timeout)).await;
            }
        }
        let stale: Vec<u64> = self
            .rounds
            .iter()
            .filter(|(_, (_, _, asked))| now - *asked > self.read_retry)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            let Some((jobs, first, _)) = self.rounds.remove(&ctx) else {
                continue;
            };
            if now - first > timeout {
                for (_, tx) in jobs {
                    tx.send(Err(EtcdError::Timeout)).await;
                }
            } else if self.raw.raft.leader_id == 0 {
                for (_, tx) in jobs {
                    tx.send(Err(EtcdError::NoLeader)).await;
                }
            } else {
                // The round was refused (a leader that has not committed in its term yet)
                // or lost: ask again.
                self.ask_read_index(jobs, first);
            }
        }
        let due = self
            .last_publish
            .is_none_or(|t| now - t > self.election.max(Duration::from_secs(1)));
        if !self.members.published() && self.raw.raft.leader_id != 0 && due {
            self.last_publish = Some(now);
            let data = consensus::proposal(self.me, PUBLISH_ID, &self.publish);
            if self.raw.propose(vec![], data).is_err() {
                tracing::debug!("publishing member attributes: proposal dropped; will retry");
            }
        }
    }

    /// Answers MoveLeader calls whose target leads now, or that waited too long.
    async fn answer_moves(&mut self) {
        if self.moving.is_empty() {
            return;
        }
        let leader = self.raw.raft.leader_id;
        let timeout = self.timeout;
        for (target, tx, since) in std::mem::take(&mut self.moving) {
            if leader == target {
                let done = self.state.move_leader_done();
                tx.send(Ok(Response::MoveLeader(done))).await;
            } else if since.elapsed() > timeout {
                tx.send(Err(EtcdError::TimeoutLeaderTransfer)).await;
            } else {
                self.moving.push((target, tx, since));
            }
        }
    }

    fn ask_read_index(&mut self, jobs: Vec<Job>, first: Instant) {
        let ctx = self.next_round;
        self.next_round += 1;
        self.raw.read_index(ctx.to_le_bytes().to_vec());
        self.rounds.insert(ctx, (jobs, first, Instant::now()));
    }

    async fn start_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        // A new leader answers no read index before it committed an entry of its term
        // (raft-rs drops the request): the reads wait here for that commit, a few
        // milliseconds, instead of a retry after three heartbeats. Check-quorum bounds the
        // wait when the leader loses its followers; the request timeout bounds it otherwise
        // (a leader whose own disk stalls).
        if self.is_leader() && !self.raw.raft.commit_to_current_term() {
            let since = *self.reads_held.get_or_insert_with(Instant::now);
            if since.elapsed() < self.timeout {
                return;
            }
            for (_, tx) in std::mem::take(&mut self.reads) {
                tx.send(Err(EtcdError::Timeout)).await;
            }
            self.reads_held = None;
            return;
        }
        self.reads_held = None;
        let jobs = std::mem::take(&mut self.reads);
        if self.raw.raft.leader_id == 0 {
            for (_, tx) in jobs {
                tx.send(Err(EtcdError::NoLeader)).await;
            }
            return;
        }
        self.ask_read_index(jobs, Instant::now());
    }

    async fn answer_reads(&mut self) {
        if self.ready_reads.is_empty() {
            return;
        }
        let applied = self.applied;
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.ready_reads = later;
        for (_, jobs) in now {
            for (req, tx) in jobs {
                self.stepped.start(&mut self.state, req, tx).await;
            }
        }
    }

    /// Handles one Ready: messages to followers at once, committed entries applied, read
    /// indexes noted; its entries go into the storage (raft-rs reads them from there) and,
    /// with the hard state, to the appender; the messages that must wait for durability go
    /// with them ([`Node::persisted`]).
    async fn ready(&mut self) {
        let mut rd = self.raw.ready();
        self.peers.send(rd.take_messages());
        let mut then = Then::Nothing;
        if !rd.snapshot().is_empty() {
            // A leader's snapshot, received and checked (peer.rs): Raft's storage takes it
            // now; the appender makes its staged files this member's checkpoint, durably,
            // before anything after it is acknowledged; the state follows when that is done.
            let snap = rd.snapshot().clone();
            let m = snap.get_metadata();
            tracing::info!(
                index = m.index,
                term = m.term,
                "raft: installing a snapshot"
            );
            then = Then::Install(self.staged(m.index, m.term));
            self.raw.mut_store().install(snap);
        }
        let committed = rd.take_committed_entries();
        self.apply(committed).await;
        for rs in rd.take_read_states() {
            let ctx = rs
                .request_ctx
                .get(..8)
                .map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().expect("8")));
            if let Some((jobs, _, _)) = self.rounds.remove(&ctx) {
                self.ready_reads.push((rs.index, jobs));
            }
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs.clone());
        }
        let entries = rd.take_entries();
        let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(entries.len() + 2);
        let mut hard_state = None;
        if !entries.is_empty() || rd.must_sync() {
            let hs = self.raw.store().hard_state().clone();
            // With a snapshot, the hard state comes first, twice (the checkpoint covers the
            // records up to the first, `append_run`): entries of the same Ready follow the
            // snapshot's index and must be replayed, not covered.
            if matches!(then, Then::Install(_)) {
                payloads.push(consensus::encode_hard_state(&hs));
                payloads.push(consensus::encode_hard_state(&hs));
                payloads.extend(entries.iter().map(consensus::encode_entry));
            } else {
                payloads.extend(entries.iter().map(consensus::encode_entry));
                payloads.push(consensus::encode_hard_state(&hs));
            }
            hard_state = Some(hs);
        }
        self.raw.mut_store().append(&entries);
        METRICS.proposals_pending.set(entries.len() as i64);
        let req = AppendReq {
            number: rd.number(),
            entries: entries.iter().map(|e| (e.index, e.term)).collect(),
            payloads,
            hard_state,
            persisted: rd.take_persisted_messages(),
            then,
        };
        self.raw.advance_append_async(rd);
        self.raw.advance_apply_to(self.applied);
        self.hand_to_appender(req);
        self.update_role();
        for tx in std::mem::take(&mut self.abandoned) {
            tx.send(Err(EtcdError::LeaderChanged)).await;
        }
        self.answer_moves().await;
    }

    fn staged(&self, index: u64, term: u64) -> std::path::PathBuf {
        peer::staged_dir(&self.staging, index, term)
    }

    fn hand_to_appender(&mut self, req: AppendReq) {
        self.appends += 1;
        if self.to_appender.try_send(req).is_err() {
            // The loop never has more than the queue holds in flight.
            tracing::error!("the appender is gone: stopping the node");
            std::process::exit(1);
        }
    }

    /// A Ready is durable: its entries now point into the log, raft-rs learns it, and the
    /// messages that waited for it leave. A snapshot it installed becomes the state; a
    /// checkpoint's release is answered.
    async fn persisted(&mut self, p: Persisted) {
        self.appends -= 1;
        if let Some((report, records)) = &p.report {
            shard::apply_report(&mut self.state, report, *records);
            for m in &report.new_segments {
                self.raw.mut_store().add_segment(m.clone());
            }
            // Raft's storage and the value store number the log's segments alike.
            debug_assert_eq!(
                self.raw.store().segment_maps().len(),
                self.state.log_segments_known()
            );
            self.log_written = report.after.bytes;
        }
        for ((&(index, term), w), seq) in p.entries.iter().zip(&p.written).zip(p.first_seq..) {
            self.raw
                .mut_store()
                .set_data(index, term, consensus::entry_data(w), seq);
        }
        self.durable_next = p.next_seq;
        if let Some(hs) = p.hard_state {
            self.durable_hs = hs;
        }
        if let Some((seq, parts, bytes)) = p.installed {
            // The segments the install releases are let go of first: the new state takes the
            // mappings of the log's segments from Raft's storage, and kept the released ones
            // mapped (their blocks not freed until a restart).
            if let Some(ordinals) = &p.released {
                self.raw.mut_store().release_segments(ordinals);
            }
            self.take_snapshot_state(seq, parts, bytes).await;
        }
        if let Some(ordinals) = p.released {
            self.raw.mut_store().release_segments(&ordinals);
            match self.releasing.take() {
                Some(r) => {
                    shard::checkpoint_released(
                        &mut self.state,
                        r.seq,
                        r.at_rev,
                        r.parts,
                        r.bytes,
                        &ordinals,
                        p.log_bytes,
                    );
                    r.tx.send(Ok(Response::Checkpoint(kv::CheckpointAnswer::Released(
                        Vec::new(),
                    ))))
                    .await;
                }
                None => {
                    // An installed snapshot's: the state is new and knows no older segment.
                    shard::set_log_sizes(&mut self.state, p.log_bytes);
                }
            }
        }
        METRICS.proposals_pending.set(0);
        if p.number != 0 {
            self.raw.on_persist_ready(p.number);
        }
        self.peers.send(p.persisted);
    }

    /// The state of an installed snapshot replaces this member's: read back from the
    /// checkpoint it now is, with the log segments kept (entries after it point there).
    /// The checkpoint is read and the index built on the shard's blocking thread: the shard's
    /// other tasks (connections, peer links) go on meanwhile; the Raft loop waits for it.
    async fn take_snapshot_state(&mut self, seq: u64, parts: Vec<std::path::PathBuf>, bytes: u64) {
        let stop = |e: &dyn std::fmt::Display| -> ! {
            tracing::error!(error = %e, "cannot take the state of an installed snapshot: stopping");
            std::process::exit(1);
        };
        let started = Instant::now();
        let mut state = self.state.empty_like();
        let read = glommio::executor()
            .spawn_blocking(
                move || -> Result<(KvState, Option<consensus::RaftMeta>), String> {
                    let loaded =
                        crate::log::checkpoint::load(seq, &parts).map_err(|e| e.to_string())?;
                    let meta = state.restore_checkpoint(loaded, bytes)?;
                    Ok((state, meta))
                },
            )
            .await;
        let (mut state, meta) = match read {
            Ok((state, Some(m))) => (state, m),
            Ok((_, None)) => stop(&"a snapshot without Raft's state"),
            Err(e) => stop(&e),
        };
        for m in self.raw.store().segment_maps() {
            state.add_log_segment(m.clone());
        }
        // A checkpoint of this member's under way is abandoned (its steps see a new state);
        // reads under way are walked to their end in the state they began in.
        self.building = None;
        self.stepped.finish(&self.state, i64::MAX).await;
        self.state = state;
        self.applied = meta.index;
        self.trimmed_at = meta.index;
        self.raw.mut_store().set_snapshot(meta.snapshot(seq));
        self.members.restore(&meta.members);
        self.members.published = false;
        self.state.set_members(self.members.list());
        let others: Vec<(u64, Vec<String>)> = self
            .members
            .list
            .values()
            .filter(|m| m.id != self.me)
            .map(|m| (m.id, m.peer_ur_ls.clone()))
            .collect();
        let ids: Vec<u64> = others.iter().map(|(id, _)| *id).collect();
        self.peers.keep_only(&ids);
        for (id, urls) in others {
            self.peers.add(id, urls);
        }
        self.refresh_directory();
        self.update_role();
        self.notifier.notify(self.state.store().rev());
        // Older checkpoints go (nothing points into them now), and snapshots staged at or
        // before this one (Raft would ignore them).
        let (dir, staging, index) = (self.checkpoints.clone(), self.staging.clone(), meta.index);
        std::thread::spawn(move || {
            for e in std::fs::read_dir(&staging).into_iter().flatten().flatten() {
                let name = e.file_name();
                let staged_index = name
                    .to_str()
                    .and_then(|n| n.split_once('-'))
                    .and_then(|(i, _)| u64::from_str_radix(i, 16).ok());
                if staged_index.is_none_or(|i| i <= index) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            crate::log::checkpoint::remove_superseded(&dir, crate::log::CUT_PAUSE)
        });
        tracing::info!(
            index = meta.index,
            revision = self.state.store().rev(),
            checkpoint = %format!("{seq:016x}"),
            ms = started.elapsed().as_millis() as u64,
            "raft: snapshot installed"
        );
    }

    async fn apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let n = entries.len() as u64;
        for e in &entries {
            if !self.stepped.is_empty() {
                if let Some(at) = trims_now(e) {
                    self.stepped.finish(&self.state, at).await;
                }
            }
            let applied = match apply_entry(&mut self.state, &mut self.members, e) {
                Ok(a) => a,
                Err(err) => {
                    tracing::error!(error = %err, "a committed entry cannot be applied: stopping");
                    std::process::exit(1);
                }
            };
            self.applied = e.index;
            match applied {
                Applied::Answer(origin, id, answer) => self.answer_own(origin, id, answer).await,
                Applied::Conf(cc) => self.conf_changed(e, cc).await,
                Applied::ConfRefused(err) => self.conf_refused(e, err).await,
                // A follower's request is carried out by the leader that logged it, once: a
                // leader of a later term (or this member leading again after a restart, which
                // applies entries again from its checkpoint) leaves it; its client heard
                // "leader changed" when the leadership moved.
                Applied::Asked(a) if self.leads_term(e) => self.asked.push(a),
                Applied::Updated(origin, id, member, answer) => {
                    // The link to the member follows its new URLs.
                    if let Some(m) = self.members.list.get(&member) {
                        self.peers.add(member, m.peer_ur_ls.clone());
                    }
                    self.refresh_directory();
                    self.answer_own(origin, id, answer).await;
                }
                _ => {}
            }
        }
        METRICS.proposals_committed.inc_by(n);
        METRICS.proposals_applied.inc_by(n);
        // Entries well behind the applied index are kept only as places in the log.
        if self.applied >= self.trimmed_at + 1024 {
            self.trimmed_at = self.applied;
            let keep = self.applied.saturating_sub(RAFT_ENTRIES_WHOLE);
            self.raw.mut_store().trim_before(keep);
        }
        METRICS
            .keys_total
            .set(self.state.store().keys_indexed() as i64);
    }

    fn update_role(&mut self) {
        let r = &self.raw.raft;
        let leader = r.leader_id;
        if leader != self.leader {
            if leader != 0 {
                METRICS.leader_changes.fetch_add(1, Relaxed);
                tracing::info!(
                    leader = %format!("{leader:x}"),
                    term = r.term,
                    "raft: leader elected"
                );
            } else {
                tracing::warn!(term = r.term, "raft: no leader");
            }
            if self.leader != 0 {
                // Proposals forwarded to the old leader may be lost, and reads waiting for its
                // read index will not get one: their clients hear "leader changed" now rather
                // than time out (the outcome of such a write is unknown, as after a time-out).
                METRICS.proposals_failed.inc_by(self.pending.len() as u64);
                self.abandoned
                    .extend(self.pending.drain().map(|(_, (tx, _))| tx));
                let rounds = std::mem::take(&mut self.rounds);
                self.abandoned.extend(
                    rounds
                        .into_values()
                        .flat_map(|(jobs, _, _)| jobs)
                        .map(|(_, tx)| tx),
                );
            }
            self.leader = leader;
        }
        let is_leader = r.state == StateRole::Leader;
        METRICS.has_leader.store((leader != 0) as u64, Relaxed);
        METRICS.is_leader.store(is_leader as u64, Relaxed);
        self.state.set_lease_authority(is_leader, self.election);
        self.state.set_raft(RaftInfo {
            leader,
            term: r.term,
            commit: r.raft_log.committed,
            applied: self.applied,
            is_learner: self.raw.store().learners().contains(&self.me),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{ConfChange, ConfChangeType};

    /// An install whose Ready also carries entries: the hard state is written twice before
    /// them, the checkpoint is named after the first, and each entry is given its own payload
    /// and record seq (a review found them shifted by the two hard states: entry i was given
    /// entry i-2's data).
    #[test]
    fn an_install_with_entries_gives_each_entry_its_own_record() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        glommio::LocalExecutor::default().run(async move {
            let mut log = Log::open(&root.join("log"), 1 << 20, 1).await.unwrap().log;
            let staged = root.join("staged");
            std::fs::create_dir_all(&staged).unwrap();
            let w = crate::log::checkpoint::Writer::create(&root.join("w"), 1, b"{}").unwrap();
            let part = w.finish().unwrap().remove(0);
            std::fs::rename(&part, staged.join("part-0000")).unwrap();
            let checkpoints = root.join("checkpoint");
            let hs = vec![9u8; 5];
            let before = AppendReq {
                number: 1,
                entries: vec![(1, 1)],
                payloads: vec![b"e1".to_vec(), hs.clone()],
                hard_state: None,
                persisted: vec![],
                then: Then::Nothing,
            };
            let install = AppendReq {
                number: 2,
                entries: vec![(11, 2), (12, 2)],
                payloads: vec![hs.clone(), hs, b"e11".to_vec(), b"e12".to_vec()],
                hard_state: None,
                persisted: vec![],
                then: Then::Install(staged),
            };
            let out = append_run(&mut log, &mut 0, vec![before, install], &checkpoints).await;
            // Records 1 (e1), 2 (hs), 3 and 4 (hs twice), 5 (e11), 6 (e12).
            assert_eq!(out[0].first_seq, 1);
            assert_eq!(&out[0].written[0][..], b"e1");
            let p = &out[1];
            assert_eq!(p.installed.as_ref().map(|i| i.0), Some(3));
            assert_eq!(p.first_seq, 5);
            let data: Vec<&[u8]> = p.written.iter().map(|b| &b[..]).collect();
            assert_eq!(data, [&b"e11"[..], b"e12"]);
        });
    }

    #[test]
    fn a_logged_refusal_gives_its_client_the_same_error() {
        use EtcdError as E;
        for e in [
            E::MemberNotFound,
            E::MemberNotLearner,
            E::LearnerNotReady,
            E::TooManyRequests,
            E::Timeout,
            E::LeaderChanged,
            E::NoLeader,
            E::NotEnoughStartedMembers,
            E::Unhealthy,
        ] {
            assert_eq!(refusal_error(refusal_code(&e)), e);
        }
        // An error without a code of its own (or a code from a newer binary) times out.
        assert_eq!(refusal_error(refusal_code(&E::Stopped)), E::Timeout);
        assert_eq!(refusal_error(200), E::Timeout);
    }

    fn members(list: &[(u64, &str, bool)]) -> Members {
        Members {
            me: 1,
            list: list
                .iter()
                .map(|&(id, url, is_learner)| {
                    let m = pb::Member {
                        id,
                        peer_ur_ls: vec![url.to_string()],
                        is_learner,
                        ..Default::default()
                    };
                    (id, m)
                })
                .collect(),
            published: false,
        }
    }

    fn cc(change_type: ConfChangeType, node_id: u64) -> ConfChange {
        ConfChange {
            change_type,
            node_id,
            ..Default::default()
        }
    }

    /// What a member checks again when a configuration change is applied, as etcd's
    /// `ValidateConfigurationChange`: the same answer on every member, from the list alone.
    #[test]
    fn committed_configuration_changes_are_checked_against_the_list_then() {
        use ConfChangeType::*;
        let m = members(&[
            (1, "http://a", false),
            (2, "http://b", false),
            (3, "http://l", true),
        ]);
        let urls = |u: &str| vec![u.to_string()];
        assert_eq!(
            m.refusal(&cc(AddLearnerNode, 9), &urls("http://n")),
            Some(EtcdError::TooManyLearners)
        );
        assert_eq!(m.refusal(&cc(AddNode, 9), &urls("http://n")), None);
        assert_eq!(
            m.refusal(&cc(AddNode, 9), &urls("http://b")),
            Some(EtcdError::PeerUrlExist)
        );
        assert_eq!(
            m.refusal(&cc(AddNode, 2), &urls("http://n")),
            Some(EtcdError::MemberExist)
        );
        assert_eq!(
            m.refusal(&cc(AddLearnerNode, 3), &urls("http://l")),
            Some(EtcdError::MemberExist)
        );
        // A promotion: a voter added where a learner is, with its own URLs.
        assert_eq!(m.refusal(&cc(AddNode, 3), &urls("http://l")), None);
        assert_eq!(
            m.refusal(&cc(RemoveNode, 9), &[]),
            Some(EtcdError::MemberNotFound)
        );
        assert_eq!(m.refusal(&cc(RemoveNode, 2), &[]), None);
        assert_eq!(m.refusal(&cc(RemoveNode, 3), &[]), None);
        let alone = members(&[(1, "http://a", false), (3, "http://l", true)]);
        assert_eq!(
            alone.refusal(&cc(RemoveNode, 1), &[]),
            Some(EtcdError::NotEnoughStartedMembers)
        );
        assert_eq!(alone.refusal(&cc(RemoveNode, 3), &[]), None);
        let no_learner = members(&[(1, "http://a", false)]);
        assert_eq!(
            no_learner.refusal(&cc(AddLearnerNode, 9), &urls("http://n")),
            None
        );
    }
}
