//! UDP headers: ports and the length field.

use super::{ParseError, be16};

/// Byte positions of the header's fields.
pub mod field {
    use std::ops::Range;

    /// Source port.
    pub const SRC_PORT: Range<usize> = 0..2;
    /// Destination port.
    pub const DST_PORT: Range<usize> = 2..4;
    /// Length: header plus data.
    pub const LENGTH: Range<usize> = 4..6;
    /// Checksum (0: none, IPv4 only).
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// A checked view of a UDP datagram, cut at its length field.
#[derive(Clone, Copy, Debug)]
pub struct UdpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Header length.
    pub const HEADER_LEN: usize = 8;

    /// Checks the header and the length field against the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let b = buffer.as_ref();
        if b.len() < Self::HEADER_LEN {
            return Err(ParseError::TruncatedUdp);
        }
        let len = usize::from(be16(&b[field::LENGTH]));
        if len < Self::HEADER_LEN {
            return Err(ParseError::BadUdpLength);
        }
        if b.len() < len {
            return Err(ParseError::TruncatedUdp);
        }
        Ok(Self { buffer })
    }

    /// Like [`UdpPacket::new_checked`] for the first fragment of a
    /// fragmented datagram, whose length field covers all fragments: only
    /// the header must be present.
    #[inline]
    pub fn new_checked_header(buffer: T) -> Result<Self, ParseError> {
        let b = buffer.as_ref();
        if b.len() < Self::HEADER_LEN {
            return Err(ParseError::TruncatedUdp);
        }
        if be16(&b[field::LENGTH]) < 8 {
            return Err(ParseError::BadUdpLength);
        }
        Ok(Self { buffer })
    }

    /// Source port.
    #[must_use]
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::SRC_PORT])
    }

    /// Destination port.
    #[must_use]
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::DST_PORT])
    }

    /// Length field: header plus data.
    #[must_use]
    pub fn len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Whether the datagram carries no data.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 8
    }

    /// Checksum field (0: none, IPv4 only).
    #[must_use]
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The data, up to the length field or the end of the buffer.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = usize::from(self.len()).min(b.len());
        &b[Self::HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port (the checksum is the caller's).
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&port.to_be_bytes());
    }

    /// Sets the destination port (the checksum is the caller's).
    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&port.to_be_bytes());
    }

    /// Sets the checksum field. A computed checksum of 0 goes on the wire
    /// as 0xffff: 0 means "none".
    #[inline]
    pub fn set_checksum(&mut self, checksum: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let v = [0x00, 0x35, 0xd4, 0x31, 0x00, 0x0a, 0xab, 0xcd, 1, 2, 0xee];
        let u = UdpPacket::new_checked(&v[..]).unwrap();
        assert_eq!(u.src_port(), 53);
        assert_eq!(u.dst_port(), 54321);
        assert_eq!(u.len(), 10);
        assert!(!u.is_empty());
        assert_eq!(u.checksum(), 0xabcd);
        assert_eq!(u.payload(), &[1, 2]);
    }

    #[test]
    fn setters_write_the_fields_and_nothing_else() {
        let mut v = [0x00, 0x35, 0xd4, 0x31, 0x00, 0x0a, 0xab, 0xcd, 1, 2, 0xee];
        let orig = v;
        let mut u = UdpPacket::new_checked(&mut v[..]).unwrap();
        u.set_src_port(5353);
        u.set_dst_port(0);
        u.set_checksum(0xffff);
        assert_eq!(
            (u.src_port(), u.dst_port(), u.checksum()),
            (5353, 0, 0xffff)
        );
        assert_eq!((u.len(), u.payload()), (10, &[1, 2][..]));
        for (i, (a, b)) in v.iter().zip(&orig).enumerate() {
            let written = (0..4).contains(&i) || field::CHECKSUM.contains(&i);
            assert!(written || a == b, "byte {i} changed");
        }
    }

    #[test]
    fn errors() {
        let v = [0x00, 0x35, 0xd4, 0x31, 0x00, 0x0a, 0xab, 0xcd, 1, 2];
        for len in 0..10 {
            assert_eq!(
                UdpPacket::new_checked(&v[..len]).unwrap_err(),
                ParseError::TruncatedUdp
            );
        }
        let bad = [0x00, 0x35, 0xd4, 0x31, 0x00, 0x07, 0, 0];
        assert_eq!(
            UdpPacket::new_checked(&bad[..]).unwrap_err(),
            ParseError::BadUdpLength
        );
        assert_eq!(
            UdpPacket::new_checked_header(&bad[..]).unwrap_err(),
            ParseError::BadUdpLength
        );
        // A first fragment: the length field covers more than is here.
        let u = UdpPacket::new_checked_header(&v[..9]).unwrap();
        assert_eq!(u.payload(), &[1]);
        assert_eq!(
            UdpPacket::new_checked_header(&v[..7]).unwrap_err(),
            ParseError::TruncatedUdp
        );
    }
}
