//! The Watch service, and the LeaseKeepAlive stream: the two bidirectional streams.
//!
//! A watch stream lives on the shard that accepted its connection and holds its watchers:
//! what each watches and the next revision it wants. It *pulls* events from the owner shard
//! ([`kv::Request::WatchPull`]) when the owner's revision moves past what its watchers have
//! seen, at most `WATCH_PULL_EVENTS_MAX` events at a time (whole revisions), and sends them
//! with HTTP/2 flow control. So the owner never buffers for a watcher and never waits for one:
//! a slow client only holds back its own stream, whose watchers simply pull from further back
//! (recent history from the store's change log, older history from the index) when the client
//! reads again, or are canceled with the compacted revision if compaction passed them. Memory
//! per stream is one pull's events, whatever the client does.
//!
//! The guarantees follow from the pull: events come in revision order from the next revision
//! a watcher wants, each revision whole (unless the watcher asked for fragments), and the next
//! revision only moves past what was sent. A progress response at revision R is sent only
//! when every watcher of the stream has been sent everything up to R.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use super::access::{self, Credentials};
use super::grpc::{decode_msg, frame};
use super::metrics::METRICS;
use super::stream::{client_gone, Gone, Sink, Source};
use super::ShardCtx;
use crate::error::{EtcdError, Status};
use crate::kv::{self, Pulled, WatchPull, WatchSpec};
use crate::limits::{
    WATCHERS_PER_STREAM_MAX, WATCH_GROUP_MIN_WATCHERS, WATCH_PULL_BYTES_MAX, WATCH_PULL_EVENTS_MAX,
    WATCH_SEND_COALESCE_BYTES,
};
use crate::mvcc::KeySpan;
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;
use pb::watch_request::RequestUnion;

/// How a stream ended: with a status for the client, or because the client went away.
enum End {
    Status(Status),
    Gone,
}

impl From<Status> for End {
    fn from(s: Status) -> End {
        End::Status(s)
    }
}

impl From<Gone> for End {
    fn from(_: Gone) -> End {
        End::Gone
    }
}

struct Watcher {
    spec: WatchSpec,
    progress_notify: bool,
    fragment: bool,
    /// Events were sent since the last progress notification.
    active: bool,
    /// Served by the stream's group rather than by a pull of its own.
    grouped: bool,
}

/// Watchers that are level (all want the same next revision) are served together: one pull
/// over every key from that revision, whose events the stream matches to its watchers by key
/// (a map for single-key watchers, a scan of the range watchers). So a write costs a stream
/// one pull however many watchers it has, instead of one spec per watcher. Watchers join when
/// they catch up with the group; a stream uses a group once it has
/// `WATCH_GROUP_MIN_WATCHERS` watchers (below that, per-watcher pulls cost less than reading
/// every change).
#[derive(Default)]
struct Group {
    /// The next revision every member wants.
    from: i64,
    by_key: HashMap<Bytes, Vec<i64>>,
    ranges: Vec<i64>,
    /// Members that asked for previous key-values.
    prev_kv: usize,
    len: usize,
}

/// The id the group's spec has in a pull.
const GROUP: i64 = i64::MIN;

struct WatchStream<'a, S> {
    ctx: &'a ShardCtx,
    /// Who opened the stream (checked when each watcher is created, as etcd).
    cred: &'a Credentials,
    out: &'a mut S,
    watchers: BTreeMap<i64, Watcher>,
    /// Watchers not in the group.
    loose: BTreeSet<i64>,
    group: Group,
    next_id: i64,
    /// The newest revision known, and the last header the owner sent.
    known: i64,
    header: pb::ResponseHeader,
    /// Encoded responses not yet handed to HTTP/2: the responses of one pull go out as one
    /// DATA chunk rather than one frame each.
    pending: BytesMut,
}

