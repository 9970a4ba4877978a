//! The shared vocabulary: what a source table looks like ([`SourceTable`]) and what a BigQuery
//! table looks like ([`WarehouseTable`]), how a column is read and written ([`codec`]), the
//! bad-value policies ([`policy`]), the source engines ([`engine`]) and the values sources
//! push into sinks ([`value`]). Pure data; every other module speaks in these types.

pub mod chunk;
pub mod codec;
pub mod engine;
pub mod policy;
pub mod value;

use serde::{Deserialize, Serialize};

pub use chunk::{ChunkFacts, ChunkRange, Consistency, KeyFacts};
pub use codec::{Codec, ColumnMapping, GEOGRAPHY_REJECT, ReadAs};
pub use engine::SourceKind;
pub use policy::{
    BadValuePolicy, DELETED_AT_COLUMN, DecimalOverflowPolicy, Deletes, GeometryPolicy, LoadFormat,
    TypePolicies, Utf8Policy,
};
pub use value::{
    Bad, BadKind, Decoded, ExtractStats, MAX_REJECTS, RawEncoding, RawRow, Reject, RowSink,
    TooManyBadValues, Val, decimal_text, text,
};

/// A BigQuery column type (standard SQL names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BqType {
    /// STRING
    String,
    /// BYTES
    Bytes,
    /// INT64
    Int64,
    /// FLOAT64
    Float64,
    /// NUMERIC
    Numeric,
    /// BIGNUMERIC
    #[serde(rename = "BIGNUMERIC")]
    BigNumeric,
    /// BOOL
    Bool,
    /// DATE
    Date,
    /// DATETIME
    Datetime,
    /// TIME
    Time,
    /// TIMESTAMP
    Timestamp,
    /// JSON
    Json,
    /// GEOGRAPHY
    Geography,
    /// INTERVAL
    Interval,
}

impl BqType {
    /// The standard SQL name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "STRING",
            Self::Bytes => "BYTES",
            Self::Int64 => "INT64",
            Self::Float64 => "FLOAT64",
            Self::Numeric => "NUMERIC",
            Self::BigNumeric => "BIGNUMERIC",
            Self::Bool => "BOOL",
            Self::Date => "DATE",
            Self::Datetime => "DATETIME",
            Self::Time => "TIME",
            Self::Timestamp => "TIMESTAMP",
            Self::Json => "JSON",
            Self::Geography => "GEOGRAPHY",
            Self::Interval => "INTERVAL",
        }
    }

    /// Parses a standard or legacy name (`INTEGER`, `FLOAT`, `BOOLEAN`, `BIGDECIMAL`, …).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.trim().to_ascii_uppercase().as_str() {
            "STRING" => Self::String,
            "BYTES" => Self::Bytes,
            "INT64" | "INTEGER" | "INT" | "SMALLINT" | "BIGINT" | "TINYINT" | "BYTEINT" => {
                Self::Int64
            }
            "FLOAT64" | "FLOAT" => Self::Float64,
            "NUMERIC" | "DECIMAL" => Self::Numeric,
            "BIGNUMERIC" | "BIGDECIMAL" => Self::BigNumeric,
            "BOOL" | "BOOLEAN" => Self::Bool,
            "DATE" => Self::Date,
            "DATETIME" => Self::Datetime,
            "TIME" => Self::Time,
            "TIMESTAMP" => Self::Timestamp,
            "JSON" => Self::Json,
            "GEOGRAPHY" => Self::Geography,
            "INTERVAL" => Self::Interval,
            _ => return None,
        })
    }
}

/// A BigQuery column type as written in DDL and in `column_types` overrides: a type name
/// (standard or alias: `INTEGER`, `FLOAT`, `BOOLEAN`, `DECIMAL`, `BIGDECIMAL`, …) with the
/// parameters BigQuery allows:
///
/// - `NUMERIC(P[, S])` / `DECIMAL`: 0 ≤ S ≤ 9 and max(1, S) ≤ P ≤ S + 29;
/// - `BIGNUMERIC(P[, S])` / `BIGDECIMAL`: 0 ≤ S ≤ 38 and max(1, S) ≤ P ≤ S + 38;
/// - `STRING(L)` and `BYTES(L)`: a maximum length L ≥ 1;
/// - every other type takes none.
///
/// `NUMERIC(P)` means scale 0. The one parser both `validate` and `plan` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BqTypeSpec {
    /// The type.
    pub bq_type: BqType,
    /// NUMERIC/BIGNUMERIC precision, when given.
    pub precision: Option<u32>,
    /// NUMERIC/BIGNUMERIC scale (0 when only the precision is given).
    pub scale: Option<u32>,
    /// STRING/BYTES maximum length, when given.
    pub max_length: Option<u64>,
}

