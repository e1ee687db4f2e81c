//! `cargo xtask vm-test --boot`: a real, booted Debian 12 host with the
//! package. A root file system from Debian's packages (mmdebstrap: systemd,
//! udev, kmod, iproute2, man-db) gets the kernel's modules, two builds of
//! the `.deb` (a version and a higher one), the probe (the `booted_host`
//! test binary) and the units that run it; it becomes an ext4 image that
//! qemu boots with systemd as PID 1. The probe's checks print on the serial
//! console, which is read here: see `tests/tests/booted_host.rs`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    cargo::{fresh_dir, run as run_command, test_executables, workspace_root},
    guest, package, setup,
};

/// Debian's packages the root file system is made of (on top of minbase).
const PACKAGES: &str = "systemd,systemd-sysv,udev,kmod,iproute2,procps,man-db,libgcc-s1";
/// The root file system image's size.
const IMAGE_SIZE: &str = "3G";

/// What the probe reported.
#[derive(Debug, Default)]
struct Report {
    ok: usize,
    failed: Vec<String>,
    figures: Vec<String>,
    /// `stage end` lines seen: 2 when both boots ran their checks.
    stages: usize,
}

pub fn run(kernel: &Path, accel: guest::Accel) -> anyhow::Result<()> {
    let toolchain = setup::run()?;
    setup::vm()?;
    setup::booted()?;
    let release = kernel_release(kernel)?;
    let initrd = Path::new("/boot").join(format!("initrd.img-{release}"));
    let modules = Path::new("/lib/modules").join(&release);
    for needed in [&initrd, &modules] {
        if !needed.exists() {
            bail!(
                "`{}` is missing: the booted host needs the initrd and modules of the kernel it boots; install its package (`apt-get install linux-image-{release}-unsigned`)",
                needed.display()
            );
        }
    }
    let dir = workspace_root().join("target/vm-test/boot");
    std::fs::create_dir_all(&dir)?;
    let version = package::default_version();
    let debs = [
        package::build_deb(toolchain, &version)?,
        package::build_deb(toolchain, &format!("{version}+rebuilt"))?,
    ];
    // The probe: the `booted_host` test binary.
    let [probe] = &test_executables(
        toolchain,
        &["--package", "firewall-tests", "--test", "booted_host"],
    )?[..] else {
        bail!("cargo built more than the booted_host test binary");
    };
    let rootfs = root_file_system(&dir)?;
    customize(&rootfs, &modules, &debs, probe)?;
    let image = dir.join("disk.img");
    let _ = std::fs::remove_file(&image);
    let made = Instant::now();
    run_command(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "fwtest", "-d"])
            .arg(&rootfs)
            .arg(&image)
            .arg(IMAGE_SIZE),
    )
    .context("making the root file system's image")?;
    println!(
        "vm-test: image `{}` made in {:.0} s",
        image.display(),
        made.elapsed().as_secs_f64()
    );

    let mut report = Report::default();
    let booted = Instant::now();
    let ended = guest::with_kvm_or_tcg(
        kernel,
        accel,
        |kvm| qemu(kernel, &initrd, &image, kvm),
        |line| line.contains("Linux version"),
        |line| {
            // The test harness may print its `test ... ` before a line.
            let Some((_, said)) = line.trim().split_once("booted-host: ") else {
                return false;
            };
            if said.starts_with("ok - ") {
                report.ok += 1;
            } else if let Some(check) = said.strip_prefix("FAILED - ") {
                report.failed.push(check.to_string());
            } else if let Some(figure) = said.strip_prefix("figure - ") {
                report.figures.push(figure.to_string());
            } else if said.starts_with("stage end") {
                report.stages += 1;
                // The second boot's end, or a first boot that failed (it
                // does not reboot): the guest has nothing more to say.
                return report.stages == 2 || !report.failed.is_empty();
            }
            false
        },
    )?;
    println!(
        "\nbooted host: {} checks passed, {} failed, {} of 2 boots checked, in {:.0} s ({ended})",
        report.ok,
        report.failed.len(),
        report.stages,
        booted.elapsed().as_secs_f64()
    );
    for figure in &report.figures {
        println!("  {figure}");
    }
    if !report.failed.is_empty() {
        bail!("the booted host failed: {}", report.failed.join("; "));
    }
    if report.stages < 2 {
        bail!("the booted host did not get through both boots; its console is above");
    }
    Ok(())
}

