use super::*;
use crate::schema::{BqType, FieldMode, SourceColumn, WarehouseField};

fn column(name: &str, column_type: &str, codec: Codec, read_as: ReadAs) -> ColumnMapping {
    ColumnMapping {
        source: SourceColumn {
            name: name.into(),
            ordinal: 1,
            data_type: column_type.into(),
            column_type: column_type.into(),
            nullable: true,
            precision: None,
            scale: None,
            max_length: None,
            primary_key: false,
            comment: None,
            is_json: false,
        },
        target: name.into(),
        field: WarehouseField::new(name, BqType::String, FieldMode::Nullable),
        codec,
        read_as,
        lossy: None,
    }
}

fn native(name: &str, column_type: &str, codec: Codec) -> ColumnMapping {
    column(name, column_type, codec, ReadAs::Native)
}

fn table(qualifier: Option<&str>, name: &str) -> SourceTable {
    SourceTable {
        qualifier: qualifier.map(str::to_string),
        name: name.into(),
        columns: Vec::new(),
        primary_key: Vec::new(),
        unique_keys: Vec::new(),
        estimated_rows: None,
        comment: None,
        query: None,
    }
}

fn filter(column: &str, value: &str, inclusive: bool) -> CursorFilter {
    CursorFilter {
        column: column.into(),
        value: value.into(),
        inclusive,
    }
}

#[test]
fn quoting() {
    assert_eq!(Postgres.quote("order").unwrap(), "\"order\"");
    assert_eq!(Postgres.quote("We\"ird").unwrap(), "\"We\"\"ird\"");
    assert_eq!(Sqlite.quote("a\"b").unwrap(), "\"a\"\"b\"");
    assert_eq!(Mysql.quote("my-db").unwrap(), "`my-db`");
    assert_eq!(Mysql.quote("a`b").unwrap(), "`a``b`");
    for dialect in [&Mysql as &dyn Dialect, &Postgres, &Sqlite] {
        assert_eq!(
            dialect.quote("a\0b").unwrap_err().to_string(),
            "identifier \"a\\0b\" contains a NUL character"
        );
    }
}

#[test]
fn table_refs() {
    assert_eq!(
        Postgres.table_ref(&table(Some("s"), "t\"x")).unwrap(),
        "\"s\".\"t\"\"x\""
    );
    assert_eq!(
        Mysql.table_ref(&table(Some("db"), "t")).unwrap(),
        "`db`.`t`"
    );
    assert_eq!(Sqlite.table_ref(&table(None, "t")).unwrap(), "\"t\"");
}

#[test]
fn postgres_select_expressions() {
    let cases = [
        (native("c", "integer", Codec::Int), "\"c\""),
        (native("c", "jsonb", Codec::Json), "\"c\"::text"),
        (
            native("c", "jsonb[]", Codec::Array(Box::new(Codec::Json))),
            "\"c\"::text[]",
        ),
        (
            column("c", "uuid", Codec::Text, ReadAs::Text),
            "\"c\"::text",
        ),
        (
            column(
                "c",
                "inet[]",
                Codec::Array(Box::new(Codec::Text)),
                ReadAs::Text,
            ),
            "\"c\"::text[]",
        ),
        (
            column("c", "money", Codec::Decimal, ReadAs::Numeric),
            "\"c\"::numeric",
        ),
        (
            column(
                "c",
                "money[]",
                Codec::Array(Box::new(Codec::Decimal)),
                ReadAs::Numeric,
            ),
            "\"c\"::numeric[]",
        ),
        (
            column("c", "geometry", Codec::Text, ReadAs::Wkt),
            "ST_AsText(\"c\")",
        ),
        (
            native("c", "integer[]", Codec::Array(Box::new(Codec::Int))),
            "\"c\"",
        ),
    ];
    for (column, expected) in cases {
        assert_eq!(
            Postgres.select_expr(&column).unwrap(),
            expected,
            "{column:?}"
        );
    }
}

#[test]
fn mysql_and_sqlite_select_expressions() {
    let geometry = column("g", "point", Codec::Text, ReadAs::Wkt);
    assert_eq!(Mysql.select_expr(&geometry).unwrap(), "ST_AsText(`g`)");
    assert_eq!(
        Mysql
            .select_expr(&native("t", "time", Codec::Duration))
            .unwrap(),
        "`t`"
    );
    assert_eq!(
        Mysql
            .select_expr(&column("t", "x", Codec::Text, ReadAs::Text))
            .unwrap(),
        "CAST(`t` AS CHAR)"
    );
    assert_eq!(
        Sqlite
            .select_expr(&native("v", "REAL", Codec::Float))
            .unwrap(),
        "\"v\""
    );
    assert_eq!(
        Sqlite
            .select_expr(&column("v", "X", Codec::Text, ReadAs::Text))
            .unwrap(),
        "CAST(\"v\" AS TEXT)"
    );
    assert_eq!(
        Sqlite.select_expr(&geometry).unwrap_err().to_string(),
        "column `g`: SQLite has no geometry functions to read well-known text"
    );
}

