//! MySQL/MariaDB: connect, describe, decode (the SQL is [`super::sql::Mysql`]). Decoding is
//! driven by information_schema, not by wire types (MariaDB sends JSON as BLOB, UUID as BINARY,
//! SET as CHAR).

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow, MySqlSslMode};
use sqlx::{Decode, Executor, MySql, MySqlPool, Row, ValueRef};

use super::sql::Dialect;
use super::{ConnectFailure, SourceError, open_tunnel, sql, tls_is_default};
use crate::manifest::raw::TlsMode;
use crate::manifest::resolve::SourceSpec;
use crate::schema::{
    Bad, BadKind, Codec, Decoded, SourceColumn, SourceTable, Val, decimal_text, text,
};

/// The driver's options: the URL or the parts, TLS, the session's character set and zone.
fn connect_options(spec: &SourceSpec) -> Result<MySqlConnectOptions, sqlx::Error> {
    let connection = &spec.connection;
    let mut options = match &connection.url {
        Some(url) => {
            MySqlConnectOptions::from_str(&url.expose().replacen("mariadb://", "mysql://", 1))?
        }
        None => {
            let mut options = MySqlConnectOptions::new().host(&connection.host);
            if let Some(port) = connection.port {
                options = options.port(port);
            }
            if let Some(user) = &connection.user {
                options = options.username(user);
            }
            if let Some(password) = &connection.password {
                options = options.password(password.expose());
            }
            if let Some(database) = &connection.database {
                options = options.database(database);
            }
            options
        }
    };
    if connection.url.is_none() || !tls_is_default(spec.tls.mode) {
        options = options.ssl_mode(match spec.tls.mode {
            TlsMode::Disable => MySqlSslMode::Disabled,
            TlsMode::Prefer => MySqlSslMode::Preferred,
            TlsMode::Require => MySqlSslMode::Required,
            TlsMode::VerifyCa => MySqlSslMode::VerifyCa,
            TlsMode::VerifyFull => MySqlSslMode::VerifyIdentity,
        });
    }
    if let Some(ca) = &spec.tls.ca {
        options = options.ssl_ca(ca);
    }
    if let Some(cert) = &spec.tls.cert {
        options = options.ssl_client_cert(cert);
    }
    if let Some(key) = &spec.tls.key {
        options = options.ssl_client_key(key);
    }
    Ok(options.charset("utf8mb4").timezone(Some("+00:00".into())))
}

