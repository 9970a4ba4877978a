//! [`FakeWarehouse`]: an in-memory [`Warehouse`] for executor tests, with failure injection and
//! an operation log.
//!
//! Supported: everything in the trait. `query` understands only `SELECT COUNT(*) FROM <table>`
//! and the run ledger's query of the latest `done` row per target (`sync::ledger`'s
//! `latest_sql`); anything else is an
//! [`WarehouseError::Invalid`]; use [`Warehouse::merge`] and [`Warehouse::max_value`] for the
//! rest. Rows are JSON objects as loaded (no type coercion); unknown keys and missing REQUIRED
//! values fail the load, like BigQuery. Every change of a table's rows or schema moves its
//! `last_modified` (a counter), as BigQuery's `lastModifiedTime` moves.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::mpsc::Receiver;

use super::labels::{self, JobLabels};
use super::{
    AlterColumn, CopyRequest, CopyRowsByKey, Disposition, ExistingTable, JobState, ListedTable,
    LoadOutcome, LoadRequest, MANAGED_BY_LABEL, MergeOutcome, MergeRequest, QueryParam, QueryRows,
    TableMeta, TableUpdate, Warehouse, WarehouseError,
};
use crate::schema::{
    DELETED_AT_COLUMN, Deletes, FieldMode, LoadFormat, WarehouseField, WarehouseTable,
};

/// A failure to inject into the next call of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFailure {
    /// Operation name as in the log: `ensure_dataset`, `get_table`, `create_table`,
    /// `alter_table`, `drop_table`, `load`, `query`, `merge`, `max_value`, `cancel_job`,
    /// `list_tables`, `list_dataset`, `copy_table`, `update_table`.
    pub operation: String,
    /// What [`WarehouseError::retryable`] reports.
    pub retryable: bool,
    /// What [`WarehouseError::is_ambiguous`] reports; such a failure comes after the operation
    /// was carried out (a lost reply).
    pub ambiguous: bool,
}

#[derive(Debug, Default)]
struct State {
    dataset_exists: bool,
    tables: BTreeMap<String, (WarehouseTable, Vec<Map<String, Value>>)>,
    log: Vec<String>,
    fail_next: Vec<InjectedFailure>,
    fail_load_after_bytes: Option<u64>,
    loads: BTreeMap<String, LoadOutcome>,
    unsupported: BTreeMap<String, Vec<String>>,
    /// `(operation, calls to let through first)`: fail the call after those.
    fail_later: Vec<(String, usize)>,
    /// Metadata and an etag (a version counter) per table.
    meta: BTreeMap<String, (TableMeta, u64)>,
    /// `last_modified` per table: the `clock` of its last change.
    modified: BTreeMap<String, u64>,
    clock: u64,
    /// Labels per table (`create_table` sets [`MANAGED_BY_LABEL`], like BigQuery's).
    labels: BTreeMap<String, BTreeMap<String, String>>,
    /// How long each `get_table` takes (to observe concurrency).
    get_delay: Option<std::time::Duration>,
    /// `get_table` calls in flight now, and the most seen at once.
    gets_in_flight: (usize, usize),
    /// Every job-like operation with the [`labels::current`] it ran under.
    job_labels: Vec<(String, JobLabels)>,
    /// Jobs that ran and failed (a load the fake rejected), by id.
    failed_jobs: BTreeMap<String, String>,
    /// Job states set by a test (e.g. a load still running), by id.
    job_states: BTreeMap<String, JobState>,
    /// Copy jobs done, by id: a copy with a done job's id is not run again (BigQuery's 409).
    copies: std::collections::BTreeSet<String>,
    /// Loads whose job id contains this never finish (a run killed while they run).
    hang_loads: Option<String>,
    /// A `WRITE_TRUNCATE` copy gives the target the source's description (BigQuery does not
    /// document whether it does; datasync must be right either way).
    copy_takes_description: bool,
}

impl State {
    /// Moves `table`'s `last_modified`: its rows or schema changed.
    fn touch(&mut self, table: &str) {
        self.clock += 1;
        let clock = self.clock;
        self.modified.insert(table.to_string(), clock);
    }

    /// Drops tables past their `expirationTime`, like BigQuery.
    fn expire(&mut self) {
        let now = chrono::Utc::now().timestamp_millis();
        let expired: Vec<String> = self
            .meta
            .iter()
            .filter(|(_, (meta, _))| meta.expires_at_ms.is_some_and(|at| at <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            self.meta.remove(&name);
            self.tables.remove(&name);
            self.modified.remove(&name);
            self.labels.remove(&name);
        }
    }
}

/// An in-memory warehouse.
#[derive(Debug, Default)]
pub struct FakeWarehouse {
    state: Mutex<State>,
}

impl FakeWarehouse {
    /// An empty warehouse whose dataset does not exist yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty warehouse with an existing dataset.
    pub fn with_dataset() -> Self {
        let fake = Self::default();
        fake.lock().dataset_exists = true;
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data; keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes the next call of `operation` fail.
    pub fn fail_next(&self, operation: &str, retryable: bool) {
        self.lock().fail_next.push(InjectedFailure {
            operation: operation.into(),
            retryable,
            ambiguous: false,
        });
    }

    /// Makes the next call of `operation` (`insert_from` or `merge`) do its work, then fail as
    /// if the reply was lost ([`WarehouseError::is_ambiguous`]).
    pub fn fail_next_ambiguous(&self, operation: &str) {
        self.lock().fail_next.push(InjectedFailure {
            operation: operation.into(),
            retryable: true,
            ambiguous: true,
        });
    }

    /// Lets `skip` calls of `operation` through, then fails the next one (not retryable).
    pub fn fail_after(&self, operation: &str, skip: usize) {
        self.lock().fail_later.push((operation.into(), skip));
    }

    /// Makes every load fail once it has read more than `bytes` bytes (`None` to stop).
    pub fn fail_load_after_bytes(&self, bytes: Option<u64>) {
        self.lock().fail_load_after_bytes = bytes;
    }

    /// The operations so far, e.g. `create_table orders`, `load orders WRITE_TRUNCATE job1`.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// Every job BigQuery would run (load, query, merge, copy, `max_value`, DDL), as its log
    /// entry with the labels it ran under ([`labels::scope`]).
    pub fn job_labels(&self) -> Vec<(String, JobLabels)> {
        self.lock().job_labels.clone()
    }

    /// A table's description and its columns' (test checks).
    pub fn descriptions(&self, table: &str) -> Option<(Option<String>, Vec<Option<String>>)> {
        self.lock().tables.get(table).map(|(table, _)| {
            (
                table.description.clone(),
                table
                    .fields
                    .iter()
                    .map(|field| field.description.clone())
                    .collect(),
            )
        })
    }

    /// How many logged operations start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|entry| entry.starts_with(prefix))
            .count()
    }

