//! PostgreSQL: connect, describe, decode (the SQL is [`super::sql::Postgres`]). Values are read
//! in the binary protocol and parsed here from the raw bytes (no per-value allocation for
//! scalars).

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{NaiveDate, NaiveTime};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow, PgSslMode};
use sqlx::{Executor, PgPool, Row, ValueRef};

use super::{ConnectFailure, SourceError, open_tunnel, tls_is_default};
use crate::manifest::raw::TlsMode;
use crate::manifest::resolve::SourceSpec;
use crate::schema::{
    Bad, BadKind, Codec, Decoded, SourceColumn, SourceTable, Val, decimal_text, text,
};

pub(super) async fn connect(spec: &SourceSpec) -> Result<PgPool, ConnectFailure> {
    let connection = &spec.connection;
    let mut options = match &connection.url {
        Some(url) => PgConnectOptions::from_str(url.expose())?,
        None => {
            let mut options = PgConnectOptions::new_without_pgpass().host(&connection.host);
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
            TlsMode::Disable => PgSslMode::Disable,
            TlsMode::Prefer => PgSslMode::Prefer,
            TlsMode::Require => PgSslMode::Require,
            TlsMode::VerifyCa => PgSslMode::VerifyCa,
            TlsMode::VerifyFull => PgSslMode::VerifyFull,
        });
    }
    if let Some(ca) = &spec.tls.ca {
        options = options.ssl_root_cert(ca);
    }
    if let Some(cert) = &spec.tls.cert {
        options = options.ssl_client_cert(cert);
    }
    if let Some(key) = &spec.tls.key {
        options = options.ssl_client_key(key);
    }
    options = options.application_name("datasync");
    // Through SSH only the socket changes: the host stays the TLS server name.
    let socket_name = format!(".s.PGSQL.{}", options.get_port());
    let tunnel = open_tunnel(
        spec,
        options.get_host(),
        options.get_port(),
        options.get_socket().map(std::path::PathBuf::as_path),
        &socket_name,
    )
    .await?;
    if let Some(tunnel) = &tunnel {
        options = options.socket(tunnel.dir());
    }
    let hook_tunnel = tunnel.clone();
    let statement_ms = spec
        .timeouts
        .statement
        .map_or(0, |timeout| timeout.as_millis());
    let setup: Arc<Vec<String>> = Arc::new(vec![
        "SET TimeZone = 'UTC'".into(),
        format!("SET statement_timeout = {statement_ms}"),
        "SET extra_float_digits = 3".into(),
    ]);
    let mut pool = PgPoolOptions::new()
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
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
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

