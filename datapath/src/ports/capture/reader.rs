//! The streaming pcap / pcapng reader behind [`CapturePort`].
//!
//! One buffer, read in chunks: `start..end` is what has been read and not yet
//! parsed. A batch hands out offsets into the buffer, so the buffer is only
//! compacted (unparsed tail moved to the front) or grown at the beginning of
//! a batch, never while frames of the batch are lent out; when a record does
//! not fit behind frames already handed out, the batch simply ends early.
//!
//! Every step of the parser either consumes bytes, reads bytes, or ends the
//! file (cleanly or with an error), so no input makes it loop forever. Length
//! fields are checked against limits before anything is sized from them.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::{CaptureOptions, MAX_CAPLEN_LIMIT};
use crate::link::LinkType;
use crate::ports::{Port, PortError, PortStats, RxDesc};

const PCAP_MICRO: u32 = 0xa1b2_c3d4;
const PCAP_NANO: u32 = 0xa1b2_3c4d;
const PCAP_HEADER_LEN: usize = 24;
const PCAP_RECORD_LEN: usize = 16;

/// The Section Header Block's type: the same bytes in either byte order.
const SHB_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const IDB: u32 = 1;
const OPB: u32 = 2;
const SPB: u32 = 3;
const EPB: u32 = 6;
/// Type and length in front of every block, and the length again behind it.
const BLOCK_OVERHEAD: u32 = 12;
/// Fixed part of an Enhanced (and Obsolete) Packet Block before the data.
const EPB_FIXED: usize = 28;
/// Fixed part of a Simple Packet Block before the data.
const SPB_FIXED: usize = 12;
/// Interfaces one section may describe; more is treated as corruption, so
/// that the per-section table stays bounded.
const MAX_INTERFACES: usize = 4096;
/// Headroom beyond `max_caplen` for a record's or block's fixed fields.
const HEADER_ROOM: usize = 64;

const SUPPORTED: &str = "podfence reads Ethernet (1), raw IP (12, 14, 101, 228, 229), \
                         Linux SLL (113) and Linux SLL2 (276)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Little,
    Big,
}

impl Order {
    /// The `u16` at `at`; 0 if `b` is too short (callers check lengths first,
    /// this only keeps a logic error from becoming a panic).
    fn u16(self, b: &[u8], at: usize) -> u16 {
        match b.get(at..at + 2) {
            Some(&[x, y]) => match self {
                Self::Little => u16::from_le_bytes([x, y]),
                Self::Big => u16::from_be_bytes([x, y]),
            },
            _ => 0,
        }
    }

    /// The `u32` at `at`; 0 if `b` is too short (see [`Self::u16`]).
    fn u32(self, b: &[u8], at: usize) -> u32 {
        match b.get(at..at + 4).and_then(|s| <[u8; 4]>::try_from(s).ok()) {
            Some(bytes) => match self {
                Self::Little => u32::from_le_bytes(bytes),
                Self::Big => u32::from_be_bytes(bytes),
            },
            None => 0,
        }
    }

    fn u64(self, b: &[u8], at: usize) -> u64 {
        let (hi, lo) = match self {
            Self::Little => (self.u32(b, at + 4), self.u32(b, at)),
            Self::Big => (self.u32(b, at), self.u32(b, at + 4)),
        };
        (u64::from(hi) << 32) | u64::from(lo)
    }
}

/// A pcapng interface's timestamp unit (`if_tsresol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TsUnit {
    /// 10^-n seconds.
    Pow10(u8),
    /// 2^-n seconds.
    Pow2(u8),
}

impl TsUnit {
    fn from_option(v: u8) -> Self {
        if v & 0x80 == 0 {
            Self::Pow10(v)
        } else {
            Self::Pow2(v & 0x7f)
        }
    }

