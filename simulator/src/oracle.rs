//! The oracle: checks an export (the NDJSON lines an exporter produced, in file order) against
//! what the simulator served. It is how tests prove docs/architecture.md#invariant-2 ("no loss; in
//! arrival order; duplicates only where the server itself sent an event again").
//!
//! Checks, on the identity of each event ([`IdentityKey`]: SSE id, event name, dependency /
//! recovery / live payload, `data.id`, all readable from an exported line):
//! 1. **No loss**: every live-log event the *first accepted connection* should have received
//!    (strictly after its start, or after its recover bound in recovery mode; deletes only with
//!    `listen-delete`), up to the current end of the log, is exported at least once, and so is
//!    every object of its recovery plan, except an object a later recovery connection resumed
//!    before and no longer planned (changed or deleted since: live events carry it now).
//! 2. **No invention**: every exported line is something that was served, and no identity is
//!    exported more often than it was served.
//! 3. **Order**: the export is the concatenation, over accepted connections in order, of a
//!    prefix of what each connection served (a crash loses only what was not durable; the next
//!    connection resumes from the durable cursor and may re-serve events). Checked exactly by a
//!    dynamic programme over reachable export positions (no guessing where a connection's part
//!    ends), in time proportional to the export plus the re-served overlaps.
//! 4. **Shape**: each line is JSON with a string `id` and `type`.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::model::{EventKind, IdentityKey, Role, StixId};
use super::served::{ServedLog, StreamMode};
use crate::ids::EventId;

/// What the first accepted connection should have received.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    /// The arrival number of that connection (`None`: no connection was accepted).
    pub connection: Option<u64>,
    /// Its recovery plan (empty without recovery).
    pub recovery: Vec<IdentityKey>,
    /// The live-log events after its start position, in order.
    pub live: Vec<IdentityKey>,
}

/// Builds the expectation from the served log; `live_after(after, listen_delete)` lists the live
/// events strictly after `after`.
pub(crate) fn expectation(
    served: &ServedLog,
    live_after: impl Fn(EventId, bool) -> Vec<IdentityKey>,
) -> Expectation {
    let Some(first) = served.accepted().find(|c| c.mode.is_some()) else {
        return Expectation::default();
    };
    let Some(mode) = first.mode else {
        return Expectation::default();
    };
    let recovery = match mode {
        StreamMode::Recovery { .. } => first
            .recovery_plan
            .iter()
            .filter(|key| !dropped_by_a_later_recovery(served, first.number, key))
            .copied()
            .collect(),
        StreamMode::Live { .. } => Vec::new(),
    };
    Expectation {
        connection: Some(first.number),
        recovery,
        live: live_after(mode.live_after(), first.listen_delete),
    }
}

/// True when a recovery connection after `first` resumed at or before `key` (recovery reads
/// `updated_at >= start`, docs/opencti-protocol.md#event-ids) and its plan no longer holds it: the
/// object changed (or was deleted) by live events meanwhile, so the platform sends it to nobody as
/// a recovery object any more, and its live events (expected as such) carry its later states.
fn dropped_by_a_later_recovery(served: &ServedLog, first: u64, key: &IdentityKey) -> bool {
    served.accepted().any(|c| {
        c.number > first
            && matches!(c.mode, Some(StreamMode::Recovery { from, .. }) if from.ms <= key.id.ms)
            && !c.recovery_plan.contains(key)
    })
}

/// The verdict of [`check`].
#[derive(Debug, Clone, Default)]
pub struct OracleReport {
    /// Lines given.
    pub lines: usize,
    /// Lines that parsed into an identity.
    pub checked: usize,
    /// Distinct identities exported.
    pub distinct: usize,
    /// Exported lines repeating an identity already exported (allowed when served again).
    pub duplicates: usize,
    /// Events expected (recovery plan + live events).
    pub expected: usize,
    /// Expected events missing from the export.
    pub losses: usize,
    /// The first few missing events.
    pub first_losses: Vec<IdentityKey>,
    /// Lines whose identity was never served (line number, identity).
    pub invented: Vec<(usize, IdentityKey)>,
    /// Identities exported more often than served (identity, exported, served).
    pub over_exported: Vec<(IdentityKey, usize, usize)>,
    /// Lines that are not JSON with `id` and `type` (line number, why).
    pub invalid_lines: Vec<(usize, String)>,
    /// Why the export is not a concatenation of served prefixes.
    pub order_error: Option<String>,
}

