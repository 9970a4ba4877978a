use std::borrow::Cow;

use chrono::NaiveDate;

use super::*;
use crate::schema::{Bad, Codec, ReadAs, SourceColumn, WarehouseTable};
use crate::warehouse::NdjsonWriter;

fn mapping(fields: &[(&str, WarehouseField)]) -> Vec<ColumnMapping> {
    fields
        .iter()
        .map(|(name, field)| ColumnMapping {
            source: SourceColumn {
                name: (*name).into(),
                ordinal: 1,
                data_type: "x".into(),
                column_type: "x".into(),
                nullable: field.mode != FieldMode::Required,
                precision: None,
                scale: None,
                max_length: None,
                primary_key: *name == "id",
                comment: None,
                is_json: false,
            },
            target: (*name).into(),
            field: field.clone(),
            codec: Codec::Text,
            read_as: ReadAs::Native,
            lossy: None,
        })
        .collect()
}

fn field(name: &str, bq_type: BqType, mode: FieldMode) -> WarehouseField {
    WarehouseField::new(name, bq_type, mode)
}

fn decimal(name: &str, bq_type: BqType, precision: u32, scale: u32) -> WarehouseField {
    WarehouseField {
        precision: Some(precision),
        scale: Some(scale),
        ..field(name, bq_type, FieldMode::Nullable)
    }
}

/// Every BigQuery type Avro carries, with edge values.
fn every_type() -> (Vec<ColumnMapping>, Vec<Vec<Val<'static>>>) {
    use BqType as T;
    use FieldMode as M;
    let columns = mapping(&[
        ("id", field("id", T::Int64, M::Required)),
        ("f", field("f", T::Float64, M::Nullable)),
        ("b", field("b", T::Bool, M::Nullable)),
        ("s", field("s", T::String, M::Nullable)),
        ("y", field("y", T::Bytes, M::Nullable)),
        ("n", field("n", T::Numeric, M::Nullable)),
        ("n2", decimal("n2", T::Numeric, 10, 2)),
        ("bn", field("bn", T::BigNumeric, M::Nullable)),
        ("d", field("d", T::Date, M::Nullable)),
        ("dt", field("dt", T::Datetime, M::Nullable)),
        ("ts", field("ts", T::Timestamp, M::Nullable)),
        ("t", field("t", T::Time, M::Nullable)),
        ("a", field("a", T::Int64, M::Repeated)),
        ("ss", field("ss", T::String, M::Nullable)),
    ]);
    let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let moment = date.and_hms_micro_opt(23, 59, 58, 123_456).unwrap();
    let rows = vec![
        vec![
            Val::Int(i64::MAX),
            Val::F64(-1.5e300),
            Val::Bool(true),
            Val::Text(Cow::Borrowed("a\"b\\c\né😀")),
            Val::Bytes(Cow::Borrowed(&[0, 0xff, 0x80])),
            Val::Decimal(Cow::Borrowed("-99999999999999999999999999999.999999999")),
            Val::Decimal(Cow::Borrowed("-0.05")),
            Val::Decimal(Cow::Borrowed(
                "12345678901234567890123456789012345678.12345678901234567890123456789012345678",
            )),
            Val::Date(NaiveDate::from_ymd_opt(1, 1, 1).unwrap()),
            Val::DateTime(moment),
            Val::Timestamp(
                NaiveDate::from_ymd_opt(1969, 12, 31)
                    .unwrap()
                    .and_hms_micro_opt(23, 59, 59, 999_999)
                    .unwrap(),
            ),
            Val::Time(moment.time()),
            Val::Array(vec![
                Val::Int(i64::MIN),
                Val::Int(0),
                Val::Int(9_007_199_254_740_993),
            ]),
            // Converted through the NDJSON writer's text: a bool into STRING.
            Val::Bool(false),
        ],
        vec![
            Val::Int(-1),
            Val::Null,
            Val::Null,
            Val::Null,
            Val::Null,
            Val::Decimal(Cow::Borrowed("0")),
            Val::Null,
            Val::Null,
            Val::Date(NaiveDate::from_ymd_opt(9999, 12, 31).unwrap()),
            Val::Null,
            Val::Null,
            Val::Null,
            Val::Null,
            Val::Int(42),
        ],
    ];
    (columns, rows)
}

