//! Packet rates through veth: firewall-ctl against nftables (netdev
//! ingress, interval set), iptables-legacy raw + ipset hash:net, the
//! minimal XDP LPM allowlist and XDP drop-all, and what each control plane
//! takes to load and change the same list.
//!
//! The generator is an XDP program run with `BPF_PROG_TEST_RUN` in
//! live-frames mode in the lab's peer namespace: each copy of a 54-byte
//! SYN gets the next source of the traffic's list and leaves through a
//! veth whose other end is one system's receiver, in a namespace of its
//! own. Where the kernel refuses live frames (before Linux 5.18, or by
//! policy), an AF_PACKET socket sends the same frames instead, a batch per
//! `sendmmsg`, past the qdisc: slower, so it bounds the faster systems'
//! rates, and the output says which generator ran. Generator and receiver
//! share one CPU (the thread is pinned, and the veth's NAPI runs where the
//! frames were sent), so a rate is what one core does for both: with two,
//! the veth ring overflows and page-pool lock contention decides the
//! result. Delivered frames are counted by the receiving veth, so frames
//! lost on the way are not counted as handled.

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use firewall_tests::{
    addr::{EDGE_IF, EDGE_MAC, EDGE_V4, EDGE_V6, PEER_IF, STRANGER_V4},
    bpf,
    frames::tcp_v4,
    lab::{Lab, NETNS_PREFIX, Netns, veth},
    traffic::PacketSocket,
};

use crate::{
    reference::{self, Program},
    workload::{ControlCost, listed_v4},
};

/// The systems compared, in table order.
pub const SYSTEMS: [&str; 5] = ["firewall-ctl", "nft", "ipset", "minimal-lpm", "drop-all"];
/// The traffic kinds, in table order.
pub const TRAFFIC: [&str; 4] = ["far", "near", "closed", "allowed"];

/// How long the generator sends per measurement.
const RUN_TIME: Duration = Duration::from_millis(250);
/// Frames per `BPF_PROG_TEST_RUN` call.
const CHUNK: u32 = 1 << 16;
/// Each receiver's interface.
const RECEIVER_IF: &str = "rx0";

/// One measured rate.
#[derive(serde::Serialize, Clone)]
pub struct Rate {
    pub system: &'static str,
    pub traffic: &'static str,
    pub prefixes: u32,
    pub mpps: f64,
}

/// Where one system receives: its namespace and interface, and the
/// generator's end of its veth.
struct Receiver {
    system: &'static str,
    namespace: String,
    interface: &'static str,
    /// The generator's end of the receiver's veth, in the lab's peer.
    generator_if: String,
    generator_ifindex: u32,
    /// The XDP program attached to the receiving veth, if the bench
    /// attached it (the daemon attaches its own).
    _program: Option<Program>,
    /// The receiver's namespace, when the bench made it.
    _netns: Option<Netns>,
}

/// The receivers of one size and the generators of each traffic kind.
pub struct RateBench<'lab> {
    lab: &'lab Lab,
    /// IPv4 prefixes of the policy every system holds.
    prefixes: u32,
    receivers: Vec<Receiver>,
    generators: Vec<(&'static str, Generator)>,
    /// Which generator sends: `xdp-live` or `af-packet`.
    pub generator: &'static str,
}

/// What sends one traffic kind's frames.
enum Generator {
    /// The XDP generator in live-frames mode, giving each copy of `frame`
    /// the next source: one core sends tens of millions a second.
    Live { program: Program, frame: Vec<u8> },
    /// A frame per source, sent through an AF_PACKET socket.
    Socket { frames: Vec<Vec<u8>> },
}

impl Generator {
    /// Sends for [`RUN_TIME`] out of `receiver`'s veth, from the calling
    /// thread's namespace; the frames sent and the time it took.
    fn send(&self, receiver: &Receiver) -> anyhow::Result<(u64, Duration)> {
        let started = Instant::now();
        let mut sent = 0u64;
        match self {
            Generator::Live { program, frame } => {
                let fd = program.fd()?;
                while started.elapsed() < RUN_TIME {
                    bpf::test_run_live(fd, frame, receiver.generator_ifindex, CHUNK)?;
                    sent += u64::from(CHUNK);
                }
            }
            Generator::Socket { frames } => {
                let socket = PacketSocket::open(&receiver.generator_if);
                socket.bypass_qdisc()?;
                let mut next = 0;
                while started.elapsed() < RUN_TIME {
                    sent += socket.send_batch(frames, &mut next)? as u64;
                }
            }
        }
        Ok((sent, started.elapsed()))
    }
}

