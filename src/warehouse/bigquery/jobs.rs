//! Jobs: get, wait, queries (paginated results), empty loads.

use std::time::Instant;

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::BigQuery;
use super::model::{JobReference, JobResource, QueryResponse, decode_row, query_columns};
use super::retry::jitter;
use crate::schema::WarehouseTable;
use crate::warehouse::Warehouse;
use crate::warehouse::{
    CopyRequest, Disposition, LoadOutcome, LoadRequest, QueryParam, QueryRows, WarehouseError,
    poll_delay,
};

impl BigQuery {
    /// jobs.get; `None` when the job does not exist.
    pub(super) async fn get_job(
        &self,
        job_id: &str,
        location: Option<&str>,
    ) -> Result<Option<JobResource>, WarehouseError> {
        let context = format!("get job {job_id}");
        let mut url = self.api_url(&["jobs", job_id])?;
        let location = match location {
            Some(location) => Some(location.to_string()),
            None => self.job_location().await?,
        };
        if let Some(location) = location {
            url.query_pairs_mut().append_pair("location", &location);
        }
        match self.send_json(&context, Method::GET, url, None).await {
            Ok(job) => Ok(Some(job)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// jobs.get as a [`JobState`].
    pub(super) async fn job_state_of(
        &self,
        job_id: &str,
    ) -> Result<Option<crate::warehouse::JobState>, WarehouseError> {
        use crate::warehouse::JobState;
        Self::check_job_id(job_id)?;
        let Some(job) = self.get_job(job_id, None).await? else {
            return Ok(None);
        };
        if !job.is_done() {
            return Ok(Some(JobState::Running));
        }
        Ok(Some(match job.check(&format!("job {job_id}"), job_id) {
            Ok(()) => JobState::Done {
                output_rows: job
                    .statistics
                    .as_ref()
                    .and_then(|statistics| statistics.load.as_ref())
                    .and_then(|load| load.output_rows)
                    .unwrap_or(0),
            },
            Err(error) => JobState::Failed {
                message: error.to_string(),
            },
        }))
    }

    /// Polls jobs.get until the job is DONE (0.2 s doubling to 5 s between polls).
    pub(super) async fn wait_for_job(
        &self,
        context: &str,
        mut job: JobResource,
        job_id: &str,
    ) -> Result<JobResource, WarehouseError> {
        let mut polls = 0;
        let deadline = Instant::now() + self.retry.job_deadline;
        // Keep the first known ID and location (jobs.get answers may omit the location).
        let id = job.job_id().unwrap_or(job_id).to_string();
        let location = job
            .job_reference
            .as_ref()
            .and_then(|reference| reference.location.clone());
        while !job.is_done() {
            self.check_job_deadline(context, &id, deadline)?;
            tokio::time::sleep(poll_delay(polls)).await;
            polls += 1;
            job = self
                .get_job(&id, location.as_deref())
                .await?
                .ok_or_else(|| WarehouseError::Protocol {
                    context: context.to_string(),
                    message: format!("job {id} disappeared while waiting for it"),
                })?;
        }
        Ok(job)
    }

    /// `Err` once `deadline` (started with the wait) has passed; the job may still finish.
    fn check_job_deadline(
        &self,
        context: &str,
        job_id: &str,
        deadline: Instant,
    ) -> Result<(), WarehouseError> {
        if Instant::now() < deadline {
            return Ok(());
        }
        Err(WarehouseError::Deadline {
            context: context.to_string(),
            message: format!(
                "job {job_id} did not finish within {}; it may still run and finish",
                humantime::format_duration(self.retry.job_deadline)
            ),
        })
    }

    /// The outcome of a finished load job (error if it failed).
    pub(super) fn load_outcome(
        &self,
        context: &str,
        job: &JobResource,
        job_id: &str,
        bytes: u64,
    ) -> Result<LoadOutcome, WarehouseError> {
        job.check(context, job_id)?;
        let load = job
            .statistics
            .as_ref()
            .and_then(|statistics| statistics.load.as_ref());
        Ok(LoadOutcome {
            job_id: job.job_id().unwrap_or(job_id).to_string(),
            output_rows: load.and_then(|load| load.output_rows).unwrap_or(0),
            bytes: if bytes > 0 {
                bytes
            } else {
                load.and_then(|load| load.input_file_bytes).unwrap_or(0)
            },
            output_rows_is_total: self.emulator,
        })
    }

    /// Runs a statement; a concurrent-DML conflict ("Could not serialize access to …", HTTP 400
    /// `invalidQuery`) aborted the statement atomically, so it is re-run with a fresh
    /// `requestId` (the same one would return the same failed job), with backoff.
    pub(super) async fn run_query(
        &self,
        context: &str,
        sql: &str,
        params: &[QueryParam],
    ) -> Result<(QueryRows, QueryResponse), WarehouseError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.run_query_once(context, sql, params).await {
                Err(error) if is_serialize_conflict(&error) && self.retry.should_retry(attempt) => {
                    let delay = self.retry.delay(attempt, None, jitter());
                    tracing::debug!(%error, attempt, ?delay, "concurrent update; running the statement again");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    async fn run_query_once(
        &self,
        context: &str,
        sql: &str,
        params: &[QueryParam],
    ) -> Result<(QueryRows, QueryResponse), WarehouseError> {
        let mut body = json!({
            "query": sql,
            "useLegacySql": false,
            "formatOptions": {"useInt64Timestamp": true},
            "timeoutMs": 10_000,
            "requestId": request_id(sql),
            "labels": self.job_labels(),
        });
        if let Some(location) = self.job_location().await? {
            body["location"] = json!(location);
        }
        if !params.is_empty() {
            body["parameterMode"] = json!("NAMED");
            body["queryParameters"] = Value::Array(params.iter().map(QueryParam::to_api).collect());
        }
        let url = self.api_url(&["queries"])?;
        let mut response: QueryResponse = self
            .send_json(context, Method::POST, url, Some(&body))
            .await?;
        self.check_query_errors(context, &response).await?;
        // Polls and pages use the first answer's job reference (later ones may omit the location).
        let reference = response.job_reference.clone();
        let mut polls = 0;
        let deadline = Instant::now() + self.retry.job_deadline;
        while response.job_complete == Some(false) {
            let id = reference
                .as_ref()
                .map(|reference| reference.job_id.as_str());
            self.check_job_deadline(context, id.unwrap_or("?"), deadline)?;
            tokio::time::sleep(poll_delay(polls)).await;
            polls += 1;
            response = self
                .query_results(context, reference.as_ref(), None)
                .await?;
        }
        let fields = response
            .schema
            .as_ref()
            .map(|schema| schema.fields.clone())
            .unwrap_or_default();
        let mut rows: Vec<Vec<Value>> = response
            .rows
            .iter()
            .map(|row| decode_row(row, &fields))
            .collect();
        let mut page = response.page_token.clone();
        while let Some(token) = page {
            let next = self
                .query_results(context, reference.as_ref(), Some(&token))
                .await?;
            rows.extend(next.rows.iter().map(|row| decode_row(row, &fields)));
            page = next.page_token.clone();
        }
        let result = QueryRows {
            columns: query_columns(response.schema.as_ref()),
            rows,
            num_dml_affected_rows: response.num_dml_affected_rows,
        };
        Ok((result, response))
    }

    pub(super) async fn query_results(
        &self,
        context: &str,
        reference: Option<&JobReference>,
        page_token: Option<&str>,
    ) -> Result<QueryResponse, WarehouseError> {
        let reference = reference.ok_or_else(|| WarehouseError::Protocol {
            context: context.to_string(),
            message: "query response has no jobReference".into(),
        })?;
        let mut url = self.api_url(&["queries", &reference.job_id])?;
        let location = match &reference.location {
            Some(location) => Some(location.clone()),
            None => self.job_location().await?,
        };
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(location) = &location {
                pairs.append_pair("location", location);
            }
            pairs.append_pair("timeoutMs", "10000");
            pairs.append_pair("formatOptions.useInt64Timestamp", "true");
            if let Some(token) = page_token {
                pairs.append_pair("pageToken", token);
            }
        }
        let response: QueryResponse = self.send_json(context, Method::GET, url, None).await?;
        self.check_query_errors(context, &response).await?;
        Ok(response)
    }

    pub(super) async fn empty_load(
        &self,
        context: &str,
        request: &LoadRequest,
    ) -> Result<LoadOutcome, WarehouseError> {
        match self.get_table(&request.table).await? {
            None => {
                let table = WarehouseTable {
                    name: request.table.clone(),
                    ..request.schema.clone()
                };
                self.create_table(&table).await?;
            }
            Some(_) if request.disposition == Disposition::Truncate => {
                let sql = format!("TRUNCATE TABLE {}", self.qualified(&request.table));
                self.run_query(context, &sql, &[]).await?;
            }
            Some(_) => {}
        }
        Ok(LoadOutcome {
            job_id: request.job_id.clone(),
            output_rows: 0,
            bytes: 0,
            output_rows_is_total: false,
        })
    }

    /// A copy job (jobs.insert `configuration.copy`) in the dataset's location, awaited. A 409
    /// (our own earlier attempt whose reply was lost) awaits the existing job instead.
    pub(super) async fn run_copy(&self, request: &CopyRequest) -> Result<(), WarehouseError> {
        Self::check_job_id(&request.job_id)?;
        let context = format!(
            "copy table {}.{} into {}.{} (job {})",
            self.dataset, request.source, self.dataset, request.target, request.job_id
        );
        let table = |name: &str| json!({"projectId": self.project, "datasetId": self.dataset, "tableId": name});
        let mut reference = json!({"projectId": self.project, "jobId": request.job_id});
        let location = self.job_location().await?;
        if let Some(location) = &location {
            reference["location"] = json!(location);
        }
        let body = json!({
            "jobReference": reference,
            "configuration": {
                "copy": {
                    "sourceTable": table(&request.source),
                    "destinationTable": table(&request.target),
                    "writeDisposition": request.disposition.as_api(),
                    "createDisposition": "CREATE_IF_NEEDED",
                },
                "labels": self.job_labels(),
            },
        });
        if self.emulator && request.disposition == Disposition::Truncate {
            self.emulator_truncate_copy_prelude(request).await?;
        }
        let url = self.api_url(&["jobs"])?;
        let job: JobResource = match self
            .send_json(&context, Method::POST, url, Some(&body))
            .await
        {
            Ok(job) => job,
            Err(error) if error.is_duplicate() => self
                .get_job(&request.job_id, location.as_deref())
                .await?
                .ok_or(error)?,
            Err(error) => return Err(error),
        };
        let job = self.wait_for_job(&context, job, &request.job_id).await?;
        job.check(&context, &request.job_id)
    }

    /// A DML statement as a query job with a client job id (jobs.insert
    /// `configuration.query`), awaited; a 409 (our own lost first attempt) awaits that job.
    pub(super) async fn run_dml_job(
        &self,
        context: &str,
        sql: &str,
        job_id: &str,
    ) -> Result<crate::warehouse::MergeOutcome, WarehouseError> {
        Self::check_job_id(job_id)?;
        let mut reference = json!({"projectId": self.project, "jobId": job_id});
        let location = self.job_location().await?;
        if let Some(location) = &location {
            reference["location"] = json!(location);
        }
        let body = json!({
            "jobReference": reference,
            "configuration": {
                "query": {"query": sql, "useLegacySql": false},
                "labels": self.job_labels(),
            },
        });
        let url = self.api_url(&["jobs"])?;
        let job: JobResource = match self
            .send_json(context, Method::POST, url, Some(&body))
            .await
        {
            Ok(job) => job,
            Err(error) if error.is_duplicate() => self
                .get_job(job_id, location.as_deref())
                .await?
                .ok_or(error)?,
            Err(error) => return Err(error),
        };
        let job = self.wait_for_job(context, job, job_id).await?;
        job.check(context, job_id)?;
        let query = job
            .statistics
            .and_then(|statistics| statistics.query)
            .unwrap_or_default();
        if query.statement_type.as_deref() == Some("SCRIPT") {
            return Ok(self.script_outcome(context, job_id).await);
        }
        let stats = query.dml_stats.unwrap_or_default();
        Ok(crate::warehouse::MergeOutcome {
            affected_rows: query.num_dml_affected_rows.unwrap_or_default(),
            inserted: stats.inserted_row_count,
            updated: stats.updated_row_count,
            deleted: None,
        })
    }

    /// What a finished script (the MERGE and its delete statement) did, from its child jobs'
    /// `dmlStats` (jobs.list `parentJobId`; a script's own statistics carry none,
    /// <https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/list>): the MERGE's
    /// inserted and updated rows, the DELETE's deleted rows or the soft delete's UPDATE's
    /// updated rows. Unknown (`None`) where BigQuery does not say, as on the emulator; the
    /// write itself succeeded either way, so a failure here is only logged.
    async fn script_outcome(&self, context: &str, job_id: &str) -> crate::warehouse::MergeOutcome {
        let mut outcome = crate::warehouse::MergeOutcome::default();
        let children = match self.child_jobs(context, job_id).await {
            Ok(children) => children,
            Err(error) => {
                tracing::warn!(context, %error, "could not read the script's statement statistics");
                return outcome;
            }
        };
        for child in children {
            let Some(query) = child.statistics.and_then(|statistics| statistics.query) else {
                continue;
            };
            let stats = query.dml_stats.unwrap_or_default();
            match query.statement_type.as_deref() {
                Some("MERGE") => {
                    outcome.affected_rows = query.num_dml_affected_rows.unwrap_or_default();
                    outcome.inserted = stats.inserted_row_count;
                    outcome.updated = stats.updated_row_count;
                }
                Some("DELETE") => outcome.deleted = stats.deleted_row_count,
                Some("UPDATE") => outcome.deleted = stats.updated_row_count,
                _ => {}
            }
        }
        outcome
    }

    /// The child jobs of a script (every page).
    async fn child_jobs(
        &self,
        context: &str,
        job_id: &str,
    ) -> Result<Vec<JobResource>, WarehouseError> {
        let mut jobs = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut url = self.api_url(&["jobs"])?;
            {
                let mut pairs = url.query_pairs_mut();
                pairs.append_pair("parentJobId", job_id);
                if let Some(token) = &page {
                    pairs.append_pair("pageToken", token);
                }
            }
            let list: super::model::JobList =
                self.send_json(context, Method::GET, url, None).await?;
            jobs.extend(list.jobs);
            match list.next_page_token.filter(|token| !token.is_empty()) {
                Some(token) if page.as_deref() != Some(token.as_str()) => page = Some(token),
                _ => return Ok(jobs),
            }
        }
    }

    /// A dry run of one statement (jobs.insert with `configuration.dryRun`: validated and
    /// priced, not run, not billed): its `totalBytesProcessed`
    /// (<https://cloud.google.com/bigquery/docs/running-queries#dry-run>).
    pub(super) async fn dry_run(&self, context: &str, sql: &str) -> Result<u64, WarehouseError> {
        let mut reference = json!({"projectId": self.project});
        if let Some(location) = self.job_location().await? {
            reference["location"] = json!(location);
        }
        let body = json!({
            "jobReference": reference,
            "configuration": {"dryRun": true, "query": {"query": sql, "useLegacySql": false}},
        });
        let url = self.api_url(&["jobs"])?;
        let job: JobResource = self
            .send_json(context, Method::POST, url, Some(&body))
            .await?;
        job.check(context, "dry run")?;
        let statistics = job.statistics.unwrap_or_default();
        statistics
            .query
            .and_then(|query| query.total_bytes_processed)
            .or(statistics.total_bytes_processed)
            .ok_or_else(|| WarehouseError::Protocol {
                context: context.to_string(),
                message: "the dry run reported no totalBytesProcessed".into(),
            })
    }

    /// The emulator fails a `WRITE_TRUNCATE` copy whose source schema differs from the target's
    /// (HTTP 500 after emptying the target) where BigQuery replaces the schema atomically: drop
    /// the target first (not atomic; emulator only, see `scripts/EMULATOR.md`).
    async fn emulator_truncate_copy_prelude(
        &self,
        request: &CopyRequest,
    ) -> Result<(), WarehouseError> {
        let (Some(source), Some(target)) = (
            self.get_table(&request.source).await?,
            self.get_table(&request.target).await?,
        ) else {
            return Ok(());
        };
        // Descriptions are no part of the shape: the copy keeps the target's.
        if !super::same_shape(&target.table, &source.table) {
            self.drop_table(&request.target).await?;
        }
        Ok(())
    }

    pub(super) fn check_job_id(job_id: &str) -> Result<(), WarehouseError> {
        let valid = !job_id.is_empty()
            && job_id.len() <= 1024
            && job_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if valid {
            Ok(())
        } else {
            Err(WarehouseError::Invalid(format!(
                "job id {job_id:?} is invalid (letters, digits, '_' and '-' only, at most 1024)"
            )))
        }
    }
}

impl BigQuery {
    /// `errors` in a 200 jobs.query/getQueryResults answer are "the first errors or warnings
    /// encountered during the running of the job … Errors here do not necessarily mean that the
    /// job has completed or was unsuccessful" (BigQuery v2 `QueryResponse.errors`): a failed job
    /// is an HTTP error or `status.errorResult` (jobs.get). The emulator reports SQL errors only
    /// there, so with the emulator they fail the query.
    async fn check_query_errors(
        &self,
        context: &str,
        response: &QueryResponse,
    ) -> Result<(), WarehouseError> {
        let Some(error) = response.errors.first() else {
            return Ok(());
        };
        if self.emulator {
            return Err(WarehouseError::Api {
                context: context.to_string(),
                status: 200,
                reason: error.reason(),
                message: error.message(),
            });
        }
        if let Some(reference) = &response.job_reference
            && response.job_complete == Some(true)
            && !reference.job_id.is_empty()
            && let Some(job) = self
                .get_job(&reference.job_id, reference.location.as_deref())
                .await?
            && job
                .status
                .as_ref()
                .is_some_and(|status| status.error_result.is_some())
        {
            job.check(context, &reference.job_id)?;
        }
        for warning in &response.errors {
            tracing::warn!(context, reason = %warning.reason(), message = %warning.message(), "BigQuery warning");
        }
        Ok(())
    }
}

/// A concurrent-DML conflict: the statement was aborted and may be run again
/// (kafka-connect-bigquery `BigQueryErrorResponses.isCouldNotSerializeAccessError`).
fn is_serialize_conflict(error: &WarehouseError) -> bool {
    match error {
        WarehouseError::Api {
            status, message, ..
        } => *status == 400 && message.contains("Could not serialize access"),
        WarehouseError::Job { message, .. } => message.contains("Could not serialize access"),
        _ => false,
    }
}

/// A unique request ID (UUID form) for jobs.query idempotency.
fn request_id(sql: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(sql.as_bytes());
    hasher.update(jitter().to_le_bytes());
    hasher.update(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|time| time.as_nanos())
            .unwrap_or(0)
            .to_le_bytes(),
    );
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}
