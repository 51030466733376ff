//! Clusters of real processes on loopback: three ferrocd members replicate through Raft, agree
//! on a leader, survive kill -9 of the leader under write load without losing an acknowledged
//! write, and a restarted member catches up. Real etcdctl reads the cluster as it reads etcd's.
//! The seed configuration file, filled in for three members, starts a cluster.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{etcdctl, http_get, rt, Cluster, Server};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn three_members_replicate_and_etcdctl_sees_one_cluster() {
    if !common::etcd_tools_or_skip("three_members_replicate_and_etcdctl_sees_one_cluster") {
        return;
    }
    let c = Cluster::ferrocd(3, &[]);
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    // member list: three started members, with the names and URLs each published. A member
    // publishes them through the log once it knows a leader, as etcd's do (a proposal dropped
    // during the election is retried a second later): until then it is listed without them,
    // so the list is read again, for at most 10 s, until every member has published.
    let published = |stdout: &str| {
        serde_json::from_str::<serde_json::Value>(stdout)
            .ok()
            .and_then(|v| {
                v["members"].as_array().map(|ms| {
                    ms.len() == 3
                        && ms.iter().all(|m| {
                            m["clientURLs"].as_array().map(Vec::len) == Some(1)
                                && m["name"].as_str().is_some_and(|n| !n.is_empty())
                        })
                })
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = etcdctl(&c.endpoints(), &["member", "list", "-w", "json"], "");
        if published(&out.stdout) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut names: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["clientURLs"].as_array().map(Vec::len), Some(1), "{m}");
            m["name"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["m0", "m1", "m2"], "{}", out.stdout);

    // A put through a follower is read linearizably on the other follower and on the leader.
    let out = etcdctl(&c.members[follower].endpoint(), &["put", "k", "v1"], "");
    assert_eq!(out.stdout, "OK\n", "{out:?}");
    for i in [other, leader] {
        let out = etcdctl(&c.members[i].endpoint(), &["get", "k"], "");
        assert_eq!(out.stdout, "k\nv1\n", "member {i}: {out:?}");
    }
    // Revisions agree: every member applied the same log.
    let revs: Vec<String> = (0..3)
        .map(|i| {
            let out = etcdctl(&c.members[i].endpoint(), &["get", "k", "-w", "json"], "");
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            v["kvs"][0]["mod_revision"].to_string()
        })
        .collect();
    assert!(revs.iter().all(|r| *r == revs[0]), "{revs:?}");

    // endpoint health and status across the cluster.
    let out = etcdctl(&c.endpoints(), &["endpoint", "health"], "");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stderr.matches("is healthy").count() + out.stdout.matches("is healthy").count(),
        3,
        "{out:?}"
    );
    // With `--cluster` (and with http:// endpoints) etcdctl 3.4 sends each member's client
    // URL, scheme included, as the HTTP/2 :authority, which ferrocd's HTTP/2 layer accepts
    // (the h2 crate refused it).
    let urls = c
        .members
        .iter()
        .map(Server::url)
        .collect::<Vec<_>>()
        .join(",");
    for (eps, cluster) in [
        (c.endpoints(), false),
        (c.members[0].endpoint(), true),
        (urls, false),
    ] {
        let mut args = vec!["endpoint", "status", "-w", "json"];
        if cluster {
            args.push("--cluster");
        }
        let out = etcdctl(&eps, &args, "");
        assert_eq!(out.code, 0, "{eps} {args:?}: {out:?}");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let statuses = v.as_array().unwrap();
        assert_eq!(statuses.len(), 3, "{}", out.stdout);
        let leaders: Vec<u64> = statuses
            .iter()
            .map(|s| s["Status"]["leader"].as_u64().unwrap())
            .collect();
        assert!(
            leaders.iter().all(|l| *l == leaders[0] && *l != 0),
            "{leaders:?}"
        );
    }
    let out = etcdctl(
        &c.members[0].endpoint(),
        &["endpoint", "health", "--cluster"],
        "",
    );
    assert_eq!(out.code, 0, "{out:?}");

    // Metrics: one leader among the three.
    let is_leader: Vec<bool> = c
        .members
        .iter()
        .map(|m| {
            let (_, body) = http_get(m.client_port, "/metrics").expect("metrics");
            body.lines().any(|l| l == "etcd_server_is_leader 1")
        })
        .collect();
    assert_eq!(is_leader.iter().filter(|x| **x).count(), 1, "{is_leader:?}");
    // etcd's peer network metrics, per peer: bytes both ways and round trips (pings).
    for m in &c.members {
        let (_, body) = http_get(m.client_port, "/metrics").expect("metrics");
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
            .expect("Prometheus text");
        let per_peer = |name: &str| -> Vec<f64> {
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == name)
                .map(|s| match &s.value {
                    prometheus_parse::Value::Counter(v) => *v,
                    prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
                    _ => 0.0,
                })
                .collect()
        };
        for name in [
            "etcd_network_peer_sent_bytes_total",
            "etcd_network_peer_round_trip_time_seconds",
        ] {
            let v = per_peer(name);
            assert_eq!(v.len(), 2, "{name} for two peers: {v:?}");
            assert!(v.iter().all(|x| *x > 0.0), "{name}: {v:?}");
        }
        // (A follower hears from the leader; two followers need not talk.)
        let received = per_peer("etcd_network_peer_received_bytes_total");
        assert!(received.iter().any(|x| *x > 0.0), "{received:?}");
    }

    // move-leader: etcdctl finds the leader among the endpoints and moves the leadership to a
    // follower; a transferee that is no member is refused as etcd refuses it.
    let (target, _) = c.status_of(follower).expect("status");
    let out = etcdctl(&c.endpoints(), &["move-leader", &format!("{target:x}")], "");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&format!("to {target:x}")), "{out:?}");
    assert_eq!(c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT), follower);
    let out = etcdctl(&c.endpoints(), &["move-leader", "12345"], "");
    assert!(
        out.stderr.contains("etcdserver: bad leader transferee"),
        "{out:?}"
    );

    // ferroctl's membership commands print what etcdctl prints: moving the leadership back,
    // and a member update to its own URLs, through both tools.
    let ferroctl = |args: &[&str]| {
        let mut a = vec![format!("--endpoints={}", c.endpoints())];
        a.extend(args.iter().map(|s| s.to_string()));
        common::run(env!("CARGO_BIN_EXE_ferroctl"), &[], &a, "")
    };
    let (old_id, _) = c.status_of(leader).expect("status");
    let out = ferroctl(&["move-leader", &format!("{old_id:x}")]);
    assert_eq!(
        out.stdout,
        format!("Leadership transferred from {target:x} to {old_id:x}\n"),
        "{out:?}"
    );
    assert_eq!(c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT), leader);
    let peer = format!(
        "--peer-urls=http://127.0.0.1:{}",
        c.members[other].peer_port
    );
    let (other_id, _) = c.status_of(other).expect("status");
    let args = ["member", "update", &format!("{other_id:x}"), &peer];
    let want = etcdctl(&c.endpoints(), &args, "");
    let got = ferroctl(&args);
    assert_eq!(
        (got.code, &got.stdout),
        (0, &want.stdout),
        "{want:?} {got:?}"
    );
    // ferroctl member add (a member that never starts) and remove, in etcdctl's words.
    let url = format!("http://127.0.0.1:{}", common::free_port());
    // (Refused as "unhealthy cluster" until the member has been connected to every voter for
    // 5 s, as etcd: retried.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = ferroctl(&["member", "add", "x", &format!("--peer-urls={url}")]);
        if !out.stderr.contains("unhealthy cluster") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let first = out.stdout.lines().next().unwrap_or_default().to_string();
    assert!(
        first.starts_with("Member ") && first.contains(" added to cluster "),
        "{out:?}"
    );
    assert!(out.stdout.contains("ETCD_INITIAL_CLUSTER=\""), "{out:?}");
    assert!(out.stdout.contains(&format!("x={url}")), "{out:?}");
    assert!(out
        .stdout
        .contains(&format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{url}\"")));
    let id = first.split_whitespace().nth(1).unwrap().to_string();
    let out = ferroctl(&["member", "remove", &id]);
    assert!(
        out.stdout
            .starts_with(&format!("Member {id:>16} removed from cluster ")),
        "{out:?}"
    );
}

