//! `datasync runs`: the recent runs in the ledger, and one run's rows, as text or JSON. The
//! queries read `_datasync_runs` only (a small table); rendering is pure.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{LedgerRow, RUNS_TABLE, cell_text, schema};
use crate::plan::render::group_digits;
use crate::schema::BqType;
use crate::warehouse::{QueryParam, QueryRows, Warehouse, WarehouseError, quote_ident};

/// One run in the list: its tables summed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    /// The run.
    pub run_id: String,
    /// When its first table started.
    #[serde(serialize_with = "super::micros")]
    pub started_at: Option<DateTime<Utc>>,
    /// When its last table ended.
    #[serde(serialize_with = "super::micros")]
    pub finished_at: Option<DateTime<Utc>>,
    /// `INDEX/COUNT` for one shard of several.
    pub shard: Option<String>,
    /// The applied plan's fingerprint.
    pub plan_fingerprint: Option<String>,
    /// Tables recorded.
    pub tables: u64,
    /// Tables by status.
    pub done: u64,
    /// Tables by status.
    pub failed: u64,
    /// Tables by status.
    pub skipped: u64,
    /// Tables by status.
    pub interrupted: u64,
    /// Rows read from the sources.
    pub rows_extracted: u64,
    /// Rows loaded.
    pub rows_loaded: u64,
}

impl RunSummary {
    /// `3 done, 1 failed`.
    pub fn status(&self) -> String {
        let parts: Vec<String> = [
            (self.done, "done"),
            (self.failed, "failed"),
            (self.skipped, "skipped"),
            (self.interrupted, "interrupted"),
        ]
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, name)| format!("{count} {name}"))
        .collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    }
}

fn table_name(destination: &str) -> String {
    quote_ident(&format!("{destination}.{RUNS_TABLE}"))
}

/// The list query: the `limit` most recent runs (by their first table's start), only those with
/// a table matching `pattern` (an RE2 expression on `table`, a parameter) when given.
pub fn list_sql(destination: &str, limit: u32, pattern: bool) -> String {
    let c = quote_ident;
    let count = |status: &str| format!("COUNTIF({} = '{status}') AS {status}", c("status"));
    let filter = if pattern {
        format!(" WHERE REGEXP_CONTAINS({}, @pattern)", c("table"))
    } else {
        String::new()
    };
    format!(
        "SELECT {run}, MIN({started}) AS started_at, MAX({finished}) AS finished_at, MAX({shard}) AS shard, MAX({plan}) AS plan_fingerprint, COUNT(*) AS tables, {done}, {failed}, {skipped}, {interrupted}, SUM({extracted}) AS rows_extracted, SUM({loaded}) AS rows_loaded FROM {table}{filter} GROUP BY {run} ORDER BY started_at DESC, {run} DESC LIMIT {limit}",
        run = c("run_id"),
        started = c("started_at"),
        finished = c("finished_at"),
        shard = c("shard"),
        plan = c("plan_fingerprint"),
        done = count("done"),
        failed = count("failed"),
        skipped = count("skipped"),
        interrupted = count("interrupted"),
        extracted = c("rows_extracted"),
        loaded = c("rows_loaded"),
        table = table_name(destination),
    )
}

/// The query of one run's rows (those of tables matching `pattern` when given).
pub fn run_sql(destination: &str, pattern: bool) -> String {
    let columns: Vec<String> = schema()
        .fields
        .iter()
        .map(|field| quote_ident(&field.name))
        .collect();
    let filter = if pattern {
        format!(" AND REGEXP_CONTAINS({}, @pattern)", quote_ident("table"))
    } else {
        String::new()
    };
    format!(
        "SELECT {} FROM {} WHERE {} = @run_id{filter} ORDER BY {}, {}",
        columns.join(", "),
        table_name(destination),
        quote_ident("run_id"),
        quote_ident("table"),
        quote_ident("started_at"),
    )
}

