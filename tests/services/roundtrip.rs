//! Round trip into the BigQuery emulator, value by value, for all three engines (issue 3).
//!
//! For each engine: a scratch table with every supported type and edge values → describe +
//! map_table + extract → create_table + load into a fresh dataset → `SELECT *` back through
//! [`Warehouse::query`] → compared cell by cell with the same rows read from the source as text
//! (with a separate connection, not through datasync), by a normalizing comparator per BigQuery
//! type.
//!
//! Needs `scripts/services.sh` (PostgreSQL, MariaDB) and `scripts/emulator.sh start`
//! (`DATASYNC_TEST_POSTGRES_URL`, `DATASYNC_TEST_MYSQL_URL`, `DATASYNC_TEST_BIGQUERY_URL`).
//!
//! Emulator quirks handled here (all from `scripts/EMULATOR.md`):
//! - BIGNUMERIC columns cannot be created (HTTP 500): BIGNUMERIC-mapped columns are only checked
//!   to be mapped BIGNUMERIC, then excluded from the load.
//! - BYTES loaded from NDJSON are stored as the ASCII of the base64 text (not decoded): the query
//!   returns base64 of that, so cells are base64-decoded twice.
//! - NUMERIC strings are not normalized (`12.500000000`): compared as decimals.
//! - TIMESTAMP cells are int64 microseconds.
//! - JSON comes back as JSON text: compared parsed.

use std::str::FromStr;

use crate::support::{connect, table_spec, unique, url};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bigdecimal::BigDecimal;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use datasync::manifest::raw::SourceKind;
use datasync::manifest::resolve::{BigQuerySpec, TableSpec};
use datasync::mapping::{Codec, TableMapping, map_table};
use datasync::schema::ExtractStats;
use datasync::schema::{BqType, FieldMode, LoadFormat, ReadAs, WarehouseTable};
use datasync::source::Source;
use datasync::warehouse::{BigQuery, Disposition, LoadRequest, LoadSink, Warehouse};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection as _, Executor as _, Row as _, TypeInfo as _, ValueRef as _};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";
const BQ_URL: &str = "http://127.0.0.1:9050";
const PROJECT: &str = "datasync-test";

/// Source rows as text, ordered by id, one cell per mapped column (`None` = NULL).
type Cells = Vec<Vec<Option<String>>>;

// ---------------------------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------------------------

/// What a round trip produced.
struct Trip {
    /// The load format.
    format: LoadFormat,
    mapping: TableMapping,
    stats: ExtractStats,
    /// BigQuery rows (`SELECT * … ORDER BY id`), cells decoded by `Warehouse::query`.
    rows: Vec<Vec<Value>>,
    /// BigQuery result column names.
    columns: Vec<String>,
}

/// A fresh dataset in the emulator; fails with a hint when the emulator is down.
async fn warehouse(prefix: &str) -> BigQuery {
    let endpoint = url("DATASYNC_TEST_BIGQUERY_URL", BQ_URL);
    let spec = BigQuerySpec {
        project: PROJECT.into(),
        dataset: unique(prefix),
        location: Some("US".into()),
        endpoint: Some(endpoint.clone()),
        emulator: true,
        create_dataset: true,
        ..BigQuerySpec::default()
    };
    let warehouse = BigQuery::new(&spec).expect("client");
    if let Err(error) = warehouse.ensure_dataset(true).await {
        panic!(
            "the BigQuery emulator at {endpoint} is unreachable ({error}); run `scripts/emulator.sh start`"
        );
    }
    warehouse
}

