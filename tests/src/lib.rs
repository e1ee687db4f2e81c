//! Helpers for firewall-ctl's end-to-end tests: a lab of network namespaces
//! joined by a veth pair, the real daemon running in the edge namespace,
//! real sockets and crafted frames sent from the peer namespace.
//!
//! Only documentation address ranges are used, and only inside the lab.

pub mod bpf;
pub mod daemon;
pub mod frames;
pub mod http;
pub mod lab;
pub mod traffic;
pub mod users;

/// The vendor may reach 443 and UDP 4500; the office and the vendor's
/// 203.0.113.64/26 may reach 22 (the issue's overlap example).
pub fn config(mode: &str) -> String {
    format!(
        r#"
interfaces = ["edge0"]
xdp_mode = "{mode}"

[[rules]]
name = "vendor"
ports = ["tcp/443", "udp/4500"]
sources = ["203.0.113.0/24", "2001:db8:1::/48"]

[[rules]]
name = "office-ssh"
ports = ["tcp/22"]
sources = ["203.0.113.64/26", "198.51.100.0/24"]
"#
    )
}

/// Whether the tests can run; if not, says why so a skip is never silent.
/// CI runs as root, where these tests always run.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!(
            "SKIPPED {test}: needs root (network namespaces, BPF maps and XDP); run `cargo xtask test` as root"
        );
    }
    root
}

/// The start of an end-to-end test: a fresh lab, or, when not root, a
/// return from the test (having said it skips).
#[macro_export]
macro_rules! lab_or_skip {
    ($test:expr) => {
        if $crate::root_or_skip($test) {
            $crate::lab::Lab::new()
        } else {
            return;
        }
    };
}

/// How many times slower than a real host this machine runs the daemon:
/// `FIREWALL_TEST_SLOWDOWN`, 1 if unset. `cargo xtask vm-test` sets it for
/// a guest under TCG, whose emulated CPUs run the daemon several times
/// slower. Only durations are scaled by it: bounds that stand for a real
/// deadline (the watchdog's, a helper server's start) and the timeouts a
/// test configures so that its steps fit inside them. What a test counts
/// is never relaxed.
pub fn slowdown() -> u32 {
    std::env::var("FIREWALL_TEST_SLOWDOWN")
        .ok()
        .and_then(|factor| factor.parse().ok())
        .filter(|factor| *factor >= 1)
        .unwrap_or(1)
}

/// The CLI's exit codes (the README's table): its own failures, then one
/// per kind of error the daemon answers with.
pub mod exit {
    pub const FAILED: i32 = 1;
    pub const PENDING: i32 = 3;
    pub const INVALID_INPUT: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 6;
    pub const CONFLICT: i32 = 7;
    pub const NOT_FOUND: i32 = 8;
    pub const UNAVAILABLE: i32 = 9;
    pub const INTERNAL: i32 = 10;
}

/// Addresses inside the lab. The edge host runs the daemon; the peer host
/// holds every other address, so one veth carries all traffic.
pub mod addr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    /// `ip` and `port` as one socket address.
    pub fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
        SocketAddr::new(ip.into(), port)
    }

    pub const EDGE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    pub const EDGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    /// In no rule.
    pub const STRANGER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
    pub const STRANGER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
    /// A vendor's egress range 203.0.113.0/24 and 2001:db8:1::/48.
    pub const VENDOR_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    pub const VENDOR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
    /// Inside 203.0.113.64/26, the nested prefix of the overlap example.
    pub const INNER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 70);
    /// The office, 198.51.100.0/24.
    pub const OFFICE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    pub const EDGE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    pub const EDGE_IF: &str = "edge0";
    pub const PEER_IF: &str = "peer0";
}
