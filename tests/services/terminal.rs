//! What a person sees on a terminal during `apply` (through a real pseudo-terminal): a bar per
//! table with whole-number rates, its phase, and, once finished, a bar that stopped at 100%
//! saying `done`.

use super::apply_e2e::World;

/// The terminal's text without the escape sequences indicatif draws with, one drawn line per
/// line.
fn plain(text: &str) -> String {
    regex::Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]")
        .unwrap()
        .replace_all(text, "")
        .replace('\r', "\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_bars_on_a_terminal_show_whole_rates_and_stop_done_at_100_percent() {
    let world = World::new("pty").await;
    world
        .sql(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text);
             INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 2500) g;
             CREATE TABLE tags (id bigint PRIMARY KEY, tag text);
             INSERT INTO tags SELECT g, 't' || g FROM generate_series(1, 40) g;
             ANALYZE items; ANALYZE tags;",
        )
        .await;
    let manifest = world.manifest("      items: {}\n      tags: {}\n");
    let output =
        crate::support::on_terminal(world.dir.path(), &format!("-c {manifest} apply"), "yes\n");
    let shown = plain(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(output.status.code(), Some(0), "{shown}");
    assert_eq!(world.count("items").await, 2500);
    let rate = regex::Regex::new(r"([0-9][0-9,.]*)/s").unwrap();
    for (table, rows) in [("items", "2,500"), ("tags", "40")] {
        let bar = shown
            .lines()
            .rfind(|line| line.contains(&format!(".{table}")) && line.contains(" rows"))
            .unwrap_or_else(|| panic!("no progress bar for `{table}`:\n{shown}"));
        assert!(bar.contains("100%"), "the finished bar is full: {bar}");
        assert!(bar.contains(&format!("{rows}/{rows}")), "{bar}");
        assert!(bar.trim_end().ends_with("done"), "the bar ends done: {bar}");
        let rate = rate
            .captures(bar)
            .unwrap_or_else(|| panic!("no rate on the bar: {bar}"))[1]
            .to_string();
        assert!(!rate.contains('.'), "the rate is a whole number: {bar}");
    }
}