/// The tables `names` of `qualifier` (default: the connection's current schema), in the order
/// asked, from one set of catalog queries for all of them (tables, columns, keys); a table the
/// catalog lacks is its own [`SourceError::TableNotFound`]. An error of a query fails them all.
pub(super) async fn describe_many(
    pool: &PgPool,
    qualifier: Option<&str>,
    names: &[String],
) -> Result<Vec<Result<SourceTable, SourceError>>, SourceError> {
    let schema: String = match qualifier {
        Some(schema) => schema.to_string(),
        None => {
            super::catalog_query("PostgreSQL", "current schema", 0);
            sqlx::query_scalar("SELECT current_schema()::text")
                .fetch_one(pool)
                .await
                .map_err(qerr("reading the current schema"))?
        }
    };
    let context = match names {
        [name] => format!("describing `{schema}.{name}`"),
        _ => format!("describing {} tables of schema `{schema}`", names.len()),
    };
    super::catalog_query("PostgreSQL", "tables", names.len());
    let tables = sqlx::query(
        "SELECT c.oid::int8, c.relname::text, c.reltuples::float8, obj_description(c.oid, 'pg_class')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = ANY($2::text[])
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
    )
    .bind(&schema)
    .bind(names)
    .fetch_all(pool)
    .await
    .map_err(qerr(&context))?;
    let mut found: HashMap<String, Found> = HashMap::with_capacity(tables.len());
    for row in &tables {
        let reltuples: f64 = row.try_get(2).map_err(qerr(&context))?;
        found.insert(
            row.try_get(1).map_err(qerr(&context))?,
            Found {
                oid: row.try_get(0).map_err(qerr(&context))?,
                // reltuples is -1 for a never-analysed table (PostgreSQL 14+).
                estimated_rows: (reltuples >= 0.0).then_some(reltuples as u64),
                comment: row.try_get(3).map_err(qerr(&context))?,
                columns: Vec::new(),
                keys: Keys::default(),
            },
        );
    }
    let oids: Vec<i64> = found.values().map(|table| table.oid).collect();
    let by_oid: HashMap<i64, String> = found
        .iter()
        .map(|(name, table)| (table.oid, name.clone()))
        .collect();
    if !oids.is_empty() {
        for (oid, keys) in read_keys(pool, &oids, &context).await? {
            if let Some(table) = by_oid.get(&oid).and_then(|name| found.get_mut(name)) {
                table.keys = keys;
            }
        }
        for (oid, column) in read_columns(pool, &schema, &oids, &context).await? {
            if let Some(table) = by_oid.get(&oid).and_then(|name| found.get_mut(name)) {
                table.columns.push(column);
            }
        }
    }
    Ok(names
        .iter()
        .map(|name| match found.get(name) {
            Some(table) => Ok(table.source_table(&schema, name)),
            None => Err(SourceError::TableNotFound {
                table: format!("{schema}.{name}"),
                engine: "PostgreSQL",
                hint: " (names are case-sensitive; check the schema and the table name)".into(),
            }),
        })
        .collect())
}

/// A table the catalog has, while its columns and keys are read.
struct Found {
    oid: i64,
    estimated_rows: Option<u64>,
    comment: Option<String>,
    columns: Vec<SourceColumn>,
    keys: Keys,
}

/// A table's primary key and its other unique keys.
#[derive(Default)]
struct Keys {
    primary: Vec<String>,
    unique: Vec<Vec<String>>,
}

impl Found {
    fn source_table(&self, schema: &str, name: &str) -> SourceTable {
        let mut columns = self.columns.clone();
        for column in &mut columns {
            column.primary_key = self.keys.primary.contains(&column.name);
        }
        SourceTable {
            query: None,
            qualifier: Some(schema.to_string()),
            name: name.to_string(),
            columns,
            primary_key: self.keys.primary.clone(),
            unique_keys: self.keys.unique.clone(),
            estimated_rows: self.estimated_rows,
            comment: self.comment.clone(),
        }
    }
}

/// The primary key and the unique keys (over plain columns, not partial) of every table in
/// `oids`, in key order; unique keys sorted by index name.
async fn read_keys(
    pool: &PgPool,
    oids: &[i64],
    context: &str,
) -> Result<HashMap<i64, Keys>, SourceError> {
    super::catalog_query("PostgreSQL", "keys", oids.len());
    let rows = sqlx::query(
        "SELECT i.indrelid::int8, i.indisprimary, ic.relname::text, a.attname::text
         FROM pg_index i
         JOIN pg_class ic ON ic.oid = i.indexrelid
         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = ANY($1::int8[]::oid[])
           AND k.position <= i.indnkeyatts
           AND (i.indisprimary OR (i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL))
         ORDER BY i.indrelid, NOT i.indisprimary, ic.relname, k.position",
    )
    .bind(oids)
    .fetch_all(pool)
    .await
    .map_err(qerr(context))?;
    let mut keys: HashMap<i64, Keys> = HashMap::new();
    let mut last_index: Option<(i64, String)> = None;
    for row in &rows {
        let oid: i64 = row.try_get(0).map_err(qerr(context))?;
        let primary: bool = row.try_get(1).map_err(qerr(context))?;
        let index: String = row.try_get(2).map_err(qerr(context))?;
        let column: String = row.try_get(3).map_err(qerr(context))?;
        let table = keys.entry(oid).or_default();
        if primary {
            table.primary.push(column);
            continue;
        }
        let same = last_index
            .as_ref()
            .is_some_and(|(last_oid, last)| *last_oid == oid && *last == index);
        match table.unique.last_mut() {
            Some(key) if same => key.push(column),
            _ => table.unique.push(vec![column]),
        }
        last_index = Some((oid, index));
    }
    // Key columns only (`indnkeyatts`: an INCLUDE column is carried, not unique). An index
    // that repeats the primary key, or another index's columns, adds nothing.
    for table in keys.values_mut() {
        let mut seen: Vec<Vec<String>> = vec![table.primary.clone()];
        table.unique.retain(|key| {
            let new = !seen.contains(key);
            if new {
                seen.push(key.clone());
            }
            new
        });
    }
    Ok(keys)
}

