//! Where packets come from and go to.
//!
//! A [`Port`] moves frames in batches into arrays the caller owns, the way
//! AF_XDP rings do: `recv` fills descriptors, `frame` lends the bytes of one
//! (valid until the next `recv` or `release`), `release` hands the batch's
//! buffers back (AF_XDP: to the fill ring), `send` transmits. The same worker
//! loop runs over AF_XDP sockets, capture files and in-memory traces.

use crate::link::LinkType;

pub mod capture;
pub mod memory;
pub mod wait;
mod xdp;
pub mod xsk;

/// Largest batch a worker asks for.
pub const MAX_BATCH: usize = 64;

/// One received frame: where its bytes are and what they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxDesc {
    /// Port-specific locator of the bytes (UMEM address, buffer offset).
    pub addr: u64,
    /// Bytes available (the captured length).
    pub len: u32,
    /// Length on the wire (captures may hold less than was sent).
    pub wire_len: u32,
    /// Receive time, nanoseconds since the Unix epoch (0 when unknown).
    pub timestamp_ns: u64,
    /// Framing.
    pub link: LinkType,
}

/// A transport checksum for the device to finish as the frame leaves (TX
/// checksum offload, `CHECKSUM_PARTIAL` in the kernel's terms): the
/// checksum field at `start + offset` holds the folded pseudo-header sum,
/// not complemented, and the device stores there the complement of the
/// one's complement sum of the bytes from `start` to the end of the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChecksumRequest {
    /// Where the summed bytes begin: the transport header's offset from
    /// the frame's first byte.
    pub start: u16,
    /// Where the checksum field is, from `start` (TCP 16, UDP 6).
    pub offset: u16,
}

/// Counters every port keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Frames that could not be transmitted (ring full, too long).
    pub tx_dropped: u64,
    /// Received frames dropped because they span more buffers than the
    /// port makes contiguous (longer than its largest frame).
    pub rx_oversize: u64,
    /// Frames not transmitted because they are longer than the port's
    /// largest frame (also counted in `tx_dropped`).
    pub tx_oversize: u64,
}

/// Why a port failed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// An I/O error of the underlying file or socket.
    #[error("{port}: {source}")]
    Io {
        /// The port's name.
        port: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The input is not what the port reads (e.g. a corrupt capture file).
    #[error("{port}: {message}")]
    Format {
        /// The port's name.
        port: String,
        /// What is wrong, and where.
        message: String,
    },
    /// The port cannot do this (e.g. transmit on a capture file).
    #[error("{port}: {operation} is not supported")]
    Unsupported {
        /// The port's name.
        port: String,
        /// What was asked.
        operation: &'static str,
    },
}

/// A batched source and sink of frames.
pub trait Port: Send {
    /// A name for messages (interface, file).
    fn name(&self) -> &str;

    /// Receives up to `descs.len()` frames into `descs`; returns how many.
    /// `Ok(0)` means nothing right now, or, when [`Port::finished`], ever.
    /// Frames of the previous batch must have been released.
    fn recv(&mut self, descs: &mut [RxDesc]) -> Result<usize, PortError>;

    /// The bytes of a frame of the current batch.
    fn frame(&self, desc: &RxDesc) -> &[u8];

    /// Gives the buffers of the current batch back.
    fn release(&mut self, descs: &[RxDesc]);

    /// Transmits frames; returns how many were accepted.
    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, PortError>;

    /// Whether the port has the device finish checksums of frames sent with
    /// [`Port::send_offloaded`]. Without it, a sender finishes them itself.
    fn checksum_offload(&self) -> bool {
        false
    }

    /// Transmits frames like [`Port::send`], each with the checksum it
    /// leaves to the device (`requests[i]` for `frames[i]`; missing entries
    /// mean none). A port without [`Port::checksum_offload`] refuses
    /// requests.
    fn send_offloaded(
        &mut self,
        frames: &[&[u8]],
        requests: &[Option<ChecksumRequest>],
    ) -> Result<usize, PortError> {
        if requests.iter().any(Option::is_some) {
            return Err(PortError::Unsupported {
                port: self.name().to_owned(),
                operation: "checksum offload",
            });
        }
        self.send(frames)
    }

    /// Whether the port will never receive again (end of a capture or trace).
    fn finished(&self) -> bool {
        false
    }

    /// Counters.
    fn stats(&self) -> PortStats;
}
