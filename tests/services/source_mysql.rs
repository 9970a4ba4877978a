//! MySQL/MariaDB type matrix: describe + map + extract against a real server
//! (`DATASYNC_TEST_MYSQL_URL`, default `mysql://root@127.0.0.1:3306/test`).

use crate::support::{Extracted, connect, run, table_spec, unique, url};
use datasync::manifest::raw::SourceKind;
use datasync::schema::ReadAs;
use datasync::source::{CursorFilter, Source, SourceError};
use sqlx::Executor;

const DEFAULT_URL: &str = "mysql://root@127.0.0.1:3306/test";

const CREATE: &str = r#"
CREATE TABLE {D}.`order` (
  id BIGINT UNSIGNED PRIMARY KEY COMMENT 'the key',
  `user` VARCHAR(50) COMMENT 'reserved word',
  `we``ird col` INT,
  ti TINYINT, tiu TINYINT UNSIGNED, b1 TINYINT(1), si SMALLINT, mi MEDIUMINT UNSIGNED, i INT NOT NULL,
  bi BIGINT, bu BIGINT UNSIGNED, yr YEAR,
  dec1 DECIMAL(38,9), dec2 DECIMAL(65,30), dec3 DECIMAL(10,2) NOT NULL,
  fl FLOAT, db DOUBLE,
  bit1 BIT(1), bit8 BIT(8), bit12 BIT(12),
  d DATE, dt DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(6), d_nn DATE NOT NULL,
  ch CHAR(3), vc VARCHAR(20), tx TEXT, lt LONGTEXT,
  j JSON,
  bin BINARY(3), vb VARBINARY(10), bl BLOB,
  en ENUM('a','b','c'), st SET('x','y','z'),
  u UUID,
  g GEOMETRY,
  lat1 VARCHAR(10) CHARACTER SET latin1
) COMMENT 'orders'
"#;

const ROWS: &[&str] = &[
    r#"INSERT INTO {D}.`order` VALUES (18446744073709551615, 'héllo 😀 "q"\n\\', 1,
  127, 255, 1, 32767, 16777215, 2147483647, 9223372036854775807, 18446744073709551615, 2155,
  99999999999999999999999999999.999999999, 99999999999999999999999999999999999.999999999999999999999999999999, 12345678.90,
  3.40282e38, 1.7976931348623157e308, b'1', b'11111111', b'101010101010',
  '9999-12-31', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', '838:59:59', '2024-02-29',
  'ab', 'x', 'text', '{"not": "json"}', '{"a": [1, 2, {"b": null}],\n "big": 12345678901234567890123}',
  0x00FF10, X'00FF', X'DEADBEEF', 'c', 'x,z', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  ST_GeomFromText('POINT(1 2)'), 'café')"#,
    r#"INSERT INTO {D}.`order` VALUES (0, '', NULL,
  -128, 0, 0, -32768, 0, -2147483648, -9223372036854775808, 0, 1901,
  -99999999999999999999999999999.999999999, -0.000000000000000000000000000001, -0.01,
  -1.5, -0.0, b'0', b'0', b'0',
  '0000-00-00', '0000-00-00 00:00:00', '1970-01-01 00:00:01', '-838:59:59', '0000-00-00',
  '', '', '', '', '[]',
  '', X'', X'', 'a', '', '00000000-0000-0000-0000-000000000000', NULL, '')"#,
    r#"INSERT INTO {D}.`order` (id, i, dec3, d, dt, tm, d_nn) VALUES (3, 0, 0, '2024-00-15', '2024-01-00 10:00:00', '25:00:00.5', '2024-00-15')"#,
    r#"INSERT INTO {D}.`order` (id, i, dec3, d_nn, bi, fl, db, d, dt, ts, tm, j) VALUES (4, 4, 4, '0001-01-01', 9007199254740993, 0.1, 0.1,
  '0001-01-01', '1000-01-01 00:00:00', '2024-06-01 12:34:56.789', '00:00:00.000001', '"scalar"')"#,
];

struct Outcome {
    full: Extracted,
    incremental: Extracted,
    missing: String,
}

async fn body(source: &Source, database: &str) -> Result<Outcome, SourceError> {
    let spec = table_spec(SourceKind::Mysql, Some(database), "order");
    let full = run(source, &spec, None).await?;
    let filter = CursorFilter {
        column: "id".into(),
        value: "3".into(),
        inclusive: false,
    };
    let incremental = run(source, &spec, Some(&filter)).await?;
    let missing = match source.describe(Some(database), "nope").await {
        Ok(_) => "found".into(),
        Err(error) => error.to_string(),
    };
    Ok(Outcome {
        full,
        incremental,
        missing,
    })
}

