//! ICMP (for IPv4): type, code, echo identifier and the packet quoted in an
//! error message.
//!
//! Echo request and reply carry an identifier that pairs them, so it stands
//! in for ports. An error (unreachable, time exceeded, ...) quotes the IP
//! header and first 8 bytes of the packet that caused it, which names the
//! connection the error belongs to.

use super::{ParseError, be16};

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

/// ICMP message types podfence distinguishes.
pub mod kind {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (error).
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Source quench (error, deprecated).
    pub const SOURCE_QUENCH: u8 = 4;
    /// Redirect (error).
    pub const REDIRECT: u8 = 5;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded (error).
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem (error).
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// Destination unreachable codes podfence sends.
pub mod unreachable {
    /// Port unreachable.
    pub const PORT: u8 = 3;
}

/// Whether an ICMP type is an error message that quotes the offending
/// packet.
#[must_use]
#[inline]
pub fn is_error(msg_type: u8) -> bool {
    matches!(
        msg_type,
        kind::DEST_UNREACHABLE
            | kind::SOURCE_QUENCH
            | kind::REDIRECT
            | kind::TIME_EXCEEDED
            | kind::PARAMETER_PROBLEM
    )
}

/// Whether an ICMP type is an echo request or reply.
#[must_use]
#[inline]
pub fn is_echo(msg_type: u8) -> bool {
    matches!(msg_type, kind::ECHO_REQUEST | kind::ECHO_REPLY)
}

/// A checked view of an ICMP message: the 8-byte header is present.
#[derive(Clone, Copy, Debug)]
pub struct Icmpv4Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Header length (type, code, checksum, 4 type-specific bytes).
    pub const HEADER_LEN: usize = 8;

    /// Checks that the header fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(ParseError::TruncatedIcmp);
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

    /// Whether this is an error message.
    #[must_use]
    #[inline]
    pub fn is_error(&self) -> bool {
        is_error(self.msg_type())
    }

    /// For an error message, the quoted packet: an IPv4 header and at least
    /// 8 bytes of its payload if the sender followed RFC 792.
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

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
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
    fn echo() {
        let v = [kind::ECHO_REQUEST, 0, 0xf7, 0xff, 0x12, 0x34, 0, 1, 0xaa];
        let p = Icmpv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.msg_type(), kind::ECHO_REQUEST);
        assert_eq!(p.code(), 0);
        assert_eq!(p.checksum(), 0xf7ff);
        assert_eq!(p.echo_ident(), Some(0x1234));
        assert_eq!(p.echo_seq(), Some(1));
        assert!(!p.is_error());
        assert_eq!(p.embedded(), None);
        assert_eq!(p.payload(), &[0xaa]);
        for len in 0..8 {
            assert_eq!(
                Icmpv4Packet::new_checked(&v[..len]).unwrap_err(),
                ParseError::TruncatedIcmp
            );
        }
    }

    #[test]
    fn error_quotes_a_packet() {
        let v = [kind::DEST_UNREACHABLE, 3, 0, 0, 0, 0, 0, 0, 0x45, 0];
        let p = Icmpv4Packet::new_checked(&v[..]).unwrap();
        assert!(p.is_error());
        assert_eq!(p.echo_ident(), None);
        assert_eq!(p.echo_seq(), None);
        assert_eq!(p.embedded(), Some(&[0x45, 0][..]));
        for t in [3, 4, 5, 11, 12] {
            assert!(is_error(t));
        }
        for t in [0, 8, 13, 14, 255] {
            assert!(!is_error(t));
        }
    }

    #[test]
    fn set_checksum() {
        let mut v = [kind::ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 1, 0xaa];
        let orig = v;
        let mut p = Icmpv4Packet::new_checked(&mut v[..]).unwrap();
        p.set_checksum(0x0bad);
        assert_eq!(p.checksum(), 0x0bad);
        assert_eq!(p.echo_ident(), Some(0x1234));
        assert_eq!((&v[..2], &v[4..]), (&orig[..2], &orig[4..]));
    }
}
