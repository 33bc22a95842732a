//! smbdirectd's payload area: one memfd, shared with smbd (its descriptor goes to smbd with
//! the hello of every connection's stream, SCM_RIGHTS) and registered once per RDMA protection
//! domain ([`crate::cm::DeviceArea`]), cut into fixed slots of the largest transfer
//! (MaxReadWriteSize). A WRITE's data is RDMA-READ from the client into a slot and smbd takes
//! it from there; a READ's slot is granted to smbd, which reads the file into it, and the data
//! is RDMA-WRITTEN to the client from there: no payload byte crosses the stream to smbd.
//!
//! [`Slots`] is the bounded allocator (no I/O): a slot belongs to one connection from its
//! allocation to its release (smbd's explicit `Release`/`Read` frames), and a connection that
//! ends frees what it still holds once smbd has closed its end of the stream.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AreaError {
    #[error("{op}: {source}")]
    Call {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("area of {size} bytes cannot hold one slot of {slot} bytes")]
    TooSmall { size: u64, slot: u64 },
    #[error("range {offset}+{len} outside the {size}-byte area")]
    OutOfBounds { offset: u64, len: u64, size: u64 },
}

fn last(op: &'static str) -> AreaError {
    AreaError::Call {
        op,
        source: std::io::Error::last_os_error(),
    }
}

/// The shared memory: a sealed memfd and smbdirectd's mapping of it, unmapped and closed on
/// drop (smbd's mapping keeps the memory alive until it goes too).
#[derive(Debug)]
pub struct Area {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain shared memory owned by this value; it is only reached through raw pointers
// (RDMA work requests, copies in tests), never through Rust references held across calls.
unsafe impl Send for Area {}
// SAFETY: as above.
unsafe impl Sync for Area {}

impl Area {
    /// Creates an area of `len` bytes (a multiple of the page size is best), sealed against
    /// shrinking and growing so smbd's mapping can never fault past its end.
    pub fn create(len: usize) -> Result<Area, AreaError> {
        if len == 0 {
            return Err(AreaError::TooSmall { size: 0, slot: 1 });
        }
        // SAFETY: a NUL-terminated name; the flags are valid for memfd_create.
        let raw = unsafe {
            libc::memfd_create(
                c"smbdirectd-area".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(last("memfd_create"));
        }
        // SAFETY: a fresh descriptor, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len).map_err(|_| AreaError::TooSmall {
            size: len as u64,
            slot: 1,
        })?;
        // SAFETY: plain syscalls on the descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(last("ftruncate of the area"));
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(last("sealing the area"));
        }
        // SAFETY: a fresh shared mapping of the whole (sealed, `len`-byte) file at an address
        // the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last("mmap of the area"));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| last("mmap of the area"))?;
        Ok(Area { fd, ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of the mapping, for registration and RDMA work requests.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bounds check of a range.
    pub fn check(&self, offset: u64, len: u64) -> Result<(), AreaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len as u64 => Ok(()),
            _ => Err(AreaError::OutOfBounds {
                offset,
                len,
                size: self.len as u64,
            }),
        }
    }

    /// A copy of a range (tests, and the fallback that sends bytes inline).
    pub fn copy_out(&self, offset: u64, len: usize) -> Result<Vec<u8>, AreaError> {
        self.check(offset, len as u64)?;
        let mut v = Vec::with_capacity(len);
        // SAFETY: the source range is inside the mapping (checked) and `v` has room for
        // `len` bytes; no Rust reference to the mapping exists.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset as usize),
                v.as_mut_ptr(),
                len,
            );
            v.set_len(len);
        }
        Ok(v)
    }

    /// Copies `data` into the area at `offset`.
    pub fn copy_in(&self, offset: u64, data: &[u8]) -> Result<(), AreaError> {
        self.check(offset, data.len() as u64)?;
        // SAFETY: the destination is inside the mapping (checked); `data` cannot overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(offset as usize),
                data.len(),
            )
        };
        Ok(())
    }
}

impl AsFd for Area {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: mapped in `create` with this length, unmapped once; every memory region
        // registered on it holds an `Arc<Area>`, so none is left when this runs.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Fixed-size slots of an area and which connection holds each (no I/O).
#[derive(Debug)]
pub struct Slots {
    slot_size: u64,
    owner: Vec<Option<u64>>,
    free: Vec<u32>,
    per_conn: usize,
}

impl Slots {
    /// `area_len / slot_size` slots; one connection holds at most `per_conn` at once.
    pub fn new(area_len: u64, slot_size: u64, per_conn: usize) -> Result<Slots, AreaError> {
        let n = area_len.checked_div(slot_size).unwrap_or(0);
        if n == 0 {
            return Err(AreaError::TooSmall {
                size: area_len,
                slot: slot_size,
            });
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Slots {
            slot_size,
            owner: vec![None; n as usize],
            free: (0..n).rev().collect(),
            per_conn: per_conn.max(1),
        })
    }

