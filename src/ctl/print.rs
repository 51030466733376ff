//! etcdctl's printers (simple, json, fields, table) for each response.

use std::time::Duration;

use super::format::{self, go_duration, human_bytes, quote, Obj};
use super::Global;
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb::KeyValue;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Simple,
    Json,
    Fields,
    Table,
}

fn simple_kv(g: &Global, kv: &KeyValue, value_only: bool) {
    let (k, v) = if g.hex {
        (format::hex(&kv.key), format::hex(&kv.value))
    } else {
        (
            String::from_utf8_lossy(&kv.key).into_owned(),
            String::from_utf8_lossy(&kv.value).into_owned(),
        )
    };
    if !value_only {
        outln!("{k}");
    }
    outln!("{v}");
}

fn fields_hdr(g: &Global, h: &Option<pb::ResponseHeader>) {
    let h = h.unwrap_or_default();
    if g.hex {
        outln!("\"ClusterID\" : {:x}", h.cluster_id);
        outln!("\"MemberID\" : {:x}", h.member_id);
    } else {
        outln!("\"ClusterID\" : {}", h.cluster_id);
        outln!("\"MemberID\" : {}", h.member_id);
    }
    outln!("\"Revision\" : {}", h.revision);
    outln!("\"RaftTerm\" : {}", h.raft_term);
}

fn fields_kv(g: &Global, pfx: &str, kv: &KeyValue) {
    outln!("\"{pfx}Key\" : {}", quote(&kv.key));
    outln!("\"{pfx}CreateRevision\" : {}", kv.create_revision);
    outln!("\"{pfx}ModRevision\" : {}", kv.mod_revision);
    outln!("\"{pfx}Version\" : {}", kv.version);
    outln!("\"{pfx}Value\" : {}", quote(&kv.value));
    if g.hex {
        outln!("\"{pfx}Lease\" : {:016x}", kv.lease);
    } else {
        outln!("\"{pfx}Lease\" : {}", kv.lease);
    }
}

fn json(o: Obj) {
    outln!("{}", o.render());
}

pub fn get(g: &Global, r: &pb::RangeResponse, value_only: bool) {
    match g.format {
        Format::Simple => r.kvs.iter().for_each(|kv| simple_kv(g, kv, value_only)),
        Format::Json => json(format::j_range(r)),
        _ => {
            fields_hdr(g, &r.header);
            r.kvs.iter().for_each(|kv| fields_kv(g, "", kv));
            outln!("\"More\" : {}", r.more);
            outln!("\"Count\" : {}", r.count);
        }
    }
}

pub fn put(g: &Global, r: &pb::PutResponse) {
    match g.format {
        Format::Simple => {
            outln!("OK");
            if let Some(kv) = &r.prev_kv {
                simple_kv(g, kv, false);
            }
        }
        Format::Json => json(format::j_put(r)),
        _ => {
            fields_hdr(g, &r.header);
            if let Some(kv) = &r.prev_kv {
                fields_kv(g, "Prev", kv);
            }
        }
    }
}

pub fn del(g: &Global, r: &pb::DeleteRangeResponse) {
    match g.format {
        Format::Simple => {
            outln!("{}", r.deleted);
            r.prev_kvs.iter().for_each(|kv| simple_kv(g, kv, false));
        }
        Format::Json => json(format::j_delete(r)),
        _ => {
            fields_hdr(g, &r.header);
            outln!("\"Deleted\" : {}", r.deleted);
            r.prev_kvs.iter().for_each(|kv| fields_kv(g, "Prev", kv));
        }
    }
}

pub fn txn(g: &Global, r: &pb::TxnResponse) {
    use pb::response_op::Response as R;
    match g.format {
        Format::Json => json(format::j_txn(r)),
        Format::Simple => {
            outln!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
            for op in &r.responses {
                outln!();
                match &op.response {
                    Some(R::ResponseRange(x)) => get(g, x, false),
                    Some(R::ResponsePut(x)) => put(g, x),
                    Some(R::ResponseDeleteRange(x)) => del(g, x),
                    other => outln!("unexpected response {other:?}"),
                }
            }
        }
        _ => {
            fields_hdr(g, &r.header);
            outln!("\"Succeeded\" : {}", r.succeeded);
            for op in &r.responses {
                match &op.response {
                    Some(R::ResponseRange(x)) => get(g, x, false),
                    Some(R::ResponsePut(x)) => put(g, x),
                    Some(R::ResponseDeleteRange(x)) => del(g, x),
                    other => outln!("\"Unknown\" : {}", quote(format!("{other:?}").as_bytes())),
                }
            }
        }
    }
}

