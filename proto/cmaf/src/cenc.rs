//! Common Encryption (ISO/IEC 23001-7) of single samples: which bytes stay
//! clear (subsamples), and the two ciphers, `cenc` (AES-128-CTR) and `cbcs`
//! (AES-128-CBC, pattern, constant IV), both ways. Pure functions: bytes
//! in, bytes out.

use aes::Aes128;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, InnerIvInit, KeyInit, StreamCipher};
use loaves_proto::keys::ContentKey;
use sha2::{Digest, Sha256};

/// A content key with its AES key schedule expanded once, for the many
/// samples of a segment (each sample starts a fresh CTR counter or CBC
/// chain from it, without expanding the key again).
#[derive(Clone)]
pub struct ExpandedKey {
    aes: Aes128,
}

impl ExpandedKey {
    /// Expands `key`.
    pub fn new(key: &ContentKey) -> Self {
        Self {
            aes: Aes128::new(key.as_bytes().into()),
        }
    }

    fn ctr(&self, iv: [u8; 16]) -> ctr::Ctr128BE<Aes128> {
        ctr::Ctr128BE::<Aes128>::from_core(ctr::CtrCore::inner_iv_init(
            self.aes.clone(),
            &iv.into(),
        ))
    }
}

impl std::fmt::Debug for ExpandedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpandedKey(..)")
    }
}

/// AES block size.
pub const BLOCK: usize = 16;

/// Bytes at the start of each H.264 VCL NAL unit (NAL header and the start
/// of the slice header) kept clear, so a decoder or a secure pipeline can
/// parse slice headers without the key. Apple's SAMPLE-AES uses the same 32.
pub const AVC_CLEAR_HEADER: usize = 32;

/// VCL NAL units shorter than this stay entirely clear.
pub const AVC_MIN_PROTECTED_NAL: usize = 48;

/// The `cbcs` pattern for video: 1 encrypted block, then 9 clear.
pub const CBCS_VIDEO_PATTERN: Pattern = Pattern { crypt: 1, skip: 9 };

/// `BytesOfClearData` is a 16-bit field.
const MAX_CLEAR_PER_SUBSAMPLE: usize = u16::MAX as usize;

/// One subsample: clear bytes, then protected bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subsample {
    /// `BytesOfClearData`.
    pub clear: u16,
    /// `BytesOfProtectedData`.
    pub protected: u32,
}

/// A `cbcs`/`cens` encryption pattern in 16-byte blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    /// Encrypted blocks per period.
    pub crypt: u8,
    /// Clear blocks per period.
    pub skip: u8,
}

/// Why a sample could not be split into subsamples.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// A NAL unit length runs past the end of the sample.
    #[error("NAL unit at sample byte {offset} claims {len} bytes, only {available} left")]
    BadNalLength {
        /// Offset of the length field in the sample.
        offset: usize,
        /// Declared length.
        len: usize,
        /// Bytes left in the sample.
        available: usize,
    },
    /// The sample ends inside a NAL length field.
    #[error("sample ends inside a NAL length field at byte {0}")]
    TruncatedLength(usize),
    /// A protected range does not fit the 32-bit field.
    #[error("NAL unit too large for a subsample entry")]
    TooLarge,
    /// A `cenc` IV is neither 8 nor 16 bytes.
    #[error("IV of {0} bytes (8 or 16 expected)")]
    BadIvSize(usize),
}

