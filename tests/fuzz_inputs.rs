//! Whatever bytes arrive, parsing never panics: arbitrary bytes as every gRPC method's request
//! (decoded and, when they decode, executed), and arbitrary bytes as a log segment (scanned,
//! and reopened through the log's recovery). Property tests, so they run in every CI build.

use bytes::Bytes;
use ferrocd::kv::KvState;
use ferrocd::log::record;
use proptest::prelude::*;

use ferrocd::server::UNARY_METHODS as METHODS;

fn state() -> KvState {
    KvState::in_memory(1, 2)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_request_bytes_never_panic(method in 0..METHODS.len(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut s = state();
        // A little state first, so that reads and txns have something to look at.
        for k in ["a", "b", "c"] {
            let put = ferrocd::proto::etcdserverpb::PutRequest {
                key: Bytes::from(k),
                value: Bytes::from("v"),
                ..Default::default()
            };
            s.execute(ferrocd::kv::Request::Put(put)).unwrap();
        }
        if let Ok(req) = ferrocd::server::decode_request(METHODS[method], Bytes::from(bytes), 1 << 20) {
            if s.precheck(&req).is_ok() {
                let _ = s.execute(req);
            }
        }
    }

    /// Arbitrary bytes, and JSON of arbitrary shape with the gateway's field names, as the
    /// body of every gateway path: an answer or an error, never a panic; a unary request
    /// that decodes is then checked and executed.
    #[test]
    fn arbitrary_gateway_bodies_never_panic(
        path in 0..ferrocd::server::gateway_paths().count(),
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            json_value().prop_map(|v| v.to_string().into_bytes()),
        ],
    ) {
        let path = ferrocd::server::gateway_paths().nth(path).unwrap();
        let mut s = state();
        if let Ok(Some(req)) = ferrocd::server::decode_gateway_request(path, &body, 1 << 20) {
            if s.precheck(&req).is_ok() {
                let _ = s.execute(req);
            }
        }
    }

    /// Arbitrary HTTP/2 frames (plausible heads, arbitrary payloads) and arbitrary bytes on a
    /// client connection: answered or refused, never a panic (`h2srv::fuzz_frames`).
    #[test]
    fn arbitrary_http2_frames_never_panic(
        frames in prop::collection::vec((0u8..10, any::<u8>(), 0u32..16, prop::collection::vec(any::<u8>(), 0..64)), 0..24),
        raw in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut input = Vec::new();
        for (kind, flags, id, payload) in &frames {
            input.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            input.extend_from_slice(&[*kind, *flags]);
            input.extend_from_slice(&id.to_be_bytes());
            input.extend_from_slice(payload);
        }
        ferrocd::server::fuzz_http2_frames(&input);
        input.extend_from_slice(&raw);
        ferrocd::server::fuzz_http2_frames(&input);
        ferrocd::server::fuzz_http2_frames(&raw);
    }

    #[test]
    fn arbitrary_log_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), first in 0u64..4) {
        let _ = record::scan(&bytes, first);
        let _ = record::decode(&bytes);
    }

    #[test]
    fn log_recovery_of_mutated_segments_never_panics(flips in prop::collection::vec((0usize..4096, any::<u8>()), 1..8)) {
        // A real segment with three batches, then bytes overwritten at random.
        let mut seg = Vec::new();
        let mut seq = 1;
        for b in 0..3u8 {
            let first = seq;
            for i in 0..3u8 {
                record::encode(&mut seg, seq, record::Kind::Data, &vec![b ^ i; 40 + i as usize * 17]);
                seq += 1;
            }
            record::encode_commit(&mut seg, seq, first);
            seq += 1;
        }
        seg.resize(4096, 0);
        for (at, v) in flips {
            seg[at] = v;
        }
        if let Ok(scan) = record::scan(&seg, 1) {
            // Whatever is kept decodes.
            for (off, _) in scan.records {
                prop_assert!(record::decode(&seg[off..]).is_ok());
            }
        }
    }
}

/// JSON values of any shape whose object keys are the gateway's field names (so that the
/// generated JSON reaches the typed parsers: numbers where strings go, nested objects, wrong
/// enum names, base64 and not).
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    const NAMES: &[&str] = &[
        "key",
        "range_end",
        "value",
        "limit",
        "revision",
        "sort_order",
        "sort_target",
        "serializable",
        "keys_only",
        "count_only",
        "lease",
        "prev_kv",
        "ignore_value",
        "ID",
        "TTL",
        "keys",
        "compare",
        "success",
        "failure",
        "target",
        "result",
        "mod_revision",
        "create_revision",
        "version",
        "request_put",
        "request_range",
        "request_delete_range",
        "request_txn",
        "create_request",
        "cancel_request",
        "progress_request",
        "watch_id",
        "start_revision",
        "filters",
        "fragment",
        "physical",
        "action",
        "alarm",
        "memberID",
        "name",
        "countOnly",
        "rangeEnd",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "Zm9v",
            "!!",
            "",
            "-1",
            "9223372036854775808",
            "DESCEND",
            "NOPUT",
            "VALUE"
        ])
        .prop_map(Value::from),
        "[a-zA-Z0-9+/=]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(NAMES), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}
