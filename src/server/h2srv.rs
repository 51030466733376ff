//! The server side of HTTP/2 (RFC 9113), as the client port needs it: gRPC calls and the JSON
//! gateway over HTTP/2. It replaces the `h2` crate on the server (ferroctl's client still uses
//! `h2`); the handles mirror the part of `h2`'s API the server used ([`RecvStream`],
//! [`SendResponse`], [`SendStream`]).
//!
//! Why: at put c=100 the `h2` connection task was about a quarter of the owner shard's
//! samples in user space, and the calls' own use of it (three locked operations per unary
//! response, each waking the connection task) much of the rest of a call's task
//! (tuning/results/2026-11-28-own-http2.md). Here one executor owns a connection: the
//! connection task and the call tasks share its state through an `Rc<RefCell<_>>`, a unary
//! answer is three frames appended to the connection's output in one borrow, and the
//! connection task writes what every call of a turn queued with one `write`.
//!
//! What it does: the preface and SETTINGS exchange; HPACK decoding of request headers
//! (`server/hpack.rs`; its dynamic table bounded by the 4,096 bytes HTTP/2 allows by
//! default) and encoding of response headers as literals that never touch the client's
//! table; flow control both ways (the client's windows on what we send, ours on what it
//! sends, given back as the call reads); stream states, RST_STREAM both ways, PING, GOAWAY;
//! at most [`limits::MAX_CONCURRENT_STREAMS`] streams per connection, counted until their
//! call has ended (a client resetting streams as fast as it opens them cannot pile up
//! calls); header blocks bounded. It does not push, and it ignores priorities (as RFC 9113
//! lets a server). A `:authority` sent as a URL (etcdctl 3.4's, see below) is not looked at.
//!
//! Memory: what the client sends is bounded by the windows we grant (a stream's and the
//! connection's); what we send waits in the connection's output, and the connection stops
//! reading frames while that output is over [`OUT_HIGH_WATER`] (a client that sends PINGs or
//! requests without reading the answers is held back by TCP); data over a client's windows
//! waits in its stream's queue, which senders fill only as far as [`SendStream::poll_capacity`]
//! allows.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};

use crate::limits::{
    H2_CONN_WINDOW_BYTES, H2_MAX_HEADER_LIST_BYTES, H2_STREAM_WINDOW_BYTES, MAX_CONCURRENT_STREAMS,
};

/// The client connection preface (also what `conn` sniffs to tell HTTP/2 from HTTP/1.1).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

const FRAME_HEAD: usize = 9;
/// The largest frame we accept: HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which we keep.
const OUR_MAX_FRAME: usize = 16_384;
const DEFAULT_WINDOW: i64 = 65_535;
const MAX_WINDOW: i64 = (1 << 31) - 1;
/// HPACK's dynamic table as HTTP/2 sizes it by default (we never announce another size).
const HPACK_TABLE_BYTES: usize = 4_096;
/// A header block (HEADERS and its CONTINUATIONs, compressed) larger than this ends the
/// connection: no honest client sends one (the decoded list is bounded far lower).
const MAX_HEADER_BLOCK: usize = 64 << 10;
/// Past this much output not yet written, the connection reads no more frames and streams'
/// data waits in their queues.
pub(crate) const OUT_HIGH_WATER: usize = 1 << 20;
/// DATA payloads under this are gathered into one buffer per stream.
const SMALL_DATA: usize = 1024;
/// The read buffer: a frame (at most 16 KiB and its head) always fits.
const READ_BUF: usize = 64 << 10;

/// An HTTP/2 error code (RFC 9113, section 7).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Reason(u32);

impl Reason {
    pub const NO_ERROR: Reason = Reason(0x0);
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    pub const CANCEL: Reason = Reason(0x8);
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            0x0 => "NO_ERROR",
            0x1 => "PROTOCOL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x5 => "STREAM_CLOSED",
            0x6 => "FRAME_SIZE_ERROR",
            0x7 => "REFUSED_STREAM",
            0x8 => "CANCEL",
            0x9 => "COMPRESSION_ERROR",
            0xb => "ENHANCE_YOUR_CALM",
            n => return write!(f, "Reason({n:#x})"),
        };
        f.write_str(name)
    }
}

/// Why a stream or the connection can no longer be used.
#[derive(Debug)]
pub enum Error {
    /// The stream was reset (by the client, or by us with this reason).
    Reset(Reason),
    /// The connection is gone (closed by the client, an I/O error, or a protocol error).
    Closed,
    /// The handle was used out of order (a response started twice, data before headers).
    Misuse(&'static str),
}

impl From<Reason> for Error {
    fn from(r: Reason) -> Error {
        Error::Reset(r)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Reset(r) => write!(f, "stream reset: {r:?}"),
            Error::Closed => f.write_str("connection closed"),
            Error::Misuse(what) => write!(f, "HTTP/2 stream misused: {what}"),
        }
    }
}

impl std::error::Error for Error {}

/// A connection error: GOAWAY with this reason, then close.
#[derive(Debug)]
struct ConnError(Reason, &'static str);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SendState {
    /// No headers sent yet.
    Idle,
    Open,
    /// END_STREAM queued (it may still wait behind queued data).
    Ended,
}

enum Pending {
    Data(Bytes, bool),
    /// An encoded header block that ends the stream.
    Trailers(Bytes),
}

struct Stream {
    /// Live handles (RecvStream, SendResponse, SendStream).
    refs: u8,
    recv_dropped: bool,
    recv: VecDeque<Bytes>,
    /// Small DATA payloads, gathered after `recv` (so that a client sending one-byte frames
    /// costs a byte each, not an allocation each).
    recv_tail: BytesMut,
    /// END_STREAM received (or the stream reset).
    recv_closed: bool,
    recv_waker: Option<Waker>,
    /// What the client may still send on this stream.
    recv_window: i64,
    /// Consumed by the call and not yet given back with a WINDOW_UPDATE.
    recv_unacked: usize,
    send: SendState,
    /// The client's window for what we send on this stream (may go below zero on a
    /// SETTINGS change).
    send_window: i64,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    /// In the connection's list of streams waiting for window or room.
    waiting: bool,
    /// Everything, END_STREAM included, went to the output.
    sent_end: bool,
    reset: Option<Reason>,
    /// A call waiting for capacity, or for a reset.
    send_waker: Option<Waker>,
}

impl Stream {
    fn new(recv_closed: bool, send_window: i64) -> Stream {
        Stream {
            refs: 2,
            recv_dropped: false,
            recv: VecDeque::new(),
            recv_tail: BytesMut::new(),
            recv_closed,
            recv_waker: None,
            recv_window: H2_STREAM_WINDOW_BYTES as i64,
            recv_unacked: 0,
            send: SendState::Idle,
            send_window,
            pending: VecDeque::new(),
            pending_bytes: 0,
            waiting: false,
            sent_end: false,
            reset: None,
            send_waker: None,
        }
    }

    /// Bytes received and not read.
    fn unread(&self) -> usize {
        self.recv.iter().map(Bytes::len).sum::<usize>() + self.recv_tail.len()
    }

    /// Drops what was received and not read; returns how much it was.
    fn take_unread(&mut self) -> usize {
        let n = self.unread();
        self.recv.clear();
        self.recv_tail.clear();
        n
    }

    fn wake_all(&mut self) {
        if let Some(w) = self.recv_waker.take() {
            w.wake();
        }
        if let Some(w) = self.send_waker.take() {
            w.wake();
        }
    }
}

/// A header block being received (a HEADERS frame without END_HEADERS, then CONTINUATIONs).
struct Block {
    id: u32,
    end_stream: bool,
    buf: Vec<u8>,
}

/// One request, as the accept loop hands it out.
pub(crate) type Accepted = (Request<RecvStream>, SendResponse);

