//! The SQL each engine is sent, built without a connection: a [`Dialect`] per engine (quoting,
//! the select expression of a column, the bound predicate and its value) and the generic
//! [`count_sql`] and [`select_sql`] builders over it.
//!
//! Every identifier is quoted; the cursor value is bound as a parameter, never spliced into SQL.
//! A custom SQL source is read as a derived table, `SELECT … FROM (<query>) AS q [WHERE …]`,
//! with the same bound parameter.

use super::{CursorFilter, SourceError};
use crate::schema::{Codec, ColumnMapping, GEOGRAPHY_REJECT, ReadAs, SourceTable};

/// A statement and the one value it binds, if any (the cursor bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    /// The SQL text.
    pub sql: String,
    /// The value of its only parameter.
    pub bind: Option<String>,
}

/// What differs between engines in the SQL datasync sends. Pure.
pub(crate) trait Dialect: Sync {
    /// Quotes an identifier; rejects one with a NUL character.
    fn quote(&self, ident: &str) -> Result<String, SourceError>;

    /// The `SELECT` expression reading `column` as its [`ReadAs`] and [`Codec`] need.
    fn select_expr(&self, column: &ColumnMapping) -> Result<String, SourceError>;

    /// `column > <parameter 1>` (`>=` when `inclusive`), with the cast the engine needs to
    /// compare the bound text as the column's type.
    fn bound_predicate(
        &self,
        column: &ColumnMapping,
        inclusive: bool,
    ) -> Result<String, SourceError>;

    /// The bound value as the engine parses it, from the target's maximum as text.
    fn bind_value(&self, column: &ColumnMapping, max: &str) -> String;

    /// The exact row count expression.
    fn count_expr(&self) -> &'static str {
        "count(*)"
    }

    /// The table as a `FROM` item: `qualifier.table`, each part quoted; a custom SQL source as
    /// the derived table `(<query>) AS q` (on lines of its own, so a trailing `--` comment in
    /// the query cannot swallow the closing parenthesis).
    fn table_ref(&self, table: &SourceTable) -> Result<String, SourceError> {
        if let Some(query) = &table.query {
            return Ok(format!("(\n{query}\n) AS q"));
        }
        Ok(match &table.qualifier {
            Some(qualifier) => format!("{}.{}", self.quote(qualifier)?, self.quote(&table.name)?),
            None => self.quote(&table.name)?,
        })
    }
}

/// The predicate of one extraction chunk on `key` (a quoted integer key column, or ignored
/// for page ranges): bounds are integers formatted here, never user text. `None` for a range
/// the engine cannot express (ctid pages outside PostgreSQL).
pub(crate) fn chunk_predicate(
    dialect: &dyn Dialect,
    key: &str,
    range: crate::schema::ChunkRange,
    postgres: bool,
) -> Result<Option<String>, SourceError> {
    use crate::schema::ChunkRange;
    Ok(match range {
        ChunkRange::Key { lo, hi } => {
            let quoted = dialect.quote(key)?;
            let parts: Vec<String> = lo
                .map(|lo| format!("{quoted} >= {lo}"))
                .into_iter()
                .chain(hi.map(|hi| format!("{quoted} < {hi}")))
                .collect();
            Some(if parts.is_empty() {
                "TRUE".to_string()
            } else {
                parts.join(" AND ")
            })
        }
        ChunkRange::Pages { .. } if !postgres => None,
        ChunkRange::Pages { lo, hi } => Some(match hi {
            Some(hi) => format!("ctid >= '({lo},0)'::tid AND ctid < '({hi},0)'::tid"),
            None => format!("ctid >= '({lo},0)'::tid"),
        }),
    })
}

/// `>=` or `>`.
fn operator(inclusive: bool) -> &'static str {
    if inclusive { ">=" } else { ">" }
}

/// Quotes `name` between `quote` characters, doubling embedded ones.
fn quote_with(name: &str, quote: char) -> Result<String, SourceError> {
    if name.contains('\0') {
        return Err(SourceError::Invalid(format!(
            "identifier {name:?} contains a NUL character"
        )));
    }
    let doubled: String = [quote, quote].iter().collect();
    Ok(format!("{quote}{}{quote}", name.replace(quote, &doubled)))
}

