//! Logs a shipper can read: the binary's stderr, when it is a pipe (as under `docker logs`,
//! journald or a log shipper), carries no ANSI colour escape even without `NO_COLOR`, and an error
//! is printed once, in the configured log format.

mod support;

use support::daemon::*;

const ESCAPE: &str = "\x1b[";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_pipe_carry_no_colour_escapes() {
    let sim = start_simulator(simulator_config(901, 20)).await;
    let export = tempfile::tempdir().expect("export directory");
    let harness = Harness::new(&sim)
        .export_dir(export.path())
        .set("CONNECTOR_LOG_FORMAT", "text")
        .unset("NO_COLOR");
    let mut daemon = harness.spawn();
    wait_until("the daemon logged its start", secs(30), || {
        daemon
            .logs()
            .iter()
            .any(|line| line.contains("write-ahead log open"))
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let logs = daemon.logs();
    assert!(logs.iter().any(|line| line.contains("INFO")), "{logs:?}");
    let coloured: Vec<&String> = logs.iter().filter(|line| line.contains(ESCAPE)).collect();
    assert!(coloured.is_empty(), "colour escapes in {coloured:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_is_printed_once_in_the_log_format() {
    let sim = start_simulator(simulator_config(902, 10)).await;
    let export = tempfile::tempdir().expect("export directory");
    for format in ["text", "json"] {
        let harness = Harness::new(&sim)
            .export_dir(export.path())
            .set("CONNECTOR_LOG_FORMAT", format)
            .unset("NO_COLOR");
        // A regular file where the WAL directory should be: opening the WAL fails.
        let not_a_dir = harness.wal_dir();
        std::fs::write(&not_a_dir, b"not a directory").expect("a file in the WAL's place");
        let output = harness.run_command(&[], secs(30)).await;
        assert_eq!(output.code, Some(1), "{format}: {output:?}");
        let wal = not_a_dir.display().to_string();
        let errors: Vec<&str> = output
            .stderr
            .lines()
            .filter(|line| line.contains(&wal))
            .collect();
        assert_eq!(errors.len(), 1, "{format}: printed once: {}", output.stderr);
        assert!(errors[0].contains("ERROR"), "{format}: {}", errors[0]);
        if format == "json" {
            let line: serde_json::Value =
                serde_json::from_str(errors[0]).expect("the error is a JSON log line");
            assert_eq!(line["level"], "ERROR", "{line}");
        }
        assert!(
            !output.stderr.contains(ESCAPE),
            "{format}: {}",
            output.stderr
        );
    }
    assert_eq!(sim.connection_attempts(), 0);
}
