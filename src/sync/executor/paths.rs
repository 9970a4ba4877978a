//! The executor's merge and reject paths between a verified staging load and the write, each
//! run only where the plan's write says so: a merge's key set (`deletes`), the duplicate keys
//! staging holds, a replace's earlier rows for the keys this run rejected.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Executor, REJECTS_TABLE, row_sink, write_job_id};
use crate::plan::{Extract, KeyColumn, TablePlan, WriteOp};
use crate::schema::{ExtractStats, SourceTable, WarehouseTable};
use crate::source::Source;
use crate::sync::{keys_table, staging_table};
use crate::warehouse::{CopyRowsByKey, Disposition, LoadRequest};

/// What the write paths found, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteNotes {
    /// Staged rows that shared their merge key with another staged row (the MERGE kept one).
    pub duplicate_keys: Option<u64>,
    /// Rows of the source's key set (`deletes`).
    pub key_set_rows: Option<u64>,
    /// Target rows deleted or soft-deleted because their key left the source, when BigQuery
    /// reports it.
    pub deleted: Option<u64>,
    /// A replace's earlier target rows kept for keys this run rejected.
    pub kept_rows: Option<u64>,
}

impl Executor {
    /// Before the write, on verified staging: stage a merge's key set and count its duplicate
    /// keys; keep a replace's earlier rows for the rejected keys. An error fails the table
    /// before the target is touched.
    pub(super) async fn prepare_write(
        &self,
        table: &TablePlan,
        source: &Source,
        source_table: &SourceTable,
        stats: &ExtractStats,
    ) -> Result<WriteNotes, String> {
        let mut notes = WriteNotes::default();
        match table.write_op() {
            Some(WriteOp::Merge { keys, key_set, .. }) => {
                notes.duplicate_keys = self.duplicate_keys(table, keys).await;
                if let Some(key_set) = key_set {
                    notes.key_set_rows = Some(
                        self.stage_key_set(table, source, source_table, key_set)
                            .await?,
                    );
                }
            }
            Some(WriteOp::Replace {
                columns,
                keep_rejected,
            }) => {
                notes.kept_rows = self
                    .keep_rejected(table, columns, keep_rejected, stats)
                    .await?
            }
            _ => {}
        }
        Ok(notes)
    }

    /// Staged rows beyond the first of their key (the MERGE keeps the greatest cursor): one
    /// query over staging's key columns. Only reported, so a failure is only logged.
    async fn duplicate_keys(&self, table: &TablePlan, keys: &[String]) -> Option<u64> {
        let staging = staging_table(&table.target, &self.run_id);
        match self.warehouse.count_duplicate_keys(&staging, keys).await {
            Ok(0) => Some(0),
            Ok(duplicates) => {
                tracing::warn!(
                    table = %table.label,
                    target_table = %table.target,
                    duplicate_keys = duplicates,
                    "staged rows share a merge key; the greatest cursor wins"
                );
                Some(duplicates)
            }
            Err(error) => {
                tracing::warn!(table = %table.label, %error, "could not count duplicate merge keys");
                None
            }
        }
    }

    /// `deletes`: the source's whole key set (never bounded) into this run's keys table, read
    /// after the rows were staged, so a row deleted meanwhile counts as gone. Every key must
    /// be read: a key left out by a bad value would delete its row, so that fails the table.
    async fn stage_key_set(
        &self,
        table: &TablePlan,
        source: &Source,
        source_table: &SourceTable,
        key_set: &Extract,
    ) -> Result<u64, String> {
        let keys = keys_table(&table.target, &self.run_id);
        let info = crate::sync::StagingInfo {
            run_id: self.run_id.clone(),
            plan: "key set".into(),
            chunks: 1,
        };
        self.create_staging(&keys, key_set, &info)
            .await
            .map_err(|failure| failure.message.replace("staging table", "key-set table"))?;
        let request = LoadRequest {
            table: keys.clone(),
            schema: WarehouseTable {
                name: keys.clone(),
                ..key_set.load_schema.clone()
            },
            disposition: Disposition::Append,
            job_id: write_job_id(&self.run_id, &table.target, "keys"),
            allow_field_addition: false,
            format: key_set.format,
        };
        let (sender, receiver) = mpsc::channel::<Bytes>(4);
        let no_progress = |_: u64| {};
        let extraction = source.extract(
            source_table,
            &key_set.columns,
            None,
            row_sink(source_table, key_set, &self.run_id),
            sender,
            &no_progress,
        );
        let (extracted, loaded) = tokio::join!(extraction, self.warehouse.load(&request, receiver));
        let failed = |message: String| format!("{message}; the target was not changed");
        let loaded = loaded
            .map_err(|error| failed(format!("loading the source's key set failed: {error}")))?;
        let stats = extracted
            .map_err(|error| failed(format!("reading the source's key set failed: {error}")))?;
        if stats.failed_rows > 0 {
            return Err(failed(format!(
                "{} key(s) of the source could not be read ({}), and deleting would remove their rows",
                stats.failed_rows,
                stats.failures.first().map_or("a bad value", String::as_str)
            )));
        }
        if loaded.output_rows != stats.rows {
            return Err(failed(format!(
                "key-set row count mismatch: read {} keys but BigQuery loaded {}",
                stats.rows, loaded.output_rows
            )));
        }
        Ok(stats.rows)
    }

