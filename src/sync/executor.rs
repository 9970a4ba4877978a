//! The executor: runs a [`Plan`], table by table, and reports what happened. It decides
//! nothing: what to read (columns, codecs, bound, policies), the DDL and the write all come from
//! the plan's steps; only the bound's value (the target's cursor maximum: the run ledger's
//! watermark, or the target's `MAX` where the ledger has none) is read at run time.
//!
//! Every table goes through a staging table, so the target is never partial:
//! 0. take the target's lease ([`super::lease`]): one run at a time per target;
//! 1. [`Step::Stage`]: create this run's staging table `_datasync_staging_<target>_<run id>`
//!    (the target's partitioning and clustering, an `expirationTime`), stream the rows into
//!    ONE resumable load job, check that BigQuery loaded exactly the rows extracted (an empty
//!    source stages an empty table);
//! 2. the DDL steps (create/alter) — only now, so a failed load changes nothing;
//! 3. [`Step::Write`]: one atomic job — replace = copy job `WRITE_TRUNCATE`, append = copy job
//!    `WRITE_APPEND` (both free: no query bytes), recreate = copy `WRITE_TRUNCATE` (schema and
//!    rows swap atomically; with a partitioning change via a backup), merge = `MERGE` on the
//!    key;
//! 4. [`Step::PatchTable`]: descriptions and clustering in place (one tables.patch, no job),
//!    after the write, whose copy saw staging and target clustered alike;
//! 5. drop the staging table, release the lease.
//!
//! Every job a table's run starts carries the run id and the target as labels
//! ([`labels::scope`]), and a table with lineage columns gets the run's values from its sink.
//!
//! After every table, the run is recorded in the ledger ([`super::ledger`]): one load job with
//! one row per table.
//!
//! A crash or Ctrl-C before step 2 leaves the target as it was; step 3 is atomic. A run first
//! drops leftovers of dead runs: staging and backup tables past their expiry, lock tables
//! whose lease expired.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::lease::{self, LeaseSettings};
use super::ledger::{RunLedger, watermark};
use super::{
    BACKUP_PREFIX, DryRun, KEYS_PREFIX, Progress, RunJobs, STAGING_PREFIX, StagingInfo,
    backup_table, keys_table, load_job_id, run_started_secs, staging_table,
};
use crate::plan::{Bound, Extract, FieldChange, MetadataChange, Plan, Step, TablePlan, WriteOp};
use crate::schema::{Lineage, Reject, SourceTable, WarehouseTable};
use crate::source::{CursorFilter, ExtractStats, Source};
use crate::sync::report::{ApplyReport, TableOutcome};
use crate::warehouse::labels::{self, JobLabels};
use crate::warehouse::{
    AlterColumn, CopyRequest, Disposition, LoadRequest, LoadSink, MergeRequest, TableMeta,
    TableUpdate, Warehouse, WarehouseError,
};

mod paths;
pub use paths::WriteNotes;

/// How a report words a failure after which BigQuery may have carried the request out
/// ([`WarehouseError::is_ambiguous`]).
const UNKNOWN_STATE: &str = "the target's state is unknown (BigQuery may have carried the request out before its reply was lost); run `datasync plan` to see it as it is";

/// Runs a plan. Cheap to clone: every table runs on its own task with a clone.
#[derive(Clone)]
pub struct Executor {
    /// Sources by manifest name.
    pub sources: HashMap<String, Arc<Source>>,
    /// The warehouse.
    pub warehouse: Arc<dyn Warehouse>,
    /// Tables at once.
    pub parallelism: usize,
    /// Dry run or not.
    pub dry_run: DryRun,
    /// Progress callback.
    pub progress: Progress,
    /// Receives each table's phase (extract, load, write, done or failed).
    pub phases: super::PhaseProgress,
    /// A run id that makes job ids and staging tables unique per run (and deterministic
    /// within it).
    pub run_id: String,
    /// Leases and expirations.
    pub settings: RunSettings,
    /// The run ledger: watermarks read once per run, the run's rows written once at its end.
    pub ledger: Arc<RunLedger>,
    /// The chunk jobs this run started and the killed runs it resumed (for [`Executor::abort`]).
    pub jobs: RunJobs,
}

