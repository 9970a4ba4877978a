//! Value encoding to Avro object container files for BigQuery load jobs
//! (`sourceFormat: AVRO`, `useAvroLogicalTypes: true`): the [`RowSink`] a table uses when its
//! plan says `format: avro`. Policies, the bad-value budget and statistics are the shared
//! [`RowPolicy`], exactly as for NDJSON.
//!
//! One extraction is one container file: the first chunk starts with the header (schema,
//! codec, sync marker), then every chunk is whole snappy-compressed blocks, each ended by the
//! marker. Chunks concatenated in order are therefore a valid file, so the resumable upload
//! can cut them anywhere. The crate writes the header and compresses each block; the datum
//! encoding of one row (the Avro binary encoding of a record is its fields' encodings in
//! order) is written here, because `apache-avro` 0.21 exposes only its `Value`-based encoder,
//! which allocates a `String` per field and per row.
//!
//! Types, following "Loading Avro data" (cloud.google.com/bigquery/docs/loading-data-cloud-storage-avro,
//! "Logical types" and "Decimal logical type"):
//! - INT64 `long` (exact beyond 2^53), FLOAT64 `double`, BOOL `boolean`, STRING `string`,
//!   BYTES `bytes` (raw, no base64);
//! - NUMERIC/BIGNUMERIC `bytes` with the `decimal` logical type at the field's precision and
//!   scale (NUMERIC 38,9 and BIGNUMERIC 76,38 when unparameterised); the load sets
//!   `decimalTargetTypes` so BigQuery keeps them NUMERIC/BIGNUMERIC;
//! - DATE `int` `date`, TIME `long` `time-micros`, TIMESTAMP `long` `timestamp-micros`;
//! - DATETIME `string` with `logicalType: datetime` (`YYYY-MM-DD HH:MM:SS.ffffff`): the
//!   BigQuery convention for civil date-times (Beam's `BigQueryAvroUtils` writes the same);
//! - NULLABLE as the union `["null", T]`, REPEATED as `array` (a NULL array is written empty).
//!
//! JSON, GEOGRAPHY and INTERVAL have no exact Avro form (BigQuery reads them from strings
//! only through a billed conversion), so such a table is loaded as NDJSON:
//! [`avro_obstacle`] says why, and the plan shows it.

use std::time::{SystemTime, UNIX_EPOCH};

use apache_avro::{Codec as AvroCodec, Schema, Writer};
use base64::Engine as _;
use bytes::Bytes;
use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use num_bigint::BigInt;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ndjson::{CHUNK_SIZE, Target, check_decimal_fits, null_element, write_scalar};
use super::rows::RowPolicy;
pub use crate::schema::policy::avro_obstacle;
use crate::schema::{
    Bad, BadKind, BqType, ColumnMapping, Decoded, ExtractStats, FieldMode, Lineage, RawEncoding,
    RawRow, RowSink, TooManyBadValues, TypePolicies, Val, WarehouseField,
};

/// Precision and scale of a decimal field's Avro `decimal` type.
fn decimal_params(field: &WarehouseField) -> (u32, u32) {
    match (field.bq_type, field.precision, field.scale) {
        (_, Some(p), Some(s)) => (p, s),
        (_, Some(p), None) => (p, 0),
        (BqType::Numeric, ..) => (38, 9),
        _ => (76, 38),
    }
}

