//! The v3lock (Lock, Unlock) and v3election (Campaign, Proclaim, Leader, Observe, Resign)
//! services. As in etcd, they are recipes over the KV API, carried out by the server for the
//! client: a lock or a candidacy is a key `<name>/<lease id in hex>` attached to the caller's
//! lease; the holder (or leader) is the key under `<name>/` with the lowest create revision;
//! a waiter waits, with a watch, for the deletion of every key created before its own.
//!
//! The steps and their error messages follow etcd's clientv3 `concurrency` package, which
//! etcd's own servers for these services call: the same keys, the same transactions, so that
//! server-side and client-side (`etcdctl lock`) lockers of one name exclude each other.
//!
//! A caller that goes away (stream reset) or whose deadline passes while it waits has its key
//! deleted, as etcd does on a canceled context; otherwise a later holder would wait on a key
//! nobody holds until its lease expired.

use std::collections::VecDeque;
use std::future::Future;

use bytes::Bytes;

use super::ShardCtx;
use crate::error::{Code, EtcdError, Status};
use crate::kv::{self, prefix_end, Pulled, WatchPull, WatchSpec};
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;
use crate::proto::v3electionpb as epb;
use crate::proto::v3lockpb as lpb;

/// etcd's recipe servers are clients of the KV API: an error from it reaches their caller
/// with its message but as a plain error, gRPC code Unknown.
fn relayed(s: Status) -> Status {
    Status::new(Code::Unknown, s.message)
}

async fn call(ctx: &ShardCtx, req: kv::Request) -> Result<kv::Response, Status> {
    ctx.owner.call(req).await.map_err(|e| relayed(e.into()))
}

async fn txn(ctx: &ShardCtx, t: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
    ctx.owner.txn(t).await.map_err(relayed)
}

async fn range(ctx: &ShardCtx, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
    ctx.owner.range(r).await.map_err(relayed)
}

async fn delete(ctx: &ShardCtx, key: Bytes) -> Result<pb::DeleteRangeResponse, Status> {
    ctx.owner.delete(key).await.map_err(relayed)
}

/// clientv3's errors from the recipes are plain Go errors: gRPC code Unknown.
fn unknown(msg: &str) -> Status {
    Status::new(Code::Unknown, msg)
}

fn missing_leader() -> Status {
    unknown("\"leader\" field must be provided")
}

/// `<prefix><lease id in lowercase hex>`, as clientv3 names a session's key.
fn session_key(prefix: &[u8], lease: i64) -> Bytes {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    Bytes::from(k)
}

fn with_slash(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// The key under `prefix` with the lowest (`first`) or highest create revision, at most
/// `max_create` when non-zero (clientv3's WithFirstCreate / WithLastCreate).
fn by_create(prefix: &[u8], first: bool, max_create: i64) -> pb::RangeRequest {
    pb::RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: Bytes::from(prefix_end(prefix)),
        limit: 1,
        sort_order: if first {
            pb::range_request::SortOrder::Ascend
        } else {
            pb::range_request::SortOrder::Descend
        } as i32,
        sort_target: pb::range_request::SortTarget::Create as i32,
        max_create_revision: max_create,
        ..Default::default()
    }
}

fn create_rev_is(key: &Bytes, rev: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn put_op(key: &Bytes, value: Bytes, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

fn range_op(r: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(r)),
    }
}

fn get_op(key: &Bytes) -> pb::RequestOp {
    range_op(pb::RangeRequest {
        key: key.clone(),
        ..Default::default()
    })
}

