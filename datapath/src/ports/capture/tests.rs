//! Capture reader and writer tests over synthetic files built here.

use std::io::{self, Cursor, Read};

use super::{CaptureOptions, CapturePort, CaptureWriter};
use crate::link::LinkType;
use crate::ports::{Port, PortError, RxDesc};

/// A received frame, copied out of the port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Got {
    bytes: Vec<u8>,
    wire_len: u32,
    timestamp_ns: u64,
    link: LinkType,
}

/// Reads a port to its end in batches of `batch`; the frames, and the error
/// that ended it, if any.
fn drain(port: &mut CapturePort, batch: usize) -> (Vec<Got>, Option<PortError>) {
    let mut descs = vec![RxDesc::default(); batch];
    let mut got = Vec::new();
    // Every recv consumes bytes or ends the file; this only bounds a bug.
    for _ in 0..10_000_000 {
        match port.recv(&mut descs) {
            Ok(n) => {
                assert!(n <= batch);
                for d in &descs[..n] {
                    let bytes = port.frame(d).to_vec();
                    assert_eq!(bytes.len(), d.len as usize);
                    got.push(Got {
                        bytes,
                        wire_len: d.wire_len,
                        timestamp_ns: d.timestamp_ns,
                        link: d.link,
                    });
                }
                if n == 0 {
                    assert!(port.finished(), "Ok(0) from a capture that is not finished");
                    return (got, None);
                }
            }
            Err(e) => {
                assert!(port.finished(), "an error must finish the port");
                assert_eq!(port.recv(&mut descs).unwrap(), 0);
                return (got, Some(e));
            }
        }
    }
    panic!("capture never finished");
}

fn open(bytes: &[u8]) -> Result<CapturePort, PortError> {
    CapturePort::from_reader("test.pcap", Cursor::new(bytes.to_vec()))
}

fn open_with(bytes: &[u8], chunk_size: usize, max_caplen: u32) -> Result<CapturePort, PortError> {
    let opts = CaptureOptions {
        chunk_size,
        max_caplen,
    };
    CapturePort::from_reader_with("test.pcap", Cursor::new(bytes.to_vec()), opts)
}

/// Reads bytes to the end; frames and the error.
fn read_all(bytes: &[u8]) -> (Vec<Got>, Option<PortError>) {
    match open(bytes) {
        Ok(mut p) => drain(&mut p, 64),
        Err(e) => (Vec::new(), Some(e)),
    }
}

fn format_message(e: &PortError) -> &str {
    match e {
        PortError::Format { message, port } => {
            assert_eq!(port, "test.pcap");
            message
        }
        other => panic!("expected a format error, got {other:?}"),
    }
}

/// Asserts a format error whose message contains every one of `parts`.
#[track_caller]
fn assert_format(e: Option<&PortError>, parts: &[&str]) {
    let e = e.expect("expected an error");
    let m = format_message(e);
    for p in parts {
        assert!(m.contains(p), "{m:?} does not mention {p:?}");
    }
}

