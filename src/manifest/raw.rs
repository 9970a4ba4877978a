//! The manifest's wire format: what a `sync.yaml` / `sync.toml` file may contain.
//!
//! Every field's `///` comment is user documentation: it becomes the JSON Schema description
//! (`datasync schema`, `schemas/sync.schema.json`). Values stay close to what the user wrote; the
//! checks and defaults live in [`super::resolve`].

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::schema::chunk::Consistency;
pub use crate::schema::engine::SourceKind;
pub use crate::schema::policy::{
    BadValuePolicy, DecimalOverflowPolicy, Deletes, GeometryPolicy, LoadFormat, Utf8Policy,
};

/// A datasync manifest: where to read (sources), what to sync (tables) and where to write
/// (BigQuery).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "datasync manifest")]
pub struct RawManifest {
    /// Manifest format version. Only `1` exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1))]
    pub version: Option<u32>,
    /// The BigQuery destination.
    #[serde(default)]
    pub bigquery: RawBigQuery,
    /// Settings every table inherits unless it overrides them.
    #[serde(default, skip_serializing_if = "RawDefaults::is_empty")]
    pub defaults: RawDefaults,
    /// Source databases, by a name of your choice (letters, digits, `_` and `-`).
    #[serde(default)]
    pub sources: IndexMap<String, RawSource>,
}

/// The BigQuery destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBigQuery {
    /// Google Cloud project ID that owns the dataset and runs the jobs, e.g. `my-project`.
    /// Legacy variable: `GCP_PROJECT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([a-z][a-z0-9.-]*:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$"))]
    pub project: Option<String>,
    /// Target dataset, e.g. `analytics`: letters, digits and underscores. Legacy variable:
    /// `BQ_DATASET_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]{1,1024}$"))]
    pub dataset: Option<String>,
    /// Location of the dataset, e.g. `US`, `EU` or `europe-west1`: used when datasync creates the
    /// dataset (default `US`); for an existing dataset it is only checked (jobs always run in
    /// the dataset's own location).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Base URL of the BigQuery API, e.g. a regional endpoint
    /// (`https://bigquery.europe-west3.rep.googleapis.com`), a Private Service Connect endpoint,
    /// or an emulator at `http://127.0.0.1:9050` (then also set `emulator: true`). Credentials
    /// are used with every endpoint except an emulator. Default: `https://bigquery.googleapis.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The endpoint is a BigQuery emulator: no credentials are loaded, a dummy token is sent and
    /// the emulator's SQL workarounds apply. Needs `endpoint`. `BIGQUERY_EMULATOR_HOST` sets both.
    /// Default: `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulator: Option<bool>,
    /// Path to an Application Default Credentials file: a service-account JSON key, the
    /// `authorized_user` file of `gcloud auth application-default login`, an `external_account`
    /// file (Workload Identity Federation, e.g. what GitHub Actions' `google-github-actions/auth`
    /// writes) or an `impersonated_service_account` file. Default: `GOOGLE_APPLICATION_CREDENTIALS`,
    /// then gcloud's application-default file (`CLOUDSDK_CONFIG` or `~/.config/gcloud`), then the
    /// metadata server (GCE, GKE, Cloud Run; `GCE_METADATA_HOST` moves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// Service account to impersonate, e.g. `datasync@my-project.iam.gserviceaccount.com`: the
    /// credentials above obtain a short-lived token for it through the IAM Credentials API
    /// (`generateAccessToken`); they need `roles/iam.serviceAccountTokenCreator` on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub impersonate_service_account: Option<String>,
    /// PEM file of extra CA certificates trusted for the BigQuery API and every token endpoint
    /// (e.g. a TLS-inspecting corporate proxy's CA), on top of the built-in roots. Default:
    /// `SSL_CERT_FILE`. Proxies come from `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Create the dataset when it does not exist. Default: `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_dataset: Option<bool>,
    /// Resumable-upload chunk size in MiB (each chunk is one HTTP request; a whole MiB is always
    /// a multiple of the 256 KiB the protocol requires,
    /// <https://cloud.google.com/bigquery/docs/reference/api-uploads#resumable>). Every reader of
    /// a table holds about one such chunk (plus ~3 MiB of encoded rows in flight), so a table
    /// takes about `table_parallelism` × this. Default: `32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub upload_chunk_mib: Option<u64>,
    /// Labels for cost attribution, e.g. `{team: data, env: prod}`: set on every table datasync
    /// creates and on every job it starts (load, copy, query, MERGE), next to datasync's own
    /// `managed-by: datasync`, `datasync-run: <run id>` and `datasync-table: <target>`, whose
    /// keys they may not use. Keys: 1-63 lowercase letters, digits, `_` and `-`, starting with a
    /// letter; values: at most 63 of the same (quote digits-only values: `"1234"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<IndexMap<String, String>>,
}