/// How a run guards against overlapping and dead runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSettings {
    /// The lease per target.
    pub lease: LeaseSettings,
    /// How long a staging (or backup) table lives: its `expirationTime`, and the age after
    /// which a later run drops it as a dead run's leftover.
    pub staging_ttl: std::time::Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            lease: LeaseSettings::default(),
            staging_ttl: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

/// The table in the dataset that keeps the rows a bad value left out.
pub const REJECTS_TABLE: &str = "_datasync_rejects";

fn rejects_schema() -> WarehouseTable {
    use crate::schema::{BqType, FieldMode, WarehouseField};
    let text = |name: &str| WarehouseField::new(name, BqType::String, FieldMode::Nullable);
    WarehouseTable {
        name: REJECTS_TABLE.to_string(),
        fields: vec![
            text("run_id"),
            text("table"),
            text("target"),
            text("key"),
            text("column"),
            text("reason"),
            text("row"),
            WarehouseField::new("rejected_at", BqType::Timestamp, FieldMode::Nullable),
        ],
        partitioning: None,
        clustering: Vec::new(),
        description: None,
    }
}

/// The client-chosen id of a table's write (copy) job in a run; `step` tells the copies of a
/// recreate apart.
fn write_job_id(run_id: &str, target: &str, step: &str) -> String {
    format!("{}_{step}", load_job_id(run_id, target))
}

/// A failure of one table, with what is known about it.
pub(super) struct TableFailure {
    message: String,
    stats: Option<Box<ExtractStats>>,
}

impl TableFailure {
    pub(super) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            stats: None,
        }
    }

    pub(super) fn with_stats(message: impl Into<String>, stats: ExtractStats) -> Self {
        Self {
            message: message.into(),
            stats: Some(Box::new(stats)),
        }
    }
}

/// The source filter of a bound: `None` reads every row (also when the target is missing or
/// holds no maximum yet). The value is read now: the ledger's watermark in `latest` when it
/// still describes the target, else the target's `MAX` ([`watermark::read_bound`]).
pub async fn read_bound(
    warehouse: &dyn Warehouse,
    target: &str,
    bound: &Bound,
    latest: &watermark::Latest,
) -> Result<Option<CursorFilter>, WarehouseError> {
    Ok(watermark::read_bound(warehouse, target, bound, latest)
        .await?
        .and_then(|value| value.filter))
}

/// The row sink of an extraction: its format, columns, policies, bad-value budget, key and
/// batch size, all from the plan; with the plan's lineage columns, this run's values.
pub(super) fn row_sink(source_table: &SourceTable, extract: &Extract, run_id: &str) -> LoadSink {
    LoadSink::new(
        extract.format,
        source_table.label(),
        &extract.columns,
        extract.policies,
        extract.max_bad_values,
        &extract.key_columns,
        extract.batch_size,
    )
    .with_lineage(extract.lineage.then(|| lineage(run_id)).as_ref())
}

/// The lineage values of a run: its start, read from the run id (`new_run_id`, made when the
/// run starts, so every row and table of the run gets the same), and the id. A run id that
/// carries no time (hand-made, in tests) gets the current time.
fn lineage(run_id: &str) -> Lineage {
    let synced_at_micros = super::run_started_at(run_id)
        .unwrap_or_else(chrono::Utc::now)
        .timestamp_micros();
    Lineage {
        synced_at_micros,
        run_id: run_id.to_string(),
    }
}