/// Maps the table, checks which columns go to BIGNUMERIC, excludes them (the emulator can't
/// create BIGNUMERIC columns, EMULATOR.md "BIGNUMERIC is broken"), extracts, creates the table,
/// loads and queries it back.
async fn round_trip(
    source: &Source,
    warehouse: &BigQuery,
    spec: &TableSpec,
    expected_bignumeric: &[&str],
    format: LoadFormat,
) -> Result<Trip, String> {
    let table = source
        .describe(spec.qualifier.as_deref(), &spec.name)
        .await
        .map_err(|e| e.to_string())?;
    let full = map_table(&table, spec)
        .map_err(|errors| datasync::diagnostic::messages(&errors).join("; "))?;
    let bignumeric: Vec<String> = full
        .columns
        .iter()
        .filter(|column| column.field.bq_type == BqType::BigNumeric)
        .map(|column| column.source.name.clone())
        .collect();
    if bignumeric != expected_bignumeric {
        return Err(format!(
            "columns mapped to BIGNUMERIC: {bignumeric:?}, expected {expected_bignumeric:?}"
        ));
    }
    let mut spec = spec.clone();
    spec.exclude_columns = bignumeric;
    if format == LoadFormat::Avro {
        // The plan loads a table with JSON/GEOGRAPHY/INTERVAL columns as NDJSON; the Avro trip
        // covers every other type.
        spec.exclude_columns.extend(
            full.columns
                .iter()
                .filter(|column| {
                    matches!(
                        column.field.bq_type,
                        BqType::Json | BqType::Geography | BqType::Interval
                    )
                })
                .map(|column| column.source.name.clone()),
        );
        // EMULATOR.md "Avro TIME with decimals": a file with a decimal column goes through the
        // emulator's fastavro path, which cannot store `time-micros` into TIME. The Avro bytes
        // of TIME are checked by decoding them (warehouse::avro unit tests).
        let has_decimal = full
            .columns
            .iter()
            .any(|column| matches!(column.field.bq_type, BqType::Numeric | BqType::BigNumeric));
        if has_decimal {
            spec.exclude_columns.extend(
                full.columns
                    .iter()
                    .filter(|column| column.field.bq_type == BqType::Time)
                    .map(|column| column.source.name.clone()),
            );
        }
    }
    let mapping = map_table(&table, &spec)
        .map_err(|errors| datasync::diagnostic::messages(&errors).join("; "))?;
    let loaded = WarehouseTable {
        fields: mapping.table.fields.clone(),
        ..mapping.table.clone()
    };
    if format == LoadFormat::Avro {
        assert_eq!(datasync::schema::policy::avro_obstacle(&loaded), None);
    }

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let collector = tokio::spawn(async move {
        let mut chunks = Vec::new();
        while let Some(chunk) = rx.recv().await {
            chunks.push(chunk);
        }
        chunks
    });
    let stats = source
        .extract(
            &table,
            &mapping.columns,
            None,
            LoadSink::new(
                format,
                table.label(),
                &mapping.columns,
                mapping.policies,
                mapping.max_parse_failures,
                &mapping.key_columns,
                mapping.batch_size,
            ),
            tx,
            &|_| {},
        )
        .await
        .map_err(|e| e.to_string())?;
    let chunks = collector.await.map_err(|e| e.to_string())?;

    warehouse
        .create_table(&mapping.table)
        .await
        .map_err(|e| format!("create table: {e}"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(chunks.len().max(1));
    for chunk in chunks {
        tx.send(chunk).await.map_err(|e| e.to_string())?;
    }
    drop(tx);
    let request = LoadRequest {
        table: mapping.table.name.clone(),
        schema: mapping.table.clone(),
        disposition: Disposition::Append,
        job_id: unique("roundtrip"),
        allow_field_addition: false,
        format,
    };
    warehouse
        .load(&request, rx)
        .await
        .map_err(|e| format!("load: {e}"))?;
    let sql = format!(
        "SELECT * FROM {} ORDER BY id",
        warehouse.qualified(&mapping.table.name)
    );
    let result = warehouse
        .query(&sql, &[])
        .await
        .map_err(|e| format!("query: {e}"))?;
    Ok(Trip {
        format,
        mapping,
        stats,
        columns: result.columns.iter().map(|c| c.name.clone()).collect(),
        rows: result.rows,
    })
}

// ---------------------------------------------------------------------------------------------
// The comparator
// ---------------------------------------------------------------------------------------------

/// How a column's values are compared.
#[derive(Debug, Clone)]
enum Kind {
    Int,
    Numeric,
    Float,
    Bool,
    Str,
    /// MySQL TIME (a signed duration) written as STRING: compared as a duration, since MySQL's
    /// CAST pads the fraction to the column's precision.
    MysqlTime,
    Bytes,
    /// BYTES loaded from Avro: stored as the bytes themselves (returned base64 once).
    AvroBytes,
    Date,
    Datetime,
    Time,
    Timestamp,
    Json,
    Repeated(Box<Kind>),
}

fn kind(bq_type: BqType, mode: FieldMode, codec: &Codec) -> Kind {
    if mode == FieldMode::Repeated {
        let element = match codec {
            Codec::Array(element) => element.as_ref(),
            other => other,
        };
        return Kind::Repeated(Box::new(kind(bq_type, FieldMode::Nullable, element)));
    }
    match bq_type {
        BqType::Int64 => Kind::Int,
        BqType::Numeric | BqType::BigNumeric => Kind::Numeric,
        BqType::Float64 => Kind::Float,
        BqType::Bool => Kind::Bool,
        BqType::String if *codec == Codec::Duration => Kind::MysqlTime,
        BqType::String | BqType::Geography | BqType::Interval => Kind::Str,
        BqType::Bytes => Kind::Bytes,
        BqType::Date => Kind::Date,
        BqType::Datetime => Kind::Datetime,
        BqType::Time => Kind::Time,
        BqType::Timestamp => Kind::Timestamp,
        BqType::Json => Kind::Json,
    }
}

/// How a column loaded from Avro compares: BYTES are not base64 text in Avro.
fn avro_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Bytes => Kind::AvroBytes,
        Kind::Repeated(element) => Kind::Repeated(Box::new(avro_kind(*element))),
        other => other,
    }
}

/// Whether the source value is a "bad value" that the default policies write as NULL
/// (NaN/±Infinity, PostgreSQL ±infinity dates, MySQL zero dates), counted in `bad_values`.
fn is_bad_value(kind: &Kind, text: &str) -> bool {
    match kind {
        Kind::Float | Kind::Numeric => text.parse::<f64>().is_ok_and(|v| !v.is_finite()),
        Kind::Date | Kind::Datetime | Kind::Timestamp => {
            // PostgreSQL ±infinity; MySQL zero dates (`0000-00-00`, `2024-00-15`, `2024-01-00`).
            let date = text.get(..10).unwrap_or(text);
            text.contains("infinity")
                || date.starts_with("0000")
                || date.get(5..7) == Some("00")
                || date.get(8..10) == Some("00")
        }
        _ => false,
    }
}

fn cell_text(cell: &Value) -> Option<String> {
    match cell {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

fn parse_datetime(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(value) = NaiveDateTime::parse_from_str(text, format) {
            return Some(value);
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
}

/// A source instant: with an offset (`+00`, `+05:30`, `Z`), or without (taken as UTC, the
/// reading sessions are in UTC).
fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(value) = DateTime::parse_from_str(text, format) {
            return Some(value.with_timezone(&Utc));
        }
    }
    if let Some(stripped) = text.strip_suffix('Z') {
        return parse_datetime(stripped).map(|value| value.and_utc());
    }
    parse_datetime(text).map(|value| value.and_utc())
}

/// `[-]H:MM:SS[.ffffff]` → signed microseconds.
fn mysql_time_micros(text: &str) -> Option<i64> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = rest.split_once('.').unwrap_or((rest, ""));
    let mut parts = whole.split(':');
    let hours: i64 = parts.next()?.parse().ok()?;
    let minutes: i64 = parts.next()?.parse().ok()?;
    let seconds: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || fraction.len() > 6 {
        return None;
    }
    let micros: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").parse().ok()?
    };
    let total = ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + micros;
    Some(if negative { -total } else { total })
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "1" => Some(true),
        "f" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// Compares one non-NULL source value with its BigQuery cell. `Err` describes the mismatch.
