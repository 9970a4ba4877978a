use std::borrow::Cow;

use chrono::NaiveDate;

use super::*;
use crate::schema::{
    BadKind, BqType, Codec, ReadAs, SourceColumn, Utf8Policy, WarehouseField, decimal_text, text,
};

fn target(bq_type: BqType) -> Target {
    Target {
        bq_type,
        precision: None,
        scale: None,
    }
}

fn write(value: Val<'_>, bq_type: BqType) -> Result<String, BadKind> {
    let mut buf = Vec::new();
    write_scalar(&mut buf, &value, target(bq_type)).map_err(|bad| bad.kind)?;
    Ok(String::from_utf8(buf).unwrap())
}

#[test]
fn scalars() {
    assert_eq!(
        write(Val::Int(i64::MIN), BqType::Int64).unwrap(),
        r#""-9223372036854775808""#
    );
    assert_eq!(
        write(Val::UInt(u64::MAX), BqType::Numeric).unwrap(),
        r#""18446744073709551615""#
    );
    assert_eq!(
        write(Val::UInt(u64::MAX), BqType::Int64),
        Err(BadKind::OutOfRange)
    );
    assert_eq!(
        write(Val::F64(f64::NAN), BqType::Float64),
        Err(BadKind::NonFinite)
    );
    assert_eq!(
        write(Val::F64(f64::NEG_INFINITY), BqType::Float64),
        Err(BadKind::NonFinite)
    );
    assert_eq!(write(Val::F64(1e300), BqType::Float64).unwrap(), "1e+300");
    assert_eq!(write(Val::F32(0.1), BqType::Float64).unwrap(), "0.1");
    assert_eq!(
        write(Val::F64(1e-7), BqType::Numeric).unwrap(),
        r#""0.0000001""#
    );
    assert_eq!(
        write(Val::F64(1.5e3), BqType::Int64),
        Ok(r#""1500""#.into())
    );
    assert_eq!(write(Val::Bool(true), BqType::Bool).unwrap(), "true");
    assert_eq!(
        write(Val::Bytes(Cow::Borrowed(&[0, 0xff])), BqType::Bytes).unwrap(),
        r#""AP8=""#
    );
    assert_eq!(
        write(
            Val::Text(Cow::Borrowed("a\"b\\c\n\u{1}é😀")),
            BqType::String
        )
        .unwrap(),
        r#""a\"b\\c\n\u0001é😀""#
    );
    assert_eq!(
        write(
            Val::Json(Cow::Borrowed(
                b"{ \"a\" :\n [1, 2],\t\"s\": \"x  y\\\"  z\" }"
            )),
            BqType::Json
        )
        .unwrap(),
        r#"{"a":[1,2],"s":"x  y\"  z"}"#
    );
    assert_eq!(
        write(Val::Json(Cow::Borrowed(b"{bad")), BqType::Json),
        Err(BadKind::Malformed)
    );
    assert_eq!(
        write(Val::Json(Cow::Borrowed(b"[1, 2]")), BqType::String).unwrap(),
        r#""[1,2]""#
    );
}

#[test]
fn temporal() {
    let date = NaiveDate::from_ymd_opt(1, 1, 1).unwrap();
    assert_eq!(
        write(Val::Date(date), BqType::Date).unwrap(),
        r#""0001-01-01""#
    );
    let moment = NaiveDate::from_ymd_opt(2024, 2, 29)
        .unwrap()
        .and_hms_micro_opt(23, 59, 59, 999_999)
        .unwrap();
    assert_eq!(
        write(Val::DateTime(moment), BqType::Datetime).unwrap(),
        r#""2024-02-29T23:59:59.999999""#
    );
    assert_eq!(
        write(Val::Timestamp(moment), BqType::Timestamp).unwrap(),
        r#""2024-02-29T23:59:59.999999Z""#
    );
    let bc = NaiveDate::from_ymd_opt(-43, 3, 15).unwrap();
    assert_eq!(write(Val::Date(bc), BqType::Date), Err(BadKind::OutOfRange));
    let time = NaiveTime::from_hms_micro_opt(1, 2, 3, 4).unwrap();
    assert_eq!(
        write(Val::Time(time), BqType::Time).unwrap(),
        r#""01:02:03.000004""#
    );
}

#[test]
fn decimals() {
    assert_eq!(
        decimal_text("-12.50"),
        Ok(Val::Decimal(Cow::Borrowed("-12.50")))
    );
    assert_eq!(decimal_text("NaN").unwrap_err().kind, BadKind::NonFinite);
    assert_eq!(decimal_text("1e5").unwrap_err().kind, BadKind::Malformed);
    let numeric = Target {
        bq_type: BqType::Numeric,
        precision: Some(10),
        scale: Some(2),
    };
    let mut buf = Vec::new();
    assert!(
        write_scalar(
            &mut buf,
            &Val::Decimal(Cow::Borrowed("12345678.90")),
            numeric
        )
        .is_ok()
    );
    assert!(
        write_scalar(
            &mut buf,
            &Val::Decimal(Cow::Borrowed("123456789.0")),
            numeric
        )
        .is_err()
    );
    assert!(write_scalar(&mut buf, &Val::Decimal(Cow::Borrowed("1.234")), numeric).is_err());
    // Trailing zeros beyond the scale are not digits that matter.
    assert!(write_scalar(&mut buf, &Val::Decimal(Cow::Borrowed("1.2300000")), numeric).is_ok());
    let wide = "1".repeat(39);
    assert_eq!(
        write(Val::Decimal(Cow::Owned(wide)), BqType::BigNumeric),
        Err(BadKind::OutOfRange)
    );
    assert_eq!(float_to_decimal("-1.25e-3").as_deref(), Some("-0.00125"));
    assert_eq!(
        float_to_decimal("1e21").as_deref(),
        Some("1000000000000000000000")
    );
}

fn mapping(fields: &[(&str, BqType, FieldMode)]) -> Vec<ColumnMapping> {
    fields
        .iter()
        .map(|(name, bq_type, mode)| ColumnMapping {
            source: SourceColumn {
                name: (*name).into(),
                ordinal: 1,
                data_type: "x".into(),
                column_type: "x".into(),
                nullable: *mode != FieldMode::Required,
                precision: None,
                scale: None,
                max_length: None,
                primary_key: *name == "id",
                comment: None,
                is_json: false,
            },
            target: (*name).into(),
            field: WarehouseField::new(*name, *bq_type, *mode),
            codec: Codec::Text,
            read_as: ReadAs::Native,
            lossy: None,
        })
        .collect()
}

/// A writer keyed by `id`.
fn writer(
    columns: &[ColumnMapping],
    policies: TypePolicies,
    max_bad_values: Option<u64>,
    batch_size: u64,
) -> NdjsonWriter {
    NdjsonWriter::new(
        "t".into(),
        columns,
        policies,
        max_bad_values,
        &["id".to_string()],
        batch_size,
    )
}

#[test]
fn rows_and_policies() {
    let map = mapping(&[
        ("id", BqType::Int64, FieldMode::Required),
        ("v", BqType::Float64, FieldMode::Nullable),
        ("r", BqType::Date, FieldMode::Required),
    ]);
    let mut encoder = writer(&map, TypePolicies::default(), Some(2), 10_000);
    let date = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let row = |id: i64, v: f64, r: Decoded<'static>| {
        move |index: usize| match index {
            0 => Ok(Val::Int(id)),
            1 => Ok(Val::F64(v)),
            _ => r.clone(),
        }
    };
    encoder.push(row(1, 1.5, Ok(Val::Date(date)))).unwrap();
    // NaN into a nullable field: NULL and counted.
    encoder.push(row(2, f64::NAN, Ok(Val::Date(date)))).unwrap();
    // A zero date into a REQUIRED field: the row fails.
    encoder
        .push(row(3, 0.0, Err(Bad::new(BadKind::ZeroDate, "zero date"))))
        .unwrap();
    let chunk = encoder.finish().unwrap();
    assert_eq!(
        std::str::from_utf8(&chunk).unwrap(),
        "{\"id\":\"1\",\"v\":1.5,\"r\":\"2024-01-01\"}\n{\"id\":\"2\",\"v\":null,\"r\":\"2024-01-01\"}\n"
    );
    assert_eq!(encoder.stats().rows, 2);
    assert_eq!(encoder.stats().failed_rows, 1);
    assert_eq!(
        encoder.stats().failures[1],
        "row (id=3): column `r`: zero date (and the field is REQUIRED) (row left out)"
    );
    let error = encoder
        .push(row(4, f64::INFINITY, Ok(Val::Date(date))))
        .unwrap_err();
    assert_eq!(error.count, 3);
    assert!(
        error
            .to_string()
            .contains("more than max_parse_failures (2)"),
        "{error}"
    );
}