impl Executor {
    /// Runs every runnable table of `plan` (at most `parallelism` at once) and reports each one,
    /// failed or not. The dataset is created first when the plan says so.
    pub async fn run(&self, plan: &Plan) -> ApplyReport {
        let started = Instant::now();
        let dataset_error = if plan.create_dataset && self.dry_run == DryRun::No {
            self.warehouse
                .ensure_dataset(true)
                .await
                .err()
                .map(|error| format!("cannot create the dataset `{}`: {error}", plan.destination))
        } else {
            None
        };
        if self.dry_run == DryRun::No && dataset_error.is_none() {
            self.drop_dead_leftovers().await;
        }
        let dataset_exists =
            dataset_error.is_none() && !(plan.create_dataset && self.dry_run == DryRun::Yes);
        self.ledger
            .begin(self.warehouse.as_ref(), plan, &self.run_id, dataset_exists)
            .await;
        let tables = self.noting_jobs(plan);
        // One task per table (at most `parallelism` at once), so the CPU-bound encoding of
        // several tables uses several cores.
        let outcomes: Vec<TableOutcome> = futures::stream::iter(plan.tables.iter())
            .map(|table| {
                let executor = tables.clone();
                let owned = table.clone();
                let dataset_error = dataset_error.clone();
                let fingerprint = plan.fingerprint.clone();
                async move {
                    if let Some(error) = dataset_error.filter(|_| table.action.runs()) {
                        return TableOutcome::failed(table, error, None, 0.0);
                    }
                    let mut task = AbortOnDrop(tokio::spawn(async move {
                        executor.run_table(&owned, &fingerprint).await
                    }));
                    (&mut task.0).await.unwrap_or_else(|error| {
                        TableOutcome::failed(
                            table,
                            format!("internal error: the table's task ended: {error}"),
                            None,
                            0.0,
                        )
                    })
                }
            })
            .buffered(self.parallelism.max(1))
            .collect()
            .await;
        let mut report = ApplyReport {
            destination: plan.destination.clone(),
            dry_run: self.dry_run == DryRun::Yes,
            tables: outcomes,
            seconds: started.elapsed().as_secs_f64(),
            ledger: None,
        };
        if self.dry_run == DryRun::No && dataset_error.is_none() {
            // The ledger's load is the run's job too (cost attribution).
            let ledger_labels = JobLabels::for_table(Some(&self.run_id), super::ledger::RUNS_TABLE);
            report.ledger = labels::scope(
                ledger_labels,
                self.ledger
                    .record(self.warehouse.as_ref(), plan, &self.run_id, &report),
            )
            .await;
        } else {
            self.ledger.forget(&self.run_id);
        }
        report
    }

    /// This executor with a warehouse that notes each table's jobs for the ledger.
    fn noting_jobs(&self, plan: &Plan) -> Self {
        let mut targets = HashMap::new();
        for table in &plan.tables {
            targets.insert(
                load_job_id(&self.run_id, &table.target),
                table.target.clone(),
            );
            for step in ["write", "backup", "restore", "keys"] {
                targets.insert(
                    write_job_id(&self.run_id, &table.target, step),
                    table.target.clone(),
                );
            }
        }
        let warehouse = super::ledger::jobs::JobLog::new(
            Arc::clone(&self.warehouse),
            Arc::clone(&self.ledger),
            &self.run_id,
            &plan.fingerprint,
            targets,
        );
        Self {
            warehouse: Arc::new(warehouse),
            ..self.clone()
        }
    }

    /// What an interrupted run (Ctrl-C, SIGTERM, timeout) cleans up: cancel every job the run
    /// started (load, copies; a copy is atomic, so the target is old or new), then drop the
    /// staging tables and release the leases. A recreate's backup is kept (it may hold the only
    /// copy of the old rows) until it expires. Last, the run is recorded in the ledger (best
    /// effort, briefly): tables that had not finished as `interrupted`.
    pub async fn abort(&self, plan: &Plan) {
        for job in self.jobs.jobs() {
            let _ = self.warehouse.cancel_job(&job).await;
        }
        let resumed = self.jobs.resumed();
        for table in plan.tables.iter().filter(|table| table.action.runs()) {
            let runs = std::iter::once(self.run_id.as_str()).chain(
                resumed
                    .iter()
                    .filter(|(target, _)| *target == table.target)
                    .map(|(_, run)| run.as_str()),
            );
            for run in runs {
                let mut jobs = vec![load_job_id(run, &table.target)];
                for step in ["keys", "write", "backup", "restore"] {
                    jobs.push(write_job_id(run, &table.target, step));
                }
                for job in jobs {
                    let _ = self.warehouse.cancel_job(&job).await;
                }
                let _ = self
                    .warehouse
                    .drop_table(&staging_table(&table.target, run))
                    .await;
            }
            if has_key_set(table) {
                let _ = self
                    .warehouse
                    .drop_table(&keys_table(&table.target, &self.run_id))
                    .await;
            }
            lease::release_lock(
                self.warehouse.as_ref(),
                &lease::lock_table(&table.target),
                &self.run_id,
            )
            .await;
        }
        if self.dry_run == DryRun::No {
            let ledger_labels = JobLabels::for_table(Some(&self.run_id), super::ledger::RUNS_TABLE);
            labels::scope(
                ledger_labels,
                self.ledger
                    .record_interrupted(self.warehouse.as_ref(), plan, &self.run_id),
            )
            .await;
        } else {
            self.ledger.forget(&self.run_id);
        }
    }

