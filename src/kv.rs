//! Executes decoded etcd requests on the shard that owns the state.
//!
//! The server layer decodes a gRPC payload on whichever shard accepted the connection, sends the
//! decoded [`Request`] to the owner shard over a bounded channel, and the owner calls
//! [`KvState::execute`]. The response travels back and is encoded by the accepting shard.
//! Nothing here touches sockets or files; the clock is read only for lease deadlines.

use std::time::Instant;

use bytes::Bytes;

use crate::auth::{self, AuthAnswer, AuthOp, AuthShared, AuthState};
use crate::error::EtcdError;
use crate::lease::Lessor;
use crate::log::values::Values;
use crate::mvcc::{KeySpan, MvccError, RangeResult, ReadOpts, Store, ValueStore, WriteTxn};
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb::{self, KeyValue};
use pb::request_op::Request as Op;

/// A request the owner shard executes.
#[derive(Debug)]
pub enum Request {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    DeleteRange(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    Status(pb::StatusRequest),
    MemberList(pb::MemberListRequest),
    Alarm(pb::AlarmRequest),
    /// Granted with the ID already chosen (see [`KvState::prepare`]).
    LeaseGrant(pb::LeaseGrantRequest),
    LeaseRevoke(pb::LeaseRevokeRequest),
    /// Revokes leases whose deadline passed. Sent empty by the owner's ticker;
    /// [`KvState::prepare`] fills in the expired leases, and only a non-empty one is logged.
    LeaseExpire(Expiry),
    /// A cluster leader's lease deadlines: (lease id, milliseconds left). Logs written before
    /// keepalives were logged on the leader have them; nothing writes them now.
    LeaseCheckpoint(Vec<(i64, i64)>),
    LeaseKeepAlive(pb::LeaseKeepAliveRequest),
    LeaseTimeToLive(pb::LeaseTimeToLiveRequest),
    LeaseLeases(pb::LeaseLeasesRequest),
    /// Maintenance MoveLeader (a cluster member's Raft loop handles it; a single member is
    /// its own leader).
    MoveLeader(pb::MoveLeaderRequest),
    /// Membership changes (a cluster member's Raft loop handles them).
    MemberAdd(pb::MemberAddRequest),
    MemberRemove(pb::MemberRemoveRequest),
    MemberPromote(pb::MemberPromoteRequest),
    MemberUpdate(pb::MemberUpdateRequest),
    /// Events for the watchers of one watch stream.
    WatchPull(WatchPull),
    /// The Auth service's calls (passwords already hashed, checked by the accepting shard).
    Auth(AuthOp),
    /// A checkpoint's work, done by a single member's apply loop between batches.
    Checkpoint(CheckpointOp),
    /// Maintenance Defragment: a checkpoint, then the log before it released.
    Defragment(pb::DefragmentRequest),
    /// A request whose caller's permissions were checked by the accepting shard against the
    /// auth state at `Authed::revision`; refused if the auth state changed since.
    Authed(Box<Authed>),
}

/// A checked request and the auth revision it was checked at.
#[derive(Debug)]
pub struct Authed {
    pub revision: u64,
    /// The caller (not logged: only the revision matters once a request is admitted).
    pub user: String,
    pub req: Request,
}

/// What one watcher wants next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    pub key: Bytes,
    pub range_end: Bytes,
    /// First revision wanted; 0 means the next one (current + 1).
    pub from: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

impl WatchSpec {
    /// Whether the watcher's filters let a put (or a deletion) through.
    pub fn wants(&self, delete: bool) -> bool {
        if delete {
            !self.no_delete
        } else {
            !self.no_put
        }
    }
}

/// Events for several watchers, at most about `max_events` in all (whole revisions only).
#[derive(Debug)]
pub struct WatchPull {
    pub specs: Vec<WatchSpec>,
    pub max_events: usize,
    /// Keys and values, in bytes, at most about this many (whole revisions).
    pub max_bytes: usize,
}

/// One watcher's part of a [`WatchPulled`].
#[derive(Debug)]
pub enum Pulled {
    /// Events from the watcher's `from`, in revision order; `next` is the first revision not
    /// covered (events may have been filtered out, so `next` moves even with none).
    Events {
        events: Vec<mvccpb::Event>,
        next: i64,
    },
    /// `from` was compacted; the compacted revision.
    Compacted(i64),
}

#[derive(Debug)]
pub struct WatchPulled {
    /// The response header, with the store's revision when the events were read.
    pub header: pb::ResponseHeader,
    pub results: Vec<Pulled>,
}

/// The owner shard's answer to a [`Request`], same variant.
#[derive(Debug)]
pub enum Response {
    Range(pb::RangeResponse),
    Put(pb::PutResponse),
    DeleteRange(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compact(pb::CompactionResponse),
    Status(pb::StatusResponse),
    MemberList(pb::MemberListResponse),
    Alarm(pb::AlarmResponse),
    LeaseGrant(pb::LeaseGrantResponse),
    LeaseRevoke(pb::LeaseRevokeResponse),
    /// How many leases were revoked.
    LeaseExpire(usize),
    LeaseCheckpoint,
    LeaseKeepAlive(pb::LeaseKeepAliveResponse),
    LeaseTimeToLive(pb::LeaseTimeToLiveResponse),
    LeaseLeases(pb::LeaseLeasesResponse),
    MoveLeader(pb::MoveLeaderResponse),
    MemberAdd(pb::MemberAddResponse),
    MemberRemove(pb::MemberRemoveResponse),
    MemberPromote(pb::MemberPromoteResponse),
    MemberUpdate(pb::MemberUpdateResponse),
    WatchPull(WatchPulled),
    Auth(AuthAnswer),
    Checkpoint(CheckpointAnswer),
    Defragment(pb::DefragmentResponse),
}

/// The steps of a checkpoint (server/shard.rs drives them; docs/log-format.md).
#[derive(Debug)]
pub enum CheckpointOp {
    /// Starts one if the log grew enough since the last, or a Defragment waits for one.
    Begin,
    /// The Defragment call: answered once the next checkpoint released the log before it.
    Demand,
    /// The next keys after `after`, as they were at `at_rev`.
    Step {
        after: Option<Bytes>,
        at_rev: i64,
    },
    Abandon,
    /// Makes a finished checkpoint's parts readable.
    Install {
        parts: Vec<Bytes>,
    },
    /// Points revisions at their copies in the installed checkpoint.
    Repoint(Vec<crate::log::checkpoint::Item>),
    /// The released files are gone: Defragment calls waiting for this checkpoint are answered.
    Finished,
    /// Releases what the checkpoint after record `seq`, at `at_rev`, replaces.
    Release {
        seq: u64,
        at_rev: i64,
        parts: Vec<u32>,
        bytes: u64,
    },
}

#[derive(Debug)]
pub enum CheckpointAnswer {
    /// Not due, or not possible (a cluster member); else the record seq it covers, its
    /// revision, its metadata, and the flag set when somebody waits for it.
    Begun(Option<(u64, i64, Vec<u8>, Hurry)>),
    /// None: abandoned (a physical compaction cut in).
    Items(Option<(Vec<crate::log::checkpoint::Item>, Option<Bytes>)>),
    Installed(Vec<u32>),
    /// The log segments let go of, whose files the caller removes.
    Released(Vec<crate::log::Released>),
    /// Begin, when a Defragment waits but nothing was logged since the newest checkpoint:
    /// no checkpoint is taken (one of the same record would replace that one's files); the
    /// log segments it covers were let go of, whose files the caller removes.
    Unchanged(Vec<crate::log::Released>),
    Done,
}

/// Set while a checkpoint is under way when somebody waits for it (a Defragment call, a member
/// that needs a snapshot): its writer then runs at normal priority (server/checkpoint_writer.rs).
pub type Hurry = std::sync::Arc<std::sync::atomic::AtomicBool>;

pub type Result<T> = std::result::Result<T, EtcdError>;

/// Who this member is, as reported in response headers, Status and MemberList.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// Options of the executor (flags of the same names in etcd).
#[derive(Clone, Debug)]
pub struct KvOptions {
    pub identity: Identity,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// `--quota-backend-bytes`: writes that would take the database to this size raise the
    /// NOSPACE alarm and fail; None: no quota.
    pub quota_bytes: Option<u64>,
    /// Where the auth state is published for every shard, with the token settings.
    pub auth: std::sync::Arc<AuthShared>,
    /// `--checkpoint-min-bytes`: the log grows at least this much between checkpoints (0:
    /// none are taken but on demand, by Defragment).
    pub checkpoint_min_bytes: u64,
    /// `--read-step-keys`: keys a long Range walks per step.
    pub read_step_keys: usize,
}

/// The state owned by one shard: the MVCC store, alarms and the member's metadata.
pub struct KvState {
    opts: KvOptions,
    store: Store<Values>,
    leases: Lessor,
    alarms: Vec<pb::AlarmMember>,
    /// Raft term reported in headers; a single node without Raft stays in term 1.
    term: u64,
    /// Bytes written to the log (what the quota counts); None when there is no log.
    db_used: Option<u64>,
    /// Alarms the quota check raised that are not logged yet ([`KvState::take_raised`]).
    raised: Vec<pb::AlarmMember>,
    /// Raft's view, on a member of a cluster.
    raft: Option<RaftInfo>,
    members: Option<Vec<pb::Member>>,
    /// Whether this member decides lease expiry (the leader; it then also applies old logs'
    /// lease checkpoints as its own deadlines know better).
    lease_authority: bool,
    auth: AuthState,
    /// The value store's number of each log segment, by the log's ordinal, and of each part
    /// of the checkpoint the state was restored from or last wrote.
    log_segments: Vec<u32>,
    checkpoint_parts: Vec<u32>,
    /// Bytes of that checkpoint's files.
    checkpoint_bytes: u64,
    /// A checkpoint's walk is under way (compaction trimming waits); set false if a physical
    /// compaction cut in (the walk is abandoned).
    checkpointing: bool,
    /// Since when a checkpoint has been waiting for a compaction's trimming, and when it last
    /// asked.
    trim_wait: Option<(std::time::Instant, std::time::Instant)>,
    /// Log bytes found at recovery; log bytes (counted so) and live value bytes when the last
    /// checkpoint started.
    log_base: u64,
    log_at_checkpoint: u64,
    live_at_checkpoint: u64,
    /// When the mappings' resident pages were last let go of.
    pages_dropped: std::cell::Cell<Instant>,
    /// The time leases are measured by when a simulation sets it ([`KvState::set_clock`]);
    /// the system's clock otherwise.
    clock: Option<Instant>,
    /// The index of the cluster log entry being applied ([`KvState::apply_logged`]).
    log_index: Option<u64>,
}

/// What a checkpoint holds besides the keys (JSON in its first record).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    pub revision: i64,
    pub compact_revision: i64,
    /// (lease id, granted TTL): a restart gives every lease its whole TTL again.
    pub leases: Vec<(i64, i64)>,
    /// (member id, alarm type).
    pub alarms: Vec<(u64, i32)>,
    pub auth: AuthState,
    /// A cluster member's Raft state at the checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<crate::consensus::RaftMeta>,
    /// (lease id, log index of its last logged keepalive) in a cluster (see [`Expiry::seen`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lease_renewals: Vec<(i64, u64)>,
}

/// Leases to revoke for having lapsed ([`Request::LeaseExpire`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    pub ids: Vec<i64>,
    /// A cluster leader's applied index when it decided: a lease renewed by a keepalive
    /// logged after it is spared (the leader decided without that renewal, whose client was
    /// told the lease lives on). None for a single member's, and in logs written before.
    pub seen: Option<u64>,
}

