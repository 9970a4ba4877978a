//! SQLite natural types: the declared type, by SQLite's affinity rules → codec and BigQuery
//! type.

use super::{Natural, TableSpec, decimal_natural, type_params};
use crate::schema::{BqType, Codec, SourceColumn};

pub(super) fn natural(spec: &TableSpec, column: &SourceColumn) -> Result<Natural, String> {
    let declared = column.column_type.to_ascii_uppercase();
    let base = declared.split('(').next().unwrap_or("").trim().to_string();
    let non_finite = ("±Infinity values", spec.types.non_finite);
    Ok(match base.as_str() {
        "BOOL" | "BOOLEAN" => Natural::new(Codec::Bool, BqType::Bool),
        "DATE" => Natural::new(Codec::Date, BqType::Date),
        "DATETIME" => Natural::new(Codec::DateTime, BqType::Datetime),
        "JSON" | "JSONB" => Natural::new(Codec::Json, BqType::Json),
        "TIMESTAMP" | "TIME" => Natural::new(Codec::Text, BqType::String),
        _ if base.contains("INT") => Natural::new(Codec::Int, BqType::Int64),
        _ if base.contains("CHAR") || base.contains("CLOB") || base.contains("TEXT") => {
            Natural::new(Codec::Text, BqType::String)
        }
        _ if base.contains("BLOB") => Natural::new(Codec::Bytes, BqType::Bytes),
        "" => {
            let mut natural = Natural::new(Codec::Text, BqType::String);
            natural.warning = Some("no declared type: values are written as text".into());
            natural
        }
        _ if base.contains("REAL") || base.contains("FLOA") || base.contains("DOUB") => {
            Natural::new(Codec::Float, BqType::Float64).risk(non_finite.0, non_finite.1)
        }
        _ => {
            let params = type_params(&declared);
            decimal_natural(
                spec,
                params.map(|p| p.0),
                params.map(|p| p.1.unwrap_or(0)),
                Codec::Decimal,
            )?
        }
    })
}
