//! HTTP/1.1 on the client port: request heads, bodies (with a length or chunked), responses
//! (with a length, or chunked for streams), keep-alive. What each request gets is decided by
//! the gateway ([`gateway::serve`]).

use std::io;
use std::rc::Rc;

use super::access;
use super::conn::Prefixed;
use super::gateway::{self, HttpIn, HttpOut};
use super::ShardCtx;
use crate::limits::HTTP1_MAX_HEAD_BYTES;
use bytes::{Buf, Bytes, BytesMut};
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const METHODS: &[&[u8]] = &[
    b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC",
];

/// Bytes read from the socket at a time.
const READ_BYTES: usize = 16 * 1024;

/// True when the first bytes of a connection are an HTTP/1.x method.
pub(crate) fn looks_like_request(head: &[u8]) -> bool {
    METHODS.iter().any(|m| head.starts_with(m))
}

/// One parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub method: String,
    /// The path with its query.
    pub target: String,
    pub content_length: usize,
    pub chunked: bool,
    pub close: bool,
    pub http10: bool,
    pub expect_continue: bool,
    /// The `Authorization` header (a token, as etcd's gateway takes it).
    pub authorization: Option<String>,
}

/// Parses a request head (up to and including the blank line).
pub(crate) fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    if first.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    let http10 = version == "HTTP/1.0";
    let mut head = Head {
        method: method.to_string(),
        target: target.to_string(),
        content_length: 0,
        chunked: false,
        close: http10,
        http10,
        expect_continue: false,
        authorization: None,
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.eq_ignore_ascii_case("chunked");
            if !head.chunked {
                return None;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_string());
        }
    }
    Some(head)
}

pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    conn: Prefixed<S>,
    ctx: Rc<ShardCtx>,
) -> io::Result<()> {
    let (mut rd, mut wr) = futures_lite::io::split(conn);
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    loop {
        // Read until the end of the head.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > HTTP1_MAX_HEAD_BYTES {
                return refuse(&mut wr, "431 Request Header Fields Too Large").await;
            }
            if !fill(&mut rd, &mut buf).await? {
                return Ok(());
            }
        };
        let Some(head) = parse_head(&buf[..end]) else {
            return refuse(&mut wr, "400 Bad Request").await;
        };
        buf.advance(end);
        let has_body = head.chunked || head.content_length > 0;
        if head.expect_continue && has_body {
            wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let mut input = Http1In {
            rd: &mut rd,
            buf: &mut buf,
            body: if head.chunked {
                Body::ChunkSize
            } else {
                Body::Left(head.content_length)
            },
        };
        let mut out = Http1Out {
            wr: &mut wr,
            close: head.close,
            http10: head.http10,
        };
        let cred = access::Credentials {
            token: head
                .authorization
                .as_deref()
                .map(|t| t.strip_prefix("Bearer ").unwrap_or(t).to_string()),
            common_name: None,
        };
        gateway::serve(
            &head.method,
            &head.target,
            &cred,
            &mut input,
            &mut out,
            &ctx,
        )
        .await?;
        // A body not read to its end (an answer that did not need it, a stream that ended
        // first) leaves the connection unusable for another request.
        if head.close || !matches!(input.body, Body::Done | Body::Left(0)) {
            linger(&mut input).await;
            wr.close().await?;
            return Ok(());
        }
    }
}

/// Before closing, reads what is left of the request body (up to `LINGER_BYTES`, for at most
/// `LINGER`): closing a socket with unread data makes the kernel reset the connection, and the
/// client may then lose the answer already sent.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(input: &mut Http1In<'_, S>) {
    const LINGER_BYTES: usize = 1 << 20;
    const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
    let drain = async {
        let mut read = 0;
        while read < LINGER_BYTES {
            match input.data().await {
                Ok(Some(d)) => read += d.len(),
                _ => break,
            }
        }
    };
    futures_lite::future::or(drain, glommio::timer::sleep(LINGER)).await;
}

/// Answers a request that cannot be read, and closes.
async fn refuse(wr: &mut (impl AsyncWrite + Unpin), status: &str) -> io::Result<()> {
    let msg = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    wr.write_all(msg.as_bytes()).await?;
    wr.flush().await
}

/// Reads more of the connection into `buf`; false at its end. Cancellation-safe: a read
/// dropped before it completes (a stream's request source races the stream's other wake-ups)
/// leaves `buf` as it was.
async fn fill(rd: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> io::Result<bool> {
    /// Cuts `buf` back to `keep` bytes when dropped: the room made for a read that did not
    /// complete is not taken for data.
    struct Room<'a> {
        buf: &'a mut BytesMut,
        keep: usize,
    }
    impl Drop for Room<'_> {
        fn drop(&mut self) {
            self.buf.truncate(self.keep);
        }
    }
    let len = buf.len();
    buf.resize(len + READ_BYTES, 0);
    let mut room = Room { buf, keep: len };
    let n = rd.read(&mut room.buf[len..]).await?;
    room.keep = len + n;
    Ok(n > 0)
}

