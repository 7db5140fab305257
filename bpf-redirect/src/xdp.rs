//! Netlink XDP attach, detach and query on an interface, by program fd.
//!
//! libbpf-rs's `Xdp` type cannot combine a mode flag with
//! `XDP_FLAGS_REPLACE` and an expected old program, which is what makes
//! replacement and detach safe against races (the kernel swaps only if the
//! program currently attached is the one we expect), so this module calls
//! libbpf's `bpf_xdp_attach` directly. It also answers "what is attached to
//! this interface" for callers and tests, with one `RTM_GETLINK` for that
//! interface (libbpf's `bpf_xdp_query` dumps every link of the namespace,
//! with its statistics, to find one: on a node with hundreds of pod veths
//! that was most of a pod's attach).

use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

use libbpf_rs::libbpf_sys;
use netlink_packet_core::{
    NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage, LinkXdp};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::config::AttachMode;
use crate::error::Error;
use crate::iface::Interface;

/// Ids of the programs attached to an interface, per mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct XdpState {
    pub(crate) native: Option<u32>,
    pub(crate) generic: Option<u32>,
}

impl XdpState {
    pub(crate) fn get(self, mode: AttachMode) -> Option<u32> {
        match mode {
            AttachMode::Native => self.native,
            AttachMode::Generic => self.generic,
        }
    }

    pub(crate) fn set(&mut self, mode: AttachMode, id: Option<u32>) {
        match mode {
            AttachMode::Native => self.native = id,
            AttachMode::Generic => self.generic = id,
        }
    }

    /// The attached programs as `(mode, id)`, native first.
    pub(crate) fn iter(self) -> impl Iterator<Item = (AttachMode, u32)> {
        [
            (AttachMode::Native, self.native),
            (AttachMode::Generic, self.generic),
        ]
        .into_iter()
        .filter_map(|(m, id)| id.map(|id| (m, id)))
    }
}

fn nonzero(id: u32) -> Option<u32> {
    (id != 0).then_some(id)
}

/// Converts a libbpf return value (0 or a negative errno) to a Result.
fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::from_raw_os_error(-ret))
    } else {
        Ok(())
    }
}

fn ifindex_arg(ifindex: u32) -> io::Result<libc::c_int> {
    libc::c_int::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))
}

/// The native and generic XDP programs attached to `ifindex`: one
/// `RTM_GETLINK` for that link, without its statistics.
pub(crate) fn query(ifindex: u32) -> io::Result<XdpState> {
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    request
        .attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(request)),
    );
    packet.finalize();
    let mut bytes = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut bytes);
    let socket = Socket::new(NETLINK_ROUTE)?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&bytes, 0)?;
    let mut reply = Vec::with_capacity(REPLY_BUFFER);
    loop {
        reply.clear();
        let length = match socket.recv(&mut reply, libc::MSG_TRUNC) {
            Ok(length) => length,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if length > reply.len() {
            return Err(invalid(&format!(
                "a reply of {length} bytes is longer than the {REPLY_BUFFER}-byte buffer"
            )));
        }
        if let Some(state) = xdp_state(&reply)? {
            return Ok(state);
        }
    }
}

/// Large enough for one link's attributes without statistics.
const REPLY_BUFFER: usize = 32 * 1024;

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink: {message}"))
}

/// The XDP state in a reply to [`query`], `None` if the datagram holds no
/// answer to it.
fn xdp_state(datagram: &[u8]) -> io::Result<Option<XdpState>> {
    let mut offset = 0;
    while offset < datagram.len() {
        let rest = &datagram[offset..];
        let length = NetlinkBuffer::new_checked(rest)
            .map_err(|e| invalid(&e.to_string()))?
            .length() as usize;
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..length])
            .map_err(|e| invalid(&e.to_string()))?;
        offset += length.next_multiple_of(4).max(4);
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                let mut state = XdpState::default();
                for attribute in link.attributes {
                    let LinkAttribute::Xdp(xdp) = attribute else {
                        continue;
                    };
                    for x in xdp {
                        match x {
                            LinkXdp::DrvProgId(id) => state.native = nonzero(id),
                            LinkXdp::SkbProgId(id) => state.generic = nonzero(id),
                            _ => {}
                        }
                    }
                }
                return Ok(Some(state));
            }
            NetlinkPayload::Error(error) => {
                return Err(match error.code {
                    Some(code) => io::Error::from_raw_os_error(-code.get()),
                    None => invalid("an ACK instead of the link"),
                });
            }
            _ => {}
        }
    }
    Ok(None)
}

