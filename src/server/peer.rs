//! The peer links: raft-rs messages between members over TCP on the peer URLs.
//!
//! One outgoing connection per peer, opened by this member and used in order; incoming
//! connections only deliver messages to the Raft loop. A connection starts with a handshake
//! (magic, cluster id, sender, receiver), so that a member of another cluster, or a stray
//! client, is turned away. Then each message is a frame: length (u32 LE) and the message as
//! raft-rs encodes it (protobuf).
//!
//! Every queue is bounded: a full queue towards a peer drops the message (Raft resends what
//! matters: appends are retried from the follower's progress, heartbeats come again), and a full
//! queue towards the Raft loop drops incoming messages the same way.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::io::BufferedFile;
use glommio::net::{TcpListener, TcpStream};
use protobuf::Message as _;
use raft::eraftpb::Message;

use super::metrics::METRICS;
use crate::limits::{PEER_FRAME_BYTES_MAX, PEER_QUEUE_MSGS};

const MAGIC: &[u8; 8] = b"ferrocd1";
/// The handshake of a connection that carries one Raft snapshot: the MsgSnapshot frame, then
/// the checkpoint's parts (part number u32, length u64, bytes), then u32::MAX; the receiver
/// answers one byte (1: checked and handed to Raft).
const SNAPSHOT_MAGIC: &[u8; 8] = b"ferrocdS";
/// How long a sender waits for the receiver to check a snapshot it sent.
const SNAPSHOT_CHECK_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes read or written at a time while streaming a snapshot.
const SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;

/// A peer connection: plain TCP, or TLS over it (`peer-*` TLS settings).
trait Io: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin {}
impl<T: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin> Io for T {}
type Conn = Box<dyn Io>;
/// The TLS of the peer links, if any.
type Tls = Option<Rc<super::tls::PeerTls>>;
const HANDSHAKE_BYTES: usize = 8 + 8 + 8 + 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Messages written to a peer with one write.
const SEND_BATCH_MSGS: usize = 256;

/// What reaches the Raft loop besides client requests.
pub(crate) enum Event {
    Peer(Message),
    Tick,
    /// A snapshot sent to a member arrived there and was checked (true), or not.
    SnapshotSent(u64, bool),
}

/// Where snapshots come from and go: this member's checkpoints (sent as they are) and the
/// directory a received one is staged in until Raft installs it.
pub(crate) struct Snapshots {
    pub checkpoints: std::path::PathBuf,
    pub staging: std::path::PathBuf,
    /// A snapshot is being received (one at a time).
    busy: std::cell::Cell<bool>,
}

impl Snapshots {
    pub fn new(checkpoints: std::path::PathBuf, staging: std::path::PathBuf) -> Snapshots {
        Snapshots {
            checkpoints,
            staging,
            busy: std::cell::Cell::new(false),
        }
    }

    /// The directory a snapshot at (index, term) is staged in.
    pub fn staged(&self, index: u64, term: u64) -> std::path::PathBuf {
        staged_dir(&self.staging, index, term)
    }
}

/// The directory under `staging` a snapshot at (index, term) waits in: `<index>-<term>`, in
/// hexadecimal.
pub(crate) fn staged_dir(staging: &std::path::Path, index: u64, term: u64) -> std::path::PathBuf {
    staging.join(format!("{index:016x}-{term:016x}"))
}

/// The members' ids and peer URLs, kept current by the Raft loop: a joining member finds its
/// id here by its peer URLs.
pub(crate) type Directory = Rc<std::cell::RefCell<Vec<(u64, Vec<String>)>>>;

/// The senders towards every other member.
pub(crate) struct Peers {
    me: u64,
    cluster_id: u64,
    tls: Tls,
    events: Rc<LocalSender<Event>>,
    snapshots: Rc<Snapshots>,
    /// Per member: its peer URLs, the queue of its link, and since when the link is up.
    out: HashMap<u64, (Vec<String>, LocalSender<Message>, Up)>,
}

