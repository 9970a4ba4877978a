//! Watermarks: the cursor maximum of a target, kept in the ledger instead of read from the
//! target with a billed `MAX(cursor)` scan.
//!
//! - [`Latest`]: the ledger's latest `done` row per target, read with ONE query per run
//!   ([`read_latest`]).
//! - [`read_bound`]: the value of a table's [`Bound`]: the ledger's watermark when its entry
//!   still describes the target, else the target's `MAX` (no ledger entry yet, the ledger
//!   table missing, or the target changed since).
//! - [`CursorSink`]: a [`RowSink`] wrapper that computes this run's maximum for free while the
//!   rows are encoded, from the value exactly as the sink writes it.
//! - [`canonical`] and [`compare`]: one text form per type and BigQuery's order on it, so the
//!   watermark equals what `MAX(target)` gives.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;

use crate::plan::{Bound, Extract};
use crate::schema::{
    BadKind, BqType, Decoded, ExtractStats, FieldMode, RawRow, RowSink, TooManyBadValues, Val,
};
use crate::source::CursorFilter;
use crate::warehouse::ndjson::{Target, write_scalar};
use crate::warehouse::{QueryRows, Warehouse, WarehouseError, cursor_text, quote_ident};

use super::{RUNS_TABLE, cell_text};

/// The ledger's latest `done` row of one target: what its watermark was after that run, and
/// what the target looked like then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestEntry {
    /// The run.
    pub run_id: String,
    /// The cursor's target column; `None` when the run kept no watermark.
    pub cursor_column: Option<String>,
    /// The watermark (canonical text); `None`: the target held no cursor value.
    pub watermark: Option<String>,
    /// The cursor's BigQuery type, as [`BqType::as_str`] spells it.
    pub watermark_type: Option<String>,
    /// The target's `lastModifiedTime` right after that run wrote it (under its lease).
    pub target_modified: Option<String>,
}

/// The ledger's latest `done` row per target, read once per run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latest {
    /// By target.
    pub entries: HashMap<String, LatestEntry>,
    /// Whether the ledger table was found (the first write creates it otherwise).
    pub exists: bool,
}

impl Latest {
    /// The entry of `target` if it still gives the bound of `column` (`bq_type`): same cursor
    /// column and type, and the target unchanged since that run wrote it — its
    /// `lastModifiedTime`, which every load, copy, DML statement and schema change moves
    /// (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#Table.FIELDS.last_modified_time>),
    /// is the one recorded. Anything else (another run that wrote the target but has not
    /// recorded its ledger rows yet, a write whose reply was lost, a manual change) falls back
    /// to the target's `MAX`.
    pub fn usable(
        &self,
        target: &str,
        column: &str,
        bq_type: BqType,
        modified_now: Option<&str>,
    ) -> Option<&LatestEntry> {
        let entry = self.entries.get(target)?;
        let same_cursor = entry
            .cursor_column
            .as_deref()
            .is_some_and(|recorded| recorded.eq_ignore_ascii_case(column))
            && entry.watermark_type.as_deref() == Some(bq_type.as_str());
        let unchanged =
            entry.target_modified.is_some() && entry.target_modified.as_deref() == modified_now;
        (same_cursor && unchanged).then_some(entry)
    }
}

/// The one query of a run: the latest `done` row per target. `destination` is
/// `project.dataset`.
pub fn latest_sql(destination: &str) -> String {
    let column = |name: &str| quote_ident(name);
    format!(
        "SELECT {}, {}, {}, {}, {}, {} FROM {} WHERE {} = 'done' QUALIFY ROW_NUMBER() OVER (PARTITION BY {} ORDER BY {} DESC, {} DESC) = 1",
        column("target"),
        column("run_id"),
        column("cursor_column"),
        column("watermark"),
        column("watermark_type"),
        column("target_modified"),
        quote_ident(&format!("{destination}.{RUNS_TABLE}")),
        column("status"),
        column("target"),
        column("finished_at"),
        column("run_id"),
    )
}

