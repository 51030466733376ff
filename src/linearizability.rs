//! A linearizability checker for histories of puts and gets on keys (each key a register),
//! in the manner of porcupine / Wing & Gong with Lowe's memoization: search for an order of
//! the operations that respects real time (an operation that returned before another was
//! called comes first) and in which every get returns the value of the latest put.
//!
//! Keys are independent registers, so a history is checked key by key. A put whose outcome is
//! unknown (the client got an error or a time-out) has no return time: it may take effect at
//! any point after its call, or never. Failed gets are left out of the history.

use std::collections::{BTreeMap, HashSet};

/// What a client did, with the times (any monotonic unit) it called and got the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub key: String,
    pub kind: OpKind,
    pub call: u64,
    /// None: the outcome is unknown (a put that failed or timed out).
    pub ret: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Put(String),
    /// The value read; None when the key did not exist.
    Get(Option<String>),
}

/// Why a history failed the check.
#[derive(Debug)]
pub enum CheckError {
    /// No order of this key's operations explains what the gets returned.
    NotLinearizable { key: String, ops: Vec<Op> },
    /// The search for this key went past `STATES_MAX` states (too many concurrent operations
    /// of unknown outcome); the history is neither proven nor refuted.
    TooComplex { key: String, ops: usize },
}

/// Most (linearized set, value) states remembered per key before giving up.
pub const STATES_MAX: usize = 1_000_000;

/// Checks every key's history. Puts of unknown outcome whose value no get returned are left
/// out first: with values unique per put (the caller's duty), such a put may as well never
/// have taken effect, and each one would double the states to search.
pub fn check(history: &[Op]) -> Result<(), CheckError> {
    let read: HashSet<(&str, &str)> = history
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Get(Some(v)) => Some((op.key.as_str(), v.as_str())),
            _ => None,
        })
        .collect();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        let unseen = match &op.kind {
            OpKind::Put(v) => op.ret.is_none() && !read.contains(&(op.key.as_str(), v.as_str())),
            OpKind::Get(_) => false,
        };
        if !unseen {
            by_key.entry(&op.key).or_default().push(op);
        }
    }
    for (key, ops) in by_key {
        match check_register(&ops) {
            Some(true) => {}
            Some(false) => {
                return Err(CheckError::NotLinearizable {
                    key: key.to_string(),
                    ops: ops.into_iter().cloned().collect(),
                })
            }
            None => {
                return Err(CheckError::TooComplex {
                    key: key.to_string(),
                    ops: ops.len(),
                })
            }
        }
    }
    Ok(())
}

