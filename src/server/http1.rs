//! A small HTTP/1.1 server on the client port: `/health` (and `/livez`, `/readyz`) and
//! `/version`, answered as etcd answers them. The JSON gateway (its own issue) grows here.

use std::io;
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::conn::Prefixed;
use super::ShardCtx;
use crate::kv::ETCD_API_VERSION;
use crate::limits::HTTP1_MAX_HEAD_BYTES;

const METHODS: &[&[u8]] = &[
    b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC",
];

/// True when the first bytes of a connection are an HTTP/1.x method.
pub(crate) fn looks_like_request(head: &[u8]) -> bool {
    METHODS.iter().any(|m| head.starts_with(m))
}

/// One parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub method: String,
    pub path: String,
    pub content_length: usize,
    pub close: bool,
}

/// Parses a request head (up to and including the blank line).
pub(crate) fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    if first.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut head = Head {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or("").to_string(),
        content_length: 0,
        close: version == "HTTP/1.0",
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
    Some(head)
}

fn answer(head: &Head) -> (u16, &'static str, String) {
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/health" | "/livez" | "/readyz") => {
            (200, "OK", r#"{"health":"true","reason":""}"#.to_string())
        }
        ("GET", "/version") => (
            200,
            "OK",
            format!(
                r#"{{"etcdserver":"{ETCD_API_VERSION}","etcdcluster":"3.5.0","ferrocd":"{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
        ),
        _ => (404, "Not Found", "404 page not found\n".to_string()),
    }
}

pub(crate) async fn serve(mut conn: Prefixed<TcpStream>, ctx: Rc<ShardCtx>) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        // Read until the end of the head.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > HTTP1_MAX_HEAD_BYTES {
                let msg = "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
                conn.inner.write_all(msg.as_bytes()).await?;
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let Some(head) = parse_head(&buf[..end]) else {
            let msg = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
            conn.inner.write_all(msg.as_bytes()).await?;
            return Ok(());
        };
        buf.drain(..end);
        if head.content_length > ctx.max_request_bytes {
            let msg =
                "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
            conn.inner.write_all(msg.as_bytes()).await?;
            return Ok(());
        }
        // The body is not used yet: read and drop it.
        while buf.len() < head.content_length {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..head.content_length);
        let (code, reason, body) = answer(&head);
        let content_type = if code == 200 {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        let out = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if head.close { "Connection: close\r\n" } else { "" }
        );
        conn.inner.write_all(out.as_bytes()).await?;
        if head.close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head(b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
            .unwrap();
        assert_eq!(
            h,
            Head {
                method: "GET".into(),
                path: "/health".into(),
                content_length: 3,
                close: false
            }
        );
        assert!(parse_head(b"GET /health HTTP/1.0\r\n\r\n").unwrap().close);
        assert!(parse_head(b"GET /\r\n\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno-colon\r\n\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_none());
        assert!(looks_like_request(b"POST"));
        assert!(!looks_like_request(b"PRI "));
        assert_eq!(
            answer(&parse_head(b"GET /version HTTP/1.1\r\n\r\n").unwrap()).0,
            200
        );
        assert_eq!(
            answer(&parse_head(b"GET /nope HTTP/1.1\r\n\r\n").unwrap()).0,
            404
        );
    }
}
