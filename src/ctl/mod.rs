//! `ferroctl`: etcdctl's v3 commands, flags and output, byte for byte (checked against real
//! etcdctl by tests/etcdctl_compat.rs), on ferrocd's own gRPC client.

/// `println!` for a command line's output: when the reader has gone (`... | head`), the process
/// ends at once with SIGPIPE's exit status (141), quietly, as etcdctl does; std's `println!`
/// panics there. Exported for the server's `--help` and the loadgen (`ferrocd::outln!`).
#[doc(hidden)]
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::ctl::stdout_failed(e);
        }
    }};
}

/// `print!` likewise.
#[doc(hidden)]
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            $crate::ctl::stdout_failed(e);
        }
    }};
}

mod auth;
mod flags;
pub mod format;
mod lease;
mod member;
mod print;
mod txn;
mod watch;

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::Client;
use crate::error::{EtcdError, Status};
use crate::kv::prefix_end;
use crate::proto::etcdserverpb as pb;
use flags::Flags;
pub use print::Format;

/// Standard output failed: a reader gone ends the process with SIGPIPE's status (141), as a
/// tool killed by the signal; anything else is reported, status 1. (Called by [`outln!`] and
/// [`out!`].)
#[doc(hidden)]
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("Error: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// etcdctl's exit codes.
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_BAD_CONNECTION: i32 = 2;
pub const EXIT_BAD_FEATURE: i32 = 4;
pub const EXIT_BAD_ARGS: i32 = 128;

/// A command's failure: what etcdctl prints after "Error: ", and its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

fn fail<T>(code: i32, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        code,
        message: message.into(),
    })
}

impl From<Status> for Failure {
    fn from(s: Status) -> Failure {
        let message = match EtcdError::from_message(&s.message) {
            Some(e) => e.message().to_string(),
            None if s.message == "context deadline exceeded" => s.message,
            None => format!("rpc error: code = {:?} desc = {}", s.code, s.message),
        };
        Failure {
            code: EXIT_ERROR,
            message,
        }
    }
}

/// Global options (etcdctl's persistent flags).
#[derive(Clone)]
pub struct Global {
    pub endpoints: Vec<String>,
    pub dial_timeout: Duration,
    pub command_timeout: Duration,
    pub format: Format,
    pub hex: bool,
    /// `--user name:password` (or `--user name --password pw`): authenticate first.
    pub user: Option<(String, String)>,
}

/// Runs ferroctl with `args` (without the program name); returns the exit code. Output goes
/// to stdout and stderr as etcdctl's does.
pub fn main(args: Vec<String>, stdin: &mut dyn std::io::BufRead) -> i32 {
    match run(args, stdin) {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("Error: {}", f.message);
            f.code
        }
    }
}

const GLOBAL_VALUE_FLAGS: &[&str] = &[
    "endpoints",
    "dial-timeout",
    "command-timeout",
    "write-out",
    "w",
    "user",
    "password",
    "cacert",
    "cert",
    "key",
    "keepalive-time",
    "keepalive-timeout",
];
const GLOBAL_BOOL_FLAGS: &[&str] = &[
    "hex",
    "debug",
    "insecure-transport",
    "insecure-skip-tls-verify",
];

/// Flags of put, get and del (also inside a txn).
const OP_VALUE_FLAGS: &[&str] = &[
    "lease",
    "limit",
    "rev",
    "sort-by",
    "order",
    "consistency",
    "peer-urls",
    "new-user-password",
];
const OP_BOOL_FLAGS: &[&str] = &[
    "prev-kv",
    "ignore-value",
    "ignore-lease",
    "prefix",
    "from-key",
    "keys-only",
    "count-only",
];
/// Flags of the other commands.
const OTHER_BOOL_FLAGS: &[&str] = &[
    "detail",
    "no-password",
    "print-value-only",
    "physical",
    "interactive",
    "i",
    "cluster",
    "keys",
    "once",
    "learner",
];

