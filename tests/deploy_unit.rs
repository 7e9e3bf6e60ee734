//! The systemd unit shipped in `deploy/` confines the daemon: files it creates are private, it
//! may hold enough descriptors, and an export directory stays writable under
//! `ProtectSystem=strict`.

const UNIT: &str = include_str!("../deploy/opencti-stream-exporter.service");

fn directive(name: &str) -> Option<&'static str> {
    UNIT.lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
}

#[test]
fn the_systemd_unit_keeps_files_private_and_allows_an_export_directory() {
    assert_eq!(
        directive("UMask"),
        Some("0077"),
        "files 0600, directories 0700"
    );
    let nofile: u64 = directive("LimitNOFILE")
        .and_then(|value| value.parse().ok())
        .expect("LimitNOFILE is a number");
    assert!(nofile >= 1024, "LimitNOFILE={nofile}");
    assert_eq!(directive("ProtectSystem"), Some("strict"));
    let writable = directive("ReadWritePaths").expect("ReadWritePaths for EXPORT_DIR");
    assert!(
        writable.starts_with('-') && writable.len() > 2,
        "optional (the unit starts without the directory): {writable}"
    );
}
