//! PostgreSQL binary → Avro for the common pairs of source codec and BigQuery type, value by
//! value, without the [`Val`](crate::schema::Val) in between: what `COPY … (FORMAT binary)`
//! hands over ([`RawRow`](crate::schema::RawRow)) is turned into the Avro datum directly.
//! Profiling a 1M-row, 25-column PostgreSQL → Avro extraction put the generic round trip
//! (decode into a `Val`, the bad-value policy, encode) at about a quarter of the client's
//! time, and the decimal's text form at another 8 %.
//!
//! The rule that keeps it exact: a direct write either appends exactly the bytes the generic
//! path ([`write_avro_scalar`](super::write_avro_scalar) after
//! `postgres::decode_binary`) appends for that value, or declines and appends nothing; the
//! generic path then writes the value, with its checks, bad-value policies and messages. A
//! direct write never decides a value is bad, so it can't change what a policy sees.
//! Declined: NULL outside a NULLABLE field, NaN and ±Infinity, dates and timestamps outside
//! years 1–9999, invalid UTF-8, decimals that don't fit the field (or need more than 38
//! digits), and any bytes of an unexpected length. The tests compare both paths value by
//! value, edges included.

use chrono::NaiveDate;

use super::{
    Target, UNIX_DAYS_FROM_CE, f32_as_double, put_bytes, put_civil_text, put_long, put_unscaled,
};
use crate::schema::{BqType, Codec, FieldMode};
use crate::source::{PG_EPOCH_UNIX_DAYS, PG_EPOCH_UNIX_MICROS, PgNumeric, be_i64};

/// 0001-01-01 and 9999-12-31 in days since 1970-01-01: BigQuery's DATE range.
const MIN_DAY: i64 = -719_162;
const MAX_DAY: i64 = 2_932_896;
const DAY_MICROS: i64 = 86_400_000_000;
/// 0001-01-01T00:00:00 and 9999-12-31T23:59:59.999999 in microseconds since the Unix epoch.
const MIN_MICROS: i64 = MIN_DAY * DAY_MICROS;
const MAX_MICROS: i64 = (MAX_DAY + 1) * DAY_MICROS - 1;

/// How one column's non-NULL values are written directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direct {
    /// `int2`/`int4`/`int8` → `long`.
    Long,
    /// `bool` → `boolean`.
    Bool,
    /// `float4`/`float8` → `double` (the f32 as the NDJSON writer's shortest text reads).
    Double,
    /// UTF-8 text → `string`.
    String,
    /// `bytea` → `bytes`.
    Bytes,
    /// `date` → `int` `date`.
    Date,
    /// `timestamp`/`timestamptz` → `long` `timestamp-micros`.
    Timestamp,
    /// `timestamp`/`timestamptz` → the `datetime` string.
    Datetime,
    /// `time` → `long` `time-micros`.
    Time,
    /// `numeric` → `bytes` `decimal` at `scale`, below 10^`digits` unscaled (`digits` ≤ 38:
    /// the unscaled value fits an `i128`).
    Decimal { scale: u32, digits: u32 },
}

impl Direct {
    /// The direct write of `codec` values into a `target` field of `mode`, if there is one.
    pub(super) fn of(codec: &Codec, target: Target, mode: FieldMode) -> Option<Self> {
        use BqType as T;
        if mode == FieldMode::Repeated {
            return None;
        }
        Some(match (codec, target.bq_type) {
            (Codec::Int | Codec::UInt, T::Int64) => Self::Long,
            (Codec::Bool, T::Bool) => Self::Bool,
            (Codec::Float, T::Float64) => Self::Double,
            (Codec::Text | Codec::Duration, T::String) => Self::String,
            (Codec::Bytes, T::Bytes) => Self::Bytes,
            (Codec::Date, T::Date) => Self::Date,
            (Codec::Timestamp | Codec::DateTime, T::Timestamp) => Self::Timestamp,
            (Codec::Timestamp | Codec::DateTime, T::Datetime) => Self::Datetime,
            (Codec::Time, T::Time) => Self::Time,
            (Codec::Decimal, T::Numeric | T::BigNumeric) => {
                let (int, scale) = target.decimal_bounds();
                let digits = int.checked_add(scale).filter(|&digits| digits <= 38)?;
                Self::Decimal { scale, digits }
            }
            _ => return None,
        })
    }

