//! Small public value types shared by the corpus, the served log and the oracle.

use std::fmt;

use super::write::{parse_uuid, uuid};
use crate::ids::EventId;

/// The STIX object types the corpus generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum StixType {
    /// `marking-definition` (the five TLP markings).
    MarkingDefinition,
    /// `identity` (organisations).
    Identity,
    /// `malware`.
    Malware,
    /// `indicator` (STIX pattern; a pattern change changes its standard id).
    Indicator,
    /// `vulnerability`.
    Vulnerability,
    /// `attack-pattern`.
    AttackPattern,
    /// `report` (with `object_refs`).
    Report,
    /// `relationship` (SRO).
    Relationship,
    /// `ipv4-addr` (SCO).
    Ipv4Addr,
    /// `domain-name` (SCO).
    DomainName,
    /// `file` (SCO with hashes).
    File,
}

impl StixType {
    /// Every type, in declaration order.
    pub const ALL: [StixType; 11] = [
        StixType::MarkingDefinition,
        StixType::Identity,
        StixType::Malware,
        StixType::Indicator,
        StixType::Vulnerability,
        StixType::AttackPattern,
        StixType::Report,
        StixType::Relationship,
        StixType::Ipv4Addr,
        StixType::DomainName,
        StixType::File,
    ];

    /// The STIX `type` value.
    pub fn stix_name(self) -> &'static str {
        match self {
            StixType::MarkingDefinition => "marking-definition",
            StixType::Identity => "identity",
            StixType::Malware => "malware",
            StixType::Indicator => "indicator",
            StixType::Vulnerability => "vulnerability",
            StixType::AttackPattern => "attack-pattern",
            StixType::Report => "report",
            StixType::Relationship => "relationship",
            StixType::Ipv4Addr => "ipv4-addr",
            StixType::DomainName => "domain-name",
            StixType::File => "file",
        }
    }

    /// The OpenCTI entity type (`extensions[OCTI].type`), for relationships the generic name.
    pub fn entity_type(self) -> &'static str {
        match self {
            StixType::MarkingDefinition => "Marking-Definition",
            StixType::Identity => "Organization",
            StixType::Malware => "Malware",
            StixType::Indicator => "Indicator",
            StixType::Vulnerability => "Vulnerability",
            StixType::AttackPattern => "Attack-Pattern",
            StixType::Report => "Report",
            StixType::Relationship => "stix-core-relationship",
            StixType::Ipv4Addr => "IPv4-Addr",
            StixType::DomainName => "Domain-Name",
            StixType::File => "StixFile",
        }
    }

    /// True for cyber observables (they carry the SCO extension and no `created`/`modified`).
    pub fn is_sco(self) -> bool {
        matches!(
            self,
            StixType::Ipv4Addr | StixType::DomainName | StixType::File
        )
    }

    /// The type for a STIX `type` value.
    pub fn from_stix_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.stix_name() == name)
    }
}

/// A STIX id `<type>--<uuid>`, kept compact (the served log holds one per event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StixId {
    /// The object type.
    pub ty: StixType,
    /// The UUID part.
    pub uuid: u128,
}

impl StixId {
    /// Parses `<type>--<uuid>` for a type the corpus generates.
    pub fn parse(text: &str) -> Option<Self> {
        let (ty, rest) = text.split_once("--")?;
        Some(Self {
            ty: StixType::from_stix_name(ty)?,
            uuid: parse_uuid(rest)?,
        })
    }

    /// Appends `<type>--<uuid>` (no quotes).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.ty.stix_name().as_bytes());
        out.extend_from_slice(b"--");
        uuid(out, self.uuid);
    }
}

impl fmt::Display for StixId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(64);
        self.write(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

/// The SSE event name of a data event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EventKind {
    /// `create`
    Create,
    /// `update`
    Update,
    /// `delete`
    Delete,
    /// `merge`
    Merge,
}

impl EventKind {
    /// The SSE event name (also the exported line's `type`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Create => "create",
            EventKind::Update => "update",
            EventKind::Delete => "delete",
            EventKind::Merge => "merge",
        }
    }

    /// The kind for an SSE event name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "create" => Some(EventKind::Create),
            "update" => Some(EventKind::Update),
            "delete" => Some(EventKind::Delete),
            "merge" => Some(EventKind::Merge),
            _ => None,
        }
    }
}

/// Which payload shape a data event has (docs/opencti-protocol.md#data-events,
/// docs/opencti-protocol.md#dependency-and-recovery-events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Role {
    /// A live event from the stream log (full payload with `type`, `scope`, `event_id`).
    Live,
    /// A dependency (`origin.referer == "init-dependencies"`), same id as the event it precedes.
    Dependency,
    /// A first-run recovery object (`origin.referer == "init-create"`).
    Recovery,
}

impl Role {
    /// The role of a payload from its `origin.referer`.
    pub fn from_referer(referer: Option<&str>) -> Self {
        match referer {
            Some("init-dependencies") => Role::Dependency,
            Some("init-create") => Role::Recovery,
            _ => Role::Live,
        }
    }
}

/// What identifies a served data event, computable both from what the simulator wrote and from
/// an exported NDJSON line (`id`, `type`, `data.id`, `origin.referer`). Unique within one
/// connection; the same key on two connections means the server sent the event twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    /// The SSE id.
    pub id: EventId,
    /// The SSE event name.
    pub event: EventKind,
    /// Live, dependency or recovery payload.
    pub role: Role,
    /// `data.id`.
    pub data: StixId,
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {:?} {}",
            self.id,
            self.event.name(),
            self.role,
            self.data
        )
    }
}
