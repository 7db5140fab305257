//! rtnetlink (`NETLINK_ROUTE`) requests for the agent's plumbing: dumps of
//! links, routes, neighbours, addresses and rules, and the changes the
//! plumbing makes to them, without spawning `ip` (a process costs about a
//! millisecond, a request tens of microseconds; a pod's start pays for each).
//!
//! Message types come from `netlink-packet-route`; this module frames
//! requests, reads replies (an ACK, or a multipart dump up to `NLMSG_DONE`),
//! turns a kernel error into [`AgentError::Netlink`] with its errno, the
//! kernel's extended-ACK message where it gives one and the request spelled
//! as the equivalent `ip` command, and hands [`super::plumbing`] plain
//! values. A socket belongs to the network namespace of the thread that
//! opened it: open one per operation, in the namespace it is for.

use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlasIterator,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tracing::{debug, warn};

use super::AgentError;

/// The main routing table.
pub(crate) const TABLE_MAIN: u32 = 254;

/// Receive buffer: the kernel fills a dump's datagrams up to 32 KiB.
const RECV_BUFFER: usize = 64 * 1024;

/// A dump the kernel reports as interrupted by a concurrent change is
/// taken again, this many times at most.
const DUMP_ATTEMPTS: usize = 4;

/// `NLMSGERR_ATTR_MSG`: the extended ACK's text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// `struct nlmsghdr`'s length.
const NLMSG_HEADER_LEN: usize = 16;

/// Message types below this are netlink's own (error, done, no-op,
/// overrun); from it on, the family's data.
const NLMSG_MIN_TYPE: u16 = 0x10;

/// `RTM_NEWLINK`, and the link attributes a [`LinkEntry`] reads
/// (`linux/if_link.h`); `struct ifinfomsg`'s length.
const RTM_NEWLINK: u16 = 16;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_IFALIAS: u16 = 20;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFINFOMSG_LEN: usize = 16;

/// `NUD_NOARP`: a neighbour entry that needs no resolution (`ip neigh show`
/// leaves these out).
const NUD_NOARP: u16 = 0x40;

/// An address family of routes and rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both, IPv4 first.
    pub(crate) const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `addr`.
    pub(crate) fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    fn address_family(self) -> AddressFamily {
        match self {
            Self::V4 => AddressFamily::Inet,
            Self::V6 => AddressFamily::Inet6,
        }
    }

    /// `ip`'s flag for it, for messages.
    fn flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }

    /// A host route's prefix length.
    pub(crate) fn host_prefix_len(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }
}

/// A network interface, as a link dump describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LinkEntry {
    /// Interface index.
    pub(crate) index: u32,
    /// Name.
    pub(crate) name: String,
    /// MAC address, for an Ethernet-like link.
    pub(crate) mac: Option<[u8; 6]>,
    /// Receive queues.
    pub(crate) rx_queues: Option<u32>,
    /// MTU.
    pub(crate) mtu: Option<u32>,
    /// Alias (`ip link set … alias`).
    pub(crate) alias: Option<String>,
}

/// A route, as a route dump describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RouteEntry {
    /// Destination prefix (`None`: the default route).
    pub(crate) dst: Option<IpAddr>,
    /// Its length.
    pub(crate) prefix_len: u8,
    /// Outgoing interface (none for a multipath route).
    pub(crate) oif: Option<u32>,
    /// Gateway.
    pub(crate) gateway: Option<IpAddr>,
    /// Routing table.
    pub(crate) table: u32,
    /// Whether it is a unicast route (not local, blackhole, unreachable…).
    pub(crate) unicast: bool,
}

/// A neighbour table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NeighbourEntry {
    /// Interface index.
    pub(crate) ifindex: u32,
    /// The neighbour's address.
    pub(crate) dst: IpAddr,
    /// Its MAC, when known and Ethernet-sized.
    pub(crate) lladdr: Option<[u8; 6]>,
    /// Whether it is a `NOARP` entry (no resolution; `ip neigh show` hides it).
    pub(crate) noarp: bool,
}

/// An interface address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AddressEntry {
    /// The local address.
    pub(crate) addr: IpAddr,
    /// Whether its scope is global.
    pub(crate) global: bool,
}

/// A policy rule, as a rule dump describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RuleEntry {
    /// Priority (0 when the kernel gives none).
    pub(crate) priority: u32,
    /// Table looked up.
    pub(crate) table: u32,
    /// Input interface it is limited to.
    pub(crate) iif: Option<String>,
}

/// A rule "`priority` [`iif`] lookup `table`", to add or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RuleSpec<'a> {
    /// Address family.
    pub(crate) family: Family,
    /// Priority.
    pub(crate) priority: u32,
    /// Input interface, if limited to one.
    pub(crate) iif: Option<&'a str>,
    /// Table looked up.
    pub(crate) table: u32,
}

impl RuleSpec<'_> {
    /// Whether `rule` is this one.
    pub(crate) fn matches(&self, rule: &RuleEntry) -> bool {
        rule.priority == self.priority
            && rule.table == self.table
            && rule.iif.as_deref() == self.iif
    }

    /// As `ip rule` takes it.
    fn describe(&self, verb: &str) -> String {
        let iif = self.iif.map(|i| format!(" iif {i}")).unwrap_or_default();
        format!(
            "ip {} rule {verb} priority {}{iif} lookup {}",
            self.family.flag(),
            self.priority,
            table_name(self.table)
        )
    }

    fn message(&self) -> RuleMessage {
        let mut rule = RuleMessage::default();
        rule.header.family = self.family.address_family();
        rule.header.table = header_table(self.table);
        rule.header.action = RuleAction::ToTable;
        rule.attributes.push(RuleAttribute::Priority(self.priority));
        rule.attributes.push(RuleAttribute::Table(self.table));
        if let Some(iif) = self.iif {
            rule.attributes.push(RuleAttribute::Iifname(iif.to_owned()));
        }
        rule
    }
}

