//! The `scopegate` binary: everything lives in the library; see `scopegate::cli`.

fn main() -> std::process::ExitCode {
    scopegate::cli::main()
}
