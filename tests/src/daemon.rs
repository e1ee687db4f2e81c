//! The real `firewall-ctl` binary: a daemon in the lab's edge namespace and
//! CLI calls against its socket.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

use crate::lab::Netns;

/// Path of the binary under test: `FIREWALL_CTL_BIN` (set by `cargo xtask
/// test`), else the workspace's debug build.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("FIREWALL_CTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/firewall-ctl")
        });
    assert!(
        path.exists(),
        "{} does not exist: run `cargo xtask test`, or `cargo build -p firewall-ctl` first",
        path.display()
    );
    path
}

/// Runs the CLI with `args` in the host namespace.
pub fn ctl(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("running firewall-ctl")
}

/// Runs `firewall-ctl <args>` in `ns` under `wrapper` (e.g. `setpriv ...`)
/// and waits for it: for invocations expected to exit on their own.
pub fn run_in(ns: &Netns, wrapper: &[&str], args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(wrapper)
        .arg(binary())
        .args(args)
        .output()
        .expect("running firewall-ctl in a namespace")
}

/// One request line of the control protocol for `command` (its JSON).
pub fn request_line(command: Value) -> Vec<u8> {
    let mut line =
        serde_json::to_vec(&serde_json::json!({"version": 3, "command": command})).unwrap();
    line.push(b'\n');
    line
}

/// The `index`th of the heavy reads a reader can ask for, in turn:
/// `stats --entries`, `list` and `audit log` (its commands' JSON).
pub fn heavy_read(index: usize) -> Value {
    match index % 3 {
        0 => serde_json::json!({"entries": {"rule": null}}),
        1 => serde_json::json!({"list": {"rule": null}}),
        _ => serde_json::json!({"audit_log": {"since": null}}),
    }
}

/// Sends `line` on `stream` and returns the answer line (empty if the
/// daemon closed the connection without one).
pub fn exchange(stream: &mut std::os::unix::net::UnixStream, line: &[u8]) -> String {
    use std::io::{BufRead as _, Write as _};
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(line).unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .unwrap();
    answer
}

/// Waits `interval`, then calls `probe`, until it returns `Some` or
/// `timeout` has passed (`None`). Waiting first means two probes are always
/// at least `interval` apart.
pub fn poll<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        std::thread::sleep(interval);
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// A BPF file system mounted for one daemon's pins, outside `/sys` (which
/// `ip netns exec` replaces), so the pins outlive a daemon's restart.
/// Unmounted on drop, which releases everything pinned in it.
pub struct BpfFs {
    pub path: PathBuf,
}

impl BpfFs {
    pub fn mount(path: PathBuf) -> BpfFs {
        std::fs::create_dir_all(&path).unwrap();
        let output = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .output()
            .expect("running mount");
        assert!(
            output.status.success(),
            "mounting a BPF file system at {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        BpfFs { path }
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// A running daemon; stopped with SIGTERM on drop, and its pinned firewall
/// removed with its BPF file system.
pub struct Daemon {
    child: Option<Child>,
    _bpffs: BpfFs,
    dir: TempDir,
    ns: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// `--state-dir`: runtime entries and the audit log.
    pub state_dir: PathBuf,
    /// `--bpf-dir`: the pinned maps and links.
    pub bpf_dir: PathBuf,
    /// Extra environment for the daemon (`NOTIFY_SOCKET`, ...).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// Writes `config` (TOML) and starts the daemon on it in namespace
    /// `ns`; returns once it answers on its socket.
    pub fn start(ns: &Netns, config: &str) -> Daemon {
        let mut daemon = Daemon::prepare(ns, config);
        daemon.spawn_and_wait();
        daemon
    }

    /// Writes `config` in a fresh directory without starting anything, so a
    /// test can set up files (a state file, a socket path) first.
    pub fn prepare(ns: &Netns, config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        // Other users may reach the socket inside; its own mode and ACL decide.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let config_path = dir.path().join("firewall.toml");
        std::fs::write(&config_path, config).unwrap();
        let bpffs = BpfFs::mount(dir.path().join("bpf"));
        Daemon {
            child: None,
            ns: ns.name.clone(),
            config: config_path,
            socket: dir.path().join("ctl.sock"),
            state_dir: dir.path().join("state"),
            bpf_dir: bpffs.path.join("firewall-ctl"),
            env: Vec::new(),
            _bpffs: bpffs,
            dir,
        }
    }

    /// Starts the prepared (or stopped) daemon; returns once it answers.
    pub fn spawn_and_wait(&mut self) {
        self.spawn();
        let answered = poll(Duration::from_secs(20), Duration::from_millis(50), || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "daemon exited with {status} during start-up:\n{}",
                    self.log()
                );
            }
            self.try_json(&["status"])
        });
        assert!(
            answered.is_some(),
            "daemon did not answer within 20 s:\n{}",
            self.log()
        );
    }