/// Changes to a link, applied in one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LinkChange<'a> {
    /// Alias to set.
    pub(crate) alias: Option<&'a str>,
    /// ARP on (`true`) or off.
    pub(crate) arp: Option<bool>,
    /// MAC address to set.
    pub(crate) address: Option<[u8; 6]>,
    /// MTU to set.
    pub(crate) mtu: Option<u32>,
    /// Up (`true`) or down.
    pub(crate) up: Option<bool>,
    /// Largest number of segments a GSO packet may have (`gso_max_segs`).
    pub(crate) gso_max_segs: Option<u32>,
}

impl LinkChange<'_> {
    /// As `ip link set` takes it.
    fn describe(&self, name: &str) -> String {
        let mut text = format!("ip link set {name}");
        if let Some(alias) = self.alias {
            let _ = write!(text, " alias {alias:?}");
        }
        if let Some(arp) = self.arp {
            text.push_str(if arp { " arp on" } else { " arp off" });
        }
        if let Some(mac) = self.address {
            let _ = write!(text, " address {}", format_mac(mac));
        }
        if let Some(mtu) = self.mtu {
            let _ = write!(text, " mtu {mtu}");
        }
        if let Some(up) = self.up {
            text.push_str(if up { " up" } else { " down" });
        }
        if let Some(segs) = self.gso_max_segs {
            let _ = write!(text, " gso_max_segs {segs}");
        }
        text
    }

    fn message(&self, name: &str) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let mut flag = |set: Option<bool>, which: LinkFlags| {
            if let Some(on) = set {
                link.header.change_mask |= which;
                if on {
                    link.header.flags |= which;
                }
            }
        };
        // IFF_NOARP set is ARP off.
        flag(self.arp.map(|arp| !arp), LinkFlags::Noarp);
        flag(self.up, LinkFlags::Up);
        if let Some(alias) = self.alias {
            link.attributes
                .push(LinkAttribute::IfAlias(alias.to_owned()));
        }
        if let Some(mac) = self.address {
            link.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = self.mtu {
            link.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(segs) = self.gso_max_segs {
            link.attributes.push(LinkAttribute::GsoMaxSegs(segs));
        }
        link
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

/// A table as `ip` names it.
fn table_name(table: u32) -> String {
    match table {
        TABLE_MAIN => "main".to_owned(),
        other => other.to_string(),
    }
}

/// The header's 8-bit table field: the table, or `RT_TABLE_UNSPEC` when it
/// takes the 32-bit attribute.
fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC)
}

fn ip_of_route(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The link of an `RTM_NEWLINK` message (header included), read in place
/// for the attributes a [`LinkEntry`] keeps; `None` for another message or
/// a link without a name.
fn read_link_entry(bytes: &[u8]) -> Result<Option<LinkEntry>, String> {
    let header = NetlinkBuffer::new_checked(bytes).map_err(|e| e.to_string())?;
    if header.message_type() != RTM_NEWLINK {
        return Ok(None);
    }
    let payload = &bytes[NLMSG_HEADER_LEN..];
    let Some(index) = payload.get(4..8) else {
        return Err(format!("a link message of {} bytes", bytes.len()));
    };
    let mut entry = LinkEntry {
        index: u32::from_ne_bytes(index.try_into().expect("four bytes")),
        name: String::new(),
        mac: None,
        rx_queues: None,
        mtu: None,
        alias: None,
    };
    let u32_of = |value: &[u8]| {
        <[u8; 4]>::try_from(value)
            .map(u32::from_ne_bytes)
            .map_err(|_| format!("a 4-byte attribute of {} bytes", value.len()))
    };
    let string_of = |value: &[u8]| {
        let text = value.split(|&b| b == 0).next().unwrap_or_default();
        String::from_utf8_lossy(text).into_owned()
    };
    for attribute in NlasIterator::new(payload.get(IFINFOMSG_LEN..).unwrap_or_default()) {
        let attribute = attribute.map_err(|e| e.to_string())?;
        let value = attribute.value();
        match attribute.kind() {
            IFLA_IFNAME => entry.name = string_of(value),
            IFLA_ADDRESS => entry.mac = <[u8; 6]>::try_from(value).ok(),
            IFLA_NUM_RX_QUEUES => entry.rx_queues = Some(u32_of(value)?),
            IFLA_MTU => entry.mtu = Some(u32_of(value)?),
            IFLA_IFALIAS => entry.alias = Some(string_of(value)).filter(|a| !a.is_empty()),
            _ => {}
        }
    }
    Ok((!entry.name.is_empty()).then_some(entry))
}

fn route_entry(message: &RouteMessage) -> RouteEntry {
    let mut entry = RouteEntry {
        dst: None,
        prefix_len: message.header.destination_prefix_length,
        oif: None,
        gateway: None,
        table: u32::from(message.header.table),
        unicast: message.header.kind == RouteType::Unicast,
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(dst) => entry.dst = ip_of_route(dst),
            RouteAttribute::Oif(oif) => entry.oif = Some(*oif),
            RouteAttribute::Gateway(gateway) => entry.gateway = ip_of_route(gateway),
            RouteAttribute::Table(table) => entry.table = *table,
            _ => {}
        }
    }
    entry
}

