//! What apply did, per table: rendered as a text table or JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::diagnostic::Code;
use crate::plan::render::group_digits;
use crate::plan::{TablePlan, WriteOp};
use crate::schema::Deletes;
use crate::source::ExtractStats;
use crate::sync::executor::WriteNotes;

/// A table's end state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableStatus {
    /// Rows written (or, in a dry run, extracted).
    Done,
    /// Failed; the target was left as it was.
    Failed,
    /// Not run: blocked or erroneous in the plan.
    Skipped,
}

/// One table's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TableOutcome {
    /// `source.table`.
    pub table: String,
    /// Target.
    pub target: String,
    /// Status.
    pub status: TableStatus,
    /// Rows extracted.
    pub rows_extracted: u64,
    /// Rows BigQuery loaded (None in a dry run).
    pub rows_loaded: Option<u64>,
    /// Encoded bytes produced (the load file: NDJSON or Avro).
    pub bytes: u64,
    /// Values replaced by NULL/U+FFFD per policy, or failing their row.
    pub bad_values: u64,
    /// Rows left out because a value failed them (within `max_parse_failures`); they are in
    /// the dataset's `_datasync_rejects` table (at most 10,000 per table and run).
    pub rows_left_out: u64,
    /// The first bad-value messages, each naming its row.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bad_value_samples: Vec<String>,
    /// Merge: staged rows that shared their key with another staged row (one per key was
    /// merged, the greatest cursor winning); a warning when above 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_keys: Option<u64>,
    /// Merge with `deletes`: `hard` or `soft`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletes: Option<Deletes>,
    /// Target rows deleted (`hard`) or soft-deleted (`soft`) because their key left the
    /// source, when BigQuery reports it (the emulator does not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_deleted: Option<u64>,
    /// Replace: rows an earlier run loaded, kept because this run rejected their new version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earlier_rows_kept: Option<u64>,
    /// Seconds.
    pub seconds: f64,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The stable code of `error` (the plan's diagnostic code for a skipped table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    /// Chunks the table was read in (1 unless the plan split it; 0 when it did not run).
    pub chunks: usize,
    /// Chunks a rerun of a killed apply found loaded already and did not read again.
    #[serde(skip_serializing_if = "is_zero")]
    pub chunks_skipped: usize,
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

impl TableOutcome {
    /// `table` with `status` and nothing counted yet.
    fn new(table: &TablePlan, status: TableStatus) -> Self {
        Self {
            table: table.label.clone(),
            target: table.target.clone(),
            status,
            rows_extracted: 0,
            rows_loaded: None,
            bytes: 0,
            bad_values: 0,
            rows_left_out: 0,
            bad_value_samples: Vec::new(),
            duplicate_keys: None,
            deletes: None,
            rows_deleted: None,
            earlier_rows_kept: None,
            seconds: 0.0,
            error: None,
            code: None,
            chunks: 0,
            chunks_skipped: 0,
        }
    }

    /// With the table's chunk count and how many of them a resumed run skipped.
    pub fn with_chunks(mut self, chunks: usize, skipped: usize) -> Self {
        self.chunks = chunks;
        self.chunks_skipped = skipped;
        self
    }

    /// `stats` counted in.
    fn with_stats(mut self, stats: &ExtractStats) -> Self {
        self.rows_extracted = stats.rows;
        self.bytes = stats.bytes;
        self.bad_values = stats.bad_values;
        self.rows_left_out = stats.failed_rows;
        self.bad_value_samples = stats.failures.iter().take(5).cloned().collect();
        self
    }

    /// A table that ran.
    pub fn done(
        table: &TablePlan,
        stats: &ExtractStats,
        loaded: Option<u64>,
        notes: &WriteNotes,
        seconds: f64,
    ) -> Self {
        let mut outcome = Self::new(table, TableStatus::Done).with_stats(stats);
        outcome.rows_loaded = loaded;
        outcome.seconds = seconds;
        outcome.duplicate_keys = notes.duplicate_keys;
        outcome.deletes = match table.write_op() {
            Some(WriteOp::Merge { deletes, .. }) if !deletes.is_keep() && loaded.is_some() => {
                Some(*deletes)
            }
            _ => None,
        };
        outcome.rows_deleted = notes.deleted;
        outcome.earlier_rows_kept = notes.kept_rows;
        outcome
    }

    /// A table that failed.
    pub fn failed(
        table: &TablePlan,
        error: String,
        stats: Option<&ExtractStats>,
        seconds: f64,
    ) -> Self {
        let mut outcome = Self::new(table, TableStatus::Failed);
        if let Some(stats) = stats {
            outcome = outcome.with_stats(stats);
        }
        outcome.seconds = seconds;
        outcome.error = Some(error);
        outcome.code = Some(Code::ApplyTableFailed);
        outcome
    }

    /// A table the plan does not run.
    pub fn skipped(table: &TablePlan, error: String) -> Self {
        let mut outcome = Self::new(table, TableStatus::Skipped);
        outcome.error = Some(error);
        outcome.code = table.errors.first().map(|diagnostic| diagnostic.code);
        outcome
    }
}

/// How the run was recorded in the dataset's run ledger (`_datasync_runs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerOutcome {
    /// `project.dataset._datasync_runs`.
    pub table: String,
    /// The run id the rows carry (`datasync runs --run RUN_ID`).
    pub run_id: String,
    /// Rows written (one per table).
    pub rows: u64,
    /// Why the rows were not written: the targets were written as reported, but the next run
    /// reads its bounds from the targets.
    pub error: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    /// `project.dataset`.
    pub destination: String,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Per table.
    pub tables: Vec<TableOutcome>,
    /// Wall time.
    pub seconds: f64,
    /// The run's record in the ledger (none for a dry run, or when no table ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerOutcome>,
}

