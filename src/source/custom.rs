//! Custom SQL sources (`query:` in the manifest): a query's result columns, described from its
//! result metadata like a table's columns from the catalogs, so the same natural type mapping
//! (`crate::mapping`) and the same codecs apply. The statement is prepared, never run; where
//! the driver's metadata lacks what the catalogs give (PostgreSQL type modifiers, MySQL
//! precision, scale and character sets, SQLite declared types), a temporary view or table of
//! the query (`SELECT * FROM (<query>) AS q`, no rows) is described instead and dropped or
//! rolled back at once. A server that refuses it still gets the driver's types, with a note.

use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Column, Connection, Executor, MySqlPool, PgPool, Row, SqlitePool, TypeInfo};

use super::SourceError;
use crate::schema::{SourceColumn, SourceTable};

fn qerr(context: &str) -> impl Fn(sqlx::Error) -> SourceError + '_ {
    move |error| SourceError::query(context, error)
}

/// What PostgreSQL's types lack without the temporary view.
const PG_COST: &str = "its expression columns have no declared precision or length (a numeric expression maps to BIGNUMERIC; table columns keep theirs)";
/// What MySQL's prepared-statement types lack without the temporary table.
const MYSQL_COST: &str = "its columns are typed from the prepared statement, which gives no DECIMAL precision or scale (read as DECIMAL(65,30)) and no character set; grant CREATE TEMPORARY TABLES for exact types";
/// What SQLite's inferred types lack without the temporary view.
const SQLITE_COST: &str =
    "its columns are typed as SQLite infers them, without declared types or precision";

/// The plan's note when the server refused the temporary view or table (`error`: why; none
/// when it was made but described fewer columns than the query has).
fn refused_note(engine: &str, object: &str, error: Option<sqlx::Error>, cost: &str) -> String {
    let why = error.map_or_else(String::new, |error| format!(" ({error})"));
    format!("{engine} refused a temporary {object} of the query{why}: {cost}")
}

/// The query as the derived table datasync reads.
fn wrapped(query: &str) -> String {
    format!("SELECT * FROM (\n{query}\n) AS q")
}

/// A custom SQL source as introspected ([`super::Source::describe_query`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryTable {
    /// The query as a table: its result columns, typed like table columns, every one NULLABLE
    /// (a query's nullability is not known), its key the `primary_key` given.
    pub table: SourceTable,
    /// What the result metadata could not tell, for the plan's warnings.
    pub notes: Vec<String>,
}

/// What every engine starts from: the query's result column names (checked: named, no two
/// alike) and the description of its wrapped form `SELECT * FROM (<query>) AS q` on `conn`
/// (returned too), which the engine's own typing then refines.
async fn describe_wrapped<DB: sqlx::Database>(
    conn: &mut DB::Connection,
    name: &str,
    query: &str,
    context: &str,
) -> Result<(Vec<String>, String, sqlx::Describe<DB>), SourceError>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let raw = (&mut *conn).describe(query).await.map_err(qerr(context))?;
    let names: Vec<String> = raw.columns().iter().map(|c| c.name().to_string()).collect();
    check_result_names(name, &names)?;
    let wrapped = wrapped(query);
    let described = (&mut *conn)
        .describe(&wrapped)
        .await
        .map_err(qerr(context))?;
    Ok((names, wrapped, described))
}

/// The temporary view or table a query is described through (dropped or rolled back at once).
const DESCRIBE_NAME: &str = "_datasync_describe";

/// Every result column of query `entry` has a name of its own, and no two share one: an
/// unaliased expression (PostgreSQL `?column?`, MySQL and SQLite name it by its text) would be
/// a target column nobody chose.
fn check_result_names(entry: &str, names: &[String]) -> Result<(), SourceError> {
    if names.is_empty() {
        return Err(SourceError::Invalid(format!(
            "query `{entry}` returns no columns: it must be a SELECT"
        )));
    }
    for (position, name) in names.iter().enumerate() {
        if name.trim().is_empty() || name == "?column?" || name.contains('(') {
            return Err(SourceError::Invalid(format!(
                "query `{entry}`: result column {} has no name of its own ({}): give it an alias, e.g. `count(*) AS orders`",
                position + 1,
                if name.trim().is_empty() {
                    "empty"
                } else {
                    name.as_str()
                }
                .replace('\n', " ")
            )));
        }
        if let Some(first) = names[..position].iter().position(|other| other == name) {
            return Err(SourceError::Invalid(format!(
                "query `{entry}` returns two columns named `{name}` (columns {} and {}): give one an alias",
                first + 1,
                position + 1
            )));
        }
    }
    Ok(())
}

