//! The apply executor against the in-memory warehouse, with a real SQLite source: step order,
//! staging, atomic writes, failures that leave targets alone, every failure reported.

use std::collections::HashMap;
use std::sync::Arc;

use datasync::manifest::{self, Env, Format, ManifestInput};
use datasync::plan::{Plan, TableAction};
use datasync::source::Source;
use datasync::sync::{DryRun, Executor, Session, TableStatus, planner};
use datasync::warehouse::{FakeWarehouse, Warehouse};
use serde_json::Value;

struct Setup {
    _dir: tempfile::TempDir,
    path: String,
    pool: sqlx::SqlitePool,
}

async fn sqlite(statements: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("source.db").display().to_string();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::raw_sql(statements).execute(&pool).await.unwrap();
    Setup {
        _dir: dir,
        path,
        pool,
    }
}

fn manifest(path: &str, tables: &str) -> datasync::manifest::Manifest {
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

/// The real planner, over the SQLite source and the fake warehouse.
async fn plan(
    manifest: &datasync::manifest::Manifest,
    source: &Source,
    warehouse: &Arc<FakeWarehouse>,
) -> Plan {
    let session = Session {
        sources: HashMap::from([("lite".to_string(), Arc::new(source.clone()))]),
        source_errors: HashMap::new(),
        warehouse: Arc::clone(warehouse) as Arc<dyn Warehouse>,
    };
    planner::plan(manifest, &session).await.unwrap()
}

async fn executor(
    manifest: &datasync::manifest::Manifest,
    warehouse: Arc<FakeWarehouse>,
    dry_run: DryRun,
) -> Executor {
    let source = Source::connect(&manifest.sources[0]).await.unwrap();
    Executor {
        sources: HashMap::from([("lite".to_string(), Arc::new(source))]),
        warehouse,
        parallelism: 2,
        dry_run,
        progress: Arc::new(|_: &str, _: u64| {}),
        phases: datasync::sync::no_phases(),
        run_id: "run1".into(),
        settings: Default::default(),
        jobs: Default::default(),
    }
}

fn ids(warehouse: &FakeWarehouse, table: &str) -> Vec<String> {
    let mut ids: Vec<String> = warehouse
        .rows(table)
        .unwrap_or_default()
        .iter()
        .map(|row| match &row["id"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .collect();
    ids.sort_by_key(|id| id.parse::<i64>().unwrap_or_default());
    ids
}

/// An `items` table whose `id` is STRING: incompatible with the source's INTEGER id.
fn string_id_items() -> datasync::schema::WarehouseTable {
    datasync::schema::WarehouseTable {
        name: "items".into(),
        fields: vec![datasync::schema::WarehouseField::new(
            "id",
            datasync::schema::BqType::String,
            datasync::schema::FieldMode::Nullable,
        )],
        partitioning: None,
        clustering: vec![],
    }
}

const SEED: &str = "
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL);
INSERT INTO items VALUES (1, 'a', 1.5), (2, 'b', 2.5), (3, 'c', NULL);
CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
INSERT INTO notes VALUES (1, 'x'), (2, 'y');
";

#[tokio::test]
async fn replace_loads_through_staging_then_creates_and_writes_atomically() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(plan.tables[0].action, TableAction::Create);

    let report = executor.run(&plan).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3"]);
    let log: Vec<String> = warehouse
        .log()
        .into_iter()
        .filter(|entry| !entry.starts_with("get_table") && !entry.starts_with("ensure_dataset"))
        .collect();
    assert_eq!(
        log,
        [
            "list_tables _datasync_staging_",
            "list_tables _datasync_backup_",
            "list_tables _datasync_lock_",
            "create_table _datasync_lock_items",
            // A killed run of this plan would have left a staging table to resume.
            "list_tables _datasync_staging_",
            "create_table _datasync_staging_items_run1",
            format!(
                "load _datasync_staging_items_run1 WRITE_APPEND {}",
                datasync::sync::chunk_job_id(&plan.fingerprint, "items", "run1", 0, 0)
            )
            .as_str(),
            "create_table items",
            "copy_table _datasync_staging_items_run1 into items WRITE_TRUNCATE",
            "drop_table _datasync_staging_items_run1",
            "drop_table _datasync_lock_items",
        ]
    );
    assert!(
        warehouse.rows("_datasync_staging_items").is_none(),
        "staging left behind"
    );
    assert_eq!(report.tables[0].rows_extracted, 3);
    assert_eq!(report.tables[0].rows_loaded, Some(3));
}

#[tokio::test]
async fn a_failed_load_keeps_the_target_and_every_failure_is_reported() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n      notes: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&first).await.succeeded());

    sqlx::raw_sql("DELETE FROM items WHERE id = 1; INSERT INTO items VALUES (4, 'd', 4.0); INSERT INTO notes VALUES (3, 'z');")
        .execute(&setup.pool)
        .await
        .unwrap();
    // Every load fails after a few bytes: both tables fail, both are reported.
    warehouse.fail_load_after_bytes(Some(10));
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    executor.run_id = "run2".into();
    let report = executor.run(&second).await;
    assert!(!report.succeeded());
    let statuses: Vec<TableStatus> = report.tables.iter().map(|table| table.status).collect();
    assert_eq!(
        statuses,
        [TableStatus::Failed, TableStatus::Failed],
        "{}",
        report.text()
    );
    assert!(
        report.text().contains("load into staging failed"),
        "{}",
        report.text()
    );
    assert_eq!(
        ids(&warehouse, "items"),
        ["1", "2", "3"],
        "the target changed"
    );
    assert_eq!(ids(&warehouse, "notes"), ["1", "2"]);
    assert!(
        warehouse.rows("_datasync_staging_items").is_none(),
        "staging left behind"
    );

    // The next run succeeds.
    warehouse.fail_load_after_bytes(None);
    executor.run_id = "run3".into();
    assert!(executor.run(&second).await.succeeded());
    assert_eq!(ids(&warehouse, "items"), ["2", "3", "4"]);
}

