//! The loader: loads one instance of the XDP program per interface, attaches
//! it (native, or generic where the driver lacks native XDP), replaces what a
//! crashed run left behind, and owns the program's maps while it runs.
//!
//! Attachment is by netlink (`bpf_xdp_attach`), not by BPF link, on purpose:
//! a link dies with the process, which would turn an agent crash into "all
//! traffic bypasses the datapath". A netlink-attached program stays, its
//! XSKMAP empties as the dead agent's sockets close, and the no-socket action
//! (drop by default) applies until the next start replaces the program with
//! `XDP_FLAGS_REPLACE` (an atomic swap that checks the expected old program).

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle, Program, libbpf_sys};
use tracing::{debug, error, info, warn};

use crate::config::{AttachMode, MAX_QUEUES_LIMIT, NoSocketAction, RedirectConfig, XdpMode};
use crate::counters::{Counter, Counters};
use crate::error::Error;
use crate::iface::Interface;
use crate::skel::RedirectSkelBuilder;
use crate::xdp::{self, XdpState};

/// The kernel-visible name of podfence's XDP program (the C function name).
/// A program with this name found on an interface is taken to be a leftover
/// of an earlier run and replaced without asking.
pub const PROGRAM_NAME: &str = "podfence_xdp";

/// The XDP redirector attached to one interface.
///
/// Dropping it detaches the program (as [`detach`](Self::detach) does, with
/// errors logged). Detach must happen in the network namespace the program
/// was attached in; elsewhere the kernel finds a different program (or none)
/// at that index and the replace check leaves it untouched.
#[derive(Debug)]
pub struct Redirector {
    ifindex: u32,
    ifname: String,
    mode: AttachMode,
    prog_id: u32,
    max_queues: u32,
    no_socket_action: NoSocketAction,
    prog: OwnedFd,
    xsks: MapHandle,
    counters: MapHandle,
    attached: bool,
}

/// A loaded (not yet attached) program and the maps it uses. Holding fds
/// keeps them alive after the skeleton, and its libbpf object, is dropped.
struct Loaded {
    prog: OwnedFd,
    prog_id: u32,
    xsks: MapHandle,
    counters: MapHandle,
}

impl Redirector {
    /// Loads the program with `config`, attaches it to `iface` and returns
    /// the handle.
    ///
    /// A podfence program already attached (left by a crashed run) is
    /// replaced atomically when it is in the mode being attached, or
    /// detached first when it is in the other mode (the kernel allows only
    /// one of native and generic). Any other XDP program makes this fail
    /// with [`Error::ForeignProgram`] unless `config.replace_foreign` is set.
    pub fn attach(iface: impl Into<Interface>, config: &RedirectConfig) -> Result<Self, Error> {
        if config.max_queues == 0 || config.max_queues > MAX_QUEUES_LIMIT {
            return Err(Error::InvalidQueueCount {
                got: config.max_queues,
                limit: MAX_QUEUES_LIMIT,
            });
        }
        let (ifindex, ifname) = iface.into().resolve()?;
        let loaded = load(config)?;

        let mut state = xdp::query(ifindex).map_err(|source| Error::Query {
            ifname: ifname.clone(),
            source,
        })?;
        check_leftovers(&ifname, state, config.replace_foreign)?;
        let mode = attach_program(
            ifindex,
            &ifname,
            loaded.prog.as_fd(),
            config.mode,
            &mut state,
        )?;

        let this = Self {
            ifindex,
            ifname,
            mode,
            prog_id: loaded.prog_id,
            max_queues: config.max_queues,
            no_socket_action: config.no_socket_action,
            prog: loaded.prog,
            xsks: loaded.xsks,
            counters: loaded.counters,
            attached: true,
        };
        // Trust, but verify: the kernel must now report our program in the
        // mode we asked for. On error `this` is dropped, which detaches.
        let now = xdp::query(ifindex).map_err(|source| Error::Query {
            ifname: this.ifname.clone(),
            source,
        })?;
        if now.get(mode) != Some(this.prog_id) {
            return Err(Error::Attach {
                ifname: this.ifname.clone(),
                mode,
                source: std::io::Error::other(format!(
                    "attach reported success but the kernel reports program {:?} in {mode} \
                     mode, not ours ({})",
                    now.get(mode),
                    this.prog_id
                )),
            });
        }
        info!(
            ifname = %this.ifname,
            ifindex,
            prog_id = this.prog_id,
            %mode,
            no_socket_action = ?config.no_socket_action,
            max_queues = config.max_queues,
            "attached podfence XDP redirector"
        );
        Ok(this)
    }

    /// Binds an AF_XDP socket to `queue`: IPv4/IPv6 frames received on that
    /// queue go to it. The socket must already be bound (`bind(2)`) to this
    /// interface and queue. Replaces a socket registered earlier.
    pub fn register_socket(&self, queue: u32, socket: &impl AsRawFd) -> Result<(), Error> {
        self.check_queue(queue)?;
        let fd = socket.as_raw_fd();
        let map_err = |source| Error::RegisterSocket {
            ifname: self.ifname.clone(),
            queue,
            fd,
            source,
        };
        let value = u32::try_from(fd).map_err(|_| {
            map_err(libbpf_rs::Error::from(std::io::Error::from_raw_os_error(
                libc::EBADF,
            )))
        })?;
        self.xsks
            .update(&queue.to_ne_bytes(), &value.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err)?;
        debug!(ifname = %self.ifname, queue, fd, "registered AF_XDP socket");
        Ok(())
    }

