//! The `agentnexus` binary: `serve` runs the runtime; the other commands are a client of a
//! running server.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
