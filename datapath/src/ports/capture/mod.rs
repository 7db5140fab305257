//! Capture files: pcap and pcapng in, pcap out.
//!
//! `podfence replay` runs recorded traffic through the same worker loop as
//! the AF_XDP sockets, so a capture file has to look like any other [`Port`]:
//! [`CapturePort`] hands out batches of descriptors whose bytes live in one
//! reused buffer, exactly like frames in a UMEM. Captures come from anywhere
//! (tcpdump, Wireshark, `kubectl sniff`, fuzzers), so the reader treats the
//! file as hostile: it streams through a bounded buffer whatever the file's
//! size, never trusts a length field before checking it against a limit, and
//! reports the first inconsistency as a [`PortError::Format`] that names the
//! file and the byte offset, after delivering every frame that came before.
//!
//! The parsing is written here rather than taken from a crate: both formats
//! are a handful of fixed headers, and owning the loop is what lets the
//! reader keep the zero-copy, allocation-free batch contract of [`Port`].
//!
//! [`CaptureWriter`] writes the other direction (`replay --write-allowed`,
//! `--write-denied`): classic pcap with nanosecond timestamps, one link type
//! per file, which every tool reads.
//!
//! [`Port`]: super::Port
//! [`PortError::Format`]: super::PortError::Format

mod reader;
mod writer;

#[cfg(test)]
mod tests;

pub use reader::CapturePort;
pub use writer::CaptureWriter;

/// Default size of one read from the file, and the buffer's starting size.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;

/// Default limit on one frame's captured length: libpcap's largest snapshot
/// length (256 KiB). Nothing a NIC delivers is larger; a larger length field
/// is corruption.
pub const DEFAULT_MAX_CAPLEN: u32 = 256 * 1024;

/// Largest `max_caplen` accepted; larger requests are clamped, so that the
/// buffer stays bounded whatever the options say.
pub const MAX_CAPLEN_LIMIT: u32 = 64 << 20;

/// Limits of a [`CapturePort`].
///
/// The buffer starts at `chunk_size` bytes and grows (rarely, and never past
/// `max(chunk_size, max_caplen + 64)`) only when one record or interface
/// description does not fit in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Bytes read from the file at a time (at least 64).
    pub chunk_size: usize,
    /// Largest captured length of one frame; a record claiming more is a
    /// format error (at most [`MAX_CAPLEN_LIMIT`]).
    pub max_caplen: u32,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_caplen: DEFAULT_MAX_CAPLEN,
        }
    }
}
