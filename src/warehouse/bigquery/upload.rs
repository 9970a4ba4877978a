//! Load jobs through the resumable upload protocol.
//!
//! 1. `POST {base}/upload/bigquery/v2/projects/{p}/jobs?uploadType=resumable` with the job
//!    body → session URI in `Location`.
//! 2. `PUT` chunks (multiples of 256 KiB) with `Content-Range: bytes a-b/*` → `308` with
//!    `Range: bytes=0-b` (what the server has; we resend from there if it has less).
//! 3. The last `PUT` always carries bytes (`Content-Range: bytes a-b/N`): we hold back data until
//!    the input ends, because the emulator treats an empty `bytes */N` as a status probe forever.
//! 4. On a connection error or 5xx we ask for the upload status (`Content-Range: bytes */*`) and
//!    resume from the server's offset.
//! 5. Failures are bounded: a chunk gets [`RetryPolicy::max_attempts`] failed attempts (a failed
//!    PUT, or a 308 that keeps none of it) until the server's offset moves past its start, the
//!    whole upload [`UPLOAD_FAILURE_FACTOR`] times as many. A successful status probe resets
//!    nothing.
//!
//! About one chunk is in memory per upload: the buffer (≤ chunk size + one input message),
//! whose first chunk is the body being sent (shared, not copied).

use bytes::{Buf, Bytes, BytesMut};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use tokio::sync::mpsc::Receiver;

use super::super::{LoadOutcome, LoadRequest, WarehouseError};
use super::client::parse_json;
use super::model::{
    JobResource, clustering_resource, error_from_body, partitioning_resource, schema_resource,
};
use super::retry::{RetryPolicy, is_retryable, jitter, parse_retry_after};
use super::{BigQuery, Reply};
use crate::schema::LoadFormat;

/// Resumable chunks must be multiples of this (256 KiB), except the last.
pub const CHUNK_GRANULARITY: usize = 262_144;

/// Default chunk size: 32 MiB (`bigquery.upload_chunk_mib`). Fewer, larger requests: one chunk
/// per round trip, and the protocol allows only one chunk in flight per upload session.
pub const DEFAULT_CHUNK_SIZE: usize = 128 * CHUNK_GRANULARITY;

/// Checks that `chunk_size` is a positive multiple of 256 KiB.
pub(crate) fn check_chunk_size(chunk_size: usize) -> Result<(), WarehouseError> {
    if chunk_size == 0 || chunk_size % CHUNK_GRANULARITY != 0 {
        return Err(WarehouseError::Invalid(format!(
            "upload chunk size {chunk_size} is not a positive multiple of 256 KiB ({CHUNK_GRANULARITY} bytes)"
        )));
    }
    Ok(())
}

/// The `Content-Range` of a PUT carrying `len` (> 0) bytes from `start`; `total` is known only for
/// the final PUT.
pub fn content_range(start: u64, len: u64, total: Option<u64>) -> String {
    let end = start + len.max(1) - 1;
    match total {
        Some(total) => format!("bytes {start}-{end}/{total}"),
        None => format!("bytes {start}-{end}/*"),
    }
}

/// The next byte the server expects, from the `Range` header of a 308 (`bytes=0-b` → b+1; no
/// header → 0).
pub fn next_offset_from_range(range: Option<&str>) -> Result<u64, String> {
    let Some(range) = range else { return Ok(0) };
    let spec = range
        .trim()
        .strip_prefix("bytes=")
        .ok_or_else(|| format!("bad Range header {range:?}"))?;
    let (first, last) = spec
        .split_once('-')
        .ok_or_else(|| format!("bad Range header {range:?}"))?;
    let first: u64 = first
        .trim()
        .parse()
        .map_err(|_| format!("bad Range header {range:?}"))?;
    let last: u64 = last
        .trim()
        .parse()
        .map_err(|_| format!("bad Range header {range:?}"))?;
    if first != 0 || last < first {
        return Err(format!("unexpected Range header {range:?}"));
    }
    Ok(last + 1)
}

/// A whole upload may fail this many times [`RetryPolicy::max_attempts`] (chunks included).
pub(crate) const UPLOAD_FAILURE_FACTOR: u32 = 4;

/// Failed attempts of the current chunk and of the whole upload.
#[derive(Debug, Default)]
pub(crate) struct UploadFailures {
    chunk: u32,
    total: u32,
}

impl UploadFailures {
    /// The server's offset moved: the next chunk starts with a clean slate.
    pub(crate) fn progress(&mut self) {
        self.chunk = 0;
    }

