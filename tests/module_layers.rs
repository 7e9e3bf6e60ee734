//! The main crate's top-level modules import one way: each from its own layer or the layers
//! below, never in a cycle. The layers are the ones `src/lib.rs` lists; a new module must be
//! placed in one here, and an import that points up or closes a cycle fails with the file that
//! makes it.
//!
//! Every `crate::` path counts: `use` lines (grouped ones included), paths inline in code and
//! `$crate::` in macros, tests included. Comments (doc links among them) and string literals do not.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom first, as `src/lib.rs` lists them.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "support",
        &[
            "allocator",
            "backoff",
            "budget",
            "histogram",
            "ids",
            "quarantine",
            "record_file",
            "secret",
            "tls",
            "wal_access",
        ],
    ),
    (
        "edges",
        &["opencti_api", "readback", "sink", "stream", "transform"],
    ),
    ("configuration", &["config", "logging"]),
    ("stages", &["pipeline"]),
    ("operations", &["metrics", "ops", "status", "view"]),
    ("composition", &["daemon"]),
    ("commands", &["cli", "commands"]),
];

/// Files of the crate root, not modules of their own.
const ROOT_FILES: &[&str] = &["lib", "main"];

/// One import: from the module of `file` to the top-level module `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Import {
    from: String,
    to: String,
    file: String,
}

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).expect("the source directory can be listed");
    for entry in entries {
        let path = entry.expect("a directory entry can be read").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/pipeline/uploader.rs` → `pipeline`.
fn module_of(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).expect("a file under src/");
    let first = relative
        .components()
        .next()
        .expect("a non-empty relative path")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// `text` with comments and the contents of string and character literals blanked out, so that
/// what is left is code.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(text.len(), |n| i + n);
            i = end;
        } else if rest.starts_with("/*") {
            let mut depth = 0usize;
            while i < bytes.len() {
                if text[i..].starts_with("/*") {
                    depth += 1;
                    i += 2;
                } else if text[i..].starts_with("*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(hashes) = raw_string_start(rest) {
            let closing = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            i = text[body..]
                .find(&closing)
                .map_or(text.len(), |n| body + n + closing.len());
            out.push_str("\"\"");
        } else if bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if let Some(len) = char_literal_len(rest) {
            i += len;
            out.push_str("' '");
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The number of `#` of a raw string (`r"…"`, `r#"…"#`, `br"…"`) starting here.
fn raw_string_start(rest: &str) -> Option<usize> {
    let after_r = rest.strip_prefix('r').or_else(|| rest.strip_prefix("br"))?;
    let hashes = after_r.len() - after_r.trim_start_matches('#').len();
    after_r[hashes..].starts_with('"').then_some(hashes)
}

/// The length of a character literal starting here (`'a'`, `'\n'`, `'\u{1F600}'`), `None` for
/// a lifetime or anything else.
fn char_literal_len(rest: &str) -> Option<usize> {
    let body = rest.strip_prefix('\'')?;
    if let Some(escaped) = body.strip_prefix('\\') {
        let end = escaped.find('\'')?;
        return Some(1 + 1 + end + 1);
    }
    let c = body.chars().next()?;
    body[c.len_utf8()..]
        .starts_with('\'')
        .then(|| 1 + c.len_utf8() + 1)
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules named by the `crate::` paths of `code`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut targets = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("crate::") {
        let at = from + found;
        from = at + "crate::".len();
        // A longer name ending in "crate" is not a path; `$crate::` in a macro is one.
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = code[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            for item in top_level_items(group) {
                let name: String = item.trim().chars().take_while(|c| is_ident(*c)).collect();
                if !name.is_empty() && name != "self" {
                    targets.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                targets.insert(name);
            }
        }
    }
    targets
}

/// The comma-separated items of a `{ … }` group whose opening brace was just consumed, nested
/// groups kept inside their item.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

fn imports() -> Vec<Import> {
    let root = source_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut imports = Vec::new();
    for file in files {
        let from = module_of(&root, &file);
        if ROOT_FILES.contains(&from.as_str()) {
            continue;
        }
        let text = fs::read_to_string(&file).expect("a source file is UTF-8");
        for to in crate_paths(&code_only(&text)) {
            if to != from {
                imports.push(Import {
                    from: from.clone(),
                    to,
                    file: file
                        .strip_prefix(root.parent().expect("src/ has a parent"))
                        .expect("under the crate")
                        .display()
                        .to_string(),
                });
            }
        }
    }
    imports
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn top_level_modules() -> BTreeSet<String> {
    let root = source_root();
    fs::read_dir(&root)
        .expect("src/ can be listed")
        .map(|entry| module_of(&root, &entry.expect("an entry").path()))
        .filter(|m| !ROOT_FILES.contains(&m.as_str()))
        .collect()
}

#[test]
fn every_module_has_one_layer() {
    let modules = top_level_modules();
    let listed: Vec<&str> = LAYERS.iter().flat_map(|(_, m)| m.iter().copied()).collect();
    let unplaced: Vec<&String> = modules.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules in no layer (add them to LAYERS and to src/lib.rs): {unplaced:?}"
    );
    let gone: Vec<&&str> = listed.iter().filter(|m| !modules.contains(**m)).collect();
    assert!(
        gone.is_empty(),
        "LAYERS lists modules that do not exist: {gone:?}"
    );
    let unique: BTreeSet<&&str> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a module is listed twice");
}

#[test]
fn imports_never_point_up() {
    let upward: Vec<String> = imports()
        .into_iter()
        .filter_map(|import| {
            let from = layer_of(&import.from)?;
            let to = layer_of(&import.to)?;
            (to > from).then(|| {
                format!(
                    "{} ({}) imports {} ({}) in {}",
                    import.from, LAYERS[from].0, import.to, LAYERS[to].0, import.file
                )
            })
        })
        .collect();
    assert!(
        upward.is_empty(),
        "imports pointing up a layer:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_import_cycle() {
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for import in imports() {
        graph
            .entry(import.from)
            .or_default()
            .entry(import.to)
            .or_insert(import.file);
    }
    let mut done = BTreeSet::new();
    for start in graph.keys() {
        let mut path = Vec::new();
        if let Some(cycle) = find_cycle(&graph, start, &mut path, &mut done) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} → {} (in {})", w[0], w[1], graph[&w[0]][&w[1]]))
                .collect();
            panic!("import cycle:\n{}", steps.join("\n"));
        }
    }
}

/// Depth-first search from `node`; returns a cycle as the list of its modules, first repeated
/// at the end.
fn find_cycle(
    graph: &BTreeMap<String, BTreeMap<String, String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|m| m == node) {
        let mut cycle = path[at..].to_vec();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
        if let Some(cycle) = find_cycle(graph, next, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn the_scanner_reads_paths_and_skips_comments_and_strings() {
    let code = code_only(
        "use crate::{a::X, b::{self, Y}, self};\n\
         /// see [`crate::doc_only`]\n\
         // crate::comment_only\n\
         let s = \"crate::in_a_string\"; let r = r#\"crate::raw\"#;\n\
         let c = '\"'; fn f<'a>(x: &'a str) { crate::inline::call(); }\n\
         /* crate::block */ $crate::macro_path; my_crate::other",
    );
    let found: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(found, ["a", "b", "inline", "macro_path"]);
}
