//! Model-based property test of the KV semantics: random sequences of Put, DeleteRange, Txn,
//! Compact and Range run against `KvState` and against a deliberately naive model (a full copy
//! of the key space for every revision), and every field of every response is compared.
//! Checkpoints are begun and walked in random steps among the requests; when one completes,
//! the state is replaced by one restored from it (written and read back) plus the requests
//! since it began, and must go on agreeing with the model.
//!
//! The model restates etcd's rules in the plainest way it can (no index, no generations), so
//! that a disagreement points at a bug in one of the two.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferrocd::error::EtcdError;
use ferrocd::kv::{KvState, Request, Response};
use ferrocd::proto::etcdserverpb as pb;
use ferrocd::proto::mvccpb::KeyValue;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::range_request::{SortOrder, SortTarget};
use pb::request_op::Request as Op;
use pb::response_op::Response as R;
use proptest::prelude::*;

const CLUSTER_ID: u64 = 7;
const MEMBER_ID: u64 = 9;

fn state() -> KvState {
    KvState::in_memory(CLUSTER_ID, MEMBER_ID)
}

// ---------------------------------------------------------------- the model

#[derive(Clone, Debug, PartialEq)]
struct Mkv {
    create: i64,
    modr: i64,
    version: i64,
    value: Vec<u8>,
}

type Space = BTreeMap<Vec<u8>, Mkv>;

struct Model {
    /// The key space after every revision; index 0 is revision 1 (empty).
    states: Vec<Space>,
    compacted: i64,
}

fn kv_of(k: &[u8], m: &Mkv, keys_only: bool) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(k),
        create_revision: m.create,
        mod_revision: m.modr,
        version: m.version,
        value: if keys_only {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&m.value)
        },
        lease: 0,
    }
}

fn in_span(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        e => k >= key && k < e,
    }
}

fn hdr(rev: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        cluster_id: CLUSTER_ID,
        member_id: MEMBER_ID,
        revision: rev,
        raft_term: 1,
    })
}