pub(super) async fn connect(spec: &SourceSpec) -> Result<MySqlPool, ConnectFailure> {
    let mut options = connect_options(spec)?;
    // Through SSH only the socket changes: the host stays the TLS server name.
    let tunnel = open_tunnel(
        spec,
        options.get_host(),
        options.get_port(),
        options.get_socket().map(std::path::PathBuf::as_path),
        "mysql.sock",
    )
    .await?;
    if let Some(tunnel) = &tunnel {
        options = options.socket(tunnel.socket());
    }
    let hook_tunnel = tunnel.clone();
    let mut setup = vec!["SET time_zone = '+00:00'".to_string()];
    if let Some(read) = spec.timeouts.read {
        setup.push(format!(
            "SET SESSION net_read_timeout = {}",
            read.as_secs().max(1)
        ));
    }
    if let Some(write) = spec.timeouts.write {
        setup.push(format!(
            "SET SESSION net_write_timeout = {}",
            write.as_secs().max(1)
        ));
    }
    let statement = spec.timeouts.statement.map(|timeout| timeout.as_secs_f64());
    let setup = Arc::new(setup);
    let mut pool = MySqlPoolOptions::new()
        .max_connections(spec.max_connections.max(1))
        .min_connections(spec.min_connections)
        .max_lifetime(spec.max_lifetime)
        .after_connect(move |conn, _meta| {
            let setup = Arc::clone(&setup);
            // The pool's hook owns the tunnel: it lives exactly as long as the pool.
            let _tunnel = hook_tunnel.clone();
            Box::pin(async move {
                for statement in setup.iter() {
                    conn.execute(sqlx::raw_sql(statement)).await?;
                }
                if let Some(seconds) = statement {
                    // MariaDB: max_statement_time (seconds); MySQL: max_execution_time (ms, SELECT only).
                    let mariadb = format!("SET SESSION max_statement_time = {seconds:.3}");
                    if conn.execute(sqlx::raw_sql(&mariadb)).await.is_err() {
                        let mysql = format!(
                            "SET SESSION max_execution_time = {}",
                            (seconds * 1000.0) as u64
                        );
                        conn.execute(sqlx::raw_sql(&mysql)).await?;
                    }
                }
                Ok(())
            })
        });
    if let Some(timeout) = spec.timeouts.connect {
        pool = pool.acquire_timeout(timeout);
    }
    // Fail fast: one direct connection first, so a refused port, an unreachable host or a wrong
    // password is reported at once with the driver's (OS) error, not as "pool timed out" after
    // the pool's acquire timeout of silent retries.
    let limit = spec
        .timeouts
        .connect
        .unwrap_or(std::time::Duration::from_secs(30));
    let probe = tokio::time::timeout(
        limit,
        <sqlx::MySqlConnection as sqlx::Connection>::connect_with(&options),
    )
    .await
    .map_err(|_| sqlx::Error::PoolTimedOut)
    .and_then(|connected| connected)
    .map_err(|error| ConnectFailure::through(error, tunnel.as_deref()))?;
    let _ = sqlx::Connection::close(probe).await;
    pool.connect_with(options)
        .await
        .map_err(|error| ConnectFailure::through(error, tunnel.as_deref()))
}

fn qerr(context: &str) -> impl Fn(sqlx::Error) -> SourceError + '_ {
    move |error| SourceError::query(context, error)
}

