//! Readers of one table's chunks ([`Source::open_readers`]): connections that all see one
//! snapshot of the table when asked (issue 10), or the pool when each chunk may be consistent
//! on its own. A reader runs one chunk at a time ([`Reader::extract`]).
//!
//! - PostgreSQL: the first reader starts `BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY`
//!   and exports its snapshot (`pg_export_snapshot()`); every other reader starts the same
//!   transaction and imports it with `SET TRANSACTION SNAPSHOT` while the first one's is open
//!   (it stays open: it reads chunks too).
//!   <https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-SNAPSHOT-SYNCHRONIZATION>
//! - MySQL/MariaDB (InnoDB) has no exportable snapshot: a coordinator connection takes `LOCK
//!   TABLES t READ` (writers wait; open write transactions on `t` finish first), every reader
//!   runs `START TRANSACTION WITH CONSISTENT SNAPSHOT`, then the lock is released — a window
//!   of milliseconds. <https://dev.mysql.com/doc/refman/8.0/en/commit.html>
//! - One reader reading several chunks needs no coordination, only its own transaction.
//!
//! Extra readers are waited for only briefly ([`EXTRA_READER_WAIT`]): when other tables hold
//! the pool's connections, a table runs with fewer readers instead of waiting for them (two
//! tables each holding some of the pool and waiting for more would wait forever).

use std::time::Duration;

use bytes::Bytes;
use sqlx::{Executor as _, MySql, Postgres};
use tokio::sync::mpsc::Sender;

use super::guarded::Guarded;
use super::sql::{self, Dialect};
use super::{CursorFilter, ExtractStats, Source, SourceError, drive, mysql, postgres, query};
use crate::schema::{ChunkRange, ColumnMapping, Consistency, ReadAs, RowSink, SourceTable};

/// How long a table waits for each reader after its first before it runs with fewer.
pub const EXTRA_READER_WAIT: Duration = Duration::from_secs(2);

/// How long MySQL's coordinator waits for `LOCK TABLES … READ` (long write transactions on the
/// table finish first) before the table fails; while it waits, new writers queue behind it.
pub const LOCK_WAIT_SECONDS: u32 = 10;

/// The chunk a reader reads: a range of `key` (a source column) or of PostgreSQL pages.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRead<'a> {
    /// The integer key column of a key range.
    pub key: Option<&'a str>,
    /// The range.
    pub range: ChunkRange,
}

/// Where a reader's statements run. Connections are [`Guarded`] (transactions are begun and
/// committed by hand, not with sqlx's `Transaction`), so a read cut short closes its
/// connection instead of leaving the pool to read the rest of the table.
enum Connection {
    /// The pool: every statement is consistent on its own.
    Pool,
    /// A PostgreSQL transaction on the table's shared snapshot.
    Postgres(Guarded<Postgres>),
    /// A MySQL transaction started inside the table's lock window.
    Mysql(Guarded<MySql>),
}

/// One reader of a table's chunks.
pub struct Reader {
    source: Source,
    connection: Connection,
}

impl Reader {
    /// A reader on the pool (each chunk its own statement).
    pub fn pool(source: &Source) -> Self {
        Self {
            source: source.clone(),
            connection: Connection::Pool,
        }
    }

    /// Reads `columns` of the rows of `chunk` (every row when `None`) past `filter`, pushes
    /// them into `sink` and its chunks into `out` (see [`Source::extract`]).
    #[allow(clippy::too_many_arguments, reason = "one extraction's inputs")]
    pub async fn extract<S: RowSink>(
        &mut self,
        table: &SourceTable,
        columns: &[ColumnMapping],
        filter: Option<&CursorFilter>,
        chunk: Option<ChunkRead<'_>>,
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
        let dialect = match &self.source {
            Source::Mysql(pool)
                if columns
                    .iter()
                    .any(|column| column.read_as == ReadAs::Geography) =>
            {
                mysql::geography_dialect(pool).await?
            }
            other => other.dialect(),
        };
        let predicate = match chunk {
            Some(chunk) => Some(chunk_clause(dialect, &self.source, chunk)?),
            None => None,
        };
        let statement = sql::select_sql(dialect, table, columns, filter, predicate.as_deref())?;
        let failed = |error| SourceError::query("reading rows", error);
        match (&mut self.connection, &self.source) {
            (Connection::Postgres(connection), _) => {
                read_postgres(connection, &statement, columns, sink, out, progress).await
            }
            (Connection::Mysql(connection), _) => {
                read(
                    connection,
                    &statement,
                    mysql::decode,
                    columns,
                    sink,
                    out,
                    progress,
                )
                .await
            }
            (Connection::Pool, Source::Mysql(pool)) => {
                let mut connection = Guarded::new(pool.acquire().await.map_err(failed)?);
                read(
                    &mut connection,
                    &statement,
                    mysql::decode,
                    columns,
                    sink,
                    out,
                    progress,
                )
                .await
            }
            (Connection::Pool, Source::Postgres(pool)) => {
                let mut connection = Guarded::new(pool.acquire().await.map_err(failed)?);
                read_postgres(&mut connection, &statement, columns, sink, out, progress).await
            }
            // A SQLite read is a statement on a local file: stopping it leaves nothing to read.
            (Connection::Pool, Source::Sqlite(pool)) => {
                let rows = query(&statement).fetch(pool);
                drive(rows, columns, super::sqlite::decode, sink, out, progress).await
            }
        }
    }

