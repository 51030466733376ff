//! gRPC over one HTTP/2 stream: routing by path, the 5-byte message framing, size limits,
//! `grpc-timeout`, and status trailers. Wording of transport errors follows grpc-go, which is
//! what etcd's clients see from etcd.

use std::rc::Rc;
use std::time::Duration;

use super::h2srv::{self, RecvStream, SendResponse};
use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use prost::Message;

use super::stream::{H2Sink, MessageReader, Sink};
use super::{access, gateway, metrics, recipes, snapshot, stream, watch, ShardCtx};
use crate::auth::AuthOp;
use crate::error::{Code, EtcdError, Status};
use crate::kv;
use crate::limits::GRPC_OVERHEAD_BYTES;
use crate::proto::etcdserverpb as pb;
use crate::proto::v3electionpb as el;

/// The methods served today.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
    Status,
    Alarm,
    MemberList,
    MemberAdd,
    MemberRemove,
    MemberPromote,
    MemberUpdate,
    MoveLeader,
    LeaseGrant,
    LeaseRevoke,
    LeaseTimeToLive,
    LeaseLeases,
    /// Server streaming.
    Snapshot,
    /// Bidirectional streaming.
    Watch,
    LeaseKeepAlive,
    /// The lock and election recipes (served in `recipes`; Observe streams).
    Lock,
    Unlock,
    Campaign,
    Proclaim,
    Leader,
    Resign,
    Observe,
    /// The Auth service's methods, by name.
    Auth(&'static str),
    Defragment,
}

/// The Auth service's methods.
const AUTH_METHODS: &[&str] = &[
    "AuthEnable",
    "AuthDisable",
    "AuthStatus",
    "Authenticate",
    "UserAdd",
    "UserGet",
    "UserList",
    "UserDelete",
    "UserChangePassword",
    "UserGrantRole",
    "UserRevokeRole",
    "RoleAdd",
    "RoleGet",
    "RoleList",
    "RoleDelete",
    "RoleGrantPermission",
    "RoleRevokePermission",
];

/// The unary methods served today, by path (for tests and fuzzers that drive them all).
pub const UNARY_METHODS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberPromote",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Auth/AuthEnable",
    "/etcdserverpb.Auth/AuthDisable",
    "/etcdserverpb.Auth/AuthStatus",
    "/etcdserverpb.Auth/Authenticate",
    "/etcdserverpb.Auth/UserAdd",
    "/etcdserverpb.Auth/UserGet",
    "/etcdserverpb.Auth/UserList",
    "/etcdserverpb.Auth/UserDelete",
    "/etcdserverpb.Auth/UserChangePassword",
    "/etcdserverpb.Auth/UserGrantRole",
    "/etcdserverpb.Auth/UserRevokeRole",
    "/etcdserverpb.Auth/RoleAdd",
    "/etcdserverpb.Auth/RoleGet",
    "/etcdserverpb.Auth/RoleList",
    "/etcdserverpb.Auth/RoleDelete",
    "/etcdserverpb.Auth/RoleGrantPermission",
    "/etcdserverpb.Auth/RoleRevokePermission",
];

/// Every method of etcd's API, with its kind as go-grpc-prometheus labels it: to tell "not
/// implemented yet" from "unknown", and to count calls (`grpc_server_handled_total`).
pub(crate) const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Maintenance", "Downgrade", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthStatus", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
];

/// The index of a method of etcd's API in [`METHODS`], from its path.
pub(crate) fn method_index(path: &str) -> Option<usize> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    METHODS
        .iter()
        .position(|&(s, m, _)| s == service && m == method)
}