#[tokio::test]
async fn a_failed_final_write_keeps_the_target() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan1 = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&plan1).await.succeeded());
    sqlx::raw_sql("DELETE FROM items")
        .execute(&setup.pool)
        .await
        .unwrap();
    sqlx::raw_sql("INSERT INTO items VALUES (9, 'z', 0)")
        .execute(&setup.pool)
        .await
        .unwrap();
    warehouse.fail_next("copy_table", false);
    executor.run_id = "run2".into();
    let report = executor.run(&plan1).await;
    assert_eq!(report.tables[0].status, TableStatus::Failed);
    assert_eq!(
        report.tables[0].code.map(|code| code.as_str()),
        Some("datasync::apply::table_failed")
    );
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3"]);
}

#[tokio::test]
async fn merge_updates_and_inserts_on_the_key_and_empty_replace_truncates() {
    let setup = sqlite(SEED).await;
    let manifest_text =
        "      items:\n        mode: merge\n        primary_key: [id]\n      notes: {}\n";
    let manifest = manifest(&setup.path, manifest_text);
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&first).await.succeeded());

    sqlx::raw_sql("UPDATE items SET name = 'B' WHERE id = 2; INSERT INTO items VALUES (5, 'e', 5.0); DELETE FROM notes;")
        .execute(&setup.pool)
        .await
        .unwrap();
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    executor.run_id = "run2".into();
    let report = executor.run(&second).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3", "5"]);
    let rows = warehouse.rows("items").unwrap();
    let two = rows
        .iter()
        .find(|row| row["id"].to_string().trim_matches('"') == "2")
        .unwrap();
    assert_eq!(two["name"], "B");
    assert_eq!(
        ids(&warehouse, "notes"),
        Vec::<String>::new(),
        "an empty source empties a replace target"
    );
    // The empty source staged an empty table; the replace wrote it like any other (the
    // warehouse has no truncate any more: a copy job replaces the rows).
    assert_eq!(
        warehouse.count("copy_table _datasync_staging_notes_run1 into notes WRITE_TRUNCATE")
            + warehouse.count("copy_table _datasync_staging_notes_run2 into notes WRITE_TRUNCATE"),
        2
    );
    assert_eq!(warehouse.count("merge _datasync_staging_items_run"), 2);
}

#[tokio::test]
async fn dry_run_touches_nothing() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::Yes).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let before = warehouse.log().len();
    let report = executor.run(&plan).await;
    assert!(report.succeeded());
    assert_eq!(report.tables[0].rows_extracted, 3);
    assert!(report.tables[0].bytes > 0);
    assert_eq!(
        warehouse.log().len(),
        before,
        "a dry run called the warehouse"
    );
}

#[tokio::test]
async fn blocked_tables_are_skipped_and_reported() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    warehouse.insert_table(string_id_items(), vec![]);
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(plan.tables[0].action, TableAction::Blocked);
    let report = executor.run(&plan).await;
    assert_eq!(report.tables[0].status, TableStatus::Skipped);
    // The report carries the plan's code (JSON consumers match on it).
    assert_eq!(
        report.tables[0].code.map(|code| code.as_str()),
        Some("datasync::plan::incompatible")
    );
    assert!(
        report.text().contains("allow_recreate"),
        "{}",
        report.text()
    );
}

