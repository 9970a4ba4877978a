//! [`plan_table`]: one table's plan from what is known about it. Pure.

use super::diff::{self, FieldChange};
use super::{
    Bound, Extract, Step, TableAction, TablePlan, WriteOp, source_fingerprint, target_fingerprint,
};
use crate::diagnostic::{Code, Diagnostic, Location};
use crate::manifest::TableSpec;
use crate::manifest::raw::WriteMode;
use crate::mapping::TableMapping;
use crate::schema::{LoadFormat, SourceTable, TimePartitioning, WarehouseTable};

/// Everything known about one table before planning.
#[derive(Debug, Clone)]
pub struct TableInput {
    /// The manifest's spec.
    pub spec: TableSpec,
    /// Introspection result.
    pub source: Result<SourceTable, String>,
    /// Mapping result: the desired table and how each column is read, or why it cannot be
    /// mapped.
    pub mapping: Result<TableMapping, Vec<Diagnostic>>,
    /// The existing table, if any.
    pub existing: Option<WarehouseTable>,
    /// Rows in the existing table.
    pub existing_rows: Option<u64>,
    /// Why the existing table cannot be synced into (RECORD/RANGE columns, a view, …); the
    /// table is then blocked with these reasons.
    pub unsupported: Vec<String>,
}

/// The schema part of a table's plan.
struct SchemaPlan {
    action: TableAction,
    /// DDL steps, in order.
    ddl: Vec<Step>,
    changes: Vec<FieldChange>,
    target_schema: Option<WarehouseTable>,
    warnings: Vec<Diagnostic>,
    errors: Vec<Diagnostic>,
}

impl SchemaPlan {
    fn failed(action: TableAction, errors: Vec<Diagnostic>) -> Self {
        Self {
            action,
            ddl: Vec::new(),
            changes: Vec::new(),
            target_schema: None,
            warnings: Vec::new(),
            errors,
        }
    }
}

/// Plans one table: the schema action and its DDL, then, for a table that runs, the extraction
/// (with its bound) and the write.
pub fn plan_table(input: TableInput) -> TablePlan {
    let TableInput {
        spec,
        source,
        mapping,
        existing,
        existing_rows,
        unsupported,
    } = input;
    let (source_table, mapping, mut schema) =
        plan_inputs(&spec, source, mapping, existing.as_ref(), &unsupported);
    let mut warnings = mapping
        .as_ref()
        .map(|mapping| mapping.warnings.clone())
        .unwrap_or_default();
    warnings.append(&mut schema.warnings);
    let mut steps = Vec::new();
    if let (Some(mapping), Some(load_schema)) = (&mapping, &schema.target_schema)
        && schema.action.runs()
    {
        let recreate = schema.action == TableAction::Recreate;
        let bound = plan_bound(&spec, mapping, &schema.ddl, recreate);
        let (format, format_reason) = plan_format(spec.format, load_schema);
        steps.push(Step::Stage(Box::new(Extract {
            columns: mapping.columns.clone(),
            bound,
            load_schema: load_schema.clone(),
            batch_size: mapping.batch_size,
            policies: mapping.policies,
            max_bad_values: mapping.max_parse_failures,
            key_columns: mapping.key_columns.clone(),
            format,
            format_reason,
        })));
        steps.append(&mut schema.ddl);
        let mut op = plan_write(&spec, mapping, source_table.as_ref());
        warnings.extend(write_warnings(&spec, mapping, source_table.as_ref(), &op));
        if let WriteOp::Merge { keys, .. } = &op {
            // A NULL key never matches (`=`), so such a row would be inserted again on every
            // run: it is rejected like a bad value instead (`_datasync_rejects`).
            if let Some(Step::Stage(extract)) = steps.first_mut() {
                for column in &mut extract.columns {
                    if keys
                        .iter()
                        .any(|key| key.eq_ignore_ascii_case(&column.target))
                        && column.field.mode == crate::schema::FieldMode::Nullable
                    {
                        column.field.mode = crate::schema::FieldMode::Required;
                    }
                }
            }
        }
        if recreate {
            // One WRITE_TRUNCATE copy replaces rows and schema atomically; a partitioning
            // change can't be copied over, so the old table is kept aside meanwhile.
            op = WriteOp::Recreate {
                columns: op.columns().to_vec(),
                backup: existing.as_ref().map(|table| &table.partitioning)
                    != Some(&load_schema.partitioning),
            };
        }
        if schema.action == TableAction::Create
            && let WriteOp::Merge { keys, .. } = &op
        {
            cluster_on_key(&mut steps, schema.target_schema.as_mut(), keys);
        }
        steps.push(Step::Write { op });
    }
    // The staging load, the DDL and the write each use one table operation.
    let table_operations = u32::try_from(steps.len()).unwrap_or(u32::MAX);
    TablePlan {
        label: spec.label(),
        source: spec.source.clone(),
        target: spec.target.clone(),
        mode: spec.mode,
        action: schema.action,
        steps,
        changes: schema.changes,
        target_fingerprint: target_fingerprint(existing.as_ref()),
        desired: mapping.map(|mapping| mapping.table),
        existing,
        target_schema: schema.target_schema,
        estimated_rows: source_table.as_ref().and_then(|table| table.estimated_rows),
        existing_rows,
        table_operations,
        warnings,
        errors: schema.errors,
        source_fingerprint: source_table.as_ref().map(source_fingerprint),
        spec,
        source_table,
    }
}