#[test]
fn bound_predicates() {
    let int = native("id", "bigint", Codec::Int);
    assert_eq!(
        Mysql.bound_predicate(&int, false).unwrap(),
        "`id` > CAST(? AS SIGNED)"
    );
    assert_eq!(
        Mysql.bound_predicate(&int, true).unwrap(),
        "`id` >= CAST(? AS SIGNED)"
    );
    assert_eq!(
        Mysql
            .bound_predicate(&native("n", "int unsigned", Codec::UInt), false)
            .unwrap(),
        "`n` > CAST(? AS UNSIGNED)"
    );
    let mut decimal = native("d", "decimal(12,3)", Codec::Decimal);
    decimal.source.precision = Some(12);
    decimal.source.scale = Some(3);
    assert_eq!(
        Mysql.bound_predicate(&decimal, false).unwrap(),
        "`d` > CAST(? AS DECIMAL(12,3))"
    );
    assert_eq!(
        Mysql
            .bound_predicate(&native("d", "date", Codec::Date), true)
            .unwrap(),
        "`d` >= CAST(? AS DATE)"
    );
    assert_eq!(
        Mysql
            .bound_predicate(&native("t", "timestamp", Codec::Timestamp), false)
            .unwrap(),
        "`t` > CAST(? AS DATETIME(6))"
    );
    assert_eq!(
        Mysql
            .bound_predicate(&native("s", "varchar(9)", Codec::Text), false)
            .unwrap(),
        "`s` > ?"
    );

    let at = native("at", "timestamp with time zone", Codec::Timestamp);
    assert_eq!(
        Postgres.bound_predicate(&at, false).unwrap(),
        "\"at\" > $1::timestamp with time zone"
    );
    assert_eq!(
        Postgres
            .bound_predicate(&native("v", "numeric(10,2)", Codec::Decimal), true)
            .unwrap(),
        "\"v\" >= $1::numeric(10,2)"
    );
    assert_eq!(
        Postgres
            .bound_predicate(&native("e", "\"my type\"", Codec::Text), false)
            .unwrap_err()
            .to_string(),
        "cursor column `e` has an unsupported type `\"my type\"`"
    );

    assert_eq!(
        Sqlite.bound_predicate(&int, false).unwrap(),
        "\"id\" > CAST(?1 AS INTEGER)"
    );
    assert_eq!(
        Sqlite
            .bound_predicate(&native("r", "REAL", Codec::Float), true)
            .unwrap(),
        "\"r\" >= CAST(?1 AS REAL)"
    );
    assert_eq!(
        Sqlite
            .bound_predicate(&native("s", "TEXT", Codec::Text), false)
            .unwrap(),
        "\"s\" > ?1"
    );
}

#[test]
fn bind_values() {
    let max = "2024-01-02T03:04:05.123456Z";
    let timestamp = native("t", "timestamp", Codec::Timestamp);
    let datetime = native("t", "datetime", Codec::DateTime);
    let text = native("t", "text", Codec::Text);
    assert_eq!(
        Mysql.bind_value(&timestamp, max),
        "2024-01-02 03:04:05.123456"
    );
    assert_eq!(Mysql.bind_value(&text, max), max);
    assert_eq!(
        Postgres.bind_value(&timestamp, "2024-01-02 03:04:05 UTC"),
        "2024-01-02 03:04:05+00"
    );
    assert_eq!(
        Postgres.bind_value(&datetime, max),
        "2024-01-02 03:04:05.123456"
    );
    assert_eq!(
        Postgres.bind_value(&native("d", "date", Codec::Date), "2024-01-02"),
        "2024-01-02"
    );
    assert_eq!(Postgres.bind_value(&text, max), max);
    assert_eq!(Sqlite.bind_value(&datetime, max), max);
}

#[test]
fn temporal_cursor_values() {
    assert_eq!(
        normalize_temporal("2024-01-02T03:04:05.123456Z"),
        "2024-01-02 03:04:05.123456"
    );
    assert_eq!(
        normalize_temporal("2024-01-02 03:04:05 UTC"),
        "2024-01-02 03:04:05"
    );
    assert_eq!(
        normalize_temporal("2024-01-02 03:04:05+00:00"),
        "2024-01-02 03:04:05"
    );
    assert_eq!(normalize_temporal("2024-01-02"), "2024-01-02");
}