fn push_all(sink: &mut impl RowSink, rows: &[Vec<Val<'static>>]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in rows {
        sink.push(|index| Ok(row[index].clone())).unwrap();
        if let Some(chunk) = sink.full_chunk() {
            out.extend_from_slice(&chunk);
        }
    }
    if let Some(chunk) = sink.finish() {
        out.extend_from_slice(&chunk);
    }
    out
}

fn fields_of(columns: &[ColumnMapping]) -> Vec<WarehouseField> {
    columns.iter().map(|column| column.field.clone()).collect()
}

fn ndjson_rows(bytes: &[u8]) -> Vec<serde_json::Map<String, serde_json::Value>> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect()
}

#[test]
fn every_type_decodes_to_what_ndjson_writes() {
    let (columns, rows) = every_type();
    let policies = TypePolicies::default();
    let mut avro = AvroWriter::new("t".into(), &columns, policies, None, &[], 10_000);
    let mut ndjson = NdjsonWriter::new("t".into(), &columns, policies, None, &[], 10_000);
    let avro_bytes = push_all(&mut avro, &rows);
    let ndjson_bytes = push_all(&mut ndjson, &rows);
    assert!(avro_bytes.starts_with(b"Obj\x01"));
    let decoded = decode_rows(&fields_of(&columns), &avro_bytes).unwrap();
    let mut expected = ndjson_rows(&ndjson_bytes);
    // The only textual difference: DATETIME is written with a space in Avro (decoded back
    // with `T`), and NDJSON writes a NULL array as `[]` just as Avro does.
    for row in &mut expected {
        if let Some(serde_json::Value::Null) = row.get("a") {
            row.insert("a".into(), serde_json::json!([]));
        }
    }
    assert_eq!(decoded, expected);
    assert_eq!(decoded[0]["id"], "9223372036854775807");
    assert_eq!(decoded[0]["a"][2], "9007199254740993");
    assert_eq!(avro.stats().rows, 2);
    assert_eq!(avro.stats().bytes, avro_bytes.len() as u64);
}

#[test]
fn the_schema_uses_bigquery_logical_types() {
    let (columns, _) = every_type();
    let schema = avro_schema(&fields_of(&columns));
    let text = schema.to_string();
    for needle in [
        r#"{"type":"bytes","logicalType":"decimal","precision":38,"scale":9}"#,
        r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}"#,
        r#"{"type":"bytes","logicalType":"decimal","precision":76,"scale":38}"#,
        r#"{"type":"int","logicalType":"date"}"#,
        r#"{"type":"string","logicalType":"datetime"}"#,
        r#"{"type":"long","logicalType":"timestamp-micros"}"#,
        r#"{"type":"long","logicalType":"time-micros"}"#,
        r#"{"name":"a","type":{"type":"array","items":"long"}}"#,
        r#"["null","double"]"#,
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    // The crate accepts it (the header would be empty otherwise).
    assert!(Schema::parse(&schema).is_ok());
}

#[test]
fn chunks_concatenate_to_one_valid_file() {
    let columns = mapping(&[("id", field("id", BqType::Int64, FieldMode::Required))]);
    let mut sink = AvroWriter::new("t".into(), &columns, TypePolicies::default(), None, &[], 2);
    let mut chunks = Vec::new();
    for id in 0..7 {
        sink.push(|_| Ok(Val::Int(id))).unwrap();
        chunks.extend(sink.full_chunk());
    }
    chunks.extend(sink.finish());
    // Blocks of 2, 2, 2 and 1 rows; a full block is sent once the next one is full too (one
    // is compressed meanwhile), and `finish` sends the one in flight with the last.
    assert_eq!(chunks.len(), 3, "2, 2, then 2 + 1 rows");
    assert!(chunks[0].starts_with(b"Obj\x01"));
    assert!(
        !chunks[1].starts_with(b"Obj\x01"),
        "the header is written once"
    );
    let file: Vec<u8> = chunks.concat();
    let ids: Vec<_> = decode_rows(&fields_of(&columns), &file)
        .unwrap()
        .into_iter()
        .map(|row| row["id"].clone())
        .collect();
    assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "6"]);
    assert!(sink.finish().is_none());
}

