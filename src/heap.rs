//! The device binary's allocator on musl: the C library's `malloc` with a small cache
//! of freed mid-sized blocks in front of it.
//!
//! musl's malloc (mallocng) gives each block between a few KiB and 128 KiB a mapping
//! of its own once no group of its size class has room, and unmaps it when it is
//! freed. A tunnel's bulk transfer allocates exactly such blocks at a steady rate:
//! quinn copies every batch of received datagrams (up to 64 KiB with GRO) into a new
//! buffer, and reads from an origin fill 16 KiB buffers. Under a 100 MiB upload the
//! connector made 1 800 `mmap`/`munmap` pairs, and the page faults, page clearing and
//! TLB shootdowns that come with them were a fifth of its CPU time.
//!
//! [`BlockCache`] rounds requests in (`SMALL`, `LARGEST`] up to 1.5 or 2 times a power
//! of two and keeps freed blocks of each size for the next request of that size, up
//! to `CACHE_BYTES` in all; a miss hands back about as many cached bytes of sizes
//! not reused lately, so the cache does not hold one size while the process grows for
//! another. Everything else goes to the system allocator untouched. The `mailslot`
//! binary built for musl installs [`Global`] (the cache [`HEAP`]) as its allocator, and
//! the connector calls [`BlockCache::trim_if_quiet`] now and then so that sizes a
//! tunnel no longer uses are handed back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::Mutex;

/// Requests up to this size go to the system allocator: its size classes serve them
/// from shared groups without a mapping each.
const SMALL: usize = 1024;
/// log2 of `SMALL`.
const SMALL_SHIFT: u32 = 10;
/// log2 of the cached sizes per doubling above `SMALL`: two, 1.5 and 2 times a power
/// of two (1 536, 2 048, 3 072, 4 096, ... 131 072 bytes), so a block wastes at most a
/// third of itself. Whole powers of two wasted up to half (an HTTP/2 DATA frame of
/// 16 KiB and its 9-byte header took 32 KiB). Four steps per doubling wasted less but
/// spread one transfer's received-datagram blocks over more sizes, which then evicted
/// each other (a 100 MiB upload mapped 308 blocks again).
const STEP_BITS: u32 = 1;
/// Doublings covered: from 1 KiB to 128 KiB.
const DOUBLINGS: u32 = 7;
/// Cached block sizes.
const CLASSES: usize = (DOUBLINGS << STEP_BITS) as usize;
/// The largest cached block; larger requests are the system's (musl maps them).
const LARGEST: usize = 1 << (SMALL_SHIFT + DOUBLINGS);
/// Bytes the cache may hold, all classes together: the connection receive window's
/// worth (1 MiB) of received-datagram blocks. With power-of-two sizes, 768 KiB left a
/// 100 MiB upload mapping 686 blocks and 1 MiB none; with the sizes and hand-back
/// rules of this file, 252 (1 800 without the cache) and none over HTTP/2.
pub(crate) const CACHE_BYTES: usize = 1024 * 1024;
/// Blocks per class at most.
const SLOTS: usize = 64;
/// Alignment every cached block has: `class_layout` asks the system for it.
const ALIGN: usize = 16;

/// The cache behind [`Global`]; unused where another allocator is installed.
pub(crate) static HEAP: BlockCache = BlockCache::new();

/// The global allocator of the musl build: [`HEAP`].
pub struct Global;

// SAFETY: forwards to `HEAP`, whose contract is the same.
unsafe impl GlobalAlloc for Global {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's promises about `layout` are passed on unchanged.
        unsafe { HEAP.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { HEAP.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: `block` came from this allocator, that is from `HEAP`, with `layout`.
        unsafe { HEAP.dealloc(block, layout) }
    }
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's, unchanged.
        unsafe { HEAP.realloc(block, layout, new_size) }
    }
}

/// See the module documentation.
pub(crate) struct BlockCache {
    bins: Mutex<Bins>,
}

struct Bins {
    free: [Bin; CLASSES],
    /// Bytes held in all bins.
    bytes: usize,
}

struct Bin {
    blocks: [*mut u8; SLOTS],
    len: usize,
    /// A block was reused from this bin since the last miss.
    hit: bool,
    /// A block was reused from this bin since the last `trim_if_quiet`.
    used: bool,
}

