//! Source databases: connect, introspect ([`Source::describe`]) and stream rows as NDJSON
//! ([`Source::extract`]).
//!
//! Every identifier is quoted ([`quote_pg`], [`quote_mysql`]); cursor values are bound as
//! parameters, never spliced into SQL.

mod mysql;
mod postgres;
mod sqlite;

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;
use sqlx::{MySqlPool, PgPool, SqlitePool};
use tokio::sync::mpsc::Sender;

pub use crate::encode::ExtractStats;
use crate::encode::{Decoded, RowEncoder, TooManyBadValues};
use crate::manifest::raw::{SourceKind, TlsMode};
use crate::manifest::resolve::{SourceSpec, TableSpec};
use crate::mapping::{Codec, TableMapping};
use crate::schema::SourceTable;
use crate::secret::REDACTED;

/// Errors of a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Connecting failed.
    #[error("cannot connect to source `{source_name}`: {message}")]
    Connect {
        /// Source name.
        source_name: String,
        /// Why (password redacted).
        message: String,
    },
    /// The table does not exist.
    #[error("table `{table}` not found in {engine} source{hint}")]
    TableNotFound {
        /// `qualifier.table`.
        table: String,
        /// Engine name.
        engine: &'static str,
        /// Extra help.
        hint: String,
    },
    /// A query failed.
    #[error("{context}: {message}")]
    Query {
        /// What was being done.
        context: String,
        /// The driver's message.
        message: String,
    },
    /// The mapping does not fit the source.
    #[error("{0}")]
    Invalid(String),
    /// The receiving side stopped.
    #[error("the NDJSON sink was closed before the extraction ended")]
    SinkClosed,
    /// Too many bad values.
    #[error("{0}")]
    TooManyBadValues(TooManyBadValues),
}

impl SourceError {
    fn query(context: impl Into<String>, error: impl std::fmt::Display) -> Self {
        Self::Query {
            context: context.into(),
            message: error.to_string(),
        }
    }
}

/// Only rows whose `column` is greater than `value` (the target's current maximum, as text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CursorFilter {
    /// Source column name.
    pub column: String,
    /// Textual value of the current maximum (e.g. from BigQuery).
    pub value: String,
    /// `>=` instead of `>`: rows at the maximum itself are read again (safe for `merge`,
    /// which upserts, and it catches rows that share the maximum's value).
    pub inclusive: bool,
}

impl CursorFilter {
    /// The SQL comparison operator.
    pub fn operator(&self) -> &'static str {
        if self.inclusive { ">=" } else { ">" }
    }
}

/// A connected source database.
#[derive(Debug, Clone)]
pub enum Source {
    /// MySQL or MariaDB.
    Mysql(MySqlPool),
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// PostgreSQL/SQLite identifier quoting: `"a""b"`.
pub fn quote_pg(name: &str) -> Result<String, SourceError> {
    if name.contains('\0') {
        return Err(SourceError::Invalid(format!(
            "identifier {name:?} contains a NUL character"
        )));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// MySQL identifier quoting: `` `a``b` ``.
pub fn quote_mysql(name: &str) -> Result<String, SourceError> {
    if name.contains('\0') {
        return Err(SourceError::Invalid(format!(
            "identifier {name:?} contains a NUL character"
        )));
    }
    Ok(format!("`{}`", name.replace('`', "``")))
}

/// Removes every occurrence of the secrets from a message.
fn scrub(message: String, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|secret| secret.len() >= 3)
        .fold(message, |message, secret| message.replace(secret, REDACTED))
}

/// Secrets of a spec, for scrubbing.
fn secrets(spec: &SourceSpec) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(password) = &spec.connection.password {
        out.push(password.expose().to_string());
    }
    if let Some(url) = &spec.connection.url
        && let Some(password) = crate::secret::url_password(url.expose())
    {
        out.push(password.to_string());
    }
    out
}

fn tls_is_default(mode: TlsMode) -> bool {
    mode == TlsMode::Prefer
}

impl Source {
    /// Connects with the spec's options and session settings (UTC, timeouts).
    pub async fn connect(spec: &SourceSpec) -> Result<Source, SourceError> {
        let secrets = secrets(spec);
        let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let result = match spec.kind {
            SourceKind::Mysql => mysql::connect(spec).await.map(Source::Mysql),
            SourceKind::Postgres => postgres::connect(spec).await.map(Source::Postgres),
            SourceKind::Sqlite => sqlite::connect(spec).await.map(Source::Sqlite),
        };
        result.map_err(|error| SourceError::Connect {
            source_name: spec.name.clone(),
            message: scrub(error.to_string(), &secret_refs),
        })
    }

    /// The engine.
    pub fn kind(&self) -> SourceKind {
        match self {
            Self::Mysql(_) => SourceKind::Mysql,
            Self::Postgres(_) => SourceKind::Postgres,
            Self::Sqlite(_) => SourceKind::Sqlite,
        }
    }

    /// Introspects the table from the catalogs.
    pub async fn describe(&self, spec: &TableSpec) -> Result<SourceTable, SourceError> {
        match self {
            Self::Mysql(pool) => mysql::describe(pool, spec).await,
            Self::Postgres(pool) => postgres::describe(pool, spec).await,
            Self::Sqlite(pool) => sqlite::describe(pool, spec).await,
        }
    }

    /// Exact row count, optionally above a cursor.
    pub async fn count_rows(
        &self,
        table: &SourceTable,
        mapping: &TableMapping,
        filter: Option<&CursorFilter>,
    ) -> Result<u64, SourceError> {
        match self {
            Self::Mysql(pool) => mysql::count_rows(pool, table, mapping, filter).await,
            Self::Postgres(pool) => postgres::count_rows(pool, table, mapping, filter).await,
            Self::Sqlite(pool) => sqlite::count_rows(pool, table, mapping, filter).await,
        }
    }

