use clap::Parser;

// Loading and compiling a large fleet makes millions of small allocations from several
// threads; mimalloc serves that pattern much faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc options by their number in `mimalloc.h` (`mi_option_e`); the Rust bindings
/// name only some of them.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // A million-device fleet holds about a gigabyte for a few seconds. Backing the heap
    // with 2 MiB pages, committed up front and never handed back early, halves the time
    // spent in page faults and TLB misses; the process is short-lived, so holding the
    // memory until exit costs nothing.
    // SAFETY: options are plain integers, set before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 1);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
    waveguide::cli::main(waveguide::cli::Cli::parse())
}
