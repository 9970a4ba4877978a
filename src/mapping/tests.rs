use super::*;
use crate::diagnostic::messages;
use crate::manifest::raw::WriteMode;
use crate::manifest::resolve::Partitioning;

fn spec(kind: SourceKind) -> TableSpec {
    TableSpec {
        source: "src".into(),
        source_kind: kind,
        key: "t".into(),
        qualifier: Some("db".into()),
        name: "t".into(),
        target: "t_target".into(),
        enabled: true,
        columns: None,
        exclude_columns: Vec::new(),
        primary_key: None,
        cursor: None,
        mode: WriteMode::Replace,
        batch_size: 10_000,
        format: crate::schema::LoadFormat::Avro,
        chunk_bytes: 1 << 30,
        table_parallelism: 2,
        consistency: Default::default(),
        max_parse_failures: Some(100),
        column_types: Default::default(),
        partition_by: None,
        cluster_by: Vec::new(),
        allow_recreate: false,
        deletes: crate::schema::Deletes::Keep,
        auto_create: true,
        types: TypePolicies::default(),
        description: None,
        lineage: false,
        query: None,
    }
}

fn column(
    name: &str,
    data_type: &str,
    column_type: &str,
    precision: Option<u32>,
    scale: Option<u32>,
    nullable: bool,
) -> SourceColumn {
    SourceColumn {
        name: name.into(),
        ordinal: 1,
        data_type: data_type.into(),
        column_type: column_type.into(),
        nullable,
        precision,
        scale,
        max_length: None,
        primary_key: false,
        comment: None,
        is_json: false,
    }
}

fn table(columns: Vec<SourceColumn>) -> SourceTable {
    SourceTable {
        qualifier: Some("db".into()),
        name: "t".into(),
        primary_key: Vec::new(),
        unique_keys: Vec::new(),
        columns,
        estimated_rows: None,
        comment: None,
        query: None,
    }
}

/// Maps one column, returns `name TYPE MODE`, the codec and how it is selected.
fn one(
    kind: SourceKind,
    column: SourceColumn,
    adjust: impl Fn(&mut TableSpec),
) -> Result<(String, Codec, ReadAs), Vec<String>> {
    let mut spec = spec(kind);
    adjust(&mut spec);
    let mapping = map_table(&table(vec![column]), &spec).map_err(|errors| messages(&errors))?;
    Ok((
        mapping.columns[0].field.diff_line(),
        mapping.columns[0].codec.clone(),
        mapping.columns[0].read_as,
    ))
}