/// Raft's view of the member ([`KvState::set_raft`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct RaftInfo {
    pub leader: u64,
    pub term: u64,
    /// The last committed index, and the last applied.
    pub commit: u64,
    pub applied: u64,
    /// This member is a learner (Status's isLearner).
    pub is_learner: bool,
}

impl KvState {
    pub fn new(opts: KvOptions) -> KvState {
        KvState {
            leases: Lessor::new(opts.identity.member_id),
            opts,
            store: Store::new(Values::default()),
            alarms: Vec::new(),
            term: 1,
            db_used: None,
            raised: Vec::new(),
            raft: None,
            members: None,
            lease_authority: true,
            auth: AuthState::default(),
            log_segments: Vec::new(),
            checkpoint_parts: Vec::new(),
            checkpoint_bytes: 0,
            checkpointing: false,
            trim_wait: None,
            log_base: 0,
            log_at_checkpoint: 0,
            live_at_checkpoint: 0,
            pages_dropped: std::cell::Cell::new(Instant::now()),
            clock: None,
            log_index: None,
        }
    }

    /// Lease deadlines are measured by `now` from here on, not by the system's clock (the
    /// seeded simulation's time).
    pub fn set_clock(&mut self, now: Instant) {
        self.clock = Some(now);
    }

    fn now(&self) -> Instant {
        self.clock.unwrap_or_else(Instant::now)
    }

    /// Makes a new log segment's values readable (segments arrive in the log's order).
    pub fn add_log_segment(&mut self, map: Bytes) {
        let n = self.store.values_mut().add_segment(map);
        self.log_segments.push(n);
        // The segment before is full: the pages its appends mapped (the apply path reads
        // each record back) go back to being page cache only. Reads elsewhere are let go of
        // every `RESIDENT_PAGES_INTERVAL`.
        if let [.., before, _] = self.log_segments[..] {
            // SAFETY: a log segment's mapping (given to this function).
            unsafe { self.store.values().drop_resident(before) };
        }
    }

    /// Unmaps the log's and the checkpoint's resident pages (they stay cached): what the
    /// server's RSS counts of them is what was read since (see `Values::drop_resident_pages`).
    pub fn drop_resident_pages(&self) {
        let values = self.store.values();
        for &n in self.log_segments.iter().chain(&self.checkpoint_parts) {
            // SAFETY: these numbers were given to the log's segment mappings
            // (`add_log_segment`) and the checkpoint's part mappings (restore and install).
            unsafe { values.drop_resident(n) };
        }
        self.pages_dropped.set(Instant::now());
    }

    /// Unmaps the resident pages when the last time is `RESIDENT_PAGES_INTERVAL` ago (the
    /// pages reads mapped since; called by the apply loops as they go).
    pub fn drop_resident_pages_now_and_then(&self, now: Instant) {
        if now.saturating_duration_since(self.pages_dropped.get())
            >= crate::limits::RESIDENT_PAGES_INTERVAL
        {
            self.drop_resident_pages();
        }
    }

    /// How many log segments the value store knows.
    pub fn log_segments_known(&self) -> usize {
        self.log_segments.len()
    }

    /// Bytes of the checkpoint files the state's values partly live in.
    pub fn checkpoint_bytes(&self) -> u64 {
        self.checkpoint_bytes
    }

    /// The log bytes recovery found after the checkpoint (they count toward the next one).
    pub fn set_log_base(&mut self, bytes: u64) {
        self.log_base = bytes;
    }

    /// Whether the log grew enough since the last checkpoint for the next: by at least the
    /// live data (so that copying it at most doubles what is written) and at least
    /// `--checkpoint-min-bytes`. `written` is what the log wrote since the process started.
    pub fn checkpoint_due(&self, written: u64) -> bool {
        let grown = (self.log_base + written).saturating_sub(self.log_at_checkpoint);
        let min = self.opts.checkpoint_min_bytes;
        min > 0 && grown >= min.max(self.live_at_checkpoint)
    }

    /// Notes the start of a checkpoint (for [`KvState::checkpoint_due`]).
    pub fn checkpoint_started(&mut self, written: u64) {
        self.log_at_checkpoint = self.log_base + written;
        self.live_at_checkpoint = self.store.values().live_bytes();
    }

    /// The revision of the compaction still trimming the index, if one is.
    pub fn trimming_rev(&self) -> Option<i64> {
        self.store.trimming_rev()
    }

    /// Whether a compaction has keys left to trim now (not while a checkpoint's walk needs
    /// the index as it is).
    pub fn compaction_pending(&self) -> bool {
        !self.checkpointing && self.store.compaction_pending()
    }

    /// Whether a checkpoint due now may begin: not while a compaction still trims the index
    /// (it would copy the revisions the trimming drops), for at most
    /// `limits::CHECKPOINT_TRIM_WAIT_MAX` (compactions asked faster than one trimming walk
    /// takes must not hold checkpoints, Defragment and snapshots off forever; past it, the
    /// checkpoint holds the trimming off as it walks).
    pub fn checkpoint_may_begin(&mut self, now: std::time::Instant) -> bool {
        if !self.compaction_pending() {
            self.trim_wait = None;
            return true;
        }
        let (since, last) = self.trim_wait.get_or_insert((now, now));
        // A wait that stopped asking (the checkpoint was no longer due) starts over.
        if now.duration_since(*last) > std::time::Duration::from_secs(1) {
            *since = now;
        }
        *last = now;
        now.duration_since(*since) >= crate::limits::CHECKPOINT_TRIM_WAIT_MAX
    }

    /// Starts a checkpoint at the current revision: its metadata. Compaction trimming waits
    /// until [`KvState::checkpoint_step`] has walked every key.
    pub fn checkpoint_begin(&mut self, raft: Option<crate::consensus::RaftMeta>) -> (i64, Vec<u8>) {
        self.checkpointing = true;
        let meta = CheckpointMeta {
            revision: self.store.rev(),
            compact_revision: self.store.compact_rev(),
            leases: self.leases.granted(),
            alarms: self.alarms.iter().map(|a| (a.member_id, a.alarm)).collect(),
            auth: self.auth.clone(),
            raft,
            lease_renewals: self.leases.renewals(),
        };
        let json = serde_json::to_vec(&meta).expect("the checkpoint metadata serialises");
        (meta.revision, json)
    }

    /// The next keys of a checkpoint at `at_rev` after `after` (up to `max_keys`), as items
    /// with their values; the last key when more remain. None when a physical compaction cut
    /// in since [`KvState::checkpoint_begin`] (the checkpoint is abandoned).
    pub fn checkpoint_step(
        &mut self,
        after: Option<&Bytes>,
        at_rev: i64,
        max_keys: usize,
    ) -> Option<(Vec<crate::log::checkpoint::Item>, Option<Bytes>)> {
        if !self.checkpointing {
            return None;
        }
        // The step's keys in one buffer their items slice (nothing allocated per key; the
        // buffers grow by doubling). A key created after `at_rev` gives nothing.
        let mut buf: Vec<u8> = Vec::new();
        let mut revs = Vec::with_capacity(max_keys.min(crate::limits::CHECKPOINT_KEYS_PER_STEP));
        let next = self
            .store
            .checkpoint_walk(after.map(|k| &k[..]), max_keys, |k, ki| {
                let at = buf.len()..buf.len() + k.len();
                let before = revs.len();
                ki.each_as_of(at_rev, |generation, ver, created, e| {
                    revs.push((at.clone(), generation, ver, created, e))
                });
                if revs.len() > before {
                    buf.extend_from_slice(k);
                }
            })
            .map(|k| k.to_bytes());
        let values = self.store.values();
        let buf = Bytes::from(buf);
        let items = revs
            .into_iter()
            .map(
                |(at, generation, ver, created, e)| crate::log::checkpoint::Item {
                    key: buf.slice(at),
                    generation,
                    ver,
                    created,
                    rev: e.rev,
                    lease: e.lease,
                    value: (e.value != crate::mvcc::ValueRef::NONE).then(|| values.get(e.value)),
                },
            )
            .collect();
        if next.is_none() {
            self.checkpointing = false;
        }
        Some((items, next))
    }

    /// The Raft term headers report (1 on a single member).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Who this member is.
    pub fn identity(&self) -> &Identity {
        &self.opts.identity
    }

    /// Abandons a checkpoint's walk (compaction trimming resumes).
    pub fn checkpoint_abandon(&mut self) {
        self.checkpointing = false;
    }

    /// Makes a finished checkpoint's parts readable and points every revision it holds at its
    /// copy there, in steps (`items` a slice of the checkpoint's).
    pub fn checkpoint_install(&mut self, parts: &[Bytes]) -> Vec<u32> {
        parts
            .iter()
            .map(|m| self.store.values_mut().add_segment(m.clone()))
            .collect()
    }

    /// Points the revisions of `items` at their copies in an installed checkpoint.
    pub fn checkpoint_repoint(&mut self, items: &[crate::log::checkpoint::Item]) {
        for it in items {
            let Some(v) = &it.value else { continue };
            if let Some(r) = self.store.values().reference(v) {
                self.store.repoint(&it.key, it.rev, r);
            }
        }
    }

    /// After every revision of a checkpoint at `at_rev` was repointed: forgets the old
    /// checkpoint's parts and the log segments with the given ordinals (their files are
    /// going), and the recent-change ring up to `at_rev` (its entries point there too).
    pub fn checkpoint_release(&mut self, parts: Vec<u32>, bytes: u64, at_rev: i64, log: &[usize]) {
        for n in std::mem::replace(&mut self.checkpoint_parts, parts) {
            self.store.values_mut().drop_segment(n);
        }
        self.checkpoint_bytes = bytes;
        self.release_log_segments(log);
        self.store.forget_history_through(at_rev);
        // The checkpoint read every live value through the mappings.
        self.drop_resident_pages();
    }

