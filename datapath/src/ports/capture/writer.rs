//! Writing classic pcap files.
//!
//! Classic pcap rather than pcapng: every tool reads it, and a replay's
//! output (allowed or denied frames of one input) has one link type anyway.
//! Nanosecond magic, so the timestamps of the input survive a round trip.
//! The file is written little-endian whatever the host, so the same frames
//! give the same bytes everywhere.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::{DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CAPLEN};
use crate::link::LinkType;
use crate::ports::PortError;

const PCAP_NANO: u32 = 0xa1b2_3c4d;

/// Writes frames to a pcap file (nanosecond timestamps, one link type).
///
/// Every frame must be of the link type given at creation; the writer cannot
/// check that (it does not parse frames), and a frame of another framing
/// would be misread by whoever reads the file. Callers that read frames of
/// several link types (a pcapng file with several interfaces) keep one writer
/// per link type.
///
/// Frames longer than the snapshot length written in the header (256 KiB,
/// the largest any capture holds) are truncated to it; the wire length
/// recorded is never less than the bytes written.
///
/// Output is buffered; [`CaptureWriter::finish`] flushes it and reports the
/// errors a drop would swallow.
pub struct CaptureWriter<W: Write = BufWriter<File>> {
    name: String,
    out: W,
    link: LinkType,
    frames: u64,
}

impl<W: Write> fmt::Debug for CaptureWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureWriter")
            .field("name", &self.name)
            .field("link", &self.link)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl CaptureWriter<BufWriter<File>> {
    /// Creates (or truncates) the file at `path` and writes the file header.
    pub fn create(path: impl AsRef<Path>, link: LinkType) -> Result<Self, PortError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        match File::create(path) {
            Ok(file) => Self::new(
                name,
                BufWriter::with_capacity(DEFAULT_CHUNK_SIZE, file),
                link,
            ),
            Err(source) => Err(PortError::Io { port: name, source }),
        }
    }
}

impl<W: Write> CaptureWriter<W> {
    /// A writer into `out` (named `name` in messages); writes the file
    /// header. `out` should be buffered ([`Self::create`] does that).
    pub fn new(name: impl Into<String>, out: W, link: LinkType) -> Result<Self, PortError> {
        let mut w = Self {
            name: name.into(),
            out,
            link,
            frames: 0,
        };
        let mut header = [0u8; 24];
        header[0..4].copy_from_slice(&PCAP_NANO.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes());
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone and sigfigs: 0.
        header[16..20].copy_from_slice(&DEFAULT_MAX_CAPLEN.to_le_bytes());
        header[20..24].copy_from_slice(&link.to_pcap().to_le_bytes());
        w.put(&header)?;
        Ok(w)
    }

    /// The link type every frame must have.
    #[must_use]
    pub fn link(&self) -> LinkType {
        self.link
    }

    /// Frames written so far.
    #[must_use]
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Appends one frame that was `wire_len` bytes on the wire, received at
    /// `timestamp_ns` (nanoseconds since the Unix epoch; times past the year
    /// 2106, which pcap cannot express, are written as its last second).
    pub fn write(
        &mut self,
        frame: &[u8],
        wire_len: u32,
        timestamp_ns: u64,
    ) -> Result<(), PortError> {
        let caplen = u32::try_from(frame.len())
            .unwrap_or(u32::MAX)
            .min(DEFAULT_MAX_CAPLEN);
        let (secs, nanos) = match u32::try_from(timestamp_ns / 1_000_000_000) {
            Ok(secs) => (secs, (timestamp_ns % 1_000_000_000) as u32),
            Err(_) => (u32::MAX, 999_999_999),
        };
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&secs.to_le_bytes());
        header[4..8].copy_from_slice(&nanos.to_le_bytes());
        header[8..12].copy_from_slice(&caplen.to_le_bytes());
        header[12..16].copy_from_slice(&wire_len.max(caplen).to_le_bytes());
        self.put(&header)?;
        self.put(&frame[..caplen as usize])?;
        self.frames += 1;
        Ok(())
    }

    /// Flushes everything written and returns the output.
    pub fn finish(mut self) -> Result<W, PortError> {
        match self.out.flush() {
            Ok(()) => Ok(self.out),
            Err(source) => Err(PortError::Io {
                port: self.name,
                source,
            }),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), PortError> {
        self.out.write_all(bytes).map_err(|source| PortError::Io {
            port: self.name.clone(),
            source,
        })
    }
}
