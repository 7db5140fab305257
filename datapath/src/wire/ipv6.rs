//! IPv6 headers and the extension-header chain.
//!
//! Ports live after any number of extension headers, so the parser walks
//! the chain: hop-by-hop (0), routing (43), destination options (60),
//! fragment (44) and authentication (51), at most
//! [`MAX_EXTENSION_HEADERS`] of them, so a crafted chain costs a bounded
//! amount of work. ESP (50), "no next header" (59) and every other value end
//! the walk and are reported as the upper-layer protocol.

use std::net::Ipv6Addr;

use super::{ParseError, be16, be32, be128, ip_proto};

/// Byte positions of the fixed header's fields.
pub mod field {
    use std::ops::Range;

    /// Version (4 bits), traffic class (8 bits) and flow label (20 bits).
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    /// Payload length (extension headers included).
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    /// Next header.
    pub const NEXT_HEADER: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC_ADDR: Range<usize> = 8..24;
    /// Destination address.
    pub const DST_ADDR: Range<usize> = 24..40;
}

/// Byte positions of the fields of an extension header.
pub mod ext_field {
    use std::ops::Range;

    /// Next header (every extension header).
    pub const NEXT_HEADER: usize = 0;
    /// Header length (hop-by-hop, routing, destination options, AH).
    pub const LENGTH: usize = 1;
    /// Fragment header: offset (13 bits), reserved, M flag (low bit).
    pub const FRAG_OFFSET_M: Range<usize> = 2..4;
    /// Fragment header: identification.
    pub const FRAG_IDENT: Range<usize> = 4..8;
}

/// The most extension headers [`Ipv6Packet::extensions`] walks before it
/// gives up with [`ParseError::TooManyIpv6Extensions`].
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// A checked view of an IPv6 packet.
///
/// The view ends at 40 + payload length: trailing Ethernet padding is not
/// part of [`Ipv6Packet::payload`].
#[derive(Clone, Copy, Debug)]
pub struct Ipv6Packet<T> {
    buffer: T,
    end: usize,
}

/// Where the upper-layer header starts, after the extension headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Extensions {
    /// The last next-header value: the upper-layer protocol (TCP, UDP, ...),
    /// or for a non-first fragment the fragment header's next header.
    pub protocol: u8,
    /// Offset from the start of the IPv6 header to the upper-layer header
    /// (for a non-first fragment: to the fragment data).
    pub l4_offset: usize,
    /// The fragment header, if one was found.
    pub fragment: Option<Ipv6Fragment>,
    /// Number of extension headers walked.
    pub count: u8,
}

