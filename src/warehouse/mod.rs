//! The BigQuery side of a sync: one small trait ([`Warehouse`]) that the apply executor talks to,
//! a REST implementation ([`BigQuery`]) and an in-memory one for tests ([`FakeWarehouse`]).
//!
//! Errors ([`WarehouseError`]) always name the dataset object (table, job) and carry BigQuery's
//! `reason` and `message`; they never contain access tokens or upload session URLs.
//!
//! # Behaviour worth knowing
//!
//! - Every call retries 429, 5xx, transport errors and the reasons `rateLimitExceeded`,
//!   `backendError`, `internalError` ([`RetryPolicy`]: 6 attempts, exponential backoff with
//!   jitter, `Retry-After` honoured). `jobs.query` carries a `requestId`, so a retried DML
//!   statement runs once. A statement aborted by a concurrent update ("Could not serialize
//!   access", HTTP 400) is run again with a fresh `requestId`.
//! - Everything is bounded: each HTTP request by [`RetryPolicy::request_timeout`] (plus connect
//!   and read timeouts in the client), a call with its retries by
//!   [`RetryPolicy::call_deadline`], waiting for a job by [`RetryPolicy::job_deadline`], an
//!   upload by a number of failed attempts per chunk and per upload. A deadline is a
//!   [`WarehouseError::Deadline`].
//! - Jobs run in the dataset's location (datasets.get), sent on every job insert, jobs.get,
//!   getQueryResults and cancel; `bigquery.location` only creates the dataset or is checked
//!   against it ([`WarehouseError::LocationMismatch`]).
//! - `load` is idempotent per client job ID: an outcome is remembered in-process, an existing job
//!   (jobs.get, or a 409 on the upload, after which a 404 is retried) is awaited instead of
//!   loading again. `create_table` after a lost reply (409) succeeds when the table has the
//!   requested schema.
//! - An empty load sends no upload (a resumable upload can't be empty): a missing table is
//!   created with the request's schema, `Truncate` runs `TRUNCATE TABLE` (the existing schema is
//!   kept, unlike a real `WRITE_TRUNCATE` load), `Append`/`Empty` do nothing.
//! - `errors` inside an HTTP 200 query answer are warnings (logged) unless jobs.get shows
//!   `status.errorResult`; job errors (`status.errorResult`) are errors. On the emulator, which
//!   reports SQL errors only that way, `errors` in a 200 are errors.
//! - `alter_table` sends one `ALTER TABLE` with every change (one per change on the emulator).
//! - `copy_table` is one copy job (jobs.insert, client job id, in the dataset's location): the
//!   executor's free, atomic write for replace/append/recreate. On the emulator a WRITE_TRUNCATE
//!   copy onto a table of another shape drops the table first (the emulator can't replace the
//!   schema; not atomic there).
//! - `create_table_with` / `patch_table_meta` / `list_tables` carry datasync's own metadata
//!   (staging expirations, leases in lock tables; `If-Match` for a lease takeover).
//! - `list_dataset` is one tables.list walk (1,000 tables a page, free) with each table's kind
//!   and labels; `get_tables` reads many tables with at most [`GET_TABLES_CONCURRENCY`] calls
//!   in flight, paced under BigQuery's per-method API rate. `plan` uses both instead of one
//!   tables.get per manifest table.
//! - `update_table` is a read-modify-write tables.patch of the target's descriptions and
//!   clustering: the schema it sends is the one tables.get returned (policy tags and all), with
//!   only the descriptions changed, under `If-Match`.
//! - Every job (load, copy, query, MERGE) carries [`labels`]; created tables carry
//!   `managed-by: datasync` and `bigquery.labels`.
//! - `merge_statement` de-duplicates staging per key (greatest cursor wins) and leaves NULL keys
//!   out; with `deletes` it is one `BEGIN TRANSACTION … COMMIT` script of the MERGE and the
//!   delete statement ([`dml`]), whose row counts come from its child jobs (jobs.list
//!   `parentJobId`).
//! - `dry_run_merge` prices a MERGE with `configuration.dryRun` (nothing runs or bills).
//! - A target with columns datasync does not model (RECORD, RANGE) or that is not a table reads
//!   back with [`ExistingTable::unsupported`] reasons instead of failing.
//! - [`WarehouseError::is_ambiguous`] tells a failure after which BigQuery may have acted (lost
//!   reply, 5xx, deadline) from one after which nothing changed.

//! # Emulator (bqemulator 1.4) quirks handled or tolerated
//!
//! - The upload endpoint ignores the client's job ID (the job gets `bqemu_…`; jobs.get on our ID
//!   is 404, a reused ID is never 409): [`LoadOutcome::job_id`] is the server's ID, and
//!   idempotency across processes only holds on real BigQuery.
//! - `outputRows` is the table's total row count after the load, not the rows loaded.
//! - `WRITE_TRUNCATE` is `DELETE` + `COPY`: a failed truncating load leaves the table empty, and
//!   the existing schema is kept. `WRITE_APPEND` with a bad row is atomic.
//! - `ALTER TABLE` changes the stored table only; `alter_table` then patches the catalog schema
//!   when tables.get disagrees (never on real BigQuery, where DDL updates both).
//! - A bare `NUMERIC` in DDL becomes DECIMAL(18,3): with `emulator` set, DDL writes
//!   `NUMERIC(38, 9)`. Bare decimal literals in SQL go through DOUBLE (use `NUMERIC '…'`).
//! - BIGNUMERIC can't be created (HTTP 500), precision/scale/maxLength are dropped, JSON and
//!   GEOGRAPHY columns made by DDL read back as STRING/BYTES, BYTES in NDJSON are not
//!   base64-decoded. None of this can be fixed client-side.
//! - The emulator sends no `dmlStats`, so [`MergeOutcome`] has only `affected_rows` there; it
//!   lists no child jobs of a script (the deleted count is unknown) and prices every dry run at
//!   0 bytes.
//! - tables.list truncates at `maxResults` without a page token, and lists no labels: the
//!   emulator is listed without `maxResults`, and its listing's labels are unknown (`None`).

pub mod avro;
mod bigquery;
pub mod dml;
mod fake;
pub mod labels;
pub mod ndjson;
mod rows;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::Receiver;

