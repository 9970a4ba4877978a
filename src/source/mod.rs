//! Source databases: connect, introspect ([`Source::describe`]) and push rows into a
//! [`RowSink`] ([`Source::extract`]).
//!
//! The SQL comes from each engine's pure [`sql::Dialect`]: every identifier is quoted, cursor
//! values are bound as parameters, never spliced into SQL. The engine files keep only what needs
//! a server: connect, describe (the catalogs) and decode.
//!
//! This module knows the manifest only through the connection settings ([`SourceSpec`]).

mod custom;
mod mysql;
mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;
use sqlx::{MySqlPool, PgPool, SqlitePool};
use tokio::sync::mpsc::Sender;

use crate::manifest::raw::TlsMode;
use crate::manifest::resolve::SourceSpec;
pub use crate::schema::ExtractStats;
use crate::schema::{
    Codec, ColumnMapping, Decoded, ReadAs, RowSink, SourceKind, SourceTable, TooManyBadValues,
};
use crate::secret::REDACTED;
pub use custom::QueryTable;
use sql::{Dialect, Statement};

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
    #[error("the receiving side closed before the extraction ended")]
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

/// A table or view in a source's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogEntry {
    /// Schema (PostgreSQL) or database (MySQL); `None` for SQLite's `main`.
    pub qualifier: Option<String>,
    /// Table name.
    pub name: String,
    /// A view (or materialized view): it is read like a table but has no primary key.
    pub view: bool,
}

impl CatalogEntry {
    /// `qualifier.name`, or the bare name.
    pub fn label(&self) -> String {
        match &self.qualifier {
            Some(qualifier) => format!("{qualifier}.{}", self.name),
            None => self.name.clone(),
        }
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
            message: format!(
                "{}{}",
                scrub(error.to_string(), &secret_refs),
                address(spec)
            ),
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

    /// The engine's SQL dialect.
    fn dialect(&self) -> &'static dyn Dialect {
        match self {
            Self::Mysql(_) => &sql::Mysql,
            Self::Postgres(_) => &sql::Postgres,
            Self::Sqlite(_) => &sql::Sqlite,
        }
    }

    /// The tables and views in `qualifier` (a PostgreSQL schema, a MySQL database, a SQLite
    /// attached database; default: every user schema, the connection's database, `main`).
    pub async fn list_tables(
        &self,
        qualifier: Option<&str>,
    ) -> Result<Vec<CatalogEntry>, SourceError> {
        match self {
            Self::Mysql(pool) => mysql::list_tables(pool, qualifier).await,
            Self::Postgres(pool) => postgres::list_tables(pool, qualifier).await,
            Self::Sqlite(pool) => sqlite::list_tables(pool, qualifier).await,
        }
    }

    /// Introspects the table `name` (in `qualifier`: a PostgreSQL schema, a MySQL database, a
    /// SQLite attached database) from the catalogs.
    pub async fn describe(
        &self,
        qualifier: Option<&str>,
        name: &str,
    ) -> Result<SourceTable, SourceError> {
        match self {
            Self::Mysql(pool) => mysql::describe(pool, qualifier, name).await,
            Self::Postgres(pool) => postgres::describe(pool, qualifier, name).await,
            Self::Sqlite(pool) => sqlite::describe(pool, qualifier, name).await,
        }
    }

    /// Introspects the custom SQL `query` of the manifest entry `name` from the statement's
    /// result metadata (never from its rows: the statement is prepared, not run). Columns are
    /// typed as the engine's catalog would type a table column of the same type, so the same
    /// natural mapping applies; `primary_key` (the manifest's) becomes the table's key.
    pub async fn describe_query(
        &self,
        name: &str,
        query: &str,
        primary_key: &[String],
    ) -> Result<QueryTable, SourceError> {
        let (mut columns, notes) = match self {
            Self::Mysql(pool) => custom::mysql(pool, name, query).await?,
            Self::Postgres(pool) => custom::postgres(pool, name, query).await?,
            Self::Sqlite(pool) => custom::sqlite(pool, name, query).await?,
        };
        for column in &mut columns {
            column.primary_key = primary_key.contains(&column.name);
        }
        Ok(QueryTable {
            table: SourceTable {
                qualifier: None,
                name: name.to_string(),
                columns,
                primary_key: primary_key.to_vec(),
                estimated_rows: None,
                comment: None,
                query: Some(query.to_string()),
            },
            notes,
        })
    }