#[tokio::test]
async fn recreate_drops_the_old_table_only_after_the_new_rows_are_verified() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items:\n        allow_recreate: true\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let old_table = string_id_items();
    let old_row: serde_json::Map<String, Value> = serde_json::from_str(r#"{"id": "old"}"#).unwrap();
    warehouse.insert_table(old_table.clone(), vec![old_row.clone()]);
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(plan.tables[0].action, TableAction::Recreate);

    // The load fails: the old table, schema and rows, is untouched.
    warehouse.fail_load_after_bytes(Some(10));
    let report = executor.run(&plan).await;
    assert_eq!(
        report.tables[0].status,
        TableStatus::Failed,
        "{}",
        report.text()
    );
    let existing = warehouse.get_table("items").await.unwrap().unwrap();
    assert_eq!(existing.table, old_table);
    assert_eq!(warehouse.rows("items").unwrap(), vec![old_row]);

    // It succeeds: the table is rebuilt with the new schema and the source's rows.
    warehouse.fail_load_after_bytes(None);
    executor.run_id = "run2".into();
    let before = warehouse.log().len();
    let report = executor.run(&plan).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3"]);
    let rebuilt = warehouse.get_table("items").await.unwrap().unwrap();
    assert_eq!(
        rebuilt.table.fields[0].bq_type,
        datasync::schema::BqType::Int64
    );
    let log: Vec<String> = warehouse.log()[before..]
        .iter()
        .filter(|entry| !entry.starts_with("get_table"))
        .cloned()
        .collect();
    assert_eq!(
        log,
        [
            "list_tables _datasync_staging_",
            "list_tables _datasync_backup_",
            "list_tables _datasync_lock_",
            "create_table _datasync_lock_items",
            // A killed run of this plan would have left a staging table to resume.
            "list_tables _datasync_staging_",
            "create_table _datasync_staging_items_run2",
            format!(
                "load _datasync_staging_items_run2 WRITE_APPEND {}",
                datasync::sync::chunk_job_id(&plan.fingerprint, "items", "run2", 0, 0)
            )
            .as_str(),
            // One atomic copy swaps schema and rows: the target is never missing or empty.
            "copy_table _datasync_staging_items_run2 into items WRITE_TRUNCATE",
            "drop_table _datasync_staging_items_run2",
            "drop_table _datasync_lock_items",
        ]
    );
}

#[tokio::test]
async fn a_failed_first_load_creates_no_table() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(plan.tables[0].action, TableAction::Create);
    warehouse.fail_load_after_bytes(Some(10));
    let report = executor.run(&plan).await;
    assert_eq!(report.tables[0].status, TableStatus::Failed);
    assert!(
        warehouse.get_table("items").await.unwrap().is_none(),
        "an empty target was left behind"
    );
    assert!(
        warehouse
            .get_table("_datasync_staging_items")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_dry_run_honours_the_planned_bound_and_counts_what_a_real_run_moves() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(
        &setup.path,
        "      items:\n        mode: incremental\n        cursor: id\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    // A new target is bounded like any other; it holds no maximum, so it is read whole.
    assert!(matches!(
        first.tables[0].extract().unwrap().bound,
        datasync::plan::Bound::AfterTargetMax { .. }
    ));
    assert_eq!(first.tables[0].estimated_rows, Some(3));
    assert!(executor.run(&first).await.succeeded());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3"]);

    sqlx::raw_sql("INSERT INTO items VALUES (4, 'd', 4.0), (5, 'e', 5.0);")
        .execute(&setup.pool)
        .await
        .unwrap();
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let table = &second.tables[0];
    assert!(matches!(
        &table.extract().unwrap().bound,
        datasync::plan::Bound::AfterTargetMax { source_column, inclusive: false, .. } if source_column == "id"
    ));
    assert_eq!(
        table.estimated_rows,
        Some(2),
        "the plan counts rows past the maximum"
    );

    executor.dry_run = DryRun::Yes;
    executor.run_id = "dry".into();
    let dry = executor.run(&second).await;
    assert!(dry.succeeded(), "{}", dry.text());
    assert_eq!(
        dry.tables[0].rows_extracted, 2,
        "the dry run reads past the maximum too"
    );
    assert_eq!(
        ids(&warehouse, "items"),
        ["1", "2", "3"],
        "a dry run writes nothing"
    );

    executor.dry_run = DryRun::No;
    executor.run_id = "run2".into();
    let real = executor.run(&second).await;
    assert!(real.succeeded(), "{}", real.text());
    assert_eq!(real.tables[0].rows_extracted, 2);
    assert_eq!(real.tables[0].rows_loaded, Some(2));
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn a_missing_dataset_is_a_planned_step_and_apply_creates_it() {
    let setup = sqlite(SEED).await;
    let text = format!(
        "bigquery: {{project: fake-project, dataset: ds, create_dataset: true}}\nsources:\n  lite:\n    type: sqlite\n    database: {}\n    tables:\n      items: {{}}\n",
        setup.path
    );
    let manifest = manifest::load(&ManifestInput {
        name: None,
        text: Some((text, Format::Yaml)),
        env: Env::new(),
    })
    .unwrap()
    .manifest;
    let warehouse = Arc::new(FakeWarehouse::new());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(plan.create_dataset);
    assert!(plan.has_changes());
    let report = executor.run(&plan).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(warehouse.count("ensure_dataset create=true"), 1);
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3"]);
}

/// A load that fails to start is reported as the load's error, not as the extraction's
/// "the NDJSON sink was closed".
#[tokio::test]
async fn a_load_that_cannot_start_is_reported_as_the_load_error() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    warehouse.fail_next("load", false);
    let report = executor.run(&plan).await;
    let text = report.text();
    assert_eq!(report.tables[0].status, TableStatus::Failed, "{text}");
    assert!(
        text.contains("load into staging failed: injected failure in load"),
        "{text}"
    );
    assert!(!text.contains("sink"), "{text}");
}

/// The write's reply is lost after the fake carried it out: the report says the target's state
/// is unknown (never "it was not changed"), and the next plan reads the target as it is.
#[tokio::test]
async fn an_ambiguous_write_failure_says_the_state_is_unknown() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&first).await.succeeded());
    sqlx::raw_sql("INSERT INTO items VALUES (4, 'd', 4.0)")
        .execute(&setup.pool)
        .await
        .unwrap();
    warehouse.fail_next_ambiguous("copy_table");
    executor.run_id = "run2".into();
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let report = executor.run(&second).await;
    let text = report.text();
    assert_eq!(report.tables[0].status, TableStatus::Failed, "{text}");
    assert!(text.contains("the target's state is unknown"), "{text}");
    assert!(text.contains("datasync plan"), "{text}");
    assert!(!text.contains("not changed"), "{text}");
    // The write did happen; the next plan sees the rows as they are.
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3", "4"]);
    let third = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(third.tables[0].existing_rows, Some(4));
}

