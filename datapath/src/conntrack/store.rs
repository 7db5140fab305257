//! Where the connection table's arrays live: on the heap (replays, tests,
//! an agent that keeps nothing) or in one memory-mapped file that outlives
//! the process, so that an upgraded agent takes its predecessor's
//! connections over (`podfence run --on-stop keep`).
//!
//! The file (under `/run/podfence`, a tmpfs: gone at reboot) is a
//! [`Header`] page followed by the slots, the NAT data and the
//! fingerprints, mapped `MAP_SHARED` so that what one agent wrote is what
//! the next one reads. All-zero bytes are an empty table, so a new file is
//! one `ftruncate`. The header names the layout (magic, layout version,
//! slot sizes, capacity), the clock the entries' `last_seen` is stamped
//! with (`CLOCK_MONOTONIC`, the same in every process of one boot) and the
//! boot; any difference and the table starts clean ([`Opened::Mismatch`]).
//! It also keeps the highest table generation an agent published while
//! using it, so that the next agent numbers its generations above it and
//! a restored entry is always re-checked by the next agent's tables.
//!
//! An exclusive `flock` on the file is held while the table is mapped: two
//! agents never share one table.
//!
//! The hot path sees none of this: [`Array`] dereferences to a slice from
//! a base pointer and a length fixed at construction, as a `Box<[T]>` does.
//! This module holds the crate's unsafe code for it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Marks a podfence connection table file.
const MAGIC: [u8; 8] = *b"PFCONNTR";
/// Bumped whenever the meaning of a byte of the file changes: slot
/// fields, tag bits, state numbering, key packing, NAT data, header.
pub const LAYOUT_VERSION: u32 = 1;
/// The clock of `last_seen`: `CLOCK_MONOTONIC` nanoseconds.
const CLOCK_MONOTONIC_NS: u32 = 1;
/// Bytes before the first slot (the header, padded to a page).
pub(super) const HEADER_BYTES: usize = 4096;

/// The file's first bytes. Fields are written once at creation (magic
/// last), except `generation`.
#[repr(C)]
pub(super) struct Header {
    magic: [u8; 8],
    layout: u32,
    slot_bytes: u32,
    nat_bytes: u32,
    clock: u32,
    capacity: u64,
    boot_id: [u8; 40],
    /// The highest table generation published while the table was in use.
    generation: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);

/// A fixed array of `T` that is either a leaked box or part of a mapping
/// owned by the same table; dereferences like a `Box<[T]>`.
pub(super) struct Array<T> {
    ptr: NonNull<T>,
    len: usize,
    /// Whether `ptr` came from `Box::into_raw` (freed on drop).
    boxed: bool,
}

// SAFETY: the arrays hold atomics only (`T: Sync`), shared by reference
// between threads exactly as a `Box<[T]>` of them would be.
unsafe impl<T: Sync> Send for Array<T> {}
// SAFETY: as above: only shared references to `T: Sync` are handed out.
unsafe impl<T: Sync> Sync for Array<T> {}

impl<T> Array<T> {
    pub(super) fn boxed(items: Box<[T]>) -> Self {
        let len = items.len();
        let ptr = NonNull::from(Box::leak(items)).cast::<T>();
        Self {
            ptr,
            len,
            boxed: true,
        }
    }
}

impl<T> std::ops::Deref for Array<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialised, aligned `T`s that live
        // as long as `self`: a leaked box freed only by `drop`, or a region
        // of a mapping the owning table unmaps only after its arrays are
        // gone (see `Conntrack`'s field order). Only shared references are
        // ever made; the `T`s are atomics, valid for any bit pattern.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for Array<T> {
    fn drop(&mut self) {
        if self.boxed {
            let raw = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
            // SAFETY: `raw` is the pointer `Box::leak` gave for this array,
            // freed exactly once, here.
            drop(unsafe { Box::from_raw(raw) });
        }
    }
}

impl<T> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Array")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("boxed", &self.boxed)
            .finish()
    }
}

/// Why a table file cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening, locking, sizing or mapping the file failed.
    #[error("connection table file {path}: cannot {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Another process holds the file (another agent runs).
    #[error(
        "connection table file {path} is held by another process (another agent?) after {waited:?}"
    )]
    Locked {
        /// The file.
        path: PathBuf,
        /// How long we waited for it.
        waited: Duration,
    },
}

