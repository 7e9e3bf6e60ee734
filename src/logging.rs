//! Log output: human-readable lines by default, one JSON object per line for log shippers.
//! The level comes from `CONNECTOR_LOG_LEVEL` (a level, or `tracing` directives such as
//! `info,opencti_stream_exporter::stream=debug`). Secrets never reach a log line: they are
//! [`crate::secret::Secret`]s, which format as `[redacted]`, and the HTTP and AWS libraries are
//! kept at `info` whatever the level (their debug and trace output shows request headers), unless
//! a directive names one of them explicitly.

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call once; later calls do nothing. Text lines carry
/// colour escapes only when stderr is a terminal and `NO_COLOR` is unset or empty, so that
/// `docker logs`, journald and log shippers get plain text.
pub fn init(level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_new(with_quiet_libraries(level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = format == LogFormat::Text
        && colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Whether log lines may carry colour escapes: only on a terminal, and never with a non-empty
/// `NO_COLOR` (<https://no-color.org>).
fn colours(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Libraries whose debug output would drown ours and may show request headers.
const LIBRARIES: &[&str] = &[
    "hyper",
    "hyper_util",
    "reqwest",
    "h2",
    "rustls",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sdk_s3",
    "aws_sigv4",
    "sled",
    "s3s",
    "s3s_fs",
    "tower",
    "tower_http",
    "axum",
];

/// `level` plus `<library>=info` for each library the user did not name.
fn with_quiet_libraries(level: &str) -> String {
    let mut directives = vec![level.to_string()];
    directives.extend(
        LIBRARIES
            .iter()
            .filter(|lib| !level.contains(&format!("{lib}=")))
            .map(|lib| format!("{lib}=info")),
    );
    directives.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some(OsStr::new(""))));
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None));
    }

    #[test]
    fn libraries_stay_at_info_unless_named() {
        let filter = with_quiet_libraries("trace");
        assert!(filter.starts_with("trace,"));
        assert!(filter.contains("hyper=info") && filter.contains("aws_sigv4=info"));
        let named = with_quiet_libraries("debug,hyper=debug");
        assert!(!named.contains("hyper=info"));
        assert!(EnvFilter::try_new(filter).is_ok());
    }
}
