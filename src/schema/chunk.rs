//! The vocabulary of chunked extraction (several readers of one table): which rows one chunk
//! reads ([`ChunkRange`]), how consistent the readers are with each other ([`Consistency`]),
//! and what a source says about a table so the planner can split it ([`ChunkFacts`]). Pure
//! data; the planner decides (`plan::chunks`), the engine's dialect renders the SQL.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which rows one chunk reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChunkRange {
    /// `lo <= key < hi` on an integer primary or unique key; `None` = unbounded on that side
    /// (the first chunk also reads keys below the planned minimum, the last keys above the
    /// maximum, so rows inserted since planning are not missed).
    Key {
        /// Inclusive lower bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lo: Option<i64>,
        /// Exclusive upper bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hi: Option<i64>,
    },
    /// PostgreSQL heap pages `lo <= page < hi` (`ctid >= '(lo,0)' AND ctid < '(hi,0)'`); the
    /// last range is open because the page count is read at plan time and the table may grow.
    Pages {
        /// First page.
        lo: u64,
        /// Page after the last; `None` = to the end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hi: Option<u64>,
    },
}

impl ChunkRange {
    /// A short engine-neutral description, e.g. `id in [1, 5000)` or `pages [0, 128)`.
    pub fn describe(&self, key: Option<&str>) -> String {
        let bound = |value: Option<String>, open: &str| value.unwrap_or_else(|| open.to_string());
        match self {
            Self::Key { lo, hi } => format!(
                "{} in [{}, {})",
                key.unwrap_or("key"),
                bound(lo.map(|lo| lo.to_string()), "-inf"),
                bound(hi.map(|hi| hi.to_string()), "+inf")
            ),
            Self::Pages { lo, hi } => format!(
                "pages [{lo}, {})",
                bound(hi.map(|hi| hi.to_string()), "end")
            ),
        }
    }
}

/// Whether the readers of one table see one snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Every chunk of a table is read from one consistent snapshot: PostgreSQL exports one
    /// snapshot to every reader (`pg_export_snapshot()`); MySQL/MariaDB takes `LOCK TABLES …
    /// READ` for a moment while every reader starts `START TRANSACTION WITH CONSISTENT
    /// SNAPSHOT` (InnoDB; needs the LOCK TABLES privilege).
    #[default]
    Snapshot,
    /// Each chunk is consistent on its own, the table is not: a row that moves between chunks
    /// while the table is read may be read twice or not at all. For MySQL users who cannot
    /// take the lock.
    PerChunk,
}

impl Consistency {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::PerChunk => "per-chunk",
        }
    }
}

/// One single-column integer key a table could be split on, with its current bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFacts {
    /// The source column.
    pub column: String,
    /// Smallest value now (`None` for an empty table).
    pub min: Option<i64>,
    /// Greatest value now.
    pub max: Option<i64>,
    /// The primary key (preferred over a unique key).
    pub primary: bool,
}

/// What a source knows about splitting a table, read at plan time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkFacts {
    /// The table's size on disk (PostgreSQL `pg_table_size`, MySQL `DATA_LENGTH`), the basis of
    /// the encoded-bytes estimate.
    pub bytes: Option<u64>,
    /// Heap pages now, when ctid page ranges can be read efficiently (PostgreSQL 14+ TID range
    /// scans of a plain table or materialized view).
    pub pages: Option<u64>,
    /// Single-column integer NOT NULL primary or unique keys, the primary key first.
    pub keys: Vec<KeyFacts>,
    /// Whether readers can share one snapshot (false for MySQL tables that are not InnoDB).
    pub snapshot_capable: bool,
}
