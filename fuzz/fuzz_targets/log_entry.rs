//! Decodes arbitrary bytes as a Raft log entry's command and as an apply result
//! (`berth_store::codec`): never a panic, and a command that decodes encodes back to
//! bytes that decode to the same command (every member must read an entry alike).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_store::codec::fuzz_roundtrip(data);
});