/// How rows are written into the target table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Replace the table's content atomically: readers see the old rows until the new ones are
    /// all loaded. An empty source empties the table.
    Replace,
    /// Append every extracted row.
    Append,
    /// Load into a staging table, then `MERGE` on the primary key (update matches, insert the
    /// rest).
    Merge,
    /// Append only rows whose `cursor` column is greater than the target's current maximum.
    Incremental,
}

impl WriteMode {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replace => "replace",
            Self::Append => "append",
            Self::Merge => "merge",
            Self::Incremental => "incremental",
        }
    }
}

/// A duration: whole seconds (`30`) or a string with a unit (`"30s"`, `"5m"`, `"1h 30m"`).
/// `0` disables a timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    /// Whole seconds.
    Seconds(u64),
    /// Text with a unit, e.g. `30s`.
    Text(String),
}

impl JsonSchema for RawDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: whole seconds (`30`) or a number with a unit (`\"30s\"`, `\"5m\"`, `\"1h 30m\"`, `\"250ms\"`). `0` disables a timeout.",
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": DURATION_PATTERN }
            ]
        })
    }
}

/// What a duration string must look like (checked again, exactly, by humantime).
pub const DURATION_PATTERN: &str = r"^\s*[0-9]+\s*([a-zA-Z]+)?(\s*[0-9]+\s*[a-zA-Z]+)*\s*$";

/// A size in bytes: a whole number of bytes (`1048576`) or a number with a unit (`"1GiB"`,
/// `"256MiB"`, `"500MB"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawByteSize {
    /// Bytes.
    Bytes(u64),
    /// Text with a unit, e.g. `1GiB`.
    Text(String),
}

impl JsonSchema for RawByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: whole bytes (`1048576`) or a number with a unit (`\"1GiB\"`, `\"256MiB\"`, `\"500MB\"`; KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000).",
            "oneOf": [
                { "type": "integer", "minimum": 1 },
                { "type": "string", "pattern": BYTE_SIZE_PATTERN }
            ]
        })
    }
}

/// What a size string must look like: a number and a word (the unit is checked, with a message
/// naming the units, when the manifest is resolved).
pub const BYTE_SIZE_PATTERN: &str = r"^\s*[0-9]+\s*[A-Za-z]*\s*$";

/// Type-mapping policies. Every choice is lossless by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTypePolicies {
    /// Map MySQL `TINYINT(1)` to BOOL. Default: `true`. Set `false` when such columns hold
    /// values other than 0 and 1 (they then map to INT64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tinyint1_as_bool: Option<bool>,
    /// MySQL zero dates (`0000-00-00`, `2024-00-15`). Default: `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_dates: Option<BadValuePolicy>,
    /// Floating-point NaN/±Infinity, PostgreSQL `NaN` numerics and `±infinity` dates and
    /// timestamps. Default: `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_finite: Option<BadValuePolicy>,
    /// Text that is not valid UTF-8. Default: `replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_utf8: Option<Utf8Policy>,
    /// DECIMAL(p,s) too wide for BIGNUMERIC. Default: `string`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decimal_overflow: Option<DecimalOverflowPolicy>,
    /// Geometry/geography columns: `geography` (WKT, loaded as GEOGRAPHY) or `string` (WKT
    /// text). Default: `string` (BigQuery GEOGRAPHY only accepts WGS84 longitude/latitude).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geometry: Option<GeometryPolicy>,
}