fn sub_hdr(rev: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

impl Model {
    fn new() -> Model {
        Model {
            states: vec![Space::new()],
            compacted: -1,
        }
    }

    fn rev(&self) -> i64 {
        self.states.len() as i64
    }

    fn at(&self, rev: i64) -> &Space {
        &self.states[rev as usize - 1]
    }

    /// Range over `space` whose newest revision is `cur`.
    fn range(
        &self,
        space: &Space,
        cur: i64,
        r: &pb::RangeRequest,
    ) -> Result<pb::RangeResponse, EtcdError> {
        if r.revision > cur {
            return Err(EtcdError::FutureRev);
        }
        let rev = if r.revision <= 0 { cur } else { r.revision };
        if rev < self.compacted {
            return Err(EtcdError::Compacted);
        }
        let space = if rev == cur { space } else { self.at(rev) };
        let mut all: Vec<KeyValue> = space
            .iter()
            .filter(|(k, _)| in_span(k, &r.key, &r.range_end))
            .map(|(k, m)| kv_of(k, m, false))
            .collect();
        let count = all.len() as i64;
        if r.count_only {
            return Ok(pb::RangeResponse {
                header: sub_hdr(cur),
                kvs: vec![],
                more: false,
                count,
            });
        }
        // etcd decides how many keys to fetch from the request's own sort_order, before
        // defaulting the order: with NONE, no filter and a limit, only limit+1 keys (in key
        // order) are fetched and then sorted by the target.
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        if r.sort_order == SortOrder::None as i32 && !filtered && r.limit > 0 {
            all.truncate(r.limit as usize + 1);
        }
        all.retain(|kv| r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision);
        all.retain(|kv| kv.mod_revision >= r.min_mod_revision);
        all.retain(|kv| r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision);
        all.retain(|kv| kv.create_revision >= r.min_create_revision);
        let target = SortTarget::try_from(r.sort_target).unwrap();
        let mut order = SortOrder::try_from(r.sort_order).unwrap();
        if order == SortOrder::None && target != SortTarget::Key {
            order = SortOrder::Ascend;
        }
        let field = |kv: &KeyValue| -> Vec<u8> {
            match target {
                SortTarget::Key => kv.key.to_vec(),
                SortTarget::Value => kv.value.to_vec(),
                SortTarget::Version => kv.version.to_be_bytes().to_vec(),
                SortTarget::Create => kv.create_revision.to_be_bytes().to_vec(),
                SortTarget::Mod => kv.mod_revision.to_be_bytes().to_vec(),
            }
        };
        match order {
            SortOrder::Ascend => all.sort_by_key(field),
            SortOrder::Descend => all.sort_by_key(|kv| std::cmp::Reverse(field(kv))),
            SortOrder::None => {}
        }
        let mut more = false;
        if r.limit > 0 && all.len() > r.limit as usize {
            all.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            all.iter_mut().for_each(|kv| kv.value = Bytes::new());
        }
        Ok(pb::RangeResponse {
            header: sub_hdr(cur),
            kvs: all,
            more,
            count,
        })
    }

    fn put(space: &mut Space, rev: i64, r: &pb::PutRequest) -> Result<pb::PutResponse, EtcdError> {
        let prev = space.get(&r.key[..]).cloned();
        if r.ignore_value && prev.is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        let value = if r.ignore_value {
            prev.as_ref().unwrap().value.clone()
        } else {
            r.value.to_vec()
        };
        let m = Mkv {
            create: prev.as_ref().map_or(rev, |p| p.create),
            modr: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
        };
        space.insert(r.key.to_vec(), m);
        Ok(pb::PutResponse {
            header: sub_hdr(rev),
            prev_kv: if r.prev_kv {
                prev.map(|p| kv_of(&r.key, &p, false))
            } else {
                None
            },
        })
    }

    fn delete(
        space: &mut Space,
        rev: i64,
        changed: bool,
        r: &pb::DeleteRangeRequest,
    ) -> pb::DeleteRangeResponse {
        let keys: Vec<Vec<u8>> = space
            .keys()
            .filter(|k| in_span(k, &r.key, &r.range_end))
            .cloned()
            .collect();
        let prev_kvs = if r.prev_kv {
            keys.iter().map(|k| kv_of(k, &space[k], false)).collect()
        } else {
            vec![]
        };
        keys.iter().for_each(|k| {
            space.remove(k);
        });
        let hrev = if keys.is_empty() && !changed {
            rev - 1
        } else {
            rev
        };
        pb::DeleteRangeResponse {
            header: sub_hdr(hrev),
            deleted: keys.len() as i64,
            prev_kvs,
        }
    }

    fn compare(space: &Space, c: &pb::Compare) -> bool {
        let matching: Vec<KeyValue> = space
            .iter()
            .filter(|(k, _)| in_span(k, &c.key, &c.range_end))
            .map(|(k, m)| kv_of(k, m, false))
            .collect();
        let target = CompareTarget::try_from(c.target).unwrap();
        if matching.is_empty() && target == CompareTarget::Value {
            return false;
        }
        let check = |kv: &KeyValue| {
            let ord = match (&c.target_union, target) {
                (Some(TargetUnion::Value(v)), CompareTarget::Value) => kv.value[..].cmp(&v[..]),
                (Some(TargetUnion::Version(v)), CompareTarget::Version) => kv.version.cmp(v),
                (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create) => {
                    kv.create_revision.cmp(v)
                }
                (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod) => kv.mod_revision.cmp(v),
                _ => panic!("generator pairs target and union"),
            };
            match CompareResult::try_from(c.result).unwrap() {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        };
        if matching.is_empty() {
            return check(&KeyValue::default());
        }
        matching.iter().all(check)
    }

    /// The duplicate-key rule, restated for the txns the generator makes (one nesting level).
    fn duplicate(r: &pb::TxnRequest) -> bool {
        fn level(ops: &[pb::RequestOp]) -> bool {
            let mut puts: Vec<&[u8]> = vec![];
            let mut dels: Vec<(&[u8], &[u8])> = vec![];
            for op in ops {
                if let Some(Op::RequestDeleteRange(d)) = &op.request {
                    dels.push((&d.key, &d.range_end));
                }
            }
            let hit = |dels: &[(&[u8], &[u8])], k: &[u8]| {
                dels.iter().any(|(b, e)| match e {
                    [] => k == *b,
                    e => k >= *b && k < *e,
                })
            };
            for op in ops {
                if let Some(Op::RequestTxn(t)) = &op.request {
                    if level(&t.success) || level(&t.failure) {
                        return true;
                    }
                    let then: Vec<&[u8]> = puts_of(&t.success);
                    for k in &then {
                        if puts.contains(k) || hit(&dels, k) {
                            return true;
                        }
                    }
                    for k in puts_of(&t.failure) {
                        if (puts.contains(&k) && !then.contains(&k)) || hit(&dels, k) {
                            return true;
                        }
                    }
                    puts.extend(then);
                    puts.extend(puts_of(&t.failure));
                    for o in t.success.iter().chain(&t.failure) {
                        if let Some(Op::RequestDeleteRange(d)) = &o.request {
                            dels.push((&d.key, &d.range_end));
                        }
                    }
                }
            }
            for k in puts_of(ops) {
                if puts.contains(&k) || hit(&dels, k) {
                    return true;
                }
                puts.push(k);
            }
            false
        }
        fn puts_of(ops: &[pb::RequestOp]) -> Vec<&[u8]> {
            ops.iter()
                .filter_map(|o| match &o.request {
                    Some(Op::RequestPut(p)) => Some(&p.key[..]),
                    _ => None,
                })
                .collect()
        }
        level(&r.success) || level(&r.failure)
    }

    fn txn(&mut self, r: &pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        if Self::duplicate(r) {
            return Err(EtcdError::DuplicateKey);
        }
        let before = self.at(self.rev()).clone();
        let rev = self.rev() + 1;
        // Check the taken branches before any write.
        fn taken<'a>(space: &Space, r: &'a pb::TxnRequest) -> (bool, &'a [pb::RequestOp]) {
            let ok = r.compare.iter().all(|c| Model::compare(space, c));
            (ok, if ok { &r.success } else { &r.failure })
        }
        // etcd checks every put of the taken branches first, then every range.
        fn check(
            m: &Model,
            space: &Space,
            r: &pb::TxnRequest,
            puts: bool,
        ) -> Result<(), EtcdError> {
            for op in taken(space, r).1 {
                match &op.request {
                    Some(Op::RequestPut(p))
                        if puts && p.ignore_value && !space.contains_key(&p.key[..]) =>
                    {
                        return Err(EtcdError::KeyNotFound)
                    }
                    Some(Op::RequestRange(q)) if !puts && q.revision > m.rev() => {
                        return Err(EtcdError::FutureRev)
                    }
                    Some(Op::RequestRange(q))
                        if !puts && q.revision != 0 && q.revision < m.compacted =>
                    {
                        return Err(EtcdError::Compacted)
                    }
                    Some(Op::RequestTxn(n)) => check(m, space, n, puts)?,
                    _ => {}
                }
            }
            Ok(())
        }
        check(self, &before, r, true)?;
        // A put that needs its key (ignore_value) and finds it deleted earlier in the same
        // txn fails the whole txn before any write (etcd 3.4 panics on this one).
        fn dry_run(before: &Space, work: &mut Space, r: &pb::TxnRequest) -> Result<(), EtcdError> {
            for op in taken(before, r).1 {
                match &op.request {
                    Some(Op::RequestPut(p)) => {
                        if p.ignore_value && !work.contains_key(&p.key[..]) {
                            return Err(EtcdError::KeyNotFound);
                        }
                        work.insert(
                            p.key.to_vec(),
                            Mkv {
                                create: 0,
                                modr: 0,
                                version: 0,
                                value: vec![],
                            },
                        );
                    }
                    Some(Op::RequestDeleteRange(d)) => {
                        work.retain(|k, _| !in_span(k, &d.key, &d.range_end));
                    }
                    Some(Op::RequestTxn(n)) => dry_run(before, work, n)?,
                    _ => {}
                }
            }
            Ok(())
        }
        dry_run(&before, &mut before.clone(), r)?;
        check(self, &before, r, false)?;
        let mut work = before.clone();
        let mut changed = false;
        let resp = self.apply(&before, &mut work, rev, &mut changed, r)?;
        let hrev = if changed { rev } else { rev - 1 };
        if changed {
            self.states.push(work);
        }
        Ok(pb::TxnResponse {
            header: hdr(hrev),
            ..resp
        })
    }

    fn apply(
        &self,
        before: &Space,
        work: &mut Space,
        rev: i64,
        changed: &mut bool,
        r: &pb::TxnRequest,
    ) -> Result<pb::TxnResponse, EtcdError> {
        let ok = r.compare.iter().all(|c| Model::compare(before, c));
        let mut responses = vec![];
        for op in if ok { &r.success } else { &r.failure } {
            let resp = match &op.request {
                Some(Op::RequestRange(q)) => {
                    let cur = if *changed { rev } else { rev - 1 };
                    // A read at the txn's own revision sees the work in progress.
                    let space = work.clone();
                    R::ResponseRange(self.range_in(&space, cur, q)?)
                }
                Some(Op::RequestPut(p)) => {
                    *changed = true;
                    R::ResponsePut(Model::put(work, rev, p)?)
                }
                Some(Op::RequestDeleteRange(d)) => {
                    let resp = Model::delete(work, rev, *changed, d);
                    *changed |= resp.deleted > 0;
                    R::ResponseDeleteRange(resp)
                }
                Some(Op::RequestTxn(n)) => {
                    let mut resp = self.apply(before, work, rev, changed, n)?;
                    resp.header = Some(pb::ResponseHeader::default());
                    R::ResponseTxn(resp)
                }
                None => unreachable!(),
            };
            responses.push(pb::ResponseOp {
                response: Some(resp),
            });
        }
        Ok(pb::TxnResponse {
            header: None,
            succeeded: ok,
            responses,
        })
    }

    /// A range inside a txn: the current state is `space` at `cur`; history from the model.
    fn range_in(
        &self,
        space: &Space,
        cur: i64,
        r: &pb::RangeRequest,
    ) -> Result<pb::RangeResponse, EtcdError> {
        self.range(space, cur, r)
    }

    fn execute(&mut self, req: &Request) -> Result<Response, EtcdError> {
        let cur = self.rev();
        Ok(match req {
            Request::Range(r) => {
                let space = self.at(cur).clone();
                let mut resp = self.range(&space, cur, r)?;
                resp.header = hdr(cur);
                Response::Range(resp)
            }
            Request::Put(r) => {
                let mut space = self.at(cur).clone();
                let mut resp = Model::put(&mut space, cur + 1, r)?;
                self.states.push(space);
                resp.header = hdr(cur + 1);
                Response::Put(resp)
            }
            Request::DeleteRange(r) => {
                let mut space = self.at(cur).clone();
                let mut resp = Model::delete(&mut space, cur + 1, false, r);
                if resp.deleted > 0 {
                    self.states.push(space);
                }
                resp.header = hdr(self.rev());
                Response::DeleteRange(resp)
            }
            Request::Txn(r) => Response::Txn(self.txn(r)?),
            Request::Compact(r) => {
                if r.revision <= self.compacted {
                    return Err(EtcdError::Compacted);
                }
                if r.revision > cur {
                    return Err(EtcdError::FutureRev);
                }
                self.compacted = r.revision;
                Response::Compact(pb::CompactionResponse { header: hdr(cur) })
            }
            _ => unreachable!(),
        })
    }
}

// ---------------------------------------------------------------- generators

const KEYS: &[&str] = &["a", "ab", "abc", "b", "ba", "c", "d"];

fn key() -> impl Strategy<Value = Bytes> {
    prop::sample::select(KEYS).prop_map(|k| Bytes::from_static(k.as_bytes()))
}

fn range_end() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => Just(Bytes::new()),
        1 => Just(Bytes::from_static(b"\0")),
        2 => key(),
    ]
}