/// Where the reading of a body is.
#[derive(Debug)]
enum Body {
    /// Bytes left of a body with a length, or of the current chunk.
    Left(usize),
    ChunkLeft(usize),
    /// Before a chunk's size line.
    ChunkSize,
    Done,
}

struct Http1In<'a, S> {
    rd: &'a mut ReadHalf<Prefixed<S>>,
    buf: &'a mut BytesMut,
    body: Body,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Http1In<'_, S> {
    /// A line of the chunked framing, without its CRLF (`buf` must hold it).
    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.advance(i + 2);
                return Ok(line);
            }
            if self.buf.len() > HTTP1_MAX_HEAD_BYTES {
                return Err(io::Error::other("a chunk line too long"));
            }
            if !fill(self.rd, self.buf).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Up to `left` bytes of body.
    async fn take(&mut self, left: usize) -> io::Result<Bytes> {
        if self.buf.is_empty() && !fill(self.rd, self.buf).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(self.buf.split_to(left.min(self.buf.len())).freeze())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> HttpIn for Http1In<'_, S> {
    async fn data(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            match self.body {
                Body::Done | Body::Left(0) => return Ok(None),
                Body::Left(left) => {
                    let data = self.take(left).await?;
                    self.body = Body::Left(left - data.len());
                    return Ok(Some(data));
                }
                Body::ChunkLeft(0) => {
                    if !self.line().await?.is_empty() {
                        return Err(io::Error::other("no CRLF after a chunk"));
                    }
                    self.body = Body::ChunkSize;
                }
                Body::ChunkLeft(left) => {
                    let data = self.take(left).await?;
                    self.body = Body::ChunkLeft(left - data.len());
                    return Ok(Some(data));
                }
                Body::ChunkSize => {
                    let line = self.line().await?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size, 16)
                        .map_err(|_| io::Error::other("a bad chunk size"))?;
                    if size == 0 {
                        // Trailers, if any, up to the blank line.
                        while !self.line().await?.is_empty() {}
                        self.body = Body::Done;
                    } else {
                        self.body = Body::ChunkLeft(size);
                    }
                }
            }
        }
    }

    async fn gone(&mut self) {
        // After the body, the client only closes (or sends a request we do not read now).
        loop {
            self.buf.clear();
            match fill(self.rd, self.buf).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            }
        }
    }
}

struct Http1Out<'a, S> {
    wr: &'a mut WriteHalf<Prefixed<S>>,
    close: bool,
    /// HTTP/1.0 has no chunked encoding: a streamed body ends with the connection.
    http10: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Http1Out<'_, S> {
    fn head(&self, status: u16, headers: &[(&str, &str)]) -> String {
        let mut h = format!("HTTP/1.1 {status} {}\r\n", gateway::status_text(status));
        for (k, v) in headers {
            h.push_str(k);
            h.push_str(": ");
            h.push_str(v);
            h.push_str("\r\n");
        }
        if self.close {
            h.push_str("Connection: close\r\n");
        }
        h
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wr.write_all(bytes).await?;
        self.wr.flush().await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> HttpOut for Http1Out<'_, S> {
    async fn whole(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        let mut out = self.head(status, headers);
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        self.write(&bytes).await
    }

    async fn start(&mut self, status: u16, headers: &[(&str, &str)]) -> io::Result<()> {
        let mut out = self.head(status, headers);
        if self.http10 {
            self.close = true;
        } else {
            out.push_str("Transfer-Encoding: chunked\r\n");
        }
        out.push_str("\r\n");
        self.write(out.as_bytes()).await
    }

    async fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.http10 {
            return self.write(data).await;
        }
        let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(b"\r\n");
        self.write(&bytes).await
    }

    async fn end(&mut self, trailers: &[(&str, &str)]) -> io::Result<()> {
        if self.http10 {
            return self.wr.close().await;
        }
        let mut out = String::from("0\r\n");
        for (k, v) in trailers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        self.write(out.as_bytes()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head(b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
            .unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/health?x=1");
        assert_eq!(h.content_length, 3);
        assert!(!h.close && !h.chunked && !h.http10);
        let h = parse_head(
            b"POST /v3/watch HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        assert!(h.chunked && h.expect_continue);
        assert!(parse_head(b"GET /health HTTP/1.0\r\n\r\n").unwrap().close);
        assert!(parse_head(b"GET /\r\n\r\n").is_none());
        assert!(parse_head(b"GET nope HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno-colon\r\n\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").is_none());
        assert!(looks_like_request(b"POST"));
        assert!(!looks_like_request(b"PRI "));
    }

    proptest::proptest! {
        /// Whatever arrives as a request head, parsing answers or refuses; never panics.
        #[test]
        fn any_head_parses_or_is_refused(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_head(&raw);
        }
    }
}
