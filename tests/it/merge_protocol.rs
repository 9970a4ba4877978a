//! The merge and reject paths of `warehouse::BigQuery` against a recording fake of the REST API,
//! for what the emulator can't show (see `scripts/EMULATOR.md`): the dry runs that price a
//! MERGE (the emulator reports 0 bytes), a script's child-job statistics (the emulator lists
//! no child jobs), and the ARRAY<STRUCT> parameter of the rows kept for rejected keys.

use std::collections::HashMap;
use std::sync::Arc;

use datasync::manifest::resolve::BigQuerySpec;
use datasync::schema::{BqType, Deletes, FieldMode, WarehouseField, WarehouseTable};
use datasync::sync::{Session, planner};
use datasync::warehouse::{BigQuery, CopyRowsByKey, MergeRequest, Warehouse};
use serde_json::json;

use crate::support::fakes::{Seen, reply, serve};

const DATASET: &str = r#"{"datasetReference":{"projectId":"p","datasetId":"d"},"location":"EU"}"#;

fn client(base: &str) -> BigQuery {
    let spec = BigQuerySpec {
        project: "p".into(),
        dataset: "d".into(),
        endpoint: Some(base.into()),
        emulator: true,
        ..BigQuerySpec::default()
    };
    BigQuery::new(&spec).unwrap().without_emulator_quirks()
}

fn items() -> WarehouseTable {
    WarehouseTable {
        description: None,
        name: "items".into(),
        fields: vec![
            WarehouseField::new("id", BqType::Int64, FieldMode::Required),
            WarehouseField::new("name", BqType::String, FieldMode::Required),
            WarehouseField::new("price", BqType::Float64, FieldMode::Nullable),
        ],
        partitioning: None,
        clustering: Vec::new(),
    }
}

/// The items table as tables.get returns it.
const ITEMS: &str = r#"{"tableReference":{"projectId":"p","datasetId":"d","tableId":"items"},"numRows":"3","schema":{"fields":[
    {"name":"id","type":"INTEGER","mode":"REQUIRED"},{"name":"name","type":"STRING","mode":"REQUIRED"},
    {"name":"price","type":"FLOAT","mode":"NULLABLE"}]}}"#;

/// tables.list of the dataset: the items table.
const LISTING: &str = r#"{"tables":[{"tableReference":{"projectId":"p","datasetId":"d","tableId":"items"},"type":"TABLE"}]}"#;

