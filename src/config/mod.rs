//! Configuration: every variable and YAML key of the stock Python exporter with the same
//! meaning (docs/opencti-protocol.md#stock-configuration), plus this exporter's own, environment
//! over `config.yml`.
//!
//! Loading validates everything up front. A missing mandatory value or an invalid one is a
//! [`ConfigError`] naming the variable and what is wrong; the binary prints it on one line and
//! exits with code 2. Secrets are wrapped in [`Secret`] as soon as they are read.

pub mod parse;
mod sections;
pub mod settings;
pub mod source;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;
pub use crate::sink::{ChecksumPolicy, Compression, S3Settings, UploadChecksum};
pub use crate::tls::TlsOptions;
use settings::Setting;
pub use source::Source;

/// A configuration problem: which setting, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable (or `key (file)`) the user must fix.
    pub variable: String,
    /// What is wrong, never containing a secret value.
    pub problem: String,
}

impl ConfigError {
    /// A problem with `variable`.
    pub fn new(variable: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            variable: variable.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Where and how to reach OpenCTI.
#[derive(Debug, Clone)]
pub struct OpenCti {
    /// Base URL without a trailing `/`.
    pub url: String,
    /// API token.
    pub token: Secret,
    /// TLS verification for the stream, file downloads and the API.
    pub tls: TlsOptions,
    /// Time between two pings of the connector state.
    pub ping_interval: Duration,
}

/// The live stream to follow and how to ask for it (docs/opencti-protocol.md#stream-parameters,
/// docs/opencti-protocol.md#pycti-request and docs/opencti-protocol.md#start-position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStream {
    /// Stream id; `None` means the raw `/stream`.
    pub id: Option<String>,
    /// `listen-delete` header.
    pub listen_delete: bool,
    /// `no-dependencies` header.
    pub no_dependencies: bool,
    /// `with-inferences` header.
    pub with_inferences: bool,
    /// First start only: start from this epoch in milliseconds (`<ms>-0`).
    pub start_timestamp_ms: Option<u64>,
    /// First start only: recovery upper bound; `None` means "now" at the first start.
    pub recover_iso_date: Option<String>,
}

/// The connector's identity on OpenCTI and its local behaviour.
#[derive(Debug, Clone)]
pub struct Connector {
    /// Connector id.
    pub id: String,
    /// Connector name.
    pub name: String,
    /// Connector scope, comma-split.
    pub scope: Vec<String>,
    /// `tracing` filter directive (for example `info`).
    pub log_level: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// Live stream selection.
    pub live_stream: LiveStream,
    /// Serve the metrics and health endpoint.
    pub expose_metrics: bool,
    /// Address of the metrics and health endpoint.
    pub metrics_bind: IpAddr,
    /// Port of the metrics and health endpoint.
    pub metrics_port: u16,
    /// Bearer token `/metrics` and `/status` require, if set.
    pub metrics_token: Option<Secret>,
}

/// S3 / MinIO destination.
#[derive(Debug, Clone)]
pub struct S3 {
    /// Host name (or IP) of the server.
    pub endpoint: String,
    /// Port of the server.
    pub port: u16,
    /// https when true.
    pub secure: bool,
    /// Bucket, created if missing.
    pub bucket: String,
    /// Access key id.
    pub access_key: Secret,
    /// Secret access key.
    pub secret_key: Secret,
    /// Signing region.
    pub region: String,
    /// TLS verification.
    pub tls: TlsOptions,
    /// Which request checksums the SDK adds.
    pub checksums: ChecksumPolicy,
    /// The checksum header proving each PUT's body.
    pub upload_checksum: UploadChecksum,
}

impl S3 {
    /// `http(s)://endpoint:port`.
    pub fn endpoint_url(&self) -> String {
        S3Settings::endpoint_url(&self.endpoint, self.port, self.secure)
    }
}

/// Where the files go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// An S3-compatible bucket.
    S3(S3),
    /// A local directory (removable media).
    Directory(PathBuf),
}

/// Output naming and encoding, common to every destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Key prefix, without leading or trailing `/` (may be empty).
    pub folder: String,
    /// Object encoding.
    pub compression: Compression,
}

/// Batching of events into files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    /// Seal at least this often when events arrived.
    pub every: Duration,
    /// Largest file (raw NDJSON bytes).
    pub max_bytes: u64,
}

/// The write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSettings {
    /// Directory of the WAL and segments.
    pub dir: PathBuf,
    /// Disk budget.
    pub max_bytes: u64,
    /// On a new WAL, adopt the delivered position and numbering found on the platform and in
    /// the destination (see `crate::adopt`).
    pub adopt_delivered: bool,
}

/// Stream client tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTuning {
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// Reconnect after this long without an event carrying an id.
    pub idle_timeout: Duration,
    /// Largest SSE event accepted.
    pub max_event_bytes: u64,
    /// Events buffered between the stream and the WAL writer.
    pub queue_size: usize,
    /// Bytes held between the stream and the WAL.
    pub queue_max_bytes: u64,
}