/// Reads the ledger's latest `done` row per target (one query). A missing ledger table is
/// an empty ledger; any other failure is logged and treated as empty too (every bound then
/// comes from its target, as before the ledger existed).
pub async fn read_latest(warehouse: &dyn Warehouse, destination: &str) -> Latest {
    match warehouse.get_table(RUNS_TABLE).await {
        Ok(Some(_)) => {}
        Ok(None) => return Latest::default(),
        Err(error) => {
            tracing::warn!(%error, "could not read the run ledger; bounds come from the targets");
            return Latest::default();
        }
    }
    match warehouse.query(&latest_sql(destination), &[]).await {
        Ok(rows) => Latest {
            entries: latest_entries(&rows),
            exists: true,
        },
        Err(error) => {
            tracing::warn!(%error, "could not read the run ledger; bounds come from the targets");
            Latest {
                entries: HashMap::new(),
                exists: true,
            }
        }
    }
}

fn latest_entries(rows: &QueryRows) -> HashMap<String, LatestEntry> {
    let index = |name: &str| rows.columns.iter().position(|column| column.name == name);
    let get = |row: &[serde_json::Value], name: &str| {
        index(name).and_then(|at| row.get(at)).and_then(cell_text)
    };
    rows.rows
        .iter()
        .filter_map(|row| {
            let target = get(row, "target")?;
            let entry = LatestEntry {
                run_id: get(row, "run_id").unwrap_or_default(),
                cursor_column: get(row, "cursor_column"),
                watermark: get(row, "watermark"),
                watermark_type: get(row, "watermark_type"),
                target_modified: get(row, "target_modified"),
            };
            Some((target, entry))
        })
        .collect()
}

/// Where a bound's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundSource {
    /// The ledger's watermark, recorded by this run.
    Ledger(String),
    /// `MAX(cursor)` over the target.
    Target,
}

/// A bound read at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundValue {
    /// The source filter; `None` reads every row (a missing target, or one holding no cursor
    /// value).
    pub filter: Option<CursorFilter>,
    /// Where the value came from (`None` for a missing target).
    pub source: Option<BoundSource>,
}

/// The value of `bound` now: the ledger's watermark when [`Latest::usable`], else the target's
/// `MAX` (a missing target holds none). `None` for a bound that reads every row.
pub async fn read_bound(
    warehouse: &dyn Warehouse,
    target: &str,
    bound: &Bound,
    latest: &Latest,
) -> Result<Option<BoundValue>, WarehouseError> {
    let Bound::AfterTargetMax {
        source_column,
        target_column,
        bq_type,
        inclusive,
    } = bound
    else {
        return Ok(None);
    };
    // A missing target (to be created) holds no maximum.
    let Some(existing) = warehouse.get_table(target).await? else {
        return Ok(Some(BoundValue {
            filter: None,
            source: None,
        }));
    };
    let (value, source) = match latest.usable(
        target,
        target_column,
        *bq_type,
        existing.last_modified.as_deref(),
    ) {
        Some(entry) => (
            entry.watermark.clone(),
            BoundSource::Ledger(entry.run_id.clone()),
        ),
        None => {
            let max = warehouse.max_value(target, target_column).await?;
            (
                cursor_text(&max, *bq_type).map(|text| canonical(&text, *bq_type)),
                BoundSource::Target,
            )
        }
    };
    tracing::debug!(target_table = %target, value = ?value, from = ?source, "bound read");
    Ok(Some(BoundValue {
        filter: value.map(|value| CursorFilter {
            column: source_column.clone(),
            value,
            inclusive: *inclusive,
        }),
        source: Some(source),
    }))
}

