//! Manifests on disk: multi-document YAML, JSON, `kind: List` dumps and
//! directories of them.
//!
//! Every document is read, every error is collected (a file that cannot be
//! read, YAML that does not parse, an object the API would reject) and
//! reported with the file and the object's name, so that one run shows every
//! problem. Namespaces, Pods, Nodes, NetworkPolicies, Services,
//! EndpointSlices, ClusterNetworkPolicies (v1beta1, v1alpha2) and
//! AdminNetworkPolicies and BaselineAdminNetworkPolicies (v1alpha1) are
//! read; other kinds are counted and skipped.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use serde_json::Value;

use crate::index::Cluster;
use crate::model::{
    ClusterNetworkPolicy, EndpointSlice, ModelError, Namespace, NetworkPolicy, Node, ObjectKey,
    ObjectRef, Pod, PolicyApi, Service,
};

/// What a set of manifests holds.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// Namespaces, pods, policies, Services and EndpointSlices (later
    /// objects replace earlier ones of the same kind and name; namespaces
    /// that pods or policies reference without an object get an implicit
    /// entry).
    pub cluster: Cluster,
    /// Objects of other kinds, counted by `apiVersion kind`.
    pub skipped: BTreeMap<String, usize>,
    /// Files read.
    pub files: usize,
}

/// One problem in the manifests.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not valid YAML or JSON.
    #[error("{path}: not valid YAML/JSON: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A document is not a Kubernetes object.
    #[error("{path}: document {document}: {message}")]
    Document {
        /// The file.
        path: PathBuf,
        /// 1-based index of the document in the file.
        document: usize,
        /// What is wrong.
        message: String,
    },
    /// An object the API server would reject.
    #[error("{path}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The object, field and message.
        error: ModelError,
    },
}

/// All errors of one load.
#[derive(Debug)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// Reads files and directories (recursively: `*.yaml`, `*.yml`, `*.json`,
/// in name order). Fails with every error found.
pub fn load(paths: &[PathBuf]) -> Result<Manifests, LoadErrors> {
    let mut out = Manifests::default();
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, true, &mut files, &mut errors);
    }
    for file in files {
        out.files += 1;
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(&file, &text, &mut out, &mut errors),
            Err(source) => errors.push(LoadError::Io { path: file, source }),
        }
    }
    out.cluster.add_implicit_namespaces();
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(LoadErrors(errors))
    }
}

/// Reads manifests from a string, as if it were the file `origin`.
pub fn load_str(origin: &Path, text: &str) -> Result<Manifests, LoadErrors> {
    let mut out = Manifests {
        files: 1,
        ..Manifests::default()
    };
    let mut errors = Vec::new();
    load_text(origin, text, &mut out, &mut errors);
    out.cluster.add_implicit_namespaces();
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(LoadErrors(errors))
    }
}

