//! Apply: executes a [`Plan`], table by table, and reports what happened. It makes no decision
//! of its own: the steps come from the plan.
//!
//! Every load goes through a staging table, so the target is never partial:
//! 1. drop a leftover staging table;
//! 2. stream rows from the source into ONE resumable load job into `_datasync_staging_<target>`;
//! 3. check that BigQuery loaded exactly the rows extracted;
//! 4. run the plan's DDL steps (drop/create/alter) — only now, so a failed load changes nothing;
//! 5. write the target in one atomic statement: replace = `TRUNCATE` + `INSERT` in a transaction,
//!    append/incremental = `INSERT … SELECT`, merge = `MERGE` on the key;
//! 6. drop the staging table.
//!
//! A crash or Ctrl-C before step 4 leaves the target as it was; step 5 is atomic.

pub mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::manifest::raw::WriteMode;
use crate::mapping::{TableMapping, map_table};
use crate::plan::{FieldChange, Plan, Step, TablePlan};
use crate::source::{CursorFilter, ExtractStats, Source};
use crate::warehouse::{
    AlterColumn, Disposition, LoadRequest, MergeRequest, NdjsonWriter, Warehouse,
};
pub use report::{ApplyReport, TableOutcome, TableStatus};

/// Prefix of staging tables (followed by the target's name).
pub const STAGING_PREFIX: &str = "_datasync_staging_";

/// Whether rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    /// Extract and encode only; BigQuery is not touched.
    Yes,
    /// Write.
    No,
}

/// Receives progress: `(table label, rows so far)`.
pub type Progress = Arc<dyn Fn(&str, u64) + Send + Sync>;

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

/// A failure of one table, with what is known about it.
struct TableFailure {
    message: String,
    stats: Option<ExtractStats>,
}

impl<E: std::fmt::Display> From<E> for TableFailure {
    fn from(error: E) -> Self {
        Self {
            message: error.to_string(),
            stats: None,
        }
    }
}