/// A target datasync can't read (a RECORD column) blocks that table with the reason; the plan
/// and the other tables go on.
#[tokio::test]
async fn an_unreadable_target_blocks_only_that_table() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n      notes: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    warehouse.insert_table(string_id_items(), Vec::new());
    warehouse.mark_unsupported(
        "items",
        "column r has type RECORD, which datasync does not support",
    );
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(plan.tables[0].action, TableAction::Blocked);
    assert!(
        plan.tables[0]
            .errors
            .iter()
            .any(|error| error.message.contains("RECORD")),
        "{:?}",
        plan.tables[0].errors
    );
    assert!(plan.tables[0].steps.is_empty());
    assert_eq!(plan.tables[1].action, TableAction::Create);
    let report = executor.run(&plan).await;
    assert_eq!(report.tables[0].status, TableStatus::Skipped);
    assert_eq!(ids(&warehouse, "notes"), ["1", "2"]);
}

/// `tables` patterns against a real SQLite catalog: `order_*` with its own mode, `*` for the
/// rest, a source `exclude`, an explicit entry that overrides its pattern; the plan lists exactly
/// the expanded tables (views included), each with its pattern's settings.
#[tokio::test]
async fn table_patterns_expand_against_the_source_catalog() {
    let setup = sqlite(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, at TEXT);
         CREATE TABLE order_items (id INTEGER PRIMARY KEY);
         CREATE TABLE order_tmp (id INTEGER);
         CREATE TABLE users (id INTEGER PRIMARY KEY);
         CREATE VIEW active_users AS SELECT * FROM users;",
    )
    .await;
    let text = format!(
        "bigquery: {{project: fake-project, dataset: ds}}\nsources:\n  lite:\n    type: sqlite\n    database: {}\n    exclude: [\"*_tmp\"]\n    tables:\n      \"order_*\":\n        mode: append\n      orders:\n        target: all_orders\n      \"*\": {{}}\n",
        setup.path
    );
    let mut manifest = manifest::load(&ManifestInput {
        name: None,
        text: Some((text, Format::Yaml)),
        env: Env::new(),
    })
    .unwrap_or_else(|failure| panic!("{:?}", failure.problems))
    .manifest;
    let source = Source::connect(&manifest.sources[0]).await.unwrap();
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let session = Session {
        sources: HashMap::from([("lite".to_string(), Arc::new(source.clone()))]),
        source_errors: HashMap::new(),
        warehouse: Arc::clone(&warehouse) as Arc<dyn Warehouse>,
    };
    datasync::sync::expand_patterns(&mut manifest, &session)
        .await
        .unwrap();
    let plan = planner::plan(&manifest, &session).await.unwrap();
    let tables: Vec<(String, String, String)> = plan
        .tables
        .iter()
        .map(|table| {
            (
                table.label.clone(),
                table.target.clone(),
                format!("{:?}", table.spec.mode),
            )
        })
        .collect();
    let expected = [
        ("lite.orders", "all_orders", "Replace"),
        ("lite.order_items", "order_items", "Append"),
        ("lite.active_users", "active_users", "Replace"),
        ("lite.users", "users", "Replace"),
    ];
    assert_eq!(
        tables,
        expected
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect::<Vec<_>>()
    );
    assert!(
        plan.tables.iter().all(|table| table.errors.is_empty()),
        "{plan:#?}"
    );
    setup.pool.close().await;
}

