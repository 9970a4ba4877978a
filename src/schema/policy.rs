//! The bad-value and type-mapping policies a table applies ([`TypePolicies`]). The enums are
//! also the manifest's wire format: their `///` comments become the JSON Schema descriptions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BqType, WarehouseTable};

/// What to do with a value BigQuery cannot store as-is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BadValuePolicy {
    /// Write NULL and count the value (the count is reported; it also counts toward
    /// `max_parse_failures`). A NULL is never written into a REQUIRED column: that is an error.
    Null,
    /// Fail the row (it counts toward `max_parse_failures`).
    Error,
}

/// What to do with text that is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Utf8Policy {
    /// Replace each invalid byte sequence with U+FFFD and count the value.
    Replace,
    /// Fail the row (it counts toward `max_parse_failures`).
    Error,
}

/// What to do with a DECIMAL that fits neither NUMERIC nor BIGNUMERIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DecimalOverflowPolicy {
    /// Store the exact decimal text in a STRING column.
    String,
    /// Refuse to plan the table.
    Error,
}

/// How geometry columns are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GeometryPolicy {
    /// GEOGRAPHY from WKT.
    Geography,
    /// STRING holding WKT.
    String,
}

/// Type-mapping policies with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TypePolicies {
    /// MySQL `TINYINT(1)` → BOOL.
    pub tinyint1_as_bool: bool,
    /// Zero dates.
    pub zero_dates: BadValuePolicy,
    /// NaN/Infinity.
    pub non_finite: BadValuePolicy,
    /// Invalid UTF-8.
    pub invalid_utf8: Utf8Policy,
    /// Decimals wider than BIGNUMERIC.
    pub decimal_overflow: DecimalOverflowPolicy,
    /// Geometry columns.
    pub geometry: GeometryPolicy,
}

impl Default for TypePolicies {
    fn default() -> Self {
        Self {
            tinyint1_as_bool: true,
            zero_dates: BadValuePolicy::Null,
            non_finite: BadValuePolicy::Null,
            invalid_utf8: Utf8Policy::Replace,
            decimal_overflow: DecimalOverflowPolicy::String,
            geometry: GeometryPolicy::String,
        }
    }
}

/// The file format a table's rows are loaded in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoadFormat {
    /// Avro object container files with snappy blocks and logical types: BigQuery's preferred
    /// load format, typed and several times smaller than NDJSON. A table with a JSON,
    /// GEOGRAPHY or INTERVAL column, or a column name Avro cannot spell, is loaded as NDJSON
    /// instead (the plan says so).
    #[default]
    Avro,
    /// Newline-delimited JSON.
    Ndjson,
}

impl LoadFormat {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Avro => "avro",
            Self::Ndjson => "ndjson",
        }
    }
}

/// What `merge` does with target rows whose key is gone from the source (deletes without CDC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Deletes {
    /// Keep them: the target keeps every row it ever received.
    #[default]
    Keep,
    /// Set their `_datasync_deleted_at` column (a NULLABLE TIMESTAMP datasync adds) to the
    /// time of the run; a key that comes back is set to NULL again.
    Soft,
    /// Delete them.
    Hard,
}

impl Deletes {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Soft => "soft",
            Self::Hard => "hard",
        }
    }

    /// Whether this is `keep` (nothing is deleted).
    pub fn is_keep(&self) -> bool {
        *self == Self::Keep
    }
}

/// The NULLABLE TIMESTAMP column `deletes: soft` adds to a merge target.
pub const DELETED_AT_COLUMN: &str = "_datasync_deleted_at";

/// Why `table` cannot be loaded as Avro exactly, if it cannot (see `warehouse::avro`).
pub fn avro_obstacle(table: &WarehouseTable) -> Option<String> {
    table.fields.iter().find_map(|field| match field.bq_type {
        BqType::Json | BqType::Geography | BqType::Interval => Some(format!(
            "column `{}` is {}, which Avro cannot carry exactly",
            field.name,
            field.bq_type.as_str()
        )),
        _ if !is_avro_name(&field.name) => Some(format!(
            "column name `{}` is not a valid Avro name",
            field.name
        )),
        _ => None,
    })
}

/// `[A-Za-z_][A-Za-z0-9_]*` (Avro names).
fn is_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
