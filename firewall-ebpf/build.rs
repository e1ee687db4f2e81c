use which::which;

/// The crate links with `bpf-linker`, a dependency cargo cannot see: rebuild
/// when the linker binary changes.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