fn range_kvs(r: &pb::ResponseOp) -> &[mvccpb::KeyValue] {
    match &r.response {
        Some(pb::response_op::Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

/// Follows one key range from a revision on, as a watch would: waits for the store to move
/// and pulls what changed from the owner shard.
struct Follow<'a> {
    ctx: &'a ShardCtx,
    spec: WatchSpec,
    wake: super::shard::Subscription,
}

impl<'a> Follow<'a> {
    fn new(ctx: &'a ShardCtx, key: Bytes, range_end: Bytes, from: i64) -> Follow<'a> {
        Follow {
            ctx,
            spec: WatchSpec {
                key,
                range_end,
                from,
                prev_kv: false,
                no_put: false,
                no_delete: false,
            },
            wake: ctx.notifier.subscribe(),
        }
    }

    /// The next non-empty batch of events (whole revisions, in order) and its header.
    async fn next(&mut self) -> Result<(pb::ResponseHeader, Vec<mvccpb::Event>), Status> {
        loop {
            if self.spec.from == 0 || self.spec.from <= self.ctx.notifier.rev() {
                let req = kv::Request::WatchPull(WatchPull {
                    specs: vec![self.spec.clone()],
                    max_events: crate::limits::WATCH_PULL_EVENTS_MAX,
                    max_bytes: crate::limits::WATCH_PULL_BYTES_MAX,
                });
                let mut pulled = match call(self.ctx, req).await? {
                    kv::Response::WatchPull(p) => p,
                    other => unreachable!("a watch pull answered with {other:?}"),
                };
                match pulled.results.pop() {
                    Some(Pulled::Events { events, next }) => {
                        self.spec.from = self.spec.from.max(next);
                        if !events.is_empty() {
                            return Ok((pulled.header, events));
                        }
                    }
                    Some(Pulled::Compacted(_)) => return Err(relayed(EtcdError::Compacted.into())),
                    None => unreachable!("one spec, one result"),
                }
                if self.spec.from <= self.ctx.notifier.rev() {
                    continue;
                }
            }
            if self.wake.recv().await.is_none() {
                return Err(relayed(EtcdError::Stopped.into()));
            }
        }
    }
}

/// clientv3's waitDelete: until `key` is deleted at or after `rev`.
async fn wait_delete(ctx: &ShardCtx, key: Bytes, rev: i64) -> Result<(), Status> {
    let mut f = Follow::new(ctx, key, Bytes::new(), rev);
    loop {
        let (_, events) = f.next().await?;
        if events
            .iter()
            .any(|e| e.r#type == mvccpb::event::EventType::Delete as i32)
        {
            return Ok(());
        }
    }
}

/// clientv3's waitDeletes: until no key under `prefix` has a create revision of at most
/// `max_create`.
async fn wait_deletes(ctx: &ShardCtx, prefix: &[u8], max_create: i64) -> Result<(), Status> {
    loop {
        let r = range(ctx, by_create(prefix, false, max_create)).await?;
        let Some(kv) = r.kvs.first() else {
            return Ok(());
        };
        let rev = r.header.map_or(0, |h| h.revision);
        wait_delete(ctx, kv.key.clone(), rev).await?;
    }
}

/// Runs `wait` unless `canceled` completes first: the outer error is the cancellation's
/// status, the inner result `wait`'s.
async fn cancelable<T>(
    wait: impl Future<Output = Result<T, Status>>,
    canceled: impl Future<Output = Status>,
) -> Result<Result<T, Status>, Status> {
    futures_lite::future::or(async { Ok(wait.await) }, async { Err(canceled.await) }).await
}

/// v3lock Lock: returns once the caller holds the lock named `name` under its lease.
pub(crate) async fn lock(
    ctx: &ShardCtx,
    req: lpb::LockRequest,
    canceled: impl Future<Output = Status>,
) -> Result<lpb::LockResponse, Status> {
    let prefix = with_slash(&req.name);
    let my_key = session_key(&prefix, req.lease);
    let owner = || range_op(by_create(&prefix, true, 0));
    let resp = txn(
        ctx,
        pb::TxnRequest {
            compare: vec![create_rev_is(&my_key, 0)],
            success: vec![put_op(&my_key, Bytes::new(), req.lease), owner()],
            failure: vec![get_op(&my_key), owner()],
        },
    )
    .await?;
    let header = resp.header;
    let my_rev = if resp.succeeded {
        header.map_or(0, |h| h.revision)
    } else {
        range_kvs(&resp.responses[0])
            .first()
            .map_or(0, |kv| kv.create_revision)
    };
    let owner_kvs = range_kvs(&resp.responses[1]);
    if owner_kvs
        .first()
        .is_none_or(|kv| kv.create_revision == my_rev)
    {
        return Ok(lpb::LockResponse {
            header,
            key: my_key,
        });
    }
    // A wait that fails or is canceled releases the key (clientv3's Unlock).
    if let Ok(Err(e)) | Err(e) = cancelable(wait_deletes(ctx, &prefix, my_rev - 1), canceled).await
    {
        let _ = delete(ctx, my_key.clone()).await;
        return Err(e);
    }
    // The session's key must still be there (its lease may have expired meanwhile).
    let r = range(
        ctx,
        pb::RangeRequest {
            key: my_key.clone(),
            ..Default::default()
        },
    )
    .await?;
    if r.kvs.is_empty() {
        return Err(unknown("mutex: session is expired"));
    }
    Ok(lpb::LockResponse {
        header: r.header,
        key: my_key,
    })
}

/// v3lock Unlock: deletes the lock's key.
pub(crate) async fn unlock(
    ctx: &ShardCtx,
    req: lpb::UnlockRequest,
) -> Result<lpb::UnlockResponse, Status> {
    let r = delete(ctx, req.key).await?;
    Ok(lpb::UnlockResponse { header: r.header })
}

/// Proclaim's transaction: put `value` on the leader key if it is still the same candidacy.
async fn proclaim_txn(
    ctx: &ShardCtx,
    leader: &epb::LeaderKey,
    value: Bytes,
) -> Result<pb::ResponseHeader, Status> {
    let r = txn(
        ctx,
        pb::TxnRequest {
            compare: vec![create_rev_is(&leader.key, leader.rev)],
            success: vec![put_op(&leader.key, value, leader.lease)],
            failure: vec![],
        },
    )
    .await?;
    if !r.succeeded {
        return Err(unknown("election: not leader"));
    }
    Ok(r.header.unwrap_or_default())
}

/// Resign's transaction: delete the leader key if it is still the same candidacy.
async fn resign_txn(ctx: &ShardCtx, key: &Bytes, rev: i64) -> Result<pb::TxnResponse, Status> {
    let del = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            },
        )),
    };
    txn(
        ctx,
        pb::TxnRequest {
            compare: vec![create_rev_is(key, rev)],
            success: vec![del],
            failure: vec![],
        },
    )
    .await
}