/// A cursor value from BigQuery text (`2024-01-02 03:04:05.123456 UTC`, `…T…Z`) to the
/// `YYYY-MM-DD HH:MM:SS.ffffff` form every engine parses.
pub(crate) fn normalize_temporal(value: &str) -> String {
    let trimmed = value.trim();
    let trimmed = trimmed
        .strip_suffix(" UTC")
        .or_else(|| trimmed.strip_suffix('Z'))
        .unwrap_or(trimmed);
    let trimmed = trimmed.strip_suffix("+00:00").unwrap_or(trimmed);
    trimmed.replacen('T', " ", 1)
}

fn is_temporal(codec: &Codec) -> bool {
    matches!(codec, Codec::Date | Codec::DateTime | Codec::Timestamp)
}

/// MySQL and MariaDB. Geography: MariaDB has no spatial reference systems (its coordinates are
/// x = longitude, y = latitude as written) and no `ST_Transform`, so a geometry in another SRID
/// than 0 or 4326 is flagged; [`Mysql8`] covers MySQL 8's axis order.
pub(crate) struct Mysql;

impl Dialect for Mysql {
    fn quote(&self, ident: &str) -> Result<String, SourceError> {
        quote_with(ident, '`')
    }

    fn select_expr(&self, column: &ColumnMapping) -> Result<String, SourceError> {
        let quoted = self.quote(&column.source.name)?;
        Ok(match column.read_as {
            // DECIMAL is read as its exact text already.
            ReadAs::Native | ReadAs::Numeric => quoted,
            ReadAs::Text => format!("CAST({quoted} AS CHAR)"),
            ReadAs::Wkt => format!("ST_AsText({quoted})"),
            ReadAs::Geography => format!(
                "CASE WHEN ST_SRID({quoted}) IN (0, 4326) THEN ST_AsText({quoted}) \
                 ELSE CONCAT('{GEOGRAPHY_REJECT}srid ', ST_SRID({quoted})) END"
            ),
        })
    }

    fn bound_predicate(
        &self,
        column: &ColumnMapping,
        inclusive: bool,
    ) -> Result<String, SourceError> {
        let quoted = self.quote(&column.source.name)?;
        let placeholder = match &column.codec {
            Codec::Int => "CAST(? AS SIGNED)".to_string(),
            Codec::UInt => "CAST(? AS UNSIGNED)".to_string(),
            Codec::Decimal => {
                let precision = column.source.precision.unwrap_or(65).min(65);
                let scale = column.source.scale.unwrap_or(0).min(30);
                format!("CAST(? AS DECIMAL({precision},{scale}))")
            }
            Codec::Date => "CAST(? AS DATE)".to_string(),
            Codec::DateTime | Codec::Timestamp => "CAST(? AS DATETIME(6))".to_string(),
            _ => "?".to_string(),
        };
        Ok(format!("{quoted} {} {placeholder}", operator(inclusive)))
    }

    fn bind_value(&self, column: &ColumnMapping, max: &str) -> String {
        if is_temporal(&column.codec) {
            normalize_temporal(max)
        } else {
            max.to_string()
        }
    }

    fn count_expr(&self) -> &'static str {
        "CAST(COUNT(*) AS SIGNED)"
    }
}

/// MySQL 8: SRID 4326 is geographic with latitude-first axis order, so `ST_AsText` would write
/// `POINT(lat lon)` where BigQuery reads `POINT(lon lat)`; `axis-order=long-lat` fixes the order
/// (https://dev.mysql.com/doc/refman/8.0/en/gis-format-conversion-functions.html#function_st-astext),
/// other SRIDs are transformed to 4326, and invalid geometries are flagged. Everything else is
/// [`Mysql`]'s.
pub(crate) struct Mysql8;

impl Dialect for Mysql8 {
    fn quote(&self, ident: &str) -> Result<String, SourceError> {
        Mysql.quote(ident)
    }

