//! `plan` and `apply`: connect to the sources and BigQuery, build the plan, execute it.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use crate::apply::{DryRun, Executor, Progress};
use crate::manifest::Manifest;
use crate::mapping::map_table;
use crate::plan::{Plan, TableInput, plan_table};
use crate::source::Source;
use crate::warehouse::{BigQuery, Warehouse};

/// Connected sources and warehouse.
pub(super) struct Connections {
    pub(super) sources: HashMap<String, Arc<Source>>,
    pub(super) source_errors: HashMap<String, String>,
    pub(super) warehouse: Arc<dyn Warehouse>,
}

/// Connects to every source that has an enabled table, and to BigQuery.
pub(super) async fn connect(manifest: &Manifest) -> Result<Connections, String> {
    let warehouse: Arc<dyn Warehouse> =
        Arc::new(BigQuery::new(&manifest.bigquery).map_err(|error| format!("BigQuery: {error}"))?);
    let mut sources = HashMap::new();
    let mut source_errors = HashMap::new();
    for source in &manifest.sources {
        if !manifest
            .tables
            .iter()
            .any(|table| table.enabled && table.source == source.name)
        {
            continue;
        }
        match Source::connect(source).await {
            Ok(connected) => {
                sources.insert(source.name.clone(), Arc::new(connected));
            }
            Err(error) => {
                source_errors.insert(
                    source.name.clone(),
                    format!("cannot connect to source `{}`: {error}", source.name),
                );
            }
        }
    }
    Ok(Connections {
        sources,
        source_errors,
        warehouse,
    })
}

/// Builds the plan: introspects every enabled table and its target.
pub(super) async fn build_plan(
    manifest: &Manifest,
    connections: &Connections,
) -> Result<Plan, String> {
    let dataset_ok = match connections.warehouse.ensure_dataset(false).await {
        Ok(()) => true,
        Err(error)
            if (error.is_not_found()
                || matches!(
                    error,
                    crate::warehouse::WarehouseError::DatasetMissing { .. }
                ))
                && manifest.bigquery.create_dataset =>
        {
            false
        }
        Err(error) => {
            return Err(format!(
                "dataset `{}.{}`: {error}",
                manifest.bigquery.project, manifest.bigquery.dataset
            ));
        }
    };
    let mut tables = Vec::new();
    for spec in manifest.tables.iter().filter(|table| table.enabled) {
        let mut source = match connections.sources.get(&spec.source) {
            Some(source) => source
                .describe(spec.qualifier.as_deref(), &spec.name)
                .await
                .map_err(|error| error.to_string()),
            None => Err(connections
                .source_errors
                .get(&spec.source)
                .cloned()
                .unwrap_or_else(|| "source not connected".into())),
        };
        let existing = if dataset_ok {
            connections
                .warehouse
                .get_table(&spec.target)
                .await
                .map_err(|error| format!("target `{}`: {error}", spec.target))?
        } else {
            None
        };
        let (desired, mapping_warnings) = match &mut source {
            Ok(table) => match map_table(table, spec) {
                Ok(mapping) => {
                    table.estimated_rows =
                        rows_to_move(connections, spec, table, &mapping, existing.is_some()).await;
                    (Ok(mapping.table), mapping.warnings)
                }
                Err(errors) => (Err(errors), Vec::new()),
            },
            Err(_) => (Err(Vec::new()), Vec::new()),
        };
        tables.push(plan_table(TableInput {
            spec: spec.clone(),
            source,
            desired,
            mapping_warnings,
            existing_rows: existing.as_ref().and_then(|table| table.num_rows),
            existing: existing.map(|table| table.table),
        }));
    }
    Ok(Plan::new(
        format!(
            "{}.{}",
            manifest.bigquery.project, manifest.bigquery.dataset
        ),
        tables,
    ))
}