/// A result column of a query, as the table catalogs would describe it; `nullable` always.
fn query_column(position: usize, name: &str, data_type: &str, column_type: &str) -> SourceColumn {
    SourceColumn {
        name: name.to_string(),
        ordinal: u32::try_from(position + 1).unwrap_or(u32::MAX),
        data_type: data_type.to_ascii_lowercase(),
        column_type: column_type.to_string(),
        nullable: true,
        precision: None,
        scale: None,
        max_length: None,
        primary_key: false,
        comment: None,
        is_json: false,
    }
}

/// A query's result columns as the catalogs type a table column: the prepared statement gives
/// each column's type OID and, for a column read straight from a table, that table and
/// attribute; the type modifiers (numeric precision and scale, varchar lengths) sqlx does not
/// keep are read from a temporary view of the query, created and rolled back in one
/// transaction (nothing is left behind, and the query is not run). A server that refuses it (a
/// read-only standby) still gives table columns their modifiers, from `pg_attribute`; an
/// expression then has none (a note says so). Domains are described as their base type.
pub(super) async fn postgres(
    pool: &PgPool,
    name: &str,
    query: &str,
) -> Result<(Vec<SourceColumn>, Vec<String>), SourceError> {
    let context = format!("describing query `{name}`");
    let mut conn = pool.acquire().await.map_err(qerr(&context))?;
    let (names, wrapped, described) =
        describe_wrapped::<sqlx::Postgres>(&mut conn, name, query, &context).await?;
    let mut oids = Vec::with_capacity(names.len());
    for column in described.columns() {
        let oid = column.type_info().oid().ok_or_else(|| {
            SourceError::Invalid(format!(
                "query `{name}`: the type of column `{}` is unknown to the server",
                column.name()
            ))
        })?;
        oids.push(i64::from(oid.0));
    }
    let mut notes = Vec::new();
    let typmods = match view_typmods(&mut conn, &wrapped).await {
        Ok(typmods) if typmods.len() == oids.len() => typmods,
        outcome => {
            let relations: Vec<(i64, i32)> = described
                .columns()
                .iter()
                .map(|c| {
                    let relation = c.relation_id().map_or(0, |oid| i64::from(oid.0));
                    (relation, i32::from(c.relation_attribute_no().unwrap_or(0)))
                })
                .collect();
            if relations.iter().any(|(relation, _)| *relation == 0) {
                notes.push(refused_note("PostgreSQL", "view", outcome.err(), PG_COST));
            }
            attribute_typmods(&mut conn, &relations)
                .await
                .map_err(qerr(&context))?
        }
    };
    let rows = sqlx::query(
        "SELECT CASE WHEN t.typtype = 'd' THEN b.typname ELSE t.typname END::text,
                format_type(m.base, m.mod),
                information_schema._pg_numeric_precision(m.base, m.mod)::int8,
                information_schema._pg_numeric_scale(m.base, m.mod)::int8,
                information_schema._pg_char_max_length(m.base, m.mod)::int8
         FROM unnest($1::int8[], $2::int4[]) WITH ORDINALITY AS u(oid, typmod, position)
         JOIN pg_type t ON t.oid = u.oid::oid
         LEFT JOIN pg_type b ON b.oid = t.typbasetype
         CROSS JOIN LATERAL (SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END AS base,
                                    CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE u.typmod END AS mod) m
         ORDER BY u.position",
    )
    .bind(&oids)
    .bind(&typmods)
    .fetch_all(&mut *conn)
    .await
    .map_err(qerr(&context))?;
    let mut columns = Vec::with_capacity(rows.len());
    for (position, (row, name)) in rows.iter().zip(&names).enumerate() {
        let data_type: String = row.try_get(0).map_err(qerr(&context))?;
        let column_type: String = row.try_get(1).map_err(qerr(&context))?;
        let number = |index: usize| -> Result<Option<u32>, SourceError> {
            let value: Option<i64> = row.try_get(index).map_err(qerr(&context))?;
            Ok(value.and_then(|value| u32::try_from(value).ok()))
        };
        let mut column = query_column(position, name, &data_type, &column_type);
        if column.data_type == "numeric" {
            column.precision = number(2)?;
            column.scale = number(3)?;
        }
        column.max_length = number(4)?.map(u64::from);
        columns.push(column);
    }
    Ok((columns, notes))
}

