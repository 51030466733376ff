//! Arbitrary bytes as a gRPC request of any method: decoding, the checks, and executing what
//! passes them must never panic.
#![no_main]

use bytes::Bytes;
use ferrocd::kv::KvState;
use libfuzzer_sys::fuzz_target;

use ferrocd::server::UNARY_METHODS as METHODS;

fuzz_target!(|data: &[u8]| {
    let Some((&m, body)) = data.split_first() else {
        return;
    };
    let mut s = KvState::in_memory(1, 2);
    let path = METHODS[m as usize % METHODS.len()];
    if let Ok(req) = ferrocd::server::decode_request(path, Bytes::copy_from_slice(body), 1 << 20) {
        if s.precheck(&req).is_ok() {
            let _ = s.execute(req);
        }
    }
});
