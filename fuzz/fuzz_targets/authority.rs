//! Drives the `:authority` repair layer (`berth_server::face::etcd::authority::AuthorityFix`), which parses
//! everything an unauthenticated client sends, over arbitrary input cut into arbitrary reads:
//! it must never panic, and never hold more than `MAX_BUFFERED` (`fuzz_feed` asserts that).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = berth_server::face::etcd::authority::fuzz_feed(data);
});
