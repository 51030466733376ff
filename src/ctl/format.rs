//! Formatting as etcdctl's Go code formats: `%q` quoting, encoding/json of the response
//! structs (proto field names, 64-bit integers as numbers, bytes as base64, zero values left
//! out), go-humanize sizes, Go durations and tablewriter tables.

use base64::Engine;

use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb::KeyValue;

/// Go's `%q` of a byte string.
pub fn quote(b: &[u8]) -> String {
    let mut out = String::from("\"");
    let s = String::from_utf8_lossy(b);
    let valid = std::str::from_utf8(b).is_ok();
    if !valid {
        for &c in b {
            push_byte(&mut out, c);
        }
    } else {
        for ch in s.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0c' => out.push_str("\\f"),
                '\x0b' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
    out
}

fn push_byte(out: &mut String, c: u8) {
    match c {
        b'"' => out.push_str("\\\""),
        b'\\' => out.push_str("\\\\"),
        b'\n' => out.push_str("\\n"),
        b'\t' => out.push_str("\\t"),
        0x20..=0x7e => out.push(c as char),
        _ => out.push_str(&format!("\\x{c:02x}")),
    }
}

/// etcdctl's `--hex` rendering: every byte as `\xNN`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|c| format!("\\x{c:02x}")).collect()
}

/// go-humanize's `Bytes` (SI units).
pub fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", SIZES[e])
    } else {
        format!("{val:.0} {}", SIZES[e])
    }
}

/// Go's `time.Duration.String` for durations under a minute.
pub fn go_duration(d: std::time::Duration) -> String {
    let ns = d.as_nanos();
    let (unit_ns, unit) = match ns {
        0 => return "0s".into(),
        1..=999 => return format!("{ns}ns"),
        1_000..=999_999 => (1_000u128, "µs"),
        1_000_000..=999_999_999 => (1_000_000, "ms"),
        _ => (1_000_000_000, "s"),
    };
    let whole = ns / unit_ns;
    let frac = ns % unit_ns;
    if frac == 0 {
        return format!("{whole}{unit}");
    }
    let digits = unit_ns.to_string().len() - 1;
    let f = format!("{frac:0digits$}");
    format!("{whole}.{}{unit}", f.trim_end_matches('0'))
}

// ---------------------------------------------------------------- JSON (encoding/json)

/// A JSON object written the way encoding/json writes a struct with `omitempty` fields.
#[derive(Default)]
pub struct Obj(Vec<String>);

impl Obj {
    pub fn num(mut self, k: &str, v: impl Into<i128>) -> Self {
        let v = v.into();
        if v != 0 {
            self.0.push(format!("\"{k}\":{v}"));
        }
        self
    }

    pub fn boolean(mut self, k: &str, v: bool) -> Self {
        if v {
            self.0.push(format!("\"{k}\":true"));
        }
        self
    }

    pub fn bytes(mut self, k: &str, v: &[u8]) -> Self {
        if !v.is_empty() {
            let b = base64::engine::general_purpose::STANDARD.encode(v);
            self.0.push(format!("\"{k}\":\"{b}\""));
        }
        self
    }

    pub fn string(mut self, k: &str, v: &str) -> Self {
        if !v.is_empty() {
            self.0
                .push(format!("\"{k}\":{}", serde_json::Value::from(v)));
        }
        self
    }

    pub fn strings(mut self, k: &str, v: &[String]) -> Self {
        if !v.is_empty() {
            self.0
                .push(format!("\"{k}\":{}", serde_json::Value::from(v.to_vec())));
        }
        self
    }

    /// A nested struct pointer: left out when None.
    pub fn obj(mut self, k: &str, v: Option<Obj>) -> Self {
        if let Some(o) = v {
            self.0.push(format!("\"{k}\":{}", o.render()));
        }
        self
    }

    pub fn list(mut self, k: &str, v: Vec<Obj>) -> Self {
        if !v.is_empty() {
            let items: Vec<String> = v.into_iter().map(Obj::render).collect();
            self.0.push(format!("\"{k}\":[{}]", items.join(",")));
        }
        self
    }

    pub fn render(self) -> String {
        format!("{{{}}}", self.0.join(","))
    }
}

pub fn j_header(h: &Option<pb::ResponseHeader>) -> Option<Obj> {
    h.as_ref().map(|h| {
        Obj::default()
            .num("cluster_id", h.cluster_id)
            .num("member_id", h.member_id)
            .num("revision", h.revision)
            .num("raft_term", h.raft_term)
    })
}

