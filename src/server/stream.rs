//! Messages over one HTTP/2 stream, both ways: reading successive length-prefixed messages
//! (a unary call reads one, a client or bidi stream many) and sending messages with HTTP/2
//! flow control respected, so a slow reader holds back the sender instead of making the server
//! buffer without bound.

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};

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
                    let _ = self.body.flow_control().release_capacity(chunk.len());
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
    stream: &mut SendStream<Bytes>,
    mut frame: Bytes,
) -> Result<(), h2::Error> {
    while !frame.is_empty() {
        stream.reserve_capacity(frame.len());
        let granted = futures_lite::future::poll_fn(|cx| stream.poll_capacity(cx))
            .await
            .unwrap_or_else(|| Err(h2::Error::from(h2::Reason::CANCEL)))?;
        let part = frame.split_to(granted.min(frame.len()));
        stream.send_data(part, false)?;
    }
    Ok(())
}

/// The response headers that open a gRPC stream.
pub(crate) fn grpc_ok() -> http::Response<()> {
    http::Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(())
        .expect("static response")
}

/// Ends a gRPC stream with its status (None: OK) in the trailers.
pub(crate) fn send_status_trailers(out: &mut SendStream<Bytes>, status: Option<Status>) {
    let mut trailers = http::HeaderMap::new();
    match status {
        None => {
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        }
        Some(s) => {
            trailers.insert("grpc-status", http::HeaderValue::from(s.code.as_i32()));
            let message = super::grpc::percent_encode(&s.message);
            if let Ok(v) = http::HeaderValue::from_str(&message) {
                trailers.insert("grpc-message", v);
            }
        }
    }
    let _ = out.send_trailers(trailers);
}