fn frame(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

// ---------------------------------------------------------------------------
// Builders for synthetic files.

fn u16b(v: u16, be: bool) -> [u8; 2] {
    if be { v.to_be_bytes() } else { v.to_le_bytes() }
}

fn u32b(v: u32, be: bool) -> [u8; 4] {
    if be { v.to_be_bytes() } else { v.to_le_bytes() }
}

/// A classic pcap file.
struct Pcap {
    be: bool,
    nanos: bool,
    bytes: Vec<u8>,
}

impl Pcap {
    fn new(be: bool, nanos: bool, linktype: u32) -> Self {
        let mut bytes = Vec::new();
        let magic = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
        bytes.extend(u32b(magic, be));
        bytes.extend(u16b(2, be));
        bytes.extend(u16b(4, be));
        bytes.extend(u32b(0, be));
        bytes.extend(u32b(0, be));
        bytes.extend(u32b(65535, be));
        bytes.extend(u32b(linktype, be));
        Self { be, nanos, bytes }
    }

    /// Appends a record with the given captured bytes; returns the timestamp
    /// in nanoseconds it encodes.
    fn record(&mut self, secs: u32, frac: u32, data: &[u8], wire: u32) -> u64 {
        self.record_raw(secs, frac, data.len() as u32, wire);
        self.bytes.extend_from_slice(data);
        u64::from(secs) * 1_000_000_000 + u64::from(frac) * if self.nanos { 1 } else { 1000 }
    }

    fn record_raw(&mut self, secs: u32, frac: u32, caplen: u32, wire: u32) {
        let be = self.be;
        self.bytes.extend(u32b(secs, be));
        self.bytes.extend(u32b(frac, be));
        self.bytes.extend(u32b(caplen, be));
        self.bytes.extend(u32b(wire, be));
    }
}

/// A pcapng file, one block at a time.
struct Ng {
    be: bool,
    bytes: Vec<u8>,
    /// Offsets where blocks end (valid truncation points).
    ends: Vec<usize>,
}

impl Ng {
    fn new() -> Self {
        Self {
            be: false,
            bytes: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// A block of `btype` with `body` (padded here) and `opts` after it.
    fn block(&mut self, btype: u32, body: &[u8]) -> &mut Self {
        let padded = body.len().div_ceil(4) * 4;
        let len = (12 + padded) as u32;
        let be = self.be;
        self.bytes.extend(u32b(btype, be));
        self.bytes.extend(u32b(len, be));
        self.bytes.extend_from_slice(body);
        self.bytes.resize(self.bytes.len() + padded - body.len(), 0);
        self.bytes.extend(u32b(len, be));
        self.ends.push(self.bytes.len());
        self
    }

    fn section(&mut self, be: bool) -> &mut Self {
        self.be = be;
        let mut body = Vec::new();
        body.extend(u32b(0x1a2b_3c4d, be));
        body.extend(u16b(1, be));
        body.extend(u16b(0, be));
        body.extend((-1i64).to_le_bytes());
        self.block(0x0a0d_0d0a, &body)
    }

    /// An option (code, value), padded.
    fn opt(&self, out: &mut Vec<u8>, code: u16, value: &[u8]) {
        out.extend(u16b(code, self.be));
        out.extend(u16b(value.len() as u16, self.be));
        out.extend_from_slice(value);
        out.resize(out.len().div_ceil(4) * 4, 0);
    }

    fn interface(&mut self, linktype: u16, snaplen: u32, tsresol: Option<u8>) -> &mut Self {
        self.interface_opts(linktype, snaplen, tsresol, None)
    }

    fn interface_opts(
        &mut self,
        linktype: u16,
        snaplen: u32,
        tsresol: Option<u8>,
        tsoffset: Option<i64>,
    ) -> &mut Self {
        let be = self.be;
        let mut body = Vec::new();
        body.extend(u16b(linktype, be));
        body.extend(u16b(0, be));
        body.extend(u32b(snaplen, be));
        self.opt(&mut body, 2, b"eth0");
        if let Some(r) = tsresol {
            self.opt(&mut body, 9, &[r]);
        }
        if let Some(o) = tsoffset {
            let v = if be { o.to_be_bytes() } else { o.to_le_bytes() };
            self.opt(&mut body, 14, &v);
        }
        self.opt(&mut body, 0, &[]);
        self.block(1, &body)
    }

    fn epb(&mut self, iface: u32, units: u64, data: &[u8], wire: u32) -> &mut Self {
        self.epb_opts(iface, units, data, wire, &[])
    }

    fn epb_opts(
        &mut self,
        iface: u32,
        units: u64,
        data: &[u8],
        wire: u32,
        comment: &[u8],
    ) -> &mut Self {
        let be = self.be;
        let mut body = Vec::new();
        body.extend(u32b(iface, be));
        body.extend(u32b((units >> 32) as u32, be));
        body.extend(u32b(units as u32, be));
        body.extend(u32b(data.len() as u32, be));
        body.extend(u32b(wire, be));
        body.extend_from_slice(data);
        body.resize(body.len().div_ceil(4) * 4, 0);
        if !comment.is_empty() {
            self.opt(&mut body, 1, comment);
            self.opt(&mut body, 0, &[]);
        }
        self.block(6, &body)
    }

    fn opb(&mut self, iface: u16, units: u64, data: &[u8], wire: u32) -> &mut Self {
        let be = self.be;
        let mut body = Vec::new();
        body.extend(u16b(iface, be));
        body.extend(u16b(0, be));
        body.extend(u32b((units >> 32) as u32, be));
        body.extend(u32b(units as u32, be));
        body.extend(u32b(data.len() as u32, be));
        body.extend(u32b(wire, be));
        body.extend_from_slice(data);
        self.block(2, &body)
    }

    fn spb(&mut self, data: &[u8], wire: u32) -> &mut Self {
        let mut body = Vec::new();
        body.extend(u32b(wire, self.be));
        body.extend_from_slice(data);
        self.block(3, &body)
    }
}

// ---------------------------------------------------------------------------
// Round trips.

#[test]
fn writer_round_trip_through_a_buffer() {
    for link in [
        LinkType::Ethernet,
        LinkType::RawIp,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
    ] {
        let mut w = CaptureWriter::new("out", Vec::new(), link).unwrap();
        assert_eq!(w.link(), link);
        let mut want = Vec::new();
        for i in 0..50 {
            let bytes = frame(i, 14 + i * 13);
            let wire = bytes.len() as u32 + (i as u32 % 3);
            let ts = 1_700_000_000_123_456_789 + i as u64 * 1_000_001;
            w.write(&bytes, wire, ts).unwrap();
            want.push(Got {
                bytes,
                wire_len: wire,
                timestamp_ns: ts,
                link,
            });
        }
        assert_eq!(w.frames(), 50);
        let bytes = w.finish().unwrap();
        let mut p = open(&bytes).unwrap();
        assert!(!p.is_pcapng());
        assert_eq!(p.pcap_link(), Some(link));
        let (got, err) = drain(&mut p, 7);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, want);
        assert_eq!(p.stats().rx_frames, 50);
    }
}

#[test]
fn writer_round_trip_through_a_file() {
    let dir = std::env::temp_dir().join(format!("podfence-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rt.pcap");
    let mut w = CaptureWriter::create(&path, LinkType::Ethernet).unwrap();
    w.write(b"hello frame", 60, 42).unwrap();
    w.write(&[], 0, 1_000_000_000).unwrap();
    w.finish().unwrap();
    let mut p = CapturePort::open(&path).unwrap();
    assert_eq!(p.name(), path.display().to_string());
    let (got, err) = drain(&mut p, 64);
    assert!(err.is_none());
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].bytes.as_slice(), got[0].wire_len),
        (&b"hello frame"[..], 60)
    );
    assert_eq!(
        (got[0].timestamp_ns, got[1].timestamp_ns),
        (42, 1_000_000_000)
    );
    assert!(got[1].bytes.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = CapturePort::open(dir.join("missing.pcap")).unwrap_err();
    assert!(matches!(missing, PortError::Io { .. }), "{missing:?}");
}

#[test]
fn writer_truncates_oversized_frames_and_clamps_times() {
    let big = vec![7u8; 300_000];
    let mut w = CaptureWriter::new("out", Vec::new(), LinkType::RawIp).unwrap();
    w.write(&big, 10, u64::MAX).unwrap();
    let bytes = w.finish().unwrap();
    let (got, err) = read_all(&bytes);
    assert!(err.is_none());
    assert_eq!(got[0].bytes.len(), 256 * 1024);
    assert_eq!(
        got[0].wire_len,
        256 * 1024,
        "wire length at least the bytes written"
    );
    assert_eq!(
        got[0].timestamp_ns,
        u64::from(u32::MAX) * 1_000_000_000 + 999_999_999
    );
}

#[test]
fn pcap_in_both_byte_orders_and_resolutions() {
    for be in [false, true] {
        for nanos in [false, true] {
            for (linktype, link) in [
                (1, LinkType::Ethernet),
                (12, LinkType::RawIp),
                (228, LinkType::RawIp),
                (113, LinkType::LinuxSll),
                (276, LinkType::LinuxSll2),
            ] {
                let mut f = Pcap::new(be, nanos, linktype);
                let mut want = Vec::new();
                for i in 0..5 {
                    let bytes = frame(i, 40 + i);
                    let ts = f.record(1_600_000_000 + i as u32, 999_999 - i as u32, &bytes, 1500);
                    want.push(Got {
                        bytes,
                        wire_len: 1500,
                        timestamp_ns: ts,
                        link,
                    });
                }
                let mut p = open(&f.bytes).unwrap();
                assert_eq!(p.pcap_link(), Some(link));
                let (got, err) = drain(&mut p, 3);
                assert!(err.is_none(), "be {be} nanos {nanos}: {err:?}");
                assert_eq!(got, want, "be {be} nanos {nanos} link {linktype}");
            }
        }
    }
}

#[test]
fn pcap_link_type_fcs_bits_are_ignored() {
    // Bits 26..31 of the link-type field say "frames carry an FCS".
    let mut f = Pcap::new(false, false, 1 | (1 << 26) | (4 << 28));
    f.record(1, 2, b"abcd", 4);
    assert_eq!(read_all(&f.bytes).0.len(), 1);
}

#[test]
fn pcapng_interfaces_sections_and_block_kinds() {
    let mut f = Ng::new();
    let mut want = Vec::new();
    let g = |bytes: &[u8], wire, ts, link| Got {
        bytes: bytes.to_vec(),
        wire_len: wire,
        timestamp_ns: ts,
        link,
    };
    // Section 1, little-endian: Ethernet (microseconds by default), raw IP in
    // nanoseconds, Linux SLL in 2^-10 s.
    f.section(false)
        .interface(1, 0, None)
        .interface(101, 0, Some(9))
        .interface(113, 0, Some(0x80 | 0x0a));
    f.epb(0, 1_700_000_000_000_001, b"ether frame", 64);
    want.push(g(
        b"ether frame",
        64,
        1_700_000_000_000_001_000,
        LinkType::Ethernet,
    ));
    f.epb(1, 1_700_000_000_123_456_789, b"raw ip", 6);
    want.push(g(b"raw ip", 6, 1_700_000_000_123_456_789, LinkType::RawIp));
    // A Name Resolution Block, a custom block and an unknown one: skipped.
    f.block(4, &[0; 8])
        .block(0x0000_0bad, b"custom data")
        .block(0x4000_0bad, &[]);
    f.spb(b"simple one", 10);
    want.push(g(b"simple one", 10, 0, LinkType::Ethernet));
    f.epb_opts(2, 3 * 1024 + 512, b"sll frame", 9, b"a comment option");
    want.push(g(b"sll frame", 9, 3_500_000_000, LinkType::LinuxSll));
    f.opb(1, 5, b"obsolete", 8);
    want.push(g(b"obsolete", 8, 5, LinkType::RawIp));
    // Section 2, big-endian: interfaces start over. Milliseconds, an offset
    // of 1000 s, and Linux SLL2; a snapshot length of 4 cuts SPB data.
    f.section(true)
        .interface_opts(276, 4, Some(3), Some(1000))
        .epb(0, 1500, b"sll2", 4);
    want.push(g(b"sll2", 4, 1_001_500_000_000, LinkType::LinuxSll2));
    f.spb(b"abcdefgh", 8);
    want.push(g(b"abcd", 8, 0, LinkType::LinuxSll2));
    // An SPB whose original length is shorter than its (padded) data.
    f.spb(b"xyz", 2);
    want.push(g(b"xy", 2, 0, LinkType::LinuxSll2));

    for batch in [1, 2, 64] {
        let mut p = open(&f.bytes).unwrap();
        assert!(p.is_pcapng());
        assert_eq!(p.pcap_link(), None);
        let (got, err) = drain(&mut p, batch);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, want);
    }
    // The same with a buffer smaller than most blocks: straddling and
    // streamed skips everywhere.
    let mut p = open_with(&f.bytes, 16, 64).unwrap();
    let (got, err) = drain(&mut p, 5);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, want);
}

