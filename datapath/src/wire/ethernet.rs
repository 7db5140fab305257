//! Ethernet II frames with up to two 802.1Q / 802.1ad (QinQ) tags.
//!
//! AF_XDP pod and host ports deliver Ethernet; the parser needs the
//! ethertype of the payload and where it starts, past any VLAN tags.

use super::{ParseError, be16};

/// Byte positions of the untagged header's fields.
pub mod field {
    use std::ops::Range;

    /// Destination MAC address.
    pub const DST_ADDR: Range<usize> = 0..6;
    /// Source MAC address.
    pub const SRC_ADDR: Range<usize> = 6..12;
    /// Ethertype, or the TPID of a VLAN tag.
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// Ethertypes the parser acts on. Any other value is carried as is.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service VLAN tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88a8;
    /// Pre-standard QinQ outer tag still sent by some switches.
    pub const QINQ_OLD: u16 = 0x9100;

    /// Whether `ethertype` introduces a VLAN tag.
    #[must_use]
    #[inline]
    pub fn is_vlan_tag(ethertype: u16) -> bool {
        matches!(ethertype, VLAN | QINQ | QINQ_OLD)
    }
}

/// The most VLAN tags a frame may carry (QinQ).
pub const MAX_VLAN_TAGS: usize = 2;

/// The VLAN tags of a frame, outermost first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VlanTags {
    tci: [u16; MAX_VLAN_TAGS],
    len: u8,
}

impl VlanTags {
    /// Number of tags (0 to 2).
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the frame was untagged.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The VLAN id (low 12 bits of the TCI) of the outermost tag.
    #[must_use]
    pub fn outer_id(&self) -> Option<u16> {
        (self.len >= 1).then_some(self.tci[0] & 0x0fff)
    }

    /// The VLAN id of the inner tag of a QinQ frame.
    #[must_use]
    pub fn inner_id(&self) -> Option<u16> {
        (self.len >= 2).then_some(self.tci[1] & 0x0fff)
    }

    /// The full tag control information (PCP, DEI, VID), outermost first.
    #[must_use]
    pub fn tcis(&self) -> &[u16] {
        &self.tci[..self.len()]
    }
}

/// The payload type and position after walking VLAN tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VlanWalk {
    pub(crate) ethertype: u16,
    pub(crate) payload_offset: usize,
    pub(crate) tags: VlanTags,
}

/// Skips the VLAN tags that start at `offset` when `ethertype` announces one.
#[inline]
pub(crate) fn walk_vlan_tags(
    b: &[u8],
    mut offset: usize,
    mut ethertype: u16,
) -> Result<VlanWalk, ParseError> {
    let mut tags = VlanTags::default();
    while ethertype::is_vlan_tag(ethertype) {
        if tags.len() == MAX_VLAN_TAGS {
            return Err(ParseError::TooManyVlanTags);
        }
        if b.len() < offset + 4 {
            return Err(ParseError::TruncatedVlan);
        }
        tags.tci[tags.len()] = be16(&b[offset..]);
        tags.len += 1;
        ethertype = be16(&b[offset + 2..]);
        offset += 4;
    }
    Ok(VlanWalk {
        ethertype,
        payload_offset: offset,
        tags,
    })
}

/// A checked view of an Ethernet II frame.
#[derive(Clone, Copy, Debug)]
pub struct EthernetFrame<T> {
    buffer: T,
    walk: VlanWalk,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Length of an untagged Ethernet header.
    pub const HEADER_LEN: usize = 14;

