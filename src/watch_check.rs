//! etcd's watch guarantees checked over a recorded history: ordered, unique, atomic,
//! reliable (with values and previous values), and bookmarkable. Used by
//! tests/watch_guarantees.rs (real processes, real etcd as a check of the checker) and by the
//! cluster simulation (src/sim.rs). Resumable is reliable for a watcher that resumed at its
//! last revision + 1.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One event as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ev {
    pub rev: i64,
    pub key: String,
    pub put: bool,
    pub value: String,
    pub prev: Option<String>,
}

/// One watch response as recorded: its events, or a progress notification at `header_rev`.
#[derive(Clone, Debug)]
pub struct Resp {
    pub watch_id: i64,
    pub events: Vec<Ev>,
    pub header_rev: i64,
}

/// What the writers had acknowledged: per revision, the (key, put?, value) in order.
pub type Acked = BTreeMap<i64, Vec<(String, bool, String)>>;

/// Expected events with previous values, from the acknowledged history (keys start absent).
pub fn expected(acked: &Acked) -> Vec<Ev> {
    let mut state: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for (&rev, ops) in acked {
        for (key, put, value) in ops {
            let prev = state.get(key).cloned();
            if *put {
                state.insert(key.clone(), value.clone());
            } else {
                state.remove(key);
            }
            out.push(Ev {
                rev,
                key: key.clone(),
                put: *put,
                value: if *put { value.clone() } else { String::new() },
                prev,
            });
        }
    }
    out
}

/// Checks the guarantees for a watcher that started at `start`, over events up to `end`;
/// bookmarkable only when `bookmarks`.
pub fn check(
    expected: &[Ev],
    start: i64,
    end: i64,
    resps: &[Resp],
    bookmarks: bool,
) -> Result<(), String> {
    let want: Vec<&Ev> = expected
        .iter()
        .filter(|e| e.rev >= start && e.rev <= end)
        .collect();
    let mut per_rev: HashMap<i64, usize> = HashMap::new();
    for e in &want {
        *per_rev.entry(e.rev).or_default() += 1;
    }
    let got: Vec<&Ev> = resps
        .iter()
        .flat_map(|r| r.events.iter())
        .filter(|e| e.rev <= end)
        .collect();
    // Ordered.
    for w in got.windows(2) {
        if w[1].rev < w[0].rev {
            return Err(format!("not ordered: {:?} after {:?}", w[1], w[0]));
        }
    }
    // Unique.
    let mut seen = HashSet::new();
    for e in &got {
        if !seen.insert((e.rev, e.key.clone())) {
            return Err(format!("not unique: {e:?} twice"));
        }
    }
    // Atomic: every revision in a response is whole in it.
    for (i, r) in resps.iter().enumerate() {
        let mut counts: HashMap<i64, usize> = HashMap::new();
        for e in r.events.iter().filter(|e| e.rev <= end) {
            *counts.entry(e.rev).or_default() += 1;
        }
        for (rev, n) in counts {
            let w = per_rev.get(&rev).copied().unwrap_or(0);
            if n != w {
                return Err(format!(
                    "not atomic: response {i} has {n} of revision {rev}'s {w} events"
                ));
            }
        }
    }
    // Reliable: exactly the acknowledged events, with values and previous values.
    if got.len() != want.len() {
        let missing = want.iter().find(|e| !got.contains(e));
        return Err(format!(
            "not reliable: {} events received, {} expected; first missing: {missing:?}",
            got.len(),
            want.len()
        ));
    }
    for (g, w) in got.iter().zip(&want) {
        if g != w {
            return Err(format!("not reliable: received {g:?}, expected {w:?}"));
        }
    }
    if !bookmarks {
        return Ok(());
    }
    // Bookmarkable: a progress notification at R comes after every event up to R.
    let mut delivered = 0usize;
    for r in resps {
        if r.events.is_empty() {
            let due = want.iter().filter(|e| e.rev <= r.header_rev).count();
            if delivered < due {
                return Err(format!(
                    "not bookmarkable: progress at {} after {delivered} of its {due} events",
                    r.header_rev
                ));
            }
        }
        delivered += r.events.iter().filter(|e| e.rev <= end).count();
    }
    Ok(())
}
