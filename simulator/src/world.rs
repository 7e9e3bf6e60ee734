//! The simulated platform's data: the knowledge base and the live stream log, kept as a compact
//! skeleton (objects with their version history, events pointing at them) from which every frame
//! is rendered on demand.
//!
//! Immutability by construction: what is rendered for event `e` depends only on versions with an
//! event index ≤ `e`, so appending events never changes an event already rendered or served.

use std::collections::HashMap;

use super::config::{EventMix, SimulatorConfig};
use super::model::{EventKind, StixId, StixType};
use super::rng::{SplitMix, derive, uuid_v4, uuid_v5};
use super::text;
use crate::ids::EventId;

/// "No object" / "not deleted" / "knowledge base" marker in `u32` index fields.
pub const NONE: u32 = u32::MAX;
const DAY_MS: u64 = 86_400_000;

/// The five TLP markings OpenCTI ships (STIX ids, names, order, colour).
pub const TLP_MARKINGS: [(u128, &str, u8, &str); 5] = [
    (
        0x613f2e26_407d_48c7_9eca_b8e91df99dc9,
        "TLP:CLEAR",
        1,
        "#ffffff",
    ),
    (
        0x34098fce_860f_48ae_8e50_ebd3cc5e41da,
        "TLP:GREEN",
        2,
        "#2e7d32",
    ),
    (
        0xf88d31f6_486f_44da_b317_01333bde0b82,
        "TLP:AMBER",
        3,
        "#d84315",
    ),
    (
        0x826578e1_40ad_459f_bc73_ede076f81f37,
        "TLP:AMBER+STRICT",
        3,
        "#d84315",
    ),
    (
        0x5e57c739_391a_4eb3_b6be_7d15ca92d5ed,
        "TLP:RED",
        4,
        "#c62828",
    ),
];

/// One object of the platform (knowledge base or created by a live event).
#[derive(Debug, Clone)]
pub struct Object {
    pub ty: StixType,
    pub seed: u64,
    pub internal: u128,
    /// The UUID of the STIX id (for an indicator: before any pattern change).
    pub stix_uuid: u128,
    pub created_ms: u64,
    /// `updated_at` before any live version.
    pub first_updated_ms: u64,
    /// The live event that created it, or [`NONE`] for the knowledge base.
    pub created_event: u32,
    /// Names and descriptions from the non-ASCII pools.
    pub intl: bool,
    pub created_by: u32,
    pub marking: u32,
    /// Relationship: `[source, target]`; report: `object_refs`.
    pub links: Box<[u32]>,
    /// Files attached at creation.
    pub initial_files: u8,
    /// Changes made by live update and merge events, in event order.
    pub versions: Vec<Version>,
    /// The live event that deleted it, or [`NONE`].
    pub deleted_event: u32,
}

/// One change of an object by a live event.
#[derive(Debug, Clone, Copy)]
pub struct Version {
    pub event: u32,
    pub ms: u64,
    pub change: Change,
}

/// What an update or merge changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Description,
    AddLabel,
    Score,
    /// Indicator pattern (and so standard id and name) change.
    Pattern,
    AddFile,
    Merge {
        seed: u64,
        sources: u8,
    },
}

/// One live event of the stream log.
#[derive(Debug, Clone, Copy)]
pub struct LiveEvent {
    pub id: EventId,
    pub kind: EventKind,
    pub object: u32,
    /// Index into the object's versions (update, merge), else [`NONE`].
    pub version: u32,
    pub seed: u64,
}

/// An object's state folded from its versions.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub updated_ms: u64,
    pub rev: u32,
    pub labels: u32,
    pub score_gen: u32,
    pub pattern_gen: u32,
    /// (file ordinal, version ms)
    pub files: Vec<(u32, u64)>,
    /// (merge seed, number of sources)
    pub merges: Vec<(u64, u8)>,
}

/// A file served by `/storage/get/`.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub name: &'static str,
    pub mime: &'static str,
    pub size: usize,
    pub seed: u64,
}

/// The knowledge base plus the live log.
pub struct World {
    seed: u64,
    mix: EventMix,
    pub base_ms: u64,
    pub objects: Vec<Object>,
    pub events: Vec<LiveEvent>,
    /// Path after `/storage/get/` (decoded) → file.
    pub files: HashMap<String, FileSpec>,
    alive: Vec<Vec<u32>>,
    alive_pos: Vec<u32>,
    alive_all: Vec<u32>,
    alive_all_pos: Vec<u32>,
    refcount: Vec<u32>,
    rng: SplitMix,
}