#[tokio::test]
async fn mysql_type_matrix() {
    let url = url("DATASYNC_TEST_MYSQL_URL", DEFAULT_URL);
    let source = connect(SourceKind::Mysql, &url).await;
    let Source::Mysql(admin) = &source else {
        unreachable!()
    };
    let database = unique("ds-test");
    let quoted = format!("`{database}`");
    {
        let mut conn = admin.acquire().await.expect("connection");
        conn.execute(sqlx::raw_sql(&format!("CREATE DATABASE {quoted}")))
            .await
            .expect("create database");
        conn.execute(sqlx::raw_sql(&CREATE.replace("{D}", &quoted)))
            .await
            .expect("create table");
        conn.execute(sqlx::raw_sql("SET SESSION sql_mode = ''"))
            .await
            .expect("relaxed sql_mode");
        for (index, row) in ROWS.iter().enumerate() {
            if index == 3 {
                // The session zone must not matter: this TIMESTAMP is 07:04:56.789 UTC.
                conn.execute(sqlx::raw_sql("SET SESSION time_zone = '+05:30'"))
                    .await
                    .expect("zone");
            }
            conn.execute(sqlx::raw_sql(&row.replace("{D}", &quoted)))
                .await
                .expect("insert");
        }
        conn.execute(sqlx::raw_sql(
            "SET SESSION time_zone = '+00:00', sql_mode = DEFAULT",
        ))
        .await
        .expect("reset session");
    }
    let outcome = body(&source, &database).await;
    admin
        .execute(sqlx::raw_sql(&format!("DROP DATABASE {quoted}")))
        .await
        .expect("drop database");
    let outcome = outcome.expect("extraction");
    let redact = |text: &str| text.replace(&database, "[database]");

    let mut table = outcome.full.table.clone();
    table.qualifier = Some("[database]".into());
    table.estimated_rows = None;
    insta::assert_yaml_snapshot!("mysql_describe", table);
    insta::assert_yaml_snapshot!("mysql_table", outcome.full.mapping.table);
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
    insta::assert_yaml_snapshot!("mysql_codecs", codecs);
    // The test's schema/database name is unique per run.
    insta::with_settings!({filters => vec![(r"ds-test_\d+_\d+", "[test-db]")]}, {
        insta::assert_yaml_snapshot!("mysql_warnings", outcome.full.mapping.warnings);
    });
    insta::assert_snapshot!("mysql_lines", outcome.full.lines.join("\n"));
    insta::assert_yaml_snapshot!("mysql_stats", outcome.full.stats);

    let ids: Vec<String> = outcome
        .incremental
        .lines
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["id"].to_string())
        .collect();
    assert_eq!(ids, ["\"4\"", "\"18446744073709551615\""]);
    insta::assert_snapshot!("mysql_missing", redact(&outcome.missing));
}

/// Tables beside the type matrix: keys of every kind.
const MORE: &str = r#"
CREATE TABLE {D}.keyed (a INT NOT NULL, b VARCHAR(10) NOT NULL, c VARCHAR(10), d INT,
  e VARCHAR(10), t TEXT,
  PRIMARY KEY (b, a), UNIQUE KEY keyed_cd (d, c), UNIQUE KEY keyed_z (e),
  UNIQUE KEY keyed_prefix (t(5)), KEY keyed_plain (d)) COMMENT 'with keys'
"#;

