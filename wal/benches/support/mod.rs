//! Realistic records for the benchmarks: STIX-like JSON lines of about 2 KB, with random ids,
//! timestamps and text, which zstd level 1 compresses to about a quarter (like real OpenCTI
//! events).
#![allow(dead_code)]

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WORDS: &[&str] = &[
    "malware",
    "indicator",
    "trojan",
    "loader",
    "banking",
    "campaign",
    "report",
    "identity",
    "vulnerability",
    "attack-pattern",
    "the",
    "of",
    "and",
    "observed",
    "network",
    "domain",
    "sector",
    "energy",
    "phishing",
    "infrastructure",
    "command",
    "control",
    "server",
    "actor",
    "espionage",
    "ransomware",
    "credential",
    "exfiltration",
    "lateral",
    "movement",
    "persistence",
];

const TYPES: &[&str] = &[
    "malware",
    "indicator",
    "report",
    "identity",
    "vulnerability",
    "relationship",
];

fn uuid(rng: &mut StdRng) -> String {
    let a: u128 = rng.random();
    let h = format!("{a:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn timestamp(rng: &mut StdRng) -> String {
    format!(
        "2024-0{}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        rng.random_range(1..10),
        rng.random_range(1..29),
        rng.random_range(0..24),
        rng.random_range(0..60),
        rng.random_range(0..60),
        rng.random_range(0..1000)
    )
}

/// One record of about `target` bytes.
pub fn record(rng: &mut StdRng, index: u64, target: usize) -> Bytes {
    let kind = TYPES[rng.random_range(0..TYPES.len())];
    let created = timestamp(rng);
    let mut s = format!(
        "{{\"id\":\"{}-0\",\"type\":\"create\",\"data\":{{\"id\":\"{kind}--{}\",\"spec_version\":\"2.1\",\
         \"type\":\"{kind}\",\"extensions\":{{\"extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba\":\
         {{\"extension_type\":\"property-extension\",\"id\":\"{}\",\"created_at\":\"{created}\",\
         \"updated_at\":\"{}\",\"is_inferred\":false,\"creator_ids\":[\"{}\"]}}}},\"created\":\"{created}\",\
         \"modified\":\"{}\",\"confidence\":{},\"lang\":\"en\",\"name\":\"",
        1_718_012_346_001 + index,
        uuid(rng),
        uuid(rng),
        timestamp(rng),
        uuid(rng),
        timestamp(rng),
        rng.random_range(0..101)
    );
    for _ in 0..rng.random_range(1..4) {
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        s.push(' ');
    }
    s.push_str("\",\"description\":\"");
    while s.len() + 120 < target {
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        s.push(' ');
        if rng.random_range(0..9) == 0 {
            s.push_str(&format!("{:x} ", rng.random::<u64>()));
        }
    }
    s.push_str(&format!(
        "\",\"object_marking_refs\":[\"marking-definition--{}\"]}},\"event_id\":\"{}\"}}",
        uuid(rng),
        uuid(rng)
    ));
    Bytes::from(s)
}

/// `n` records of about 2 KB, reproducible from `seed`.
pub fn records(n: usize, seed: u64) -> Vec<Bytes> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n as u64).map(|i| record(&mut rng, i, 2048)).collect()
}