    /// A replace that rejected rows: the target's current rows for those keys go into this
    /// run's staging table (one `INSERT … SELECT` that only reads the target), so the copy
    /// keeps them. Without a key to find them by, the table fails while the target has rows.
    async fn keep_rejected(
        &self,
        table: &TablePlan,
        columns: &[String],
        keys: &[KeyColumn],
        stats: &ExtractStats,
    ) -> Result<Option<u64>, String> {
        if stats.failed_rows == 0 {
            return Ok(None);
        }
        let existing = self
            .warehouse
            .get_table(&table.target)
            .await
            .map_err(|error| format!("reading the target before keeping its rejected rows failed (it was not changed): {error}"))?;
        let Some(existing) = existing else {
            return Ok(None);
        };
        let values = rejected_keys(keys, stats);
        let Some(values) = values else {
            if existing.num_rows == Some(0) {
                return Ok(None);
            }
            return Err(format!(
                "{} row(s) were rejected (see `{REJECTS_TABLE}`) and their earlier versions in `{}` can't be found: {}; the target was not written and keeps its rows (fix the rows, or set `primary_key`)",
                stats.failed_rows,
                table.target,
                if keys.is_empty() {
                    "the table has no key"
                } else {
                    "some rejected rows have no usable key value"
                }
            ));
        };
        let request = CopyRowsByKey {
            from: table.target.clone(),
            into: staging_table(&table.target, &self.run_id),
            columns: columns
                .iter()
                .filter(|column| existing.table.field(column).is_some())
                .cloned()
                .collect(),
            keys: keys
                .iter()
                .map(|key| (key.target.clone(), key.bq_type))
                .collect(),
            values,
        };
        let kept = self
            .warehouse
            .copy_rows_by_key(&request)
            .await
            .map_err(|error| format!("keeping the earlier rows of {} rejected row(s) failed, so the target was not written: {error}", stats.failed_rows))?;
        tracing::info!(table = %table.label, kept_rows = kept, "earlier rows of rejected keys kept");
        Ok(Some(kept))
    }
}

/// The key values of every rejected row, as text, from its record (`Reject::row`, by source
/// column); `None` when there is no key, a rejected row's key part is NULL or missing, or not
/// every rejected row was kept in memory ([`crate::schema::MAX_REJECTS`]).
fn rejected_keys(keys: &[KeyColumn], stats: &ExtractStats) -> Option<Vec<Vec<String>>> {
    if keys.is_empty() || u64::try_from(stats.rejects.len()).ok()? != stats.failed_rows {
        return None;
    }
    stats
        .rejects
        .iter()
        .map(|reject| {
            let row: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&reject.row).ok()?;
            keys.iter()
                .map(|key| match row.get(&key.source)? {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(text) => Some(text.clone()),
                    other => Some(other.to_string()),
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{BqType, Reject};

    fn reject(row: &str) -> Reject {
        Reject {
            key: String::new(),
            column: "c".into(),
            reason: "r".into(),
            row: row.into(),
        }
    }

    #[test]
    fn rejected_keys_come_from_the_rows_record_or_not_at_all() {
        let keys = [
            KeyColumn {
                source: "id".into(),
                target: "id".into(),
                bq_type: BqType::Int64,
            },
            KeyColumn {
                source: "Region".into(),
                target: "region".into(),
                bq_type: BqType::String,
            },
        ];
        let mut stats = ExtractStats {
            failed_rows: 2,
            rejects: vec![
                reject(r#"{"id":4,"Region":"eu","c":[1,null]}"#),
                reject(r#"{"id":5,"Region":"us","c":null}"#),
            ],
            ..ExtractStats::default()
        };
        assert_eq!(
            rejected_keys(&keys, &stats),
            Some(vec![
                vec!["4".to_string(), "eu".to_string()],
                vec!["5".to_string(), "us".to_string()]
            ])
        );
        // A NULL key part, no key, or more rejects than were kept: no keys.
        stats.rejects[1] = reject(r#"{"id":null,"Region":"us"}"#);
        assert_eq!(rejected_keys(&keys, &stats), None);
        stats.rejects.truncate(1);
        assert_eq!(rejected_keys(&keys, &stats), None);
        stats.failed_rows = 1;
        assert!(rejected_keys(&keys, &stats).is_some());
        assert_eq!(rejected_keys(&[], &stats), None);
    }
}