    /// Starts the daemon and waits for it to exit; for configs it must refuse.
    pub fn start_expecting_failure(ns: &Netns, config: &str) -> (i32, String) {
        Daemon::prepare(ns, config).run_expecting_failure()
    }

    /// Starts the prepared daemon and waits for it to exit.
    pub fn run_expecting_failure(&mut self) -> (i32, String) {
        self.spawn();
        let status = self.child.take().unwrap().wait().unwrap();
        (status.code().unwrap_or(-1), self.log())
    }

    /// Starts the daemon process without waiting for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        // Appended: a restarted daemon adds to the same log.
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        // `ip netns exec` execs the daemon, so signals reach it directly.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(binary())
            .args(["daemon", "--config"])
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--bpf-dir")
            .arg(&self.bpf_dir)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning the daemon");
        self.child = Some(child);
    }

    /// Waits up to `timeout` for the daemon to exit on its own; its exit
    /// code, or `None` if it still runs.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("the daemon was started");
        let status = poll(timeout, Duration::from_millis(20), || {
            child.try_wait().unwrap()
        })?;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// Runs `firewall-ctl detach` on this daemon's firewall (stopping the
    /// daemon if it runs) with extra `args`; returns its stdout.
    pub fn detach(&mut self, args: &[&str]) -> String {
        let bpf_dir = self.bpf_dir.to_str().unwrap();
        let output = self.ctl(&[&["detach", "--bpf-dir", bpf_dir][..], args].concat());
        assert!(
            output.status.success(),
            "detach failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if let Some(mut child) = self.child.take() {
            // Stopped by `detach`; reap it.
            let status = child.wait().unwrap();
            assert_eq!(status.code(), Some(0), "{}", self.log());
        }
        String::from_utf8(output.stdout).unwrap()
    }

    /// Sends `signal` and waits for the daemon to exit; it can be started
    /// again with [`Daemon::spawn_and_wait`], on the same files.
    pub fn kill(&mut self, signal: i32) -> i32 {
        self.signal(signal);
        let status = self.child.take().unwrap().wait().unwrap();
        status.code().unwrap_or(-1)
    }

    /// The daemon's process id (`ip netns exec` execs the daemon).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon runs").id()
    }

    /// A line of the daemon's `/proc/PID/status` in kB (`VmHWM`, `VmRSS`).
    pub fn memory_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {field} in the daemon's status"))
    }

    /// Resets the daemon's peak resident set size (`VmHWM`) to its current one.
    pub fn reset_peak_memory(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
    }

    /// File descriptors the daemon has open.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// The directory holding the daemon's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs `firewall-ctl --socket <ours> <args>`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_with_env(&[], args)
    }

    /// Runs `firewall-ctl --socket <ours> <args>` with extra environment
    /// variables (`SSH_CONNECTION`, ...).
    pub fn ctl_with_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        Command::new(binary())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("running firewall-ctl")
    }

    /// Runs the CLI and returns its stdout, failing the test (with the
    /// daemon's log) if it does not succeed.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let output = self.ctl(args);
        assert!(
            output.status.success(),
            "firewall-ctl {args:?} failed: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs the CLI expecting it to fail with exit code `code` (one of
    /// [`crate::exit`]), and returns its stderr.
    pub fn ctl_err(&self, args: &[&str], code: i32) -> String {
        let output = self.ctl(args);
        assert_eq!(
            output.status.code(),
            Some(code),
            "firewall-ctl {args:?} should fail with {code}; stdout: {}; stderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stderr).unwrap()
    }

    pub fn try_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let output = self.ctl(&all);
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).expect("--json output is JSON"))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        self.try_json(args)
            .unwrap_or_else(|| panic!("firewall-ctl {args:?} failed; daemon log:\n{}", self.log()))
    }

    /// `explain <args> --json`, checking its exit code: 0 when the packet
    /// passes, 4 when the policy drops it.
    pub fn explain(&self, args: &[&str]) -> Value {
        let output = self.ctl(&[&["explain"][..], args, &["--json"]].concat());
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "explain {args:?}: {err}: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let expected = if report["verdict"] == "pass" { 0 } else { 4 };
        assert_eq!(output.status.code(), Some(expected), "{report}");
        report
    }

    /// The records of `audit log --json`, oldest first.
    pub fn audit(&self) -> Vec<Value> {
        self.json(&["audit", "log"])["records"]
            .as_array()
            .expect("audit records")
            .clone()
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    pub fn stats(&self) -> Stats {
        Stats(self.json(&["stats"]))
    }

    /// Stats once they stop changing: packets sent just before may still be
    /// in flight (veth delivers in a softirq after `sendto` returns).
    pub fn settled_stats(&self) -> Stats {
        let mut last = self.stats();
        let settled = poll(Duration::from_secs(1), Duration::from_millis(20), || {
            let now = self.stats();
            let same = now.0 == last.0;
            last = now;
            same.then(|| last.clone())
        });
        settled.unwrap_or_else(|| panic!("counters kept changing for a second: {last:?}"))
    }

    /// Replaces the config file and sends SIGHUP; returns once the daemon
    /// has either applied or rejected it.
    pub fn reload(&self, config: &str) -> Value {
        std::fs::write(&self.config, config).unwrap();
        self.reload_with_signal()
    }

    /// Sends SIGHUP; returns the status once the daemon has either applied
    /// or rejected whatever is at the config path.
    pub fn reload_with_signal(&self) -> Value {
        let attempts = |status: &Value| {
            status["reloads"].as_u64().unwrap() + status["reloads_rejected"].as_u64().unwrap()
        };
        let before = attempts(&self.status());
        self.signal(libc::SIGHUP);
        let status = poll(Duration::from_secs(10), Duration::from_millis(20), || {
            let status = self.status();
            (attempts(&status) > before).then_some(status)
        });
        status.unwrap_or_else(|| panic!("no reload within 10 s:\n{}", self.log()))
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// `stats --json`, with accessors that fail loudly on a missing field.
#[derive(Clone, Debug)]
pub struct Stats(pub Value);

impl Stats {
    pub fn drops(&self, reason: &str) -> u64 {
        self.0["drops"][reason]
            .as_u64()
            .unwrap_or_else(|| panic!("no drop reason {reason}: {}", self.0))
    }

    pub fn drop_bytes(&self, reason: &str) -> u64 {
        self.0["drop_bytes"][reason].as_u64().unwrap()
    }

    pub fn passed(&self, reason: &str) -> u64 {
        self.0["passed"][reason]
            .as_u64()
            .unwrap_or_else(|| panic!("no pass reason {reason}: {}", self.0))
    }

    /// `(packets, bytes)` of the rule named `name`.
    pub fn rule(&self, name: &str) -> (u64, u64) {
        let rule = self.0["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| rule["name"] == name)
            .unwrap_or_else(|| panic!("no rule {name}: {}", self.0));
        (
            rule["packets"].as_u64().unwrap(),
            rule["bytes"].as_u64().unwrap(),
        )
    }

    /// Packets passed for `reason` since `before`.
    pub fn passed_since(&self, before: &Stats, reason: &str) -> u64 {
        self.passed(reason) - before.passed(reason)
    }

    /// Asserts the drop counters changed since `before` by exactly
    /// `expected` (reason, packets) and no other drop reason moved.
    pub fn assert_drops_since(&self, before: &Stats, expected: &[(&str, u64)]) {
        for (reason, count) in before.all_drops() {
            let delta = self.drops(&reason) - count.as_u64().unwrap();
            let want = expected
                .iter()
                .find(|(name, _)| *name == reason)
                .map_or(0, |(_, n)| *n);
            assert_eq!(
                delta, want,
                "drop reason {reason}: before {before:?} after {self:?}"
            );
        }
    }

    /// Every drop reason's packet count, for "nothing else changed" checks.
    pub fn all_drops(&self) -> serde_json::Map<String, Value> {
        self.0["drops"].as_object().unwrap().clone()
    }
}