/// The fields of an IPv6 fragment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Fragment {
    /// Identification, shared by all fragments of one packet.
    pub ident: u32,
    /// Offset of this fragment's data in bytes.
    pub offset: u16,
    /// The M (more fragments) flag.
    pub more: bool,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Length of the fixed header.
    pub const HEADER_LEN: usize = 40;

    /// Checks version and that header and payload length fit the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let end = Self::check_header(buffer.as_ref())?;
        if end > buffer.as_ref().len() {
            return Err(ParseError::TruncatedIpv6);
        }
        Ok(Self { buffer, end })
    }

    /// Like [`Ipv6Packet::new_checked`] for the header quoted in an ICMPv6
    /// error: the fixed header must be complete, the payload may be cut
    /// short.
    #[inline]
    pub fn new_checked_embedded(buffer: T) -> Result<Self, ParseError> {
        let end = Self::check_header(buffer.as_ref())?.min(buffer.as_ref().len());
        Ok(Self { buffer, end })
    }

    /// Validates the fixed header; returns 40 + payload length.
    #[inline]
    fn check_header(b: &[u8]) -> Result<usize, ParseError> {
        if b.is_empty() {
            return Err(ParseError::TruncatedIpv6);
        }
        if b[field::VER_TC_FLOW.start] >> 4 != 6 {
            return Err(ParseError::BadIpVersion);
        }
        if b.len() < Self::HEADER_LEN {
            return Err(ParseError::TruncatedIpv6);
        }
        Ok(Self::HEADER_LEN + usize::from(be16(&b[field::PAYLOAD_LEN])))
    }

    /// Always 6.
    #[must_use]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    /// Traffic class.
    #[must_use]
    pub fn traffic_class(&self) -> u8 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        (b[0] << 4) | (b[1] >> 4)
    }

    /// Flow label (20 bits).
    #[must_use]
    pub fn flow_label(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::VER_TC_FLOW]) & 0x000f_ffff
    }

    /// Payload length field (extension headers included).
    #[must_use]
    pub fn payload_len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::PAYLOAD_LEN])
    }

    /// Next header of the fixed header.
    #[must_use]
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// Hop limit.
    #[must_use]
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address as a number.
    #[must_use]
    #[inline]
    pub fn src(&self) -> u128 {
        be128(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    /// Destination address as a number.
    #[must_use]
    #[inline]
    pub fn dst(&self) -> u128 {
        be128(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// Source address.
    #[must_use]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.src())
    }

    /// Destination address.
    #[must_use]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.dst())
    }

    /// Everything after the fixed header up to the payload length
    /// (extension headers included).
    #[must_use]
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..self.end]
    }

    /// The packet from the fixed header to the end of the payload.
    #[must_use]
    #[inline]
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.end]
    }

    /// Walks the extension headers. Stops at the first value that is not an
    /// extension header, and after a fragment header with a non-zero offset
    /// (the rest of such a fragment is data, not headers).
    #[inline]
    pub fn extensions(&self) -> Result<Ipv6Extensions, ParseError> {
        let b = self.packet();
        let mut protocol = self.next_header();
        let mut offset = Self::HEADER_LEN;
        let mut fragment = None;
        let mut count = 0u8;
        loop {
            match protocol {
                ip_proto::FRAGMENT => {
                    if usize::from(count) == MAX_EXTENSION_HEADERS {
                        return Err(ParseError::TooManyIpv6Extensions);
                    }
                    count += 1;
                    let h = Ipv6FragmentHeader::new_checked(&b[offset..])?;
                    protocol = h.next_header();
                    offset += Ipv6FragmentHeader::<&[u8]>::HEADER_LEN;
                    let info = h.fragment();
                    fragment = Some(info);
                    if info.offset != 0 {
                        break;
                    }
                }
                ip_proto::HOP_BY_HOP
                | ip_proto::ROUTING
                | ip_proto::DESTINATION_OPTIONS
                | ip_proto::AH => {
                    if usize::from(count) == MAX_EXTENSION_HEADERS {
                        return Err(ParseError::TooManyIpv6Extensions);
                    }
                    count += 1;
                    let h = Ipv6ExtHeader::new_checked(&b[offset..], protocol)?;
                    protocol = h.next_header();
                    offset += h.header_len();
                }
                _ => break,
            }
        }
        Ok(Ipv6Extensions {
            protocol,
            l4_offset: offset,
            fragment,
            count,
        })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets the hop limit (IPv6 has no header checksum).
    #[inline]
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    /// Sets the source address (the transport checksum is the caller's).
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address (the transport checksum is the
    /// caller's).
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }
}

/// A checked view of a variable-length extension header: hop-by-hop,
/// routing, destination options (length in 8-byte units beyond the first
/// 8) or AH (length in 4-byte units beyond the first 8).
#[derive(Clone, Copy, Debug)]
pub struct Ipv6ExtHeader<T> {
    buffer: T,
    len: usize,
}

impl<T: AsRef<[u8]>> Ipv6ExtHeader<T> {
    /// Checks that the header of type `kind` (the next-header value that
    /// announced it) fits in the buffer.
    #[inline]
    pub fn new_checked(buffer: T, kind: u8) -> Result<Self, ParseError> {
        let b = buffer.as_ref();
        if b.len() < 2 {
            return Err(ParseError::TruncatedIpv6Extension);
        }
        let units = usize::from(b[ext_field::LENGTH]);
        let len = if kind == ip_proto::AH {
            (units + 2) * 4
        } else {
            (units + 1) * 8
        };
        if b.len() < len {
            return Err(ParseError::TruncatedIpv6Extension);
        }
        Ok(Self { buffer, len })
    }

    /// Next header.
    #[must_use]
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[ext_field::NEXT_HEADER]
    }

    /// Length of this header in bytes.
    #[must_use]
    #[inline]
    pub fn header_len(&self) -> usize {
        self.len
    }

    /// The header's bytes after next-header and length (options, routing
    /// data, AH fields).
    #[must_use]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[2..self.len]
    }
}

/// A checked view of an IPv6 fragment header.
#[derive(Clone, Copy, Debug)]
pub struct Ipv6FragmentHeader<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6FragmentHeader<T> {
    /// Length of a fragment header.
    pub const HEADER_LEN: usize = 8;