/// The subsamples of an H.264 sample in AVCC form (length-prefixed NAL
/// units): length prefixes, NAL headers and non-VCL NAL units (SPS, PPS,
/// SEI, AUD...) stay clear; each VCL NAL unit keeps its first
/// [`AVC_CLEAR_HEADER`] bytes clear and protects the rest. With
/// `align_to_blocks` (used for `cenc`), each protected range is shortened to
/// whole 16-byte blocks, the remainder moving to the clear part.
pub fn avc_subsamples(
    sample: &[u8],
    nal_length_size: usize,
    align_to_blocks: bool,
) -> Result<Vec<Subsample>, SampleError> {
    let mut out = Vec::new();
    let mut pending_clear = 0usize;
    let mut pos = 0usize;
    while pos < sample.len() {
        if sample.len() - pos < nal_length_size {
            return Err(SampleError::TruncatedLength(pos));
        }
        let len = sample[pos..pos + nal_length_size]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let available = sample.len() - pos - nal_length_size;
        if len > available {
            return Err(SampleError::BadNalLength {
                offset: pos,
                len,
                available,
            });
        }
        let nal = &sample[pos + nal_length_size..pos + nal_length_size + len];
        let nal_type = nal.first().map(|b| b & 0x1f).unwrap_or(0);
        let is_vcl = (1..=5).contains(&nal_type);
        if is_vcl && len >= AVC_MIN_PROTECTED_NAL {
            let mut clear = nal_length_size + AVC_CLEAR_HEADER;
            let mut protected = len - AVC_CLEAR_HEADER;
            if align_to_blocks {
                let rest = protected % BLOCK;
                protected -= rest;
                clear += rest;
            }
            push_subsample(&mut out, pending_clear + clear, protected)?;
            pending_clear = 0;
        } else {
            pending_clear += nal_length_size + len;
        }
        pos += nal_length_size + len;
    }
    if pending_clear > 0 {
        push_subsample(&mut out, pending_clear, 0)?;
    }
    Ok(out)
}

fn push_subsample(
    out: &mut Vec<Subsample>,
    mut clear: usize,
    protected: usize,
) -> Result<(), SampleError> {
    while clear > MAX_CLEAR_PER_SUBSAMPLE {
        out.push(Subsample {
            clear: u16::MAX,
            protected: 0,
        });
        clear -= MAX_CLEAR_PER_SUBSAMPLE;
    }
    out.push(Subsample {
        // Checked by the loop above.
        clear: clear as u16,
        protected: u32::try_from(protected).map_err(|_| SampleError::TooLarge)?,
    });
    Ok(())
}

/// The protected byte ranges of a sample, in order (without allocating:
/// this runs for every sample).
fn protected_ranges(
    len: usize,
    subsamples: Option<&[Subsample]>,
) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let whole = subsamples.is_none().then_some(0..len);
    let mut pos = 0usize;
    let parts = subsamples.unwrap_or_default().iter().filter_map(move |s| {
        pos = pos.saturating_add(usize::from(s.clear)).min(len);
        let end = pos.saturating_add(s.protected as usize).min(len);
        let range = pos..end;
        pos = end;
        (!range.is_empty()).then_some(range)
    });
    whole.into_iter().chain(parts)
}

/// `cenc`: AES-128-CTR with the 8-byte `iv` as the high half of the counter
/// block. The keystream runs continuously across the protected ranges of
/// the sample (subsamples are concatenated, as the standard says).
pub fn encrypt_cenc(
    key: &ExpandedKey,
    iv: &[u8; 8],
    sample: &mut [u8],
    subsamples: Option<&[Subsample]>,
) {
    let mut counter = [0u8; 16];
    counter[..8].copy_from_slice(iv);
    apply_cenc_keystream(key, counter, sample, subsamples);
}

/// The `cenc` keystream from `counter`, run continuously over the sample's
/// protected ranges (its own inverse).
fn apply_cenc_keystream(
    key: &ExpandedKey,
    counter: [u8; 16],
    sample: &mut [u8],
    subsamples: Option<&[Subsample]>,
) {
    let mut cipher = key.ctr(counter);
    for range in protected_ranges(sample.len(), subsamples) {
        cipher.apply_keystream(&mut sample[range]);
    }
}

/// `cbcs`: AES-128-CBC from the constant `iv`, restarted at each subsample.
/// With a pattern, only the first `crypt` of every `crypt + skip` blocks of a
/// protected range are encrypted (the CBC chain runs over encrypted blocks
/// only); without one, every whole block is. A trailing partial block always
/// stays clear.
pub fn encrypt_cbcs(
    key: &ExpandedKey,
    iv: &[u8; 16],
    sample: &mut [u8],
    subsamples: Option<&[Subsample]>,
    pattern: Option<Pattern>,
) {
    for_each_cbcs_block(
        sample,
        subsamples,
        pattern,
        || cbc::Encryptor::<Aes128>::inner_iv_init(key.aes.clone(), iv.into()),
        encrypt_block,
    );
}

