//! The real planner over many tables (a SQLite source, the in-memory warehouse): BigQuery is
//! asked per dataset, not per table; only existing targets are read, a bounded number at a
//! time; targets datasync made that left the manifest are reported as orphaned, never touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datasync::manifest::{self, Env, Format, Manifest, ManifestInput};
use datasync::plan::{Plan, TableAction};
use datasync::schema::{BqType, FieldMode, WarehouseField, WarehouseTable};
use datasync::source::Source;
use datasync::sync::{Session, expand_patterns, planner};
use datasync::warehouse::{FakeWarehouse, GET_TABLES_CONCURRENCY, Warehouse};

struct Setup {
    _dir: tempfile::TempDir,
    path: String,
}

/// A SQLite file with tables `t0` … `t{count-1}`.
async fn sqlite(count: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.db").display().to_string();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let mut sql = String::new();
    for index in 0..count {
        sql.push_str(&format!(
            "CREATE TABLE t{index} (id INTEGER PRIMARY KEY, name TEXT, code TEXT UNIQUE);\n\
             INSERT INTO t{index} (id, name) VALUES (1, 'a'), (2, 'b');\n"
        ));
    }
    sqlx::raw_sql(&sql).execute(&pool).await.unwrap();
    pool.close().await;
    Setup { _dir: dir, path }
}

fn manifest(path: &str, tables: &str) -> Manifest {
    let text = format!(
        "bigquery: {{project: fake-project, dataset: ds}}\nsources:\n  lite:\n    type: sqlite\n    database: {path}\n    tables:\n{tables}"
    );
    manifest::load(&ManifestInput {
        name: None,
        text: Some((text, Format::Yaml)),
        env: Env::new(),
    })
    .unwrap_or_else(|failure| panic!("{:?}", failure.problems))
    .manifest
}

fn explicit(count: usize) -> String {
    (0..count)
        .map(|index| format!("      t{index}: {{}}\n"))
        .collect()
}

async fn session(manifest: &Manifest, warehouse: &Arc<FakeWarehouse>) -> Session {
    let source = Source::connect(&manifest.sources[0]).await.unwrap();
    Session {
        sources: HashMap::from([("lite".to_string(), Arc::new(source))]),
        source_errors: HashMap::new(),
        warehouse: Arc::clone(warehouse) as Arc<dyn Warehouse>,
    }
}

/// A target as datasync creates it (`create_table` labels it `managed-by: datasync`).
async fn create_target(warehouse: &FakeWarehouse, name: &str) {
    warehouse
        .create_table(&WarehouseTable {
            description: None,
            name: name.into(),
            fields: vec![
                WarehouseField::new("id", BqType::Int64, FieldMode::Required),
                WarehouseField::new("name", BqType::String, FieldMode::Nullable),
                WarehouseField::new("code", BqType::String, FieldMode::Nullable),
            ],
            partitioning: None,
            clustering: Vec::new(),
        })
        .await
        .unwrap();
}

/// The warehouse calls of a plan, by operation.
fn calls(warehouse: &FakeWarehouse) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for entry in warehouse.log() {
        let operation = entry.split(' ').next().unwrap_or_default().to_string();
        *counts.entry(operation).or_default() += 1;
    }
    counts
}

async fn plan_with(manifest: &Manifest, warehouse: &Arc<FakeWarehouse>) -> Plan {
    planner::plan(manifest, &session(manifest, warehouse).await)
        .await
        .unwrap()
}

#[tokio::test]
async fn warehouse_calls_grow_with_datasets_and_existing_targets_not_with_tables() {
    let setup = sqlite(150).await;
    let mut seen = Vec::new();
    for count in [30, 150] {
        let manifest = manifest(&setup.path, &explicit(count));
        let warehouse = Arc::new(FakeWarehouse::with_dataset());
        for name in ["t1", "t2", "t3"] {
            create_target(&warehouse, name).await;
        }
        let before = warehouse.log().len();
        let plan = plan_with(&manifest, &warehouse).await;
        assert_eq!(plan.tables.len(), count);
        let created = plan
            .tables
            .iter()
            .filter(|table| table.action == TableAction::Create)
            .count();
        assert_eq!(created, count - 3);
        assert_eq!(
            plan.tables[1].action,
            TableAction::Sync,
            "{:?}",
            plan.tables[1]
        );
        let log = warehouse.log()[before..].to_vec();
        seen.push(log.len());
        // One dataset check, one listing, and tables.get only for the 3 targets that exist.
        let mut expected = vec!["ensure_dataset create=false", "list_dataset"];
        expected.extend(["get_table t1", "get_table t2", "get_table t3"]);
        assert_eq!(log, expected);
        // SQLite has no row estimate: every table was counted, exactly.
        assert!(
            plan.tables
                .iter()
                .all(|table| table.estimated_rows == Some(2))
        );
        // The unique key is introspected in the same pass.
        let source = plan.tables[0].source_table.as_ref().unwrap();
        assert_eq!(source.unique_keys, [vec!["code".to_string()]]);
    }
    assert_eq!(
        seen[0], seen[1],
        "150 tables made more warehouse calls than 30"
    );
}