/// The method of a gRPC path; UNIMPLEMENTED (with grpc-go's wording) for one not served.
pub(super) fn route(path: &str) -> Result<Method, Status> {
    let unimplemented = |m: String| Err(Status::new(Code::Unimplemented, m));
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return unimplemented(format!("malformed method name: {path:?}"));
    };
    let m = match (service, method) {
        ("etcdserverpb.KV", "Range") => Method::Range,
        ("etcdserverpb.KV", "Put") => Method::Put,
        ("etcdserverpb.KV", "DeleteRange") => Method::DeleteRange,
        ("etcdserverpb.KV", "Txn") => Method::Txn,
        ("etcdserverpb.KV", "Compact") => Method::Compact,
        ("etcdserverpb.Maintenance", "Status") => Method::Status,
        ("etcdserverpb.Maintenance", "Alarm") => Method::Alarm,
        ("etcdserverpb.Maintenance", "Snapshot") => Method::Snapshot,
        ("etcdserverpb.Maintenance", "Defragment") => Method::Defragment,
        ("etcdserverpb.Cluster", "MemberList") => Method::MemberList,
        ("etcdserverpb.Maintenance", "MoveLeader") => Method::MoveLeader,
        ("etcdserverpb.Cluster", "MemberAdd") => Method::MemberAdd,
        ("etcdserverpb.Cluster", "MemberRemove") => Method::MemberRemove,
        ("etcdserverpb.Cluster", "MemberPromote") => Method::MemberPromote,
        ("etcdserverpb.Cluster", "MemberUpdate") => Method::MemberUpdate,
        ("etcdserverpb.Lease", "LeaseGrant") => Method::LeaseGrant,
        ("etcdserverpb.Lease", "LeaseRevoke") => Method::LeaseRevoke,
        ("etcdserverpb.Lease", "LeaseTimeToLive") => Method::LeaseTimeToLive,
        ("etcdserverpb.Lease", "LeaseLeases") => Method::LeaseLeases,
        ("etcdserverpb.Lease", "LeaseKeepAlive") => Method::LeaseKeepAlive,
        ("etcdserverpb.Watch", "Watch") => Method::Watch,
        ("v3lockpb.Lock", "Lock") => Method::Lock,
        ("v3lockpb.Lock", "Unlock") => Method::Unlock,
        ("v3electionpb.Election", "Campaign") => Method::Campaign,
        ("v3electionpb.Election", "Proclaim") => Method::Proclaim,
        ("v3electionpb.Election", "Leader") => Method::Leader,
        ("v3electionpb.Election", "Resign") => Method::Resign,
        ("v3electionpb.Election", "Observe") => Method::Observe,
        ("etcdserverpb.Auth", m) if AUTH_METHODS.contains(&m) => {
            Method::Auth(AUTH_METHODS[AUTH_METHODS.iter().position(|&a| a == m).expect("listed")])
        }
        _ => {
            return if !METHODS.iter().any(|&(s, _, _)| s == service) {
                unimplemented(format!("unknown service {service}"))
            } else if method_index(path).is_none() {
                unimplemented(format!("unknown method {method} for service {service}"))
            } else {
                unimplemented(format!("ferrocd does not implement {service}/{method} yet"))
            };
        }
    };
    Ok(m)
}

/// Serves one HTTP/2 stream. Never panics on input; every failure becomes a status.
pub(crate) async fn handle(
    req: Request<RecvStream>,
    mut respond: SendResponse,
    ctx: Rc<ShardCtx>,
    common_name: Option<Rc<str>>,
) {
    let (parts, body) = req.into_parts();
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc {
        // Not gRPC: the JSON gateway and the other HTTP endpoints, over HTTP/2.
        let mut input = super::http2::H2In::new(body);
        let mut out = super::http2::H2Out::new(respond);
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        // Boxed, as the streams below: each call is a task, and a task's future is moved into
        // place when spawned, so the common unary call must not carry the large states of the
        // rare paths (measured: memmove was 5% of a put's CPU before).
        let cred = access::Credentials::from_headers(&parts.headers);
        let serve = gateway::serve(
            parts.method.as_str(),
            target,
            &cred,
            &mut input,
            &mut out,
            &ctx,
        );
        let _ = Box::pin(serve).await;
        return;
    }
    if parts.method != http::Method::POST {
        // grpc-go answers 405 to anything but POST.
        let resp = Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .body(())
            .expect("static response");
        let _ = respond.send_response(resp, true);
        return;
    }
    let index = method_index(parts.uri.path());
    let started = metrics::METRICS.clock();
    if let Some(i) = index {
        metrics::METRICS.grpc_started(i);
    }
    // A verified client certificate's common name stands for the user when no token is given
    // (etcd's, for gRPC calls only).
    let mut cred = access::Credentials::from_headers(&parts.headers);
    cred.common_name = common_name;
    let code = serve_call(parts, body, respond, &cred, &ctx).await;
    if let Some(i) = index {
        metrics::METRICS.grpc_handled(i, code, started);
    }
}

