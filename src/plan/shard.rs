//! `--shard INDEX/COUNT`: which tables one of several machines runs. Pure.
//!
//! A table belongs to shard `sha256(label) mod COUNT` (the first 8 bytes of the digest,
//! big-endian): stable across runs, machines, manifest order and datasync versions, with no
//! coordinator. Every shard plans and applies only its own tables; together the shards cover
//! every table exactly once.
//!
//! Where the index comes from, first match wins: `--shard INDEX/COUNT`; Kubernetes Indexed
//! Jobs' `JOB_COMPLETION_INDEX` with `--shard-count COUNT` (the Job's `completions`); Cloud
//! Run jobs' `CLOUD_RUN_TASK_INDEX` and `CLOUD_RUN_TASK_COUNT`.

use sha2::{Digest, Sha256};

use crate::manifest::Env;

/// Kubernetes Indexed Job: this pod's index.
pub const JOB_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";
/// Cloud Run job: this task's index.
pub const CLOUD_RUN_TASK_INDEX: &str = "CLOUD_RUN_TASK_INDEX";
/// Cloud Run job: the number of tasks.
pub const CLOUD_RUN_TASK_COUNT: &str = "CLOUD_RUN_TASK_COUNT";

/// One shard of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based.
    pub index: u64,
    /// At least 1.
    pub count: u64,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// `INDEX/COUNT`, `0 <= INDEX < COUNT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not INDEX/COUNT (e.g. 0/4)"))?;
        Self::new(index, count, text)
    }

    fn new(index: &str, count: &str, shown: &str) -> Result<Self, String> {
        let number = |text: &str, what: &str| {
            text.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{shown}`: the {what} `{text}` is not a whole number"))
        };
        let (index, count) = (number(index, "index")?, number(count, "count")?);
        if count == 0 || index >= count {
            return Err(format!(
                "`{shown}`: the index must be below the count (0 <= INDEX < COUNT)"
            ));
        }
        Ok(Self { index, count })
    }

    /// The shard of this run from the flags and the environment; `None` = every table.
    pub fn resolve(
        flag: Option<&str>,
        count_flag: Option<u64>,
        env: &Env,
    ) -> Result<Option<Self>, String> {
        if let Some(flag) = flag {
            return Self::parse(flag).map(Some);
        }
        let get = |name: &str| env.get(name).map(String::as_str).filter(|v| !v.is_empty());
        if let Some(index) = get(JOB_COMPLETION_INDEX) {
            let Some(count) = count_flag else {
                return Err(format!(
                    "{JOB_COMPLETION_INDEX}={index} is set: pass --shard-count with the Job's `completions`"
                ));
            };
            let shown = format!("{JOB_COMPLETION_INDEX}={index}, --shard-count {count}");
            return Self::new(index, &count.to_string(), &shown).map(Some);
        }
        if let (Some(index), Some(count)) = (get(CLOUD_RUN_TASK_INDEX), get(CLOUD_RUN_TASK_COUNT)) {
            let shown = format!("{CLOUD_RUN_TASK_INDEX}={index}, {CLOUD_RUN_TASK_COUNT}={count}");
            return Self::new(index, count, &shown).map(Some);
        }
        if let Some(count) = count_flag {
            return Err(format!(
                "--shard-count {count} needs {JOB_COMPLETION_INDEX} (or use --shard INDEX/COUNT)"
            ));
        }
        Ok(None)
    }

    /// Whether the table `label` (`source.table`) belongs to this shard.
    pub fn owns(&self, label: &str) -> bool {
        shard_of(label, self.count) == self.index
    }
}

/// The shard of `label` among `count`.
pub fn shard_of(label: &str, count: u64) -> u64 {
    let digest = Sha256::digest(label.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        assert!(Shard::parse("4/4").unwrap_err().contains("below the count"));
        assert!(Shard::parse("0/0").is_err());
        assert!(
            Shard::parse("a/2")
                .unwrap_err()
                .contains("not a whole number")
        );
        assert!(Shard::parse("3").unwrap_err().contains("INDEX/COUNT"));
    }

    #[test]
    fn every_table_lands_in_exactly_one_shard_and_spreads() {
        let labels: Vec<String> = (0..1000).map(|i| format!("pg.public.t{i}")).collect();
        let count = 4;
        let mut sizes = [0usize; 4];
        for label in &labels {
            let owners: Vec<u64> = (0..count)
                .filter(|&index| Shard { index, count }.owns(label))
                .collect();
            assert_eq!(owners.len(), 1, "{label}");
            sizes[owners[0] as usize] += 1;
        }
        assert!(sizes.iter().all(|&n| (200..300).contains(&n)), "{sizes:?}");
        // Stable: the assignment is a function of the label only.
        assert_eq!(shard_of("pg.public.t0", 4), shard_of("pg.public.t0", 4));
        assert_ne!(
            (0..20)
                .map(|i| shard_of(&format!("x{i}"), 4))
                .collect::<Vec<_>>(),
            vec![0; 20]
        );
    }

    #[test]
    fn index_from_the_environment() {
        let none = Shard::resolve(None, None, &env(&[])).unwrap();
        assert_eq!(none, None);
        let k8s = env(&[(JOB_COMPLETION_INDEX, "3")]);
        assert_eq!(
            Shard::resolve(None, Some(5), &k8s).unwrap(),
            Some(Shard { index: 3, count: 5 })
        );
        assert!(
            Shard::resolve(None, None, &k8s)
                .unwrap_err()
                .contains("--shard-count")
        );
        let run = env(&[(CLOUD_RUN_TASK_INDEX, "1"), (CLOUD_RUN_TASK_COUNT, "2")]);
        assert_eq!(
            Shard::resolve(None, None, &run).unwrap(),
            Some(Shard { index: 1, count: 2 })
        );
        // The flag wins over the environment.
        assert_eq!(
            Shard::resolve(Some("0/3"), None, &run).unwrap(),
            Some(Shard { index: 0, count: 3 })
        );
        let bad = env(&[(CLOUD_RUN_TASK_INDEX, "2"), (CLOUD_RUN_TASK_COUNT, "2")]);
        assert!(Shard::resolve(None, None, &bad).is_err());
        assert!(Shard::resolve(None, Some(2), &env(&[])).is_err());
    }
}
