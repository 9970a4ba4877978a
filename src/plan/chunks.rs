//! Chunks of one table for parallel extraction (issue 10): integer key ranges and PostgreSQL
//! ctid page ranges sized by estimated bytes ([`plan_chunking`]). Pure. The SQL predicate of a
//! chunk comes from the engine's `Dialect` (`source::sql::chunk_predicate`); the executor runs
//! the chunks the plan lists (`sync::chunks`).

use serde::{Deserialize, Serialize};

pub use crate::schema::{ChunkFacts, ChunkRange, Consistency, KeyFacts};

/// Most chunks one table is split into: each chunk is a load job into the run's staging
/// table (BigQuery allows 1,500 load jobs per table per day and 100,000 per project); beyond
/// this many the chunks grow instead.
pub const MAX_CHUNKS: u64 = 1_000;

/// How a table's rows are split for reading, as planned (part of the `Extract` step).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunking {
    /// The integer key the ranges are on; `None` for ctid page ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The chunks in order, at least two; empty = one chunk reading every row.
    #[serde(default)]
    pub ranges: Vec<ChunkRange>,
    /// Readers of this table at once (`table_parallelism`, at most the chunk count).
    #[serde(default)]
    pub readers: u32,
    /// Whether every reader sees one snapshot.
    #[serde(default)]
    pub consistency: Consistency,
    /// The estimated bytes to read the split is based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_bytes: Option<u64>,
}

impl Chunking {
    /// How many chunks (1 when the table is not split).
    pub fn count(&self) -> usize {
        self.ranges.len().max(1)
    }

    /// Whether the table is read as one chunk.
    pub fn is_single(&self) -> bool {
        self.ranges.len() <= 1
    }
}

/// The manifest's chunk settings of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSettings {
    /// Target size of one chunk, estimated encoded bytes.
    pub chunk_bytes: u64,
    /// Readers of one table at once.
    pub table_parallelism: u32,
    /// Snapshot or per-chunk.
    pub consistency: Consistency,
}