/// What opening a table file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// No file: a new, empty table.
    Created,
    /// A table of this layout and boot: its entries are in force.
    Restored,
    /// A file that is not a table of this layout, capacity or boot: it
    /// was cleared and the table starts empty.
    Mismatch(String),
}

/// A mapped table file: unmapped and unlocked on drop (the file stays).
#[derive(Debug)]
pub(super) struct Mapping {
    base: NonNull<u8>,
    len: usize,
    path: PathBuf,
    /// Holds the lock.
    _file: File,
}

// SAFETY: the mapping is plain shared memory; the table accesses it only
// through atomics (see `Array`), from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what `mmap` returned; the arrays
        // into it are dropped before (field order of `Conntrack`) and hold
        // no drop glue for mapped memory.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The byte offsets of a table of `n` slots of `slot`/`nat` bytes: the
/// slots, the NAT data, the fingerprints, and the file size.
pub(super) fn layout(n: usize, slot: usize, nat: usize) -> (usize, usize, usize, usize) {
    let round = |x: usize| x.div_ceil(64) * 64;
    let slots = HEADER_BYTES;
    let nats = round(slots + n * slot);
    let fps = round(nats + n * nat);
    let end = round(fps + n / 8 * 8);
    (slots, nats, fps, end.div_ceil(4096) * 4096)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), zero-padded.
fn boot_id() -> [u8; 40] {
    let mut id = [0u8; 40];
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let text = text.trim().as_bytes();
        let n = text.len().min(id.len());
        id[..n].copy_from_slice(&text[..n]);
    }
    id
}

/// Opens (or creates) the table file `path` for `n` slots, locks it
/// (waiting up to `lock_wait` for a previous holder) and maps it. A file whose
/// header does not describe exactly this table is cleared.
pub(super) fn open(
    path: &Path,
    n: usize,
    slot_bytes: usize,
    nat_bytes: usize,
    lock_wait: Duration,
) -> Result<(Mapping, Opened), StoreError> {
    let err = |op: &'static str| {
        move |source: io::Error| StoreError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err("create its directory"))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err("open"))?;
    lock(&file, path, lock_wait)?;
    let (_, _, _, size) = layout(n, slot_bytes, nat_bytes);
    let had = file.metadata().map_err(err("stat"))?.len();
    let want = Header {
        magic: MAGIC,
        layout: LAYOUT_VERSION,
        slot_bytes: slot_bytes as u32,
        nat_bytes: nat_bytes as u32,
        clock: CLOCK_MONOTONIC_NS,
        capacity: n as u64,
        boot_id: boot_id(),
        generation: AtomicU64::new(0),
    };
    let mismatch = if had == 0 {
        None
    } else if had != size as u64 {
        Some(format!("file of {had} bytes, this table needs {size}"))
    } else {
        read_mismatch(&file, &want).map_err(err("read the header"))?
    };
    let opened = match (had, mismatch) {
        (0, _) => Opened::Created,
        (_, None) => Opened::Restored,
        (_, Some(why)) => Opened::Mismatch(why),
    };
    if opened != Opened::Restored {
        // Zero bytes are an empty table.
        file.set_len(0).map_err(err("clear"))?;
        file.set_len(size as u64).map_err(err("size"))?;
    }
    let mapping = map(file, size, path)?;
    if opened != Opened::Restored {
        // SAFETY: the mapping is at least a page and page-aligned, so a
        // `Header` fits at its start; no other process maps it (the lock)
        // and this table's arrays do not exist yet.
        let header = unsafe { &mut *mapping.header() };
        *header = Header {
            magic: [0; 8],
            generation: AtomicU64::new(0),
            ..want
        };
        std::sync::atomic::fence(Ordering::Release);
        header.magic = MAGIC;
    }
    Ok((mapping, opened))
}

