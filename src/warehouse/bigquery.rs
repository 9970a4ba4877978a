//! [`Warehouse`] over the BigQuery REST API (reqwest + our own serde structs). Access tokens
//! come from a `gcp_bigquery_client::auth::Authenticator`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::yup_oauth2;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio::sync::mpsc::Receiver;

use super::model::{
    JobReference, JobResource, QueryResponse, TableResource, decode_row, error_from_body,
    query_columns,
};
use super::retry::{RetryPolicy, is_retryable, jitter, parse_retry_after};
use super::upload::{DEFAULT_CHUNK_SIZE, check_chunk_size};
use super::{
    AlterColumn, Disposition, ExistingTable, LoadOutcome, LoadRequest, MergeOutcome, MergeRequest,
    QueryParam, QueryRows, Warehouse, WarehouseError, alter_statement, merge_statement, poll_delay,
    quote_ident,
};
use crate::manifest::resolve::BigQuerySpec;
use crate::schema::{FieldMode, WarehouseTable};

const PRODUCTION_BASE: &str = "https://bigquery.googleapis.com";
const SCOPES: &[&str] = &["https://www.googleapis.com/auth/bigquery"];

/// The emulator takes any token.
#[derive(Clone)]
struct StaticToken;

#[async_trait]
impl Authenticator for StaticToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("emulator-dummy-token".into())
    }
}

/// A yup-oauth2 authenticator (service account key or application default credentials) behind
/// the crate's [`Authenticator`] trait (the crate's own constructors are not public).
#[derive(Clone)]
struct YupToken(yup_oauth2::authenticator::DefaultAuthenticator);

#[async_trait]
impl Authenticator for YupToken {
    async fn access_token(&self) -> Result<String, BQError> {
        let token = self.0.token(SCOPES).await?;
        token.token().map(str::to_string).ok_or(BQError::NoToken)
    }
}

/// The application-default credentials file gcloud writes
/// (`gcloud auth application-default login`), if it exists.
/// (`BigQuerySpec::gcloud_credentials`, resolved from the environment snapshot), when it exists.
fn gcloud_adc_file(path: Option<&str>) -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from(path?);
    path.is_file().then_some(path)
}

/// Builds the authenticator: a credentials file (`bigquery.credentials`, else
/// `GOOGLE_APPLICATION_CREDENTIALS` — the manifest overlay puts it there — else gcloud's
/// application-default file) holding a service account or an authorized user; without a file,
/// the GCE/GKE metadata server.
async fn build_authenticator(
    credentials: Option<&str>,
    gcloud_credentials: Option<&str>,
) -> Result<Arc<dyn Authenticator>, WarehouseError> {
    let path = credentials
        .map(std::path::PathBuf::from)
        .or_else(|| gcloud_adc_file(gcloud_credentials));
    let auth = match path {
        Some(path) => {
            let shown = path.display().to_string();
            let text = tokio::fs::read(&path).await.map_err(|error| {
                WarehouseError::Auth(format!("cannot read credentials {shown}: {error}"))
            })?;
            let kind = serde_json::from_slice::<Value>(&text)
                .ok()
                .and_then(|value| {
                    value
                        .get("type")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_default();
            match kind.as_str() {
                "service_account" => {
                    let key = yup_oauth2::parse_service_account_key(&text).map_err(|error| {
                        WarehouseError::Auth(format!("service-account key {shown}: {error}"))
                    })?;
                    yup_oauth2::ServiceAccountAuthenticator::builder(key)
                        .build()
                        .await
                        .map_err(|error| {
                            WarehouseError::Auth(format!("service-account key {shown}: {error}"))
                        })?
                }
                "authorized_user" => {
                    let secret = yup_oauth2::read_authorized_user_secret(&path)
                        .await
                        .map_err(|error| {
                            WarehouseError::Auth(format!(
                                "authorized-user credentials {shown}: {error}"
                            ))
                        })?;
                    yup_oauth2::AuthorizedUserAuthenticator::builder(secret)
                        .build()
                        .await
                        .map_err(|error| {
                            WarehouseError::Auth(format!(
                                "authorized-user credentials {shown}: {error}"
                            ))
                        })?
                }
                other => {
                    return Err(WarehouseError::Auth(format!(
                        "credentials {shown} are of type `{other}`; use a service-account key or `gcloud auth application-default login`"
                    )));
                }
            }
        }
        None => {
            let options = yup_oauth2::ApplicationDefaultCredentialsFlowOpts::default();
            let built = match yup_oauth2::ApplicationDefaultCredentialsAuthenticator::builder(
                options,
            )
            .await
            {
                yup_oauth2::authenticator::ApplicationDefaultCredentialsTypes::InstanceMetadata(
                    builder,
                ) => builder.build().await,
                yup_oauth2::authenticator::ApplicationDefaultCredentialsTypes::ServiceAccount(
                    builder,
                ) => builder.build().await,
            };
            built.map_err(|error| {
                WarehouseError::Auth(format!("application default credentials: {error}"))
            })?
        }
    };
    Ok(Arc::new(YupToken(auth)))
}

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
    pub(super) location: String,
    emulator: bool,
    credentials: Option<String>,
    gcloud_credentials: Option<String>,
    auth: OnceCell<Arc<dyn Authenticator>>,
    pub(super) retry: RetryPolicy,
    pub(super) chunk_size: usize,
    completed_loads: Mutex<HashMap<String, LoadOutcome>>,
}

impl std::fmt::Debug for BigQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigQuery")
            .field("base", &self.base)
            .field("project", &self.project)
            .field("dataset", &self.dataset)
            .field("location", &self.location)
            .field("emulator", &self.emulator)
            .finish_non_exhaustive()
    }
}

