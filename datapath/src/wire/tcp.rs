//! TCP headers: ports and flags for connection tracking.

use super::{ParseError, be16, be32};

/// Byte positions of the header's fields.
pub mod field {
    use std::ops::Range;

    /// Source port.
    pub const SRC_PORT: Range<usize> = 0..2;
    /// Destination port.
    pub const DST_PORT: Range<usize> = 2..4;
    /// Sequence number.
    pub const SEQ_NUM: Range<usize> = 4..8;
    /// Acknowledgement number.
    pub const ACK_NUM: Range<usize> = 8..12;
    /// Data offset in 32-bit words (high nibble).
    pub const DATA_OFFSET: usize = 12;
    /// The eight classic flag bits.
    pub const FLAGS: usize = 13;
    /// Receive window.
    pub const WINDOW: Range<usize> = 14..16;
    /// Checksum.
    pub const CHECKSUM: Range<usize> = 16..18;
    /// Urgent pointer.
    pub const URGENT: Range<usize> = 18..20;
}

/// TCP flag bits as in the low byte of the flags field.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

/// A checked view of a TCP segment: the header, options included, is in
/// the buffer.
#[derive(Clone, Copy, Debug)]
pub struct TcpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Length of a header without options.
    pub const MIN_HEADER_LEN: usize = 20;

    /// Checks the data offset against the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let b = buffer.as_ref();
        if b.len() < Self::MIN_HEADER_LEN {
            return Err(ParseError::TruncatedTcp);
        }
        let header_len = usize::from(b[field::DATA_OFFSET] >> 4) * 4;
        if header_len < Self::MIN_HEADER_LEN {
            return Err(ParseError::BadTcpDataOffset);
        }
        if b.len() < header_len {
            return Err(ParseError::TruncatedTcp);
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

    /// Sequence number.
    #[must_use]
    pub fn seq_number(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::SEQ_NUM])
    }

    /// Acknowledgement number.
    #[must_use]
    pub fn ack_number(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::ACK_NUM])
    }

    /// Header length in bytes, options included.
    #[must_use]
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The eight classic flag bits (see [`flags`]).
    #[must_use]
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// SYN set.
    #[must_use]
    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    /// ACK set.
    #[must_use]
    pub fn ack(&self) -> bool {
        self.flags() & flags::ACK != 0
    }

    /// FIN set.
    #[must_use]
    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    /// RST set.
    #[must_use]
    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }

    /// Receive window.
    #[must_use]
    pub fn window(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::WINDOW])
    }

    /// Checksum field.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Urgent pointer.
    #[must_use]
    pub fn urgent(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::URGENT])
    }

    /// The option bytes.
    #[must_use]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::MIN_HEADER_LEN..self.header_len()]
    }

    /// The segment data.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
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

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, checksum: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn_with_mss() -> Vec<u8> {
        vec![
            0x9c,
            0x40,
            0x00,
            0x50, // 40000 -> 80
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0, // seq 1, ack 0
            0x60,
            flags::SYN,
            0xff,
            0xff, // 24-byte header, SYN, window
            0x12,
            0x34,
            0,
            0, // checksum, urgent
            2,
            4,
            0x05,
            0xb4, // MSS 1460
            0xaa, // data
        ]
    }

    #[test]
    fn fields() {
        let v = syn_with_mss();
        let t = TcpPacket::new_checked(&v[..]).unwrap();
        assert_eq!(t.src_port(), 40000);
        assert_eq!(t.dst_port(), 80);
        assert_eq!(t.seq_number(), 1);
        assert_eq!(t.ack_number(), 0);
        assert_eq!(t.header_len(), 24);
        assert_eq!(t.flags(), flags::SYN);
        assert!(t.syn() && !t.ack() && !t.fin() && !t.rst());
        assert_eq!(t.window(), 0xffff);
        assert_eq!(t.checksum(), 0x1234);
        assert_eq!(t.urgent(), 0);
        assert_eq!(t.options(), &[2, 4, 0x05, 0xb4]);
        assert_eq!(t.payload(), &[0xaa]);
    }

    #[test]
    fn setters_write_the_fields_and_nothing_else() {
        let mut v = syn_with_mss();
        let orig = v.clone();
        let mut t = TcpPacket::new_checked(&mut v[..]).unwrap();
        t.set_src_port(1);
        t.set_dst_port(0xfffe);
        t.set_checksum(0xabcd);
        assert_eq!(
            (t.src_port(), t.dst_port(), t.checksum()),
            (1, 0xfffe, 0xabcd)
        );
        assert_eq!(t.payload(), &[0xaa]);
        for (i, (a, b)) in v.iter().zip(&orig).enumerate() {
            let written = (0..4).contains(&i) || field::CHECKSUM.contains(&i);
            assert!(written || a == b, "byte {i} changed");
        }
    }

    #[test]
    fn errors() {
        let v = syn_with_mss();
        for len in 0..24 {
            assert_eq!(
                TcpPacket::new_checked(&v[..len]).unwrap_err(),
                ParseError::TruncatedTcp
            );
        }
        let mut bad = v.clone();
        bad[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&bad[..]).unwrap_err(),
            ParseError::BadTcpDataOffset
        );
        bad[12] = 0xf0; // 60 bytes
        assert_eq!(
            TcpPacket::new_checked(&bad[..]).unwrap_err(),
            ParseError::TruncatedTcp
        );
    }
}
