use std::borrow::Cow;
use std::cmp::Ordering;

use chrono::{NaiveDate, NaiveDateTime};

use super::*;
use crate::schema::{
    Bad, Codec, ColumnMapping, LoadFormat, ReadAs, SourceColumn, TypePolicies, Utf8Policy,
    WarehouseField, WarehouseTable,
};
use crate::warehouse::LoadSink;

fn column(name: &str, bq_type: BqType, mode: FieldMode) -> ColumnMapping {
    ColumnMapping {
        source: SourceColumn {
            name: name.into(),
            ordinal: 1,
            data_type: "x".into(),
            column_type: "x".into(),
            nullable: mode != FieldMode::Required,
            precision: None,
            scale: None,
            max_length: None,
            primary_key: name == "id",
            comment: None,
            is_json: false,
        },
        target: name.into(),
        field: WarehouseField::new(name, bq_type, mode),
        codec: Codec::Text,
        read_as: ReadAs::Native,
        lossy: None,
    }
}

/// An extraction of `id` (INT64, REQUIRED) and the cursor `c` of `bq_type`.
fn extract(bq_type: BqType, format: LoadFormat) -> Extract {
    let columns = vec![
        column("id", BqType::Int64, FieldMode::Required),
        column("c", bq_type, FieldMode::Nullable),
    ];
    Extract {
        lineage: false,
        chunking: Default::default(),
        load_schema: WarehouseTable {
            description: None,
            name: "t".into(),
            fields: columns.iter().map(|column| column.field.clone()).collect(),
            partitioning: None,
            clustering: Vec::new(),
        },
        columns,
        bound: Bound::AfterTargetMax {
            source_column: "c".into(),
            target_column: "c".into(),
            bq_type,
            inclusive: false,
        },
        batch_size: 1000,
        policies: TypePolicies::default(),
        max_bad_values: None,
        key_columns: vec!["id".into()],
        format,
        format_reason: None,
    }
}

/// Pushes `(id, cursor)` rows through a tracked sink; the shared maximum afterwards.
fn track(
    extract: &Extract,
    rows: Vec<(Option<i64>, Result<Val<'static>, Bad<'static>>)>,
) -> CursorMax {
    let shared = Arc::new(Mutex::new(CursorMax::default()));
    {
        let inner = LoadSink::new(
            extract.format,
            "t".into(),
            &extract.columns,
            extract.policies,
            extract.max_bad_values,
            &extract.key_columns,
            extract.batch_size,
        );
        let mut sink = CursorSink::new(inner, extract, Some(Arc::clone(&shared)));
        for (id, cursor) in rows {
            sink.push(|index| match index {
                0 => Ok(id.map_or(Val::Null, Val::Int)),
                _ => cursor.clone(),
            })
            .unwrap();
        }
        let _ = sink.finish();
    }
    Arc::into_inner(shared).unwrap().into_inner().unwrap()
}

fn at(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").unwrap()
}

#[test]
fn canonical_forms_match_what_max_reads_back() {
    use BqType as T;
    // BigQuery (useInt64Timestamp) and the emulator send TIMESTAMP as micros; cursor_text
    // makes it RFC 3339; canonical keeps that.
    let from_max = cursor_text(&serde_json::json!("1704164645000000"), T::Timestamp).unwrap();
    assert_eq!(
        canonical(&from_max, T::Timestamp),
        "2024-01-02T03:04:05.000000Z"
    );
    assert_eq!(
        canonical("2024-01-02 05:04:05.5+02:00", T::Timestamp),
        "2024-01-02T03:04:05.500000Z"
    );
    assert_eq!(
        canonical("2024-01-02 03:04:05 UTC", T::Timestamp),
        "2024-01-02T03:04:05.000000Z"
    );
    // Real BigQuery drops a zero fraction of DATETIME and TIME; the emulator keeps six digits.
    for text in [
        "2024-01-02T03:04:05",
        "2024-01-02T03:04:05.000000",
        "2024-01-02 03:04:05",
    ] {
        assert_eq!(canonical(text, T::Datetime), "2024-01-02T03:04:05.000000");
    }
    assert_eq!(canonical("03:04:05", T::Time), "03:04:05.000000");
    assert_eq!(canonical("2024-01-02", T::Date), "2024-01-02");
    assert_eq!(canonical("0042", T::Int64), "42");
    // The emulator sends NUMERIC unnormalized (`12.500000000`, `1E-9`).
    assert_eq!(canonical("12.500000000", T::Numeric), "12.5");
    assert_eq!(canonical("1E-9", T::Numeric), "0.000000001");
    assert_eq!(canonical("-0.000", T::BigNumeric), "0");
    assert_eq!(canonical("1.5e3", T::Numeric), "1500");
    assert_eq!(canonical("1.50", T::Float64), "1.5");
    assert_eq!(canonical("abc", T::String), "abc");
    assert_eq!(canonical("not a date", T::Date), "not a date");
}

