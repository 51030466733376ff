//! A minimal gRPC client over `h2` on a glommio socket (no tokio runtime), for `ferroctl` and
//! for tools that want to talk to any etcd v3 endpoint without a heavy stack.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use glommio::net::TcpStream;
use prost::Message;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::error::{Code, Status};
use crate::proto::etcdserverpb as pb;
use crate::server::{frame, percent_decode, with_deadline};

/// One HTTP/2 connection to an endpoint. Clones share the connection: each call is its own
/// HTTP/2 stream, so many calls can be in flight at once.
#[derive(Clone)]
pub struct Client {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
    /// An auth token, sent as the `token` metadata of every call.
    token: Option<String>,
}

fn unavailable(msg: String) -> Status {
    Status::new(Code::Unavailable, msg)
}

impl Client {
    /// Connects to `endpoint` ("host:port", optionally with an http:// scheme).
    pub async fn connect(endpoint: &str, dial_timeout: Duration) -> Result<Client, Status> {
        let authority = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let dial = async {
            let tcp = TcpStream::connect(authority.as_str())
                .await
                .map_err(|e| unavailable(format!("dial {authority}: {e}")))?;
            tcp.set_nodelay(true)
                .map_err(|e| unavailable(format!("dial {authority}: {e}")))?;
            let (send, conn) = h2::client::handshake(tcp.compat())
                .await
                .map_err(|e| unavailable(format!("HTTP/2 handshake with {authority}: {e}")))?;
            glommio::spawn_local(async move {
                let _ = conn.await;
            })
            .detach();
            Ok(send)
        };
        let send = with_deadline(dial, dial_timeout).await?;
        Ok(Client {
            send,
            authority,
            token: None,
        })
    }

    /// Sends `token` with every later call (from Authenticate).
    pub fn set_token(&mut self, token: String) {
        self.token = Some(token);
    }

    /// Opens a call's HTTP/2 stream: the response to come, and the request body to send.
    async fn open(
        &self,
        path: &str,
        timeout: Option<Duration>,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), Status> {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = timeout {
            builder = builder.header("grpc-timeout", format!("{}m", t.as_millis().max(1)));
        }
        if let Some(t) = &self.token {
            builder = builder.header("token", t.as_str());
        }
        let request = builder
            .body(())
            .map_err(|e| Status::new(Code::Internal, e.to_string()))?;
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        send.send_request(request, false)
            .map_err(|e| unavailable(e.to_string()))
    }

    /// One unary call.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &mut self,
        path: &str,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, Status> {
        let call = async {
            let (response, mut body_tx) = self.open(path, timeout).await?;
            body_tx
                .send_data(frame(req), true)
                .map_err(|e| unavailable(e.to_string()))?;
            let response = response.await.map_err(|e| unavailable(e.to_string()))?;
            let (parts, mut body) = response.into_parts();
            if let Some(status) = grpc_status(&parts.headers) {
                return Err(status.unwrap_or_else(|| unexpected("trailers-only OK")));
            }
            let mut data = BytesMut::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|e| unavailable(e.to_string()))?;
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let trailers = body
                .trailers()
                .await
                .map_err(|e| unavailable(e.to_string()))?
                .unwrap_or_default();
            match grpc_status(&trailers) {
                Some(Some(status)) => return Err(status),
                Some(None) => {}
                None => return Err(unexpected("no grpc-status")),
            }
            if data.len() < 5 {
                return Err(unexpected("short response"));
            }
            data.advance(5);
            Resp::decode(data.freeze()).map_err(|e| {
                Status::new(
                    Code::Internal,
                    format!("grpc: failed to unmarshal the received message: {e}"),
                )
            })
        };
        match timeout {
            Some(t) => with_deadline(call, t).await,
            None => call.await,
        }
    }

    pub async fn range(
        &mut self,
        r: &pb::RangeRequest,
        t: Option<Duration>,
    ) -> Result<pb::RangeResponse, Status> {
        self.unary("/etcdserverpb.KV/Range", r, t).await
    }

    pub async fn put(
        &mut self,
        r: &pb::PutRequest,
        t: Option<Duration>,
    ) -> Result<pb::PutResponse, Status> {
        self.unary("/etcdserverpb.KV/Put", r, t).await
    }

    pub async fn delete_range(
        &mut self,
        r: &pb::DeleteRangeRequest,
        t: Option<Duration>,
    ) -> Result<pb::DeleteRangeResponse, Status> {
        self.unary("/etcdserverpb.KV/DeleteRange", r, t).await
    }

    pub async fn txn(
        &mut self,
        r: &pb::TxnRequest,
        t: Option<Duration>,
    ) -> Result<pb::TxnResponse, Status> {
        self.unary("/etcdserverpb.KV/Txn", r, t).await
    }

    pub async fn compact(
        &mut self,
        r: &pb::CompactionRequest,
        t: Option<Duration>,
    ) -> Result<pb::CompactionResponse, Status> {
        self.unary("/etcdserverpb.KV/Compact", r, t).await
    }

    pub async fn status(&mut self, t: Option<Duration>) -> Result<pb::StatusResponse, Status> {
        self.unary("/etcdserverpb.Maintenance/Status", &pb::StatusRequest {}, t)
            .await
    }

    pub async fn member_list(
        &mut self,
        t: Option<Duration>,
    ) -> Result<pb::MemberListResponse, Status> {
        let req = pb::MemberListRequest { linearizable: true };
        self.unary("/etcdserverpb.Cluster/MemberList", &req, t)
            .await
    }

    pub async fn lease_grant(
        &mut self,
        r: &pb::LeaseGrantRequest,
        t: Option<Duration>,
    ) -> Result<pb::LeaseGrantResponse, Status> {
        self.unary("/etcdserverpb.Lease/LeaseGrant", r, t).await
    }

    pub async fn lease_revoke(
        &mut self,
        r: &pb::LeaseRevokeRequest,
        t: Option<Duration>,
    ) -> Result<pb::LeaseRevokeResponse, Status> {
        self.unary("/etcdserverpb.Lease/LeaseRevoke", r, t).await
    }

    pub async fn lease_time_to_live(
        &mut self,
        r: &pb::LeaseTimeToLiveRequest,
        t: Option<Duration>,
    ) -> Result<pb::LeaseTimeToLiveResponse, Status> {
        self.unary("/etcdserverpb.Lease/LeaseTimeToLive", r, t)
            .await
    }

    pub async fn lease_leases(
        &mut self,
        t: Option<Duration>,
    ) -> Result<pb::LeaseLeasesResponse, Status> {
        self.unary(
            "/etcdserverpb.Lease/LeaseLeases",
            &pb::LeaseLeasesRequest {},
            t,
        )
        .await
    }

    pub async fn alarm(
        &mut self,
        r: &pb::AlarmRequest,
        t: Option<Duration>,
    ) -> Result<pb::AlarmResponse, Status> {
        self.unary("/etcdserverpb.Maintenance/Alarm", r, t).await
    }
}