/// A partitioning change can't be copied over: the old table is copied aside, the target is
/// rebuilt from staging, the backup dropped once the new target is complete. If the rebuild
/// fails, the old table is copied back and the report says so. (SQLite has no date columns to
/// partition on, so the planned recreate is marked as one with a backup; the planner's choice is
/// tested in `plan::build`.)
#[tokio::test]
async fn a_partitioning_change_keeps_the_old_table_aside_until_the_new_one_is_complete() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items:\n        allow_recreate: true\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let old_row: serde_json::Map<String, Value> = serde_json::from_str(r#"{"id": "old"}"#).unwrap();
    warehouse.insert_table(string_id_items(), vec![old_row.clone()]);
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let mut plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(plan.tables[0].action, TableAction::Recreate);
    for step in &mut plan.tables[0].steps {
        if let datasync::plan::Step::Write {
            op: datasync::plan::WriteOp::Recreate { backup, .. },
        } = step
        {
            *backup = true;
        }
    }

    // The rebuild (the second copy, after the backup) fails: the old table comes back.
    warehouse.fail_after("copy_table", 1);
    let report = executor.run(&plan).await;
    let text = report.text();
    assert_eq!(report.tables[0].status, TableStatus::Failed, "{text}");
    assert!(text.contains("restored from its backup"), "{text}");
    assert_eq!(warehouse.rows("items").unwrap(), vec![old_row.clone()]);
    assert!(warehouse.rows("_datasync_backup_items_run1").is_none());

    // It succeeds: the new table holds the source's rows; no backup left.
    executor.run_id = "run3".into();
    let before = warehouse.log().len();
    let report = executor.run(&plan).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3"]);
    let writes: Vec<String> = warehouse.log()[before..]
        .iter()
        .filter(|entry| entry.starts_with("copy_table") || entry.starts_with("drop_table"))
        .cloned()
        .collect();
    assert_eq!(
        writes,
        [
            "copy_table items into _datasync_backup_items_run3 WRITE_TRUNCATE",
            "drop_table items",
            "copy_table _datasync_staging_items_run3 into items WRITE_TRUNCATE",
            "drop_table _datasync_backup_items_run3",
            "drop_table _datasync_staging_items_run3",
            "drop_table _datasync_lock_items",
        ]
    );
    assert!(
        warehouse
            .list_tables("_datasync_")
            .await
            .unwrap()
            .is_empty(),
        "no staging, backup or lock table is left"
    );
}

/// A second run finds the target's lease held: with no lock timeout it fails the table at once,
/// naming the holder, and changes nothing; the holder's lease, once expired, is taken over.
#[tokio::test]
async fn a_held_lease_fails_the_second_run_naming_the_holder_until_it_expires() {
    use datasync::sync::lease::{self, LeaseSettings};
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let short = LeaseSettings {
        duration: std::time::Duration::from_millis(600),
        wait: std::time::Duration::ZERO,
    };
    // A run that dies holding the lease (never released, never renewed).
    let held = lease::acquire(
        Arc::clone(&warehouse) as Arc<dyn Warehouse>,
        "items",
        "dead_run",
        short,
    )
    .await
    .unwrap();
    drop(held);

    let report = executor.run(&plan).await;
    let text = report.text();
    assert_eq!(report.tables[0].status, TableStatus::Failed, "{text}");
    assert!(text.contains("locked by run dead_run"), "{text}");
    assert!(text.contains("--lock-timeout"), "{text}");
    assert!(warehouse.rows("items").is_none(), "nothing was written");

    // Waiting longer than the dead holder's lease: taken over, the run succeeds.
    executor.run_id = "run2".into();
    executor.settings.lease.wait = std::time::Duration::from_secs(5);
    let report = executor.run(&plan).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3"]);
    assert!(warehouse.rows("_datasync_lock_items").is_none(), "released");
}

/// Two overlapping runs of the same target: the second waits for the first's lease and then
/// runs; neither loses nor duplicates a row (append mode: exactly two copies of the source).
#[tokio::test]
async fn overlapping_runs_take_turns_on_a_target() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {mode: append}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut first = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    first.settings.lease.wait = std::time::Duration::from_secs(10);
    let mut second = first.clone();
    second.run_id = "run2".into();
    let plan = plan(&manifest, &first.sources["lite"], &warehouse).await;
    let (a, b) = tokio::join!(first.run(&plan), second.run(&plan));
    assert!(a.succeeded(), "{}", a.text());
    assert!(b.succeeded(), "{}", b.text());
    assert_eq!(ids(&warehouse, "items"), ["1", "1", "2", "2", "3", "3"]);
    // The second run tried the lock at least once more while the first held it.
    assert!(warehouse.count("create_table _datasync_lock_items") >= 3);
    assert!(
        warehouse
            .list_tables("_datasync_")
            .await
            .unwrap()
            .is_empty()
    );
}