fn value() -> impl Strategy<Value = Bytes> {
    prop::sample::select(&["", "x", "y", "zz"][..]).prop_map(|v| Bytes::from_static(v.as_bytes()))
}

fn range_req(max_rev: i64) -> impl Strategy<Value = pb::RangeRequest> {
    (
        key(),
        range_end(),
        prop_oneof![3 => Just(0i64), 1 => 0..max_rev + 3],
        0..4i64,
        0..3i32,
        0..5i32,
        any::<bool>(),
        prop::bool::weighted(0.1),
        prop_oneof![4 => Just((0i64, 0i64)), 1 => (0..max_rev + 2, 0..max_rev + 2)],
        prop_oneof![4 => Just((0i64, 0i64)), 1 => (0..max_rev + 2, 0..max_rev + 2)],
    )
        .prop_map(
            |(key, range_end, revision, limit, so, st, keys_only, count_only, m, c)| {
                pb::RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order: so,
                    sort_target: st,
                    serializable: false,
                    keys_only,
                    count_only,
                    min_mod_revision: m.0,
                    max_mod_revision: m.1,
                    min_create_revision: c.0,
                    max_create_revision: c.1,
                }
            },
        )
}

fn put_req() -> impl Strategy<Value = pb::PutRequest> {
    (key(), value(), any::<bool>(), prop::bool::weighted(0.15)).prop_map(
        |(key, value, prev_kv, ignore_value)| pb::PutRequest {
            key,
            value: if ignore_value { Bytes::new() } else { value },
            lease: 0,
            prev_kv,
            ignore_value,
            ignore_lease: false,
        },
    )
}

