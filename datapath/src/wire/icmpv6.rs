//! ICMPv6: type, code, echo identifier and the packet quoted in an error
//! message (RFC 4443).
//!
//! Same roles as [`super::icmpv4`]: the echo identifier stands in for
//! ports, and an error quotes as much of the offending packet as fits.
//! Neighbour discovery and MLD messages are plain types with no ports.

use super::{ParseError, be16, be32};

/// Byte positions of the header's fields.
pub mod field {
    use std::ops::Range;

    /// Message type.
    pub const TYPE: usize = 0;
    /// Message code.
    pub const CODE: usize = 1;
    /// Checksum.
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Echo: identifier.
    pub const ECHO_IDENT: Range<usize> = 4..6;
    /// Echo: sequence number.
    pub const ECHO_SEQ: Range<usize> = 6..8;
    /// The four type-specific bytes (an MTU, a pointer, unused).
    pub const REST: Range<usize> = 4..8;
}

/// ICMPv6 message types podfence distinguishes.
pub mod kind {
    /// Destination unreachable (error).
    pub const DEST_UNREACHABLE: u8 = 1;
    /// Packet too big (error).
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded (error).
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem (error).
    pub const PARAMETER_PROBLEM: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Router solicitation.
    pub const ROUTER_SOLICIT: u8 = 133;
    /// Router advertisement.
    pub const ROUTER_ADVERT: u8 = 134;
    /// Neighbour solicitation.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbour advertisement.
    pub const NEIGHBOR_ADVERT: u8 = 136;
    /// Redirect.
    pub const REDIRECT: u8 = 137;
}

/// Destination unreachable codes podfence sends.
pub mod unreachable {
    /// Port unreachable.
    pub const PORT: u8 = 4;
}

/// Whether an ICMPv6 type is one of the four error messages of RFC 4443
/// (other types below 128 are unassigned and treated as plain types).
#[must_use]
#[inline]
pub fn is_error(msg_type: u8) -> bool {
    matches!(
        msg_type,
        kind::DEST_UNREACHABLE
            | kind::PACKET_TOO_BIG
            | kind::TIME_EXCEEDED
            | kind::PARAMETER_PROBLEM
    )
}

/// Whether an ICMPv6 type is an echo request or reply.
#[must_use]
#[inline]
pub fn is_echo(msg_type: u8) -> bool {
    matches!(msg_type, kind::ECHO_REQUEST | kind::ECHO_REPLY)
}

/// A checked view of an ICMPv6 message: the 8-byte header is present.
#[derive(Clone, Copy, Debug)]
pub struct Icmpv6Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// Header length (type, code, checksum, 4 type-specific bytes).
    pub const HEADER_LEN: usize = 8;

    /// Checks that the header fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(ParseError::TruncatedIcmpv6);
        }
        Ok(Self { buffer })
    }

    /// Message type.
    #[must_use]
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Message code.
    #[must_use]
    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Echo identifier, for echo request and reply.
    #[must_use]
    #[inline]
    pub fn echo_ident(&self) -> Option<u16> {
        is_echo(self.msg_type()).then(|| be16(&self.buffer.as_ref()[field::ECHO_IDENT]))
    }

    /// Echo sequence number, for echo request and reply.
    #[must_use]
    pub fn echo_seq(&self) -> Option<u16> {
        is_echo(self.msg_type()).then(|| be16(&self.buffer.as_ref()[field::ECHO_SEQ]))
    }

    /// MTU of a packet-too-big message.
    #[must_use]
    pub fn mtu(&self) -> Option<u32> {
        (self.msg_type() == kind::PACKET_TOO_BIG).then(|| be32(&self.buffer.as_ref()[field::REST]))
    }

    /// Whether this is an error message.
    #[must_use]
    #[inline]
    pub fn is_error(&self) -> bool {
        is_error(self.msg_type())
    }

    /// For an error message, the quoted packet (starting with its IPv6
    /// header).
    #[must_use]
    #[inline]
    pub fn embedded(&self) -> Option<&[u8]> {
        self.is_error().then(|| self.payload())
    }

    /// Everything after the 8-byte header.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, checksum: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_and_errors() {
        let v = [kind::ECHO_REPLY, 0, 0, 0, 0xbe, 0xef, 0, 9];
        let p = Icmpv6Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.msg_type(), kind::ECHO_REPLY);
        assert_eq!(p.code(), 0);
        assert_eq!(p.checksum(), 0);
        assert_eq!(p.echo_ident(), Some(0xbeef));
        assert_eq!(p.echo_seq(), Some(9));
        assert_eq!(p.mtu(), None);
        assert_eq!(p.embedded(), None);
        assert!(p.payload().is_empty());

        let v = [kind::PACKET_TOO_BIG, 0, 0, 0, 0, 0, 0x05, 0xdc, 0x60];
        let p = Icmpv6Packet::new_checked(&v[..]).unwrap();
        assert!(p.is_error());
        assert_eq!(p.mtu(), Some(1500));
        assert_eq!(p.echo_ident(), None);
        assert_eq!(p.embedded(), Some(&[0x60][..]));

        let ns = [kind::NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        let p = Icmpv6Packet::new_checked(&ns[..]).unwrap();
        assert!(!p.is_error());
        assert_eq!(p.echo_ident(), None);

        for len in 0..8 {
            assert_eq!(
                Icmpv6Packet::new_checked(&v[..len]).unwrap_err(),
                ParseError::TruncatedIcmpv6
            );
        }
    }

    #[test]
    fn set_checksum() {
        let mut v = [kind::ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 1, 0xaa];
        let orig = v;
        let mut p = Icmpv6Packet::new_checked(&mut v[..]).unwrap();
        p.set_checksum(0x0bad);
        assert_eq!(p.checksum(), 0x0bad);
        assert_eq!(p.echo_ident(), Some(0x1234));
        assert_eq!((&v[..2], &v[4..]), (&orig[..2], &orig[4..]));
    }
}
