//! `cargo xtask package`: what operators install, in `target/package/`:
//! the Debian package (built by cargo-deb from the metadata in
//! `firewall-ctl/Cargo.toml`, checked by lintian) and a tarball with one
//! static (musl) binary, the unit, the man pages and the completions.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    cargo::{EbpfToolchain, cargo, fresh_dir, output, run, workspace_root},
    setup,
};

/// `cargo xtask package` options.
#[derive(clap::Args)]
pub struct PackageArgs {
    /// The version to give both [default: the crate's, with `-dirty` on a
    /// tree with uncommitted changes].
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
}

/// What was built.
pub struct Packages {
    pub deb: PathBuf,
    pub tarball: PathBuf,
}

pub fn run_cli(args: &PackageArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let packages = build(args.version.as_deref())?;
    for path in [&packages.deb, &packages.tarball] {
        println!(
            "{} ({:.1} MB)",
            path.display(),
            std::fs::metadata(path)?.len() as f64 / 1e6
        );
    }
    println!("packaged in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The crate's version, with `-dirty` when the tree has uncommitted changes
/// (the packages are then not what any commit builds).
pub fn default_version() -> String {
    let version = env!("CARGO_PKG_VERSION").to_string();
    let dirty = output(
        Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(workspace_root()),
    )
    .is_some_and(|changes| !changes.trim().is_empty());
    if dirty {
        format!("{version}-dirty")
    } else {
        version
    }
}

/// Builds both packages (at `version`, or [`default_version`]).
pub fn build(version: Option<&str>) -> anyhow::Result<Packages> {
    let toolchain = setup::run()?;
    let version = version.map_or_else(default_version, ToString::to_string);
    let deb = build_deb(toolchain, &version)?;
    let assets = workspace_root().join("target/release/package-assets");
    let tarball = static_tarball(toolchain, &version, &assets, &deb_dir())?;
    Ok(Packages { deb, tarball })
}

/// Where the packages go.
fn deb_dir() -> PathBuf {
    workspace_root().join("target/package")
}

/// Builds the Debian package at `version`, checked by lintian.
pub fn build_deb(toolchain: EbpfToolchain, version: &str) -> anyhow::Result<PathBuf> {
    setup::packaging()?;
    if !version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c))
        || !version.starts_with(|c: char| c.is_ascii_digit())
    {
        bail!(
            "`--version {version}` is not a Debian version: digits first, then letters, digits, `.`, `+`, `~` and `-`"
        );
    }
    let out = deb_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating `{}`", out.display()))?;
    println!("xtask package: version {version}");
    // Debian revision 1 unless the version has one (`-dirty`): a package
    // built apart from Debian's sources, whose changelog is then where
    // lintian looks for it (`changelog.Debian.gz`).
    let deb_version = if version.contains('-') {
        version.to_string()
    } else {
        format!("{version}-1")
    };

    run(&mut cargo(
        toolchain,
        &["build", "--release", "--package", "firewall-ctl"],
    ))?;
    let release = workspace_root().join("target/release");
    write_assets(
        &release.join("firewall-ctl"),
        &release.join("package-assets"),
        &deb_version,
    )?;
    let deb = out.join(format!("firewall-ctl_{deb_version}_amd64.deb"));
    run(Command::new("cargo")
        .args([
            "deb",
            "--package",
            "firewall-ctl",
            "--no-build",
            "--deb-version",
            &deb_version,
            "--output",
        ])
        .arg(&deb)
        .current_dir(workspace_root()))
    .context("cargo deb failed")?;
    lintian(&deb)?;
    Ok(deb)
}