/// A dead run's staging and backup tables are dropped by the next run once past their expiry;
/// a live lease's lock table and a fresh staging table are left alone.
#[tokio::test]
async fn the_next_run_drops_dead_runs_leftovers_past_their_expiry() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let leftover = |name: String| {
        let mut table = string_id_items();
        table.name = name;
        warehouse.insert_table(table, vec![]);
    };
    let old = format!("{}_000001", now - 48 * 3600);
    let fresh = format!("{}_000002", now - 60);
    leftover(format!("_datasync_staging_other_{old}"));
    leftover(format!("_datasync_backup_other_{old}"));
    leftover(format!("_datasync_staging_other_{fresh}"));
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&plan).await.succeeded());
    assert_eq!(
        warehouse.list_tables("_datasync_").await.unwrap(),
        [format!("_datasync_staging_other_{fresh}")]
    );
}

/// A recreate with a backup whose rebuild and restore both fail: the report names the backup
/// holding the old rows and never claims the target was not changed.
#[tokio::test]
async fn a_failed_restore_names_the_backup_holding_the_old_rows() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items:\n        allow_recreate: true\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let old_row: serde_json::Map<String, Value> = serde_json::from_str(r#"{"id": "old"}"#).unwrap();
    warehouse.insert_table(string_id_items(), vec![old_row.clone()]);
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let mut plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    for step in &mut plan.tables[0].steps {
        if let datasync::plan::Step::Write {
            op: datasync::plan::WriteOp::Recreate { backup, .. },
        } = step
        {
            *backup = true;
        }
    }
    // The backup copy passes, the rebuild fails, then the restore fails.
    warehouse.fail_after("copy_table", 1);
    warehouse.fail_after("copy_table", 0);
    let report = executor.run(&plan).await;
    let text = report.text();
    assert_eq!(report.tables[0].status, TableStatus::Failed, "{text}");
    assert!(text.contains("_datasync_backup_items_run1"), "{text}");
    assert!(text.contains("state is unknown"), "{text}");
    assert!(!text.contains("not changed"), "{text}");
    assert_eq!(
        warehouse.rows("_datasync_backup_items_run1").unwrap(),
        vec![old_row]
    );
}

/// 100 items; `bad` ids get a name that is not UTF-8.
fn hundred_items(bad: &[i64]) -> String {
    let mut seed = String::from(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
         INSERT INTO items SELECT i, 'item ' || i FROM n;",
    );
    for id in bad {
        seed.push_str(&format!(
            "UPDATE items SET name = CAST(x'ff' AS TEXT) WHERE id = {id};"
        ));
    }
    seed
}

/// Splits the plan's first table into ranges of `id` at `bounds` (as the planner does for a
/// large MySQL/PostgreSQL table; SQLite tables are never split by the planner), read by
/// `readers` readers.
fn split(plan: &mut Plan, bounds: &[i64], readers: u32) {
    use datasync::plan::chunks::{Chunking, Consistency, key_ranges_from_bounds};
    let extract = plan.tables[0].extract_mut().unwrap();
    extract.chunking = Chunking {
        key: Some("id".into()),
        ranges: key_ranges_from_bounds(bounds),
        readers,
        consistency: Consistency::PerChunk,
        estimated_bytes: None,
    };
    plan.refingerprint();
}

fn one_to(last: i64, except: &[i64]) -> Vec<String> {
    (1..=last)
        .filter(|id| !except.contains(id))
        .map(|id| id.to_string())
        .collect()
}

#[tokio::test]
async fn a_split_table_loads_each_chunk_with_its_own_job_into_one_staging_table() {
    let setup = sqlite(&hundred_items(&[])).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let progress = Arc::clone(&seen);
    executor.progress = Arc::new(move |_: &str, rows: u64| progress.lock().unwrap().push(rows));
    let mut plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    split(&mut plan, &[26, 51, 76], 2);

    let report = executor.run(&plan).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(ids(&warehouse, "items"), one_to(100, &[]));
    let table = &report.tables[0];
    assert_eq!(
        (table.chunks, table.rows_extracted, table.rows_loaded),
        (4, 100, Some(100))
    );
    for index in 0..4 {
        let job = datasync::sync::chunk_job_id(&plan.fingerprint, "items", "run1", index, 0);
        assert_eq!(
            warehouse.count(&format!(
                "load _datasync_staging_items_run1 WRITE_APPEND {job}"
            )),
            1,
            "{:?}",
            warehouse.log()
        );
    }
    assert_eq!(warehouse.count("load "), 4);
    assert_eq!(warehouse.count("create_table _datasync_staging"), 1);
    // The target still takes one atomic write.
    assert_eq!(warehouse.count("copy_table"), 1);
    assert!(
        warehouse
            .list_tables("_datasync_")
            .await
            .unwrap()
            .is_empty()
    );
    // Progress is the table's, over every chunk, in order.
    let progress = seen.lock().unwrap().clone();
    assert_eq!(progress.last(), Some(&100), "{progress:?}");
    assert!(
        progress.windows(2).all(|pair| pair[0] <= pair[1]),
        "{progress:?}"
    );

    // A dry run reads the same chunks: the same counts, nothing loaded.
    let dry = self::executor(&manifest, Arc::clone(&warehouse), DryRun::Yes).await;
    let report = dry.run(&plan).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(
        (report.tables[0].chunks, report.tables[0].rows_extracted),
        (4, 100)
    );
    assert_eq!(warehouse.count("load "), 4);
}

