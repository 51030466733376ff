//! The owner shard's apply loop, and cross-shard forwarding to it.
//!
//! Every request, from shard 0's own connections or forwarded by another shard over a bounded
//! channel, enters one bounded queue. The apply loop takes everything queued (up to
//! `limits::APPLY_BATCH_REQUESTS_MAX`), appends the batch's writes to the log with one write
//! and one fdatasync (group commit), then executes the batch in arrival order and answers.
//! Reads of a batch are answered after its fdatasync too, so no client ever sees a write that
//! could still be lost. While one batch's fdatasync is in flight, the next batch gathers.
//!
//! Each write is executed as decoded back from the log's mapping, so the index's values point
//! into the log; recovery replays the log through the same `KvState::execute`.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};

use super::checkpoint_writer::{Batch, WriterThread};
use super::metrics::METRICS;
use crate::compactor::{self, AutoCompaction};
use crate::error::{EtcdError, Status};
use crate::kv::{self, KvOptions, KvState, Request, Response};
use crate::limits::{
    APPLY_BATCH_REQUESTS_MAX, COMPACT_KEYS_PER_STEP, ONE_CLIENT_BATCHES, QUIET_BATCHES,
    QUIET_BLOCKING_BATCH_BELOW, SHARD_QUEUE_DEPTH,
};
use crate::log::{checkpoint, Log, LogStats, Recovered};
use crate::proto::etcdserverpb as pb;

pub(crate) type Answer = Result<Response, EtcdError>;
type ToOwner = (u64, Request);
type FromOwner = (u64, Answer);
pub(crate) type Job = (Request, Reply);
/// A wake-up the owner sends another shard after a batch that moved the revision (which the
/// shard reads from the shared atomic).
type RevNote = ();

/// Where an answer goes: a caller on the owner shard, or a request id on another shard's
/// answer channel (answered by the apply loop itself: no task or channel per request).
pub(crate) enum Reply {
    Local(AnswerTx),
    Remote(Rc<ConnectedSender<FromOwner>>, u64),
}

impl Reply {
    pub(crate) async fn send(self, answer: Answer) {
        match self {
            // The caller may have given up (deadline).
            Reply::Local(tx) => tx.send(answer),
            Reply::Remote(tx, id) => {
                // Wait only when the other shard's answer queue is full (back-pressure).
                use glommio::{GlommioError, ResourceType};
                if let Err(GlommioError::WouldBlock(ResourceType::Channel(item))) =
                    tx.try_send((id, answer))
                {
                    let _ = tx.send(item).await;
                }
            }
        }
    }
}

/// One call's answer on the shard it waits on: an `Rc` cell and a waker, where a channel per
/// call allocated a queue and its state (its make, send, receive and drop were about 1% of
/// the owner shard's samples at put c=100).
pub(crate) fn answer_slot() -> (AnswerTx, AnswerRx) {
    let slot = Rc::new(AnswerSlot::default());
    (AnswerTx(slot.clone()), AnswerRx(slot))
}

#[derive(Default)]
pub(crate) struct AnswerSlot {
    answer: Cell<Option<Answer>>,
    waker: Cell<Option<std::task::Waker>>,
    sender_gone: Cell<bool>,
}

/// Sends one answer; dropped without one, its receiver gets `None`.
pub(crate) struct AnswerTx(Rc<AnswerSlot>);

impl AnswerTx {
    /// A receiver that has given up (deadline) leaves the answer to be dropped with the slot.
    pub(crate) fn send(self, answer: Answer) {
        self.0.answer.set(Some(answer));
    }
}

impl Drop for AnswerTx {
    fn drop(&mut self) {
        self.0.sender_gone.set(true);
        if let Some(w) = self.0.waker.take() {
            w.wake();
        }
    }
}

pub(crate) struct AnswerRx(Rc<AnswerSlot>);

impl AnswerRx {
    /// The answer, or `None` if its sender was dropped without one.
    pub(crate) async fn recv(self) -> Option<Answer> {
        std::future::poll_fn(|cx| {
            if let Some(a) = self.0.answer.take() {
                return std::task::Poll::Ready(Some(a));
            }
            if self.0.sender_gone.get() {
                return std::task::Poll::Ready(None);
            }
            self.0.waker.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        })
        .await
    }
}

/// Where the state lives and how it is made durable.
#[derive(Clone, Debug)]
pub(crate) struct StateOptions {
    pub kv: KvOptions,
    /// The log's directory; None keeps everything in memory (tests).
    pub log_dir: Option<PathBuf>,
    pub segment_bytes: u64,
    /// Wait this long for more requests before flushing a batch smaller than
    /// `SMALL_BATCH_RECORDS` (0: never wait).
    pub batch_wait_us: u64,
    pub auto_compaction: crate::compactor::AutoCompaction,
    /// The cluster settings ([`super::ServerOptions::cluster`]): with several members the
    /// Raft loop replaces the apply loop; alone, the apply loop hands over to it at the first
    /// membership change.
    pub cluster: Option<super::replica::ClusterOptions>,
}

/// A batch below this many requests may wait `batch_wait_us` for more.
const SMALL_BATCH_RECORDS: usize = 16;
/// Long reads taking turns at once; past it a read waits (after its first step) for one to end.
const STEPPED_READS_MAX: usize = 64;
/// The first step of a read that comes past `STEPPED_READS_MAX` taking turns.
const WAITING_FIRST_STEP_KEYS: usize = 100;

/// The ends one shard takes with it.
pub(crate) enum Links {
    /// Shard 0: the revision every shard reads, and per other shard one receiver of
    /// requests, one sender of answers, one sender of revision notes and that shard's count
    /// of subscribers (notes go only to a shard with some).
    Owner(Arc<AtomicI64>, Vec<OwnerEnds>),
    /// Another shard: the owner's revision, its request sender, answer receiver,
    /// revision-note receiver and count of subscribers.
    Forwarder(
        Arc<AtomicI64>,
        SharedSender<ToOwner>,
        SharedReceiver<FromOwner>,
        SharedReceiver<RevNote>,
        Arc<AtomicUsize>,
    ),
}

/// The owner's ends toward one other shard: its requests, their answers, revision notes, and
/// that shard's count of subscribers.
type OwnerEnds = (
    SharedReceiver<ToOwner>,
    SharedSender<FromOwner>,
    SharedSender<RevNote>,
    Arc<AtomicUsize>,
);

/// The channels between every shard and the owner, created before the shards start: the
/// ends of every shard, in shard order.
pub(crate) fn mesh(shards: usize) -> Vec<Links> {
    let rev = Arc::new(AtomicI64::new(0));
    let mut owner_ends = Vec::new();
    let mut forwarders = Vec::new();
    for _ in 1..shards {
        let (req_tx, req_rx) = shared_channel::new_bounded(SHARD_QUEUE_DEPTH);
        let (ans_tx, ans_rx) = shared_channel::new_bounded(SHARD_QUEUE_DEPTH);
        // One note in flight is enough: a shard reads the newest revision (the shared atomic)
        // when it wakes.
        let (note_tx, note_rx) = shared_channel::new_bounded(1);
        let listening = Arc::new(AtomicUsize::new(0));
        owner_ends.push((req_rx, ans_tx, note_tx, listening.clone()));
        forwarders.push(Links::Forwarder(
            rev.clone(),
            req_tx,
            ans_rx,
            note_rx,
            listening,
        ));
    }
    let mut links = vec![Links::Owner(rev, owner_ends)];
    links.extend(forwarders);
    links
}