    /// Nanoseconds in `units` of this unit (saturating).
    fn to_ns(self, units: u64) -> u64 {
        match self {
            Self::Pow10(6) => units.saturating_mul(1000),
            Self::Pow10(n) if n <= 9 => units.saturating_mul(10u64.pow(u32::from(9 - n))),
            Self::Pow10(n) => match 10u64.checked_pow(u32::from(n - 9)) {
                Some(d) => units / d,
                None => 0,
            },
            Self::Pow2(n) => {
                let ns = (u128::from(units) * 1_000_000_000) >> n;
                u64::try_from(ns).unwrap_or(u64::MAX)
            }
        }
    }
}

/// What a pcapng section says about one interface.
#[derive(Clone, Copy, Debug)]
struct Interface {
    /// The link-type number, for messages.
    linktype: u16,
    /// Its framing, if podfence reads it.
    link: Option<LinkType>,
    /// 0: no limit.
    snaplen: u32,
    unit: TsUnit,
    /// `if_tsoffset`: seconds added to every timestamp.
    offset_s: i64,
}

impl Interface {
    fn timestamp_ns(&self, units: u64) -> u64 {
        let ns = self.unit.to_ns(units);
        if self.offset_s == 0 {
            return ns;
        }
        let shifted = i128::from(ns) + i128::from(self.offset_s) * 1_000_000_000;
        u64::try_from(shifted.max(0)).unwrap_or(u64::MAX)
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Pcap {
        order: Order,
        nanos: bool,
        link: LinkType,
    },
    Pcapng,
}

/// What one parser step did.
enum Step {
    /// A frame, consumed.
    Frame(RxDesc),
    /// Bytes consumed, no frame (a header, a skipped block, part of one).
    Continue,
    /// At least this many bytes from `start` must be buffered to go on.
    Need(usize),
    /// (Only when peeking.) The next block is a valid packet; not consumed.
    PacketAhead,
    /// Clean end of file.
    End,
}

/// A [`Port`] over a pcap or pcapng file (or any byte stream holding one).
///
/// * pcap: microsecond and nanosecond magic, either byte order. A record's
///   captured length is checked against the port's `max_caplen` (default
///   256 KiB).
/// * pcapng: any number of sections, each in either byte order; Interface
///   Description Blocks (link type, snapshot length, `if_tsresol`,
///   `if_tsoffset`); Enhanced, Simple and Obsolete Packet Blocks; every
///   other block is skipped by its length (streamed past, so its size does
///   not matter), and every block's trailing length is checked.
///
/// A captured length above the snapshot length of the file (pcap) or the
/// interface (pcapng EPB, OPB) is accepted and the frame delivered whole:
/// such files exist (77 records of tcpdump's test captures), libpcap reads
/// them too (cutting the frame to the snapshot length), the bytes are in the
/// file, and the block length still bounds them. A Simple Packet Block holds
/// min(original length, snapshot length) bytes; if its block is shorter,
/// that is a format error, as in libpcap.
///
/// Link types are those of [`LinkType::from_pcap`]. A pcap file of another
/// link type fails to open. In pcapng an interface of another link type is
/// accepted as long as no packet refers to it; the first packet that does
/// ends the file with a [`PortError::Format`] naming the interface and the
/// link type (podfence cannot classify it, and silently skipping traffic
/// would make a replay's verdicts lie). When the first packet block of the
/// file is such a packet, [`CapturePort::open`] already fails.
///
/// Any inconsistency (truncated header, record or block, a length over the
/// limit, a block length that is not a multiple of 4 or below the block's
/// minimum, a trailing length that differs, an unknown magic) is a
/// [`PortError::Format`] with the byte offset in its message. Frames read
/// before it are delivered first; the error comes from the `recv` after, and
/// then the port is [`finished`](Port::finished). A read error of the
/// underlying stream is a [`PortError::Io`], reported the same way.
///
/// `recv` fills [`RxDesc::addr`] with an offset into the port's buffer; the
/// bytes stay valid until the next `recv`. [`Port::send`] is unsupported.
pub struct CapturePort {
    name: String,
    reader: Box<dyn Read + Send>,
    buf: Vec<u8>,
    /// First unparsed byte.
    start: usize,
    /// End of the bytes read.
    end: usize,
    /// File offset of `buf[0]`.
    base: u64,
    /// The reader reported end of file.
    eof: bool,
    /// No more frames will come (end of file, or an error).
    done: bool,
    /// An error found after frames of the same batch; returned next.
    pending: Option<PortError>,
    max_caplen: u32,
    max_buf: usize,
    kind: Kind,
    /// pcapng: the current section's byte order.
    order: Order,
    /// pcapng: the current section's interfaces.
    interfaces: Vec<Interface>,
    /// pcapng: bytes of the current block still to stream past.
    skip: u64,
    /// pcapng: after `skip`, the block's trailing length must equal this
    /// (length, block offset).
    trailer: Option<(u32, u64)>,
    /// A read error met while reading ahead, returned when the bytes are
    /// actually needed (the frames buffered before it come first).
    deferred: Option<io::Error>,
    stats: PortStats,
}

impl fmt::Debug for CapturePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapturePort")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("offset", &self.offset())
            .field("buffer", &self.buf.len())
            .field("done", &self.done)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl CapturePort {
    /// Opens a capture file with the default limits; reads its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PortError> {
        Self::open_with(path, CaptureOptions::default())
    }

