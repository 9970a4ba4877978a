//! [`RawManifest`] → [`Manifest`]: defaults applied, identifiers parsed, semantic checks run.
//! Every problem is collected, each tied to the JSON pointer of the value at fault.

use std::collections::HashMap;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

use super::document::escape_segment;
use super::env::parse_duration;
use super::raw::{
    Consistency, RawByteSize, RawDuration, RawManifest, RawSource, RawSsh, RawTable,
    RawTypePolicies, SourceKind, TlsMode, WriteMode,
};
use super::{Code, Diagnostic, error_at, warning_at};
use crate::names;
pub use crate::schema::policy::TypePolicies;
use crate::schema::{BqTypeSpec, Deletes, LoadFormat};
use crate::secret::{REDACTED, Secret};

/// Default rows per batch.
pub const DEFAULT_BATCH_SIZE: u64 = 10_000;
/// Default bad-value budget per table.
pub const DEFAULT_MAX_PARSE_FAILURES: i64 = 100;
/// Default number of tables synced at once.
pub const DEFAULT_PARALLELISM: u32 = 4;
/// Default target size of one chunk of a table: 1 GiB.
pub const DEFAULT_CHUNK_BYTES: u64 = 1 << 30;
/// Default readers of one table at once.
pub const DEFAULT_TABLE_PARALLELISM: u32 = 2;
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated manifest with every default applied.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// The destination.
    pub bigquery: BigQuerySpec,
    /// Deadline of a whole `plan` or `apply` (connecting and planning included), if any.
    #[serde(with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Tables synced at once.
    pub parallelism: u32,
    /// Sources, in manifest order (disabled ones included).
    pub sources: Vec<SourceSpec>,
    /// Tables, in manifest order (disabled ones included).
    pub tables: Vec<TableSpec>,
    /// Table patterns (`sales.*`): templates whose `qualifier` and `name` are globs, expanded
    /// against each source's catalog at plan time (`crate::sync::patterns`).
    pub patterns: Vec<TableSpec>,
    /// Per source, the patterns of tables the `patterns` leave out.
    pub exclude: IndexMap<String, Vec<String>>,
}

/// Whether a table key is a pattern.
pub fn is_pattern(key: &str) -> bool {
    key.contains(['*', '?'])
}

/// The BigQuery destination.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BigQuerySpec {
    /// Project ID.
    pub project: String,
    /// Dataset.
    pub dataset: String,
    /// The dataset's location as configured (`bigquery.location`): used to create the dataset
    /// (default `US`) and checked against an existing dataset's. Jobs run where the dataset is.
    pub location: Option<String>,
    /// API base URL (regional, Private Service Connect, emulator); `None`: production.
    pub endpoint: Option<String>,
    /// `endpoint` is an emulator: no credentials, a dummy token, emulator workarounds.
    pub emulator: bool,
    /// Credentials file path (any Application Default Credentials type).
    pub credentials: Option<String>,
    /// Service account to impersonate on top of the credentials.
    pub impersonate_service_account: Option<String>,
    /// Extra CA bundle (PEM) for the API and token endpoints; `None`: `env.ssl_cert_file`.
    pub ca_file: Option<String>,
    /// Create the dataset if missing.
    pub create_dataset: bool,
    /// Resumable-upload chunk size in MiB; `None`: 32.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_chunk_mib: Option<u64>,
    /// `bigquery.labels`, checked against BigQuery's label rules: on created tables and jobs.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The environment variables the BigQuery client uses (credentials discovery, proxies, CA),
    /// taken from the manifest's environment snapshot.
    #[serde(skip)]
    pub env: BigQueryEnv,
}

/// The process environment as the BigQuery client sees it (only the CLI reads the real one).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BigQueryEnv {
    /// `GOOGLE_APPLICATION_CREDENTIALS` (also overlaid onto `bigquery.credentials`).
    pub google_application_credentials: Option<String>,
    /// `CLOUDSDK_CONFIG`: gcloud's configuration directory.
    pub cloudsdk_config: Option<String>,
    /// `HOME`.
    pub home: Option<String>,
    /// `GCE_METADATA_HOST`: `host[:port]` of the metadata server.
    pub gce_metadata_host: Option<String>,
    /// `HTTPS_PROXY` / `https_proxy`.
    pub https_proxy: Option<String>,
    /// `HTTP_PROXY` / `http_proxy`.
    pub http_proxy: Option<String>,
    /// `NO_PROXY` / `no_proxy`.
    pub no_proxy: Option<String>,
    /// `SSL_CERT_FILE`: extra CA bundle.
    pub ssl_cert_file: Option<String>,
}

impl std::fmt::Debug for BigQueryEnv {
    // Proxy URLs may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigQueryEnv")
            .field(
                "google_application_credentials",
                &self.google_application_credentials,
            )
            .field("cloudsdk_config", &self.cloudsdk_config)
            .field("home", &self.home)
            .field("gce_metadata_host", &self.gce_metadata_host)
            .field("https_proxy", &self.https_proxy.as_ref().map(|_| "…"))
            .field("http_proxy", &self.http_proxy.as_ref().map(|_| "…"))
            .field("no_proxy", &self.no_proxy)
            .field("ssl_cert_file", &self.ssl_cert_file)
            .finish()
    }
}

/// One source database.
#[derive(Debug, Clone, Serialize)]
pub struct SourceSpec {
    /// Name in the manifest.
    pub name: String,
    /// Engine.
    pub kind: SourceKind,
    /// Synced or not.
    pub enabled: bool,
    /// How to connect.
    pub connection: Connection,
    /// TLS.
    pub tls: TlsSpec,
    /// The SSH tunnel the database is reached through, if any.
    pub ssh: Option<SshSpec>,
    /// Most pool connections (defaults to the manifest's parallelism).
    pub max_connections: u32,
    /// Idle connections kept.
    pub min_connections: u32,
    /// Connection lifetime.
    #[serde(with = "opt_duration")]
    pub max_lifetime: Option<Duration>,
    /// Timeouts.
    pub timeouts: Timeouts,
}

/// Connection parameters. Either a URL or parts.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    /// Full URL (secret: it may hold a password).
    pub url: Option<Secret>,
    /// Host.
    pub host: String,
    /// Port (none for SQLite).
    pub port: Option<u16>,
    /// User.
    pub user: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Database (SQLite: file path).
    pub database: Option<String>,
    /// Default PostgreSQL schema.
    pub schema: Option<String>,
}

/// TLS settings.
#[derive(Debug, Clone, Serialize)]
pub struct TlsSpec {
    /// Mode.
    pub mode: TlsMode,
    /// CA path.
    pub ca: Option<String>,
    /// Client certificate path.
    pub cert: Option<String>,
    /// Client key path.
    pub key: Option<String>,
}

/// Default SSH port.
pub const DEFAULT_SSH_PORT: u16 = 22;
/// The known_hosts file used when `ssh.known_hosts` is not set.
pub const DEFAULT_KNOWN_HOSTS: &str = "~/.ssh/known_hosts";

