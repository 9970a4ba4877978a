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
use crate::warehouse::{
    AlterColumn, CopyRequest, ExistingTable, LoadOutcome, LoadRequest, MergeOutcome, MergeRequest,
    QueryParam, QueryRows, TableMeta, Warehouse, WarehouseError,
};

/// Passes every call to `inner`; a job whose client id is one of a table's (by `targets`) is
/// noted in the run's ledger once it ran (or may have run: a failed job, a lost reply).
pub struct JobLog {
    inner: Arc<dyn Warehouse>,
    ledger: Arc<RunLedger>,
    run_id: String,
    /// Client job id → target.
    targets: HashMap<String, String>,
}

impl JobLog {
    /// Wraps `inner` for the run `run_id`; `targets` maps each client job id the run may use to
    /// its target.
    pub fn new(
        inner: Arc<dyn Warehouse>,
        ledger: Arc<RunLedger>,
        run_id: &str,
        targets: HashMap<String, String>,
    ) -> Self {
        Self {
            inner,
            ledger,
            run_id: run_id.to_string(),
            targets,
        }
    }

    /// Notes `job_id` (as the server names it) for the target of the client id `client_id`,
    /// when the job ran or may have.
    fn note<T>(&self, client_id: &str, result: &Result<T, WarehouseError>, job_id: Option<&str>) {
        // The run's fixed job ids; else a chunk's (`datasync_<plan>_<target>_<run>_c<N>`) or a
        // resumed run's, whose ids name the target: the longest target named wins.
        let target = self.targets.get(client_id).or_else(|| {
            self.targets
                .values()
                .filter(|target| {
                    client_id.contains(&format!("_{}_", crate::sync::sanitize_job_part(target)))
                })
                .max_by_key(|target| target.len())
        });
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
