//! `quarantine FILE_NUMBER`: the operator's way past a damaged segment.
//!
//! A sealed segment whose file is missing or fails its checksum cannot be uploaded, and no later
//! file may overtake it (docs/architecture.md#invariant-3: the importer reads files 1, 2, 3, … and
//! stops at a gap), so uploads stop there while ingestion goes on into the WAL. The events it held
//! are gone from this exporter; what is left to decide is how the numbering goes on. This command,
//! run with the daemon stopped:
//!
//! 1. checks that file N is the oldest waiting and is really damaged (a sound file is refused:
//!    nothing is thrown away that could still be uploaded);
//! 2. writes `quarantine/file-N.json` (N in 20 digits) in the WAL directory: the key, the
//!    number of events, and the stream positions before and after them (`first_cursor`,
//!    `last_cursor`), so the lost range can be exported again; then moves the damaged file next
//!    to it (kept for forensics);
//! 3. uploads an **empty** object under file N's key, unless the destination already holds that
//!    key (an upload that succeeded before the damage: then nothing was lost at all), so the
//!    importer's numbering stays gapless (the stock importer reads an empty file as zero lines and
//!    moves on to N+1);
//! 4. marks file N uploaded in the WAL, so the daemon goes on with N+1 at its next start.
//!
//! Every step can be run again after a crash: the record is rewritten, a file already moved is
//! not needed again, and an upload of the same empty object under the same key is harmless.
//! `status` lists damaged and quarantined files.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use wal::{SegmentMeta, Wal, WalError, WalOptions};

use crate::cli::QuarantineArgs;
use crate::config::Config;
use crate::ids::{iso, now_ms};
use crate::quarantine::{QUARANTINE_DIR, QuarantineRecord, record_path};
use crate::sink::{BodySource, Compression, object_key};

/// Runs the command (see the module documentation).
pub async fn run(config: &Config, args: &QuarantineArgs) -> anyhow::Result<()> {
    let dir = &config.wal.dir;
    if !dir.exists() {
        bail!("there is no WAL in {}", dir.display());
    }
    let (wal, report) = match Wal::open(WalOptions::new(dir, config.wal.max_bytes)) {
        Err(WalError::Locked { .. }) => bail!(
            "the daemon is running and holds the WAL in {}: stop it first (quarantine changes \
             what it uploads)",
            dir.display()
        ),
        other => other.with_context(|| format!("opening the WAL in {}", dir.display()))?,
    };
    let number = args.file_number;
    let Some(segment) = wal.segments().into_iter().next() else {
        bail!("no file is waiting for upload: nothing to quarantine");
    };
    if segment.number != number {
        bail!(
            "file {number} is not the oldest file waiting for upload (file {} is): uploads stop \
             only at the oldest file, so only it can be quarantined",
            segment.number
        );
    }
    let known = report
        .damaged
        .iter()
        .find(|d| d.number == number)
        .map(|d| d.problem.to_string());
    let problem = match known {
        Some(problem) => problem,
        None => match read_through(&wal, number).await {
            Err(why) => why,
            Ok(()) => bail!(
                "file {number} is sound (its size and checksum match what was sealed): nothing to \
                 quarantine; the daemon uploads it once the destination accepts it"
            ),
        },
    };

    let sink = crate::daemon::sink(config)?;
    let key = object_key(
        &config.output.folder,
        segment.ts_ms,
        number,
        config.output.compression,
    );
    let already_uploaded = sink
        .list(&key)
        .await
        .with_context(|| format!("checking whether {} already holds {key}", sink.describe()))?
        .iter()
        .any(|object| object.key == key && object.size > 0);
    let record = QuarantineRecord {
        file_number: number,
        key: key.clone(),
        events: segment.records,
        raw_bytes: segment.raw_bytes,
        first_cursor: segment.first_cursor.clone(),
        last_cursor: segment.last_cursor.clone(),
        problem,
        already_uploaded,
        quarantined_at: iso(now_ms()),
    };
    keep_aside(&wal, &segment, &record)?;
    if !already_uploaded {
        sink.prepare()
            .await
            .with_context(|| format!("preparing {}", sink.describe()))?;
        sink.put(&key, &empty_body(config.output.compression)?)
            .await
            .with_context(|| format!("uploading the empty placeholder {key}"))?;
    }
    let marking = wal.clone();
    tokio::task::spawn_blocking(move || marking.mark_uploaded(number, now_ms()))
        .await
        .context("recording the quarantine in the WAL")?
        .with_context(|| format!("marking file {number} done in the WAL"))?;
    report_loss(&record, dir);
    Ok(())
}