    /// Removes the socket bound to `queue`, if any; its frames take the
    /// no-socket action again. Idempotent: the kernel's XSKMAP neither says
    /// whether a slot was occupied on delete nor allows lookups from
    /// userspace. (Closing a socket also removes it from the map.)
    pub fn unregister(&self, queue: u32) -> Result<(), Error> {
        self.check_queue(queue)?;
        match self.xsks.delete(&queue.to_ne_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Map {
                    ifname: self.ifname.clone(),
                    map: "xsks",
                    op: "delete",
                    source,
                });
            }
        }
        debug!(ifname = %self.ifname, queue, "unregistered AF_XDP socket");
        Ok(())
    }

    /// The counters, summed over all CPUs, since this program was loaded.
    pub fn counters(&self) -> Result<Counters, Error> {
        let mut totals = Counters::default();
        for counter in Counter::ALL {
            let per_cpu = self
                .counters
                .lookup_percpu(&counter.key().to_ne_bytes(), MapFlags::ANY)
                .map_err(|source| Error::Map {
                    ifname: self.ifname.clone(),
                    map: "counters",
                    op: "per-CPU lookup",
                    source,
                })?;
            if let Some(per_cpu) = per_cpu {
                totals.add_per_cpu(counter, &per_cpu);
            }
        }
        Ok(totals)
    }

    /// The mode the program is attached in.
    #[must_use]
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The interface index.
    #[must_use]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The interface name.
    #[must_use]
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The kernel's id of the loaded program.
    #[must_use]
    pub fn program_id(&self) -> u32 {
        self.prog_id
    }

    /// Entries in the XSKMAP: valid queues are `0..max_queues()`.
    #[must_use]
    pub fn max_queues(&self) -> u32 {
        self.max_queues
    }

    /// The action applied when no socket is bound to a queue.
    #[must_use]
    pub fn no_socket_action(&self) -> NoSocketAction {
        self.no_socket_action
    }

    /// The XSKMAP's fd, for libraries that insert sockets themselves (e.g.
    /// libxdp's `xsk_socket__update_xskmap`).
    #[must_use]
    pub fn xsk_map_fd(&self) -> BorrowedFd<'_> {
        self.xsks.as_fd()
    }

    /// Detaches the program from the interface. If another program has
    /// replaced ours meanwhile, or the interface is gone, there is nothing
    /// of ours to detach and this succeeds (with a log line).
    pub fn detach(mut self) -> Result<(), Error> {
        self.detach_inner()
    }

    /// Lets go of the program without detaching it, for the next agent
    /// (an upgrade): it stays attached with the no-socket action in force
    /// (the XSKMAP empties as this process's sockets close) until the next
    /// [`attach`](Self::attach) replaces it atomically. No moment of the
    /// handover lets a frame past the datapath unless the no-socket action
    /// is [`NoSocketAction::Pass`].
    pub fn leave_attached(mut self) {
        self.attached = false;
        info!(ifname = %self.ifname, prog_id = self.prog_id, mode = %self.mode,
            no_socket_action = ?self.no_socket_action,
            "left the podfence XDP redirector attached for the next agent");
    }

    fn detach_inner(&mut self) -> Result<(), Error> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        match xdp::attach(
            self.ifindex,
            None,
            self.mode.flag(),
            Some(self.prog.as_fd()),
        ) {
            Ok(()) => {
                info!(ifname = %self.ifname, prog_id = self.prog_id, mode = %self.mode,
                    "detached podfence XDP redirector");
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                warn!(ifname = %self.ifname, prog_id = self.prog_id,
                    "our XDP program is no longer the one attached; leaving the interface as is");
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                debug!(ifname = %self.ifname, "interface is gone; nothing to detach");
                Ok(())
            }
            Err(source) => Err(Error::Detach {
                ifname: self.ifname.clone(),
                mode: self.mode,
                source,
            }),
        }
    }

    fn check_queue(&self, queue: u32) -> Result<(), Error> {
        if queue < self.max_queues {
            Ok(())
        } else {
            Err(Error::QueueOutOfRange {
                ifname: self.ifname.clone(),
                queue,
                max_queues: self.max_queues,
            })
        }
    }
}

impl Drop for Redirector {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            error!(error = %e, "detaching the podfence XDP redirector failed");
        }
    }
}

