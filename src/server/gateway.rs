//! The HTTP endpoints of the client port: etcd's JSON gateway (`/v3/...`), `/health`,
//! `/livez`, `/readyz`, `/version` and `/metrics`.
//!
//! The gateway answers as etcd's grpc-gateway does: POST only, the request body is the JSON of
//! the gRPC request (the protobuf JSON mapping; proto or JSON field names, 64-bit integers as
//! strings or numbers, bytes as base64, enums by name, unknown fields ignored), the answer is the
//! JSON of the gRPC response (proto field names, 64-bit integers as strings, zero values left
//! out). A unary call's JSON becomes the very request a gRPC call would (so the size limits and
//! every error are the same) and is served by the same code. Errors are
//! `{"error":m,"message":m,"code":c}` with grpc-gateway's HTTP status for the code. Streams
//! (`/v3/watch`, `/v3/lease/keepalive`, `/v3/election/observe`, `/v3/maintenance/snapshot`) read
//! successive JSON requests from the body and answer with one `{"result":...}` line per
//! response, served by the gRPC stream code through [`JsonSource`] and [`JsonSink`].
//!
//! The transport (HTTP/1.1 in `http1`, or HTTP/2 requests that are not gRPC) is behind
//! [`HttpIn`] and [`HttpOut`].

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::access;
use super::grpc::{self, decode_msg, Method};
use super::stream::{Gone, Sink, Source};
use super::{metrics, recipes, snapshot, watch, ShardCtx};
use crate::error::{Code, Status};
use crate::kv::{self, ETCD_API_VERSION};
use crate::proto::etcdserverpb as pb;
use crate::proto::{v3electionpb as el, v3lockpb as lk};

/// The request body, as it arrives.
pub(crate) trait HttpIn {
    /// The next piece of the body; None at its end.
    async fn data(&mut self) -> io::Result<Option<Bytes>>;
    /// Completes when the client has gone away, if this side can tell (else never).
    async fn gone(&mut self) {
        std::future::pending::<()>().await
    }
}

/// The response.
pub(crate) trait HttpOut {
    /// A whole response with its length.
    async fn whole(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8])
        -> io::Result<()>;
    /// The head of a response whose body follows in chunks.
    async fn start(&mut self, status: u16, headers: &[(&str, &str)]) -> io::Result<()>;
    async fn chunk(&mut self, data: &[u8]) -> io::Result<()>;
    /// Ends a chunked response, with trailers.
    async fn end(&mut self, trailers: &[(&str, &str)]) -> io::Result<()>;
    /// Completes when the client has gone away, if this side can tell (else never).
    async fn gone(&mut self) {
        std::future::pending::<()>().await
    }
}

/// etcd's gateway sets these on every answer.
const CORS: [(&str, &str); 3] = [
    (
        "Access-Control-Allow-Headers",
        "accept, content-type, authorization",
    ),
    (
        "Access-Control-Allow-Methods",
        "POST, GET, OPTIONS, PUT, DELETE",
    ),
    ("Access-Control-Allow-Origin", "*"),
];
const JSON: (&str, &str) = ("Content-Type", "application/json");
const TEXT: (&str, &str) = ("Content-Type", "text/plain; charset=utf-8");
const GRPC_METADATA: (&str, &str) = ("Grpc-Metadata-Content-Type", "application/grpc");

