//! Deterministic file contents for `/storage/get/…`.

use super::rng::SplitMix;
use super::world::FileSpec;

/// The bytes of a file: a header matching its type, then deterministic filler.
pub fn file_bytes(spec: &FileSpec) -> Vec<u8> {
    let mut out = Vec::with_capacity(spec.size);
    let mut rng = SplitMix::new(spec.seed);
    match spec.mime {
        "application/pdf" => out.extend_from_slice(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"),
        "image/png" => out.extend_from_slice(b"\x89PNG\r\n\x1a\n"),
        "application/json" => {
            out.extend_from_slice(b"{\"sample\": true, \"note\": \"simulated file\"}\n")
        }
        _ => out.extend_from_slice(b"# simulated indicators file\n"),
    }
    let text = !matches!(spec.mime, "application/pdf" | "image/png");
    while out.len() < spec.size {
        let word = rng.next_u64();
        if text {
            for b in word.to_le_bytes() {
                out.push(if b % 16 == 0 { b'\n' } else { b'a' + b % 26 });
            }
        } else {
            out.extend_from_slice(&word.to_le_bytes());
        }
    }
    out.truncate(spec.size);
    out
}