/// Man pages, completions and the Debian changelog, made by `binary`
/// (the build being packaged) into `dir`.
fn write_assets(binary: &Path, dir: &Path, version: &str) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let man = dir.join("man");
    run(Command::new(binary).arg("man").arg("--out-dir").arg(&man))?;
    // Compressed, as Debian wants them (`-n`: no name or time inside, so
    // the same pages make the same bytes).
    for page in std::fs::read_dir(&man)? {
        run(Command::new("gzip").args(["-9", "-n"]).arg(page?.path()))?;
    }
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, name) in [
        ("bash", "firewall-ctl.bash"),
        ("zsh", "_firewall-ctl"),
        ("fish", "firewall-ctl.fish"),
    ] {
        let script = Command::new(binary)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("running {} completions {shell}", binary.display()))?;
        if !script.status.success() {
            bail!("`firewall-ctl completions {shell}` failed");
        }
        std::fs::write(completions.join(name), script.stdout)?;
    }
    let date = output(Command::new("date").args(["-R", "-u"])).context("running date")?;
    std::fs::write(
        dir.join("changelog"),
        format!(
            "firewall-ctl ({version}) unstable; urgency=medium\n\n  * Built by `cargo xtask package`; see the README for what changed.\n\n -- firewall-ctl developers <firewall-ctl@lists.example.org>  {}\n",
            date.trim()
        ),
    )?;
    Ok(())
}

/// Runs lintian on `deb`, prints what it says, and fails on an error.
fn lintian(deb: &Path) -> anyhow::Result<()> {
    let checked = Command::new("lintian")
        .args(["--no-tag-display-limit", "--info"])
        .arg(deb)
        .output()
        .context("running lintian")?;
    let said = String::from_utf8_lossy(&checked.stdout);
    println!(
        "lintian: {}",
        if said.trim().is_empty() {
            "nothing to report"
        } else {
            "\n"
        }
    );
    print!("{said}");
    let errors = said.lines().filter(|line| line.starts_with("E:")).count();
    if errors > 0 {
        bail!("lintian reports {errors} error(s) in {}", deb.display());
    }
    Ok(())
}

/// The static build and its tarball: the binary, the unit, the harmless
/// default config and the complete example, man pages and completions.
fn static_tarball(
    toolchain: EbpfToolchain,
    version: &str,
    assets: &Path,
    out: &Path,
) -> anyhow::Result<PathBuf> {
    let mut build = cargo(
        toolchain,
        &[
            "build",
            "--release",
            "--package",
            "firewall-ctl",
            "--target",
            setup::MUSL_TARGET,
        ],
    );
    // ring's C parts, for musl.
    build.env("CC_x86_64_unknown_linux_musl", "musl-gcc");
    run(&mut build)?;
    let binary = workspace_root().join(format!(
        "target/{}/release/firewall-ctl",
        setup::MUSL_TARGET
    ));
    // A static PIE (kept for address space randomisation): ldd says
    // "statically linked" of it, and "not a dynamic executable" of a
    // static binary at a fixed address; either needs no libc at all.
    let linked = Command::new("ldd")
        .arg(&binary)
        .output()
        .context("running ldd")?;
    let said = String::from_utf8_lossy(&linked.stdout).to_string()
        + &String::from_utf8_lossy(&linked.stderr);
    if !said.contains("statically linked") && !said.contains("not a dynamic executable") {
        bail!("the musl build is not static: ldd says {said}");
    }
    println!("ldd {}: {}", binary.display(), said.trim());
    let name = format!("firewall-ctl-{version}-x86_64-linux-musl");
    let staging = out.join(&name);
    fresh_dir(&staging)?;
    let root = workspace_root();
    for (from, to) in [
        (binary, "firewall-ctl"),
        (
            root.join("examples/firewall-ctl.service"),
            "firewall-ctl.service",
        ),
        (root.join("packaging/firewall.toml"), "firewall.toml"),
        (root.join("examples/firewall.toml"), "firewall.toml.example"),
        (root.join("README.md"), "README.md"),
    ] {
        std::fs::copy(&from, staging.join(to))
            .with_context(|| format!("copying `{}`", from.display()))?;
    }
    for dir in ["man", "completions"] {
        run(Command::new("cp")
            .arg("-r")
            .arg(assets.join(dir))
            .arg(&staging))?;
    }
    let tarball = out.join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "-czf"])
        .arg(&tarball)
        .arg("-C")
        .arg(out)
        .arg(&name))?;
    std::fs::remove_dir_all(&staging)?;
    Ok(tarball)
}