/// etcd's gateway paths (the `google.api.http` options of its protos) and the gRPC method each
/// calls; the call is then served as that gRPC method is (`grpc::route`).
const ROUTES: &[(&str, &str)] = &[
    ("/v3/kv/range", "/etcdserverpb.KV/Range"),
    ("/v3/kv/put", "/etcdserverpb.KV/Put"),
    ("/v3/kv/deleterange", "/etcdserverpb.KV/DeleteRange"),
    ("/v3/kv/txn", "/etcdserverpb.KV/Txn"),
    ("/v3/kv/compaction", "/etcdserverpb.KV/Compact"),
    ("/v3/watch", "/etcdserverpb.Watch/Watch"),
    ("/v3/lease/grant", "/etcdserverpb.Lease/LeaseGrant"),
    ("/v3/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"),
    ("/v3/kv/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"),
    ("/v3/lease/keepalive", "/etcdserverpb.Lease/LeaseKeepAlive"),
    (
        "/v3/lease/timetolive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
    ),
    (
        "/v3/kv/lease/timetolive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
    ),
    ("/v3/lease/leases", "/etcdserverpb.Lease/LeaseLeases"),
    ("/v3/kv/lease/leases", "/etcdserverpb.Lease/LeaseLeases"),
    ("/v3/cluster/member/add", "/etcdserverpb.Cluster/MemberAdd"),
    (
        "/v3/cluster/member/remove",
        "/etcdserverpb.Cluster/MemberRemove",
    ),
    (
        "/v3/cluster/member/update",
        "/etcdserverpb.Cluster/MemberUpdate",
    ),
    (
        "/v3/cluster/member/list",
        "/etcdserverpb.Cluster/MemberList",
    ),
    (
        "/v3/cluster/member/promote",
        "/etcdserverpb.Cluster/MemberPromote",
    ),
    ("/v3/maintenance/alarm", "/etcdserverpb.Maintenance/Alarm"),
    ("/v3/maintenance/status", "/etcdserverpb.Maintenance/Status"),
    (
        "/v3/maintenance/defragment",
        "/etcdserverpb.Maintenance/Defragment",
    ),
    ("/v3/maintenance/hash", "/etcdserverpb.Maintenance/Hash"),
    ("/v3/maintenance/hashkv", "/etcdserverpb.Maintenance/HashKV"),
    (
        "/v3/maintenance/snapshot",
        "/etcdserverpb.Maintenance/Snapshot",
    ),
    (
        "/v3/maintenance/transfer-leadership",
        "/etcdserverpb.Maintenance/MoveLeader",
    ),
    (
        "/v3/maintenance/downgrade",
        "/etcdserverpb.Maintenance/Downgrade",
    ),
    ("/v3/auth/enable", "/etcdserverpb.Auth/AuthEnable"),
    ("/v3/auth/disable", "/etcdserverpb.Auth/AuthDisable"),
    ("/v3/auth/status", "/etcdserverpb.Auth/AuthStatus"),
    ("/v3/auth/authenticate", "/etcdserverpb.Auth/Authenticate"),
    ("/v3/auth/user/add", "/etcdserverpb.Auth/UserAdd"),
    ("/v3/auth/user/get", "/etcdserverpb.Auth/UserGet"),
    ("/v3/auth/user/list", "/etcdserverpb.Auth/UserList"),
    ("/v3/auth/user/delete", "/etcdserverpb.Auth/UserDelete"),
    (
        "/v3/auth/user/changepw",
        "/etcdserverpb.Auth/UserChangePassword",
    ),
    ("/v3/auth/user/grant", "/etcdserverpb.Auth/UserGrantRole"),
    ("/v3/auth/user/revoke", "/etcdserverpb.Auth/UserRevokeRole"),
    ("/v3/auth/role/add", "/etcdserverpb.Auth/RoleAdd"),
    ("/v3/auth/role/get", "/etcdserverpb.Auth/RoleGet"),
    ("/v3/auth/role/list", "/etcdserverpb.Auth/RoleList"),
    ("/v3/auth/role/delete", "/etcdserverpb.Auth/RoleDelete"),
    (
        "/v3/auth/role/grant",
        "/etcdserverpb.Auth/RoleGrantPermission",
    ),
    (
        "/v3/auth/role/revoke",
        "/etcdserverpb.Auth/RoleRevokePermission",
    ),
    ("/v3/election/campaign", "/v3electionpb.Election/Campaign"),
    ("/v3/election/proclaim", "/v3electionpb.Election/Proclaim"),
    ("/v3/election/leader", "/v3electionpb.Election/Leader"),
    ("/v3/election/observe", "/v3electionpb.Election/Observe"),
    ("/v3/election/resign", "/v3electionpb.Election/Resign"),
    ("/v3/lock/lock", "/v3lockpb.Lock/Lock"),
    ("/v3/lock/unlock", "/v3lockpb.Lock/Unlock"),
];

/// The gRPC method a gateway path calls.
fn route(path: &str) -> Option<&'static str> {
    ROUTES.iter().find(|(p, _)| *p == path).map(|&(_, m)| m)
}