/// The Avro type of one value of `field`.
fn avro_type(field: &WarehouseField) -> serde_json::Value {
    match field.bq_type {
        BqType::Int64 => json!("long"),
        BqType::Float64 => json!("double"),
        BqType::Bool => json!("boolean"),
        BqType::Bytes => json!("bytes"),
        BqType::Numeric | BqType::BigNumeric => {
            let (precision, scale) = decimal_params(field);
            json!({"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale})
        }
        BqType::Date => json!({"type": "int", "logicalType": "date"}),
        BqType::Time => json!({"type": "long", "logicalType": "time-micros"}),
        BqType::Timestamp => json!({"type": "long", "logicalType": "timestamp-micros"}),
        BqType::Datetime => json!({"type": "string", "logicalType": "datetime"}),
        _ => json!("string"),
    }
}

/// The Avro record schema of a load with `fields`.
pub fn avro_schema(fields: &[WarehouseField]) -> serde_json::Value {
    let fields: Vec<serde_json::Value> = fields
        .iter()
        .map(|field| {
            let item = avro_type(field);
            match field.mode {
                FieldMode::Required => json!({"name": field.name, "type": item}),
                FieldMode::Nullable => {
                    json!({"name": field.name, "type": ["null", item], "default": null})
                }
                FieldMode::Repeated => {
                    json!({"name": field.name, "type": {"type": "array", "items": item}})
                }
            }
        })
        .collect();
    json!({"type": "record", "name": "Row", "fields": fields})
}

/// Days from 0001-01-01 (day 1 of the common era, as chrono counts) to 1970-01-01, the epoch
/// of Avro's `date`.
const UNIX_DAYS_FROM_CE: i64 = 719_163;

/// Avro `long`/`int`: zig-zag, then base-128 varint.
fn put_long(buf: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

/// Avro `bytes`/`string`: length, then the bytes.
fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_long(buf, bytes.len() as i64);
    buf.extend_from_slice(bytes);
}

fn check_year(date: NaiveDate) -> Result<(), Bad<'static>> {
    if (1..=9999).contains(&date.year()) {
        Ok(())
    } else {
        Err(Bad::new(
            BadKind::OutOfRange,
            format!("date {date} is outside 0001-01-01..9999-12-31"),
        ))
    }
}

/// Microseconds of `time` (a leap second is written as :59.999999, as in NDJSON).
fn time_micros(time: NaiveTime) -> i64 {
    let nanos = time.nanosecond();
    let (second, micros) = if nanos >= 1_000_000_000 {
        (59, 999_999)
    } else {
        (time.second(), nanos / 1000)
    };
    i64::from(time.num_seconds_from_midnight() - time.second() + second) * 1_000_000
        + i64::from(micros)
}

fn epoch_micros(moment: NaiveDateTime) -> Result<i64, Bad<'static>> {
    check_year(moment.date())?;
    let days = i64::from(moment.date().num_days_from_ce()) - UNIX_DAYS_FROM_CE;
    Ok(days * 86_400_000_000 + time_micros(moment.time()))
}