#[test]
fn type_map() {
    use SourceKind::{Mysql, Postgres, Sqlite};
    let none = |_: &mut TableSpec| {};
    let cases: Vec<(SourceKind, SourceColumn, &str, (Codec, ReadAs))> = vec![
        (
            Mysql,
            column("c", "tinyint", "tinyint(1)", None, None, true),
            "c BOOL NULLABLE",
            (Codec::Bool, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "tinyint", "tinyint(4) unsigned", None, None, true),
            "c INT64 NULLABLE",
            (Codec::UInt, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "bigint", "bigint(20) unsigned", None, None, false),
            "c NUMERIC(20, 0) REQUIRED",
            (Codec::UInt, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "bigint", "bigint(20)", None, None, false),
            "c INT64 REQUIRED",
            (Codec::Int, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "year", "year(4)", None, None, true),
            "c INT64 NULLABLE",
            (Codec::UInt, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "decimal", "decimal(38,9)", Some(38), Some(9), true),
            "c NUMERIC(38, 9) NULLABLE",
            (Codec::Decimal, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "decimal", "decimal(40,10)", Some(40), Some(10), true),
            "c BIGNUMERIC(40, 10) NULLABLE",
            (Codec::Decimal, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "decimal", "decimal(65,30)", Some(65), Some(30), true),
            "c BIGNUMERIC(65, 30) NULLABLE",
            (Codec::Decimal, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "decimal", "decimal(65,0)", Some(65), Some(0), true),
            "c STRING NULLABLE",
            (Codec::Decimal, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "float", "float", None, None, true),
            "c FLOAT64 NULLABLE",
            (Codec::Float, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "bit", "bit(1)", Some(1), None, true),
            "c BOOL NULLABLE",
            (Codec::Bool, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "bit", "bit(5)", Some(5), None, true),
            "c BYTES NULLABLE",
            (Codec::Bytes, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "datetime", "datetime(6)", None, None, true),
            "c DATETIME NULLABLE",
            (Codec::DateTime, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "datetime", "datetime", None, None, false),
            "c DATETIME REQUIRED",
            (Codec::DateTime, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "timestamp", "timestamp", None, None, true),
            "c TIMESTAMP NULLABLE",
            (Codec::Timestamp, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "time", "time", None, None, true),
            "c STRING NULLABLE",
            (Codec::Duration, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "json", "json", None, None, true),
            "c JSON NULLABLE",
            (Codec::Json, ReadAs::Native),
        ),
        (
            Mysql,
            SourceColumn {
                is_json: true,
                ..column("c", "longtext", "longtext", None, None, true)
            },
            "c JSON NULLABLE",
            (Codec::Json, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "enum", "enum('a','b')", None, None, true),
            "c STRING NULLABLE",
            (Codec::Text, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "varbinary", "varbinary(3)", None, None, true),
            "c BYTES NULLABLE",
            (Codec::Bytes, ReadAs::Native),
        ),
        (
            Mysql,
            column("c", "point", "point", None, None, true),
            "c STRING NULLABLE",
            (Codec::Text, ReadAs::Wkt),
        ),
        (
            Postgres,
            column("c", "numeric", "numeric", None, None, true),
            "c BIGNUMERIC NULLABLE",
            (Codec::Decimal, ReadAs::Native),
        ),
        (
            Postgres,
            column("c", "numeric", "numeric(10,2)", Some(10), Some(2), false),
            "c NUMERIC(10, 2) REQUIRED",
            (Codec::Decimal, ReadAs::Native),
        ),
        (
            Postgres,
            column("c", "_int4", "integer[]", None, None, true),
            "c INT64 REPEATED",
            (Codec::Array(Box::new(Codec::Int)), ReadAs::Native),
        ),
        (
            Postgres,
            column("c", "_inet", "inet[]", None, None, true),
            "c STRING REPEATED",
            (Codec::Array(Box::new(Codec::Text)), ReadAs::Text),
        ),
        (
            Postgres,
            column(
                "c",
                "timestamp with time zone",
                "timestamp with time zone",
                None,
                None,
                true,
            ),
            "c TIMESTAMP NULLABLE",
            (Codec::Timestamp, ReadAs::Native),
        ),
        (
            Postgres,
            column(
                "c",
                "timestamp without time zone",
                "timestamp(3) without time zone",
                None,
                None,
                true,
            ),
            "c DATETIME NULLABLE",
            (Codec::DateTime, ReadAs::Native),
        ),
        (
            Postgres,
            column(
                "c",
                "time with time zone",
                "time with time zone",
                None,
                None,
                true,
            ),
            "c STRING NULLABLE",
            (Codec::Text, ReadAs::Text),
        ),
        (
            Postgres,
            column(
                "c",
                "time without time zone",
                "time without time zone",
                None,
                None,
                false,
            ),
            "c TIME REQUIRED",
            (Codec::Time, ReadAs::Native),
        ),
        (
            Postgres,
            column("c", "interval", "interval", None, None, true),
            "c STRING NULLABLE",
            (Codec::Text, ReadAs::Text),
        ),
        (
            Postgres,
            column("c", "money", "money", None, None, true),
            "c NUMERIC NULLABLE",
            (Codec::Decimal, ReadAs::Numeric),
        ),
        (
            Postgres,
            column("c", "uuid", "uuid", None, None, true),
            "c STRING NULLABLE",
            (Codec::Text, ReadAs::Text),
        ),
        (
            Postgres,
            column("c", "bytea", "bytea", None, None, true),
            "c BYTES NULLABLE",
            (Codec::Bytes, ReadAs::Native),
        ),
        (
            Postgres,
            column("c", "jsonb", "jsonb", None, None, true),
            "c JSON NULLABLE",
            (Codec::Json, ReadAs::Native),
        ),
        (
            Postgres,
            column("c", "mood", "mood", None, None, true),
            "c STRING NULLABLE",
            (Codec::Text, ReadAs::Text),
        ),
        (
            Postgres,
            column("c", "geometry", "geometry(Point,4326)", None, None, true),
            "c STRING NULLABLE",
            (Codec::Text, ReadAs::Wkt),
        ),
        (
            Sqlite,
            column("c", "varchar", "VARCHAR(10)", Some(10), None, true),
            "c STRING NULLABLE",
            (Codec::Text, ReadAs::Native),
        ),
        (
            Sqlite,
            column("c", "decimal", "DECIMAL(10,2)", Some(10), Some(2), true),
            "c NUMERIC(10, 2) NULLABLE",
            (Codec::Decimal, ReadAs::Native),
        ),
        (
            Sqlite,
            column("c", "", "", None, None, true),
            "c STRING NULLABLE",
            (Codec::Text, ReadAs::Native),
        ),
        (
            Sqlite,
            column("c", "double", "DOUBLE", None, None, true),
            "c FLOAT64 NULLABLE",
            (Codec::Float, ReadAs::Native),
        ),
        (
            Sqlite,
            column("c", "timestamp", "TIMESTAMP", None, None, true),
            "c STRING NULLABLE",
            (Codec::Text, ReadAs::Native),
        ),
        (
            Sqlite,
            column("c", "datetime", "DATETIME", None, None, true),
            "c DATETIME NULLABLE",
            (Codec::DateTime, ReadAs::Native),
        ),
        (
            Sqlite,
            column(
                "c",
                "unsigned big int",
                "UNSIGNED BIG INT",
                None,
                None,
                false,
            ),
            "c INT64 REQUIRED",
            (Codec::Int, ReadAs::Native),
        ),
    ];
    for (kind, source, expected, (codec, read_as)) in cases {
        let label = format!("{kind:?} {}", source.column_type);
        assert_eq!(
            one(kind, source, none),
            Ok((expected.to_string(), codec, read_as)),
            "{label}"
        );
    }
}

