//! etcdctl 3.4 (grpc-go) sends the endpoint as given, scheme included, as the HTTP/2
//! `:authority` of the calls it makes to one endpoint (`endpoint status`, `defrag`,
//! `snapshot save`, `move-leader` with `--endpoints=http://...` or `--cluster`):
//! `http://127.0.0.1:2379`. The `h2` crate refuses such a request as malformed
//! (PROTOCOL_ERROR), and its maintainers keep it so; etcd's Go server accepts it.
//!
//! This reader sits between the connection and `h2`. It decodes the first header block of
//! the connection (HPACK, with the `hpack-patched` crate: `hpack` with its decoding panics fixed) and, if its `:authority` is a URL, takes
//! the scheme and path off it; from then on every header block of the connection is decoded,
//! mended and encoded again (as literals without indexing, so `h2`'s HPACK table stays empty
//! and in step). A connection whose first request is well-formed, or that is not HTTP/2 as
//! expected, is passed through untouched at no cost after that first block.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

const PREFACE_BYTES: usize = 24;
const FRAME_HEADER_BYTES: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// HTTP/2's default SETTINGS_MAX_FRAME_SIZE (h2's, which this server keeps).
const MAX_FRAME_BYTES: usize = 16_384;
/// A header block larger than this is passed through untouched (h2 refuses it anyway).
const MAX_BLOCK_BYTES: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Until the first header block has been looked at.
    Inspect,
    /// Every byte as it comes.
    Pass,
    /// Every header block mended.
    Rewrite,
}

/// The byte-stream side: frames in, frames (mended) out. Kept apart from I/O to test it.
pub(crate) struct Mender {
    mode: Mode,
    preface_left: usize,
    /// Bytes read and not yet processed (an incomplete frame, or a header block waiting for
    /// its CONTINUATION frames).
    pending: Vec<u8>,
    decoder: hpack_patched::Decoder<'static>,
}

impl Default for Mender {
    fn default() -> Self {
        Mender {
            mode: Mode::Inspect,
            preface_left: PREFACE_BYTES,
            pending: Vec::new(),
            decoder: hpack_patched::Decoder::new(),
        }
    }
}

/// The `host:port` of an authority sent as a URL; None if it is well-formed already (or not
/// mendable: then h2 decides).
fn mended(authority: &[u8]) -> Option<Vec<u8>> {
    if http::uri::Authority::try_from(authority).is_ok() {
        return None;
    }
    let s = std::str::from_utf8(authority).ok()?;
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    http::uri::Authority::try_from(host).ok()?;
    Some(host.as_bytes().to_vec())
}

/// An HPACK integer with an `n`-bit prefix whose other bits are `first` (RFC 7541, 5.1).
fn put_int(out: &mut Vec<u8>, mut v: usize, n: u32, first: u8) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Headers as an HPACK block of literals without indexing (no Huffman): the receiver's
/// dynamic table is never touched.
fn encode(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        put_int(&mut out, name.len(), 7, 0);
        out.extend_from_slice(name);
        put_int(&mut out, value.len(), 7, 0);
        out.extend_from_slice(value);
    }
    out
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: &[u8]) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(stream);
}