fn neighbour_entry(message: &NeighbourMessage) -> Option<NeighbourEntry> {
    let mut dst = None;
    let mut lladdr = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                dst = Some(IpAddr::V4(*v4));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                dst = Some(IpAddr::V6(*v6));
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                lladdr = <[u8; 6]>::try_from(bytes.as_slice()).ok();
            }
            _ => {}
        }
    }
    Some(NeighbourEntry {
        ifindex: message.header.ifindex,
        dst: dst?,
        lladdr,
        noarp: u16::from(message.header.state) & NUD_NOARP != 0,
    })
}

fn address_entry(message: &AddressMessage) -> Option<AddressEntry> {
    let (mut local, mut address) = (None, None);
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(addr) => local = Some(*addr),
            AddressAttribute::Address(addr) => address = Some(*addr),
            _ => {}
        }
    }
    Some(AddressEntry {
        // IFA_LOCAL is the interface's own address (on a point-to-point
        // link IFA_ADDRESS is the peer's); IPv6 gives IFA_ADDRESS alone.
        addr: local.or(address)?,
        global: message.header.scope == AddressScope::Universe,
    })
}

fn rule_entry(message: &RuleMessage) -> RuleEntry {
    let mut entry = RuleEntry {
        priority: 0,
        table: u32::from(message.header.table),
        iif: None,
    };
    for attribute in &message.attributes {
        match attribute {
            RuleAttribute::Priority(priority) => entry.priority = *priority,
            RuleAttribute::Table(table) => entry.table = *table,
            RuleAttribute::Iifname(iif) => entry.iif = Some(iif.clone()),
            _ => {}
        }
    }
    entry
}

/// The extended-ACK attributes of an `NLMSG_ERROR` payload (`echoed`:
/// the bytes after the error code: the request's header, and its payload
/// unless the kernel capped it).
fn error_ack_attributes(flags: u16, echoed: &[u8]) -> Option<&[u8]> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HEADER_LEN
    } else {
        let request = NetlinkBuffer::new_checked(echoed).ok()?;
        (request.length() as usize).next_multiple_of(4)
    };
    echoed.get(skip..)
}

/// The kernel's explanation among extended-ACK attributes
/// (`NLMSGERR_ATTR_MSG`).
fn ack_message(attributes: &[u8]) -> Option<String> {
    for attribute in NlasIterator::new(attributes) {
        let attribute = attribute.ok()?;
        if attribute.kind() == NLMSGERR_ATTR_MSG {
            let text = String::from_utf8_lossy(attribute.value());
            let text = text.trim_end_matches('\0').trim();
            return (!text.is_empty()).then(|| text.to_owned());
        }
    }
    None
}

/// What a reply to a request ended with.
enum Ending {
    /// More datagrams follow.
    Pending,
    /// The ACK, or a dump's `NLMSG_DONE`.
    Done,
}

/// Reads one datagram's messages of request `seq`, collecting inner ones
/// into `into`; sets `interrupted` when a dump message says so.
#[cfg(test)]
fn read_datagram(
    datagram: &[u8],
    seq: u32,
    request: &str,
    into: &mut Vec<RouteNetlinkMessage>,
    interrupted: &mut bool,
) -> Result<Ending, AgentError> {
    read_datagram_with(datagram, seq, request, into, interrupted, &mut |bytes| {
        decode_message(request, bytes)
    })
}

/// A data message (header included) decoded whole.
fn decode_message(request: &str, bytes: &[u8]) -> Result<Option<RouteNetlinkMessage>, AgentError> {
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
        .map_err(|e| decode_error(request, &e))?;
    Ok(match message.payload {
        NetlinkPayload::InnerMessage(inner) => Some(inner),
        _ => None,
    })
}

/// Reads one datagram's messages of request `seq`, each data message
/// through `decode` into `into`; sets `interrupted` when a dump message
/// says so.
fn read_datagram_with<T>(
    datagram: &[u8],
    seq: u32,
    request: &str,
    into: &mut Vec<T>,
    interrupted: &mut bool,
    decode: &mut impl FnMut(&[u8]) -> Result<Option<T>, AgentError>,
) -> Result<Ending, AgentError> {
    let mut offset = 0;
    let mut ending = Ending::Pending;
    while offset < datagram.len() {
        let rest = &datagram[offset..];
        let header = NetlinkBuffer::new_checked(rest).map_err(|e| decode_error(request, &e))?;
        let length = header.length() as usize;
        let (message_type, flags, message_seq) = (
            header.message_type(),
            header.flags(),
            header.sequence_number(),
        );
        let bytes = &rest[..length];
        offset += length.next_multiple_of(4);
        if message_seq != seq {
            // A late answer to an earlier request abandoned on error.
            debug!(
                seq = message_seq,
                expected = seq,
                "rtnetlink message of another request"
            );
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            *interrupted = true;
        }
        if message_type >= NLMSG_MIN_TYPE {
            if let Some(entry) = decode(bytes)? {
                into.push(entry);
            }
            continue;
        }
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
            .map_err(|e| decode_error(request, &e))?;
        match message.payload {
            NetlinkPayload::Error(error) => match error.code {
                None => ending = Ending::Done,
                Some(code) => {
                    return Err(AgentError::Netlink {
                        request: request.to_owned(),
                        source: io::Error::from_raw_os_error(-code.get()),
                        detail: error_ack_attributes(message.header.flags, &error.header)
                            .and_then(ack_message),
                    });
                }
            },
            NetlinkPayload::Done(done) => {
                if done.code < 0 {
                    return Err(AgentError::Netlink {
                        request: request.to_owned(),
                        source: io::Error::from_raw_os_error(-done.code),
                        // NLMSG_DONE echoes no request.
                        detail: (message.header.flags & NLM_F_ACK_TLVS != 0)
                            .then(|| ack_message(&done.extended_ack))
                            .flatten(),
                    });
                }
                ending = Ending::Done;
            }
            NetlinkPayload::Overrun(_) => {
                return Err(AgentError::NetlinkDecode {
                    request: request.to_owned(),
                    message: "the kernel reported an overrun".to_owned(),
                });
            }
            // NLMSG_NOOP, and whatever a later kernel adds.
            _ => {}
        }
    }
    Ok(ending)
}

