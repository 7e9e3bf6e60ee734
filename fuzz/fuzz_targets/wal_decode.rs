//! The WAL's database decoders (state, frame headers, segment entries) on any bytes: a damaged
//! database is an error, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wal::fuzzing::decode_database_value(data);
});
