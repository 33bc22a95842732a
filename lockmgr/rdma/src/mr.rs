//! Registered memory: a page-aligned heap buffer and the memory region (`ibv_mr`) that lets the
//! HCA read and write it.
//!
//! The HCA accesses the buffer behind Rust's back, so the buffer is never exposed as one Rust
//! reference; the accessors hand out sub-slices and are `unsafe`, because only the owner of the
//! posted work requests (the queue pair, [`crate::qp`]) knows which bytes the HCA may touch.

use std::alloc::{self, Layout};
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ib;

use crate::verbs::ProtectionDomain;
use crate::RdmaError;

/// Alignment of registered buffers: whole pages, so the pinned range covers nothing else.
const PAGE: usize = 4096;

/// Page-aligned, zeroed heap memory, freed on drop.
struct DmaBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl DmaBuf {
    fn new(len: usize) -> Result<DmaBuf, RdmaError> {
        let layout = Layout::from_size_align(len.max(1), PAGE)
            .map_err(|_| RdmaError::Config("registered region too large".into()))?;
        // SAFETY: `layout` has non-zero size.
        let p = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).ok_or_else(|| RdmaError::Config("out of memory".into()))?;
        Ok(DmaBuf { ptr, layout })
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once. The memory region covering
        // it deregisters in its `Drop` body, which runs before its fields (this) drop.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A buffer of `len` bytes registered with a protection domain for local access by the HCA.
/// Deregistered before the buffer is freed; holds the PD so the PD is deallocated after it.
pub(crate) struct MemoryRegion {
    mr: NonNull<ib::ibv_mr>,
    len: usize,
    // Fields drop after `Drop::drop` deregistered the region: the memory, then the PD.
    buf: DmaBuf,
    pd: Arc<ProtectionDomain>,
}

// SAFETY: the region and its buffer are owned exclusively by this value; libibverbs allows
// using an MR from any thread, and the buffer is only reached through `&self`/`&mut self`.
unsafe impl Send for MemoryRegion {}

impl MemoryRegion {
    /// Allocates `len` zeroed bytes and registers them with `pd` for local writes (receives).
    pub(crate) fn register(
        pd: &Arc<ProtectionDomain>,
        len: usize,
    ) -> Result<MemoryRegion, RdmaError> {
        let buf = DmaBuf::new(len)?;
        let access = ib::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as libc::c_int;
        // SAFETY: the PD is live; `buf` is `len` bytes of live memory that outlives the MR
        // (it is a field of the region, dropped after the deregistration in `Drop`).
        let mr = unsafe { ib::ibv_reg_mr(pd.as_ptr(), buf.ptr.as_ptr().cast(), len, access) };
        let mr = NonNull::new(mr).ok_or_else(|| RdmaError::Verbs {
            op: "ibv_reg_mr (check the locked-memory limit, ulimit -l)",
            source: std::io::Error::last_os_error(),
        })?;
        Ok(MemoryRegion {
            mr,
            len,
            buf,
            pd: pd.clone(),
        })
    }

    /// The local key work requests name this region by.
    pub(crate) fn lkey(&self) -> u32 {
        // SAFETY: the MR is live until drop; `lkey` is a plain field written at registration.
        unsafe { (*self.mr.as_ptr()).lkey }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// Address of byte `offset` as a work request's scatter/gather entry takes it, or `None`
    /// past the end.
    pub(crate) fn addr(&self, offset: usize) -> Option<u64> {
        if offset > self.len {
            return None;
        }
        Some(self.buf.ptr.as_ptr() as u64 + offset as u64)
    }

    fn check(&self, range: &Range<usize>) -> bool {
        range.start <= range.end && range.end <= self.len
    }

    /// The bytes in `range`, or `None` if it is not inside the region.
    ///
    /// # Safety
    ///
    /// No work request that may write any byte of `range` (a posted receive) is outstanding,
    /// and none is posted while the returned borrow lives.
    pub(crate) unsafe fn bytes(&self, range: Range<usize>) -> Option<&[u8]> {
        if !self.check(&range) {
            return None;
        }
        // SAFETY: the range is inside the allocation (checked); the caller guarantees the HCA
        // does not write it while the borrow lives.
        Some(unsafe {
            std::slice::from_raw_parts(self.buf.ptr.as_ptr().add(range.start), range.len())
        })
    }

    /// The bytes in `range` for writing, or `None` if it is not inside the region.
    ///
    /// # Safety
    ///
    /// No work request that may read or write any byte of `range` (a posted send or receive) is
    /// outstanding, and none is posted while the returned borrow lives.
    pub(crate) unsafe fn bytes_mut(&mut self, range: Range<usize>) -> Option<&mut [u8]> {
        if !self.check(&range) {
            return None;
        }
        // SAFETY: the range is inside the allocation (checked), `&mut self` excludes other Rust
        // borrows, and the caller guarantees the HCA does not touch it while the borrow lives.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.buf.ptr.as_ptr().add(range.start), range.len())
        })
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered in `register`, deregistered once. The QP that posted work requests
        // on it owns this region and is destroyed before its fields drop, so the HCA no longer
        // uses the memory; `buf` and `pd` are freed after this body.
        unsafe { ib::ibv_dereg_mr(self.mr.as_ptr()) };
    }
}
