//! Plan rendering: text (Terraform-style symbols and unified schema diffs), JSON (the versioned
//! [`Plan`] itself) and Markdown (for pull-request comments). No decisions here.

use std::fmt::Write as _;

use super::cost::{human_bytes, human_dollars};
use super::{CostBasis, FieldChange, Plan, TableAction, TablePlan};
use crate::schema::{WarehouseField, WarehouseTable};

fn schema_lines(table: &WarehouseTable) -> String {
    table
        .fields
        .iter()
        .map(|field| format!("{}\n", field.diff_line()))
        .collect()
}

/// Unified diff of the existing and the future schema, one column per line.
pub fn schema_diff(destination: &str, plan: &TablePlan) -> String {
    let before = plan.existing.as_ref().map(schema_lines).unwrap_or_default();
    let planned = match plan.action {
        TableAction::Blocked => plan.desired.as_ref(),
        _ => plan.target_schema.as_ref(),
    };
    // Nothing planned (the source is unreachable, the mapping failed): no diff, or it would
    // show every existing column as removed.
    let Some(planned) = planned else {
        return String::new();
    };
    let after = schema_lines(planned);
    if before == after {
        return String::new();
    }
    let diff = similar::TextDiff::from_lines(&before, &after);
    let existing_header = if plan.existing.is_some() {
        format!("bq://{destination}.{} (existing)", plan.target)
    } else {
        "/dev/null".to_string()
    };
    diff.unified_diff()
        .context_radius(3)
        .header(
            &existing_header,
            &format!("bq://{destination}.{} (planned)", plan.target),
        )
        .to_string()
}

fn change_line(change: &FieldChange) -> String {
    match change {
        FieldChange::Add { field } => format!("+ add column {}", field.diff_line()),
        FieldChange::Relax { name } => format!("~ relax {name} REQUIRED -> NULLABLE"),
        FieldChange::Widen { from, to } => format!(
            "~ widen {} {} -> {}",
            from.name,
            from.type_text(),
            to.type_text()
        ),
        FieldChange::Incompatible { from, to, .. } => format!(
            "! {} {} -> {} (incompatible)",
            from.name,
            from.type_text(),
            to.type_text()
        ),
        FieldChange::Dropped { name } => format!("- {name} no longer in the source (kept)"),
    }
}

fn partitioning_text(partitioning: Option<&crate::schema::TimePartitioning>) -> String {
    partitioning.map_or_else(
        || "none".to_string(),
        |p| format!("{}({})", p.granularity, p.field),
    )
}

/// The table's layout where it is decided: the partitioning and clustering of a table being
/// created, and a partitioning change (which BigQuery can't make in place). A clustering change
/// is a metadata change ([`TablePlan::metadata_changes`]).
fn layout_lines(plan: &TablePlan) -> Vec<String> {
    let mut lines = Vec::new();
    match (
        plan.action,
        &plan.target_schema,
        &plan.existing,
        &plan.desired,
    ) {
        (TableAction::Create, Some(target), _, _) => {
            let mut parts = Vec::new();
            if target.partitioning.is_some() {
                parts.push(format!(
                    "partitioned by {}",
                    partitioning_text(target.partitioning.as_ref())
                ));
            }
            if !target.clustering.is_empty() {
                parts.push(format!(
                    "clustered by {}",
                    super::metadata::columns_text(&target.clustering)
                ));
            }
            if !parts.is_empty() {
                lines.push(parts.join(", "));
            }
        }
        (TableAction::Recreate | TableAction::Blocked, _, Some(existing), Some(desired))
            if desired.partitioning.is_some() && desired.partitioning != existing.partitioning =>
        {
            let (from, to) = (
                partitioning_text(existing.partitioning.as_ref()),
                partitioning_text(desired.partitioning.as_ref()),
            );
            lines.push(if plan.action == TableAction::Recreate {
                format!("-/+ partitioning {from} -> {to} (BigQuery can't change it in place: the table is recreated)")
            } else {
                format!("! partitioning {from} -> {to} (BigQuery can't change it in place: needs `allow_recreate`)")
            });
        }
        _ => {}
    }
    lines
}

