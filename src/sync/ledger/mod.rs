//! The run ledger: one `_datasync_runs` table in the dataset, one row per table of every run
//! (run id, plan fingerprint, shard, table, mode, status, rows, the new watermark, job ids,
//! start, end, error), written **once per run** with one load job — never one write per table,
//! so a run of any number of tables uses one of the ledger table's 1,500 table operations a day
//! (<https://cloud.google.com/bigquery/quotas#load_jobs>).
//!
//! - Created on first use (tables.insert; a 409 from a concurrent creator is fine), appended
//!   with NDJSON (`WRITE_APPEND`, `ALLOW_FIELD_ADDITION` so later versions can add columns) and
//!   a client job id from the run id (`datasync-ledger_<run id>`: an interrupted run's second
//!   attempt can't land twice).
//! - Written after every table finished, also when some failed; by `Executor::abort` on an
//!   interrupt (best effort, within [`INTERRUPT_WRITE_TIMEOUT`]) with `interrupted` for every
//!   table that had not finished. A dry run writes nothing.
//! - Watermarks ([`watermark`]): the bound of an `incremental`/`merge` table comes from its
//!   target's latest `done` row (read once per run for every table), not from a billed
//!   `MAX(cursor)` scan of the target, unless the ledger has no usable entry. The new
//!   watermark is this run's maximum, computed while the rows are encoded, or the previous one
//!   when the run loaded no rows.
//! - A failure to write the ledger is a warning (the targets were written) that the report,
//!   the logs and the exit status carry.

pub mod jobs;
pub mod runs;
pub mod watermark;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::plan::{Bound, Extract, Plan, TablePlan};
use crate::schema::{BqType, FieldMode, LoadFormat, RowSink, WarehouseField, WarehouseTable};
use crate::source::CursorFilter;
use crate::sync::report::{ApplyReport, LedgerOutcome, TableOutcome, TableStatus};
use crate::warehouse::{Disposition, LoadRequest, Warehouse, WarehouseError};
use watermark::{CursorMax, CursorSink, Latest, greatest, read_latest};

/// The ledger table in the dataset.
pub const RUNS_TABLE: &str = "_datasync_runs";

/// How long an interrupted run tries to record itself.
pub const INTERRUPT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ledger's schema. Every column is NULLABLE (`job_ids` REPEATED), so a later version can
/// add columns without rewriting the table.
pub fn schema() -> WarehouseTable {
    let field = |name: &str, bq_type| WarehouseField::new(name, bq_type, FieldMode::Nullable);
    let text = |name: &str| field(name, BqType::String);
    WarehouseTable {
        description: None,
        name: RUNS_TABLE.to_string(),
        fields: vec![
            text("run_id"),
            text("plan_fingerprint"),
            text("shard"),
            text("table"),
            text("source"),
            text("target"),
            text("mode"),
            text("status"),
            field("rows_extracted", BqType::Int64),
            field("rows_loaded", BqType::Int64),
            field("rows_rejected", BqType::Int64),
            text("cursor_column"),
            text("watermark"),
            text("watermark_type"),
            text("target_modified"),
            WarehouseField::new("job_ids", BqType::String, FieldMode::Repeated),
            field("started_at", BqType::Timestamp),
            field("finished_at", BqType::Timestamp),
            text("error"),
            text("datasync_version"),
        ],
        partitioning: None,
        clustering: Vec::new(),
    }
}

/// The client job id of a run's ledger load. It can't be a table's (those start with
/// `datasync_`).
pub fn ledger_job_id(run_id: &str) -> String {
    format!("datasync-ledger_{run_id}")
}

/// One row of the ledger: one table of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerRow {
    /// The run.
    pub run_id: String,
    /// The applied plan's fingerprint.
    pub plan_fingerprint: Option<String>,
    /// `INDEX/COUNT` when the run was one shard of several.
    pub shard: Option<String>,
    /// `source.table`.
    pub table: String,
    /// The manifest name of the source.
    pub source: Option<String>,
    /// The target table.
    pub target: String,
    /// The write mode.
    pub mode: Option<String>,
    /// `done`, `failed`, `skipped` or `interrupted`.
    pub status: String,
    /// Rows read from the source.
    pub rows_extracted: Option<u64>,
    /// Rows BigQuery loaded into staging.
    pub rows_loaded: Option<u64>,
    /// Rows left out by bad values (they are in `_datasync_rejects`).
    pub rows_rejected: Option<u64>,
    /// The cursor's target column, when the run kept a watermark.
    pub cursor_column: Option<String>,
    /// The cursor's maximum in the target after the run (canonical text; see
    /// [`watermark::canonical`]).
    pub watermark: Option<String>,
    /// The cursor's BigQuery type.
    pub watermark_type: Option<String>,
    /// The target's `lastModifiedTime` right after the write.
    pub target_modified: Option<String>,
    /// The BigQuery jobs the table ran.
    pub job_ids: Vec<String>,
    /// When the table started.
    #[serde(serialize_with = "micros")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(serialize_with = "micros")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, was skipped or interrupted.
    pub error: Option<String>,
    /// The datasync version that ran it.
    pub datasync_version: Option<String>,
}