impl Links {
    /// Connects this shard's channel ends (on the shard's own executor). On the owner: opens
    /// the log, replays it into a new state, and starts the apply loop, the lease expiry
    /// ticker and one forwarding task per other shard. Returns how to reach the state and
    /// this shard's revision notifier (for watch streams).
    pub async fn connect(self, opts: StateOptions) -> io::Result<(Owner, Rc<Notifier>)> {
        match self {
            Links::Owner(rev, ends) => {
                let notifier = Rc::new(Notifier::shared(rev, Arc::default()));
                // The channels first: a shard waiting for a channel's other end to connect
                // keeps its executor polling (glommio wakes connection waiters on every turn),
                // and the other shards spun a core each for the whole recovery (62% of a
                // restart's samples with two shards). They wait instead for the first
                // revision note, sent once the state is ready.
                let mut connected = Vec::with_capacity(ends.len());
                for (req_rx, ans_tx, note_tx, listening) in ends {
                    let (req_rx, (ans_tx, note_tx)) = futures_lite::future::zip(
                        req_rx.connect(),
                        futures_lite::future::zip(ans_tx.connect(), note_tx.connect()),
                    )
                    .await;
                    connected.push((req_rx, ans_tx, note_tx, listening));
                }
                let wait = std::time::Duration::from_micros(opts.batch_wait_us);
                let checkpointed_log = opts.log_dir.clone();
                let auto_compaction = opts.auto_compaction;
                let tx = match opts.cluster.clone() {
                    Some(cluster) if cluster.is_several() => {
                        let rec = super::replica::recover(&opts, &cluster).await?;
                        super::replica::start(rec, cluster, notifier.clone())?
                    }
                    // One member: it runs without Raft until its first membership change,
                    // unless its data says it already made one.
                    alone => {
                        let mut opts = opts.clone();
                        if let Some(dir) = &opts.log_dir {
                            super::replica::stored_identity(dir, &mut opts.kv.identity);
                        }
                        let opened = open(&opts).await?;
                        let dir = opts.log_dir.clone().unwrap_or_default();
                        if opened.is_cluster_member() {
                            let Some(cluster) = alone else {
                                return Err(io::Error::other(format!(
                                    "{}: written by a member of a cluster; start it with its \
                                     peer URLs",
                                    dir.display()
                                )));
                            };
                            let rec =
                                super::replica::recover_opened(opened, &opts, &cluster).await?;
                            super::replica::start(rec, cluster, notifier.clone())?
                        } else {
                            let (state, log) = recover(opened, &dir)?;
                            notifier.notify(state.store().rev());
                            let (tx, rx) = local_channel::new_bounded(SHARD_QUEUE_DEPTH);
                            let grow = alone.filter(|_| log.is_some()).map(|cluster| Grow {
                                cluster,
                                dir: dir.clone(),
                            });
                            let apply = apply_loop(rx, state, log, wait, notifier.clone(), grow);
                            glommio::spawn_local(apply).detach();
                            tx
                        }
                    }
                };
                let tx = Rc::new(tx);
                glommio::spawn_local(lease_ticker(Owner::Local(tx.clone()))).detach();
                // Every member checkpoints its state and releases the log before it.
                if let Some(dir) = &checkpointed_log {
                    let owner = Owner::Local(tx.clone());
                    glommio::spawn_local(checkpointer(owner, checkpoint_dir(dir))).detach();
                }
                glommio::spawn_local(auto_compactor(
                    Owner::Local(tx.clone()),
                    notifier.clone(),
                    auto_compaction,
                ))
                .detach();
                for (req_rx, ans_tx, note_tx, listening) in connected {
                    let notes = notifier.subscribe();
                    glommio::spawn_local(async move {
                        // The first note tells the shard the state is ready. Then, after each
                        // batch while the shard has subscribers: waits while it has not read
                        // the previous note, and sends one. A note only wakes: the shard's
                        // subscribers read the revision from the shared atomic, so a skipped
                        // note hides nothing (see `Notifier`).
                        if note_tx.send(()).await.is_err() {
                            return;
                        }
                        while notes.recv().await.is_some() {
                            if listening.load(Ordering::SeqCst) == 0 {
                                continue;
                            }
                            if note_tx.send(()).await.is_err() {
                                break;
                            }
                        }
                    })
                    .detach();
                    let tx = tx.clone();
                    let ans_tx = Rc::new(ans_tx);
                    glommio::spawn_local(async move {
                        while let Some((id, req)) = req_rx.recv().await {
                            if tx
                                .send((req, Reply::Remote(ans_tx.clone(), id)))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    })
                    .detach();
                }
                Ok((Owner::Local(tx), notifier))
            }
            Links::Forwarder(rev, req_tx, ans_rx, note_rx, listening) => {
                let notifier = Rc::new(Notifier::shared(rev, listening));
                let (req_tx, (ans_rx, note_rx)) = futures_lite::future::zip(
                    req_tx.connect(),
                    futures_lite::future::zip(ans_rx.connect(), note_rx.connect()),
                )
                .await;
                // The owner's first note: its state is ready (it sleeps here meanwhile).
                let Some(()) = note_rx.recv().await else {
                    // The owner failed to start and reports why; the process ends with that.
                    return std::future::pending().await;
                };
                notifier.notify(notifier.rev());
                let n = notifier.clone();
                glommio::spawn_local(async move {
                    while let Some(()) = note_rx.recv().await {
                        n.notify(n.rev());
                    }
                })
                .detach();
                let waiting: Rc<std::cell::RefCell<HashMap<u64, AnswerTx>>> = Rc::default();
                let w = waiting.clone();
                glommio::spawn_local(async move {
                    while let Some((id, answer)) = ans_rx.recv().await {
                        let waiter = w.borrow_mut().remove(&id);
                        if let Some(tx) = waiter {
                            // The caller may have given up (deadline); nothing to do then.
                            tx.send(answer);
                        }
                    }
                    // The owner is gone: every caller still waiting gets `Stopped`.
                    let gone = std::mem::take(&mut *w.borrow_mut());
                    drop(gone);
                })
                .detach();
                let owner = Owner::Remote(Rc::new(Remote {
                    req_tx,
                    waiting,
                    next_id: Cell::new(0),
                }));
                Ok((owner, notifier))
            }
        }
    }
}

/// What a data directory holds, opened and checked but not replayed yet.
pub(crate) struct Opened {
    /// A fresh state with the newest checkpoint restored, if any.
    pub state: KvState,
    /// The log (None: state kept in memory only).
    pub rec: Option<Recovered>,
    /// Raft's state at the newest checkpoint, and that checkpoint's seq, when a member of a
    /// cluster took it.
    pub raft: Option<(crate::consensus::RaftMeta, u64)>,
    /// The newest checkpoint's seq (0: none).
    pub checkpoint_seq: u64,
}

impl Opened {
    /// Whether a cluster member wrote this data: its checkpoint knows Raft, or its log holds
    /// Raft's records (a member that started alone and grew holds both kinds, Raft's last).
    pub fn is_cluster_member(&self) -> bool {
        self.raft.is_some()
            || self.rec.as_ref().is_some_and(|r| {
                r.payloads
                    .iter()
                    .rev()
                    .any(|p| crate::consensus::is_raft_record(p))
            })
    }
}

/// A fresh state, and the log opened and checked (its records not yet replayed); a cluster
/// member's checkpoint also gives Raft's state at it.
pub(crate) async fn open(opts: &StateOptions) -> io::Result<Opened> {
    METRICS.member_id.store(
        opts.kv.identity.member_id,
        std::sync::atomic::Ordering::Relaxed,
    );
    METRICS
        .quota_bytes
        .set(opts.kv.quota_bytes.map_or(0, |q| q as i64));
    let mut state = KvState::new(opts.kv.clone());
    let Some(dir) = &opts.log_dir else {
        return Ok(Opened {
            state,
            rec: None,
            raft: None,
            checkpoint_seq: 0,
        });
    };
    // The lock first: finding the newest checkpoint removes older and unfinished ones.
    let lock = Log::lock(dir)?;
    // Restore the newest checkpoint, then replay the log after it.
    let mut from_seq = 1;
    let mut raft = None;
    let cdir = checkpoint_dir(dir);
    if let Some((seq, paths)) = checkpoint::newest(&cdir)? {
        let started = std::time::Instant::now();
        let bytes = paths
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        let loaded = checkpoint::load(seq, &paths)?;
        let items = loaded.count;
        raft = state
            .restore_checkpoint(loaded, bytes)
            .map_err(io::Error::other)?
            .map(|r| (r, seq));
        tracing::info!(
            checkpoint = %format!("{seq:016x}"),
            revisions = items,
            revision = state.store().rev(),
            raft_index = raft.as_ref().map_or(0, |(r, _)| r.index),
            ms = started.elapsed().as_millis() as u64,
            "checkpoint restored"
        );
        from_seq = seq + 1;
    }
    let rec = Log::open_locked(lock, dir, opts.segment_bytes, from_seq).await?;
    for m in rec.log.segment_maps() {
        state.add_log_segment(m.clone());
    }
    Ok(Opened {
        state,
        rec: Some(rec),
        raft,
        checkpoint_seq: from_seq - 1,
    })
}

/// Where a member's checkpoints live: beside the log.
pub(crate) fn checkpoint_dir(log_dir: &std::path::Path) -> PathBuf {
    log_dir
        .parent()
        .map_or_else(|| log_dir.join("checkpoint"), |p| p.join("checkpoint"))
}

/// After a replay: the sizes the quota and the metrics read.
pub(crate) fn finish_recovery(state: &mut KvState, log: &Log) {
    set_log_sizes(state, log.used_bytes());
    state.set_log_base(log.used_bytes());
    METRICS.keys_total.set(state.store().keys_indexed() as i64);
    // Recovery checked and read every record and checkpoint item through the mappings.
    state.drop_resident_pages();
}

/// Replays a single member's log into its opened state.
fn recover(opened: Opened, dir: &std::path::Path) -> io::Result<(KvState, Option<Log>)> {
    let Opened { mut state, rec, .. } = opened;
    let Some(rec) = rec else {
        return Ok((state, None));
    };
    let records = rec.payloads.len();
    for p in rec.payloads {
        let req = kv::decode_write(p)
            .map_err(|e| io::Error::other(format!("log {}: {e}", dir.display())))?;
        // Failures replay as they happened the first time (the request was answered with them).
        let _ = state.execute(req);
    }
    finish_recovery(&mut state, &rec.log);
    tracing::info!(
        records,
        revision = state.store().rev(),
        keys = state.store().keys_indexed(),
        "log replayed"
    );
    Ok((state, Some(rec.log)))
}

/// Asks the apply loop to revoke expired leases, periodically.
async fn lease_ticker(owner: Owner) {
    let every = std::time::Duration::from_millis(crate::limits::LEASE_CHECK_INTERVAL_MS);
    loop {
        glommio::timer::sleep(every).await;
        if let Err(EtcdError::Stopped) = owner.call(Request::LeaseExpire(Default::default())).await
        {
            return;
        }
    }
}

/// `--auto-compaction-*`: sends Compact requests as etcd's compactors decide (src/compactor.rs).
/// In a cluster only the leader compacts (as etcd); the others wait.
async fn auto_compactor(owner: Owner, notifier: Rc<Notifier>, mode: AutoCompaction) {
    let compact = |rev: i64| {
        let owner = owner.clone();
        async move {
            if !super::metrics::is_leader() {
                return Ok(false);
            }
            let req = Request::Compact(pb::CompactionRequest {
                revision: rev,
                physical: false,
            });
            match owner.call(req).await {
                Ok(_) => {
                    tracing::info!(revision = rev, "completed auto compaction");
                    Ok(true)
                }
                // Already compacted there: as good as done (etcd counts it a success).
                Err(EtcdError::Compacted) => Ok(true),
                Err(EtcdError::Stopped) => Err(()),
                Err(e) => {
                    tracing::warn!(revision = rev, error = %e, "failed auto compaction");
                    Ok(false)
                }
            }
        }
    };
    match mode {
        AutoCompaction::Off => {}
        AutoCompaction::Periodic(period) => {
            let start = std::time::Instant::now();
            let mut p = compactor::Periodic::new(period);
            loop {
                p.sample(notifier.rev());
                glommio::timer::sleep(p.retry_interval()).await;
                let now = start.elapsed();
                if let Some(rev) = p.due(now) {
                    let Ok(ok) = compact(rev).await else { return };
                    p.compacted(now, ok);
                }
            }
        }
        AutoCompaction::Revision(retention) => {
            let mut r = compactor::Revision::new(retention);
            loop {
                glommio::timer::sleep(compactor::REVISION_INTERVAL).await;
                if let Some(rev) = r.due(notifier.rev()) {
                    let Ok(ok) = compact(rev).await else { return };
                    r.compacted(rev, ok);
                }
            }
        }
    }
}

/// The newest revision this shard knows of, and the watch streams to wake when it moves.
///
/// Every shard reads the owner's revision from one atomic the owner stores after each batch;
/// the owner sends another shard a note (a wake-up across threads) only while that shard has
/// subscribers. With nobody watching there, a batch used to wake the other executor for
/// nothing: one wake-up per put at one client, about 40 us of CPU each on this machine.
/// Ordering: a subscriber counts itself, then reads the revision; the owner stores the
/// revision, then reads the count (both SeqCst): either the owner sees the subscriber and
/// sends a note, or the subscriber sees the new revision.
#[derive(Default)]
pub(crate) struct Notifier {
    rev: Arc<AtomicI64>,
    /// The revision local subscribers were last woken for.
    woken: Cell<i64>,
    /// Live subscriptions on this shard (read by the owner's note sender for this shard).
    listening: Arc<AtomicUsize>,
    subscribers: std::cell::RefCell<Vec<LocalSender<()>>>,
}

/// A subscription to a [`Notifier`]: woken (at most one pending wake-up) whenever the
/// revision moves; counted while it lives.
pub(crate) struct Subscription {
    rx: LocalReceiver<()>,
    listening: Arc<AtomicUsize>,
}

impl Subscription {
    /// The next wake-up; None when the shard stops.
    pub async fn recv(&self) -> Option<()> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.listening.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Notifier {
    /// A notifier reading the owner's revision from `rev` and counting its subscribers in
    /// `listening`.
    fn shared(rev: Arc<AtomicI64>, listening: Arc<AtomicUsize>) -> Self {
        Notifier {
            rev,
            listening,
            ..Notifier::default()
        }
    }

    pub fn rev(&self) -> i64 {
        self.rev.load(Ordering::SeqCst)
    }

    /// A subscription, counted before the caller reads the revision (see the type's note).
    pub fn subscribe(&self) -> Subscription {
        self.listening.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = local_channel::new_bounded(1);
        self.subscribers.borrow_mut().push(tx);
        Subscription {
            rx,
            listening: self.listening.clone(),
        }
    }

    /// The revision moved to `rev` (on the owner: stores it for every shard) and the local
    /// subscribers are woken.
    pub fn notify(&self, rev: i64) {
        if rev <= self.woken.get() {
            return;
        }
        self.woken.set(rev);
        self.rev.fetch_max(rev, Ordering::SeqCst);
        // A full channel already holds a wake-up; a closed one's stream has ended.
        self.subscribers
            .borrow_mut()
            .retain(|tx| !matches!(tx.try_send(()), Err(glommio::GlommioError::Closed(_))));
    }
}

/// What a single member needs to grow into a cluster at its first membership change.
pub(crate) struct Grow {
    pub cluster: super::replica::ClusterOptions,
    /// The log's directory.
    pub dir: PathBuf,
}

/// Whether `req` is a membership change a single member makes by starting Raft (adding a
/// member, or changing its own peer URLs; the others are refused as a cluster of one refuses
/// them): None if not; the error a cluster would answer if its URLs are refused, checked
/// before growing (growing cannot be undone).
fn growth(req: &Request, me: &kv::Identity) -> Option<Result<(), EtcdError>> {
    let urls = match req {
        Request::MemberAdd(r) => &r.peer_ur_ls,
        Request::MemberUpdate(r) if r.id == me.member_id => &r.peer_ur_ls,
        _ => return None,
    };
    if urls.is_empty() || urls.iter().any(|u| super::peer::url_addr(u).is_err()) {
        return Some(Err(EtcdError::MemberBadUrls));
    }
    if matches!(req, Request::MemberAdd(_)) && urls.iter().any(|u| me.peer_urls.contains(u)) {
        return Some(Err(EtcdError::PeerUrlExist));
    }
    Some(Ok(()))
}

/// Whether this member may listen on its peer addresses (checked before Raft starts, so that a
/// taken port refuses the membership change instead of stopping the node).
fn peer_addresses_free(addrs: &[std::net::SocketAddr]) -> Result<(), EtcdError> {
    for a in addrs {
        if let Err(e) = std::net::TcpListener::bind(a) {
            tracing::warn!(address = %a, error = %e, "membership change refused: cannot listen on a peer address");
            return Err(EtcdError::PeerListenFailed);
        }
    }
    Ok(())
}

async fn apply_loop(
    rx: LocalReceiver<Job>,
    mut state: KvState,
    mut log: Option<Log>,
    batch_wait: std::time::Duration,
    notifier: Rc<Notifier>,
    grow: Option<Grow>,
) {
    // The jobs from the first membership change on, when this member grows into a cluster.
    let mut growing: Option<Vec<Job>> = None;
    let mut grow_now: Option<(Vec<Job>, Result<(), EtcdError>)> = None;
    let mut batch: Vec<Job> = Vec::with_capacity(APPLY_BATCH_REQUESTS_MAX);
    // Writes that arrived while the previous batch's fdatasync was in flight.
    let mut carried: Vec<Job> = Vec::new();
    let mut reported = (std::time::Instant::now(), LogStats::default());
    let mut demands = Demands::default();
    // How many batches in a row held a single request, and how many answered no read.
    let mut single_batches = 0usize;
    let mut quiet_batches = 0usize;
    // Ranges over many keys, walked a step at a time between batches.
    let mut reads = SteppedReads::default();
    loop {
        // A pending compaction is trimmed a bounded step at a time, between batches, never
        // holding up requests for long; so are long reads walked (and trimming past the revision
        // of one waits for it to end).
        let job = if !carried.is_empty() {
            batch.append(&mut carried);
            batch.pop().expect("non-empty")
        } else if !reads.is_empty() || state.compaction_pending() {
            match futures_lite::future::poll_once(rx.recv()).await {
                Some(Some(job)) => job,
                Some(None) => break,
                None => {
                    reads.between_turns(&mut state).await;
                    let_io_in().await;
                    continue;
                }
            }
        } else {
            match rx.recv().await {
                Some(job) => job,
                None => break,
            }
        };
        batch.push(job);
        while batch.len() < APPLY_BATCH_REQUESTS_MAX {
            match futures_lite::future::poll_once(rx.recv()).await {
                Some(Some(job)) => batch.push(job),
                _ => break,
            }
        }
        // Optionally let a small batch grow a little: fewer fdatasyncs at moderate load, at
        // the price of up to `batch_wait` of latency.
        if !batch_wait.is_zero() && batch.len() < SMALL_BATCH_RECORDS {
            let until = std::time::Instant::now() + batch_wait;
            while batch.len() < SMALL_BATCH_RECORDS {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let next = futures_lite::future::or(async { rx.recv().await }, async {
                    glommio::timer::sleep(left).await;
                    None
                })
                .await;
                match next {
                    Some(job) => batch.push(job),
                    None => break,
                }
            }
        }
        if let Some(g) = &grow {
            let me = state.identity();
            let found = batch
                .iter()
                .enumerate()
                .find_map(|(i, (req, _))| growth(req, me).map(|r| (i, r)));
            if let Some((at, checked)) = found {
                // The batch before it runs first; it and what follows wait.
                let checked = checked.and_then(|()| peer_addresses_free(&g.cluster.listen_peer));
                grow_now = Some((batch.split_off(at), checked));
            }
        }
        // One request per batch, batch after batch: the shard serves one client at a time.
        single_batches = if batch.len() == 1 {
            single_batches + 1
        } else {
            0
        };
        let sync = sync_mode(batch.len(), single_batches, quiet_batches);
        let ran = run_batch(
            &mut state,
            log.as_mut(),
            &mut batch,
            Arrivals {
                rx: &rx,
                carried: &mut carried,
            },
            &mut demands,
            sync,
            &mut reads,
        )
        .await;
        // Batches that logged nothing (checkpoint steps, refused requests) do not count.
        if ran.read {
            quiet_batches = 0;
        } else if ran.logged {
            quiet_batches += 1;
        }
        notifier.notify(state.store().rev());
        if let Some((mut rest, checked)) = grow_now.take() {
            // Arrival order: the growing request and the rest of its batch, then what came
            // during the batch's fdatasync.
            rest.append(&mut carried);
            match checked {
                Ok(()) => {
                    growing = Some(rest);
                    break;
                }
                Err(e) => {
                    let (_, tx) = rest.remove(0);
                    tx.send(Err(e)).await;
                    carried = rest;
                    continue;
                }
            }
        }
        reads.between_turns(&mut state).await;
        if let Some(log) = &log {
            state.drop_resident_pages_now_and_then(std::time::Instant::now());
            if reported.0.elapsed() >= LOG_STATS_INTERVAL {
                report(&reported.1, &log.stats());
                reported = (std::time::Instant::now(), log.stats());
            }
        }
    }
    // Reads under way are answered before the state changes hands (or the shard stops).
    reads.finish(&state, i64::MAX).await;
    if let (Some(jobs), Some(g), Some(log)) = (growing, grow, log) {
        // A checkpoint being taken is abandoned (its next step is refused; the checkpointer
        // starts again).
        state.checkpoint_abandon();
        // Defragment calls waiting for that checkpoint wait for the Raft loop's next one.
        demands.abandoned();
        let grown = super::replica::grow(state, log, g.cluster, &g.dir, notifier, demands);
        let tx = match grown.await {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "starting raft failed: stopping the node");
                std::process::exit(1);
            }
        };
        // The membership change waits until Raft leads here and has committed in its term (a
        // linearizable read answered says so), so that it is not refused for want of a
        // leader. (A configuration change before the leader's first entry is applied is held
        // by the Raft loop itself: `Node::propose_conf`.)
        let (rtx, rrx) = answer_slot();
        let probe = Request::Range(pb::RangeRequest {
            key: bytes::Bytes::from_static(b"\0"),
            ..Default::default()
        });
        if tx.send((probe, Reply::Local(rtx))).await.is_ok() {
            let ready =
                futures_lite::future::or(async { rrx.recv().await.map(|a| a.is_ok()) }, async {
                    glommio::timer::sleep(std::time::Duration::from_secs(10)).await;
                    None
                })
                .await;
            if ready != Some(true) {
                tracing::warn!("raft did not lead within 10 s of starting on a single member");
            }
        }
        for job in jobs {
            if tx.send(job).await.is_err() {
                return;
            }
        }
        while let Some(job) = rx.recv().await {
            if tx.send(job).await.is_err() {
                return;
            }
        }
    }
}

