//! Which stream position may be made durable as the cursor — docs/architecture.md#invariant-1,
//! "durable before acknowledged".
//!
//! The cursor is the id the next connection resumes from (`Last-Event-ID`); the server sends
//! what comes strictly after it (docs/opencti-protocol.md#event-ids). So the cursor may name an id
//! only when every event with that id is durable. Ids are not unique per event: a dependency event
//! carries the id of the event that triggered it and is sent just before it
//! (docs/opencti-protocol.md#dependency-and-recovery-events). Resuming from a dependency's id would
//! skip its trigger, so a dependency never moves the cursor, and neither does a heartbeat that
//! repeats the pending dependency's id. The event that follows (or a heartbeat with another id)
//! does.
//!
//! The tracker only decides; the committer applies its decision in the same WAL commit as the
//! events it covers, so the cursor is never ahead of what is on disk.

/// What one stream item means for the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed<'a> {
    /// An exported event; `holds_cursor` is false for dependency events.
    Event { id: &'a str, holds_cursor: bool },
    /// A heartbeat or `consumer_metrics`: the server's position, with no event of its own.
    Position { id: &'a str },
    /// An event that will not be exported (dead letter, skipped): it never moves the cursor by
    /// itself; the next event or heartbeat does.
    Other,
}

/// Follows the stream in order and says, after each item, which id the cursor may take.
#[derive(Debug, Default, Clone)]
pub struct CursorTracker {
    /// Id of a dependency event whose trigger has not arrived yet.
    pending_dependency: Option<String>,
}

impl CursorTracker {
    /// A tracker at the start of a connection (nothing pending).
    pub fn new() -> Self {
        Self::default()
    }

    /// Observes the next item in arrival order. Returns the id the cursor may move to once this
    /// item and everything before it are durable, or `None` when the cursor must stay.
    pub fn observe(&mut self, item: Observed<'_>) -> Option<String> {
        match item {
            Observed::Event {
                id,
                holds_cursor: false,
            } => {
                self.pending_dependency = Some(id.to_string());
                None
            }
            Observed::Event {
                id,
                holds_cursor: true,
            } => {
                self.pending_dependency = None;
                Some(id.to_string())
            }
            Observed::Position { id } => {
                if self.pending_dependency.as_deref() == Some(id) {
                    None
                } else {
                    self.pending_dependency = None;
                    Some(id.to_string())
                }
            }
            Observed::Other => None,
        }
    }

    /// Forgets a pending dependency: a new connection starts from the durable cursor, and the
    /// server sends dependencies again.
    pub fn reset(&mut self) {
        self.pending_dependency = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(items: &[Observed<'_>]) -> Vec<Option<String>> {
        let mut tracker = CursorTracker::new();
        items.iter().map(|item| tracker.observe(*item)).collect()
    }

    fn dep(id: &str) -> Observed<'_> {
        Observed::Event {
            id,
            holds_cursor: false,
        }
    }

    fn event(id: &str) -> Observed<'_> {
        Observed::Event {
            id,
            holds_cursor: true,
        }
    }

    #[test]
    fn a_dependency_id_becomes_the_cursor_only_with_its_trigger() {
        let moves = run(&[event("1-0"), dep("2-0"), dep("2-0"), event("2-0")]);
        assert_eq!(
            moves,
            [Some("1-0".to_string()), None, None, Some("2-0".to_string())]
        );
    }

    #[test]
    fn a_heartbeat_repeating_a_pending_dependency_id_does_not_move_the_cursor() {
        let moves = run(&[dep("2-0"), Observed::Position { id: "2-0" }, event("2-0")]);
        assert_eq!(moves, [None, None, Some("2-0".to_string())]);
    }

    #[test]
    fn a_heartbeat_with_another_id_moves_the_cursor_and_clears_the_dependency() {
        let moves = run(&[
            dep("2-0"),
            Observed::Position { id: "3-0" },
            Observed::Position { id: "2-0" },
        ]);
        assert_eq!(
            moves,
            [None, Some("3-0".to_string()), Some("2-0".to_string())]
        );
    }

    #[test]
    fn dead_letters_never_move_the_cursor() {
        assert_eq!(run(&[Observed::Other]), [None]);
    }

    #[test]
    fn reset_forgets_the_pending_dependency() {
        let mut tracker = CursorTracker::new();
        assert_eq!(tracker.observe(dep("5-0")), None);
        tracker.reset();
        assert_eq!(
            tracker.observe(Observed::Position { id: "5-0" }),
            Some("5-0".to_string())
        );
    }
}
