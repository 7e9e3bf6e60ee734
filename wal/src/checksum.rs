//! Checksums of a segment's content: CRC32C since WAL format 2, MD5 in segments sealed by format 1.
//!
//! CRC32C (Castagnoli, the `x-amz-checksum-crc32c` of S3) runs in hardware at several GB/s and,
//! unlike MD5, combines: the CRC of two pieces joined is computed from the CRCs of the pieces and
//! the second one's length. So the writer computes it once per commit while the raw bytes are in
//! memory, and a seal that copies stored frames into a segment never decompresses them to learn
//! the segment's checksum; the one decompression of each byte is the upload's, which checks it.

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// The checksum recorded for a piece of content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Checksum {
    /// CRC32C of the content: what this version records.
    Crc32c(u32),
    /// MD5 of the content: what segments sealed by WAL format 1 carry.
    Md5([u8; 16]),
}

impl Checksum {
    /// The CRC32C of `data`.
    pub fn crc32c_of(data: &[u8]) -> Checksum {
        Checksum::Crc32c(crc32c::crc32c(data))
    }

    /// The MD5 of `data`.
    pub fn md5_of(data: &[u8]) -> Checksum {
        Checksum::Md5(Md5::digest(data).into())
    }

    /// The name of the algorithm, for messages.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Crc32c(_) => "CRC32C",
            Checksum::Md5(_) => "MD5",
        }
    }
}

/// Computes a [`Checksum`] of everything given to it, in order.
#[derive(Clone)]
pub enum ChecksumHasher {
    /// A running CRC32C.
    Crc32c(u32),
    /// A running MD5.
    Md5(Md5),
}

impl ChecksumHasher {
    /// A CRC32C of nothing yet.
    pub fn crc32c() -> Self {
        ChecksumHasher::Crc32c(0)
    }

    /// An MD5 of nothing yet.
    pub fn md5() -> Self {
        ChecksumHasher::Md5(Md5::new())
    }

    /// A hasher of the kind of `checksum`, to check content against it.
    pub fn like(checksum: &Checksum) -> Self {
        match checksum {
            Checksum::Crc32c(_) => Self::crc32c(),
            Checksum::Md5(_) => Self::md5(),
        }
    }

    /// Adds `data` to what was hashed.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            ChecksumHasher::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            ChecksumHasher::Md5(md5) => md5.update(data),
        }
    }

    /// The checksum of everything added so far.
    pub fn finish(&self) -> Checksum {
        match self {
            ChecksumHasher::Crc32c(crc) => Checksum::Crc32c(*crc),
            ChecksumHasher::Md5(md5) => Checksum::Md5(md5.clone().finalize().into()),
        }
    }
}

/// The CRC32C of `first` followed by a piece of `second_len` bytes whose CRC32C is `second`.
pub(crate) fn crc32c_combine(first: u32, second: u32, second_len: u64) -> u32 {
    // `usize` is 64 bits wide on every target the WAL runs on (it maps files and counts bytes
    // in `u64` throughout); a frame's raw length comes from a commit held in memory.
    crc32c::crc32c_combine(first, second, second_len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crcs_of_pieces_combine_into_the_crc_of_the_whole() {
        let whole = b"first line\nsecond line\nthird\n".repeat(100);
        for cut in [0, 1, 17, whole.len() / 2, whole.len()] {
            let (a, b) = whole.split_at(cut);
            let combined = crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len() as u64);
            assert_eq!(combined, crc32c::crc32c(&whole), "cut at {cut}");
        }
    }

    #[test]
    fn a_hasher_fed_in_pieces_computes_the_checksum_of_the_whole() {
        let data = b"{\"id\":1}\n{\"id\":2}\n";
        for expected in [Checksum::crc32c_of(data), Checksum::md5_of(data)] {
            let mut hasher = ChecksumHasher::like(&expected);
            hasher.update(&data[..5]);
            hasher.update(&data[5..]);
            assert_eq!(hasher.finish(), expected);
            assert_ne!(ChecksumHasher::like(&expected).finish(), expected);
        }
        // The S3 form of the CRC32C of "hello world" (big-endian, base64 "yZRlqg==").
        assert_eq!(crc32c::crc32c(b"hello world"), 0xc994_65aa);
    }
}