/// Serves one HTTP request. An `Err` means the connection is no longer usable.
pub(crate) async fn serve(
    method: &str,
    target: &str,
    cred: &access::Credentials,
    input: &mut impl HttpIn,
    out: &mut impl HttpOut,
    ctx: &ShardCtx,
) -> io::Result<()> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method == "OPTIONS" {
        return out.whole(200, &CORS, b"").await;
    }
    match path {
        "/health" | "/livez" | "/readyz" | "/metrics" | "/version" => {
            if method != "GET" {
                let allow = [("Allow", "GET")];
                return plain(out, 405, &allow, b"Method Not Allowed\n").await;
            }
            drain(input, 0).await?;
            let (status, content_type, body) = match path {
                "/health" => health(ctx, query).await,
                "/livez" | "/readyz" => checks(ctx, path, query).await,
                "/version" => (200, JSON, version()),
                _ => (200, metrics::CONTENT_TYPE, metrics::render()),
            };
            let mut h = CORS.to_vec();
            h.push(content_type);
            return out.whole(status, &h, body.as_bytes()).await;
        }
        _ => {}
    }
    // A metrics URL serves only the endpoints above; `--enable-grpc-gateway=false` turns the
    // gateway off.
    let grpc_path = route(path).filter(|_| ctx.gateway && !ctx.metrics_only);
    let Some(grpc_path) = grpc_path else {
        let body: &[u8] = if path.starts_with("/v3/") {
            b"Not Found\n"
        } else {
            b"404 page not found\n"
        };
        return plain(out, 404, &[], body).await;
    };
    if method != "POST" {
        return plain(out, 405, &[], b"Method Not Allowed\n").await;
    }
    // Counted as gRPC calls, as etcd's gateway (a gRPC client of its own server) is.
    let index = grpc::method_index(grpc_path);
    let started = metrics::METRICS.clock();
    if let Some(i) = index {
        metrics::METRICS.grpc_started(i);
    }
    let code = match grpc::route(grpc_path) {
        Ok(m @ Method::Watch) => {
            stream::<pb::WatchRequest, pb::WatchResponse>(m, cred, input, out, ctx).await
        }
        Ok(m @ Method::LeaseKeepAlive) => {
            stream::<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>(
                m, cred, input, out, ctx,
            )
            .await
        }
        Ok(m @ Method::Snapshot) => {
            stream::<pb::SnapshotRequest, pb::SnapshotResponse>(m, cred, input, out, ctx).await
        }
        Ok(m @ Method::Observe) => {
            stream::<el::LeaderRequest, el::LeaderResponse>(m, cred, input, out, ctx).await
        }
        // Unary methods, and those not served yet (refused as over gRPC).
        m => unary(m.ok(), grpc_path, cred, input, out, ctx).await,
    }?;
    if let Some(i) = index {
        metrics::METRICS.grpc_handled(i, code, started);
    }
    Ok(())
}

/// A plain-text answer (Go's `http.Error`: 404, 405), with `extra` headers.
async fn plain(
    out: &mut impl HttpOut,
    status: u16,
    extra: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut h = CORS.to_vec();
    h.extend_from_slice(extra);
    h.extend([TEXT, ("X-Content-Type-Options", "nosniff")]);
    out.whole(status, &h, body).await
}

/// Reads and drops a request body, up to `limit` bytes (0: any length is dropped).
async fn drain(input: &mut impl HttpIn, limit: usize) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(data) = input.data().await? {
        if limit > 0 {
            if body.len() + data.len() > limit {
                return Err(io::Error::other("request body too large"));
            }
            body.extend_from_slice(&data);
        }
    }
    Ok(body)
}

/// The most JSON bytes accepted for one request: base64 makes a value 4/3 larger, and JSON
/// adds its punctuation.
fn json_limit(ctx: &ShardCtx) -> usize {
    ctx.max_request_bytes * 2 + 64 * 1024
}

/// Serves a unary call of `method` (None: a method not served yet); returns the code it ended
/// with.
async fn unary(
    method: Option<Method>,
    grpc_path: &str,
    cred: &access::Credentials,
    input: &mut impl HttpIn,
    out: &mut impl HttpOut,
    ctx: &ShardCtx,
) -> io::Result<Code> {
    let body = match drain(input, json_limit(ctx)).await {
        Ok(b) => b,
        Err(_) => {
            let status = Status::new(
                Code::ResourceExhausted,
                format!(
                    "grpc: received message larger than max ({})",
                    json_limit(ctx)
                ),
            );
            send_error(out, &status, false).await?;
            return Ok(status.code);
        }
    };
    let canceled = async {
        futures_lite::future::or(input.gone(), out.gone()).await;
        Status::new(Code::Canceled, "context canceled")
    };
    let answer: Result<Vec<u8>, (Status, bool)> = async {
        let msg = json_to_proto(method, &body)
            .map_err(|e| (Status::new(Code::InvalidArgument, e.to_string()), false))?;
        let grpc = |s: Status| (s, true);
        let check = |r: access::Recipe<'_>| {
            access::may_use_recipe(ctx, cred, r).map_err(|e| grpc(e.into()))
        };
        Ok(match method {
            Some(Method::Lock) => to_json(&{
                let r = decode_msg(msg).map_err(grpc)?;
                check(access::Recipe::lock(&r))?;
                recipes::lock(ctx, r, canceled).await.map_err(grpc)?
            }),
            Some(Method::Unlock) => to_json(&{
                let r = decode_msg(msg).map_err(grpc)?;
                check(access::Recipe::unlock(&r))?;
                recipes::unlock(ctx, r).await.map_err(grpc)?
            }),
            Some(Method::Campaign) => to_json(&{
                let r = decode_msg(msg).map_err(grpc)?;
                check(access::Recipe::campaign(&r))?;
                recipes::campaign(ctx, r, canceled).await.map_err(grpc)?
            }),
            Some(Method::Proclaim) => to_json(&{
                let r: el::ProclaimRequest = decode_msg(msg).map_err(grpc)?;
                check(access::Recipe::leader_key(r.leader.as_ref()))?;
                recipes::proclaim(ctx, r).await.map_err(grpc)?
            }),
            Some(Method::Leader) => to_json(&{
                let r = decode_msg(msg).map_err(grpc)?;
                check(access::Recipe::leader(&r))?;
                recipes::leader(ctx, r).await.map_err(grpc)?
            }),
            Some(Method::Resign) => to_json(&{
                let r: el::ResignRequest = decode_msg(msg).map_err(grpc)?;
                check(access::Recipe::leader_key(r.leader.as_ref()))?;
                recipes::resign(ctx, r).await.map_err(grpc)?
            }),
            _ => {
                let req =
                    grpc::decode_request(grpc_path, msg, ctx.max_request_bytes).map_err(grpc)?;
                let resp = access::call(ctx, cred, req).await.map_err(grpc)?;
                response_json(&resp)
            }
        })
    }
    .await;
    match answer {
        Ok(json) => {
            let mut h = CORS.to_vec();
            h.extend([JSON, GRPC_METADATA]);
            out.whole(200, &h, &json).await?;
            Ok(Code::Ok)
        }
        Err((status, from_grpc)) => {
            send_error(out, &status, from_grpc).await?;
            Ok(status.code)
        }
    }
}

