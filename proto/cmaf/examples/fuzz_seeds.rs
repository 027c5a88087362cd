//! Writes the seed corpus of the `cmaf_decrypt` fuzz target
//! (`proto/fuzz`): the committed sample's audio and 360p video, protected
//! under `cenc` and `cbcs` (and after a key rotation) with the key the
//! target decrypts with, each file a 4-byte big-endian length, the
//! protected init segment and one protected media segment.
//!
//! `cargo run -p loaves-cmaf --example fuzz_seeds -- OUT_DIR`

use std::path::{Path, PathBuf};

use anyhow::Context;
use loaves_cmaf::init::{InitProtection, inspect_init, protect_init};
use loaves_cmaf::segment::{SegmentProtection, protect_segment};
use loaves_proto::keys::ContentKey;
use loaves_proto::manifest::Scheme;

/// The target's key, for every key id.
const KEY: [u8; 16] = [7; 16];
const KID0: [u8; 16] = [1; 16];
const KID1: [u8; 16] = [2; 16];

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .context("usage: fuzz_seeds OUT_DIR")?,
    );
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../edge-seed/testdata/sample");
    let key = ContentKey::new(KEY);
    let mut written = 0;
    // Audio: the first and the last (short) segment; video: the first.
    for (rendition, segments) in [("audio", &[0u64, 10][..]), ("video_360p", &[0][..])] {
        let dir = sample.join(rendition);
        let init = read(&dir.join("init.mp4"))?;
        let track = inspect_init(&init)?;
        for scheme in [Scheme::Cenc, Scheme::Cbcs] {
            let protected_init = protect_init(
                &init,
                &track,
                &InitProtection {
                    scheme,
                    default_kid: KID0,
                    all_kids: vec![KID0, KID1],
                },
            )?;
            for &sequence in segments {
                for kid in [KID0, KID1] {
                    let segment = read(&dir.join(format!("seg_{sequence:05}.m4s")))?;
                    let (protected, _) = protect_segment(
                        &segment,
                        &track,
                        &SegmentProtection {
                            scheme,
                            key: &key,
                            kid,
                            default_kid: KID0,
                            rendition,
                            sequence,
                        },
                    )?;
                    let mut seed = u32::try_from(protected_init.len())?.to_be_bytes().to_vec();
                    seed.extend_from_slice(&protected_init);
                    seed.extend_from_slice(&protected);
                    let rotated = if kid == KID0 { "" } else { "_rotated" };
                    let name = format!("{rendition}_{}_{sequence}{rotated}", scheme.as_str());
                    std::fs::write(out.join(&name), seed)
                        .with_context(|| format!("writing {name}"))?;
                    written += 1;
                }
            }
        }
    }
    println!("{written} seeds in {}", out.display());
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}