/// Since when a link is up and answering pings (None: down): etcd's transport `ActiveSince`.
/// Each link has its own, so a link replaced or ended marks nothing that is read.
type Up = Rc<std::cell::Cell<Option<std::time::Instant>>>;

/// A link is taken as down when no pong came back for this long (a peer stopped without
/// closing its connections keeps them open).
const PONG_TIMEOUT: Duration = Duration::from_secs(3);

impl Peers {
    /// Starts the link to a member (added to the cluster, or known at start), or restarts it
    /// when its URLs changed; a link to the same URLs stays as it is.
    pub fn add(&mut self, id: u64, urls: Vec<String>) {
        if id == self.me || self.out.get(&id).is_some_and(|(u, _, _)| *u == urls) {
            return;
        }
        let (tx, rx) = local_channel::new_bounded(PEER_QUEUE_MSGS);
        // A replaced queue closes, and its link's task ends.
        let up = Up::default();
        self.out.insert(id, (urls.clone(), tx, up.clone()));
        let link = send_loop(
            (self.me, self.cluster_id),
            self.tls.clone(),
            id,
            urls,
            rx,
            up,
        );
        glommio::spawn_local(link).detach();
    }

    /// Since when the link to member `id` is up (None: down, or no link).
    pub fn active_since(&self, id: u64) -> Option<std::time::Instant> {
        self.out.get(&id).and_then(|(_, _, up)| up.get())
    }

    /// Ends the links to every member but those of `ids` (a joining member guessed the ids of
    /// the members its `--initial-cluster` names; a member added later has another).
    pub fn keep_only(&mut self, ids: &[u64]) {
        self.out.retain(|id, _| ids.contains(id));
    }

    /// Ends the link to a member removed from the cluster.
    pub fn remove(&mut self, id: u64) {
        // The sender task ends when its queue closes.
        self.out.remove(&id);
    }

    /// Queues messages to their receivers; drops a message whose queue is full. A snapshot
    /// goes on a connection of its own, with the checkpoint's files.
    pub fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                self.send_snapshot(m);
                continue;
            }
            match self.out.get(&m.to) {
                Some((_, tx, _)) => {
                    if tx.try_send(m).is_err() {
                        METRICS.peer_dropped.fetch_add(1, Relaxed);
                    }
                }
                None => tracing::debug!(to = m.to, "raft message to an unknown member dropped"),
            }
        }
    }
}

impl Peers {
    fn send_snapshot(&self, m: Message) {
        let to = m.to;
        let Some((urls, _, _)) = self.out.get(&to) else {
            let _ = self.events.try_send(Event::SnapshotSent(to, false));
            return;
        };
        let (urls, tls, events) = (urls.clone(), self.tls.clone(), self.events.clone());
        let (me, cluster_id, dir) = (self.me, self.cluster_id, self.snapshots.checkpoints.clone());
        glommio::spawn_local(async move {
            let started = std::time::Instant::now();
            let sent = stream_snapshot(me, cluster_id, &tls, to, &urls, &dir, &m).await;
            match &sent {
                Ok(bytes) => tracing::info!(
                    peer = %format!("{to:x}"),
                    index = m.get_snapshot().get_metadata().index,
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "raft snapshot sent"
                ),
                Err(e) => tracing::warn!(
                    peer = %format!("{to:x}"),
                    error = %e,
                    "raft snapshot not sent (Raft sends another later)"
                ),
            }
            // The loop's queue is bounded; the report waits for room.
            let _ = events.send(Event::SnapshotSent(to, sent.is_ok())).await;
        })
        .detach();
    }
}