/// Splits a table into chunks of about `chunk_bytes`: ranges of its integer primary key (else
/// of an integer unique key), else PostgreSQL page ranges, else one chunk. `rows_to_move` and
/// `total_rows` scale the size estimate for a bounded (incremental) extraction, so a small
/// increment of a huge table stays one chunk. A table whose engine cannot give its readers one
/// snapshot (MySQL MyISAM) stays one chunk unless `consistency` is `per-chunk`.
pub fn plan_chunking(
    facts: &ChunkFacts,
    settings: ChunkSettings,
    rows_to_move: Option<u64>,
    total_rows: Option<u64>,
) -> Chunking {
    let Some(table_bytes) = facts.bytes else {
        return Chunking::default();
    };
    let bytes = match (rows_to_move, total_rows) {
        (Some(moved), Some(total)) if total > 0 && moved < total => {
            u64::try_from(u128::from(table_bytes) * u128::from(moved) / u128::from(total))
                .unwrap_or(table_bytes)
        }
        _ => table_bytes,
    };
    let count = chunk_count(bytes, settings.chunk_bytes, MAX_CHUNKS);
    if count <= 1 || (settings.consistency == Consistency::Snapshot && !facts.snapshot_capable) {
        return Chunking::default();
    }
    let key = facts
        .keys
        .iter()
        .filter(|key| key.min.is_some() && key.max.is_some())
        .min_by_key(|key| !key.primary);
    let (key, ranges) = match (key, facts.pages) {
        (Some(key), _) => (
            Some(key.column.clone()),
            key_ranges(key.min.unwrap_or(0), key.max.unwrap_or(0), count),
        ),
        (None, Some(pages)) if pages > 1 => (None, page_ranges(pages, count)),
        _ => return Chunking::default(),
    };
    if ranges.len() <= 1 {
        return Chunking::default();
    }
    Chunking {
        key,
        readers: settings
            .table_parallelism
            .clamp(1, u32::try_from(ranges.len()).unwrap_or(u32::MAX)),
        ranges,
        consistency: settings.consistency,
        estimated_bytes: Some(bytes),
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

    fn facts(bytes: u64) -> ChunkFacts {
        ChunkFacts {
            bytes: Some(bytes),
            pages: Some(bytes / 8192),
            keys: vec![
                KeyFacts {
                    column: "code".into(),
                    min: Some(0),
                    max: Some(10),
                    primary: false,
                },
                KeyFacts {
                    column: "id".into(),
                    min: Some(1),
                    max: Some(8_000),
                    primary: true,
                },
            ],
            snapshot_capable: true,
        }
    }

    const SETTINGS: ChunkSettings = ChunkSettings {
        chunk_bytes: 1 << 20,
        table_parallelism: 2,
        consistency: Consistency::Snapshot,
    };

    #[test]
    fn a_table_splits_on_its_primary_key_by_estimated_bytes() {
        let planned = plan_chunking(&facts(8 << 20), SETTINGS, None, Some(8_000));
        assert_eq!(planned.key.as_deref(), Some("id"));
        assert_eq!(planned.count(), 8);
        assert_eq!(planned.readers, 2);
        assert_eq!(planned.estimated_bytes, Some(8 << 20));
        assert_eq!(
            planned.ranges[0],
            ChunkRange::Key {
                lo: None,
                hi: Some(1_001)
            }
        );
        assert_eq!(
            planned.ranges[7],
            ChunkRange::Key {
                lo: Some(7_001),
                hi: None
            }
        );
        // More readers than chunks: one per chunk.
        let few = ChunkSettings {
            table_parallelism: 16,
            ..SETTINGS
        };
        assert_eq!(plan_chunking(&facts(3 << 20), few, None, None).readers, 3);
    }

    #[test]
    fn small_tables_and_small_increments_stay_one_chunk() {
        assert!(plan_chunking(&facts(1 << 20), SETTINGS, None, None).is_single());
        assert!(plan_chunking(&ChunkFacts::default(), SETTINGS, None, None).is_single());
        // 8 MiB on disk, but an incremental run moves 100 of 8,000 rows.
        assert!(plan_chunking(&facts(8 << 20), SETTINGS, Some(100), Some(8_000)).is_single());
        assert_eq!(
            plan_chunking(&facts(8 << 20), SETTINGS, Some(4_000), Some(8_000)).count(),
            4
        );
    }

    #[test]
    fn without_an_integer_key_postgres_splits_by_pages() {
        let mut no_key = facts(4 << 20);
        no_key.keys.clear();
        let planned = plan_chunking(&no_key, SETTINGS, None, None);
        assert_eq!(planned.key, None);
        assert_eq!(
            planned.ranges,
            [
                ChunkRange::Pages {
                    lo: 0,
                    hi: Some(128)
                },
                ChunkRange::Pages {
                    lo: 128,
                    hi: Some(256)
                },
                ChunkRange::Pages {
                    lo: 256,
                    hi: Some(384)
                },
                ChunkRange::Pages { lo: 384, hi: None },
            ]
        );
        // MySQL without such a key (no pages): one chunk.
        no_key.pages = None;
        assert!(plan_chunking(&no_key, SETTINGS, None, None).is_single());
        // An empty table has no key bounds: pages, or one chunk.
        let mut empty = facts(4 << 20);
        for key in &mut empty.keys {
            key.min = None;
            key.max = None;
        }
        empty.pages = None;
        assert!(plan_chunking(&empty, SETTINGS, None, None).is_single());
    }

    #[test]
    fn a_table_without_snapshots_splits_only_per_chunk() {
        let mut myisam = facts(4 << 20);
        myisam.snapshot_capable = false;
        assert!(plan_chunking(&myisam, SETTINGS, None, None).is_single());
        let per_chunk = ChunkSettings {
            consistency: Consistency::PerChunk,
            ..SETTINGS
        };
        let planned = plan_chunking(&myisam, per_chunk, None, None);
        assert_eq!(planned.count(), 4);
        assert_eq!(planned.consistency, Consistency::PerChunk);
    }

    #[test]
    fn ranges_describe_themselves() {
        assert_eq!(
            ChunkRange::Key {
                lo: Some(5),
                hi: None
            }
            .describe(Some("id")),
            "id in [5, +inf)"
        );
        assert_eq!(
            ChunkRange::Pages { lo: 0, hi: Some(9) }.describe(None),
            "pages [0, 9)"
        );
    }
}
