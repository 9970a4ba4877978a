//! Captures the git commit and the build date for `datasync --version` and the start log line.
//! Works without git (a source tarball): the values are then `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .filter(|text| !text.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // The commit's date keeps builds reproducible; without git, SOURCE_DATE_EPOCH or unknown.
    #[allow(
        clippy::disallowed_methods,
        reason = "a build script reads its environment"
    )]
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
    let date = git(&["log", "-1", "--format=%cI"])
        .or(epoch)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DATASYNC_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=DATASYNC_BUILD_TIME={date}");
    // A worktree's `.git` is a file; ask git where HEAD really is.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(logs) = git(&["rev-parse", "--git-path", "logs/HEAD"]) {
        println!("cargo:rerun-if-changed={logs}");
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}
