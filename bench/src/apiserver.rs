//! A test API server: the Kubernetes list/watch protocol over HTTP, for the
//! real kube client, since no kube-apiserver can run here.
//!
//! It serves Namespaces (`/api/v1/namespaces`), Pods (`/api/v1/pods`),
//! Nodes (`/api/v1/nodes`), NetworkPolicies
//! (`/apis/networking.k8s.io/v1/networkpolicies`), Services
//! (`/api/v1/services`), EndpointSlices
//! (`/apis/discovery.k8s.io/v1/endpointslices`) and, once its CRD is
//! installed ([`ApiServer::install_crd`]), ClusterNetworkPolicies
//! (`/apis/policy.networking.k8s.io/<version>/clusternetworkpolicies`, in
//! the version installed), and once theirs are
//! ([`ApiServer::install_admin_crds`]), AdminNetworkPolicies and
//! BaselineAdminNetworkPolicies (`v1alpha1`), cluster-wide, with the
//! discovery documents of that group (`/apis`,
//! `/apis/policy.networking.k8s.io/<version>`), and DaemonSets one by name
//! (`/apis/apps/v1/namespaces/NS/daemonsets/NAME`):
//! - lists carry the current resourceVersion (pagination is not needed: a
//!   list is one page);
//! - `?watch=1&resourceVersion=N` streams, chunked, every change of that
//!   resource after N, then new ones as they happen, with a BOOKMARK every
//!   [`BOOKMARK_EVERY`] when `allowWatchBookmarks` is asked for, until
//!   `timeoutSeconds`;
//! - a watch from a version older than the compacted history gets the 410
//!   Gone error event, as from a real API server.
//!
//! Faults on demand: [`ApiServer::cut_watches`] drops every open watch
//! connection mid-stream, [`ApiServer::expire_history`] compacts the history
//! (the next resume gets 410 and relists), [`ApiServer::set_delay`] slows
//! every response down, [`ApiServer::set_unavailable`] answers 503.
//!
//! One thread per connection, `Connection: close` on every response; it is a
//! test server, sized for one client.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How often a watch that asks for bookmarks gets one.
pub const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

/// The resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `v1` Namespace.
    Namespaces,
    /// `v1` Pod.
    Pods,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicies,
    /// `v1` Service.
    Services,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlices,
    /// `apps/v1` DaemonSet (one by name: what a stopping agent asks).
    DaemonSets,
    /// `v1` Node.
    Nodes,
    /// `policy.networking.k8s.io` ClusterNetworkPolicy, in the version of
    /// its installed CRD.
    ClusterNetworkPolicies,
    /// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy.
    AdminNetworkPolicies,
    /// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy.
    BaselineAdminNetworkPolicies,
}

/// The ClusterNetworkPolicy group.
const POLICY_GROUP: &str = "policy.networking.k8s.io";

impl Resource {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/namespaces" => Some(Self::Namespaces),
            "/api/v1/pods" => Some(Self::Pods),
            "/apis/networking.k8s.io/v1/networkpolicies" => Some(Self::NetworkPolicies),
            "/api/v1/services" => Some(Self::Services),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Self::EndpointSlices),
            "/apis/apps/v1/daemonsets" => Some(Self::DaemonSets),
            "/api/v1/nodes" => Some(Self::Nodes),
            _ => None,
        }
    }

    fn of_kind(kind: &str) -> Option<Self> {
        match kind {
            "Namespace" => Some(Self::Namespaces),
            "Pod" => Some(Self::Pods),
            "NetworkPolicy" => Some(Self::NetworkPolicies),
            "Service" => Some(Self::Services),
            "EndpointSlice" => Some(Self::EndpointSlices),
            "DaemonSet" => Some(Self::DaemonSets),
            "Node" => Some(Self::Nodes),
            "ClusterNetworkPolicy" => Some(Self::ClusterNetworkPolicies),
            "AdminNetworkPolicy" => Some(Self::AdminNetworkPolicies),
            "BaselineAdminNetworkPolicy" => Some(Self::BaselineAdminNetworkPolicies),
            _ => None,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::Namespaces => "Namespace",
            Self::Pods => "Pod",
            Self::NetworkPolicies => "NetworkPolicy",
            Self::Services => "Service",
            Self::EndpointSlices => "EndpointSlice",
            Self::DaemonSets => "DaemonSet",
            Self::Nodes => "Node",
            Self::ClusterNetworkPolicies => "ClusterNetworkPolicy",
            Self::AdminNetworkPolicies => "AdminNetworkPolicy",
            Self::BaselineAdminNetworkPolicies => "BaselineAdminNetworkPolicy",
        }
    }

    fn cluster_scoped(self) -> bool {
        matches!(
            self,
            Self::Namespaces
                | Self::Nodes
                | Self::ClusterNetworkPolicies
                | Self::AdminNetworkPolicies
                | Self::BaselineAdminNetworkPolicies
        )
    }

    /// The apiVersion of its objects; `crd` is the installed version of
    /// the ClusterNetworkPolicy CRD.
    fn api_version(self, crd: &str) -> String {
        match self {
            Self::Namespaces | Self::Pods | Self::Services | Self::Nodes => "v1".into(),
            Self::NetworkPolicies => "networking.k8s.io/v1".into(),
            Self::EndpointSlices => "discovery.k8s.io/v1".into(),
            Self::DaemonSets => "apps/v1".into(),
            Self::ClusterNetworkPolicies => format!("{POLICY_GROUP}/{crd}"),
            Self::AdminNetworkPolicies | Self::BaselineAdminNetworkPolicies => {
                format!("{POLICY_GROUP}/v1alpha1")
            }
        }
    }
}