pub fn member_list(g: &Global, r: &pb::MemberListResponse) {
    let row = |m: &pb::Member| {
        vec![
            format!("{:x}", m.id),
            if m.name.is_empty() {
                "unstarted"
            } else {
                "started"
            }
            .to_string(),
            m.name.clone(),
            m.peer_ur_ls.join(","),
            m.client_ur_ls.join(","),
            m.is_learner.to_string(),
        ]
    };
    match g.format {
        Format::Simple => r
            .members
            .iter()
            .for_each(|m| outln!("{}", row(m).join(", "))),
        Format::Json => json(
            Obj::default()
                .obj("header", format::j_header(&r.header))
                .list("members", r.members.iter().map(format::j_member).collect()),
        ),
        Format::Fields => {
            fields_hdr(g, &r.header);
            for m in &r.members {
                outln!("\"ID\" : {}", m.id);
                outln!("\"Name\" : {}", quote(m.name.as_bytes()));
                m.peer_ur_ls
                    .iter()
                    .for_each(|u| outln!("\"PeerURL\" : {}", quote(u.as_bytes())));
                m.client_ur_ls
                    .iter()
                    .for_each(|u| outln!("\"ClientURL\" : {}", quote(u.as_bytes())));
                outln!("\"IsLearner\" : {}", m.is_learner);
                outln!();
            }
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = r.members.iter().map(row).collect();
            out!(
                "{}",
                format::table(
                    &[
                        "ID",
                        "STATUS",
                        "NAME",
                        "PEER ADDRS",
                        "CLIENT ADDRS",
                        "IS LEARNER"
                    ],
                    &rows
                )
            );
        }
    }
}

pub fn endpoint_status(g: &Global, eps: &[(String, pb::StatusResponse)]) {
    let row = |ep: &str, s: &pb::StatusResponse| {
        let id = s.header.map_or(0, |h| h.member_id);
        vec![
            ep.to_string(),
            format!("{id:x}"),
            s.version.clone(),
            human_bytes(s.db_size.max(0) as u64),
            (s.leader == id).to_string(),
            s.is_learner.to_string(),
            s.raft_term.to_string(),
            s.raft_index.to_string(),
            s.raft_applied_index.to_string(),
            s.errors.join(", "),
        ]
    };
    match g.format {
        Format::Simple => eps
            .iter()
            .for_each(|(ep, s)| outln!("{}", row(ep, s).join(", "))),
        Format::Json => {
            let items: Vec<String> = eps
                .iter()
                .map(|(ep, s)| {
                    format!(
                        "{{\"Endpoint\":{},\"Status\":{}}}",
                        serde_json::Value::from(ep.as_str()),
                        format::j_status(s).render()
                    )
                })
                .collect();
            outln!("[{}]", items.join(","));
        }
        Format::Fields => {
            for (ep, s) in eps {
                fields_hdr(g, &s.header);
                outln!("\"Version\" : {}", quote(s.version.as_bytes()));
                outln!("\"DBSize\" : {}", s.db_size);
                outln!("\"Leader\" : {}", s.leader);
                outln!("\"IsLearner\" : {}", s.is_learner);
                outln!("\"RaftIndex\" : {}", s.raft_index);
                outln!("\"RaftTerm\" : {}", s.raft_term);
                outln!("\"RaftAppliedIndex\" : {}", s.raft_applied_index);
                outln!("\"Errors\" : [{}]", s.errors.join(" "));
                outln!("\"Endpoint\" : {}", quote(ep.as_bytes()));
                outln!();
            }
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = eps.iter().map(|(ep, s)| row(ep, s)).collect();
            out!(
                "{}",
                format::table(
                    &[
                        "ENDPOINT",
                        "ID",
                        "VERSION",
                        "DB SIZE",
                        "IS LEADER",
                        "IS LEARNER",
                        "RAFT TERM",
                        "RAFT INDEX",
                        "RAFT APPLIED INDEX",
                        "ERRORS"
                    ],
                    &rows
                )
            );
        }
    }
}

/// (endpoint, healthy, time taken, error).
pub fn endpoint_health(g: &Global, hs: &[(String, bool, Duration, String)]) {
    match g.format {
        Format::Json => {
            let items: Vec<String> = hs
                .iter()
                .map(|(ep, ok, took, err)| {
                    let mut s = format!(
                        "{{\"endpoint\":{},\"health\":{ok},\"took\":\"{}\"",
                        serde_json::Value::from(ep.as_str()),
                        go_duration(*took)
                    );
                    if !err.is_empty() {
                        s.push_str(&format!(
                            ",\"error\":{}",
                            serde_json::Value::from(err.as_str())
                        ));
                    }
                    s + "}"
                })
                .collect();
            outln!("[{}]", items.join(","));
        }
        _ => {
            // etcdctl 3.4 prints both verdicts on stderr.
            for (ep, ok, took, err) in hs {
                if *ok {
                    eprintln!(
                        "{ep} is healthy: successfully committed proposal: took = {}",
                        go_duration(*took)
                    );
                } else {
                    eprintln!("{ep} is unhealthy: failed to commit proposal: {err}");
                }
            }
        }
    }
}
