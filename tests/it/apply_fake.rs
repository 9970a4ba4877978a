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

pub(crate) struct Setup {
    _dir: tempfile::TempDir,
    pub(crate) path: String,
    pub(crate) pool: sqlx::SqlitePool,
}

pub(crate) async fn sqlite(statements: &str) -> Setup {
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

pub(crate) fn manifest(path: &str, tables: &str) -> datasync::manifest::Manifest {
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
pub(crate) async fn plan(
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

pub(crate) async fn executor(
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
        ledger: Default::default(),
        jobs: Default::default(),
    }
}

/// datasync's tables in the dataset but the run ledger (which is permanent): staging, backup
/// and lock tables.
pub(crate) async fn leftovers(warehouse: &FakeWarehouse) -> Vec<String> {
    let mut names = warehouse.list_tables("_datasync_").await.unwrap();
    names.retain(|name| name != datasync::sync::ledger::RUNS_TABLE);
    names
}

pub(crate) fn ids(warehouse: &FakeWarehouse, table: &str) -> Vec<String> {
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
        description: None,
    }
}

pub(crate) const SEED: &str = "
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
        .filter(|entry| {
            !entry.starts_with("get_table")
                && !entry.starts_with("ensure_dataset")
                && entry != "list_dataset"
        })
        .collect();
    assert_eq!(
        log,
        [
            "list_tables _datasync_staging_",
            "list_tables _datasync_keys_",
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
            // The run ledger: created on first use, one load for the whole run.
            "create_table _datasync_runs",
            "load _datasync_runs WRITE_APPEND datasync-ledger_run1",
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
            "list_tables _datasync_keys_",
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
            // No bounded table: the ledger was not read, so its creation answers 409.
            "create_table _datasync_runs",
            "load _datasync_runs WRITE_APPEND datasync-ledger_run2",
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
        leftovers(&warehouse).await.is_empty(),
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
    assert!(leftovers(&warehouse).await.is_empty());
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
    leftover(format!("_datasync_keys_other_{old}"));
    leftover(format!("_datasync_staging_other_{fresh}"));
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&plan).await.succeeded());
    assert_eq!(
        leftovers(&warehouse).await,
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

fn rows_by_id(warehouse: &FakeWarehouse, table: &str) -> Vec<serde_json::Map<String, Value>> {
    let mut rows = warehouse.rows(table).unwrap_or_default();
    rows.sort_by_key(|row| {
        row["id"]
            .to_string()
            .trim_matches('"')
            .parse::<i64>()
            .unwrap_or_default()
    });
    rows
}

/// `deletes: hard`: the key set is staged with the rows, the MERGE and the delete run as one
/// write, a source row deleted since is gone from the target, and the keys table is dropped.
#[tokio::test]
async fn a_hard_delete_merge_removes_rows_whose_key_left_the_source() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(
        &setup.path,
        "      items:\n        mode: merge\n        primary_key: [id]\n        cursor: id\n        deletes: hard\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&first).await.succeeded());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3"]);

    sqlx::raw_sql("DELETE FROM items WHERE id = 2; INSERT INTO items VALUES (4, 'd', 4.0);")
        .execute(&setup.pool)
        .await
        .unwrap();
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    executor.run_id = "run2".into();
    let before = warehouse.log().len();
    let report = executor.run(&second).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(ids(&warehouse, "items"), ["1", "3", "4"]);
    assert_eq!(report.tables[0].rows_deleted, Some(1));
    // The bounded extraction read ids >= 3 only; the key set read every key, unbounded.
    assert_eq!(report.tables[0].rows_extracted, 2);
    assert!(
        report
            .text()
            .contains("lite.items: 1 row(s) whose key left the source were deleted"),
        "{}",
        report.text()
    );
    let log: Vec<String> = warehouse.log()[before..]
        .iter()
        .filter(|entry| !entry.starts_with("get_table") && !entry.starts_with("max_value"))
        .filter(|entry| !entry.starts_with("list_tables"))
        // The run ledger's read and write are the ledger tests' subject.
        .filter(|entry| !entry.contains(datasync::sync::ledger::RUNS_TABLE))
        .cloned()
        .collect();
    assert_eq!(
        log,
        [
            "create_table _datasync_lock_items",
            "create_table _datasync_staging_items_run2",
            format!(
                "load _datasync_staging_items_run2 WRITE_APPEND {}",
                datasync::sync::chunk_job_id(&second.fingerprint, "items", "run2", 0, 0)
            )
            .as_str(),
            "count_duplicate_keys _datasync_staging_items_run2",
            "create_table _datasync_keys_items_run2",
            "load _datasync_keys_items_run2 WRITE_APPEND datasync_run2_items_keys",
            "merge _datasync_staging_items_run2 into items",
            "drop_table _datasync_staging_items_run2",
            "drop_table _datasync_keys_items_run2",
            "drop_table _datasync_lock_items",
        ]
    );
}

