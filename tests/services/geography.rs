//! GEOGRAPHY values BigQuery reads right: WGS 84, longitude first, other SRIDs transformed or
//! rejected as counted bad values of their row (never a failed load), against MariaDB and
//! PostgreSQL with PostGIS (`scripts/services.sh` installs the PostGIS package).

use crate::support::{connect, run, table_spec, unique, url};
use datasync::manifest::raw::SourceKind;
use datasync::schema::GeometryPolicy;
use datasync::source::Source;
use sqlx::Executor;

fn geography_spec(
    kind: SourceKind,
    qualifier: Option<&str>,
) -> datasync::manifest::resolve::TableSpec {
    let mut spec = table_spec(kind, qualifier, "places");
    spec.types.geometry = GeometryPolicy::Geography;
    spec.max_parse_failures = Some(10);
    spec
}

#[tokio::test]
async fn mariadb_geography_keeps_longitude_first_and_rejects_unknown_srids() {
    let url = url(
        "DATASYNC_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
    );
    let source = connect(SourceKind::Mysql, &url).await;
    let Source::Mysql(admin) = &source else {
        unreachable!()
    };
    let database = unique("ds-geo");
    let quoted = format!("`{database}`");
    admin
        .execute(sqlx::raw_sql(&format!(
            "CREATE DATABASE {quoted}; CREATE TABLE {quoted}.places (id int PRIMARY KEY, g geometry);
             INSERT INTO {quoted}.places VALUES
               (1, ST_GeomFromText('POINT(13.4 52.5)', 4326)),
               (2, ST_GeomFromText('POINT(1491681 6893803)', 3857)),
               (3, NULL),
               (4, ST_GeomFromText('LINESTRING(0 0, 1 1)'));"
        )))
        .await
        .expect("create");
    let outcome = run(
        &source,
        &geography_spec(SourceKind::Mysql, Some(&database)),
        None,
    )
    .await;
    admin
        .execute(sqlx::raw_sql(&format!("DROP DATABASE {quoted}")))
        .await
        .expect("drop");
    let outcome = outcome.expect("extract");
    assert_eq!(
        outcome.lines,
        [
            r#"{"id":"1","g":"POINT(13.4 52.5)"}"#,
            r#"{"id":"3","g":null}"#,
            r#"{"id":"4","g":"LINESTRING(0 0,1 1)"}"#,
        ]
    );
    assert_eq!(outcome.stats.failed_rows, 1);
    assert!(
        outcome.stats.failures[0].contains(
            "row (id=2): column `g`: geometry in SRID 3857 cannot be converted to WGS 84"
        ),
        "{:?}",
        outcome.stats.failures
    );
}

#[tokio::test]
async fn postgis_geometries_are_transformed_to_wgs84_and_invalid_ones_are_bad_values() {
    let admin_url = url(
        "DATASYNC_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let admin = connect(SourceKind::Postgres, &admin_url).await;
    let Source::Postgres(admin_pool) = &admin else {
        unreachable!()
    };
    // PostGIS lives in its own scratch database, dropped at the end.
    let database = unique("ds_geo");
    admin_pool
        .execute(sqlx::raw_sql(&format!("CREATE DATABASE {database}")))
        .await
        .expect("create database");
    let db_url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{database}"),
        None => panic!("bad URL {admin_url}"),
    };
    let source = connect(SourceKind::Postgres, &db_url).await;
    let Source::Postgres(pool) = &source else {
        unreachable!()
    };
    let setup = pool
        .execute(sqlx::raw_sql(
            "CREATE EXTENSION postgis;
             CREATE TABLE places (id int PRIMARY KEY, g geometry, h geography);
             INSERT INTO places VALUES
               (1, ST_GeomFromText('POINT(13.4 52.5)', 4326), 'SRID=4326;POINT(2.35 48.85)'),
               (2, ST_Transform(ST_GeomFromText('POINT(13.4 52.5)', 4326), 3857), NULL),
               (3, ST_GeomFromText('POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))', 4326), NULL),
               (4, NULL, NULL);",
        ))
        .await;
    let outcome = match setup {
        Ok(_) => Some(
            run(
                &source,
                &geography_spec(SourceKind::Postgres, Some("public")),
                None,
            )
            .await,
        ),
        Err(error) => {
            eprintln!("PostGIS is not installed: {error}");
            None
        }
    };
    pool.close().await;
    admin_pool
        .execute(sqlx::raw_sql(&format!(
            "DROP DATABASE {database} WITH (FORCE)"
        )))
        .await
        .expect("drop database");
    let outcome = outcome
        .expect(
            "PostGIS missing: run `scripts/services.sh` (it installs postgresql-<major>-postgis-3)",
        )
        .expect("extract");
    let rows: Vec<serde_json::Value> = outcome
        .lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows[0]["g"], "POINT(13.4 52.5)");
    assert_eq!(rows[0]["h"], "POINT(2.35 48.85)");
    // Web Mercator back to WGS 84, longitude first (within rounding).
    let transformed = rows[1]["g"].as_str().unwrap();
    let coordinates: Vec<f64> = transformed
        .trim_start_matches("POINT(")
        .trim_end_matches(')')
        .split(' ')
        .map(|number| number.parse().unwrap())
        .collect();
    assert!(
        (coordinates[0] - 13.4).abs() < 1e-6 && (coordinates[1] - 52.5).abs() < 1e-6,
        "{transformed}"
    );
    assert_eq!(rows[2]["id"], "4");
    assert_eq!(
        rows.len(),
        3,
        "the self-intersecting polygon's row is left out"
    );
    assert_eq!(outcome.stats.failed_rows, 1);
    assert!(
        outcome.stats.failures[0].starts_with(
            "row (id=3): column `g`: geometry is not valid for GEOGRAPHY (Self-intersection"
        ),
        "{:?}",
        outcome.stats.failures
    );
}
