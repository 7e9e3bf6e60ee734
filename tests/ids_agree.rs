//! The simulator reads and writes stream ids and dates with code of its own (it shares none with
//! the exporter, so its oracle cannot share a mistake with what it judges). Both must still read
//! a `from` / `recover` value the same way (docs/opencti-protocol.md#stream-parameters) and write
//! a date the same way; compared here through their text and numbers.

use proptest::prelude::*;

/// The exporter's reading of `text`, as `(ms, seq)`.
fn exporter(text: &str) -> Option<(u64, u64)> {
    opencti_stream_exporter::ids::parse_position(text).map(|id| (id.ms, id.seq))
}

/// The simulator's reading of `text`, as `(ms, seq)`.
fn simulated(text: &str) -> Option<(u64, u64)> {
    simulator::parse_position(text).map(|id| (id.ms, id.seq))
}

/// Dates and near-dates: every part present or not, digits anywhere (so months and days out of
/// range, and offsets of every form).
const DATE_LIKE: &str = "[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt X][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{0,7})?)?([Zz]|[-+ ][0-9]{2}(:?[0-9]{2})?|[-+][0-9])?)?[ Z]?";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn both_read_a_position_alike(
        text in prop_oneof![
            DATE_LIKE,
            "(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])(T[01][0-9]:[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,4})?)?(Z|[-+ ][01][0-9]:?[0-5][0-9])?)?",
            "[0-9]{1,21}(-[0-9]{0,21})*",
            " ?0(-0)? ?",
            "\\PC{0,32}",
        ]
    ) {
        prop_assert_eq!(exporter(&text), simulated(&text), "{:?}", text);
    }

    #[test]
    fn both_write_a_date_alike(ms in 0u64..253_402_300_800_000) {
        let written = simulator::iso(ms);
        prop_assert_eq!(&opencti_stream_exporter::ids::iso(ms), &written);
        prop_assert_eq!(exporter(&written), Some((ms, 0)));
        prop_assert_eq!(simulated(&written), Some((ms, 0)));
    }
}
