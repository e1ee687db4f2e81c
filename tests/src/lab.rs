//! Network namespaces for one test, removed when the test ends, pass or fail.

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::addr::*;

/// Prefix of every namespace the tests create; `cargo xtask test` removes
/// leftovers of killed runs by it.
pub const NETNS_PREFIX: &str = "fwt-";

/// A network namespace, deleted (with the interfaces in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: String) -> Netns {
        ip(&format!("netns add {name}"));
        Netns { name }
    }

    /// Runs `f` on a thread inside this namespace. Sockets created there
    /// stay in it wherever they are used afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }

    /// Runs `f` on the calling thread moved into this namespace, then moves
    /// the thread back (also if `f` panics): for what must be done there
    /// but returns values that cannot cross threads (attached programs,
    /// loaded objects).
    pub fn within<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Moves the thread back to its namespace when dropped.
        struct Return(File);
        impl Drop for Return {
            fn drop(&mut self) {
                // SAFETY: a valid namespace fd; affects only the calling thread.
                let rc = unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "returning to the thread's namespace: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        let home = Return(
            File::open("/proc/thread-self/ns/net").expect("opening this thread's namespace"),
        );
        enter(&format!("/run/netns/{}", self.name));
        let result = f();
        drop(home);
        result
    }

    /// Runs `ip -n <ns> <args>`, panicking with its stderr on failure.
    pub fn ip(&self, args: &str) {
        ip(&format!("-n {} {args}", self.name));
    }

    /// Whether an XDP program is attached to `interface` in this namespace.
    pub fn xdp_attached(&self, interface: &str) -> bool {
        let output = Command::new("ip")
            .args(["-n", &self.name, "link", "show", interface])
            .output()
            .expect("running ip link show");
        assert!(
            output.status.success(),
            "no interface {interface} in {}",
            self.name
        );
        String::from_utf8_lossy(&output.stdout).contains("xdp")
    }

    /// Whether a BPF program runs on `interface`'s egress as a classic
    /// clsact filter (kernels before TCX, Linux 6.6), as `tc` lists it.
    pub fn tc_egress_filter(&self, interface: &str) -> bool {
        let output = Command::new("tc")
            .args([
                "-n", &self.name, "filter", "show", "dev", interface, "egress",
            ])
            .output()
            .expect("running tc");
        String::from_utf8_lossy(&output.stdout).contains("bpf")
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]));
    }
}

/// Moves the calling thread into the network namespace at `path`. Only for
/// threads made for it: the thread stays there.
pub fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|err| panic!("opening {path}: {err}"));
    // SAFETY: a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("running {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `ip <args>` in the calling namespace, panicking with its stderr.
pub fn ip(args: &str) {
    run(Command::new("ip").args(args.split_whitespace()));
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Creates a veth pair: `left` in `left_ns`, `right` in `right_ns`.
pub fn veth(left_ns: &Netns, left: &str, right_ns: &Netns, right: &str) {
    ip(&format!(
        "link add {left} netns {} type veth peer name {right} netns {}",
        left_ns.name, right_ns.name
    ));
}

/// Two hosts on one veth: `edge` (runs the daemon, interface `edge0`) and
/// `peer` (every other address, interface `peer0`).
pub struct Lab {
    pub edge: Netns,
    pub peer: Netns,
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

impl Lab {
    pub fn new() -> Lab {
        let id = format!(
            "{NETNS_PREFIX}{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        // Each namespace is deleted on drop, also when set-up fails halfway.
        let lab = Lab {
            edge: Netns::create(format!("{id}-edge")),
            peer: Netns::create(format!("{id}-peer")),
        };
        for ns in [&lab.edge, &lab.peer] {
            // Fewer unsolicited packets: the tests count exactly.
            ns.sysctl("net.ipv6.conf.all.accept_ra", "0");
            ns.sysctl("net.ipv6.conf.default.accept_ra", "0");
            ns.ip("link set lo up");
        }
        lab.wire();
        lab
    }

    /// Creates the veth pair between the hosts with their addresses and
    /// routes; again after [`Lab::unwire`], like an interface rebuilt.
    pub fn wire(&self) {
        ip(&format!(
            "link add {EDGE_IF} netns {} address {} type veth peer name {PEER_IF} netns {} address {}",
            self.edge.name,
            mac(EDGE_MAC),
            self.peer.name,
            mac(PEER_MAC)
        ));
        self.edge
            .ip(&format!("addr add {EDGE_V4}/24 dev {EDGE_IF}"));
        self.edge
            .ip(&format!("addr add {EDGE_V6}/64 dev {EDGE_IF} nodad"));
        for v4 in [STRANGER_V4, VENDOR_V4, INNER_V4, OFFICE_V4] {
            let len = if v4 == STRANGER_V4 { 24 } else { 32 };
            self.peer.ip(&format!("addr add {v4}/{len} dev {PEER_IF}"));
        }
        self.peer
            .ip(&format!("addr add {STRANGER_V6}/64 dev {PEER_IF} nodad"));
        self.peer
            .ip(&format!("addr add {VENDOR_V6}/128 dev {PEER_IF} nodad"));
        self.edge.ip(&format!("link set {EDGE_IF} up"));
        self.peer.ip(&format!("link set {PEER_IF} up"));
        // The edge reaches the vendor and office ranges on-link.
        for route in ["203.0.113.0/24", "198.51.100.0/24", "2001:db8:1::/48"] {
            self.edge.ip(&format!("route add {route} dev {EDGE_IF}"));
        }
    }

    /// Deletes the veth pair (both ends go together).
    pub fn unwire(&self) {
        self.edge.ip(&format!("link del {EDGE_IF}"));
    }

    /// Every address the peer can send from.
    pub fn peer_sources() -> [IpAddr; 6] {
        [
            STRANGER_V4.into(),
            VENDOR_V4.into(),
            INNER_V4.into(),
            OFFICE_V4.into(),
            STRANGER_V6.into(),
            VENDOR_V6.into(),
        ]
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

fn mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