/// The type modifier of each result column, from a temporary view of `wrapped` created and
/// rolled back in one transaction.
async fn view_typmods(conn: &mut PgConnection, wrapped: &str) -> Result<Vec<i32>, sqlx::Error> {
    let view = DESCRIBE_NAME;
    let mut transaction = conn.begin().await?;
    // The extended protocol: one statement, whatever the text holds.
    let created = sqlx::query(&format!("CREATE TEMP VIEW {view} AS {wrapped}"))
        .persistent(false)
        .execute(&mut *transaction)
        .await;
    let typmods = match created {
        // The view's oid is looked up when the statement runs (a cached plan would keep the
        // oid of the previous call's view).
        Ok(_) => {
            sqlx::query_scalar(
                "SELECT a.atttypmod FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid
                 WHERE c.relname = $1 AND c.relnamespace = pg_my_temp_schema() AND a.attnum > 0
                 ORDER BY a.attnum",
            )
            .bind(view)
            .fetch_all(&mut *transaction)
            .await
        }
        Err(error) => Err(error),
    };
    transaction.rollback().await?;
    typmods
}

/// The type modifier of each result column read straight from a table (`(relation, attnum)`,
/// relation `0` for an expression: `-1`).
async fn attribute_typmods(
    conn: &mut PgConnection,
    relations: &[(i64, i32)],
) -> Result<Vec<i32>, sqlx::Error> {
    let (ids, attributes): (Vec<i64>, Vec<i32>) = relations.iter().copied().unzip();
    sqlx::query_scalar(
        "SELECT COALESCE(a.atttypmod, -1)
         FROM unnest($1::int8[], $2::int4[]) WITH ORDINALITY AS u(relation, attnum, position)
         LEFT JOIN pg_attribute a ON a.attrelid = u.relation::oid AND a.attnum = u.attnum
         ORDER BY u.position",
    )
    .bind(&ids)
    .bind(&attributes)
    .fetch_all(conn)
    .await
}

/// A MySQL/MariaDB query's result columns, typed from a temporary table made of it (`CREATE
/// TEMPORARY TABLE … AS SELECT * FROM (<query>) AS q LIMIT 0`: no rows are read, and it needs
/// the `CREATE TEMPORARY TABLES` privilege): `SHOW COLUMNS` gives each column's full type (as
/// `information_schema.columns.column_type` does for a table: precision and scale, `unsigned`,
/// binary strings). Without the privilege the prepared statement's types are used, which carry
/// neither DECIMAL precision and scale nor the character set (a note says so).
pub(super) async fn mysql(
    pool: &MySqlPool,
    name: &str,
    query: &str,
) -> Result<(Vec<SourceColumn>, Vec<String>), SourceError> {
    let context = format!("describing query `{name}`");
    let mut conn = pool.acquire().await.map_err(qerr(&context))?;
    let (names, wrapped, described) =
        describe_wrapped::<sqlx::MySql>(&mut conn, name, query, &context).await?;
    match mysql_table_types(&mut conn, &wrapped).await {
        Ok(types) if types.len() == names.len() => {
            let columns = names
                .iter()
                .zip(&types)
                .enumerate()
                .map(|(position, (name, column_type))| mysql_column(position, name, column_type))
                .collect();
            Ok((columns, Vec::new()))
        }
        outcome => {
            let note = refused_note("MySQL", "table", outcome.err(), MYSQL_COST);
            let columns = names
                .iter()
                .zip(described.columns())
                .enumerate()
                .map(|(position, (name, column))| {
                    mysql_column(position, name, &mysql_wire_type(column.type_info().name()))
                })
                .collect();
            Ok((columns, vec![note]))
        }
    }
}

/// The full type of each column of a temporary table made of `wrapped` (dropped again).
async fn mysql_table_types(
    conn: &mut MySqlConnection,
    wrapped: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let table = format!("`{DESCRIBE_NAME}`");
    let drop = format!("DROP TEMPORARY TABLE IF EXISTS {table}");
    conn.execute(sqlx::raw_sql(&drop)).await?;
    // A prepared statement: one statement, whatever the text holds.
    sqlx::query(&format!(
        "CREATE TEMPORARY TABLE {table} AS {wrapped} LIMIT 0"
    ))
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    let rows = conn
        .fetch_all(sqlx::raw_sql(&format!("SHOW COLUMNS FROM {table}")))
        .await;
    conn.execute(sqlx::raw_sql(&drop)).await?;
    rows?
        .iter()
        .map(|row| {
            let bytes: Vec<u8> = row.try_get(1)?;
            Ok(String::from_utf8_lossy(&bytes).to_ascii_lowercase())
        })
        .collect()
}