/// Sends a MsgSnapshot and the checkpoint it names; returns the bytes sent.
async fn stream_snapshot(
    me: u64,
    cluster_id: u64,
    tls: &Tls,
    to: u64,
    urls: &[String],
    dir: &std::path::Path,
    m: &Message,
) -> io::Result<u64> {
    let seq = crate::consensus::snapshot_seq(m.get_snapshot())
        .ok_or_else(|| io::Error::other("a snapshot without its checkpoint"))?;
    // Opened and held: a newer checkpoint may remove these files, which it then unlinks whole
    // rather than cutting them down, and open files stay readable (files already being cut
    // down cannot be held: the send fails, and Raft asks for the newer snapshot). The files
    // held are the ones read, through io_uring: a cold page cache does not stall the Raft
    // shard.
    let parts = crate::log::checkpoint::parts_of(dir, seq)?;
    let (_held, open) = crate::log::checkpoint::hold(&parts)?;
    let mut files = Vec::new();
    for (f, p) in open.into_iter().zip(&parts) {
        let len = f
            .metadata()
            .map_err(|e| io::Error::other(format!("cannot stat {}: {e}", p.display())))?
            .len();
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: an open file this function owns and hands over whole. (glommio needs a
        // path for `file_size`, hence the length from the file above.)
        files.push((unsafe { BufferedFile::from_raw_fd(f.into_raw_fd()) }, len));
    }
    let mut s = connect(urls, tls, SNAPSHOT_MAGIC, me, cluster_id, to).await?;
    let mut buf = Vec::new();
    frame(&mut buf, m);
    s.write_all(&buf).await?;
    let mut sent = 0u64;
    for (i, (f, len)) in files.into_iter().enumerate() {
        s.write_all(&(i as u32).to_le_bytes()).await?;
        s.write_all(&len.to_le_bytes()).await?;
        let mut pos = 0u64;
        while pos < len {
            let n = ((len - pos) as usize).min(SNAPSHOT_CHUNK_BYTES);
            let chunk = f.read_at(pos, n).await.map_err(io::Error::from)?;
            if chunk.is_empty() {
                return Err(io::Error::other(
                    "a checkpoint part shrank while being sent",
                ));
            }
            s.write_all(&chunk).await?;
            pos += chunk.len() as u64;
        }
        let _ = f.close().await;
        sent += len;
        METRICS.peer_sent(to, len);
    }
    s.write_all(&u32::MAX.to_le_bytes()).await?;
    s.flush().await?;
    let mut ack = [0u8; 1];
    let answered = futures_lite::future::or(async { Some(s.read_exact(&mut ack).await) }, async {
        glommio::timer::sleep(SNAPSHOT_CHECK_TIMEOUT).await;
        None
    })
    .await;
    match answered {
        Some(Ok(())) if ack[0] == 1 => Ok(sent),
        Some(Ok(())) => Err(io::Error::other("the receiver refused the snapshot")),
        Some(Err(e)) => Err(e),
        None => Err(io::Error::other(
            "the receiver did not check the snapshot in time",
        )),
    }
}

/// Clears the "receiving" mark when a reception ends, however it ends.
struct Receiving<'a>(&'a std::cell::Cell<bool>);

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Receives a snapshot: its checkpoint's parts are written to the staging directory, synced
/// and checked (on a thread of their own), then the MsgSnapshot goes to Raft; the sender hears
/// whether that happened.
async fn receive_snapshot(
    mut r: futures_lite::io::BufReader<Conn>,
    from: u64,
    me: u64,
    events: &LocalSender<Event>,
    snapshots: &Snapshots,
) -> io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > PEER_FRAME_BYTES_MAX {
        return Err(io::Error::other(format!("snapshot frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    let m = Message::parse_from_bytes(&buf)
        .map_err(|e| io::Error::other(format!("undecodable raft message: {e}")))?;
    let seq = crate::consensus::snapshot_seq(m.get_snapshot());
    if m.from != from
        || m.to != me
        || m.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot
        || seq.is_none()
    {
        return Err(io::Error::other("not a snapshot from the connected peer"));
    }
    if snapshots.busy.replace(true) {
        return Err(io::Error::other("a snapshot is being received already"));
    }
    let _receiving = Receiving(&snapshots.busy);
    let meta = m.get_snapshot().get_metadata();
    // Received under a name of its own, renamed to its staged name once checked: a copy
    // staged already (the same snapshot sent again while the first is on its way to being
    // installed) is never touched. (Other staged snapshots stay too; the loop removes those
    // an install made useless.)
    let staged = snapshots.staged(meta.index, meta.term);
    let dir = staged.with_extension(format!("recv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut paths = Vec::new();
    loop {
        let mut part = [0u8; 4];
        r.read_exact(&mut part).await?;
        let part = u32::from_le_bytes(part);
        if part == u32::MAX {
            break;
        }
        if part as usize != paths.len() || paths.len() >= 1 << 16 {
            return Err(io::Error::other("snapshot parts out of order"));
        }
        let mut len = [0u8; 8];
        r.read_exact(&mut len).await?;
        let len = u64::from_le_bytes(len);
        if len > crate::log::checkpoint::PART_BYTES_MAX + (PEER_FRAME_BYTES_MAX as u64) {
            return Err(io::Error::other(format!("a snapshot part of {len} bytes")));
        }
        let path = dir.join(format!("part-{part:04}"));
        // Written through io_uring: the kernel's writeback throttling does not stall the
        // Raft shard (the checker thread syncs the files).
        let f = BufferedFile::create(&path).await.map_err(io::Error::from)?;
        let mut pos = 0u64;
        while pos < len {
            let n = ((len - pos) as usize).min(SNAPSHOT_CHUNK_BYTES);
            let mut chunk = vec![0u8; n];
            r.read_exact(&mut chunk).await?;
            // A short write to a regular file means the disk is full (or failing).
            let w = f.write_at(chunk, pos).await.map_err(io::Error::from)?;
            if w != n {
                return Err(io::Error::other(format!(
                    "a snapshot part was written short ({w} of {n} bytes)"
                )));
            }
            pos += n as u64;
        }
        f.close().await.map_err(io::Error::from)?;
        METRICS.peer_received(from, len);
        paths.push(path);
    }
    let (seq, check_paths, d) = (seq.unwrap_or(0), paths.clone(), dir.clone());
    let checker = std::thread::Builder::new()
        .name("snapshot-check".into())
        .spawn(move || -> io::Result<u64> {
            for p in &check_paths {
                std::fs::File::open(p)?.sync_all()?;
            }
            std::fs::File::open(&d)?.sync_all()?;
            Ok(crate::log::checkpoint::load(seq, &check_paths)?.count)
        })?;
    while !checker.is_finished() {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let checked = checker
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the snapshot checker panicked")));
    // Staged: renamed into place, unless a checked copy of the same snapshot is there.
    let checked = checked.and_then(|revisions| {
        if staged.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            std::fs::rename(&dir, &staged)?;
            std::fs::File::open(&snapshots.staging)?.sync_all()?;
        }
        Ok(revisions)
    });
    let ok = match &checked {
        Ok(revisions) => {
            tracing::info!(
                from = %format!("{from:x}"),
                index = meta.index,
                revisions,
                "raft snapshot received and checked"
            );
            events.send(Event::Peer(m.clone())).await.is_ok()
        }
        Err(e) => {
            tracing::warn!(error = %e, "a received raft snapshot is damaged: refused");
            let _ = std::fs::remove_dir_all(&dir);
            false
        }
    };
    r.get_mut().write_all(&[ok as u8]).await?;
    r.get_mut().flush().await?;
    checked.map(drop)
}

/// The first address of a URL such as `http://127.0.0.1:2380`.
pub(crate) fn url_addr(url: &str) -> io::Result<SocketAddr> {
    host_port(url)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{url}: no address")))
}

/// The `host:port` of a peer URL (`http://` or `https://`).
fn host_port(url: &str) -> &str {
    url.strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url)
        .trim_end_matches('/')
}

/// Starts the peer links: listeners on `listen`, and one sender task per peer of `peers`
/// (member id, peer URLs). Incoming messages go to `here.events`.
pub(crate) fn start(
    here: Here,
    listen: &[SocketAddr],
    peers: &[(u64, Vec<String>)],
    tls: Option<super::tls::PeerTls>,
) -> io::Result<Peers> {
    let tls: Tls = tls.map(Rc::new);
    let here = Rc::new(here);
    for addr in listen {
        let l = super::conn::refuse_if_taken(*addr)
            .and_then(|()| super::conn::listen(*addr))
            .map_err(|e| io::Error::other(format!("cannot listen on peer address {addr}: {e}")))?;
        glommio::spawn_local(accept_loop(l, here.clone(), tls.clone())).detach();
    }
    let mut p = Peers {
        me: here.me,
        cluster_id: here.cluster_id,
        tls,
        events: here.events.clone(),
        snapshots: here.snapshots.clone(),
        out: HashMap::new(),
    };
    for (id, urls) in peers {
        p.add(*id, urls.clone());
    }
    Ok(p)
}

/// A frame length that marks a ping (8 bytes of send time follow; the receiver writes them
/// back on the same connection, so the sender measures the round trip).
const PING: u32 = u32::MAX;
/// Pings on a link this often (etcd probes its peers every 5 s).
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Nanoseconds since the process's first use of this clock.
fn clock_nanos() -> u64 {
    static ORIGIN: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    ORIGIN.elapsed().as_nanos() as u64
}

/// Marks a link down however its task ends.
struct Ended<'a, F: Fn(bool)>(&'a F);

impl<F: Fn(bool)> Drop for Ended<'_, F> {
    fn drop(&mut self) {
        (self.0)(false);
    }
}

/// The link to one peer: connects (again, with backoff, after a failure) and writes the
/// queued messages, many per write, and a ping every `PING_INTERVAL`; ends when the queue
/// closes.
async fn send_loop(
    (me, cluster_id): (u64, u64),
    tls: Tls,
    id: u64,
    urls: Vec<String>,
    rx: glommio::channels::local_channel::LocalReceiver<Message>,
    up: Up,
) {
    let mut backoff = BACKOFF_MIN;
    let mark = |on: bool| up.set(on.then(std::time::Instant::now));
    let _ended = Ended(&mark);
    loop {
        match connect(&urls, &tls, MAGIC, me, cluster_id, id).await {
            Ok(s) => {
                backoff = BACKOFF_MIN;
                mark(true);
                tracing::info!(peer = %format!("{id:x}"), "peer link up");
                let (mut pongs, mut s) = futures_lite::io::split(s);
                let last_pong = Rc::new(std::cell::Cell::new(std::time::Instant::now()));
                let pong = last_pong.clone();
                glommio::spawn_local(async move {
                    let mut t = [0u8; 8];
                    while pongs.read_exact(&mut t).await.is_ok() {
                        pong.set(std::time::Instant::now());
                        let sent = u64::from_le_bytes(t);
                        let rtt = clock_nanos().saturating_sub(sent) as f64 / 1e9;
                        METRICS.peer_rtt(id, rtt);
                    }
                })
                .detach();
                let mut buf = Vec::new();
                let mut next_ping = std::time::Instant::now();
                loop {
                    buf.clear();
                    let wait = next_ping.saturating_duration_since(std::time::Instant::now());
                    let first = futures_lite::future::or(async { Some(rx.recv().await) }, async {
                        glommio::timer::sleep(wait).await;
                        None
                    })
                    .await;
                    match first {
                        Some(None) => return,
                        Some(Some(m)) => {
                            frame(&mut buf, &m);
                            for _ in 1..SEND_BATCH_MSGS {
                                match futures_lite::future::poll_once(rx.recv()).await {
                                    Some(Some(m)) => frame(&mut buf, &m),
                                    _ => break,
                                }
                            }
                        }
                        None => {
                            buf.extend_from_slice(&PING.to_le_bytes());
                            buf.extend_from_slice(&clock_nanos().to_le_bytes());
                            next_ping = std::time::Instant::now() + PING_INTERVAL;
                            // Pongs stopped: down until they come back.
                            let answering = last_pong.get().elapsed() < PONG_TIMEOUT;
                            if answering != up.get().is_some() {
                                mark(answering);
                            }
                        }
                    }
                    let written = async {
                        s.write_all(&buf).await?;
                        s.flush().await
                    };
                    if let Err(e) = written.await {
                        mark(false);
                        METRICS.peer_send_failed(id);
                        tracing::info!(peer = %format!("{id:x}"), error = %e, "peer link down");
                        break;
                    }
                    METRICS.peer_sent(id, buf.len() as u64);
                }
            }
            Err(e) => {
                tracing::debug!(peer = %format!("{id:x}"), error = %e, "cannot reach peer");
            }
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Asks the members at `urls` for the cluster id and for this member's id (the one the
/// cluster gave the member with `my_urls` as peer URLs), as a joining member must; the first
/// that answers wins.
pub(crate) async fn ask_identity(
    urls: &[String],
    tls: Option<&super::tls::PeerTls>,
    my_urls: &[String],
) -> io::Result<(u64, u64)> {
    let tls: Tls = tls.cloned().map(Rc::new);
    let mut last = io::Error::other("no peer to ask");
    let mine = serde_json::to_vec(my_urls).expect("URLs encode");
    for url in urls {
        let attempt = async {
            let mut s = connect(std::slice::from_ref(url), &tls, MAGIC, 0, 0, 0).await?;
            s.write_all(&(mine.len() as u32).to_le_bytes()).await?;
            s.write_all(&mine).await?;
            let mut ids = [0u8; 16];
            s.read_exact(&mut ids).await?;
            let word = |i: usize| u64::from_le_bytes(ids[i * 8..i * 8 + 8].try_into().expect("8"));
            Ok::<(u64, u64), io::Error>((word(0), word(1)))
        };
        match attempt.await {
            Ok((c, m)) if c != 0 && m != 0 => return Ok((c, m)),
            Ok(_) => last = io::Error::other(format!("{url}: this member is not in its cluster")),
            Err(e) => last = io::Error::other(format!("{url}: {e}")),
        }
    }
    Err(last)
}

fn frame(buf: &mut Vec<u8>, m: &Message) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    m.write_to_vec(buf).expect("a raft message encodes");
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// The host of a URL, as TLS names the server (an IP address or a DNS name).
fn server_name(url: &str) -> io::Result<rustls::pki_types::ServerName<'static>> {
    let hostport = host_port(url);
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => hostport,
    };
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::other(format!("{url}: {e}")))
}

async fn connect(
    urls: &[String],
    tls: &Tls,
    magic: &[u8; 8],
    me: u64,
    cluster_id: u64,
    to: u64,
) -> io::Result<Conn> {
    let mut last = io::Error::other("no peer URL");
    for url in urls {
        let addr = match url_addr(url) {
            Ok(a) => a,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let attempt = futures_lite::future::or(
            async {
                let s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))?;
                let _ = s.set_nodelay(true);
                let s: Conn = match tls {
                    Some(tls) => {
                        let connector = futures_rustls::TlsConnector::from(tls.client());
                        Box::new(connector.connect(server_name(url)?, s).await?)
                    }
                    None => Box::new(s),
                };
                Ok(s)
            },
            async {
                glommio::timer::sleep(CONNECT_TIMEOUT).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            },
        )
        .await;
        match attempt {
            Ok(mut s) => {
                let mut hello = Vec::with_capacity(HANDSHAKE_BYTES);
                hello.extend_from_slice(magic);
                for v in [cluster_id, me, to] {
                    hello.extend_from_slice(&v.to_le_bytes());
                }
                s.write_all(&hello).await?;
                s.flush().await?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Who this member is to its peers, and where what they send goes.
pub(crate) struct Here {
    pub me: u64,
    pub cluster_id: u64,
    /// The Raft loop's queue.
    pub events: Rc<LocalSender<Event>>,
    /// Members' peer URLs, for joining members' questions.
    pub directory: Directory,
    pub snapshots: Rc<Snapshots>,
}

async fn accept_loop(l: TcpListener, here: Rc<Here>, tls: Tls) {
    loop {
        match l.accept().await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let (here, tls) = (here.clone(), tls.clone());
                glommio::spawn_local(async move {
                    let s: Conn = match tls {
                        Some(tls) => {
                            let acceptor = futures_rustls::TlsAcceptor::from(tls.server());
                            let handshake = futures_lite::future::or(
                                async { Some(acceptor.accept(s).await) },
                                async {
                                    glommio::timer::sleep(CONNECT_TIMEOUT).await;
                                    None
                                },
                            )
                            .await;
                            match handshake {
                                Some(Ok(s)) => Box::new(s),
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "peer TLS handshake failed");
                                    return;
                                }
                                None => return,
                            }
                        }
                        None => Box::new(s),
                    };
                    if let Err(e) = receive(s, &here).await {
                        tracing::debug!(error = %e, "peer connection closed");
                    }
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                glommio::timer::sleep(BACKOFF_MIN).await;
            }
        }
    }
}

async fn receive(s: Conn, here: &Here) -> io::Result<()> {
    let (me, cluster_id, events, directory) =
        (here.me, here.cluster_id, &here.events, &here.directory);
    let mut r = futures_lite::io::BufReader::with_capacity(64 << 10, s);
    let mut hello = [0u8; HANDSHAKE_BYTES];
    r.read_exact(&mut hello).await?;
    let word = |i: usize| u64::from_le_bytes(hello[8 + 8 * i..16 + 8 * i].try_into().expect("8"));
    let snapshot = &hello[..8] == SNAPSHOT_MAGIC;
    if &hello[..8] != MAGIC && !snapshot {
        return Err(io::Error::other("not a ferrocd peer (bad handshake)"));
    }
    let (cid, from, to) = (word(0), word(1), word(2));
    if !snapshot && cid == 0 && to == 0 {
        // A joining member asks for the cluster id and its own id, by its peer URLs.
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await?;
        let len = u32::from_le_bytes(len) as usize;
        if len > 64 << 10 {
            return Err(io::Error::other("oversized identity question"));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        let urls: Vec<String> = serde_json::from_slice(&body).unwrap_or_default();
        let id = directory
            .borrow()
            .iter()
            .find(|(_, u)| !urls.is_empty() && u.iter().any(|x| urls.contains(x)))
            .map_or(0, |(id, _)| *id);
        let mut answer = cluster_id.to_le_bytes().to_vec();
        answer.extend_from_slice(&id.to_le_bytes());
        r.get_mut().write_all(&answer).await?;
        r.get_mut().flush().await?;
        return Ok(());
    }
    if cid != cluster_id || to != me {
        tracing::warn!(
            from = %format!("{from:x}"),
            cluster = %format!("{cid:x}"),
            to = %format!("{to:x}"),
            "refused a peer of another cluster or member"
        );
        return Err(io::Error::other("peer of another cluster or member"));
    }
    if snapshot {
        return receive_snapshot(r, from, me, events, &here.snapshots).await;
    }
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await?;
        if u32::from_le_bytes(len) == PING {
            let mut t = [0u8; 8];
            r.read_exact(&mut t).await?;
            r.get_mut().write_all(&t).await?;
            r.get_mut().flush().await?;
            continue;
        }
        let len = u32::from_le_bytes(len) as usize;
        METRICS.peer_received(from, 4 + len as u64);
        if len > PEER_FRAME_BYTES_MAX {
            return Err(io::Error::other(format!("peer frame of {len} bytes")));
        }
        buf.resize(len, 0);
        r.read_exact(&mut buf).await?;
        let m = Message::parse_from_bytes(&buf)
            .map_err(|e| io::Error::other(format!("undecodable raft message: {e}")))?;
        if m.from != from || m.to != me {
            return Err(io::Error::other("raft message not from the connected peer"));
        }
        if events.try_send(Event::Peer(m)).is_err() {
            METRICS.peer_dropped.fetch_add(1, Relaxed);
        }
    }
}
