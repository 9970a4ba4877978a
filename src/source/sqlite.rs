//! SQLite: declared types give the BigQuery type; each value is read by its storage class
//! (SQLite is dynamically typed) and converted, or reported as a bad value.

use std::borrow::Cow;
use std::str::FromStr;

use chrono::{NaiveDate, NaiveDateTime};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteRow};
use sqlx::{Decode, Row, Sqlite, SqlitePool, TypeInfo, ValueRef};

use super::SourceError;
use crate::manifest::resolve::SourceSpec;
use crate::schema::{
    Bad, BadKind, Codec, Decoded, SourceColumn, SourceTable, Val, decimal_text, text,
};

pub(super) async fn connect(spec: &SourceSpec) -> Result<SqlitePool, sqlx::Error> {
    let options = match (&spec.connection.url, &spec.connection.database) {
        (Some(url), _) => SqliteConnectOptions::from_str(url.expose())?,
        (None, Some(path)) => SqliteConnectOptions::new().filename(path),
        (None, None) => {
            return Err(sqlx::Error::Configuration(
                "a SQLite source needs `url` or `database` (the file path)".into(),
            ));
        }
    };
    let options = options.read_only(true).create_if_missing(false);
    let mut pool = SqlitePoolOptions::new()
        .max_connections(spec.max_connections.max(1))
        .min_connections(spec.min_connections)
        .max_lifetime(spec.max_lifetime);
    if let Some(timeout) = spec.timeouts.connect {
        pool = pool.acquire_timeout(timeout);
    }
    pool.connect_with(options).await
}

fn qerr(context: &str) -> impl Fn(sqlx::Error) -> SourceError + '_ {
    move |error| SourceError::query(context, error)
}

/// The tables `names` of the file (or the attached database `qualifier`), in the order asked.
/// SQLite's catalog is the local file: its pragmas are read table by table (no round trip to
/// save); a query error fails them all, like a server's batched catalog query.
pub(super) async fn describe_many(
    pool: &SqlitePool,
    qualifier: Option<&str>,
    names: &[String],
) -> Result<Vec<Result<SourceTable, SourceError>>, SourceError> {
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        match describe(pool, qualifier, name).await {
            Ok(table) => tables.push(Ok(table)),
            Err(error @ SourceError::TableNotFound { .. }) => tables.push(Err(error)),
            Err(error) => return Err(error),
        }
    }
    Ok(tables)
}

