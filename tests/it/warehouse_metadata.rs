//! Metadata on the wire, against a loopback recording fake of the BigQuery API (the emulator
//! ignores job labels): every job carries the cost-attribution labels, created tables carry
//! `managed-by: datasync` and `bigquery.labels`, and `update_table` is one tables.patch of the
//! descriptions and the clustering that keeps the rest of the schema.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use datasync::manifest::resolve::BigQuerySpec;
use datasync::schema::{BqType, FieldMode, LoadFormat, WarehouseField, WarehouseTable};
use datasync::warehouse::labels::{self, JobLabels};
use datasync::warehouse::{
    BigQuery, CopyRequest, Disposition, LoadRequest, MergeRequest, RetryPolicy, TableUpdate,
    Warehouse,
};
use serde_json::{Value, json};

use crate::support::fakes::{Reply, Seen, reply, serve};

/// A client of the fake at `base` as of real BigQuery (no emulator workarounds), with
/// `bigquery.labels: {team: data}`.
fn client(base: &str) -> BigQuery {
    let spec = BigQuerySpec {
        project: "p".into(),
        dataset: "d".into(),
        location: Some("US".into()),
        endpoint: Some(base.into()),
        emulator: true,
        labels: BTreeMap::from([("team".to_string(), "data".to_string())]),
        ..BigQuerySpec::default()
    };
    BigQuery::new(&spec)
        .unwrap()
        .without_emulator_quirks()
        .with_retry_policy(RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..RetryPolicy::default()
        })
}

const TABLE: &str = r#"{"tableReference":{"projectId":"p","datasetId":"d","tableId":"orders"},"etag":"etag-1","schema":{"fields":[
    {"name":"id","type":"INTEGER","mode":"REQUIRED"},
    {"name":"Email","type":"STRING","mode":"NULLABLE","policyTags":{"names":["projects/p/locations/us/taxonomies/1/policyTags/2"]}},
    {"name":"kind","type":"STRING","mode":"NULLABLE","description":"old"}]}}"#;

/// Answers every call datasync makes for a table's jobs: the dataset, a table, job inserts and
/// queries that are done at once, a resumable upload.
fn bigquery(request: &Seen) -> Reply {
    match (request.method.as_str(), request.path()) {
        ("GET", "/bigquery/v2/projects/p/datasets/d") => reply(
            200,
            r#"{"datasetReference":{"projectId":"p","datasetId":"d"},"location":"US"}"#,
        ),
        ("GET", "/bigquery/v2/projects/p/datasets/d/tables/orders") => reply(200, TABLE),
        ("PATCH", "/bigquery/v2/projects/p/datasets/d/tables/orders") => reply(200, TABLE),
        ("POST", "/bigquery/v2/projects/p/datasets/d/tables") => {
            reply(200, String::from_utf8_lossy(&request.body).to_string())
        }
        ("GET", path) if path.starts_with("/bigquery/v2/projects/p/jobs/") => reply(
            404,
            r#"{"error":{"code":404,"message":"Not found: Job","errors":[{"reason":"notFound"}]}}"#,
        ),
        ("POST", "/bigquery/v2/projects/p/jobs") => {
            let job_id = request.json()["jobReference"]["jobId"].clone();
            reply(
                200,
                json!({"jobReference": {"projectId": "p", "jobId": job_id}, "status": {"state": "DONE"},
                       "statistics": {"query": {"numDmlAffectedRows": "1"}}})
                .to_string(),
            )
        }
        ("POST", "/bigquery/v2/projects/p/queries") => reply(
            200,
            r#"{"jobReference":{"projectId":"p","jobId":"q1","location":"US"},"jobComplete":true,
                "schema":{"fields":[{"name":"m","type":"INTEGER"}]},"rows":[{"f":[{"v":"1"}]}]}"#,
        ),
        ("POST", "/upload/bigquery/v2/projects/p/jobs") => Reply {
            status: 200,
            headers: vec![(
                "Location".into(),
                format!(
                    "http://{}/upload/session?upload_id=u1",
                    request.header("host").unwrap_or_default()
                ),
            )],
            body: String::new(),
        },
        ("PUT", "/upload/session") => reply(
            200,
            r#"{"jobReference":{"projectId":"p","jobId":"load_1"},"status":{"state":"DONE"},"statistics":{"load":{"outputRows":"1"}}}"#,
        ),
        _ => reply(500, "unexpected request"),
    }
}

fn orders() -> WarehouseTable {
    WarehouseTable {
        name: "orders".into(),
        fields: vec![WarehouseField::new(
            "id",
            BqType::Int64,
            FieldMode::Required,
        )],
        partitioning: None,
        clustering: Vec::new(),
        description: Some("Orders placed".into()),
    }
}

/// The labels a job insert (`configuration.labels`) or a jobs.query (`labels`) carries.
fn job_labels(request: &Seen) -> Option<Value> {
    let body = request.json();
    match request.path() {
        "/bigquery/v2/projects/p/queries" => Some(body["labels"].clone()),
        "/bigquery/v2/projects/p/jobs" | "/upload/bigquery/v2/projects/p/jobs" => {
            Some(body["configuration"]["labels"].clone())
        }
        _ => None,
    }
}

