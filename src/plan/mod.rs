//! The plan: for every table, what `apply` will do (create, alter, recreate, load) and why.
//! Pure: built from the manifest's table specs, the introspected source tables, the mapped
//! (desired) BigQuery tables and the existing BigQuery tables. `apply` executes a plan and
//! nothing else.

mod build;
pub mod chunks;
pub mod cost;
pub mod diff;
pub mod metadata;
pub mod render;
pub mod shard;
pub mod stale;
#[cfg(test)]
mod testing;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::diagnostic::Diagnostic;
use crate::manifest::TableSpec;
use crate::manifest::raw::WriteMode;
use crate::manifest::resolve::TypePolicies;
use crate::mapping::ColumnMapping;
use crate::schema::{BqType, Deletes, LoadFormat, SourceTable, WarehouseTable};
pub use build::{TableInput, plan_table};
pub use cost::{CostBasis, TotalWriteCost, WriteCost};
pub use diff::FieldChange;
pub use metadata::MetadataChange;

/// Version of the plan's JSON format (`plan --format json`, `plan --out`).
pub const FORMAT_VERSION: u32 = 3;

/// What happens to a table's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableAction {
    /// The target does not exist: create it.
    Create,
    /// Change the table in place: add, relax or widen columns; descriptions; clustering.
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

/// One operation apply performs. The variant order is the execution order: the rows are staged
/// and verified first, so every DDL step and the write run only on verified rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Extract the rows into the run's staging table and verify the row count. Nothing else
    /// changes, so a failed extraction or load leaves the target as it was.
    Stage(Box<Extract>),
    /// Drop the target. No longer planned (a recreate is a [`WriteOp::Recreate`]); kept so the
    /// executor still runs it.
    DropTable,
    /// Create the target with the plan's `target_schema`.
    CreateTable,
    /// Change columns in place.
    AlterTable {
        /// The in-place changes.
        changes: Vec<FieldChange>,
    },
    /// Write the verified staging rows into the target in one atomic statement.
    Write {
        /// How.
        op: WriteOp,
    },
    /// Change the target's descriptions and clustering in place (one `tables.patch`: no job,
    /// nothing billed), after the write: the write's copy job still sees the clustering the
    /// staging table was made with.
    PatchTable {
        /// The metadata changes.
        changes: Vec<MetadataChange>,
    },
}

/// What to read from the source and how: every decision of the extraction, made at plan time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extract {
    /// The selected columns, in select order: source column, BigQuery field, codec.
    pub columns: Vec<ColumnMapping>,
    /// Which rows.
    pub bound: Bound,
    /// The staging table's schema (the target's schema after this run).
    pub load_schema: WarehouseTable,
    /// Most rows per encoded chunk (the progress step).
    pub batch_size: u64,
    /// Bad-value policies.
    pub policies: TypePolicies,
    /// Bad values tolerated before the table fails; `None` = unlimited.
    pub max_bad_values: Option<u64>,
    /// Source columns naming a row in bad-value messages.
    pub key_columns: Vec<String>,
    /// The load format (the manifest's `format`, or NDJSON where Avro cannot carry the
    /// table exactly).
    #[serde(default = "ndjson")]
    pub format: LoadFormat,
    /// Why the table is loaded as NDJSON although Avro was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_reason: Option<String>,
    /// The row sink appends the lineage columns ([`crate::schema::LINEAGE_SYNCED_AT`],
    /// [`crate::schema::LINEAGE_RUN_ID`]) to every row, after `columns`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lineage: bool,
    /// How the rows are split for reading: key or page ranges, readers, consistency. Absent
    /// (one chunk reading every row) for small tables, SQLite, and tables without a usable key.
    #[serde(default, skip_serializing_if = "chunks::Chunking::is_single")]
    pub chunking: chunks::Chunking,
}

/// Plans saved before the field existed loaded NDJSON.
fn ndjson() -> LoadFormat {
    LoadFormat::Ndjson
}

/// Which source rows a run reads. The decision is planned; for [`Bound::AfterTargetMax`] the
/// value (the target's current maximum) is read at apply time, like Terraform's "known after
/// apply".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Bound {
    /// Every row.
    All,
    /// Rows whose cursor is past the target's maximum of it (every row when the target holds
    /// none).
    AfterTargetMax {
        /// The cursor's source column.
        source_column: String,
        /// The cursor's BigQuery column.
        target_column: String,
        /// The BigQuery type of the cursor column (how its maximum reads back).
        bq_type: BqType,
        /// `>=` instead of `>`: `merge` re-reads the rows at the maximum (upserts are
        /// idempotent, and rows sharing the maximum are not missed).
        inclusive: bool,
    },
}

impl Bound {
    /// The comparison operator, for rendering.
    pub fn operator(&self) -> Option<&'static str> {
        match self {
            Self::All => None,
            Self::AfterTargetMax { inclusive, .. } => Some(if *inclusive { ">=" } else { ">" }),
        }
    }
}

