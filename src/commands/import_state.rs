//! `import-state`: seeds a new WAL from the stock Python connector's state, so a user can switch
//! without a gap or a renumbering (reference §4.4): resume from `last_written_msg_id` (the last
//! position the stock exporter uploaded; `start_from` when it never uploaded), keep
//! `recover_until`, and number the next file `file_count + 1`. Refuses a WAL that already holds
//! anything.

use std::io::Read;

use anyhow::{Context, bail};
use serde_json::Value;
use wal::{InitialState, RecoverUntil, Wal, WalOptions};

use crate::cli::ImportStateArgs;
use crate::config::Config;

/// What the stock state says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockState {
    /// Position to resume from.
    pub cursor: Option<String>,
    /// Recovery bound.
    pub recover_until: RecoverUntil,
    /// Number of the next file.
    pub next_file_number: u64,
}

/// Reads the stock connector's state JSON (keys `start_from`, `recover_until`,
/// `last_written_msg_id`, `file_count`, and the legacy `connectorLastEventId` /
/// `connectorStartTime`).
pub fn parse_stock_state(text: &str) -> anyhow::Result<StockState> {
    let value: Value = serde_json::from_str(text.trim()).context("the state is not JSON")?;
    // The OpenCTI UI shows the state as a JSON string inside JSON at times: unwrap it.
    let value = match value {
        Value::String(inner) => serde_json::from_str(&inner).context("the state is not JSON")?,
        other => other,
    };
    let Some(object) = value.as_object() else {
        bail!(
            "the state must be a JSON object such as {{\"start_from\": \"…\", \"file_count\": 3}}"
        );
    };
    let text_of = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_string);
    let cursor = text_of("last_written_msg_id")
        .or_else(|| text_of("start_from"))
        .or_else(|| text_of("connectorLastEventId"));
    let recover_until = match object
        .get("recover_until")
        .or_else(|| object.get("connectorStartTime"))
    {
        Some(Value::String(date)) => RecoverUntil::Date(date.clone()),
        Some(Value::Bool(false)) | Some(Value::Null) => RecoverUntil::Disabled,
        None => RecoverUntil::Disabled,
        Some(other) => bail!("recover_until must be a date or false, got {other}"),
    };
    let file_count = match object.get("file_count") {
        None | Some(Value::Null) => 0,
        Some(value) => value
            .as_u64()
            .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
            .with_context(|| format!("file_count must be a whole number, got {value}"))?,
    };
    if cursor.is_none() {
        bail!("the state has no position (last_written_msg_id or start_from)");
    }
    let Some(next_file_number) = file_count.checked_add(1) else {
        bail!("file_count {file_count} is too large: the next file number would not fit");
    };
    Ok(StockState {
        cursor,
        recover_until,
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
        cursor: stock.cursor.clone(),
        recover_until: stock.recover_until.clone(),
        next_file_number: stock.next_file_number,
        last_sealed_ts_ms: state.last_sealed_ts_ms,
        extras: state.extras,
    })
    .context("seeding the WAL")?;
    println!(
        "seeded the WAL in {}: resume from {}, recover until {}, next file number {}",
        config.wal.dir.display(),
        stock.cursor.as_deref().unwrap_or("-"),
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
        assert_eq!(state.cursor.as_deref(), Some("1718012350123-0"));
        assert_eq!(
            state.recover_until,
            RecoverUntil::Date("2024-06-10T09:38:20Z".into())
        );
        assert_eq!(state.next_file_number, 42);
    }

    #[test]
    fn a_state_that_never_uploaded_resumes_from_start_from() {
        let state =
            parse_stock_state(r#"{"start_from": "5-0", "recover_until": false}"#).expect("valid");
        assert_eq!(state.cursor.as_deref(), Some("5-0"));
        assert_eq!(state.recover_until, RecoverUntil::Disabled);
        assert_eq!(state.next_file_number, 1);
    }

    #[test]
    fn a_state_given_as_a_json_string_is_unwrapped() {
        let state =
            parse_stock_state(r#""{\"connectorLastEventId\": \"7-0\", \"file_count\": \"2\"}""#)
                .expect("valid");
        assert_eq!(state.cursor.as_deref(), Some("7-0"));
        assert_eq!(state.next_file_number, 3);
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        assert!(parse_stock_state("[]").is_err());
        assert!(parse_stock_state(r#"{"file_count": 3}"#).is_err());
        assert!(parse_stock_state(r#"{"start_from": "1-0", "file_count": "many"}"#).is_err());
    }

    #[test]
    fn a_file_count_at_the_integer_limit_is_refused_not_wrapped() {
        let at_limit = format!(r#"{{"start_from": "1-0", "file_count": {}}}"#, u64::MAX);
        let error = parse_stock_state(&at_limit).expect_err("refused");
        assert!(error.to_string().contains("too large"), "{error}");
        let as_text = format!(r#"{{"start_from": "1-0", "file_count": "{}"}}"#, u64::MAX);
        assert!(parse_stock_state(&as_text).is_err());
        let below = format!(r#"{{"start_from": "1-0", "file_count": {}}}"#, u64::MAX - 1);
        assert_eq!(
            parse_stock_state(&below).expect("valid").next_file_number,
            u64::MAX
        );
    }
}