/// Serves one Watch stream until the client goes away. As etcd's, the stream goes on after
/// the client ends its side (no more requests): its watchers still get their events.
/// Completes when the member has had no leader for three checks in a row, one per election
/// timeout (etcd's `monitorLeader`): a stream that requires a leader then ends with "no
/// leader". Never completes for a stream that does not require one.
async fn leader_lost(ctx: &ShardCtx, required: bool) -> End {
    if !required {
        return std::future::pending().await;
    }
    let mut missed = 0;
    loop {
        glommio::timer::sleep(ctx.election).await;
        if super::metrics::has_leader() {
            missed = 0;
        } else {
            missed += 1;
            if missed >= 3 {
                return End::Status(crate::error::EtcdError::NoLeader.into());
            }
        }
    }
}

pub(crate) async fn serve_watch(
    reader: &mut impl Source,
    out: &mut impl Sink,
    ctx: &ShardCtx,
    cred: &Credentials,
    require_leader: bool,
) {
    if out.open().await.is_err() {
        return;
    }
    let wake = ctx.notifier.subscribe();
    let mut s = WatchStream {
        ctx,
        cred,
        out,
        watchers: BTreeMap::new(),
        loose: BTreeSet::new(),
        group: Group::default(),
        next_id: 0,
        known: ctx.notifier.rev(),
        header: pb::ResponseHeader::default(),
        pending: BytesMut::new(),
    };
    METRICS.watch_streams.inc();
    let end = futures_lite::future::or(s.run(reader, &wake), async {
        Err(leader_lost(ctx, require_leader).await)
    })
    .await;
    METRICS.watch_streams.dec();
    METRICS.watchers.dec_by(s.watchers.len() as i64);
    // Responses queued before the stream ended (say, to the requests before a malformed one)
    // still go out, ahead of the status.
    let end = match end {
        Err(End::Gone) => Err(End::Gone),
        end => match s.flush().await {
            Ok(()) => end,
            Err(gone) => Err(gone),
        },
    };
    finish(s.out, end).await;
}

/// Serves one LeaseKeepAlive stream: one answer per request, in order; it ends when the client
/// ends its side, as etcd's does.
pub(crate) async fn serve_keep_alive(
    reader: &mut impl Source,
    out: &mut impl Sink,
    ctx: &ShardCtx,
    cred: &Credentials,
    require_leader: bool,
) {
    if out.open().await.is_err() {
        return;
    }
    let serve = async {
        while let Some(msg) = reader.next().await {
            let req: pb::LeaseKeepAliveRequest = decode_msg(msg?)?;
            access::may_keep_alive(ctx, cred).map_err(|e| End::Status(e.into()))?;
            let resp = keep_alive(ctx, req)
                .await
                .map_err(|e| End::Status(e.into()))?;
            out.send(frame(&resp)).await?;
        }
        Ok(())
    };
    let end =
        futures_lite::future::or(serve, async { Err(leader_lost(ctx, require_leader).await) })
            .await;
    finish(out, end).await;
}