/// Reads a text column whatever its wire type (information_schema columns differ by server).
fn get_text(row: &MySqlRow, index: usize) -> Result<Option<String>, SourceError> {
    let raw = row
        .try_get_raw(index)
        .map_err(qerr("reading information_schema"))?;
    if raw.is_null() {
        return Ok(None);
    }
    let bytes = <&[u8] as Decode<MySql>>::decode(raw)
        .map_err(|error| SourceError::query("reading information_schema", error))?;
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

fn get_i64(row: &MySqlRow, index: usize) -> Result<Option<i64>, SourceError> {
    row.try_get::<Option<i64>, _>(index)
        .map_err(qerr("reading information_schema"))
}

/// Above this many tables, a catalog query reads the whole database and the tables are picked
/// here: an `IN` list of thousands of placeholders is no cheaper (information_schema visits the
/// database's tables either way), and a statement takes at most 65,535 placeholders.
const NAME_LIST_LIMIT: usize = 1000;

/// `AND table_name IN (?, …)` for up to [`NAME_LIST_LIMIT`] names, else nothing.
fn name_filter(names: &[String]) -> String {
    if names.is_empty() || names.len() > NAME_LIST_LIMIT {
        return String::new();
    }
    format!(" AND table_name IN ({})", vec!["?"; names.len()].join(", "))
}

/// Runs a catalog query of `database` whose SQL ends with [`name_filter`]'s predicate.
async fn catalog_rows(
    pool: &MySqlPool,
    sql: &str,
    database: &str,
    names: &[String],
) -> Result<Vec<MySqlRow>, sqlx::Error> {
    let mut query = sqlx::query(sql).bind(database);
    if !name_filter(names).is_empty() {
        for name in names {
            query = query.bind(name);
        }
    }
    query.fetch_all(pool).await
}

/// A table of the catalog, while its columns and keys are read.
#[derive(Default)]
struct Found {
    estimated_rows: Option<u64>,
    comment: Option<String>,
    columns: Vec<MySqlRow>,
    primary_key: Vec<String>,
    unique_keys: Vec<Vec<String>>,
    json_checks: Vec<String>,
}

/// The tables `names` of `qualifier` (default: the connection's database), in the order asked,
/// from one set of information_schema queries for all of them; a table the catalog lacks is its
/// own [`SourceError::TableNotFound`]. An error of a query fails them all.
pub(super) async fn describe_many(
    pool: &MySqlPool,
    qualifier: Option<&str>,
    names: &[String],
) -> Result<Vec<Result<SourceTable, SourceError>>, SourceError> {
    let database = database_or_current(pool, qualifier, names).await?;
    let context = match names {
        [name] => format!("describing `{database}.{name}`"),
        _ => format!("describing {} tables of database `{database}`", names.len()),
    };
    let filter = name_filter(names);
    super::catalog_query("MySQL", "tables", names.len());
    let tables = catalog_rows(
        pool,
        &format!(
            "SELECT table_name, CAST(table_rows AS SIGNED), table_comment, table_type
             FROM information_schema.tables WHERE table_schema = ?{filter}"
        ),
        &database,
        names,
    )
    .await
    .map_err(qerr(&context))?;
    let mut found: HashMap<String, Found> = HashMap::with_capacity(tables.len());
    for row in &tables {
        // A view's `table_comment` is the word `VIEW`, not a description.
        let is_view = get_text(row, 3)?.is_some_and(|kind| kind.eq_ignore_ascii_case("VIEW"));
        found.insert(
            get_text(row, 0)?.unwrap_or_default(),
            Found {
                estimated_rows: get_i64(row, 1)?.and_then(|rows| u64::try_from(rows).ok()),
                comment: get_text(row, 2)?.filter(|comment| !comment.is_empty() && !is_view),
                ..Found::default()
            },
        );
    }
    if !found.is_empty() {
        read_catalog_details(pool, &database, names, &context, &mut found).await?;
    }
    names
        .iter()
        .map(|name| match lookup(&found, name) {
            Some(table) => {
                let columns = table
                    .columns
                    .iter()
                    .map(|row| column(row, &table.primary_key, &table.json_checks))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Ok(SourceTable {
                    query: None,
                    qualifier: Some(database.clone()),
                    name: name.clone(),
                    columns,
                    primary_key: table.primary_key.clone(),
                    unique_keys: table.unique_keys.clone(),
                    estimated_rows: table.estimated_rows,
                    comment: table.comment.clone(),
                }))
            }
            None => Ok(Err(SourceError::TableNotFound {
                table: format!("{database}.{name}"),
                engine: "MySQL",
                hint: " (check the database and the table name)".into(),
            })),
        })
        .collect()
}

/// `qualifier`, or the connection's database (an error naming the first table when there is
/// none).
async fn database_or_current(
    pool: &MySqlPool,
    qualifier: Option<&str>,
    names: &[String],
) -> Result<String, SourceError> {
    if let Some(database) = qualifier {
        return Ok(database.to_string());
    }
    super::catalog_query("MySQL", "current database", 0);
    let row = sqlx::query("SELECT DATABASE()")
        .fetch_one(pool)
        .await
        .map_err(qerr("reading the current database"))?;
    get_text(&row, 0)?.ok_or_else(|| {
        let name = names.first().map_or("", String::as_str);
        SourceError::Invalid(format!(
            "table `{name}` has no database qualifier and the connection selects none: write it `database.table` or set `database`"
        ))
    })
}

/// The table the catalog calls `name`; else the one table whose name differs only in case
/// (servers with `lower_case_table_names` store names in lower case and match them so).
fn lookup<'a>(found: &'a HashMap<String, Found>, name: &str) -> Option<&'a Found> {
    found.get(name).or_else(|| {
        let mut close = found
            .iter()
            .filter(|(known, _)| known.eq_ignore_ascii_case(name));
        match (close.next(), close.next()) {
            (Some((_, table)), None) => Some(table),
            _ => None,
        }
    })
}

