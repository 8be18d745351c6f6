//! Owned, 64-byte aligned byte buffers: tensor data lands here once, aligned
//! for any element type and for SIMD loads.
//!
//! Buffers of [`HUGE_THRESHOLD`] bytes or more are anonymous memory maps
//! aligned to 2 MiB and, where huge pages pay ([`huge_pages`]), advised
//! `MADV_HUGEPAGE`: filling fresh memory costs one page fault per page, and
//! with 2 MiB pages a 1 GiB tensor takes 512 faults instead of 262 144 (the
//! first load of a model is otherwise dominated by faults, not by reading).
//! The pages are zero until written, as the kernel hands them out.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of every [`AlignedBuffer`].
pub const ALIGNMENT: usize = 64;

/// Size from which buffers are huge-page backed memory maps.
pub const HUGE_THRESHOLD: usize = 4 << 20;

const HUGE_PAGE: usize = 2 << 20;

/// Whether large buffers ask for transparent huge pages.
///
/// `TENSORIZER_HUGE_PAGES=1` or `=0` decides. Otherwise yes, unless this is
/// a virtual machine that reports free memory to its host (a virtio
/// balloon with free page reporting): there a fresh huge page is usually
/// one the host took back, and its first touch is a host fault per page;
/// measured on such a VM, a fresh process loaded 1 GiB about 4× faster in
/// 4 KiB pages, which the guest keeps on its own free lists (BENCHMARKS.md,
/// "Fresh-process loads"). On bare metal huge pages win.
pub(crate) fn huge_pages() -> bool {
    static CHOICE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("TENSORIZER_HUGE_PAGES").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => !free_page_reporting(),
    })
}

/// True when a virtio balloon device offers free page reporting
/// (`VIRTIO_BALLOON_F_REPORTING`, feature bit 5).
fn free_page_reporting() -> bool {
    const BALLOON: &str = "0x0005";
    const REPORTING_BIT: usize = 5;
    let Ok(devices) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    devices.flatten().any(|d| {
        let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
        read("device").trim() == BALLOON
            && read("features").as_bytes().get(REPORTING_BIT) == Some(&b'1')
    })
}

/// A zero-initialised, 64-byte aligned, fixed-length byte buffer.
pub struct AlignedBuffer {
    ptr: NonNull<u8>,
    len: usize,
    /// The whole mapping (start, length) when the buffer is a memory map.
    map: Option<(NonNull<u8>, usize)>,
}

// SAFETY: the buffer owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuffer {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuffer {}

impl AlignedBuffer {
    /// Allocates `len` zero bytes; `None` if the allocator refuses (so a
    /// hostile size becomes an error, not an abort).
    pub fn zeroed(len: usize) -> Option<Self> {
        if len == 0 {
            // A dangling but aligned pointer is valid for zero-length slices.
            let ptr = NonNull::new(ALIGNMENT as *mut u8)?;
            return Some(Self {
                ptr,
                len,
                map: None,
            });
        }
        if len >= HUGE_THRESHOLD
            && let Some(buf) = Self::mapped(len)
        {
            return Some(buf);
        }
        let layout = Layout::from_size_align(len, ALIGNMENT).ok()?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        NonNull::new(ptr).map(|ptr| Self {
            ptr,
            len,
            map: None,
        })
    }

    /// An anonymous private map of `len` bytes starting on a 2 MiB boundary,
    /// advised to use huge pages; `None` if the kernel refuses.
    fn mapped(len: usize) -> Option<Self> {
        let total = len.checked_add(HUGE_PAGE)?;
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let offset = (HUGE_PAGE - base as usize % HUGE_PAGE) % HUGE_PAGE;
        // SAFETY: `offset < HUGE_PAGE`, so `start .. start + len` lies inside the map.
        let start = unsafe { base.cast::<u8>().add(offset) };
        if huge_pages() {
            // SAFETY: advice on memory we just mapped; failure only means small pages.
            unsafe { libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE) };
        }
        Some(Self {
            ptr: NonNull::new(start)?,
            len,
            map: Some((NonNull::new(base.cast())?, total)),
        })
    }

    /// A copy of `bytes` in an aligned buffer.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut buf = Self::zeroed(bytes.len())?;
        buf.copy_from_slice(bytes);
        Some(buf)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::ops::Deref for AlignedBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised bytes (zeroed at
        // allocation) for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        if let Some((base, total)) = self.map {
            // SAFETY: the mapping made in `mapped`, unmapped once.
            unsafe { libc::munmap(base.as_ptr().cast(), total) };
        } else if self.len != 0 {
            // SAFETY: allocated in `zeroed` with exactly this layout.
            unsafe {
                alloc::dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.len, ALIGNMENT),
                )
            }
        }
    }
}

impl Clone for AlignedBuffer {
    fn clone(&self) -> Self {
        Self::from_slice(self).expect("out of memory cloning a tensor buffer")
    }
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuffer")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_writable() {
        for len in [
            0,
            1,
            63,
            64,
            65,
            1 << 20,
            HUGE_THRESHOLD,
            HUGE_THRESHOLD + 12345,
        ] {
            let mut b = AlignedBuffer::zeroed(len).unwrap();
            assert_eq!(b.as_ptr() as usize % ALIGNMENT, 0);
            assert!(b.iter().all(|&x| x == 0));
            if len > 0 {
                b[len - 1] = 7;
                assert_eq!(b.clone()[len - 1], 7);
            }
        }
        assert!(AlignedBuffer::zeroed(usize::MAX - 10).is_none());
    }
}
