//! [`JobLog`]: a [`Warehouse`] that passes every call on and notes, per target, the BigQuery
//! jobs a run's tables ran (loads, copies, the MERGE), so the ledger row lists them without a
//! hook in every step of the executor.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc::Receiver;

use super::RunLedger;
use crate::schema::WarehouseTable;
use crate::sync::run_id_parts;
use crate::warehouse::{
    AlterColumn, CopyRequest, ExistingTable, LoadOutcome, LoadRequest, MergeOutcome, MergeRequest,
    QueryParam, QueryRows, TableMeta, Warehouse, WarehouseError,
};

/// Passes every call to `inner`; a job whose client id is one of a table's (by `targets`, or
/// by the shape of the run's job ids, see [`JobLog::named_target`]) is noted in the run's
/// ledger once it ran (or may have run: a failed job, a lost reply).
pub struct JobLog {
    inner: Arc<dyn Warehouse>,
    ledger: Arc<RunLedger>,
    run_id: String,
    /// Client job id → target.
    targets: HashMap<String, String>,
    /// A target as job ids spell it ([`crate::sync::sanitize_job_part`]) → the target.
    spelled: HashMap<String, String>,
    /// `<plan>_`: how chunk job ids of this plan start after `datasync_`.
    plan_prefix: String,
}

/// The steps a table's write job ids end with (`datasync_<run>_<target>_<step>`).
const STEPS: [&str; 4] = ["write", "backup", "restore", "keys"];

/// `text` without a trailing `<tag><digits>`, if it has one.
fn strip_numbered<'t>(text: &'t str, tag: &str) -> Option<&'t str> {
    let (head, number) = text.rsplit_once(tag)?;
    (!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())).then_some(head)
}

impl JobLog {
    /// Wraps `inner` for the run `run_id` of the plan with `fingerprint`; `targets` maps each
    /// client job id the run is known to use to its target.
    pub fn new(
        inner: Arc<dyn Warehouse>,
        ledger: Arc<RunLedger>,
        run_id: &str,
        fingerprint: &str,
        targets: HashMap<String, String>,
    ) -> Self {
        let spelled = targets
            .values()
            .map(|target| (crate::sync::sanitize_job_part(target), target.clone()))
            .collect();
        let plan: String = fingerprint.chars().take(8).collect();
        Self {
            inner,
            ledger,
            run_id: run_id.to_string(),
            targets,
            spelled,
            plan_prefix: format!("{}_", crate::sync::sanitize_job_part(&plan)),
        }
    }

    /// The target a job id of one of the run's shapes names, read by that shape (not by
    /// searching the id for target names, which a target named like a part of another id
    /// would fool):
    /// - a chunk's load, `datasync_<plan>_<target>_<run>_c<N>[_a<M>]` (`sync::chunk_job_id`;
    ///   `<run>` is the staging run, a resumed one's included), and its rejects' load (the
    ///   same with `_rejects`);
    /// - a resumed run's table jobs, `datasync_<run>_<target>[_<step>]`.
    fn named_target(&self, id: &str) -> Option<&String> {
        let rest = id.strip_prefix("datasync_")?;
        if let Some(chunk) = rest.strip_prefix(&self.plan_prefix) {
            let chunk = chunk.strip_suffix("_rejects").unwrap_or(chunk);
            let chunk = strip_numbered(chunk, "_a").unwrap_or(chunk);
            let head = strip_numbered(chunk, "_c")?;
            // This run's staging, or a resumed run's (`<seconds>_<sequence>`).
            if let Some(target) = head.strip_suffix(&format!("_{}", self.run_id)) {
                return self.spelled.get(target);
            }
            let (head, sub) = head.rsplit_once('_')?;
            let (target, seconds) = head.rsplit_once('_')?;
            if run_id_parts(seconds, sub).is_some() {
                return self.spelled.get(target);
            }
        }
        let (seconds, rest) = rest.split_once('_')?;
        let (sub, named) = rest.split_once('_')?;
        run_id_parts(seconds, sub)?;
        self.spelled.get(named).or_else(|| {
            STEPS.iter().find_map(|step| {
                let target = named.strip_suffix(step)?.strip_suffix('_')?;
                self.spelled.get(target)
            })
        })
    }

