//! Guest memory for the simulated VM.
//!
//! One memfd-backed region is mapped `MAP_SHARED` in this process and handed to the
//! daemon with `VHOST_USER_SET_MEM_TABLE`, so both sides see the same bytes: the rings
//! and buffers this crate writes are what the daemon reads, and the daemon's
//! completions are visible here without any copy.
//!
//! Guest-physical ranges are handed out by a small first-fit allocator. Freed ranges
//! are coalesced, so long streaming tests can recycle their buffers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use vm_memory::mmap::FromRangesError;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
};

/// Default size of the guest memory: 16 MiB.
pub const DEFAULT_MEMORY_SIZE: usize = 16 << 20;

/// Default guest-physical base address.
///
/// It is deliberately not 0, so a daemon that confuses guest-physical addresses with
/// offsets into the region fails loudly.
pub const DEFAULT_GUEST_BASE: u64 = 0x10_0000;

/// Errors of the guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `memfd_create` failed.
    #[error("Failed to create the guest memory memfd")]
    Memfd(#[source] io::Error),
    /// `ftruncate` on the memfd failed.
    #[error("Failed to size the guest memory memfd")]
    SetLen(#[source] io::Error),
    /// Mapping the memfd failed.
    #[error("Failed to map the guest memory")]
    Map(#[source] FromRangesError),
    /// The requested size or base address is unusable.
    #[error("Invalid guest memory layout: base {base:#x}, size {size:#x}")]
    InvalidLayout {
        /// Requested base.
        base: u64,
        /// Requested size.
        size: usize,
    },
    /// The allocator has no free range big enough.
    #[error("Guest memory exhausted: {len} bytes (align {align}) requested")]
    OutOfMemory {
        /// Requested length.
        len: usize,
        /// Requested alignment.
        align: usize,
    },
    /// The alignment is not a power of two.
    #[error("Invalid alignment {0}: not a power of two")]
    InvalidAlign(usize),
    /// `free` was given an address that is not the start of an allocation.
    #[error("Address {0:#x} is not an allocation")]
    NotAllocated(u64),
    /// A read or write fell outside the guest memory.
    #[error("Guest memory access of {len} bytes at {addr:#x} failed")]
    Access {
        /// Guest-physical address.
        addr: u64,
        /// Length of the access.
        len: usize,
        /// Underlying error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// First-fit allocator over guest-physical addresses.
#[derive(Debug)]
struct Allocator {
    /// Free ranges, start -> length. Never adjacent (they are coalesced).
    free: BTreeMap<u64, u64>,
    /// Live allocations, start -> length.
    used: BTreeMap<u64, u64>,
}

impl Allocator {
    fn new(base: u64, size: u64) -> Self {
        let mut free = BTreeMap::new();
        free.insert(base, size);
        Allocator {
            free,
            used: BTreeMap::new(),
        }
    }

    fn alloc(&mut self, len: usize, align: usize) -> Result<u64> {
        if !align.is_power_of_two() {
            return Err(Error::InvalidAlign(align));
        }
        // Zero-length requests still get a distinct address.
        let want = len.max(1) as u64;
        let mask = align as u64 - 1;
        let found = self.free.iter().find_map(|(&start, &flen)| {
            let aligned = start.checked_add(mask)? & !mask;
            let end = aligned.checked_add(want)?;
            (end <= start + flen).then_some((start, flen, aligned, end))
        });
        let (start, flen, aligned, end) = found.ok_or(Error::OutOfMemory { len, align })?;
        self.free.remove(&start);
        if aligned > start {
            self.free.insert(start, aligned - start);
        }
        if end < start + flen {
            self.free.insert(end, start + flen - end);
        }
        self.used.insert(aligned, want);
        Ok(aligned)
    }

    fn free(&mut self, addr: u64) -> Result<()> {
        let len = self.used.remove(&addr).ok_or(Error::NotAllocated(addr))?;
        let mut start = addr;
        let mut end = addr + len;
        // Merge with the free range just before, if it touches.
        if let Some((&pstart, &plen)) = self.free.range(..start).next_back() {
            if pstart + plen == start {
                self.free.remove(&pstart);
                start = pstart;
            }
        }
        // Merge with the free range just after, if it touches.
        if let Some(nlen) = self.free.remove(&end) {
            end += nlen;
        }
        self.free.insert(start, end - start);
        Ok(())
    }

    fn allocated_bytes(&self) -> u64 {
        self.used.values().sum()
    }
}

/// Memfd-backed guest memory shared with the daemon.
#[derive(Debug)]
pub struct GuestMemory {
    mmap: GuestMemoryMmap<()>,
    file: File,
    base: u64,
    size: usize,
    alloc: Mutex<Allocator>,
}

impl GuestMemory {
    /// Creates `size` bytes of guest memory at [`DEFAULT_GUEST_BASE`].
    pub fn new(size: usize) -> Result<Self> {
        Self::with_base(DEFAULT_GUEST_BASE, size)
    }

    /// Creates `size` bytes of guest memory at guest-physical address `base`.
    ///
    /// `base` and `size` must be multiples of the 4 KiB page size.
    pub fn with_base(base: u64, size: usize) -> Result<Self> {
        let page = 4096;
        if size == 0
            || size % page != 0
            || base % page as u64 != 0
            || base.checked_add(size as u64).is_none()
        {
            return Err(Error::InvalidLayout { base, size });
        }
        let file = create_memfd()?;
        file.set_len(size as u64).map_err(Error::SetLen)?;
        let clone = file.try_clone().map_err(Error::Memfd)?;
        let mmap = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(base),
            size,
            Some(FileOffset::new(clone, 0)),
        )])
        .map_err(Error::Map)?;
        Ok(GuestMemory {
            mmap,
            file,
            base,
            size,
            alloc: Mutex::new(Allocator::new(base, size as u64)),
        })
    }

    /// Guest-physical address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The memfd, to be passed to the daemon.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Address in this process (the "VMM user address") of the first byte.
    pub fn host_base(&self) -> u64 {
        self.mmap
            .iter()
            .next()
            .map_or(0, |region| region.as_ptr() as u64)
    }

    /// Translates a guest-physical address into an address in this process.
    ///
    /// vhost-user vring addresses are given in the frontend's address space.
    pub fn host_address(&self, gpa: u64) -> Result<u64> {
        self.check(gpa, 1)?;
        Ok(self.host_base() + (gpa - self.base))
    }

    /// Allocates `len` bytes aligned to `align` (a power of two).
    pub fn alloc(&self, len: usize, align: usize) -> Result<u64> {
        self.allocator().alloc(len, align)
    }

    /// Frees an allocation made by [`GuestMemory::alloc`].
    pub fn free(&self, addr: u64) -> Result<()> {
        self.allocator().free(addr)
    }

    /// Bytes currently allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocator().allocated_bytes()
    }

    fn allocator(&self) -> MutexGuard<'_, Allocator> {
        // The allocator holds no invariant that a panicking holder could break halfway
        // through in a way that matters to a test harness, so a poisoned lock is reused.
        self.alloc
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check(&self, addr: u64, len: usize) -> Result<()> {
        let end = addr.checked_add(len as u64);
        let limit = self.base + self.size as u64;
        if addr < self.base || end.is_none_or(|end| end > limit) {
            return Err(Error::Access {
                addr,
                len,
                source: GuestMemoryError::InvalidGuestAddress(GuestAddress(addr)),
            });
        }
        Ok(())
    }

    fn access_err(addr: u64, len: usize) -> impl FnOnce(GuestMemoryError) -> Error {
        move |source| Error::Access { addr, len, source }
    }

    /// Writes `data` at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.check(addr, data.len())?;
        self.mmap
            .write_slice(data, GuestAddress(addr))
            .map_err(Self::access_err(addr, data.len()))
    }

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read_into(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.check(addr, buf.len())?;
        self.mmap
            .read_slice(buf, GuestAddress(addr))
            .map_err(Self::access_err(addr, buf.len()))
    }

    /// Reads `len` bytes at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.read_into(addr, &mut buf)?;
        Ok(buf)
    }

    /// Fills `len` bytes at `addr` with `byte`.
    pub fn fill(&self, addr: u64, len: usize, byte: u8) -> Result<()> {
        self.write(addr, &vec![byte; len])
    }

    /// Writes a little-endian u16.
    pub fn write_u16(&self, addr: u64, val: u16) -> Result<()> {
        self.write(addr, &val.to_le_bytes())
    }

    /// Writes a little-endian u32.
    pub fn write_u32(&self, addr: u64, val: u32) -> Result<()> {
        self.write(addr, &val.to_le_bytes())
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&self, addr: u64, val: u64) -> Result<()> {
        self.write(addr, &val.to_le_bytes())
    }

    /// Reads a little-endian u16.
    pub fn read_u16(&self, addr: u64) -> Result<u16> {
        let mut b = [0; 2];
        self.read_into(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian u32.
    pub fn read_u32(&self, addr: u64) -> Result<u32> {
        let mut b = [0; 4];
        self.read_into(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, addr: u64) -> Result<u64> {
        let mut b = [0; 8];
        self.read_into(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Atomically loads a little-endian u16 with acquire ordering (ring indexes).
    pub fn load_u16_acquire(&self, addr: u64) -> Result<u16> {
        self.check(addr, 2)?;
        let raw: u16 = self
            .mmap
            .load(GuestAddress(addr), Ordering::Acquire)
            .map_err(Self::access_err(addr, 2))?;
        Ok(u16::from_le(raw))
    }

    /// Atomically stores a little-endian u16 with release ordering (ring indexes).
    pub fn store_u16_release(&self, addr: u64, val: u16) -> Result<()> {
        self.check(addr, 2)?;
        self.mmap
            .store(val.to_le(), GuestAddress(addr), Ordering::Release)
            .map_err(Self::access_err(addr, 2))
    }
}

fn create_memfd() -> Result<File> {
    // SAFETY: the name is a valid NUL-terminated C string and the flags are valid;
    // the call has no memory-safety preconditions beyond that.
    let fd = unsafe { libc::memfd_create(c"vsound-guest-memory".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid and owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn read_write_round_trip() {
        let mem = GuestMemory::new(1 << 20).unwrap();
        let addr = mem.base() + 0x123;
        mem.write(addr, b"hello").unwrap();
        assert_eq!(mem.read(addr, 5).unwrap(), b"hello");
        mem.write_u32(addr, 0x8000).unwrap();
        assert_eq!(mem.read(addr, 4).unwrap(), [0x00, 0x80, 0, 0]);
        // Atomic accesses need natural alignment, as ring indexes have.
        let idx = mem.base() + 0x122;
        mem.store_u16_release(idx, 0x1234).unwrap();
        assert_eq!(mem.load_u16_acquire(idx).unwrap(), 0x1234);
        assert_eq!(mem.read_u16(idx).unwrap(), 0x1234);
        assert!(mem.load_u16_acquire(addr).is_err());
    }

    #[test]
    fn out_of_range_access_fails() {
        let mem = GuestMemory::new(1 << 20).unwrap();
        assert!(mem.read(mem.base() - 1, 1).is_err());
        assert!(mem.read(mem.base() + (1 << 20) - 1, 2).is_err());
        assert!(mem.write(u64::MAX, &[1]).is_err());
        assert!(mem.read(mem.base() + (1 << 20) - 1, 1).is_ok());
    }

    #[test]
    fn host_address_maps_the_memfd() {
        let mem = GuestMemory::new(1 << 20).unwrap();
        let gpa = mem.base() + 0x40;
        mem.write(gpa, &[7, 8, 9]).unwrap();
        let hva = mem.host_address(gpa).unwrap();
        // SAFETY: `hva` points 0x40 bytes into the live 1 MiB mapping owned by `mem`.
        let first = unsafe { std::ptr::read_volatile(hva as *const u8) };
        assert_eq!(first, 7);
        // The memfd sees the same bytes (MAP_SHARED).
        let mut buf = [0u8; 3];
        let n = {
            use std::os::unix::fs::FileExt;
            mem.file.read_at(&mut buf, 0x40).unwrap()
        };
        assert_eq!((n, buf), (3, [7, 8, 9]));
    }

    #[test]
    fn allocator_aligns_frees_and_coalesces() {
        let mem = GuestMemory::new(0x10000).unwrap();
        let a = mem.alloc(3, 1).unwrap();
        let b = mem.alloc(16, 4096).unwrap();
        assert_eq!(a, mem.base());
        assert_eq!(b % 4096, 0);
        assert_ne!(a, b);
        assert_eq!(mem.allocated_bytes(), 19);
        mem.free(a).unwrap();
        mem.free(b).unwrap();
        assert!(mem.free(b).is_err());
        assert_eq!(mem.allocated_bytes(), 0);
        // Everything coalesced back: the full size is allocatable again.
        let all = mem.alloc(0x10000, 4096).unwrap();
        assert_eq!(all, mem.base());
        assert!(matches!(
            mem.alloc(1, 1),
            Err(Error::OutOfMemory { len: 1, align: 1 })
        ));
        assert!(matches!(mem.alloc(1, 3), Err(Error::InvalidAlign(3))));
    }

    #[test]
    fn invalid_layout_is_rejected() {
        assert!(GuestMemory::with_base(0, 100).is_err());
        assert!(GuestMemory::with_base(1, 4096).is_err());
        assert!(GuestMemory::with_base(0, 0).is_err());
    }
}
