//! The run ledger (`_datasync_runs`) through the real planner and executor over SQLite and the
//! in-memory warehouse: one ledger load per run whatever the number of tables, bounds from the
//! ledger instead of a `MAX` scan of the target, the fallbacks, failures, interrupts.

use std::sync::Arc;
use std::time::Duration;

use datasync::sync::{DryRun, RunLedger, TableStatus, ledger::RUNS_TABLE};
use datasync::warehouse::{FakeWarehouse, Warehouse};
use serde_json::{Map, Value};

use super::apply_fake::{SEED, executor, ids, leftovers, manifest, plan, sqlite};

/// The ledger's rows, in load order.
fn ledger(warehouse: &FakeWarehouse) -> Vec<Map<String, Value>> {
    warehouse.rows(RUNS_TABLE).unwrap_or_default()
}

fn ledger_of(warehouse: &FakeWarehouse, run_id: &str) -> Vec<Map<String, Value>> {
    ledger(warehouse)
        .into_iter()
        .filter(|row| row["run_id"] == run_id)
        .collect()
}

async fn insert(setup: &super::apply_fake::Setup, sql: &str) {
    sqlx::raw_sql(sql).execute(&setup.pool).await.unwrap();
}

const INCREMENTAL: &str = "      items:\n        mode: incremental\n        cursor: id\n";

/// `items` of [`SEED`] synced once as [`INCREMENTAL`] (run `run1`), where each watermark test
/// starts: the source, the manifest, the warehouse and the executor.
async fn synced_once() -> (
    super::apply_fake::Setup,
    datasync::manifest::Manifest,
    Arc<FakeWarehouse>,
    datasync::sync::Executor,
) {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, INCREMENTAL);
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&first).await.succeeded());
    (setup, manifest, warehouse, executor)
}