/// Serves one gRPC call; returns the status code it ended with.
async fn serve_call(
    parts: http::request::Parts,
    body: RecvStream,
    mut respond: SendResponse,
    cred: &access::Credentials,
    ctx: &ShardCtx,
) -> Code {
    let deadline = parts
        .headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_timeout);
    let limit = ctx.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let mut reader = MessageReader::new(body, limit);
    // etcd's clients mark calls that must not be served without a leader ("hasleader"
    // metadata, clientv3.WithRequireLeader; etcdctl watch sets it): refused at once without
    // one, and such streams end when the member loses its leader.
    let require_leader = parts
        .headers
        .get("hasleader")
        .is_some_and(|v| v.as_bytes() == b"true");
    if require_leader && !metrics::has_leader() {
        let status = Status::from(EtcdError::NoLeader);
        if let Err(e) = send_status(&mut respond, &status) {
            tracing::debug!(error = %e, "client went away before the response");
        }
        return status.code;
    }
    match route(parts.uri.path()) {
        Ok(Method::Watch) => {
            let mut sink = H2Sink::new(&mut respond);
            let serve = watch::serve_watch(&mut reader, &mut sink, ctx, cred, require_leader);
            Box::pin(serve).await;
            return sink.code;
        }
        Ok(Method::LeaseKeepAlive) => {
            let mut sink = H2Sink::new(&mut respond);
            let serve = watch::serve_keep_alive(&mut reader, &mut sink, ctx, cred, require_leader);
            Box::pin(serve).await;
            return sink.code;
        }
        Ok(
            m @ (Method::Lock
            | Method::Unlock
            | Method::Campaign
            | Method::Proclaim
            | Method::Leader
            | Method::Resign
            | Method::Observe),
        ) => {
            return Box::pin(serve_recipe(m, respond, reader, deadline, cred, ctx)).await;
        }
        Ok(Method::Snapshot) => {
            let mut sink = H2Sink::new(&mut respond);
            let req = match access::may_admin(ctx, cred) {
                Ok(()) => reader.one().await,
                Err(e) => Err(Status::from(e)),
            };
            match req.and_then(decode_msg::<pb::SnapshotRequest>) {
                Ok(_) => Box::pin(snapshot::serve(&mut sink, ctx)).await,
                Err(e) => sink.finish(Some(e)).await,
            }
            return sink.code;
        }
        _ => {}
    }
    // Made in each arm, not kept in a local first: a future in a local and the same future
    // moved into `with_deadline` would both take room in this task's state.
    let path = parts.uri.path();
    let result = match deadline {
        Some(d) => with_deadline(unary(path, &mut reader, cred, ctx), d).await,
        None => unary(path, &mut reader, cred, ctx).await,
    };
    let code = result.as_ref().map_or_else(|s| s.code, |_| Code::Ok);
    let sent = match result {
        Ok(frame) => send_message(&mut respond, frame),
        Err(status) => send_status(&mut respond, &status),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "client went away before the response");
    }
    code
}

/// A unary call: its one request read, served, and its answer framed.
async fn unary(
    path: &str,
    reader: &mut MessageReader,
    cred: &access::Credentials,
    ctx: &ShardCtx,
) -> Result<Bytes, Status> {
    let method = route(path)?;
    let msg = reader.one().await?;
    call(method, msg, cred, ctx).await
}