pub use avro::{AvroWriter, avro_obstacle};
pub use bigquery::BigQuery;
pub use bigquery::RetryPolicy;
pub use bigquery::{CHUNK_GRANULARITY, DEFAULT_CHUNK_SIZE, content_range, next_offset_from_range};
pub use fake::{FakeWarehouse, InjectedFailure};
pub use ndjson::NdjsonWriter;
pub use rows::SharedBadValues;

use crate::schema::{
    BqType, ColumnMapping, Decoded, Deletes, ExtractStats, Lineage, LoadFormat, RawRow, RowSink,
    TooManyBadValues, TypePolicies, WarehouseField, WarehouseTable,
};

/// The row sink of one extraction, in the table's planned load format.
pub enum LoadSink {
    /// NDJSON lines.
    Ndjson(NdjsonWriter),
    /// One Avro container file.
    Avro(AvroWriter),
}

impl LoadSink {
    /// A sink writing `format`; the other arguments are [`NdjsonWriter::new`]'s.
    pub fn new(
        format: LoadFormat,
        table: String,
        columns: &[ColumnMapping],
        policies: TypePolicies,
        max_bad_values: Option<u64>,
        key_columns: &[String],
        batch_size: u64,
    ) -> Self {
        match format {
            LoadFormat::Ndjson => Self::Ndjson(NdjsonWriter::new(
                table,
                columns,
                policies,
                max_bad_values,
                key_columns,
                batch_size,
            )),
            LoadFormat::Avro => Self::Avro(AvroWriter::new(
                table,
                columns,
                policies,
                max_bad_values,
                key_columns,
                batch_size,
            )),
        }
    }
}

impl LoadSink {
    /// The sink with the lineage columns appended to every row (`None`: unchanged).
    pub fn with_lineage(self, lineage: Option<&Lineage>) -> Self {
        match (self, lineage) {
            (Self::Ndjson(sink), Some(lineage)) => Self::Ndjson(sink.with_lineage(lineage)),
            (Self::Avro(sink), Some(lineage)) => Self::Avro(sink.with_lineage(lineage)),
            (sink, None) => sink,
        }
    }

    /// Holds the bad-value budget against `shared`, the table's count over all its chunks.
    pub fn share_budget(&mut self, shared: SharedBadValues) {
        match self {
            Self::Ndjson(sink) => sink.share_budget(shared),
            Self::Avro(sink) => sink.share_budget(shared),
        }
    }
}

impl RowSink for LoadSink {
    fn push<'r>(
        &mut self,
        decode: impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues> {
        match self {
            Self::Ndjson(sink) => sink.push(decode),
            Self::Avro(sink) => sink.push(decode),
        }
    }

    fn push_raw<'r>(
        &mut self,
        raw: RawRow<'r>,
        decode: impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues> {
        match self {
            Self::Ndjson(sink) => sink.push_raw(raw, decode),
            Self::Avro(sink) => sink.push_raw(raw, decode),
        }
    }

    fn full_chunk(&mut self) -> Option<Bytes> {
        match self {
            Self::Ndjson(sink) => sink.full_chunk(),
            Self::Avro(sink) => sink.full_chunk(),
        }
    }

    fn finish(&mut self) -> Option<Bytes> {
        match self {
            Self::Ndjson(sink) => sink.finish(),
            Self::Avro(sink) => sink.finish(),
        }
    }

    fn stats(&self) -> &ExtractStats {
        match self {
            Self::Ndjson(sink) => sink.stats(),
            Self::Avro(sink) => sink.stats(),
        }
    }
}

/// A table as it exists in the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingTable {
    /// Its schema, partitioning and clustering.
    pub table: WarehouseTable,
    /// Row count from the table metadata (stale after DML on the emulator).
    pub num_rows: Option<u64>,
    /// Metadata etag.
    pub etag: Option<String>,
    /// Last modification (`lastModifiedTime`, milliseconds since the epoch as BigQuery sends
    /// it): moves with every change of the table's rows or schema, so the run ledger trusts a
    /// watermark only while it is the one recorded after the write. `None` where the server
    /// keeps no such time (the emulator).
    pub last_modified: Option<String>,
    /// Why datasync can't work with this table, if it can't: columns of types it does not model
    /// (RECORD, RANGE; left out of `table`), or not a plain table (VIEW, EXTERNAL). The planner
    /// blocks such a table with these reasons; other tables are unaffected.
    pub unsupported: Vec<String>,
    /// The table's description (datasync's lock tables keep their lease here).
    pub description: Option<String>,
    /// The table's labels ([`MANAGED_BY_LABEL`] on the tables datasync creates).
    pub labels: BTreeMap<String, String>,
}

/// The label on every table datasync creates
/// (<https://cloud.google.com/bigquery/docs/labels-intro>: lowercase keys and values, letters,
/// digits, `_` and `-`): how `plan` tells the targets it made from the dataset's other tables.
pub const MANAGED_BY_LABEL: (&str, &str) = ("managed-by", "datasync");

/// One table of the dataset as tables.list shows it: no schema, but its name, kind and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTable {
    /// The table's name in the dataset.
    pub name: String,
    /// `TABLE`, `VIEW`, `EXTERNAL`, `MATERIALIZED_VIEW`, `SNAPSHOT`, when the listing says.
    pub kind: Option<String>,
    /// Its labels; `None` when the listing does not carry them (the emulator's tables.list
    /// never does: ask tables.get).
    pub labels: Option<BTreeMap<String, String>>,
}

/// Whether `labels` mark a table datasync created ([`MANAGED_BY_LABEL`]).
pub fn is_managed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(MANAGED_BY_LABEL.0).map(String::as_str) == Some(MANAGED_BY_LABEL.1)
}

/// How many tables.get calls [`Warehouse::get_tables`] keeps in flight.
pub const GET_TABLES_CONCURRENCY: usize = 16;