fn compare(kind: &Kind, source: &str, cell: &Value) -> Result<(), String> {
    let mismatch = || Err(String::from("values differ"));
    let cell_str = || cell_text(cell).ok_or_else(|| "BigQuery has NULL".to_string());
    match kind {
        Kind::Int => {
            let want: i128 = source.trim().parse().map_err(|_| "bad source int")?;
            let got: i128 = cell_str()?.parse().map_err(|_| "bad BigQuery int")?;
            if want == got { Ok(()) } else { mismatch() }
        }
        Kind::Numeric => {
            let want = BigDecimal::from_str(source.trim()).map_err(|e| format!("source: {e}"))?;
            // EMULATOR.md: NUMERIC strings are not normalized ("12.500000000", "0E-9").
            let got = BigDecimal::from_str(&cell_str()?).map_err(|e| format!("BigQuery: {e}"))?;
            if want == got { Ok(()) } else { mismatch() }
        }
        Kind::Float => {
            let want: f64 = source.trim().parse().map_err(|_| "bad source float")?;
            let got = match cell {
                Value::Number(number) => number.as_f64().ok_or("bad BigQuery float")?,
                Value::String(text) => text.parse().map_err(|_| "bad BigQuery float")?,
                _ => return Err("BigQuery cell is not a float".into()),
            };
            // Bitwise: -0.0 ≠ 0.0, subnormals exact.
            if want.to_bits() == got.to_bits() {
                Ok(())
            } else {
                Err(format!("{want:?} vs {got:?}"))
            }
        }
        Kind::Bool => {
            let want = parse_bool(source).ok_or("bad source bool")?;
            if cell.as_bool() == Some(want) {
                Ok(())
            } else {
                mismatch()
            }
        }
        Kind::Str => {
            if cell.as_str() == Some(source) {
                Ok(())
            } else {
                mismatch()
            }
        }
        Kind::MysqlTime => {
            let want = mysql_time_micros(source).ok_or("bad source TIME")?;
            let got = cell
                .as_str()
                .and_then(mysql_time_micros)
                .ok_or("BigQuery string is not a [-]H:MM:SS[.ffffff] duration")?;
            if want == got { Ok(()) } else { mismatch() }
        }
        Kind::AvroBytes => {
            let want = hex::decode(source.trim()).map_err(|e| format!("source hex: {e}"))?;
            let got = BASE64
                .decode(cell_str()?)
                .map_err(|e| format!("BigQuery base64: {e}"))?;
            if want == got {
                Ok(())
            } else {
                Err(format!(
                    "bytes {} vs {}",
                    hex::encode(want),
                    hex::encode(got)
                ))
            }
        }
        Kind::Bytes => {
            let want = hex::decode(source.trim()).map_err(|e| format!("source hex: {e}"))?;
            let once = BASE64
                .decode(cell_str()?)
                .map_err(|e| format!("BigQuery base64: {e}"))?;
            // EMULATOR.md: BYTES in NDJSON are stored as the ASCII of our base64 text, so the
            // bytes read back are that text; decode it once more.
            let twice = BASE64
                .decode(&once)
                .map_err(|e| format!("stored bytes are not our base64 text ({e})"))?;
            if want == twice {
                Ok(())
            } else {
                Err(format!(
                    "bytes {} vs {}",
                    hex::encode(want),
                    hex::encode(twice)
                ))
            }
        }
        Kind::Date => {
            let want = NaiveDate::parse_from_str(source.trim(), "%Y-%m-%d")
                .map_err(|e| format!("source date: {e}"))?;
            let got = NaiveDate::parse_from_str(&cell_str()?, "%Y-%m-%d")
                .map_err(|e| format!("BigQuery date: {e}"))?;
            if want == got { Ok(()) } else { mismatch() }
        }
        Kind::Datetime => {
            let want = parse_datetime(source).ok_or("bad source datetime")?;
            let got = parse_datetime(&cell_str()?).ok_or("bad BigQuery datetime")?;
            if want == got { Ok(()) } else { mismatch() }
        }
        Kind::Time => {
            let want = NaiveTime::parse_from_str(source.trim(), "%H:%M:%S%.f")
                .map_err(|e| format!("source time: {e}"))?;
            let got = NaiveTime::parse_from_str(&cell_str()?, "%H:%M:%S%.f")
                .map_err(|e| format!("BigQuery time: {e}"))?;
            if want == got { Ok(()) } else { mismatch() }
        }
        Kind::Timestamp => {
            let want = parse_instant(source).ok_or("bad source timestamp")?;
            // EMULATOR.md: TIMESTAMP cells are int64 microseconds.
            let micros: i64 = cell_str()?.parse().map_err(|_| "bad BigQuery micros")?;
            let got = DateTime::from_timestamp_micros(micros).ok_or("micros out of range")?;
            if want == got {
                Ok(())
            } else {
                Err(format!("{want:?} vs {got:?}"))
            }
        }
        Kind::Json => {
            let want: Value =
                serde_json::from_str(source).map_err(|e| format!("source JSON: {e}"))?;
            // EMULATOR.md: JSON cells are the JSON text.
            let got: Value =
                serde_json::from_str(&cell_str()?).map_err(|e| format!("BigQuery JSON: {e}"))?;
            if want == got { Ok(()) } else { mismatch() }
        }
        Kind::Repeated(element) => {
            // The source side is a JSON array of the elements' text.
            let want: Vec<String> =
                serde_json::from_str(source).map_err(|e| format!("source array: {e}"))?;
            let got = cell.as_array().ok_or("BigQuery cell is not an array")?;
            if want.len() != got.len() {
                return Err(format!("{} elements vs {}", want.len(), got.len()));
            }
            for (index, (want, got)) in want.iter().zip(got).enumerate() {
                compare(element, want, got).map_err(|e| format!("element {index}: {e}"))?;
            }
            Ok(())
        }
    }
}