impl OracleReport {
    /// True when every check passed.
    pub fn is_ok(&self) -> bool {
        self.losses == 0
            && self.invented.is_empty()
            && self.over_exported.is_empty()
            && self.invalid_lines.is_empty()
            && self.order_error.is_none()
    }
}

const SHOWN: usize = 5;

impl fmt::Display for OracleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} lines, {} checked, {} distinct, {} duplicates, {} expected, {} lost",
            if self.is_ok() {
                "export OK"
            } else {
                "export WRONG"
            },
            self.lines,
            self.checked,
            self.distinct,
            self.duplicates,
            self.expected,
            self.losses
        )?;
        for key in &self.first_losses {
            writeln!(f, "  lost: {key}")?;
        }
        for (line, key) in self.invented.iter().take(SHOWN) {
            writeln!(f, "  line {line} was never served: {key}")?;
        }
        for (key, exported, served) in self.over_exported.iter().take(SHOWN) {
            writeln!(f, "  exported {exported}× but served {served}×: {key}")?;
        }
        for (line, why) in self.invalid_lines.iter().take(SHOWN) {
            writeln!(f, "  line {line} is invalid: {why}")?;
        }
        if let Some(order) = &self.order_error {
            writeln!(f, "  order: {order}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct LineShape {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    data: Option<DataShape>,
    origin: Option<OriginShape>,
}

#[derive(Deserialize)]
struct DataShape {
    id: Option<String>,
    #[serde(flatten)]
    _rest: HashMap<String, IgnoredAny>,
}

#[derive(Deserialize)]
struct OriginShape {
    referer: Option<String>,
    #[serde(flatten)]
    _rest: HashMap<String, IgnoredAny>,
}

/// The identity of an exported line.
pub fn line_identity(line: &[u8]) -> Result<IdentityKey, String> {
    let shape: LineShape =
        serde_json::from_slice(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let id = shape.id.ok_or("no string `id`")?;
    let kind = shape.kind.ok_or("no string `type`")?;
    let id = EventId::parse(&id).ok_or_else(|| format!("`id` {id:?} is not a stream id"))?;
    let event = EventKind::from_name(&kind)
        .ok_or_else(|| format!("`type` {kind:?} is not a data event"))?;
    let data_id = shape.data.and_then(|d| d.id).ok_or("no `data.id`")?;
    let data =
        StixId::parse(&data_id).ok_or_else(|| format!("`data.id` {data_id:?} is not a STIX id"))?;
    let role = Role::from_referer(shape.origin.as_ref().and_then(|o| o.referer.as_deref()));
    Ok(IdentityKey {
        id,
        event,
        role,
        data,
    })
}

/// Checks `lines` (exported NDJSON lines in file order, without their `\n`) against `served`.
pub fn check<'a>(
    served: &ServedLog,
    expectation: &Expectation,
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> OracleReport {
    let mut report = OracleReport::default();
    let mut export: Vec<IdentityKey> = Vec::new();
    for (number, line) in lines.into_iter().enumerate() {
        report.lines += 1;
        match line_identity(line) {
            Ok(key) => export.push(key),
            Err(why) => report.invalid_lines.push((number, why)),
        }
    }
    report.checked = export.len();

    // 2. No invention, no identity more often than served.
    let sequences: Vec<Vec<IdentityKey>> = served.accepted().map(|c| c.keys().collect()).collect();
    let mut served_count: HashMap<IdentityKey, usize> = HashMap::new();
    for key in sequences.iter().flatten() {
        *served_count.entry(*key).or_default() += 1;
    }
    let mut exported_count: HashMap<IdentityKey, usize> = HashMap::new();
    let mut positions: HashMap<IdentityKey, Vec<usize>> = HashMap::new();
    for (i, key) in export.iter().enumerate() {
        *exported_count.entry(*key).or_default() += 1;
        positions.entry(*key).or_default().push(i);
        if !served_count.contains_key(key) {
            report.invented.push((i, *key));
        }
    }
    report.distinct = exported_count.len();
    report.duplicates = export.len() - exported_count.len();
    let mut over: Vec<_> = exported_count
        .iter()
        .filter_map(|(key, n)| {
            served_count
                .get(key)
                .filter(|s| n > s)
                .map(|s| (*key, *n, *s))
        })
        .collect();
    over.sort();
    report.over_exported = over;

    // 1. No loss.
    report.expected = expectation.recovery.len() + expectation.live.len();
    for key in expectation.recovery.iter().chain(&expectation.live) {
        if !exported_count.contains_key(key) {
            report.losses += 1;
            if report.first_losses.len() < SHOWN {
                report.first_losses.push(*key);
            }
        }
    }

    // 3. Order: reachable export positions after each connection's prefix.
    let n = export.len();
    let mut reach: Vec<(usize, usize)> = vec![(0, 0)];
    for sequence in &sequences {
        let Some(first) = sequence.first() else {
            continue;
        };
        let mut next = reach.clone();
        for &p in positions.get(first).map(Vec::as_slice).unwrap_or(&[]) {
            if !contains(&reach, p) {
                continue;
            }
            let k = export[p..]
                .iter()
                .zip(sequence)
                .take_while(|(a, b)| a == b)
                .count();
            next.push((p, p + k));
        }
        reach = merge(next);
    }
    if !contains(&reach, n) {
        let furthest = reach.iter().map(|r| r.1).max().unwrap_or(0);
        report.order_error = Some(match export.get(furthest) {
            Some(key) => format!(
                "lines 0..{furthest} are served prefixes in connection order, but line {furthest} ({key}) does not continue any of them"
            ),
            None => {
                "the export ends inside a connection's sequence in an impossible way".to_owned()
            }
        });
    }
    report
}

fn contains(intervals: &[(usize, usize)], p: usize) -> bool {
    let i = intervals.partition_point(|r| r.1 < p);
    intervals.get(i).is_some_and(|r| r.0 <= p)
}

fn merge(mut intervals: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    intervals.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(intervals.len());
    for (a, b) in intervals {
        match merged.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::served::{ConnectionRecord, RequestInfo, ServedEvent};

    fn key(ms: u64, uuid: &str) -> IdentityKey {
        IdentityKey {
            id: EventId { ms, seq: 0 },
            event: EventKind::Create,
            role: Role::Recovery,
            data: StixId::parse(&format!("indicator--{uuid}")).expect("a STIX id"),
        }
    }

    fn recovery(number: u64, from_ms: u64, plan: &[IdentityKey], sent: usize) -> ConnectionRecord {
        let mut record = ConnectionRecord::new(number, None, RequestInfo::default());
        record.status = 200;
        record.mode = Some(StreamMode::Recovery {
            from: EventId {
                ms: from_ms,
                seq: 0,
            },
            recover: EventId { ms: 9_000, seq: 0 },
        });
        record.recovery_plan = plan.to_vec();
        record.events = plan[..sent]
            .iter()
            .map(|key| ServedEvent {
                key: *key,
                bytes: 100,
                injected: None,
            })
            .collect();
        record
    }

    /// A recovery cut after its first object resumes from it (`gte`); meanwhile the third object
    /// was updated by a live event, so the resumed recovery no longer plans it. It is not lost:
    /// its live update carries it. An object the resumed plan still holds stays expected.
    #[test]
    fn recovery_objects_changed_before_a_resumed_recovery_are_not_expected_from_it() {
        let a = key(1_000, "11111111-1111-4111-8111-111111111111");
        let b = key(2_000, "22222222-2222-4222-8222-222222222222");
        let changed = key(3_000, "33333333-3333-4333-8333-333333333333");
        let served = ServedLog {
            connections: vec![
                recovery(1, 0, &[a, b, changed], 1),
                recovery(2, 1_000, &[a, b], 2),
            ],
        };
        let expectation = expectation(&served, |_, _| Vec::new());
        assert_eq!(expectation.recovery, vec![a, b]);

        let line = |k: &IdentityKey| {
            format!(
                r#"{{"id":"{}","type":"create","data":{{"id":"{}"}},"origin":{{"referer":"init-create"}}}}"#,
                k.id, k.data
            )
        };
        let export = [line(&a), line(&a), line(&b)];
        let report = check(&served, &expectation, export.iter().map(|l| l.as_bytes()));
        assert!(report.is_ok(), "{report}");
        // Losing an object the resumed recovery still planned is still a loss.
        let report = check(
            &served,
            &expectation,
            [line(&a)].iter().map(|l| l.as_bytes()),
        );
        assert_eq!(report.losses, 1, "{report}");
    }
}