/// What the gateway makes of a request body sent to `path` (for fuzzing): the request a call
/// served by the state executes (None for streams and recipes, whose body is only decoded),
/// or the error the client gets. Never panics.
pub fn decode_gateway_request(
    path: &str,
    body: &[u8],
    max_request_bytes: usize,
) -> Result<Option<kv::Request>, Status> {
    let Some(grpc_path) = route(path) else {
        return Err(Status::new(Code::NotFound, "Not Found"));
    };
    let method = grpc::route(grpc_path).ok();
    let msg = json_to_proto(method, body)
        .map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))?;
    if !is_state_call(method) {
        return Ok(None);
    }
    grpc::decode_request(grpc_path, msg, max_request_bytes).map(Some)
}

/// The gateway's paths (for fuzzing every one).
pub fn gateway_paths() -> impl Iterator<Item = &'static str> {
    ROUTES.iter().map(|(p, _)| *p)
}

/// An empty body is an empty request, as Go's gateway decodes it; after the first JSON value
/// the rest is ignored.
fn parse<M: DeserializeOwned + Default>(body: &[u8]) -> Result<M, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(M::default());
    }
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<M>();
    values.next().unwrap_or_else(|| Ok(M::default()))
}

fn proto<M: DeserializeOwned + Default + Message>(body: &[u8]) -> Result<Bytes, serde_json::Error> {
    parse::<M>(body).map(|m| Bytes::from(m.encode_to_vec()))
}

/// The JSON body of a call of `method` as the protobuf message a gRPC client would send (for a
/// stream, its first request). None: a method not served yet, whose body must still be JSON
/// (the call then answers UNIMPLEMENTED, as over gRPC).
fn json_to_proto(method: Option<Method>, body: &[u8]) -> Result<Bytes, serde_json::Error> {
    let Some(method) = method else {
        return parse::<serde_json::Value>(body).map(|_| Bytes::new());
    };
    match method {
        Method::Range => proto::<pb::RangeRequest>(body),
        Method::Put => proto::<pb::PutRequest>(body),
        Method::DeleteRange => proto::<pb::DeleteRangeRequest>(body),
        Method::Txn => proto::<pb::TxnRequest>(body),
        Method::Compact => proto::<pb::CompactionRequest>(body),
        Method::Status => proto::<pb::StatusRequest>(body),
        Method::Alarm => proto::<pb::AlarmRequest>(body),
        Method::MemberList => proto::<pb::MemberListRequest>(body),
        Method::MoveLeader => proto::<pb::MoveLeaderRequest>(body),
        Method::MemberAdd => proto::<pb::MemberAddRequest>(body),
        Method::MemberRemove => proto::<pb::MemberRemoveRequest>(body),
        Method::MemberPromote => proto::<pb::MemberPromoteRequest>(body),
        Method::MemberUpdate => proto::<pb::MemberUpdateRequest>(body),
        Method::LeaseGrant => proto::<pb::LeaseGrantRequest>(body),
        Method::LeaseRevoke => proto::<pb::LeaseRevokeRequest>(body),
        Method::LeaseTimeToLive => proto::<pb::LeaseTimeToLiveRequest>(body),
        Method::LeaseLeases => proto::<pb::LeaseLeasesRequest>(body),
        Method::Snapshot => proto::<pb::SnapshotRequest>(body),
        Method::Watch => proto::<pb::WatchRequest>(body),
        Method::LeaseKeepAlive => proto::<pb::LeaseKeepAliveRequest>(body),
        Method::Lock => proto::<lk::LockRequest>(body),
        Method::Unlock => proto::<lk::UnlockRequest>(body),
        Method::Campaign => proto::<el::CampaignRequest>(body),
        Method::Proclaim => proto::<el::ProclaimRequest>(body),
        Method::Leader | Method::Observe => proto::<el::LeaderRequest>(body),
        Method::Resign => proto::<el::ResignRequest>(body),
        Method::Auth(name) => auth_proto(name, body),
        Method::Defragment => proto::<pb::DefragmentRequest>(body),
    }
}

