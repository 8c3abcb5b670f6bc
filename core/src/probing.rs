//! Linear probing without tombstones, for the counts tables (`open_table`), and the memory hints
//! every hot table uses (`prefetch_line`, huge pages). The dedup set's id table is a cuckoo table
//! (`dedup::table`) and uses only `home`, `fingerprint` and the hints.
//!
//! A table here keeps a control byte per slot (0 = empty, else a fingerprint of the key's hash) and
//! remove keys in bulk, at barriers. A bulk removal here is one sweep that also compacts the
//! probe runs, so no tombstone is ever left behind: a table whose live size is steady stays at its
//! size forever, where hashbrown's tombstones made it double (reports/2026-11-28-rust-svc/
//! criterion-hot-path.md). The small control array keeps lookups of absent keys mostly in cache,
//! as a swiss table's control bytes do, and a caller that knows its next keys can `prefetch`.
//!
//! **Invariant:** for every stored key, every slot from its home slot up to its own slot
//! (cyclically) is occupied.

/// The home slot of a hash: the hash scaled onto the slot count, so a table can have any size.
#[inline]
pub(crate) fn home(hash: u64, slots: usize) -> usize {
    ((u128::from(hash) * slots as u128) >> 64) as usize
}

/// The slot after `index`, wrapping at the end.
#[inline]
pub(crate) fn next(index: usize, slots: usize) -> usize {
    if index + 1 == slots { 0 } else { index + 1 }
}

/// The control byte of a hash: its low byte, with 0 (the empty marker) folded onto 1. The home
/// slot comes from the high bits, so the two are independent.
#[inline]
pub(crate) fn fingerprint(hash: u64) -> u8 {
    (hash as u8).max(1)
}

/// Asks the CPU to start loading the cache line of `value`. A hint only.
#[inline]
pub(crate) fn prefetch_line<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache and never dereferences; the pointer comes from
    // a live reference, and SSE is part of the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Asks Linux to back a large array with transparent huge pages, where the host allows it (THP
/// `always` or `madvise`). A random access into an array of hundreds of MiB on 4 KiB pages is
/// nearly always a TLB miss too, and in a VM a two-level page walk. Measured: the whole per-event
/// chain ran about 1.5 times as fast with the heap on huge pages
/// (reports/2026-11-28-rust-svc/criterion-hot-path.md). A hint only: results never change.
pub(crate) fn advise_huge_pages<T>(array: &mut [T]) {
    const HUGE_PAGE_BYTES: usize = 2 << 20;
    #[cfg(target_os = "linux")]
    {
        const PAGE_BYTES: usize = 4096;
        let start = array.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(array);
        let first_page = start.next_multiple_of(PAGE_BYTES);
        let last_page_end = end / PAGE_BYTES * PAGE_BYTES;
        if last_page_end > first_page + 2 * HUGE_PAGE_BYTES {
            // SAFETY: the range is whole pages inside the array's own allocation, which lives
            // until the array is dropped. MADV_HUGEPAGE changes how the kernel backs the pages,
            // never their contents; a refusal (THP off) is harmless, so the result is ignored.
            unsafe {
                libc::madvise(
                    first_page as *mut libc::c_void,
                    last_page_end - first_page,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (array, HUGE_PAGE_BYTES);
}

/// `vec![value; len]` with its pages advised onto huge pages before it is written (advice after
/// the write comes too late: the pages are small by then).
pub(crate) fn filled_on_huge_pages<T: Clone>(len: usize, value: T) -> Vec<T> {
    let mut vec = Vec::with_capacity(len);
    advise_huge_pages(vec.spare_capacity_mut());
    vec.resize(len, value);
    vec
}

/// A linear-probing table as `sweep` sees it.
pub(crate) trait ProbeSlots {
    fn slots(&self) -> usize;
    fn is_vacant(&self, index: usize) -> bool;
    /// The home slot of the key stored at `index`.
    fn home_of(&self, index: usize) -> usize;
    /// Moves the key at `from` to the empty slot `to`, leaving `from` empty.
    fn move_slot(&mut self, from: usize, to: usize);
}

/// One sequential pass: `remove(table, index)` is asked about every stored slot in turn, empties
/// it (and returns true) to remove it, and may update a slot it keeps. Survivors behind a removed
/// slot of their probe run move back to the first empty slot after their home, so no tombstone is
/// left.
///
/// The pass starts just after an empty slot, so no probe run straddles its start, and every slot
/// before the current one is final when it is reached: one pass suffices.
pub(crate) fn sweep<T: ProbeSlots>(table: &mut T, mut remove: impl FnMut(&mut T, usize) -> bool) {
    let slots = table.slots();
    let Some(start) = (0..slots).find(|&index| table.is_vacant(index)) else {
        unreachable!("tables grow before they fill, so an empty slot exists");
    };
    // Whether the current probe run has had a slot emptied, so survivors may move back.
    let mut run_has_hole = false;
    let mut index = start;
    for _ in 0..slots {
        index = next(index, slots);
        if table.is_vacant(index) {
            run_has_hole = false;
            continue;
        }
        if remove(table, index) {
            run_has_hole = true;
            continue;
        }
        if run_has_hole {
            let mut target = table.home_of(index);
            while target != index && !table.is_vacant(target) {
                target = next(target, slots);
            }
            if target != index {
                table.move_slot(index, target);
            }
        }
    }
}