#[test]
fn timestamp_units() {
    use super::reader::tests_support::ns;
    assert_eq!(ns(6, 1), 1000);
    assert_eq!(ns(9, 7), 7);
    assert_eq!(ns(0, 2), 2_000_000_000);
    assert_eq!(ns(12, 5000), 5);
    assert_eq!(ns(100, u64::MAX), 0);
    assert_eq!(ns(0, u64::MAX), u64::MAX);
    assert_eq!(ns(0x80 | 0x1e, 1 << 30), 1_000_000_000);
    assert_eq!(ns(0x80, u64::MAX), u64::MAX);
    assert_eq!(ns(0x80 | 127, u64::MAX), 0);
}

#[test]
fn pcapng_empty_and_header_only_files_are_clean() {
    let mut f = Ng::new();
    f.section(false);
    let (got, err) = read_all(&f.bytes);
    assert!(got.is_empty() && err.is_none());
    f.interface(1, 0, None);
    let (got, err) = read_all(&f.bytes);
    assert!(got.is_empty() && err.is_none());
    let p = open(&f.bytes).unwrap();
    assert!(p.finished());

    let f = Pcap::new(false, false, 1);
    let (got, err) = read_all(&f.bytes);
    assert!(got.is_empty() && err.is_none());
}

// ---------------------------------------------------------------------------
// Link types podfence does not read.

