//! IPv4 headers, options and fragmentation fields.
//!
//! The header checksum is not verified on the fast path (the kernel or NIC
//! that delivered the frame has, and forwarding updates it incrementally);
//! [`Ipv4Packet::verify_checksum`] exists for replay and diagnostics.

use std::net::Ipv4Addr;

use super::{ParseError, be16, be32, internet_checksum};

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
        if b[0] >> 4 != 4 {
            return Err(ParseError::BadIpVersion);
        }
        let header_len = usize::from(b[0] & 0x0f) * 4;
        if header_len < Self::MIN_HEADER_LEN {
            return Err(ParseError::BadIpv4HeaderLength);
        }
        if b.len() < header_len {
            return Err(ParseError::TruncatedIpv4);
        }
        let total_len = usize::from(be16(b, 2));
        if total_len < header_len {
            return Err(ParseError::BadIpv4TotalLength);
        }
        Ok(total_len)
    }

    /// Always 4.
    #[must_use]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Header length in bytes, options included (20 to 60).
    #[must_use]
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[0] & 0x0f) * 4
    }

    /// DSCP (upper six bits of the former TOS byte).
    #[must_use]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[1] >> 2
    }

    /// ECN (lower two bits of the former TOS byte).
    #[must_use]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[1] & 0x03
    }

    /// Total length field: header plus payload.
    #[must_use]
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// Identification (used by fragment reassembly).
    #[must_use]
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }

    /// The DF flag.
    #[must_use]
    pub fn dont_frag(&self) -> bool {
        self.buffer.as_ref()[6] & 0x40 != 0
    }

    /// The MF flag.
    #[must_use]
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.buffer.as_ref()[6] & 0x20 != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    #[must_use]
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (be16(self.buffer.as_ref(), 6) & 0x1fff) << 3
    }

    /// Whether this is a fragment at all (MF set or a non-zero offset).
    #[must_use]
    #[inline]
    pub fn is_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), 6) & 0x3fff != 0
    }

    /// Time to live.
    #[must_use]
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[8]
    }

    /// Protocol of the payload.
    #[must_use]
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[9]
    }

    /// Header checksum field.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 10)
    }

    /// Source address as a number.
    #[must_use]
    #[inline]
    pub fn src(&self) -> u32 {
        be32(self.buffer.as_ref(), 12)
    }

    /// Destination address as a number.
    #[must_use]
    #[inline]
    pub fn dst(&self) -> u32 {
        be32(self.buffer.as_ref(), 16)
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
