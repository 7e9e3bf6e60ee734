//! The directory sink writes the same names and bytes as the S3 sink, atomically, and ignores
//! what a crash leaves behind.

mod support;

use std::io::{self, Read};

use opencti_stream_exporter::sink::{
    BodySource, Compression, DirSink, S3Sink, Sink, SinkErrorKind, object_key,
};
use support::s3::TestS3;

fn lines(n: usize, tag: &str) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{{\"id\":\"{i}-0\",\"tag\":\"{tag}\"}}\n").into_bytes())
        .collect()
}

#[tokio::test]
async fn the_directory_gets_the_same_names_and_bytes_as_the_bucket() {
    let s3 = TestS3::start();
    let s3_sink = S3Sink::new(s3.settings("same-bucket")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir_sink = DirSink::new(dir.path().join("export"));
    let sinks: [&dyn Sink; 2] = [&s3_sink, &dir_sink];
    for sink in sinks {
        sink.prepare().await.unwrap();
    }
    let files = [
        (
            object_key("opencti-stream", 1_700_000_000_001, 1, Compression::None),
            lines(10, "a"),
        ),
        (
            object_key("opencti-stream", 1_700_000_000_002, 2, Compression::Zstd),
            lines(3, "b"),
        ),
        (
            object_key("", 1_700_000_000_003, 3, Compression::None),
            lines(1, "c"),
        ),
    ];
    for (key, bytes) in &files {
        for sink in sinks {
            sink.put(key, &BodySource::from_bytes(bytes.clone()))
                .await
                .unwrap();
        }
    }

    let from_s3 = s3_sink.list("").await.unwrap();
    let from_dir = dir_sink.list("").await.unwrap();
    assert_eq!(from_s3, from_dir);
    assert_eq!(from_dir.len(), 3);
    for (key, bytes) in &files {
        let path = dir.path().join("export").join(key);
        assert_eq!(&std::fs::read(path).unwrap(), bytes);
        assert_eq!(&dir_sink.get(key).await.unwrap(), bytes);
        assert_eq!(s3.read("same-bucket", key).as_ref(), Some(bytes));
    }
    let in_folder = dir_sink.list("opencti-stream/").await.unwrap();
    assert_eq!(in_folder.len(), 2);
    assert!(in_folder[0].key < in_folder[1].key);
}

#[tokio::test]
async fn a_leftover_partial_file_is_ignored_and_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let sink = DirSink::new(dir.path());
    sink.prepare().await.unwrap();
    let key = "f/stream_1700000000000_1.json";
    std::fs::create_dir_all(dir.path().join("f")).unwrap();
    let partial = dir.path().join("f/.stream_1700000000000_1.json.partial");
    std::fs::write(&partial, b"half a line from before the cr").unwrap();

    assert!(sink.list("").await.unwrap().is_empty());

    sink.put(key, &BodySource::from_bytes(lines(5, "x")))
        .await
        .unwrap();
    assert!(!partial.exists());
    let listed = sink.list("f/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key);
    assert_eq!(sink.get(key).await.unwrap(), lines(5, "x"));
}

#[tokio::test]
async fn a_corrupt_body_leaves_neither_file_nor_partial() {
    let dir = tempfile::tempdir().unwrap();
    let sink = DirSink::new(dir.path());
    let good = BodySource::from_bytes(lines(100, "y"));
    let bytes = lines(100, "y");
    let corrupt = BodySource::new(
        good.len,
        opencti_stream_exporter::sink::Checksum::Md5([9; 16]),
        move || Ok(Box::new(io::Cursor::new(bytes.clone())) as Box<dyn Read + Send>),
    );

    let err = sink.put("f/x.json", &corrupt).await.unwrap_err();

    assert_eq!(err.kind, SinkErrorKind::Integrity, "{err}");
    assert!(sink.list("").await.unwrap().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("f")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn rewriting_a_file_with_the_same_bytes_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let sink = DirSink::new(dir.path());
    let body = BodySource::from_bytes(lines(20, "z"));
    sink.put("a.json", &body).await.unwrap();
    sink.put("a.json", &body).await.unwrap();
    assert_eq!(sink.list("").await.unwrap().len(), 1);
    assert_eq!(sink.get("a.json").await.unwrap(), lines(20, "z"));
}

#[tokio::test]
async fn missing_things_are_reported_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let sink = DirSink::new(dir.path().join("not-yet"));
    assert!(sink.list("").await.unwrap().is_empty());
    assert_eq!(
        sink.get("a.json").await.unwrap_err().kind,
        SinkErrorKind::NotFound
    );
    sink.prepare().await.unwrap();
    assert!(dir.path().join("not-yet").is_dir());
    assert!(sink.describe().contains("not-yet"));
}

#[tokio::test]
async fn an_unwritable_directory_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    // The root is a regular file: nothing can be created under it.
    let sink = DirSink::new(&file);
    let err = sink
        .put("x.json", &BodySource::from_bytes(&b"{}\n"[..]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Io, "{err}");
    assert!(err.detail.contains("a-file"), "{err}");
}
