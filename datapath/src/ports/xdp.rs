//! An AF_XDP socket, its UMEM and its four rings, on the kernel's interface.
//!
//! Why not xsk-rs: it registers the UMEM through libxdp 1.6, whose
//! `xsk_umem_config` has no `tx_metadata_len`, so a UMEM it creates can
//! never carry TX metadata (the checksum offload request, see
//! [`super::xsk`]). The kernel's interface is small: `XDP_UMEM_REG`, ring
//! sizes, `XDP_MMAP_OFFSETS`, four mappings and `bind`; the rings are
//! single-producer single-consumer arrays of a power-of-two size indexed by
//! free-running `u32` counters, the producer publishing with a release
//! store and the consumer reading it with an acquire load.
//!
//! What this module guarantees is memory safety of the rings and mappings.
//! Ownership of UMEM frames (which frame the kernel may write while we read
//! it) is the caller's ([`super::xsk::XskPort`]): ring operations that hand
//! frames over and frame views are `unsafe fn`s stating that contract.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// `XDP_PACKET_HEADROOM`: where the kernel puts received data in a chunk
/// (copy mode), and where this port puts data to send.
pub(super) const XDP_PACKET_HEADROOM: usize = 256;

/// Size of `struct xsk_tx_metadata` (linux/if_xdp.h): `flags` (u64) and a
/// union of the request (`csum_start`, `csum_offset`: two u16) and the
/// completion (a u64 timestamp). A multiple of 8, as the kernel requires.
pub(super) const TX_METADATA_LEN: usize = 16;

/// An anonymous, page-aligned mapping, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset` shared, or, when `fd` is
    /// `None`, private anonymous memory that a child process does not
    /// inherit (`MADV_DONTFORK`: the kernel pins it for the UMEM, and a
    /// copy-on-write copy in a child would be meaningless). Private pages
    /// fault in in half the time shared (shmem) ones take.
    fn new(len: usize, fd: Option<RawFd>, offset: libc::off_t) -> io::Result<Self> {
        let flags = match fd {
            Some(_) => libc::MAP_SHARED | libc::MAP_POPULATE,
            None => libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
        };
        // SAFETY: a fresh mapping at an address the kernel chooses; no
        // existing memory is affected. The result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd.unwrap_or(-1),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let mapping = Self { ptr, len };
        if fd.is_none() {
            // SAFETY: advice on the mapping just made, which this value owns.
            check(unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTFORK) })?;
        }
        Ok(mapping)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and
        // owns; every view into it borrows the owner, so none outlives it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is plain memory; who may touch it is governed by the
// owner's `&`/`&mut` borrows (and, for UMEM frames, by the ring contract).
unsafe impl Send for Mapping {}

/// One ring: a mapping of the kernel's producer and consumer indices,
/// flags and `size` entries of `T`.
#[derive(Debug)]
pub(super) struct Ring<T> {
    /// Owns the memory the pointers below point into.
    _map: Mapping,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    size: u32,
    /// Our own index: the producer for fill and tx, the consumer for rx
    /// and completion (nobody else writes it).
    local: u32,
    _entries: PhantomData<T>,
}

