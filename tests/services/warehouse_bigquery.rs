//! Integration tests of `warehouse::BigQuery` against the BigQuery emulator.
//!
//! Needs the emulator: `scripts/emulator.sh start` (URL from `DATASYNC_TEST_BIGQUERY_URL`,
//! default `http://127.0.0.1:9050`). Each test works in its own dataset and deletes it.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use datasync::manifest::resolve::BigQuerySpec;
use datasync::schema::{
    BqType, FieldMode, LoadFormat, TimePartitioning, WarehouseField, WarehouseTable,
};
use datasync::warehouse::{
    AlterColumn, BigQuery, CHUNK_GRANULARITY, Disposition, LoadRequest, MergeRequest, QueryParam,
    RetryPolicy, Warehouse, WarehouseError,
};
use futures::FutureExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[expect(
    clippy::disallowed_methods,
    reason = "integration tests read the emulator URL from the environment"
)]
fn emulator_url() -> String {
    std::env::var("DATASYNC_TEST_BIGQUERY_URL").unwrap_or_else(|_| "http://127.0.0.1:9050".into())
}

fn spec(dataset: &str) -> BigQuerySpec {
    BigQuerySpec {
        project: "demo".into(),
        dataset: dataset.into(),
        location: Some("US".into()),
        endpoint: Some(emulator_url()),
        emulator: true,
        create_dataset: true,
        ..BigQuerySpec::default()
    }
}

