//! The planner: introspects every enabled table and its target, maps it, and records every
//! decision in a [`Plan`] (see [`crate::plan::plan_table`]); then counts the rows each table
//! will move, with the same bound the executor will use.

use crate::diagnostic::{Code, Diagnostic, Location};
use crate::error::Error;
use crate::manifest::{Manifest, TableSpec};
use crate::mapping::map_table;
use crate::plan::{Bound, Plan, TableInput, TablePlan, plan_table};
use crate::source::Source;
use crate::warehouse::WarehouseError;

use super::Session;
use super::executor::read_bound;
use super::ledger::watermark::{Latest, read_latest};

/// Builds the plan of every enabled table of `manifest`.
pub async fn plan(manifest: &Manifest, session: &Session) -> Result<Plan, Error> {
    let create_dataset = dataset_missing(manifest, session).await?;
    let destination = format!(
        "{}.{}",
        manifest.bigquery.project, manifest.bigquery.dataset
    );
    let mut tables = Vec::new();
    for spec in manifest.tables.iter().filter(|table| table.enabled) {
        tables.push(plan_one(spec, session, create_dataset).await?);
    }
    // The ledger's watermarks, read once for every table (none when nothing is bounded).
    let bounded = tables.iter().any(|table| {
        table
            .extract()
            .is_some_and(|extract| matches!(extract.bound, Bound::AfterTargetMax { .. }))
    });
    let latest = if bounded && !create_dataset {
        read_latest(session.warehouse.as_ref(), &destination).await
    } else {
        Latest::default()
    };
    for table in &mut tables {
        table.estimated_rows = rows_to_move(session, table, &latest).await;
    }
    Ok(Plan::new(destination, create_dataset, tables))
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

/// Introspects (a table from the catalogs, a custom SQL query from its result metadata), maps
/// and plans one table.
async fn plan_one(
    spec: &TableSpec,
    session: &Session,
    dataset_missing: bool,
) -> Result<TablePlan, Error> {
    let mut notes = Vec::new();
    let source = match session.sources.get(&spec.source) {
        Some(source) => match &spec.query {
            Some(query) => source
                .describe_query(
                    &spec.name,
                    query,
                    spec.primary_key.as_deref().unwrap_or(&[]),
                )
                .await
                .map(|described| {
                    notes = described.notes;
                    described.table
                }),
            None => source.describe(spec.qualifier.as_deref(), &spec.name).await,
        }
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
    let mut mapping = match &source {
        Ok(table) => map_table(table, spec),
        Err(_) => Err(Vec::new()),
    };
    if let Ok(mapping) = &mut mapping {
        // What a query's result metadata could not tell (its types came from the driver).
        mapping.warnings.extend(notes.into_iter().map(|note| {
            Diagnostic::warning(Code::MappingNaturalType, note).at(Location::Table(spec.label()))
        }));
    }
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
/// maximum now (the ledger's watermark, else the target's `MAX`: the bound the executor uses);
/// else the catalog estimate, or an exact count when the catalog has none.
async fn rows_to_move(session: &Session, table: &TablePlan, latest: &Latest) -> Option<u64> {
    let extract = table.extract()?;
    let source: &Source = session.sources.get(&table.source)?;
    let source_table = table.source_table.as_ref()?;
    let filter = read_bound(
        session.warehouse.as_ref(),
        &table.target,
        &extract.bound,
        latest,
    )
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
