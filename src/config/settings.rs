//! Every configuration setting the exporter reads: its environment variable, its YAML path(s),
//! its default and what it means. This table is the single source of truth for parsing, for
//! `config.yml.sample` (a test checks the sample documents every key) and for the README's
//! settings table, which is generated from it ([`markdown`]; a test keeps the two equal).

use std::fmt::Write as _;

/// One configuration setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Environment variable; it wins over the YAML file, as in pycti.
    pub env: &'static str,
    /// YAML paths, the first one preferred (`write.every_sec` also accepts `write_every_sec`).
    pub yaml: &'static [&'static [&'static str]],
    /// Default value shown to users, or `None` when the setting is mandatory or has no value.
    pub default: Option<&'static str>,
    /// Whether the stock Python exporter (or pycti) reads this setting with the same meaning.
    pub stock: bool,
    /// One line for humans.
    pub help: &'static str,
}

macro_rules! setting {
    ($name:ident, $env:literal, [$($path:expr),+], $default:expr, $stock:expr, $help:literal) => {
        #[doc = $help]
        pub const $name: Setting = Setting {
            env: $env,
            yaml: &[$($path),+],
            default: $default,
            stock: $stock,
            help: $help,
        };
    };
}

setting!(
    OPENCTI_URL,
    "OPENCTI_URL",
    [&["opencti", "url"]],
    None,
    true,
    "Base URL of the OpenCTI platform (mandatory)."
);
setting!(
    OPENCTI_TOKEN,
    "OPENCTI_TOKEN",
    [&["opencti", "token"]],
    None,
    true,
    "API token of the OpenCTI user the exporter runs as (mandatory, secret)."
);
setting!(
    OPENCTI_SSL_VERIFY,
    "OPENCTI_SSL_VERIFY",
    [&["opencti", "ssl_verify"]],
    Some("true"),
    true,
    "Verify OpenCTI's TLS certificate. false accepts any certificate (logged as a warning)."
);
setting!(
    OPENCTI_CA_FILE,
    "OPENCTI_CA_FILE",
    [&["opencti", "ca_file"]],
    None,
    false,
    "PEM file of extra CA certificates to trust for OpenCTI."
);
setting!(
    OPENCTI_PING_INTERVAL_SEC,
    "OPENCTI_PING_INTERVAL_SEC",
    [&["opencti", "ping_interval_sec"]],
    Some("40"),
    false,
    "Seconds between two pings sending the connector state to OpenCTI (pycti pings every 40 s)."
);
setting!(
    CONNECTOR_ID,
    "CONNECTOR_ID",
    [&["connector", "id"]],
    None,
    true,
    "Connector id (a UUID) registered on OpenCTI (mandatory)."
);
setting!(
    CONNECTOR_TYPE,
    "CONNECTOR_TYPE",
    [&["connector", "type"]],
    Some("STREAM"),
    true,
    "Connector type; only STREAM makes sense."
);
setting!(
    CONNECTOR_NAME,
    "CONNECTOR_NAME",
    [&["connector", "name"]],
    Some("StreamExporterConnector"),
    true,
    "Connector name shown on OpenCTI."
);
setting!(
    CONNECTOR_SCOPE,
    "CONNECTOR_SCOPE",
    [&["connector", "scope"]],
    Some("stream-exporter"),
    true,
    "Comma-separated connector scope."
);
setting!(
    CONNECTOR_LOG_LEVEL,
    "CONNECTOR_LOG_LEVEL",
    [&["connector", "log_level"]],
    Some("info"),
    true,
    "error, warn, info, debug or trace (or a tracing filter directive)."
);
setting!(
    CONNECTOR_LOG_FORMAT,
    "CONNECTOR_LOG_FORMAT",
    [&["connector", "log_format"]],
    Some("text"),
    false,
    "text for humans, json for log shippers."
);
setting!(
    CONNECTOR_LIVE_STREAM_ID,
    "CONNECTOR_LIVE_STREAM_ID",
    [&["connector", "live_stream_id"]],
    None,
    true,
    "Id of the live stream to export; unset means the raw /stream (bypass users only)."
);
setting!(
    CONNECTOR_LIVE_STREAM_LISTEN_DELETE,
    "CONNECTOR_LIVE_STREAM_LISTEN_DELETE",
    [&["connector", "live_stream_listen_delete"]],
    Some("true"),
    true,
    "Receive delete events."
);
setting!(
    CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES,
    "CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES",
    [&["connector", "live_stream_no_dependencies"]],
    Some("true"),
    true,
    "Do not ask for the relationships of each element (pycti's default is true; set false for replication)."
);
setting!(
    CONNECTOR_LIVE_STREAM_WITH_INFERENCES,
    "CONNECTOR_LIVE_STREAM_WITH_INFERENCES",
    [&["connector", "live_stream_with_inferences"]],
    Some("false"),
    true,
    "Include inferred data."
);
setting!(
    CONNECTOR_LIVE_STREAM_START_TIMESTAMP,
    "CONNECTOR_LIVE_STREAM_START_TIMESTAMP",
    [&["connector", "live_stream_start_timestamp"]],
    None,
    true,
    "First start only: start from this epoch in milliseconds instead of the beginning (0-0)."
);
setting!(
    CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE,
    "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
    [&["connector", "live_stream_recover_iso_date"]],
    None,
    true,
    "First start only: recovery upper bound (ISO-8601); default: the time of the first start."
);
setting!(
    CONNECTOR_CONSUMER_COUNT,
    "CONNECTOR_CONSUMER_COUNT",
    [&["connector", "consumer_count"]],
    None,
    true,
    "Accepted for compatibility and ignored: uploads are strictly ordered, one at a time."
);
setting!(
    CONNECTOR_CONFIDENCE_LEVEL,
    "CONNECTOR_CONFIDENCE_LEVEL",
    [&["connector", "confidence_level"]],
    None,
    true,
    "Accepted for compatibility and ignored (as by pycti 6 and later)."
);
setting!(
    CONNECTOR_EXPOSE_METRICS,
    "CONNECTOR_EXPOSE_METRICS",
    [&["connector", "expose_metrics"]],
    Some("true"),
    true,
    "Serve /metrics, /healthz, /readyz and /status."
);
setting!(
    CONNECTOR_METRICS_PORT,
    "CONNECTOR_METRICS_PORT",
    [&["connector", "metrics_port"]],
    Some("9095"),
    true,
    "Port of the metrics and health endpoint."
);
setting!(
    CONNECTOR_METRICS_BIND,
    "CONNECTOR_METRICS_BIND",
    [&["connector", "metrics_bind"]],
    Some("0.0.0.0"),
    false,
    "Address the metrics and health endpoint binds to."
);
setting!(
    MINIO_ENDPOINT,
    "MINIO_ENDPOINT",
    [&["minio", "endpoint"]],
    None,
    true,
    "Host name of the S3/MinIO server (mandatory unless EXPORT_DIR is set)."
);
setting!(
    MINIO_PORT,
    "MINIO_PORT",
    [&["minio", "port"]],
    None,
    true,
    "Port of the S3/MinIO server (mandatory unless EXPORT_DIR is set)."
);
setting!(
    MINIO_BUCKET,
    "MINIO_BUCKET",
    [&["minio", "bucket"]],
    None,
    true,
    "Bucket to write to, created if missing (mandatory unless EXPORT_DIR is set)."
);
setting!(
    MINIO_FOLDER,
    "MINIO_FOLDER",
    [&["minio", "folder"]],
    Some(""),
    true,
    "Folder (key prefix) of the files; empty writes at the root of the bucket or directory."
);
setting!(
    MINIO_ACCESS_KEY,
    "MINIO_ACCESS_KEY",
    [&["minio", "access_key"]],
    None,
    true,
    "S3 access key (mandatory unless EXPORT_DIR is set)."
);
setting!(
    MINIO_SECRET_KEY,
    "MINIO_SECRET_KEY",
    [&["minio", "secret_key"]],
    None,
    true,
    "S3 secret key (mandatory unless EXPORT_DIR is set, secret)."
);
setting!(
    MINIO_SECURE,
    "MINIO_SECURE",
    [&["minio", "secure"]],
    Some("false"),
    true,
    "Use https to reach S3/MinIO."
);
setting!(
    MINIO_CERT_CHECK,
    "MINIO_CERT_CHECK",
    [&["minio", "cert_check"]],
    Some("true"),
    true,
    "Verify the S3/MinIO certificate. false accepts any certificate (logged as a warning)."
);
setting!(
    MINIO_CA_FILE,
    "MINIO_CA_FILE",
    [&["minio", "ca_file"]],
    None,
    false,
    "PEM file of extra CA certificates to trust for S3/MinIO."
);
setting!(
    MINIO_REGION,
    "MINIO_REGION",
    [&["minio", "region"]],
    Some(crate::sink::s3::DEFAULT_REGION),
    false,
    "Region used to sign S3 requests."
);
setting!(
    MINIO_COMPRESSION,
    "MINIO_COMPRESSION",
    [&["minio", "compression"]],
    Some("none"),
    false,
    "none (plain NDJSON, what the stock importer reads) or zstd (.json.zst objects)."
);
setting!(
    MINIO_CHECKSUMS,
    "MINIO_CHECKSUMS",
    [&["minio", "checksums"]],
    Some("when_required"),
    false,
    "when_required (only our own checksum header; works with older MinIO) or when_supported (SDK CRC32 trailers too)."
);
setting!(
    MINIO_UPLOAD_CHECKSUM,
    "MINIO_UPLOAD_CHECKSUM",
    [&["minio", "upload_checksum"]],
    Some("crc32c"),
    false,
    "crc32c (x-amz-checksum-crc32c, checked by MinIO and AWS; no extra pass over the file) or md5 (Content-MD5, for servers that ignore x-amz-checksum-crc32c; reads each file once more)."
);
setting!(
    EXPORT_DIR,
    "EXPORT_DIR",
    [&["export", "dir"]],
    None,
    false,
    "Write the files to this directory instead of S3 (removable-media transfer)."
);
setting!(
    WRITE_EVERY_SEC,
    "WRITE_EVERY_SEC",
    [&["write", "every_sec"], &["write_every_sec"]],
    Some("60"),
    true,
    "Seal and upload a file at least this often (seconds) when events arrived."
);
setting!(
    WRITE_MAX_BYTES,
    "WRITE_MAX_BYTES",
    [&["write", "max_bytes"]],
    Some("16MiB"),
    false,
    "Largest file (raw NDJSON); a file is sealed sooner when it reaches it. One bigger event gets a file of its own."
);
setting!(
    WAL_DIR,
    "WAL_DIR",
    [&["wal", "dir"]],
    Some("./data"),
    false,
    "Directory of the write-ahead log and sealed segments; keep it on a persistent volume."
);
setting!(
    WAL_MAX_BYTES,
    "WAL_MAX_BYTES",
    [&["wal", "max_bytes"]],
    Some("10GiB"),
    false,
    "Disk budget of the WAL and segments; when full, the exporter stops reading the stream."
);
setting!(
    WAL_ADOPT_DELIVERED,
    "WAL_ADOPT_DELIVERED",
    [&["wal", "adopt_delivered"]],
    Some("true"),
    false,
    "On a new WAL, resume after what the platform's connector state and the destination show was already delivered, and number on from the highest file; false starts a new numbering at 1."
);
setting!(
    QUEUE_SIZE,
    "QUEUE_SIZE",
    [&["queue", "size"]],
    Some("1000"),
    true,
    "Events buffered in memory between the stream and the WAL writer."
);
setting!(
    QUEUE_MAX_BYTES,
    "QUEUE_MAX_BYTES",
    [&["queue", "max_bytes"]],
    Some("256MiB"),
    false,
    "Bytes held in memory between the stream and the WAL (events waiting for their files, downloaded files, lines not yet in the WAL); reading pauses while it is reached."
);
setting!(
    STREAM_BACKOFF_MAX_SEC,
    "STREAM_BACKOFF_MAX_SEC",
    [&["stream", "backoff_max_sec"]],
    Some("60"),
    false,
    "Longest wait between two reconnections to OpenCTI (seconds)."
);
setting!(
    STREAM_IDLE_TIMEOUT_SEC,
    "STREAM_IDLE_TIMEOUT_SEC",
    [&["stream", "idle_timeout_sec"]],
    Some("45"),
    false,
    "Reconnect when no event with an id arrived for this long (seconds)."
);
setting!(
    STREAM_MAX_EVENT_BYTES,
    "STREAM_MAX_EVENT_BYTES",
    [&["stream", "max_event_bytes"]],
    Some("64MiB"),
    false,
    "Largest SSE event accepted; a bigger one goes to the dead-letter file."
);
setting!(
    FILES_CONCURRENCY,
    "FILES_CONCURRENCY",
    [&["files", "concurrency"]],
    Some("4"),
    false,
    "Attached files downloaded at once from OpenCTI."
);
setting!(
    FILES_MAX_BYTES,
    "FILES_MAX_BYTES",
    [&["files", "max_bytes"]],
    Some("32MiB"),
    false,
    "Largest attached file embedded; a bigger one is skipped with a warning."
);
setting!(
    FILES_TIMEOUT_SEC,
    "FILES_TIMEOUT_SEC",
    [&["files", "timeout_sec"]],
    Some("300"),
    false,
    "Time limit of one file download attempt (seconds)."
);
setting!(
    FILES_RETRY_MAX_SEC,
    "FILES_RETRY_MAX_SEC",
    [&["files", "retry_max_sec"]],
    Some("180"),
    false,
    "Time limit of all the attempts at one file, retries of transient failures included (seconds)."
);
setting!(
    FILES_MAX_PER_EVENT,
    "FILES_MAX_PER_EVENT",
    [&["files", "max_per_event"]],
    Some("100"),
    false,
    "Files embedded per event; the others are exported without data and recorded as missing."
);
setting!(
    FILES_MAX_TOTAL_BYTES,
    "FILES_MAX_TOTAL_BYTES",
    [&["files", "max_total_bytes"]],
    Some("128MiB"),
    false,
    "Bytes of files embedded per event; files past it are exported without data and recorded as missing."
);
setting!(
    FILES_TOP_LEVEL_COPY,
    "FILES_TOP_LEVEL_COPY",
    [&["files", "top_level_copy"]],
    Some("true"),
    false,
    "Also write the embedded files as a top-level data.files list, as the stock exporter does."
);
setting!(
    UPLOAD_BACKOFF_MAX_SEC,
    "UPLOAD_BACKOFF_MAX_SEC",
    [&["upload", "backoff_max_sec"]],
    Some("60"),
    false,
    "Longest wait between two upload attempts (seconds)."
);
setting!(
    UPLOAD_TIMEOUT_SEC,
    "UPLOAD_TIMEOUT_SEC",
    [&["upload", "timeout_sec"]],
    Some("300"),
    false,
    "Time limit of one upload attempt (seconds)."
);
setting!(
    UPLOAD_MULTIPART_THRESHOLD,
    "UPLOAD_MULTIPART_THRESHOLD",
    [&["upload", "multipart_threshold"]],
    Some("64MiB"),
    false,
    "Objects larger than this are uploaded in parts."
);