    /// Forgets the log segments with these ordinals (the log released them: a checkpoint
    /// covers every record they hold).
    pub fn release_log_segments(&mut self, log: &[usize]) {
        for &o in log {
            if let Some(&n) = self.log_segments.get(o) {
                self.store.values_mut().drop_segment(n);
            }
        }
    }

    /// Restores the state a checkpoint holds (recovery, before the log after it is replayed).
    pub fn restore_checkpoint(
        &mut self,
        l: crate::log::checkpoint::Loaded,
        bytes: u64,
    ) -> std::result::Result<Option<crate::consensus::RaftMeta>, String> {
        use crate::mvcc::key_index::{KeyIndex, RevEntry};
        let meta: CheckpointMeta = serde_json::from_slice(&l.meta)
            .map_err(|e| format!("checkpoint {:016x}: bad metadata: {e}", l.seq))?;
        self.checkpoint_parts = l
            .maps
            .iter()
            .map(|m| self.store.values_mut().add_segment(m.clone()))
            .collect();
        self.checkpoint_bytes = bytes;
        let mut items = l.items().peekable();
        // At most one key per revision (the usual checkpoint after a compaction holds one
        // revision per key): no regrowing a vector of a million keys by doubling. Capped, since
        // a checkpoint of many revisions per key would reserve far more than its keys need
        // (address space a strict overcommit setting may refuse); beyond it the vector grows.
        let reserve = usize::try_from(l.count)
            .unwrap_or(0)
            .min(crate::limits::RESTORE_KEYS_RESERVE_MAX);
        let mut keys = Vec::with_capacity(reserve);
        // Each key's generations and revisions are gathered in scratch vectors and then
        // copied at their exact sizes: most keys have one generation of one revision, and
        // vectors grown by push would keep room for four of each (about 260 bytes more per
        // key than the put path, which reserves exactly one).
        let mut scratch: Vec<(i64, crate::mvcc::Revision, usize)> = Vec::new();
        let mut revs_scratch: Vec<RevEntry> = Vec::new();
        while let Some(first) = items.next() {
            let key = first.key.clone();
            scratch.clear();
            revs_scratch.clear();
            let mut gen_no = u32::MAX;
            let mut it = Some(first);
            while let Some(x) = it {
                if x.generation != gen_no {
                    gen_no = x.generation;
                    scratch.push((x.ver, x.created, revs_scratch.len()));
                }
                let value = match &x.value {
                    None => crate::mvcc::ValueRef::NONE,
                    Some(v) => self.store.values_mut().append(x.rev, &x.key, v),
                };
                revs_scratch.push(RevEntry {
                    rev: x.rev,
                    lease: x.lease,
                    value,
                });
                it = items.next_if(|n| n.key == key);
            }
            let ki = if let ([(ver, created, _)], [entry]) = (&scratch[..], &revs_scratch[..]) {
                // Most keys: one put, kept packed without building vectors.
                KeyIndex::from_single(*ver, *created, *entry)
            } else {
                let mut gens: Vec<crate::mvcc::key_index::GenerationAt> =
                    Vec::with_capacity(scratch.len());
                for (i, &(ver, created, from)) in scratch.iter().enumerate() {
                    let to = scratch.get(i + 1).map_or(revs_scratch.len(), |g| g.2);
                    gens.push((ver, created, revs_scratch[from..to].to_vec()));
                }
                KeyIndex::from_generations(gens)
            };
            let ki = ki.ok_or_else(|| {
                format!(
                    "checkpoint {:016x}: key {key:?} has an empty generation",
                    l.seq
                )
            })?;
            keys.push((crate::mvcc::Key::new(&key), ki));
        }
        self.store.restore_keys(keys);
        self.store
            .restore_revisions(meta.revision, meta.compact_revision);
        let now = self.now();
        for (id, ttl) in meta.leases {
            let _ = self.leases.grant(id, ttl, now);
        }
        for (id, index) in meta.lease_renewals {
            self.leases.mark_renewed(id, index);
        }
        self.alarms = meta
            .alarms
            .into_iter()
            .map(|(member_id, alarm)| pb::AlarmMember { member_id, alarm })
            .collect();
        self.auth = meta.auth;
        self.opts.auth.publish(&self.auth);
        Ok(meta.raft)
    }

    /// A new, empty state with the same options (a member installing a leader's snapshot
    /// builds its state anew).
    pub fn empty_like(&self) -> KvState {
        KvState::new(self.opts.clone())
    }

    /// What Raft tells of the member, for headers, Status and MemberList (a member of a
    /// cluster; a single member keeps the defaults: its own leader in term 1).
    pub fn set_raft(&mut self, info: RaftInfo) {
        self.term = info.term;
        self.raft = Some(info);
    }

    /// The cluster's members as the log has them (names, URLs) for MemberList.
    pub fn set_members(&mut self, members: Vec<pb::Member>) {
        self.members = Some(members);
    }

    /// This member decides lease expiry (the leader; a single member always does).
    pub fn set_lease_authority(&mut self, authority: bool, extend: std::time::Duration) {
        if authority && !self.lease_authority {
            self.leases.promote(self.now(), extend);
        }
        self.lease_authority = authority;
    }

    /// Alarms raised by the quota check since the last call, as the requests that raise them:
    /// the apply loop logs them, so that a restart finds them raised.
    pub fn take_raised(&mut self) -> Vec<Request> {
        self.raised
            .drain(..)
            .map(|a| {
                Request::Alarm(pb::AlarmRequest {
                    action: pb::alarm_request::AlarmAction::Activate as i32,
                    member_id: a.member_id,
                    alarm: a.alarm,
                })
            })
            .collect()
    }

    /// Bytes written to the log so far (the quota's measure of the database's size).
    pub fn set_db_used(&mut self, bytes: u64) {
        self.db_used = Some(bytes);
    }

    /// A state with only in-memory values and the given identity (tests, benches, fuzzers).
    pub fn in_memory(cluster_id: u64, member_id: u64) -> KvState {
        KvState::new(KvOptions {
            identity: Identity {
                cluster_id,
                member_id,
                name: "default".into(),
                peer_urls: vec![],
                client_urls: vec![],
            },
            max_txn_ops: crate::limits::MAX_TXN_OPS_DEFAULT,
            quota_bytes: None,
            auth: Default::default(),
            checkpoint_min_bytes: 0,
            read_step_keys: crate::limits::READ_STEP_KEYS_DEFAULT,
        })
    }

    /// `--read-step-keys`.
    pub fn read_step_keys(&self) -> usize {
        self.opts.read_step_keys
    }

    pub fn store(&self) -> &Store<Values> {
        &self.store
    }

    /// Trims up to `max_keys` keys of a pending compaction; false when none is left. Nothing
    /// while a checkpoint walks the index (the history it reads must stay).
    pub fn compact_step(&mut self, max_keys: usize) -> bool {
        if self.checkpointing {
            return false;
        }
        self.store.compact_step(max_keys)
    }

    pub fn values_mut(&mut self) -> &mut Values {
        self.store.values_mut()
    }

    /// Decisions made once, before a request is logged, so that a replay repeats them: the ID
    /// of a lease granted without one, and which leases have expired.
    pub fn prepare(&mut self, req: &mut Request) {
        match req {
            Request::Authed(a) => self.prepare(&mut a.req),
            Request::LeaseGrant(r) if r.id == 0 => r.id = self.leases.assign_id(),
            Request::LeaseExpire(x) if x.ids.is_empty() => {
                x.ids = self
                    .leases
                    .expired(self.now(), crate::limits::LEASE_REVOKES_PER_CHECK);
            }
            _ => {}
        }
    }

    /// The checks that need no state, plus the space quota: what must pass before a write is
    /// logged (etcd's v3rpc checks, made before a request enters Raft). The quota is decided
    /// here only: a write that was logged is applied whatever happens next (a replay must
    /// give what the live run gave).
    pub fn precheck(&mut self, req: &Request) -> Result<()> {
        match req {
            Request::Authed(a) => {
                self.check_auth_revision(a.revision)?;
                self.check_lease_keys(a)?;
                self.precheck(&a.req)
            }
            Request::Auth(_) => Ok(()),
            Request::Range(r) => check_range(r),
            Request::Put(r) => {
                check_put(r)?;
                self.admit(cost_put(r))
            }
            Request::DeleteRange(r) => check_delete(r),
            Request::Txn(r) => {
                check_txn(r, self.opts.max_txn_ops)?;
                if txn_is_read_only(r) {
                    Ok(())
                } else {
                    self.admit(cost_txn(r))
                }
            }
            Request::LeaseGrant(_) => self.admit(LEASE_OVERHEAD_BYTES),
            Request::Compact(_)
            | Request::Status(_)
            | Request::MemberList(_)
            | Request::Alarm(_)
            | Request::LeaseRevoke(_)
            | Request::LeaseExpire(_)
            | Request::LeaseCheckpoint(_)
            | Request::LeaseKeepAlive(_)
            | Request::LeaseTimeToLive(_)
            | Request::LeaseLeases(_)
            | Request::MoveLeader(_)
            | Request::MemberAdd(_)
            | Request::MemberRemove(_)
            | Request::MemberPromote(_)
            | Request::MemberUpdate(_)
            | Request::WatchPull(_)
            | Request::Checkpoint(_)
            | Request::Defragment(_) => Ok(()),
        }
    }

    /// Starts answering a read (a request that is not logged) against the state as it is: a
    /// Range over a span of keys that `step_keys` keys do not cover becomes a
    /// [`SteppedRange`], to be walked by [`KvState::range_step`] between the apply loop's
    /// batches or the Raft loop's turns (a Range over a million keys held the owner for
    /// 200-360 ms in one go); it reads at the revision current now, whatever is written
    /// meanwhile, as long as compaction trimming waits for it (the loop's part). Anything else
    /// is answered now.
    pub fn read_begin(&mut self, req: Request, step_keys: usize) -> Read {
        if let Err(e) = self.precheck(&req) {
            return Read::Answered(Err(e));
        }
        // An `Authed` read passed its auth revision's check just now.
        let r = match req {
            Request::Range(r) => r,
            Request::Authed(a) => {
                let a = *a;
                match a.req {
                    Request::Range(r) => r,
                    req => {
                        let req = Request::Authed(Box::new(Authed { req, ..a }));
                        return Read::Answered(self.execute(req));
                    }
                }
            }
            req => return Read::Answered(self.execute(req)),
        };
        if r.range_end.is_empty() {
            return Read::Answered(self.execute(Request::Range(r)));
        }
        let span = KeySpan::new(&r.key, &r.range_end);
        match self.store.range_begin(span, range_opts(&r)) {
            Err(e) => Read::Answered(Err(e.into())),
            Ok(read) => {
                let mut stepped = SteppedRange { req: r, read };
                if self.range_step(&mut stepped, step_keys) {
                    Read::Answered(Ok(self.range_finish(stepped)))
                } else {
                    Read::Stepped(stepped)
                }
            }
        }
    }