/// The columns of every table in `oids` (all in `schema`), in table and column order.
async fn read_columns(
    pool: &PgPool,
    schema: &str,
    oids: &[i64],
    context: &str,
) -> Result<Vec<(i64, SourceColumn)>, SourceError> {
    super::catalog_query("PostgreSQL", "columns", oids.len());
    let rows = sqlx::query(
        "SELECT a.attrelid::int8,
                a.attname::text,
                a.attnum::int4,
                CASE WHEN t.typcategory = 'A' THEN t.typname::text
                     WHEN ic.data_type = 'USER-DEFINED' THEN ic.udt_name::text
                     ELSE COALESCE(ic.data_type::text, format_type(a.atttypid, NULL)) END,
                format_type(a.atttypid, a.atttypmod),
                NOT a.attnotnull,
                ic.numeric_precision::int8,
                ic.numeric_scale::int8,
                ic.character_maximum_length::int8,
                col_description(a.attrelid, a.attnum)
         FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_type t ON t.oid = a.atttypid
         LEFT JOIN information_schema.columns ic
                ON ic.table_schema = $2 AND ic.table_name = c.relname AND ic.column_name = a.attname
         WHERE a.attrelid = ANY($1::int8[]::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attrelid, a.attnum",
    )
    .bind(oids)
    .bind(schema)
    .fetch_all(pool)
    .await
    .map_err(qerr(context))?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let oid: i64 = row.try_get(0).map_err(qerr(context))?;
        columns.push((oid, column(row, context)?));
    }
    Ok(columns)
}

/// One row of [`read_columns`] (from its second column on); `primary_key` is set later.
fn column(row: &PgRow, context: &str) -> Result<SourceColumn, SourceError> {
    let get_u32 = |index: usize| -> Result<Option<u32>, SourceError> {
        let value: Option<i64> = row.try_get(index).map_err(qerr(context))?;
        Ok(value.and_then(|value| u32::try_from(value).ok()))
    };
    let name: String = row.try_get(1).map_err(qerr(context))?;
    let ordinal: i32 = row.try_get(2).map_err(qerr(context))?;
    let data_type: String = row.try_get(3).map_err(qerr(context))?;
    let data_type = data_type.to_lowercase();
    let numeric = data_type == "numeric";
    let max_length: Option<i64> = row.try_get(8).map_err(qerr(context))?;
    Ok(SourceColumn {
        name,
        ordinal: u32::try_from(ordinal).unwrap_or(0),
        column_type: row.try_get(4).map_err(qerr(context))?,
        nullable: row.try_get(5).map_err(qerr(context))?,
        precision: if numeric { get_u32(6)? } else { None },
        scale: if numeric { get_u32(7)? } else { None },
        max_length: max_length.and_then(|length| u64::try_from(length).ok()),
        primary_key: false,
        comment: row.try_get(9).map_err(qerr(context))?,
        is_json: false,
        data_type,
    })
}

pub(super) fn decode<'a>(row: &'a PgRow, index: usize, codec: &'a Codec) -> Decoded<'a> {
    let raw = match row.try_get_raw(index) {
        Ok(raw) => raw,
        Err(error) => return Err(Bad::new(BadKind::Malformed, error.to_string())),
    };
    if raw.is_null() {
        return Ok(Val::Null);
    }
    match raw.as_bytes() {
        Ok(bytes) => decode_binary(bytes, codec),
        Err(error) => Err(Bad::new(BadKind::Malformed, error.to_string())),
    }
}

