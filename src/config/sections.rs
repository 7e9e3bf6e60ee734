//! Reading the configuration, one function per section, in the order `Config::from_source`
//! checks them (the first problem found is the one reported). Every value, default and
//! documentation comes from the table in [`settings`](super::settings).

use std::net::IpAddr;
use std::path::PathBuf;

use super::settings as s;
use super::{
    ChecksumPolicy, Compression, ConfigError, Connector, Destination, Files, LiveStream, LogFormat,
    OpenCti, Output, Reader, S3, StreamTuning, TlsOptions, Upload, UploadChecksum, WalSettings,
    Write, at_least, bucket_name, folder, log_level, parse, s3_host,
};

/// `opencti.*`: the platform, its token and TLS.
pub(super) fn opencti(r: &Reader<'_>) -> Result<OpenCti, ConfigError> {
    Ok(OpenCti {
        url: {
            let (value, origin) = r.required(&s::OPENCTI_URL)?;
            parse::base_url(&value).map_err(|p| ConfigError::new(origin, p))?
        },
        token: r.secret(&s::OPENCTI_TOKEN, &s::OPENCTI_TOKEN_FILE)?,
        tls: TlsOptions {
            verify: r.with_default(&s::OPENCTI_SSL_VERIFY, parse::boolean)?,
            ca_file: r.optional_path(&s::OPENCTI_CA_FILE)?,
        },
        ping_interval: r.with_default(&s::OPENCTI_PING_INTERVAL_SEC, parse::seconds)?,
    })
}

/// `connector.live_stream_*`: which stream, from where, with what.
pub(super) fn live_stream(r: &Reader<'_>) -> Result<LiveStream, ConfigError> {
    if let Some((kind, origin)) = r.text(&s::CONNECTOR_TYPE)
        && !kind.trim().eq_ignore_ascii_case("STREAM")
    {
        return Err(ConfigError::new(
            origin,
            format!(
                "must be STREAM for a stream exporter, got {:?}",
                kind.trim()
            ),
        ));
    }
    let value = LiveStream {
        id: r.optional_text(&s::CONNECTOR_LIVE_STREAM_ID),
        listen_delete: r.with_default(&s::CONNECTOR_LIVE_STREAM_LISTEN_DELETE, parse::boolean)?,
        no_dependencies: r
            .with_default(&s::CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES, parse::boolean)?,
        with_inferences: r
            .with_default(&s::CONNECTOR_LIVE_STREAM_WITH_INFERENCES, parse::boolean)?,
        start_timestamp_ms: r.parsed(&s::CONNECTOR_LIVE_STREAM_START_TIMESTAMP, |t| {
            parse::integer(t, 0, 99_999_999_999_999).map_err(|_| {
                format!(
                    "expected an epoch in milliseconds such as 1718012300000, got {:?}",
                    t.trim()
                )
            })
        })?,
        recover_iso_date: r.parsed(&s::CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE, parse::iso_date)?,
    };
    if value.id.as_deref() == Some("ChangeMe") {
        return Err(ConfigError::new(
            s::CONNECTOR_LIVE_STREAM_ID.env,
            "is still the placeholder ChangeMe; set the id of the live stream to export",
        ));
    }
    Ok(value)
}