    /// Appends the non-NULL value `bytes` to `buf`; `false`, with nothing appended, where the
    /// generic path must write it.
    pub(super) fn write(self, bytes: &[u8], buf: &mut Vec<u8>, scratch: &mut Vec<u8>) -> bool {
        match self {
            Self::Long => be_i64(bytes).map(|n| put_long(buf, n)).is_some(),
            Self::Bool => match bytes {
                [b] => {
                    buf.push(u8::from(*b != 0));
                    true
                }
                _ => false,
            },
            Self::Double => {
                let double = match bytes.len() {
                    8 => Some(f64::from_be_bytes(bytes.try_into().unwrap_or_default())),
                    4 => {
                        let f = f32::from_be_bytes(bytes.try_into().unwrap_or_default());
                        if f.is_finite() {
                            f32_as_double(scratch, f)
                        } else {
                            None
                        }
                    }
                    _ => None,
                };
                match double {
                    Some(double) if double.is_finite() => {
                        buf.extend_from_slice(&double.to_le_bytes());
                        true
                    }
                    _ => false,
                }
            }
            Self::String => match std::str::from_utf8(bytes) {
                Ok(_) => {
                    put_bytes(buf, bytes);
                    true
                }
                Err(_) => false,
            },
            Self::Bytes => {
                put_bytes(buf, bytes);
                true
            }
            Self::Date => match bytes.len() {
                4 => be_i64(bytes)
                    .map(|days| days + PG_EPOCH_UNIX_DAYS)
                    .filter(|days| (MIN_DAY..=MAX_DAY).contains(days))
                    .map(|days| put_long(buf, days))
                    .is_some(),
                _ => false,
            },
            Self::Timestamp => match unix_micros(bytes) {
                Some(micros) => {
                    put_long(buf, micros);
                    true
                }
                None => false,
            },
            Self::Datetime => {
                let Some(micros) = unix_micros(bytes) else {
                    return false;
                };
                let days = micros.div_euclid(DAY_MICROS);
                let Some(date) = i32::try_from(days + UNIX_DAYS_FROM_CE)
                    .ok()
                    .and_then(NaiveDate::from_num_days_from_ce_opt)
                else {
                    return false;
                };
                put_civil_text(buf, date, micros.rem_euclid(DAY_MICROS) as u64);
                true
            }
            Self::Time => match bytes.len() {
                8 => be_i64(bytes)
                    .filter(|micros| (0..DAY_MICROS).contains(micros))
                    .map(|micros| put_long(buf, micros))
                    .is_some(),
                _ => false,
            },
            Self::Decimal { scale, digits } => match unscaled(bytes, scale, digits) {
                Some(n) => {
                    put_unscaled(buf, n);
                    true
                }
                None => false,
            },
        }
    }
}

/// A binary `timestamp`/`timestamptz` in microseconds since the Unix epoch, within years
/// 1–9999 (±infinity, `i64::MAX`/`MIN` on the wire, is outside).
fn unix_micros(bytes: &[u8]) -> Option<i64> {
    if bytes.len() != 8 {
        return None;
    }
    be_i64(bytes)?
        .checked_add(PG_EPOCH_UNIX_MICROS)
        .filter(|micros| (MIN_MICROS..=MAX_MICROS).contains(micros))
}

