//! IPv4 headers, options and fragmentation fields.
//!
//! The header checksum is not verified on the fast path (the kernel or NIC
//! that delivered the frame has, and forwarding updates it incrementally);
//! [`Ipv4Packet::verify_checksum`] exists for replay and diagnostics.

use std::net::Ipv4Addr;

use super::checksum::internet_checksum;
use super::{ParseError, be16, be32};

/// Byte positions of the header's fields.
pub mod field {
    use std::ops::Range;

    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    /// DSCP and ECN (the former TOS byte).
    pub const DSCP_ECN: usize = 1;
    /// Total length.
    pub const LENGTH: Range<usize> = 2..4;
    /// Identification.
    pub const IDENT: Range<usize> = 4..6;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol of the payload.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Range<usize> = 10..12;
    /// Source address.
    pub const SRC_ADDR: Range<usize> = 12..16;
    /// Destination address.
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// A checked view of an IPv4 packet.
///
/// The view ends at the header's total length: trailing bytes (Ethernet
/// pads frames to 60 bytes) are not part of [`Ipv4Packet::payload`].
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Packet<T> {
    buffer: T,
    end: usize,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Length of a header without options.
    pub const MIN_HEADER_LEN: usize = 20;

    /// Checks version, header length and total length against the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let end = Self::check_header(buffer.as_ref())?;
        if end > buffer.as_ref().len() {
            return Err(ParseError::TruncatedIpv4);
        }
        Ok(Self { buffer, end })
    }

    /// Like [`Ipv4Packet::new_checked`] for the header quoted in an ICMP
    /// error: the header must be complete, but the packet may be cut short
    /// of its total length. The payload is what was quoted.
    #[inline]
    pub fn new_checked_embedded(buffer: T) -> Result<Self, ParseError> {
        let end = Self::check_header(buffer.as_ref())?.min(buffer.as_ref().len());
        Ok(Self { buffer, end })
    }

