//! The executor: runs a [`Plan`], table by table, and reports what happened. It decides
//! nothing: what to read (columns, codecs, bound, policies), the DDL and the write all come from
//! the plan's steps; only the bound's value (the target's cursor maximum) is read at run time.
//!
//! Every table goes through a staging table, so the target is never partial:
//! 1. [`Step::Stage`]: drop a leftover staging table, stream the rows into ONE resumable load
//!    job into `_datasync_staging_<target>`, check that BigQuery loaded exactly the rows
//!    extracted (an empty source stages an empty table);
//! 2. the DDL steps (drop/create/alter) — only now, so a failed load changes nothing;
//! 3. [`Step::Write`]: one atomic statement — replace = `TRUNCATE` + `INSERT` in a
//!    transaction, append = `INSERT … SELECT`, merge = `MERGE` on the key;
//! 4. drop the staging table.
//!
//! A crash or Ctrl-C before step 2 leaves the target as it was; step 3 is atomic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{DryRun, Progress, load_job_id, staging_table};
use crate::plan::{Bound, Extract, FieldChange, Plan, Step, TablePlan, WriteOp};
use crate::schema::{SourceTable, WarehouseTable};
use crate::source::{CursorFilter, ExtractStats, Source};
use crate::sync::report::{ApplyReport, TableOutcome};
use crate::warehouse::{
    AlterColumn, Disposition, LoadOutcome, LoadRequest, LoadSink, MergeRequest, Warehouse,
    WarehouseError, cursor_text,
};

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
    /// A run id that makes job ids unique per run (and deterministic within it).
    pub run_id: String,
}

/// A failure of one table, with what is known about it.
struct TableFailure {
    message: String,
    stats: Option<ExtractStats>,
}

impl TableFailure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            stats: None,
        }
    }

    fn with_stats(message: impl Into<String>, stats: ExtractStats) -> Self {
        Self {
            message: message.into(),
            stats: Some(stats),
        }
    }
}

/// The source filter of a bound: `None` reads every row (also when the target holds no
/// maximum yet). The value is read from the target now.
pub async fn read_bound(
    warehouse: &dyn Warehouse,
    target: &str,
    bound: &Bound,
) -> Result<Option<CursorFilter>, WarehouseError> {
    let Bound::AfterTargetMax {
        source_column,
        target_column,
        bq_type,
        inclusive,
    } = bound
    else {
        return Ok(None);
    };
    let max = warehouse.max_value(target, target_column).await?;
    Ok(cursor_text(&max, *bq_type).map(|value| CursorFilter {
        column: source_column.clone(),
        value,
        inclusive: *inclusive,
    }))
}