    /// Walks up to `keys` more keys of a stepped Range; true once it is complete.
    pub fn range_step(&self, stepped: &mut SteppedRange, keys: usize) -> bool {
        self.store.range_step(&mut stepped.read, keys)
    }

    /// The answer to a complete stepped Range.
    pub fn range_finish(&self, stepped: SteppedRange) -> Response {
        let mut resp = range_response(&stepped.req, stepped.read.into_result());
        self.fill(&mut resp.header);
        Response::Range(resp)
    }

    /// Executes the request of entry `index` of a cluster's log: a grant or keepalive renews
    /// the lease on every member alike, and an expiry spares the leases renewed after the
    /// leader decided it (see [`Expiry::seen`]).
    pub fn apply_logged(&mut self, req: Request, index: u64) -> Result<Response> {
        self.log_index = Some(index);
        let answer = self.execute(req);
        self.log_index = None;
        answer
    }

    /// Executes one request. Expected failures come back as etcd errors.
    pub fn execute(&mut self, req: Request) -> Result<Response> {
        Ok(match req {
            Request::Authed(a) => {
                self.check_auth_revision(a.revision)?;
                return self.execute(a.req);
            }
            Request::Auth(op) => {
                let changes = op.is_write();
                let shared = self.opts.auth.clone();
                let mut answer = self.auth.apply(op, &*shared)?;
                if changes {
                    shared.publish(&self.auth);
                }
                *answer.header_mut() = Some(header(self.store.rev()));
                self.fill(answer.header_mut());
                Response::Auth(answer)
            }
            Request::Range(r) => {
                check_range(&r)?;
                let mut resp = range(&self.store, &r, |s, span, o| s.range(span, o))?;
                self.fill(&mut resp.header);
                Response::Range(resp)
            }
            Request::Put(r) => {
                check_put(&r)?;
                // etcd looks the lease up before anything else of a plain put.
                if r.lease != 0 && !self.leases.exists(r.lease) {
                    return Err(EtcdError::LeaseNotFound);
                }
                let mut resp = put(&mut self.store.write(), &r)?;
                self.fill(&mut resp.header);
                Response::Put(resp)
            }
            Request::DeleteRange(r) => {
                check_delete(&r)?;
                let mut resp = delete_range(&mut self.store.write(), &r)?;
                self.fill(&mut resp.header);
                Response::DeleteRange(resp)
            }
            Request::Txn(r) => {
                check_txn(&r, self.opts.max_txn_ops)?;
                let mut resp = txn(&mut self.store, &self.leases, &r)?;
                self.fill(&mut resp.header);
                Response::Txn(resp)
            }
            Request::Compact(r) => {
                // `physical` asks to return once the index is trimmed; otherwise the apply loop
                // trims it between batches. Trimming now would change history under a
                // checkpoint's walk: the checkpoint is abandoned (a later one is taken).
                if r.physical {
                    self.checkpointing = false;
                    self.store.compact_now(r.revision)?;
                } else {
                    self.store.compact(r.revision)?;
                }
                let mut resp = pb::CompactionResponse {
                    header: Some(header(self.store.rev())),
                };
                self.fill(&mut resp.header);
                Response::Compact(resp)
            }
            Request::Status(_) => Response::Status(self.status()),
            Request::MemberList(_) => Response::MemberList(self.member_list()),
            Request::Alarm(r) => Response::Alarm(self.alarm(&r)),
            Request::LeaseGrant(r) => {
                let ttl = self.leases.grant(r.id, r.ttl, self.now())?;
                if let Some(index) = self.log_index {
                    self.leases.mark_renewed(r.id, index);
                }
                let mut resp = pb::LeaseGrantResponse {
                    header: None,
                    id: r.id,
                    ttl,
                    error: String::new(),
                };
                self.fill(&mut resp.header);
                Response::LeaseGrant(resp)
            }
            Request::LeaseRevoke(r) => {
                self.revoke(r.id)?;
                let mut resp = pb::LeaseRevokeResponse { header: None };
                self.fill(&mut resp.header);
                Response::LeaseRevoke(resp)
            }
            Request::LeaseExpire(x) => {
                // Each lease is revoked in a revision of its own, as etcd's one revoke per
                // Raft entry does; one that was revoked meanwhile is skipped, and so is one
                // renewed after the leader decided.
                let spared = |id: i64, l: &Lessor| x.seen.is_some_and(|s| l.renewed_after(id, s));
                let mut n = 0;
                for &id in &x.ids {
                    if !spared(id, &self.leases) && self.revoke(id).is_ok() {
                        n += 1;
                    }
                }
                Response::LeaseExpire(n)
            }
            Request::LeaseCheckpoint(c) => {
                // The leader knows its deadlines better than its own checkpoint of them.
                if !self.lease_authority {
                    let now = self.now();
                    for &(id, left_ms) in &c {
                        self.leases.checkpoint(id, left_ms, now);
                    }
                }
                Response::LeaseCheckpoint
            }
            Request::LeaseKeepAlive(r) => {
                // An unknown or expired lease gets TTL 0 on the stream, not an error.
                let now = self.now();
                // A single member's, in memory; a cluster's, logged, on every member alike.
                let renewed = match self.log_index {
                    Some(index) => self.leases.renew_logged(r.id, now, index),
                    None => self.leases.renew(r.id, now),
                };
                let ttl = renewed.unwrap_or(0);
                let mut resp = pb::LeaseKeepAliveResponse {
                    header: None,
                    id: r.id,
                    ttl,
                };
                self.fill(&mut resp.header);
                Response::LeaseKeepAlive(resp)
            }
            Request::LeaseTimeToLive(r) => {
                let mut resp = match self.leases.time_to_live(r.id, self.now()) {
                    Some((granted, left)) => pb::LeaseTimeToLiveResponse {
                        header: None,
                        id: r.id,
                        ttl: left,
                        granted_ttl: granted,
                        keys: if r.keys {
                            self.store.leased_keys(r.id).map(|k| k.to_bytes()).collect()
                        } else {
                            Vec::new()
                        },
                    },
                    // etcd answers an unknown lease with TTL -1, not an error.
                    None => pb::LeaseTimeToLiveResponse {
                        header: Some(pb::ResponseHeader::default()),
                        id: r.id,
                        ttl: -1,
                        granted_ttl: 0,
                        keys: Vec::new(),
                    },
                };
                self.fill(&mut resp.header);
                Response::LeaseTimeToLive(resp)
            }
            Request::LeaseLeases(_) => {
                let mut resp = pb::LeaseLeasesResponse {
                    header: None,
                    leases: self
                        .leases
                        .ids()
                        .into_iter()
                        .map(|id| pb::LeaseStatus { id })
                        .collect(),
                };
                self.fill(&mut resp.header);
                Response::LeaseLeases(resp)
            }
            Request::MoveLeader(r) => {
                // etcd: a transferee that is not a member is refused; moving to the leader
                // itself is done at once.
                let members = self.members.as_deref().unwrap_or_default();
                let known = r.target_id == self.opts.identity.member_id
                    || members.iter().any(|m| m.id == r.target_id && !m.is_learner);
                if !known {
                    return Err(EtcdError::BadLeaderTransferee);
                }
                Response::MoveLeader(self.move_leader_done())
            }
            // A single member: what a cluster of one would refuse (a member that can grow
            // hands MemberAdd and MemberUpdate to Raft instead; one without a data dir cannot).
            Request::MemberRemove(r) if r.id == self.opts.identity.member_id => {
                return Err(EtcdError::NotEnoughStartedMembers)
            }
            Request::MemberPromote(r) if r.id == self.opts.identity.member_id => {
                return Err(EtcdError::MemberNotLearner)
            }
            Request::MemberRemove(_) | Request::MemberPromote(_) => {
                return Err(EtcdError::MemberNotFound)
            }
            Request::MemberUpdate(r) if r.id != self.opts.identity.member_id => {
                return Err(EtcdError::MemberNotFound)
            }
            Request::MemberAdd(_) | Request::MemberUpdate(_) => {
                return Err(EtcdError::MembershipNeedsCluster)
            }
            Request::WatchPull(p) => Response::WatchPull(self.watch_pull(p)),
            // The apply loops do a checkpoint's work and serve Defragment themselves (they
            // need the log).
            Request::Checkpoint(_) | Request::Defragment(_) => return Err(EtcdError::Stopped),
        })
    }

    /// The checks that need the leases' keys (etcd 3.5.29's): revoking a lease or putting
    /// with it needs WRITE on each key it holds, reading its keys READ on each, listing
    /// leases READ on every leased key. Root may do anything.
    fn check_lease_keys(&self, a: &Authed) -> Result<()> {
        let view = self.opts.auth.view();
        if view.state.is_admin(&a.user) {
            return Ok(());
        }
        let all = |id: i64, access: auth::Access| {
            self.store
                .leased_keys(id)
                .all(|k| view.allows(&a.user, k, &[], access))
        };
        let ok = match &a.req {
            Request::LeaseRevoke(r) => all(r.id, auth::Access::Write),
            Request::Put(p) if p.lease != 0 => all(p.lease, auth::Access::Write),
            Request::LeaseTimeToLive(r) if r.keys => all(r.id, auth::Access::Read),
            Request::LeaseLeases(_) => self
                .leases
                .ids()
                .into_iter()
                .all(|id| all(id, auth::Access::Read)),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// A request checked at auth revision `revision` is refused if the auth state changed
    /// since (etcd's ErrAuthOldRevision: clients authenticate again and retry).
    fn check_auth_revision(&self, revision: u64) -> Result<()> {
        if revision != self.auth.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        Ok(())
    }

    /// The auth state (tests; the shards read the published view).
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    /// The cluster's members as MemberList shows them.
    pub fn members(&self) -> Vec<pb::Member> {
        self.member_list().members
    }

    /// A header for the cluster service's answers (no revision, as etcd's).
    pub fn cluster_header(&self) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.opts.identity.cluster_id,
            member_id: self.opts.identity.member_id,
            revision: 0,
            raft_term: self.term,
        }
    }

    /// The answer to a MoveLeader that completed.
    pub fn move_leader_done(&self) -> pb::MoveLeaderResponse {
        let mut resp = pb::MoveLeaderResponse::default();
        self.fill(&mut resp.header);
        resp
    }

