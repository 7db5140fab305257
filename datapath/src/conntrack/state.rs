//! The per-protocol state machine of a connection and its idle timeouts.
//!
//! What a packet says about its connection (TCP flags, the first SCTP
//! chunk) moves the entry from state to state; each state has its own
//! timeout, close to Linux conntrack's. The table ([`super::Conntrack`])
//! stores the state and applies the transitions.

use crate::wire::ip_proto;
use crate::wire::sctp::chunk;

/// Protocol state of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Slot unused.
    Free = 0,
    /// TCP: SYN seen from the initiator.
    TcpSynSent,
    /// TCP: SYN-ACK seen from the responder.
    TcpSynRecv,
    /// TCP: handshake done, or picked up mid-stream.
    TcpEstablished,
    /// TCP: one side sent FIN.
    TcpFinWait,
    /// TCP: both sides sent FIN.
    TcpClosing,
    /// TCP: final ACK after both FINs.
    TcpTimeWait,
    /// TCP: reset.
    TcpClosed,
    /// UDP: only the initiator has sent.
    UdpUnreplied,
    /// UDP: the responder has answered.
    UdpReplied,
    /// ICMP/ICMPv6 echo.
    IcmpEcho,
    /// SCTP: INIT seen.
    SctpOpening,
    /// SCTP: the responder has answered.
    SctpEstablished,
    /// SCTP: SHUTDOWN seen.
    SctpClosing,
    /// SCTP: ABORT or SHUTDOWN COMPLETE seen.
    SctpClosed,
    /// Any other protocol.
    Other,
}

impl State {
    const ALL: [Self; 16] = [
        Self::Free,
        Self::TcpSynSent,
        Self::TcpSynRecv,
        Self::TcpEstablished,
        Self::TcpFinWait,
        Self::TcpClosing,
        Self::TcpTimeWait,
        Self::TcpClosed,
        Self::UdpUnreplied,
        Self::UdpReplied,
        Self::IcmpEcho,
        Self::SctpOpening,
        Self::SctpEstablished,
        Self::SctpClosing,
        Self::SctpClosed,
        Self::Other,
    ];

    pub(super) fn from_bits(b: u32) -> Self {
        Self::ALL
            .get((b & 0xff) as usize)
            .copied()
            .unwrap_or(Self::Free)
    }
}

/// Per-state idle timeouts, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP before the handshake completes.
    pub tcp_opening: u32,
    /// TCP established.
    pub tcp_established: u32,
    /// TCP after a FIN.
    pub tcp_closing: u32,
    /// TCP after the last ACK or a RST.
    pub tcp_closed: u32,
    /// UDP with no answer.
    pub udp_unreplied: u32,
    /// UDP answered.
    pub udp_replied: u32,
    /// ICMP echo.
    pub icmp: u32,
    /// SCTP before an answer.
    pub sctp_opening: u32,
    /// SCTP established.
    pub sctp_established: u32,
    /// SCTP shutting down or aborted.
    pub sctp_closing: u32,
    /// Other protocols.
    pub other: u32,
}

impl Default for Timeouts {
    /// Close to Linux conntrack's defaults, with established TCP and SCTP at
    /// six hours as Cilium uses.
    fn default() -> Self {
        Self {
            tcp_opening: 120,
            tcp_established: 21_600,
            tcp_closing: 120,
            tcp_closed: 10,
            udp_unreplied: 30,
            udp_replied: 180,
            icmp: 30,
            sctp_opening: 30,
            sctp_established: 21_600,
            sctp_closing: 30,
            other: 600,
        }
    }
}

impl Timeouts {
    pub(super) fn of(&self, s: State) -> u64 {
        let secs = match s {
            State::Free => 0,
            State::TcpSynSent | State::TcpSynRecv => self.tcp_opening,
            State::TcpEstablished => self.tcp_established,
            State::TcpFinWait | State::TcpClosing => self.tcp_closing,
            State::TcpTimeWait | State::TcpClosed => self.tcp_closed,
            State::UdpUnreplied => self.udp_unreplied,
            State::UdpReplied => self.udp_replied,
            State::IcmpEcho => self.icmp,
            State::SctpOpening => self.sctp_opening,
            State::SctpEstablished => self.sctp_established,
            State::SctpClosing | State::SctpClosed => self.sctp_closing,
            State::Other => self.other,
        };
        u64::from(secs) * 1_000_000_000
    }
}

