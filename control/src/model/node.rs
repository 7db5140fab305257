//! Nodes: a name, labels and addresses, which a ClusterNetworkPolicy's
//! `nodes` peers match.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;

use super::{Labels, ModelError, ObjectKey, ObjectRef};

/// A node: its name, labels and IP addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// The IP addresses of `status.addresses` (`InternalIP`, `ExternalIP`),
    /// sorted, without duplicates; host names are not addresses.
    pub addresses: Vec<IpAddr>,
}

impl Node {
    /// Reduces a k8s-openapi Node.
    pub fn from_resource(node: &core::Node) -> Result<Self, ModelError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let object = ObjectRef {
            kind: "Node".into(),
            key: ObjectKey::cluster_scoped(name.clone()),
        };
        if name.is_empty() {
            return Err(ModelError {
                object,
                field: "metadata.name".into(),
                message: "a node needs a name".into(),
            });
        }
        let mut addresses = Vec::new();
        let listed = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for (i, a) in listed.into_iter().flatten().enumerate() {
            if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
                continue;
            }
            let ip: IpAddr = a.address.parse().map_err(|_| ModelError {
                object: object.clone(),
                field: format!("status.addresses[{i}].address"),
                message: format!("'{}' is not an IP address", a.address),
            })?;
            addresses.push(ip);
        }
        addresses.sort_unstable();
        addresses.dedup();
        Ok(Self {
            name,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            addresses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_ip_addresses_and_labels() {
        let n: core::Node = serde_saphyr::from_str(
            "metadata: {name: w, labels: {kubernetes.io/os: linux}}\nstatus:\n  addresses:\n  - {type: InternalIP, address: 172.18.0.4}\n  - {type: Hostname, address: w}\n  - {type: ExternalIP, address: 'fd00::4'}\n",
        )
        .unwrap();
        let n = Node::from_resource(&n).unwrap();
        assert_eq!(n.labels["kubernetes.io/os"], "linux");
        let want: Vec<IpAddr> = vec!["172.18.0.4".parse().unwrap(), "fd00::4".parse().unwrap()];
        assert_eq!(n.addresses, want);
        let bad: core::Node = serde_saphyr::from_str(
            "metadata: {name: w}\nstatus: {addresses: [{type: InternalIP, address: nope}]}\n",
        )
        .unwrap();
        let e = Node::from_resource(&bad).unwrap_err();
        assert_eq!(e.field, "status.addresses[0].address");
        assert_eq!(e.object.to_string(), "Node w");
    }
}