/// Attached file downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Files {
    /// Downloads at once.
    pub concurrency: usize,
    /// Largest file embedded.
    pub max_bytes: u64,
    /// Time limit of one download.
    pub timeout: Duration,
    /// Time limit of all the attempts at one file.
    pub retry_max: Duration,
    /// Files embedded per event.
    pub max_per_event: usize,
    /// Bytes of files embedded per event.
    pub max_total_bytes: u64,
    /// Keep the stock exporter's top-level `data.files` copy.
    pub top_level_copy: bool,
}

/// Upload tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upload {
    /// Longest delay between attempts.
    pub backoff_max: Duration,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// Multipart above this size.
    pub multipart_threshold: u64,
}

/// The whole, validated configuration of the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// OpenCTI endpoint and credentials.
    pub opencti: OpenCti,
    /// Connector identity and stream selection.
    pub connector: Connector,
    /// Where files go.
    pub destination: Destination,
    /// File naming and encoding.
    pub output: Output,
    /// Batching into files.
    pub write: Write,
    /// Write-ahead log.
    pub wal: WalSettings,
    /// Stream client tuning.
    pub stream: StreamTuning,
    /// File downloads.
    pub files: Files,
    /// Upload tuning.
    pub upload: Upload,
}

/// Typed lookups over a [`Source`], turning every problem into a [`ConfigError`].
struct Reader<'a> {
    source: &'a Source,
}

impl Reader<'_> {
    fn raw(&self, setting: &Setting) -> Option<source::Raw> {
        self.source.get(setting)
    }

    /// The value, or its documented default, or `None`.
    fn text(&self, setting: &Setting) -> Option<(String, String)> {
        match self.raw(setting) {
            Some(raw) => Some((raw.value, raw.origin)),
            None => setting
                .default
                .map(|d| (d.to_string(), format!("{} (default)", setting.env))),
        }
    }

    /// The value, trimmed; its default (from the settings table, the one place defaults live)
    /// when unset or empty.
    fn text_or_default(&self, setting: &Setting) -> String {
        self.optional_text(setting)
            .or_else(|| setting.default.map(str::to_string))
            .unwrap_or_default()
    }

    fn required(&self, setting: &Setting) -> Result<(String, String), ConfigError> {
        match self.raw(setting) {
            Some(raw) if !raw.value.trim().is_empty() => Ok((raw.value, raw.origin)),
            Some(raw) => Err(ConfigError::new(raw.origin, "must not be empty")),
            None => Err(ConfigError::new(
                setting.env,
                format!("is required ({})", setting.help),
            )),
        }
    }

    fn parsed<T>(
        &self,
        setting: &Setting,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.text(setting) {
            Some((value, _)) if value.trim().is_empty() && setting.default.is_none() => Ok(None),
            Some((value, origin)) => parse(&value)
                .map(Some)
                .map_err(|problem| ConfigError::new(origin, problem)),
            None => Ok(None),
        }
    }

    fn with_default<T>(
        &self,
        setting: &Setting,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parsed(setting, parse)?.ok_or_else(|| {
            ConfigError::new(setting.env, "has no value and no default (internal error)")
        })
    }

    fn optional_text(&self, setting: &Setting) -> Option<String> {
        self.raw(setting)
            .map(|raw| raw.value.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn optional_path(&self, setting: &Setting) -> Result<Option<PathBuf>, ConfigError> {
        let Some(raw) = self.raw(setting) else {
            return Ok(None);
        };
        let value = raw.value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(value);
        if !path.is_file() {
            return Err(ConfigError::new(
                raw.origin,
                format!("{} is not a readable file", path.display()),
            ));
        }
        Ok(Some(path))
    }

    fn secret(&self, setting: &Setting, file: &Setting) -> Result<Secret, ConfigError> {
        self.optional_secret(setting, file)?.ok_or_else(|| {
            ConfigError::new(
                setting.env,
                format!("is required, or {} ({})", file.env, setting.help),
            )
        })
    }

    /// A secret given by `setting`, or read from the file named by `file` (the Docker secrets
    /// convention: `OPENCTI_TOKEN_FILE=/run/secrets/opencti_token`, one trailing newline
    /// ignored). Both set is an error. The value never goes into an error: only the setting's
    /// name and the file's path.
    fn optional_secret(
        &self,
        setting: &Setting,
        file: &Setting,
    ) -> Result<Option<Secret>, ConfigError> {
        let value = self.raw(setting);
        let path = self.raw(file).filter(|raw| !raw.value.trim().is_empty());
        match (value, path) {
            (Some(value), Some(path)) => Err(ConfigError::new(
                path.origin,
                format!(
                    "is set together with {}: set only one of them",
                    value.origin
                ),
            )),
            (None, Some(path)) => read_secret_file(path.value.trim())
                .map(|value| Some(Secret::new(value)))
                .map_err(|problem| ConfigError::new(path.origin, problem)),
            (Some(value), None) if value.value.trim().is_empty() => {
                Err(ConfigError::new(value.origin, "must not be empty"))
            }
            (Some(value), None) => Ok(Some(Secret::new(value.value.trim()))),
            (None, None) => Ok(None),
        }
    }
}

impl Config {
    /// Reads and validates the configuration from `source`.
    pub fn from_source(source: &Source) -> Result<Self, ConfigError> {
        let r = Reader { source };
        let opencti = sections::opencti(&r)?;
        let connector = sections::connector(&r)?;
        let output = sections::output(&r)?;
        let destination = sections::destination(&r)?;
        let write = sections::write(&r)?;
        let wal = sections::wal(&r, &write)?;
        Ok(Self {
            opencti,
            connector,
            output,
            destination,
            write,
            wal,
            stream: sections::stream(&r)?,
            files: sections::files(&r)?,
            upload: sections::upload(&r)?,
        })
    }

    /// Settings the stock exporter accepted that this one ignores, with a reason, to log once
    /// at start-up.
    pub fn ignored_settings(source: &Source) -> Vec<String> {
        [
            &settings::CONNECTOR_CONSUMER_COUNT,
            &settings::CONNECTOR_CONFIDENCE_LEVEL,
        ]
        .into_iter()
        .filter_map(|setting| {
            source
                .get(setting)
                .map(|raw| format!("{} is ignored: {}", raw.origin, setting.help))
        })
        .collect()
    }
}

/// The secret in the file at `path`, without one trailing newline (`\n` or `\r\n`, as `echo`
/// and editors leave); anything else is kept. An empty secret is refused.
fn read_secret_file(path: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("cannot read {path}: {error}"))?;
    let value = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if value.is_empty() {
        return Err(format!("the file {path} is empty"));
    }
    Ok(value.to_string())
}