#[test]
fn compare_follows_bigquery_order() {
    use BqType as T;
    assert_eq!(compare("9", "10", T::Int64), Ordering::Less);
    assert_eq!(compare("-9", "-10", T::Int64), Ordering::Greater);
    assert_eq!(compare("9.5", "10", T::Float64), Ordering::Less);
    assert_eq!(compare("9.99", "10.0", T::Numeric), Ordering::Less);
    assert_eq!(compare("-1.5", "-1.25", T::Numeric), Ordering::Less);
    assert_eq!(compare("-1", "0.5", T::Numeric), Ordering::Less);
    assert_eq!(compare("12.50", "12.5", T::Numeric), Ordering::Equal);
    // STRING by code point: `B` (0x42) sorts before `a` (0x61), whatever a collation says.
    assert_eq!(compare("B", "a", T::String), Ordering::Less);
    assert_eq!(compare("é", "z", T::String), Ordering::Greater);
    // BYTES by bytes, not by their base64: 0xff > 0x0f although "/w==" < "Dw==".
    assert_eq!(compare("/w==", "Dw==", T::Bytes), Ordering::Greater);
    assert_eq!(
        compare(
            "2024-01-02T03:04:05",
            "2024-01-02T03:04:05.000001",
            T::Datetime
        ),
        Ordering::Less
    );
    assert_eq!(compare("false", "true", T::Bool), Ordering::Less);
    assert_eq!(
        greatest(Some("9".into()), Some("10".into()), T::Int64),
        Some("10".into())
    );
    assert_eq!(greatest(None, Some("1".into()), T::Int64), Some("1".into()));
    assert_eq!(greatest(Some("1".into()), None, T::Int64), Some("1".into()));
}

#[test]
fn the_sink_keeps_the_maximum_of_the_rows_it_writes_in_either_format() {
    for format in [LoadFormat::Ndjson, LoadFormat::Avro] {
        let extract = extract(BqType::Int64, format);
        let tracked = track(
            &extract,
            vec![
                (Some(1), Ok(Val::Int(9))),
                (Some(2), Ok(Val::Int(10))),
                (Some(3), Ok(Val::Null)),
                // The row is left out (its REQUIRED id is NULL): its cursor does not count.
                (None, Ok(Val::Int(99))),
                (Some(4), Ok(Val::Int(-5))),
            ],
        );
        assert_eq!(tracked.max.as_deref(), Some("10"), "{format:?}");
        assert!(!tracked.unsound);
    }
}

#[test]
fn temporal_and_text_cursors_are_tracked_in_their_written_form() {
    let timestamp = track(
        &extract(BqType::Timestamp, LoadFormat::Avro),
        vec![
            (
                Some(1),
                Ok(Val::Timestamp(at("2024-01-02 03:04:05.123456"))),
            ),
            (Some(2), Ok(Val::Timestamp(at("2024-01-02 03:04:05")))),
            // A DATE read into a TIMESTAMP column is midnight UTC.
            (
                Some(3),
                Ok(Val::Date(NaiveDate::from_ymd_opt(2024, 1, 3).unwrap())),
            ),
        ],
    );
    assert_eq!(
        timestamp.max.as_deref(),
        Some("2024-01-03T00:00:00.000000Z")
    );
    let datetime = track(
        &extract(BqType::Datetime, LoadFormat::Ndjson),
        vec![(Some(1), Ok(Val::DateTime(at("2024-01-02 03:04:05"))))],
    );
    assert_eq!(datetime.max.as_deref(), Some("2024-01-02T03:04:05.000000"));
    // Text written as is into a TIMESTAMP column (BigQuery parses it): canonical UTC.
    let text = track(
        &extract(BqType::Timestamp, LoadFormat::Ndjson),
        vec![
            (
                Some(1),
                Ok(Val::Text(Cow::Borrowed("2024-01-02 05:00:00+02:00"))),
            ),
            (
                Some(2),
                Ok(Val::Text(Cow::Borrowed("2024-01-02T02:00:00Z"))),
            ),
        ],
    );
    assert_eq!(text.max.as_deref(), Some("2024-01-02T03:00:00.000000Z"));
    let strings = track(
        &extract(BqType::String, LoadFormat::Ndjson),
        vec![
            (Some(1), Ok(Val::Text(Cow::Borrowed("B")))),
            (Some(2), Ok(Val::Text(Cow::Borrowed("a\"quoted\\")))),
            (Some(3), Ok(Val::Text(Cow::Borrowed("C")))),
        ],
    );
    assert_eq!(
        strings.max.as_deref(),
        Some("a\"quoted\\"),
        "byte order, unescaped"
    );
    let decimals = track(
        &extract(BqType::Numeric, LoadFormat::Ndjson),
        vec![
            (Some(1), Ok(Val::Decimal(Cow::Borrowed("9.50")))),
            (Some(2), Ok(Val::Decimal(Cow::Borrowed("10.250")))),
        ],
    );
    assert_eq!(decimals.max.as_deref(), Some("10.25"));
}