/// One information_schema query set for many tables of a database gives each exactly what
/// describing it alone gives (the type matrix included), in the order asked; a missing table is
/// its own error. Also past the `IN`-list limit, where the whole database is read.
#[tokio::test]
async fn mysql_describing_many_tables_equals_describing_each() {
    let url = url("DATASYNC_TEST_MYSQL_URL", DEFAULT_URL);
    let source = connect(SourceKind::Mysql, &url).await;
    let Source::Mysql(admin) = &source else {
        unreachable!()
    };
    let database = unique("ds-batch");
    let quoted = format!("`{database}`");
    admin
        .execute(sqlx::raw_sql(&format!("CREATE DATABASE {quoted}")))
        .await
        .expect("create database");
    let compared = async {
        admin
            .execute(sqlx::raw_sql(&CREATE.replace("{D}", &quoted)))
            .await
            .expect("create table");
        admin
            .execute(sqlx::raw_sql(&MORE.replace("{D}", &quoted)))
            .await
            .expect("more tables");
        let names: Vec<String> = ["keyed", "order", "nope"]
            .iter()
            .map(|name| name.to_string())
            .collect();
        let mut alone = Vec::new();
        for name in &names {
            alone.push(source.describe(Some(&database), name).await);
        }
        let many = source.describe_many(Some(&database), &names).await?;
        // 1,500 names (repeated): past the `IN`-list limit.
        let long: Vec<String> = names.iter().cycle().take(1500).cloned().collect();
        let whole = source.describe_many(Some(&database), &long).await?;
        Ok::<_, SourceError>((names, alone, many, whole))
    }
    .await;
    admin
        .execute(sqlx::raw_sql(&format!("DROP DATABASE {quoted}")))
        .await
        .expect("drop database");
    let (names, alone, many, whole) = compared.expect("describe");
    let same = |batch: &Result<_, SourceError>, alone: &Result<_, SourceError>, name: &str| match (
        batch, alone,
    ) {
        (Ok(batch), Ok(alone)) => assert_eq!(batch, alone, "{name}"),
        (Err(batch), Err(alone)) => assert_eq!(batch.to_string(), alone.to_string()),
        (batch, alone) => panic!("{name}: {batch:?} vs {alone:?}"),
    };
    for ((name, batch), alone) in names.iter().zip(&many).zip(&alone) {
        same(batch, alone, name);
    }
    assert_eq!(whole.len(), 1500);
    for (index, batch) in whole.iter().enumerate() {
        same(batch, &alone[index % 3], &names[index % 3]);
    }
    let keyed = many[0].as_ref().expect("keyed");
    assert_eq!(keyed.primary_key, ["b", "a"]);
    // Sorted by index name; a unique column prefix makes no column unique.
    assert_eq!(
        keyed.unique_keys,
        [
            vec!["d".to_string(), "c".to_string()],
            vec!["e".to_string()]
        ]
    );
    assert_eq!(keyed.comment.as_deref(), Some("with keys"));
    let matrix = many[1].as_ref().expect("order");
    assert_eq!(matrix.primary_key, ["id"]);
    assert!(
        matrix.columns.iter().any(|column| column.is_json),
        "MariaDB JSON"
    );
    assert!(many[2].is_err());
}

/// An extraction that stops early (the bad-value budget, at the first row) must not leave its
/// connection to read the rest of the table: returned to the pool, sqlx would read and discard
/// every remaining row before the connection's next use (a hidden full read, and a hang on a
/// big table). Measured by what the server sent: the table is 150 MB.
#[tokio::test]
async fn an_extraction_cut_short_does_not_read_the_rest_of_the_table() {
    use datasync::manifest::raw::BadValuePolicy;
    let url = url("DATASYNC_TEST_MYSQL_URL", DEFAULT_URL);
    let source = connect(SourceKind::Mysql, &url).await;
    let Source::Mysql(admin) = &source else {
        unreachable!()
    };
    let database = unique("ds-cut");
    let quoted = format!("`{database}`");
    let mut conn = admin.acquire().await.expect("connection");
    conn.execute(sqlx::raw_sql(&format!(
        "SET SESSION sql_mode = ''; SET SESSION max_recursive_iterations = 1000000; CREATE DATABASE {quoted}; CREATE TABLE {quoted}.big (id BIGINT PRIMARY KEY, d DATE, t VARCHAR(300)); INSERT INTO {quoted}.big WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 500000) SELECT g, '0000-00-00', REPEAT('x', 300) FROM s"
    )))
    .await
    .expect("create and fill the table");
    drop(conn);
    let sent = || async {
        let row: (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Bytes_sent'")
            .fetch_one(admin)
            .await
            .expect("Bytes_sent");
        row.1.parse::<u64>().expect("a byte count")
    };
    let mut spec = table_spec(SourceKind::Mysql, Some(&database), "big");
    spec.types.zero_dates = BadValuePolicy::Error;
    spec.max_parse_failures = Some(0);
    let before = sent().await;
    let result = run(&source, &spec, None).await;
    // Let a connection that went back to the pool drain (it would, within this time).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = sent().await;
    let answered: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(admin)
        .await
        .unwrap();
    admin
        .execute(sqlx::raw_sql(&format!("DROP DATABASE {quoted}")))
        .await
        .expect("drop database");
    let error = result.err().expect("the budget of 0 stops the extraction");
    assert!(matches!(error, SourceError::TooManyBadValues(_)), "{error}");
    let megabytes = (after - before) / 1_000_000;
    assert!(
        megabytes < 75,
        "the server sent {megabytes} MB of a 150 MB table after the extraction stopped at its first row"
    );
    assert_eq!(answered, 1);
}
