//! MySQL/MariaDB natural types: `information_schema` `data_type`/`column_type` → codec and
//! BigQuery type.

use super::{Natural, TableSpec, decimal_natural, geometry};
use crate::schema::{BqType, Codec, SourceColumn};

pub(super) fn natural(spec: &TableSpec, column: &SourceColumn) -> Result<Natural, String> {
    let data_type = column.data_type.to_ascii_lowercase();
    let column_type = column.column_type.to_ascii_lowercase();
    let unsigned = column_type.contains("unsigned");
    let zero = ("zero dates", spec.types.zero_dates);
    Ok(match data_type.as_str() {
        "tinyint"
            if column_type.starts_with("tinyint(1)")
                && !unsigned
                && spec.types.tinyint1_as_bool =>
        {
            Natural::new(Codec::Bool, BqType::Bool)
        }
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" => Natural::new(
            if unsigned { Codec::UInt } else { Codec::Int },
            BqType::Int64,
        ),
        "bigint" if unsigned => {
            let mut natural = Natural::new(Codec::UInt, BqType::Numeric);
            natural.precision = Some(20);
            natural.scale = Some(0);
            natural
        }
        "bigint" => Natural::new(Codec::Int, BqType::Int64),
        "year" => Natural::new(Codec::UInt, BqType::Int64),
        "decimal" | "numeric" | "dec" | "fixed" => decimal_natural(
            spec,
            column.precision.or(Some(10)),
            column.scale.or(Some(0)),
            Codec::Decimal,
        )?,
        "float" | "double" | "real" | "double precision" => {
            Natural::new(Codec::Float, BqType::Float64)
        }
        "bit" if column.precision.unwrap_or(1) == 1 => Natural::new(Codec::Bool, BqType::Bool),
        "bit" => Natural::new(Codec::Bytes, BqType::Bytes),
        "date" => Natural::new(Codec::Date, BqType::Date).risk(zero.0, zero.1),
        "datetime" => Natural::new(Codec::DateTime, BqType::Datetime).risk(zero.0, zero.1),
        "timestamp" => Natural::new(Codec::Timestamp, BqType::Timestamp).risk(zero.0, zero.1),
        "time" => Natural::new(Codec::Duration, BqType::String),
        "json" => Natural::new(Codec::Json, BqType::Json),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" if column.is_json => {
            Natural::new(Codec::Json, BqType::Json)
        }
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set"
        | "uuid" | "inet4" | "inet6" => Natural::new(Codec::Text, BqType::String),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            Natural::new(Codec::Bytes, BqType::Bytes)
        }
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => geometry(spec),
        other => {
            let mut natural = Natural::new(Codec::Text, BqType::String);
            natural.warning = Some(format!("unknown MySQL type `{other}` read as text"));
            natural
        }
    })
}