/// What is known decides the schema plan: a source error, a mapping error or an unreadable
/// target fails the table; otherwise the schema is planned against the existing target.
fn plan_inputs(
    spec: &TableSpec,
    source: Result<SourceTable, String>,
    mapping: Result<TableMapping, Vec<Diagnostic>>,
    existing: Option<&WarehouseTable>,
    unsupported: &[String],
) -> (Option<SourceTable>, Option<TableMapping>, SchemaPlan) {
    let at = Location::Table(spec.label());
    match (source, mapping) {
        (Err(error), _) => (
            None,
            None,
            SchemaPlan::failed(
                TableAction::Error,
                vec![Diagnostic::error(Code::PlanSourceError, error).at(at.clone())],
            ),
        ),
        (Ok(table), Err(errors)) => (
            Some(table),
            None,
            SchemaPlan::failed(TableAction::Error, errors),
        ),
        (Ok(table), Ok(_)) if !unsupported.is_empty() => (
            Some(table),
            None,
            SchemaPlan::failed(
                TableAction::Blocked,
                vec![
                    Diagnostic::error(
                        Code::PlanUnsupportedTarget,
                        format!(
                            "target `{}` can't be synced: {}",
                            spec.target,
                            unsupported.join("; ")
                        ),
                    )
                    .at(at.clone()),
                ],
            ),
        ),
        (Ok(table), Ok(mapping)) => {
            let mut schema = plan_schema(spec, &mapping.table, existing);
            for diagnostic in schema.warnings.iter_mut().chain(&mut schema.errors) {
                diagnostic.location = at.clone();
            }
            (Some(table), Some(mapping), schema)
        }
    }
}

