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
use glommio::net::{TcpListener, TcpStream};
use protobuf::Message as _;
use raft::eraftpb::Message;

use super::metrics::METRICS;
use crate::limits::{PEER_FRAME_BYTES_MAX, PEER_QUEUE_MSGS};

const MAGIC: &[u8; 8] = b"ferrocd1";

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
}

/// The members' ids and peer URLs, kept current by the Raft loop: a joining member finds its
/// id here by its peer URLs.
pub(crate) type Directory = Rc<std::cell::RefCell<Vec<(u64, Vec<String>)>>>;

/// The senders towards every other member.
pub(crate) struct Peers {
    me: u64,
    cluster_id: u64,
    tls: Tls,
    /// Per member: its peer URLs and the queue of its link.
    out: HashMap<u64, (Vec<String>, LocalSender<Message>)>,
}

impl Peers {
    /// Starts the link to a member (added to the cluster, or known at start), or restarts it
    /// when its URLs changed; a link to the same URLs stays as it is.
    pub fn add(&mut self, id: u64, urls: Vec<String>) {
        if id == self.me || self.out.get(&id).is_some_and(|(u, _)| *u == urls) {
            return;
        }
        let (tx, rx) = local_channel::new_bounded(PEER_QUEUE_MSGS);
        // A replaced queue closes, and its link's task ends.
        self.out.insert(id, (urls.clone(), tx));
        let link = send_loop(self.me, self.cluster_id, self.tls.clone(), id, urls, rx);
        glommio::spawn_local(link).detach();
    }

    /// Ends the link to a member removed from the cluster.
    pub fn remove(&mut self, id: u64) {
        // The sender task ends when its queue closes.
        self.out.remove(&id);
    }

    /// Queues messages to their receivers; drops a message whose queue is full.
    pub fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            match self.out.get(&m.to) {
                Some((_, tx)) => {
                    if tx.try_send(m).is_err() {
                        METRICS.peer_dropped.fetch_add(1, Relaxed);
                    }
                }
                None => tracing::debug!(to = m.to, "raft message to an unknown member dropped"),
            }
        }
    }
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
/// (member id, peer URLs). Incoming messages go to `events`.
pub(crate) fn start(
    me: u64,
    cluster_id: u64,
    listen: &[SocketAddr],
    peers: &[(u64, Vec<String>)],
    events: Rc<LocalSender<Event>>,
    directory: Directory,
    tls: Option<super::tls::PeerTls>,
) -> io::Result<Peers> {
    let tls: Tls = tls.map(Rc::new);
    for addr in listen {
        let l = TcpListener::bind(addr)
            .map_err(|e| io::Error::other(format!("cannot listen on peer address {addr}: {e}")))?;
        let (events, dir, tls) = (events.clone(), directory.clone(), tls.clone());
        glommio::spawn_local(accept_loop(l, me, cluster_id, events, dir, tls)).detach();
    }
    let mut p = Peers {
        me,
        cluster_id,
        tls,
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

/// The link to one peer: connects (again, with backoff, after a failure) and writes the
/// queued messages, many per write, and a ping every `PING_INTERVAL`; ends when the queue
/// closes.
async fn send_loop(
    me: u64,
    cluster_id: u64,
    tls: Tls,
    id: u64,
    urls: Vec<String>,
    rx: glommio::channels::local_channel::LocalReceiver<Message>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match connect(&urls, &tls, me, cluster_id, id).await {
            Ok(s) => {
                backoff = BACKOFF_MIN;
                tracing::info!(peer = %format!("{id:x}"), "peer link up");
                let (mut pongs, mut s) = futures_lite::io::split(s);
                glommio::spawn_local(async move {
                    let mut t = [0u8; 8];
                    while pongs.read_exact(&mut t).await.is_ok() {
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
                        }
                    }
                    let written = async {
                        s.write_all(&buf).await?;
                        s.flush().await
                    };
                    if let Err(e) = written.await {
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
            let mut s = connect(std::slice::from_ref(url), &tls, 0, 0, 0).await?;
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
                hello.extend_from_slice(MAGIC);
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

async fn accept_loop(
    l: TcpListener,
    me: u64,
    cluster_id: u64,
    events: Rc<LocalSender<Event>>,
    directory: Directory,
    tls: Tls,
) {
    loop {
        match l.accept().await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let (events, dir, tls) = (events.clone(), directory.clone(), tls.clone());
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
                    if let Err(e) = receive(s, me, cluster_id, events, dir).await {
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

async fn receive(
    s: Conn,
    me: u64,
    cluster_id: u64,
    events: Rc<LocalSender<Event>>,
    directory: Directory,
) -> io::Result<()> {
    let mut r = futures_lite::io::BufReader::with_capacity(64 << 10, s);
    let mut hello = [0u8; HANDSHAKE_BYTES];
    r.read_exact(&mut hello).await?;
    let word = |i: usize| u64::from_le_bytes(hello[8 + 8 * i..16 + 8 * i].try_into().expect("8"));
    if &hello[..8] != MAGIC {
        return Err(io::Error::other("not a ferrocd peer (bad handshake)"));
    }
    let (cid, from, to) = (word(0), word(1), word(2));
    if cid == 0 && to == 0 {
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
