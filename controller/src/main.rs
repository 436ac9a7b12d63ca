use clap::Parser;

fn main() -> std::process::ExitCode {
    waveguide::cli::main(waveguide::cli::Cli::parse())
}