/// Compares every cell; returns the mismatches and the number of source bad values.
fn compare_all(trip: &Trip, source: &Cells) -> (Vec<String>, u64) {
    let mut problems = Vec::new();
    let mut bad_values = 0;
    let names: Vec<&str> = trip
        .mapping
        .columns
        .iter()
        .map(|column| column.field.name.as_str())
        .collect();
    let bq_names: Vec<&str> = trip.columns.iter().map(String::as_str).collect();
    if names != bq_names {
        problems.push(format!(
            "BigQuery columns {bq_names:?} differ from the mapping {names:?}"
        ));
        return (problems, 0);
    }
    if source.len() != trip.rows.len() {
        problems.push(format!(
            "{} source rows, {} BigQuery rows",
            source.len(),
            trip.rows.len()
        ));
    }
    for (source_row, bq_row) in source.iter().zip(&trip.rows) {
        let id = source_row[0].clone().unwrap_or_default();
        for (index, column) in trip.mapping.columns.iter().enumerate() {
            let mut kind = kind(column.field.bq_type, column.field.mode, &column.codec);
            if trip.format == LoadFormat::Avro {
                kind = avro_kind(kind);
            }
            let cell = &bq_row[index];
            let outcome = match (&source_row[index], &kind) {
                // A NULL array is written `[]`; BigQuery reads NULL arrays back as `[]`.
                (None, Kind::Repeated(_)) => match cell.as_array() {
                    Some(items) if items.is_empty() => Ok(()),
                    _ => Err("expected [] for a NULL array".to_string()),
                },
                (None, _) if cell.is_null() => Ok(()),
                (None, _) => Err("source is NULL".to_string()),
                (Some(text), kind) if is_bad_value(kind, text) => {
                    bad_values += 1;
                    if cell.is_null() {
                        Ok(())
                    } else {
                        Err("a bad value must be written as NULL".to_string())
                    }
                }
                // A JSON `null` document: NDJSON `"j":null` is SQL NULL, on real BigQuery
                // too; there is no way to load a JSON null into a JSON column.
                (Some(text), Kind::Json) if text.trim() == "null" && cell.is_null() => Ok(()),
                (Some(_), _) if cell.is_null() => Err("BigQuery has NULL".to_string()),
                (Some(text), kind) => compare(kind, text, cell),
            };
            if let Err(why) = outcome {
                problems.push(format!(
                    "row id={id} column `{}` ({:?}): {why}\n    source:   {:?}\n    bigquery: {}",
                    column.source.name, kind, source_row[index], cell
                ));
            }
        }
    }
    (problems, bad_values)
}