/// `bpf_xdp_attach`: attaches `prog` (or detaches, with `None`) with `flags`;
/// with `expected`, also sets `XDP_FLAGS_REPLACE` so the kernel acts only if
/// `expected` is the program currently attached in that mode (else EEXIST).
pub(crate) fn attach(
    ifindex: u32,
    prog: Option<BorrowedFd<'_>>,
    mut flags: u32,
    expected: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut opts = libbpf_sys::bpf_xdp_attach_opts {
        sz: size_of::<libbpf_sys::bpf_xdp_attach_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    if let Some(old) = expected {
        opts.old_prog_fd = old.as_raw_fd();
        flags |= libbpf_sys::XDP_FLAGS_REPLACE;
    }
    let prog_fd = prog.map_or(-1, |fd| fd.as_raw_fd());
    // SAFETY: `opts` is initialised with its own size and outlives the call;
    // the fds in `prog_fd` and `opts.old_prog_fd` are borrowed, so they stay
    // open for the duration of the call (-1 means "detach").
    let ret = unsafe {
        libbpf_sys::bpf_xdp_attach(ifindex_arg(ifindex)?, prog_fd, flags, &raw const opts)
    };
    check(ret)
}

/// The kernel's name for program `id` (at most 15 bytes, the C function name).
pub(crate) fn program_name(id: u32) -> io::Result<String> {
    let fd = libbpf_rs::Program::fd_from_id(id).map_err(io::Error::other)?;
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is a zeroed bpf_prog_info and `len` is its size, so the
    // kernel writes at most `len` bytes into it; `fd` is an open program fd
    // owned by this function.
    let ret =
        unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &raw mut info, &raw mut len) };
    check(ret)?;
    // The name is NUL-terminated within its 16 bytes (BPF_OBJ_NAME_LEN);
    // fall back to the whole array should that ever not hold.
    // `c_char` is i8 or u8 depending on the architecture; take the raw byte either way.
    let bytes: Vec<u8> = info.name.iter().map(|&c| c.to_ne_bytes()[0]).collect();
    Ok(CStr::from_bytes_until_nul(&bytes).map_or_else(
        |_| String::from_utf8_lossy(&bytes).into_owned(),
        |s| s.to_string_lossy().into_owned(),
    ))
}

/// An XDP program attached to an interface, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    /// Kernel program id (`bpftool prog show id N`).
    pub id: u32,
    /// Program name (podfence's is [`PROGRAM_NAME`](crate::PROGRAM_NAME)).
    pub name: String,
    /// Mode it is attached in.
    pub mode: AttachMode,
}

/// The native and generic XDP programs attached to an interface in the
/// caller's network namespace (hardware-offloaded ones are not reported).
/// Empty when nothing is attached.
pub fn attached_programs(iface: impl Into<Interface>) -> Result<Vec<AttachedProgram>, Error> {
    let (ifindex, ifname) = iface.into().resolve()?;
    let state = query(ifindex).map_err(|source| Error::Query {
        ifname: ifname.clone(),
        source,
    })?;
    state
        .iter()
        .map(|(mode, id)| {
            let name = program_name(id).map_err(|source| Error::Query {
                ifname: ifname.clone(),
                source,
            })?;
            Ok(AttachedProgram { id, name, mode })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_accessors() {
        let mut s = XdpState::default();
        assert_eq!(s.iter().count(), 0);
        s.set(AttachMode::Generic, Some(7));
        assert_eq!(s.get(AttachMode::Generic), Some(7));
        assert_eq!(s.get(AttachMode::Native), None);
        s.set(AttachMode::Native, Some(3));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [(AttachMode::Native, 3), (AttachMode::Generic, 7)]
        );
    }

    #[test]
    fn a_link_that_does_not_exist_is_enodev() {
        let err = query(u32::MAX >> 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
    }

    #[test]
    fn the_loopback_link_has_no_program() {
        assert_eq!(query(1).unwrap(), XdpState::default());
    }

    #[test]
    fn libbpf_errors_become_io_errors() {
        assert!(check(0).is_ok());
        assert_eq!(
            check(-libc::ENOENT).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        assert_eq!(
            ifindex_arg(u32::MAX).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
    }
}