    /// Validates the header; returns the total length.
    #[inline]
    fn check_header(b: &[u8]) -> Result<usize, ParseError> {
        if b.is_empty() {
            return Err(ParseError::TruncatedIpv4);
        }
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(ParseError::BadIpVersion);
        }
        let header_len = usize::from(b[field::VER_IHL] & 0x0f) * 4;
        if header_len < Self::MIN_HEADER_LEN {
            return Err(ParseError::BadIpv4HeaderLength);
        }
        if b.len() < header_len {
            return Err(ParseError::TruncatedIpv4);
        }
        let total_len = usize::from(be16(&b[field::LENGTH]));
        if total_len < header_len {
            return Err(ParseError::BadIpv4TotalLength);
        }
        Ok(total_len)
    }

    /// Always 4.
    #[must_use]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes, options included (20 to 60).
    #[must_use]
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// DSCP (upper six bits of the former TOS byte).
    #[must_use]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// ECN (lower two bits of the former TOS byte).
    #[must_use]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Total length field: header plus payload.
    #[must_use]
    pub fn total_len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Identification (used by fragment reassembly).
    #[must_use]
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::IDENT])
    }

    /// The DF flag.
    #[must_use]
    pub fn dont_frag(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS_FRAG.start] & 0x40 != 0
    }

    /// The MF flag.
    #[must_use]
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS_FRAG.start] & 0x20 != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    #[must_use]
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (be16(&self.buffer.as_ref()[field::FLAGS_FRAG]) & 0x1fff) << 3
    }

    /// Whether this is a fragment at all (MF set or a non-zero offset).
    #[must_use]
    #[inline]
    pub fn is_fragment(&self) -> bool {
        be16(&self.buffer.as_ref()[field::FLAGS_FRAG]) & 0x3fff != 0
    }

    /// Time to live.
    #[must_use]
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    #[must_use]
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Source address as a number.
    #[must_use]
    #[inline]
    pub fn src(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    /// Destination address as a number.
    #[must_use]
    #[inline]
    pub fn dst(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// Source address.
    #[must_use]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src())
    }

    /// Destination address.
    #[must_use]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst())
    }

    /// The options bytes (empty when the header length is 20).
    #[must_use]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::MIN_HEADER_LEN..self.header_len()]
    }

    /// Whether the header checksum is correct.
    #[must_use]
    pub fn verify_checksum(&self) -> bool {
        internet_checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }

    /// The payload up to the total length (or up to the end of the buffer
    /// for an embedded header cut short).
    #[must_use]
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.end]
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the time to live (the header checksum is the caller's).
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the header checksum field.
    #[inline]
    pub fn set_checksum(&mut self, checksum: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }

    /// Sets the source address (the checksums are the caller's).
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address (the checksums are the caller's).
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = internet_checksum(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20-byte header from 10.0.0.1 to 10.0.0.2, protocol TCP, with a
    /// correct checksum, followed by 4 payload bytes and 2 padding bytes.
    fn packet() -> Vec<u8> {
        let mut v = vec![
            0x45, 0x00, 0x00, 24, // version, IHL, TOS, total length
            0x12, 0x34, 0x40, 0x00, // id, DF
            64, 6, 0, 0, // TTL, TCP, checksum
            10, 0, 0, 1, 10, 0, 0, 2, // addresses
            0xde, 0xad, 0xbe, 0xef, // payload
            0, 0, // padding
        ];
        let sum = internet_checksum(&v[..20]);
        v[10..12].copy_from_slice(&sum.to_be_bytes());
        v
    }

    #[test]
    fn fields() {
        let v = packet();
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp(), 0);
        assert_eq!(p.ecn(), 0);
        assert_eq!(p.total_len(), 24);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert!(!p.is_fragment());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 6);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(p.options().is_empty());
        assert!(p.verify_checksum());
        // Trailing padding is cut off.
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(p.into_inner().len(), 26);
    }

    #[test]
    fn bad_checksum_is_reported_not_rejected() {
        let mut v = packet();
        v[10] ^= 0xff;
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert!(!p.verify_checksum());
    }

    #[test]
    fn options_and_fragments() {
        let mut v = packet();
        // Add 8 bytes of options (NOP x 4, router alert without length
        // check: options are opaque).
        v[0] = 0x47;
        v.splice(20..20, [1, 1, 1, 1, 0x94, 4, 0, 0]);
        v[2..4].copy_from_slice(&32u16.to_be_bytes());
        // MF set, offset 185 * 8 = 1480.
        v[6..8].copy_from_slice(&(0x2000u16 | 0xb9).to_be_bytes());
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.options(), &[1, 1, 1, 1, 0x94, 4, 0, 0]);
        assert!(p.more_frags());
        assert!(!p.dont_frag());
        assert!(p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn errors() {
        let v = packet();
        for len in 0..24 {
            let e = Ipv4Packet::new_checked(&v[..len]).unwrap_err();
            assert_eq!(e, ParseError::TruncatedIpv4, "{len}");
        }
        let mut bad = v.clone();
        bad[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            ParseError::BadIpVersion
        );
        bad[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            ParseError::BadIpv4HeaderLength
        );
        bad[0] = 0x4f; // 60-byte header in a 26-byte buffer
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            ParseError::TruncatedIpv4
        );
        let mut bad = v.clone();
        bad[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            ParseError::BadIpv4TotalLength
        );
    }

    #[test]
    fn setters_write_the_fields_and_nothing_else() {
        let mut v = packet();
        let orig = v.clone();
        let mut p = Ipv4Packet::new_checked(&mut v[..]).unwrap();
        p.set_ttl(3);
        p.set_src_addr(Ipv4Addr::new(192, 0, 2, 1));
        p.set_dst_addr(Ipv4Addr::new(198, 51, 100, 7));
        p.set_checksum(0xbeef);
        assert_eq!(p.ttl(), 3);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!(p.checksum(), 0xbeef);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        for (i, (a, b)) in v.iter().zip(&orig).enumerate() {
            let written = [field::TTL, 10, 11].contains(&i) || (12..20).contains(&i);
            assert!(written || a == b, "byte {i} changed");
        }
    }

    #[test]
    fn incremental_updates_keep_the_header_checksum_valid() {
        use crate::wire::checksum::{update_u16, update_u32};
        let mut v = packet();
        let mut p = Ipv4Packet::new_checked(&mut v[..]).unwrap();
        // A new destination (what NAT does) and a decremented TTL.
        let (old, new) = (p.dst(), u32::from(Ipv4Addr::new(10, 96, 0, 10)));
        p.set_dst_addr(new.into());
        p.set_checksum(update_u32(p.checksum(), old, new));
        assert!(p.verify_checksum());
        let old = u16::from_be_bytes([p.ttl(), p.protocol()]);
        p.set_ttl(p.ttl() - 1);
        let new = u16::from_be_bytes([p.ttl(), p.protocol()]);
        p.set_checksum(update_u16(p.checksum(), old, new));
        assert!(p.verify_checksum());
        assert_eq!(p.ttl(), 63);
    }

    #[test]
    fn embedded_header_may_be_cut_short() {
        let v = packet();
        let p = Ipv4Packet::new_checked_embedded(&v[..22]).unwrap();
        assert_eq!(p.payload(), &[0xde, 0xad]);
        assert_eq!(
            Ipv4Packet::new_checked_embedded(&v[..19]).unwrap_err(),
            ParseError::TruncatedIpv4
        );
        // The whole packet: still cut at the total length.
        let p = Ipv4Packet::new_checked_embedded(&v[..]).unwrap();
        assert_eq!(p.payload().len(), 4);
    }
}
