//! Keeps the process's resident memory close to what it actually uses —
//! docs/architecture.md#invariant-5, "bounded memory" (the target is 64 MiB peak RSS whatever the
//! backlog).
//!
//! glibc's allocator gives each thread that allocates its own arena (up to 8 per core), and
//! keeps memory freed in an arena for later use by that arena. The exporter's buffers are freed
//! on other threads than the ones that allocate them (lines made by the stream task are freed by
//! the WAL writer, upload chunks by the HTTP client) and its blocking pool changes threads, so
//! free memory piles up in many arenas: measured on a 100,000-event run, 104–118 MiB peak RSS
//! for about 40 MiB in use. Two settings, made once before any thread starts, bring it back:
//!
//! - at most [`ARENAS`] arenas;
//! - a fixed mmap threshold ([`MMAP_THRESHOLD`]): glibc otherwise raises it (up to 32 MiB) each
//!   time a large block is freed, after which large buffers come from arenas and stay there.
//!   With it fixed, every buffer of 256 KiB or more is its own mapping, returned when freed.
//!
//! And [`release_free_memory`] hands free arena pages back to the system; the pipeline calls it
//! after each seal and each upload (a few times per file, so its cost, a walk of the free lists,
//! does not matter).
//!
//! Other C libraries (musl) are left alone: these are glibc's knobs.
//!
//! mimalloc as the global allocator was measured too (`cargo bench --bench e2e`): 10 % less CPU
//! per event, but 200–255 MiB peak RSS instead of 52–74 MiB, so glibc stays.

/// Most arenas glibc may create.
pub const ARENAS: i32 = 2;
/// Size from which a block gets a mapping of its own.
pub const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Applies the settings. Call it first thing in `main`, before any other thread exists.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
    // exists, and a refused setting (return 0) leaves glibc's default in place.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns the free pages of every arena to the system (glibc's `malloc_trim`). Costs a walk of
/// the allocator's free lists: for occasional calls, after large buffers were freed.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases memory that is free.
    unsafe {
        libc::malloc_trim(0);
    }
}
