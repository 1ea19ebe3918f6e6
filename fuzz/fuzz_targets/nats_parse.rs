//! Drives the NATS face's parser (`berth_server::face::nats::parse`), which reads everything
//! a NATS client sends, over arbitrary input cut into arbitrary reads: it must never panic,
//! never hold more than a control line and one message while waiting, and parse the same
//! however the input was cut (`fuzz_feed` asserts both).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = berth_server::face::nats::parse::fuzz_feed(data);
});