fn malformed(what: &str, bytes: &[u8]) -> Bad<'static> {
    Bad::new(
        BadKind::Malformed,
        format!("malformed {what} value ({} bytes)", bytes.len()),
    )
}

/// A binary `int2`, `int4` or `int8` (by its length).
pub(crate) fn be_i64(bytes: &[u8]) -> Option<i64> {
    Some(match bytes.len() {
        2 => i64::from(i16::from_be_bytes(bytes.try_into().ok()?)),
        4 => i64::from(i32::from_be_bytes(bytes.try_into().ok()?)),
        8 => i64::from_be_bytes(bytes.try_into().ok()?),
        _ => return None,
    })
}

const PG_EPOCH_DAYS_FROM_CE: i32 = 730_120; // 2000-01-01
/// 2000-01-01 (PostgreSQL's epoch for binary dates) in days since 1970-01-01 (day 719,163
/// of the common era).
pub(crate) const PG_EPOCH_UNIX_DAYS: i64 = PG_EPOCH_DAYS_FROM_CE as i64 - 719_163;
/// 2000-01-01T00:00:00Z in microseconds since the Unix epoch.
pub(crate) const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// The header of a binary `numeric` ("numeric_send" in PostgreSQL's `numeric.c`): digit
/// count, weight of the first base-10000 digit, sign, display scale; then the digits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Numeric<'a> {
    /// Weight of the first digit: its value is `digit × 10000^weight`.
    pub weight: i64,
    /// `0x0000` positive, `0x4000` negative, `0xC000` NaN, `0xD000`/`0xF000` ±Infinity.
    pub sign: u16,
    /// Digits shown after the point.
    pub dscale: usize,
    /// The base-10000 digits, 2 bytes each, big-endian.
    pub digits: &'a [u8],
}

impl<'a> Numeric<'a> {
    /// The header of `bytes`, `None` if they are too short for it or for its digits.
    pub(crate) fn parse(bytes: &'a [u8]) -> Option<Self> {
        let read_u16 = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
        };
        let ndigits = usize::from(read_u16(0)?);
        Some(Self {
            weight: i64::from(read_u16(2)? as i16),
            sign: read_u16(4)?,
            dscale: usize::from(read_u16(6)?),
            digits: bytes.get(8..8 + ndigits * 2)?,
        })
    }

    /// Digit `index` (0 past the last).
    pub(crate) fn digit(&self, index: usize) -> u16 {
        self.digits
            .get(index * 2..index * 2 + 2)
            .map_or(0, |pair| u16::from_be_bytes([pair[0], pair[1]]))
    }

    /// How many digits there are.
    pub(crate) fn len(&self) -> usize {
        self.digits.len() / 2
    }
}

