//! Arbitrary bytes as a log segment: the recovery scan must never panic, and whatever it keeps
//! must decode.
#![no_main]

use ferrocd::log::record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(scan) = record::scan(data, 1) {
        assert!(scan.valid_bytes <= data.len());
        for (off, _) in scan.records {
            let r = record::decode(&data[off..]).expect("a kept record decodes");
            // Payloads of kept records go to the request decoder on replay.
            let _ = ferrocd::kv::decode_write(bytes::Bytes::copy_from_slice(r.payload));
        }
    }
});
