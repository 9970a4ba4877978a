//! Source table → BigQuery table mapping. Pure: no IO.
//!
//! [`map_table`] picks, for every selected source column, the BigQuery field it lands in and the
//! [`Codec`] the extractor uses to read its values. Every default choice is lossless; a lossy
//! choice only comes from a `column_types` override and is reported in
//! [`ColumnMapping::lossy`] and in the warnings.
//!
//! NULL and REQUIRED: a `NOT NULL` column is always REQUIRED, whatever the policies. A bad value
//! whose policy is `null` (zero dates, NaN/±Infinity, PostgreSQL `±infinity` dates and
//! timestamps) cannot be written as NULL into a REQUIRED field, so that row fails as a bad row
//! (counted against `max_parse_failures`, as any other); nullable columns get the NULL. No
//! warning on every plan for a value that may never occur.
//!
//! Other choices:
//! - DECIMAL(p,s) → NUMERIC(p,s) if s ≤ 9 and p−s ≤ 29, else BIGNUMERIC(p,s) if s ≤ 38 and
//!   p−s ≤ 38, else STRING (policy `decimal_overflow: string`) or an error. Unconstrained
//!   PostgreSQL `numeric` → BIGNUMERIC with a warning; a value that does not fit fails its row.
//! - MySQL `BIGINT UNSIGNED` → NUMERIC(20,0); other unsigned integers and YEAR → INT64.
//! - MySQL TIME (−838:59:59..838:59:59) → STRING, exact; PostgreSQL `time` → TIME,
//!   `timetz` → STRING.
//! - PostgreSQL one-dimensional arrays → REPEATED of the element type. A NULL array is written
//!   `[]`; a NULL element (BigQuery arrays cannot hold NULL) or a multi-dimensional array fails
//!   its row (counted as `out_of_range`). Arrays of types without a native mapping are read as
//!   `text[]` → REPEATED STRING.
//! - PostgreSQL `bit`/`varbit`, `interval`, `inet`, enums, `xml`, … → STRING through `::text`;
//!   `money` → NUMERIC through `::numeric`; MySQL BIT(1) → BOOL, BIT(n) → BYTES.
//! - Values that do not fit (`out_of_range`) or cannot be read (`malformed`) always fail their
//!   row; policies only govern zero dates, non-finite values and invalid UTF-8.

mod mysql;
mod postgres;
mod sqlite;

use std::collections::HashMap;

use serde::Serialize;

use crate::diagnostic::{Code, Diagnostic, Location};
use crate::manifest::raw::WriteMode;
use crate::manifest::resolve::TableSpec;
use crate::names;
pub use crate::schema::codec::{Codec, ColumnMapping, ReadAs};
use crate::schema::{
    BadValuePolicy, BqType, BqTypeSpec, DecimalOverflowPolicy, FieldMode, GeometryPolicy,
    SourceColumn, SourceKind, SourceTable, TimePartitioning, TypePolicies, WarehouseField,
    WarehouseTable,
};

/// A whole table's mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableMapping {
    /// The desired BigQuery table.
    pub table: WarehouseTable,
    /// Column mappings, in the order the extractor selects them.
    pub columns: Vec<ColumnMapping>,
    /// Warnings (renames, relaxed modes, unconstrained numerics, lossy overrides, …).
    pub warnings: Vec<Diagnostic>,
    /// Bad-value policies the extractor applies (the table's `types`).
    pub policies: TypePolicies,
    /// Bad values tolerated before the extraction fails; `None` = unlimited.
    pub max_parse_failures: Option<u64>,
    /// Source columns naming a row in failure messages (merge key, else primary key).
    pub key_columns: Vec<String>,
    /// Most rows per encoded chunk, which is also the progress step (the table's
    /// `batch_size`). Chunks are cut at about 1 MiB too; either way the whole table still goes
    /// into one load job.
    pub batch_size: u64,
    /// The table ends with the lineage columns (`lineage: true`), which the row sink fills.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub lineage: bool,
}

impl TableMapping {
    /// The mapping of the source column `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnMapping> {
        self.columns
            .iter()
            .find(|column| column.source.name == name)
    }
}