const CREATE_WEIGHTS: [(StixType, u32); 10] = [
    (StixType::Indicator, 24),
    (StixType::Relationship, 24),
    (StixType::Malware, 7),
    (StixType::Report, 8),
    (StixType::Identity, 2),
    (StixType::Vulnerability, 8),
    (StixType::AttackPattern, 5),
    (StixType::Ipv4Addr, 9),
    (StixType::DomainName, 8),
    (StixType::File, 5),
];

impl World {
    /// Builds the knowledge base and `config.live_events` live events.
    pub fn new(config: &SimulatorConfig) -> Self {
        let mut world = World {
            seed: config.seed,
            mix: config.mix.clone(),
            base_ms: config.clock.base_ms,
            objects: Vec::new(),
            events: Vec::new(),
            files: HashMap::new(),
            alive: vec![Vec::new(); StixType::ALL.len()],
            alive_pos: Vec::new(),
            alive_all: Vec::new(),
            alive_all_pos: Vec::new(),
            refcount: Vec::new(),
            rng: SplitMix::new(derive(config.seed, 0xC0FFEE)),
        };
        world.build_knowledge_base(config.knowledge_base);
        world.append(config.live_events, EventId::ZERO, None);
        world
    }

    fn build_knowledge_base(&mut self, count: u64) {
        let marking_ms = self.base_ms.saturating_sub(200 * DAY_MS);
        for (i, _) in TLP_MARKINGS.iter().enumerate() {
            let seed = derive(self.seed, 0x7100 + i as u64);
            self.push_object(Object {
                ty: StixType::MarkingDefinition,
                seed,
                internal: uuid_v4(seed),
                stix_uuid: TLP_MARKINGS[i].0,
                created_ms: marking_ms,
                first_updated_ms: marking_ms,
                created_event: NONE,
                intl: false,
                created_by: NONE,
                marking: NONE,
                links: Box::new([]),
                initial_files: 0,
                versions: Vec::new(),
                deleted_event: NONE,
            });
        }
        let span = 30 * DAY_MS;
        let start = self.base_ms.saturating_sub(span);
        let step = span / count.max(1);
        let mut ms = start;
        for k in 0..count {
            // Every seventh object shares its millisecond with the previous one, so recovery
            // ids repeat as they do on a real platform (docs/opencti-protocol.md#event-ids).
            if k % 7 != 6 {
                ms = start + k * step + self.rng.below(step.max(1));
            }
            let ty = if k < 3 {
                StixType::Identity
            } else {
                self.pick_create_type()
            };
            let created = ms.saturating_sub(self.rng.below(5 * DAY_MS));
            if self.create_object(ty, created, ms, NONE).is_none() {
                self.create_object(StixType::Malware, created, ms, NONE);
            }
        }
    }

    fn pick_create_type(&mut self) -> StixType {
        let total: u32 = CREATE_WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.below(u64::from(total)) as u32;
        for (ty, weight) in CREATE_WEIGHTS {
            if roll < weight {
                return ty;
            }
            roll -= weight;
        }
        StixType::Malware
    }

    fn push_object(&mut self, object: Object) -> u32 {
        let index = self.objects.len() as u32;
        let ty = object.ty as usize;
        self.alive_pos.push(self.alive[ty].len() as u32);
        self.alive[ty].push(index);
        self.alive_all_pos.push(self.alive_all.len() as u32);
        self.alive_all.push(index);
        self.refcount.push(0);
        for r in [object.created_by, object.marking]
            .into_iter()
            .chain(object.links.iter().copied())
        {
            if r != NONE {
                self.refcount[r as usize] += 1;
            }
        }
        self.objects.push(object);
        index
    }

    fn kill(&mut self, index: u32, event: u32) {
        let ty = self.objects[index as usize].ty as usize;
        let pos = self.alive_pos[index as usize] as usize;
        self.alive[ty].swap_remove(pos);
        if let Some(&moved) = self.alive[ty].get(pos) {
            self.alive_pos[moved as usize] = pos as u32;
        }
        let pos = self.alive_all_pos[index as usize] as usize;
        self.alive_all.swap_remove(pos);
        if let Some(&moved) = self.alive_all.get(pos) {
            self.alive_all_pos[moved as usize] = pos as u32;
        }
        let object = &mut self.objects[index as usize];
        object.deleted_event = event;
        let refs: Vec<u32> = [object.created_by, object.marking]
            .into_iter()
            .chain(object.links.iter().copied())
            .filter(|r| *r != NONE)
            .collect();
        for r in refs {
            self.refcount[r as usize] -= 1;
        }
    }

