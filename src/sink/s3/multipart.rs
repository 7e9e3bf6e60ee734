//! Multipart upload of a large body: parts read one after the other from the body (on the
//! blocking pool), each buffered with its own `Content-MD5`, up to `part_concurrency` uploading
//! at once, completed in order. The object only becomes visible at the final
//! `CompleteMultipartUpload`, which is sent only after the body reached a checked EOF (exact
//! length, matching MD5). Any failure aborts the upload, so no parts are left behind; if the
//! future is dropped mid-way (shutdown), the abort is sent from a background task.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::task::JoinSet;

use super::classify::classify;
use super::{MAX_PARTS, S3Sink};
use crate::sink::body::{CheckedReader, body_error};
use crate::sink::{BodySource, SinkError, SinkErrorKind};

/// Uploads `body` to `key` as a multipart upload.
pub(super) async fn upload(
    sink: &S3Sink,
    key: &str,
    body: &BodySource,
    what: &str,
) -> Result<(), SinkError> {
    let created = sink
        .client
        .create_multipart_upload()
        .bucket(&sink.bucket)
        .key(key)
        .content_type("application/octet-stream")
        .send()
        .await
        .map_err(|err| classify(&err, &format!("{what}: starting the multipart upload")))?;
    let Some(upload_id) = created.upload_id().map(str::to_owned) else {
        return Err(SinkError::new(
            SinkErrorKind::Server,
            format!("{what}: the server started a multipart upload without an upload id"),
        ));
    };
    let mut guard = AbortGuard {
        client: sink.client.clone(),
        bucket: sink.bucket.clone(),
        key: key.to_owned(),
        upload_id: Some(upload_id.clone()),
    };
    match upload_parts_and_complete(sink, key, body, &upload_id, what).await {
        Ok(()) => {
            guard.upload_id = None;
            Ok(())
        }
        Err(err) => {
            guard.abort_now().await;
            Err(err)
        }
    }
}

/// The part size for a body of `len` bytes: the configured size, raised so that no more than
/// 10,000 parts are needed.
fn part_size_for(len: u64, configured: u64) -> u64 {
    let needed = len.div_ceil(MAX_PARTS);
    configured.max(needed)
}

async fn upload_parts_and_complete(
    sink: &S3Sink,
    key: &str,
    body: &BodySource,
    upload_id: &str,
    what: &str,
) -> Result<(), SinkError> {
    let part_size = usize::try_from(part_size_for(body.len, sink.part_size)).map_err(|_| {
        SinkError::new(
            SinkErrorKind::Client,
            format!("{what}: part size too large"),
        )
    })?;
    let source = body.clone();
    let reader = tokio::task::spawn_blocking(move || source.open_checked())
        .await
        .map_err(|join| SinkError::new(SinkErrorKind::Io, format!("{what}: {join}")))?
        .map_err(|err| body_error(&err, what))?;

    let mut uploads: JoinSet<Result<CompletedPart, SinkError>> = JoinSet::new();
    let result = upload_parts(sink, key, upload_id, what, part_size, reader, &mut uploads).await;
    if result.is_err() {
        // Let the parts still in flight end (each is bounded by the idle timeout) before the
        // caller aborts the upload: a part stored after the abort would stay on the server.
        while uploads.join_next().await.is_some() {}
    }
    let mut completed = result?;
    completed.sort_by_key(|part| part.part_number());

    sink.client
        .complete_multipart_upload()
        .bucket(&sink.bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .map_err(|err| classify(&err, &format!("{what}: completing the multipart upload")))?;
    Ok(())
}

/// Reads the body part by part and uploads the parts, at most `part_concurrency` at once;
/// returns them all once uploaded.
#[allow(clippy::too_many_arguments)]
async fn upload_parts(
    sink: &S3Sink,
    key: &str,
    upload_id: &str,
    what: &str,
    part_size: usize,
    mut reader: CheckedReader,
    uploads: &mut JoinSet<Result<CompletedPart, SinkError>>,
) -> Result<Vec<CompletedPart>, SinkError> {
    let mut completed = Vec::new();
    let mut part_number: i32 = 0;
    loop {
        // Read the next part while the parts in flight upload, then wait for a free slot: at
        // most `part_concurrency` parts uploading and one read ahead.
        let (returned, part) = tokio::task::spawn_blocking(move || {
            let part = read_part(&mut reader, part_size);
            (reader, part)
        })
        .await
        .map_err(|join| SinkError::new(SinkErrorKind::Io, format!("{what}: {join}")))?;
        reader = returned;
        let (bytes, md5, at_end) = part.map_err(|err| body_error(&err, what))?;
        while uploads.len() >= sink.part_concurrency {
            completed.push(join_next(uploads, what).await?);
        }
        part_number += 1;
        uploads.spawn(upload_part(
            sink.clone(),
            key.to_owned(),
            upload_id.to_owned(),
            part_number,
            bytes,
            md5,
            format!("{what}: part {part_number}"),
        ));
        if at_end {
            break;
        }
    }
    while !uploads.is_empty() {
        completed.push(join_next(uploads, what).await?);
    }
    Ok(completed)
}

/// Reads the next part: up to `part_size` bytes, with their MD5, and whether the body is
/// finished (in which case its EOF has been reached and checked: length and MD5 of the whole
/// body).
fn read_part(
    reader: &mut CheckedReader,
    part_size: usize,
) -> std::io::Result<(Bytes, [u8; 16], bool)> {
    let want = usize::try_from(reader.remaining())
        .unwrap_or(usize::MAX)
        .min(part_size);
    let mut buf = vec![0u8; want];
    let n = reader.read_full(&mut buf)?;
    buf.truncate(n);
    let at_end = reader.remaining() == 0;
    if at_end {
        reader.confirm_eof()?;
    }
    let md5: [u8; 16] = Md5::digest(&buf).into();
    Ok((Bytes::from(buf), md5, at_end))
}

async fn join_next(
    uploads: &mut JoinSet<Result<CompletedPart, SinkError>>,
    what: &str,
) -> Result<CompletedPart, SinkError> {
    match uploads.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(join)) => Err(SinkError::new(
            SinkErrorKind::Io,
            format!("{what}: a part upload task failed: {join}"),
        )),
        None => Err(SinkError::new(
            SinkErrorKind::Io,
            format!("{what}: no part upload in flight"),
        )),
    }
}