/// [`Warehouse::get_table`] of every name, in order, with at most `concurrency` calls in flight
/// and, with `per_second`, at most that many started per second. No task is spawned: the calls
/// are futures polled together (`buffered`), so memory and connections stay bounded whatever the
/// number of names. The first error ends it.
pub async fn get_tables_bounded<W: Warehouse + ?Sized>(
    warehouse: &W,
    names: &[String],
    concurrency: usize,
    per_second: Option<u32>,
) -> Result<Vec<Option<ExistingTable>>, WarehouseError> {
    use futures::{StreamExt, TryStreamExt};
    let start = tokio::time::Instant::now();
    let spacing = per_second
        .filter(|rate| *rate > 0)
        .map(|rate| Duration::from_secs(1) / rate);
    let slot = |index: usize| {
        spacing
            .map(|spacing| start + spacing.saturating_mul(u32::try_from(index).unwrap_or(u32::MAX)))
    };
    futures::stream::iter(0..names.len())
        .map(|index| paced_get(warehouse, &names[index], slot(index)))
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// [`Warehouse::get_table`], not before `at`.
async fn paced_get<W: Warehouse + ?Sized>(
    warehouse: &W,
    name: &str,
    at: Option<tokio::time::Instant>,
) -> Result<Option<ExistingTable>, WarehouseError> {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
    warehouse.get_table(name).await
}

/// Table metadata datasync sets on its own tables (staging, locks, backups).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableMeta {
    /// `expirationTime` (milliseconds since the epoch): BigQuery deletes the table then
    /// (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#Table.FIELDS.expiration_time>).
    pub expires_at_ms: Option<i64>,
    /// `description`.
    pub description: Option<String>,
}

/// An in-place change of a table's metadata: one `tables.patch` (no job, nothing billed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableUpdate {
    /// The new table description.
    pub description: Option<String>,
    /// New column descriptions, by column name.
    pub column_descriptions: Vec<(String, String)>,
    /// The new clustering columns.
    pub clustering: Option<Vec<String>>,
}

impl TableUpdate {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.description.is_none()
            && self.column_descriptions.is_empty()
            && self.clustering.is_none()
    }
}

/// One copy job: `source` into `target` (same dataset), with `jobs.insert`
/// `configuration.copy`. Copy jobs are free and atomic: "Creation, truncation and append actions
/// occur as one atomic update upon job completion"
/// (<https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobConfigurationTableCopy>).
/// `WRITE_TRUNCATE` replaces the target's rows *and* schema with the source's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRequest {
    /// Source table.
    pub source: String,
    /// Destination table (created when missing).
    pub target: String,
    /// `WRITE_TRUNCATE`, `WRITE_APPEND` or `WRITE_EMPTY`.
    pub disposition: Disposition,
    /// Client-chosen job ID (deterministic per run and table, so it can be cancelled).
    pub job_id: String,
}

/// What a load does with the rows already in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Disposition {
    /// Replace the table's rows (`WRITE_TRUNCATE`).
    Truncate,
    /// Add to the table's rows (`WRITE_APPEND`).
    Append,
    /// Only load into an empty table (`WRITE_EMPTY`).
    Empty,
}

impl Disposition {
    /// The API name.
    pub fn as_api(self) -> &'static str {
        match self {
            Self::Truncate => "WRITE_TRUNCATE",
            Self::Append => "WRITE_APPEND",
            Self::Empty => "WRITE_EMPTY",
        }
    }
}

/// One load job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRequest {
    /// Target table name in the dataset.
    pub table: String,
    /// Schema of the data (and of the table when the load creates it).
    pub schema: WarehouseTable,
    /// Truncate, append or require empty.
    pub disposition: Disposition,
    /// Client-chosen, deterministic job ID (letters, digits, `_`, `-`; at most 1024 chars).
    /// The same ID never loads twice; to retry a load whose job *failed* (even with a retryable
    /// reason), use a new ID (e.g. with an attempt suffix), since BigQuery keeps the failed job.
    pub job_id: String,
    /// Let an append add new NULLABLE/REPEATED columns (`ALLOW_FIELD_ADDITION`).
    pub allow_field_addition: bool,
    /// The format of the uploaded bytes.
    pub format: LoadFormat,
}

/// The result of a finished load job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOutcome {
    /// The job ID as the server reports it (the emulator replaces the client's ID).
    pub job_id: String,
    /// `statistics.load.outputRows`. Real BigQuery: rows written by this job. The emulator
    /// reports the table's total row count after the load.
    pub output_rows: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// `output_rows` is the table's row count after the load, not the job's rows (the
    /// emulator): only a load into an empty table can be checked with it.
    pub output_rows_is_total: bool,
}

/// What jobs.get says about a job: a chunk whose load job is DONE is not loaded again when a
/// killed run is resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Pending or running.
    Running,
    /// Finished without `errorResult`.
    Done {
        /// `statistics.load.outputRows` of a load job (0 for other jobs).
        output_rows: u64,
    },
    /// Finished with `errorResult`: its id can't be used again.
    Failed {
        /// Why.
        message: String,
    },
}

/// One in-place schema change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterColumn {
    /// `ADD COLUMN` (NULLABLE or REPEATED only; BigQuery refuses REQUIRED).
    Add(WarehouseField),
    /// `ALTER COLUMN c DROP NOT NULL`.
    DropNotNull(String),
    /// `ALTER COLUMN c SET DATA TYPE t` (coercible widenings only).
    SetType(WarehouseField),
}

/// A named query parameter (`@name` in the SQL).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryParam {
    /// Name without `@`.
    pub name: String,
    /// Scalar type.
    pub bq_type: BqType,
    /// The value in BigQuery's text form (`"42"`, `"2024-01-02 03:04:05.123456+00:00"`), or
    /// `None` for NULL.
    pub value: Option<String>,
    /// An `ARRAY<STRUCT<…>>` parameter instead (`bq_type` and `value` are then unused).
    pub struct_array: Option<StructArray>,
}

/// The value of an `ARRAY<STRUCT<…>>` query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructArray {
    /// The struct's fields: name and type.
    pub fields: Vec<(String, BqType)>,
    /// The elements: one text value per field each.
    pub rows: Vec<Vec<String>>,
}

impl QueryParam {
    /// A parameter.
    pub fn new(name: impl Into<String>, bq_type: BqType, value: Option<String>) -> Self {
        Self {
            name: name.into(),
            bq_type,
            value,
            struct_array: None,
        }
    }

