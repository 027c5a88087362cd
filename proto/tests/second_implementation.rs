//! The committed test vectors are checked by an independent implementation
//! (`testvectors/check.py`: hand-written protobuf parsing and RFC 9180 HPKE
//! over Python's `cryptography` primitives), so the Rust encoding is proven
//! interoperable, not just self-consistent.

use std::process::Command;

#[test]
fn python_implementation_accepts_the_vectors() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testvectors/check.py");
    let output = match Command::new("python3").arg(script).output() {
        Ok(output) => output,
        Err(error) => panic!("python3 is needed to cross-check the test vectors: {error}"),
    };
    assert!(
        output.status.success(),
        "check.py failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
