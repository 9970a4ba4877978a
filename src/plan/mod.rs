//! The plan: for every table, what `apply` will do (create, alter, recreate, load) and why.
//! Pure: built from the manifest's table specs, the introspected source tables, the mapped
//! (desired) BigQuery tables and the existing BigQuery tables. `apply` executes a plan and
//! nothing else.

pub mod diff;
pub mod render;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::TableSpec;
use crate::manifest::raw::WriteMode;
use crate::schema::{SourceTable, WarehouseTable};
pub use diff::FieldChange;

/// Version of the plan's JSON format (`plan --format json`, `plan --out`).
pub const FORMAT_VERSION: u32 = 1;

/// What happens to a table's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableAction {
    /// The target does not exist: create it.
    Create,
    /// Add, relax or widen columns in place.
    Update,
    /// Schema already right: only rows move.
    Sync,
    /// Incompatible change, allowed: drop and recreate (the rows are replaced by the source's).
    Recreate,
    /// Incompatible change, not allowed: nothing happens to this table.
    Blocked,
    /// The source or the mapping failed: nothing happens to this table.
    Error,
    /// The target is missing and `auto_create` is off.
    Missing,
}

impl TableAction {
    /// Terraform-style symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Create => "+",
            Self::Update => "~",
            Self::Sync => "=",
            Self::Recreate => "-/+",
            Self::Blocked | Self::Error | Self::Missing => "!",
        }
    }

    /// Whether the table's schema changes.
    pub fn changes_schema(self) -> bool {
        matches!(self, Self::Create | Self::Update | Self::Recreate)
    }

    /// Whether apply will run this table.
    pub fn runs(self) -> bool {
        matches!(
            self,
            Self::Create | Self::Update | Self::Sync | Self::Recreate
        )
    }
}

/// One operation apply performs, in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Drop the target (recreate only; its rows are replaced by this run's load).
    DropTable,
    /// Create the target with the desired schema.
    CreateTable,
    /// Change columns in place.
    AlterTable {
        /// The in-place changes.
        changes: Vec<FieldChange>,
    },
    /// Extract, load into a staging table, verify the row count, then write into the target in
    /// one statement (replace: truncate+insert in a transaction; append/incremental: insert;
    /// merge: MERGE on the key).
    Load {
        /// Write mode.
        mode: WriteMode,
        /// Merge key.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        key: Vec<String>,
        /// Incremental cursor (BigQuery column name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
}

/// The plan of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TablePlan {
    /// `source.table` as in the manifest.
    pub label: String,
    /// Target table.
    pub target: String,
    /// Write mode.
    pub mode: WriteMode,
    /// Schema action.
    pub action: TableAction,
    /// What apply runs, in order.
    pub steps: Vec<Step>,
    /// Column-level differences.
    pub changes: Vec<FieldChange>,
    /// The table the source maps to.
    pub desired: Option<WarehouseTable>,
    /// The table as it is in BigQuery.
    pub existing: Option<WarehouseTable>,
    /// The table as it will be: the load schema.
    pub target_schema: Option<WarehouseTable>,
    /// Source rows (catalog estimate).
    pub estimated_rows: Option<u64>,
    /// Rows in the target now.
    pub existing_rows: Option<u64>,
    /// BigQuery table operations this table uses (quota: 1,500 per table per day).
    pub table_operations: u32,
    /// Lossy mappings, renames, dropped columns.
    pub warnings: Vec<String>,
    /// Why the table cannot run.
    pub errors: Vec<String>,
    /// The manifest's table spec (apply needs it to extract).
    pub spec: TableSpec,
    /// The introspected source table.
    pub source_table: Option<SourceTable>,
    /// Hash of the source table's shape, for the stale-plan check.
    pub source_fingerprint: Option<String>,
    /// Hash of the existing target's shape (`absent` when missing).
    pub target_fingerprint: String,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// datasync's version.
    pub datasync_version: String,
    /// `project.dataset`.
    pub destination: String,
    /// Tables, in manifest order (disabled tables are left out).
    pub tables: Vec<TablePlan>,
    /// Hash of everything above.
    pub fingerprint: String,
}

/// Hex SHA-256 of a value's JSON.
pub fn fingerprint<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(json))[..16].to_string()
}

/// The source table's fingerprint: its shape, not its row estimate.
pub fn source_fingerprint(table: &SourceTable) -> String {
    let mut shape = table.clone();
    shape.estimated_rows = None;
    fingerprint(&shape)
}

/// The target's fingerprint.
pub fn target_fingerprint(existing: Option<&WarehouseTable>) -> String {
    existing.map_or_else(|| "absent".to_string(), fingerprint)
}

/// Everything known about one table before planning.
#[derive(Debug, Clone)]
pub struct TableInput {
    /// The manifest's spec.
    pub spec: TableSpec,
    /// Introspection result.
    pub source: Result<SourceTable, String>,
    /// Mapping result: the desired table, or why it cannot be mapped.
    pub desired: Result<WarehouseTable, Vec<String>>,
    /// Mapping warnings (renames, lossy columns).
    pub mapping_warnings: Vec<String>,
    /// The existing table, if any.
    pub existing: Option<WarehouseTable>,
    /// Rows in the existing table.
    pub existing_rows: Option<u64>,
}

