//! deploy/ against the agent: what the DaemonSet passes `podfence run`
//! (its command, its arguments, the ConfigMap's settings and its own
//! environment) is accepted by the binary's parser, the probes reach the
//! address and the paths the agent serves, the ClusterRole grants reading
//! the kinds the agent watches and nothing more (and `get` on its own
//! DaemonSet, to tell an upgrade from an uninstall), the container
//! gets its capabilities one by one, and podfence-cni lands where the
//! node's runtime finds it and reaches the agent's socket from the node. (scripts/validate-deploy checks the
//! manifests against the Kubernetes schemas.)

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Probe};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podfence_control::agent::metrics::{Health, MetricsServer};
use podfence_control::index::Kind;
use podfence_control::metrics::ControlMetrics;
use serde_json::Value;

/// Stand-ins for what the downward API gives the container.
const NODE_NAME: &str = "node-1";
const HOST_IP: &str = "192.0.2.10";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every object of every manifest in deploy/ (kustomization.yaml aside),
/// with the file it came from.
fn objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy())
        .expect("deploy/ is readable")
        .map(|e| e.expect("deploy/ entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("manifest is readable");
        let options = serde_saphyr::options! { strict_booleans: true };
        let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(&text, options)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        out.extend(
            docs.into_iter()
                .filter(|d| !d.is_null())
                .map(|d| (name.clone(), d)),
        );
    }
    out
}

/// The one object of `kind` in deploy/.
fn the<T: serde::de::DeserializeOwned>(kind: &str) -> T {
    let mut found: Vec<Value> = objects()
        .into_iter()
        .filter(|(_, o)| o["kind"] == kind)
        .map(|(_, o)| o)
        .collect();
    assert_eq!(found.len(), 1, "deploy/ should hold exactly one {kind}");
    serde_json::from_value(found.remove(0)).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the DaemonSet has a pod template")
}

fn agent(ds: &DaemonSet) -> &Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "one container: the agent");
    &spec.containers[0]
}

/// Replaces `$(NAME)` with the value of `NAME` in `vars`, as the kubelet
/// does for env values, commands and arguments (references to unknown
/// names stay as they are).
fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) if vars.contains_key(&after[..end]) => {
                out.push_str(&vars[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The agent container's environment as the kubelet would build it on
/// node `NODE_NAME` at `HOST_IP`: the ConfigMaps of envFrom first, then
/// env, in order, each value expanded with what came before.
fn environment(ds: &DaemonSet) -> BTreeMap<String, String> {
    let container = agent(ds);
    let config: ConfigMap = the("ConfigMap");
    let mut vars = BTreeMap::new();
    for source in container.env_from.iter().flatten() {
        let reference = source
            .config_map_ref
            .as_ref()
            .expect("envFrom names a ConfigMap");
        assert_eq!(
            Some(&reference.name),
            config.metadata.name.as_ref(),
            "envFrom names the ConfigMap of deploy/"
        );
        assert_eq!(reference.optional, None, "the ConfigMap is not optional");
        assert!(source.prefix.is_none());
        vars.extend(config.data.clone().unwrap_or_default());
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), None) => expand(v, &vars),
            (None, Some(from)) => {
                let path = &from
                    .field_ref
                    .as_ref()
                    .expect("env comes from the downward API")
                    .field_path;
                match path.as_str() {
                    "spec.nodeName" => NODE_NAME.to_owned(),
                    "status.hostIP" => HOST_IP.to_owned(),
                    "metadata.namespace" => ds
                        .metadata
                        .namespace
                        .clone()
                        .expect("the DaemonSet names its namespace"),
                    other => panic!("{}: unexpected field {other}", var.name),
                }
            }
            _ => panic!("{}: neither a value nor a field", var.name),
        };
        vars.insert(var.name.clone(), value);
    }
    vars
}

