//! How one source column is read ([`Codec`], [`ReadAs`]) and where it lands
//! ([`ColumnMapping`]): what the mapping decides per column, and all a source needs to extract
//! it. Nothing here names an engine: an engine's dialect turns [`ReadAs`] into its own SQL.

use serde::{Deserialize, Serialize};

use super::{SourceColumn, WarehouseField};

/// How the extractor decodes a column's values. The BigQuery type of the field decides how they
/// are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Boolean (PostgreSQL bool, MySQL `TINYINT(1)`/`BIT(1)`, SQLite integer).
    Bool,
    /// Signed integer of any width.
    Int,
    /// Unsigned integer (MySQL `UNSIGNED`, `YEAR`).
    UInt,
    /// Floating point (4 or 8 bytes).
    Float,
    /// Exact decimal (MySQL DECIMAL text, PostgreSQL binary numeric).
    Decimal,
    /// UTF-8 text.
    Text,
    /// Binary data (also MySQL `BIT(n)`, n > 1: the raw big-endian bytes).
    Bytes,
    /// A JSON document (read as text, written as raw JSON).
    Json,
    /// Calendar date.
    Date,
    /// Civil date and time, no zone.
    DateTime,
    /// Instant, read in UTC.
    Timestamp,
    /// Time of day.
    Time,
    /// A signed span of time that may exceed a day (MySQL TIME, -838:59:59 to 838:59:59),
    /// written as text `[-]HH:MM:SS[.ffffff]`.
    Duration,
    /// One-dimensional array of the element codec.
    Array(Box<Codec>),
}

/// What the extractor's `SELECT` asks the source for, before the [`Codec`] decodes it: the
/// column as stored, or converted by the engine's own function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadAs {
    /// The column itself.
    #[default]
    Native,
    /// The engine's text form of the value (PostgreSQL `::text`: interval, inet, enums,
    /// timetz, uuid, …).
    Text,
    /// The engine's exact numeric form (PostgreSQL `money` through `::numeric`).
    Numeric,
    /// Well-known text of a geometry (`ST_AsText`), as stored.
    Wkt,
    /// Well-known text in WGS 84 (SRID 4326), longitude first, as BigQuery's GEOGRAPHY reads it
    /// (https://cloud.google.com/bigquery/docs/geospatial-data#coordinate_systems_and_edges):
    /// the engine transforms other SRIDs where it can and flags, instead of a value, a geometry
    /// it cannot transform or that is not valid (see [`GEOGRAPHY_REJECT`]).
    Geography,
}

/// A geography value an engine could not deliver starts with this (no WKT does): the rest says
/// why (`srid 3857`, `invalid Self-intersection[…]`). The sink counts it as a bad value.
pub const GEOGRAPHY_REJECT: &str = "!";

/// How one source column lands in BigQuery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnMapping {
    /// The source column.
    pub source: SourceColumn,
    /// The BigQuery column name (sanitized).
    pub target: String,
    /// The BigQuery field.
    pub field: WarehouseField,
    /// How values are decoded.
    pub codec: Codec,
    /// How values are selected (for an array, how its elements are).
    #[serde(default)]
    pub read_as: ReadAs,
    /// Why the mapping may lose information (only overrides are lossy).
    pub lossy: Option<String>,
}