/// How often the log's group-commit figures are logged (until the metrics endpoint exists).
const LOG_STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

fn report(before: &LogStats, now: &LogStats) {
    let batches = now.batches - before.batches;
    if batches == 0 {
        return;
    }
    let records = now.records - before.records;
    tracing::info!(
        batches,
        records,
        records_per_fdatasync = format!("{:.1}", records as f64 / batches as f64),
        fdatasync_avg_us = (now.fsync_micros_total - before.fsync_micros_total) / batches,
        fdatasync_max_us_since_start = now.fsync_micros_max,
        batches_on_zeroed_blocks = now.batches_on_zeros - before.batches_on_zeros,
        "log group commit"
    );
}

enum Step {
    Answered(Reply, Answer),
    Logged(usize, Reply),
    Direct(Request, Reply),
    /// A record the loop itself logged (an alarm the quota raised): applied, not answered.
    Internal(usize),
}

/// A request that only reads the state (and so may be answered before a batch's fdatasync).
/// A lease check (`LeaseExpire`) is not: it may turn into revocations.
/// Nor is listing alarms: the quota check raises NOSPACE while a batch is gathered, before that
/// alarm's record is durable, so a listing waits for the batch like the writes around it
/// (raising and disarming are writes).
fn is_read(req: &Request) -> bool {
    !kv::is_write(req)
        && !matches!(
            req,
            Request::LeaseExpire(_)
                | Request::Alarm(_)
                | Request::Checkpoint(_)
                | Request::Defragment(_)
        )
}