/// Puts `key{i}` through `endpoints` (the client fails over between them) until `stop`;
/// returns the acknowledged keys with their revisions, and how many puts failed.
fn write_until(
    endpoints: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (BTreeMap<String, i64>, usize) {
    rt().block_on(async move {
        let mut acked = BTreeMap::new();
        let mut failed = 0;
        let opts = etcd_client::ConnectOptions::new()
            .with_timeout(Duration::from_secs(3))
            .with_connect_timeout(Duration::from_secs(1));
        let mut client = etcd_client::Client::connect(endpoints.clone(), Some(opts.clone()))
            .await
            .expect("connect");
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let key = format!("load/{i:06}");
            match client.put(key.clone(), "x", None).await {
                Ok(r) => {
                    acked.insert(key, r.header().unwrap().revision());
                }
                Err(_) => failed += 1,
            }
            i += 1;
        }
        (acked, failed)
    })
}

type Acked = (BTreeMap<String, i64>, usize);

/// Every acknowledged put (key -> revision) is on `server`, at its revision (a linearizable
/// range of the prefix through it).
fn assert_has_acked(server: &Server, acked: &BTreeMap<String, i64>, who: &str) {
    rt().block_on(async {
        let mut client = etcd_client::Client::connect([server.url()], None)
            .await
            .expect("connect");
        let got = client
            .get("load/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("range");
        let have: BTreeMap<String, i64> = got
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
            .collect();
        for (k, rev) in acked {
            assert_eq!(have.get(k), Some(rev), "{who} lost or changed {k}");
        }
    });
}

/// [`write_until`] on a thread, through the members `through`; set the flag to stop it.
fn writer(
    c: &Cluster,
    through: &[usize],
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<Acked>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let endpoints: Vec<String> = through.iter().map(|&i| c.members[i].url()).collect();
    let flag = stop.clone();
    (
        stop,
        std::thread::spawn(move || write_until(endpoints, flag)),
    )
}

#[test]
fn killing_the_leader_under_writes_loses_no_acknowledged_write() {
    if !common::etcd_tools_or_skip("killing_the_leader_under_writes_loses_no_acknowledged_write") {
        return;
    }
    let mut c = Cluster::ferrocd(3, &[]);
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    // A writer on the followers' endpoints (never the leader's: its requests would fail while
    // it is dead, which the client handles, but the point is writes through a follower).
    let (stop, writer) = writer(&c, &survivors);
    std::thread::sleep(Duration::from_millis(1500));
    c.members[leader].kill9();
    let killed = Instant::now();
    let new_leader = c.wait_leader(&survivors, LEADER_TIMEOUT);
    let elected_after = killed.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, failed) = writer.join().expect("writer");
    eprintln!(
        "new leader m{new_leader} seen {elected_after:?} after kill -9; {} puts acknowledged, {failed} failed",
        acked.len()
    );
    assert!(
        acked.len() > 50,
        "too few writes to mean anything: {}",
        acked.len()
    );

    // Every acknowledged put is on both survivors, at the revision the client was told.
    for &i in &survivors {
        assert_has_acked(&c.members[i], &acked, &format!("member {i}"));
    }

    // The killed member restarts from its data dir and catches up.
    c.members[leader].relaunch();
    c.members[leader].wait_healthy();
    let last = acked.keys().next_back().unwrap().clone();
    let what = "the restarted member did not catch up";
    common::wait_value(&c.members[leader], &last, "x", LEADER_TIMEOUT, what);
}

