//! Authentication and RBAC through real etcdctl, differentially against etcd (Debian's 3.4):
//! users, roles, permissions over keys, ranges, prefixes and from-key, auth enable/disable, what
//! a user may and may not do, password changes and deletion, and root's protections. Then what
//! ferrocd does on purpose differently or beyond etcd 3.4: the stricter checks of etcd 3.5.29
//! (compaction and membership need root, member list a user), survival of kill -9, no password
//! or usable token in the log, the gateway's Authorization header, watch refusals, and the
//! throttling of failed passwords.
//!
//! Normalised: the client port, lease ids, and grpc-go's retry warnings (time, client id).

mod common;

use common::{diff_steps, etcd_tools_or_skip, etcdctl, http_request, Server};

thread_local! {
    /// The scenario runs ferroctl instead of etcdctl on this test's thread.
    static FERROCTL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// etcdctl's (or ferroctl's) output with etcdctl's retry warnings (JSON lines) dropped and the
/// port replaced.
fn show(server: &Server, args: &[&str], stdin: &str) -> String {
    let o = if FERROCTL.get() {
        let mut a = vec![format!("--endpoints={}", server.endpoint())];
        a.extend(args.iter().map(|s| s.to_string()));
        common::run(env!("CARGO_BIN_EXE_ferroctl"), &[], &a, stdin)
    } else {
        etcdctl(&server.endpoint(), args, stdin)
    };
    let err: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .collect();
    common::hide_port(
        &format!("code {}\n{}{}", o.code, o.stdout, err.join("\n")),
        server.client_port,
    )
}

const ROOT: &[&str] = &["--user", "root:rootpw"];
const ALICE: &[&str] = &["--user", "alice:apw"];

fn with<'a>(who: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    who.iter().chain(args).copied().collect()
}

