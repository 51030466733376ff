//! Accepting connections and telling the protocols apart: the HTTP/2 client preface means
//! gRPC (served by our own HTTP/2 layer, `h2srv`), an HTTP/1.x request line means the HTTP/1.1 handler, and anything
//! else is closed. One port serves both, as etcd's does (it uses cmux).

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};

use super::balance::{Balance, Counted, Handed};
use super::{grpc, h2srv, http1, ShardCtx};
use glommio::channels::shared_channel::ConnectedReceiver;

/// Bytes read before deciding the protocol.
const SNIFF_BYTES: usize = 4;

/// A listener on `addr` for a shard, as `glommio::net::TcpListener::bind` makes it (every
/// shard listens on the same client address, SO_REUSEPORT) but with SO_REUSEADDR too, as Go's
/// listeners (etcd's) have: without it, the port of a server stopped a moment ago (etcd
/// replaced by ferrocd, say) stays refused while its closed connections are in TIME_WAIT, up
/// to a minute, since those did not have SO_REUSEPORT.
pub(crate) fn listen(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let sk = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_address(true)?;
    sk.set_reuse_port(true)?;
    sk.bind(&addr.into())?;
    sk.listen(1024)?;
    // SAFETY: a listening TCP socket this function owns and hands over whole.
    Ok(unsafe { TcpListener::from_raw_fd(sk.into_raw_fd()) })
}

