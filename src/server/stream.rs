//! Messages over one HTTP/2 stream, both ways: reading successive length-prefixed messages
//! (a unary call reads one, a client or bidi stream many) and sending messages with HTTP/2
//! flow control respected, so a slow reader holds back the sender instead of making the server
//! buffer without bound.
//!
//! The streaming services (Watch, LeaseKeepAlive, Observe, Snapshot) are written against
//! [`Source`] and [`Sink`], so that the same code serves gRPC and the JSON gateway
//! (`gateway::JsonSource`, `gateway::JsonSink`).

use super::h2srv::{self, RecvStream, SendResponse, SendStream};
use bytes::{Buf, Bytes, BytesMut};

use crate::error::{Code, Status};

/// Successive gRPC messages of a request stream, each at most `limit` bytes.
pub(crate) struct MessageReader {
    body: RecvStream,
    buf: BytesMut,
    limit: usize,
}

impl MessageReader {
    pub fn new(body: RecvStream, limit: usize) -> MessageReader {
        MessageReader {
            body,
            buf: BytesMut::new(),
            limit,
        }
    }

    /// The next message; None when the client ended the stream between messages.
    pub async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    return Some(Err(Status::new(
                        Code::Unimplemented,
                        "grpc: compressed messages are not supported",
                    )));
                }
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > self.limit {
                    return Some(Err(Status::new(
                        Code::ResourceExhausted,
                        format!(
                            "grpc: received message larger than max ({len} vs. {})",
                            self.limit
                        ),
                    )));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Some(Ok(self.buf.split_to(len).freeze()));
                }
            }
            match self.body.data().await {
                Some(Ok(chunk)) => {
                    self.body.release_capacity(chunk.len());
                    if let Some(msg) = self.whole(&chunk) {
                        return Some(Ok(msg));
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    return Some(Err(Status::new(
                        Code::Internal,
                        format!("grpc: error reading request: {e}"),
                    )))
                }
                None if self.buf.is_empty() => return None,
                None => {
                    return Some(Err(Status::new(
                        Code::Internal,
                        "grpc: error reading request: unexpected EOF",
                    )))
                }
            }
        }
    }

    /// The common case, a whole message alone in a DATA frame: sliced, not copied.
    fn whole(&self, chunk: &Bytes) -> Option<Bytes> {
        if !self.buf.is_empty() || chunk.len() < 5 || chunk[0] != 0 {
            return None;
        }
        let len = u32::from_be_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]) as usize;
        (len <= self.limit && chunk.len() == 5 + len).then(|| chunk.slice(5..))
    }

    /// Exactly one message (a unary request).
    pub async fn one(&mut self) -> Result<Bytes, Status> {
        self.next().await.unwrap_or_else(|| {
            Err(Status::new(
                Code::Internal,
                "grpc: error reading request: unexpected EOF",
            ))
        })
    }
}

/// Sends framed messages once the peer's flow-control window has room for them.
pub(crate) async fn send_flow_controlled(
    stream: &mut SendStream,
    mut frame: Bytes,
) -> Result<(), h2srv::Error> {
    while !frame.is_empty() {
        let granted = futures_lite::future::poll_fn(|cx| stream.poll_capacity(cx))
            .await
            .unwrap_or_else(|| Err(h2srv::Error::from(h2srv::Reason::CANCEL)))?;
        let part = frame.split_to(granted.min(frame.len()));
        stream.send_data(part, false)?;
    }
    Ok(())
}

/// The response headers that open a gRPC stream (a 200 with gRPC's content type; made
/// without `Response::builder`, which parses and checks each header per response).
pub(crate) fn grpc_ok() -> http::Response<()> {
    const APPLICATION_GRPC: http::HeaderValue = http::HeaderValue::from_static("application/grpc");
    let mut resp = http::Response::new(());
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, APPLICATION_GRPC);
    resp
}

