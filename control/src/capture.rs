//! Denied packets to pcapng files that tcpdump and Wireshark read, each
//! packet with its decision as a comment; the file rotates by size.
//!
//! Each file is one section: a section header, two interfaces (Ethernet and
//! raw IP, nanosecond timestamps) and enhanced packet blocks. When the next
//! block would take the file past its size limit, `FILE` becomes `FILE.1`
//! (replacing the previous one) and a new `FILE` starts.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use podfence_datapath::link::LinkType;

/// `LINKTYPE_ETHERNET`.
const LINKTYPE_ETHERNET: u16 = 1;
/// `LINKTYPE_RAW`: the packet starts with an IPv4 or IPv6 header.
const LINKTYPE_RAW: u16 = 101;
/// `LINKTYPE_LINUX_SLL`.
const LINKTYPE_LINUX_SLL: u16 = 113;
/// `LINKTYPE_LINUX_SLL2`.
const LINKTYPE_LINUX_SLL2: u16 = 276;
/// Interfaces of every file, in this order: their index is the link type's.
const INTERFACES: [u16; 4] = [
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
];

/// A rotating pcapng writer.
#[derive(Debug)]
pub struct CaptureWriter {
    path: PathBuf,
    max_bytes: u64,
    snap_len: u32,
    out: BufWriter<File>,
    written: u64,
}

impl CaptureWriter {
    /// Creates (truncates) `path`; rotates when it would exceed `max_bytes`.
    pub fn create(path: &Path, max_bytes: u64, snap_len: u32) -> io::Result<Self> {
        let mut w = Self {
            path: path.to_owned(),
            max_bytes,
            snap_len,
            out: BufWriter::new(File::create(path)?),
            written: 0,
        };
        w.header()?;
        Ok(w)
    }

    fn header(&mut self) -> io::Result<()> {
        // Section header: byte-order magic, version 1.0, section length unknown.
        let mut shb = Vec::with_capacity(16);
        shb.extend_from_slice(&0x1A2B_3C4D_u32.to_le_bytes());
        shb.extend_from_slice(&1u16.to_le_bytes());
        shb.extend_from_slice(&0u16.to_le_bytes());
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        push_option(&mut shb, 4, b"podfence"); // shb_userappl
        end_options(&mut shb);
        self.block(0x0A0D_0D0A, &shb)?;
        for link in INTERFACES {
            let mut idb = Vec::with_capacity(20);
            idb.extend_from_slice(&link.to_le_bytes());
            idb.extend_from_slice(&0u16.to_le_bytes());
            idb.extend_from_slice(&self.snap_len.to_le_bytes());
            push_option(&mut idb, 9, &[9]); // if_tsresol: nanoseconds
            end_options(&mut idb);
            self.block(1, &idb)?;
        }
        Ok(())
    }

    fn block(&mut self, kind: u32, body: &[u8]) -> io::Result<()> {
        let total = (12 + body.len()) as u32;
        self.out.write_all(&kind.to_le_bytes())?;
        self.out.write_all(&total.to_le_bytes())?;
        self.out.write_all(body)?;
        self.out.write_all(&total.to_le_bytes())?;
        self.written += u64::from(total);
        Ok(())
    }

    /// Appends one packet (`data`, cut to the snap length; `wire_len` on
    /// the wire) with `comment`.
    pub fn write(
        &mut self,
        unix_ns: u64,
        link: LinkType,
        data: &[u8],
        wire_len: u32,
        comment: &str,
    ) -> io::Result<()> {
        let data = &data[..data.len().min(self.snap_len as usize)];
        let interface = match link {
            LinkType::Ethernet => 0u32,
            LinkType::RawIp => 1,
            LinkType::LinuxSll => 2,
            LinkType::LinuxSll2 => 3,
        };
        let mut epb = Vec::with_capacity(32 + data.len() + comment.len());
        epb.extend_from_slice(&interface.to_le_bytes());
        epb.extend_from_slice(&((unix_ns >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(unix_ns as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&wire_len.max(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(data);
        pad(&mut epb);
        push_option(&mut epb, 1, comment.as_bytes()); // opt_comment
        end_options(&mut epb);
        if self.written + 12 + epb.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.block(6, &epb)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.out = BufWriter::new(File::create(&self.path)?);
        self.written = 0;
        self.header()
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn push_option(buf: &mut Vec<u8>, code: u16, value: &[u8]) {
    // An option value is at most 65535 bytes.
    let value = &value[..value.len().min(usize::from(u16::MAX) - 3)];
    buf.extend_from_slice(&code.to_le_bytes());
    buf.extend_from_slice(&(value.len() as u16).to_le_bytes());
    buf.extend_from_slice(value);
    pad(buf);
}

fn end_options(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0; 4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(bytes: &[u8]) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let kind = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            let trailer = u32::from_le_bytes(bytes[at + len - 4..at + len].try_into().unwrap());
            assert_eq!(len, trailer as usize, "block lengths agree");
            assert_eq!(len % 4, 0, "blocks are 32-bit aligned");
            out.push((kind, len));
            at += len;
        }
        out
    }

    #[test]
    fn writes_aligned_blocks_and_rotates_by_size() {
        let dir = std::env::temp_dir().join(format!("podfence-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("denied.pcapng");
        let mut w = CaptureWriter::create(&path, 700, 256).unwrap();
        for i in 0..5u8 {
            w.write(
                1_700_000_000_000_000_000,
                LinkType::Ethernet,
                &[i; 61],
                61,
                "deny",
            )
            .unwrap();
        }
        w.flush().unwrap();
        let now = std::fs::read(&path).unwrap();
        let before = std::fs::read(dir.join("denied.pcapng.1")).unwrap();
        for file in [&now, &before] {
            let kinds: Vec<u32> = blocks(file).iter().map(|b| b.0).collect();
            assert_eq!(
                &kinds[..5],
                &[0x0A0D_0D0A, 1, 1, 1, 1],
                "header of every file"
            );
            assert!(kinds[5..].iter().all(|&k| k == 6), "then packets");
            assert!(file.len() <= 700);
        }
        let packets = blocks(&now).len() + blocks(&before).len() - 10;
        assert!(
            (2..=5).contains(&packets),
            "{packets} packets in the last two files"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