#[test]
fn policies_change_the_map() {
    let tinyint = column("c", "tinyint", "tinyint(1)", None, None, true);
    let as_int = one(SourceKind::Mysql, tinyint, |spec| {
        spec.types.tinyint1_as_bool = false
    })
    .unwrap();
    assert_eq!(as_int.0, "c INT64 NULLABLE");
    let strict = one(
        SourceKind::Mysql,
        column("c", "date", "date", None, None, false),
        |spec| {
            spec.types.zero_dates = BadValuePolicy::Error;
        },
    );
    assert_eq!(strict.unwrap().0, "c DATE REQUIRED");
    let wide = one(
        SourceKind::Mysql,
        column("c", "decimal", "decimal(65,0)", Some(65), Some(0), true),
        |spec| {
            spec.types.decimal_overflow = DecimalOverflowPolicy::Error;
        },
    );
    assert!(wide.unwrap_err()[0].contains("fits neither NUMERIC nor BIGNUMERIC"));
    let geography = one(
        SourceKind::Postgres,
        column("c", "geometry", "geometry", None, None, true),
        |spec| {
            spec.types.geometry = GeometryPolicy::Geography;
        },
    );
    assert_eq!(geography.unwrap().0, "c GEOGRAPHY NULLABLE");
}

fn sample() -> SourceTable {
    let mut id = column("id", "bigint", "bigint(20) unsigned", None, None, false);
    id.primary_key = true;
    id.comment = Some("row id".into());
    let mut source = table(vec![
        id,
        column("order", "varchar", "varchar(20)", None, None, true),
        column("Created At", "datetime", "datetime(6)", None, None, false),
        column(
            "amount",
            "decimal",
            "decimal(12,2)",
            Some(12),
            Some(2),
            true,
        ),
        column("payload", "json", "json", None, None, true),
        column("secret", "varchar", "varchar(20)", None, None, true),
    ]);
    source.primary_key = vec!["id".into()];
    source
}

