//! Packaging throughput beside the raw AES rates of the same crates, on one
//! core, in one run. `cargo bench -p loaves-cmaf --bench packager`
//!
//! Packaging = parse boxes, compute subsamples, encrypt, rebuild `moof`
//! (`senc`/`saiz`/`saio`), hash nothing (the manifest hash is the seeds'
//! cost, not the packager's): the in-memory core of `edge-seed package` over
//! the committed sample, without file I/O.

#![allow(clippy::expect_used)] // a benchmark over committed sample files: failing loudly is right

use std::path::Path;
use std::time::{Duration, Instant};

use aes::Aes128;
use aes::cipher::{BlockModeEncrypt, KeyIvInit, StreamCipher};
use loaves_cmaf::init::inspect_init;
use loaves_cmaf::segment::{SegmentProtection, protect_segment};
use loaves_proto::keys::ContentKey;
use loaves_proto::manifest::Scheme;

const MIN_TIME: Duration = Duration::from_secs(2);

fn rate(bytes: u64, f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < MIN_TIME {
        f();
        done += bytes;
    }
    done as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn main() {
    // The sample presentation the packager's tests use.
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../edge-seed/testdata/sample");
    let mut renditions = Vec::new();
    for name in ["video_360p", "video_720p", "audio"] {
        let dir = sample.join(name);
        let init = std::fs::read(dir.join("init.mp4")).expect("sample init");
        let track = inspect_init(&init).expect("sample track");
        let mut segs: Vec<_> = std::fs::read_dir(&dir)
            .expect("sample dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "m4s"))
            .collect();
        segs.sort();
        let segs: Vec<Vec<u8>> = segs
            .iter()
            .map(|p| std::fs::read(p).expect("segment"))
            .collect();
        renditions.push((name, track, segs));
    }
    let total: u64 = renditions
        .iter()
        .flat_map(|r| r.2.iter())
        .map(|s| s.len() as u64)
        .sum();
    let key = ContentKey::new([7; 16]);
    println!("| measurement (1 core) | MB/s |");
    println!("|---|---:|");
    for scheme in [Scheme::Cenc, Scheme::Cbcs] {
        let mbps = rate(total, &mut || {
            for (name, track, segs) in &renditions {
                for (i, seg) in segs.iter().enumerate() {
                    let p = SegmentProtection {
                        scheme,
                        key: &key,
                        kid: [1; 16],
                        default_kid: [1; 16],
                        rendition: name,
                        sequence: i as u64,
                    };
                    let out = protect_segment(seg, track, &p).expect("protect");
                    std::hint::black_box(out);
                }
            }
        });
        println!(
            "| packaging, `{}`, sample presentation ({:.1} MB) | {mbps:.0} |",
            scheme.as_str(),
            total as f64 / 1e6
        );
    }
    let mut buf = vec![0u8; total as usize];
    let ctr = rate(total, &mut || {
        let mut c = ctr::Ctr128BE::<Aes128>::new(&[7u8; 16].into(), &[0u8; 16].into());
        c.apply_keystream(&mut buf);
        std::hint::black_box(&buf);
    });
    println!("| raw AES-128-CTR (`ctr` + `aes` crates), same byte count | {ctr:.0} |");
    let cbc = rate(total, &mut || {
        let mut c = cbc::Encryptor::<Aes128>::new(&[7u8; 16].into(), &[0u8; 16].into());
        for block in buf.chunks_exact_mut(16) {
            let mut b = [0u8; 16];
            b.copy_from_slice(block);
            let mut a = b.into();
            c.encrypt_block(&mut a);
            block.copy_from_slice(&a);
        }
        std::hint::black_box(&buf);
    });
    println!("| raw AES-128-CBC (`cbc` + `aes` crates), same byte count | {cbc:.0} |");
}