/// How the verified staging rows are written into the target: one atomic job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WriteOp {
    /// Replace every row: one copy job staging → target, `WRITE_TRUNCATE` (free, atomic). An
    /// empty source stages an empty table, so it empties the target.
    ///
    /// No row an earlier run loaded is lost to a bad value: when this run rejects rows, the
    /// target's current rows for the rejected keys are copied into staging first (the target
    /// is only read); without a key, a run with rejects fails the table if the target has rows.
    Replace {
        /// Target columns.
        columns: Vec<String>,
        /// The key that finds a rejected row's earlier version in the target (the manifest's
        /// `primary_key`, else the source's); empty when the table has none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        keep_rejected: Vec<KeyColumn>,
    },
    /// Add the rows: one copy job staging → target, `WRITE_APPEND` (free, atomic).
    Append {
        /// Target columns.
        columns: Vec<String>,
    },
    /// An incompatible schema change (`allow_recreate`): one `WRITE_TRUNCATE` copy replaces the
    /// rows and the schema atomically. With `backup` (the partitioning changes, which a copy
    /// can't do), the old table is first copied aside under a backup name, then the target is
    /// dropped and copied anew; the backup is dropped once the new target is complete, and
    /// copied back if it fails.
    Recreate {
        /// Target columns.
        columns: Vec<String>,
        /// Keep the old table aside while the new one is made.
        backup: bool,
    },
    /// Upsert on the key (`MERGE`).
    Merge {
        /// Key columns, target names.
        keys: Vec<String>,
        /// Target columns.
        columns: Vec<String>,
        /// The cursor's target column: among staged rows sharing a key, the greatest wins.
        #[serde(default)]
        cursor: Option<String>,
        /// Target rows whose key is gone from the source: kept, soft-deleted
        /// (`_datasync_deleted_at`) or deleted, in the MERGE's transaction.
        #[serde(default, skip_serializing_if = "Deletes::is_keep")]
        deletes: Deletes,
        /// With `deletes`: the source's whole key set (key columns only, never bounded), staged
        /// into this run's keys table `_datasync_keys_<target>_<run id>`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_set: Option<Box<Extract>>,
    },
}

/// One key column of a table: its source and target names and the target's type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyColumn {
    /// The source column (as a rejected row's record names it).
    pub source: String,
    /// The target column.
    pub target: String,
    /// Its BigQuery type (of the query parameter that carries its values).
    pub bq_type: BqType,
}

impl WriteOp {
    /// The target columns written.
    pub fn columns(&self) -> &[String] {
        match self {
            Self::Replace { columns, .. }
            | Self::Append { columns }
            | Self::Recreate { columns, .. }
            | Self::Merge { columns, .. } => columns,
        }
    }
}

/// The plan of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TablePlan {
    /// `source.table` as in the manifest.
    pub label: String,
    /// The manifest name of the source the rows come from.
    pub source: String,
    /// Target table.
    pub target: String,
    /// Write mode (for display; the executor follows [`Step::Write`]).
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
    /// Rows this run will move: past the target's cursor maximum for a bounded extraction,
    /// else the catalog estimate (or an exact count when the catalog has none).
    pub estimated_rows: Option<u64>,
    /// Rows in the target now.
    pub existing_rows: Option<u64>,
    /// BigQuery table operations this table uses (quota: 1,500 per table per day).
    pub table_operations: u32,
    /// What the write will bill (on-demand): 0 for a copy job; for a MERGE, a dry run's
    /// estimate. `None` when it could not be estimated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_cost: Option<WriteCost>,
    /// Lossy mappings, renames, dropped columns.
    pub warnings: Vec<Diagnostic>,
    /// Why the table cannot run.
    pub errors: Vec<Diagnostic>,
    /// The manifest's table spec (for display and the stale-plan check).
    pub spec: TableSpec,
    /// The introspected source table.
    pub source_table: Option<SourceTable>,
    /// Hash of the source table's shape, for the stale-plan check.
    pub source_fingerprint: Option<String>,
    /// Hash of the existing target's shape (`absent` when missing).
    pub target_fingerprint: String,
}

impl TablePlan {
    /// The extraction step, if the table runs.
    pub fn extract(&self) -> Option<&Extract> {
        self.steps.iter().find_map(|step| match step {
            Step::Stage(extract) => Some(extract.as_ref()),
            _ => None,
        })
    }

    /// The extraction step, mutable (the planner fills in the chunks it read the bounds of).
    pub fn extract_mut(&mut self) -> Option<&mut Extract> {
        self.steps.iter_mut().find_map(|step| match step {
            Step::Stage(extract) => Some(extract.as_mut()),
            _ => None,
        })
    }

    /// The write step, if the table runs.
    pub fn write_op(&self) -> Option<&WriteOp> {
        self.steps.iter().find_map(|step| match step {
            Step::Write { op } => Some(op),
            _ => None,
        })
    }