    fn random_alive(&mut self, ty: StixType) -> Option<u32> {
        let list = &self.alive[ty as usize];
        if list.is_empty() {
            return None;
        }
        let i = self.rng.pick(list.len());
        Some(self.alive[ty as usize][i])
    }

    fn random_alive_of(&mut self, types: &[StixType]) -> Option<u32> {
        let total: usize = types.iter().map(|t| self.alive[*t as usize].len()).sum();
        if total == 0 {
            return None;
        }
        let mut roll = self.rng.pick(total);
        for ty in types {
            let list = &self.alive[*ty as usize];
            if roll < list.len() {
                return Some(list[roll]);
            }
            roll -= list.len();
        }
        None
    }

    /// Creates an object of type `ty`; `None` when the references it needs do not exist yet.
    fn create_object(
        &mut self,
        ty: StixType,
        created_ms: u64,
        updated_ms: u64,
        event: u32,
    ) -> Option<u32> {
        let seed = self.rng.next_u64();
        let intl = self.rng.chance(self.mix.non_ascii);
        let (created_by, marking) = match ty {
            StixType::MarkingDefinition | StixType::Identity => (NONE, NONE),
            _ => (
                self.random_alive(StixType::Identity).unwrap_or(NONE),
                self.random_alive(StixType::MarkingDefinition)
                    .unwrap_or(NONE),
            ),
        };
        let links: Box<[u32]> = match ty {
            StixType::Relationship => {
                let (source, target) = match self.rng.below(5) {
                    0 | 1 => (StixType::Indicator, StixType::Malware),
                    2 => (StixType::Malware, StixType::AttackPattern),
                    3 => (StixType::Malware, StixType::Vulnerability),
                    _ => (StixType::Indicator, StixType::Ipv4Addr),
                };
                let source = self.random_alive(source)?;
                let target = self.random_alive(target)?;
                Box::new([source, target])
            }
            StixType::Report => {
                let count = match self.rng.below(100) {
                    0..=1 => 100 + self.rng.below(200),
                    2..=11 => 20 + self.rng.below(30),
                    _ => 2 + self.rng.below(10),
                };
                let mut refs = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let r = self.random_alive_of(&[
                        StixType::Malware,
                        StixType::Indicator,
                        StixType::Relationship,
                        StixType::Vulnerability,
                        StixType::AttackPattern,
                        StixType::Ipv4Addr,
                        StixType::DomainName,
                    ])?;
                    if !refs.contains(&r) {
                        refs.push(r);
                    }
                }
                refs.into_boxed_slice()
            }
            _ => Box::new([]),
        };
        let initial_files = u8::from(
            matches!(ty, StixType::Report | StixType::Malware)
                && self.rng.chance(self.mix.files * 3.0),
        );
        let index = self.push_object(Object {
            ty,
            seed,
            internal: uuid_v4(derive(seed, 1)),
            stix_uuid: if ty == StixType::Indicator {
                uuid_v5(derive(seed, 0x1D00))
            } else {
                uuid_v5(seed)
            },
            created_ms,
            first_updated_ms: updated_ms,
            created_event: event,
            intl,
            created_by,
            marking,
            links,
            initial_files,
            versions: Vec::new(),
            deleted_event: NONE,
        });
        for ordinal in 0..u32::from(initial_files) {
            self.register_file(index, ordinal);
        }
        Some(index)
    }

    fn register_file(&mut self, object: u32, ordinal: u32) {
        let spec = self.file_spec(object, ordinal);
        let path = self.file_path(object, &spec);
        self.files.insert(path, spec);
    }

    /// The file `ordinal` of `object` (name, type, size, content seed).
    pub fn file_spec(&self, object: u32, ordinal: u32) -> FileSpec {
        let o = &self.objects[object as usize];
        let seed = derive(o.seed, 0xF11E + u64::from(ordinal));
        let intl = o.intl && seed.is_multiple_of(2);
        let pool = if intl {
            text::FILE_NAMES_INTL
        } else {
            text::FILE_NAMES
        };
        let (name, mime) = pool[((seed >> 8) % pool.len() as u64) as usize];
        let size = 512 + ((seed >> 20) % 24_000) as usize;
        FileSpec {
            name,
            mime,
            size,
            seed,
        }
    }

    /// `import/<EntityType>/<internal id>/<name>`: the file id, after `/storage/get/`
    /// (docs/opencti-protocol.md#attached-files).
    pub fn file_path(&self, object: u32, spec: &FileSpec) -> String {
        let o = &self.objects[object as usize];
        let mut internal = Vec::with_capacity(36);
        super::write::uuid(&mut internal, o.internal);
        format!(
            "import/{}/{}/{}",
            o.ty.entity_type(),
            String::from_utf8_lossy(&internal),
            spec.name
        )
    }

    fn next_id(&mut self, prev: EventId, now_ms: Option<u64>) -> EventId {
        match now_ms {
            Some(now) if now > prev.ms => EventId::new(now, 0),
            Some(_) => EventId::new(prev.ms, prev.seq + 1),
            None => {
                if self.rng.below(10) < 3 {
                    EventId::new(prev.ms, prev.seq + 1)
                } else {
                    EventId::new(prev.ms + 1 + self.rng.below(3), 0)
                }
            }
        }
    }

    /// Appends `count` live events with ids strictly greater than `floor` (and than the last
    /// event). With `now_ms`, ids follow the wall clock (at least `now_ms`).
    pub fn append(&mut self, count: u64, floor: EventId, now_ms: Option<u64>) {
        // The first event of a deterministic log sits at `base_ms` or just after.
        let origin = EventId::new(self.base_ms.saturating_sub(1), 0);
        let mut prev = self
            .events
            .last()
            .map(|e| e.id)
            .unwrap_or(origin)
            .max(floor);
        for _ in 0..count {
            let id = self.next_id(prev, now_ms);
            prev = id;
            self.append_one(id);
        }
    }

    fn append_one(&mut self, id: EventId) {
        let event = self.events.len() as u32;
        let seed = self.rng.next_u64();
        let roll = self.rng.unit();
        let mix = self.mix.clone();
        let generated = if roll < mix.deletes {
            self.gen_delete(event, id)
        } else if roll < mix.deletes + mix.merges {
            self.gen_merge(event, id, seed)
        } else if roll < mix.deletes + mix.merges + mix.updates {
            self.gen_update(event, id)
        } else {
            None
        };
        let live = match generated {
            Some(live) => live,
            None => self.gen_create(event, id),
        };
        self.events.push(LiveEvent { seed, ..live });
    }

    fn gen_create(&mut self, event: u32, id: EventId) -> LiveEvent {
        let ty = self.pick_create_type();
        let object = self
            .create_object(ty, id.ms, id.ms, event)
            .or_else(|| self.create_object(StixType::Malware, id.ms, id.ms, event))
            .unwrap_or(0);
        LiveEvent {
            id,
            kind: EventKind::Create,
            object,
            version: NONE,
            seed: 0,
        }
    }

    fn gen_update(&mut self, event: u32, id: EventId) -> Option<LiveEvent> {
        if self.alive_all.is_empty() {
            return None;
        }
        let object = self.alive_all[self.rng.pick(self.alive_all.len())];
        let ty = self.objects[object as usize].ty;
        if ty == StixType::MarkingDefinition {
            return None;
        }
        let change = if ty == StixType::Indicator && self.rng.chance(self.mix.id_changes) {
            Change::Pattern
        } else if !ty.is_sco() && self.rng.chance(self.mix.files) {
            Change::AddFile
        } else {
            match self.rng.below(3) {
                0 => Change::Description,
                1 => Change::AddLabel,
                _ => Change::Score,
            }
        };
        Some(self.push_version(object, event, id, EventKind::Update, change))
    }

    fn push_version(
        &mut self,
        object: u32,
        event: u32,
        id: EventId,
        kind: EventKind,
        change: Change,
    ) -> LiveEvent {
        let o = &mut self.objects[object as usize];
        let version = o.versions.len() as u32;
        o.versions.push(Version {
            event,
            ms: id.ms,
            change,
        });
        if change == Change::AddFile {
            let ordinal = u32::from(o.initial_files)
                + o.versions
                    .iter()
                    .filter(|v| v.change == Change::AddFile)
                    .count() as u32
                - 1;
            self.register_file(object, ordinal);
        }
        LiveEvent {
            id,
            kind,
            object,
            version,
            seed: 0,
        }
    }

    fn gen_delete(&mut self, event: u32, id: EventId) -> Option<LiveEvent> {
        for _ in 0..8 {
            if self.alive_all.is_empty() {
                return None;
            }
            let object = self.alive_all[self.rng.pick(self.alive_all.len())];
            let ty = self.objects[object as usize].ty;
            let protected = matches!(ty, StixType::MarkingDefinition | StixType::Identity);
            if !protected && self.refcount[object as usize] == 0 {
                self.kill(object, event);
                return Some(LiveEvent {
                    id,
                    kind: EventKind::Delete,
                    object,
                    version: NONE,
                    seed: 0,
                });
            }
        }
        None
    }

    fn gen_merge(&mut self, event: u32, id: EventId, seed: u64) -> Option<LiveEvent> {
        let object = self.random_alive_of(&[StixType::Malware, StixType::AttackPattern])?;
        let sources = 1 + self.rng.below(2) as u8;
        Some(self.push_version(
            object,
            event,
            id,
            EventKind::Merge,
            Change::Merge { seed, sources },
        ))
    }

    /// The state of `object` after every version with an event index `< upto`.
    pub fn view(&self, object: u32, upto: u32) -> View {
        let o = &self.objects[object as usize];
        let mut view = View {
            updated_ms: o.first_updated_ms,
            ..View::default()
        };
        for ordinal in 0..u32::from(o.initial_files) {
            view.files.push((ordinal, o.created_ms.saturating_sub(2)));
        }
        for v in o.versions.iter().take_while(|v| v.event < upto) {
            view.updated_ms = v.ms;
            match v.change {
                Change::Description => view.rev += 1,
                Change::AddLabel => view.labels += 1,
                Change::Score => view.score_gen += 1,
                Change::Pattern => view.pattern_gen += 1,
                Change::AddFile => view
                    .files
                    .push((view.files.len() as u32, v.ms.saturating_sub(2))),
                Change::Merge { seed, sources } => view.merges.push((seed, sources)),
            }
        }
        view
    }

    /// The pattern generation of an indicator before event `upto` (0 for other types).
    pub fn pattern_gen(&self, object: u32, upto: u32) -> u32 {
        let o = &self.objects[object as usize];
        if o.ty != StixType::Indicator {
            return 0;
        }
        o.versions
            .iter()
            .take_while(|v| v.event < upto)
            .filter(|v| v.change == Change::Pattern)
            .count() as u32
    }

    /// The STIX id of `object` before event `upto`.
    pub fn stix_id(&self, object: u32, upto: u32) -> StixId {
        let o = &self.objects[object as usize];
        let uuid = match o.ty {
            StixType::Indicator if !o.versions.is_empty() => match self.pattern_gen(object, upto) {
                0 => o.stix_uuid,
                generation => uuid_v5(derive(o.seed, 0x1D00 + u64::from(generation))),
            },
            _ => o.stix_uuid,
        };
        StixId { ty: o.ty, uuid }
    }

    /// `updated_at` of `object` before event `upto`.
    pub fn updated_ms(&self, object: u32, upto: u32) -> u64 {
        let o = &self.objects[object as usize];
        let n = o.versions.partition_point(|v| v.event < upto);
        if n == 0 {
            o.first_updated_ms
        } else {
            o.versions[n - 1].ms
        }
    }

    /// True when `object` exists just before event `upto`.
    pub fn exists(&self, object: u32, upto: u32) -> bool {
        let o = &self.objects[object as usize];
        (o.created_event == NONE || o.created_event < upto)
            && (o.deleted_event == NONE || o.deleted_event >= upto)
    }

    /// The objects `object` references directly (author, marking, relationship ends, report
    /// contents). They never change after creation.
    pub fn direct_refs(&self, object: u32) -> impl Iterator<Item = u32> + '_ {
        let o = &self.objects[object as usize];
        [o.created_by, o.marking]
            .into_iter()
            .chain(o.links.iter().copied())
            .filter(|r| *r != NONE)
    }

    /// Appends to `out` every object `object` references, recursively, deepest first, each once,
    /// skipping those `sent` says were sent already (and so, with them, everything they
    /// reference: a connection always sends an object's dependencies before the object).
    pub fn unsent_dependencies(&self, object: u32, sent: &dyn Fn(u32) -> bool, out: &mut Vec<u32>) {
        let refs: Vec<u32> = self.direct_refs(object).collect();
        for r in refs {
            if !sent(r) && !out.contains(&r) {
                self.unsent_dependencies(r, sent, out);
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }

    /// The recovery set (docs/opencti-protocol.md#dependency-and-recovery-events) for a connection
    /// arriving when the log has `head` events: every object existing then whose `updated_at` lies
    /// in `[from_ms, to_ms]`, ordered by `updated_at` then internal id. Costs one pass over all
    /// objects plus a sort.
    pub fn recovery_plan(&self, head: u32, from_ms: u64, to_ms: u64) -> Vec<(u64, u32)> {
        let mut plan: Vec<(u64, u128, u32)> = (0..self.objects.len() as u32)
            .filter(|&i| self.exists(i, head))
            .filter_map(|i| {
                let ms = self.updated_ms(i, head);
                (from_ms..=to_ms)
                    .contains(&ms)
                    .then(|| (ms, self.objects[i as usize].internal, i))
            })
            .collect();
        plan.sort_unstable();
        plan.into_iter().map(|(ms, _, i)| (ms, i)).collect()
    }
}
