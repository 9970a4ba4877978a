//! `describe` learns the unique indexes and constraints beside the primary key, on real
//! PostgreSQL and MariaDB: whole-table ones only (no partial, expression or prefix index),
//! key columns only (no INCLUDE columns), each once.

use crate::support::{connect, unique, url};
use datasync::manifest::raw::SourceKind;
use datasync::source::Source;
use sqlx::Executor;

#[tokio::test]
async fn postgres_unique_indexes_and_constraints() {
    let url = url(
        "DATASYNC_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let source = connect(SourceKind::Postgres, &url).await;
    let Source::Postgres(admin) = &source else {
        unreachable!()
    };
    let schema = unique("dsuniq");
    admin
        .execute(sqlx::raw_sql(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.t (id bigint, tenant int, email text, code text, note text,
               PRIMARY KEY (tenant, id), UNIQUE (email));
             CREATE UNIQUE INDEX ON {schema}.t (code, tenant) INCLUDE (note);
             CREATE UNIQUE INDEX ON {schema}.t (note) WHERE note IS NOT NULL;
             CREATE UNIQUE INDEX ON {schema}.t (lower(email));
             CREATE UNIQUE INDEX ON {schema}.t (tenant, id);
             CREATE INDEX ON {schema}.t (note);"
        )))
        .await
        .unwrap();
    let described = source.describe(Some(&schema), "t").await;
    admin
        .execute(sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE")))
        .await
        .unwrap();
    let table = described.unwrap();
    assert_eq!(table.primary_key, ["tenant", "id"]);
    assert_eq!(
        table.unique_keys,
        // By index name (`t_code_tenant_note_idx`, `t_email_key`); the INCLUDE column is not
        // part of the key, and the index repeating the primary key adds nothing.
        [
            vec!["code".to_string(), "tenant".into()],
            vec!["email".into()]
        ]
    );
    assert!(table.is_unique_key(&["id".into(), "tenant".into(), "x".into()]));
    assert!(table.is_unique_key(&["email".into()]));
    assert!(!table.is_unique_key(&["note".into()]));
}

#[tokio::test]
async fn mysql_unique_indexes_and_constraints() {
    let url = url(
        "DATASYNC_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
    );
    let source = connect(SourceKind::Mysql, &url).await;
    let Source::Mysql(admin) = &source else {
        unreachable!()
    };
    let database = unique("dsuniq");
    admin
        .execute(sqlx::raw_sql(&format!(
            "CREATE DATABASE {database};
             CREATE TABLE {database}.t (id BIGINT, tenant INT, email VARCHAR(50), code VARCHAR(20),
               note TEXT, PRIMARY KEY (tenant, id), UNIQUE KEY (email), UNIQUE KEY (code, tenant),
               UNIQUE KEY (note(10)), KEY (code));"
        )))
        .await
        .unwrap();
    let described = source.describe(Some(&database), "t").await;
    admin
        .execute(sqlx::raw_sql(&format!("DROP DATABASE {database}")))
        .await
        .unwrap();
    let table = described.unwrap();
    assert_eq!(table.primary_key, ["tenant", "id"]);
    assert_eq!(
        table.unique_keys,
        [
            vec!["code".to_string(), "tenant".into()],
            vec!["email".into()]
        ]
    );
}