// SAFETY: the raw pointers are blocks owned by the cache, touched only under the lock.
unsafe impl Send for Bins {}

impl Bins {
    /// Takes the last cached block of `class` out of the cache.
    fn pop(&mut self, class: usize) -> Option<*mut u8> {
        let bin = self.free.get_mut(class)?;
        let len = bin.len.checked_sub(1)?;
        let block = *bin.blocks.get(len)?;
        bin.len = len;
        self.bytes -= class_size(class);
        Some(block)
    }
}

impl BlockCache {
    pub(crate) const fn new() -> BlockCache {
        const EMPTY: Bin = Bin {
            blocks: [ptr::null_mut(); SLOTS],
            len: 0,
            hit: false,
            used: false,
        };
        BlockCache {
            bins: Mutex::new(Bins {
                free: [EMPTY; CLASSES],
                bytes: 0,
            }),
        }
    }

    /// Returns every cached block to the system allocator.
    #[cfg(test)]
    pub(crate) fn trim(&self) {
        self.release(|_| true);
    }

    /// Returns the cached blocks of every size not reused since the last call: those
    /// are no longer part of a steady flow. True if it returned any.
    pub(crate) fn trim_if_quiet(&self) -> bool {
        self.release(|bin| !std::mem::take(&mut bin.used))
    }

    /// Frees the blocks of the bins `pick` chooses; true if there were any. The
    /// frees happen under the lock: the connector allocates from one thread, so
    /// nobody waits on it.
    fn release(&self, mut pick: impl FnMut(&mut Bin) -> bool) -> bool {
        let mut bins = self.lock();
        let mut any = false;
        for class in 0..CLASSES {
            if !bins.free.get_mut(class).is_some_and(&mut pick) {
                continue;
            }
            while let Some(block) = bins.pop(class) {
                // SAFETY: cached blocks came from `System` with this class's layout.
                unsafe { System.dealloc(block, class_layout(class)) };
                any = true;
            }
        }
        any
    }

