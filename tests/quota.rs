//! `--quota-backend-bytes`: on etcd and on ferrocd (same peer URL, so the same member id),
//! puts of 10 KiB values until the quota is reached; then what etcdctl prints for the
//! NOSPACE alarm, reads, deletes, puts, txns and lease grants under the alarm, and disarming,
//! must be the same.

mod common;

use common::{diff_steps, etcd_tools_or_skip, etcdctl, Output, Server};

const QUOTA: &str = "300000";

fn steps(server: &Server) -> (usize, Vec<(String, Output)>) {
    let ep = server.endpoint();
    let value = "x".repeat(10 * 1024);
    let mut puts = 0;
    let mut failed = None;
    for i in 0..2000 {
        let o = etcdctl(&ep, &["put", &format!("k{i:04}"), &value], "");
        if o.code != 0 {
            failed = Some(o);
            break;
        }
        puts += 1;
    }
    let failed = failed.unwrap_or_else(|| panic!("{}: no NOSPACE after 2000 puts", server.kind));
    assert!(
        failed
            .stderr
            .contains("etcdserver: mvcc: database space exceeded"),
        "{}: {failed:?}",
        server.kind
    );
    let mut out = Vec::new();
    for args in [
        vec!["alarm", "list"],
        vec!["put", "small", "v"],
        vec!["get", "k0000", "--keys-only"],
        vec!["del", "k0000"],
        vec!["lease", "grant", "60"],
        vec!["endpoint", "status", "-w", "fields"],
        vec!["alarm", "disarm"],
        vec!["alarm", "list"],
        // Still over the quota (nothing was freed): a put as large as the refused one raises
        // the alarm again.
        vec!["put", "big", &value],
        vec!["alarm", "list"],
    ] {
        let o = etcdctl(&ep, &args, "");
        // Only the alarm lines of the status fields are comparable (sizes differ).
        let o = if args[0] == "endpoint" {
            Output {
                stdout: o
                    .stdout
                    .lines()
                    .filter(|l| l.starts_with("\"Errors\""))
                    .collect::<Vec<_>>()
                    .join("\n"),
                ..o
            }
        } else {
            o
        };
        let stderr: Vec<&str> = o
            .stderr
            .lines()
            .filter(|l| !l.starts_with("{\"level\""))
            .collect();
        out.push((
            args.join(" "),
            Output {
                stderr: stderr.join("\n"),
                ..o
            },
        ));
    }
    (puts, out)
}

#[test]
fn the_space_quota_raises_nospace_as_etcd_does() {
    if !etcd_tools_or_skip("the_space_quota_raises_nospace") {
        return;
    }
    let etcd = Server::etcd(&["--quota-backend-bytes", QUOTA]);
    let (etcd_puts, want) = steps(&etcd);
    let peer_port = etcd.peer_port;
    drop(etcd);
    let ferrocd = Server::ferrocd_with_peer_port(peer_port, &["--quota-backend-bytes", QUOTA]);
    let (ferrocd_puts, got) = steps(&ferrocd);
    eprintln!(
        "10 KiB puts before NOSPACE at a {QUOTA} B quota: etcd {etcd_puts}, ferrocd {ferrocd_puts}"
    );
    assert!(want[0].1.stdout.contains("alarm:NOSPACE"), "{want:?}");
    let report = diff_steps(&want, &got, |o| format!("{o:?}"));
    assert!(report.is_empty(), "etcd and ferrocd differ:{report}");
}

/// Alarms survive a crash: NOSPACE raised, kill -9 and restart, still raised; disarmed, kill -9
/// and restart, still disarmed (etcd keeps alarms in its backend; ferrocd logs them).
fn alarms_across_restarts(mut server: Server) -> Vec<(String, Output)> {
    let ep = server.endpoint();
    let value = "x".repeat(10 * 1024);
    let raised =
        (0..2000).any(|i| etcdctl(&ep, &["put", &format!("k{i:04}"), &value], "").code != 0);
    assert!(raised, "{}: no NOSPACE after 2000 puts", server.kind);
    let mut out = Vec::new();
    let mut step = |server: &Server, args: &[&str]| {
        let o = etcdctl(&server.endpoint(), args, "");
        // The client's retry warnings carry times and addresses.
        let stderr: Vec<&str> = o
            .stderr
            .lines()
            .filter(|l| !l.starts_with("{\"level\""))
            .collect();
        let stderr = stderr.join("\n");
        out.push((args.join(" "), Output { stderr, ..o }));
    };
    server.kill9();
    server.restart_alarmed();
    step(&server, &["alarm", "list"]);
    step(&server, &["put", "small", "v"]);
    step(&server, &["alarm", "disarm"]);
    server.kill9();
    server.restart();
    step(&server, &["alarm", "list"]);
    step(&server, &["get", "k0000", "--print-value-only"]);
    out
}

#[test]
fn alarms_survive_kill_9_as_on_etcd() {
    if !etcd_tools_or_skip("alarms_survive_kill_9_as_on_etcd") {
        return;
    }
    let etcd = Server::etcd(&["--quota-backend-bytes", QUOTA]);
    let peer_port = etcd.peer_port;
    let want = alarms_across_restarts(etcd);
    let ferrocd = Server::ferrocd_with_peer_port(peer_port, &["--quota-backend-bytes", QUOTA]);
    let got = alarms_across_restarts(ferrocd);
    assert!(want[0].1.stdout.contains("alarm:NOSPACE"), "{want:?}");
    assert!(want[3].1.stdout.is_empty(), "{want:?}");
    let report = diff_steps(&want, &got, |o| format!("{o:?}"));
    assert!(report.is_empty(), "etcd and ferrocd differ:{report}");
}