#[test]
fn pcap_of_an_unsupported_link_type_fails_to_open() {
    let mut f = Pcap::new(true, false, 105);
    f.record(0, 0, b"802.11", 6);
    let e = open(&f.bytes).unwrap_err();
    let m = e.to_string();
    assert!(m.starts_with("test.pcap: "), "{m}");
    assert!(m.contains("link type 105"), "{m}");
}

#[test]
fn pcapng_packet_on_an_unsupported_interface_ends_the_file() {
    let mut f = Ng::new();
    f.section(false)
        .interface(1, 0, None)
        .interface(105, 0, None);
    f.epb(0, 0, b"fine", 4)
        .epb(1, 0, b"802.11", 6)
        .epb(0, 0, b"never", 5);
    let (got, err) = read_all(&f.bytes);
    assert_eq!(got.len(), 1);
    assert_format(err.as_ref(), &["interface 1", "link type 105", "offset"]);

    // An unused interface of another link type is fine.
    let mut f = Ng::new();
    f.section(false)
        .interface(105, 0, None)
        .interface(1, 0, None);
    f.epb(1, 0, b"fine", 4);
    let (got, err) = read_all(&f.bytes);
    assert!(err.is_none());
    assert_eq!(got.len(), 1);

    // When the first packet is on such an interface, open fails already.
    let mut f = Ng::new();
    f.section(false).interface(105, 0, None).spb(b"x", 1);
    assert_format(
        open(&f.bytes).err().as_ref(),
        &["interface 0", "link type 105"],
    );
}