/// A dry run's answer: MERGE 3 GiB, the DELETE 1 GiB of the target (what BigQuery would say).
fn dry_run_answer(request: &Seen) -> String {
    let sql = request.json()["configuration"]["query"]["query"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (kind, bytes) = if sql.starts_with("MERGE") {
        ("MERGE", 3u64 << 30)
    } else {
        ("DELETE", 1 << 30)
    };
    json!({
        "jobReference": {"projectId": "p", "location": "EU"},
        "configuration": {"dryRun": true},
        "status": {"state": "DONE"},
        "statistics": {"totalBytesProcessed": bytes.to_string(), "query": {"totalBytesProcessed": bytes.to_string(), "statementType": kind}}
    })
    .to_string()
}

/// `plan` prices a MERGE into an existing target with one dry run per statement
/// (`configuration.dryRun`, no job id, in the dataset's location), over typed empty stand-ins
/// for the tables the run will make, and shows BigQuery's figure, the 10 MiB minimums and the
/// dollars.
#[tokio::test]
async fn the_plan_prices_a_merge_with_dry_runs_of_its_statements() {
    let fake = serve(Arc::new(|request: &Seen| {
        match (request.method.as_str(), request.path()) {
            ("GET", "/bigquery/v2/projects/p/datasets/d") => reply(200, DATASET),
            ("GET", "/bigquery/v2/projects/p/datasets/d/tables/items") => reply(200, ITEMS),
            ("GET", "/bigquery/v2/projects/p/datasets/d/tables") => reply(200, LISTING),
            ("POST", "/bigquery/v2/projects/p/jobs") => reply(200, dry_run_answer(request)),
            _ => reply(500, r#"{"error":{"code":500,"message":"unexpected"}}"#),
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    sqlx::raw_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL); INSERT INTO items VALUES (1, 'a', 1.5);")
        .execute(&pool)
        .await
        .unwrap();
    let text = format!(
        "bigquery: {{project: demo-project, dataset: d}}\nsources:\n  lite:\n    type: sqlite\n    database: {}\n    tables:\n      items: {{mode: merge, deletes: hard}}\n",
        path.display()
    );
    let manifest = datasync::manifest::load(&datasync::manifest::ManifestInput {
        name: None,
        text: Some((text, datasync::manifest::Format::Yaml)),
        env: datasync::manifest::Env::new(),
    })
    .unwrap()
    .manifest;
    let source = datasync::source::Source::connect(&manifest.sources[0])
        .await
        .unwrap();
    let session = Session {
        sources: HashMap::from([("lite".to_string(), Arc::new(source))]),
        source_errors: HashMap::new(),
        warehouse: Arc::new(client(&fake.base)),
    };
    let plan = planner::plan(&manifest, &session).await.unwrap();

    let dry_runs: Vec<serde_json::Value> = fake
        .seen()
        .iter()
        .filter(|request| request.method == "POST")
        .map(Seen::json)
        .collect();
    assert_eq!(dry_runs.len(), 2, "{dry_runs:#?}");
    for body in &dry_runs {
        assert_eq!(body["configuration"]["dryRun"], true);
        assert_eq!(body["configuration"]["query"]["useLegacySql"], false);
        assert_eq!(body["jobReference"]["location"], "EU");
        assert!(body["jobReference"].get("jobId").is_none(), "{body}");
    }
    let merge = dry_runs[0]["configuration"]["query"]["query"]
        .as_str()
        .unwrap();
    assert!(
        merge.starts_with("MERGE `p.d.items` T USING (SELECT * FROM (SELECT * FROM UNNEST(ARRAY<STRUCT<`id` INT64, `name` STRING, `price` FLOAT64>>[])) WHERE `id` IS NOT NULL"),
        "{merge}"
    );
    let delete = dry_runs[1]["configuration"]["query"]["query"]
        .as_str()
        .unwrap();
    assert_eq!(
        delete,
        "DELETE FROM `p.d.items` T WHERE T.`id` IS NOT NULL AND NOT EXISTS (SELECT 1 FROM (SELECT * FROM UNNEST(ARRAY<STRUCT<`id` INT64>>[])) K WHERE K.`id` = T.`id`)"
    );
    // 3 GiB + 1 GiB of the target, + the staging and keys tables at 10 MiB each.
    let cost = plan.tables[0].write_cost.clone().unwrap();
    assert_eq!(cost.bytes, (4u64 << 30) + 20 * 1024 * 1024);
    let text = datasync::plan::render::text(&plan);
    assert!(
        text.contains("    write: MERGE + DELETE bills ~4.0 GiB (~$0.0245): the target side from a dry run, this run's tables at their 10 MiB minimum"),
        "{text}"
    );
    assert!(
        text.contains("writes bill ~4.0 GiB (~$0.0245 on demand)"),
        "{text}"
    );
}

/// A failed dry run leaves the cost unknown with a warning; the plan still runs the table.
#[tokio::test]
async fn a_failed_dry_run_is_a_warning_and_an_unknown_cost() {
    let fake = serve(Arc::new(|request: &Seen| {
        match (request.method.as_str(), request.path()) {
            ("GET", "/bigquery/v2/projects/p/datasets/d") => reply(200, DATASET),
            ("POST", "/bigquery/v2/projects/p/jobs") => reply(
                403,
                r#"{"error":{"code":403,"message":"Access Denied: bigquery.jobs.create","errors":[{"reason":"accessDenied","message":"Access Denied"}]}}"#,
            ),
            _ => reply(500, r#"{"error":{"code":500,"message":"unexpected"}}"#),
        }
    }))
    .await;
    let request = MergeRequest {
        staging: "s".into(),
        target: "items".into(),
        keys: vec!["id".into()],
        columns: vec!["id".into(), "name".into()],
        order_by: None,
        job_id: None,
        deletes: Deletes::Keep,
        keys_table: None,
    };
    let error = client(&fake.base)
        .dry_run_merge(&request, &items())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("Access Denied"), "{error}");
}

/// A merge with `deletes` runs as one script job; its own statistics carry no DML counts, so
/// the client reads its child jobs (`parentJobId`) and reports the MERGE's and the DELETE's.
#[tokio::test]
async fn a_scripts_row_counts_come_from_its_child_jobs() {
    let fake = serve(Arc::new(|request: &Seen| {
        match (request.method.as_str(), request.path()) {
            ("GET", "/bigquery/v2/projects/p/datasets/d") => reply(200, DATASET),
            ("POST", "/bigquery/v2/projects/p/jobs") => reply(
                200,
                r#"{"jobReference":{"projectId":"p","jobId":"run_write","location":"EU"},"status":{"state":"DONE"},"statistics":{"query":{"statementType":"SCRIPT"}}}"#,
            ),
            ("GET", "/bigquery/v2/projects/p/jobs") => reply(
                200,
                r#"{"jobs":[
                  {"jobReference":{"projectId":"p","jobId":"c2"},"status":{"state":"DONE"},"statistics":{"query":{"statementType":"DELETE","numDmlAffectedRows":"3","dmlStats":{"deletedRowCount":"3"}}}},
                  {"jobReference":{"projectId":"p","jobId":"c1"},"status":{"state":"DONE"},"statistics":{"query":{"statementType":"MERGE","numDmlAffectedRows":"5","dmlStats":{"insertedRowCount":"2","updatedRowCount":"3"}}}}
                ]}"#,
            ),
            _ => reply(500, r#"{"error":{"code":500,"message":"unexpected"}}"#),
        }
    }))
    .await;
    let request = MergeRequest {
        staging: "s".into(),
        target: "items".into(),
        keys: vec!["id".into()],
        columns: vec!["id".into(), "name".into()],
        order_by: None,
        job_id: Some("run_write".into()),
        deletes: Deletes::Hard,
        keys_table: Some("k".into()),
    };
    let outcome = client(&fake.base).merge(&request).await.unwrap();
    assert_eq!(
        (
            outcome.affected_rows,
            outcome.inserted,
            outcome.updated,
            outcome.deleted
        ),
        (5, Some(2), Some(3), Some(3))
    );
    let seen = fake.seen();
    let script = seen
        .iter()
        .find(|request| request.method == "POST")
        .unwrap()
        .json();
    let sql = script["configuration"]["query"]["query"].as_str().unwrap();
    assert!(
        sql.starts_with("BEGIN TRANSACTION;\nMERGE `p.d.items`"),
        "{sql}"
    );
    assert!(sql.ends_with(";\nCOMMIT TRANSACTION;"), "{sql}");
    let list = seen
        .iter()
        .find(|request| request.method == "GET" && request.path().ends_with("/jobs"))
        .unwrap();
    assert_eq!(list.query()["parentJobId"], "run_write");
}

/// The rows kept for rejected keys: one INSERT … SELECT whose keys are one bound
/// `ARRAY<STRUCT<…>>` parameter (composite keys included), never literals in the SQL.
#[tokio::test]
async fn rows_of_rejected_keys_are_copied_with_one_struct_array_parameter() {
    let fake = serve(Arc::new(|request: &Seen| {
        match (request.method.as_str(), request.path()) {
            ("GET", "/bigquery/v2/projects/p/datasets/d") => reply(200, DATASET),
            ("POST", "/bigquery/v2/projects/p/queries") => reply(
                200,
                r#"{"jobReference":{"projectId":"p","jobId":"q1","location":"EU"},"jobComplete":true,"numDmlAffectedRows":"2"}"#,
            ),
            _ => reply(500, r#"{"error":{"code":500,"message":"unexpected"}}"#),
        }
    }))
    .await;
    let kept = client(&fake.base)
        .copy_rows_by_key(&CopyRowsByKey {
            from: "items".into(),
            into: "_datasync_staging_items_r".into(),
            columns: vec!["id".into(), "shop".into(), "v".into()],
            keys: vec![
                ("id".into(), BqType::Int64),
                ("shop".into(), BqType::String),
            ],
            values: vec![
                vec!["4".into(), "it's".into()],
                vec!["5".into(), "b".into()],
            ],
        })
        .await
        .unwrap();
    assert_eq!(kept, 2);
    let body = fake
        .seen()
        .iter()
        .find(|request| request.method == "POST")
        .unwrap()
        .json();
    assert_eq!(
        body["query"],
        "INSERT INTO `p.d._datasync_staging_items_r` (`id`, `shop`, `v`) SELECT `id`, `shop`, `v` FROM `p.d.items` T WHERE EXISTS (SELECT 1 FROM UNNEST(@keys) AS K WHERE K.k0 = T.`id` AND K.k1 = T.`shop`)"
    );
    assert_eq!(body["parameterMode"], "NAMED");
    assert_eq!(
        body["queryParameters"],
        json!([{
            "name": "keys",
            "parameterType": {"type": "ARRAY", "arrayType": {"type": "STRUCT", "structTypes": [
                {"name": "k0", "type": {"type": "INT64"}},
                {"name": "k1", "type": {"type": "STRING"}}
            ]}},
            "parameterValue": {"arrayValues": [
                {"structValues": {"k0": {"value": "4"}, "k1": {"value": "it's"}}},
                {"structValues": {"k0": {"value": "5"}, "k1": {"value": "b"}}}
            ]}
        }])
    );
}