impl Mender {
    /// Takes bytes read from the client; appends what h2 should read to `out`.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if self.mode == Mode::Pass && self.pending.is_empty() {
            out.extend_from_slice(input);
            return;
        }
        if self.preface_left > 0 {
            let n = self.preface_left.min(input.len());
            out.extend_from_slice(&input[..n]);
            self.preface_left -= n;
            input = &input[n..];
        }
        self.pending.extend_from_slice(input);
        while self.mode != Mode::Pass {
            match self.next_frames(out) {
                Some(used) => {
                    self.pending.drain(..used);
                }
                None => return,
            }
        }
        // Passing through now: what is left goes as it is.
        out.append(&mut self.pending);
    }

    /// Handles the next frame (a header block with its CONTINUATIONs) in `pending`; the
    /// bytes used, or None if more are needed.
    fn next_frames(&mut self, out: &mut Vec<u8>) -> Option<usize> {
        let p = &self.pending;
        if p.len() < FRAME_HEADER_BYTES {
            return None;
        }
        let len = u32::from_be_bytes([0, p[0], p[1], p[2]]) as usize;
        let (kind, flags) = (p[3], p[4]);
        if kind != HEADERS || len > MAX_FRAME_BYTES {
            if kind == HEADERS {
                // Not a frame this server accepts: h2 answers it.
                self.mode = Mode::Pass;
                return Some(0);
            }
            if p.len() < FRAME_HEADER_BYTES + len {
                return None;
            }
            out.extend_from_slice(&p[..FRAME_HEADER_BYTES + len]);
            return Some(FRAME_HEADER_BYTES + len);
        }
        // A header block: HEADERS, then CONTINUATIONs until END_HEADERS.
        let stream = p[5..9].to_vec();
        let mut at = FRAME_HEADER_BYTES + len;
        if p.len() < at {
            return None;
        }
        let payload = &p[FRAME_HEADER_BYTES..at];
        let mut skip = 0;
        let mut pad = 0;
        if flags & PADDED != 0 {
            pad = *payload.first()? as usize;
            skip = 1;
        }
        let priority = if flags & PRIORITY != 0 {
            let pr = payload.get(skip..skip + 5)?.to_vec();
            skip += 5;
            Some(pr)
        } else {
            None
        };
        let Some(fragment) = payload
            .len()
            .checked_sub(pad)
            .and_then(|e| payload.get(skip..e))
        else {
            self.mode = Mode::Pass;
            return Some(0);
        };
        let mut block = fragment.to_vec();
        let mut last_flags = flags;
        while last_flags & END_HEADERS == 0 {
            if p.len() < at + FRAME_HEADER_BYTES {
                return None;
            }
            let h = &p[at..at + FRAME_HEADER_BYTES];
            let clen = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            if h[3] != CONTINUATION
                || clen > MAX_FRAME_BYTES
                || block.len() + clen > MAX_BLOCK_BYTES
            {
                self.mode = Mode::Pass;
                return Some(0);
            }
            if p.len() < at + FRAME_HEADER_BYTES + clen {
                return None;
            }
            block.extend_from_slice(&p[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + clen]);
            last_flags = h[4];
            at += FRAME_HEADER_BYTES + clen;
        }
        // (hpack-patched returns errors for malformed input; a panic would still only end
        // the mending of this connection.)
        let decoded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.decoder.decode(&block)));
        let Ok(Ok(mut headers)) = decoded else {
            // Undecodable: h2 says so.
            self.mode = Mode::Pass;
            return Some(0);
        };
        let mut changed = false;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" {
                if let Some(m) = mended(value) {
                    *value = m;
                    changed = true;
                }
            }
        }
        if self.mode == Mode::Inspect && !changed {
            // Well-formed: the original bytes go, and so does everything after them.
            self.mode = Mode::Pass;
            return Some(0);
        }
        if changed {
            tracing::debug!("HTTP/2 :authority sent as a URL: mending this connection's headers");
        }
        self.mode = Mode::Rewrite;
        let encoded = encode(&headers);
        let mut first = true;
        let mut rest: &[u8] = &encoded;
        loop {
            let room = if first {
                MAX_FRAME_BYTES - priority.as_ref().map_or(0, Vec::len)
            } else {
                MAX_FRAME_BYTES
            };
            let n = rest.len().min(room);
            let end = if n == rest.len() { END_HEADERS } else { 0 };
            if first {
                let pr = priority.as_deref().unwrap_or(&[]);
                let f = (flags & (END_STREAM | PRIORITY)) | end;
                frame_header(out, n + pr.len(), HEADERS, f, &stream);
                out.extend_from_slice(pr);
            } else {
                frame_header(out, n, CONTINUATION, end, &stream);
            }
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            first = false;
            if end != 0 {
                break;
            }
        }
        Some(at)
    }
}

/// A connection whose header blocks are mended on the way to h2 (the writes pass through).
pub(crate) struct Mended<S> {
    inner: S,
    mender: Mender,
    /// Mended bytes not yet read by h2.
    ready: Vec<u8>,
    at: usize,
    scratch: Vec<u8>,
}

impl<S> Mended<S> {
    pub(crate) fn new(inner: S) -> Mended<S> {
        Mended {
            inner,
            mender: Mender::default(),
            ready: Vec::new(),
            at: 0,
            scratch: Vec::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Mended<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if this.at < this.ready.len() {
                let n = (this.ready.len() - this.at).min(buf.len());
                buf[..n].copy_from_slice(&this.ready[this.at..this.at + n]);
                this.at += n;
                if this.at == this.ready.len() {
                    this.ready.clear();
                    this.at = 0;
                }
                return Poll::Ready(Ok(n));
            }
            if this.mender.mode == Mode::Pass && this.mender.pending.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            this.scratch.resize(buf.len().max(16 << 10), 0);
            let n = match Pin::new(&mut this.inner).poll_read(cx, &mut this.scratch) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            if n == 0 {
                // The end: whatever was held back goes as it is (h2 sees a cut frame).
                this.ready.append(&mut this.mender.pending);
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(0));
                }
                continue;
            }
            let input = std::mem::take(&mut this.scratch);
            this.mender.feed(&input[..n], &mut this.ready);
            this.scratch = input;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Mended<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn headers_frame(block: &[u8], flags: u8, stream: u32) -> Vec<u8> {
        let mut f = Vec::new();
        frame_header(&mut f, block.len(), HEADERS, flags, &stream.to_be_bytes());
        f.extend_from_slice(block);
        f
    }

    fn request(authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Maintenance/Status"),
            (":authority", authority),
            ("content-type", "application/grpc"),
        ]
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    /// The header blocks of the HEADERS (+ CONTINUATION) frames in `bytes` after the preface.
    fn blocks(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut at = PREFACE_BYTES;
        while at + FRAME_HEADER_BYTES <= bytes.len() {
            let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
            let kind = bytes[at + 3];
            let body = &bytes[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + len];
            match kind {
                HEADERS => out.push(body.to_vec()),
                CONTINUATION => out.last_mut().unwrap().extend_from_slice(body),
                _ => {}
            }
            at += FRAME_HEADER_BYTES + len;
        }
        out
    }