    /// Drops what dead runs left: staging, key-set and backup tables older than
    /// [`RunSettings::staging_ttl`] (BigQuery expires them too; the emulator does not), lock
    /// tables whose lease expired. Best effort: failures are logged.
    async fn drop_dead_leftovers(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| now.as_secs());
        let ttl = self.settings.staging_ttl.as_secs();
        for prefix in [
            STAGING_PREFIX,
            KEYS_PREFIX,
            BACKUP_PREFIX,
            lease::LOCK_PREFIX,
        ] {
            let names = match self.warehouse.list_tables(prefix).await {
                Ok(names) => names,
                Err(error) => {
                    tracing::warn!(%error, "could not list leftover tables");
                    return;
                }
            };
            for name in names {
                let dead = if prefix == lease::LOCK_PREFIX {
                    match self.warehouse.get_table(&name).await {
                        Ok(Some(lock)) => lease::is_expired(lock.description.as_deref()),
                        _ => false,
                    }
                } else {
                    run_started_secs(&name).is_some_and(|started| started + ttl <= now)
                };
                if dead {
                    tracing::info!(table = %name, "dropping a dead run's leftover");
                    if let Err(error) = self.warehouse.drop_table(&name).await {
                        tracing::warn!(table = %name, %error, "could not drop a leftover");
                    }
                }
            }
        }
    }

    async fn run_table(&self, table: &TablePlan, fingerprint: &str) -> TableOutcome {
        let outcome = self.run_table_logged(table, fingerprint).await;
        self.ledger
            .table_finished(&self.run_id, &table.target, &outcome);
        outcome
    }

    async fn run_table_logged(&self, table: &TablePlan, fingerprint: &str) -> TableOutcome {
        let started = Instant::now();
        if !table.action.runs() {
            return TableOutcome::skipped(
                table,
                crate::diagnostic::messages(&table.errors).join("; "),
            );
        }
        self.ledger.table_started(&self.run_id, &table.target);
        let job_id = load_job_id(&self.run_id, &table.target);
        tracing::info!(
            database = %table.source,
            table = %table.label,
            target_table = %table.target,
            run_id = %self.run_id,
            job_id = %job_id,
            "table started"
        );
        (self.phases)(&table.label, super::Phase::Extract);
        // Every job of the table carries the run and the target (cost attribution).
        let job_labels = JobLabels::for_table(Some(&self.run_id), &table.target);
        let result = labels::scope(job_labels, self.execute(table, fingerprint)).await;
        let phase = if result.is_ok() {
            super::Phase::Done
        } else {
            super::Phase::Failed
        };
        (self.phases)(&table.label, phase);
        let seconds = started.elapsed().as_secs_f64();
        let duration = format!("{seconds:.3}s");
        match result {
            Ok(TableRun {
                stats,
                loaded,
                notes,
                chunks,
                skipped,
            }) => {
                tracing::info!(
                    database = %table.source,
                    run_id = %self.run_id,
                    job_id = %job_id,
                    duration = %duration,
                    table = %table.label,
                    target_table = %table.target,
                    rows = stats.rows,
                    bytes = stats.bytes,
                    bad_values = stats.bad_values,
                    rows_rejected = stats.failed_rows,
                    rejects_table = REJECTS_TABLE,
                    duplicate_keys = notes.duplicate_keys,
                    rows_deleted = notes.deleted,
                    earlier_rows_kept = notes.kept_rows,
                    seconds,
                    "table synced"
                );
                TableOutcome::done(table, &stats, loaded, &notes, seconds)
                    .with_chunks(chunks, skipped)
            }
            Err(failure) => {
                tracing::error!(
                    database = %table.source,
                    table = %table.label,
                    target_table = %table.target,
                    run_id = %self.run_id,
                    job_id = %job_id,
                    duration = %duration,
                    error = %failure.message,
                    "table failed"
                );
                TableOutcome::failed(table, failure.message, failure.stats.as_deref(), seconds)
            }
        }
    }

    async fn execute(
        &self,
        table: &TablePlan,
        fingerprint: &str,
    ) -> Result<TableRun, TableFailure> {
        let source_table = table
            .source_table
            .as_ref()
            .ok_or_else(|| TableFailure::new("the plan has no source table"))?;
        let extract = table
            .extract()
            .ok_or_else(|| TableFailure::new("the plan has no stage step"))?;
        let source = self.sources.get(&table.source).ok_or_else(|| {
            TableFailure::new(format!("source `{}` is not connected", table.source))
        })?;
        if self.dry_run == DryRun::Yes {
            let filter = self.bound(table, extract).await?;
            let staged = self
                .drain_chunks(fingerprint, table, source, filter, extract)
                .await?;
            return Ok(TableRun {
                stats: staged.stats,
                loaded: None,
                notes: WriteNotes::default(),
                chunks: staged.chunks,
                skipped: 0,
            });
        }
        let lease = lease::acquire(
            Arc::clone(&self.warehouse),
            &table.target,
            &self.run_id,
            self.settings.lease,
        )
        .await
        .map_err(|error| TableFailure::new(error.to_string()))?;
        let result = self
            .execute_leased(fingerprint, table, source, source_table, extract)
            .await;
        if result.is_ok() {
            // Still under the lease: what the next run checks before it trusts the watermark.
            self.ledger
                .note_written(self.warehouse.as_ref(), &self.run_id, &table.target)
                .await;
        }
        lease.release().await;
        result
    }

    /// The source filter of the table's bound, read now.
    async fn bound(
        &self,
        table: &TablePlan,
        extract: &Extract,
    ) -> Result<Option<CursorFilter>, TableFailure> {
        let latest = self.ledger.latest(&self.run_id);
        let filter = read_bound(
            self.warehouse.as_ref(),
            &table.target,
            &extract.bound,
            &latest,
        )
        .await
        .map_err(|error| {
            TableFailure::new(format!(
                "reading the target's cursor maximum failed: {error}"
            ))
        })?;
        self.ledger
            .note_bound(&self.run_id, &table.target, filter.as_ref());
        Ok(filter)
    }

    /// Stage, DDL and write, under the target's lease: into this run's staging table, or into
    /// a killed run's of the same plan whose loaded chunks are kept (the DDL and the write then
    /// run under that run's id, so a write the killed run already did is not done twice: its
    /// copy job id exists). The chunks' rejects are recorded as each chunk loads
    /// ([`super::chunks`]).
    async fn execute_leased(
        &self,
        fingerprint: &str,
        table: &TablePlan,
        source: &Arc<Source>,
        source_table: &SourceTable,
        extract: &Extract,
    ) -> Result<TableRun, TableFailure> {
        let filter = self.bound(table, extract).await?;
        let run = self.staging_run(fingerprint, table, extract).await?;
        if run.skipped > 0 {
            tracing::info!(
                table = %table.label,
                resumed_run_id = %run.run_id,
                skipped = run.skipped,
                chunks = run.chunks,
                "resumed: skipped {} of {} chunks already loaded",
                run.skipped,
                run.chunks
            );
        }
        // The rows (and the ledger's notes, lineage values, labels) are this run's; the DDL and
        // the write keep the staging run's ids.
        let writer = Self {
            run_id: run.run_id.clone(),
            ..self.clone()
        };
        let staged = self.stage_chunks(table, source, filter, &run).await;
        let staged = match staged {
            Ok(staged) => {
                match writer
                    .prepare_write(table, source, source_table, &staged.stats)
                    .await
                {
                    Ok(notes) => Ok((staged, notes)),
                    Err(message) => Err(TableFailure::with_stats(message, staged.stats)),
                }
            }
            Err(failure) => Err(failure),
        };
        let result = match staged {
            Ok((staged, mut notes)) => match writer.finish(table, &staged.stats).await {
                Ok(deleted) => {
                    notes.deleted = deleted;
                    Ok(TableRun {
                        stats: staged.stats,
                        loaded: staged.loaded,
                        notes,
                        chunks: staged.chunks,
                        skipped: staged.skipped,
                    })
                }
                Err(message) => Err(TableFailure::with_stats(message, staged.stats)),
            },
            Err(failure) => Err(failure),
        };
        if let Err(error) = self.warehouse.drop_table(&run.staging).await {
            tracing::warn!(table = %table.label, error = %error, "could not drop the staging table");
        }
        if has_key_set(table)
            && let Err(error) = self
                .warehouse
                .drop_table(&keys_table(&table.target, &writer.run_id))
                .await
        {
            tracing::warn!(table = %table.label, error = %error, "could not drop the key-set table");
        }
        result
    }

    /// Rows a value failed go to [`REJECTS_TABLE`] before the target is written (one load job
    /// per table, appending): if they can't be recorded, the table fails and nothing changes.
    pub(super) async fn write_rejects(
        &self,
        label: &str,
        target: &str,
        rejects: &[Reject],
        job_id: &str,
    ) -> Result<(), String> {
        if rejects.is_empty() {
            return Ok(());
        }
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut lines = Vec::new();
        for reject in rejects {
            let line = serde_json::json!({
                "run_id": self.run_id,
                "table": label,
                "target": target,
                "key": reject.key,
                "column": reject.column,
                "reason": reject.reason,
                "row": reject.row,
                "rejected_at": at,
            });
            lines.extend_from_slice(line.to_string().as_bytes());
            lines.push(b'\n');
        }
        let (sender, receiver) = mpsc::channel::<Bytes>(1);
        let _ = sender.send(Bytes::from(lines)).await;
        drop(sender);
        let request = LoadRequest {
            table: REJECTS_TABLE.to_string(),
            schema: rejects_schema(),
            disposition: Disposition::Append,
            job_id: job_id.to_string(),
            allow_field_addition: false,
            format: crate::schema::LoadFormat::Ndjson,
        };
        self.warehouse
            .load(&request, receiver)
            .await
            .map(drop)
            .map_err(|error| {
                format!(
                    "recording {} rejected row(s) in `{REJECTS_TABLE}` failed, so the target was not written: {error}",
                    rejects.len()
                )
            })
    }

    /// This run's staging table: the load schema (the target's partitioning and clustering, so
    /// a copy into the target is valid) and an `expirationTime`, so a dead run's staging table
    /// is not permanent.
    pub(super) async fn create_staging(
        &self,
        staging: &str,
        extract: &Extract,
        info: &StagingInfo,
    ) -> Result<(), TableFailure> {
        let expires = chrono::Utc::now()
            + chrono::Duration::from_std(self.settings.staging_ttl)
                .unwrap_or(chrono::Duration::MAX);
        // The target's description as it will be: a copy that takes the source's metadata
        // gives the target the right one.
        let meta = TableMeta {
            expires_at_ms: Some(expires.timestamp_millis()),
            // What a rerun of the same plan finds it by (resume, [`super::chunks`]).
            description: Some(info.description()),
        };
        let schema = WarehouseTable {
            name: staging.to_string(),
            ..extract.load_schema.clone()
        };
        self.warehouse
            .create_table_with(&schema, &meta)
            .await
            .map_err(|error| {
                TableFailure::new(format!("creating the staging table failed: {error}"))
            })
    }

    /// The steps after [`Step::Stage`], on verified rows: the DDL, then the write; the rows a
    /// merge deleted when BigQuery says.
    async fn finish(&self, table: &TablePlan, stats: &ExtractStats) -> Result<Option<u64>, String> {
        (self.phases)(&table.label, super::Phase::Write);
        let warehouse = self.warehouse.as_ref();
        let staging = staging_table(&table.target, &self.run_id);
        let mut schema_changed = false;
        let mut deleted = None;
        for step in &table.steps {
            match step {
                Step::Stage(_) => {}
                Step::DropTable | Step::CreateTable | Step::AlterTable { .. } => {
                    run_ddl(warehouse, table, step).await.map_err(|error| {
                        if error.is_ambiguous() {
                            format!("changing the target's schema failed; {UNKNOWN_STATE}: {error}")
                        } else if schema_changed {
                            format!("changing the target's schema failed after an earlier step had changed it: {error}")
                        } else {
                            format!("changing the target's schema failed (it was not changed): {error}")
                        }
                    })?;
                    schema_changed = true;
                }
                Step::Write { op } => {
                    deleted = self
                        .write(&staging, &table.target, op)
                        .await
                        .map_err(|error| {
                            if error.is_ambiguous() {
                                format!("writing the target failed; {UNKNOWN_STATE}: {error}")
                            } else if schema_changed {
                                format!("writing the target failed after its schema was changed (its rows were not written): {error}")
                            } else {
                                format!("writing the target failed (it was not changed): {error}")
                            }
                        })?;
                    if matches!(op, WriteOp::Replace { .. } | WriteOp::Recreate { .. }) {
                        self.restore_description(table).await;
                    }
                }
                Step::PatchTable { changes } => {
                    patch_metadata(warehouse, &table.target, changes).await?;
                }
            }
        }
        tracing::debug!(table = %table.label, rows = stats.rows, "target written");
        Ok(deleted)
    }

    /// A `WRITE_TRUNCATE` copy may take the source table's metadata along: BigQuery documents
    /// that it replaces the schema (<https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#jobconfigurationtablecopy>)
    /// and not what happens to the description. Staging's description is its resume marker
    /// ([`StagingInfo`]); if the target now shows it, the description it should have is put
    /// back (one tables.get, free; a tables.patch only then). Best effort: logged.
    async fn restore_description(&self, table: &TablePlan) {
        let Ok(Some(existing)) = self.warehouse.get_table(&table.target).await else {
            return;
        };
        if existing
            .description
            .as_deref()
            .and_then(StagingInfo::parse)
            .is_none()
        {
            return;
        }
        let wanted = table
            .target_schema
            .as_ref()
            .and_then(|schema| schema.description.clone())
            .or_else(|| {
                table
                    .existing
                    .as_ref()
                    .and_then(|schema| schema.description.clone())
            });
        let update = TableUpdate {
            description: Some(wanted.unwrap_or_default()),
            column_descriptions: Vec::new(),
            clustering: None,
        };
        if let Err(error) = self.warehouse.update_table(&table.target, &update).await {
            tracing::warn!(table = %table.label, %error, "could not restore the target's description after the copy");
        }
    }

    /// [`Step::Write`]: one atomic job from staging into the target; a merge's deleted rows when
    /// BigQuery reports them.
    async fn write(
        &self,
        staging: &str,
        target: &str,
        op: &WriteOp,
    ) -> Result<Option<u64>, WarehouseError> {
        let copy = |source: &str, into: &str, disposition, step: &str| CopyRequest {
            source: source.to_string(),
            target: into.to_string(),
            disposition,
            job_id: write_job_id(&self.run_id, target, step),
        };
        let warehouse = self.warehouse.as_ref();
        match op {
            WriteOp::Replace { .. } | WriteOp::Recreate { backup: false, .. } => warehouse
                .copy_table(&copy(staging, target, Disposition::Truncate, "write"))
                .await
                .map(|()| None),
            WriteOp::Append { .. } => warehouse
                .copy_table(&copy(staging, target, Disposition::Append, "write"))
                .await
                .map(|()| None),
            WriteOp::Recreate { backup: true, .. } => {
                let backup = backup_table(target, &self.run_id);
                warehouse
                    .copy_table(&copy(target, &backup, Disposition::Truncate, "backup"))
                    .await?;
                warehouse.drop_table(target).await?;
                if let Err(error) = warehouse
                    .copy_table(&copy(staging, target, Disposition::Truncate, "write"))
                    .await
                {
                    // Put the old table back; if that fails too, the backup stays.
                    let restored = warehouse
                        .copy_table(&copy(&backup, target, Disposition::Truncate, "restore"))
                        .await;
                    return Err(match restored {
                        Ok(()) => {
                            let _ = warehouse.drop_table(&backup).await;
                            WarehouseError::Invalid(format!(
                                "{error}; the old table was restored from its backup"
                            ))
                        }
                        // The target may be missing: an ambiguous outcome, with the backup named.
                        Err(restore) => WarehouseError::Protocol {
                            context: format!("recreate {target}"),
                            message: format!(
                                "{error}; restoring the old table failed ({restore}): its rows are in `{backup}` until it expires"
                            ),
                        },
                    });
                }
                if let Err(error) = warehouse.drop_table(&backup).await {
                    tracing::warn!(table = %backup, %error, "could not drop the backup");
                }
                Ok(None)
            }
            WriteOp::Merge {
                keys,
                columns,
                cursor,
                deletes,
                key_set,
            } => warehouse
                .merge(&MergeRequest {
                    staging: staging.to_string(),
                    target: target.to_string(),
                    keys: keys.clone(),
                    columns: columns.clone(),
                    order_by: cursor.clone(),
                    job_id: Some(write_job_id(&self.run_id, target, "write")),
                    deletes: *deletes,
                    keys_table: key_set.as_ref().map(|_| keys_table(target, &self.run_id)),
                })
                .await
                .map(|outcome| outcome.deleted),
        }
    }
}