impl RawTypePolicies {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Settings every table inherits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Write mode. Default: `replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WriteMode>,
    /// Rows per read batch and progress step. Loads are streamed into one load job per table
    /// whatever this value, so it does not multiply BigQuery jobs. Default: `10000`.
    /// Legacy variable: `DEFAULT_BATCH_SIZE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub batch_size: Option<u64>,
    /// Load file format: `avro` (typed, compact, BigQuery's preferred format) or `ndjson`. A
    /// table with a JSON, GEOGRAPHY or INTERVAL column is loaded as NDJSON whatever this says
    /// (the plan shows each table's format and why). Default: `avro`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LoadFormat>,
    /// Bad values tolerated per table before it fails; `-1` means unlimited. Default: `100`.
    /// Legacy variable: `MAX_ROW_PARSE_FAILURES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub max_parse_failures: Option<i64>,
    /// Deadline for a whole `plan` or `apply`, connecting and planning included. `0` means none. Default: `0`. Legacy variable:
    /// `SYNC_TIMEOUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<RawDuration>,
    /// Create missing target tables and evolve their schema. Default: `true`. Legacy variable:
    /// `AUTO_CREATE_TABLES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_create: Option<bool>,
    /// Tables synced at the same time. Default: `4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub parallelism: Option<u32>,
    /// Target size of one chunk of a MySQL/MariaDB or PostgreSQL table, in estimated bytes
    /// read (the table's size on disk): a larger table is split into ranges of its integer
    /// primary key (or another integer unique key; PostgreSQL without one: ctid page ranges),
    /// each read by its own reader and loaded by its own load job. Default: `1GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_bytes: Option<RawByteSize>,
    /// Readers of one table at once (connections reading its chunks). Default: `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub table_parallelism: Option<u32>,
    /// Whether the chunks of a table come from one snapshot: `snapshot` (PostgreSQL: one
    /// exported snapshot; MySQL/MariaDB: a short `LOCK TABLES … READ` while every reader starts
    /// a consistent-snapshot transaction, which needs the LOCK TABLES privilege) or `per-chunk`
    /// (each chunk is consistent, the table is not). Default: `snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// Allow `apply` to drop and recreate a table whose schema changed incompatibly. Its rows are
    /// replaced by the source's. Default: `false`. Legacy variable: `ALLOW_TABLE_RECREATION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_recreate: Option<bool>,
    /// What `merge` tables do with target rows whose key is gone from the source: `keep`,
    /// `soft` (set `_datasync_deleted_at`) or `hard` (delete them). Applies to the tables in
    /// mode `merge` only; each run then also reads the source's whole key set. Default: `keep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes: Option<Deletes>,
    /// Add the lineage columns to every target: `_datasync_synced_at` (TIMESTAMP, when the run
    /// that wrote the row started: the same for every row of a run) and `_datasync_run_id`
    /// (STRING). They are written with the rows (no query), added to an existing target as
    /// NULLABLE columns, and updated by `merge`. A source column of either name is an error.
    /// Default: `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<bool>,
    /// Type-mapping policies.
    #[serde(default, skip_serializing_if = "RawTypePolicies::is_empty")]
    pub types: RawTypePolicies,
}

impl RawDefaults {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One source database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// The engine.
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// Whether the source is synced. Default: `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Connection URL, e.g. `postgres://user:${PG_PASSWORD}@db:5432/app` or
    /// `sqlite://data/app.db`. Replaces host/port/user/password/database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Host name or IP address. Default: `localhost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// TCP port. Default: 3306 for MySQL, 5432 for PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// User name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password. Use `${VAR}` to read it from the environment; it is never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Database name (MySQL: the default database for unqualified tables; SQLite: the file
    /// path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// PostgreSQL schema for unqualified tables. Default: `public`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// TLS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    /// Reach the database through an SSH server (a bastion host): `host` and `port` above are
    /// then the database as the SSH server sees it (e.g. `localhost` for a database on the
    /// bastion itself, or a private address). Not for SQLite sources, which are files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<RawSsh>,
    /// Connection pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<RawPool>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RawTimeouts>,
    /// Tables to sync, by source name: `table` or `schema.table` (PostgreSQL) /
    /// `database.table` (MySQL). An empty entry (`orders: {}` or `orders:`) uses the defaults.
    /// A key with `*` or `?` is a pattern (`"*"`, `"sales.*"`, `"order_*"`) matched against the
    /// source's tables and views at plan time; its settings apply to every match, and an
    /// explicit entry for a matching table overrides them.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, RawTable>")]
    pub tables: IndexMap<String, Option<RawTable>>,
    /// Patterns (`*`, `?`) of tables the `tables` patterns leave out, e.g. `["tmp_*",
    /// "audit.*"]`. Explicit `tables` entries are never excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// TLS mode, as in libpq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without verification.
    Prefer,
    /// TLS, without certificate verification.
    Require,
    /// TLS, certificate checked against the CA.
    VerifyCa,
    /// TLS, certificate and host name checked.
    VerifyFull,
}

impl TlsMode {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// TLS settings of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// TLS mode. Default: `prefer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    /// Path to a PEM CA certificate (for `verify-ca` / `verify-full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Path to a PEM client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Path to the client certificate's PEM key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// An SSH tunnel to a source. The server's host key must be in `known_hosts` (an unknown host
/// or a changed key fails the connection; nothing is learned on first use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    /// The SSH server's host name or IP address, as recorded in `known_hosts`.
    pub host: String,
    /// The SSH server's port. Default: `22`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// User name on the SSH server.
    pub user: String,
    /// Path to the private key file (OpenSSH, PEM or PKCS#8; Ed25519, ECDSA or RSA). `~/` is
    /// the home directory (`HOME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Passphrase of an encrypted `key`. Use `${VAR}` to read it from the environment; it is
    /// never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_passphrase: Option<String>,
    /// Password authentication, tried when there is no `key` or the server refuses it. Use
    /// `${VAR}`; it is never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The known_hosts file (OpenSSH format, hashed entries included) that must hold the SSH
    /// server's host key. Default: `~/.ssh/known_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
}