/// The schema action: create, update in place, recreate, keep, or why the table is blocked.
fn plan_schema(
    spec: &TableSpec,
    desired: &WarehouseTable,
    existing: Option<&WarehouseTable>,
) -> SchemaPlan {
    let Some(existing) = existing else {
        if !spec.auto_create {
            return SchemaPlan::failed(
                TableAction::Missing,
                vec![Diagnostic::error(
                    Code::PlanMissingTarget,
                    format!(
                        "target table `{}` does not exist and `auto_create` is off",
                        spec.target
                    ),
                )],
            );
        }
        return SchemaPlan {
            action: TableAction::Create,
            ddl: vec![Step::CreateTable],
            changes: Vec::new(),
            target_schema: Some(desired.clone()),
            warnings: Vec::new(),
            errors: Vec::new(),
        };
    };
    let changes = diff::diff_table(desired, existing);
    let mut plan = SchemaPlan {
        action: TableAction::Sync,
        ddl: Vec::new(),
        changes: changes.clone(),
        target_schema: None,
        warnings: layout_warnings(desired, existing),
        errors: Vec::new(),
    };
    for change in &changes {
        if let FieldChange::Dropped { name } = change {
            plan.warnings.push(Diagnostic::warning(
                Code::PlanColumnKept,
                format!(
                    "column `{name}` is no longer synced; BigQuery keeps it (NULL in new rows)"
                ),
            ));
        }
    }
    let incompatible = incompatibilities(desired, existing, &changes);
    let in_place: Vec<FieldChange> = changes
        .iter()
        .filter(|change| !matches!(change, FieldChange::Dropped { .. }))
        .cloned()
        .collect();
    if !incompatible.is_empty() {
        if spec.allow_recreate {
            plan.warnings.push(Diagnostic::warning(
                Code::PlanRecreate,
                format!("recreating `{}`: {}", spec.target, incompatible.join("; ")),
            ));
            plan.target_schema = Some(desired.clone());
            plan.action = TableAction::Recreate;
        } else {
            plan.errors.push(
                Diagnostic::error(
                    Code::PlanIncompatible,
                    format!(
                        "incompatible change: {}; set `allow_recreate: true` (or ALLOW_TABLE_RECREATION=true) to drop and recreate the table",
                        incompatible.join("; ")
                    ),
                ),
            );
            plan.action = TableAction::Blocked;
        }
    } else if in_place.is_empty() {
        plan.target_schema = Some(diff::evolved_table(desired, existing, &changes));
    } else if !spec.auto_create {
        plan.errors.push(Diagnostic::error(
            Code::PlanAutoCreateOff,
            format!(
                "the schema of `{}` must change but `auto_create` is off",
                spec.target
            ),
        ));
        plan.action = TableAction::Blocked;
    } else {
        plan.ddl = vec![Step::AlterTable { changes: in_place }];
        plan.target_schema = Some(diff::evolved_table(desired, existing, &changes));
        plan.action = TableAction::Update;
    }
    plan
}

/// Incompatible column changes, and a partitioning change (BigQuery cannot change a table's
/// partitioning in place).
fn incompatibilities(
    desired: &WarehouseTable,
    existing: &WarehouseTable,
    changes: &[FieldChange],
) -> Vec<String> {
    let mut incompatible: Vec<String> = changes
        .iter()
        .filter_map(|change| match change {
            FieldChange::Incompatible { from, reason, .. } => {
                Some(format!("`{}`: {reason}", from.name))
            }
            _ => None,
        })
        .collect();
    if desired.partitioning.is_some() && desired.partitioning != existing.partitioning {
        let describe = |partitioning: Option<&TimePartitioning>| {
            partitioning.map_or_else(
                || "none".to_string(),
                |p| format!("{}({})", p.granularity, p.field),
            )
        };
        incompatible.push(format!(
            "partitioning is {} but the manifest asks for {}",
            describe(existing.partitioning.as_ref()),
            describe(desired.partitioning.as_ref())
        ));
    }
    incompatible
}

/// A clustering change is not applied: a warning.
fn layout_warnings(desired: &WarehouseTable, existing: &WarehouseTable) -> Vec<Diagnostic> {
    if !desired.clustering.is_empty() && desired.clustering != existing.clustering {
        return vec![Diagnostic::warning(
            Code::PlanClusteringChange,
            format!(
                "clustering is [{}] in BigQuery, [{}] in the manifest; it is not changed",
                existing.clustering.join(", "),
                desired.clustering.join(", ")
            ),
        )];
    }
    Vec::new()
}

