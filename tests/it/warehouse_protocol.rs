//! Protocol tests of `warehouse::BigQuery` against a tiny local HTTP server with canned answers:
//! retries, resumable-upload chunking and recovery, duplicate job IDs, job errors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use datasync::manifest::resolve::BigQuerySpec;
use datasync::schema::{BqType, FieldMode, LoadFormat, WarehouseField, WarehouseTable};
use datasync::warehouse::{
    BigQuery, CHUNK_GRANULARITY, Disposition, LoadRequest, RetryPolicy, Warehouse, WarehouseError,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::support::fakes::{self, Reply as Canned, Seen, reply as canned};

type Handler = fakes::BaseHandler;

/// Starts a server (the shared loopback fake); returns its base URL and the requests it saw.
async fn serve(handler: Handler) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let fake = fakes::serve_with_base(handler).await;
    (fake.base.clone(), fake.log())
}

fn client(base: &str) -> BigQuery {
    client_in(base, Some("US"))
}

/// A client whose `bigquery.location` is `location`.
fn client_in(base: &str, location: Option<&str>) -> BigQuery {
    let spec = BigQuerySpec {
        project: "p".into(),
        dataset: "d".into(),
        location: location.map(str::to_string),
        endpoint: Some(base.into()),
        emulator: true,
        create_dataset: false,
        ..BigQuerySpec::default()
    };
    BigQuery::new(&spec)
        .unwrap()
        .with_retry_policy(RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            ..RetryPolicy::default()
        })
}

fn load_request(job_id: &str) -> LoadRequest {
    LoadRequest {
        table: "t".into(),
        schema: WarehouseTable {
            name: "t".into(),
            fields: vec![WarehouseField::new(
                "id",
                BqType::Int64,
                FieldMode::Required,
            )],
            partitioning: None,
            clustering: Vec::new(),
            description: None,
        },
        disposition: Disposition::Truncate,
        job_id: job_id.into(),
        allow_field_addition: false,
        format: LoadFormat::Ndjson,
    }
}