fn run(args: Vec<String>, stdin: &mut dyn std::io::BufRead) -> Result<(), Failure> {
    let cmd_value = OP_VALUE_FLAGS;
    let cmd_bool: Vec<&str> = OP_BOOL_FLAGS
        .iter()
        .chain(OTHER_BOOL_FLAGS)
        .copied()
        .collect();
    let value_flags: Vec<&str> = GLOBAL_VALUE_FLAGS
        .iter()
        .chain(cmd_value)
        .copied()
        .collect();
    let bool_flags: Vec<&str> = GLOBAL_BOOL_FLAGS.iter().chain(&cmd_bool).copied().collect();
    let f = Flags::parse(&args, &value_flags, &bool_flags)?;
    for unsupported in ["cacert", "cert", "key"] {
        if f.value(unsupported).is_some() {
            return fail(
                EXIT_BAD_FEATURE,
                format!("--{unsupported}: TLS is not implemented in ferroctl yet"),
            );
        }
    }
    let format = match f.value("write-out").or(f.value("w")).unwrap_or("simple") {
        "simple" => Format::Simple,
        "json" => Format::Json,
        "fields" => Format::Fields,
        "table" => Format::Table,
        "protobuf" => {
            return fail(
                EXIT_BAD_FEATURE,
                "protobuf output is not supported by ferroctl",
            )
        }
        other => return fail(EXIT_BAD_FEATURE, format!("unknown output format {other:?}")),
    };
    let g = Global {
        endpoints: f
            .value("endpoints")
            .unwrap_or("127.0.0.1:2379")
            .split(',')
            .map(str::to_string)
            .collect(),
        dial_timeout: go_duration_arg("dial-timeout", f.value("dial-timeout").unwrap_or("2s"))?,
        command_timeout: go_duration_arg(
            "command-timeout",
            f.value("command-timeout").unwrap_or("5s"),
        )?,
        format,
        hex: f.bool("hex"),
        user: auth::user_flag(&f, stdin)?,
    };
    let pos: Vec<&str> = f.positional.iter().map(String::as_str).collect();
    match pos.as_slice() {
        ["version", ..] => {
            outln!(
                "ferroctl version: {}\nAPI version: 3.5",
                env!("CARGO_PKG_VERSION")
            );
            Ok(())
        }
        ["put", rest @ ..] => {
            let req = put_request(rest, &f, stdin)?;
            with_client(&g, move |c, t| Box::pin(async move { c.put(&req, t).await }))
                .map(|r| print::put(&g, &r))
        }
        ["get", rest @ ..] => {
            let req = get_request(rest, &f)?;
            if f.bool("print-value-only") && g.format != Format::Simple {
                return fail(EXIT_BAD_ARGS, "print-value-only is only for `--write-out=simple`");
            }
            if g.format == Format::Table {
                return fail(EXIT_BAD_FEATURE, "table not supported as output format");
            }
            with_client(&g, move |c, t| Box::pin(async move { c.range(&req, t).await }))
                .map(|r| print::get(&g, &r, f.bool("print-value-only")))
        }
        ["del", rest @ ..] => {
            let req = del_request(rest, &f)?;
            with_client(&g, move |c, t| Box::pin(async move { c.delete_range(&req, t).await }))
                .map(|r| print::del(&g, &r))
        }
        ["txn", ..] => {
            let interactive = f.bool("interactive") || f.bool("i");
            let req = txn::read(stdin, interactive)?;
            with_client(&g, move |c, t| Box::pin(async move { c.txn(&req, t).await }))
                .map(|r| print::txn(&g, &r))
        }
        ["compaction", rest @ ..] => {
            let [rev] = rest else {
                return fail(EXIT_BAD_ARGS, "compaction command needs 1 argument");
            };
            let revision: i64 = rev
                .parse()
                .map_err(|e| Failure {
                    code: EXIT_BAD_ARGS,
                    message: format!("strconv.ParseInt: parsing {rev:?}: {e}"),
                })?;
            let req = pb::CompactionRequest {
                revision,
                physical: f.bool("physical"),
            };
            with_client(&g, move |c, t| Box::pin(async move { c.compact(&req, t).await }))?;
            outln!("compacted revision {revision}");
            Ok(())
        }
        ["member", "list", ..] => {
            with_client(&g, |c, t| Box::pin(async move { c.member_list(t).await }))
                .map(|r| print::member_list(&g, &r))
        }
        ["member", sub @ ("add" | "remove" | "promote" | "update"), rest @ ..] => {
            member::run(&g, &f, sub, rest)
        }
        ["move-leader", rest @ ..] => member::move_leader(&g, rest),
        ["endpoint", "health", ..] => endpoint_health(&g),
        ["defrag", ..] => defrag(&g),
        ["endpoint", "status", ..] => endpoint_status(&g),
        ["alarm", "list", ..] => {
            let req = pb::AlarmRequest::default();
            with_client(&g, move |c, t| Box::pin(async move { c.alarm(&req, t).await })).map(|r| {
                for a in &r.alarms {
                    let name = pb::AlarmType::try_from(a.alarm)
                        .map(|t| t.as_str_name())
                        .unwrap_or("UNKNOWN");
                    outln!("memberID:{} alarm:{} ", a.member_id, name);
                }
            })
        }
        ["lease", sub, rest @ ..] => lease::run(&g, &f, sub, rest),
        ["auth", rest @ ..] => auth::auth(&g, rest),
        ["user", rest @ ..] => auth::user(&g, &f, rest, stdin),
        ["role", rest @ ..] => auth::role(&g, &f, rest),
        ["watch", rest @ ..] => watch::run(&g, &f, rest),
        [] => fail(EXIT_BAD_ARGS, "a command is needed (put, get, del, txn, compaction, watch, lease, member list|add|remove|promote|update, move-leader, endpoint health, endpoint status, alarm list, defrag, auth, user, role, version)"),
        [other, ..] => fail(EXIT_BAD_ARGS, format!("unknown command {other:?} for \"ferroctl\"")),
    }
}

