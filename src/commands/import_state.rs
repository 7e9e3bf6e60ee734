//! `import-state`: seeds a new WAL from the stock Python connector's state, so a user can switch
//! without a gap or a renumbering (docs/opencti-protocol.md#state-keys): resume from
//! `last_written_msg_id` (the last position the stock exporter uploaded; `start_from` when it never
//! uploaded), keep `recover_until`, and number the next file `file_count + 1`. Refuses a WAL that
//! already holds anything.

use std::io::Read;

use anyhow::{Context, bail};
use wal::{InitialState, RecoverUntil, Wal, WalOptions};

use crate::cli::ImportStateArgs;
use crate::config::Config;
use crate::opencti_api::state::StockState;

/// What `import-state` seeds the WAL with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedState {
    /// Position to resume from.
    pub cursor: String,
    /// Recovery bound.
    pub recover_until: RecoverUntil,
    /// Number of the next file.
    pub next_file_number: u64,
}

/// Reads the stock connector's state JSON (see [`StockState::parse`]) and refuses one that
/// cannot seed a WAL: empty, without a position, or with a `file_count` at the integer limit.
pub fn parse_stock_state(text: &str) -> anyhow::Result<SeedState> {
    let Some(stock) = StockState::parse(text)? else {
        bail!("the state is empty: there is nothing to import");
    };
    let Some(cursor) = stock.cursor.clone() else {
        bail!("the state has no position (last_written_msg_id or start_from)");
    };
    let Some(next_file_number) = stock.next_file_number() else {
        bail!(
            "file_count {} is at the integer limit: no file number is left after it",
            stock.file_count
        );
    };
    Ok(SeedState {
        cursor,
        recover_until: stock.recover_until,
        next_file_number,
    })
}

/// Runs `import-state`.
pub fn run(config: &Config, args: &ImportStateArgs) -> anyhow::Result<()> {
    let text = match args.state.as_str() {
        "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the state from standard input")?;
            text
        }
        arg => match arg.strip_prefix('@') {
            Some(path) => {
                std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
            }
            None => arg.to_string(),
        },
    };
    let stock = parse_stock_state(&text)?;
    let (wal, _) = Wal::open(WalOptions::new(&config.wal.dir, config.wal.max_bytes))
        .with_context(|| format!("opening the WAL in {}", config.wal.dir.display()))?;
    if !wal.is_new() {
        bail!(
            "the WAL in {} already holds data: import-state only seeds a new WAL (point WAL_DIR at \
             an empty directory)",
            config.wal.dir.display()
        );
    }
    let state = wal.state();
    wal.initialize(InitialState {
        cursor: Some(stock.cursor.clone()),
        recover_until: stock.recover_until.clone(),
        next_file_number: stock.next_file_number,
        last_sealed_ts_ms: state.last_sealed_ts_ms,
        extras: state.extras,
    })
    .context("seeding the WAL")?;
    println!(
        "seeded the WAL in {}: resume from {}, recover until {}, next file number {}",
        config.wal.dir.display(),
        stock.cursor,
        match &stock.recover_until {
            RecoverUntil::Date(date) => date.as_str(),
            _ => "(no recovery)",
        },
        stock.next_file_number
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stock_state_maps_onto_ours() {
        let state = parse_stock_state(
            r#"{"start_from": "1718012399999-0", "recover_until": "2024-06-10T09:38:20Z",
                "last_written_msg_id": "1718012350123-0", "file_count": 41}"#,
        )
        .expect("valid");
        assert_eq!(state.cursor, "1718012350123-0");
        assert_eq!(
            state.recover_until,
            RecoverUntil::Date("2024-06-10T09:38:20Z".into())
        );
        assert_eq!(state.next_file_number, 42);
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        assert!(parse_stock_state("[]").is_err());
        assert!(parse_stock_state(r#"{"file_count": 3}"#).is_err());
        assert!(parse_stock_state(r#"{"start_from": "1-0", "file_count": "many"}"#).is_err());
        assert!(parse_stock_state("{}").is_err());
        let at_limit = format!(r#"{{"start_from": "1-0", "file_count": {}}}"#, u64::MAX);
        assert!(
            parse_stock_state(&at_limit).is_err_and(|e| e.to_string().contains("integer limit"))
        );
    }

    #[test]
    fn a_file_count_at_the_integer_limit_is_refused_not_wrapped() {
        let at_limit = format!(r#"{{"start_from": "1-0", "file_count": {}}}"#, u64::MAX);
        let error = parse_stock_state(&at_limit).expect_err("refused");
        assert!(error.to_string().contains("integer limit"), "{error}");
        let as_text = format!(r#"{{"start_from": "1-0", "file_count": "{}"}}"#, u64::MAX);
        assert!(parse_stock_state(&as_text).is_err());
        let below = format!(r#"{{"start_from": "1-0", "file_count": {}}}"#, u64::MAX - 1);
        assert_eq!(
            parse_stock_state(&below).expect("valid").next_file_number,
            u64::MAX
        );
    }
}