    /// Counts a failed attempt; `Err` with the reason when no further attempt is allowed.
    pub(crate) fn fail(&mut self, retry: &RetryPolicy) -> Result<u32, String> {
        self.chunk += 1;
        self.total += 1;
        let per_upload = retry
            .max_attempts
            .max(1)
            .saturating_mul(UPLOAD_FAILURE_FACTOR);
        if !retry.should_retry(self.chunk) {
            Err(format!("a chunk failed {} times in a row", self.chunk))
        } else if self.total >= per_upload {
            Err(format!("the upload failed {} times", self.total))
        } else {
            Ok(self.chunk)
        }
    }
}

/// One PUT to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Put {
    pub start: u64,
    pub body: Bytes,
    /// Set on the final PUT.
    pub total: Option<u64>,
}

impl Put {
    pub(crate) fn content_range(&self) -> String {
        content_range(self.start, self.body.len() as u64, self.total)
    }
}

/// The bytes not yet acknowledged by the server, and the plan for the next PUT. A PUT's body
/// is split off the buffer without a copy and shared with the request (`Bytes`), so an upload
/// holds about one chunk (plus one input message), not two; only a partial acknowledgement
/// (the server kept part of a PUT) copies the rest once.
#[derive(Debug)]
pub(crate) struct ChunkBuffer {
    chunk_size: usize,
    /// The body of the last PUT, from `offset` on (unacknowledged).
    sent: Bytes,
    /// The bytes after `sent`.
    pending: BytesMut,
    /// Server offset of the first unacknowledged byte.
    offset: u64,
    closed: bool,
}

impl ChunkBuffer {
    pub(crate) fn new(chunk_size: usize) -> Result<Self, WarehouseError> {
        check_chunk_size(chunk_size)?;
        Ok(Self {
            chunk_size,
            sent: Bytes::new(),
            pending: BytesMut::new(),
            offset: 0,
            closed: false,
        })
    }

    fn unacknowledged(&self) -> usize {
        self.sent.len() + self.pending.len()
    }

    /// Whether more input is needed before the next PUT: a non-final PUT is only sent when at
    /// least one byte beyond it is known, so the final PUT is never empty.
    pub(crate) fn needs_input(&self) -> bool {
        !self.closed && self.unacknowledged() <= self.chunk_size
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.pending.capacity() == 0 && self.sent.is_empty() {
            // One allocation for the chunk (untouched capacity is not resident memory).
            self.pending.reserve(self.chunk_size + bytes.len());
        }
        self.pending.extend_from_slice(bytes);
    }

    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Bytes received so far.
    pub(crate) fn total_seen(&self) -> u64 {
        self.offset + self.unacknowledged() as u64
    }

    /// The next PUT, or `None` while more input is needed (or nothing is left).
    pub(crate) fn next_put(&mut self) -> Option<Put> {
        if self.needs_input() || self.unacknowledged() == 0 {
            return None;
        }
        let last = self.closed && self.unacknowledged() <= self.chunk_size;
        let wanted = if last {
            self.unacknowledged()
        } else {
            self.chunk_size
        };
        if wanted > self.sent.len() {
            if !self.sent.is_empty() {
                // The server kept part of the last PUT: the rest goes out with new bytes.
                let mut merged = BytesMut::with_capacity(self.unacknowledged());
                merged.extend_from_slice(&self.sent);
                merged.extend_from_slice(&self.pending);
                self.pending = merged;
            }
            self.sent = self.pending.split_to(wanted).freeze();
        }
        Some(Put {
            start: self.offset,
            body: self.sent.slice(..wanted),
            total: last.then(|| self.total_seen()),
        })
    }

    /// The server has everything before `committed`; drop it from the buffer.
    pub(crate) fn acknowledge(&mut self, committed: u64) -> Result<(), String> {
        if committed < self.offset || committed > self.total_seen() {
            return Err(format!(
                "server reports {committed} bytes received, but {} were acknowledged before and {} sent",
                self.offset,
                self.total_seen()
            ));
        }
        let mut done = (committed - self.offset) as usize;
        let from_sent = done.min(self.sent.len());
        self.sent.advance(from_sent);
        if self.sent.is_empty() {
            // Let go of the shared allocation, so `pending` can reuse it.
            self.sent = Bytes::new();
        }
        done -= from_sent;
        self.pending.advance(done);
        self.offset = committed;
        Ok(())
    }
}