fn put_datetime_text(buf: &mut Vec<u8>, moment: NaiveDateTime) -> Result<(), Bad<'static>> {
    check_year(moment.date())?;
    put_civil_text(buf, moment.date(), time_micros(moment.time()) as u64);
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` of `date` (year 1 to 9999) at `micros` past midnight.
fn put_civil_text(buf: &mut Vec<u8>, date: NaiveDate, micros: u64) {
    // Digit by digit: chrono's `format` parses its pattern on every call, which was a tenth
    // of an Avro extraction's time.
    let mut text = *b"0000-00-00 00:00:00.000000";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for slot in text[at..at + width].iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, u64::from(date.year().unsigned_abs()));
    put(5, 2, u64::from(date.month()));
    put(8, 2, u64::from(date.day()));
    put(11, 2, micros / 3_600_000_000);
    put(14, 2, micros / 60_000_000 % 60);
    put(17, 2, micros / 1_000_000 % 60);
    put(20, 6, micros % 1_000_000);
    put_bytes(buf, &text);
}

/// The double BigQuery reads from the NDJSON writer's text of `f`: the shortest text of the
/// f32 (0.1, not 0.100000001490116), parsed as a double.
fn f32_as_double(scratch: &mut Vec<u8>, f: f32) -> Option<f64> {
    scratch.clear();
    serde_json::to_writer(&mut *scratch, &f).ok()?;
    std::str::from_utf8(scratch).ok()?.parse::<f64>().ok()
}

/// A decimal text as the two's-complement big-endian unscaled integer at `scale`. The text
/// has already been checked to fit. Up to 38 digits (every NUMERIC, most BIGNUMERIC) are
/// accumulated in an `i128` without allocating; longer ones go through `BigInt`.
fn put_decimal(buf: &mut Vec<u8>, text: &str, scale: u32) -> Result<(), Bad<'static>> {
    let malformed = || Bad::new(BadKind::Malformed, format!("`{text}` is not a decimal"));
    let (negative, body) = match text.strip_prefix('-') {
        Some(body) => (true, body),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let frac = frac.trim_end_matches('0');
    let int = int.trim_start_matches('0');
    let pad = (scale as usize).saturating_sub(frac.len());
    let digits = int.bytes().chain(frac.bytes());
    if int.len() + frac.len() + pad <= 38 {
        let mut n: i128 = 0;
        for digit in digits {
            if !digit.is_ascii_digit() {
                return Err(malformed());
            }
            n = n * 10 + i128::from(digit - b'0');
        }
        n *= 10i128.pow(pad as u32);
        if negative {
            n = -n;
        }
        put_unscaled(buf, n);
        return Ok(());
    }
    let mut text = String::with_capacity(int.len() + frac.len() + pad + 1);
    if negative {
        text.push('-');
    }
    text.extend(digits.map(char::from));
    text.extend(std::iter::repeat_n('0', pad));
    let n = BigInt::parse_bytes(text.as_bytes(), 10).ok_or_else(malformed)?;
    put_bytes(buf, &n.to_signed_bytes_be());
    Ok(())
}

/// An unscaled decimal as Avro `bytes`: two's complement, big-endian, in the fewest bytes that
/// keep the sign bit.
fn put_unscaled(buf: &mut Vec<u8>, n: i128) {
    let magnitude = if n < 0 { !n } else { n };
    let len = (128 - magnitude.leading_zeros() as usize) / 8 + 1;
    put_bytes(buf, &n.to_be_bytes()[16 - len..]);
}

/// Appends one scalar value (not NULL, not an array) as `target`. On error nothing is
/// appended. The common pairs are written directly; every other conversion goes through the
/// NDJSON writer's (the same checks, the same texts) and is decoded from its JSON.
pub fn write_avro_scalar(
    buf: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    value: &Val<'_>,
    target: Target,
) -> Result<(), Bad<'static>> {
    use BqType as T;
    let start = buf.len();
    let result = match (value, target.bq_type) {
        (Val::Int(n), T::Int64) => {
            put_long(buf, *n);
            Ok(())
        }
        (Val::UInt(n), T::Int64) if i64::try_from(*n).is_ok() => {
            put_long(buf, *n as i64);
            Ok(())
        }
        (Val::Bool(b), T::Bool) => {
            buf.push(u8::from(*b));
            Ok(())
        }
        (Val::F64(f), T::Float64) if f.is_finite() => {
            buf.extend_from_slice(&f.to_le_bytes());
            Ok(())
        }
        (Val::F32(f), T::Float64) if f.is_finite() => f32_as_double(scratch, *f)
            .map(|double| buf.extend_from_slice(&double.to_le_bytes()))
            .ok_or_else(|| Bad::new(BadKind::Malformed, format!("cannot write {f} as Avro"))),
        (Val::Text(text), T::String) => {
            put_bytes(buf, text.as_bytes());
            Ok(())
        }
        (Val::Text(text), T::Bytes) => {
            put_bytes(buf, text.as_bytes());
            Ok(())
        }
        (Val::Bytes(bytes), T::Bytes) => {
            put_bytes(buf, bytes);
            Ok(())
        }
        (Val::Decimal(text), T::Numeric | T::BigNumeric) => {
            check_decimal_fits(text, target.bq_type, target.precision, target.scale)
                .and_then(|()| put_decimal(buf, text, target.decimal_bounds().1))
        }
        (Val::Date(date), T::Date) => check_year(*date).map(|()| {
            put_long(buf, i64::from(date.num_days_from_ce()) - UNIX_DAYS_FROM_CE);
        }),
        (Val::Timestamp(moment) | Val::DateTime(moment), T::Timestamp) => {
            epoch_micros(*moment).map(|micros| put_long(buf, micros))
        }
        (Val::Timestamp(moment) | Val::DateTime(moment), T::Datetime) => {
            put_datetime_text(buf, *moment)
        }
        (Val::Date(date), T::Timestamp | T::Datetime) => {
            let moment = date.and_time(NaiveTime::MIN);
            if target.bq_type == T::Timestamp {
                epoch_micros(moment).map(|micros| put_long(buf, micros))
            } else {
                put_datetime_text(buf, moment)
            }
        }
        (Val::Time(time), T::Time) => {
            put_long(buf, time_micros(*time));
            Ok(())
        }
        _ => via_json(buf, scratch, value, target),
    };
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

/// The conversions the fast paths leave out, through the NDJSON writer's text.
fn via_json(
    buf: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    value: &Val<'_>,
    target: Target,
) -> Result<(), Bad<'static>> {
    use BqType as T;
    scratch.clear();
    write_scalar(scratch, value, target)?;
    let malformed =
        |what: &str| Bad::new(BadKind::Malformed, format!("cannot write {what} as Avro"));
    let json: serde_json::Value =
        serde_json::from_slice(scratch).map_err(|_| malformed("this value"))?;
    let text = json.as_str();
    match (target.bq_type, text) {
        (T::String, Some(text)) => put_bytes(buf, text.as_bytes()),
        (T::Int64, Some(text)) => put_long(buf, text.parse().map_err(|_| malformed(text))?),
        (T::Numeric | T::BigNumeric, Some(text)) => {
            put_decimal(buf, text, target.decimal_bounds().1)?;
        }
        (T::Float64, None) => {
            let f = json.as_f64().ok_or_else(|| malformed("this number"))?;
            buf.extend_from_slice(&f.to_le_bytes());
        }
        (T::Bool, None) => buf.push(u8::from(json.as_bool().ok_or_else(|| malformed("this"))?)),
        (T::Bytes, Some(text)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| malformed(text))?;
            put_bytes(buf, &bytes);
        }
        (T::Date, Some(text)) => {
            let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| malformed(text))?;
            check_year(date)?;
            put_long(buf, i64::from(date.num_days_from_ce()) - UNIX_DAYS_FROM_CE);
        }
        (T::Timestamp | T::Datetime, Some(text)) => {
            let moment = parse_moment(text).ok_or_else(|| malformed(text))?;
            if target.bq_type == T::Timestamp {
                put_long(buf, epoch_micros(moment)?);
            } else {
                put_datetime_text(buf, moment)?;
            }
        }
        (T::Time, Some(text)) => {
            let time =
                NaiveTime::parse_from_str(text, "%H:%M:%S%.f").map_err(|_| malformed(text))?;
            put_long(buf, time_micros(time));
        }
        (target, _) => return Err(malformed(target.as_str())),
    }
    Ok(())
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.f][Z]`.
fn parse_moment(text: &str) -> Option<NaiveDateTime> {
    let text = text.strip_suffix('Z').unwrap_or(text);
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
}

