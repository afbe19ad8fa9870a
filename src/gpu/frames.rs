//! Memory that decoded frames are written into, reused from frame to frame.
//!
//! With a GPU, a frame's pixels are written by the decoder straight into
//! page-locked host memory, mapped into the device's address space: an
//! integrated GPU (Jetson) reads them in place, and a discrete GPU receives
//! them by DMA, asynchronously, without first copying them into another
//! buffer. Without one, the same pool hands out ordinary host memory, so the
//! CPU path decodes through the very same code (and CI tests it).
//!
//! Page-locking is slow (a few ms for a 1080p frame) and a JPEG decoder
//! would otherwise `malloc` and fault in a fresh 6 MB buffer per frame, so
//! freed blocks go back to the pool and the next frame of about the same
//! size reuses one.
//!
//! A block is back in the pool only when the last [`FrameMemory`] that
//! holds it is dropped: the preprocessing stage keeps one until the stream
//! event that ends the GPU's reads of it, so a block is never written while
//! the device may still read it.

use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::PinnedHostSlice;

use super::Device;

/// Page-locked blocks kept for reuse, at most (the oldest is freed first):
/// enough for a batch in flight and the next one being decoded.
const MAX_FREE_BLOCKS: usize = 16;
/// Page-locked bytes kept for reuse, at most: they are taken from what the
/// rest of a Jetson (which shares its memory with the GPU) can use.
const MAX_FREE_BYTES: usize = 256 << 20;
/// The same for ordinary memory, where reuse only saves page faults: a
/// large image's buffer should go back to the system soon.
const MAX_FREE_HOST_BLOCKS: usize = 4;
const MAX_FREE_HOST_BYTES: usize = 64 << 20;

/// Where a pool's blocks come from.
enum Kind {
    Host,
    Pinned(Arc<Device>),
}

struct Inner {
    kind: Kind,
    free: Mutex<Vec<Block>>,
}

/// One allocation. Its address never changes while it lives.
struct Block {
    ptr: *mut u8,
    len: usize,
    /// The device address of a page-locked block on an integrated GPU.
    mapped: Option<u64>,
    /// Owns the memory at `ptr`.
    _mem: Mem,
}

enum Mem {
    // A Vec, not a Box: moving a Box asserts unique ownership of its
    // memory, which `ptr` aliases.
    Host(#[allow(dead_code)] Vec<u8>),
    // Freed by cudarc's drop, which binds the context first (through its
    // event); a failed bind would leave the block allocated, not corrupt it.
    Pinned(#[allow(dead_code)] PinnedHostSlice<u8>),
}

// SAFETY: a Block is plain memory that one owner at a time writes (the
// FrameMemory it is lent to); the raw pointer is only an address into `_mem`.
unsafe impl Send for Block {}
// SAFETY: see Send; shared access is read-only.
unsafe impl Sync for Block {}

/// Hands out memory for frames and takes it back when they are dropped.
#[derive(Clone)]
pub struct FramePool(Arc<Inner>);

impl std::fmt::Debug for FramePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let free = self.free().len();
        match &self.0.kind {
            Kind::Host => write!(f, "FramePool(host, {free} free)"),
            Kind::Pinned(d) => write!(
                f,
                "FramePool(page-locked, GPU {}, {free} free)",
                d.ordinal()
            ),
        }
    }
}

impl FramePool {
    /// Ordinary host memory: the CPU path.
    pub fn host() -> FramePool {
        FramePool::with(Kind::Host)
    }

    /// Page-locked memory of `device`'s context, mapped into the device's
    /// address space where the GPU is integrated.
    pub fn pinned(device: Arc<Device>) -> FramePool {
        FramePool::with(Kind::Pinned(device))
    }

    fn with(kind: Kind) -> FramePool {
        FramePool(Arc::new(Inner {
            kind,
            free: Mutex::new(Vec::new()),
        }))
    }

    /// Whether blocks are page-locked, and on which GPU.
    pub fn device(&self) -> Option<&Arc<Device>> {
        match &self.0.kind {
            Kind::Host => None,
            Kind::Pinned(d) => Some(d),
        }
    }