/// `podfence ARGS` in exactly `env` (nothing of the test's environment).
fn podfence(args: &[String], env: &BTreeMap<String, String>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podfence"))
        .args(args)
        .env_clear()
        .envs(env)
        .output()
        .expect("podfence runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What the container runs, after podfence-entrypoint: `podfence run ...`.
fn agent_command(ds: &DaemonSet, env: &BTreeMap<String, String>) -> Vec<String> {
    let container = agent(ds);
    let argv: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .map(|a| expand(a, env))
        .collect();
    assert_eq!(
        argv.first().map(String::as_str),
        Some("podfence-entrypoint"),
        "the agent starts through deploy/entrypoint.sh: {argv:?}"
    );
    assert_eq!(
        argv.get(1..3),
        Some(&["podfence".to_owned(), "run".to_owned()][..]),
        "{argv:?}"
    );
    argv[2..].to_vec()
}

/// The environment variables `podfence run` reads, from its help.
fn run_env_names() -> BTreeSet<String> {
    let out = podfence(&["run".into(), "--help".into()], &BTreeMap::new());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    let names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|s| s.split('=').next().unwrap().to_owned())
        .collect();
    assert!(names.contains("PODFENCE_FAIL_MODE"), "{help}");
    names
}

#[test]
fn the_agent_accepts_the_daemonsets_command_and_settings() {
    let ds: DaemonSet = the("DaemonSet");
    let env = environment(&ds);
    let args = agent_command(&ds, &env);
    // The agent watches the API with its service account (and no other
    // source, which the check below relies on too).
    assert!(args.iter().any(|a| a == "--in-cluster"), "{args:?}");
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--manifests") || a.starts_with("--kubeconfig")),
        "{args:?}"
    );

    // Every setting reaches a flag: clap ignores variables it does not
    // know, so a misspelt key would silently do nothing.
    let known = run_env_names();
    let config: ConfigMap = the("ConfigMap");
    for key in config.data.iter().flat_map(BTreeMap::keys) {
        assert!(
            known.contains(key) || key == "RUST_LOG",
            "ConfigMap key {key} is no setting of `podfence run` (it reads {known:?} and RUST_LOG)"
        );
    }
    for var in agent(&ds).env.iter().flatten() {
        let used = known.contains(&var.name)
            || agent(&ds)
                .env
                .iter()
                .flatten()
                .filter_map(|v| v.value.as_deref())
                .any(|v| v.contains(&format!("$({})", var.name)));
        assert!(used, "env {} is neither read nor referenced", var.name);
    }

    // There is no parse-only mode, and `run --in-cluster` would start the
    // agent. A second source makes the parser stop at its last check (the
    // sources conflict) after it has taken every argument and every
    // variable: an unknown argument or an invalid value would have been
    // reported first.
    let probe_run = |env: &BTreeMap<String, String>| {
        let mut two_sources = args.clone();
        two_sources.extend(["--manifests".into(), "/nonexistent".into()]);
        podfence(&two_sources, env)
    };
    let out = probe_run(&env);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot be used with") && stderr.contains("--in-cluster"),
        "everything but the extra source was accepted: {stderr}"
    );

    // The check sees what it is meant to see: a bad value in the
    // environment (of a flag the command line does not set: that would
    // win), an unknown argument.
    let (var, flag) = [
        ("PODFENCE_WORKERS", "--workers"),
        ("PODFENCE_CONNTRACK_ENTRIES", "--conntrack-entries"),
    ]
    .into_iter()
    .find(|(_, flag)| !args.iter().any(|a| a.starts_with(flag)))
    .expect("a numeric flag left to the environment");
    let mut bad = env.clone();
    bad.insert(var.into(), "many".into());
    let stderr = text(&probe_run(&bad).stderr);
    assert!(
        stderr.contains(&format!("invalid value 'many' for '{flag}")),
        "{stderr}"
    );
    let mut unknown = args.clone();
    unknown.push("--no-such-flag".into());
    let stderr = text(&podfence(&unknown, &env).stderr);
    assert!(stderr.contains("unexpected argument"), "{stderr}");
}

