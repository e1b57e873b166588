//! The allocator's set-up, shared by the programs that hold many
//! connections.

/// Allocations of `threshold` bytes and more (connection read and write
/// buffers, snapshots) get pages of their own (glibc `M_MMAP_THRESHOLD`), so
/// memory a connection gives back is returned to the system instead of
/// staying pinned between the small, long-lived allocations of others;
/// 0 keeps the allocator's own (dynamic) threshold. Call before any thread
/// that allocates has started.
///
/// Measured: todo-server with 9,000 idle connections that each sent one
/// request, 4.7 KiB of resident memory per connection without it, about 3
/// KiB with it. todo-lb, whose connection task is 2.7 KiB, needs 2048: at
/// 4096 its tasks stayed on the heap between small long-lived allocations
/// and anonymous RSS grew by 70 % over 14 soak-like windows of new
/// connections while the live heap (valgrind massif) stayed flat to the
/// byte; at 2048 it stayed flat.
pub fn buffers_get_own_pages(threshold: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if threshold > 0 {
        // SAFETY: mallopt only changes an allocator parameter, before any
        // thread that allocates has started.
        unsafe {
            libc::mallopt(
                libc::M_MMAP_THRESHOLD,
                threshold.min(i32::MAX as usize) as i32,
            );
        }
    }
}