/// An SSH tunnel to a source: the SSH server, how to log in, which host keys to trust. The
/// database's host and port (in [`Connection`]) are as the SSH server sees them.
#[derive(Debug, Clone, Serialize)]
pub struct SshSpec {
    /// The SSH server's host name, as written (and as looked up in `known_hosts`).
    pub host: String,
    /// The SSH server's port.
    pub port: u16,
    /// User name on the SSH server.
    pub user: String,
    /// Private key file (`~/` expanded).
    pub key: Option<String>,
    /// Passphrase of `key`.
    pub key_passphrase: Option<Secret>,
    /// Password.
    pub password: Option<Secret>,
    /// The known_hosts file (`~/` expanded).
    pub known_hosts: String,
}

impl SshSpec {
    /// `user@host:port`, as shown in messages.
    pub fn label(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// Source timeouts; `None` means none.
#[derive(Debug, Clone, Serialize)]
pub struct Timeouts {
    /// Connect.
    #[serde(with = "opt_duration")]
    pub connect: Option<Duration>,
    /// Read (MySQL `net_read_timeout`).
    #[serde(with = "opt_duration")]
    pub read: Option<Duration>,
    /// Write (MySQL `net_write_timeout`).
    #[serde(with = "opt_duration")]
    pub write: Option<Duration>,
    /// Statement.
    #[serde(with = "opt_duration")]
    pub statement: Option<Duration>,
}

impl TypePolicies {
    fn overlay(self, raw: &RawTypePolicies) -> Self {
        Self {
            tinyint1_as_bool: raw.tinyint1_as_bool.unwrap_or(self.tinyint1_as_bool),
            zero_dates: raw.zero_dates.unwrap_or(self.zero_dates),
            non_finite: raw.non_finite.unwrap_or(self.non_finite),
            invalid_utf8: raw.invalid_utf8.unwrap_or(self.invalid_utf8),
            decimal_overflow: raw.decimal_overflow.unwrap_or(self.decimal_overflow),
            geometry: raw.geometry.unwrap_or(self.geometry),
        }
    }
}

/// Time-unit partitioning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Partitioning {
    /// The column.
    pub column: String,
    /// `DAY`, `HOUR`, `MONTH` or `YEAR`.
    pub granularity: String,
}

/// One table to sync.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TableSpec {
    /// Source name.
    pub source: String,
    /// Source engine.
    pub source_kind: SourceKind,
    /// The key in the manifest (`table` or `qualifier.table`).
    pub key: String,
    /// Schema (PostgreSQL) or database (MySQL) qualifying the table, if given or defaulted.
    pub qualifier: Option<String>,
    /// The table's name at the source.
    pub name: String,
    /// Target table in the dataset.
    pub target: String,
    /// Synced or not (false when its source is disabled).
    pub enabled: bool,
    /// Columns to sync; `None` = all.
    pub columns: Option<Vec<String>>,
    /// Columns to leave out.
    pub exclude_columns: Vec<String>,
    /// Merge key; `None` = the source's primary key.
    pub primary_key: Option<Vec<String>>,
    /// Incremental cursor column.
    pub cursor: Option<String>,
    /// Write mode.
    pub mode: WriteMode,
    /// Rows per batch.
    pub batch_size: u64,
    /// Load format asked for.
    #[serde(default)]
    pub format: LoadFormat,
    /// Target size of one chunk, estimated bytes.
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: u64,
    /// Readers of the table at once.
    #[serde(default = "default_table_parallelism")]
    pub table_parallelism: u32,
    /// Whether its chunks come from one snapshot.
    #[serde(default)]
    pub consistency: Consistency,
    /// Bad values tolerated; `None` = unlimited.
    pub max_parse_failures: Option<u64>,
    /// Forced BigQuery types by source column.
    pub column_types: IndexMap<String, String>,
    /// Partitioning.
    pub partition_by: Option<Partitioning>,
    /// Clustering columns.
    pub cluster_by: Vec<String>,
    /// Drop-and-recreate allowed on incompatible changes.
    pub allow_recreate: bool,
    /// `merge`: what happens to target rows whose key is gone from the source (`keep` for every
    /// other mode).
    #[serde(default, skip_serializing_if = "Deletes::is_keep")]
    pub deletes: Deletes,
    /// Create and evolve the target table.
    pub auto_create: bool,
    /// Type policies.
    pub types: TypePolicies,
    /// The target's description (else the source table's comment).
    #[serde(default)]
    pub description: Option<String>,
    /// Add the lineage columns.
    #[serde(default)]
    pub lineage: bool,
    /// Custom SQL read instead of a table (checked: one statement, no parameters, no trailing
    /// `;`); `key` and `name` are then the entry's name, `qualifier` is `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

fn default_chunk_bytes() -> u64 {
    DEFAULT_CHUNK_BYTES
}

fn default_table_parallelism() -> u32 {
    DEFAULT_TABLE_PARALLELISM
}

/// A size in bytes from a [`RawByteSize`]; a problem at `pointer` when it does not parse.
fn byte_size(value: &RawByteSize, pointer: &str, problems: &mut Vec<Diagnostic>) -> Option<u64> {
    let parsed = match value {
        RawByteSize::Bytes(bytes) => Some(*bytes),
        RawByteSize::Text(text) => parse_byte_size(text),
    };
    match parsed {
        Some(bytes) if bytes > 0 => Some(bytes),
        _ => {
            let shown = match value {
                RawByteSize::Bytes(bytes) => bytes.to_string(),
                RawByteSize::Text(text) => text.clone(),
            };
            problems.push(error_at(
                pointer,
                Code::ManifestSize,
                format!("`{shown}` is not a size; use bytes (`1048576`) or a unit (`256MiB`, `1GiB`, `500MB`)"),
            ));
            None
        }
    }
}

/// `"256MiB"` → 268435456: a whole number, optionally with a unit (B, KB/MB/GB/TB in powers of
/// 1000, KiB/MiB/GiB/TiB in powers of 1024; case-insensitive).
pub fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let unit = text[digits..].trim().to_ascii_lowercase();
    let factor: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

impl TableSpec {
    /// `source.key` (`source.query:key` for a custom SQL source), as shown to users.
    pub fn label(&self) -> String {
        match self.query {
            Some(_) => format!("{}.query:{}", self.source, self.key),
            None => format!("{}.{}", self.source, self.key),
        }
    }
}

mod opt_duration {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => {
                serializer.serialize_str(&humantime::format_duration(*duration).to_string())
            }
            None => serializer.serialize_none(),
        }
    }
}