    fn free(&self) -> MutexGuard<'_, Vec<Block>> {
        // A panic while holding the lock leaves the list valid.
        self.0.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `len` bytes, not zeroed: a block freed earlier if one is large
    /// enough (and not over a quarter larger), else a new one.
    pub fn take(&self, len: usize) -> Result<FrameMemory, String> {
        let len = len.max(1);
        let reused = {
            let mut free = self.free();
            let fits = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len >= len && b.len - len <= len / 4)
                .min_by_key(|(_, b)| b.len)
                .map(|(i, _)| i);
            fits.map(|i| free.remove(i))
        };
        let block = match reused {
            Some(b) => b,
            None => self.allocate(len)?,
        };
        Ok(FrameMemory {
            block: Some(block),
            len,
            pool: self.clone(),
        })
    }

    fn allocate(&self, len: usize) -> Result<Block, String> {
        match &self.0.kind {
            Kind::Host => {
                let mut mem = vec![0u8; len];
                Ok(Block {
                    ptr: mem.as_mut_ptr(),
                    len,
                    mapped: None,
                    _mem: Mem::Host(mem),
                })
            }
            Kind::Pinned(device) => {
                // Not write-combined: the host reads frames too (crops of
                // unknown items, kept frames, the CPU backends), and reads
                // of write-combined memory are uncached.
                // SAFETY: the decoder writes every byte a frame uses before
                // anything reads it.
                let (mut mem, mapped) = unsafe { device.alloc_mapped(len, 0) }
                    .map_err(|e| format!("frame memory: {e}"))?;
                let ptr = mem
                    .as_mut_ptr()
                    .map_err(|e| format!("page-locked frame memory: {e}"))?;
                Ok(Block {
                    ptr,
                    len,
                    mapped,
                    _mem: Mem::Pinned(mem),
                })
            }
        }
    }

    fn give_back(&self, block: Block) {
        let (most, most_bytes) = match self.0.kind {
            Kind::Host => (MAX_FREE_HOST_BLOCKS, MAX_FREE_HOST_BYTES),
            Kind::Pinned(_) => (MAX_FREE_BLOCKS, MAX_FREE_BYTES),
        };
        let mut evicted = Vec::new();
        {
            let mut free = self.free();
            free.push(block);
            // Oldest out, until within both caps.
            while free.len() > most || free.iter().map(|b| b.len).sum::<usize>() > most_bytes {
                evicted.push(free.remove(0));
            }
        }
        // Freed outside the lock: freeing page-locked memory synchronises
        // with the device, and other threads decode meanwhile.
        drop(evicted);
    }
}

/// A frame's bytes, lent by a [`FramePool`] until dropped. Shared through
/// an `Arc` by the frame and by the preprocessing stage while the GPU reads it.
pub struct FrameMemory {
    block: Option<Block>,
    len: usize,
    pool: FramePool,
}

impl std::fmt::Debug for FrameMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameMemory({} bytes, {:?})", self.len, self.pool)
    }
}

impl FrameMemory {
    /// The first byte, to write through: only while the memory is not
    /// shared (the decoder, before it becomes a frame's).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.block.as_ref().map_or(std::ptr::null_mut(), |b| b.ptr)
    }

    /// The first byte, to read through or compare.
    pub fn as_ptr(&self) -> *const u8 {
        self.block
            .as_ref()
            .map_or(std::ptr::null(), |b| b.ptr.cast_const())
    }

    /// Bytes asked for (the block may be larger).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never: a block is at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the memory is page-locked (asynchronous DMA from it is safe).
    pub fn is_pinned(&self) -> bool {
        self.pool.device().is_some()
    }

    /// The GPU the memory is page-locked for.
    pub fn device(&self) -> Option<&Arc<Device>> {
        self.pool.device()
    }

    /// The device address an integrated GPU reads it at.
    pub fn mapped(&self) -> Option<u64> {
        self.block.as_ref().and_then(|b| b.mapped)
    }
}

impl Drop for FrameMemory {
    fn drop(&mut self) {
        if let Some(b) = self.block.take() {
            self.pool.give_back(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_reused_only_once_given_back_and_only_when_they_fit() {
        let pool = FramePool::host();
        let a = pool.take(1000).unwrap();
        let a_ptr = a.as_ptr();
        let b = pool.take(1000).unwrap();
        assert_ne!(a_ptr, b.as_ptr(), "a block lent twice");
        drop(a);
        // Too small for 2000 bytes, too large (over a quarter) for 100.
        assert_ne!(pool.take(2000).unwrap().as_ptr(), a_ptr);
        assert_ne!(pool.take(100).unwrap().as_ptr(), a_ptr);
        let c = pool.take(900).unwrap();
        assert_eq!(c.as_ptr(), a_ptr, "a freed block that fits is reused");
        assert_eq!(c.len(), 900);
        assert!(!c.is_pinned() && c.mapped().is_none());
    }

    #[test]
    fn the_free_list_is_bounded() {
        let pool = FramePool::host();
        let held: Vec<_> = (0..MAX_FREE_HOST_BLOCKS + 5)
            .map(|_| pool.take(64).unwrap())
            .collect();
        drop(held);
        assert_eq!(pool.free().len(), MAX_FREE_HOST_BLOCKS);
        let big = pool.take(MAX_FREE_HOST_BYTES / 2 + 1).unwrap();
        let big2 = pool.take(MAX_FREE_HOST_BYTES / 2 + 1).unwrap();
        drop((big, big2));
        let bytes: usize = pool.free().iter().map(|b| b.len).sum();
        assert!(bytes <= MAX_FREE_HOST_BYTES, "{bytes} bytes kept");
    }

    #[test]
    fn page_locked_blocks_where_a_gpu_is_present() {
        let device = match Device::open(0) {
            Ok(d) => d,
            Err(why) => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "skipped: no CUDA device ({})", why.0);
                return;
            }
        };
        let integrated = device.platform().integrated;
        let pool = FramePool::pinned(device);
        let m = pool.take(1 << 20).unwrap();
        assert!(m.is_pinned());
        assert_eq!(m.mapped().is_some(), integrated);
        let p = m.as_ptr();
        drop(m);
        assert_eq!(pool.take(1 << 20).unwrap().as_ptr(), p);
    }
}