enum PutReply {
    /// 308: the server has everything before this offset.
    Incomplete(u64),
    /// 200/201: the upload is finished; the job resource.
    Complete(Box<JobResource>),
    /// 409: the job ID already exists.
    Duplicate,
}

impl BigQuery {
    fn load_job_body(&self, request: &LoadRequest, location: Option<&str>) -> Value {
        let mut load = json!({
            "destinationTable": {"projectId": self.project, "datasetId": self.dataset, "tableId": request.table},
            "writeDisposition": request.disposition.as_api(),
            "createDisposition": "CREATE_IF_NEEDED",
            "schema": schema_resource(&request.schema),
        });
        match request.format {
            LoadFormat::Ndjson => load["sourceFormat"] = json!("NEWLINE_DELIMITED_JSON"),
            LoadFormat::Avro => {
                // "Loading Avro data": logical types map to DATE/TIME/TIMESTAMP and decimals
                // stay NUMERIC/BIGNUMERIC (the first listed type that holds the precision and
                // scale) instead of raw INTEGER/BYTES.
                load["sourceFormat"] = json!("AVRO");
                load["useAvroLogicalTypes"] = json!(true);
                load["decimalTargetTypes"] = json!(["NUMERIC", "BIGNUMERIC"]);
            }
        }
        if request.allow_field_addition {
            load["schemaUpdateOptions"] = json!(["ALLOW_FIELD_ADDITION"]);
        }
        if let Some(partitioning) = partitioning_resource(&request.schema) {
            load["timePartitioning"] = json!(partitioning);
        }
        if let Some(clustering) = clustering_resource(&request.schema) {
            load["clustering"] = json!(clustering);
        }
        let mut reference = json!({"projectId": self.project, "jobId": request.job_id});
        if let Some(location) = location {
            reference["location"] = json!(location);
        }
        json!({"jobReference": reference, "configuration": {"load": load, "labels": self.job_labels()}})
    }

    /// The whole resumable load; `first` is the first non-empty input chunk.
    pub(super) async fn upload_load(
        &self,
        context: &str,
        request: &LoadRequest,
        first: Bytes,
        mut data: Receiver<Bytes>,
    ) -> Result<LoadOutcome, WarehouseError> {
        let mut buffer = ChunkBuffer::new(self.chunk_size)?;
        buffer.push(&first);
        drop(first);

        let location = self.job_location().await?;
        let body = self.load_job_body(request, location.as_deref());
        let session = match self
            .send(context, Method::POST, self.upload_url()?, Some(&body))
            .await
        {
            Ok(reply) => session_uri(context, &reply)?,
            Err(error) if error.is_duplicate() => {
                return self.existing_load(context, request).await;
            }
            Err(error) => return Err(error),
        };

        let mut failures = UploadFailures::default();
        loop {
            while buffer.needs_input() {
                match data.recv().await {
                    Some(bytes) => buffer.push(&bytes),
                    None => buffer.close(),
                }
            }
            let Some(put) = buffer.next_put() else {
                return Err(WarehouseError::Protocol {
                    context: context.to_string(),
                    message: "the server acknowledged all bytes without finishing the upload"
                        .into(),
                });
            };
            match self
                .put_with_recovery(context, &session, &put, &mut failures)
                .await?
            {
                (PutReply::Incomplete(committed), probed) => {
                    buffer
                        .acknowledge(committed)
                        .map_err(|message| WarehouseError::Protocol {
                            context: context.to_string(),
                            message,
                        })?;
                    if committed > put.start {
                        failures.progress();
                    } else if !probed {
                        // The server kept none of the chunk: a failure too (a failed PUT was
                        // already counted when it was probed).
                        failures.fail(&self.retry).map_err(|reason| WarehouseError::Protocol {
                            context: context.to_string(),
                            message: format!(
                                "the server keeps none of the chunk at byte {}; giving up: {reason}",
                                put.start
                            ),
                        })?;
                    }
                }
                (PutReply::Complete(job), _) => {
                    if put.total.is_none() {
                        return Err(WarehouseError::Protocol {
                            context: context.to_string(),
                            message: "the server finished the upload before the last chunk".into(),
                        });
                    }
                    let job = self.wait_for_job(context, *job, &request.job_id).await?;
                    return self.load_outcome(context, &job, &request.job_id, buffer.total_seen());
                }
                (PutReply::Duplicate, _) => return self.existing_load(context, request).await,
            }
        }
    }

