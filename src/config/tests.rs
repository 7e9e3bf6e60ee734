use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn minimal_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("OPENCTI_URL", "http://opencti:8080/"),
        ("OPENCTI_TOKEN", "tok-123"),
        ("CONNECTOR_ID", "2f3a5c1e-0000-4000-8000-000000000001"),
        ("CONNECTOR_LIVE_STREAM_ID", "live-1"),
        ("MINIO_ENDPOINT", "minio"),
        ("MINIO_PORT", "9000"),
        ("MINIO_BUCKET", "opencti-export"),
        ("MINIO_FOLDER", "opencti-stream"),
        ("MINIO_ACCESS_KEY", "AKIA"),
        ("MINIO_SECRET_KEY", "s3cr3t-value"),
    ]
}

fn load(env: &[(&str, &str)], yaml: Option<&str>) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let yaml = yaml.map(|text| {
        (
            PathBuf::from("config.yml"),
            serde_norway::from_str(text).unwrap_or(serde_norway::Value::Null),
        )
    });
    Config::from_source(&Source::new(env, yaml))
}

fn with(overrides: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = minimal_env();
    for (key, value) in overrides {
        env.retain(|(k, _)| k != key);
        env.push((key, value));
    }
    env
}

fn without(key: &str) -> Vec<(&'static str, &'static str)> {
    minimal_env()
        .into_iter()
        .filter(|(k, _)| *k != key)
        .collect()
}

#[test]
fn defaults_match_the_documented_table() {
    let config = load(&minimal_env(), None).expect("valid");
    assert_eq!(config.opencti.url, "http://opencti:8080");
    assert_eq!(config.write.every, Duration::from_secs(60));
    assert_eq!(config.write.max_bytes, 16 << 20);
    assert_eq!(config.wal.max_bytes, 10 << 30);
    assert_eq!(config.wal.dir, PathBuf::from("./data"));
    assert_eq!(config.output.compression, Compression::None);
    assert_eq!(config.output.folder, "opencti-stream");
    assert!(config.connector.live_stream.listen_delete);
    assert!(config.connector.live_stream.no_dependencies);
    assert!(!config.connector.live_stream.with_inferences);
    assert_eq!(config.connector.metrics_port, 9095);
    assert!(config.connector.expose_metrics);
    assert_eq!(config.stream.idle_timeout, Duration::from_secs(45));
    assert_eq!(config.stream.backoff_max, Duration::from_secs(60));
    let Destination::S3(s3) = &config.destination else {
        panic!("expected S3");
    };
    assert_eq!(s3.endpoint_url(), "http://minio:9000");
    assert_eq!(s3.checksums, ChecksumPolicy::WhenRequired);
    assert_eq!(s3.upload_checksum, UploadChecksum::Crc32c);
    assert!(s3.tls.verify);
    for setting in settings::ALL {
        if let Some(default) = setting.default {
            assert!(!default.contains("ChangeMe"), "{}", setting.env);
        }
    }
}

#[test]
fn every_stock_yaml_key_is_read() {
    let yaml = r#"
opencti:
  url: "http://yaml-opencti:8080"
  token: "yaml-token"
connector:
  id: "yaml-id"
  type: "STREAM"
  name: "Exporter"
  scope: "stream-exporter,other"
  log_level: "debug"
  live_stream_id: "yaml-stream"
  live_stream_listen_delete: false
  live_stream_no_dependencies: false
  live_stream_with_inferences: true
  live_stream_start_timestamp: 1718012300000
  live_stream_recover_iso_date: "2024-06-10T09:38:20Z"
  expose_metrics: false
  metrics_port: 9100
minio:
  endpoint: "yaml-minio"
  port: 443
  bucket: "yaml-bucket"
  folder: "/yaml/folder/"
  access_key: "ak"
  secret_key: "sk"
  secure: true
  cert_check: false
write:
  every_sec: 900
queue:
  size: 500
"#;
    let config = load(&[], Some(yaml)).expect("valid yaml config");
    assert_eq!(config.opencti.url, "http://yaml-opencti:8080");
    assert_eq!(config.connector.id, "yaml-id");
    assert_eq!(config.connector.scope, ["stream-exporter", "other"]);
    assert_eq!(config.connector.log_level, "debug");
    let live = &config.connector.live_stream;
    assert_eq!(live.id.as_deref(), Some("yaml-stream"));
    assert!(!live.listen_delete && !live.no_dependencies && live.with_inferences);
    assert_eq!(live.start_timestamp_ms, Some(1_718_012_300_000));
    assert_eq!(
        live.recover_iso_date.as_deref(),
        Some("2024-06-10T09:38:20Z")
    );
    assert!(!config.connector.expose_metrics);
    assert_eq!(config.connector.metrics_port, 9100);
    assert_eq!(config.output.folder, "yaml/folder");
    assert_eq!(config.write.every, Duration::from_secs(900));
    assert_eq!(config.stream.queue_size, 500);
    let Destination::S3(s3) = &config.destination else {
        panic!("expected S3");
    };
    assert_eq!(s3.endpoint_url(), "https://yaml-minio:443");
    assert!(!s3.tls.verify);
    assert_eq!(s3.secret_key.expose(), "sk");
}

