//! Reading a txn as etcdctl does: compares, a blank line, success ops, a blank line, failure
//! ops, a blank line. `-i` prints etcdctl's prompts.

use std::io::BufRead;

use bytes::Bytes;

use super::{del_request, fail, get_request, put_request, Failure, EXIT_BAD_ARGS};
use crate::proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request as Op;

pub fn read(input: &mut dyn BufRead, interactive: bool) -> Result<pb::TxnRequest, Failure> {
    let prompt = |s: &str| {
        if interactive {
            outln!("{s}");
        }
    };
    prompt("compares:");
    let compare = lines(input)?
        .iter()
        .map(|l| parse_compare(l))
        .collect::<Result<_, _>>()?;
    prompt("\nsuccess requests (get, put, del):");
    let success = ops(input)?;
    prompt("\nfailure requests (get, put, del):");
    let failure = ops(input)?;
    if interactive {
        outln!();
    }
    Ok(pb::TxnRequest {
        compare,
        success,
        failure,
    })
}

/// Lines up to the next blank line (or the end of input).
fn lines(input: &mut dyn BufRead) -> Result<Vec<String>, Failure> {
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        let n = input.read_line(&mut line).map_err(|e| Failure {
            code: super::EXIT_ERROR,
            message: e.to_string(),
        })?;
        if n == 0 {
            if out.is_empty() {
                return fail(super::EXIT_ERROR, "EOF");
            }
            return Ok(out);
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            return Ok(out);
        }
        out.push(line.to_string());
    }
}

fn ops(input: &mut dyn BufRead) -> Result<Vec<pb::RequestOp>, Failure> {
    lines(input)?
        .iter()
        .map(|l| {
            parse_op(l).map(|request| pb::RequestOp {
                request: Some(request),
            })
        })
        .collect()
}

/// Splits a line into arguments, honouring double and single quotes (etcdctl's Argify).
fn argify(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_arg = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_arg = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_arg {
                    out.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        out.push(cur);
    }
    out
}

fn parse_op(line: &str) -> Result<Op, Failure> {
    let args = argify(line);
    let f = super::flags::Flags::parse(&args, super::OP_VALUE_FLAGS, super::OP_BOOL_FLAGS)?;
    let pos: Vec<&str> = f.positional.iter().map(String::as_str).collect();
    match pos.as_slice() {
        ["get", rest @ ..] => Ok(Op::RequestRange(get_request(rest, &f)?)),
        ["put", rest @ ..] => Ok(Op::RequestPut(put_request(
            rest,
            &f,
            &mut std::io::empty(),
        )?)),
        ["del", rest @ ..] => Ok(Op::RequestDeleteRange(del_request(rest, &f)?)),
        _ => fail(EXIT_BAD_ARGS, format!("invalid txn request: {line}")),
    }
}

fn parse_compare(line: &str) -> Result<pb::Compare, Failure> {
    let malformed = || Failure {
        code: EXIT_BAD_ARGS,
        message: format!("malformed comparison: {line}"),
    };
    let (target, rest) = line.split_once('(').ok_or_else(malformed)?;
    let rest = rest.trim_start();
    let (key, rest) = quoted(rest).ok_or_else(malformed)?;
    let rest = rest.strip_prefix(')').ok_or_else(malformed)?.trim_start();
    let (op, rest) = rest.split_once(' ').ok_or_else(malformed)?;
    let (value, _) = quoted(rest.trim_start()).ok_or_else(malformed)?;
    let result = match op {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        ">" => CompareResult::Greater,
        "<" => CompareResult::Less,
        _ => return fail(EXIT_BAD_ARGS, format!("malformed comparison: {line}")),
    };
    let int = |v: &str| v.parse::<i64>().map_err(|_| malformed());
    let (target, union) = match target.trim() {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(int(&value)?)),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(int(&value)?),
        ),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(int(&value)?)),
        "val" | "value" => (CompareTarget::Value, TargetUnion::Value(Bytes::from(value))),
        "lease" => (
            CompareTarget::Lease,
            TargetUnion::Lease(i64::from_str_radix(&value, 16).map_err(|_| malformed())?),
        ),
        other => {
            return fail(
                EXIT_BAD_ARGS,
                format!("malformed comparison: {line} (unknown target {other})"),
            )
        }
    };
    Ok(pb::Compare {
        result: result as i32,
        target: target as i32,
        key: Bytes::from(key),
        range_end: Bytes::new(),
        target_union: Some(union),
    })
}

/// A Go-quoted string at the start of `s`: its value and the rest.
fn quoted(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                c => out.push(c),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_and_ops() {
        let c = parse_compare(r#"mod("k1") > "5""#).unwrap();
        assert_eq!(c.target, CompareTarget::Mod as i32);
        assert_eq!(c.result, CompareResult::Greater as i32);
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(5)));
        assert_eq!(&c.key[..], b"k1");
        assert!(parse_compare("nonsense").is_err());
        assert_eq!(argify(r#"put "a b" 'c d' e"#), ["put", "a b", "c d", "e"]);
        match parse_op("get t --prefix --keys-only").unwrap() {
            Op::RequestRange(r) => {
                assert_eq!(&r.range_end[..], b"u");
                assert!(r.keys_only);
            }
            other => panic!("{other:?}"),
        }
    }
}