/// Whether the kernel runs XDP programs in live-frames mode: one frame is
/// sent from the lab's peer out of `ifindex` to find out. Refused (EINVAL
/// from a kernel before 5.18, which knows no such flag; EPERM where a
/// policy forbids it), the bench says so and sends through AF_PACKET
/// sockets instead.
fn live_frames(lab: &Lab, ifindex: u32) -> anyhow::Result<bool> {
    let program = reference::generator(&[STRANGER_V4])?;
    let fd = program.fd()?;
    let frame = tcp_v4(STRANGER_V4, 40000);
    match lab
        .peer
        .within(|| bpf::test_run_live(fd, &frame, ifindex, 1))
    {
        Ok(()) => Ok(true),
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::PermissionDenied | ErrorKind::InvalidInput | ErrorKind::Unsupported
            ) =>
        {
            eprintln!(
                "note: the kernel refused XDP live frames ({err}): the rates are sent through AF_PACKET sockets, which bound the faster systems' rates"
            );
            Ok(false)
        }
        Err(err) => Err(err.into()),
    }
}

/// A receiver's namespace, wired to the lab's peer by a veth: the edge's
/// MAC and addresses on `rx0`, so the lab's frames are for it.
fn receiver_netns(lab: &Lab, system: &str) -> (Netns, String) {
    let ns = Netns::create(format!(
        "{NETNS_PREFIX}{}-bench-{system}",
        std::process::id()
    ));
    let generator_if = format!("g-{system}");
    veth(&lab.peer, &generator_if, &ns, RECEIVER_IF);
    let mac = EDGE_MAC.map(|byte| format!("{byte:02x}")).join(":");
    ns.ip("link set lo up");
    ns.ip(&format!("link set {RECEIVER_IF} address {mac}"));
    ns.ip(&format!("addr add {EDGE_V4}/24 dev {RECEIVER_IF}"));
    ns.ip(&format!("addr add {EDGE_V6}/64 dev {RECEIVER_IF} nodad"));
    ns.ip(&format!("link set {RECEIVER_IF} up"));
    lab.peer.ip(&format!("link set {generator_if} up"));
    (ns, generator_if)
}

/// The index of `interface` in `ns`.
fn ifindex(ns: &Netns, interface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(interface)?;
    // SAFETY: a valid C string; looked up in the namespace entered.
    let index = ns.within(|| unsafe { libc::if_nametoindex(name.as_ptr()) });
    if index == 0 {
        bail!("no interface {interface} in {}", ns.name);
    }
    Ok(index)
}

/// Runs `program` (`nft`, `ipset`, `iptables-legacy`) in namespace `ns`;
/// the seconds it took.
fn timed(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(seconds)
}

/// The seconds `program` (`nft` or `ipset`) takes on a file holding `text`.
fn timed_file(
    ns: &str,
    dir: &Path,
    program: &str,
    args: &[&str],
    text: &str,
) -> anyhow::Result<f64> {
    let path = dir.join(format!("{program}.in"));
    std::fs::write(&path, text)?;
    let path = path.to_string_lossy().into_owned();
    let mut args = args.to_vec();
    args.push(&path);
    timed(ns, program, &args)
}

