//! [`plan_table`]: one table's plan from what is known about it. Pure.

use super::diff::{self, FieldChange};
use super::{
    Bound, CostBasis, Extract, KeyColumn, Step, TableAction, TablePlan, WriteCost, WriteOp,
    source_fingerprint, target_fingerprint,
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
    let mut write_cost = None;
    if let (Some(mapping), Some(target_schema)) = (&mapping, &schema.target_schema)
        && schema.action.runs()
    {
        let recreate = schema.action == TableAction::Recreate;
        let bound = plan_bound(&spec, mapping, &schema.ddl, recreate);
        let load_schema = staging_schema(target_schema, existing.as_ref());
        let (format, format_reason) = plan_format(spec.format, &load_schema);
        steps.push(Step::Stage(Box::new(Extract {
            columns: mapping.columns.clone(),
            bound,
            load_schema,
            batch_size: mapping.batch_size,
            policies: mapping.policies,
            max_bad_values: mapping.max_parse_failures,
            key_columns: mapping.key_columns.clone(),
            format,
            format_reason,
            lineage: mapping.lineage,
            chunking: Default::default(),
        })));
        steps.append(&mut schema.ddl);
        let mut op = plan_write(&spec, mapping, source_table.as_ref());
        warnings.extend(write_warnings(&spec, mapping, source_table.as_ref(), &op));
        plan_merge(&mut steps, &mut op, &spec, mapping);
        if recreate {
            // One WRITE_TRUNCATE copy replaces rows and schema atomically; a partitioning
            // change can't be copied over, so the old table is kept aside meanwhile.
            op = WriteOp::Recreate {
                columns: op.columns().to_vec(),
                backup: existing.as_ref().map(|table| &table.partitioning)
                    != Some(&target_schema.partitioning),
            };
        }
        if schema.action == TableAction::Create
            && let WriteOp::Merge { keys, .. } = &op
        {
            cluster_on_key(&mut steps, schema.target_schema.as_mut(), keys);
        }
        write_cost = planned_write_cost(&op, existing.is_some());
        steps.push(Step::Write { op });
        if let (Some(existing), Some(target)) = (&existing, &schema.target_schema) {
            plan_metadata(&mut steps, &mut schema.action, target, existing);
        }
    }
    // The staging load, the DDL and the write each use one table operation; a tables.patch
    // is no job (it only counts against the metadata-update rate).
    let table_operations = steps
        .iter()
        .filter(|step| !matches!(step, Step::PatchTable { .. }))
        .count();
    let table_operations = u32::try_from(table_operations).unwrap_or(u32::MAX);
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
        write_cost,
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
        (Ok(table), Ok(mut mapping)) => {
            if let Err(error) = add_deleted_at(spec, &mut mapping) {
                return (
                    Some(table),
                    None,
                    SchemaPlan::failed(TableAction::Error, vec![error.at(at)]),
                );
            }
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
        warnings: Vec::new(),
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

/// The staging table's schema: the target's as it will be, but with the clustering the target
/// has now when it exists, so the write's copy job sees staging and target clustered alike
/// (a clustering change is patched in after the write: [`plan_metadata`]).
fn staging_schema(target: &WarehouseTable, existing: Option<&WarehouseTable>) -> WarehouseTable {
    let mut staging = target.clone();
    // A recreate may drop a column the target is clustered on: staging can't cluster on it.
    if let Some(existing) = existing
        && existing
            .clustering
            .iter()
            .all(|column| target.field(column).is_some())
    {
        staging.clustering.clone_from(&existing.clustering);
    }
    staging
}

/// The in-place metadata changes of an existing target (descriptions, clustering): one
/// [`Step::PatchTable`] after the write. A table whose only changes are these is updated.
fn plan_metadata(
    steps: &mut Vec<Step>,
    action: &mut TableAction,
    target: &WarehouseTable,
    existing: &WarehouseTable,
) {
    let changes = super::metadata::metadata_changes(target, existing);
    if changes.is_empty() {
        return;
    }
    if *action == TableAction::Sync {
        *action = TableAction::Update;
    }
    steps.push(Step::PatchTable { changes });
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

/// What the write can't guarantee: a merge key that is neither the source's primary key nor a
/// unique index (several rows may share it: the greatest cursor wins, apply reports how many
/// rows shared a key), a nullable cursor (its NULL rows are never past the maximum). A query's
/// key is the `primary_key` it declares (it has no other).
fn write_warnings(
    spec: &TableSpec,
    mapping: &TableMapping,
    source: Option<&SourceTable>,
    op: &WriteOp,
) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    if let (WriteOp::Merge { .. }, Some(source), Some(key)) = (op, source, &spec.primary_key)
        && !source.is_unique_key(key)
    {
        let mut known = vec![format!("primary key [{}]", source.primary_key.join(", "))];
        known.extend(
            source
                .unique_keys
                .iter()
                .map(|unique| format!("unique [{}]", unique.join(", "))),
        );
        warnings.push(Diagnostic::warning(
            Code::PlanMergeKeyNotUnique,
            format!(
                "merge key [{}] is neither the primary key nor a unique index of `{}` ({}): rows sharing a key are merged as one (the greatest cursor wins) and apply reports how many",
                key.join(", "),
                source.name,
                known.join("; ")
            ),
        ));
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
    let mut columns: Vec<String> = mapping
        .columns
        .iter()
        .map(|column| column.target.clone())
        .collect();
    if mapping.lineage {
        columns.extend(
            crate::schema::lineage_fields()
                .into_iter()
                .map(|field| field.name),
        );
    }
    match spec.mode {
        WriteMode::Replace => WriteOp::Replace {
            columns,
            keep_rejected: replace_key(mapping),
        },
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
                deletes: spec.deletes,
                key_set: None,
            }
        }
    }
}

/// The key a replace finds a rejected row's earlier version by: the table's key columns
/// (the manifest's `primary_key`, else the source's), when every one of them is synced.
fn replace_key(mapping: &TableMapping) -> Vec<KeyColumn> {
    let key: Vec<KeyColumn> = mapping
        .key_columns
        .iter()
        .filter_map(|name| mapping.column(name))
        .map(|column| KeyColumn {
            source: column.source.name.clone(),
            target: column.target.clone(),
            bq_type: column.field.bq_type,
        })
        .collect();
    if key.len() == mapping.key_columns.len() {
        key
    } else {
        Vec::new()
    }
}

/// `deletes: soft` on a merge table: the target gets a NULLABLE TIMESTAMP
/// `_datasync_deleted_at` (created with the table, or added like any new column). No source
/// column may already be written there.
fn add_deleted_at(spec: &TableSpec, mapping: &mut TableMapping) -> Result<(), Diagnostic> {
    use crate::schema::{BqType, DELETED_AT_COLUMN, Deletes, FieldMode, WarehouseField};
    if spec.mode != WriteMode::Merge || spec.deletes != Deletes::Soft {
        return Ok(());
    }
    if mapping.table.field(DELETED_AT_COLUMN).is_some() {
        return Err(Diagnostic::error(
            Code::MappingNameCollision,
            format!(
                "`deletes: soft` writes `{DELETED_AT_COLUMN}`, but a source column is already written there; rename it with `columns`/`exclude_columns` or use `deletes: hard`"
            ),
        ));
    }
    let mut field = WarehouseField::new(DELETED_AT_COLUMN, BqType::Timestamp, FieldMode::Nullable);
    field.description = Some(
        "datasync: when the row's key left the source (deletes: soft); NULL while it is there"
            .into(),
    );
    mapping.table.fields.push(field);
    Ok(())
}

/// A merge: key columns are REQUIRED in the load (a NULL key never matches `=`, so such a row
/// would be inserted again on every run: it is rejected like a bad value, into
/// `_datasync_rejects`); with `deletes`, the extraction of the source's whole key set.
fn plan_merge(steps: &mut [Step], op: &mut WriteOp, spec: &TableSpec, mapping: &TableMapping) {
    let WriteOp::Merge {
        keys,
        deletes,
        key_set,
        ..
    } = op
    else {
        return;
    };
    let is_key = |target: &str| keys.iter().any(|key| key.eq_ignore_ascii_case(target));
    if let Some(Step::Stage(extract)) = steps.first_mut() {
        for column in &mut extract.columns {
            if is_key(&column.target) && column.field.mode == crate::schema::FieldMode::Nullable {
                column.field.mode = crate::schema::FieldMode::Required;
            }
        }
        // The soft-delete column is the target's alone: staging holds the source's rows (the
        // MERGE names its columns), and a load file never carries it.
        extract
            .load_schema
            .fields
            .retain(|field| field.name != crate::schema::DELETED_AT_COLUMN);
    }
    if deletes.is_keep() {
        return;
    }
    // Only the key columns, NULLABLE (a NULL key matches no target row, it needs no reject),
    // never bounded: a key missing from this set means the row is gone from the source.
    let columns: Vec<_> = keys
        .iter()
        .filter_map(|key| {
            mapping
                .columns
                .iter()
                .find(|column| column.target.eq_ignore_ascii_case(key))
        })
        .cloned()
        .map(|mut column| {
            column.field.mode = crate::schema::FieldMode::Nullable;
            column
        })
        .collect();
    if columns.len() != keys.len() {
        return;
    }
    let load_schema = WarehouseTable {
        description: None,
        name: spec.target.clone(),
        fields: columns.iter().map(|column| column.field.clone()).collect(),
        partitioning: None,
        clustering: Vec::new(),
    };
    let (format, format_reason) = plan_format(spec.format, &load_schema);
    *key_set = Some(Box::new(Extract {
        lineage: false,
        chunking: Default::default(),
        columns,
        bound: Bound::All,
        load_schema,
        batch_size: mapping.batch_size,
        policies: mapping.policies,
        max_bad_values: mapping.max_parse_failures,
        key_columns: mapping.key_columns.clone(),
        format,
        format_reason,
    }));
}

/// What the write bills, where the plan alone knows it: a copy job is free, a MERGE into a new
/// target reads no target bytes. A MERGE into an existing target is left to the planner's dry
/// run (`None` here).
fn planned_write_cost(op: &WriteOp, target_exists: bool) -> Option<WriteCost> {
    match op {
        WriteOp::Merge { .. } if target_exists => None,
        WriteOp::Merge { .. } => Some(WriteCost::new_target(&super::Plan::statements(op))),
        WriteOp::Replace { .. } | WriteOp::Append { .. } | WriteOp::Recreate { .. } => {
            Some(WriteCost::free(CostBasis::CopyJob))
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
                Step::PatchTable { .. } => "patch",
            })
            .collect();
        assert_eq!(kinds, ["stage", "create", "write"]);
        assert_eq!(created.table_operations, 3);
        assert_eq!(
            created.write_op(),
            Some(&WriteOp::Replace {
                columns: vec!["id".into()],
                keep_rejected: vec![KeyColumn {
                    source: "id".into(),
                    target: "id".into(),
                    bq_type: BqType::Int64,
                }],
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

    fn merge_with(settings: &str, existing: Option<WarehouseTable>) -> TablePlan {
        plan_table(TableInput {
            spec: crate::plan::testing::spec_with("t", settings),
            source: Ok(source(10)),
            mapping: mapped(
                table(
                    "t",
                    &[
                        ("id", BqType::Int64, FieldMode::Nullable),
                        ("v", BqType::String, FieldMode::Nullable),
                    ],
                ),
                vec![],
            ),
            existing_rows: existing.as_ref().map(|_| 3),
            existing,
            unsupported: Vec::new(),
        })
    }

    #[test]
    fn deletes_read_the_whole_key_set_even_when_the_merge_is_bounded() {
        use crate::schema::Deletes;
        let existing = table(
            "t",
            &[
                ("id", BqType::Int64, FieldMode::Nullable),
                ("v", BqType::String, FieldMode::Nullable),
            ],
        );
        let planned = merge_with(
            "mode: merge, primary_key: [id], cursor: v, deletes: hard",
            Some(existing),
        );
        assert!(matches!(
            planned.extract().unwrap().bound,
            Bound::AfterTargetMax { .. }
        ));
        let Some(WriteOp::Merge {
            deletes, key_set, ..
        }) = planned.write_op()
        else {
            panic!("not a merge")
        };
        assert_eq!(*deletes, Deletes::Hard);
        let key_set = key_set.as_ref().expect("a key set");
        assert_eq!(key_set.bound, Bound::All, "never bounded");
        let names: Vec<&str> = key_set
            .columns
            .iter()
            .map(|column| column.target.as_str())
            .collect();
        assert_eq!(names, ["id"], "key columns only");
        // The key set takes NULL keys (they match nothing); staging refuses them.
        assert_eq!(key_set.load_schema.fields[0].mode, FieldMode::Nullable);
        assert_eq!(
            planned.extract().unwrap().columns[0].field.mode,
            FieldMode::Required
        );
        // No soft-delete column for hard deletes; without deletes, no key set.
        assert!(
            planned
                .target_schema
                .unwrap()
                .field("_datasync_deleted_at")
                .is_none()
        );
        let keep = merge_with("mode: merge, primary_key: [id]", None);
        assert!(matches!(
            keep.write_op(),
            Some(WriteOp::Merge {
                key_set: None,
                deletes: Deletes::Keep,
                ..
            })
        ));
    }

    #[test]
    fn soft_deletes_add_a_nullable_timestamp_like_any_new_column() {
        let created = merge_with("mode: merge, primary_key: [id], deletes: soft", None);
        let field = created
            .target_schema
            .as_ref()
            .unwrap()
            .field("_datasync_deleted_at")
            .cloned()
            .expect("the soft-delete column");
        assert_eq!(
            (field.bq_type, field.mode),
            (BqType::Timestamp, FieldMode::Nullable)
        );
        // Not a source column: never extracted, never written by the MERGE's column list.
        assert!(
            created
                .write_op()
                .unwrap()
                .columns()
                .iter()
                .all(|c| c != "_datasync_deleted_at")
        );
        let existing = table(
            "t",
            &[
                ("id", BqType::Int64, FieldMode::Nullable),
                ("v", BqType::String, FieldMode::Nullable),
            ],
        );
        let altered = merge_with(
            "mode: merge, primary_key: [id], deletes: soft",
            Some(existing.clone()),
        );
        assert_eq!(altered.action, TableAction::Update);
        assert!(altered.steps.iter().any(|step| matches!(
            step,
            Step::AlterTable { changes } if changes.iter().any(|change| matches!(change, FieldChange::Add { field } if field.name == "_datasync_deleted_at"))
        )));
        let mut with_column = existing;
        with_column.fields.push(field);
        let synced = merge_with(
            "mode: merge, primary_key: [id], deletes: soft",
            Some(with_column),
        );
        assert_eq!(synced.action, TableAction::Sync);
    }

    #[test]
    fn a_merge_key_that_is_a_unique_index_is_not_warned_about() {
        let mut source = source(10);
        source.unique_keys = vec![vec!["v".into()]];
        let warned = |key: &str| {
            plan_table(TableInput {
                spec: crate::plan::testing::spec_with(
                    "t",
                    &format!("mode: merge, primary_key: [{key}]"),
                ),
                source: Ok(source.clone()),
                mapping: mapped(
                    table(
                        "t",
                        &[
                            ("id", BqType::Int64, FieldMode::Required),
                            ("v", BqType::String, FieldMode::Required),
                            ("w", BqType::String, FieldMode::Required),
                        ],
                    ),
                    vec![],
                ),
                existing_rows: None,
                existing: None,
                unsupported: Vec::new(),
            })
            .warnings
            .into_iter()
            .filter(|warning| warning.code == Code::PlanMergeKeyNotUnique)
            .map(|warning| warning.message)
            .collect::<Vec<_>>()
        };
        assert!(warned("v").is_empty(), "a unique index");
        assert!(warned("id").is_empty(), "the primary key");
        assert!(warned("w, id").is_empty(), "a superset of the primary key");
        assert_eq!(
            warned("w"),
            [
                "merge key [w] is neither the primary key nor a unique index of `t` (primary key [id]; unique [v]): rows sharing a key are merged as one (the greatest cursor wins) and apply reports how many"
            ]
        );
    }

    #[test]
    fn the_write_cost_is_free_for_copies_and_left_to_a_dry_run_for_a_merge() {
        use crate::plan::CostBasis;
        let copy = plan(WriteMode::Replace, Some(ids()), ids());
        assert_eq!(copy.write_cost, Some(WriteCost::free(CostBasis::CopyJob)));
        let append = plan(WriteMode::Incremental, Some(ids()), ids());
        assert_eq!(append.write_cost.unwrap().bytes, 0);
        // An existing merge target: the planner's dry run fills it in.
        assert_eq!(plan(WriteMode::Merge, Some(ids()), ids()).write_cost, None);
        let new = plan(WriteMode::Merge, None, ids()).write_cost.unwrap();
        assert_eq!(new.basis, CostBasis::NewTarget);
        assert_eq!(new.bytes, 2 * crate::plan::cost::MIN_BYTES_PER_TABLE);
    }

    #[test]
    fn a_replace_keeps_rejected_rows_by_its_key_when_the_key_is_synced() {
        let planned = plan(WriteMode::Replace, None, ids());
        let Some(WriteOp::Replace { keep_rejected, .. }) = planned.write_op() else {
            panic!("not a replace")
        };
        assert_eq!(keep_rejected.len(), 1);
        // The key column is not synced: no key to find earlier rows by.
        let other = plan(
            WriteMode::Replace,
            None,
            table("t", &[("v", BqType::String, FieldMode::Nullable)]),
        );
        assert!(matches!(
            other.write_op(),
            Some(WriteOp::Replace { keep_rejected, .. }) if keep_rejected.is_empty()
        ));
    }

    fn with_metadata(
        mode: WriteMode,
        existing: WarehouseTable,
        desired: WarehouseTable,
    ) -> TablePlan {
        plan(mode, Some(existing), desired)
    }

    #[test]
    fn a_clustering_change_is_patched_after_the_write_with_staging_clustered_like_the_target() {
        let mut existing = ids();
        existing.clustering = vec!["id".into()];
        let mut desired = ids();
        desired.fields.push(crate::schema::WarehouseField::new(
            "kind",
            BqType::String,
            FieldMode::Nullable,
        ));
        existing.fields.push(desired.fields[1].clone());
        desired.clustering = vec!["kind".into(), "id".into()];
        for mode in [WriteMode::Append, WriteMode::Replace, WriteMode::Merge] {
            let planned = with_metadata(mode, existing.clone(), desired.clone());
            assert_eq!(planned.action, TableAction::Update, "{mode:?}");
            // The copy into the target runs while both are clustered by [id].
            assert_eq!(planned.extract().unwrap().load_schema.clustering, ["id"]);
            assert_eq!(
                planned.target_schema.as_ref().unwrap().clustering,
                ["kind", "id"]
            );
            let kinds: Vec<bool> = planned
                .steps
                .iter()
                .map(|step| matches!(step, Step::PatchTable { .. }))
                .collect();
            assert_eq!(kinds, [false, false, true], "stage, write, then patch");
            // A tables.patch is no job: still 2 table operations.
            assert_eq!(planned.table_operations, 2);
        }
        // After the patch the target is clustered as asked: nothing left to change.
        let mut patched = existing;
        patched.clustering = desired.clustering.clone();
        let again = with_metadata(WriteMode::Append, patched, desired);
        assert_eq!(again.action, TableAction::Sync);
        assert!(again.metadata_changes().is_empty());
    }

    #[test]
    fn description_changes_are_planned_and_no_comment_is_no_change() {
        let described = |table: Option<&str>, column: Option<&str>| {
            let mut table_shape = ids();
            table_shape.description = table.map(str::to_string);
            table_shape.fields[0].description = column.map(str::to_string);
            table_shape
        };
        // No comment at the source, none in BigQuery (or one set by hand): nothing to do.
        for existing in [
            described(None, None),
            described(Some("by hand"), Some("too")),
        ] {
            let planned = with_metadata(WriteMode::Replace, existing, described(None, None));
            assert_eq!(planned.action, TableAction::Sync);
            assert_eq!(planned.steps.len(), 2, "stage and write only");
        }
        let planned = with_metadata(
            WriteMode::Replace,
            described(Some("Old"), None),
            described(Some("New"), Some("The key")),
        );
        assert_eq!(planned.action, TableAction::Update);
        assert_eq!(
            planned.metadata_changes(),
            [
                crate::plan::MetadataChange::Description {
                    from: Some("Old".into()),
                    to: "New".into()
                },
                crate::plan::MetadataChange::ColumnDescription {
                    column: "id".into(),
                    from: None,
                    to: "The key".into()
                },
            ]
        );
        // Staging carries the descriptions the target will have (a copy that takes them from
        // its source leaves the target right too).
        let staging = &planned.extract().unwrap().load_schema;
        assert_eq!(staging.description.as_deref(), Some("New"));
        assert_eq!(staging.fields[0].description.as_deref(), Some("The key"));
        // The next plan, against the patched target, has nothing to change.
        let again = with_metadata(
            WriteMode::Replace,
            planned.target_schema.clone().unwrap(),
            described(Some("New"), Some("The key")),
        );
        assert_eq!(again.action, TableAction::Sync);
        assert!(again.metadata_changes().is_empty());
    }

    #[test]
    fn lineage_columns_are_planned_written_and_added_like_other_columns() {
        let lineage_plan = |mode, existing: Option<WarehouseTable>| {
            let mut mapping = mapped(ids(), vec![]).unwrap();
            mapping.lineage = true;
            mapping.table.fields.extend(crate::schema::lineage_fields());
            plan_table(TableInput {
                spec: spec("t", mode),
                source: Ok(source(10)),
                mapping: Ok(mapping),
                existing_rows: existing.as_ref().map(|_| 3),
                existing,
                unsupported: Vec::new(),
            })
        };
        let created = lineage_plan(WriteMode::Merge, None);
        assert!(created.extract().unwrap().lineage);
        let Some(WriteOp::Merge { columns, .. }) = created.write_op() else {
            panic!("not a merge")
        };
        // MERGE updates them with the rest.
        assert_eq!(columns, &["id", "_datasync_synced_at", "_datasync_run_id"]);
        let lines: Vec<String> = created
            .target_schema
            .unwrap()
            .fields
            .iter()
            .map(crate::schema::WarehouseField::diff_line)
            .collect();
        assert_eq!(
            lines,
            [
                "id INT64 REQUIRED",
                "_datasync_synced_at TIMESTAMP NULLABLE",
                "_datasync_run_id STRING NULLABLE"
            ]
        );
        // An existing target gets them with ALTER TABLE ADD COLUMN (NULLABLE), described after
        // the write.
        let added = lineage_plan(WriteMode::Append, Some(ids()));
        assert_eq!(added.action, TableAction::Update);
        let Some(Step::AlterTable { changes }) = added.steps.get(1) else {
            panic!("{:?}", added.steps)
        };
        assert!(changes.iter().all(|change| matches!(
            change,
            FieldChange::Add { field } if field.mode == FieldMode::Nullable
        )));
        assert_eq!(changes.len(), 2);
        assert_eq!(added.metadata_changes().len(), 2);
    }

    #[test]
    fn a_recreate_that_drops_the_clustering_column_stages_without_it() {
        let mut existing = table(
            "t",
            &[
                ("id", BqType::String, FieldMode::Nullable),
                ("gone", BqType::Int64, FieldMode::Nullable),
            ],
        );
        existing.clustering = vec!["gone".into()];
        let mut spec = spec("t", WriteMode::Replace);
        spec.allow_recreate = true;
        let planned = plan_table(TableInput {
            spec,
            source: Ok(source(10)),
            mapping: mapped(ids(), vec![]),
            existing_rows: Some(3),
            existing: Some(existing),
            unsupported: Vec::new(),
        });
        assert_eq!(planned.action, TableAction::Recreate);
        assert!(planned.extract().unwrap().load_schema.clustering.is_empty());
    }
}
