//! The SQL of the merge and reject paths beside the MERGE itself ([`super::merge_statement`]):
//! deleting (or soft-deleting) target rows whose key is gone, the dry runs that estimate a
//! MERGE's bytes, counting duplicate keys in staging, and copying a replace's earlier rows for
//! rejected keys into staging. Pure; `qualify` turns a table name into a quoted full name.

use super::{MergeRequest, WarehouseError, quote_ident};
use crate::schema::{DELETED_AT_COLUMN, Deletes, FieldMode, WarehouseTable};

/// The statement that follows the MERGE in its transaction: target rows whose key is not in the
/// run's keys table are deleted (`hard`) or get `_datasync_deleted_at` (`soft`, only rows not
/// already marked, so the first time a key left is kept).
///
/// `NOT EXISTS` correlated on every key column, not `NOT IN`: `NOT IN` over a set holding a
/// NULL is never true (it would delete nothing), and it takes one column only. A target row
/// with a NULL key part is never touched: the MERGE never matches it (`=`), so it is not a row
/// the key manages. `=` (rather than a NULL-safe comparison) keeps the anti-join a hash join.
/// <https://cloud.google.com/bigquery/docs/reference/standard-sql/dml-syntax#delete_statement>
pub fn deletes_statement(
    target: &str,
    keys_table: &str,
    keys: &[String],
    deletes: Deletes,
) -> String {
    let not_null = keys
        .iter()
        .map(|key| format!("T.{} IS NOT NULL", quote_ident(key)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let matched = keys
        .iter()
        .map(|key| format!("K.{0} = T.{0}", quote_ident(key)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let gone = format!("{not_null} AND NOT EXISTS (SELECT 1 FROM {keys_table} K WHERE {matched})");
    match deletes {
        Deletes::Soft => {
            let column = quote_ident(DELETED_AT_COLUMN);
            format!(
                "UPDATE {target} T SET {column} = CURRENT_TIMESTAMP() WHERE T.{column} IS NULL AND {gone}"
            )
        }
        Deletes::Hard | Deletes::Keep => format!("DELETE FROM {target} T WHERE {gone}"),
    }
}

/// A typed empty table in place of one that does not exist yet (a run's staging or keys
/// table): `(SELECT * FROM UNNEST(ARRAY<STRUCT<…>>[]))`. It references no table, so a dry run of
/// a statement using it reports the bytes the statement reads of the other tables only.
fn stand_in(target: &WarehouseTable, columns: &[String]) -> Result<String, WarehouseError> {
    let fields = columns
        .iter()
        .map(|column| {
            let field = target.field(column).ok_or_else(|| {
                WarehouseError::Invalid(format!(
                    "the target `{}` has no column `{column}`",
                    target.name
                ))
            })?;
            // Base types: a parameterized type (STRING(10)) is for column definitions.
            let base = field.bq_type.as_str();
            let ty = if field.mode == FieldMode::Repeated {
                format!("ARRAY<{base}>")
            } else {
                base.to_string()
            };
            Ok(format!("{} {ty}", quote_ident(&field.name)))
        })
        .collect::<Result<Vec<_>, WarehouseError>>()?;
    Ok(format!(
        "(SELECT * FROM UNNEST(ARRAY<STRUCT<{}>>[]))",
        fields.join(", ")
    ))
}

/// The statements a dry run prices for `request` against the existing `target`, as
/// `(statement, SQL)`: the MERGE, then (with `deletes`) the delete statement, each with typed
/// empty stand-ins for the run's staging and keys tables (they don't exist at plan time).
///
/// Why stand-ins rather than the target as the MERGE's source, or a SELECT of what the MERGE
/// reads: the bytes of a MERGE with an UPDATE clause are q + t, the columns it reads plus the
/// whole target (<https://cloud.google.com/bigquery/docs/reference/standard-sql/dml-syntax#on-demand_query_size_calculation>).
/// The target as its own source would count every target column twice (staging is only this
/// run's rows), and a SELECT is billed q alone (no t). The real statement over an empty
/// stand-in is priced by BigQuery itself, t included, partition pruning and all; the staging
/// side is then added at its 10 MB minimum ([`crate::plan::WriteCost::dry_run`]).
///
/// Columns this run adds are left out (the target does not have them yet, and they hold no
/// bytes); a soft delete whose column is still to be added is priced as the DELETE (the same
/// key columns read, the same t).
pub fn dry_run_statements(
    request: &MergeRequest,
    target: &WarehouseTable,
    qualify: impl Fn(&str) -> String,
) -> Result<Vec<(String, String)>, WarehouseError> {
    let columns: Vec<String> = request
        .columns
        .iter()
        .filter(|column| target.field(column).is_some())
        .cloned()
        .collect();
    let staging = stand_in(target, &columns)?;
    let keys = stand_in(target, &request.keys)?;
    let deletes = match request.deletes {
        Deletes::Soft if target.field(DELETED_AT_COLUMN).is_none() => Deletes::Hard,
        other => other,
    };
    let merge = MergeRequest {
        columns,
        deletes,
        keys_table: None,
        ..request.clone()
    };
    let qualified = |name: &str| {
        if name == request.staging {
            staging.clone()
        } else {
            qualify(name)
        }
    };
    let mut statements = vec![(
        "MERGE".to_string(),
        super::merge_only_statement(&merge, qualified)?,
    )];
    if !deletes.is_keep() {
        let name = if deletes == Deletes::Soft {
            "UPDATE"
        } else {
            "DELETE"
        };
        statements.push((
            name.to_string(),
            deletes_statement(&qualify(&request.target), &keys, &request.keys, deletes),
        ));
    }
    Ok(statements)
}

/// Rows of `table` beyond the first of their key: what the MERGE's de-duplication leaves out.
/// Over the run's staging table (small beside the target), reading the key columns only.
pub fn duplicate_keys_query(table: &str, keys: &[String]) -> String {
    let keys = keys
        .iter()
        .map(|key| quote_ident(key))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT IFNULL(SUM(n - 1), 0) AS duplicates FROM (SELECT COUNT(*) AS n FROM {table} GROUP BY {keys})"
    )
}

/// `INSERT INTO into (columns) SELECT columns FROM from WHERE` the key is in `@keys`, an
/// `ARRAY<STRUCT<k0, k1, …>>` query parameter holding the rejected keys (one value per key
/// column). It reads `from` and writes `into` only.
pub fn copy_rows_by_key_statement(
    from: &str,
    into: &str,
    columns: &[String],
    keys: &[String],
) -> String {
    let list = columns
        .iter()
        .map(|column| quote_ident(column))
        .collect::<Vec<_>>()
        .join(", ");
    let matched = keys
        .iter()
        .enumerate()
        .map(|(index, key)| format!("K.k{index} = T.{}", quote_ident(key)))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "INSERT INTO {into} ({list}) SELECT {list} FROM {from} T WHERE EXISTS (SELECT 1 FROM UNNEST(@keys) AS K WHERE {matched})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{BqType, WarehouseField};

    fn request(deletes: Deletes) -> MergeRequest {
        MergeRequest {
            staging: "stg".into(),
            target: "tgt".into(),
            keys: vec!["a".into(), "b".into()],
            columns: vec!["a".into(), "b".into(), "v".into(), "new".into()],
            order_by: None,
            job_id: None,
            deletes,
            keys_table: Some("keys".into()),
        }
    }

    fn target(soft: bool) -> WarehouseTable {
        let mut fields = vec![
            WarehouseField::new("a", BqType::Int64, FieldMode::Required),
            WarehouseField::new("b", BqType::String, FieldMode::Required),
            WarehouseField::new("v", BqType::Numeric, FieldMode::Nullable),
        ];
        if soft {
            fields.push(WarehouseField::new(
                DELETED_AT_COLUMN,
                BqType::Timestamp,
                FieldMode::Nullable,
            ));
        }
        WarehouseTable {
            description: None,
            name: "tgt".into(),
            fields,
            partitioning: None,
            clustering: Vec::new(),
        }
    }

    #[test]
    fn hard_and_soft_deletes_are_not_exists_on_every_key_column() {
        assert_eq!(
            deletes_statement(
                "`p.d.t`",
                "`p.d.k`",
                &["a".into(), "b".into()],
                Deletes::Hard
            ),
            "DELETE FROM `p.d.t` T WHERE T.`a` IS NOT NULL AND T.`b` IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM `p.d.k` K WHERE K.`a` = T.`a` AND K.`b` = T.`b`)"
        );
        assert_eq!(
            deletes_statement("`p.d.t`", "`p.d.k`", &["id".into()], Deletes::Soft),
            "UPDATE `p.d.t` T SET `_datasync_deleted_at` = CURRENT_TIMESTAMP() \
             WHERE T.`_datasync_deleted_at` IS NULL AND T.`id` IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM `p.d.k` K WHERE K.`id` = T.`id`)"
        );
    }

    #[test]
    fn the_merge_and_its_delete_run_in_one_transaction() {
        let qualify = |name: &str| format!("`p.d.{name}`");
        let hard = super::super::merge_statement(&request(Deletes::Hard), qualify).unwrap();
        assert!(
            hard.starts_with("BEGIN TRANSACTION;\nMERGE `p.d.tgt` T USING"),
            "{hard}"
        );
        assert!(
            hard.ends_with(
                ";\nDELETE FROM `p.d.tgt` T WHERE T.`a` IS NOT NULL AND T.`b` IS NOT NULL AND NOT EXISTS (SELECT 1 FROM `p.d.keys` K WHERE K.`a` = T.`a` AND K.`b` = T.`b`);\nCOMMIT TRANSACTION;"
            ),
            "{hard}"
        );
        // Soft: the MERGE un-deletes a key that came back.
        let soft = super::super::merge_statement(&request(Deletes::Soft), qualify).unwrap();
        assert!(
            soft.contains("WHEN MATCHED THEN UPDATE SET `v` = S.`v`, `new` = S.`new`, `_datasync_deleted_at` = NULL"),
            "{soft}"
        );
        assert!(soft.contains(";\nUPDATE `p.d.tgt` T SET"), "{soft}");
        // Keep: the MERGE alone, as before.
        let keep = super::super::merge_statement(&request(Deletes::Keep), qualify).unwrap();
        assert!(
            keep.starts_with("MERGE ") && !keep.contains("DELETE"),
            "{keep}"
        );
        // Deletes need the keys table.
        let missing = MergeRequest {
            keys_table: None,
            ..request(Deletes::Hard)
        };
        assert!(super::super::merge_statement(&missing, qualify).is_err());
    }

    #[test]
    fn dry_runs_price_the_real_statements_over_empty_stand_ins() {
        let qualify = |name: &str| format!("`p.d.{name}`");
        let statements =
            dry_run_statements(&request(Deletes::Soft), &target(true), qualify).unwrap();
        let names: Vec<&str> = statements.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["MERGE", "UPDATE"]);
        let merge = &statements[0].1;
        // The staging stand-in holds the target's columns (not `new`, which is being added),
        // in base types; nothing but the target is a table.
        assert!(
            merge.starts_with(
                "MERGE `p.d.tgt` T USING (SELECT * FROM (SELECT * FROM UNNEST(ARRAY<STRUCT<`a` INT64, `b` STRING, `v` NUMERIC>>[])) WHERE"
            ),
            "{merge}"
        );
        assert!(
            !merge.contains("`p.d.stg`") && !merge.contains("`new`"),
            "{merge}"
        );
        assert!(
            statements[1]
                .1
                .contains("NOT EXISTS (SELECT 1 FROM (SELECT * FROM UNNEST(ARRAY<STRUCT<`a` INT64, `b` STRING>>[])) K"),
            "{}",
            statements[1].1
        );
        // The soft-delete column still to be added: priced as the DELETE.
        let pending = dry_run_statements(&request(Deletes::Soft), &target(false), qualify).unwrap();
        assert_eq!(pending[1].0, "DELETE");
        assert!(
            !pending[0].1.contains(DELETED_AT_COLUMN),
            "{}",
            pending[0].1
        );
        let keep = dry_run_statements(&request(Deletes::Keep), &target(false), qualify).unwrap();
        assert_eq!(keep.len(), 1);
    }

    #[test]
    fn duplicate_keys_and_rows_by_key() {
        assert_eq!(
            duplicate_keys_query("`p.d.s`", &["a".into(), "b".into()]),
            "SELECT IFNULL(SUM(n - 1), 0) AS duplicates FROM (SELECT COUNT(*) AS n FROM `p.d.s` GROUP BY `a`, `b`)"
        );
        assert_eq!(
            copy_rows_by_key_statement(
                "`p.d.t`",
                "`p.d.s`",
                &["id".into(), "v".into()],
                &["id".into()]
            ),
            "INSERT INTO `p.d.s` (`id`, `v`) SELECT `id`, `v` FROM `p.d.t` T WHERE EXISTS (SELECT 1 FROM UNNEST(@keys) AS K WHERE K.k0 = T.`id`)"
        );
    }
}
