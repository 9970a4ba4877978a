//! Environment variables: `${VAR}` interpolation, the legacy env-only mode of the Go tool, and the
//! overlay of those variables onto a manifest file.
//!
//! Pure: the environment is passed in as a map. Every variable name is spelled in [`vars`].
//! Both modes write into the same JSON document that a manifest file parses into, so everything
//! downstream (schema validation, checks, resolution) is identical.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::document::escape_segment;
use super::{Code, Diagnostic, env_error, env_warning, error_at};
use crate::schema::SourceKind;

/// A snapshot of the process environment.
pub type Env = BTreeMap<String, String>;

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Origin {
    /// The manifest file.
    File,
    /// An environment variable (named).
    Env(String),
    /// A built-in default.
    Default,
}

/// JSON pointer → origin of the value there.
pub type Origins = BTreeMap<String, Origin>;

/// The variables of the legacy Go tool (and a few additions), in one place.
pub mod vars {
    /// GCP project (required in env-only mode).
    pub const GCP_PROJECT_ID: &str = "GCP_PROJECT_ID";
    /// Target dataset (required in env-only mode).
    pub const BQ_DATASET_ID: &str = "BQ_DATASET_ID";
    /// Comma-separated source ids; turns on env-only mode when no manifest file exists.
    pub const SYNC_DATABASES: &str = "SYNC_DATABASES";
    /// Emulator host (`host:port` or a URL).
    pub const BIGQUERY_EMULATOR_HOST: &str = "BIGQUERY_EMULATOR_HOST";
    /// Dataset location (addition).
    pub const BQ_LOCATION: &str = "BQ_LOCATION";
    /// Service-account key file.
    pub const GOOGLE_APPLICATION_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";
    /// gcloud's configuration directory (its application-default credentials file).
    pub const CLOUDSDK_CONFIG: &str = "CLOUDSDK_CONFIG";
    /// Home directory (`~/.config/gcloud`).
    pub const HOME: &str = "HOME";
    /// `host[:port]` of the GCE metadata server.
    pub const GCE_METADATA_HOST: &str = "GCE_METADATA_HOST";
    /// Proxy for https URLs (also read in lower case).
    pub const HTTPS_PROXY: &str = "HTTPS_PROXY";
    /// Proxy for http URLs (also read in lower case).
    pub const HTTP_PROXY: &str = "HTTP_PROXY";
    /// Hosts reached without a proxy (also read in lower case).
    pub const NO_PROXY: &str = "NO_PROXY";
    /// Extra CA bundle (PEM) for BigQuery and its token endpoints.
    pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
    /// Fallback host of every source.
    pub const DB_HOST: &str = "DB_HOST";
    /// Fallback port of the sources whose type is `DB_TYPE`.
    pub const DB_PORT: &str = "DB_PORT";
    /// Fallback source type.
    pub const DB_TYPE: &str = "DB_TYPE";
    /// Pool size of every source.
    pub const DB_MAX_OPEN_CONNECTIONS: &str = "DB_MAX_OPEN_CONNECTIONS";
    /// Accepted for compatibility; idle connections are managed by the pool.
    pub const DB_MAX_IDLE_CONNECTIONS: &str = "DB_MAX_IDLE_CONNECTIONS";
    /// Connection lifetime of every source.
    pub const DB_CONN_MAX_LIFETIME: &str = "DB_CONN_MAX_LIFETIME";
    /// Fallback PostgreSQL sslmode.
    pub const DB_SSLMODE: &str = "DB_SSLMODE";
    /// Fallback TLS mode of every source.
    pub const DB_TLS_MODE: &str = "DB_TLS_MODE";
    /// Fallback CA path.
    pub const DB_TLS_CA_PATH: &str = "DB_TLS_CA_PATH";
    /// Fallback client certificate path.
    pub const DB_TLS_CERT_PATH: &str = "DB_TLS_CERT_PATH";
    /// Fallback client key path.
    pub const DB_TLS_KEY_PATH: &str = "DB_TLS_KEY_PATH";
    /// Fallback connect timeout (the Go tool ignored the global form).
    pub const DB_CONN_TIMEOUT: &str = "DB_CONN_TIMEOUT";
    /// Fallback read timeout.
    pub const DB_READ_TIMEOUT: &str = "DB_READ_TIMEOUT";
    /// Fallback write timeout.
    pub const DB_WRITE_TIMEOUT: &str = "DB_WRITE_TIMEOUT";
    /// Fallback statement timeout.
    pub const DB_STATEMENT_TIMEOUT: &str = "DB_STATEMENT_TIMEOUT";
    /// Deadline of a whole run.
    pub const SYNC_TIMEOUT: &str = "SYNC_TIMEOUT";
    /// Accepted for compatibility and ignored: values are always written in BigQuery's formats.
    pub const DATE_FORMAT: &str = "DATE_FORMAT";
    /// Rows per batch.
    pub const DEFAULT_BATCH_SIZE: &str = "DEFAULT_BATCH_SIZE";
    /// Extract and encode without writing (read by the CLI, not the manifest).
    pub const DRY_RUN: &str = "DRY_RUN";
    /// Create and evolve target tables.
    pub const AUTO_CREATE_TABLES: &str = "AUTO_CREATE_TABLES";
    /// `true` → mode `replace`, `false` → mode `append`.
    pub const TRUNCATE_ON_SYNC: &str = "TRUNCATE_ON_SYNC";
    /// Bad-value budget per table.
    pub const MAX_ROW_PARSE_FAILURES: &str = "MAX_ROW_PARSE_FAILURES";
    /// Allow drop-and-recreate on incompatible changes.
    pub const ALLOW_TABLE_RECREATION: &str = "ALLOW_TABLE_RECREATION";
    /// `prod` → JSON logs (read by the CLI).
    pub const LOG_ENV: &str = "LOG_ENV";
    /// Log level (read by the CLI).
    pub const LOG_LEVEL: &str = "LOG_LEVEL";

