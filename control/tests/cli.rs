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