fn go_duration_arg(flag: &str, v: &str) -> Result<Duration, Failure> {
    let parse = |n: &str, mul: f64| {
        n.parse::<f64>()
            .ok()
            .map(|x| Duration::from_secs_f64(x * mul))
    };
    let d = if let Some(n) = v.strip_suffix("ms") {
        parse(n, 1e-3)
    } else if let Some(n) = v.strip_suffix('s') {
        parse(n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        parse(n, 60.0)
    } else {
        None
    };
    d.ok_or_else(|| Failure {
        code: EXIT_BAD_ARGS,
        message: format!(
            "invalid argument {v:?} for \"--{flag}\" flag: time: invalid duration {v:?}"
        ),
    })
}

type CallFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Status>> + 'a>>;

/// Runs `f` on a glommio executor with a connection to the first endpoint that answers
/// (etcdctl reports a failed dial as its context deadline).
fn on_connection<T: 'static, F: std::future::Future<Output = Result<T, Failure>>>(
    g: &Global,
    f: impl FnOnce(Client) -> F + 'static,
) -> Result<T, Failure> {
    let endpoints = g.endpoints.clone();
    let dial = g.dial_timeout;
    let user = g.user.clone();
    let timeout = g.command_timeout;
    let ex = glommio::LocalExecutorBuilder::default()
        .make()
        .map_err(|e| Failure {
            code: EXIT_ERROR,
            message: format!("cannot start the I/O executor: {e}"),
        })?;
    ex.run(async move {
        for ep in &endpoints {
            if let Ok(mut c) = Client::connect(ep, dial).await {
                if let Some((name, password)) = user {
                    auth::authenticate(&mut c, name, password, timeout).await?;
                }
                return f(c).await;
            }
        }
        fail(EXIT_ERROR, "context deadline exceeded")
    })
}

/// Connects to the first endpoint that answers and runs one call, on a glommio executor.
fn with_client<T: 'static>(
    g: &Global,
    call: impl for<'a> FnOnce(&'a mut Client, Option<Duration>) -> CallFuture<'a, T> + 'static,
) -> Result<T, Failure> {
    let timeout = g.command_timeout;
    on_connection(g, move |mut c| async move {
        call(&mut c, Some(timeout)).await.map_err(Failure::from)
    })
}

