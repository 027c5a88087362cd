//! The sans-I/O frame decoder never panics, never reads past its input, and
//! never returns a frame above the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loaves_proto::framing::{LENGTH_PREFIX_LEN, decode_frame};

fuzz_target!(|data: &[u8]| {
    // The first byte picks a limit, so small limits are exercised too.
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(selector) * 64;
    let mut offset = 0;
    while let Ok(Some((payload, used))) = decode_frame(&rest[offset..], max) {
        assert!(payload.len() <= max);
        assert_eq!(used, LENGTH_PREFIX_LEN + payload.len());
        offset += used;
    }
});