    /// An `ARRAY<STRUCT<fields>>` parameter holding `rows`.
    pub fn struct_array(
        name: impl Into<String>,
        fields: Vec<(String, BqType)>,
        rows: Vec<Vec<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            bq_type: BqType::String,
            value: None,
            struct_array: Some(StructArray { fields, rows }),
        }
    }

    /// The parameter as the REST API spells it (`queryParameters[]`).
    pub fn to_api(&self) -> serde_json::Value {
        use serde_json::json;
        let Some(StructArray { fields, rows }) = &self.struct_array else {
            return json!({
                "name": self.name,
                "parameterType": {"type": self.bq_type.as_str()},
                "parameterValue": match &self.value { Some(value) => json!({"value": value}), None => json!({}) },
            });
        };
        let struct_types: Vec<serde_json::Value> = fields
            .iter()
            .map(|(name, bq_type)| json!({"name": name, "type": {"type": bq_type.as_str()}}))
            .collect();
        let values: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                let map: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .zip(row)
                    .map(|((name, _), value)| (name.clone(), json!({"value": value})))
                    .collect();
                json!({"structValues": map})
            })
            .collect();
        json!({
            "name": self.name,
            "parameterType": {"type": "ARRAY", "arrayType": {"type": "STRUCT", "structTypes": struct_types}},
            "parameterValue": {"arrayValues": values},
        })
    }
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryColumn {
    /// Name.
    pub name: String,
    /// Type, `None` when BigQuery reports a type we don't model (RECORD, RANGE).
    pub bq_type: Option<BqType>,
    /// Whether the column is an array.
    pub repeated: bool,
}

/// The rows of a finished query.
///
/// Cell decoding: NULL → `null`; INT64 → number; FLOAT64 → number (NaN/±Infinity stay
/// strings); BOOL → bool; TIMESTAMP → number of microseconds since the epoch; NUMERIC,
/// BIGNUMERIC, JSON, DATE, TIME, DATETIME, BYTES (base64), GEOGRAPHY → string as sent;
/// REPEATED → array; RECORD → object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryRows {
    /// Columns.
    pub columns: Vec<QueryColumn>,
    /// Rows, one value per column.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// `numDmlAffectedRows` for DML.
    pub num_dml_affected_rows: Option<u64>,
}

impl QueryRows {
    /// The single cell of a one-row, one-column result.
    pub fn scalar(&self) -> Option<&serde_json::Value> {
        self.rows.first().and_then(|row| row.first())
    }
}

/// An upsert from a staging table into a target table of the same dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRequest {
    /// Staging table (source of the MERGE).
    pub staging: String,
    /// Target table.
    pub target: String,
    /// Key columns (matched with `=`). Staging rows with a NULL key are left out (`=` never
    /// matches NULL, so they would be inserted again on every run).
    pub keys: Vec<String>,
    /// All columns to write, keys included.
    pub columns: Vec<String>,
    /// The cursor column: of several staging rows with one key, the greatest cursor wins
    /// (BigQuery fails a MERGE whose row matches several source rows: "UPDATE/MERGE must match
    /// at most one source row for each target row",
    /// <https://cloud.google.com/bigquery/docs/reference/standard-sql/dml-syntax#merge_statement>).
    pub order_by: Option<String>,
    /// Run the MERGE as a query job with this client-chosen id (jobs.insert), so an interrupted
    /// run can cancel it; `None`: jobs.query.
    pub job_id: Option<String>,
    /// Target rows whose key is not in `keys_table`: kept, soft-deleted or deleted, in one
    /// transaction with the MERGE (see [`dml::deletes_statement`]).
    pub deletes: Deletes,
    /// The run's table of the source's whole key set (needed unless `deletes` is `keep`).
    pub keys_table: Option<String>,
}

/// The result of a MERGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeOutcome {
    /// Rows inserted plus rows updated.
    pub affected_rows: u64,
    /// Rows inserted, when the server reports `dmlStats` (the emulator doesn't).
    pub inserted: Option<u64>,
    /// Rows updated, when the server reports `dmlStats` (the emulator doesn't).
    pub updated: Option<u64>,
    /// Rows deleted (`deletes: hard`) or soft-deleted (`soft`), when the server reports the
    /// statement's `dmlStats` (the emulator doesn't).
    pub deleted: Option<u64>,
}

/// Copies the rows of `from` whose key is among `values` into `into` (both of the dataset;
/// `columns` in both): one `INSERT … SELECT` that only reads `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRowsByKey {
    /// The table read (a replace's target).
    pub from: String,
    /// The table written (this run's staging table).
    pub into: String,
    /// Columns copied (those `from` has).
    pub columns: Vec<String>,
    /// The key columns and their types.
    pub keys: Vec<(String, BqType)>,
    /// The keys to copy, one value per key column in BigQuery's text form.
    pub values: Vec<Vec<String>>,
}

/// What went wrong talking to the warehouse.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WarehouseError {
    /// BigQuery answered with an error (HTTP status, or `errors` in a 200 response).
    #[error("{context}: BigQuery error (HTTP {status}, reason {reason}): {message}")]
    Api {
        /// The operation and object, e.g. `get table sync.orders`.
        context: String,
        /// HTTP status (200 when the error came inside a successful response).
        status: u16,
        /// BigQuery `reason`, e.g. `notFound`, `invalid`, `rateLimitExceeded`.
        reason: String,
        /// BigQuery message.
        message: String,
    },
    /// A job finished with `status.errorResult`.
    #[error("{context}: job {job_id} failed (reason {reason}): {message}{}", details_suffix(.details))]
    Job {
        /// The operation and object.
        context: String,
        /// Job ID.
        job_id: String,
        /// `errorResult.reason`.
        reason: String,
        /// `errorResult.message`.
        message: String,
        /// Further messages from `status.errors` (at most a few).
        details: Vec<String>,
    },
    /// Could not reach BigQuery (connection refused, reset, timeout).
    #[error("{context}: cannot reach BigQuery: {message}")]
    Transport {
        /// The operation and object.
        context: String,
        /// What failed (no URLs with query strings, no headers).
        message: String,
        /// Whether the request may have reached BigQuery (anything but a failure to connect):
        /// then the reply was lost and BigQuery may have carried the request out.
        maybe_sent: bool,
    },
    /// A deadline passed: a call's retries ([`RetryPolicy::call_deadline`]) or waiting for a job
    /// ([`RetryPolicy::job_deadline`]). What was asked may still happen.
    #[error("{context}: gave up: {message}")]
    Deadline {
        /// The operation and object.
        context: String,
        /// What took too long.
        message: String,
    },
    /// BigQuery sent something we can't understand.
    #[error("{context}: unexpected response from BigQuery: {message}")]
    Protocol {
        /// The operation and object.
        context: String,
        /// What was wrong.
        message: String,
    },
    /// The dataset does not exist and may not be created.
    #[error(
        "dataset {project}.{dataset} does not exist (set bigquery.create_dataset to create it)"
    )]
    DatasetMissing {
        /// Project.
        project: String,
        /// Dataset.
        dataset: String,
    },
    /// `bigquery.location` names another location than the dataset's (which can't change).
    #[error(
        "bigquery.location is `{configured}` but dataset {project}.{dataset} is in `{actual}`: set bigquery.location to `{actual}` or remove it (jobs run where the dataset is)"
    )]
    LocationMismatch {
        /// Project.
        project: String,
        /// Dataset.
        dataset: String,
        /// `bigquery.location`.
        configured: String,
        /// The dataset's location (datasets.get).
        actual: String,
    },
    /// Getting an access token failed.
    #[error("BigQuery authentication failed: {0}")]
    Auth(String),
    /// The request itself is invalid (caught before calling BigQuery).
    #[error("{0}")]
    Invalid(String),
    /// A failure injected by [`FakeWarehouse`].
    #[error("injected failure in {operation} (retryable: {retryable})")]
    Injected {
        /// The operation that failed.
        operation: String,
        /// Whether [`WarehouseError::retryable`] says true.
        retryable: bool,
        /// Whether [`WarehouseError::is_ambiguous`] says true (the fake did the work, then
        /// "lost the reply").
        ambiguous: bool,
    },
}

