//! PostgreSQL natural types: `data_type` (or `udt_name` for arrays and user-defined types) →
//! codec, select conversion and BigQuery type.

use super::{Natural, TableSpec, decimal_natural, geometry, type_params};
use crate::schema::{BqType, Codec, ReadAs, SourceColumn};

/// A PostgreSQL type read through `::text` as STRING.
fn cast_text() -> Natural {
    Natural::new(Codec::Text, BqType::String).read(ReadAs::Text)
}

/// The codec and type of a PostgreSQL array element, by `udt_name` without the `_`.
fn postgres_element(spec: &TableSpec, element: &str, column_type: &str) -> Result<Natural, String> {
    let non_finite = ("NaN/±Infinity values", spec.types.non_finite);
    Ok(match element {
        "int2" | "int4" | "int8" => Natural::new(Codec::Int, BqType::Int64),
        "float4" | "float8" => {
            Natural::new(Codec::Float, BqType::Float64).risk(non_finite.0, non_finite.1)
        }
        "numeric" => {
            let params = type_params(column_type);
            decimal_natural(
                spec,
                params.map(|p| p.0),
                params.and_then(|p| p.1).or(params.map(|_| 0)),
                Codec::Decimal,
            )?
        }
        "bool" => Natural::new(Codec::Bool, BqType::Bool),
        "text" | "varchar" | "bpchar" | "name" | "citext" => {
            Natural::new(Codec::Text, BqType::String)
        }
        "uuid" => cast_text(),
        "bytea" => Natural::new(Codec::Bytes, BqType::Bytes),
        "date" => {
            Natural::new(Codec::Date, BqType::Date).risk("±infinity dates", spec.types.non_finite)
        }
        "timestamp" => Natural::new(Codec::DateTime, BqType::Datetime)
            .risk("±infinity timestamps", spec.types.non_finite),
        "timestamptz" => Natural::new(Codec::Timestamp, BqType::Timestamp)
            .risk("±infinity timestamps", spec.types.non_finite),
        "time" => Natural::new(Codec::Time, BqType::Time),
        "json" | "jsonb" => Natural::new(Codec::Json, BqType::Json),
        "money" => Natural::new(Codec::Decimal, BqType::Numeric).read(ReadAs::Numeric),
        "geometry" | "geography" => geometry(spec),
        _ => cast_text(),
    })
}

pub(super) fn natural(spec: &TableSpec, column: &SourceColumn) -> Result<Natural, String> {
    let data_type = column.data_type.to_ascii_lowercase();
    if let Some(element) = data_type.strip_prefix('_') {
        let element_natural = postgres_element(spec, element, &column.column_type)?;
        if matches!(element_natural.read_as, ReadAs::Wkt | ReadAs::Geography) {
            return Ok(cast_text());
        }
        let mut natural = Natural::new(
            Codec::Array(Box::new(element_natural.codec)),
            element_natural.bq_type,
        )
        .read(element_natural.read_as);
        natural.precision = element_natural.precision;
        natural.scale = element_natural.scale;
        natural.repeated = true;
        natural.warning = element_natural.warning;
        return Ok(natural);
    }
    let element = match data_type.as_str() {
        "smallint" => "int2",
        "integer" => "int4",
        "bigint" => "int8",
        "real" => "float4",
        "double precision" => "float8",
        "boolean" => "bool",
        "text" => "text",
        "character varying" => "varchar",
        "character" => "bpchar",
        "name" => "name",
        "uuid" => "uuid",
        "bytea" => "bytea",
        "date" => "date",
        "timestamp without time zone" => "timestamp",
        "timestamp with time zone" => "timestamptz",
        "time without time zone" => "time",
        "json" => "json",
        "jsonb" => "jsonb",
        "money" => "money",
        "numeric" => {
            return decimal_natural(spec, column.precision, column.scale, Codec::Decimal)
                .map(|natural| natural.risk("NaN/±Infinity values", spec.types.non_finite));
        }
        other => other,
    };
    postgres_element(spec, element, &column.column_type)
}