/// A TIMESTAMP cell: microseconds since the epoch (BigQuery's `useInt64Timestamp`), or RFC 3339
/// text.
fn timestamp_cell(value: &serde_json::Value) -> Option<DateTime<Utc>> {
    let text = cell_text(value)?;
    match text.parse::<i64>() {
        Ok(micros) => DateTime::from_timestamp_micros(micros),
        Err(_) => DateTime::parse_from_rfc3339(&text)
            .ok()
            .map(|at| at.with_timezone(&Utc)),
    }
}

fn number_cell(value: &serde_json::Value) -> Option<u64> {
    cell_text(value).and_then(|text| text.parse().ok())
}

/// Reads a query's rows by column name.
struct Cells<'a> {
    rows: &'a QueryRows,
}

impl<'a> Cells<'a> {
    fn get(&self, row: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
        self.rows
            .columns
            .iter()
            .position(|column| column.name == name)
            .and_then(|at| row.get(at))
            .unwrap_or(&serde_json::Value::Null)
    }

    fn text(&self, row: &'a [serde_json::Value], name: &str) -> Option<String> {
        cell_text(self.get(row, name))
    }
}

fn parameters(pattern: Option<&str>) -> Vec<QueryParam> {
    pattern
        .map(|pattern| {
            QueryParam::new(
                "pattern",
                BqType::String,
                Some(crate::sync::patterns::glob(pattern).as_str().to_string()),
            )
        })
        .into_iter()
        .collect()
}

/// The `limit` most recent runs, newest first (only runs with a table matching the glob
/// `pattern`, counting only those tables, when given).
pub async fn list(
    warehouse: &dyn Warehouse,
    destination: &str,
    limit: u32,
    pattern: Option<&str>,
) -> Result<Vec<RunSummary>, WarehouseError> {
    let sql = list_sql(destination, limit, pattern.is_some());
    let rows = warehouse.query(&sql, &parameters(pattern)).await?;
    let cells = Cells { rows: &rows };
    Ok(rows
        .rows
        .iter()
        .map(|row| {
            let count = |name: &str| number_cell(cells.get(row, name)).unwrap_or(0);
            RunSummary {
                run_id: cells.text(row, "run_id").unwrap_or_default(),
                started_at: timestamp_cell(cells.get(row, "started_at")),
                finished_at: timestamp_cell(cells.get(row, "finished_at")),
                shard: cells.text(row, "shard"),
                plan_fingerprint: cells.text(row, "plan_fingerprint"),
                tables: count("tables"),
                done: count("done"),
                failed: count("failed"),
                skipped: count("skipped"),
                interrupted: count("interrupted"),
                rows_extracted: count("rows_extracted"),
                rows_loaded: count("rows_loaded"),
            }
        })
        .collect())
}

/// The rows of the run `run_id` (of tables matching `pattern`, when given), by table.
pub async fn run_rows(
    warehouse: &dyn Warehouse,
    destination: &str,
    run_id: &str,
    pattern: Option<&str>,
) -> Result<Vec<LedgerRow>, WarehouseError> {
    let mut params = parameters(pattern);
    params.push(QueryParam::new(
        "run_id",
        BqType::String,
        Some(run_id.to_string()),
    ));
    let rows = warehouse
        .query(&run_sql(destination, pattern.is_some()), &params)
        .await?;
    let cells = Cells { rows: &rows };
    Ok(rows
        .rows
        .iter()
        .map(|row| {
            let text = |name: &str| cells.text(row, name);
            let number = |name: &str| number_cell(cells.get(row, name));
            LedgerRow {
                run_id: text("run_id").unwrap_or_default(),
                plan_fingerprint: text("plan_fingerprint"),
                shard: text("shard"),
                table: text("table").unwrap_or_default(),
                source: text("source"),
                target: text("target").unwrap_or_default(),
                mode: text("mode"),
                status: text("status").unwrap_or_default(),
                rows_extracted: number("rows_extracted"),
                rows_loaded: number("rows_loaded"),
                rows_rejected: number("rows_rejected"),
                cursor_column: text("cursor_column"),
                watermark: text("watermark"),
                watermark_type: text("watermark_type"),
                target_modified: text("target_modified"),
                job_ids: cells
                    .get(row, "job_ids")
                    .as_array()
                    .map(|ids| ids.iter().filter_map(cell_text).collect())
                    .unwrap_or_default(),
                started_at: timestamp_cell(cells.get(row, "started_at")),
                finished_at: timestamp_cell(cells.get(row, "finished_at")),
                error: text("error"),
                datasync_version: text("datasync_version"),
            }
        })
        .collect())
}

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".into(),
        |at| at.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "-".into(), group_digits)
}