async fn describe(
    pool: &SqlitePool,
    qualifier: Option<&str>,
    name: &str,
) -> Result<SourceTable, SourceError> {
    let schema = qualifier.unwrap_or("main");
    let context = format!("describing `{name}`");
    super::catalog_query("SQLite", "columns", 1);
    let rows = sqlx::query(
        "SELECT name, type, \"notnull\", pk, cid FROM pragma_table_info(?1, ?2) ORDER BY cid",
    )
    .bind(name)
    .bind(schema)
    .fetch_all(pool)
    .await
    .map_err(qerr(&context))?;
    if rows.is_empty() {
        return Err(SourceError::TableNotFound {
            table: name.to_string(),
            engine: "SQLite",
            hint: String::new(),
        });
    }
    let mut columns = Vec::with_capacity(rows.len());
    let mut keys: Vec<(i64, String)> = Vec::new();
    for row in &rows {
        let name: String = row.try_get(0).map_err(qerr(&context))?;
        let declared: String = row.try_get(1).map_err(qerr(&context))?;
        let not_null: i64 = row.try_get(2).map_err(qerr(&context))?;
        let pk: i64 = row.try_get(3).map_err(qerr(&context))?;
        let cid: i64 = row.try_get(4).map_err(qerr(&context))?;
        if pk > 0 {
            keys.push((pk, name.clone()));
        }
        let base = declared
            .split('(')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let params = declared
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(inner, _)| {
                inner
                    .split(',')
                    .map(|p| p.trim().parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        columns.push(SourceColumn {
            name,
            ordinal: u32::try_from(cid + 1).unwrap_or(0),
            data_type: base,
            column_type: declared,
            // A rowid alias (INTEGER PRIMARY KEY) is never NULL.
            nullable: not_null == 0 && pk == 0,
            precision: params.first().copied().flatten(),
            scale: params.get(1).copied().flatten(),
            max_length: None,
            primary_key: pk > 0,
            comment: None,
            is_json: false,
        });
    }
    keys.sort();
    Ok(SourceTable {
        qualifier: qualifier.map(str::to_string),
        name: name.to_string(),
        columns,
        primary_key: keys.into_iter().map(|(_, name)| name).collect(),
        unique_keys: unique_keys(pool, schema, name, &context).await?,
        estimated_rows: None,
        comment: None,
        query: None,
    })
}

/// The unique indexes of `name` but its primary key, over plain columns and not partial (an
/// expression column has no name), each in key order, sorted by index name.
async fn unique_keys(
    pool: &SqlitePool,
    schema: &str,
    name: &str,
    context: &str,
) -> Result<Vec<Vec<String>>, SourceError> {
    super::catalog_query("SQLite", "keys", 1);
    let rows = sqlx::query(
        "SELECT l.name, i.name FROM pragma_index_list(?1, ?2) AS l
         JOIN pragma_index_info(l.name, ?2) AS i
         WHERE l.\"unique\" = 1 AND l.origin <> 'pk' AND l.partial = 0
         ORDER BY l.name, i.seqno",
    )
    .bind(name)
    .bind(schema)
    .fetch_all(pool)
    .await
    .map_err(qerr(context))?;
    let mut keys: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for row in &rows {
        let index: String = row.try_get(0).map_err(qerr(context))?;
        let column: Option<String> = row.try_get(1).map_err(qerr(context))?;
        match keys.last_mut() {
            Some((known, columns)) if *known == index => match (columns.as_mut(), column) {
                (Some(columns), Some(column)) => columns.push(column),
                _ => *columns = None,
            },
            _ => keys.push((index, column.map(|column| vec![column]))),
        }
    }
    Ok(keys
        .into_iter()
        .filter_map(|(_, columns)| columns)
        .collect())
}

fn parse_datetime(text: &str) -> Option<NaiveDateTime> {
    const FORMATS: &[&str] = &[
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ];
    let text = text.trim_end_matches('Z');
    FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
}

pub(super) fn decode<'a>(row: &'a SqliteRow, index: usize, codec: &'a Codec) -> Decoded<'a> {
    let raw = match row.try_get_raw(index) {
        Ok(raw) => raw,
        Err(error) => return Err(Bad::new(BadKind::Malformed, error.to_string())),
    };
    if raw.is_null() {
        return Ok(Val::Null);
    }
    // Storage class, without allocating (this runs for every value).
    let storage = match raw.type_info().name() {
        "INTEGER" => "INTEGER",
        "REAL" => "REAL",
        "BLOB" => "BLOB",
        _ => "TEXT",
    };
    let malformed =
        |error: sqlx::error::BoxDynError| Bad::new(BadKind::Malformed, error.to_string());
    let mismatch = |what: &str| {
        Bad::new(
            BadKind::Malformed,
            format!("{what} value in a {codec:?} column"),
        )
    };
    match storage {
        "INTEGER" => {
            let value = <i64 as Decode<Sqlite>>::decode(raw).map_err(malformed)?;
            match codec {
                Codec::Bool => Ok(Val::Bool(value != 0)),
                Codec::Float => Ok(Val::F64(value as f64)),
                Codec::Date | Codec::DateTime | Codec::Json | Codec::Bytes => {
                    Err(mismatch("an integer"))
                }
                _ => Ok(Val::Int(value)),
            }
        }
        "REAL" => {
            let value = <f64 as Decode<Sqlite>>::decode(raw).map_err(malformed)?;
            match codec {
                Codec::Date | Codec::DateTime | Codec::Json | Codec::Bytes | Codec::Bool => {
                    Err(mismatch("a real"))
                }
                Codec::Text => {
                    let mut buf = Vec::new();
                    match serde_json::to_writer(&mut buf, &value) {
                        Ok(()) if value.is_finite() => Ok(Val::Text(Cow::Owned(
                            String::from_utf8_lossy(&buf).into_owned(),
                        ))),
                        _ => Err(Bad::new(
                            BadKind::NonFinite,
                            format!("non-finite real {value}"),
                        )),
                    }
                }
                _ => Ok(Val::F64(value)),
            }
        }
        "BLOB" => {
            let bytes = <&[u8] as Decode<Sqlite>>::decode(raw).map_err(malformed)?;
            match codec {
                Codec::Bytes => Ok(Val::Bytes(Cow::Borrowed(bytes))),
                Codec::Text => text(bytes),
                Codec::Json => Ok(Val::Json(Cow::Borrowed(bytes))),
                _ => Err(mismatch("a blob")),
            }
        }
        _ => {
            let bytes = <&[u8] as Decode<Sqlite>>::decode(raw).map_err(malformed)?;
            if matches!(codec, Codec::Bytes) {
                return Ok(Val::Bytes(Cow::Borrowed(bytes)));
            }
            if matches!(codec, Codec::Json) {
                return Ok(Val::Json(Cow::Borrowed(bytes)));
            }
            let value = match text(bytes)? {
                Val::Text(value) => value,
                _ => return Err(mismatch("text")),
            };
            match parse_text(value.trim(), codec) {
                Some(result) => result,
                None => Ok(Val::Text(value)),
            }
        }
    }
}

/// Text stored in a column whose codec is not text, parsed as the codec says; `None` keeps it
/// as text.
fn parse_text(trimmed: &str, codec: &Codec) -> Option<Decoded<'static>> {
    let invalid = |what: &str| {
        Bad::new(
            BadKind::Malformed,
            format!("text `{trimmed}` is not {what}"),
        )
    };
    match codec {
        Codec::Int => Some(
            trimmed
                .parse::<i64>()
                .map(Val::Int)
                .map_err(|_| invalid("an integer")),
        ),
        Codec::Float => Some(
            trimmed
                .parse::<f64>()
                .map(Val::F64)
                .map_err(|_| invalid("a number")),
        ),
        Codec::Decimal => Some(match decimal_text(trimmed) {
            Ok(Val::Decimal(text)) => Ok(Val::Decimal(Cow::Owned(text.into_owned()))),
            Ok(_) => Err(invalid("a decimal")),
            Err(bad) => Err(Bad::new(bad.kind, bad.message)),
        }),
        Codec::Bool => Some(match trimmed.to_ascii_lowercase().as_str() {
            "1" | "true" | "t" | "yes" => Ok(Val::Bool(true)),
            "0" | "false" | "f" | "no" => Ok(Val::Bool(false)),
            _ => Err(invalid("a boolean")),
        }),
        Codec::Date => Some(
            NaiveDate::parse_from_str(trimmed, "%Y-%m-%d")
                .map(Val::Date)
                .map_err(|_| invalid("a date")),
        ),
        Codec::DateTime => Some(
            parse_datetime(trimmed)
                .or_else(|| {
                    NaiveDate::parse_from_str(trimmed, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                })
                .map(Val::DateTime)
                .ok_or_else(|| invalid("a date-time")),
        ),
        _ => None,
    }
}

/// Tables and views of the `main` database (or the attached `schema`), sorted.
pub(super) async fn list_tables(
    pool: &SqlitePool,
    schema: Option<&str>,
) -> Result<Vec<super::CatalogEntry>, SourceError> {
    let rows = sqlx::query(
        "SELECT name, type = 'view' FROM pragma_table_list
         WHERE schema = ?1 AND type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
         ORDER BY name",
    )
    .bind(schema.unwrap_or("main"))
    .fetch_all(pool)
    .await
    .map_err(qerr("listing tables"))?;
    rows.iter()
        .map(|row| {
            Ok(super::CatalogEntry {
                qualifier: schema.map(str::to_string),
                name: row.try_get(0).map_err(qerr("listing tables"))?,
                view: row.try_get(1).map_err(qerr("listing tables"))?,
            })
        })
        .collect()
}
