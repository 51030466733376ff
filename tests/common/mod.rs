//! Process harness for end-to-end tests: free loopback ports, servers started with temporary
//! data dirs and stopped on drop, bounded waits, and real etcdctl.
//!
//! When etcd's tools are missing, a test fails under CI (CI=true) and says SKIPPED loudly
//! otherwise: a skipped check is never reported as a pass in CI.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// True when etcd and etcdctl are installed. Under CI a missing tool fails the test.
pub fn etcd_tools_or_skip(test: &str) -> bool {
    let present = Path::new(ETCD).exists() && Path::new(ETCDCTL).exists();
    if !present {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: {ETCD} or {ETCDCTL} missing under CI (apt-get install etcd-server etcd-client)");
        }
        eprintln!("SKIPPED {test}: etcd or etcdctl is not installed (apt-get install etcd-server etcd-client)");
    }
    present
}

/// Hides a test server's port in a client's output, only where it follows a host
/// (`127.0.0.1:PORT`, `localhost:PORT`), so that a number which merely contains the port's
/// digits (a lease id, a size) is left alone: a bare replace once turned part of a lease id
/// into `<PORT>` and failed a comparison in CI.
pub fn hide_port(s: &str, port: u16) -> String {
    let mut out = s.to_string();
    for host in ["127.0.0.1", "localhost"] {
        let needle = format!("{host}:{port}");
        let mut done = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&needle) {
            let after = &rest[i + needle.len()..];
            done.push_str(&rest[..i]);
            if after.starts_with(|c: char| c.is_ascii_digit()) {
                done.push_str(&needle);
            } else {
                done.push_str(host);
                done.push_str(":<PORT>");
            }
            rest = after;
        }
        done.push_str(rest);
        out = done;
    }
    out
}

/// A port nothing listens on right now, and never handed out before by this test process
/// (the kernel may give a port just released again: two members once got the same peer URL,
/// hence the same member id).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no loopback port not handed out before in 1000 tries");
}

/// A server process, killed and reaped on drop.
pub struct Server {
    child: Child,
    bin: String,
    args: Vec<String>,
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: tempfile::TempDir,
    log: PathBuf,
    pub kind: &'static str,
}

impl Server {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// ferrocd with etcd's flags on free loopback ports; `extra` adds flags.
    pub fn ferrocd(extra: &[&str]) -> Server {
        Self::start("ferrocd", env!("CARGO_BIN_EXE_ferrocd"), free_port(), extra)
    }

    /// ferrocd advertising `peer_port` (which it does not bind yet: there is no Raft), so that
    /// its member and cluster ids equal those of an etcd started with the same peer URL.
    pub fn ferrocd_with_peer_port(peer_port: u16, extra: &[&str]) -> Server {
        Self::start("ferrocd", env!("CARGO_BIN_EXE_ferrocd"), peer_port, extra)
    }

    /// Real etcd (Debian's 3.4) on free loopback ports.
    pub fn etcd(extra: &[&str]) -> Server {
        Self::start("etcd", ETCD, free_port(), extra)
    }

    /// ferrocd started through `taskset -c CPUS` (its affinity mask set before it starts).
    pub fn ferrocd_on_cpus(cpus: &str, extra: &[&str]) -> Server {
        let ferrocd = env!("CARGO_BIN_EXE_ferrocd");
        Self::start_with(
            "ferrocd",
            "taskset",
            &["-c", cpus, ferrocd],
            free_port(),
            extra,
        )
    }

    fn start(kind: &'static str, bin: &str, peer_port: u16, extra: &[&str]) -> Server {
        Self::start_with(kind, bin, &[], peer_port, extra)
    }