/// What a table's run produced: its extraction, the rows BigQuery loaded (`None` in a dry
/// run), what the write paths found.
/// What ran of one table: its statistics, the rows BigQuery loaded, what the write noted, its
/// chunks.
struct TableRun {
    stats: ExtractStats,
    loaded: Option<u64>,
    notes: WriteNotes,
    chunks: usize,
    skipped: usize,
}

/// Whether the table's write stages the source's key set (a merge with `deletes`).
fn has_key_set(table: &TablePlan) -> bool {
    matches!(
        table.write_op(),
        Some(WriteOp::Merge {
            key_set: Some(_),
            ..
        })
    )
}

/// One DDL step on the target.
async fn run_ddl(
    warehouse: &dyn Warehouse,
    table: &TablePlan,
    step: &Step,
) -> Result<(), WarehouseError> {
    match step {
        Step::DropTable => warehouse.drop_table(&table.target).await,
        Step::CreateTable => {
            let schema = table
                .target_schema
                .as_ref()
                .ok_or_else(|| WarehouseError::Invalid("the plan has no target schema".into()))?;
            match warehouse.create_table(schema).await {
                // An overlapping run created it while this one waited for the lease: fine
                // when it is the table this plan would create.
                Err(error) if error.is_duplicate() => {
                    match warehouse.get_table(&schema.name).await? {
                        Some(existing) if existing.table == *schema => Ok(()),
                        _ => Err(error),
                    }
                }
                other => other,
            }
        }
        Step::AlterTable { changes } => {
            warehouse
                .alter_table(&table.target, &alter_changes(changes))
                .await
        }
        Step::Stage(_) | Step::Write { .. } | Step::PatchTable { .. } => Ok(()),
    }
}