/// The row sink of an extraction: its format, columns, policies, bad-value budget, key and
/// batch size, all from the plan.
fn row_sink(source_table: &SourceTable, extract: &Extract) -> LoadSink {
    LoadSink::new(
        extract.format,
        source_table.label(),
        &extract.columns,
        extract.policies,
        extract.max_bad_values,
        &extract.key_columns,
        extract.batch_size,
    )
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
        // One task per table (at most `parallelism` at once), so the CPU-bound encoding of
        // several tables uses several cores.
        let outcomes: Vec<TableOutcome> = futures::stream::iter(plan.tables.iter())
            .map(|table| {
                let executor = self.clone();
                let owned = table.clone();
                let dataset_error = dataset_error.clone();
                async move {
                    if let Some(error) = dataset_error.filter(|_| table.action.runs()) {
                        return TableOutcome::failed(table, error, None, 0.0);
                    }
                    let mut task =
                        AbortOnDrop(tokio::spawn(
                            async move { executor.run_table(&owned).await },
                        ));
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
        ApplyReport {
            destination: plan.destination.clone(),
            dry_run: self.dry_run == DryRun::Yes,
            tables: outcomes,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// What an interrupted run (Ctrl-C, SIGTERM, timeout) cleans up: a running load only ever
    /// writes a staging table, so cancel the load jobs, then drop the staging tables.
    pub async fn abort(&self, plan: &Plan) {
        for table in plan.tables.iter().filter(|table| table.action.runs()) {
            let _ = self
                .warehouse
                .cancel_job(&load_job_id(&self.run_id, &table.target))
                .await;
            let _ = self
                .warehouse
                .drop_table(&staging_table(&table.target))
                .await;
        }
    }

    async fn run_table(&self, table: &TablePlan) -> TableOutcome {
        let started = Instant::now();
        if !table.action.runs() {
            return TableOutcome::skipped(
                table,
                crate::diagnostic::messages(&table.errors).join("; "),
            );
        }
        let result = self.execute(table).await;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok((stats, loaded)) => {
                tracing::info!(
                    table = %table.label,
                    target_table = %table.target,
                    rows = stats.rows,
                    bytes = stats.bytes,
                    bad_values = stats.bad_values,
                    seconds,
                    "table synced"
                );
                TableOutcome::done(table, &stats, loaded, seconds)
            }
            Err(failure) => {
                tracing::error!(table = %table.label, error = %failure.message, "table failed");
                TableOutcome::failed(table, failure.message, failure.stats.as_ref(), seconds)
            }
        }
    }

    async fn execute(
        &self,
        table: &TablePlan,
    ) -> Result<(ExtractStats, Option<u64>), TableFailure> {
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
        let filter = read_bound(self.warehouse.as_ref(), &table.target, &extract.bound)
            .await
            .map_err(|error| {
                TableFailure::new(format!(
                    "reading the target's cursor maximum failed: {error}"
                ))
            })?;
        if self.dry_run == DryRun::Yes {
            let stats = self
                .extract_to_drain(source, table, source_table, extract, filter.as_ref())
                .await?;
            return Ok((stats, None));
        }
        let staging = staging_table(&table.target);
        self.warehouse.drop_table(&staging).await.map_err(|error| {
            TableFailure::new(format!("dropping a leftover staging table failed: {error}"))
        })?;
        let (stats, outcome) = self
            .stage(table, source, source_table, extract, filter.as_ref())
            .await?;
        let result = self.finish(table, &stats).await;
        let dropped = self.warehouse.drop_table(&staging).await;
        result.map_err(|message| TableFailure::with_stats(message, stats.clone()))?;
        if let Err(error) = dropped {
            tracing::warn!(table = %table.label, error = %error, "could not drop the staging table");
        }
        Ok((stats, Some(outcome.output_rows)))
    }

    /// [`Step::Stage`]: extraction feeds the upload through a bounded channel (memory stays
    /// bounded); the first chunk is awaited before the upload starts. If extraction fails, the
    /// upload is dropped unfinished. On success the staging table holds exactly the rows
    /// extracted; on failure it is dropped.
    async fn stage(
        &self,
        table: &TablePlan,
        source: &Source,
        source_table: &SourceTable,
        extract: &Extract,
        filter: Option<&CursorFilter>,
    ) -> Result<(ExtractStats, LoadOutcome), TableFailure> {
        let warehouse = &self.warehouse;
        let staging = staging_table(&table.target);
        let (sender, mut receiver) = mpsc::channel::<Bytes>(4);
        let progress = Arc::clone(&self.progress);
        let label = table.label.clone();
        let report = move |rows: u64| progress(&label, rows);
        let extraction = source.extract(
            source_table,
            &extract.columns,
            filter,
            row_sink(source_table, extract),
            sender,
            &report,
        );
        let request = LoadRequest {
            table: staging.clone(),
            schema: WarehouseTable {
                name: staging.clone(),
                ..extract.load_schema.clone()
            },
            disposition: Disposition::Truncate,
            job_id: load_job_id(&self.run_id, &table.target),
            allow_field_addition: false,
            format: extract.format,
        };
        let upload = async {
            // `None`: an empty source (or a failed extraction): the load stages an empty table.
            let first = receiver.recv().await;
            let (forward_sender, forward_receiver) = mpsc::channel::<Bytes>(4);
            let forward = async move {
                let Some(first) = first else { return };
                if forward_sender.send(first).await.is_err() {
                    return;
                }
                while let Some(chunk) = receiver.recv().await {
                    if forward_sender.send(chunk).await.is_err() {
                        return;
                    }
                }
            };
            tokio::join!(warehouse.load(&request, forward_receiver), forward).0
        };
        tokio::pin!(extraction, upload);
        let mut extracted = None;
        let mut loaded = None;
        while extracted.is_none() || loaded.is_none() {
            tokio::select! {
                result = &mut extraction, if extracted.is_none() => {
                    if let Err(error) = result {
                        // A load that failed (e.g. could not start) closes the sink under the
                        // extraction: report the load's own error, not the closed sink.
                        let load_error = match loaded.take() {
                            Some(Err(error)) => Some(error),
                            _ => futures::FutureExt::now_or_never(&mut upload).and_then(Result::err),
                        };
                        let _ = warehouse.drop_table(&staging).await;
                        return Err(TableFailure::new(match load_error {
                            Some(load_error) => format!("load into staging failed: {load_error}"),
                            None => format!("extraction failed (nothing was written): {error}"),
                        }));
                    }
                    extracted = result.ok();
                }
                result = &mut upload, if loaded.is_none() => loaded = Some(result),
            }
        }
        let (Some(stats), Some(loaded)) = (extracted, loaded) else {
            return Err(TableFailure::new(
                "internal error: extraction or upload did not finish",
            ));
        };
        let outcome = match loaded {
            Ok(outcome) => outcome,
            Err(error) => {
                let _ = warehouse.drop_table(&staging).await;
                return Err(TableFailure::with_stats(
                    format!("load into staging failed: {error}"),
                    stats,
                ));
            }
        };
        if outcome.output_rows != stats.rows {
            let _ = warehouse.drop_table(&staging).await;
            return Err(TableFailure::with_stats(
                format!(
                    "row count mismatch: extracted {} rows but BigQuery loaded {}; the target was not changed",
                    stats.rows, outcome.output_rows
                ),
                stats,
            ));
        }
        Ok((stats, outcome))
    }

    /// The steps after [`Step::Stage`], on verified rows: the DDL, then the write.
    async fn finish(&self, table: &TablePlan, stats: &ExtractStats) -> Result<(), String> {
        let warehouse = self.warehouse.as_ref();
        let staging = staging_table(&table.target);
        let mut schema_changed = false;
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
                    write(warehouse, &staging, &table.target, op)
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
                }
            }
        }
        tracing::debug!(table = %table.label, rows = stats.rows, "target written");
        Ok(())
    }

    async fn extract_to_drain(
        &self,
        source: &Source,
        table: &TablePlan,
        source_table: &SourceTable,
        extract: &Extract,
        filter: Option<&CursorFilter>,
    ) -> Result<ExtractStats, TableFailure> {
        // A dry run encodes every row it would load and drops the chunks; the statistics count
        // the bytes.
        let (sender, mut receiver) = mpsc::channel::<Bytes>(4);
        let drain = tokio::spawn(async move { while receiver.recv().await.is_some() {} });
        let progress = Arc::clone(&self.progress);
        let label = table.label.clone();
        let report = move |rows: u64| progress(&label, rows);
        let stats = source
            .extract(
                source_table,
                &extract.columns,
                filter,
                row_sink(source_table, extract),
                sender,
                &report,
            )
            .await
            .map_err(|error| TableFailure::new(format!("extraction failed: {error}")))?;
        let _ = drain.await;
        Ok(stats)
    }
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
            warehouse.create_table(schema).await
        }
        Step::AlterTable { changes } => {
            warehouse
                .alter_table(&table.target, &alter_changes(changes))
                .await
        }
        Step::Stage(_) | Step::Write { .. } => Ok(()),
    }
}

/// [`Step::Write`]: one atomic statement from staging into the target.
async fn write(
    warehouse: &dyn Warehouse,
    staging: &str,
    target: &str,
    op: &WriteOp,
) -> Result<(), WarehouseError> {
    match op {
        WriteOp::Replace { columns } => warehouse.insert_from(staging, target, columns, true).await,
        WriteOp::Append { columns } => warehouse.insert_from(staging, target, columns, false).await,
        WriteOp::Merge { keys, columns } => warehouse
            .merge(&MergeRequest {
                staging: staging.to_string(),
                target: target.to_string(),
                keys: keys.clone(),
                columns: columns.clone(),
            })
            .await
            .map(|_| ()),
    }
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
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
