//! The run ledger end to end: PostgreSQL → the emulator with the `datasync` binary. Two
//! incremental runs are recorded (one row per table and run), `datasync runs` lists them, and
//! the watermark the ledger keeps equals what `MAX(target)` gives for every cursor type.
//!
//! The emulator does not move `lastModifiedTime` on data writes (scripts/EMULATOR.md), so
//! against it the bounds still come from the targets' `MAX`; that the second run reads its
//! bound from the ledger instead is proven over the in-memory warehouse (`tests/it/ledger_fake.rs`).

use datasync::sync::ledger::watermark::{canonical, read_latest};
use datasync::warehouse::{Warehouse, cursor_text};

use super::apply_e2e::{World, assert_code, text};

fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", text(output)))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_incremental_runs_are_recorded_and_datasync_runs_lists_them() {
    let world = World::new("ledger").await;
    world
        .sql(
            "CREATE TABLE events (id bigint PRIMARY KEY, kind text, at timestamptz NOT NULL);
             INSERT INTO events SELECT g, 'k' || (g % 3), timestamptz '2024-06-01 00:00:00+00' + g * interval '1 second' FROM generate_series(1, 50) g;
             CREATE TABLE kinds (id bigint PRIMARY KEY, name text);
             INSERT INTO kinds VALUES (1, 'a'), (2, 'b');",
        )
        .await;
    let manifest = world.manifest(
        "      events:\n        mode: incremental\n        cursor: at\n      kinds: {}\n",
    );
    // Before the first apply there is no ledger: said plainly, exit 0.
    let none = world.datasync(&["-c", &manifest, "runs"]);
    assert_code(&none, 0);
    assert!(
        text(&none).contains(&format!(
            "no runs recorded yet: `datasync-test.{}._datasync_runs` does not exist (the first `datasync apply` creates it)",
            world.name
        )),
        "{}",
        text(&none)
    );
    assert_eq!(
        json(&world.datasync(&["-c", &manifest, "runs", "--format", "json"]))["exists"],
        false
    );

    let apply = |world: &World| {
        let output = world.datasync(&["-c", &manifest, "apply", "--format", "json"]);
        assert_code(&output, 0);
        json(&output)
    };
    let first = apply(&world);
    world
        .sql("INSERT INTO events SELECT g, 'new', timestamptz '2024-07-01 00:00:00.123456+00' + g * interval '1 second' FROM generate_series(51, 60) g;")
        .await;
    let second = apply(&world);
    let run_ids: Vec<String> = [&first, &second]
        .iter()
        .map(|report| {
            assert_eq!(report["ledger"]["rows"], 2, "{report}");
            assert!(report["ledger"]["error"].is_null(), "{report}");
            report["ledger"]["run_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_ne!(run_ids[0], run_ids[1]);
    assert_eq!(world.count("events").await, 60, "each row loaded once");

    // One row per table and run, written by one load per run.
    let rows = world
        .select(
            "_datasync_runs",
            "`run_id`, `table`, `status`, `mode`, `rows_extracted`, `rows_loaded`, `watermark`, `watermark_type`, ARRAY_LENGTH(`job_ids`) > 0",
            "`finished_at`, `table`",
        )
        .await;
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let expect =
        |run: &str, table: &str, tail: &str| format!(r#"["{run}","{table}","done",{tail},true]"#);
    assert!(
        rows.contains(&expect(
            &run_ids[0],
            "pg.events",
            r#""incremental",50,50,"2024-06-01T00:00:50.000000Z","TIMESTAMP""#
        )),
        "{rows:#?}"
    );
    assert!(
        rows.contains(&expect(
            &run_ids[1],
            "pg.events",
            r#""incremental",10,10,"2024-07-01T00:01:00.123456Z","TIMESTAMP""#
        )),
        "{rows:#?}"
    );
    assert!(
        rows.contains(&expect(
            &run_ids[1],
            "pg.kinds",
            r#""replace",2,2,null,null"#
        )),
        "{rows:#?}"
    );
    let ledger_loads = super::apply_e2e::dataset_jobs(&world.name)
        .await
        .into_iter()
        .filter(|job| {
            job["configuration"]["load"]["destinationTable"]["tableId"] == "_datasync_runs"
        })
        .count();
    assert_eq!(ledger_loads, 2, "one ledger load per run");

    // `datasync runs --format json`: newest first, summed per run.
    let listed = json(&world.datasync(&["-c", &manifest, "runs", "--format", "json"]));
    assert_eq!(listed["exists"], true);
    assert_eq!(
        listed["ledger"],
        format!("datasync-test.{}._datasync_runs", world.name)
    );
    let runs = listed["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{listed}");
    assert_eq!(runs[0]["run_id"], run_ids[1].as_str());
    assert_eq!(runs[1]["run_id"], run_ids[0].as_str());
    assert_eq!(
        (runs[0]["tables"].as_u64(), runs[0]["done"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(runs[0]["rows_loaded"], 12);
    assert_eq!(runs[1]["rows_loaded"], 52);
    assert!(runs[0]["started_at"].as_str().unwrap().ends_with('Z'));
    // --limit and --table.
    let limited = json(&world.datasync(&[
        "-c", &manifest, "runs", "--format", "json", "--limit", "1", "--table", "pg.ev*",
    ]));
    let limited = limited["runs"].as_array().unwrap();
    assert_eq!(limited.len(), 1);
    assert_eq!(
        (
            limited[0]["tables"].as_u64(),
            limited[0]["rows_loaded"].as_u64()
        ),
        (Some(1), Some(10))
    );
    // One run's tables.
    let one = json(&world.datasync(&[
        "-c",
        &manifest,
        "runs",
        "--format",
        "json",
        "--run",
        &run_ids[1],
    ]));
    let tables = one["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 2, "{one}");
    let events = tables
        .iter()
        .find(|table| table["table"] == "pg.events")
        .unwrap();
    assert_eq!(events["watermark"], "2024-07-01T00:01:00.123456Z");
    assert_eq!(events["cursor_column"], "at");
    assert_eq!(events["status"], "done");
    assert!(events["job_ids"].as_array().unwrap().len() >= 2, "{events}");
    // An unknown run is a user error naming it.
    let unknown = world.datasync(&["-c", &manifest, "runs", "--run", "nope"]);
    assert_code(&unknown, 1);
    assert!(
        text(&unknown).contains("run `nope` has no rows"),
        "{}",
        text(&unknown)
    );

    // The text form, run ids and times masked.
    let list = world.datasync(&["-c", &manifest, "runs"]);
    assert_code(&list, 0);
    let run = world.datasync(&["-c", &manifest, "runs", "--run", &run_ids[1]]);
    assert_code(&run, 0);
    let shown = format!(
        "{}\n{}",
        String::from_utf8_lossy(&list.stdout),
        String::from_utf8_lossy(&run.stdout)
    )
    .replace(&world.name, "DATASET")
    // Same-width masks keep the columns aligned.
    .replace(&run_ids[0], &format!("{:_<1$}", "RUN_1", run_ids[0].len()))
    .replace(&run_ids[1], &format!("{:_<1$}", "RUN_2", run_ids[1].len()));
    insta::with_settings!({filters => vec![
        (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "YYYY-MM-DD HH:MM:SS"),
        (r"bqemu_[0-9a-f]+", "bqemu_JOB"),
        (r"plan [0-9a-f]{16}", "plan FINGERPRINT"),
        (r"datasync \d+\.\d+\.\d+\S*", "datasync VERSION"),
    ]}, {
        insta::assert_snapshot!(shown);
    });
}

/// For each cursor type the ledger's watermark after two runs is what `MAX(target)` gives
/// (canonical text), including BigQuery's order where PostgreSQL's differs (STRING by code
/// point) and the zero fractions BigQuery drops (DATETIME). The merge table re-reads the rows at
/// the maximum (an inclusive bound) and keeps the same watermark rule.
#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_watermark_equals_the_targets_max_for_every_cursor_type() {
    let world = World::new("watermarks").await;
    world
        .sql(
            "CREATE TABLE c_int (id bigint PRIMARY KEY, c bigint NOT NULL);
             INSERT INTO c_int VALUES (1, -5), (2, 9), (3, 10);
             CREATE TABLE c_ts (id bigint PRIMARY KEY, c timestamptz NOT NULL);
             INSERT INTO c_ts VALUES (1, '2024-01-02 03:04:05+00'), (2, '2024-01-02 05:04:05.5+02');
             CREATE TABLE c_dt (id bigint PRIMARY KEY, c timestamp NOT NULL);
             INSERT INTO c_dt VALUES (1, '2024-01-02 03:04:05'), (2, '2023-12-31 23:59:59.999999');
             CREATE TABLE c_date (id bigint PRIMARY KEY, c date NOT NULL);
             INSERT INTO c_date VALUES (1, '2024-01-02'), (2, '1999-12-31');
             CREATE TABLE c_text (id bigint PRIMARY KEY, c text NOT NULL);
             INSERT INTO c_text VALUES (1, 'B'), (2, 'a'), (3, 'Z');
             CREATE TABLE c_merge (id bigint PRIMARY KEY, v text, c timestamp NOT NULL);
             INSERT INTO c_merge VALUES (1, 'x', '2024-01-01 00:00:00'), (2, 'y', '2024-01-01 00:00:01');",
        )
        .await;
    let incremental =
        |name: &str| format!("      {name}:\n        mode: incremental\n        cursor: c\n");
    let tables: String = ["c_int", "c_ts", "c_dt", "c_date", "c_text"]
        .iter()
        .map(|name| incremental(name))
        .chain([
            "      c_merge:\n        mode: merge\n        primary_key: [id]\n        cursor: c\n"
                .to_string(),
        ])
        .collect();
    let manifest = world.manifest(&tables);
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    world
        .sql(
            "INSERT INTO c_int VALUES (4, 11), (5, 3);
             INSERT INTO c_ts VALUES (3, '2024-01-02 03:04:05.500001+00'), (4, '2024-01-01 00:00:00+00');
             INSERT INTO c_dt VALUES (3, '2024-01-03 00:00:00');
             INSERT INTO c_date VALUES (3, '2024-01-03');
             INSERT INTO c_text VALUES (4, 'é'), (5, 'b');
             UPDATE c_merge SET v = 'y2', c = '2024-01-01 00:00:02' WHERE id = 2;",
        )
        .await;
    let second = world.datasync(&["-c", &manifest, "apply"]);
    assert_code(&second, 0);
    // Rows below the watermark (c_int 3, c_ts 2024-01-01) are not past it: not loaded.
    let counts = [
        ("c_int", 4),
        ("c_ts", 3),
        ("c_dt", 3),
        ("c_date", 3),
        ("c_merge", 2),
    ];
    for (table, rows) in counts {
        assert_eq!(
            world.count(table).await,
            rows,
            "{table}: each row once\n{}",
            text(&second)
        );
    }

    let latest = read_latest(&world.warehouse, &format!("datasync-test.{}", world.name)).await;
    assert!(latest.exists);
    let types = [
        ("c_int", datasync::schema::BqType::Int64, "11"),
        (
            "c_ts",
            datasync::schema::BqType::Timestamp,
            "2024-01-02T03:04:05.500001Z",
        ),
        (
            "c_dt",
            datasync::schema::BqType::Datetime,
            "2024-01-03T00:00:00.000000",
        ),
        ("c_date", datasync::schema::BqType::Date, "2024-01-03"),
        // Code-point order: `é` (U+00E9) > `b` > `a` > `Z` > `B`.
        ("c_text", datasync::schema::BqType::String, "é"),
        (
            "c_merge",
            datasync::schema::BqType::Datetime,
            "2024-01-01T00:00:02.000000",
        ),
    ];
    for (table, bq_type, expected) in types {
        let entry = &latest.entries[table];
        let max = world.warehouse.max_value(table, "c").await.unwrap();
        let from_target = cursor_text(&max, bq_type).map(|text| canonical(&text, bq_type));
        assert_eq!(
            entry.watermark, from_target,
            "{table}: the ledger and MAX(target) differ"
        );
        assert_eq!(entry.watermark.as_deref(), Some(expected), "{table}");
        assert_eq!(
            entry.watermark_type.as_deref(),
            Some(bq_type.as_str()),
            "{table}"
        );
        assert_eq!(entry.cursor_column.as_deref(), Some("c"), "{table}");
    }
}
