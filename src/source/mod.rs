//! Source databases: connect, introspect ([`Source::describe`]) and push rows into a
//! [`RowSink`] ([`Source::extract`]).
//!
//! The SQL comes from each engine's pure [`sql::Dialect`]: every identifier is quoted, cursor
//! values are bound as parameters, never spliced into SQL. The engine files keep only what needs
//! a server: connect, describe (the catalogs) and decode.
//!
//! This module knows the manifest only through the connection settings ([`SourceSpec`]).

mod custom;
mod guarded;
mod mysql;
mod pg_copy;
mod postgres;
mod readers;
mod sql;
mod sqlite;
mod ssh;

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
    Codec, ColumnMapping, Decoded, RowSink, SourceKind, SourceTable, TooManyBadValues,
};
use crate::secret::REDACTED;
pub use custom::QueryTable;
#[cfg(test)]
pub(crate) use postgres::decode_binary as pg_decode_binary;
/// PostgreSQL's binary formats, for the Avro writer's transcoder.
pub(crate) use postgres::{Numeric as PgNumeric, PG_EPOCH_UNIX_DAYS, PG_EPOCH_UNIX_MICROS, be_i64};
pub use readers::{ChunkRead, EXTRA_READER_WAIT, LOCK_WAIT_SECONDS, Reader};
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