/// An Auth service call's JSON as its protobuf.
fn auth_proto(name: &str, body: &[u8]) -> Result<Bytes, serde_json::Error> {
    match name {
        "AuthEnable" => proto::<pb::AuthEnableRequest>(body),
        "AuthDisable" => proto::<pb::AuthDisableRequest>(body),
        "AuthStatus" => proto::<pb::AuthStatusRequest>(body),
        "Authenticate" => proto::<pb::AuthenticateRequest>(body),
        "UserAdd" => proto::<pb::AuthUserAddRequest>(body),
        "UserGet" => proto::<pb::AuthUserGetRequest>(body),
        "UserList" => proto::<pb::AuthUserListRequest>(body),
        "UserDelete" => proto::<pb::AuthUserDeleteRequest>(body),
        "UserChangePassword" => proto::<pb::AuthUserChangePasswordRequest>(body),
        "UserGrantRole" => proto::<pb::AuthUserGrantRoleRequest>(body),
        "UserRevokeRole" => proto::<pb::AuthUserRevokeRoleRequest>(body),
        "RoleAdd" => proto::<pb::AuthRoleAddRequest>(body),
        "RoleGet" => proto::<pb::AuthRoleGetRequest>(body),
        "RoleList" => proto::<pb::AuthRoleListRequest>(body),
        "RoleDelete" => proto::<pb::AuthRoleDeleteRequest>(body),
        "RoleGrantPermission" => proto::<pb::AuthRoleGrantPermissionRequest>(body),
        _ => proto::<pb::AuthRoleRevokePermissionRequest>(body),
    }
}

/// Whether `method` is served by the state's request handlers (`grpc::decode_request`), rather
/// than as a stream or a lock/election recipe. A method not served yet goes there too, to be
/// refused as over gRPC.
fn is_state_call(method: Option<Method>) -> bool {
    !matches!(
        method,
        Some(
            Method::Snapshot
                | Method::Watch
                | Method::LeaseKeepAlive
                | Method::Lock
                | Method::Unlock
                | Method::Campaign
                | Method::Proclaim
                | Method::Leader
                | Method::Resign
                | Method::Observe
        )
    )
}

fn to_json<M: Serialize>(m: &M) -> Vec<u8> {
    serde_json::to_vec(m).expect("generated serializers do not fail")
}

fn response_json(resp: &kv::Response) -> Vec<u8> {
    struct Json;
    impl super::grpc::AnswerVisitor for Json {
        type Out = Vec<u8>;
        fn visit<M: prost::Message + Serialize>(self, m: &M) -> Vec<u8> {
            to_json(m)
        }
    }
    super::grpc::visit_answer(resp, Json)
}

/// grpc-gateway's HTTP status for a gRPC code.
pub(crate) fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Canceled => 408,
        Code::Unknown => 500,
        Code::InvalidArgument => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::FailedPrecondition => 412,
        Code::Aborted => 409,
        Code::OutOfRange => 400,
        Code::Unimplemented => 501,
        Code::Internal => 500,
        Code::Unavailable => 503,
        Code::DataLoss => 500,
    }
}

/// The reason phrase of an HTTP status.
pub(crate) fn status_text(http: u16) -> &'static str {
    match http {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        429 => "Too Many Requests",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string")
}

/// `{"error":m,"message":m,"code":c}`, in the order etcd's gateway writes it.
fn error_json(status: &Status) -> Vec<u8> {
    let m = json_string(&status.message);
    format!(
        r#"{{"error":{m},"message":{m},"code":{}}}"#,
        status.code.as_i32()
    )
    .into_bytes()
}

/// An error answer. One the gRPC call returned comes as etcd's gateway sends it, chunked with
/// a `Grpc-Trailer-Content-Type` trailer; one about the request itself (bad JSON) with a length.
async fn send_error(out: &mut impl HttpOut, status: &Status, from_grpc: bool) -> io::Result<()> {
    let http = http_status(status.code);
    let body = error_json(status);
    let mut h = CORS.to_vec();
    h.push(JSON);
    if from_grpc {
        h.push(("Trailer", "Grpc-Trailer-Content-Type"));
        out.start(http, &h).await?;
        out.chunk(&body).await?;
        out.end(&[("Grpc-Trailer-Content-Type", "application/grpc")])
            .await
    } else {
        out.whole(http, &h, &body).await
    }
}