/// nftables: two interval sets and a netdev ingress chain that accepts TCP
/// 443 from them and drops the rest. Loads `sources` (`prefixes` per
/// family), replaces them with `new_sources` and back (one `nft -f` each,
/// atomic), adds one address.
fn nft_receiver(
    ns: &Netns,
    dir: &Path,
    prefixes: u32,
    sources: &[(IpAddr, u8)],
    new_sources: &[(IpAddr, u8)],
) -> anyhow::Result<Vec<ControlCost>> {
    let elements = |sources: &[(IpAddr, u8)], v4: bool| -> String {
        let list: Vec<String> = sources
            .iter()
            .filter(|(address, _)| address.is_ipv4() == v4)
            .map(|(address, len)| format!("{address}/{len}"))
            .collect();
        list.join(", ")
    };
    let fill = |sources: &[(IpAddr, u8)]| {
        format!(
            "add element netdev bench allowed4 {{ {} }}\nadd element netdev bench allowed6 {{ {} }}\n",
            elements(sources, true),
            elements(sources, false)
        )
    };
    let table = format!(
        "table netdev bench {{\n\
         set allowed4 {{ type ipv4_addr; flags interval; }}\n\
         set allowed6 {{ type ipv6_addr; flags interval; }}\n\
         chain ingress {{\n\
         type filter hook ingress device \"{RECEIVER_IF}\" priority 0; policy accept;\n\
         tcp dport 443 ip saddr @allowed4 accept\n\
         tcp dport 443 ip6 saddr @allowed6 accept\n\
         counter drop\n\
         }}\n\
         }}\n"
    );
    let replace = |sources: &[(IpAddr, u8)]| {
        format!(
            "flush set netdev bench allowed4\nflush set netdev bench allowed6\n{}",
            fill(sources)
        )
    };
    let nft = |text: &str| timed_file(&ns.name, dir, "nft", &["-f"], text);
    let start = nft(&(table + &fill(sources)))?;
    netfilter_costs(
        "nft",
        prefixes,
        start,
        sources,
        new_sources,
        |sources| nft(&replace(sources)),
        || {
            timed(
                &ns.name,
                "nft",
                &[
                    "add",
                    "element",
                    "netdev",
                    "bench",
                    "allowed4",
                    "{ 192.0.2.200 }",
                ],
            )
        },
    )
}

/// iptables-legacy raw PREROUTING with ipset hash:net sets: accepts TCP
/// 443 from them, drops the rest. `ipset restore` loads `sources`; a new
/// list is restored into fresh sets swapped in atomically.
fn ipset_receiver(
    ns: &Netns,
    dir: &Path,
    prefixes: u32,
    sources: &[(IpAddr, u8)],
    new_sources: &[(IpAddr, u8)],
) -> anyhow::Result<Vec<ControlCost>> {
    let sets = |suffix: &str, sources: &[(IpAddr, u8)]| {
        let mut text = String::new();
        for (family, v4) in [("inet", true), ("inet6", false)] {
            let name = if v4 { "allowed4" } else { "allowed6" };
            text += &format!(
                "create {name}{suffix} hash:net family {family} hashsize 65536 maxelem 1048576\n"
            );
            for (address, len) in sources
                .iter()
                .filter(|(address, _)| address.is_ipv4() == v4)
            {
                text += &format!("add {name}{suffix} {address}/{len}\n");
            }
        }
        text
    };
    let ipset = |text: &str| timed_file(&ns.name, dir, "ipset", &["restore", "-file"], text);
    let iptables = |args: &str| {
        let args: Vec<&str> = args.split_whitespace().collect();
        timed(&ns.name, "iptables-legacy", &args)
    };
    let started = Instant::now();
    ipset(&sets("", sources))?;
    iptables(&format!(
        "-t raw -A PREROUTING -i {RECEIVER_IF} -p tcp --dport 443 -m set --match-set allowed4 src -j ACCEPT"
    ))?;
    iptables(&format!("-t raw -A PREROUTING -i {RECEIVER_IF} -j DROP"))?;
    let start = started.elapsed().as_secs_f64();
    let replace = |sources: &[(IpAddr, u8)]| {
        let started = Instant::now();
        ipset(&sets("-new", sources))?;
        for name in ["allowed4", "allowed6"] {
            let new = format!("{name}-new");
            timed(&ns.name, "ipset", &["swap", &new, name])?;
            timed(&ns.name, "ipset", &["destroy", &new])?;
        }
        anyhow::Ok(started.elapsed().as_secs_f64())
    };
    netfilter_costs(
        "ipset",
        prefixes,
        start,
        sources,
        new_sources,
        replace,
        || timed(&ns.name, "ipset", &["add", "allowed4", "192.0.2.200"]),
    )
}

