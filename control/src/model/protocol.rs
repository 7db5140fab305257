//! The transport protocols NetworkPolicy names.

use std::fmt;

/// A transport protocol NetworkPolicy can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// All protocols NetworkPolicy supports.
    pub const ALL: [Self; 3] = [Self::Tcp, Self::Udp, Self::Sctp];

    /// Parses a protocol name as the API spells it; `any_case` also accepts
    /// `tcp`, `Udp`, ... (for command-line input; the API is case-sensitive).
    #[must_use]
    pub fn parse(s: &str, any_case: bool) -> Option<Self> {
        let p = |name: &str| {
            if any_case {
                s.eq_ignore_ascii_case(name)
            } else {
                s == name
            }
        };
        if p("TCP") {
            Some(Self::Tcp)
        } else if p("UDP") {
            Some(Self::Udp)
        } else if p("SCTP") {
            Some(Self::Sctp)
        } else {
            None
        }
    }

    /// The API's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    /// The IP protocol number.
    #[must_use]
    pub fn ip_protocol(self) -> podfence_datapath::IpProtocol {
        match self {
            Self::Tcp => podfence_datapath::IpProtocol::TCP,
            Self::Udp => podfence_datapath::IpProtocol::UDP,
            Self::Sctp => podfence_datapath::IpProtocol::SCTP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