/// Left-aligned columns, two spaces apart, no trailing blanks.
fn columns(rows: &[Vec<String>]) -> String {
    let width = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..width)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// The list as text: one line per run, newest first.
pub fn render_list(destination: &str, runs: &[RunSummary]) -> String {
    if runs.is_empty() {
        return format!("no runs recorded in `{destination}.{RUNS_TABLE}` match\n");
    }
    let sharded = runs.iter().any(|run| run.shard.is_some());
    let mut header = vec!["run", "started (UTC)", "finished (UTC)"];
    if sharded {
        header.push("shard");
    }
    header.extend(["tables", "rows loaded", "status"]);
    let mut rows = vec![header.into_iter().map(str::to_string).collect::<Vec<_>>()];
    for run in runs {
        let mut row = vec![
            run.run_id.clone(),
            when(run.started_at),
            when(run.finished_at),
        ];
        if sharded {
            row.push(run.shard.clone().unwrap_or_else(|| "-".into()));
        }
        row.extend([
            group_digits(run.tables),
            group_digits(run.rows_loaded),
            run.status(),
        ]);
        rows.push(row);
    }
    let mut out = columns(&rows);
    let _ = writeln!(
        out,
        "{} run(s) from `{destination}.{RUNS_TABLE}`; `datasync runs --run RUN_ID` shows one run's tables",
        runs.len()
    );
    out
}

