//! The planner: introspects every enabled table and its target, maps it, and records every
//! decision in a [`Plan`] (see [`crate::plan::plan_table`]); then counts the rows each table
//! will move, with the same bound the executor will use, and lists the dataset's orphaned
//! targets.
//!
//! Thousands of tables cost a few calls, not a few per table:
//! - the source catalogs are read with one set of queries per source and schema/database
//!   ([`Source::describe_many`]), a few schemas at once;
//! - BigQuery is asked once per dataset which tables exist (tables.list, paged, free), then
//!   tables.get is called only for the targets that exist, a bounded number at a time
//!   ([`crate::warehouse::Warehouse::get_tables`]);
//! - row counts (and cursor maxima) run a bounded number at a time.
//!
//! Nothing is spawned: each stage is a stream of futures polled together (`buffered`), so a
//! plan of 10,000 tables holds at most the source pools' connections and a fixed number of
//! requests in flight.
//!
//! Why tables.get rather than one `INFORMATION_SCHEMA` query per dataset
//! (<https://cloud.google.com/bigquery/docs/information-schema-intro>): the views would answer
//! in one job, but a query is billed (at least 10 MB per query on demand) and needs a job in
//! the dataset's location, and they do not carry everything a plan compares exactly:
//! `INFORMATION_SCHEMA.COLUMNS.data_type` gives precision/scale and nesting as DDL text to
//! parse, the partitioning's granularity and field only appear inside `TABLES.ddl`, and
//! `numRows` is not there at all (`TABLE_STORAGE` is per region and lags). tables.get returns
//! the exact resource the plan already decodes, costs nothing, and only existing targets need
//! one; the price is the API's per-user, per-method rate
//! (<https://cloud.google.com/bigquery/quotas#api_request_quotas>), which `get_tables` stays
//! under. The emulator has no `INFORMATION_SCHEMA` worth the name either.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use indexmap::IndexMap;

use crate::diagnostic::{Code, Diagnostic, Location};
use crate::error::Error;
use crate::manifest::{Manifest, TableSpec};
use crate::mapping::map_table;
use crate::plan::{
    Bound, Orphan, Plan, TableInput, TablePlan, WriteCost, WriteOp, orphans, plan_table,
};
use crate::schema::SourceTable;
use crate::source::Source;
use crate::warehouse::labels::{self, JobLabels};
use crate::warehouse::{ExistingTable, ListedTable, MergeRequest, WarehouseError, is_managed};

use super::Session;
use super::executor::read_bound;
use super::ledger::watermark::{Latest, read_latest};

/// Catalog query sets (one per source and schema) run at once.
const DESCRIBE_CONCURRENCY: usize = 4;

/// Row counts and cursor maxima run at once (each source's pool bounds its connections too).
const COUNT_CONCURRENCY: usize = 16;

/// The prefix of datasync's own tables (staging, backup, lock, key-set, rejects, the run
/// ledger): never targets, never orphans.
const INTERNAL_PREFIXES: [&str; 1] = ["_datasync_"];

/// Builds the plan of every enabled table of `manifest`.
pub async fn plan(manifest: &Manifest, session: &Session) -> Result<Plan, Error> {
    let destination = format!(
        "{}.{}",
        manifest.bigquery.project, manifest.bigquery.dataset
    );
    let create_dataset = dataset_missing(manifest, session).await?;
    let listed = if create_dataset {
        Vec::new()
    } else {
        session
            .warehouse
            .list_dataset()
            .await
            .map_err(|source| planning(&destination, source))?
    };
    let specs: Vec<&TableSpec> = manifest
        .tables
        .iter()
        .filter(|table| table.enabled)
        .collect();
    let sources = describe_all(&specs, session).await;
    let mut existing = existing_targets(&specs, &listed, session)
        .await
        .map_err(|source| planning(&destination, source))?;
    let mut tables: Vec<TablePlan> = specs
        .iter()
        .zip(sources)
        .map(|(spec, (source, notes))| plan_one(spec, source, notes, existing.remove(&spec.target)))
        .collect();
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
    let counts: Vec<Option<u64>> = futures::stream::iter(0..tables.len())
        .map(|index| rows_to_move(session, &tables[index], &latest))
        .buffered(COUNT_CONCURRENCY)
        .collect()
        .await;
    for (table, rows) in tables.iter_mut().zip(counts) {
        table.estimated_rows = rows;
    }
    // Chunks (a size query for the tables the catalog can't rule out) and MERGE costs (a dry
    // run), a bounded number of tables at a time.
    futures::stream::iter(tables.iter_mut())
        .for_each_concurrent(COUNT_CONCURRENCY, |table| async move {
            plan_chunks(session, table).await;
            estimate_write_cost(session, table).await;
        })
        .await;
    let orphaned = orphaned(manifest, session, &listed)
        .await
        .map_err(|source| planning(&destination, source))?;
    let mut plan = Plan::new(destination, create_dataset, tables);
    plan.orphaned = orphaned;
    Ok(plan)
}