/// `6.1.0-57-amd64` of `/boot/vmlinuz-6.1.0-57-amd64`.
fn kernel_release(kernel: &Path) -> anyhow::Result<String> {
    kernel
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("vmlinuz-"))
        .map(ToString::to_string)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{}` is not named vmlinuz-RELEASE: the booted host needs the initrd and modules of that release",
                kernel.display()
            )
        })
}

/// Debian 12's root file system with [`PACKAGES`], made once and kept in
/// `dir/rootfs` (made again when the list changes).
fn root_file_system(dir: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    let stamp = dir.join("rootfs.packages");
    if rootfs.join("usr/lib/systemd/systemd").exists()
        && std::fs::read_to_string(&stamp).is_ok_and(|made| made == PACKAGES)
    {
        println!(
            "vm-test: reusing the root file system in `{}`",
            rootfs.display()
        );
        return Ok(rootfs);
    }
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)?;
    }
    let made = Instant::now();
    run_command(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--mode=root", "--format=directory"])
            .arg(format!("--include={PACKAGES}"))
            .arg("bookworm")
            .arg(&rootfs),
    )
    .context("mmdebstrap failed (it fetches Debian 12's packages from deb.debian.org)")?;
    std::fs::write(&stamp, PACKAGES)?;
    println!(
        "vm-test: Debian 12 root file system made in {:.0} s",
        made.elapsed().as_secs_f64()
    );
    Ok(rootfs)
}

/// The probe's unit and the lab's, run at every boot.
const LAB_UNIT: &str = "[Unit]
Description=firewall-ctl booted-host test: the lab's namespaces and veth
DefaultDependencies=no
After=local-fs.target systemd-udevd.service
Before=firewall-ctl.service network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/opt/fwtest/booted_host --ignored --exact booted_host_lab --nocapture
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
";

const PROBE_UNIT: &str = "[Unit]
Description=firewall-ctl booted-host test: the checks
# A real host's network service pulls network.target in; nothing else here
# does. The checks begin once the firewall has started (or failed to).
Wants=network.target
After=network.target fwtest-lab.service firewall-ctl.service

[Service]
Type=oneshot
ExecStart=/opt/fwtest/booted_host --ignored --exact booted_host --nocapture --test-threads 1
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
Environment=FIREWALL_CTL_BIN=/usr/sbin/firewall-ctl RUST_BACKTRACE=1
TimeoutStartSec=20min

[Install]
WantedBy=multi-user.target
";

/// The daemon runs in the lab's edge namespace: a drop-in of the test's,
/// not of the package.
const DROP_IN: &str = "[Unit]
After=fwtest-lab.service

[Service]
NetworkNamespacePath=/run/netns/fwboot-edge
";

/// Puts the kernel's modules, the packages, the probe and the units into
/// `rootfs` (anew at every run).
fn customize(rootfs: &Path, modules: &Path, debs: &[PathBuf], probe: &Path) -> anyhow::Result<()> {
    let into = |path: &str| rootfs.join(path.trim_start_matches('/'));
    let lib_modules = into("/lib/modules");
    fresh_dir(&lib_modules)?;
    run_command(Command::new("cp").arg("-a").arg(modules).arg(&lib_modules))?;
    let opt = into("/opt/fwtest");
    fresh_dir(&opt)?;
    for deb in debs {
        std::fs::copy(deb, opt.join(deb.file_name().expect("a file")))?;
    }
    std::fs::copy(probe, opt.join("booted_host"))?;
    let _ = std::fs::remove_file(into("/var/lib/fwtest-stage"));
    let units = into("/etc/systemd/system");
    std::fs::create_dir_all(units.join("multi-user.target.wants"))?;
    std::fs::create_dir_all(units.join("firewall-ctl.service.d"))?;
    for (name, unit) in [
        ("fwtest-lab.service", LAB_UNIT),
        ("fwtest-probe.service", PROBE_UNIT),
    ] {
        std::fs::write(units.join(name), unit)?;
        let wanted = units.join("multi-user.target.wants").join(name);
        let _ = std::fs::remove_file(&wanted);
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{name}"), wanted)?;
    }
    std::fs::write(units.join("firewall-ctl.service.d/fwtest.conf"), DROP_IN)?;
    // No login prompt on the console the host reads.
    let getty = units.join("serial-getty@ttyS0.service");
    let _ = std::fs::remove_file(&getty);
    std::os::unix::fs::symlink("/dev/null", getty)?;
    std::fs::write(
        into("/etc/fstab"),
        "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
    )?;
    std::fs::write(into("/etc/hostname"), "fwtest\n")?;
    if !into("/usr/bin/man").exists() {
        bail!("the root file system has no man(1)");
    }
    Ok(())
}

/// qemu booting `image` with `kernel` and `initrd`, console on stdout.
fn qemu(kernel: &Path, initrd: &Path, image: &Path, kvm: bool) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        if kvm {
            "q35,accel=kvm"
        } else {
            "q35,accel=tcg"
        },
    ])
    .args(["-cpu", if kvm { "host" } else { "max" }])
    .args(["-m", "3G", "-smp", "2", "-nographic", "-nic", "none"])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args([
        "-append",
        "console=ttyS0 root=/dev/vda rw systemd.show_status=false",
    ])
    .arg("-drive")
    .arg(format!("file={},format=raw,if=virtio", image.display()));
    qemu
}