    /// `bin` with `prefix`, then the flags.
    fn start_with(
        kind: &'static str,
        bin: &str,
        prefix: &[&str],
        peer_port: u16,
        extra: &[&str],
    ) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let client_port = free_port();
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let data = dir.path().join("data");
        let mut args: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--name".to_string(),
            "t".to_string(),
            "--data-dir".to_string(),
            data.display().to_string(),
            "--listen-client-urls".to_string(),
            client.clone(),
            "--advertise-client-urls".to_string(),
            client,
            "--listen-peer-urls".to_string(),
            peer.clone(),
            "--initial-advertise-peer-urls".to_string(),
            peer.clone(),
            "--initial-cluster".to_string(),
            format!("t={peer}"),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Self::launch(kind, bin, args, client_port, peer_port, dir);
        s.wait_healthy();
        s
    }

    /// Starts `bin` with exactly `args` (which name `client_port`, `peer_port` and a data dir
    /// inside `dir`), without waiting for it: members of a cluster are healthy only together.
    pub fn launch(
        kind: &'static str,
        bin: &str,
        args: Vec<String>,
        client_port: u16,
        peer_port: u16,
        dir: tempfile::TempDir,
    ) -> Server {
        let log = dir.path().join("server.log");
        let child = spawn(bin, &args, &log);
        Server {
            child,
            bin: bin.to_string(),
            args,
            client_port,
            peer_port,
            dir,
            log,
            kind,
        }
    }

    /// Starts the same server again after `kill9`, without waiting for it.
    pub fn relaunch(&mut self) {
        self.child = spawn(&self.bin, &self.args, &self.log);
    }

    /// Waits until `/health` answers healthy (fails the test after a bounded time).
    pub fn wait_healthy(&mut self) {
        self.wait_answering(false)
    }

    /// Waits until `/health` answers: healthy, or (`alarmed`) unhealthy (etcd 3.4 gives no
    /// reason; an alarm is the only cause on a single member).
    fn wait_answering(&mut self, alarmed: bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} while starting:\n{}",
                    self.kind,
                    self.log()
                );
            }
            match http_get(self.client_port, "/health") {
                Some((200, body)) if body.contains("true") => return,
                Some((503, body)) if alarmed && body.contains("false") => return,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{} not healthy after {START_TIMEOUT:?}:\n{}",
                self.kind,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the process and waits for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same server again (same data dir and ports), after `kill9`.
    pub fn restart(&mut self) {
        self.child = spawn(&self.bin, &self.args, &self.log);
        self.wait_healthy();
    }

    /// As `restart`, for a server whose NOSPACE alarm makes `/health` answer 503.
    pub fn restart_alarmed(&mut self) {
        self.child = spawn(&self.bin, &self.args, &self.log);
        self.wait_answering(true);
    }

    /// Freezes the process (SIGSTOP): to its peers it is as if cut off, until `resume`.
    pub fn pause(&self) {
        // SAFETY: kill(2) with a pid this harness started; no memory is touched.
        unsafe { libc_kill(self.child.id() as i32, 19) };
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        // SAFETY: as in `pause`.
        unsafe { libc_kill(self.child.id() as i32, 18) };
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's anonymous resident memory (heap and stacks, not the log's file mapping),
    /// in bytes, from /proc.
    pub fn rss_anon(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("RssAnon in /proc status")
            * 1024
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &str, args: &[String], log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// A bounded HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Response headers, names in lower case.
pub type Headers = Vec<(String, String)>;

/// A bounded HTTP/1.1 request on loopback (the connection closes after it): the status, the
/// headers and the body, de-chunked.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, Headers, String)> {
    http_exchange(port, method, path, body).ok()
}

/// As `http_request`, with extra request headers.
pub fn http_request_with(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, Headers, String)> {
    exchange(port, method, path, body, headers).ok()
}

/// As `http_request`, saying what went wrong: the connection, the read, or the answer's form.
pub fn http_exchange(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, Headers, String), String> {
    exchange(port, method, path, body, &[])
}

fn exchange(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Headers, String), String> {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        // etcd (Go's net/http) may reset a `Connection: close` connection whose request body
        // it did not read, after its whole answer was sent: an answer complete by its
        // Content-Length is an answer.
        if !complete_by_length(&raw) {
            let got = String::from_utf8_lossy(&raw);
            return Err(format!("read after {} bytes {got:?}: {e}", raw.len()));
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let form = || format!("malformed answer {text:?}");
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(form)?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1)?.parse().ok())
        .ok_or_else(form)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        loop {
            let (size, after) = rest.split_once("\r\n").ok_or_else(form)?;
            let size = usize::from_str_radix(size.trim(), 16).map_err(|_| form())?;
            if size == 0 {
                break;
            }
            out.push_str(after.get(..size).ok_or_else(form)?);
            rest = after.get(size + 2..).ok_or_else(form)?;
        }
        out
    } else {
        rest.to_string()
    };
    Ok((status, headers, body))
}

