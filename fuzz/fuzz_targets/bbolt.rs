//! Reads arbitrary bytes as a bbolt file (`berth_bbolt::fuzz_read`): the meta pages, the root
//! bucket and every bucket and nested bucket reachable from it, inline buckets included —
//! what `berth snapshot restore` does with a snapshot saved from etcd. Never a panic, never
//! an unbounded allocation or walk.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_bbolt::fuzz_read(data);
});