    /// Revokes a lease and deletes its keys, in one revision (none if it had no keys).
    fn revoke(&mut self, id: i64) -> Result<()> {
        self.leases.revoke(id)?;
        // In key order, as etcd sorts them so every member deletes in the same order.
        let keys: Vec<crate::mvcc::Key> = self.store.leased_keys(id).cloned().collect();
        let mut t = self.store.write();
        for k in &keys {
            t.delete_range(KeySpan::Single(k));
        }
        Ok(())
    }

    /// Reads the events each watcher of a pull wants next.
    fn watch_pull(&self, p: WatchPull) -> WatchPulled {
        use mvccpb::event::EventType;
        let revision = self.store.rev();
        let mut budget = p.max_events.max(1);
        let mut bytes_budget = p.max_bytes.max(1);
        let mut changes = Vec::new();
        let mut results = Vec::with_capacity(p.specs.len());
        for (i, s) in p.specs.iter().enumerate() {
            let from = if s.from <= 0 { revision + 1 } else { s.from };
            let key: &[u8] = if s.key.is_empty() { &[0] } else { &s.key };
            changes.clear();
            // Watchers of one stream often want the same thing (many watchers of one key):
            // the events are computed once and shared (their keys and values are `Bytes`).
            if i > 0 && budget > 0 && p.specs[i - 1] == *s {
                if let Some(Pulled::Events { events, next }) = results.last() {
                    let same = Pulled::Events {
                        events: events.clone(),
                        next: *next,
                    };
                    budget = budget.saturating_sub(events.len());
                    results.push(same);
                    continue;
                }
            }
            if budget == 0 || bytes_budget == 0 {
                results.push(Pulled::Events {
                    events: Vec::new(),
                    next: from,
                });
                continue;
            }
            let next = match self.store.changes_since(
                KeySpan::new(key, &s.range_end),
                from,
                budget,
                bytes_budget,
                &mut changes,
            ) {
                Ok(next) => next,
                Err(_) => {
                    results.push(Pulled::Compacted(self.store.compact_rev()));
                    continue;
                }
            };
            budget = budget.saturating_sub(changes.len());
            bytes_budget =
                bytes_budget.saturating_sub(changes.iter().map(|c| c.cost()).sum::<usize>());
            let events = changes
                .iter()
                .filter(|c| s.wants(c.is_delete()))
                .map(|c| mvccpb::Event {
                    r#type: if c.is_delete() {
                        EventType::Delete as i32
                    } else {
                        EventType::Put as i32
                    },
                    kv: Some(self.store.change_kv(c)),
                    prev_kv: if s.prev_kv {
                        let at = ReadOpts {
                            rev: c.rev.main - 1,
                            ..Default::default()
                        };
                        // Nothing when the previous revision is compacted (as etcd).
                        self.store
                            .range(KeySpan::Single(&c.key), at)
                            .ok()
                            .and_then(|mut r| r.kvs.pop())
                    } else {
                        None
                    },
                })
                .collect();
            results.push(Pulled::Events { events, next });
        }
        let mut header = Some(header(revision));
        self.fill(&mut header);
        WatchPulled {
            header: header.unwrap_or_default(),
            results,
        }
    }

    /// etcd's header.fill: identity and term always; the current revision unless set.
    fn fill(&self, h: &mut Option<pb::ResponseHeader>) {
        let h = h.get_or_insert_with(Default::default);
        h.cluster_id = self.opts.identity.cluster_id;
        h.member_id = self.opts.identity.member_id;
        h.raft_term = self.term;
        if h.revision == 0 {
            h.revision = self.store.rev();
        }
    }

    /// etcd's quota: refused while the NOSPACE alarm is raised; a write that would take the
    /// database to the quota raises it (etcd: size + cost must stay below the quota).
    fn admit(&mut self, cost: u64) -> Result<()> {
        let nospace = pb::AlarmType::Nospace as i32;
        if self.alarms.iter().any(|a| a.alarm == nospace) {
            return Err(EtcdError::NoSpace);
        }
        let Some(quota) = self.opts.quota_bytes else {
            return Ok(());
        };
        let used = self
            .db_used
            .unwrap_or_else(|| self.store.values().total_bytes());
        if used + cost < quota {
            return Ok(());
        }
        tracing::warn!(
            used,
            quota,
            "database space quota reached: NOSPACE alarm raised; writes fail until space is \
             freed (compact, defragment) and the alarm disarmed"
        );
        let alarm = pb::AlarmMember {
            member_id: self.opts.identity.member_id,
            alarm: nospace,
        };
        self.alarms.push(alarm);
        self.raised.push(alarm);
        Err(EtcdError::NoSpace)
    }

    fn status(&self) -> pb::StatusResponse {
        let values = self.store.values();
        let mut resp = pb::StatusResponse {
            header: None,
            version: ETCD_API_VERSION.to_string(),
            db_size: values.total_bytes() as i64,
            leader: self.raft.map_or(self.opts.identity.member_id, |r| r.leader),
            raft_index: self.raft.map_or(self.store.rev() as u64, |r| r.commit),
            raft_term: self.term,
            raft_applied_index: self.raft.map_or(self.store.rev() as u64, |r| r.applied),
            errors: self
                .alarms
                .iter()
                .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
                .collect(),
            db_size_in_use: values.live_bytes() as i64,
            is_learner: self.raft.is_some_and(|r| r.is_learner),
            storage_version: String::new(),
        };
        self.fill(&mut resp.header);
        resp
    }

    fn member_list(&self) -> pb::MemberListResponse {
        let id = &self.opts.identity;
        // etcd's cluster server header carries no revision.
        pb::MemberListResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: id.cluster_id,
                member_id: id.member_id,
                revision: 0,
                raft_term: self.term,
            }),
            members: self.members.clone().unwrap_or_else(|| {
                vec![pb::Member {
                    id: id.member_id,
                    name: id.name.clone(),
                    peer_ur_ls: id.peer_urls.clone(),
                    client_ur_ls: id.client_urls.clone(),
                    is_learner: false,
                }]
            }),
        }
    }

    fn alarm(&mut self, r: &pb::AlarmRequest) -> pb::AlarmResponse {
        let none = pb::AlarmType::None as i32;
        let mut resp = pb::AlarmResponse::default();
        match pb::alarm_request::AlarmAction::try_from(r.action) {
            Ok(pb::alarm_request::AlarmAction::Get) => {
                resp.alarms = self
                    .alarms
                    .iter()
                    .filter(|a| r.alarm == none || a.alarm == r.alarm)
                    .cloned()
                    .collect();
            }
            Ok(pb::alarm_request::AlarmAction::Activate) => {
                let exists = self
                    .alarms
                    .iter()
                    .any(|a| a.member_id == r.member_id && a.alarm == r.alarm);
                if r.alarm != none && !exists {
                    let m = pb::AlarmMember {
                        member_id: r.member_id,
                        alarm: r.alarm,
                    };
                    self.alarms.push(m);
                    resp.alarms.push(m);
                }
            }
            Ok(pb::alarm_request::AlarmAction::Deactivate) => {
                if let Some(i) = self
                    .alarms
                    .iter()
                    .position(|a| a.member_id == r.member_id && a.alarm == r.alarm)
                {
                    resp.alarms.push(self.alarms.remove(i));
                }
            }
            Err(_) => {}
        }
        // etcd's alarm answers carry no header.
        resp
    }
}

/// Requests that change the state go to the log before they are executed.
pub fn is_write(req: &Request) -> bool {
    match req {
        Request::Put(_)
        | Request::DeleteRange(_)
        | Request::Compact(_)
        | Request::LeaseGrant(_)
        | Request::LeaseRevoke(_) => true,
        Request::Txn(t) => !txn_is_read_only(t),
        Request::LeaseExpire(x) => !x.ids.is_empty(),
        Request::LeaseCheckpoint(_) => true,
        // Raising or disarming an alarm is logged: alarms survive a restart, as etcd's (kept
        // in its backend) do. Listing them is not a write.
        Request::Alarm(r) => r.action != pb::alarm_request::AlarmAction::Get as i32,
        Request::Auth(op) => op.is_write(),
        Request::Authed(a) => is_write(&a.req),
        Request::Range(_)
        | Request::Status(_)
        | Request::MemberList(_)
        | Request::LeaseKeepAlive(_)
        | Request::LeaseTimeToLive(_)
        | Request::LeaseLeases(_)
        | Request::MoveLeader(_)
        | Request::MemberAdd(_)
        | Request::MemberRemove(_)
        | Request::MemberPromote(_)
        | Request::MemberUpdate(_)
        | Request::WatchPull(_)
        | Request::Checkpoint(_)
        | Request::Defragment(_) => false,
    }
}

/// A write as a log payload: one tag byte, then the request's protobuf encoding (so that a
/// decoded put's value is a slice of the payload, and so of the log's mapping).
pub fn encode_write(req: &Request) -> Vec<u8> {
    use prost::Message;
    let (tag, body) = match req {
        Request::Put(r) => (1u8, r.encode_to_vec()),
        Request::DeleteRange(r) => (2, r.encode_to_vec()),
        Request::Txn(r) => (3, r.encode_to_vec()),
        Request::Compact(r) => (4, r.encode_to_vec()),
        Request::LeaseGrant(r) => (5, r.encode_to_vec()),
        Request::LeaseRevoke(r) => (6, r.encode_to_vec()),
        Request::LeaseExpire(Expiry { ids, seen: None }) => {
            (7, ids.iter().flat_map(|id| id.to_le_bytes()).collect())
        }
        Request::LeaseExpire(Expiry {
            ids,
            seen: Some(seen),
        }) => (
            14,
            std::iter::once(*seen)
                .flat_map(u64::to_le_bytes)
                .chain(ids.iter().flat_map(|id| id.to_le_bytes()))
                .collect(),
        ),
        Request::Alarm(r) => (8, r.encode_to_vec()),
        // Only a cluster logs keepalives (so that every member knows the deadlines).
        Request::LeaseKeepAlive(r) => (10, r.encode_to_vec()),
        Request::LeaseCheckpoint(c) => (
            11,
            c.iter()
                .flat_map(|(id, ms)| id.to_le_bytes().into_iter().chain(ms.to_le_bytes()))
                .collect(),
        ),
        Request::Auth(op) => (12, encode_auth(op)),
        Request::Authed(a) => {
            let mut body = a.revision.to_le_bytes().to_vec();
            body.extend_from_slice(&encode_write(&a.req));
            (13, body)
        }
        other => panic!("not a write: {other:?}"),
    };
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(tag);
    out.extend_from_slice(&body);
    out
}