#[tokio::test]
async fn a_pattern_over_many_tables_goes_through_the_same_batch() {
    let setup = sqlite(120).await;
    let mut manifest = manifest(&setup.path, "      \"*\": {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let session = session(&manifest, &warehouse).await;
    expand_patterns(&mut manifest, &session).await.unwrap();
    assert_eq!(manifest.tables.len(), 120);
    let plan = planner::plan(&manifest, &session).await.unwrap();
    assert_eq!(plan.tables.len(), 120);
    assert!(
        plan.tables
            .iter()
            .all(|table| table.action == TableAction::Create),
        "{:?}",
        plan.tables.iter().map(|t| t.action).collect::<Vec<_>>()
    );
    let counts = calls(&warehouse);
    assert_eq!(counts.get("list_dataset"), Some(&1));
    assert_eq!(counts.get("get_table"), None, "{counts:?}");
}

#[tokio::test]
async fn existing_targets_are_read_a_bounded_number_at_a_time() {
    let setup = sqlite(60).await;
    let manifest = manifest(&setup.path, &explicit(60));
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    for index in 0..60 {
        create_target(&warehouse, &format!("t{index}")).await;
    }
    warehouse.slow_get_table(Duration::from_millis(10));
    let plan = plan_with(&manifest, &warehouse).await;
    assert!(
        plan.tables
            .iter()
            .all(|table| table.action == TableAction::Sync)
    );
    assert_eq!(calls(&warehouse).get("get_table"), Some(&60));
    let peak = warehouse.peak_concurrent_get_tables();
    assert!(
        peak > 1 && peak <= GET_TABLES_CONCURRENCY,
        "{peak} tables.get in flight at once"
    );
}

#[tokio::test]
async fn targets_datasync_made_that_left_the_manifest_are_orphaned_and_kept() {
    let setup = sqlite(3).await;
    // t2 is still in the manifest, disabled: its target is not an orphan.
    let manifest = manifest(&setup.path, "      t0: {}\n      t2: {enabled: false}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    for name in ["t0", "t1", "t2", "old_orders"] {
        create_target(&warehouse, name).await;
    }
    // Not datasync's: never reported.
    warehouse.insert_table(
        WarehouseTable {
            description: None,
            name: "hand_made".into(),
            fields: vec![WarehouseField::new("x", BqType::Int64, FieldMode::Nullable)],
            partitioning: None,
            clustering: Vec::new(),
        },
        Vec::new(),
    );
    // datasync's working tables: never reported either.
    create_target(&warehouse, "_datasync_staging_t1_1700000000_000001").await;
    let before = warehouse.log().len();
    let plan = plan_with(&manifest, &warehouse).await;
    let orphaned: Vec<&str> = plan
        .orphaned
        .iter()
        .map(|orphan| orphan.target.as_str())
        .collect();
    assert_eq!(orphaned, ["old_orders", "t1"]);
    assert_eq!(plan.tables.len(), 1);
    let text = datasync::plan::render::text(&plan);
    assert!(text.contains("? orphaned targets"), "{text}");
    assert!(text.contains("    old_orders\n    t1\n"), "{text}");
    assert!(text.contains("2 orphaned target(s) kept"), "{text}");
    let markdown = datasync::plan::render::markdown(&plan);
    assert!(markdown.contains("- `old_orders`\n- `t1`\n"), "{markdown}");
    // Reported only: a plan with orphans changes nothing, and nothing reads them.
    assert_eq!(
        warehouse.log()[before..],
        [
            "ensure_dataset create=false",
            "list_dataset",
            "get_table t0"
        ]
    );
    assert!(warehouse.rows("old_orders").is_some());
}