/// One keepalive through the owner. In a cluster it is logged: while the cluster has no
/// leader or changes it, it is asked again every 50 ms for up to `KEEPALIVE_RETRY` plus two
/// election timeouts (etcd's request timeout: as long as its LeaseRenew waits for a leader),
/// so that a leader change does not end the stream.
async fn keep_alive(
    ctx: &ShardCtx,
    req: pb::LeaseKeepAliveRequest,
) -> Result<pb::LeaseKeepAliveResponse, EtcdError> {
    let until = Instant::now() + crate::limits::KEEPALIVE_RETRY + 2 * ctx.election;
    loop {
        match ctx.owner.call(kv::Request::LeaseKeepAlive(req)).await {
            Ok(kv::Response::LeaseKeepAlive(r)) => return Ok(r),
            Ok(other) => panic!("a keepalive answered with {other:?}"),
            Err(EtcdError::LeaderChanged | EtcdError::NoLeader) if Instant::now() < until => {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            // etcd's LeaseRenew: "no leader" when none was found in time, "request timed out"
            // when leaders came and went but none answered.
            Err(EtcdError::LeaderChanged) => return Err(EtcdError::Timeout),
            Err(e) => return Err(e),
        }
    }
}

/// Ends the stream with its status.
async fn finish(out: &mut impl Sink, end: Result<(), End>) {
    match end {
        Ok(()) => out.finish(None).await,
        Err(End::Gone) => {}
        Err(End::Status(s)) => out.finish(Some(s)).await,
    }
}

impl<S: Sink> WatchStream<'_, S> {
    async fn run(
        &mut self,
        reader: &mut impl Source,
        wake: &super::shard::Subscription,
    ) -> Result<(), End> {
        // Whether the client may still send requests.
        let mut reading = true;
        let interval = Duration::from_secs(self.ctx.watch_progress_notify_secs.max(1));
        let mut next_progress = Instant::now() + interval;
        loop {
            // Requests first, so cancels and creates are not held up by catching up.
            // Their answers (created, canceled) are queued and go out together.
            while let Some(msg) = match reading {
                true => futures_lite::future::poll_once(reader.next()).await,
                false => None,
            } {
                match msg {
                    Some(msg) => self.handle(msg?).await?,
                    None => reading = false,
                }
                if self.pending.len() >= WATCH_SEND_COALESCE_BYTES {
                    self.flush().await?;
                }
            }
            self.flush().await?;
            self.known = self.known.max(self.ctx.notifier.rev());
            if self.behind() {
                self.pull(false).await?;
                self.flush().await?;
                continue;
            }
            if Instant::now() >= next_progress {
                self.progress_notify().await?;
                next_progress = Instant::now() + interval;
            }
            enum Wake {
                Message(Option<Result<Bytes, Status>>),
                Gone,
                Revision(bool),
                Tick,
            }
            let left = next_progress.saturating_duration_since(Instant::now());
            let woke = futures_lite::future::or(
                async {
                    if reading {
                        Wake::Message(reader.next().await)
                    } else {
                        client_gone(reader, self.out).await;
                        Wake::Gone
                    }
                },
                futures_lite::future::or(
                    async { Wake::Revision(wake.recv().await.is_some()) },
                    async {
                        glommio::timer::sleep(left).await;
                        Wake::Tick
                    },
                ),
            )
            .await;
            match woke {
                Wake::Message(Some(msg)) => self.handle(msg?).await?,
                Wake::Message(None) => reading = false,
                Wake::Gone => return Err(End::Gone),
                // The shard is stopping.
                Wake::Revision(false) => return Ok(()),
                Wake::Revision(true) | Wake::Tick => {}
            }
        }
    }

    async fn handle(&mut self, msg: Bytes) -> Result<(), End> {
        let req: pb::WatchRequest = decode_msg(msg)?;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                // etcd answers only the cancel of a watcher that exists.
                if self.remove(c.watch_id).is_some() {
                    let resp = pb::WatchResponse {
                        header: Some(self.header_at(self.known)),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    self.queue(&resp);
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => self.progress().await,
            // etcd ignores a request with nothing in it rather than ending the stream.
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), End> {
        let key = if c.key.is_empty() {
            Bytes::from_static(&[0])
        } else {
            c.key
        };
        let refused = |reason: &str| pb::WatchResponse {
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        let empty_range = !c.range_end.is_empty() && c.range_end[..] != [0] && key >= c.range_end;
        let id = if c.watch_id == 0 {
            // Ids move on and are never reused (as etcd's); a client-chosen one is skipped.
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else {
            c.watch_id
        };
        let denied = access::may_watch(self.ctx, self.cred, &key, &c.range_end).err();
        let refusal = if let Some(e) = denied {
            // etcd 3.5's answer: the whole gRPC error as the reason, the stream goes on.
            Some(refused(&format!(
                "rpc error: code = {:?} desc = {}",
                e.code(),
                e.message()
            )))
        } else if empty_range {
            Some(refused("mvcc: watcher range is empty"))
        } else if self.watchers.contains_key(&id) {
            Some(refused(
                "mvcc: duplicate watch ID provided on the WatchStream",
            ))
        } else if self.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            Some(refused(&format!(
                "ferrocd: too many watchers on one stream (at most {WATCHERS_PER_STREAM_MAX})"
            )))
        } else {
            None
        };
        if let Some(mut resp) = refusal {
            resp.header = Some(self.header_at(self.known));
            self.queue(&resp);
            return Ok(());
        }
        let filters = |f: pb::watch_create_request::FilterType| c.filters.contains(&(f as i32));
        let w = Watcher {
            spec: WatchSpec {
                key,
                range_end: c.range_end,
                from: c.start_revision.max(0),
                prev_kv: c.prev_kv,
                no_put: filters(pb::watch_create_request::FilterType::Noput),
                no_delete: filters(pb::watch_create_request::FilterType::Nodelete),
            },
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            active: false,
            grouped: false,
        };
        // The first pull fixes where a watcher without a start revision begins (the revision
        // after the current one) and gets the history one with a past start revision asked
        // for; the created response goes first, with the revision the pull saw.
        let pulled = self.pull_specs(vec![(id, w.spec.clone())]).await?;
        self.watchers.insert(id, w);
        METRICS.watchers.inc();
        self.loose.insert(id);
        let created = pb::WatchResponse {
            header: Some(self.header),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        self.queue(&created);
        self.deliver(pulled).await?;
        self.regroup();
        Ok(())
    }

    /// The next revision a watcher wants.
    fn next_rev_of(&self, w: &Watcher) -> i64 {
        if w.grouped {
            self.group.from
        } else {
            w.spec.from
        }
    }

    /// Some watcher wants a revision the store has.
    fn behind(&self) -> bool {
        (self.group.len > 0 && self.group.from <= self.known)
            || self
                .loose
                .iter()
                .any(|id| self.watchers[id].spec.from <= self.known)
    }

    /// Removes a watcher, from the group too.
    fn remove(&mut self, id: i64) -> Option<Watcher> {
        let w = self.watchers.remove(&id)?;
        METRICS.watchers.dec();
        self.loose.remove(&id);
        if w.grouped {
            let g = &mut self.group;
            if w.spec.range_end.is_empty() {
                if let Some(ids) = g.by_key.get_mut(&w.spec.key) {
                    ids.retain(|&i| i != id);
                    if ids.is_empty() {
                        g.by_key.remove(&w.spec.key);
                    }
                }
            } else {
                g.ranges.retain(|&i| i != id);
            }
            g.prev_kv -= usize::from(w.spec.prev_kv);
            g.len -= 1;
        }
        Some(w)
    }

    /// Moves loose watchers that are level with the group into it (or starts the group).
    fn regroup(&mut self) {
        if self.watchers.len() < WATCH_GROUP_MIN_WATCHERS {
            return;
        }
        let joining: Vec<i64> = self
            .loose
            .iter()
            .copied()
            .filter(|id| {
                let w = &self.watchers[id];
                !w.fragment
                    && w.spec.from > 0
                    && (self.group.len == 0 || w.spec.from == self.group.from)
            })
            .collect();
        for id in joining {
            let w = self.watchers.get_mut(&id).expect("a loose watcher exists");
            let g = &mut self.group;
            if g.len == 0 {
                g.from = w.spec.from;
            } else if w.spec.from != g.from {
                continue;
            }
            w.grouped = true;
            self.loose.remove(&id);
            if w.spec.range_end.is_empty() {
                g.by_key.entry(w.spec.key.clone()).or_default().push(id);
            } else {
                g.ranges.push(id);
            }
            g.prev_kv += usize::from(w.spec.prev_kv);
            g.len += 1;
        }
    }

    /// Sends the group's events to its members and moves them all to `next`.
    fn dispatch(&mut self, events: Vec<mvccpb::Event>, next: i64) {
        use mvccpb::event::EventType;
        let mut per: BTreeMap<i64, Vec<mvccpb::Event>> = BTreeMap::new();
        for e in &events {
            let Some(kv) = &e.kv else { continue };
            let keyed = self.group.by_key.get(&kv.key).into_iter().flatten();
            let ranged = self.group.ranges.iter().filter(|id| {
                let spec = &self.watchers[*id].spec;
                KeySpan::new(&spec.key, &spec.range_end).contains(&kv.key)
            });
            for &id in keyed.chain(ranged) {
                let spec = &self.watchers[&id].spec;
                if !spec.wants(e.r#type == EventType::Delete as i32) {
                    continue;
                }
                let mut ev = e.clone();
                if !spec.prev_kv {
                    ev.prev_kv = None;
                }
                per.entry(id).or_default().push(ev);
            }
        }
        // Members' own `spec.from` is not kept: theirs is the group's (see `next_rev_of`).
        self.group.from = self.group.from.max(next);
        for (id, events) in per {
            if let Some(w) = self.watchers.get_mut(&id) {
                w.active = true;
            }
            let resp = pb::WatchResponse {
                header: Some(self.header),
                watch_id: id,
                events,
                ..Default::default()
            };
            self.queue(&resp);
        }
    }

    /// Pulls for the watchers that are behind (or for all of them), and sends what came.
    async fn pull(&mut self, all: bool) -> Result<(), End> {
        METRICS.watch_pulls.inc();
        let mut specs: Vec<(i64, WatchSpec)> = self
            .loose
            .iter()
            .map(|id| (*id, &self.watchers[id]))
            .filter(|(_, w)| all || w.spec.from <= self.known)
            .map(|(id, w)| (id, w.spec.clone()))
            .collect();
        if self.group.len > 0 && (all || self.group.from <= self.known) {
            specs.push((
                GROUP,
                WatchSpec {
                    key: Bytes::from_static(&[0]),
                    range_end: Bytes::from_static(&[0]),
                    from: self.group.from,
                    prev_kv: self.group.prev_kv > 0,
                    no_put: false,
                    no_delete: false,
                },
            ));
        }
        let pulled = self.pull_specs(specs).await?;
        self.deliver(pulled).await?;
        self.regroup();
        Ok(())
    }

    async fn pull_specs(
        &mut self,
        specs: Vec<(i64, WatchSpec)>,
    ) -> Result<Vec<(i64, Pulled)>, End> {
        let (ids, specs): (Vec<i64>, Vec<WatchSpec>) = specs.into_iter().unzip();
        let req = kv::Request::WatchPull(WatchPull {
            specs,
            max_events: WATCH_PULL_EVENTS_MAX,
            max_bytes: WATCH_PULL_BYTES_MAX,
        });
        let pulled = match self.ctx.owner.call(req).await {
            Ok(kv::Response::WatchPull(p)) => p,
            Ok(other) => panic!("a watch pull answered with {other:?}"),
            Err(e) => return Err(End::Status(e.into())),
        };
        self.known = self.known.max(pulled.header.revision);
        self.header = pulled.header;
        Ok(ids.into_iter().zip(pulled.results).collect())
    }

    async fn deliver(&mut self, pulled: Vec<(i64, Pulled)>) -> Result<(), End> {
        for (id, p) in pulled {
            if id == GROUP {
                match p {
                    Pulled::Events { events, next } => self.dispatch(events, next),
                    Pulled::Compacted(rev) => {
                        let members: Vec<i64> = self
                            .watchers
                            .iter()
                            .filter(|(_, w)| w.grouped)
                            .map(|(&id, _)| id)
                            .collect();
                        for id in members {
                            self.remove(id);
                            self.queue_compacted(id, rev);
                        }
                    }
                }
                if self.pending.len() >= WATCH_SEND_COALESCE_BYTES {
                    self.flush().await?;
                }
                continue;
            }
            match p {
                Pulled::Events { events, next } => {
                    let Some(w) = self.watchers.get_mut(&id) else {
                        continue;
                    };
                    // A future start revision stays where it is until the store reaches it.
                    w.spec.from = w.spec.from.max(next);
                    if events.is_empty() {
                        continue;
                    }
                    w.active = true;
                    let fragment = w.fragment;
                    let resp = pb::WatchResponse {
                        header: Some(self.header),
                        watch_id: id,
                        events,
                        ..Default::default()
                    };
                    if fragment {
                        self.queue_fragments(resp);
                    } else {
                        self.queue(&resp);
                    }
                    if self.pending.len() >= WATCH_SEND_COALESCE_BYTES {
                        self.flush().await?;
                    }
                }
                Pulled::Compacted(rev) => {
                    if self.remove(id).is_some() {
                        self.queue_compacted(id, rev);
                    }
                }
            }
        }
        Ok(())
    }

    /// As etcd: canceled, with the compacted revision and a header without a revision.
    fn queue_compacted(&mut self, id: i64, rev: i64) {
        let resp = pb::WatchResponse {
            header: Some(self.header_at(0)),
            watch_id: id,
            canceled: true,
            compact_revision: rev,
            ..Default::default()
        };
        self.queue(&resp);
    }

    /// A client's progress request: answered with a revision up to which every watcher of the
    /// stream has been sent every event (WatchId -1: for all of them, as etcd).
    async fn progress(&mut self) -> Result<(), End> {
        self.pull(true).await?;
        // Catch up a little; under a steady stream of writes the answer is simply older.
        for _ in 0..16 {
            if !self.behind() {
                break;
            }
            self.pull(false).await?;
        }
        let rev = self
            .watchers
            .values()
            .map(|w| self.next_rev_of(w) - 1)
            .min()
            .unwrap_or(self.known)
            .min(self.known);
        let resp = pb::WatchResponse {
            header: Some(self.header_at(rev)),
            watch_id: -1,
            ..Default::default()
        };
        self.send(&resp).await
    }

    /// The periodic notification to watchers that asked for it and had no events since the
    /// last one (etcd's progress_notify).
    async fn progress_notify(&mut self) -> Result<(), End> {
        let known = self.known;
        let group_from = self.group.from;
        let due: Vec<i64> = self
            .watchers
            .iter_mut()
            .filter(|(_, w)| {
                let from = if w.grouped { group_from } else { w.spec.from };
                w.progress_notify && from > known
            })
            .filter_map(|(&id, w)| (!std::mem::take(&mut w.active)).then_some(id))
            .collect();
        for id in due {
            let resp = pb::WatchResponse {
                header: Some(self.header_at(known)),
                watch_id: id,
                ..Default::default()
            };
            self.send(&resp).await?;
        }
        Ok(())
    }

    fn header_at(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            revision,
            ..self.header
        }
    }

    /// Encodes a response, framed, after those pending.
    fn queue(&mut self, resp: &pb::WatchResponse) {
        let len = resp.encoded_len();
        self.pending.reserve(5 + len);
        self.pending.put_u8(0);
        self.pending.put_u32(len as u32);
        resp.encode(&mut self.pending).expect("reserved");
    }

    /// Hands the pending responses to HTTP/2, waiting for flow control.
    async fn flush(&mut self) -> Result<(), End> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = self.pending.split().freeze();
        Ok(self.out.send(chunk).await?)
    }

    async fn send(&mut self, resp: &pb::WatchResponse) -> Result<(), End> {
        self.queue(resp);
        self.flush().await
    }

    fn queue_fragments(&mut self, resp: pb::WatchResponse) {
        let limit = self.ctx.max_request_bytes;
        if resp.encoded_len() < limit || resp.events.len() < 2 {
            return self.queue(&resp);
        }
        let mut rest = resp.events.into_iter().peekable();
        let base = pb::WatchResponse {
            events: Vec::new(),
            fragment: true,
            ..resp
        };
        let mut size = base.encoded_len();
        let mut cur = base.clone();
        while let Some(ev) = rest.next() {
            let len = ev.encoded_len();
            let ev_size = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
            if !cur.events.is_empty() && size + ev_size >= limit {
                self.queue(&cur);
                cur = base.clone();
                size = base.encoded_len();
            }
            size += ev_size;
            cur.events.push(ev);
            if rest.peek().is_none() {
                cur.fragment = false;
                self.queue(&cur);
            }
        }
    }
}