fn duration(
    value: Option<&RawDuration>,
    pointer: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<Option<Duration>> {
    let value = value?;
    let parsed = match value {
        RawDuration::Seconds(seconds) => Ok(Duration::from_secs(*seconds)),
        RawDuration::Text(text) => parse_duration(text),
    };
    match parsed {
        Ok(duration) if duration.is_zero() => Some(None),
        Ok(duration) => Some(Some(duration)),
        Err(message) => {
            problems.push(error_at(pointer, Code::ManifestDuration, message));
            None
        }
    }
}

/// Resolves a schema-valid [`RawManifest`]. Returns the manifest when no error was found, and
/// every problem (errors and warnings) either way.
/// The destination's names and endpoint, checked; returns the project and the dataset.
fn check_bigquery(raw: &RawManifest, problems: &mut Vec<Diagnostic>) -> (String, String) {
    let project = raw.bigquery.project.clone().unwrap_or_default();
    if raw.bigquery.project.is_none() {
        problems.push(
            error_at(
                "/bigquery",
                Code::ManifestMissingField,
                "missing `bigquery.project`",
            )
            .on_key()
            .with_help("set `bigquery.project` or GCP_PROJECT_ID"),
        );
    } else if let Some(message) = names::project_problem(&project) {
        problems.push(error_at(
            "/bigquery/project",
            Code::ManifestBigqueryName,
            message,
        ));
    }
    let dataset = raw.bigquery.dataset.clone().unwrap_or_default();
    if raw.bigquery.dataset.is_none() {
        problems.push(
            error_at(
                "/bigquery",
                Code::ManifestMissingField,
                "missing `bigquery.dataset`",
            )
            .on_key()
            .with_help("set `bigquery.dataset` or BQ_DATASET_ID"),
        );
    } else if let Some(message) = names::dataset_problem(&dataset) {
        problems.push(error_at(
            "/bigquery/dataset",
            Code::ManifestBigqueryName,
            message,
        ));
    }
    if let Some(endpoint) = &raw.bigquery.endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        problems.push(error_at(
            "/bigquery/endpoint",
            Code::ManifestEndpoint,
            format!("`{endpoint}` is not an http(s) URL"),
        ));
    }
    let emulator = raw.bigquery.emulator.unwrap_or(false);
    if emulator && raw.bigquery.endpoint.is_none() {
        problems.push(
            error_at(
                "/bigquery/emulator",
                Code::ManifestEmulator,
                "`emulator: true` needs `bigquery.endpoint`, the emulator's URL",
            )
            .with_help("set `bigquery.endpoint: http://127.0.0.1:9050`, or BIGQUERY_EMULATOR_HOST"),
        );
    }
    if emulator {
        for (field, set) in [
            ("credentials", raw.bigquery.credentials.is_some()),
            (
                "impersonate_service_account",
                raw.bigquery.impersonate_service_account.is_some(),
            ),
        ] {
            if set {
                problems.push(warning_at(
                    &format!("/bigquery/{field}"),
                    Code::ManifestEmulatorCredentials,
                    format!("ignored: the emulator takes no credentials (`bigquery.{field}`)"),
                ));
            }
        }
    }

    (project, dataset)
}

/// BigQuery allows 64 labels on a table or job; datasync's own take three of them.
const MAX_USER_LABELS: usize = 64 - names::DATASYNC_LABEL_KEYS.len();

/// `bigquery.labels`, each key and value checked against BigQuery's label rules
/// (<https://cloud.google.com/bigquery/docs/labels-intro#requirements>); the valid ones.
fn check_labels(
    raw: &RawManifest,
    problems: &mut Vec<Diagnostic>,
) -> std::collections::BTreeMap<String, String> {
    let mut labels = std::collections::BTreeMap::new();
    let Some(raw_labels) = &raw.bigquery.labels else {
        return labels;
    };
    if raw_labels.len() > MAX_USER_LABELS {
        problems.push(
            error_at(
                "/bigquery/labels",
                Code::ManifestLabel,
                format!(
                    "{} labels are too many: BigQuery allows 64 per job or table, and datasync sets {} itself",
                    raw_labels.len(),
                    names::DATASYNC_LABEL_KEYS.len()
                ),
            )
            .on_key(),
        );
    }
    for (key, value) in raw_labels {
        let pointer = format!("/bigquery/labels/{}", escape_segment(key));
        if names::DATASYNC_LABEL_KEYS.contains(&key.as_str()) {
            problems.push(
                error_at(
                    &pointer,
                    Code::ManifestLabel,
                    format!("label `{key}` is set by datasync itself"),
                )
                .on_key()
                .with_help("choose another key"),
            );
        } else if let Some(message) = names::label_key_problem(key) {
            problems.push(error_at(&pointer, Code::ManifestLabel, message).on_key());
        } else if let Some(message) = names::label_value_problem(value) {
            problems.push(error_at(&pointer, Code::ManifestLabel, message));
        } else {
            labels.insert(key.clone(), value.clone());
        }
    }
    labels
}

/// Every source and its tables, with the check that no two enabled tables share a target.
fn resolve_sources(
    raw: &RawManifest,
    parallelism: u32,
    default_policies: TypePolicies,
    problems: &mut Vec<Diagnostic>,
) -> (Vec<SourceSpec>, Vec<TableSpec>) {
    let mut sources = Vec::new();
    let mut tables = Vec::new();
    let mut targets: HashMap<String, String> = HashMap::new();
    for (source_name, source) in &raw.sources {
        let base = format!("/sources/{}", escape_segment(source_name));
        if source_name.is_empty()
            || !source_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problems.push(
                error_at(
                    &base,
                    Code::ManifestSourceName,
                    format!(
                        "source name `{source_name}` may only hold letters, digits, `_` and `-`"
                    ),
                )
                .on_key(),
            );
        }
        let mut spec = resolve_source(source_name, source, &base, parallelism, problems);
        if source.tables.is_empty() {
            problems.push(
                warning_at(
                    &base,
                    Code::ManifestNoTables,
                    format!("source `{source_name}` lists no tables"),
                )
                .on_key(),
            );
        }
        for (key, table) in &source.tables {
            let pointer = format!("{base}/tables/{}", escape_segment(key));
            let default_table = RawTable::default();
            let table = table.as_ref().unwrap_or(&default_table);
            let Some(table_spec) =
                resolve_table(&spec, key, table, &pointer, raw, default_policies, problems)
            else {
                continue;
            };
            if table_spec.enabled && !is_pattern(key) {
                if let Some(first) = targets.get(&table_spec.target) {
                    let target_pointer = if table.target.is_some() {
                        format!("{pointer}/target")
                    } else {
                        pointer.clone()
                    };
                    problems.push(
                        error_at(
                            &target_pointer,
                            Code::ManifestDuplicateTarget,
                            format!(
                                "target table `{}` is also written by `{first}`",
                                table_spec.target
                            ),
                        )
                        .on_key()
                        .with_help("give one of them another `target`"),
                    );
                } else {
                    targets.insert(table_spec.target.clone(), table_spec.label());
                }
            }
            tables.push(table_spec);
        }
        if source
            .pool
            .as_ref()
            .and_then(|pool| pool.max_connections)
            .is_none()
        {
            // Every reader of every table being synced at once.
            let readers = tables
                .iter()
                .filter(|table| table.source == spec.name)
                .map(|table| table.table_parallelism)
                .max()
                .unwrap_or(1);
            spec.max_connections = parallelism.saturating_mul(readers).max(1);
        }
        sources.push(spec);
    }

    (sources, tables)
}