    async fn existing_load(
        &self,
        context: &str,
        request: &LoadRequest,
    ) -> Result<LoadOutcome, WarehouseError> {
        // Right after a 409, jobs.get can still answer 404 for a while: retry it (the official
        // Python client does too, googleapis/python-bigquery#2134).
        let mut attempt = 0;
        let job = loop {
            attempt += 1;
            if let Some(job) = self.get_job(&request.job_id, None).await? {
                break job;
            }
            if !self.retry.should_retry(attempt) {
                return Err(WarehouseError::Protocol {
                    context: context.to_string(),
                    message: format!(
                        "BigQuery says the job exists, but jobs.get can't find it ({attempt} tries)"
                    ),
                });
            }
            tokio::time::sleep(self.retry.delay(attempt, None, jitter())).await;
        };
        let job = self.wait_for_job(context, job, &request.job_id).await?;
        self.load_outcome(context, &job, &request.job_id, 0)
    }

    /// Sends one PUT; on a retryable failure asks for the upload status and returns what the
    /// server has (the caller then replans from there), and whether that came from a probe.
    /// Every failure counts against `failures`.
    async fn put_with_recovery(
        &self,
        context: &str,
        session: &Url,
        put: &Put,
        failures: &mut UploadFailures,
    ) -> Result<(PutReply, bool), WarehouseError> {
        let mut probe = false;
        loop {
            let result = if probe {
                let range = match put.total {
                    Some(total) => format!("bytes */{total}"),
                    None => "bytes */*".to_string(),
                };
                self.put_once(context, session, range, Bytes::new()).await
            } else {
                self.put_once(context, session, put.content_range(), put.body.clone())
                    .await
            };
            let (error, retry_after) = match result {
                Ok(reply) => return Ok((reply, probe)),
                Err((error, retry_after)) if error.retryable() => (error, retry_after),
                Err((error, _)) => return Err(error),
            };
            let attempt = match failures.fail(&self.retry) {
                Ok(attempt) => attempt,
                Err(reason) => {
                    tracing::warn!(%error, %reason, "giving up the upload");
                    return Err(error);
                }
            };
            let delay = self.retry.delay(attempt, retry_after, jitter());
            tracing::debug!(%error, attempt, ?delay, "upload chunk failed; asking for the upload status");
            tokio::time::sleep(delay).await;
            probe = true;
        }
    }

    async fn put_once(
        &self,
        context: &str,
        session: &Url,
        range: String,
        body: Bytes,
    ) -> Result<PutReply, (WarehouseError, Option<std::time::Duration>)> {
        let request = self
            .http
            .request(Method::PUT, session.clone())
            .timeout(self.retry.request_timeout)
            .header("Content-Range", range)
            .header("Content-Type", "application/octet-stream")
            .body(body);
        let reply = self
            .exchange(context, request)
            .await
            .map_err(|error| (error, None))?;
        match reply.status {
            StatusCode::PERMANENT_REDIRECT => {
                let range = reply
                    .headers
                    .get("range")
                    .and_then(|value| value.to_str().ok());
                next_offset_from_range(range)
                    .map(PutReply::Incomplete)
                    .map_err(|message| {
                        (
                            WarehouseError::Protocol {
                                context: context.to_string(),
                                message,
                            },
                            None,
                        )
                    })
            }
            StatusCode::OK | StatusCode::CREATED => parse_json(context, &reply.body)
                .map(|job| PutReply::Complete(Box::new(job)))
                .map_err(|error| (error, None)),
            StatusCode::CONFLICT => Ok(PutReply::Duplicate),
            status => {
                let (reason, mut message) = error_from_body(&reply.body);
                if status == StatusCode::NOT_FOUND {
                    message = format!("upload session expired or unknown: {message}");
                }
                let retry_after = parse_retry_after(
                    reply
                        .headers
                        .get("retry-after")
                        .and_then(|value| value.to_str().ok()),
                );
                let status = status.as_u16();
                let retryable = is_retryable(status, &reason);
                let error = WarehouseError::Api {
                    context: context.to_string(),
                    status,
                    reason,
                    message,
                };
                debug_assert_eq!(retryable, error.retryable());
                Err((error, retry_after))
            }
        }
    }
}

