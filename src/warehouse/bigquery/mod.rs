//! [`Warehouse`] over the BigQuery REST API (reqwest + our own serde structs). Access tokens
//! come from a `gcp_bigquery_client::auth::Authenticator`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tokio::sync::mpsc::Receiver;

mod auth;
mod client;
mod jobs;
mod metadata;
mod model;
mod net;
mod retry;
mod upload;

pub use retry::RetryPolicy;
pub use upload::{CHUNK_GRANULARITY, DEFAULT_CHUNK_SIZE, content_range, next_offset_from_range};

use super::{
    AlterColumn, CopyRequest, CopyRowsByKey, ExistingTable, GET_TABLES_CONCURRENCY, ListedTable,
    LoadOutcome, LoadRequest, MergeOutcome, MergeRequest, QueryParam, QueryRows, TableMeta,
    TableUpdate, Warehouse, WarehouseError, alter_statements, get_tables_bounded, labels,
    merge_statement, quote_ident,
};
use crate::manifest::resolve::BigQuerySpec;
use crate::schema::{FieldMode, WarehouseTable};
use auth::{AuthConfig, Credentials};
use model::{DatasetResource, TableList, TableResource};
use upload::check_chunk_size;

const PRODUCTION_BASE: &str = "https://bigquery.googleapis.com";

/// Where a dataset datasync creates lives when `bigquery.location` is not set.
const DEFAULT_DATASET_LOCATION: &str = "US";

/// A raw HTTP answer.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The BigQuery warehouse of one project and dataset.
pub struct BigQuery {
    pub(super) http: reqwest::Client,
    base: String,
    pub(super) project: String,
    pub(super) dataset: String,
    /// `bigquery.location`: used to create the dataset, and checked against an existing one's.
    configured_location: Option<String>,
    /// The dataset's location (datasets.get), once known: every job runs there.
    dataset_location: Mutex<Option<String>>,
    pub(super) emulator: bool,
    auth_config: AuthConfig,
    auth: OnceCell<Credentials>,
    pub(super) retry: RetryPolicy,
    pub(super) chunk_size: usize,
    completed_loads: Mutex<HashMap<String, LoadOutcome>>,
    /// `bigquery.labels` (checked): on created tables and on every job.
    user_labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for BigQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigQuery")
            .field("base", &self.base)
            .field("project", &self.project)
            .field("dataset", &self.dataset)
            .field("configured_location", &self.configured_location)
            .field("emulator", &self.emulator)
            .finish_non_exhaustive()
    }
}

impl BigQuery {
    /// A client for `spec`. With `spec.emulator` no credentials are used; otherwise tokens come
    /// from Application Default Credentials (see [`auth`]), also with a custom `spec.endpoint`
    /// (regional, Private Service Connect). Proxies and the CA bundle apply to the API and to
    /// every token endpoint. No network call happens here; credentials are loaded on first use.
    pub fn new(spec: &BigQuerySpec) -> Result<Self, WarehouseError> {
        let network = net::Network::from_spec(spec)?;
        let http = network.client(true, Duration::from_secs(20), Duration::from_secs(600))?;
        let emulator = spec.emulator;
        let base = match &spec.endpoint {
            Some(endpoint) => endpoint.trim_end_matches('/').to_string(),
            None => PRODUCTION_BASE.to_string(),
        };
        Url::parse(&base).map_err(|error| {
            WarehouseError::Invalid(format!("bad BigQuery endpoint {base}: {error}"))
        })?;
        let auth = OnceCell::new();
        if emulator {
            // A fresh cell can't be full.
            let _ = auth.set(Credentials::emulator());
        }
        let auth_config = AuthConfig {
            credentials: spec.credentials.clone(),
            impersonate: spec.impersonate_service_account.clone(),
            endpoint: spec.endpoint.clone(),
            env: spec.env.clone(),
            http: network.client(true, Duration::from_secs(20), Duration::from_secs(60))?,
            metadata_http: network.client(
                false,
                Duration::from_secs(3),
                Duration::from_secs(30),
            )?,
            iam_base: auth::IAM_CREDENTIALS_BASE.to_string(),
        };
        Ok(Self {
            http,
            base,
            project: spec.project.clone(),
            dataset: spec.dataset.clone(),
            configured_location: spec.location.clone(),
            dataset_location: Mutex::new(None),
            emulator,
            auth_config,
            auth,
            retry: RetryPolicy::default(),
            chunk_size: spec
                .upload_chunk_mib
                .and_then(|mib| usize::try_from(mib.clamp(1, 1024)).ok())
                .map_or(DEFAULT_CHUNK_SIZE, |mib| mib << 20),
            completed_loads: Mutex::new(HashMap::new()),
            user_labels: spec.labels.clone(),
        })
    }

