//! IP prefixes (CIDR blocks) as plain integers.
//!
//! Addresses are kept as `u32` (IPv4) and `u128` (IPv6) in host order so that
//! prefix arithmetic and the interval search in [`crate::lpm`] are integer
//! comparisons. The two families never mix: a v6 prefix contains no v4 address,
//! IPv4-mapped v6 addresses included.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address family's integer representation.
pub trait AddrBits: Copy + Ord + Eq + std::hash::Hash + fmt::Debug + Send + Sync + 'static {
    /// Address width in bits.
    const BITS: u8;
    /// The all-zero address.
    const ZERO: Self;
    /// The all-ones address.
    const MAX: Self;
    /// The network mask of a prefix of length `len` (`len <= BITS`).
    #[must_use]
    fn mask(len: u8) -> Self;
    /// Bitwise and.
    #[must_use]
    fn and(self, other: Self) -> Self;
    /// Bitwise or with the complement of `mask`: the last address of a block.
    #[must_use]
    fn or_not(self, mask: Self) -> Self;
    /// `self + 1`, or `None` on overflow.
    fn checked_next(self) -> Option<Self>;
}

macro_rules! addr_bits {
    ($t:ty, $bits:expr) => {
        impl AddrBits for $t {
            const BITS: u8 = $bits;
            const ZERO: Self = 0;
            const MAX: Self = <$t>::MAX;
            #[inline]
            fn mask(len: u8) -> Self {
                if len == 0 {
                    0
                } else {
                    <$t>::MAX << ($bits - u32::from(len))
                }
            }
            #[inline]
            fn and(self, other: Self) -> Self {
                self & other
            }
            #[inline]
            fn or_not(self, mask: Self) -> Self {
                self | !mask
            }
            #[inline]
            fn checked_next(self) -> Option<Self> {
                self.checked_add(1)
            }
        }
    };
}
addr_bits!(u32, 32);
addr_bits!(u128, 128);

/// A CIDR block of one family; host bits are always zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr<A> {
    addr: A,
    len: u8,
}

impl<A: AddrBits> Cidr<A> {
    /// The block of length `len` containing `addr` (host bits are cleared).
    ///
    /// # Panics
    /// When `len` exceeds the family's width.
    #[must_use]
    pub fn new(addr: A, len: u8) -> Self {
        assert!(len <= A::BITS, "prefix length {len} exceeds {}", A::BITS);
        Self {
            addr: addr.and(A::mask(len)),
            len,
        }
    }
    /// First address of the block.
    #[must_use]
    pub fn first(self) -> A {
        self.addr
    }
    /// Last address of the block.
    #[must_use]
    pub fn last(self) -> A {
        self.addr.or_not(A::mask(self.len))
    }
    /// Prefix length.
    #[must_use]
    pub fn prefix_len(self) -> u8 {
        self.len
    }
    /// Whether `addr` lies in the block.
    #[must_use]
    pub fn contains(self, addr: A) -> bool {
        addr.and(A::mask(self.len)) == self.addr
    }
    /// Whether `other` lies entirely in this block.
    #[must_use]
    pub fn covers(self, other: Self) -> bool {
        self.len <= other.len && self.contains(other.addr)
    }
}

/// A CIDR block of either family, as written in an `ipBlock`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    /// An IPv4 block.
    V4(Cidr<u32>),
    /// An IPv6 block.
    V6(Cidr<u128>),
}

