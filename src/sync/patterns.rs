//! Table patterns (`"*"`, `"sales.*"`, `"order_*"`), expanded against each source's catalog at
//! plan time, and `--table` selection by name or pattern with a "did you mean". Pure: the
//! catalogs are read by [`super::expand_patterns`].

use std::collections::{HashMap, HashSet};

use crate::manifest::{Manifest, TableSpec};
use crate::source::CatalogEntry;

/// A `*`/`?` glob over a whole name (case-sensitive, as the catalogs are).
pub fn glob(pattern: &str) -> regex::Regex {
    let mut expression = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => expression.push_str(".*"),
            '?' => expression.push('.'),
            other => expression.push_str(&regex::escape(&other.to_string())),
        }
    }
    expression.push('$');
    regex::Regex::new(&expression).expect("an escaped glob is a valid regex")
}

/// Whether `entry` matches the pattern spec's qualifier and name globs. A pattern without a
/// qualifier (MySQL, SQLite) matches the source's default database.
fn matches(pattern: &TableSpec, entry: &CatalogEntry) -> bool {
    let qualifier = match (&pattern.qualifier, &entry.qualifier) {
        (Some(glob_text), Some(qualifier)) => glob(glob_text).is_match(qualifier),
        (Some(_), None) => false,
        (None, _) => true,
    };
    qualifier && glob(&pattern.name).is_match(&entry.name)
}

/// The key of a matched table as an explicit entry would spell it: the pattern's form
/// (`schema.table` when the pattern is qualified).
fn key_of(pattern: &TableSpec, entry: &CatalogEntry) -> String {
    if pattern.key.contains('.') {
        entry.label()
    } else {
        entry.name.clone()
    }
}

/// The tables the manifest's patterns add, in pattern then catalog order: every catalog entry
/// of the pattern's source that matches, is not excluded (the source's `exclude`), is not an
/// explicit entry (those override patterns) and was not matched by an earlier pattern. Each
/// takes its pattern's settings; its target is the key with `.` as `__`.
pub fn expand(
    manifest: &Manifest,
    catalogs: &HashMap<String, Vec<CatalogEntry>>,
) -> Vec<TableSpec> {
    // A custom SQL entry is named like its target, not like a source table: it takes no
    // catalog entry (but its target, like every explicit entry's, is not written twice).
    let targets: HashSet<&str> = manifest
        .tables
        .iter()
        .map(|table| table.target.as_str())
        .collect();
    let mut taken: HashSet<(String, Option<String>, String)> = manifest
        .tables
        .iter()
        .filter(|table| table.query.is_none())
        .map(|table| {
            (
                table.source.clone(),
                table.qualifier.clone(),
                table.name.clone(),
            )
        })
        .collect();
    let mut out = Vec::new();
    for pattern in &manifest.patterns {
        let Some(entries) = catalogs.get(&pattern.source) else {
            continue;
        };
        let exclude: Vec<regex::Regex> = manifest
            .exclude
            .get(&pattern.source)
            .into_iter()
            .flatten()
            .map(|text| glob(text))
            .collect();
        for entry in entries.iter().filter(|entry| matches(pattern, entry)) {
            let label = entry.label();
            if exclude
                .iter()
                .any(|glob| glob.is_match(&label) || glob.is_match(&entry.name))
            {
                continue;
            }
            let qualifier = pattern.qualifier.as_ref().and(entry.qualifier.clone());
            if !taken.insert((
                pattern.source.clone(),
                qualifier.clone(),
                entry.name.clone(),
            )) {
                continue;
            }
            let key = key_of(pattern, entry);
            if targets.contains(key.replace('.', "__").as_str()) {
                continue;
            }
            let mut spec = pattern.clone();
            spec.target = key.replace('.', "__");
            spec.key = key;
            spec.qualifier = qualifier;
            spec.name = entry.name.clone();
            out.push(spec);
        }
    }
    out
}

/// The closest of `known` to `name` (normalized Levenshtein ≥ 0.7: a typo, not a shared
/// `source.` prefix), for "did you mean".
pub fn did_you_mean<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|candidate| (strsim::normalized_levenshtein(name, candidate), candidate))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate.as_str())
}

/// `--table` names or patterns that select nothing among `known` labels.
pub fn unmatched<'a>(selected: &'a [String], known: &[String]) -> Vec<&'a String> {
    selected
        .iter()
        .filter(|name| {
            let glob = glob(name);
            !known.iter().any(|label| glob.is_match(label))
        })
        .collect()
}