#[tokio::test]
async fn one_ledger_load_per_run_whatever_the_number_of_tables() {
    let setup = sqlite(&format!(
        "{SEED}CREATE TABLE tags (id INTEGER PRIMARY KEY, tag TEXT); INSERT INTO tags VALUES (1, 't');"
    ))
    .await;
    let manifest = manifest(
        &setup.path,
        &format!("{INCREMENTAL}      notes: {{}}\n      tags: {{mode: append}}\n"),
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    for run in ["run1", "run2"] {
        executor.run_id = run.into();
        let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
        let report = executor.run(&plan).await;
        assert!(report.succeeded(), "{}", report.text());
        let ledger = report.ledger.as_ref().unwrap();
        assert_eq!((ledger.rows, ledger.error.as_deref()), (3, None));
        assert!(
            report.text().contains(&format!(
                "run {run} recorded in `fake-project.ds._datasync_runs`"
            )),
            "{}",
            report.text()
        );
        assert_eq!(
            warehouse.count(&format!(
                "load _datasync_runs WRITE_APPEND datasync-ledger_{run}"
            )),
            1
        );
    }
    // Two runs of three tables: two loads into the ledger, never one per table.
    assert_eq!(warehouse.count("load _datasync_runs"), 2);
    assert_eq!(ledger(&warehouse).len(), 6);

    let rows = ledger_of(&warehouse, "run1");
    let items = &rows[0];
    assert_eq!(items["table"], "lite.items");
    assert_eq!(items["target"], "items");
    assert_eq!(items["source"], "lite");
    assert_eq!(items["mode"], "incremental");
    assert_eq!(items["status"], "done");
    assert_eq!(items["rows_extracted"], 3);
    assert_eq!(items["rows_loaded"], 3);
    assert_eq!(items["rows_rejected"], 0);
    assert_eq!(items["cursor_column"], "id");
    assert_eq!(items["watermark"], "3");
    assert_eq!(items["watermark_type"], "INT64");
    assert_eq!(items["shard"], Value::Null);
    // The one chunk's load job (`datasync_<plan>_items_run1_c0`), then the write.
    let jobs = items["job_ids"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs[0].as_str().unwrap().ends_with("_items_run1_c0"),
        "{jobs:?}"
    );
    assert_eq!(jobs[1], "datasync_run1_items_write");
    assert!(items["error"].is_null());
    assert_eq!(items["datasync_version"], env!("CARGO_PKG_VERSION"));
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(items["plan_fingerprint"].as_str().unwrap().len(), 16);
    assert!(plan.fingerprint.len() == 16);
    let (started, finished) = (
        items["started_at"].as_str().unwrap(),
        items["finished_at"].as_str().unwrap(),
    );
    assert!(started.ends_with('Z') && started.len() == 27, "{started}");
    assert!(started <= finished);
    // A replace target keeps no watermark; its row says what ran.
    let notes = &rows[1];
    assert_eq!(
        (notes["mode"].as_str(), notes["status"].as_str()),
        (Some("replace"), Some("done"))
    );
    assert!(notes["watermark"].is_null() && notes["cursor_column"].is_null());
    assert!(leftovers(&warehouse).await.is_empty());
}

#[tokio::test]
async fn the_second_incremental_run_reads_its_bound_from_the_ledger_not_the_target() {
    let (setup, manifest, warehouse, mut executor) = synced_once().await;

    insert(
        &setup,
        "INSERT INTO items VALUES (4, 'd', 4.0), (5, 'e', 5.0);",
    )
    .await;
    let before = warehouse.log().len();
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(
        second.tables[0].estimated_rows,
        Some(2),
        "the plan counts past the watermark"
    );
    executor.run_id = "run2".into();
    let report = executor.run(&second).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(report.tables[0].rows_extracted, 2);
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3", "4", "5"]);
    let log = warehouse.log()[before..].to_vec();
    assert!(
        !log.iter().any(|entry| entry.starts_with("max_value")),
        "a MAX query on the target: {log:#?}"
    );
    // One ledger query in the plan, one in the run: for every table at once.
    let ledger_queries = log
        .iter()
        .filter(|entry| entry.starts_with("query ") && entry.contains(RUNS_TABLE))
        .count();
    assert_eq!(ledger_queries, 2, "{log:#?}");
    assert_eq!(ledger_of(&warehouse, "run2")[0]["watermark"], "5");

    // A run that loads nothing keeps the watermark.
    executor.run_id = "run3".into();
    let third = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let report = executor.run(&third).await;
    assert_eq!(report.tables[0].rows_extracted, 0, "{}", report.text());
    assert_eq!(ledger_of(&warehouse, "run3")[0]["watermark"], "5");
    assert_eq!(warehouse.count("max_value"), 0);
}

fn item(id: &str) -> Map<String, Value> {
    let mut row = Map::new();
    row.insert("id".into(), Value::String(id.into()));
    row.insert("name".into(), Value::String(format!("n{id}")));
    row
}

#[tokio::test]
async fn without_a_ledger_entry_the_bound_comes_from_the_targets_max_once() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, INCREMENTAL);
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    // Synced before the ledger existed (an upgrade): rows 1..3 are in the target.
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let target = first.tables[0].target_schema.clone().unwrap();
    warehouse.insert_table(target, ["1", "2", "3"].map(item).to_vec());
    insert(&setup, "INSERT INTO items VALUES (4, 'd', 4.0);").await;

    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(second.tables[0].estimated_rows, Some(1));
    let report = executor.run(&second).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3", "4"]);
    assert_eq!(
        warehouse.count("max_value items.id"),
        2,
        "the plan's and the run's"
    );
    assert_eq!(ledger_of(&warehouse, "run1")[0]["watermark"], "4");

    // From now on the ledger has it.
    insert(&setup, "INSERT INTO items VALUES (5, 'e', 5.0);").await;
    executor.run_id = "run2".into();
    let third = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&third).await.succeeded());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3", "4", "5"]);
    assert_eq!(warehouse.count("max_value items.id"), 2);
}

/// The target was written after the ledger row (another writer, or a run that has not recorded
/// itself yet, or a write whose reply was lost): its `lastModifiedTime` moved, so the ledger's
/// watermark is not trusted and the bound is the target's MAX — no row is loaded twice.
#[tokio::test]
async fn a_target_changed_since_its_ledger_row_falls_back_to_its_max() {
    let (setup, manifest, warehouse, mut executor) = synced_once().await;

    insert(
        &setup,
        "INSERT INTO items VALUES (4, 'd', 4.0), (5, 'e', 5.0);",
    )
    .await;
    warehouse.append_rows("items", vec![item("4")]);
    executor.run_id = "run2".into();
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let report = executor.run(&second).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(
        report.tables[0].rows_extracted, 1,
        "only past the target's MAX (4)"
    );
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3", "4", "5"]);
    assert_eq!(warehouse.count("max_value items.id"), 2);
    assert_eq!(ledger_of(&warehouse, "run2")[0]["watermark"], "5");
}