impl Prefix {
    /// The block of length `len` containing `addr`; `None` when `len` is too long.
    #[must_use]
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        match addr {
            IpAddr::V4(a) if len <= 32 => Some(Self::V4(Cidr::new(u32::from(a), len))),
            IpAddr::V6(a) if len <= 128 => Some(Self::V6(Cidr::new(u128::from(a), len))),
            _ => None,
        }
    }
    /// The host prefix (/32 or /128) of one address.
    #[must_use]
    pub fn host(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => Self::V4(Cidr::new(u32::from(a), 32)),
            IpAddr::V6(a) => Self::V6(Cidr::new(u128::from(a), 128)),
        }
    }
    /// Whether `addr` lies in the block; never across families.
    #[must_use]
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self, addr) {
            (Self::V4(c), IpAddr::V4(a)) => c.contains(u32::from(a)),
            (Self::V6(c), IpAddr::V6(a)) => c.contains(u128::from(a)),
            _ => false,
        }
    }
    /// Whether `other` lies entirely in this block (same family only).
    #[must_use]
    pub fn covers(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::V4(a), Self::V4(b)) => a.covers(*b),
            (Self::V6(a), Self::V6(b)) => a.covers(*b),
            _ => false,
        }
    }
    /// Prefix length.
    #[must_use]
    pub fn prefix_len(&self) -> u8 {
        match self {
            Self::V4(c) => c.prefix_len(),
            Self::V6(c) => c.prefix_len(),
        }
    }
    /// The network address.
    #[must_use]
    pub fn network(&self) -> IpAddr {
        match self {
            Self::V4(c) => IpAddr::V4(Ipv4Addr::from(c.first())),
            Self::V6(c) => IpAddr::V6(Ipv6Addr::from(c.first())),
        }
    }
}

/// Why a string is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// No `/` separates address and length.
    #[error("'{0}' is not in CIDR notation (expected ADDRESS/LENGTH, e.g. 10.0.0.0/8)")]
    NoSlash(String),
    /// The address part does not parse.
    #[error("'{0}' does not start with a valid IPv4 or IPv6 address")]
    BadAddress(String),
    /// The length is not a number or too long for the family.
    #[error("'{0}' has an invalid prefix length (0-32 for IPv4, 0-128 for IPv6)")]
    BadLength(String),
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses `ADDRESS/LENGTH`. Host bits are cleared, as the Kubernetes API
    /// (Go's `net.ParseCIDR`) does for `ipBlock.cidr`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| PrefixError::NoSlash(s.to_owned()))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| PrefixError::BadAddress(s.to_owned()))?;
        let len_ok = !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) && len.len() <= 3;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|_| len_ok)
            .ok_or_else(|| PrefixError::BadLength(s.to_owned()))?;
        Self::new(addr, len).ok_or_else(|| PrefixError::BadLength(s.to_owned()))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix_len())
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_clears_host_bits() {
        let p: Prefix = "10.1.2.3/8".parse().unwrap();
        assert_eq!(p.to_string(), "10.0.0.0/8");
        let p: Prefix = "2001:db8::1/32".parse().unwrap();
        assert_eq!(p.to_string(), "2001:db8::/32");
        assert_eq!("0.0.0.0/0".parse::<Prefix>().unwrap().prefix_len(), 0);
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            "10.0.0.0".parse::<Prefix>(),
            Err(PrefixError::NoSlash(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Prefix>(),
            Err(PrefixError::BadAddress(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Prefix>(),
            Err(PrefixError::BadLength(_))
        ));
        assert!(matches!(
            "10.0.0.0/+8".parse::<Prefix>(),
            Err(PrefixError::BadLength(_))
        ));
        assert!(matches!(
            "::/129".parse::<Prefix>(),
            Err(PrefixError::BadLength(_))
        ));
    }

    #[test]
    fn families_never_mix() {
        let all_v6: Prefix = "::/0".parse().unwrap();
        let all_v4: Prefix = "0.0.0.0/0".parse().unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(!all_v6.contains(v4));
        assert!(all_v6.contains(mapped));
        assert!(!all_v4.contains(mapped));
        assert!(all_v4.contains(v4));
        assert!(!all_v4.covers(&all_v6));
    }

    #[test]
    fn covers_and_bounds() {
        let outer: Prefix = "10.0.0.0/8".parse().unwrap();
        let inner: Prefix = "10.1.0.0/16".parse().unwrap();
        assert!(outer.covers(&inner));
        assert!(!inner.covers(&outer));
        assert!(outer.covers(&outer));
        let Prefix::V4(c) = inner else { unreachable!() };
        assert_eq!(c.first(), u32::from(Ipv4Addr::new(10, 1, 0, 0)));
        assert_eq!(c.last(), u32::from(Ipv4Addr::new(10, 1, 255, 255)));
        assert_eq!(Cidr::<u32>::new(0, 0).last(), u32::MAX);
    }
}