impl BigQuery {
    /// A client for `spec`. With `spec.endpoint` (an emulator) no credentials are used; otherwise
    /// tokens come from the service-account key file `spec.credentials`, or from application
    /// default credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud, metadata server). No network
    /// call happens here; credentials are loaded on first use.
    pub fn new(spec: &BigQuerySpec) -> Result<Self, WarehouseError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|error| {
                WarehouseError::Invalid(format!("cannot build the HTTP client: {error}"))
            })?;
        let (base, emulator) = match &spec.endpoint {
            Some(endpoint) => (endpoint.trim_end_matches('/').to_string(), true),
            None => (PRODUCTION_BASE.to_string(), false),
        };
        Url::parse(&base).map_err(|error| {
            WarehouseError::Invalid(format!("bad BigQuery endpoint {base}: {error}"))
        })?;
        let auth = OnceCell::new();
        if emulator {
            let token: Arc<dyn Authenticator> = Arc::new(StaticToken);
            // A fresh cell can't be full.
            let _ = auth.set(token);
        }
        Ok(Self {
            http,
            base,
            project: spec.project.clone(),
            dataset: spec.dataset.clone(),
            location: spec.location.clone(),
            emulator,
            credentials: spec.credentials.clone(),
            gcloud_credentials: spec.gcloud_credentials.clone(),
            auth,
            retry: RetryPolicy::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            completed_loads: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
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

    async fn token(&self) -> Result<String, WarehouseError> {
        let auth = self
            .auth
            .get_or_try_init(|| {
                build_authenticator(
                    self.credentials.as_deref(),
                    self.gcloud_credentials.as_deref(),
                )
            })
            .await?;
        auth.access_token()
            .await
            .map_err(|error| WarehouseError::Auth(error.to_string()))
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

    /// One HTTP exchange without retries. Transport failures become [`WarehouseError::Transport`].
    pub(super) async fn exchange(
        &self,
        context: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Reply, WarehouseError> {
        let token = self.token().await?;
        let response = request
            .bearer_auth(token)
            .send()
            .await
            .map_err(|error| transport(context, error))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|error| transport(context, error))?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// A JSON call with retries on transport errors, 429, 5xx and retryable reasons.
    /// Non-2xx answers become [`WarehouseError::Api`].
    pub(super) async fn send(
        &self,
        context: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Reply, WarehouseError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(body) = body {
                request = request.json(body);
            }
            let (error, retry_after) = match self.exchange(context, request).await {
                Ok(reply) if reply.status.is_success() => return Ok(reply),
                Ok(reply) => {
                    let (reason, message) = error_from_body(&reply.body);
                    let retry_after = parse_retry_after(
                        reply
                            .headers
                            .get("retry-after")
                            .and_then(|value| value.to_str().ok()),
                    );
                    let status = reply.status.as_u16();
                    let error = WarehouseError::Api {
                        context: context.to_string(),
                        status,
                        reason,
                        message,
                    };
                    if !is_retryable(status, error.reason().unwrap_or_default()) {
                        return Err(error);
                    }
                    (error, retry_after)
                }
                Err(error) if error.retryable() => (error, None),
                Err(error) => return Err(error),
            };
            if !self.retry.should_retry(attempt) {
                return Err(error);
            }
            let delay = self.retry.delay(attempt, retry_after, jitter());
            tracing::debug!(%error, attempt, ?delay, "retrying BigQuery call");
            tokio::time::sleep(delay).await;
        }
    }

    pub(super) async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        context: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<T, WarehouseError> {
        let reply = self.send(context, method, url, body).await?;
        parse_json(context, &reply.body)
    }

    /// jobs.get; `None` when the job does not exist.
    pub(super) async fn get_job(
        &self,
        job_id: &str,
        location: Option<&str>,
    ) -> Result<Option<JobResource>, WarehouseError> {
        let context = format!("get job {job_id}");
        let mut url = self.api_url(&["jobs", job_id])?;
        url.query_pairs_mut()
            .append_pair("location", location.unwrap_or(&self.location));
        match self.send_json(&context, Method::GET, url, None).await {
            Ok(job) => Ok(Some(job)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Polls jobs.get until the job is DONE (0.2 s doubling to 5 s between polls).
    pub(super) async fn wait_for_job(
        &self,
        context: &str,
        mut job: JobResource,
        job_id: &str,
    ) -> Result<JobResource, WarehouseError> {
        let mut polls = 0;
        // Keep the first known ID and location (jobs.get answers may omit the location).
        let id = job.job_id().unwrap_or(job_id).to_string();
        let location = job
            .job_reference
            .as_ref()
            .and_then(|reference| reference.location.clone());
        while !job.is_done() {
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
        })
    }

    async fn run_query(
        &self,
        context: &str,
        sql: &str,
        params: &[QueryParam],
    ) -> Result<(QueryRows, QueryResponse), WarehouseError> {
        let mut body = json!({
            "query": sql,
            "useLegacySql": false,
            "formatOptions": {"useInt64Timestamp": true},
            "location": self.location,
            "timeoutMs": 10_000,
            "requestId": request_id(sql),
        });
        if !params.is_empty() {
            body["parameterMode"] = json!("NAMED");
            body["queryParameters"] = Value::Array(
                params
                    .iter()
                    .map(|param| {
                        json!({
                            "name": param.name,
                            "parameterType": {"type": param.bq_type.as_str()},
                            "parameterValue": match &param.value { Some(value) => json!({"value": value}), None => json!({}) },
                        })
                    })
                    .collect(),
            );
        }
        let url = self.api_url(&["queries"])?;
        let mut response: QueryResponse = self
            .send_json(context, Method::POST, url, Some(&body))
            .await?;
        check_query_errors(context, &response)?;
        // Polls and pages use the first answer's job reference (later ones may omit the location).
        let reference = response.job_reference.clone();
        let mut polls = 0;
        while response.job_complete == Some(false) {
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

    async fn query_results(
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
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair(
                "location",
                reference.location.as_deref().unwrap_or(&self.location),
            );
            pairs.append_pair("timeoutMs", "10000");
            pairs.append_pair("formatOptions.useInt64Timestamp", "true");
            if let Some(token) = page_token {
                pairs.append_pair("pageToken", token);
            }
        }
        let response: QueryResponse = self.send_json(context, Method::GET, url, None).await?;
        check_query_errors(context, &response)?;
        Ok(response)
    }

    async fn empty_load(
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
        })
    }

    fn check_job_id(job_id: &str) -> Result<(), WarehouseError> {
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

fn check_query_errors(context: &str, response: &QueryResponse) -> Result<(), WarehouseError> {
    match response.errors.first() {
        None => Ok(()),
        Some(error) => Err(WarehouseError::Api {
            context: context.to_string(),
            status: 200,
            reason: error.reason(),
            message: error.message(),
        }),
    }
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    context: &str,
    body: &[u8],
) -> Result<T, WarehouseError> {
    serde_json::from_slice(body).map_err(|error| WarehouseError::Protocol {
        context: context.to_string(),
        message: format!("cannot decode the response: {error}"),
    })
}

/// A transport error without the URL (upload session URLs are capabilities).
pub(super) fn transport(context: &str, error: reqwest::Error) -> WarehouseError {
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    WarehouseError::Transport {
        context: context.to_string(),
        message,
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

#[async_trait]
impl Warehouse for BigQuery {
    async fn ensure_dataset(&self, create: bool) -> Result<(), WarehouseError> {
        let context = format!("get dataset {}.{}", self.project, self.dataset);
        let url = self.api_url(&["datasets", &self.dataset])?;
        match self.send(&context, Method::GET, url, None).await {
            Ok(_) => return Ok(()),
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
        let body = json!({
            "datasetReference": {"projectId": self.project, "datasetId": self.dataset},
            "location": self.location,
        });
        match self
            .send(
                &context,
                Method::POST,
                self.api_url(&["datasets"])?,
                Some(&body),
            )
            .await
        {
            Err(error) if error.is_duplicate() => Ok(()),
            other => other.map(drop),
        }
    }

    async fn get_table(&self, name: &str) -> Result<Option<ExistingTable>, WarehouseError> {
        let context = format!("get table {}.{name}", self.dataset);
        let url = self.api_url(&["datasets", &self.dataset, "tables", name])?;
        match self
            .send_json::<TableResource>(&context, Method::GET, url, None)
            .await
        {
            Ok(resource) => resource.to_existing().map(Some),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn create_table(&self, table: &WarehouseTable) -> Result<(), WarehouseError> {
        let context = format!("create table {}.{}", self.dataset, table.name);
        let body = serde_json::to_value(TableResource::new(&self.project, &self.dataset, table))
            .map_err(|error| WarehouseError::Invalid(format!("{context}: {error}")))?;
        let url = self.api_url(&["datasets", &self.dataset, "tables"])?;
        self.send(&context, Method::POST, url, Some(&body))
            .await
            .map(drop)
    }

    async fn alter_table(&self, name: &str, changes: &[AlterColumn]) -> Result<(), WarehouseError> {
        if changes.is_empty() {
            return Ok(());
        }
        let context = format!("alter table {}.{name}", self.dataset);
        let qualified = self.qualified(name);
        for change in changes {
            let sql = alter_statement(&qualified, change, self.emulator);
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
            let body = json!({"schema": super::model::schema_resource(&table)});
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
        let (rows, response) = self.run_query(&context, &sql, &[]).await?;
        let stats = response.dml_stats.unwrap_or_default();
        Ok(MergeOutcome {
            affected_rows: rows.num_dml_affected_rows.unwrap_or_default(),
            inserted: stats.inserted_row_count,
            updated: stats.updated_row_count,
        })
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

    async fn truncate(&self, table: &str) -> Result<(), WarehouseError> {
        let context = format!("truncate table {}.{table}", self.dataset);
        self.run_query(
            &context,
            &format!("TRUNCATE TABLE {}", self.qualified(table)),
            &[],
        )
        .await?;
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

    async fn cancel_job(&self, job_id: &str) -> Result<(), WarehouseError> {
        let context = format!("cancel job {job_id}");
        let mut url = self.api_url(&["jobs", job_id, "cancel"])?;
        url.query_pairs_mut()
            .append_pair("location", &self.location);
        match self.send(&context, Method::POST, url, None).await {
            Err(error) if error.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn build_from(contents: &str) -> Result<Arc<dyn Authenticator>, WarehouseError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        std::fs::write(&path, contents).unwrap();
        build_authenticator(path.to_str(), None).await
    }

    #[tokio::test]
    async fn credentials_files_are_recognised_by_type() {
        // gcloud's `application-default login` file.
        let user = r#"{"type": "authorized_user", "client_id": "id.apps.googleusercontent.com",
                       "client_secret": "s", "refresh_token": "r"}"#;
        assert!(build_from(user).await.is_ok());
        let error = build_from(r#"{"type": "external_account"}"#)
            .await
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("of type `external_account`"),
            "{error}"
        );
        let error = build_from("not json").await.err().unwrap();
        assert!(error.to_string().contains("of type ``"), "{error}");
        let missing = build_authenticator(Some("/nonexistent/credentials.json"), None)
            .await
            .err()
            .unwrap();
        assert!(
            missing
                .to_string()
                .contains("cannot read credentials /nonexistent/credentials.json"),
            "{missing}"
        );
    }
}
