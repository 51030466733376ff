//! TLS on client connections (rustls, on the glommio socket through futures-rustls), set up as
//! etcd sets up its `TLSInfo`: the certificate and key from PEM files; with a trusted CA file
//! (or `--client-cert-auth`), a client certificate signed by that CA is required. ALPN offers
//! h2 and http/1.1; what the connection then speaks is told apart as on plain TCP.

use std::sync::Arc;

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

/// Both sides of the peer links' TLS.
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

/// The peer links' TLS from the `peer-*` settings; an error names the file at fault.
pub fn peer_config(info: &TlsInfo) -> Result<PeerTls, String> {
    Ok(PeerTls {
        server: server_config(info)?,
        client: client_config(info)?,
    })
}