/// The inverse of [`encode_write`], without copying: bytes fields are slices of `payload`.
pub fn decode_write(payload: Bytes) -> std::result::Result<Request, String> {
    use prost::Message;
    let Some(&tag) = payload.first() else {
        return Err("empty log payload".into());
    };
    let body = payload.slice(1..);
    let e = |e: prost::DecodeError| format!("undecodable log payload (tag {tag}): {e}");
    Ok(match tag {
        1 => Request::Put(pb::PutRequest::decode(body).map_err(e)?),
        2 => Request::DeleteRange(pb::DeleteRangeRequest::decode(body).map_err(e)?),
        3 => Request::Txn(pb::TxnRequest::decode(body).map_err(e)?),
        4 => Request::Compact(pb::CompactionRequest::decode(body).map_err(e)?),
        5 => Request::LeaseGrant(pb::LeaseGrantRequest::decode(body).map_err(e)?),
        6 => Request::LeaseRevoke(pb::LeaseRevokeRequest::decode(body).map_err(e)?),
        7 | 14 => {
            if body.len() % 8 != 0 || (tag == 14 && body.is_empty()) {
                return Err(format!(
                    "undecodable log payload (tag {tag}): {} bytes",
                    body.len()
                ));
            }
            let mut words = body
                .chunks_exact(8)
                .map(|c| <[u8; 8]>::try_from(c).expect("8 bytes"));
            let seen = (tag == 14).then(|| u64::from_le_bytes(words.next().expect("not empty")));
            Request::LeaseExpire(Expiry {
                seen,
                ids: words.map(i64::from_le_bytes).collect(),
            })
        }
        8 => Request::Alarm(pb::AlarmRequest::decode(body).map_err(e)?),
        10 => Request::LeaseKeepAlive(pb::LeaseKeepAliveRequest::decode(body).map_err(e)?),
        11 => {
            if body.len() % 16 != 0 {
                return Err(format!(
                    "undecodable log payload (tag 11): {} bytes",
                    body.len()
                ));
            }
            Request::LeaseCheckpoint(
                body.chunks_exact(16)
                    .map(|c| {
                        let w = |i: usize| i64::from_le_bytes(c[i..i + 8].try_into().expect("8"));
                        (w(0), w(8))
                    })
                    .collect(),
            )
        }
        12 => Request::Auth(decode_auth(body)?),
        13 => {
            if body.len() < 9 {
                return Err(format!(
                    "undecodable log payload (tag 13): {} bytes",
                    body.len()
                ));
            }
            let revision = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
            Request::Authed(Box::new(Authed {
                revision,
                user: String::new(),
                req: decode_write(body.slice(8..))?,
            }))
        }
        t => return Err(format!("unknown log payload tag {t}")),
    })
}

/// An auth change as a log payload: a kind byte, then the request's protobuf (passwords only
/// as bcrypt hashes: the clear one was emptied before; a simple token only as its SHA-256).
fn encode_auth(op: &AuthOp) -> Vec<u8> {
    use prost::Message;
    let (kind, body): (u8, Vec<u8>) = match op {
        AuthOp::Enable => (1, Vec::new()),
        AuthOp::Disable => (2, Vec::new()),
        AuthOp::Assign {
            user,
            token,
            revision,
            ..
        } => {
            let mut b = Vec::with_capacity(10 + user.len() + token.len());
            b.extend_from_slice(&revision.to_le_bytes());
            b.extend_from_slice(&(user.len() as u16).to_le_bytes());
            b.extend_from_slice(user.as_bytes());
            b.extend_from_slice(token.as_bytes());
            (3, b)
        }
        AuthOp::UserAdd(r) => {
            debug_assert!(r.password.is_empty(), "a clear password is never logged");
            (4, r.encode_to_vec())
        }
        AuthOp::UserDelete(r) => (5, r.encode_to_vec()),
        AuthOp::UserChangePassword(r) => {
            debug_assert!(r.password.is_empty(), "a clear password is never logged");
            (6, r.encode_to_vec())
        }
        AuthOp::UserGrantRole(r) => (7, r.encode_to_vec()),
        AuthOp::UserRevokeRole(r) => (8, r.encode_to_vec()),
        AuthOp::RoleAdd(r) => (9, r.encode_to_vec()),
        AuthOp::RoleDelete(r) => (10, r.encode_to_vec()),
        AuthOp::RoleGrantPermission(r) => (11, r.encode_to_vec()),
        AuthOp::RoleRevokePermission(r) => (12, r.encode_to_vec()),
        other => panic!("not an auth change: {other:?}"),
    };
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(kind);
    out.extend_from_slice(&body);
    out
}

fn decode_auth(payload: Bytes) -> std::result::Result<AuthOp, String> {
    use prost::Message;
    let Some(&kind) = payload.first() else {
        return Err("undecodable log payload (tag 12): empty".into());
    };
    let body = payload.slice(1..);
    let e = |e: prost::DecodeError| format!("undecodable log payload (tag 12, kind {kind}): {e}");
    Ok(match kind {
        1 => AuthOp::Enable,
        2 => AuthOp::Disable,
        3 => {
            let bad = || {
                format!(
                    "undecodable log payload (tag 12, kind 3): {} bytes",
                    body.len()
                )
            };
            let head = body.get(..10).ok_or_else(bad)?;
            let revision = u64::from_le_bytes(head[..8].try_into().expect("8"));
            let n = u16::from_le_bytes(head[8..].try_into().expect("2")) as usize;
            let user = body.get(10..10 + n).ok_or_else(bad)?;
            let token = &body[10 + n..];
            AuthOp::Assign {
                revision,
                user: String::from_utf8(user.to_vec()).map_err(|_| bad())?,
                token: String::from_utf8(token.to_vec()).map_err(|_| bad())?,
                simple: true,
            }
        }
        4 => AuthOp::UserAdd(pb::AuthUserAddRequest::decode(body).map_err(e)?),
        5 => AuthOp::UserDelete(pb::AuthUserDeleteRequest::decode(body).map_err(e)?),
        6 => {
            AuthOp::UserChangePassword(pb::AuthUserChangePasswordRequest::decode(body).map_err(e)?)
        }
        7 => AuthOp::UserGrantRole(pb::AuthUserGrantRoleRequest::decode(body).map_err(e)?),
        8 => AuthOp::UserRevokeRole(pb::AuthUserRevokeRoleRequest::decode(body).map_err(e)?),
        9 => AuthOp::RoleAdd(pb::AuthRoleAddRequest::decode(body).map_err(e)?),
        10 => AuthOp::RoleDelete(pb::AuthRoleDeleteRequest::decode(body).map_err(e)?),
        11 => AuthOp::RoleGrantPermission(
            pb::AuthRoleGrantPermissionRequest::decode(body).map_err(e)?,
        ),
        12 => AuthOp::RoleRevokePermission(
            pb::AuthRoleRevokePermissionRequest::decode(body).map_err(e)?,
        ),
        k => return Err(format!("unknown auth change kind {k} in a log payload")),
    })
}

/// The etcd API version ferrocd serves (what Status and /version report).
pub const ETCD_API_VERSION: &str = "3.5.13";

fn alarm_name(a: i32) -> &'static str {
    pb::AlarmType::try_from(a)
        .map(|t| t.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn header(revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        revision,
        ..Default::default()
    }
}

// ---- Validation (etcd's v3rpc/key.go), before anything is executed ----