fn del_req() -> impl Strategy<Value = pb::DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| {
        pb::DeleteRangeRequest {
            key,
            range_end,
            prev_kv,
        }
    })
}

fn compare(max_rev: i64) -> impl Strategy<Value = pb::Compare> {
    (
        key(),
        prop_oneof![3 => Just(Bytes::new()), 1 => range_end()],
        0..4i32,
        0..4i32,
        0..max_rev + 2,
        value(),
    )
        .prop_map(|(key, range_end, result, target, n, v)| {
            let target_union = match target {
                0 => TargetUnion::Version(n % 4),
                1 => TargetUnion::CreateRevision(n),
                2 => TargetUnion::ModRevision(n),
                _ => TargetUnion::Value(v),
            };
            pb::Compare {
                result,
                target,
                key,
                range_end,
                target_union: Some(target_union),
            }
        })
}

fn flat_op(max_rev: i64) -> impl Strategy<Value = pb::RequestOp> {
    prop_oneof![
        range_req(max_rev).prop_map(Op::RequestRange),
        put_req().prop_map(Op::RequestPut),
        del_req().prop_map(Op::RequestDeleteRange),
    ]
    .prop_map(|r| pb::RequestOp { request: Some(r) })
}

fn flat_txn(max_rev: i64) -> impl Strategy<Value = pb::TxnRequest> {
    (
        prop::collection::vec(compare(max_rev), 0..3),
        prop::collection::vec(flat_op(max_rev), 0..4),
        prop::collection::vec(flat_op(max_rev), 0..3),
    )
        .prop_map(|(compare, success, failure)| pb::TxnRequest {
            compare,
            success,
            failure,
        })
}

