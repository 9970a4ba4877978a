//! The shared vocabulary: what a source table looks like ([`SourceTable`]) and what a BigQuery
//! table looks like ([`WarehouseTable`]), how a column is read and written ([`codec`]), the
//! bad-value policies ([`policy`]), the source engines ([`engine`]) and the values sources
//! push into sinks ([`value`]). Pure data; every other module speaks in these types.

pub mod codec;
pub mod engine;
pub mod policy;
pub mod value;

use serde::{Deserialize, Serialize};

pub use codec::{Codec, ColumnMapping, ReadAs};
pub use engine::SourceKind;
pub use policy::{BadValuePolicy, DecimalOverflowPolicy, GeometryPolicy, TypePolicies, Utf8Policy};
pub use value::{
    Bad, BadKind, Decoded, ExtractStats, RowSink, TooManyBadValues, Val, decimal_text, text,
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
    /// A NULLABLE field without parameters.
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
        match (self.precision, self.scale, self.max_length) {
            (Some(precision), Some(scale), _) => {
                format!("{}({precision}, {scale})", self.bq_type.as_str())
            }
            (Some(precision), None, _) => format!("{}({precision})", self.bq_type.as_str()),
            (_, _, Some(length)) => format!("{}({length})", self.bq_type.as_str()),
            _ => self.bq_type.as_str().to_string(),
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
}

impl WarehouseTable {
    /// The field called `name` (BigQuery names are case-insensitive).
    pub fn field(&self, name: &str) -> Option<&WarehouseField> {
        self.fields
            .iter()
            .find(|field| field.name.eq_ignore_ascii_case(name))
    }
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
    /// The catalog's row estimate, when it has one.
    pub estimated_rows: Option<u64>,
    /// Table comment.
    pub comment: Option<String>,
}

impl SourceTable {
    /// `qualifier.table`, or the bare name of an unqualified table: how messages name it.
    pub fn label(&self) -> String {
        match &self.qualifier {
            Some(qualifier) => format!("{qualifier}.{}", self.name),
            None => self.name.clone(),
        }
    }
}
