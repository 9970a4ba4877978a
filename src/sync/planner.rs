//! The planner: introspects every enabled table and its target, maps it, and records every
//! decision in a [`Plan`] (see [`crate::plan::plan_table`]); then counts the rows each table
//! will move, with the same bound the executor will use.

use crate::diagnostic::{Code, Diagnostic, Location};
use crate::error::Error;
use crate::manifest::{Manifest, TableSpec};
use crate::mapping::map_table;
use crate::plan::{Plan, TableInput, TablePlan, WriteCost, WriteOp, plan_table};
use crate::source::Source;
use crate::warehouse::{MergeRequest, WarehouseError};

use super::Session;
use super::executor::read_bound;

/// Builds the plan of every enabled table of `manifest`.
pub async fn plan(manifest: &Manifest, session: &Session) -> Result<Plan, Error> {
    let create_dataset = dataset_missing(manifest, session).await?;
    let mut tables = Vec::new();
    for spec in manifest.tables.iter().filter(|table| table.enabled) {
        let mut table = plan_one(spec, session, create_dataset).await?;
        table.estimated_rows = rows_to_move(session, &table).await;
        estimate_write_cost(session, &mut table).await;
        tables.push(table);
    }
    Ok(Plan::new(
        format!(
            "{}.{}",
            manifest.bigquery.project, manifest.bigquery.dataset
        ),
        create_dataset,
        tables,
    ))
}

/// Whether the dataset is missing and will be created (`create_dataset`); an error when it is
/// missing and may not be created, or cannot be read.
async fn dataset_missing(manifest: &Manifest, session: &Session) -> Result<bool, Error> {
    match session.warehouse.ensure_dataset(false).await {
        Ok(()) => Ok(false),
        Err(error)
            if (error.is_not_found() || matches!(error, WarehouseError::DatasetMissing { .. }))
                && manifest.bigquery.create_dataset =>
        {
            Ok(true)
        }
        Err(source) => Err(Error::Planning {
            context: format!(
                "dataset `{}.{}`",
                manifest.bigquery.project, manifest.bigquery.dataset
            ),
            source: Box::new(source),
        }),
    }
}

/// Introspects, maps and plans one table.
async fn plan_one(
    spec: &TableSpec,
    session: &Session,
    dataset_missing: bool,
) -> Result<TablePlan, Error> {
    let source = match session.sources.get(&spec.source) {
        Some(source) => source
            .describe(spec.qualifier.as_deref(), &spec.name)
            .await
            .map_err(|error| error.to_string()),
        None => Err(session
            .source_errors
            .get(&spec.source)
            .cloned()
            .unwrap_or_else(|| "source not connected".into())),
    };
    let existing = if dataset_missing {
        None
    } else {
        session
            .warehouse
            .get_table(&spec.target)
            .await
            .map_err(|source| Error::Planning {
                context: format!("target `{}`", spec.target),
                source: Box::new(source),
            })?
    };
    let mapping = match &source {
        Ok(table) => map_table(table, spec),
        Err(_) => Err(Vec::new()),
    };
    let unsupported = existing
        .as_ref()
        .map(|table| table.unsupported.clone())
        .unwrap_or_default();
    Ok(plan_table(TableInput {
        spec: spec.clone(),
        source,
        mapping,
        existing_rows: existing.as_ref().and_then(|table| table.num_rows),
        existing: existing.map(|table| table.table),
        unsupported,
    }))
}

/// Rows the table's run will move: for a bounded extraction, the rows past the target's cursor
/// maximum now (counted with the bound the executor uses); else the catalog estimate, or an
/// exact count when the catalog has none.
async fn rows_to_move(session: &Session, table: &TablePlan) -> Option<u64> {
    let extract = table.extract()?;
    let source: &Source = session.sources.get(&table.source)?;
    let source_table = table.source_table.as_ref()?;
    let filter = read_bound(session.warehouse.as_ref(), &table.target, &extract.bound)
        .await
        .ok()?;
    if filter.is_none()
        && let Some(rows) = source_table.estimated_rows
    {
        return Some(rows);
    }
    source
        .count_rows(source_table, &extract.columns, filter.as_ref())
        .await
        .ok()
}

/// A MERGE into an existing target: what it (and its delete statement) will bill, from a dry
/// run of each statement against the target (nothing runs, nothing is billed). The plan has
/// decided the statements; only their bytes are read here. A failed dry run leaves the cost
/// unknown, with a warning.
async fn estimate_write_cost(session: &Session, table: &mut TablePlan) {
    if table.write_cost.is_some() {
        return;
    }
    let (
        Some(WriteOp::Merge {
            keys,
            columns,
            cursor,
            deletes,
            ..
        }),
        Some(existing),
    ) = (table.write_op(), table.existing.as_ref())
    else {
        return;
    };
    let request = MergeRequest {
        staging: super::staging_table(&table.target, "plan"),
        target: table.target.clone(),
        keys: keys.clone(),
        columns: columns.clone(),
        order_by: cursor.clone(),
        job_id: None,
        deletes: *deletes,
        keys_table: Some(super::keys_table(&table.target, "plan")),
    };
    match session.warehouse.dry_run_merge(&request, existing).await {
        Ok(statements) => table.write_cost = Some(WriteCost::dry_run(&statements)),
        Err(error) => table.warnings.push(
            Diagnostic::warning(
                Code::PlanWriteCostUnknown,
                format!("the MERGE's cost could not be estimated (its dry run failed): {error}"),
            )
            .at(Location::Table(table.label.clone())),
        ),
    }
}