/// Reads segment `number` through; `Err` says why it is damaged.
async fn read_through(wal: &Wal, number: u64) -> Result<(), String> {
    let wal = wal.clone();
    let check = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut reader = wal.open_segment(number).map_err(|e| e.to_string())?;
        std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| e.to_string())?;
        Ok(())
    });
    check.await.map_err(|e| format!("reading it failed: {e}"))?
}

/// Writes the record (durably) and moves the damaged file next to it.
fn keep_aside(wal: &Wal, segment: &SegmentMeta, record: &QuarantineRecord) -> anyhow::Result<()> {
    let dir = wal.dir().join(QUARANTINE_DIR);
    create_private_dir(&dir)?;
    let path = record_path(wal.dir(), segment.number);
    let temporary = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    let json = serde_json::to_vec_pretty(record)?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("renaming {} into place", temporary.display()))?;
    let source = wal.segment_path(segment.number);
    let moved = source.exists();
    if moved {
        let name = source.file_name().unwrap_or_default();
        let target = dir.join(name);
        std::fs::rename(&source, &target)
            .with_context(|| format!("moving {} to {}", source.display(), target.display()))?;
    }
    // The new names first: syncing segments/ first let a power loss in between lose the file
    // from both places.
    sync_dir(&dir)?;
    match source.parent() {
        Some(segments) if moved => sync_dir(segments),
        _ => Ok(()),
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    // Its entry in the WAL directory must survive a power loss too, or the record and the file
    // moved into it go with it (synced even when it exists: its creator may have been killed
    // before syncing).
    wal::create_dir_durably(dir, 0o700)
        .and_then(|_| wal::sync_parent(dir))
        .with_context(|| format!("creating {}", dir.display()))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))
}

/// An empty file in the configured encoding: zero bytes, or an empty zstd frame.
fn empty_body(compression: Compression) -> anyhow::Result<BodySource> {
    let bytes = match compression {
        Compression::None => Vec::new(),
        Compression::Zstd => {
            zstd::encode_all(std::io::empty(), 0).context("compressing the empty placeholder")?
        }
    };
    Ok(BodySource::from_bytes(bytes))
}

fn report_loss(record: &QuarantineRecord, wal_dir: &Path) {
    let from = record.first_cursor.as_deref().unwrap_or("the beginning");
    let to = record.last_cursor.as_deref().unwrap_or("-");
    if record.already_uploaded {
        tracing::warn!(
            file_number = record.file_number,
            key = %record.key,
            "damaged file quarantined; the destination already held its complete upload: nothing was lost"
        );
        println!(
            "file {} quarantined: the destination already held {} (uploaded before the damage), \
             so nothing was lost. Uploads go on with file {} at the next start.",
            record.file_number,
            record.key,
            record.file_number + 1
        );
        return;
    }
    tracing::error!(
        file_number = record.file_number,
        key = %record.key,
        events = record.events,
        first_cursor = from,
        last_cursor = to,
        "damaged file quarantined: its events are LOST from this export; an empty file keeps \
         the numbering gapless"
    );
    println!(
        "file {n} quarantined: {events} events were LOST from this export.\n\
         \x20 lost stream range: after {from} up to {to}\n\
         \x20 an empty file was uploaded as {key} so the importer's numbering stays gapless\n\
         \x20 record: {record_path}\n\
         \x20 uploads go on with file {next} at the next start.\n\
         To export the lost range again, run a second exporter with its own WAL_DIR and \
         MINIO_FOLDER, CONNECTOR_LIVE_STREAM_START_TIMESTAMP set to the milliseconds of {from} and \
         CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE before it, and stop it once its position passed {to}.",
        n = record.file_number,
        events = record.events,
        key = record.key,
        record_path = record_path(wal_dir, record.file_number).display(),
        next = record.file_number + 1,
    );
}