async fn upload_part(
    sink: S3Sink,
    key: String,
    upload_id: String,
    part_number: i32,
    bytes: Bytes,
    md5: [u8; 16],
    what: String,
) -> Result<CompletedPart, SinkError> {
    use base64::Engine as _;
    let length = i64::try_from(bytes.len())
        .map_err(|_| SinkError::new(SinkErrorKind::Client, format!("{what}: part too large")))?;
    let output = sink
        .client
        .upload_part()
        .bucket(&sink.bucket)
        .key(&key)
        .upload_id(&upload_id)
        .part_number(part_number)
        .content_length(length)
        .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
        .body(ByteStream::from(bytes))
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .map_err(|err| classify(&err, &what))?;
    let Some(e_tag) = output.e_tag() else {
        return Err(SinkError::new(
            SinkErrorKind::Server,
            format!("{what}: the server accepted the part without an ETag"),
        ));
    };
    Ok(CompletedPart::builder()
        .part_number(part_number)
        .e_tag(e_tag)
        .build())
}

/// Aborts the multipart upload unless it completed: right away on an error, or from a
/// background task if the upload future is dropped.
struct AbortGuard {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl AbortGuard {
    async fn abort_now(&mut self) {
        if let Some(upload_id) = self.upload_id.take() {
            abort(&self.client, &self.bucket, &self.key, &upload_id).await;
        }
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(bucket = %self.bucket, key = %self.key, %upload_id,
                "multipart upload interrupted and not aborted (no runtime); its parts stay on the server until a lifecycle rule removes them");
            return;
        };
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let key = self.key.clone();
        runtime.spawn(async move { abort(&client, &bucket, &key, &upload_id).await });
    }
}

async fn abort(client: &aws_sdk_s3::Client, bucket: &str, key: &str, upload_id: &str) {
    let result = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    match result {
        Ok(_) => tracing::debug!(%bucket, %key, %upload_id, "aborted multipart upload"),
        Err(err) => {
            let error = classify(
                &err,
                &format!("aborting the multipart upload of s3://{bucket}/{key}"),
            );
            tracing::warn!(%error, %upload_id,
                "could not abort a failed multipart upload; its parts stay on the server until a lifecycle rule removes them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_to_stay_under_ten_thousand_parts() {
        let mib = 1024 * 1024;
        assert_eq!(part_size_for(100 * mib, 16 * mib), 16 * mib);
        let huge = 500_000 * mib;
        let size = part_size_for(huge, 16 * mib);
        assert!(huge.div_ceil(size) <= MAX_PARTS);
    }
}
