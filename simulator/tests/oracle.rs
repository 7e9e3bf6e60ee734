//! The oracle accepts a correct export (with a crash and a replay) and rejects a loss, a
//! reordering, an invented line, an extra duplicate and an invalid line.

mod common;

use common::*;
use simulator::SimulatorHandle;
use simulator::oracle::line_identity;

/// Reads from `cursor` until the last live event; returns the exported lines of every data frame.
async fn read_lines(
    sim: &SimulatorHandle,
    cursor: &str,
    recover: Option<&str>,
    max_frames: Option<usize>,
) -> Vec<Vec<u8>> {
    let url = match recover {
        Some(r) => format!("{}?recover={r}", sim.stream_url()),
        None => sim.stream_url(),
    };
    let last = sim.live_ids().last().expect("a log").to_string();
    let mut reader = connect(
        &url,
        &[("authorization", &bearer(sim)), ("last-event-id", cursor)],
    )
    .await;
    let frames = reader
        .read_until(|f| {
            let data = f.iter().filter(|x| x.is_data_event()).count();
            max_frames.is_some_and(|m| data >= m)
                || f.last().is_some_and(|x| {
                    x.id.as_deref() == Some(last.as_str()) && x.referer().is_none()
                })
        })
        .await;
    frames
        .iter()
        .filter(|f| f.is_data_event())
        .map(|f| f.exported_line())
        .collect()
}

/// The cursor after the first `n` lines: the last line that holds one (not a dependency).
fn cursor_after(lines: &[Vec<u8>]) -> String {
    let line = lines
        .iter()
        .rev()
        .find(|l| !String::from_utf8_lossy(l).contains("init-dependencies"))
        .expect("a cursor-holding line");
    line_identity(line).expect("identity").id.to_string()
}

fn check(sim: &SimulatorHandle, lines: &[Vec<u8>]) -> simulator::OracleReport {
    sim.check_export(lines.iter().map(Vec::as_slice))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_a_correct_export_with_a_crash_and_a_replay() {
    let sim = start(small_config(40)).await;
    // First connection: 150 events arrive, only 100 were durable when the exporter crashed.
    let first = read_lines(&sim, "0-0", None, Some(150)).await;
    let durable = first[..100].to_vec();
    // The durable prefix ends with dependencies: they are re-served (and exported twice).
    let mut cut = 100;
    while !String::from_utf8_lossy(&first[cut - 1]).contains("init-dependencies") {
        cut -= 1;
    }
    let durable_with_deps = first[..cut].to_vec();
    for prefix in [durable, durable_with_deps] {
        let second = read_lines(&sim, &cursor_after(&prefix), None, None).await;
        let export: Vec<Vec<u8>> = prefix.iter().chain(&second).cloned().collect();
        let report = check(&sim, &export);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.expected, 300);
        assert_eq!(report.lines, export.len());
    }
    let report = {
        let prefix = &first[..cut];
        let second = read_lines(&sim, &cursor_after(prefix), None, None).await;
        check(
            &sim,
            &prefix.iter().chain(&second).cloned().collect::<Vec<_>>(),
        )
    };
    assert!(
        report.duplicates > 0,
        "the dependencies before the crash were re-sent and exported again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_a_loss_a_reordering_an_invention_an_extra_duplicate_and_an_invalid_line() {
    let sim = start(small_config(41)).await;
    let lines = read_lines(&sim, "0-0", None, None).await;
    assert!(check(&sim, &lines).is_ok(), "{}", check(&sim, &lines));
    let live_at = |from: usize| {
        (from..lines.len())
            .find(|&i| !String::from_utf8_lossy(&lines[i]).contains("\"origin\":{\"referer\""))
            .expect("a live line")
    };

    let mut lost = lines.clone();
    lost.remove(live_at(150));
    let report = check(&sim, &lost);
    assert!(!report.is_ok());
    assert_eq!(report.losses, 1, "{report}");

    let mut swapped = lines.clone();
    let i = live_at(100);
    let j = live_at(i + 1);
    swapped.swap(i, j);
    let report = check(&sim, &swapped);
    assert_eq!(report.losses, 0);
    assert!(report.order_error.is_some(), "{report}");

    let mut invented = lines.clone();
    let text = String::from_utf8(invented[live_at(10)].clone()).expect("utf-8");
    let data_id = line_identity(text.as_bytes())
        .expect("identity")
        .data
        .to_string();
    let forged_id = format!("{}ffffffffffff", &data_id[..data_id.len() - 12]);
    invented.push(text.replace(&data_id, &forged_id).into_bytes());
    let report = check(&sim, &invented);
    assert_eq!(report.invented.len(), 1, "{report}");
    assert!(!report.is_ok());

    let mut doubled = lines.clone();
    doubled.push(lines[live_at(200)].clone());
    let report = check(&sim, &doubled);
    assert_eq!(report.over_exported.len(), 1, "{report}");
    assert!(!report.is_ok());

    let mut invalid = lines.clone();
    invalid.insert(5, b"{not json".to_vec());
    invalid.push(br#"{"id":"1-0","data":{}}"#.to_vec());
    let report = check(&sim, &invalid);
    assert_eq!(report.invalid_lines.len(), 2, "{report}");
    assert!(!report.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_objects_are_required_when_the_first_run_recovered() {
    let sim = start(small_config(42)).await;
    let recover = simulator::iso(sim.live_ids()[50].ms);
    let lines = read_lines(&sim, "0-0", Some(&recover), None).await;
    let report = check(&sim, &lines);
    assert!(report.is_ok(), "{report}");
    let recovered = sim.served().connections[0].recovery_plan.len();
    assert!(recovered > 50);
    let recover_id = simulator::EventId::new(sim.live_ids()[50].ms, 0);
    let live_after = sim.live_ids().iter().filter(|id| **id > recover_id).count();
    assert_eq!(report.expected, recovered + live_after);
    let index = lines
        .iter()
        .position(|l| String::from_utf8_lossy(l).contains("init-create"))
        .expect("a recovery line");
    let mut lost = lines.clone();
    lost.remove(index + 3);
    let report = check(&sim, &lost);
    assert!(!report.is_ok());
    assert!(
        report.losses >= 1 || report.order_error.is_some(),
        "{report}"
    );
}