/// One column as the encoder writes it.
struct Column {
    target: Target,
    mode: FieldMode,
    /// How its values are written straight from PostgreSQL's binary format, if they can be.
    pg_direct: Option<pg_binary::Direct>,
}

/// Per-extraction Avro encoder: one container file, cut into chunks of whole blocks.
pub struct AvroWriter {
    columns: Vec<Column>,
    policy: RowPolicy,
    /// The file header, until the first chunk carries it.
    header: Option<Vec<u8>>,
    marker: [u8; 16],
    /// Encoded rows of the current block.
    block: Vec<u8>,
    block_rows: u64,
    batch_rows: u64,
    scratch: Vec<u8>,
    /// The file's fields (the load schema's, in order).
    fields: Vec<WarehouseField>,
    /// Encoded after the columns of every row: the lineage columns, if any.
    suffix: Vec<u8>,
    /// Compresses full blocks while the next is encoded.
    blocks: Box<blocks::Blocks>,
}

impl AvroWriter {
    /// The writer with the lineage columns (`lineage: true`) after the columns of every row:
    /// `timestamp-micros` and `string` (both NULLABLE unions), the same on every row.
    pub fn with_lineage(mut self, lineage: &Lineage) -> Self {
        self.fields.extend(crate::schema::lineage_fields());
        if self.header.is_some() {
            self.header = Some(header(&self.fields, self.marker));
        }
        let mut suffix = Vec::new();
        put_long(&mut suffix, 1);
        put_long(&mut suffix, lineage.synced_at_micros);
        put_long(&mut suffix, 1);
        put_bytes(&mut suffix, lineage.run_id.as_bytes());
        self.suffix = suffix;
        self
    }

