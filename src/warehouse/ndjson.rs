//! Value encoding to NDJSON for BigQuery load jobs: the [`RowSink`] every source engine pushes
//! its rows into.
//!
//! Each engine decodes a column into a [`Val`] (borrowing from the row where it can) or a
//! [`Bad`] value; [`NdjsonWriter`] applies the table's policies, writes one JSON object per row
//! into a reusable line buffer and groups lines into ~1 MiB chunks.
//!
//! Output conventions (BigQuery JSON loading):
//! - INT64, NUMERIC and BIGNUMERIC as JSON strings (no 2^53 loss);
//! - FLOAT64 as JSON numbers (shortest round-trip form);
//! - TIMESTAMP `YYYY-MM-DDTHH:MM:SS.ffffffZ`, DATETIME without `Z`, DATE `YYYY-MM-DD`,
//!   TIME `HH:MM:SS.ffffff`;
//! - BYTES as standard base64; JSON as embedded raw JSON (whitespace outside strings removed);
//! - REPEATED fields as arrays (a NULL array is written `[]`).

use base64::Engine as _;
use bytes::Bytes;
use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

use super::rows::RowPolicy;
use crate::schema::{
    Bad, BadKind, BqType, ColumnMapping, Decoded, ExtractStats, FieldMode, GEOGRAPHY_REJECT,
    LINEAGE_RUN_ID, LINEAGE_SYNCED_AT, Lineage, RowSink, TooManyBadValues, TypePolicies, Val,
    WarehouseField,
};

/// Target chunk size sent to the sink.
pub const CHUNK_SIZE: usize = 1 << 20;
pub use super::rows::MAX_FAILURE_MESSAGES;

/// Integer and fraction digit counts of a decimal text, ignoring leading zeros of the integer
/// part and trailing zeros of the fraction.
fn decimal_digits(text: &str) -> (usize, usize) {
    let body = text.trim_start_matches('-');
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    (
        int.trim_start_matches('0').len(),
        frac.trim_end_matches('0').len(),
    )
}

fn push_uint(buf: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

fn push_int(buf: &mut Vec<u8>, value: i64) {
    if value < 0 {
        buf.push(b'-');
    }
    push_uint(buf, value.unsigned_abs());
}

fn push_padded(buf: &mut Vec<u8>, value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut rest = value;
    for at in (0..width).rev() {
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    buf.extend_from_slice(&digits[..width]);
}

fn push_date(buf: &mut Vec<u8>, date: NaiveDate) -> Result<(), Bad<'static>> {
    let year = date.year();
    if !(1..=9999).contains(&year) {
        return Err(Bad::new(
            BadKind::OutOfRange,
            format!("date {date} is outside 0001-01-01..9999-12-31"),
        ));
    }
    push_padded(buf, year.unsigned_abs(), 4);
    buf.push(b'-');
    push_padded(buf, date.month(), 2);
    buf.push(b'-');
    push_padded(buf, date.day(), 2);
    Ok(())
}

fn push_time(buf: &mut Vec<u8>, time: NaiveTime) {
    push_padded(buf, time.hour(), 2);
    buf.push(b':');
    push_padded(buf, time.minute(), 2);
    buf.push(b':');
    // A leap second (nanosecond >= 1e9) is written as :59.999999.
    let nanos = time.nanosecond();
    let (second, micros) = if nanos >= 1_000_000_000 {
        (59, 999_999)
    } else {
        (time.second(), nanos / 1000)
    };
    push_padded(buf, second, 2);
    buf.push(b'.');
    push_padded(buf, micros, 6);
}

fn push_datetime(buf: &mut Vec<u8>, value: NaiveDateTime) -> Result<(), Bad<'static>> {
    push_date(buf, value.date())?;
    buf.push(b'T');
    push_time(buf, value.time());
    Ok(())
}

/// Writes `text` as a JSON string.
pub fn push_json_str(buf: &mut Vec<u8>, text: &str) {
    buf.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..at]);
        if escape.is_empty() {
            buf.extend_from_slice(b"\\u00");
            buf.push(b"0123456789abcdef"[usize::from(byte >> 4)]);
            buf.push(b"0123456789abcdef"[usize::from(byte & 0xf)]);
        } else {
            buf.extend_from_slice(escape);
        }
        start = at + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

