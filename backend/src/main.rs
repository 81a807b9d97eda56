//! The `vsound` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    vsound::cli::run()
}