fn collect_files(
    path: &Path,
    explicit: bool,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<LoadError>,
) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(source) => {
            return errors.push(LoadError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    if meta.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(e) => e,
            Err(source) => {
                return errors.push(LoadError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        children.sort();
        for child in children {
            collect_files(&child, false, files, errors);
        }
    } else if explicit
        || matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
    {
        files.push(path.to_owned());
    }
}

fn load_text(path: &Path, text: &str, out: &mut Manifests, errors: &mut Vec<LoadError>) {
    let is_json = path.extension().is_some_and(|e| e == "json");
    let docs: Result<Vec<Value>, String> = if is_json {
        serde_json::from_str::<Value>(text)
            .map(|v| vec![v])
            .map_err(|e| e.to_string())
    } else {
        // YAML 1.2 booleans only: a namespace called `y` or `on` stays a string.
        let options = serde_saphyr::options! { strict_booleans: true };
        serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|e| e.to_string())
    };
    match docs {
        Ok(docs) => {
            for (i, doc) in docs.into_iter().enumerate() {
                load_object(path, i + 1, doc, None, out, errors);
            }
        }
        Err(message) => errors.push(LoadError::Syntax {
            path: path.to_owned(),
            message,
        }),
    }
}

#[allow(clippy::too_many_lines, reason = "one arm per kind")]
fn load_object(
    path: &Path,
    document: usize,
    doc: Value,
    list_item_kind: Option<&str>,
    out: &mut Manifests,
    errors: &mut Vec<LoadError>,
) {
    let doc_error = |message: String| LoadError::Document {
        path: path.to_owned(),
        document,
        message,
    };
    let Value::Object(map) = &doc else {
        if !doc.is_null() {
            errors.push(doc_error(
                "not a Kubernetes object (expected a mapping)".into(),
            ));
        }
        return;
    };
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let kind = map
        .get("kind")
        .and_then(Value::as_str)
        .or(list_item_kind)
        .unwrap_or("")
        .to_owned();
    let (api_version, kind) = (api_version.as_str(), kind.as_str());
    if kind.is_empty() {
        errors.push(doc_error("object has no 'kind'".into()));
        return;
    }
    if let Some(item_kind) = kind.strip_suffix("List")
        && let Some(items) = map.get("items")
    {
        let Value::Array(items) = items else {
            errors.push(doc_error(format!("{kind}: 'items' is not a list")));
            return;
        };
        let item_kind = (!item_kind.is_empty()).then_some(item_kind);
        for item in items.clone() {
            load_object(path, document, item, item_kind, out, errors);
        }
        return;
    }
    let group = match (api_version.rsplit_once('/'), kind) {
        (Some((group, _)), _) => group,
        // No apiVersion (items of a typed list): the kind decides.
        (None, "NetworkPolicy") if api_version.is_empty() => "networking.k8s.io",
        (None, "EndpointSlice") if api_version.is_empty() => "discovery.k8s.io",
        (None, _) => "",
    };
    let result = match (group, kind) {
        ("", "Namespace") => decode::<core::Namespace>(doc, kind)
            .and_then(|n| Namespace::from_resource(&n))
            .map(|n| {
                out.cluster.apply(n);
            }),
        ("", "Pod") => decode::<core::Pod>(doc, kind)
            .and_then(|p| Pod::from_resource(&p))
            .map(|p| {
                out.cluster.apply(p);
            }),
        ("networking.k8s.io", "NetworkPolicy") => {
            served(api_version, "networking.k8s.io/v1", &doc, kind).and_then(|()| {
                decode::<net::NetworkPolicy>(doc, kind)
                    .and_then(|p| NetworkPolicy::from_resource(&p))
                    .map(|p| {
                        out.cluster.apply(p);
                    })
            })
        }
        ("", "Node") => decode::<core::Node>(doc, kind)
            .and_then(|n| Node::from_resource(&n))
            .map(|n| {
                out.cluster.apply(n);
            }),
        (
            "policy.networking.k8s.io",
            "ClusterNetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy",
        ) => cluster_policy(api_version, kind, &doc).map(|p| {
            out.cluster.apply(p);
        }),
        ("", "Service") => decode::<core::Service>(doc, kind)
            .and_then(|s| Service::from_resource(&s))
            .map(|s| {
                out.cluster.apply(s);
            }),
        ("discovery.k8s.io", "EndpointSlice") => {
            served(api_version, "discovery.k8s.io/v1", &doc, kind).and_then(|()| {
                decode::<discovery::EndpointSlice>(doc, kind)
                    .and_then(|s| EndpointSlice::from_resource(&s))
                    .map(|s| {
                        out.cluster.apply(s);
                    })
            })
        }
        _ => {
            let key = if api_version.is_empty() {
                kind.to_owned()
            } else {
                format!("{api_version} {kind}")
            };
            *out.skipped.entry(key).or_default() += 1;
            Ok(())
        }
    };
    if let Err(error) = result {
        errors.push(LoadError::Invalid {
            path: path.to_owned(),
            error,
        });
    }
}

/// A ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy
/// in a version podfence reads.
fn cluster_policy(
    api_version: &str,
    kind: &str,
    doc: &Value,
) -> Result<ClusterNetworkPolicy, ModelError> {
    match PolicyApi::parse(api_version, kind) {
        Some(api) => ClusterNetworkPolicy::from_value(api, doc),
        None => Err(ModelError {
            object: ObjectRef {
                kind: kind.to_owned(),
                key: ObjectKey::cluster_scoped(object_ref_of(doc, kind).key.name),
            },
            field: "apiVersion".into(),
            message: format!(
                "'{api_version}' is not read; use {}",
                if kind == "ClusterNetworkPolicy" {
                    "policy.networking.k8s.io/v1beta1 or v1alpha2"
                } else {
                    "policy.networking.k8s.io/v1alpha1"
                }
            ),
        }),
    }
}

/// `Ok` when `api_version` is `served` (or not given: the kind alone
/// decides); else an error naming the object and the version to use.
fn served(api_version: &str, served: &str, doc: &Value, kind: &str) -> Result<(), ModelError> {
    if api_version == served || api_version.is_empty() {
        Ok(())
    } else {
        Err(ModelError {
            object: object_ref_of(doc, kind),
            field: "apiVersion".into(),
            message: format!("'{api_version}' is not served; use {served}"),
        })
    }
}

fn object_ref_of(doc: &Value, kind: &str) -> ObjectRef {
    let meta = doc.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let name = field("name").unwrap_or_else(|| "<unnamed>".into());
    ObjectRef {
        kind: kind.to_owned(),
        key: if matches!(kind, "Namespace" | "Node") {
            ObjectKey::cluster_scoped(name)
        } else {
            ObjectKey::new(field("namespace").unwrap_or_else(|| "default".into()), name)
        },
    }
}

/// Deserializes into the k8s-openapi type, naming the failing field.
fn decode<T: serde::de::DeserializeOwned>(doc: Value, kind: &str) -> Result<T, ModelError> {
    let object = object_ref_of(&doc, kind);
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let field = e.path().to_string();
        ModelError {
            object,
            field,
            message: e.into_inner().to_string(),
        }
    })
}

