//! Parses arbitrary bytes as a store snapshot (`berth_store::snapshot::parse_snapshot`), the
//! format a leader streams to a follower and `snapshot restore` reads. Inputs are framed
//! (padded and given the SHA-256 trailer) so the fuzzer explores the records, not the
//! checksum; the unframed input is parsed too. Never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_store::snapshot::fuzz_parse(data);
});