/// Rows the table's load will move: the catalog estimate, or an exact count when the catalog
/// has none; for `incremental` (and `merge` with a `cursor`) into an existing target, the rows
/// past its cursor maximum.
async fn rows_to_move(
    connections: &Connections,
    spec: &crate::manifest::TableSpec,
    table: &crate::schema::SourceTable,
    mapping: &crate::mapping::TableMapping,
    target_exists: bool,
) -> Option<u64> {
    let source = connections.sources.get(&spec.source)?;
    if matches!(
        spec.mode,
        crate::manifest::raw::WriteMode::Incremental | crate::manifest::raw::WriteMode::Merge
    ) && target_exists
        && let Some(cursor) = &spec.cursor
    {
        let warehouse = connections.warehouse.as_ref();
        let filter =
            crate::apply::incremental_filter(warehouse, &spec.target, mapping, cursor, spec.mode)
                .await
                .ok()?;
        return source
            .count_rows(table, &mapping.columns, filter.as_ref())
            .await
            .ok();
    }
    match table.estimated_rows {
        Some(rows) => Some(rows),
        // Catalog estimates are missing for never-analyzed tables: count instead.
        None => source.count_rows(table, &mapping.columns, None).await.ok(),
    }
}

/// Differences between a saved plan and the world now, if any.
pub(super) fn stale_tables(saved: &Plan, fresh: &Plan) -> Vec<String> {
    let mut stale = Vec::new();
    if saved.destination != fresh.destination {
        stale.push(format!(
            "the destination changed from bq://{} to bq://{}",
            saved.destination, fresh.destination
        ));
    }
    for table in &saved.tables {
        match fresh
            .tables
            .iter()
            .find(|candidate| candidate.label == table.label)
        {
            None => stale.push(format!("{}: no longer in the manifest", table.label)),
            Some(now) => {
                if now.spec != table.spec {
                    stale.push(format!("{}: its manifest entry changed", table.label));
                }
                if now.source_fingerprint != table.source_fingerprint {
                    stale.push(format!("{}: the source table changed", table.label));
                }
                if now.target_fingerprint != table.target_fingerprint {
                    stale.push(format!(
                        "{}: the BigQuery table `{}` changed",
                        table.label, table.target
                    ));
                }
            }
        }
    }
    for table in &fresh.tables {
        if !saved
            .tables
            .iter()
            .any(|candidate| candidate.label == table.label)
        {
            stale.push(format!("{}: new in the manifest", table.label));
        }
    }
    stale
}

/// Progress: bars on a terminal, a log line per batch otherwise.
pub(super) fn progress(tables: &[String]) -> (Progress, Option<indicatif::MultiProgress>) {
    if std::io::stderr().is_terminal() {
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} {prefix:30} {human_pos:>12} rows  {per_sec:>14}  {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        let bars: HashMap<String, indicatif::ProgressBar> = tables
            .iter()
            .map(|label| {
                let bar = multi.add(indicatif::ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(label.clone());
                bar.enable_steady_tick(std::time::Duration::from_millis(200));
                (label.clone(), bar)
            })
            .collect();
        let bars = Arc::new(bars);
        let progress: Progress = Arc::new(move |label: &str, rows: u64| {
            if let Some(bar) = bars.get(label) {
                bar.set_position(rows);
            }
        });
        (progress, Some(multi))
    } else {
        let last = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
        let progress: Progress = Arc::new(move |label: &str, rows: u64| {
            let mut last = last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let previous = last.entry(label.to_string()).or_insert(0);
            if rows >= *previous + 100_000 {
                *previous = rows;
                tracing::info!(table = label, rows, "extracting");
            }
        });
        (progress, None)
    }
}

/// Runs the executor.
pub(super) async fn execute(
    manifest: &Manifest,
    connections: &Connections,
    plan: &Plan,
    dry_run: DryRun,
    run_id: &str,
) -> crate::apply::ApplyReport {
    let labels: Vec<String> = plan
        .tables
        .iter()
        .filter(|table| table.action.runs())
        .map(|table| table.label.clone())
        .collect();
    let (progress, multi) = progress(&labels);
    if dry_run == DryRun::No
        && manifest.bigquery.create_dataset
        && let Err(error) = connections.warehouse.ensure_dataset(true).await
    {
        tracing::error!(error = %error, "cannot create the dataset");
    }
    let executor = Executor {
        sources: connections.sources.clone(),
        warehouse: Arc::clone(&connections.warehouse),
        parallelism: usize::try_from(manifest.parallelism).unwrap_or(1),
        dry_run,
        progress,
        run_id: run_id.to_string(),
    };
    let report = executor.run(plan).await;
    if let Some(multi) = multi {
        let _ = multi.clear();
    }
    report
}
