//! Bad input never crashes the server: malformed protobuf, truncated and oversized frames,
//! compressed frames, unknown methods, non-gRPC content types, and garbage bytes each get an
//! error or a closed connection, and the server keeps serving.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{http_get, rt, Server};
use ferrocd::proto::etcdserverpb as pb;
use prost::Message;

/// What a gRPC call got back: the HTTP status, grpc-status, grpc-message, and the message.
#[derive(Debug)]
struct Reply {
    http: u16,
    code: Option<i32>,
    message: String,
    body: Vec<u8>,
}

fn frame(compressed: bool, declared_len: u32, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(compressed as u8);
    b.put_u32(declared_len);
    b.put_slice(payload);
    b.freeze()
}

fn msg<M: Message>(m: &M) -> Bytes {
    let v = m.encode_to_vec();
    frame(false, v.len() as u32, &v)
}

async fn call(port: u16, path: &str, content_type: &str, body: Bytes) -> Reply {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).expect("send request");
    send.send_data(body, true).expect("send body");
    let resp = resp.await.expect("response");
    let (parts, mut body) = resp.into_parts();
    let header = |h: &http::HeaderMap, k: &str| {
        h.get(k)
            .and_then(|v| v.to_str().ok())
            .map(ferrocd::server::percent_decode)
    };
    let mut reply = Reply {
        http: parts.status.as_u16(),
        code: header(&parts.headers, "grpc-status").and_then(|s| s.parse().ok()),
        message: header(&parts.headers, "grpc-message").unwrap_or_default(),
        body: Vec::new(),
    };
    if reply.code.is_none() {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data");
            let _ = body.flow_control().release_capacity(chunk.len());
            reply.body.extend_from_slice(&chunk);
        }
        if let Ok(Some(t)) = body.trailers().await {
            reply.code = header(&t, "grpc-status").and_then(|s| s.parse().ok());
            reply.message = header(&t, "grpc-message").unwrap_or_default();
        }
    }
    reply
}

const RANGE: &str = "/etcdserverpb.KV/Range";
const PUT: &str = "/etcdserverpb.KV/Put";
const GRPC: &str = "application/grpc";

fn range_all() -> Bytes {
    msg(&pb::RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        ..Default::default()
    })
}

#[test]
fn malformed_requests_get_errors_and_the_server_keeps_serving() {
    // Every connection on the shard that does not hold the state: requests are decoded there
    // and forwarded (the default placement serves them on the owner, as the other tests do).
    let mut server = Server::ferrocd(&[
        "--max-request-bytes",
        "1024",
        "--shards",
        "2",
        "--connection-placement",
        "others",
    ]);
    let port = server.client_port;
    rt().block_on(async {
        let timeout = |f| tokio::time::timeout(Duration::from_secs(10), f);

        // Not protobuf at all.
        let r = timeout(call(
            port,
            PUT,
            GRPC,
            frame(false, 4, &[0xff, 0xff, 0xff, 0xff]),
        ))
        .await
        .expect("in time");
        assert_eq!(r.code, Some(13), "{r:?}");
        assert!(r.message.contains("unmarshalling"), "{r:?}");

        // The prefix promises 100 bytes, 10 arrive, then the stream ends.
        let r = timeout(call(port, RANGE, GRPC, frame(false, 100, &[0u8; 10])))
            .await
            .expect("in time");
        assert_eq!(r.code, Some(13), "{r:?}");

        // Fewer than 5 bytes: not even a prefix.
        let r = timeout(call(port, RANGE, GRPC, Bytes::from_static(&[0, 0])))
            .await
            .expect("in time");
        assert_eq!(r.code, Some(13), "{r:?}");

        // Compressed messages are not supported.
        let r = timeout(call(port, RANGE, GRPC, frame(true, 0, &[])))
            .await
            .expect("in time");
        assert_eq!(r.code, Some(12), "{r:?}");

        // A put over --max-request-bytes: etcd's own error.
        let big = msg(&pb::PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![b'x'; 2000]),
            ..Default::default()
        });
        let r = timeout(call(port, PUT, GRPC, big)).await.expect("in time");
        assert_eq!(r.code, Some(3), "{r:?}");
        assert_eq!(r.message, "etcdserver: request is too large");

        // A frame over the transport limit (request limit + gRPC overhead) is refused from its
        // prefix, before the body is read.
        let r = timeout(call(port, PUT, GRPC, frame(false, 600 * 1024, &[0u8; 64])))
            .await
            .expect("in time");
        assert_eq!(r.code, Some(8), "{r:?}");
        assert!(r.message.contains("larger than max"), "{r:?}");

        // Unknown method and unknown service; a method not implemented yet.
        let r = call(port, "/etcdserverpb.KV/Nope", GRPC, range_all()).await;
        assert_eq!(r.code, Some(12), "{r:?}");
        let r = call(port, "/nope.Nope/Nope", GRPC, range_all()).await;
        assert_eq!(
            (r.code, r.message.as_str()),
            (Some(12), "unknown service nope.Nope")
        );
        let r = call(port, "/etcdserverpb.Maintenance/Hash", GRPC, range_all()).await;
        assert_eq!(r.code, Some(12), "{r:?}");
        // A served service given another message's bytes: etcd's unmarshalling error.
        let r = call(port, "/etcdserverpb.Lease/LeaseGrant", GRPC, range_all()).await;
        assert_eq!(r.code, Some(13), "{r:?}");
        assert!(
            r.message.starts_with("grpc: error unmarshalling request"),
            "{r:?}"
        );

        // Not gRPC: the HTTP handler (etcd's HTTP mux) answers, and has no such path.
        let r = call(port, RANGE, "application/json", range_all()).await;
        assert_eq!(r.http, 404, "{r:?}");

        // And a valid request still works, on fresh connections.
        for _ in 0..4 {
            let r = call(port, RANGE, GRPC, range_all()).await;
            assert_eq!(r.code, Some(0), "{r:?}");
            let resp = pb::RangeResponse::decode(&r.body[5..]).expect("a RangeResponse");
            assert_eq!(resp.header.unwrap().revision, 1, "nothing was written");
        }
    });
    assert!(server.alive());
}