    /// The labels of a job started now: datasync's, the manifest's, and the run and table of
    /// the current [`labels::scope`] (`configuration.labels` / jobs.query `labels`).
    pub(super) fn job_labels(&self) -> Value {
        json!(labels::current().to_map(&self.user_labels))
    }

    /// The labels of a table datasync creates (inventories and storage cost reports).
    fn table_labels(&self) -> Value {
        json!(labels::table_labels(&self.user_labels))
    }

    /// Sends `bigquery.impersonate_service_account`'s `generateAccessToken` to `base` instead
    /// of `https://iamcredentials.googleapis.com` (tests with a local fake).
    #[doc(hidden)]
    pub fn with_iam_credentials_endpoint(mut self, base: &str) -> Self {
        self.auth_config.iam_base = base.to_string();
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Talks to the configured endpoint as to real BigQuery: none of the emulator workarounds
    /// (see `scripts/EMULATOR.md`), still no credentials. For protocol tests against a
    /// recording fake of the API.
    pub fn without_emulator_quirks(mut self) -> Self {
        self.emulator = false;
        self
    }

    /// Sets the resumable-upload chunk size (a positive multiple of 256 KiB).
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Result<Self, WarehouseError> {
        check_chunk_size(chunk_size)?;
        self.chunk_size = chunk_size;
        Ok(self)
    }

    /// The dataset this client works in.
    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    /// `` `project.dataset.table` ``.
    pub fn qualified(&self, table: &str) -> String {
        quote_ident(&format!("{}.{}.{table}", self.project, self.dataset))
    }

    /// Deletes the dataset and everything in it (tests and tooling; not part of [`Warehouse`]).
    pub async fn delete_dataset(&self) -> Result<(), WarehouseError> {
        let context = format!("delete dataset {}.{}", self.project, self.dataset);
        let mut url = self.api_url(&["datasets", &self.dataset])?;
        url.query_pairs_mut().append_pair("deleteContents", "true");
        match self.send(&context, Method::DELETE, url, None).await {
            Err(error) if error.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    /// datasets.get.
    async fn fetch_dataset(&self) -> Result<DatasetResource, WarehouseError> {
        let context = format!("get dataset {}.{}", self.project, self.dataset);
        let url = self.api_url(&["datasets", &self.dataset])?;
        self.send_json(&context, Method::GET, url, None).await
    }

    /// Remembers the dataset's location (`None`: the server did not say; the configured one is
    /// assumed). A configured location that differs is an error naming both: a dataset's
    /// location can't change, and jobs must run where the dataset is.
    fn learn_location(&self, actual: Option<String>) -> Result<(), WarehouseError> {
        let Some(actual) = actual.filter(|location| !location.is_empty()) else {
            if let (Some(configured), Ok(mut known)) =
                (&self.configured_location, self.dataset_location.lock())
            {
                *known = Some(configured.clone());
            }
            return Ok(());
        };
        if let Some(configured) = &self.configured_location
            && !configured.eq_ignore_ascii_case(&actual)
        {
            return Err(WarehouseError::LocationMismatch {
                project: self.project.clone(),
                dataset: self.dataset.clone(),
                configured: configured.clone(),
                actual,
            });
        }
        if let Ok(mut known) = self.dataset_location.lock() {
            *known = Some(actual);
        }
        Ok(())
    }

    /// Where jobs run: the dataset's location (read once with datasets.get), else the configured
    /// one, else `None` (the parameter is then omitted and BigQuery picks the location from the
    /// tables a job references; job answers carry it in `jobReference.location`). BigQuery
    /// requires it on jobs.get/getQueryResults/cancel for every location but `US` and `EU`
    /// (https://cloud.google.com/bigquery/docs/locations#specify_locations).
    pub(super) async fn job_location(&self) -> Result<Option<String>, WarehouseError> {
        if let Some(known) = self
            .dataset_location
            .lock()
            .ok()
            .and_then(|known| known.clone())
        {
            return Ok(Some(known));
        }
        match self.fetch_dataset().await {
            Ok(dataset) => {
                self.learn_location(dataset.location)?;
                Ok(self
                    .dataset_location
                    .lock()
                    .ok()
                    .and_then(|known| known.clone()))
            }
            Err(error) if error.is_not_found() => Ok(self.configured_location.clone()),
            Err(error) => Err(error),
        }
    }

    async fn credentials(&self) -> Result<&Credentials, WarehouseError> {
        self.auth
            .get_or_try_init(|| auth::build(&self.auth_config))
            .await
    }

    async fn token(&self) -> Result<String, WarehouseError> {
        let credentials = self.credentials().await?;
        credentials
            .token
            .access_token()
            .await
            .map_err(|error| WarehouseError::Auth(auth::auth_message(&error)))
    }

    /// A 401/403 from BigQuery, with the principal and the permission named (other errors
    /// unchanged).
    pub(super) fn explain_auth_error(&self, error: WarehouseError) -> WarehouseError {
        let Some(credentials) = self.auth.get() else {
            return error;
        };
        match &error {
            WarehouseError::Api {
                status,
                reason,
                message,
                context,
            } => match auth::explain_denied(*status, reason, message, &credentials.principal) {
                Some(explained) => WarehouseError::Api {
                    context: context.clone(),
                    status: *status,
                    reason: reason.clone(),
                    message: explained,
                },
                None => error,
            },
            _ => error,
        }
    }

    /// `{base}/bigquery/v2/projects/{project}/{segments...}`, segments percent-encoded.
    pub(super) fn api_url(&self, segments: &[&str]) -> Result<Url, WarehouseError> {
        self.url_under(&["bigquery", "v2", "projects", &self.project], segments)
    }

    pub(super) fn upload_url(&self) -> Result<Url, WarehouseError> {
        let mut url = self.url_under(
            &["upload", "bigquery", "v2", "projects", &self.project],
            &["jobs"],
        )?;
        url.query_pairs_mut().append_pair("uploadType", "resumable");
        Ok(url)
    }

    fn url_under(&self, prefix: &[&str], segments: &[&str]) -> Result<Url, WarehouseError> {
        let mut url = Url::parse(&self.base).map_err(|error| {
            WarehouseError::Invalid(format!("bad BigQuery endpoint {}: {error}", self.base))
        })?;
        url.path_segments_mut()
            .map_err(|()| WarehouseError::Invalid(format!("bad BigQuery endpoint {}", self.base)))?
            .pop_if_empty()
            .extend(prefix)
            .extend(segments);
        Ok(url)
    }
}

/// Most tables.get calls [`Warehouse::get_tables`] starts per second on real BigQuery: under its
/// 100 API requests per second per user and method
/// (<https://cloud.google.com/bigquery/quotas#api_request_quotas>), leaving room for the
/// process's other calls.
const TABLES_GET_PER_SECOND: u32 = 80;

impl BigQuery {
    /// Every entry of tables.list, page after page (1,000 a page; free). The emulator answers
    /// `maxResults` with that many tables and no `nextPageToken` (scripts/EMULATOR.md), so it
    /// is asked without one and sends every table at once.
    async fn list_pages(&self) -> Result<Vec<model::TableListEntry>, WarehouseError> {
        let context = format!("list tables of {}.{}", self.project, self.dataset);
        let mut entries = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut url = self.api_url(&["datasets", &self.dataset, "tables"])?;
            if !self.emulator {
                url.query_pairs_mut().append_pair("maxResults", "1000");
            }
            if let Some(token) = &page {
                url.query_pairs_mut().append_pair("pageToken", token);
            }
            let list: TableList = self.send_json(&context, Method::GET, url, None).await?;
            entries.extend(list.tables);
            match list.next_page_token.filter(|token| !token.is_empty()) {
                Some(token) if page.as_deref() != Some(token.as_str()) => page = Some(token),
                _ => return Ok(entries),
            }
        }
    }
}

/// Same columns (names ignoring case, types, modes, parameters), partitioning and clustering.
fn same_shape(existing: &WarehouseTable, wanted: &WarehouseTable) -> bool {
    existing.fields.len() == wanted.fields.len()
        && existing.fields.iter().zip(&wanted.fields).all(|(a, b)| {
            a.name.eq_ignore_ascii_case(&b.name)
                && a.bq_type == b.bq_type
                && a.mode == b.mode
                && a.precision == b.precision
                && a.scale == b.scale
                && a.max_length == b.max_length
        })
        && existing.partitioning == wanted.partitioning
        && existing.clustering == wanted.clustering
}

#[async_trait]
impl Warehouse for BigQuery {
    async fn ensure_dataset(&self, create: bool) -> Result<(), WarehouseError> {
        match self.fetch_dataset().await {
            Ok(dataset) => return self.learn_location(dataset.location),
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(error),
        }
        if !create {
            return Err(WarehouseError::DatasetMissing {
                project: self.project.clone(),
                dataset: self.dataset.clone(),
            });
        }
        let context = format!("create dataset {}.{}", self.project, self.dataset);
        let location = self
            .configured_location
            .clone()
            .unwrap_or_else(|| DEFAULT_DATASET_LOCATION.to_string());
        let body = json!({
            "datasetReference": {"projectId": self.project, "datasetId": self.dataset},
            "location": location,
        });
        match self
            .send_json::<DatasetResource>(
                &context,
                Method::POST,
                self.api_url(&["datasets"])?,
                Some(&body),
            )
            .await
        {
            Ok(dataset) => self.learn_location(dataset.location.or(Some(location))),
            // Created meanwhile (or by our own lost first attempt): read where it is.
            Err(error) if error.is_duplicate() => {
                let dataset = self.fetch_dataset().await?;
                self.learn_location(dataset.location)
            }
            Err(error) => Err(error),
        }
    }

    async fn get_table(&self, name: &str) -> Result<Option<ExistingTable>, WarehouseError> {
        let context = format!("get table {}.{name}", self.dataset);
        let url = self.api_url(&["datasets", &self.dataset, "tables", name])?;
        match self
            .send_json::<TableResource>(&context, Method::GET, url, None)
            .await
        {
            Ok(resource) => {
                let mut existing = resource.to_existing()?;
                // The emulator moves `lastModifiedTime` only on tables.patch, never on a load,
                // copy or DML (scripts/EMULATOR.md): there it tells nothing about the rows.
                if self.emulator {
                    existing.last_modified = None;
                }
                Ok(Some(existing))
            }
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn create_table(&self, table: &WarehouseTable) -> Result<(), WarehouseError> {
        let context = format!("create table {}.{}", self.dataset, table.name);
        let mut body =
            serde_json::to_value(TableResource::new(&self.project, &self.dataset, table))
                .map_err(|error| WarehouseError::Invalid(format!("{context}: {error}")))?;
        // Every table datasync creates says so, for inventories and cost reports
        // (https://cloud.google.com/bigquery/docs/labels-intro: lowercase keys and values,
        // letters, digits, `_` and `-`).
        body["labels"] = self.table_labels();
        let url = self.api_url(&["datasets", &self.dataset, "tables"])?;
        match self.send(&context, Method::POST, url, Some(&body)).await {
            // A retried insert whose first reply was lost: the table is ours if it has the
            // schema we asked for.
            Err(error) if error.is_duplicate() => match self.get_table(&table.name).await? {
                Some(existing) if same_shape(&existing.table, table) => Ok(()),
                _ => Err(error),
            },
            other => other.map(drop),
        }
    }

    async fn alter_table(&self, name: &str, changes: &[AlterColumn]) -> Result<(), WarehouseError> {
        if changes.is_empty() {
            return Ok(());
        }
        let context = format!("alter table {}.{name}", self.dataset);
        let qualified = self.qualified(name);
        for sql in alter_statements(&qualified, changes, self.emulator, self.emulator) {
            self.run_query(&context, &sql, &[]).await?;
        }
        // The emulator applies DDL to the stored table only; its catalog (tables.get) keeps the
        // old schema. Real BigQuery updates both, so this patch only runs when they disagree.
        let Some(existing) = self.get_table(name).await? else {
            return Err(WarehouseError::Protocol {
                context,
                message: "table vanished after ALTER TABLE".into(),
            });
        };
        let mut fields = existing.table.fields.clone();
        for change in changes {
            match change {
                AlterColumn::Add(field) => {
                    if !fields
                        .iter()
                        .any(|existing| existing.name.eq_ignore_ascii_case(&field.name))
                    {
                        fields.push(field.clone());
                    }
                }
                AlterColumn::DropNotNull(column) => {
                    for field in fields
                        .iter_mut()
                        .filter(|field| field.name.eq_ignore_ascii_case(column))
                    {
                        if field.mode == FieldMode::Required {
                            field.mode = FieldMode::Nullable;
                        }
                    }
                }
                AlterColumn::SetType(new) => {
                    for field in fields
                        .iter_mut()
                        .filter(|field| field.name.eq_ignore_ascii_case(&new.name))
                    {
                        field.bq_type = new.bq_type;
                        field.precision = new.precision;
                        field.scale = new.scale;
                        field.max_length = new.max_length;
                    }
                }
            }
        }
        if fields != existing.table.fields {
            tracing::debug!(
                table = name,
                "catalog schema is stale after ALTER TABLE; patching it"
            );
            let table = WarehouseTable {
                fields,
                ..existing.table
            };
            let body = json!({"schema": model::schema_resource(&table)});
            let url = self.api_url(&["datasets", &self.dataset, "tables", name])?;
            self.send(&context, Method::PATCH, url, Some(&body)).await?;
        }
        Ok(())
    }

    async fn drop_table(&self, name: &str) -> Result<(), WarehouseError> {
        let context = format!("drop table {}.{name}", self.dataset);
        let url = self.api_url(&["datasets", &self.dataset, "tables", name])?;
        match self.send(&context, Method::DELETE, url, None).await {
            Err(error) if error.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    async fn load(
        &self,
        request: &LoadRequest,
        mut data: Receiver<Bytes>,
    ) -> Result<LoadOutcome, WarehouseError> {
        Self::check_job_id(&request.job_id)?;
        let context = format!(
            "load table {}.{} (job {})",
            self.dataset, request.table, request.job_id
        );
        if let Some(outcome) = self
            .completed_loads
            .lock()
            .ok()
            .and_then(|done| done.get(&request.job_id).cloned())
        {
            return Ok(outcome);
        }
        // Idempotency: a job with this ID may already exist (a retry after a lost answer).
        if let Some(job) = self.get_job(&request.job_id, None).await? {
            let job = self.wait_for_job(&context, job, &request.job_id).await?;
            return self.load_outcome(&context, &job, &request.job_id, 0);
        }
        let mut first = Bytes::new();
        while first.is_empty() {
            match data.recv().await {
                Some(bytes) => first = bytes,
                None => break,
            }
        }
        let outcome = if first.is_empty() {
            self.empty_load(&context, request).await?
        } else {
            self.upload_load(&context, request, first, data).await?
        };
        if let Ok(mut done) = self.completed_loads.lock() {
            done.insert(request.job_id.clone(), outcome.clone());
        }
        Ok(outcome)
    }

    async fn query(&self, sql: &str, params: &[QueryParam]) -> Result<QueryRows, WarehouseError> {
        let short: String = sql
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(80)
            .collect();
        let context = format!("query in dataset {} ({short})", self.dataset);
        self.run_query(&context, sql, params)
            .await
            .map(|(rows, _)| rows)
    }

    async fn merge(&self, request: &MergeRequest) -> Result<MergeOutcome, WarehouseError> {
        let context = format!(
            "merge {}.{} into {}.{}",
            self.dataset, request.staging, self.dataset, request.target
        );
        let sql = merge_statement(request, |name| self.qualified(name))?;
        if let Some(job_id) = &request.job_id {
            return self.run_dml_job(&context, &sql, job_id).await;
        }
        let (rows, response) = self.run_query(&context, &sql, &[]).await?;
        let stats = response.dml_stats.unwrap_or_default();
        Ok(MergeOutcome {
            affected_rows: rows.num_dml_affected_rows.unwrap_or_default(),
            inserted: stats.inserted_row_count,
            updated: stats.updated_row_count,
            deleted: None,
        })
    }

    async fn dry_run_merge(
        &self,
        request: &MergeRequest,
        target: &WarehouseTable,
    ) -> Result<Vec<(String, u64)>, WarehouseError> {
        let statements =
            super::dml::dry_run_statements(request, target, |name| self.qualified(name))?;
        let mut priced = Vec::with_capacity(statements.len());
        for (name, sql) in statements {
            let context = format!(
                "dry run of the {name} into {}.{}",
                self.dataset, request.target
            );
            priced.push((name, self.dry_run(&context, &sql).await?));
        }
        Ok(priced)
    }

    async fn count_duplicate_keys(
        &self,
        table: &str,
        keys: &[String],
    ) -> Result<u64, WarehouseError> {
        let context = format!("duplicate keys in {}.{table}", self.dataset);
        let sql = super::dml::duplicate_keys_query(&self.qualified(table), keys);
        let (rows, _) = self.run_query(&context, &sql, &[]).await?;
        Ok(rows
            .scalar()
            .and_then(|cell| cell.as_u64().or_else(|| cell.as_str()?.parse().ok()))
            .unwrap_or(0))
    }

    async fn copy_rows_by_key(&self, request: &CopyRowsByKey) -> Result<u64, WarehouseError> {
        let context = format!(
            "copy rows by key from {}.{} into {}.{}",
            self.dataset, request.from, self.dataset, request.into
        );
        let keys: Vec<String> = request.keys.iter().map(|(name, _)| name.clone()).collect();
        let sql = super::dml::copy_rows_by_key_statement(
            &self.qualified(&request.from),
            &self.qualified(&request.into),
            &request.columns,
            &keys,
        );
        let fields = request
            .keys
            .iter()
            .enumerate()
            .map(|(index, (_, bq_type))| (format!("k{index}"), *bq_type))
            .collect();
        let param = QueryParam::struct_array("keys", fields, request.values.clone());
        let (rows, _) = self.run_query(&context, &sql, &[param]).await?;
        Ok(rows.num_dml_affected_rows.unwrap_or_default())
    }

    async fn insert_from(
        &self,
        staging: &str,
        target: &str,
        columns: &[String],
        replace: bool,
    ) -> Result<(), WarehouseError> {
        let context = format!(
            "write {}.{staging} into {}.{target}",
            self.dataset, self.dataset
        );
        if columns.is_empty() {
            return Err(WarehouseError::Invalid(format!("{context}: no columns")));
        }
        let list = columns
            .iter()
            .map(|column| quote_ident(column))
            .collect::<Vec<_>>()
            .join(", ");
        let target_name = self.qualified(target);
        let insert = format!(
            "INSERT INTO {target_name} ({list}) SELECT {list} FROM {}",
            self.qualified(staging)
        );
        let sql = if replace {
            format!(
                "BEGIN TRANSACTION;\nTRUNCATE TABLE {target_name};\n{insert};\nCOMMIT TRANSACTION;"
            )
        } else {
            insert
        };
        self.run_query(&context, &sql, &[]).await?;
        Ok(())
    }

    async fn max_value(&self, table: &str, column: &str) -> Result<Value, WarehouseError> {
        let context = format!("max of {column} in table {}.{table}", self.dataset);
        let sql = format!(
            "SELECT MAX({}) AS max_value FROM {}",
            quote_ident(column),
            self.qualified(table)
        );
        let (rows, _) = self.run_query(&context, &sql, &[]).await?;
        Ok(rows.scalar().cloned().unwrap_or(Value::Null))
    }

    async fn copy_table(&self, request: &CopyRequest) -> Result<(), WarehouseError> {
        self.run_copy(request).await
    }

    async fn create_table_with(
        &self,
        table: &WarehouseTable,
        meta: &TableMeta,
    ) -> Result<(), WarehouseError> {
        let context = format!("create table {}.{}", self.dataset, table.name);
        let mut resource = TableResource::new(&self.project, &self.dataset, table);
        resource.description = meta.description.clone();
        resource.expiration_time = meta.expires_at_ms.map(|ms| ms.to_string());
        let mut body = serde_json::to_value(resource)
            .map_err(|error| WarehouseError::Invalid(format!("{context}: {error}")))?;
        body["labels"] = self.table_labels();
        let url = self.api_url(&["datasets", &self.dataset, "tables"])?;
        self.send(&context, Method::POST, url, Some(&body))
            .await
            .map(drop)
    }

    async fn patch_table_meta(
        &self,
        name: &str,
        meta: &TableMeta,
        etag: Option<&str>,
    ) -> Result<(), WarehouseError> {
        let context = format!("patch table {}.{name}", self.dataset);
        let mut body = json!({});
        if let Some(description) = &meta.description {
            body["description"] = json!(description);
        }
        if let Some(ms) = meta.expires_at_ms {
            body["expirationTime"] = json!(ms.to_string());
        }
        let url = self.api_url(&["datasets", &self.dataset, "tables", name])?;
        self.send_if_match(&context, Method::PATCH, url, Some(&body), etag)
            .await
            .map(drop)
    }

    async fn list_tables(&self, prefix: &str) -> Result<Vec<String>, WarehouseError> {
        Ok(self
            .list_pages()
            .await?
            .into_iter()
            .map(|entry| entry.table_reference.table_id)
            .filter(|name| name.starts_with(prefix))
            .collect())
    }

    async fn list_dataset(&self) -> Result<Vec<ListedTable>, WarehouseError> {
        let emulator = self.emulator;
        Ok(self
            .list_pages()
            .await?
            .into_iter()
            .map(|entry| ListedTable {
                name: entry.table_reference.table_id,
                kind: entry.kind,
                // Real BigQuery lists a table's labels (none listed: it has none); the
                // emulator lists none ever (scripts/EMULATOR.md).
                labels: (!emulator).then(|| entry.labels.unwrap_or_default()),
            })
            .collect())
    }

    async fn get_tables(
        &self,
        names: &[String],
    ) -> Result<Vec<Option<ExistingTable>>, WarehouseError> {
        // tables.get is free, but BigQuery throttles API calls per user and method
        // (https://cloud.google.com/bigquery/quotas#api_request_quotas): paced below that,
        // with a bounded number in flight. The emulator has no such quota.
        let pace = (!self.emulator).then_some(TABLES_GET_PER_SECOND);
        get_tables_bounded(self, names, GET_TABLES_CONCURRENCY, pace).await
    }

    async fn job_state(&self, job_id: &str) -> Result<Option<super::JobState>, WarehouseError> {
        self.job_state_of(job_id).await
    }

    async fn cancel_job(&self, job_id: &str) -> Result<(), WarehouseError> {
        let context = format!("cancel job {job_id}");
        let mut url = self.api_url(&["jobs", job_id, "cancel"])?;
        if let Some(location) = self.job_location().await? {
            url.query_pairs_mut().append_pair("location", &location);
        }
        match self.send(&context, Method::POST, url, None).await {
            Err(error) if error.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    async fn update_table(&self, name: &str, update: &TableUpdate) -> Result<(), WarehouseError> {
        self.patch_table_metadata(name, update).await
    }
}
