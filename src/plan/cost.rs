//! What a table's write bills under on-demand pricing. Pure: the planner asks BigQuery for a
//! dry run's bytes; the arithmetic (minimums, price) is here.
//!
//! - Copy jobs within a region are free, like loads
//!   (<https://cloud.google.com/bigquery/pricing#free>), so replace, append, incremental and
//!   recreate bill 0 bytes.
//! - A MERGE with an UPDATE (or DELETE) clause bills q + t: the bytes it reads plus the whole
//!   target (<https://cloud.google.com/bigquery/docs/reference/standard-sql/dml-syntax#on-demand_query_size_calculation>).
//! - On-demand queries bill "a minimum 10 MB data processed per table referenced by the query"
//!   (<https://cloud.google.com/bigquery/pricing#on_demand_pricing>), at $6.25 per TiB.

use serde::{Deserialize, Serialize};

/// US on-demand price per TiB processed (<https://cloud.google.com/bigquery/pricing#on_demand_pricing>).
pub const DOLLARS_PER_TIB: f64 = 6.25;

/// The least a query bills per table it references: 10 MB (BigQuery counts MB in binary units).
pub const MIN_BYTES_PER_TABLE: u64 = 10 * 1024 * 1024;

const TIB: f64 = 1_099_511_627_776.0;

/// How a [`WriteCost`] was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CostBasis {
    /// A copy job: free.
    CopyJob,
    /// A MERGE into a target created by this run: nothing of the target is read.
    NewTarget,
    /// A dry run of each statement against the existing target (the run's staging and keys
    /// tables, which do not exist yet, are counted at their 10 MB minimum).
    DryRun {
        /// The statements (`MERGE`, `DELETE`, `UPDATE`).
        statements: Vec<String>,
    },
}

/// The bytes a table's write bills and what they cost on demand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteCost {
    /// Bytes billed.
    pub bytes: u64,
    /// US dollars at [`DOLLARS_PER_TIB`].
    pub dollars: f64,
    /// How the bytes were found.
    pub basis: CostBasis,
}

impl WriteCost {
    /// A write that bills nothing.
    pub fn free(basis: CostBasis) -> Self {
        Self {
            bytes: 0,
            dollars: 0.0,
            basis,
        }
    }

    /// The cost of statements whose target side a dry run measured: each statement references
    /// the target and one table of this run (staging, or the keys table), each billed at least
    /// [`MIN_BYTES_PER_TABLE`]. `statements` pairs each statement's name with its dry run's
    /// `totalBytesProcessed`.
    pub fn dry_run(statements: &[(String, u64)]) -> Self {
        Self {
            bytes: billed(statements),
            dollars: dollars(billed(statements)),
            basis: CostBasis::DryRun {
                statements: statements.iter().map(|(name, _)| name.clone()).collect(),
            },
        }
    }

    /// The MERGE (and delete statement) into a target this run creates: nothing of the target
    /// is read, yet each statement still bills its two tables at the 10 MB minimum.
    pub fn new_target(statements: &[&str]) -> Self {
        let priced: Vec<(String, u64)> = statements
            .iter()
            .map(|name| ((*name).to_string(), 0))
            .collect();
        Self {
            bytes: billed(&priced),
            dollars: dollars(billed(&priced)),
            basis: CostBasis::NewTarget,
        }
    }

    /// What the statements are, for display: `copy job`, `MERGE`, `MERGE + DELETE`.
    pub fn what(&self, statements_of_new_target: &[&str]) -> String {
        match &self.basis {
            CostBasis::CopyJob => "copy job".to_string(),
            CostBasis::NewTarget => statements_of_new_target.join(" + "),
            CostBasis::DryRun { statements } => statements.join(" + "),
        }
    }
}

/// Billed bytes: per statement, the target side and the run's table, each at least
/// [`MIN_BYTES_PER_TABLE`].
fn billed(statements: &[(String, u64)]) -> u64 {
    statements
        .iter()
        .map(|(_, target_side)| target_side.max(&MIN_BYTES_PER_TABLE) + MIN_BYTES_PER_TABLE)
        .sum()
}

/// The writes of a whole plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TotalWriteCost {
    /// Bytes billed by the tables whose cost is known.
    pub bytes: u64,
    /// US dollars at [`DOLLARS_PER_TIB`].
    pub dollars: f64,
    /// Tables that run but whose cost could not be estimated (not in the sum).
    pub unknown: u32,
}

impl TotalWriteCost {
    /// The sum over `costs` (one per table that runs; `None` = unknown).
    pub fn of<'a>(costs: impl IntoIterator<Item = Option<&'a WriteCost>>) -> Self {
        let mut total = Self::default();
        for cost in costs {
            match cost {
                Some(cost) => total.bytes += cost.bytes,
                None => total.unknown += 1,
            }
        }
        total.dollars = dollars(total.bytes);
        total
    }
}

/// On-demand dollars for `bytes` processed.
pub fn dollars(bytes: u64) -> f64 {
    // Exact enough: f64 holds every byte count below 2^53 (8 PiB) exactly.
    #[expect(clippy::cast_precision_loss, reason = "a price estimate")]
    let bytes = bytes as f64;
    bytes / TIB * DOLLARS_PER_TIB
}

/// `12345678` → `11.8 MiB`: binary units, as BigQuery bills.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `$0.0003`, `$1.25`, `$190.00`: cents for amounts of a dollar or more, four decimals below.
pub fn human_dollars(dollars: f64) -> String {
    if dollars == 0.0 {
        "$0".to_string()
    } else if dollars >= 1.0 {
        format!("${dollars:.2}")
    } else if dollars >= 0.0001 {
        format!("${dollars:.4}")
    } else {
        "<$0.0001".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_bills_at_least_ten_mb_per_table_it_references() {
        // A small target: MERGE (target + staging) at 10 MiB each.
        let small = WriteCost::dry_run(&[("MERGE".into(), 4_096)]);
        assert_eq!(small.bytes, 20 * 1024 * 1024);
        // MERGE and the delete statement of a 1 TiB target: the target side twice, plus the
        // staging and keys tables at their minimum.
        let tib = 1u64 << 40;
        let big = WriteCost::dry_run(&[("MERGE".into(), tib), ("DELETE".into(), tib)]);
        assert_eq!(big.bytes, 2 * tib + 2 * MIN_BYTES_PER_TABLE);
        assert!((big.dollars - (12.5 + 2.0 * dollars(MIN_BYTES_PER_TABLE))).abs() < 1e-9);
        assert_eq!(
            big.basis,
            CostBasis::DryRun {
                statements: vec!["MERGE".into(), "DELETE".into()]
            }
        );
        assert_eq!(WriteCost::free(CostBasis::CopyJob).bytes, 0);
        // A new target: no dry run, the minimums alone.
        let new = WriteCost::new_target(&["MERGE", "DELETE"]);
        assert_eq!(new.bytes, 4 * MIN_BYTES_PER_TABLE);
        assert_eq!(new.what(&["MERGE", "DELETE"]), "MERGE + DELETE");
        let total = TotalWriteCost::of([Some(&small), None, Some(&new)]);
        assert_eq!(total.bytes, 6 * MIN_BYTES_PER_TABLE);
        assert_eq!(total.unknown, 1);
    }

    #[test]
    fn figures_read_in_binary_units_and_dollars() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(human_dollars(0.0), "$0");
        assert_eq!(human_dollars(dollars(20 * 1024 * 1024)), "$0.0001");
        assert_eq!(human_dollars(dollars(1 << 40)), "$6.25");
        assert_eq!(human_dollars(dollars(4096)), "<$0.0001");
    }
}