/// `deletes: soft` on a composite key: the target gets `_datasync_deleted_at`; a deleted key
/// is marked (once), one that comes back is un-marked; other rows keep NULL.
#[tokio::test]
async fn a_soft_delete_merge_marks_gone_composite_keys_and_unmarks_returning_ones() {
    let setup = sqlite(
        "CREATE TABLE stock (shop TEXT NOT NULL, sku INTEGER NOT NULL, qty INTEGER, PRIMARY KEY (shop, sku));
         INSERT INTO stock VALUES ('a', 1, 10), ('a', 2, 20), ('b', 1, 30);",
    )
    .await;
    let manifest = manifest(
        &setup.path,
        "      stock:\n        mode: merge\n        deletes: soft\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let deleted_at = |warehouse: &FakeWarehouse| {
        let mut marks: Vec<(String, bool)> = warehouse
            .rows("stock")
            .unwrap()
            .iter()
            .map(|row| {
                (
                    format!(
                        "{}{}",
                        row["shop"].as_str().unwrap(),
                        row["sku"].to_string().trim_matches('"')
                    ),
                    row.get("_datasync_deleted_at")
                        .is_some_and(|at| !at.is_null()),
                )
            })
            .collect();
        marks.sort();
        marks
    };
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(
        first.tables[0]
            .target_schema
            .as_ref()
            .unwrap()
            .field("_datasync_deleted_at")
            .is_some()
    );
    assert!(executor.run(&first).await.succeeded());

    sqlx::raw_sql("DELETE FROM stock WHERE shop = 'a' AND sku = 2;")
        .execute(&setup.pool)
        .await
        .unwrap();
    executor.run_id = "run2".into();
    let report = executor
        .run(&plan(&manifest, &executor.sources["lite"], &warehouse).await)
        .await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(report.tables[0].rows_deleted, Some(1));
    assert!(
        report
            .text()
            .contains("1 row(s) whose key left the source were soft-deleted"),
        "{}",
        report.text()
    );
    assert_eq!(
        deleted_at(&warehouse),
        [
            ("a1".into(), false),
            ("a2".into(), true),
            ("b1".into(), false)
        ]
    );
    // Still gone: already marked, not marked again.
    executor.run_id = "run3".into();
    let report = executor
        .run(&plan(&manifest, &executor.sources["lite"], &warehouse).await)
        .await;
    assert_eq!(report.tables[0].rows_deleted, Some(0));

    sqlx::raw_sql("INSERT INTO stock VALUES ('a', 2, 21);")
        .execute(&setup.pool)
        .await
        .unwrap();
    executor.run_id = "run4".into();
    let report = executor
        .run(&plan(&manifest, &executor.sources["lite"], &warehouse).await)
        .await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(
        deleted_at(&warehouse),
        [
            ("a1".into(), false),
            ("a2".into(), false),
            ("b1".into(), false)
        ],
        "the key came back"
    );
}