#[test]
fn statements() {
    let columns = vec![
        native("id", "bigint", Codec::Int),
        column("g", "geometry", Codec::Text, ReadAs::Wkt),
    ];
    let t = table(Some("public"), "t");
    assert_eq!(
        count_sql(&Postgres, &t, &columns, None).unwrap(),
        Statement {
            sql: "SELECT count(*) FROM \"public\".\"t\"".into(),
            bind: None
        }
    );
    assert_eq!(
        count_sql(&Mysql, &t, &columns, Some(&filter("id", "7", false))).unwrap(),
        Statement {
            sql: "SELECT CAST(COUNT(*) AS SIGNED) FROM `public`.`t` WHERE `id` > CAST(? AS SIGNED)"
                .into(),
            bind: Some("7".into())
        }
    );
    assert_eq!(
        select_sql(&Postgres, &t, &columns, Some(&filter("id", "7", true)), None).unwrap(),
        Statement {
            sql: "SELECT \"id\", ST_AsText(\"g\") FROM \"public\".\"t\" WHERE (\"id\" >= $1::bigint OR \"id\" IS NULL) ORDER BY \"id\""
                .into(),
            bind: Some("7".into())
        },
        "a merge re-reads the rows whose nullable cursor is NULL"
    );
    let mut not_null = columns.clone();
    not_null[0].source.nullable = false;
    assert_eq!(
        select_sql(
            &Postgres,
            &t,
            &not_null,
            Some(&filter("id", "7", true)),
            None
        )
        .unwrap()
        .sql,
        "SELECT \"id\", ST_AsText(\"g\") FROM \"public\".\"t\" WHERE \"id\" >= $1::bigint ORDER BY \"id\""
    );
    assert_eq!(
        select_sql(&Sqlite, &table(None, "t"), &columns[..1], None, None).unwrap(),
        Statement {
            sql: "SELECT \"id\" FROM \"t\"".into(),
            bind: None
        }
    );
    assert_eq!(
        select_sql(
            &Postgres,
            &t,
            &columns,
            Some(&filter("nope", "7", false)),
            None
        )
        .unwrap_err()
        .to_string(),
        "cursor column `nope` is not extracted from `t`"
    );
}

#[test]
fn geography_is_read_as_longitude_first_wgs84_or_flagged() {
    let g = column("g", "geometry", Codec::Text, ReadAs::Geography);
    // MariaDB: no SRS, no ST_Transform: SRID 0/4326 as written, other SRIDs flagged.
    assert_eq!(
        Mysql.select_expr(&g).unwrap(),
        "CASE WHEN ST_SRID(`g`) IN (0, 4326) THEN ST_AsText(`g`) ELSE CONCAT('!srid ', ST_SRID(`g`)) END"
    );
    // MySQL 8: SRID 4326 is latitude-first unless asked; other SRIDs transformed; invalid flagged.
    assert_eq!(
        Mysql8.select_expr(&g).unwrap(),
        "CASE WHEN NOT ST_IsValid(`g`) THEN '!invalid geometry' WHEN ST_SRID(`g`) IN (0, 4326) THEN ST_AsText(`g`, 'axis-order=long-lat') ELSE ST_AsText(ST_Transform(`g`, 4326), 'axis-order=long-lat') END"
    );
    // Everything but geography is MySQL's.
    let text = column("t", "x", Codec::Text, ReadAs::Text);
    assert_eq!(
        Mysql8.select_expr(&text).unwrap(),
        Mysql.select_expr(&text).unwrap()
    );
    assert_eq!(
        Postgres.select_expr(&g).unwrap(),
        "CASE WHEN NOT ST_IsValid(\"g\"::geometry) THEN '!invalid ' || ST_IsValidReason(\"g\"::geometry) WHEN ST_SRID(\"g\"::geometry) IN (0, 4326) THEN ST_AsText(\"g\"::geometry) ELSE ST_AsText(ST_Transform(\"g\"::geometry, 4326)) END"
    );
    // The plain WKT reading (GEOGRAPHY off: `types.geometry: string`) is unchanged.
    let wkt = column("g", "geometry", Codec::Text, ReadAs::Wkt);
    assert_eq!(Postgres.select_expr(&wkt).unwrap(), "ST_AsText(\"g\")");
    assert!(Sqlite.select_expr(&g).is_err());
}

