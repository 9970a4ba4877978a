//! PostgreSQL type matrix: describe + map + extract against a real server
//! (`DATASYNC_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`).

use crate::support::{Extracted, connect, run, table_spec, unique, url};
use datasync::manifest::raw::{BadValuePolicy, SourceKind};
use datasync::schema::ReadAs;
use datasync::source::{CursorFilter, Source, SourceError};
use sqlx::Executor;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const SETUP: &str = r#"
CREATE TYPE {S}.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE {S}."Types Table" (
  id int8 PRIMARY KEY,
  "order" int4,
  "User" text,
  "Mixed Case-Col" int2,
  i4 int4 NOT NULL,
  i8 int8,
  f4 real,
  f8 double precision NOT NULL,
  n numeric(38,9),
  nbig numeric(76,38),
  nfree numeric,
  n2 numeric(10,2),
  b bool,
  t text,
  vc varchar(10),
  ch char(5),
  d date,
  ts timestamp,
  tstz timestamptz,
  tm time,
  tmtz timetz,
  iv interval,
  j json,
  jb jsonb,
  by bytea,
  u uuid,
  ip inet,
  m money,
  e {S}.mood,
  bits bit(8),
  ai int4[],
  at text[],
  an numeric(10,2)[],
  ats timestamptz[],
  ainet inet[]
);
COMMENT ON COLUMN {S}."Types Table".id IS 'the key';
INSERT INTO {S}."Types Table" VALUES
 (1, 1, 'héllo "quoted"
new line \ tab	😀', 32767, 2147483647, 9223372036854775807, 3.4028235e38, 1.7976931348623157e308,
  99999999999999999999999999999.999999999, 99999999999999999999999999999999999999.99999999999999999999999999999999999999,
  123.4500, 12345678.90, true, 'plain', 'ten chars!', 'ab', '0001-01-01', '9999-12-31 23:59:59.999999',
  '2024-06-01 12:34:56.789+05:30', '23:59:59.999999', '12:00:00+02', '1 year 2 mons 3 days 04:05:06',
  '{"a": [1, 2, {"b": null}],
    "big": 12345678901234567890123}', '{"a": [1, 2, {"b": null}], "s": "x\ny"}', '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '192.168.0.1/24', 1234.56, 'happy', B'10101010', '{1,2,3}', '{"a","b c"}', '{1.5,2.25}',
  '{"2024-01-01 00:00:00+00","2024-01-01 10:00:00+10"}', '{10.0.0.1}'),
 (2, NULL, NULL, -32768, -2147483648, -9223372036854775808, 'NaN', 'Infinity',
  -99999999999999999999999999999.999999999, -0.00000000000000000000000000000000000001,
  'NaN', -0.01, false, '', '', '', '-infinity', 'infinity', '-infinity', '00:00:00', NULL, '-1 days',
  '[]', '"scalar"', '\x', '00000000-0000-0000-0000-000000000000', '::1', -0.5, 'sad', B'00000000', '{}', NULL, '{}',
  '{}', '{}'),
 (3, NULL, NULL, NULL, 0, NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 4, 'x', 4, 4, 9007199254740993, 0.1, 0.1, 0.000000001, 0.00000000000000000000000000000000000001,
  0.00000000000000000000000000000000000001000, 0, NULL, NULL, NULL, NULL, '2024-02-29', '1970-01-01 00:00:00',
  '1970-01-01 00:00:00+00', '00:00:00.000001', NULL, NULL, 'null', '{}', NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL),
 (5, 5, 'fails: too many digits', 5, 5, 5, 5, 5, NULL, NULL,
  1234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL),
 (6, 6, 'fails: NULL array element', 6, 6, 6, -0.0, '-Infinity', NULL, NULL, '-Infinity', NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{1,NULL}', NULL, NULL,
  NULL, NULL);
"#;

async fn scratch(admin: &sqlx::PgPool, schema: &str) {
    admin
        .execute(sqlx::raw_sql(&format!("CREATE SCHEMA \"{schema}\"")))
        .await
        .expect("create schema");
    admin
        .execute(sqlx::raw_sql(
            &SETUP.replace("{S}", &format!("\"{schema}\"")),
        ))
        .await
        .expect("create and fill the table");
}

struct Outcome {
    full: Extracted,
    incremental: Extracted,
    budget_error: String,
    missing: String,
    strict_error: String,
}