// ---------------------------------------------------------------------------
// Corruption.

#[test]
fn not_a_capture() {
    assert_format(open(b"").err().as_ref(), &["truncated", "offset 0"]);
    assert_format(open(b"\xa1\xb2").err().as_ref(), &["truncated", "offset 0"]);
    assert_format(
        open(b"GET / HTTP/1.1\r\n\r\n").err().as_ref(),
        &["unknown magic 0x47455420", "offset 0"],
    );
    let f = Pcap::new(false, true, 1);
    assert_format(
        open(&f.bytes[..20]).err().as_ref(),
        &["truncated pcap file header", "20 of 24"],
    );
    let mut bad_version = f.bytes.clone();
    bad_version[4] = 1;
    assert_format(open(&bad_version).err().as_ref(), &["version 1.4"]);
}

#[test]
fn pcap_record_corruption() {
    let mut f = Pcap::new(false, false, 1);
    f.record(1, 0, b"first", 5);
    let good = f.bytes.len();

    // Truncated data: the first frame is delivered, then the error.
    let mut t = Pcap::new(false, false, 1);
    t.bytes = f.bytes.clone();
    t.record_raw(2, 0, 100, 100);
    t.bytes.extend_from_slice(&[0; 40]);
    let (got, err) = read_all(&t.bytes);
    assert_eq!(got.len(), 1);
    assert_format(
        err.as_ref(),
        &[
            &format!("truncated record at offset {good}"),
            "captured length 100",
            "40 bytes",
        ],
    );

    // Truncated record header.
    let mut t = f.bytes.clone();
    t.extend_from_slice(&[1, 2, 3]);
    let (got, err) = read_all(&t);
    assert_eq!(got.len(), 1);
    assert_format(
        err.as_ref(),
        &[&format!("record header at offset {good}"), "3 of 16"],
    );

    // A captured length over the limit.
    let mut t = Pcap::new(false, false, 1);
    t.bytes = f.bytes.clone();
    t.record_raw(2, 0, 0x7fff_ffff, 60);
    t.bytes.extend_from_slice(&[0; 64]);
    let (got, err) = read_all(&t.bytes);
    assert_eq!(got.len(), 1);
    assert_format(
        err.as_ref(),
        &[
            &format!("offset {good}"),
            "captured length 2147483647",
            "maximum 262144",
        ],
    );
}

/// A valid little pcapng file: section, interface, two packets.
fn small_pcapng() -> Ng {
    let mut f = Ng::new();
    f.section(false)
        .interface(1, 0, None)
        .epb(0, 1, b"packet one", 10);
    f
}

/// Replaces the u32 at `at`.
fn patch(bytes: &[u8], at: usize, v: u32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    b
}

#[test]
fn pcapng_section_and_interface_corruption() {
    let f = small_pcapng();
    let shb_end = f.ends[0];
    let idb_end = f.ends[1];
    let ok = read_all(&f.bytes);
    assert!(ok.1.is_none());
    assert_eq!(ok.0.len(), 1);

    // Section header: bad byte-order magic, bad length, bad version.
    assert_format(
        open(&patch(&f.bytes, 8, 0x1234_5678)).err().as_ref(),
        &["byte-order magic 0x78563412", "offset 0"],
    );
    assert_format(
        open(&patch(&f.bytes, 4, 30)).err().as_ref(),
        &["length 30", "multiple of 4"],
    );
    assert_format(
        open(&patch(&f.bytes, 4, 24)).err().as_ref(),
        &["length 24", "minimum 28"],
    );
    assert_format(
        open(&patch(&f.bytes, 12, 2)).err().as_ref(),
        &["version 2.0"],
    );
    // Trailing length of the section header.
    assert_format(
        open(&patch(&f.bytes, shb_end - 4, 32)).err().as_ref(),
        &["offset 0", "trailing length 32"],
    );

    // Interface description: bad length, trailing length, option overrun.
    let at_idb = format!("offset {shb_end}");
    assert_format(
        open(&patch(&f.bytes, shb_end + 4, 18)).err().as_ref(),
        &[&at_idb, "not a multiple of 4"],
    );
    assert_format(
        open(&patch(&f.bytes, shb_end + 4, 16)).err().as_ref(),
        &[&at_idb, "below the minimum 20"],
    );
    assert_format(
        open(&patch(&f.bytes, idb_end - 4, 12)).err().as_ref(),
        &[&at_idb, "trailing length 12"],
    );
    let mut over = f.bytes.clone();
    over[shb_end + 18..shb_end + 20].copy_from_slice(&200u16.to_le_bytes());
    assert_format(
        open(&over).err().as_ref(),
        &[&at_idb, "option 2", "overruns"],
    );
}

