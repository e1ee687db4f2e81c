//! Compiles the XDP program (`firewall-ebpf`) for the bpf target; the `datapath` module
//! embeds the object from `OUT_DIR`.

use anyhow::Context as _;

/// Toolchain for the eBPF build: `nightly` (for `-Z build-std`), or another
/// one named here, e.g. `stable` together with `RUSTC_BOOTSTRAP=1`.
const TOOLCHAIN_VAR: &str = "FIREWALL_EBPF_TOOLCHAIN";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_VAR}");
    let toolchain_name = std::env::var(TOOLCHAIN_VAR).ok();
    let toolchain = match toolchain_name.as_deref() {
        None | Some("nightly") => aya_build::Toolchain::Nightly,
        Some(name) => aya_build::Toolchain::Custom(name),
    };
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../firewall-ebpf");
    // aya-build hands every line the nested cargo prints on to cargo as a
    // warning: without this, each build replays some 35 `Compiling ...`
    // lines. Its errors and the compiler's warnings still come through.
    // SAFETY: the build script has no other thread yet.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "firewall-ebpf",
            root_dir,
            ..Default::default()
        }],
        toolchain,
    )
    .context("building the XDP program failed; `cargo xtask setup` installs what it needs")
}