/// The scenario: labelled steps, each what etcdctl printed.
fn scenario(s: &Server) -> Vec<(String, String)> {
    let mut steps = Vec::new();
    let mut step = |label: &str, args: Vec<&str>, stdin: &str| {
        steps.push((label.to_string(), show(s, &args, stdin)));
    };
    step("add root", vec!["user", "add", "root:rootpw"], "");
    step("add alice", vec!["user", "add", "alice:apw"], "");
    step("add alice again", vec!["user", "add", "alice:x"], "");
    step("add bob", vec!["user", "add", "bob:bpw"], "");
    step("role add r1", vec!["role", "add", "r1"], "");
    step("role add r1 again", vec!["role", "add", "r1"], "");
    step("role add r2", vec!["role", "add", "r2"], "");
    let grants: &[&[&str]] = &[
        &["r1", "readwrite", "foo"],
        &["--prefix", "r1", "read", "/app/"],
        &["r1", "write", "a", "c"],
        &["r1", "read", "a", "c"],
        &["r1", "readwrite", "c", "e"],
        &["--from-key", "r2", "read", "zz"],
        &["nope", "read", "k"],
        &["r1", "bad", "k"],
    ];
    for g in grants {
        let mut a = vec!["role", "grant-permission"];
        a.extend_from_slice(g);
        step(&format!("grant {g:?}"), a, "");
    }
    step("role get r1", vec!["role", "get", "r1"], "");
    step("role get r2", vec!["role", "get", "r2"], "");
    step("role get nope", vec!["role", "get", "nope"], "");
    step("role list", vec!["role", "list"], "");
    step("grant r1", vec!["user", "grant-role", "alice", "r1"], "");
    step(
        "grant r1 again",
        vec!["user", "grant-role", "alice", "r1"],
        "",
    );
    step(
        "grant nope",
        vec!["user", "grant-role", "alice", "nope"],
        "",
    );
    step(
        "grant to nobody",
        vec!["user", "grant-role", "nobody", "r1"],
        "",
    );
    step(
        "revoke ungranted",
        vec!["user", "revoke-role", "alice", "r2"],
        "",
    );
    step("user get alice", vec!["user", "get", "alice"], "");
    step(
        "user get detail",
        vec!["user", "get", "--detail", "alice"],
        "",
    );
    step("user get nobody", vec!["user", "get", "nobody"], "");
    step("user list", vec!["user", "list"], "");
    step(
        "revoke perm [a,c)",
        vec!["role", "revoke-permission", "r1", "a", "c"],
        "",
    );
    step(
        "revoke it again",
        vec!["role", "revoke-permission", "r1", "a", "c"],
        "",
    );
    step("role get r1 after", vec!["role", "get", "r1"], "");
    step("put before enable", vec!["put", "foo", "v0"], "");
    step("auth enable", vec!["auth", "enable"], "");
    step("auth enable again", vec!["auth", "enable"], "");
    step("put, no user", vec!["put", "foo", "v1"], "");
    step("get, no user", vec!["get", "foo"], "");
    step("health, no user", vec!["endpoint", "health"], "");
    step("alice put foo", with(ALICE, &["put", "foo", "v2"]), "");
    step("alice get foo", with(ALICE, &["get", "foo"]), "");
    step("alice put /app/x", with(ALICE, &["put", "/app/x", "1"]), "");
    step("root put /app/x", with(ROOT, &["put", "/app/x", "1"]), "");
    step(
        "alice get /app/",
        with(ALICE, &["get", "--prefix", "/app/"]),
        "",
    );
    step("alice get [c,e)", with(ALICE, &["get", "c", "e"]), "");
    step("alice get [a,e)", with(ALICE, &["get", "a", "e"]), "");
    step("alice get all", with(ALICE, &["get", "--from-key", ""]), "");
    step("alice put d", with(ALICE, &["put", "d", "1"]), "");
    step("alice put a", with(ALICE, &["put", "a", "1"]), "");
    step(
        "alice put prev-kv",
        with(ALICE, &["put", "--prev-kv", "c", "2"]),
        "",
    );
    step("alice del foo", with(ALICE, &["del", "foo"]), "");
    step(
        "alice del /app/",
        with(ALICE, &["del", "--prefix", "/app/"]),
        "",
    );
    let txn_ok = "value(\"c\") = \"2\"\n\nput d 3\n\nput foo 4\n\n";
    step("alice txn", with(ALICE, &["txn"]), txn_ok);
    let txn_no = "value(\"c\") = \"2\"\n\nput d 3\n\nput /app/y 4\n\n";
    step("alice txn, else denied", with(ALICE, &["txn"]), txn_no);
    step(
        "bob get foo",
        with(&["--user", "bob:bpw"], &["get", "foo"]),
        "",
    );
    step(
        "wrong password",
        with(&["--user", "alice:nope"], &["get", "foo"]),
        "",
    );
    step(
        "no such user",
        with(&["--user", "carol:x"], &["get", "foo"]),
        "",
    );
    step("alice user list", with(ALICE, &["user", "list"]), "");
    step("alice role add", with(ALICE, &["role", "add", "r3"]), "");
    step("alice auth disable", with(ALICE, &["auth", "disable"]), "");
    step("root user list", with(ROOT, &["user", "list"]), "");
    step("delete root", with(ROOT, &["user", "delete", "root"]), "");
    step(
        "delete role root",
        with(ROOT, &["role", "delete", "root"]),
        "",
    );
    step(
        "revoke root from root",
        with(ROOT, &["user", "revoke-role", "root", "root"]),
        "",
    );
    step(
        "passwd alice",
        with(ROOT, &["user", "passwd", "alice", "--interactive=false"]),
        "apw2\n",
    );
    step("old password", with(ALICE, &["get", "foo"]), "");
    step(
        "new password",
        with(&["--user", "alice:apw2"], &["get", "foo"]),
        "",
    );
    step(
        "revoke r1 from alice",
        with(ROOT, &["user", "revoke-role", "alice", "r1"]),
        "",
    );
    step(
        "alice without r1",
        with(&["--user", "alice:apw2"], &["get", "foo"]),
        "",
    );
    step("delete r2", with(ROOT, &["role", "delete", "r2"]), "");
    step("delete alice", with(ROOT, &["user", "delete", "alice"]), "");
    step(
        "deleted alice",
        with(&["--user", "alice:apw2"], &["get", "foo"]),
        "",
    );
    step("auth disable", with(ROOT, &["auth", "disable"]), "");
    step("get after disable", vec!["get", "foo"], "");
    step("user list after", vec!["user", "list"], "");
    steps
}