#[test]
fn whole_table_snapshot() {
    let mut spec = spec(SourceKind::Mysql);
    spec.exclude_columns = vec!["secret".into()];
    spec.column_types.insert("amount".into(), "FLOAT64".into());
    spec.partition_by = Some(Partitioning {
        column: "Created At".into(),
        granularity: "DAY".into(),
    });
    spec.cluster_by = vec!["order".into()];
    let mapping = map_table(&sample(), &spec).unwrap();
    insta::assert_yaml_snapshot!(mapping);
}

#[test]
fn selection_and_errors() {
    let mut spec = spec(SourceKind::Mysql);
    spec.columns = Some(vec!["payload".into(), "id".into()]);
    let mapping = map_table(&sample(), &spec).unwrap();
    let names: Vec<&str> = mapping.columns.iter().map(|c| c.target.as_str()).collect();
    assert_eq!(names, ["payload", "id"]);

    spec.columns = Some(vec!["nope".into()]);
    spec.column_types.insert("ghost".into(), "STRING".into());
    let errors = messages(&map_table(&sample(), &spec).unwrap_err());
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("`nope`") && errors[0].contains("available: id, order, Created At"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("`ghost`"), "{}", errors[1]);

    let mut spec = self::spec(SourceKind::Mysql);
    spec.column_types.insert("payload".into(), "DATE".into());
    let errors = messages(&map_table(&sample(), &spec).unwrap_err());
    assert!(errors[0].contains("cannot write JSON values"), "{errors:?}");

    let collide = table(vec![
        column("a-b", "int", "int", None, None, true),
        column("A_B", "int", "int", None, None, true),
    ]);
    let errors = messages(&map_table(&collide, &self::spec(SourceKind::Mysql)).unwrap_err());
    assert!(errors[0].contains("`a-b` and `A_B`"), "{errors:?}");

    let mut spec = self::spec(SourceKind::Mysql);
    spec.partition_by = Some(Partitioning {
        column: "order".into(),
        granularity: "DAY".into(),
    });
    let errors = messages(&map_table(&sample(), &spec).unwrap_err());
    assert!(
        errors[0].contains("not DATE, DATETIME or TIMESTAMP"),
        "{errors:?}"
    );
}

#[test]
fn overrides() {
    let mut spec = spec(SourceKind::Mysql);
    spec.column_types.insert("amount".into(), "STRING".into());
    spec.column_types.insert("id".into(), "BIGNUMERIC".into());
    let mapping = map_table(&sample(), &spec).unwrap();
    assert_eq!(
        mapping.column("amount").unwrap().field.diff_line(),
        "amount STRING NULLABLE"
    );
    assert_eq!(mapping.column("amount").unwrap().lossy, None);
    assert_eq!(
        mapping.column("id").unwrap().field.diff_line(),
        "id BIGNUMERIC REQUIRED"
    );
    spec.column_types
        .insert("amount".into(), "NUMERIC(5,1)".into());
    let mapping = map_table(&sample(), &spec).unwrap();
    assert!(mapping.column("amount").unwrap().lossy.is_some());
}