/// What a column's natural mapping is, before overrides.
struct Natural {
    codec: Codec,
    read_as: ReadAs,
    bq_type: BqType,
    precision: Option<u32>,
    scale: Option<u32>,
    repeated: bool,
    /// The bad-value policy that can turn a value into NULL, if any.
    null_risk: Option<(&'static str, BadValuePolicy)>,
    warning: Option<String>,
}

impl Natural {
    fn new(codec: Codec, bq_type: BqType) -> Self {
        Self {
            codec,
            read_as: ReadAs::Native,
            bq_type,
            precision: None,
            scale: None,
            repeated: false,
            null_risk: None,
            warning: None,
        }
    }

    fn risk(mut self, what: &'static str, policy: BadValuePolicy) -> Self {
        self.null_risk = Some((what, policy));
        self
    }

    /// Selected through the engine's conversion `read_as`.
    fn read(mut self, read_as: ReadAs) -> Self {
        self.read_as = read_as;
        self
    }
}

/// Maps `source` for `spec`. Returns every error found, or the mapping.
pub fn map_table(source: &SourceTable, spec: &TableSpec) -> Result<TableMapping, Vec<Diagnostic>> {
    let mut found = Found {
        table: source.label(),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let (selected, overrides) = select_columns(source, spec, &mut found);
    let columns = map_columns(spec, &selected, &overrides, &mut found);
    let (partitioning, clustering) = layout(spec, &columns, &mut found);
    if spec.lineage {
        check_lineage_names(&columns, &mut found);
    }
    if !found.errors.is_empty() {
        return Err(found.errors);
    }
    let mut fields: Vec<WarehouseField> =
        columns.iter().map(|column| column.field.clone()).collect();
    if spec.lineage {
        fields.extend(crate::schema::lineage_fields());
    }
    Ok(TableMapping {
        table: WarehouseTable {
            name: spec.target.clone(),
            fields,
            partitioning,
            clustering,
            description: table_description(spec, source),
        },
        columns,
        warnings: found.warnings,
        policies: spec.types,
        max_parse_failures: spec.max_parse_failures,
        batch_size: spec.batch_size,
        key_columns: spec
            .primary_key
            .clone()
            .unwrap_or_else(|| source.primary_key.clone()),
        lineage: spec.lineage,
    })
}

/// The target's description: the manifest's `description`, else the source table's comment;
/// `None` (leave the target's as it is) when neither says anything.
fn table_description(spec: &TableSpec, source: &SourceTable) -> Option<String> {
    spec.description
        .clone()
        .or_else(|| source.comment.clone())
        .filter(|text| !text.trim().is_empty())
}

/// With `lineage: true`, no synced column may take a lineage column's BigQuery name.
fn check_lineage_names(columns: &[ColumnMapping], found: &mut Found) {
    for column in columns {
        let Some(lineage) = crate::schema::lineage_fields()
            .into_iter()
            .find(|field| field.name.eq_ignore_ascii_case(&column.target))
        else {
            continue;
        };
        let message = format!(
            "column `{}` collides with `{}`, a lineage column `lineage: true` adds (BigQuery names ignore case): add it to `exclude_columns`, or turn lineage off",
            column.source.name, lineage.name
        );
        found.column_error(Code::MappingLineageCollision, &column.source.name, message);
    }
}

/// The diagnostics of one table's mapping.
struct Found {
    /// `qualifier.table` at the source (`query:name` for a custom SQL source).
    table: String,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Found {
    fn table_error(&mut self, code: Code, message: String) {
        let location = Location::Table(self.table.clone());
        self.errors
            .push(Diagnostic::error(code, message).at(location));
    }

    fn column(&self, column: &str) -> Location {
        Location::Column {
            table: self.table.clone(),
            column: column.to_string(),
        }
    }

    fn column_error(&mut self, code: Code, column: &str, message: String) {
        let location = self.column(column);
        self.errors
            .push(Diagnostic::error(code, message).at(location));
    }

    fn column_warning(&mut self, code: Code, column: &str, message: String) {
        let location = self.column(column);
        self.warnings
            .push(Diagnostic::warning(code, message).at(location));
    }
}

/// The selected source columns (`columns` minus `exclude_columns`) and the overrides by source
/// column name.
fn select_columns<'s>(
    source: &'s SourceTable,
    spec: &'s TableSpec,
    found: &mut Found,
) -> (Vec<&'s SourceColumn>, HashMap<&'s str, &'s str>) {
    let find = |name: &str| {
        source
            .columns
            .iter()
            .find(|column| column.name == name)
            .or_else(|| {
                source
                    .columns
                    .iter()
                    .find(|column| column.name.eq_ignore_ascii_case(name))
            })
    };
    let missing = |option: &str, name: &str, table: &str| {
        let available: Vec<&str> = source.columns.iter().map(|c| c.name.as_str()).collect();
        format!(
            "`{option}` names `{name}`, which table `{table}` does not have (available: {})",
            available.join(", ")
        )
    };
    let mut selected: Vec<&SourceColumn> = Vec::new();
    match &spec.columns {
        Some(list) => {
            for name in list {
                match find(name) {
                    Some(column) if selected.iter().any(|c| c.name == column.name) => found
                        .column_error(
                            Code::MappingDuplicateColumn,
                            name,
                            format!("column `{name}` is listed twice in `columns`"),
                        ),
                    Some(column) => selected.push(column),
                    None => {
                        let message = missing("columns", name, &found.table);
                        found.column_error(Code::MappingUnknownColumn, name, message);
                    }
                }
            }
        }
        None => selected.extend(source.columns.iter()),
    }
    for name in &spec.exclude_columns {
        match find(name) {
            Some(column) => selected.retain(|c| c.name != column.name),
            None => {
                let message = missing("exclude_columns", name, &found.table);
                found.column_error(Code::MappingUnknownColumn, name, message);
            }
        }
    }
    let mut overrides: HashMap<&str, &str> = HashMap::new();
    for (name, text) in &spec.column_types {
        match find(name) {
            Some(column) => {
                overrides.insert(column.name.as_str(), text.as_str());
            }
            None => {
                let message = missing("column_types", name, &found.table);
                found.column_error(Code::MappingUnknownColumn, name, message);
            }
        }
    }
    if selected.is_empty() && found.errors.is_empty() {
        let message = format!("no column of `{}` is left to sync", found.table);
        found.table_error(Code::MappingNoColumns, message);
    }
    (selected, overrides)
}

/// Maps every selected column: natural type, BigQuery name, override, NULL policy.
fn map_columns(
    spec: &TableSpec,
    selected: &[&SourceColumn],
    overrides: &HashMap<&str, &str>,
    found: &mut Found,
) -> Vec<ColumnMapping> {
    let mut columns = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for column in selected {
        let name = column.name.as_str();
        let natural = match natural_mapping(spec, column) {
            Ok(natural) => natural,
            Err(message) => {
                let message = format!("column `{name}`: {message}");
                found.column_error(Code::MappingUnmappable, name, message);
                continue;
            }
        };
        if let Some(warning) = &natural.warning {
            let message = format!("column `{name}`: {warning}");
            found.column_warning(Code::MappingNaturalType, name, message);
        }
        let target = names::sanitize_column(name);
        if target != name {
            let message =
                format!("column `{name}` is renamed `{target}` (not a valid BigQuery name)");
            found.column_warning(Code::MappingRenamed, name, message);
        }
        if let Some(first) = seen.insert(target.to_ascii_lowercase(), column.name.clone()) {
            let message = format!(
                "columns `{first}` and `{name}` both map to BigQuery column `{target}` (names are case-insensitive)"
            );
            found.column_error(Code::MappingNameCollision, name, message);
            continue;
        }
        let choice = match overrides.get(name) {
            Some(text) => match apply_override(&natural, text) {
                Ok(choice) => {
                    if let Some(reason) = &choice.note {
                        let message =
                            format!("column `{name}`: override `{text}` may lose data: {reason}");
                        found.column_warning(Code::MappingLossyOverride, name, message);
                    }
                    choice
                }
                Err(message) => {
                    let message = format!("column `{name}`: {message}");
                    found.column_error(Code::MappingInvalidOverride, name, message);
                    continue;
                }
            },
            None => TypeChoice {
                spec: BqTypeSpec {
                    bq_type: natural.bq_type,
                    precision: natural.precision,
                    scale: natural.scale,
                    max_length: None,
                },
                note: None,
            },
        };
        let mode = if natural.repeated {
            FieldMode::Repeated
        } else if column.nullable {
            FieldMode::Nullable
        } else {
            FieldMode::Required
        };
        let mut field = WarehouseField::new(target.clone(), choice.spec.bq_type, mode);
        field.precision = choice.spec.precision;
        field.scale = choice.spec.scale;
        field.max_length = choice.spec.max_length;
        field.description = column.comment.clone().filter(|comment| !comment.is_empty());
        columns.push(ColumnMapping {
            source: (*column).clone(),
            target,
            field,
            codec: natural.codec,
            read_as: natural.read_as,
            lossy: choice.note,
        });
    }
    columns
}

/// Partitioning and clustering, and the check that every column the table names (key, cursor)
/// is synced.
fn layout(
    spec: &TableSpec,
    columns: &[ColumnMapping],
    found: &mut Found,
) -> (Option<TimePartitioning>, Vec<String>) {
    let target_of = |name: &str| {
        columns
            .iter()
            .find(|c| c.source.name == name || c.target.eq_ignore_ascii_case(name))
    };
    let not_synced = |option: &str, name: &str| {
        format!("`{option}` names `{name}`, which is not a synced column")
    };
    let partitioning =
        spec.partition_by
            .as_ref()
            .and_then(|partition| match target_of(&partition.column) {
                Some(column)
                    if matches!(
                        column.field.bq_type,
                        BqType::Date | BqType::Datetime | BqType::Timestamp
                    ) =>
                {
                    Some(TimePartitioning {
                        granularity: partition.granularity.clone(),
                        field: column.target.clone(),
                    })
                }
                Some(column) => {
                    let message = format!(
                        "`partition_by` column `{}` is {}, not DATE, DATETIME or TIMESTAMP",
                        partition.column,
                        column.field.bq_type.as_str()
                    );
                    found.column_error(Code::MappingPartition, &partition.column, message);
                    None
                }
                None => {
                    let message = not_synced("partition_by", &partition.column);
                    found.column_error(Code::MappingPartition, &partition.column, message);
                    None
                }
            });
    let mut clustering = Vec::new();
    for name in &spec.cluster_by {
        match target_of(name) {
            Some(column) => clustering.push(column.target.clone()),
            None => found.column_error(Code::MappingCluster, name, not_synced("cluster_by", name)),
        }
    }
    // `merge` without `primary_key` takes the source's; a source without one needs it set.
    if spec.mode == WriteMode::Merge
        && spec.primary_key.is_none()
        && !columns.iter().any(|column| column.source.primary_key)
    {
        found.table_error(
            Code::ManifestMergeWithoutKey,
            format!(
                "`{}` uses mode `merge` but the source table has no primary key (or it is not synced): set `primary_key`",
                found.table
            ),
        );
    }
    for key in spec.primary_key.iter().flatten() {
        if target_of(key).is_none() {
            found.column_error(Code::MappingPrimaryKey, key, not_synced("primary_key", key));
        }
    }
    if let Some(cursor) = &spec.cursor
        && target_of(cursor).is_none()
    {
        found.column_error(Code::MappingCursor, cursor, not_synced("cursor", cursor));
    }
    (partitioning, clustering)
}

/// The BigQuery type for a DECIMAL(p,s), by the lossless rule.
pub fn decimal_type(
    precision: u32,
    scale: u32,
    policy: DecimalOverflowPolicy,
) -> Result<TypeChoice, String> {
    let integer = precision.saturating_sub(scale);
    let decimal = |bq_type| BqTypeSpec {
        precision: Some(precision),
        scale: Some(scale),
        ..BqTypeSpec::plain(bq_type)
    };
    if scale <= 9 && integer <= 29 {
        Ok(TypeChoice::exact(decimal(BqType::Numeric)))
    } else if scale <= 38 && integer <= 38 {
        Ok(TypeChoice::exact(decimal(BqType::BigNumeric)))
    } else {
        match policy {
            DecimalOverflowPolicy::String => Ok(TypeChoice {
                spec: BqTypeSpec::plain(BqType::String),
                note: Some(format!(
                    "DECIMAL({precision},{scale}) fits neither NUMERIC nor BIGNUMERIC: stored as exact text"
                )),
            }),
            DecimalOverflowPolicy::Error => Err(format!(
                "DECIMAL({precision},{scale}) fits neither NUMERIC nor BIGNUMERIC (policy decimal_overflow: error)"
            )),
        }
    }
}

fn decimal_natural(
    spec: &TableSpec,
    precision: Option<u32>,
    scale: Option<u32>,
    codec: Codec,
) -> Result<Natural, String> {
    match precision {
        Some(precision) => {
            let choice = decimal_type(precision, scale.unwrap_or(0), spec.types.decimal_overflow)?;
            let mut natural = Natural::new(codec, choice.spec.bq_type);
            natural.precision = choice.spec.precision;
            natural.scale = choice.spec.scale;
            natural.warning = choice.note;
            Ok(natural)
        }
        None => {
            let mut natural = Natural::new(codec, BqType::BigNumeric);
            natural.warning = Some(
                "unconstrained numeric mapped to BIGNUMERIC: values with more than 38 integer or fraction digits fail their row"
                    .into(),
            );
            Ok(natural)
        }
    }
}

fn geometry(spec: &TableSpec) -> Natural {
    match spec.types.geometry {
        GeometryPolicy::Geography => {
            Natural::new(Codec::Text, BqType::Geography).read(ReadAs::Geography)
        }
        GeometryPolicy::String => Natural::new(Codec::Text, BqType::String).read(ReadAs::Wkt),
    }
}

/// `numeric(10,2)` → (10, 2).
fn type_params(text: &str) -> Option<(u32, Option<u32>)> {
    let inner = text.split_once('(')?.1.split_once(')')?.0;
    let mut parts = inner.split(',').map(|part| part.trim().parse::<u32>());
    let precision = parts.next()?.ok()?;
    let scale = match parts.next() {
        Some(scale) => Some(scale.ok()?),
        None => None,
    };
    Some((precision, scale))
}

fn natural_mapping(spec: &TableSpec, column: &SourceColumn) -> Result<Natural, String> {
    match spec.source_kind {
        SourceKind::Mysql => mysql::natural(spec, column),
        SourceKind::Postgres => postgres::natural(spec, column),
        SourceKind::Sqlite => sqlite::natural(spec, column),
    }
}

/// A BigQuery type with its parameters and, when lossy or notable, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeChoice {
    /// The type and its parameters.
    pub spec: BqTypeSpec,
    /// Why the choice may lose data or is worth a note; `None` when it is exact.
    pub note: Option<String>,
}

impl TypeChoice {
    fn exact(spec: BqTypeSpec) -> Self {
        Self { spec, note: None }
    }
}

/// Applies a `column_types` override (parsed by the same [`BqTypeSpec`] parser `validate` uses)
/// to a column's natural mapping.
fn apply_override(natural: &Natural, text: &str) -> Result<TypeChoice, String> {
    let spec: BqTypeSpec = text.parse()?;
    let (from, to) = (natural.bq_type, spec.bq_type);
    use BqType as T;
    let lossy: Option<&str> = match (from, to) {
        _ if from == to => match (spec.precision, spec.scale, natural.precision, natural.scale) {
            (Some(p), Some(s), Some(np), Some(ns)) if s < ns || p - s < np.saturating_sub(ns) => {
                Some("narrower precision or scale: values that do not fit fail their row")
            }
            (Some(_), Some(_), None, None) => {
                Some("values that do not fit the parameters fail their row")
            }
            _ => None,
        },
        (_, T::String) => None,
        (T::Int64, T::Numeric | T::BigNumeric)
        | (T::Numeric, T::BigNumeric)
        | (T::Bool, T::Int64) => None,
        (T::Date, T::Datetime | T::Timestamp) => None,
        (T::String, T::Bytes) => None,
        (T::Int64 | T::Numeric | T::BigNumeric, T::Float64) => Some("FLOAT64 rounds to 53 bits"),
        (T::Numeric | T::BigNumeric | T::Float64, T::Int64) => {
            Some("values with a fraction fail their row")
        }
        (T::BigNumeric | T::Float64, T::Numeric) | (T::Float64, T::BigNumeric) => {
            Some("values that do not fit fail their row")
        }
        (T::Datetime, T::Timestamp) => Some("civil date-times are read as UTC"),
        (T::Timestamp, T::Datetime) => Some("the UTC wall-clock time is kept, the zone is dropped"),
        (T::String, T::Json) => Some("text that is not JSON fails its row"),
        (T::String, T::Geography) => Some("text that is not WKT/GeoJSON is rejected by BigQuery"),
        _ => {
            return Err(format!(
                "cannot write {} values into an override type `{text}`",
                from.as_str()
            ));
        }
    };
    let note = match (lossy, spec.max_length) {
        (Some(reason), _) => Some(reason.to_string()),
        (None, Some(length)) => Some(format!(
            "values longer than {length} are rejected by BigQuery and fail the load"
        )),
        (None, None) => None,
    };
    Ok(TypeChoice { spec, note })
}

#[cfg(test)]
mod tests;