#[test]
fn invalid_utf8() {
    let map = mapping(&[
        ("id", BqType::Int64, FieldMode::Required),
        ("s", BqType::String, FieldMode::Nullable),
    ]);
    let bytes: &'static [u8] = b"caf\xe9";
    let mut replace = writer(&map, TypePolicies::default(), None, 10_000);
    replace
        .push(|index| {
            if index == 0 {
                Ok(Val::Int(1))
            } else {
                text(bytes)
            }
        })
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&replace.finish().unwrap()).unwrap(),
        "{\"id\":\"1\",\"s\":\"caf\u{fffd}\"}\n"
    );
    assert_eq!(replace.stats().by_kind.get("invalid_utf8"), Some(&1));
    let policies = TypePolicies {
        invalid_utf8: Utf8Policy::Error,
        ..TypePolicies::default()
    };
    let mut strict = writer(&map, policies, None, 10_000);
    strict
        .push(|index| {
            if index == 0 {
                Ok(Val::Int(1))
            } else {
                text(bytes)
            }
        })
        .unwrap();
    assert_eq!(strict.stats().rows, 0);
    assert_eq!(strict.stats().failed_rows, 1);
}

#[test]
fn chunks_are_whole_lines() {
    let map = mapping(&[
        ("id", BqType::Int64, FieldMode::Required),
        ("s", BqType::String, FieldMode::Nullable),
    ]);
    let mut encoder = writer(&map, TypePolicies::default(), None, 10_000);
    let long = "x".repeat(1000);
    let mut chunks = Vec::new();
    for id in 0..3000 {
        encoder
            .push(|index| {
                if index == 0 {
                    Ok(Val::Int(id))
                } else {
                    Ok(Val::Text(Cow::Borrowed(&long)))
                }
            })
            .unwrap();
        chunks.extend(encoder.full_chunk());
    }
    chunks.extend(encoder.finish());
    assert!(chunks.len() >= 2);
    for chunk in &chunks[..chunks.len() - 1] {
        assert!(chunk.len() >= CHUNK_SIZE && chunk.len() < CHUNK_SIZE + 2048);
    }
    assert!(chunks.iter().all(|chunk| chunk.ends_with(b"\n")));
    let lines: usize = chunks
        .iter()
        .map(|chunk| chunk.iter().filter(|&&b| b == b'\n').count())
        .sum();
    assert_eq!(lines, 3000);
}