// Secrets read from files (the Docker secrets convention) and the endpoint's token.
setting!(
    OPENCTI_TOKEN_FILE,
    "OPENCTI_TOKEN_FILE",
    [&["opencti", "token_file"]],
    None,
    false,
    "File holding OPENCTI_TOKEN (Docker secrets; one trailing newline is ignored). Not together with OPENCTI_TOKEN."
);
setting!(
    MINIO_ACCESS_KEY_FILE,
    "MINIO_ACCESS_KEY_FILE",
    [&["minio", "access_key_file"]],
    None,
    false,
    "File holding MINIO_ACCESS_KEY (Docker secrets; one trailing newline is ignored). Not together with MINIO_ACCESS_KEY."
);
setting!(
    MINIO_SECRET_KEY_FILE,
    "MINIO_SECRET_KEY_FILE",
    [&["minio", "secret_key_file"]],
    None,
    false,
    "File holding MINIO_SECRET_KEY (Docker secrets; one trailing newline is ignored). Not together with MINIO_SECRET_KEY."
);
setting!(
    CONNECTOR_METRICS_TOKEN,
    "CONNECTOR_METRICS_TOKEN",
    [&["connector", "metrics_token"]],
    None,
    false,
    "Bearer token required on /metrics and /status (secret); unset leaves them open. /healthz and /readyz stay open."
);
setting!(
    CONNECTOR_METRICS_TOKEN_FILE,
    "CONNECTOR_METRICS_TOKEN_FILE",
    [&["connector", "metrics_token_file"]],
    None,
    false,
    "File holding CONNECTOR_METRICS_TOKEN (Docker secrets; one trailing newline is ignored). Not together with CONNECTOR_METRICS_TOKEN."
);