fn decode_error(request: &str, error: &dyn std::fmt::Display) -> AgentError {
    AgentError::NetlinkDecode {
        request: request.to_owned(),
        message: error.to_string(),
    }
}

/// A `NETLINK_ROUTE` socket in the opening thread's network namespace.
pub(crate) struct Rtnl {
    socket: Socket,
    seq: u32,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Rtnl {
    /// Opens the socket, with extended ACKs (the kernel's own explanation
    /// of an error) and strict checking (dumps filtered by the kernel)
    /// where the kernel has them.
    pub(crate) fn open() -> Result<Self, AgentError> {
        let socket_error = |source| AgentError::Netlink {
            request: "open a NETLINK_ROUTE socket".to_owned(),
            source,
            detail: None,
        };
        let socket = Socket::new(NETLINK_ROUTE).map_err(socket_error)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(socket_error)?;
        for (option, result) in [
            ("extended ACK", socket.set_ext_ack(true)),
            ("capped ACK", socket.set_cap_ack(true)),
            ("strict checking", socket.set_netlink_get_strict_chk(true)),
        ] {
            // Older kernels lack them; replies are read either way.
            if let Err(e) = result {
                debug!(option, error = %e, "rtnetlink socket option");
            }
        }
        Ok(Self {
            socket,
            seq: 0,
            buffer: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// Sends `message` with `flags` and reads the reply up to its ACK or
    /// `NLMSG_DONE`, returning the messages before it.
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        request: &str,
        interrupted: &mut bool,
    ) -> Result<Vec<RouteNetlinkMessage>, AgentError> {
        self.exchange_with(message, flags, request, interrupted, &mut |bytes| {
            decode_message(request, bytes)
        })
    }

    /// [`Self::exchange`], each data message of the reply through `decode`.
    fn exchange_with<T>(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        request: &str,
        interrupted: &mut bool,
        decode: &mut impl FnMut(&[u8]) -> Result<Option<T>, AgentError>,
    ) -> Result<Vec<T>, AgentError> {
        debug!(request, "rtnetlink");
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let io_error = |source| AgentError::Netlink {
            request: request.to_owned(),
            source,
            detail: None,
        };
        loop {
            match self.socket.send(&bytes, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        let mut replies = Vec::new();
        loop {
            self.buffer.clear();
            let length = match self.socket.recv(&mut self.buffer, libc::MSG_TRUNC) {
                Ok(length) => length,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(e)),
            };
            if length > self.buffer.len() {
                return Err(AgentError::NetlinkDecode {
                    request: request.to_owned(),
                    message: format!(
                        "a reply of {length} bytes is longer than the {RECV_BUFFER}-byte buffer"
                    ),
                });
            }
            if let Ending::Done = read_datagram_with(
                &self.buffer,
                seq,
                request,
                &mut replies,
                interrupted,
                decode,
            )? {
                return Ok(replies);
            }
        }
    }

    /// A request that changes something: done when the kernel ACKs it.
    fn change(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        request: &str,
    ) -> Result<(), AgentError> {
        self.exchange(message, NLM_F_ACK | flags, request, &mut false)
            .map(drop)
    }

    /// A dump, taken again when a concurrent change interrupted it.
    fn dump(
        &mut self,
        message: &RouteNetlinkMessage,
        request: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, AgentError> {
        self.dump_with(message, request, &mut |bytes| {
            decode_message(request, bytes)
        })
    }

    /// [`Self::dump`], each message through `decode`.
    fn dump_with<T>(
        &mut self,
        message: &RouteNetlinkMessage,
        request: &str,
        decode: &mut impl FnMut(&[u8]) -> Result<Option<T>, AgentError>,
    ) -> Result<Vec<T>, AgentError> {
        let mut attempt = 1;
        loop {
            let mut interrupted = false;
            let replies = self.exchange_with(
                message.clone(),
                NLM_F_DUMP,
                request,
                &mut interrupted,
                decode,
            )?;
            if !interrupted {
                return Ok(replies);
            }
            if attempt == DUMP_ATTEMPTS {
                warn!(
                    request,
                    attempts = attempt,
                    "rtnetlink dump interrupted by concurrent changes every time: using the last"
                );
                return Ok(replies);
            }
            attempt += 1;
        }
    }

    /// Every link of the namespace.
    pub(crate) fn links(&mut self) -> Result<Vec<LinkEntry>, AgentError> {
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        // A node has a link per pod, and this runs at every reconcile: each
        // is read straight from the reply, not decoded whole.
        let description = "ip -d link show";
        self.dump_with(
            &RouteNetlinkMessage::GetLink(request),
            description,
            &mut |bytes| read_link_entry(bytes).map_err(|e| decode_error(description, &e)),
        )
    }

    /// The link `name`, or `None` when there is none.
    pub(crate) fn link(&mut self, name: &str) -> Result<Option<LinkEntry>, AgentError> {
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        request
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let description = format!("ip -d link show dev {name}");
        match self.exchange_with(
            RouteNetlinkMessage::GetLink(request),
            NLM_F_ACK,
            &description,
            &mut false,
            &mut |bytes| read_link_entry(bytes).map_err(|e| decode_error(&description, &e)),
        ) {
            Ok(links) => Ok(links.into_iter().next()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the veth pair `name`/`peer`.
    pub(crate) fn add_veth(&mut self, name: &str, peer: &str) -> Result<(), AgentError> {
        let mut peer_link = LinkMessage::default();
        peer_link
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.to_owned()));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_link))),
        ]));
        self.change(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("ip link add {name} type veth peer name {peer}"),
        )
    }