fn txn_req(max_rev: i64) -> impl Strategy<Value = pb::TxnRequest> {
    (
        flat_txn(max_rev),
        prop::option::weighted(0.4, flat_txn(max_rev)),
        any::<bool>(),
    )
        .prop_map(|(mut t, nested, in_success)| {
            if let Some(n) = nested {
                let op = pb::RequestOp {
                    request: Some(Op::RequestTxn(n)),
                };
                if in_success {
                    t.success.push(op)
                } else {
                    t.failure.push(op)
                }
            }
            t
        })
}

#[derive(Clone, Debug)]
enum Step {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(i64),
    /// A step of the pending compaction's trimming (invisible to clients).
    Trim(usize),
    /// A checkpoint begins (if none is under way) at the current revision.
    CheckpointBegin,
    /// The checkpoint's walk takes up to this many keys; when it is complete, the state is
    /// replaced by one restored from the checkpoint plus the requests since it began.
    CheckpointWalk(usize),
}

fn step() -> impl Strategy<Value = Step> {
    // Revisions drawn up to 40: sequences are at most 60 steps, so some are in the future.
    let max_rev = 40;
    prop_oneof![
        4 => range_req(max_rev).prop_map(Step::Range),
        5 => put_req().prop_map(Step::Put),
        2 => del_req().prop_map(Step::Delete),
        3 => txn_req(max_rev).prop_map(Step::Txn),
        1 => (0..max_rev).prop_map(Step::Compact),
        2 => (1..4usize).prop_map(Step::Trim),
        1 => Just(Step::CheckpointBegin),
        2 => (1..4usize).prop_map(Step::CheckpointWalk),
    ]
}