/// A member that lost its quorum: `/health` turns 503, as on etcd, and ferrocd names the
/// reason (etcd 3.5's "RAFT NO LEADER"); its metrics show no leader; a put fails.
#[test]
fn a_member_without_quorum_is_unhealthy_as_on_etcd() {
    if !common::etcd_tools_or_skip("a_member_without_quorum_is_unhealthy_as_on_etcd") {
        return;
    }
    let fast = ["--heartbeat-interval", "50", "--election-timeout", "500"];
    for mut c in [Cluster::ferrocd(3, &fast), Cluster::etcd(3, &fast)] {
        c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
        let kind = c.members[0].kind;
        // One member down: removing a healthy one would leave no quorum of connected voters
        // (etcd's strict reconfiguration check).
        c.members[2].kill9();
        let (healthy, _) = c.status_of(1).expect("status");
        let out = etcdctl(
            &c.members[0].endpoint(),
            &["member", "remove", &format!("{healthy:x}")],
            "",
        );
        assert!(
            out.stderr.contains("Error: etcdserver: unhealthy cluster"),
            "{kind}: {out:?}"
        );
        // Nor is a member added (a learner, so that a mistake would not change the quorum)
        // while a voter is down, once that is noticed (ferrocd: a failed write or 3 s without
        // pongs on the link).
        std::thread::sleep(Duration::from_millis(3500));
        let out = etcdctl(
            &c.members[0].endpoint(),
            &[
                "member",
                "add",
                "late",
                "--learner",
                "--peer-urls=http://127.0.0.1:1",
            ],
            "",
        );
        assert!(
            out.stderr.contains("Error: etcdserver: unhealthy cluster"),
            "{kind}: {out:?}"
        );
        c.members[1].kill9();
        let port = c.members[0].client_port;
        let deadline = Instant::now() + LEADER_TIMEOUT;
        // Until the member notices (an election timeout), a read may fail another way
        // ("leader changed"); ferrocd then names the missing leader.
        let body = loop {
            match http_get(port, "/health") {
                Some((503, body)) if kind == "etcd" || body.contains("RAFT NO LEADER") => {
                    break body
                }
                other => assert!(Instant::now() < deadline, "{kind}: still {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(body.contains(r#""health":"false""#), "{kind}: {body}");
        if kind == "ferrocd" {
            assert!(body.contains("RAFT NO LEADER"), "{body}");
            let (_, metrics) = http_get(port, "/metrics").expect("metrics");
            assert!(
                metrics.lines().any(|l| l == "etcd_server_has_leader 0"),
                "{metrics}"
            );
        }
        let out = etcdctl(
            &c.members[0].endpoint(),
            &["put", "k", "v", "--command-timeout=3s"],
            "",
        );
        assert_ne!(
            out.code, 0,
            "{kind}: a put without quorum succeeded: {out:?}"
        );
        if kind == "ferrocd" {
            let (_, metrics) = http_get(port, "/metrics").expect("metrics");
            let failed = metrics
                .lines()
                .find_map(|l| l.strip_prefix("etcd_server_proposals_failed_total "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            assert!(failed.is_some_and(|f| f >= 1.0), "{failed:?}");
        }
    }
}

/// The seed's configuration file, filled in for three members on loopback, starts a cluster
/// that replicates over mutual-TLS peer links: its `peer-transport-security` section with
/// certificates made for the test and https:// peer URLs (its client URLs stay http://, so the
/// client section is read and, as etcd does, not used; its auth keys are kept).
#[test]
fn the_seed_config_starts_a_three_member_cluster() {
    if !common::etcd_tools_or_skip("the_seed_config_starts_a_three_member_cluster") {
        return;
    }
    let seed = std::fs::read_to_string("tests/data/seed-etcd-config.yml").unwrap();
    let certs = tempfile::tempdir().unwrap();
    common::seed_certificates(certs.path());
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| (common::free_port(), common::free_port()))
        .collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("node-{}=https://127.0.0.1:{p}", i + 1))
        .collect();
    let mut members: Vec<Server> = Vec::new();
    for (i, &(client, peer)) in ports.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Vec::new();
        let mut skipping = false;
        for line in seed.lines() {
            let is_key = !line.starts_with(' ') && !line.starts_with('#') && line.contains(':');
            if is_key {
                let key = line.split(':').next().unwrap();
                skipping = false;
                let value = match key {
                    "name" => Some(format!("node-{}", i + 1)),
                    "data-dir" => Some(dir.path().join("data").display().to_string()),
                    "listen-client-urls" | "advertise-client-urls" => {
                        Some(format!("http://127.0.0.1:{client}"))
                    }
                    "listen-peer-urls" | "initial-advertise-peer-urls" => {
                        Some(format!("https://127.0.0.1:{peer}"))
                    }
                    "initial-cluster" => Some(initial.join(",")),
                    _ => None,
                };
                if let Some(v) = value {
                    kept.push(format!("{key}: {v}"));
                    continue;
                }
            }
            if !skipping {
                kept.push(line.replace("/etc/etcd/", &format!("{}/", certs.path().display())));
            }
        }
        let file = dir.path().join("etcd-config.yml");
        std::fs::write(&file, kept.join("\n")).unwrap();
        let args = vec!["--config-file".to_string(), file.display().to_string()];
        members.push(Server::launch(
            "ferrocd",
            env!("CARGO_BIN_EXE_ferrocd"),
            args,
            client,
            peer,
            dir,
        ));
    }
    for m in &mut members {
        m.wait_healthy();
    }
    let c = Cluster {
        members,
        proxies: Vec::new(),
    };
    c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    // enable-authorization: no keys until auth is on; then root (its JWTs signed with the
    // seed's shared secret, the same on every member).
    let out = etcdctl(&c.members[2].endpoint(), &["put", "greeting", "hello"], "");
    assert!(out.stderr.contains("permission denied"), "{out:?}");
    let out = etcdctl(
        &c.members[1].endpoint(),
        &["user", "add", "root:rootpw"],
        "",
    );
    assert_eq!(out.code, 0, "{out:?}");
    let out = etcdctl(&c.members[1].endpoint(), &["auth", "enable"], "");
    assert_eq!(out.code, 0, "{out:?}");
    let root = |i: usize, args: &[&str]| {
        let mut a = vec!["--user", "root:rootpw"];
        a.extend_from_slice(args);
        etcdctl(&c.members[i].endpoint(), &a, "")
    };
    let out = root(2, &["put", "greeting", "hello"]);
    assert_eq!(out.stdout, "OK\n", "{out:?}");
    let out = root(0, &["get", "greeting"]);
    assert_eq!(out.stdout, "greeting\nhello\n", "{out:?}");
    let out = etcdctl(&c.members[0].endpoint(), &["get", "greeting"], "");
    assert!(out.stderr.contains("user name is empty"), "{out:?}");
    let mut a = vec!["--user", "root:rootpw", "member", "list"];
    let eps = c.endpoints();
    a.insert(0, "--endpoints");
    a.insert(1, &eps);
    let out = common::run(
        common::ETCDCTL,
        &[("ETCDCTL_API", "3")],
        &a.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "",
    );
    assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
    assert!(out.stdout.contains("node-3"), "{out:?}");
    assert!(
        out.stdout.contains("https://127.0.0.1"),
        "TLS peer URLs: {out:?}"
    );
}

/// Clients put and get a few keys through every member while the leader is killed and
/// restarted; the recorded history (call and return times, values) must be linearizable.
/// Puts that failed count as of unknown outcome; failed gets are left out.
#[test]
fn a_history_across_a_leader_kill_and_restart_is_linearizable() {
    use ferrocd::linearizability::{check, Op, OpKind};
    if !common::etcd_tools_or_skip("a_history_across_a_leader_kill_and_restart_is_linearizable") {
        return;
    }
    let mut c = Cluster::ferrocd(3, &[]);
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let start = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            // Each client talks to one member (clients 0 and 3 to the same one).
            let url = c.members[client % 3].url();
            let stop = stop.clone();
            std::thread::spawn(move || {
                rt().block_on(async move {
                    let opts = etcd_client::ConnectOptions::new()
                        .with_timeout(Duration::from_secs(2))
                        .with_connect_timeout(Duration::from_millis(500));
                    let mut history = Vec::new();
                    let mut cli = None;
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if cli.is_none() {
                            cli = etcd_client::Client::connect([url.clone()], Some(opts.clone()))
                                .await
                                .ok();
                            if cli.is_none() {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                        let cl = cli.as_mut().expect("client");
                        let key = format!("reg/{}", (i * 7 + client as u64) % 3);
                        let call = start.elapsed().as_micros() as u64;
                        if i % 2 == 0 {
                            let value = format!("c{client}-{i}");
                            let r = cl.put(key.clone(), value.clone(), None).await;
                            let ret = start.elapsed().as_micros() as u64;
                            history.push(Op {
                                key,
                                kind: OpKind::Put(value),
                                call,
                                ret: r.is_ok().then_some(ret),
                            });
                            if r.is_err() {
                                // Its member is down: do not spin.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        } else if let Ok(r) = cl.get(key.clone(), None).await {
                            let ret = start.elapsed().as_micros() as u64;
                            let v = r
                                .kvs()
                                .first()
                                .map(|kv| kv.value_str().unwrap().to_string());
                            history.push(Op {
                                key,
                                kind: OpKind::Get(v),
                                call,
                                ret: Some(ret),
                            });
                        }
                        i += 1;
                    }
                    history
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    c.members[leader].kill9();
    std::thread::sleep(Duration::from_millis(2500));
    c.members[leader].relaunch();
    c.members[leader].wait_healthy();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let history: Vec<Op> = clients
        .into_iter()
        .flat_map(|h| h.join().expect("client"))
        .collect();
    let puts = history
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Put(_)))
        .count();
    let unknown = history.iter().filter(|o| o.ret.is_none()).count();
    eprintln!(
        "{} operations ({puts} puts, {unknown} of unknown outcome)",
        history.len()
    );
    assert!(
        puts - unknown > 100,
        "too few acknowledged puts: {}",
        puts - unknown
    );
    if let Err(e) = check(&history) {
        panic!("the history is not shown linearizable: {e:#?}");
    }
}

/// `etcdctl watch` requires a leader (clientv3.WithRequireLeader): when its member loses the
/// leader, the watch is canceled with "etcdserver: no leader", on ferrocd as on etcd.
#[test]
fn a_watch_that_requires_a_leader_ends_when_the_member_loses_it() {
    if !common::etcd_tools_or_skip("a_watch_that_requires_a_leader_ends_when_the_member_loses_it") {
        return;
    }
    let fast = ["--heartbeat-interval", "50", "--election-timeout", "500"];
    let mut outputs = Vec::new();
    for mut c in [Cluster::etcd(3, &fast), Cluster::ferrocd(3, &fast)] {
        c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
        let kind = c.members[0].kind;
        let mut w = common::Background::etcdctl(&c.members[0].endpoint(), &["watch", "foo"]);
        // The watch is open once a put made after it shows up.
        let deadline = Instant::now() + LEADER_TIMEOUT;
        while !w.output().contains("\nx\n") {
            assert!(
                Instant::now() < deadline,
                "{kind}: watch saw nothing: {}",
                w.output()
            );
            etcdctl(&c.members[0].endpoint(), &["put", "foo", "x"], "");
            std::thread::sleep(Duration::from_millis(200));
        }
        c.members[1].kill9();
        c.members[2].kill9();
        let ended = w.wait_for(LEADER_TIMEOUT, |o| o.contains("canceled by the server"));
        assert!(ended, "{kind}: watch still open: {}", w.output());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !w.exited() {
            assert!(Instant::now() < deadline, "{kind}: etcdctl did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        // From the first put on: as many "PUT foo x" as puts it took to see one.
        let out = w.output();
        let tail: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with("{\"level\""))
            .skip_while(|l| *l != "x")
            .skip_while(|l| *l == "x" || *l == "PUT" || *l == "foo")
            .collect();
        outputs.push((kind, tail.join("\n")));
    }
    assert_eq!(outputs[0].1, outputs[1].1, "{outputs:?}");
    assert!(
        outputs[1].1.contains("etcdserver: no leader"),
        "{outputs:?}"
    );
}

/// Membership through etcdctl: a learner is added and started with the ETCD_INITIAL_CLUSTER
/// etcdctl printed and `--initial-cluster-state existing`, catches up from the log, is
/// promoted, then an original member is removed (and stops); the cluster serves throughout.
#[test]
fn members_are_added_as_learners_promoted_and_removed_with_etcdctl() {
    if !common::etcd_tools_or_skip(
        "members_are_added_as_learners_promoted_and_removed_with_etcdctl",
    ) {
        return;
    }
    let mut c = Cluster::ferrocd(3, &[]);
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    // More entries than members keep whole in memory (RAFT_ENTRIES_WHOLE, 10,000): the new
    // member catches up through entries read back from the leader's log.
    const HISTORY: usize = 12_000;
    let url = c.members[leader].url();
    rt().block_on(async move {
        let mut tasks = Vec::new();
        for t in 0..20 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut cl = etcd_client::Client::connect([url], None)
                    .await
                    .expect("connect");
                for i in (t..HISTORY).step_by(20) {
                    cl.put(format!("h/{i:05}"), "x", None).await.expect("put");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
    });
    assert_eq!(etcdctl(&c.endpoints(), &["put", "k", "v"], "").code, 0);

    let (out, new) = c.add_member("m3", true, &[]);
    assert_eq!(new, 3);
    let initial = common::initial_cluster(&out);
    assert_eq!(initial.matches('=').count(), 4, "{initial}");
    let peer_url = format!("http://127.0.0.1:{}", c.members[3].peer_port);
    assert!(initial.contains(&format!("m3={peer_url}")), "{initial}");
    assert!(
        out.stdout
            .contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out:?}"
    );
    // The learner catches up from the log (entries from the cluster's first).
    let what = "the learner did not catch up";
    common::wait_value(&c.members[3], "k", "v", LEADER_TIMEOUT, what);
    let out = etcdctl(
        &c.members[3].endpoint(),
        &[
            "get",
            "h/",
            "--prefix",
            "--keys-only",
            "--consistency=s",
            "-w",
            "json",
        ],
        "",
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(
        v["count"].as_u64(),
        Some(HISTORY as u64),
        "the learner's copy of h/"
    );
    let (_, metrics) = http_get(c.members[leader].client_port, "/metrics").expect("metrics");
    let read_back = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferrocd_raft_entries_read_from_log_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    eprintln!("the leader read {read_back} entries back from its log for the new member");
    assert!(
        read_back > 0.0,
        "the leader read no entry back from its log"
    );
    let list = |c: &Cluster| -> serde_json::Value {
        let out = etcdctl(&c.endpoints(), &["member", "list", "-w", "json"], "");
        serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"))
    };
    let v = list(&c);
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 4, "{v}");
    let learner = members
        .iter()
        .find(|m| m["isLearner"] == true)
        .unwrap_or_else(|| panic!("no learner in {v}"));
    let learner_id = learner["ID"].as_u64().unwrap();
    // The learner says so in its status.
    let out = etcdctl(
        &c.members[3].endpoint(),
        &["endpoint", "status", "-w", "json"],
        "",
    );
    assert!(out.stdout.contains("\"isLearner\":true"), "{out:?}");

    // Promotion, asked of a follower (which has the leader check the learner's progress).
    let leader_ep = c.members[leader].endpoint();
    let follower_ep = c.members[(leader + 1) % 3].endpoint();
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let out = etcdctl(
            &follower_ep,
            &["member", "promote", &format!("{learner_id:x}")],
            "",
        );
        if out.code == 0 {
            assert!(out.stdout.contains("promoted"), "{out:?}");
            break;
        }
        assert!(
            out.stderr.contains("in sync with leader") && Instant::now() < deadline,
            "{out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = list(&c);
    assert!(
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["isLearner"] != true),
        "{v}"
    );
    // member update: its own URLs again (allowed), another member's (refused), an unknown id.
    let id_hex = format!("{learner_id:x}");
    let out = etcdctl(
        &c.endpoints(),
        &[
            "member",
            "update",
            &id_hex,
            &format!("--peer-urls={peer_url}"),
        ],
        "",
    );
    assert!(
        // (etcdctl pads ids to 16 columns: "%16x".)
        out.stdout.contains(&format!("Member {id_hex:>16} updated")),
        "{out:?}"
    );
    let other_url = format!("http://127.0.0.1:{}", c.members[0].peer_port);
    let out = etcdctl(
        &c.endpoints(),
        &[
            "member",
            "update",
            &id_hex,
            &format!("--peer-urls={other_url}"),
        ],
        "",
    );
    assert!(
        out.stderr.contains("etcdserver: Peer URLs already exists"),
        "{out:?}"
    );
    let out = etcdctl(
        &c.endpoints(),
        &[
            "member",
            "update",
            "1234",
            &format!("--peer-urls={peer_url}"),
        ],
        "",
    );
    assert!(
        out.stderr.contains("etcdserver: member not found"),
        "{out:?}"
    );
    // The promoted member takes writes.
    let out = etcdctl(&c.members[3].endpoint(), &["put", "k2", "v2"], "");
    assert_eq!(out.stdout, "OK\n", "{out:?}");

    // Remove an original follower: it stops, the other three serve.
    let gone = (leader + 1) % 3;
    let (gone_id, _) = c.status_of(gone).expect("status");
    let out = etcdctl(
        &leader_ep,
        &["member", "remove", &format!("{gone_id:x}")],
        "",
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("removed from cluster"), "{out:?}");
    let deadline = Instant::now() + LEADER_TIMEOUT;
    while c.members[gone].alive() {
        assert!(Instant::now() < deadline, "the removed member still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rest: Vec<usize> = (0..4).filter(|&i| i != gone).collect();
    let eps: Vec<String> = rest.iter().map(|&i| c.members[i].endpoint()).collect();
    let out = etcdctl(&eps.join(","), &["member", "list"], "");
    assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
    for &i in &rest {
        let out = etcdctl(&c.members[i].endpoint(), &["get", "k2"], "");
        assert_eq!(out.stdout, "k2\nv2\n", "member {i}: {out:?}");
    }

    // The joined member restarts from its data dir (same flags) and is a voter of the
    // three-member cluster again: kill -9 and restart it, and write through it.
    c.members[3].kill9();
    c.members[3].relaunch();
    c.members[3].wait_healthy();
    let out = etcdctl(&c.members[3].endpoint(), &["put", "k3", "v3"], "");
    assert_eq!(out.stdout, "OK\n", "{out:?}");
    let out = etcdctl(&c.members[rest[0]].endpoint(), &["get", "k3"], "");
    assert_eq!(out.stdout, "k3\nv3\n", "{out:?}");
}

/// `n` clients of one endpoint, all connected (so that their requests go out together).
async fn connected_clients(url: &str, n: usize) -> Vec<etcd_client::Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(
            etcd_client::Client::connect([url], None)
                .await
                .expect("connect"),
        );
    }
    clients
}

/// Two clients of one endpoint, both connected.
async fn two_clients(url: String) -> (etcd_client::Client, etcd_client::Client) {
    let mut c = connected_clients(&url, 2).await;
    let b = c.pop().expect("two");
    (c.pop().expect("two"), b)
}

/// Membership changes asked of the leader at once: raft-rs takes one configuration change at
/// a time and turns the others into empty entries (their clients would wait for the request
/// timeout, as etcd's do); the Raft loop holds them until the one before is applied, and each
/// is checked again when applied (two learners asked at once: one is refused, as etcd allows
/// one). Changes asked of a follower at once go through too (two removals).
#[test]
fn concurrent_membership_changes_go_through_in_turn() {
    if !common::etcd_tools_or_skip("concurrent_membership_changes_go_through_in_turn") {
        return;
    }
    let c = Cluster::ferrocd(3, &[]);
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    // As etcd, a member adds one only after 5 s connected to every voter.
    std::thread::sleep(Duration::from_secs(6));
    let url = c.members[leader].url();
    // Both clients connect first, then both requests go out together (one task polls both).
    let add_at_once = |learners: [bool; 2]| {
        let url = url.clone();
        rt().block_on(async move {
            let (mut a, mut b) = two_clients(url).await;
            let opts = |learner: bool| {
                let o = etcd_client::MemberAddOptions::new();
                Some(if learner { o.with_is_learner() } else { o })
            };
            let peer = || vec![format!("http://127.0.0.1:{}", common::free_port())];
            let started = Instant::now();
            let (ra, rb) = tokio::join!(
                a.member_add(peer(), opts(learners[0])),
                b.member_add(peer(), opts(learners[1]))
            );
            let results: Vec<Result<u64, String>> = [ra, rb]
                .into_iter()
                .map(|r| {
                    r.map(|r| r.member().map_or(0, |m| m.id()))
                        .map_err(|e| e.to_string())
                })
                .collect();
            eprintln!(
                "member adds at once (learners {learners:?}): {results:?} in {:?}",
                started.elapsed()
            );
            results
        })
    };
    // Two learners: one is added, the other refused as etcd refuses it.
    let r = add_at_once([true, true]);
    assert_eq!(
        r.iter()
            .filter(|r| r.as_ref().is_ok_and(|id| *id != 0))
            .count(),
        1,
        "{r:?}"
    );
    let learner = r
        .iter()
        .find_map(|r| r.as_ref().ok().copied())
        .expect("one added");
    let refused = r
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("one refused");
    assert!(
        refused.contains("etcdserver: too many learner members in cluster"),
        "{refused}"
    );
    // Two voters (never started: three started voters of five stay a quorum): both added when
    // both were checked before the first was applied; the second is refused as "unhealthy
    // cluster" (as etcd refuses it) when it was checked after (the leader is not connected
    // to a voter that never started), as happens on a loaded machine.
    let r = add_at_once([false, false]);
    assert!(
        r.iter().all(|r| r
            .as_ref()
            .is_ok_and(|id| *id != 0)
            .then_some(())
            .or_else(|| r
                .as_ref()
                .err()
                .filter(|e| e.contains("etcdserver: unhealthy cluster"))
                .map(drop))
            .is_some()),
        "{r:?}"
    );
    let voters: Vec<u64> = r.into_iter().filter_map(Result::ok).collect();
    assert!(!voters.is_empty());
    let out = etcdctl(&c.endpoints(), &["member", "list"], "");
    assert_eq!(out.stdout.lines().count(), 4 + voters.len(), "{out:?}");
    assert_eq!(
        out.stdout.matches(", true").count(),
        1,
        "one learner: {out:?}"
    );
    // The voters and the learner removed at once through a follower: raft-rs passes a
    // follower's change on to the leader as it is, and the leader's raft-rs emptied all but
    // the first while one was pending (their clients timed out, as on etcd); ferrocd logs
    // them for the leader to hold.
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let url = c.members[follower].url();
    let mut ids = voters.clone();
    ids.push(learner);
    let log_tail = |i: usize| -> String {
        let log = c.members[i].log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    let removed = rt().block_on(async move {
        let clients = connected_clients(&url, ids.len()).await;
        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for (mut c, id) in clients.into_iter().zip(ids) {
            calls.spawn(async move {
                c.member_remove(id)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        }
        let results: Vec<Result<(), String>> = calls.join_all().await;
        eprintln!(
            "member removes at once through a follower: {results:?} in {:?}",
            started.elapsed()
        );
        results
    });
    assert!(
        removed.iter().all(|r| r.is_ok()),
        "{removed:?}\nfollower:\n{}\nleader:\n{}",
        log_tail(follower),
        log_tail(leader)
    );
    let out = etcdctl(&c.endpoints(), &["member", "list"], "");
    assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
    // A learner added through the follower, then removed twice at once through it: the
    // second is refused when applied, and its client hears it.
    let url = c.members[follower].url();
    let twice = rt().block_on(async move {
        let (mut a, mut b) = two_clients(url).await;
        let peer = vec![format!("http://127.0.0.1:{}", common::free_port())];
        let added = a
            .member_add(
                peer,
                Some(etcd_client::MemberAddOptions::new().with_is_learner()),
            )
            .await
            .expect("a learner added through a follower");
        let id = added.member().expect("the member").id();
        let (ra, rb) = tokio::join!(a.member_remove(id), b.member_remove(id));
        [ra, rb].map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
    });
    assert_eq!(
        twice.iter().filter(|r| r.is_ok()).count(),
        1,
        "{twice:?}\nfollower:\n{}\nleader:\n{}",
        log_tail(follower),
        log_tail(leader)
    );
    assert!(
        twice.iter().any(|r| r
            .as_ref()
            .is_err_and(|e| e.contains("etcdserver: member not found"))),
        "{twice:?}"
    );
    let out = etcdctl(&c.endpoints(), &["member", "list"], "");
    assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
    // Three voters (never started) added at once through the follower: each passes the
    // follower's checks against three started voters, but all three would leave three of six
    // started, no quorum. The leader checks each again as it proposes it: one is added, the
    // others are refused, and their clients hear it through the log (not a time-out).
    let url = c.members[follower].url();
    let three = rt().block_on(async move {
        let clients = connected_clients(&url, 3).await;
        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for mut c in clients {
            let peer = vec![format!("http://127.0.0.1:{}", common::free_port())];
            calls.spawn(async move {
                c.member_add(peer, None)
                    .await
                    .map(|r| r.member().map_or(0, |m| m.id()))
                    .map_err(|e| e.to_string())
            });
        }
        let results: Vec<Result<u64, String>> = calls.join_all().await;
        eprintln!(
            "three voters added at once through a follower: {results:?} in {:?}",
            started.elapsed()
        );
        results
    });
    let added: Vec<u64> = three.iter().filter_map(|r| r.clone().ok()).collect();
    assert_eq!(
        added.len(),
        1,
        "{three:?}\nfollower:\n{}\nleader:\n{}",
        log_tail(follower),
        log_tail(leader)
    );
    assert!(
        three.iter().filter_map(|r| r.as_ref().err()).all(|e| e
            .contains("etcdserver: unhealthy cluster")
            || e.contains("etcdserver: re-configuration failed due to not enough started members")),
        "{three:?}"
    );
    // Three started voters of four: still a quorum.
    let out = etcdctl(&c.endpoints(), &["put", "after-three", "v"], "");
    assert_eq!(out.stdout, "OK\n", "{out:?}");
    let out = etcdctl(
        &c.members[leader].endpoint(),
        &["member", "remove", &format!("{:x}", added[0])],
        "",
    );
    assert_eq!(out.code, 0, "{out:?}");
    let out = etcdctl(&c.endpoints(), &["member", "list"], "");
    assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
}

/// A lease's deadline survives a leader change (keepalives are logged): the new leader neither
/// resets it to the whole TTL (etcd 3.4's default) nor forgets a renewal the old leader
/// acknowledged, even when the old leader is killed right after it.
#[test]
fn lease_deadlines_survive_a_leader_change() {
    if !common::etcd_tools_or_skip("lease_deadlines_survive_a_leader_change") {
        return;
    }
    let fast = ["--heartbeat-interval", "50", "--election-timeout", "500"];
    let mut c = Cluster::ferrocd(3, &fast);
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let ep = c.members[leader].endpoint();
    let out = etcdctl(&ep, &["lease", "grant", "10"], "");
    let id = out
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{out:?}"))
        .to_string();
    std::thread::sleep(Duration::from_secs(3));
    // Renewed through the leader 3 s after the grant; the leader killed as soon as the client
    // has the answer (when the leader renewed in memory and logged its deadlines twice per
    // election timeout, such a renewal was lost: the new leader's deadline came 3 s early).
    let out = etcdctl(&ep, &["lease", "keep-alive", "--once", &id], "");
    assert_eq!(out.code, 0, "{out:?}");
    let renewed = Instant::now();
    c.members[leader].kill9();
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = c.wait_leader(&rest, LEADER_TIMEOUT);
    let out = etcdctl(
        &c.members[new_leader].endpoint(),
        &["lease", "timetolive", &id],
        "",
    );
    let left: f64 = out
        .stdout
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    // From the renewal: 10 s, plus the election timeout the new leader adds (0.5 s).
    let expected = 10.5 - renewed.elapsed().as_secs_f64();
    eprintln!("lease {id}: {left} s left on the new leader, {expected:.1} s expected");
    // etcd prints whole seconds, rounded down.
    assert!(
        left <= expected + 0.25 && left >= expected - 1.5,
        "{left} s left, expected about {expected:.1} (a reset would give 10, a lost renewal about {:.1})",
        expected - 3.0
    );
}

/// A keepalive stream on a follower goes on across a kill -9 of the leader: the keepalive sent
/// while there is no leader is asked again until a new leader takes it (as etcd's LeaseRenew
/// waits for a leader) instead of being answered "leader changed", which ended the stream.
#[test]
fn a_keepalive_stream_outlives_a_leader_change() {
    if !common::etcd_tools_or_skip("a_keepalive_stream_outlives_a_leader_change") {
        return;
    }
    let fast = ["--heartbeat-interval", "50", "--election-timeout", "500"];
    let mut c = Cluster::ferrocd(3, &fast);
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let follower = (leader + 1) % 3;
    let rt = rt();
    let url = c.members[follower].url();
    let (mut keeper, mut stream) = rt.block_on(async {
        let mut client = etcd_client::Client::connect([url], None)
            .await
            .expect("connect");
        let id = client.lease_grant(10, None).await.expect("grant").id();
        // Opening the stream sends one keepalive and reads its answer.
        client
            .lease_keep_alive(id)
            .await
            .expect("a keepalive stream")
    });
    c.members[leader].kill9();
    let started = Instant::now();
    rt.block_on(async {
        keeper.keep_alive().await.expect("sent");
        let answer = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("answered within 10 s")
            .expect("the stream goes on")
            .expect("an answer");
        assert_eq!(answer.ttl(), 10, "renewed: {answer:?}");
    });
    eprintln!(
        "keepalive answered {:?} after the leader's kill",
        started.elapsed()
    );
}

/// The leader freezes (SIGSTOP: to the others it is cut off) under writes and comes back
/// (SIGCONT): a new leader takes over, the old one steps down and catches up, and a watch on a
/// follower from the first revision sees every acknowledged put, in order, once.
#[test]
fn a_frozen_leader_steps_down_and_a_follower_watch_misses_nothing() {
    if !common::etcd_tools_or_skip("a_frozen_leader_steps_down_and_a_follower_watch_misses_nothing")
    {
        return;
    }
    let fast = ["--heartbeat-interval", "50", "--election-timeout", "500"];
    let c = Cluster::ferrocd(3, &fast);
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let watch_url = c.members[followers[0]].url();
    let watcher = std::thread::spawn(move || {
        rt().block_on(async move {
            let mut client = etcd_client::Client::connect([watch_url], None)
                .await
                .expect("connect");
            let opts = etcd_client::WatchOptions::new()
                .with_prefix()
                .with_start_revision(1);
            let mut stream = client.watch("p/", Some(opts)).await.expect("watch");
            let mut seen: Vec<(i64, String)> = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let msg = tokio::time::timeout_at(deadline, stream.message())
                    .await
                    .expect("watch stalled")
                    .expect("watch failed")
                    .expect("watch ended");
                for e in msg.events() {
                    let kv = e.kv().expect("kv");
                    seen.push((kv.mod_revision(), kv.key_str().unwrap().to_string()));
                }
                if seen.iter().any(|(_, k)| k == "p/end") {
                    return seen;
                }
            }
        })
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let endpoints: Vec<String> = followers.iter().map(|&i| c.members[i].url()).collect();
    let writer = {
        let (stop, endpoints) = (stop.clone(), endpoints.clone());
        std::thread::spawn(move || {
            rt().block_on(async move {
                let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2));
                let mut client = etcd_client::Client::connect(endpoints, Some(opts))
                    .await
                    .expect("connect");
                let mut acked = BTreeMap::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("p/{i:06}");
                    if let Ok(r) = client.put(key.clone(), "v", None).await {
                        acked.insert(key, r.header().unwrap().revision());
                    }
                    i += 1;
                }
                let r = client.put("p/end", "v", None).await.expect("last put");
                acked.insert("p/end".to_string(), r.header().unwrap().revision());
                acked
            })
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    c.members[leader].pause();
    let new_leader = c.wait_leader(&followers, LEADER_TIMEOUT);
    std::thread::sleep(Duration::from_millis(1000));
    c.members[leader].resume();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.join().expect("writer");
    let seen = watcher.join().expect("watcher");
    eprintln!(
        "leader m{leader} frozen, m{new_leader} took over; {} puts acknowledged, {} events seen",
        acked.len(),
        seen.len()
    );
    // Ordered and unique: revisions strictly increase (one put per revision here).
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "events out of order or repeated"
    );
    // Reliable: every acknowledged put is there, at its revision.
    let by_key: BTreeMap<&str, i64> = seen.iter().map(|(r, k)| (k.as_str(), *r)).collect();
    for (k, rev) in &acked {
        assert_eq!(by_key.get(k.as_str()), Some(rev), "the watch missed {k}");
    }
    // The old leader followed: it serves the last put locally, under the new term.
    let what = "the old leader did not catch up";
    common::wait_value(&c.members[leader], "p/end", "v", LEADER_TIMEOUT, what);
    assert_eq!(c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT), new_leader);
}

/// A CA, a peer certificate for 127.0.0.1 signed by it (server and client use, as etcd's peer
/// certificates), and one signed by another CA.
fn peer_certificates(dir: &std::path::Path) {
    let ext = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n";
    common::certificates(
        dir,
        &["ca", "other-ca"],
        &[
            ("peer", "ca", ext, "/CN=peer"),
            ("stranger", "other-ca", ext, "/CN=peer"),
        ],
    );
}

/// Peer links over TLS with etcd's flags (https:// peer URLs, `--peer-cert-file`,
/// `--peer-key-file`, `--peer-trusted-ca-file`, `--peer-client-cert-auth`): the same
/// certificates form an etcd cluster and a ferrocd cluster that replicates; a member whose
/// certificate another CA signed is refused by its peers and never gets a leader.
#[test]
fn peer_links_use_tls_with_etcds_flags() {
    if !common::etcd_tools_or_skip("peer_links_use_tls_with_etcds_flags") {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    peer_certificates(certs.path());
    let flags = |cert: &str| -> Vec<String> {
        let f = |n: &str| certs.path().join(n).display().to_string();
        vec![
            "--peer-cert-file".into(),
            f(&format!("{cert}.crt")),
            "--peer-key-file".into(),
            f(&format!("{cert}.key")),
            "--peer-trusted-ca-file".into(),
            f("ca.crt"),
            "--peer-client-cert-auth".into(),
        ]
    };
    for (kind, bin) in [("etcd", common::ETCD), ("ferrocd", Cluster::ferrocd_bin())] {
        let mut c = Cluster::launch(kind, bin, 3, "https", |_| flags("peer"));
        for m in &mut c.members {
            m.wait_healthy();
        }
        c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
        let out = etcdctl(&c.members[0].endpoint(), &["put", "k", "over-tls"], "");
        assert_eq!(out.stdout, "OK\n", "{kind}: {out:?}");
        let out = etcdctl(&c.members[2].endpoint(), &["get", "k"], "");
        assert_eq!(out.stdout, "k\nover-tls\n", "{kind}: {out:?}");
    }
    // Member 2 presents a certificate from another CA: members 0 and 1 form the cluster, 2
    // stays without a leader.
    let mut c = Cluster::launch("ferrocd", Cluster::ferrocd_bin(), 3, "https", |i| {
        flags(if i == 2 { "stranger" } else { "peer" })
    });
    c.members[0].wait_healthy();
    c.members[1].wait_healthy();
    c.wait_leader(&[0, 1], LEADER_TIMEOUT);
    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = http_get(c.members[2].client_port, "/health").expect("health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("RAFT NO LEADER"), "{body}");
    let refused = c.members[..2]
        .iter()
        .any(|m| m.log().contains("peer TLS handshake failed"));
    assert!(refused, "no member logged a refused handshake");
}

/// Auth is replicated: users, roles and permissions set through one member hold on every
/// member; a simple token given by one member is accepted by the others (its digest travels
/// in the log); a permission revoked through one member refuses the next write through
/// another; and a restarted member comes back with the same rules.
#[test]
fn auth_replicates_to_every_member() {
    if !common::etcd_tools_or_skip("auth_replicates_to_every_member") {
        return;
    }
    let mut c = Cluster::ferrocd(3, &["--bcrypt-cost", "4"]);
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let eps: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let ports: Vec<u16> = c.members.iter().map(|m| m.client_port).collect();
    let run = |i: usize, args: &[&str]| etcdctl(&eps[i], args, "");
    let ok = |i: usize, args: &[&str]| {
        let out = run(i, args);
        assert_eq!(out.code, 0, "member {i} {args:?}: {out:?}");
        out.stdout
    };
    ok(0, &["user", "add", "root:rootpw"]);
    ok(0, &["user", "add", "alice:apw"]);
    ok(1, &["role", "add", "app"]);
    ok(
        2,
        &[
            "role",
            "grant-permission",
            "--prefix",
            "app",
            "readwrite",
            "app/",
        ],
    );
    ok(0, &["user", "grant-role", "alice", "app"]);
    ok(1, &["auth", "enable"]);
    let alice = ["--user", "alice:apw"];
    let with = |who: &[&'static str], args: &[&'static str]| -> Vec<&'static str> {
        who.iter().chain(args).copied().collect()
    };
    for i in 0..3 {
        ok(i, &with(&alice, &["put", "app/k", "v"]));
        let out = run(i, &with(&alice, &["put", "other", "v"]));
        assert!(
            out.stderr.contains("permission denied"),
            "member {i}: {out:?}"
        );
        let out = run(i, &["get", "app/k"]);
        assert!(
            out.stderr.contains("user name is empty"),
            "member {i}: {out:?}"
        );
    }
    // A token from member 0, used on members 1 and 2 (the gateway's Authorization header).
    let (status, body) = {
        let (s, _, b) = common::http_request(
            ports[0],
            "POST",
            "/v3/auth/authenticate",
            r#"{"name":"alice","password":"apw"}"#,
        )
        .expect("an answer");
        (s, b)
    };
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    for i in [1, 2] {
        // The grant is applied on the other members shortly after member 0 answers.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (s, _, b) = common::http_request_with(
                ports[i],
                "POST",
                "/v3/kv/range",
                r#"{"key":"YXBwL2s="}"#,
                &[("Authorization", &token)],
            )
            .expect("an answer");
            if s == 200 {
                assert!(b.contains("\"count\":\"1\""), "member {i}: {b}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} refused the token: {s} {b}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // With auth on, a keepalive through a follower renews the lease on the leader too (the
    // follower logs it).
    let out = ok(leader, &with(&alice, &["lease", "grant", "10"]));
    let id: &'static str = out
        .split_whitespace()
        .nth(1)
        .expect("a lease id")
        .to_string()
        .leak();
    std::thread::sleep(Duration::from_secs(4));
    let follower = (leader + 1) % 3;
    let out = ok(
        follower,
        &with(&alice, &["lease", "keep-alive", "--once", id]),
    );
    assert!(out.contains("TTL(10)"), "{out}");
    let out = ok(leader, &with(&alice, &["lease", "timetolive", id]));
    let left: u64 = out
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        left >= 8,
        "{left} s left on the leader after a renewal 4 s into 10: {out}"
    );
    // Revoked through member 2: the next write through member 0 is refused.
    ok(
        2,
        &[
            "--user",
            "root:rootpw",
            "user",
            "revoke-role",
            "alice",
            "app",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = run(0, &with(&alice, &["put", "app/k", "v2"]));
        if out.stderr.contains("permission denied") {
            break;
        }
        assert!(Instant::now() < deadline, "still allowed: {out:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A member restarted from its data dir keeps the rules.
    c.members[1].kill9();
    c.members[1].restart();
    let out = run(1, &["get", "app/k"]);
    assert!(out.stderr.contains("user name is empty"), "{out:?}");
    let out = ok(1, &["--user", "root:rootpw", "get", "app/k"]);
    assert!(out.contains('v'), "{out}");
}

/// A leader cut off from its peers (a proxy in front of its peer port drops every connection
/// to it; its own messages still go out, so it steps down by check-quorum before the others
/// stop hearing it) while writes go through the others: they elect a new leader, the cut-off member refuses
/// writes ("no leader" or a time-out), and once healed it follows the new leader without
/// disturbing it (pre-vote: its elections while cut off did not raise the term) and has every
/// acknowledged write.
#[test]
fn a_leader_cut_off_by_a_partition_steps_aside_and_catches_up_when_healed() {
    if !common::etcd_tools_or_skip(
        "a_leader_cut_off_by_a_partition_steps_aside_and_catches_up_when_healed",
    ) {
        return;
    }
    let mut c = Cluster::launch_proxied("ferrocd", Cluster::ferrocd_bin(), 3, &[]);
    for m in &mut c.members {
        m.wait_healthy();
    }
    let leader = c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (stop, writer) = writer(&c, &others);
    std::thread::sleep(Duration::from_millis(1000));
    c.proxies[leader].cut(true);
    let cut = Instant::now();
    let new_leader = c.wait_leader(&others, LEADER_TIMEOUT);
    eprintln!(
        "m{leader} cut off; m{new_leader} leads {:?} later",
        cut.elapsed()
    );
    // The cut-off member knows no leader (check-quorum), and takes no write.
    let deadline = Instant::now() + LEADER_TIMEOUT;
    let refused = loop {
        let out = etcdctl(
            &c.members[leader].endpoint(),
            &["put", "cut/k", "v", "--command-timeout=3s"],
            "",
        );
        if out.code != 0 {
            break out;
        }
        assert!(Instant::now() < deadline, "the cut-off member took writes");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        refused.stderr.contains("no leader") || refused.stderr.contains("timed out"),
        "{refused:?}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let term_before = status_term(&c, new_leader);
    c.proxies[leader].cut(false);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, failed) = writer.join().expect("writer");
    eprintln!("{} puts acknowledged, {failed} failed", acked.len());
    assert!(acked.len() > 50, "too few writes: {}", acked.len());
    let last = acked.keys().next_back().unwrap().clone();
    let what = "the healed member did not catch up";
    common::wait_value(&c.members[leader], &last, "x", LEADER_TIMEOUT, what);
    assert_eq!(c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT), new_leader);
    assert_eq!(
        status_term(&c, new_leader),
        term_before,
        "the healed member disturbed the leader"
    );
    // Every acknowledged put is on the healed member, at its revision.
    assert_has_acked(&c.members[leader], &acked, "the healed member");
}

/// Member `i`'s Raft term, from etcdctl endpoint status.
fn status_term(c: &Cluster, i: usize) -> u64 {
    let out = etcdctl(
        &c.members[i].endpoint(),
        &["endpoint", "status", "-w", "json"],
        "",
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v[0]["Status"]["raftTerm"]
        .as_u64()
        .unwrap_or_else(|| panic!("no raft term in {out:?}"))
}

/// A key, its value, create and mod revisions, and version.
type Kv = (String, String, i64, i64, i64);

/// Every key of `server` (a serializable range of the whole key space), and the revision it
/// answered at.
fn keyspace(server: &Server) -> (Vec<Kv>, i64) {
    rt().block_on(async {
        let mut client = etcd_client::Client::connect([server.url()], None)
            .await
            .expect("connect");
        let opts = etcd_client::GetOptions::new()
            .with_from_key()
            .with_serializable();
        let got = client.get("\0", Some(opts)).await.expect("range");
        let kvs = got
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                )
            })
            .collect();
        (kvs, got.header().unwrap().revision())
    })
}

/// etcd's usual way to grow a cluster: a member started alone, then `etcdctl member add`.
/// The single member (no Raft until then) starts Raft at the first membership change; a
/// kill -9 right after it (its log: its own records, Raft's start, Raft's entries) loses
/// nothing; the learner added catches up through a snapshot (the member's log has no Raft
/// entry for the records before), is promoted; a voter added after it joins; the first member,
/// restarted with its original single-member flags, rejoins the cluster of three.
#[test]
fn a_single_member_grows_into_a_cluster_with_member_add() {
    if !common::etcd_tools_or_skip("a_single_member_grows_into_a_cluster_with_member_add") {
        return;
    }
    let first = Server::ferrocd(&["--initial-cluster-token", "test-cluster"]);
    let status = |s: &Server| -> serde_json::Value {
        let out = etcdctl(&s.endpoint(), &["endpoint", "status", "-w", "json"], "");
        let v: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
        v[0]["Status"].clone()
    };
    let before = status(&first);
    let (cluster_id, first_id) = (
        before["header"]["cluster_id"].as_u64().unwrap(),
        before["header"]["member_id"].as_u64().unwrap(),
    );
    // History written alone: overwrites, deletes, a leased key.
    rt().block_on(async {
        let mut cl = etcd_client::Client::connect([first.url()], None)
            .await
            .expect("connect");
        for round in 0..3 {
            for i in 0..300 {
                cl.put(format!("alone/{i:03}"), format!("v{round}"), None)
                    .await
                    .expect("put");
            }
        }
        for i in (0..300).step_by(7) {
            cl.delete(format!("alone/{i:03}"), None)
                .await
                .expect("delete");
        }
        let lease = cl.lease_grant(600, None).await.expect("grant").id();
        let opts = etcd_client::PutOptions::new().with_lease(lease);
        cl.put("leased", "l", Some(opts)).await.expect("put");
    });
    let (alone, alone_rev) = keyspace(&first);
    assert!(alone.len() > 250, "{}", alone.len());
    let mut c = Cluster {
        members: vec![first],
        proxies: Vec::new(),
    };

    // The first membership change: a learner (the one voter keeps its quorum).
    let (out, client1, peer1) = c.member_add("m1", true);
    assert!(
        out.stdout
            .contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out:?}"
    );
    let initial1 = common::initial_cluster(&out);
    let first_peer = format!("t=http://127.0.0.1:{}", c.members[0].peer_port);
    assert!(initial1.contains(&first_peer), "{initial1}");
    assert!(
        c.members[0].log().contains("raft starts, a cluster of one"),
        "{}",
        c.members[0].log()
    );
    // Still writable (a learner does not vote), same ids, revisions go on.
    let out = etcdctl(
        &c.members[0].endpoint(),
        &["put", "grown", "1", "-w", "json"],
        "",
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(
        v["header"]["revision"].as_i64(),
        Some(alone_rev + 1),
        "{out:?}"
    );
    let st = status(&c.members[0]);
    assert_eq!(st["header"]["cluster_id"].as_u64(), Some(cluster_id));
    assert_eq!(st["header"]["member_id"].as_u64(), Some(first_id));
    assert_eq!(st["leader"].as_u64(), Some(first_id), "{st}");
    // Status's raft index goes on from where the single member's was (its revision).
    let index = |v: &serde_json::Value| v["raftIndex"].as_u64().unwrap_or(0);
    assert_eq!(index(&before), 1, "{before}");
    assert!(index(&st) > alone_rev as u64, "{st}");
    let out = etcdctl(&c.endpoints(), &["member", "list"], "");
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");

    // kill -9 before any checkpoint of the cluster: the log holds the single member's records,
    // Raft's start and Raft's entries; all come back.
    c.members[0].kill9();
    c.members[0].relaunch();
    c.members[0].wait_healthy();
    let log = c.members[0].log();
    assert!(
        log.contains("raft log replayed") && !log.contains("checkpoint restored"),
        "the restart did not replay a mixed log: {log}"
    );
    let (mut after, rev) = keyspace(&c.members[0]);
    assert_eq!(rev, alone_rev + 1);
    let grown = after
        .iter()
        .position(|k| k.0 == "grown")
        .expect("the put after the change");
    after.remove(grown);
    assert_eq!(after, alone, "the state after kill -9");
    let out = etcdctl(&c.endpoints(), &["member", "list"], "");
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");

    // The learner joins, catches up through a snapshot, and is promoted.
    c.members.push(common::launch_joining(
        "ferrocd",
        "m1",
        client1,
        peer1,
        &initial1,
        &[],
    ));
    c.members[1].wait_healthy();
    common::wait_value(
        &c.members[1],
        "grown",
        "1",
        LEADER_TIMEOUT,
        "the learner caught up",
    );
    assert_eq!(keyspace(&c.members[1]).0, keyspace(&c.members[0]).0);
    let learner_id = status(&c.members[1])["header"]["member_id"]
        .as_u64()
        .unwrap();
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let out = etcdctl(
            &c.endpoints(),
            &["member", "promote", &format!("{learner_id:x}")],
            "",
        );
        if out.code == 0 {
            break;
        }
        assert!(
            out.stderr.contains("in sync with leader") && Instant::now() < deadline,
            "{out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A voter added to the two: it joins, and the three serve reads and writes.
    let (out, client2, peer2) = c.member_add("m2", false);
    let initial2 = common::initial_cluster(&out);
    assert_eq!(initial2.matches('=').count(), 3, "{initial2}");
    c.members.push(common::launch_joining(
        "ferrocd",
        "m2",
        client2,
        peer2,
        &initial2,
        &[],
    ));
    c.members[2].wait_healthy();
    let out = etcdctl(&c.members[2].endpoint(), &["put", "three", "3"], "");
    assert_eq!(out.stdout, "OK\n", "{out:?}\n{}", c.members[2].log());
    for i in 0..3 {
        let out = etcdctl(&c.members[i].endpoint(), &["get", "three"], "");
        assert_eq!(out.stdout, "three\n3\n", "member {i}: {out:?}");
        let st = status(&c.members[i]);
        assert_eq!(
            st["header"]["cluster_id"].as_u64(),
            Some(cluster_id),
            "{st}"
        );
    }

    // The first member, restarted with its original flags (alone in --initial-cluster), is a
    // member of the three again: its data says so.
    c.members[0].kill9();
    c.members[0].relaunch();
    c.members[0].wait_healthy();
    c.wait_leader(&[0, 1, 2], LEADER_TIMEOUT);
    let out = etcdctl(&c.members[0].endpoint(), &["put", "again", "1"], "");
    assert_eq!(out.stdout, "OK\n", "{out:?}\n{}", c.members[0].log());
    common::wait_value(&c.members[1], "again", "1", LEADER_TIMEOUT, "replicated");
    let out = etcdctl(&c.members[0].endpoint(), &["member", "list"], "");
    assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
    assert_eq!(keyspace(&c.members[0]).0, keyspace(&c.members[2]).0);
}

/// The tutorial's way, side by side with etcd: a voter added to a member alone, then started.
/// Removing the only member and adding a second voter before the first added one started are
/// refused with etcd's words (its strict reconfiguration check); ferrocd also refuses, and
/// stays alone, when its peer port is taken.
#[test]
fn a_voter_added_to_a_single_member_joins_as_on_etcd() {
    if !common::etcd_tools_or_skip("a_voter_added_to_a_single_member_joins_as_on_etcd") {
        return;
    }
    let mut seen = Vec::new();
    for kind in ["etcd", "ferrocd"] {
        let token = ["--initial-cluster-token", "test-cluster"];
        let first = match kind {
            "etcd" => Server::etcd(&token),
            // Small segments and checkpoints: the member releases log segments while alone,
            // and Raft's storage must number the segments as the log does after it grows.
            _ => Server::ferrocd(&[
                token[0],
                token[1],
                "--log-segment-bytes",
                "1048576",
                "--checkpoint-min-bytes",
                "1048576",
            ]),
        };
        let mut c = Cluster {
            members: vec![first],
            proxies: Vec::new(),
        };
        let ep = c.endpoints();
        rt().block_on(async {
            let mut cl = etcd_client::Client::connect([c.members[0].url()], None)
                .await
                .expect("connect");
            for i in 0..3000 {
                cl.put(format!("big/{}", i % 500), vec![b'b'; 1024], None)
                    .await
                    .expect("put");
            }
        });
        assert_eq!(etcdctl(&ep, &["put", "k", "v"], "").code, 0);
        if kind == "ferrocd" {
            let deadline = Instant::now() + LEADER_TIMEOUT;
            let released = |log: String| {
                log.lines().any(|l| {
                    l.contains("the log before it is released")
                        && !l.contains("segments_removed=0 ")
                })
            };
            while !released(c.members[0].log()) {
                assert!(Instant::now() < deadline, "no segment released while alone");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let (id, _) = c.status_of(0).expect("status");
        let refused_remove = etcdctl(&ep, &["member", "remove", &format!("{id:x}")], "");
        // The member's own peer URL: refused, and (ferrocd) it does not start Raft for it.
        let own = format!("--peer-urls=http://127.0.0.1:{}", c.members[0].peer_port);
        let out = etcdctl(&ep, &["member", "add", "again", &own], "");
        assert!(
            out.stderr
                .contains("Error: etcdserver: Peer URLs already exists"),
            "{kind}: {out:?}"
        );
        assert!(!c.members[0].log().contains("raft starts"), "{kind}");
        if kind == "ferrocd" {
            // A taken peer port: refused, and the member goes on alone.
            let taken = std::net::TcpListener::bind(("127.0.0.1", c.members[0].peer_port))
                .expect("bind the peer port");
            let out = etcdctl(
                &ep,
                &["member", "add", "m1", "--peer-urls=http://127.0.0.1:1"],
                "",
            );
            assert!(
                out.stderr
                    .contains("cannot listen on this member's peer URLs"),
                "{out:?}"
            );
            drop(taken);
            assert_eq!(
                etcdctl(&ep, &["member", "list"], "").stdout.lines().count(),
                1
            );
        }
        // A watch and a short lease from before the change carry on across it.
        let watch = common::Background::etcdctl(&ep, &["watch", "--prefix", "w/"]);
        let out = etcdctl(&ep, &["lease", "grant", "3"], "");
        let lease = out
            .stdout
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let out = etcdctl(&ep, &["put", "short", "x", &format!("--lease={lease}")], "");
        assert_eq!(out.stdout, "OK\n", "{kind}: {out:?}");
        let (out, client, peer) = c.member_add("m1", false);
        let initial = common::initial_cluster(&out);
        // Two voters, one started: a third is refused until the second starts.
        let refused_add = etcdctl(
            &ep,
            &["member", "add", "m2", "--peer-urls=http://127.0.0.1:2"],
            "",
        );
        c.members.push(common::launch_joining(
            kind,
            "m1",
            client,
            peer,
            &initial,
            &[],
        ));
        c.members[1].wait_healthy();
        let out = etcdctl(&c.members[1].endpoint(), &["get", "k"], "");
        assert_eq!(out.stdout, "k\nv\n", "{kind}: {out:?}");
        let out = etcdctl(&c.members[1].endpoint(), &["put", "k2", "v2"], "");
        assert_eq!(out.stdout, "OK\n", "{kind}: {out:?}");
        let out = etcdctl(&c.members[0].endpoint(), &["get", "k2"], "");
        assert_eq!(out.stdout, "k2\nv2\n", "{kind}: {out:?}");
        let out = etcdctl(&c.members[1].endpoint(), &["put", "w/1", "after"], "");
        assert_eq!(out.stdout, "OK\n", "{kind}: {out:?}");
        assert!(
            watch.wait_for(LEADER_TIMEOUT, |o| o.contains("w/1\nafter")),
            "{kind}: {}",
            watch.output()
        );
        // The lease expires, decided by the cluster's leader, on both members.
        let deadline = Instant::now() + LEADER_TIMEOUT;
        for m in &c.members {
            while !etcdctl(&m.endpoint(), &["get", "short"], "")
                .stdout
                .is_empty()
            {
                assert!(
                    Instant::now() < deadline,
                    "{kind}: the lease did not expire"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let last_line = |o: &common::Output| o.stderr.lines().last().unwrap_or("").to_string();
        seen.push((
            refused_remove.code,
            last_line(&refused_remove),
            refused_add.code,
            last_line(&refused_add),
        ));
    }
    assert_eq!(
        seen[0].1,
        "Error: etcdserver: re-configuration failed due to not enough started members"
    );
    assert_eq!(seen[0], seen[1], "etcd, then ferrocd");
}
