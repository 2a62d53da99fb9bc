//! Arbitrary bytes through the pgoutput decoder and, when they decode, the
//! transaction assembler: errors are fine, panics are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raa::decode::{pgoutput, TxnAssembler};

fuzz_target!(|data: &[u8]| {
    let mut asm = TxnAssembler::default();
    // Split the input into messages at 0xFF bytes to exercise sequences.
    for chunk in data.split(|&b| b == 0xFF) {
        if let Ok(msg) = pgoutput::decode(chunk) {
            let _ = asm.push(&msg);
        }
    }
});