async fn body(source: &Source, schema: &str) -> Result<Outcome, SourceError> {
    let spec = table_spec(SourceKind::Postgres, Some(schema), "Types Table");
    let full = run(source, &spec, None).await?;

    let filter = CursorFilter {
        column: "id".into(),
        value: "3".into(),
        inclusive: false,
    };
    let incremental = run(source, &spec, Some(&filter)).await?;
    let counted = source
        .count_rows(
            &incremental.table,
            &incremental.mapping.columns,
            Some(&filter),
        )
        .await?;
    assert_eq!(counted, 3);

    let mut budget = spec.clone();
    budget.max_parse_failures = Some(2);
    let budget_error = match run(source, &budget, None).await {
        Ok(_) => "no error".into(),
        Err(error) => error.to_string(),
    };

    let mut strict = spec.clone();
    strict.types.non_finite = BadValuePolicy::Error;
    strict.columns = Some(vec!["id".into(), "f8".into(), "ts".into()]);
    strict.max_parse_failures = Some(0);
    let strict_error = match run(source, &strict, None).await {
        Ok(_) => "no error".into(),
        Err(error) => error.to_string(),
    };

    let missing = match source.describe(Some(schema), "types table").await {
        Ok(_) => "found".into(),
        Err(error) => error.to_string(),
    };
    Ok(Outcome {
        full,
        incremental,
        budget_error,
        missing,
        strict_error,
    })
}

#[tokio::test]
async fn postgres_type_matrix() {
    let url = url("DATASYNC_TEST_POSTGRES_URL", DEFAULT_URL);
    let source = connect(SourceKind::Postgres, &url).await;
    let Source::Postgres(admin) = &source else {
        unreachable!()
    };
    let schema = unique("DsTest");
    scratch(admin, &schema).await;
    let outcome = body(&source, &schema).await;
    admin
        .execute(sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .await
        .expect("drop schema");
    let outcome = outcome.expect("extraction");
    let redact = |text: &str| text.replace(&schema, "[schema]");

    let mut table = outcome.full.table.clone();
    table.qualifier = Some("[schema]".into());
    table.estimated_rows = None;
    for column in &mut table.columns {
        column.column_type = redact(&column.column_type);
        column.data_type = redact(&column.data_type);
    }
    insta::assert_yaml_snapshot!("pg_describe", table);
    insta::assert_yaml_snapshot!("pg_table", outcome.full.mapping.table);
    let codecs: Vec<String> = outcome
        .full
        .mapping
        .columns
        .iter()
        .map(|column| {
            format!(
                "{} -> {} {:?}{}",
                column.source.name,
                column.field.diff_line(),
                column.codec,
                match column.read_as {
                    ReadAs::Native => String::new(),
                    read_as => format!(" read as {read_as:?}"),
                }
            )
        })
        .collect();
    insta::assert_yaml_snapshot!("pg_codecs", codecs);
    // The test's schema/database name is unique per run.
    insta::with_settings!({filters => vec![(r"DsTest_\d+_\d+", "[test-db]")]}, {
        insta::assert_yaml_snapshot!("pg_warnings", outcome.full.mapping.warnings);
    });
    insta::assert_snapshot!("pg_lines", outcome.full.lines.join("\n"));
    insta::assert_yaml_snapshot!("pg_stats", outcome.full.stats);
    assert_eq!(outcome.full.chunks, 1);
    assert_eq!(
        outcome.full.progress.last().copied(),
        Some(outcome.full.stats.rows)
    );

    let ids: Vec<String> = outcome
        .incremental
        .lines
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["id"].to_string())
        .collect();
    assert_eq!(ids, ["\"4\""]);
    assert_eq!(outcome.incremental.stats.failed_rows, 2);

    insta::assert_snapshot!("pg_budget_error", redact(&outcome.budget_error));
    insta::assert_snapshot!("pg_strict_error", redact(&outcome.strict_error));
    insta::assert_snapshot!("pg_missing", redact(&outcome.missing));
}

#[tokio::test]
async fn postgres_connect_error_hides_password() {
    let mut spec = crate::support::source_spec(
        SourceKind::Postgres,
        "postgres://nobody:Sup3rSecret@127.0.0.1:1/none",
    );
    spec.timeouts.connect = Some(std::time::Duration::from_secs(1));
    let error = Source::connect(&spec).await.expect_err("port 1 refuses");
    let text = error.to_string();
    assert!(!text.contains("Sup3rSecret"), "{text}");
    assert!(text.contains("source `test`"), "{text}");
}

/// Tables beside the type matrix: keys of every kind, a view, a partitioned table.
const MORE: &str = r#"
CREATE TABLE {S}.keyed (a int NOT NULL, b text NOT NULL, c text, d int, e text, gone int,
  PRIMARY KEY (b, a));
ALTER TABLE {S}.keyed DROP COLUMN gone;
ALTER TABLE {S}.keyed ADD CONSTRAINT keyed_cd UNIQUE (d, c);
CREATE UNIQUE INDEX keyed_z ON {S}.keyed (e);
CREATE UNIQUE INDEX keyed_partial ON {S}.keyed (c) WHERE c IS NOT NULL;
CREATE UNIQUE INDEX keyed_expr ON {S}.keyed (lower(c));
CREATE INDEX keyed_plain ON {S}.keyed (d);
COMMENT ON TABLE {S}.keyed IS 'with keys';
INSERT INTO {S}.keyed VALUES (1, 'x', 'c', 1, 'e');
ANALYZE {S}.keyed;
CREATE VIEW {S}.v AS SELECT id, "User" FROM {S}."Types Table";
CREATE TABLE {S}.parted (id int8 PRIMARY KEY, at date) PARTITION BY RANGE (id);
"#;