    /// A table's rows.
    pub fn rows(&self, table: &str) -> Option<Vec<Map<String, Value>>> {
        self.lock().tables.get(table).map(|(_, rows)| rows.clone())
    }

    /// Puts a table with rows in place (test setup; not logged).
    pub fn insert_table(&self, table: WarehouseTable, rows: Vec<Map<String, Value>>) {
        let mut state = self.lock();
        state.dataset_exists = true;
        state.touch(&table.name);
        state.tables.insert(table.name.clone(), (table, rows));
    }

    /// Appends rows to an existing table as another writer would (test setup; not logged):
    /// its `last_modified` moves.
    pub fn append_rows(&self, table: &str, rows: Vec<Map<String, Value>>) {
        let mut state = self.lock();
        if let Some((_, existing)) = state.tables.get_mut(table) {
            existing.extend(rows);
            state.touch(table);
        }
    }

    /// Makes a `WRITE_TRUNCATE` copy give the target the source's description (test setup).
    pub fn copies_take_the_description(&self) {
        self.lock().copy_takes_description = true;
    }

    /// Sets a label on a table (test setup; not logged).
    pub fn set_label(&self, table: &str, key: &str, value: &str) {
        self.lock()
            .labels
            .entry(table.to_string())
            .or_default()
            .insert(key.to_string(), value.to_string());
    }

    /// Makes every `get_table` take `delay` (to observe how many run at once).
    pub fn slow_get_table(&self, delay: std::time::Duration) {
        self.lock().get_delay = Some(delay);
    }

    /// The most `get_table` calls that were in flight at once.
    pub fn peak_concurrent_get_tables(&self) -> usize {
        self.lock().gets_in_flight.1
    }

    /// Makes [`Warehouse::job_state`] report `state` for `job_id` (until a load with that id
    /// finishes).
    pub fn set_job_state(&self, job_id: &str, state: JobState) {
        self.lock().job_states.insert(job_id.to_string(), state);
    }

    /// Makes every load whose job id contains `pattern` hang forever once logged (`None` to
    /// stop): a test drops the run there, like a killed process.
    pub fn hang_loads(&self, pattern: Option<&str>) {
        self.lock().hang_loads = pattern.map(str::to_string);
    }

    /// Forgets the load job `job_id` (as if it never ran) without touching the rows it loaded:
    /// what the emulator does with client job ids.
    pub fn forget_job(&self, job_id: &str) {
        let mut state = self.lock();
        state.loads.remove(job_id);
        state.failed_jobs.remove(job_id);
    }

    /// Makes `table` read back as one datasync can't work with (like a RECORD column).
    pub fn mark_unsupported(&self, table: &str, reason: &str) {
        self.lock()
            .unsupported
            .entry(table.to_string())
            .or_default()
            .push(reason.to_string());
    }

    fn begin(
        &self,
        operation: &str,
        entry: String,
    ) -> Result<std::sync::MutexGuard<'_, State>, WarehouseError> {
        let mut state = self.lock();
        state.expire();
        if JOBS.contains(&operation) {
            state.job_labels.push((entry.clone(), labels::current()));
        }
        state.log.push(entry);
        if let Some(index) = state
            .fail_later
            .iter()
            .position(|(name, _)| name == operation)
        {
            if state.fail_later[index].1 == 0 {
                state.fail_later.remove(index);
                return Err(WarehouseError::Injected {
                    operation: operation.to_string(),
                    retryable: false,
                    ambiguous: false,
                });
            }
            state.fail_later[index].1 -= 1;
        }
        if let Some(index) = state
            .fail_next
            .iter()
            .position(|failure| failure.operation == operation && !failure.ambiguous)
        {
            let failure = state.fail_next.remove(index);
            return Err(WarehouseError::Injected {
                operation: failure.operation,
                retryable: failure.retryable,
                ambiguous: failure.ambiguous,
            });
        }
        Ok(state)
    }
}

/// The operations that are jobs in BigQuery (they carry job labels there).
const JOBS: &[&str] = &[
    "load",
    "query",
    "merge",
    "max_value",
    "copy_table",
    "alter_table",
    "insert_from",
];

/// After a write did its work: the injected "lost reply" of `operation`, if any.
fn lost_reply(state: &mut State, operation: &str) -> Result<(), WarehouseError> {
    match state
        .fail_next
        .iter()
        .position(|failure| failure.operation == operation && failure.ambiguous)
    {
        Some(index) => {
            let failure = state.fail_next.remove(index);
            Err(WarehouseError::Injected {
                operation: failure.operation,
                retryable: failure.retryable,
                ambiguous: true,
            })
        }
        None => Ok(()),
    }
}