    #[test]
    fn a_url_as_authority_is_mended_on_every_request_of_the_connection() {
        // As grpc-go sends it: the second request refers to the first's dynamic table entries.
        let mut enc = hpack_patched::Encoder::new();
        let first = enc.encode(
            request("http://127.0.0.1:2379")
                .iter()
                .map(|(k, v)| (&k[..], &v[..])),
        );
        let second = enc.encode(
            request("http://127.0.0.1:2379")
                .iter()
                .map(|(k, v)| (&k[..], &v[..])),
        );
        let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&settings);
        input.extend(headers_frame(&first, END_HEADERS, 1));
        input.extend(headers_frame(&second, END_HEADERS | END_STREAM, 3));
        // Fed one byte at a time, and at once: the same output.
        let mut m = Mender::default();
        let mut out = Vec::new();
        for b in &input {
            m.feed(std::slice::from_ref(b), &mut out);
        }
        let mut all = Vec::new();
        Mender::default().feed(&input, &mut all);
        assert_eq!(out, all);
        assert_eq!(&out[..PREFACE_BYTES + 9], &input[..PREFACE_BYTES + 9]);
        let mut dec = hpack_patched::Decoder::new();
        for block in blocks(&out) {
            let got = dec.decode(&block).unwrap();
            assert_eq!(got, request("127.0.0.1:2379"));
        }
        assert_eq!(blocks(&out).len(), 2);
        // The END_STREAM flag of the second request stays.
        let second_at = PREFACE_BYTES + 9 + 9 + blocks(&out)[0].len();
        assert_eq!(out[second_at + 4], END_HEADERS | END_STREAM);
    }

    #[test]
    fn a_well_formed_connection_passes_through_untouched() {
        let mut enc = hpack_patched::Encoder::new();
        let block = enc.encode(
            request("127.0.0.1:2379")
                .iter()
                .map(|(k, v)| (&k[..], &v[..])),
        );
        let mut input = PREFACE.to_vec();
        // Padded and with a priority: the original bytes still go as they are.
        let mut payload = vec![2u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0]);
        input.extend(headers_frame(&payload, END_HEADERS | PADDED | PRIORITY, 1));
        input.extend_from_slice(b"then anything at all");
        let mut out = Vec::new();
        let mut m = Mender::default();
        m.feed(&input[..40], &mut out);
        m.feed(&input[40..], &mut out);
        assert_eq!(out, input);
        assert_eq!(m.mode, Mode::Pass);
    }

    #[test]
    fn padding_priority_and_continuations_are_handled_when_mending() {
        let block = encode(&request("https://10.0.0.1:2379/"));
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(&payload, PADDED | PRIORITY | END_STREAM, 5));
        let mut cont = Vec::new();
        frame_header(
            &mut cont,
            b.len(),
            CONTINUATION,
            END_HEADERS,
            &5u32.to_be_bytes(),
        );
        cont.extend_from_slice(b);
        input.extend(cont);
        let mut out = Vec::new();
        Mender::default().feed(&input, &mut out);
        let hdr = &out[PREFACE_BYTES..PREFACE_BYTES + 9];
        assert_eq!(hdr[4], PRIORITY | END_STREAM | END_HEADERS);
        let body = &out[PREFACE_BYTES + 9..];
        assert_eq!(&body[..5], &[0, 0, 0, 0, 16]);
        let got = hpack_patched::Decoder::new().decode(&body[5..]).unwrap();
        assert_eq!(got, request("10.0.0.1:2379"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 7u64;
        for round in 0..2_000 {
            let mut bytes = PREFACE.to_vec();
            let n = (round % 200) + 1;
            for _ in 0..n {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            // A HEADERS frame header in front of the garbage, now and then.
            if round % 3 == 0 {
                let len = n.min(60) as u32;
                let mut f = Vec::new();
                frame_header(
                    &mut f,
                    len as usize,
                    HEADERS,
                    (seed >> 8) as u8,
                    &[0, 0, 0, 1],
                );
                bytes.splice(PREFACE_BYTES..PREFACE_BYTES, f);
            }
            let mut out = Vec::new();
            let mut m = Mender::default();
            for chunk in bytes.chunks(1 + round % 17) {
                m.feed(chunk, &mut out);
            }
        }
    }

    #[test]
    fn the_hpack_decoder_never_panics_on_garbage() {
        let mut seed = 11u64;
        let mut dec = hpack_patched::Decoder::new();
        for round in 0..300_000usize {
            let block: Vec<u8> = (0..1 + round % 64)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if dec.decode(&block).is_err() {
                dec = hpack_patched::Decoder::new();
            }
        }
    }

    #[test]
    fn authorities() {
        assert_eq!(mended(b"127.0.0.1:2379"), None);
        assert_eq!(mended(b"http://127.0.0.1:2379").unwrap(), b"127.0.0.1:2379");
        assert_eq!(mended(b"https://h:1/x").unwrap(), b"h:1");
        assert_eq!(mended(b"\xff"), None);
    }
}