/// Serves a stream: successive JSON requests from the body, one JSON line per response.
/// Returns the code it ended with.
async fn stream<Req, Resp>(
    method: Method,
    cred: &access::Credentials,
    input: &mut impl HttpIn,
    out: &mut impl HttpOut,
    ctx: &ShardCtx,
) -> io::Result<Code>
where
    Req: DeserializeOwned + Message + Default,
    Resp: Serialize + Message + Default,
{
    let mut source = JsonSource::<_, Req>::new(input, json_limit(ctx));
    // A first request that is not JSON fails the call, before the stream opens (code UNKNOWN
    // and HTTP 500, as etcd's gateway answers).
    let first = source.next().await;
    if let Some(Err(status)) = first {
        let status = Status::new(Code::Unknown, status.message);
        let mut h = CORS.to_vec();
        h.push(JSON);
        out.whole(500, &h, &error_json(&status)).await?;
        return Ok(Code::Unknown);
    }
    source.peeked = Some(first);
    let mut sink = JsonSink::<_, Resp> {
        out,
        opened: false,
        broken: false,
        code: Code::Canceled,
        _resp: PhantomData,
    };
    match method {
        Method::Watch => watch::serve_watch(&mut source, &mut sink, ctx, cred, false).await,
        Method::LeaseKeepAlive => {
            watch::serve_keep_alive(&mut source, &mut sink, ctx, cred, false).await
        }
        Method::Snapshot => match access::may_admin(ctx, cred) {
            Ok(()) => snapshot::serve(&mut sink, ctx).await,
            Err(e) => sink.finish(Some(e.into())).await,
        },
        Method::Observe => {
            // The only request: an election's name.
            let req = match source.next().await {
                Some(Ok(msg)) => decode_msg(msg),
                _ => Ok(el::LeaderRequest::default()),
            };
            match req {
                Ok(req) => {
                    let observer = recipes::Observer::new(ctx, req);
                    grpc::observe(observer, &mut source, &mut sink, None).await
                }
                Err(status) => sink.finish(Some(status)).await,
            }
        }
        _ => unreachable!("not a stream"),
    }
    if sink.broken {
        return Err(io::Error::other("client went away"));
    }
    Ok(sink.code)
}

/// Successive JSON requests of a request body, as protobuf messages.
pub(crate) struct JsonSource<'a, I, M> {
    input: &'a mut I,
    buf: BytesMut,
    ended: bool,
    limit: usize,
    peeked: Option<Option<Result<Bytes, Status>>>,
    _msg: PhantomData<M>,
}

impl<'a, I: HttpIn, M: DeserializeOwned + Message + Default> JsonSource<'a, I, M> {
    fn new(input: &'a mut I, limit: usize) -> Self {
        JsonSource {
            input,
            buf: BytesMut::new(),
            ended: false,
            limit,
            peeked: None,
            _msg: PhantomData,
        }
    }
}

impl<I: HttpIn, M: DeserializeOwned + Message + Default> Source for JsonSource<'_, I, M> {
    async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        if let Some(p) = self.peeked.take() {
            return p;
        }
        loop {
            let start = self
                .buf
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            self.buf.advance(start);
            if !self.buf.is_empty() {
                let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<M>();
                match values.next() {
                    Some(Ok(m)) => {
                        let used = values.byte_offset();
                        self.buf.advance(used);
                        return Some(Ok(Bytes::from(m.encode_to_vec())));
                    }
                    Some(Err(e)) if !e.is_eof() || self.ended => {
                        return Some(Err(Status::new(Code::InvalidArgument, e.to_string())));
                    }
                    _ => {}
                }
            } else if self.ended {
                return None;
            }
            if self.ended {
                return Some(Err(Status::new(Code::InvalidArgument, "unexpected EOF")));
            }
            match self.input.data().await {
                Ok(Some(data)) => {
                    if self.buf.len() + data.len() > self.limit {
                        return Some(Err(Status::new(
                            Code::ResourceExhausted,
                            format!("grpc: received message larger than max ({})", self.limit),
                        )));
                    }
                    self.buf.extend_from_slice(&data);
                }
                Ok(None) => self.ended = true,
                Err(e) => {
                    return Some(Err(Status::new(
                        Code::Canceled,
                        format!("reading the request: {e}"),
                    )))
                }
            }
        }
    }

    async fn gone(&mut self) {
        if self.ended {
            self.input.gone().await
        } else {
            std::future::pending::<()>().await
        }
    }
}