    /// Every global variable the legacy mode understands.
    pub const GLOBALS: &[&str] = &[
        GCP_PROJECT_ID,
        BQ_DATASET_ID,
        SYNC_DATABASES,
        BIGQUERY_EMULATOR_HOST,
        BQ_LOCATION,
        GOOGLE_APPLICATION_CREDENTIALS,
        DB_HOST,
        DB_PORT,
        DB_TYPE,
        DB_MAX_OPEN_CONNECTIONS,
        DB_MAX_IDLE_CONNECTIONS,
        DB_CONN_MAX_LIFETIME,
        DB_SSLMODE,
        DB_TLS_MODE,
        DB_TLS_CA_PATH,
        DB_TLS_CERT_PATH,
        DB_TLS_KEY_PATH,
        DB_CONN_TIMEOUT,
        DB_READ_TIMEOUT,
        DB_WRITE_TIMEOUT,
        DB_STATEMENT_TIMEOUT,
        SYNC_TIMEOUT,
        DATE_FORMAT,
        DEFAULT_BATCH_SIZE,
        DRY_RUN,
        AUTO_CREATE_TABLES,
        TRUNCATE_ON_SYNC,
        MAX_ROW_PARSE_FAILURES,
        ALLOW_TABLE_RECREATION,
        LOG_ENV,
        LOG_LEVEL,
    ];

    /// Per-source suffixes (`{ID}_` + suffix).
    pub const SOURCE_SUFFIXES: &[&str] = &[
        "DB_HOST",
        "DB_PORT",
        "DB_TYPE",
        "DB_NAME",
        "DB_SCHEMA",
        "DB_USER",
        "DB_PASSWORD",
        "ENABLED",
        "TABLES",
        "DB_CONN_TIMEOUT",
        "DB_READ_TIMEOUT",
        "DB_WRITE_TIMEOUT",
        "DB_STATEMENT_TIMEOUT",
        "DB_SSLMODE",
        "DB_TLS_MODE",
        "DB_TLS_CA_PATH",
        "DB_TLS_CERT_PATH",
        "DB_TLS_KEY_PATH",
    ];

    /// Per-table suffixes (`{ID}_{TABLE}_` + suffix).
    pub const TABLE_SUFFIXES: &[&str] = &[
        "ENABLED",
        "TARGET_TABLE",
        "COLUMNS",
        "BATCH_SIZE",
        "PRIMARY_KEY",
        "TIMESTAMP_COLUMN",
        "MODE",
    ];
}

/// What the BigQuery client takes from the environment (standard variables, upper case first,
/// then lower case for the proxy ones as curl does).
pub fn bigquery_env(env: &Env) -> super::resolve::BigQueryEnv {
    let one = |name: &str| get(env, name).map(|value| value.trim().to_string());
    let either = |name: &str| one(name).or_else(|| one(&name.to_ascii_lowercase()));
    super::resolve::BigQueryEnv {
        google_application_credentials: one(vars::GOOGLE_APPLICATION_CREDENTIALS),
        cloudsdk_config: one(vars::CLOUDSDK_CONFIG),
        home: one(vars::HOME),
        gce_metadata_host: one(vars::GCE_METADATA_HOST),
        https_proxy: either(vars::HTTPS_PROXY),
        http_proxy: either(vars::HTTP_PROXY),
        no_proxy: either(vars::NO_PROXY),
        ssl_cert_file: one(vars::SSL_CERT_FILE),
    }
}