fn push_base64(buf: &mut Vec<u8>, bytes: &[u8]) {
    let engine = &base64::engine::general_purpose::STANDARD;
    let start = buf.len();
    let Some(len) = base64::encoded_len(bytes.len(), true) else {
        return;
    };
    buf.resize(start + len, 0);
    let written = engine.encode_slice(bytes, &mut buf[start..]).unwrap_or(0);
    buf.truncate(start + written);
}

fn push_f64(buf: &mut Vec<u8>, value: f64) -> Result<(), Bad<'static>> {
    if !value.is_finite() {
        return Err(Bad::new(
            BadKind::NonFinite,
            format!("non-finite float {value}"),
        ));
    }
    serde_json::to_writer(&mut *buf, &value)
        .map_err(|error| Bad::new(BadKind::Malformed, error.to_string()))
}

fn push_f32(buf: &mut Vec<u8>, value: f32) -> Result<(), Bad<'static>> {
    if !value.is_finite() {
        return Err(Bad::new(
            BadKind::NonFinite,
            format!("non-finite float {value}"),
        ));
    }
    serde_json::to_writer(&mut *buf, &value)
        .map_err(|error| Bad::new(BadKind::Malformed, error.to_string()))
}

/// Appends `json` with the whitespace outside strings removed, after checking it parses.
fn push_json(buf: &mut Vec<u8>, json: &[u8]) -> Result<(), Bad<'static>> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(json).is_err() {
        return Err(Bad::new(BadKind::Malformed, "invalid JSON document"));
    }
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            buf.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if !matches!(byte, b' ' | b'\n' | b'\r' | b'\t') {
            if byte == b'"' {
                in_string = true;
            }
            buf.push(byte);
        }
    }
    Ok(())
}

/// Whether a decimal text fits `NUMERIC(p,s)`/`BIGNUMERIC(p,s)` (or the unparameterised type).
pub(crate) fn check_decimal_fits(
    text: &str,
    bq_type: BqType,
    precision: Option<u32>,
    scale: Option<u32>,
) -> Result<(), Bad<'static>> {
    let (int_digits, frac_digits) = decimal_digits(text);
    let target = Target {
        bq_type,
        precision,
        scale,
    };
    let (max_int, max_frac) = target.decimal_bounds();
    let (max_int, max_frac) = (max_int as usize, max_frac as usize);
    if int_digits > max_int || frac_digits > max_frac {
        return Err(Bad::new(
            BadKind::OutOfRange,
            format!(
                "{text} does not fit {} (at most {max_int} integer and {max_frac} fraction digits)",
                bq_type.as_str()
            ),
        ));
    }
    Ok(())
}

/// How a field is written.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// BigQuery type.
    pub bq_type: BqType,
    /// Parameters.
    pub precision: Option<u32>,
    /// Parameters.
    pub scale: Option<u32>,
}

impl Target {
    /// How `field` is written.
    pub fn of(field: &WarehouseField) -> Self {
        Self {
            bq_type: field.bq_type,
            precision: field.precision,
            scale: field.scale,
        }
    }

    /// The most integer and fraction digits of a NUMERIC/BIGNUMERIC target: `(p - s, s)` of
    /// `NUMERIC(p,s)`, `(29, 9)` for NUMERIC, `(38, 38)` for BIGNUMERIC; the fraction digits
    /// are also the scale its Avro decimals are written at.
    pub fn decimal_bounds(self) -> (u32, u32) {
        match (self.bq_type, self.precision, self.scale) {
            (_, Some(p), Some(s)) => (p.saturating_sub(s), s),
            (_, Some(p), None) => (p, 0),
            (BqType::Numeric, ..) => (29, 9),
            _ => (38, 38),
        }
    }
}

/// A NULL inside an array.
pub(crate) fn null_element() -> Bad<'static> {
    Bad::new(
        BadKind::OutOfRange,
        "NULL array element (BigQuery arrays cannot hold NULL)",
    )
}

