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