#[test]
fn environment_overrides_yaml_and_queue_size_from_env_is_a_number() {
    let yaml = "write:\n  every_sec: 900\n";
    let env = with(&[("WRITE_EVERY_SEC", "10"), ("QUEUE_SIZE", "500")]);
    let config = load(&env, Some(yaml)).expect("valid");
    assert_eq!(config.write.every, Duration::from_secs(10));
    assert_eq!(config.stream.queue_size, 500);
}

#[test]
fn the_upload_checksum_can_be_content_md5() {
    let config = load(&with(&[("MINIO_UPLOAD_CHECKSUM", " MD5 ")]), None).unwrap();
    let Destination::S3(s3) = &config.destination else {
        panic!("expected S3");
    };
    assert_eq!(s3.upload_checksum, UploadChecksum::Md5);
}

#[test]
fn export_dir_replaces_the_minio_settings() {
    let env = vec![
        ("OPENCTI_URL", "http://opencti:8080"),
        ("OPENCTI_TOKEN", "t"),
        ("CONNECTOR_ID", "id"),
        ("EXPORT_DIR", "/mnt/usb"),
        ("MINIO_COMPRESSION", "zstd"),
    ];
    let config = load(&env, None).expect("valid");
    assert!(
        matches!(config.destination, Destination::Directory(ref d) if d == &PathBuf::from("/mnt/usb"))
    );
    assert_eq!(config.output.compression, Compression::Zstd);
    assert_eq!(config.output.folder, "");
}

/// Environment, the variable the error must name, and a phrase of the problem.
type ErrorCase = (
    Vec<(&'static str, &'static str)>,
    &'static str,
    &'static str,
);