    /// The in-place metadata changes apply makes after the write (none if it makes none).
    pub fn metadata_changes(&self) -> &[MetadataChange] {
        self.steps
            .iter()
            .find_map(|step| match step {
                Step::PatchTable { changes } => Some(changes.as_slice()),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// datasync's version (a saved plan is applied only by the same version).
    pub datasync_version: String,
    /// `project.dataset`.
    pub destination: String,
    /// Whether apply creates the dataset first (it does not exist and `create_dataset` is on).
    pub create_dataset: bool,
    /// Tables, in manifest order (disabled tables are left out).
    pub tables: Vec<TablePlan>,
    /// What the writes of the tables that run bill, summed (on-demand).
    #[serde(default)]
    pub write_cost: TotalWriteCost,
    /// Hash of everything above.
    pub fingerprint: String,
    /// Tables of the dataset that datasync created and no table of the manifest writes any
    /// more, by name. Only reported: apply does nothing to them, so they are not part of the
    /// fingerprint (a saved plan stays applicable when such a table is dropped meanwhile).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphaned: Vec<Orphan>,
}

/// A table of the dataset that datasync created (it carries the label `managed-by: datasync`)
/// and that no table of the manifest maps to any more: the plan lists it with a hint; nothing
/// drops it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    /// Its name in the dataset.
    pub target: String,
    /// `datasync::plan::orphaned_target`, with the hint.
    pub warning: Diagnostic,
}

/// The orphaned targets among `dataset`'s tables (`(name, created by datasync)`, as the
/// dataset's listing and labels say): created by datasync, written by no table of the
/// manifest (`mapped`: every table's target, disabled ones and other shards' included), and not
/// one of datasync's working tables (`internal` prefixes: staging, backups, locks). Sorted by
/// name. `destination` is `project:dataset`, for the hint.
pub fn orphans(
    destination: &str,
    dataset: &[(String, bool)],
    mapped: &[&str],
    internal: &[&str],
) -> Vec<Orphan> {
    let mut found: Vec<Orphan> = dataset
        .iter()
        .filter(|(name, managed)| {
            *managed
                && !mapped.contains(&name.as_str())
                && !internal.iter().any(|prefix| name.starts_with(prefix))
        })
        .map(|(name, _)| Orphan {
            target: name.clone(),
            warning: Diagnostic::warning(
                crate::diagnostic::Code::PlanOrphanedTarget,
                format!(
                    "table `{name}` was created by datasync (label managed-by: datasync) but no table of the manifest writes it any more; it is kept as it is"
                ),
            )
            .with_help(format!(
                "datasync never drops a table: drop it yourself if it is no longer needed (`bq rm -t {destination}.{name}`), or add its source table back to the manifest"
            ))
            .at(crate::diagnostic::Location::Table(name.clone())),
        })
        .collect();
    found.sort_by(|a, b| a.target.cmp(&b.target));
    found
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

/// This build's datasync version.
pub fn datasync_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

impl Plan {
    /// Assembles a plan and fingerprints it.
    pub fn new(destination: String, create_dataset: bool, tables: Vec<TablePlan>) -> Self {
        let mut plan = Self {
            format_version: FORMAT_VERSION,
            datasync_version: datasync_version().to_string(),
            destination,
            create_dataset,
            tables,
            write_cost: TotalWriteCost::default(),
            fingerprint: String::new(),
            orphaned: Vec::new(),
        };
        plan.refingerprint();
        plan
    }

    /// The statements a table's write runs, for display (`MERGE`, `DELETE`, `UPDATE`).
    pub fn statements(op: &WriteOp) -> Vec<&'static str> {
        match op {
            WriteOp::Merge { deletes, .. } => match deletes {
                Deletes::Keep => vec!["MERGE"],
                Deletes::Hard => vec!["MERGE", "DELETE"],
                Deletes::Soft => vec!["MERGE", "UPDATE"],
            },
            _ => Vec::new(),
        }
    }

    /// Whether any table's schema changes (what `--detailed-exitcode` reports as 2).
    pub fn has_changes(&self) -> bool {
        self.create_dataset
            || self
                .tables
                .iter()
                .any(|table| table.action.changes_schema())
    }

    /// Whether any table cannot run.
    pub fn has_errors(&self) -> bool {
        self.tables.iter().any(|table| !table.action.runs())
    }

    /// The fingerprint of everything but the fingerprint itself.
    fn content_fingerprint(&self) -> String {
        fingerprint(&(
            &self.datasync_version,
            &self.destination,
            self.create_dataset,
            &self.tables,
        ))
    }

    /// Re-fingerprints (and sums the write costs again) after a change made by the planner.
    pub fn refingerprint(&mut self) {
        self.write_cost = TotalWriteCost::of(
            self.tables
                .iter()
                .filter(|table| table.action.runs())
                .map(|table| table.write_cost.as_ref()),
        );
        self.fingerprint = self.content_fingerprint();
    }

    /// Whether the stored fingerprint matches the content (the file was not edited).
    pub fn is_intact(&self) -> bool {
        self.fingerprint == self.content_fingerprint()
    }
}