#[test]
fn an_empty_extraction_writes_nothing() {
    let columns = mapping(&[("id", field("id", BqType::Int64, FieldMode::Required))]);
    let mut sink = AvroWriter::new("t".into(), &columns, TypePolicies::default(), None, &[], 2);
    assert!(sink.full_chunk().is_none());
    assert!(sink.finish().is_none());
}

#[test]
fn bad_values_follow_the_same_policies_and_budget_as_ndjson() {
    let columns = mapping(&[
        ("id", field("id", BqType::Int64, FieldMode::Required)),
        ("v", field("v", BqType::Float64, FieldMode::Nullable)),
        ("r", field("r", BqType::Date, FieldMode::Required)),
        ("n", decimal("n", BqType::Numeric, 4, 2)),
    ]);
    let date = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let rows: Vec<[Decoded<'static>; 4]> = vec![
        [
            Ok(Val::Int(1)),
            Ok(Val::F64(1.5)),
            Ok(Val::Date(date)),
            Ok(Val::Decimal("12.5".into())),
        ],
        [
            Ok(Val::Int(2)),
            Ok(Val::F64(f64::NAN)),
            Ok(Val::Date(date)),
            Ok(Val::Null),
        ],
        [
            Ok(Val::Int(3)),
            Ok(Val::Null),
            Err(Bad::new(BadKind::ZeroDate, "zero date")),
            Ok(Val::Null),
        ],
        [
            Ok(Val::Int(4)),
            Ok(Val::Null),
            Ok(Val::Date(date)),
            Ok(Val::Decimal("123.5".into())),
        ],
    ];
    let key = ["id".to_string()];
    let policies = TypePolicies::default();
    let mut avro = AvroWriter::new("t".into(), &columns, policies, Some(10), &key, 100);
    let mut ndjson = NdjsonWriter::new("t".into(), &columns, policies, Some(10), &key, 100);
    for row in &rows {
        avro.push(|index| row[index].clone()).unwrap();
        ndjson.push(|index| row[index].clone()).unwrap();
    }
    let (a, n) = (avro.stats(), ndjson.stats());
    assert_eq!((a.rows, a.failed_rows, a.bad_values), (2, 2, 3));
    assert_eq!(
        (&a.failures, &a.by_kind, a.rows, a.failed_rows),
        (&n.failures, &n.by_kind, n.rows, n.failed_rows)
    );
    assert!(
        a.failures
            .iter()
            .any(|f| f.contains("123.5 does not fit NUMERIC")),
        "{:?}",
        a.failures
    );
    let decoded = decode_rows(&fields_of(&columns), &avro.finish().unwrap()).unwrap();
    assert_eq!(decoded, ndjson_rows(&ndjson.finish().unwrap()));
    assert_eq!(decoded[1]["v"], serde_json::Value::Null);
    // The budget is shared: the next bad value over it fails the table.
    let mut tight = AvroWriter::new("t".into(), &columns, policies, Some(0), &key, 100);
    assert!(tight.push(|index| rows[1][index].clone()).is_err());
}