/// The container port a probe's `port` names.
fn probe_port(container: &Container, probe: &Probe, what: &str) -> (String, i32) {
    let get = probe
        .http_get
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: an HTTP probe"));
    assert!(
        get.host.is_none(),
        "{what}: no host (the kubelet probes the pod's IP, the node's)"
    );
    assert!(get.scheme.as_deref().is_none_or(|s| s == "HTTP"), "{what}");
    let port = match &get.port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("{what}: no container port {name}"))
                .container_port
        }
    };
    (get.path.clone().unwrap_or_default(), port)
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("metrics server answers");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn the_probes_reach_what_the_agent_serves() {
    let ds: DaemonSet = the("DaemonSet");
    let env = environment(&ds);
    let container = agent(&ds);
    assert_eq!(pod_spec(&ds).host_network, Some(true));

    // The agent binds the node's address (where the kubelet probes a
    // host-network pod), on the port the probes use.
    let addr: SocketAddr = env
        .get("PODFENCE_METRICS_ADDR")
        .expect("the DaemonSet sets the metrics address")
        .parse()
        .expect("the metrics address parses");
    assert_eq!(addr.ip().to_string(), HOST_IP, "bound to status.hostIP");
    assert!(
        !env.contains_key("PODFENCE_NO_METRICS"),
        "the probes need the endpoints"
    );

    let liveness = container.liveness_probe.as_ref().expect("liveness probe");
    let readiness = container.readiness_probe.as_ref().expect("readiness probe");
    let mut probes = vec![
        ("liveness", probe_port(container, liveness, "liveness")),
        ("readiness", probe_port(container, readiness, "readiness")),
    ];
    if let Some(startup) = &container.startup_probe {
        probes.push(("startup", probe_port(container, startup, "startup")));
    }
    for (what, (path, port)) in &probes {
        assert_eq!(
            i32::from(addr.port()),
            *port,
            "{what} probe port against {addr}"
        );
        let want = if *what == "readiness" {
            "/readyz"
        } else {
            "/healthz"
        };
        assert_eq!(path, want, "{what} probe path");
    }

    // The agent's server answers those paths: 503 while no worker runs
    // and nothing is published, 200 once both are so.
    let health = Arc::new(Health::default());
    let server = MetricsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &ControlMetrics::default(),
        Arc::default(),
        Arc::clone(&health),
    )
    .expect("metrics server starts");
    let at = server.addr();
    assert!(get(at, "/no-such-path").contains(" 404 "));
    assert!(get(at, "/healthz").contains(" 503 "));
    assert!(get(at, "/readyz").contains(" 503 "));
    health
        .workers
        .lock()
        .unwrap()
        .push(Arc::new(AtomicBool::new(true)));
    assert!(get(at, "/healthz").contains(" 200 "));
    assert!(get(at, "/readyz").contains(" 503 "));
    health.published.store(true, Ordering::Relaxed);
    for (_, (path, _)) in &probes {
        assert!(get(at, path).contains(" 200 "), "{path}");
    }
}