/// One call per endpoint (endpoint health/status address every endpoint separately).
fn per_endpoint<T: 'static>(
    g: &Global,
    call: impl for<'a> Fn(&'a mut Client, Option<Duration>) -> CallFuture<'a, T> + Clone + 'static,
) -> Vec<(String, Result<T, Failure>, Duration)> {
    g.endpoints
        .iter()
        .map(|ep| {
            let single = Global {
                endpoints: vec![ep.clone()],
                ..g.clone()
            };
            let start = Instant::now();
            let r = with_client(&single, call.clone());
            (ep.clone(), r, start.elapsed())
        })
        .collect()
}

/// `ferroctl defrag`: each endpoint in turn, as etcdctl prints it.
fn defrag(g: &Global) -> Result<(), Failure> {
    let results = per_endpoint(g, |c, t| {
        Box::pin(async move {
            let r: Result<pb::DefragmentResponse, Status> = c
                .unary(
                    "/etcdserverpb.Maintenance/Defragment",
                    &pb::DefragmentRequest {},
                    t,
                )
                .await;
            r
        })
    });
    let mut failures = 0;
    for (ep, r, _) in results {
        match r {
            Ok(_) => outln!("Finished defragmenting etcd member[{ep}]"),
            Err(f) => {
                eprintln!("Failed to defragment etcd member[{ep}] ({})", f.message);
                failures += 1;
            }
        }
    }
    if failures > 0 {
        // etcdctl exits with its error code without another message.
        std::process::exit(EXIT_ERROR);
    }
    Ok(())
}

fn endpoint_health(g: &Global) -> Result<(), Failure> {
    // etcdctl 3.4 probes with a linearizable get of "health"; any answer, even an error that
    // proves the cluster processed it, counts as healthy.
    let results = per_endpoint(g, |c, t| {
        Box::pin(async move {
            let req = pb::RangeRequest {
                key: Bytes::from_static(b"health"),
                ..Default::default()
            };
            c.range(&req, t).await
        })
    });
    let health: Vec<(String, bool, Duration, String)> = results
        .into_iter()
        .map(|(ep, r, took)| match r {
            Ok(_) => (ep, true, took, String::new()),
            Err(f) => (ep, false, took, f.message),
        })
        .collect();
    print::endpoint_health(g, &health);
    if health.iter().any(|h| !h.1) {
        return fail(EXIT_ERROR, "unhealthy cluster");
    }
    Ok(())
}

fn endpoint_status(g: &Global) -> Result<(), Failure> {
    let results = per_endpoint(g, |c, t| Box::pin(async move { c.status(t).await }));
    let mut ok = Vec::new();
    for (ep, r, _) in results {
        match r {
            Ok(s) => ok.push((ep, s)),
            Err(f) => eprintln!("Failed to get the status of endpoint {ep} ({})", f.message),
        }
    }
    print::endpoint_status(g, &ok);
    Ok(())
}

fn put_request(
    args: &[&str],
    f: &Flags,
    stdin: &mut dyn std::io::BufRead,
) -> Result<pb::PutRequest, Failure> {
    let ignore_value = f.bool("ignore-value");
    let (key, value) = match args {
        [k, v] => (k.to_string(), v.to_string()),
        [k] if ignore_value => (k.to_string(), String::new()),
        [k] => {
            let mut v = String::new();
            std::io::Read::read_to_string(stdin, &mut v).map_err(|e| Failure {
                code: EXIT_ERROR,
                message: e.to_string(),
            })?;
            if v.is_empty() {
                return fail(
                    EXIT_BAD_ARGS,
                    "put command needs 1 argument and input from stdin or 2 arguments",
                );
            }
            (k.to_string(), v)
        }
        _ => {
            return fail(
                EXIT_BAD_ARGS,
                "put command needs 1 argument and input from stdin or 2 arguments",
            )
        }
    };
    let lease = match f.value("lease") {
        None | Some("0") => 0,
        Some(l) => i64::from_str_radix(l, 16).map_err(|e| Failure {
            code: EXIT_BAD_ARGS,
            message: format!("bad lease ID ({e}), expecting ID in Hex"),
        })?,
    };
    Ok(pb::PutRequest {
        key: Bytes::from(key),
        value: Bytes::from(value),
        lease,
        prev_kv: f.bool("prev-kv"),
        ignore_value,
        ignore_lease: f.bool("ignore-lease"),
    })
}

