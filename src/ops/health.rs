//! The rules behind `/healthz` (liveness) and `/readyz` (readiness).
//!
//! - **Alive** (`/healthz` 200): the process answers (the handler ran on the runtime that also
//!   runs the pipeline) and it is not wedged: no group of events has been waiting more than
//!   [`WEDGED_AFTER`] to become durable (a hung disk or a dead WAL writer thread), and the WAL
//!   does not refuse writes (a failed fsync or I/O error: the daemon is then stopping, to be
//!   restarted, see [`crate::pipeline::failure`]). An
//!   unreachable OpenCTI or S3, or a full disk budget, is *not* a liveness failure: restarting
//!   would not help, and the daemon rides those out by design.
//! - **Ready** (`/readyz` 200): the OpenCTI event stream is connected, the WAL accepts writes (no
//!   commit failed) and the disk budget is not full — i.e. events are flowing into the WAL right
//!   now. It turns 503 within moments of OpenCTI going away (the connection ends), of the budget
//!   filling up (the stream is paused), and stays 503 until they recover. Uploads failing do not
//!   make it unready (the WAL absorbs the outage); they show in `/status` and the metrics. A
//!   damaged local file blocking uploads does not either (events still flow into the WAL), but
//!   it never goes away by itself, so `/readyz` names it (`damaged_segment`) for the operator
//!   (`quarantine`, see the README). Uploads held because the destination is ahead of a new
//!   WAL's numbering are named the same way (`uploads_held`).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;

use crate::view::DaemonView;

/// How long a group may wait to be made durable before the daemon counts as wedged.
pub const WEDGED_AFTER: Duration = Duration::from_secs(120);

/// The `/healthz` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Liveness {
    /// Alive and not wedged.
    pub healthy: bool,
    /// How long the oldest group handed to the WAL has been waiting to be durable (0 if none).
    pub oldest_pending_commit_seconds: f64,
    /// Why it is not healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The `/readyz` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Events are flowing into the WAL.
    pub ready: bool,
    /// The OpenCTI event stream is open.
    pub stream_connected: bool,
    /// No WAL commit failed.
    pub wal_writable: bool,
    /// Reading is paused because the disk budget is full.
    pub disk_budget_full: bool,
    /// A damaged local file blocking uploads, with the reason (needs the operator).
    pub damaged_segment: Option<String>,
    /// Uploads held because the destination holds a file number at or above this WAL's first
    /// (a new WAL that could not list the destination at its first start), with what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploads_held: Option<String>,
}

/// Liveness at `now_ms`.
pub fn liveness(view: &DaemonView, now_ms: u64) -> Liveness {
    let since = view.pipeline.committer.waiting_since_unix_ms.load(Relaxed);
    let waiting = if since == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(now_ms.saturating_sub(since))
    };
    let wedged = waiting > WEDGED_AFTER;
    let failed = view
        .pipeline
        .wal_failure
        .reason()
        .or_else(|| view.wal.failure().map(|cause| cause.to_string()));
    let problem = match failed {
        Some(reason) => Some(format!(
            "the write-ahead log refuses writes ({reason}): the daemon is stopping to be restarted"
        )),
        None => wedged.then(|| {
            format!(
                "events handed to the WAL {:.0} s ago are still not durable: the disk or the WAL \
                 writer is stuck",
                waiting.as_secs_f64()
            )
        }),
    };
    Liveness {
        healthy: problem.is_none(),
        oldest_pending_commit_seconds: waiting.as_secs_f64(),
        problem,
    }
}

/// Readiness now.
pub fn readiness(view: &DaemonView) -> Readiness {
    let stream_connected = view.pipeline.stream.connected.load(Relaxed);
    let wal_writable = view.wal_stats.commit_failures.load(Relaxed) == 0;
    let disk_budget_full = view.pipeline.budget.is_paused();
    Readiness {
        ready: stream_connected && wal_writable && !disk_budget_full,
        stream_connected,
        wal_writable,
        disk_budget_full,
        damaged_segment: view.pipeline.uploader.damaged(),
        uploads_held: view.pipeline.uploader.held(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::test_view;

    #[test]
    fn a_group_waiting_too_long_to_be_durable_means_wedged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let view = test_view(dir.path());
        let now = 1_000_000_000;
        assert!(liveness(&view, now).healthy, "nothing waiting");
        let committer = &view.pipeline.committer;
        committer.waiting_since_unix_ms.store(now - 5_000, Relaxed);
        let alive = liveness(&view, now);
        assert!(alive.healthy);
        assert_eq!(alive.oldest_pending_commit_seconds, 5.0);
        let wedged_since = now - WEDGED_AFTER.as_millis() as u64 - 1_000;
        committer.waiting_since_unix_ms.store(wedged_since, Relaxed);
        let wedged = liveness(&view, now);
        assert!(!wedged.healthy);
        assert!(wedged.problem.is_some_and(|p| p.contains("not durable")));
    }

    #[test]
    fn a_failed_wal_means_not_alive() {
        let dir = tempfile::tempdir().expect("temp dir");
        let view = test_view(dir.path());
        assert!(liveness(&view, 1_000_000_000).healthy);
        view.pipeline.wal_failure.record(&wal::WalError::Io {
            action: "fsyncing",
            path: dir.path().to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        });
        let failed = liveness(&view, 1_000_000_000);
        assert!(!failed.healthy);
        assert!(failed.problem.is_some_and(|p| p.contains("refuses writes")));
    }

    #[test]
    fn ready_only_while_connected_with_a_writable_wal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let view = test_view(dir.path());
        assert!(!readiness(&view).ready, "not connected yet");
        view.pipeline.stream.connected.store(true, Relaxed);
        assert_eq!(
            readiness(&view),
            Readiness {
                ready: true,
                stream_connected: true,
                wal_writable: true,
                disk_budget_full: false,
                damaged_segment: None,
                uploads_held: None,
            }
        );
        view.wal_stats.commit_failures.store(1, Relaxed);
        let failed = readiness(&view);
        assert!(!failed.ready && !failed.wal_writable);
    }
}