    /// Ends the reader's transaction (read only: nothing to commit, so a failure is harmless;
    /// the connection is then closed, not returned to the pool).
    pub async fn close(self) {
        let ended = match self.connection {
            Connection::Pool => Ok(()),
            Connection::Postgres(connection) => commit(connection).await,
            Connection::Mysql(connection) => commit(connection).await,
        };
        if let Err(error) = ended {
            tracing::debug!(%error, "ending a reader's transaction failed");
        }
    }
}

/// Commits `connection`'s transaction; the guard closes it if that fails.
async fn commit<DB: sqlx::Database>(mut connection: Guarded<DB>) -> Result<(), sqlx::Error>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    connection.connection().execute("COMMIT").await?;
    connection.in_transaction = false;
    Ok(())
}

/// Reads `statement` on a PostgreSQL connection: through COPY, which binds no parameter,
/// unless it has a cursor bound (the value is never spliced into SQL), then as a query.
async fn read_postgres<S: RowSink>(
    connection: &mut Guarded<Postgres>,
    statement: &sql::Statement,
    columns: &[ColumnMapping],
    sink: S,
    out: Sender<Bytes>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ExtractStats, SourceError> {
    if statement.bind.is_none() {
        connection
            .copy_extract(&statement.sql, columns, sink, out, progress)
            .await
    } else {
        read(
            connection,
            statement,
            postgres::decode,
            columns,
            sink,
            out,
            progress,
        )
        .await
    }
}

/// Runs `statement` as a query on `connection` and drives its rows into `sink` (see
/// [`drive`]); the connection counts as mid-read until every row was read.
async fn read<DB, S>(
    connection: &mut Guarded<DB>,
    statement: &sql::Statement,
    decode: super::DecodeFn<DB::Row>,
    columns: &[ColumnMapping],
    sink: S,
    out: Sender<Bytes>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ExtractStats, SourceError>
where
    DB: sqlx::Database,
    S: RowSink,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    connection.reading = true;
    let rows = query::<DB>(statement).fetch(connection.connection());
    let stats = drive(rows, columns, decode, sink, out, progress).await?;
    connection.reading = false;
    Ok(stats)
}

/// The SQL predicate of `chunk` in `dialect`.
fn chunk_clause(
    dialect: &dyn Dialect,
    source: &Source,
    chunk: ChunkRead<'_>,
) -> Result<String, SourceError> {
    let postgres = matches!(source, Source::Postgres(_));
    if matches!(chunk.range, ChunkRange::Key { .. }) && chunk.key.is_none() {
        return Err(SourceError::Invalid(
            "the plan's key range names no key column".into(),
        ));
    }
    sql::chunk_predicate(
        dialect,
        chunk.key.unwrap_or_default(),
        chunk.range,
        postgres,
    )?
    .ok_or_else(|| {
        SourceError::Invalid(format!(
            "{} sources cannot read page ranges (PostgreSQL only)",
            source.kind().as_str()
        ))
    })
}

impl Source {
    /// Up to `wanted` readers of `table`'s `chunks` chunks. With [`Consistency::Snapshot`] and
    /// more than one chunk they all read one snapshot (see the module docs); otherwise they
    /// read from the pool. At least one reader; fewer than `wanted` when the pool has no more
    /// connections to spare within [`EXTRA_READER_WAIT`].
    pub async fn open_readers(
        &self,
        table: &SourceTable,
        wanted: usize,
        chunks: usize,
        consistency: Consistency,
    ) -> Result<Vec<Reader>, SourceError> {
        let wanted = wanted.clamp(1, chunks.max(1));
        if chunks <= 1 || consistency == Consistency::PerChunk {
            return Ok((0..wanted).map(|_| Reader::pool(self)).collect());
        }
        match self {
            Self::Postgres(pool) => postgres_readers(self, pool, wanted).await,
            Self::Mysql(pool) => mysql_readers(self, pool, table, wanted).await,
            Self::Sqlite(_) => Ok(vec![Reader::pool(self)]),
        }
    }
}

fn snapshot_error(context: &str) -> impl Fn(sqlx::Error) -> SourceError + '_ {
    move |error| SourceError::query(context, error)
}