/// The blocks `cbcs` transforms, shared by both directions: `chain` starts
/// a fresh CBC chain at each protected range, `apply` runs it over each
/// block the pattern selects (every whole block without a pattern).
fn for_each_cbcs_block<C>(
    sample: &mut [u8],
    subsamples: Option<&[Subsample]>,
    pattern: Option<Pattern>,
    mut chain: impl FnMut() -> C,
    mut apply: impl FnMut(&mut C, &mut [u8]),
) {
    for range in protected_ranges(sample.len(), subsamples) {
        let mut cipher = chain();
        let region = &mut sample[range];
        let whole = region.len() / BLOCK * BLOCK;
        let (crypt, period) = match pattern {
            Some(p) if p.crypt > 0 => (
                usize::from(p.crypt),
                usize::from(p.crypt) + usize::from(p.skip),
            ),
            _ => (1, 1),
        };
        for (i, block) in region[..whole].chunks_exact_mut(BLOCK).enumerate() {
            if i % period < crypt {
                apply(&mut cipher, block);
            }
        }
    }
}

/// Undoes [`encrypt_cenc`] for an IV of 8 bytes (the high half of the
/// counter block) or 16 (the whole block), as `senc` carries it. CTR is its
/// own inverse; this exists for IVs that are not the packager's 8 bytes.
pub fn decrypt_cenc(
    key: &ExpandedKey,
    iv: &[u8],
    sample: &mut [u8],
    subsamples: Option<&[Subsample]>,
) -> Result<(), SampleError> {
    let mut counter = [0u8; 16];
    match iv.len() {
        8 | 16 => counter[..iv.len()].copy_from_slice(iv),
        n => return Err(SampleError::BadIvSize(n)),
    }
    apply_cenc_keystream(key, counter, sample, subsamples);
    Ok(())
}

/// Undoes [`encrypt_cbcs`]: the same ranges, blocks and pattern, each
/// subsample's CBC chain restarting from `iv`.
pub fn decrypt_cbcs(
    key: &ExpandedKey,
    iv: &[u8; 16],
    sample: &mut [u8],
    subsamples: Option<&[Subsample]>,
    pattern: Option<Pattern>,
) {
    for_each_cbcs_block(
        sample,
        subsamples,
        pattern,
        || cbc::Decryptor::<Aes128>::inner_iv_init(key.aes.clone(), iv.into()),
        decrypt_block,
    );
}

fn decrypt_block(cipher: &mut cbc::Decryptor<Aes128>, block: &mut [u8]) {
    let mut b = [0u8; BLOCK];
    b.copy_from_slice(block);
    let mut array = b.into();
    cipher.decrypt_block(&mut array);
    block.copy_from_slice(&array);
}

fn encrypt_block(cipher: &mut cbc::Encryptor<Aes128>, block: &mut [u8]) {
    let mut b = [0u8; BLOCK];
    b.copy_from_slice(block);
    let mut array = b.into();
    cipher.encrypt_block(&mut array);
    block.copy_from_slice(&array);
}

/// The first `cenc` IV of a segment: 8 bytes derived (one hash per
/// segment) from the key id, rendition and segment sequence. Sample `i` of
/// the segment uses [`cenc_iv`]`(base, i)`, the base plus `i`.
///
/// Why this keeps every counter block unique under one key: each IV is the
/// high half of the 128-bit counter block, whose low half counts the
/// sample's blocks from zero, so two samples share a counter block only if
/// they share an IV. Within a segment the IVs are consecutive, hence
/// distinct; two segments collide only if their bases fall within a
/// segment's sample count of each other, which for 64-bit hashed bases is
/// less likely than two of the per-sample hashes this replaces colliding.
/// Deterministic, so re-packaging gives identical ciphertext.
pub fn cenc_iv_base(key_id: &[u8; 16], rendition: &str, sequence: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(b"loaves/v2/cenc-iv-base\0");
    h.update(key_id);
    h.update((rendition.len() as u64).to_be_bytes());
    h.update(rendition.as_bytes());
    h.update(sequence.to_be_bytes());
    let d = h.finalize();
    let mut base = [0u8; 8];
    base.copy_from_slice(&d[..8]);
    u64::from_be_bytes(base)
}

/// The `cenc` IV of sample `sample` of a segment whose first IV is `base`
/// ([`cenc_iv_base`]).
pub fn cenc_iv(base: u64, sample: u32) -> [u8; 8] {
    base.wrapping_add(u64::from(sample)).to_be_bytes()
}

