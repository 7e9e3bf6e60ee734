//! A reusable zstd frame encoder writing into any `Write`.
//!
//! One compression context is kept and reset between frames (allocating a context costs more
//! than compressing a small group). Every frame carries zstd's content checksum, so a damaged
//! frame fails to decode instead of yielding wrong bytes. A segment file is a sequence of such
//! frames; zstd decoders read concatenated frames as one stream.

use std::io::{self, Write};

use zstd::stream::raw::{CParameter, Encoder, InBuffer, Operation, OutBuffer};

/// Size of the scratch buffer compressed bytes pass through.
const SCRATCH_BYTES: usize = 128 * 1024;

/// Compresses data into zstd frames, one frame at a time.
pub(crate) struct FrameEncoder {
    encoder: Encoder<'static>,
    scratch: Vec<u8>,
    in_frame: bool,
}

impl FrameEncoder {
    /// An encoder at `level` with content checksums on.
    pub fn new(level: i32) -> io::Result<Self> {
        let mut encoder = Encoder::new(level)?;
        encoder.set_parameter(CParameter::ChecksumFlag(true))?;
        Ok(FrameEncoder {
            encoder,
            scratch: vec![0; SCRATCH_BYTES],
            in_frame: false,
        })
    }

    /// Whether a frame is open (data written since the last [`FrameEncoder::finish_frame`]).
    #[cfg(test)]
    pub fn in_frame(&self) -> bool {
        self.in_frame
    }

    /// Starts a frame whose content size is known (recorded in the frame header).
    pub fn begin_sized_frame(&mut self, content_bytes: u64) -> io::Result<()> {
        self.encoder.reinit()?;
        self.encoder.set_pledged_src_size(Some(content_bytes))?;
        self.in_frame = true;
        Ok(())
    }

    /// Compresses `data` into the open frame (opening one of unknown size if none is open).
    pub fn write<W: Write>(&mut self, mut data: &[u8], sink: &mut W) -> io::Result<()> {
        if !self.in_frame {
            self.encoder.reinit()?;
            self.in_frame = true;
        }
        while !data.is_empty() {
            let mut input = InBuffer::around(data);
            let mut output = OutBuffer::around(&mut self.scratch[..]);
            self.encoder.run(&mut input, &mut output)?;
            let written = output.pos();
            let read = input.pos();
            sink.write_all(&self.scratch[..written])?;
            data = &data[read..];
        }
        Ok(())
    }

    /// Ends the open frame (a no-op when none is open).
    pub fn finish_frame<W: Write>(&mut self, sink: &mut W) -> io::Result<()> {
        if !self.in_frame {
            return Ok(());
        }
        loop {
            let mut output = OutBuffer::around(&mut self.scratch[..]);
            let remaining = self.encoder.finish(&mut output, true)?;
            let written = output.pos();
            sink.write_all(&self.scratch[..written])?;
            if remaining == 0 {
                break;
            }
        }
        self.in_frame = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn concatenated_frames_decode_as_one_stream() {
        let mut encoder = FrameEncoder::new(1).unwrap();
        let mut out = Vec::new();
        let first = b"first line\nsecond line\n".repeat(1000);
        encoder.begin_sized_frame(first.len() as u64).unwrap();
        encoder.write(&first, &mut out).unwrap();
        encoder.finish_frame(&mut out).unwrap();
        assert!(!encoder.in_frame());
        encoder.write(b"third\n", &mut out).unwrap();
        encoder.write(b"fourth\n", &mut out).unwrap();
        encoder.finish_frame(&mut out).unwrap();

        let mut decoded = Vec::new();
        zstd::stream::read::Decoder::new(&out[..])
            .unwrap()
            .read_to_end(&mut decoded)
            .unwrap();
        let mut expected = first.clone();
        expected.extend_from_slice(b"third\nfourth\n");
        assert_eq!(decoded, expected);
    }

    #[test]
    fn a_flipped_byte_fails_the_frame_checksum() {
        let mut encoder = FrameEncoder::new(1).unwrap();
        let mut out = Vec::new();
        let data: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
        encoder.write(&data, &mut out).unwrap();
        encoder.finish_frame(&mut out).unwrap();
        let at = out.len() / 2;
        out[at] ^= 0x55;
        let mut decoded = Vec::new();
        let result = zstd::stream::read::Decoder::new(&out[..])
            .unwrap()
            .read_to_end(&mut decoded);
        assert!(result.is_err() || decoded != data);
    }
}
