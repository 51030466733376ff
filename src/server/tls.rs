//! TLS on client connections (rustls, on the glommio socket through futures-rustls), set up as
//! etcd sets up its `TLSInfo`: the certificate and key from PEM files; with a trusted CA file
//! (or `--client-cert-auth`), a client certificate signed by that CA is required. ALPN offers
//! h2 and http/1.1; what the connection then speaks is told apart as on plain TCP.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::TlsInfo;

fn read_certs(what: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} {path}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// The server side of `info`; an error names the file and what is wrong with it.
pub fn server_config(info: &TlsInfo) -> Result<Arc<ServerConfig>, String> {
    let (Some(cert), Some(key)) = (&info.cert_file, &info.key_file) else {
        return Err("TLS needs cert-file and key-file".into());
    };
    let chain = read_certs("cert-file", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key-file {key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    // etcd requires and verifies client certificates as soon as a trusted CA is given.
    let builder = match &info.trusted_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("trusted-ca-file", ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("trusted-ca-file {ca}: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("trusted-ca-file {ca}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if info.client_cert_auth => return Err(
            "client-cert-auth needs trusted-ca-file (the CA client certificates must be signed by)"
                .into(),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("cert-file {cert} with key-file: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side of a peer link (`peer-*` settings, as etcd's peer transport): the
/// member's certificate is presented to the peer, whose certificate must be signed by the
/// trusted CA.
pub fn client_config(info: &TlsInfo) -> Result<Arc<ClientConfig>, String> {
    let (Some(cert), Some(key)) = (&info.cert_file, &info.key_file) else {
        return Err("TLS needs cert-file and key-file".into());
    };
    let Some(ca) = &info.trusted_ca_file else {
        return Err(
            "TLS on peer links needs trusted-ca-file (the CA peer certificates are signed by)"
                .into(),
        );
    };
    let mut roots = RootCertStore::empty();
    for c in read_certs("trusted-ca-file", ca)? {
        roots
            .add(c)
            .map_err(|e| format!("trusted-ca-file {ca}: {e}"))?;
    }
    let chain = read_certs("cert-file", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key-file {key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("cert-file {cert} with key-file: {e}"))?;
    Ok(Arc::new(config))
}

/// How often the files behind a TLS setup are looked at for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A TLS setup read again when its files change (certificate rotation without a restart, as
/// etcd does): each new connection asks for the current setup; at most once a second that
/// looks at the files' modification times and sizes, and rebuilds when one changed. A rebuild
/// that fails (a file half-written, a key that does not match) keeps the previous setup and is
/// logged; the next change is tried again.
pub struct Reloading<T> {
    info: TlsInfo,
    build: fn(&TlsInfo) -> Result<T, String>,
    state: Mutex<Loaded<T>>,
}

struct Loaded<T> {
    current: T,
    stamps: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
}

fn stamps(info: &TlsInfo) -> Vec<Option<(SystemTime, u64)>> {
    [&info.cert_file, &info.key_file, &info.trusted_ca_file]
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(PathBuf::from(f.as_deref()?)).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

impl<T: Clone> Reloading<T> {
    pub fn new(info: &TlsInfo, build: fn(&TlsInfo) -> Result<T, String>) -> Result<Self, String> {
        Ok(Reloading {
            state: Mutex::new(Loaded {
                current: build(info)?,
                stamps: stamps(info),
                checked: Instant::now(),
            }),
            info: info.clone(),
            build,
        })
    }

    /// The setup for a new connection.
    pub fn get(&self) -> T {
        let mut s = self.state.lock().expect("TLS setup lock");
        if s.checked.elapsed() >= RELOAD_CHECK {
            s.checked = Instant::now();
            let now = stamps(&self.info);
            if now != s.stamps {
                s.stamps = now;
                match (self.build)(&self.info) {
                    Ok(t) => {
                        s.current = t;
                        tracing::info!(cert = ?self.info.cert_file, "TLS: certificates reloaded");
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "TLS: the certificate files changed but cannot be used; keeping the previous ones"
                    ),
                }
            }
        }
        s.current.clone()
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reloading({:?})", self.info.cert_file)
    }
}

/// The client URLs' TLS, reloaded on change.
pub type ClientTls = Reloading<Arc<ServerConfig>>;

/// Both sides of the peer links' TLS, reloaded on change.
#[derive(Clone)]
pub struct PeerTls {
    both: Arc<Reloading<(Arc<ServerConfig>, Arc<ClientConfig>)>>,
}

impl PeerTls {
    /// The side that accepts a peer's connection.
    pub fn server(&self) -> Arc<ServerConfig> {
        self.both.get().0
    }

    /// The side that connects to a peer.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.both.get().1
    }
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

/// The peer links' TLS from the `peer-*` settings; an error names the file at fault.
pub fn peer_config(info: &TlsInfo) -> Result<PeerTls, String> {
    fn both(info: &TlsInfo) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), String> {
        Ok((server_config(info)?, client_config(info)?))
    }
    Ok(PeerTls {
        both: Arc::new(Reloading::new(info, both)?),
    })
}

/// The client URLs' TLS from the client settings, reloaded when its files change.
pub fn client_tls(info: &TlsInfo) -> Result<Arc<ClientTls>, String> {
    Ok(Arc::new(Reloading::new(info, server_config)?))
}