#[test]
fn pcapng_packet_block_corruption() {
    let f = small_pcapng();
    let epb = f.ends[1];
    let at_epb = format!("offset {epb}");
    // Length, captured length, interface, trailing length.
    assert_format(
        open(&patch(&f.bytes, epb + 4, 13)).err().as_ref(),
        &[&at_epb, "not a multiple of 4"],
    );
    assert_format(
        open(&patch(&f.bytes, epb + 4, 28)).err().as_ref(),
        &[&at_epb, "below the minimum 32"],
    );
    assert_format(
        open(&patch(&f.bytes, epb + 20, 100)).err().as_ref(),
        &[
            &at_epb,
            "captured length 100 does not fit in block length 44",
        ],
    );
    assert_format(
        open(&patch(&f.bytes, epb + 20, 1 << 30)).err().as_ref(),
        &[
            &at_epb,
            "captured length 1073741824 exceeds the maximum 262144",
        ],
    );
    assert_format(
        open(&patch(&f.bytes, epb + 8, 3)).err().as_ref(),
        &[&at_epb, "interface 3", "describes 1"],
    );
    let (got, err) = read_all(&patch(&f.bytes, f.bytes.len() - 4, 0x100));
    assert!(
        got.is_empty(),
        "a frame of a corrupt block is not delivered"
    );
    assert_format(
        err.as_ref(),
        &[&at_epb, "trailing length 256 differs from its length 44"],
    );

    // A block claiming more than the file holds.
    let mut g = small_pcapng();
    g.block(0x0bad, &[0; 100]);
    let cut = &g.bytes[..g.bytes.len() - 10];
    let (got, err) = read_all(cut);
    assert_eq!(got.len(), 1);
    assert_format(
        err.as_ref(),
        &[&format!("truncated block at offset {}", f.bytes.len())],
    );

    // A simple packet block whose original length exceeds its data (and
    // no snapshot length explains it).
    let mut g = small_pcapng();
    g.spb(b"short", 100);
    let (got, err) = read_all(&g.bytes);
    assert_eq!(got.len(), 1);
    assert_format(
        err.as_ref(),
        &[
            &format!("simple packet block at offset {}", f.bytes.len()),
            "length 100 does not fit",
        ],
    );

    // A simple packet block before any interface.
    let mut g = Ng::new();
    g.section(true).spb(b"x", 1);
    assert_format(
        open(&g.bytes).err().as_ref(),
        &["interface 0", "describes 0"],
    );
}

#[test]
fn skipped_blocks_larger_than_the_buffer_are_streamed() {
    let mut f = Ng::new();
    f.section(false)
        .interface(1, 0, None)
        .epb(0, 0, b"before", 6);
    f.block(0x0bad, &vec![0x55; 100_000]);
    f.epb(0, 0, b"after", 5);
    let mut p = open_with(&f.bytes, 4096, 2048).unwrap();
    let (got, err) = drain(&mut p, 64);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), 2);
    assert_eq!(p.buffer_len(), 4096, "skipping does not grow the buffer");

    // The trailing length of a streamed block is still checked.
    let bad = patch(&f.bytes, f.ends[3] - 4, 7);
    let (got, err) = read_all(&bad);
    assert_eq!(got.len(), 1);
    assert_format(
        err.as_ref(),
        &["trailing length 7 differs from its length 100012"],
    );
    let mut p = open_with(&bad, 4096, 2048).unwrap();
    let (got, err) = drain(&mut p, 1);
    assert_eq!(got.len(), 1);
    assert_format(
        err.as_ref(),
        &["trailing length 7 differs from its length 100012"],
    );
}

/// Every prefix of a valid file: no panic, and either a clean end exactly
/// at record boundaries (with the frames before it) or a format error.
fn check_prefixes(bytes: &[u8], boundaries: &[usize], frames_before: impl Fn(usize) -> usize) {
    let (all, err) = read_all(bytes);
    assert!(err.is_none());
    for cut in 0..=bytes.len() {
        for chunk in [64, 1 << 20] {
            let prefix = &bytes[..cut];
            let result = open_with(prefix, chunk, 1 << 16).map(|mut p| drain(&mut p, 3));
            let clean = boundaries.contains(&cut);
            match result {
                Ok((got, None)) => {
                    assert!(clean, "prefix of {cut} bytes read without error");
                    assert_eq!(got.len(), frames_before(cut), "prefix {cut}");
                    assert_eq!(got[..], all[..got.len()]);
                }
                Ok((got, Some(e))) => {
                    assert!(!clean, "prefix of {cut} bytes: {e}");
                    assert_eq!(got[..], all[..got.len()]);
                    assert!(format_message(&e).contains("offset"), "{e}");
                }
                Err(e) => {
                    assert!(!clean, "prefix of {cut} bytes: {e}");
                    assert!(format_message(&e).contains("offset"), "{e}");
                }
            }
        }
    }
}

