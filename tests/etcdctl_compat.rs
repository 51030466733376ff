//! Differential compatibility test: one script of real etcdctl commands (ETCDCTL_API=3) run
//! against real etcd (Debian's 3.4) and against ferrocd, each freshly started; stdout, stderr
//! and exit codes compared command by command.
//!
//! ferrocd is started with the same peer URL as etcd, so member and cluster ids are equal
//! without normalising them. What is normalised, and why:
//! - the client port (each server has its own free port);
//! - raft_term / RaftTerm (etcd's single member elects itself in term 2; ferrocd has no Raft
//!   yet and reports term 1);
//! - in `endpoint status`: version (3.4.23 vs the 3.5 API ferrocd reports), db size, raft
//!   index and applied index (etcd counts its own configuration entries);
//! - in `endpoint health`: the time the probe took;
//! - in etcdctl's retry warnings on stderr: the timestamp and the client's random id.

mod common;

use common::{etcd_tools_or_skip, etcdctl, Output, Server};

/// (arguments, stdin). Keys are chosen so that each command's effect is visible in a later one.
fn script() -> Vec<(Vec<&'static str>, &'static str)> {
    let c = |args: &'static str| (args.split(' ').collect::<Vec<_>>(), "");
    let txn =
        |args: &'static str, stdin: &'static str| (args.split(' ').collect::<Vec<_>>(), stdin);
    vec![
        c("put foo bar"),
        c("put foo bar2 --prev-kv"),
        c("put foo bar3 --prev-kv -w json"),
        c("get foo"),
        c("get foo -w json"),
        c("get foo -w fields"),
        c("put foo1 v1"),
        c("put foo2 v2"),
        c("put foo3 v3"),
        c("put zoo z"),
        c("get foo --prefix"),
        c("get foo --prefix --limit=2"),
        c("get foo --prefix --limit=2 -w json"),
        c("get foo --prefix --keys-only"),
        c("get foo --prefix --count-only -w json"),
        c("get foo --prefix --count-only"),
        c("get foo --prefix --print-value-only"),
        c("get foo --from-key"),
        c("get foo foo3"),
        c("get foo foo3 -w fields"),
        c("get foo --prefix --sort-by=MODIFY --order=DESCEND"),
        c("get foo --prefix --sort-by=VALUE --order=ASCEND"),
        c("get foo --prefix --sort-by=VERSION"),
        c("get foo --prefix --sort-by=CREATE --order=DESCEND -w json"),
        c("get foo --prefix --sort-by=KEY --order=DESCEND --limit=2"),
        c("get foo --prefix --order=DESCEND --limit=3 -w json"),
        c("get foo --rev=2"),
        c("get foo --rev=3 -w json"),
        c("get foo --rev=1000"),
        c("get foo --consistency=s"),
        c("get nothing"),
        c("get nothing -w json"),
        c("get nothing -w fields"),
        c("del nothing"),
        c("del foo1"),
        c("del foo1 -w json"),
        c("del foo --prefix --prev-kv"),
        c("get foo --prefix -w json"),
        c("put foo again"),
        c("del foo -w json"),
        c("put a 1"),
        c("put b 2"),
        c("put c 3"),
        c("del a c"),
        c("get a --from-key"),
        c("put k1 v --lease=1234"),
        c("put k1 --ignore-value"),
        c("put zoo --ignore-value"),
        c("get zoo -w json"),
        c("put zoo v2 --ignore-lease"),
        c("get zoo -w fields"),
        txn("txn", "value(\"zoo\") = \"v2\"\n\nput t1 x\n\nput t2 y\n\n"),
        txn("txn -w json", "value(\"zoo\") = \"nope\"\n\nput t1 x\n\nput t2 y\n\n"),
        txn(
            "txn",
            "mod(\"zoo\") > \"0\"\nversion(\"zoo\") = \"3\"\ncreate(\"zoo\") < \"100\"\n\nget zoo\nget t --prefix\n\ndel zoo\n\n",
        ),
        txn("txn -w json", "\nput d 1\nput d 2\n\n\n"),
        txn("txn -w fields", "version(\"t1\") = \"1\"\n\ndel t1 --prev-kv\nput t3 z\nget t --prefix --keys-only\n\n\n"),
        txn("txn", "create(\"missing\") = \"0\"\n\nput m 1\n\n\n"),
        // (etcdctl 3.4 itself panics parsing a lease("k") compare, so none is scripted.)
        txn("txn -w json", "create(\"m\") > \"0\"\n\nget m\n\n\n"),
        c("get \"\" --prefix --keys-only"),
        c("compaction 5"),
        c("get foo --rev=3"),
        c("get zoo --rev=5 -w json"),
        c("compaction 5"),
        c("compaction 1000"),
        c("compaction 8 --physical"),
        c("member list"),
        c("member list -w json"),
        c("member list -w fields"),
        c("endpoint health"),
        c("endpoint status -w json"),
        c("endpoint status -w fields"),
        c("alarm list"),
        c("put \"\" x"),
        c("get t --prefix -w json"),
    ]
}

