//! Watch, Lease, lock and election through real etcdctl, differentially: the same scenario runs
//! against real etcd (Debian's 3.4) and against ferrocd, each freshly started with the same peer
//! URL (so cluster and member ids are equal), and what etcdctl printed is compared step by step.
//!
//! Normalised, and why: the client port; raft_term (etcd's single member is in term 2, ferrocd
//! has no Raft yet); lease ids (each server draws its own from its clock); the remaining TTL of
//! a lease (a second may tick between grant and query); in etcdctl's retry warnings, the time
//! and the client's random id.
//!
//! Long-running etcdctl commands (watch, keep-alive, lock, elect) run in the background; a
//! watch is known to have printed everything up to a point when a marker value written after
//! that point shows up in its output.

mod common;

use common::{diff_steps, etcd_tools_or_skip, etcdctl, Background, Output, Server};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

/// Steps of the scenario: a label and what etcdctl printed (normalised).
type Steps = Vec<(String, String)>;

thread_local! {
    /// The client the scenario runs on this test's thread: etcdctl, or ferroctl.
    static FERROCTL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn cmd(server: &Server, args: &[&str]) -> Output {
    cmd_stdin(server, args, "")
}

fn cmd_stdin(server: &Server, args: &[&str], stdin: &str) -> Output {
    if FERROCTL.get() {
        let mut a = vec![format!("--endpoints={}", server.endpoint())];
        a.extend(args.iter().map(|s| s.to_string()));
        return common::run(env!("CARGO_BIN_EXE_ferroctl"), &[], &a, stdin);
    }
    etcdctl(&server.endpoint(), args, stdin)
}

/// A long-running command of the scenario's client.
fn bg(server: &Server, args: &[&str]) -> Background {
    if FERROCTL.get() {
        return Background::ferroctl(&server.endpoint(), args);
    }
    Background::etcdctl(&server.endpoint(), args)
}

fn text(o: &Output) -> String {
    format!("code {}\n{}\n{}", o.code, o.stdout, o.stderr)
}

/// Replaces every 16-hex-digit word (a lease id as etcdctl prints it) and the decimal form of
/// the given ids.
fn normalise(s: &str, port: u16, ids: &[i64]) -> String {
    let mut s = common::hide_port(s, port);
    for id in ids {
        s = s.replace(&format!("{id:x}"), "<LEASE>");
        s = s.replace(&id.to_string(), "<LEASE>");
    }
    let mut out = String::new();
    let mut rest = s.as_str();
    for (key, ends) in [
        ("\"raft_term\":", ",}"),
        ("remaining(", ")"),
        ("\"TTL\":", ",}"),
        ("\"ttl\":", ",}"),
        ("\"ts\":\"", "\""),
        ("endpoint://client-", "/"),
    ] {
        out.clear();
        while let Some(i) = rest.find(key) {
            out.push_str(&rest[..i + key.len()]);
            rest = &rest[i + key.len()..];
            let end = rest.find(|c| ends.contains(c)).unwrap_or(rest.len());
            out.push_str("<N>");
            rest = &rest[end..];
        }
        out.push_str(rest);
        s = out.clone();
        rest = s.as_str();
    }
    s
}

/// CI once failed because the port's digits stood inside a lease id's decimal form and the
/// port was replaced first: only a port after a host is the port.
#[test]
fn normalise_hides_the_port_but_not_digits_that_contain_it() {
    let id: i64 = 1_337_687_255_852_033;
    let raw = format!(
        "{{\"lease\":{id},\"ep\":\"127.0.0.1:37687\",\"size\":376870}} {id:x} localhost:37687/x"
    );
    assert_eq!(
        normalise(&raw, 37687, &[id]),
        "{\"lease\":<LEASE>,\"ep\":\"127.0.0.1:<PORT>\",\"size\":376870} <LEASE> localhost:<PORT>/x"
    );
}

/// The lease id in "lease 694d7a5ab5e7c00a granted with TTL(100s)".
fn lease_id(o: &Output) -> i64 {
    let hex = o
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no lease id in {o:?}"));
    i64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad lease id in {o:?}"))
}

/// Starts `etcdctl watch args`, writes `marker_key`=END, and returns what the watch printed
/// once the marker arrived (or after WAIT).
/// The watch has a start revision, so writing the marker before it is set up loses nothing.
/// `marker_first` writes it before the watch starts: then the whole history is past and both
/// servers send it in one response (how live events are grouped into responses is timing).
fn watch_until_marker(
    server: &Server,
    args: &[&str],
    marker_key: &str,
    marker: &str,
    marker_first: bool,
) -> String {
    let mut a = vec!["watch"];
    a.extend_from_slice(args);
    if marker_first {
        assert_eq!(cmd(server, &["put", marker_key, "END"]).code, 0);
    }
    let w = bg(server, &a);
    if !marker_first {
        assert_eq!(cmd(server, &["put", marker_key, "END"]).code, 0);
    }
    // Wait for the marker key's own event: an earlier marker (another key, the same value)
    // may be in the history, and stopping on it would cut the output short.
    let needle = if marker == "END" {
        format!("{marker_key}\n{marker}")
    } else {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(marker_key)
    };
    let seen = w.wait_for(WAIT, |o| o.contains(&needle));
    let out = w.stop();
    format!("marker seen: {seen}\n{out}")
}

/// The scenario; every step's output goes in order into the returned list.
fn scenario(server: &Server) -> Steps {
    let mut steps: Steps = Vec::new();
    let mut ids: Vec<i64> = Vec::new();
    let port = server.client_port;
    let step = |steps: &mut Steps, label: &str, out: String, ids: &[i64]| {
        steps.push((label.to_string(), normalise(&out, port, ids)));
    };
    for (k, v) in [("foo", "1"), ("foo", "2"), ("foo/a", "x")] {
        assert_eq!(cmd(server, &["put", k, v]).code, 0);
    }
    assert_eq!(cmd(server, &["del", "foo"]).code, 0); // rev 5
    assert_eq!(cmd(server, &["put", "bar", "b"]).code, 0); // rev 6

    // History, from the start, with previous values; the marker is rev 7.
    let out = watch_until_marker(
        server,
        &["foo", "--rev", "1", "--prev-kv"],
        "foo",
        "END",
        false,
    );
    step(&mut steps, "watch foo --rev 1 --prev-kv", out, &ids);
    // A prefix, in JSON (headers, revisions, base64 values); marker rev 8. (ferroctl prints
    // watches in the simple format only: it writes the marker and skips the watch.)
    let out = if FERROCTL.get() {
        assert_eq!(cmd(server, &["put", "foo/z", "END"]).code, 0);
        "not run".to_string()
    } else {
        watch_until_marker(
            server,
            &["foo", "--prefix", "--rev", "2", "-w", "json"],
            "foo/z",
            "RU5E",
            true,
        )
    };
    step(&mut steps, "watch foo --prefix --rev 2 -w json", out, &ids);
    // An explicit range [foo, foo/z); marker foo/b, rev 9.
    let out = watch_until_marker(
        server,
        &["foo", "foo/z", "--rev", "1", "--prev-kv"],
        "foo/b",
        "END",
        false,
    );
    step(&mut steps, "watch foo foo/z --rev 1", out, &ids);

    // Compaction: a watch from before it is canceled with the compacted revision.
    step(
        &mut steps,
        "compaction 4",
        text(&cmd(server, &["compaction", "4"])),
        &ids,
    );
    let w = bg(server, &["watch", "foo", "--rev", "2"]);
    // Both tools end with "Error: watch is canceled by the server": wait for that line too,
    // or the stop may come between the cancel and it.
    let seen = w.wait_for(WAIT, |o| {
        o.contains("compacted") && o.contains("canceled by the server")
    });
    step(
        &mut steps,
        "watch foo --rev 2 (compacted)",
        format!("canceled seen: {seen}\n{}", w.stop()),
        &ids,
    );
    // From the compaction revision itself: allowed; marker rev 10.
    let out = watch_until_marker(
        server,
        &["foo", "--prefix", "--rev", "4", "--prev-kv"],
        "foo/c",
        "END",
        false,
    );
    step(&mut steps, "watch foo --prefix --rev 4", out, &ids);

    // Leases.
    let grant = cmd(server, &["lease", "grant", "100"]);
    let id = lease_id(&grant);
    ids.push(id);
    let hex = format!("{id:x}");
    step(&mut steps, "lease grant 100", text(&grant), &ids);
    for args in [
        vec!["put", "lk/1", "v", "--lease", &hex],
        vec!["lease", "timetolive", &hex],
        vec!["lease", "timetolive", &hex, "--keys"],
        vec!["lease", "timetolive", &hex, "--keys", "-w", "json"],
        // (etcd lists a lease's keys in Go map order, random: one key is listed, then a second
        // is attached.)
        vec!["put", "lk/2", "v", "--lease", &hex],
        vec!["lease", "list"],
        vec!["lease", "keep-alive", "--once", &hex],
        vec!["get", "lk", "--prefix", "-w", "json"],
    ] {
        let out = text(&cmd(server, &args));
        step(&mut steps, &args.join(" "), out, &ids);
    }
    // A watch sees the revoke delete both keys in one revision (rev 13); marker lk/end, rev 14.
    let w = bg(
        server,
        &["watch", "lk", "--prefix", "--rev", "13", "--prev-kv"],
    );
    for args in [
        vec!["lease", "revoke", &hex],
        vec!["get", "lk", "--prefix"],
        vec!["lease", "revoke", &hex],
        vec!["lease", "timetolive", &hex],
        vec!["lease", "keep-alive", "--once", &hex],
        vec!["put", "lk/3", "v", "--lease", &hex],
        vec!["lease", "list"],
        vec!["lease", "grant", "9000000001"],
        vec!["put", "lk/end", "END"],
    ] {
        let out = text(&cmd(server, &args));
        step(&mut steps, &args.join(" "), out, &ids);
    }
    let seen = w.wait_for(WAIT, |o| o.contains("END"));
    step(
        &mut steps,
        "watch lk --prefix --rev 13",
        format!("marker seen: {seen}\n{}", w.stop()),
        &ids,
    );

    // Several events in one revision (a txn), and a live watch with no start revision: it is
    // created before the writes when its first write (the probe) is seen.
    let w = bg(server, &["watch", "t", "--prefix"]);
    let deadline = Instant::now() + WAIT;
    while !w.output().contains("probe") && Instant::now() < deadline {
        assert_eq!(cmd(server, &["put", "t/probe", "probe"]).code, 0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let probes = w.output().matches("t/probe").count();
    let txn = cmd_stdin(
        server,
        &["txn"],
        "\n\nput t/1 a\nput t/2 b\ndel t/probe\n\n\n",
    );
    assert_eq!(txn.code, 0, "{txn:?}");
    assert_eq!(cmd(server, &["put", "t/end", "END"]).code, 0);
    let seen = w.wait_for(WAIT, |o| o.contains("END"));
    let out = w.stop();
    // Only what came after the probes is compared (how many probes it took is timing).
    let after = out.find("PUT\nt/1").map_or("", |i| &out[i..]).to_string();
    assert!(probes >= 1);
    step(
        &mut steps,
        "watch t --prefix (live, txn)",
        format!("marker seen: {seen}\n{after}"),
        &ids,
    );

    // A deletion at the compacted revision itself is not history any more (etcd's backend
    // drops it): a watch from that revision starts after it.
    assert_eq!(cmd(server, &["put", "tomb", "a"]).code, 0);
    let del = cmd(server, &["del", "tomb", "-w", "json"]);
    let rev = del
        .stdout
        .split("\"revision\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or_else(|| panic!("no revision in {del:?}"))
        .to_string();
    // (How many probes the live watch took moves this revision: it is not compared.)
    step(
        &mut steps,
        "compaction at a deletion",
        text(&cmd(server, &["compaction", &rev])).replace(&rev, "<REV>"),
        &ids,
    );
    // (etcd trims in the background: give it a moment, as a client would.)
    std::thread::sleep(Duration::from_millis(500));
    let out = watch_until_marker(server, &["tomb", "--rev", &rev], "tomb", "END", false);
    step(&mut steps, "watch from a compacted deletion", out, &ids);
    steps
}

#[test]
fn watch_and_lease_through_etcdctl_match_etcd() {
    if !etcd_tools_or_skip("watch_and_lease_through_etcdctl_match_etcd") {
        return;
    }
    let etcd = Server::etcd(&[]);
    let want = scenario(&etcd);
    let peer_port = etcd.peer_port;
    drop(etcd);
    // The reference run exercised the paths it claims to.
    let find = |label: &str| {
        &want
            .iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no step {label}"))
            .1
    };
    assert!(find("watch foo --rev 1 --prev-kv").contains("marker seen: true"));
    assert!(find("watch foo --rev 2 (compacted)").contains("canceled seen: true"));
    assert!(find("watch lk --prefix --rev 13").contains("DELETE"));

    let ferrocd = Server::ferrocd_with_peer_port(peer_port, &[]);
    let got = scenario(&ferrocd);
    if std::env::var("DUMP_STEPS").is_ok() {
        for (label, out) in &got {
            eprintln!("== {label}\n{out}");
        }
    }
    let r = diff_steps(&want, &got, String::clone);
    assert!(r.is_empty(), "etcdctl: etcd and ferrocd differ:{r}");
    drop(ferrocd);

    // ferroctl against a fresh ferrocd prints what etcdctl printed against etcd, but for
    // grpc-go's retry warnings (which ferroctl does not log) and the JSON watch (ferroctl
    // prints watches in the simple format only).
    let plain = |steps: &Steps| -> Steps {
        steps
            .iter()
            .filter(|(label, _)| label != "watch foo --prefix --rev 2 -w json")
            .map(|(label, out)| {
                let kept: Vec<&str> = out
                    .lines()
                    .filter(|l| !l.starts_with("{\"level\""))
                    .collect();
                (label.clone(), kept.join("\n"))
            })
            .collect()
    };
    let ferrocd = Server::ferrocd_with_peer_port(peer_port, &[]);
    FERROCTL.set(true);
    let got = scenario(&ferrocd);
    FERROCTL.set(false);
    let r = diff_steps(&plain(&want), &plain(&got), String::clone);
    assert!(r.is_empty(), "ferroctl and etcdctl differ:{r}");
}

/// `get key --count-only`-like: how many keys `get key` printed (etcdctl prints key and value).
fn present(server: &Server, key: &str) -> bool {
    let o = cmd(server, &["get", key]);
    assert_eq!(o.code, 0, "{o:?}");
    !o.stdout.trim().is_empty()
}

/// Waits until `key` is gone; the time it took, or None after `limit`.
fn gone_within(server: &Server, key: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !present(server, key) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A key under a 2 s lease vanishes after (not before) its TTL, and a watch sees the delete;
/// a key under a kept-alive lease outlives its TTL and vanishes once the keep-alive stops.
fn expiry_and_keepalive(server: &Server) {
    let kind = server.kind;
    let t0 = Instant::now();
    let id = lease_id(&cmd(server, &["lease", "grant", "2"]));
    let hex = format!("{id:x}");
    assert_eq!(cmd(server, &["put", "ex", "v", "--lease", &hex]).code, 0);
    let w = bg(server, &["watch", "ex"]);
    let gone = gone_within(server, "ex", WAIT)
        .unwrap_or_else(|| panic!("{kind}: ex still present after {WAIT:?}"));
    let since_grant = t0.elapsed();
    assert!(
        since_grant >= Duration::from_secs(2),
        "{kind}: a 2 s lease expired after {since_grant:?}"
    );
    assert!(
        w.wait_for(WAIT, |o| o.contains("DELETE\nex")),
        "{kind}: the watch saw no delete: {}",
        w.output()
    );
    w.stop();
    let o = cmd(server, &["lease", "timetolive", &hex]);
    assert!(o.stdout.contains("already expired"), "{kind}: {o:?}");
    eprintln!("{kind}: 2 s lease: key gone {gone:?} after the put, {since_grant:?} after grant");

    let id = lease_id(&cmd(server, &["lease", "grant", "3"]));
    let hex = format!("{id:x}");
    assert_eq!(cmd(server, &["put", "ka", "v", "--lease", &hex]).code, 0);
    let k = bg(server, &["lease", "keep-alive", &hex]);
    std::thread::sleep(Duration::from_secs(5));
    assert!(present(server, "ka"), "{kind}: kept-alive key expired");
    let out = k.stop();
    let n = out.matches("keepalived with TTL(3)").count();
    assert!(n >= 2, "{kind}: {n} keepalives in 5 s:\n{out}");
    let gone = gone_within(server, "ka", WAIT)
        .unwrap_or_else(|| panic!("{kind}: ka still present {WAIT:?} after keep-alive stopped"));
    eprintln!("{kind}: {n} keepalives in 5 s; key gone {gone:?} after they stopped");
}

#[test]
fn leases_expire_and_keepalives_hold_them_on_etcd_and_ferrocd() {
    if !etcd_tools_or_skip("leases_expire_and_keepalives_hold_them") {
        return;
    }
    expiry_and_keepalive(&Server::etcd(&[]));
    expiry_and_keepalive(&Server::ferrocd(&[]));
}

/// Two etcdctl lockers exclude each other; two candidates take turns as leader, and an
/// observer sees both proclamations.
fn lock_and_elect(server: &Server) {
    let kind = server.kind;
    let ep = server.endpoint();
    let a = Background::etcdctl(&ep, &["lock", "L"]);
    assert!(
        a.wait_for(WAIT, |o| o.starts_with("L/")),
        "{kind}: first locker: {}",
        a.output()
    );
    let b = Background::etcdctl(&ep, &["lock", "L"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(b.output(), "", "{kind}: second locker got the held lock");
    a.stop();
    assert!(
        b.wait_for(WAIT, |o| o.starts_with("L/")),
        "{kind}: second locker after release: {}",
        b.output()
    );
    b.stop();

    let observer = Background::etcdctl(&ep, &["elect", "-l", "E"]);
    let a = Background::etcdctl(&ep, &["elect", "E", "p1"]);
    assert!(
        a.wait_for(WAIT, |o| o.contains("\np1")),
        "{kind}: first candidate: {}",
        a.output()
    );
    let b = Background::etcdctl(&ep, &["elect", "E", "p2"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        b.output(),
        "",
        "{kind}: second candidate won while the first leads"
    );
    a.stop();
    assert!(
        b.wait_for(WAIT, |o| o.contains("\np2")),
        "{kind}: second candidate after resign: {}",
        b.output()
    );
    assert!(
        observer.wait_for(WAIT, |o| o.contains("\np1") && o.contains("\np2")),
        "{kind}: observer: {}",
        observer.output()
    );
    b.stop();
    observer.stop();
}

#[test]
fn etcdctl_lock_and_elect_on_etcd_and_ferrocd() {
    if !etcd_tools_or_skip("etcdctl_lock_and_elect") {
        return;
    }
    lock_and_elect(&Server::etcd(&[]));
    lock_and_elect(&Server::ferrocd(&[]));
}