#[test]
fn every_prefix_of_a_pcap_file() {
    let mut f = Pcap::new(true, true, 1);
    let mut boundaries = vec![24];
    for i in 0..4 {
        f.record(i, i, &frame(i as usize, 20 + i as usize), 60);
        boundaries.push(f.bytes.len());
    }
    let b = boundaries.clone();
    check_prefixes(&f.bytes, &boundaries, |cut| {
        b.iter().position(|&x| x == cut).unwrap()
    });
}

#[test]
fn every_prefix_of_a_pcapng_file() {
    let mut f = Ng::new();
    f.section(false)
        .interface(1, 0, Some(9))
        .epb(0, 1, b"one", 3);
    f.block(0x0bad, b"skip me").spb(b"two", 3);
    f.section(true)
        .interface(101, 0, None)
        .epb_opts(0, 2, b"three", 5, b"opt");
    let packets: Vec<usize> = vec![f.ends[2], f.ends[4], f.ends[7]];
    let mut boundaries = f.ends.clone();
    boundaries.retain(|&e| e > f.ends[0]);
    boundaries.push(f.ends[0]);
    check_prefixes(&f.bytes, &boundaries, |cut| {
        packets.iter().filter(|&&p| p <= cut).count()
    });
}

// ---------------------------------------------------------------------------
// Batches and buffering.

fn many_frames_pcap(n: usize, size: impl Fn(usize) -> usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut f = Pcap::new(false, true, 1);
    let mut frames = Vec::new();
    for i in 0..n {
        let b = frame(i, size(i));
        f.record(i as u32, 0, &b, b.len() as u32);
        frames.push(b);
    }
    (f.bytes, frames)
}

#[test]
fn batches_of_any_size_deliver_every_frame_in_order() {
    let (bytes, frames) = many_frames_pcap(1000, |i| 60 + (i * 37) % 1400);
    let mut ng = Ng::new();
    ng.section(false).interface(1, 0, None);
    for (i, f) in frames.iter().enumerate() {
        if i % 3 == 0 {
            ng.spb(f, f.len() as u32);
        } else {
            ng.epb_opts(0, i as u64, f, f.len() as u32, &b"c"[..i % 2]);
        }
    }
    for file in [&bytes, &ng.bytes] {
        for batch in [1, 7, 64] {
            for chunk in [1500, 4096, 1 << 20] {
                let mut p = open_with(file, chunk, 2000).unwrap();
                let (got, err) = drain(&mut p, batch);
                assert!(err.is_none(), "{err:?}");
                let got: Vec<Vec<u8>> = got.into_iter().map(|g| g.bytes).collect();
                assert_eq!(got, frames, "batch {batch} chunk {chunk}");
                assert!(p.buffer_len() <= chunk.max(2064), "buffer stays bounded");
                assert_eq!(p.stats().rx_frames, 1000);
            }
        }
    }
}

#[test]
fn frames_larger_than_the_chunk_grow_the_buffer_up_to_the_cap() {
    let sizes = [100, 10_000, 50, 19_999, 20_000];
    let (bytes, frames) = many_frames_pcap(sizes.len(), |i| sizes[i]);
    let mut p = open_with(&bytes, 4096, 20_000).unwrap();
    let (got, err) = drain(&mut p, 64);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.into_iter().map(|g| g.bytes).collect::<Vec<_>>(), frames);
    assert!(
        p.buffer_len() > 4096 && p.buffer_len() <= 20_064,
        "{}",
        p.buffer_len()
    );

    // One byte over the cap: everything before it, then the error.
    let (bytes, _) = many_frames_pcap(2, |i| [5000, 20_001][i]);
    let mut p = open_with(&bytes, 4096, 20_000).unwrap();
    let (got, err) = drain(&mut p, 64);
    assert_eq!(got.len(), 1);
    assert_format(
        err.as_ref(),
        &[
            "offset 5040",
            "captured length 20001 exceeds the maximum 20000",
        ],
    );

    // The same in pcapng.
    let mut f = Ng::new();
    f.section(true).interface(1, 0, None);
    f.epb(0, 0, &frame(0, 15_000), 15_000)
        .epb(0, 0, &frame(1, 20_001), 20_001);
    let mut p = open_with(&f.bytes, 4096, 20_000).unwrap();
    let (got, err) = drain(&mut p, 64);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bytes, frame(0, 15_000));
    assert_format(
        err.as_ref(),
        &["captured length 20001 exceeds the maximum 20000"],
    );

    // An interface description over the buffer's limit.
    let mut f = Ng::new();
    f.section(false);
    let mut body = vec![1, 0, 0, 0, 0, 0, 0, 0];
    f.opt(&mut body, 1, &vec![b'x'; 60_000]);
    f.block(1, &body);
    assert_format(
        open_with(&f.bytes, 4096, 20_000).err().as_ref(),
        &[
            "interface description at offset 28",
            "exceeds the maximum 20064",
        ],
    );
}

