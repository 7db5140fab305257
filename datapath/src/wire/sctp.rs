//! SCTP common header and the type of the first chunk.
//!
//! A new SCTP association starts with an INIT chunk alone in its packet
//! (RFC 9260), so the first chunk type is what connection tracking needs.

use super::{ParseError, be16, be32};

/// Byte positions of the common header's and the first chunk's fields.
pub mod field {
    use std::ops::Range;

    /// Source port.
    pub const SRC_PORT: Range<usize> = 0..2;
    /// Destination port.
    pub const DST_PORT: Range<usize> = 2..4;
    /// Verification tag.
    pub const VERIFICATION_TAG: Range<usize> = 4..8;
    /// CRC32c checksum (stored little-endian, read here as a big-endian
    /// number).
    pub const CHECKSUM: Range<usize> = 8..12;
    /// First chunk: type.
    pub const CHUNK_TYPE: usize = 12;
    /// First chunk: flags.
    pub const CHUNK_FLAGS: usize = 13;
    /// First chunk: length.
    pub const CHUNK_LENGTH: Range<usize> = 14..16;
}

/// SCTP chunk types connection tracking cares about.
pub mod chunk {
    /// DATA.
    pub const DATA: u8 = 0;
    /// INIT: opens an association.
    pub const INIT: u8 = 1;
    /// INIT ACK.
    pub const INIT_ACK: u8 = 2;
    /// SACK.
    pub const SACK: u8 = 3;
    /// HEARTBEAT.
    pub const HEARTBEAT: u8 = 4;
    /// HEARTBEAT ACK.
    pub const HEARTBEAT_ACK: u8 = 5;
    /// ABORT.
    pub const ABORT: u8 = 6;
    /// SHUTDOWN.
    pub const SHUTDOWN: u8 = 7;
    /// SHUTDOWN ACK.
    pub const SHUTDOWN_ACK: u8 = 8;
    /// ERROR.
    pub const ERROR: u8 = 9;
    /// COOKIE ECHO.
    pub const COOKIE_ECHO: u8 = 10;
    /// COOKIE ACK.
    pub const COOKIE_ACK: u8 = 11;
    /// SHUTDOWN COMPLETE.
    pub const SHUTDOWN_COMPLETE: u8 = 14;
}

/// The header of an SCTP chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SctpChunkHeader {
    /// Chunk type (see [`chunk`]).
    pub kind: u8,
    /// Chunk flags.
    pub flags: u8,
    /// Chunk length field (header included, padding excluded).
    pub length: u16,
}

/// A checked view of an SCTP packet: the 12-byte common header is present.
#[derive(Clone, Copy, Debug)]
pub struct SctpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SctpPacket<T> {
    /// Length of the common header.
    pub const HEADER_LEN: usize = 12;

    /// Checks that the common header fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(ParseError::TruncatedSctp);
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

    /// Verification tag (0 in a packet carrying INIT).
    #[must_use]
    #[inline]
    pub fn verification_tag(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::VERIFICATION_TAG])
    }

    /// CRC32c checksum field.
    #[must_use]
    pub fn checksum(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The first chunk's header, when its four bytes are present.
    #[must_use]
    #[inline]
    pub fn first_chunk(&self) -> Option<SctpChunkHeader> {
        let b = self.buffer.as_ref();
        if b.len() < field::CHUNK_LENGTH.end {
            return None;
        }
        Some(SctpChunkHeader {
            kind: b[field::CHUNK_TYPE],
            flags: b[field::CHUNK_FLAGS],
            length: be16(&b[field::CHUNK_LENGTH]),
        })
    }

    /// Everything after the common header: the chunks.
    #[must_use]
    pub fn chunks(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SctpPacket<T> {
    /// Sets the source port (the CRC32c is the caller's).
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&port.to_be_bytes());
    }

    /// Sets the destination port (the CRC32c is the caller's).
    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&port.to_be_bytes());
    }

    /// Sets the checksum field, as [`SctpPacket::checksum`] reads it.
    #[inline]
    pub fn set_checksum(&mut self, checksum: u32) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init() {
        let mut v = vec![0x30, 0x39, 0x0b, 0x59, 0, 0, 0, 0, 0xca, 0xfe, 0xba, 0xbe];
        v.extend_from_slice(&[chunk::INIT, 0, 0, 20]);
        v.extend_from_slice(&[0; 16]);
        let s = SctpPacket::new_checked(&v[..]).unwrap();
        assert_eq!(s.src_port(), 12345);
        assert_eq!(s.dst_port(), 2905);
        assert_eq!(s.verification_tag(), 0);
        assert_eq!(s.checksum(), 0xcafe_babe);
        assert_eq!(
            s.first_chunk(),
            Some(SctpChunkHeader {
                kind: chunk::INIT,
                flags: 0,
                length: 20
            })
        );
        assert_eq!(s.chunks().len(), 20);
        // A header without chunks is valid; it has no first chunk.
        for len in 12..16 {
            assert_eq!(
                SctpPacket::new_checked(&v[..len]).unwrap().first_chunk(),
                None
            );
        }
        for len in 0..12 {
            assert_eq!(
                SctpPacket::new_checked(&v[..len]).unwrap_err(),
                ParseError::TruncatedSctp
            );
        }
    }

    #[test]
    fn setters_write_the_fields_and_nothing_else() {
        let mut v = vec![0x30, 0x39, 0x0b, 0x59, 0, 0, 0, 0, 0, 0, 0, 0];
        v.extend_from_slice(&[chunk::INIT, 0, 0, 20]);
        v.extend_from_slice(&[7; 16]);
        let orig = v.clone();
        let mut s = SctpPacket::new_checked(&mut v[..]).unwrap();
        s.set_src_port(1);
        s.set_dst_port(38412);
        s.set_checksum(0xcafe_babe);
        assert_eq!(
            (s.src_port(), s.dst_port(), s.checksum()),
            (1, 38412, 0xcafe_babe)
        );
        assert_eq!(s.first_chunk().map(|c| c.kind), Some(chunk::INIT));
        for (i, (a, b)) in v.iter().zip(&orig).enumerate() {
            let written = (0..4).contains(&i) || field::CHECKSUM.contains(&i);
            assert!(written || a == b, "byte {i} changed");
        }
    }
}