    /// Notes `job_id` (as the server names it) for the target of the client id `client_id`,
    /// when the job ran or may have.
    fn note<T>(&self, client_id: &str, result: &Result<T, WarehouseError>, job_id: Option<&str>) {
        let target = self
            .targets
            .get(client_id)
            .or_else(|| self.named_target(client_id));
        let Some(target) = target else {
            return;
        };
        let ran = match result {
            Ok(_) => true,
            Err(error) => matches!(error, WarehouseError::Job { .. }) || error.is_ambiguous(),
        };
        if ran {
            self.ledger
                .note_job(&self.run_id, target, job_id.unwrap_or(client_id));
        }
    }
}

#[async_trait]
impl Warehouse for JobLog {
    async fn ensure_dataset(&self, create: bool) -> Result<(), WarehouseError> {
        self.inner.ensure_dataset(create).await
    }

    async fn get_table(&self, name: &str) -> Result<Option<ExistingTable>, WarehouseError> {
        self.inner.get_table(name).await
    }

    async fn dry_run_merge(
        &self,
        request: &MergeRequest,
        target: &WarehouseTable,
    ) -> Result<Vec<(String, u64)>, WarehouseError> {
        self.inner.dry_run_merge(request, target).await
    }

    async fn count_duplicate_keys(
        &self,
        table: &str,
        keys: &[String],
    ) -> Result<u64, WarehouseError> {
        self.inner.count_duplicate_keys(table, keys).await
    }

    async fn copy_rows_by_key(
        &self,
        request: &crate::warehouse::CopyRowsByKey,
    ) -> Result<u64, WarehouseError> {
        self.inner.copy_rows_by_key(request).await
    }

    async fn update_table(
        &self,
        name: &str,
        update: &crate::warehouse::TableUpdate,
    ) -> Result<(), WarehouseError> {
        self.inner.update_table(name, update).await
    }

    async fn job_state(
        &self,
        job_id: &str,
    ) -> Result<Option<crate::warehouse::JobState>, WarehouseError> {
        self.inner.job_state(job_id).await
    }

    async fn list_dataset(&self) -> Result<Vec<crate::warehouse::ListedTable>, WarehouseError> {
        self.inner.list_dataset().await
    }

    async fn get_tables(
        &self,
        names: &[String],
    ) -> Result<Vec<Option<ExistingTable>>, WarehouseError> {
        self.inner.get_tables(names).await
    }

    async fn create_table(&self, table: &WarehouseTable) -> Result<(), WarehouseError> {
        self.inner.create_table(table).await
    }

    async fn alter_table(&self, name: &str, changes: &[AlterColumn]) -> Result<(), WarehouseError> {
        self.inner.alter_table(name, changes).await
    }

    async fn drop_table(&self, name: &str) -> Result<(), WarehouseError> {
        self.inner.drop_table(name).await
    }

    async fn load(
        &self,
        request: &LoadRequest,
        data: Receiver<Bytes>,
    ) -> Result<LoadOutcome, WarehouseError> {
        let result = self.inner.load(request, data).await;
        // The server's id (the emulator replaces ours).
        let server_id = result.as_ref().ok().map(|outcome| outcome.job_id.clone());
        self.note(&request.job_id, &result, server_id.as_deref());
        result
    }

    async fn query(&self, sql: &str, params: &[QueryParam]) -> Result<QueryRows, WarehouseError> {
        self.inner.query(sql, params).await
    }

    async fn merge(&self, request: &MergeRequest) -> Result<MergeOutcome, WarehouseError> {
        let result = self.inner.merge(request).await;
        if let Some(job_id) = &request.job_id {
            self.note(job_id, &result, None);
        }
        result
    }

