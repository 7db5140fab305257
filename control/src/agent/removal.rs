//! Telling an upgrade from an uninstall when the agent is asked to stop.
//!
//! A DaemonSet's pods get SIGTERM both when a rollout replaces them and
//! when podfence is removed; only the first should leave the datapath in
//! place for the next agent (`--on-stop keep`). The agent asks the API
//! about the DaemonSet it runs in (`--daemonset NAMESPACE/NAME`):
//!
//! - present and not being deleted: an upgrade, a restart, a deleted pod,
//!   a node shutting down: **keep**;
//! - gone (404) or carrying a `deletionTimestamp`: podfence is being
//!   removed: **clean**;
//! - the agent's credentials refused (401: its service account is gone;
//!   403: its RBAC is): nothing but a removal takes those away from a
//!   running agent, and `kubectl delete -k deploy/` may delete them before
//!   the pod gets its SIGTERM: **clean**;
//! - no answer within the timeout, or any other error: **keep**. The
//!   deletion that sent SIGTERM went through the API moments ago, so an
//!   API that does not answer now points at the node (shutting down, cut
//!   off) rather than at an uninstall; and cleaning would hand the node's
//!   pods to the kernel unenforced on a guess, the fail-open moment the
//!   fail mode exists to prevent. A wrong guess leaves what a crash
//!   leaves: the next agent, or `podfence run` with `--on-stop clean`,
//!   takes it over (docs/operations.md).

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::Api;

use super::OnStop;
use crate::model::ObjectKey;
use crate::sources::kube::{ApiTarget, client};

/// What the API said about the agent's DaemonSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonSetState {
    /// It exists and is not being deleted.
    Present,
    /// It has a `deletionTimestamp`.
    Deleting,
    /// It does not exist.
    Gone,
    /// The API refused the agent's credentials (HTTP status).
    Refused(u16),
    /// No usable answer (timeout, connection, other error).
    Unknown(String),
}

impl DaemonSetState {
    /// What the agent leaves on the node (see the module doc).
    #[must_use]
    pub fn on_stop(&self) -> OnStop {
        match self {
            Self::Present | Self::Unknown(_) => OnStop::Keep,
            Self::Deleting | Self::Gone | Self::Refused(_) => OnStop::Clean,
        }
    }

    /// In words, for the log.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Present => "the DaemonSet is in place (an upgrade or a restart)".into(),
            Self::Deleting => "the DaemonSet is being deleted (podfence is being removed)".into(),
            Self::Gone => "the DaemonSet is gone (podfence is being removed)".into(),
            Self::Refused(code) => format!(
                "the API refused the agent's credentials ({code}): its service account or RBAC is gone (podfence is being removed)"
            ),
            Self::Unknown(why) => format!("no answer about the DaemonSet ({why})"),
        }
    }
}

/// Asks the API whether `daemonset` still exists and is not being
/// deleted, giving up after `timeout`.
#[must_use]
pub fn daemonset_state(
    target: &ApiTarget,
    daemonset: &ObjectKey,
    timeout: Duration,
) -> DaemonSetState {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return DaemonSetState::Unknown(format!("runtime: {e}")),
    };
    runtime.block_on(async {
        let ask = async {
            let client = client(target)
                .await
                .map_err(|e| DaemonSetState::Unknown(e.to_string()))?;
            let api: Api<DaemonSet> = Api::namespaced(client, &daemonset.namespace);
            api.get_opt(&daemonset.name).await.map_err(|e| match e {
                kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
                    DaemonSetState::Refused(status.code)
                }
                e => DaemonSetState::Unknown(e.to_string()),
            })
        };
        match tokio::time::timeout(timeout, ask).await {
            Err(_) => DaemonSetState::Unknown(format!("no answer within {timeout:?}")),
            Ok(Err(state)) => state,
            Ok(Ok(None)) => DaemonSetState::Gone,
            Ok(Ok(Some(ds))) if ds.metadata.deletion_timestamp.is_some() => {
                DaemonSetState::Deleting
            }
            Ok(Ok(Some(_))) => DaemonSetState::Present,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_removal_cleans_and_doubt_keeps() {
        assert_eq!(DaemonSetState::Present.on_stop(), OnStop::Keep);
        assert_eq!(
            DaemonSetState::Unknown("timeout".into()).on_stop(),
            OnStop::Keep
        );
        for removal in [
            DaemonSetState::Deleting,
            DaemonSetState::Gone,
            DaemonSetState::Refused(401),
            DaemonSetState::Refused(403),
        ] {
            assert_eq!(removal.on_stop(), OnStop::Clean, "{removal:?}");
            assert!(removal.describe().contains("removed"));
        }
    }

    #[test]
    fn an_unreachable_api_is_unknown_within_the_timeout() {
        // A kubeconfig naming a port nothing listens on.
        let dir = std::env::temp_dir().join(format!("podfence-removal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
            ),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let state = daemonset_state(
            &ApiTarget::Kubeconfig(kubeconfig),
            &ObjectKey::new("podfence-system", "podfence"),
            Duration::from_secs(2),
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(state, DaemonSetState::Unknown(_)), "{state:?}");
        assert_eq!(state.on_stop(), OnStop::Keep);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
