//! An in-memory port: replays a trace of frames, for benchmarks and tests.
//!
//! Frames live in one contiguous buffer; a descriptor's `addr` is an offset
//! into it, so receiving is copying 24-byte descriptors, nothing else.
//! Transmitted frames are counted (and optionally kept) without allocating
//! per frame once the sink's capacity is reached.

use super::{ChecksumRequest, Port, PortError, PortStats, RxDesc};
use crate::link::LinkType;

/// A port over an in-memory trace.
#[derive(Debug)]
pub struct MemoryPort {
    name: String,
    data: Vec<u8>,
    frames: Vec<RxDesc>,
    next: usize,
    /// Passes over the trace still to make (`u64::MAX`: endless).
    rounds_left: u64,
    stats: PortStats,
    sent: Vec<Vec<u8>>,
    /// The checksum request each kept frame was sent with.
    sent_requests: Vec<Option<ChecksumRequest>>,
    keep_sent: usize,
    checksum_offload: bool,
}

impl MemoryPort {
    /// A port that delivers `frames` (all of framing `link`) `rounds` times.
    pub fn new<'a>(
        name: &str,
        link: LinkType,
        frames: impl IntoIterator<Item = &'a [u8]>,
        rounds: u64,
    ) -> Self {
        let mut data = Vec::new();
        let mut descs = Vec::new();
        for f in frames {
            descs.push(RxDesc {
                addr: data.len() as u64,
                len: f.len() as u32,
                wire_len: f.len() as u32,
                timestamp_ns: 0,
                link,
            });
            data.extend_from_slice(f);
        }
        Self {
            name: name.to_owned(),
            data,
            frames: descs,
            next: 0,
            rounds_left: rounds,
            stats: PortStats::default(),
            sent: Vec::new(),
            sent_requests: Vec::new(),
            keep_sent: 0,
            checksum_offload: false,
        }
    }

    /// Keeps copies of up to `n` transmitted frames (see [`Self::sent`]).
    #[must_use]
    pub fn keeping_sent(mut self, n: usize) -> Self {
        self.keep_sent = n;
        self.sent.reserve(n);
        self.sent_requests.reserve(n);
        self
    }

    /// Takes checksum requests ([`Port::send_offloaded`]), as a device
    /// with TX checksum offload does; kept frames keep theirs
    /// ([`MemoryPort::sent_requests`]), unfinished.
    #[must_use]
    pub fn with_checksum_offload(mut self) -> Self {
        self.checksum_offload = true;
        self
    }

    /// The checksum request of each kept frame (`None`: sent complete).
    #[must_use]
    pub fn sent_requests(&self) -> &[Option<ChecksumRequest>] {
        &self.sent_requests
    }

    /// Transmitted frames kept so far.
    #[must_use]
    pub fn sent(&self) -> &[Vec<u8>] {
        &self.sent
    }
}

impl Port for MemoryPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, descs: &mut [RxDesc]) -> Result<usize, PortError> {
        let mut n = 0;
        while n < descs.len() && self.rounds_left > 0 && !self.frames.is_empty() {
            let d = self.frames[self.next];
            descs[n] = d;
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += u64::from(d.len);
            n += 1;
            self.next += 1;
            if self.next == self.frames.len() {
                self.next = 0;
                self.rounds_left -= 1;
            }
        }
        Ok(n)
    }

    fn frame(&self, desc: &RxDesc) -> &[u8] {
        let start = desc.addr as usize;
        &self.data[start..start + desc.len as usize]
    }

    fn release(&mut self, _descs: &[RxDesc]) {}

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, PortError> {
        self.send_offloaded(frames, &[])
    }

    fn checksum_offload(&self) -> bool {
        self.checksum_offload
    }

    fn send_offloaded(
        &mut self,
        frames: &[&[u8]],
        requests: &[Option<ChecksumRequest>],
    ) -> Result<usize, PortError> {
        if !self.checksum_offload && requests.iter().any(Option::is_some) {
            return Err(PortError::Unsupported {
                port: self.name.clone(),
                operation: "checksum offload",
            });
        }
        for (i, f) in frames.iter().enumerate() {
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += f.len() as u64;
            if self.sent.len() < self.keep_sent {
                self.sent.push(f.to_vec());
                self.sent_requests.push(requests.get(i).copied().flatten());
            }
        }
        Ok(frames.len())
    }

    fn finished(&self) -> bool {
        self.rounds_left == 0 || self.frames.is_empty()
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_each_frame_per_round_in_batches() {
        let frames: [&[u8]; 3] = [b"a", b"bb", b"ccc"];
        let mut p = MemoryPort::new("mem", LinkType::RawIp, frames, 2).keeping_sent(1);
        let mut descs = [RxDesc::default(); 4];
        let n = p.recv(&mut descs).unwrap();
        assert_eq!(n, 4);
        let got: Vec<&[u8]> = descs[..n].iter().map(|d| p.frame(d)).collect();
        assert_eq!(got, [&b"a"[..], b"bb", b"ccc", b"a"]);
        assert_eq!(p.recv(&mut descs).unwrap(), 2);
        assert!(p.finished());
        assert_eq!(p.recv(&mut descs).unwrap(), 0);
        assert_eq!(p.send(&[b"x", b"y"]).unwrap(), 2);
        assert_eq!(p.sent(), [b"x".to_vec()]);
        let s = p.stats();
        assert_eq!((s.rx_frames, s.rx_bytes, s.tx_frames), (6, 12, 2));
    }
}