    /// Checks that the header fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(ParseError::TruncatedIpv6Extension);
        }
        Ok(Self { buffer })
    }

    /// Next header (of the reassembled packet's fragmentable part).
    #[must_use]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[ext_field::NEXT_HEADER]
    }

    /// Fragment offset in bytes.
    #[must_use]
    pub fn frag_offset(&self) -> u16 {
        be16(&self.buffer.as_ref()[ext_field::FRAG_OFFSET_M]) & 0xfff8
    }

    /// The M flag.
    #[must_use]
    pub fn more_frags(&self) -> bool {
        self.buffer.as_ref()[ext_field::FRAG_OFFSET_M.end - 1] & 1 != 0
    }

    /// Identification.
    #[must_use]
    pub fn ident(&self) -> u32 {
        be32(&self.buffer.as_ref()[ext_field::FRAG_IDENT])
    }

    /// All three fragment fields.
    #[must_use]
    pub fn fragment(&self) -> Ipv6Fragment {
        Ipv6Fragment {
            ident: self.ident(),
            offset: self.frag_offset(),
            more: self.more_frags(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x60, 0x12, 0x34, 0x56];
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(&[next, 63]);
        v.extend_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets());
        v.extend_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn fixed_header() {
        let mut v = header(ip_proto::TCP, &[1, 2, 3]);
        v.extend_from_slice(&[0; 5]); // padding
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0x01);
        assert_eq!(p.flow_label(), 0x23456);
        assert_eq!(p.payload_len(), 3);
        assert_eq!(p.next_header(), ip_proto::TCP);
        assert_eq!(p.hop_limit(), 63);
        assert_eq!(p.src_addr(), "fd00::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.payload(), &[1, 2, 3]);
        let ext = p.extensions().unwrap();
        assert_eq!(
            ext,
            Ipv6Extensions {
                protocol: ip_proto::TCP,
                l4_offset: 40,
                fragment: None,
                count: 0
            }
        );
    }

    #[test]
    fn chain_of_extension_headers() {
        let mut payload = vec![];
        // Hop-by-hop, 8 bytes, next = routing.
        payload.extend_from_slice(&[ip_proto::ROUTING, 0, 1, 4, 0, 0, 0, 0]);
        // Routing, 24 bytes, next = AH.
        payload.extend_from_slice(&[ip_proto::AH, 2]);
        payload.extend_from_slice(&[0; 22]);
        // AH, (2 + 2) * 4 = 16 bytes, next = fragment.
        payload.extend_from_slice(&[ip_proto::FRAGMENT, 2]);
        payload.extend_from_slice(&[0; 14]);
        // Fragment, offset 0, M set, id 0xdeadbeef, next = destination options.
        payload.extend_from_slice(&[
            ip_proto::DESTINATION_OPTIONS,
            0,
            0,
            1,
            0xde,
            0xad,
            0xbe,
            0xef,
        ]);
        // Destination options, 8 bytes, next = UDP.
        payload.extend_from_slice(&[ip_proto::UDP, 0, 1, 4, 0, 0, 0, 0]);
        payload.extend_from_slice(&[0; 8]);
        let v = header(ip_proto::HOP_BY_HOP, &payload);
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        let ext = p.extensions().unwrap();
        assert_eq!(ext.protocol, ip_proto::UDP);
        assert_eq!(ext.l4_offset, 40 + 8 + 24 + 16 + 8 + 8);
        assert_eq!(ext.count, 5);
        assert_eq!(
            ext.fragment,
            Some(Ipv6Fragment {
                ident: 0xdead_beef,
                offset: 0,
                more: true
            })
        );

        // Every truncation of the chain is an extension error, not a panic.
        for cut in 0..payload.len() - 8 {
            let v = header(ip_proto::HOP_BY_HOP, &payload[..cut]);
            let p = Ipv6Packet::new_checked(&v[..]).unwrap();
            assert_eq!(
                p.extensions().unwrap_err(),
                ParseError::TruncatedIpv6Extension,
                "{cut}"
            );
        }
    }

    #[test]
    fn later_fragment_stops_the_walk() {
        // Offset 1480, M clear, next = TCP; what follows is data that looks
        // like a hop-by-hop header and must not be walked.
        let mut payload = vec![ip_proto::TCP, 0];
        payload.extend_from_slice(&1480u16.to_be_bytes());
        payload.extend_from_slice(&7u32.to_be_bytes());
        payload.extend_from_slice(&[0, 200]);
        let v = header(ip_proto::FRAGMENT, &payload);
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        let ext = p.extensions().unwrap();
        assert_eq!(ext.protocol, ip_proto::TCP);
        assert_eq!(ext.l4_offset, 48);
        assert_eq!(
            ext.fragment,
            Some(Ipv6Fragment {
                ident: 7,
                offset: 1480,
                more: false
            })
        );

        let h = Ipv6FragmentHeader::new_checked(&payload[..]).unwrap();
        assert_eq!(h.next_header(), ip_proto::TCP);
        assert_eq!(h.frag_offset(), 1480);
        assert!(!h.more_frags());
        assert_eq!(h.ident(), 7);
    }

    #[test]
    fn chain_longer_than_the_bound() {
        let mut payload = vec![];
        for _ in 0..=MAX_EXTENSION_HEADERS {
            payload.extend_from_slice(&[ip_proto::DESTINATION_OPTIONS, 0, 1, 4, 0, 0, 0, 0]);
        }
        let v = header(ip_proto::DESTINATION_OPTIONS, &payload);
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        assert_eq!(
            p.extensions().unwrap_err(),
            ParseError::TooManyIpv6Extensions
        );
        // Exactly at the bound is fine when the last one ends the chain.
        let mut payload = payload[8..].to_vec();
        let last = payload.len() - 8;
        payload[last] = ip_proto::NO_NEXT_HEADER;
        let v = header(ip_proto::DESTINATION_OPTIONS, &payload);
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        let ext = p.extensions().unwrap();
        assert_eq!(usize::from(ext.count), MAX_EXTENSION_HEADERS);
        assert_eq!(ext.protocol, ip_proto::NO_NEXT_HEADER);
        assert_eq!(ext.l4_offset, v.len());
    }

    #[test]
    fn setters_write_the_fields_and_nothing_else() {
        let mut v = header(ip_proto::TCP, &[1, 2, 3]);
        let orig = v.clone();
        let a: Ipv6Addr = "2001:db8::a".parse().unwrap();
        let b: Ipv6Addr = "fd00:10:96::1".parse().unwrap();
        let mut p = Ipv6Packet::new_checked(&mut v[..]).unwrap();
        p.set_hop_limit(1);
        p.set_src_addr(a);
        p.set_dst_addr(b);
        assert_eq!(p.hop_limit(), 1);
        assert_eq!((p.src_addr(), p.dst_addr()), (a, b));
        assert_eq!(p.payload(), &[1, 2, 3]);
        for (i, (x, y)) in v.iter().zip(&orig).enumerate() {
            let written = i == field::HOP_LIMIT || (8..40).contains(&i);
            assert!(written || x == y, "byte {i} changed");
        }
    }

    #[test]
    fn ext_header_view() {
        let data = [ip_proto::TCP, 1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9];
        let h = Ipv6ExtHeader::new_checked(&data[..], ip_proto::ROUTING).unwrap();
        assert_eq!(h.next_header(), ip_proto::TCP);
        assert_eq!(h.header_len(), 16);
        assert_eq!(h.data().len(), 14);
        // As AH the same length byte means (1 + 2) * 4 = 12 bytes.
        let h = Ipv6ExtHeader::new_checked(&data[..], ip_proto::AH).unwrap();
        assert_eq!(h.header_len(), 12);
        assert!(Ipv6ExtHeader::new_checked(&data[..15], ip_proto::ROUTING).is_err());
        assert!(Ipv6ExtHeader::new_checked(&data[..1], ip_proto::AH).is_err());
    }

    #[test]
    fn errors() {
        let v = header(ip_proto::UDP, &[0; 8]);
        for len in 0..48 {
            let e = Ipv6Packet::new_checked(&v[..len]).unwrap_err();
            assert_eq!(e, ParseError::TruncatedIpv6, "{len}");
        }
        let mut bad = v.clone();
        bad[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&bad[..]).unwrap_err(),
            ParseError::BadIpVersion
        );
        // Embedded: the payload may be cut short.
        let p = Ipv6Packet::new_checked_embedded(&v[..44]).unwrap();
        assert_eq!(p.payload().len(), 4);
        assert_eq!(
            Ipv6Packet::new_checked_embedded(&v[..39]).unwrap_err(),
            ParseError::TruncatedIpv6
        );
    }
}