    pub fn slot_size(&self) -> u64 {
        self.slot_size
    }

    pub fn total(&self) -> usize {
        self.owner.len()
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// A free slot's offset for `conn`, or `None` when none is free or `conn` holds its
    /// share (the caller then sends the payload inline).
    pub fn alloc(&mut self, conn: u64) -> Option<u64> {
        let mine = self.owner.iter().filter(|o| **o == Some(conn)).count();
        if mine >= self.per_conn {
            return None;
        }
        let i = self.free.pop()?;
        self.owner[i as usize] = Some(conn);
        Some(u64::from(i) * self.slot_size)
    }

    /// Frees `conn`'s slot at `offset`; false if `conn` does not hold a slot starting there.
    pub fn free(&mut self, conn: u64, offset: u64) -> bool {
        if !offset.is_multiple_of(self.slot_size) {
            return false;
        }
        let Ok(i) = u32::try_from(offset / self.slot_size) else {
            return false;
        };
        match self.owner.get_mut(i as usize) {
            Some(o) if *o == Some(conn) => {
                *o = None;
                self.free.push(i);
                true
            }
            _ => false,
        }
    }

    /// Frees every slot of `conn`; returns how many.
    pub fn free_conn(&mut self, conn: u64) -> usize {
        let mut n = 0;
        for (i, o) in self.owner.iter_mut().enumerate() {
            if *o == Some(conn) {
                *o = None;
                self.free.push(i as u32);
                n += 1;
            }
        }
        n
    }
}

/// Sends `frame` on a unix stream socket with `fd` attached (SCM_RIGHTS), in one sendmsg.
pub fn send_with_fd(
    sock: BorrowedFd<'_>,
    frame: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // Room for one descriptor, aligned as cmsghdr needs.
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE of a constant size.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `cbuf` (64 bytes, more than `space`), so the first
        // header is inside it; its data has room for one c_int.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
        }
    }
    // SAFETY: `msg` points at live locals (`iov`, `frame`, `cbuf`) for the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != frame.len() {
        return Err(std::io::Error::other("short sendmsg of the hello"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_connection_and_freed_by_their_holder() {
        let mut s = Slots::new(10 * 4096 + 5, 4096, 3).unwrap();
        assert_eq!(s.total(), 10);
        let a = s.alloc(1).unwrap();
        let b = s.alloc(1).unwrap();
        let c = s.alloc(1).unwrap();
        assert_eq!(s.alloc(1), None, "per-connection share");
        assert_ne!(a, b);
        assert_eq!(a % 4096, 0);
        assert!(!s.free(2, a), "not conn 2's");
        assert!(!s.free(1, a + 1), "not a slot start");
        assert!(s.free(1, a));
        assert!(!s.free(1, a), "freed once");
        assert_eq!(s.free_conn(1), 2);
        let _ = c;
        assert_eq!(s.free_count(), 10);
        for conn in 0..10 {
            assert!(s.alloc(100 + conn).is_some());
        }
        assert_eq!(s.alloc(7), None, "all taken");
        assert!(Slots::new(4095, 4096, 1).is_err());
    }

    #[test]
    fn area_is_a_sealed_shared_memfd() {
        let a = Area::create(1 << 16).unwrap();
        a.copy_in(100, b"hello").unwrap();
        assert_eq!(a.copy_out(100, 5).unwrap(), b"hello");
        assert!(a.copy_in((1 << 16) - 2, b"xyz").is_err());
        // SAFETY: fcntl on our descriptor.
        let seals = unsafe { libc::fcntl(a.as_fd().as_raw_fd(), libc::F_GET_SEALS) };
        assert_ne!(seals & libc::F_SEAL_SHRINK, 0);
        // The same bytes through the file: it is the memory smbd maps.
        let f = std::fs::File::from(a.as_fd().try_clone_to_owned().unwrap());
        let mut b = [0u8; 5];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 100).unwrap();
        assert_eq!(&b, b"hello");
        assert!(f.set_len(10).is_err(), "sealed against shrinking");
    }

    #[test]
    fn hello_carries_the_descriptor() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let area = Area::create(4096).unwrap();
        send_with_fd(a.as_fd(), b"hi", Some(area.as_fd())).unwrap();
        let mut buf = [0u8; 8];
        let mut cbuf = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: plain data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = 64;
        // SAFETY: `msg` points at live locals.
        let n = unsafe { libc::recvmsg(b.as_raw_fd(), &mut msg, 0) };
        assert_eq!(n, 2);
        // SAFETY: the kernel filled the control buffer.
        let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        assert!(!c.is_null());
        // SAFETY: as above.
        assert_eq!(unsafe { (*c).cmsg_type }, libc::SCM_RIGHTS);
    }
}