/// A response stream as lines of `{"result":...}`, chunked.
pub(crate) struct JsonSink<'a, O, M> {
    out: &'a mut O,
    opened: bool,
    /// Writing failed: the connection is not usable any more.
    broken: bool,
    /// The status the stream ended with (CANCELED until it ends otherwise).
    code: Code,
    _resp: PhantomData<M>,
}

impl<O: HttpOut, M: Serialize + Message + Default> Sink for JsonSink<'_, O, M> {
    async fn open(&mut self) -> Result<(), Gone> {
        if !self.opened {
            let mut h = CORS.to_vec();
            h.extend([JSON, GRPC_METADATA]);
            if self.out.start(200, &h).await.is_err() {
                self.broken = true;
                return Err(Gone);
            }
            self.opened = true;
        }
        Ok(())
    }

    async fn send(&mut self, mut frames: Bytes) -> Result<(), Gone> {
        self.open().await?;
        let mut lines = Vec::with_capacity(frames.len() * 2);
        while frames.len() >= 5 {
            let len = u32::from_be_bytes([frames[1], frames[2], frames[3], frames[4]]) as usize;
            frames.advance(5);
            let msg = frames.split_to(len.min(frames.len()));
            let resp = M::decode(msg).expect("the server's own encoding");
            lines.extend_from_slice(br#"{"result":"#);
            serde_json::to_writer(&mut lines, &resp).expect("generated serializers do not fail");
            lines.extend_from_slice(b"}\n");
        }
        if self.out.chunk(&lines).await.is_err() {
            self.broken = true;
            return Err(Gone);
        }
        Ok(())
    }

    async fn finish(&mut self, status: Option<Status>) {
        self.code = status.as_ref().map_or(Code::Ok, |s| s.code);
        let done = async {
            match status {
                None if self.opened => self.out.end(&[]).await,
                None => {
                    let mut h = CORS.to_vec();
                    h.extend([JSON, GRPC_METADATA]);
                    self.out.whole(200, &h, b"").await
                }
                Some(status) if self.opened => {
                    // grpc-gateway's stream error.
                    let http = http_status(status.code);
                    let line = format!(
                        r#"{{"error":{{"grpc_code":{},"http_code":{http},"message":{},"http_status":"{}"}}}}"#,
                        status.code.as_i32(),
                        json_string(&status.message),
                        status_text(http),
                    ) + "\n";
                    let bytes = line.into_bytes();
                    self.out.chunk(&bytes).await?;
                    self.out.end(&[]).await
                }
                Some(status) => send_error(self.out, &status, true).await,
            }
        };
        if done.await.is_err() {
            self.broken = true;
        }
    }

    async fn gone(&mut self) {
        self.out.gone().await
    }
}

fn version() -> String {
    format!(
        r#"{{"etcdserver":"{ETCD_API_VERSION}","etcdcluster":"3.5.0","ferrocd":"{}"}}"#,
        env!("CARGO_PKG_VERSION")
    )
}

/// The alarms raised now.
async fn alarms(ctx: &ShardCtx) -> Result<Vec<pb::AlarmMember>, Status> {
    let get = pb::AlarmRequest::default();
    match ctx.owner.call(kv::Request::Alarm(get)).await {
        Ok(kv::Response::Alarm(r)) => Ok(r.alarms),
        Ok(other) => unreachable!("an alarm request answered with {other:?}"),
        Err(e) => Err(e.into()),
    }
}

fn alarm_name(alarm: i32) -> &'static str {
    match pb::AlarmType::try_from(alarm) {
        Ok(pb::AlarmType::Nospace) => "NOSPACE",
        Ok(pb::AlarmType::Corrupt) => "CORRUPT",
        _ => "UNKNOWN",
    }
}

/// A read of one key, as etcd's health checks do.
async fn read_check(ctx: &ShardCtx, serializable: bool) -> Result<(), Status> {
    let r = pb::RangeRequest {
        key: Bytes::from_static(b"health"),
        keys_only: true,
        limit: 1,
        serializable,
        ..Default::default()
    };
    ctx.owner.range(r).await.map(drop)
}

fn query_values<'q>(query: &'q str, name: &'q str) -> impl Iterator<Item = &'q str> + 'q {
    query
        .split('&')
        .filter_map(move |kv| match kv.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if kv == name => Some(""),
            _ => None,
        })
}