/// The `cbcs` constant IV of a track, from its default key id (public: it
/// is written in `tenc` and every `seig` entry).
pub fn cbcs_constant_iv(key_id: &[u8; 16]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"loaves/v1/cbcs-iv\0");
    h.update(key_id);
    let d = h.finalize();
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&d[..16]);
    iv
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{BlockCipherDecrypt, KeyInit};

    fn nal(kind: u8, len: usize) -> Vec<u8> {
        let mut v = (len as u32).to_be_bytes().to_vec();
        v.push(kind);
        v.extend((1..len).map(|i| (i * 7) as u8));
        v
    }

    #[test]
    fn avc_subsamples_keep_headers_and_non_vcl_clear() {
        let mut sample = nal(9, 2); // AUD
        sample.extend(nal(6, 30)); // SEI
        sample.extend(nal(5, 1000)); // IDR slice
        sample.extend(nal(1, 40)); // small slice: clear
        let subs = avc_subsamples(&sample, 4, true).unwrap();
        // AUD + SEI + IDR header, then the IDR body; the small slice is clear.
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].protected % 16, 0);
        assert_eq!(
            usize::from(subs[0].clear),
            6 + 34 + 4 + AVC_CLEAR_HEADER + (1000 - AVC_CLEAR_HEADER) % 16
        );
        assert_eq!(
            subs[1],
            Subsample {
                clear: 44,
                protected: 0
            }
        );
        let total: usize = subs
            .iter()
            .map(|s| usize::from(s.clear) + s.protected as usize)
            .sum();
        assert_eq!(total, sample.len());
        // Unaligned for cbcs.
        let subs = avc_subsamples(&sample, 4, false).unwrap();
        assert_eq!(subs[0].protected as usize, 1000 - AVC_CLEAR_HEADER);
    }

    #[test]
    fn avc_subsamples_refuse_bad_lengths() {
        let mut sample = nal(5, 100);
        sample.truncate(60);
        assert!(matches!(
            avc_subsamples(&sample, 4, true),
            Err(SampleError::BadNalLength { .. })
        ));
        assert!(matches!(
            avc_subsamples(&[0, 0], 4, true),
            Err(SampleError::TruncatedLength(0))
        ));
    }

    #[test]
    fn huge_clear_runs_are_split() {
        let sample = nal(6, 70_000);
        let subs = avc_subsamples(&sample, 4, true).unwrap();
        assert_eq!(
            subs[0],
            Subsample {
                clear: u16::MAX,
                protected: 0
            }
        );
        assert_eq!(usize::from(subs[1].clear), 70_004 - 65_535);
    }

    #[test]
    fn cenc_keystream_continues_across_subsamples() {
        let key = ExpandedKey::new(&ContentKey::new([3; 16]));
        let iv = [9u8; 8];
        let clear: Vec<u8> = (0..100u8).collect();
        let subs = [
            Subsample {
                clear: 10,
                protected: 20,
            },
            Subsample {
                clear: 5,
                protected: 65,
            },
        ];
        let mut enc = clear.clone();
        encrypt_cenc(&key, &iv, &mut enc, Some(&subs));
        assert_eq!(enc[..10], clear[..10]);
        assert_eq!(enc[30..35], clear[30..35]);
        // The protected bytes, concatenated, are one CTR stream.
        let mut joined: Vec<u8> = clear[10..30].iter().chain(&clear[35..]).copied().collect();
        encrypt_cenc(&key, &iv, &mut joined, None);
        let got: Vec<u8> = enc[10..30].iter().chain(&enc[35..]).copied().collect();
        assert_eq!(joined, got);
    }

    #[test]
    fn cbcs_pattern_one_in_ten_and_iv_reset() {
        let content_key = ContentKey::new([5; 16]);
        let key = ExpandedKey::new(&content_key);
        let iv = [1u8; 16];
        let clear = vec![0xabu8; 16 * 25 + 7];
        let subs = [Subsample {
            clear: 0,
            protected: clear.len() as u32,
        }];
        let mut enc = clear.clone();
        encrypt_cbcs(&key, &iv, &mut enc, Some(&subs), Some(CBCS_VIDEO_PATTERN));
        for (i, (a, b)) in enc.chunks(16).zip(clear.chunks(16)).enumerate() {
            let encrypted = a != b;
            assert_eq!(encrypted, i % 10 == 0 && a.len() == 16, "block {i}");
        }
        // Decrypt the encrypted blocks as one CBC chain from the IV.
        let aes = Aes128::new(content_key.as_bytes().into());
        let mut prev = iv;
        for i in [0usize, 10, 20] {
            let mut block: [u8; 16] = enc[i * 16..i * 16 + 16].try_into().unwrap();
            let ct = block;
            let mut arr = block.into();
            aes.decrypt_block(&mut arr);
            block.copy_from_slice(&arr);
            for (x, p) in block.iter_mut().zip(prev) {
                *x ^= p;
            }
            assert_eq!(block, [0xab; 16]);
            prev = ct;
        }
        // A second subsample restarts from the constant IV: same plaintext,
        // same ciphertext.
        let two = [
            Subsample {
                clear: 0,
                protected: 32,
            },
            Subsample {
                clear: 0,
                protected: 32,
            },
        ];
        let mut enc = vec![0x11u8; 64];
        encrypt_cbcs(&key, &iv, &mut enc, Some(&two), None);
        assert_eq!(enc[..32], enc[32..]);
    }

    #[test]
    fn cbcs_full_sample_leaves_partial_block_clear() {
        let key = ExpandedKey::new(&ContentKey::new([5; 16]));
        let clear = vec![7u8; 40];
        let mut enc = clear.clone();
        encrypt_cbcs(&key, &[0; 16], &mut enc, None, None);
        assert_ne!(enc[..16], clear[..16]);
        assert_ne!(enc[16..32], clear[16..32]);
        assert_eq!(enc[32..], clear[32..]);
    }

    #[test]
    fn decryption_undoes_encryption() {
        let key = ExpandedKey::new(&ContentKey::new([8; 16]));
        let clear: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
        let subs = [
            Subsample {
                clear: 37,
                protected: 400,
            },
            Subsample {
                clear: 3,
                protected: 560,
            },
        ];
        let mut enc = clear.clone();
        encrypt_cenc(&key, &[4; 8], &mut enc, Some(&subs));
        assert_ne!(enc, clear);
        decrypt_cenc(&key, &[4; 8], &mut enc, Some(&subs)).unwrap();
        assert_eq!(enc, clear);
        for (subsamples, pattern) in [(Some(&subs[..]), Some(CBCS_VIDEO_PATTERN)), (None, None)] {
            let mut enc = clear.clone();
            encrypt_cbcs(&key, &[6; 16], &mut enc, subsamples, pattern);
            assert_ne!(enc, clear);
            decrypt_cbcs(&key, &[6; 16], &mut enc, subsamples, pattern);
            assert_eq!(enc, clear);
        }
        assert_eq!(
            decrypt_cenc(&key, &[0; 12], &mut enc, None),
            Err(SampleError::BadIvSize(12))
        );
    }

    /// The expanded key gives the keystream of the plain `ctr` + `aes`
    /// construction with the key, the IV as the counter's high half.
    #[test]
    fn cenc_is_aes_ctr_with_the_iv_as_the_counters_high_half() {
        use aes::cipher::KeyIvInit;
        let content_key = ContentKey::new([0x42; 16]);
        let iv = [0x17u8; 8];
        let clear: Vec<u8> = (0..333u32).map(|i| (i * 13) as u8).collect();
        let mut ours = clear.clone();
        encrypt_cenc(&ExpandedKey::new(&content_key), &iv, &mut ours, None);
        let mut counter = [0u8; 16];
        counter[..8].copy_from_slice(&iv);
        let mut reference = clear;
        ctr::Ctr128BE::<Aes128>::new(content_key.as_bytes().into(), &counter.into())
            .apply_keystream(&mut reference);
        assert_eq!(ours, reference);
    }

    #[test]
    fn ivs_differ() {
        let kid = [1u8; 16];
        let base = cenc_iv_base(&kid, "a", 0);
        assert_ne!(cenc_iv(base, 0), cenc_iv(base, 1));
        assert_ne!(base, cenc_iv_base(&kid, "b", 0));
        assert_ne!(base, cenc_iv_base(&kid, "a", 1));
        assert_ne!(base, cenc_iv_base(&[2; 16], "a", 0));
        // Consecutive within a segment, wrapping at the top.
        assert_eq!(cenc_iv(u64::MAX, 1), [0; 8]);
        assert_eq!(cenc_iv(7, 3), 10u64.to_be_bytes());
    }
}