fn key_span(cmd: &str, args: &[&str], f: &Flags) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let usage = if cmd == "get" {
        "get command needs one argument as key and an optional argument as range_end"
    } else {
        "del command needs one argument as key and an optional argument as range_end"
    };
    if args.is_empty() || args.len() > 2 {
        return fail(EXIT_BAD_ARGS, usage);
    }
    let (prefix, from_key) = (f.bool("prefix"), f.bool("from-key"));
    if prefix && from_key {
        return fail(
            EXIT_BAD_ARGS,
            "`--prefix` and `--from-key` cannot be set at the same time, choose one",
        );
    }
    let mut key = args[0].as_bytes().to_vec();
    let mut end = Vec::new();
    if let Some(e) = args.get(1) {
        if prefix || from_key {
            return fail(
                EXIT_BAD_ARGS,
                "too many arguments, only accept one argument when `--prefix` or `--from-key` is set",
            );
        }
        end = e.as_bytes().to_vec();
    }
    if prefix {
        if key.is_empty() {
            key = vec![0];
            end = vec![0];
        } else {
            end = prefix_end(&key);
        }
    }
    if from_key {
        if key.is_empty() {
            key = vec![0];
        }
        end = vec![0];
    }
    Ok((key, end))
}

fn get_request(args: &[&str], f: &Flags) -> Result<pb::RangeRequest, Failure> {
    use pb::range_request::{SortOrder, SortTarget};
    let (key, end) = key_span("get", args, f)?;
    let serializable = match f.value("consistency").unwrap_or("l") {
        "l" => false,
        "s" => true,
        other => {
            return fail(
                EXIT_BAD_FEATURE,
                format!("unknown consistency flag {other:?}"),
            )
        }
    };
    let order = match f.value("order").unwrap_or("").to_uppercase().as_str() {
        "" => SortOrder::None,
        "ASCEND" => SortOrder::Ascend,
        "DESCEND" => SortOrder::Descend,
        _ => {
            return fail(
                EXIT_BAD_FEATURE,
                format!("bad sort order {}", f.value("order").unwrap_or("")),
            )
        }
    };
    let target = match f.value("sort-by").unwrap_or("").to_uppercase().as_str() {
        "" | "KEY" => SortTarget::Key,
        "CREATE" => SortTarget::Create,
        "MODIFY" => SortTarget::Mod,
        "VALUE" => SortTarget::Value,
        "VERSION" => SortTarget::Version,
        _ => {
            return fail(
                EXIT_BAD_FEATURE,
                format!("bad sort target {}", f.value("sort-by").unwrap_or("")),
            )
        }
    };
    // clientv3 drops ASCEND by key: the server returns keys in that order anyway.
    let order = if target == SortTarget::Key && order == SortOrder::Ascend {
        SortOrder::None
    } else {
        order
    };
    let num = |name: &str| -> Result<i64, Failure> {
        f.value(name).map_or(Ok(0), |v| {
            v.parse().map_err(|_| Failure {
                code: EXIT_BAD_ARGS,
                message: format!("invalid argument {v:?} for \"--{name}\" flag: strconv.ParseInt: parsing {v:?}: invalid syntax"),
            })
        })
    };
    Ok(pb::RangeRequest {
        key: Bytes::from(key),
        range_end: Bytes::from(end),
        limit: num("limit")?,
        revision: num("rev")?.max(0),
        sort_order: order as i32,
        sort_target: target as i32,
        serializable,
        keys_only: f.bool("keys-only"),
        count_only: f.bool("count-only"),
        ..Default::default()
    })
}

fn del_request(args: &[&str], f: &Flags) -> Result<pb::DeleteRangeRequest, Failure> {
    let (key, end) = key_span("del", args, f)?;
    Ok(pb::DeleteRangeRequest {
        key: Bytes::from(key),
        range_end: Bytes::from(end),
        prev_kv: f.bool("prev-kv"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"foo"), b"fop");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