    /// Changes the link `name`.
    pub(crate) fn set_link(
        &mut self,
        name: &str,
        change: &LinkChange<'_>,
    ) -> Result<(), AgentError> {
        self.change(
            RouteNetlinkMessage::SetLink(change.message(name)),
            0,
            &change.describe(name),
        )
    }

    /// Deletes the link `name` (a veth takes its peer with it).
    pub(crate) fn delete_link(&mut self, name: &str) -> Result<(), AgentError> {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.change(
            RouteNetlinkMessage::DelLink(link),
            0,
            &format!("ip link del {name}"),
        )
    }

    fn route_dump(&mut self, family: Family, table: u32) -> Result<Vec<RouteMessage>, AgentError> {
        let mut request = RouteMessage::default();
        request.header.address_family = family.address_family();
        // A filter for kernels that check strictly; others send every
        // table, filtered below.
        request.header.table = header_table(table);
        request.attributes.push(RouteAttribute::Table(table));
        let description = format!(
            "ip {} route show table {}",
            family.flag(),
            table_name(table)
        );
        let replies = match self.dump(&RouteNetlinkMessage::GetRoute(request), &description) {
            Ok(replies) => replies,
            // A table without routes does not exist: it is an empty one.
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewRoute(route)
                    if route.header.address_family == family.address_family()
                        && route_entry(&route).table == table =>
                {
                    Some(route)
                }
                _ => None,
            })
            .collect())
    }

    /// The routes of `family` in `table`.
    pub(crate) fn routes(
        &mut self,
        family: Family,
        table: u32,
    ) -> Result<Vec<RouteEntry>, AgentError> {
        Ok(self
            .route_dump(family, table)?
            .iter()
            .map(route_entry)
            .collect())
    }

    /// Routes `dst/prefix_len` to interface `oif` (named `dev`, for
    /// messages) in `table`, replacing any route to it there.
    pub(crate) fn replace_route(
        &mut self,
        dst: IpAddr,
        prefix_len: u8,
        (oif, dev): (u32, &str),
        table: u32,
    ) -> Result<(), AgentError> {
        let family = Family::of(dst);
        let mut route = RouteMessage::default();
        route.header.address_family = family.address_family();
        route.header.destination_prefix_length = prefix_len;
        route.header.table = header_table(table);
        // What `ip route replace <prefix> dev <dev>` sends.
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::Link;
        route.header.kind = RouteType::Unicast;
        route.attributes.push(RouteAttribute::Table(table));
        route
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        route.attributes.push(RouteAttribute::Oif(oif));
        self.change(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!(
                "ip {} route replace {dst}/{prefix_len} dev {dev} table {}",
                family.flag(),
                table_name(table)
            ),
        )
    }

    /// Deletes the route to `dst/prefix_len` in `table`.
    pub(crate) fn delete_route(
        &mut self,
        dst: IpAddr,
        prefix_len: u8,
        table: u32,
    ) -> Result<(), AgentError> {
        let family = Family::of(dst);
        let mut route = RouteMessage::default();
        route.header.address_family = family.address_family();
        route.header.destination_prefix_length = prefix_len;
        route.header.table = header_table(table);
        route.header.scope = RouteScope::NoWhere;
        route.attributes.push(RouteAttribute::Table(table));
        route
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        self.change(
            RouteNetlinkMessage::DelRoute(route),
            0,
            &format!(
                "ip {} route del {dst}/{prefix_len} table {}",
                family.flag(),
                table_name(table)
            ),
        )
    }

    /// Deletes every route of `family` in `table`, returning how many.
    pub(crate) fn flush_table(&mut self, family: Family, table: u32) -> Result<usize, AgentError> {
        let routes = self.route_dump(family, table)?;
        let description = format!(
            "ip {} route flush table {}",
            family.flag(),
            table_name(table)
        );
        let mut deleted = 0;
        for route in routes {
            // The route as dumped identifies it, as `ip route flush` does.
            match self.change(RouteNetlinkMessage::DelRoute(route), 0, &description) {
                Ok(()) => deleted += 1,
                // Gone meanwhile.
                Err(e) if e.errno() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// The neighbour entries of both families.
    pub(crate) fn neighbours(&mut self) -> Result<Vec<NeighbourEntry>, AgentError> {
        let replies = self.dump(
            &RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            "ip neigh show",
        )?;
        Ok(replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewNeighbour(neighbour) => neighbour_entry(neighbour),
                _ => None,
            })
            .collect())
    }

    /// The addresses of every interface, both families.
    pub(crate) fn addresses(&mut self) -> Result<Vec<AddressEntry>, AgentError> {
        let replies = self.dump(
            &RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            "ip addr show",
        )?;
        Ok(replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewAddress(address) => address_entry(address),
                _ => None,
            })
            .collect())
    }

    /// The policy rules of `family`.
    pub(crate) fn rules(&mut self, family: Family) -> Result<Vec<RuleEntry>, AgentError> {
        let mut request = RuleMessage::default();
        request.header.family = family.address_family();
        let replies = self.dump(
            &RouteNetlinkMessage::GetRule(request),
            &format!("ip {} rule show", family.flag()),
        )?;
        Ok(replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewRule(rule)
                    if rule.header.family == family.address_family() =>
                {
                    Some(rule_entry(rule))
                }
                _ => None,
            })
            .collect())
    }

    /// Adds `rule` (an error if an identical one exists).
    pub(crate) fn add_rule(&mut self, rule: &RuleSpec<'_>) -> Result<(), AgentError> {
        self.change(
            RouteNetlinkMessage::NewRule(rule.message()),
            NLM_F_CREATE | NLM_F_EXCL,
            &rule.describe("add"),
        )
    }

    /// Deletes one rule matching `rule`.
    pub(crate) fn delete_rule(&mut self, rule: &RuleSpec<'_>) -> Result<(), AgentError> {
        self.change(
            RouteNetlinkMessage::DelRule(rule.message()),
            0,
            &rule.describe("del"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NLM_F_MULTIPART;
    use netlink_packet_route::link::LinkHeader;

    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;

    /// A link decoded whole by netlink-packet-route: the oracle of
    /// [`read_link_entry`].
    fn link_entry(message: LinkMessage) -> Option<LinkEntry> {
        let mut entry = LinkEntry {
            index: message.header.index,
            name: String::new(),
            mac: None,
            rx_queues: None,
            mtu: None,
            alias: None,
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => entry.name = name,
                LinkAttribute::Address(bytes) => entry.mac = <[u8; 6]>::try_from(bytes).ok(),
                LinkAttribute::NumRxQueues(queues) => entry.rx_queues = Some(queues),
                LinkAttribute::Mtu(mtu) => entry.mtu = Some(mtu),
                LinkAttribute::IfAlias(alias) if !alias.is_empty() => entry.alias = Some(alias),
                _ => {}
            }
        }
        (!entry.name.is_empty()).then_some(entry)
    }

    /// `message` framed with `seq` and `flags`, as the kernel sends it.
    fn framed(message: RouteNetlinkMessage, seq: u32, flags: u16) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.flags = flags;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        bytes
    }

    /// A netlink attribute (padded).
    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut bytes = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        bytes.extend(kind.to_ne_bytes());
        bytes.extend(value);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    }

    /// An `NLMSG_ERROR` (or, with `kind` `NLMSG_DONE`, a dump's end) with
    /// `code`, `body` after it.
    fn control(kind: u16, seq: u32, flags: u16, code: i32, body: &[u8]) -> Vec<u8> {
        let length = (NLMSG_HEADER_LEN + 4 + body.len()) as u32;
        let mut bytes = length.to_ne_bytes().to_vec();
        bytes.extend(kind.to_ne_bytes());
        bytes.extend(flags.to_ne_bytes());
        bytes.extend(seq.to_ne_bytes());
        bytes.extend(0u32.to_ne_bytes());
        bytes.extend(code.to_ne_bytes());
        bytes.extend(body);
        bytes
    }

    const ALIAS: &str = "an alias";

    fn link(index: u32, name: &str) -> RouteNetlinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link.attributes
            .push(LinkAttribute::Address(vec![2, 0x50, 0, 0, 0, 1]));
        link.attributes.push(LinkAttribute::NumRxQueues(4));
        link.attributes.push(LinkAttribute::Mtu(9000));
        link.attributes.push(LinkAttribute::IfAlias(ALIAS.into()));
        RouteNetlinkMessage::NewLink(link)
    }

    #[test]
    fn a_dump_reads_every_message_of_its_request_up_to_done() {
        let mut datagram = framed(link(2, "veth-a"), 7, NLM_F_MULTIPART);
        // A late answer to another request is passed over.
        datagram.extend(framed(link(9, "stale"), 6, NLM_F_MULTIPART));
        datagram.extend(framed(
            link(3, "veth-b"),
            7,
            NLM_F_MULTIPART | NLM_F_DUMP_INTR,
        ));
        let mut replies = Vec::new();
        let mut interrupted = false;
        let ending = read_datagram(&datagram, 7, "dump", &mut replies, &mut interrupted).unwrap();
        assert!(matches!(ending, Ending::Pending));
        assert!(interrupted);
        let done = control(NLMSG_DONE, 7, NLM_F_MULTIPART, 0, &[]);
        let ending = read_datagram(&done, 7, "dump", &mut replies, &mut interrupted).unwrap();
        assert!(matches!(ending, Ending::Done));
        let links: Vec<LinkEntry> = replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => link_entry(l),
                _ => None,
            })
            .collect();
        assert_eq!(links.len(), 2);
        assert_eq!(
            links[0],
            LinkEntry {
                index: 2,
                name: "veth-a".into(),
                mac: Some([2, 0x50, 0, 0, 0, 1]),
                rx_queues: Some(4),
                mtu: Some(9000),
                alias: Some(ALIAS.into()),
            }
        );
        assert_eq!(links[1].name, "veth-b");
    }

    #[test]
    fn an_ack_ends_a_request_and_an_error_carries_errno_and_the_kernels_text() {
        let request_header = [0u8; NLMSG_HEADER_LEN];
        let ack = control(NLMSG_ERROR, 3, NLM_F_CAPPED, 0, &request_header);
        let mut replies = Vec::new();
        let ending = read_datagram(&ack, 3, "req", &mut replies, &mut false).unwrap();
        assert!(matches!(ending, Ending::Done) && replies.is_empty());

        let mut body = request_header.to_vec();
        body.extend(attribute(NLMSGERR_ATTR_MSG, b"Nexthop device is not up\0"));
        let nack = control(NLMSG_ERROR, 3, NLM_F_CAPPED | NLM_F_ACK_TLVS, -100, &body);
        let error = read_datagram(
            &nack,
            3,
            "ip -4 route replace 10.0.0.1/32 dev pf-host table 7066",
            &mut replies,
            &mut false,
        )
        .err()
        .unwrap();
        assert_eq!(error.errno(), Some(100));
        let text = error.to_string();
        assert!(
            text.starts_with("`ip -4 route replace 10.0.0.1/32 dev pf-host table 7066` failed: ")
                && text.ends_with(" (kernel: Nexthop device is not up)"),
            "{text}"
        );

        // Uncapped: the whole request is echoed before the attributes.
        let mut body = framed(link(2, "veth-a"), 3, NLM_F_REQUEST);
        body.extend(attribute(NLMSGERR_ATTR_MSG, b"Unknown device\0"));
        let nack = control(NLMSG_ERROR, 3, NLM_F_ACK_TLVS, -19, &body);
        let error = read_datagram(&nack, 3, "req", &mut replies, &mut false)
            .err()
            .unwrap();
        assert_eq!(error.errno(), Some(19));
        assert!(
            error.to_string().ends_with("(kernel: Unknown device)"),
            "{error}"
        );

        // An error ending a dump.
        let done = control(NLMSG_DONE, 3, NLM_F_MULTIPART, -2, &[]);
        let error = read_datagram(&done, 3, "dump", &mut replies, &mut false)
            .err()
            .unwrap();
        assert_eq!(error.errno(), Some(2));
        assert!(!error.to_string().contains("kernel:"), "{error}");
    }

    #[test]
    fn truncated_or_garbled_replies_are_decode_errors_not_panics() {
        let datagram = framed(link(2, "veth-a"), 1, 0);
        for cut in [3, NLMSG_HEADER_LEN - 1, datagram.len() - 1] {
            let mut replies = Vec::new();
            let error = read_datagram(&datagram[..cut], 1, "dump", &mut replies, &mut false)
                .err()
                .unwrap();
            assert!(matches!(error, AgentError::NetlinkDecode { .. }), "{error}");
        }
        // A length field shorter than a header.
        let mut garbled = datagram.clone();
        garbled[..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(read_datagram(&garbled, 1, "dump", &mut Vec::new(), &mut false).is_err());
    }

    #[test]
    fn link_changes_set_flags_through_the_change_mask() {
        let change = LinkChange {
            arp: Some(false),
            up: Some(true),
            mtu: Some(1400),
            address: Some([2, 0, 0, 0, 0, 1]),
            ..LinkChange::default()
        };
        let message = change.message("pf-host");
        let header: &LinkHeader = &message.header;
        assert_eq!(header.flags, LinkFlags::Noarp | LinkFlags::Up);
        assert_eq!(header.change_mask, LinkFlags::Noarp | LinkFlags::Up);
        assert_eq!(
            message.attributes,
            [
                LinkAttribute::IfName("pf-host".into()),
                LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
                LinkAttribute::Mtu(1400),
            ]
        );
        assert_eq!(
            change.describe("pf-host"),
            "ip link set pf-host arp off address 02:00:00:00:00:01 mtu 1400 up"
        );
        // ARP on clears IFF_NOARP; nothing else changes.
        let on = LinkChange {
            arp: Some(true),
            ..LinkChange::default()
        }
        .message("x");
        assert_eq!(on.header.flags, LinkFlags::empty());
        assert_eq!(on.header.change_mask, LinkFlags::Noarp);
    }

    #[test]
    fn rules_encode_and_match_as_ip_rule_does() {
        let rule = RuleSpec {
            family: Family::V6,
            priority: 91,
            iif: None,
            table: 7066,
        };
        let message = rule.message();
        assert_eq!(message.header.family, AddressFamily::Inet6);
        // 7066 does not fit the header's byte: the attribute says it.
        assert_eq!(message.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert_eq!(message.header.action, RuleAction::ToTable);
        assert_eq!(
            message.attributes,
            [RuleAttribute::Priority(91), RuleAttribute::Table(7066)]
        );
        assert_eq!(
            rule.describe("add"),
            "ip -6 rule add priority 91 lookup 7066"
        );
        let decoded = rule_entry(&message);
        assert!(rule.matches(&decoded));

        let main = RuleSpec {
            family: Family::V4,
            priority: 90,
            iif: Some("pf-dp"),
            table: TABLE_MAIN,
        };
        assert_eq!(main.message().header.table, 254);
        assert_eq!(
            main.describe("del"),
            "ip -4 rule del priority 90 iif pf-dp lookup main"
        );
        let decoded = rule_entry(&main.message());
        assert!(main.matches(&decoded) && !rule.matches(&decoded));
        // The kernel's dump of a rule without FRA_TABLE names it in the header.
        let mut header_only = main.message();
        header_only
            .attributes
            .retain(|a| !matches!(a, RuleAttribute::Table(_)));
        assert!(main.matches(&rule_entry(&header_only)));
    }

    #[test]
    fn dumped_routes_neighbours_and_addresses_become_plain_values() {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.destination_prefix_length = 32;
        route.header.table = 254;
        route.header.kind = RouteType::Unicast;
        route
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                "10.0.0.2".parse::<IpAddr>().unwrap(),
            )));
        route.attributes.push(RouteAttribute::Oif(5));
        assert_eq!(
            route_entry(&route),
            RouteEntry {
                dst: Some("10.0.0.2".parse().unwrap()),
                prefix_len: 32,
                oif: Some(5),
                gateway: None,
                table: 254,
                unicast: true,
            }
        );
        // RTA_TABLE wins over the header's byte.
        route.attributes.push(RouteAttribute::Table(7066));
        assert_eq!(route_entry(&route).table, 7066);

        let mut neighbour = NeighbourMessage::default();
        neighbour.header.ifindex = 5;
        neighbour.header.state = netlink_packet_route::neighbour::NeighbourState::Noarp;
        neighbour
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(
                "fd00::2".parse().unwrap(),
            )));
        neighbour
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 9]));
        let entry = neighbour_entry(&neighbour).unwrap();
        assert_eq!(entry.dst, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(
            (entry.ifindex, entry.lladdr, entry.noarp),
            (5, Some([2, 0, 0, 0, 0, 9]), true)
        );
        // No destination: no entry; a non-Ethernet lladdr: no MAC.
        neighbour.attributes[1] = NeighbourAttribute::LinkLayerAddress(vec![1, 2, 3, 4]);
        assert_eq!(neighbour_entry(&neighbour).unwrap().lladdr, None);
        neighbour.attributes.remove(0);
        assert_eq!(neighbour_entry(&neighbour), None);

        let mut address = AddressMessage::default();
        address.header.scope = AddressScope::Universe;
        address
            .attributes
            .push(AddressAttribute::Address("10.0.0.9".parse().unwrap()));
        address
            .attributes
            .push(AddressAttribute::Local("10.0.0.1".parse().unwrap()));
        let entry = address_entry(&address).unwrap();
        assert_eq!(
            (entry.addr, entry.global),
            ("10.0.0.1".parse().unwrap(), true)
        );
        address.header.scope = AddressScope::Link;
        address.attributes.remove(1);
        let entry = address_entry(&address).unwrap();
        assert_eq!(
            (entry.addr, entry.global),
            ("10.0.0.9".parse().unwrap(), false)
        );
    }

    #[test]
    fn requests_serialize_to_what_the_kernel_parses() {
        // The veth request round-trips through the crate's own parser, as
        // the kernel reads it: the peer is nested in IFLA_INFO_DATA.
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName("pf-dp".into()));
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::IfName("pf-host".into()));
        request.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let bytes = framed(
            RouteNetlinkMessage::NewLink(request.clone()),
            1,
            NLM_F_REQUEST,
        );
        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        assert_eq!(
            parsed.payload,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(request))
        );
        assert_eq!(header_table(7066), 0);
        assert_eq!(header_table(254), 254);
        assert_eq!(table_name(254), "main");
        assert_eq!(format_mac([0xde, 0xad, 0, 1, 2, 0xff]), "de:ad:00:01:02:ff");
    }

    #[test]
    fn a_link_read_in_place_is_the_link_decoded_whole() {
        let mut link = LinkMessage::default();
        link.header.index = 42;
        link.attributes = vec![
            LinkAttribute::Mtu(9000),
            LinkAttribute::IfName("veth1234abcd".into()),
            LinkAttribute::TxQueueLen(1000),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 7]),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
            LinkAttribute::NumRxQueues(4),
            LinkAttribute::IfAlias("pod a/b".into()),
        ];
        let read = |link: &LinkMessage| {
            read_link_entry(&framed(RouteNetlinkMessage::NewLink(link.clone()), 1, 0)).unwrap()
        };
        assert_eq!(read(&link), link_entry(link.clone()));
        assert_eq!(read(&link).unwrap().alias.as_deref(), Some("pod a/b"));
        link.attributes
            .retain(|a| !matches!(a, LinkAttribute::IfAlias(_)));
        link.attributes.push(LinkAttribute::IfAlias(String::new()));
        assert_eq!(read(&link), link_entry(link.clone()));
        link.attributes
            .retain(|a| !matches!(a, LinkAttribute::IfName(_)));
        assert_eq!(read(&link), None);
        // Not a link; a link message cut short.
        let route = framed(RouteNetlinkMessage::NewRoute(RouteMessage::default()), 1, 0);
        assert_eq!(read_link_entry(&route).unwrap(), None);
        let mut cut = framed(RouteNetlinkMessage::NewLink(LinkMessage::default()), 1, 0);
        cut.truncate(NLMSG_HEADER_LEN + 2);
        let length = cut.len() as u32;
        cut[..4].copy_from_slice(&length.to_ne_bytes());
        assert!(read_link_entry(&cut).is_err());
    }

    #[test]
    fn the_links_of_this_namespace_read_in_place_are_those_decoded_whole() {
        let mut rtnl = Rtnl::open().unwrap();
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let whole: Vec<LinkEntry> = rtnl
            .dump(&RouteNetlinkMessage::GetLink(request), "links")
            .unwrap()
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => link_entry(link),
                _ => None,
            })
            .collect();
        assert!(whole.iter().any(|l| l.name == "lo"), "{whole:?}");
        assert_eq!(rtnl.links().unwrap(), whole);
    }
}