/// Whether `raw` holds an HTTP answer head and as many body bytes as its Content-Length says.
fn complete_by_length(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "content-length").then(|| v.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|n| raw.len() >= end + 4 + n)
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

/// Runs `bin` with `args`, `stdin` fed in, killed after a timeout.
pub fn run(bin: &str, env: &[(&str, &str)], args: &[String], stdin: &str) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(data.as_bytes());
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let Some(status) = wait_or_kill(&mut child, COMMAND_TIMEOUT) else {
        panic!("{bin} {args:?} did not finish in {COMMAND_TIMEOUT:?}");
    };
    let _ = writer.join();
    Output {
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        code: status.code().unwrap_or(-1),
    }
}

/// Waits for `child` at most `timeout`; kills and reaps it when it has not ended by then.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Real etcdctl (API v3) against `endpoint`.
pub fn etcdctl(endpoint: &str, args: &[&str], stdin: &str) -> Output {
    let mut a = vec![format!("--endpoints={endpoint}")];
    a.extend(args.iter().map(|s| s.to_string()));
    run(ETCDCTL, &[("ETCDCTL_API", "3")], &a, stdin)
}

/// A long-running command (etcdctl watch, lock, elect) whose output is collected as it comes;
/// killed on drop.
pub struct Background {
    child: Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Real etcdctl (API v3) against `endpoint`, stdout and stderr collected together.
    pub fn etcdctl(endpoint: &str, args: &[&str]) -> Background {
        Self::spawn(ETCDCTL, endpoint, args)
    }

    /// ferroctl against `endpoint`.
    pub fn ferroctl(endpoint: &str, args: &[&str]) -> Background {
        Self::spawn(env!("CARGO_BIN_EXE_ferroctl"), endpoint, args)
    }

    fn spawn(bin: &str, endpoint: &str, args: &[&str]) -> Background {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin);
        // SIGINT back to its default action in the child, as `stop` relies on it: a test run
        // started in the background by a non-interactive shell ignores SIGINT, the ignoring
        // survives exec, and `stop` then waited its 5 s for every watch (tests/watch_lease.rs
        // took 112 s instead of 22 s).
        // SAFETY: only signal(2), which is async-signal-safe, runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = cmd
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for mut r in pipes {
            let out = out.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .expect("output lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }));
        }
        Background {
            child,
            out,
            readers,
        }
    }

    pub fn output(&self) -> String {
        self.out.lock().expect("output lock").clone()
    }