/// Fails if another socket listens on `addr` (another server on the same port), before this
/// server's own listeners are made: those have SO_REUSEPORT (every shard listens on the
/// client address), which would let a second server started on the same port take a share
/// of its connections without a word. A plain bind (SO_REUSEADDR alone) is refused by any
/// listener there, so a second ferrocd fails to start with "address already in use", as a
/// second etcd does. A refusal is retried for up to [`TAKEN_RETRY`]: a server killed a moment
/// ago may keep its listener open after its process is reaped, until the kernel tears down its
/// io_uring (which holds a pending accept on it). Limits: a server checks before its recovery
/// and listens after it, so two started together can both pass; and the closed connections
/// of a ferrocd built before 2026-11-27 (listeners without SO_REUSEADDR) refuse the port until
/// their TIME_WAIT ends, up to a minute, at the first start after an upgrade.
pub(crate) fn refuse_if_taken(addr: std::net::SocketAddr) -> io::Result<()> {
    let deadline = std::time::Instant::now() + TAKEN_RETRY;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(()),
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long [`refuse_if_taken`] retries a refused address.
const TAKEN_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Accepts connections on `listener`; with a placement (the shard's, and the listener's index
/// among the client addresses), each goes to the shard that should serve it.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Rc<ShardCtx>,
    tls: Option<Arc<super::tls::ClientTls>>,
    placement: Option<(Rc<Balance>, usize)>,
) {
    loop {
        match listener.shared_accept().await {
            Ok(accepted) => {
                let (stream, counted) = match &placement {
                    None => (accepted.bind_to_executor(), None),
                    Some((balance, index)) => match balance.place(*index, accepted) {
                        Some((mine, counted)) => (mine.bind_to_executor(), Some(counted)),
                        None => continue,
                    },
                };
                spawn_serving(stream, ctx.clone(), tls.clone(), counted);
            }
            Err(e) => {
                // Out of file descriptors and the like: log, back off a little, go on.
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves the connections other shards hand to this one (`tls`: each client address's TLS
/// settings, by index).
pub(crate) async fn take_handed(
    handed: ConnectedReceiver<Handed>,
    ctx: Rc<ShardCtx>,
    tls: Rc<[Option<Arc<super::tls::ClientTls>>]>,
    balance: Rc<Balance>,
) {
    while let Some((index, accepted)) = handed.recv().await {
        // Every shard has the same client addresses in the same order.
        let tls = tls.get(index).cloned().expect("a client address's index");
        let counted = Some(balance.counted_here());
        spawn_serving(accepted.bind_to_executor(), ctx.clone(), tls, counted);
    }
}

fn spawn_serving(
    stream: TcpStream,
    ctx: Rc<ShardCtx>,
    tls: Option<Arc<super::tls::ClientTls>>,
    counted: Option<Counted>,
) {
    glommio::spawn_local(async move {
        let served = match tls {
            None => serve(stream, ctx).await,
            Some(tls) => serve_tls(stream, tls, ctx).await,
        };
        if let Err(e) = served {
            tracing::debug!(error = %e, "connection closed");
        }
        drop(counted);
    })
    .detach();
}

/// A TLS connection: the handshake (bounded in time), then as plain TCP.
async fn serve_tls(
    stream: TcpStream,
    tls: Arc<super::tls::ClientTls>,
    ctx: Rc<ShardCtx>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let acceptor = futures_rustls::TlsAcceptor::from(tls.get());
    let handshake =
        futures_lite::future::or(async { Some(acceptor.accept(stream).await) }, async {
            glommio::timer::sleep(TLS_HANDSHAKE_TIMEOUT).await;
            None
        });
    match handshake.await {
        Some(Ok(stream)) => {
            // With client certificates required, the handshake verified this one.
            let cn = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(super::access::common_name)
                .map(Rc::from);
            serve_any(stream, ctx, cn).await
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            Ok(())
        }
        None => {
            tracing::debug!("TLS handshake timed out");
            Ok(())
        }
    }
}

/// How long a client has to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn serve(stream: TcpStream, ctx: Rc<ShardCtx>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    serve_any(stream, ctx, None).await
}

/// Tells the protocol from the first bytes and serves it.
async fn serve_any<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    mut stream: S,
    ctx: Rc<ShardCtx>,
    common_name: Option<Rc<str>>,
) -> io::Result<()> {
    let mut head = [0u8; SNIFF_BYTES];
    let mut got = 0;
    while got < SNIFF_BYTES {
        let n = stream.read(&mut head[got..]).await?;
        if n == 0 {
            return Ok(());
        }
        got += n;
    }
    let prefixed = Prefixed {
        prefix: Bytes::copy_from_slice(&head),
        inner: stream,
    };
    if h2srv::PREFACE.starts_with(&head) && !ctx.metrics_only {
        serve_h2(prefixed, ctx, common_name).await;
        Ok(())
    } else if http1::looks_like_request(&head) {
        http1::serve(prefixed, ctx).await
    } else {
        tracing::debug!(first_bytes = ?head, "not HTTP: closing");
        Ok(())
    }
}

async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    io: Prefixed<S>,
    ctx: Rc<ShardCtx>,
    common_name: Option<Rc<str>>,
) {
    let mut conn = h2srv::Connection::new(io);
    while let Some((req, respond)) = conn.accept().await {
        let cn = common_name.clone();
        glommio::spawn_local(grpc::handle(req, respond, ctx.clone(), cn)).detach();
    }
}

/// A stream that first yields bytes already read from it (the protocol sniff).
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    pub(crate) inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.len());
            buf[..n].copy_from_slice(&self.prefix[..n]);
            let _ = self.prefix.split_to(n);
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
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
    use std::io::{Read, Write};

    /// A port whose last server closed its connections a moment ago (they are in TIME_WAIT, and
    /// that server's sockets had SO_REUSEADDR but not SO_REUSEPORT, as std's and Go's) can be
    /// listened on at once. With glommio's own bind (SO_REUSEPORT alone) it is refused.
    #[test]
    fn a_port_just_left_by_another_server_can_be_listened_on() {
        let before = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = before.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (mut served, _) = before.accept().unwrap();
        // The server closes first: its side of the connection goes to TIME_WAIT.
        served.write_all(b"bye").unwrap();
        drop(served);
        let mut buf = [0u8; 8];
        while client.read(&mut buf).unwrap() > 0 {}
        drop(client);
        drop(before);
        glommio::LocalExecutor::default().run(async move {
            super::refuse_if_taken(addr).expect("nothing listens there");
            let l = super::listen(addr).expect("listening on a port in TIME_WAIT");
            assert_eq!(l.local_addr().unwrap(), addr);
        });
    }

    /// A port another server listens on (with SO_REUSEPORT, as ferrocd's shards) is refused,
    /// though `listen` itself would share it.
    #[test]
    fn a_port_another_server_listens_on_is_refused() {
        glommio::LocalExecutor::default().run(async move {
            let other = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = other.local_addr().unwrap();
            let e = super::refuse_if_taken(addr).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
            drop(other);
            super::refuse_if_taken(addr).expect("free again");
        });
    }
}
