//! The planner: introspects every enabled table and its target, maps it, and records every
//! decision in a [`Plan`] (see [`crate::plan::plan_table`]); then counts the rows each table
//! will move, with the same bound the executor will use.

use crate::error::Error;
use crate::manifest::{Manifest, TableSpec};
use crate::mapping::map_table;
use crate::plan::{Plan, TableInput, TablePlan, plan_table};
use crate::source::Source;
use crate::warehouse::WarehouseError;

use super::Session;
use super::executor::read_bound;

/// Builds the plan of every enabled table of `manifest`.
pub async fn plan(manifest: &Manifest, session: &Session) -> Result<Plan, Error> {
    let create_dataset = dataset_missing(manifest, session).await?;
    let mut tables = Vec::new();
    for spec in manifest.tables.iter().filter(|table| table.enabled) {
        let mut table = plan_one(spec, session, create_dataset).await?;
        table.estimated_rows = rows_to_move(session, &table).await;
        plan_chunks(session, &mut table).await;
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

/// Splits a large MySQL/PostgreSQL table into chunks: the source's facts (size, integer keys
/// and their bounds, pages) read now, the decision made by
/// [`crate::plan::chunks::plan_chunking`]. A table whose facts can't be read is one chunk.
async fn plan_chunks(session: &Session, table: &mut TablePlan) {
    let (Some(source), Some(source_table), Some(extract)) = (
        session.sources.get(&table.source),
        table.source_table.as_ref(),
        table.extract(),
    ) else {
        return;
    };
    // A table no larger than one chunk needs no key bounds (an incremental run moves less).
    let facts = match source
        .chunk_facts(source_table, table.spec.chunk_bytes)
        .await
    {
        Ok(Some(facts)) => facts,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(table = %table.label, %error, "cannot read the table's size: it is read as one chunk");
            return;
        }
    };
    let bounded = !matches!(extract.bound, crate::plan::Bound::All);
    let settings = crate::plan::chunks::ChunkSettings {
        chunk_bytes: table.spec.chunk_bytes,
        table_parallelism: table.spec.table_parallelism,
        consistency: table.spec.consistency,
    };
    let chunking = crate::plan::chunks::plan_chunking(
        &facts,
        settings,
        table.estimated_rows.filter(|_| bounded),
        source_table.estimated_rows,
    );
    if let Some(extract) = table.extract_mut() {
        extract.chunking = chunking;
    }
}