/// Columns, keys and JSON checks of the `found` tables, one query each.
async fn read_catalog_details(
    pool: &MySqlPool,
    database: &str,
    names: &[String],
    context: &str,
    found: &mut HashMap<String, Found>,
) -> Result<(), SourceError> {
    let filter = name_filter(names);
    super::catalog_query("MySQL", "columns", names.len());
    let columns = catalog_rows(
        pool,
        &format!(
            "SELECT table_name, column_name, data_type, column_type, is_nullable,
                    CAST(numeric_precision AS SIGNED), CAST(numeric_scale AS SIGNED),
                    CAST(character_maximum_length AS SIGNED), column_comment,
                    CAST(ordinal_position AS SIGNED)
             FROM information_schema.columns WHERE table_schema = ?{filter}
             ORDER BY table_name, ordinal_position"
        ),
        database,
        names,
    )
    .await
    .map_err(qerr(context))?;
    for row in columns {
        if let Some(table) = found.get_mut(&get_text(&row, 0)?.unwrap_or_default()) {
            table.columns.push(row);
        }
    }
    super::catalog_query("MySQL", "keys", names.len());
    let keys = catalog_rows(
        pool,
        &format!(
            "SELECT table_name, index_name, column_name, sub_part IS NOT NULL
             FROM information_schema.statistics WHERE table_schema = ? AND non_unique = 0{filter}
             ORDER BY CAST(table_name AS BINARY), index_name <> 'PRIMARY',
                      CAST(index_name AS BINARY), seq_in_index"
        ),
        database,
        names,
    )
    .await
    .map_err(qerr(context))?;
    add_keys(&keys, found)?;
    // MariaDB stores JSON as LONGTEXT with a `json_valid(`col`)` CHECK. MySQL 8's
    // check_constraints has no table_name column: the query fails there, and JSON is native.
    super::catalog_query("MySQL", "checks", names.len());
    let checks = catalog_rows(
        pool,
        &format!(
            "SELECT table_name, check_clause FROM information_schema.check_constraints
             WHERE constraint_schema = ?{filter}"
        ),
        database,
        names,
    )
    .await
    .unwrap_or_default();
    for row in &checks {
        if let (Some(table), Some(clause)) = (
            found.get_mut(&get_text(row, 0)?.unwrap_or_default()),
            get_text(row, 1)?,
        ) {
            table
                .json_checks
                .push(clause.to_ascii_lowercase().replace(' ', ""));
        }
    }
    Ok(())
}

/// Primary and unique keys from `information_schema.statistics` rows (table, index, column,
/// prefix?) in table, index and position order. A unique index over a column prefix or an
/// expression does not make its columns unique, so it is left out.
fn add_keys(rows: &[MySqlRow], found: &mut HashMap<String, Found>) -> Result<(), SourceError> {
    // (table, index, columns, usable), in the rows' order.
    let mut keys: Vec<(String, String, Vec<String>, bool)> = Vec::new();
    for row in rows {
        let table = get_text(row, 0)?.unwrap_or_default();
        let index = get_text(row, 1)?.unwrap_or_default();
        let column = get_text(row, 2)?;
        let usable = column.is_some() && get_i64(row, 3)? != Some(1);
        match keys.last_mut() {
            Some((known_table, known_index, columns, known_usable))
                if *known_table == table && *known_index == index =>
            {
                *known_usable &= usable;
                columns.extend(column);
            }
            _ => keys.push((table, index, column.into_iter().collect(), usable)),
        }
    }
    for (table, index, columns, usable) in keys {
        let Some(table) = found.get_mut(&table) else {
            continue;
        };
        if index == "PRIMARY" {
            table.primary_key = columns;
        } else if usable {
            table.unique_keys.push(columns);
        }
    }
    Ok(())
}