fn session_uri(context: &str, reply: &Reply) -> Result<Url, WarehouseError> {
    let location = reply
        .headers
        .get("location")
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| WarehouseError::Protocol {
            context: context.to_string(),
            message: "no Location header in the upload start response".into(),
        })?;
    Url::parse(location).map_err(|_| WarehouseError::Protocol {
        context: context.to_string(),
        message: "the upload start response has an invalid Location header".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_must_be_multiples_of_256_kib() {
        assert_eq!(DEFAULT_CHUNK_SIZE, 32 * 1024 * 1024);
        assert_eq!(DEFAULT_CHUNK_SIZE % CHUNK_GRANULARITY, 0);
        assert!(check_chunk_size(CHUNK_GRANULARITY).is_ok());
        assert!(check_chunk_size(3 * CHUNK_GRANULARITY).is_ok());
        assert!(check_chunk_size(0).is_err());
        assert!(check_chunk_size(1_000_000).is_err());
        assert!(ChunkBuffer::new(100).is_err());
    }

    #[test]
    fn content_range_values() {
        assert_eq!(content_range(0, 262_144, None), "bytes 0-262143/*");
        assert_eq!(
            content_range(262_144, 10, Some(262_154)),
            "bytes 262144-262153/262154"
        );
    }

    #[test]
    fn range_header_parsing() {
        assert_eq!(next_offset_from_range(None), Ok(0));
        assert_eq!(next_offset_from_range(Some("bytes=0-262143")), Ok(262_144));
        assert!(next_offset_from_range(Some("bytes=5-9")).is_err());
        assert!(next_offset_from_range(Some("junk")).is_err());
        assert!(next_offset_from_range(Some("bytes=0-x")).is_err());
    }

    /// Feeds `input` in pieces of `piece` bytes and returns the PUTs, acknowledging each fully.
    fn plan(input_len: usize, piece: usize, chunk: usize) -> Vec<(String, usize)> {
        let mut buffer = ChunkBuffer::new(chunk).unwrap();
        let input = vec![b'x'; input_len];
        let mut pieces = input.chunks(piece);
        let mut puts = Vec::new();
        loop {
            while buffer.needs_input() {
                match pieces.next() {
                    Some(bytes) => buffer.push(bytes),
                    None => buffer.close(),
                }
            }
            let Some(put) = buffer.next_put() else { break };
            puts.push((put.content_range(), put.body.len()));
            if put.total.is_some() {
                break;
            }
            buffer
                .acknowledge(put.start + put.body.len() as u64)
                .unwrap();
        }
        puts
    }

    #[test]
    fn chunker_sends_full_chunks_and_a_non_empty_final_one() {
        let chunk = CHUNK_GRANULARITY;
        for (input_len, piece) in [
            (1, 1),
            (chunk, 1000),
            (chunk + 1, 4096),
            (3 * chunk, 100_000),
            (3 * chunk + 7, chunk * 2),
            (10, 10),
        ] {
            let puts = plan(input_len, piece, chunk);
            let (last, middle) = puts.split_last().unwrap();
            assert!(
                middle
                    .iter()
                    .all(|(range, len)| *len == chunk && range.ends_with("/*")),
                "{puts:?}"
            );
            assert!(last.1 > 0 && last.1 <= chunk, "{puts:?}");
            assert!(last.0.ends_with(&format!("/{input_len}")), "{puts:?}");
            assert_eq!(middle.len() * chunk + last.1, input_len);
        }
        // Exactly one chunk of input: held back and sent as the final PUT.
        assert_eq!(
            plan(chunk, chunk, chunk),
            vec![(format!("bytes 0-{}/{chunk}", chunk - 1), chunk)]
        );
        assert_eq!(
            plan(2 * chunk, chunk, chunk),
            vec![
                (format!("bytes 0-{}/*", chunk - 1), chunk),
                (
                    format!("bytes {chunk}-{}/{}", 2 * chunk - 1, 2 * chunk),
                    chunk
                )
            ]
        );
    }

    #[test]
    fn partial_acknowledgement_resends_the_rest() {
        let chunk = CHUNK_GRANULARITY;
        let mut buffer = ChunkBuffer::new(chunk).unwrap();
        buffer.push(&vec![b'a'; 2 * chunk + 5]);
        buffer.close();
        let put = buffer.next_put().unwrap();
        assert_eq!(put.content_range(), format!("bytes 0-{}/*", chunk - 1));
        buffer.acknowledge(1000).unwrap();
        let put = buffer.next_put().unwrap();
        assert_eq!(put.start, 1000);
        assert_eq!(
            put.content_range(),
            format!("bytes 1000-{}/*", 1000 + chunk - 1)
        );
        assert!(buffer.acknowledge(999).is_err());
        assert!(buffer.acknowledge(10 * chunk as u64).is_err());
    }
}
