//! `podfence replay`: captures through the worker pipeline, and the summary
//! of what they did; with a candidate policy state, the diff of verdicts
//! (see `replay_diff`).

use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use clap::error::ErrorKind;
use podfence_control::replay::{self, ReplayOptions};
use podfence_datapath::worker::MalformedAction;

use super::{CliError, ManifestArgs, replay_diff, usage_error};

/// Replay capture files (pcap, pcapng) through the worker pipeline.
///
/// Stateful: replies of allowed connections pass, a packet that matches
/// no connection is classified as a new one, flows that start
/// mid-capture are picked up loosely. Prints a summary; a capture that
/// cannot be read is reported and the others are still replayed (exit
/// status 1).
///
/// With --candidate or --delete-policy, a diff: the captures are
/// replayed against the current manifests and against the candidate
/// state, and every flow (source, destination, protocol, destination
/// port) whose connections change verdict is listed, those that would
/// break (allowed now, denied under the candidate) and those that would
/// open, by number of connections, with the reason on each side. The
/// candidate is an overlay: the current manifests, minus the policies
/// --delete-policy names, plus the --candidate objects, which replace
/// the current ones of the same kind, namespace and name and add the
/// others. `--delete-policy '*/*' --candidate DIR` compares against
/// exactly the policies in DIR.
#[derive(Args, Debug)]
#[allow(clippy::struct_excessive_bools, reason = "command-line flags")]
#[command(group(
    clap::ArgGroup::new("diff")
        .multiple(true)
        .args(["candidate", "delete_policy"])
))]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    pub(super) manifests: ManifestArgs,
    /// Capture files, replayed in this order as one trace. They may
    /// follow the manifest paths directly: trailing paths that are
    /// captures (by their first bytes, or a .pcap/.pcapng/.cap name) are
    /// taken as captures.
    #[arg(value_name = "CAPTURE")]
    pub(super) captures: Vec<PathBuf>,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(super) workers: u32,
    /// Write one line per flow: proto src_ip src_port dst_ip dst_port
    /// packets bytes verdict policy (tab-separated; src sent the first
    /// packet; verdict and policy are those of that packet).
    #[arg(long, value_name = "FILE", conflicts_with = "diff")]
    flows: Option<PathBuf>,
    /// Write one line per packet in capture order: index (from 1, across
    /// files) and allow, deny or malformed.
    #[arg(long, value_name = "FILE", conflicts_with = "diff")]
    packets: Option<PathBuf>,
    /// Write the packets that passed to this pcap file.
    #[arg(long, value_name = "FILE", conflicts_with = "diff")]
    write_allowed: Option<PathBuf>,
    /// Write the packets that were dropped (by policy, or malformed) to
    /// this pcap file.
    #[arg(long, value_name = "FILE", conflicts_with = "diff")]
    write_denied: Option<PathBuf>,
    /// Let frames that do not parse through instead of dropping them.
    #[arg(long)]
    pass_malformed: bool,
    /// Print the summary (or the diff) as JSON.
    #[arg(long)]
    pub(super) json: bool,
    /// Diff: candidate manifest files or directories, overlaid on
    /// --manifests (same kind, namespace and name replaces, others are
    /// added).
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub(super) candidate: Vec<PathBuf>,
    /// Diff: leave this policy of the current manifests out of the
    /// candidate (NAMESPACE/NAME; either part may be *; repeatable; a
    /// cluster-scoped policy is KIND/NAME, e.g. ClusterNetworkPolicy/guard).
    #[arg(long = "delete-policy", value_name = "NAMESPACE/NAME")]
    pub(super) delete_policy: Vec<replay::PolicyPattern>,
    /// Diff: exit with status 3 when any connection would break.
    #[arg(long, requires = "diff")]
    pub(super) fail_on_break: bool,
    /// Diff: exit with status 3 when any connection would open.
    #[arg(long, requires = "diff")]
    pub(super) fail_on_open: bool,
}

impl ReplayArgs {
    /// What the workers do with frames that do not parse.
    pub(super) fn malformed(&self) -> MalformedAction {
        if self.pass_malformed {
            MalformedAction::Pass
        } else {
            MalformedAction::Drop
        }
    }

    /// Takes the captures that trail either list of manifest paths (each
    /// keeps one); at least one capture is required.
    fn take_trailing_captures(&mut self) -> Result<(), CliError> {
        for paths in [&mut self.candidate, &mut self.manifests.manifests] {
            while paths.len() > 1 && paths.last().is_some_and(|p| is_capture(p)) {
                let p = paths.pop().expect("checked");
                self.captures.insert(0, p);
            }
        }
        if self.captures.is_empty() {
            return Err(usage_error(
                "replay",
                ErrorKind::MissingRequiredArgument,
                "no capture files given",
            ));
        }
        Ok(())
    }
}

pub(crate) fn run(mut args: ReplayArgs) -> Result<(), CliError> {
    args.take_trailing_captures()?;
    if !args.candidate.is_empty() || !args.delete_policy.is_empty() {
        return replay_diff::run(&args);
    }
    let (cluster, compiled) = super::load(&args.manifests.manifests)?;
    let services = podfence_control::compile::compile_services(
        &cluster,
        &podfence_control::compile::Locality::AllPods,
    );
    for w in &services.warnings {
        eprintln!("podfence: warning: {w}");
    }
    replay_summary(&compiled.tables, services.table, &args)?;
    Ok(())
}

