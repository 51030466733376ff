//! `ferroctl lease grant|revoke|timetolive|list|keep-alive`, printed as etcdctl 3.4 prints
//! them (simple; timetolive also as JSON).

use super::flags::Flags;
use super::format::Obj;
use super::{
    fail, on_connection, with_client, Failure, Format, Global, EXIT_BAD_ARGS, EXIT_BAD_CONNECTION,
};
use super::{EXIT_BAD_FEATURE, EXIT_ERROR};
use crate::proto::etcdserverpb as pb;

fn lease_id(arg: &str) -> Result<i64, Failure> {
    i64::from_str_radix(arg, 16).map_err(|e| Failure {
        code: EXIT_BAD_ARGS,
        message: format!(
            "bad lease ID arg (strconv.ParseInt: parsing {arg:?}: {}), expecting ID in Hex",
            go_parse_error(&e)
        ),
    })
}

fn go_parse_error(e: &std::num::ParseIntError) -> &'static str {
    match e.kind() {
        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
            "value out of range"
        }
        _ => "invalid syntax",
    }
}

fn one_arg<'a>(rest: &[&'a str], what: &str) -> Result<&'a str, Failure> {
    match rest {
        [a] => Ok(a),
        _ => fail(EXIT_BAD_ARGS, format!("{what} command needs 1 argument")),
    }
}

/// Runs `ferroctl lease <sub> <rest>`.
pub fn run(g: &Global, f: &Flags, sub: &str, rest: &[&str]) -> Result<(), Failure> {
    if g.format != Format::Simple && !(sub == "timetolive" && g.format == Format::Json) {
        return fail(
            EXIT_BAD_FEATURE,
            "ferroctl prints lease commands in the simple format (timetolive also as json)",
        );
    }
    match sub {
        "grant" => {
            let [ttl] = rest else {
                return fail(EXIT_BAD_ARGS, "lease grant command needs TTL argument");
            };
            let ttl: i64 = ttl.parse().map_err(|e| Failure {
                code: EXIT_BAD_ARGS,
                message: format!(
                    "bad TTL (strconv.ParseInt: parsing {ttl:?}: {})",
                    go_parse_error(&e)
                ),
            })?;
            let req = pb::LeaseGrantRequest { ttl, id: 0 };
            let r = with_client(g, move |c, t| {
                Box::pin(async move { c.lease_grant(&req, t).await })
            })
            .map_err(|e| Failure {
                code: EXIT_ERROR,
                message: format!("failed to grant lease ({})", e.message),
            })?;
            outln!("lease {:016x} granted with TTL({}s)", r.id, r.ttl);
            Ok(())
        }
        "revoke" => {
            let id = lease_id(one_arg(rest, "lease revoke")?)?;
            let req = pb::LeaseRevokeRequest { id };
            with_client(g, move |c, t| {
                Box::pin(async move { c.lease_revoke(&req, t).await })
            })
            .map_err(|e| Failure {
                code: EXIT_ERROR,
                message: format!("failed to revoke lease ({})", e.message),
            })?;
            outln!("lease {id:016x} revoked");
            Ok(())
        }
        "timetolive" => {
            let id = lease_id(one_arg(rest, "lease timetolive")?)?;
            let keys = f.bool("keys");
            let req = pb::LeaseTimeToLiveRequest { id, keys };
            let r = with_client(g, move |c, t| {
                Box::pin(async move { c.lease_time_to_live(&req, t).await })
            })
            .map_err(|e| Failure {
                code: EXIT_BAD_CONNECTION,
                ..e
            })?;
            if g.format == Format::Json {
                // clientv3's LeaseTimeToLiveResponse: the header's fields, then id, ttl,
                // granted-ttl and keys (never omitted).
                let h = r.header.unwrap_or_default();
                let hdr = Obj::default()
                    .num("cluster_id", h.cluster_id)
                    .num("member_id", h.member_id)
                    .num("revision", h.revision)
                    .num("raft_term", h.raft_term)
                    .render();
                let keys = if r.keys.is_empty() {
                    "null".to_string()
                } else {
                    let b64 = |k: &bytes::Bytes| {
                        use base64::Engine;
                        format!(
                            "\"{}\"",
                            base64::engine::general_purpose::STANDARD.encode(k)
                        )
                    };
                    format!("[{}]", r.keys.iter().map(b64).collect::<Vec<_>>().join(","))
                };
                let head = hdr.trim_end_matches('}');
                let sep = if head.len() > 1 { "," } else { "" };
                outln!(
                    "{head}{sep}\"id\":{},\"ttl\":{},\"granted-ttl\":{},\"keys\":{keys}}}",
                    r.id,
                    r.ttl,
                    r.granted_ttl
                );
                return Ok(());
            }
            if r.granted_ttl == 0 && r.ttl == -1 {
                outln!("lease {:016x} already expired", r.id);
                return Ok(());
            }
            let mut txt = format!(
                "lease {:016x} granted with TTL({}s), remaining({}s)",
                r.id, r.granted_ttl, r.ttl
            );
            if keys {
                let ks: Vec<String> = r
                    .keys
                    .iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect();
                txt.push_str(&format!(", attached keys([{}])", ks.join(" ")));
            }
            outln!("{txt}");
            Ok(())
        }
        "list" => {
            let r = with_client(g, |c, t| Box::pin(async move { c.lease_leases(t).await }))
                .map_err(|e| Failure {
                    code: EXIT_BAD_CONNECTION,
                    ..e
                })?;
            outln!("found {} leases", r.leases.len());
            for l in &r.leases {
                outln!("{:016x}", l.id);
            }
            Ok(())
        }
        "keep-alive" => {
            let id = lease_id(one_arg(rest, "lease keep-alive")?)?;
            keep_alive(g, id, f.bool("once"))
        }
        other => fail(
            EXIT_BAD_ARGS,
            format!("unknown command {other:?} for \"ferroctl lease\""),
        ),
    }
}

/// Keeps the lease alive (once, or every third of its TTL until it is gone), printing each
/// answer as etcdctl does.
fn keep_alive(g: &Global, id: i64, once: bool) -> Result<(), Failure> {
    on_connection(g, move |mut c| async move {
        let req = pb::LeaseKeepAliveRequest { id };
        let mut s = c.keep_alive(&req).await.map_err(Failure::from)?;
        loop {
            let r = s.next().await.map_err(Failure::from)?;
            if r.ttl <= 0 {
                if once {
                    return fail(EXIT_BAD_CONNECTION, "etcdserver: requested lease not found");
                }
                outln!("lease {id:016x} expired or revoked.");
                return Ok(());
            }
            outln!("lease {:016x} keepalived with TTL({})", r.id, r.ttl);
            if once {
                return Ok(());
            }
            let every = std::time::Duration::from_secs((r.ttl as u64 / 3).max(1));
            glommio::timer::sleep(every).await;
            s.send(&req).map_err(Failure::from)?;
        }
    })
}
