//! Custom SQL sources (`query:`) over a real SQLite file and the in-memory warehouse: typed from
//! the query's result metadata, read as a derived table with the bound as a parameter, planned
//! and rendered as `source.query:name`, and refused with the entry's name when it is wrong.

use std::sync::Arc;

use datasync::plan::{Bound, TableAction};
use datasync::sync::DryRun;
use datasync::warehouse::FakeWarehouse;
use serde_json::Value;

use crate::apply_fake::{executor, ids, manifest, plan, sqlite};

const SHOP: &str = "
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, total DECIMAL(12,2) NOT NULL, at DATETIME NOT NULL);
CREATE TABLE items (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, sku TEXT);
INSERT INTO customers VALUES (1, 'Ada'), (2, 'Bob');
INSERT INTO orders VALUES (10, 1, 12.50, '2024-06-01 10:00:00'), (11, 2, 0.99, '2024-06-01 11:30:00'), (12, 1, 1000.00, '2024-06-02 09:15:00');
INSERT INTO items VALUES (1, 10, 'a'), (2, 10, 'b'), (3, 11, 'c'), (4, 12, 'd');
";

const DAILY: &str = "      daily_orders:\n        query: |\n          SELECT o.id, c.name AS customer, o.total, o.at, count(i.id) AS items\n          FROM orders o\n          JOIN customers c ON c.id = o.customer_id\n          JOIN items i ON i.order_id = o.id\n          GROUP BY o.id, c.name, o.total, o.at -- one row per order\n";

fn fields(plan: &datasync::plan::TablePlan) -> Vec<String> {
    plan.desired
        .as_ref()
        .unwrap()
        .fields
        .iter()
        .map(|field| field.diff_line())
        .collect()
}

#[tokio::test]
async fn a_join_aggregate_query_lands_typed_like_table_columns() {
    let setup = sqlite(SHOP).await;
    let manifest = manifest(&setup.path, DAILY);
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let planned = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let table = &planned.tables[0];
    assert_eq!(table.label, "lite.query:daily_orders");
    assert_eq!(table.target, "daily_orders");
    assert_eq!(table.action, TableAction::Create, "{:?}", table.errors);
    // Declared types of the columns read from tables (DECIMAL(12,2) as a table column maps),
    // sqlx's inferred INTEGER for count(*); all NULLABLE (a query proves nothing about NULLs).
    assert_eq!(
        fields(table),
        [
            "id INT64 NULLABLE",
            "customer STRING NULLABLE",
            "total NUMERIC(12, 2) NULLABLE",
            "at DATETIME NULLABLE",
            "items INT64 NULLABLE",
        ]
    );
    assert!(table.warnings.is_empty(), "{:?}", table.warnings);
    assert_eq!(table.estimated_rows, Some(3), "counted through the wrapper");
    let source = table.source_table.as_ref().unwrap();
    assert!(
        source
            .query
            .as_deref()
            .unwrap()
            .ends_with("-- one row per order")
    );
    let text = datasync::plan::render::text(&planned);
    assert!(text.contains("lite.query:daily_orders"), "{text}");
    let markdown = datasync::plan::render::markdown(&planned);
    assert!(markdown.contains("lite.query:daily_orders"), "{markdown}");
    let json = serde_json::to_value(&planned).unwrap();
    assert_eq!(json["tables"][0]["label"], "lite.query:daily_orders");
    assert!(
        json["tables"][0]["spec"]["query"]
            .as_str()
            .unwrap()
            .starts_with("SELECT o.id")
    );

    let report = executor.run(&planned).await;
    assert!(report.succeeded(), "{}", report.text());
    let mut rows = warehouse.rows("daily_orders").unwrap();
    rows.sort_by_key(|row| row["id"].to_string());
    let row = |at: usize| -> Vec<Value> {
        ["id", "customer", "total", "at", "items"]
            .iter()
            .map(|column| rows[at][*column].clone())
            .collect()
    };
    assert_eq!(rows.len(), 3);
    assert_eq!(
        serde_json::to_string(&row(0)).unwrap(),
        r#"["10","Ada","12.5","2024-06-01T10:00:00.000000","2"]"#
    );
    assert_eq!(
        serde_json::to_string(&row(2)).unwrap(),
        r#"["12","Ada","1000","2024-06-02T09:15:00.000000","1"]"#
    );
}