fn type_error(value: &Val<'_>, target: BqType) -> Bad<'static> {
    let what = match value {
        Val::Null => "NULL",
        Val::Bool(_) => "a boolean",
        Val::Int(_) | Val::UInt(_) => "an integer",
        Val::F32(_) | Val::F64(_) => "a float",
        Val::Decimal(_) => "a decimal",
        Val::Text(_) => "text",
        Val::Bytes(_) => "bytes",
        Val::Json(_) => "JSON",
        Val::Date(_) => "a date",
        Val::DateTime(_) | Val::Timestamp(_) => "a date-time",
        Val::Time(_) => "a time",
        Val::Array(_) => "an array",
    };
    Bad::new(
        BadKind::Malformed,
        format!("cannot write {what} into {}", target.as_str()),
    )
}

/// Appends one scalar value (not NULL, not an array) as `target`. On error nothing is appended.
///
/// The pairs written here are the conversions `mapping`'s overrides allow, one function per
/// value family.
pub fn write_scalar(
    buf: &mut Vec<u8>,
    value: &Val<'_>,
    target: Target,
) -> Result<(), Bad<'static>> {
    let start = buf.len();
    let result = match value {
        Val::Bool(b) => write_bool(buf, *b, target.bq_type),
        Val::Int(_) | Val::UInt(_) => write_integer(buf, value, target),
        Val::F32(_) | Val::F64(_) => write_float(buf, value, target),
        Val::Decimal(text) => write_decimal(buf, text, target),
        Val::Text(_) | Val::Bytes(_) | Val::Json(_) => write_text(buf, value, target.bq_type),
        Val::Date(_) | Val::DateTime(_) | Val::Timestamp(_) | Val::Time(_) => {
            write_temporal(buf, value, target.bq_type)
        }
        Val::Null | Val::Array(_) => Err(type_error(value, target.bq_type)),
    };
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

/// Writes `f` between double quotes.
fn quoted(buf: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) {
    buf.push(b'"');
    f(buf);
    buf.push(b'"');
}

/// BOOL as `true`/`false`, STRING as `"true"`/`"false"`, INT64 as `"1"`/`"0"`.
fn write_bool(buf: &mut Vec<u8>, b: bool, target: BqType) -> Result<(), Bad<'static>> {
    use BqType as T;
    let text: &[u8] = match (target, b) {
        (T::Bool, true) => b"true",
        (T::Bool, false) => b"false",
        (T::String, true) => b"\"true\"",
        (T::String, false) => b"\"false\"",
        (T::Int64, true) => b"\"1\"",
        (T::Int64, false) => b"\"0\"",
        (target, _) => return Err(type_error(&Val::Bool(b), target)),
    };
    buf.extend_from_slice(text);
    Ok(())
}

