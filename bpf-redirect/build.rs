//! Compiles `src/bpf/redirect.bpf.c` with clang and generates its libbpf-rs
//! skeleton (`redirect.skel.rs`) into `OUT_DIR`.
//!
//! libbpf-cargo supplies libbpf's own headers (`bpf/bpf_helpers.h`, ...) from
//! the vendored libbpf-sys. The kernel UAPI headers (`linux/bpf.h`, ...) come
//! from Debian's linux-libc-dev, whose `asm/` directory lives under the
//! multiarch include path, which clang does not search with `-target bpf`.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/redirect.bpf.c";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        "loongarch64" => "loongarch64-linux-gnu",
        other => panic!("podfence-bpf: no Debian multiarch include path known for {other}"),
    };
    let clang = env::var_os("CLANG").unwrap_or_else(|| "clang".into());

    SkeletonBuilder::new()
        .source(SRC)
        .clang(&clang)
        .clang_args([format!("-I/usr/include/{multiarch}"), "-Wall".to_owned()])
        .build_and_generate(out_dir.join("redirect.skel.rs"))
        .unwrap_or_else(|err| {
            panic!(
                "podfence-bpf: building {SRC} failed: {err:#}\n\
                 Needs clang and the kernel UAPI headers (Debian: clang llvm linux-libc-dev); \
                 set CLANG to use another clang."
            )
        });

    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-env-changed=CLANG");
}