/// Runs `body` with a client on a fresh dataset, then deletes the dataset (also on failure).
async fn with_dataset<F, Fut>(tag: &str, body: F)
where
    F: FnOnce(BigQuery) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let url = emulator_url();
    let reachable = reqwest::Client::new()
        .get(format!("{url}/bigquery/v2/projects/demo/datasets"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .is_ok_and(|response| response.status().is_success());
    assert!(
        reachable,
        "the BigQuery emulator is not reachable at {url}; run `scripts/emulator.sh start` \
         (or set DATASYNC_TEST_BIGQUERY_URL)"
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dataset = format!(
        "wh_{tag}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let client = BigQuery::new(&spec(&dataset)).unwrap();
    client.ensure_dataset(true).await.unwrap();
    let result = AssertUnwindSafe(body(client)).catch_unwind().await;
    BigQuery::new(&spec(&dataset))
        .unwrap()
        .delete_dataset()
        .await
        .unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn field(name: &str, bq_type: BqType, mode: FieldMode) -> WarehouseField {
    WarehouseField::new(name, bq_type, mode)
}

fn simple_table(name: &str) -> WarehouseTable {
    WarehouseTable {
        name: name.into(),
        fields: vec![
            field("id", BqType::Int64, FieldMode::Required),
            field("name", BqType::String, FieldMode::Nullable),
            field("ts", BqType::Timestamp, FieldMode::Nullable),
        ],
        partitioning: None,
        clustering: Vec::new(),
        description: None,
    }
}

fn request(table: &str, disposition: Disposition, job_id: &str) -> LoadRequest {
    LoadRequest {
        table: table.into(),
        schema: simple_table(table),
        disposition,
        job_id: job_id.into(),
        allow_field_addition: false,
        format: LoadFormat::Ndjson,
    }
}

/// NDJSON lines sent in pieces of at most `piece` bytes, each piece holding whole lines.
fn feed(lines: Vec<String>, piece: usize) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut buffer = String::new();
        for line in lines {
            buffer.push_str(&line);
            buffer.push('\n');
            if buffer.len() >= piece
                && tx
                    .send(Bytes::from(std::mem::take(&mut buffer)))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if !buffer.is_empty() {
            let _ = tx.send(Bytes::from(buffer)).await;
        }
    });
    rx
}

fn rows(range: std::ops::Range<u64>, tag: &str) -> Vec<String> {
    range
        .map(|id| {
            json!({"id": id, "name": format!("{tag}-{id}"), "ts": "2024-01-02T03:04:05.123456Z"})
                .to_string()
        })
        .collect()
}

async fn count(client: &BigQuery, table: &str) -> u64 {
    let sql = format!("SELECT COUNT(*) AS c FROM {}", client.qualified(table));
    let result = client.query(&sql, &[]).await.unwrap();
    result.scalar().and_then(Value::as_u64).unwrap()
}

#[tokio::test]
async fn dataset_must_exist_unless_created() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    with_dataset("ds", |_| async move {
        let missing = BigQuery::new(&spec(&format!("wh_missing_{nanos}"))).unwrap();
        let error = missing.ensure_dataset(false).await.unwrap_err();
        assert!(
            matches!(error, WarehouseError::DatasetMissing { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("create_dataset"), "{error}");
        missing.ensure_dataset(true).await.unwrap();
        missing.ensure_dataset(false).await.unwrap();
        missing.ensure_dataset(true).await.unwrap();
        missing.delete_dataset().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn create_and_get_table_with_all_types() {
    with_dataset("types", |client| async move {
        let mut numeric = field("n", BqType::Numeric, FieldMode::Nullable);
        numeric.precision = Some(20);
        numeric.scale = Some(2);
        let mut short = field("s", BqType::String, FieldMode::Nullable);
        short.max_length = Some(10);
        short.description = Some("a short string".into());
        let table = WarehouseTable {
            name: "all_types".into(),
            fields: vec![
                field("id", BqType::Int64, FieldMode::Required),
                numeric,
                short,
                field("j", BqType::Json, FieldMode::Nullable),
                field("dt", BqType::Datetime, FieldMode::Nullable),
                field("ts", BqType::Timestamp, FieldMode::Nullable),
                field("t", BqType::Time, FieldMode::Nullable),
                field("d", BqType::Date, FieldMode::Nullable),
                field("b", BqType::Bytes, FieldMode::Nullable),
                field("bo", BqType::Bool, FieldMode::Nullable),
                field("f", BqType::Float64, FieldMode::Nullable),
                field("g", BqType::Geography, FieldMode::Nullable),
                field("arr", BqType::Int64, FieldMode::Repeated),
            ],
            partitioning: Some(TimePartitioning {
                granularity: "DAY".into(),
                field: "ts".into(),
            }),
            clustering: vec!["id".into()],
            description: Some("Every type".into()),
        };
        assert!(client.get_table("all_types").await.unwrap().is_none());
        client.create_table(&table).await.unwrap();
        let got = client
            .get_table("all_types")
            .await
            .unwrap()
            .expect("table exists");
        let shape = |table: &WarehouseTable| {
            table
                .fields
                .iter()
                .map(|field| (field.name.clone(), field.bq_type, field.mode))
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&got.table), shape(&table));
        assert_eq!(got.table.name, "all_types");
        assert_eq!(got.table.description.as_deref(), Some("Every type"));
        // The emulator drops precision/scale/maxLength (documented); real BigQuery keeps them.
        let error = client.create_table(&table).await.unwrap_err();
        assert!(error.is_duplicate(), "{error}");
        assert!(error.to_string().contains("all_types"), "{error}");

        // BIGNUMERIC: the emulator can't store it (DuckDB DECIMAL(76,38)); accept either a clean
        // error naming the table or a working column.
        let big = WarehouseTable {
            name: "big".into(),
            fields: vec![field("x", BqType::BigNumeric, FieldMode::Nullable)],
            partitioning: None,
            clustering: Vec::new(),
            description: None,
        };
        let strict = BigQuery::new(&spec(client.dataset()))
            .unwrap()
            .with_retry_policy(RetryPolicy::none());
        match strict.create_table(&big).await {
            Ok(()) => {
                let got = strict.get_table("big").await.unwrap().unwrap();
                assert_eq!(got.table.fields[0].bq_type, BqType::BigNumeric);
            }
            Err(error) => assert!(
                error.to_string().contains("create table") && error.to_string().contains("big"),
                "{error}"
            ),
        }

        client.drop_table("all_types").await.unwrap();
        client.drop_table("all_types").await.unwrap();
        assert!(client.get_table("all_types").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn alter_table_adds_columns_and_relaxes() {
    with_dataset("alter", |client| async move {
        client.create_table(&simple_table("t")).await.unwrap();
        let changes = [
            AlterColumn::Add(field("extra", BqType::String, FieldMode::Nullable)),
            AlterColumn::Add(field("amount", BqType::Numeric, FieldMode::Nullable)),
            AlterColumn::DropNotNull("id".into()),
        ];
        client.alter_table("t", &changes).await.unwrap();
        let got = client.get_table("t").await.unwrap().unwrap().table;
        let names: Vec<&str> = got.fields.iter().map(|field| field.name.as_str()).collect();
        assert_eq!(names, ["id", "name", "ts", "extra", "amount"]);
        assert_eq!(got.fields[0].mode, FieldMode::Nullable);
        assert_eq!(got.fields[4].bq_type, BqType::Numeric);
        // The stored table has the columns too (and NUMERIC keeps 38 digits: the emulator would
        // make a bare NUMERIC in DDL a DECIMAL(18,3)). A bare decimal literal goes through
        // DOUBLE on the emulator, hence the NUMERIC '…' literal.
        let sql = format!(
            "INSERT INTO {} (id, extra, amount) VALUES (NULL, 'x', NUMERIC '12345678901234567890.123456789')",
            client.qualified("t")
        );
        assert_eq!(client.query(&sql, &[]).await.unwrap().num_dml_affected_rows, Some(1));
        let sql = format!("SELECT extra, amount FROM {}", client.qualified("t"));
        let result = client.query(&sql, &[]).await.unwrap();
        assert_eq!(result.rows[0][0], json!("x"));
        assert!(result.rows[0][1].as_str().unwrap().starts_with("12345678901234567890.123456789"));

        // Widening INT64 -> FLOAT64 (stored table and catalog).
        client.alter_table("t", &[AlterColumn::SetType(field("id", BqType::Float64, FieldMode::Nullable))]).await.unwrap();
        let got = client.get_table("t").await.unwrap().unwrap().table;
        assert_eq!((got.fields[0].bq_type, got.fields[0].mode), (BqType::Float64, FieldMode::Nullable));
        let sql = format!("INSERT INTO {} (id) VALUES (1.5)", client.qualified("t"));
        client.query(&sql, &[]).await.unwrap();
        assert_eq!(client.max_value("t", "id").await.unwrap(), json!(1.5));
        // A failing statement names the table.
        let error = client.alter_table("t", &[AlterColumn::DropNotNull("nope".into())]).await.unwrap_err();
        assert!(error.to_string().contains("alter table") && error.to_string().contains(".t"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn load_10k_rows_in_several_chunks() {
    with_dataset("load10k", |client| async move {
        let client = client.with_chunk_size(CHUNK_GRANULARITY).unwrap();
        let lines = rows(0..10_000, "padding-padding-padding-padding-padding");
        let total: usize = lines.iter().map(|line| line.len() + 1).sum();
        assert!(
            total > 3 * CHUNK_GRANULARITY,
            "want several PUTs, have {total} bytes"
        );
        let outcome = client
            .load(
                &request("big", Disposition::Truncate, "load10k_1"),
                feed(lines, 10_000),
            )
            .await
            .unwrap();
        assert_eq!(outcome.output_rows, 10_000);
        assert_eq!(outcome.bytes, total as u64);
        assert_eq!(count(&client, "big").await, 10_000);
        let sql = format!(
            "SELECT name, ts FROM {} WHERE id = 9999",
            client.qualified("big")
        );
        let result = client.query(&sql, &[]).await.unwrap();
        assert_eq!(
            result.rows[0][0],
            json!("padding-padding-padding-padding-padding-9999")
        );
        assert_eq!(result.rows[0][1], json!(1_704_164_645_123_456_i64));
    })
    .await;
}

#[tokio::test]
async fn truncate_replaces_and_append_appends() {
    with_dataset("dispo", |client| async move {
        client
            .load(
                &request("t", Disposition::Truncate, "tr_1"),
                feed(rows(0..5, "a"), 100),
            )
            .await
            .unwrap();
        assert_eq!(count(&client, "t").await, 5);
        let outcome = client
            .load(
                &request("t", Disposition::Truncate, "tr_2"),
                feed(rows(10..12, "b"), 100),
            )
            .await
            .unwrap();
        assert_eq!(outcome.output_rows, 2);
        assert_eq!(count(&client, "t").await, 2);
        client
            .load(
                &request("t", Disposition::Append, "ap_1"),
                feed(rows(20..23, "c"), 100),
            )
            .await
            .unwrap();
        assert_eq!(count(&client, "t").await, 5);
    })
    .await;
}

#[tokio::test]
async fn bad_row_fails_and_keeps_the_table() {
    with_dataset("badrow", |client| async move {
        client
            .load(
                &request("t", Disposition::Truncate, "good_1"),
                feed(rows(0..3, "a"), 100),
            )
            .await
            .unwrap();
        let mut lines = rows(3..5, "b");
        lines.push(json!({"id": "not-a-number", "name": "x"}).to_string());
        let error = client
            .load(
                &request("t", Disposition::Append, "bad_1"),
                feed(lines, 100),
            )
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, WarehouseError::Job { .. }), "{text}");
        assert_eq!(error.reason(), Some("invalid"), "{text}");
        assert!(text.contains(".t (job bad_1)"), "{text}");
        assert!(!error.retryable());
        assert_eq!(count(&client, "t").await, 3);
    })
    .await;
}

#[tokio::test]
async fn same_job_id_twice_is_idempotent() {
    with_dataset("idem", |client| async move {
        let first = client
            .load(
                &request("t", Disposition::Append, "idem_1"),
                feed(rows(0..4, "a"), 100),
            )
            .await
            .unwrap();
        let second = client
            .load(
                &request("t", Disposition::Append, "idem_1"),
                feed(rows(0..4, "a"), 100),
            )
            .await
            .unwrap();
        assert_eq!(first, second);
        assert_eq!(count(&client, "t").await, 4);
    })
    .await;
}

#[tokio::test]
async fn empty_loads() {
    with_dataset("empty", |client| async move {
        // Missing table: created with the schema, no rows.
        let outcome = client
            .load(
                &request("t", Disposition::Truncate, "empty_1"),
                feed(Vec::new(), 100),
            )
            .await
            .unwrap();
        assert_eq!((outcome.output_rows, outcome.bytes), (0, 0));
        let got = client.get_table("t").await.unwrap().unwrap();
        assert_eq!(got.table.fields.len(), 3);
        assert_eq!(count(&client, "t").await, 0);
        // Existing rows: truncated by an empty WRITE_TRUNCATE, kept by an empty append.
        client
            .load(
                &request("t", Disposition::Append, "empty_2"),
                feed(rows(0..3, "a"), 100),
            )
            .await
            .unwrap();
        client
            .load(
                &request("t", Disposition::Append, "empty_3"),
                feed(Vec::new(), 100),
            )
            .await
            .unwrap();
        assert_eq!(count(&client, "t").await, 3);
        client
            .load(
                &request("t", Disposition::Truncate, "empty_4"),
                feed(Vec::new(), 100),
            )
            .await
            .unwrap();
        assert_eq!(count(&client, "t").await, 0);
    })
    .await;
}

#[tokio::test]
async fn merge_and_max_value() {
    with_dataset("merge", |client| async move {
        client
            .load(
                &request("target", Disposition::Truncate, "m_1"),
                feed(rows(1..4, "old"), 100),
            )
            .await
            .unwrap();
        let staging = vec![
            json!({"id": 3, "name": "new-3", "ts": "2024-05-01T00:00:00Z"}).to_string(),
            json!({"id": 4, "name": "new-4", "ts": "2024-05-02T00:00:00Z"}).to_string(),
        ];
        client
            .load(
                &request("staging", Disposition::Truncate, "m_2"),
                feed(staging, 100),
            )
            .await
            .unwrap();
        let merge = MergeRequest {
            staging: "staging".into(),
            target: "target".into(),
            keys: vec!["id".into()],
            columns: vec!["id".into(), "name".into(), "ts".into()],
            order_by: None,
            job_id: None,
            deletes: datasync::schema::Deletes::Keep,
            keys_table: None,
        };
        let outcome = client.merge(&merge).await.unwrap();
        assert_eq!(outcome.affected_rows, 2);
        if let (Some(inserted), Some(updated)) = (outcome.inserted, outcome.updated) {
            assert_eq!((inserted, updated), (1, 1));
        }
        let sql = format!(
            "SELECT id, name FROM {} ORDER BY id",
            client.qualified("target")
        );
        let result = client.query(&sql, &[]).await.unwrap();
        let got: Vec<(Value, Value)> = result
            .rows
            .iter()
            .map(|row| (row[0].clone(), row[1].clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (json!(1), json!("old-1")),
                (json!(2), json!("old-2")),
                (json!(3), json!("new-3")),
                (json!(4), json!("new-4"))
            ]
        );
        assert_eq!(client.max_value("target", "id").await.unwrap(), json!(4));
        // 2024-05-02T00:00:00Z in microseconds.
        assert_eq!(
            client.max_value("target", "ts").await.unwrap(),
            json!(1_714_608_000_000_000_i64)
        );
        client
            .load(
                &request("nothing", Disposition::Truncate, "m_3"),
                feed(Vec::new(), 100),
            )
            .await
            .unwrap();
        assert_eq!(
            client.max_value("nothing", "id").await.unwrap(),
            Value::Null
        );
        let error = client.max_value("missing", "id").await.unwrap_err();
        assert!(
            error.is_not_found() && error.to_string().contains("missing"),
            "{error}"
        );
    })
    .await;
}

#[tokio::test]
async fn query_with_named_parameters_and_errors() {
    with_dataset("params", |client| async move {
        client
            .load(
                &request("t", Disposition::Truncate, "p_1"),
                feed(rows(0..10, "a"), 100),
            )
            .await
            .unwrap();
        let sql = format!(
            "SELECT COUNT(*) AS c FROM {} WHERE id >= @min_id AND ts <= @max_ts AND name != @name",
            client.qualified("t")
        );
        let params = [
            QueryParam::new("min_id", BqType::Int64, Some("5".into())),
            QueryParam::new(
                "max_ts",
                BqType::Timestamp,
                Some("2024-01-02 03:04:05.123456+00:00".into()),
            ),
            QueryParam::new("name", BqType::String, Some("a-9".into())),
        ];
        let result = client.query(&sql, &params).await.unwrap();
        assert_eq!(result.scalar(), Some(&json!(4)));
        assert_eq!(result.columns[0].name, "c");
        assert_eq!(result.columns[0].bq_type, Some(BqType::Int64));

        // The emulator answers 200 with `errors` for a missing table; that must be an error.
        let sql = format!("SELECT * FROM {}", client.qualified("missing"));
        let error = client.query(&sql, &[]).await.unwrap_err();
        assert!(error.is_not_found(), "{error}");
        assert!(error.to_string().contains("missing"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn write_empty_onto_a_non_empty_table() {
    with_dataset("wempty", |client| async move {
        client
            .load(
                &request("t", Disposition::Empty, "we_1"),
                feed(rows(0..2, "a"), 100),
            )
            .await
            .unwrap();
        let result = client
            .load(
                &request("t", Disposition::Empty, "we_2"),
                feed(rows(2..3, "b"), 100),
            )
            .await;
        // The emulator refuses with HTTP 400 on the upload; real BigQuery fails the job
        // (errorResult). Either way: an error naming the job, and the rows stay.
        let error = result.unwrap_err();
        assert!(error.to_string().contains("(job we_2)"), "{error}");
        assert!(!error.retryable(), "{error}");
        assert_eq!(count(&client, "t").await, 2);
    })
    .await;
}