#[tokio::test]
async fn the_bad_value_budget_is_the_tables_over_all_its_chunks() {
    // One bad value in each of three chunks: each chunk alone is within a budget of 2.
    let setup = sqlite(&hundred_items(&[10, 40, 70])).await;
    let tables = |max: u32| {
        format!("      items: {{max_parse_failures: {max}, types: {{invalid_utf8: error}}}}\n")
    };
    let manifest_2 = manifest(&setup.path, &tables(2));
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest_2, Arc::clone(&warehouse), DryRun::No).await;
    let mut plan_2 = plan(&manifest_2, &executor.sources["lite"], &warehouse).await;
    split(&mut plan_2, &[26, 51, 76], 2);
    let report = executor.run(&plan_2).await;
    let text = report.text();
    assert_eq!(report.tables[0].status, TableStatus::Failed, "{text}");
    assert!(
        text.contains("3 bad values, more than max_parse_failures (2)"),
        "{text}"
    );
    assert!(
        warehouse.rows("items").is_none(),
        "the target was not written"
    );

    // With 3 allowed the table loads; every chunk's rejects are in `_datasync_rejects` (a
    // failed run's chunks may have recorded theirs too: its rows carry its run id).
    let manifest_3 = manifest(&setup.path, &tables(3));
    let mut plan_3 = plan(&manifest_3, &executor.sources["lite"], &warehouse).await;
    split(&mut plan_3, &[26, 51, 76], 2);
    let mut executor = executor;
    executor.run_id = "run2".into();
    let report = executor.run(&plan_3).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(
        (report.tables[0].bad_values, report.tables[0].rows_left_out),
        (3, 3)
    );
    assert_eq!(ids(&warehouse, "items"), one_to(100, &[10, 40, 70]));
    let mut rejected: Vec<String> = warehouse
        .rows("_datasync_rejects")
        .unwrap()
        .iter()
        .filter(|row| row["run_id"] == "run2")
        .map(|row| row["key"].as_str().unwrap().to_string())
        .collect();
    rejected.sort();
    assert_eq!(rejected, ["(id=10)", "(id=40)", "(id=70)"]);
}

/// Starts `executor` on `plan`, waits until a load whose job id contains `hang_at` starts (the
/// fake holds it forever), then drops the run: a killed process, leaving its staging table.
async fn kill_at(executor: &Executor, plan: &Plan, warehouse: &FakeWarehouse, hang_at: &str) {
    warehouse.hang_loads(Some(hang_at));
    let run = executor.run(plan);
    tokio::pin!(run);
    let started = std::time::Instant::now();
    while !warehouse
        .log()
        .iter()
        .any(|entry| entry.starts_with("load ") && entry.contains(hang_at))
    {
        tokio::select! {
            report = &mut run => panic!("the run ended: {}", report.text()),
            () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
        }
        assert!(started.elapsed().as_secs() < 20, "{:?}", warehouse.log());
    }
    warehouse.hang_loads(None);
}

fn run_ids() -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (format!("{now}_000001"), format!("{now}_000002"))
}