    fn select_expr(&self, column: &ColumnMapping) -> Result<String, SourceError> {
        if column.read_as != ReadAs::Geography {
            return Mysql.select_expr(column);
        }
        let quoted = self.quote(&column.source.name)?;
        Ok(format!(
            "CASE WHEN NOT ST_IsValid({quoted}) THEN '{GEOGRAPHY_REJECT}invalid geometry' \
             WHEN ST_SRID({quoted}) IN (0, 4326) THEN ST_AsText({quoted}, 'axis-order=long-lat') \
             ELSE ST_AsText(ST_Transform({quoted}, 4326), 'axis-order=long-lat') END"
        ))
    }

    fn bound_predicate(
        &self,
        column: &ColumnMapping,
        inclusive: bool,
    ) -> Result<String, SourceError> {
        Mysql.bound_predicate(column, inclusive)
    }

    fn bind_value(&self, column: &ColumnMapping, max: &str) -> String {
        Mysql.bind_value(column, max)
    }

    fn count_expr(&self) -> &'static str {
        Mysql.count_expr()
    }
}

/// PostgreSQL.
pub(crate) struct Postgres;

impl Dialect for Postgres {
    fn quote(&self, ident: &str) -> Result<String, SourceError> {
        quote_with(ident, '"')
    }

    fn select_expr(&self, column: &ColumnMapping) -> Result<String, SourceError> {
        let quoted = self.quote(&column.source.name)?;
        let array = if matches!(column.codec, Codec::Array(_)) {
            "[]"
        } else {
            ""
        };
        let element = match &column.codec {
            Codec::Array(element) => element.as_ref(),
            codec => codec,
        };
        Ok(match column.read_as {
            ReadAs::Wkt => format!("ST_AsText({quoted})"),
            // PostGIS: geography is WGS 84 already; a geometry in another SRID is transformed
            // (SRID 0 = unknown, taken as WGS 84); an invalid one is flagged with the reason.
            ReadAs::Geography => format!(
                "CASE WHEN NOT ST_IsValid({quoted}::geometry) THEN '{GEOGRAPHY_REJECT}invalid ' || ST_IsValidReason({quoted}::geometry) \
                 WHEN ST_SRID({quoted}::geometry) IN (0, 4326) THEN ST_AsText({quoted}::geometry) \
                 ELSE ST_AsText(ST_Transform({quoted}::geometry, 4326)) END"
            ),
            ReadAs::Numeric => format!("{quoted}::numeric{array}"),
            // jsonb's binary form has a version byte: JSON is read as text.
            ReadAs::Text => format!("{quoted}::text{array}"),
            ReadAs::Native if matches!(element, Codec::Json) => format!("{quoted}::text{array}"),
            ReadAs::Native => quoted,
        })
    }

    fn bound_predicate(
        &self,
        column: &ColumnMapping,
        inclusive: bool,
    ) -> Result<String, SourceError> {
        let quoted = self.quote(&column.source.name)?;
        let cast = &column.source.column_type;
        if !cast
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " (),_[]".contains(c))
        {
            return Err(SourceError::Invalid(format!(
                "cursor column `{}` has an unsupported type `{cast}`",
                column.source.name
            )));
        }
        Ok(format!("{quoted} {} $1::{cast}", operator(inclusive)))
    }

    fn bind_value(&self, column: &ColumnMapping, max: &str) -> String {
        match column.codec {
            Codec::Timestamp => format!("{}+00", normalize_temporal(max)),
            Codec::Date | Codec::DateTime => normalize_temporal(max),
            _ => max.to_string(),
        }
    }
}

/// SQLite.
pub(crate) struct Sqlite;

impl Dialect for Sqlite {
    fn quote(&self, ident: &str) -> Result<String, SourceError> {
        quote_with(ident, '"')
    }

    fn select_expr(&self, column: &ColumnMapping) -> Result<String, SourceError> {
        let quoted = self.quote(&column.source.name)?;
        match column.read_as {
            // Values are read by storage class and converted by the codec.
            ReadAs::Native | ReadAs::Numeric => Ok(quoted),
            ReadAs::Text => Ok(format!("CAST({quoted} AS TEXT)")),
            ReadAs::Wkt | ReadAs::Geography => Err(SourceError::Invalid(format!(
                "column `{}`: SQLite has no geometry functions to read well-known text",
                column.source.name
            ))),
        }
    }