/// What a packet says about its connection's state: TCP flags and the
/// first SCTP chunk type, packed in one word so that it travels in a
/// register (separately stored bytes reloaded as a word stall the CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signal(u32);

impl Signal {
    /// From TCP flags (0 for other protocols) and the first SCTP chunk type.
    #[inline]
    #[must_use]
    pub fn new(tcp_flags: u8, sctp_chunk: Option<u8>) -> Self {
        let chunk = sctp_chunk.map_or(0, |c| 0x100 | u32::from(c));
        Self(u32::from(tcp_flags) | (chunk << 8))
    }

    /// TCP flags.
    #[inline]
    #[must_use]
    pub fn tcp_flags(self) -> u8 {
        self.0 as u8
    }

    /// The first SCTP chunk's type, if any.
    #[inline]
    #[must_use]
    pub fn sctp_chunk(self) -> Option<u8> {
        (self.0 & 0x1_0000 != 0).then_some((self.0 >> 8) as u8)
    }
}

/// TCP flag bits.
pub use crate::wire::tcp::flags as tcp_flags;

/// Whether a packet with no connection opens one by itself (as opposed to a
/// mid-stream packet, picked up loosely).
#[must_use]
pub fn opens_connection(protocol: u8, signal: Signal) -> bool {
    match protocol {
        ip_proto::TCP => {
            signal.tcp_flags() & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST)
                == tcp_flags::SYN
        }
        ip_proto::SCTP => signal.sctp_chunk() == Some(chunk::INIT),
        _ => true,
    }
}

/// The state a new entry starts in. `picked_up`: created from a mid-stream
/// packet.
#[must_use]
pub fn initial_state(protocol: u8, signal: Signal, picked_up: bool) -> State {
    match protocol {
        ip_proto::TCP if picked_up => State::TcpEstablished,
        ip_proto::TCP => State::TcpSynSent,
        ip_proto::UDP => State::UdpUnreplied,
        ip_proto::ICMP | ip_proto::ICMPV6 => State::IcmpEcho,
        ip_proto::SCTP if picked_up => State::SctpEstablished,
        ip_proto::SCTP if signal.sctp_chunk() == Some(chunk::INIT) => State::SctpOpening,
        ip_proto::SCTP => State::SctpEstablished,
        _ => State::Other,
    }
}