fn to_request(s: &Step) -> Request {
    match s.clone() {
        Step::Range(r) => Request::Range(r),
        Step::Put(r) => Request::Put(r),
        Step::Delete(r) => Request::DeleteRange(r),
        Step::Txn(r) => Request::Txn(r),
        Step::Compact(revision) => Request::Compact(pb::CompactionRequest {
            revision,
            physical: revision % 2 == 0,
        }),
        Step::Trim(_) | Step::CheckpointBegin | Step::CheckpointWalk(_) => {
            unreachable!("not a request")
        }
    }
}

fn same(a: &Result<Response, EtcdError>, b: &Result<Response, EtcdError>) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// A checkpoint under way: its revision, metadata, the walk's cursor, the items so far, and the
/// requests executed since it began.
type Walk = (
    i64,
    Vec<u8>,
    Option<Bytes>,
    Vec<ferrocd::log::checkpoint::Item>,
    Vec<Step>,
);

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

    #[test]
    fn kv_state_matches_the_model(steps in prop::collection::vec(step(), 1..60)) {
        let mut s = state();
        let mut m = Model::new();
        let mut ckpt: Option<Walk> = None;
        let dir = tempfile::tempdir().unwrap();
        let mut seq = 0u64;
        for (i, st) in steps.iter().enumerate() {
            match st {
                Step::Trim(keys) => {
                    s.compact_step(*keys);
                    continue;
                }
                Step::CheckpointBegin => {
                    if ckpt.is_none() {
                        let (rev, meta) = s.checkpoint_begin(None);
                        ckpt = Some((rev, meta, None, Vec::new(), Vec::new()));
                    }
                    continue;
                }
                Step::CheckpointWalk(keys) => {
                    let Some((rev, meta, after, mut items, since)) = ckpt.take() else {
                        continue;
                    };
                    let Some((more, next)) = s.checkpoint_step(after.as_ref(), rev, *keys) else {
                        // A physical compaction cut in: abandoned.
                        continue;
                    };
                    items.extend(more);
                    if next.is_some() {
                        ckpt = Some((rev, meta, next, items, since));
                        continue;
                    }
                    // Complete: written, read back, restored, and the requests since replayed.
                    seq += 1;
                    let mut w = ferrocd::log::checkpoint::Writer::create(dir.path(), seq, &meta).unwrap();
                    for it in &items {
                        w.item(it).unwrap();
                    }
                    let paths = w.finish().unwrap();
                    let loaded = ferrocd::log::checkpoint::load(seq, &paths).unwrap();
                    let mut r = state();
                    r.restore_checkpoint(loaded, 0).unwrap();
                    for st in &since {
                        match st {
                            Step::Trim(keys) => {
                                r.compact_step(*keys);
                            }
                            st => {
                                let _ = r.execute(to_request(st));
                            }
                        }
                    }
                    s = r;
                    continue;
                }
                _ => {}
            }
            if let Some((_, _, _, _, since)) = ckpt.as_mut() {
                since.push(st.clone());
            }
            let got = s.execute(to_request(st));
            let want = m.execute(&to_request(st));
            prop_assert!(
                same(&got, &want),
                "step {i} {st:?}\n got: {got:?}\nwant: {want:?}"
            );
        }
    }
}
