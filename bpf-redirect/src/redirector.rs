//! The loader: loads an instance of the XDP program that serves one or many
//! interfaces (a slot each), attaches it (native, or generic where the
//! driver lacks native XDP), replaces what a crashed run left behind, and
//! owns the program's maps while it runs.
//!
//! Attachment is by netlink (`bpf_xdp_attach`), not by BPF link, on purpose:
//! a link dies with the process, which would turn an agent crash into "all
//! traffic bypasses the datapath". A netlink-attached program stays, its
//! XSKMAP empties as the dead agent's sockets close, and the no-socket action
//! (drop by default) applies until the next start replaces the program with
//! `XDP_FLAGS_REPLACE` (an atomic swap that checks the expected old program).

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle, Program, libbpf_sys};
use tracing::{debug, error, info, warn};

use crate::config::{
    AttachMode, MAX_QUEUES_LIMIT, MAX_XSKMAP_ENTRIES, NoSocketAction, RedirectConfig, XdpMode,
};
use crate::counters::{Counter, Counters};
use crate::error::Error;
use crate::iface::Interface;
use crate::skel::RedirectSkelBuilder;
use crate::xdp::{self, XdpState};

/// The kernel-visible name of podfence's XDP program (the C function name).
/// A program with this name found on an interface is taken to be a leftover
/// of an earlier run and replaced without asking.
pub const PROGRAM_NAME: &str = "podfence_xdp";

/// A loaded XDP program and its maps, serving up to `max_interfaces`
/// interfaces, one slot each (see the crate doc for why it is shared).
#[derive(Debug)]
pub struct RedirectProgram {
    prog: OwnedFd,
    prog_id: u32,
    xsks: MapHandle,
    counters: MapHandle,
    slots: MapHandle,
    max_queues: u32,
    max_interfaces: u32,
    mode: XdpMode,
    no_socket_action: NoSocketAction,
    replace_foreign: bool,
    /// Slots no interface holds.
    free: Mutex<Vec<u32>>,
}

impl RedirectProgram {
    /// Loads the program with `config` (not attached anywhere yet).
    pub fn load(config: &RedirectConfig) -> Result<Arc<Self>, Error> {
        if config.max_queues == 0 || config.max_queues > MAX_QUEUES_LIMIT {
            return Err(Error::InvalidQueueCount {
                got: config.max_queues,
                limit: MAX_QUEUES_LIMIT,
            });
        }
        let entries = config.max_interfaces.checked_mul(config.max_queues);
        if config.max_interfaces == 0 || entries.is_none_or(|e| e > MAX_XSKMAP_ENTRIES) {
            return Err(Error::InvalidInterfaceCount {
                interfaces: config.max_interfaces,
                queues: config.max_queues,
                limit: MAX_XSKMAP_ENTRIES,
            });
        }
        let loaded = load(config)?;
        Ok(Arc::new(Self {
            prog: loaded.prog,
            prog_id: loaded.prog_id,
            xsks: loaded.xsks,
            counters: loaded.counters,
            slots: loaded.slots,
            max_queues: config.max_queues,
            max_interfaces: config.max_interfaces,
            mode: config.mode,
            no_socket_action: config.no_socket_action,
            replace_foreign: config.replace_foreign,
            free: Mutex::new((0..config.max_interfaces).rev().collect()),
        }))
    }