/// `connector.*`: identity, logs, the operations endpoint, and the live stream.
pub(super) fn connector(r: &Reader<'_>) -> Result<Connector, ConfigError> {
    let live_stream = live_stream(r)?;
    Ok(Connector {
        id: {
            let (value, origin) = r.required(&s::CONNECTOR_ID)?;
            let value = value.trim().to_string();
            if value == "ChangeMe" {
                return Err(ConfigError::new(
                    origin,
                    "is still the placeholder ChangeMe; set a UUID",
                ));
            }
            value
        },
        name: r
            .text(&s::CONNECTOR_NAME)
            .map(|(v, _)| v.trim().to_string())
            .unwrap_or_default(),
        scope: r
            .text(&s::CONNECTOR_SCOPE)
            .map(|(v, _)| {
                v.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        log_level: r.with_default(&s::CONNECTOR_LOG_LEVEL, log_level)?,
        log_format: r.with_default(&s::CONNECTOR_LOG_FORMAT, |t| {
            match t.trim().to_ascii_lowercase().as_str() {
                "text" | "plain" | "human" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                other => Err(format!("expected text or json, got {other:?}")),
            }
        })?,
        live_stream,
        expose_metrics: r.with_default(&s::CONNECTOR_EXPOSE_METRICS, parse::boolean)?,
        metrics_bind: r.with_default(&s::CONNECTOR_METRICS_BIND, |t| {
            t.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("expected an IP address such as 0.0.0.0, got {:?}", t.trim()))
        })?,
        metrics_port: r.with_default(&s::CONNECTOR_METRICS_PORT, parse::port)?,
        metrics_token: r.optional_secret(
            &s::CONNECTOR_METRICS_TOKEN,
            &s::CONNECTOR_METRICS_TOKEN_FILE,
        )?,
    })
}

/// Where in the destination and in which encoding.
pub(super) fn output(r: &Reader<'_>) -> Result<Output, ConfigError> {
    Ok(Output {
        folder: match r.text(&s::MINIO_FOLDER) {
            Some((value, origin)) => folder(&value).map_err(|p| ConfigError::new(origin, p))?,
            None => String::new(),
        },
        compression: r.with_default(&s::MINIO_COMPRESSION, |t| {
            match t.trim().to_ascii_lowercase().as_str() {
                "none" | "" => Ok(Compression::None),
                "zstd" => Ok(Compression::Zstd),
                other => Err(format!("expected none or zstd, got {other:?}")),
            }
        })?,
    })
}

/// `EXPORT_DIR`, or the S3/MinIO server (`minio.*`).
pub(super) fn destination(r: &Reader<'_>) -> Result<Destination, ConfigError> {
    Ok(match r.optional_text(&s::EXPORT_DIR) {
        Some(dir) => Destination::Directory(PathBuf::from(dir)),
        None => Destination::S3(S3 {
            endpoint: {
                let (value, origin) = r.required(&s::MINIO_ENDPOINT)?;
                s3_host(&value).map_err(|p| ConfigError::new(origin, p))?
            },
            port: {
                let (value, origin) = r.required(&s::MINIO_PORT)?;
                parse::port(&value).map_err(|p| ConfigError::new(origin, p))?
            },
            secure: r.with_default(&s::MINIO_SECURE, parse::boolean)?,
            bucket: {
                let (value, origin) = r.required(&s::MINIO_BUCKET)?;
                bucket_name(value.trim()).map_err(|p| ConfigError::new(origin, p))?
            },
            access_key: r.secret(&s::MINIO_ACCESS_KEY, &s::MINIO_ACCESS_KEY_FILE)?,
            secret_key: r.secret(&s::MINIO_SECRET_KEY, &s::MINIO_SECRET_KEY_FILE)?,
            region: r.text_or_default(&s::MINIO_REGION),
            tls: TlsOptions {
                verify: r.with_default(&s::MINIO_CERT_CHECK, parse::boolean)?,
                ca_file: r.optional_path(&s::MINIO_CA_FILE)?,
            },
            checksums: r.with_default(&s::MINIO_CHECKSUMS, |t| {
                match t.trim().to_ascii_lowercase().as_str() {
                    "when_required" => Ok(ChecksumPolicy::WhenRequired),
                    "when_supported" => Ok(ChecksumPolicy::WhenSupported),
                    other => Err(format!(
                        "expected when_required or when_supported, got {other:?}"
                    )),
                }
            })?,
            upload_checksum: r.with_default(&s::MINIO_UPLOAD_CHECKSUM, |t| {
                match t.trim().to_ascii_lowercase().as_str() {
                    "crc32c" => Ok(UploadChecksum::Crc32c),
                    "md5" => Ok(UploadChecksum::Md5),
                    other => Err(format!("expected crc32c or md5, got {other:?}")),
                }
            })?,
        }),
    })
}

/// `write.*`: when a file is sealed.
pub(super) fn write(r: &Reader<'_>) -> Result<Write, ConfigError> {
    Ok(Write {
        every: r.with_default(&s::WRITE_EVERY_SEC, parse::seconds)?,
        max_bytes: r.with_default(&s::WRITE_MAX_BYTES, |t| {
            at_least(parse::bytes(t)?, 1024, "1024 bytes")
        })?,
    })
}

/// `wal.*`: the write-ahead log; at least two files of `write` fit in its budget.
pub(super) fn wal(r: &Reader<'_>, write: &Write) -> Result<WalSettings, ConfigError> {
    let value = WalSettings {
        dir: PathBuf::from(r.text_or_default(&s::WAL_DIR)),
        max_bytes: r.with_default(&s::WAL_MAX_BYTES, |t| {
            at_least(parse::bytes(t)?, 1 << 20, "1MiB")
        })?,
        adopt_delivered: r.with_default(&s::WAL_ADOPT_DELIVERED, parse::boolean)?,
    };
    if value.max_bytes < write.max_bytes.saturating_mul(2) {
        return Err(ConfigError::new(
            s::WAL_MAX_BYTES.env,
            format!(
                "must be at least twice WRITE_MAX_BYTES ({} bytes) so a full file and the \
             events that follow it fit, got {} bytes",
                write.max_bytes, value.max_bytes
            ),
        ));
    }
    Ok(value)
}

/// `stream.*` and the queue: reconnection, idle timeout, event and queue bounds.
pub(super) fn stream(r: &Reader<'_>) -> Result<StreamTuning, ConfigError> {
    Ok(StreamTuning {
        backoff_max: r.with_default(&s::STREAM_BACKOFF_MAX_SEC, parse::seconds)?,
        idle_timeout: r.with_default(&s::STREAM_IDLE_TIMEOUT_SEC, parse::seconds)?,
        max_event_bytes: r.with_default(&s::STREAM_MAX_EVENT_BYTES, |t| {
            at_least(parse::bytes(t)?, 64 * 1024, "64KiB")
        })?,
        queue_size: r.with_default(&s::QUEUE_SIZE, |t| {
            parse::integer(t, 1, 1_000_000).map(|n| n as usize)
        })?,
        queue_max_bytes: r.with_default(&s::QUEUE_MAX_BYTES, |t| {
            at_least(parse::bytes(t)?, 1024 * 1024, "1MiB")
        })?,
    })
}

/// `files.*`: attached file downloads and their caps.
pub(super) fn files(r: &Reader<'_>) -> Result<Files, ConfigError> {
    Ok(Files {
        concurrency: r.with_default(&s::FILES_CONCURRENCY, |t| {
            parse::integer(t, 1, 64).map(|n| n as usize)
        })?,
        max_bytes: r.with_default(&s::FILES_MAX_BYTES, parse::bytes)?,
        timeout: r.with_default(&s::FILES_TIMEOUT_SEC, parse::seconds)?,
        retry_max: r.with_default(&s::FILES_RETRY_MAX_SEC, parse::seconds)?,
        max_per_event: r.with_default(&s::FILES_MAX_PER_EVENT, |t| {
            parse::integer(t, 0, 100_000).map(|n| n as usize)
        })?,
        max_total_bytes: r.with_default(&s::FILES_MAX_TOTAL_BYTES, parse::bytes)?,
        top_level_copy: r.with_default(&s::FILES_TOP_LEVEL_COPY, parse::boolean)?,
    })
}

/// `upload.*`: retries, timeouts, multipart.
pub(super) fn upload(r: &Reader<'_>) -> Result<Upload, ConfigError> {
    Ok(Upload {
        backoff_max: r.with_default(&s::UPLOAD_BACKOFF_MAX_SEC, parse::seconds)?,
        timeout: r.with_default(&s::UPLOAD_TIMEOUT_SEC, parse::seconds)?,
        multipart_threshold: r.with_default(&s::UPLOAD_MULTIPART_THRESHOLD, |t| {
            at_least(parse::bytes(t)?, 5 << 20, "5MiB (the S3 minimum part size)")
        })?,
    })
}