    /// Opens a capture file with the given limits; reads its header.
    pub fn open_with(path: impl AsRef<Path>, options: CaptureOptions) -> Result<Self, PortError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        match File::open(path) {
            Ok(file) => Self::from_reader_with(name, file, options),
            Err(source) => Err(PortError::Io { port: name, source }),
        }
    }

    /// A port over a stream holding a capture file, named `name` in messages.
    pub fn from_reader(
        name: impl Into<String>,
        reader: impl Read + Send + 'static,
    ) -> Result<Self, PortError> {
        Self::from_reader_with(name, reader, CaptureOptions::default())
    }

    /// [`Self::from_reader`] with the given limits.
    pub fn from_reader_with(
        name: impl Into<String>,
        reader: impl Read + Send + 'static,
        options: CaptureOptions,
    ) -> Result<Self, PortError> {
        let chunk = options.chunk_size.max(HEADER_ROOM);
        let max_caplen = options.max_caplen.min(MAX_CAPLEN_LIMIT);
        let mut port = Self {
            name: name.into(),
            reader: Box::new(reader),
            buf: vec![0; chunk],
            start: 0,
            end: 0,
            base: 0,
            eof: false,
            done: false,
            pending: None,
            max_caplen,
            max_buf: chunk.max(max_caplen as usize + HEADER_ROOM),
            kind: Kind::Pcapng,
            order: Order::Little,
            interfaces: Vec::new(),
            skip: 0,
            trailer: None,
            deferred: None,
            stats: PortStats::default(),
        };
        port.read_header()?;
        Ok(port)
    }

    /// Whether the file is pcapng (else classic pcap).
    #[must_use]
    pub fn is_pcapng(&self) -> bool {
        matches!(self.kind, Kind::Pcapng)
    }

    /// The link type of a classic pcap file (pcapng: per interface, `None`).
    #[must_use]
    pub fn pcap_link(&self) -> Option<LinkType> {
        match self.kind {
            Kind::Pcap { link, .. } => Some(link),
            Kind::Pcapng => None,
        }
    }

    /// File offset of the next unparsed byte.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    /// (Tests.) The buffer's current size (it grows only for records larger than it).
    #[cfg(test)]
    pub(super) fn buffer_len(&self) -> usize {
        self.buf.len()
    }

    fn avail(&self) -> usize {
        self.end - self.start
    }

    fn format_error(&self, message: String) -> PortError {
        PortError::Format {
            port: self.name.clone(),
            message,
        }
    }

    fn read_header(&mut self) -> Result<(), PortError> {
        self.ensure(4)?;
        let avail = self.avail();
        if avail < 4 {
            return Err(self.format_error(format!(
                "truncated file header at offset 0: {avail} bytes, not a pcap or pcapng file"
            )));
        }
        let b = &self.buf[..4];
        if b == SHB_MAGIC {
            self.kind = Kind::Pcapng;
            return self.prime();
        }
        let le = Order::Little.u32(b, 0);
        let (order, nanos) = if le == PCAP_MICRO || le == PCAP_NANO {
            (Order::Little, le == PCAP_NANO)
        } else {
            let be = Order::Big.u32(b, 0);
            if be == PCAP_MICRO || be == PCAP_NANO {
                (Order::Big, be == PCAP_NANO)
            } else {
                return Err(self.format_error(format!(
                    "unknown magic {be:#010x} at offset 0: not a pcap or pcapng file"
                )));
            }
        };
        self.ensure(PCAP_HEADER_LEN)?;
        let avail = self.avail();
        if avail < PCAP_HEADER_LEN {
            return Err(self.format_error(format!(
                "truncated pcap file header at offset 0: {avail} of {PCAP_HEADER_LEN} bytes"
            )));
        }
        let b = &self.buf[..PCAP_HEADER_LEN];
        let major = order.u16(b, 4);
        let minor = order.u16(b, 6);
        if major != 2 {
            return Err(self.format_error(format!(
                "pcap version {major}.{minor} at offset 4 (expected 2.x)"
            )));
        }
        // The upper bits carry FCS information; the link type is the low 16.
        let linktype = order.u32(b, 20) & 0xffff;
        let Some(link) = LinkType::from_pcap(linktype) else {
            return Err(self.format_error(format!(
                "link type {linktype} is not supported ({SUPPORTED})"
            )));
        };
        self.kind = Kind::Pcap { order, nanos, link };
        self.start = PCAP_HEADER_LEN;
        Ok(())
    }

    /// pcapng: processes blocks up to the first packet (which is checked but
    /// not consumed), so that `open` fails for files that cannot be read.
    fn prime(&mut self) -> Result<(), PortError> {
        loop {
            match self.step_pcapng(true)? {
                Step::Continue => {}
                Step::Need(k) => self.ensure(k)?,
                // Peeking never yields (consumes) a frame; either way the
                // packet stays for the first `recv`.
                Step::PacketAhead | Step::Frame(_) => return Ok(()),
                Step::End => {
                    self.done = true;
                    return Ok(());
                }
            }
        }
    }

    /// Moves the unparsed bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// One read into the free tail of the buffer. Sets `eof` on end of file.
    fn read_some(&mut self) -> Result<(), PortError> {
        loop {
            let free = &mut self.buf[self.end..];
            if free.is_empty() {
                return Ok(());
            }
            let cap = free.len();
            match self.reader.read(free) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n.min(cap);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(PortError::Io {
                        port: self.name.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Makes at least `k` bytes available from `start`, or reaches end of
    /// file. Invalidates lent frames (compacts, may grow the buffer).
    fn ensure(&mut self, k: usize) -> Result<(), PortError> {
        if self.avail() >= k || self.eof {
            return Ok(());
        }
        if let Some(source) = self.deferred.take() {
            return Err(PortError::Io {
                port: self.name.clone(),
                source,
            });
        }
        if k > self.max_buf {
            // Callers check lengths against the limits first; this is a guard.
            return Err(self.format_error(format!(
                "record at offset {} needs {k} bytes, more than the buffer limit {}",
                self.offset(),
                self.max_buf
            )));
        }
        self.compact();
        if k > self.buf.len() {
            let grown = k.max(self.buf.len().saturating_mul(2)).min(self.max_buf);
            self.buf.resize(grown, 0);
        }
        while self.avail() < k && !self.eof {
            self.read_some()?;
        }
        Ok(())
    }

    /// At the start of a batch: when little is buffered, compact and read, so
    /// that batches are not cut short at the buffer's end.
    fn top_up(&mut self) {
        if self.eof || self.deferred.is_some() || self.avail() >= self.buf.len() / 16 {
            return;
        }
        self.compact();
        if let Err(PortError::Io { source, .. }) = self.read_some() {
            self.deferred = Some(source);
        }
    }

    fn step(&mut self) -> Result<Step, PortError> {
        match self.kind {
            Kind::Pcap { order, nanos, link } => self.step_pcap(order, nanos, link),
            Kind::Pcapng => self.step_pcapng(false),
        }
    }

    fn step_pcap(&mut self, order: Order, nanos: bool, link: LinkType) -> Result<Step, PortError> {
        let avail = self.avail();
        if avail < PCAP_RECORD_LEN {
            if !self.eof {
                return Ok(Step::Need(PCAP_RECORD_LEN));
            }
            if avail == 0 {
                return Ok(Step::End);
            }
            return Err(self.format_error(format!(
                "truncated record header at offset {}: {avail} of {PCAP_RECORD_LEN} bytes",
                self.offset()
            )));
        }
        let b = &self.buf[self.start..self.start + PCAP_RECORD_LEN];
        let secs = order.u32(b, 0);
        let frac = order.u32(b, 4);
        let caplen = order.u32(b, 8);
        let wire_len = order.u32(b, 12);
        if caplen > self.max_caplen {
            return Err(self.format_error(format!(
                "record at offset {}: captured length {caplen} exceeds the maximum {}",
                self.offset(),
                self.max_caplen
            )));
        }
        let total = PCAP_RECORD_LEN + caplen as usize;
        if avail < total {
            if !self.eof {
                return Ok(Step::Need(total));
            }
            return Err(self.format_error(format!(
                "truncated record at offset {}: captured length {caplen}, but the file ends \
                 after {} bytes of it",
                self.offset(),
                avail - PCAP_RECORD_LEN
            )));
        }
        let frac_ns = if nanos {
            u64::from(frac)
        } else {
            u64::from(frac) * 1000
        };
        let desc = RxDesc {
            addr: (self.start + PCAP_RECORD_LEN) as u64,
            len: caplen,
            wire_len,
            timestamp_ns: u64::from(secs) * 1_000_000_000 + frac_ns,
            link,
        };
        self.start += total;
        Ok(Step::Frame(desc))
    }

    fn truncated_block(&self, block_offset: u64) -> PortError {
        self.format_error(format!(
            "truncated block at offset {block_offset}: the file ends at offset {}",
            self.offset() + self.avail() as u64
        ))
    }

    fn bad_trailer(&self, block_offset: u64, leading: u32, trailing: u32) -> PortError {
        self.format_error(format!(
            "block at offset {block_offset}: trailing length {trailing} differs from its \
             length {leading}"
        ))
    }

    /// Finishes a block of which `consumed` bytes (at most `len - 4`) have
    /// been parsed: consumes the rest now if it is buffered, else streams
    /// past it and checks the trailing length later.
    fn finish_block(
        &mut self,
        consumed: usize,
        len: u32,
        block_offset: u64,
    ) -> Result<(), PortError> {
        let len_us = len as usize;
        if self.avail() >= len_us {
            let trailing = self.order.u32(&self.buf, self.start + len_us - 4);
            if trailing != len {
                return Err(self.bad_trailer(block_offset, len, trailing));
            }
            self.start += len_us;
        } else {
            self.start += consumed;
            self.skip = (len_us - consumed - 4) as u64;
            self.trailer = Some((len, block_offset));
        }
        Ok(())
    }

    /// Needs `k` bytes of the block at `block_offset` buffered.
    fn need(&self, k: usize, block_offset: u64) -> Result<Option<Step>, PortError> {
        if self.avail() >= k {
            Ok(None)
        } else if self.eof {
            Err(self.truncated_block(block_offset))
        } else {
            Ok(Some(Step::Need(k)))
        }
    }

    fn step_pcapng(&mut self, peek: bool) -> Result<Step, PortError> {
        if self.skip > 0 {
            let k = self.skip.min(self.avail() as u64);
            self.start += k as usize;
            self.skip -= k;
            if self.skip == 0 {
                return Ok(Step::Continue);
            }
            let block_offset = self.trailer.map_or(0, |(_, o)| o);
            return match self.need(1, block_offset)? {
                Some(step) => Ok(step),
                None => Ok(Step::Continue),
            };
        }
        if let Some((len, block_offset)) = self.trailer {
            if let Some(step) = self.need(4, block_offset)? {
                return Ok(step);
            }
            let trailing = self.order.u32(&self.buf, self.start);
            if trailing != len {
                return Err(self.bad_trailer(block_offset, len, trailing));
            }
            self.start += 4;
            self.trailer = None;
            return Ok(Step::Continue);
        }
        let off = self.offset();
        if self.avail() == 0 && self.eof {
            return Ok(Step::End);
        }
        if let Some(step) = self.need(8, off)? {
            return Ok(step);
        }
        if self.buf[self.start..self.start + 4] == SHB_MAGIC {
            return self.section_header(off);
        }
        let b = &self.buf[self.start..self.end];
        let order = self.order;
        let btype = order.u32(b, 0);
        let len = order.u32(b, 4);
        let min = match btype {
            IDB => 20,
            EPB | OPB => 32,
            SPB => 16,
            _ => BLOCK_OVERHEAD,
        };
        if !len.is_multiple_of(4) || len < min {
            return Err(self.format_error(format!(
                "block of type {btype:#x} at offset {off}: length {len} is {}",
                if len.is_multiple_of(4) {
                    format!("below the minimum {min}")
                } else {
                    "not a multiple of 4".to_owned()
                }
            )));
        }
        match btype {
            IDB => self.interface_description(off, len),
            EPB | OPB => self.packet_block(off, btype, len, peek),
            SPB => self.simple_packet_block(off, len, peek),
            _ => {
                self.finish_block(8, len, off)?;
                Ok(Step::Continue)
            }
        }
    }

    fn section_header(&mut self, off: u64) -> Result<Step, PortError> {
        if let Some(step) = self.need(16, off)? {
            return Ok(step);
        }
        let b = &self.buf[self.start..self.start + 16];
        let order = if Order::Big.u32(b, 8) == BYTE_ORDER_MAGIC {
            Order::Big
        } else if Order::Little.u32(b, 8) == BYTE_ORDER_MAGIC {
            Order::Little
        } else {
            let bom = Order::Big.u32(b, 8);
            return Err(self.format_error(format!(
                "section header at offset {off}: byte-order magic {bom:#010x} is not \
                 0x1a2b3c4d in either byte order"
            )));
        };
        let len = order.u32(b, 4);
        if !len.is_multiple_of(4) || len < 28 {
            return Err(self.format_error(format!(
                "section header at offset {off}: length {len} is {}",
                if len.is_multiple_of(4) {
                    "below the minimum 28"
                } else {
                    "not a multiple of 4"
                }
            )));
        }
        let major = order.u16(b, 12);
        let minor = order.u16(b, 14);
        if major != 1 {
            return Err(self.format_error(format!(
                "section header at offset {off}: pcapng version {major}.{minor} (expected 1.x)"
            )));
        }
        self.order = order;
        self.interfaces.clear();
        self.finish_block(16, len, off)?;
        Ok(Step::Continue)
    }

    fn interface_description(&mut self, off: u64, len: u32) -> Result<Step, PortError> {
        let len_us = len as usize;
        if len_us > self.max_buf {
            return Err(self.format_error(format!(
                "interface description at offset {off}: length {len} exceeds the maximum {}",
                self.max_buf
            )));
        }
        if let Some(step) = self.need(len_us, off)? {
            return Ok(step);
        }
        if self.interfaces.len() >= MAX_INTERFACES {
            return Err(self.format_error(format!(
                "interface description at offset {off}: more than {MAX_INTERFACES} interfaces \
                 in one section"
            )));
        }
        let order = self.order;
        let b = &self.buf[self.start..self.start + len_us];
        let linktype = order.u16(b, 8);
        let snaplen = order.u32(b, 12);
        let mut iface = Interface {
            linktype,
            link: LinkType::from_pcap(u32::from(linktype)),
            snaplen,
            unit: TsUnit::Pow10(6),
            offset_s: 0,
        };
        let opts_end = len_us - 4;
        let mut pos = 16;
        while pos + 4 <= opts_end {
            let code = order.u16(b, pos);
            let olen = usize::from(order.u16(b, pos + 2));
            if code == 0 {
                break;
            }
            let padded = (olen + 3) & !3;
            if pos + 4 + padded > opts_end {
                let at = off + pos as u64;
                return Err(self.format_error(format!(
                    "interface description at offset {off}: option {code} at offset {at} \
                     (length {olen}) overruns the block"
                )));
            }
            match (code, olen) {
                (9, 1) => iface.unit = TsUnit::from_option(b[pos + 4]),
                (14, 8) => iface.offset_s = order.u64(b, pos + 4).cast_signed(),
                _ => {}
            }
            pos += 4 + padded;
        }
        let trailing = order.u32(b, opts_end);
        if trailing != len {
            return Err(self.bad_trailer(off, len, trailing));
        }
        self.interfaces.push(iface);
        self.start += len_us;
        Ok(Step::Continue)
    }

    /// The interface a packet block refers to, if it exists and is readable.
    fn interface(&self, off: u64, id: u32) -> Result<Interface, PortError> {
        let Some(iface) = self.interfaces.get(id as usize) else {
            return Err(self.format_error(format!(
                "packet block at offset {off} refers to interface {id}, but the section \
                 describes {}",
                self.interfaces.len()
            )));
        };
        if iface.link.is_none() {
            return Err(self.format_error(format!(
                "packet block at offset {off}: interface {id} has link type {}, which is not \
                 supported ({SUPPORTED})",
                iface.linktype
            )));
        }
        Ok(*iface)
    }

    fn caplen_error(&self, off: u64, what: &str, caplen: u32, limit: u32) -> PortError {
        self.format_error(format!(
            "{what} at offset {off}: captured length {caplen} exceeds the maximum {limit}"
        ))
    }

    /// Enhanced and Obsolete Packet Blocks (same layout but for the
    /// interface field's width).
    fn packet_block(
        &mut self,
        off: u64,
        btype: u32,
        len: u32,
        peek: bool,
    ) -> Result<Step, PortError> {
        if let Some(step) = self.need(EPB_FIXED, off)? {
            return Ok(step);
        }
        let order = self.order;
        let b = &self.buf[self.start..self.start + EPB_FIXED];
        let id = if btype == EPB {
            order.u32(b, 8)
        } else {
            u32::from(order.u16(b, 8))
        };
        let units = (u64::from(order.u32(b, 12)) << 32) | u64::from(order.u32(b, 16));
        let caplen = order.u32(b, 20);
        let wire_len = order.u32(b, 24);
        let what = if btype == EPB {
            "enhanced packet block"
        } else {
            "packet block"
        };
        if caplen > self.max_caplen {
            return Err(self.caplen_error(off, what, caplen, self.max_caplen));
        }
        let padded = (u64::from(caplen) + 3) & !3;
        if EPB_FIXED as u64 + padded + 4 > u64::from(len) {
            return Err(self.format_error(format!(
                "{what} at offset {off}: captured length {caplen} does not fit in block \
                 length {len}"
            )));
        }
        let iface = self.interface(off, id)?;
        if peek {
            return Ok(Step::PacketAhead);
        }
        let data_end = EPB_FIXED + caplen as usize;
        if let Some(step) = self.need(data_end, off)? {
            return Ok(step);
        }
        let desc = RxDesc {
            addr: (self.start + EPB_FIXED) as u64,
            len: caplen,
            wire_len,
            timestamp_ns: iface.timestamp_ns(units),
            link: iface.link.unwrap_or_default(),
        };
        self.finish_block(data_end, len, off)?;
        Ok(Step::Frame(desc))
    }

    fn simple_packet_block(&mut self, off: u64, len: u32, peek: bool) -> Result<Step, PortError> {
        if let Some(step) = self.need(SPB_FIXED, off)? {
            return Ok(step);
        }
        let wire_len = self.order.u32(&self.buf, self.start + 8);
        let iface = self.interface(off, 0)?;
        // The block holds min(original length, snaplen) bytes, padded; it
        // has no captured length of its own.
        let caplen = match iface.snaplen {
            0 => wire_len,
            snaplen => wire_len.min(snaplen),
        };
        if caplen > self.max_caplen {
            return Err(self.caplen_error(off, "simple packet block", caplen, self.max_caplen));
        }
        if caplen > len - 16 {
            return Err(self.format_error(format!(
                "simple packet block at offset {off}: captured length {caplen} does not fit \
                 in block length {len}"
            )));
        }
        if peek {
            return Ok(Step::PacketAhead);
        }
        let data_end = SPB_FIXED + caplen as usize;
        if let Some(step) = self.need(data_end, off)? {
            return Ok(step);
        }
        let desc = RxDesc {
            addr: (self.start + SPB_FIXED) as u64,
            len: caplen,
            wire_len,
            timestamp_ns: 0,
            link: iface.link.unwrap_or_default(),
        };
        self.finish_block(data_end, len, off)?;
        Ok(Step::Frame(desc))
    }
}

impl Port for CapturePort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, descs: &mut [RxDesc]) -> Result<usize, PortError> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        if self.done || descs.is_empty() {
            return Ok(0);
        }
        self.top_up();
        let mut n = 0;
        while n < descs.len() {
            match self.step() {
                Ok(Step::Frame(d)) => {
                    descs[n] = d;
                    n += 1;
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += u64::from(d.len);
                }
                Ok(Step::Continue | Step::PacketAhead) => {}
                Ok(Step::Need(k)) => {
                    if n > 0 {
                        // Lent frames pin the buffer; the next batch moves it.
                        break;
                    }
                    if let Err(e) = self.ensure(k) {
                        self.done = true;
                        return Err(e);
                    }
                }
                Ok(Step::End) => {
                    self.done = true;
                    break;
                }
                Err(e) => {
                    self.done = true;
                    if n == 0 {
                        return Err(e);
                    }
                    self.pending = Some(e);
                    break;
                }
            }
        }
        Ok(n)
    }

    fn frame(&self, desc: &RxDesc) -> &[u8] {
        let start = usize::try_from(desc.addr).unwrap_or(usize::MAX);
        start
            .checked_add(desc.len as usize)
            .and_then(|end| self.buf.get(start..end))
            .unwrap_or(&[])
    }

    fn release(&mut self, _descs: &[RxDesc]) {}

    fn send(&mut self, _frames: &[&[u8]]) -> Result<usize, PortError> {
        Err(PortError::Unsupported {
            port: self.name.clone(),
            operation: "send",
        })
    }

    fn finished(&self) -> bool {
        self.done && self.pending.is_none()
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

#[cfg(test)]
pub(super) mod tests_support {
    /// Nanoseconds in `units` of the pcapng `if_tsresol` value `tsresol`.
    pub(in crate::ports::capture) fn ns(tsresol: u8, units: u64) -> u64 {
        super::TsUnit::from_option(tsresol).to_ns(units)
    }
}