/// Reads a variable; empty counts as unset (as in the Go tool).
pub fn get<'e>(env: &'e Env, name: &str) -> Option<&'e str> {
    env.get(name)
        .map(String::as_str)
        .filter(|value| !value.trim().is_empty())
}

/// Parses a legacy boolean: `true`/`1`/`yes`/`on` and `false`/`0`/`no`/`off`
/// (case-insensitive). Anything else is an error, not a silent `false`.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!(
            "`{other}` is not a boolean (use true/false, 1/0, yes/no)"
        )),
    }
}

/// Parses a comma list: split, trim, drop empties, keep the first of duplicates.
pub fn parse_list(text: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        if !items.iter().any(|seen| seen == item) {
            items.push(item.to_string());
        }
    }
    items
}

/// Parses a duration: plain seconds (`30`) or humantime text (`30s`, `1m 30s`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(seconds));
    }
    humantime::parse_duration(text).map_err(|error| {
        format!("`{text}` is not a duration ({error}); use seconds (`30`) or a unit (`30s`, `5m`)")
    })
}

/// Variable-name form of a source id or table entry: upper case, as the Go tool built it.
pub fn legacy_prefix(part: &str) -> String {
    part.trim().to_uppercase()
}

/// Shell-safe form of a prefix: every character other than A-Z, 0-9 and `_` becomes `_`.
pub fn shell_safe(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Looks up `{prefix}_{suffix}` in its raw form and, failing that, its shell-safe form
/// (`SALES-DB_DB_HOST` → `SALES_DB_DB_HOST`, `INV_PUBLIC.PRODUCTS_…` → `INV_PUBLIC_PRODUCTS_…`).
fn get_prefixed<'e>(env: &'e Env, prefix: &str, suffix: &str) -> Option<(String, &'e str)> {
    let raw = format!("{prefix}_{suffix}");
    if let Some(value) = get(env, &raw) {
        return Some((raw, value));
    }
    let safe = format!("{}_{suffix}", shell_safe(prefix));
    get(env, &safe).map(|value| (safe, value))
}

/// Writes env-derived values into a manifest document, recording their origins and collecting
/// problems (bad values are errors, never silent defaults).
struct Writer<'a> {
    doc: &'a mut Value,
    origins: &'a mut Origins,
    problems: &'a mut Vec<Diagnostic>,
}

impl Writer<'_> {
    fn set(&mut self, pointer: &str, value: Value, var: &str) {
        set_pointer(self.doc, pointer, value);
        self.origins
            .insert(pointer.to_string(), Origin::Env(var.to_string()));
    }

    fn set_if_absent(&mut self, pointer: &str, value: Value, var: &str) {
        if self.doc.pointer(pointer).is_none_or(Value::is_null) {
            self.set(pointer, value, var);
        }
    }

    /// Sets the value, or (fallback variables) only fills a gap the file left.
    fn put(&mut self, pointer: &str, value: Value, var: &str, only_if_absent: bool) {
        if only_if_absent {
            self.set_if_absent(pointer, value, var);
        } else {
            self.set(pointer, value, var);
        }
    }

    fn error(&mut self, var: &str, message: String) {
        self.problems.push(env_error(var, message));
    }

    fn warning(&mut self, var: &str, message: &str) {
        self.problems.push(env_warning(var, message));
    }

    fn string(&mut self, pointer: &str, var: &str, value: &str, only_if_absent: bool) {
        self.put(
            pointer,
            Value::String(value.trim().to_string()),
            var,
            only_if_absent,
        );
    }

    fn bool(&mut self, pointer: &str, var: &str, value: &str) {
        match parse_bool(value) {
            Ok(flag) => self.set(pointer, Value::Bool(flag), var),
            Err(message) => self.error(var, message),
        }
    }

    fn int(&mut self, pointer: &str, var: &str, value: &str, min: i64, only_if_absent: bool) {
        match value.trim().parse::<i64>() {
            Ok(number) if number >= min => self.put(pointer, json!(number), var, only_if_absent),
            Ok(number) => self.error(var, format!("`{number}` is too small (minimum {min})")),
            Err(_) => self.error(var, format!("`{}` is not a whole number", value.trim())),
        }
    }

    fn duration(&mut self, pointer: &str, var: &str, value: &str, only_if_absent: bool) {
        match parse_duration(value) {
            Ok(_) => {
                let text = value.trim();
                let value = text.parse::<u64>().map_or_else(
                    |_| Value::String(text.to_string()),
                    |seconds| json!(seconds),
                );
                self.put(pointer, value, var, only_if_absent);
            }
            Err(message) => self.error(var, message),
        }
    }
}