#[test]
fn bad_cursor_values_count_as_what_the_policy_writes() {
    let mut strings = extract(BqType::String, LoadFormat::Ndjson);
    strings.policies.invalid_utf8 = Utf8Policy::Replace;
    let replaced = Bad {
        kind: BadKind::InvalidUtf8,
        message: "invalid UTF-8".into(),
        replacement: Some(Val::Text(Cow::Borrowed("z\u{fffd}"))),
    };
    let tracked = track(
        &strings,
        vec![
            (Some(1), Ok(Val::Text(Cow::Borrowed("m")))),
            (Some(2), Err(replaced.clone())),
        ],
    );
    assert_eq!(
        tracked.max.as_deref(),
        Some("z\u{fffd}"),
        "the replacement was written"
    );
    // With `error`, that row is left out: it does not count.
    strings.policies.invalid_utf8 = Utf8Policy::Error;
    let tracked = track(
        &strings,
        vec![
            (Some(1), Ok(Val::Text(Cow::Borrowed("m")))),
            (Some(2), Err(replaced)),
        ],
    );
    assert_eq!(tracked.max.as_deref(), Some("m"));
    // A non-finite float nulled by policy is NULL, which MAX ignores.
    let floats = track(
        &extract(BqType::Float64, LoadFormat::Ndjson),
        vec![
            (Some(1), Ok(Val::F64(1.5))),
            (Some(2), Ok(Val::F64(f64::INFINITY))),
        ],
    );
    assert_eq!(floats.max.as_deref(), Some("1.5"));
}

#[test]
fn a_value_that_cannot_be_ordered_keeps_no_watermark() {
    let mut extract = extract(BqType::Int64, LoadFormat::Ndjson);
    extract.columns[1].field.mode = FieldMode::Repeated;
    let tracked = track(&extract, vec![(Some(1), Ok(Val::Array(vec![Val::Int(1)])))]);
    assert!(tracked.unsound);
}

#[test]
fn a_sink_without_a_bounded_cursor_only_passes_rows_on() {
    let mut extract = extract(BqType::Int64, LoadFormat::Ndjson);
    extract.bound = Bound::All;
    let tracked = track(&extract, vec![(Some(1), Ok(Val::Int(5)))]);
    assert_eq!(tracked.max, None);
}

fn latest(entry: LatestEntry) -> Latest {
    Latest {
        entries: HashMap::from([("t".to_string(), entry)]),
        exists: true,
    }
}

fn entry() -> LatestEntry {
    LatestEntry {
        run_id: "r1".into(),
        cursor_column: Some("c".into()),
        watermark: Some("5".into()),
        watermark_type: Some("INT64".into()),
        target_modified: Some("17".into()),
    }
}

#[test]
fn an_entry_is_used_only_while_it_describes_the_target() {
    let ledger = latest(entry());
    assert!(ledger.usable("t", "c", BqType::Int64, Some("17")).is_some());
    assert!(
        ledger.usable("t", "C", BqType::Int64, Some("17")).is_some(),
        "names are case-insensitive"
    );
    // The target changed since (another run wrote it, a lost reply, a manual change).
    assert!(ledger.usable("t", "c", BqType::Int64, Some("18")).is_none());
    // The server keeps no modification time (the emulator).
    assert!(ledger.usable("t", "c", BqType::Int64, None).is_none());
    // Another cursor column or type, or another target.
    assert!(ledger.usable("t", "d", BqType::Int64, Some("17")).is_none());
    assert!(
        ledger
            .usable("t", "c", BqType::Numeric, Some("17"))
            .is_none()
    );
    assert!(ledger.usable("u", "c", BqType::Int64, Some("17")).is_none());
    // A run that kept no watermark (e.g. a replace before the mode changed).
    let none = latest(LatestEntry {
        cursor_column: None,
        ..entry()
    });
    assert!(none.usable("t", "c", BqType::Int64, Some("17")).is_none());
}

#[test]
fn the_latest_query_reads_the_ledger_only() {
    assert_eq!(
        latest_sql("p.d"),
        "SELECT `target`, `run_id`, `cursor_column`, `watermark`, `watermark_type`, `target_modified` FROM `p.d._datasync_runs` WHERE `status` = 'done' QUALIFY ROW_NUMBER() OVER (PARTITION BY `target` ORDER BY `finished_at` DESC, `run_id` DESC) = 1"
    );
}