fn details_suffix(details: &[String]) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({})", details.join("; "))
    }
}

/// BigQuery error reasons that are worth retrying.
pub(crate) const RETRYABLE_REASONS: &[&str] =
    &["rateLimitExceeded", "backendError", "internalError"];

impl WarehouseError {
    /// Whether retrying may succeed. For a failed load job ([`WarehouseError::Job`]) the retry
    /// needs a new job ID.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Api { status, reason, .. } => {
                *status == 429 || *status >= 500 || RETRYABLE_REASONS.contains(&reason.as_str())
            }
            Self::Job { reason, .. } => RETRYABLE_REASONS.contains(&reason.as_str()),
            Self::Transport { .. } => true,
            Self::Injected { retryable, .. } => *retryable,
            Self::Deadline { .. }
            | Self::Protocol { .. }
            | Self::DatasetMissing { .. }
            | Self::LocationMismatch { .. }
            | Self::Auth(_)
            | Self::Invalid(_) => false,
        }
    }

    /// Whether BigQuery may have carried the request out although the call failed: the reply
    /// was lost (a timeout or reset after sending), BigQuery failed internally (5xx), gave an
    /// answer we can't read, or a deadline passed while a job ran. After such a failure the
    /// target's state is unknown until it is read again; after any other failure the request
    /// was refused or its job failed atomically, so nothing changed.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            Self::Transport { maybe_sent, .. } => *maybe_sent,
            Self::Api { status, .. } => *status >= 500,
            Self::Deadline { .. } | Self::Protocol { .. } => true,
            Self::Injected { ambiguous, .. } => *ambiguous,
            Self::Job { .. }
            | Self::DatasetMissing { .. }
            | Self::LocationMismatch { .. }
            | Self::Auth(_)
            | Self::Invalid(_) => false,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The BigQuery reason of an API or job error.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Api { reason, .. } | Self::Job { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Whether this is a "not found" answer.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404) || self.reason() == Some("notFound")
    }

    /// Whether this is an "already exists" answer.
    pub fn is_duplicate(&self) -> bool {
        self.status() == Some(409) || self.reason() == Some("duplicate")
    }
}

/// The warehouse operations the apply executor needs. Table names are plain names inside the
/// configured dataset.
#[async_trait]
pub trait Warehouse: Send + Sync {
    /// Checks that the dataset exists; creates it when missing and `create` is true, otherwise
    /// fails with [`WarehouseError::DatasetMissing`].
    async fn ensure_dataset(&self, create: bool) -> Result<(), WarehouseError>;

    /// The table, or `None` when it does not exist.
    async fn get_table(&self, name: &str) -> Result<Option<ExistingTable>, WarehouseError>;

    /// Creates a table (fails if it exists).
    async fn create_table(&self, table: &WarehouseTable) -> Result<(), WarehouseError>;

    /// Applies in-place schema changes, in order: one `ALTER TABLE` statement with every change
    /// (one statement per change on the emulator).
    async fn alter_table(&self, name: &str, changes: &[AlterColumn]) -> Result<(), WarehouseError>;

    /// Drops a table if it exists.
    async fn drop_table(&self, name: &str) -> Result<(), WarehouseError>;

    /// Runs one load job fed with NDJSON chunks (each chunk holds whole lines).
    async fn load(
        &self,
        request: &LoadRequest,
        data: Receiver<Bytes>,
    ) -> Result<LoadOutcome, WarehouseError>;

    /// Runs a standard-SQL query with named parameters and returns all rows.
    async fn query(&self, sql: &str, params: &[QueryParam]) -> Result<QueryRows, WarehouseError>;

    /// Upserts `staging` into `target` on `keys`.
    async fn merge(&self, request: &MergeRequest) -> Result<MergeOutcome, WarehouseError>;

    /// `MAX(column)` over a table (`null` for an empty table), decoded like [`QueryRows`].
    async fn max_value(
        &self,
        table: &str,
        column: &str,
    ) -> Result<serde_json::Value, WarehouseError>;

    /// Asks BigQuery to cancel a job (best effort; finished jobs are left alone).
    async fn cancel_job(&self, job_id: &str) -> Result<(), WarehouseError>;

    /// The state of the job with the client-chosen id `job_id` (jobs.get), `None` when there
    /// is no such job.
    async fn job_state(&self, job_id: &str) -> Result<Option<JobState>, WarehouseError>;

    /// Writes every row of `staging` into `target` (same dataset, `columns` in both) in one
    /// atomic step. With `replace` the target's rows are replaced (`TRUNCATE` + `INSERT` in one
    /// transaction: readers see the old rows or the new ones), otherwise they are appended.
    async fn insert_from(
        &self,
        staging: &str,
        target: &str,
        columns: &[String],
        replace: bool,
    ) -> Result<(), WarehouseError>;