    /// Holds the bad-value budget against `shared`, the table's count over all its chunks.
    pub fn share_budget(&mut self, shared: super::rows::SharedBadValues) {
        self.policy.share_budget(shared);
    }

    /// A writer for `columns` of the table `table`, with the same arguments as
    /// [`NdjsonWriter::new`](super::NdjsonWriter::new); `fields` is the load schema (the
    /// staging table's fields: the file's schema must match them by name).
    pub fn new(
        table: String,
        columns: &[ColumnMapping],
        policies: TypePolicies,
        max_bad_values: Option<u64>,
        key_columns: &[String],
        batch_size: u64,
    ) -> Self {
        let fields: Vec<WarehouseField> = columns
            .iter()
            .map(|column| WarehouseField {
                name: column.target.clone(),
                ..column.field.clone()
            })
            .collect();
        let mut seed = Sha256::new();
        seed.update(table.as_bytes());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        seed.update(nanos.to_le_bytes());
        let mut marker = [0u8; 16];
        marker.copy_from_slice(&seed.finalize()[..16]);
        Self {
            columns: columns
                .iter()
                .map(|column| {
                    let target = Target::of(&column.field);
                    let mode = column.field.mode;
                    Column {
                        target,
                        mode,
                        pg_direct: pg_binary::Direct::of(&column.codec, target, mode),
                    }
                })
                .collect(),
            policy: RowPolicy::new(table, columns, policies, max_bad_values, key_columns),
            header: Some(header(&fields, marker)),
            fields,
            suffix: Vec::new(),
            marker,
            block: Vec::with_capacity(CHUNK_SIZE + 64 * 1024),
            block_rows: 0,
            batch_rows: batch_size.max(1),
            scratch: Vec::new(),
            blocks: Box::new(blocks::Blocks::new(marker)),
        }
    }

    fn write_value(&mut self, index: usize, value: Val<'_>) -> Result<(), String> {
        let Column { target, mode, .. } = self.columns[index];
        let nullable = mode == FieldMode::Nullable;
        match value {
            Val::Null if mode == FieldMode::Repeated => put_long(&mut self.block, 0),
            Val::Null if mode == FieldMode::Required => {
                return Err(self.policy.null_in_required(index));
            }
            Val::Null => put_long(&mut self.block, 0),
            Val::Array(items) if mode == FieldMode::Repeated => {
                if !items.is_empty() {
                    put_long(&mut self.block, items.len() as i64);
                    for item in items {
                        self.write_element(index, item, target)?;
                    }
                }
                put_long(&mut self.block, 0);
            }
            Val::Array(_) => {
                return Err(format!(
                    "column `{}`: an array in a non-REPEATED field",
                    self.policy.name(index)
                ));
            }
            value => {
                let at = self.block.len();
                if nullable {
                    put_long(&mut self.block, 1);
                }
                if mode == FieldMode::Repeated {
                    put_long(&mut self.block, 1);
                }
                let written = write_avro_scalar(&mut self.block, &mut self.scratch, &value, target);
                if let Err(bad) = written {
                    self.block.truncate(at);
                    match self.policy.resolve(index, bad)? {
                        Some(value) => return self.write_value(index, value),
                        None => return self.write_value(index, Val::Null),
                    }
                }
                if mode == FieldMode::Repeated {
                    put_long(&mut self.block, 0);
                }
            }
        }
        Ok(())
    }