/// Replaces what legitimately differs between the two servers (see the module docs).
fn normalise(out: &Output, port: u16) -> Output {
    let fix = |s: &str| {
        let s = common::hide_port(s, port);
        let mut lines = Vec::new();
        for line in s.lines() {
            let mut l = line.to_string();
            l = replace_value(&l, "\"raft_term\":", ",}");
            l = replace_value(&l, "\"RaftTerm\" : ", "\n");
            l = replace_value(&l, "\"ts\":\"", "\"");
            l = replace_value(&l, "endpoint://client-", "/");
            l = replace_value(&l, "took = ", "\n");
            if l.contains("\"Endpoint\"") || l.contains("\"Status\"") || l.starts_with('[') {
                for key in [
                    "\"version\":\"",
                    "\"dbSize\":",
                    "\"raftIndex\":",
                    "\"raftAppliedIndex\":",
                    "\"raftTerm\":",
                    "\"dbSizeInUse\":",
                ] {
                    l = replace_value(&l, key, ",}\"");
                }
            }
            for key in [
                "\"Version\" : ",
                "\"DBSize\" : ",
                "\"RaftIndex\" : ",
                "\"RaftAppliedIndex\" : ",
                "\"DBSizeInUse\" : ",
            ] {
                if l.starts_with(key) {
                    l = format!("{key}<N>");
                }
            }
            lines.push(l);
        }
        lines.join("\n")
    };
    Output {
        stdout: fix(&out.stdout),
        stderr: fix(&out.stderr),
        code: out.code,
    }
}

