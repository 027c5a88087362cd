//! Synthetic CMAF for load tests: an init segment and media segments of any
//! bitrate and duration, with valid boxes and random payload.
//!
//! Video samples are AVCC-framed NAL units (an IDR slice first, then non-IDR
//! slices) whose bodies are pseudo-random bytes: the packager protects them
//! like real H.264 (subsamples, clear NAL headers), but no decoder will show
//! a picture. Audio samples are random bytes under an `mp4a` entry. Same
//! seed, same bytes.

use crate::boxes::{make_box, make_full_box};

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticTrack {
    /// `Some((width, height))` for video, `None` for audio.
    pub video: Option<(u16, u16)>,
    /// Frames per second of video (audio always has AAC frames of 1024
    /// samples at 48 kHz).
    pub fps: u32,
    /// Target bitrate, bits per second.
    pub bitrate: u64,
}

impl SyntheticTrack {
    fn timescale(&self) -> u32 {
        if self.video.is_some() { 90_000 } else { 48_000 }
    }

    fn sample_duration(&self) -> u32 {
        if self.video.is_some() {
            self.timescale() / self.fps.max(1)
        } else {
            1024
        }
    }
}

const TRACK_ID: u32 = 1;

fn u16s(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// The init segment (`ftyp` + `moov` with one track and `mvex`).
pub fn init_segment(track: &SyntheticTrack) -> Vec<u8> {
    let mut out = make_box(
        b"ftyp",
        &[
            b"cmf2".as_slice(),
            &0u32.to_be_bytes(),
            b"cmf2",
            b"iso6",
            b"dash",
        ]
        .concat(),
    );
    let matrix = u32s(&[0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000]);
    let mut mvhd = u32s(&[0, 0, 1000, 0, 0x0001_0000]);
    mvhd.extend(u16s(&[0x0100, 0]));
    mvhd.extend([0u8; 8]);
    mvhd.extend(&matrix);
    mvhd.extend([0u8; 24]);
    mvhd.extend(u32s(&[TRACK_ID + 1]));
    let (w, h) = track.video.unwrap_or((0, 0));
    let mut tkhd = u32s(&[0, 0, TRACK_ID, 0, 0, 0, 0]);
    tkhd.extend(u16s(&[
        0,
        0,
        if track.video.is_some() { 0 } else { 0x0100 },
        0,
    ]));
    tkhd.extend(&matrix);
    tkhd.extend(u32s(&[u32::from(w) << 16, u32::from(h) << 16]));
    let mdhd = [u32s(&[0, 0, track.timescale(), 0]), u16s(&[0x55c4, 0])].concat();
    let (handler, name) = if track.video.is_some() {
        (b"vide", "video")
    } else {
        (b"soun", "audio")
    };
    let hdlr = [
        &0u32.to_be_bytes()[..],
        handler,
        &[0u8; 12],
        name.as_bytes(),
        &[0],
    ]
    .concat();
    let media_header = if track.video.is_some() {
        make_full_box(b"vmhd", 0, 1, &[0u8; 8])
    } else {
        make_full_box(b"smhd", 0, 0, &[0u8; 4])
    };
    let dref = make_full_box(
        b"dref",
        0,
        0,
        &[u32s(&[1]), make_full_box(b"url ", 0, 1, &[])].concat(),
    );
    let entry = match track.video {
        Some((w, h)) => {
            let mut e = vec![0u8; 6];
            e.extend(u16s(&[1, 0, 0]));
            e.extend([0u8; 12]);
            e.extend(u16s(&[w, h]));
            e.extend(u32s(&[0x0048_0000, 0x0048_0000, 0]));
            e.extend(u16s(&[1]));
            e.extend([0u8; 32]);
            e.extend(u16s(&[0x0018, 0xffff]));
            // avcC: version 1, High profile 4.0, 4-byte NAL lengths, no
            // parameter sets (the payload is not decodable anyway).
            let avcc = [1u8, 0x64, 0x00, 0x28, 0xff, 0xe0, 0x00];
            e.extend(make_box(b"avcC", &avcc));
            make_box(b"avc1", &e)
        }
        None => {
            let mut e = vec![0u8; 6];
            e.extend(u16s(&[1]));
            e.extend([0u8; 8]);
            e.extend(u16s(&[2, 16, 0, 0]));
            e.extend(u32s(&[48_000 << 16]));
            // esds with an AAC-LC AudioSpecificConfig (48 kHz, stereo).
            let asc = [0x11u8, 0x90];
            let dsi = [&[0x05u8, asc.len() as u8][..], &asc].concat();
            let dcd = [
                &[0x04u8, (13 + dsi.len()) as u8, 0x40, 0x15, 0, 0, 0][..],
                &u32s(&[128_000, 128_000]),
                &dsi,
            ]
            .concat();
            let es = [
                &[0x03u8, (3 + dcd.len() + 3) as u8, 0, 1, 0][..],
                &dcd,
                &[0x06, 0x01, 0x02],
            ]
            .concat();
            e.extend(make_full_box(b"esds", 0, 0, &es));
            make_box(b"mp4a", &e)
        }
    };
    let stsd = make_full_box(b"stsd", 0, 0, &[u32s(&[1]), entry].concat());
    let empty_tables = [
        make_full_box(b"stts", 0, 0, &u32s(&[0])),
        make_full_box(b"stsc", 0, 0, &u32s(&[0])),
        make_full_box(b"stsz", 0, 0, &u32s(&[0, 0])),
        make_full_box(b"stco", 0, 0, &u32s(&[0])),
    ]
    .concat();
    let stbl = make_box(b"stbl", &[stsd, empty_tables].concat());
    let minf = make_box(
        b"minf",
        &[media_header, make_box(b"dinf", &dref), stbl].concat(),
    );
    let mdia = make_box(
        b"mdia",
        &[
            make_full_box(b"mdhd", 0, 0, &mdhd),
            make_full_box(b"hdlr", 0, 0, &hdlr),
            minf,
        ]
        .concat(),
    );
    let trak = make_box(
        b"trak",
        &[make_full_box(b"tkhd", 0, 3, &tkhd), mdia].concat(),
    );
    let trex = make_full_box(b"trex", 0, 0, &u32s(&[TRACK_ID, 1, 0, 0, 0]));
    let moov = make_box(
        b"moov",
        &[
            make_full_box(b"mvhd", 0, 0, &mvhd),
            trak,
            make_box(b"mvex", &trex),
        ]
        .concat(),
    );
    out.extend(moov);
    out
}

/// xorshift64*: a small deterministic generator (not for secrets).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Media segment `sequence` of `duration_ms` at the track's bitrate.
pub fn media_segment(
    track: &SyntheticTrack,
    sequence: u64,
    duration_ms: u32,
    seed: u64,
) -> Vec<u8> {
    let sample_duration = track.sample_duration().max(1);
    let count =
        (u64::from(track.timescale()) * u64::from(duration_ms) / 1000 / u64::from(sample_duration))
            .max(1);
    let total_bytes = (track.bitrate * u64::from(duration_ms) / 8000).max(count * 16);
    let mut rng = Rng(seed ^ sequence.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed);
    rng.next();
    // Video: the first (IDR) sample is 4x the size of the others.
    let weights: Vec<u64> = (0..count)
        .map(|i| {
            if track.video.is_some() && i == 0 {
                4
            } else {
                1
            }
        })
        .collect();
    let weight_sum: u64 = weights.iter().sum();
    let mut sizes: Vec<u32> = weights
        .iter()
        .map(|w| {
            u32::try_from(total_bytes * w / weight_sum)
                .unwrap_or(u32::MAX)
                .max(16)
        })
        .collect();
    let mut mdat = Vec::with_capacity(total_bytes as usize);
    for (i, size) in sizes.iter_mut().enumerate() {
        let start = mdat.len();
        mdat.resize(start + *size as usize, 0);
        rng.fill(&mut mdat[start..]);
        if track.video.is_some() {
            // One NAL unit filling the sample.
            let nal_len = *size - 4;
            mdat[start..start + 4].copy_from_slice(&nal_len.to_be_bytes());
            mdat[start + 4] = if i == 0 { 0x65 } else { 0x41 };
        }
    }
    let base_time = sequence * count * u64::from(sample_duration);
    let tfhd = make_full_box(b"tfhd", 0, 0x02_0008, &u32s(&[TRACK_ID, sample_duration]));
    let tfdt = make_full_box(b"tfdt", 1, 0, &base_time.to_be_bytes());
    // trun: data offset + sizes + first-sample flags (sync) for video.
    let video = track.video.is_some();
    let flags = 0x1 | 0x200 | if video { 0x4 } else { 0 };
    let mut trun_body = u32s(&[count as u32, 0]);
    if video {
        trun_body.extend(u32s(&[0x0200_0000]));
    }
    trun_body.extend(u32s(&sizes));
    let traf_len = 8 + tfhd.len() + tfdt.len() + 12 + trun_body.len();
    let mfhd = make_full_box(b"mfhd", 0, 0, &u32s(&[sequence as u32 + 1]));
    let moof_len = 8 + mfhd.len() + traf_len;
    let data_offset = (moof_len + 8) as u32;
    trun_body[4..8].copy_from_slice(&data_offset.to_be_bytes());
    let trun = make_full_box(b"trun", 0, flags, &trun_body);
    let traf = make_box(b"traf", &[tfhd, tfdt, trun].concat());
    let moof = make_box(b"moof", &[mfhd, traf].concat());
    let mut out = make_box(
        b"styp",
        &[b"cmfs".as_slice(), &0u32.to_be_bytes(), b"cmfs", b"msdh"].concat(),
    );
    debug_assert_eq!(moof.len(), moof_len);
    out.extend(moof);
    out.extend(make_box(b"mdat", &mdat));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::{Codec, inspect_init};
    use crate::segment::inspect_segment;

    #[test]
    fn synthetic_segments_have_the_asked_size_and_parse() {
        for track in [
            SyntheticTrack {
                video: Some((1920, 1080)),
                fps: 30,
                bitrate: 6_000_000,
            },
            SyntheticTrack {
                video: None,
                fps: 0,
                bitrate: 128_000,
            },
        ] {
            let init = init_segment(&track);
            let info = inspect_init(&init).unwrap();
            assert_eq!(info.is_video(), track.video.is_some());
            if track.video.is_some() {
                assert_eq!(info.codec, Codec::Avc { nal_length_size: 4 });
                assert_eq!(info.dimensions, Some((1920, 1080)));
            }
            let seg = media_segment(&track, 3, 4000, 1);
            let expected = track.bitrate * 4 / 8;
            let size = seg.len() as u64;
            assert!(
                size > expected && size < expected + expected / 50,
                "{size} vs {expected}"
            );
            let s = inspect_segment(&seg, &info).unwrap();
            assert!((3900..=4000).contains(&(s.duration * 1000 / u64::from(info.timescale))));
            assert_eq!(media_segment(&track, 3, 4000, 1), seg, "deterministic");
            assert_ne!(media_segment(&track, 4, 4000, 1), seg);
        }
    }
}
