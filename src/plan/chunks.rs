//! Chunks of one table for parallel extraction (issue 10, item 2; the executor that runs them
//! is not built yet): integer key ranges and PostgreSQL ctid page ranges sized by estimated
//! bytes. Pure. The SQL predicate of a chunk comes from the engine's `Dialect`
//! (`source::sql::chunk_predicate`).

use serde::{Deserialize, Serialize};

use crate::schema::SourceTable;

/// Which rows one chunk reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChunkRange {
    /// `lo <= key < hi` on an integer primary or unique key; `None` = unbounded on that side
    /// (the first chunk also reads keys below the planned minimum, the last keys above the
    /// maximum, so rows inserted since planning are not missed).
    Key {
        /// Inclusive lower bound.
        lo: Option<i64>,
        /// Exclusive upper bound.
        hi: Option<i64>,
    },
    /// PostgreSQL heap pages `lo <= page < hi` (`ctid >= '(lo,0)' AND ctid < '(hi,0)'`); the
    /// last range is open because `relpages` is only an estimate.
    Pages {
        /// First page.
        lo: u64,
        /// Page after the last; `None` = to the end.
        hi: Option<u64>,
    },
}

/// What a source table can be split on for chunked extraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitOn {
    /// PostgreSQL heap pages (ctid ranges).
    Pages,
    /// Ranges of these key columns (the first one, when it is an integer).
    Key(Vec<String>),
    /// Nothing: the table is read as one chunk.
    Nothing,
}

/// What `table` can be split on: a custom SQL query is a derived table with no ctid pages and
/// no key of its own, so it is one chunk unless its `primary_key` is given (that is then its
/// key); a table splits on its primary key, or on pages in PostgreSQL.
pub fn split_on(table: &SourceTable, postgres: bool) -> SplitOn {
    match (
        table.primary_key.is_empty(),
        table.query.is_some(),
        postgres,
    ) {
        (false, _, _) => SplitOn::Key(table.primary_key.clone()),
        (true, false, true) => SplitOn::Pages,
        _ => SplitOn::Nothing,
    }
}

/// How many chunks `estimated_bytes` needs at `chunk_bytes` each, at most `max_chunks`.
pub fn chunk_count(estimated_bytes: u64, chunk_bytes: u64, max_chunks: u64) -> u64 {
    estimated_bytes
        .div_ceil(chunk_bytes.max(1))
        .clamp(1, max_chunks.max(1))
}

/// Key ranges covering every key (also outside `min..=max`), `count` of them, equal in key
/// width (a skewed key needs NTILE boundaries instead: `key_ranges_from_bounds`).
pub fn key_ranges(min: i64, max: i64, count: u64) -> Vec<ChunkRange> {
    let (min, max) = (i128::from(min.min(max)), i128::from(max.max(min)));
    let span = max - min + 1;
    let count = i128::from(count.max(1)).min(span);
    let bounds: Vec<i64> = (1..count)
        .map(|at| (min + span * at / count) as i64)
        .collect();
    key_ranges_from_bounds(&bounds)
}

/// Key ranges split at `bounds` (ascending inner boundaries, e.g. from NTILE).
pub fn key_ranges_from_bounds(bounds: &[i64]) -> Vec<ChunkRange> {
    let mut ranges = Vec::with_capacity(bounds.len() + 1);
    let mut lo = None;
    for &bound in bounds {
        if lo.is_some_and(|lo| bound <= lo) {
            continue;
        }
        ranges.push(ChunkRange::Key {
            lo,
            hi: Some(bound),
        });
        lo = Some(bound);
    }
    ranges.push(ChunkRange::Key { lo, hi: None });
    ranges
}

/// ctid page ranges over `relpages` pages, `count` of them, the last open.
pub fn page_ranges(relpages: u64, count: u64) -> Vec<ChunkRange> {
    let count = count.clamp(1, relpages.max(1));
    let per = relpages.div_ceil(count).max(1);
    (0..count)
        .map(|at| ChunkRange::Pages {
            lo: at * per,
            hi: (at + 1 < count).then_some((at + 1) * per),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(ranges: &[ChunkRange], key: i64) -> usize {
        ranges
            .iter()
            .filter(|range| match range {
                ChunkRange::Key { lo, hi } => {
                    lo.is_none_or(|lo| key >= lo) && hi.is_none_or(|hi| key < hi)
                }
                ChunkRange::Pages { .. } => false,
            })
            .count()
    }

    #[test]
    fn key_ranges_cover_every_key_exactly_once() {
        let ranges = key_ranges(1, 1_000_000, 4);
        assert_eq!(ranges.len(), 4);
        for key in [
            i64::MIN,
            -5,
            0,
            1,
            250_000,
            250_001,
            999_999,
            1_000_000,
            i64::MAX,
        ] {
            assert_eq!(covers(&ranges, key), 1, "{key}");
        }
        assert_eq!(
            ranges[1],
            ChunkRange::Key {
                lo: Some(250_001),
                hi: Some(500_001)
            }
        );
        // Extreme keys do not overflow; more chunks than keys collapse.
        assert_eq!(key_ranges(i64::MIN, i64::MAX, 3).len(), 3);
        assert_eq!(key_ranges(5, 6, 10).len(), 2);
        assert_eq!(
            key_ranges(7, 7, 4),
            [ChunkRange::Key { lo: None, hi: None }]
        );
        // Repeated NTILE bounds are dropped.
        assert_eq!(key_ranges_from_bounds(&[10, 10, 20]).len(), 3);
    }

    #[test]
    fn a_query_is_one_chunk_unless_it_names_its_key() {
        let mut table = SourceTable {
            qualifier: None,
            name: "daily".into(),
            columns: Vec::new(),
            primary_key: Vec::new(),
            estimated_rows: None,
            comment: None,
            query: Some("SELECT 1 AS x".into()),
        };
        assert_eq!(split_on(&table, true), SplitOn::Nothing);
        assert_eq!(split_on(&table, false), SplitOn::Nothing);
        table.primary_key = vec!["x".into()];
        assert_eq!(split_on(&table, true), SplitOn::Key(vec!["x".into()]));
        table.query = None;
        table.primary_key.clear();
        assert_eq!(split_on(&table, true), SplitOn::Pages);
        assert_eq!(split_on(&table, false), SplitOn::Nothing);
    }

    #[test]
    fn sizes_and_pages() {
        assert_eq!(chunk_count(10 << 30, 1 << 30, 64), 10);
        assert_eq!(chunk_count(0, 1 << 30, 64), 1);
        assert_eq!(chunk_count(1 << 40, 1 << 30, 64), 64);
        let pages = page_ranges(1000, 3);
        assert_eq!(
            pages,
            [
                ChunkRange::Pages {
                    lo: 0,
                    hi: Some(334)
                },
                ChunkRange::Pages {
                    lo: 334,
                    hi: Some(668)
                },
                ChunkRange::Pages { lo: 668, hi: None },
            ]
        );
    }
}