/// The state after a packet; `reply`: sent by the responder.
pub(super) fn next_state(s: State, reply: bool, signal: Signal) -> State {
    let f = signal.tcp_flags();
    match s {
        State::TcpSynSent
        | State::TcpSynRecv
        | State::TcpEstablished
        | State::TcpFinWait
        | State::TcpClosing
        | State::TcpTimeWait
            if f & tcp_flags::RST != 0 =>
        {
            State::TcpClosed
        }
        State::TcpSynSent
            if reply
                && f & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN | tcp_flags::ACK =>
        {
            State::TcpSynRecv
        }
        State::TcpSynRecv if !reply && f & tcp_flags::ACK != 0 && f & tcp_flags::SYN == 0 => {
            State::TcpEstablished
        }
        State::TcpEstablished if f & tcp_flags::FIN != 0 => State::TcpFinWait,
        State::TcpFinWait if f & tcp_flags::FIN != 0 => State::TcpClosing,
        State::TcpClosing if f & tcp_flags::ACK != 0 => State::TcpTimeWait,
        // A new SYN after the close reopens the port pair.
        State::TcpClosed | State::TcpTimeWait
            if !reply && f & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN =>
        {
            State::TcpSynSent
        }
        State::UdpUnreplied if reply => State::UdpReplied,
        State::SctpOpening | State::SctpEstablished | State::SctpClosing => {
            match signal.sctp_chunk() {
                Some(chunk::ABORT | chunk::SHUTDOWN_COMPLETE) => State::SctpClosed,
                Some(chunk::SHUTDOWN | chunk::SHUTDOWN_ACK) => State::SctpClosing,
                _ if reply && s == State::SctpOpening => State::SctpEstablished,
                _ => s,
            }
        }
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::test_support::{SEC, key, tcp};
    use crate::conntrack::{Conntrack, Inserted};

    #[test]
    fn tcp_handshake_and_close() {
        use tcp_flags::{ACK, FIN, RST, SYN};
        let ct = Conntrack::new(64, Timeouts::default());
        let k = key(40000, 80, ip_proto::TCP);
        assert!(opens_connection(ip_proto::TCP, tcp(SYN)));
        assert!(!opens_connection(ip_proto::TCP, tcp(SYN | ACK)));
        assert_eq!(
            ct.insert(&k, initial_state(ip_proto::TCP, tcp(SYN), false), 7, 0),
            Inserted::Fresh
        );
        let h = ct.lookup(&k.reversed(), tcp(SYN | ACK), SEC).unwrap();
        assert_eq!(
            (h.state, h.reply, h.generation),
            (State::TcpSynRecv, true, 7)
        );
        assert_eq!(ct.locate(&k.reversed()).initiator(&h), k);
        let h = ct.lookup(&k, tcp(ACK), 2 * SEC).unwrap();
        assert_eq!((h.state, h.reply), (State::TcpEstablished, false));
        assert_eq!(
            ct.lookup(&k.reversed(), tcp(FIN | ACK), 3 * SEC)
                .unwrap()
                .state,
            State::TcpFinWait
        );
        assert_eq!(
            ct.lookup(&k, tcp(FIN | ACK), 4 * SEC).unwrap().state,
            State::TcpClosing
        );
        assert_eq!(
            ct.lookup(&k.reversed(), tcp(ACK), 5 * SEC).unwrap().state,
            State::TcpTimeWait
        );
        // Gone after the closed timeout.
        assert!(ct.lookup(&k, tcp(ACK), 200 * SEC).is_none());
        // A reset closes at once.
        let _ = ct.insert(&k, State::TcpEstablished, 1, 300 * SEC);
        assert_eq!(
            ct.lookup(&k, tcp(RST), 301 * SEC).unwrap().state,
            State::TcpClosed
        );
    }

    #[test]
    fn udp_and_icmp_timeouts() {
        let ct = Conntrack::new(64, Timeouts::default());
        let u = key(5353, 53, ip_proto::UDP);
        let _ = ct.insert(&u, State::UdpUnreplied, 1, 0);
        assert!(ct.lookup(&u, Signal::default(), 29 * SEC).is_some());
        assert!(
            ct.lookup(&u, Signal::default(), 60 * SEC).is_none(),
            "30 s idle: expired"
        );
        let _ = ct.insert(&u, State::UdpUnreplied, 1, 100 * SEC);
        let h = ct
            .lookup(&u.reversed(), Signal::default(), 101 * SEC)
            .unwrap();
        assert_eq!((h.state, h.reply), (State::UdpReplied, true));
        assert!(
            ct.lookup(&u, Signal::default(), 250 * SEC).is_some(),
            "replied: 180 s"
        );
        assert_eq!(ct.live_entries(250 * SEC), 1);
    }

    #[test]
    fn sctp_states() {
        let ct = Conntrack::new(64, Timeouts::default());
        let k = key(9, 80, ip_proto::SCTP);
        let init = Signal::new(0, Some(chunk::INIT));
        assert!(opens_connection(ip_proto::SCTP, init));
        let _ = ct.insert(&k, initial_state(ip_proto::SCTP, init, false), 1, 0);
        let ack = Signal::new(0, Some(2));
        assert_eq!(
            ct.lookup(&k.reversed(), ack, 1).unwrap().state,
            State::SctpEstablished
        );
        let abort = Signal::new(0, Some(chunk::ABORT));
        assert_eq!(ct.lookup(&k, abort, 2).unwrap().state, State::SctpClosed);
    }
}