/// Readers on one exported PostgreSQL snapshot.
async fn postgres_readers(
    source: &Source,
    pool: &sqlx::PgPool,
    wanted: usize,
) -> Result<Vec<Reader>, SourceError> {
    const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    let context = "starting the readers' shared snapshot";
    // A connection of the pool in a transaction of our own (not sqlx's `Transaction`), so a
    // reader dropped mid-COPY closes its connection instead of draining the rest of the table.
    let begin = |connection: sqlx::pool::PoolConnection<sqlx::Postgres>| async move {
        let mut connection = Guarded::new(connection);
        connection.in_transaction = true;
        connection
            .connection()
            .execute(BEGIN)
            .await
            .map_err(snapshot_error(context))?;
        Ok::<_, SourceError>(connection)
    };
    let mut first = begin(pool.acquire().await.map_err(snapshot_error(context))?).await?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(first.connection())
        .await
        .map_err(snapshot_error(context))?;
    // Snapshot ids are like `00000003-0000001B-1`; anything else is not spliced into SQL.
    if !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(SourceError::Invalid(format!(
            "PostgreSQL exported an unexpected snapshot id {snapshot:?}"
        )));
    }
    let mut readers = vec![Reader {
        source: source.clone(),
        connection: Connection::Postgres(first),
    }];
    while readers.len() < wanted {
        let Ok(acquired) = tokio::time::timeout(EXTRA_READER_WAIT, pool.acquire()).await else {
            tracing::info!(
                readers = readers.len(),
                wanted,
                "no more connections free: reading with fewer readers"
            );
            break;
        };
        let mut connection = begin(acquired.map_err(snapshot_error(context))?).await?;
        connection
            .connection()
            .execute(format!("SET TRANSACTION SNAPSHOT '{snapshot}'").as_str())
            .await
            .map_err(snapshot_error("importing the readers' shared snapshot"))?;
        readers.push(Reader {
            source: source.clone(),
            connection: Connection::Postgres(connection),
        });
    }
    Ok(readers)
}

/// Readers whose transactions all started inside one `LOCK TABLES … READ` window (or one
/// reader's own transaction).
async fn mysql_readers(
    source: &Source,
    pool: &sqlx::MySqlPool,
    table: &SourceTable,
    wanted: usize,
) -> Result<Vec<Reader>, SourceError> {
    const START: &str = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY";
    let context = "starting a reader's consistent snapshot";
    // The connections first, so the lock is never held while waiting for the pool.
    let mut connections = vec![Guarded::new(
        pool.acquire().await.map_err(snapshot_error(context))?,
    )];
    while connections.len() < wanted {
        match tokio::time::timeout(EXTRA_READER_WAIT, pool.acquire()).await {
            Ok(acquired) => {
                connections.push(Guarded::new(acquired.map_err(snapshot_error(context))?));
            }
            Err(_) => {
                tracing::info!(
                    readers = connections.len(),
                    wanted,
                    "no more connections free: reading with fewer readers"
                );
                break;
            }
        }
    }
    let lock = if connections.len() > 1 {
        Some(lock_table(pool, table).await?)
    } else {
        None
    };
    let mut readers = Vec::with_capacity(connections.len());
    let mut started = Ok(());
    for mut connection in connections {
        if started.is_ok() {
            // Marked first: a START that fails half-way is closed with its connection.
            connection.in_transaction = true;
            started = connection
                .connection()
                .execute(START)
                .await
                .map(drop)
                .map_err(snapshot_error(context));
        }
        readers.push(Reader {
            source: source.clone(),
            connection: Connection::Mysql(connection),
        });
    }
    if let Some(mut lock) = lock {
        let _ = (&mut lock).execute("UNLOCK TABLES").await;
        let _ = sqlx::Connection::close(lock).await;
    }
    started.map(|()| readers)
}

/// A connection of its own (not the pool's: it only locks) holding `LOCK TABLES t READ`.
async fn lock_table(
    pool: &sqlx::MySqlPool,
    table: &SourceTable,
) -> Result<sqlx::MySqlConnection, SourceError> {
    let name = sql::Mysql.table_ref(table)?;
    let failed = |error: sqlx::Error| {
        SourceError::Invalid(format!(
            "cannot take `LOCK TABLES {name} READ` to start every reader of `{}` on one snapshot: {error}. Grant the LOCK TABLES privilege, or set `consistency: per-chunk` on the table (each chunk is then consistent on its own, the table is not)",
            table.label()
        ))
    };
    let mut connection =
        <sqlx::MySqlConnection as sqlx::Connection>::connect_with(&pool.connect_options())
            .await
            .map_err(failed)?;
    (&mut connection)
        .execute(format!("SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}").as_str())
        .await
        .map_err(failed)?;
    (&mut connection)
        .execute(format!("LOCK TABLES {name} READ").as_str())
        .await
        .map_err(failed)?;
    Ok(connection)
}
