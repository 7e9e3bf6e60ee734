//! A tiny deterministic generator (SplitMix64) and hashing helpers. The corpus must be the same
//! for a seed on every platform and every version of the `rand` crate, so it uses its own.

/// SplitMix64: fast, well mixed, and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`; returns 0 for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A random element index of a slice of length `len`.
    pub fn pick(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

/// The SplitMix64 finaliser: a bijective mix of 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Combines a seed with a value into a new well-mixed seed.
pub fn derive(seed: u64, value: u64) -> u64 {
    mix(seed ^ mix(value.wrapping_add(0x632B_E59B_D9B4_E019)))
}

/// A version-4 style UUID (as a 128-bit value) derived from `seed`.
pub fn uuid_v4(seed: u64) -> u128 {
    uuid_with_version(seed, 4)
}

/// A version-5 style UUID (OpenCTI's standard ids look like these) derived from `seed`.
pub fn uuid_v5(seed: u64) -> u128 {
    uuid_with_version(seed, 5)
}

fn uuid_with_version(seed: u64, version: u128) -> u128 {
    let high = u128::from(mix(seed ^ 0x5555_AAAA_0F0F_F0F0));
    let low = u128::from(mix(seed.wrapping_add(0x1234_5678_9ABC_DEF1)));
    let raw = (high << 64) | low;
    let raw = (raw & !(0xF_u128 << 76)) | (version << 76);
    (raw & !(0x3_u128 << 62)) | (0x2_u128 << 62)
}
