//! What the workers deny, explained off the packet path: counted by policy,
//! written as one JSON line per denied connection attempt (rate-limited per
//! address pair, with a count of what was held back) and captured to
//! pcapng with the decision as a packet comment.
//!
//! The workers queue each dropped packet ([`DenialQueue`]); a reporter
//! thread drains the queue a few times a second and attributes each record
//! with the table generation that decided it, kept for a few generations.
//!
//! A flood of denied packets must not take CPU from the workers: a record
//! costs two hash lookups (its counters, its address pair) unless it is
//! logged or captured, which the per-pair and per-second limits bound; and
//! the thread runs at the lowest priority.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use podfence_datapath::denials::{Denial, DenialKind, DenialQueue, SNAP_LEN};
use podfence_datapath::publish::{Generation, Publisher};
use podfence_datapath::tables::{Decision, Direction, IpProtocol, ObjectName, Tables, TierRule};
use prometheus_client::metrics::counter::Counter;
use rustc_hash::FxHashMap;
use serde_json::{Value, json};
use tracing::warn;

use crate::capture::CaptureWriter;
use crate::metrics::ControlMetrics;

/// Where deny log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyLog {
    /// Standard output.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
}

/// What the reporter does with denials.
#[derive(Clone, Debug)]
pub struct DenialOptions {
    /// This node's name, for the log lines.
    pub node: Option<String>,
    /// Deny log destination; `None`: no log (denials are still counted).
    pub log: Option<DenyLog>,
    /// Log lines per second for one source and destination address pair;
    /// more are counted and reported with the next line of that pair.
    pub log_per_pair: u32,
    /// pcapng file for denied packets.
    pub capture: Option<PathBuf>,
    /// Size at which the capture file rotates.
    pub capture_max_bytes: u64,
    /// Packets captured per second at most.
    pub capture_per_second: u32,
}

impl Default for DenialOptions {
    fn default() -> Self {
        Self {
            node: None,
            log: None,
            log_per_pair: 1,
            capture: None,
            capture_max_bytes: 64 << 20,
            capture_per_second: 1000,
        }
    }
}

/// How often the queue is drained.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// Generations kept for attributing records queued before a swap.
const GENERATIONS_KEPT: usize = 8;
/// Address pairs whose rate state is kept before idle ones are forgotten.
const PAIRS_KEPT: usize = 1 << 16;