    /// Bytes the cache holds now.
    #[cfg(test)]
    pub(crate) fn cached_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bins> {
        // Nothing under the lock can panic; a poisoned lock still holds valid bins.
        self.bins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A cached block of `class`, or null. A miss first hands back about as many
    /// cached bytes of other sizes as the caller is about to take from the system, from
    /// sizes not reused since the last miss: the cache does not sit on blocks of one
    /// size while the process grows for another, and sizes in use side by side (the
    /// received-datagram blocks of one transfer span two) do not evict each other.
    fn take(&self, class: usize) -> *mut u8 {
        let mut bins = self.lock();
        if let Some(block) = bins.pop(class) {
            if let Some(bin) = bins.free.get_mut(class) {
                bin.hit = true;
                bin.used = true;
            }
            return block;
        }
        let mut owed = class_size(class);
        for other in (0..CLASSES).rev().filter(|&c| c != class) {
            if bins
                .free
                .get_mut(other)
                .is_none_or(|bin| std::mem::take(&mut bin.hit))
            {
                continue;
            }
            while owed > 0 {
                let Some(block) = bins.pop(other) else { break };
                // SAFETY: cached blocks came from `System` with their class's layout.
                unsafe { System.dealloc(block, class_layout(other)) };
                owed = owed.saturating_sub(class_size(other));
            }
        }
        ptr::null_mut()
    }

    /// Keeps `block` if there is room; false if the caller must free it.
    fn keep(&self, class: usize, block: *mut u8) -> bool {
        let size = class_size(class);
        let mut bins = self.lock();
        if bins.bytes + size > CACHE_BYTES {
            return false;
        }
        let Some(bin) = bins.free.get_mut(class) else {
            return false;
        };
        // A full bin has no free slot: `get_mut(SLOTS)` is `None`.
        let Some(slot) = bin.blocks.get_mut(bin.len) else {
            return false;
        };
        *slot = block;
        bin.len += 1;
        bins.bytes += size;
        true
    }
}

impl Default for BlockCache {
    fn default() -> Self {
        BlockCache::new()
    }
}

/// The cache class a request falls in, if any.
fn class_of(size: usize, align: usize) -> Option<usize> {
    if size <= SMALL || size > LARGEST || align > ALIGN {
        return None;
    }
    // 2^shift <= size - 1 < 2^(shift + 1), and the STEP_BITS bits below the top one
    // pick the step: the class is the smallest (steps + 1 ..= 2 * steps) *
    // 2^(shift - STEP_BITS) that holds `size`.
    let s = size - 1;
    let shift = usize::BITS - 1 - s.leading_zeros();
    let step = (s >> (shift - STEP_BITS)) & ((1 << STEP_BITS) - 1);
    Some((((shift - SMALL_SHIFT) << STEP_BITS) as usize) + step)
}

fn class_size(class: usize) -> usize {
    let steps = 1usize << STEP_BITS;
    (steps + 1 + class % steps) << (class / steps + (SMALL_SHIFT - STEP_BITS) as usize)
}

fn class_layout(class: usize) -> Layout {
    // SAFETY: a size up to 128 KiB, a multiple of 256, with alignment 16 is valid.
    unsafe { Layout::from_size_align_unchecked(class_size(class), ALIGN) }
}

// SAFETY: every block handed out is either the system allocator's for the caller's
// layout or a whole cached block at least as large and as aligned; a block is in at
// most one place (a bin or the caller) at a time.
unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout.size(), layout.align()) {
            // SAFETY: the caller's layout, unchanged.
            None => unsafe { System.alloc(layout) },
            Some(class) => {
                let block = self.take(class);
                if block.is_null() {
                    // SAFETY: a class layout has a non-zero size.
                    unsafe { System.alloc(class_layout(class)) }
                } else {
                    block
                }
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout.size(), layout.align()) {
            // SAFETY: the caller's layout, unchanged.
            None => unsafe { System.alloc_zeroed(layout) },
            Some(class) => {
                let block = self.take(class);
                if block.is_null() {
                    // SAFETY: a class layout has a non-zero size.
                    unsafe { System.alloc_zeroed(class_layout(class)) }
                } else {
                    // SAFETY: a cached block of the class holds at least `layout.size()`
                    // bytes and is no one else's.
                    unsafe { ptr::write_bytes(block, 0, layout.size()) };
                    block
                }
            }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class_of(layout.size(), layout.align()) {
            // SAFETY: a block outside the classes came from `System` with `layout`.
            None => unsafe { System.dealloc(block, layout) },
            Some(class) => {
                if !self.keep(class, block) {
                    // SAFETY: a block of a class came from `System` with the class's
                    // layout (`alloc` asks for the whole class).
                    unsafe { System.dealloc(block, class_layout(class)) };
                }
            }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = class_of(layout.size(), layout.align());
        let new = class_of(new_size, layout.align());
        match (old, new) {
            // SAFETY: a block outside the classes came from `System` with `layout`, and
            // stays outside them at `new_size`.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            (Some(a), Some(b)) if a == b => block,
            _ => {
                // SAFETY: the caller promises that `new_size`, rounded up to
                // `layout.align()`, does not overflow `isize`.
                let new_layout =
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: `realloc`'s callers promise a non-zero `new_size`.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: `block` holds `layout.size()` bytes, `moved` `new_size`;
                    // two live blocks do not overlap.
                    unsafe { ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size)) };
                    // SAFETY: `block` is the caller's, from this allocator with `layout`.
                    unsafe { self.dealloc(block, layout) };
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn classes_cover_only_mid_sized_requests() {
        assert_eq!(class_of(1024, 8), None);
        assert_eq!(class_of(1025, 8), Some(0));
        assert_eq!(class_size(0), 1536);
        assert_eq!(class_of(1536, 8), Some(0));
        assert_eq!(class_of(1537, 8), Some(1));
        assert_eq!(class_size(1), 2048);
        assert_eq!(class_of(2049, 8), Some(2));
        assert_eq!(class_size(2), 3072);
        // A 16 KiB HTTP/2 frame with its header: 24 KiB, not 32.
        assert_eq!(class_size(class_of(16_393, 8).unwrap()), 24 * 1024);
        // Received-datagram blocks of 48-64 KiB share one size.
        assert_eq!(class_of(49_153, 8), class_of(65_536, 8));
        assert_eq!(class_of(128 * 1024, 16), Some(CLASSES - 1));
        assert_eq!(class_size(CLASSES - 1), 128 * 1024);
        // Every size maps to the smallest class that holds it.
        for size in (SMALL + 1)..=LARGEST {
            let c = class_of(size, 8).unwrap();
            assert!(class_size(c) >= size, "{size}");
            assert!(c == 0 || class_size(c - 1) < size, "{size}");
            assert!(
                class_size(c) * 2 < size * 3,
                "{size} wastes more than a third"
            );
        }
        assert_eq!(class_of(128 * 1024 + 1, 8), None);
        assert_eq!(
            class_of(16 * 1024, 64),
            None,
            "over-aligned requests are the system's"
        );
    }

    #[test]
    fn a_freed_block_serves_the_next_request_of_its_class() {
        let cache = BlockCache::new();
        // SAFETY: each block is written within the size it was asked for and freed
        // once, with the layout it was allocated with.
        unsafe {
            let a = cache.alloc(layout(40_000));
            assert!(!a.is_null());
            a.write_bytes(0xa5, 40_000);
            cache.dealloc(a, layout(40_000));
            assert_eq!(cache.cached_bytes(), 48 * 1024);
            // Any size that rounds to 48 KiB gets the same block back, all of it usable.
            let b = cache.alloc(layout(49_152));
            assert_eq!(a, b);
            assert_eq!(cache.cached_bytes(), 0);
            b.write_bytes(0x5a, 49_152);
            // Another size does not take it, and its miss keeps it: it was reused
            // since the last miss.
            cache.dealloc(b, layout(49_152));
            let c = cache.alloc(layout(20_000));
            assert_eq!(cache.cached_bytes(), 48 * 1024);
            cache.dealloc(c, layout(20_000));
            // The next miss hands it back: idle since.
            let z = cache.alloc_zeroed(layout(30_000));
            assert_eq!(cache.cached_bytes(), 24 * 1024);
            assert!(std::slice::from_raw_parts(z, 30_000)
                .iter()
                .all(|&x| x == 0));
            cache.dealloc(z, layout(30_000));
            cache.trim();
            assert_eq!(cache.cached_bytes(), 0);
        }
    }

    #[test]
    fn the_cache_holds_at_most_its_budget() {
        let cache = BlockCache::new();
        let n = CACHE_BYTES / (64 * 1024) + 3;
        // SAFETY: each block is written within the size it was asked for and freed
        // once, with the layout it was allocated with.
        unsafe {
            let blocks: Vec<*mut u8> = (0..n).map(|_| cache.alloc(layout(65_536))).collect();
            assert!(blocks.iter().all(|b| !b.is_null()));
            for b in blocks {
                cache.dealloc(b, layout(65_536));
            }
            assert_eq!(cache.cached_bytes(), CACHE_BYTES);
            // A miss of another size makes room by handing back one 64 KiB block.
            let small = cache.alloc(layout(5_000));
            assert_eq!(cache.cached_bytes(), CACHE_BYTES - 64 * 1024);
            cache.dealloc(small, layout(5_000));
            assert_eq!(cache.cached_bytes(), CACHE_BYTES - 64 * 1024 + 6 * 1024);
            cache.trim();
            assert_eq!(cache.cached_bytes(), 0);
            // A class holds at most SLOTS blocks, however small.
            let blocks: Vec<*mut u8> = (0..SLOTS + 5).map(|_| cache.alloc(layout(1500))).collect();
            for b in blocks {
                cache.dealloc(b, layout(1500));
            }
            assert_eq!(cache.cached_bytes(), SLOTS * 1536);
            cache.trim();
        }
    }

    #[test]
    fn a_miss_hands_back_as_much_of_other_sizes() {
        let cache = BlockCache::new();
        // SAFETY: each block is written within the size it was asked for and freed
        // once, with the layout it was allocated with.
        unsafe {
            let small: Vec<*mut u8> = (0..6).map(|_| cache.alloc(layout(3000))).collect();
            let big = cache.alloc(layout(9000));
            for &p in &small {
                cache.dealloc(p, layout(3000));
            }
            cache.dealloc(big, layout(9000));
            assert_eq!(cache.cached_bytes(), 6 * 3072 + 12 * 1024);
            // The 12 KiB block serves the next request of its class.
            let again = cache.alloc(layout(10_000));
            assert_eq!(again, big);
            // A 32 KiB miss gives back other sizes, the largest first, up to 32 KiB: all six.
            let p = cache.alloc(layout(32_000));
            assert_eq!(cache.cached_bytes(), 0);
            cache.dealloc(p, layout(32_000));
            cache.dealloc(again, layout(10_000));
            // A 6 KiB miss gives back the 32 KiB block, no more: the 12 KiB one stays.
            let q = cache.alloc(layout(5000));
            assert_eq!(cache.cached_bytes(), 12 * 1024);
            cache.dealloc(q, layout(5000));
            cache.trim();
        }
    }

    #[test]
    fn sizes_not_reused_since_the_last_look_are_trimmed() {
        let cache = BlockCache::new();
        // SAFETY: each block is written within the size it was asked for and freed
        // once, with the layout it was allocated with.
        unsafe {
            let a = cache.alloc(layout(10_000));
            cache.dealloc(a, layout(10_000));
            // The block went to the cache but was never reused: quiet.
            assert!(cache.trim_if_quiet());
            assert_eq!(cache.cached_bytes(), 0);
            assert!(!cache.trim_if_quiet(), "nothing left to trim");
            // 12 KiB blocks keep being reused; a 48 KiB one sits in the cache.
            for _ in 0..3 {
                let b = cache.alloc(layout(10_000));
                cache.dealloc(b, layout(10_000));
            }
            let idle = cache.alloc(layout(40_000));
            cache.dealloc(idle, layout(40_000));
            assert_eq!(cache.cached_bytes(), 60 * 1024);
            // One look hands back the idle size and keeps the busy one...
            assert!(cache.trim_if_quiet());
            assert_eq!(cache.cached_bytes(), 12 * 1024);
            // ...which the next look finds quiet.
            assert!(cache.trim_if_quiet());
            assert_eq!(cache.cached_bytes(), 0);
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_the_system() {
        // A pattern that differs from step to step, so that a skipped or misplaced
        // copy shows even in a reused block.
        let byte = |i: usize, step: usize| ((i + step * 31) % 251) as u8;
        let cache = BlockCache::new();
        // SAFETY: each block is written within the size it was asked for and freed
        // once, with the layout it was allocated with.
        unsafe {
            let mut size = 1000;
            let mut p = cache.alloc(layout(size));
            for i in 0..size {
                *p.add(i) = byte(i, 0);
            }
            // System to system, into a class, within it both ways, through the larger
            // classes, past the largest, and back down.
            let steps = [
                1020, 1100, 1500, 1200, 3000, 5000, 8192, 9000, 70_000, 131_072, 200_000, 300_000,
                6000, 100,
            ];
            for (step, next) in steps.into_iter().enumerate() {
                p = cache.realloc(p, layout(size), next);
                assert!(!p.is_null());
                for i in 0..size.min(next) {
                    assert_eq!(*p.add(i), byte(i, step), "{size} -> {next} at {i}");
                }
                for i in 0..next {
                    *p.add(i) = byte(i, step + 1);
                }
                size = next;
            }
            cache.dealloc(p, layout(size));
            cache.trim();
        }
    }

    #[test]
    fn a_reused_block_is_zeroed_and_aligned_on_request() {
        let cache = BlockCache::new();
        // SAFETY: each block is written within the size it was asked for and freed
        // once, with the layout it was allocated with.
        unsafe {
            let dirty = cache.alloc(layout(30_000));
            dirty.write_bytes(0xff, 30_000);
            cache.dealloc(dirty, layout(30_000));
            let z = cache.alloc_zeroed(layout(30_000));
            assert_eq!(z, dirty, "the cached block is reused");
            assert!(std::slice::from_raw_parts(z, 30_000)
                .iter()
                .all(|&x| x == 0));
            cache.dealloc(z, layout(30_000));
            let wide = Layout::from_size_align(3000, 16).unwrap();
            let blocks: Vec<*mut u8> = (0..4).map(|_| cache.alloc(wide)).collect();
            assert!(blocks.iter().all(|&b| b as usize % 16 == 0));
            for b in blocks {
                cache.dealloc(b, wide);
            }
            cache.trim();
        }
    }
}