    /// Exact row count, optionally above a cursor (one of `columns`).
    pub async fn count_rows(
        &self,
        table: &SourceTable,
        columns: &[ColumnMapping],
        filter: Option<&CursorFilter>,
    ) -> Result<u64, SourceError> {
        let statement = sql::count_sql(self.dialect(), table, columns, filter)?;
        let count = match self {
            Self::Mysql(pool) => scalar(&statement).fetch_one(pool).await,
            Self::Postgres(pool) => scalar(&statement).fetch_one(pool).await,
            Self::Sqlite(pool) => scalar(&statement).fetch_one(pool).await,
        };
        let count = count.map_err(|error| SourceError::query("counting rows", error))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Reads `columns` (optionally only the rows above a cursor, in cursor order), pushes every
    /// row into `sink` and sends the sink's chunks to `out`. `progress` is called with the
    /// number of rows written so far after each chunk.
    pub async fn extract<S: RowSink>(
        &self,
        table: &SourceTable,
        columns: &[ColumnMapping],
        filter: Option<&CursorFilter>,
        sink: S,
        out: Sender<Bytes>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<ExtractStats, SourceError> {
        if columns.is_empty() {
            return Err(SourceError::Invalid(format!(
                "table `{}` has no column to extract",
                table.name
            )));
        }
        let dialect = match self {
            Self::Mysql(pool)
                if columns
                    .iter()
                    .any(|column| column.read_as == ReadAs::Geography) =>
            {
                mysql::geography_dialect(pool).await?
            }
            other => other.dialect(),
        };
        let statement = sql::select_sql(dialect, table, columns, filter)?;
        match self {
            Self::Mysql(pool) => {
                let rows = query(&statement).fetch(pool);
                drive(rows, columns, mysql::decode, sink, out, progress).await
            }
            Self::Postgres(pool) => {
                let rows = query(&statement).fetch(pool);
                drive(rows, columns, postgres::decode, sink, out, progress).await
            }
            Self::Sqlite(pool) => {
                let rows = query(&statement).fetch(pool);
                drive(rows, columns, sqlite::decode, sink, out, progress).await
            }
        }
    }
}

/// `statement` as a query with its bound value.
fn query<DB: sqlx::Database>(
    statement: &Statement,
) -> sqlx::query::Query<'_, DB, <DB as sqlx::Database>::Arguments<'_>>
where
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let query = sqlx::query(&statement.sql);
    match &statement.bind {
        Some(value) => query.bind(value.clone()),
        None => query,
    }
}

/// `statement` as a query of one integer, with its bound value.
fn scalar<DB: sqlx::Database>(
    statement: &Statement,
) -> sqlx::query::QueryScalar<'_, DB, i64, <DB as sqlx::Database>::Arguments<'_>>
where
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let query = sqlx::query_scalar(&statement.sql);
    match &statement.bind {
        Some(value) => query.bind(value.clone()),
        None => query,
    }
}

/// Decodes a column of a row given its codec.
type DecodeFn<R> = for<'a> fn(&'a R, usize, &'a Codec) -> Decoded<'a>;

/// Pulls rows from `rows`, pushes them into `sink` and sends its full chunks to `out`.
async fn drive<R, St, S>(
    mut rows: St,
    columns: &[ColumnMapping],
    decode: DecodeFn<R>,
    mut sink: S,
    out: Sender<Bytes>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ExtractStats, SourceError>
where
    St: Stream<Item = Result<R, sqlx::Error>> + Unpin,
    S: RowSink,
{
    let codecs: Arc<[Codec]> = columns.iter().map(|column| column.codec.clone()).collect();
    while let Some(row) = rows.next().await {
        let row = row.map_err(|error| SourceError::query("reading rows", error))?;
        sink.push(|index| decode(&row, index, &codecs[index]))
            .map_err(SourceError::TooManyBadValues)?;
        if let Some(chunk) = sink.full_chunk() {
            out.send(chunk).await.map_err(|_| SourceError::SinkClosed)?;
            progress(sink.stats().rows);
        }
    }
    if let Some(chunk) = sink.finish() {
        out.send(chunk).await.map_err(|_| SourceError::SinkClosed)?;
    }
    progress(sink.stats().rows);
    Ok(sink.stats().clone())
}

/// ` (at host:port)` for a networked source (the URL with its password masked when given as
/// one), so a refused connection names what was refused.
fn address(spec: &SourceSpec) -> String {
    if spec.kind == SourceKind::Sqlite {
        return String::new();
    }
    match &spec.connection.url {
        Some(url) => format!(" (at {})", crate::secret::redact_url(url.expose())),
        None => format!(
            " (at {}:{})",
            spec.connection.host,
            spec.connection
                .port
                .unwrap_or_else(|| spec.kind.default_port().unwrap_or(0))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that only counts rows.
    #[derive(Default)]
    struct Counting(ExtractStats);

    impl RowSink for Counting {
        fn push<'r>(
            &mut self,
            _decode: impl FnMut(usize) -> Decoded<'r>,
        ) -> Result<(), TooManyBadValues> {
            self.0.rows += 1;
            Ok(())
        }

        fn full_chunk(&mut self) -> Option<Bytes> {
            None
        }

        fn finish(&mut self) -> Option<Bytes> {
            None
        }

        fn stats(&self) -> &ExtractStats {
            &self.0
        }
    }

    /// The futures can be spawned on a multi-threaded runtime.
    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn check(
            source: Source,
            table: SourceTable,
            columns: Vec<ColumnMapping>,
            out: Sender<Bytes>,
        ) {
            assert_send(&async move {
                let _ = source.describe(Some("public"), "t").await;
                let _ = source.describe_query("q", "SELECT 1 AS x", &[]).await;
                let _ = source.count_rows(&table, &columns, None).await;
                let _ = source
                    .extract(&table, &columns, None, Counting::default(), out, &|_| {})
                    .await;
            });
        }
        let _ = check;
    }

    #[test]
    fn sink_closed_message() {
        assert_eq!(
            SourceError::SinkClosed.to_string(),
            "the receiving side closed before the extraction ended"
        );
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