    /// Whether another interface can be attached.
    #[must_use]
    pub fn has_free_slot(&self) -> bool {
        !self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// The kernel's id of the loaded program.
    #[must_use]
    pub fn program_id(&self) -> u32 {
        self.prog_id
    }

    /// Takes a free slot for `ifindex`: its counters start at zero and the
    /// program finds it by the interface's index.
    fn take_slot(&self, ifindex: u32, ifname: &str) -> Result<u32, Error> {
        let slot = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .ok_or_else(|| Error::NoFreeSlot {
                ifname: ifname.to_owned(),
                max_interfaces: self.max_interfaces,
            })?;
        let map_err = |map, op| {
            move |source| Error::Map {
                ifname: ifname.to_owned(),
                map,
                op,
                source,
            }
        };
        let taken = (|| {
            let zeros = vec![vec![0u8; 8]; libbpf_rs::num_possible_cpus().map_err(Error::Load)?];
            for counter in Counter::ALL {
                self.counters
                    .update_percpu(
                        &self.counter_key(slot, counter).to_ne_bytes(),
                        &zeros,
                        MapFlags::ANY,
                    )
                    .map_err(map_err("counters", "per-CPU update"))?;
            }
            self.slots
                .update(&ifindex.to_ne_bytes(), &slot.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("slots", "update"))
        })();
        match taken {
            Ok(()) => Ok(slot),
            Err(e) => {
                self.put_slot(slot, ifindex);
                Err(e)
            }
        }
    }

    /// Gives `slot` back: the interface loses it and its sockets' entries.
    fn put_slot(&self, slot: u32, ifindex: u32) {
        // Only if the index is still this slot's (a later attach of the
        // same interface may have taken it over).
        let key = ifindex.to_ne_bytes();
        if let Ok(Some(held)) = self.slots.lookup(&key, MapFlags::ANY)
            && held.as_slice() == slot.to_ne_bytes()
            && let Err(e) = self.slots.delete(&key)
            && e.kind() != ErrorKind::NotFound
        {
            warn!(ifindex, slot, error = %e, "removing an interface slot");
        }
        for queue in 0..self.max_queues {
            let _ = self.xsks.delete(&self.xsk_key(slot, queue).to_ne_bytes());
        }
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
    }

    fn xsk_key(&self, slot: u32, queue: u32) -> u32 {
        slot * self.max_queues + queue
    }

    fn counter_key(&self, slot: u32, counter: Counter) -> u32 {
        debug_assert!(slot <= self.max_interfaces);
        slot * Counter::COUNT + counter.key()
    }
}

/// The XDP redirector attached to one interface.
///
/// Dropping it detaches the program (as [`detach`](Self::detach) does, with
/// errors logged). Detach must happen in the network namespace the program
/// was attached in; elsewhere the kernel finds a different program (or none)
/// at that index and the replace check leaves it untouched.
#[derive(Debug)]
pub struct Redirector {
    program: Arc<RedirectProgram>,
    slot: u32,
    ifindex: u32,
    ifname: String,
    mode: AttachMode,
    attached: bool,
}

/// A loaded (not yet attached) program and the maps it uses. Holding fds
/// keeps them alive after the skeleton, and its libbpf object, is dropped.
struct Loaded {
    prog: OwnedFd,
    prog_id: u32,
    xsks: MapHandle,
    counters: MapHandle,
    slots: MapHandle,
}

impl Redirector {
    /// Loads a program with `config` for `iface` alone, attaches it and
    /// returns the handle (see [`attach_shared`](Self::attach_shared)).
    pub fn attach(iface: impl Into<Interface>, config: &RedirectConfig) -> Result<Self, Error> {
        let program = RedirectProgram::load(&RedirectConfig {
            max_interfaces: 1,
            ..config.clone()
        })?;
        Self::attach_shared(iface, &program)
    }