#[test]
fn memory_stays_bounded_over_many_frames() {
    let (bytes, frames) = many_frames_pcap(20_000, |i| 64 + i % 200);
    let mut p = open_with(&bytes, 8192, 4096).unwrap();
    let mut descs = [RxDesc::default(); 64];
    let mut count = 0;
    while !p.finished() {
        let n = p.recv(&mut descs).unwrap();
        for d in &descs[..n] {
            assert_eq!(p.frame(d), frames[count]);
            count += 1;
        }
    }
    assert_eq!(count, frames.len());
    assert_eq!(p.buffer_len(), 8192);
}

/// Hands out at most `step` bytes per read, and an `Interrupted` before each.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    step: usize,
    interrupt: bool,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.step).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn short_reads_and_interruptions() {
    let mut ng = Ng::new();
    ng.section(true).interface(113, 0, None);
    let mut want = Vec::new();
    for i in 0..50 {
        let f = frame(i, 1 + i * 11);
        ng.epb(0, i as u64, &f, 600);
        want.push(f);
    }
    for step in [1, 3, 1000] {
        let r = Trickle {
            data: ng.bytes.clone(),
            pos: 0,
            step,
            interrupt: false,
        };
        let mut p = CapturePort::from_reader("trickle", r).unwrap();
        let (got, err) = drain(&mut p, 8);
        assert!(err.is_none());
        assert_eq!(got.into_iter().map(|g| g.bytes).collect::<Vec<_>>(), want);
    }
}

/// Fails after `ok` bytes.
struct Failing {
    data: Cursor<Vec<u8>>,
    ok: usize,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.ok - self.data.position() as usize;
        if left == 0 {
            return Err(io::Error::other("disk on fire"));
        }
        let n = buf.len().min(left);
        self.data.read(&mut buf[..n])
    }
}

#[test]
fn read_errors_are_io_errors_and_finish_the_port() {
    let (bytes, _) = many_frames_pcap(10, |_| 100);
    let r = Failing {
        data: Cursor::new(bytes),
        ok: 24 + 116 * 3 + 50,
    };
    let mut p = CapturePort::from_reader("failing", r).unwrap();
    let (got, err) = drain(&mut p, 64);
    assert_eq!(got.len(), 3);
    match err {
        Some(PortError::Io { port, source }) => {
            assert_eq!(port, "failing");
            assert_eq!(source.to_string(), "disk on fire");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn send_is_unsupported_and_frame_never_panics() {
    let (bytes, _) = many_frames_pcap(1, |_| 10);
    let mut p = open(&bytes).unwrap();
    let e = p.send(&[b"x"]).unwrap_err();
    assert!(
        matches!(
            e,
            PortError::Unsupported {
                operation: "send",
                ..
            }
        ),
        "{e:?}"
    );
    let bogus = RxDesc {
        addr: u64::MAX,
        len: u32::MAX,
        ..RxDesc::default()
    };
    assert!(p.frame(&bogus).is_empty());
    assert_eq!(p.recv(&mut []).unwrap(), 0);
    assert!(!p.finished());
    assert!(format!("{p:?}").contains("CapturePort"));
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Vec<u8> {
        let mut f = Ng::new();
        f.section(false)
            .interface(1, 0, Some(9))
            .interface(101, 64, None);
        f.epb(0, 1, b"one one one", 11)
            .spb(b"two", 3)
            .block(0x0bad, b"opaque");
        f.section(true)
            .interface(113, 0, None)
            .epb_opts(0, 2, b"three", 5, b"opt");
        f.opb(0, 9, b"four", 4);
        f.bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary byte changes: no panic, and the port always finishes.
        #[test]
        fn mutated_files_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
            pcap in any::<bool>(),
        ) {
            let mut bytes = if pcap {
                let (b, _) = many_frames_pcap(5, |i| 10 + i * 30);
                b
            } else {
                sample()
            };
            for (at, v) in edits {
                let i = at % bytes.len();
                bytes[i] = v;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            if let Ok(mut p) = open_with(&bytes, 32, 256) {
                let (got, _) = drain(&mut p, 4);
                // Every frame takes at least 16 bytes of the file.
                prop_assert!(got.len() <= bytes.len() / 16);
            }
        }
    }
}
