//! Words for a changed flow: the pods behind its addresses and, on each
//! side, why each direction allowed or denied it.

use std::net::IpAddr;

use podfence_datapath::tables::{Decision, Direction, Tables, Verdict};
use podfence_datapath::wire::ip_proto;
use rustc_hash::FxHashMap;

use super::ChangedFlow;
use crate::index::Cluster;
use crate::model::{ObjectKey, PodPhase, Protocol};
use crate::probe::{Endpoint, Explanation, Probe};

/// The pods behind addresses, for naming the ends of a flow.
#[derive(Debug, Default)]
pub struct PodNames(FxHashMap<IpAddr, ObjectKey>);

impl PodNames {
    /// The addresses of the pods of `clusters` that use addresses of their
    /// own (not host-network pods, not finished pods); the first cluster
    /// that names an address wins.
    #[must_use]
    pub fn new(clusters: &[&Cluster]) -> Self {
        let mut map = FxHashMap::default();
        for cluster in clusters {
            for pod in cluster.pods.values() {
                if pod.host_network || matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed) {
                    continue;
                }
                for ip in &pod.ips {
                    map.entry(*ip).or_insert_with(|| pod.key());
                }
            }
        }
        Self(map)
    }

    /// The pod at `addr`, if any, as `namespace/name`.
    #[must_use]
    pub fn pod(&self, addr: IpAddr) -> Option<String> {
        self.0.get(&addr).map(ToString::to_string)
    }

    /// `addr` as a probe endpoint: its pod, or `ext:IP`.
    #[must_use]
    pub fn endpoint(&self, addr: IpAddr) -> Endpoint {
        match self.0.get(&addr) {
            Some(key) => Endpoint::Pod {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            },
            None => Endpoint::External(addr),
        }
    }

    /// `addr` for a reader: `namespace/pod (IP)` or the bare address.
    #[must_use]
    pub fn describe(&self, addr: IpAddr) -> String {
        match self.pod(addr) {
            Some(p) => format!("{p} ({addr})"),
            None => addr.to_string(),
        }
    }
}

impl ChangedFlow {
    /// The flow for a reader: `TCP x/a (10.244.1.1) → y/b (10.244.2.2) port 80`.
    #[must_use]
    pub fn describe(&self, names: &PodNames) -> String {
        let proto = podfence_datapath::IpProtocol(self.protocol);
        let (src, dst) = (names.describe(self.src), names.describe(self.dst));
        match self.protocol {
            ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => {
                format!("{proto} {src} → {dst} port {}", self.port)
            }
            _ => format!("{proto} {src} → {dst}"),
        }
    }

    /// Why one side (current or candidate) decides as it does: one line per
    /// direction (and one per Pass rule that handed a direction on), worded
    /// as `podfence explain` words it.
    #[must_use]
    pub fn explain(
        &self,
        names: &PodNames,
        cluster: &Cluster,
        tables: &Tables,
        verdict: Option<&Verdict>,
    ) -> Vec<String> {
        let Some(verdict) = verdict else {
            return vec!["allow — an ICMP error about a connection that is allowed".to_owned()];
        };
        let protocol = match self.protocol {
            ip_proto::TCP => Some(Protocol::Tcp),
            ip_proto::UDP => Some(Protocol::Udp),
            ip_proto::SCTP => Some(Protocol::Sctp),
            _ => None,
        };
        let Some(protocol) = protocol else {
            let endpoints = (names.endpoint(self.src), names.endpoint(self.dst));
            let what = podfence_datapath::IpProtocol(self.protocol);
            return [
                (Direction::Egress, verdict.egress),
                (Direction::Ingress, verdict.ingress),
            ]
            .into_iter()
            .map(|(direction, d)| {
                brief_decision(tables, direction, d, what, (&endpoints.0, &endpoints.1))
            })
            .collect();
        };
        let probe = Probe {
            src: names.endpoint(self.src),
            dst: names.endpoint(self.dst),
            protocol,
            port: self.port,
        };
        let text = Explanation {
            probe: &probe,
            addresses: (self.src, self.dst),
            verdict: *verdict,
            tables,
            cluster,
        }
        .to_string();
        // The verdict line, each direction's lines (a Pass rule that
        // handed a side on has one of its own), the generation.
        let lines: Vec<&str> = text.lines().collect();
        lines[1..lines.len().saturating_sub(1).max(1)]
            .iter()
            .map(|l| l.trim().to_owned())
            .collect()
    }
}

/// One direction's decision in a line, for protocols `explain` does not
/// take (ICMP and others), worded as `explain` words it.
fn brief_decision(
    tables: &Tables,
    direction: Direction,
    d: Decision,
    protocol: podfence_datapath::IpProtocol,
    endpoints: (&Endpoint, &Endpoint),
) -> String {
    let (side, endpoint) = match direction {
        Direction::Egress => ("source", endpoints.0),
        Direction::Ingress => ("destination", endpoints.1),
    };
    match d {
        Decision::NotEnforced => {
            format!("{direction}: allow — {side} {endpoint} is not a pod that policy applies to")
        }
        Decision::NotIsolated => format!(
            "{direction}: allow — no NetworkPolicy selects {side} {endpoint} for {direction}"
        ),
        Decision::SelfTraffic => format!("{direction}: allow — a pod may always reach itself"),
        Decision::OwnNode => {
            format!("{direction}: allow — the node a pod runs on may always connect to it")
        }
        Decision::Allowed { policy, rule } => format!(
            "{direction}: allow — {side} {endpoint} is allowed by {} {direction} rule {rule}",
            tables.policy(policy)
        ),
        Decision::TierAccepted(r) => format!(
            "{direction}: allow — {side} {endpoint}: accepted by {} tier {} {direction} rule {} \"{}\"",
            r.tier,
            tables.policy(r.policy),
            r.rule,
            tables.tier_rule_name(r, direction)
        ),
        Decision::TierDenied(r) => format!(
            "{direction}: deny — {side} {endpoint}: denied by {} tier {} {direction} rule {} \"{}\"",
            r.tier,
            tables.policy(r.policy),
            r.rule,
            tables.tier_rule_name(r, direction)
        ),
        Decision::TierWouldDeny(r) => format!(
            "{direction}: allow (audit) — {side} {endpoint}: denied by {} tier {} {direction} rule {} \"{}\", \
             but it is in audit mode: reported, not dropped",
            r.tier,
            tables.policy(r.policy),
            r.rule,
            tables.tier_rule_name(r, direction)
        ),
        Decision::Denied { group } | Decision::WouldDeny { group } => {
            let names: Vec<String> = tables
                .group_policy_names(group)
                .map(ToString::to_string)
                .collect();
            let (verdict, audit) = if d.is_allowed() {
                (
                    "allow (audit)",
                    ", but it is in audit mode: reported, not dropped",
                )
            } else {
                ("deny", "")
            };
            format!(
                "{direction}: {verdict} — {side} {endpoint} is isolated for {direction} by {}, \
                 and no {direction} rule of {} allows {} from {} to {}{audit}",
                names.join(", "),
                if names.len() == 1 { "it" } else { "them" },
                protocol,
                endpoints.0,
                endpoints.1,
            )
        }
    }
}
