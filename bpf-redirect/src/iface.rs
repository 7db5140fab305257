//! Network interface naming: the API accepts a name or an index, the kernel
//! wants an index, and the logs and errors want the name.

use std::ffi::{CStr, CString};
use std::fmt;

use crate::error::Error;

/// An interface, by name or by index, in the caller's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interface {
    /// Interface name, e.g. `pf-host`.
    Name(String),
    /// Interface index (`ip link` prints it first).
    Index(u32),
}

impl From<&str> for Interface {
    fn from(name: &str) -> Self {
        Self::Name(name.to_owned())
    }
}

impl From<String> for Interface {
    fn from(name: String) -> Self {
        Self::Name(name)
    }
}

impl From<&String> for Interface {
    fn from(name: &String) -> Self {
        Self::Name(name.clone())
    }
}

impl From<u32> for Interface {
    fn from(index: u32) -> Self {
        Self::Index(index)
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Index(i) => write!(f, "#{i}"),
        }
    }
}

/// Longest interface name (`IFNAMSIZ` - 1).
const MAX_NAME_LEN: usize = libc::IF_NAMESIZE - 1;

impl Interface {
    /// Resolves to `(ifindex, name)` in the calling thread's network namespace.
    pub(crate) fn resolve(&self) -> Result<(u32, String), Error> {
        match self {
            Self::Name(name) => Ok((name_to_index(name)?, name.clone())),
            Self::Index(index) => Ok((*index, index_to_name(*index)?)),
        }
    }
}

fn name_to_index(name: &str) -> Result<u32, Error> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidInterfaceName(name.to_owned()));
    }
    let cname = CString::new(name).map_err(|_| Error::InvalidInterfaceName(name.to_owned()))?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        Err(Error::InterfaceNotFound(name.to_owned()))
    } else {
        Ok(index)
    }
}

fn index_to_name(index: u32) -> Result<String, Error> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, the size if_indextoname requires;
    // on success it holds a NUL-terminated name.
    let ret = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ret.is_null() {
        return Err(Error::InterfaceIndexNotFound(index));
    }
    // SAFETY: if_indextoname succeeded, so `buf` holds a NUL-terminated string
    // within its IF_NAMESIZE bytes, and `buf` outlives the borrow.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolves_both_ways() {
        let (index, name) = Interface::from("lo").resolve().unwrap();
        assert!(index > 0);
        assert_eq!(name, "lo");
        assert_eq!(
            Interface::from(index).resolve().unwrap(),
            (index, "lo".to_owned())
        );
    }

    #[test]
    fn bad_names_are_rejected() {
        assert!(matches!(
            Interface::from("").resolve(),
            Err(Error::InvalidInterfaceName(_))
        ));
        assert!(matches!(
            Interface::from("a-name-that-is-too-long").resolve(),
            Err(Error::InvalidInterfaceName(_))
        ));
        assert!(matches!(
            Interface::from("a\0b").resolve(),
            Err(Error::InvalidInterfaceName(_))
        ));
        let err = Interface::from("pf-nonexist0").resolve().unwrap_err();
        assert_eq!(err.to_string(), "interface pf-nonexist0 not found");
        assert!(matches!(
            Interface::from(u32::MAX).resolve(),
            Err(Error::InterfaceIndexNotFound(_))
        ));
    }
}