/// One catalog query set for many tables of a schema gives each exactly what describing it
/// alone gives (the type matrix included), in the order asked; a missing table is its own
/// error.
#[tokio::test]
async fn postgres_describing_many_tables_equals_describing_each() {
    let url = url("DATASYNC_TEST_POSTGRES_URL", DEFAULT_URL);
    let source = connect(SourceKind::Postgres, &url).await;
    let Source::Postgres(admin) = &source else {
        unreachable!()
    };
    let schema = unique("DsBatch");
    scratch(admin, &schema).await;
    let more = admin
        .execute(sqlx::raw_sql(
            &MORE.replace("{S}", &format!("\"{schema}\"")),
        ))
        .await;
    let names: Vec<String> = ["v", "Types Table", "nope", "keyed", "parted", "types table"]
        .iter()
        .map(|name| name.to_string())
        .collect();
    let compared = async {
        more.expect("more tables");
        let many = source.describe_many(Some(&schema), &names).await?;
        let mut alone = Vec::new();
        for name in &names {
            alone.push(source.describe(Some(&schema), name).await);
        }
        Ok::<_, SourceError>((many, alone))
    }
    .await;
    admin
        .execute(sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .await
        .expect("drop schema");
    let (many, alone) = compared.expect("describe");
    assert_eq!(many.len(), names.len());
    for ((name, batch), alone) in names.iter().zip(&many).zip(&alone) {
        match (batch, alone) {
            (Ok(batch), Ok(alone)) => assert_eq!(batch, alone, "{name}"),
            (Err(batch), Err(alone)) => assert_eq!(batch.to_string(), alone.to_string()),
            (batch, alone) => panic!("{name}: {batch:?} vs {alone:?}"),
        }
    }
    assert!(
        many[2].is_err() && many[5].is_err(),
        "names are case-sensitive"
    );
    let keyed = many[3].as_ref().expect("keyed");
    assert_eq!(keyed.primary_key, ["b", "a"]);
    // Sorted by index name; partial and expression indexes make no column unique.
    assert_eq!(
        keyed.unique_keys,
        [
            vec!["d".to_string(), "c".to_string()],
            vec!["e".to_string()]
        ]
    );
    assert_eq!(keyed.estimated_rows, Some(1));
    assert_eq!(keyed.comment.as_deref(), Some("with keys"));
    let ordinals: Vec<u32> = keyed.columns.iter().map(|column| column.ordinal).collect();
    assert_eq!(ordinals, [1, 2, 3, 4, 5], "the dropped column is left out");
    let matrix = many[1].as_ref().expect("matrix");
    assert_eq!(matrix.columns.len(), 35);
    assert!(matrix.unique_keys.is_empty());
    assert_eq!(many[4].as_ref().expect("parted").primary_key, ["id"]);
}

/// PostgreSQL is read through `COPY … TO STDOUT (FORMAT binary)`. An extraction that stops
/// early (here: the bad-value budget, at the first row) must close its connection: returned to
/// the pool, the connection would first read and discard the rest of the table.
#[tokio::test]
async fn an_extraction_cut_short_closes_its_connection_instead_of_reading_on() {
    let url = url("DATASYNC_TEST_POSTGRES_URL", DEFAULT_URL);
    let source = connect(SourceKind::Postgres, &url).await;
    let Source::Postgres(admin) = &source else {
        unreachable!()
    };
    let schema = unique("DsCut");
    admin
        .execute(sqlx::raw_sql(&format!(
            "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".big AS SELECT g::int8 AS id, 'NaN'::float8 AS f, repeat('x', 200) AS t FROM generate_series(1, 300000) g"
        )))
        .await
        .expect("create the table");
    let mut spec = table_spec(SourceKind::Postgres, Some(&schema), "big");
    spec.types.non_finite = BadValuePolicy::Error;
    spec.max_parse_failures = Some(0);
    let result = run(&source, &spec, None).await;
    let copies = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE 'COPY (%{schema}%'"
    );
    let mut left = -1;
    for _ in 0..50 {
        left = sqlx::query_scalar::<_, i64>(&copies)
            .fetch_one(admin)
            .await
            .expect("pg_stat_activity");
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The pool still serves queries.
    let answered: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(admin)
        .await
        .unwrap();
    admin
        .execute(sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .await
        .expect("drop schema");
    let error = result.err().expect("the budget of 0 stops the extraction");
    assert!(matches!(error, SourceError::TooManyBadValues(_)), "{error}");
    assert_eq!(left, 0, "the connection that ran the COPY is still open");
    assert_eq!(answered, 1);
}
