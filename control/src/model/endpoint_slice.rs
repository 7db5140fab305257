//! discovery.k8s.io/v1 EndpointSlices: a Service's backends, with the
//! conditions and topology a proxy chooses among them by.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1 as discovery;

use super::network_policy::port_number;
use super::service::validate_dns_label;
use super::{ModelError, ObjectKey, Protocol, object_ref};

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `addressType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressType {
    /// IPv4 addresses.
    Ipv4,
    /// IPv6 addresses.
    Ipv6,
    /// Domain names (deprecated; no proxy uses them): such a slice keeps no
    /// endpoints.
    Fqdn,
}

/// One endpoint (`endpoints[]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `addresses[0]`: the API defines no meaning for further addresses
    /// and kube-proxy ignores them (they are validated, not kept).
    pub address: IpAddr,
    /// `conditions.ready` (true when absent): serving and not terminating,
    /// or whatever the slice's manager says.
    pub ready: bool,
    /// `conditions.serving` (true when absent): able to take traffic, even
    /// while terminating.
    pub serving: bool,
    /// `conditions.terminating` (false when absent).
    pub terminating: bool,
    /// `nodeName`: the node hosting it (for internalTrafficPolicy Local).
    pub node: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `hints.forZones[].name`, sorted and deduplicated (topology aware
    /// routing; empty: no hint).
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`, sorted and deduplicated (empty: no hint).
    pub node_hints: Vec<String>,
}

/// One port (`ports[]`) of every endpoint of the slice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointPort {
    /// `name` (empty when absent): the Service port of the same name.
    pub name: String,
    /// `protocol` (TCP when absent).
    pub protocol: Protocol,
    /// `port`; `None`: all ports.
    pub port: Option<u16>,
}

/// A discovery.k8s.io/v1 EndpointSlice after defaulting and validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointSlice {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The owning Service's name (label [`SERVICE_NAME_LABEL`]); a slice
    /// without it belongs to no Service.
    pub service: Option<String>,
    /// `addressType`.
    pub address_type: AddressType,
    /// `endpoints`, in order (none for an FQDN slice).
    pub endpoints: Vec<Endpoint>,
    /// `ports`, in order.
    pub ports: Vec<EndpointPort>,
}

impl EndpointSlice {
    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// Whether a proxy translates to its endpoints: an IPv4 or IPv6 slice
    /// of a Service.
    #[must_use]
    pub fn is_proxied(&self) -> bool {
        self.address_type != AddressType::Fqdn && self.service.is_some()
    }

    /// Reduces a k8s-openapi EndpointSlice, applying the API's defaulting
    /// of conditions (ready and serving when absent, not terminating) and
    /// of ports (TCP; no port: all ports) and its validation of addresses
    /// and ports.
    pub fn from_resource(slice: &discovery::EndpointSlice) -> Result<Self, ModelError> {
        let object = object_ref("EndpointSlice", &slice.metadata);
        let err = |field: String, message: String| ModelError {
            object: object.clone(),
            field,
            message,
        };
        if object.key.name.is_empty() {
            return Err(err(
                "metadata.name".into(),
                "an endpoint slice needs a name".into(),
            ));
        }
        let address_type = match slice.address_type.as_str() {
            "IPv4" => AddressType::Ipv4,
            "IPv6" => AddressType::Ipv6,
            "FQDN" => AddressType::Fqdn,
            other => {
                return Err(err(
                    "addressType".into(),
                    format!("'{other}' is not IPv4, IPv6 or FQDN"),
                ));
            }
        };
        let mut endpoints = Vec::new();
        for (i, e) in slice.endpoints.iter().enumerate() {
            if let Some(endpoint) = convert_endpoint(e, address_type, &format!("endpoints[{i}]"))
                .map_err(|(f, m)| err(f, m))?
            {
                endpoints.push(endpoint);
            }
        }
        let ports = convert_ports(slice.ports.as_deref().unwrap_or_default())
            .map_err(|(f, m)| err(f, m))?;
        Ok(Self {
            namespace: object.key.namespace.clone(),
            name: object.key.name.clone(),
            service: slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .filter(|s| !s.is_empty())
                .cloned(),
            address_type,
            endpoints,
            ports,
        })
    }
}

type FieldError = (String, String);

/// One endpoint at `field`; `None` for an FQDN slice's (validated, not
/// kept).
fn convert_endpoint(
    e: &discovery::Endpoint,
    address_type: AddressType,
    field: &str,
) -> Result<Option<Endpoint>, FieldError> {
    if e.addresses.is_empty() || e.addresses.len() > 100 {
        return Err((
            format!("{field}.addresses"),
            "must hold 1-100 addresses".into(),
        ));
    }
    let family = match address_type {
        AddressType::Ipv4 => "IPv4",
        AddressType::Ipv6 => "IPv6",
        AddressType::Fqdn => return Ok(None),
    };
    let mut addresses = Vec::with_capacity(e.addresses.len());
    for (j, a) in e.addresses.iter().enumerate() {
        let ip = a
            .parse::<IpAddr>()
            .ok()
            .filter(|ip| ip.is_ipv4() == (address_type == AddressType::Ipv4))
            .ok_or_else(|| {
                (
                    format!("{field}.addresses[{j}]"),
                    format!("'{a}' is not an {family} address"),
                )
            })?;
        addresses.push(ip);
    }
    let conditions = e.conditions.as_ref();
    let hints = e.hints.as_ref();
    let names = |names: Option<Vec<&String>>| {
        let set: BTreeSet<String> = names.into_iter().flatten().cloned().collect();
        set.into_iter().collect::<Vec<_>>()
    };
    Ok(Some(Endpoint {
        address: addresses[0],
        ready: conditions.and_then(|c| c.ready).unwrap_or(true),
        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        node: e.node_name.clone().filter(|n| !n.is_empty()),
        zone: e.zone.clone().filter(|z| !z.is_empty()),
        zone_hints: names(
            hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| &z.name).collect()),
        ),
        node_hints: names(
            hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|n| n.iter().map(|n| &n.name).collect()),
        ),
    }))
}

fn convert_ports(given: &[discovery::EndpointPort]) -> Result<Vec<EndpointPort>, FieldError> {
    let mut ports = Vec::with_capacity(given.len());
    let mut names = BTreeSet::new();
    for (i, p) in given.iter().enumerate() {
        let at = |f: &str| format!("ports[{i}].{f}");
        let name = p.name.clone().unwrap_or_default();
        if !name.is_empty() {
            validate_dns_label(&name).map_err(|m| (at("name"), m))?;
        }
        if !names.insert(name.clone()) {
            return Err((at("name"), format!("'{name}' is used by another port")));
        }
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => Protocol::parse(s, false).ok_or_else(|| {
                (
                    at("protocol"),
                    format!("'{s}' is not one of TCP, UDP, SCTP"),
                )
            })?,
        };
        let port = p
            .port
            .map(|n| {
                port_number(n)
                    .ok_or_else(|| (at("port"), format!("{n} is not a port number (1-65535)")))
            })
            .transpose()?;
        ports.push(EndpointPort {
            name,
            protocol,
            port,
        });
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(yaml: &str) -> Result<EndpointSlice, ModelError> {
        let s: discovery::EndpointSlice = serde_saphyr::from_str(yaml).unwrap();
        EndpointSlice::from_resource(&s)
    }

    const WEB: &str = "metadata: {name: web-abc, namespace: x, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\n";

    #[test]
    fn conditions_and_ports_default() {
        let s = slice(&format!(
            "{WEB}endpoints:\n- addresses: [10.244.1.5, 10.244.1.6]\n  nodeName: n1\n  zone: z1\n  hints: {{forZones: [{{name: z2}}, {{name: z1}}, {{name: z2}}], forNodes: [{{name: n1}}]}}\n- addresses: [10.244.2.5]\n  conditions: {{ready: false, terminating: true}}\nports:\n- {{name: http, port: 8080}}\n- {{name: dns, protocol: UDP}}\n"
        ))
        .unwrap();
        assert_eq!(s.service.as_deref(), Some("web"));
        assert!(s.is_proxied());
        assert_eq!(s.address_type, AddressType::Ipv4);
        let e = &s.endpoints[0];
        assert_eq!(e.address, "10.244.1.5".parse::<IpAddr>().unwrap());
        assert!(e.ready && e.serving && !e.terminating);
        assert_eq!(e.node.as_deref(), Some("n1"));
        assert_eq!(e.zone.as_deref(), Some("z1"));
        assert_eq!(e.zone_hints, vec!["z1".to_owned(), "z2".to_owned()]);
        assert_eq!(e.node_hints, vec!["n1".to_owned()]);
        let e = &s.endpoints[1];
        assert!(!e.ready && e.serving && e.terminating);
        assert!(e.node.is_none() && e.zone_hints.is_empty());
        assert_eq!(
            s.ports,
            vec![
                EndpointPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: Some(8080)
                },
                EndpointPort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: None
                },
            ]
        );
    }

    #[test]
    fn fqdn_and_unowned_slices_are_not_proxied() {
        let s = slice(
            "metadata: {name: f, labels: {kubernetes.io/service-name: web}}\naddressType: FQDN\nendpoints: [{addresses: [example.com]}]\n",
        )
        .unwrap();
        assert_eq!(s.address_type, AddressType::Fqdn);
        assert!(s.endpoints.is_empty() && !s.is_proxied());
        let s = slice(
            "metadata: {name: u}\naddressType: IPv6\nendpoints: [{addresses: ['fd00::1']}]\n",
        )
        .unwrap();
        assert!(s.service.is_none() && !s.is_proxied());
        assert_eq!(s.endpoints.len(), 1);
    }

    #[test]
    fn what_the_model_does_not_keep_compares_equal() {
        let a = slice(&format!(
            "{WEB}endpoints: [{{addresses: [10.244.1.5], conditions: {{ready: true}}}}]\nports: [{{port: 80}}]\n"
        ))
        .unwrap();
        let b = slice(
            "metadata: {name: web-abc, namespace: x, resourceVersion: '9', labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: x}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.1.5], hostname: h, targetRef: {kind: Pod, name: p}}]\nports: [{port: 80, protocol: TCP, appProtocol: http}]\n",
        )
        .unwrap();
        assert_eq!(a, b);
        let not_ready = slice(&format!(
            "{WEB}endpoints: [{{addresses: [10.244.1.5], conditions: {{ready: false}}}}]\nports: [{{port: 80}}]\n"
        ))
        .unwrap();
        assert_ne!(a, not_ready);
    }

    #[test]
    fn invalid_slices_name_object_and_field() {
        let cases = [
            ("addressType: IPv5\nendpoints: []", "addressType"),
            (
                "addressType: IPv4\nendpoints: [{addresses: []}]",
                "endpoints[0].addresses",
            ),
            (
                "addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]",
                "endpoints[0].addresses[0]",
            ),
            (
                "addressType: IPv6\nendpoints: [{addresses: ['fd00::1', 10.0.0.1]}]",
                "endpoints[0].addresses[1]",
            ),
            (
                "addressType: IPv4\nendpoints: []\nports: [{port: 0}]",
                "ports[0].port",
            ),
            (
                "addressType: IPv4\nendpoints: []\nports: [{port: 1, protocol: ICMP}]",
                "ports[0].protocol",
            ),
            (
                "addressType: IPv4\nendpoints: []\nports: [{port: 1}, {port: 2}]",
                "ports[1].name",
            ),
            (
                "addressType: IPv4\nendpoints: []\nports: [{name: Http, port: 1}]",
                "ports[0].name",
            ),
        ];
        for (body, field) in cases {
            let e =
                slice(&format!("metadata: {{name: s, namespace: x}}\n{body}\n")).expect_err(body);
            assert_eq!(
                (e.object.to_string().as_str(), e.field.as_str()),
                ("EndpointSlice x/s", field),
                "{body}: {e}"
            );
        }
    }
}