/// Plans one table.
pub fn plan_table(input: TableInput) -> TablePlan {
    let TableInput {
        spec,
        source,
        desired,
        mapping_warnings,
        existing,
        existing_rows,
    } = input;
    let mut warnings = mapping_warnings;
    let mut errors = Vec::new();
    let source_table = match source {
        Ok(table) => Some(table),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let desired = match desired {
        Ok(table) => Some(table),
        Err(problems) => {
            if source_table.is_some() {
                errors.extend(problems);
            }
            None
        }
    };
    let mut changes = Vec::new();
    let mut steps = Vec::new();
    let mut target_schema = None;
    let action = match (&desired, &existing) {
        _ if !errors.is_empty() => TableAction::Error,
        (None, _) => TableAction::Error,
        (Some(_), None) if !spec.auto_create => {
            errors.push(format!(
                "target table `{}` does not exist and `auto_create` is off",
                spec.target
            ));
            TableAction::Missing
        }
        (Some(desired), None) => {
            steps.push(Step::CreateTable);
            target_schema = Some(desired.clone());
            TableAction::Create
        }
        (Some(desired), Some(existing)) => {
            changes = diff::diff_table(desired, existing);
            for change in &changes {
                if let FieldChange::Dropped { name } = change {
                    warnings.push(format!(
                        "column `{name}` is no longer synced; BigQuery keeps it (NULL in new rows)"
                    ));
                }
            }
            let incompatible: Vec<String> = changes
                .iter()
                .filter_map(|change| match change {
                    FieldChange::Incompatible { from, reason, .. } => {
                        Some(format!("`{}`: {reason}", from.name))
                    }
                    _ => None,
                })
                .collect();
            let mut incompatible = incompatible;
            // BigQuery cannot change a table's partitioning in place.
            if desired.partitioning.is_some() && desired.partitioning != existing.partitioning {
                let describe = |partitioning: Option<&crate::schema::TimePartitioning>| {
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
            if !desired.clustering.is_empty() && desired.clustering != existing.clustering {
                warnings.push(format!(
                    "clustering is [{}] in BigQuery, [{}] in the manifest; it is not changed",
                    existing.clustering.join(", "),
                    desired.clustering.join(", ")
                ));
            }
            let in_place: Vec<FieldChange> = changes
                .iter()
                .filter(|change| !matches!(change, FieldChange::Dropped { .. }))
                .cloned()
                .collect();
            if !incompatible.is_empty() {
                if spec.allow_recreate {
                    warnings.push(format!(
                        "recreating `{}`: {}",
                        spec.target,
                        incompatible.join("; ")
                    ));
                    steps.push(Step::DropTable);
                    steps.push(Step::CreateTable);
                    target_schema = Some(desired.clone());
                    TableAction::Recreate
                } else {
                    errors.push(format!(
                        "incompatible change: {}; set `allow_recreate: true` (or ALLOW_TABLE_RECREATION=true) to drop and recreate the table",
                        incompatible.join("; ")
                    ));
                    TableAction::Blocked
                }
            } else if in_place.is_empty() {
                target_schema = Some(diff::evolved_table(desired, existing, &changes));
                TableAction::Sync
            } else if !spec.auto_create {
                errors.push(format!(
                    "the schema of `{}` must change but `auto_create` is off",
                    spec.target
                ));
                TableAction::Blocked
            } else {
                steps.push(Step::AlterTable { changes: in_place });
                target_schema = Some(diff::evolved_table(desired, existing, &changes));
                TableAction::Update
            }
        }
    };
    if action.runs() {
        let key = match spec.mode {
            WriteMode::Merge => spec
                .primary_key
                .clone()
                .or_else(|| source_table.as_ref().map(|table| table.primary_key.clone()))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        steps.push(Step::Load {
            mode: spec.mode,
            key,
            cursor: spec.cursor.clone(),
        });
    }
    // Staging load + one write into the target (+ DDL for create/alter/drop).
    let table_operations = if action.runs() {
        1 + u32::try_from(
            steps
                .iter()
                .filter(|step| !matches!(step, Step::Load { .. }))
                .count(),
        )
        .unwrap_or(0)
            + 1
    } else {
        0
    };
    let source_fingerprint = source_table.as_ref().map(source_fingerprint);
    TablePlan {
        label: spec.label(),
        target: spec.target.clone(),
        mode: spec.mode,
        action,
        steps,
        changes,
        target_fingerprint: target_fingerprint(existing.as_ref()),
        desired,
        existing,
        target_schema,
        estimated_rows: source_table.as_ref().and_then(|table| table.estimated_rows),
        existing_rows,
        table_operations,
        warnings,
        errors,
        spec,
        source_table,
        source_fingerprint,
    }
}

impl Plan {
    /// Assembles a plan and fingerprints it.
    pub fn new(destination: String, tables: Vec<TablePlan>) -> Self {
        let mut plan = Self {
            format_version: FORMAT_VERSION,
            datasync_version: env!("CARGO_PKG_VERSION").to_string(),
            destination,
            tables,
            fingerprint: String::new(),
        };
        plan.fingerprint = plan.content_fingerprint();
        plan
    }

    /// Whether any table's schema changes (what `--detailed-exitcode` reports as 2).
    pub fn has_changes(&self) -> bool {
        self.tables
            .iter()
            .any(|table| table.action.changes_schema())
    }

    /// Whether any table cannot run.
    pub fn has_errors(&self) -> bool {
        self.tables.iter().any(|table| !table.action.runs())
    }

    /// The fingerprint of everything but the fingerprint itself.
    fn content_fingerprint(&self) -> String {
        fingerprint(&(&self.destination, &self.tables))
    }

    /// Whether the stored fingerprint matches the content (the file was not edited).
    pub fn is_intact(&self) -> bool {
        self.fingerprint == self.content_fingerprint()
    }
}
