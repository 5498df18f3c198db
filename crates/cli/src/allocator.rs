//! The process's allocator: the C library's `malloc` for every subcommand but `webhook-server`, which
//! switches to mimalloc at the start of `main`.
//!
//! Why per subcommand: the webhook allocates and frees a few hundred small blocks per admission on every
//! worker thread. musl's allocator (the shipped static binary) serves that with a global lock and maps and
//! unmaps 8–28 KiB groups per request (measured: 3.7 `mmap`/`munmap` pairs and 7 futex calls per review),
//! and the operator's single glibc arena serializes the threads; either halves the webhook's throughput
//! per CPU second. The operator, on the other hand, keeps large caches and measured far more resident
//! memory with mimalloc (README "Memory at scale"), so it keeps `malloc`.
//!
//! Blocks allocated before the switch (before `main`, or by argument parsing) stay with `malloc`: every
//! free and reallocation asks mimalloc whether it owns the block (`mi_is_in_heap_region`, a page-map
//! lookup) and hands foreign blocks back to `malloc`.

#![allow(unsafe_code)] // a `GlobalAlloc` is unsafe by definition; each call keeps its caller's contract

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

/// Set once, before the process starts its threads: new blocks come from mimalloc.
static MIMALLOC: AtomicBool = AtomicBool::new(false);

/// Makes every later allocation of the process come from mimalloc. Call it first in `main`, before
/// threads start (it is still correct later, only less effective).
pub fn use_mimalloc() {
    // Commit arena memory as it is used instead of up front: measured with `inject_bench`, the webhook
    // idles at 15.7 MiB RSS instead of 28.3 MiB and peaks at 19.7 instead of 29.6 MiB, at the same speed.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    MIMALLOC.store(true, Ordering::Release);
}

/// `mi_option_arena_eager_commit` of `mimalloc.h` (v2 and v3), which the Rust bindings do not name.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// `malloc` until [`use_mimalloc`], then mimalloc; blocks are freed by whichever allocator made them.
pub struct ProcessAllocator;

/// Whether `ptr` was allocated by mimalloc. Without the switch mimalloc never allocated anything, so the
/// lookup is skipped.
fn from_mimalloc(ptr: *mut u8) -> bool {
    MIMALLOC.load(Ordering::Relaxed)
        && unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast_const().cast()) }
}

// SAFETY: every method forwards to `System` or `MiMalloc` with the caller's arguments, and a block is
// always freed or resized by the allocator that made it (`from_mimalloc`).
unsafe impl GlobalAlloc for ProcessAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MIMALLOC.load(Ordering::Relaxed) {
            unsafe { MiMalloc.alloc(layout) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if MIMALLOC.load(Ordering::Relaxed) {
            unsafe { MiMalloc.alloc_zeroed(layout) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if from_mimalloc(ptr) {
            unsafe { MiMalloc.dealloc(ptr, layout) }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if from_mimalloc(ptr) {
            return unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        }
        // A `malloc` block stays with `malloc` when it grows: simple, and such blocks predate the switch
        // (parsed arguments, the environment), so they are few.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_from_before_the_switch_are_freed_and_resized_by_malloc() {
        let allocator = ProcessAllocator;
        let layout = Layout::from_size_align(64, 8).unwrap();
        // The test binary has this allocator as its global one too: the switch below applies to the
        // whole test process, which must go on working.
        // The option set by `use_mimalloc` is the one meant: its default (2, "on overcommit systems").
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) },
            2
        );
        let before = unsafe { allocator.alloc(layout) };
        assert!(!before.is_null());
        assert!(!unsafe { libmimalloc_sys::mi_is_in_heap_region(before.cast_const().cast()) });
        use_mimalloc();
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) },
            0
        );
        let after = unsafe { allocator.alloc(layout) };
        assert!(unsafe { libmimalloc_sys::mi_is_in_heap_region(after.cast_const().cast()) });
        unsafe {
            std::ptr::write_bytes(before, 7, 64);
            let grown = allocator.realloc(before, layout, 4096);
            assert_eq!(*grown.add(63), 7);
            allocator.dealloc(grown, Layout::from_size_align(4096, 8).unwrap());
            let grown = allocator.realloc(after, layout, 4096);
            assert!(libmimalloc_sys::mi_is_in_heap_region(grown.cast_const().cast()));
            allocator.dealloc(grown, Layout::from_size_align(4096, 8).unwrap());
        }
    }
}