/// One run as text: a heading, one line per table, then the tables' errors.
pub fn render_run(destination: &str, run_id: &str, rows: &[LedgerRow]) -> String {
    let mut out = String::new();
    let first = rows.first();
    let mut heading = format!("run {run_id} in `{destination}`");
    let started = rows.iter().filter_map(|row| row.started_at).min();
    let finished = rows.iter().filter_map(|row| row.finished_at).max();
    let _ = write!(
        heading,
        ": started {} UTC, finished {} UTC",
        when(started),
        when(finished)
    );
    if let Some(plan) = first.and_then(|row| row.plan_fingerprint.as_deref()) {
        let _ = write!(heading, ", plan {plan}");
    }
    if let Some(shard) = first.and_then(|row| row.shard.as_deref()) {
        let _ = write!(heading, ", shard {shard}");
    }
    if let Some(version) = first.and_then(|row| row.datasync_version.as_deref()) {
        let _ = write!(heading, ", datasync {version}");
    }
    let _ = writeln!(out, "{heading}");
    let mut table = vec![
        [
            "table",
            "target",
            "mode",
            "status",
            "extracted",
            "loaded",
            "rejected",
            "watermark",
        ]
        .map(str::to_string)
        .to_vec(),
    ];
    for row in rows {
        let watermark = match (&row.watermark, &row.watermark_type) {
            (Some(value), Some(bq_type)) => format!("{value} ({bq_type})"),
            (None, Some(_)) => "NULL".into(),
            _ => "-".into(),
        };
        table.push(vec![
            row.table.clone(),
            row.target.clone(),
            row.mode.clone().unwrap_or_else(|| "-".into()),
            row.status.clone(),
            count(row.rows_extracted),
            count(row.rows_loaded),
            count(row.rows_rejected),
            watermark,
        ]);
    }
    out.push_str(&columns(&table));
    for row in rows {
        if let Some(error) = &row.error {
            let _ = writeln!(out, "{}: {error}", row.table);
        }
        if !row.job_ids.is_empty() {
            let _ = writeln!(out, "{}: jobs {}", row.table, row.job_ids.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Option<DateTime<Utc>> {
        Some(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    fn summary(run_id: &str, shard: Option<&str>) -> RunSummary {
        RunSummary {
            run_id: run_id.into(),
            started_at: at("2026-12-01T10:00:00Z"),
            finished_at: at("2026-12-01T10:01:02.5Z"),
            shard: shard.map(str::to_string),
            plan_fingerprint: Some("0123456789abcdef".into()),
            tables: 4,
            done: 3,
            failed: 1,
            skipped: 0,
            interrupted: 0,
            rows_extracted: 1_234_567,
            rows_loaded: 1_234_560,
        }
    }

    fn row(table: &str, status: &str) -> LedgerRow {
        LedgerRow {
            run_id: "1796000000_000001".into(),
            plan_fingerprint: Some("0123456789abcdef".into()),
            shard: Some("0/2".into()),
            table: table.into(),
            source: Some("shop".into()),
            target: table.replace("shop.", ""),
            mode: Some("incremental".into()),
            status: status.into(),
            rows_extracted: Some(1_000),
            rows_loaded: Some(1_000),
            rows_rejected: Some(0),
            cursor_column: Some("updated_at".into()),
            watermark: Some("2026-11-30T23:59:59.999999Z".into()),
            watermark_type: Some("TIMESTAMP".into()),
            target_modified: Some("1796000001000".into()),
            job_ids: vec!["datasync_1796000000_000001_orders".into()],
            started_at: at("2026-12-01T10:00:00Z"),
            finished_at: at("2026-12-01T10:00:09Z"),
            error: None,
            datasync_version: Some("1.2.3".into()),
        }
    }

    #[test]
    fn the_run_list() {
        let mut second = summary("1795990000_000002", None);
        second.done = 0;
        second.failed = 0;
        second.interrupted = 2;
        second.tables = 2;
        second.rows_loaded = 0;
        insta::assert_snapshot!(render_list(
            "demo-project.shop",
            &[summary("1796000000_000001", Some("0/2")), second]
        ));
    }

    #[test]
    fn one_run() {
        let mut failed = row("shop.items", "failed");
        failed.mode = Some("replace".into());
        failed.rows_loaded = None;
        failed.cursor_column = None;
        failed.watermark = None;
        failed.watermark_type = None;
        failed.error = Some("load into staging failed: quota exceeded".into());
        failed.job_ids.clear();
        insta::assert_snapshot!(render_run(
            "demo-project.shop",
            "1796000000_000001",
            &[row("shop.orders", "done"), failed]
        ));
    }

    #[test]
    fn no_match_says_so() {
        assert_eq!(
            render_list("p.d", &[]),
            "no runs recorded in `p.d._datasync_runs` match\n"
        );
    }

    #[test]
    fn the_queries() {
        let list = list_sql("p.d", 20, true);
        assert!(
            list.starts_with("SELECT `run_id`, MIN(`started_at`)"),
            "{list}"
        );
        assert!(list.contains("FROM `p.d._datasync_runs` WHERE REGEXP_CONTAINS(`table`, @pattern) GROUP BY `run_id`"), "{list}");
        assert!(list.ends_with("LIMIT 20"), "{list}");
        assert!(!list_sql("p.d", 5, false).contains("WHERE"));
        let run = run_sql("p.d", false);
        assert!(run.contains("WHERE `run_id` = @run_id ORDER BY"), "{run}");
        assert!(run.contains("`job_ids`"), "{run}");
    }

    #[test]
    fn cells_read_both_timestamp_forms() {
        assert_eq!(
            timestamp_cell(&serde_json::json!("1704164645000001")),
            at("2024-01-02T03:04:05.000001Z")
        );
        assert_eq!(
            timestamp_cell(&serde_json::json!("2024-01-02T03:04:05.000001Z")),
            at("2024-01-02T03:04:05.000001Z")
        );
        assert_eq!(timestamp_cell(&serde_json::Value::Null), None);
    }
}