/// Connection-pool settings of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Most connections open at once. Default: `parallelism` × the largest `table_parallelism`
    /// of the source's tables (every reader of every table being synced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_connections: Option<u32>,
    /// Idle connections kept. Default: `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_connections: Option<u32>,
    /// Close connections older than this. `0` keeps them. Default: `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<RawDuration>,
}

/// Timeouts of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Connect timeout. Default: `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<RawDuration>,
    /// MySQL: `net_read_timeout` of the session. `0` leaves the server's. Default: `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<RawDuration>,
    /// MySQL: `net_write_timeout` of the session. `0` leaves the server's. Default: `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<RawDuration>,
    /// PostgreSQL `statement_timeout` / MySQL `max_statement_time` (MariaDB) of the session.
    /// `0` disables it. Default: `0`, since one extraction query may stream a large table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<RawDuration>,
}

/// One table to sync.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    /// Target table name in the dataset. Default: the source name, with `schema.table` becoming
    /// `schema__table` (for a `query` entry: the entry's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Custom SQL instead of a source table: one `SELECT` (joins, aggregates, CTEs) whose result
    /// rows are synced. The entry's name is then not a source table but the target's name (no
    /// `target` needed; no pattern, no `schema.` prefix). Columns are typed from the
    /// statement's result metadata like table columns; the `incremental`/`merge` bound is
    /// added as `WHERE cursor > $1` around it (a bound parameter). One statement, without
    /// parameters; `${VAR}` is not expanded in it. `merge` needs `primary_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Whether the table is synced. Default: `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Source columns to sync, in order. Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Source columns to leave out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_columns: Option<Vec<String>>,
    /// Key columns for `merge`. Default: the source table's primary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<Vec<String>>,
    /// Column that grows with every change (a timestamp or increasing id). `incremental` reads
    /// the rows whose cursor is greater than the target's maximum; `merge` reads the rows whose
    /// cursor is greater or equal (only changed rows, re-reading the boundary harmlessly).
    /// Without it, `merge` reads every row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Write mode. Default: `defaults.mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WriteMode>,
    /// Rows per read batch. Default: `defaults.batch_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub batch_size: Option<u64>,
    /// Load file format, `avro` or `ndjson`. Default: `defaults.format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LoadFormat>,
    /// Target chunk size of this table, e.g. `256MiB`. Default: `defaults.chunk_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_bytes: Option<RawByteSize>,
    /// Readers of this table at once. Default: `defaults.table_parallelism`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub table_parallelism: Option<u32>,
    /// `snapshot` or `per-chunk`. Default: `defaults.consistency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// Bad values tolerated; `-1` unlimited. Default: `defaults.max_parse_failures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub max_parse_failures: Option<i64>,
    /// BigQuery types forcing the mapping of some source columns, e.g.
    /// `{ amount: "BIGNUMERIC", payload: "STRING" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column_types: Option<IndexMap<String, String>>,
    /// Partitioning: a DATE/TIMESTAMP/DATETIME column, optionally with a granularity,
    /// e.g. `created_at` or `created_at:MONTH` (DAY, HOUR, MONTH or YEAR; default DAY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_by: Option<String>,
    /// Clustering columns (at most 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_by: Option<Vec<String>>,
    /// Allow dropping and recreating this table on an incompatible schema change.
    /// Default: `defaults.allow_recreate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_recreate: Option<bool>,
    /// Mode `merge` only: what happens to target rows whose key is gone from the source.
    /// `keep` leaves them; `soft` sets their `_datasync_deleted_at` (a NULLABLE TIMESTAMP column
    /// datasync adds; NULL again when the key comes back); `hard` deletes them. With `soft` or
    /// `hard` every run also reads the source's whole key set (the key columns only, whatever
    /// the cursor) and removes the rows in the same transaction as the MERGE. Default:
    /// `defaults.deletes` for a merge table, else `keep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes: Option<Deletes>,
    /// The BigQuery table's description. Default: the source table's comment (PostgreSQL
    /// `COMMENT ON TABLE`, MySQL/MariaDB `COMMENT=`; SQLite has none). When neither is set the
    /// target's description is left as it is. A change is applied in place after the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub description: Option<String>,
    /// Add the lineage columns `_datasync_synced_at` and `_datasync_run_id` to this target.
    /// Default: `defaults.lineage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<bool>,
    /// Type-mapping policies for this table. Default: `defaults.types`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<RawTypePolicies>,
}