/// Completes when the client resets the stream (a canceled call) or the deadline passes, with
/// the status grpc-go would give the call.
async fn canceled(respond: &mut SendResponse, deadline: Option<Duration>) -> Status {
    let reset = async {
        let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
        Status::new(Code::Canceled, "context canceled")
    };
    let timeout = async {
        match deadline {
            Some(d) => glommio::timer::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
        Status::new(Code::DeadlineExceeded, "context deadline exceeded")
    };
    futures_lite::future::or(reset, timeout).await
}

/// The lock and election services. Lock and Campaign may wait long: they watch for their
/// caller going away or its deadline, and clean up their key when it does.
async fn serve_recipe(
    method: Method,
    mut respond: SendResponse,
    mut reader: MessageReader,
    deadline: Option<Duration>,
    cred: &access::Credentials,
    ctx: &ShardCtx,
) -> Code {
    let check = |r: access::Recipe<'_>| access::may_use_recipe(ctx, cred, r).map_err(Status::from);
    if method == Method::Observe {
        let mut sink = H2Sink::new(&mut respond);
        let req = reader.one().await.and_then(decode_msg::<el::LeaderRequest>);
        match req.and_then(|r| check(access::Recipe::leader(&r)).map(|()| r)) {
            Ok(req) => {
                let observer = recipes::Observer::new(ctx, req);
                observe(observer, &mut reader, &mut sink, deadline).await
            }
            Err(status) => sink.finish(Some(status)).await,
        }
        return sink.code;
    }
    let result: Result<Bytes, Status> = async {
        let msg = reader.one().await?;
        let canceled = canceled(&mut respond, deadline);
        Ok(match method {
            Method::Lock => {
                let r = decode_msg(msg)?;
                check(access::Recipe::lock(&r))?;
                frame(&recipes::lock(ctx, r, canceled).await?)
            }
            Method::Unlock => {
                let r = decode_msg(msg)?;
                check(access::Recipe::unlock(&r))?;
                frame(&recipes::unlock(ctx, r).await?)
            }
            Method::Campaign => {
                let r = decode_msg(msg)?;
                check(access::Recipe::campaign(&r))?;
                frame(&recipes::campaign(ctx, r, canceled).await?)
            }
            Method::Proclaim => {
                let r: el::ProclaimRequest = decode_msg(msg)?;
                check(access::Recipe::leader_key(r.leader.as_ref()))?;
                frame(&recipes::proclaim(ctx, r).await?)
            }
            Method::Leader => {
                let r = decode_msg(msg)?;
                check(access::Recipe::leader(&r))?;
                frame(&recipes::leader(ctx, r).await?)
            }
            Method::Resign => {
                let r: el::ResignRequest = decode_msg(msg)?;
                check(access::Recipe::leader_key(r.leader.as_ref()))?;
                frame(&recipes::resign(ctx, r).await?)
            }
            _ => unreachable!("not a unary recipe method"),
        })
    }
    .await;
    let code = result.as_ref().map_or_else(|s| s.code, |_| Code::Ok);
    let sent = match result {
        Ok(frame) => send_message(&mut respond, frame),
        Err(status) => send_status(&mut respond, &status),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "client went away before the response");
    }
    code
}

/// Streams an election's leader changes until the client goes away (or the deadline passes).
pub(super) async fn observe(
    mut observer: recipes::Observer<'_>,
    source: &mut impl stream::Source,
    sink: &mut impl Sink,
    deadline: Option<Duration>,
) {
    if sink.open().await.is_err() {
        return;
    }
    let end = async {
        loop {
            let next = futures_lite::future::or(async { Some(observer.next().await) }, async {
                stream::client_gone(source, sink).await;
                None
            })
            .await;
            let Some(resp) = next else {
                return Err(None);
            };
            if sink.send(frame(&resp.map_err(Some)?)).await.is_err() {
                return Err(None);
            }
        }
    };
    let end: Result<(), Option<Status>> = match deadline {
        Some(d) => {
            futures_lite::future::or(end, async {
                glommio::timer::sleep(d).await;
                Err(Some(Status::new(
                    Code::DeadlineExceeded,
                    "context deadline exceeded",
                )))
            })
            .await
        }
        None => end.await,
    };
    match end {
        Ok(()) => sink.finish(None).await,
        Err(Some(status)) => sink.finish(Some(status)).await,
        Err(None) => {}
    }
}