/// The type names a [`BqTypeSpec`] accepts, in their standard spelling.
pub const BQ_TYPE_NAMES: &[&str] = &[
    "STRING",
    "BYTES",
    "INT64",
    "FLOAT64",
    "NUMERIC",
    "BIGNUMERIC",
    "BOOL",
    "DATE",
    "DATETIME",
    "TIME",
    "TIMESTAMP",
    "JSON",
    "GEOGRAPHY",
    "INTERVAL",
];

impl BqTypeSpec {
    /// A type without parameters.
    pub fn plain(bq_type: BqType) -> Self {
        Self {
            bq_type,
            precision: None,
            scale: None,
            max_length: None,
        }
    }

    fn check_parameters(self, text: &str, numbers: &[u64]) -> Result<Self, String> {
        let invalid = |rule: &str| format!("`{text}` has invalid type parameters ({rule})");
        let decimal = |max_scale: u64, max_integer: u64| -> Result<(u32, u32), String> {
            let name = self.bq_type.as_str();
            let rule = format!(
                "{name}(P[, S]) needs 0 ≤ S ≤ {max_scale} and max(1, S) ≤ P ≤ S + {max_integer}"
            );
            let (precision, scale) = match numbers {
                [precision] => (*precision, 0),
                [precision, scale] => (*precision, *scale),
                _ => return Err(invalid(&rule)),
            };
            if scale > max_scale || precision < scale.max(1) || precision > scale + max_integer {
                return Err(invalid(&rule));
            }
            // Both are at most 76 here.
            Ok((precision as u32, scale as u32))
        };
        let mut spec = self;
        match self.bq_type {
            BqType::Numeric => {
                let (precision, scale) = decimal(9, 29)?;
                (spec.precision, spec.scale) = (Some(precision), Some(scale));
            }
            BqType::BigNumeric => {
                let (precision, scale) = decimal(38, 38)?;
                (spec.precision, spec.scale) = (Some(precision), Some(scale));
            }
            BqType::String | BqType::Bytes => match numbers {
                [length] if *length >= 1 => spec.max_length = Some(*length),
                _ => {
                    return Err(invalid(&format!(
                        "{}(L) needs one maximum length L ≥ 1",
                        self.bq_type.as_str()
                    )));
                }
            },
            other => return Err(invalid(&format!("{} takes none", other.as_str()))),
        }
        Ok(spec)
    }
}

impl std::str::FromStr for BqTypeSpec {
    type Err = String;

    /// Parses `NUMERIC(38, 9)`, `bignumeric`, `STRING(10)`, `DECIMAL(12,2)`, …; the error is the
    /// message shown to the user.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let (name, params) = match trimmed.split_once('(') {
            Some((name, rest)) => (name, Some(rest)),
            None => (trimmed, None),
        };
        let bq_type = BqType::parse(name).ok_or_else(|| {
            format!(
                "`{text}` is not a BigQuery column type (one of {})",
                BQ_TYPE_NAMES.join(", ")
            )
        })?;
        let spec = Self::plain(bq_type);
        let Some(params) = params else {
            return Ok(spec);
        };
        let numbers: Option<Vec<u64>> = params
            .strip_suffix(')')
            .map(|inner| {
                inner
                    .split(',')
                    .map(|part| part.trim().parse::<u64>().ok())
                    .collect()
            })
            .unwrap_or(None);
        match numbers {
            Some(numbers) => spec.check_parameters(text, &numbers),
            None => Err(format!(
                "`{text}` has invalid type parameters (write them as whole numbers in parentheses)"
            )),
        }
    }
}

impl std::fmt::Display for BqTypeSpec {
    /// The standard spelling, e.g. `NUMERIC(38, 9)`, `STRING(10)` or `INT64`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.bq_type.as_str();
        match (self.precision, self.scale, self.max_length) {
            (Some(precision), Some(scale), _) => write!(f, "{name}({precision}, {scale})"),
            (Some(precision), None, _) => write!(f, "{name}({precision})"),
            (_, _, Some(length)) => write!(f, "{name}({length})"),
            _ => f.write_str(name),
        }
    }
}