/// Sets `value` at `pointer`, creating objects on the way.
pub fn set_pointer(doc: &mut Value, pointer: &str, value: Value) {
    let mut current = doc;
    let segments: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|segment| segment.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (position, segment) in segments.iter().enumerate() {
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        let object = current.as_object_mut().expect("just made an object");
        if position + 1 == segments.len() {
            object.insert(segment.clone(), value);
            return;
        }
        current = object.entry(segment.clone()).or_insert(Value::Null);
    }
}

/// How the environment is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvMode {
    /// No manifest file: the sources come from `SYNC_DATABASES`.
    Legacy,
    /// A manifest file, with env variables overlaid on it.
    Overlay,
}

fn source_type(env: &Env, prefix: &str) -> Option<(String, String)> {
    get_prefixed(env, prefix, "DB_TYPE")
        .map(|(var, value)| (var, value.to_string()))
        .or_else(|| {
            get(env, vars::DB_TYPE).map(|value| (vars::DB_TYPE.to_string(), value.to_string()))
        })
}

fn normalize_type(var: &str, text: &str, writer: &mut Writer<'_>) -> Option<&'static str> {
    let kind = SourceKind::from_alias(text);
    if kind.is_none() {
        writer.error(
            var,
            format!(
                "`{}` is not a database type (use {})",
                text.trim().to_ascii_lowercase(),
                SourceKind::choices()
            ),
        );
    }
    kind.map(SourceKind::as_str)
}

fn tls_mode(var: &str, text: &str, writer: &mut Writer<'_>) -> Option<Value> {
    match text.trim().to_ascii_lowercase().as_str() {
        mode @ ("disable" | "prefer" | "require" | "verify-ca" | "verify-full") => {
            Some(Value::String(mode.to_string()))
        }
        // MySQL-style spellings.
        "false" | "disabled" => Some(json!("disable")),
        "preferred" => Some(json!("prefer")),
        "true" | "required" => Some(json!("require")),
        "verify_ca" => Some(json!("verify-ca")),
        "verify_identity" | "verify_full" => Some(json!("verify-full")),
        other => {
            writer.error(
                var,
                format!(
                    "`{other}` is not a TLS mode (use disable, prefer, require, verify-ca or verify-full)"
                ),
            );
            None
        }
    }
}

/// Applies the environment to `doc`.
///
/// In [`EnvMode::Legacy`] the sources are built from `SYNC_DATABASES`; in
/// [`EnvMode::Overlay`] variables override the file for the sources and tables it names, and the
/// global `DB_*` fallbacks fill only what the file leaves unset.
pub fn apply(doc: &mut Value, env: &Env, mode: EnvMode, origins: &mut Origins) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    if !doc.is_object() {
        return problems;
    }
    let mut writer = Writer {
        doc,
        origins,
        problems: &mut problems,
    };
    apply_globals(&mut writer, env);
    if mode == EnvMode::Overlay && get(env, vars::SYNC_DATABASES).is_some() {
        writer.warning(
            vars::SYNC_DATABASES,
            "ignored: the manifest file lists the sources (its `{ID}_…` variables still apply to the sources it names)",
        );
    }

    let source_ids: Vec<(String, String)> = match mode {
        EnvMode::Legacy => get(env, vars::SYNC_DATABASES)
            .map(parse_list)
            .unwrap_or_default()
            .into_iter()
            .map(|id| (id.to_lowercase(), legacy_prefix(&id)))
            .collect(),
        EnvMode::Overlay => writer
            .doc
            .pointer("/sources")
            .and_then(Value::as_object)
            .map(|sources| {
                sources
                    .keys()
                    .map(|name| (name.clone(), legacy_prefix(name)))
                    .collect()
            })
            .unwrap_or_default(),
    };
    for (name, prefix) in source_ids {
        apply_source(&mut writer, env, mode, &name, &prefix);
    }
    problems
}