/// `f`, or DEADLINE_EXCEEDED with grpc-go's message if it takes longer than `d` (noticed within
/// `limits::DEADLINE_TICK`: `deadline::Deadline`).
///
/// Not an `async fn`: one would hold `f` and, once polled, the `or` that `f` was moved into,
/// both in its state (a call's task future is moved whole when spawned).
pub fn with_deadline<T>(
    f: impl std::future::Future<Output = Result<T, Status>>,
    d: Duration,
) -> impl std::future::Future<Output = Result<T, Status>> {
    futures_lite::future::or(f, async move {
        super::deadline::Deadline::after(d).await;
        Err(Status::new(
            Code::DeadlineExceeded,
            "context deadline exceeded",
        ))
    })
}

pub(super) fn decode_msg<M: Message + Default>(msg: Bytes) -> Result<M, Status> {
    M::decode(msg).map_err(|e| {
        Status::new(
            Code::Internal,
            format!("grpc: error unmarshalling request: {e}"),
        )
    })
}

async fn call(
    method: Method,
    msg: Bytes,
    cred: &access::Credentials,
    ctx: &ShardCtx,
) -> Result<Bytes, Status> {
    let req = decode(method, msg, ctx.max_request_bytes)?;
    let resp = access::call(ctx, cred, req).await?;
    match resp {
        // Boxed: the rare path's state stays out of every call's task.
        kv::Response::Range(r) if r.kvs.len() > ENCODE_STEP_KVS => {
            Box::pin(frame_range_in_steps(r)).await
        }
        kv::Response::Range(r) if r.kvs.len() > 1 => frame_checked(&r),
        resp => Ok(encode_response(&resp)),
    }
}

/// A gRPC message's length prefix holds 32 bits, and grpc-go (etcd's server) sends at most
/// `math.MaxInt32` bytes: a larger answer (a Range over more than 2 GiB of values) fails as
/// grpc-go fails it, never as a wrapped length.
fn answer_fits(len: usize) -> Result<(), Status> {
    let max = i32::MAX as usize;
    if len > max {
        return Err(Status::new(
            Code::ResourceExhausted,
            format!("grpc: trying to send message larger than max ({len} vs. {max})"),
        ));
    }
    Ok(())
}

/// Key-values a Range answer encodes (and lets go of) per step.
const ENCODE_STEP_KVS: usize = 10_000;

/// Frames a Range answer of many key-values as [`frame`] would, a step of key-values at a
/// time with the shard's other work let in between (a million took the shard tens of
/// milliseconds to measure, encode and free in one go, on the owner when the client's
/// connection is there), the key-values freed as they are encoded. The same bytes as prost's
/// encoding: fields in number order, header (1), key-values (2), more (3), count (4).
async fn frame_range_in_steps(mut r: pb::RangeResponse) -> Result<Bytes, Status> {
    use prost::encoding::message;
    let kvs = std::mem::take(&mut r.kvs);
    let head = pb::RangeResponse {
        header: r.header.take(),
        ..Default::default()
    };
    let tail = r;
    let mut len = head.encoded_len() + tail.encoded_len();
    for (i, kv) in kvs.iter().enumerate() {
        len += message::encoded_len(2, kv);
        if i % ENCODE_STEP_KVS == ENCODE_STEP_KVS - 1 {
            super::shard::let_io_in().await;
        }
    }
    answer_fits(len)?;
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    head.encode(&mut buf).expect("buffer has room");
    let mut kvs = kvs.into_iter();
    loop {
        let mut n = 0;
        for kv in kvs.by_ref().take(ENCODE_STEP_KVS) {
            message::encode(2, &kv, &mut buf);
            n += 1;
        }
        if n < ENCODE_STEP_KVS {
            break;
        }
        super::shard::let_io_in().await;
    }
    tail.encode(&mut buf).expect("buffer has room");
    debug_assert_eq!(buf.len(), 5 + len);
    Ok(buf.freeze())
}

/// Routes and decodes one gRPC message (without its 5-byte prefix) into a request.
pub fn decode_request(
    path: &str,
    msg: Bytes,
    max_request_bytes: usize,
) -> Result<kv::Request, Status> {
    decode(route(path)?, msg, max_request_bytes)
}