pub fn resolve(raw: &RawManifest) -> (Option<Manifest>, Vec<Diagnostic>) {
    let mut problems = Vec::new();

    let (project, dataset) = check_bigquery(raw, &mut problems);
    let labels = check_labels(raw, &mut problems);
    let defaults = &raw.defaults;
    let timeout = duration(
        defaults.timeout.as_ref(),
        "/defaults/timeout",
        &mut problems,
    )
    .flatten();
    let parallelism = defaults.parallelism.unwrap_or(DEFAULT_PARALLELISM);
    let default_policies = TypePolicies::default().overlay(&defaults.types);

    if raw.sources.is_empty() {
        problems.push(
            error_at("", Code::ManifestNoSources, "the manifest has no sources")
                .with_help("add a `sources:` entry, or set SYNC_DATABASES for env-only mode"),
        );
    }

    let (sources, all) = resolve_sources(raw, parallelism, default_policies, &mut problems);
    check_default_deletes(raw, &all, &mut problems);
    let (patterns, tables): (Vec<TableSpec>, Vec<TableSpec>) =
        all.into_iter().partition(|table| is_pattern(&table.key));
    let exclude = raw
        .sources
        .iter()
        .filter(|(_, source)| !source.exclude.is_empty())
        .map(|(name, source)| (name.clone(), source.exclude.clone()))
        .collect();

    let has_errors = problems
        .iter()
        .any(|problem| problem.severity == super::Severity::Error);
    let manifest = (!has_errors).then(|| Manifest {
        bigquery: BigQuerySpec {
            project,
            dataset,
            location: raw.bigquery.location.clone(),
            endpoint: raw
                .bigquery
                .endpoint
                .clone()
                .map(|url| url.trim_end_matches('/').to_string()),
            emulator: raw.bigquery.emulator.unwrap_or(false),
            credentials: raw.bigquery.credentials.clone(),
            impersonate_service_account: raw.bigquery.impersonate_service_account.clone(),
            ca_file: raw.bigquery.ca_file.clone(),
            create_dataset: raw.bigquery.create_dataset.unwrap_or(false),
            upload_chunk_mib: raw.bigquery.upload_chunk_mib,
            labels,
            env: BigQueryEnv::default(),
        },
        timeout,
        parallelism,
        sources,
        tables,
        patterns,
        exclude,
    });
    (manifest, problems)
}

/// The URL or the connection parts: the scheme, what a URL makes useless, what is missing.
fn check_connection(name: &str, source: &RawSource, base: &str, problems: &mut Vec<Diagnostic>) {
    let kind = source.kind;
    if let Some(url) = &source.url {
        if !kind.accepts_url(url) {
            problems.push(error_at(
                &format!("{base}/url"),
                Code::ManifestUrl,
                format!(
                    "a {} source needs a `{}://` URL",
                    kind.as_str(),
                    kind.as_str()
                ),
            ));
        }
        for field in ["host", "port", "user", "password", "database"] {
            let set = match field {
                "host" => source.host.is_some(),
                "port" => source.port.is_some(),
                "user" => source.user.is_some(),
                "password" => source.password.is_some(),
                _ => source.database.is_some(),
            };
            if set {
                problems.push(
                    warning_at(
                        &format!("{base}/{field}"),
                        Code::ManifestUrlAndParts,
                        format!("`{field}` is ignored because `url` is set"),
                    )
                    .on_key(),
                );
            }
        }
    } else {
        let missing = if kind.is_file() {
            source.database.is_none().then(|| {
                format!(
                    "{} source `{name}` needs `url` or `database` (the file path)",
                    kind.as_str()
                )
            })
        } else if source.user.is_none() {
            Some(format!("source `{name}` needs `url` or `user`"))
        } else if kind.needs_database() && source.database.is_none() {
            Some(format!(
                "{} source `{name}` needs `url` or `database`",
                kind.as_str()
            ))
        } else {
            None
        };
        if let Some(message) = missing {
            problems.push(error_at(base, Code::ManifestMissingField, message).on_key());
        }
    }
    if source.schema.is_some() && kind.default_qualifier().is_none() {
        problems.push(
            warning_at(
                &format!("{base}/schema"),
                Code::ManifestSchemaIgnored,
                "`schema` only applies to postgres sources; MySQL tables are qualified by database",
            )
            .on_key(),
        );
    }
}

/// The source's host when it is neither loopback nor a Unix socket (where TLS adds nothing).
fn remote_host(source: &RawSource) -> Option<String> {
    let host = match (&source.url, &source.host) {
        (Some(url), _) => {
            let rest = url.split_once("://")?.1;
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host_port = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            if let Some(bracketed) = host_port.strip_prefix('[') {
                bracketed.split(']').next().unwrap_or("").to_string()
            } else {
                host_port.split(':').next().unwrap_or("").to_string()
            }
        }
        (None, Some(host)) => host.clone(),
        (None, None) => return None,
    };
    let loopback = host.is_empty()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then_some(host)
}

fn resolve_tls(source: &RawSource, base: &str, problems: &mut Vec<Diagnostic>) -> TlsSpec {
    let kind = source.kind;
    let tls_raw = source.tls.clone().unwrap_or(super::raw::RawTls {
        mode: None,
        ca: None,
        cert: None,
        key: None,
    });
    let tls_mode = tls_raw.mode.unwrap_or(if kind.is_file() {
        TlsMode::Disable
    } else {
        TlsMode::Prefer
    });
    if matches!(tls_mode, TlsMode::VerifyCa) && tls_raw.ca.is_none() {
        problems.push(warning_at(
            &format!("{base}/tls/mode"),
            Code::ManifestTls,
            "`verify-ca` without `tls.ca` verifies against the system roots",
        ));
    }
    if matches!(tls_mode, TlsMode::Disable | TlsMode::Prefer)
        && kind != SourceKind::Sqlite
        && let Some(host) = remote_host(source)
    {
        let how = if tls_mode == TlsMode::Disable {
            "without TLS"
        } else {
            "with `prefer`, which falls back to plain text and verifies nothing"
        };
        problems.push(warning_at(
            &format!("{base}/tls/mode"),
            Code::ManifestTls,
            format!(
                "the connection to `{host}` (not a loopback address) goes {how}; set `tls.mode: verify-full` (or `require`)"
            ),
        ));
    }
    if tls_raw.cert.is_some() != tls_raw.key.is_some() {
        problems.push(
            error_at(
                &format!("{base}/tls"),
                Code::ManifestTls,
                "`tls.cert` and `tls.key` go together",
            )
            .on_key(),
        );
    }
    TlsSpec {
        mode: tls_mode,
        ca: tls_raw.ca,
        cert: tls_raw.cert,
        key: tls_raw.key,
    }
}

fn resolve_timeouts(source: &RawSource, base: &str, problems: &mut Vec<Diagnostic>) -> Timeouts {
    let timeouts_raw = source.timeouts.clone().unwrap_or(super::raw::RawTimeouts {
        connect: None,
        read: None,
        write: None,
        statement: None,
    });
    Timeouts {
        connect: duration(
            timeouts_raw.connect.as_ref(),
            &format!("{base}/timeouts/connect"),
            problems,
        )
        .unwrap_or(Some(DEFAULT_CONNECT_TIMEOUT)),
        read: duration(
            timeouts_raw.read.as_ref(),
            &format!("{base}/timeouts/read"),
            problems,
        )
        .flatten(),
        write: duration(
            timeouts_raw.write.as_ref(),
            &format!("{base}/timeouts/write"),
            problems,
        )
        .flatten(),
        statement: duration(
            timeouts_raw.statement.as_ref(),
            &format!("{base}/timeouts/statement"),
            problems,
        )
        .flatten(),
    }
}