/// Counts a request in etcd's mvcc counters.
pub(crate) fn count(req: &Request) {
    match req {
        Request::Range(_) => METRICS.range_total.inc(),
        Request::Put(_) => METRICS.put_total.inc(),
        Request::DeleteRange(_) => METRICS.delete_total.inc(),
        Request::Txn(_) => METRICS.txn_total.inc(),
        Request::Authed(a) => {
            count(&a.req);
            0
        }
        _ => 0,
    };
}

/// How a batch of `len` requests is made durable, after `single` batches in a row of one
/// request each and `quiet` batches in a row that answered no read.
///
/// Serving one client, or small batches while no reads come, the write is made durable by
/// blocking system calls, which return sooner and cost less CPU than io_uring's fdatasync here
/// (`log::SyncMode`); the shard serves nothing meanwhile, which is why a read coming stops it:
/// reads answered during the fdatasync would wait for it instead. Otherwise the shard serves
/// the others while the fdatasync is in flight: small batches through io_uring, large ones
/// (many clients) with the fdatasync on the log's own thread, handed to it at once rather than
/// at the end of the scheduler's turn.
fn sync_mode(len: usize, single: usize, quiet: usize) -> crate::log::SyncMode {
    if single > ONE_CLIENT_BATCHES || (len < QUIET_BLOCKING_BATCH_BELOW && quiet >= QUIET_BATCHES) {
        crate::log::SyncMode::Blocking
    } else {
        crate::log::SyncMode::for_batch(len)
    }
}

/// Ranges over more keys than one step walks, answered a step at a time between the apply
/// loop's batches or the Raft loop's turns (`kv::KvState::read_begin`): one step of one read
/// per turn, the reads taking turns, so that a turn holds the shard for one step however many
/// reads are under way. At most `STEPPED_READS_MAX` take turns; the others wait, after their
/// first step, until one of those ends (their results so far are one step's: a list storm
/// does not hold every read's whole result at once). A compaction past the revision of a
/// read under way trims nothing until that read ends ([`SteppedReads::hold_trimming`]).
#[derive(Default)]
pub(crate) struct SteppedReads {
    turns: std::collections::VecDeque<(kv::SteppedRange, Reply)>,
    waiting: std::collections::VecDeque<(kv::SteppedRange, Reply)>,
}

impl SteppedReads {
    pub(crate) fn is_empty(&self) -> bool {
        self.turns.is_empty() && self.waiting.is_empty()
    }

    fn all(&self) -> impl Iterator<Item = &kv::SteppedRange> {
        self.turns.iter().chain(&self.waiting).map(|(read, _)| read)
    }

    /// Answers `req` now (a read its first step covers), or takes it to walk in steps. Past
    /// `STEPPED_READS_MAX` taking turns, a read's first step is `WAITING_FIRST_STEP_KEYS`
    /// keys: a turn that starts many long reads (a list storm, or a ReadIndex round of them on
    /// a cluster member) walks at most that many keys of each beyond the first 64 steps, and
    /// still answers the small ones at once.
    pub(crate) async fn start(&mut self, state: &mut KvState, req: Request, tx: Reply) {
        let full = self.turns.len() >= STEPPED_READS_MAX;
        let keys = if full {
            WAITING_FIRST_STEP_KEYS.min(state.read_step_keys())
        } else {
            state.read_step_keys()
        };
        match state.read_begin(req, keys) {
            kv::Read::Answered(answer) => tx.send(answer).await,
            kv::Read::Stepped(read) if full => self.waiting.push_back((read, tx)),
            kv::Read::Stepped(read) => self.turns.push_back((read, tx)),
        }
    }

    /// One step of the read whose turn it is; answers it if that was its last (and lets the
    /// first waiting read take turns).
    pub(crate) async fn step(&mut self, state: &KvState) {
        let Some((mut read, tx)) = self.turns.pop_front() else {
            return;
        };
        if state.range_step(&mut read, state.read_step_keys()) {
            tx.send(Ok(state.range_finish(read))).await;
            self.turns.extend(self.waiting.pop_front());
        } else {
            self.turns.push_back((read, tx));
        }
    }

    /// What a loop does between its batches or turns (and while idle): one step of the read
    /// whose turn it is, then one step of a pending compaction's trimming unless a read under
    /// way reads below it.
    pub(crate) async fn between_turns(&mut self, state: &mut KvState) {
        self.step(state).await;
        if state.compaction_pending() && !self.hold_trimming(state) {
            state.compact_step(COMPACT_KEYS_PER_STEP);
        }
    }

    /// Whether the compaction trimming now must wait: a read under way reads below its
    /// revision (trimming at a revision keeps each key as it was there and after, so reads at
    /// or above it see the same; reads below it began before the compaction).
    pub(crate) fn hold_trimming(&self, state: &KvState) -> bool {
        state
            .trimming_rev()
            .is_some_and(|at| self.all().any(|read| read.rev() < at))
    }

    /// Walks every read under way below revision `below` to its end and answers it (before a
    /// physical compaction to `below`; `i64::MAX`: all, before the state changes hands).
    pub(crate) async fn finish(&mut self, state: &KvState, below: i64) {
        let mut done = Vec::new();
        for queue in [&mut self.turns, &mut self.waiting] {
            let (ended, kept): (Vec<_>, Vec<_>) = std::mem::take(queue)
                .into_iter()
                .partition(|(read, _)| read.rev() < below);
            *queue = kept.into();
            done.extend(ended);
        }
        let room = STEPPED_READS_MAX.saturating_sub(self.turns.len());
        let joining = self.waiting.drain(..room.min(self.waiting.len()));
        self.turns.extend(joining);
        for (mut read, tx) in done {
            while !state.range_step(&mut read, usize::MAX) {}
            tx.send(Ok(state.range_finish(read))).await;
        }
    }
}