    fn write_element(&mut self, index: usize, item: Val<'_>, target: Target) -> Result<(), String> {
        let written = match &item {
            Val::Null => Err(null_element()),
            item => write_avro_scalar(&mut self.block, &mut self.scratch, item, target),
        };
        let Err(bad) = written else { return Ok(()) };
        match self.policy.resolve(index, bad)? {
            Some(item) => write_avro_scalar(&mut self.block, &mut self.scratch, &item, target)
                .map_err(|bad| bad.message),
            None => Err(format!(
                "column `{}`: NULL array element",
                self.policy.name(index)
            )),
        }
    }

    /// Writes column `index` of `raw` directly (see [`pg_binary`]); `false`, with nothing
    /// written, where the generic path must.
    fn write_direct(&mut self, index: usize, raw: &RawRow<'_>) -> bool {
        let column = &self.columns[index];
        let direct = match (raw.encoding, column.pg_direct) {
            (RawEncoding::PostgresBinary, Some(direct)) => direct,
            (RawEncoding::PostgresBinary, None) => return false,
        };
        let nullable = column.mode == FieldMode::Nullable;
        let Some(bytes) = raw.field(index) else {
            // NULL: the union's first branch; a REQUIRED field's NULL is the policy's.
            if nullable {
                put_long(&mut self.block, 0);
            }
            return nullable;
        };
        let at = self.block.len();
        if nullable {
            put_long(&mut self.block, 1);
        }
        let written = direct.write(bytes, &mut self.block, &mut self.scratch);
        if !written {
            self.block.truncate(at);
        }
        written
    }

    fn encode_row<'r>(
        &mut self,
        raw: Option<RawRow<'r>>,
        mut decode: impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues> {
        // The row is written at the block's end, and cut off again if it fails.
        let start = self.block.len();
        self.policy.begin_row();
        let mut outcome = Ok(());
        for index in 0..self.columns.len() {
            if raw
                .as_ref()
                .is_some_and(|raw| self.write_direct(index, raw))
            {
                continue;
            }
            let written = self
                .policy
                .decode(index, &mut decode)
                .and_then(|value| self.write_value(index, value));
            if written.is_err() {
                outcome = written;
                break;
            }
        }
        // The row's bytes are counted once compressed, per block (see `chunk`).
        let outcome = match outcome {
            Ok(()) => {
                self.block.extend_from_slice(&self.suffix);
                self.block_rows += 1;
                Ok(0)
            }
            Err(message) => {
                self.block.truncate(start);
                Err(message)
            }
        };
        self.policy.end_row(outcome, &mut decode)
    }

    /// Hands the current block to the compressor (see [`blocks`]).
    fn submit_block(&mut self) -> Option<Vec<u8>> {
        if self.block_rows == 0 {
            return None;
        }
        let next = self.blocks.buffer(CHUNK_SIZE + 64 * 1024);
        let block = std::mem::replace(&mut self.block, next);
        let rows = std::mem::take(&mut self.block_rows);
        self.blocks.submit(block, rows)
    }

    /// `framed` blocks as a chunk to send, after the header if it has not been sent.
    fn chunk(&mut self, framed: Vec<u8>) -> Bytes {
        let out = match self.header.take() {
            Some(mut header) => {
                header.extend_from_slice(&framed);
                header
            }
            None => framed,
        };
        self.policy.stats.bytes += out.len() as u64;
        Bytes::from(out)
    }
}

/// The container header for `fields` with `marker` (written by `apache-avro`).
fn header(fields: &[WarehouseField], marker: [u8; 16]) -> Vec<u8> {
    let schema = Schema::parse(&avro_schema(fields)).unwrap_or(Schema::Null);
    let writer = Writer::builder()
        .schema(&schema)
        .codec(AvroCodec::Snappy)
        .marker(marker)
        .writer(Vec::new())
        .build();
    writer.into_inner().unwrap_or_default()
}