pub fn j_kv(kv: &KeyValue) -> Obj {
    Obj::default()
        .bytes("key", &kv.key)
        .num("create_revision", kv.create_revision)
        .num("mod_revision", kv.mod_revision)
        .num("version", kv.version)
        .bytes("value", &kv.value)
        .num("lease", kv.lease)
}

pub fn j_range(r: &pb::RangeResponse) -> Obj {
    Obj::default()
        .obj("header", j_header(&r.header))
        .list("kvs", r.kvs.iter().map(j_kv).collect())
        .boolean("more", r.more)
        .num("count", r.count)
}

pub fn j_put(r: &pb::PutResponse) -> Obj {
    Obj::default()
        .obj("header", j_header(&r.header))
        .obj("prev_kv", r.prev_kv.as_ref().map(j_kv))
}

pub fn j_delete(r: &pb::DeleteRangeResponse) -> Obj {
    Obj::default()
        .obj("header", j_header(&r.header))
        .num("deleted", r.deleted)
        .list("prev_kvs", r.prev_kvs.iter().map(j_kv).collect())
}

pub fn j_txn(r: &pb::TxnResponse) -> Obj {
    use pb::response_op::Response as R;
    let ops = r
        .responses
        .iter()
        .map(|op| {
            let inner = match &op.response {
                Some(R::ResponseRange(x)) => {
                    Some(Obj::default().obj("ResponseRange", Some(j_range(x))))
                }
                Some(R::ResponsePut(x)) => Some(Obj::default().obj("ResponsePut", Some(j_put(x)))),
                Some(R::ResponseDeleteRange(x)) => {
                    Some(Obj::default().obj("ResponseDeleteRange", Some(j_delete(x))))
                }
                Some(R::ResponseTxn(x)) => Some(Obj::default().obj("ResponseTxn", Some(j_txn(x)))),
                None => None,
            };
            Obj::default().obj("Response", inner)
        })
        .collect();
    Obj::default()
        .obj("header", j_header(&r.header))
        .boolean("succeeded", r.succeeded)
        .list("responses", ops)
}

pub fn j_member(m: &pb::Member) -> Obj {
    Obj::default()
        .num("ID", m.id)
        .string("name", &m.name)
        .strings("peerURLs", &m.peer_ur_ls)
        .strings("clientURLs", &m.client_ur_ls)
        .boolean("isLearner", m.is_learner)
}

pub fn j_status(s: &pb::StatusResponse) -> Obj {
    Obj::default()
        .obj("header", j_header(&s.header))
        .string("version", &s.version)
        .num("dbSize", s.db_size)
        .num("leader", s.leader)
        .num("raftIndex", s.raft_index)
        .num("raftTerm", s.raft_term)
        .num("raftAppliedIndex", s.raft_applied_index)
        .strings("errors", &s.errors)
        .num("dbSizeInUse", s.db_size_in_use)
        .boolean("isLearner", s.is_learner)
}

// ---------------------------------------------------------------- tables (tablewriter)

/// A table as etcdctl renders it: centred upper-case headers, right-aligned cells.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = {
        let parts: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
        format!("+{}+\n", parts.join("+"))
    };
    let mut out = line.clone();
    let cells: Vec<String> = header
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let gap = w - h.len();
            format!(
                " {}{}{} ",
                " ".repeat(gap / 2),
                h,
                " ".repeat(gap - gap / 2)
            )
        })
        .collect();
    out.push_str(&format!("|{}|\n", cells.join("|")));
    out.push_str(&line);
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:>w$} "))
            .collect();
        out.push_str(&format!("|{}|\n", cells.join("|")));
    }
    out.push_str(&line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_formats() {
        assert_eq!(quote(b"a\"b\n"), r#""a\"b\n""#);
        assert_eq!(quote(&[0xff, b'a']), r#""\xffa""#);
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(2_500_000), "2.5 MB");
        assert_eq!(go_duration(Duration::from_nanos(1_790_270)), "1.79027ms");
        assert_eq!(go_duration(Duration::from_micros(250)), "250µs");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(hex(b"ab"), "\\x61\\x62");
    }

    #[test]
    fn json_leaves_zero_values_out() {
        let r = pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 6,
                raft_term: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            j_range(&r).render(),
            r#"{"header":{"cluster_id":1,"member_id":2,"revision":6}}"#
        );
    }

    #[test]
    fn tables_centre_headers() {
        let t = table(
            &["ID", "STATUS"],
            &[vec!["8e9e05c52164694d".into(), "started".into()]],
        );
        assert_eq!(
            t,
            "+------------------+---------+\n|        ID        | STATUS  |\n+------------------+---------+\n| 8e9e05c52164694d | started |\n+------------------+---------+\n"
        );
    }
}
