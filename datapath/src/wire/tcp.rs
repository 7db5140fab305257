//! TCP headers: ports and flags for connection tracking.

use super::{ParseError, be16, be32};

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
        let header_len = usize::from(b[12] >> 4) * 4;
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
        be16(self.buffer.as_ref(), 0)
    }

    /// Destination port.
    #[must_use]
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// Sequence number.
    #[must_use]
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }

    /// Acknowledgement number.
    #[must_use]
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 8)
    }

    /// Header length in bytes, options included.
    #[must_use]
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[12] >> 4) * 4
    }

    /// The eight classic flag bits (see [`flags`]).
    #[must_use]
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[13]
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
        be16(self.buffer.as_ref(), 14)
    }

    /// Checksum field.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 16)
    }

    /// Urgent pointer.
    #[must_use]
    pub fn urgent(&self) -> u16 {
        be16(self.buffer.as_ref(), 18)
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