    /// Streams the mapped columns as NDJSON chunks (~1 MiB, whole lines) into `sink`.
    /// `progress` is called with the number of rows written so far after each chunk.
    pub async fn extract(
        &self,
        table: &SourceTable,
        mapping: &TableMapping,
        filter: Option<&CursorFilter>,
        sink: Sender<Bytes>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<ExtractStats, SourceError> {
        if mapping.columns.is_empty() {
            return Err(SourceError::Invalid(format!(
                "table `{}` has no column to extract",
                table.name
            )));
        }
        let label = match &table.qualifier {
            Some(qualifier) => format!("{qualifier}.{}", table.name),
            None => table.name.clone(),
        };
        let encoder = RowEncoder::new(
            label,
            mapping,
            mapping.policies,
            mapping.max_parse_failures,
            &mapping.key_columns,
        );
        match self {
            Self::Mysql(pool) => {
                mysql::extract(pool, table, mapping, filter, encoder, sink, progress).await
            }
            Self::Postgres(pool) => {
                postgres::extract(pool, table, mapping, filter, encoder, sink, progress).await
            }
            Self::Sqlite(pool) => {
                sqlite::extract(pool, table, mapping, filter, encoder, sink, progress).await
            }
        }
    }
}

/// Decodes a column of a row given its codec.
type DecodeFn<R> = for<'a> fn(&'a R, usize, &'a Codec) -> Decoded<'a>;

/// Pulls rows from `rows`, encodes them and sends full chunks.
async fn drive<R, S>(
    mut rows: S,
    mapping: &TableMapping,
    decode: DecodeFn<R>,
    mut encoder: RowEncoder,
    sink: Sender<Bytes>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ExtractStats, SourceError>
where
    S: Stream<Item = Result<R, sqlx::Error>> + Unpin,
{
    let codecs: Arc<[Codec]> = mapping
        .columns
        .iter()
        .map(|column| column.codec.clone())
        .collect();
    while let Some(row) = rows.next().await {
        let row = row.map_err(|error| SourceError::query("reading rows", error))?;
        encoder
            .encode_row(|index| decode(&row, index, &codecs[index]))
            .map_err(SourceError::TooManyBadValues)?;
        if let Some(chunk) = encoder.take_full_chunk() {
            sink.send(chunk)
                .await
                .map_err(|_| SourceError::SinkClosed)?;
            progress(encoder.stats.rows);
        }
    }
    if let Some(chunk) = encoder.finish() {
        sink.send(chunk)
            .await
            .map_err(|_| SourceError::SinkClosed)?;
    }
    progress(encoder.stats.rows);
    Ok(encoder.stats)
}

/// The cursor column's mapping, checked.
fn cursor_column<'m>(
    mapping: &'m TableMapping,
    table: &SourceTable,
    filter: &CursorFilter,
) -> Result<&'m crate::mapping::ColumnMapping, SourceError> {
    mapping
        .columns
        .iter()
        .find(|column| column.source.name == filter.column)
        .ok_or_else(|| {
            SourceError::Invalid(format!(
                "cursor column `{}` is not extracted from `{}`",
                filter.column, table.name
            ))
        })
}

/// A cursor value from BigQuery text (`2024-01-02 03:04:05.123456 UTC`, `…T…Z`) to the
/// `YYYY-MM-DD HH:MM:SS.ffffff` form every engine parses.
fn normalize_temporal(value: &str) -> String {
    let trimmed = value.trim();
    let trimmed = trimmed
        .strip_suffix(" UTC")
        .or_else(|| trimmed.strip_suffix('Z'))
        .unwrap_or(trimmed);
    let trimmed = trimmed.strip_suffix("+00:00").unwrap_or(trimmed);
    trimmed.replacen('T', " ", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The futures can be spawned on a multi-threaded runtime.
    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn check(
            source: Source,
            spec: TableSpec,
            table: SourceTable,
            mapping: TableMapping,
            sink: Sender<Bytes>,
        ) {
            assert_send(&async move {
                let _ = source.describe(&spec).await;
                let _ = source.extract(&table, &mapping, None, sink, &|_| {}).await;
            });
        }
        let _ = check;
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_pg("order").unwrap(), "\"order\"");
        assert_eq!(quote_pg("We\"ird").unwrap(), "\"We\"\"ird\"");
        assert_eq!(quote_mysql("my-db").unwrap(), "`my-db`");
        assert_eq!(quote_mysql("a`b").unwrap(), "`a``b`");
        assert!(quote_pg("a\0b").is_err());
    }

    #[test]
    fn temporal_cursor_values() {
        assert_eq!(
            normalize_temporal("2024-01-02T03:04:05.123456Z"),
            "2024-01-02 03:04:05.123456"
        );
        assert_eq!(
            normalize_temporal("2024-01-02 03:04:05 UTC"),
            "2024-01-02 03:04:05"
        );
        assert_eq!(normalize_temporal("2024-01-02"), "2024-01-02");
    }

    #[test]
    fn passwords_are_scrubbed() {
        let url = crate::secret::Secret::new("postgres://u:s3cret@h/db");
        assert_eq!(crate::secret::url_password(url.expose()), Some("s3cret"));
        assert_eq!(
            scrub("bad s3cret here".into(), &["s3cret"]),
            format!("bad {REDACTED} here")
        );
    }
}
