//! The value model shared by sources and sinks: a source decodes each column into a [`Val`]
//! (borrowing from the row where it can) or a [`Bad`] value, and pushes whole rows into a
//! [`RowSink`], which applies the table's policies and produces the bytes a warehouse loads.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use serde::Serialize;

/// A decoded source value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    /// SQL NULL.
    Null,
    /// Boolean.
    Bool(bool),
    /// Signed integer.
    Int(i64),
    /// Unsigned integer.
    UInt(u64),
    /// 4-byte float (written in its own shortest form).
    F32(f32),
    /// 8-byte float.
    F64(f64),
    /// Exact decimal text, e.g. `-12.50`.
    Decimal(Cow<'a, str>),
    /// Text.
    Text(Cow<'a, str>),
    /// Binary.
    Bytes(Cow<'a, [u8]>),
    /// JSON document text.
    Json(Cow<'a, [u8]>),
    /// Date.
    Date(NaiveDate),
    /// Civil date-time.
    DateTime(NaiveDateTime),
    /// UTC instant.
    Timestamp(NaiveDateTime),
    /// Time of day.
    Time(NaiveTime),
    /// Array elements.
    Array(Vec<Val<'a>>),
}

impl Val<'_> {
    /// The value as plain JSON, for a rejected row's record (bytes as lossy text, dates in
    /// ISO form, arrays with their NULLs).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Self::Null => Value::Null,
            Self::Bool(value) => Value::Bool(*value),
            Self::Int(value) => Value::from(*value),
            Self::UInt(value) => Value::from(*value),
            Self::F32(value) => serde_json::Number::from_f64(f64::from(*value))
                .map_or_else(|| Value::String(value.to_string()), Value::Number),
            Self::F64(value) => serde_json::Number::from_f64(*value)
                .map_or_else(|| Value::String(value.to_string()), Value::Number),
            Self::Decimal(text) | Self::Text(text) => Value::String(text.to_string()),
            Self::Bytes(bytes) | Self::Json(bytes) => {
                Value::String(String::from_utf8_lossy(bytes).into_owned())
            }
            Self::Date(date) => Value::String(date.to_string()),
            Self::DateTime(at) | Self::Timestamp(at) => Value::String(at.to_string()),
            Self::Time(time) => Value::String(time.to_string()),
            Self::Array(items) => Value::Array(items.iter().map(Val::to_json).collect()),
        }
    }
}

/// Kinds of bad values, as counted in [`ExtractStats::by_kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadKind {
    /// MySQL zero or partial-zero date.
    ZeroDate,
    /// NaN, ±Infinity, PostgreSQL `±infinity` dates and timestamps.
    NonFinite,
    /// Text that is not UTF-8.
    InvalidUtf8,
    /// A value the target type cannot hold.
    OutOfRange,
    /// A value the decoder cannot read.
    Malformed,
    /// NULL in a REQUIRED field (a merge key is REQUIRED in the load: such a row is rejected).
    NullRequired,
}

impl BadKind {
    /// Name used in statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ZeroDate => "zero_date",
            Self::NonFinite => "non_finite",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::OutOfRange => "out_of_range",
            Self::Malformed => "malformed",
            Self::NullRequired => "null_in_required",
        }
    }
}

/// A value that cannot be written as is.
#[derive(Debug, Clone, PartialEq)]
pub struct Bad<'a> {
    /// Kind.
    pub kind: BadKind,
    /// What was wrong.
    pub message: String,
    /// What to write instead when the policy allows it (invalid UTF-8 with `replace`).
    pub replacement: Option<Val<'a>>,
}

impl Bad<'_> {
    /// A bad value without replacement.
    pub fn new(kind: BadKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            replacement: None,
        }
    }
}

/// Decoding result.
pub type Decoded<'a> = Result<Val<'a>, Bad<'a>>;

/// Most rejected rows an extraction keeps (the rest are counted in
/// [`ExtractStats::failed_rows`] only), so memory stays bounded.
pub const MAX_REJECTS: usize = 10_000;

/// A row left out because a value failed it: what goes to `_datasync_rejects`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reject {
    /// The row's key, e.g. `(id=4)`, or `#n` (its position) without a key.
    pub key: String,
    /// The source column whose value failed.
    pub column: String,
    /// Why.
    pub reason: String,
    /// The row as read, a JSON object by source column.
    pub row: String,
}