/// The queue a batch's fdatasync is waited on with: the jobs that arrive meanwhile are reads,
/// answered then, or writes, carried to the next batch.
struct Arrivals<'a> {
    rx: &'a LocalReceiver<Job>,
    carried: &'a mut Vec<Job>,
}

async fn run_batch(
    state: &mut KvState,
    log: Option<&mut Log>,
    batch: &mut Vec<Job>,
    arrivals: Arrivals<'_>,
    demands: &mut Demands,
    sync: crate::log::SyncMode,
    reads: &mut SteppedReads,
) -> Ran {
    // Whether a read (of any kind `is_read` names) was answered in this batch.
    let mut read = false;
    let mut payloads = Vec::new();
    let mut steps = Vec::with_capacity(batch.len());
    // A checkpoint's work waits for the end of the batch, when the state holds every record
    // the log has.
    let mut checkpoint_ops = Vec::new();
    METRICS.apply_batch.observe(batch.len() as f64);
    for (mut req, tx) in batch.drain(..) {
        match req {
            Request::Checkpoint(op) => {
                checkpoint_ops.push((op, tx));
                continue;
            }
            Request::Defragment(_) => {
                checkpoint_ops.push((kv::CheckpointOp::Demand, tx));
                continue;
            }
            _ => {}
        }
        count(&req);
        state.prepare(&mut req);
        if let Err(e) = state.precheck(&req) {
            if log.is_some() {
                for raise in state.take_raised() {
                    payloads.push(kv::encode_write(&raise));
                    steps.push(Step::Internal(payloads.len() - 1));
                }
            }
            steps.push(Step::Answered(tx, Err(e)));
        } else if log.is_some() && kv::is_write(&req) {
            payloads.push(kv::encode_write(&req));
            steps.push(Step::Logged(payloads.len() - 1, tx));
        } else if log.is_some() && is_read(&req) {
            // A read is answered now, from the state before this batch's writes: that state
            // is durable (each batch is applied only after its fdatasync), and none of this
            // batch's writes is acknowledged yet, so the read may come before them. It does
            // not wait for the fdatasync (nor do watchers' pulls).
            read = true;
            reads.start(state, req, tx).await;
        } else {
            steps.push(Step::Direct(req, tx));
        }
    }
    let mut written = Vec::new();
    let mut log = log;
    if let Some(log) = log.as_deref_mut() {
        if !payloads.is_empty() {
            // While the write and fdatasync are in flight, reads that arrive are answered from
            // the state before this batch (durable, and this batch is not acknowledged yet);
            // writes wait for the next batch (at most a batch's worth, then the queue waits).
            METRICS.proposals_pending.set(payloads.len() as i64);
            let before = log.stats();
            let started = std::time::Instant::now();
            let appended = {
                let append = log.append_with(&payloads, sync);
                futures_lite::pin!(append);
                loop {
                    if arrivals.carried.len() >= APPLY_BATCH_REQUESTS_MAX {
                        break append.as_mut().await;
                    }
                    let next =
                        futures_lite::future::or(async { Ok(append.as_mut().await) }, async {
                            Err(arrivals.rx.recv().await)
                        })
                        .await;
                    match next {
                        Ok(done) => break done,
                        Err(Some((req, tx))) => {
                            if is_read(&req) {
                                count(&req);
                                read = true;
                                reads.start(state, req, tx).await;
                            } else {
                                arrivals.carried.push((req, tx));
                            }
                        }
                        // The queue closed: finish this batch; the loop ends after it.
                        Err(None) => break append.as_mut().await,
                    }
                }
            };
            written = match appended {
                Ok(w) => w,
                Err(e) => {
                    // Nothing of this batch was acknowledged; what was is durable. A failed
                    // write or fdatasync is never retried: the node stops.
                    tracing::error!(error = %e, "log write failed: stopping the node");
                    std::process::exit(1);
                }
            };
            after_append(state, log, &before, started, payloads.len());
            METRICS.proposals_committed.inc_by(payloads.len() as u64);
            METRICS.proposals_pending.set(0);
        }
    }
    let logged = payloads.len() as u64;
    for step in steps {
        let (tx, answer) = match step {
            Step::Internal(i) => {
                let req = kv::decode_write(written[i].clone())
                    .unwrap_or_else(|e| panic!("a record just written does not decode: {e}"));
                let _ = state.execute(req);
                continue;
            }
            Step::Answered(tx, a) => (tx, a),
            Step::Logged(i, tx) => {
                let req = kv::decode_write(written[i].clone())
                    .unwrap_or_else(|e| panic!("a record just written does not decode: {e}"));
                if let Some(at) = kv::trims_now(&req) {
                    reads.finish(state, at).await;
                }
                (tx, state.execute(req))
            }
            Step::Direct(req, tx) => (tx, state.execute(req)),
        };
        tx.send(answer).await;
    }
    METRICS.watch_catchups.store(
        state.store().index_walks(),
        std::sync::atomic::Ordering::Relaxed,
    );
    if logged > 0 {
        METRICS.proposals_applied.inc_by(logged);
        METRICS.keys_total.set(state.store().keys_indexed() as i64);
    }
    for (op, tx) in checkpoint_ops {
        if matches!(op, kv::CheckpointOp::Demand) {
            if log.is_none() {
                tx.send(Ok(Response::Defragment(defragmented(state)))).await;
            } else {
                demands.push(tx);
            }
            continue;
        }
        let finished = matches!(op, kv::CheckpointOp::Finished);
        if matches!(op, kv::CheckpointOp::Begin)
            && demands.forcing()
            && state.checkpoint_may_begin(std::time::Instant::now())
        {
            if let Some(log) = log.as_deref_mut() {
                // A Defragment: writes from now on go to a new segment, so that the checkpoint
                // releases every segment before it (the one taking appends otherwise stays,
                // with all it holds, however little of it is live).
                if let Err(e) = log.roll_now().await {
                    tracing::error!(error = %e, "log segment creation failed: stopping the node");
                    std::process::exit(1);
                }
            }
        }
        let answer = checkpoint_op(state, log.as_deref_mut(), op, demands);
        let ok = answer.is_ok();
        tx.send(answer.map(Response::Checkpoint)).await;
        if finished && ok {
            for d in demands.finished() {
                d.send(Ok(Response::Defragment(defragmented(state)))).await;
            }
        }
    }
    Ran {
        read,
        logged: logged > 0,
    }
}

/// What a batch did, for the choice of the next one's [`sync_mode`].
struct Ran {
    /// It answered a read (of any kind `is_read` names).
    read: bool,
    /// It wrote to the log (and waited for an fdatasync).
    logged: bool,
}

pub(crate) fn defragmented(state: &KvState) -> pb::DefragmentResponse {
    pb::DefragmentResponse {
        header: Some(state.cluster_header()),
    }
}

/// Takes checkpoints of a single member's state (when the log grew enough, or a Defragment
/// call waits) and releases the log before them; runs for the life of the owner shard.
async fn checkpointer(owner: Owner, dir: PathBuf) {
    loop {
        glommio::timer::sleep(std::time::Duration::from_millis(250)).await;
        if let Err(e) = take_checkpoint(&owner, &dir).await {
            tracing::error!(error = %e, "checkpoint failed (the log stays as it is; retried later)");
            let _ = owner
                .call(Request::Checkpoint(kv::CheckpointOp::Abandon))
                .await;
            glommio::timer::sleep(std::time::Duration::from_secs(5)).await;
        }
    }
}