/// A binary `numeric` as its unscaled value at `scale`, if it is finite, has no more than
/// `scale` fraction digits (trailing zeros aside) and is below 10^`digits` unscaled.
fn unscaled(bytes: &[u8], scale: u32, digits: u32) -> Option<i128> {
    let numeric = PgNumeric::parse(bytes)?;
    let negative = match numeric.sign {
        0x0000 => false,
        0x4000 => true,
        _ => return None,
    };
    let count = numeric.len();
    // The generic path writes the display scale's digits only: digits past it (which the
    // server does not send) are left to it.
    let last_places = 4 * (i64::try_from(count).ok()? - 1 - numeric.weight);
    let excess = last_places - i64::try_from(numeric.dscale).ok()?;
    if count > 0 && excess > 0 {
        let cut = 10u16.checked_pow(u32::try_from(excess).ok()?)?;
        if numeric.digit(count - 1) % cut != 0 {
            return None;
        }
    }
    let mut n: i128 = 0;
    for index in 0..count {
        let digit = numeric.digit(index);
        if digit > 9999 {
            return None;
        }
        if digit == 0 {
            continue;
        }
        // This digit's power of ten in the unscaled value.
        let power = 4 * (numeric.weight - i64::try_from(index).ok()?) + i64::from(scale);
        let term = if power >= 0 {
            i128::from(digit).checked_mul(10i128.checked_pow(u32::try_from(power).ok()?)?)?
        } else {
            let cut = 10u16.checked_pow(u32::try_from(-power).ok()?)?;
            if digit % cut != 0 {
                return None;
            }
            i128::from(digit / cut)
        };
        n = n.checked_add(term)?;
    }
    if n >= 10i128.pow(digits) {
        return None;
    }
    Some(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::pg_decode_binary;
    use crate::warehouse::avro::write_avro_scalar;

    fn target(bq_type: BqType, precision: Option<u32>, scale: Option<u32>) -> Target {
        Target {
            bq_type,
            precision,
            scale,
        }
    }

    /// What the generic path writes for `bytes`: decode, then encode (`None`: a bad value).
    fn generic(bytes: &[u8], codec: &Codec, target: Target) -> Option<Vec<u8>> {
        let value = pg_decode_binary(bytes, codec).ok()?;
        let mut buf = Vec::new();
        write_avro_scalar(&mut buf, &mut Vec::new(), &value, target).ok()?;
        Some(buf)
    }

    /// Checks every value both ways: a direct write equals the generic one, a declined one
    /// appends nothing; returns how many were written directly.
    fn check(codec: &Codec, target: Target, values: &[Vec<u8>]) -> usize {
        let direct = Direct::of(codec, target, FieldMode::Nullable)
            .unwrap_or_else(|| panic!("no direct write of {codec:?} into {target:?}"));
        let mut written = 0;
        for bytes in values {
            let mut buf = b"prefix".to_vec();
            if direct.write(bytes, &mut buf, &mut Vec::new()) {
                assert_eq!(
                    Some(buf[6..].to_vec()),
                    generic(bytes, codec, target),
                    "{codec:?} {bytes:?} into {target:?}"
                );
                written += 1;
            } else {
                assert_eq!(buf, b"prefix", "a declined write appended bytes");
            }
        }
        written
    }

    /// Accepted: every value the generic path writes is written directly.
    fn all_direct_where_generic_writes(codec: &Codec, target: Target, values: &[Vec<u8>]) {
        check(codec, target, values);
        let direct = Direct::of(codec, target, FieldMode::Nullable).unwrap();
        let writable: Vec<&Vec<u8>> = values
            .iter()
            .filter(|bytes| generic(bytes, codec, target).is_some())
            .collect();
        assert!(!writable.is_empty());
        let declined: Vec<_> = writable
            .into_iter()
            .filter(|bytes| !direct.write(bytes, &mut Vec::new(), &mut Vec::new()))
            .map(|bytes| (bytes, pg_decode_binary(bytes, codec)))
            .collect();
        assert!(
            declined.is_empty(),
            "{codec:?} into {target:?}: declined {declined:?}"
        );
    }

    /// Pseudo-random 64-bit values (a fixed LCG: the same every run).
    fn randoms(count: usize) -> Vec<u64> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                state
            })
            .collect()
    }

    #[test]
    fn integers_booleans_texts_and_bytes_match_the_generic_path() {
        let mut ints: Vec<Vec<u8>> = Vec::new();
        for n in [0i64, 1, -1, i64::MIN, i64::MAX, 1 << 53, (1 << 53) + 1] {
            ints.push(n.to_be_bytes().to_vec());
        }
        for n in [i32::MIN, -1, 0, i32::MAX] {
            ints.push(n.to_be_bytes().to_vec());
        }
        for n in [i16::MIN, -1, 0, i16::MAX] {
            ints.push(n.to_be_bytes().to_vec());
        }
        ints.extend(randoms(500).into_iter().map(|n| n.to_be_bytes().to_vec()));
        ints.push(vec![1, 2, 3]);
        let int64 = target(BqType::Int64, None, None);
        all_direct_where_generic_writes(&Codec::Int, int64, &ints);
        all_direct_where_generic_writes(&Codec::UInt, int64, &ints);
        assert_eq!(check(&Codec::Int, int64, &[vec![1, 2, 3]]), 0);

        let bools = [vec![0], vec![1], vec![7], vec![], vec![1, 0]];
        all_direct_where_generic_writes(&Codec::Bool, target(BqType::Bool, None, None), &bools);

        let texts: Vec<Vec<u8>> = ["", "abc", "é ü", "日本", "a\0b", "\u{10FFFF}"]
            .iter()
            .map(|text| text.as_bytes().to_vec())
            .chain([vec![0xff], vec![b'a', 0xc3], vec![0xed, 0xa0, 0x80]])
            .collect();
        let string = target(BqType::String, None, None);
        all_direct_where_generic_writes(&Codec::Text, string, &texts);
        assert_eq!(
            check(&Codec::Text, string, &texts),
            6,
            "invalid UTF-8 is declined"
        );
        let bytes = target(BqType::Bytes, None, None);
        all_direct_where_generic_writes(&Codec::Bytes, bytes, &texts);
    }

    #[test]
    fn floats_match_the_generic_path_and_non_finite_ones_are_declined() {
        let mut doubles: Vec<Vec<u8>> = [
            0.0,
            -0.0,
            0.1,
            1.5,
            -2.25e-300,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]
        .iter()
        .map(|f: &f64| f.to_be_bytes().to_vec())
        .collect();
        doubles.extend(randoms(300).into_iter().map(|n| n.to_be_bytes().to_vec()));
        let mut floats: Vec<Vec<u8>> = [
            0.0f32,
            -0.0,
            0.1,
            1.0 / 3.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-45,
            16_777_217.0,
            f32::NAN,
            f32::INFINITY,
        ]
        .iter()
        .map(|f| f.to_be_bytes().to_vec())
        .collect();
        floats.extend(
            randoms(300)
                .into_iter()
                .map(|n| (n as u32).to_be_bytes().to_vec()),
        );
        let float64 = target(BqType::Float64, None, None);
        all_direct_where_generic_writes(&Codec::Float, float64, &doubles);
        all_direct_where_generic_writes(&Codec::Float, float64, &floats);
        let non_finite = [f64::NAN, f64::INFINITY].map(|f| f.to_be_bytes().to_vec());
        assert_eq!(check(&Codec::Float, float64, &non_finite), 0);
    }

    #[test]
    fn dates_times_and_timestamps_match_the_generic_path_up_to_the_edges_of_bigquerys_range() {
        // PostgreSQL counts days and microseconds from 2000-01-01.
        let pg_day = |unix_day: i64| (unix_day - PG_EPOCH_UNIX_DAYS) as i32;
        let mut dates: Vec<Vec<u8>> = [i32::MIN, i32::MAX, 0, -1, 1]
            .into_iter()
            .chain([MIN_DAY - 1, MIN_DAY, MAX_DAY, MAX_DAY + 1].map(pg_day))
            .map(|day| day.to_be_bytes().to_vec())
            .collect();
        dates.extend(
            randoms(300)
                .into_iter()
                .map(|n| ((n % 4_000_000) as i32 - 1_500_000).to_be_bytes().to_vec()),
        );
        let date = target(BqType::Date, None, None);
        all_direct_where_generic_writes(&Codec::Date, date, &dates);
        let edges = [MIN_DAY - 1, MIN_DAY, MAX_DAY, MAX_DAY + 1]
            .map(|day| pg_day(day).to_be_bytes().to_vec());
        assert_eq!(
            check(&Codec::Date, date, &edges),
            2,
            "year 0 and 10000 are declined"
        );

        let pg_micros = |unix: i64| unix - PG_EPOCH_UNIX_MICROS;
        let mut moments: Vec<Vec<u8>> = [i64::MIN, i64::MAX, 0, -1, 1, 999_999]
            .into_iter()
            .chain([MIN_MICROS - 1, MIN_MICROS, MAX_MICROS, MAX_MICROS + 1].map(pg_micros))
            .map(|micros| micros.to_be_bytes().to_vec())
            .collect();
        moments.extend(randoms(500).into_iter().map(|n| {
            let span = (MAX_MICROS - MIN_MICROS) as u64;
            pg_micros(MIN_MICROS + (n % span) as i64)
                .to_be_bytes()
                .to_vec()
        }));
        for codec in [Codec::Timestamp, Codec::DateTime] {
            for bq_type in [BqType::Timestamp, BqType::Datetime] {
                all_direct_where_generic_writes(&codec, target(bq_type, None, None), &moments);
            }
        }

        let times: Vec<Vec<u8>> = [0i64, 1, 86_399_999_999, 86_400_000_000, -1, 45_296_789_012]
            .into_iter()
            .chain(
                randoms(200)
                    .into_iter()
                    .map(|n| (n % 86_400_000_000) as i64),
            )
            .map(|micros| micros.to_be_bytes().to_vec())
            .collect();
        let time = target(BqType::Time, None, None);
        all_direct_where_generic_writes(&Codec::Time, time, &times);
        assert_eq!(
            check(&Codec::Time, time, &times[3..5]),
            0,
            "24:00 and negative"
        );
    }

    /// `text` (`[-]digits[.digits]`) in PostgreSQL's binary numeric format, as `numeric_send`
    /// writes it: base-10000 digits aligned on the point, zero digits trimmed at both ends.
    fn pg_numeric(text: &str) -> Vec<u8> {
        let (negative, body) = match text.strip_prefix('-') {
            Some(body) => (true, body),
            None => (false, text),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let int = format!("{int:0>width$}", width = int.len().div_ceil(4) * 4);
        let frac_padded = format!("{frac:0<width$}", width = frac.len().div_ceil(4) * 4);
        let groups: Vec<u16> = format!("{int}{frac_padded}")
            .as_bytes()
            .chunks(4)
            .map(|chunk| std::str::from_utf8(chunk).unwrap().parse().unwrap())
            .collect();
        let mut weight = (int.len() / 4) as i64 - 1;
        let lead = groups.iter().take_while(|&&g| g == 0).count();
        let groups = &groups[lead..];
        weight -= lead as i64;
        let trail = groups.iter().rev().take_while(|&&g| g == 0).count();
        let groups = &groups[..groups.len() - trail];
        let weight = if groups.is_empty() { 0 } else { weight };
        let mut out = Vec::new();
        let sign: u16 = if negative { 0x4000 } else { 0 };
        for word in [
            groups.len() as u16,
            weight as i16 as u16,
            sign,
            frac.len() as u16,
        ] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        for group in groups {
            out.extend_from_slice(&group.to_be_bytes());
        }
        out
    }

    #[test]
    fn the_numeric_helper_writes_what_the_decoder_reads() {
        for text in ["0", "123.45", "-0.0001", "10000", "12345678.9", "0.50"] {
            assert_eq!(
                pg_decode_binary(&pg_numeric(text), &Codec::Decimal),
                Ok(crate::schema::Val::Decimal(text.to_string().into()))
            );
        }
    }

    #[test]
    fn decimals_match_the_generic_path_and_those_that_do_not_fit_are_declined() {
        let mut texts: Vec<String> = [
            "0",
            "0.00",
            "-0.00",
            "1",
            "-1",
            "123.45",
            "-123.45",
            "0.01",
            "0.001",
            "9999999999.99",
            "10000000000.00",
            "99999999999999999999999999999.999999999",
            "100000000000000000000000000000",
            "0.000000001",
            "0.0000000001",
            "12345678901234567890.123456789",
            "-98765432109876543210987654321.1",
            "5.000000000000",
            "1e",
        ]
        .iter()
        .filter(|text| !text.contains('e'))
        .map(|text| text.to_string())
        .collect();
        for n in randoms(400) {
            let int = n % 10u64.pow((n % 19) as u32 + 1);
            let frac = n.rotate_left(17) % 1_000_000_000;
            let places = (n % 10) as usize;
            let frac = format!("{frac:09}");
            let sign = if n % 3 == 0 { "-" } else { "" };
            texts.push(if places == 0 {
                format!("{sign}{int}")
            } else {
                format!("{sign}{int}.{}", &frac[..places])
            });
        }
        let mut values: Vec<Vec<u8>> = texts.iter().map(|text| pg_numeric(text)).collect();
        // NaN, ±Infinity, a digit above 9999, a digit past the display scale, truncated.
        for sign in [0xC000u16, 0xD000, 0xF000] {
            let mut nan = vec![0, 0, 0, 0];
            nan.extend_from_slice(&sign.to_be_bytes());
            nan.extend_from_slice(&[0, 0]);
            values.push(nan);
        }
        // Never sent by the server: a digit above 9999, digits past the display scale (1.1234
        // at dscale 1, which the generic path cuts to 1.1), fewer digits than counted.
        let odd = [
            vec![0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10],
            vec![0, 2, 0, 0, 0, 0, 0, 1, 0, 1, 0x04, 0xD2],
            vec![0, 2, 0, 0, 0, 0, 0, 0, 0, 1],
        ];
        for (bq_type, precision, scale) in [
            (BqType::Numeric, Some(12), Some(2)),
            (BqType::Numeric, None, None),
            (BqType::Numeric, Some(10), None),
            (BqType::Numeric, Some(38), Some(9)),
            (BqType::BigNumeric, Some(38), Some(10)),
            (BqType::Numeric, Some(4), Some(4)),
        ] {
            let target = target(bq_type, precision, scale);
            all_direct_where_generic_writes(&Codec::Decimal, target, &values);
            assert_eq!(check(&Codec::Decimal, target, &odd), 0);
        }
        // More than 38 digits: the generic path's BigInt.
        assert_eq!(
            Direct::of(
                &Codec::Decimal,
                target(BqType::BigNumeric, None, None),
                FieldMode::Nullable
            ),
            None
        );
        let numeric_12_2 = target(BqType::Numeric, Some(12), Some(2));
        let declined = ["10000000000.00", "0.001", "-0.005"].map(pg_numeric);
        assert_eq!(check(&Codec::Decimal, numeric_12_2, &declined), 0);
    }

    #[test]
    fn arrays_json_and_other_pairs_have_no_direct_write() {
        let string = target(BqType::String, None, None);
        assert_eq!(Direct::of(&Codec::Json, string, FieldMode::Nullable), None);
        assert_eq!(
            Direct::of(&Codec::Text, string, FieldMode::Repeated),
            None,
            "REPEATED fields are arrays"
        );
        let array = Codec::Array(Box::new(Codec::Int));
        let int64 = target(BqType::Int64, None, None);
        assert_eq!(Direct::of(&array, int64, FieldMode::Nullable), None);
        assert_eq!(Direct::of(&Codec::Int, string, FieldMode::Nullable), None);
        assert_eq!(
            Direct::of(
                &Codec::Date,
                target(BqType::Timestamp, None, None),
                FieldMode::Nullable
            ),
            None
        );
    }
}