/// A result column from its full MySQL type (`decimal(34,2)`, `bigint(20) unsigned`,
/// `varchar(20)`), split as `information_schema.columns` splits a table column's.
fn mysql_column(position: usize, name: &str, column_type: &str) -> SourceColumn {
    let column_type = column_type.trim().to_ascii_lowercase();
    let data_type = column_type
        .split(['(', ' '])
        .next()
        .unwrap_or_default()
        .to_string();
    let params: Vec<Option<u32>> = column_type
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .filter(|_| data_type != "enum" && data_type != "set")
        .map(|(inner, _)| inner.split(',').map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default();
    let first = params.first().copied().flatten();
    let mut column = query_column(position, name, &data_type, &column_type);
    match data_type.as_str() {
        "decimal" | "numeric" => {
            column.precision = first;
            column.scale = params.get(1).copied().flatten().or(Some(0));
        }
        "bit" => column.precision = first,
        "char" | "varchar" | "binary" | "varbinary" => column.max_length = first.map(u64::from),
        _ => {}
    }
    column
}

/// A full MySQL type from the prepared statement's type name (sqlx's, e.g. `BIGINT UNSIGNED`,
/// `BOOLEAN` for a TINYINT(1)): DECIMAL's precision and scale are unknown, so the widest exact
/// DECIMAL(65,30) is assumed; a BIT of unknown width is read as bytes.
fn mysql_wire_type(name: &str) -> String {
    match name {
        "BOOLEAN" => "tinyint(1)".into(),
        "DECIMAL" => "decimal(65,30)".into(),
        "BIT" => "bit(64)".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// A SQLite query's result columns, typed by the declared types of a temporary view of it (a
/// column read straight from a table keeps its declared type, e.g. `DECIMAL(12,2)`, exactly as
/// `PRAGMA table_info` gives a table's); an expression has none, so the type sqlx infers for
/// it is used (`INTEGER`, `REAL`, `TEXT`, `BLOB`), else no type (STRING).
pub(super) async fn sqlite(
    pool: &SqlitePool,
    name: &str,
    query: &str,
) -> Result<(Vec<SourceColumn>, Vec<String>), SourceError> {
    let context = format!("describing query `{name}`");
    let mut conn = pool.acquire().await.map_err(qerr(&context))?;
    let (names, wrapped, described) =
        describe_wrapped::<sqlx::Sqlite>(&mut conn, name, query, &context).await?;
    let mut notes = Vec::new();
    let declared = match sqlite_declared_types(&mut conn, &wrapped).await {
        Ok(declared) if declared.len() == names.len() => declared,
        outcome => {
            notes.push(refused_note("SQLite", "view", outcome.err(), SQLITE_COST));
            vec![String::new(); names.len()]
        }
    };
    let columns = names
        .iter()
        .zip(declared)
        .zip(described.columns())
        .enumerate()
        .map(|(position, ((name, declared), column))| {
            let declared = if declared.trim().is_empty() {
                match column.type_info().name() {
                    "NULL" => String::new(),
                    inferred => inferred.to_string(),
                }
            } else {
                declared
            };
            sqlite_column(position, name, &declared)
        })
        .collect();
    Ok((columns, notes))
}

/// The declared type of each column of a temporary view of `wrapped` (dropped again; the temp
/// schema is writable on a read-only connection).
async fn sqlite_declared_types(
    conn: &mut SqliteConnection,
    wrapped: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let view = format!("temp.\"{DESCRIBE_NAME}\"");
    let drop = format!("DROP VIEW IF EXISTS {view}");
    sqlx::query(&drop).execute(&mut *conn).await?;
    // One prepared statement, whatever the text holds.
    sqlx::query(&format!(
        "CREATE TEMP VIEW \"{DESCRIBE_NAME}\" AS {wrapped}"
    ))
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    let declared = sqlx::query_scalar(&format!(
        "SELECT type FROM pragma_table_info('{DESCRIBE_NAME}', 'temp') ORDER BY cid"
    ))
    .fetch_all(&mut *conn)
    .await;
    sqlx::query(&drop).execute(&mut *conn).await?;
    declared
}

/// A result column from its declared SQLite type, split as `describe` splits a table's.
fn sqlite_column(position: usize, name: &str, declared: &str) -> SourceColumn {
    let base = declared.split('(').next().unwrap_or("").trim().to_string();
    let params: Vec<Option<u32>> = declared
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inner, _)| inner.split(',').map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default();
    let mut column = query_column(position, name, &base, declared);
    column.precision = params.first().copied().flatten();
    column.scale = params.get(1).copied().flatten();
    column
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_result_needs_a_name_per_column() {
        let names = |list: &[&str]| list.iter().map(|name| name.to_string()).collect::<Vec<_>>();
        assert!(check_result_names("q", &names(&["id", "total"])).is_ok());
        let message = |list: &[&str]| {
            check_result_names("daily", &names(list))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            message(&["id", "?column?"]),
            "query `daily`: result column 2 has no name of its own (?column?): give it an alias, e.g. `count(*) AS orders`"
        );
        assert_eq!(
            message(&["SUM(amount)"]),
            "query `daily`: result column 1 has no name of its own (SUM(amount)): give it an alias, e.g. `count(*) AS orders`"
        );
        assert!(message(&[""]).contains("(empty)"));
        assert_eq!(
            message(&["id", "total", "id"]),
            "query `daily` returns two columns named `id` (columns 1 and 3): give one an alias"
        );
        assert_eq!(
            message(&[]),
            "query `daily` returns no columns: it must be a SELECT"
        );
    }

    #[test]
    fn mysql_types_split_like_information_schema() {
        let column = mysql_column(0, "total", "decimal(34,2)");
        assert_eq!(
            (column.data_type.as_str(), column.precision, column.scale),
            ("decimal", Some(34), Some(2))
        );
        assert!(column.nullable);
        let column = mysql_column(1, "u", "bigint(20) unsigned");
        assert_eq!(
            (
                column.data_type.as_str(),
                column.column_type.as_str(),
                column.ordinal
            ),
            ("bigint", "bigint(20) unsigned", 2)
        );
        assert_eq!(mysql_column(0, "v", "varchar(21)").max_length, Some(21));
        assert_eq!(mysql_column(0, "b", "bit(1)").precision, Some(1));
        let column = mysql_column(0, "e", "enum('a(1)','b')");
        assert_eq!(
            (column.data_type.as_str(), column.precision),
            ("enum", None)
        );
        assert_eq!(mysql_wire_type("BOOLEAN"), "tinyint(1)");
        assert_eq!(mysql_wire_type("BIGINT UNSIGNED"), "bigint unsigned");
        let column = mysql_column(0, "d", &mysql_wire_type("DECIMAL"));
        assert_eq!((column.precision, column.scale), (Some(65), Some(30)));
    }

    #[test]
    fn a_refused_temporary_object_is_a_note_saying_what_it_costs() {
        let refused =
            sqlx::Error::Protocol("cannot execute CREATE VIEW in a read-only transaction".into());
        assert_eq!(
            refused_note("PostgreSQL", "view", Some(refused), PG_COST),
            "PostgreSQL refused a temporary view of the query (encountered unexpected or invalid data: cannot execute CREATE VIEW in a read-only transaction): its expression columns have no declared precision or length (a numeric expression maps to BIGNUMERIC; table columns keep theirs)"
        );
        assert_eq!(
            refused_note("MySQL", "table", None, MYSQL_COST),
            "MySQL refused a temporary table of the query: its columns are typed from the prepared statement, which gives no DECIMAL precision or scale (read as DECIMAL(65,30)) and no character set; grant CREATE TEMPORARY TABLES for exact types"
        );
        assert_eq!(
            refused_note("SQLite", "view", None, SQLITE_COST),
            "SQLite refused a temporary view of the query: its columns are typed as SQLite infers them, without declared types or precision"
        );
    }

    #[test]
    fn sqlite_declared_types_split_like_table_info() {
        let column = sqlite_column(0, "amount", "DECIMAL(12,2)");
        assert_eq!(
            (column.data_type.as_str(), column.column_type.as_str()),
            ("decimal", "DECIMAL(12,2)")
        );
        assert_eq!((column.precision, column.scale), (Some(12), Some(2)));
        assert_eq!(sqlite_column(0, "x", "").data_type, "");
    }
}