/// An ambiguous write (the copy happened, its reply was lost) is a failed table whose
/// watermark is not recorded; the target moved, so the next run reads the target's MAX and
/// loads nothing twice.
#[tokio::test]
async fn after_a_lost_write_reply_the_next_run_loads_nothing_twice() {
    let (setup, manifest, warehouse, mut executor) = synced_once().await;
    insert(&setup, "INSERT INTO items VALUES (4, 'd', 4.0);").await;
    warehouse.fail_next_ambiguous("copy_table");
    executor.run_id = "run2".into();
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let report = executor.run(&second).await;
    assert_eq!(report.tables[0].status, TableStatus::Failed);
    let row = &ledger_of(&warehouse, "run2")[0];
    assert_eq!(row["status"], "failed");
    assert!(row["watermark"].is_null());
    assert!(
        row["error"].as_str().unwrap().contains("unknown"),
        "{row:?}"
    );

    executor.run_id = "run3".into();
    let third = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&third).await.succeeded());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3", "4"]);
}

#[tokio::test]
async fn a_failed_ledger_write_is_a_warning_the_targets_are_written() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, INCREMENTAL);
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    // The staging load passes, the ledger's fails.
    warehouse.fail_after("load", 1);
    let report = executor.run(&first).await;
    assert_eq!(
        report.tables[0].status,
        TableStatus::Done,
        "{}",
        report.text()
    );
    assert!(report.succeeded(), "every table ran");
    assert!(report.ledger_failed());
    let text = report.text();
    assert!(
        text.contains("warning: run run1 is not recorded in `fake-project.ds._datasync_runs`"),
        "{text}"
    );
    assert!(
        text.contains("the next run reads its bounds from the targets"),
        "{text}"
    );
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3"]);
    let json = serde_json::to_value(&report).unwrap();
    assert!(
        json["ledger"]["error"]
            .as_str()
            .unwrap()
            .contains("injected")
    );

    // Nothing recorded: the next run falls back to the target and loads nothing twice.
    insert(&setup, "INSERT INTO items VALUES (4, 'd', 4.0);").await;
    executor.run_id = "run2".into();
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&second).await.succeeded());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3", "4"]);
    assert_eq!(ledger_of(&warehouse, "run2")[0]["watermark"], "4");
}

#[tokio::test]
async fn failed_and_skipped_tables_are_recorded_with_their_errors() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, "      items: {}\n      notes: {}\n");
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    warehouse.insert_table(
        datasync::schema::WarehouseTable {
            description: None,
            name: "items".into(),
            fields: vec![datasync::schema::WarehouseField::new(
                "id",
                datasync::schema::BqType::String,
                datasync::schema::FieldMode::Nullable,
            )],
            partitioning: None,
            clustering: vec![],
        },
        vec![],
    );
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    warehouse.fail_next("copy_table", false);
    let report = executor.run(&plan).await;
    assert_eq!(
        report
            .tables
            .iter()
            .map(|table| table.status)
            .collect::<Vec<_>>(),
        [TableStatus::Skipped, TableStatus::Failed]
    );
    assert!(!report.ledger_failed(), "{}", report.text());
    let rows = ledger_of(&warehouse, "run1");
    assert_eq!(rows[0]["status"], "skipped");
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap()
            .contains("allow_recreate"),
        "{:?}",
        rows[0]
    );
    assert!(rows[0]["rows_extracted"].is_null());
    assert_eq!(rows[1]["status"], "failed");
    assert_eq!(rows[1]["rows_extracted"], 2);
    assert!(
        rows[1]["error"]
            .as_str()
            .unwrap()
            .contains("writing the target failed")
    );
    let jobs = rows[1]["job_ids"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(
        jobs[0].as_str().unwrap().ends_with("_notes_run1_c0"),
        "{jobs:?}"
    );
}

