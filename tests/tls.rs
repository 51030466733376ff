//! TLS on client URLs, compared with etcd: the same certificates (a CA, a server certificate
//! for 127.0.0.1, client certificates from that CA and from another), the same flags
//! (`--cert-file --key-file --trusted-ca-file --client-cert-auth`, an https:// client URL), the
//! same etcdctl and curl commands against both; what succeeds and what is refused must match.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcd_tools_or_skip, free_port, run, Output, ETCD, ETCDCTL};

/// A CA, a server certificate for 127.0.0.1 signed by it, a client certificate (CN root)
/// signed by it, and a client certificate signed by another CA.
/// X.509 extensions of a server certificate for 127.0.0.1, and of a client certificate.
const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
const CLIENT_EXT: &str = "extendedKeyUsage=clientAuth\n";

fn certificates(dir: &Path) {
    let server = SERVER_EXT;
    let client = CLIENT_EXT;
    common::certificates(
        dir,
        &["ca", "other-ca"],
        &[
            ("server", "ca", server, "/CN=server"),
            ("client", "ca", client, "/CN=root"),
            ("stranger", "other-ca", client, "/CN=root"),
        ],
    );
    // A client certificate of the right CA whose validity ended yesterday.
    std::fs::write(dir.join("expired.ext"), client).expect("extensions file");
    common::openssl(
        dir,
        &[
            "req",
            "-subj",
            "/CN=root",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "expired.key",
            "-out",
            "expired.csr",
        ],
    );
    common::openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "-1",
            "-in",
            "expired.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "expired.ext",
            "-out",
            "expired.crt",
        ],
    );
}