/// A netfilter system's control-plane figures at `prefixes`, once it has
/// started (in `start` seconds) on `sources`: `replace` (timed) with the
/// same list, with `new_sources`, and back to the list the rates are
/// measured on; then one `allow`. Its sets live in the kernel, so there is
/// no daemon memory to report.
fn netfilter_costs<'a>(
    system: &'static str,
    prefixes: u32,
    start: f64,
    sources: &'a [(IpAddr, u8)],
    new_sources: &'a [(IpAddr, u8)],
    replace: impl Fn(&'a [(IpAddr, u8)]) -> anyhow::Result<f64>,
    allow: impl FnOnce() -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<ControlCost>> {
    let reload_unchanged = replace(sources)?;
    let reload_new = replace(new_sources)?;
    replace(sources)?;
    let allow = allow()?;
    Ok([
        ("start", start),
        ("reload_unchanged", reload_unchanged),
        ("reload_new", reload_new),
        ("allow", allow),
    ]
    .into_iter()
    .map(|(what, seconds)| ControlCost {
        system,
        what,
        prefixes,
        seconds,
        rss_mb: None,
        peak_rss_mb: None,
    })
    .collect())
}

/// A spread of `count` indexes below `limit` (a multiplicative hash, so
/// neighbouring frames do not hit neighbouring prefixes).
fn spread(limit: u32, count: u32) -> impl Iterator<Item = u32> {
    (0..count).map(move |index| ((u64::from(index) * 2_654_435_761) % u64::from(limit)) as u32)
}

/// The sources of each traffic kind, for the bench's policy of `count` /32s
/// ([`listed_v4`]): far ones in 198.51.100.0/24 and 203.0.113.0/24, near
/// ones between two listed addresses, allowed ones listed.
fn traffic_sources(traffic: &str, count: u32) -> Vec<Ipv4Addr> {
    let samples = count.min(65_536);
    match traffic {
        "near" => spread(count, samples)
            .map(|index| listed_v4(index, 1))
            .collect(),
        "allowed" => spread(count, samples)
            .map(|index| listed_v4(index, 0))
            .collect(),
        _ => spread(512, 512)
            .map(|index| {
                let network = if index < 256 {
                    [198, 51, 100]
                } else {
                    [203, 0, 113]
                };
                Ipv4Addr::new(network[0], network[1], network[2], index as u8)
            })
            .collect(),
    }
}

impl<'lab> RateBench<'lab> {
    /// Sets up every system on the policy `sources` (the daemon already
    /// runs on it in `lab.edge`), and measures the netfilter systems'
    /// control planes on the way.
    pub fn new(
        lab: &'lab Lab,
        sources: &[(IpAddr, u8)],
        new_sources: &[(IpAddr, u8)],
    ) -> anyhow::Result<(RateBench<'lab>, Vec<ControlCost>)> {
        let count = sources
            .iter()
            .filter(|(address, _)| address.is_ipv4())
            .count() as u32;
        let dir = tempfile::tempdir()?;
        let mut receivers = vec![Receiver {
            system: "firewall-ctl",
            namespace: lab.edge.name.clone(),
            interface: EDGE_IF,
            generator_if: PEER_IF.to_owned(),
            generator_ifindex: ifindex(&lab.peer, PEER_IF)?,
            _program: None,
            _netns: None,
        }];
        let mut costs = Vec::new();
        for system in &SYSTEMS[1..] {
            let (ns, generator_if) = receiver_netns(lab, system);
            let mut program = match *system {
                "minimal-lpm" => reference::minimal_lpm(sources)?,
                "drop-all" => reference::drop_all()?,
                _ => reference::pass_all()?,
            };
            ns.within(|| program.attach(RECEIVER_IF))?;
            match *system {
                "nft" => costs.extend(nft_receiver(&ns, dir.path(), count, sources, new_sources)?),
                "ipset" => costs.extend(ipset_receiver(
                    &ns,
                    dir.path(),
                    count,
                    sources,
                    new_sources,
                )?),
                _ => {}
            }
            receivers.push(Receiver {
                system,
                namespace: ns.name.clone(),
                interface: RECEIVER_IF,
                generator_ifindex: ifindex(&lab.peer, &generator_if)?,
                generator_if,
                _program: Some(program),
                _netns: Some(ns),
            });
        }
        let live = live_frames(lab, receivers[0].generator_ifindex)?;
        let generators = TRAFFIC
            .iter()
            .map(|&traffic| {
                let port = if traffic == "closed" { 40000 } else { 443 };
                let sources = traffic_sources(traffic, count);
                let generator = if live {
                    Generator::Live {
                        program: reference::generator(&sources)?,
                        frame: tcp_v4(STRANGER_V4, port),
                    }
                } else {
                    Generator::Socket {
                        frames: sources.iter().map(|&source| tcp_v4(source, port)).collect(),
                    }
                };
                anyhow::Ok((traffic, generator))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok((
            RateBench {
                lab,
                prefixes: count,
                receivers,
                generators,
                generator: if live { "xdp-live" } else { "af-packet" },
            },
            costs,
        ))
    }

    /// Every system and traffic kind `repetitions` times, interleaved; the
    /// median rate of each.
    pub fn measure(&self, repetitions: usize) -> anyhow::Result<Vec<Rate>> {
        let mut samples: Vec<(Rate, Vec<f64>)> = Vec::new();
        for _ in 0..repetitions {
            for (traffic, generator) in &self.generators {
                for receiver in &self.receivers {
                    let mpps = self.rate(receiver, generator)?;
                    match samples.iter_mut().find(|(rate, _)| {
                        rate.system == receiver.system && rate.traffic == *traffic
                    }) {
                        Some((_, list)) => list.push(mpps),
                        None => samples.push((
                            Rate {
                                system: receiver.system,
                                traffic,
                                prefixes: self.prefixes,
                                mpps: 0.0,
                            },
                            vec![mpps],
                        )),
                    }
                }
            }
        }
        Ok(samples
            .into_iter()
            .map(|(rate, mut list)| {
                list.sort_by(f64::total_cmp);
                Rate {
                    mpps: list[list.len() / 2],
                    ..rate
                }
            })
            .collect())
    }

    /// Millions of frames per second `receiver` took in while `generator`
    /// sent for [`RUN_TIME`] on one CPU.
    fn rate(&self, receiver: &Receiver, generator: &Generator) -> anyhow::Result<f64> {
        let before = received(receiver)?;
        let (sent, elapsed) = self
            .lab
            .peer
            .within(|| on_one_cpu(|| generator.send(receiver)))??;
        let delivered = received(receiver)? - before;
        if delivered * 100 < sent * 95 {
            eprintln!(
                "warning: {} received {delivered} of {sent} frames: the rate counts only those",
                receiver.system
            );
        }
        Ok(delivered as f64 / elapsed.as_secs_f64() / 1e6)
    }
}

/// Frames the receiving veth has taken in (its `rx_packets`, which counts
/// redirected frames whatever its XDP program decided).
fn received(receiver: &Receiver) -> anyhow::Result<u64> {
    let output = Command::new("ip")
        .args([
            "-n",
            &receiver.namespace,
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            receiver.interface,
        ])
        .output()?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("reading the counters of {}", receiver.interface))?;
    links[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .with_context(|| format!("no rx packets for {} in {links}", receiver.interface))
}

/// Runs `f` with the calling thread pinned to the first CPU it may use,
/// then lets it run where it could before, also if `f` panics.
fn on_one_cpu<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
    /// Puts the thread's affinity back when dropped.
    struct Restore(libc::cpu_set_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: a valid mask this thread had; affects only it.
            let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.0) };
            if rc != 0 {
                eprintln!(
                    "warning: restoring the bench thread's CPU affinity: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    // SAFETY: plain cpu_set_t manipulation and affinity of this thread.
    let restore = unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let Some(first) =
            (0..libc::CPU_SETSIZE as usize).find(|&cpu| libc::CPU_ISSET(cpu, &allowed))
        else {
            bail!("this thread may run on no CPU");
        };
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(first, &mut one);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
        Restore(allowed)
    };
    let result = f();
    drop(restore);
    Ok(result)
}