    async fn max_value(
        &self,
        table: &str,
        column: &str,
    ) -> Result<serde_json::Value, WarehouseError> {
        self.inner.max_value(table, column).await
    }

    async fn cancel_job(&self, job_id: &str) -> Result<(), WarehouseError> {
        self.inner.cancel_job(job_id).await
    }

    async fn insert_from(
        &self,
        staging: &str,
        target: &str,
        columns: &[String],
        replace: bool,
    ) -> Result<(), WarehouseError> {
        self.inner
            .insert_from(staging, target, columns, replace)
            .await
    }

    async fn copy_table(&self, request: &CopyRequest) -> Result<(), WarehouseError> {
        let result = self.inner.copy_table(request).await;
        self.note(&request.job_id, &result, None);
        result
    }

    async fn create_table_with(
        &self,
        table: &WarehouseTable,
        meta: &TableMeta,
    ) -> Result<(), WarehouseError> {
        self.inner.create_table_with(table, meta).await
    }

    async fn patch_table_meta(
        &self,
        name: &str,
        meta: &TableMeta,
        etag: Option<&str>,
    ) -> Result<(), WarehouseError> {
        self.inner.patch_table_meta(name, meta, etag).await
    }

    async fn list_tables(&self, prefix: &str) -> Result<Vec<String>, WarehouseError> {
        self.inner.list_tables(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{chunk_job_id, load_job_id};

    fn log(targets: &[&str]) -> JobLog {
        let warehouse: Arc<dyn Warehouse> = Arc::new(crate::warehouse::FakeWarehouse::default());
        let ledger = Arc::new(RunLedger::new(None));
        let targets = targets
            .iter()
            .map(|target| (load_job_id("1700000000_000001", target), target.to_string()))
            .collect();
        JobLog::new(
            warehouse,
            ledger,
            "1700000000_000001",
            "0123456789abcdef",
            targets,
        )
    }

    #[test]
    fn job_ids_name_their_target_by_shape_not_by_a_search() {
        // Targets named like parts of other ids: `c0`, `a`, `a_b`, `orders_write`, `orders`.
        let log = log(&["a", "a_b", "c0", "orders", "orders_write", "my.events"]);
        let named = |id: &str| log.named_target(id).cloned();
        for target in ["a", "a_b", "c0", "orders", "my.events"] {
            for run in [
                "1700000000_000001",
                "1600000000_000042",
                "1600000000_000042a3f90c",
            ] {
                for (index, attempt) in [(0, 0), (3, 0), (0, 2), (12, 1)] {
                    let id = chunk_job_id("0123456789abcdef", target, run, index, attempt);
                    assert_eq!(named(&id).as_deref(), Some(target), "{id}");
                    let rejects = format!("{id}_rejects");
                    assert_eq!(named(&rejects).as_deref(), Some(target), "{rejects}");
                }
            }
        }
        // A resumed run's table jobs.
        let resumed = load_job_id("1600000000_000042c0de00", "a_b");
        assert_eq!(named(&resumed).as_deref(), Some("a_b"));
        assert_eq!(named(&format!("{resumed}_keys")).as_deref(), Some("a_b"));
        let write = load_job_id("1600000000_000042", "orders_write");
        assert_eq!(named(&write).as_deref(), Some("orders_write"));
        assert_eq!(
            named(&load_job_id("1600000000_000042", "orders")).as_deref(),
            Some("orders")
        );
        // Another plan's chunks, other tools' jobs, unknown targets: none.
        let other_plan = chunk_job_id("fedcba9876543210", "a", "1700000000_000001", 0, 0);
        assert_eq!(named(&other_plan), None);
        assert_eq!(named("bquxjob_123_abc"), None);
        assert_eq!(named(&load_job_id("1700000000_000001", "unknown")), None);
    }
}
