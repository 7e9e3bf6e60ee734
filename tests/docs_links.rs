//! Every pointer into the project's documentation resolves, and nothing cites a document that is
//! not in the repository.
//!
//! The text sources (code, tests, benchmarks, scripts, deployment files, the README and `docs/`)
//! are scanned for `docs/<name>.md#<anchor>`. Each such file must exist, and the anchor must be
//! an explicit `<a id="<anchor>"></a>` in it or the GitHub slug of one of its headings. No file may
//! cite the design notes or the protocol notes that were kept outside the repository.

use std::fs;
use std::path::{Path, PathBuf};

/// Directories and files scanned, relative to the repository root.
const ROOTS: &[&str] = &[
    "src",
    "wal/src",
    "wal/tests",
    "wal/benches",
    "tests",
    "benches",
    "testfs/src",
    "testfs/tests",
    "simulator/src",
    "simulator/tests",
    "simulator/benches",
    "fuzz/fuzz_targets",
    ".ci",
    "deploy",
    "examples",
    "README.md",
    "docs",
];

/// File name endings read as text; anything else (fixtures, binary data) is skipped.
const TEXT_ENDINGS: &[&str] = &[
    ".rs", ".md", ".sh", ".py", ".toml", ".yml", ".yaml", ".json", ".service", "run",
];

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every text file under `path` (or `path` itself), skipping `target/` and `fixtures/`.
fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "target" || name == "fixtures" {
            return;
        }
        let entries = fs::read_dir(path).expect("a scanned directory can be listed");
        for entry in entries {
            let entry = entry.expect("a directory entry can be read");
            collect(&entry.path(), out);
        }
    } else if path.is_file() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if TEXT_ENDINGS.iter().any(|ending| name.ends_with(ending)) {
            out.push(path.to_path_buf());
        }
    }
}

fn text_files() -> Vec<PathBuf> {
    let root = repository_root();
    let mut files = Vec::new();
    for relative in ROOTS {
        collect(&root.join(relative), &mut files);
    }
    files.sort();
    files
}

/// Whether `path` is this test file, which holds example pointers and builds the forbidden
/// strings.
fn is_this_file(path: &Path) -> bool {
    path.ends_with(Path::new("tests").join("docs_links.rs"))
}

/// A pointer found in a source: the documentation file's name (without `.md`) and the anchor.
#[derive(Debug)]
struct Pointer {
    file: String,
    anchor: String,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Every `docs/<name>.md#<anchor>` in `text`.
fn pointers(text: &str) -> Vec<Pointer> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("docs/") {
        rest = &rest[start + "docs/".len()..];
        let name_len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        let name = &rest[..name_len];
        let after_name = &rest[name_len..];
        let Some(after_md) = after_name.strip_prefix(".md#") else {
            continue;
        };
        let anchor_len = after_md
            .find(|c: char| !is_name_char(c))
            .unwrap_or(after_md.len());
        let anchor = &after_md[..anchor_len];
        if !name.is_empty() && !anchor.is_empty() {
            found.push(Pointer {
                file: name.to_string(),
                anchor: anchor.to_string(),
            });
        }
    }
    found
}

/// The links with an anchor between documents of `docs/`, written `](<name>.md#<anchor>)`, and
/// those within the document `own`, written `](#<anchor>)`.
fn markdown_links(text: &str, own: &str) -> Vec<Pointer> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("](") {
        rest = &rest[start + "](".len()..];
        let name_len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        let name = &rest[..name_len];
        let after_name = &rest[name_len..];
        let (file, after_hash) = if name.is_empty() {
            match after_name.strip_prefix('#') {
                Some(after) => (own, after),
                None => continue,
            }
        } else {
            match after_name.strip_prefix(".md#") {
                Some(after) => (name, after),
                None => continue,
            }
        };
        let anchor_len = after_hash
            .find(|c: char| !is_name_char(c))
            .unwrap_or(after_hash.len());
        let anchor = &after_hash[..anchor_len];
        if !anchor.is_empty() {
            found.push(Pointer {
                file: file.to_string(),
                anchor: anchor.to_string(),
            });
        }
    }
    found
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-` and `_`
/// dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| {
            if c == ' ' {
                Some('-')
            } else if c.is_alphanumeric() || c == '-' || c == '_' {
                Some(c)
            } else {
                None
            }
        })
        .collect()
}

/// Whether the Markdown `doc` defines `anchor`, explicitly or as a heading's slug.
fn defines(doc: &str, anchor: &str) -> bool {
    let explicit = format!("<a id=\"{anchor}\"></a>");
    if doc.contains(&explicit) {
        return true;
    }
    doc.lines().any(|line| {
        let heading = line.trim_start_matches('#');
        line.starts_with('#') && heading.starts_with(' ') && slug(heading) == anchor
    })
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repository_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_pointer_into_docs_resolves() {
    let root = repository_root();
    let mut checked = 0;
    let mut broken = Vec::new();
    for path in text_files() {
        if is_this_file(&path) {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let mut found = pointers(&text);
        if path.starts_with(root.join("docs")) {
            let own = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_string();
            found.extend(markdown_links(&text, &own));
        }
        for pointer in found {
            checked += 1;
            let doc_path = root.join("docs").join(format!("{}.md", pointer.file));
            let resolves = match fs::read_to_string(doc_path) {
                Ok(doc) => defines(&doc, &pointer.anchor),
                Err(_) => false,
            };
            if !resolves {
                broken.push(format!(
                    "{}: docs/{}.md#{}",
                    relative(&path),
                    pointer.file,
                    pointer.anchor
                ));
            }
        }
    }
    assert!(
        checked > 0,
        "no pointer into docs/ was found: is the scan looking in the right place?"
    );
    assert!(
        broken.is_empty(),
        "pointers into docs/ that do not resolve:\n{}",
        broken.join("\n")
    );
}

#[test]
fn nothing_cites_documents_outside_the_repository() {
    // Built so that this file does not contain the strings it looks for.
    let forbidden = [
        concat!("DESIGN", ".md").to_lowercase(),
        concat!("reference ", "\u{a7}").to_lowercase(),
        concat!("..", "/shared").to_string(),
    ];
    let mut offending = Vec::new();
    for path in text_files() {
        if is_this_file(&path) {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let lower = text.to_lowercase();
        for needle in &forbidden {
            if lower.contains(needle.as_str()) {
                offending.push(format!("{}: {needle}", relative(&path)));
            }
        }
        // A bare section sign followed by a digit is a section number of the old notes.
        let section_number = text
            .char_indices()
            .filter(|&(_, c)| c == '\u{a7}')
            .any(|(i, c)| {
                text[i + c.len_utf8()..]
                    .chars()
                    .next()
                    .is_some_and(|next| next.is_ascii_digit())
            });
        if section_number {
            offending.push(format!("{}: a section number", relative(&path)));
        }
    }
    assert!(
        offending.is_empty(),
        "files citing documents that are not in the repository:\n{}",
        offending.join("\n")
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug(" 3. Gapless, ordered files"),
        "3-gapless-ordered-files"
    );
    assert_eq!(
        slug(" The WAL directory (`WAL_DIR`)"),
        "the-wal-directory-wal_dir"
    );
    // Assembled, so that this sample is not itself read as citing files that do not exist.
    let (docs, unknown, other) = ("docs", "x", "a");
    let sample = format!(
        "see {docs}/architecture.md#invariant-3, and {docs}/{unknown}.md, {docs}/{other}.md#b_c."
    );
    let found = pointers(&sample);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].file, "architecture");
    assert_eq!(found[0].anchor, "invariant-3");
    assert_eq!(found[1].anchor, "b_c");
}