/// The state a connection's task and its calls share.
struct Shared {
    out: BytesMut,
    conn_waker: Option<Waker>,
    streams: HashMap<u32, Stream>,
    /// Streams with data or trailers waiting for a window or for room in the output.
    waiting: VecDeque<u32>,
    send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    recv_window: i64,
    recv_unacked: usize,
    last_stream_id: u32,
    /// Our SETTINGS went out; the client's first frame must be its SETTINGS.
    got_settings: bool,
    /// The client sent GOAWAY: no new streams; close once the last ends.
    going_away: bool,
    /// The connection is over: every handle's operation fails.
    dead: bool,
    /// A call waits for capacity that the connection's window holds back (not its stream's):
    /// woken by a WINDOW_UPDATE on the connection.
    blocked_on_window: bool,
    /// A call waits for room in the output: woken once the output is under its mark.
    blocked_on_room: bool,
    block: Option<Block>,
    decoder: super::hpack::Decoder,
    accepted: VecDeque<Accepted>,
    /// Scratch for encoding header blocks.
    hbuf: Vec<u8>,
    /// The last request's URI (see `Head::request`).
    last_uri: Option<Uri>,
    /// This state's own cell, for the handles of the streams it opens.
    me: Weak<RefCell<Shared>>,
}

fn frame_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, id: u32) {
    out.reserve(FRAME_HEAD + len);
    out.put_slice(&(len as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(id);
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

/// A header as a literal without indexing and a literal name (no Huffman): the client's
/// dynamic table is never touched, so we keep no encoder state.
fn put_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    put_int(out, name.len(), 7, 0);
    out.extend_from_slice(name);
    put_int(out, value.len(), 7, 0);
    out.extend_from_slice(value);
}

fn put_status(out: &mut Vec<u8>, status: u16) {
    // The static table's :status entries (RFC 7541, appendix A).
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if index != 0 {
        out.push(0x80 | index);
    } else {
        // Literal without indexing, name :status (index 8).
        put_int(out, 8, 4, 0x00);
        let s = status.to_string();
        put_int(out, s.len(), 7, 0);
        out.extend_from_slice(s.as_bytes());
    }
}

fn encode_headers(out: &mut Vec<u8>, status: Option<u16>, headers: &HeaderMap) {
    out.clear();
    if let Some(s) = status {
        put_status(out, s);
    }
    for (name, value) in headers {
        put_literal(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// The response headers that start a gRPC answer: `:status 200`, `content-type:
/// application/grpc` (name from the static table, index 31).
const GRPC_OK_BLOCK: &[u8] = b"\x88\x0f\x10\x10application/grpc";
/// The trailers of a successful gRPC call: `grpc-status: 0`.
const GRPC_STATUS_OK_BLOCK: &[u8] = b"\x00\x0bgrpc-status\x010";

impl Shared {
    fn new(me: Weak<RefCell<Shared>>) -> Shared {
        let decoder = super::hpack::Decoder::new(HPACK_TABLE_BYTES);
        let mut sh = Shared {
            out: BytesMut::with_capacity(16 << 10),
            conn_waker: None,
            streams: HashMap::new(),
            waiting: VecDeque::new(),
            send_window: DEFAULT_WINDOW,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: OUR_MAX_FRAME,
            recv_window: H2_CONN_WINDOW_BYTES as i64,
            recv_unacked: 0,
            last_stream_id: 0,
            got_settings: false,
            going_away: false,
            dead: false,
            blocked_on_window: false,
            blocked_on_room: false,
            block: None,
            decoder,
            accepted: VecDeque::new(),
            hbuf: Vec::new(),
            last_uri: None,
            me,
        };
        // Our SETTINGS, then the connection's window raised from HTTP/2's 65,535 bytes.
        let settings: [(u16, u32); 3] = [
            (0x3, MAX_CONCURRENT_STREAMS),
            (0x4, H2_STREAM_WINDOW_BYTES),
            (0x6, H2_MAX_HEADER_LIST_BYTES),
        ];
        frame_head(&mut sh.out, 6 * settings.len(), SETTINGS, 0, 0);
        for (id, v) in settings {
            sh.out.put_u16(id);
            sh.out.put_u32(v);
        }
        sh.window_update(0, H2_CONN_WINDOW_BYTES as usize - DEFAULT_WINDOW as usize);
        sh
    }

    /// Wakes the connection's task when it has something to do for the calls: output to
    /// write, or a connection the client is leaving whose last stream ended. (Not for a
    /// call that only gave back window too small to announce: at one chunk per unary call,
    /// that woke the task for nothing once per call.)
    fn wake_conn(&mut self) {
        if self.out.is_empty() && !(self.going_away && self.streams.is_empty()) {
            return;
        }
        if let Some(w) = self.conn_waker.take() {
            w.wake();
        }
    }

    /// Wakes the calls waiting for capacity (each checks again what it waits for).
    fn wake_senders(&mut self) {
        for s in self.streams.values_mut() {
            if let Some(w) = s.send_waker.take() {
                w.wake();
            }
        }
    }

    fn window_update(&mut self, id: u32, n: usize) {
        frame_head(&mut self.out, 4, WINDOW_UPDATE, 0, id);
        self.out.put_u32(n as u32);
    }

    /// A stream error of ours: the stream is reset (RST_STREAM sent), what it queued both
    /// ways dropped, its calls woken, and it is forgotten once no handle holds it.
    fn stream_error(&mut self, id: u32, reason: Reason) {
        let Some(s) = self.streams.get_mut(&id) else {
            self.rst(id, reason);
            return;
        };
        if s.reset.is_some() {
            return;
        }
        s.reset = Some(reason);
        s.recv_closed = true;
        s.pending.clear();
        s.pending_bytes = 0;
        let unread = s.take_unread();
        s.wake_all();
        self.rst(id, reason);
        self.give_back_conn(unread);
        self.maybe_finish(id);
    }

    fn rst(&mut self, id: u32, reason: Reason) {
        frame_head(&mut self.out, 4, RST_STREAM, 0, id);
        self.out.put_u32(reason.0);
    }

    /// A header block as HEADERS and, past the client's frame size, CONTINUATION frames.
    fn put_block(&mut self, id: u32, block: &[u8], end_stream: bool) {
        put_block_into(&mut self.out, self.peer_max_frame, id, block, end_stream);
    }

    /// The stream, if a handle may still act on it: Err when it or the connection is gone.
    fn usable(&mut self, id: u32) -> Result<&mut Stream, Error> {
        if self.dead {
            return Err(Error::Closed);
        }
        let s = self.streams.get_mut(&id).ok_or(Error::Closed)?;
        match s.reset {
            Some(r) => Err(Error::Reset(r)),
            None => Ok(s),
        }
    }

    fn send_headers(&mut self, id: u32, block: &[u8], end: bool) -> Result<(), Error> {
        let s = self.usable(id)?;
        if s.send != SendState::Idle {
            return Err(Error::Misuse("response headers sent twice"));
        }
        s.send = if end {
            SendState::Ended
        } else {
            SendState::Open
        };
        if end {
            s.sent_end = true;
        }
        self.put_block(id, block, end);
        if end {
            self.maybe_finish(id);
        }
        self.wake_conn();
        Ok(())
    }

    fn queue(&mut self, id: u32, item: Pending, end: bool) -> Result<(), Error> {
        let s = self.usable(id)?;
        if s.send != SendState::Open {
            return Err(Error::Misuse("data or trailers outside an open response"));
        }
        if let Pending::Data(d, _) = &item {
            s.pending_bytes += d.len();
        }
        s.pending.push_back(item);
        if end {
            s.send = SendState::Ended;
        }
        self.drain(id);
        self.wake_conn();
        Ok(())
    }

    /// Moves a stream's queued data and trailers to the output, as far as the windows and the
    /// output's room allow; the stream waits in `waiting` for the rest.
    fn drain(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let mut moved = false;
        loop {
            if s.reset.is_some() {
                break;
            }
            let Some(front) = s.pending.front_mut() else {
                break;
            };
            if self.out.len() >= OUT_HIGH_WATER {
                break;
            }
            match front {
                Pending::Trailers(block) => {
                    let block = std::mem::take(block);
                    s.pending.pop_front();
                    s.sent_end = true;
                    moved = true;
                    // put_block borrows self whole: end the stream's borrow first.
                    let max = self.peer_max_frame;
                    put_block_into(&mut self.out, max, id, &block, true);
                    break;
                }
                Pending::Data(data, end) => {
                    let end = *end;
                    if data.is_empty() {
                        if end {
                            frame_head(&mut self.out, 0, DATA, END_STREAM, id);
                            s.sent_end = true;
                        }
                        s.pending.pop_front();
                        moved = true;
                        continue;
                    }
                    let room = s.send_window.min(self.send_window);
                    if room <= 0 {
                        break;
                    }
                    let n = data.len().min(room as usize).min(self.peer_max_frame);
                    let last = n == data.len();
                    let flags = if last && end { END_STREAM } else { 0 };
                    frame_head(&mut self.out, n, DATA, flags, id);
                    self.out.put_slice(&data[..n]);
                    s.send_window -= n as i64;
                    self.send_window -= n as i64;
                    s.pending_bytes -= n;
                    moved = true;
                    if last {
                        if end {
                            s.sent_end = true;
                        }
                        s.pending.pop_front();
                    } else {
                        bytes::Buf::advance(data, n);
                    }
                }
            }
        }
        if moved {
            if let Some(w) = s.send_waker.take() {
                w.wake();
            }
        }
        if !s.pending.is_empty() && s.reset.is_none() && !s.waiting {
            s.waiting = true;
            self.waiting.push_back(id);
        }
        if s.sent_end || s.reset.is_some() {
            self.maybe_finish(id);
        }
    }

    /// Gives every waiting stream a turn (after a window grew or output was written).
    fn drain_waiting(&mut self) {
        for _ in 0..self.waiting.len() {
            if self.out.len() >= OUT_HIGH_WATER {
                break;
            }
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            if let Some(s) = self.streams.get_mut(&id) {
                s.waiting = false;
            }
            self.drain(id);
        }
    }

    /// Removes a stream once no handle holds it: resets it first if our side did not end.
    fn maybe_finish(&mut self, id: u32) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if s.refs > 0 {
            return;
        }
        if s.send == SendState::Ended && !s.sent_end && s.reset.is_none() && !self.dead {
            // The call ended its response; what it queued still waits for the client's
            // windows.
            return;
        }
        let s = self.streams.remove(&id).expect("present");
        if s.reset.is_none() && !self.dead {
            if !s.sent_end {
                self.rst(id, Reason::CANCEL);
            } else if !s.recv_closed {
                // Answered before the client finished sending (RFC 9113, 8.1).
                self.rst(id, Reason::NO_ERROR);
            }
        }
        // What the call did not read goes back to the connection's window (what it read went
        // back as it released it).
        let unread = s.unread();
        self.give_back_conn(unread);
        self.wake_conn();
    }

    fn give_back_conn(&mut self, n: usize) {
        self.recv_unacked += n;
        if self.recv_unacked >= H2_CONN_WINDOW_BYTES as usize / 2 && !self.dead {
            let n = std::mem::take(&mut self.recv_unacked);
            self.recv_window += n as i64;
            self.window_update(0, n);
        }
    }

    fn release(&mut self, id: u32, n: usize) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.recv_unacked += n;
            let stream_update = !s.recv_closed
                && s.reset.is_none()
                && s.recv_unacked >= H2_STREAM_WINDOW_BYTES as usize / 2;
            let give = if stream_update {
                let k = std::mem::take(&mut s.recv_unacked);
                s.recv_window += k as i64;
                Some(k)
            } else {
                None
            };
            if let Some(k) = give {
                if !self.dead {
                    self.window_update(id, k);
                }
            }
        }
        self.give_back_conn(n);
        self.wake_conn();
    }

    fn drop_ref(&mut self, id: u32, recv: bool) {
        let mut unread = 0;
        if let Some(s) = self.streams.get_mut(&id) {
            s.refs = s.refs.saturating_sub(1);
            if recv {
                s.recv_dropped = true;
                unread = s.take_unread();
            }
        }
        self.give_back_conn(unread);
        self.maybe_finish(id);
        self.wake_conn();
    }

    /// The connection is over: every call's next operation fails. Returns the requests not
    /// handed out, to be dropped once this state is no longer borrowed (their handles borrow
    /// it when dropped).
    #[must_use]
    fn kill(&mut self) -> VecDeque<Accepted> {
        self.dead = true;
        for s in self.streams.values_mut() {
            if s.reset.is_none() {
                s.reset = Some(Reason::CANCEL);
            }
            s.recv_closed = true;
            s.wake_all();
        }
        std::mem::take(&mut self.accepted)
    }

    // ---- frames in ----

    /// Handles every whole frame at the front of `buf`; returns how many bytes it used.
    fn recv_frames(&mut self, buf: &[u8]) -> Result<usize, ConnError> {
        let mut at = 0;
        while buf.len() - at >= FRAME_HEAD {
            let h = &buf[at..at + FRAME_HEAD];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            if len > OUR_MAX_FRAME {
                return Err(ConnError(Reason::FRAME_SIZE_ERROR, "frame too large"));
            }
            if buf.len() - at < FRAME_HEAD + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let payload = &buf[at + FRAME_HEAD..at + FRAME_HEAD + len];
            at += FRAME_HEAD + len;
            self.recv_frame(kind, flags, id, payload)?;
            if self.out.len() >= OUT_HIGH_WATER {
                break;
            }
        }
        Ok(at)
    }

    fn recv_frame(&mut self, kind: u8, flags: u8, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if !self.got_settings {
            if kind != SETTINGS || flags & ACK != 0 {
                return Err(ConnError(
                    Reason::PROTOCOL_ERROR,
                    "the client's first frame must be SETTINGS",
                ));
            }
            self.got_settings = true;
        }
        if let Some(b) = &self.block {
            if kind != CONTINUATION || id != b.id {
                return Err(ConnError(
                    Reason::PROTOCOL_ERROR,
                    "a header block was interrupted",
                ));
            }
        }
        match kind {
            DATA => self.recv_data(flags, id, p),
            HEADERS => self.recv_headers(flags, id, p),
            CONTINUATION => {
                let Some(mut b) = self.block.take() else {
                    return Err(ConnError(
                        Reason::PROTOCOL_ERROR,
                        "CONTINUATION without HEADERS",
                    ));
                };
                if b.buf.len() + p.len() > MAX_HEADER_BLOCK {
                    return Err(ConnError(
                        Reason::ENHANCE_YOUR_CALM,
                        "header block too large",
                    ));
                }
                b.buf.extend_from_slice(p);
                if flags & END_HEADERS != 0 {
                    self.headers_done(b.id, b.end_stream, &b.buf)
                } else {
                    self.block = Some(b);
                    Ok(())
                }
            }
            PRIORITY => {
                if id == 0 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "PRIORITY on stream 0"));
                }
                if p.len() != 5 {
                    if id > self.last_stream_id {
                        // No RST_STREAM on an idle stream (RFC 9113, 6.4).
                        return Err(ConnError(
                            Reason::FRAME_SIZE_ERROR,
                            "PRIORITY of a wrong size",
                        ));
                    }
                    if self.streams.contains_key(&id) {
                        self.stream_error(id, Reason::FRAME_SIZE_ERROR);
                    }
                }
                Ok(())
            }
            RST_STREAM => self.recv_rst(id, p),
            SETTINGS => self.recv_settings(flags, id, p),
            PUSH_PROMISE => Err(ConnError(Reason::PROTOCOL_ERROR, "a client cannot push")),
            PING => {
                if id != 0 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "PING on a stream"));
                }
                if p.len() != 8 {
                    return Err(ConnError(Reason::FRAME_SIZE_ERROR, "PING of a wrong size"));
                }
                if flags & ACK == 0 {
                    frame_head(&mut self.out, 8, PING, ACK, 0);
                    self.out.put_slice(p);
                }
                Ok(())
            }
            GOAWAY => {
                if id != 0 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                if p.len() < 8 {
                    return Err(ConnError(Reason::FRAME_SIZE_ERROR, "GOAWAY too short"));
                }
                self.going_away = true;
                Ok(())
            }
            WINDOW_UPDATE => self.recv_window_update(id, p),
            // Unknown frame types are ignored (RFC 9113, 4.1).
            _ => Ok(()),
        }
    }

    /// A frame's payload without its padding.
    fn unpad(flags: u8, p: &[u8]) -> Result<&[u8], ConnError> {
        if flags & PADDED == 0 {
            return Ok(p);
        }
        let Some((&pad, rest)) = p.split_first() else {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "padded frame without a length",
            ));
        };
        if pad as usize > rest.len() {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "padding longer than the frame",
            ));
        }
        Ok(&rest[..rest.len() - pad as usize])
    }

    fn recv_data(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let total = p.len();
        if total as i64 > self.recv_window {
            return Err(ConnError(
                Reason::FLOW_CONTROL_ERROR,
                "DATA over the connection's window",
            ));
        }
        self.recv_window -= total as i64;
        let data = Self::unpad(flags, p)?;
        let end = flags & END_STREAM != 0;
        let Some(s) = self.streams.get_mut(&id) else {
            if id > self.last_stream_id {
                return Err(ConnError(Reason::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            // A stream that ended: its bytes go back to the connection's window.
            self.give_back_conn(total);
            return Ok(());
        };
        if s.reset.is_some() || s.recv_dropped {
            if end {
                s.recv_closed = true;
            }
            self.give_back_conn(total);
            self.maybe_finish(id);
            return Ok(());
        }
        if s.recv_closed {
            self.give_back_conn(total);
            self.stream_error(id, Reason::STREAM_CLOSED);
            return Ok(());
        }
        if total as i64 > s.recv_window {
            self.give_back_conn(total);
            self.stream_error(id, Reason::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        s.recv_window -= total as i64;
        // Padding is consumed at once.
        let padding = total - data.len();
        if data.len() < SMALL_DATA {
            s.recv_tail.extend_from_slice(data);
        } else {
            if !s.recv_tail.is_empty() {
                let tail = s.recv_tail.split().freeze();
                s.recv.push_back(tail);
            }
            s.recv.push_back(Bytes::copy_from_slice(data));
        }
        if end {
            s.recv_closed = true;
        }
        if let Some(w) = s.recv_waker.take() {
            w.wake();
        }
        if padding > 0 {
            self.release(id, padding);
        }
        Ok(())
    }

    fn recv_headers(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        let mut block = Self::unpad(flags, p)?;
        if flags & PRIORITY_FLAG != 0 {
            if block.len() < 5 {
                return Err(ConnError(
                    Reason::PROTOCOL_ERROR,
                    "HEADERS priority cut short",
                ));
            }
            block = &block[5..];
        }
        let end_stream = flags & END_STREAM != 0;
        if flags & END_HEADERS != 0 {
            self.headers_done(id, end_stream, block)
        } else {
            if block.len() > MAX_HEADER_BLOCK {
                return Err(ConnError(
                    Reason::ENHANCE_YOUR_CALM,
                    "header block too large",
                ));
            }
            self.block = Some(Block {
                id,
                end_stream,
                buf: block.to_vec(),
            });
            Ok(())
        }
    }

    /// A whole header block: a new request, or a request's trailers.
    fn headers_done(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        let mut head = Head::default();
        let decoded = self
            .decoder
            .decode(block, |name, value| head.add(name, value));
        if decoded.is_err() {
            return Err(ConnError(Reason::COMPRESSION_ERROR, "bad header block"));
        }
        if let Some(s) = self.streams.get_mut(&id) {
            // Trailers: they must end the stream; their content is not used.
            if s.recv_closed || !end_stream {
                if s.reset.is_none() {
                    self.stream_error(id, Reason::PROTOCOL_ERROR);
                }
                return Ok(());
            }
            s.recv_closed = true;
            if let Some(w) = s.recv_waker.take() {
                w.wake();
            }
            return Ok(());
        }
        if id <= self.last_stream_id {
            // A stream that ended: refused as closed.
            self.rst(id, Reason::STREAM_CLOSED);
            return Ok(());
        }
        if id % 2 == 0 {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "a client's stream ids are odd",
            ));
        }
        self.last_stream_id = id;
        if self.going_away {
            self.rst(id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        if self.streams.len() >= MAX_CONCURRENT_STREAMS as usize {
            self.rst(id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        if head.size > H2_MAX_HEADER_LIST_BYTES as usize {
            // As h2 answers it: 431, and the stream ends.
            let mut hb = std::mem::take(&mut self.hbuf);
            hb.clear();
            put_status(&mut hb, 431);
            self.put_block(id, &hb, true);
            self.hbuf = hb;
            if !end_stream {
                self.rst(id, Reason::NO_ERROR);
            }
            return Ok(());
        }
        let Some(req) = head.request(&mut self.last_uri) else {
            self.rst(id, Reason::PROTOCOL_ERROR);
            return Ok(());
        };
        self.streams
            .insert(id, Stream::new(end_stream, self.peer_initial_window));
        let Some(sh) = self.me.upgrade() else {
            return Ok(());
        };
        let req = req.map(|()| RecvStream { sh: sh.clone(), id });
        self.accepted.push_back((req, SendResponse { sh, id }));
        Ok(())
    }

    fn recv_rst(&mut self, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
        }
        if p.len() != 4 {
            return Err(ConnError(
                Reason::FRAME_SIZE_ERROR,
                "RST_STREAM of a wrong size",
            ));
        }
        if id > self.last_stream_id {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "RST_STREAM on an idle stream",
            ));
        }
        let reason = Reason(u32::from_be_bytes([p[0], p[1], p[2], p[3]]));
        if let Some(s) = self.streams.get_mut(&id) {
            if s.reset.is_none() {
                s.reset = Some(reason);
            }
            s.recv_closed = true;
            s.sent_end = true;
            s.pending.clear();
            s.pending_bytes = 0;
            let unread = s.take_unread();
            s.wake_all();
            self.give_back_conn(unread);
            self.maybe_finish(id);
        }
        Ok(())
    }

    fn recv_settings(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if id != 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if flags & ACK != 0 {
            if !p.is_empty() {
                return Err(ConnError(
                    Reason::FRAME_SIZE_ERROR,
                    "SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        if p.len() % 6 != 0 {
            return Err(ConnError(
                Reason::FRAME_SIZE_ERROR,
                "SETTINGS of a wrong size",
            ));
        }
        for s in p.chunks_exact(6) {
            let key = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match key {
                0x2 if v > 1 => {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1"))
                }
                0x4 => {
                    if v as i64 > MAX_WINDOW {
                        return Err(ConnError(
                            Reason::FLOW_CONTROL_ERROR,
                            "INITIAL_WINDOW_SIZE too large",
                        ));
                    }
                    let delta = v as i64 - self.peer_initial_window;
                    self.peer_initial_window = v as i64;
                    for st in self.streams.values_mut() {
                        st.send_window += delta;
                        if st.send_window > MAX_WINDOW {
                            return Err(ConnError(
                                Reason::FLOW_CONTROL_ERROR,
                                "a stream's window overflowed",
                            ));
                        }
                    }
                }
                0x5 => {
                    if !(16_384..=16_777_215).contains(&v) {
                        return Err(ConnError(
                            Reason::PROTOCOL_ERROR,
                            "MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_max_frame = v as usize;
                }
                _ => {}
            }
        }
        frame_head(&mut self.out, 0, SETTINGS, ACK, 0);
        self.drain_waiting();
        // A larger initial window gives every stream room.
        self.wake_senders();
        Ok(())
    }

    fn recv_window_update(&mut self, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if p.len() != 4 {
            return Err(ConnError(
                Reason::FRAME_SIZE_ERROR,
                "WINDOW_UPDATE of a wrong size",
            ));
        }
        let inc = (u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff) as i64;
        if id == 0 {
            if inc == 0 {
                return Err(ConnError(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE of zero"));
            }
            self.send_window += inc;
            if self.send_window > MAX_WINDOW {
                return Err(ConnError(
                    Reason::FLOW_CONTROL_ERROR,
                    "the connection's window overflowed",
                ));
            }
            self.drain_waiting();
            if std::mem::take(&mut self.blocked_on_window) {
                self.wake_senders();
            }
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&id) else {
            if id > self.last_stream_id {
                return Err(ConnError(
                    Reason::PROTOCOL_ERROR,
                    "WINDOW_UPDATE on an idle stream",
                ));
            }
            return Ok(());
        };
        if s.reset.is_some() {
            return Ok(());
        }
        if inc == 0 || s.send_window + inc > MAX_WINDOW {
            let reason = if inc == 0 {
                Reason::PROTOCOL_ERROR
            } else {
                Reason::FLOW_CONTROL_ERROR
            };
            self.stream_error(id, reason);
            return Ok(());
        }
        s.send_window += inc;
        if let Some(w) = s.send_waker.take() {
            w.wake();
        }
        self.drain(id);
        Ok(())
    }
}

fn put_block_into(out: &mut BytesMut, max: usize, id: u32, block: &[u8], end_stream: bool) {
    let mut rest = block;
    let mut first = true;
    loop {
        let n = rest.len().min(max);
        let last = n == rest.len();
        let mut flags = if last { END_HEADERS } else { 0 };
        let kind = if first {
            if end_stream {
                flags |= END_STREAM;
            }
            HEADERS
        } else {
            CONTINUATION
        };
        frame_head(out, n, kind, flags, id);
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
        first = false;
        if last {
            break;
        }
    }
}

/// A request's headers as they are decoded.
#[derive(Default)]
struct Head {
    method: Option<Method>,
    path: Option<Bytes>,
    headers: HeaderMap,
    /// The decoded list's size as HTTP/2 counts it (name + value + 32 per field).
    size: usize,
    malformed: bool,
    regular_seen: bool,
}

impl Head {
    fn add(&mut self, name: &[u8], value: &[u8]) {
        self.size += name.len() + value.len() + 32;
        if self.malformed || self.size > H2_MAX_HEADER_LIST_BYTES as usize {
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen {
                self.malformed = true;
                return;
            }
            match pseudo {
                b"method" if self.method.is_none() => match Method::from_bytes(value) {
                    Ok(m) => self.method = Some(m),
                    Err(_) => self.malformed = true,
                },
                b"path" if self.path.is_none() && !value.is_empty() => {
                    self.path = Some(Bytes::copy_from_slice(value))
                }
                // Not used: the authority may be a URL (etcdctl 3.4 sends its endpoint,
                // scheme included, which the h2 crate refused).
                b"scheme" | b"authority" => {}
                _ => self.malformed = true,
            }
            return;
        }
        self.regular_seen = true;
        // Upper case is malformed in HTTP/2; HeaderName would fold it silently.
        if name.iter().any(u8::is_ascii_uppercase) {
            self.malformed = true;
            return;
        }
        // Connection-specific headers are malformed in HTTP/2 (RFC 9113, 8.2.2).
        if matches!(
            name,
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
        ) || (name == b"te" && value != b"trailers")
        {
            self.malformed = true;
            return;
        }
        // gRPC's own names without an allocation each (HeaderName copies a name it does not
        // know).
        const KNOWN: [HeaderName; 4] = [
            HeaderName::from_static("grpc-timeout"),
            HeaderName::from_static("grpc-accept-encoding"),
            HeaderName::from_static("hasleader"),
            HeaderName::from_static("token"),
        ];
        let known = KNOWN
            .iter()
            .find(|k| k.as_str().as_bytes() == name)
            .cloned();
        let name = known.map_or_else(|| HeaderName::from_bytes(name), Ok);
        match (name, HeaderValue::from_bytes(value)) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
            }
            _ => self.malformed = true,
        }
    }

    /// The request; `last` is the previous request's URI on this connection, reused when the
    /// path is the same (a client calls the same few methods).
    fn request(self, last: &mut Option<Uri>) -> Option<Request<()>> {
        if self.malformed {
            return None;
        }
        let path = self.path?;
        let uri = match last {
            Some(u) if u.path().as_bytes() == path && u.query().is_none() => u.clone(),
            _ => {
                let u = Uri::from_maybe_shared(path).ok()?;
                *last = Some(u.clone());
                u
            }
        };
        let mut req = Request::new(());
        *req.method_mut() = self.method?;
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers;
        Some(req)
    }
}

/// The request body of one stream.
pub struct RecvStream {
    sh: Rc<RefCell<Shared>>,
    id: u32,
}

impl RecvStream {
    /// The next chunk of the body; None at its end.
    pub async fn data(&mut self) -> Option<Result<Bytes, Error>> {
        std::future::poll_fn(|cx| self.poll_data(cx)).await
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        let mut cell = self.sh.borrow_mut();
        let sh = &mut *cell;
        let Some(s) = sh.streams.get_mut(&self.id) else {
            return Poll::Ready(Some(Err(Error::Closed)));
        };
        if let Some(chunk) = s.recv.pop_front() {
            return Poll::Ready(Some(Ok(chunk)));
        }
        if !s.recv_tail.is_empty() {
            return Poll::Ready(Some(Ok(s.recv_tail.split().freeze())));
        }
        if let Some(r) = s.reset {
            return Poll::Ready(Some(Err(Error::Reset(r))));
        }
        if s.recv_closed {
            return Poll::Ready(None);
        }
        if sh.dead {
            return Poll::Ready(Some(Err(Error::Closed)));
        }
        s.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Gives `n` bytes the call has read back to the client's windows.
    pub fn release_capacity(&mut self, n: usize) {
        self.sh.borrow_mut().release(self.id, n);
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.sh.borrow_mut().drop_ref(self.id, true);
    }
}

/// The start of a stream's response.
pub struct SendResponse {
    sh: Rc<RefCell<Shared>>,
    id: u32,
}

fn response_block(sh: &mut Shared, resp: &Response<()>) -> Vec<u8> {
    let mut hb = std::mem::take(&mut sh.hbuf);
    encode_headers(&mut hb, Some(resp.status().as_u16()), resp.headers());
    hb
}

impl SendResponse {
    /// Sends the response headers; with `end`, the response ends there.
    pub fn send_response(&mut self, resp: Response<()>, end: bool) -> Result<SendStream, Error> {
        let mut cell = self.sh.borrow_mut();
        let sh = &mut *cell;
        let hb = response_block(sh, &resp);
        let r = sh.send_headers(self.id, &hb, end);
        sh.hbuf = hb;
        r?;
        sh.streams.get_mut(&self.id).expect("usable").refs += 1;
        Ok(SendStream {
            sh: self.sh.clone(),
            id: self.id,
        })
    }

    /// A whole gRPC answer: headers, one DATA frame (or more, past the client's frame size
    /// or windows), the OK trailers, in one go.
    pub fn send_grpc_message(&mut self, frame: Bytes) -> Result<(), Error> {
        let mut cell = self.sh.borrow_mut();
        let sh = &mut *cell;
        sh.send_headers(self.id, GRPC_OK_BLOCK, false)?;
        sh.queue(self.id, Pending::Data(frame, false), false)?;
        sh.queue(
            self.id,
            Pending::Trailers(Bytes::from_static(GRPC_STATUS_OK_BLOCK)),
            true,
        )
    }

    /// Completes when the client resets the stream (or the connection ends).
    pub fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<Result<Reason, Error>> {
        poll_reset(&self.sh, self.id, cx)
    }
}

impl Drop for SendResponse {
    fn drop(&mut self) {
        self.sh.borrow_mut().drop_ref(self.id, false);
    }
}

fn poll_reset(
    sh: &Rc<RefCell<Shared>>,
    id: u32,
    cx: &mut Context<'_>,
) -> Poll<Result<Reason, Error>> {
    let mut cell = sh.borrow_mut();
    let sh = &mut *cell;
    if sh.dead {
        return Poll::Ready(Err(Error::Closed));
    }
    let Some(s) = sh.streams.get_mut(&id) else {
        return Poll::Ready(Err(Error::Closed));
    };
    if let Some(r) = s.reset {
        return Poll::Ready(Ok(r));
    }
    s.send_waker = Some(cx.waker().clone());
    Poll::Pending
}

/// The body and trailers of a stream's response.
pub struct SendStream {
    sh: Rc<RefCell<Shared>>,
    id: u32,
}

impl SendStream {
    /// Queues data; it leaves as the client's windows allow (use `poll_capacity` to wait for
    /// them rather than queue without bound).
    pub fn send_data(&mut self, data: Bytes, end: bool) -> Result<(), Error> {
        self.sh
            .borrow_mut()
            .queue(self.id, Pending::Data(data, end), end)
    }

    /// Ends the response with trailers.
    pub fn send_trailers(&mut self, trailers: HeaderMap) -> Result<(), Error> {
        let mut cell = self.sh.borrow_mut();
        let sh = &mut *cell;
        let mut hb = Vec::new();
        encode_headers(&mut hb, None, &trailers);
        sh.queue(self.id, Pending::Trailers(hb.into()), true)
    }

    /// How much may be sent now without queueing past the client's windows (at least 1), or
    /// the stream's end.
    pub fn poll_capacity(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<usize, Error>>> {
        let mut cell = self.sh.borrow_mut();
        let sh = &mut *cell;
        let conn_room = sh.send_window;
        let full = sh.out.len() >= OUT_HIGH_WATER;
        let s = match sh.usable(self.id) {
            Ok(s) => s,
            Err(e) => return Poll::Ready(Some(Err(e))),
        };
        let stream_room = s.send_window - s.pending_bytes as i64;
        let room = stream_room.min(conn_room);
        if room > 0 && !full && s.pending.is_empty() {
            return Poll::Ready(Some(Ok(room as usize)));
        }
        s.send_waker = Some(cx.waker().clone());
        if stream_room > 0 && s.pending.is_empty() {
            // Held back by the connection, not by this stream.
            if full {
                sh.blocked_on_room = true;
            } else {
                sh.blocked_on_window = true;
            }
        }
        Poll::Pending
    }

    /// Completes when the client resets the stream (or the connection ends).
    pub fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<Result<Reason, Error>> {
        poll_reset(&self.sh, self.id, cx)
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        self.sh.borrow_mut().drop_ref(self.id, false);
    }
}

/// One client connection: drives its I/O and hands out its requests.
pub struct Connection<S> {
    io: S,
    sh: Rc<RefCell<Shared>>,
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    preface_left: usize,
    wbuf: Bytes,
    read_closed: bool,
    /// Written since the last completed flush (a TLS stream holds records until flushed).
    need_flush: bool,
    /// GOAWAY queued after a protocol error: close once it is written.
    closing: bool,
    done: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// A connection whose first bytes (the preface, once the caller has sniffed it) are still
    /// to be read from `io`.
    pub fn new(io: S) -> Connection<S> {
        Connection {
            io,
            sh: Rc::new_cyclic(|me| RefCell::new(Shared::new(me.clone()))),
            rbuf: vec![0u8; READ_BUF].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            preface_left: PREFACE.len(),
            wbuf: Bytes::new(),
            read_closed: false,
            need_flush: false,
            closing: false,
            done: false,
        }
    }

    /// The next request; None once the connection is over.
    pub async fn accept(&mut self) -> Option<Accepted> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<Accepted>> {
        // Rounds of reading and writing before this task lets the others run.
        let mut budget = 16;
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(a) = self.sh.borrow_mut().accepted.pop_front() {
                return Poll::Ready(Some(a));
            }
            let wrote = match self.poll_write_out(cx) {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP/2 connection: write failed");
                    self.finish();
                    continue;
                }
            };
            let over = {
                let sh = self.sh.borrow();
                let quiet = self.wbuf.is_empty() && sh.out.is_empty() && !self.need_flush;
                quiet && (self.closing || (sh.going_away && sh.streams.is_empty()))
            };
            if over {
                self.finish();
                continue;
            }
            let read = if self.closing || self.read_closed {
                false
            } else {
                match self.poll_read_in(cx) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP/2 connection: read failed");
                        self.finish();
                        continue;
                    }
                }
            };
            if self.read_closed && !self.closing {
                // The client closed its side: its calls can send nothing it would read.
                let _ = self.poll_write_out(cx);
                self.finish();
                continue;
            }
            if wrote || read {
                budget -= 1;
                if budget == 0 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                continue;
            }
            let mut sh = self.sh.borrow_mut();
            if !sh.accepted.is_empty() || (!sh.out.is_empty() && self.wbuf.is_empty()) {
                continue;
            }
            match &sh.conn_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => sh.conn_waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
    }

    fn finish(&mut self) {
        self.done = true;
        let unanswered = self.sh.borrow_mut().kill();
        drop(unanswered);
    }

    /// Writes what is queued; true if it wrote anything. Pending leaves the socket's waker.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut wrote = false;
        loop {
            if self.wbuf.is_empty() {
                let mut sh = self.sh.borrow_mut();
                if !sh.waiting.is_empty() {
                    sh.drain_waiting();
                }
                if sh.out.len() < OUT_HIGH_WATER && std::mem::take(&mut sh.blocked_on_room) {
                    sh.wake_senders();
                }
                if sh.out.is_empty() {
                    break;
                }
                self.wbuf = sh.out.split().freeze();
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    let _ = self.wbuf.split_to(n);
                    wrote = true;
                    self.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(wrote),
            }
        }
        if self.need_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Pending => {}
            }
        }
        Ok(wrote)
    }

    /// Handles the frames buffered, then reads once more; true if anything was read or
    /// handled.
    fn poll_read_in(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut progressed = false;
        // Frames left over when the output filled up.
        if self.rend > self.rstart && self.preface_left == 0 {
            if self.handle_frames() {
                progressed = true;
            }
            if self.closing {
                return Ok(true);
            }
        }
        if self.sh.borrow().out.len() >= OUT_HIGH_WATER {
            // The client reads no answers: read nothing more from it until it does.
            return Ok(progressed);
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rbuf.len() - self.rend < FRAME_HEAD + OUR_MAX_FRAME {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let n = match Pin::new(&mut self.io).poll_read(cx, &mut self.rbuf[self.rend..]) {
            Poll::Ready(Ok(0)) => {
                self.read_closed = true;
                return Ok(true);
            }
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(progressed),
        };
        self.rend += n;
        if self.preface_left > 0 {
            let have = (self.rend - self.rstart).min(self.preface_left);
            let at = PREFACE.len() - self.preface_left;
            if self.rbuf[self.rstart..self.rstart + have] != PREFACE[at..at + have] {
                // Not HTTP/2: close without a word.
                self.read_closed = true;
                return Ok(true);
            }
            self.rstart += have;
            self.preface_left -= have;
        }
        if self.preface_left == 0 {
            self.handle_frames();
        }
        Ok(true)
    }

    /// Handles the whole frames buffered; true if it used any bytes. A protocol error queues
    /// GOAWAY and closes the connection once it is written.
    fn handle_frames(&mut self) -> bool {
        let used = self
            .sh
            .borrow_mut()
            .recv_frames(&self.rbuf[self.rstart..self.rend]);
        match used {
            Ok(used) => {
                self.rstart += used;
                used > 0
            }
            Err(ConnError(reason, why)) => {
                tracing::debug!(?reason, why, "HTTP/2 connection error");
                let mut sh = self.sh.borrow_mut();
                frame_head(&mut sh.out, 8, GOAWAY, 0, 0);
                let last = sh.last_stream_id;
                sh.out.put_u32(last);
                sh.out.put_u32(reason.0);
                self.closing = true;
                self.rstart = self.rend;
                true
            }
        }
    }
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        let unanswered = self.sh.borrow_mut().kill();
        drop(unanswered);
    }
}

/// Arbitrary bytes after a client's SETTINGS, as frames of one connection: its state machine
/// and HPACK decoder must answer with frames or a connection error, never panic (the
/// `http2_frames` fuzz target, and `tests/fuzz_inputs.rs`). Every request it accepts is
/// answered, then a WINDOW_UPDATE lets queued answers out.
pub fn fuzz_frames(data: &[u8]) {
    let sh = Rc::new_cyclic(|me| RefCell::new(Shared::new(me.clone())));
    let settings = [0, 0, 0, SETTINGS, 0, 0, 0, 0, 0];
    let _ = sh.borrow_mut().recv_frames(&settings);
    let _ = sh.borrow_mut().recv_frames(data);
    let accepted: Vec<Accepted> = sh.borrow_mut().accepted.drain(..).collect();
    for (req, mut respond) in accepted {
        let mut body = req.into_body();
        let _ = body.poll_data(&mut Context::from_waker(Waker::noop()));
        let _ = respond.send_grpc_message(Bytes::from_static(b"\0\0\0\0\0"));
    }
    let more = [0, 0, 4, WINDOW_UPDATE, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    let _ = sh.borrow_mut().recv_frames(&more);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Rc<RefCell<Shared>> {
        let sh = Rc::new_cyclic(|me| RefCell::new(Shared::new(me.clone())));
        sh.borrow_mut().out.clear();
        sh
    }

    fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame_head(&mut out, payload.len(), kind, flags, id);
        out.put_slice(payload);
        out.to_vec()
    }

    fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (k, v) in pairs {
            p.extend_from_slice(&k.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &p)
    }

    /// A POST to `path` (literal fields, no Huffman, nothing indexed).
    fn request(id: u32, path: &str, end_stream: bool) -> Vec<u8> {
        let mut block = vec![0x83]; // :method POST
        put_literal(&mut block, b":path", path.as_bytes());
        put_literal(&mut block, b"content-type", b"application/grpc");
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(HEADERS, flags, id, &block)
    }

    fn feed(sh: &Rc<RefCell<Shared>>, bytes: &[u8]) -> Result<usize, ConnError> {
        sh.borrow_mut().recv_frames(bytes)
    }

    /// The frames written so far: (type, flags, stream, payload); the output is taken.
    fn written(sh: &Rc<RefCell<Shared>>) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let out = sh.borrow_mut().out.split();
        let mut frames = Vec::new();
        let mut b = &out[..];
        while !b.is_empty() {
            let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
            let id = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            frames.push((b[3], b[4], id, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        frames
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    /// A client that opens with SETTINGS (a 100-byte stream window) and one request.
    fn opened(window: u32) -> (Rc<RefCell<Shared>>, Request<RecvStream>, SendResponse) {
        let sh = shared();
        let mut input = settings(&[(0x4, window)]);
        input.extend(request(1, "/etcdserverpb.KV/Put", false));
        feed(&sh, &input).unwrap();
        let (req, respond) = sh.borrow_mut().accepted.pop_front().expect("a request");
        let kinds: Vec<u8> = written(&sh).iter().map(|f| f.0).collect();
        assert_eq!(kinds, [SETTINGS], "the client's SETTINGS are acknowledged");
        (sh, req, respond)
    }

    #[test]
    fn the_first_frame_must_be_settings() {
        let sh = shared();
        let e = feed(&sh, &request(1, "/x", true)).unwrap_err();
        assert_eq!(e.0, Reason::PROTOCOL_ERROR);
    }

    #[test]
    fn a_request_and_its_body_reach_the_call_and_the_windows_come_back() {
        let (sh, req, _respond) = opened(65_535);
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().path(), "/etcdserverpb.KV/Put");
        assert_eq!(req.headers()["content-type"], "application/grpc");
        let mut body = req.into_body();
        let chunk = vec![7u8; 600_000];
        feed(&sh, &frame(DATA, 0, 1, &chunk[..16_384])).unwrap();
        feed(&sh, &frame(DATA, END_STREAM, 1, &chunk[..100])).unwrap();
        let mut got = 0;
        while let Poll::Ready(Some(Ok(b))) = body.poll_data(&mut cx()) {
            got += b.len();
            body.release_capacity(b.len());
        }
        assert_eq!(got, 16_484);
        assert!(matches!(body.poll_data(&mut cx()), Poll::Ready(None)));
        // Under half of either window consumed: no WINDOW_UPDATE yet (one per half window).
        assert!(written(&sh).is_empty());
        // More data than the stream's window (1 MiB) is a stream error.
        let (sh, req, _respond) = opened(65_535);
        let _body = req.into_body();
        let mut sent = 0;
        while sent <= H2_STREAM_WINDOW_BYTES as usize {
            feed(&sh, &frame(DATA, 0, 1, &chunk[..16_384])).unwrap();
            sent += 16_384;
        }
        let frames = written(&sh);
        assert!(frames
            .iter()
            .any(|f| f.0 == RST_STREAM && f.3 == 3u32.to_be_bytes()));
    }

    #[test]
    fn a_response_waits_for_the_clients_window_and_its_trailers_come_last() {
        let (sh, req, mut respond) = opened(100);
        drop(req);
        respond
            .send_grpc_message(Bytes::from(vec![1u8; 300]))
            .unwrap();
        let kinds: Vec<(u8, usize)> = written(&sh).iter().map(|f| (f.0, f.3.len())).collect();
        assert_eq!(kinds, [(HEADERS, GRPC_OK_BLOCK.len()), (DATA, 100)]);
        drop(respond);
        // The stream stays until its answer is out, though the call let go of it.
        assert_eq!(sh.borrow().streams.len(), 1);
        feed(&sh, &frame(WINDOW_UPDATE, 0, 1, &150u32.to_be_bytes())).unwrap();
        let kinds: Vec<(u8, usize)> = written(&sh).iter().map(|f| (f.0, f.3.len())).collect();
        assert_eq!(kinds, [(DATA, 150)], "the trailers wait behind the data");
        feed(&sh, &frame(WINDOW_UPDATE, 0, 1, &50u32.to_be_bytes())).unwrap();
        let frames = written(&sh);
        assert_eq!(frames.len(), 3);
        assert_eq!((frames[0].0, frames[0].3.len()), (DATA, 50));
        assert_eq!(
            (frames[1].0, frames[1].1 & END_STREAM),
            (HEADERS, END_STREAM)
        );
        assert_eq!(frames[1].3, GRPC_STATUS_OK_BLOCK);
        // The client never ended its side: answered, the stream is reset with NO_ERROR
        // (RFC 9113, 8.1) and forgotten.
        assert_eq!(
            (frames[2].0, &frames[2].3[..]),
            (RST_STREAM, &[0u8, 0, 0, 0][..])
        );
        assert!(sh.borrow().streams.is_empty());
    }

    #[test]
    fn capacity_is_what_the_windows_allow() {
        let (sh, _req, mut respond) = opened(1_000);
        let mut out = respond.send_response(Response::new(()), false).unwrap();
        assert!(matches!(
            out.poll_capacity(&mut cx()),
            Poll::Ready(Some(Ok(1_000)))
        ));
        out.send_data(Bytes::from(vec![0u8; 1_000]), false).unwrap();
        assert!(out.poll_capacity(&mut cx()).is_pending());
        feed(&sh, &frame(WINDOW_UPDATE, 0, 1, &500u32.to_be_bytes())).unwrap();
        assert!(matches!(
            out.poll_capacity(&mut cx()),
            Poll::Ready(Some(Ok(500)))
        ));
        // The connection's window (65,535) bounds it too.
        feed(&sh, &frame(WINDOW_UPDATE, 0, 1, &200_000u32.to_be_bytes())).unwrap();
        assert!(matches!(
            out.poll_capacity(&mut cx()),
            Poll::Ready(Some(Ok(64_535)))
        ));
    }

    /// Every byte a client sends comes back to the connection's window once, whether the
    /// call read it or not (counted twice, the window would grow past 2^31 - 1 on a long-lived
    /// connection, which the client must treat as an error).
    #[test]
    fn the_connections_window_comes_back_once_per_byte() {
        let sh = shared();
        feed(&sh, &settings(&[])).unwrap();
        let body = vec![0u8; 10_000];
        let mut sent = 0u64;
        for i in 0..2_000u32 {
            let id = 2 * i + 1;
            let mut input = request(id, "/a", false);
            input.extend(frame(DATA, END_STREAM, id, &body));
            sent += body.len() as u64;
            feed(&sh, &input).unwrap();
            let (req, respond) = sh.borrow_mut().accepted.pop_front().unwrap();
            let mut rx = req.into_body();
            if i % 2 == 0 {
                // Read and released, then ended.
                while let Poll::Ready(Some(Ok(b))) = rx.poll_data(&mut cx()) {
                    rx.release_capacity(b.len());
                }
            }
            drop((rx, respond));
        }
        let given: u64 = written(&sh)
            .iter()
            .filter(|f| f.0 == WINDOW_UPDATE && f.2 == 0)
            .map(|f| u32::from_be_bytes(f.3[..4].try_into().unwrap()) as u64)
            .sum();
        let s = sh.borrow();
        assert_eq!(given + s.recv_unacked as u64, sent);
        assert_eq!(
            s.recv_window as u64,
            H2_CONN_WINDOW_BYTES as u64 - s.recv_unacked as u64
        );
    }

    /// A stream whose call let go while its answer waited for the client's window, reset by
    /// a stream error of the client's, is forgotten (it used to stay, counted against the
    /// stream limit, until the connection ended).
    #[test]
    fn a_waiting_answer_reset_by_a_stream_error_is_forgotten() {
        for bad in [
            frame(WINDOW_UPDATE, 0, 1, &0u32.to_be_bytes()),
            request(1, "/again", false),
        ] {
            let sh = shared();
            let mut input = settings(&[(0x4, 0)]);
            input.extend(request(1, "/etcdserverpb.KV/Range", true));
            feed(&sh, &input).unwrap();
            let (req, mut respond) = sh.borrow_mut().accepted.pop_front().unwrap();
            respond
                .send_grpc_message(Bytes::from_static(b"answer"))
                .unwrap();
            drop((req, respond));
            assert_eq!(sh.borrow().streams.len(), 1, "kept for its answer");
            written(&sh);
            feed(&sh, &bad).unwrap();
            assert!(sh.borrow().streams.is_empty());
            let frames = written(&sh);
            assert_eq!(frames.len(), 1);
            assert_eq!((frames[0].0, frames[0].2), (RST_STREAM, 1));
        }
    }

    /// One-byte DATA frames are gathered: a client cannot make each byte of its window cost
    /// an allocation.
    #[test]
    fn tiny_data_frames_are_gathered() {
        let (sh, req, _respond) = opened(65_535);
        let mut body = req.into_body();
        for i in 0..1000u32 {
            let flags = if i == 999 { END_STREAM } else { 0 };
            feed(&sh, &frame(DATA, flags, 1, &[i as u8])).unwrap();
        }
        assert!(sh.borrow().streams[&1].recv.is_empty());
        let Poll::Ready(Some(Ok(all))) = body.poll_data(&mut cx()) else {
            panic!("the data");
        };
        assert_eq!(all.len(), 1000);
        assert_eq!(all[999], (999u32 as u8));
        assert!(matches!(body.poll_data(&mut cx()), Poll::Ready(None)));
    }

    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A call held back by the connection's window (its stream has room) is woken when the
    /// connection's window grows (snapshot save hung without it).
    #[test]
    fn a_call_waiting_for_the_connections_window_is_woken_when_it_grows() {
        let (sh, _req, mut respond) = opened(1 << 20);
        let mut out = respond.send_response(Response::new(()), false).unwrap();
        out.send_data(Bytes::from(vec![0u8; 65_535]), false)
            .unwrap();
        assert_eq!(sh.borrow().send_window, 0);
        let count = std::sync::Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        assert!(out
            .poll_capacity(&mut Context::from_waker(&waker))
            .is_pending());
        feed(&sh, &frame(WINDOW_UPDATE, 0, 0, &1_000u32.to_be_bytes())).unwrap();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(matches!(
            out.poll_capacity(&mut cx()),
            Poll::Ready(Some(Ok(1_000)))
        ));
    }

    #[test]
    fn a_reset_from_the_client_reaches_every_handle() {
        let (sh, req, mut respond) = opened(65_535);
        let mut body = req.into_body();
        assert!(respond.poll_reset(&mut cx()).is_pending());
        feed(&sh, &frame(RST_STREAM, 0, 1, &8u32.to_be_bytes())).unwrap();
        assert!(matches!(
            respond.poll_reset(&mut cx()),
            Poll::Ready(Ok(Reason::CANCEL))
        ));
        assert!(matches!(
            body.poll_data(&mut cx()),
            Poll::Ready(Some(Err(Error::Reset(Reason::CANCEL))))
        ));
        assert!(respond.send_grpc_message(Bytes::new()).is_err());
        drop((body, respond));
        assert!(sh.borrow().streams.is_empty());
        assert!(written(&sh).is_empty(), "no reset back for a reset stream");
    }

    #[test]
    fn streams_past_the_limit_are_refused_until_calls_end() {
        let sh = shared();
        feed(&sh, &settings(&[])).unwrap();
        let mut held = Vec::new();
        for i in 0..MAX_CONCURRENT_STREAMS {
            feed(&sh, &request(2 * i + 1, "/a", true)).unwrap();
            held.push(sh.borrow_mut().accepted.pop_front().unwrap());
        }
        written(&sh);
        let next = 2 * MAX_CONCURRENT_STREAMS + 1;
        feed(&sh, &request(next, "/a", true)).unwrap();
        let frames = written(&sh);
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].0, frames[0].2), (RST_STREAM, next));
        assert_eq!(frames[0].3, 7u32.to_be_bytes(), "REFUSED_STREAM");
        // A call ends (its answer sent): room for one more.
        let (_req, mut respond) = held.pop().unwrap();
        respond.send_grpc_message(Bytes::new()).unwrap();
        drop((_req, respond));
        feed(&sh, &request(next + 2, "/a", true)).unwrap();
        let accepted = sh.borrow_mut().accepted.pop_front();
        assert!(accepted.is_some());
    }

    #[test]
    fn protocol_errors_end_the_connection() {
        let cases: Vec<(Vec<u8>, Reason)> = vec![
            (frame(DATA, 0, 3, b"x"), Reason::PROTOCOL_ERROR),
            (frame(PING, 0, 0, b"1234"), Reason::FRAME_SIZE_ERROR),
            (
                frame(HEADERS, END_HEADERS, 2, &[0x83]),
                Reason::PROTOCOL_ERROR,
            ),
            (
                frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()),
                Reason::PROTOCOL_ERROR,
            ),
            (frame(PUSH_PROMISE, 0, 1, &[0; 4]), Reason::PROTOCOL_ERROR),
            (
                frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff]),
                Reason::COMPRESSION_ERROR,
            ),
            (
                [frame(HEADERS, 0, 1, &[0x83]), frame(PING, 0, 0, &[0; 8])].concat(),
                Reason::PROTOCOL_ERROR,
            ),
            (settings(&[(0x5, 100)]), Reason::PROTOCOL_ERROR),
            (settings(&[(0x4, 1 << 31)]), Reason::FLOW_CONTROL_ERROR),
        ];
        for (input, reason) in cases {
            let sh = shared();
            feed(&sh, &settings(&[])).unwrap();
            let e = feed(&sh, &input).unwrap_err();
            assert_eq!(e.0, reason, "{}", e.1);
        }
        // A frame over 16 KiB is refused by its head alone.
        let sh = shared();
        feed(&sh, &settings(&[])).unwrap();
        let e = feed(&sh, &[0, 0x40, 1, DATA, 0, 0, 0, 0, 1]).unwrap_err();
        assert_eq!(e.0, Reason::FRAME_SIZE_ERROR);
    }

    #[test]
    fn pings_are_answered_and_malformed_requests_reset() {
        let sh = shared();
        feed(&sh, &settings(&[])).unwrap();
        written(&sh);
        feed(&sh, &frame(PING, 0, 0, b"abcdefgh")).unwrap();
        let frames = written(&sh);
        assert_eq!(frames, [(PING, ACK, 0, b"abcdefgh".to_vec())]);
        // Upper case in a field name, or no :path: the stream is reset, the connection lives.
        let mut block = vec![0x83];
        put_literal(&mut block, b":path", b"/a");
        put_literal(&mut block, b"Content-Type", b"x");
        feed(&sh, &frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)).unwrap();
        feed(&sh, &frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x83])).unwrap();
        let frames = written(&sh);
        assert_eq!(frames.len(), 2);
        assert!(frames
            .iter()
            .all(|f| f.0 == RST_STREAM && f.3 == 1u32.to_be_bytes()));
        assert!(sh.borrow().accepted.is_empty());
    }

    proptest::proptest! {
        /// Whatever follows a valid SETTINGS frame, the state machine answers with frames or a
        /// connection error, and never panics.
        #[test]
        fn arbitrary_frames_never_panic(frames in proptest::collection::vec(
            (0u8..11, proptest::num::u8::ANY, 0u32..8, proptest::collection::vec(proptest::num::u8::ANY, 0..40)),
            0..30,
        )) {
            let sh = shared();
            feed(&sh, &settings(&[])).unwrap();
            let mut input = Vec::new();
            for (kind, flags, id, payload) in frames {
                input.extend(frame(kind, flags, id, &payload));
            }
            let _ = feed(&sh, &input);
            let accepted: Vec<Accepted> = sh.borrow_mut().accepted.drain(..).collect();
            for (req, mut respond) in accepted {
                let _ = respond.send_grpc_message(Bytes::from_static(b"answer"));
                drop(req);
            }
            let _ = feed(&sh, &frame(WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes()));
        }
    }
}