#[test]
fn chunks_hold_at_most_batch_size_rows() {
    let map = mapping(&[("id", BqType::Int64, FieldMode::Required)]);
    let mut encoder = writer(&map, TypePolicies::default(), None, 100);
    let mut chunks = Vec::new();
    for id in 0..250 {
        encoder.push(|_| Ok(Val::Int(id))).unwrap();
        chunks.extend(encoder.full_chunk());
    }
    chunks.extend(encoder.finish());
    let rows: Vec<usize> = chunks
        .iter()
        .map(|chunk| chunk.iter().filter(|&&b| b == b'\n').count())
        .collect();
    assert_eq!(rows, [100, 100, 50]);
}

#[test]
fn flagged_geography_values_are_bad_values_of_their_row() {
    assert_eq!(
        write(Val::Text("POINT(13.4 52.5)".into()), BqType::Geography).unwrap(),
        r#""POINT(13.4 52.5)""#
    );
    assert_eq!(
        write(Val::Text("!srid 3857".into()), BqType::Geography).unwrap_err(),
        BadKind::OutOfRange
    );
    assert_eq!(
        write(
            Val::Text("!invalid Self-intersection[1 1]".into()),
            BqType::Geography
        )
        .unwrap_err(),
        BadKind::Malformed
    );
    // Plain text columns are never second-guessed.
    assert_eq!(
        write(Val::Text("!srid 3857".into()), BqType::String).unwrap(),
        r#""!srid 3857""#
    );
    let map = mapping(&[
        ("id", BqType::Int64, FieldMode::Required),
        ("g", BqType::Geography, FieldMode::Nullable),
    ]);
    let mut encoder = writer(&map, TypePolicies::default(), Some(10), 10_000);
    let row = |id: i64, g: &'static str| {
        move |index: usize| match index {
            0 => Ok(Val::Int(id)),
            _ => Ok(Val::Text(g.into())),
        }
    };
    encoder.push(row(1, "POINT(1 2)")).unwrap();
    encoder
        .push(row(2, "!invalid Self-intersection[1 1]"))
        .unwrap();
    encoder.push(row(3, "!srid 3857")).unwrap();
    let chunk = encoder.finish().unwrap();
    assert_eq!(
        std::str::from_utf8(&chunk).unwrap(),
        "{\"id\":\"1\",\"g\":\"POINT(1 2)\"}\n"
    );
    assert_eq!(encoder.stats().failed_rows, 2);
    assert_eq!(
        encoder.stats().failures,
        [
            "row (id=2): column `g`: geometry is not valid for GEOGRAPHY (Self-intersection[1 1]) (row left out)",
            "row (id=3): column `g`: geometry in SRID 3857 cannot be converted to WGS 84 (SRID 4326) for GEOGRAPHY on this server (row left out)"
        ]
    );
}