    /// Waits until the output satisfies `f`, or `timeout` passes; true if it did.
    pub fn wait_for(&self, timeout: Duration, f: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f(&self.output()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f(&self.output())
    }

    /// True once the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Interrupts the process (SIGINT, as Ctrl-C), waits up to 5 s for it to exit, kills it
    /// otherwise; returns everything it printed.
    pub fn stop(mut self) -> String {
        // SAFETY: kill(2) with a pid we own; no memory is touched.
        unsafe { libc_kill(self.child.id() as i32, 2) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.output()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Runs openssl in `dir` (certificates for TLS tests); fails the test on error.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Certificates for TLS tests, made with openssl in `dir`: a self-signed CA per name in `cas`
/// (`<ca>.crt`, `<ca>.key`), then per `(name, ca, extensions, subject)` a key and a certificate
/// signed by that CA (`<name>.crt`, `<name>.key`) with the given X.509 extensions.
pub fn certificates(dir: &Path, cas: &[&str], certs: &[(&str, &str, &str, &str)]) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in cas {
        let subj = format!("/CN={ca}");
        let (key, crt) = (format!("{ca}.key"), format!("{ca}.crt"));
        let mut a = vec!["req", "-x509", "-days", "2", "-subj", &subj];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &crt]);
        openssl(dir, &a);
    }
    for (name, ca, ext, subject) in certs {
        let ext_file = format!("{name}.ext");
        std::fs::write(dir.join(&ext_file), ext).expect("extensions file");
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let mut a = vec!["req", "-subj", subject];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &a);
        let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
        let sign = [
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            &ext_file,
            "-out",
            &crt,
        ];
        openssl(dir, &sign);
    }
}

/// The certificates the seed's config file names (`ca.crt`, `server.crt`/`.key`,
/// `peer.crt`/`.key`), made by openssl in `dir` for 127.0.0.1, serving and connecting.
pub fn seed_certificates(dir: &Path) {
    let ext = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n";
    certificates(
        dir,
        &["ca"],
        &[
            ("server", "ca", ext, "/CN=server"),
            ("peer", "ca", ext, "/CN=peer"),
        ],
    );
}