#[tokio::test]
async fn a_dry_run_records_nothing() {
    let (setup, manifest, warehouse, mut executor) = synced_once().await;
    insert(&setup, "INSERT INTO items VALUES (4, 'd', 4.0);").await;
    executor.dry_run = DryRun::Yes;
    executor.run_id = "dry".into();
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let report = executor.run(&second).await;
    assert_eq!(
        report.tables[0].rows_extracted, 1,
        "the same bound as a real run"
    );
    assert!(report.ledger.is_none());
    assert_eq!(
        warehouse.count("load _datasync_runs"),
        1,
        "only the real run's"
    );
    assert_eq!(warehouse.count("max_value"), 0);
}

/// A plan saved earlier holds the bound's decision, not its value: applied after another run,
/// it reads the ledger's newest watermark and loads only what that run did not.
#[tokio::test]
async fn a_saved_plan_reads_the_watermark_when_it_is_applied() {
    let (setup, manifest, warehouse, mut executor) = synced_once().await;
    let saved =
        serde_json::to_string(&plan(&manifest, &executor.sources["lite"], &warehouse).await)
            .unwrap();

    insert(&setup, "INSERT INTO items VALUES (4, 'd', 4.0);").await;
    executor.run_id = "run2".into();
    let between = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&between).await.succeeded());

    insert(&setup, "INSERT INTO items VALUES (5, 'e', 5.0);").await;
    let saved = datasync::plan::stale::read_saved(&saved).unwrap();
    let fresh = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    datasync::plan::stale::check_fresh(&saved, &fresh)
        .expect("a watermark change is not staleness");
    executor.run_id = "run3".into();
    let report = executor.run(&saved).await;
    assert_eq!(report.tables[0].rows_extracted, 1, "{}", report.text());
    assert_eq!(ids(&warehouse, "items"), ["1", "2", "3", "4", "5"]);
    assert_eq!(
        ledger_of(&warehouse, "run3")[0]["plan_fingerprint"],
        saved.fingerprint.as_str()
    );
}

#[tokio::test]
async fn each_shard_records_its_own_rows_with_its_shard() {
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, INCREMENTAL);
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    executor.ledger = Arc::new(RunLedger::new(Some("1/3".into())));
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(executor.run(&plan).await.succeeded());
    assert_eq!(ledger_of(&warehouse, "run1")[0]["shard"], "1/3");
}

/// An interrupt (Ctrl-C, SIGTERM, timeout) drops the run; `abort` records what had finished
/// and marks the rest `interrupted`, in one load.
#[tokio::test]
async fn an_interrupted_run_records_what_finished_and_the_rest_as_interrupted() {
    use datasync::sync::lease::{self, LeaseSettings};
    let setup = sqlite(SEED).await;
    let manifest = manifest(&setup.path, &format!("      notes: {{}}\n{INCREMENTAL}"));
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    executor.parallelism = 1;
    executor.settings.lease.wait = Duration::from_secs(30);
    let plan = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    // Another run holds `items`: this run finishes `notes`, then waits for `items`.
    let held = lease::acquire(
        Arc::clone(&warehouse) as Arc<dyn Warehouse>,
        "items",
        "other_run",
        LeaseSettings {
            duration: Duration::from_secs(60),
            wait: Duration::ZERO,
        },
    )
    .await
    .unwrap();
    let run = executor.run(&plan);
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), run)
            .await
            .is_err()
    );
    executor.abort(&plan).await;
    drop(held);
    let rows = ledger_of(&warehouse, "run1");
    assert_eq!(
        warehouse.count("load _datasync_runs WRITE_APPEND datasync-ledger_run1"),
        1
    );
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["table"], "lite.notes");
    assert_eq!(rows[0]["status"], "done");
    assert_eq!(rows[1]["table"], "lite.items");
    assert_eq!(rows[1]["status"], "interrupted");
    assert!(rows[1]["started_at"].is_string(), "it had started");
    assert!(rows[1]["watermark"].is_null());
    assert!(rows[1]["error"].as_str().unwrap().contains("interrupted"));
}