fn decode(method: Method, msg: Bytes, max_request_bytes: usize) -> Result<kv::Request, Status> {
    // etcd refuses a request that goes through Raft when it is larger than the limit.
    let check_size = |msg: &Bytes| {
        if msg.len() > max_request_bytes {
            return Err(Status::from(EtcdError::RequestTooLarge));
        }
        Ok(())
    };
    Ok(match method {
        Method::Range => kv::Request::Range(decode_msg(msg)?),
        Method::Put => {
            check_size(&msg)?;
            kv::Request::Put(decode_msg(msg)?)
        }
        Method::DeleteRange => {
            check_size(&msg)?;
            kv::Request::DeleteRange(decode_msg(msg)?)
        }
        Method::Txn => {
            let len = msg.len();
            let txn: pb::TxnRequest = decode_msg(msg)?;
            if len > max_request_bytes && !kv::txn_is_read_only(&txn) {
                return Err(EtcdError::RequestTooLarge.into());
            }
            kv::Request::Txn(txn)
        }
        Method::Compact => kv::Request::Compact(decode_msg(msg)?),
        Method::Status => kv::Request::Status(decode_msg(msg)?),
        Method::Alarm => kv::Request::Alarm(decode_msg(msg)?),
        Method::MemberList => kv::Request::MemberList(decode_msg(msg)?),
        Method::LeaseGrant => kv::Request::LeaseGrant(decode_msg(msg)?),
        Method::LeaseRevoke => kv::Request::LeaseRevoke(decode_msg(msg)?),
        Method::LeaseTimeToLive => kv::Request::LeaseTimeToLive(decode_msg(msg)?),
        Method::LeaseLeases => kv::Request::LeaseLeases(decode_msg(msg)?),
        Method::MoveLeader => kv::Request::MoveLeader(decode_msg(msg)?),
        Method::MemberAdd => kv::Request::MemberAdd(decode_msg(msg)?),
        Method::MemberRemove => kv::Request::MemberRemove(decode_msg(msg)?),
        Method::MemberPromote => kv::Request::MemberPromote(decode_msg(msg)?),
        Method::MemberUpdate => kv::Request::MemberUpdate(decode_msg(msg)?),
        Method::Auth(name) => kv::Request::Auth(decode_auth(name, msg)?),
        Method::Defragment => kv::Request::Defragment(decode_msg(msg)?),
        Method::Snapshot
        | Method::Watch
        | Method::LeaseKeepAlive
        | Method::Lock
        | Method::Unlock
        | Method::Campaign
        | Method::Proclaim
        | Method::Leader
        | Method::Resign
        | Method::Observe => {
            return Err(Status::new(
                Code::Internal,
                "a stream or recipe method is not decoded as a request",
            ))
        }
    })
}

/// An Auth service call's request.
fn decode_auth(name: &str, msg: Bytes) -> Result<AuthOp, Status> {
    Ok(match name {
        "AuthEnable" => {
            decode_msg::<pb::AuthEnableRequest>(msg)?;
            AuthOp::Enable
        }
        "AuthDisable" => {
            decode_msg::<pb::AuthDisableRequest>(msg)?;
            AuthOp::Disable
        }
        "AuthStatus" => {
            decode_msg::<pb::AuthStatusRequest>(msg)?;
            AuthOp::Status
        }
        "Authenticate" => AuthOp::Authenticate(decode_msg(msg)?),
        "UserAdd" => AuthOp::UserAdd(decode_msg(msg)?),
        "UserGet" => AuthOp::UserGet(decode_msg(msg)?),
        "UserList" => {
            decode_msg::<pb::AuthUserListRequest>(msg)?;
            AuthOp::UserList
        }
        "UserDelete" => AuthOp::UserDelete(decode_msg(msg)?),
        "UserChangePassword" => AuthOp::UserChangePassword(decode_msg(msg)?),
        "UserGrantRole" => AuthOp::UserGrantRole(decode_msg(msg)?),
        "UserRevokeRole" => AuthOp::UserRevokeRole(decode_msg(msg)?),
        "RoleAdd" => AuthOp::RoleAdd(decode_msg(msg)?),
        "RoleGet" => AuthOp::RoleGet(decode_msg(msg)?),
        "RoleList" => {
            decode_msg::<pb::AuthRoleListRequest>(msg)?;
            AuthOp::RoleList
        }
        "RoleDelete" => AuthOp::RoleDelete(decode_msg(msg)?),
        "RoleGrantPermission" => AuthOp::RoleGrantPermission(decode_msg(msg)?),
        "RoleRevokePermission" => AuthOp::RoleRevokePermission(decode_msg(msg)?),
        other => {
            return Err(Status::new(
                Code::Unimplemented,
                format!("unknown method {other} for service etcdserverpb.Auth"),
            ))
        }
    })
}

