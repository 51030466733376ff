//! The tutorial's etcd configuration file (tests/data/seed-etcd-config.yml, a copy of the
//! user's seed) parses as it is, auth keys included (tests/auth.rs starts a server with it).
//! Its TLS sections are read.

use ferrocd::config::Config;

fn seed_with_ip(ip: &str) -> tempfile::NamedTempFile {
    let text = std::fs::read_to_string("tests/data/seed-etcd-config.yml").unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text.replace("<NODE-IP>", ip)).unwrap();
    f
}

#[test]
fn the_seed_config_is_read_as_it_is() {
    let f = seed_with_ip("127.0.0.1");
    let c =
        Config::from_args(["--config-file".to_string(), f.path().display().to_string()]).unwrap();
    assert_eq!(c.auth_token, "some-secret-token");
    assert!(c.enable_authorization);
    assert_eq!(c.auth_token_ttl_secs, 300);
    assert_eq!(c.bcrypt_cost, 10);
    assert!(ferrocd::auth::TokenKind::from_spec(&c.auth_token).is_ok());
}

#[test]
fn the_seed_with_one_member_resolves_its_settings() {
    let text = std::fs::read_to_string("tests/data/seed-etcd-config.yml").unwrap();
    // One member (the seed's two share one peer URL), without the auth keys (read by
    // the_seed_config_is_read_as_it_is): the auto-compaction and TLS settings resolve.
    let mut kept = Vec::new();
    let mut skipping_section = false;
    for line in text.replace("<NODE-IP>", "127.0.0.1").lines() {
        let is_key = !line.starts_with(' ') && !line.starts_with('#') && line.contains(':');
        if is_key {
            let key = line.split(':').next().unwrap();
            skipping_section = ["auth-token", "enable-authorization"].contains(&key);
        }
        if skipping_section {
            continue;
        }
        if line.starts_with("initial-cluster:") {
            kept.push("initial-cluster: node-1=http://127.0.0.1:2380".to_string());
        } else {
            kept.push(line.to_string());
        }
    }
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), kept.join("\n")).unwrap();
    let c =
        Config::from_args(["--config-file".to_string(), f.path().display().to_string()]).unwrap();
    assert_eq!(c.name, "node-1");
    assert_eq!(c.data_dir, "/var/lib/etcd/default.etcd");
    assert_eq!(
        c.listen_client_urls,
        ["http://127.0.0.1:2379", "http://127.0.0.1:2379"]
    );
    assert_eq!(c.initial_cluster_token, "etcd-cluster-1");
    assert_eq!(
        c.auto_compaction,
        ferrocd::compactor::AutoCompaction::Periodic(std::time::Duration::from_secs(3600))
    );
    assert_eq!(
        c.client_tls,
        ferrocd::config::TlsInfo {
            cert_file: Some("/etc/etcd/server.crt".into()),
            key_file: Some("/etc/etcd/server.key".into()),
            trusted_ca_file: Some("/etc/etcd/ca.crt".into()),
            client_cert_auth: true,
        }
    );
    assert_eq!(c.peer_tls.cert_file.as_deref(), Some("/etc/etcd/peer.crt"));
}

#[test]
fn a_placeholder_left_in_a_url_is_named() {
    let text = std::fs::read_to_string("tests/data/seed-etcd-config.yml").unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    // Not filled in, the <NODE-IP> placeholder is named.
    std::fs::write(f.path(), text).unwrap();
    let e = Config::from_args(["--config-file".to_string(), f.path().display().to_string()])
        .unwrap_err();
    assert!(e.0.contains("<NODE-IP>"), "{e}");
}