/// Which rows the run reads. `incremental` and `merge` with a cursor read past the target's
/// maximum, except when the target is recreated (it is replaced) or the cursor column is only
/// being added (it holds no maximum yet).
fn plan_bound(spec: &TableSpec, mapping: &TableMapping, ddl: &[Step], recreate: bool) -> Bound {
    let Some(cursor) = spec.cursor.as_deref() else {
        return Bound::All;
    };
    if !matches!(spec.mode, WriteMode::Incremental | WriteMode::Merge) {
        return Bound::All;
    }
    let Some(column) = mapping.column(cursor) else {
        return Bound::All;
    };
    // A target being created is read like any other (it holds no maximum, so every row is
    // read — unless an overlapping run created and filled it meanwhile).
    let adds_cursor = ddl.iter().any(|step| match step {
        Step::AlterTable { changes } => changes.iter().any(|change| {
            matches!(change, FieldChange::Add { field } if field.name.eq_ignore_ascii_case(&column.target))
        }),
        _ => false,
    });
    if recreate || adds_cursor {
        return Bound::All;
    }
    Bound::AfterTargetMax {
        source_column: cursor.to_string(),
        target_column: column.target.clone(),
        bq_type: column.field.bq_type,
        inclusive: spec.mode == WriteMode::Merge,
    }
}

/// A new merge target is clustered on its key (unless the manifest clusters it): the MERGE's
/// join then reads fewer blocks. Only types BigQuery clusters on, at most 4 columns
/// (<https://cloud.google.com/bigquery/docs/clustered-tables#limitations>).
fn cluster_on_key(steps: &mut [Step], target: Option<&mut WarehouseTable>, keys: &[String]) {
    use crate::schema::BqType;
    let Some(target) = target.filter(|target| target.clustering.is_empty()) else {
        return;
    };
    let clusterable: Vec<String> = keys
        .iter()
        .filter(|key| {
            target.fields.iter().any(|field| {
                field.name.eq_ignore_ascii_case(key)
                    && field.mode != crate::schema::FieldMode::Repeated
                    && !matches!(
                        field.bq_type,
                        BqType::Float64 | BqType::Json | BqType::Bytes
                    )
            })
        })
        .take(4)
        .cloned()
        .collect();
    if clusterable.len() != keys.len().min(4) || clusterable.is_empty() {
        return;
    }
    target.clustering.clone_from(&clusterable);
    if let Some(Step::Stage(extract)) = steps.first_mut() {
        extract.load_schema.clustering = clusterable;
    }
}

/// What the write can't guarantee: a merge key that is not the source's primary key (several
/// rows may share it: the greatest cursor wins, duplicates are only reported), a nullable
/// cursor (its NULL rows are never past the maximum). A query's key is the `primary_key` it
/// declares (it has no other), so only a table's can differ.
fn write_warnings(
    spec: &TableSpec,
    mapping: &TableMapping,
    source: Option<&SourceTable>,
    op: &WriteOp,
) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    if let (WriteOp::Merge { .. }, Some(source), Some(key)) = (op, source, &spec.primary_key) {
        let same = key.len() == source.primary_key.len()
            && key.iter().all(|column| {
                source
                    .primary_key
                    .iter()
                    .any(|pk| pk.eq_ignore_ascii_case(column))
            });
        if !same {
            warnings.push(Diagnostic::warning(
                Code::PlanMergeKeyNotUnique,
                format!(
                    "merge key [{}] is not the primary key of `{}` ([{}]): rows sharing a key are merged as one (the greatest cursor wins)",
                    key.join(", "),
                    source.name,
                    source.primary_key.join(", ")
                ),
            ));
        }
    }
    // A query's columns are all NULLABLE because its metadata can't prove otherwise, not
    // because NULLs are likely: no warning on every plan (README: custom SQL).
    let from_query = source.is_some_and(|table| table.query.is_some());
    let cursor = spec
        .cursor
        .as_deref()
        .and_then(|cursor| mapping.column(cursor))
        .filter(|column| column.source.nullable && !from_query);
    if let Some(column) = cursor
        && matches!(spec.mode, WriteMode::Incremental | WriteMode::Merge)
    {
        let what = if spec.mode == WriteMode::Merge {
            "rows whose cursor is NULL are read again on every run (merge is idempotent)"
        } else {
            "rows whose cursor is NULL are loaded by the first run only, never later (make the column NOT NULL or use merge)"
        };
        warnings.push(Diagnostic::warning(
            Code::PlanNullableCursor,
            format!("cursor `{}` is nullable: {what}", column.source.name),
        ));
    }
    warnings
}

