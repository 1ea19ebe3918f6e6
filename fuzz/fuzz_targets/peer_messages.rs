//! Decodes arbitrary bytes as every message members exchange on the peer port
//! (`berth_consensus::peer::decode_peer_messages`): openraft's messages, forwarded writes,
//! read-index answers and the log commands inside them. None may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = berth_consensus::peer::decode_peer_messages(data);
});