/// A TIMESTAMP as BigQuery's JSON loading reads it (at most microseconds).
fn micros<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serializer.serialize_str(&timestamp_text(*at)),
        None => serializer.serialize_none(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn timestamp_text(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A query cell as text (`None` for NULL).
pub(crate) fn cell_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// What a run noted about one table.
#[derive(Debug, Default)]
struct Notes {
    started_at: Option<DateTime<Utc>>,
    finished: Option<(TableOutcome, DateTime<Utc>)>,
    /// The bound's value as read (`Some(None)`: every row was read).
    bound: Option<Option<String>>,
    cursor: Option<Arc<Mutex<CursorMax>>>,
    jobs: Vec<String>,
    target_modified: Option<String>,
}

#[derive(Debug)]
struct RunState {
    latest: Arc<Latest>,
    started_at: DateTime<Utc>,
    /// By target.
    tables: HashMap<String, Notes>,
}

/// The ledger side of the runs of one executor: what each run (by run id) noted about its
/// tables until it writes its rows. Shared by the executor's clones.
#[derive(Debug, Default)]
pub struct RunLedger {
    shard: Option<String>,
    runs: Mutex<HashMap<String, RunState>>,
}

/// Whether a plan has a table whose bound needs a watermark.
fn needs_watermarks(plan: &Plan) -> bool {
    plan.tables.iter().any(|table| {
        table.action.runs()
            && table
                .extract()
                .is_some_and(|extract| matches!(extract.bound, Bound::AfterTargetMax { .. }))
    })
}

impl RunLedger {
    /// A ledger for runs of `shard` (`INDEX/COUNT`), if the run is one shard of several.
    pub fn new(shard: Option<String>) -> Self {
        Self {
            shard,
            runs: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunState>> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with_notes(&self, run_id: &str, target: &str, note: impl FnOnce(&mut Notes)) {
        if let Some(run) = self.lock().get_mut(run_id) {
            note(run.tables.entry(target.to_string()).or_default());
        }
    }

    /// Starts the run `run_id`: reads the ledger's latest rows once (`read`: the dataset exists
    /// and a table of the plan has a bounded extraction).
    pub async fn begin(&self, warehouse: &dyn Warehouse, plan: &Plan, run_id: &str, read: bool) {
        let latest = if read && needs_watermarks(plan) {
            read_latest(warehouse, &plan.destination).await
        } else {
            Latest::default()
        };
        self.lock().insert(
            run_id.to_string(),
            RunState {
                latest: Arc::new(latest),
                started_at: Utc::now(),
                tables: HashMap::new(),
            },
        );
    }

    /// Forgets the run `run_id` without writing anything (a dry run).
    pub fn forget(&self, run_id: &str) {
        self.lock().remove(run_id);
    }

    /// What the ledger said when the run began.
    pub fn latest(&self, run_id: &str) -> Arc<Latest> {
        self.lock()
            .get(run_id)
            .map(|run| Arc::clone(&run.latest))
            .unwrap_or_default()
    }

    /// A table started.
    pub fn table_started(&self, run_id: &str, target: &str) {
        self.with_notes(run_id, target, |notes| notes.started_at = Some(Utc::now()));
    }

    /// The bound's value this run read (`None`: every row).
    pub fn note_bound(&self, run_id: &str, target: &str, filter: Option<&CursorFilter>) {
        let value = filter.map(|filter| filter.value.clone());
        self.with_notes(run_id, target, |notes| notes.bound = Some(value));
    }

    /// `sink`, keeping the maximum of the table's cursor over the rows it writes.
    pub fn cursor_sink<S: RowSink>(
        &self,
        run_id: &str,
        target: &str,
        extract: &Extract,
        sink: S,
    ) -> CursorSink<S> {
        let mut shared = None;
        if matches!(extract.bound, Bound::AfterTargetMax { .. }) {
            self.with_notes(run_id, target, |notes| {
                shared = Some(Arc::clone(
                    notes.cursor.get_or_insert_with(Default::default),
                ));
            });
        }
        CursorSink::new(sink, extract, shared)
    }

    /// A job the table ran.
    pub fn note_job(&self, run_id: &str, target: &str, job_id: &str) {
        self.with_notes(run_id, target, |notes| notes.jobs.push(job_id.to_string()));
    }

    /// The target was written: its `lastModifiedTime` now (still under the lease) is what the
    /// next run compares before it trusts this run's watermark.
    pub async fn note_written(&self, warehouse: &dyn Warehouse, run_id: &str, target: &str) {
        let modified = match warehouse.get_table(target).await {
            Ok(table) => table.and_then(|table| table.last_modified),
            Err(error) => {
                tracing::warn!(target_table = %target, %error, "could not read the target after its write; the next run reads its bound from the target");
                None
            }
        };
        self.with_notes(run_id, target, |notes| notes.target_modified = modified);
    }

    /// A table ended.
    pub fn table_finished(&self, run_id: &str, target: &str, outcome: &TableOutcome) {
        self.with_notes(run_id, target, |notes| {
            notes.finished = Some((outcome.clone(), Utc::now()));
        });
    }

    /// Writes the run's rows (one per table of the plan, from `report`) in one load job and
    /// forgets the run. `None` when nothing is recorded (no table).
    pub async fn record(
        &self,
        warehouse: &dyn Warehouse,
        plan: &Plan,
        run_id: &str,
        report: &ApplyReport,
    ) -> Option<LedgerOutcome> {
        let state = self.lock().remove(run_id)?;
        let rows = self.rows(plan, run_id, &state, Some(report));
        if rows.is_empty() {
            return None;
        }
        let result = write_rows(warehouse, run_id, &rows, state.latest.exists).await;
        Some(outcome(plan, run_id, rows.len(), result))
    }

    /// An interrupted run's rows (tables that had not finished are `interrupted`), written
    /// within [`INTERRUPT_WRITE_TIMEOUT`]; failures are logged.
    pub async fn record_interrupted(&self, warehouse: &dyn Warehouse, plan: &Plan, run_id: &str) {
        let Some(state) = self.lock().remove(run_id) else {
            return;
        };
        let rows = self.rows(plan, run_id, &state, None);
        if rows.is_empty() {
            return;
        }
        let write = write_rows(warehouse, run_id, &rows, state.latest.exists);
        let result = match tokio::time::timeout(INTERRUPT_WRITE_TIMEOUT, write).await {
            Ok(result) => result,
            Err(_) => Err(WarehouseError::Invalid(format!(
                "gave up after {}",
                humantime::format_duration(INTERRUPT_WRITE_TIMEOUT)
            ))),
        };
        outcome(plan, run_id, rows.len(), result);
    }

    /// One row per table of the plan: its outcome from the report, else from what the run
    /// noted, else `interrupted`.
    fn rows(
        &self,
        plan: &Plan,
        run_id: &str,
        state: &RunState,
        report: Option<&ApplyReport>,
    ) -> Vec<LedgerRow> {
        let now = Utc::now();
        plan.tables
            .iter()
            .enumerate()
            .map(|(index, table)| {
                let notes = state.tables.get(&table.target);
                let outcome = report
                    .and_then(|report| report.tables.get(index))
                    .filter(|outcome| outcome.table == table.label)
                    .or_else(|| notes.and_then(|notes| notes.finished.as_ref().map(|(o, _)| o)));
                // A table that never started has no start; one that ended without starting
                // (skipped, or failed before it could) ended at the run's start.
                let started_at = notes
                    .and_then(|notes| notes.started_at)
                    .or(outcome.map(|_| state.started_at));
                let finished_at = notes
                    .and_then(|notes| notes.finished.as_ref().map(|(_, at)| *at))
                    .or(Some(now));
                let mut row = LedgerRow {
                    run_id: run_id.to_string(),
                    plan_fingerprint: Some(plan.fingerprint.clone()),
                    shard: self.shard.clone(),
                    table: table.label.clone(),
                    source: Some(table.source.clone()),
                    target: table.target.clone(),
                    mode: serde_json::to_value(table.mode)
                        .ok()
                        .and_then(|mode| mode.as_str().map(str::to_string)),
                    status: "interrupted".into(),
                    rows_extracted: None,
                    rows_loaded: None,
                    rows_rejected: None,
                    cursor_column: None,
                    watermark: None,
                    watermark_type: None,
                    target_modified: None,
                    job_ids: notes.map(|notes| notes.jobs.clone()).unwrap_or_default(),
                    started_at,
                    finished_at,
                    error: Some(
                        "the run was interrupted before this table finished; the target holds its old rows or, if its write had completed, the new ones".into(),
                    ),
                    datasync_version: Some(crate::plan::datasync_version().to_string()),
                };
                if let Some(outcome) = outcome {
                    fill_outcome(&mut row, table, outcome, notes);
                }
                row
            })
            .collect()
    }
}

/// A finished table's row: status, counts, error and (when done) the watermark.
fn fill_outcome(
    row: &mut LedgerRow,
    table: &TablePlan,
    outcome: &TableOutcome,
    notes: Option<&Notes>,
) {
    row.status = match outcome.status {
        TableStatus::Done => "done",
        TableStatus::Failed => "failed",
        TableStatus::Skipped => "skipped",
    }
    .into();
    row.error.clone_from(&outcome.error);
    if outcome.status == TableStatus::Skipped {
        return;
    }
    row.rows_extracted = Some(outcome.rows_extracted);
    row.rows_loaded = outcome.rows_loaded;
    row.rows_rejected = Some(outcome.rows_left_out);
    if outcome.status == TableStatus::Done
        && let Some(notes) = notes
    {
        row.target_modified.clone_from(&notes.target_modified);
        if let Some((column, value, bq_type)) = new_watermark(table, notes) {
            row.cursor_column = Some(column);
            row.watermark = value;
            row.watermark_type = Some(bq_type.as_str().to_string());
        }
    }
}

/// The target's cursor maximum after a done table: the greatest of the bound it read and the
/// greatest value it loaded (the previous watermark when it loaded none). `None` when it is not
/// known exactly (the table's bound reads every row, or a value could not be tracked): the next
/// run then reads its bound from the target.
fn new_watermark(table: &TablePlan, notes: &Notes) -> Option<(String, Option<String>, BqType)> {
    let Bound::AfterTargetMax {
        target_column,
        bq_type,
        ..
    } = &table.extract()?.bound
    else {
        return None;
    };
    let previous = notes.bound.clone()?;
    let cursor = notes.cursor.as_ref()?;
    let cursor = cursor
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if cursor.unsound {
        return None;
    }
    let value = greatest(previous, cursor.max.clone(), *bq_type);
    Some((target_column.clone(), value, *bq_type))
}

/// Creates the ledger table unless it is known to exist, then appends `rows` in one load job.
async fn write_rows(
    warehouse: &dyn Warehouse,
    run_id: &str,
    rows: &[LedgerRow],
    exists: bool,
) -> Result<(), WarehouseError> {
    if !exists {
        match warehouse.create_table(&schema()).await {
            Err(error) if !error.is_duplicate() => return Err(error),
            _ => {}
        }
    }
    let mut lines = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut lines, row)
            .map_err(|error| WarehouseError::Invalid(format!("encoding a ledger row: {error}")))?;
        lines.push(b'\n');
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(1);
    let _ = sender.send(Bytes::from(lines)).await;
    drop(sender);
    let request = LoadRequest {
        table: RUNS_TABLE.to_string(),
        schema: schema(),
        disposition: Disposition::Append,
        job_id: ledger_job_id(run_id),
        allow_field_addition: true,
        format: LoadFormat::Ndjson,
    };
    warehouse.load(&request, receiver).await.map(drop)
}

/// The report's view of a ledger write; a failure is logged as a warning.
fn outcome(
    plan: &Plan,
    run_id: &str,
    rows: usize,
    result: Result<(), WarehouseError>,
) -> LedgerOutcome {
    let table = format!("{}.{RUNS_TABLE}", plan.destination);
    let error = result.err().map(|error| error.to_string());
    match &error {
        Some(error) => tracing::warn!(
            run_id = %run_id,
            ledger = %table,
            %error,
            "the run was not recorded in the ledger; the targets were written as reported; the next run reads its bounds from the targets"
        ),
        None => tracing::info!(run_id = %run_id, ledger = %table, rows, "run recorded"),
    }
    LedgerOutcome {
        table,
        run_id: run_id.to_string(),
        rows: rows as u64,
        error,
    }
}

#[cfg(test)]
mod tests;
