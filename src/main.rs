use std::process::ExitCode;

fn main() -> ExitCode {
    datasync::cli::main()
}
