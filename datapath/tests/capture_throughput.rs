//! How fast a capture is read (the replay path's front end). Not a pass/fail
//! test: run it by hand, in release mode, and read the numbers.
//!
//! ```text
//! cargo test --release -p podfence-datapath --test capture_throughput -- --ignored --nocapture
//! ```

use std::time::Instant;

use podfence_datapath::link::LinkType;
use podfence_datapath::ports::capture::{CapturePort, CaptureWriter};
use podfence_datapath::ports::{MAX_BATCH, Port, RxDesc};

const FRAMES: u64 = 1_000_000;

#[test]
#[ignore = "a measurement; run by hand in release mode"]
#[expect(clippy::cast_precision_loss, reason = "rates for display")]
fn read_rate_of_a_cached_pcap_of_64_byte_frames() {
    let dir = std::env::temp_dir().join(format!("podfence-capture-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rate.pcap");

    let mut frame = [0u8; 64];
    let started = Instant::now();
    let mut w = CaptureWriter::create(&path, LinkType::Ethernet).unwrap();
    for i in 0..FRAMES {
        frame[..8].copy_from_slice(&i.to_le_bytes());
        w.write(&frame, 64, i * 1000).unwrap();
    }
    w.finish().unwrap();
    let wrote = started.elapsed();
    println!(
        "write: {FRAMES} frames in {wrote:?}: {:.1} Mpps",
        FRAMES as f64 / wrote.as_secs_f64() / 1e6
    );

    // The first pass brings the file into the page cache; the best of the
    // later ones is reported.
    let mut best = f64::MAX;
    for _ in 0..4 {
        let started = Instant::now();
        let mut port = CapturePort::open(&path).unwrap();
        let mut descs = [RxDesc::default(); MAX_BATCH];
        let (mut n, mut sum) = (0u64, 0u64);
        loop {
            let got = port.recv(&mut descs).unwrap();
            if got == 0 && port.finished() {
                break;
            }
            for d in &descs[..got] {
                // Touch the frame as a parser would.
                sum = sum.wrapping_add(u64::from(port.frame(d)[0]));
            }
            n += got as u64;
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(n, FRAMES);
        assert!(sum > 0);
        best = best.min(secs);
    }
    let bytes = std::fs::metadata(&path).unwrap().len();
    println!(
        "read: {FRAMES} frames ({bytes} bytes) in {:.1} ms: {:.1} Mpps, {:.2} GB/s",
        best * 1e3,
        FRAMES as f64 / best / 1e6,
        bytes as f64 / best / 1e9
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