/// The canonical text of a cursor value of `bq_type`, the one form the ledger stores and a
/// source compares with: TIMESTAMP `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), DATETIME the same
/// without `Z`, TIME `HH:MM:SS.ffffff`, DATE `YYYY-MM-DD`, INT64 its digits, NUMERIC and
/// BIGNUMERIC the shortest exact decimal, FLOAT64 the shortest round-trip text, BOOL, STRING
/// and BYTES (base64) as they are. Text that does not parse as the type is kept as it is.
pub fn canonical(text: &str, bq_type: BqType) -> String {
    use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
    let datetime = |text: &str| {
        ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d"]
            .iter()
            .find_map(|format| {
                NaiveDateTime::parse_from_str(text, format)
                    .ok()
                    .or_else(|| {
                        NaiveDate::parse_from_str(text, format)
                            .ok()
                            .and_then(|date| date.and_hms_opt(0, 0, 0))
                    })
            })
    };
    let parsed = match bq_type {
        BqType::Timestamp => {
            timestamp(text).map(|at| at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        }
        BqType::Datetime => datetime(text).map(|at| at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()),
        BqType::Time => NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
            .ok()
            .map(|at| at.format("%H:%M:%S%.6f").to_string()),
        BqType::Date => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .map(|at| at.format("%Y-%m-%d").to_string()),
        BqType::Int64 => text.trim().parse::<i64>().ok().map(|n| n.to_string()),
        BqType::Numeric | BqType::BigNumeric => normalize_decimal(text),
        BqType::Float64 => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(|number| number.to_string()),
        _ => None,
    };
    parsed.unwrap_or_else(|| text.to_string())
}

/// A TIMESTAMP's text as BigQuery or a source writes it: RFC 3339, `… UTC`, `…+00`, or no zone
/// (UTC).
fn timestamp(text: &str) -> Option<chrono::NaiveDateTime> {
    let text = text.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(at.naive_utc());
    }
    let bare = text
        .strip_suffix(" UTC")
        .or_else(|| text.strip_suffix("+00"))
        .or_else(|| text.strip_suffix('Z'))
        .unwrap_or(text);
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(bare, format).ok())
}

/// A decimal's shortest exact text (`012.500` → `12.5`, `-0.0` → `0`, `1E-9` → `0.000000001`);
/// `None` when `text` is not a decimal.
pub fn normalize_decimal(text: &str) -> Option<String> {
    let text = text.trim();
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i64>().ok()?),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || exponent.abs() > 1000
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let point = i64::try_from(int.len()).ok()? + exponent;
    let len = i64::try_from(digits.len()).ok()?;
    let (int, frac) = if point <= 0 {
        (
            String::new(),
            format!("{}{digits}", "0".repeat(usize::try_from(-point).ok()?)),
        )
    } else if point >= len {
        (
            format!("{digits}{}", "0".repeat(usize::try_from(point - len).ok()?)),
            String::new(),
        )
    } else {
        let split = usize::try_from(point).ok()?;
        (digits[..split].to_string(), digits[split..].to_string())
    };
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let sign = if negative && (int != "0" || !frac.is_empty()) {
        "-"
    } else {
        ""
    };
    Some(if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

/// Compares two decimals' texts exactly (as [`normalize_decimal`] reads them).
fn compare_decimal(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (normalize_decimal(a)?, normalize_decimal(b)?);
    let split = |text: &str| {
        let (negative, body) = match text.strip_prefix('-') {
            Some(rest) => (true, rest.to_string()),
            None => (false, text.to_string()),
        };
        let (int, frac) = body.split_once('.').unwrap_or((&body, ""));
        (negative, int.to_string(), frac.to_string())
    };
    let ((a_negative, a_int, a_frac), (b_negative, b_int, b_frac)) = (split(&a), split(&b));
    let magnitude = a_int
        .len()
        .cmp(&b_int.len())
        .then_with(|| a_int.cmp(&b_int))
        .then_with(|| a_frac.cmp(&b_frac));
    Some(match (a_negative, b_negative) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
    })
}