#[test]
fn auth_through_etcdctl_matches_etcd() {
    if !etcd_tools_or_skip("auth_through_etcdctl_matches_etcd") {
        return;
    }
    // A low bcrypt cost keeps the test quick on both servers (etcd's flag too).
    let etcd = Server::etcd(&["--bcrypt-cost", "4"]);
    let want = scenario(&etcd);
    drop(etcd);
    // The scenario shows what it is meant to (on etcd, the reference).
    let on = |label: &str| &want.iter().find(|(l, _)| l == label).expect(label).1;
    for (label, expect) in [
        ("auth enable", "Authentication Enabled"),
        ("put, no user", "user name is empty"),
        ("alice get foo", "v2"),
        ("alice put /app/x", "permission denied"),
        ("alice get [c,e)", "code 0"),
        ("alice get [a,e)", "permission denied"),
        ("alice get all", "permission denied"),
        ("alice txn, else denied", "permission denied"),
        ("wrong password", "authentication failed"),
        ("delete root", "invalid auth management"),
        ("old password", "authentication failed"),
        ("alice without r1", "permission denied"),
        ("get after disable", "code 0"),
    ] {
        assert!(on(label).contains(expect), "{label}: {}", on(label));
    }
    let ferrocd = Server::ferrocd(&["--bcrypt-cost", "4"]);
    let got = scenario(&ferrocd);
    drop(ferrocd);
    let report = diff_steps(&want, &got, |s| s.clone());
    assert!(report.is_empty(), "etcdctl saw differences:{report}");
    // ferroctl prints what etcdctl prints.
    FERROCTL.set(true);
    let ferrocd = Server::ferrocd(&["--bcrypt-cost", "4"]);
    let by_ferroctl = scenario(&ferrocd);
    let report = diff_steps(&got, &by_ferroctl, |s| s.clone());
    assert!(
        report.is_empty(),
        "ferroctl printed otherwise than etcdctl (etcd = etcdctl):{report}"
    );
}

/// A gateway call's status and body.
fn post(port: u16, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let (status, _, text) = match token {
        None => http_request(port, "POST", path, body),
        Some(t) => common::http_request_with(port, "POST", path, body, &[("Authorization", t)]),
    }
    .unwrap_or_else(|| panic!("no answer to {path}"));
    (status, text)
}