/// Decodes one binary value.
pub(crate) fn decode_binary<'a>(bytes: &'a [u8], codec: &'a Codec) -> Decoded<'a> {
    match codec {
        Codec::Bool => match bytes {
            [b] => Ok(Val::Bool(*b != 0)),
            _ => Err(malformed("bool", bytes)),
        },
        Codec::Int | Codec::UInt => be_i64(bytes)
            .map(Val::Int)
            .ok_or_else(|| malformed("integer", bytes)),
        Codec::Float => match bytes.len() {
            4 => Ok(Val::F32(f32::from_be_bytes(
                bytes.try_into().map_err(|_| malformed("float4", bytes))?,
            ))),
            8 => Ok(Val::F64(f64::from_be_bytes(
                bytes.try_into().map_err(|_| malformed("float8", bytes))?,
            ))),
            _ => Err(malformed("float", bytes)),
        },
        Codec::Decimal => numeric_text(bytes).map(|text| Val::Decimal(Cow::Owned(text))),
        // Text, and whatever the SELECT read as `::text`.
        Codec::Text | Codec::Duration => text(bytes),
        Codec::Json => Ok(Val::Json(Cow::Borrowed(bytes))),
        Codec::Bytes => Ok(Val::Bytes(Cow::Borrowed(bytes))),
        Codec::Date => {
            let days = match be_i64(bytes) {
                Some(days) if bytes.len() == 4 => days,
                _ => return Err(malformed("date", bytes)),
            };
            if days == i64::from(i32::MAX) || days == i64::from(i32::MIN) {
                let sign = if days > 0 { "" } else { "-" };
                return Err(Bad::new(BadKind::NonFinite, format!("date {sign}infinity")));
            }
            i32::try_from(days)
                .ok()
                .and_then(|days| days.checked_add(PG_EPOCH_DAYS_FROM_CE))
                .and_then(NaiveDate::from_num_days_from_ce_opt)
                .map(Val::Date)
                .ok_or_else(|| Bad::new(BadKind::OutOfRange, "date out of range"))
        }
        Codec::DateTime | Codec::Timestamp => {
            let micros = match be_i64(bytes) {
                Some(micros) if bytes.len() == 8 => micros,
                _ => return Err(malformed("timestamp", bytes)),
            };
            if micros == i64::MAX || micros == i64::MIN {
                let sign = if micros > 0 { "" } else { "-" };
                return Err(Bad::new(
                    BadKind::NonFinite,
                    format!("timestamp {sign}infinity"),
                ));
            }
            let value = micros
                .checked_add(PG_EPOCH_UNIX_MICROS)
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map(|moment| moment.naive_utc())
                .ok_or_else(|| Bad::new(BadKind::OutOfRange, "timestamp out of range"))?;
            Ok(if matches!(codec, Codec::Timestamp) {
                Val::Timestamp(value)
            } else {
                Val::DateTime(value)
            })
        }
        Codec::Time => {
            let micros = match be_i64(bytes) {
                Some(micros) if bytes.len() == 8 => micros,
                _ => return Err(malformed("time", bytes)),
            };
            let seconds = u32::try_from(micros.div_euclid(1_000_000)).unwrap_or(u32::MAX);
            let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0);
            NaiveTime::from_num_seconds_from_midnight_opt(seconds, nanos)
                .map(Val::Time)
                .ok_or_else(|| {
                    Bad::new(
                        BadKind::OutOfRange,
                        "time 24:00:00 is outside BigQuery TIME",
                    )
                })
        }
        Codec::Array(element) => decode_array(bytes, element),
    }
}