impl Executor {
    /// Runs every runnable table of `plan` (at most `parallelism` at once) and reports each one,
    /// failed or not.
    pub async fn run(&self, plan: &Plan) -> ApplyReport {
        let started = Instant::now();
        let destination = plan.destination.clone();
        // One task per table (at most `parallelism` at once), so the CPU-bound encoding of
        // several tables uses several cores.
        let outcomes: Vec<TableOutcome> = futures::stream::iter(plan.tables.iter())
            .map(|table| {
                let executor = self.clone();
                let owned = table.clone();
                async move {
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
            destination,
            dry_run: self.dry_run == DryRun::Yes,
            tables: outcomes,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    async fn run_table(&self, table: &TablePlan) -> TableOutcome {
        let started = Instant::now();
        if !table.action.runs() {
            return TableOutcome::skipped(table, table.errors.join("; "));
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
            .ok_or("the plan has no source table")?;
        let mapping = map_table(source_table, &table.spec).map_err(|errors| errors.join("; "))?;
        let schema = table
            .target_schema
            .clone()
            .ok_or("the plan has no target schema")?;
        let source = self
            .sources
            .get(&table.spec.source)
            .ok_or_else(|| format!("source `{}` is not connected", table.spec.source))?;

        if self.dry_run == DryRun::Yes {
            let stats = self
                .extract_to_sink(source, table, source_table, &mapping)
                .await?;
            return Ok((stats, None));
        }

        let warehouse = &self.warehouse;
        let staging = format!("{STAGING_PREFIX}{}", table.target);
        warehouse.drop_table(&staging).await?;
        // The plan's DDL (create, alter, drop+create) waits until the new rows are verified in
        // staging: a failed load changes nothing at all in the target.
        let ddl = Ddl(table
            .steps
            .iter()
            .filter(|step| !matches!(step, Step::Load { .. }))
            .collect());
        let Some(Step::Load { mode, key, cursor }) = table
            .steps
            .iter()
            .find(|step| matches!(step, Step::Load { .. }))
        else {
            return Err(TableFailure::from("the plan has no load step"));
        };
        self.load(
            table,
            source,
            &mapping,
            &schema,
            &staging,
            *mode,
            key,
            cursor.as_deref(),
            &ddl,
        )
        .await
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; the arguments are the step's inputs"
    )]
    async fn load(
        &self,
        table: &TablePlan,
        source: &Arc<Source>,
        mapping: &TableMapping,
        schema: &crate::schema::WarehouseTable,
        staging: &str,
        mode: WriteMode,
        key: &[String],
        cursor: Option<&str>,
        ddl: &Ddl<'_>,
    ) -> Result<(ExtractStats, Option<u64>), TableFailure> {
        let warehouse = &self.warehouse;
        let cursor_added = cursor
            .and_then(|cursor| mapping.column(cursor))
            .is_some_and(|column| ddl.adds_column(&column.target));
        let filter = match (mode, cursor) {
            // A new or recreated table starts empty, and a cursor column that does not exist
            // yet has no maximum: every row is read.
            _ if ddl.creates() || cursor_added => None,
            (WriteMode::Incremental | WriteMode::Merge, Some(cursor)) => {
                incremental_filter(warehouse.as_ref(), &table.target, mapping, cursor, mode).await?
            }
            _ => None,
        };

        // Extraction feeds the upload through a bounded channel (memory stays bounded); the
        // first chunk is awaited before the upload starts, since an upload cannot be empty.
        let source_table = table
            .source_table
            .as_ref()
            .ok_or("the plan has no source table")?;
        let (sender, mut receiver) = mpsc::channel::<Bytes>(4);
        let progress = Arc::clone(&self.progress);
        let label = table.label.clone();
        let report = move |rows: u64| progress(&label, rows);
        let extract = source.extract(
            source_table,
            &mapping.columns,
            filter.as_ref(),
            ndjson_writer(source_table, mapping),
            sender,
            &report,
        );
        let request = LoadRequest {
            table: staging.to_string(),
            schema: crate::schema::WarehouseTable {
                name: staging.to_string(),
                ..schema.clone()
            },
            disposition: Disposition::Truncate,
            job_id: load_job_id(&self.run_id, &table.target),
            allow_field_addition: false,
        };
        let upload = async {
            let first = receiver.recv().await?;
            let (forward_sender, forward_receiver) = mpsc::channel::<Bytes>(4);
            let forward = async move {
                if forward_sender.send(first).await.is_err() {
                    return;
                }
                while let Some(chunk) = receiver.recv().await {
                    if forward_sender.send(chunk).await.is_err() {
                        return;
                    }
                }
            };
            let (loaded, ()) = tokio::join!(warehouse.load(&request, forward_receiver), forward);
            Some(loaded)
        };
        // If extraction fails, the upload is dropped unfinished: no load job ever starts.
        tokio::pin!(extract, upload);
        let mut extracted = None;
        let mut loaded = None;
        while extracted.is_none() || loaded.is_none() {
            tokio::select! {
                result = &mut extract, if extracted.is_none() => {
                    if let Err(error) = result {
                        return Err(TableFailure::from(format!("extraction failed (nothing was written): {error}")));
                    }
                    extracted = Some(result);
                }
                result = &mut upload, if loaded.is_none() => loaded = Some(result),
            }
        }
        let (Some(extracted), Some(loaded)) = (extracted, loaded) else {
            return Err(TableFailure::from(
                "internal error: extraction or upload did not finish",
            ));
        };
        let Some(loaded) = loaded else {
            let stats = extracted.map_err(|error| format!("extraction failed: {error}"))?;
            ddl.run(warehouse.as_ref(), &table.target, schema).await?;
            if mode == WriteMode::Replace && !ddl.creates() {
                // An empty source empties the target (one DML statement).
                warehouse.truncate(&table.target).await?;
            }
            return Ok((stats, Some(0)));
        };
        let stats = match extracted {
            Ok(stats) => stats,
            Err(error) => {
                let _ = warehouse.drop_table(staging).await;
                return Err(TableFailure::from(format!("extraction failed: {error}")));
            }
        };
        let outcome = match loaded {
            Ok(outcome) => outcome,
            Err(error) => {
                let _ = warehouse.drop_table(staging).await;
                return Err(TableFailure {
                    message: format!("load into staging failed: {error}"),
                    stats: Some(stats),
                });
            }
        };
        if outcome.output_rows != stats.rows {
            let _ = warehouse.drop_table(staging).await;
            return Err(TableFailure {
                message: format!(
                    "row count mismatch: extracted {} rows but BigQuery loaded {}; the target was not changed",
                    stats.rows, outcome.output_rows
                ),
                stats: Some(stats),
            });
        }
        let target_columns: Vec<String> = mapping
            .columns
            .iter()
            .map(|column| column.target.clone())
            .collect();
        // The new rows are verified in staging: now change the target's schema.
        if let Err(error) = ddl.run(warehouse.as_ref(), &table.target, schema).await {
            let _ = warehouse.drop_table(staging).await;
            return Err(TableFailure {
                message: format!("changing the target's schema failed: {error}"),
                stats: Some(stats),
            });
        }
        let write = match mode {
            WriteMode::Replace => {
                warehouse
                    .insert_from(staging, &table.target, &target_columns, true)
                    .await
            }
            WriteMode::Append | WriteMode::Incremental => {
                warehouse
                    .insert_from(staging, &table.target, &target_columns, false)
                    .await
            }
            WriteMode::Merge => {
                let keys: Vec<String> = key
                    .iter()
                    .map(|column| {
                        mapping
                            .column(column)
                            .map_or_else(|| column.clone(), |mapped| mapped.target.clone())
                    })
                    .collect();
                warehouse
                    .merge(&MergeRequest {
                        staging: staging.to_string(),
                        target: table.target.clone(),
                        keys,
                        columns: target_columns.clone(),
                    })
                    .await
                    .map(|_| ())
            }
        };
        let dropped = warehouse.drop_table(staging).await;
        if let Err(error) = write {
            return Err(TableFailure {
                message: format!("writing the target failed (it was not changed): {error}"),
                stats: Some(stats),
            });
        }
        if let Err(error) = dropped {
            tracing::warn!(table = %table.label, error = %error, "could not drop the staging table");
        }
        Ok((stats, Some(outcome.output_rows)))
    }

    async fn extract_to_sink(
        &self,
        source: &Arc<Source>,
        table: &TablePlan,
        source_table: &crate::schema::SourceTable,
        mapping: &TableMapping,
    ) -> Result<ExtractStats, TableFailure> {
        // A dry run encodes every row and drops the chunks; the statistics count the bytes.
        let (sender, mut receiver) = mpsc::channel::<Bytes>(4);
        let drain = tokio::spawn(async move { while receiver.recv().await.is_some() {} });
        let progress = Arc::clone(&self.progress);
        let label = table.label.clone();
        let report = move |rows: u64| progress(&label, rows);
        let stats = source
            .extract(
                source_table,
                &mapping.columns,
                None,
                ndjson_writer(source_table, mapping),
                sender,
                &report,
            )
            .await?;
        let _ = drain.await;
        Ok(stats)
    }
}

/// A table plan's DDL steps, in plan order, run once the new rows are verified in staging.
struct Ddl<'a>(Vec<&'a Step>);

impl Ddl<'_> {
    /// Whether the target is created (new, or dropped and created again).
    fn creates(&self) -> bool {
        self.0.iter().any(|step| matches!(step, Step::CreateTable))
    }

    /// Whether an alter adds the column `name`.
    fn adds_column(&self, name: &str) -> bool {
        self.0.iter().any(|step| match step {
            Step::AlterTable { changes } => changes.iter().any(
                |change| matches!(change, FieldChange::Add { field } if field.name.eq_ignore_ascii_case(name)),
            ),
            _ => false,
        })
    }

    async fn run(
        &self,
        warehouse: &dyn Warehouse,
        target: &str,
        schema: &crate::schema::WarehouseTable,
    ) -> Result<(), crate::warehouse::WarehouseError> {
        for step in &self.0 {
            match step {
                Step::DropTable => warehouse.drop_table(target).await?,
                Step::CreateTable => warehouse.create_table(schema).await?,
                Step::AlterTable { changes } => {
                    warehouse
                        .alter_table(target, &alter_changes(changes))
                        .await?;
                }
                Step::Load { .. } => {}
            }
        }
        Ok(())
    }
}

/// Aborts a table's task when the run is dropped (Ctrl-C, SIGTERM, timeout), so nothing keeps
/// writing behind the interruption's clean-up.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The filter of an incremental load: rows whose `cursor` (a source column) is greater than
/// the target's current maximum (`incremental`), or greater or equal (`merge`, which upserts,
/// so rows sharing the maximum are re-read harmlessly); `None` when the target is empty.
pub async fn incremental_filter(
    warehouse: &dyn Warehouse,
    target: &str,
    mapping: &TableMapping,
    cursor: &str,
    mode: WriteMode,
) -> Result<Option<CursorFilter>, String> {
    let column = mapping
        .column(cursor)
        .ok_or_else(|| format!("cursor column `{cursor}` is not synced"))?;
    let max = warehouse
        .max_value(target, &column.target)
        .await
        .map_err(|error| error.to_string())?;
    Ok(
        cursor_text(&max, column.field.bq_type).map(|value| CursorFilter {
            column: cursor.to_string(),
            value,
            inclusive: mode == WriteMode::Merge,
        }),
    )
}

/// The text form of a cursor maximum read back from BigQuery, as the source compares it.
/// TIMESTAMP cells come back as microseconds since the epoch.
fn cursor_text(max: &serde_json::Value, bq_type: crate::schema::BqType) -> Option<String> {
    let micros = match max {
        serde_json::Value::Number(number) => number.as_i64(),
        serde_json::Value::String(text) => text.parse::<i64>().ok(),
        _ => None,
    };
    match (max, micros) {
        (serde_json::Value::Null, _) => None,
        (_, Some(micros)) if bq_type == crate::schema::BqType::Timestamp => {
            let instant = chrono::DateTime::from_timestamp_micros(micros)?;
            Some(instant.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        }
        (serde_json::Value::String(text), _) => Some(text.clone()),
        (other, _) => Some(other.to_string()),
    }
}

fn sanitize_job_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The client-chosen id of a table's load job in a run: retries within the run reuse it (so
/// BigQuery runs the load at most once), and an interrupted run can cancel it.
pub fn load_job_id(run_id: &str, target: &str) -> String {
    format!("datasync_{run_id}_{}", sanitize_job_part(target))
}

/// A run id: time-based, job-id safe.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    format!("{}_{:06}", now.as_secs(), now.subsec_micros())
}

/// The NDJSON encoder for `mapping`'s columns, policies, bad-value budget, key and batch size.
fn ndjson_writer(
    source_table: &crate::schema::SourceTable,
    mapping: &TableMapping,
) -> NdjsonWriter {
    NdjsonWriter::new(
        source_table.label(),
        &mapping.columns,
        mapping.policies,
        mapping.max_parse_failures,
        &mapping.key_columns,
        mapping.batch_size,
    )
}
