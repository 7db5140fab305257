//! The data shared by several test suites, kept beside the repository in
//! `../shared`: the conformance cases and the capture corpus.

use std::path::{Path, PathBuf};

/// `../shared`, beside the repository.
#[must_use]
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// `../shared/conformance`: the cluster and its cases.
#[must_use]
pub fn conformance_dir() -> PathBuf {
    shared_dir().join("conformance")
}

/// `../shared/corpus/tcpdump-tests`: tcpdump's test captures.
#[must_use]
pub fn tcpdump_corpus_dir() -> PathBuf {
    shared_dir().join("corpus/tcpdump-tests")
}