#[test]
fn the_cluster_role_grants_reading_the_watched_kinds_and_nothing_else() {
    let role: ClusterRole = the("ClusterRole");
    assert!(role.aggregation_rule.is_none());
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.as_str(), resource.as_str(), verb.as_str()));
                }
            }
        }
    }
    // One resource per kind the watchers list and watch
    // (`sources::kube::cluster_changes`, one per `Kind`).
    let watched = [
        ("", "namespaces"),
        ("", "pods"),
        ("networking.k8s.io", "networkpolicies"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("policy.networking.k8s.io", "clusternetworkpolicies"),
        ("policy.networking.k8s.io", "adminnetworkpolicies"),
        ("policy.networking.k8s.io", "baselineadminnetworkpolicies"),
        ("", "nodes"),
    ];
    // The ClusterNetworkPolicy kind of the index is three resources.
    assert_eq!(
        watched.len(),
        Kind::COUNT + 2,
        "a grant for every watched resource"
    );
    let mut want = BTreeSet::new();
    for (group, resource) in watched {
        for verb in ["get", "list", "watch"] {
            want.insert((group, resource, verb));
        }
    }
    assert_eq!(granted, want);

    // Bound to the DaemonSet's service account, and nothing else grants
    // anything.
    let ds: DaemonSet = the("DaemonSet");
    let binding: ClusterRoleBinding = the("ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(
        Some(&subjects[0].name),
        pod_spec(&ds).service_account_name.as_ref()
    );
    assert_eq!(subjects[0].namespace, ds.metadata.namespace);
    let rbac_kinds = objects()
        .into_iter()
        .filter(|(_, o)| {
            o["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("rbac.authorization.k8s.io/"))
        })
        .count();
    assert_eq!(
        rbac_kinds, 4,
        "one ClusterRole and its binding, one Role and its binding"
    );
}

#[test]
fn the_agent_tells_an_upgrade_from_an_uninstall_by_its_own_daemonset() {
    let ds: DaemonSet = the("DaemonSet");
    let env = environment(&ds);
    // Keep for the next agent, unless this DaemonSet is gone or going.
    assert_eq!(
        env.get("PODFENCE_ON_STOP").map(String::as_str),
        Some("keep")
    );
    let (namespace, name) = (
        ds.metadata.namespace.clone().expect("namespace"),
        ds.metadata.name.clone().expect("name"),
    );
    assert_eq!(
        env.get("PODFENCE_DAEMONSET"),
        Some(&format!("{namespace}/{name}")),
        "the agent asks about its own DaemonSet"
    );
    // The connection table goes where the node keeps it between agents
    // (the /run/podfence hostPath) and a reboot clears it (a tmpfs).
    let table = env
        .get("PODFENCE_CONNTRACK_FILE")
        .map_or("/run/podfence/conntrack", String::as_str);
    let mounted = agent(&ds)
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| Path::new(table).starts_with(&m.mount_path) && m.read_only != Some(true));
    assert!(mounted, "{table} is on a writable mount");
    // The grant: `get` on that one DaemonSet, in its namespace, to the
    // agent's service account; nothing else.
    let role: Role = the("Role");
    assert_eq!(role.metadata.namespace.as_ref(), Some(&namespace));
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].api_groups, Some(vec!["apps".to_owned()]));
    assert_eq!(rules[0].resources, Some(vec!["daemonsets".to_owned()]));
    assert_eq!(rules[0].resource_names, Some(vec![name]));
    assert_eq!(rules[0].verbs, ["get"]);
    let binding: RoleBinding = the("RoleBinding");
    assert_eq!(binding.metadata.namespace.as_ref(), Some(&namespace));
    assert_eq!(
        (binding.role_ref.kind.as_str(), Some(&binding.role_ref.name)),
        ("Role", role.metadata.name.as_ref())
    );
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), Some(&subjects[0].name)),
        (
            "ServiceAccount",
            pod_spec(&ds).service_account_name.as_ref()
        )
    );
    assert_eq!(subjects[0].namespace.as_ref(), Some(&namespace));
}

#[test]
fn the_agent_gets_capabilities_one_by_one() {
    let ds: DaemonSet = the("DaemonSet");
    let sc = agent(&ds)
        .security_context
        .as_ref()
        .expect("a security context");
    assert_ne!(sc.privileged, Some(true), "not privileged");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    // What `podfence run` needs; checked by running it with these alone.
    let for_agent = BTreeSet::from(["NET_ADMIN", "NET_RAW", "BPF", "IPC_LOCK"]);
    // What only the entry point needs, and drops before it execs the agent.
    let entrypoint = BTreeSet::from(["SYS_ADMIN", "SETPCAP"]);
    assert_eq!(added, &for_agent | &entrypoint);
    let script = std::fs::read_to_string(deploy().join("entrypoint.sh")).unwrap();
    assert!(
        script.contains("--bounding-set=-sys_admin,-setpcap"),
        "entrypoint.sh drops {entrypoint:?}"
    );

    // Every namespaced object lives in the Namespace deploy/ creates.
    let namespace = ds.metadata.namespace.clone().expect("a namespace");
    let all = objects();
    assert!(
        all.iter()
            .any(|(_, o)| o["kind"] == "Namespace" && o["metadata"]["name"] == namespace.as_str())
    );
    for (file, o) in &all {
        let cluster_scoped = matches!(
            o["kind"].as_str(),
            Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
        );
        if !cluster_scoped {
            assert_eq!(
                o["metadata"]["namespace"],
                namespace.as_str(),
                "{file}: {}",
                o["kind"]
            );
        }
    }

    // The image has what the command names.
    let containerfile = std::fs::read_to_string(deploy().join("Containerfile")).unwrap();
    for installed in [
        "/usr/local/bin/podfence ",
        "/usr/local/bin/podfence-cni",
        "/usr/local/bin/podfence-entrypoint",
    ] {
        assert!(containerfile.contains(installed), "{installed}");
    }
}