/// Logs one catalog query (at debug level: `bench/plan_many.sh` counts these lines).
fn catalog_query(engine: &str, what: &str, tables: usize) {
    tracing::debug!(engine, what, tables, "source catalog query");
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
    if let Some(ssh) = &spec.ssh {
        for secret in [&ssh.password, &ssh.key_passphrase].into_iter().flatten() {
            out.push(secret.expose().to_string());
        }
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

/// Why an engine could not connect.
enum ConnectFailure {
    /// The driver's error; through a tunnel, with the tunnel's own last failure (the driver
    /// only saw its connection close).
    Driver {
        error: sqlx::Error,
        tunnel: Option<String>,
    },
    /// The SSH tunnel could not be opened (the message names the SSH server).
    Ssh(String),
}

impl From<sqlx::Error> for ConnectFailure {
    fn from(error: sqlx::Error) -> Self {
        Self::Driver {
            error,
            tunnel: None,
        }
    }
}

impl ConnectFailure {
    /// A driver error through `tunnel`, if any.
    fn through(error: sqlx::Error, tunnel: Option<&ssh::Tunnel>) -> Self {
        Self::Driver {
            error,
            tunnel: tunnel.and_then(ssh::Tunnel::last_error),
        }
    }
}

/// The SSH tunnel of `spec` to the database at `host:port`, listening on a socket named
/// `socket_name`; `None` without `ssh`. `socket` is a Unix socket the URL names (which a tunnel
/// cannot reach).
async fn open_tunnel(
    spec: &SourceSpec,
    host: &str,
    port: u16,
    socket: Option<&std::path::Path>,
    socket_name: &str,
) -> Result<Option<Arc<ssh::Tunnel>>, ConnectFailure> {
    let Some(ssh) = &spec.ssh else {
        return Ok(None);
    };
    if let Some(socket) =
        socket.or_else(|| host.starts_with('/').then(|| std::path::Path::new(host)))
    {
        return Err(ConnectFailure::Ssh(format!(
            "the database address is the Unix socket `{}`: an SSH tunnel reaches a database by host and port",
            socket.display()
        )));
    }
    let timeout = spec
        .timeouts
        .connect
        .unwrap_or(crate::manifest::resolve::DEFAULT_CONNECT_TIMEOUT);
    ssh::Tunnel::open(ssh, host, port, socket_name, timeout)
        .await
        .map(|tunnel| Some(Arc::new(tunnel)))
        .map_err(ConnectFailure::Ssh)
}

impl Source {
    /// Connects with the spec's options and session settings (UTC, timeouts).
    pub async fn connect(spec: &SourceSpec) -> Result<Source, SourceError> {
        let secrets = secrets(spec);
        let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let result = match spec.kind {
            SourceKind::Mysql => mysql::connect(spec).await.map(Source::Mysql),
            SourceKind::Postgres => postgres::connect(spec).await.map(Source::Postgres),
            SourceKind::Sqlite if spec.ssh.is_some() => Err(ConnectFailure::Ssh(
                "a sqlite source is a file: it cannot be reached through `ssh`".into(),
            )),
            SourceKind::Sqlite => sqlite::connect(spec)
                .await
                .map(Source::Sqlite)
                .map_err(ConnectFailure::from),
        };
        result.map_err(|failure| {
            let message = match failure {
                ConnectFailure::Ssh(message) => message,
                // The tunnel's cause first: the driver only saw its connection close.
                ConnectFailure::Driver {
                    error,
                    tunnel: Some(cause),
                } => format!("{cause} (the driver: {error}){}", address(spec)),
                ConnectFailure::Driver { error, .. } => format!("{error}{}", address(spec)),
            };
            SourceError::Connect {
                source_name: spec.name.clone(),
                message: scrub(message, &secret_refs),
            }
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
    /// SQLite attached database) from the catalogs: [`Source::describe_many`] of one table.
    pub async fn describe(
        &self,
        qualifier: Option<&str>,
        name: &str,
    ) -> Result<SourceTable, SourceError> {
        let mut tables = self.describe_many(qualifier, &[name.to_string()]).await?;
        tables.pop().unwrap_or_else(|| {
            Err(SourceError::Invalid(format!(
                "describing `{name}` returned nothing"
            )))
        })
    }

    /// Introspects the tables `names` of one `qualifier` with one set of catalog queries for all
    /// of them (PostgreSQL: pg_catalog and information_schema; MySQL/MariaDB:
    /// information_schema; SQLite: its pragmas, table by table, on the local file), so planning
    /// thousands of tables costs a few queries, not a few per table. One result per name, in
    /// order: a table the catalog lacks is its own [`SourceError::TableNotFound`]; the outer
    /// error is a failed query, which leaves every table undescribed.
    pub async fn describe_many(
        &self,
        qualifier: Option<&str>,
        names: &[String],
    ) -> Result<Vec<Result<SourceTable, SourceError>>, SourceError> {
        match self {
            Self::Mysql(pool) => mysql::describe_many(pool, qualifier, names).await,
            Self::Postgres(pool) => postgres::describe_many(pool, qualifier, names).await,
            Self::Sqlite(pool) => sqlite::describe_many(pool, qualifier, names).await,
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
                unique_keys: Vec::new(),
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
        tracing::debug!(table = %table.label(), "counting rows");
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
    /// number of rows written so far after each chunk. One statement on the pool: consistent
    /// on its own. [`Source::open_readers`] reads a table in chunks.
    pub async fn extract<S: RowSink>(
        &self,
        table: &SourceTable,
        columns: &[ColumnMapping],
        filter: Option<&CursorFilter>,
        sink: S,
        out: Sender<Bytes>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<ExtractStats, SourceError> {
        Reader::pool(self)
            .extract(table, columns, filter, None, sink, out, progress)
            .await
    }

    /// What the planner needs to split `table` into chunks (its size, its integer keys and
    /// their bounds, its pages); `None` for engines that read a table as one chunk (SQLite).
    /// The keys are only looked up (and their bounds read) for a table larger than
    /// `keys_above` bytes: a smaller one is one chunk anyway.
    pub async fn chunk_facts(
        &self,
        table: &SourceTable,
        keys_above: u64,
    ) -> Result<Option<crate::schema::ChunkFacts>, SourceError> {
        match self {
            Self::Postgres(pool) => postgres::chunk_facts(pool, table, keys_above)
                .await
                .map(Some),
            Self::Mysql(pool) => mysql::chunk_facts(pool, table, keys_above).await.map(Some),
            Self::Sqlite(_) => Ok(None),
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
pub(super) type DecodeFn<R> = for<'a> fn(&'a R, usize, &'a Codec) -> Decoded<'a>;

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
    let codecs: Vec<Codec> = columns.iter().map(|column| column.codec.clone()).collect();
    while let Some(row) = rows.next().await {
        let row = row.map_err(|error| SourceError::query("reading rows", error))?;
        sink.push(|index| decode(&row, index, &codecs[index]))
            .map_err(SourceError::TooManyBadValues)?;
        if let Some(chunk) = sink.full_chunk() {
            send(&out, chunk, sink.stats().rows, progress).await?;
        }
    }
    finish(sink, &out, progress).await
}

/// Sends a sink's chunk to `out`, then reports `rows`, the sink's rows so far.
async fn send(
    out: &Sender<Bytes>,
    chunk: Bytes,
    rows: u64,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), SourceError> {
    out.send(chunk).await.map_err(|_| SourceError::SinkClosed)?;
    progress(rows);
    Ok(())
}

/// Sends `sink`'s last chunk and reports the final count: the extraction's statistics.
async fn finish<S: RowSink>(
    mut sink: S,
    out: &Sender<Bytes>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ExtractStats, SourceError> {
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
    let through = spec
        .ssh
        .as_ref()
        .map(|ssh| format!(" through the SSH server `{}`", ssh.label()))
        .unwrap_or_default();
    match &spec.connection.url {
        Some(url) => format!(" (at {}{through})", crate::secret::redact_url(url.expose())),
        None => format!(
            " (at {}:{}{through})",
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