/// Longest folder: S3 keys hold at most 1024 bytes, and the file name needs about 40.
const MAX_FOLDER_BYTES: usize = 900;

/// `MINIO_FOLDER` without its leading and trailing `/`, checked once at start-up so that a key
/// the destination would refuse stops start-up rather than an upload retried forever: segments
/// separated by `/`, none empty, `.` or `..`, no control character or backslash.
fn folder(text: &str) -> Result<String, String> {
    let folder = text.trim().trim_matches('/');
    if folder.len() > MAX_FOLDER_BYTES {
        return Err(format!(
            "must be at most {MAX_FOLDER_BYTES} bytes, got {}",
            folder.len()
        ));
    }
    if let Some(bad) = folder.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(format!(
            "must not contain {bad:?}: use '/' to separate folders"
        ));
    }
    if !folder.is_empty()
        && let Some(bad) = folder
            .split('/')
            .find(|segment| segment.is_empty() || *segment == "." || *segment == "..")
    {
        return Err(format!(
            "has an invalid folder name {bad:?} in {folder:?}: no empty, '.' or '..' parts"
        ));
    }
    Ok(folder.to_string())
}

fn at_least(value: u64, min: u64, shown: &str) -> Result<u64, String> {
    if value < min {
        Err(format!("must be at least {shown}, got {value}"))
    } else {
        Ok(value)
    }
}

fn log_level(text: &str) -> Result<String, String> {
    let level = text.trim().to_ascii_lowercase();
    let level = match level.as_str() {
        "warning" => "warn".to_string(),
        "critical" => "error".to_string(),
        _ => level,
    };
    let known = ["off", "error", "warn", "info", "debug", "trace"];
    let is_directive = level.contains('=');
    if (known.contains(&level.as_str()) || is_directive)
        && tracing_subscriber::EnvFilter::try_new(&level).is_ok()
    {
        Ok(level)
    } else {
        Err(format!(
            "expected error, warn, info, debug or trace (or a directive such as \
             info,opencti_stream_exporter=debug), got {:?}",
            text.trim()
        ))
    }
}

/// The MinIO endpoint is a host name, as in the stock exporter (`MINIO_PORT` and
/// `MINIO_SECURE` give the rest); a full URL is accepted and reduced to its host when its
/// scheme and port agree with those settings.
fn s3_host(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let host = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .unwrap_or(trimmed);
    if host.is_empty()
        || host.contains('/')
        || host.contains('@')
        || host.contains(char::is_whitespace)
    {
        return Err(format!(
            "expected a host name such as minio (the port goes in MINIO_PORT), got {trimmed:?}"
        ));
    }
    if let Some((name, port)) = host.rsplit_once(':')
        && !name.contains(':')
        && port.chars().all(|c| c.is_ascii_digit())
    {
        return Err(format!(
            "expected a host name without a port (set MINIO_PORT={port}), got {trimmed:?}"
        ));
    }
    Ok(host.to_string())
}

/// S3 bucket naming rules (3–63 characters of lowercase letters, digits, `.` and `-`,
/// starting and ending with a letter or digit).
fn bucket_name(name: &str) -> Result<String, String> {
    let valid_chars = name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
    let valid_ends = name
        .bytes()
        .next()
        .zip(name.bytes().last())
        .is_some_and(|(a, b)| a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric());
    if (3..=63).contains(&name.len()) && valid_chars && valid_ends {
        Ok(name.to_string())
    } else {
        Err(format!(
            "expected a bucket name of 3 to 63 lowercase letters, digits, dots and hyphens, got {name:?}"
        ))
    }
}

#[cfg(test)]
mod tests;