impl Manifests {
    /// The note the commands print when objects of other kinds were
    /// skipped: `skipped objects of other kinds: apps/v1 Deployment ×2, ...`.
    #[must_use]
    pub fn skipped_note(&self) -> Option<String> {
        self.skipped_note_beyond(&Self::default())
    }

    /// [`skipped_note`](Self::skipped_note) counting only what `base` did
    /// not skip as well (a candidate state's extras over the current one).
    #[must_use]
    pub fn skipped_note_beyond(&self, base: &Self) -> Option<String> {
        let kinds: Vec<String> = self
            .skipped
            .iter()
            .filter_map(|(kind, n)| {
                let extra = n.saturating_sub(base.skipped.get(kind).copied().unwrap_or(0));
                (extra > 0).then(|| format!("{kind} ×{extra}"))
            })
            .collect();
        (!kinds.is_empty()).then(|| format!("skipped objects of other kinds: {}", kinds.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_one(text: &str) -> Result<Manifests, LoadErrors> {
        load_str(Path::new("test.yaml"), text)
    }

    #[test]
    fn reads_multi_document_yaml_and_lists() {
        let m = load_one(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: x, labels: {env: prod}}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a, namespace: x}\n  status: {podIP: 10.0.0.1}\n---\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: y}\nspec: {podSelector: {matchLabels: {on: off}}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        )
        .unwrap();
        assert_eq!(m.cluster.namespaces["x"].labels["env"], "prod");
        assert_eq!(m.cluster.pod("x", "a").unwrap().ips.len(), 1);
        assert!(
            m.cluster.namespaces.contains_key("y"),
            "implicit namespace for the policy"
        );
        let p = &m.cluster.policies[&ObjectKey::new("y", "p")];
        assert_eq!(
            p.pod_selector.match_labels,
            vec![("on".to_owned(), "off".to_owned())]
        );
        assert_eq!(m.skipped["apps/v1 Deployment"], 1);
    }

    #[test]
    fn reads_services_and_endpoint_slices() {
        let m = load_one(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.1.5], conditions: {ready: true}, nodeName: n1}]\nports: [{name: http, port: 8080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSliceList\nitems:\n- metadata: {name: web-2, namespace: x, labels: {kubernetes.io/service-name: web}}\n  addressType: IPv6\n  endpoints: [{addresses: ['fd00::5']}]\n",
        )
        .unwrap();
        assert!(m.skipped.is_empty(), "{:?}", m.skipped);
        let svc = &m.cluster.services[&ObjectKey::new("x", "web")];
        assert!(svc.is_proxied());
        assert_eq!(svc.ports[0].port, 80);
        let slice = &m.cluster.endpoint_slices[&ObjectKey::new("x", "web-1")];
        assert_eq!(slice.service.as_deref(), Some("web"));
        assert_eq!(slice.ports[0].port, Some(8080));
        assert!(slice.endpoints[0].ready);
        assert!(
            m.cluster
                .endpoint_slices
                .contains_key(&ObjectKey::new("x", "web-2"))
        );
    }