// SAFETY: the ring's memory is owned by `map`, moved with it; the kernel
// is the only other party and synchronises through the atomic indices.
unsafe impl<T: Send> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    fn map(fd: RawFd, offsets: &libc::xdp_ring_offset, size: u32, pgoff: u64) -> io::Result<Self> {
        let len = offsets.desc as usize + size as usize * size_of::<T>();
        let map = Mapping::new(len, Some(fd), pgoff.cast_signed())?;
        let at = |off: u64| -> NonNull<u8> {
            // SAFETY: the kernel's offsets lie within the mapping of `len`
            // bytes it told us to map (producer, consumer and flags before
            // `desc`, the entries from `desc` on).
            unsafe { map.ptr.add(off as usize) }
        };
        let producer = at(offsets.producer).cast();
        let consumer = at(offsets.consumer).cast();
        let flags = at(offsets.flags).cast();
        let descs = at(offsets.desc).cast();
        // A fresh ring: both indices are 0.
        let local = 0;
        Ok(Self {
            _map: map,
            producer,
            consumer,
            flags,
            descs,
            size,
            local,
            _entries: PhantomData,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: an aligned u32 of the live mapping `self._map` (kept as
        // long as `self`), shared with the kernel, which accesses it
        // atomically.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.flags.as_ref() }
    }

    /// Entries free for producing (fill, tx).
    pub(super) fn free(&self) -> u32 {
        let consumer = self.consumer().load(Ordering::Acquire);
        self.size - self.local.wrapping_sub(consumer)
    }

    /// Entries the consumer has not taken yet (producer rings), i.e. in
    /// flight towards the kernel.
    pub(super) fn pending(&self) -> u32 {
        self.size - self.free()
    }

    /// Puts `items` on the ring, all of them or, if there is not room for
    /// all, none; returns how many.
    ///
    /// # Safety
    /// The frames `items` describe belong to this socket's UMEM, are owned
    /// by the caller and are not viewed by it from here on: the kernel owns
    /// them until they come back on the rx or completion ring.
    pub(super) unsafe fn produce(&mut self, items: &[T]) -> usize {
        let n = items.len();
        if n == 0 || (self.free() as usize) < n {
            return 0;
        }
        let mask = self.size - 1;
        for (i, item) in items.iter().enumerate() {
            let slot = (self.local.wrapping_add(i as u32) & mask) as usize;
            // SAFETY: `slot < size`, within the mapped entries; the kernel
            // does not read entries past the producer index we publish
            // below, so nobody else touches this slot now.
            unsafe { self.descs.add(slot).write_volatile(*item) };
        }
        self.local = self.local.wrapping_add(n as u32);
        self.producer().store(self.local, Ordering::Release);
        n
    }

    /// Takes up to `out.len()` entries off the ring (rx, completion).
    ///
    /// # Safety
    /// The frames the entries describe become the caller's; it must hold
    /// no view of a frame it has since given back to the kernel.
    pub(super) unsafe fn consume(&mut self, out: &mut [T]) -> usize {
        let producer = self.producer().load(Ordering::Acquire);
        let n = (producer.wrapping_sub(self.local) as usize).min(out.len());
        if n == 0 {
            return 0;
        }
        let mask = self.size - 1;
        for (i, item) in out[..n].iter_mut().enumerate() {
            let slot = (self.local.wrapping_add(i as u32) & mask) as usize;
            // SAFETY: `slot < size`; the kernel published this entry (it is
            // before the producer index read with acquire) and does not
            // rewrite it until we move the consumer index past it.
            *item = unsafe { self.descs.add(slot).read_volatile() };
        }
        self.local = self.local.wrapping_add(n as u32);
        self.consumer().store(self.local, Ordering::Release);
        n
    }

    /// Whether the kernel asks for a system call to go on
    /// (`XDP_RING_NEED_WAKEUP`).
    pub(super) fn needs_wakeup(&self) -> bool {
        self.flags().load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

/// How to create a [`Socket`].
#[derive(Clone, Copy, Debug)]
pub(super) struct SocketConfig {
    /// Chunks in the UMEM.
    pub(super) frame_count: u32,
    /// Bytes per chunk (a power of two).
    pub(super) frame_size: u32,
    /// Ring sizes (powers of two).
    pub(super) fill_ring: u32,
    /// Completion ring size.
    pub(super) comp_ring: u32,
    /// Rx ring size.
    pub(super) rx_ring: u32,
    /// Tx ring size.
    pub(super) tx_ring: u32,
    /// Register the UMEM with [`TX_METADATA_LEN`] bytes of TX metadata
    /// before each frame to send (`XDP_UMEM_TX_METADATA_LEN`).
    pub(super) tx_metadata: bool,
}

/// Which step of creating a socket failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// `socket(AF_XDP)`.
    Socket,
    /// Mapping the UMEM memory.
    UmemMemory,
    /// `XDP_UMEM_REG`.
    UmemRegistration,
    /// Ring sizes and mappings.
    Rings,
    /// `bind`.
    Bind,
}

/// An AF_XDP socket with its own UMEM (not shared), bound to one queue
/// once [`Socket::bind`] succeeded.
/// Dropping it unmaps the rings, closes the socket, then unmaps the UMEM.
#[derive(Debug)]
pub(super) struct Socket {
    /// Receive ring.
    pub(super) rx: Ring<libc::xdp_desc>,
    /// Transmit ring.
    pub(super) tx: Ring<libc::xdp_desc>,
    /// Fill ring (chunk addresses for the kernel to receive into).
    pub(super) fill: Ring<u64>,
    /// Completion ring (chunk addresses the kernel has transmitted).
    pub(super) comp: Ring<u64>,
    fd: OwnedFd,
    umem: Mapping,
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_u32(fd: RawFd, opt: libc::c_int, value: u32) -> io::Result<()> {
    // SAFETY: `value` is valid for reads of its size during the call.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (&raw const value).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    })
}

impl Socket {
    /// Creates the socket and its UMEM and maps the rings, in the calling
    /// thread's network namespace; [`Self::bind`] then binds it to a queue
    /// of an interface there. The UMEM's memory is faulted in here, which
    /// is most of what making a socket costs.
    pub(super) fn create(config: &SocketConfig) -> Result<Self, (Step, io::Error)> {
        // SAFETY: plain system call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err((Step::Socket, io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = config.frame_count as usize * config.frame_size as usize;
        let umem = Mapping::new(len, None, 0).map_err(|e| (Step::UmemMemory, e))?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: len as u64,
            chunk_size: config.frame_size,
            headroom: 0,
            flags: if config.tx_metadata {
                libc::XDP_UMEM_TX_METADATA_LEN
            } else {
                0
            },
            tx_metadata_len: if config.tx_metadata {
                TX_METADATA_LEN as u32
            } else {
                0
            },
        };
        // SAFETY: `reg` is valid for reads of its size during the call; the
        // memory it names is our mapping, which outlives the socket (it is
        // dropped after `fd`).
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_UMEM_REG,
                (&raw const reg).cast(),
                size_of::<libc::xdp_umem_reg>() as libc::socklen_t,
            )
        })
        .map_err(|e| (Step::UmemRegistration, e))?;
        let rings = |e| (Step::Rings, e);
        let raw = fd.as_raw_fd();
        set_u32(raw, libc::XDP_UMEM_FILL_RING, config.fill_ring).map_err(rings)?;
        set_u32(raw, libc::XDP_UMEM_COMPLETION_RING, config.comp_ring).map_err(rings)?;
        set_u32(raw, libc::XDP_RX_RING, config.rx_ring).map_err(rings)?;
        set_u32(raw, libc::XDP_TX_RING, config.tx_ring).map_err(rings)?;
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut optlen = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` and `optlen` are valid for writes of their sizes.
        check(unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&raw mut off).cast(),
                &raw mut optlen,
            )
        })
        .map_err(rings)?;
        if optlen as usize != size_of::<libc::xdp_mmap_offsets>() {
            return Err((
                Step::Rings,
                io::Error::other("the kernel's ring offsets lack flags (Linux < 5.4)"),
            ));
        }
        let fill = Ring::map(
            raw,
            &off.fr,
            config.fill_ring,
            libc::XDP_UMEM_PGOFF_FILL_RING,
        )
        .map_err(rings)?;
        let comp = Ring::map(
            raw,
            &off.cr,
            config.comp_ring,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )
        .map_err(rings)?;
        let rx = Ring::map(raw, &off.rx, config.rx_ring, libc::XDP_PGOFF_RX_RING as u64)
            .map_err(rings)?;
        let tx = Ring::map(raw, &off.tx, config.tx_ring, libc::XDP_PGOFF_TX_RING as u64)
            .map_err(rings)?;
        Ok(Self {
            rx,
            tx,
            fill,
            comp,
            fd,
            umem,
        })
    }

    /// Binds the socket to `queue` of interface `ifindex` with `flags`
    /// (`sxdp_flags`). The kernel binds a socket once.
    pub(super) fn bind(&self, ifindex: u32, queue: u32, flags: u16) -> io::Result<()> {
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is valid for reads of its size during the call.
        check(unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        })
    }

    /// The socket's descriptor.
    pub(super) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `len` bytes of the UMEM at `addr` (`None` if out of range).
    ///
    /// # Safety
    /// The kernel does not write these bytes while the view lives (the
    /// frame is on no fill or rx ring), and no mutable view overlaps it.
    pub(super) unsafe fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(len)? > self.umem.len {
            return None;
        }
        // SAFETY: in range of the live UMEM mapping (checked); exclusivity
        // against the kernel and other views is the caller's contract.
        Some(unsafe { std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(start), len) })
    }

    /// `len` bytes of the UMEM at `addr`, to write (`None` if out of range).
    ///
    /// # Safety
    /// The frame is owned by the caller (on no ring) and no other view of
    /// these bytes exists while this one lives.
    #[allow(
        clippy::mut_from_ref,
        reason = "the UMEM is shared memory; the caller's contract rules out aliasing"
    )]
    pub(super) unsafe fn bytes_mut(&self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(len)? > self.umem.len {
            return None;
        }
        // SAFETY: in range (checked); exclusivity is the caller's contract.
        Some(unsafe { std::slice::from_raw_parts_mut(self.umem.ptr.as_ptr().add(start), len) })
    }

    /// Kicks transmission (`sendto` without data, not waiting). The errors
    /// meaning "busy, try later" are not errors here.
    pub(super) fn wakeup_tx(&self) -> io::Result<()> {
        // SAFETY: no buffers are passed; the fd is this open socket.
        let ret = unsafe {
            libc::sendto(
                self.fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if ret < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EBUSY | libc::ENETDOWN) => {}
                _ => return Err(e),
            }
        }
        Ok(())
    }

    /// Polls for input without waiting (drives the receive side when the
    /// fill ring asks for a wakeup, or under busy polling).
    pub(super) fn poll_rx(&self) {
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, written by the kernel during the call
        // only. The result only says whether input is waiting; ignored.
        let _ = unsafe { libc::poll(&raw mut pfd, 1, 0) };
    }

    /// The kernel's ring statistics (`XDP_STATISTICS`).
    pub(super) fn statistics(&self) -> io::Result<libc::xdp_statistics> {
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut stats: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `stats` and `len` are valid for writes of their sizes.
        check(unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&raw mut stats).cast(),
                &raw mut len,
            )
        })?;
        Ok(stats)
    }
}

/// A TX checksum request as the kernel reads it: `struct xsk_tx_metadata`
/// with `XDP_TXMD_FLAGS_CHECKSUM` and the request half of its union, in
/// native byte order, [`TX_METADATA_LEN`] bytes.
#[must_use]
pub(super) fn checksum_request(csum_start: u16, csum_offset: u16) -> [u8; TX_METADATA_LEN] {
    let mut meta = [0u8; TX_METADATA_LEN];
    meta[..8].copy_from_slice(&u64::from(libc::XDP_TXMD_FLAGS_CHECKSUM).to_ne_bytes());
    meta[8..10].copy_from_slice(&csum_start.to_ne_bytes());
    meta[10..12].copy_from_slice(&csum_offset.to_ne_bytes());
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_request_is_the_kernels_struct() {
        // struct xsk_tx_metadata { __u64 flags; union { struct { __u16
        // csum_start; __u16 csum_offset; } request; struct { __u64
        // tx_timestamp; } completion; }; }: 16 bytes.
        #[repr(C)]
        struct Request {
            flags: u64,
            csum_start: u16,
            csum_offset: u16,
            _pad: u32,
        }
        assert_eq!(size_of::<Request>(), TX_METADATA_LEN);
        assert_eq!(TX_METADATA_LEN % 8, 0);
        let meta = checksum_request(34, 16);
        let want = Request {
            flags: 2,
            csum_start: 34,
            csum_offset: 16,
            _pad: 0,
        };
        // SAFETY: `Request` is a repr(C) struct of integers without padding
        // (16 bytes, checked above), so all its bytes are initialised.
        let bytes: [u8; TX_METADATA_LEN] = unsafe { std::mem::transmute(want) };
        assert_eq!(meta, bytes);
        assert_eq!(libc::XDP_TXMD_FLAGS_CHECKSUM, 1 << 1);
        assert_eq!(libc::XDP_TX_METADATA, 1 << 1);
    }
}
