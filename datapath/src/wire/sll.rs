//! Linux "cooked" capture headers (`DLT_LINUX_SLL` and `DLT_LINUX_SLL2`).
//!
//! `tcpdump -i any` writes these instead of Ethernet; replaying such a
//! capture needs the protocol field to find the IP header.

use super::{ParseError, be16, be32};

/// Byte positions of a `LINUX_SLL` header's fields.
pub mod sll_field {
    use std::ops::Range;

    /// Packet type.
    pub const PACKET_TYPE: Range<usize> = 0..2;
    /// ARPHRD_ type.
    pub const ARPHRD_TYPE: Range<usize> = 2..4;
    /// Link-layer address length.
    pub const ADDR_LEN: Range<usize> = 4..6;
    /// Link-layer address (the first `ADDR_LEN` bytes, at most 8).
    pub const ADDR: Range<usize> = 6..14;
    /// Protocol.
    pub const PROTOCOL: Range<usize> = 14..16;
}

/// Byte positions of a `LINUX_SLL2` header's fields.
pub mod sll2_field {
    use std::ops::Range;

    /// Protocol.
    pub const PROTOCOL: Range<usize> = 0..2;
    /// Interface index.
    pub const IFINDEX: Range<usize> = 4..8;
    /// ARPHRD_ type.
    pub const ARPHRD_TYPE: Range<usize> = 8..10;
    /// Packet type.
    pub const PACKET_TYPE: usize = 10;
    /// Link-layer address length.
    pub const ADDR_LEN: usize = 11;
    /// Link-layer address (the first `ADDR_LEN` bytes, at most 8).
    pub const ADDR: Range<usize> = 12..20;
}

/// A checked view of a 16-byte `LINUX_SLL` header.
#[derive(Clone, Copy, Debug)]
pub struct LinuxSllHeader<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> LinuxSllHeader<T> {
    /// Header length.
    pub const HEADER_LEN: usize = 16;

    /// Checks that the header fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(ParseError::TruncatedSll);
        }
        Ok(Self { buffer })
    }

    /// Packet type (0 to us, 1 broadcast, 2 multicast, 3 to another host,
    /// 4 sent by us).
    #[must_use]
    pub fn packet_type(&self) -> u16 {
        be16(&self.buffer.as_ref()[sll_field::PACKET_TYPE])
    }

    /// ARPHRD_ type of the interface.
    #[must_use]
    pub fn arphrd_type(&self) -> u16 {
        be16(&self.buffer.as_ref()[sll_field::ARPHRD_TYPE])
    }

    /// The link-layer address (up to 8 bytes are stored).
    #[must_use]
    pub fn link_addr(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let len = usize::from(be16(&b[sll_field::ADDR_LEN])).min(8);
        &b[sll_field::ADDR][..len]
    }

    /// Protocol: an ethertype for IP frames.
    #[must_use]
    #[inline]
    pub fn protocol(&self) -> u16 {
        be16(&self.buffer.as_ref()[sll_field::PROTOCOL])
    }

    /// Everything after the header.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }
}

/// A checked view of a 20-byte `LINUX_SLL2` header.
#[derive(Clone, Copy, Debug)]
pub struct LinuxSll2Header<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> LinuxSll2Header<T> {
    /// Header length.
    pub const HEADER_LEN: usize = 20;

    /// Checks that the header fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(ParseError::TruncatedSll);
        }
        Ok(Self { buffer })
    }

    /// Protocol: an ethertype for IP frames.
    #[must_use]
    #[inline]
    pub fn protocol(&self) -> u16 {
        be16(&self.buffer.as_ref()[sll2_field::PROTOCOL])
    }

    /// Interface index the packet was captured on.
    #[must_use]
    pub fn interface_index(&self) -> u32 {
        be32(&self.buffer.as_ref()[sll2_field::IFINDEX])
    }

    /// ARPHRD_ type of the interface.
    #[must_use]
    pub fn arphrd_type(&self) -> u16 {
        be16(&self.buffer.as_ref()[sll2_field::ARPHRD_TYPE])
    }

    /// Packet type, as in [`LinuxSllHeader::packet_type`].
    #[must_use]
    pub fn packet_type(&self) -> u8 {
        self.buffer.as_ref()[sll2_field::PACKET_TYPE]
    }

    /// The link-layer address (up to 8 bytes are stored).
    #[must_use]
    pub fn link_addr(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let len = usize::from(b[sll2_field::ADDR_LEN]).min(8);
        &b[sll2_field::ADDR][..len]
    }

    /// Everything after the header.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sll_fields() {
        let mut h = [0u8; 18];
        h[0..2].copy_from_slice(&4u16.to_be_bytes());
        h[2..4].copy_from_slice(&1u16.to_be_bytes());
        h[4..6].copy_from_slice(&6u16.to_be_bytes());
        h[6..12].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        h[14..16].copy_from_slice(&0x86ddu16.to_be_bytes());
        let s = LinuxSllHeader::new_checked(&h[..]).unwrap();
        assert_eq!(s.packet_type(), 4);
        assert_eq!(s.arphrd_type(), 1);
        assert_eq!(s.link_addr(), &[1, 2, 3, 4, 5, 6]);
        assert_eq!(s.protocol(), 0x86dd);
        assert_eq!(s.payload().len(), 2);
        // An address length above 8 reads only the 8 stored bytes.
        h[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(
            LinuxSllHeader::new_checked(&h[..])
                .unwrap()
                .link_addr()
                .len(),
            8
        );
        for len in 0..16 {
            assert_eq!(
                LinuxSllHeader::new_checked(&h[..len]).unwrap_err(),
                ParseError::TruncatedSll
            );
        }
    }

    #[test]
    fn sll2_fields() {
        let mut h = [0u8; 20];
        h[0..2].copy_from_slice(&0x0800u16.to_be_bytes());
        h[4..8].copy_from_slice(&7u32.to_be_bytes());
        h[8..10].copy_from_slice(&1u16.to_be_bytes());
        h[10] = 0;
        h[11] = 200;
        let s = LinuxSll2Header::new_checked(&h[..]).unwrap();
        assert_eq!(s.protocol(), 0x0800);
        assert_eq!(s.interface_index(), 7);
        assert_eq!(s.arphrd_type(), 1);
        assert_eq!(s.packet_type(), 0);
        assert_eq!(s.link_addr().len(), 8);
        assert!(s.payload().is_empty());
        for len in 0..20 {
            assert_eq!(
                LinuxSll2Header::new_checked(&h[..len]).unwrap_err(),
                ParseError::TruncatedSll
            );
        }
    }
}