/// A merge key that is not unique at the source: the plan warns, apply counts the staged rows
/// that shared a key and says so; one row per key is merged.
#[tokio::test]
async fn a_merge_key_that_is_not_unique_is_warned_about_and_its_duplicates_counted() {
    let setup = sqlite(
        "CREATE TABLE visits (id INTEGER PRIMARY KEY, email TEXT NOT NULL, code TEXT NOT NULL UNIQUE, n INTEGER);
         INSERT INTO visits VALUES (1, 'a@x', 'c1', 1), (2, 'a@x', 'c2', 2), (3, 'b@x', 'c3', 3), (4, 'a@x', 'c4', 4);",
    )
    .await;
    let manifest = manifest(
        &setup.path,
        "      visits:\n        mode: merge\n        primary_key: [email]\n        cursor: n\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan_ = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let warnings: Vec<String> = plan_.tables[0]
        .warnings
        .iter()
        .filter(|warning| warning.code == datasync::diagnostic::Code::PlanMergeKeyNotUnique)
        .map(|warning| warning.message.clone())
        .collect();
    assert_eq!(
        warnings,
        [
            "merge key [email] is neither the primary key nor a unique index of `visits` (primary key [id]; unique [code]): rows sharing a key are merged as one (the greatest cursor wins) and apply reports how many"
        ]
    );
    let report = executor.run(&plan_).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(report.tables[0].duplicate_keys, Some(2));
    assert!(
        report.text().contains(
            "lite.visits: warning: 2 staged row(s) shared a merge key with another row; one row per key was merged (the greatest cursor won)"
        ),
        "{}",
        report.text()
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["tables"][0]["duplicate_keys"], 2);
    let rows = warehouse.rows("visits").unwrap();
    assert_eq!(rows.len(), 2, "one row per key");

    // A unique index as the key: no warning.
    let manifest = self::manifest(
        &setup.path,
        "      visits:\n        mode: merge\n        primary_key: [code]\n",
    );
    let unique = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(
        unique.tables[0]
            .warnings
            .iter()
            .all(|warning| warning.code != datasync::diagnostic::Code::PlanMergeKeyNotUnique)
    );
}

const REJECTING: &str = "
CREATE TABLE prices (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL);
INSERT INTO prices VALUES (1, 10), (2, 20), (3, 30);
";

/// A replace run that rejects a row keeps that row's earlier version: the target's current row
/// for the rejected key is copied into staging before the copy job, and the report says so.
#[tokio::test]
async fn a_replace_with_rejects_keeps_the_rows_an_earlier_run_loaded() {
    let setup = sqlite(REJECTING).await;
    let manifest = manifest(&setup.path, "      prices: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    assert!(
        executor
            .run(&plan(&manifest, &executor.sources["lite"], &warehouse).await)
            .await
            .succeeded()
    );
    // A value the INT64 column can't hold: row 2 is rejected this time, row 3 changes.
    sqlx::raw_sql("UPDATE prices SET amount = 'lots' WHERE id = 2; UPDATE prices SET amount = 31 WHERE id = 3;")
        .execute(&setup.pool)
        .await
        .unwrap();
    executor.run_id = "run2".into();
    let report = executor
        .run(&plan(&manifest, &executor.sources["lite"], &warehouse).await)
        .await;
    assert!(report.succeeded(), "{}", report.text());
    let amounts: Vec<String> = rows_by_id(&warehouse, "prices")
        .iter()
        .map(|row| row["amount"].to_string().trim_matches('"').to_string())
        .collect();
    assert_eq!(
        amounts,
        ["10", "20", "31"],
        "row 2 keeps its earlier version"
    );
    assert_eq!(report.tables[0].rows_left_out, 1);
    assert_eq!(report.tables[0].earlier_rows_kept, Some(1));
    let text = report.text();
    assert!(
        text.contains("lite.prices: 1 earlier row(s) kept for rejected rows (a replace drops no row an earlier run loaded)"),
        "{text}"
    );
    assert!(text.contains("_datasync_rejects"), "{text}");
    assert_eq!(warehouse.rows("_datasync_rejects").unwrap().len(), 1);
    assert_eq!(
        warehouse.count("copy_rows_by_key prices into _datasync_staging_prices_run2 keys=1"),
        1
    );
}

/// Without a key, a replace run that rejects rows can't find their earlier versions: the table
/// fails with a clear message and the target keeps every row.
#[tokio::test]
async fn a_replace_with_rejects_and_no_key_fails_and_keeps_the_target() {
    let setup = sqlite(
        "CREATE TABLE prices (id INTEGER, amount INTEGER NOT NULL);
         INSERT INTO prices VALUES (1, 10), (2, 20);",
    )
    .await;
    let manifest = manifest(&setup.path, "      prices: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    assert!(
        executor
            .run(&plan(&manifest, &executor.sources["lite"], &warehouse).await)
            .await
            .succeeded()
    );
    sqlx::raw_sql(
        "UPDATE prices SET amount = 'lots' WHERE id = 2; INSERT INTO prices VALUES (3, 30);",
    )
    .execute(&setup.pool)
    .await
    .unwrap();
    executor.run_id = "run2".into();
    let report = executor
        .run(&plan(&manifest, &executor.sources["lite"], &warehouse).await)
        .await;
    assert_eq!(report.tables[0].status, TableStatus::Failed);
    let error = report.tables[0].error.clone().unwrap();
    assert_eq!(
        error,
        "1 row(s) were rejected (see `_datasync_rejects`) and their earlier versions in `prices` can't be found: the table has no key; the target was not written and keeps its rows (fix the rows, or set `primary_key`)"
    );
    assert_eq!(
        ids(&warehouse, "prices"),
        ["1", "2"],
        "the target keeps its rows"
    );
}

/// NULL merge keys are bad values like any other: rejected into `_datasync_rejects`, named by
/// the report, and counted against `max_parse_failures` (more of them than it allows fail the
/// table before anything is written).
#[tokio::test]
async fn null_merge_keys_are_rejected_and_counted_against_max_parse_failures() {
    let setup = sqlite(
        "CREATE TABLE m (k INTEGER, v TEXT);
         INSERT INTO m VALUES (1, 'a'), (NULL, 'n1'), (2, 'b'), (NULL, 'n2');",
    )
    .await;
    let within = manifest(
        &setup.path,
        "      m:\n        mode: merge\n        primary_key: [k]\n        max_parse_failures: 2\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&within, Arc::clone(&warehouse), DryRun::No).await;
    let report = executor
        .run(&plan(&within, &executor.sources["lite"], &warehouse).await)
        .await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(
        (report.tables[0].bad_values, report.tables[0].rows_left_out),
        (2, 2)
    );
    assert!(
        report.text().contains(
            "lite.m: warning: 2 row(s) left out by bad values (max_parse_failures allows it); they are in `fake-project.ds._datasync_rejects`"
        ),
        "{}",
        report.text()
    );
    assert_eq!(warehouse.rows("_datasync_rejects").unwrap().len(), 2);

    let over = manifest(
        &setup.path,
        "      m:\n        mode: merge\n        primary_key: [k]\n        max_parse_failures: 1\n        target: m2\n",
    );
    let report = executor
        .run(&plan(&over, &executor.sources["lite"], &warehouse).await)
        .await;
    assert_eq!(report.tables[0].status, TableStatus::Failed);
    let error = report.tables[0].error.clone().unwrap();
    assert!(
        error.contains("2 bad values, more than max_parse_failures (1)"),
        "{error}"
    );
    assert!(warehouse.rows("m2").is_none(), "nothing was written");
}

/// The plan prices each write: copy jobs are free, a MERGE into an existing target is priced
/// by a dry run of its statements (the fake reports the target's bytes), a total closes it.
#[tokio::test]
async fn the_plan_prices_merges_with_a_dry_run_and_copies_as_free() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(
        &setup.path,
        "      items:\n        mode: merge\n        primary_key: [id]\n        deletes: hard\n      notes: {}\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    // New targets: no dry run.
    assert_eq!(warehouse.count("dry_run_merge"), 0);
    assert_eq!(
        first.tables[0].write_cost.as_ref().unwrap().basis,
        datasync::plan::CostBasis::NewTarget
    );
    assert!(executor.run(&first).await.succeeded());
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(warehouse.count("dry_run_merge into items"), 1);
    let cost = second.tables[0].write_cost.clone().unwrap();
    assert_eq!(
        cost.basis,
        datasync::plan::CostBasis::DryRun {
            statements: vec!["MERGE".into(), "DELETE".into()]
        }
    );
    assert_eq!(cost.bytes, 4 * datasync::plan::cost::MIN_BYTES_PER_TABLE);
    assert_eq!(second.tables[1].write_cost.as_ref().unwrap().bytes, 0);
    assert_eq!(second.write_cost.bytes, cost.bytes);
    let text = datasync::plan::render::text(&second);
    assert!(
        text.contains(
            "    write: MERGE + DELETE bills ~40.0 MiB (~$0.0002): the target side from a dry run"
        ),
        "{text}"
    );
    assert!(
        text.contains("    write: copy job, free (0 bytes billed)"),
        "{text}"
    );
    assert!(
        text.contains("writes bill ~40.0 MiB (~$0.0002 on demand)"),
        "{text}"
    );
    let json = serde_json::to_value(&second).unwrap();
    assert_eq!(json["tables"][0]["write_cost"]["bytes"], cost.bytes);
    assert_eq!(json["write_cost"]["bytes"], cost.bytes);
}

/// A run id as `new_run_id` makes it: the run started at 2023-11-14T22:13:20.000001Z.
const TIMED_RUN: &str = "1700000000_000001";

#[tokio::test]
async fn lineage_columns_descriptions_and_job_labels_reach_the_target() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(
        &setup.path,
        "      items:\n        description: Things we sell\n        lineage: true\n      notes:\n        mode: merge\n        lineage: true\n        format: ndjson\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    executor.run_id = TIMED_RUN.into();
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let report = executor.run(&first).await;
    assert!(report.succeeded(), "{}", report.text());

    // Avro (items) and NDJSON (notes) sinks fill the lineage columns of every row with the
    // run's start and id, the same for every row and table.
    for table in ["items", "notes"] {
        let rows = warehouse.rows(table).unwrap();
        assert_eq!(rows.len(), if table == "items" { 3 } else { 2 });
        for row in rows {
            assert_eq!(
                row["_datasync_synced_at"], "2023-11-14T22:13:20.000001Z",
                "{table}: {row:?}"
            );
            assert_eq!(row["_datasync_run_id"], TIMED_RUN, "{table}: {row:?}");
        }
    }
    let (description, columns) = warehouse.descriptions("items").unwrap();
    assert_eq!(description.as_deref(), Some("Things we sell"));
    assert_eq!(
        columns.last().unwrap().as_deref(),
        Some("The id of the datasync run that last wrote this row")
    );
    assert_eq!(warehouse.descriptions("notes").unwrap().0, None);

    // Every job of the run carries the run and its table.
    let jobs = warehouse.job_labels();
    assert!(jobs.iter().any(|(entry, _)| entry.starts_with("merge")));
    for (entry, labels) in &jobs {
        assert_eq!(labels.run.as_deref(), Some(TIMED_RUN), "{entry}");
        if entry.contains(datasync::sync::ledger::RUNS_TABLE) {
            // The run's one ledger load: labelled with the run and the ledger table.
            assert_eq!(
                labels.table.as_deref(),
                Some(datasync::sync::ledger::RUNS_TABLE)
            );
            continue;
        }
        let table = labels.table.as_deref().unwrap_or_default();
        assert!(
            ["items", "notes"].contains(&table) && entry.contains(table),
            "{entry}: {labels:?}"
        );
    }

    // A second run merges again and refreshes the run id; the plan has nothing to change.
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(
        !second.has_changes(),
        "{}",
        datasync::plan::render::text(&second)
    );
    executor.run_id = "1700000100_000000".into();
    assert!(executor.run(&second).await.succeeded());
    let notes = warehouse.rows("notes").unwrap();
    assert_eq!(notes.len(), 2);
    assert!(
        notes
            .iter()
            .all(|row| row["_datasync_run_id"] == "1700000100_000000"
                && row["_datasync_synced_at"] == "2023-11-14T22:15:00.000000Z"),
        "{notes:?}"
    );
}

#[tokio::test]
async fn a_source_column_named_like_a_lineage_column_is_a_mapping_error() {
    let setup = sqlite("CREATE TABLE t (id INTEGER PRIMARY KEY, _DataSync_Run_Id TEXT);").await;
    let manifest = manifest(&setup.path, "      t: {lineage: true}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let planned = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(planned.tables[0].action, TableAction::Error);
    let text = datasync::plan::render::text(&planned);
    assert!(
        text.contains(
            "column `_DataSync_Run_Id` collides with `_datasync_run_id`, a lineage column `lineage: true` adds (BigQuery names ignore case): add it to `exclude_columns`, or turn lineage off"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_clustering_change_and_a_new_description_are_patched_in_after_the_write() {
    let setup = sqlite(SEED).await;
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let before = manifest(
        &setup.path,
        "      items:\n        mode: append\n        cluster_by: [id]\n",
    );
    let mut executor = executor(&before, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&before, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&first).await.succeeded());

    let after = manifest(
        &setup.path,
        "      items:\n        mode: append\n        cluster_by: [name, id]\n        description: Things we sell\n",
    );
    let second = plan(&after, &executor.sources["lite"], &warehouse).await;
    assert_eq!(second.tables[0].action, TableAction::Update);
    assert!(second.has_changes());
    let text = datasync::plan::render::text(&second);
    assert!(
        text.contains("    ~ clustering [id] -> [name, id] (in place;")
            && text.contains("    ~ description (none) -> \"Things we sell\""),
        "{text}"
    );
    executor.run_id = "run2".into();
    let report = executor.run(&second).await;
    assert!(report.succeeded(), "{}", report.text());
    // The copy appended while staging and target were both clustered by [id] (the fake, like
    // BigQuery, refuses a copy between differently clustered tables); then the patch.
    let log = warehouse.log();
    let copy = log
        .iter()
        .position(|entry| {
            entry == "copy_table _datasync_staging_items_run2 into items WRITE_APPEND"
        })
        .unwrap_or_else(|| panic!("{log:#?}"));
    let patch = log
        .iter()
        .position(|entry| entry == "update_table items")
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert!(copy < patch, "{log:#?}");
    assert_eq!(ids(&warehouse, "items"), ["1", "1", "2", "2", "3", "3"]);
    let target = warehouse.get_table("items").await.unwrap().unwrap().table;
    assert_eq!(target.clustering, ["name", "id"]);
    assert_eq!(target.description.as_deref(), Some("Things we sell"));

    // Done: the next plan has nothing to change, and the next run's copy still works.
    let third = plan(&after, &executor.sources["lite"], &warehouse).await;
    assert_eq!(third.tables[0].action, TableAction::Sync);
    assert!(!third.has_changes());
    executor.run_id = "run3".into();
    assert!(executor.run(&third).await.succeeded());
}

#[tokio::test]
async fn a_failed_metadata_patch_says_the_rows_were_written() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items:\n        mode: append\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&first).await.succeeded());
    let described = datasync::manifest::Manifest {
        tables: manifest
            .tables
            .iter()
            .cloned()
            .map(|mut table| {
                table.description = Some("Things we sell".into());
                table
            })
            .collect(),
        ..manifest.clone()
    };
    let second = plan(&described, &executor.sources["lite"], &warehouse).await;
    warehouse.fail_next("update_table", false);
    executor.run_id = "run2".into();
    let report = executor.run(&second).await;
    assert_eq!(report.tables[0].status, TableStatus::Failed);
    let text = report.text();
    assert!(
        text.contains(
            "the rows were written, but updating the target's descriptions or clustering failed"
        ),
        "{text}"
    );
    assert_eq!(ids(&warehouse, "items").len(), 6);
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
    assert_eq!(warehouse.count("load _datasync_staging"), 4);
    assert_eq!(warehouse.count("create_table _datasync_staging"), 1);
    // The target still takes one atomic write.
    assert_eq!(warehouse.count("copy_table"), 1);
    assert!(
        warehouse
            .list_tables("_datasync_")
            .await
            .unwrap()
            .iter()
            .all(|name| name == datasync::sync::ledger::RUNS_TABLE)
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
    assert_eq!(warehouse.count("load _datasync_staging"), 4);
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
            .iter()
            .all(|name| name == datasync::sync::ledger::RUNS_TABLE)
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

/// Should a `WRITE_TRUNCATE` copy carry staging's description (its resume marker) over to the
/// target, the replace puts the target's own description back after the write.
#[tokio::test]
async fn a_copy_that_carries_the_staging_description_is_corrected() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(
        &setup.path,
        "      items:\n        description: Things we sell\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    warehouse.copies_take_the_description();
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let report = executor.run(&first).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(
        warehouse
            .get_table("items")
            .await
            .unwrap()
            .unwrap()
            .description
            .as_deref(),
        Some("Things we sell"),
        "{:?}",
        warehouse.log()
    );
    assert_eq!(
        warehouse.count("update_table items"),
        1,
        "{:?}",
        warehouse.log()
    );
}