/// A BigQuery column mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FieldMode {
    /// May be NULL.
    Nullable,
    /// NOT NULL.
    Required,
    /// An array.
    Repeated,
}

impl FieldMode {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nullable => "NULLABLE",
            Self::Required => "REQUIRED",
            Self::Repeated => "REPEATED",
        }
    }
}

/// One BigQuery column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WarehouseField {
    /// Column name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub bq_type: BqType,
    /// Mode.
    pub mode: FieldMode,
    /// NUMERIC/BIGNUMERIC precision, when parameterised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u32>,
    /// NUMERIC/BIGNUMERIC scale, when parameterised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    /// STRING/BYTES maximum length, when parameterised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// Column description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl WarehouseField {
    /// A field of `mode` without parameters or description.
    pub fn new(name: impl Into<String>, bq_type: BqType, mode: FieldMode) -> Self {
        Self {
            name: name.into(),
            bq_type,
            mode,
            precision: None,
            scale: None,
            max_length: None,
            description: None,
        }
    }

    /// The type with its parameters, e.g. `NUMERIC(38, 9)` or `STRING`.
    pub fn type_text(&self) -> String {
        self.type_spec().to_string()
    }

    /// The type with its parameters.
    pub fn type_spec(&self) -> BqTypeSpec {
        BqTypeSpec {
            bq_type: self.bq_type,
            precision: self.precision,
            scale: self.scale,
            max_length: self.max_length,
        }
    }

    /// One line for schema diffs: `name TYPE MODE`.
    pub fn diff_line(&self) -> String {
        format!("{} {} {}", self.name, self.type_text(), self.mode.as_str())
    }
}

/// Time-unit partitioning of a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimePartitioning {
    /// `DAY`, `HOUR`, `MONTH` or `YEAR`.
    #[serde(rename = "type")]
    pub granularity: String,
    /// The column.
    pub field: String,
}

/// A BigQuery table's shape, desired or existing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WarehouseTable {
    /// Table name in the dataset.
    pub name: String,
    /// Columns in order.
    pub fields: Vec<WarehouseField>,
    /// Partitioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioning: Option<TimePartitioning>,
    /// Clustering columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clustering: Vec<String>,
    /// The table's description. In a desired table, `None` leaves the target's as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl WarehouseTable {
    /// The field called `name` (BigQuery names are case-insensitive).
    pub fn field(&self, name: &str) -> Option<&WarehouseField> {
        self.fields
            .iter()
            .find(|field| field.name.eq_ignore_ascii_case(name))
    }
}

/// The column `lineage: true` adds: when the run that wrote the row started (the same value for
/// every row of a run).
pub const LINEAGE_SYNCED_AT: &str = "_datasync_synced_at";
/// The column `lineage: true` adds: the id of the run that wrote the row.
pub const LINEAGE_RUN_ID: &str = "_datasync_run_id";

/// The two lineage columns as BigQuery fields (NULLABLE: rows written before lineage was turned
/// on hold NULL), with their descriptions.
pub fn lineage_fields() -> [WarehouseField; 2] {
    let described = |name: &str, bq_type, description: &str| WarehouseField {
        description: Some(description.to_string()),
        ..WarehouseField::new(name, bq_type, FieldMode::Nullable)
    };
    [
        described(
            LINEAGE_SYNCED_AT,
            BqType::Timestamp,
            "When the datasync run that last wrote this row started",
        ),
        described(
            LINEAGE_RUN_ID,
            BqType::String,
            "The id of the datasync run that last wrote this row",
        ),
    ]
}

/// The values a run writes into the lineage columns of every row: filled by the row sink, not
/// by a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// The run's start, microseconds since the epoch.
    pub synced_at_micros: i64,
    /// The run id.
    pub run_id: String,
}