async fn checkpoint_call(
    owner: &Owner,
    op: kv::CheckpointOp,
) -> Result<kv::CheckpointAnswer, String> {
    match owner.call(Request::Checkpoint(op)).await {
        Ok(Response::Checkpoint(a)) => Ok(a),
        Ok(other) => Err(format!("a checkpoint step answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// One checkpoint, if one is due: the owner walks its index in steps while a thread writes
/// the items; the finished checkpoint is read back and checked, its parts made readable, every
/// revision repointed at its copy, and then the log before it and the previous checkpoint are
/// released.
async fn take_checkpoint(owner: &Owner, dir: &std::path::Path) -> Result<(), String> {
    use kv::{CheckpointAnswer as A, CheckpointOp as Op};
    let (seq, rev, meta, hurry) = match checkpoint_call(owner, Op::Begin).await? {
        A::Begun(Some(begun)) => begun,
        A::Unchanged(segments) => {
            // Only the segments the newest checkpoint covers go, for a Defragment.
            remove_checkpointed_files(segments, dir, std::time::Duration::ZERO).await?;
            checkpoint_call(owner, Op::Finished).await?;
            return Ok(());
        }
        _ => return Ok(()),
    };
    let started = std::time::Instant::now();
    let (mut writer, tx) = WriterThread::start(dir.to_path_buf(), seq, meta, hurry.clone())
        .map_err(|e| format!("cannot start the checkpoint thread: {e}"))?;
    let mut after = None;
    let mut abandoned = false;
    loop {
        let asked = std::time::Instant::now();
        let A::Items(step) = checkpoint_call(owner, Op::Step { after, at_rev: rev }).await? else {
            return Err("a checkpoint step answered otherwise".into());
        };
        pace(&hurry, asked.elapsed()).await;
        let Some((items, next)) = step else {
            // The sender dropped below without the end abandons the writer's work.
            abandoned = true;
            break;
        };
        send_to_writer(&tx, &mut writer, Batch::Items(items)).await?;
        match next {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    if !abandoned {
        send_to_writer(&tx, &mut writer, Batch::End).await?;
    }
    drop(tx);
    if abandoned {
        // At once: the writer cuts down what it wrote before it ends (0.5 s or more per GiB),
        // and the compaction's trimming and any Defragment wait for this answer. The next
        // checkpoint still begins only once this writer has ended (below).
        checkpoint_call(owner, Op::Abandon).await?;
    }
    while !writer.ended().map_err(|e| e.to_string())? {
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
    let written = writer.result().map_err(|e| e.to_string())?;
    let Some((loaded, bytes)) = written.filter(|_| !abandoned) else {
        if !abandoned {
            checkpoint_call(owner, Op::Abandon).await?;
        }
        tracing::info!("checkpoint abandoned: a physical compaction cut in");
        return Ok(());
    };
    let A::Installed(parts) = checkpoint_call(
        owner,
        Op::Install {
            parts: loaded.maps.clone(),
        },
    )
    .await?
    else {
        return Err("a checkpoint install answered otherwise".into());
    };
    let mut items = loaded.items();
    loop {
        let chunk: Vec<checkpoint::Item> = items
            .by_ref()
            .take(crate::limits::CHECKPOINT_KEYS_PER_STEP)
            .collect();
        if chunk.is_empty() {
            break;
        }
        let asked = std::time::Instant::now();
        checkpoint_call(owner, Op::Repoint(chunk)).await?;
        pace(&hurry, asked.elapsed()).await;
    }
    let revisions = loaded.count;
    drop(loaded);
    let A::Released(segments) = checkpoint_call(
        owner,
        Op::Release {
            seq,
            at_rev: rev,
            parts,
            bytes,
        },
    )
    .await?
    else {
        return Err("a checkpoint release answered otherwise".into());
    };
    let pause = if hurry.load(std::sync::atomic::Ordering::Relaxed) {
        std::time::Duration::ZERO
    } else {
        crate::log::CUT_PAUSE
    };
    remove_checkpointed_files(segments, dir, pause).await?;
    checkpoint_call(owner, Op::Finished).await?;
    tracing::info!(
        checkpoint = %format!("{seq:016x}"),
        revision = rev,
        revisions,
        bytes,
        ms = started.elapsed().as_millis() as u64,
        nice = writer.nice,
        hurried = writer.handed > 0,
        "checkpoint taken"
    );
    Ok(())
}

/// Removes the released segments' files and any superseded checkpoint's (nothing points into
/// them any more), on a thread: cutting down and unlinking large files takes a while (`pause`
/// between cuts, none when somebody waits).
async fn remove_checkpointed_files(
    segments: Vec<crate::log::Released>,
    dir: &std::path::Path,
    pause: std::time::Duration,
) -> Result<(), String> {
    let cdir = dir.to_path_buf();
    let remover = std::thread::spawn(move || -> io::Result<()> {
        crate::log::remove_released(&segments, pause)?;
        checkpoint::remove_superseded(&cdir, pause)
    });
    while !remover.is_finished() {
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
    remover
        .join()
        .map_err(|_| "the file remover panicked".to_string())?
        .map_err(|e| format!("removing released files: {e}"))
}

/// Goes on after the executor has looked at its sockets and timers, for a task doing long work
/// in steps: glommio polls them only when no task is runnable or its preemption timer fired
/// (every 100 ms), so a task that only yields between steps (`yield_now`) stays runnable and
/// holds every request that arrives meanwhile for up to 100 ms. A short timer makes the task
/// wait for the reactor (one that has already expired when first polled would not: glommio
/// answers it at once).
pub(crate) async fn let_io_in() {
    glommio::timer::sleep(std::time::Duration::from_micros(50)).await;
}

/// After a checkpoint's step on the owner took `spent` (asked to answered), waits three
/// times as long, or a quarter as long when somebody waits for the checkpoint (`hurry`): the
/// walk and the repointing take at most about a quarter of the owner's time, or four fifths.
/// Unpaced, steps of 2,000 keys (2-6 ms each on the 2-core machine) followed each other every
/// 4-5 ms while puts came at 30k/s: the owner's capacity fell below the offered rate for the
/// whole walk. A hurried checkpoint waits too: with no wait at all its steps and the apply loop
/// kept the owner's task queue from ever emptying, and glommio looks at its sockets only when
/// the queue is empty or its preemption timer (100 ms) fires, so puts at 5k/s waited up to
/// 300 ms while a Defragment repointed 1M keys (tuning/results/2026-11-27-checkpoint-cut.md).
async fn pace(hurry: &kv::Hurry, spent: std::time::Duration) {
    let wait = if hurry.load(std::sync::atomic::Ordering::Relaxed) {
        spent / crate::limits::CHECKPOINT_HURRIED_PACE_DIVISOR
    } else {
        spent * crate::limits::CHECKPOINT_PACE
    };
    glommio::timer::sleep(wait).await;
}

/// Sends a batch to a checkpoint's writer without blocking the shard: while the channel is
/// full, the shard looks at the thread (one that handed its work back, hurried, receives
/// nothing until it is replaced) and waits. A thread that stopped takes nothing. Returning
/// early on an error drops the sender without [`Batch::End`], which abandons the checkpoint.
async fn send_to_writer(
    tx: &std::sync::mpsc::SyncSender<Batch>,
    writer: &mut WriterThread,
    mut msg: Batch,
) -> Result<(), String> {
    use std::sync::mpsc::TrySendError;
    loop {
        match tx.try_send(msg) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => return Ok(()),
            Err(TrySendError::Full(m)) => {
                msg = m;
                writer.ended().map_err(|e| e.to_string())?;
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }
}

/// Defragment calls waiting for a checkpoint: before one began, and during the one under way;
/// and the flag that hurries the one under way.
#[derive(Default)]
pub(crate) struct Demands {
    waiting: Vec<Reply>,
    in_flight: Vec<Reply>,
    hurry: Option<kv::Hurry>,
}

/// One step of a checkpoint, between batches (the state holds every record of the log).
fn checkpoint_op(
    state: &mut KvState,
    log: Option<&mut Log>,
    op: kv::CheckpointOp,
    demands: &mut Demands,
) -> Result<kv::CheckpointAnswer, EtcdError> {
    use kv::{CheckpointAnswer as A, CheckpointOp as Op};
    let Some(log) = log else {
        return Ok(A::Begun(None));
    };
    Ok(match op {
        Op::Demand => unreachable!("a demand is kept by the apply loop"),
        Op::Finished => A::Done,
        Op::Begin => {
            if !demands.forcing() && !state.checkpoint_due(log.stats().bytes) {
                return Ok(A::Begun(None));
            }
            // A compaction's trimming first, for a while (`KvState::checkpoint_may_begin`).
            if !state.checkpoint_may_begin(std::time::Instant::now()) {
                return Ok(A::Begun(None));
            }
            if log.next_seq() == log.kept_from() {
                // Nothing logged since the newest checkpoint, which holds every record: the
                // Defragment waits only for the release of the segments that checkpoint
                // covers (the apply loop has just left the one that took appends). A
                // checkpoint of the same record would be renamed over that one's files, part
                // by part (what a compaction's trimming drops after waiting 5 s goes at the
                // next checkpoint).
                demands.begun(true);
                state.checkpoint_started(log.stats().bytes);
                let gone = log.release_before(log.kept_from());
                let ordinals: Vec<usize> = gone.iter().map(|r| r.ordinal).collect();
                state.release_log_segments(&ordinals);
                set_log_sizes(state, log.used_bytes());
                return Ok(A::Unchanged(gone));
            }
            let hurry = demands.begun(false);
            state.checkpoint_started(log.stats().bytes);
            let (rev, meta) = state.checkpoint_begin(None);
            A::Begun(Some((log.next_seq() - 1, rev, meta, hurry)))
        }
        Op::Abandon => {
            state.checkpoint_abandon();
            demands.abandoned();
            A::Done
        }
        Op::Release {
            seq,
            at_rev,
            parts,
            bytes,
        } => {
            let gone = log.release_before(seq + 1);
            let ordinals: Vec<usize> = gone.iter().map(|r| r.ordinal).collect();
            checkpoint_released(
                state,
                seq,
                at_rev,
                parts,
                bytes,
                &ordinals,
                log.used_bytes(),
            );
            A::Released(gone)
        }
        op => checkpoint_state_op(state, op),
    })
}

/// A checkpoint at `at_rev` (record `seq`) is in place and the log segments with `ordinals`
/// were let go of: the state forgets them and the previous checkpoint; `log_bytes` is what the
/// log's records take now.
pub(crate) fn checkpoint_released(
    state: &mut KvState,
    seq: u64,
    at_rev: i64,
    parts: Vec<u32>,
    bytes: u64,
    ordinals: &[usize],
    log_bytes: u64,
) {
    state.checkpoint_release(parts, bytes, at_rev, ordinals);
    set_log_sizes(state, log_bytes);
    tracing::info!(
        checkpoint = %format!("{seq:016x}"),
        segments_removed = ordinals.len(),
        checkpoint_bytes = state.checkpoint_bytes(),
        log_bytes,
        "checkpoint in place; the log before it is released"
    );
}

impl Demands {
    /// A Defragment call waits for the next checkpoint (and so for the one under way).
    pub(crate) fn push(&mut self, tx: Reply) {
        self.waiting.push(tx);
        self.hurry();
    }

    /// Somebody waits for the checkpoint under way, if one is: its writer leaves nice 19.
    pub(crate) fn hurry(&mut self) {
        if let Some(h) = &self.hurry {
            h.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether a Defragment call waits (a checkpoint is due even if the log grew little).
    pub(crate) fn forcing(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// A checkpoint begins: the calls waiting so far wait for it. Its flag is set at once if
    /// any does or the caller needs it (`wanted`: a snapshot for a member).
    pub(crate) fn begun(&mut self, wanted: bool) -> kv::Hurry {
        self.in_flight.append(&mut self.waiting);
        let h = kv::Hurry::new((wanted || !self.in_flight.is_empty()).into());
        self.hurry = Some(h.clone());
        h
    }

    /// The checkpoint under way was abandoned: its calls wait for the next.
    pub(crate) fn abandoned(&mut self) {
        let mut back = std::mem::take(&mut self.in_flight);
        back.append(&mut self.waiting);
        self.waiting = back;
        self.hurry = None;
    }

    /// The calls the finished checkpoint answers.
    pub(crate) fn finished(&mut self) -> Vec<Reply> {
        self.hurry = None;
        std::mem::take(&mut self.in_flight)
    }
}

/// The steps of a checkpoint that only the state takes part in (the same on a single member
/// and on a member of a cluster): Step, Install and Repoint.
pub(crate) fn checkpoint_state_op(
    state: &mut KvState,
    op: kv::CheckpointOp,
) -> kv::CheckpointAnswer {
    use kv::{CheckpointAnswer as A, CheckpointOp as Op};
    match op {
        Op::Step { after, at_rev } => A::Items(state.checkpoint_step(
            after.as_ref(),
            at_rev,
            crate::limits::CHECKPOINT_KEYS_PER_STEP,
        )),
        Op::Install { parts } => A::Installed(state.checkpoint_install(&parts)),
        Op::Repoint(items) => {
            state.checkpoint_repoint(&items);
            A::Done
        }
        other => unreachable!("not a step of the state alone: {other:?}"),
    }
}

/// What one append changed in the log: for the value store, the quota and the metrics.
pub(crate) struct LogReport {
    // (`new_segments` are the segments created since the caller's count.)
    /// Segments created by the append (their mappings), in order.
    pub new_segments: Vec<bytes::Bytes>,
    pub used_bytes: u64,
    pub before: LogStats,
    pub after: LogStats,
    pub elapsed: std::time::Duration,
}

impl LogReport {
    /// The report of an append that started at `started` with the log's stats at `before`;
    /// `known` is how many segments the value store has.
    pub fn of(log: &Log, known: usize, before: LogStats, started: std::time::Instant) -> Self {
        LogReport {
            new_segments: log.segment_maps_since(known).cloned().collect(),
            used_bytes: log.used_bytes(),
            before,
            after: log.stats(),
            elapsed: started.elapsed(),
        }
    }
}

/// The database's size for dbSize, the quota and the metrics: the bytes the log's records take
/// (`log_bytes`; the active segment's preallocated tail left out, as etcd's dbSize counts the
/// pages bolt uses, not its file) plus the checkpoint's files. In use: the live values.
pub(crate) fn set_log_sizes(state: &mut KvState, log_bytes: u64) {
    let size = log_bytes + state.checkpoint_bytes();
    state.values_mut().set_db_bytes(size);
    state.set_db_used(size);
    METRICS.db_total_size.set(size as i64);
    METRICS
        .db_in_use
        .set(crate::mvcc::ValueStore::live_bytes(state.store().values()) as i64);
}

/// After a batch was appended: new segments for the value store, sizes, and the log's metrics.
pub(crate) fn after_append(
    state: &mut KvState,
    log: &Log,
    before: &LogStats,
    started: std::time::Instant,
    records: usize,
) {
    let known = state.log_segments_known();
    apply_report(state, &LogReport::of(log, known, *before, started), records);
}

/// Applies what an append changed (see [`LogReport`]).
pub(crate) fn apply_report(state: &mut KvState, r: &LogReport, records: usize) {
    for m in &r.new_segments {
        state.add_log_segment(m.clone());
    }
    set_log_sizes(state, r.used_bytes);
    METRICS.backend_commit.observe(r.elapsed.as_secs_f64());
    METRICS
        .wal_fsync
        .observe(r.after.fsync_micros_last as f64 / 1e6);
    METRICS
        .wal_write_bytes
        .inc_by(r.after.bytes - r.before.bytes);
    METRICS.records_per_fsync.observe(records as f64);
}

/// Removes a forwarded call's entry unless its request was sent (see `Owner::call`).
struct Unsent<'a>(&'a Remote, u64);

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        self.0.waiting.borrow_mut().remove(&self.1);
    }
}

pub(crate) struct Remote {
    req_tx: ConnectedSender<ToOwner>,
    waiting: Rc<std::cell::RefCell<HashMap<u64, AnswerTx>>>,
    next_id: Cell<u64>,
}

/// How a shard reaches the state.
#[derive(Clone)]
pub(crate) enum Owner {
    Local(Rc<LocalSender<Job>>),
    Remote(Rc<Remote>),
}

impl Owner {
    /// A Range on the owner shard.
    pub async fn range(&self, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        match self.call(Request::Range(r)).await? {
            Response::Range(r) => Ok(r),
            other => unreachable!("a range answered with {other:?}"),
        }
    }

    /// A Txn on the owner shard.
    pub async fn txn(&self, t: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        match self.call(Request::Txn(t)).await? {
            Response::Txn(r) => Ok(r),
            other => unreachable!("a txn answered with {other:?}"),
        }
    }

    /// A DeleteRange of one key on the owner shard.
    pub async fn delete(&self, key: bytes::Bytes) -> Result<pb::DeleteRangeResponse, Status> {
        let req = pb::DeleteRangeRequest {
            key,
            ..Default::default()
        };
        match self.call(Request::DeleteRange(req)).await? {
            Response::DeleteRange(r) => Ok(r),
            other => unreachable!("a delete answered with {other:?}"),
        }
    }

    /// Executes `req` on the owner shard. One async fn, not two: each layer of async fn keeps
    /// its own copy of the request in a call's task, which is moved whole when spawned.
    pub async fn call(&self, req: Request) -> Answer {
        // Counted until answered, or until the caller gives up (dropped).
        struct InFlight;
        impl Drop for InFlight {
            fn drop(&mut self) {
                METRICS.owner_in_flight(-1);
            }
        }
        METRICS.owner_in_flight(1);
        let _in_flight = InFlight;
        let (tx, rx) = answer_slot();
        match self {
            Owner::Local(queue) => {
                if queue.send((req, Reply::Local(tx))).await.is_err() {
                    return Err(EtcdError::Stopped);
                }
            }
            Owner::Remote(r) => {
                let id = r.next_id.get();
                r.next_id.set(id.wrapping_add(1));
                r.waiting.borrow_mut().insert(id, tx);
                // Until the request is sent, a caller that gives up (its deadline, while the
                // owner's queue is full) takes its entry with it: no answer would remove it.
                let unsent = Unsent(r, id);
                if r.req_tx.send((id, req)).await.is_err() {
                    return Err(EtcdError::Stopped);
                }
                std::mem::forget(unsent);
            }
        }
        rx.recv().await.unwrap_or(Err(EtcdError::Stopped))
    }
}

/// Numbered keys for the stepped-read tests.
#[cfg(test)]
mod tests_numbered {
    use crate::kv::{KvState, Request};
    use crate::proto::etcdserverpb as pb;

    /// Puts `k{i:06}` = `v`.
    pub(super) fn put(state: &mut KvState, i: usize, v: &str) {
        let req = Request::Put(pb::PutRequest {
            key: format!("k{i:06}").into(),
            value: v.as_bytes().to_vec().into(),
            ..Default::default()
        });
        state.execute(req).unwrap();
    }

    /// A Range over every numbered key.
    pub(super) fn every() -> Request {
        Request::Range(pb::RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Notifier;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A compaction past the revision of a read under way trims nothing until the read ends;
    /// one at or below it may trim; the read answers what its revision held.
    #[test]
    fn trimming_waits_for_the_reads_under_way_below_its_revision() {
        use super::tests_numbered::{every as all, put};
        use super::{answer_slot, Reply, SteppedReads};
        use crate::kv::{KvState, Request, Response};
        use crate::proto::etcdserverpb as pb;
        let compact = |state: &mut KvState| {
            let revision = state.store().rev();
            let req = Request::Compact(pb::CompactionRequest {
                revision,
                physical: false,
            });
            state.execute(req).unwrap();
        };
        glommio::LocalExecutor::default().run(async move {
            let mut state = KvState::in_memory(1, 2);
            let keys = state.read_step_keys() + 10;
            for i in 0..keys {
                put(&mut state, i, "old");
            }
            let mut reads = SteppedReads::default();
            let (tx, rx) = answer_slot();
            reads.start(&mut state, all(), Reply::Local(tx)).await;
            assert!(!reads.is_empty(), "one step covered the read");
            for i in 0..keys {
                put(&mut state, i, "new");
            }
            compact(&mut state);
            assert!(state.compaction_pending());
            assert!(reads.hold_trimming(&state));
            // A read begun after the compaction holds nothing.
            let (tx2, rx2) = answer_slot();
            reads.start(&mut state, all(), Reply::Local(tx2)).await;
            assert_eq!(reads.all().count(), 2);
            while !reads.is_empty() {
                assert_eq!(
                    reads.all().any(|r| r.rev() < state.store().rev()),
                    reads.hold_trimming(&state)
                );
                reads.step(&state).await;
            }
            assert!(!reads.hold_trimming(&state));
            let values = |a: Option<super::Answer>| {
                let Some(Ok(Response::Range(r))) = a else {
                    panic!("no answer")
                };
                assert_eq!(r.count as usize, keys);
                let mut vs: Vec<_> = r.kvs.iter().map(|kv| kv.value.clone()).collect();
                vs.dedup();
                vs
            };
            assert_eq!(values(rx.recv().await), ["old"]);
            assert_eq!(values(rx2.recv().await), ["new"]);
        });
    }

    /// Past `STEPPED_READS_MAX` long reads under way, a new one waits after its first step
    /// (it is not walked whole at once, which held a cluster member's Raft loop); every read
    /// is answered whole, in the order the waiting ones came.
    #[test]
    fn reads_past_the_cap_wait_their_turn_and_are_all_answered() {
        use super::tests_numbered::{every as all, put};
        use super::{answer_slot, Reply, SteppedReads, STEPPED_READS_MAX};
        use crate::kv::{KvState, Request, Response};
        use crate::proto::etcdserverpb as pb;
        glommio::LocalExecutor::default().run(async move {
            let mut state = KvState::in_memory(1, 2);
            let keys = state.read_step_keys() + 10;
            for i in 0..keys {
                put(&mut state, i, "v");
            }
            let mut reads = SteppedReads::default();
            let mut answers = Vec::new();
            for _ in 0..STEPPED_READS_MAX + 2 {
                let (tx, rx) = answer_slot();
                reads.start(&mut state, all(), Reply::Local(tx)).await;
                answers.push(rx);
            }
            assert_eq!(reads.turns.len(), STEPPED_READS_MAX);
            assert_eq!(reads.waiting.len(), 2);
            // Past the cap, a read over fewer keys than a waiting read's first step is still
            // answered at once (longer ones wait, as the two above).
            let (tx, rx) = answer_slot();
            let few = Request::Range(pb::RangeRequest {
                key: "k000010".into(),
                range_end: "k000060".into(),
                ..Default::default()
            });
            reads.start(&mut state, few, Reply::Local(tx)).await;
            let Some(Some(Ok(Response::Range(r)))) =
                futures_lite::future::poll_once(rx.recv()).await
            else {
                panic!("no answer at once")
            };
            assert_eq!(r.count, 50);
            assert_eq!(reads.waiting.len(), 2);
            while !reads.is_empty() {
                let (turns, waiting) = (reads.turns.len(), reads.waiting.len());
                reads.step(&state).await;
                assert!(reads.turns.len() <= STEPPED_READS_MAX);
                if reads.waiting.len() < waiting {
                    // Only in the place of a read that ended.
                    assert_eq!(reads.turns.len(), turns);
                }
            }
            for rx in answers {
                let Some(Ok(Response::Range(r))) = rx.recv().await else {
                    panic!("no answer")
                };
                assert_eq!((r.count as usize, r.kvs.len()), (keys, keys));
            }
        });
    }

    /// Small batches block (no io_uring round trip) only while no reads come; one client's
    /// batches block however it reads; large batches never do.
    #[test]
    fn small_batches_block_only_after_batches_without_reads() {
        use super::sync_mode;
        use crate::limits::{ONE_CLIENT_BATCHES, QUIET_BATCHES, QUIET_BLOCKING_BATCH_BELOW};
        use crate::log::SyncMode::{Background, Blocking, Ring};
        let small = QUIET_BLOCKING_BATCH_BELOW - 1;
        assert_eq!(sync_mode(small, 0, 0), Ring);
        assert_eq!(sync_mode(small, 0, QUIET_BATCHES - 1), Ring);
        assert_eq!(sync_mode(small, 0, QUIET_BATCHES), Blocking);
        assert_eq!(sync_mode(QUIET_BLOCKING_BATCH_BELOW, 0, 100), Ring);
        assert_eq!(sync_mode(100, 0, 100), Background);
        assert_eq!(sync_mode(1, ONE_CLIENT_BATCHES + 1, 0), Blocking);
        assert_eq!(sync_mode(1, ONE_CLIENT_BATCHES, 0), Ring);
    }

    /// What a checkpoint's Begin decides on a single member: nothing while a compaction still
    /// trims (the checkpoint would copy what it drops), a checkpoint once it is done, and, for
    /// a Defragment with nothing logged since the newest checkpoint, none: the segments it
    /// covers are released instead.
    #[test]
    fn a_checkpoint_begins_after_trimming_and_not_again_for_the_same_record() {
        use super::{checkpoint_op, Demands, Reply};
        use crate::kv::{CheckpointAnswer as A, CheckpointOp as Op, KvState, Request};
        use crate::proto::etcdserverpb as pb;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        glommio::LocalExecutor::default().run(async move {
            let mut log = crate::log::Log::open(&path, 1 << 20, 1).await.unwrap().log;
            let mut state = KvState::in_memory(1, 2);
            for i in 0..3 {
                let put = Request::Put(pb::PutRequest {
                    key: format!("k{i}").into(),
                    value: b"v".to_vec().into(),
                    ..Default::default()
                });
                state.execute(put).unwrap();
            }
            log.append(&[vec![1u8; 100]]).await.unwrap();
            let compact = Request::Compact(pb::CompactionRequest {
                revision: 3,
                physical: false,
            });
            state.execute(compact).unwrap();
            let mut demands = Demands::default();
            let (tx, _rx) = super::answer_slot();
            demands.push(Reply::Local(tx));
            let begin = |state: &mut KvState, log: &mut crate::log::Log, d: &mut Demands| {
                checkpoint_op(state, Some(log), Op::Begin, d).unwrap()
            };
            assert!(state.compaction_pending());
            assert!(matches!(
                begin(&mut state, &mut log, &mut demands),
                A::Begun(None)
            ));
            while state.compact_step(1) {}
            let A::Begun(Some((seq, ..))) = begin(&mut state, &mut log, &mut demands) else {
                panic!("no checkpoint once trimmed")
            };
            assert_eq!(seq, log.next_seq() - 1);
            // Taken and released (the log's one segment takes appends and stays).
            assert!(log.release_before(seq + 1).is_empty());
            state.checkpoint_abandon();
            let (tx, _rx) = super::answer_slot();
            demands.push(Reply::Local(tx));
            log.roll_now().await.unwrap();
            let A::Unchanged(gone) = begin(&mut state, &mut log, &mut demands) else {
                panic!("a second checkpoint of the same record")
            };
            assert_eq!(gone.iter().map(|r| r.ordinal).collect::<Vec<_>>(), [0]);
            // Finished answers the waiting Defragment calls, once: both (the first was still
            // in flight from the checkpoint begun above).
            assert_eq!(demands.finished().len(), 2);
            assert!(demands.finished().is_empty() && !demands.forcing());
            // Something logged since: a checkpoint again.
            log.append(&[vec![2u8; 100]]).await.unwrap();
            let (tx, _rx) = super::answer_slot();
            demands.push(Reply::Local(tx));
            assert!(matches!(
                begin(&mut state, &mut log, &mut demands),
                A::Begun(Some(_))
            ));
        });
    }

    #[test]
    fn an_answer_slot_wakes_its_caller_with_the_answer_or_none() {
        use super::{answer_slot, EtcdError};
        glommio::LocalExecutor::default().run(async {
            // Answered later: the waiting caller is woken with it.
            let (tx, rx) = answer_slot();
            let waiting = glommio::spawn_local(rx.recv());
            glommio::yield_if_needed().await;
            glommio::spawn_local(async move {
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                tx.send(Err(EtcdError::Stopped));
            })
            .detach();
            assert!(matches!(waiting.await, Some(Err(EtcdError::Stopped))));
            // Dropped unanswered (a stopping apply loop): the caller gets None, not a hang.
            let (tx, rx) = answer_slot();
            let waiting = glommio::spawn_local(rx.recv());
            glommio::spawn_local(async move {
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                drop(tx);
            })
            .detach();
            assert!(waiting.await.is_none());
            // A caller that gave up: the answer is dropped with the slot.
            let (tx, rx) = answer_slot();
            let slot = std::rc::Rc::downgrade(&tx.0);
            drop(rx);
            tx.send(Err(EtcdError::Stopped));
            assert!(
                slot.upgrade().is_none(),
                "the slot and its answer are freed"
            );
        });
    }

    #[test]
    fn a_shard_without_subscribers_reads_the_owners_revision_without_a_note() {
        let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
        ex.run(async {
            let rev = Arc::new(AtomicI64::new(0));
            let owner = Notifier::shared(rev.clone(), Arc::default());
            let listening = Arc::new(AtomicUsize::new(0));
            let other = Notifier::shared(rev, listening.clone());
            // A batch on the owner while the other shard has nobody listening: no note goes
            // there (its note task reads the count), yet a later subscriber sees the revision.
            owner.notify(7);
            assert_eq!(listening.load(Ordering::SeqCst), 0);
            let sub = other.subscribe();
            assert_eq!(listening.load(Ordering::SeqCst), 1);
            assert_eq!(other.rev(), 7);
            // A note wakes the subscriber once; one for a revision already woken for does not.
            other.notify(7);
            assert_eq!(
                futures_lite::future::poll_once(sub.recv()).await,
                Some(Some(()))
            );
            other.notify(7);
            assert_eq!(futures_lite::future::poll_once(sub.recv()).await, None);
            owner.notify(9);
            other.notify(9);
            assert_eq!(other.rev(), 9);
            assert_eq!(
                futures_lite::future::poll_once(sub.recv()).await,
                Some(Some(()))
            );
            drop(sub);
            assert_eq!(
                listening.load(Ordering::SeqCst),
                0,
                "counted while it lives"
            );
        });
    }
}