/// Opens the skeleton, writes the configuration into `.rodata` and the map
/// size, loads it into the kernel and keeps fds to what we need.
fn load(config: &RedirectConfig) -> Result<Loaded, Error> {
    let mut storage = MaybeUninit::uninit();
    let mut open = RedirectSkelBuilder::default()
        .open(&mut storage)
        .map_err(Error::Load)?;
    let rodata =
        open.maps.rodata_data.as_deref_mut().ok_or_else(|| {
            Error::Inconsistent("the program's .rodata is not memory-mapped".into())
        })?;
    rodata.no_socket_action = config.no_socket_action.xdp_action();
    open.maps
        .xsks
        .set_max_entries(config.max_queues)
        .map_err(Error::Load)?;
    let skel = open.load().map_err(Error::Load)?;

    if skel.maps.counters.max_entries() != Counter::COUNT {
        return Err(Error::Inconsistent(format!(
            "the counters map has {} entries, the loader knows {}",
            skel.maps.counters.max_entries(),
            Counter::COUNT
        )));
    }
    let prog = skel
        .progs
        .podfence_xdp
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::Load(e.into()))?;
    let prog_id = Program::id_from_fd(prog.as_fd()).map_err(Error::Load)?;
    let xsks = MapHandle::try_from(&skel.maps.xsks).map_err(Error::Load)?;
    let counters = MapHandle::try_from(&skel.maps.counters).map_err(Error::Load)?;
    Ok(Loaded {
        prog,
        prog_id,
        xsks,
        counters,
    })
}

/// Fails on programs that are not podfence's, unless told to replace them.
fn check_leftovers(ifname: &str, state: XdpState, replace_foreign: bool) -> Result<(), Error> {
    for (mode, id) in state.iter() {
        let name = match xdp::program_name(id) {
            Ok(name) => name,
            // Detached and freed since the query: nothing left to check.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(source) => {
                return Err(Error::Query {
                    ifname: ifname.to_owned(),
                    source,
                });
            }
        };
        if name == PROGRAM_NAME {
            warn!(ifname, prog_id = id, %mode,
                "found a podfence XDP program left by an earlier run; replacing it");
        } else if replace_foreign {
            warn!(ifname, prog_id = id, name, %mode, "replacing a foreign XDP program");
        } else {
            return Err(Error::ForeignProgram {
                ifname: ifname.to_owned(),
                id,
                name,
                mode,
            });
        }
    }
    Ok(())
}

/// Attaches in the requested mode; `Auto` tries native, then generic.
fn attach_program(
    ifindex: u32,
    ifname: &str,
    prog: BorrowedFd<'_>,
    requested: XdpMode,
    state: &mut XdpState,
) -> Result<AttachMode, Error> {
    let fixed = |mode: AttachMode, state: &mut XdpState| {
        attach_in_mode(ifindex, ifname, prog, mode, state)
            .map(|()| mode)
            .map_err(|source| Error::Attach {
                ifname: ifname.to_owned(),
                mode,
                source,
            })
    };
    match requested {
        XdpMode::Native => fixed(AttachMode::Native, state),
        XdpMode::Generic => fixed(AttachMode::Generic, state),
        XdpMode::Auto => match attach_in_mode(ifindex, ifname, prog, AttachMode::Native, state) {
            Ok(()) => Ok(AttachMode::Native),
            Err(native) => {
                warn!(ifname, error = %native,
                    "native XDP not supported by the driver (or refused), falling back to generic \
                     mode");
                attach_in_mode(ifindex, ifname, prog, AttachMode::Generic, state)
                    .map(|()| AttachMode::Generic)
                    .map_err(|generic| Error::AttachAuto {
                        ifname: ifname.to_owned(),
                        native,
                        generic,
                    })
            }
        },
    }
}

/// One attach attempt in `mode`, clearing the other mode first and swapping
/// atomically (`XDP_FLAGS_REPLACE`) for a program already in `mode`.
/// Without a program to replace, `XDP_FLAGS_UPDATE_IF_NOEXIST` makes sure we
/// never overwrite one that appeared after the query.
fn attach_in_mode(
    ifindex: u32,
    ifname: &str,
    prog: BorrowedFd<'_>,
    mode: AttachMode,
    state: &mut XdpState,
) -> std::io::Result<()> {
    let other = mode.other();
    if let Some(old) = state.get(other) {
        warn!(ifname, prog_id = old, from = %other, to = %mode,
            "detaching the leftover XDP program first: native and generic cannot coexist");
        detach_by_id(ifindex, other, old)?;
        state.set(other, None);
    }
    let old_fd = state.get(mode).and_then(|id| Program::fd_from_id(id).ok());
    match &old_fd {
        Some(old) => xdp::attach(ifindex, Some(prog), mode.flag(), Some(old.as_fd()))?,
        None => xdp::attach(
            ifindex,
            Some(prog),
            mode.flag() | libbpf_sys::XDP_FLAGS_UPDATE_IF_NOEXIST,
            None,
        )?,
    }
    if let Some(old) = state.get(mode) {
        info!(ifname, old_prog_id = old, %mode, "replaced the leftover XDP program atomically");
    }
    Ok(())
}

/// Detaches program `id` from `mode`, only if it is still the attached one.
fn detach_by_id(ifindex: u32, mode: AttachMode, id: u32) -> std::io::Result<()> {
    match Program::fd_from_id(id) {
        Ok(fd) => xdp::attach(ifindex, None, mode.flag(), Some(fd.as_fd())),
        // The program is gone, so it is no longer attached either.
        Err(_) => Ok(()),
    }
}