/// One column as introspected at the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceColumn {
    /// Name as the source spells it.
    pub name: String,
    /// 1-based position.
    pub ordinal: u32,
    /// Base type in lower case (`information_schema.columns.data_type`, PostgreSQL `udt_name`
    /// for arrays and user types), e.g. `bigint`, `numeric`, `_int4`, `enum`.
    pub data_type: String,
    /// Full type text (MySQL `column_type`, PostgreSQL `format_type`), e.g. `bigint(20) unsigned`,
    /// `numeric(38,9)`, `tinyint(1)`, `integer[]`, `timestamp(6) with time zone`.
    pub column_type: String,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// Numeric precision, when declared.
    pub precision: Option<u32>,
    /// Numeric scale, when declared.
    pub scale: Option<u32>,
    /// Character length limit, when declared.
    pub max_length: Option<u64>,
    /// Part of the primary key.
    pub primary_key: bool,
    /// Column comment.
    pub comment: Option<String>,
    /// The column holds JSON even though its type says otherwise (MariaDB `JSON` is
    /// `LONGTEXT` + a `json_valid` check).
    pub is_json: bool,
}

/// A source table as introspected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceTable {
    /// Schema (PostgreSQL) or database (MySQL); `None` for SQLite.
    pub qualifier: Option<String>,
    /// Table name.
    pub name: String,
    /// Columns in order.
    pub columns: Vec<SourceColumn>,
    /// Primary-key columns in key order.
    pub primary_key: Vec<String>,
    /// The other unique keys (unique constraints and indexes over plain columns, not partial),
    /// each in key order, sorted by index name: what a chunked extraction may split on when
    /// there is no primary key. Left out of the JSON when empty, so tables without any keep
    /// their fingerprint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unique_keys: Vec<Vec<String>>,
    /// The catalog's row estimate, when it has one.
    pub estimated_rows: Option<u64>,
    /// Table comment.
    pub comment: Option<String>,
    /// A custom SQL source (the manifest's `query`): the rows are this statement's, read as a
    /// derived table `(<query>) AS q`; `name` is then the manifest entry's name, `qualifier`
    /// is `None` and the columns come from the statement's result metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

impl SourceTable {
    /// Whether `columns` identify at most one row: they hold every column of the primary key
    /// or of a unique index (a superset of a unique key is unique too).
    pub fn is_unique_key(&self, columns: &[String]) -> bool {
        std::iter::once(&self.primary_key)
            .chain(&self.unique_keys)
            .filter(|key| !key.is_empty())
            .any(|key| {
                key.iter().all(|part| {
                    columns
                        .iter()
                        .any(|column| column.eq_ignore_ascii_case(part))
                })
            })
    }

    /// `qualifier.table`, the bare name of an unqualified table, or `query:name` for a custom
    /// SQL source: how messages name it.
    pub fn label(&self) -> String {
        match (&self.query, &self.qualifier) {
            (Some(_), _) => format!("query:{}", self.name),
            (None, Some(qualifier)) => format!("{qualifier}.{}", self.name),
            (None, None) => self.name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_specs_follow_bigquery_ddl() {
        let ok = [
            ("STRING", "STRING"),
            (" string(10) ", "STRING(10)"),
            ("BYTES(5)", "BYTES(5)"),
            ("integer", "INT64"),
            ("FLOAT", "FLOAT64"),
            ("BOOLEAN", "BOOL"),
            ("NUMERIC", "NUMERIC"),
            ("NUMERIC(38, 9)", "NUMERIC(38, 9)"),
            ("numeric(10)", "NUMERIC(10, 0)"),
            ("DECIMAL(12,2)", "NUMERIC(12, 2)"),
            ("BIGDECIMAL", "BIGNUMERIC"),
            ("BIGNUMERIC(76, 38)", "BIGNUMERIC(76, 38)"),
            ("NUMERIC(29)", "NUMERIC(29, 0)"),
            ("NUMERIC(9, 9)", "NUMERIC(9, 9)"),
        ];
        for (text, expected) in ok {
            let spec: BqTypeSpec = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(spec.to_string(), expected, "{text}");
        }
        let bad = [
            "VARCHAR",
            "NUMERIC(30)",
            "NUMERIC(40,2)",
            "NUMERIC(5,10)",
            "NUMERIC(0)",
            "NUMERIC(10,2,1)",
            "BIGNUMERIC(77,38)",
            "STRING(0)",
            "STRING(1,2)",
            "INT64(5)",
            "NUMERIC(a)",
            "NUMERIC(10",
            "NUMERIC()",
        ];
        for text in bad {
            assert!(text.parse::<BqTypeSpec>().is_err(), "{text} parsed");
        }
        assert_eq!(
            "INT64(5)".parse::<BqTypeSpec>().unwrap_err(),
            "`INT64(5)` has invalid type parameters (INT64 takes none)"
        );
    }
}