/// Replaces the text after `key` up to (not including) the first char in `ends` with "<N>".
fn replace_value(line: &str, key: &str, ends: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        let end = rest.find(|c| ends.contains(c)).unwrap_or(rest.len());
        out.push_str("<N>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The script's arguments: quotes removed (`""` is an empty argument), double spaces dropped.
fn argv(args: &[&str]) -> Vec<String> {
    args.iter()
        .filter(|a| !a.is_empty())
        .map(|a| a.replace('"', ""))
        .collect()
}

fn run_script(server: &Server) -> Vec<Output> {
    script()
        .iter()
        .map(|(args, stdin)| {
            let args = argv(args);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            normalise(
                &etcdctl(&server.endpoint(), &args, stdin),
                server.client_port,
            )
        })
        .collect()
}

/// The same script through ferroctl.
fn run_script_ferroctl(server: &Server) -> Vec<Output> {
    script()
        .iter()
        .map(|(args, stdin)| {
            let mut a = vec![format!("--endpoints={}", server.endpoint())];
            a.extend(argv(args));
            let out = common::run(env!("CARGO_BIN_EXE_ferroctl"), &[], &a, stdin);
            normalise(&out, server.client_port)
        })
        .collect()
}

/// etcdctl's stderr without grpc-go's retry log lines (JSON), which ferroctl does not print.
fn without_retry_logs(o: &Output) -> Output {
    let stderr: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .collect();
    Output {
        stderr: stderr.join("\n"),
        ..o.clone()
    }
}

fn report(want: &[Output], got: &[Output], skip: impl Fn(&[&str]) -> bool) -> String {
    let script = script();
    let mut report = String::new();
    for (i, ((cmd, stdin), (w, g))) in script.iter().zip(want.iter().zip(got)).enumerate() {
        if w != g && !skip(cmd) {
            report.push_str(&format!(
                "\n#{i} {} {}\n--- reference (code {})\n{}\n{}\n--- got (code {})\n{}\n{}\n",
                cmd.join(" "),
                if stdin.is_empty() { "" } else { "(with stdin)" },
                w.code,
                w.stdout,
                w.stderr,
                g.code,
                g.stdout,
                g.stderr
            ));
        }
    }
    report
}

#[test]
fn etcdctl_sees_ferrocd_as_etcd_and_ferroctl_prints_what_etcdctl_prints() {
    if !etcd_tools_or_skip("etcdctl_sees_ferrocd_as_etcd") {
        return;
    }
    let etcd = Server::etcd(&[]);
    let want = run_script(&etcd);
    let peer_port = etcd.peer_port;
    drop(etcd);
    assert!(
        script().len() >= 60,
        "the script has {} commands",
        script().len()
    );
    // The reference run did exercise the paths: values came back, errors were returned.
    assert_eq!(want[0].stdout, "OK");
    assert_eq!(want[3].stdout, "foo\nbar3");
    let errors = want.iter().filter(|o| o.code != 0).count();
    assert!(
        errors >= 8,
        "only {errors} commands failed on etcd: the error cases did not run"
    );

    let ferrocd = Server::ferrocd_with_peer_port(peer_port, &[]);
    let got = run_script(&ferrocd);
    let r = report(&want, &got, |_| false);
    assert!(r.is_empty(), "etcdctl: etcd and ferrocd differ:{r}");
    drop(ferrocd);

    // ferroctl against a fresh ferrocd prints what etcdctl printed against etcd. Skipped:
    // --count-only (etcdctl 3.4 has no such flag and prints its usage; ferroctl has the 3.5
    // flag) and `version` (each tool prints its own). This server serves every connection on
    // the shard that does not hold the state (etcdctl's above ran on the owner).
    let placement = ["--shards", "2", "--connection-placement", "others"];
    let ferrocd = Server::ferrocd_with_peer_port(peer_port, &placement);
    let got = run_script_ferroctl(&ferrocd);
    let want: Vec<Output> = want.iter().map(without_retry_logs).collect();
    let r = report(&want, &got, |cmd| {
        cmd.contains(&"--count-only") || cmd.first() == Some(&"version")
    });
    assert!(r.is_empty(), "ferroctl and etcdctl differ:{r}");
}

/// `ferroctl get ... | head -c 1`: the reader goes away while ferroctl still writes. etcdctl
/// dies of SIGPIPE (status 141 in a shell); ferroctl ends with status 141, quietly (std's
/// `println!` used to panic with a backtrace there).
#[test]
fn ferroctl_ends_quietly_when_its_reader_goes_away() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let server = Server::ferrocd(&[]);
    let ep = format!("--endpoints={}", server.endpoint());
    let ferroctl = env!("CARGO_BIN_EXE_ferroctl");
    // Larger than the pipe's buffer (set to its least, one page, below), so the write is still
    // under way when the reader leaves.
    let value = "v".repeat(120 << 10);
    let put = common::run(
        ferroctl,
        &[],
        &[ep.clone(), "put".into(), "big".into(), value],
        "",
    );
    assert_eq!(put.code, 0, "{put:?}");
    let mut child = Command::new(ferroctl)
        .args([ep.as_str(), "get", "big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferroctl");
    let mut stdout = child.stdout.take().expect("stdout");
    {
        use std::os::fd::AsRawFd;
        // SAFETY: F_SETPIPE_SZ on a pipe this process owns; the kernel rounds up to a page.
        unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    }
    let stderr_of = |child: &mut std::process::Child| {
        let mut s = String::new();
        let _ = child.stderr.take().expect("stderr").read_to_string(&mut s);
        s
    };
    let mut first = [0u8; 1];
    if let Err(e) = stdout.read_exact(&mut first) {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "no output from ferroctl: {e}; stderr: {}",
            stderr_of(&mut child)
        );
    }
    assert_eq!(&first, b"b");
    drop(stdout);
    let Some(status) = common::wait_or_kill(&mut child, Duration::from_secs(20)) else {
        panic!("ferroctl did not end; stderr: {}", stderr_of(&mut child));
    };
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(141), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}