fn invalid(context: &str, message: impl std::fmt::Display) -> WarehouseError {
    WarehouseError::Api {
        context: context.to_string(),
        status: 400,
        reason: "invalid".into(),
        message: message.to_string(),
    }
}

fn not_found(context: &str, what: &str) -> WarehouseError {
    WarehouseError::Api {
        context: context.to_string(),
        status: 404,
        reason: "notFound".into(),
        message: format!("Not found: {what}"),
    }
}

fn parse_rows(
    context: &str,
    schema: &WarehouseTable,
    data: &[u8],
) -> Result<Vec<Map<String, Value>>, WarehouseError> {
    let mut rows = Vec::new();
    for (index, line) in data.split(|byte| *byte == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row: Map<String, Value> = serde_json::from_slice(line).map_err(|error| {
            invalid(
                context,
                format!("line {}: not a JSON object: {error}", index + 1),
            )
        })?;
        if let Some(key) = row.keys().find(|key| schema.field(key).is_none()) {
            return Err(invalid(
                context,
                format!("line {}: no such field: {key}", index + 1),
            ));
        }
        if let Some(field) = schema.fields.iter().find(|field| {
            field.mode == FieldMode::Required && row.get(&field.name).is_none_or(Value::is_null)
        }) {
            return Err(invalid(
                context,
                format!("line {}: missing required field {}", index + 1, field.name),
            ));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The run ledger's table (`sync::ledger::RUNS_TABLE`; the warehouse does not import `sync`,
/// the ledger's tests check the two agree).
const LEDGER_TABLE: &str = "_datasync_runs";

/// The ledger's query (`sync::ledger::watermark::latest_sql`): per target, its `done` row with
/// the greatest `finished_at` (then `run_id`), the selected columns in order.
fn latest_runs(state: &State, sql: &str) -> Result<QueryRows, WarehouseError> {
    let table = LEDGER_TABLE;
    let (_, rows) = state
        .tables
        .get(table)
        .ok_or_else(|| not_found("fake ledger query", table))?;
    let selected: Vec<String> = sql
        .trim_start_matches("SELECT ")
        .split(" FROM ")
        .next()
        .unwrap_or_default()
        .split(", ")
        .map(|column| column.trim_matches('`').to_string())
        .collect();
    let text = |row: &Map<String, Value>, key: &str| {
        row.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut latest: BTreeMap<String, &Map<String, Value>> = BTreeMap::new();
    for row in rows.iter().filter(|row| text(row, "status") == "done") {
        let order = |row: &Map<String, Value>| (text(row, "finished_at"), text(row, "run_id"));
        let target = text(row, "target");
        if latest
            .get(&target)
            .is_none_or(|kept| order(row) > order(kept))
        {
            latest.insert(target, row);
        }
    }
    Ok(QueryRows {
        columns: selected
            .iter()
            .map(|name| super::QueryColumn {
                name: name.clone(),
                bq_type: Some(crate::schema::BqType::String),
                repeated: false,
            })
            .collect(),
        rows: latest
            .values()
            .map(|row| {
                selected
                    .iter()
                    .map(|name| row.get(name).cloned().unwrap_or(Value::Null))
                    .collect()
            })
            .collect(),
        num_dml_affected_rows: None,
    })
}

/// A merge's `deletes` after its upsert, like the delete statement: target rows whose key is
/// not in the keys table (and has no NULL part) are deleted or marked once. The rows affected.
fn apply_deletes(
    state: &mut State,
    request: &MergeRequest,
    context: &str,
) -> Result<Option<u64>, WarehouseError> {
    let Some(keys_table) = request
        .keys_table
        .as_ref()
        .filter(|_| !request.deletes.is_keep())
    else {
        return Ok(None);
    };
    let key_of = |row: &Map<String, Value>| {
        request
            .keys
            .iter()
            .map(|key| row.get(key).cloned().unwrap_or(Value::Null))
            .collect::<Vec<_>>()
    };
    let present: Vec<Vec<Value>> = state
        .tables
        .get(keys_table)
        .ok_or_else(|| not_found(context, keys_table))?
        .1
        .iter()
        .map(key_of)
        .collect();
    let (_, target) = state
        .tables
        .get_mut(&request.target)
        .ok_or_else(|| not_found(context, &request.target))?;
    let gone = |row: &Map<String, Value>| {
        let key = key_of(row);
        !key.iter().any(Value::is_null) && !present.contains(&key)
    };
    let before = target.len();
    let affected = if request.deletes == Deletes::Hard {
        target.retain(|row| !gone(row));
        before - target.len()
    } else {
        let now = Value::String(chrono::Utc::now().to_rfc3339());
        let mut marked = 0;
        for row in target.iter_mut().filter(|row| gone(row)) {
            if row.get(DELETED_AT_COLUMN).is_none_or(Value::is_null) {
                row.insert(DELETED_AT_COLUMN.to_string(), now.clone());
                marked += 1;
            }
        }
        marked
    };
    Ok(Some(affected as u64))
}

/// Same column names (ignoring case), types and modes: descriptions don't matter to a copy.
fn same_columns(a: &WarehouseTable, b: &WarehouseTable) -> bool {
    a.fields.len() == b.fields.len()
        && a.fields.iter().zip(&b.fields).all(|(x, y)| {
            x.name.eq_ignore_ascii_case(&y.name)
                && WarehouseField {
                    description: None,
                    name: String::new(),
                    ..x.clone()
                } == WarehouseField {
                    description: None,
                    name: String::new(),
                    ..y.clone()
                }
        })
}

/// Orders JSON scalars: numbers numerically (also numeric strings), otherwise as text.
fn compare(a: &Value, b: &Value) -> Ordering {
    let number = |value: &Value| match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.parse::<f64>().ok(),
        _ => None,
    };
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => match (a, b) {
            (Value::String(x), Value::String(y)) => x.cmp(y),
            _ => a.to_string().cmp(&b.to_string()),
        },
    }
}

impl FakeWarehouse {
    /// [`Warehouse::load`]'s work.
    async fn load_rows(
        &self,
        request: &LoadRequest,
        mut data: Receiver<Bytes>,
    ) -> Result<LoadOutcome, WarehouseError> {
        let entry = format!(
            "load {} {} {}",
            request.table,
            request.disposition.as_api(),
            request.job_id
        );
        let (limit, done, failed, hang) = {
            let state = self.begin("load", entry)?;
            (
                state.fail_load_after_bytes,
                state.loads.get(&request.job_id).cloned(),
                state.failed_jobs.get(&request.job_id).cloned(),
                state
                    .hang_loads
                    .as_ref()
                    .is_some_and(|pattern| request.job_id.contains(pattern.as_str())),
            )
        };
        if hang {
            std::future::pending::<()>().await;
        }
        if let Some(outcome) = done {
            return Ok(outcome);
        }
        let context = format!("load table {} (job {})", request.table, request.job_id);
        if let Some(message) = failed {
            // A failed job's id can't load again: the existing job is the answer.
            return Err(WarehouseError::Job {
                context,
                job_id: request.job_id.clone(),
                reason: "invalid".into(),
                message,
                details: Vec::new(),
            });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = data.recv().await {
            bytes.extend_from_slice(&chunk);
            if limit.is_some_and(|limit| bytes.len() as u64 > limit) {
                return Err(WarehouseError::Injected {
                    operation: "load".into(),
                    retryable: true,
                    ambiguous: false,
                });
            }
        }
        let mut state = self.lock();
        if !state.dataset_exists {
            return Err(not_found(&context, "dataset"));
        }
        let existing = state.tables.get(&request.table).cloned();
        let mut schema = match (&existing, request.disposition) {
            (Some((table, _)), Disposition::Append | Disposition::Empty) => table.clone(),
            _ => WarehouseTable {
                name: request.table.clone(),
                ..request.schema.clone()
            },
        };
        if request.allow_field_addition {
            for field in &request.schema.fields {
                if schema.field(&field.name).is_none() {
                    schema.fields.push(field.clone());
                }
            }
        }
        let new_rows = match request.format {
            LoadFormat::Ndjson => parse_rows(&context, &schema, &bytes)?,
            LoadFormat::Avro if bytes.is_empty() => Vec::new(),
            LoadFormat::Avro => super::avro::decode_rows(&schema.fields, &bytes)
                .map_err(|error| invalid(&context, format!("not an Avro file: {error}")))?,
        };
        let output_rows = new_rows.len() as u64;
        let rows = match (existing, request.disposition) {
            (Some((_, rows)), Disposition::Empty) if !rows.is_empty() => {
                return Err(WarehouseError::Job {
                    context,
                    job_id: request.job_id.clone(),
                    reason: "duplicate".into(),
                    message: "table is not empty (WRITE_EMPTY)".into(),
                    details: Vec::new(),
                });
            }
            (Some((_, mut rows)), Disposition::Append) => {
                rows.extend(new_rows);
                rows
            }
            _ => new_rows,
        };
        state.tables.insert(request.table.clone(), (schema, rows));
        state.touch(&request.table);
        let outcome = LoadOutcome {
            job_id: request.job_id.clone(),
            output_rows,
            bytes: bytes.len() as u64,
            output_rows_is_total: false,
        };
        state.loads.insert(request.job_id.clone(), outcome.clone());
        Ok(outcome)
    }
}

#[async_trait]
impl Warehouse for FakeWarehouse {
    async fn ensure_dataset(&self, create: bool) -> Result<(), WarehouseError> {
        let mut state = self.begin("ensure_dataset", format!("ensure_dataset create={create}"))?;
        if !state.dataset_exists {
            if !create {
                return Err(WarehouseError::DatasetMissing {
                    project: "fake".into(),
                    dataset: "fake".into(),
                });
            }
            state.dataset_exists = true;
        }
        Ok(())
    }

    async fn get_table(&self, name: &str) -> Result<Option<ExistingTable>, WarehouseError> {
        let delay = {
            let mut state = self.begin("get_table", format!("get_table {name}"))?;
            state.gets_in_flight.0 += 1;
            state.gets_in_flight.1 = state.gets_in_flight.1.max(state.gets_in_flight.0);
            state.get_delay
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.lock();
        state.gets_in_flight.0 -= 1;
        Ok(state.tables.get(name).map(|(table, rows)| {
            // Datasync's own tables keep their description in the metadata.
            let description = state
                .meta
                .get(name)
                .and_then(|(meta, _)| meta.description.clone())
                .or_else(|| table.description.clone());
            ExistingTable {
                table: WarehouseTable {
                    description: description.clone(),
                    ..table.clone()
                },
                num_rows: Some(rows.len() as u64),
                etag: state.meta.get(name).map(|(_, version)| version.to_string()),
                last_modified: state.modified.get(name).map(u64::to_string),
                unsupported: state.unsupported.get(name).cloned().unwrap_or_default(),
                description,
                labels: state.labels.get(name).cloned().unwrap_or_default(),
            }
        }))
    }

    async fn create_table(&self, table: &WarehouseTable) -> Result<(), WarehouseError> {
        let mut state = self.begin("create_table", format!("create_table {}", table.name))?;
        let context = format!("create table {}", table.name);
        if !state.dataset_exists {
            return Err(not_found(&context, "dataset"));
        }
        if state.tables.contains_key(&table.name) {
            return Err(WarehouseError::Api {
                context,
                status: 409,
                reason: "duplicate".into(),
                message: format!("Already Exists: Table {}", table.name),
            });
        }
        state
            .tables
            .insert(table.name.clone(), (table.clone(), Vec::new()));
        state.touch(&table.name);
        let labels = BTreeMap::from([(
            MANAGED_BY_LABEL.0.to_string(),
            MANAGED_BY_LABEL.1.to_string(),
        )]);
        state.labels.insert(table.name.clone(), labels);
        Ok(())
    }

    async fn alter_table(&self, name: &str, changes: &[AlterColumn]) -> Result<(), WarehouseError> {
        let mut state = self.begin(
            "alter_table",
            format!("alter_table {name} changes={}", changes.len()),
        )?;
        let context = format!("alter table {name}");
        let (table, _) = state
            .tables
            .get_mut(name)
            .ok_or_else(|| not_found(&context, name))?;
        let mut fields = table.fields.clone();
        for change in changes {
            match change {
                AlterColumn::Add(field) => {
                    if fields
                        .iter()
                        .any(|existing| existing.name.eq_ignore_ascii_case(&field.name))
                    {
                        return Err(invalid(
                            &context,
                            format!("column {} already exists", field.name),
                        ));
                    }
                    fields.push(field.clone());
                }
                AlterColumn::DropNotNull(column) => {
                    let field = fields
                        .iter_mut()
                        .find(|field| field.name.eq_ignore_ascii_case(column))
                        .ok_or_else(|| invalid(&context, format!("no column {column}")))?;
                    if field.mode == FieldMode::Required {
                        field.mode = FieldMode::Nullable;
                    }
                }
                AlterColumn::SetType(new) => {
                    let field = fields
                        .iter_mut()
                        .find(|field| field.name.eq_ignore_ascii_case(&new.name))
                        .ok_or_else(|| invalid(&context, format!("no column {}", new.name)))?;
                    *field = WarehouseField {
                        mode: field.mode,
                        description: field.description.clone(),
                        ..new.clone()
                    };
                }
            }
        }
        table.fields = fields;
        state.touch(name);
        Ok(())
    }

    async fn drop_table(&self, name: &str) -> Result<(), WarehouseError> {
        let mut state = self.begin("drop_table", format!("drop_table {name}"))?;
        state.tables.remove(name);
        state.meta.remove(name);
        state.modified.remove(name);
        state.labels.remove(name);
        Ok(())
    }

    async fn load(
        &self,
        request: &LoadRequest,
        data: Receiver<Bytes>,
    ) -> Result<LoadOutcome, WarehouseError> {
        let result = self.load_rows(request, data).await;
        if let Err(error @ (WarehouseError::Api { .. } | WarehouseError::Job { .. })) = &result {
            // The job ran and failed: its id is used up, like BigQuery's.
            self.lock()
                .failed_jobs
                .insert(request.job_id.clone(), error.to_string());
        }
        if result.is_ok() {
            self.lock().job_states.remove(&request.job_id);
        }
        result
    }

    async fn query(&self, sql: &str, _params: &[QueryParam]) -> Result<QueryRows, WarehouseError> {
        let state = self.begin("query", format!("query {sql}"))?;
        if sql.contains(LEDGER_TABLE)
            && sql.contains("QUALIFY ROW_NUMBER() OVER (PARTITION BY `target`")
        {
            return latest_runs(&state, sql);
        }
        let words: Vec<&str> = sql.split_whitespace().collect();
        let context = "fake query";
        match words.as_slice() {
            [select, count, from, table]
                if select.eq_ignore_ascii_case("select")
                    && count.eq_ignore_ascii_case("count(*)")
                    && from.eq_ignore_ascii_case("from") =>
            {
                let name = table
                    .trim_matches('`')
                    .rsplit('.')
                    .next()
                    .unwrap_or_default();
                let (_, rows) = state
                    .tables
                    .get(name)
                    .ok_or_else(|| not_found(context, name))?;
                Ok(QueryRows {
                    columns: vec![super::QueryColumn {
                        name: "f0_".into(),
                        bq_type: Some(crate::schema::BqType::Int64),
                        repeated: false,
                    }],
                    rows: vec![vec![Value::from(rows.len() as u64)]],
                    num_dml_affected_rows: None,
                })
            }
            _ => Err(WarehouseError::Invalid(format!(
                "FakeWarehouse can't run this query: {sql}"
            ))),
        }
    }

    async fn merge(&self, request: &MergeRequest) -> Result<MergeOutcome, WarehouseError> {
        let mut state = self.begin(
            "merge",
            format!("merge {} into {}", request.staging, request.target),
        )?;
        let context = format!("merge {} into {}", request.staging, request.target);
        super::merge_statement(request, str::to_string)?;
        let staging = state
            .tables
            .get(&request.staging)
            .map(|(_, rows)| rows.clone())
            .ok_or_else(|| not_found(&context, &request.staging))?;
        let (_, target) = state
            .tables
            .get_mut(&request.target)
            .ok_or_else(|| not_found(&context, &request.target))?;
        let key_of = |row: &Map<String, Value>| {
            request
                .keys
                .iter()
                .map(|key| row.get(key).cloned().unwrap_or(Value::Null))
                .collect::<Vec<_>>()
        };
        // Like the MERGE's source: no NULL key; per key the greatest `order_by` (ties: the
        // last row read).
        let mut chosen: Vec<Map<String, Value>> = Vec::new();
        for row in staging {
            let key = key_of(&row);
            if key.iter().any(Value::is_null) {
                continue;
            }
            match chosen.iter_mut().find(|kept| key_of(kept) == key) {
                Some(kept) => {
                    let newer = request.order_by.as_ref().is_none_or(|column| {
                        compare(
                            row.get(column).unwrap_or(&Value::Null),
                            kept.get(column).unwrap_or(&Value::Null),
                        ) != Ordering::Less
                    });
                    if newer {
                        *kept = row;
                    }
                }
                None => chosen.push(row),
            }
        }
        let mut outcome = MergeOutcome::default();
        let mut inserted = 0;
        let mut updated = 0;
        for source in chosen {
            let key = key_of(&source);
            let values: Map<String, Value> = request
                .columns
                .iter()
                .map(|column| {
                    (
                        column.clone(),
                        source.get(column).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect();
            match target.iter_mut().find(|row| key_of(row) == key) {
                Some(row) => {
                    row.extend(values);
                    if request.deletes == Deletes::Soft {
                        row.insert(DELETED_AT_COLUMN.to_string(), Value::Null);
                    }
                    updated += 1;
                }
                None => {
                    target.push(values);
                    inserted += 1;
                }
            }
        }
        outcome.affected_rows = inserted + updated;
        outcome.inserted = Some(inserted);
        outcome.updated = Some(updated);
        state.touch(&request.target);
        outcome.deleted = apply_deletes(&mut state, request, &context)?;
        lost_reply(&mut state, "merge")?;
        Ok(outcome)
    }

    async fn dry_run_merge(
        &self,
        request: &MergeRequest,
        target: &WarehouseTable,
    ) -> Result<Vec<(String, u64)>, WarehouseError> {
        let state = self.begin(
            "dry_run_merge",
            format!("dry_run_merge into {}", request.target),
        )?;
        let statements = super::dml::dry_run_statements(request, target, str::to_string)?;
        // The target's JSON bytes stand for its size (q + t, roughly): what the fake can tell.
        let bytes: u64 = state
            .tables
            .get(&request.target)
            .map(|(_, rows)| {
                rows.iter()
                    .map(|row| Value::Object(row.clone()).to_string().len() as u64)
                    .sum()
            })
            .unwrap_or(0);
        Ok(statements
            .into_iter()
            .map(|(name, _)| (name, bytes))
            .collect())
    }

    async fn count_duplicate_keys(
        &self,
        table: &str,
        keys: &[String],
    ) -> Result<u64, WarehouseError> {
        let state = self.begin(
            "count_duplicate_keys",
            format!("count_duplicate_keys {table}"),
        )?;
        let (_, rows) = state
            .tables
            .get(table)
            .ok_or_else(|| not_found("duplicate keys", table))?;
        let mut seen: Vec<Vec<Value>> = Vec::new();
        let mut duplicates = 0;
        for row in rows {
            let key: Vec<Value> = keys
                .iter()
                .map(|key| row.get(key).cloned().unwrap_or(Value::Null))
                .collect();
            if seen.contains(&key) {
                duplicates += 1;
            } else {
                seen.push(key);
            }
        }
        Ok(duplicates)
    }

    async fn copy_rows_by_key(&self, request: &CopyRowsByKey) -> Result<u64, WarehouseError> {
        let mut state = self.begin(
            "copy_rows_by_key",
            format!(
                "copy_rows_by_key {} into {} keys={}",
                request.from,
                request.into,
                request.values.len()
            ),
        )?;
        let context = format!("copy rows of {} into {}", request.from, request.into);
        // Keys compare as BigQuery's text form (a loaded number and its text are one key).
        let text = |value: &Value| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let (_, from) = state
            .tables
            .get(&request.from)
            .ok_or_else(|| not_found(&context, &request.from))?;
        let copied: Vec<Map<String, Value>> = from
            .iter()
            .filter(|row| {
                let key: Vec<String> = request
                    .keys
                    .iter()
                    .map(|(name, _)| row.get(name).map(text).unwrap_or_default())
                    .collect();
                request.values.contains(&key)
            })
            .map(|row| {
                request
                    .columns
                    .iter()
                    .map(|column| {
                        (
                            column.clone(),
                            row.get(column).cloned().unwrap_or(Value::Null),
                        )
                    })
                    .collect()
            })
            .collect();
        let count = copied.len() as u64;
        let (_, into) = state
            .tables
            .get_mut(&request.into)
            .ok_or_else(|| not_found(&context, &request.into))?;
        into.extend(copied);
        Ok(count)
    }

    async fn insert_from(
        &self,
        staging: &str,
        target: &str,
        columns: &[String],
        replace: bool,
    ) -> Result<(), WarehouseError> {
        let mut state = self.begin(
            "insert_from",
            format!("insert_from {staging} into {target} replace={replace}"),
        )?;
        let context = format!("write {staging} into {target}");
        let rows: Vec<Map<String, Value>> = state
            .tables
            .get(staging)
            .ok_or_else(|| not_found(&context, staging))?
            .1
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .map(|column| {
                        (
                            column.clone(),
                            row.get(column).cloned().unwrap_or(Value::Null),
                        )
                    })
                    .collect()
            })
            .collect();
        let (_, existing) = state
            .tables
            .get_mut(target)
            .ok_or_else(|| not_found(&context, target))?;
        if replace {
            *existing = rows;
        } else {
            existing.extend(rows);
        }
        state.touch(target);
        lost_reply(&mut state, "insert_from")
    }

    async fn max_value(&self, table: &str, column: &str) -> Result<Value, WarehouseError> {
        let state = self.begin("max_value", format!("max_value {table}.{column}"))?;
        let context = format!("max of {column} in table {table}");
        let (_, rows) = state
            .tables
            .get(table)
            .ok_or_else(|| not_found(&context, table))?;
        Ok(rows
            .iter()
            .filter_map(|row| row.get(column))
            .filter(|value| !value.is_null())
            .max_by(|a, b| compare(a, b))
            .cloned()
            .unwrap_or(Value::Null))
    }

    async fn cancel_job(&self, job_id: &str) -> Result<(), WarehouseError> {
        let _state = self.begin("cancel_job", format!("cancel_job {job_id}"))?;
        Ok(())
    }

    async fn job_state(&self, job_id: &str) -> Result<Option<JobState>, WarehouseError> {
        let state = self.begin("job_state", format!("job_state {job_id}"))?;
        if let Some(set) = state.job_states.get(job_id) {
            return Ok(Some(set.clone()));
        }
        if let Some(outcome) = state.loads.get(job_id) {
            return Ok(Some(JobState::Done {
                output_rows: outcome.output_rows,
            }));
        }
        if state.copies.contains(job_id) {
            return Ok(Some(JobState::Done { output_rows: 0 }));
        }
        Ok(state
            .failed_jobs
            .get(job_id)
            .map(|message| JobState::Failed {
                message: message.clone(),
            }))
    }

    async fn copy_table(&self, request: &CopyRequest) -> Result<(), WarehouseError> {
        let mut state = self.begin(
            "copy_table",
            format!(
                "copy_table {} into {} {}",
                request.source,
                request.target,
                request.disposition.as_api()
            ),
        )?;
        let context = format!("copy {} into {}", request.source, request.target);
        if state.copies.contains(&request.job_id) {
            // The job exists and is done (BigQuery answers 409; the client awaits it).
            return Ok(());
        }
        let (schema, rows) = state
            .tables
            .get(&request.source)
            .cloned()
            .ok_or_else(|| not_found(&context, &request.source))?;
        let carried = if state.copy_takes_description {
            state
                .meta
                .get(&request.source)
                .and_then(|(meta, _)| meta.description.clone())
                .or_else(|| schema.description.clone())
        } else {
            schema.description.clone()
        };
        let renamed = WarehouseTable {
            name: request.target.clone(),
            description: carried,
            ..schema
        };
        match (state.tables.get_mut(&request.target), request.disposition) {
            (None, _) | (Some(_), Disposition::Truncate) => {
                // WRITE_TRUNCATE replaces rows and schema; the target's metadata stays.
                state.tables.insert(request.target.clone(), (renamed, rows));
            }
            (Some((existing, _)), Disposition::Append) if !same_columns(existing, &renamed) => {
                return Err(invalid(&context, "Provided Schema does not match Table"));
            }
            // Like BigQuery ("Incompatible table partitioning specification"): a copy appends
            // only between tables partitioned and clustered alike.
            (Some((existing, _)), Disposition::Append)
                if existing.partitioning != renamed.partitioning
                    || existing.clustering != renamed.clustering =>
            {
                return Err(invalid(
                    &context,
                    format!(
                        "Incompatible table partitioning specification: the destination is clustered by [{}], the source by [{}]",
                        existing.clustering.join(", "),
                        renamed.clustering.join(", ")
                    ),
                ));
            }
            (Some((_, existing)), Disposition::Append) => existing.extend(rows),
            (Some(_), Disposition::Empty) => {
                return Err(invalid(&context, "Already Exists: table is not empty"));
            }
        }
        state.touch(&request.target);
        state.copies.insert(request.job_id.clone());
        lost_reply(&mut state, "copy_table")
    }

    async fn create_table_with(
        &self,
        table: &WarehouseTable,
        meta: &TableMeta,
    ) -> Result<(), WarehouseError> {
        let mut state = self.begin("create_table", format!("create_table {}", table.name))?;
        if !state.dataset_exists {
            return Err(not_found(
                &format!("create table {}", table.name),
                "dataset",
            ));
        }
        if state.tables.contains_key(&table.name) {
            return Err(WarehouseError::Api {
                context: format!("create table {}", table.name),
                status: 409,
                reason: "duplicate".into(),
                message: format!("Already Exists: Table {}", table.name),
            });
        }
        state
            .tables
            .insert(table.name.clone(), (table.clone(), Vec::new()));
        state.meta.insert(table.name.clone(), (meta.clone(), 1));
        state.touch(&table.name);
        Ok(())
    }

    async fn patch_table_meta(
        &self,
        name: &str,
        meta: &TableMeta,
        etag: Option<&str>,
    ) -> Result<(), WarehouseError> {
        let mut state = self.begin("patch_table", format!("patch_table {name}"))?;
        let context = format!("patch table {name}");
        if !state.tables.contains_key(name) {
            return Err(not_found(&context, name));
        }
        let entry = state.meta.entry(name.to_string()).or_default();
        if etag.is_some_and(|etag| etag != entry.1.to_string()) {
            return Err(WarehouseError::Api {
                context,
                status: 412,
                reason: "conditionNotMet".into(),
                message: "Precondition check failed.".into(),
            });
        }
        if meta.description.is_some() {
            entry.0.description.clone_from(&meta.description);
        }
        if meta.expires_at_ms.is_some() {
            entry.0.expires_at_ms = meta.expires_at_ms;
        }
        entry.1 += 1;
        state.touch(name);
        Ok(())
    }

    async fn update_table(&self, name: &str, update: &TableUpdate) -> Result<(), WarehouseError> {
        let mut state = self.begin("update_table", format!("update_table {name}"))?;
        let context = format!("update the metadata of table {name}");
        let (table, _) = state
            .tables
            .get_mut(name)
            .ok_or_else(|| not_found(&context, name))?;
        let mut changed = table.clone();
        for (column, description) in &update.column_descriptions {
            let field = changed
                .fields
                .iter_mut()
                .find(|field| field.name.eq_ignore_ascii_case(column))
                .ok_or_else(|| invalid(&context, format!("no column {column}")))?;
            field.description = Some(description.clone());
        }
        if let Some(description) = &update.description {
            changed.description = Some(description.clone());
        }
        if let Some(clustering) = &update.clustering {
            changed.clustering.clone_from(clustering);
        }
        *table = changed;
        Ok(())
    }

    async fn list_tables(&self, prefix: &str) -> Result<Vec<String>, WarehouseError> {
        let state = self.begin("list_tables", format!("list_tables {prefix}"))?;
        Ok(state
            .tables
            .keys()
            .filter(|name| name.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn list_dataset(&self) -> Result<Vec<ListedTable>, WarehouseError> {
        let state = self.begin("list_dataset", "list_dataset".into())?;
        if !state.dataset_exists {
            return Err(not_found("list tables", "dataset"));
        }
        Ok(state
            .tables
            .keys()
            .map(|name| ListedTable {
                name: name.clone(),
                kind: Some("TABLE".into()),
                labels: Some(state.labels.get(name).cloned().unwrap_or_default()),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::BqType;
    use serde_json::json;

    fn table() -> WarehouseTable {
        WarehouseTable {
            name: "t".into(),
            fields: vec![
                WarehouseField::new("id", BqType::Int64, FieldMode::Required),
                WarehouseField::new("v", BqType::String, FieldMode::Nullable),
            ],
            partitioning: None,
            clustering: Vec::new(),
            description: None,
        }
    }

    async fn load(
        fake: &FakeWarehouse,
        table: &str,
        disposition: Disposition,
        job: &str,
        body: &str,
    ) -> Result<LoadOutcome, WarehouseError> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Bytes::from(body.to_string())).await.unwrap();
        drop(tx);
        let request = LoadRequest {
            table: table.into(),
            schema: table_named(table),
            disposition,
            job_id: job.into(),
            allow_field_addition: false,
            format: crate::schema::LoadFormat::Ndjson,
        };
        fake.load(&request, rx).await
    }

    fn table_named(name: &str) -> WarehouseTable {
        WarehouseTable {
            name: name.into(),
            ..table()
        }
    }

    #[tokio::test]
    async fn loads_merges_and_logs() {
        let fake = FakeWarehouse::new();
        assert!(matches!(
            fake.ensure_dataset(false).await,
            Err(WarehouseError::DatasetMissing { .. })
        ));
        fake.ensure_dataset(true).await.unwrap();
        let outcome = load(
            &fake,
            "t",
            Disposition::Truncate,
            "j1",
            "{\"id\":1,\"v\":\"a\"}\n{\"id\":2}\n",
        )
        .await
        .unwrap();
        assert_eq!(outcome.output_rows, 2);
        load(&fake, "t", Disposition::Append, "j2", "{\"id\":3}\n")
            .await
            .unwrap();
        assert_eq!(fake.rows("t").unwrap().len(), 3);
        // Same job id: no second append.
        load(&fake, "t", Disposition::Append, "j2", "{\"id\":3}\n")
            .await
            .unwrap();
        assert_eq!(fake.rows("t").unwrap().len(), 3);
        // A bad row fails and leaves the table alone, even for a truncate.
        let error = load(
            &fake,
            "t",
            Disposition::Truncate,
            "j3",
            "{\"id\":9}\n{\"nope\":1}\n",
        )
        .await
        .unwrap_err();
        assert!(error.to_string().contains("no such field: nope"), "{error}");
        assert_eq!(fake.rows("t").unwrap().len(), 3);

        load(
            &fake,
            "s",
            Disposition::Truncate,
            "j4",
            "{\"id\":2,\"v\":\"b\"}\n{\"id\":4,\"v\":\"d\"}\n",
        )
        .await
        .unwrap();
        let merged = fake
            .merge(&MergeRequest {
                staging: "s".into(),
                target: "t".into(),
                keys: vec!["id".into()],
                columns: vec!["id".into(), "v".into()],
                order_by: None,
                job_id: None,
                deletes: Deletes::Keep,
                keys_table: None,
            })
            .await
            .unwrap();
        assert_eq!(
            (merged.affected_rows, merged.inserted, merged.updated),
            (2, Some(1), Some(1))
        );
        assert_eq!(fake.max_value("t", "id").await.unwrap(), json!(4));
        assert_eq!(
            fake.query("SELECT COUNT(*) FROM `p.d.t`", &[])
                .await
                .unwrap()
                .scalar(),
            Some(&json!(4))
        );
        assert_eq!(fake.count("load t"), 4);
        assert_eq!(fake.log()[0], "ensure_dataset create=false");
    }

    #[tokio::test]
    async fn injected_failures() {
        let fake = FakeWarehouse::with_dataset();
        fake.fail_next("create_table", true);
        let error = fake.create_table(&table()).await.unwrap_err();
        assert!(error.retryable());
        fake.create_table(&table()).await.unwrap();
        assert!(
            fake.create_table(&table())
                .await
                .unwrap_err()
                .is_duplicate()
        );
        fake.fail_load_after_bytes(Some(5));
        assert!(
            load(&fake, "t", Disposition::Truncate, "j", "{\"id\":1}\n")
                .await
                .is_err()
        );
        fake.alter_table(
            "t",
            &[
                AlterColumn::Add(WarehouseField::new("x", BqType::Int64, FieldMode::Nullable)),
                AlterColumn::DropNotNull("id".into()),
            ],
        )
        .await
        .unwrap();
        let got = fake.get_table("t").await.unwrap().unwrap();
        assert_eq!(got.table.fields.len(), 3);
        assert_eq!(got.table.fields[0].mode, FieldMode::Nullable);
    }
}