#[test]
fn errors_name_the_variable_and_the_problem() {
    let cases: Vec<ErrorCase> = vec![
        (without("OPENCTI_URL"), "OPENCTI_URL", "is required"),
        (without("MINIO_BUCKET"), "MINIO_BUCKET", "is required"),
        (
            with(&[("MINIO_PORT", "ninety")]),
            "MINIO_PORT",
            "port number",
        ),
        (
            with(&[("MINIO_PORT", "70000")]),
            "MINIO_PORT",
            "port number",
        ),
        (
            with(&[("MINIO_UPLOAD_CHECKSUM", "sha1")]),
            "MINIO_UPLOAD_CHECKSUM",
            "expected crc32c or md5",
        ),
        (
            with(&[("WRITE_EVERY_SEC", "0")]),
            "WRITE_EVERY_SEC",
            "from 1",
        ),
        (
            with(&[("WRITE_EVERY_SEC", "soon")]),
            "WRITE_EVERY_SEC",
            "whole number",
        ),
        (
            with(&[("MINIO_SECURE", "maybe")]),
            "MINIO_SECURE",
            "true or false",
        ),
        (
            with(&[("MINIO_COMPRESSION", "gzip")]),
            "MINIO_COMPRESSION",
            "none or zstd",
        ),
        (with(&[("WAL_MAX_BYTES", "lots")]), "WAL_MAX_BYTES", "size"),
        (
            with(&[("WAL_MAX_BYTES", "24MiB")]),
            "WAL_MAX_BYTES",
            "twice WRITE_MAX_BYTES",
        ),
        (with(&[("OPENCTI_URL", "opencti")]), "OPENCTI_URL", "URL"),
        (
            with(&[("MINIO_ENDPOINT", "minio:9000")]),
            "MINIO_ENDPOINT",
            "MINIO_PORT=9000",
        ),
        (
            with(&[("MINIO_BUCKET", "Bad_Bucket")]),
            "MINIO_BUCKET",
            "bucket name",
        ),
        (
            with(&[("CONNECTOR_TYPE", "EXTERNAL_IMPORT")]),
            "CONNECTOR_TYPE",
            "STREAM",
        ),
        (
            with(&[("CONNECTOR_LIVE_STREAM_ID", "ChangeMe")]),
            "CONNECTOR_LIVE_STREAM_ID",
            "ChangeMe",
        ),
        (
            with(&[("CONNECTOR_LIVE_STREAM_START_TIMESTAMP", "2024-01-01")]),
            "CONNECTOR_LIVE_STREAM_START_TIMESTAMP",
            "milliseconds",
        ),
        (
            with(&[("CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE", "last week")]),
            "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
            "ISO-8601",
        ),
        (
            with(&[("MINIO_CA_FILE", "/nonexistent/ca.pem")]),
            "MINIO_CA_FILE",
            "readable file",
        ),
        (
            with(&[("CONNECTOR_LOG_LEVEL", "loud")]),
            "CONNECTOR_LOG_LEVEL",
            "debug",
        ),
        (
            with(&[("OPENCTI_TOKEN", "")]),
            "OPENCTI_TOKEN",
            "must not be empty",
        ),
    ];
    for (env, variable, problem) in cases {
        let err = load(&env, None).expect_err(variable);
        assert_eq!(err.variable, variable, "{err}");
        assert!(err.problem.contains(problem), "{variable}: {err}");
        assert!(!err.to_string().contains('\n'), "one line: {err}");
    }
}

#[test]
fn yaml_errors_name_the_key_and_the_file() {
    let env = without("MINIO_PORT");
    let err = load(&env, Some("minio:\n  port: http\n")).expect_err("bad port");
    assert_eq!(err.variable, "minio.port (config.yml)");
}

#[test]
fn secrets_never_appear_in_errors_or_debug_output() {
    let env = with(&[("MINIO_PORT", "bad")]);
    let err = load(&env, None).expect_err("bad port");
    assert!(!err.to_string().contains("s3cr3t-value"));
    let config = load(&minimal_env(), None).expect("valid");
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cr3t-value") && !debug.contains("tok-123"));
}

#[test]
fn stock_settings_that_are_ignored_are_reported() {
    let env: HashMap<String, String> = with(&[("CONNECTOR_CONSUMER_COUNT", "10")])
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let notes = Config::ignored_settings(&Source::new(env, None));
    assert_eq!(notes.len(), 1);
    assert!(notes[0].starts_with("CONNECTOR_CONSUMER_COUNT is ignored"));
}

#[test]
fn the_sample_config_documents_every_setting() {
    let sample = include_str!("../../config.yml.sample");
    for setting in settings::ALL {
        assert!(
            sample.contains(setting.env),
            "config.yml.sample does not mention {}",
            setting.env
        );
        let key = setting.yaml[0].last().copied().unwrap_or_default();
        assert!(
            sample.contains(&format!("{key}:")),
            "config.yml.sample has no key {key} for {}",
            setting.env
        );
    }
    let parsed: serde_norway::Value = serde_norway::from_str(sample).expect("the sample is YAML");
    let placeholders: HashMap<String, String> = [
        ("CONNECTOR_ID", "2f3a5c1e-0000-4000-8000-000000000001"),
        ("CONNECTOR_LIVE_STREAM_ID", "live-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let source = Source::new(
        placeholders,
        Some((PathBuf::from("config.yml.sample"), parsed)),
    );
    let config = Config::from_source(&source).expect("the sample is a valid configuration");
    assert_eq!(config.write.every, Duration::from_secs(60));
}

#[test]
fn the_readme_settings_table_is_the_generated_one() {
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(&settings::markdown()),
        "README.md's settings table differs from config::settings::ALL; paste settings::markdown()"
    );
    assert_eq!(
        settings::markdown().lines().count(),
        settings::ALL.len() + 2,
        "one row per setting"
    );
}