    #[test]
    fn unserved_versions_and_invalid_services_are_errors() {
        let e = load_one(
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s, namespace: x}\naddressType: IPv4\nendpoints: []\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: t, namespace: x}\naddressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert_eq!(e.0.len(), 3, "{text}");
        assert!(
            text.contains(
                "EndpointSlice x/s: apiVersion: 'discovery.k8s.io/v1beta1' is not served; use discovery.k8s.io/v1"
            ),
            "{text}"
        );
        assert!(text.contains("Service x/web: spec.clusterIP"), "{text}");
        assert!(
            text.contains("EndpointSlice x/t: endpoints[0].addresses[0]"),
            "{text}"
        );
    }

    #[test]
    fn typed_list_items_take_the_list_kind() {
        let m = load_one(
            "apiVersion: v1\nkind: PodList\nitems:\n- metadata: {name: a, namespace: x}\n",
        )
        .unwrap();
        assert!(m.cluster.pod("x", "a").is_some());
    }

    #[test]
    fn errors_name_file_object_and_field() {
        let e = load_one(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: [1]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nspec: {hostNetwork: maybe, containers: []}\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert_eq!(e.0.len(), 2, "{text}");
        assert!(
            text.contains("test.yaml: NetworkPolicy x/p: spec.ingress[0].ports[0].port"),
            "{text}"
        );
        assert!(text.contains("Pod x/b: spec.hostNetwork"), "{text}");
    }

    #[test]
    fn syntax_and_shape_errors() {
        let e = load_one("a: [1, 2\n").unwrap_err();
        assert!(matches!(e.0[0], LoadError::Syntax { .. }), "{e}");
        let e = load_one("- 1\n- 2\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("document 1: not a Kubernetes object"),
            "{e}"
        );
        let e = load_one("metadata: {name: x}\n").unwrap_err();
        assert!(e.to_string().contains("no 'kind'"), "{e}");
    }

    #[test]
    fn unreadable_path_is_reported() {
        let e = load(&[PathBuf::from("/nonexistent/podfence")]).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/podfence: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn reads_the_conformance_cluster() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/cluster.yaml");
        let m = load(&[dir]).unwrap();
        assert_eq!(m.cluster.namespaces.len(), 3);
        assert_eq!(m.cluster.pods.len(), 9);
        let a = m.cluster.pod("y", "b").unwrap();
        assert_eq!(
            a.ips,
            vec!["10.244.2.2".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(
            a.named_ports
                .iter()
                .any(|p| p.name == "web" && p.port == 8081)
        );
    }

    #[test]
    fn skipped_note_names_kinds_and_counts_beyond_a_base() {
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        let base = load_one(deployment).unwrap();
        let more = load_one(&format!(
            "{deployment}---\n{deployment}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n"
        ))
        .unwrap();
        assert_eq!(
            more.skipped_note().as_deref(),
            Some("skipped objects of other kinds: apps/v1 Deployment ×2, v1 ConfigMap ×1")
        );
        assert_eq!(
            more.skipped_note_beyond(&base).as_deref(),
            Some("skipped objects of other kinds: apps/v1 Deployment ×1, v1 ConfigMap ×1")
        );
        assert_eq!(base.skipped_note_beyond(&base), None);
        assert_eq!(Manifests::default().skipped_note(), None);
    }

    #[test]
    fn reads_cluster_scoped_policies_and_nodes() {
        let m = load_one(
            "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: p}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: q}\nspec: {tier: Baseline, priority: 1, subject: {namespaces: {}}}\n---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: p}\nspec: {priority: 1, subject: {namespaces: {}}}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}]}\n",
        )
        .unwrap();
        assert_eq!(
            m.cluster.cluster_policies.len(),
            3,
            "ANP p and CNP p are two objects"
        );
        assert_eq!(m.cluster.nodes["n"].addresses.len(), 1);
        assert_eq!(m.skipped_note(), None);
        let e = load_one(
            "apiVersion: policy.networking.k8s.io/v1\nkind: ClusterNetworkPolicy\nmetadata: {name: p}\n---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: r}\nspec: {tier: Admin, priority: 2000, subject: {namespaces: {}}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ClusterNetworkPolicy p: apiVersion"), "{e}");
        assert!(e.contains("ClusterNetworkPolicy r: spec.priority"), "{e}");
    }
}