    /// Checks the header and walks up to two VLAN tags.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let b = buffer.as_ref();
        if b.len() < Self::HEADER_LEN {
            return Err(ParseError::TruncatedEthernet);
        }
        let walk = walk_vlan_tags(b, Self::HEADER_LEN, be16(&b[field::ETHERTYPE]))?;
        Ok(Self { buffer, walk })
    }

    /// Destination MAC address.
    #[must_use]
    pub fn dst_addr(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::DST_ADDR]);
        mac
    }

    /// Source MAC address.
    #[must_use]
    pub fn src_addr(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::SRC_ADDR]);
        mac
    }

    /// The ethertype field right after the MAC addresses (a TPID if tagged).
    #[must_use]
    pub fn outer_ethertype(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::ETHERTYPE])
    }

    /// The ethertype of the payload, after any VLAN tags.
    #[must_use]
    #[inline]
    pub fn ethertype(&self) -> u16 {
        self.walk.ethertype
    }

    /// The VLAN tags, outermost first.
    #[must_use]
    pub fn vlan_tags(&self) -> VlanTags {
        self.walk.tags
    }

    /// Header length including VLAN tags: the payload offset.
    #[must_use]
    #[inline]
    pub fn header_len(&self) -> usize {
        self.walk.payload_offset
    }

    /// Everything after the header and tags (may include Ethernet padding).
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.walk.payload_offset..]
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTAGGED: [u8; 16] = [
        1, 2, 3, 4, 5, 6, // dst
        7, 8, 9, 10, 11, 12, // src
        0x08, 0x00, // IPv4
        0xaa, 0xbb,
    ];

    #[test]
    fn untagged() {
        let f = EthernetFrame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(f.dst_addr(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(f.src_addr(), [7, 8, 9, 10, 11, 12]);
        assert_eq!(f.ethertype(), ethertype::IPV4);
        assert_eq!(f.outer_ethertype(), ethertype::IPV4);
        assert_eq!(f.header_len(), 14);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
        assert!(f.vlan_tags().is_empty());
        assert_eq!(f.vlan_tags().outer_id(), None);
    }

    fn tagged(tpids: &[u16], inner: u16) -> Vec<u8> {
        let mut v = UNTAGGED[..12].to_vec();
        for (i, tpid) in tpids.iter().enumerate() {
            v.extend_from_slice(&tpid.to_be_bytes());
            // PCP 5, VID 100 + i.
            v.extend_from_slice(&(0xa000 | (100 + i as u16)).to_be_bytes());
        }
        v.extend_from_slice(&inner.to_be_bytes());
        v.extend_from_slice(&[0x60, 0]);
        v
    }

    #[test]
    fn single_tag() {
        let v = tagged(&[ethertype::VLAN], ethertype::IPV6);
        let f = EthernetFrame::new_checked(&v[..]).unwrap();
        assert_eq!(f.ethertype(), ethertype::IPV6);
        assert_eq!(f.outer_ethertype(), ethertype::VLAN);
        assert_eq!(f.header_len(), 18);
        assert_eq!(f.vlan_tags().len(), 1);
        assert_eq!(f.vlan_tags().outer_id(), Some(100));
        assert_eq!(f.vlan_tags().inner_id(), None);
        assert_eq!(f.vlan_tags().tcis(), &[0xa064]);
        assert_eq!(f.payload(), &[0x60, 0]);
    }

    #[test]
    fn qinq_all_tpids() {
        for outer in [ethertype::QINQ, ethertype::QINQ_OLD, ethertype::VLAN] {
            let v = tagged(&[outer, ethertype::VLAN], ethertype::ARP);
            let f = EthernetFrame::new_checked(&v[..]).unwrap();
            assert_eq!(f.ethertype(), ethertype::ARP);
            assert_eq!(f.header_len(), 22);
            assert_eq!(f.vlan_tags().outer_id(), Some(100));
            assert_eq!(f.vlan_tags().inner_id(), Some(101));
        }
    }

    #[test]
    fn three_tags_are_malformed() {
        let v = tagged(
            &[ethertype::QINQ, ethertype::VLAN, ethertype::VLAN],
            ethertype::IPV4,
        );
        assert_eq!(
            EthernetFrame::new_checked(&v[..]).unwrap_err(),
            ParseError::TooManyVlanTags
        );
    }

    #[test]
    fn truncations() {
        for len in 0..14 {
            assert_eq!(
                EthernetFrame::new_checked(&UNTAGGED[..len]).unwrap_err(),
                ParseError::TruncatedEthernet
            );
        }
        let v = tagged(&[ethertype::QINQ, ethertype::VLAN], ethertype::IPV4);
        for len in 14..22 {
            assert_eq!(
                EthernetFrame::new_checked(&v[..len]).unwrap_err(),
                ParseError::TruncatedVlan,
                "{len}"
            );
        }
        let f = EthernetFrame::new_checked(&v[..22]).unwrap();
        assert!(f.payload().is_empty());
    }
}
