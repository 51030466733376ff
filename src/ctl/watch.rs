//! `ferroctl watch [--prefix] [--rev N] [--prev-kv] <key> [range_end]`, printed as etcdctl
//! 3.4 prints a watch in the simple format; runs until interrupted or canceled by the server.

use bytes::Bytes;

use super::flags::Flags;
use super::{fail, on_connection, Failure, Format, Global, EXIT_BAD_ARGS, EXIT_BAD_FEATURE};
use crate::error::EtcdError;
use crate::kv::prefix_end;
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;

/// etcdctl's exit code when a watch ends because the server canceled it.
const EXIT_INTERRUPTED: i32 = 130;

pub fn run(g: &Global, f: &Flags, rest: &[&str]) -> Result<(), Failure> {
    if g.format != Format::Simple {
        return fail(
            EXIT_BAD_FEATURE,
            "ferroctl prints watch events in the simple format only",
        );
    }
    if f.bool("interactive") || f.bool("i") {
        return fail(EXIT_BAD_FEATURE, "ferroctl has no interactive watch yet");
    }
    let (key, end) = match rest {
        [k] => (*k, None),
        [k, e] => (*k, Some(*e)),
        [] => return fail(EXIT_BAD_ARGS, "watch requires a key or a prefix"),
        _ => return fail(EXIT_BAD_FEATURE, "ferroctl watch runs no exec-command yet"),
    };
    let prefix = f.bool("prefix");
    if prefix && end.is_some() {
        return fail(
            EXIT_BAD_ARGS,
            "`range_end` and `--prefix` are mutually exclusive",
        );
    }
    let range_end = match (prefix, end) {
        (true, _) => Bytes::from(prefix_end(key.as_bytes())),
        (false, Some(e)) => Bytes::copy_from_slice(e.as_bytes()),
        (false, None) => Bytes::new(),
    };
    let start_revision = match f.value("rev") {
        None => 0,
        Some(r) => r.parse().map_err(|_| Failure {
            code: EXIT_BAD_ARGS,
            message: format!("invalid argument {r:?} for \"--rev\" flag: strconv.ParseInt: parsing {r:?}: invalid syntax"),
        })?,
    };
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                range_end,
                start_revision,
                prev_kv: f.bool("prev-kv"),
                ..Default::default()
            },
        )),
    };
    let hex = g.hex;
    on_connection(g, move |mut c| async move {
        let mut s = c.watch(&[create]).await.map_err(Failure::from)?;
        loop {
            let r = s.next().await.map_err(Failure::from)?;
            if r.canceled {
                let why = if r.compact_revision != 0 {
                    EtcdError::Compacted.message().to_string()
                } else if !r.cancel_reason.is_empty() {
                    r.cancel_reason.clone()
                } else {
                    EtcdError::FutureRev.message().to_string()
                };
                eprintln!("watch was canceled ({why})");
            }
            for e in &r.events {
                let put = e.r#type == mvccpb::event::EventType::Put as i32;
                outln!("{}", if put { "PUT" } else { "DELETE" });
                for kv in e.prev_kv.iter().chain(e.kv.iter()) {
                    let show = |b: &[u8]| {
                        if hex {
                            super::format::hex(b)
                        } else {
                            String::from_utf8_lossy(b).into_owned()
                        }
                    };
                    outln!("{}\n{}", show(&kv.key), show(&kv.value));
                }
            }
            if r.canceled {
                return fail(EXIT_INTERRUPTED, "watch is canceled by the server");
            }
        }
    })
}