/// `validate` (the manifest checks) and `plan` (this mapping) read `column_types` with the same
/// parser: what one accepts the other honours, and what one rejects the other rejects with the
/// same message.
#[test]
fn validate_and_mapping_agree_on_override_types() {
    use crate::manifest::{Env, Format, ManifestInput, load};
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("s", "STRING", Some("s STRING NULLABLE")),
        ("s", "STRING(10)", Some("s STRING(10) NULLABLE")),
        ("s", "bytes(5)", Some("s BYTES(5) NULLABLE")),
        ("n", "DECIMAL(12,2)", Some("n NUMERIC(12, 2) NULLABLE")),
        ("n", "NUMERIC(38, 9)", Some("n NUMERIC(38, 9) NULLABLE")),
        ("n", "NUMERIC(20)", Some("n NUMERIC(20, 0) NULLABLE")),
        ("n", "BIGDECIMAL", Some("n BIGNUMERIC NULLABLE")),
        (
            "n",
            "BIGNUMERIC(76, 38)",
            Some("n BIGNUMERIC(76, 38) NULLABLE"),
        ),
        ("n", "FLOAT", Some("n FLOAT64 NULLABLE")),
        ("n", "INTEGER", Some("n INT64 NULLABLE")),
        ("n", "NUMERIC(40,2)", None),
        ("n", "NUMERIC(5,10)", None),
        ("n", "BIGNUMERIC(77)", None),
        ("n", "NUMERIC(10", None),
        ("n", "INT64(5)", None),
        ("s", "STRING(0)", None),
        ("s", "VARCHAR", None),
    ];
    let source = table(vec![
        column("s", "varchar", "varchar(20)", None, None, true),
        column("n", "decimal", "decimal(10,2)", Some(10), Some(2), true),
    ]);
    for (name, text, expected) in cases {
        let yaml = format!(
            "bigquery: {{project: my-project, dataset: d1}}\nsources:\n  src:\n    type: mysql\n    url: mysql://root@localhost/db\n    tables:\n      t:\n        column_types:\n          {name}: \"{text}\"\n"
        );
        let validated = load(&ManifestInput {
            name: Some("sync.yaml".into()),
            text: Some((yaml, Format::Yaml)),
            env: Env::new(),
        });
        let mut spec = spec(SourceKind::Mysql);
        spec.column_types.insert((*name).into(), (*text).into());
        let mapped = map_table(&source, &spec);
        match expected {
            Some(line) => {
                let loaded = validated.unwrap_or_else(|f| panic!("{text}: {:?}", f.problems));
                let mapping = map_table(&source, &loaded.manifest.tables[0])
                    .unwrap_or_else(|e| panic!("{text}: {e:?}"));
                assert_eq!(mapping.column(name).unwrap().field.diff_line(), *line);
                assert_eq!(mapped.unwrap().table.fields, mapping.table.fields, "{text}");
            }
            None => {
                let failure = validated
                    .err()
                    .unwrap_or_else(|| panic!("{text} validated"));
                let problem = failure
                    .problems
                    .iter()
                    .find(|p| p.code == Code::ManifestColumnType)
                    .unwrap_or_else(|| panic!("{text}: {:?}", failure.problems));
                let errors = messages(&mapped.unwrap_err());
                assert_eq!(
                    errors,
                    [format!("column `{name}`: {}", problem.message)],
                    "{text}"
                );
            }
        }
    }
}

#[test]
fn a_length_limit_is_kept_with_a_note() {
    let mut spec = spec(SourceKind::Mysql);
    spec.column_types
        .insert("secret".into(), "STRING(8)".into());
    let mapping = map_table(&sample(), &spec).unwrap();
    let secret = mapping.column("secret").unwrap();
    assert_eq!(secret.field.max_length, Some(8));
    assert_eq!(
        secret.lossy.as_deref(),
        Some("values longer than 8 are rejected by BigQuery and fail the load")
    );
    let warning = mapping
        .warnings
        .iter()
        .find(|w| w.code == Code::MappingLossyOverride)
        .unwrap();
    assert_eq!(
        warning.location,
        Location::Column {
            table: "db.t".into(),
            column: "secret".into()
        }
    );
}

