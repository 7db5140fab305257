//! Requests of the CNI plugin (`podfence-cni`) on the control socket:
//! `adopt`, `release`, `check` and `gc`, each a verb and a JSON object on
//! one line.
//!
//! The control socket parses a request and hands it to the supervisor,
//! which alone changes the tables and the datapath; the socket's thread
//! waits for the answer. `adopt` is answered only once the pod is enforced:
//! its addresses compiled into the tables in force (from the request, as
//! the cluster state may not have them yet: see
//! [`crate::index::OverlaidCluster`]), its veth's port live in every worker,
//! its addresses routed through the datapath; or with a refusal after
//! [`ADOPT_TIMEOUT`]. The reconcile loop stays the safety net for pods
//! wired while no agent ran.

use std::net::IpAddr;
use std::sync::mpsc;
use std::time::Duration;

use serde::Deserialize;

use crate::model::ObjectKey;

/// How long an adopt may take before it is refused (the plugin then fails
/// or passes the pod by its fail mode).
pub const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the control socket waits for the supervisor's answer.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// A pod as the plugin names it: `adopt` and `check` give its addresses
/// (and MAC) from the CNI result, `release` only its name and sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRequest {
    /// Namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// Name (`K8S_POD_NAME`).
    pub name: String,
    /// The sandbox (`CNI_CONTAINERID`).
    pub container_id: String,
    /// Its addresses.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// The MAC of its interface, `aa:bb:cc:dd:ee:ff`.
    #[serde(default)]
    pub mac: Option<String>,
}

impl PodRequest {
    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// The MAC, parsed.
    pub fn mac(&self) -> Result<Option<[u8; 6]>, String> {
        self.mac
            .as_deref()
            .map(|text| {
                super::plumbing::parse_mac(text)
                    .ok_or_else(|| format!("{text:?} is not a MAC address"))
            })
            .transpose()
    }
}

/// `gc`: the sandboxes still in use.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Their container ids.
    pub valid_container_ids: Vec<String>,
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CniRequest {
    /// Enforce the pod, then answer.
    Adopt(PodRequest),
    /// Stop enforcing the pod's CNI addresses.
    Release(PodRequest),
    /// Whether the pod is enforced at its addresses.
    Check(PodRequest),
    /// Release every pod whose sandbox is not listed.
    Gc(GcRequest),
}

impl CniRequest {
    /// Parses `verb` and its JSON `body`; `None` when `verb` is not one of
    /// these requests.
    #[must_use]
    pub fn parse(verb: &str, body: &str) -> Option<Result<Self, String>> {
        let pod = || {
            let request: PodRequest =
                serde_json::from_str(body).map_err(|e| format!("{verb}: {e}"))?;
            if request.namespace.is_empty() || request.name.is_empty() {
                return Err(format!("{verb}: the pod's namespace and name are required"));
            }
            request.mac()?;
            Ok(request)
        };
        let with_addresses = |r: PodRequest| {
            if r.addresses.is_empty() {
                Err(format!("{verb}: no addresses"))
            } else {
                Ok(r)
            }
        };
        Some(match verb {
            "adopt" => pod().and_then(with_addresses).map(Self::Adopt),
            "check" => pod().and_then(with_addresses).map(Self::Check),
            "release" => pod().map(Self::Release),
            "gc" => serde_json::from_str(body)
                .map(Self::Gc)
                .map_err(|e| format!("gc: {e}")),
            _ => return None,
        })
    }
}

/// A request with where its answer goes: the answer line (JSON), or why
/// not (sent as `error: …`).
#[derive(Debug)]
pub struct CniCall {
    /// The request.
    pub request: CniRequest,
    /// Its answer.
    pub reply: mpsc::Sender<Result<String, String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        let adopt = CniRequest::parse(
            "adopt",
            r#"{"namespace":"x","name":"p","container_id":"c1","addresses":["10.1.0.5"],"mac":"02:00:00:00:00:05"}"#,
        )
        .unwrap()
        .unwrap();
        let CniRequest::Adopt(pod) = adopt else {
            panic!("{adopt:?}")
        };
        assert_eq!(pod.mac().unwrap(), Some([2, 0, 0, 0, 0, 5]));
        assert_eq!(pod.key(), ObjectKey::new("x", "p"));
        let release = CniRequest::parse(
            "release",
            r#"{"namespace":"x","name":"p","container_id":"c1"}"#,
        );
        assert!(matches!(release, Some(Ok(CniRequest::Release(_)))));
        for (verb, body) in [
            (
                "adopt",
                r#"{"namespace":"x","name":"p","container_id":"c1"}"#,
            ),
            (
                "adopt",
                r#"{"namespace":"x","name":"p","container_id":"c1","addresses":["10.1.0.5/24"]}"#,
            ),
            (
                "adopt",
                r#"{"namespace":"","name":"p","container_id":"c1","addresses":["10.1.0.5"]}"#,
            ),
            (
                "adopt",
                r#"{"namespace":"x","name":"p","container_id":"c1","addresses":["10.1.0.5"],"mac":"zz"}"#,
            ),
            (
                "release",
                r#"{"namespace":"x","name":"p","container_id":"c1","extra":1}"#,
            ),
            ("gc", "[]"),
            ("check", "not json"),
        ] {
            assert!(
                matches!(CniRequest::parse(verb, body), Some(Err(_))),
                "{verb} {body}"
            );
        }
        assert!(CniRequest::parse("status", "").is_none());
    }
}
