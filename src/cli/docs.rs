//! `datasync completions SHELL` and `datasync man`: generated from the clap definitions, so they
//! never drift from the real options.

use clap::CommandFactory;

use super::Cli;

/// The completion script for `shell` (bash, zsh, fish, powershell, elvish).
pub(super) fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "datasync", &mut out);
    out
}

/// The man page (roff), `datasync(1)`: every command and option, with the examples.
pub(super) fn man_page() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    Ok(out)
}