/// Everything the plan says about a table besides its columns: layout and metadata changes.
fn table_lines(plan: &TablePlan) -> Vec<String> {
    let mut lines = layout_lines(plan);
    lines.extend(
        plan.metadata_changes()
            .iter()
            .map(super::MetadataChange::line),
    );
    lines
}

fn rows(count: Option<u64>) -> String {
    count.map_or_else(
        || "? rows".to_string(),
        |count| format!("~{} rows", group_digits(count)),
    )
}

/// `1234567` → `1,234,567`.
pub fn group_digits(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn mode_text(plan: &TablePlan) -> String {
    let mut text = plan.mode.as_str().to_string();
    if let Some(super::WriteOp::Merge { keys, .. }) = plan.write_op()
        && !keys.is_empty()
    {
        let _ = write!(text, " on [{}]", keys.join(", "));
    }
    if let Some(
        bound @ super::Bound::AfterTargetMax {
            source_column,
            target_column,
            ..
        },
    ) = plan.extract().map(|extract| &extract.bound)
    {
        let operator = bound.operator().unwrap_or(">");
        let _ = write!(
            text,
            " where {source_column} {operator} max(target.{target_column})"
        );
    }
    if let Some(super::WriteOp::Merge { deletes, .. }) = plan.write_op()
        && !deletes.is_keep()
    {
        let _ = write!(
            text,
            ", deletes {} (the whole key set is read every run)",
            deletes.as_str()
        );
    }
    if let Some(extract) = plan.extract() {
        let _ = write!(text, ", {}", extract.format.as_str());
        if let Some(reason) = &extract.format_reason {
            let _ = write!(text, " because {reason}");
        }
        text.push_str(&chunk_text(&extract.chunking));
    }
    text
}

/// `, 8 chunks by id (2 readers)` for a split table; nothing for one chunk.
fn chunk_text(chunking: &super::chunks::Chunking) -> String {
    if chunking.is_single() {
        return String::new();
    }
    let by = chunking
        .key
        .as_deref()
        .map_or_else(|| "ctid pages".to_string(), str::to_string);
    let mut text = format!(
        ", {} chunks by {by} ({} reader{})",
        chunking.count(),
        chunking.readers,
        if chunking.readers == 1 { "" } else { "s" }
    );
    if chunking.consistency == super::chunks::Consistency::PerChunk {
        text.push_str(", per-chunk consistency");
    }
    text
}

/// What a table's write bills: `copy job, free`, or the statements, their bytes and dollars
/// and where the figure comes from; `None` for a table that does not run.
fn write_cost_text(plan: &TablePlan) -> Option<String> {
    let op = plan.write_op()?;
    let Some(cost) = &plan.write_cost else {
        return Some("cost unknown (see the warning)".to_string());
    };
    let statements = super::Plan::statements(op);
    Some(match &cost.basis {
        CostBasis::CopyJob => "copy job, free (0 bytes billed)".to_string(),
        basis => format!(
            "{} bills ~{} (~{}): {}",
            cost.what(&statements),
            human_bytes(cost.bytes),
            human_dollars(cost.dollars),
            if matches!(basis, CostBasis::NewTarget) {
                "a new target, every table at BigQuery's 10 MiB minimum"
            } else {
                "the target side from a dry run, this run's tables at their 10 MiB minimum"
            }
        ),
    })
}

/// The plan's write cost for the closing line.
fn total_cost_text(plan: &Plan) -> String {
    let total = &plan.write_cost;
    let mut text = format!(
        "writes bill ~{} (~{} on demand)",
        human_bytes(total.bytes),
        human_dollars(total.dollars)
    );
    if total.unknown > 0 {
        let _ = write!(text, " plus {} table(s) of unknown cost", total.unknown);
    }
    text
}

fn action_text(action: TableAction) -> &'static str {
    match action {
        TableAction::Create => "create",
        TableAction::Update => "update schema",
        TableAction::Sync => "no schema change",
        TableAction::Recreate => "recreate",
        TableAction::Blocked => "blocked",
        TableAction::Error => "error",
        TableAction::Missing => "missing target",
    }
}