/// Decodes an Avro container file (with `apache-avro`) into rows in the NDJSON writer's
/// conventions (INT64 and decimals as strings, BYTES as base64, temporal texts), by the BigQuery
/// types of `fields`: what the fake warehouse stores, and what tests compare.
pub fn decode_rows(
    fields: &[WarehouseField],
    data: &[u8],
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    let reader = apache_avro::Reader::new(data).map_err(|error| error.to_string())?;
    let mut rows = Vec::new();
    for record in reader {
        let record = record.map_err(|error| error.to_string())?;
        let apache_avro::types::Value::Record(values) = record else {
            return Err("not a record".into());
        };
        let mut row = serde_json::Map::new();
        for (name, value) in values {
            let field = fields
                .iter()
                .find(|field| field.name == name)
                .ok_or_else(|| format!("no such field: {name}"))?;
            row.insert(name, json_of(field, value)?);
        }
        rows.push(row);
    }
    Ok(rows)
}

fn json_of(
    field: &WarehouseField,
    value: apache_avro::types::Value,
) -> Result<serde_json::Value, String> {
    use apache_avro::types::Value as A;
    let micros_text = |micros: i64, format: &str| {
        chrono::DateTime::from_timestamp_micros(micros)
            .map(|moment| moment.naive_utc().format(format).to_string())
            .ok_or_else(|| format!("{micros} is out of range"))
    };
    Ok(match value {
        A::Null => serde_json::Value::Null,
        A::Union(_, inner) => json_of(field, *inner)?,
        A::Array(items) => serde_json::Value::Array(
            items
                .into_iter()
                .map(|item| json_of(field, item))
                .collect::<Result<_, _>>()?,
        ),
        A::Long(n) => json!(n.to_string()),
        A::Double(f) => json!(f),
        A::Boolean(b) => json!(b),
        A::String(text) if field.bq_type == BqType::Datetime => json!(text.replacen(' ', "T", 1)),
        A::String(text) => json!(text),
        A::Bytes(bytes) => json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        A::Decimal(decimal) => {
            let bytes: Vec<u8> = Vec::try_from(&decimal).map_err(|error| error.to_string())?;
            let digits = BigInt::from_signed_bytes_be(&bytes).to_string();
            let scale = decimal_params(field).1 as usize;
            let (sign, digits) = match digits.strip_prefix('-') {
                Some(rest) => ("-", rest.to_string()),
                None => ("", digits),
            };
            let digits = format!("{digits:0>width$}", width = scale + 1);
            let (int, frac) = digits.split_at(digits.len() - scale);
            let frac = frac.trim_end_matches('0');
            json!(if frac.is_empty() {
                format!("{sign}{int}")
            } else {
                format!("{sign}{int}.{frac}")
            })
        }
        A::Date(days) => json!(micros_text(i64::from(days) * 86_400_000_000, "%Y-%m-%d")?),
        A::TimeMicros(micros) => json!(micros_text(micros, "%H:%M:%S%.6f")?),
        A::TimestampMicros(micros) => json!(micros_text(micros, "%Y-%m-%dT%H:%M:%S%.6fZ")?),
        other => return Err(format!("unexpected Avro value {other:?}")),
    })
}

impl RowSink for AvroWriter {
    fn push<'r>(
        &mut self,
        decode: impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues> {
        self.encode_row(None, decode)
    }

    /// The columns [`pg_binary`] can write straight from `raw`, and the rest decoded.
    fn push_raw<'r>(
        &mut self,
        raw: RawRow<'r>,
        decode: impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues> {
        self.encode_row(Some(raw), decode)
    }

    /// A chunk to send once the block reached [`CHUNK_SIZE`] or `batch_size` rows: the block
    /// before it, compressed meanwhile (one block is always in flight).
    fn full_chunk(&mut self) -> Option<Bytes> {
        if self.block.len() < CHUNK_SIZE && self.block_rows < self.batch_rows {
            return None;
        }
        let framed = self.submit_block()?;
        Some(self.chunk(framed))
    }

    /// The blocks still in flight and the last one; `None` when no row was ever written
    /// (nothing to load, as for NDJSON).
    fn finish(&mut self) -> Option<Bytes> {
        let mut framed = self.submit_block().unwrap_or_default();
        framed.extend_from_slice(&self.blocks.drain());
        (!framed.is_empty()).then(|| self.chunk(framed))
    }

    fn stats(&self) -> &ExtractStats {
        &self.policy.stats
    }
}

mod blocks;
mod pg_binary;

#[cfg(test)]
mod tests;