fn planning(destination: &str, source: WarehouseError) -> Error {
    Error::Planning {
        context: format!("dataset `{destination}`"),
        source: Box::new(source),
    }
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

/// A source table, or why there is none (the plan shows the message).
type Described = Result<SourceTable, String>;

/// Every spec's source table (or why it has none), in order, with what its description could
/// not tell (a query typed by the driver): one [`Source::describe_many`] per source and
/// qualifier, one [`Source::describe_query`] per custom SQL query, [`DESCRIBE_CONCURRENCY`] at
/// a time.
async fn describe_all(specs: &[&TableSpec], session: &Session) -> Vec<(Described, Vec<String>)> {
    let mut groups: IndexMap<(&str, Option<&str>), Vec<usize>> = IndexMap::new();
    for (index, spec) in specs.iter().enumerate() {
        if spec.query.is_some() {
            continue;
        }
        groups
            .entry((spec.source.as_str(), spec.qualifier.as_deref()))
            .or_default()
            .push(index);
    }
    let groups: Vec<_> = groups.into_iter().collect();
    let described: Vec<(Vec<usize>, Vec<Described>)> = futures::stream::iter(0..groups.len())
        .map(|group| {
            let ((source, qualifier), indexes) = &groups[group];
            let names: Vec<String> = indexes
                .iter()
                .map(|&index| specs[index].name.clone())
                .collect();
            async move {
                let tables = describe_group(session, source, *qualifier, &names).await;
                (indexes.clone(), tables)
            }
        })
        .buffer_unordered(DESCRIBE_CONCURRENCY)
        .collect()
        .await;
    let mut out: Vec<Option<(Described, Vec<String>)>> = vec![None; specs.len()];
    for (indexes, tables) in described {
        for (index, table) in indexes.into_iter().zip(tables) {
            out[index] = Some((table, Vec::new()));
        }
    }
    let queries: Vec<(usize, (Described, Vec<String>))> = futures::stream::iter(
        specs
            .iter()
            .enumerate()
            .filter(|(_, spec)| spec.query.is_some()),
    )
    .map(|(index, spec)| async move { (index, describe_query(session, spec).await) })
    .buffer_unordered(DESCRIBE_CONCURRENCY)
    .collect()
    .await;
    for (index, described) in queries {
        out[index] = Some(described);
    }
    out.into_iter()
        .map(|table| {
            table.unwrap_or_else(|| (Err("the source was not described".into()), Vec::new()))
        })
        .collect()
}

/// A custom SQL source's columns, typed from the query's result metadata, and what that
/// metadata could not tell (the plan warns).
async fn describe_query(session: &Session, spec: &TableSpec) -> (Described, Vec<String>) {
    let (Some(source), Some(query)) = (session.sources.get(&spec.source), &spec.query) else {
        let error = session
            .source_errors
            .get(&spec.source)
            .cloned()
            .unwrap_or_else(|| "source not connected".into());
        return (Err(error), Vec::new());
    };
    match source
        .describe_query(
            &spec.name,
            query,
            spec.primary_key.as_deref().unwrap_or(&[]),
        )
        .await
    {
        Ok(described) => (Ok(described.table), described.notes),
        Err(error) => (Err(error.to_string()), Vec::new()),
    }
}

/// The tables `names` of one source and qualifier, or why each has none.
async fn describe_group(
    session: &Session,
    source: &str,
    qualifier: Option<&str>,
    names: &[String],
) -> Vec<Result<SourceTable, String>> {
    let Some(connected) = session.sources.get(source) else {
        let error = session
            .source_errors
            .get(source)
            .cloned()
            .unwrap_or_else(|| "source not connected".into());
        return vec![Err(error); names.len()];
    };
    match connected.describe_many(qualifier, names).await {
        Ok(tables) => tables
            .into_iter()
            .map(|table| table.map_err(|error| error.to_string()))
            .collect(),
        Err(error) => vec![Err(error.to_string()); names.len()],
    }
}

/// The specs' targets that exist, read with tables.get: only those the dataset's listing
/// shows (a missing target needs no call), each once.
async fn existing_targets(
    specs: &[&TableSpec],
    listed: &[ListedTable],
    session: &Session,
) -> Result<HashMap<String, ExistingTable>, WarehouseError> {
    let present: HashSet<&str> = listed.iter().map(|table| table.name.as_str()).collect();
    let mut wanted: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for spec in specs {
        if present.contains(spec.target.as_str()) && seen.insert(spec.target.as_str()) {
            wanted.push(spec.target.clone());
        }
    }
    let fetched = session.warehouse.get_tables(&wanted).await?;
    Ok(wanted
        .into_iter()
        .zip(fetched)
        .filter_map(|(name, table)| table.map(|table| (name, table)))
        .collect())
}

/// Maps and plans one table from its introspected source and existing target.
fn plan_one(
    spec: &TableSpec,
    source: Result<SourceTable, String>,
    notes: Vec<String>,
    existing: Option<ExistingTable>,
) -> TablePlan {
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
    plan_table(TableInput {
        spec: spec.clone(),
        source,
        mapping,
        existing_rows: existing.as_ref().and_then(|table| table.num_rows),
        existing: existing.map(|table| table.table),
        unsupported,
    })
}

/// Rows the table's run will move: for a bounded extraction, the rows past the target's cursor
/// maximum now (the ledger's watermark, else the target's `MAX`: the bound the executor uses);
/// else the catalog estimate, or an exact count when the catalog has none.
async fn rows_to_move(session: &Session, table: &TablePlan, latest: &Latest) -> Option<u64> {
    let extract = table.extract()?;
    let source: &Source = session.sources.get(&table.source)?;
    let source_table = table.source_table.as_ref()?;
    // A missing target holds no maximum ([`read_bound`]'s rule); the listing already said it
    // is missing, so BigQuery is not asked again. The query reading the target's maximum is
    // labelled with the table (plans have no run).
    let filter = if table.existing.is_none() {
        None
    } else {
        labels::scope(
            JobLabels::for_table(None, &table.target),
            read_bound(
                session.warehouse.as_ref(),
                &table.target,
                &extract.bound,
                latest,
            ),
        )
        .await
        .ok()?
    };
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

/// The dataset's tables datasync created that no table of the manifest writes (see
/// [`orphans`]). None are reported while a pattern's source is not connected: the tables it
/// would match, and so their targets, are unknown. Where the listing carries no labels (the
/// emulator), the candidates' labels are read with tables.get.
async fn orphaned(
    manifest: &Manifest,
    session: &Session,
    listed: &[ListedTable],
) -> Result<Vec<Orphan>, WarehouseError> {
    if manifest
        .patterns
        .iter()
        .any(|pattern| !session.sources.contains_key(&pattern.source))
    {
        return Ok(Vec::new());
    }
    let mapped: Vec<&str> = manifest
        .tables
        .iter()
        .map(|table| table.target.as_str())
        .collect();
    let candidates: Vec<&ListedTable> = listed
        .iter()
        .filter(|table| !mapped.contains(&table.name.as_str()))
        .filter(|table| {
            !INTERNAL_PREFIXES
                .iter()
                .any(|prefix| table.name.starts_with(prefix))
        })
        .collect();
    let unlabelled: Vec<String> = candidates
        .iter()
        .filter(|table| table.labels.is_none())
        .map(|table| table.name.clone())
        .collect();
    let read: HashMap<String, bool> = unlabelled
        .iter()
        .cloned()
        .zip(session.warehouse.get_tables(&unlabelled).await?)
        .map(|(name, table)| (name, table.is_some_and(|table| is_managed(&table.labels))))
        .collect();
    let dataset: Vec<(String, bool)> = candidates
        .iter()
        .map(|table| {
            let managed = match &table.labels {
                Some(labels) => is_managed(labels),
                None => read.get(&table.name).copied().unwrap_or(false),
            };
            (table.name.clone(), managed)
        })
        .collect();
    Ok(orphans(
        &format!(
            "{}:{}",
            manifest.bigquery.project, manifest.bigquery.dataset
        ),
        &dataset,
        &mapped,
        &INTERNAL_PREFIXES,
    ))
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

/// Splits a large MySQL/PostgreSQL table into chunks: the source's facts (size, integer keys
/// and their bounds, pages) read now, the decision made by
/// [`crate::plan::chunks::plan_chunking`]. A table whose facts can't be read is one chunk.
async fn plan_chunks(session: &Session, table: &mut TablePlan) {
    // A custom SQL query is read whole: its derived table has no size, pages or index.
    if table.spec.query.is_some() {
        return;
    }
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
