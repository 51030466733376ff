//! The HTTP endpoints of the client port: etcd's JSON gateway, compared with real etcd's
//! (the same requests through a Rust HTTP/1.1 client and through curl, answers compared after
//! normalising what must differ); `/metrics` parsed by a Prometheus text-format parser, with
//! counters that move under load; `/health`, `/livez` and `/readyz` under the NOSPACE alarm;
//! the gateway over HTTP/2 (curl --http2-prior-knowledge).

mod common;

use std::process::Command;

use common::{etcd_tools_or_skip, http_exchange, http_request, rt, Server};
use serde_json::Value;

/// What must differ between two members: terms (etcd's single member is at term 2, ferrocd's
/// at 1), server-chosen lease IDs, remaining TTLs (a second may tick between the two calls),
/// and Status's sizes, indexes and versions.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match k.as_str() {
                    "raft_term" | "raftTerm" | "raftIndex" | "raftAppliedIndex" | "dbSize"
                    | "dbSizeInUse" | "version" => *v = Value::from("N"),
                    "ID" if v != "7" => *v = Value::from("server-chosen"),
                    "clientURLs" => *v = Value::from("client URLs"),
                    "TTL" if v != "30" && v != "60" => *v = Value::from("remaining"),
                    _ => normalize(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// One answer, comparable: the status, the content type, and the body (JSON normalised; for
/// errors about the JSON itself only the code, since Go's and serde's parser messages differ).
fn answer(port: u16, method: &str, path: &str, body: &str, message_matters: bool) -> String {
    let (status, headers, text) = http_exchange(port, method, path, body)
        .unwrap_or_else(|e| panic!("no answer to {method} {path} on port {port}: {e}"));
    let ctype = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map_or("", |(_, v)| v.as_str())
        .to_string();
    let body = match serde_json::from_str::<Value>(&text) {
        Ok(mut v) => {
            if !message_matters {
                if let Some(m) = v.as_object_mut() {
                    m.remove("error");
                    m.remove("message");
                }
            }
            normalize(&mut v);
            v.to_string()
        }
        Err(_) => text,
    };
    format!("{status} {ctype} {body}")
}

/// The requests, in order, with whether the error message must match too.
const STEPS: &[(&str, &str, &str, bool)] = &[
    (
        "POST",
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmFy"}"#,
        true,
    ),
    (
        "POST",
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmFy","prev_kv":true}"#,
        true,
    ),
    ("POST", "/v3/kv/range", r#"{"key":"Zm9v"}"#, true),
    ("POST", "/v3/kv/range", r#"{"key":"bm9wZQ=="}"#, true),
    (
        "POST",
        "/v3/kv/range",
        r#"{"key":"Zm9v","countOnly":true}"#,
        true,
    ),
    ("POST", "/v3/kv/range", r#"{"key":"Zm9v","bogus":1}"#, true),
    (
        "POST",
        "/v3/kv/range",
        r#"{"key":"Zm9v","sort_order":"DESCEND","sort_target":"MOD","limit":"1"}"#,
        true,
    ),
    (
        "POST",
        "/v3/kv/range",
        r#"{"key":"Zm9v","revision":"100"}"#,
        true,
    ),
    ("POST", "/v3/kv/range", "", true),
    ("POST", "/v3/kv/range", r#"{"key":"#, false),
    ("POST", "/v3/kv/range", r#"{"key":"!!!"}"#, false),
    ("POST", "/v3/kv/range", r#"{"sort_order":"BOGUS"}"#, false),
    ("POST", "/v3/kv/range", r#"{"limit":1.5}"#, false),
    ("POST", "/v3/kv/range", "[1,2]", false),
    ("POST", "/v3/kv/put", r#"{"key":"","value":"YmFy"}"#, true),
    (
        "POST",
        "/v3/kv/txn",
        r#"{"compare":[{"target":"VALUE","key":"Zm9v","value":"YmFy"}],"success":[{"request_range":{"key":"Zm9v"}},{"requestPut":{"key":"Zm9v","value":"YmF6"}}],"failure":[]}"#,
        true,
    ),
    (
        "POST",
        "/v3/kv/txn",
        r#"{"compare":[{"target":"MOD","key":"Zm9v","result":"LESS","mod_revision":"1"}],"failure":[{"request_delete_range":{"key":"Zm9v","prev_kv":true}}]}"#,
        true,
    ),
    ("POST", "/v3/kv/deleterange", r#"{"key":"Zm9v"}"#, true),
    ("POST", "/v3/kv/compaction", r#"{"revision":"2"}"#, true),
    ("POST", "/v3/kv/compaction", r#"{"revision":"2"}"#, true),
    (
        "POST",
        "/v3/kv/range",
        r#"{"key":"Zm9v","revision":"1"}"#,
        true,
    ),
    ("POST", "/v3/lease/grant", r#"{"TTL":"30","ID":"7"}"#, true),
    ("POST", "/v3/lease/grant", r#"{"TTL":60}"#, true),
    ("POST", "/v3/lease/grant", r#"{"TTL":30,"ID":7}"#, true),
    (
        "POST",
        "/v3/kv/put",
        r#"{"key":"bGs=","value":"dg==","lease":"7"}"#,
        true,
    ),
    ("POST", "/v3/kv/put", r#"{"key":"bGs=","lease":"8"}"#, true),
    (
        "POST",
        "/v3/lease/timetolive",
        r#"{"ID":"7","keys":true}"#,
        true,
    ),
    ("POST", "/v3/kv/lease/timetolive", r#"{"ID":7}"#, true),
    ("POST", "/v3/lease/timetolive", r#"{"ID":"9"}"#, true),
    ("POST", "/v3/lease/revoke", r#"{"ID":"7"}"#, true),
    ("POST", "/v3/kv/lease/revoke", r#"{"ID":"7"}"#, true),
    ("POST", "/v3/kv/range", r#"{"key":"bGs="}"#, true),
    ("POST", "/v3/cluster/member/list", "{}", true),
    ("POST", "/v3/maintenance/alarm", "{}", true),
    ("POST", "/v3/election/leader", r#"{"name":"ZWw="}"#, true),
    ("GET", "/v3/kv/range", "", true),
    ("POST", "/v3/kv/nope", "{}", true),
    ("GET", "/nope", "", true),
];

/// etcd and ferrocd side by side (the same peer URL gives both the same member and cluster
/// ids); None when etcd is not installed, outside CI.
fn etcd_and_ferrocd(test: &str) -> Option<(Server, Server)> {
    if !etcd_tools_or_skip(test) {
        return None;
    }
    let etcd = Server::etcd(&[]);
    let ferrocd = Server::ferrocd_with_peer_port(etcd.peer_port, &[]);
    Some((etcd, ferrocd))
}

#[test]
fn the_json_gateway_answers_as_etcds() {
    let Some((etcd, ferrocd)) = etcd_and_ferrocd("the_json_gateway_answers_as_etcds") else {
        return;
    };
    let mut differences = Vec::new();
    for (i, (method, path, body, message_matters)) in STEPS.iter().enumerate() {
        let e = answer(etcd.client_port, method, path, body, *message_matters);
        let f = answer(ferrocd.client_port, method, path, body, *message_matters);
        if e != f {
            differences.push(format!(
                "step {i} {method} {path} {body}\n  etcd:    {e}\n  ferrocd: {f}"
            ));
        }
    }
    // Status: the same fields (values differ: versions, sizes, indexes).
    let keys = |port: u16| {
        let (_, _, body) = http_request(port, "POST", "/v3/maintenance/status", "{}").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(etcd.client_port), keys(ferrocd.client_port));
    assert!(
        differences.is_empty(),
        "{} of {} answers differ:\n{}",
        differences.len(),
        STEPS.len(),
        differences.join("\n")
    );
}

fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(args)
        .output()
        .expect("curl is installed (apt-get install curl)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Lines of a JSON stream, normalised.
fn stream_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(mut v) => {
                normalize(&mut v);
                v.to_string()
            }
            Err(_) => l.to_string(),
        })
        .collect()
}

#[test]
fn gateway_streams_through_curl_match_etcds() {
    let Some((etcd, ferrocd)) = etcd_and_ferrocd("gateway_streams_through_curl_match_etcds") else {
        return;
    };
    let run = |s: &Server| {
        let url = |p: &str| format!("{}{p}", s.url());
        for body in [
            r#"{"key":"Zm9v","value":"YQ=="}"#,
            r#"{"key":"Zm9v","value":"Yg=="}"#,
            r#"{"key":"Zm9vMg==","value":"Yw=="}"#,
        ] {
            let (code, _) = curl(&["-s", "-X", "POST", &url("/v3/kv/put"), "-d", body]);
            assert_eq!(code, 0);
        }
        curl(&[
            "-s",
            "-X",
            "POST",
            &url("/v3/kv/deleterange"),
            "-d",
            r#"{"key":"Zm9vMg=="}"#,
        ]);
        // A watch from history (prev_kv, a prefix); the stream stays open after the body ends,
        // until curl gives up. (No progress request: etcd 3.4 answers it ahead of the history
        // it has queued, etcd-io/etcd#15220; tests/watch_guarantees.rs checks ferrocd's.)
        let watch = r#"{"create_request":{"key":"Zm9v","range_end":"Zm9w","start_revision":"2","prev_kv":true}}"#;
        let (code, out) = curl(&[
            "-s",
            "-N",
            "--max-time",
            "2",
            "-X",
            "POST",
            &url("/v3/watch"),
            "-d",
            watch,
        ]);
        assert_eq!(
            code, 28,
            "the watch stream stays open until the client leaves"
        );
        let mut lines = stream_lines(&out);
        // A NOPUT watch: only the deletion.
        let (_, out) = curl(&[
            "-s",
            "-N",
            "--max-time",
            "1",
            "-X",
            "POST",
            &url("/v3/watch"),
            "-d",
            r#"{"create_request":{"key":"Zm9vMg==","start_revision":"1","filters":["NOPUT"]}}"#,
        ]);
        lines.extend(stream_lines(&out));
        // Keepalive: one answer per request; the stream ends with the body.
        let (_, grant) = curl(&[
            "-s",
            "-X",
            "POST",
            &url("/v3/lease/grant"),
            "-d",
            r#"{"TTL":"30","ID":"77"}"#,
        ]);
        lines.extend(stream_lines(&grant));
        let (code, out) = curl(&[
            "-s",
            "-N",
            "--max-time",
            "5",
            "-X",
            "POST",
            &url("/v3/lease/keepalive"),
            "-d",
            r#"{"ID":"77"} {"ID":"78"}"#,
        ]);
        assert_eq!(code, 0, "keepalive ends when the requests end");
        lines.extend(stream_lines(&out));
        // A first request that is not JSON fails the call.
        let (_, out) = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            &url("/v3/watch"),
            "-d",
            "garbage",
        ]);
        lines.push(format!("garbage watch: HTTP {out}"));
        lines
    };
    let e = run(&etcd);
    let f = run(&ferrocd);
    assert!(e.len() >= 6, "etcd's answers: {e:#?}");
    assert_eq!(e, f, "etcd:\n{e:#?}\nferrocd:\n{f:#?}");
}

#[test]
fn metrics_parse_and_move_under_load() {
    let server = Server::ferrocd(&["--metrics", "extensive"]);
    let port = server.client_port;
    let scrape = || {
        let (status, headers, body) = http_request(port, "GET", "/metrics", "").unwrap();
        assert_eq!(status, 200);
        assert!(headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/plain; version=0.0.4")));
        let lines = body.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
    };
    let value = |s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]| -> f64 {
        s.samples
            .iter()
            .filter(|x| x.metric == name)
            .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(ref h) => h.last().map_or(0.0, |b| b.count),
                _ => 0.0,
            })
            .sum()
    };
    let before = scrape();
    assert_eq!(value(&before, "etcd_server_has_leader", &[]), 1.0);
    const PUTS: usize = 200;
    rt().block_on(async {
        let mut c = etcd_client::Client::connect([server.url()], None)
            .await
            .unwrap();
        for i in 0..PUTS {
            c.put(format!("k{i}"), "v", None).await.unwrap();
        }
        c.get("k1", None).await.unwrap();
        let e = c
            .get(
                "k1",
                Some(etcd_client::GetOptions::new().with_revision(1_000_000)),
            )
            .await;
        assert!(e.is_err());
    });
    let after = scrape();
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let put = [("grpc_method", "Put"), ("grpc_code", "OK")];
    assert_eq!(moved("grpc_server_handled_total", &put), PUTS as f64);
    assert_eq!(
        moved(
            "grpc_server_handled_total",
            &[("grpc_method", "Range"), ("grpc_code", "OutOfRange")]
        ),
        1.0
    );
    assert_eq!(moved("etcd_mvcc_put_total", &[]), PUTS as f64);
    assert!(moved("etcd_server_proposals_committed_total", &[]) >= PUTS as f64);
    assert!(moved("etcd_server_proposals_applied_total", &[]) >= PUTS as f64);
    let fsyncs = moved("etcd_disk_wal_fsync_duration_seconds", &[]);
    assert!(
        fsyncs >= 1.0 && fsyncs <= PUTS as f64,
        "{fsyncs} fdatasyncs for {PUTS} puts"
    );
    assert!(moved("ferrocd_log_records_per_fdatasync", &[]) == fsyncs);
    assert!(value(&after, "etcd_mvcc_db_total_size_in_bytes", &[]) > 0.0);
    assert!(value(&after, "etcd_mvcc_db_total_size_in_use_in_bytes", &[]) > 0.0);
    assert!(value(&after, "etcd_debugging_mvcc_keys_total", &[]) >= PUTS as f64);
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 0.0);
    // --metrics extensive: every call timed.
    let timed = moved(
        "grpc_server_handling_seconds",
        &[("grpc_method", "Put"), ("grpc_type", "unary")],
    );
    assert_eq!(timed, PUTS as f64);
    // Its buckets: cumulative, non-decreasing, the last one +Inf and equal to the count.
    let put_hist = after
        .samples
        .iter()
        .find(|x| {
            x.metric == "grpc_server_handling_seconds" && x.labels.get("grpc_method") == Some("Put")
        })
        .expect("the Put handling histogram");
    let prometheus_parse::Value::Histogram(ref h) = put_hist.value else {
        panic!("not a histogram: {put_hist:?}");
    };
    assert!(h.windows(2).all(|w| w[0].count <= w[1].count), "{h:?}");
    assert!(h.last().is_some_and(|b| b.less_than.is_infinite()), "{h:?}");
    assert!(h.iter().all(|b| b.count <= PUTS as f64), "{h:?}");
    // Calls through the JSON gateway count as gRPC calls, as etcd's do.
    let (status, _, _) = http_request(port, "POST", "/v3/kv/range", r#"{"key":"azE="}"#).unwrap();
    assert_eq!(status, 200);
    let later = scrape();
    let range_ok = [("grpc_method", "Range"), ("grpc_code", "OK")];
    assert_eq!(
        value(&later, "grpc_server_handled_total", &range_ok)
            - value(&after, "grpc_server_handled_total", &range_ok),
        1.0
    );
}

#[test]
fn health_turns_503_under_the_nospace_alarm() {
    let server = Server::ferrocd(&["--quota-backend-bytes", "200000"]);
    let port = server.client_port;
    let get = |path: &str| {
        let (status, _, body) = http_request(port, "GET", path, "").unwrap();
        (status, body)
    };
    assert_eq!(
        get("/health"),
        (200, r#"{"health":"true","reason":""}"#.to_string())
    );
    assert_eq!(get("/livez"), (200, "ok\n".to_string()));
    assert_eq!(get("/readyz"), (200, "ok\n".to_string()));
    let value = "x".repeat(10 * 1024);
    let raised = rt().block_on(async {
        let mut c = etcd_client::Client::connect([server.url()], None)
            .await
            .unwrap();
        for i in 0..1000 {
            if let Err(e) = c.put(format!("k{i}"), value.as_str(), None).await {
                return e.to_string();
            }
        }
        String::new()
    });
    assert!(raised.contains("database space exceeded"), "{raised}");
    assert_eq!(
        get("/health"),
        (
            503,
            r#"{"health":"false","reason":"ALARM NOSPACE"}"#.to_string()
        )
    );
    assert_eq!(get("/health?exclude=NOSPACE").0, 200);
    // Reads work under NOSPACE: the member is live and ready (only CORRUPT fails readiness).
    assert_eq!(get("/livez").0, 200);
    assert_eq!(
        get("/readyz?verbose"),
        (
            200,
            "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\nok\n".to_string()
        )
    );
    assert_eq!(get("/health").0, 503);
    // Disarmed through the gateway (the alarm is the member's), the member is healthy again.
    let status = http_request(port, "POST", "/v3/maintenance/status", "{}")
        .unwrap()
        .2;
    let v: Value = serde_json::from_str(&status).unwrap();
    let member = v["header"]["member_id"].as_str().unwrap().to_string();
    let body = format!(r#"{{"action":"DEACTIVATE","alarm":"NOSPACE","memberID":"{member}"}}"#);
    let (code, _, _) = http_request(port, "POST", "/v3/maintenance/alarm", &body).unwrap();
    assert_eq!(code, 200);
    assert_eq!(get("/health").0, 200);
}

#[test]
fn the_gateway_answers_http2_requests_that_are_not_grpc() {
    let server = Server::ferrocd(&[]);
    let url = |p: &str| format!("{}{p}", server.url());
    let (code, out) = curl(&[
        "-s",
        "--http2-prior-knowledge",
        "-X",
        "POST",
        &url("/v3/kv/put"),
        "-d",
        r#"{"key":"aDI=","value":"dg=="}"#,
    ]);
    assert_eq!(code, 0);
    assert!(out.contains(r#""revision":"2""#), "{out}");
    let (_, out) = curl(&[
        "-s",
        "--http2-prior-knowledge",
        "-X",
        "POST",
        &url("/v3/kv/range"),
        "-d",
        r#"{"key":"aDI="}"#,
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kvs"][0]["value"], "dg==");
    let (_, out) = curl(&[
        "-s",
        "--http2-prior-knowledge",
        "-w",
        " %{http_code} %{http_version}",
        &url("/health"),
    ]);
    assert_eq!(out, r#"{"health":"true","reason":""} 200 2"#);
    // A watch stream over HTTP/2.
    let (_, out) = curl(&[
        "-s",
        "-N",
        "--http2-prior-knowledge",
        "--max-time",
        "1",
        "-X",
        "POST",
        &url("/v3/watch"),
        "-d",
        r#"{"create_request":{"key":"aDI=","start_revision":"1"}}"#,
    ]);
    assert!(out.contains(r#""created":true"#), "{out}");
    assert!(out.contains(r#""value":"dg==""#), "{out}");
    // An error keeps etcd's gateway shape.
    let (_, out) = curl(&[
        "-s",
        "--http2-prior-knowledge",
        "-w",
        " %{http_code}",
        "-X",
        "POST",
        &url("/v3/kv/range"),
        "-d",
        "{}",
    ]);
    assert_eq!(
        out,
        r#"{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3} 400"#
    );
}

#[test]
fn metrics_urls_serve_metrics_and_health_only_and_the_gateway_can_be_turned_off() {
    let metrics_port = common::free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let server = Server::ferrocd(&[
        "--listen-metrics-urls",
        &metrics_url,
        "--enable-grpc-gateway=false",
    ]);
    let status =
        |port: u16, method: &str, path: &str| http_request(port, method, path, "{}").map(|r| r.0);
    assert_eq!(status(metrics_port, "GET", "/metrics"), Some(200));
    assert_eq!(status(metrics_port, "GET", "/health"), Some(200));
    assert_eq!(status(metrics_port, "POST", "/v3/kv/range"), Some(404));
    assert_eq!(status(server.client_port, "GET", "/metrics"), Some(200));
    assert_eq!(
        status(server.client_port, "POST", "/v3/kv/range"),
        Some(404)
    );
}

/// HTTP/1.1 details the gateway's clients use: a chunked request body, `Expect:
/// 100-continue`, several requests on one kept-alive connection, and a watch whose requests
/// come one chunk at a time while its answers stream back.
#[test]
fn http1_chunked_bodies_continue_keep_alive_and_streamed_requests() {
    use std::io::{BufRead, BufReader, Read, Write};
    let server = Server::ferrocd(&[]);
    let url = |p: &str| format!("{}{p}", server.url());
    // Chunked body and Expect: 100-continue, through curl.
    let (code, out) = curl(&[
        "-s",
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Expect: 100-continue",
        "-X",
        "POST",
        &url("/v3/kv/put"),
        "-d",
        r#"{"key":"Yw==","value":"dg=="}"#,
    ]);
    assert_eq!(code, 0);
    assert!(out.contains(r#""revision":"2""#), "{out}");
    // Two requests on one connection (curl reuses it), the second seeing the first.
    let (_, out) = curl(&[
        "-s",
        "-v",
        "-X",
        "POST",
        &url("/v3/kv/range"),
        "-d",
        r#"{"key":"Yw=="}"#,
        "--next",
        "-X",
        "POST",
        &url("/v3/kv/range"),
        "-d",
        r#"{"key":"Yw==","count_only":true}"#,
    ]);
    assert!(
        out.contains(r#""value":"dg==""#) && out.contains(r#""count":"1""#),
        "{out}"
    );
    // A watch fed one chunk at a time on a raw connection.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.client_port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "POST /v3/watch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = |s: &mut std::net::TcpStream, body: &str| {
        write!(s, "{:x}\r\n{body}\r\n", body.len()).unwrap();
    };
    chunk(
        &mut s,
        r#"{"create_request":{"key":"Yw==","start_revision":"2"}}"#,
    );
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
        head.push_str(&line);
    }
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && head.contains("chunked"),
        "{head}"
    );
    // The answers, de-chunked, until `want` lines of JSON arrived.
    let mut lines: Vec<String> = Vec::new();
    let mut read_lines = |r: &mut BufReader<std::net::TcpStream>, want: usize| {
        while lines.len() < want {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut data = vec![0u8; n + 2];
            r.read_exact(&mut data).unwrap();
            let text = String::from_utf8_lossy(&data[..n]).into_owned();
            lines.extend(text.lines().map(str::to_string));
        }
        lines.clone()
    };
    let got = read_lines(&mut r, 2);
    assert!(got[0].contains(r#""created":true"#), "{got:?}");
    assert!(got[1].contains(r#""value":"dg==""#), "{got:?}");
    // A second request on the same body: cancel the watcher (id 0).
    chunk(&mut s, r#"{"cancel_request":{"watch_id":"0"}}"#);
    let got = read_lines(&mut r, 3);
    assert!(got[2].contains(r#""canceled":true"#), "{got:?}");
}