/// v3election Campaign: returns once the caller's candidacy leads the election.
pub(crate) async fn campaign(
    ctx: &ShardCtx,
    req: epb::CampaignRequest,
    canceled: impl Future<Output = Status>,
) -> Result<epb::CampaignResponse, Status> {
    let prefix = with_slash(&req.name);
    let key = session_key(&prefix, req.lease);
    let resp = txn(
        ctx,
        pb::TxnRequest {
            compare: vec![create_rev_is(&key, 0)],
            success: vec![put_op(&key, req.value.clone(), req.lease)],
            failure: vec![get_op(&key)],
        },
    )
    .await?;
    let mut leader = epb::LeaderKey {
        name: req.name.clone(),
        key: key.clone(),
        rev: resp.header.map_or(0, |h| h.revision),
        lease: req.lease,
    };
    if !resp.succeeded {
        // Already a candidate under this lease: keep the candidacy, update its value.
        let existing = range_kvs(&resp.responses[0]).first().cloned();
        if let Some(kv) = existing {
            leader.rev = kv.create_revision;
            if kv.value != req.value {
                if let Err(e) = proclaim_txn(ctx, &leader, req.value.clone()).await {
                    let _ = resign_txn(ctx, &key, leader.rev).await;
                    return Err(e);
                }
            }
        }
    }
    // A canceled candidacy resigns; one whose wait failed stays (as clientv3's Campaign).
    match cancelable(wait_deletes(ctx, &prefix, leader.rev - 1), canceled).await {
        Ok(waited) => waited?,
        Err(canceled) => {
            let _ = resign_txn(ctx, &key, leader.rev).await;
            return Err(canceled);
        }
    }
    Ok(epb::CampaignResponse {
        header: resp.header,
        leader: Some(leader),
    })
}