/// A NULL merge key (REQUIRED in the load) is a bad value like any other: its row goes to the
/// rejects and it counts against `max_parse_failures`, so too many of them fail the table.
#[test]
fn a_null_in_a_required_key_is_counted_against_the_budget() {
    let map = mapping(&[
        ("id", BqType::Int64, FieldMode::Required),
        ("v", BqType::String, FieldMode::Nullable),
    ]);
    let mut encoder = writer(&map, TypePolicies::default(), Some(1), 10_000);
    let row = |id: Option<i64>| {
        move |index: usize| match (index, id) {
            (0, Some(id)) => Ok(Val::Int(id)),
            (0, None) => Ok(Val::Null),
            _ => Ok(Val::Text("x".into())),
        }
    };
    encoder.push(row(Some(1))).unwrap();
    encoder.push(row(None)).unwrap();
    let stats = encoder.stats();
    assert_eq!((stats.rows, stats.failed_rows, stats.bad_values), (1, 1, 1));
    assert_eq!(stats.by_kind.get("null_in_required"), Some(&1));
    assert_eq!(stats.rejects[0].key, "(id=NULL)");
    assert_eq!(stats.rejects[0].column, "id");
    assert_eq!(stats.rejects[0].reason, "NULL in a REQUIRED field");
    // The second one is over the budget of 1: the table fails.
    let error = encoder.push(row(None)).unwrap_err();
    assert_eq!((error.count, error.max), (2, 1));
}