/// A NOT NULL PostgreSQL timestamp, date or numeric stays REQUIRED under the default `null`
/// policies, with no warning: a `±infinity`/NaN value fails its row instead (the writer counts
/// it), so plans stay quiet for values that may never occur.
#[test]
fn not_null_columns_stay_required_without_a_warning() {
    let spec = spec(SourceKind::Postgres);
    for (data_type, column_type, expected) in [
        (
            "timestamp without time zone",
            "timestamp without time zone",
            "c DATETIME REQUIRED",
        ),
        (
            "timestamp with time zone",
            "timestamp with time zone",
            "c TIMESTAMP REQUIRED",
        ),
        ("date", "date", "c DATE REQUIRED"),
        ("double precision", "double precision", "c FLOAT64 REQUIRED"),
    ] {
        let mapping = map_table(
            &table(vec![column("c", data_type, column_type, None, None, false)]),
            &spec,
        )
        .unwrap();
        assert_eq!(mapping.columns[0].field.diff_line(), expected);
        assert!(mapping.warnings.is_empty(), "{:?}", mapping.warnings);
    }
}

/// `merge` without `primary_key` takes the source's primary key; a source without one is a
/// table error naming what to set.
#[test]
fn merge_without_primary_key_takes_the_sources() {
    let mut spec = spec(SourceKind::Postgres);
    spec.mode = crate::manifest::raw::WriteMode::Merge;
    let mut id = column("id", "bigint", "bigint", None, None, false);
    id.primary_key = true;
    let mut keyed = table(vec![id.clone()]);
    keyed.primary_key = vec!["id".into()];
    assert_eq!(map_table(&keyed, &spec).unwrap().key_columns, ["id"]);
    id.primary_key = false;
    let errors = messages(&map_table(&table(vec![id]), &spec).unwrap_err());
    assert!(errors[0].contains("no primary key"), "{errors:?}");
}

#[test]
fn the_table_comment_or_the_manifest_describes_the_target() {
    let mut source = table(vec![column("id", "bigint", "bigint", None, None, false)]);
    let described = |source: &SourceTable, description: Option<&str>| {
        let mut spec = spec(SourceKind::Postgres);
        spec.description = description.map(str::to_string);
        map_table(source, &spec).unwrap().table.description
    };
    // No comment, no manifest description: nothing to say (the target's is left alone).
    assert_eq!(described(&source, None), None);
    source.comment = Some("   ".into());
    assert_eq!(described(&source, None), None);
    source.comment = Some("Orders placed".into());
    assert_eq!(described(&source, None).as_deref(), Some("Orders placed"));
    assert_eq!(
        described(&source, Some("Curated orders")).as_deref(),
        Some("Curated orders")
    );
}

#[test]
fn lineage_appends_two_nullable_columns_and_refuses_a_source_column_of_their_name() {
    let source = table(vec![
        column("id", "bigint", "bigint", None, None, false),
        column("v", "text", "text", None, None, true),
    ]);
    let mut spec = spec(SourceKind::Postgres);
    spec.lineage = true;
    let mapping = map_table(&source, &spec).unwrap();
    assert!(mapping.lineage);
    // Only the source's columns are read; the sink appends the lineage values.
    assert_eq!(mapping.columns.len(), 2);
    let lines: Vec<String> = mapping
        .table
        .fields
        .iter()
        .map(crate::schema::WarehouseField::diff_line)
        .collect();
    assert_eq!(
        lines,
        [
            "id INT64 REQUIRED",
            "v STRING NULLABLE",
            "_datasync_synced_at TIMESTAMP NULLABLE",
            "_datasync_run_id STRING NULLABLE"
        ]
    );
    let colliding = table(vec![
        column("id", "bigint", "bigint", None, None, false),
        column(
            "_datasync_SYNCED_at",
            "timestamp",
            "timestamp",
            None,
            None,
            true,
        ),
    ]);
    let errors = messages(&map_table(&colliding, &spec).unwrap_err());
    assert_eq!(
        errors,
        [
            "column `_datasync_SYNCED_at` collides with `_datasync_synced_at`, a lineage column `lineage: true` adds (BigQuery names ignore case): add it to `exclude_columns`, or turn lineage off"
        ]
    );
    spec.exclude_columns = vec!["_datasync_SYNCED_at".into()];
    assert!(map_table(&colliding, &spec).is_ok());
    spec.lineage = false;
    spec.exclude_columns.clear();
    assert!(map_table(&colliding, &spec).is_ok());
}