/// Asserts a finished round trip: no mismatches, the bad values counted.
fn check(engine: &str, trip: &Trip, source: &Cells, rows: usize, bad: u64) {
    let (problems, bad_values) = compare_all(trip, source);
    assert!(
        problems.is_empty(),
        "{engine}: {} mismatch(es) between the source and BigQuery:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(trip.rows.len(), rows, "{engine}: rows in BigQuery");
    assert_eq!(trip.stats.rows, rows as u64, "{engine}: rows extracted");
    assert_eq!(trip.stats.failed_rows, 0, "{engine}: {:?}", trip.stats);
    assert_eq!(bad_values, bad, "{engine}: bad values seen at the source");
    assert_eq!(
        trip.stats.bad_values, bad,
        "{engine}: ExtractStats.bad_values ({:?})",
        trip.stats.failures
    );
}

/// The comparator itself: equal values pass, different ones fail (so a green run means
/// something).
#[test]
fn comparator_tells_values_apart() {
    use serde_json::json;
    let ok = |kind: &Kind, source: &str, cell: Value| compare(kind, source, &cell).is_ok();
    assert!(ok(&Kind::Numeric, "12.5", json!("12.500000000")));
    assert!(ok(&Kind::Numeric, "0.00", json!("0E-9")));
    assert!(!ok(&Kind::Numeric, "12.5", json!("12.500000001")));
    assert!(ok(&Kind::Float, "-0", json!(-0.0)));
    assert!(!ok(&Kind::Float, "-0", json!(0.0)));
    assert!(!ok(&Kind::Float, "0.1", json!(0.1f32 as f64)));
    assert!(ok(&Kind::Int, "-9223372036854775808", json!(i64::MIN)));
    assert!(!ok(
        &Kind::Int,
        "9007199254740993",
        json!(9007199254740992i64)
    ));
    // 00ff → our base64 "AP8=" → stored as those 4 ASCII bytes → returned as "QVA4PQ==".
    assert!(ok(&Kind::Bytes, "00ff", json!("QVA4PQ==")));
    assert!(!ok(&Kind::Bytes, "00ff", json!("AP8=")));
    assert!(ok(
        &Kind::Timestamp,
        "1970-01-01 00:00:01.5+00",
        json!(1_500_000)
    ));
    assert!(ok(
        &Kind::Timestamp,
        "1970-01-01 05:30:01.5+05:30",
        json!(1_500_000)
    ));
    assert!(!ok(
        &Kind::Timestamp,
        "1970-01-01 00:00:01.5",
        json!(1_500_001)
    ));
    assert!(ok(
        &Kind::Datetime,
        "2024-01-02 03:04:05",
        json!("2024-01-02T03:04:05")
    ));
    assert!(!ok(
        &Kind::Datetime,
        "2024-01-02 03:04:05",
        json!("2024-01-02T03:04:05.000001")
    ));
    assert!(ok(
        &Kind::Json,
        r#"{"a": [1, {"b": "ü"}], "c": 2}"#,
        json!(r#"{"c":2,"a":[1,{"b":"ü"}]}"#)
    ));
    assert!(!ok(
        &Kind::Json,
        r#"{"a": [1, 2]}"#,
        json!(r#"{"a":[2,1]}"#)
    ));
    assert!(ok(
        &Kind::MysqlTime,
        "-00:00:00.500000",
        json!("-00:00:00.5")
    ));
    assert!(!ok(
        &Kind::MysqlTime,
        "-00:00:00.500000",
        json!("00:00:00.500000")
    ));
    assert!(!ok(&Kind::Str, "ab   ", json!("ab")));
    let array = Kind::Repeated(Box::new(Kind::Numeric));
    assert!(ok(&array, r#"["1.50","0"]"#, json!(["1.5", "0E-9"])));
    assert!(!ok(&array, r#"["1.50","0"]"#, json!(["1.5"])));
    assert!(is_bad_value(&Kind::Float, "NaN") && is_bad_value(&Kind::Float, "-Infinity"));
    assert!(is_bad_value(&Kind::Date, "2024-00-15") && is_bad_value(&Kind::Date, "infinity"));
    assert!(!is_bad_value(&Kind::Datetime, "2000-10-10 00:00:00"));
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

const PG_SETUP: &str = r#"
CREATE TYPE {S}.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE {S}.rt (
  id int8 PRIMARY KEY,
  i2 int2, i4 int4, i8 int8,
  f4 real, f8 double precision,
  n numeric(38,9), n2 numeric(10,2), n20 numeric(20,0),
  nbig numeric(76,38), nfree numeric,
  b bool, t text, vc varchar(10), ch char(5),
  d date, ts timestamp, tstz timestamptz, tm time, tmtz timetz, iv interval,
  j json, jb jsonb, by bytea, u uuid, ip inet, m money, e {S}.mood, bits bit(8),
  ai int8[], at text[], an numeric(10,2)[], ats timestamptz[], ad date[], ab bool[],
  af float8[], ainet inet[]
);
-- Every literal without an offset below is local time in +05:30.
SET TIME ZONE 'Asia/Kolkata';
INSERT INTO {S}.rt VALUES
 (1, 32767, 2147483647, 9223372036854775807, 3.4028235e38, 1.7976931348623157e308,
  99999999999999999999999999999.999999999, 99999999.99, 99999999999999999999,
  1.5, 1.5,
  true, E'héllo "quoted" \'single\'\nnew line \\ back\ttab 😀 ✓ 中文', 'ten chars!', 'ab',
  '9999-12-31', '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59.999999+00', '23:59:59.999999',
  '12:00:00+02', '1 year 2 mons 3 days 04:05:06.789',
  '{"a": [1, 2, {"b": null, "c": [true, false]}], "ü": "😀\n\"q\"", "big": 12345678901234567890}',
  '{"a": [1, [2, [3]]], "s": "x\ny", "e": {}}', '\x00ff1000ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '192.168.0.1/24', 92233720368547758.07, 'happy', B'10101010',
  '{1,-9223372036854775808,9223372036854775807}', '{"a","b c","é😀","q\"d","back\\slash",""}',
  '{1.50,-2.25,0}', '{"2024-01-01 00:00:00+00","2024-01-01 10:00:00+10"}', '{0001-01-01,9999-12-31}',
  '{t,f}', '{1.5,-0,1e308,5e-324}', '{10.0.0.1,::1,2001:db8::/32}'),
 (2, -32768, -2147483648, -9223372036854775808, '-0', '-0',
  -99999999999999999999999999999.999999999, -0.01, -99999999999999999999,
  -1.5, -1.5,
  false, '', '', '',
  '0001-01-01', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00', '00:00:00',
  '00:00:00-14:59', '-1 days -00:00:00.000001',
  '[]', '"scalar"', '\x', '00000000-0000-0000-0000-000000000000', '::1', -92233720368547758.08,
  'sad', B'00000000',
  '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL),
 (4, 0, 0, 9007199254740993, 1e-45, 5e-324,
  0.000000001, 0, 0,
  NULL, NULL,
  NULL, 'x', NULL, 'abcde',
  '2024-02-29', '2024-02-29 12:00:00.000001', '2024-06-01 12:34:56.789', '00:00:00.000001',
  NULL, '00:00:00',
  'null', '{}', '\xff', NULL, NULL, 0, 'ok', NULL,
  '{0}', '{"NULL"}', '{0.01}', '{"1970-01-01 05:30:00"}', NULL, '{f}', '{-1e-308}', NULL),
 (5, 1, 1, 1, 'NaN', 'Infinity',
  'NaN', 1, 1,
  NULL, 'NaN',
  NULL, NULL, NULL, NULL,
  'infinity', '-infinity', 'infinity', NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (6, 2, 2, 2, '-Infinity', '-Infinity',
  2.2, 2.2, 2,
  NULL, NULL,
  NULL, NULL, NULL, NULL,
  '-infinity', 'infinity', '-infinity', NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

/// The PostgreSQL expression giving a column's value as text (output function, UTC session).
fn pg_text(name: &str, data_type: &str, codec: &Codec) -> String {
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match codec {
        Codec::Bytes => format!("encode({quoted}, 'hex')"),
        Codec::Array(_) => format!("to_json({quoted}::text[])::text"),
        _ if data_type == "money" => format!("{quoted}::numeric::text"),
        // `::text` strips char(n) padding; the output function (format) keeps it.
        _ if data_type == "character" => {
            format!("CASE WHEN {quoted} IS NULL THEN NULL ELSE format('%s', {quoted}) END")
        }
        _ => format!("{quoted}::text"),
    }
}

async fn pg_cells(url: &str, schema: &str, mapping: &TableMapping) -> Result<Cells, String> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    conn.execute("SET TIME ZONE 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 1")
        .await
        .map_err(|e| e.to_string())?;
    let select = mapping
        .columns
        .iter()
        .map(|column| pg_text(&column.source.name, &column.source.data_type, &column.codec))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {select} FROM \"{schema}\".rt ORDER BY id");
    let rows = sqlx::query(&sql)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|row| {
            (0..row.len())
                .map(|index| row.try_get::<Option<String>, _>(index))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        })
        .collect()
}

#[tokio::test]
async fn postgres_round_trip_ndjson() {
    postgres_round_trip(LoadFormat::Ndjson).await;
}

#[tokio::test]
async fn postgres_round_trip_avro() {
    postgres_round_trip(LoadFormat::Avro).await;
}

async fn postgres_round_trip(format: LoadFormat) {
    let url = url("DATASYNC_TEST_POSTGRES_URL", PG_URL);
    let source = connect(SourceKind::Postgres, &url).await;
    let warehouse = warehouse("rt_pg").await;
    let schema = unique("rt_pg");
    // A separate connection: the session zone set by the script must not leak into the pool
    // datasync extracts with.
    let setup = async {
        let mut conn = sqlx::PgConnection::connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        conn.execute(sqlx::raw_sql(&format!(
            "CREATE SCHEMA \"{schema}\";\n{}",
            PG_SETUP.replace("{S}", &format!("\"{schema}\""))
        )))
        .await
        .map_err(|e| format!("setup: {e}"))?;
        Ok::<_, String>(())
    };
    let outcome = match setup.await {
        Ok(()) => {
            let spec = table_spec(SourceKind::Postgres, Some(&schema), "rt");
            match round_trip(&source, &warehouse, &spec, &["nbig", "nfree"], format).await {
                Ok(trip) => pg_cells(&url, &schema, &trip.mapping)
                    .await
                    .map(|cells| (trip, cells)),
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    };
    // Cleanup before asserting.
    let Source::Postgres(pool) = &source else {
        unreachable!()
    };
    let _ = pool
        .execute(sqlx::raw_sql(&format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .await;
    let _ = warehouse.delete_dataset().await;

    let (trip, cells) = outcome.expect("round trip");
    // Bad values: row 5 f4 NaN, f8 Infinity, n NaN, d/ts/tstz ±infinity; row 6 the same minus n.
    check("PostgreSQL", &trip, &cells, 6, 11);
    // The session zone at insert time was +05:30: 12:34:56.789 local is 07:04:56.789 UTC.
    let tstz = trip.mapping.columns.iter().position(|c| c.target == "tstz");
    let expected = "2024-06-01T07:04:56.789Z"
        .parse::<DateTime<Utc>>()
        .unwrap()
        .timestamp_micros();
    assert_eq!(
        tstz.and_then(|index| trip.rows[3][index].as_i64()),
        Some(expected)
    );
}

// ---------------------------------------------------------------------------------------------
// MySQL / MariaDB
// ---------------------------------------------------------------------------------------------

const MYSQL_CREATE: &str = r#"
CREATE TABLE {D}.rt (
  id BIGINT PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, b1 TINYINT(1), si SMALLINT, siu SMALLINT UNSIGNED,
  mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED,
  yr YEAR,
  dec1 DECIMAL(38,9), dec2 DECIMAL(65,30), dec3 DECIMAL(10,2), dec0 DECIMAL(29,0),
  fl FLOAT, db DOUBLE,
  bit1 BIT(1), bit8 BIT(8), bit12 BIT(12),
  d DATE, dt DATETIME(6), dt0 DATETIME, ts TIMESTAMP(6) NULL, tm TIME(6), tm0 TIME,
  ch CHAR(3), vc VARCHAR(100), tx TEXT, lt LONGTEXT,
  j JSON,
  bin BINARY(3), vb VARBINARY(10), bl BLOB,
  en ENUM('a','b','c'), st SET('x','y','z'),
  u UUID,
  g GEOMETRY,
  lat1 VARCHAR(10) CHARACTER SET latin1
)
"#;

/// `(session time zone, INSERT)`.
const MYSQL_ROWS: &[(&str, &str)] = &[
    (
        "+00:00",
        r#"INSERT INTO {D}.rt VALUES (1,
  127, 255, 1, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807,
  18446744073709551615, 2155,
  99999999999999999999999999999.999999999, 1.5, 99999999.99, 99999999999999999999999999999,
  3.40282e38, 1.7976931348623157e308,
  b'1', b'11111111', b'101010101010',
  '9999-12-31', '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59', '2038-01-19 03:14:07.999999',
  '838:59:59', '838:59:59',
  'abc', 'héllo 😀 "q" \'s\'\n\\ back\ttab ✓', 'text', '{"not": "json"}',
  '{"a": [1, 2, {"b": null, "c": [true]}], "ü": "😀\\n\\"q\\"", "big": 12345678901234567890}',
  0x00FF10, X'00FF', X'DEADBEEF00FF', 'c', 'x,z', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  ST_GeomFromText('POINT(1 2)'), 'café')"#,
    ),
    (
        "+00:00",
        r#"INSERT INTO {D}.rt VALUES (2,
  -128, 0, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0, 1901,
  -99999999999999999999999999999.999999999, -1.5, -0.01, -99999999999999999999999999999,
  -1.5, -0e0, -- MariaDB stores -0.0 as 0 (so does SQLite): only PostgreSQL covers -0.0.
  b'0', b'0', b'0',
  '0001-01-01', '0001-01-01 00:00:00', '1000-01-01 00:00:00', '1970-01-01 00:00:01',
  '-838:59:59', '-838:59:59',
  '', '', '', '', '[]',
  '', X'', X'', 'a', '', '00000000-0000-0000-0000-000000000000',
  ST_GeomFromText('LINESTRING(0 0, 1 1.5)'), '')"#,
    ),
    ("+00:00", "INSERT INTO {D}.rt (id) VALUES (3)"),
    (
        // The session zone must not matter: this TIMESTAMP is 07:04:56.789 UTC.
        "+05:30",
        r#"INSERT INTO {D}.rt (id, bi, dec1, dec3, dec0, fl, db, dt, dt0, ts, tm, tm0, j, vc, bl)
  VALUES (4, 9007199254740993, 0.000000001, 0, 0, 1e-45, 4.9e-324, '2024-02-29 12:00:00.000001',
  '2024-02-29 12:00:00', '2024-06-01 12:34:56.789', '-00:00:00.5', '-00:00:01', '"scalar"',
  'tab\there', X'00')"#,
    ),
    (
        "+00:00",
        r#"INSERT INTO {D}.rt (id, d, dt, ts, tm, fl, db, j) VALUES (5, '0000-00-00', '2024-01-00 10:00:00',
  '0000-00-00 00:00:00', '00:00:00.000001', 0.1, 0.1, 'null')"#,
    ),
];

/// The MySQL expression for a column and whether it is read as a 4-byte float.
fn mysql_text(
    name: &str,
    column_type: &str,
    codec: &Codec,
    read_as: ReadAs,
) -> (String, Option<bool>) {
    let quoted = format!("`{}`", name.replace('`', "``"));
    match codec {
        Codec::Float => (quoted, Some(column_type.starts_with("float"))),
        _ if read_as == ReadAs::Wkt => (format!("ST_AsText({quoted})"), None),
        // HEX of a BIT(n) is the number's hex; pad it to the ⌈n/8⌉ bytes datasync writes.
        Codec::Bytes if column_type.starts_with("bit(") => {
            let bits: usize = column_type
                .trim_start_matches("bit(")
                .trim_end_matches(')')
                .parse()
                .unwrap_or(64);
            (
                format!("LPAD(HEX({quoted}), {}, '0')", bits.div_ceil(8) * 2),
                None,
            )
        }
        Codec::Bytes => (format!("HEX({quoted})"), None),
        Codec::Bool => (format!("CAST({quoted} + 0 AS CHAR)"), None),
        _ => (format!("CAST({quoted} AS CHAR)"), None),
    }
}

async fn mysql_cells(url: &str, database: &str, mapping: &TableMapping) -> Result<Cells, String> {
    let mut conn = sqlx::MySqlConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    conn.execute("SET SESSION time_zone = '+00:00'")
        .await
        .map_err(|e| e.to_string())?;
    let columns: Vec<(String, Option<bool>)> = mapping
        .columns
        .iter()
        .map(|column| {
            mysql_text(
                &column.source.name,
                &column.source.column_type,
                &column.codec,
                column.read_as,
            )
        })
        .collect();
    let select = columns
        .iter()
        .map(|(expression, _)| expression.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {select} FROM `{database}`.rt ORDER BY id");
    let rows = sqlx::query(&sql)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(index, (_, float))| match float {
                    // Floats: Rust's shortest round-trip representation. A FLOAT is written by
                    // datasync as its shortest f32 decimal (0.1f32 → 0.1), so it is read as f32.
                    Some(true) => row
                        .try_get::<Option<f32>, _>(index)
                        .map(|value| value.map(|v| format!("{v:?}"))),
                    Some(false) => row
                        .try_get::<Option<f64>, _>(index)
                        .map(|value| value.map(|v| format!("{v:?}"))),
                    None => row.try_get::<Option<String>, _>(index),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        })
        .collect()
}

#[tokio::test]
async fn mysql_round_trip_ndjson() {
    mysql_round_trip(LoadFormat::Ndjson).await;
}

#[tokio::test]
async fn mysql_round_trip_avro() {
    mysql_round_trip(LoadFormat::Avro).await;
}

async fn mysql_round_trip(format: LoadFormat) {
    let url = url("DATASYNC_TEST_MYSQL_URL", MYSQL_URL);
    let source = connect(SourceKind::Mysql, &url).await;
    let warehouse = warehouse("rt_my").await;
    let database = unique("rt_my");
    let quoted = format!("`{database}`");
    let setup = async {
        let mut conn = sqlx::MySqlConnection::connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        conn.execute(sqlx::raw_sql(&format!("CREATE DATABASE {quoted}")))
            .await
            .map_err(|e| format!("create database: {e}"))?;
        conn.execute(sqlx::raw_sql(&MYSQL_CREATE.replace("{D}", &quoted)))
            .await
            .map_err(|e| format!("create table: {e}"))?;
        // Zero dates need a relaxed sql_mode.
        conn.execute("SET SESSION sql_mode = ''")
            .await
            .map_err(|e| e.to_string())?;
        for (zone, insert) in MYSQL_ROWS {
            conn.execute(sqlx::raw_sql(&format!("SET SESSION time_zone = '{zone}'")))
                .await
                .map_err(|e| e.to_string())?;
            conn.execute(sqlx::raw_sql(&insert.replace("{D}", &quoted)))
                .await
                .map_err(|e| format!("{insert}: {e}"))?;
        }
        Ok::<_, String>(())
    };
    let outcome = match setup.await {
        Ok(()) => {
            let spec = table_spec(SourceKind::Mysql, Some(&database), "rt");
            match round_trip(&source, &warehouse, &spec, &["dec2"], format).await {
                Ok(trip) => mysql_cells(&url, &database, &trip.mapping)
                    .await
                    .map(|cells| (trip, cells)),
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    };
    let Source::Mysql(pool) = &source else {
        unreachable!()
    };
    let _ = pool
        .execute(sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {quoted}")))
        .await;
    let _ = warehouse.delete_dataset().await;

    let (trip, cells) = outcome.expect("round trip");
    // Bad values: row 5's zero dates d, dt, ts.
    check("MySQL", &trip, &cells, 5, 3);
    let ts = trip.mapping.columns.iter().position(|c| c.target == "ts");
    let expected = "2024-06-01T07:04:56.789Z"
        .parse::<DateTime<Utc>>()
        .unwrap()
        .timestamp_micros();
    assert_eq!(
        ts.and_then(|index| trip.rows[3][index].as_i64()),
        Some(expected)
    );
    let bu = trip.mapping.column("bu").expect("bu");
    assert_eq!(
        (bu.field.bq_type, bu.field.precision, bu.field.scale),
        (BqType::Numeric, Some(20), Some(0)),
        "BIGINT UNSIGNED → NUMERIC(20,0)"
    );
}

// ---------------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------------

// SQLite has no exact decimal storage: a DECIMAL(38,9) column has NUMERIC affinity and keeps
// 99999999999999999999999999999.999999999 as the REAL 1e29, so max-precision decimals are not
// representable at the source and are left out here.
const SQLITE_SETUP: &str = r#"
CREATE TABLE rt (
  id INTEGER PRIMARY KEY,
  i BIGINT, si SMALLINT, r REAL, dbl DOUBLE,
  n NUMERIC(10,2), dec DECIMAL(38,9), nfree DECIMAL,
  b BOOLEAN, d DATE, dt DATETIME, ts TIMESTAMP,
  t TEXT, vc VARCHAR(10), bl BLOB, j JSON, anything
);
INSERT INTO rt VALUES
 (1, 9223372036854775807, 32767, 1.7976931348623157e308, 5e-324, 12345678.9, 123456789.5, 1.5,
  1, '9999-12-31', '9999-12-31 23:59:59.999999', '2024-02-29T10:11:12Z',
  'héllo 😀 "q" ''s''' || char(10) || '\ back' || char(9) || 'tab ✓', 'ten chars!', X'00FF1000FF',
  '{"a": [1, 2, {"b": null, "c": [true]}], "ü": "😀\n\"q\"", "big": 12345678901234567890}', 42),
 (2, -9223372036854775808, -32768, -0.0, -1e-308, '-0.01', -0.000000001, -1.5,
  0, '0001-01-01', '0001-01-01 00:00:00', 'whatever', '', '', X'', '[]', 'text'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, 0, 0.1, 2.2250738585072014e-308, 7, 0, NULL, 'true', '2024-02-29', '2024-02-29',
  NULL, 'x', NULL, X'FF', '"scalar"', 1.25),
 (5, 1, 1, 9e999, -9e999, NULL, NULL, NULL, NULL, NULL, '2024-02-29T10:11:12.5', NULL, NULL, NULL,
  NULL, NULL, NULL);
"#;

async fn sqlite_cells(pool: &sqlx::SqlitePool, mapping: &TableMapping) -> Result<Cells, String> {
    let select = mapping
        .columns
        .iter()
        .map(|column| format!("\"{}\"", column.source.name.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = sqlx::query(&format!("SELECT {select} FROM rt ORDER BY id"))
        .fetch_all(pool)
        .await
        .map_err(|e| e.to_string())?;
    // By storage class: REAL as Rust's shortest round-trip repr (CAST AS TEXT keeps only 15
    // digits), BLOB as hex.
    let mut cells = Vec::new();
    for row in &rows {
        let mut out = Vec::new();
        for index in 0..row.columns().len() {
            let raw = row.try_get_raw(index).map_err(|e| e.to_string())?;
            if raw.is_null() {
                out.push(None);
                continue;
            }
            let class = raw.type_info().name().to_string();
            let text = match class.as_str() {
                "INTEGER" => row.try_get::<i64, _>(index).map(|v| v.to_string()),
                "REAL" => row.try_get::<f64, _>(index).map(|v| format!("{v:?}")),
                "BLOB" => row.try_get::<Vec<u8>, _>(index).map(hex::encode),
                _ => row.try_get::<String, _>(index),
            }
            .map_err(|e| e.to_string())?;
            out.push(Some(text));
        }
        cells.push(out);
    }
    Ok(cells)
}

#[tokio::test]
async fn sqlite_round_trip_ndjson() {
    sqlite_round_trip(LoadFormat::Ndjson).await;
}

#[tokio::test]
async fn sqlite_round_trip_avro() {
    sqlite_round_trip(LoadFormat::Avro).await;
}

async fn sqlite_round_trip(format: LoadFormat) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("source.db");
    {
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("create db");
        pool.execute(sqlx::raw_sql(SQLITE_SETUP))
            .await
            .expect("setup");
        pool.close().await;
    }
    let url = format!("sqlite://{}", path.display());
    let source = connect(SourceKind::Sqlite, &url).await;
    let Source::Sqlite(pool) = &source else {
        unreachable!()
    };
    let warehouse = warehouse("rt_lite").await;
    let spec = table_spec(SourceKind::Sqlite, None, "rt");
    let outcome = match round_trip(&source, &warehouse, &spec, &["nfree"], format).await {
        Ok(trip) => sqlite_cells(pool, &trip.mapping)
            .await
            .map(|cells| (trip, cells)),
        Err(error) => Err(error),
    };
    let _ = warehouse.delete_dataset().await;

    let (trip, cells) = outcome.expect("round trip");
    // Bad values: row 5's ±Infinity reals.
    check("SQLite", &trip, &cells, 5, 2);
}