    fn bound_predicate(
        &self,
        column: &ColumnMapping,
        inclusive: bool,
    ) -> Result<String, SourceError> {
        let quoted = self.quote(&column.source.name)?;
        let placeholder = match column.codec {
            Codec::Int => "CAST(?1 AS INTEGER)",
            Codec::Float | Codec::Decimal => "CAST(?1 AS REAL)",
            _ => "?1",
        };
        Ok(format!("{quoted} {} {placeholder}", operator(inclusive)))
    }

    fn bind_value(&self, _column: &ColumnMapping, max: &str) -> String {
        max.to_string()
    }
}

/// The cursor column's mapping, checked.
fn cursor_column<'m>(
    columns: &'m [ColumnMapping],
    table: &SourceTable,
    filter: &CursorFilter,
) -> Result<&'m ColumnMapping, SourceError> {
    columns
        .iter()
        .find(|column| column.source.name == filter.column)
        .ok_or_else(|| {
            SourceError::Invalid(format!(
                "cursor column `{}` is not extracted from `{}`",
                filter.column, table.name
            ))
        })
}

/// ` WHERE <bound predicate>` and the bound value.
fn where_clause(
    dialect: &dyn Dialect,
    table: &SourceTable,
    columns: &[ColumnMapping],
    filter: &CursorFilter,
) -> Result<(String, String), SourceError> {
    let column = cursor_column(columns, table, filter)?;
    let predicate = dialect.bound_predicate(column, filter.inclusive)?;
    // An inclusive bound is a merge's (upserts are idempotent): rows whose nullable cursor is
    // NULL are never past any maximum, so they are read again on every run instead of never.
    let predicate = if filter.inclusive && column.source.nullable {
        format!(
            "({predicate} OR {} IS NULL)",
            dialect.quote(&column.source.name)?
        )
    } else {
        predicate
    };
    Ok((
        format!(" WHERE {predicate}"),
        dialect.bind_value(column, &filter.value),
    ))
}

/// `SELECT count(*) FROM t [WHERE cursor > $1]`.
pub(crate) fn count_sql(
    dialect: &dyn Dialect,
    table: &SourceTable,
    columns: &[ColumnMapping],
    filter: Option<&CursorFilter>,
) -> Result<Statement, SourceError> {
    let mut sql = format!(
        "SELECT {} FROM {}",
        dialect.count_expr(),
        dialect.table_ref(table)?
    );
    let mut bind = None;
    if let Some(filter) = filter {
        let (clause, value) = where_clause(dialect, table, columns, filter)?;
        sql.push_str(&clause);
        bind = Some(value);
    }
    Ok(Statement { sql, bind })
}

/// `SELECT <columns> FROM t [WHERE cursor > $1 [AND (<chunk>)] ORDER BY cursor]`; `chunk` is a
/// [`chunk_predicate`].
pub(crate) fn select_sql(
    dialect: &dyn Dialect,
    table: &SourceTable,
    columns: &[ColumnMapping],
    filter: Option<&CursorFilter>,
    chunk: Option<&str>,
) -> Result<Statement, SourceError> {
    let select = columns
        .iter()
        .map(|column| dialect.select_expr(column))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sql = format!(
        "SELECT {} FROM {}",
        select.join(", "),
        dialect.table_ref(table)?
    );
    let mut bind = None;
    match (filter, chunk) {
        (Some(filter), chunk) => {
            let (clause, value) = where_clause(dialect, table, columns, filter)?;
            sql.push_str(&clause);
            if let Some(chunk) = chunk {
                sql.push_str(&format!(" AND ({chunk})"));
            }
            sql.push_str(&format!(" ORDER BY {}", dialect.quote(&filter.column)?));
            bind = Some(value);
        }
        (None, Some(chunk)) => sql.push_str(&format!(" WHERE {chunk}")),
        (None, None) => {}
    }
    Ok(Statement { sql, bind })
}

#[cfg(test)]
mod tests;