/// One row of `information_schema.columns` (in the order [`read_catalog_details`] selects
/// them: the table name first).
fn column(
    row: &MySqlRow,
    primary_key: &[String],
    json_checks: &[String],
) -> Result<SourceColumn, SourceError> {
    let name = get_text(row, 1)?.unwrap_or_default();
    let data_type = get_text(row, 2)?.unwrap_or_default().to_ascii_lowercase();
    let to_u32 = |value: Option<i64>| value.and_then(|value| u32::try_from(value).ok());
    let is_json = matches!(data_type.as_str(), "longtext" | "text" | "mediumtext")
        && json_checks.iter().any(|clause| {
            clause
                == &format!(
                    "json_valid({})",
                    sql::Mysql
                        .quote(&name.to_ascii_lowercase())
                        .unwrap_or_default()
                )
        });
    let numeric = matches!(data_type.as_str(), "decimal" | "numeric" | "bit");
    Ok(SourceColumn {
        primary_key: primary_key.contains(&name),
        ordinal: to_u32(get_i64(row, 9)?).unwrap_or(0),
        column_type: get_text(row, 3)?.unwrap_or_default(),
        nullable: get_text(row, 4)?.as_deref() == Some("YES"),
        precision: if numeric {
            to_u32(get_i64(row, 5)?)
        } else {
            None
        },
        scale: if numeric && data_type != "bit" {
            to_u32(get_i64(row, 6)?)
        } else {
            None
        },
        max_length: get_i64(row, 7)?.and_then(|length| u64::try_from(length).ok()),
        comment: get_text(row, 8)?.filter(|comment| !comment.is_empty()),
        is_json,
        data_type,
        name,
    })
}

pub(super) fn decode<'a>(row: &'a MySqlRow, index: usize, codec: &'a Codec) -> Decoded<'a> {
    let raw = match row.try_get_raw(index) {
        Ok(raw) => raw,
        Err(error) => return Err(Bad::new(BadKind::Malformed, error.to_string())),
    };
    if raw.is_null() {
        // sqlx reports zero dates as NULL: look at the bytes to tell them apart.
        if matches!(codec, Codec::Date | Codec::DateTime | Codec::Timestamp)
            && let Ok(bytes) = <&[u8] as Decode<MySql>>::decode(raw)
        {
            return decode_binary(bytes, codec);
        }
        return Ok(Val::Null);
    }
    let malformed =
        |error: sqlx::error::BoxDynError| Bad::new(BadKind::Malformed, error.to_string());
    match codec {
        Codec::Int => <i64 as Decode<MySql>>::decode(raw)
            .map(Val::Int)
            .map_err(malformed),
        Codec::UInt => <u64 as Decode<MySql>>::decode(raw)
            .map(Val::UInt)
            .map_err(malformed),
        codec => match <&[u8] as Decode<MySql>>::decode(raw) {
            Ok(bytes) => decode_binary(bytes, codec),
            Err(error) => Err(malformed(error)),
        },
    }
}

/// Decodes one binary-protocol value from its bytes (temporal values keep their length byte).
pub(crate) fn decode_binary<'a>(bytes: &'a [u8], codec: &'a Codec) -> Decoded<'a> {
    let malformed = |what: &str| {
        Bad::new(
            BadKind::Malformed,
            format!("malformed {what} value ({} bytes)", bytes.len()),
        )
    };
    match codec {
        // TINYINT(1) and BIT(1): only 0 and 1 are booleans; anything else would be lost.
        Codec::Bool => match bytes {
            [0] => Ok(Val::Bool(false)),
            [1] => Ok(Val::Bool(true)),
            _ => Err(Bad::new(
                BadKind::OutOfRange,
                format!(
                    "value {} of a TINYINT(1) column is not a boolean; set `types: {{tinyint1_as_bool: false}}` to sync it as INT64",
                    bytes.first().map_or(0, |&b| i16::from(b as i8))
                ),
            )),
        },
        Codec::Int | Codec::UInt => Err(malformed("integer")),
        Codec::Float => match bytes.len() {
            4 => Ok(Val::F32(f32::from_le_bytes(
                bytes.try_into().map_err(|_| malformed("float"))?,
            ))),
            8 => Ok(Val::F64(f64::from_le_bytes(
                bytes.try_into().map_err(|_| malformed("double"))?,
            ))),
            _ => Err(malformed("float")),
        },
        Codec::Decimal => match std::str::from_utf8(bytes) {
            Ok(text) => decimal_text(text),
            Err(_) => Err(malformed("decimal")),
        },
        Codec::Text => text(bytes),
        Codec::Json => Ok(Val::Json(Cow::Borrowed(bytes))),
        Codec::Bytes => Ok(Val::Bytes(Cow::Borrowed(bytes))),
        Codec::Date | Codec::DateTime | Codec::Timestamp => decode_datetime(bytes, codec),
        Codec::Duration | Codec::Time => decode_time(bytes, codec),
        Codec::Array(_) => Err(malformed("array")),
    }
}