/// Whether `label` is selected by one of the names or patterns.
pub fn selected(label: &str, selected: &[String]) -> bool {
    selected.iter().any(|name| glob(name).is_match(label))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(yaml: &str) -> Manifest {
        let input = crate::manifest::ManifestInput {
            name: None,
            text: Some((yaml.to_string(), crate::manifest::Format::Yaml)),
            env: crate::manifest::Env::new(),
        };
        crate::manifest::load(&input)
            .unwrap_or_else(|failure| panic!("{:?}", failure.problems))
            .manifest
    }

    fn entry(qualifier: Option<&str>, name: &str) -> CatalogEntry {
        CatalogEntry {
            qualifier: qualifier.map(str::to_string),
            name: name.into(),
            view: false,
        }
    }

    const PG: &str = "bigquery: {project: my-project, dataset: d}\nsources:\n  pg:\n    type: postgres\n    url: postgres://u@h/db\n    exclude: [\"*_tmp\", \"sales.audit\"]\n    tables:\n";

    fn catalog() -> HashMap<String, Vec<CatalogEntry>> {
        HashMap::from([(
            "pg".to_string(),
            vec![
                entry(Some("public"), "order_items"),
                entry(Some("public"), "orders"),
                entry(Some("public"), "order_tmp"),
                entry(Some("public"), "users"),
                entry(Some("sales"), "audit"),
                entry(Some("sales"), "invoices"),
            ],
        )])
    }

    fn labels(specs: &[TableSpec]) -> Vec<(String, String, String)> {
        specs
            .iter()
            .map(|spec| {
                (
                    spec.label(),
                    spec.target.clone(),
                    format!("{:?}", spec.mode),
                )
            })
            .collect()
    }

    #[test]
    fn patterns_expand_with_exclusions_and_explicit_entries_win() {
        let manifest = manifest(&format!(
            "{PG}      \"order_*\":\n        mode: append\n      orders:\n        mode: merge\n        primary_key: [id]\n        cursor: at\n      \"sales.*\": {{}}\n      \"*\": {{}}\n"
        ));
        assert_eq!(manifest.patterns.len(), 3);
        let added = expand(&manifest, &catalog());
        let got = labels(&added);
        let want = [
            ("pg.order_items", "order_items", "Append"),
            ("pg.sales.invoices", "sales__invoices", "Replace"),
            ("pg.users", "users", "Replace"),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, want);
        // `orders` stays the explicit merge entry; `order_tmp` and `sales.audit` are excluded;
        // `*` (the default schema) never reaches `sales`.
        assert_eq!(manifest.tables.len(), 1);
        assert_eq!(added[1].qualifier.as_deref(), Some("sales"));
    }

    #[test]
    fn a_query_entry_takes_no_catalog_table_but_keeps_its_target() {
        let manifest = manifest(&format!(
            "{PG}      orders:\n        query: SELECT 1 AS id\n      users:\n        query: SELECT 2 AS id\n        target: people\n      \"*\": {{}}\n"
        ));
        let got: Vec<String> = expand(&manifest, &catalog())
            .iter()
            .map(TableSpec::label)
            .collect();
        // `orders` is the query's target: the table `orders` is not written over it; the
        // query `users` (target `people`) leaves the table `users` to the pattern.
        assert_eq!(got, ["pg.order_items", "pg.users"]);
        assert_eq!(manifest.tables[0].label(), "pg.query:orders");
    }

    #[test]
    fn a_pattern_cannot_set_one_target() {
        let input = crate::manifest::ManifestInput {
            name: None,
            text: Some((
                format!("{PG}      \"*\":\n        target: x\n"),
                crate::manifest::Format::Yaml,
            )),
            env: crate::manifest::Env::new(),
        };
        let failure = crate::manifest::load(&input).unwrap_err();
        assert!(
            failure.problems[0]
                .message
                .contains("cannot set one `target`"),
            "{:?}",
            failure.problems
        );
    }

    #[test]
    fn selection_by_pattern_and_suggestions() {
        let known: Vec<String> = ["shop.orders", "shop.order_items", "crm.users"]
            .map(String::from)
            .to_vec();
        assert!(selected("shop.order_items", &["shop.order_*".into()]));
        assert!(!selected("crm.users", &["shop.*".into()]));
        let asked = ["shop.*".to_string(), "shop.ordrs".to_string()];
        assert_eq!(unmatched(&asked, &known), [&asked[1]]);
        assert_eq!(did_you_mean("shop.ordrs", &known), Some("shop.orders"));
        assert_eq!(did_you_mean("zzz", &known), None);
        // A shared `source.` prefix alone is no suggestion.
        assert_eq!(did_you_mean("crm.nope", &["crm.users".to_string()]), None);
        assert!(glob("a.b").is_match("a.b") && !glob("a.b").is_match("axb"));
    }
}