/// Why the header of `file` does not describe the table `want`, if it does not.
fn read_mismatch(file: &File, want: &Header) -> io::Result<Option<String>> {
    use std::os::unix::fs::FileExt;
    let mut bytes = [0u8; std::mem::size_of::<Header>()];
    file.read_exact_at(&mut bytes, 0)?;
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
    let capacity = u64::from_ne_bytes(bytes[24..32].try_into().unwrap_or_default());
    let why = if bytes[..8] != want.magic {
        "not a podfence connection table".to_owned()
    } else if u32_at(8) != want.layout {
        format!(
            "layout version {}, this agent's is {}",
            u32_at(8),
            want.layout
        )
    } else if (u32_at(12), u32_at(16)) != (want.slot_bytes, want.nat_bytes) {
        format!(
            "slots of {}+{} bytes, this agent's are {}+{}",
            u32_at(12),
            u32_at(16),
            want.slot_bytes,
            want.nat_bytes
        )
    } else if u32_at(20) != want.clock {
        "stamped with another clock".to_owned()
    } else if capacity != want.capacity {
        format!(
            "{capacity} entries, this agent's table has {}",
            want.capacity
        )
    } else if bytes[32..72] != want.boot_id {
        "written before the last reboot".to_owned()
    } else {
        return Ok(None);
    };
    Ok(Some(why))
}

const _: () = {
    assert!(std::mem::offset_of!(Header, layout) == 8);
    assert!(std::mem::offset_of!(Header, slot_bytes) == 12);
    assert!(std::mem::offset_of!(Header, nat_bytes) == 16);
    assert!(std::mem::offset_of!(Header, clock) == 20);
    assert!(std::mem::offset_of!(Header, capacity) == 24);
    assert!(std::mem::offset_of!(Header, boot_id) == 32);
};

/// Takes the exclusive lock, retrying every 10 ms for up to `wait`.
fn lock(file: &File, path: &Path, wait: Duration) -> Result<(), StoreError> {
    let started = Instant::now();
    loop {
        // SAFETY: `file` is an open descriptor owned by the caller.
        let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if ret == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(StoreError::Io {
                path: path.to_owned(),
                op: "lock",
                source: e,
            });
        }
        if started.elapsed() >= wait {
            return Err(StoreError::Locked {
                path: path.to_owned(),
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn map(file: File, size: usize, path: &Path) -> Result<Mapping, StoreError> {
    // SAFETY: a fresh shared mapping of `size` bytes of an open file that
    // is at least that long; the kernel picks the address. MAP_POPULATE
    // faults the pages in now rather than on the first packets.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            file.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(StoreError::Io {
            path: path.to_owned(),
            op: "map",
            source: io::Error::last_os_error(),
        });
    }
    Ok(Mapping {
        base: NonNull::new(base.cast::<u8>()).ok_or_else(|| StoreError::Io {
            path: path.to_owned(),
            op: "map",
            source: io::Error::other("mmap returned a null address"),
        })?,
        len: size,
        path: path.to_owned(),
        _file: file,
    })
}

impl Mapping {
    /// `len` `T`s at byte `offset` of the mapping.
    ///
    /// # Safety
    /// `offset` must be aligned for `T`, `offset + len * size_of::<T>()`
    /// within the mapping, the bytes valid `T`s whatever they hold (atomics),
    /// and the array must be dropped before the mapping.
    pub(super) unsafe fn array<T>(&self, offset: usize, len: usize) -> Array<T> {
        debug_assert!(offset + len * std::mem::size_of::<T>() <= self.len);
        debug_assert!(offset.is_multiple_of(std::mem::align_of::<T>()));
        // SAFETY: within the mapping, per the caller.
        let ptr = unsafe { self.base.add(offset) }.cast::<T>();
        Array {
            ptr,
            len,
            boxed: false,
        }
    }

    /// The start of the mapping, where the header is.
    #[allow(
        clippy::cast_ptr_alignment,
        reason = "mmap returns a page-aligned address"
    )]
    fn header(&self) -> *mut Header {
        self.base.as_ptr().cast::<Header>()
    }

    /// The header's generation record.
    pub(super) fn generation(&self) -> &AtomicU64 {
        // SAFETY: the mapping starts with a `Header` (written by `open`),
        // aligned (page-aligned mapping) and alive as long as `self`; the
        // field is an atomic, only ever accessed as one.
        unsafe { &(*self.header()).generation }
    }

    /// The file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of a
/// boot, so entries stamped by one agent age correctly in the next.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes; CLOCK_MONOTONIC
    // always exists (the vDSO answers without a system call).
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}
