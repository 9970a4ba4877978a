//! `datasync runs` offline: its help (with examples), its argument checks, and the generated
//! completions and man page that pick it up. Against BigQuery it is tested end to end on the
//! emulator (`tests/services/ledger_e2e.rs`).

use assert_cmd::Command;

fn datasync(dir: &std::path::Path) -> Command {
    let mut command = Command::cargo_bin("datasync").unwrap();
    command
        .current_dir(dir)
        .env_clear()
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .env("GCE_METADATA_HOST", "127.0.0.1:9");
    command
}

#[test]
fn runs_help_shows_its_options_and_examples() {
    let dir = tempfile::tempdir().unwrap();
    let output = datasync(dir.path())
        .args(["runs", "--help"])
        .assert()
        .success()
        .get_output()
        .clone();
    insta::assert_snapshot!(String::from_utf8(output.stdout).unwrap());
}

#[test]
fn runs_checks_its_arguments_and_needs_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let output = datasync(dir.path())
        .args(["runs", "--limit", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--limit"), "{stderr}");
    let output = datasync(dir.path()).arg("runs").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no manifest"), "{stderr}");
}

#[test]
fn completions_and_the_man_page_know_runs() {
    let dir = tempfile::tempdir().unwrap();
    let bash = datasync(dir.path())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let bash = String::from_utf8_lossy(&bash.stdout);
    assert!(
        bash.contains("datasync__subcmd__runs"),
        "no `runs` in the bash completions"
    );
    assert!(bash.contains("--run"));
    let man = datasync(dir.path()).arg("man").output().unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains("runs"));
}
