//! The `podfence` binary's contract: output formats and exit statuses
//! (0 success, 1 unusable input, 2 usage error).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")
}

fn podfence(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_podfence"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn probe_answers_in_input_order() {
    let demo = demo();
    let m = demo.to_str().unwrap();
    let out = podfence(
        &["probe", "--manifests", m, "--probes", "-"],
        "# comment\nshop/web\tshop/api\ttcp\t8000\textra\n\nshop/web\tdata/db\tTCP\t5432\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "shop/web\tshop/api\tTCP\t8000\tallow\nshop/web\tdata/db\tTCP\t5432\tdeny\n"
    );
}

#[test]
fn bad_input_is_status_1_and_names_the_culprit() {
    let demo = demo();
    let m = demo.to_str().unwrap();
    let out = podfence(
        &["probe", "--manifests", m, "--probes", "-"],
        "shop/nope\tshop/api\tTCP\t80\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("<stdin>:1: unknown pod shop/nope"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "nothing is answered when a line is bad"
    );
    let out = podfence(&["matrix", "--manifests", "/nonexistent/podfence"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/podfence"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn usage_errors_are_status_2() {
    let demo = demo();
    let m = demo.to_str().unwrap();
    for args in [
        vec![
            "explain",
            "--manifests",
            m,
            "shop/web",
            "shop/api",
            "ICMP",
            "80",
        ],
        vec!["explain", "--manifests", m, "shop/web", "shop/api", "TCP"],
        vec!["matrix", "--manifests", m, "--port", "0"],
        vec!["replay", "--manifests", m],
        vec!["probe", "--probes", "-"],
    ] {
        let out = podfence(&args, "");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn explain_names_policies_and_rule() {
    let demo = demo();
    let m = demo.to_str().unwrap();
    let out = podfence(
        &[
            "explain",
            "--manifests",
            m,
            "shop/api",
            "data/db",
            "tcp",
            "5432",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.starts_with("allow: TCP from shop/api (10.244.1.11) to data/db (10.244.2.20) port 5432"),
        "{s}"
    );
    assert!(s.contains("allowed by data/postgres ingress rule 0"), "{s}");
    assert!(
        s.contains("isolated for egress by shop/api, shop/default-deny"),
        "{s}"
    );
    let out = podfence(
        &[
            "explain",
            "--manifests",
            m,
            "shop/web",
            "data/db",
            "TCP",
            "5432",
        ],
        "",
    );
    let s = text(&out.stdout);
    assert!(s.starts_with("deny:"), "{s}");
    assert!(s.contains("no ingress rule of them allows"), "{s}");
}

#[test]
fn explain_shows_the_tier_chain() {
    let root = podfence_testkit::paths::conformance_dir();
    let cluster = root.join("cluster.yaml");
    let policies = root.join("cases-cnp/925-cnp-pass-delegates-to-networkpolicy/policies.yaml");
    let (cluster, policies) = (cluster.to_str().unwrap(), policies.to_str().unwrap());
    let explain = |src: &str| {
        let out = podfence(
            &[
                "explain",
                "--manifests",
                cluster,
                "--manifests",
                policies,
                src,
                "x/a",
                "TCP",
                "80",
            ],
            "",
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(
            !text(&out.stderr).contains("skipped"),
            "{}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let s = explain("y/a");
    assert!(s.starts_with("deny:"), "{s}");
    assert!(
        s.contains(
            "ingress: passed on — admin tier: ClusterNetworkPolicy/pass-y (priority 10) ingress rule 0 \"pass-from-y\""
        ),
        "{s}"
    );
    assert!(
        s.contains("ingress: deny — destination x/a is isolated for ingress by x/only-y-b"),
        "{s}"
    );
    let s = explain("z/a");
    assert!(
        s.contains(
            "ingress: deny — admin tier: ClusterNetworkPolicy/deny-all-pods (priority 20) ingress rule 0 \"deny-all-pods\""
        ),
        "{s}"
    );
    assert!(explain("y/b").starts_with("allow:"));
}

#[test]
fn matrix_marks_allowed_and_denied() {
    let demo = demo();
    let m = demo.to_str().unwrap();
    let out = podfence(&["matrix", "--manifests", m, "--port", "5432"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let header: Vec<&str> = s.lines().nth(1).unwrap().split('\t').collect();
    let db = header.iter().position(|h| *h == "data/db").unwrap();
    let row = |src: &str| {
        s.lines()
            .find(|l| l.starts_with(&format!("{src}\t")))
            .unwrap()
            .split('\t')
            .nth(db)
            .unwrap()
            .to_owned()
    };
    assert_eq!(row("shop/api"), ".");
    assert_eq!(row("shop/web"), "X");
}

fn services_fixture() -> (String, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/services");
    (
        dir.join("cluster.yaml").to_str().unwrap().to_owned(),
        dir.join("policies.yaml").to_str().unwrap().to_owned(),
    )
}

#[test]
fn probe_answers_a_service_per_backend_in_one_line() {
    let (cluster, policies) = services_fixture();
    let out = podfence(
        &["probe", "--manifests", &cluster, &policies, "--probes", "-"],
        "x/a\tsvc:kube-system/kube-dns\tUDP\t53\n\
         x/a\text:10.244.1.10\tUDP\t53\n\
         x/a\text:10.96.0.10\tudp\t53\n\
         x/a\tsvc:y/web\tTCP\t80\n\
         z/c\tsvc:y/web\tTCP\t80\n\
         z/c\tsvc:y/empty\tTCP\t80\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "x/a\tsvc:kube-system/kube-dns\tUDP\t53\tallow\n\
         x/a\text:10.244.1.10\tUDP\t53\tallow\n\
         x/a\text:10.96.0.10\tUDP\t53\tallow\n\
         x/a\tsvc:y/web\tTCP\t80\tdeny\n\
         z/c\tsvc:y/web\tTCP\t80\tdeny\n\
         z/c\tsvc:y/empty\tTCP\t80\tdeny\n"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("<stdin>:5: Service y/web (frontend 10.96.0.20:80/TCP): 1 of 2 backends allow it; answered deny"),
        "{err}"
    );
    assert!(
        err.contains("<stdin>:6: Service y/empty (frontend 10.96.0.30:80/TCP): no usable endpoint"),
        "{err}"
    );
}

#[test]
fn services_that_cannot_be_probed_are_status_1_and_named() {
    let (cluster, _) = services_fixture();
    for (line, expected) in [
        (
            "x/a\tsvc:y/nope\tTCP\t80\n",
            "<stdin>:1: unknown Service svc:y/nope",
        ),
        (
            "x/a\tsvc:y/web\tUDP\t80\n",
            "<stdin>:1: Service y/web has no port UDP 80 in spec.ports (it has TCP 80 (http))",
        ),
        ("x/a\tsvc:y/headless\tTCP\t80\n", "spec.clusterIP: None"),
        (
            "x/a\tsvc:y/other\tTCP\t80\n",
            "service.kubernetes.io/service-proxy-name=somebody-else",
        ),
        ("svc:y/web\tx/a\tTCP\t80\n", "svc:y/web cannot be a source"),
    ] {
        let out = podfence(&["probe", "--manifests", &cluster, "--probes", "-"], line);
        assert_eq!(out.status.code(), Some(1), "{line}");
        assert!(
            text(&out.stderr).contains(expected),
            "{}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty());
    }
    let out = podfence(
        &[
            "explain",
            "--manifests",
            &cluster,
            "x/a",
            "svc:y/headless",
            "TCP",
            "80",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Service y/headless is not translated"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn explain_names_a_services_backends_and_their_policies() {
    let (cluster, policies) = services_fixture();
    let out = podfence(
        &[
            "explain",
            "--manifests",
            &cluster,
            &policies,
            "x/a",
            "svc:kube-system/kube-dns",
            "UDP",
            "53",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.starts_with("allow: UDP from x/a (10.244.1.1) to Service kube-system/kube-dns (frontend 10.96.0.10:53/UDP): every backend allows it (2 of 2)"),
        "{s}"
    );
    assert!(
        s.contains("policy applies after Service translation"),
        "{s}"
    );
    for backend in [
        "backend kube-system/coredns-1 (10.244.1.10) port 53: allow",
        "backend kube-system/coredns-2 (10.244.2.10) port 53: allow",
    ] {
        assert!(s.contains(backend), "{s}");
    }
    assert!(s.contains("allowed by x/allow-dns egress rule 0"), "{s}");
    // The ClusterIP as an address is the same Service.
    let by_ip = podfence(
        &[
            "explain",
            "--manifests",
            &cluster,
            &policies,
            "x/a",
            "ext:10.96.0.10",
            "UDP",
            "53",
        ],
        "",
    );
    assert_eq!(text(&by_ip.stdout), s);
}

#[test]
fn matrix_shows_services_as_columns_only_when_asked() {
    let (cluster, policies) = services_fixture();
    let plain = podfence(
        &[
            "matrix",
            "--manifests",
            &cluster,
            &policies,
            "--proto",
            "UDP",
            "--port",
            "53",
        ],
        "",
    );
    assert_eq!(plain.status.code(), Some(0), "{}", text(&plain.stderr));
    assert!(
        !text(&plain.stdout).contains("svc:"),
        "{}",
        text(&plain.stdout)
    );
    let out = podfence(
        &[
            "matrix",
            "--manifests",
            &cluster,
            &policies,
            "--proto",
            "UDP",
            "--port",
            "53",
            "--services",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let header: Vec<&str> = s.lines().nth(1).unwrap().split('\t').collect();
    let plain_text = text(&plain.stdout);
    let plain_header: Vec<&str> = plain_text.lines().nth(1).unwrap().split('\t').collect();
    assert_eq!(
        header[..plain_header.len()],
        plain_header[..],
        "Service columns come after the others"
    );
    let cell = |src: &str, dst: &str| {
        let col = header.iter().position(|h| *h == dst).unwrap();
        s.lines()
            .find(|l| l.starts_with(&format!("{src}\t")))
            .unwrap()
            .split('\t')
            .nth(col)
            .unwrap()
            .to_owned()
    };
    assert_eq!(cell("x/a", "svc:kube-system/kube-dns"), ".");
    assert_eq!(cell("x/a", "svc:y/web"), "-", "y/web has no UDP 53");
    assert!(!header.contains(&"svc:y/headless") && !header.contains(&"svc:y/other"));
    let out = podfence(
        &["matrix", "--manifests", &cluster, "--service", "y/web"],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.lines().nth(1).unwrap().ends_with("\tsvc:y/web"), "{s}");
    let out = podfence(
        &["matrix", "--manifests", &cluster, "--service", "y/headless"],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn run_refuses_bad_on_stop_settings_before_touching_the_node() {
    let demo = demo();
    let m = demo.to_str().unwrap();
    // Usage: an unknown mode, a DaemonSet that is no NAMESPACE/NAME.
    for args in [
        vec!["run", "--manifests", m, "--on-stop", "sideways"],
        vec!["run", "--manifests", m, "--daemonset", "podfence"],
    ] {
        let out = podfence(&args, "");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // Unusable: asking the API about the DaemonSet without the API; a
    // connection table's file that cannot be.
    let cases = [
        (
            vec![
                "run",
                "--manifests",
                m,
                "--on-stop",
                "keep",
                "--daemonset",
                "ns/ds",
            ],
            "needs the Kubernetes API",
        ),
        (
            vec![
                "run",
                "--manifests",
                m,
                "--on-stop",
                "keep",
                "--conntrack-file",
                "/proc/podfence/conntrack",
            ],
            "connection table's file",
        ),
    ];
    for (args, says) in cases {
        let out = podfence(&args, "");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