/// [`Step::PatchTable`], after the write: the target's descriptions and clustering in place.
/// Its rows are written by then, and a failure says so.
async fn patch_metadata(
    warehouse: &dyn Warehouse,
    target: &str,
    changes: &[MetadataChange],
) -> Result<(), String> {
    warehouse
        .update_table(target, &table_update(changes))
        .await
        .map_err(|error| {
            format!(
                "the rows were written, but updating the target's descriptions or clustering failed: {error}; `datasync plan` shows what is left to change"
            )
        })
}

fn table_update(changes: &[MetadataChange]) -> TableUpdate {
    let mut update = TableUpdate::default();
    for change in changes {
        match change {
            MetadataChange::Description { to, .. } => update.description = Some(to.clone()),
            MetadataChange::ColumnDescription { column, to, .. } => update
                .column_descriptions
                .push((column.clone(), to.clone())),
            MetadataChange::Clustering { to, .. } => update.clustering = Some(to.clone()),
        }
    }
    update
}

fn alter_changes(changes: &[FieldChange]) -> Vec<AlterColumn> {
    changes
        .iter()
        .filter_map(|change| match change {
            FieldChange::Add { field } => Some(AlterColumn::Add(field.clone())),
            FieldChange::Relax { name } => Some(AlterColumn::DropNotNull(name.clone())),
            FieldChange::Widen { to, .. } => Some(AlterColumn::SetType(to.clone())),
            FieldChange::Incompatible { .. } | FieldChange::Dropped { .. } => None,
        })
        .collect()
}

/// Aborts a table's task when the run is dropped (Ctrl-C, SIGTERM, timeout), so nothing keeps
/// writing behind the interruption's clean-up.
pub(super) struct AbortOnDrop<T>(pub(super) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