/// Counts for the closing line.
fn summary(plan: &Plan) -> String {
    let count = |action: TableAction| {
        plan.tables
            .iter()
            .filter(|table| table.action == action)
            .count()
    };
    let runnable: Vec<&TablePlan> = plan
        .tables
        .iter()
        .filter(|table| table.action.runs())
        .collect();
    let total_rows: u64 = runnable
        .iter()
        .filter_map(|table| table.estimated_rows)
        .sum();
    let operations: u32 = runnable.iter().map(|table| table.table_operations).sum();
    let failing =
        count(TableAction::Blocked) + count(TableAction::Error) + count(TableAction::Missing);
    let head = if plan.has_changes() {
        format!(
            "Plan: {} to create, {} to update, {} to recreate",
            count(TableAction::Create),
            count(TableAction::Update),
            count(TableAction::Recreate)
        )
    } else {
        "No schema changes".to_string()
    };
    let mut text = format!(
        "{head}; {} table(s) to sync, ~{} rows to move, {operations} BigQuery table operation(s) (limit 1,500 per table per day), {}",
        runnable.len(),
        group_digits(total_rows),
        total_cost_text(plan)
    );
    if failing > 0 {
        let _ = write!(text, "; {failing} table(s) cannot run");
    }
    if !plan.orphaned.is_empty() {
        let _ = write!(text, "; {} orphaned target(s) kept", plan.orphaned.len());
    }
    text
}

/// The heading of the orphaned targets' list.
const ORPHANS_HEADING: &str =
    "created by datasync, written by no table of the manifest now; kept, never dropped";

/// The hint under the orphaned targets' list.
fn orphans_hint(plan: &Plan) -> String {
    let destination = plan.destination.replacen('.', ":", 1);
    format!(
        "drop one that is no longer needed yourself (`bq rm -t {destination}.TABLE`), or add its source table back to the manifest"
    )
}

/// The orphaned targets as text (nothing when there are none).
fn orphans_text(plan: &Plan) -> String {
    if plan.orphaned.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "? orphaned targets ({ORPHANS_HEADING}):
"
    );
    for orphan in &plan.orphaned {
        let _ = writeln!(out, "    {}", orphan.target);
    }
    let _ = writeln!(
        out,
        "    hint: {}
",
        orphans_hint(plan)
    );
    out
}