/// BigQuery's order on two cursor values of `bq_type` in their text form (as [`canonical`]
/// writes them, or as a sink encodes them): numbers numerically, decimals exactly, BYTES by
/// their bytes, temporal types chronologically (their fixed-width forms compare as text),
/// STRING by UTF-8 bytes (= code points, BigQuery's order without a collation).
pub fn compare(a: &str, b: &str, bq_type: BqType) -> Ordering {
    let typed = match bq_type {
        BqType::Int64 => match (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
            (Ok(a), Ok(b)) => Some(a.cmp(&b)),
            _ => None,
        },
        BqType::Float64 => match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
            (Ok(a), Ok(b)) => a.partial_cmp(&b),
            _ => None,
        },
        BqType::Numeric | BqType::BigNumeric => compare_decimal(a, b),
        BqType::Bytes => {
            let engine = &base64::engine::general_purpose::STANDARD;
            match (engine.decode(a), engine.decode(b)) {
                (Ok(a), Ok(b)) => Some(a.cmp(&b)),
                _ => None,
            }
        }
        BqType::Timestamp | BqType::Datetime | BqType::Time | BqType::Date => {
            Some(canonical(a, bq_type).cmp(&canonical(b, bq_type)))
        }
        _ => None,
    };
    typed.unwrap_or_else(|| a.cmp(b))
}

/// [`compare`] for values as the NDJSON writer encodes them, once per row: the temporal types'
/// fixed-width forms (and STRING, BOOL) compare as bytes without parsing; text written as is
/// into a temporal column (a STRING source read as TIMESTAMP) is parsed.
fn compare_encoded(a: &str, b: &str, bq_type: BqType) -> Ordering {
    let fixed = |text: &str| {
        let bytes = text.as_bytes();
        match bq_type {
            BqType::Timestamp => bytes.len() == 27 && bytes[10] == b'T' && bytes[26] == b'Z',
            BqType::Datetime => bytes.len() == 26 && bytes[10] == b'T',
            BqType::Date => bytes.len() == 10,
            BqType::Time => bytes.len() == 15,
            BqType::String | BqType::Bool => true,
            _ => false,
        }
    };
    if fixed(a) && fixed(b) {
        a.cmp(b)
    } else {
        compare(a, b, bq_type)
    }
}