type ObjectKey = (Resource, String, String);

#[derive(Debug, Default)]
struct State {
    version: u64,
    objects: BTreeMap<ObjectKey, Value>,
    /// `(version, resource, event type, object)`, oldest first.
    history: Vec<(u64, Resource, &'static str, Value)>,
    /// Watches from versions below this get 410 Gone.
    compacted: u64,
    /// Incremented to cut every open watch.
    cut: u64,
    delay: Duration,
    unavailable: bool,
    requests: u64,
    /// The version of the ClusterNetworkPolicy CRD served, if installed.
    crd: Option<&'static str>,
    /// Whether the AdminNetworkPolicy and BaselineAdminNetworkPolicy CRDs
    /// are installed.
    admin_crds: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The server; stopped on drop.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// Why an object cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// Not an object of a served kind with a name.
    #[error(
        "not a Namespace, Pod, Node, NetworkPolicy, Service, EndpointSlice or ClusterNetworkPolicy with metadata.name: {0}"
    )]
    Unservable(String),
    /// The listener could not be made.
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
}

impl ApiServer {
    /// Listens on a free port of 127.0.0.1.
    pub fn start() -> Result<Self, ApiServerError> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // Polled, so that a stop needs no connection (which could not reach
        // a listener made in another network namespace).
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let bookmark_every = BOOKMARK_EVERY;
        let for_accept = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("pf-apiserver".into())
            .spawn(move || {
                while !for_accept.stop.load(Ordering::Relaxed) {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let _ = stream.set_nonblocking(false);
                    let shared = Arc::clone(&for_accept);
                    let _ = std::thread::Builder::new()
                        .name("pf-apiserver-conn".into())
                        .spawn(move || serve(&shared, stream, bookmark_every));
                }
            })?;
        Ok(Self {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file's text pointing at this server.
    #[must_use]
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        )
    }

    /// Stores (`Some`) or deletes (`None`) the object at `key` under a new
    /// resourceVersion and tells the watches; `None` when there was nothing
    /// to delete.
    fn record(&self, key: ObjectKey, object: Option<Value>) -> Option<u64> {
        let resource = key.0;
        let mut s = self.shared.lock();
        let version = s.version + 1;
        let (kind, stored) = if let Some(mut o) = object {
            o["metadata"]["resourceVersion"] = json!(version.to_string());
            o["apiVersion"] = json!(resource.api_version(s.crd.unwrap_or("v1beta1")));
            o["kind"] = json!(resource.kind());
            let kind = if s.objects.insert(key, o.clone()).is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            (kind, o)
        } else {
            let mut o = s.objects.remove(&key)?;
            o["metadata"]["resourceVersion"] = json!(version.to_string());
            ("DELETED", o)
        };
        s.version = version;
        s.history.push((version, resource, kind, stored));
        drop(s);
        self.shared.changed.notify_all();
        Some(version)
    }

    fn key(object: &Value) -> Result<ObjectKey, ApiServerError> {
        let resource = object["kind"]
            .as_str()
            .and_then(Resource::of_kind)
            .ok_or_else(|| ApiServerError::Unservable(object.to_string()))?;
        let name = object["metadata"]["name"]
            .as_str()
            .ok_or_else(|| ApiServerError::Unservable(object.to_string()))?;
        let namespace = match resource {
            r if r.cluster_scoped() => "",
            _ => object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default"),
        };
        Ok((resource, namespace.to_owned(), name.to_owned()))
    }

