//! `shitud`: see `shitud --help`. All the work is in the `shitu_edge` library.

fn main() -> std::process::ExitCode {
    shitu_edge::cli::main()
}
