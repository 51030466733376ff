//! `ferroctl member add|remove|promote|update` and `ferroctl move-leader`, printed as
//! etcdctl 3.4 prints them (simple format).

use super::flags::Flags;
use super::{fail, per_endpoint, with_client, Failure, Format, Global};
use super::{EXIT_BAD_ARGS, EXIT_BAD_FEATURE, EXIT_ERROR};
use crate::proto::etcdserverpb as pb;

fn member_id(arg: &str) -> Result<u64, Failure> {
    u64::from_str_radix(arg, 16).map_err(|e| Failure {
        code: EXIT_BAD_ARGS,
        message: format!(
            "bad member ID arg (strconv.ParseUint: parsing {arg:?}: {e}), expecting ID in Hex"
        ),
    })
}

fn peer_urls(f: &Flags) -> Result<Vec<String>, Failure> {
    match f.value("peer-urls") {
        Some(u) if !u.is_empty() => Ok(u.split(',').map(str::to_string).collect()),
        _ => fail(EXIT_BAD_ARGS, "member peer urls not provided"),
    }
}

/// Runs `ferroctl member <sub> <rest>` for the changes (list is elsewhere).
pub fn run(g: &Global, f: &Flags, sub: &str, rest: &[&str]) -> Result<(), Failure> {
    if g.format != Format::Simple {
        return fail(
            EXIT_BAD_FEATURE,
            "ferroctl prints membership changes in the simple format",
        );
    }
    let cluster = |h: &Option<pb::ResponseHeader>| h.as_ref().map_or(0, |h| h.cluster_id);
    match sub {
        "add" => {
            let [name] = rest else {
                return fail(EXIT_BAD_ARGS, "member name not provided");
            };
            let req = pb::MemberAddRequest {
                peer_ur_ls: peer_urls(f)?,
                is_learner: f.bool("learner"),
            };
            let r: pb::MemberAddResponse = with_client(g, move |c, t| {
                Box::pin(async move { c.unary("/etcdserverpb.Cluster/MemberAdd", &req, t).await })
            })?;
            let new_id = r.member.as_ref().map_or(0, |m| m.id);
            outln!(
                "Member {new_id:16x} added to cluster {:16x}\n",
                cluster(&r.header)
            );
            let mut initial = Vec::new();
            for m in &r.members {
                let n = if m.id == new_id {
                    name
                } else {
                    m.name.as_str()
                };
                for u in &m.peer_ur_ls {
                    initial.push(format!("{n}={u}"));
                }
            }
            let urls = r.member.map(|m| m.peer_ur_ls.join(",")).unwrap_or_default();
            outln!("ETCD_NAME=\"{name}\"");
            outln!("ETCD_INITIAL_CLUSTER=\"{}\"", initial.join(","));
            outln!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{urls}\"");
            outln!("ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
            Ok(())
        }
        "remove" | "promote" | "update" => {
            let [id] = rest else {
                return fail(EXIT_BAD_ARGS, "member ID is not provided");
            };
            let id = member_id(id)?;
            let (path, header) = match sub {
                "remove" => {
                    let req = pb::MemberRemoveRequest { id };
                    let r: pb::MemberRemoveResponse = with_client(g, move |c, t| {
                        Box::pin(async move {
                            c.unary("/etcdserverpb.Cluster/MemberRemove", &req, t).await
                        })
                    })?;
                    ("removed from", r.header)
                }
                "promote" => {
                    let req = pb::MemberPromoteRequest { id };
                    let r: pb::MemberPromoteResponse = with_client(g, move |c, t| {
                        Box::pin(async move {
                            c.unary("/etcdserverpb.Cluster/MemberPromote", &req, t)
                                .await
                        })
                    })?;
                    ("promoted in", r.header)
                }
                _ => {
                    let req = pb::MemberUpdateRequest {
                        id,
                        peer_ur_ls: peer_urls(f)?,
                    };
                    let r: pb::MemberUpdateResponse = with_client(g, move |c, t| {
                        Box::pin(async move {
                            c.unary("/etcdserverpb.Cluster/MemberUpdate", &req, t).await
                        })
                    })?;
                    ("updated in", r.header)
                }
            };
            outln!("Member {id:16x} {path} cluster {:16x}", cluster(&header));
            Ok(())
        }
        other => fail(EXIT_BAD_ARGS, format!("unknown member command {other:?}")),
    }
}

/// `ferroctl move-leader <id>`: finds the leader among the endpoints and asks it.
pub fn move_leader(g: &Global, rest: &[&str]) -> Result<(), Failure> {
    let [target] = rest else {
        return fail(EXIT_BAD_ARGS, "move-leader command needs 1 argument");
    };
    let target = member_id(target)?;
    let statuses = per_endpoint(g, |c, t| Box::pin(async move { c.status(t).await }));
    let leader = statuses.iter().find_map(|(ep, r, _)| match r {
        Ok(s) if s.header.as_ref().is_some_and(|h| h.member_id == s.leader) => {
            Some((ep.clone(), s.leader))
        }
        _ => None,
    });
    let Some((ep, from)) = leader else {
        return fail(EXIT_ERROR, "no leader endpoint given at [{}]");
    };
    let single = Global {
        endpoints: vec![ep],
        ..g.clone()
    };
    let req = pb::MoveLeaderRequest { target_id: target };
    let _: pb::MoveLeaderResponse = with_client(&single, move |c, t| {
        Box::pin(async move {
            c.unary("/etcdserverpb.Maintenance/MoveLeader", &req, t)
                .await
        })
    })?;
    outln!("Leadership transferred from {from:x} to {target:x}");
    Ok(())
}