fn apply_globals(writer: &mut Writer<'_>, env: &Env) {
    if let Some(value) = get(env, vars::GCP_PROJECT_ID) {
        writer.string("/bigquery/project", vars::GCP_PROJECT_ID, value, false);
    }
    if let Some(value) = get(env, vars::BQ_DATASET_ID) {
        writer.string("/bigquery/dataset", vars::BQ_DATASET_ID, value, false);
    }
    if let Some(value) = get(env, vars::GOOGLE_APPLICATION_CREDENTIALS) {
        writer.string(
            "/bigquery/credentials",
            vars::GOOGLE_APPLICATION_CREDENTIALS,
            value,
            true,
        );
    }
    if let Some(value) = get(env, vars::BQ_LOCATION) {
        writer.string("/bigquery/location", vars::BQ_LOCATION, value, false);
    }
    if let Some(value) = get(env, vars::BIGQUERY_EMULATOR_HOST) {
        let value = value.trim();
        let url = if value.contains("://") {
            value.to_string()
        } else {
            format!("http://{value}")
        };
        writer.set(
            "/bigquery/endpoint",
            Value::String(url),
            vars::BIGQUERY_EMULATOR_HOST,
        );
        writer.set(
            "/bigquery/emulator",
            Value::Bool(true),
            vars::BIGQUERY_EMULATOR_HOST,
        );
    }
    if let Some(value) = get(env, vars::DEFAULT_BATCH_SIZE) {
        writer.int(
            "/defaults/batch_size",
            vars::DEFAULT_BATCH_SIZE,
            value,
            1,
            false,
        );
    }
    if let Some(value) = get(env, vars::MAX_ROW_PARSE_FAILURES) {
        match value.trim().parse::<i64>() {
            // The Go tool treated every negative value as unlimited.
            Ok(number) if number < 0 => {
                writer.set(
                    "/defaults/max_parse_failures",
                    json!(-1),
                    vars::MAX_ROW_PARSE_FAILURES,
                );
            }
            _ => writer.int(
                "/defaults/max_parse_failures",
                vars::MAX_ROW_PARSE_FAILURES,
                value,
                -1,
                false,
            ),
        }
    }
    if let Some(value) = get(env, vars::SYNC_TIMEOUT) {
        writer.duration("/defaults/timeout", vars::SYNC_TIMEOUT, value, false);
    }
    if let Some(value) = get(env, vars::AUTO_CREATE_TABLES) {
        writer.bool("/defaults/auto_create", vars::AUTO_CREATE_TABLES, value);
    }
    if let Some(value) = get(env, vars::ALLOW_TABLE_RECREATION) {
        writer.bool(
            "/defaults/allow_recreate",
            vars::ALLOW_TABLE_RECREATION,
            value,
        );
    }
    if let Some(value) = get(env, vars::TRUNCATE_ON_SYNC) {
        match parse_bool(value) {
            Ok(true) => writer.set("/defaults/mode", json!("replace"), vars::TRUNCATE_ON_SYNC),
            Ok(false) => {
                writer.set("/defaults/mode", json!("append"), vars::TRUNCATE_ON_SYNC);
                writer.warning(
                    vars::TRUNCATE_ON_SYNC,
                    "`false` means mode `append`: every run appends a full copy of each table, as the Go tool did; set it to `true` (atomic replace) or use `merge`",
                );
            }
            Err(message) => writer.error(vars::TRUNCATE_ON_SYNC, message),
        }
    }
    if let Some(value) = get(env, vars::DRY_RUN)
        && let Err(message) = parse_bool(value)
    {
        writer.error(vars::DRY_RUN, message);
    }
    if let Some(value) = get(env, vars::DB_MAX_IDLE_CONNECTIONS) {
        if value.trim().parse::<u32>().is_err() {
            writer.error(
                vars::DB_MAX_IDLE_CONNECTIONS,
                format!("`{}` is not a whole number", value.trim()),
            );
        } else {
            writer.warning(
                vars::DB_MAX_IDLE_CONNECTIONS,
                "ignored: the pool closes idle connections itself (DB_MAX_OPEN_CONNECTIONS still applies)",
            );
        }
    }
    if get(env, vars::DATE_FORMAT).is_some() {
        writer.warning(
            vars::DATE_FORMAT,
            "ignored: dates and timestamps are always written in BigQuery's own formats (the Go tool's DATE_FORMAT broke DATE columns)",
        );
    }
}