#[test]
fn garbage_on_the_wire_closes_only_that_connection() {
    let mut server = Server::ferrocd(&[]);
    let port = server.client_port;
    // Deterministic pseudo-random bytes (xorshift), 64 KiB.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let garbage: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for start in [
        &b""[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\n",
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(start);
        let _ = s.write_all(&garbage);
        // The server answers with an error or closes; either way the read ends.
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    assert!(server.alive());
    assert_eq!(
        http_get(port, "/health"),
        Some((200, r#"{"health":"true","reason":""}"#.to_string()))
    );
    let (code, body) = http_get(port, "/version").unwrap();
    assert_eq!(code, 200);
    assert!(body.starts_with(r#"{"etcdserver":"3.5."#), "{body}");
    assert_eq!(http_get(port, "/nope").map(|r| r.0), Some(404));
}

#[test]
fn malformed_stream_messages_end_only_their_stream() {
    let mut server = Server::ferrocd(&["--max-request-bytes", "1024"]);
    let port = server.client_port;
    rt().block_on(async {
        let timeout = |f| tokio::time::timeout(Duration::from_secs(10), f);
        let garbage = frame(false, 4, &[0xff, 0xff, 0xff, 0xff]);
        for path in [
            "/etcdserverpb.Watch/Watch",
            "/etcdserverpb.Lease/LeaseKeepAlive",
            "/v3electionpb.Election/Observe",
            "/v3electionpb.Election/Campaign",
            "/v3lockpb.Lock/Lock",
        ] {
            let r = timeout(call(port, path, GRPC, garbage.clone()))
                .await
                .expect("in time");
            assert_eq!(r.code, Some(13), "{path}: {r:?}");
            assert!(r.message.contains("unmarshalling"), "{path}: {r:?}");
            // A frame over the transport limit is refused from its prefix.
            let r = timeout(call(port, path, GRPC, frame(false, 600 * 1024, &[0u8; 64])))
                .await
                .expect("in time");
            assert_eq!(r.code, Some(8), "{path}: {r:?}");
        }
        // A valid message, then garbage on the same Watch stream: the first is answered, the
        // second ends the stream with its error.
        let create = |key: &'static [u8], end: &'static [u8]| {
            msg(&pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: Bytes::from_static(key),
                        range_end: Bytes::from_static(end),
                        ..Default::default()
                    },
                )),
            })
        };
        let mut both = BytesMut::new();
        both.extend_from_slice(&create(b"a", b""));
        both.extend_from_slice(&garbage);
        let r = timeout(call(port, "/etcdserverpb.Watch/Watch", GRPC, both.freeze()))
            .await
            .expect("in time");
        assert_eq!(r.code, Some(13), "{r:?}");
        let first = pb::WatchResponse::decode(&r.body[5..]).expect("a WatchResponse");
        assert!(first.created && !first.canceled, "{first:?}");
        // An empty range is refused as etcd refuses it, and the stream goes on: the garbage
        // after it is read, and ends it. (A watch stream is not ended by the end of the
        // client's requests: as etcd's, it serves until the client goes away.)
        let mut both = BytesMut::new();
        both.extend_from_slice(&create(b"b", b"a"));
        both.extend_from_slice(&garbage);
        let r = timeout(call(port, "/etcdserverpb.Watch/Watch", GRPC, both.freeze()))
            .await
            .expect("in time");
        assert_eq!(r.code, Some(13), "{r:?}");
        let resp = pb::WatchResponse::decode(&r.body[5..]).expect("a WatchResponse");
        assert!(resp.created && resp.canceled, "{resp:?}");
        assert_eq!(resp.cancel_reason, "mvcc: watcher range is empty");
        // Nothing above hurt the server.
        let r = call(port, RANGE, GRPC, range_all()).await;
        assert_eq!(r.code, Some(0), "{r:?}");
    });
    assert!(server.alive());
}