/// A server with TLS on its client URL, killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsServer {
    fn start(bin: &str, dir: &Path, name: &str, peer_port: u16) -> TlsServer {
        TlsServer::start_with(bin, dir, name, peer_port, &[])
    }

    fn start_with(bin: &str, dir: &Path, name: &str, peer_port: u16, extra: &[&str]) -> TlsServer {
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = dir.join(format!("{name}.log"));
        let p = |f: &str| dir.join(f).display().to_string();
        let args = [
            "--name".to_string(),
            "t".into(),
            "--data-dir".into(),
            p(&format!("{name}.data")),
            "--listen-client-urls".into(),
            url.clone(),
            "--advertise-client-urls".into(),
            url,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("t={peer}"),
            "--cert-file".into(),
            p("server.crt"),
            "--key-file".into(),
            p("server.key"),
            "--trusted-ca-file".into(),
            p("ca.crt"),
            "--client-cert-auth".into(),
        ];
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let s = TlsServer { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ctl(&s, dir, "client", &["endpoint", "health"]).code != 0 {
            assert!(
                Instant::now() < deadline,
                "{name} not healthy over TLS in 30 s:\n{}",
                std::fs::read_to_string(&s.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }
}

/// etcdctl over TLS with the given client certificate ("" for none).
fn ctl(s: &TlsServer, dir: &Path, cert: &str, args: &[&str]) -> Output {
    let p = |f: &str| dir.join(f).display().to_string();
    let mut a = vec![
        format!("--endpoints=https://127.0.0.1:{}", s.port),
        format!("--cacert={}", p("ca.crt")),
        "--dial-timeout=2s".to_string(),
        "--command-timeout=3s".to_string(),
    ];
    if !cert.is_empty() {
        a.push(format!("--cert={}", p(&format!("{cert}.crt"))));
        a.push(format!("--key={}", p(&format!("{cert}.key"))));
    }
    a.extend(args.iter().map(|s| s.to_string()));
    run(ETCDCTL, &[("ETCDCTL_API", "3")], &a, "")
}

fn curl(s: &TlsServer, dir: &Path, cert: &str, method: &str, path: &str, body: &str) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    let mut a = vec![
        "-s".to_string(),
        "--max-time".into(),
        "3".into(),
        "--cacert".into(),
        p("ca.crt"),
        "-w".into(),
        " HTTP %{http_code}".into(),
        "-X".into(),
        method.into(),
    ];
    if !cert.is_empty() {
        a.extend([
            "--cert".into(),
            p(&format!("{cert}.crt")),
            "--key".into(),
            p(&format!("{cert}.key")),
        ]);
    }
    if !body.is_empty() {
        a.extend(["-d".to_string(), body.to_string()]);
    }
    a.push(format!("https://127.0.0.1:{}{path}", s.port));
    let out = Command::new("curl").args(&a).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What both servers are asked, reduced to what must be the same.
fn steps(s: &TlsServer, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let ok = |o: &Output| {
        if o.code == 0 {
            "ok".to_string()
        } else {
            "refused".to_string()
        }
    };
    out.push(format!(
        "put: {:?}",
        ctl(s, dir, "client", &["put", "k", "v"])
    ));
    out.push(format!(
        "get: {:?}",
        ctl(s, dir, "client", &["get", "k", "--print-value-only"])
    ));
    out.push(format!(
        "no client certificate: {}",
        ok(&ctl(s, dir, "", &["get", "k"]))
    ));
    out.push(format!(
        "certificate from another CA: {}",
        ok(&ctl(s, dir, "stranger", &["get", "k"]))
    ));
    let plain = run(
        ETCDCTL,
        &[("ETCDCTL_API", "3")],
        &[
            format!("--endpoints=http://127.0.0.1:{}", s.port),
            "--dial-timeout=2s".to_string(),
            "--command-timeout=3s".to_string(),
            "get".to_string(),
            "k".to_string(),
        ],
        "",
    );
    out.push(format!("plain text to the TLS port: {}", ok(&plain)));
    let health = curl(s, dir, "client", "GET", "/health", "");
    out.push(format!(
        "curl /health: {}",
        if health.contains("\"health\":\"true\"") && health.ends_with("HTTP 200") {
            "healthy"
        } else {
            &health
        }
    ));
    let anonymous = curl(s, dir, "", "GET", "/health", "");
    out.push(format!(
        "curl without a certificate: {}",
        if anonymous.ends_with("HTTP 000") {
            "refused"
        } else {
            &anonymous
        }
    ));
    // Refused clients write nothing.
    for cert in ["expired", "stranger", ""] {
        let put = ctl(s, dir, cert, &["put", "k", "from a refused client"]);
        out.push(format!("put with certificate {cert:?}: {}", ok(&put)));
    }
    out.push(format!(
        "get after the refused puts: {:?}",
        ctl(s, dir, "client", &["get", "k", "--print-value-only"]).stdout
    ));
    out
}

#[test]
fn tls_client_urls_behave_as_etcds() {
    if !etcd_tools_or_skip("tls_client_urls_behave_as_etcds") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let peer = free_port();
    let want = {
        let etcd = TlsServer::start(ETCD, dir.path(), "etcd", peer);
        steps(&etcd, dir.path())
    };
    let ferrocd_bin = env!("CARGO_BIN_EXE_ferrocd");
    let got = {
        let ferrocd = TlsServer::start(ferrocd_bin, dir.path(), "ferrocd", peer);
        steps(&ferrocd, dir.path())
    };
    // The JSON gateway over TLS with client certificates: etcd 3.4.23's fails (its gateway
    // dials its own gRPC server without a client certificate: "transport: failed to write
    // client preface ... connection reset by peer", code 14), so that one is not compared.
    // Its connections go to a shard other than the one that accepted them half the time, and
    // to one that does not hold the state always: TLS on a connection handed over.
    {
        let placement = ["--shards", "2", "--connection-placement", "others"];
        let ferrocd =
            TlsServer::start_with(ferrocd_bin, dir.path(), "ferrocd2", free_port(), &placement);
        ctl(&ferrocd, dir.path(), "client", &["put", "k", "v"]);
        let range = curl(
            &ferrocd,
            dir.path(),
            "client",
            "POST",
            "/v3/kv/range",
            r#"{"key":"aw=="}"#,
        );
        assert!(range.contains(r#""value":"dg==""#), "{range}");
    }
    assert!(want[0].contains("OK"), "{want:#?}");
    assert!(
        want[2].ends_with("refused") && want[3].ends_with("refused"),
        "{want:#?}"
    );
    assert!(
        want[7].ends_with("refused"),
        "an expired certificate: {want:#?}"
    );
    assert!(want.last().unwrap().ends_with("\"v\\n\""), "{want:#?}");
    assert_eq!(want, got, "etcd:\n{want:#?}\nferrocd:\n{got:#?}");
}

/// What ferrocd prints when it refuses to start with these flags (on an https URL).
fn refused_start(dir: &Path, flags: &[String]) -> String {
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let data = dir.join("data").display().to_string();
    let mut args = vec![
        "--data-dir".to_string(),
        data,
        "--listen-client-urls".into(),
        url.clone(),
        "--advertise-client-urls".into(),
        url,
    ];
    args.extend_from_slice(flags);
    let out = Command::new(env!("CARGO_BIN_EXE_ferrocd"))
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {flags:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_tls_files_are_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.crt"), "").unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let flags = [
        "--cert-file".to_string(),
        p("empty.crt"),
        "--key-file".into(),
        p("missing.key"),
    ];
    let stderr = refused_start(dir.path(), &flags);
    assert!(
        stderr.contains("empty.crt") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
    // An https URL without a certificate is refused, naming what is missing.
    let stderr = refused_start(dir.path(), &[]);
    assert!(stderr.contains("--cert-file"), "{stderr}");
}

/// With `--client-cert-auth` and auth enabled, a verified client certificate's common name is
/// the user when no token is given (etcd's): alice's certificate may do what alice may, a
/// certificate naming no user may do nothing, a token wins over the certificate. Compared with
/// etcd.
#[test]
fn client_certificate_names_are_users_as_on_etcd() {
    if !etcd_tools_or_skip("client_certificate_names_are_users_as_on_etcd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = SERVER_EXT;
    let client = CLIENT_EXT;
    common::certificates(
        dir.path(),
        &["ca"],
        &[
            ("server", "ca", server, "/CN=server"),
            ("client", "ca", client, "/CN=root"),
            ("alice", "ca", client, "/CN=alice"),
            ("mallory", "ca", client, "/O=x/CN=mallory"),
        ],
    );
    let steps = |s: &TlsServer| -> Vec<String> {
        let script: &[(&str, &[&str])] = &[
            ("client", &["user", "add", "root:rootpw"]),
            ("client", &["user", "add", "alice:apw"]),
            ("client", &["role", "add", "r"]),
            (
                "client",
                &["role", "grant-permission", "r", "readwrite", "foo"],
            ),
            ("client", &["user", "grant-role", "alice", "r"]),
            ("client", &["auth", "enable"]),
            ("alice", &["put", "foo", "v"]),
            ("alice", &["get", "foo"]),
            ("alice", &["put", "bar", "v"]),
            ("alice", &["user", "list"]),
            ("mallory", &["get", "foo"]),
            ("client", &["user", "list"]),
            ("alice", &["--user", "root:rootpw", "user", "list"]),
            ("client", &["--user", "alice:apw", "user", "list"]),
        ];
        script
            .iter()
            .map(|(cert, args)| {
                let o = ctl(s, dir.path(), cert, args);
                let err: Vec<&str> = o
                    .stderr
                    .lines()
                    .filter(|l| !l.starts_with("{\"level\""))
                    .collect();
                format!(
                    "{cert} {args:?}: code {}\n{}{}",
                    o.code,
                    o.stdout,
                    err.join("\n")
                )
            })
            .collect()
    };
    let peer = free_port();
    let want = steps(&TlsServer::start(ETCD, dir.path(), "etcd", peer));
    let got = steps(&TlsServer::start(
        env!("CARGO_BIN_EXE_ferrocd"),
        dir.path(),
        "ferrocd",
        peer,
    ));
    assert!(want[6].contains("OK"), "alice's certificate: {want:#?}");
    assert!(want[8].contains("permission denied"), "{want:#?}");
    assert!(want[10].contains("permission denied"), "{want:#?}");
    assert_eq!(want, got, "etcd:\n{want:#?}\nferrocd:\n{got:#?}");
}

/// A certificate rotated on disk is served to new connections without a restart (etcd reloads
/// its certificates too): the server's certificate and key are replaced by ones from another
/// CA; within a few seconds clients trusting the new CA connect and those trusting only the
/// old one are refused.
#[test]
fn rotated_certificates_are_served_without_a_restart() {
    if !etcd_tools_or_skip("rotated_certificates_are_served_without_a_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = SERVER_EXT;
    let client = CLIENT_EXT;
    common::certificates(
        dir.path(),
        &["ca", "ca2"],
        &[
            ("server", "ca", server, "/CN=server"),
            ("server2", "ca2", server, "/CN=server"),
            ("client", "ca", client, "/CN=root"),
        ],
    );
    let s = TlsServer::start(
        env!("CARGO_BIN_EXE_ferrocd"),
        dir.path(),
        "ferrocd",
        free_port(),
    );
    let p = |f: &str| dir.path().join(f).display().to_string();
    let with_ca = |ca: &str, args: &[&str]| {
        let mut a = vec![
            format!("--endpoints=https://127.0.0.1:{}", s.port),
            format!("--cacert={}", p(ca)),
            format!("--cert={}", p("client.crt")),
            format!("--key={}", p("client.key")),
            "--dial-timeout=2s".to_string(),
            "--command-timeout=3s".to_string(),
        ];
        a.extend(args.iter().map(|x| x.to_string()));
        run(ETCDCTL, &[("ETCDCTL_API", "3")], &a, "")
    };
    assert_eq!(with_ca("ca.crt", &["put", "k", "v1"]).code, 0);
    assert_ne!(
        with_ca("ca2.crt", &["get", "k"]).code,
        0,
        "not yet the new CA"
    );
    // Rotate: new files written beside, then renamed over the old ones.
    for (from, to) in [("server2.key", "server.key"), ("server2.crt", "server.crt")] {
        std::fs::copy(p(from), p(&format!("{to}.new"))).unwrap();
        std::fs::rename(p(&format!("{to}.new")), p(to)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = with_ca("ca2.crt", &["get", "k", "--print-value-only"]);
        if out.code == 0 {
            assert_eq!(out.stdout, "v1\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not served: {out:?}\n{}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = with_ca("ca.crt", &["get", "k"]);
    assert_ne!(out.code, 0, "the old certificate is still served: {out:?}");
    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
    assert!(log.contains("certificates reloaded"), "{log}");
}