#[tokio::test]
async fn every_job_carries_the_cost_labels_and_created_tables_the_managed_by_label() {
    let fake = serve(std::sync::Arc::new(bigquery)).await;
    let bq = client(&fake.base);
    let run = JobLabels::for_table(Some("1700000000_000001"), "Orders_2024");
    labels::scope(run, async {
        bq.create_table(&orders()).await.unwrap();
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        sender
            .send(Bytes::from_static(b"{\"id\":1}\n"))
            .await
            .unwrap();
        drop(sender);
        let load = LoadRequest {
            table: "_datasync_staging_orders".into(),
            schema: orders(),
            disposition: Disposition::Append,
            job_id: "load_1".into(),
            allow_field_addition: false,
            format: LoadFormat::Ndjson,
        };
        bq.load(&load, receiver).await.unwrap();
        bq.copy_table(&CopyRequest {
            source: "_datasync_staging_orders".into(),
            target: "orders".into(),
            disposition: Disposition::Append,
            job_id: "copy_1".into(),
        })
        .await
        .unwrap();
        bq.merge(&MergeRequest {
            staging: "_datasync_staging_orders".into(),
            target: "orders".into(),
            keys: vec!["id".into()],
            columns: vec!["id".into()],
            order_by: None,
            job_id: Some("merge_1".into()),
            deletes: datasync::schema::Deletes::Keep,
            keys_table: None,
        })
        .await
        .unwrap();
        bq.max_value("orders", "id").await.unwrap();
        bq.query("SELECT 1", &[]).await.unwrap();
    })
    .await;
    // Outside a table's scope (e.g. a query of its own): datasync's and the manifest's labels.
    bq.query("SELECT 2", &[]).await.unwrap();

    let seen = fake.seen();
    let labelled: Vec<(String, Value)> = seen
        .iter()
        .filter(|request| request.method == "POST")
        .filter_map(|request| {
            job_labels(request).map(|labels| (request.path().to_string(), labels))
        })
        .collect();
    let in_run = json!({
        "datasync-run": "1700000000_000001",
        "datasync-table": "orders_2024",
        "managed-by": "datasync",
        "team": "data",
    });
    // The load, the copy, the MERGE (job inserts) and the two queries of the run, then one
    // query outside it.
    let paths: Vec<&str> = labelled.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/upload/bigquery/v2/projects/p/jobs",
            "/bigquery/v2/projects/p/jobs",
            "/bigquery/v2/projects/p/jobs",
            "/bigquery/v2/projects/p/queries",
            "/bigquery/v2/projects/p/queries",
            "/bigquery/v2/projects/p/queries",
        ]
    );
    for (path, labels) in &labelled[..5] {
        assert_eq!(labels, &in_run, "{path}");
    }
    assert_eq!(
        labelled[5].1,
        json!({"managed-by": "datasync", "team": "data"})
    );
    let insert = seen
        .iter()
        .find(|request| request.path() == "/bigquery/v2/projects/p/datasets/d/tables")
        .unwrap()
        .json();
    assert_eq!(
        insert["labels"],
        json!({"managed-by": "datasync", "team": "data"})
    );
    assert_eq!(insert["description"], "Orders placed");
}

#[tokio::test]
async fn update_table_patches_descriptions_and_clustering_and_keeps_the_rest_of_the_schema() {
    let fake = serve(std::sync::Arc::new(bigquery)).await;
    let bq = client(&fake.base);
    bq.update_table(
        "orders",
        &TableUpdate {
            description: Some("Orders placed".into()),
            column_descriptions: vec![
                ("email".into(), "Where receipts go".into()),
                ("kind".into(), "new".into()),
            ],
            clustering: Some(vec!["kind".into(), "id".into()]),
        },
    )
    .await
    .unwrap();
    let seen = fake.seen();
    let patches: Vec<&Seen> = seen
        .iter()
        .filter(|request| request.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "{seen:?}");
    // Read, modified, written back under the etag it was read with.
    assert_eq!(patches[0].header("if-match"), Some("etag-1"));
    assert_eq!(
        patches[0].json(),
        json!({
            "schema": {"fields": [
                {"name": "id", "type": "INTEGER", "mode": "REQUIRED"},
                {"name": "Email", "type": "STRING", "mode": "NULLABLE",
                 "policyTags": {"names": ["projects/p/locations/us/taxonomies/1/policyTags/2"]},
                 "description": "Where receipts go"},
                {"name": "kind", "type": "STRING", "mode": "NULLABLE", "description": "new"}
            ]},
            "description": "Orders placed",
            "clustering": {"fields": ["kind", "id"]}
        })
    );
    // No job ran: a tables.patch bills nothing.
    assert!(seen.iter().all(|request| job_labels(request).is_none()));

    // A clustering change alone needs no read.
    let before = fake.seen().len();
    bq.update_table(
        "orders",
        &TableUpdate {
            clustering: Some(vec!["id".into()]),
            ..TableUpdate::default()
        },
    )
    .await
    .unwrap();
    let after = fake.seen();
    assert_eq!(after.len(), before + 1, "{after:?}");
    assert_eq!(after[before].method, "PATCH");
    assert_eq!(after[before].header("if-match"), None);
    assert_eq!(
        after[before].json(),
        json!({"clustering": {"fields": ["id"]}})
    );

    // A column the table lacks is a clear error, and nothing is patched.
    let error = bq
        .update_table(
            "orders",
            &TableUpdate {
                column_descriptions: vec![("gone".into(), "x".into())],
                ..TableUpdate::default()
            },
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no column `gone`"), "{error}");
    assert_eq!(
        fake.seen().iter().filter(|r| r.method == "PATCH").count(),
        2
    );
}
