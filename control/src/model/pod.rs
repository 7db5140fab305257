//! Pods: identity, placement, addresses and named ports.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;

use super::{Labels, ModelError, ObjectKey, Protocol, object_ref};

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    /// The port's name (`containers[].ports[].name`).
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number.
    pub port: u16,
}

/// A pod's lifecycle phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodPhase {
    /// Not yet running (or phase not reported).
    Pending,
    /// Running.
    Running,
    /// All containers terminated successfully; the pod is finished.
    Succeeded,
    /// All containers terminated, some failed; the pod is finished.
    Failed,
    /// The node stopped reporting.
    Unknown,
}

impl PodPhase {
    fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Running") => Self::Running,
            Some("Succeeded") => Self::Succeeded,
            Some("Failed") => Self::Failed,
            Some("Unknown") => Self::Unknown,
            _ => Self::Pending,
        }
    }
}

/// A pod: identity, placement, addresses and named ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// `spec.nodeName`, if scheduled.
    pub node: Option<String>,
    /// `spec.hostNetwork`: the pod shares its node's addresses.
    pub host_network: bool,
    /// `status.phase`.
    pub phase: PodPhase,
    /// `status.podIPs` (or `status.podIP`), primary first.
    pub ips: Vec<IpAddr>,
    /// `status.hostIPs` (or `status.hostIP`).
    pub host_ips: Vec<IpAddr>,
    /// Named ports of the pod's containers.
    pub named_ports: Vec<NamedPort>,
}

impl Pod {
    /// Whether policy applies to this pod's own addresses: it has addresses of
    /// its own (not the node's) and has not finished. Finished pods' addresses
    /// may already belong to a new pod, so upstream enforcers ignore them.
    #[must_use]
    pub fn is_policy_endpoint(&self) -> bool {
        !self.host_network
            && !self.ips.is_empty()
            && !matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }

    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// Reduces a k8s-openapi Pod. A missing namespace is `default`, as
    /// `kubectl apply` would make it.
    pub fn from_resource(pod: &core::Pod) -> Result<Self, ModelError> {
        let object = object_ref("Pod", &pod.metadata);
        let err = |field: String, message: String| ModelError {
            object: object.clone(),
            field,
            message,
        };
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut named_ports = Vec::new();
        for (ci, c) in spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            for (pi, p) in c.ports.as_deref().unwrap_or_default().iter().enumerate() {
                let field = |f: &str| format!("spec.containers[{ci}].ports[{pi}].{f}");
                let protocol = match p.protocol.as_deref() {
                    None => Protocol::Tcp,
                    Some(s) => Protocol::parse(s, false).ok_or_else(|| {
                        err(field("protocol"), format!("unsupported protocol '{s}'"))
                    })?,
                };
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| {
                        err(
                            field("containerPort"),
                            format!("{} is not a port number (1-65535)", p.container_port),
                        )
                    })?;
                if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                    named_ports.push(NamedPort {
                        name: name.to_owned(),
                        protocol,
                        port,
                    });
                }
            }
        }
        let pod_ips = status
            .and_then(|s| s.pod_ips.as_deref())
            .unwrap_or_default();
        let pod_ips = pod_ips.iter().map(|p| p.ip.as_str());
        let ips = parse_ips(
            pod_ips,
            status.and_then(|s| s.pod_ip.as_deref()),
            "status.podIP",
        )
        .map_err(|(f, m)| err(f, m))?;
        let host_ips = status
            .and_then(|s| s.host_ips.as_deref())
            .unwrap_or_default();
        let host_ips = host_ips.iter().map(|p| p.ip.as_str());
        let host_ips = parse_ips(
            host_ips,
            status.and_then(|s| s.host_ip.as_deref()),
            "status.hostIP",
        )
        .map_err(|(f, m)| err(f, m))?;
        if object.key.name.is_empty() {
            return Err(err("metadata.name".into(), "a pod needs a name".into()));
        }
        Ok(Self {
            namespace: object.key.namespace.clone(),
            name: object.key.name.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            node: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            phase: PodPhase::parse(status.and_then(|s| s.phase.as_deref())),
            ips,
            host_ips,
            named_ports,
        })
    }
}

fn parse_ip(s: &str, field: impl FnOnce() -> String) -> Result<IpAddr, (String, String)> {
    s.parse()
        .map_err(|_| (field(), format!("'{s}' is not an IP address")))
}

/// The addresses of a `status.<x>IPs` list, or of `status.<x>IP` when the
/// list is empty (older API servers fill only the single field).
fn parse_ips<'a>(
    list: impl ExactSizeIterator<Item = &'a str>,
    single: Option<&str>,
    field: &str,
) -> Result<Vec<IpAddr>, (String, String)> {
    if list.len() > 0 {
        return list
            .enumerate()
            .map(|(i, ip)| parse_ip(ip, || format!("{field}s[{i}].ip")))
            .collect();
    }
    single
        .filter(|s| !s.is_empty())
        .map(|s| parse_ip(s, || field.to_owned()))
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_take_ips_ports_and_phase() {
        let pod: core::Pod = serde_saphyr::from_str(
            "metadata: {name: a, namespace: x, labels: {app: web}}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    ports:\n    - {name: http, containerPort: 8080}\n    - {containerPort: 53, protocol: UDP}\nstatus:\n  phase: Running\n  podIP: 10.0.0.1\n  podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]\n",
        )
        .unwrap();
        let p = Pod::from_resource(&pod).unwrap();
        assert_eq!(p.ips.len(), 2);
        assert_eq!(
            p.named_ports,
            vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080
            }]
        );
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert!(p.is_policy_endpoint());
        let bad: core::Pod =
            serde_saphyr::from_str("metadata: {name: a}\nstatus: {podIP: 10.0.0.300}\n").unwrap();
        let e = Pod::from_resource(&bad).unwrap_err();
        assert_eq!(
            (e.object.to_string().as_str(), e.field.as_str()),
            ("Pod default/a", "status.podIP")
        );
    }
}