    /// Creates or replaces an object (its `kind` says which resource);
    /// returns the new resourceVersion.
    pub fn apply(&self, object: Value) -> Result<u64, ApiServerError> {
        let key = Self::key(&object)?;
        Ok(self
            .record(key, Some(object))
            .expect("a store always records"))
    }

    /// Deletes an object (if it exists).
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) {
        let namespace = if resource.cluster_scoped() {
            ""
        } else {
            namespace
        };
        self.record((resource, namespace.to_owned(), name.to_owned()), None);
    }

    /// Drops every open watch connection without ending its stream.
    pub fn cut_watches(&self) {
        self.shared.lock().cut += 1;
        self.shared.changed.notify_all();
    }

    /// Forgets the history: a watch resuming from any version seen so far
    /// gets 410 Gone. Open watches are cut so that they resume.
    pub fn expire_history(&self) {
        let mut s = self.shared.lock();
        s.compacted = s.version + 1;
        s.history.clear();
        s.cut += 1;
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Delays every response by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Answers every request with 503 while `unavailable`; open watches are
    /// cut.
    pub fn set_unavailable(&self, unavailable: bool) {
        let mut s = self.shared.lock();
        s.unavailable = unavailable;
        s.cut += 1;
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Installs (`Some(version)`: `v1beta1` or `v1alpha2`) or removes the
    /// ClusterNetworkPolicy CRD: discovery and the resource's path follow.
    /// Open watches are cut, as a CRD change ends them on a real server.
    pub fn install_crd(&self, version: Option<&'static str>) {
        let mut s = self.shared.lock();
        s.crd = version;
        s.cut += 1;
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Installs or removes the AdminNetworkPolicy and
    /// BaselineAdminNetworkPolicy CRDs (`v1alpha1`); open watches are cut.
    pub fn install_admin_crds(&self, installed: bool) {
        let mut s = self.shared.lock();
        s.admin_crds = installed;
        s.cut += 1;
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Requests served so far.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.shared.lock().requests
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// The request line's path and query parameters.
fn read_request(stream: &TcpStream) -> Option<(String, BTreeMap<String, String>)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_owned();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" {
            break;
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%2C", ",")))
        .collect();
    Some((path.to_owned(), params))
}

fn respond(stream: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn chunk(stream: &mut TcpStream, event: &Value) -> bool {
    let mut line = event.to_string();
    line.push('\n');
    write!(stream, "{:x}\r\n{line}\r\n", line.len()).is_ok() && stream.flush().is_ok()
}

fn serve(shared: &Shared, mut stream: TcpStream, bookmark_every: Duration) {
    let Some((path, params)) = read_request(&stream) else {
        return;
    };
    let (delay, unavailable) = {
        let mut s = shared.lock();
        s.requests += 1;
        (s.delay, s.unavailable)
    };
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    if unavailable {
        respond(
            &mut stream,
            "503 Service Unavailable",
            &status(503, "ServiceUnavailable", "unavailable on demand"),
        );
        return;
    }
    if let Some((namespace, name)) = path
        .strip_prefix("/apis/apps/v1/namespaces/")
        .and_then(|rest| rest.split_once("/daemonsets/"))
    {
        let key = (Resource::DaemonSets, namespace.to_owned(), name.to_owned());
        let found = shared.lock().objects.get(&key).cloned();
        match found {
            Some(object) => respond(&mut stream, "200 OK", &object),
            None => respond(
                &mut stream,
                "404 Not Found",
                &status(
                    404,
                    "NotFound",
                    &format!("daemonsets.apps \"{name}\" not found"),
                ),
            ),
        }
        return;
    }
    let (crd, admin_crds) = {
        let s = shared.lock();
        (s.crd, s.admin_crds)
    };
    if let Some(document) = discovery(&path, crd, admin_crds) {
        respond(&mut stream, "200 OK", &document);
        return;
    }
    let cnp_path = crd.map(|v| format!("/apis/{POLICY_GROUP}/{v}/clusternetworkpolicies"));
    let admin_path = |plural: &str| format!("/apis/{POLICY_GROUP}/v1alpha1/{plural}");
    let resource = if cnp_path.as_deref() == Some(path.as_str()) {
        Some(Resource::ClusterNetworkPolicies)
    } else if admin_crds && path == admin_path("adminnetworkpolicies") {
        Some(Resource::AdminNetworkPolicies)
    } else if admin_crds && path == admin_path("baselineadminnetworkpolicies") {
        Some(Resource::BaselineAdminNetworkPolicies)
    } else {
        Resource::from_path(&path)
    };
    let Some(resource) = resource else {
        respond(
            &mut stream,
            "404 Not Found",
            &status(404, "NotFound", &format!("{path} is not served")),
        );
        return;
    };
    let watching = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watching {
        let s = shared.lock();
        let items: Vec<&Value> = s
            .objects
            .iter()
            .filter(|((r, _, _), _)| *r == resource)
            .map(|(_, o)| o)
            .collect();
        let list = json!({
            "apiVersion": resource.api_version(s.crd.unwrap_or("v1beta1")),
            "kind": format!("{}List", resource.kind()),
            "metadata": {"resourceVersion": s.version.to_string()},
            "items": items,
        });
        drop(s);
        respond(&mut stream, "200 OK", &list);
        return;
    }
    stream_changes(shared, stream, resource, &params, bookmark_every);
}

/// The discovery document at `path`, if it is one: the group list (only
/// the policy group, when a CRD of it is installed) and the resource list
/// of each of its versions.
fn discovery(path: &str, crd: Option<&str>, admin_crds: bool) -> Option<Value> {
    let resource = |plural: &str, kind: &str| {
        json!({"name": plural, "singularName": plural.trim_end_matches('s'), "namespaced": false,
               "kind": kind, "verbs": ["get", "list", "watch"]})
    };
    let mut versions: Vec<(&str, Vec<Value>)> = Vec::new();
    if let Some(v) = crd {
        versions.push((
            v,
            vec![resource("clusternetworkpolicies", "ClusterNetworkPolicy")],
        ));
    }
    if admin_crds {
        versions.push((
            "v1alpha1",
            vec![
                resource("adminnetworkpolicies", "AdminNetworkPolicy"),
                resource("baselineadminnetworkpolicies", "BaselineAdminNetworkPolicy"),
            ],
        ));
    }
    if path == "/apis" {
        let gvs: Vec<Value> = versions
            .iter()
            .map(|(v, _)| json!({"groupVersion": format!("{POLICY_GROUP}/{v}"), "version": v}))
            .collect();
        let groups: Vec<Value> = gvs
            .first()
            .map(|preferred| {
                json!({"name": POLICY_GROUP, "versions": gvs, "preferredVersion": preferred})
            })
            .into_iter()
            .collect();
        return Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}));
    }
    versions.into_iter().find_map(|(v, resources)| {
        (path == format!("/apis/{POLICY_GROUP}/{v}")).then(|| {
            json!({"kind": "APIResourceList", "apiVersion": "v1",
                   "groupVersion": format!("{POLICY_GROUP}/{v}"), "resources": resources})
        })
    })
}

/// Streams the changes of `resource` (see the module doc).
fn stream_changes(
    shared: &Shared,
    mut stream: TcpStream,
    resource: Resource,
    params: &BTreeMap<String, String>,
    bookmark_every: Duration,
) {
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let until = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(|t: u64| Instant::now() + Duration::from_secs(t));
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut s = shared.lock();
    if from < s.compacted {
        drop(s);
        let gone = status(410, "Expired", &format!("too old resource version: {from}"));
        if chunk(&mut stream, &json!({"type": "ERROR", "object": gone})) {
            let _ = write!(stream, "0\r\n\r\n");
        }
        return;
    }
    let cut = s.cut;
    let mut sent = from;
    let mut last_bookmark = Instant::now();
    loop {
        if shared.stop.load(Ordering::Relaxed) || s.cut != cut {
            // Dropped mid-stream: no terminating chunk.
            return;
        }
        let events: Vec<Value> = s
            .history
            .iter()
            .filter(|(v, r, _, _)| *v > sent && *r == resource)
            .map(|(_, _, t, o)| json!({"type": t, "object": o}))
            .collect();
        sent = s.version;
        let version = s.version;
        let api_version = resource.api_version(s.crd.unwrap_or("v1beta1"));
        drop(s);
        for event in &events {
            if !chunk(&mut stream, event) {
                return;
            }
        }
        if bookmarks && last_bookmark.elapsed() >= bookmark_every {
            let mark = json!({"type": "BOOKMARK", "object": {
                "apiVersion": api_version, "kind": resource.kind(),
                "metadata": {"resourceVersion": version.to_string()}}});
            if !chunk(&mut stream, &mark) {
                return;
            }
            last_bookmark = Instant::now();
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            let _ = write!(stream, "0\r\n\r\n");
            return;
        }
        s = shared.lock();
        if s.version == sent && s.cut == cut {
            s = shared
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