/// A binary DATE, DATETIME or TIMESTAMP (length byte, then year, month, day, time, micros).
fn decode_datetime<'a>(bytes: &'a [u8], codec: &Codec) -> Decoded<'a> {
    let malformed = |what: &str| {
        Bad::new(
            BadKind::Malformed,
            format!("malformed {what} value ({} bytes)", bytes.len()),
        )
    };
    let Some((&len, body)) = bytes.split_first() else {
        return Err(malformed("date"));
    };
    if len == 0 {
        return Err(Bad::new(BadKind::ZeroDate, "zero date 0000-00-00"));
    }
    if body.len() < 4 || body.len() != usize::from(len) {
        return Err(malformed("date"));
    }
    let year = u16::from_le_bytes([body[0], body[1]]);
    let (month, day) = (body[2], body[3]);
    let (hour, minute, second) = if body.len() >= 7 {
        (body[4], body[5], body[6])
    } else {
        (0, 0, 0)
    };
    let micros = if body.len() >= 11 {
        u32::from_le_bytes([body[7], body[8], body[9], body[10]])
    } else {
        0
    };
    if year == 0 || month == 0 || day == 0 {
        return Err(Bad::new(
            BadKind::ZeroDate,
            format!("zero date {year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}"),
        ));
    }
    let date = NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))
        .ok_or_else(|| {
            Bad::new(
                BadKind::Malformed,
                format!("invalid date {year:04}-{month:02}-{day:02}"),
            )
        })?;
    if matches!(codec, Codec::Date) {
        return Ok(Val::Date(date));
    }
    let time = NaiveTime::from_hms_micro_opt(
        u32::from(hour),
        u32::from(minute),
        u32::from(second),
        micros,
    )
    .ok_or_else(|| malformed("time of day"))?;
    let value = NaiveDateTime::new(date, time);
    Ok(if matches!(codec, Codec::Timestamp) {
        Val::Timestamp(value)
    } else {
        Val::DateTime(value)
    })
}

/// A binary TIME: a time of day for [`Codec::Time`], else the signed duration as text.
fn decode_time<'a>(bytes: &'a [u8], codec: &Codec) -> Decoded<'a> {
    let malformed = |what: &str| {
        Bad::new(
            BadKind::Malformed,
            format!("malformed {what} value ({} bytes)", bytes.len()),
        )
    };
    let Some((&len, body)) = bytes.split_first() else {
        return Err(malformed("time"));
    };
    if len == 0 {
        return Ok(Val::Text(Cow::Borrowed("00:00:00")));
    }
    if body.len() < 8 || body.len() != usize::from(len) {
        return Err(malformed("time"));
    }
    let negative = body[0] != 0;
    let days = u32::from_le_bytes([body[1], body[2], body[3], body[4]]);
    let hours = u64::from(days) * 24 + u64::from(body[5]);
    let micros = if body.len() >= 12 {
        u32::from_le_bytes([body[8], body[9], body[10], body[11]])
    } else {
        0
    };
    if matches!(codec, Codec::Time) {
        if negative || hours >= 24 {
            return Err(Bad::new(
                BadKind::OutOfRange,
                "TIME value outside 00:00:00..23:59:59",
            ));
        }
        return NaiveTime::from_hms_micro_opt(
            hours as u32,
            u32::from(body[6]),
            u32::from(body[7]),
            micros,
        )
        .map(Val::Time)
        .ok_or_else(|| malformed("time"));
    }
    let sign = if negative { "-" } else { "" };
    let mut out = format!("{sign}{hours:02}:{:02}:{:02}", body[6], body[7]);
    if micros != 0 {
        out.push_str(&format!(".{micros:06}"));
    }
    Ok(Val::Text(Cow::Owned(out)))
}