/// The source's type: {ID}_DB_TYPE > file > DB_TYPE > `mysql` (legacy default).
fn apply_source_type(
    writer: &mut Writer<'_>,
    env: &Env,
    legacy: bool,
    base: &str,
    prefix: &str,
) -> Option<String> {
    let file_type = writer
        .doc
        .pointer(&format!("{base}/type"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let specific_type = get_prefixed(env, prefix, "DB_TYPE");
    if let Some((var, text)) = &specific_type {
        let kind = normalize_type(var, text, writer);
        if let Some(kind) = kind {
            writer.set(&format!("{base}/type"), json!(kind), var);
        }
        kind.map(str::to_string)
    } else if let Some(kind) = file_type {
        Some(kind)
    } else if let Some((var, text)) = source_type(env, prefix) {
        let kind = normalize_type(&var, &text, writer);
        if let Some(kind) = kind {
            writer.set(&format!("{base}/type"), json!(kind), &var);
        }
        kind.map(str::to_string)
    } else if legacy {
        writer.set(&format!("{base}/type"), json!("mysql"), "DB_TYPE (default)");
        Some("mysql".to_string())
    } else {
        None
    }
}

/// Host, database, schema, user, password and port, with the global fallbacks.
fn apply_connection(
    writer: &mut Writer<'_>,
    env: &Env,
    base: &str,
    prefix: &str,
    kind: Option<&str>,
) {
    // The engine `DB_TYPE` names (any spelling; unset means MySQL, the legacy default).
    let global_kind =
        get(env, vars::DB_TYPE).map_or(Some(SourceKind::Mysql), SourceKind::from_alias);

    let string_fields = [
        ("DB_HOST", "host", Some(vars::DB_HOST)),
        ("DB_NAME", "database", None),
        ("DB_SCHEMA", "schema", None),
        ("DB_USER", "user", None),
        ("DB_PASSWORD", "password", None),
    ];
    for (suffix, field, global) in string_fields {
        let pointer = format!("{base}/{field}");
        if let Some((var, value)) = get_prefixed(env, prefix, suffix) {
            // Passwords keep their spaces.
            let value = if field == "password" {
                value.to_string()
            } else {
                value.trim().to_string()
            };
            writer.set(&pointer, Value::String(value), &var);
        } else if let Some(global) = global
            && let Some(value) = get(env, global)
        {
            writer.string(&pointer, global, value, true);
        }
    }

    let port_pointer = format!("{base}/port");
    if let Some((var, value)) = get_prefixed(env, prefix, "DB_PORT") {
        writer.int(&port_pointer, &var, value, 1, false);
    } else if let Some(value) = get(env, vars::DB_PORT) {
        // The global port belongs to the global type: a PostgreSQL source does not inherit a
        // MySQL port (the Go tool gave PostgreSQL 3306).
        let same_kind =
            global_kind.is_some() && kind.and_then(SourceKind::from_alias) == global_kind;
        if same_kind {
            writer.int(&port_pointer, vars::DB_PORT, value, 1, true);
        }
    }
}

/// The Go tool's effective TLS, when no TLS variable chose one: MySQL ran with `tls=true` (the
/// server certificate verified against the system roots and the host name) → `verify-full`;
/// PostgreSQL with lib/pq's `sslmode=require` → `require`. The origin is `default`.
fn legacy_tls_default(writer: &mut Writer<'_>, base: &str, kind: Option<&str>) {
    let mode = match kind.and_then(SourceKind::from_alias) {
        Some(SourceKind::Mysql) => "verify-full",
        Some(SourceKind::Postgres) => "require",
        _ => return,
    };
    let pointer = format!("{base}/tls/mode");
    if writer.doc.pointer(&pointer).is_none_or(Value::is_null) {
        set_pointer(writer.doc, &pointer, json!(mode));
        writer.origins.insert(pointer, Origin::Default);
    }
}

fn apply_tls(writer: &mut Writer<'_>, env: &Env, base: &str, prefix: &str) {
    // TLS: {ID}_DB_TLS_MODE > {ID}_DB_SSLMODE > file > DB_TLS_MODE > DB_SSLMODE.
    let tls_specific = get_prefixed(env, prefix, "DB_TLS_MODE")
        .or_else(|| get_prefixed(env, prefix, "DB_SSLMODE"));
    if let Some((var, value)) = tls_specific {
        if let Some(mode) = tls_mode(&var, value, writer) {
            writer.set(&format!("{base}/tls/mode"), mode, &var);
        }
    } else if let Some((var, value)) = [vars::DB_TLS_MODE, vars::DB_SSLMODE]
        .into_iter()
        .find_map(|var| get(env, var).map(|value| (var, value)))
        && let Some(mode) = tls_mode(var, value, writer)
    {
        writer.set_if_absent(&format!("{base}/tls/mode"), mode, var);
    }
    for (suffix, global, field) in [
        ("DB_TLS_CA_PATH", vars::DB_TLS_CA_PATH, "ca"),
        ("DB_TLS_CERT_PATH", vars::DB_TLS_CERT_PATH, "cert"),
        ("DB_TLS_KEY_PATH", vars::DB_TLS_KEY_PATH, "key"),
    ] {
        let pointer = format!("{base}/tls/{field}");
        if let Some((var, value)) = get_prefixed(env, prefix, suffix) {
            writer.string(&pointer, &var, value, false);
        } else if let Some(value) = get(env, global) {
            writer.string(&pointer, global, value, true);
        }
    }
}

fn apply_timeouts_and_pool(writer: &mut Writer<'_>, env: &Env, base: &str, prefix: &str) {
    for (suffix, global, field) in [
        ("DB_CONN_TIMEOUT", vars::DB_CONN_TIMEOUT, "connect"),
        ("DB_READ_TIMEOUT", vars::DB_READ_TIMEOUT, "read"),
        ("DB_WRITE_TIMEOUT", vars::DB_WRITE_TIMEOUT, "write"),
        (
            "DB_STATEMENT_TIMEOUT",
            vars::DB_STATEMENT_TIMEOUT,
            "statement",
        ),
    ] {
        let pointer = format!("{base}/timeouts/{field}");
        if let Some((var, value)) = get_prefixed(env, prefix, suffix) {
            writer.duration(&pointer, &var, value, false);
        } else if let Some(value) = get(env, global) {
            writer.duration(&pointer, global, value, true);
        }
    }

    if let Some(value) = get(env, vars::DB_MAX_OPEN_CONNECTIONS) {
        writer.int(
            &format!("{base}/pool/max_connections"),
            vars::DB_MAX_OPEN_CONNECTIONS,
            value,
            1,
            true,
        );
    }
    if let Some(value) = get(env, vars::DB_CONN_MAX_LIFETIME) {
        writer.duration(
            &format!("{base}/pool/max_lifetime"),
            vars::DB_CONN_MAX_LIFETIME,
            value,
            true,
        );
    }
}

/// Tables: legacy mode lists them in {ID}_TABLES; overlay mode adds listed ones too.
fn apply_tables(
    writer: &mut Writer<'_>,
    env: &Env,
    legacy: bool,
    base: &str,
    name: &str,
    prefix: &str,
) {
    let tables_pointer = format!("{base}/tables");
    let mut table_names: Vec<String> = writer
        .doc
        .pointer(&tables_pointer)
        .and_then(Value::as_object)
        .map(|tables| tables.keys().cloned().collect())
        .unwrap_or_default();
    if let Some((var, value)) = get_prefixed(env, prefix, "TABLES") {
        for table in parse_list(value) {
            if !table_names.contains(&table) {
                writer.set(
                    &format!("{tables_pointer}/{}", escape_segment(&table)),
                    Value::Object(Map::new()),
                    &var,
                );
                table_names.push(table);
            }
        }
    } else if legacy {
        writer.set(&tables_pointer, Value::Object(Map::new()), "(none)");
        writer.error(
            &format!("{prefix}_TABLES"),
            format!("source `{name}` lists no tables; set {prefix}_TABLES=table1,table2"),
        );
    }
    for table in table_names {
        apply_table(writer, env, &tables_pointer, prefix, &table);
    }
}

fn apply_source(writer: &mut Writer<'_>, env: &Env, mode: EnvMode, name: &str, prefix: &str) {
    let base = format!("/sources/{}", escape_segment(name));
    let legacy = mode == EnvMode::Legacy;

    let kind = apply_source_type(writer, env, legacy, &base, prefix);
    apply_connection(writer, env, &base, prefix, kind.as_deref());
    if let Some((var, value)) = get_prefixed(env, prefix, "ENABLED") {
        writer.bool(&format!("{base}/enabled"), &var, value);
    }

    apply_tls(writer, env, &base, prefix);
    if legacy {
        legacy_tls_default(writer, &base, kind.as_deref());
    }
    apply_timeouts_and_pool(writer, env, &base, prefix);
    apply_tables(writer, env, legacy, &base, name, prefix);
}

fn apply_table(
    writer: &mut Writer<'_>,
    env: &Env,
    tables_pointer: &str,
    source_prefix: &str,
    table: &str,
) {
    let base = format!("{tables_pointer}/{}", escape_segment(table));
    let prefix = format!("{source_prefix}_{}", legacy_prefix(table));
    if writer.doc.pointer(&base).is_none_or(Value::is_null) {
        set_pointer(writer.doc, &base, Value::Object(Map::new()));
    }
    if let Some((var, value)) = get_prefixed(env, &prefix, "ENABLED") {
        writer.bool(&format!("{base}/enabled"), &var, value);
    }
    if let Some((var, value)) = get_prefixed(env, &prefix, "TARGET_TABLE") {
        // The Go tool mapped a qualified target `a.b` to `a__b`.
        let target = value.trim().replace('.', "__");
        writer.set(&format!("{base}/target"), Value::String(target), &var);
    }
    if let Some((var, value)) = get_prefixed(env, &prefix, "COLUMNS") {
        writer.set(&format!("{base}/columns"), json!(parse_list(value)), &var);
    }
    if let Some((var, value)) = get_prefixed(env, &prefix, "BATCH_SIZE") {
        writer.int(&format!("{base}/batch_size"), &var, value, 1, false);
    }
    if let Some((var, value)) = get_prefixed(env, &prefix, "PRIMARY_KEY") {
        writer.set(
            &format!("{base}/primary_key"),
            json!(parse_list(value)),
            &var,
        );
    }
    if let Some((var, value)) = get_prefixed(env, &prefix, "TIMESTAMP_COLUMN") {
        writer.string(&format!("{base}/cursor"), &var, value, false);
    }
    if let Some((var, value)) = get_prefixed(env, &prefix, "MODE") {
        let mode = value.trim().to_ascii_lowercase();
        if ["replace", "append", "merge", "incremental"].contains(&mode.as_str()) {
            writer.set(&format!("{base}/mode"), Value::String(mode), &var);
        } else {
            writer.error(
                &var,
                format!("`{mode}` is not a mode (use replace, append, merge or incremental)"),
            );
        }
    }
}

/// Replaces `${VAR}` references in every string of `doc` but a table's `query`; `$$` is a literal
/// `$`. A string that is
/// exactly one reference takes the variable's type (`port: ${PG_PORT}` becomes a number). Every
/// missing variable is reported, not just the first.
pub fn interpolate(doc: &mut Value, env: &Env, pointer: &str, problems: &mut Vec<Diagnostic>) {
    match doc {
        Value::String(text) if text.contains('$') => match expand(text, env) {
            Ok(expanded) => {
                let whole_reference = text.starts_with("${")
                    && text.ends_with('}')
                    && text.matches("${").count() == 1;
                *doc = if whole_reference {
                    typed_scalar(&expanded)
                } else {
                    Value::String(expanded)
                };
            }
            Err(messages) => {
                for message in messages {
                    problems.push(error_at(pointer, Code::ManifestEnvVar, message));
                }
            }
        },
        Value::Array(items) => {
            for (position, item) in items.iter_mut().enumerate() {
                interpolate(item, env, &format!("{pointer}/{position}"), problems);
            }
        }
        Value::Object(object) => {
            // A custom SQL `query` is sent as written: `$$` is PostgreSQL's dollar quote, and
            // values reach the SQL only as bound parameters.
            let segments: Vec<&str> = pointer.split('/').collect();
            let table_entry = matches!(segments.as_slice(), ["", "sources", _, "tables", _]);
            for (key, value) in object.iter_mut() {
                if table_entry && key == "query" {
                    continue;
                }
                interpolate(
                    value,
                    env,
                    &format!("{pointer}/{}", escape_segment(key)),
                    problems,
                );
            }
        }
        _ => {}
    }
}

fn typed_scalar(text: &str) -> Value {
    if let Ok(number) = text.parse::<i64>() {
        return json!(number);
    }
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(text.to_string()),
    }
}

/// Expands `${VAR}` and `$$` in `text`.
pub fn expand(text: &str, env: &Env) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                errors.push("unclosed `${` (write `$$` for a literal `$`)".to_string());
                return Err(errors);
            };
            let name = &body[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                errors.push(format!("`${{{name}}}` is not a valid variable reference"));
            } else if let Some(value) = env.get(name) {
                if value.contains('\n') {
                    errors.push(format!("environment variable `{name}` contains a newline"));
                } else {
                    out.push_str(value);
                }
            } else {
                errors.push(format!("environment variable `{name}` is not set"));
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