/// An open bidirectional stream: requests of type `Q` go out as they are sent, responses of
/// type `R` are read in order.
pub struct BidiStream<Q, R> {
    tx: h2::SendStream<Bytes>,
    body: h2::RecvStream,
    buf: BytesMut,
    _types: std::marker::PhantomData<(Q, R)>,
}

/// A Watch stream.
pub type WatchStream = BidiStream<pb::WatchRequest, pb::WatchResponse>;

impl Client {
    /// Opens a Watch stream, sends `first` on it, and waits for the response headers (etcd
    /// sends them with its first response, so `first` must not be empty).
    pub async fn watch(&mut self, first: &[pb::WatchRequest]) -> Result<WatchStream, Status> {
        self.bidi("/etcdserverpb.Watch/Watch", first).await
    }

    /// Opens a LeaseKeepAlive stream and sends `first` on it.
    pub async fn keep_alive(
        &mut self,
        first: &pb::LeaseKeepAliveRequest,
    ) -> Result<BidiStream<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>, Status> {
        self.bidi(
            "/etcdserverpb.Lease/LeaseKeepAlive",
            std::slice::from_ref(first),
        )
        .await
    }

    async fn bidi<Q: Message, R: Message + Default>(
        &mut self,
        path: &str,
        first: &[Q],
    ) -> Result<BidiStream<Q, R>, Status> {
        let (response, mut tx) = self.open(path, None).await?;
        for r in first {
            tx.send_data(frame(r), false)
                .map_err(|e| unavailable(e.to_string()))?;
        }
        let response = response.await.map_err(|e| unavailable(e.to_string()))?;
        let (parts, body) = response.into_parts();
        if let Some(status) = grpc_status(&parts.headers) {
            return Err(status.unwrap_or_else(|| unexpected("trailers-only OK")));
        }
        Ok(BidiStream {
            tx,
            body,
            buf: BytesMut::new(),
            _types: std::marker::PhantomData,
        })
    }
}

impl<Q: Message, R: Message + Default> BidiStream<Q, R> {
    /// Sends a request on the stream.
    pub fn send(&mut self, r: &Q) -> Result<(), Status> {
        self.tx
            .send_data(frame(r), false)
            .map_err(|e| unavailable(e.to_string()))
    }

    /// The next response; the stream's status when it ends.
    pub async fn next(&mut self) -> Result<R, Status> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    let mut msg = self.buf.split_to(5 + len);
                    msg.advance(5);
                    return R::decode(msg.freeze()).map_err(|e| {
                        Status::new(
                            Code::Internal,
                            format!("grpc: failed to unmarshal the received message: {e}"),
                        )
                    });
                }
            }
            match self.body.data().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| unavailable(e.to_string()))?;
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                None => {
                    let trailers = self
                        .body
                        .trailers()
                        .await
                        .map_err(|e| unavailable(e.to_string()))?
                        .unwrap_or_default();
                    return Err(match grpc_status(&trailers) {
                        Some(Some(status)) => status,
                        _ => Status::new(Code::Unavailable, "watch stream ended"),
                    });
                }
            }
        }
    }
}

fn unexpected(what: &str) -> Status {
    Status::new(Code::Internal, format!("malformed gRPC response: {what}"))
}

/// The status in `h`: None when absent, Some(None) for OK, Some(Some(status)) otherwise.
fn grpc_status(h: &http::HeaderMap) -> Option<Option<Status>> {
    let code: i32 = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    if code == 0 {
        return Some(None);
    }
    let message = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some(Some(Status::new(Code::from_i32(code), message)))
}