#[tokio::test]
async fn an_incremental_query_run_twice_loads_only_the_new_rows() {
    let setup = sqlite(SHOP).await;
    let manifest = manifest(
        &setup.path,
        "      recent_orders:\n        query: \"SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id\"\n        mode: incremental\n        cursor: id\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let mut executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let first = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert!(matches!(
        &first.tables[0].extract().unwrap().bound,
        Bound::AfterTargetMax { source_column, inclusive: false, .. } if source_column == "id"
    ));
    // A query's cursor is NULLABLE (unknown), which is no reason to warn on every plan.
    assert!(
        first.tables[0].warnings.is_empty(),
        "{:?}",
        first.tables[0].warnings
    );
    assert!(executor.run(&first).await.succeeded());
    assert_eq!(ids(&warehouse, "recent_orders"), ["10", "11", "12"]);

    sqlx::raw_sql(
        "INSERT INTO orders VALUES (13, 2, 5.00, '2024-06-03 08:00:00'), (14, 1, 7.25, '2024-06-03 09:00:00');",
    )
    .execute(&setup.pool)
    .await
    .unwrap();
    let second = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(
        second.tables[0].estimated_rows,
        Some(2),
        "the plan counts the query's rows past the maximum"
    );
    assert!(
        second.tables[0].warnings.is_empty(),
        "the temporary view is made again on the same connection: {:?}",
        second.tables[0].warnings
    );
    executor.run_id = "run2".into();
    let report = executor.run(&second).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(report.tables[0].rows_extracted, 2, "only the new rows");
    assert_eq!(
        ids(&warehouse, "recent_orders"),
        ["10", "11", "12", "13", "14"]
    );
}

#[tokio::test]
async fn a_broken_query_is_a_plan_error_naming_its_entry() {
    let setup = sqlite(SHOP).await;
    let manifest = manifest(
        &setup.path,
        "      broken:\n        query: SELECT id FORM orders\n      unnamed:\n        query: SELECT id, count(*) FROM orders GROUP BY id\n      twice:\n        query: SELECT o.id, i.id FROM orders o JOIN items i ON i.order_id = o.id\n      fine:\n        query: SELECT id FROM orders\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let planned = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    let errors: Vec<(String, TableAction, String)> = planned
        .tables
        .iter()
        .map(|table| {
            (
                table.label.clone(),
                table.action,
                table
                    .errors
                    .iter()
                    .map(|error| error.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
        .collect();
    insta::assert_yaml_snapshot!(errors);
    assert_eq!(planned.tables[3].action, TableAction::Create);
}

#[tokio::test]
async fn editing_the_query_makes_a_saved_plan_stale() {
    let setup = sqlite(SHOP).await;
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let entry = |query: &str| format!("      daily:\n        query: {query}\n");
    let before = manifest(&setup.path, &entry("SELECT id, total FROM orders"));
    let executor = executor(&before, Arc::clone(&warehouse), DryRun::No).await;
    let saved = plan(&before, &executor.sources["lite"], &warehouse).await;
    let again = plan(&before, &executor.sources["lite"], &warehouse).await;
    assert!(datasync::plan::stale::check_fresh(&saved, &again).is_ok());
    let after = manifest(
        &setup.path,
        &entry("SELECT id, total FROM orders WHERE total > 1"),
    );
    let fresh = plan(&after, &executor.sources["lite"], &warehouse).await;
    assert_eq!(
        datasync::plan::stale::check_fresh(&saved, &fresh)
            .unwrap_err()
            .to_string(),
        "it is stale:\n  - lite.query:daily: its manifest entry changed\n  - lite.query:daily: the source table changed"
    );
}

#[tokio::test]
async fn column_options_name_the_query_in_their_errors() {
    let setup = sqlite(SHOP).await;
    let manifest = manifest(
        &setup.path,
        "      daily:\n        query: SELECT id, total FROM orders\n        columns: [id, totl]\n",
    );
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let executor = executor(&manifest, Arc::clone(&warehouse), DryRun::No).await;
    let planned = plan(&manifest, &executor.sources["lite"], &warehouse).await;
    assert_eq!(
        planned.tables[0].errors[0].message,
        "`columns` names `totl`, which table `query:daily` does not have (available: id, total)"
    );
}
