//! The data event kinds ([`Action`]) and values kept per kind ([`PerAction`]).

use std::ops::{Index, IndexMut};

/// The data event kinds that are exported (docs/opencti-protocol.md#sse-framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `create` (also dependency and recovery events).
    Create,
    /// `update`.
    Update,
    /// `delete`.
    Delete,
    /// `merge`.
    Merge,
}

impl Action {
    /// Every action, in the order the stock exporter's metrics list them.
    pub const ALL: [Action; 4] = [Self::Create, Self::Update, Self::Delete, Self::Merge];

    /// The action for an SSE event name, `None` for anything that is not a data event.
    pub fn from_event_name(name: &[u8]) -> Option<Self> {
        match name {
            b"create" => Some(Self::Create),
            b"update" => Some(Self::Update),
            b"delete" => Some(Self::Delete),
            b"merge" => Some(Self::Merge),
            _ => None,
        }
    }

    /// The SSE event name, which is also the exported line's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Merge => "merge",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value per action (a counter, a tally), indexed by [`Action`]: no position to get wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerAction<T> {
    /// The value for [`Action::Create`].
    pub create: T,
    /// The value for [`Action::Update`].
    pub update: T,
    /// The value for [`Action::Delete`].
    pub delete: T,
    /// The value for [`Action::Merge`].
    pub merge: T,
}

impl<T> Index<Action> for PerAction<T> {
    type Output = T;

    fn index(&self, action: Action) -> &T {
        match action {
            Action::Create => &self.create,
            Action::Update => &self.update,
            Action::Delete => &self.delete,
            Action::Merge => &self.merge,
        }
    }
}

impl<T> IndexMut<Action> for PerAction<T> {
    fn index_mut(&mut self, action: Action) -> &mut T {
        match action {
            Action::Create => &mut self.create,
            Action::Update => &mut self.update,
            Action::Delete => &mut self.delete,
            Action::Merge => &mut self.merge,
        }
    }
}