/// The size (`DATA_LENGTH`), engine and integer keys (with their bounds now) of `table`, for
/// chunking: a single-column unique index on a NOT NULL integer column, the primary key first.
/// Only InnoDB tables can give several readers one snapshot.
pub(super) async fn chunk_facts(
    pool: &MySqlPool,
    table: &SourceTable,
    keys_above: u64,
) -> Result<crate::schema::ChunkFacts, SourceError> {
    let context = format!("reading the size of `{}`", table.label());
    let database = table.qualifier.clone().unwrap_or_default();
    let row = sqlx::query(
        "SELECT CAST(data_length AS SIGNED), engine FROM information_schema.tables
         WHERE table_schema = ? AND table_name = ?",
    )
    .bind(&database)
    .bind(&table.name)
    .fetch_optional(pool)
    .await
    .map_err(qerr(&context))?;
    let Some(row) = row else {
        return Ok(crate::schema::ChunkFacts::default());
    };
    let bytes = get_i64(&row, 0)?.and_then(|bytes| u64::try_from(bytes).ok());
    let engine = get_text(&row, 1)?.unwrap_or_default();
    let mut facts = crate::schema::ChunkFacts {
        bytes,
        pages: None,
        keys: Vec::new(),
        snapshot_capable: engine.eq_ignore_ascii_case("InnoDB"),
    };
    if bytes.is_none_or(|bytes| bytes <= keys_above) {
        return Ok(facts);
    }
    let keys = sqlx::query(
        "SELECT s.column_name, s.index_name = 'PRIMARY'
         FROM information_schema.statistics s
         JOIN information_schema.columns c
           ON c.table_schema = s.table_schema AND c.table_name = s.table_name
          AND c.column_name = s.column_name
         WHERE s.table_schema = ? AND s.table_name = ? AND s.non_unique = 0
           AND c.is_nullable = 'NO'
           AND c.data_type IN ('tinyint', 'smallint', 'mediumint', 'int', 'bigint')
           AND (SELECT COUNT(*) FROM information_schema.statistics s2
                WHERE s2.table_schema = s.table_schema AND s2.table_name = s.table_name
                  AND s2.index_name = s.index_name) = 1
         ORDER BY s.index_name = 'PRIMARY' DESC, s.index_name",
    )
    .bind(&database)
    .bind(&table.name)
    .fetch_all(pool)
    .await
    .map_err(qerr(&context))?;
    if let Some(key) = keys.first() {
        let column = get_text(key, 0)?.unwrap_or_default();
        let primary = get_i64(key, 1)? == Some(1);
        let quoted = sql::Mysql.quote(&column)?;
        let bounds = sqlx::query(&format!(
            "SELECT CAST(MIN({quoted}) AS CHAR), CAST(MAX({quoted}) AS CHAR) FROM {}",
            sql::Mysql.table_ref(table)?
        ))
        .fetch_one(pool)
        .await
        .map_err(qerr(&format!("reading the bounds of `{column}`")))?;
        // An UNSIGNED BIGINT beyond i64 does not parse: the key is not used.
        let parse = |text: Option<String>| text.and_then(|text| text.parse::<i64>().ok());
        let (min, max) = (parse(get_text(&bounds, 0)?), parse(get_text(&bounds, 1)?));
        let empty = get_text(&bounds, 0)?.is_none();
        if empty || (min.is_some() && max.is_some()) {
            facts.keys.push(crate::schema::KeyFacts {
                column,
                min,
                max,
                primary,
            });
        }
    }
    Ok(facts)
}