/// The greater of two optional cursor values in BigQuery's order (NULL is below everything,
/// as `MAX` ignores it).
pub fn greatest(a: Option<String>, b: Option<String>, bq_type: BqType) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if compare(&b, &a, bq_type) == Ordering::Greater {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

/// The maximum of a cursor column over the rows a run loaded, shared by every sink of the
/// table (several chunks add theirs).
#[derive(Debug, Default)]
pub struct CursorMax {
    /// The greatest value (canonical text), if a loaded row had one.
    pub max: Option<String>,
    /// A value could not be tracked exactly: the run keeps no watermark (the next run reads
    /// its bound from the target).
    pub unsound: bool,
}

/// What one row's cursor value is, as the sink writes it.
enum Candidate {
    /// Not decoded yet in this row.
    Unseen,
    /// NULL (or a value a policy writes as NULL).
    Null,
    /// A value: its JSON token is in the buffer.
    Value,
    /// A value this tracking can't order (an array).
    Unsound,
}

struct Tracking {
    index: usize,
    target: Target,
    buf: Vec<u8>,
    candidate: Candidate,
    local: Option<String>,
    unsound: bool,
    shared: Arc<Mutex<CursorMax>>,
}

impl Tracking {
    /// Records the row's cursor value as the sink will write it: the value through the
    /// NDJSON writer's own conversion; a bad value by what the shared row policy does with it
    /// when its row is written (invalid UTF-8: the replacement; anything else: NULL).
    fn record(&mut self, value: &Decoded<'_>) {
        self.buf.clear();
        let written = match value {
            Ok(Val::Null) => None,
            Ok(Val::Array(_)) => {
                self.candidate = Candidate::Unsound;
                return;
            }
            Ok(value) => Some(value),
            Err(bad) if bad.kind == BadKind::InvalidUtf8 => bad.replacement.as_ref(),
            Err(_) => None,
        };
        self.candidate = match written {
            Some(value) if write_scalar(&mut self.buf, value, self.target).is_ok() => {
                Candidate::Value
            }
            _ => Candidate::Null,
        };
    }

    /// After a row: its value counts if the row was written.
    fn end_row(&mut self, written: bool) {
        let candidate = std::mem::replace(&mut self.candidate, Candidate::Unseen);
        if !written {
            return;
        }
        match candidate {
            Candidate::Value => {}
            Candidate::Unsound => {
                self.unsound = true;
                return;
            }
            Candidate::Unseen | Candidate::Null => return,
        }
        let Some(text) = token_text(&self.buf) else {
            self.unsound = true;
            return;
        };
        let bq_type = self.target.bq_type;
        let greater = self
            .local
            .as_deref()
            .is_none_or(|max| compare_encoded(&text, max, bq_type) == Ordering::Greater);
        if greater {
            let local = self.local.get_or_insert_with(String::new);
            local.clear();
            local.push_str(&text);
        }
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        let bq_type = self.target.bq_type;
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.unsound |= self.unsound;
        let local = self.local.take().map(|text| canonical(&text, bq_type));
        shared.max = greatest(shared.max.take(), local, bq_type);
    }
}

/// The text inside a JSON token the NDJSON writer wrote (`"…"` unescaped, numbers and
/// booleans as written).
fn token_text(token: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    match token {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => std::str::from_utf8(inner)
            .ok()
            .map(std::borrow::Cow::Borrowed),
        [b'"', ..] => serde_json::from_slice::<String>(token)
            .ok()
            .map(std::borrow::Cow::Owned),
        _ => std::str::from_utf8(token)
            .ok()
            .map(std::borrow::Cow::Borrowed),
    }
}

/// A [`RowSink`] that passes every row to `inner` and keeps the maximum of the table's cursor
/// column over the rows `inner` wrote (a row a bad value left out does not count). Without a
/// cursor it only passes rows on.
pub struct CursorSink<S> {
    inner: S,
    tracking: Option<Tracking>,
}

impl<S: RowSink> CursorSink<S> {
    /// Tracks `extract`'s cursor (its [`Bound::AfterTargetMax`] column) into `shared`.
    pub fn new(inner: S, extract: &Extract, shared: Option<Arc<Mutex<CursorMax>>>) -> Self {
        let tracking = shared.and_then(|shared| {
            let Bound::AfterTargetMax { source_column, .. } = &extract.bound else {
                return None;
            };
            let index = extract
                .columns
                .iter()
                .position(|column| &column.source.name == source_column);
            let orderable = |column: &crate::schema::ColumnMapping| {
                column.field.mode != FieldMode::Repeated
                    && !matches!(
                        column.field.bq_type,
                        BqType::Json | BqType::Geography | BqType::Interval
                    )
            };
            let unsound = index.is_none_or(|index| !orderable(&extract.columns[index]));
            let field = index.map(|index| &extract.columns[index].field);
            Some(Tracking {
                index: index.unwrap_or(usize::MAX),
                target: field.map_or(
                    Target {
                        bq_type: BqType::String,
                        precision: None,
                        scale: None,
                    },
                    Target::of,
                ),
                buf: Vec::with_capacity(64),
                candidate: Candidate::Unseen,
                local: None,
                unsound,
                shared,
            })
        });
        Self { inner, tracking }
    }
}

impl<S: RowSink> RowSink for CursorSink<S> {
    fn push<'r>(
        &mut self,
        mut decode: impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues> {
        let Some(tracking) = self.tracking.as_mut() else {
            return self.inner.push(decode);
        };
        let before = self.inner.stats().rows;
        let index = tracking.index;
        let result = self.inner.push(|at| {
            let value = decode(at);
            if at == index && matches!(tracking.candidate, Candidate::Unseen) {
                tracking.record(&value);
            }
            value
        });
        tracking.end_row(self.inner.stats().rows > before);
        result
    }

    /// Raw rows go through as such only while no cursor is tracked (the tracker reads the
    /// cursor column's decoded value).
    fn push_raw<'r>(
        &mut self,
        raw: RawRow<'r>,
        decode: impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues> {
        if self.tracking.is_none() {
            return self.inner.push_raw(raw, decode);
        }
        self.push(decode)
    }

    fn full_chunk(&mut self) -> Option<Bytes> {
        self.inner.full_chunk()
    }

    fn finish(&mut self) -> Option<Bytes> {
        self.inner.finish()
    }

    fn stats(&self) -> &ExtractStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests;