#[test]
fn tables_avro_cannot_carry_exactly_are_named() {
    let table = |fields: Vec<WarehouseField>| WarehouseTable {
        name: "t".into(),
        fields,
        partitioning: None,
        clustering: Vec::new(),
        description: None,
    };
    let ok = table(vec![field("id", BqType::Int64, FieldMode::Required)]);
    assert_eq!(avro_obstacle(&ok), None);
    let json = table(vec![field("doc", BqType::Json, FieldMode::Nullable)]);
    assert_eq!(
        avro_obstacle(&json).unwrap(),
        "column `doc` is JSON, which Avro cannot carry exactly"
    );
    let geo = table(vec![field("g", BqType::Geography, FieldMode::Nullable)]);
    assert!(avro_obstacle(&geo).unwrap().contains("GEOGRAPHY"));
    let named = table(vec![field("naïve-col", BqType::Int64, FieldMode::Nullable)]);
    assert!(
        avro_obstacle(&named)
            .unwrap()
            .contains("not a valid Avro name")
    );
}

#[test]
fn decimals_are_twos_complement_at_the_field_scale() {
    let mut buf = Vec::new();
    put_decimal(&mut buf, "-0.05", 2).unwrap();
    // length 1, then -5 as one byte.
    assert_eq!(buf, [2, 0xfb]);
    buf.clear();
    put_decimal(&mut buf, "1.28", 2).unwrap();
    // 128 needs a leading zero byte to stay positive.
    assert_eq!(buf, [4, 0x00, 0x80]);
}

#[test]
fn both_sinks_append_the_same_lineage_values_to_every_row() {
    let (columns, rows) = every_type();
    let policies = TypePolicies::default();
    let lineage = crate::schema::Lineage {
        synced_at_micros: 1_700_000_000_000_001,
        run_id: "1700000000_000001".into(),
    };
    let mut avro =
        AvroWriter::new("t".into(), &columns, policies, None, &[], 1).with_lineage(&lineage);
    let mut ndjson =
        NdjsonWriter::new("t".into(), &columns, policies, None, &[], 1).with_lineage(&lineage);
    let avro_bytes = push_all(&mut avro, &rows);
    let ndjson_bytes = push_all(&mut ndjson, &rows);
    let mut fields = fields_of(&columns);
    fields.extend(crate::schema::lineage_fields());
    // The file's schema ends with the two NULLABLE lineage fields.
    let reader = apache_avro::Reader::new(&avro_bytes[..]).unwrap();
    let schema = serde_json::to_value(reader.writer_schema()).unwrap();
    let names: Vec<&str> = schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|field| field["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        &names[names.len() - 2..],
        ["_datasync_synced_at", "_datasync_run_id"]
    );
    let decoded = decode_rows(&fields, &avro_bytes).unwrap();
    let written = ndjson_rows(&ndjson_bytes);
    assert_eq!(decoded.len(), 2);
    for row in decoded.iter().chain(&written) {
        assert_eq!(row["_datasync_synced_at"], "2023-11-14T22:13:20.000001Z");
        assert_eq!(row["_datasync_run_id"], "1700000000_000001");
    }
    assert!(
        ndjson_bytes.split(|b| *b == b'\n').next().unwrap().ends_with(
            br#","_datasync_synced_at":"2023-11-14T22:13:20.000001Z","_datasync_run_id":"1700000000_000001"}"#
        )
    );
    // Chunks cut per row (batch size 1) still concatenate to one valid file.
    assert_eq!(avro.stats().rows, 2);
}

#[test]
fn unscaled_decimals_take_the_fewest_bytes_that_keep_the_sign() {
    let mut values: Vec<i128> = vec![0, 1, -1, 127, 128, -128, -129, 255, 256, -256, -257];
    values.extend([i64::MAX as i128, i64::MIN as i128, i128::MAX, i128::MIN]);
    values.extend(
        (0..127).flat_map(|shift| [1i128 << shift, -(1i128 << shift), (1i128 << shift) - 1]),
    );
    for n in values {
        let mut buf = Vec::new();
        put_unscaled(&mut buf, n);
        let mut expected = Vec::new();
        put_bytes(&mut expected, &BigInt::from(n).to_signed_bytes_be());
        assert_eq!(buf, expected, "{n}");
    }
}