/// Tables and views of `database` (default: the connection's database, else every database but
/// the system ones), sorted.
pub(super) async fn list_tables(
    pool: &MySqlPool,
    database: Option<&str>,
) -> Result<Vec<super::CatalogEntry>, SourceError> {
    let rows = sqlx::query(
        "SELECT table_schema, table_name, table_type <> 'BASE TABLE'
         FROM information_schema.tables
         WHERE table_type IN ('BASE TABLE', 'VIEW', 'SYSTEM VERSIONED')
           AND CASE WHEN COALESCE(?, DATABASE()) IS NULL
                    THEN table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')
                    ELSE table_schema = COALESCE(?, DATABASE()) END
         ORDER BY 1, 2",
    )
    .bind(database)
    .bind(database)
    .fetch_all(pool)
    .await
    .map_err(qerr("listing tables"))?;
    rows.iter()
        .map(|row| {
            Ok(super::CatalogEntry {
                qualifier: get_text(row, 0)?,
                name: get_text(row, 1)?.unwrap_or_default(),
                view: get_i64(row, 2)? == Some(1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tinyint1_booleans_are_only_0_and_1() {
        assert_eq!(decode_binary(&[0], &Codec::Bool).unwrap(), Val::Bool(false));
        assert_eq!(decode_binary(&[1], &Codec::Bool).unwrap(), Val::Bool(true));
        let two = decode_binary(&[2], &Codec::Bool).unwrap_err();
        assert_eq!(two.kind, BadKind::OutOfRange);
        assert!(two.message.contains("value 2 "), "{}", two.message);
        let minus_one = decode_binary(&[0xFF], &Codec::Bool).unwrap_err();
        assert!(
            minus_one.message.contains("value -1 "),
            "{}",
            minus_one.message
        );
    }

    #[test]
    fn temporal_values() {
        let zero = decode_binary(&[0], &Codec::DateTime).unwrap_err();
        assert_eq!(zero.kind, BadKind::ZeroDate);
        let partial = decode_binary(&[4, 0xE8, 0x07, 0, 15], &Codec::Date).unwrap_err();
        assert_eq!(partial.kind, BadKind::ZeroDate);
        let date = decode_binary(&[4, 0xE8, 0x07, 2, 29], &Codec::Date).unwrap();
        assert_eq!(
            date,
            Val::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap())
        );
        // -838:59:59 = negative, 34 days, 22 h
        let time = decode_binary(&[8, 1, 34, 0, 0, 0, 22, 59, 59], &Codec::Duration).unwrap();
        assert_eq!(time, Val::Text(Cow::Borrowed("-838:59:59")));
        let time = decode_binary(
            &[12, 0, 1, 0, 0, 0, 1, 0, 0, 0x40, 0xE2, 0x01, 0],
            &Codec::Duration,
        )
        .unwrap();
        assert_eq!(time, Val::Text(Cow::Borrowed("25:00:00.123456")));
    }
}

/// The dialect that reads GEOGRAPHY columns right on this server: MySQL 8 has spatial
/// reference systems (latitude-first SRID 4326, `ST_Transform`, `ST_IsValid`), MariaDB has not.
pub(super) async fn geography_dialect(
    pool: &MySqlPool,
) -> Result<&'static dyn sql::Dialect, SourceError> {
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(pool)
        .await
        .map_err(|error| SourceError::query("reading the server version", error))?;
    Ok(if is_mysql8(&version) {
        &sql::Mysql8
    } else {
        &sql::Mysql
    })
}

/// `8.0.36` → MySQL 8 or later; `10.11.6-MariaDB-…` and 5.x → not.
fn is_mysql8(version: &str) -> bool {
    !version.to_ascii_lowercase().contains("mariadb")
        && version
            .split('.')
            .next()
            .and_then(|major| major.parse::<u32>().ok())
            .is_some_and(|major| major >= 8)
}

#[cfg(test)]
mod geography_tests {
    use super::is_mysql8;

    #[test]
    fn mysql_8_is_told_from_mariadb() {
        assert!(is_mysql8("8.0.36"));
        assert!(is_mysql8("9.1.0-commercial"));
        assert!(!is_mysql8("5.7.44-log"));
        assert!(!is_mysql8("10.11.19-MariaDB-0+deb12u1"));
        assert!(!is_mysql8("11.4.2-MariaDB"));
    }
}