fn check_range(r: &pb::RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if pb::range_request::SortOrder::try_from(r.sort_order).is_err()
        || pb::range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

fn check_put(r: &pb::PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(r: &pb::DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

fn check_txn(r: &pb::TxnRequest, max_txn_ops: usize) -> Result<()> {
    check_txn_ops(r, max_txn_ops)?;
    // Overlapping writes are checked after the cheap checks, as etcd does, to bound the work.
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &pb::TxnRequest, max_txn_ops: usize) -> Result<()> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Op::RequestRange(q)) => check_range(q)?,
            Some(Op::RequestPut(q)) => check_put(q)?,
            Some(Op::RequestDeleteRange(q)) => check_delete(q)?,
            Some(Op::RequestTxn(q)) => check_txn_ops(q, max_txn_ops)?,
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// A key interval as etcd's duplicate check sees it.
enum Interval<'a> {
    /// Exactly one key.
    Point(&'a [u8]),
    /// [begin, end). A delete with range_end "\0" gives [key, "\0"), which contains no
    /// non-empty key: etcd does not see from-key deletes as overlapping, nor do we.
    Span(&'a [u8], &'a [u8]),
}

impl Interval<'_> {
    fn contains(&self, k: &[u8]) -> bool {
        match *self {
            Interval::Point(p) => p == k,
            Interval::Span(b, e) => b <= k && k < e,
        }
    }
}

/// The puts of one level of a txn, and the delete intervals of it and its children; a put
/// that collides with another put or a delete is etcd's "duplicate key" error.
fn check_intervals(reqs: &[pb::RequestOp]) -> Result<(Vec<&[u8]>, Vec<Interval<'_>>)> {
    let mut dels: Vec<Interval<'_>> = reqs
        .iter()
        .filter_map(|r| match &r.request {
            Some(Op::RequestDeleteRange(d)) if d.range_end.is_empty() => {
                Some(Interval::Point(&d.key))
            }
            Some(Op::RequestDeleteRange(d)) => Some(Interval::Span(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let mut puts: Vec<&[u8]> = Vec::new();
    let collides = |puts: &[&[u8]], dels: &[Interval<'_>], k: &[u8]| {
        puts.contains(&k) || dels.iter().any(|d| d.contains(k))
    };
    for r in reqs {
        let Some(Op::RequestTxn(t)) = &r.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for &k in &puts_then {
            if collides(&puts, &dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.push(k);
        }
        for &k in &puts_else {
            // then and else exclude each other: the same key in both is fine.
            let in_other_put = puts.contains(&k) && !puts_then.contains(&k);
            if in_other_put || dels.iter().any(|d| d.contains(k)) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.push(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for r in reqs {
        let Some(Op::RequestPut(p)) = &r.request else {
            continue;
        };
        if collides(&puts, &dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.push(&p.key);
    }
    Ok((puts, dels))
}

// ---- Execution (etcd's apply.go) ----

/// The revision `req` trims the index to at once, if it does (a physical compaction): reads
/// walked in steps at an older revision must be complete before it runs, since they still
/// read what it drops.
pub fn trims_now(req: &Request) -> Option<i64> {
    match req {
        Request::Authed(a) => trims_now(&a.req),
        Request::Compact(r) if r.physical => Some(r.revision),
        _ => None,
    }
}

/// [`trims_now`] of a logged payload ([`decode_write`]'s format), decoding only a
/// compaction (a Txn of thousands of operations is not decoded again for it).
pub fn payload_trims_now(payload: &Bytes) -> Option<i64> {
    match payload.first()? {
        4 => trims_now(&decode_write(payload.clone()).ok()?),
        13 => payload_trims_now(&payload.slice(9.min(payload.len())..)),
        _ => None,
    }
}

/// A read as [`KvState::read_begin`] started it.
pub enum Read {
    Answered(Result<Response>),
    Stepped(SteppedRange),
}

/// A Range walked a bounded number of keys at a time ([`KvState::read_begin`]).
pub struct SteppedRange {
    req: pb::RangeRequest,
    read: crate::mvcc::SteppedRead,
}

impl SteppedRange {
    /// The revision it reads at: a compaction past it must not trim the index until it ends.
    pub fn rev(&self) -> i64 {
        self.read.rev()
    }
}

/// A Range, at the store or inside a write transaction (`read` does the index read).
fn range<S>(
    src: &S,
    r: &pb::RangeRequest,
    read: impl Fn(&S, KeySpan<'_>, ReadOpts) -> std::result::Result<RangeResult, MvccError>,
) -> Result<pb::RangeResponse> {
    let rr = read(src, KeySpan::new(&r.key, &r.range_end), range_opts(r))?;
    Ok(range_response(r, rr))
}

/// What a Range reads from the index.
fn range_opts(r: &pb::RangeRequest) -> ReadOpts {
    use pb::range_request::{SortOrder, SortTarget};
    let sort_order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // Sorting or filtering needs every match; otherwise one more than the limit tells `more`.
    let limit = if sort_order != SortOrder::None || filtered || r.limit <= 0 {
        0
    } else {
        r.limit as usize + 1
    };
    ReadOpts {
        rev: r.revision,
        limit,
        count_only: r.count_only,
        keys_only: r.keys_only && sort_target != SortTarget::Value,
    }
}

/// A Range's response from what the index read gave: filtered, sorted, limited.
fn range_response(r: &pb::RangeRequest, rr: RangeResult) -> pb::RangeResponse {
    use pb::range_request::{SortOrder, SortTarget};
    let sort_order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let mut kvs = rr.kvs;
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    // The index returns keys in ascending order, so etcd sorts by default only when the
    // target is not the key.
    let order = match (sort_order, sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    if order != SortOrder::None {
        let key = |a: &KeyValue, b: &KeyValue| match sort_target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        // Stable, with the comparison reversed for DESCEND (not a reversed result), which is
        // what Go's sort gives for the small slices clients usually ask for.
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| key(b, a));
        } else {
            kvs.sort_by(key);
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value = Bytes::new());
    }
    pb::RangeResponse {
        header: Some(header(rr.rev)),
        kvs,
        more,
        count: rr.count as i64,
    }
}

fn read_in_txn<V: ValueStore>(
    t: &WriteTxn<'_, V>,
    span: KeySpan<'_>,
    o: ReadOpts,
) -> std::result::Result<RangeResult, MvccError> {
    t.range(span, o)
}

/// The checks etcd makes of a put before any write of its transaction happens.
fn check_put_target<V: ValueStore>(
    t: &WriteTxn<'_, V>,
    r: &pb::PutRequest,
    lease_exists: &dyn Fn(i64) -> bool,
) -> Result<()> {
    if r.ignore_value || r.ignore_lease {
        let rr = t.range(KeySpan::Single(&r.key), ReadOpts::default())?;
        if rr.kvs.is_empty() {
            return Err(EtcdError::KeyNotFound);
        }
    }
    if r.lease != 0 && !lease_exists(r.lease) {
        return Err(EtcdError::LeaseNotFound);
    }
    Ok(())
}

fn put<V: ValueStore>(t: &mut WriteTxn<'_, V>, r: &pb::PutRequest) -> Result<pb::PutResponse> {
    let mut prev = None;
    if r.ignore_value || r.ignore_lease || r.prev_kv {
        prev = t
            .range(KeySpan::Single(&r.key), ReadOpts::default())?
            .kvs
            .pop();
        if (r.ignore_value || r.ignore_lease) && prev.is_none() {
            return Err(EtcdError::KeyNotFound);
        }
    }
    let value = match (&prev, r.ignore_value) {
        (Some(p), true) => p.value.clone(),
        _ => r.value.clone(),
    };
    let lease = match (&prev, r.ignore_lease) {
        (Some(p), true) => p.lease,
        _ => r.lease,
    };
    let rev = t.put(&r.key, &value, lease);
    Ok(pb::PutResponse {
        header: Some(header(rev)),
        prev_kv: if r.prev_kv { prev } else { None },
    })
}

fn delete_range<V: ValueStore>(
    t: &mut WriteTxn<'_, V>,
    r: &pb::DeleteRangeRequest,
) -> Result<pb::DeleteRangeResponse> {
    let span = KeySpan::new(&r.key, &r.range_end);
    let prev_kvs = if r.prev_kv {
        t.range(span, ReadOpts::default())?.kvs
    } else {
        Vec::new()
    };
    let (deleted, rev) = t.delete_range(span);
    Ok(pb::DeleteRangeResponse {
        header: Some(header(rev)),
        deleted,
        prev_kvs,
    })
}

/// clientv3's prefix end: the key with its last byte below 0xff incremented; "\0" when
/// every byte is 0xff.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("non-empty") += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// etcd's quota estimates (etcdserver/quota.go): a key's metadata, and a lease.
const KV_OVERHEAD_BYTES: u64 = 256;
const LEASE_OVERHEAD_BYTES: u64 = 64;

fn cost_put(r: &pb::PutRequest) -> u64 {
    KV_OVERHEAD_BYTES + r.key.len() as u64 + r.value.len() as u64
}

/// The larger branch's puts (nested txns count their puts too).
fn cost_txn(r: &pb::TxnRequest) -> u64 {
    let ops = |ops: &[pb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(pb::request_op::Request::RequestPut(p)) => cost_put(p),
                Some(pb::request_op::Request::RequestTxn(t)) => cost_txn(t),
                _ => 0,
            })
            .sum()
    };
    ops(&r.success).max(ops(&r.failure))
}

/// True when a txn only reads (etcd serves those without Raft and without the size limit).
pub fn txn_is_read_only(r: &pb::TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(_)) | None => true,
            Some(Op::RequestTxn(t)) => txn_is_read_only(t),
            _ => false,
        })
}

/// etcd's compareKV: a missing target field compares as zero / empty.
fn compare_kv(c: &pb::Compare, kv: &KeyValue) -> bool {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    use std::cmp::Ordering;
    let ord: Ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value[..].cmp(v)
        }
        Ok(t) => {
            let want = match (t, &c.target_union) {
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(v)))
                | (CompareTarget::Mod, Some(TargetUnion::ModRevision(v)))
                | (CompareTarget::Version, Some(TargetUnion::Version(v)))
                | (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => *v,
                _ => 0,
            };
            let have = match t {
                CompareTarget::Create => kv.create_revision,
                CompareTarget::Mod => kv.mod_revision,
                CompareTarget::Version => kv.version,
                _ => kv.lease,
            };
            have.cmp(&want)
        }
        // An unknown target compares equal (etcd's switch falls through with result 0).
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

fn apply_compare<V: ValueStore>(s: &Store<V>, c: &pb::Compare) -> bool {
    let Ok(rr) = s.range(KeySpan::new(&c.key, &c.range_end), ReadOpts::default()) else {
        return false;
    };
    if rr.kvs.is_empty() {
        // A missing key has no value to compare, not even an empty one.
        if c.target == pb::compare::CompareTarget::Value as i32 {
            return false;
        }
        return compare_kv(c, &KeyValue::default());
    }
    rr.kvs.iter().all(|kv| compare_kv(c, kv))
}

/// Every compare of a txn and of the nested txns on the taken branches is evaluated against
/// the store as it was before the txn (etcd's compareToPath).
fn compare_to_path<V: ValueStore>(s: &Store<V>, r: &pb::TxnRequest, path: &mut Vec<bool>) {
    let ok = r.compare.iter().all(|c| apply_compare(s, c));
    path.push(ok);
    for op in if ok { &r.success } else { &r.failure } {
        if let Some(Op::RequestTxn(t)) = &op.request {
            compare_to_path(s, t, path);
        }
    }
}

/// Checks of the ops on the taken branches, before any write (etcd's checkRequests): puts
/// first (`check_puts`), then ranges, so the put's error wins when both would fail.
///
/// `dels` collects the deletes met so far in apply order. etcd's duplicate-key rule lets a
/// from-key delete through, so a later `ignore_value`/`ignore_lease` put of a key it deleted
/// passes etcd's checks and then fails halfway through the apply, which panics etcd 3.4
/// ("unexpected error during txn"). Here it fails before any write, with etcd's error.
fn check_requests<'a, V: ValueStore>(
    t: &WriteTxn<'_, V>,
    leases: &Lessor,
    r: &'a pb::TxnRequest,
    path: &[bool],
    check_puts: bool,
    dels: &mut Vec<KeySpan<'a>>,
) -> Result<usize> {
    let mut used = 1;
    for op in if path[0] { &r.success } else { &r.failure } {
        match &op.request {
            Some(Op::RequestPut(p)) if check_puts => {
                let ignores = p.ignore_value || p.ignore_lease;
                if ignores && dels.iter().any(|d| d.contains(&p.key)) {
                    return Err(EtcdError::KeyNotFound);
                }
                check_put_target(t, p, &|id| leases.exists(id))?;
            }
            Some(Op::RequestDeleteRange(d)) => dels.push(KeySpan::new(&d.key, &d.range_end)),
            Some(Op::RequestRange(q)) if !check_puts && q.revision != 0 => {
                if q.revision > t.read_rev() {
                    return Err(EtcdError::FutureRev);
                }
                if q.revision < t.store().compact_rev() {
                    return Err(EtcdError::Compacted);
                }
            }
            Some(Op::RequestTxn(n)) => {
                used += check_requests(t, leases, n, &path[used..], check_puts, dels)?;
            }
            _ => {}
        }
    }
    Ok(used)
}

fn txn<V: ValueStore>(
    s: &mut Store<V>,
    leases: &Lessor,
    r: &pb::TxnRequest,
) -> Result<pb::TxnResponse> {
    let mut path = Vec::new();
    compare_to_path(s, r, &mut path);
    let mut t = s.write();
    let read_only = txn_is_read_only(r);
    if !read_only {
        check_requests(&t, leases, r, &path, true, &mut Vec::new())?;
    }
    check_requests(&t, leases, r, &path, false, &mut Vec::new())?;
    // Every failure an op can have was checked above; one now would leave the txn half
    // applied, so it is a bug, not an input error (etcd panics here too).
    let mut resp = apply_txn(&mut t, r, &path, &mut 0)
        .unwrap_or_else(|e| panic!("txn failed after its checks passed: {e}"));
    let rev = t.read_rev();
    drop(t);
    resp.header = Some(header(rev));
    Ok(resp)
}

/// Applies the taken branch; `at` walks `path` in the order nested txns were evaluated.
fn apply_txn<V: ValueStore>(
    t: &mut WriteTxn<'_, V>,
    r: &pb::TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<pb::TxnResponse> {
    use pb::response_op::Response as R;
    let succeeded = path[*at];
    *at += 1;
    let ops = if succeeded { &r.success } else { &r.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Op::RequestRange(q)) => Some(R::ResponseRange(range(t, q, read_in_txn)?)),
            Some(Op::RequestPut(q)) => Some(R::ResponsePut(put(t, q)?)),
            Some(Op::RequestDeleteRange(q)) => Some(R::ResponseDeleteRange(delete_range(t, q)?)),
            Some(Op::RequestTxn(q)) => {
                let mut nested = apply_txn(t, q, path, at)?;
                // etcd leaves the headers of nested txn responses empty.
                nested.header = Some(pb::ResponseHeader::default());
                Some(R::ResponseTxn(nested))
            }
            None => None,
        };
        responses.push(pb::ResponseOp { response });
    }
    Ok(pb::TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint waits for a compaction's trimming, but not past
    /// `CHECKPOINT_TRIM_WAIT_MAX`; a wait that stopped asking starts over.
    #[test]
    fn a_checkpoint_waits_for_trimming_for_a_bounded_time() {
        let mut s = KvState::in_memory(1, 2);
        for i in 0..3 {
            s.execute(Request::Put(pb::PutRequest {
                key: format!("k{i}").into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            }))
            .unwrap();
        }
        let t0 = std::time::Instant::now();
        assert!(s.checkpoint_may_begin(t0));
        s.execute(Request::Compact(pb::CompactionRequest {
            revision: 3,
            physical: false,
        }))
        .unwrap();
        let max = crate::limits::CHECKPOINT_TRIM_WAIT_MAX;
        let step = std::time::Duration::from_millis(250);
        let mut t = t0;
        while t < t0 + max {
            assert!(!s.checkpoint_may_begin(t), "{:?} in", t - t0);
            t += step;
        }
        assert!(s.checkpoint_may_begin(t));
        // Asked again after a pause: a new wait.
        let later = t + std::time::Duration::from_secs(2);
        assert!(!s.checkpoint_may_begin(later));
        while s.compact_step(1) {}
        assert!(s.checkpoint_may_begin(later));
    }

    fn expire(ids: &[i64], seen: u64) -> Request {
        Request::LeaseExpire(Expiry {
            ids: ids.to_vec(),
            seen: Some(seen),
        })
    }

    /// A cluster's expiry spares a lease renewed by a keepalive logged after the leader's
    /// applied index, on a member that applied the keepalive and on one restored from a
    /// checkpoint taken after it alike.
    #[test]
    fn an_expiry_spares_a_lease_renewed_after_the_leader_decided() {
        let mut s = KvState::in_memory(1, 2);
        let grant = |id| Request::LeaseGrant(pb::LeaseGrantRequest { ttl: 10, id });
        let keepalive = |id| Request::LeaseKeepAlive(pb::LeaseKeepAliveRequest { id });
        s.apply_logged(grant(5), 3).unwrap();
        s.apply_logged(grant(6), 4).unwrap();
        let Ok(Response::LeaseKeepAlive(r)) = s.apply_logged(keepalive(5), 9) else {
            panic!("a logged keepalive of a lease that exists renews it")
        };
        assert_eq!(r.ttl, 10);
        let (rev, meta) = s.checkpoint_begin(None);
        let (items, next) = s.checkpoint_step(None, rev, 100).expect("walked");
        assert!(items.is_empty() && next.is_none());
        let dir = tempfile::tempdir().unwrap();
        let w = crate::log::checkpoint::Writer::create(dir.path(), 1, &meta).unwrap();
        let loaded = crate::log::checkpoint::load(1, &w.finish().unwrap()).unwrap();
        let mut r = KvState::in_memory(1, 3);
        r.restore_checkpoint(loaded, 0).unwrap();
        for m in [&mut s, &mut r] {
            // Decided having applied index 8: lease 5's renewal at 9 is spared, 6 is not.
            let revoked = m.apply_logged(expire(&[5, 6], 8), 10);
            assert!(
                matches!(revoked, Ok(Response::LeaseExpire(1))),
                "{revoked:?}"
            );
            assert_eq!(m.leases.ids(), [5]);
            // Decided having seen it: revoked.
            let revoked = m.apply_logged(expire(&[5], 9), 11);
            assert!(
                matches!(revoked, Ok(Response::LeaseExpire(1))),
                "{revoked:?}"
            );
            assert!(m.leases.ids().is_empty());
        }
    }

    #[test]
    fn a_write_checked_at_an_older_auth_revision_is_refused_and_changes_nothing() {
        let mut s = KvState::in_memory(1, 2);
        let put = |rev: u64| {
            Request::Authed(Box::new(Authed {
                revision: rev,
                user: "u".into(),
                req: Request::Put(pb::PutRequest {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v"),
                    ..Default::default()
                }),
            }))
        };
        assert_eq!(s.auth().revision, 1);
        s.execute(put(1)).unwrap();
        assert_eq!(s.store().rev(), 2);
        // A permission change lands between the check and the apply.
        s.execute(Request::Auth(AuthOp::RoleAdd(pb::AuthRoleAddRequest {
            name: "r".into(),
        })))
        .unwrap();
        assert_eq!(s.auth().revision, 2);
        assert_eq!(s.precheck(&put(1)).unwrap_err(), EtcdError::AuthOldRevision);
        assert_eq!(s.execute(put(1)).unwrap_err(), EtcdError::AuthOldRevision);
        assert_eq!(s.store().rev(), 2, "nothing was written");
        // Replayed from the log, the same record decides the same.
        let logged = decode_write(Bytes::from(encode_write(&put(1)))).unwrap();
        assert_eq!(s.execute(logged).unwrap_err(), EtcdError::AuthOldRevision);
        s.execute(put(2)).unwrap();
        assert_eq!(s.store().rev(), 3);
    }

    #[test]
    fn every_logged_write_round_trips_with_its_tag() {
        let alarm = |action: pb::alarm_request::AlarmAction| pb::AlarmRequest {
            action: action as i32,
            member_id: 7,
            alarm: pb::AlarmType::Nospace as i32,
        };
        let writes = [
            (
                1u8,
                Request::Put(pb::PutRequest {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v"),
                    ..Default::default()
                }),
            ),
            (
                4,
                Request::Compact(pb::CompactionRequest {
                    revision: 3,
                    physical: false,
                }),
            ),
            (
                5,
                Request::LeaseGrant(pb::LeaseGrantRequest { ttl: 10, id: 9 }),
            ),
            (
                7,
                Request::LeaseExpire(Expiry {
                    ids: vec![1, -2, i64::MAX],
                    seen: None,
                }),
            ),
            (
                14,
                Request::LeaseExpire(Expiry {
                    ids: vec![1, -2, i64::MAX],
                    seen: Some(u64::MAX - 3),
                }),
            ),
            (
                8,
                Request::Alarm(alarm(pb::alarm_request::AlarmAction::Activate)),
            ),
            (
                8,
                Request::Alarm(alarm(pb::alarm_request::AlarmAction::Deactivate)),
            ),
            (12, Request::Auth(AuthOp::Enable)),
            (
                12,
                Request::Auth(AuthOp::Assign {
                    user: "u".into(),
                    token: "digest".into(),
                    simple: true,
                    revision: 5,
                }),
            ),
            (
                12,
                Request::Auth(AuthOp::UserAdd(pb::AuthUserAddRequest {
                    name: "u".into(),
                    hashed_password: "$2b$04$hash".into(),
                    ..Default::default()
                })),
            ),
            (
                12,
                Request::Auth(AuthOp::RoleRevokePermission(
                    pb::AuthRoleRevokePermissionRequest {
                        role: "r".into(),
                        key: Bytes::from_static(b"a"),
                        range_end: Bytes::from_static(b"b"),
                    },
                )),
            ),
            (
                13,
                Request::Authed(Box::new(Authed {
                    revision: 3,
                    user: String::new(),
                    req: Request::Put(pb::PutRequest {
                        key: Bytes::from_static(b"k"),
                        ..Default::default()
                    }),
                })),
            ),
        ];
        for (tag, req) in writes {
            assert!(is_write(&req), "{req:?}");
            let payload = encode_write(&req);
            assert_eq!(payload[0], tag);
            let back = decode_write(Bytes::from(payload)).unwrap();
            assert_eq!(format!("{back:?}"), format!("{req:?}"));
        }
        let list = Request::Alarm(alarm(pb::alarm_request::AlarmAction::Get));
        assert!(!is_write(&list), "listing alarms is not logged");
        assert!(decode_write(Bytes::from_static(&[9])).is_err());
        assert!(decode_write(Bytes::from_static(&[12, 3, 1])).is_err());
        assert!(decode_write(Bytes::from_static(&[12, 99])).is_err());
        assert!(decode_write(Bytes::from_static(&[13, 1, 2])).is_err());
    }

    /// A logged physical compaction, alone or admitted under auth, is found from its payload;
    /// nothing else is (a Raft loop ends the reads below it first).
    #[test]
    fn a_logged_physical_compaction_is_found_from_its_payload() {
        let compact = |physical| {
            Request::Compact(pb::CompactionRequest {
                revision: 42,
                physical,
            })
        };
        let authed = |req| {
            Request::Authed(Box::new(Authed {
                revision: 7,
                user: String::new(),
                req,
            }))
        };
        let found = |req: Request| payload_trims_now(&Bytes::from(encode_write(&req)));
        assert_eq!(found(compact(true)), Some(42));
        assert_eq!(found(authed(compact(true))), Some(42));
        assert_eq!(found(compact(false)), None);
        assert_eq!(found(authed(compact(false))), None);
        let put = Request::Put(pb::PutRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        });
        assert_eq!(found(put), None);
        for bad in [
            &[][..],
            &[4, 0xff][..],
            &[13][..],
            &[13, 1, 2][..],
            &[0x30, b'{'][..],
        ] {
            assert_eq!(payload_trims_now(&Bytes::copy_from_slice(bad)), None);
        }
    }
}