#[tokio::test]
async fn a_rerun_of_a_killed_apply_skips_the_chunks_it_loaded() {
    use datasync::warehouse::JobState;
    let setup = sqlite(&hundred_items(&[10])).await;
    let manifest = manifest(
        &setup.path,
        "      items: {max_parse_failures: 5, types: {invalid_utf8: error}}\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let (killed, rerun) = run_ids();
    let mut first = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    first.run_id = killed.clone();
    first.settings.lease.duration = std::time::Duration::from_millis(400);
    let mut plan = plan(&manifest, &first.sources["lite"], &warehouse).await;
    split(&mut plan, &[26, 51, 76], 1);
    let job = |index, attempt| {
        datasync::sync::chunk_job_id(&plan.fingerprint, "items", &killed, index, attempt)
    };
    // Killed while chunk 3 loads: chunks 1 and 2 (with chunk 1's rejected row) are loaded.
    kill_at(&first, &plan, &warehouse, &job(2, 0)).await;
    let staging = format!("_datasync_staging_items_{killed}");
    assert_eq!(warehouse.rows(&staging).unwrap().len(), 49);
    assert_eq!(warehouse.rows("_datasync_rejects").unwrap().len(), 1);
    // What BigQuery may hold then: chunk 2's job still running, chunk 3's job failed.
    warehouse.set_job_state(&job(1, 0), JobState::Running);
    warehouse.set_job_state(
        &job(2, 0),
        JobState::Failed {
            message: "killed".into(),
        },
    );
    let finisher = Arc::clone(&warehouse);
    let running = job(1, 0);
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        finisher.set_job_state(&running, JobState::Done { output_rows: 25 });
    });

    // The rerun (its lease waits out the killed run's) skips chunks 1 and 2.
    let mut second = first.clone();
    second.run_id = rerun.clone();
    second.settings.lease.wait = std::time::Duration::from_secs(10);
    let report = second.run(&plan).await;
    let text = report.text();
    assert!(report.succeeded(), "{text}");
    assert!(
        text.contains("lite.items: resumed: skipped 2 of 4 chunks already loaded"),
        "{text}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["tables"][0]["chunks_skipped"], 2);
    assert_eq!(json["tables"][0]["chunks"], 4);
    // Exactly the source's rows once; the rejected row recorded once.
    assert_eq!(ids(&warehouse, "items"), one_to(100, &[10]));
    assert_eq!(warehouse.rows("_datasync_rejects").unwrap().len(), 1);
    // Chunks 1 and 2 loaded once; chunk 3 again under its next attempt's id (the failed
    // job's can't load again), chunk 4 for the first time; into the killed run's staging.
    for (index, attempt, loads) in [(0, 0, 1), (1, 0, 1), (2, 1, 1), (3, 0, 1)] {
        let entry = format!("load {staging} WRITE_APPEND {}", job(index, attempt));
        assert_eq!(warehouse.count(&entry), loads, "{entry}");
    }
    assert_eq!(warehouse.count("create_table _datasync_staging"), 1);
    assert_eq!(warehouse.count("copy_table"), 1);
    for leftover in ["_datasync_staging_", "_datasync_lock_"] {
        assert!(warehouse.list_tables(leftover).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_killed_run_whose_jobs_bigquery_does_not_know_starts_over_without_duplicates() {
    // What the emulator does: client job ids are not kept, so no chunk can be proven loaded.
    let setup = sqlite(&hundred_items(&[])).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let (killed, rerun) = run_ids();
    let mut first = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    first.run_id = killed.clone();
    first.settings.lease.duration = std::time::Duration::from_millis(300);
    let mut plan = plan(&manifest, &first.sources["lite"], &warehouse).await;
    split(&mut plan, &[26, 51, 76], 1);
    let job = |index| datasync::sync::chunk_job_id(&plan.fingerprint, "items", &killed, index, 0);
    kill_at(&first, &plan, &warehouse, &job(2)).await;
    warehouse.forget_job(&job(0));
    warehouse.forget_job(&job(1));

    let mut second = first.clone();
    second.run_id = rerun.clone();
    second.settings.lease.wait = std::time::Duration::from_secs(10);
    let report = second.run(&plan).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(report.tables[0].chunks_skipped, 0);
    assert!(!report.text().contains("resumed"), "{}", report.text());
    assert_eq!(ids(&warehouse, "items"), one_to(100, &[]));
    // The killed run's staging table (its rows unaccounted for) is dropped, not reused.
    assert_eq!(
        warehouse.count(&format!("drop_table _datasync_staging_items_{killed}")),
        1
    );
    assert_eq!(
        warehouse.count(&format!("load _datasync_staging_items_{rerun}")),
        4
    );
    assert!(
        warehouse
            .list_tables("_datasync_")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_lease_held_by_a_dead_process_of_this_host_is_taken_over_at_once() {
    use datasync::sync::lease::{LeaseRecord, holder_is_dead, lock_table};
    let Some(host) = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
    else {
        return; // no /proc: only the lease's expiry tells
    };
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    // A killed holder: this host, a pid no process has, its lease valid for another hour.
    let record = LeaseRecord {
        holder: "killed_run".into(),
        expires_at_ms: chrono::Utc::now().timestamp_millis() + 3_600_000,
        host: Some(host),
        pid: Some(4_194_304 + 17),
        started: Some(1),
    };
    assert!(holder_is_dead(&record));
    let mut lock = string_id_items();
    lock.name = lock_table("items");
    warehouse
        .create_table_with(
            &lock,
            &datasync::warehouse::TableMeta {
                expires_at_ms: Some(record.expires_at_ms),
                description: serde_json::to_string(&record).ok(),
            },
        )
        .await
        .unwrap();
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    assert_eq!(executor.settings.lease.wait, std::time::Duration::ZERO);
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let report = executor.run(&plan).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3"]);
}