/// The reporter thread.
#[derive(Debug)]
pub struct DenialReporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DenialReporter {
    /// Starts draining `queue`, attributing with `publisher`'s generations.
    pub fn start(
        queue: Arc<DenialQueue>,
        publisher: Publisher,
        metrics: ControlMetrics,
        options: DenialOptions,
    ) -> std::io::Result<Self> {
        let mut report = Report::new(publisher, metrics, options)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("podfence-denials".into())
            .spawn(move || {
                if let Err(e) = podfence_datapath::worker::lowest_priority() {
                    warn!(error = %e, "the denial reporter keeps its priority");
                }
                loop {
                    let last = stopping.load(Ordering::Acquire);
                    report.drain(&queue);
                    if last {
                        break;
                    }
                    std::thread::sleep(DRAIN_EVERY);
                }
                report.finish();
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Drains what is queued and stops.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DenialReporter {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Rate state of one address pair.
#[derive(Clone, Copy, Default)]
struct PairState {
    second: u64,
    lines: u32,
    held_back: u64,
}

/// The policy counters one (generation, direction, group, audited) record
/// increments: the metric family's counter and the index of its
/// `denial_totals` entry (`None` for audited records, which have none).
type PolicyCounters = Arc<[(Counter, Option<usize>)]>;

struct Report {
    publisher: Publisher,
    generations: VecDeque<Arc<Generation>>,
    metrics: ControlMetrics,
    /// Counters by (generation, egress?, group, audited), resolved once.
    policy_counters: FxHashMap<(u64, bool, Denier, bool), PolicyCounters>,
    /// `denial_totals` keys by index, their index, and counts not yet added.
    totals: Vec<((String, String), u64)>,
    total_index: FxHashMap<(String, String), usize>,
    options: DenialOptions,
    log: Option<Box<dyn Write + Send>>,
    pairs: FxHashMap<(IpAddr, IpAddr), PairState>,
    capture: Option<CaptureWriter>,
    capture_second: u64,
    captured_this_second: u32,
    lost_seen: u64,
}

impl Report {
    fn new(
        publisher: Publisher,
        metrics: ControlMetrics,
        options: DenialOptions,
    ) -> std::io::Result<Self> {
        let log: Option<Box<dyn Write + Send>> = match &options.log {
            None => None,
            Some(DenyLog::Stdout) => Some(Box::new(std::io::stdout())),
            Some(DenyLog::File(path)) => Some(Box::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ))),
        };
        let capture = match &options.capture {
            Some(path) => Some(CaptureWriter::create(
                path,
                options.capture_max_bytes,
                SNAP_LEN as u32,
            )?),
            None => None,
        };
        Ok(Self {
            publisher,
            generations: VecDeque::new(),
            metrics,
            policy_counters: FxHashMap::default(),
            totals: Vec::new(),
            total_index: FxHashMap::default(),
            options,
            log,
            pairs: FxHashMap::default(),
            capture,
            capture_second: 0,
            captured_this_second: 0,
            lost_seen: 0,
        })
    }

    fn drain(&mut self, queue: &DenialQueue) {
        let current = self.publisher.current();
        if self
            .generations
            .back()
            .is_none_or(|g| g.tables.generation() != current.tables.generation())
        {
            self.generations.push_back(current);
            if self.generations.len() > GENERATIONS_KEPT {
                self.generations.pop_front();
                let oldest = self.generations[0].tables.generation();
                self.policy_counters.retain(|k, _| k.0 >= oldest);
            }
        }
        let mut any = false;
        while let Some(d) = queue.pop() {
            self.one(&d);
            any = true;
        }
        let lost = queue.lost();
        self.metrics
            .denials_lost
            .inc_by(lost.saturating_sub(self.lost_seen));
        self.lost_seen = lost;
        if any {
            self.flush();
        }
    }

    fn generation(&self, generation: u64) -> Option<Arc<Generation>> {
        self.generations
            .iter()
            .rev()
            .find(|g| g.tables.generation() == generation)
            .cloned()
    }

    fn one(&mut self, d: &Denial) {
        let Some(generation) = self.generation(d.generation) else {
            // Decided by a generation already forgotten: counted, not named.
            self.metrics.denials_unattributed.inc();
            return;
        };
        let tables = &generation.tables;
        self.count(tables, d);
        let capture = d.kind != DenialKind::Audited
            && self.capture.is_some()
            && self.capture_slot(d.unix_ns / 1_000_000_000);
        let log = d.kind != DenialKind::Revoked && self.log.is_some();
        let held_back = if log { self.pair_slot(d) } else { None };
        if !capture && held_back.is_none() {
            return;
        }
        let mut line = describe(tables, d, self.options.node.as_deref());
        if let Some(capture) = self.capture.as_mut().filter(|_| capture) {
            let comment = comment(&line);
            if let Err(e) = capture.write(d.unix_ns, d.link, d.packet(), d.wire_len, &comment) {
                warn!(error = %e, "capture of denied packets stops");
                self.capture = None;
            }
        }
        if let (Some(held_back), Some(log)) = (held_back, &mut self.log) {
            if held_back > 0 {
                line["held_back_before"] = json!(held_back);
            }
            if writeln!(log, "{line}").is_err() {
                warn!("deny log cannot be written; it stops");
                self.log = None;
            }
        }
    }

    /// Counts a record against every policy that isolates the side that
    /// denied it.
    fn count(&mut self, tables: &Tables, d: &Denial) {
        let audited = d.kind == DenialKind::Audited;
        for (egress, decision) in [(true, d.verdict.egress), (false, d.verdict.ingress)] {
            let denier = match decision {
                Decision::Denied { group } | Decision::WouldDeny { group } => {
                    Some(Denier::Group(group.0))
                }
                Decision::TierDenied(r) | Decision::TierWouldDeny(r) => {
                    Some(Denier::TierPolicy(r.policy.0))
                }
                _ => None,
            };
            if let Some(denier) = denier {
                let key = (tables.generation(), egress, denier, audited);
                let counters = if let Some(c) = self.policy_counters.get(&key) {
                    Arc::clone(c)
                } else {
                    let c = self.resolve_counters(tables, egress, decision, audited);
                    self.policy_counters.insert(key, Arc::clone(&c));
                    c
                };
                for (counter, total) in counters.iter() {
                    counter.inc();
                    if let Some(i) = total {
                        self.totals[*i].1 += 1;
                    }
                }
            }
        }
    }

    fn resolve_counters(
        &mut self,
        tables: &Tables,
        egress: bool,
        decision: Decision,
        audited: bool,
    ) -> PolicyCounters {
        let direction = if egress {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        // A NetworkPolicy's denial is its isolation (no rule); a tier's is
        // one rule of a cluster-scoped policy, whose name's namespace part
        // is its kind.
        let (names, tier_rule): (Vec<ObjectName>, _) = match decision {
            Decision::Denied { group } | Decision::WouldDeny { group } => {
                (tables.group_policy_names(group).cloned().collect(), None)
            }
            Decision::TierDenied(r) | Decision::TierWouldDeny(r) => {
                let rule = (
                    r.tier.to_string(),
                    tables.tier_rule_name(r, direction).to_owned(),
                );
                (vec![tables.policy(r.policy).clone()], Some(rule))
            }
            _ => return Arc::new([]),
        };
        let family = if audited {
            &self.metrics.audit_denials
        } else {
            &self.metrics.denials
        };
        let mut out = Vec::new();
        for name in &names {
            let labels = match &tier_rule {
                None => vec![
                    ("direction", direction.to_string()),
                    ("kind", "NetworkPolicy".to_owned()),
                    ("namespace", name.namespace.to_string()),
                    ("policy", name.name.to_string()),
                    ("tier", String::new()),
                    ("rule", String::new()),
                ],
                Some((tier, rule)) => vec![
                    ("direction", direction.to_string()),
                    ("kind", name.namespace.to_string()),
                    ("namespace", String::new()),
                    ("policy", name.name.to_string()),
                    ("tier", tier.clone()),
                    ("rule", rule.clone()),
                ],
            };
            let counter = family.get_or_create(&labels).clone();
            let total = (!audited).then(|| {
                let key = (direction.to_string(), name.to_string());
                *self.total_index.entry(key.clone()).or_insert_with(|| {
                    self.totals.push((key, 0));
                    self.totals.len() - 1
                })
            });
            out.push((counter, total));
        }
        out.into()
    }

    /// Whether this second's capture budget has room for one more packet.
    fn capture_slot(&mut self, second: u64) -> bool {
        if second != self.capture_second {
            self.capture_second = second;
            self.captured_this_second = 0;
        }
        if self.captured_this_second < self.options.capture_per_second {
            self.captured_this_second += 1;
            true
        } else {
            self.metrics.captures_skipped.inc();
            false
        }
    }

    /// Whether the record's address pair may log a line this second, and
    /// if so how many lines were held back before it.
    fn pair_slot(&mut self, d: &Denial) -> Option<u64> {
        if self.pairs.len() > PAIRS_KEPT {
            self.pairs.retain(|_, s| s.held_back > 0);
        }
        let pair = (ip(d.flow.src, d.flow.ipv6), ip(d.flow.dst, d.flow.ipv6));
        let state = self.pairs.entry(pair).or_default();
        let second = d.unix_ns / 1_000_000_000;
        if state.second != second {
            *state = PairState {
                second,
                lines: 0,
                held_back: state.held_back,
            };
        }
        if state.lines >= self.options.log_per_pair {
            state.held_back += 1;
            self.metrics.deny_log_held_back.inc();
            return None;
        }
        state.lines += 1;
        Some(std::mem::take(&mut state.held_back))
    }

    fn flush(&mut self) {
        if self.totals.iter().any(|t| t.1 > 0) {
            let mut totals = self
                .metrics
                .denial_totals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (key, count) in &mut self.totals {
                if *count > 0 {
                    *totals.entry(key.clone()).or_default() += std::mem::take(count);
                }
            }
        }
        if let Some(log) = &mut self.log {
            let _ = log.flush();
        }
        if let Some(capture) = &mut self.capture {
            let _ = capture.flush();
        }
    }

    fn finish(&mut self) {
        self.flush();
    }
}

fn ip(addr: u128, ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(addr.into())
    } else {
        IpAddr::V4((addr as u32).into())
    }
}

/// One side of the connection: its pod, or its address.
fn endpoint(tables: &Tables, addr: IpAddr) -> Value {
    match tables.peer(addr).pod {
        Some(p) => json!({"pod": tables.pod(p.pod).to_string(), "ip": addr.to_string()}),
        None => json!({"ip": addr.to_string()}),
    }
}

/// What denied one side: the isolating policies of a NetworkPolicy group,
/// or one tier policy (counted under its kind and name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Denier {
    Group(u32),
    TierPolicy(u32),
}

/// One side's decision, with the Admin-tier Pass rule that handed it on
/// to NetworkPolicy, if one did (`passed_by`).
fn side(tables: &Tables, d: Decision, passed: Option<TierRule>, direction: Direction) -> Value {
    let mut v = decision(tables, d, direction);
    if let Some(r) = passed {
        v["passed_by"] = json!({
            "tier": r.tier.to_string(),
            "policy": tables.policy(r.policy).to_string(),
            "priority": tables.tier_info(r.policy).and_then(|i| i.priority),
            "rule": r.rule,
            "rule_name": tables.tier_rule_name(r, direction),
        });
    }
    v
}

/// What decided one direction, in the words of `podfence explain`.
fn decision(tables: &Tables, d: Decision, direction: Direction) -> Value {
    match d {
        Decision::NotEnforced => json!({"verdict": "allow", "reason": "not a pod enforced here"}),
        Decision::NotIsolated => json!({"verdict": "allow", "reason": "no policy isolates it"}),
        Decision::SelfTraffic => json!({"verdict": "allow", "reason": "a pod may reach itself"}),
        Decision::OwnNode => json!({"verdict": "allow", "reason": "the pod's own node"}),
        Decision::Allowed { policy, rule } => json!({
            "verdict": "allow",
            "policy": tables.policy(policy).to_string(),
            "rule": rule,
        }),
        Decision::TierAccepted(r) | Decision::TierDenied(r) | Decision::TierWouldDeny(r) => {
            json!({
                "verdict": match d {
                    Decision::TierAccepted(_) => "allow",
                    Decision::TierDenied(_) => "deny",
                    _ => "deny (audit: passed)",
                },
                "tier": r.tier.to_string(),
                "policy": tables.policy(r.policy).to_string(),
                "priority": tables.tier_info(r.policy).and_then(|i| i.priority),
                "rule": r.rule,
                "rule_name": tables.tier_rule_name(r, direction),
            })
        }
        Decision::Denied { group } | Decision::WouldDeny { group } => {
            let names: Vec<String> = tables
                .group_policy_names(group)
                .map(ToString::to_string)
                .collect();
            json!({
                "verdict": if d.is_allowed() { "deny (audit: passed)" } else { "deny" },
                "isolated_by": names,
                "reason": "no rule of the isolating policies matches",
            })
        }
    }
}

/// The deny log line of a record.
fn describe(tables: &Tables, d: &Denial, node: Option<&str>) -> Value {
    let (src, dst) = (ip(d.flow.src, d.flow.ipv6), ip(d.flow.dst, d.flow.ipv6));
    let denied: Vec<&str> = [("egress", d.verdict.egress), ("ingress", d.verdict.ingress)]
        .iter()
        .filter(|(_, v)| v.is_policy_denial())
        .map(|(name, _)| *name)
        .collect();
    let protocol = IpProtocol(d.flow.protocol);
    json!({
        "time": rfc3339(d.unix_ns),
        "node": node,
        "event": match d.kind {
            DenialKind::Connection => "connection denied",
            DenialKind::Revoked => "connection revoked",
            DenialKind::Audited => "connection would be denied (audit mode: passed)",
        },
        "denied_by": denied.join("+"),
        "src": endpoint(tables, src),
        "dst": endpoint(tables, dst),
        "protocol": protocol.name().map_or_else(|| protocol.0.to_string(), str::to_owned),
        "src_port": d.flow.src_port,
        "dst_port": d.flow.dst_port,
        "egress": side(tables, d.verdict.egress, d.verdict.passed.egress, Direction::Egress),
        "ingress": side(tables, d.verdict.ingress, d.verdict.passed.ingress, Direction::Ingress),
        "generation": d.generation,
    })
}

/// A short packet comment from a log line.
fn comment(line: &Value) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "podfence: {} ({}) generation {}",
        line["event"].as_str().unwrap_or_default(),
        line["denied_by"].as_str().unwrap_or_default(),
        line["generation"],
    );
    for side in ["egress", "ingress"] {
        if let Some(names) = line[side]["isolated_by"].as_array() {
            let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
            let _ = write!(
                out,
                "; {side} isolated by {}, no rule matches",
                names.join(", ")
            );
        }
    }
    out
}