/// What an extraction did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExtractStats {
    /// Rows written.
    pub rows: u64,
    /// Bytes written by the sink.
    pub bytes: u64,
    /// Bad values met (nulled, replaced, or failing their row).
    pub bad_values: u64,
    /// Rows left out because a value failed them.
    pub failed_rows: u64,
    /// The first failure messages, each with the row's primary key.
    pub failures: Vec<String>,
    /// Bad values by kind.
    pub by_kind: BTreeMap<String, u64>,
    /// The rows left out (at most [`MAX_REJECTS`]).
    #[serde(skip)]
    pub rejects: Vec<Reject>,
}

/// Text → [`Val::Text`], replacing invalid UTF-8 with a [`Bad`] carrying the lossy text.
pub fn text(bytes: &[u8]) -> Decoded<'_> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(Val::Text(Cow::Borrowed(text))),
        Err(error) => Err(Bad {
            kind: BadKind::InvalidUtf8,
            message: format!("invalid UTF-8 at byte {}", error.valid_up_to()),
            replacement: Some(Val::Text(Cow::Owned(
                String::from_utf8_lossy(bytes).into_owned(),
            ))),
        }),
    }
}

/// Checks that `text` is a plain decimal (`-12.5`, `3`, `.5` is rejected) and normalizes a
/// leading `+`.
pub fn decimal_text(text: &str) -> Decoded<'_> {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let ok = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        let lower = text.to_ascii_lowercase();
        if lower.contains("nan") || lower.contains("inf") {
            return Err(Bad::new(
                BadKind::NonFinite,
                format!("non-finite decimal `{text}`"),
            ));
        }
        return Err(Bad::new(
            BadKind::Malformed,
            format!("`{text}` is not a decimal number"),
        ));
    }
    if let Some(unsigned) = text.strip_prefix('+') {
        return Ok(Val::Decimal(Cow::Owned(unsigned.to_string())));
    }
    Ok(Val::Decimal(Cow::Borrowed(text)))
}

/// Failure of a whole extraction caused by bad values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyBadValues {
    /// Table label.
    pub table: String,
    /// Bad values met.
    pub count: u64,
    /// The budget.
    pub max: u64,
    /// The first failure messages.
    pub failures: Vec<String>,
}

impl std::fmt::Display for TooManyBadValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table `{}`: {} bad values, more than max_parse_failures ({}); first failures:",
            self.table, self.count, self.max
        )?;
        for failure in &self.failures {
            write!(f, "\n  - {failure}")?;
        }
        Ok(())
    }
}

/// One row in the source's own wire encoding, beside the decoder of its values: a sink that
/// can write some columns straight from these bytes skips the [`Val`] of each (see
/// [`RowSink::push_raw`]).
#[derive(Debug, Clone, Copy)]
pub struct RawRow<'a> {
    /// How the values are encoded.
    pub encoding: RawEncoding,
    /// The row's bytes.
    pub data: &'a [u8],
    /// Each column's byte range in `data`, `None` for NULL.
    pub fields: &'a [Option<(usize, usize)>],
}

impl<'a> RawRow<'a> {
    /// Column `index`'s bytes, `None` for NULL.
    pub fn field(&self, index: usize) -> Option<&'a [u8]> {
        let data: &'a [u8] = self.data;
        self.fields[index].map(|(start, end)| &data[start..end])
    }
}

/// The wire encodings a [`RawRow`] can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEncoding {
    /// PostgreSQL's binary send format of each column's type (as in `COPY … (FORMAT binary)`).
    PostgresBinary,
}

/// Where a source pushes the rows it reads: one row at a time, then whole chunks of encoded
/// bytes (for instance NDJSON lines for a BigQuery load job) to send on.
pub trait RowSink: Send {
    /// Writes one row; `decode(i)` decodes column `i` of the current row (borrowing from it)
    /// and may be called again for the row's key columns in failure messages. Fails when the
    /// bad values exceed the table's budget.
    fn push<'r>(
        &mut self,
        decode: impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues>;

    /// Writes one row given both as `raw` bytes and through `decode`, which must agree: the
    /// bytes written are exactly those of [`push`](Self::push). A sink that transcodes some
    /// columns directly overrides this; by default every column is decoded.
    fn push_raw<'r>(
        &mut self,
        raw: RawRow<'r>,
        decode: impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues> {
        let _ = raw;
        self.push(decode)
    }

    /// A full chunk to send, if enough rows are buffered.
    fn full_chunk(&mut self) -> Option<Bytes>;

    /// Whatever is still buffered, if anything.
    fn finish(&mut self) -> Option<Bytes>;

    /// Statistics so far.
    fn stats(&self) -> &ExtractStats;
}