/// Encodes a response as one framed gRPC message.
pub fn encode_response(resp: &kv::Response) -> Bytes {
    struct Frame;
    impl AnswerVisitor for Frame {
        type Out = Bytes;
        fn visit<M: Message + serde::Serialize>(self, m: &M) -> Bytes {
            frame(m)
        }
    }
    visit_answer(resp, Frame)
}

/// What is done with the message of a client's answer, whatever its type: encoded for gRPC
/// here, as JSON by the gateway. [`visit_answer`] is the one table of answer types.
pub(crate) trait AnswerVisitor {
    type Out;
    fn visit<M: Message + serde::Serialize>(self, m: &M) -> Self::Out;
}

/// Hands the message of `resp` to `v`.
pub(crate) fn visit_answer<V: AnswerVisitor>(resp: &kv::Response, v: V) -> V::Out {
    match resp {
        kv::Response::Range(r) => v.visit(r),
        kv::Response::Put(r) => v.visit(r),
        kv::Response::DeleteRange(r) => v.visit(r),
        kv::Response::Txn(r) => v.visit(r),
        kv::Response::Compact(r) => v.visit(r),
        kv::Response::Status(r) => v.visit(r),
        kv::Response::MemberList(r) => v.visit(r),
        kv::Response::Alarm(r) => v.visit(r),
        kv::Response::LeaseGrant(r) => v.visit(r),
        kv::Response::LeaseRevoke(r) => v.visit(r),
        kv::Response::LeaseKeepAlive(r) => v.visit(r),
        kv::Response::LeaseTimeToLive(r) => v.visit(r),
        kv::Response::LeaseLeases(r) => v.visit(r),
        kv::Response::MoveLeader(r) => v.visit(r),
        kv::Response::MemberAdd(r) => v.visit(r),
        kv::Response::MemberRemove(r) => v.visit(r),
        kv::Response::MemberPromote(r) => v.visit(r),
        kv::Response::MemberUpdate(r) => v.visit(r),
        kv::Response::Defragment(r) => v.visit(r),
        kv::Response::Auth(a) => {
            use crate::auth::AuthAnswer as A;
            match a {
                A::Enable(r) => v.visit(r),
                A::Disable(r) => v.visit(r),
                A::Status(r) => v.visit(r),
                A::Authenticate(r) => v.visit(r),
                A::UserAdd(r) => v.visit(r),
                A::UserGet(r) => v.visit(r),
                A::UserList(r) => v.visit(r),
                A::UserDelete(r) => v.visit(r),
                A::UserChangePassword(r) => v.visit(r),
                A::UserGrantRole(r) => v.visit(r),
                A::UserRevokeRole(r) => v.visit(r),
                A::RoleAdd(r) => v.visit(r),
                A::RoleGet(r) => v.visit(r),
                A::RoleList(r) => v.visit(r),
                A::RoleDelete(r) => v.visit(r),
                A::RoleGrantPermission(r) => v.visit(r),
                A::RoleRevokePermission(r) => v.visit(r),
            }
        }
        kv::Response::LeaseExpire(_)
        | kv::Response::Checkpoint(_)
        | kv::Response::LeaseCheckpoint
        | kv::Response::WatchPull(_) => {
            unreachable!("internal answers are not sent to clients")
        }
    }
}

/// Encodes `m` with the gRPC prefix, in one buffer.
pub fn frame<M: Message>(m: &M) -> Bytes {
    frame_of_len(m, m.encoded_len())
}

/// As [`frame`], for a message that may be larger than gRPC sends ([`answer_fits`]).
fn frame_checked<M: Message>(m: &M) -> Result<Bytes, Status> {
    let len = m.encoded_len();
    answer_fits(len)?;
    Ok(frame_of_len(m, len))
}