// Secrets from files, the endpoint's token and MINIO_FOLDER.

#[test]
fn secrets_can_come_from_files_with_one_trailing_newline_ignored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("writing a secret file");
        path.display().to_string()
    };
    let token = write("token", "tok-from-file\n");
    let access = write("access", "AKIA-file\r\n");
    let secret = write("secret", "with space at end \n\n");
    let metrics = write("metrics", "metrics-token");
    let mut env: Vec<(&str, &str)> = minimal_env()
        .into_iter()
        .filter(|(k, _)| {
            !matches!(
                *k,
                "OPENCTI_TOKEN" | "MINIO_ACCESS_KEY" | "MINIO_SECRET_KEY"
            )
        })
        .collect();
    env.extend([
        ("OPENCTI_TOKEN_FILE", token.as_str()),
        ("MINIO_ACCESS_KEY_FILE", access.as_str()),
        ("MINIO_SECRET_KEY_FILE", secret.as_str()),
        ("CONNECTOR_METRICS_TOKEN_FILE", metrics.as_str()),
    ]);
    let config = load(&env, None).expect("valid");
    assert_eq!(config.opencti.token.expose(), "tok-from-file");
    let Destination::S3(s3) = &config.destination else {
        panic!("S3 destination");
    };
    assert_eq!(s3.access_key.expose(), "AKIA-file");
    assert_eq!(
        s3.secret_key.expose(),
        "with space at end \n",
        "only one newline goes"
    );
    assert_eq!(
        config.connector.metrics_token.as_ref().map(|t| t.expose()),
        Some("metrics-token")
    );
    let plain = load(&with(&[("CONNECTOR_METRICS_TOKEN", " open-sesame ")]), None).expect("valid");
    assert_eq!(
        plain.connector.metrics_token.as_ref().map(|t| t.expose()),
        Some("open-sesame")
    );
    assert!(
        load(&minimal_env(), None)
            .expect("valid")
            .connector
            .metrics_token
            .is_none()
    );
}

#[test]
fn a_secret_file_set_twice_missing_or_empty_is_refused_without_the_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").expect("writing");
    // `with` takes 'static values: these few test strings are leaked.
    let empty: &'static str = Box::leak(empty.display().to_string().into_boxed_str());
    let missing: &'static str = Box::leak(
        dir.path()
            .join("missing")
            .display()
            .to_string()
            .into_boxed_str(),
    );
    let cases = [
        (
            with(&[("OPENCTI_TOKEN_FILE", empty)]),
            "OPENCTI_TOKEN_FILE",
            "set together with OPENCTI_TOKEN",
        ),
        (
            with(&[("MINIO_SECRET_KEY_FILE", missing)])
                .into_iter()
                .filter(|(k, _)| *k != "MINIO_SECRET_KEY")
                .collect(),
            "MINIO_SECRET_KEY_FILE",
            "cannot read",
        ),
        (
            with(&[("CONNECTOR_METRICS_TOKEN_FILE", empty)]),
            "CONNECTOR_METRICS_TOKEN_FILE",
            "is empty",
        ),
        (
            without("OPENCTI_TOKEN"),
            "OPENCTI_TOKEN",
            "or OPENCTI_TOKEN_FILE",
        ),
    ];
    for (env, variable, problem) in cases {
        let error = load(&env, None).expect_err(variable).to_string();
        assert!(error.starts_with(variable), "{error}");
        assert!(error.contains(problem), "{error}");
        assert!(
            !error.contains("s3cr3t-value") && !error.contains("tok-123"),
            "{error}"
        );
    }
}

#[test]
fn minio_folder_is_checked_at_start_up() {
    let folder = |value: &'static str| load(&with(&[("MINIO_FOLDER", value)]), None);
    assert_eq!(folder("/a/b/").expect("valid").output.folder, "a/b");
    assert_eq!(folder("").expect("valid").output.folder, "");
    for bad in ["a/../b", "a//b", "./a", "..", "a\\b", "a\nb"] {
        let error = folder(bad).expect_err(bad).to_string();
        assert!(error.starts_with("MINIO_FOLDER"), "{bad:?}: {error}");
    }
    let long: &'static str = Box::leak("x".repeat(901).into_boxed_str());
    assert!(folder(long).is_err());
}
