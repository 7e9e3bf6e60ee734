//! Renders objects and events exactly in OpenCTI's shapes (docs/opencti-protocol.md#sse-framing
//! framing, docs/opencti-protocol.md#data-events payloads,
//! docs/opencti-protocol.md#dependency-and-recovery-events dependency and recovery payloads,
//! docs/opencti-protocol.md#stix-objects STIX with the OCTI and SCO extensions), straight into byte
//! buffers: no `serde_json::Value` tree, about a microsecond per event.

use super::model::{EventKind, StixId, StixType};
use super::rng::{SplitMix, derive, uuid_v4, uuid_v5};
use super::text;
use super::world::{Change, NONE, TLP_MARKINGS, View, World};
use super::write::{iso_str, json_str, json_str_body, num, uuid_str};
use crate::ids::{EventId, write_iso};

/// The OpenCTI extension id.
pub const OCTI_EXT: &str = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba";
/// The OpenCTI SCO extension id.
pub const SCO_EXT: &str = "extension-definition--f93e2c80-4231-4f9a-af8b-95c9bd566a82";
const USER_ID: &str = "88ec0c6a-13ce-5e39-b486-354fe4a7084f";
const LIVE_ORIGIN: &str = r#""origin":{"socket":"query","user_id":"88ec0c6a-13ce-5e39-b486-354fe4a7084f","group_ids":["1d6cc1a4-5c6f-4b61-9b7e-3a33a1d2f1a0"],"organization_ids":[]}"#;

/// Appends `id: …\nevent: …\ndata: ` (the part of a frame before the JSON payload).
pub fn frame_head(out: &mut Vec<u8>, id: Option<EventId>, event: &str) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        num(out, id.ms);
        out.push(b'-');
        num(out, id.seq);
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
}

/// Appends the end of a frame (`\n\n`).
pub fn frame_tail(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\n\n");
}