/// Every setting, in the order of `config.yml.sample`.
pub const ALL: &[Setting] = &[
    OPENCTI_URL,
    OPENCTI_TOKEN,
    OPENCTI_SSL_VERIFY,
    OPENCTI_CA_FILE,
    OPENCTI_PING_INTERVAL_SEC,
    CONNECTOR_ID,
    CONNECTOR_TYPE,
    CONNECTOR_NAME,
    CONNECTOR_SCOPE,
    CONNECTOR_LOG_LEVEL,
    CONNECTOR_LOG_FORMAT,
    CONNECTOR_LIVE_STREAM_ID,
    CONNECTOR_LIVE_STREAM_LISTEN_DELETE,
    CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES,
    CONNECTOR_LIVE_STREAM_WITH_INFERENCES,
    CONNECTOR_LIVE_STREAM_START_TIMESTAMP,
    CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE,
    CONNECTOR_CONSUMER_COUNT,
    CONNECTOR_CONFIDENCE_LEVEL,
    CONNECTOR_EXPOSE_METRICS,
    CONNECTOR_METRICS_PORT,
    CONNECTOR_METRICS_BIND,
    MINIO_ENDPOINT,
    MINIO_PORT,
    MINIO_BUCKET,
    MINIO_FOLDER,
    MINIO_ACCESS_KEY,
    MINIO_SECRET_KEY,
    MINIO_SECURE,
    MINIO_CERT_CHECK,
    MINIO_CA_FILE,
    MINIO_REGION,
    MINIO_COMPRESSION,
    MINIO_CHECKSUMS,
    MINIO_UPLOAD_CHECKSUM,
    EXPORT_DIR,
    WRITE_EVERY_SEC,
    WRITE_MAX_BYTES,
    WAL_DIR,
    WAL_MAX_BYTES,
    WAL_ADOPT_DELIVERED,
    QUEUE_SIZE,
    QUEUE_MAX_BYTES,
    STREAM_BACKOFF_MAX_SEC,
    STREAM_IDLE_TIMEOUT_SEC,
    STREAM_MAX_EVENT_BYTES,
    FILES_CONCURRENCY,
    FILES_MAX_BYTES,
    FILES_TIMEOUT_SEC,
    FILES_RETRY_MAX_SEC,
    FILES_MAX_PER_EVENT,
    FILES_MAX_TOTAL_BYTES,
    FILES_TOP_LEVEL_COPY,
    UPLOAD_BACKOFF_MAX_SEC,
    UPLOAD_TIMEOUT_SEC,
    UPLOAD_MULTIPART_THRESHOLD,
    // Secrets read from files and the endpoint's token.
    OPENCTI_TOKEN_FILE,
    MINIO_ACCESS_KEY_FILE,
    MINIO_SECRET_KEY_FILE,
    CONNECTOR_METRICS_TOKEN,
    CONNECTOR_METRICS_TOKEN_FILE,
];

/// The settings as the README's Markdown table: environment variable, YAML path(s), default
/// (`—` for none, `(empty)` for an empty one), whether the stock connector reads it, meaning.
pub fn markdown() -> String {
    let mut out =
        String::from("| environment | YAML | default | stock | meaning |\n|---|---|---|---|---|\n");
    for setting in ALL {
        let yaml = setting
            .yaml
            .iter()
            .map(|path| format!("`{}`", path.join(".")))
            .collect::<Vec<_>>()
            .join(" / ");
        let default = match setting.default {
            None => "—".to_string(),
            Some("") => "(empty)".to_string(),
            Some(value) => format!("`{value}`"),
        };
        let stock = if setting.stock { "yes" } else { "" };
        let _ = writeln!(
            out,
            "| `{}` | {yaml} | {default} | {stock} | {} |",
            setting.env, setting.help
        );
    }
    out
}
