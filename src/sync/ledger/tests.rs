use super::*;
use crate::warehouse::FakeWarehouse;

fn row(run_id: &str, target: &str, status: &str, finished: &str, watermark: &str) -> LedgerRow {
    let at = |text: &str| {
        Some(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    };
    LedgerRow {
        run_id: run_id.into(),
        plan_fingerprint: Some("f".into()),
        shard: None,
        table: format!("lite.{target}"),
        source: Some("lite".into()),
        target: target.into(),
        mode: Some("incremental".into()),
        status: status.into(),
        rows_extracted: Some(1),
        rows_loaded: Some(1),
        rows_rejected: Some(0),
        cursor_column: Some("id".into()),
        watermark: Some(watermark.into()),
        watermark_type: Some("INT64".into()),
        target_modified: Some("7".into()),
        job_ids: vec![format!("datasync_{run_id}_{target}")],
        started_at: at(finished),
        finished_at: at(finished),
        error: None,
        datasync_version: Some("1".into()),
    }
}

#[tokio::test]
async fn one_load_per_write_and_the_latest_done_row_per_target_reads_back() {
    let fake = FakeWarehouse::with_dataset();
    let first = [
        row("r1", "a", "done", "2026-01-01T00:00:01Z", "1"),
        row("r1", "b", "done", "2026-01-01T00:00:02Z", "10"),
    ];
    write_rows(&fake, "r1", &first, false).await.unwrap();
    // A later run: `a` done again, `b` failed (its done row stays the latest done one).
    let second = [
        row("r2", "a", "done", "2026-01-02T00:00:01Z", "2"),
        row("r2", "b", "failed", "2026-01-02T00:00:02Z", "99"),
    ];
    // The table exists already, but the run did not know: the 409 is fine.
    write_rows(&fake, "r2", &second, false).await.unwrap();
    assert_eq!(
        fake.count("load _datasync_runs WRITE_APPEND datasync-ledger_r1"),
        1
    );
    assert_eq!(
        fake.count("load _datasync_runs WRITE_APPEND datasync-ledger_r2"),
        1
    );
    assert_eq!(fake.count("create_table _datasync_runs"), 2);
    assert_eq!(fake.rows(RUNS_TABLE).unwrap().len(), 4);
    let stored = &fake.rows(RUNS_TABLE).unwrap()[0];
    assert_eq!(stored["started_at"], "2026-01-01T00:00:01.000000Z");
    assert_eq!(stored["job_ids"], serde_json::json!(["datasync_r1_a"]));

    let latest = read_latest(&fake, "p.d").await;
    assert!(latest.exists);
    assert_eq!(latest.entries["a"].run_id, "r2");
    assert_eq!(latest.entries["a"].watermark.as_deref(), Some("2"));
    assert_eq!(
        latest.entries["b"].run_id, "r1",
        "a failed run is not a watermark"
    );
    assert_eq!(latest.entries["b"].watermark.as_deref(), Some("10"));
    assert_eq!(latest.entries["b"].target_modified.as_deref(), Some("7"));
    // One query for every target.
    assert_eq!(fake.count("query "), 1);
}

#[tokio::test]
async fn a_missing_ledger_is_an_empty_one_and_costs_no_query() {
    let fake = FakeWarehouse::with_dataset();
    let latest = read_latest(&fake, "p.d").await;
    assert_eq!(latest, Latest::default());
    assert_eq!(fake.count("query "), 0);
}

#[tokio::test]
async fn a_failed_ledger_write_is_reported_not_hidden() {
    let fake = FakeWarehouse::with_dataset();
    fake.fail_next("load", false);
    let rows = [row("r1", "a", "done", "2026-01-01T00:00:01Z", "1")];
    let plan = Plan::new("p.d".into(), false, Vec::new());
    let outcome = outcome(&plan, "r1", 1, write_rows(&fake, "r1", &rows, true).await);
    assert_eq!(outcome.table, "p.d._datasync_runs");
    assert!(
        outcome
            .error
            .as_deref()
            .is_some_and(|error| error.contains("injected failure in load")),
        "{outcome:?}"
    );
    // Known to exist: no tables.insert.
    assert_eq!(fake.count("create_table"), 0);
}

#[test]
fn the_schema_has_every_row_field() {
    let row = serde_json::to_value(row("r", "t", "done", "2026-01-01T00:00:00Z", "1")).unwrap();
    let schema = schema();
    let names: Vec<&str> = schema
        .fields
        .iter()
        .map(|field| field.name.as_str())
        .collect();
    let keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, keys);
    assert!(ledger_job_id("1_000001").starts_with("datasync-ledger_"));
}
