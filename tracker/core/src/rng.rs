//! A small seeded random generator (SplitMix64) for peer choice.
//!
//! The core takes its randomness as an input so tests and the simulator are
//! reproducible; peer choice needs spread, not cryptographic strength.

/// SplitMix64 (Steele, Lea, Flood 2014): fast, full-period, good enough to
/// spread load across peers.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`0` when `bound` is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            return 0;
        }
        // Lemire's multiply-shift: unbiased enough for load spreading.
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }
}