fn resolve_source(
    name: &str,
    source: &RawSource,
    base: &str,
    parallelism: u32,
    problems: &mut Vec<Diagnostic>,
) -> SourceSpec {
    let kind = source.kind;
    check_connection(name, source, base, problems);
    let tls = resolve_tls(source, base, problems);
    let timeouts = resolve_timeouts(source, base, problems);
    let pool = source.pool.clone().unwrap_or(super::raw::RawPool {
        max_connections: None,
        min_connections: None,
        max_lifetime: None,
    });
    let max_lifetime = duration(
        pool.max_lifetime.as_ref(),
        &format!("{base}/pool/max_lifetime"),
        problems,
    )
    .flatten();
    let port = source
        .port
        .and_then(|port| u16::try_from(port).ok())
        .or_else(|| kind.default_port());
    let ssh = source
        .ssh
        .as_ref()
        .and_then(|ssh| resolve_ssh(source, ssh, &format!("{base}/ssh"), problems));
    SourceSpec {
        name: name.to_string(),
        kind,
        enabled: source.enabled.unwrap_or(true),
        connection: Connection {
            url: source.url.clone().map(Secret::new),
            host: source.host.clone().unwrap_or_else(|| "localhost".into()),
            port,
            user: source.user.clone(),
            password: source.password.clone().map(Secret::new),
            database: source.database.clone(),
            schema: source.schema.clone(),
        },
        tls,
        ssh,
        max_connections: pool.max_connections.unwrap_or(parallelism).max(1),
        min_connections: pool.min_connections.unwrap_or(0),
        max_lifetime,
        timeouts,
    }
}

