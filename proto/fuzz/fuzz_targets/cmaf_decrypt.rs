//! The CENC decryptor of `loaves-cmaf` (the SDK's `decrypt` option, fed
//! with what peers and CDNs send) never panics on an arbitrary init segment
//! and media segment, and what it accepts is clear CMAF that reads as the
//! input did.
//!
//! Input: a 4-byte big-endian length, that many bytes of init segment, the
//! rest a media segment. The key is the same for every key id, so the
//! samples of any protected track are decrypted. `cargo run -p loaves-cmaf
//! --example fuzz_seeds` writes seeds in this form from the committed sample.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loaves_cmaf::boxes::parse_boxes;
use loaves_cmaf::decrypt::{decrypt_init, decrypt_segment};
use loaves_cmaf::segment::inspect_segment;
use loaves_proto::keys::ContentKey;

/// The seeds' content key (`fuzz_seeds` protects with it).
const KEY: [u8; 16] = [7; 16];

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let len = (u32::from_be_bytes(*len) as usize).min(rest.len());
    let (init, segment) = rest.split_at(len);
    let Ok(clear) = decrypt_init(init) else {
        return;
    };
    // What decrypt_init returns is a clear init segment of the same track.
    assert!(parse_boxes(&clear.bytes, 0).is_ok());
    let again = decrypt_init(&clear.bytes).expect("a clear init segment reads again");
    assert!(
        again.protection.is_none(),
        "protection survived decrypt_init"
    );
    assert_eq!(again.track, clear.track);
    assert!(!clear.track.already_protected);

    let before = inspect_segment(segment, &clear.track);
    let Ok(out) = decrypt_segment(segment, &clear, |_| Some(ContentKey::new(KEY))) else {
        return;
    };
    if clear.protection.is_none() {
        assert!(out == segment, "a clear track's segment was changed");
        return;
    }
    // The clear segment reads as the protected one did (sizes, durations,
    // decode time), and has nothing left to decrypt.
    let after = inspect_segment(&out, &clear.track);
    assert_eq!(after, before, "decryption changed what the segment says");
    let top = parse_boxes(&out, 0).expect("decrypted boxes parse");
    for moof in top.iter().filter(|b| b.kind.0 == *b"moof") {
        for traf in moof.children(0).expect("moof parses").iter() {
            if traf.kind.0 != *b"traf" {
                continue;
            }
            let children = traf.children(0).expect("traf parses");
            assert!(
                !children
                    .iter()
                    .any(|c| matches!(&c.kind.0, b"senc" | b"saiz" | b"saio")),
                "encryption boxes left in a traf"
            );
        }
    }
    assert!(out.len() <= segment.len(), "decryption grew the segment");
});
