//! Arbitrary bytes as the frames of an HTTP/2 connection to the client port (after a valid
//! SETTINGS): frame parsing, HPACK decoding, flow control and stream states must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrocd::server::fuzz_http2_frames(data);
});
