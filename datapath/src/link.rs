//! Link-layer framing of a received frame.
//!
//! AF_XDP ports always deliver Ethernet; captures may hold raw IP or Linux
//! "cooked" frames instead, so every frame carries its framing to the parser.

/// How a frame starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// Ethernet II, possibly with 802.1Q / 802.1ad tags.
    #[default]
    Ethernet,
    /// No link header: the frame starts with an IPv4 or IPv6 header (version
    /// nibble decides).
    RawIp,
    /// Linux cooked capture v1 (`DLT_LINUX_SLL`, 16-byte header).
    LinuxSll,
    /// Linux cooked capture v2 (`DLT_LINUX_SLL2`, 20-byte header).
    LinuxSll2,
}

impl LinkType {
    /// The framing of a pcap/pcapng link-type number, if podfence reads it.
    #[must_use]
    pub fn from_pcap(linktype: u32) -> Option<Self> {
        Some(match linktype {
            1 => Self::Ethernet,
            // DLT_RAW (12 on most systems, 14 on OpenBSD) and LINKTYPE_RAW,
            // LINKTYPE_IPV4, LINKTYPE_IPV6.
            12 | 14 | 101 | 228 | 229 => Self::RawIp,
            113 => Self::LinuxSll,
            276 => Self::LinuxSll2,
            _ => return None,
        })
    }

    /// The pcap link-type number to write frames of this framing with.
    #[must_use]
    pub fn to_pcap(self) -> u32 {
        match self {
            Self::Ethernet => 1,
            Self::RawIp => 101,
            Self::LinuxSll => 113,
            Self::LinuxSll2 => 276,
        }
    }
}
