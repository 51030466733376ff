//! gRPC over one HTTP/2 stream: routing by path, the 5-byte message framing, size limits,
//! `grpc-timeout`, and status trailers. Wording of transport errors follows grpc-go, which is
//! what etcd's clients see from etcd.

use std::rc::Rc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use prost::Message;

use super::stream::{grpc_ok, send_flow_controlled, send_status_trailers, MessageReader};
use super::{recipes, snapshot, watch, ShardCtx};
use crate::error::{Code, EtcdError, Status};
use crate::kv;
use crate::limits::GRPC_OVERHEAD_BYTES;
use crate::proto::etcdserverpb as pb;

/// The unary methods served today.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
    Status,
    Alarm,
    MemberList,
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
}

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
];

/// Every service and method of etcd's API, to tell "not implemented yet" from "unknown".
const SERVICES: &[(&str, &[&str])] = &[
    (
        "etcdserverpb.KV",
        &["Range", "Put", "DeleteRange", "Txn", "Compact"],
    ),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
            "Downgrade",
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
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
        ],
    ),
    (
        "v3electionpb.Election",
        &["Campaign", "Proclaim", "Leader", "Observe", "Resign"],
    ),
    ("v3lockpb.Lock", &["Lock", "Unlock"]),
];

fn route(path: &str) -> Result<Method, Status> {
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
        ("etcdserverpb.Cluster", "MemberList") => Method::MemberList,
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
        _ => {
            return match SERVICES.iter().find(|(s, _)| *s == service) {
                None => unimplemented(format!("unknown service {service}")),
                Some((_, methods)) if !methods.contains(&method) => {
                    unimplemented(format!("unknown method {method} for service {service}"))
                }
                Some(_) => {
                    unimplemented(format!("ferrocd does not implement {service}/{method} yet"))
                }
            };
        }
    };
    Ok(m)
}

/// Serves one HTTP/2 stream. Never panics on input; every failure becomes a status.
pub(crate) async fn handle(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    ctx: Rc<ShardCtx>,
) {
    let (parts, body) = req.into_parts();
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if parts.method != http::Method::POST || !grpc {
        // Not gRPC: grpc-go answers 415 for a wrong content type.
        let resp = Response::builder()
            .status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .body(())
            .expect("static response");
        let _ = respond.send_response(resp, true);
        return;
    }
    let deadline = parts
        .headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_timeout);
    let limit = ctx.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let mut reader = MessageReader::new(body, limit);
    match route(parts.uri.path()) {
        Ok(Method::Watch) => return watch::serve_watch(&mut respond, reader, &ctx).await,
        Ok(Method::LeaseKeepAlive) => {
            return watch::serve_keep_alive(&mut respond, reader, &ctx).await
        }
        Ok(
            m @ (Method::Lock
            | Method::Unlock
            | Method::Campaign
            | Method::Proclaim
            | Method::Leader
            | Method::Resign
            | Method::Observe),
        ) => return serve_recipe(m, respond, reader, deadline, &ctx).await,
        _ => {}
    }
    if route(parts.uri.path()) == Ok(Method::Snapshot) {
        let result = match reader.one().await {
            Ok(msg) => match decode_msg::<pb::SnapshotRequest>(msg) {
                Ok(_) => snapshot::serve(&mut respond, &ctx).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(status) = result {
            let _ = send_status(&mut respond, &status);
        }
        return;
    }
    let work = async {
        let method = route(parts.uri.path())?;
        let msg = reader.one().await?;
        call(method, msg, &ctx).await
    };
    let result = match deadline {
        Some(d) => with_deadline(work, d).await,
        None => work.await,
    };
    let sent = match result {
        Ok(frame) => send_message(&mut respond, frame),
        Err(status) => send_status(&mut respond, &status),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "client went away before the response");
    }
}

/// Completes when the client resets the stream (a canceled call) or the deadline passes, with
/// the status grpc-go would give the call.
async fn canceled(respond: &mut SendResponse<Bytes>, deadline: Option<Duration>) -> Status {
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
    mut respond: SendResponse<Bytes>,
    mut reader: MessageReader,
    deadline: Option<Duration>,
    ctx: &ShardCtx,
) {
    let result: Result<Bytes, Status> = async {
        let msg = reader.one().await?;
        let canceled = canceled(&mut respond, deadline);
        Ok(match method {
            Method::Lock => frame(&recipes::lock(ctx, decode_msg(msg)?, canceled).await?),
            Method::Unlock => frame(&recipes::unlock(ctx, decode_msg(msg)?).await?),
            Method::Campaign => frame(&recipes::campaign(ctx, decode_msg(msg)?, canceled).await?),
            Method::Proclaim => frame(&recipes::proclaim(ctx, decode_msg(msg)?).await?),
            Method::Leader => frame(&recipes::leader(ctx, decode_msg(msg)?).await?),
            Method::Resign => frame(&recipes::resign(ctx, decode_msg(msg)?).await?),
            Method::Observe => {
                drop(canceled);
                let req = decode_msg(msg)?;
                return observe(recipes::Observer::new(ctx, req), &mut respond, deadline).await;
            }
            _ => unreachable!("not a recipe method"),
        })
    }
    .await;
    let sent = match result {
        Ok(frame) if frame.is_empty() => Ok(()),
        Ok(frame) => send_message(&mut respond, frame),
        Err(status) => send_status(&mut respond, &status),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "client went away before the response");
    }
}