    /// Attaches `program` to `iface`, in a slot of its own, and returns the
    /// handle.
    ///
    /// A podfence program already attached (left by a crashed run) is
    /// replaced atomically when it is in the mode being attached, or
    /// detached first when it is in the other mode (the kernel allows only
    /// one of native and generic). Any other XDP program makes this fail
    /// with [`Error::ForeignProgram`] unless the program's config has
    /// `replace_foreign`.
    pub fn attach_shared(
        iface: impl Into<Interface>,
        program: &Arc<RedirectProgram>,
    ) -> Result<Self, Error> {
        let (ifindex, ifname) = iface.into().resolve()?;
        let slot = program.take_slot(ifindex, &ifname)?;
        // From here on, dropping `this` detaches (if attached) and gives the
        // slot back.
        let mut this = Self {
            program: Arc::clone(program),
            slot,
            ifindex,
            ifname,
            mode: AttachMode::Native,
            attached: false,
        };
        let mut state = xdp::query(ifindex).map_err(|source| Error::Query {
            ifname: this.ifname.clone(),
            source,
        })?;
        check_leftovers(&this.ifname, state, program.replace_foreign)?;
        this.mode = attach_program(
            ifindex,
            &this.ifname,
            program.prog.as_fd(),
            program.mode,
            &mut state,
        )?;
        this.attached = true;
        // Trust, but verify: the kernel must now report our program in the
        // mode we asked for. On error `this` is dropped, which detaches.
        let now = xdp::query(ifindex).map_err(|source| Error::Query {
            ifname: this.ifname.clone(),
            source,
        })?;
        if now.get(this.mode) != Some(program.prog_id) {
            return Err(Error::Attach {
                ifname: this.ifname.clone(),
                mode: this.mode,
                source: std::io::Error::other(format!(
                    "attach reported success but the kernel reports program {:?} in {} \
                     mode, not ours ({})",
                    now.get(this.mode),
                    this.mode,
                    program.prog_id
                )),
            });
        }
        info!(
            ifname = %this.ifname,
            ifindex,
            prog_id = program.prog_id,
            slot,
            mode = %this.mode,
            no_socket_action = ?program.no_socket_action,
            max_queues = program.max_queues,
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
        let key = self.program.xsk_key(self.slot, queue);
        self.program
            .xsks
            .update(&key.to_ne_bytes(), &value.to_ne_bytes(), MapFlags::ANY)
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
        let key = self.program.xsk_key(self.slot, queue);
        match self.program.xsks.delete(&key.to_ne_bytes()) {
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

    /// The counters, summed over all CPUs, since this redirector was
    /// attached.
    pub fn counters(&self) -> Result<Counters, Error> {
        let mut totals = Counters::default();
        for counter in Counter::ALL {
            let key = self.program.counter_key(self.slot, counter);
            let per_cpu = self
                .program
                .counters
                .lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)
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
        self.program.prog_id
    }

    /// Entries in the XSKMAP: valid queues are `0..max_queues()`.
    #[must_use]
    pub fn max_queues(&self) -> u32 {
        self.program.max_queues
    }

    /// The action applied when no socket is bound to a queue.
    #[must_use]
    pub fn no_socket_action(&self) -> NoSocketAction {
        self.program.no_socket_action
    }

    /// The XSKMAP's fd, for libraries that insert sockets themselves (e.g.
    /// libxdp's `xsk_socket__update_xskmap`), which key it by queue: valid
    /// as such for a program of one interface ([`attach`](Self::attach));
    /// a shared program's keys are `slot * max_queues + queue`.
    #[must_use]
    pub fn xsk_map_fd(&self) -> BorrowedFd<'_> {
        self.program.xsks.as_fd()
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
        // The slot stays taken: the program keeps serving the interface.
        self.slot = u32::MAX;
        info!(ifname = %self.ifname, prog_id = self.program.prog_id, mode = %self.mode,
            no_socket_action = ?self.program.no_socket_action,
            "left the podfence XDP redirector attached for the next agent");
    }

    fn detach_inner(&mut self) -> Result<(), Error> {
        let detached = self.detach_program();
        if self.slot != u32::MAX {
            self.program.put_slot(self.slot, self.ifindex);
            self.slot = u32::MAX;
        }
        detached
    }

    fn detach_program(&mut self) -> Result<(), Error> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        let prog_id = self.program.prog_id;
        match xdp::attach(
            self.ifindex,
            None,
            self.mode.flag(),
            Some(self.program.prog.as_fd()),
        ) {
            Ok(()) => {
                info!(ifname = %self.ifname, prog_id, mode = %self.mode,
                    "detached podfence XDP redirector");
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                warn!(ifname = %self.ifname, prog_id,
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
        if queue < self.program.max_queues {
            Ok(())
        } else {
            Err(Error::QueueOutOfRange {
                ifname: self.ifname.clone(),
                queue,
                max_queues: self.program.max_queues,
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
    rodata.max_queues = config.max_queues;
    rodata.max_slots = config.max_interfaces;
    // Checked by the caller: at most MAX_XSKMAP_ENTRIES.
    let xsk_entries = config.max_interfaces * config.max_queues;
    // A row per slot, and one for interfaces without a slot.
    let counter_entries = (config.max_interfaces + 1) * Counter::COUNT;
    open.maps
        .xsks
        .set_max_entries(xsk_entries)
        .map_err(Error::Load)?;
    open.maps
        .slots
        .set_max_entries(config.max_interfaces)
        .map_err(Error::Load)?;
    // The C enum's size times the rows: checked below against ours.
    let c_counters = open.maps.counters.max_entries();
    open.maps
        .counters
        .set_max_entries(counter_entries)
        .map_err(Error::Load)?;
    if c_counters != Counter::COUNT {
        return Err(Error::Inconsistent(format!(
            "the counters map has {c_counters} entries per interface, the loader knows {}",
            Counter::COUNT
        )));
    }
    let skel = open.load().map_err(Error::Load)?;
    let prog = skel
        .progs
        .podfence_xdp
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::Load(e.into()))?;
    let prog_id = Program::id_from_fd(prog.as_fd()).map_err(Error::Load)?;
    let xsks = MapHandle::try_from(&skel.maps.xsks).map_err(Error::Load)?;
    let counters = MapHandle::try_from(&skel.maps.counters).map_err(Error::Load)?;
    let slots = MapHandle::try_from(&skel.maps.slots).map_err(Error::Load)?;
    Ok(Loaded {
        prog,
        prog_id,
        xsks,
        counters,
        slots,
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
