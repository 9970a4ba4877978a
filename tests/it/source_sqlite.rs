//! SQLite type matrix: describe + map + extract on a scratch database file.

use crate::support::{connect, run, table_spec};
use datasync::manifest::raw::SourceKind;
use datasync::schema::ReadAs;
use datasync::source::CursorFilter;
use sqlx::Executor;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

const SETUP: &str = r#"
CREATE TABLE "user" (
  id INTEGER PRIMARY KEY,
  "order" TEXT NOT NULL,
  "Odd Name" VARCHAR(10),
  i BIGINT,
  r REAL,
  n NUMERIC(10,2),
  nfree DECIMAL,
  b BOOLEAN,
  d DATE,
  dt DATETIME,
  ts TIMESTAMP,
  bl BLOB,
  j JSON,
  anything
);
INSERT INTO "user" VALUES
 (1, 'héllo 😀 "q"', 'x', 9223372036854775807, 1.5, 12345678.9, '123.456', 1, '2024-02-29', '2024-02-29 10:11:12.5',
  '2024-02-29T10:11:12Z', X'00FF10', '{"a": [1, {"b": null}]}', 42),
 (2, '', NULL, -9223372036854775808, -9e999, '-0.01', 7, 0, '0001-01-01', '2024-02-29', 'whatever', NULL, '[]', X'00'),
 (3, 'bad values', NULL, 'not a number', 9e999, NULL, NULL, 'maybe', '2024-13-01', 'never', NULL, 'text as blob', 'not json', 1.25),
 (4, 'int in real', NULL, 4, 4, 4, 1e40, 'true', NULL, NULL, NULL, NULL, NULL, NULL);
"#;

#[tokio::test]
async fn sqlite_type_matrix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("source.db");
    {
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("create db");
        pool.execute(sqlx::raw_sql(SETUP)).await.expect("setup");
        pool.close().await;
    }
    let url = format!("sqlite://{}", path.display());
    let source = connect(SourceKind::Sqlite, &url).await;
    let spec = table_spec(SourceKind::Sqlite, None, "user");
    let full = run(&source, &spec, None).await.expect("extract");
    insta::assert_yaml_snapshot!("sqlite_describe", full.table);
    let codecs: Vec<String> = full
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
    insta::assert_yaml_snapshot!("sqlite_codecs", codecs);
    insta::assert_yaml_snapshot!("sqlite_warnings", full.mapping.warnings);
    insta::assert_snapshot!("sqlite_lines", full.lines.join("\n"));
    insta::assert_yaml_snapshot!("sqlite_stats", full.stats);

    let filter = CursorFilter {
        column: "id".into(),
        value: "2".into(),
        inclusive: false,
    };
    let incremental = run(&source, &spec, Some(&filter))
        .await
        .expect("incremental");
    assert_eq!(incremental.stats.rows + incremental.stats.failed_rows, 2);

    let missing = source.describe(None, "nope").await.expect_err("missing");
    assert_eq!(
        missing.to_string(),
        "table `nope` not found in SQLite source"
    );
}

/// One describe of many tables gives each table exactly what describing it alone gives, in the
/// order asked, with a missing table as its own error.
#[tokio::test]
async fn describing_many_tables_equals_describing_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("source.db");
    {
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("create db");
        pool.execute(sqlx::raw_sql(SETUP)).await.expect("setup");
        pool.execute(sqlx::raw_sql(
            "CREATE TABLE keyed (a INTEGER NOT NULL, b TEXT, c TEXT, d TEXT, PRIMARY KEY (b, a));
             CREATE UNIQUE INDEX keyed_cd ON keyed (d, c);
             CREATE UNIQUE INDEX keyed_partial ON keyed (c) WHERE c IS NOT NULL;
             CREATE UNIQUE INDEX keyed_expr ON keyed (lower(c));
             CREATE INDEX keyed_plain ON keyed (d);
             CREATE VIEW named AS SELECT id, \"order\" FROM \"user\";",
        ))
        .await
        .expect("more tables");
        pool.close().await;
    }
    let source = connect(SourceKind::Sqlite, &format!("sqlite://{}", path.display())).await;
    let names: Vec<String> = ["named", "user", "nope", "keyed"]
        .iter()
        .map(|name| name.to_string())
        .collect();
    let many = source.describe_many(None, &names).await.expect("describe");
    assert_eq!(many.len(), names.len());
    for (name, described) in names.iter().zip(&many) {
        match (described, source.describe(None, name).await) {
            (Ok(batch), Ok(alone)) => assert_eq!(batch, &alone, "{name}"),
            (Err(batch), Err(alone)) => assert_eq!(batch.to_string(), alone.to_string()),
            (batch, alone) => panic!("{name}: {batch:?} vs {alone:?}"),
        }
    }
    let keyed = many[3].as_ref().expect("keyed");
    assert_eq!(keyed.primary_key, ["b", "a"]);
    // Partial and expression indexes do not make columns unique.
    assert_eq!(keyed.unique_keys, [vec!["d".to_string(), "c".to_string()]]);
    assert!(many[2].is_err());
}

/// SQLite's unique indexes and constraints beside the primary key: whole-table ones only.
#[tokio::test]
async fn sqlite_describe_reads_unique_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT UNIQUE, a INT, b INT, note TEXT, UNIQUE (a, b));
         CREATE UNIQUE INDEX t_note ON t (note) WHERE note IS NOT NULL;
         CREATE UNIQUE INDEX t_lower ON t (lower(email));
         CREATE INDEX t_plain ON t (note);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let spec = crate::support::source_spec(
        datasync::manifest::raw::SourceKind::Sqlite,
        &format!("sqlite://{}", path.display()),
    );
    let source = datasync::source::Source::connect(&spec).await.unwrap();
    let table = source.describe(None, "t").await.unwrap();
    assert_eq!(table.primary_key, ["id"]);
    // Sorted by index name: `sqlite_autoindex_t_1` (email), `sqlite_autoindex_t_2` (a, b).
    assert_eq!(
        table.unique_keys,
        [vec!["email".to_string()], vec!["a".into(), "b".into()]]
    );
}