/// gRPC's status headers (None: OK): grpc-status, and grpc-message for an error.
pub(crate) fn status_headers(status: Option<&Status>) -> http::HeaderMap {
    // Made at compile time (a const), not checked byte by byte per response.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
    const OK: http::HeaderValue = http::HeaderValue::from_static("0");
    let mut headers = http::HeaderMap::with_capacity(2);
    match status {
        None => {
            headers.insert(GRPC_STATUS, OK);
        }
        Some(s) => {
            headers.insert(GRPC_STATUS, http::HeaderValue::from(s.code.as_i32()));
            let message = super::grpc::percent_encode(&s.message);
            if let Ok(v) = http::HeaderValue::from_str(&message) {
                headers.insert(GRPC_MESSAGE, v);
            }
        }
    }
    headers
}

/// Ends a gRPC stream with its status (None: OK) in the trailers.
pub(crate) fn send_status_trailers(out: &mut SendStream, status: Option<Status>) {
    let _ = out.send_trailers(status_headers(status.as_ref()));
}

/// The client went away: nothing more can be sent.
#[derive(Debug)]
pub(crate) struct Gone;

/// Where the requests of a stream come from: protobuf messages (without the gRPC prefix).
pub(crate) trait Source {
    /// The next message; None when the client ended its side of the stream.
    async fn next(&mut self) -> Option<Result<Bytes, Status>>;
    /// Completes when the client has gone away, if this side can tell (else never).
    async fn gone(&mut self) {
        std::future::pending::<()>().await
    }
}

/// Where the responses of a stream go: gRPC-framed protobuf messages.
pub(crate) trait Sink {
    /// Starts the response (headers), before any message.
    async fn open(&mut self) -> Result<(), Gone>;
    /// Sends one or more framed messages, waiting until the client can take them.
    async fn send(&mut self, frames: Bytes) -> Result<(), Gone>;
    /// Ends the stream, with an error status or OK; before `open`, the error alone.
    async fn finish(&mut self, status: Option<Status>);
    /// Completes when the client has gone away, if this side can tell (else never).
    async fn gone(&mut self) {
        std::future::pending::<()>().await
    }
}

impl Source for MessageReader {
    async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        MessageReader::next(self).await
    }
}

/// The client went away, as either side of a stream can tell.
pub(crate) async fn client_gone(source: &mut impl Source, sink: &mut impl Sink) {
    futures_lite::future::or(source.gone(), sink.gone()).await
}

/// A gRPC response stream on HTTP/2.
pub(crate) struct H2Sink<'a> {
    respond: &'a mut SendResponse,
    out: Option<SendStream>,
    /// The status the stream ended with (CANCELED until it ends otherwise: the client went
    /// away).
    pub code: Code,
}

impl<'a> H2Sink<'a> {
    pub fn new(respond: &'a mut SendResponse) -> H2Sink<'a> {
        H2Sink {
            respond,
            out: None,
            code: Code::Canceled,
        }
    }
}

impl Sink for H2Sink<'_> {
    async fn open(&mut self) -> Result<(), Gone> {
        if self.out.is_none() {
            self.out = Some(
                self.respond
                    .send_response(grpc_ok(), false)
                    .map_err(|_| Gone)?,
            );
        }
        Ok(())
    }

    async fn send(&mut self, frames: Bytes) -> Result<(), Gone> {
        self.open().await?;
        let out = self.out.as_mut().expect("opened");
        send_flow_controlled(out, frames).await.map_err(|_| Gone)
    }

    async fn finish(&mut self, status: Option<Status>) {
        self.code = status.as_ref().map_or(Code::Ok, |s| s.code);
        match (&mut self.out, status) {
            (Some(out), status) => send_status_trailers(out, status),
            (None, Some(status)) => {
                let _ = super::grpc::send_status(self.respond, &status);
            }
            (None, None) => {
                if self.open().await.is_ok() {
                    let out = self.out.as_mut().expect("opened");
                    send_status_trailers(out, None);
                }
            }
        }
    }

    async fn gone(&mut self) {
        match &mut self.out {
            Some(out) => {
                let _ = std::future::poll_fn(|cx| out.poll_reset(cx)).await;
            }
            None => {
                let _ = std::future::poll_fn(|cx| self.respond.poll_reset(cx)).await;
            }
        }
    }
}