fn decode_array<'a>(bytes: &'a [u8], element: &'a Codec) -> Decoded<'a> {
    let read_i32 = |at: usize| -> Option<i32> {
        Some(i32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let bad = || malformed("array", bytes);
    let dims = read_i32(0).ok_or_else(bad)?;
    if dims == 0 {
        return Ok(Val::Array(Vec::new()));
    }
    if dims != 1 {
        return Err(Bad::new(
            BadKind::OutOfRange,
            format!("{dims}-dimensional array (BigQuery arrays have one dimension)"),
        ));
    }
    let count = read_i32(12).ok_or_else(bad)?;
    let mut at = 20;
    let mut items = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(4096));
    for _ in 0..count {
        let len = read_i32(at).ok_or_else(bad)?;
        at += 4;
        if len < 0 {
            items.push(Val::Null);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| bad())?;
        let item = bytes.get(at..at + len).ok_or_else(bad)?;
        at += len;
        items.push(decode_binary(item, element)?);
    }
    Ok(Val::Array(items))
}

/// Appends a base-10000 digit group, zero-padded to 4 digits when `pad`.
fn push_group(out: &mut String, digit: u16, pad: bool) {
    let digits = [digit / 1000, digit / 100 % 10, digit / 10 % 10, digit % 10];
    let skip = if pad {
        0
    } else {
        digits.iter().take(3).take_while(|&&d| d == 0).count()
    };
    for d in &digits[skip..] {
        out.push(char::from(b'0' + (*d % 10) as u8));
    }
}

/// PostgreSQL binary numeric → exact decimal text with its display scale.
pub(crate) fn numeric_text(bytes: &[u8]) -> Result<String, Bad<'static>> {
    let bad = || malformed("numeric", bytes);
    let numeric = Numeric::parse(bytes).ok_or_else(bad)?;
    let (weight, sign, dscale) = (numeric.weight, numeric.sign, numeric.dscale);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err(Bad::new(BadKind::NonFinite, "numeric NaN")),
        0xD000 => return Err(Bad::new(BadKind::NonFinite, "numeric Infinity")),
        0xF000 => return Err(Bad::new(BadKind::NonFinite, "numeric -Infinity")),
        _ => return Err(bad()),
    }
    let digits: Vec<u16> = (0..numeric.len())
        .map(|index| numeric.digit(index))
        .collect();
    if digits.iter().any(|&digit| digit > 9999) {
        return Err(bad());
    }
    let mut out = String::with_capacity(digits.len() * 4 + dscale + 3);
    if sign == 0x4000 {
        out.push('-');
    }
    // Integer part: groups 0..=weight.
    if weight < 0 {
        out.push('0');
    } else {
        for group in 0..=weight {
            let digit = usize::try_from(group)
                .ok()
                .and_then(|g| digits.get(g))
                .copied()
                .unwrap_or(0);
            if group == 0 {
                push_group(&mut out, digit, false);
            } else {
                push_group(&mut out, digit, true);
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut fraction = String::with_capacity(dscale + 4);
        let mut group = weight + 1;
        while fraction.len() < dscale {
            let digit = if group < 0 {
                0
            } else {
                usize::try_from(group)
                    .ok()
                    .and_then(|g| digits.get(g))
                    .copied()
                    .unwrap_or(0)
            };
            push_group(&mut fraction, digit, true);
            group += 1;
        }
        fraction.truncate(dscale);
        out.push_str(&fraction);
    }
    if out == "-0" || (out.starts_with("-0.") && out[3..].bytes().all(|b| b == b'0')) {
        out.remove(0);
    }
    match decimal_text(&out) {
        Ok(_) => Ok(out),
        Err(bad) => Err(Bad::new(bad.kind, bad.message)),
    }
}

/// The size, pages and integer keys (with their bounds now) of `table`, for chunking: a
/// single-column, non-partial, NOT NULL unique index on an `int2`/`int4`/`int8` column (the
/// primary key first). Pages only where ctid ranges are TID range scans (PostgreSQL 14+) of
/// a plain table or materialized view.
pub(super) async fn chunk_facts(
    pool: &PgPool,
    table: &SourceTable,
    keys_above: u64,
) -> Result<crate::schema::ChunkFacts, SourceError> {
    let context = format!("reading the size of `{}`", table.label());
    let schema = table.qualifier.clone().unwrap_or_else(|| "public".into());
    let row = sqlx::query(
        "SELECT c.oid::int8, c.relkind::text, COALESCE(pg_table_size(c.oid), 0)::int8,
                (COALESCE(pg_relation_size(c.oid), 0) / current_setting('block_size')::int8)::int8,
                current_setting('server_version_num')::int4
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(&schema)
    .bind(&table.name)
    .fetch_optional(pool)
    .await
    .map_err(qerr(&context))?;
    let Some(row) = row else {
        return Ok(crate::schema::ChunkFacts::default());
    };
    let oid: i64 = row.try_get(0).map_err(qerr(&context))?;
    let relkind: String = row.try_get(1).map_err(qerr(&context))?;
    let bytes: i64 = row.try_get(2).map_err(qerr(&context))?;
    let pages: i64 = row.try_get(3).map_err(qerr(&context))?;
    let version: i32 = row.try_get(4).map_err(qerr(&context))?;
    let mut facts = crate::schema::ChunkFacts {
        bytes: u64::try_from(bytes).ok(),
        pages: (version >= 140_000 && matches!(relkind.as_str(), "r" | "m"))
            .then(|| u64::try_from(pages).ok())
            .flatten(),
        keys: Vec::new(),
        snapshot_capable: true,
    };
    if facts.bytes.is_none_or(|bytes| bytes <= keys_above) {
        return Ok(facts);
    }
    let keys: Vec<(String, bool)> = sqlx::query_as(
        "SELECT a.attname::text, i.indisprimary
         FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = $1::int8::oid AND i.indisunique AND i.indnkeyatts = 1
           AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attnotnull
           AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
         ORDER BY i.indisprimary DESC, a.attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await
    .map_err(qerr(&context))?;
    // The best key only: its bounds are read with its index (two index probes).
    if let Some((column, primary)) = keys.into_iter().next() {
        let dialect = super::sql::Postgres;
        use super::sql::Dialect as _;
        let quoted = dialect.quote(&column)?;
        let (min, max): (Option<i64>, Option<i64>) = sqlx::query_as(&format!(
            "SELECT min({quoted})::int8, max({quoted})::int8 FROM {}",
            dialect.table_ref(table)?
        ))
        .fetch_one(pool)
        .await
        .map_err(qerr(&format!("reading the bounds of `{column}`")))?;
        facts.keys.push(crate::schema::KeyFacts {
            column,
            min,
            max,
            primary,
        });
    }
    Ok(facts)
}

/// Tables and views of `schema` (default: every schema but the system ones), sorted.
pub(super) async fn list_tables(
    pool: &PgPool,
    schema: Option<&str>,
) -> Result<Vec<super::CatalogEntry>, SourceError> {
    let rows = sqlx::query(
        "SELECT n.nspname::text, c.relname::text, c.relkind IN ('v', 'm')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND NOT c.relispartition
           AND ($1::text IS NULL AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_%' OR n.nspname = $1)
         ORDER BY 1, 2",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .map_err(qerr("listing tables"))?;
    rows.iter()
        .map(|row| {
            Ok(super::CatalogEntry {
                qualifier: Some(row.try_get(0).map_err(qerr("listing tables"))?),
                name: row.try_get(1).map_err(qerr("listing tables"))?,
                view: row.try_get(2).map_err(qerr("listing tables"))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        for value in [ndigits, weight as u16, sign, dscale] {
            out.extend_from_slice(&value.to_be_bytes());
        }
        for digit in digits {
            out.extend_from_slice(&digit.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics() {
        // 12345.6789 = [1, 2345, 6789], weight 1, dscale 4
        assert_eq!(
            numeric_text(&numeric(3, 1, 0, 4, &[1, 2345, 6789])).unwrap(),
            "12345.6789"
        );
        // -0.0001 = [1], weight -1, dscale 4
        assert_eq!(
            numeric_text(&numeric(1, -1, 0x4000, 4, &[1])).unwrap(),
            "-0.0001"
        );
        // 0.00000001 = [1] weight -2 dscale 8
        assert_eq!(
            numeric_text(&numeric(1, -2, 0, 8, &[1])).unwrap(),
            "0.00000001"
        );
        // 10000 = [1] weight 1 dscale 0 (trailing zero group omitted)
        assert_eq!(numeric_text(&numeric(1, 1, 0, 0, &[1])).unwrap(), "10000");
        // 1.50 with dscale 2
        assert_eq!(
            numeric_text(&numeric(2, 0, 0, 2, &[1, 5000])).unwrap(),
            "1.50"
        );
        assert_eq!(numeric_text(&numeric(0, 0, 0, 3, &[])).unwrap(), "0.000");
        assert_eq!(
            numeric_text(&numeric(0, 0, 0xC000, 0, &[]))
                .unwrap_err()
                .kind,
            BadKind::NonFinite
        );
        assert_eq!(
            numeric_text(&numeric(0, 0, 0xD000, 0, &[]))
                .unwrap_err()
                .kind,
            BadKind::NonFinite
        );
    }

    #[test]
    fn dates_and_infinity() {
        let codec = Codec::Date;
        assert_eq!(
            decode_binary(&0i32.to_be_bytes(), &codec),
            Ok(Val::Date(NaiveDate::from_ymd_opt(2000, 1, 1).unwrap()))
        );
        assert_eq!(
            decode_binary(&i32::MAX.to_be_bytes(), &codec)
                .unwrap_err()
                .kind,
            BadKind::NonFinite
        );
        let codec = Codec::Timestamp;
        assert_eq!(
            decode_binary(&i64::MIN.to_be_bytes(), &codec)
                .unwrap_err()
                .kind,
            BadKind::NonFinite
        );
    }
}