/// Appends the frame of live event `e`; returns its `data.id`.
pub fn live_frame(out: &mut Vec<u8>, w: &World, e: u32) -> StixId {
    let event = w.events[e as usize];
    frame_head(out, Some(event.id), event.kind.name());
    let object = event.object;
    let upto = e + 1;
    out.extend_from_slice(br#"{"version":"4","type":""#);
    out.extend_from_slice(event.kind.name().as_bytes());
    out.extend_from_slice(br#"","scope":"external","message":""#);
    match event.kind {
        EventKind::Create => create_message(out, w, object, upto, "creates"),
        EventKind::Delete => create_message(out, w, object, upto, "deletes"),
        EventKind::Update => update_message(out, w, object, event.version),
        EventKind::Merge => merge_message(out, w, object, event.version),
    }
    out.extend_from_slice(b"\",");
    out.extend_from_slice(LIVE_ORIGIN.as_bytes());
    out.extend_from_slice(br#","data":"#);
    let data = stix(out, w, object, upto);
    if matches!(event.kind, EventKind::Update | EventKind::Merge) {
        out.extend_from_slice(br#","context":"#);
        context(out, w, object, event.version);
    }
    out.extend_from_slice(br#","event_id":"#);
    uuid_str(out, uuid_v4(event.seed));
    out.push(b'}');
    frame_tail(out);
    data
}

/// Appends a dependency (`init-dependencies`) or recovery (`init-create`) frame for `object`
/// as it is before event `upto`; returns its `data.id`.
pub fn short_frame(
    out: &mut Vec<u8>,
    w: &World,
    object: u32,
    upto: u32,
    id: EventId,
    referer: &str,
) -> StixId {
    frame_head(out, Some(id), "create");
    out.extend_from_slice(br#"{"data":"#);
    let data = stix(out, w, object, upto);
    out.extend_from_slice(br#","message":""#);
    create_message(out, w, object, upto, "creates");
    out.extend_from_slice(br#"","origin":{"referer":""#);
    out.extend_from_slice(referer.as_bytes());
    out.extend_from_slice(br#""},"version":"4"}"#);
    frame_tail(out);
    data
}

fn create_message(out: &mut Vec<u8>, w: &World, object: u32, upto: u32, verb: &str) {
    let o = &w.objects[object as usize];
    out.extend_from_slice(verb.as_bytes());
    if o.ty == StixType::Relationship {
        let (source, target) = (o.links[0], o.links[1]);
        out.extend_from_slice(b" the relation ");
        out.extend_from_slice(relationship_type(w, object).as_bytes());
        out.extend_from_slice(b" from `");
        json_str_body(out, &name(w, source, upto));
        out.extend_from_slice(b"` (");
        out.extend_from_slice(w.objects[source as usize].ty.entity_type().as_bytes());
        out.extend_from_slice(b") to `");
        json_str_body(out, &name(w, target, upto));
        out.extend_from_slice(b"` (");
        out.extend_from_slice(w.objects[target as usize].ty.entity_type().as_bytes());
        out.push(b')');
    } else {
        out.extend_from_slice(b" a ");
        out.extend_from_slice(o.ty.entity_type().as_bytes());
        out.extend_from_slice(b" `");
        json_str_body(out, &name(w, object, upto));
        out.push(b'`');
    }
}

fn version_event(w: &World, object: u32, version: u32) -> (u32, Change) {
    let v = w.objects[object as usize].versions[version as usize];
    (v.event, v.change)
}

fn update_message(out: &mut Vec<u8>, w: &World, object: u32, version: u32) {
    let (e, change) = version_event(w, object, version);
    let after = w.view(object, e + 1);
    let o = &w.objects[object as usize];
    match change {
        Change::Description => {
            out.extend_from_slice(b"replaces `");
            let text = description(w, object, &after);
            let cut: String = text.chars().take(48).collect();
            json_str_body(out, &cut);
            out.extend_from_slice(b"` in `Description`");
        }
        Change::AddLabel => {
            out.extend_from_slice(b"adds `");
            json_str_body(out, label(o.seed, o.intl, after.labels - 1));
            out.extend_from_slice(b"` in `Label`");
        }
        Change::Score => {
            out.extend_from_slice(b"replaces `");
            num(out, score(o.seed, after.score_gen));
            out.extend_from_slice(if o.ty == StixType::Indicator || o.ty.is_sco() {
                b"` in `Score`"
            } else {
                b"` in `Confidence`"
            });
        }
        Change::Pattern => {
            out.extend_from_slice(b"replaces `");
            json_str_body(out, &pattern(o.seed, after.pattern_gen));
            out.extend_from_slice(b"` in `Pattern` and `");
            json_str_body(out, &indicator_value(o.seed, after.pattern_gen));
            out.extend_from_slice(b"` in `Name`");
        }
        Change::AddFile | Change::Merge { .. } => {
            let (ordinal, _) = after.files.last().copied().unwrap_or((0, 0));
            out.extend_from_slice(b"adds `");
            json_str_body(out, w.file_spec(object, ordinal).name);
            out.extend_from_slice(b"` in `Files`");
        }
    }
}

fn merge_message(out: &mut Vec<u8>, w: &World, object: u32, version: u32) {
    let (e, change) = version_event(w, object, version);
    let o = &w.objects[object as usize];
    out.extend_from_slice(b"merges ");
    out.extend_from_slice(o.ty.entity_type().as_bytes());
    if let Change::Merge { seed, sources } = change {
        for i in 0..sources {
            out.extend_from_slice(if i == 0 { b" `" } else { b", `" });
            json_str_body(out, &source_name(o.ty, seed, i));
            out.push(b'`');
        }
    }
    out.extend_from_slice(b" in `");
    json_str_body(out, &name(w, object, e + 1));
    out.push(b'`');
}

fn ext_path(out: &mut Vec<u8>, ext: &str, field: &str) {
    out.extend_from_slice(b"/extensions/");
    out.extend_from_slice(ext.as_bytes());
    out.push(b'/');
    out.extend_from_slice(field.as_bytes());
}

/// Writes a JSON value into a patch op.
type ValueWriter<'a> = &'a dyn Fn(&mut Vec<u8>);

/// One JSON patch op; `value` writes the value (or `None` for `remove`).
fn op(
    out: &mut Vec<u8>,
    first: &mut bool,
    kind: &str,
    path: impl FnOnce(&mut Vec<u8>),
    value: Option<ValueWriter<'_>>,
) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.extend_from_slice(br#"{"op":""#);
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(br#"","path":""#);
    path(out);
    out.push(b'"');
    if let Some(value) = value {
        out.extend_from_slice(br#","value":"#);
        value(out);
    }
    out.push(b'}');
}

fn context(out: &mut Vec<u8>, w: &World, object: u32, version: u32) {
    let (e, change) = version_event(w, object, version);
    let before = w.view(object, e);
    let after = w.view(object, e + 1);
    let o = &w.objects[object as usize];
    let sco = o.ty.is_sco();
    let score_ext = if sco { SCO_EXT } else { OCTI_EXT };
    for forward in [true, false] {
        let new = if forward { &after } else { &before };
        out.extend_from_slice(if forward {
            br#"{"patch":["#
        } else {
            br#"],"reverse_patch":["#
        });
        let mut first = true;
        let modified = |out: &mut Vec<u8>, first: &mut bool, view: &View| {
            if !sco {
                op(
                    out,
                    first,
                    "replace",
                    |o| o.extend_from_slice(b"/modified"),
                    Some(&|o: &mut Vec<u8>| iso_str(o, view.updated_ms)),
                );
            }
        };
        let updated_at = |out: &mut Vec<u8>, first: &mut bool, view: &View| {
            op(
                out,
                first,
                "replace",
                |o| ext_path(o, OCTI_EXT, "updated_at"),
                Some(&|o: &mut Vec<u8>| iso_str(o, view.updated_ms)),
            );
        };
        match change {
            Change::Description => {
                let desc = description(w, object, new);
                if sco {
                    op(
                        out,
                        &mut first,
                        "replace",
                        |o| ext_path(o, SCO_EXT, "description"),
                        Some(&|o: &mut Vec<u8>| json_str(o, &desc)),
                    );
                } else {
                    op(
                        out,
                        &mut first,
                        "replace",
                        |o| o.extend_from_slice(b"/description"),
                        Some(&|o: &mut Vec<u8>| json_str(o, &desc)),
                    );
                }
                if forward {
                    modified(out, &mut first, new);
                    updated_at(out, &mut first, new);
                } else {
                    updated_at(out, &mut first, new);
                    modified(out, &mut first, new);
                }
            }
            Change::AddLabel => {
                let n = before.labels;
                let l = label(o.seed, o.intl, n);
                let path = |o: &mut Vec<u8>| {
                    o.extend_from_slice(b"/labels");
                    if n > 0 {
                        o.push(b'/');
                        num(o, u64::from(n));
                    }
                };
                if forward {
                    let value = |o: &mut Vec<u8>| {
                        if n == 0 {
                            o.push(b'[');
                            json_str(o, l);
                            o.push(b']');
                        } else {
                            json_str(o, l);
                        }
                    };
                    op(out, &mut first, "add", path, Some(&value));
                    modified(out, &mut first, new);
                    updated_at(out, &mut first, new);
                } else {
                    updated_at(out, &mut first, new);
                    modified(out, &mut first, new);
                    op(out, &mut first, "remove", path, None);
                }
            }
            Change::Score => {
                let value = score(o.seed, new.score_gen);
                let write_value = |o: &mut Vec<u8>| num(o, value);
                if o.ty == StixType::Indicator || sco {
                    op(
                        out,
                        &mut first,
                        "replace",
                        |o| ext_path(o, score_ext, "score"),
                        Some(&write_value),
                    );
                } else {
                    op(
                        out,
                        &mut first,
                        "replace",
                        |o| o.extend_from_slice(b"/confidence"),
                        Some(&write_value),
                    );
                }
                modified(out, &mut first, new);
                updated_at(out, &mut first, new);
            }
            Change::Pattern => {
                let id = indicator_id(o.seed, new.pattern_gen);
                let pat = pattern(o.seed, new.pattern_gen);
                let value = indicator_value(o.seed, new.pattern_gen);
                let id_op = |out: &mut Vec<u8>, first: &mut bool| {
                    op(
                        out,
                        first,
                        "replace",
                        |o| o.extend_from_slice(b"/id"),
                        Some(&|o: &mut Vec<u8>| {
                            o.push(b'"');
                            id.write(o);
                            o.push(b'"');
                        }),
                    );
                };
                if forward {
                    id_op(out, &mut first);
                    modified(out, &mut first, new);
                }
                if !forward {
                    updated_at(out, &mut first, new);
                }
                if forward {
                    op(
                        out,
                        &mut first,
                        "replace",
                        |o| o.extend_from_slice(b"/name"),
                        Some(&|o: &mut Vec<u8>| json_str(o, &value)),
                    );
                    op(
                        out,
                        &mut first,
                        "replace",
                        |o| o.extend_from_slice(b"/pattern"),
                        Some(&|o: &mut Vec<u8>| json_str(o, &pat)),
                    );
                    updated_at(out, &mut first, new);
                } else {
                    op(
                        out,
                        &mut first,
                        "replace",
                        |o| o.extend_from_slice(b"/pattern"),
                        Some(&|o: &mut Vec<u8>| json_str(o, &pat)),
                    );
                    op(
                        out,
                        &mut first,
                        "replace",
                        |o| o.extend_from_slice(b"/name"),
                        Some(&|o: &mut Vec<u8>| json_str(o, &value)),
                    );
                    modified(out, &mut first, new);
                    id_op(out, &mut first);
                }
            }
            Change::AddFile => {
                let n = before.files.len();
                let path = |o: &mut Vec<u8>| {
                    ext_path(o, OCTI_EXT, "files");
                    if n > 0 {
                        o.push(b'/');
                        num(o, n as u64);
                    }
                };
                if forward {
                    let entry = after.files[n];
                    let value = |o: &mut Vec<u8>| {
                        if n == 0 {
                            o.push(b'[');
                        }
                        file_entry(o, w, object, entry);
                        if n == 0 {
                            o.push(b']');
                        }
                    };
                    modified(out, &mut first, new);
                    updated_at(out, &mut first, new);
                    op(out, &mut first, "add", path, Some(&value));
                } else {
                    op(out, &mut first, "remove", path, None);
                    updated_at(out, &mut first, new);
                    modified(out, &mut first, new);
                }
            }
            Change::Merge { seed, sources } => {
                let aliases_before = aliases(o.ty, &before);
                let stix_before = before
                    .merges
                    .iter()
                    .map(|(_, n)| u32::from(*n))
                    .sum::<u32>();
                let alias_path = |o: &mut Vec<u8>, i: u32| {
                    o.extend_from_slice(b"/aliases/");
                    num(o, u64::from(i));
                };
                let ids_path = |o: &mut Vec<u8>, i: u32| {
                    ext_path(o, OCTI_EXT, "stix_ids");
                    if stix_before > 0 {
                        o.push(b'/');
                        num(o, u64::from(stix_before + i));
                    }
                };
                if forward {
                    for i in 0..sources {
                        let alias = source_name(o.ty, seed, i);
                        op(
                            out,
                            &mut first,
                            "add",
                            |o| alias_path(o, aliases_before.len() as u32 + u32::from(i)),
                            Some(&|o: &mut Vec<u8>| json_str(o, &alias)),
                        );
                    }
                    modified(out, &mut first, new);
                    if stix_before == 0 {
                        let ty = o.ty;
                        op(
                            out,
                            &mut first,
                            "add",
                            |o| ids_path(o, 0),
                            Some(&|o: &mut Vec<u8>| {
                                o.push(b'[');
                                for i in 0..sources {
                                    if i > 0 {
                                        o.push(b',');
                                    }
                                    o.push(b'"');
                                    source_stix_id(ty, seed, i).write(o);
                                    o.push(b'"');
                                }
                                o.push(b']');
                            }),
                        );
                    } else {
                        let ty = o.ty;
                        for i in 0..sources {
                            op(
                                out,
                                &mut first,
                                "add",
                                |o| ids_path(o, u32::from(i)),
                                Some(&|o: &mut Vec<u8>| {
                                    o.push(b'"');
                                    source_stix_id(ty, seed, i).write(o);
                                    o.push(b'"');
                                }),
                            );
                        }
                    }
                    updated_at(out, &mut first, new);
                } else {
                    updated_at(out, &mut first, new);
                    if stix_before == 0 {
                        op(out, &mut first, "remove", |o| ids_path(o, 0), None);
                    } else {
                        for i in (0..sources).rev() {
                            op(
                                out,
                                &mut first,
                                "remove",
                                |o| ids_path(o, u32::from(i)),
                                None,
                            );
                        }
                    }
                    modified(out, &mut first, new);
                    for i in (0..sources).rev() {
                        op(
                            out,
                            &mut first,
                            "remove",
                            |o| alias_path(o, aliases_before.len() as u32 + u32::from(i)),
                            None,
                        );
                    }
                }
            }
        }
    }
    out.push(b']');
    if let Change::Merge { seed, sources } = change {
        out.extend_from_slice(br#","sources":["#);
        for i in 0..sources {
            if i > 0 {
                out.push(b',');
            }
            merge_source(out, o.ty, seed, i, o.created_ms.min(before.updated_ms));
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// The STIX id of merge source `i`.
fn source_stix_id(ty: StixType, seed: u64, i: u8) -> StixId {
    StixId {
        ty,
        uuid: uuid_v5(derive(seed, 0x5000 + u64::from(i))),
    }
}

fn source_name(ty: StixType, seed: u64, i: u8) -> String {
    let s = derive(seed, 0x5100 + u64::from(i));
    match ty {
        StixType::AttackPattern => format!(
            "{} variant {}",
            text::ATTACK_PATTERNS[(s % 10) as usize].1,
            s % 97
        ),
        _ => format!(
            "{}-{}",
            text::MALWARE[(s % text::MALWARE.len() as u64) as usize],
            s % 997
        ),
    }
}

fn merge_source(out: &mut Vec<u8>, ty: StixType, seed: u64, i: u8, ms: u64) {
    let id = source_stix_id(ty, seed, i);
    let s = derive(seed, 0x5200 + u64::from(i));
    let created = ms.saturating_sub(s % 3_600_000);
    out.extend_from_slice(br#"{"id":""#);
    id.write(out);
    out.extend_from_slice(br#"","spec_version":"2.1","type":""#);
    out.extend_from_slice(ty.stix_name().as_bytes());
    out.extend_from_slice(br#"","extensions":{""#);
    out.extend_from_slice(OCTI_EXT.as_bytes());
    out.extend_from_slice(br#"":{"extension_type":"property-extension","id":"#);
    uuid_str(out, uuid_v4(s));
    out.extend_from_slice(br#","type":""#);
    out.extend_from_slice(ty.entity_type().as_bytes());
    out.extend_from_slice(br#"","created_at":"#);
    iso_str(out, created);
    out.extend_from_slice(br#","updated_at":"#);
    iso_str(out, created);
    out.extend_from_slice(br#","is_inferred":false,"creator_ids":[""#);
    out.extend_from_slice(USER_ID.as_bytes());
    out.extend_from_slice(br#""]}},"created":"#);
    iso_str(out, created);
    out.extend_from_slice(br#","modified":"#);
    iso_str(out, created);
    out.extend_from_slice(br#","revoked":false,"confidence":75,"lang":"en","name":"#);
    json_str(out, &source_name(ty, seed, i));
    out.extend_from_slice(br#","description":"#);
    text::description_json(out, s, false);
    if ty == StixType::Malware {
        out.extend_from_slice(br#","malware_types":["trojan"],"is_family":true"#);
    }
    out.extend_from_slice(br#","aliases":[]}"#);
}

fn relationship_type(w: &World, object: u32) -> &'static str {
    let o = &w.objects[object as usize];
    match (
        w.objects[o.links[0] as usize].ty,
        w.objects[o.links[1] as usize].ty,
    ) {
        (StixType::Indicator, StixType::Malware) => "indicates",
        (StixType::Malware, StixType::AttackPattern) => "uses",
        (StixType::Malware, StixType::Vulnerability) => "targets",
        (StixType::Indicator, _) => "based-on",
        _ => "related-to",
    }
}

fn score(seed: u64, generation: u32) -> u64 {
    10 + derive(seed, 0x5C0 + u64::from(generation)) % 91
}

fn label(seed: u64, intl: bool, n: u32) -> &'static str {
    let s = derive(seed, 0x1AB + u64::from(n));
    if intl && s.is_multiple_of(3) {
        text::LABELS_INTL[(s % text::LABELS_INTL.len() as u64) as usize]
    } else {
        text::LABELS[((s >> 3) % text::LABELS.len() as u64) as usize]
    }
}

fn indicator_id(seed: u64, generation: u32) -> StixId {
    StixId {
        ty: StixType::Indicator,
        uuid: uuid_v5(derive(seed, 0x1D00 + u64::from(generation))),
    }
}

fn is_ip_indicator(seed: u64) -> bool {
    !seed.is_multiple_of(3)
}

fn ipv4(seed: u64) -> String {
    let s = mix_bytes(seed);
    let prefix = [
        "198.51.100",
        "203.0.113",
        "192.0.2",
        "45.83.64",
        "185.220.101",
    ][(s[0] % 5) as usize];
    format!("{prefix}.{}", 1 + s[1] % 254)
}

fn domain(seed: u64) -> String {
    let s = mix_bytes(seed);
    let w1 = text::DOMAIN_WORDS[(s[0] as usize) % text::DOMAIN_WORDS.len()];
    let w2 = text::DOMAIN_WORDS[(s[1] as usize) % text::DOMAIN_WORDS.len()];
    let tld = text::TLDS[(s[2] as usize) % text::TLDS.len()];
    format!("{w1}-{w2}{}.{tld}", s[3] % 100)
}

fn mix_bytes(seed: u64) -> [u8; 8] {
    super::rng::mix(seed).to_le_bytes()
}

fn indicator_value(seed: u64, generation: u32) -> String {
    let s = derive(seed, 0x7A1 + u64::from(generation));
    if is_ip_indicator(seed) {
        ipv4(s)
    } else {
        domain(s)
    }
}

fn pattern(seed: u64, generation: u32) -> String {
    let value = indicator_value(seed, generation);
    if is_ip_indicator(seed) {
        format!("[ipv4-addr:value = '{value}']")
    } else {
        format!("[domain-name:value = '{value}']")
    }
}

/// The display name of `object` before event `upto` (what messages quote).
pub fn name(w: &World, object: u32, upto: u32) -> String {
    let o = &w.objects[object as usize];
    let s = o.seed;
    match o.ty {
        StixType::MarkingDefinition => TLP_MARKINGS[(object as usize).min(4)].1.to_owned(),
        StixType::Identity => {
            text::choose(s, o.intl, text::ORGANIZATIONS, text::ORGANIZATIONS_INTL).to_owned()
        }
        StixType::Malware => text::choose(s, o.intl, text::MALWARE, text::MALWARE_INTL).to_owned(),
        StixType::Indicator => indicator_value(s, w.pattern_gen(object, upto)),
        StixType::Vulnerability => format!("CVE-{}-{}", 2019 + s % 6, 10_000 + (s >> 8) % 40_000),
        StixType::AttackPattern => text::ATTACK_PATTERNS
            [(s % text::ATTACK_PATTERNS.len() as u64) as usize]
            .1
            .to_owned(),
        StixType::Report => {
            let subject = text::MALWARE[((s >> 4) % text::MALWARE.len() as u64) as usize];
            let topic = text::choose(s, o.intl, text::REPORT_TOPICS, text::REPORT_TOPICS_INTL);
            let mut date = Vec::new();
            write_iso(&mut date, o.created_ms);
            format!(
                "{subject} {topic} - {}",
                String::from_utf8_lossy(&date[..7])
            )
        }
        StixType::Relationship => relationship_type(w, object).to_owned(),
        StixType::Ipv4Addr => ipv4(s),
        StixType::DomainName => domain(s),
        StixType::File => format!(
            "{}_{}.exe",
            ["invoice", "setup", "update", "scan", "doc"][(s % 5) as usize],
            s % 10_000
        ),
    }
}

fn description(w: &World, object: u32, view: &View) -> String {
    let o = &w.objects[object as usize];
    text::description(derive(o.seed, 0xDE5C + u64::from(view.rev)), o.intl)
}

fn description_json(out: &mut Vec<u8>, w: &World, object: u32, view: &View) {
    let o = &w.objects[object as usize];
    text::description_json(out, derive(o.seed, 0xDE5C + u64::from(view.rev)), o.intl);
}

fn aliases(ty: StixType, view: &View) -> Vec<String> {
    view.merges
        .iter()
        .flat_map(|(seed, n)| (0..*n).map(move |i| source_name(ty, *seed, i)))
        .collect()
}

fn file_entry(out: &mut Vec<u8>, w: &World, object: u32, (ordinal, version_ms): (u32, u64)) {
    let spec = w.file_spec(object, ordinal);
    out.extend_from_slice(br#"{"name":"#);
    json_str(out, spec.name);
    out.extend_from_slice(br#","uri":"#);
    json_str(out, &format!("/storage/get/{}", w.file_path(object, &spec)));
    out.extend_from_slice(br#","version":"#);
    iso_str(out, version_ms);
    out.extend_from_slice(br#","mime_type":"#);
    json_str(out, spec.mime);
    out.extend_from_slice(br#","object_marking_refs":["#);
    let marking = w.objects[object as usize].marking;
    if marking != NONE {
        out.push(b'"');
        w.stix_id(marking, 0).write(out);
        out.push(b'"');
    }
    out.extend_from_slice(b"]}");
}

fn string_list(out: &mut Vec<u8>, items: &[&str]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(out, item);
    }
    out.push(b']');
}

/// Appends `object` as OpenCTI serialises it, as it is before event `upto`; returns its id.
pub fn stix(out: &mut Vec<u8>, w: &World, object: u32, upto: u32) -> StixId {
    let o = &w.objects[object as usize];
    let view = w.view(object, upto);
    let id = w.stix_id(object, upto);
    let sco = o.ty.is_sco();
    out.extend_from_slice(br#"{"id":""#);
    id.write(out);
    out.extend_from_slice(br#"","spec_version":"2.1","type":""#);
    out.extend_from_slice(o.ty.stix_name().as_bytes());
    out.extend_from_slice(br#"","extensions":{""#);
    out.extend_from_slice(OCTI_EXT.as_bytes());
    out.extend_from_slice(br#"":{"extension_type":"property-extension","id":"#);
    uuid_str(out, o.internal);
    out.extend_from_slice(br#","type":""#);
    if o.ty == StixType::Relationship {
        out.extend_from_slice(relationship_type(w, object).as_bytes());
    } else {
        out.extend_from_slice(o.ty.entity_type().as_bytes());
    }
    out.extend_from_slice(br#"","created_at":"#);
    iso_str(out, o.created_ms);
    out.extend_from_slice(br#","updated_at":"#);
    iso_str(out, view.updated_ms);
    out.extend_from_slice(br#","is_inferred":false,"creator_ids":[""#);
    out.extend_from_slice(USER_ID.as_bytes());
    out.extend_from_slice(b"\"]");
    match o.ty {
        StixType::Identity => out.extend_from_slice(br#","reliability":"B""#),
        StixType::MarkingDefinition => {
            let (_, _, order, color) = TLP_MARKINGS[(object as usize).min(4)];
            out.extend_from_slice(br#","order":"#);
            num(out, u64::from(order));
            out.extend_from_slice(br#","color":"#);
            json_str(out, color);
        }
        StixType::Indicator => {
            out.extend_from_slice(br#","detection":false,"score":"#);
            num(out, score(o.seed, view.score_gen));
            out.extend_from_slice(if is_ip_indicator(o.seed) {
                br#","main_observable_type":"IPv4-Addr""#
            } else {
                br#","main_observable_type":"Domain-Name""#
            });
        }
        StixType::Relationship => {
            for (side, r) in [("source", o.links[0]), ("target", o.links[1])] {
                let ro = &w.objects[r as usize];
                out.extend_from_slice(b",\"");
                out.extend_from_slice(side.as_bytes());
                out.extend_from_slice(br#"_value":"#);
                json_str(out, &name(w, r, upto));
                out.extend_from_slice(b",\"");
                out.extend_from_slice(side.as_bytes());
                out.extend_from_slice(br#"_ref":"#);
                uuid_str(out, ro.internal);
                out.extend_from_slice(b",\"");
                out.extend_from_slice(side.as_bytes());
                out.extend_from_slice(br#"_type":""#);
                out.extend_from_slice(ro.ty.entity_type().as_bytes());
                out.extend_from_slice(b"\",\"");
                out.extend_from_slice(side.as_bytes());
                out.extend_from_slice(br#"_ref_object_marking_refs":["#);
                if ro.marking != NONE {
                    uuid_str(out, w.objects[ro.marking as usize].internal);
                }
                out.push(b']');
            }
        }
        _ => {}
    }
    if !view.files.is_empty() {
        out.extend_from_slice(br#","files":["#);
        for (i, entry) in view.files.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            file_entry(out, w, object, *entry);
        }
        out.push(b']');
    }
    if !view.merges.is_empty() {
        out.extend_from_slice(br#","stix_ids":["#);
        let mut first = true;
        for (seed, n) in &view.merges {
            for i in 0..*n {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.push(b'"');
                source_stix_id(o.ty, *seed, i).write(out);
                out.push(b'"');
            }
        }
        out.push(b']');
    }
    out.push(b'}');
    if sco {
        out.extend_from_slice(br#",""#);
        out.extend_from_slice(SCO_EXT.as_bytes());
        out.extend_from_slice(br#"":{"extension_type":"property-extension","score":"#);
        num(out, score(o.seed, view.score_gen));
        out.extend_from_slice(br#","description":"#);
        description_json(out, w, object, &view);
        out.push(b'}');
    }
    out.push(b'}');
    if o.ty == StixType::MarkingDefinition {
        out.extend_from_slice(br#","created":"#);
        iso_str(out, o.created_ms);
        out.extend_from_slice(br#","modified":"#);
        iso_str(out, o.created_ms);
        out.extend_from_slice(br#","name":"#);
        json_str(out, TLP_MARKINGS[(object as usize).min(4)].1);
        out.extend_from_slice(br#","definition_type":"TLP"}"#);
        return id;
    }
    if !sco {
        out.extend_from_slice(br#","created":"#);
        iso_str(out, o.created_ms);
        out.extend_from_slice(br#","modified":"#);
        iso_str(out, view.updated_ms);
        out.extend_from_slice(br#","revoked":false,"confidence":"#);
        let confidence = if o.ty == StixType::Indicator {
            80
        } else {
            score(o.seed, view.score_gen).max(15)
        };
        num(out, confidence);
        out.extend_from_slice(if o.intl {
            br#","lang":"fr""#
        } else {
            br#","lang":"en""#
        });
    }
    if view.labels > 0 {
        out.extend_from_slice(br#","labels":["#);
        for n in 0..view.labels {
            if n > 0 {
                out.push(b',');
            }
            json_str(out, label(o.seed, o.intl, n));
        }
        out.push(b']');
    }
    if o.marking != NONE {
        out.extend_from_slice(br#","object_marking_refs":[""#);
        w.stix_id(o.marking, upto).write(out);
        out.extend_from_slice(b"\"]");
    }
    if o.created_by != NONE {
        out.extend_from_slice(br#","created_by_ref":""#);
        w.stix_id(o.created_by, upto).write(out);
        out.push(b'"');
    }
    if matches!(
        o.ty,
        StixType::Malware | StixType::Report | StixType::Vulnerability | StixType::AttackPattern
    ) {
        let mut rng = SplitMix::new(derive(o.seed, 0xE7));
        out.extend_from_slice(br#","external_references":["#);
        for i in 0..1 + rng.below(3) {
            if i > 0 {
                out.push(b',');
            }
            let (source, base) = text::EXTERNAL_SOURCES[rng.pick(text::EXTERNAL_SOURCES.len())];
            out.extend_from_slice(br#"{"source_name":"#);
            json_str(out, source);
            out.extend_from_slice(br#","url":""#);
            out.extend_from_slice(base.as_bytes());
            num(out, rng.below(1_000_000));
            out.extend_from_slice(b"\"}");
        }
        out.push(b']');
    }
    match o.ty {
        StixType::Identity => {
            out.extend_from_slice(br#","name":"#);
            json_str(out, &name(w, object, upto));
            out.extend_from_slice(br#","description":"#);
            description_json(out, w, object, &view);
            out.extend_from_slice(br#","identity_class":"organization","sectors":["#);
            if o.seed.is_multiple_of(2) {
                json_str(out, text::SECTORS[(o.seed % 5) as usize]);
            }
            out.push(b']');
        }
        StixType::Malware => {
            out.extend_from_slice(br#","name":"#);
            json_str(out, &name(w, object, upto));
            out.extend_from_slice(br#","description":"#);
            description_json(out, w, object, &view);
            out.extend_from_slice(br#","malware_types":["trojan"],"is_family":true,"aliases":"#);
            let names = aliases(o.ty, &view);
            string_list(out, &names.iter().map(String::as_str).collect::<Vec<_>>());
        }
        StixType::Indicator => {
            let generation = view.pattern_gen;
            out.extend_from_slice(br#","name":"#);
            json_str(out, &indicator_value(o.seed, generation));
            out.extend_from_slice(br#","description":"#);
            description_json(out, w, object, &view);
            out.extend_from_slice(br#","indicator_types":["malicious-activity"],"pattern":"#);
            json_str(out, &pattern(o.seed, generation));
            out.extend_from_slice(br#","pattern_type":"stix","valid_from":"#);
            iso_str(out, o.created_ms);
            out.extend_from_slice(br#","valid_until":"#);
            iso_str(out, o.created_ms + 90 * 86_400_000);
        }
        StixType::Vulnerability => {
            out.extend_from_slice(br#","name":"#);
            json_str(out, &name(w, object, upto));
            out.extend_from_slice(br#","description":"#);
            description_json(out, w, object, &view);
        }
        StixType::AttackPattern => {
            let (mitre_id, _) =
                text::ATTACK_PATTERNS[(o.seed % text::ATTACK_PATTERNS.len() as u64) as usize];
            out.extend_from_slice(br#","name":"#);
            json_str(out, &name(w, object, upto));
            out.extend_from_slice(br#","description":"#);
            description_json(out, w, object, &view);
            out.extend_from_slice(br#","aliases":"#);
            let names = aliases(o.ty, &view);
            string_list(out, &names.iter().map(String::as_str).collect::<Vec<_>>());
            out.extend_from_slice(br#","kill_chain_phases":[{"kill_chain_name":"mitre-attack","phase_name":"execution"}],"x_mitre_id":"#);
            json_str(out, mitre_id);
        }
        StixType::Report => {
            out.extend_from_slice(br#","name":"#);
            json_str(out, &name(w, object, upto));
            out.extend_from_slice(br#","description":"#);
            description_json(out, w, object, &view);
            out.extend_from_slice(br#","report_types":["threat-report"],"published":"#);
            iso_str(out, o.created_ms - o.created_ms % 86_400_000);
            out.extend_from_slice(br#","object_refs":["#);
            for (i, r) in o.links.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                w.stix_id(*r, upto).write(out);
                out.push(b'"');
            }
            out.push(b']');
        }
        StixType::Relationship => {
            out.extend_from_slice(br#","relationship_type":""#);
            out.extend_from_slice(relationship_type(w, object).as_bytes());
            out.extend_from_slice(br#"","description":"#);
            description_json(out, w, object, &view);
            out.extend_from_slice(br#","source_ref":""#);
            w.stix_id(o.links[0], upto).write(out);
            out.extend_from_slice(br#"","target_ref":""#);
            w.stix_id(o.links[1], upto).write(out);
            out.extend_from_slice(br#"","start_time":"#);
            iso_str(out, o.created_ms - o.created_ms % 86_400_000);
            out.extend_from_slice(br#","stop_time":"#);
            iso_str(
                out,
                o.created_ms - o.created_ms % 86_400_000 + 90 * 86_400_000,
            );
        }
        StixType::Ipv4Addr | StixType::DomainName => {
            out.extend_from_slice(br#","value":"#);
            json_str(out, &name(w, object, upto));
        }
        StixType::File => {
            let mut rng = SplitMix::new(derive(o.seed, 0x4A5));
            out.extend_from_slice(br#","name":"#);
            json_str(out, &name(w, object, upto));
            out.extend_from_slice(br#","hashes":{"MD5":""#);
            hex(out, &mut rng, 16);
            out.extend_from_slice(br#"","SHA-1":""#);
            hex(out, &mut rng, 20);
            out.extend_from_slice(br#"","SHA-256":""#);
            hex(out, &mut rng, 32);
            out.extend_from_slice(br#""},"size":"#);
            num(out, 10_000 + rng.below(4_000_000));
        }
        StixType::MarkingDefinition => {}
    }
    out.push(b'}');
    id
}

fn hex(out: &mut Vec<u8>, rng: &mut SplitMix, bytes: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for _ in 0..bytes {
        let b = rng.next_u64() as u8;
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// The `data` of an injected report (huge or with hostile file URIs), a valid live `create`.
pub fn injected_report(
    out: &mut Vec<u8>,
    id: EventId,
    seed: u64,
    description_bytes: usize,
    file_uris: &[&str],
) -> StixId {
    let data = StixId {
        ty: StixType::Report,
        uuid: uuid_v5(derive(seed, 0x1_4EC7)),
    };
    let internal = uuid_v4(derive(seed, 0x2_4EC7));
    frame_head(out, Some(id), "create");
    out.extend_from_slice(br#"{"version":"4","type":"create","scope":"external","message":"creates a Report `Injected report`","#);
    out.extend_from_slice(LIVE_ORIGIN.as_bytes());
    out.extend_from_slice(br#","data":{"id":""#);
    data.write(out);
    out.extend_from_slice(br#"","spec_version":"2.1","type":"report","extensions":{""#);
    out.extend_from_slice(OCTI_EXT.as_bytes());
    out.extend_from_slice(br#"":{"extension_type":"property-extension","id":"#);
    uuid_str(out, internal);
    out.extend_from_slice(br#","type":"Report","created_at":"#);
    iso_str(out, id.ms);
    out.extend_from_slice(br#","updated_at":"#);
    iso_str(out, id.ms);
    out.extend_from_slice(br#","is_inferred":false,"creator_ids":[""#);
    out.extend_from_slice(USER_ID.as_bytes());
    out.extend_from_slice(b"\"]");
    if !file_uris.is_empty() {
        out.extend_from_slice(br#","files":["#);
        for (i, uri) in file_uris.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"name":"payload.bin","uri":"#);
            json_str(out, uri);
            out.extend_from_slice(br#","version":"#);
            iso_str(out, id.ms);
            out.extend_from_slice(
                br#","mime_type":"application/octet-stream","object_marking_refs":[]}"#,
            );
        }
        out.push(b']');
    }
    out.extend_from_slice(br#"}},"created":"#);
    iso_str(out, id.ms);
    out.extend_from_slice(br#","modified":"#);
    iso_str(out, id.ms);
    out.extend_from_slice(
        br#","revoked":false,"confidence":50,"lang":"en","name":"Injected report","description":""#,
    );
    let sentence = text::SENTENCES[0].as_bytes();
    let start = out.len();
    while out.len() - start < description_bytes {
        let room = description_bytes - (out.len() - start);
        out.extend_from_slice(&sentence[..room.min(sentence.len())]);
        if room > sentence.len() {
            out.push(b' ');
        }
    }
    out.extend_from_slice(br#"","report_types":["threat-report"],"published":"#);
    iso_str(out, id.ms);
    out.extend_from_slice(br#","object_refs":[]},"event_id":"#);
    uuid_str(out, uuid_v4(seed));
    out.push(b'}');
    frame_tail(out);
    data
}

/// File URIs no exporter should fetch: traversal, another host, another scheme, no storage path.
pub const HOSTILE_URIS: [&str; 5] = [
    "/storage/get/../../../../etc/passwd",
    "/storage/get/import/Report/%2e%2e/%2e%2e/secrets",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "file:///etc/shadow",
    "unknown",
];