#[test]
fn chunk_predicates_per_engine() {
    use crate::schema::ChunkRange;
    let key = ChunkRange::Key {
        lo: Some(-5),
        hi: Some(100),
    };
    assert_eq!(
        chunk_predicate(&Postgres, "id", key, true)
            .unwrap()
            .unwrap(),
        r#""id" >= -5 AND "id" < 100"#
    );
    assert_eq!(
        chunk_predicate(
            &Mysql,
            "i`d",
            ChunkRange::Key {
                lo: None,
                hi: Some(7)
            },
            false
        )
        .unwrap()
        .unwrap(),
        "`i``d` < 7"
    );
    assert_eq!(
        chunk_predicate(&Mysql, "id", ChunkRange::Key { lo: None, hi: None }, false)
            .unwrap()
            .unwrap(),
        "TRUE"
    );
    let pages = ChunkRange::Pages {
        lo: 10,
        hi: Some(20),
    };
    assert_eq!(
        chunk_predicate(&Postgres, "id", pages, true)
            .unwrap()
            .unwrap(),
        "ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid"
    );
    assert_eq!(chunk_predicate(&Mysql, "id", pages, false).unwrap(), None);
}

#[test]
fn a_chunk_narrows_the_select_and_keeps_the_bound() {
    let columns = vec![native("id", "bigint", Codec::Int)];
    let t = table(Some("public"), "t");
    let chunk = chunk_predicate(
        &Postgres,
        "id",
        crate::schema::ChunkRange::Key {
            lo: Some(10),
            hi: Some(20),
        },
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        select_sql(&Postgres, &t, &columns, None, Some(&chunk))
            .unwrap()
            .sql,
        r#"SELECT "id" FROM "public"."t" WHERE "id" >= 10 AND "id" < 20"#
    );
    assert_eq!(
        select_sql(
            &Postgres,
            &t,
            &columns,
            Some(&filter("id", "7", false)),
            Some(&chunk)
        )
        .unwrap(),
        Statement {
            sql: r#"SELECT "id" FROM "public"."t" WHERE "id" > $1::bigint AND ("id" >= 10 AND "id" < 20) ORDER BY "id""#
                .into(),
            bind: Some("7".into())
        }
    );
}

/// A custom SQL source: the query as a derived table, the bound a placeholder whatever the
/// cursor value holds (never spliced into the SQL).
#[test]
fn a_query_is_wrapped_as_a_derived_table_and_its_bound_is_a_parameter() {
    let query = "SELECT o.id, sum(i.price) AS total, max(o.at) AS at\nFROM orders o JOIN items i ON i.order_id = o.id\nGROUP BY o.id -- per order";
    let mut source = table(None, "daily_orders");
    source.query = Some(query.into());
    let columns = vec![
        native("id", "bigint", Codec::Int),
        column("total", "numeric(12,2)", Codec::Decimal, ReadAs::Numeric),
        native("at", "timestamp with time zone", Codec::Timestamp),
    ];
    let hostile = "2024-01-01'; DROP TABLE orders; --";
    let wrapped = format!("(\n{query}\n) AS q");
    for (dialect, placeholder, count) in [
        (
            &Postgres as &dyn Dialect,
            "$1::timestamp with time zone",
            "count(*)",
        ),
        (&Mysql, "CAST(? AS DATETIME(6))", "CAST(COUNT(*) AS SIGNED)"),
        (&Sqlite, "?1", "count(*)"),
    ] {
        assert_eq!(dialect.table_ref(&source).unwrap(), wrapped);
        let q = |name: &str| dialect.quote(name).unwrap();
        let select = select_sql(
            dialect,
            &source,
            &columns,
            Some(&filter("at", hostile, false)),
            None,
        )
        .unwrap();
        assert_eq!(
            select.sql,
            format!(
                "SELECT {}, {}, {} FROM {wrapped} WHERE {} > {placeholder} ORDER BY {}",
                q("id"),
                dialect.select_expr(&columns[1]).unwrap(),
                q("at"),
                q("at"),
                q("at"),
            )
        );
        assert!(!select.sql.contains("DROP"), "{}", select.sql);
        assert!(select.bind.as_deref().unwrap().contains("DROP"));
        let counted = count_sql(
            dialect,
            &source,
            &columns,
            Some(&filter("at", hostile, false)),
        )
        .unwrap();
        assert_eq!(
            counted.sql,
            format!(
                "SELECT {count} FROM {wrapped} WHERE {} > {placeholder}",
                q("at")
            )
        );
        assert!(!counted.sql.contains("DROP"));
        assert_eq!(counted.bind, select.bind);
        // Without a bound: the whole result.
        assert_eq!(
            count_sql(dialect, &source, &columns, None).unwrap().sql,
            format!("SELECT {count} FROM {wrapped}")
        );
    }
    assert_eq!(source.label(), "query:daily_orders");
}
