use clap::Parser;

// Loading and compiling a large fleet makes millions of small allocations from several
// threads; mimalloc serves that pattern much faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    waveguide::cli::main(waveguide::cli::Cli::parse())
}
