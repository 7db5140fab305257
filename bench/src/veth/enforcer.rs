//! What enforces on a path while it is measured (nothing, the live agent,
//! nftables rules, kube-proxy's rules besides): set up per path and round,
//! and removed after. Shared by `veth` and `tcp`.

use podfence_control::agent::AgentOptions;
use podfence_control::agent::plumbing::PAIR_ALIAS;
use podfence_control::compile::Locality;
use podfence_datapath::Tables;

use super::cluster::{self, BENCH_NODE, BenchCluster};
use super::{PathKind, RulesetShape, VethError};
use crate::kube_proxy::{self, KubeProxyConfig};
use crate::live::LiveAgent;
use crate::nft::{self, NftStyle};
use crate::testbed;

/// What enforces while a case is measured.
enum Enforcer {
    Nothing,
    Agent(LiveAgent),
    Nft(nft::Installed),
}

/// What runs while a case is measured: the enforcer, and kube-proxy's
/// rules for the paths through a Service.
pub struct Active {
    enforcer: Enforcer,
    kube_proxy: Option<KubeProxyTables>,
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.enforcer {
            Enforcer::Nothing => "nothing",
            Enforcer::Agent(_) => "agent",
            Enforcer::Nft(_) => "nftables",
        };
        f.debug_struct("Active")
            .field("enforcer", &what)
            .field("kube_proxy", &self.kube_proxy.is_some())
            .finish()
    }
}

impl From<Enforcer> for Active {
    fn from(enforcer: Enforcer) -> Self {
        Self {
            enforcer,
            kube_proxy: None,
        }
    }
}

impl Active {
    /// The live agent, on the podfence paths.
    #[must_use]
    pub fn agent(&self) -> Option<&LiveAgent> {
        match &self.enforcer {
            Enforcer::Agent(a) => Some(a),
            _ => None,
        }
    }

    /// Packets the enforcer dropped by policy so far.
    pub fn policy_dropped(&self) -> Result<u64, VethError> {
        match &self.enforcer {
            Enforcer::Nothing => Ok(0),
            Enforcer::Agent(a) => Ok(a.status()?.counters.denied),
            Enforcer::Nft(n) => n.denied().map_err(VethError::Other),
        }
    }

    /// Stops the agent or removes the rules.
    pub fn stop(self) -> Result<(), VethError> {
        let stopped = match self.enforcer {
            Enforcer::Nothing => Ok(()),
            Enforcer::Agent(a) => a.stop().map(|_| ()).map_err(VethError::from),
            Enforcer::Nft(n) => n.remove().map_err(VethError::Other),
        };
        let removed = self.kube_proxy.map_or(Ok(()), KubeProxyTables::remove);
        stopped?;
        removed
    }
}

/// kube-proxy's tables installed in a namespace; deleted on drop.
struct KubeProxyTables {
    netns: String,
    families: Vec<kube_proxy::Family>,
}

impl KubeProxyTables {
    /// kube-proxy's rules for `cluster`'s Services on the benchmark's node,
    /// installed in `netns`.
    fn install(netns: &str, cluster: &podfence_control::index::Cluster) -> Result<Self, VethError> {
        let prefix = |s: &str| {
            s.parse::<podfence_datapath::Prefix>()
                .map_err(|e| VethError::Other(format!("{s}: {e}")))
        };
        let config = KubeProxyConfig {
            locality: Locality::Node(BENCH_NODE.into()),
            cluster_cidrs: vec![prefix(cluster::CLUSTER_CIDR)?],
            service_cidrs: vec![prefix(cluster::SERVICE_CIDR)?],
            node_port_addresses: Vec::new(),
            families: vec![kube_proxy::Family::V4],
        };
        let rules = kube_proxy::rules(cluster, &config);
        kube_proxy::install(netns, &rules).map_err(VethError::Other)?;
        Ok(Self {
            netns: netns.to_owned(),
            families: rules.families,
        })
    }

    /// Removes the tables.
    fn remove(mut self) -> Result<(), VethError> {
        let families = std::mem::take(&mut self.families);
        kube_proxy::remove(&self.netns, &families).map_err(VethError::Other)
    }
}

impl Drop for KubeProxyTables {
    fn drop(&mut self) {
        if !self.families.is_empty() {
            let _ = kube_proxy::remove(&self.netns, &self.families);
        }
    }
}

/// The host-port pair in `node`, made beforehand with `queues` queues (the
/// agent makes it with one); the agent takes it over by its alias and
/// removes it when it stops.
pub fn host_pair(node: &str, queues: u32) -> Result<(), VethError> {
    if queues <= 1 {
        return Ok(());
    }
    testbed::add_veth_pair(node, "pf-host", "pf-dp", None, queues)?;
    testbed::ip(node, &["link", "set", "pf-host", "alias", PAIR_ALIAS])?;
    Ok(())
}

/// Sets up `path` in namespace `node` for cluster `c` (compiled: `tables`):
/// starts the agent (after `before_agent`), or installs the nftables rules
/// (`install` numbers the ruleset), or nothing. For nftables, also the
/// ruleset's shape.
pub fn start(
    path: PathKind,
    node: &str,
    c: &BenchCluster,
    tables: &Tables,
    agent: AgentOptions,
    install: u32,
    before_agent: impl FnOnce() -> Result<(), VethError>,
) -> Result<(Active, Option<RulesetShape>), VethError> {
    Ok(match path {
        PathKind::Direct | PathKind::Kernel => (Enforcer::Nothing.into(), None),
        PathKind::Podfence | PathKind::ForwardAll | PathKind::PodfenceSvc => {
            // kube-proxy's rules first, as on a node where it runs.
            let kube_proxy = if path == PathKind::PodfenceSvc {
                Some(KubeProxyTables::install(node, &c.full)?)
            } else {
                None
            };
            before_agent()?;
            let cluster = if path == PathKind::ForwardAll {
                &c.open
            } else {
                &c.full
            };
            let agent = LiveAgent::start(node, cluster, agent)?;
            let active = Active {
                enforcer: Enforcer::Agent(agent),
                kube_proxy,
            };
            (active, None)
        }
        PathKind::Nftables | PathKind::NftablesEst | PathKind::KubeProxy => {
            // No connection of an earlier path (translated or not)
            // may meet this one's in the kernel's table.
            testbed::flush_conntrack(node)
                .map_err(|e| VethError::Other(format!("flushing conntrack: {e}")))?;
            let style = if path == PathKind::NftablesEst {
                NftStyle::EstablishedOnly
            } else {
                NftStyle::VerdictCache
            };
            let rules = nft::ruleset(
                &c.full,
                tables,
                &Locality::Node(BENCH_NODE.into()),
                style,
                Some(c.generator_ip),
                install,
            );
            let kube_proxy = if path == PathKind::KubeProxy {
                Some(KubeProxyTables::install(node, &c.full)?)
            } else {
                None
            };
            let installed = nft::Installed::install(node, &rules).map_err(VethError::Other)?;
            let shape = RulesetShape {
                chains: rules.chains.clone(),
                sets: rules.sets,
                elements: rules.elements,
                deep: rules.deep.clone(),
            };
            let active = Active {
                enforcer: Enforcer::Nft(installed),
                kube_proxy,
            };
            (active, Some(shape))
        }
    })
}