/// The `ssh` block of a source, checked: a networked engine, a server and a user, a way to log
/// in. Paths keep their `~/` until [`expand_home`] (the environment is not known here).
fn resolve_ssh(
    source: &RawSource,
    ssh: &RawSsh,
    pointer: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<SshSpec> {
    let kind = source.kind;
    if kind.is_file() {
        problems.push(
            error_at(
                pointer,
                Code::ManifestSsh,
                format!(
                    "a {} source is a file on this machine: it cannot be reached through `ssh`",
                    kind.as_str()
                ),
            )
            .on_key()
            .with_help("remove `ssh`, or copy the database file to where datasync runs"),
        );
        return None;
    }
    let before = problems.len();
    for (field, value) in [("host", Some(&ssh.host)), ("user", Some(&ssh.user))]
        .into_iter()
        .chain([
            ("key", ssh.key.as_ref()),
            ("known_hosts", ssh.known_hosts.as_ref()),
        ])
    {
        if value.is_some_and(|value| value.trim().is_empty()) {
            problems.push(error_at(
                &format!("{pointer}/{field}"),
                Code::ManifestSsh,
                format!("`ssh.{field}` is empty"),
            ));
        }
    }
    if ssh.key.is_none() && ssh.password.is_none() {
        problems.push(
            error_at(
                pointer,
                Code::ManifestSsh,
                "`ssh` needs `key` (a private key file) or `password` to log in",
            )
            .on_key()
            .with_help(
                "add `key: ~/.ssh/id_ed25519` (its public half in the server's authorized_keys)",
            ),
        );
    }
    if ssh.key_passphrase.is_some() && ssh.key.is_none() {
        problems.push(
            error_at(
                &format!("{pointer}/key_passphrase"),
                Code::ManifestSsh,
                "`ssh.key_passphrase` is set but there is no `ssh.key` it unlocks",
            )
            .on_key(),
        );
    }
    if source.url.is_none()
        && let Some(host) = &source.host
        && host.starts_with('/')
    {
        let base = pointer.strip_suffix("/ssh").unwrap_or(pointer);
        problems.push(error_at(
            &format!("{base}/host"),
            Code::ManifestSsh,
            format!("`{host}` is a Unix socket: an SSH tunnel reaches a database by host and port"),
        ));
    }
    (problems.len() == before).then(|| SshSpec {
        host: ssh.host.trim().to_string(),
        port: ssh
            .port
            .and_then(|port| u16::try_from(port).ok())
            .unwrap_or(DEFAULT_SSH_PORT),
        user: ssh.user.clone(),
        key: ssh.key.clone(),
        key_passphrase: ssh.key_passphrase.clone().map(Secret::new),
        password: ssh.password.clone().map(Secret::new),
        known_hosts: ssh
            .known_hosts
            .clone()
            .unwrap_or_else(|| DEFAULT_KNOWN_HOSTS.to_string()),
    })
}

/// Expands a leading `~/` of the SSH file paths with `home` (the environment's `HOME`); a `~/`
/// path without a `HOME` is an error at the field (or at `ssh` for the default known_hosts).
pub(super) fn expand_home(
    manifest: &mut Manifest,
    home: Option<&str>,
    problems: &mut Vec<Diagnostic>,
) {
    for source in &mut manifest.sources {
        let Some(ssh) = source.ssh.as_mut() else {
            continue;
        };
        let base = format!("/sources/{}/ssh", escape_segment(&source.name));
        let defaulted = ssh.known_hosts == DEFAULT_KNOWN_HOSTS;
        let fields = [
            ("key", ssh.key.as_mut()),
            ("known_hosts", Some(&mut ssh.known_hosts)),
        ];
        for (field, path) in fields {
            let Some(path) = path else { continue };
            let Some(rest) = path.strip_prefix("~/") else {
                continue;
            };
            match home.filter(|home| !home.is_empty()) {
                Some(home) => *path = format!("{}/{rest}", home.trim_end_matches('/')),
                None => {
                    let (at, what) = if field == "known_hosts" && defaulted {
                        (base.clone(), "the default `ssh.known_hosts`")
                    } else {
                        (format!("{base}/{field}"), "this path")
                    };
                    let mut problem = error_at(
                        &at,
                        Code::ManifestSsh,
                        format!("{what} (`{path}`) starts with `~/` but HOME is not set"),
                    )
                    .with_help(format!("set HOME, or write the full path of `ssh.{field}`"));
                    if at == base {
                        problem = problem.on_key();
                    }
                    problems.push(problem);
                }
            }
        }
    }
}

fn check_column_names(list: &[String], pointer: &str, what: &str, problems: &mut Vec<Diagnostic>) {
    let mut seen: Vec<&str> = Vec::new();
    for (position, column) in list.iter().enumerate() {
        if column.trim().is_empty() {
            problems.push(error_at(
                &format!("{pointer}/{position}"),
                Code::ManifestColumn,
                format!("empty column name in `{what}`"),
            ));
        } else if seen.contains(&column.as_str()) {
            problems.push(error_at(
                &format!("{pointer}/{position}"),
                Code::ManifestColumn,
                format!("column `{column}` is listed twice in `{what}`"),
            ));
        }
        seen.push(column);
    }
}

/// `table` or `qualifier.table`, with the engine's default qualifier.
fn table_name(
    source: &SourceSpec,
    key: &str,
    pointer: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<(Option<String>, String)> {
    let parts: Vec<&str> = key.split('.').collect();
    let (qualifier, name) = match parts.as_slice() {
        [name] => (None, (*name).to_string()),
        [qualifier, name] => (Some((*qualifier).to_string()), (*name).to_string()),
        _ => {
            problems.push(
                error_at(
                    pointer,
                    Code::ManifestTableName,
                    format!("`{key}` has too many parts: use `table` or `schema.table`"),
                )
                .on_key(),
            );
            return None;
        }
    };
    if name.is_empty() || qualifier.as_deref() == Some("") {
        problems.push(
            error_at(
                pointer,
                Code::ManifestTableName,
                format!("`{key}` is not a table name"),
            )
            .on_key(),
        );
        return None;
    }
    if source.kind.is_file() && qualifier.is_some() {
        problems.push(
            error_at(
                pointer,
                Code::ManifestTableName,
                format!("{} tables are not qualified", source.kind.as_str()),
            )
            .on_key(),
        );
    }
    let qualifier = qualifier.or_else(|| {
        source.kind.default_qualifier().map(|default| {
            source
                .connection
                .schema
                .clone()
                .unwrap_or_else(|| default.into())
        })
    });

    Some((qualifier, name))
}

/// The target table's name, checked.
fn table_target(
    key: &str,
    table: &RawTable,
    pointer: &str,
    problems: &mut Vec<Diagnostic>,
) -> String {
    let target = table
        .target
        .clone()
        .unwrap_or_else(|| key.replace('.', "__"));
    if let Some(message) = names::table_problem(&target) {
        let at = if table.target.is_some() {
            format!("{pointer}/target")
        } else {
            pointer.to_string()
        };
        let mut problem = error_at(&at, Code::ManifestBigqueryName, message);
        if table.target.is_none() {
            problem = problem
                .on_key()
                .with_help("set `target` to a valid BigQuery table name");
        }
        problems.push(problem);
    }

    target
}

/// The column lists: not empty, no blanks or repeats.
fn check_column_lists(
    table: &RawTable,
    pointer: &str,
    problems: &mut Vec<Diagnostic>,
) -> Vec<String> {
    if let Some(columns) = &table.columns {
        if columns.is_empty() {
            problems.push(error_at(
                &format!("{pointer}/columns"),
                Code::ManifestColumn,
                "`columns` is empty: leave it out to sync every column",
            ));
        }
        check_column_names(columns, &format!("{pointer}/columns"), "columns", problems);
    }
    let exclude = table.exclude_columns.clone().unwrap_or_default();
    check_column_names(
        &exclude,
        &format!("{pointer}/exclude_columns"),
        "exclude_columns",
        problems,
    );
    if let Some(primary_key) = &table.primary_key {
        if primary_key.is_empty() {
            problems.push(error_at(
                &format!("{pointer}/primary_key"),
                Code::ManifestPrimaryKey,
                "`primary_key` is empty",
            ));
        }
        check_column_names(
            primary_key,
            &format!("{pointer}/primary_key"),
            "primary_key",
            problems,
        );
    }

    exclude
}

/// Every column the table names (key, cursor, overrides, layout) must be selected; returns
/// the overrides, the partitioning and the clustering.
fn check_named_columns(
    table: &RawTable,
    exclude: &[String],
    pointer: &str,
    problems: &mut Vec<Diagnostic>,
) -> (IndexMap<String, String>, Option<Partitioning>, Vec<String>) {
    let selected = |column: &str| {
        table
            .columns
            .as_ref()
            .is_none_or(|columns| columns.iter().any(|c| c == column))
            && !exclude.iter().any(|c| c == column)
    };
    let check_selected = |column: &str, at: String, what: &str, problems: &mut Vec<Diagnostic>| {
        if !selected(column) {
            let why = if exclude.iter().any(|c| c == column) {
                "is excluded by `exclude_columns`"
            } else {
                "is not in `columns`"
            };
            problems.push(error_at(
                &at,
                Code::ManifestUnknownColumn,
                format!("{what} `{column}` {why}"),
            ));
        }
    };
    if let Some(primary_key) = &table.primary_key {
        for (position, column) in primary_key.iter().enumerate() {
            check_selected(
                column,
                format!("{pointer}/primary_key/{position}"),
                "primary key column",
                problems,
            );
        }
    }
    if let Some(cursor) = &table.cursor {
        check_selected(
            cursor,
            format!("{pointer}/cursor"),
            "cursor column",
            problems,
        );
    }
    let column_types = table.column_types.clone().unwrap_or_default();
    for (column, bq_type) in &column_types {
        let at = format!("{pointer}/column_types/{}", escape_segment(column));
        check_selected(column, at.clone(), "column_types names column", problems);
        if let Err(message) = bq_type.parse::<BqTypeSpec>() {
            problems.push(error_at(&at, Code::ManifestColumnType, message));
        }
    }
    let partition_by = table.partition_by.as_ref().and_then(|text| {
        let (column, granularity) = text.split_once(':').unwrap_or((text.as_str(), "DAY"));
        let granularity = granularity.trim().to_ascii_uppercase();
        let at = format!("{pointer}/partition_by");
        if !["DAY", "HOUR", "MONTH", "YEAR"].contains(&granularity.as_str()) {
            problems.push(error_at(
                &at,
                Code::ManifestPartition,
                format!(
                    "`{granularity}` is not a partition granularity (DAY, HOUR, MONTH or YEAR)"
                ),
            ));
            return None;
        }
        check_selected(column.trim(), at, "partition column", problems);
        Some(Partitioning {
            column: column.trim().to_string(),
            granularity,
        })
    });
    let cluster_by = table.cluster_by.clone().unwrap_or_default();
    if cluster_by.len() > 4 {
        problems.push(error_at(
            &format!("{pointer}/cluster_by"),
            Code::ManifestCluster,
            format!(
                "BigQuery clusters on at most 4 columns, not {}",
                cluster_by.len()
            ),
        ));
    }
    for (position, column) in cluster_by.iter().enumerate() {
        check_selected(
            column,
            format!("{pointer}/cluster_by/{position}"),
            "cluster column",
            problems,
        );
    }

    (column_types, partition_by, cluster_by)
}

/// What the write mode needs: a key for `merge`, a cursor for `incremental`.
fn check_mode(
    key: &str,
    table: &RawTable,
    mode: WriteMode,
    pointer: &str,
    problems: &mut Vec<Diagnostic>,
) {
    match mode {
        WriteMode::Incremental if table.cursor.is_none() => problems.push(
            error_at(
                pointer,
                Code::ManifestIncrementalWithoutCursor,
                format!("table `{key}` uses mode `incremental` but has no `cursor`"),
            )
            .on_key()
            .with_help("add `cursor: updated_at` (a column that grows with every change)"),
        ),
        _ => {}
    }
    if let Some(deletes) = table.deletes.filter(|deletes| !deletes.is_keep())
        && mode != WriteMode::Merge
    {
        problems.push(
            error_at(
                &format!("{pointer}/deletes"),
                Code::ManifestDeletesWithoutMerge,
                format!(
                    "`deletes: {}` needs mode `merge` (the key decides which rows are gone), but table `{key}` uses `{}`",
                    deletes.as_str(),
                    mode.as_str()
                ),
            )
            .on_key()
            .with_help("set `mode: merge` with a `primary_key`, or remove `deletes`"),
        );
    }
    if table.cursor.is_some() && !matches!(mode, WriteMode::Incremental | WriteMode::Merge) {
        problems.push(
            warning_at(
                &format!("{pointer}/cursor"),
                Code::ManifestCursorUnused,
                format!(
                    "`cursor` is only used by modes `incremental` and `merge`, not `{}`",
                    mode.as_str()
                ),
            )
            .on_key(),
        );
    }
}

/// A table's `deletes`: its own, else the defaults' for a merge table; `keep` for every other
/// mode (a table's own `deletes` on another mode is an error, see [`check_mode`]).
fn table_deletes(table: &RawTable, mode: WriteMode, default: Option<Deletes>) -> Deletes {
    if mode != WriteMode::Merge {
        return Deletes::Keep;
    }
    table.deletes.or(default).unwrap_or_default()
}

/// `defaults.deletes` that no merge table inherits is a warning: it does nothing.
fn check_default_deletes(raw: &RawManifest, tables: &[TableSpec], problems: &mut Vec<Diagnostic>) {
    let Some(deletes) = raw.defaults.deletes.filter(|deletes| !deletes.is_keep()) else {
        return;
    };
    if tables.iter().any(|table| table.mode == WriteMode::Merge) {
        return;
    }
    problems.push(
        warning_at(
            "/defaults/deletes",
            Code::ManifestDeletesWithoutMerge,
            format!(
                "`deletes: {}` applies to tables in mode `merge` only, and no table uses it",
                deletes.as_str()
            ),
        )
        .on_key(),
    );
}

fn resolve_table(
    source: &SourceSpec,
    key: &str,
    table: &RawTable,
    pointer: &str,
    raw: &RawManifest,
    default_policies: TypePolicies,
    problems: &mut Vec<Diagnostic>,
) -> Option<TableSpec> {
    let defaults = &raw.defaults;
    let query = match &table.query {
        Some(text) => Some(check_query(source, key, text, pointer, problems)?),
        None => None,
    };
    let (qualifier, name) = if query.is_some() {
        (None, key.to_string())
    } else {
        table_name(source, key, pointer, problems)?
    };
    let target = if is_pattern(key) {
        if table.target.is_some() {
            problems.push(
                error_at(
                    &format!("{pointer}/target"),
                    Code::ManifestTableName,
                    format!("the pattern `{key}` matches many tables: it cannot set one `target`"),
                )
                .on_key(),
            );
        }
        key.to_string()
    } else {
        table_target(key, table, pointer, problems)
    };
    let mode = table.mode.or(defaults.mode).unwrap_or(WriteMode::Replace);
    let exclude = check_column_lists(table, pointer, problems);
    let (column_types, partition_by, cluster_by) =
        check_named_columns(table, &exclude, pointer, problems);
    check_mode(key, table, mode, pointer, problems);
    let lineage = table.lineage.or(defaults.lineage).unwrap_or(false);
    if lineage {
        check_lineage_columns(table, pointer, problems);
    }
    if query.is_some() && mode == WriteMode::Merge && table.primary_key.is_none() {
        problems.push(
            error_at(
                pointer,
                Code::ManifestMergeWithoutKey,
                format!("query `{key}` uses mode `merge` but has no `primary_key` (a query has none of its own)"),
            )
            .on_key()
            .with_help("add `primary_key: [id]`: the result columns that identify a row"),
        );
    }
    let max_parse_failures = table
        .max_parse_failures
        .or(defaults.max_parse_failures)
        .unwrap_or(DEFAULT_MAX_PARSE_FAILURES);
    let types = table
        .types
        .as_ref()
        .map_or(default_policies, |raw| default_policies.overlay(raw));
    let chunk_bytes = match (&table.chunk_bytes, &defaults.chunk_bytes) {
        (Some(size), _) => byte_size(size, &format!("{pointer}/chunk_bytes"), problems),
        (None, Some(size)) => byte_size(size, "/defaults/chunk_bytes", problems),
        (None, None) => None,
    }
    .unwrap_or(DEFAULT_CHUNK_BYTES);
    Some(TableSpec {
        source: source.name.clone(),
        source_kind: source.kind,
        key: key.to_string(),
        qualifier,
        name,
        target,
        enabled: source.enabled && table.enabled.unwrap_or(true),
        columns: table.columns.clone(),
        exclude_columns: exclude,
        primary_key: table.primary_key.clone(),
        cursor: table.cursor.clone(),
        mode,
        batch_size: table
            .batch_size
            .or(defaults.batch_size)
            .unwrap_or(DEFAULT_BATCH_SIZE),
        format: table.format.or(defaults.format).unwrap_or_default(),
        chunk_bytes,
        table_parallelism: table
            .table_parallelism
            .or(defaults.table_parallelism)
            .unwrap_or(DEFAULT_TABLE_PARALLELISM)
            .max(1),
        consistency: table
            .consistency
            .or(defaults.consistency)
            .unwrap_or_default(),
        max_parse_failures: u64::try_from(max_parse_failures).ok(),
        column_types,
        partition_by,
        cluster_by,
        allow_recreate: table
            .allow_recreate
            .or(defaults.allow_recreate)
            .unwrap_or(false),
        deletes: table_deletes(table, mode, defaults.deletes),
        auto_create: defaults.auto_create.unwrap_or(true),
        types,
        description: table.description.clone(),
        lineage,
        query,
    })
}

/// With `lineage: true`, `columns` and `column_types` may not name a lineage column: the
/// source column would collide with the one datasync adds (`exclude_columns` may name it).
fn check_lineage_columns(table: &RawTable, pointer: &str, problems: &mut Vec<Diagnostic>) {
    let lineage = |column: &str| {
        [
            crate::schema::LINEAGE_SYNCED_AT,
            crate::schema::LINEAGE_RUN_ID,
        ]
        .into_iter()
        .find(|name| name.eq_ignore_ascii_case(&names::sanitize_column(column)))
    };
    let message = |column: &str, name: &str| {
        format!("column `{column}` collides with `{name}`, a lineage column `lineage: true` adds")
    };
    for (position, column) in table.columns.iter().flatten().enumerate() {
        if let Some(name) = lineage(column) {
            problems.push(
                error_at(
                    &format!("{pointer}/columns/{position}"),
                    Code::ManifestLineageColumn,
                    message(column, name),
                )
                .with_help("leave it out of `columns`, or turn `lineage` off"),
            );
        }
    }
    for column in table.column_types.iter().flat_map(IndexMap::keys) {
        if let Some(name) = lineage(column) {
            problems.push(
                error_at(
                    &format!("{pointer}/column_types/{}", escape_segment(column)),
                    Code::ManifestLineageColumn,
                    message(column, name),
                )
                .on_key()
                .with_help("add it to `exclude_columns`, or turn `lineage` off"),
            );
        }
    }
}

/// A `query` entry: named like a target (not a pattern, not `schema.table`), its text checked
/// for the source's engine. Returns the text as it is sent.
fn check_query(
    source: &SourceSpec,
    key: &str,
    text: &str,
    pointer: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<String> {
    let named = if is_pattern(key) {
        Some(format!(
            "`{key}` is a pattern, but a `query` entry is one table: name it by its target"
        ))
    } else if key.contains('.') {
        Some(format!(
            "`{key}` names a source table, but a `query` entry is named by its target: use a name without `.`"
        ))
    } else {
        None
    };
    if let Some(message) = named {
        problems.push(
            error_at(pointer, Code::ManifestQuery, message)
                .on_key()
                .with_help(
                    "e.g. `daily_orders: { query: \"SELECT …\" }` writes table `daily_orders`",
                ),
        );
        return None;
    }
    match super::query::check(text, source.kind) {
        Ok(sent) => Some(sent),
        Err(problem) => {
            problems.push(
                error_at(
                    &format!("{pointer}/query"),
                    Code::ManifestQuery,
                    problem.message,
                )
                .with_help(problem.help),
            );
            None
        }
    }
}

impl TableSpec {
    /// The table entry in its file shape, every default written out (see [`Manifest::to_raw`]).
    pub fn to_raw(&self) -> RawTable {
        let table = self;
        let policies = table.types;
        RawTable {
            target: (!is_pattern(&table.key)).then(|| table.target.clone()),
            enabled: Some(table.enabled),
            columns: table.columns.clone(),
            exclude_columns: Some(table.exclude_columns.clone()).filter(|list| !list.is_empty()),
            primary_key: table.primary_key.clone(),
            cursor: table.cursor.clone(),
            mode: Some(table.mode),
            batch_size: Some(table.batch_size),
            format: Some(table.format),
            chunk_bytes: Some(RawByteSize::Bytes(table.chunk_bytes)),
            table_parallelism: Some(table.table_parallelism),
            consistency: Some(table.consistency),
            max_parse_failures: Some(
                table
                    .max_parse_failures
                    .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            ),
            column_types: Some(table.column_types.clone()).filter(|map| !map.is_empty()),
            partition_by: table
                .partition_by
                .as_ref()
                .map(|p| format!("{}:{}", p.column, p.granularity)),
            cluster_by: Some(table.cluster_by.clone()).filter(|list| !list.is_empty()),
            allow_recreate: Some(table.allow_recreate),
            deletes: (table.mode == WriteMode::Merge).then_some(table.deletes),
            description: table.description.clone(),
            lineage: Some(table.lineage),
            query: table.query.clone(),
            types: Some(RawTypePolicies {
                tinyint1_as_bool: Some(policies.tinyint1_as_bool),
                zero_dates: Some(policies.zero_dates),
                non_finite: Some(policies.non_finite),
                invalid_utf8: Some(policies.invalid_utf8),
                decimal_overflow: Some(policies.decimal_overflow),
                geometry: Some(policies.geometry),
            }),
        }
    }
}

impl Manifest {
    /// The manifest in its file shape with every default written out: what `validate
    /// --show-effective` prints and what `env-to-manifest` serialises.
    pub fn to_raw(&self) -> RawManifest {
        use super::raw::{RawBigQuery, RawDefaults, RawPool, RawTimeouts, RawTls};
        let seconds = |duration: Option<Duration>| {
            Some(RawDuration::Text(duration.map_or_else(
                || "0s".to_string(),
                |d| humantime::format_duration(d).to_string(),
            )))
        };
        let mut sources = IndexMap::new();
        for source in &self.sources {
            let connection = &source.connection;
            let tables = self
                .tables
                .iter()
                .chain(&self.patterns)
                .filter(|table| table.source == source.name)
                .map(|table| (table.key.clone(), Some(table.to_raw())))
                .collect();
            sources.insert(
                source.name.clone(),
                RawSource {
                    kind: source.kind,
                    enabled: Some(source.enabled),
                    url: connection.url.as_ref().map(|url| url.expose().to_string()),
                    host: connection.url.is_none().then(|| connection.host.clone()),
                    port: connection
                        .url
                        .is_none()
                        .then_some(connection.port)
                        .flatten()
                        .map(u32::from),
                    user: connection.user.clone(),
                    password: connection
                        .password
                        .as_ref()
                        .map(|password| password.expose().to_string()),
                    database: connection.database.clone(),
                    schema: connection
                        .schema
                        .clone()
                        .or_else(|| source.kind.default_qualifier().map(str::to_string)),
                    tls: Some(RawTls {
                        mode: Some(source.tls.mode),
                        ca: source.tls.ca.clone(),
                        cert: source.tls.cert.clone(),
                        key: source.tls.key.clone(),
                    }),
                    // The SSH secrets never leave as text (no legacy variable sets them).
                    ssh: source.ssh.as_ref().map(|ssh| RawSsh {
                        host: ssh.host.clone(),
                        port: Some(u32::from(ssh.port)),
                        user: ssh.user.clone(),
                        key: ssh.key.clone(),
                        key_passphrase: ssh.key_passphrase.as_ref().map(|_| REDACTED.into()),
                        password: ssh.password.as_ref().map(|_| REDACTED.into()),
                        known_hosts: Some(ssh.known_hosts.clone()),
                    }),
                    pool: Some(RawPool {
                        max_connections: Some(source.max_connections),
                        min_connections: Some(source.min_connections),
                        max_lifetime: seconds(source.max_lifetime),
                    }),
                    timeouts: Some(RawTimeouts {
                        connect: seconds(source.timeouts.connect),
                        read: seconds(source.timeouts.read),
                        write: seconds(source.timeouts.write),
                        statement: seconds(source.timeouts.statement),
                    }),
                    tables,
                    exclude: self.exclude.get(&source.name).cloned().unwrap_or_default(),
                },
            );
        }
        let first = self.tables.first();
        RawManifest {
            version: Some(1),
            bigquery: RawBigQuery {
                project: Some(self.bigquery.project.clone()),
                dataset: Some(self.bigquery.dataset.clone()),
                location: self.bigquery.location.clone(),
                endpoint: self.bigquery.endpoint.clone(),
                emulator: self.bigquery.emulator.then_some(true),
                credentials: self.bigquery.credentials.clone(),
                impersonate_service_account: self.bigquery.impersonate_service_account.clone(),
                ca_file: self.bigquery.ca_file.clone(),
                create_dataset: Some(self.bigquery.create_dataset),
                upload_chunk_mib: self.bigquery.upload_chunk_mib,
                labels: (!self.bigquery.labels.is_empty()).then(|| {
                    self.bigquery
                        .labels
                        .iter()
                        .map(|(key, value)| (key.clone(), value.clone()))
                        .collect()
                }),
            },
            defaults: RawDefaults {
                mode: None,
                batch_size: None,
                format: None,
                max_parse_failures: None,
                timeout: seconds(self.timeout),
                auto_create: first.map(|table| table.auto_create),
                parallelism: Some(self.parallelism),
                chunk_bytes: None,
                table_parallelism: None,
                consistency: None,
                allow_recreate: None,
                deletes: None,
                lineage: None,
                types: RawTypePolicies::default(),
            },
            sources,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_byte_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_byte_size(" 256 mib "), Some(256 << 20));
        assert_eq!(parse_byte_size("500MB"), Some(500_000_000));
        assert_eq!(parse_byte_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_byte_size("4096"), Some(4096));
        assert_eq!(parse_byte_size("7b"), Some(7));
        assert_eq!(parse_byte_size("12 parsecs"), None);
        assert_eq!(parse_byte_size("GiB"), None);
        assert_eq!(parse_byte_size("99999999999TiB"), None, "overflow");
        let mut problems = Vec::new();
        assert_eq!(
            byte_size(
                &RawByteSize::Text("99999999999TiB".into()),
                "/defaults/chunk_bytes",
                &mut problems
            ),
            None
        );
        assert_eq!(problems[0].code, Code::ManifestSize);
        assert!(
            problems[0]
                .message
                .contains("`99999999999TiB` is not a size")
        );
    }
}