impl ApplyReport {
    /// Whether every table ran.
    pub fn succeeded(&self) -> bool {
        self.tables
            .iter()
            .all(|table| table.status == TableStatus::Done)
    }

    /// Whether the run's ledger rows could not be written (the exit status says so).
    pub fn ledger_failed(&self) -> bool {
        self.ledger
            .as_ref()
            .is_some_and(|ledger| ledger.error.is_some())
    }

    /// A text table.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let header = [
            "table",
            "target",
            "status",
            "extracted",
            "loaded",
            "bad values",
            "seconds",
        ];
        let mut rows: Vec<[String; 7]> = vec![header.map(str::to_string)];
        for table in &self.tables {
            rows.push([
                table.table.clone(),
                table.target.clone(),
                format!("{:?}", table.status).to_lowercase(),
                group_digits(table.rows_extracted),
                table
                    .rows_loaded
                    .map_or_else(|| "-".to_string(), group_digits),
                group_digits(table.bad_values),
                format!("{:.1}", table.seconds),
            ]);
        }
        let widths: Vec<usize> = (0..7)
            .map(|column| {
                rows.iter()
                    .map(|row| row[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:width$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        for table in &self.tables {
            if let Some(error) = &table.error {
                let _ = writeln!(out, "{}: {error}", table.table);
            }
            if table.chunks_skipped > 0 {
                let _ = writeln!(
                    out,
                    "{}: resumed: skipped {} of {} chunks already loaded",
                    table.table, table.chunks_skipped, table.chunks
                );
            }
            if table.rows_left_out > 0 {
                let _ = writeln!(
                    out,
                    "{}: warning: {} row(s) left out by bad values (max_parse_failures allows it){}",
                    table.table,
                    group_digits(table.rows_left_out),
                    if self.dry_run || table.status != TableStatus::Done {
                        String::new()
                    } else {
                        format!(
                            "; they are in `{}.{}`",
                            self.destination,
                            crate::sync::executor::REJECTS_TABLE
                        )
                    },
                );
            }
            for sample in &table.bad_value_samples {
                let _ = writeln!(out, "{}: {sample}", table.table);
            }
            for note in write_notes(table) {
                let _ = writeln!(out, "{}: {note}", table.table);
            }
        }
        let done = self
            .tables
            .iter()
            .filter(|table| table.status == TableStatus::Done)
            .count();
        let rows: u64 = self.tables.iter().map(|table| table.rows_extracted).sum();
        let _ = writeln!(
            out,
            "{}{done} of {} table(s) synced, {} rows, {:.1}s",
            if self.dry_run { "dry run: " } else { "" },
            self.tables.len(),
            group_digits(rows),
            self.seconds
        );
        match &self.ledger {
            Some(LedgerOutcome {
                table,
                run_id,
                error: Some(error),
                ..
            }) => {
                let _ = writeln!(
                    out,
                    "warning: run {run_id} is not recorded in `{table}` ({error}); the tables above were written as reported, and the next run reads its bounds from the targets"
                );
            }
            Some(LedgerOutcome { table, run_id, .. }) => {
                let _ = writeln!(
                    out,
                    "run {run_id} recorded in `{table}` (`datasync runs --run {run_id}`)"
                );
            }
            None => {}
        }
        out
    }
}

/// What a table's write paths found, one line each: duplicate merge keys (a warning), rows
/// whose key left the source, a replace's earlier rows kept for rejected keys.
fn write_notes(table: &TableOutcome) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(duplicates) = table.duplicate_keys.filter(|count| *count > 0) {
        notes.push(format!(
            "warning: {} staged row(s) shared a merge key with another row; one row per key was merged (the greatest cursor won)",
            group_digits(duplicates)
        ));
    }
    if let Some(deletes) = table.deletes {
        let what = match deletes {
            Deletes::Soft => "soft-deleted (`_datasync_deleted_at` set)",
            Deletes::Hard | Deletes::Keep => "deleted",
        };
        notes.push(match table.rows_deleted {
            Some(rows) => format!(
                "{} row(s) whose key left the source were {what}",
                group_digits(rows)
            ),
            None => format!(
                "rows whose key left the source were {what} (BigQuery did not report how many)"
            ),
        });
    }
    if let Some(kept) = table.earlier_rows_kept {
        notes.push(format!(
            "{} earlier row(s) kept for rejected rows (a replace drops no row an earlier run loaded)",
            group_digits(kept)
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(table: &str, status: TableStatus) -> TableOutcome {
        TableOutcome {
            table: table.into(),
            target: table.replace("shop.", ""),
            status,
            rows_extracted: 0,
            rows_loaded: None,
            bytes: 0,
            bad_values: 0,
            rows_left_out: 0,
            bad_value_samples: Vec::new(),
            duplicate_keys: None,
            deletes: None,
            rows_deleted: None,
            earlier_rows_kept: None,
            seconds: 0.0,
            error: None,
            code: None,
            chunks: 0,
            chunks_skipped: 0,
        }
    }

    fn report() -> ApplyReport {
        let mut done = outcome("shop.orders", TableStatus::Done);
        done.rows_extracted = 1_234_567;
        done.rows_loaded = Some(1_234_567);
        done.bytes = 98_765_432;
        done.bad_values = 2;
        done.rows_left_out = 1;
        done.bad_value_samples = vec![
            "row id=7: column `price`: NaN written as NULL".into(),
            "row id=9: column `born`: out of range; the row is left out".into(),
        ];
        done.seconds = 12.34;
        done.chunks = 8;
        done.chunks_skipped = 3;
        let mut failed = outcome("shop.customers", TableStatus::Failed);
        failed.rows_extracted = 10;
        failed.error = Some("load into staging failed: quota exceeded".into());
        failed.code = Some(Code::ApplyTableFailed);
        let mut skipped = outcome("shop.items", TableStatus::Skipped);
        skipped.error = Some("incompatible change: `id`: INT64 → STRING".into());
        skipped.code = Some(Code::PlanIncompatible);
        ApplyReport {
            destination: "demo-project.shop".into(),
            dry_run: false,
            tables: vec![done, failed, skipped],
            seconds: 13.0,
            ledger: None,
        }
    }

    #[test]
    fn the_text_report() {
        insta::assert_snapshot!(report().text());
    }

    #[test]
    fn the_json_report() {
        insta::assert_json_snapshot!(report());
    }

    #[test]
    fn the_ledger_line_says_where_the_run_is_recorded_or_why_not() {
        let mut report = report();
        report.ledger = Some(LedgerOutcome {
            table: "demo-project.shop._datasync_runs".into(),
            run_id: "1796000000_000001".into(),
            rows: 3,
            error: None,
        });
        assert!(!report.ledger_failed());
        assert!(report.text().ends_with(
            "run 1796000000_000001 recorded in `demo-project.shop._datasync_runs` (`datasync runs --run 1796000000_000001`)\n"
        ), "{}", report.text());
        report.ledger.as_mut().unwrap().error = Some("quota exceeded".into());
        assert!(report.ledger_failed());
        insta::assert_snapshot!(report.text().lines().last().unwrap(), @"warning: run 1796000000_000001 is not recorded in `demo-project.shop._datasync_runs` (quota exceeded); the tables above were written as reported, and the next run reads its bounds from the targets");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ledger"]["error"], "quota exceeded");
        assert_eq!(json["ledger"]["rows"], 3);
    }

    #[test]
    fn a_dry_run_says_so() {
        let mut report = report();
        report.dry_run = true;
        report.tables.truncate(1);
        assert!(report.succeeded());
        assert!(
            report
                .text()
                .ends_with("dry run: 1 of 1 table(s) synced, 1,234,567 rows, 13.0s\n"),
            "{}",
            report.text()
        );
    }

    #[test]
    fn the_write_paths_findings_are_reported() {
        let mut merged = outcome("shop.orders", TableStatus::Done);
        merged.duplicate_keys = Some(1_200);
        merged.deletes = Some(Deletes::Hard);
        merged.rows_deleted = Some(3);
        let mut soft = outcome("shop.users", TableStatus::Done);
        soft.deletes = Some(Deletes::Soft);
        let mut replaced = outcome("shop.prices", TableStatus::Done);
        replaced.earlier_rows_kept = Some(2);
        replaced.duplicate_keys = Some(0);
        let report = ApplyReport {
            destination: "p.d".into(),
            dry_run: false,
            tables: vec![merged, soft, replaced],
            seconds: 1.0,
            ledger: None,
        };
        let text = report.text();
        let notes: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("shop.") && line.contains(": "))
            .collect();
        assert_eq!(
            notes,
            [
                "shop.orders: warning: 1,200 staged row(s) shared a merge key with another row; one row per key was merged (the greatest cursor won)",
                "shop.orders: 3 row(s) whose key left the source were deleted",
                "shop.users: rows whose key left the source were soft-deleted (`_datasync_deleted_at` set) (BigQuery did not report how many)",
                "shop.prices: 2 earlier row(s) kept for rejected rows (a replace drops no row an earlier run loaded)",
            ]
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["tables"][0]["duplicate_keys"], 1_200);
        assert_eq!(json["tables"][0]["deletes"], "hard");
        assert_eq!(json["tables"][0]["rows_deleted"], 3);
        assert!(json["tables"][1].get("rows_deleted").is_none());
        assert_eq!(json["tables"][2]["earlier_rows_kept"], 2);
    }
}