/// `m`, of `len` bytes encoded, with the gRPC prefix.
fn frame_of_len<M: Message>(m: &M, len: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    m.encode(&mut buf).expect("buffer has room");
    buf.freeze()
}

fn send_message(respond: &mut SendResponse, frame: Bytes) -> Result<(), h2srv::Error> {
    respond.send_grpc_message(frame)
}

/// A trailers-only response: the status in the headers, and the stream ends.
pub(super) fn send_status(respond: &mut SendResponse, status: &Status) -> Result<(), h2srv::Error> {
    let mut resp = stream::grpc_ok();
    resp.headers_mut()
        .extend(stream::status_headers(Some(status)));
    respond.send_response(resp, true).map(drop)
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Percent-encodes a `grpc-message` as the gRPC spec says: bytes outside printable ASCII, and
/// '%', become %XX.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`percent_encode`]; malformed escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unary_method_routes() {
        for m in UNARY_METHODS {
            let r = route(m).unwrap();
            assert_ne!(r, Method::Snapshot);
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route("/etcdserverpb.KV/Range"), Ok(Method::Range));
        let e = route("/etcdserverpb.KV/Nope").unwrap_err();
        assert_eq!(e.code, Code::Unimplemented);
        assert_eq!(e.message, "unknown method Nope for service etcdserverpb.KV");
        let e = route("/foo.Bar/Baz").unwrap_err();
        assert_eq!(e.message, "unknown service foo.Bar");
        assert_eq!(
            route("/etcdserverpb.Auth/AuthStatus"),
            Ok(Method::Auth("AuthStatus"))
        );
        let e = route("/etcdserverpb.Maintenance/Hash").unwrap_err();
        assert!(e.message.contains("does not implement"), "{}", e.message);
        assert!(route("nonsense").is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_timeout("123456789S"), None, "at most 8 digits");
        assert_eq!(parse_timeout("S"), None);
        assert_eq!(parse_timeout(""), None);
        assert_eq!(parse_timeout("5x"), None);
        assert_eq!(parse_timeout("-5S"), None);
    }

    #[test]
    fn percent_round_trip() {
        let m = "etcdserver: 100% sure\nnot ascii: é";
        let e = percent_encode(m);
        assert_eq!(e, "etcdserver: 100%25 sure%0Anot ascii: %C3%A9");
        assert_eq!(percent_decode(&e), m);
        assert_eq!(percent_decode("bad %zz and %4"), "bad %zz and %4");
    }

    #[test]
    fn a_range_framed_in_steps_is_the_same_bytes() {
        use crate::proto::mvccpb::KeyValue;
        let kvs: Vec<KeyValue> = (0..2 * super::ENCODE_STEP_KVS + 7)
            .map(|i| KeyValue {
                key: format!("key{i}").into(),
                value: vec![i as u8; i % 300].into(),
                create_revision: i as i64,
                mod_revision: 2 * i as i64,
                version: 1,
                lease: (i % 3) as i64,
            })
            .collect();
        for (more, count) in [(true, 1 << 40), (false, 0)] {
            let r = pb::RangeResponse {
                header: Some(pb::ResponseHeader {
                    cluster_id: 1,
                    member_id: 2,
                    revision: 3,
                    raft_term: 4,
                }),
                kvs: kvs.clone(),
                more,
                count,
            };
            let want = frame(&r);
            let got = glommio::LocalExecutor::default().run(super::frame_range_in_steps(r));
            assert!(got.unwrap() == want, "the bytes differ");
        }
    }

    #[test]
    fn an_answer_past_grpcs_largest_message_is_refused_as_grpc_go_refuses_it() {
        assert!(super::answer_fits(i32::MAX as usize).is_ok());
        let e = super::answer_fits(1 << 32).unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        assert_eq!(
            e.message,
            "grpc: trying to send message larger than max (4294967296 vs. 2147483647)"
        );
    }

    #[test]
    fn frames_have_the_grpc_prefix() {
        let f = frame(&pb::CompactionRequest {
            revision: 3,
            physical: false,
        });
        assert_eq!(&f[..], &[0, 0, 0, 0, 2, 0x08, 3]);
    }
}