fn feed(data: Vec<u8>, piece: usize) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        for chunk in data.chunks(piece) {
            if tx.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The requests but the datasets.get that tells the client where the dataset is.
fn without_dataset_reads(seen: &[Seen]) -> Vec<Seen> {
    seen.iter()
        .filter(|request| !request.target.ends_with("/datasets/d"))
        .cloned()
        .collect()
}

const DATASET_US: &str =
    r#"{"datasetReference":{"projectId":"p","datasetId":"d"},"location":"US"}"#;

const NOT_FOUND: &str = r#"{"error":{"code":404,"message":"Not found: Job p:x","errors":[{"reason":"notFound","message":"Not found"}]}}"#;

#[tokio::test]
async fn retries_transient_errors_with_retry_after() {
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let (base, seen) = serve(Arc::new(move |_, _| {
        let mut calls = counter.lock().unwrap();
        *calls += 1;
        match *calls {
            1 => canned(503, r#"{"error":{"code":503,"message":"try later","errors":[{"reason":"backendError"}]}}"#),
            2 => Canned {
                status: 429,
                headers: vec![("Retry-After".into(), "0".into())],
                body: r#"{"error":{"code":429,"message":"slow down","errors":[{"reason":"rateLimitExceeded"}]}}"#.into(),
            },
            3 => canned(403, r#"{"error":{"code":403,"message":"quota","errors":[{"reason":"rateLimitExceeded"}]}}"#),
            _ => canned(200, r#"{"datasetReference":{"projectId":"p","datasetId":"d"}}"#),
        }
    }))
    .await;
    client(&base).ensure_dataset(false).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.iter()
            .all(|request| request.target == "/bigquery/v2/projects/p/datasets/d")
    );
    assert!(
        seen.iter()
            .all(|request| request.header("authorization") == Some("Bearer emulator-dummy-token"))
    );
}

#[tokio::test]
async fn gives_up_after_max_attempts_and_does_not_retry_client_errors() {
    let (base, seen) = serve(Arc::new(|request, _| {
        if request.target.contains("/tables/") {
            canned(500, r#"{"error":{"code":500,"message":"boom","errors":[{"reason":"internalError"}]}}"#)
        } else {
            canned(400, r#"{"error":{"code":400,"message":"Invalid dataset name","errors":[{"reason":"invalid"}]}}"#)
        }
    }))
    .await;
    let bq = client(&base);
    let error = bq.get_table("orders").await.unwrap_err();
    assert!(error.retryable());
    assert_eq!(
        error.to_string(),
        "get table d.orders: BigQuery error (HTTP 500, reason internalError): boom"
    );
    assert_eq!(seen.lock().unwrap().len(), 4);
    let error = bq.ensure_dataset(false).await.unwrap_err();
    assert!(!error.retryable());
    assert!(error.to_string().contains("reason invalid"), "{error}");
    assert_eq!(seen.lock().unwrap().len(), 5);
}

#[tokio::test]
async fn bad_responses_are_errors_not_panics() {
    let (base, _) = serve(Arc::new(|request, _| {
        if request.target.contains("/tables/") {
            canned(200, "this is not json")
        } else {
            canned(200, r#"{"jobComplete":true,"schema":{"fields":[{"name":"x","type":"INTEGER"}]},"rows":[{"f":[{"v":"1"}]},{"f":[]},{}]}"#)
        }
    }))
    .await;
    let bq = client(&base);
    let error = bq.get_table("t").await.unwrap_err();
    assert!(matches!(error, WarehouseError::Protocol { .. }), "{error}");
    assert!(error.to_string().contains("get table d.t"), "{error}");
    let rows = bq.query("SELECT 1", &[]).await.unwrap();
    assert_eq!(rows.rows.len(), 3);
}

/// A resumable-upload server: accepts only half of the second chunk, fails the third PUT with
/// 503 once (the client then probes with `bytes */*`), finishes with a RUNNING job that jobs.get
/// reports DONE on the second poll.
#[tokio::test]
async fn resumable_upload_chunks_resends_and_recovers() {
    #[derive(Default)]
    struct Upload {
        data: Vec<u8>,
        puts: usize,
        job_gets: usize,
    }
    let state = Arc::new(Mutex::new(Upload::default()));
    let server_state = state.clone();
    let (base, seen) = serve(Arc::new(move |request, base| {
        let mut state = server_state.lock().unwrap();
        let path = request.target.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("GET", "/bigquery/v2/projects/p/jobs/job_1") => canned(404, NOT_FOUND),
            ("POST", "/upload/bigquery/v2/projects/p/jobs") => Canned {
                status: 200,
                headers: vec![("Location".into(), format!("{base}/upload/session?upload_id=secret"))],
                body: String::new(),
            },
            ("PUT", "/upload/session") => {
                state.puts += 1;
                let range = request.header("content-range").unwrap_or_default().to_string();
                let spec = range.strip_prefix("bytes ").unwrap();
                let (span, total) = spec.split_once('/').unwrap();
                let committed = |state: &Upload| {
                    if state.data.is_empty() {
                        Canned { status: 308, headers: Vec::new(), body: String::new() }
                    } else {
                        Canned {
                            status: 308,
                            headers: vec![("Range".into(), format!("bytes=0-{}", state.data.len() - 1))],
                            body: String::new(),
                        }
                    }
                };
                if span == "*" {
                    return committed(&state);
                }
                if state.puts == 3 {
                    return canned(503, r#"{"error":{"code":503,"message":"flaky","errors":[{"reason":"backendError"}]}}"#);
                }
                let start: usize = span.split_once('-').unwrap().0.parse().unwrap();
                assert_eq!(start, state.data.len(), "chunk must start at the committed offset");
                let keep = if state.puts == 2 { request.body.len() / 2 } else { request.body.len() };
                state.data.extend_from_slice(&request.body[..keep]);
                if total == "*" {
                    assert_eq!(request.body.len() % CHUNK_GRANULARITY, 0, "non-final chunks are 256 KiB multiples");
                    committed(&state)
                } else {
                    assert_eq!(total.parse::<usize>().unwrap(), state.data.len());
                    canned(200, r#"{"jobReference":{"projectId":"p","jobId":"srv_1","location":"US"},"status":{"state":"RUNNING"}}"#)
                }
            }
            ("GET", "/bigquery/v2/projects/p/jobs/srv_1") => {
                state.job_gets += 1;
                if state.job_gets < 2 {
                    canned(200, r#"{"jobReference":{"jobId":"srv_1"},"status":{"state":"RUNNING"}}"#)
                } else {
                    canned(
                        200,
                        r#"{"jobReference":{"jobId":"srv_1"},"status":{"state":"DONE"},"statistics":{"load":{"outputRows":"4242"}}}"#,
                    )
                }
            }
            ("GET", "/bigquery/v2/projects/p/datasets/d") => canned(200, DATASET_US),
            _ => canned(500, "unexpected request"),
        }
    }))
    .await;

    let input: Vec<u8> = (0..3 * CHUNK_GRANULARITY + 1000)
        .map(|index| (index % 251) as u8)
        .collect();
    let bq = client(&base).with_chunk_size(CHUNK_GRANULARITY).unwrap();
    let outcome = bq
        .load(&load_request("job_1"), feed(input.clone(), 100_000))
        .await
        .unwrap();
    assert_eq!(outcome.job_id, "srv_1");
    assert_eq!(outcome.output_rows, 4242);
    assert_eq!(outcome.bytes, input.len() as u64);
    assert_eq!(state.lock().unwrap().data, input);

    let seen = seen.lock().unwrap();
    let init = seen
        .iter()
        .find(|request| request.method == "POST")
        .unwrap();
    let job: serde_json::Value = serde_json::from_slice(&init.body).unwrap();
    assert_eq!(job["jobReference"]["jobId"], "job_1");
    assert_eq!(
        job["configuration"]["load"]["writeDisposition"],
        "WRITE_TRUNCATE"
    );
    assert_eq!(
        job["configuration"]["load"]["sourceFormat"],
        "NEWLINE_DELIMITED_JSON"
    );
    assert_eq!(
        job["configuration"]["load"]["schema"]["fields"][0]["mode"],
        "REQUIRED"
    );
    let ranges: Vec<&str> = seen
        .iter()
        .filter(|request| request.method == "PUT")
        .map(|request| request.header("content-range").unwrap())
        .collect();
    let c = CHUNK_GRANULARITY;
    let half = c / 2;
    let total = input.len();
    assert_eq!(
        ranges,
        vec![
            format!("bytes 0-{}/*", c - 1),
            // the server kept half of this one …
            format!("bytes {c}-{}/*", 2 * c - 1),
            // … so the next starts there; this PUT gets a 503 …
            format!("bytes {}-{}/*", c + half, 2 * c + half - 1),
            // … so the client asks for the status and resends.
            "bytes */*".to_string(),
            format!("bytes {}-{}/*", c + half, 2 * c + half - 1),
            // the rest (less than a chunk) is the final PUT, with the total
            format!("bytes {}-{}/{total}", 2 * c + half, total - 1),
        ]
    );
}

#[tokio::test]
async fn duplicate_job_id_fetches_the_existing_job() {
    let gets = Arc::new(Mutex::new(0));
    let counter = gets.clone();
    let (base, seen) = serve(Arc::new(move |request, _| {
        let path = request.target.split('?').next().unwrap_or_default().to_string();
        match (request.method.as_str(), path.as_str()) {
            ("GET", "/bigquery/v2/projects/p/jobs/dup_1") => {
                let mut gets = counter.lock().unwrap();
                *gets += 1;
                if *gets == 1 {
                    canned(404, NOT_FOUND)
                } else {
                    canned(
                        200,
                        r#"{"jobReference":{"jobId":"dup_1"},"status":{"state":"DONE"},"statistics":{"load":{"outputRows":"7","inputFileBytes":"70"}}}"#,
                    )
                }
            }
            ("POST", "/upload/bigquery/v2/projects/p/jobs") => {
                canned(409, r#"{"error":{"code":409,"message":"Already Exists: Job p:US.dup_1","errors":[{"reason":"duplicate"}]}}"#)
            }
            ("GET", "/bigquery/v2/projects/p/datasets/d") => canned(200, DATASET_US),
            _ => canned(500, "unexpected"),
        }
    }))
    .await;
    let bq = client(&base);
    let outcome = bq
        .load(&load_request("dup_1"), feed(b"{\"id\":1}\n".to_vec(), 100))
        .await
        .unwrap();
    assert_eq!(
        (outcome.job_id.as_str(), outcome.output_rows, outcome.bytes),
        ("dup_1", 7, 70)
    );
    // A second call in the same process is answered from memory.
    let again = bq
        .load(&load_request("dup_1"), feed(Vec::new(), 100))
        .await
        .unwrap();
    assert_eq!(again, outcome);
    // The dataset is read once (for its location), then the probe, the upload and jobs.get.
    assert_eq!(seen.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn existing_failed_job_reports_its_error() {
    let (base, _) = serve(Arc::new(|_, _| {
        canned(
            200,
            r#"{"jobReference":{"jobId":"old_1"},"status":{"state":"DONE","errorResult":{"reason":"invalid","message":"Error while reading data"},"errors":[{"reason":"invalid","message":"Error while reading data"}]}}"#,
        )
    }))
    .await;
    let error = client(&base)
        .load(&load_request("old_1"), feed(b"{}\n".to_vec(), 100))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "load table d.t (job old_1): job old_1 failed (reason invalid): Error while reading data"
    );
    assert!(!error.retryable());
}

#[tokio::test]
async fn invalid_chunk_sizes_and_job_ids_are_rejected() {
    let (base, seen) = serve(Arc::new(|_, _| canned(500, "unexpected"))).await;
    assert!(client(&base).with_chunk_size(1_000_000).is_err());
    assert!(client(&base).with_chunk_size(0).is_err());
    let error = client(&base)
        .load(&load_request("bad id!"), feed(Vec::new(), 1))
        .await
        .unwrap_err();
    assert!(matches!(error, WarehouseError::Invalid(_)), "{error}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn unreachable_server_is_a_retryable_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = client(&base).get_table("t").await.unwrap_err();
    assert!(matches!(error, WarehouseError::Transport { .. }), "{error}");
    assert!(error.retryable());
    assert!(
        error
            .to_string()
            .starts_with("get table d.t: cannot reach BigQuery"),
        "{error}"
    );
}

#[tokio::test]
async fn query_polls_until_complete_and_reads_every_page() {
    let (base, seen) = serve(Arc::new(|request, _| {
        let path = request.target.split('?').next().unwrap_or_default();
        let query = request.target.split_once('?').map(|(_, query)| query).unwrap_or_default();
        match (request.method.as_str(), path) {
            ("POST", "/bigquery/v2/projects/p/queries") => {
                canned(200, r#"{"jobReference":{"projectId":"p","jobId":"q1","location":"EU"},"jobComplete":false}"#)
            }
            ("GET", "/bigquery/v2/projects/p/queries/q1") if query.contains("pageToken=next") => canned(
                200,
                r#"{"jobReference":{"jobId":"q1"},"jobComplete":true,"schema":{"fields":[{"name":"n","type":"INTEGER"},{"name":"ts","type":"TIMESTAMP"}]},"rows":[{"f":[{"v":"2"},{"v":null}]}]}"#,
            ),
            ("GET", "/bigquery/v2/projects/p/queries/q1") => canned(
                200,
                r#"{"jobReference":{"jobId":"q1"},"jobComplete":true,"schema":{"fields":[{"name":"n","type":"INTEGER"},{"name":"ts","type":"TIMESTAMP"}]},"rows":[{"f":[{"v":"1"},{"v":"1704164645123456"}]}],"pageToken":"next"}"#,
            ),
            ("GET", "/bigquery/v2/projects/p/datasets/d") => canned(200, DATASET_US),
            _ => canned(500, "unexpected"),
        }
    }))
    .await;
    let params = [
        datasync::warehouse::QueryParam::new("min", BqType::Int64, Some("1".into())),
        datasync::warehouse::QueryParam::new("none", BqType::String, None),
    ];
    let result = client(&base)
        .query("SELECT n, ts FROM t WHERE n >= @min", &params)
        .await
        .unwrap();
    assert_eq!(
        result.rows,
        vec![
            vec![
                serde_json::json!(1),
                serde_json::json!(1_704_164_645_123_456_i64)
            ],
            vec![serde_json::json!(2), serde_json::Value::Null]
        ]
    );
    let seen: Vec<Seen> = without_dataset_reads(&seen.lock().unwrap());
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["useLegacySql"], false);
    assert_eq!(body["formatOptions"]["useInt64Timestamp"], true);
    assert_eq!(body["parameterMode"], "NAMED");
    assert_eq!(
        body["queryParameters"],
        serde_json::json!([
            {"name": "min", "parameterType": {"type": "INT64"}, "parameterValue": {"value": "1"}},
            {"name": "none", "parameterType": {"type": "STRING"}, "parameterValue": {}}
        ])
    );
    assert_eq!(body["requestId"].as_str().map(str::len), Some(36));
    // Polls and pages go to the job's location with int64 timestamps.
    assert!(seen[1..].iter().all(|request| {
        request.target.contains("location=EU")
            && request
                .target
                .contains("formatOptions.useInt64Timestamp=true")
    }));
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn query_errors_in_a_200_response_are_errors() {
    let (base, _) = serve(Arc::new(|_, _| {
        canned(
            200,
            r#"{"jobComplete":true,"rows":[],"errors":[{"reason":"notFound","message":"Not found: Table p:d.gone","location":"query"}]}"#,
        )
    }))
    .await;
    let error = client(&base)
        .query("SELECT * FROM d.gone", &[])
        .await
        .unwrap_err();
    assert!(error.is_not_found());
    assert_eq!(
        error.to_string(),
        "query in dataset d (SELECT * FROM d.gone): BigQuery error (HTTP 200, reason notFound): Not found: Table p:d.gone"
    );
}

/// The `location` a job call carries: the `location` query parameter, else the body's
/// `location` (jobs.query) or `jobReference.location` (jobs.insert).
fn job_location(request: &Seen) -> Option<String> {
    let query = request
        .target
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default();
    if let Some(value) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("location="))
    {
        return Some(value.to_string());
    }
    let body: serde_json::Value = serde_json::from_slice(&request.body).ok()?;
    body["location"]
        .as_str()
        .or(body["jobReference"]["location"].as_str())
        .map(str::to_string)
}

const TABLE_T: &str = r#"{"tableReference":{"projectId":"p","datasetId":"d","tableId":"t"},"schema":{"fields":[{"name":"id","type":"INTEGER","mode":"REQUIRED"}]}}"#;

/// A recording BigQuery whose dataset is in `europe-west3`; job answers carry no location, so
/// every later call has to know it from the dataset.
fn europe_west3(request: &Seen, base: &str) -> Canned {
    let path = request.target.split('?').next().unwrap_or_default();
    match (request.method.as_str(), path) {
        ("GET", "/bigquery/v2/projects/p/datasets/d") => canned(
            200,
            r#"{"datasetReference":{"projectId":"p","datasetId":"d"},"location":"europe-west3"}"#,
        ),
        ("GET", "/bigquery/v2/projects/p/datasets/d/tables/t") => canned(200, TABLE_T),
        ("POST", "/bigquery/v2/projects/p/queries") => canned(
            200,
            r#"{"jobReference":{"projectId":"p","jobId":"q1"},"jobComplete":false}"#,
        ),
        ("GET", "/bigquery/v2/projects/p/queries/q1") => canned(
            200,
            r#"{"jobReference":{"jobId":"q1"},"jobComplete":true,"schema":{"fields":[{"name":"m","type":"INTEGER"}]},"rows":[{"f":[{"v":"1"}]}],"numDmlAffectedRows":"1"}"#,
        ),
        ("GET", "/bigquery/v2/projects/p/jobs/eu_1") => canned(404, NOT_FOUND),
        ("POST", "/upload/bigquery/v2/projects/p/jobs") => Canned {
            status: 200,
            headers: vec![(
                "Location".into(),
                format!("{base}/upload/session?upload_id=x"),
            )],
            body: String::new(),
        },
        ("PUT", "/upload/session") => canned(
            200,
            r#"{"jobReference":{"projectId":"p","jobId":"eu_1"},"status":{"state":"RUNNING"}}"#,
        ),
        ("GET", "/bigquery/v2/projects/p/jobs/eu_1_done") => canned(200, "{}"),
        ("POST", "/bigquery/v2/projects/p/jobs/eu_1/cancel") => canned(200, "{}"),
        _ => canned(500, "unexpected request"),
    }
}

#[tokio::test]
async fn every_job_call_runs_in_the_datasets_location() {
    let polls = Arc::new(Mutex::new(0));
    let counter = polls.clone();
    let (base, seen) = serve(Arc::new(move |request, base| {
        let path = request.target.split('?').next().unwrap_or_default();
        if request.method == "GET" && path == "/bigquery/v2/projects/p/jobs/eu_1" {
            // The pre-load idempotency probe: no such job; then the upload's job, running, done.
            let mut polls = counter.lock().unwrap();
            *polls += 1;
            return match *polls {
                1 => canned(404, NOT_FOUND),
                2 => canned(200, r#"{"jobReference":{"jobId":"eu_1"},"status":{"state":"RUNNING"}}"#),
                _ => canned(
                    200,
                    r#"{"jobReference":{"jobId":"eu_1"},"status":{"state":"DONE"},"statistics":{"load":{"outputRows":"1"}}}"#,
                ),
            };
        }
        europe_west3(request, base)
    }))
    .await;
    // No `bigquery.location`: the dataset's own location is used.
    let bq = client_in(&base, None).without_emulator_quirks();
    bq.ensure_dataset(false).await.unwrap();
    bq.query("SELECT 1", &[]).await.unwrap();
    bq.load(&load_request("eu_1"), feed(b"{\"id\":1}\n".to_vec(), 100))
        .await
        .unwrap();
    bq.insert_from("t", "t", &["id".to_string()], true)
        .await
        .unwrap();
    bq.max_value("t", "id").await.unwrap();
    bq.cancel_job("eu_1").await.unwrap();

    // A fresh client that never called ensure_dataset learns the location too.
    let fresh = client_in(&base, None).without_emulator_quirks();
    fresh.query("SELECT 2", &[]).await.unwrap();

    let seen = seen.lock().unwrap();
    let job_calls: Vec<&Seen> = seen
        .iter()
        .filter(|request| request.target.contains("/jobs") || request.target.contains("/queries"))
        .collect();
    assert!(job_calls.len() >= 12, "{job_calls:?}");
    for request in job_calls {
        assert_eq!(
            job_location(request).as_deref(),
            Some("europe-west3"),
            "{} {}",
            request.method,
            request.target
        );
    }
}

#[tokio::test]
async fn a_configured_location_that_differs_from_the_datasets_is_a_clear_error() {
    let (base, seen) = serve(Arc::new(europe_west3)).await;
    let bq = client_in(&base, Some("US"));
    let error = bq.ensure_dataset(false).await.unwrap_err();
    assert!(
        matches!(error, WarehouseError::LocationMismatch { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("`US`") && text.contains("`europe-west3`") && text.contains("p.d"),
        "{text}"
    );
    // No job ran in the wrong location.
    let error = bq.query("SELECT 1", &[]).await.unwrap_err();
    assert!(
        matches!(error, WarehouseError::LocationMismatch { .. }),
        "{error}"
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|request| !request.target.contains("/queries"))
    );
    // The same spelling in another case is the same location.
    client_in(&base, Some("EUROPE-WEST3"))
        .ensure_dataset(false)
        .await
        .unwrap();
}

#[tokio::test]
async fn every_schema_change_of_a_table_is_one_alter_table_statement() {
    let (base, seen) = serve(Arc::new(|request, _| {
        let path = request.target.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("GET", "/bigquery/v2/projects/p/datasets/d") => canned(200, DATASET_US),
            ("POST", "/bigquery/v2/projects/p/queries") => canned(
                200,
                r#"{"jobReference":{"projectId":"p","jobId":"a1","location":"US"},"jobComplete":true}"#,
            ),
            // Real BigQuery's catalog shows the DDL's result.
            ("GET", "/bigquery/v2/projects/p/datasets/d/tables/t") => canned(
                200,
                r#"{"tableReference":{"projectId":"p","datasetId":"d","tableId":"t"},"schema":{"fields":[
                    {"name":"id","type":"INTEGER","mode":"NULLABLE"},{"name":"n","type":"NUMERIC","mode":"NULLABLE"},
                    {"name":"a","type":"STRING","mode":"NULLABLE"}]}}"#,
            ),
            _ => canned(500, "unexpected request"),
        }
    }))
    .await;
    let changes = [
        datasync::warehouse::AlterColumn::Add(WarehouseField::new(
            "a",
            BqType::String,
            FieldMode::Nullable,
        )),
        datasync::warehouse::AlterColumn::DropNotNull("id".into()),
        datasync::warehouse::AlterColumn::SetType(WarehouseField::new(
            "n",
            BqType::Numeric,
            FieldMode::Nullable,
        )),
    ];
    client(&base)
        .without_emulator_quirks()
        .alter_table("t", &changes)
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    let statements: Vec<String> = seen
        .iter()
        .filter(|request| request.method == "POST")
        .map(|request| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            body["query"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        statements,
        [
            "ALTER TABLE `p.d.t` ADD COLUMN `a` STRING, ALTER COLUMN `id` DROP NOT NULL, ALTER COLUMN `n` SET DATA TYPE NUMERIC"
        ]
    );
    assert!(
        seen.iter().all(|request| request.method != "PATCH"),
        "{seen:?}"
    );
}

/// Every data PUT fails with 503 and every status probe says nothing was kept: the chunk can
/// never get through. The upload must stop after a bounded number of attempts (today a
/// successful probe reset the count and the chunk was re-sent forever).
#[tokio::test]
async fn a_chunk_that_always_fails_ends_the_upload_after_bounded_attempts() {
    let puts = Arc::new(Mutex::new(0usize));
    let counter = puts.clone();
    let (base, _) = serve(Arc::new(move |request, base| {
        let path = request.target.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("GET", "/bigquery/v2/projects/p/datasets/d") => canned(200, DATASET_US),
            ("GET", "/bigquery/v2/projects/p/jobs/doomed_1") => canned(404, NOT_FOUND),
            ("POST", "/upload/bigquery/v2/projects/p/jobs") => Canned {
                status: 200,
                headers: vec![("Location".into(), format!("{base}/upload/session?upload_id=x"))],
                body: String::new(),
            },
            ("PUT", "/upload/session") => {
                *counter.lock().unwrap() += 1;
                if request.header("content-range").unwrap_or_default().starts_with("bytes */") {
                    canned(308, "")
                } else {
                    canned(503, r#"{"error":{"code":503,"message":"flaky","errors":[{"reason":"backendError"}]}}"#)
                }
            }
            _ => canned(500, "unexpected request"),
        }
    }))
    .await;
    let bq = client(&base).with_chunk_size(CHUNK_GRANULARITY).unwrap();
    let input = vec![b'x'; 2 * CHUNK_GRANULARITY];
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        bq.load(&load_request("doomed_1"), feed(input, 100_000)),
    )
    .await
    .expect("the upload never stops");
    let error = result.unwrap_err();
    assert!(error.to_string().contains("flaky"), "{error}");
    // 4 attempts (the test policy): each failed PUT is followed by one probe.
    let puts = *puts.lock().unwrap();
    assert!(puts <= 8, "{puts} PUTs");
}

/// A server that answers every data PUT with a 308 keeping nothing: each such answer counts as a
/// failed attempt, so the upload stops.
#[tokio::test]
async fn a_server_that_keeps_none_of_a_chunk_ends_the_upload() {
    let (base, seen) = serve(Arc::new(|request, base| {
        let path = request.target.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("GET", "/bigquery/v2/projects/p/datasets/d") => canned(200, DATASET_US),
            ("GET", "/bigquery/v2/projects/p/jobs/stuck_1") => canned(404, NOT_FOUND),
            ("POST", "/upload/bigquery/v2/projects/p/jobs") => Canned {
                status: 200,
                headers: vec![(
                    "Location".into(),
                    format!("{base}/upload/session?upload_id=x"),
                )],
                body: String::new(),
            },
            ("PUT", "/upload/session") => canned(308, ""),
            _ => canned(500, "unexpected request"),
        }
    }))
    .await;
    let bq = client(&base).with_chunk_size(CHUNK_GRANULARITY).unwrap();
    let error = tokio::time::timeout(
        Duration::from_secs(20),
        bq.load(
            &load_request("stuck_1"),
            feed(vec![b'x'; 2 * CHUNK_GRANULARITY], 100_000),
        ),
    )
    .await
    .expect("the upload never stops")
    .unwrap_err();
    assert!(
        error.to_string().contains("keeps none of the chunk"),
        "{error}"
    );
    let puts = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|request| request.method == "PUT")
        .count();
    assert_eq!(puts, 4);
}

/// Accepts connections and reads requests, never answers.
async fn stalled_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    base
}

#[tokio::test]
async fn a_stalled_bigquery_ends_within_the_call_deadline() {
    let base = stalled_server().await;
    let bq = client(&base).with_retry_policy(RetryPolicy {
        max_attempts: 100,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        request_timeout: Duration::from_millis(300),
        call_deadline: Duration::from_secs(1),
        ..RetryPolicy::default()
    });
    let started = std::time::Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(20), bq.get_table("t"))
        .await
        .expect("a stalled server is waited for forever")
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, WarehouseError::Deadline { .. }), "{error}");
    assert!(error.to_string().contains("get table d.t"), "{error}");
}

#[tokio::test]
async fn waiting_for_a_job_has_a_deadline() {
    let (base, _) = serve(Arc::new(|request, _| {
        let path = request.target.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("GET", "/bigquery/v2/projects/p/datasets/d") => canned(200, DATASET_US),
            ("POST", "/bigquery/v2/projects/p/queries") => canned(
                200,
                r#"{"jobReference":{"projectId":"p","jobId":"slow","location":"US"},"jobComplete":false}"#,
            ),
            ("GET", "/bigquery/v2/projects/p/queries/slow") => {
                canned(200, r#"{"jobReference":{"jobId":"slow"},"jobComplete":false}"#)
            }
            _ => canned(500, "unexpected request"),
        }
    }))
    .await;
    let bq = client(&base).with_retry_policy(RetryPolicy {
        job_deadline: Duration::from_millis(500),
        ..RetryPolicy::default()
    });
    let error = tokio::time::timeout(Duration::from_secs(20), bq.query("SELECT 1", &[]))
        .await
        .expect("a job that never finishes is waited for forever")
        .unwrap_err();
    assert!(matches!(error, WarehouseError::Deadline { .. }), "{error}");
    assert!(error.is_ambiguous(), "the job may still finish");
    assert!(
        error.to_string().contains("job slow did not finish"),
        "{error}"
    );
}

/// A canned answer of status 0 closes the connection without replying.
fn lost_reply() -> Canned {
    canned(0, "")
}

#[tokio::test]
async fn errors_in_a_200_query_response_are_warnings_unless_the_job_failed() {
    let (base, _) = serve(Arc::new(|request, _| {
        let path = request.target.split('?').next().unwrap_or_default();
        let body = String::from_utf8_lossy(&request.body).to_string();
        match (request.method.as_str(), path) {
            ("GET", "/bigquery/v2/projects/p/datasets/d") => canned(200, DATASET_US),
            ("POST", "/bigquery/v2/projects/p/queries") if body.contains("warn") => canned(
                200,
                r#"{"jobReference":{"projectId":"p","jobId":"w1","location":"US"},"jobComplete":true,"schema":{"fields":[{"name":"x","type":"INTEGER"}]},"rows":[{"f":[{"v":"1"}]}],"errors":[{"reason":"invalid","message":"a warning"}]}"#,
            ),
            ("POST", "/bigquery/v2/projects/p/queries") => canned(
                200,
                r#"{"jobReference":{"projectId":"p","jobId":"f1","location":"US"},"jobComplete":true,"errors":[{"reason":"invalidQuery","message":"Syntax error"}]}"#,
            ),
            ("GET", "/bigquery/v2/projects/p/jobs/w1") => {
                canned(200, r#"{"jobReference":{"jobId":"w1"},"status":{"state":"DONE","errors":[{"reason":"invalid","message":"a warning"}]}}"#)
            }
            ("GET", "/bigquery/v2/projects/p/jobs/f1") => canned(
                200,
                r#"{"jobReference":{"jobId":"f1"},"status":{"state":"DONE","errorResult":{"reason":"invalidQuery","message":"Syntax error"}}}"#,
            ),
            _ => canned(500, "unexpected request"),
        }
    }))
    .await;
    let bq = client(&base).without_emulator_quirks();
    let rows = bq.query("SELECT 1 AS warn", &[]).await.unwrap();
    assert_eq!(rows.rows, vec![vec![serde_json::json!(1)]]);
    let error = bq.query("SELEC 1", &[]).await.unwrap_err();
    assert!(matches!(error, WarehouseError::Job { .. }), "{error}");
    assert!(error.to_string().contains("Syntax error"), "{error}");
}

#[tokio::test]
async fn a_404_right_after_a_409_on_a_job_is_retried() {
    let gets = Arc::new(Mutex::new(0));
    let counter = gets.clone();
    let (base, _) = serve(Arc::new(move |request, _| {
        let path = request.target.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("GET", "/bigquery/v2/projects/p/datasets/d") => canned(200, DATASET_US),
            ("GET", "/bigquery/v2/projects/p/jobs/j409") => {
                let mut gets = counter.lock().unwrap();
                *gets += 1;
                // The probe before the upload, then two 404s right after the 409.
                if *gets <= 3 {
                    canned(404, NOT_FOUND)
                } else {
                    canned(200, r#"{"jobReference":{"jobId":"j409"},"status":{"state":"DONE"},"statistics":{"load":{"outputRows":"1"}}}"#)
                }
            }
            ("POST", "/upload/bigquery/v2/projects/p/jobs") => canned(
                409,
                r#"{"error":{"code":409,"message":"Already Exists: Job p:US.j409","errors":[{"reason":"duplicate"}]}}"#,
            ),
            _ => canned(500, "unexpected request"),
        }
    }))
    .await;
    let outcome = client(&base)
        .load(&load_request("j409"), feed(b"{\"id\":1}\n".to_vec(), 100))
        .await
        .unwrap();
    assert_eq!(outcome.output_rows, 1);
    assert_eq!(*gets.lock().unwrap(), 4);
}

#[tokio::test]
async fn a_concurrent_update_conflict_is_run_again_with_a_fresh_request_id() {
    let posts = Arc::new(Mutex::new(0));
    let counter = posts.clone();
    let (base, seen) = serve(Arc::new(move |request, _| {
        let path = request.target.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("GET", "/bigquery/v2/projects/p/datasets/d") => canned(200, DATASET_US),
            ("POST", "/bigquery/v2/projects/p/queries") => {
                let mut posts = counter.lock().unwrap();
                *posts += 1;
                if *posts == 1 {
                    canned(400, r#"{"error":{"code":400,"message":"Could not serialize access to table p:d.t due to concurrent update","errors":[{"reason":"invalidQuery"}]}}"#)
                } else {
                    canned(200, r#"{"jobReference":{"projectId":"p","jobId":"ok1","location":"US"},"jobComplete":true,"numDmlAffectedRows":"3"}"#)
                }
            }
            _ => canned(500, "unexpected request"),
        }
    }))
    .await;
    client(&base)
        .insert_from("s", "t", &["id".to_string()], true)
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    let ids: Vec<String> = seen
        .iter()
        .filter(|request| request.method == "POST")
        .map(|request| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            body["requestId"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "a fresh requestId");
}

#[tokio::test]
async fn a_table_insert_whose_first_reply_was_lost_succeeds_when_the_schema_matches() {
    let inserts = Arc::new(Mutex::new(0));
    let counter = inserts.clone();
    let (base, _) = serve(Arc::new(move |request, _| {
        let path = request.target.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("POST", "/bigquery/v2/projects/p/datasets/d/tables") => {
                let mut inserts = counter.lock().unwrap();
                *inserts += 1;
                if *inserts == 1 {
                    lost_reply()
                } else {
                    canned(409, r#"{"error":{"code":409,"message":"Already Exists: Table p:d.t","errors":[{"reason":"duplicate"}]}}"#)
                }
            }
            ("GET", "/bigquery/v2/projects/p/datasets/d/tables/t") => canned(200, TABLE_T),
            _ => canned(500, "unexpected request"),
        }
    }))
    .await;
    let bq = client(&base);
    let table = load_request("x").schema;
    bq.create_table(&table).await.unwrap();
    assert_eq!(*inserts.lock().unwrap(), 2);
    // A different table of that name is still a conflict.
    let other = WarehouseTable {
        fields: vec![WarehouseField::new(
            "id",
            BqType::String,
            FieldMode::Required,
        )],
        ..table
    };
    let error = bq.create_table(&other).await.unwrap_err();
    assert!(error.is_duplicate(), "{error}");
}

#[tokio::test]
async fn a_target_with_record_or_range_columns_is_readable_and_marked_unsupported() {
    let (base, _) = serve(Arc::new(|_, _| {
        canned(
            200,
            r#"{"tableReference":{"projectId":"p","datasetId":"d","tableId":"t"},"type":"TABLE","schema":{"fields":[
                {"name":"id","type":"INTEGER"},{"name":"r","type":"RECORD","fields":[{"name":"x","type":"STRING"}]},
                {"name":"span","type":"RANGE"}]}}"#,
        )
    }))
    .await;
    let existing = client(&base).get_table("t").await.unwrap().unwrap();
    assert_eq!(existing.table.fields.len(), 1);
    assert_eq!(existing.unsupported.len(), 2, "{:?}", existing.unsupported);
    assert!(
        existing.unsupported[0].contains("RECORD"),
        "{:?}",
        existing.unsupported
    );
    assert!(
        existing.unsupported[1].contains("RANGE"),
        "{:?}",
        existing.unsupported
    );
}

/// `bigquery.upload_chunk_mib` sets the resumable chunk size, and an Avro load asks for
/// `sourceFormat: AVRO` with logical types and decimal target types.
#[tokio::test]
async fn avro_loads_use_the_configured_chunk_size() {
    let received = Arc::new(Mutex::new(0usize));
    let server_received = received.clone();
    let (base, seen) = serve(Arc::new(move |request, base| {
        let path = request.target.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("GET", "/bigquery/v2/projects/p/jobs/avro_1") => canned(404, NOT_FOUND),
            ("POST", "/upload/bigquery/v2/projects/p/jobs") => Canned {
                status: 200,
                headers: vec![("Location".into(), format!("{base}/upload/session?upload_id=s"))],
                body: String::new(),
            },
            ("PUT", "/upload/session") => {
                let mut received = server_received.lock().unwrap();
                *received += request.body.len();
                let total = request.header("content-range").unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
                if total == "*" {
                    Canned {
                        status: 308,
                        headers: vec![("Range".into(), format!("bytes=0-{}", *received - 1))],
                        body: String::new(),
                    }
                } else {
                    canned(200, r#"{"jobReference":{"projectId":"p","jobId":"avro_1","location":"US"},"status":{"state":"DONE"},"statistics":{"load":{"outputRows":"7"}}}"#)
                }
            }
            _ => canned(404, NOT_FOUND),
        }
    }))
    .await;
    let spec = BigQuerySpec {
        project: "p".into(),
        dataset: "d".into(),
        location: Some("US".into()),
        endpoint: Some(base.clone()),
        emulator: true,
        upload_chunk_mib: Some(1),
        ..BigQuerySpec::default()
    };
    let client = BigQuery::new(&spec).unwrap();
    let mut request = load_request("avro_1");
    request.format = LoadFormat::Avro;
    let data = vec![7u8; (5 << 20) / 2];
    let outcome = client.load(&request, feed(data, 300_000)).await.unwrap();
    assert_eq!(outcome.output_rows, 7);
    let seen = seen.lock().unwrap();
    let puts: Vec<usize> = seen
        .iter()
        .filter(|request| request.method == "PUT")
        .map(|request| request.body.len())
        .collect();
    assert_eq!(
        puts,
        [1 << 20, 1 << 20, 1 << 19],
        "1 MiB chunks, then the rest"
    );
    let start = seen
        .iter()
        .find(|request| request.method == "POST" && request.target.starts_with("/upload/"))
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&start.body).unwrap();
    let load = &body["configuration"]["load"];
    assert_eq!(load["sourceFormat"], "AVRO");
    assert_eq!(load["useAvroLogicalTypes"], true);
    assert_eq!(
        load["decimalTargetTypes"],
        serde_json::json!(["NUMERIC", "BIGNUMERIC"])
    );
}

/// The run ledger trusts a watermark while the target's `lastModifiedTime` is the one it
/// recorded: read from tables.get on BigQuery; on the emulator, which does not move it on data
/// writes (scripts/EMULATOR.md), none is reported.
#[tokio::test]
async fn a_tables_last_modified_time_is_read_except_on_the_emulator() {
    let (base, _) = serve(Arc::new(|_, _| {
        canned(
            200,
            r#"{"tableReference":{"projectId":"p","datasetId":"d","tableId":"t"},"type":"TABLE","lastModifiedTime":"1796000001234","schema":{"fields":[{"name":"id","type":"INTEGER"}]}}"#,
        )
    }))
    .await;
    let real = client(&base).without_emulator_quirks();
    let existing = real.get_table("t").await.unwrap().unwrap();
    assert_eq!(existing.last_modified.as_deref(), Some("1796000001234"));
    let emulated = client(&base).get_table("t").await.unwrap().unwrap();
    assert_eq!(emulated.last_modified, None);
}

/// tables.list is read page after page (1,000 a page) with each table's kind and labels, as
/// real BigQuery sends them (a table without labels has none); the emulator, which truncates
/// at `maxResults` without a page token and lists no labels, is asked without `maxResults` and
/// its labels are unknown.
#[tokio::test]
async fn the_dataset_listing_reads_every_page_with_kinds_and_labels() {
    let (base, seen) = serve(Arc::new(|request, _| {
        let page = if request.target.contains("pageToken=p2") {
            r#"{"tables":[{"tableReference":{"projectId":"p","datasetId":"d","tableId":"c"},"type":"VIEW"}]}"#
        } else {
            r#"{"nextPageToken":"p2","tables":[
                {"tableReference":{"projectId":"p","datasetId":"d","tableId":"a"},"type":"TABLE","labels":{"managed-by":"datasync","team":"x"}},
                {"tableReference":{"projectId":"p","datasetId":"d","tableId":"b"},"type":"TABLE"}]}"#
        };
        canned(200, page)
    }))
    .await;
    let listed = client(&base)
        .without_emulator_quirks()
        .list_dataset()
        .await
        .unwrap();
    let summary: Vec<(String, Option<String>, Option<bool>)> = listed
        .iter()
        .map(|table| {
            (
                table.name.clone(),
                table.kind.clone(),
                table.labels.as_ref().map(datasync::warehouse::is_managed),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a".into(), Some("TABLE".into()), Some(true)),
            ("b".into(), Some("TABLE".into()), Some(false)),
            ("c".into(), Some("VIEW".into()), Some(false)),
        ]
    );
    let targets: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|request| request.target.clone())
        .collect();
    assert_eq!(
        targets,
        [
            "/bigquery/v2/projects/p/datasets/d/tables?maxResults=1000",
            "/bigquery/v2/projects/p/datasets/d/tables?maxResults=1000&pageToken=p2",
        ]
    );
    seen.lock().unwrap().clear();
    let emulated = client(&base).list_dataset().await.unwrap();
    assert_eq!(emulated.len(), 3);
    assert!(emulated.iter().all(|table| table.labels.is_none()));
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|request| !request.target.contains("maxResults")),
        "{:?}",
        seen.lock().unwrap()
    );
}

/// tables.get of many targets on real BigQuery starts at most 80 calls a second (under the API's
/// 100 requests per second per user and method); the emulator is not paced.
#[tokio::test]
async fn many_tables_gets_are_paced_on_real_bigquery() {
    let (base, seen) = serve(Arc::new(|_, _| {
        canned(
            404,
            r#"{"error":{"code":404,"message":"Not found","errors":[{"reason":"notFound"}]}}"#,
        )
    }))
    .await;
    let names: Vec<String> = (0..17).map(|index| format!("t{index}")).collect();
    let started = std::time::Instant::now();
    let got = client(&base)
        .without_emulator_quirks()
        .get_tables(&names)
        .await
        .unwrap();
    // 17 calls at 80 a second: the last starts 200 ms after the first.
    assert!(
        started.elapsed() >= Duration::from_millis(195),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(got.len(), 17);
    assert!(got.iter().all(Option::is_none));
    assert_eq!(seen.lock().unwrap().len(), 17);
}