    /// Runs one copy job and waits for it. Idempotent per job ID (an existing job is awaited).
    async fn copy_table(&self, request: &CopyRequest) -> Result<(), WarehouseError>;

    /// Creates a table with metadata (tables.insert: atomic, a duplicate is an error with
    /// [`WarehouseError::is_duplicate`] — datasync's leases rely on that).
    async fn create_table_with(
        &self,
        table: &WarehouseTable,
        meta: &TableMeta,
    ) -> Result<(), WarehouseError>;

    /// Sets a table's metadata (tables.patch). With `etag`, only if the table still has it
    /// (`If-Match`; HTTP 412 otherwise).
    async fn patch_table_meta(
        &self,
        name: &str,
        meta: &TableMeta,
        etag: Option<&str>,
    ) -> Result<(), WarehouseError>;

    /// The names of the dataset's tables that start with `prefix` (tables.list, every page).
    async fn list_tables(&self, prefix: &str) -> Result<Vec<String>, WarehouseError>;

    /// Every table of the dataset with its kind and labels (tables.list, every page: free, and
    /// one call per 1,000 tables).
    async fn list_dataset(&self) -> Result<Vec<ListedTable>, WarehouseError>;

    /// [`Warehouse::get_table`] of each name, in order, a bounded number at a time
    /// ([`get_tables_bounded`] with [`GET_TABLES_CONCURRENCY`]).
    async fn get_tables(
        &self,
        names: &[String],
    ) -> Result<Vec<Option<ExistingTable>>, WarehouseError> {
        get_tables_bounded(self, names, GET_TABLES_CONCURRENCY, None).await
    }

    /// What `request`'s statements (the MERGE, and the delete statement with `deletes`) read
    /// of the existing `target`: one dry run each (`configuration.dryRun`, nothing runs, nothing
    /// is billed), as `(statement, totalBytesProcessed)`. The run's staging and keys tables don't
    /// exist yet: a typed empty stand-in takes their place ([`dml::dry_run_statements`]).
    async fn dry_run_merge(
        &self,
        request: &MergeRequest,
        target: &WarehouseTable,
    ) -> Result<Vec<(String, u64)>, WarehouseError>;

    /// Rows of `table` that share their `keys` with an earlier row: `COUNT(*)` less the number
    /// of distinct keys (what a MERGE's de-duplication leaves out).
    async fn count_duplicate_keys(
        &self,
        table: &str,
        keys: &[String],
    ) -> Result<u64, WarehouseError>;

    /// Runs `request` and returns the rows copied.
    async fn copy_rows_by_key(&self, request: &CopyRowsByKey) -> Result<u64, WarehouseError>;

    /// Changes a table's descriptions and clustering in place (tables.patch: free, no query).
    /// Columns keep everything else (types, modes, policy tags); a missing column is an error.
    async fn update_table(&self, name: &str, update: &TableUpdate) -> Result<(), WarehouseError>;
}