#[test]
fn auth_survives_kill_9_keeps_secrets_out_of_the_log_and_is_stricter_than_etcd_34() {
    if !etcd_tools_or_skip("auth_survives_kill_9") {
        return;
    }
    let mut s = Server::ferrocd(&["--bcrypt-cost", "4"]);
    let ok = |args: &[&str], stdin: &str| {
        let out = show(&s, args, stdin);
        assert!(out.starts_with("code 0"), "{args:?}: {out}");
    };
    ok(&["user", "add", "root:rootpw"], "");
    ok(&["user", "add", "dave:dave-secret-password"], "");
    ok(&["role", "add", "rw"], "");
    ok(
        &[
            "role",
            "grant-permission",
            "--prefix",
            "rw",
            "readwrite",
            "d/",
        ],
        "",
    );
    ok(&["user", "grant-role", "dave", "rw"], "");
    ok(&["auth", "enable"], "");
    let dave = ["--user", "dave:dave-secret-password"];
    ok(&with(&dave, &["put", "d/1", "one"]), "");
    // A simple token through the gateway, used with the Authorization header.
    let (status, body) = post(
        s.client_port,
        "/v3/auth/authenticate",
        r#"{"name":"dave","password":"dave-secret-password"}"#,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    let range = r#"{"key":"ZC8x"}"#; // d/1
    let (status, body) = post(s.client_port, "/v3/kv/range", range, Some(&token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"count\":\"1\""), "{body}");
    let (status, body) = post(s.client_port, "/v3/kv/range", range, Some("forged.1"));
    assert_eq!(status, 401, "an unknown token: {body}");
    assert!(body.contains("invalid auth token"), "{body}");
    let (status, body) = post(
        s.client_port,
        "/v3/kv/range",
        r#"{"key":"eA=="}"#,
        Some(&token),
    );
    assert_eq!(status, 403, "outside dave's prefix: {body}");
    // Stricter than etcd 3.4 (as etcd 3.5.29): compaction needs root, member list a user.
    let out = show(&s, &with(&dave, &["compaction", "1"]), "");
    assert!(out.contains("permission denied"), "{out}");
    let out = show(&s, &["member", "list"], "");
    assert!(out.contains("user name is empty"), "{out}");
    ok(&with(&dave, &["member", "list"]), "");
    ok(&with(ROOT, &["compaction", "1"]), "");
    // Neither the password nor the token is anywhere in the data dir.
    let mut bytes = Vec::new();
    for e in walk(s.dir.path()) {
        bytes.extend(std::fs::read(e).unwrap());
    }
    let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("d/1"), "the log holds the data");
    assert!(
        !has("dave-secret-password"),
        "a clear password reached the disk"
    );
    assert!(!has(&token), "a usable token reached the disk");
    // kill -9: users, roles, permissions and the enabled flag come back from the log.
    s.kill9();
    s.restart();
    let out = show(&s, &["get", "d/1"], "");
    assert!(
        out.contains("user name is empty"),
        "auth is still on: {out}"
    );
    let out = show(&s, &with(&dave, &["get", "d/1"]), "");
    assert!(out.contains("one"), "{out}");
    let out = show(&s, &with(&dave, &["put", "x", "1"]), "");
    assert!(out.contains("permission denied"), "{out}");
    // A watch outside the user's rights is refused (created and canceled, the stream lives).
    let out = show(&s, &with(&dave, &["watch", "x"]), "");
    assert!(out.contains("permission denied"), "{out}");
    // Failed passwords are throttled per user: after three free failures each further one
    // makes the next attempt wait, even with the right password.
    for _ in 0..4 {
        let out = show(&s, &["--user", "dave:wrong", "get", "d/1"], "");
        assert!(out.contains("authentication failed"), "{out}");
    }
    let out = show(&s, &with(&dave, &["get", "d/1"]), "");
    assert!(out.contains("too many failed attempts"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = show(&s, &with(&dave, &["get", "d/1"]), "");
    assert!(out.contains("one"), "after the wait: {out}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The seed's configuration file as it is, with <NODE-IP> filled in (127.0.0.1) and, for the
/// test's sake, free ports instead of 2379/2380, its certificate paths and data dir in a
/// temporary directory: ferrocd starts (its URLs are http://, so the TLS sections are read,
/// checked and, as etcd does, not used), counts healthy, refuses keys until auth is enabled
/// (`enable-authorization`), and then serves root with HS256 JWTs signed with the seed's
/// shared secret (`auth-token: "some-secret-token"`).
#[test]
fn the_seed_config_starts_ferrocd_as_it_is() {
    if !etcd_tools_or_skip("the_seed_config_starts_ferrocd_as_it_is") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    common::seed_certificates(dir.path());
    let (client, peer) = (common::free_port(), common::free_port());
    let seed = std::fs::read_to_string("tests/data/seed-etcd-config.yml").unwrap();
    let text = seed
        .replace("<NODE-IP>", "127.0.0.1")
        .replace(":2379", &format!(":{client}"))
        .replace(":2380", &format!(":{peer}"))
        .replace("/etc/etcd/", &format!("{}/", dir.path().display()))
        .replace(
            "/var/lib/etcd/default.etcd",
            &dir.path().join("data").display().to_string(),
        );
    let file = dir.path().join("etcd-config.yml");
    std::fs::write(&file, text).unwrap();
    let args = vec!["--config-file".to_string(), file.display().to_string()];
    let mut s = Server::launch(
        "ferrocd",
        env!("CARGO_BIN_EXE_ferrocd"),
        args,
        client,
        peer,
        dir,
    );
    s.wait_healthy();
    let out = show(&s, &["endpoint", "health"], "");
    assert!(out.contains("is healthy"), "{out}");
    let out = show(&s, &["put", "greeting", "hello"], "");
    assert!(out.contains("permission denied"), "keys before auth: {out}");
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["auth", "enable"],
        with(ROOT, &["put", "greeting", "hello"]),
    ] {
        let out = show(&s, &args, "");
        assert!(out.starts_with("code 0"), "{args:?}: {out}");
    }
    let out = show(&s, &with(ROOT, &["get", "greeting"]), "");
    assert!(out.contains("hello"), "{out}");
    let out = show(&s, &["get", "greeting"], "");
    assert!(out.contains("user name is empty"), "{out}");
    // The token is a JWT signed with the seed's secret.
    let (status, body) = post(
        s.client_port,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"rootpw"}"#,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = v["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
}

/// Tokens that lapsed or were forged are refused with etcd's error, and nothing they asked for
/// is written: simple tokens with `--auth-token-ttl 1` through the gateway's Authorization
/// header, compared with etcd.
#[test]
fn lapsed_and_forged_tokens_are_refused_as_on_etcd() {
    if !etcd_tools_or_skip("lapsed_and_forged_tokens_are_refused_as_on_etcd") {
        return;
    }
    let steps = |s: &Server| -> Vec<String> {
        let mut out = Vec::new();
        for args in [vec!["user", "add", "root:rootpw"], vec!["auth", "enable"]] {
            out.push(show(s, &args, ""));
        }
        let (status, body) = post(
            s.client_port,
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"rootpw"}"#,
            None,
        );
        out.push(format!("authenticate {status}"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let token = v["token"].as_str().unwrap().to_string();
        let put = |key: &str, token: &str| {
            let body = format!(r#"{{"key":"{key}","value":"dg=="}}"#);
            let (status, body) = post(s.client_port, "/v3/kv/put", &body, Some(token));
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            format!("put {status} {} {}", v["code"], v["message"])
        };
        // "a" and "b" (base64 YQ== and Yg==).
        out.push(put("YQ==", &token));
        out.push(put("Yg==", "forged.1"));
        out.push(put("Yg==", &format!("{token}x")));
        // The token lapses a TTL (1 s) after its last use.
        std::thread::sleep(std::time::Duration::from_millis(2500));
        out.push(put("Yg==", &token));
        out.push(show(
            s,
            &with(ROOT, &["get", "", "--from-key", "--keys-only"]),
            "",
        ));
        out
    };
    let etcd = Server::etcd(&["--bcrypt-cost", "4", "--auth-token-ttl", "1"]);
    let want = steps(&etcd);
    drop(etcd);
    let ferrocd = Server::ferrocd(&["--bcrypt-cost", "4", "--auth-token-ttl", "1"]);
    let got = steps(&ferrocd);
    assert!(want[3].starts_with("put 200"), "{want:#?}");
    assert!(want[4].contains("invalid auth token"), "{want:#?}");
    assert!(want[6].contains("invalid auth token"), "lapsed: {want:#?}");
    assert!(!want[7].contains("\nb\n"), "nothing written: {want:#?}");
    assert_eq!(want, got, "etcd:\n{want:#?}\nferrocd:\n{got:#?}");
}