/// `unix_ns` as an RFC 3339 UTC timestamp with nanoseconds.
fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let nanos = unix_ns % 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{CompileOptions, compile};
    use crate::sources::manifests;
    use podfence_datapath::flow::FlowKey;
    use podfence_datapath::link::LinkType;
    use std::path::Path;

    const CLUSTER: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {phase: Running, podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
status: {phase: Running, podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-only-api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]
";

    /// A flood from one pair: every packet counted against both isolating
    /// policies, one log line per second with what was held back.
    #[test]
    fn a_flood_is_counted_exactly_and_logged_once_per_second() {
        let cluster = manifests::load_str(Path::new("test.yaml"), CLUSTER)
            .expect("manifests")
            .cluster;
        let tables = compile(&cluster, &CompileOptions::default()).tables;
        let (web, db) = (
            u32::from_be_bytes([10, 0, 0, 1]),
            u32::from_be_bytes([10, 0, 0, 2]),
        );
        let verdict = tables.classify_v4(web, db, IpProtocol::TCP, 5432);
        assert!(!verdict.is_allowed());
        let generation = tables.generation();
        let publisher = Publisher::new(tables, podfence_datapath::ServiceTable::empty());
        let dir = std::env::temp_dir().join(format!("pf-denials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("deny.log");
        let metrics = ControlMetrics::default();
        let options = DenialOptions {
            log: Some(DenyLog::File(log.clone())),
            ..DenialOptions::default()
        };
        let mut report = Report::new(publisher, metrics.clone(), options).expect("report");
        let queue = DenialQueue::new(16_384);
        let second = 1_700_000_000_000_000_000u64;
        let denial = |unix_ns| Denial {
            unix_ns,
            generation,
            kind: DenialKind::Connection,
            flow: FlowKey {
                src: u128::from(web),
                dst: u128::from(db),
                src_port: 40_000,
                dst_port: 5432,
                protocol: 6,
                ipv6: false,
            },
            verdict,
            ..Denial::of_frame(LinkType::Ethernet, &[0; 60], 60)
        };
        for k in 0..10_000 {
            queue.push(denial(second + k));
        }
        report.drain(&queue);
        queue.push(denial(second + 1_000_000_000));
        report.drain(&queue);
        let text = std::fs::read_to_string(&log).expect("deny log");
        let _ = std::fs::remove_dir_all(&dir);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["src"]["pod"], "shop/web");
        assert_eq!(lines[0]["dst"]["pod"], "shop/db");
        assert_eq!(
            lines[0]["ingress"]["isolated_by"],
            json!(["shop/db-only-api", "shop/default-deny"])
        );
        assert!(lines[0].get("held_back_before").is_none());
        assert_eq!(lines[1]["held_back_before"], 9_999);
        assert_eq!(metrics.deny_log_held_back.get(), 9_999);
        let mut totals = metrics.denial_totals();
        totals.sort();
        assert_eq!(
            totals,
            vec![
                (("ingress".into(), "shop/db-only-api".into()), 10_001),
                (("ingress".into(), "shop/default-deny".into()), 10_001),
            ]
        );
        let counter = metrics
            .denials
            .get_or_create(&vec![
                ("direction", "ingress".to_owned()),
                ("kind", "NetworkPolicy".to_owned()),
                ("namespace", "shop".to_owned()),
                ("policy", "default-deny".to_owned()),
                ("tier", String::new()),
                ("rule", String::new()),
            ])
            .get();
        assert_eq!(counter, 10_001);
    }

    /// A tier policy's denial: logged with its tier, priority and rule
    /// name, counted against that one policy and rule under its kind.
    #[test]
    fn a_tier_denial_names_tier_policy_priority_and_rule() {
        let yaml = format!(
            "{CLUSTER}---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {{name: guard}}\nspec:\n  tier: Admin\n  priority: 7\n  subject: {{namespaces: {{}}}}\n  ingress:\n  - {{name: no-web, action: Deny, from: [{{pods: {{podSelector: {{matchLabels: {{app: web}}}}}}}}]}}\n"
        );
        let cluster = manifests::load_str(Path::new("test.yaml"), &yaml)
            .expect("manifests")
            .cluster;
        let tables = compile(&cluster, &CompileOptions::default()).tables;
        let (web, db) = (
            u32::from_be_bytes([10, 0, 0, 1]),
            u32::from_be_bytes([10, 0, 0, 2]),
        );
        let verdict = tables.classify_v4(web, db, IpProtocol::TCP, 5432);
        assert!(
            matches!(verdict.ingress, Decision::TierDenied(_)),
            "{verdict:?}"
        );
        let denial = Denial {
            generation: tables.generation(),
            flow: FlowKey {
                src: u128::from(web),
                dst: u128::from(db),
                src_port: 40_000,
                dst_port: 5432,
                protocol: 6,
                ipv6: false,
            },
            verdict,
            ..Denial::of_frame(LinkType::Ethernet, &[0; 60], 60)
        };
        let line = describe(&tables, &denial, None);
        assert_eq!(line["denied_by"], "ingress");
        assert!(line["ingress"].get("passed_by").is_none());
        assert_eq!(
            line["ingress"],
            json!({
                "verdict": "deny",
                "tier": "admin",
                "policy": "ClusterNetworkPolicy/guard",
                "priority": 7,
                "rule": 0,
                "rule_name": "no-web",
            })
        );
        let publisher = Publisher::new(tables, podfence_datapath::ServiceTable::empty());
        let metrics = ControlMetrics::default();
        let mut report =
            Report::new(publisher, metrics.clone(), DenialOptions::default()).expect("report");
        let queue = DenialQueue::new(16);
        queue.push(denial);
        report.drain(&queue);
        assert_eq!(
            metrics.denial_totals(),
            vec![(("ingress".into(), "ClusterNetworkPolicy/guard".into()), 1)]
        );
        let by_rule = vec![
            ("direction", "ingress".to_owned()),
            ("kind", "ClusterNetworkPolicy".to_owned()),
            ("namespace", String::new()),
            ("policy", "guard".to_owned()),
            ("tier", "admin".to_owned()),
            ("rule", "no-web".to_owned()),
        ];
        assert_eq!(metrics.denials.get_or_create(&by_rule).get(), 1);

        // Passed on to NetworkPolicy, which denies: the chain is logged.
        let yaml = yaml.replace("action: Deny", "action: Pass");
        let cluster = manifests::load_str(Path::new("test.yaml"), &yaml)
            .expect("manifests")
            .cluster;
        let tables = compile(&cluster, &CompileOptions::default()).tables;
        let verdict = tables.classify_v4(web, db, IpProtocol::TCP, 5432);
        let line = describe(&tables, &Denial { verdict, ..denial }, None);
        assert_eq!(
            line["ingress"]["isolated_by"],
            json!(["shop/db-only-api", "shop/default-deny"])
        );
        assert_eq!(
            line["ingress"]["passed_by"],
            json!({"tier": "admin", "policy": "ClusterNetworkPolicy/guard", "priority": 7,
                   "rule": 0, "rule_name": "no-web"})
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_795_000_000_123_456_789),
            "2026-11-18T11:06:40.123456789Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