/// Streams an election's leader changes until the client goes away. Returns an empty frame
/// when the stream was ended here, or the status to end it with before it began.
async fn observe(
    mut observer: recipes::Observer<'_>,
    respond: &mut SendResponse<Bytes>,
    deadline: Option<Duration>,
) -> Result<Bytes, Status> {
    let mut out = respond
        .send_response(grpc_ok(), false)
        .map_err(|_| Status::new(Code::Canceled, "context canceled"))?;
    let end = async {
        loop {
            let next = futures_lite::future::or(async { Some(observer.next().await) }, async {
                let _ = std::future::poll_fn(|cx| out.poll_reset(cx)).await;
                None
            })
            .await;
            let Some(resp) = next else {
                return Ok(());
            };
            if send_flow_controlled(&mut out, frame(&resp?)).await.is_err() {
                return Ok(());
            }
        }
    };
    let end: Result<(), Status> = match deadline {
        Some(d) => with_deadline(end, d).await,
        None => end.await,
    };
    send_status_trailers(&mut out, end.err());
    Ok(Bytes::new())
}

/// `f`, or DEADLINE_EXCEEDED with grpc-go's message if it takes longer than `d`.
pub async fn with_deadline<T>(
    f: impl std::future::Future<Output = Result<T, Status>>,
    d: Duration,
) -> Result<T, Status> {
    futures_lite::future::or(f, async {
        glommio::timer::sleep(d).await;
        Err(Status::new(
            Code::DeadlineExceeded,
            "context deadline exceeded",
        ))
    })
    .await
}

pub(super) fn decode_msg<M: Message + Default>(msg: Bytes) -> Result<M, Status> {
    M::decode(msg).map_err(|e| {
        Status::new(
            Code::Internal,
            format!("grpc: error unmarshalling request: {e}"),
        )
    })
}

async fn call(method: Method, msg: Bytes, ctx: &ShardCtx) -> Result<Bytes, Status> {
    let req = decode(method, msg, ctx.max_request_bytes)?;
    let resp = ctx.owner.call(req).await.map_err(Status::from)?;
    Ok(encode_response(&resp))
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

/// Encodes a response as one framed gRPC message.
pub fn encode_response(resp: &kv::Response) -> Bytes {
    match resp {
        kv::Response::Range(r) => frame(r),
        kv::Response::Put(r) => frame(r),
        kv::Response::DeleteRange(r) => frame(r),
        kv::Response::Txn(r) => frame(r),
        kv::Response::Compact(r) => frame(r),
        kv::Response::Status(r) => frame(r),
        kv::Response::MemberList(r) => frame(r),
        kv::Response::Alarm(r) => frame(r),
        kv::Response::LeaseGrant(r) => frame(r),
        kv::Response::LeaseRevoke(r) => frame(r),
        kv::Response::LeaseKeepAlive(r) => frame(r),
        kv::Response::LeaseTimeToLive(r) => frame(r),
        kv::Response::LeaseLeases(r) => frame(r),
        kv::Response::LeaseExpire(_) | kv::Response::WatchPull(_) => {
            unreachable!("internal answers are not sent to clients")
        }
    }
}

/// Encodes `m` with the gRPC prefix, in one buffer.
pub fn frame<M: Message>(m: &M) -> Bytes {
    let len = m.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    m.encode(&mut buf).expect("buffer has room");
    buf.freeze()
}

fn send_message(respond: &mut SendResponse<Bytes>, frame: Bytes) -> Result<(), h2::Error> {
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(())
        .expect("static response");
    let mut stream = respond.send_response(resp, false)?;
    stream.send_data(frame, false)?;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    stream.send_trailers(trailers)
}

/// A trailers-only response: the status in the headers, and the stream ends.
fn send_status(respond: &mut SendResponse<Bytes>, status: &Status) -> Result<(), h2::Error> {
    let message = HeaderValue::from_str(&percent_encode(&status.message))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("grpc-status", status.code.as_i32())
        .header("grpc-message", message)
        .body(())
        .expect("valid headers");
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
        let e = route("/etcdserverpb.Auth/AuthStatus").unwrap_err();
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
    fn frames_have_the_grpc_prefix() {
        let f = frame(&pb::CompactionRequest {
            revision: 3,
            physical: false,
        });
        assert_eq!(&f[..], &[0, 0, 0, 0, 2, 0x08, 3]);
    }
}