/// v3election Proclaim.
pub(crate) async fn proclaim(
    ctx: &ShardCtx,
    req: epb::ProclaimRequest,
) -> Result<epb::ProclaimResponse, Status> {
    let leader = req.leader.ok_or_else(missing_leader)?;
    let header = proclaim_txn(ctx, &leader, req.value).await?;
    Ok(epb::ProclaimResponse {
        header: Some(header),
    })
}

/// v3election Resign: ends the candidacy if it is still the same one (no error otherwise).
pub(crate) async fn resign(
    ctx: &ShardCtx,
    req: epb::ResignRequest,
) -> Result<epb::ResignResponse, Status> {
    let leader = req.leader.ok_or_else(missing_leader)?;
    let r = resign_txn(ctx, &leader.key, leader.rev).await?;
    Ok(epb::ResignResponse { header: r.header })
}

/// v3election Leader: the current leader's key-value.
pub(crate) async fn leader(
    ctx: &ShardCtx,
    req: epb::LeaderRequest,
) -> Result<epb::LeaderResponse, Status> {
    let r = range(ctx, by_create(&with_slash(&req.name), true, 0)).await?;
    match r.kvs.into_iter().next() {
        Some(kv) => Ok(epb::LeaderResponse {
            header: r.header,
            kv: Some(kv),
        }),
        None => Err(unknown("election: no leader")),
    }
}

/// v3election Observe, as a source of responses: the leader's key-value first, then one
/// response per change of leader or of its value (clientv3's Election.observe).
pub(crate) struct Observer<'a> {
    ctx: &'a ShardCtx,
    prefix: Vec<u8>,
    /// Following the current leader's key, until it is deleted.
    leader: Option<Follow<'a>>,
    pending: VecDeque<epb::LeaderResponse>,
}

impl<'a> Observer<'a> {
    pub(crate) fn new(ctx: &'a ShardCtx, req: epb::LeaderRequest) -> Observer<'a> {
        Observer {
            ctx,
            prefix: with_slash(&req.name),
            leader: None,
            pending: VecDeque::new(),
        }
    }

    pub(crate) async fn next(&mut self) -> Result<epb::LeaderResponse, Status> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Ok(r);
            }
            match &mut self.leader {
                Some(f) => {
                    let (h, events) = f.next().await?;
                    for e in events {
                        if e.r#type == mvccpb::event::EventType::Delete as i32 {
                            self.leader = None;
                            break;
                        }
                        self.pending.push_back(epb::LeaderResponse {
                            header: Some(h),
                            kv: e.kv,
                        });
                    }
                }
                None => {
                    let (header, kv) = self.find().await?;
                    self.leader = Some(Follow::new(
                        self.ctx,
                        kv.key.clone(),
                        Bytes::new(),
                        header.revision + 1,
                    ));
                    return Ok(epb::LeaderResponse {
                        header: Some(header),
                        kv: Some(kv),
                    });
                }
            }
        }
    }

    /// The leader now, or the first candidate to come when there is none.
    async fn find(&self) -> Result<(pb::ResponseHeader, mvccpb::KeyValue), Status> {
        let r = range(self.ctx, by_create(&self.prefix, true, 0)).await?;
        if let Some(kv) = r.kvs.into_iter().next() {
            return Ok((r.header.unwrap_or_default(), kv));
        }
        let from = r.header.map_or(0, |h| h.revision);
        let mut f = Follow::new(
            self.ctx,
            Bytes::copy_from_slice(&self.prefix),
            Bytes::from(prefix_end(&self.prefix)),
            from,
        );
        loop {
            let (h, events) = f.next().await?;
            let put = events
                .into_iter()
                .find(|e| e.r#type == mvccpb::event::EventType::Put as i32);
            if let Some(kv) = put.and_then(|e| e.kv) {
                let header = pb::ResponseHeader {
                    revision: kv.mod_revision,
                    ..h
                };
                return Ok((header, kv));
            }
        }
    }
}
