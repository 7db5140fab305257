//! The `podfence-cni` binary: the runtime's call (environment and standard
//! input) to [`podfence_cni::run`], its answer to standard output.

use std::io::{Read, Write};

fn main() {
    let invocation = podfence_cni::Invocation::from_env();
    let mut stdin = Vec::new();
    let output = match std::io::stdin().take(1 << 20).read_to_end(&mut stdin) {
        Ok(_) => podfence_cni::run(&invocation, &stdin),
        Err(e) => {
            let error = podfence_cni::spec::Error::new(
                podfence_cni::spec::code::IO_FAILURE,
                "cannot read the network configuration",
                e.to_string(),
            );
            podfence_cni::Output {
                stdout: serde_json::to_string(&error).expect("errors serialize"),
                stderr: String::new(),
                success: false,
            }
        }
    };
    if !output.stderr.is_empty() {
        eprintln!("{}", output.stderr);
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(output.stdout.as_bytes());
    let _ = stdout.flush();
    std::process::exit(i32::from(!output.success));
}