/// The text form of a column maximum read back from BigQuery (see [`Warehouse::max_value`]),
/// as a source compares it: TIMESTAMP cells come back as microseconds since the epoch and
/// become RFC 3339 UTC text; `None` when the table holds no value.
pub fn cursor_text(max: &serde_json::Value, bq_type: BqType) -> Option<String> {
    let micros = match max {
        serde_json::Value::Number(number) => number.as_i64(),
        serde_json::Value::String(text) => text.parse::<i64>().ok(),
        _ => None,
    };
    match (max, micros) {
        (serde_json::Value::Null, _) => None,
        (_, Some(micros)) if bq_type == BqType::Timestamp => {
            let instant = chrono::DateTime::from_timestamp_micros(micros)?;
            Some(instant.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        }
        (serde_json::Value::String(text), _) => Some(text.clone()),
        (other, _) => Some(other.to_string()),
    }
}

/// Quotes an identifier with backticks (backticks and backslashes inside are escaped).
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        match c {
            '`' => out.push_str("\\`"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('`');
    out
}

/// Quotes a string literal for standard SQL (`'…'` with escapes), for the rare places where a
/// parameter can't be used.
pub fn quote_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The DDL type of a field: `ARRAY<…>` for REPEATED, parameters included. With
/// `explicit_numeric` a bare NUMERIC is written `NUMERIC(38, 9)` (the emulator turns a bare
/// NUMERIC in DDL into a lossy DECIMAL(18,3)).
pub fn ddl_type(field: &WarehouseField, explicit_numeric: bool) -> String {
    let base = if explicit_numeric && field.bq_type == BqType::Numeric && field.precision.is_none()
    {
        "NUMERIC(38, 9)".to_string()
    } else {
        field.type_text()
    };
    if field.mode == crate::schema::FieldMode::Repeated {
        format!("ARRAY<{base}>")
    } else {
        base
    }
}

/// The DDL statement for one change on the fully qualified, already quoted `table`.
pub fn alter_statement(table: &str, change: &AlterColumn, explicit_numeric: bool) -> String {
    format!(
        "ALTER TABLE {table} {}",
        alter_action(change, explicit_numeric)
    )
}

/// The DDL for every change on `table`: ONE `ALTER TABLE` with the actions comma-separated, so
/// the table takes one metadata update (BigQuery allows 5 per 10 s per table); the grammar
/// takes a list of actions (<https://cloud.google.com/bigquery/docs/reference/standard-sql/data-definition-language#alter_table_add_column_statement>).
/// With `emulator`, one statement per change: the emulator refuses several actions.
pub fn alter_statements(
    table: &str,
    changes: &[AlterColumn],
    explicit_numeric: bool,
    emulator: bool,
) -> Vec<String> {
    if changes.is_empty() {
        return Vec::new();
    }
    if emulator {
        return changes
            .iter()
            .map(|change| alter_statement(table, change, explicit_numeric))
            .collect();
    }
    let actions = changes
        .iter()
        .map(|change| alter_action(change, explicit_numeric))
        .collect::<Vec<_>>()
        .join(", ");
    vec![format!("ALTER TABLE {table} {actions}")]
}

/// One action of an `ALTER TABLE`.
fn alter_action(change: &AlterColumn, explicit_numeric: bool) -> String {
    match change {
        AlterColumn::Add(field) => format!(
            "ADD COLUMN {} {}",
            quote_ident(&field.name),
            ddl_type(field, explicit_numeric)
        ),
        AlterColumn::DropNotNull(column) => {
            format!("ALTER COLUMN {} DROP NOT NULL", quote_ident(column))
        }
        AlterColumn::SetType(field) => format!(
            "ALTER COLUMN {} SET DATA TYPE {}",
            quote_ident(&field.name),
            ddl_type(field, explicit_numeric)
        ),
    }
}

/// What a merge runs for `request`: the MERGE, or with `deletes` one multi-statement
/// transaction of the MERGE and the delete statement; `qualify` turns a table name into a
/// quoted full name.
pub fn merge_statement(
    request: &MergeRequest,
    qualify: impl Fn(&str) -> String,
) -> Result<String, WarehouseError> {
    let sql = merge_only_statement(request, &qualify)?;
    if request.deletes.is_keep() {
        return Ok(sql);
    }
    let keys_table = request.keys_table.as_deref().ok_or_else(|| {
        WarehouseError::Invalid(format!(
            "merge {} into {}: `deletes: {}` needs the run's keys table",
            request.staging,
            request.target,
            request.deletes.as_str()
        ))
    })?;
    let deletes = dml::deletes_statement(
        &qualify(&request.target),
        &qualify(keys_table),
        &request.keys,
        request.deletes,
    );
    // One multi-statement transaction: the MERGE and the delete commit together or not at all
    // (<https://cloud.google.com/bigquery/docs/transactions>).
    Ok(format!(
        "BEGIN TRANSACTION;\n{sql};\n{deletes};\nCOMMIT TRANSACTION;"
    ))
}

/// The MERGE statement alone (de-duplicated staging, no NULL key; with `deletes: soft` a
/// matched row is un-deleted).
pub fn merge_only_statement(
    request: &MergeRequest,
    qualify: impl Fn(&str) -> String,
) -> Result<String, WarehouseError> {
    if request.keys.is_empty() {
        return Err(WarehouseError::Invalid(format!(
            "merge {} into {}: no key columns",
            request.staging, request.target
        )));
    }
    for key in &request.keys {
        if !request
            .columns
            .iter()
            .any(|column| column.eq_ignore_ascii_case(key))
        {
            return Err(WarehouseError::Invalid(format!(
                "merge {} into {}: key column {key} is not among the columns",
                request.staging, request.target
            )));
        }
    }
    let on = request
        .keys
        .iter()
        .map(|key| format!("T.{0} = S.{0}", quote_ident(key)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let updates = request
        .columns
        .iter()
        .filter(|column| {
            !request
                .keys
                .iter()
                .any(|key| key.eq_ignore_ascii_case(column))
        })
        .map(|column| format!("{0} = S.{0}", quote_ident(column)))
        .chain(
            // A soft-deleted row whose key is back is un-deleted.
            (request.deletes == Deletes::Soft)
                .then(|| format!("{} = NULL", quote_ident(crate::schema::DELETED_AT_COLUMN))),
        )
        .collect::<Vec<_>>();
    let columns = request
        .columns
        .iter()
        .map(|column| quote_ident(column))
        .collect::<Vec<_>>();
    let values = request
        .columns
        .iter()
        .map(|column| format!("S.{}", quote_ident(column)))
        .collect::<Vec<_>>();
    // One source row per key, none with a NULL key.
    let partition = request
        .keys
        .iter()
        .map(|key| quote_ident(key))
        .collect::<Vec<_>>()
        .join(", ");
    let not_null = request
        .keys
        .iter()
        .map(|key| format!("{} IS NOT NULL", quote_ident(key)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let order = request
        .order_by
        .as_ref()
        .map(|column| format!(" ORDER BY {} DESC", quote_ident(column)))
        .unwrap_or_default();
    let mut sql = format!(
        "MERGE {} T USING (SELECT * FROM {} WHERE {not_null} QUALIFY ROW_NUMBER() OVER (PARTITION BY {partition}{order}) = 1) S ON {on}",
        qualify(&request.target),
        qualify(&request.staging)
    );
    if !updates.is_empty() {
        sql.push_str(&format!(
            " WHEN MATCHED THEN UPDATE SET {}",
            updates.join(", ")
        ));
    }
    sql.push_str(&format!(
        " WHEN NOT MATCHED THEN INSERT ({}) VALUES ({})",
        columns.join(", "),
        values.join(", ")
    ));
    Ok(sql)
}

/// How long to wait between job polls: 0.2 s doubling to 5 s.
pub(crate) fn poll_delay(attempt: u32) -> Duration {
    Duration::from_millis((200u64 << attempt.min(5)).min(5_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::FieldMode;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a`b"), "`a\\`b`");
        assert_eq!(quote_string("it's\\"), "'it\\'s\\\\'");
    }

    #[test]
    fn alter_statements() {
        let mut numeric = WarehouseField::new("n", BqType::Numeric, FieldMode::Nullable);
        let add = AlterColumn::Add(numeric.clone());
        assert_eq!(
            alter_statement("`p.d.t`", &add, false),
            "ALTER TABLE `p.d.t` ADD COLUMN `n` NUMERIC"
        );
        assert_eq!(
            alter_statement("`p.d.t`", &add, true),
            "ALTER TABLE `p.d.t` ADD COLUMN `n` NUMERIC(38, 9)"
        );
        numeric.precision = Some(20);
        numeric.scale = Some(2);
        assert_eq!(
            alter_statement("`p.d.t`", &AlterColumn::SetType(numeric), true),
            "ALTER TABLE `p.d.t` ALTER COLUMN `n` SET DATA TYPE NUMERIC(20, 2)"
        );
        let tags = WarehouseField::new("tags", BqType::String, FieldMode::Repeated);
        assert_eq!(
            alter_statement("`t`", &AlterColumn::Add(tags), false),
            "ALTER TABLE `t` ADD COLUMN `tags` ARRAY<STRING>"
        );
        assert_eq!(
            alter_statement("`t`", &AlterColumn::DropNotNull("id".into()), false),
            "ALTER TABLE `t` ALTER COLUMN `id` DROP NOT NULL"
        );
    }

    #[test]
    fn one_alter_statement_for_every_change_except_on_the_emulator() {
        let changes = [
            AlterColumn::Add(WarehouseField::new("a", BqType::Int64, FieldMode::Nullable)),
            AlterColumn::DropNotNull("b".into()),
            AlterColumn::SetType(WarehouseField::new(
                "c",
                BqType::Numeric,
                FieldMode::Nullable,
            )),
        ];
        assert_eq!(
            super::alter_statements("`t`", &changes, false, false),
            [
                "ALTER TABLE `t` ADD COLUMN `a` INT64, ALTER COLUMN `b` DROP NOT NULL, ALTER COLUMN `c` SET DATA TYPE NUMERIC"
            ]
        );
        let each = super::alter_statements("`t`", &changes, true, true);
        assert_eq!(each.len(), 3);
        assert_eq!(
            each[2],
            "ALTER TABLE `t` ALTER COLUMN `c` SET DATA TYPE NUMERIC(38, 9)"
        );
        assert!(super::alter_statements("`t`", &[], false, false).is_empty());
    }

    #[test]
    fn merge_sql() {
        let request = MergeRequest {
            staging: "stg".into(),
            target: "tgt".into(),
            keys: vec!["id".into()],
            columns: vec!["id".into(), "v".into()],
            order_by: Some("v".into()),
            job_id: None,
            deletes: Deletes::Keep,
            keys_table: None,
        };
        let sql = merge_statement(&request, |name| format!("`p.d.{name}`")).unwrap();
        assert_eq!(
            sql,
            "MERGE `p.d.tgt` T USING (SELECT * FROM `p.d.stg` WHERE `id` IS NOT NULL \
             QUALIFY ROW_NUMBER() OVER (PARTITION BY `id` ORDER BY `v` DESC) = 1) S \
             ON T.`id` = S.`id` WHEN MATCHED THEN UPDATE SET `v` = S.`v` \
             WHEN NOT MATCHED THEN INSERT (`id`, `v`) VALUES (S.`id`, S.`v`)"
        );
        let keys_only = MergeRequest {
            columns: vec!["id".into()],
            ..request.clone()
        };
        assert!(
            !merge_statement(&keys_only, |name| name.to_string())
                .unwrap()
                .contains("WHEN MATCHED")
        );
        let no_keys = MergeRequest {
            keys: vec![],
            ..request
        };
        assert!(merge_statement(&no_keys, |name| name.to_string()).is_err());
    }

    #[tokio::test]
    async fn get_tables_keeps_order_and_a_bounded_number_in_flight() {
        let fake = FakeWarehouse::with_dataset();
        for name in ["a", "c"] {
            fake.insert_table(
                WarehouseTable {
                    description: None,
                    name: name.into(),
                    fields: vec![WarehouseField::new(
                        "id",
                        BqType::Int64,
                        FieldMode::Required,
                    )],
                    partitioning: None,
                    clustering: Vec::new(),
                },
                Vec::new(),
            );
        }
        fake.set_label("a", MANAGED_BY_LABEL.0, MANAGED_BY_LABEL.1);
        fake.slow_get_table(Duration::from_millis(5));
        let mut names: Vec<String> = (0..60).map(|index| format!("missing{index}")).collect();
        names.insert(7, "a".into());
        names.push("c".into());
        let got = fake.get_tables(&names).await.unwrap();
        assert_eq!(got.len(), names.len());
        assert_eq!(
            got[7].as_ref().map(|table| table.table.name.as_str()),
            Some("a")
        );
        assert!(is_managed(&got[7].as_ref().unwrap().labels));
        assert_eq!(
            got[61].as_ref().map(|table| table.table.name.as_str()),
            Some("c")
        );
        assert!(!is_managed(&got[61].as_ref().unwrap().labels));
        assert_eq!(got.iter().filter(|table| table.is_some()).count(), 2);
        assert_eq!(fake.count("get_table"), names.len());
        // Overlapping calls, but never more than the bound.
        let peak = fake.peak_concurrent_get_tables();
        assert!(peak > 1 && peak <= GET_TABLES_CONCURRENCY, "peak {peak}");
    }

    #[tokio::test]
    async fn get_tables_bounded_paces_its_calls() {
        let fake = FakeWarehouse::with_dataset();
        let names: Vec<String> = (0..21).map(|index| format!("t{index}")).collect();
        let started = std::time::Instant::now();
        get_tables_bounded(&fake, &names, 16, Some(100))
            .await
            .unwrap();
        // 21 calls at most 100 a second: the last starts 200 ms after the first.
        assert!(
            started.elapsed() >= Duration::from_millis(195),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(fake.count("get_table"), 21);
    }

    #[tokio::test]
    async fn the_listing_carries_the_managed_by_label_of_created_tables() {
        let fake = FakeWarehouse::with_dataset();
        let table = |name: &str| WarehouseTable {
            description: None,
            name: name.into(),
            fields: vec![WarehouseField::new(
                "id",
                BqType::Int64,
                FieldMode::Required,
            )],
            partitioning: None,
            clustering: Vec::new(),
        };
        fake.create_table(&table("made")).await.unwrap();
        fake.insert_table(table("foreign"), Vec::new());
        fake.create_table_with(&table("_datasync_lock_made"), &TableMeta::default())
            .await
            .unwrap();
        let listed = fake.list_dataset().await.unwrap();
        let managed: Vec<(&str, bool)> = listed
            .iter()
            .map(|table| {
                (
                    table.name.as_str(),
                    is_managed(table.labels.as_ref().unwrap()),
                )
            })
            .collect();
        assert_eq!(
            managed,
            [
                ("_datasync_lock_made", false),
                ("foreign", false),
                ("made", true)
            ]
        );
        fake.drop_table("made").await.unwrap();
        assert_eq!(fake.list_dataset().await.unwrap().len(), 2);
        assert!(
            FakeWarehouse::new()
                .list_dataset()
                .await
                .unwrap_err()
                .is_not_found()
        );
    }

    #[test]
    fn retryable_errors() {
        let api = |status, reason: &str| WarehouseError::Api {
            context: "x".into(),
            status,
            reason: reason.into(),
            message: "m".into(),
        };
        assert!(api(429, "rateLimitExceeded").retryable());
        assert!(api(503, "backendError").retryable());
        assert!(api(403, "rateLimitExceeded").retryable());
        assert!(!api(400, "invalid").retryable());
        assert!(!api(404, "notFound").retryable());
        assert!(api(404, "notFound").is_not_found());
    }
}