/// Whether `path` names a capture file: pcap or pcapng magic, or, for a
/// file that cannot be read, a capture file name.
fn is_capture(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    match std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)) {
        Ok(()) => matches!(
            u32::from_le_bytes(magic),
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 | 0x0a0d_0d0a
        ),
        Err(_) => path
            .extension()
            .is_some_and(|e| e == "pcap" || e == "pcapng" || e == "cap"),
    }
}

fn replay_summary(
    tables: &podfence_datapath::Tables,
    services: std::sync::Arc<podfence_datapath::ServiceTable>,
    args: &ReplayArgs,
) -> anyhow::Result<()> {
    let progress = Progress::new(&args.captures, 1);
    let want_verdicts =
        args.packets.is_some() || args.write_allowed.is_some() || args.write_denied.is_some();
    let options = ReplayOptions {
        workers: args.workers as usize,
        keep_packet_verdicts: want_verdicts,
        record_flows: args.flows.is_some(),
        malformed: args.malformed(),
        progress: Some(progress.counter.clone()),
        services,
        ..ReplayOptions::default()
    };
    let report = replay::replay(tables.clone(), &args.captures, &options);
    progress.finish();

    if let Some(path) = &args.flows {
        let mut out = create(path)?;
        for f in &report.flows {
            let addr = |a: u128| -> IpAddr {
                if f.key.ipv6 {
                    IpAddr::V6(a.into())
                } else {
                    IpAddr::V4((a as u32).into())
                }
            };
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                podfence_datapath::IpProtocol(f.key.protocol),
                addr(f.key.src),
                f.key.src_port,
                addr(f.key.dst),
                f.key.dst_port,
                f.packets,
                f.bytes,
                if f.allowed { "allow" } else { "deny" },
                replay::attribution(tables, f.verdict.as_ref()),
            )?;
        }
        out.flush()?;
    }
    if let Some(path) = &args.packets {
        let mut out = create(path)?;
        for (i, v) in report.packet_verdicts.iter().enumerate() {
            writeln!(out, "{}\t{}", i + 1, v.as_str())?;
        }
        out.flush()?;
    }
    if args.write_allowed.is_some() || args.write_denied.is_some() {
        let skipped = replay::write_by_verdict(
            &args.captures,
            &report.packet_verdicts,
            args.write_allowed.as_deref(),
            args.write_denied.as_deref(),
        )?;
        if skipped > 0 {
            eprintln!("podfence: note: {skipped} frames of a second link type were not written");
        }
    }
    print_summary(&report, args)?;
    for e in &report.errors {
        eprintln!("podfence: error: {}", e.error);
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} of {} capture file(s) could not be read completely",
            report.errors.len(),
            report.files
        )
    }
}

fn print_summary(report: &replay::ReplayReport, args: &ReplayArgs) -> anyhow::Result<()> {
    let c = &report.counters;
    let mut out = std::io::stdout().lock();
    if args.json {
        let errors: Vec<String> = report.errors.iter().map(|e| e.error.to_string()).collect();
        let summary = serde_json::json!({
            "files": report.files,
            "packets": report.packets(),
            "flows": args.flows.is_some().then_some(report.flows.len()),
            "allowed": c.allowed,
            "denied": c.denied,
            "malformed": c.malformed,
            "not_ip": c.not_ip,
            "connections_allowed": c.new_allowed,
            "connections_denied": c.new_denied,
            "picked_up": c.picked_up,
            "fragments_orphaned": c.fragments_orphaned,
            "seconds": report.elapsed.as_secs_f64(),
            "mpps": report.mpps(),
            "errors": errors,
        });
        writeln!(out, "{summary}")?;
        return Ok(());
    }
    let malformed = if args.malformed() == MalformedAction::Pass {
        "passed"
    } else {
        "dropped"
    };
    let rows: [(&str, String); 10] = [
        (
            "files",
            format!("{} ({} with errors)", report.files, report.errors.len()),
        ),
        ("packets", report.packets().to_string()),
        (
            "flows",
            if args.flows.is_some() {
                report.flows.len().to_string()
            } else {
                "not recorded (--flows FILE lists them)".to_owned()
            },
        ),
        ("allowed", c.allowed.to_string()),
        ("denied", c.denied.to_string()),
        ("malformed", format!("{} ({malformed})", c.malformed)),
        ("not IP", format!("{} (passed to the kernel)", c.not_ip)),
        (
            "connections",
            format!(
                "{} allowed ({} picked up mid-stream), {} denied",
                c.new_allowed, c.picked_up, c.new_denied
            ),
        ),
        ("time", format!("{:.3} s", report.elapsed.as_secs_f64())),
        (
            "rate",
            format!("{:.2} Mpps on {} worker(s)", report.mpps(), args.workers),
        ),
    ];
    for (k, v) in rows {
        writeln!(out, "{k:<12} {v}")?;
    }
    Ok(())
}

fn create(path: &Path) -> anyhow::Result<BufWriter<std::fs::File>> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(BufWriter::new(f))
}

/// A progress bar on standard error (when it is a terminal), fed by the
/// byte counter replays add to.
pub(super) struct Progress {
    pub(super) counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar for `passes` replays of `captures`.
    pub(super) fn new(captures: &[PathBuf], passes: u64) -> Self {
        use std::io::IsTerminal;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        let total_bytes: u64 = captures
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let counter = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total_bytes * passes);
            let style = "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}";
            bar.set_style(indicatif::ProgressStyle::with_template(style).expect("valid template"));
            let (shown, progress, done) = (bar.clone(), counter.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    shown.set_position(progress.load(Ordering::Relaxed));
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
            bar
        });
        Self { counter, done, bar }
    }

    pub(super) fn finish(self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