/// The write: the mode's statement over the mapped target columns; a merge key in target
/// names (the manifest's `primary_key`, else the source's).
fn plan_write(spec: &TableSpec, mapping: &TableMapping, source: Option<&SourceTable>) -> WriteOp {
    let columns: Vec<String> = mapping
        .columns
        .iter()
        .map(|column| column.target.clone())
        .collect();
    match spec.mode {
        WriteMode::Replace => WriteOp::Replace { columns },
        WriteMode::Append | WriteMode::Incremental => WriteOp::Append { columns },
        WriteMode::Merge => {
            let key = spec
                .primary_key
                .clone()
                .or_else(|| source.map(|table| table.primary_key.clone()))
                .unwrap_or_default();
            let keys = key
                .iter()
                .map(|column| {
                    mapping
                        .column(column)
                        .map_or_else(|| column.clone(), |mapped| mapped.target.clone())
                })
                .collect();
            let cursor = spec
                .cursor
                .as_deref()
                .and_then(|cursor| mapping.column(cursor))
                .map(|column| column.target.clone());
            WriteOp::Merge {
                keys,
                columns,
                cursor,
            }
        }
    }
}

/// The load format: the one asked for, unless Avro cannot carry the table exactly (then
/// NDJSON, with the reason). Both formats load into staging, so the write stays the same.
pub fn plan_format(
    asked: LoadFormat,
    load_schema: &WarehouseTable,
) -> (LoadFormat, Option<String>) {
    match asked {
        LoadFormat::Avro => match crate::schema::policy::avro_obstacle(load_schema) {
            Some(reason) => (LoadFormat::Ndjson, Some(reason)),
            None => (LoadFormat::Avro, None),
        },
        LoadFormat::Ndjson => (LoadFormat::Ndjson, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{mapped, source, spec, table};
    use crate::schema::{BqType, FieldMode};

    fn plan(
        mode: WriteMode,
        existing: Option<WarehouseTable>,
        desired: WarehouseTable,
    ) -> TablePlan {
        plan_table(TableInput {
            spec: spec("t", mode),
            source: Ok(source(10)),
            mapping: mapped(desired, vec![]),
            existing_rows: existing.as_ref().map(|_| 3),
            existing,
            unsupported: Vec::new(),
        })
    }

    fn ids() -> WarehouseTable {
        table("t", &[("id", BqType::Int64, FieldMode::Required)])
    }

    #[test]
    fn steps_are_stage_then_ddl_then_write() {
        let created = plan(WriteMode::Replace, None, ids());
        let kinds: Vec<&str> = created
            .steps
            .iter()
            .map(|step| match step {
                Step::Stage(_) => "stage",
                Step::DropTable => "drop",
                Step::CreateTable => "create",
                Step::AlterTable { .. } => "alter",
                Step::Write { .. } => "write",
            })
            .collect();
        assert_eq!(kinds, ["stage", "create", "write"]);
        assert_eq!(created.table_operations, 3);
        assert_eq!(
            created.write_op(),
            Some(&WriteOp::Replace {
                columns: vec!["id".into()]
            })
        );
    }

    #[test]
    fn the_bound_is_planned_per_mode_and_target() {
        let bound = |mode, existing| plan(mode, existing, ids()).extract().unwrap().bound.clone();
        let after = |inclusive| Bound::AfterTargetMax {
            source_column: "id".into(),
            target_column: "id".into(),
            bq_type: BqType::Int64,
            inclusive,
        };
        assert_eq!(bound(WriteMode::Incremental, Some(ids())), after(false));
        assert_eq!(bound(WriteMode::Merge, Some(ids())), after(true));
        assert_eq!(bound(WriteMode::Replace, Some(ids())), Bound::All);
        assert_eq!(bound(WriteMode::Append, Some(ids())), Bound::All);
        // A new target is bounded too: it holds no maximum (every row is read) unless an
        // overlapping run filled it meanwhile.
        assert_eq!(bound(WriteMode::Incremental, None), after(false));
    }

    #[test]
    fn a_cursor_column_being_added_has_no_maximum_yet() {
        let existing = table("t", &[("other", BqType::String, FieldMode::Nullable)]);
        let mut desired = ids();
        desired.fields.push(crate::schema::WarehouseField::new(
            "other",
            BqType::String,
            FieldMode::Nullable,
        ));
        let planned = plan(WriteMode::Incremental, Some(existing), desired);
        assert_eq!(planned.action, TableAction::Update);
        assert_eq!(planned.extract().unwrap().bound, Bound::All);
    }

    #[test]
    fn an_unreadable_target_blocks_only_its_table() {
        let planned = plan_table(TableInput {
            spec: spec("t", WriteMode::Replace),
            source: Ok(source(10)),
            mapping: mapped(ids(), vec![]),
            existing_rows: Some(1),
            existing: Some(ids()),
            unsupported: vec!["column `r` is a RECORD".into()],
        });
        assert_eq!(planned.action, TableAction::Blocked);
        assert!(planned.steps.is_empty());
        assert_eq!(planned.errors[0].code, Code::PlanUnsupportedTarget);
        assert!(planned.errors[0].message.contains("column `r` is a RECORD"));
    }

    #[test]
    fn a_blocked_table_has_no_steps() {
        let existing = table("t", &[("id", BqType::String, FieldMode::Nullable)]);
        let planned = plan(WriteMode::Replace, Some(existing), ids());
        assert_eq!(planned.action, TableAction::Blocked);
        assert!(planned.steps.is_empty());
        assert_eq!(planned.table_operations, 0);
    }

    #[test]
    fn a_recreate_is_one_copy_except_for_a_partitioning_change() {
        let recreate = |existing: WarehouseTable, desired: WarehouseTable| {
            let mut spec = spec("t", WriteMode::Incremental);
            spec.allow_recreate = true;
            plan_table(TableInput {
                spec,
                source: Ok(source(10)),
                mapping: mapped(desired, vec![]),
                existing_rows: Some(3),
                existing: Some(existing),
                unsupported: Vec::new(),
            })
        };
        let incompatible = table("t", &[("id", BqType::String, FieldMode::Nullable)]);
        let planned = recreate(incompatible, ids());
        assert_eq!(planned.action, TableAction::Recreate);
        // No drop/create: the copy replaces schema and rows at once; every row is re-read.
        assert_eq!(planned.steps.len(), 2);
        assert_eq!(
            planned.write_op(),
            Some(&WriteOp::Recreate {
                columns: vec!["id".into()],
                backup: false
            })
        );
        assert_eq!(planned.extract().unwrap().bound, Bound::All);
        let mut partitioned = ids();
        partitioned.partitioning = Some(TimePartitioning {
            granularity: "DAY".into(),
            field: "id".into(),
        });
        let planned = recreate(ids(), partitioned);
        assert!(matches!(
            planned.write_op(),
            Some(WriteOp::Recreate { backup: true, .. })
        ));
    }

    #[test]
    fn a_new_merge_target_is_clustered_on_its_key() {
        let merged = plan(WriteMode::Merge, None, ids());
        let Some(WriteOp::Merge { keys, .. }) = merged.write_op() else {
            panic!("not a merge")
        };
        assert_eq!(keys, &["id".to_string()]);
        assert_eq!(merged.target_schema.as_ref().unwrap().clustering, ["id"]);
        assert_eq!(merged.extract().unwrap().load_schema.clustering, ["id"]);
        // Not an existing target (its clustering can't change), not another mode.
        let existing = plan(WriteMode::Merge, Some(ids()), ids());
        assert!(existing.target_schema.unwrap().clustering.is_empty());
        let replaced = plan(WriteMode::Replace, None, ids());
        assert!(replaced.target_schema.unwrap().clustering.is_empty());
    }
}