/// [`Val::Int`] and [`Val::UInt`].
fn write_integer(buf: &mut Vec<u8>, value: &Val<'_>, target: Target) -> Result<(), Bad<'static>> {
    use BqType as T;
    match (value, target.bq_type) {
        (Val::Int(n), T::Int64 | T::String) => {
            quoted(buf, |buf| push_int(buf, *n));
            Ok(())
        }
        (Val::UInt(n), T::Int64) if i64::try_from(*n).is_err() => Err(Bad::new(
            BadKind::OutOfRange,
            format!("{n} does not fit INT64"),
        )),
        (Val::UInt(n), T::Int64 | T::String) => {
            quoted(buf, |buf| push_uint(buf, *n));
            Ok(())
        }
        (Val::Int(_) | Val::UInt(_), T::Numeric | T::BigNumeric) => {
            let text = match value {
                Val::Int(n) => n.to_string(),
                Val::UInt(n) => n.to_string(),
                _ => String::new(),
            };
            check_decimal_fits(&text, target.bq_type, target.precision, target.scale)?;
            push_json_str(buf, &text);
            Ok(())
        }
        (Val::Int(n), T::Float64) => push_f64(buf, *n as f64),
        (Val::UInt(n), T::Float64) => push_f64(buf, *n as f64),
        (Val::Int(n), T::Bool) => {
            buf.extend_from_slice(if *n != 0 { b"true" } else { b"false" });
            Ok(())
        }
        (other, target) => Err(type_error(other, target)),
    }
}

/// [`Val::F32`] and [`Val::F64`]: FLOAT64 as a number; STRING, NUMERIC, BIGNUMERIC and INT64
/// from the exact decimal of the shortest text.
fn write_float(buf: &mut Vec<u8>, value: &Val<'_>, target: Target) -> Result<(), Bad<'static>> {
    use BqType as T;
    match (value, target.bq_type) {
        (Val::F64(f), T::Float64) => return push_f64(buf, *f),
        (Val::F32(f), T::Float64) => return push_f32(buf, *f),
        (_, T::String | T::Numeric | T::BigNumeric | T::Int64) => {}
        (other, target) => return Err(type_error(other, target)),
    }
    let mut text = Vec::new();
    match value {
        Val::F32(f) => push_f32(&mut text, *f)?,
        Val::F64(f) => push_f64(&mut text, *f)?,
        _ => {}
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    if target.bq_type == T::String {
        push_json_str(buf, &text);
        return Ok(());
    }
    let Some(decimal) = float_to_decimal(&text) else {
        return Err(Bad::new(
            BadKind::OutOfRange,
            format!("{text} is not representable as a decimal"),
        ));
    };
    if target.bq_type == T::Int64 && decimal.contains('.') {
        return Err(Bad::new(
            BadKind::OutOfRange,
            format!("{text} is not an integer"),
        ));
    }
    if target.bq_type != T::Int64 {
        check_decimal_fits(&decimal, target.bq_type, target.precision, target.scale)?;
    }
    push_json_str(buf, &decimal);
    Ok(())
}

/// [`Val::Decimal`].
fn write_decimal(buf: &mut Vec<u8>, text: &str, target: Target) -> Result<(), Bad<'static>> {
    use BqType as T;
    match target.bq_type {
        T::Numeric | T::BigNumeric => {
            check_decimal_fits(text, target.bq_type, target.precision, target.scale)?;
            push_json_str(buf, text);
            Ok(())
        }
        T::String => {
            push_json_str(buf, text);
            Ok(())
        }
        T::Int64 => {
            let (int, frac) = text.split_once('.').unwrap_or((text, ""));
            if frac.bytes().any(|b| b != b'0') || int.parse::<i64>().is_err() {
                return Err(Bad::new(
                    BadKind::OutOfRange,
                    format!("{text} does not fit INT64"),
                ));
            }
            push_json_str(buf, int);
            Ok(())
        }
        T::Float64 => match text.parse::<f64>() {
            Ok(f) => push_f64(buf, f),
            Err(_) => Err(Bad::new(
                BadKind::Malformed,
                format!("`{text}` is not a number"),
            )),
        },
        target => Err(type_error(&Val::Decimal(text.into()), target)),
    }
}

/// Why the source could not deliver a geography value (flagged by its dialect with
/// [`GEOGRAPHY_REJECT`]): a bad value of its row, never a failed load.
fn geography_reject(reason: &str) -> Bad<'static> {
    match reason.strip_prefix("srid ") {
        Some(srid) => Bad::new(
            BadKind::OutOfRange,
            format!(
                "geometry in SRID {srid} cannot be converted to WGS 84 (SRID 4326) for GEOGRAPHY on this server"
            ),
        ),
        None => Bad::new(
            BadKind::Malformed,
            format!(
                "geometry is not valid for GEOGRAPHY ({})",
                reason.strip_prefix("invalid ").unwrap_or(reason)
            ),
        ),
    }
}

/// [`Val::Text`], [`Val::Bytes`] and [`Val::Json`].
fn write_text(buf: &mut Vec<u8>, value: &Val<'_>, target: BqType) -> Result<(), Bad<'static>> {
    use BqType as T;
    match (value, target) {
        (Val::Text(text), T::Json) => {
            let mut json = Vec::new();
            push_json(&mut json, text.as_bytes())?;
            buf.extend_from_slice(&json);
            Ok(())
        }
        (Val::Text(text), T::Bytes) => {
            quoted(buf, |buf| push_base64(buf, text.as_bytes()));
            Ok(())
        }
        (Val::Text(text), T::Geography) if text.starts_with(GEOGRAPHY_REJECT) => {
            Err(geography_reject(&text[GEOGRAPHY_REJECT.len()..]))
        }
        (Val::Text(text), _) => {
            push_json_str(buf, text);
            Ok(())
        }
        (Val::Bytes(bytes), T::Bytes | T::String) => {
            quoted(buf, |buf| push_base64(buf, bytes));
            Ok(())
        }
        (Val::Json(json), T::Json) => push_json(buf, json),
        (Val::Json(json), T::String) => {
            let mut compact = Vec::new();
            push_json(&mut compact, json)?;
            push_json_str(buf, &String::from_utf8_lossy(&compact));
            Ok(())
        }
        (other, target) => Err(type_error(other, target)),
    }
}

/// [`Val::Date`], [`Val::DateTime`], [`Val::Timestamp`] and [`Val::Time`].
fn write_temporal(buf: &mut Vec<u8>, value: &Val<'_>, target: BqType) -> Result<(), Bad<'static>> {
    use BqType as T;
    match (value, target) {
        (Val::Date(date), T::Date | T::String) => {
            buf.push(b'"');
            push_date(buf, *date)?;
            buf.push(b'"');
        }
        (Val::Date(date), T::Datetime | T::Timestamp) => {
            buf.push(b'"');
            push_date(buf, *date)?;
            buf.extend_from_slice(b"T00:00:00.000000");
            if target == T::Timestamp {
                buf.push(b'Z');
            }
            buf.push(b'"');
        }
        (
            Val::DateTime(moment) | Val::Timestamp(moment),
            T::Datetime | T::Timestamp | T::String,
        ) => {
            buf.push(b'"');
            push_datetime(buf, *moment)?;
            let zoned = match target {
                T::Timestamp => true,
                T::String => matches!(value, Val::Timestamp(_)),
                _ => false,
            };
            if zoned {
                buf.push(b'Z');
            }
            buf.push(b'"');
        }
        (Val::Time(time), T::Time | T::String) => quoted(buf, |buf| push_time(buf, *time)),
        (other, target) => return Err(type_error(other, target)),
    }
    Ok(())
}

/// `1e-7` → `0.0000001`, `1.5e3` → `1500`: the exact decimal of a float's shortest text.
fn float_to_decimal(text: &str) -> Option<String> {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (text, 0),
    };
    let negative = mantissa.starts_with('-');
    let mantissa = mantissa.trim_start_matches('-');
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let point = i64::try_from(int.len()).ok()? + i64::from(exponent);
    if !(-400..=400).contains(&point) {
        return None;
    }
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    let len = i64::try_from(digits.len()).ok()?;
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', usize::try_from(-point).ok()?));
        out.push_str(&digits);
    } else if point >= len {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', usize::try_from(point - len).ok()?));
    } else {
        let split = usize::try_from(point).ok()?;
        out.push_str(&digits[..split]);
        out.push('.');
        out.push_str(&digits[split..]);
    }
    // Normalise: strip leading zeros of the integer part and trailing zeros of the fraction.
    let (sign, body) = out
        .split_once('-')
        .map_or(("", out.as_str()), |(_, b)| ("-", b));
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    Some(if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

/// One column as the encoder writes it.
struct Column {
    /// `"name":` (with a leading `,` except for the first).
    key: Vec<u8>,
    target: Target,
    mode: FieldMode,
}

/// Per-extraction NDJSON encoder: buffers; policies and statistics are a [`RowPolicy`].
pub struct NdjsonWriter {
    columns: Vec<Column>,
    policy: RowPolicy,
    line: Vec<u8>,
    chunk: Vec<u8>,
    /// Rows in `chunk`.
    chunk_rows: u64,
    /// Most rows per chunk (the table's `batch_size`).
    batch_rows: u64,
    /// Written after the columns of every row: the lineage columns, if any.
    suffix: Vec<u8>,
}

impl NdjsonWriter {
    /// The writer with the lineage columns (`lineage: true`) after the columns of every row:
    /// the run's start as a TIMESTAMP and the run id, the same on every row.
    pub fn with_lineage(mut self, lineage: &Lineage) -> Self {
        let synced_at = chrono::DateTime::from_timestamp_micros(lineage.synced_at_micros)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let mut suffix = Vec::new();
        for (name, value) in [
            (LINEAGE_SYNCED_AT, synced_at.as_str()),
            (LINEAGE_RUN_ID, lineage.run_id.as_str()),
        ] {
            suffix.push(if self.columns.is_empty() && suffix.is_empty() {
                b'{'
            } else {
                b','
            });
            push_json_str(&mut suffix, name);
            suffix.push(b':');
            push_json_str(&mut suffix, value);
        }
        self.suffix = suffix;
        self
    }

    /// Holds the bad-value budget against `shared`, the table's count over all its chunks.
    pub fn share_budget(&mut self, shared: super::rows::SharedBadValues) {
        self.policy.share_budget(shared);
    }

    /// A writer for `columns` of the table `table` (a label for messages). `policies` and
    /// `max_bad_values` (`None` = unlimited) govern bad values; `key_columns` are the source
    /// columns naming a row in failure messages; a chunk holds at most `batch_size` rows.
    pub fn new(
        table: String,
        columns: &[ColumnMapping],
        policies: TypePolicies,
        max_bad_values: Option<u64>,
        key_columns: &[String],
        batch_size: u64,
    ) -> Self {
        let encoded = columns
            .iter()
            .enumerate()
            .map(|(index, column)| {
                let mut key = Vec::new();
                key.push(if index == 0 { b'{' } else { b',' });
                push_json_str(&mut key, &column.target);
                key.push(b':');
                Column {
                    key,
                    target: Target::of(&column.field),
                    mode: column.field.mode,
                }
            })
            .collect();
        Self {
            columns: encoded,
            policy: RowPolicy::new(table, columns, policies, max_bad_values, key_columns),
            line: Vec::with_capacity(4096),
            chunk: Vec::with_capacity(CHUNK_SIZE + 64 * 1024),
            chunk_rows: 0,
            batch_rows: batch_size.max(1),
            suffix: Vec::new(),
        }
    }

    fn write_value(&mut self, index: usize, value: Val<'_>) -> Result<(), String> {
        let column = &self.columns[index];
        let (target, mode) = (column.target, column.mode);
        match value {
            Val::Null if mode == FieldMode::Repeated => {
                self.line.extend_from_slice(b"[]");
                Ok(())
            }
            Val::Null if mode == FieldMode::Required => Err(self.policy.null_in_required(index)),
            Val::Null => {
                self.line.extend_from_slice(b"null");
                Ok(())
            }
            Val::Array(items) => {
                self.line.push(b'[');
                for (at, item) in items.into_iter().enumerate() {
                    if at > 0 {
                        self.line.push(b',');
                    }
                    let written = match item {
                        Val::Null => Err(null_element()),
                        item => write_scalar(&mut self.line, &item, target),
                    };
                    if let Err(bad) = written {
                        match self.policy.resolve(index, bad)? {
                            Some(item) => write_scalar(&mut self.line, &item, target)
                                .map_err(|bad| bad.message)?,
                            None => {
                                return Err(format!(
                                    "column `{}`: NULL array element",
                                    self.policy.name(index)
                                ));
                            }
                        }
                    }
                }
                self.line.push(b']');
                Ok(())
            }
            value => match write_scalar(&mut self.line, &value, target) {
                Ok(()) => Ok(()),
                Err(bad) => match self.policy.resolve(index, bad)? {
                    Some(value) => {
                        write_scalar(&mut self.line, &value, target).map_err(|bad| bad.message)
                    }
                    None if mode == FieldMode::Repeated => {
                        self.line.extend_from_slice(b"[]");
                        Ok(())
                    }
                    None => {
                        self.line.extend_from_slice(b"null");
                        Ok(())
                    }
                },
            },
        }
    }

    /// Encodes one row. `decode(i)` decodes column `i` of the mapping.
    fn encode_row<'r>(
        &mut self,
        mut decode: impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues> {
        self.line.clear();
        self.policy.begin_row();
        let mut outcome = Ok(());
        for index in 0..self.columns.len() {
            let key = std::mem::take(&mut self.columns[index].key);
            self.line.extend_from_slice(&key);
            self.columns[index].key = key;
            let written = self
                .policy
                .decode(index, &mut decode)
                .and_then(|value| self.write_value(index, value));
            if written.is_err() {
                outcome = written;
                break;
            }
        }
        let outcome = outcome.map(|()| {
            self.line.extend_from_slice(&self.suffix);
            self.line.extend_from_slice(b"}\n");
            self.chunk.extend_from_slice(&self.line);
            self.chunk_rows += 1;
            self.line.len() as u64
        });
        self.policy.end_row(outcome, &mut decode)
    }

    fn take_chunk(&mut self) -> Bytes {
        self.chunk_rows = 0;
        Bytes::from(std::mem::replace(
            &mut self.chunk,
            Vec::with_capacity(CHUNK_SIZE + 64 * 1024),
        ))
    }
}

impl RowSink for NdjsonWriter {
    fn push<'r>(
        &mut self,
        decode: impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues> {
        self.encode_row(decode)
    }

    /// A full chunk to send, if the buffer reached [`CHUNK_SIZE`] or `batch_size` rows.
    fn full_chunk(&mut self) -> Option<Bytes> {
        (self.chunk.len() >= CHUNK_SIZE || self.chunk_rows >= self.batch_rows)
            .then(|| self.take_chunk())
    }

    fn finish(&mut self) -> Option<Bytes> {
        (!self.chunk.is_empty()).then(|| self.take_chunk())
    }

    fn stats(&self) -> &ExtractStats {
        &self.policy.stats
    }
}

#[cfg(test)]
mod tests;