/// Waits (bounded) until `serializable get key` on `server` prints `value`; `what` names the
/// wait in the failure.
pub fn wait_value(server: &Server, key: &str, value: &str, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    let want = format!("{key}\n{value}\n");
    loop {
        let out = etcdctl(&server.endpoint(), &["get", key, "--consistency=s"], "");
        if out.stdout == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {out:?}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A single-threaded tokio runtime for tests that use the `etcd-client` crate.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Puts `key` through the `etcd-client` crate; the revision of the put.
pub async fn put_rev(c: &mut etcd_client::Client, key: &str, value: &str) -> i64 {
    c.put(key, value, None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision()
}

/// The labelled steps whose results differ between etcd (`want`) and ferrocd (`got`), as a
/// report; empty when they agree.
pub fn diff_steps<T: PartialEq>(
    want: &[(String, T)],
    got: &[(String, T)],
    show: impl Fn(&T) -> String,
) -> String {
    assert_eq!(want.len(), got.len(), "both servers ran every step");
    let mut report = String::new();
    for ((label, w), (_, g)) in want.iter().zip(got) {
        if w != g {
            report.push_str(&format!(
                "\n== {label}\n--- etcd\n{}\n--- ferrocd\n{}\n",
                show(w),
                show(g)
            ));
        }
    }
    report
}

/// A cluster of `n` members of one kind on loopback (free ports, temporary data dirs), each
/// started with etcd's flags; stopped on drop.
pub struct Cluster {
    pub members: Vec<Server>,
    /// With `launch_proxied`: member `i`'s peer traffic comes in through `proxies[i]`.
    pub proxies: Vec<Proxy>,
}

/// Starts a member that `member add` added (`--initial-cluster-state existing`, with the
/// `ETCD_INITIAL_CLUSTER` etcdctl printed and `extra` flags), without waiting for it; `kind` is
/// "ferrocd" or "etcd".
pub fn launch_joining(
    kind: &'static str,
    name: &str,
    client: u16,
    peer: u16,
    initial: &str,
    extra: &[&str],
) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let curl = format!("http://127.0.0.1:{client}");
    let purl = format!("http://127.0.0.1:{peer}");
    let data = dir.path().join("data").display().to_string();
    let mut args: Vec<String> = [
        "--name",
        name,
        "--data-dir",
        &data,
        "--listen-client-urls",
        &curl,
        "--advertise-client-urls",
        &curl,
        "--listen-peer-urls",
        &purl,
        "--initial-advertise-peer-urls",
        &purl,
        "--initial-cluster",
        initial,
        "--initial-cluster-token",
        "test-cluster",
        "--initial-cluster-state",
        "existing",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let bin = match kind {
        "etcd" => ETCD,
        _ => env!("CARGO_BIN_EXE_ferrocd"),
    };
    Server::launch(kind, bin, args, client, peer, dir)
}

/// The `ETCD_INITIAL_CLUSTER` that `etcdctl member add` printed.
pub fn initial_cluster(out: &Output) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {out:?}"))
        .to_string()
}

/// A TCP proxy on a free loopback port to `target`, that can cut every connection through it
/// (and refuse new ones) and let them through again: a member behind it is cut off from the
/// messages its peers send it.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let (cut, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, st) = (cut.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Relaxed) {
                let Ok((inbound, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if c.load(Relaxed) {
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = inbound.set_nonblocking(false);
                for (from, to) in [
                    (inbound.try_clone(), outbound.try_clone()),
                    (outbound.try_clone(), inbound.try_clone()),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else {
                        continue;
                    };
                    let (c, st) = (c.clone(), st.clone());
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
                        let mut buf = vec![0u8; 64 << 10];
                        while !c.load(Relaxed) && !st.load(Relaxed) {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            port,
            cut,
            stop,
            thread: Some(thread),
        }
    }

    /// Cuts every connection through the proxy and refuses new ones (true), or lets them
    /// through again (false).
    pub fn cut(&self, on: bool) {
        self.cut.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Cluster {
    pub fn ferrocd(n: usize, extra: &[&str]) -> Cluster {
        Self::start("ferrocd", env!("CARGO_BIN_EXE_ferrocd"), n, extra)
    }

    pub fn etcd(n: usize, extra: &[&str]) -> Cluster {
        Self::start("etcd", ETCD, n, extra)
    }

    fn start(kind: &'static str, bin: &str, n: usize, extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut c = Self::launch(kind, bin, n, "http", |_| extra.clone());
        for m in &mut c.members {
            m.wait_healthy();
        }
        c
    }

    /// Starts `n` members without waiting for them; peer URLs use `scheme` (http or https);
    /// member `i` also gets the flags `extra(i)`.
    pub fn launch(
        kind: &'static str,
        bin: &str,
        n: usize,
        scheme: &str,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Cluster {
        Self::launch_with(kind, bin, n, scheme, extra, false)
    }

    /// `launch` with a [`Proxy`] in front of each member's peer port: the members advertise
    /// the proxies' ports, so every peer message to member `i` goes through `proxies[i]`.
    pub fn launch_proxied(kind: &'static str, bin: &str, n: usize, extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::launch_with(kind, bin, n, "http", |_| extra.clone(), true)
    }

    fn launch_with(
        kind: &'static str,
        bin: &str,
        n: usize,
        scheme: &str,
        extra: impl Fn(usize) -> Vec<String>,
        proxied: bool,
    ) -> Cluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let proxies: Vec<Proxy> = if proxied {
            ports.iter().map(|&(_, peer)| Proxy::start(peer)).collect()
        } else {
            Vec::new()
        };
        let advertised = |i: usize| proxies.get(i).map_or(ports[i].1, |p| p.port);
        let initial: Vec<String> = (0..n)
            .map(|i| format!("m{i}={scheme}://127.0.0.1:{}", advertised(i)))
            .collect();
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, &(client, peer))| {
                let dir = tempfile::tempdir().expect("temp dir");
                let c = format!("http://127.0.0.1:{client}");
                let p = format!("{scheme}://127.0.0.1:{peer}");
                let adv = format!("{scheme}://127.0.0.1:{}", advertised(i));
                let mut args: Vec<String> = [
                    "--name",
                    &format!("m{i}"),
                    "--data-dir",
                    &dir.path().join("data").display().to_string(),
                    "--listen-client-urls",
                    &c,
                    "--advertise-client-urls",
                    &c,
                    "--listen-peer-urls",
                    &p,
                    "--initial-advertise-peer-urls",
                    &adv,
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-token",
                    "test-cluster",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.extend(extra(i));
                Server::launch(kind, bin, args, client, peer, dir)
            })
            .collect();
        Cluster { members, proxies }
    }

    /// Adds a member `name` with etcdctl's `member add` (as a learner if asked), then starts
    /// it with the `ETCD_INITIAL_CLUSTER` etcdctl printed and `--initial-cluster-state
    /// existing` (and `extra` flags), without waiting for it; returns etcdctl's output and the
    /// new member's position.
    pub fn add_member(&mut self, name: &str, learner: bool, extra: &[&str]) -> (Output, usize) {
        let (out, client, peer) = self.member_add(name, learner);
        let initial = initial_cluster(&out);
        self.members.push(launch_joining(
            "ferrocd", name, client, peer, &initial, extra,
        ));
        (out, self.members.len() - 1)
    }

    /// etcdctl's `member add` of a member `name` on free ports (as a learner if asked), which
    /// must succeed; returns etcdctl's output and the new member's client and peer ports.
    pub fn member_add(&self, name: &str, learner: bool) -> (Output, u16, u16) {
        let (client, peer) = (free_port(), free_port());
        let mut add = vec![
            "member".to_string(),
            "add".into(),
            name.into(),
            format!("--peer-urls=http://127.0.0.1:{peer}"),
        ];
        if learner {
            add.push("--learner".into());
        }
        let add: Vec<&str> = add.iter().map(String::as_str).collect();
        // As etcd, a member refuses to add one until it has been connected to every voter for
        // 5 s ("unhealthy cluster"): retried, as an operator would.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = etcdctl(&self.endpoints(), &add, "");
            if out.code == 0 {
                return (out, client, peer);
            }
            assert!(
                out.stderr.contains("etcdserver: unhealthy cluster") && Instant::now() < deadline,
                "{out:?}\n{}",
                self.members[0].log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The ferrocd binary (for `launch`).
    pub fn ferrocd_bin() -> &'static str {
        env!("CARGO_BIN_EXE_ferrocd")
    }

    /// Every member's client endpoint, comma-separated (etcdctl's `--endpoints`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Server::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What each running member reports as (its id, the leader's id), through etcdctl
    /// `endpoint status`; None for a member that does not answer.
    pub fn status(&self) -> Vec<Option<(u64, u64)>> {
        (0..self.members.len()).map(|i| self.status_of(i)).collect()
    }

    /// (member id, leader id) as member `i` reports them; None if it does not answer.
    pub fn status_of(&self, i: usize) -> Option<(u64, u64)> {
        let out = etcdctl(
            &self.members[i].endpoint(),
            &["endpoint", "status", "-w", "json", "--command-timeout=2s"],
            "",
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let st = &v[0]["Status"];
        Some((st["header"]["member_id"].as_u64()?, st["leader"].as_u64()?))
    }

    /// Waits (bounded) until the members in `among` agree on a leader that is one of them;
    /// returns its position.
    pub fn wait_leader(&self, among: &[usize], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let st: Vec<Option<(u64, u64)>> = among.iter().map(|&i| self.status_of(i)).collect();
            let leaders: Vec<Option<u64>> = st
                .iter()
                .map(|s| s.map(|(_, l)| l).filter(|&l| l != 0))
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) {
                    if let Some(k) = st.iter().position(|s| s.map(|(id, _)| id) == Some(*l)) {
                        return among[k];
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader agreed among members {among:?} after {timeout:?}: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