/// `/health`, as etcd 3.5 answers it: alarms (but those in `exclude`), the leader (a single
/// member is always its own), then a read (linearizable unless `serializable=true`).
async fn health(ctx: &ShardCtx, query: &str) -> (u16, (&'static str, &'static str), String) {
    let excluded: Vec<&str> = query_values(query, "exclude").collect();
    let serializable = query_values(query, "serializable").any(|v| v == "true");
    let reason = match alarms(ctx).await {
        Ok(alarms) => alarms
            .iter()
            .map(|a| alarm_name(a.alarm))
            .find(|name| !excluded.contains(name))
            .map(|name| format!("ALARM {name}")),
        Err(e) => Some(format!("RANGE ERROR:{}", e.message)),
    };
    let no_leader = !super::metrics::has_leader();
    let reason = match reason {
        Some(r) => Some(r),
        None if no_leader => Some("RAFT NO LEADER".to_string()),
        None => read_check(ctx, serializable)
            .await
            .err()
            .map(|e| format!("RANGE ERROR:{}", e.message)),
    };
    let body = |health: &str, reason: &str| {
        serde_json::json!({"health": health, "reason": reason}).to_string()
    };
    match reason {
        None => (200, JSON, body("true", "")),
        Some(r) => (503, JSON, body("false", &r)),
    }
}

/// `/livez` and `/readyz`, as etcd 3.5 answers them: named checks, `exclude=name` to skip one,
/// `verbose` to list them; 503 with every result when one fails.
async fn checks(
    ctx: &ShardCtx,
    path: &str,
    query: &str,
) -> (u16, (&'static str, &'static str), String) {
    let names: &[&str] = if path == "/livez" {
        &["serializable_read"]
    } else {
        &[
            "data_corruption",
            "serializable_read",
            "linearizable_read",
            "non_learner",
        ]
    };
    let excluded: Vec<&str> = query_values(query, "exclude").collect();
    let mut report = String::new();
    let mut failed = false;
    for name in names.iter().filter(|n| !excluded.contains(n)) {
        let result = match *name {
            "data_corruption" => match alarms(ctx).await {
                Ok(a) if a.iter().any(|a| alarm_name(a.alarm) == "CORRUPT") => {
                    Err("alarm activated: CORRUPT".to_string())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e.message),
            },
            "serializable_read" => read_check(ctx, true).await.map_err(|e| e.message),
            "linearizable_read" => read_check(ctx, false).await.map_err(|e| e.message),
            _ => Ok(()),
        };
        match result {
            Ok(()) => report.push_str(&format!("[+]{name} ok\n")),
            Err(e) => {
                failed = true;
                report.push_str(&format!("[-]{name} failed: {e}\n"));
            }
        }
    }
    if failed {
        report.push('\n');
        return (503, TEXT, report);
    }
    let verbose = query_values(query, "verbose").next().is_some();
    let mut body = if verbose { report } else { String::new() };
    body.push_str("ok\n");
    (200, TEXT, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_a_method_of_etcds_api() {
        for (path, grpc_path) in ROUTES {
            assert!(path.starts_with("/v3/"), "{path}");
            // Served, or refused as not implemented yet; never unknown.
            assert!(
                grpc::method_index(grpc_path).is_some(),
                "{path}: {grpc_path}"
            );
            if let Err(e) = grpc::route(grpc_path) {
                assert!(
                    e.message.contains("does not implement"),
                    "{path}: {}",
                    e.message
                );
            }
        }
        assert_eq!(route("/v3/kv/range"), Some("/etcdserverpb.KV/Range"));
        assert_eq!(route("/v3/kv/range/"), None);
    }

    #[test]
    fn bodies() {
        // Empty is an empty request; what follows the first value is ignored.
        let r: pb::RangeRequest = parse(b"  ").unwrap();
        assert_eq!(r, pb::RangeRequest::default());
        let r: pb::RangeRequest = parse(br#"{"key":"Zm9v"} trailing"#).unwrap();
        assert_eq!(&r.key[..], b"foo");
        assert!(parse::<pb::RangeRequest>(br#"{"key":"#).is_err());
        assert!(parse::<pb::RangeRequest>(b"[1,2]").is_err());
        let auth_enable = grpc::route("/etcdserverpb.Auth/AuthEnable").ok();
        assert!(json_to_proto(auth_enable, b"{").is_err());
        assert!(json_to_proto(auth_enable, b"{}").is_ok());
    }

    #[test]
    fn queries() {
        let q = "exclude=NOSPACE&serializable=true&verbose";
        assert_eq!(query_values(q, "exclude").collect::<Vec<_>>(), ["NOSPACE"]);
        assert_eq!(query_values(q, "verbose").collect::<Vec<_>>(), [""]);
        assert_eq!(query_values(q, "nope").count(), 0);
    }

    #[test]
    fn errors() {
        let s = Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        assert_eq!(http_status(s.code), 400);
        assert_eq!(
            String::from_utf8(error_json(&s)).unwrap(),
            r#"{"error":"etcdserver: mvcc: required revision is a future revision","message":"etcdserver: mvcc: required revision is a future revision","code":11}"#
        );
    }
}
