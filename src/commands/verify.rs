//! `verify`: reads the bucket (or an export directory) back as the stock importer would and
//! reports numbering gaps, order problems and bad lines. Exits non-zero on any problem.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::cli::VerifyArgs;
use crate::config::Config;
use crate::readback::{ReadbackReport, read_back};
use crate::sink::{DirSink, Sink};

/// Runs `verify` against the configured destination, or `--dir`.
pub async fn run(config: Option<&Config>, args: &VerifyArgs) -> anyhow::Result<()> {
    let (sink, folder): (Arc<dyn Sink>, String) = match (&args.dir, config) {
        (Some(dir), _) => (
            Arc::new(DirSink::new(dir.clone())),
            args.folder
                .clone()
                .or_else(|| config.map(|c| c.output.folder.clone()))
                .unwrap_or_default(),
        ),
        (None, Some(config)) => (
            crate::daemon::sink(config)?,
            args.folder
                .clone()
                .unwrap_or_else(|| config.output.folder.clone()),
        ),
        (None, None) => bail!("give --dir, or a configuration naming the destination"),
    };
    let folder = folder.trim_matches('/');
    let prefix = if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    };
    let progress = std::io::stderr().is_terminal() && !args.json;
    let report = read_back(
        sink.as_ref(),
        &prefix,
        args.from,
        |_| {},
        |key, number| {
            if progress {
                eprint!("\rverifying file {number}: {}\x1b[K", printable(key));
                let _ = std::io::stderr().flush();
            }
        },
    )
    .await
    .with_context(|| format!("reading {} back", sink.describe()))?;
    if progress {
        eprint!("\r\x1b[K");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&sink.describe(), &prefix, &report, args.allow_id_rewinds);
    }
    let rewinds_count = !args.allow_id_rewinds && !report.id_rewinds.is_empty();
    if !report.problems.is_empty() || rewinds_count {
        bail!(
            "{} problem(s) and {} id rewind(s) found",
            report.problems.len(),
            report.id_rewinds.len()
        );
    }
    Ok(())
}

fn print_text(destination: &str, prefix: &str, report: &ReadbackReport, allow_rewinds: bool) {
    println!("destination   {destination} (prefix {prefix:?})");
    println!(
        "files         {} (numbers {}..={})",
        report.files,
        report.first_number.map_or("-".into(), |n| n.to_string()),
        report.last_number.map_or("-".into(), |n| n.to_string())
    );
    println!(
        "lines         {} ({} create, {} update, {} delete, {} merge, {} other)",
        report.lines,
        report.by_type[0],
        report.by_type[1],
        report.by_type[2],
        report.by_type[3],
        report.by_type[4]
    );
    if report.problems.is_empty() {
        println!("result        OK: the stock importer reads every file in order");
    } else {
        println!("result        {} problem(s):", report.problems.len());
        print_list(&report.problems);
    }
    if !report.id_rewinds.is_empty() {
        let verdict = if allow_rewinds {
            "accepted (--allow-id-rewinds)"
        } else {
            "events out of order, unless the server sent them again (a state reset, a reconnection \
             during recovery: --allow-id-rewinds)"
        };
        println!("id rewinds    {}: {verdict}", report.id_rewinds.len());
        print_list(&report.id_rewinds);
    }
}

fn print_list(problems: &[crate::readback::Problem]) {
    for problem in problems {
        match problem.line {
            Some(line) => println!(
                "  {} line {line}: {}",
                printable(&problem.key),
                printable(&problem.what)
            ),
            None => println!(
                "  {}: {}",
                printable(&problem.key),
                printable(&problem.what)
            ),
        }
    }
}

/// `text` with its control characters escaped (`\u{1b}`, `\n`, …), so an object key chosen by
/// whoever can write to the bucket cannot drive the terminal it is printed on.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printed_with_control_characters_escaped() {
        let key = "opencti/stream_1_1\u{1b}[2J\u{1b}]0;owned\u{7}.json\n";
        let shown = printable(key);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("\\u{1b}[2J"), "{shown}");
        assert_eq!(
            printable("opencti/stream_1_1.json"),
            "opencti/stream_1_1.json"
        );
    }
}