/// One key's operations, from a key that did not exist; None when the search grew past
/// `STATES_MAX`.
fn check_register(ops: &[&Op]) -> Option<bool> {
    // Events in time order; at equal times calls come first, so operations stamped with the
    // same instant count as concurrent.
    #[derive(Clone, Copy)]
    struct Event {
        op: usize,
        is_call: bool,
    }
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, false, i));
        events.push((op.ret.unwrap_or(u64::MAX), true, i));
    }
    // Calls (false) sort before returns (true) at equal times.
    events.sort();
    let events: Vec<Event> = events
        .into_iter()
        .map(|(_, is_ret, op)| Event {
            op,
            is_call: !is_ret,
        })
        .collect();
    // A doubly linked list over the events, so linearized operations can be lifted out.
    let n = events.len();
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    // Sentinel at index n: next[n] is the first event.
    next.push(0);
    prev.push(usize::MAX);
    if n > 0 {
        prev[0] = n;
    }
    let mut ret_of = vec![0usize; ops.len()];
    let mut call_of = vec![0usize; ops.len()];
    for (i, e) in events.iter().enumerate() {
        if e.is_call {
            call_of[e.op] = i;
        } else {
            ret_of[e.op] = i;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx < n {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx < n {
            prev[nx] = i;
        }
    };
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut state: Option<String> = None;
    // Stack of (op, state before it).
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut cur = next[n];
    loop {
        if cur >= n {
            // Every event is lifted out: all operations linearized.
            return Some(true);
        }
        let e = events[cur];
        if e.is_call {
            let op = ops[e.op];
            let (ok, after) = match &op.kind {
                OpKind::Put(v) => (true, Some(v.clone())),
                OpKind::Get(v) => (*v == state, state.clone()),
            };
            let mut lin = linearized.clone();
            lin[e.op / 64] |= 1 << (e.op % 64);
            if cache.len() > STATES_MAX {
                return None;
            }
            if ok && cache.insert((lin.clone(), after.clone())) {
                stack.push((e.op, state.clone()));
                state = after;
                linearized = lin;
                unlink(&mut next, &mut prev, call_of[e.op]);
                unlink(&mut next, &mut prev, ret_of[e.op]);
                cur = next[n];
            } else {
                cur = next[cur];
            }
        } else {
            // A return reached before its operation was linearized: undo the last choice.
            let Some((op, before)) = stack.pop() else {
                return Some(false);
            };
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_of[op]);
            relink(&mut next, &mut prev, call_of[op]);
            cur = next[call_of[op]];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, v: &str, call: u64, ret: Option<u64>) -> Op {
        Op {
            key: key.into(),
            kind: OpKind::Put(v.into()),
            call,
            ret,
        }
    }

    fn get(key: &str, v: Option<&str>, call: u64, ret: u64) -> Op {
        Op {
            key: key.into(),
            kind: OpKind::Get(v.map(str::to_string)),
            call,
            ret: Some(ret),
        }
    }

    #[test]
    fn sequential_and_concurrent_histories_that_are_linearizable() {
        assert!(check(&[]).is_ok());
        // Sequential.
        assert!(check(&[
            get("a", None, 0, 1),
            put("a", "1", 2, Some(3)),
            get("a", Some("1"), 4, 5),
        ])
        .is_ok());
        // Concurrent put and gets: one get before it took effect, one after.
        assert!(check(&[
            put("a", "1", 0, Some(10)),
            get("a", None, 1, 2),
            get("a", Some("1"), 3, 4),
        ])
        .is_ok());
        // Two concurrent puts, read in either order by later reads? Only one final value.
        assert!(check(&[
            put("a", "1", 0, Some(5)),
            put("a", "2", 1, Some(6)),
            get("a", Some("1"), 7, 8),
        ])
        .is_ok());
        // A put of unknown outcome may have happened late...
        assert!(check(&[
            put("a", "1", 0, None),
            get("a", None, 5, 6),
            get("a", Some("1"), 7, 8),
        ])
        .is_ok());
        // ... or never.
        assert!(check(&[put("a", "1", 0, None), get("a", None, 5, 6)]).is_ok());
        // Keys are independent.
        assert!(check(&[
            put("a", "1", 0, Some(1)),
            put("b", "2", 2, Some(3)),
            get("b", Some("2"), 4, 5),
            get("a", Some("1"), 4, 5),
        ])
        .is_ok());
    }

    #[test]
    fn histories_that_are_not_linearizable_are_caught() {
        // A stale read after a completed put.
        let e = check(&[put("a", "1", 0, Some(1)), get("a", None, 2, 3)]).unwrap_err();
        assert!(
            matches!(&e, CheckError::NotLinearizable { key, ops } if key == "a" && ops.len() == 2),
            "{e:?}"
        );
        // A read of a value never written.
        assert!(check(&[get("a", Some("x"), 0, 1)]).is_err());
        // Reads that see a value, then the older one again.
        assert!(check(&[
            put("a", "1", 0, Some(1)),
            put("a", "2", 2, Some(10)),
            get("a", Some("2"), 3, 4),
            get("a", Some("1"), 5, 6),
        ])
        .is_err());
        // An unknown put cannot take effect before its call.
        assert!(check(&[get("a", Some("1"), 0, 1), put("a", "1", 2, None)]).is_err());
        // A lost acknowledged write: read after it returns sees nothing.
        assert!(check(&[
            put("b", "1", 0, Some(1)),
            put("a", "1", 0, Some(1)),
            get("a", None, 5, 6),
        ])
        .is_err());
    }

    #[test]
    fn many_unread_puts_of_unknown_outcome_cost_nothing() {
        // 200 failed puts, none read, then a read of the last acknowledged value.
        let mut h = vec![put("k", "ok", 0, Some(1))];
        for i in 0..200u64 {
            h.push(put("k", &format!("lost{i}"), 2 + i, None));
        }
        h.push(get("k", Some("ok"), 1000, 1001));
        assert!(check(&h).is_ok());
        // One of them read: it took effect.
        h.push(get("k", Some("lost7"), 1002, 1003));
        assert!(check(&h).is_ok());
        // And then the older value again: not linearizable.
        h.push(get("k", Some("ok"), 1004, 1005));
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_long_concurrent_history_checks_quickly() {
        // 5 clients, each put then get of its own value on one key, overlapping in pairs.
        let mut h = Vec::new();
        for round in 0..40u64 {
            let t = round * 10;
            for c in 0..5u64 {
                let v = format!("{round}-{c}");
                h.push(put("k", &v, t + c, Some(t + 5 + c)));
            }
            h.push(get("k", Some(&format!("{round}-4")), t + 9, t + 9));
        }
        assert!(check(&h).is_ok());
    }
}