/// The node path a container path is on, through the container's hostPath
/// mounts.
fn node_path(ds: &DaemonSet, container_path: &str) -> Option<String> {
    let spec = pod_spec(ds);
    agent(ds)
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| {
            Path::new(container_path).starts_with(&m.mount_path) && m.read_only != Some(true)
        })
        .find_map(|m| {
            let volume = spec.volumes.iter().flatten().find(|v| v.name == m.name)?;
            let host = volume.host_path.as_ref()?;
            assert_eq!(
                host.type_.as_deref(),
                Some("DirectoryOrCreate"),
                "{}: made if missing",
                m.name
            );
            let rest = Path::new(container_path).strip_prefix(&m.mount_path).ok()?;
            Some(if rest.as_os_str().is_empty() {
                host.path.clone()
            } else {
                Path::new(&host.path).join(rest).display().to_string()
            })
        })
}

#[test]
fn the_cni_plugin_lands_where_the_runtime_looks_and_reaches_the_agent() {
    let ds: DaemonSet = the("DaemonSet");
    let env = environment(&ds);
    // The agent installs podfence-cni into the node's CNI directories
    // (containerd's and CRI-O's defaults), writable through hostPath.
    for (var, node) in [
        ("PODFENCE_CNI_BIN_DIR", "/opt/cni/bin"),
        ("PODFENCE_CNI_CONF_DIR", "/etc/cni/net.d"),
    ] {
        let dir = env.get(var).unwrap_or_else(|| panic!("{var} is set"));
        assert_eq!(node_path(&ds, dir).as_deref(), Some(node), "{var}");
    }
    // The entry names the agent's socket, and the plugin runs on the node:
    // the socket must be at the same path there.
    let socket = env.get("PODFENCE_CONTROL_SOCKET").map_or(
        podfence_control::agent::control_socket::DEFAULT_PATH,
        String::as_str,
    );
    assert_eq!(node_path(&ds, socket).as_deref(), Some(socket));
    // The plugin's default is that path too.
    assert_eq!(socket, "/run/podfence/control.sock");
}

#[test]
fn a_rollout_starts_the_next_agent_beside_the_old_one() {
    let ds: DaemonSet = the("DaemonSet");
    let strategy = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .expect("an update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    // The next agent compiles while the old one enforces, then takes over
    // through a handover; the old pod goes once the new one is ready.
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    // A host-network pod's container ports are host ports: declared, they
    // would keep the scheduler from placing the next pod beside the old.
    let container = agent(&ds);
    assert!(
        container.ports.as_ref().is_none_or(Vec::is_empty),
        "no container port: {:?}",
        container.ports
    );
    // They meet on the node's control socket and connection table, under
    // one writable host mount.
    let env = environment(&ds);
    for (var, default) in [
        ("PODFENCE_CONTROL_SOCKET", "/run/podfence/control.sock"),
        ("PODFENCE_CONNTRACK_FILE", "/run/podfence/conntrack"),
    ] {
        let path = env.get(var).map_or(default, String::as_str);
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(path).starts_with(&m.mount_path))
            .unwrap_or_else(|| panic!("{path} is not on a mount"));
        assert_ne!(mount.read_only, Some(true), "{path}");
        let volume = pod_spec(&ds)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .expect("the mount's volume");
        assert!(volume.host_path.is_some(), "{path} is on the node");
    }
}
