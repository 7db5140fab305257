//! The agent's side of a plugin call: one request line on its control
//! socket (`adopt`, `release`, `check`, `gc` or `ping`, each followed by a
//! JSON object), one answer, which starts with `error:` when the agent
//! refuses. The request types mirror the agent's
//! (`podfence_control::agent::cni`), which has the details.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// How long the plugin waits for an answer. The agent answers an adopt
/// within its own limit (10 s), with a refusal if it could not finish.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A pod as the plugin names it to the agent.
#[derive(Clone, Debug, Serialize)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `CNI_CONTAINERID`: the sandbox this call is about.
    pub container_id: String,
}

/// `adopt`: enforce the pod at these addresses before answering.
#[derive(Clone, Debug, Serialize)]
pub struct Adopt {
    /// The pod.
    #[serde(flatten)]
    pub pod: PodRef,
    /// Its addresses, from `prevResult`.
    pub addresses: Vec<IpAddr>,
    /// Its MAC (the container interface's in `prevResult`), if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// `check`: whether the pod is enforced at these addresses.
pub type Check = Adopt;

/// `gc`: release every pod adopted through the plugin whose sandbox is not
/// one of these.
#[derive(Clone, Debug, Serialize)]
pub struct Gc {
    /// Sandboxes still in use.
    pub valid_container_ids: Vec<String>,
}

/// Why the agent did not say yes.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Nothing listens on the socket (or it broke off).
    #[error("cannot reach the agent at {path}: {source}")]
    Unreachable {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The agent answered with an error.
    #[error("the agent refused: {0}")]
    Refused(String),
}

/// Sends `verb` and `body` to the agent at `socket`; returns its answer.
pub fn ask(socket: &Path, verb: &str, body: &impl Serialize) -> Result<String, AgentError> {
    let unreachable = |source| AgentError::Unreachable {
        path: socket.display().to_string(),
        source,
    };
    let line = format!(
        "{verb} {}\n",
        serde_json::to_string(body).expect("request types serialize")
    );
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(unreachable)?;
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(unreachable)?;
    let reply = reply.trim();
    if reply.is_empty() {
        return Err(unreachable(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the connection without an answer",
        )));
    }
    match reply.strip_prefix("error:") {
        Some(why) => Err(AgentError::Refused(why.trim().to_owned())),
        None => Ok(reply.to_owned()),
    }
}