/// The human-readable plan.
pub fn text(plan: &Plan) -> String {
    let mut out = format!(
        "datasync plan for bq://{} ({} tables)\n\n",
        plan.destination,
        plan.tables.len()
    );
    // An error several tables share (an unreachable source) is printed once, naming them.
    let shared = shared_errors(plan);
    for (message, labels) in &shared {
        let _ = writeln!(out, "error: {message}\n    tables: {}\n", labels.join(", "));
    }
    for table in &plan.tables {
        let _ = writeln!(
            out,
            "{} {} -> {} ({}, {}, {})",
            table.action.symbol(),
            table.label,
            table.target,
            action_text(table.action),
            mode_text(table),
            rows(table.estimated_rows)
        );
        let (layout, metadata) = (layout_lines(table), table.metadata_changes());
        for line in &layout {
            let _ = writeln!(out, "    {line}");
        }
        if let Some(cost) = write_cost_text(table) {
            let _ = writeln!(out, "    write: {cost}");
        }
        for change in &table.changes {
            let _ = writeln!(out, "    {}", change_line(change));
        }
        for change in metadata {
            let _ = writeln!(out, "    {}", change.line());
        }
        let diff = schema_diff(&plan.destination, table);
        if table.action != TableAction::Sync && !diff.is_empty() {
            for line in diff.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
        for error in &table.errors {
            if shared.iter().any(|(message, _)| *message == error.message) {
                let _ = writeln!(out, "    error: as above");
            } else {
                let _ = writeln!(out, "    error: {error}");
            }
        }
        for warning in &table.warnings {
            let _ = writeln!(out, "    warning: {warning}");
        }
        out.push('\n');
    }
    out.push_str(&orphans_text(plan));
    out.push_str(&summary(plan));
    out.push('\n');
    out
}

/// Error messages more than one table has, with those tables, in plan order.
fn shared_errors(plan: &Plan) -> Vec<(String, Vec<String>)> {
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    for table in &plan.tables {
        for error in &table.errors {
            match found
                .iter_mut()
                .find(|(message, _)| *message == error.message)
            {
                Some((_, labels)) => labels.push(table.label.clone()),
                None => found.push((error.message.clone(), vec![table.label.clone()])),
            }
        }
    }
    found.retain(|(_, labels)| labels.len() > 1);
    found
}

/// The plan as Markdown, for a pull-request comment.
pub fn markdown(plan: &Plan) -> String {
    let mut out = format!("### datasync plan for `bq://{}`\n\n", plan.destination);
    out.push_str(
        "| | source | target | action | mode | rows | write |\n|---|---|---|---|---|---|---|\n",
    );
    for table in &plan.tables {
        let _ = writeln!(
            out,
            "| `{}` | `{}` | `{}` | {} | {} | {} | {} |",
            table.action.symbol(),
            table.label,
            table.target,
            action_text(table.action),
            mode_text(table).replace('|', "\\|"),
            rows(table.estimated_rows),
            write_cost_text(table).map_or_else(|| "-".to_string(), |cost| cost.replace('|', "\\|"))
        );
    }
    out.push('\n');
    for table in &plan.tables {
        let diff = schema_diff(&plan.destination, table);
        let lines = table_lines(table);
        let has_notes = !table.errors.is_empty() || !table.warnings.is_empty() || !lines.is_empty();
        if (table.action == TableAction::Sync || diff.is_empty()) && !has_notes {
            continue;
        }
        let _ = writeln!(
            out,
            "<details><summary><code>{}</code> → <code>{}</code>: {}</summary>\n",
            table.label,
            table.target,
            action_text(table.action)
        );
        for line in &lines {
            let _ = writeln!(out, "- <code>{}</code>", html_escape(line));
        }
        if !lines.is_empty() {
            out.push('\n');
        }
        if !diff.is_empty() {
            let _ = writeln!(out, "```diff\n{}```\n", diff);
        }
        for error in &table.errors {
            let _ = writeln!(out, "- :x: {error}");
        }
        for warning in &table.warnings {
            let _ = writeln!(out, "- :warning: {warning}");
        }
        out.push_str("\n</details>\n\n");
    }
    if !plan.orphaned.is_empty() {
        let _ = writeln!(out, "**Orphaned targets** ({ORPHANS_HEADING}):\n");
        for orphan in &plan.orphaned {
            let _ = writeln!(out, "- `{}`", orphan.target);
        }
        let _ = writeln!(out, "\n:bulb: {}\n", orphans_hint(plan));
    }
    out.push_str(&format!("**{}**\n", summary(plan)));
    out
}

/// `text` safe inside HTML (`&`, `<`, `>`).
fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The field list of a table as text (for logs).
pub fn fields(fields: &[WarehouseField]) -> String {
    fields
        .iter()
        .map(WarehouseField::diff_line)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::raw::WriteMode;
    use crate::plan::testing::{mapped, source, spec, table};
    use crate::plan::{TableInput, plan_table};
    use crate::schema::{BqType, FieldMode};

    #[test]
    fn an_unreachable_source_shows_no_removed_columns() {
        use BqType::*;
        use FieldMode::*;
        let plan = plan_table(TableInput {
            spec: spec("orders", WriteMode::Replace),
            source: Err("cannot connect to source `shop`: Connection refused".into()),
            mapping: Err(Vec::new()),
            existing: Some(table("orders", &[("id", Int64, Required)])),
            existing_rows: Some(3),
            unsupported: Vec::new(),
        });
        assert_eq!(schema_diff("p.d", &plan), "");
    }

    #[test]
    fn an_error_several_tables_share_is_printed_once() {
        let failed = |key: &str| {
            plan_table(TableInput {
                spec: spec(key, WriteMode::Replace),
                source: Err("cannot connect to source `shop`: Connection refused (os error 111) (at 127.0.0.1:1)".into()),
                mapping: Err(Vec::new()),
                existing: None,
                existing_rows: None,
                unsupported: Vec::new(),
            })
        };
        let plan = Plan::new(
            "p.d".into(),
            false,
            vec![failed("orders"), failed("customers")],
        );
        let text = text(&plan);
        assert_eq!(text.matches("Connection refused").count(), 1, "{text}");
        assert!(
            text.contains("    tables: shop.orders, shop.customers\n"),
            "{text}"
        );
        assert_eq!(text.matches("    error: as above").count(), 2, "{text}");
    }

    fn sample_plan() -> Plan {
        use BqType::*;
        use FieldMode::*;
        let desired_orders = table(
            "orders",
            &[
                ("id", Int64, Required),
                ("amount", Numeric, Nullable),
                ("note", String, Nullable),
            ],
        );
        let existing_orders = table(
            "orders",
            &[
                ("id", Int64, Required),
                ("amount", Int64, Required),
                ("old", String, Nullable),
            ],
        );
        let tables = vec![
            plan_table(TableInput {
                spec: spec("customers", WriteMode::Replace),
                source: Ok(source(1_250)),
                mapping: mapped(
                    table(
                        "customers",
                        &[("id", Int64, Required), ("name", String, Nullable)],
                    ),
                    vec![crate::diagnostic::Diagnostic::warning(
                        crate::diagnostic::Code::MappingRenamed,
                        "column `e-mail` is written as `e_mail`",
                    )],
                ),
                existing: None,
                existing_rows: None,
                unsupported: Vec::new(),
            }),
            plan_table(TableInput {
                spec: spec("orders", WriteMode::Merge),
                source: Ok(source(40_000)),
                mapping: mapped(desired_orders, vec![]),
                existing: Some(existing_orders),
                existing_rows: Some(39_000),
                unsupported: Vec::new(),
            }),
            plan_table(TableInput {
                spec: spec("items", WriteMode::Incremental),
                source: Ok(source(7)),
                mapping: mapped(
                    table("items", &[("id", Int64, Required), ("doc", Json, Nullable)]),
                    vec![],
                ),
                existing: Some(table(
                    "items",
                    &[("id", Int64, Required), ("doc", Json, Nullable)],
                )),
                existing_rows: Some(3),
                unsupported: Vec::new(),
            }),
            plan_table(TableInput {
                spec: spec("events", WriteMode::Append),
                source: Ok(source(10)),
                mapping: mapped(table("events", &[("id", String, Nullable)]), vec![]),
                existing: Some(table("events", &[("id", Int64, Nullable)])),
                existing_rows: Some(3),
                unsupported: Vec::new(),
            }),
            plan_table(TableInput {
                spec: crate::plan::testing::spec_with(
                    "users",
                    "mode: merge, primary_key: [id], deletes: soft",
                ),
                source: Ok(source(500)),
                mapping: mapped(table("users", &[("id", Int64, Required)]), vec![]),
                existing: None,
                existing_rows: None,
                unsupported: Vec::new(),
            }),
        ];
        let mut tables = tables;
        // What the planner's dry run of the orders MERGE said: 3 GiB of the target.
        tables[1].write_cost = Some(crate::plan::WriteCost::dry_run(&[(
            "MERGE".into(),
            3 << 30,
        )]));
        Plan::new("demo-project.ds".into(), false, tables)
    }

    #[test]
    fn split_tables_show_their_chunks() {
        use crate::plan::chunks::{ChunkRange, Chunking, Consistency};
        let mut plan = sample_plan();
        let extract = plan.tables[0].extract_mut().unwrap();
        extract.chunking = Chunking {
            key: Some("id".into()),
            ranges: vec![
                ChunkRange::Key {
                    lo: None,
                    hi: Some(10),
                },
                ChunkRange::Key {
                    lo: Some(10),
                    hi: None,
                },
            ],
            readers: 2,
            consistency: Consistency::Snapshot,
            estimated_bytes: Some(2 << 30),
        };
        let extract = plan.tables[2].extract_mut().unwrap();
        extract.chunking = Chunking {
            key: None,
            ranges: vec![
                ChunkRange::Pages { lo: 0, hi: Some(5) },
                ChunkRange::Pages { lo: 5, hi: Some(9) },
                ChunkRange::Pages { lo: 9, hi: None },
            ],
            readers: 1,
            consistency: Consistency::PerChunk,
            estimated_bytes: Some(3 << 30),
        };
        plan.refingerprint();
        let text = text(&plan);
        assert!(
            text.contains("+ shop.customers -> customers (create, replace, avro, 2 chunks by id (2 readers), ~1,250 rows)"),
            "{text}"
        );
        assert!(
            text.contains(", 3 chunks by ctid pages (1 reader), per-chunk consistency, ~7 rows)"),
            "{text}"
        );
        let markdown = markdown(&plan);
        assert!(
            markdown.contains("| replace, avro, 2 chunks by id (2 readers) | ~1,250 rows |"),
            "{markdown}"
        );
        // JSON lists every chunk; a table in one chunk has no `chunking`.
        let json = serde_json::to_value(&plan).unwrap();
        let stage = |table: usize| json["tables"][table]["steps"][0].clone();
        assert_eq!(
            stage(0)["chunking"]["ranges"],
            serde_json::json!([{"kind": "key", "hi": 10}, {"kind": "key", "lo": 10}])
        );
        assert_eq!(stage(0)["chunking"]["consistency"], "snapshot");
        assert_eq!(stage(2)["chunking"]["consistency"], "per-chunk");
        assert!(stage(1).get("chunking").is_none(), "{}", stage(1));
    }

    #[test]
    fn text_rendering() {
        insta::assert_snapshot!(text(&sample_plan()));
    }

    #[test]
    fn markdown_rendering() {
        insta::assert_snapshot!(markdown(&sample_plan()));
    }

    /// The sample plan with a dataset holding two orphaned targets, a table datasync did not
    /// create, a mapped target and a working table.
    fn plan_with_orphans() -> Plan {
        let mut plan = sample_plan();
        let dataset: Vec<(std::string::String, bool)> = [
            ("orders_2019", true),
            ("customers", true),
            ("hand_made", false),
            ("_datasync_lock_customers", true),
            ("legacy_items", true),
        ]
        .iter()
        .map(|(name, managed)| (name.to_string(), *managed))
        .collect();
        let mapped: Vec<&str> = plan
            .tables
            .iter()
            .map(|table| table.target.as_str())
            .collect();
        plan.orphaned = crate::plan::orphans("demo-project:ds", &dataset, &mapped, &["_datasync_"]);
        plan
    }

    #[test]
    fn orphans_are_the_managed_unmapped_tables_that_are_not_working_tables() {
        let plan = plan_with_orphans();
        let names: Vec<&str> = plan
            .orphaned
            .iter()
            .map(|orphan| orphan.target.as_str())
            .collect();
        assert_eq!(names, ["legacy_items", "orders_2019"]);
        let warning = &plan.orphaned[0].warning;
        assert_eq!(warning.code, crate::diagnostic::Code::PlanOrphanedTarget);
        assert!(!warning.is_error());
        assert!(
            warning
                .help
                .as_deref()
                .unwrap()
                .contains("bq rm -t demo-project:ds.legacy_items"),
            "{warning:?}"
        );
        // Reported, not acted on: the fingerprint and the actions are the sample plan's.
        assert_eq!(plan.fingerprint, sample_plan().fingerprint);
        assert!(plan.is_intact());
        let json = serde_json::to_value(&plan).unwrap();
        insta::assert_json_snapshot!(json["orphaned"]);
        let back: Plan = serde_json::from_value(json).unwrap();
        assert_eq!(back, plan);
        // No orphans: no key in the JSON (saved plans without it still load).
        let json = serde_json::to_value(sample_plan()).unwrap();
        assert!(json.get("orphaned").is_none());
    }

    #[test]
    fn text_rendering_with_orphans() {
        insta::assert_snapshot!(text(&plan_with_orphans()));
    }

    #[test]
    fn markdown_rendering_with_orphans() {
        insta::assert_snapshot!(markdown(&plan_with_orphans()));
    }

    #[test]
    fn partitioning_changes_block_and_clustering_changes_are_patched_in_place() {
        use BqType::*;
        use FieldMode::*;
        let mut desired = table("t", &[("id", Int64, Required), ("at", Timestamp, Nullable)]);
        desired.partitioning = Some(crate::schema::TimePartitioning {
            granularity: "DAY".into(),
            field: "at".into(),
        });
        desired.clustering = vec!["id".into()];
        let existing = table("t", &[("id", Int64, Required), ("at", Timestamp, Nullable)]);
        let input = |existing: WarehouseTable| TableInput {
            spec: spec("t", WriteMode::Replace),
            source: Ok(source(1)),
            mapping: mapped(desired.clone(), vec![]),
            existing: Some(existing),
            existing_rows: None,
            unsupported: Vec::new(),
        };
        let blocked = plan_table(input(existing.clone()));
        assert_eq!(blocked.action, TableAction::Blocked);
        assert!(
            blocked.errors[0]
                .message
                .contains("partitioning is none but the manifest asks for DAY(at)"),
            "{:?}",
            blocked.errors
        );
        assert!(blocked.steps.is_empty());
        let rendered = text(&Plan::new("p.d".into(), false, vec![blocked]));
        assert!(
            rendered.contains("    ! partitioning none -> DAY(at) (BigQuery can't change it in place: needs `allow_recreate`)\n"),
            "{rendered}"
        );
        // Same partitioning, other clustering: an in-place update, patched after the write.
        let mut partitioned = existing;
        partitioned.partitioning = desired.partitioning.clone();
        let reclustered = plan_table(input(partitioned.clone()));
        assert_eq!(reclustered.action, TableAction::Update);
        assert!(
            reclustered.warnings.is_empty(),
            "{:?}",
            reclustered.warnings
        );
        assert_eq!(
            reclustered.metadata_changes(),
            [crate::plan::MetadataChange::Clustering {
                from: vec![],
                to: vec!["id".into()]
            }]
        );
        let mut same = partitioned;
        same.clustering = desired.clustering.clone();
        let fine = plan_table(input(same));
        assert_eq!(fine.action, TableAction::Sync);
        assert!(fine.warnings.is_empty(), "{:?}", fine.warnings);
        assert!(fine.metadata_changes().is_empty());
    }

    /// Layout and metadata: a created table's partitioning and clustering, a clustering change
    /// and description changes of an existing one, a partitioning change that recreates.
    fn metadata_plan() -> Plan {
        use BqType::*;
        use FieldMode::*;
        let described = |name: &str, bq_type, mode, description: &str| WarehouseField {
            description: Some(description.into()),
            ..WarehouseField::new(name, bq_type, mode)
        };
        let mut events = table(
            "events",
            &[("id", Int64, Required), ("at", Timestamp, Required)],
        );
        events.partitioning = Some(crate::schema::TimePartitioning {
            granularity: "MONTH".into(),
            field: "at".into(),
        });
        events.clustering = vec!["id".into()];
        events.description = Some("Everything that happened".into());
        let mut orders = WarehouseTable {
            fields: vec![
                WarehouseField::new("id", Int64, Required),
                described(
                    "note",
                    String,
                    Nullable,
                    "What the customer wrote\nat checkout",
                ),
            ],
            clustering: vec!["id".into(), "note".into()],
            description: Some(
                "Orders placed in the shop, one row per order, whatever channel they came through"
                    .into(),
            ),
            ..table("orders", &[])
        };
        let mut existing_orders = orders.clone();
        existing_orders.clustering = vec!["id".into()];
        existing_orders.description = Some("Orders".into());
        existing_orders.fields[1].description = None;
        orders
            .fields
            .push(described("channel", String, Nullable, "Web or app"));
        let mut recreated = events.clone();
        recreated.name = "visits".into();
        let mut existing_visits = recreated.clone();
        existing_visits.partitioning = None;
        let mut recreate_spec = spec("visits", WriteMode::Replace);
        recreate_spec.allow_recreate = true;
        let tables = vec![
            plan_table(TableInput {
                spec: spec("events", WriteMode::Append),
                source: Ok(source(5)),
                mapping: mapped(events, vec![]),
                existing: None,
                existing_rows: None,
                unsupported: Vec::new(),
            }),
            plan_table(TableInput {
                spec: spec("orders", WriteMode::Replace),
                source: Ok(source(5)),
                mapping: mapped(orders, vec![]),
                existing: Some(existing_orders),
                existing_rows: Some(5),
                unsupported: Vec::new(),
            }),
            plan_table(TableInput {
                spec: recreate_spec,
                source: Ok(source(5)),
                mapping: mapped(recreated, vec![]),
                existing: Some(existing_visits),
                existing_rows: Some(5),
                unsupported: Vec::new(),
            }),
        ];
        Plan::new("demo-project.ds".into(), false, tables)
    }

    #[test]
    fn the_json_plan_carries_layout_and_the_patch_step() {
        let json = serde_json::to_value(metadata_plan()).unwrap();
        let created = &json["tables"][0]["target_schema"];
        assert_eq!(
            created["partitioning"],
            serde_json::json!({"type": "MONTH", "field": "at"})
        );
        assert_eq!(created["clustering"], serde_json::json!(["id"]));
        let steps = json["tables"][1]["steps"].as_array().unwrap();
        let patch = steps.last().unwrap();
        assert_eq!(patch["step"], "patch_table");
        assert_eq!(
            patch["changes"][3],
            serde_json::json!({"change": "clustering", "from": ["id"], "to": ["id", "note"]})
        );
        assert_eq!(
            json["tables"][1]["existing"]["clustering"],
            serde_json::json!(["id"])
        );
        // The staging load keeps the target's clustering until the patch.
        assert_eq!(
            steps[0]["load_schema"]["clustering"],
            serde_json::json!(["id"])
        );
    }

    #[test]
    fn metadata_text_rendering() {
        insta::assert_snapshot!(text(&metadata_plan()));
    }

    #[test]
    fn metadata_markdown_rendering() {
        insta::assert_snapshot!(markdown(&metadata_plan()));
    }

    #[test]
    fn actions_and_fingerprint() {
        let plan = sample_plan();
        let actions: Vec<TableAction> = plan.tables.iter().map(|table| table.action).collect();
        assert_eq!(
            actions,
            [
                TableAction::Create,
                TableAction::Update,
                TableAction::Sync,
                TableAction::Blocked,
                TableAction::Create
            ]
        );
        assert!(plan.has_changes());
        assert!(plan.has_errors());
        assert!(plan.is_intact());
        let mut edited = plan.clone();
        edited.tables[0].target = "other".into();
        assert!(!edited.is_intact());
        let json = serde_json::to_string(&plan).unwrap();
        let back: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan);
    }
}
