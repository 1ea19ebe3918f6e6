//! Judges arbitrary bytes as a Raft log segment (`berth_consensus::wal::check_segment`), as
//! `Wal::open` does with what it finds on disk after a crash or damage: it must never panic,
//! every record it accepts must lie inside the intact prefix, and a cut is only ever offered
//! in the newest segment.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_consensus::wal::fuzz_check(data);
});
