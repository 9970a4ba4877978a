//! MySQL/MariaDB: connect, describe, decode (the SQL is [`super::sql::Mysql`]). Decoding is
//! driven by information_schema, not by wire types (MariaDB sends JSON as BLOB, UUID as BINARY,
//! SET as CHAR).

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow, MySqlSslMode};
use sqlx::{Decode, Executor, MySql, MySqlPool, Row, ValueRef};

use super::sql::Dialect;
use super::{SourceError, sql, tls_is_default};
use crate::manifest::raw::TlsMode;
use crate::manifest::resolve::SourceSpec;
use crate::schema::{
    Bad, BadKind, Codec, Decoded, SourceColumn, SourceTable, Val, decimal_text, text,
};

pub(super) async fn connect(spec: &SourceSpec) -> Result<MySqlPool, sqlx::Error> {
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
    options = options.charset("utf8mb4").timezone(Some("+00:00".into()));
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
    .map_err(|_| sqlx::Error::PoolTimedOut)??;
    let _ = sqlx::Connection::close(probe).await;
    pool.connect_with(options).await
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

pub(super) async fn describe(
    pool: &MySqlPool,
    qualifier: Option<&str>,
    name: &str,
) -> Result<SourceTable, SourceError> {
    let database: String = match qualifier {
        Some(database) => database.to_string(),
        None => {
            let row = sqlx::query("SELECT DATABASE()")
                .fetch_one(pool)
                .await
                .map_err(qerr("reading the current database"))?;
            get_text(&row, 0)?.ok_or_else(|| {
                SourceError::Invalid(format!(
                    "table `{name}` has no database qualifier and the connection selects none: write it `database.table` or set `database`"
                ))
            })?
        }
    };
    let label = format!("{database}.{name}");
    let context = format!("describing `{label}`");
    let table = sqlx::query(
        "SELECT CAST(table_rows AS SIGNED), table_comment, table_type
         FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
    )
    .bind(&database)
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(qerr(&context))?;
    let Some(table) = table else {
        return Err(SourceError::TableNotFound {
            table: label,
            engine: "MySQL",
            hint: " (check the database and the table name)".into(),
        });
    };
    let estimated_rows = get_i64(&table, 0)?.and_then(|rows| u64::try_from(rows).ok());
    let comment = get_text(&table, 1)?.filter(|comment| !comment.is_empty());

    let rows = sqlx::query(
        "SELECT column_name, data_type, column_type, is_nullable,
                CAST(numeric_precision AS SIGNED), CAST(numeric_scale AS SIGNED),
                CAST(character_maximum_length AS SIGNED), column_comment, CAST(ordinal_position AS SIGNED)
         FROM information_schema.columns WHERE table_schema = ? AND table_name = ?
         ORDER BY ordinal_position",
    )
    .bind(&database)
    .bind(name)
    .fetch_all(pool)
    .await
    .map_err(qerr(&context))?;
    let key_rows = sqlx::query(
        "SELECT column_name FROM information_schema.key_column_usage
         WHERE table_schema = ? AND table_name = ? AND constraint_name = 'PRIMARY'
         ORDER BY ordinal_position",
    )
    .bind(&database)
    .bind(name)
    .fetch_all(pool)
    .await
    .map_err(qerr(&context))?;
    let mut primary_key = Vec::new();
    for row in &key_rows {
        primary_key.extend(get_text(row, 0)?);
    }
    // MariaDB stores JSON as LONGTEXT with a `json_valid(`col`)` CHECK. MySQL 8's
    // check_constraints has no table_name column: the query fails there, and JSON is native.
    let checks = sqlx::query(
        "SELECT check_clause FROM information_schema.check_constraints WHERE constraint_schema = ? AND table_name = ?",
    )
    .bind(&database)
    .bind(name)
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let mut json_checks = Vec::new();
    for row in &checks {
        if let Some(clause) = get_text(row, 0)? {
            json_checks.push(clause.to_ascii_lowercase().replace(' ', ""));
        }
    }

    let columns = rows
        .iter()
        .map(|row| column(row, &primary_key, &json_checks))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SourceTable {
        qualifier: Some(database),
        name: name.to_string(),
        columns,
        primary_key,
        estimated_rows,
        comment,
        query: None,
    })
}

/// One row of `information_schema.columns` (in the order `describe` selects them).
fn column(
    row: &MySqlRow,
    primary_key: &[String],
    json_checks: &[String],
) -> Result<SourceColumn, SourceError> {
    let name = get_text(row, 0)?.unwrap_or_default();
    let data_type = get_text(row, 1)?.unwrap_or_default().to_ascii_lowercase();
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
        ordinal: to_u32(get_i64(row, 8)?).unwrap_or(0),
        column_type: get_text(row, 2)?.unwrap_or_default(),
        nullable: get_text(row, 3)?.as_deref() == Some("YES"),
        precision: if numeric {
            to_u32(get_i64(row, 4)?)
        } else {
            None
        },
        scale: if numeric && data_type != "bit" {
            to_u32(get_i64(row, 5)?)
        } else {
            None
        },
        max_length: get_i64(row, 6)?.and_then(|length| u64::try_from(length).ok()),
        comment: get_text(row, 7)?.filter(|comment| !comment.is_empty()),
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
