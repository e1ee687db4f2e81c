//! Real sockets opened inside the lab's namespaces.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::lab::Netns;

/// How long a dropped SYN or datagram is waited for. A packet on a veth
/// arrives in microseconds; this only has to be long enough to be sure.
pub const DROP_WAIT: Duration = Duration::from_millis(1000);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connect {
    Connected,
    /// No answer at all: the SYN (or the SYN-ACK) was dropped.
    TimedOut,
    /// A RST came back: the SYN passed but nothing listens.
    Refused,
}

/// A TCP socket of `address`'s family.
fn tcp_socket(address: SocketAddr) -> Socket {
    Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .expect("TCP socket")
}

/// Listens on `address` in `ns`; the kernel completes handshakes into the
/// backlog, so nothing needs to accept.
pub fn listen_tcp(ns: &Netns, address: SocketAddr) -> TcpListener {
    ns.run(move || {
        let socket = tcp_socket(address);
        socket.set_reuse_address(true).unwrap();
        socket.bind(&address.into()).unwrap();
        socket.listen(128).unwrap();
        socket.into()
    })
}

/// Connects from `source` (an address of `ns`) to `target`.
pub fn connect_tcp(ns: &Netns, source: IpAddr, target: SocketAddr) -> Connect {
    ns.run(move || {
        let socket = tcp_socket(target);
        socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
        match socket.connect_timeout(&target.into(), DROP_WAIT) {
            Ok(()) => Connect::Connected,
            Err(err) if matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                Connect::TimedOut
            }
            Err(err) if err.kind() == ErrorKind::ConnectionRefused => Connect::Refused,
            Err(err) => panic!("connect {source} -> {target}: unexpected {err}"),
        }
    })
}

pub fn bind_udp(ns: &Netns, address: SocketAddr) -> UdpSocket {
    ns.run(move || {
        let socket = UdpSocket::bind(address).unwrap();
        socket.set_read_timeout(Some(DROP_WAIT)).unwrap();
        socket
    })
}

/// Sends one datagram from `source` in `ns` to `receiver`'s address and
/// reports whether `receiver` got it.
pub fn udp_delivered(ns: &Netns, source: IpAddr, receiver: &UdpSocket) -> bool {
    let target = receiver.local_addr().unwrap();
    let payload = format!("from {source}");
    let sent = payload.clone();
    ns.run(move || {
        let socket = UdpSocket::bind(SocketAddr::new(source, 0)).unwrap();
        socket.send_to(sent.as_bytes(), target).unwrap();
    });
    let mut buffer = [0u8; 256];
    match receiver.recv_from(&mut buffer) {
        Ok((len, from)) => {
            assert_eq!(&buffer[..len], payload.as_bytes());
            assert_eq!(from.ip(), source);
            true
        }
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(err) => panic!("recv: {err}"),
    }
}

/// An AF_PACKET socket bound to `interface` of the calling thread's namespace.
pub struct PacketSocket {
    fd: i32,
    address: libc::sockaddr_ll,
}

/// Frames per `sendmmsg` of [`PacketSocket::send_batch`].
const SEND_BATCH: usize = 256;

impl PacketSocket {
    pub fn open(interface: &str) -> PacketSocket {
        // SAFETY: plain socket syscalls; the name is NUL-terminated.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let name = std::ffi::CString::new(interface).unwrap();
            let index = libc::if_nametoindex(name.as_ptr());
            assert!(index != 0, "no interface {interface}");
            let mut address: libc::sockaddr_ll = std::mem::zeroed();
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_ifindex = index as i32;
            address.sll_halen = 6;
            PacketSocket { fd, address }
        }
    }

    /// Sends `frame` exactly as given: no padding, no checksum fixing.
    /// Waits and retries while the device queue is full (`ENOBUFS`), so
    /// every frame is sent exactly once.
    fn send(&self, frame: &[u8]) {
        loop {
            match self.try_send(frame) {
                Ok(()) => return,
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
                Err(err) => panic!("sendto: {err}"),
            }
        }
    }

    /// Sends frames straight to the device, past its queueing discipline,
    /// as a traffic generator does.
    pub fn bypass_qdisc(&self) -> std::io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: an int option of our own socket, its size given.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends up to [`SEND_BATCH`] frames of `frames`, cyclically from
    /// `*next`, in one `sendmmsg`, and moves `*next` past those sent; how
    /// many that was. A full device queue (`ENOBUFS`) sends none.
    pub fn send_batch(&self, frames: &[Vec<u8>], next: &mut usize) -> std::io::Result<usize> {
        let mut vectors: Vec<libc::iovec> = (0..SEND_BATCH)
            .map(|offset| {
                let frame = &frames[(*next + offset) % frames.len()];
                libc::iovec {
                    iov_base: frame.as_ptr().cast_mut().cast(),
                    iov_len: frame.len(),
                }
            })
            .collect();
        let mut messages: Vec<libc::mmsghdr> = vectors
            .iter_mut()
            .map(|vector| {
                // SAFETY: all-zero is a valid msghdr; its name and vector are
                // set next, and it has no control data.
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                header.msg_name = (&self.address as *const libc::sockaddr_ll)
                    .cast_mut()
                    .cast();
                header.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                header.msg_iov = vector;
                header.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: header,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: the messages point at live frames, vectors and address.
        let sent = unsafe { libc::sendmmsg(self.fd, messages.as_mut_ptr(), SEND_BATCH as u32, 0) };
        if sent < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOBUFS) => Ok(0),
                _ => Err(err),
            };
        }
        let sent = sent as usize;
        *next = (*next + sent) % frames.len();
        Ok(sent)
    }

    fn try_send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: the buffer and address outlive the call; sizes are theirs.
        let sent = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        assert_eq!(sent, frame.len() as isize, "sendto sent part of a frame");
        Ok(())
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// Sends raw Ethernet frames out of `interface` in `ns`.
pub fn send_frames(ns: &Netns, interface: &'static str, frames: Vec<Vec<u8>>) {
    ns.run(move || {
        let socket = PacketSocket::open(interface);
        for frame in &frames {
            socket.send(frame);
        }
    });
}

/// Counts the TCP SYNs to `port` that reach the host's stack on an
/// interface, per IPv4 source: an AF_PACKET socket sees a frame only after
/// XDP passed it.
pub struct Sniffer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<SniffedCounts>,
}

/// What a [`Sniffer`] saw.
#[derive(Debug, Default)]
pub struct SniffedCounts {
    /// SYNs per IPv4 source address.
    pub syns: std::collections::HashMap<std::net::Ipv4Addr, u64>,
    /// Frames the kernel dropped because the sniffer's buffer was full; a
    /// count is exact only when this is 0.
    pub missed: u32,
}

impl Sniffer {
    pub fn start(ns: &Netns, interface: &'static str, port: u16) -> Sniffer {
        let path = format!("/run/netns/{}", ns.name);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let (ready, started) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            crate::lab::enter(&path);
            let socket = Socket::new(
                Domain::PACKET,
                Type::RAW,
                Some(Protocol::from((libc::ETH_P_ALL as u16).to_be() as i32)),
            )
            .expect("AF_PACKET socket");
            socket.set_recv_buffer_size(16 << 20).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            socket.bind_device(Some(interface.as_bytes())).unwrap();
            ready.send(()).unwrap();
            let mut counts = SniffedCounts::default();
            let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
            loop {
                match socket.recv(&mut buffer) {
                    Ok(len) => {
                        // SAFETY: recv initialised the first `len` bytes.
                        let frame: Vec<u8> = buffer[..len]
                            .iter()
                            .map(|b| unsafe { b.assume_init() })
                            .collect();
                        if let Some(source) = syn_source(&frame, port) {
                            *counts.syns.entry(source).or_default() += 1;
                        }
                    }
                    Err(err)
                        if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                    {
                        if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                    }
                    Err(err) => panic!("sniffer recv: {err}"),
                }
            }
            counts.missed = packet_drops(&socket);
            counts
        });
        started.recv().expect("the sniffer started");
        Sniffer { stop, thread }
    }

    /// Stops once the interface has been quiet for a moment; returns the counts.
    pub fn finish(self) -> SniffedCounts {
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("sniffer thread")
    }
}

/// The IPv4 source of a TCP SYN (without ACK) to `port` in an Ethernet frame.
fn syn_source(frame: &[u8], port: u16) -> Option<std::net::Ipv4Addr> {
    if frame.len() < 14 + 20 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let header = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 6 || ip.len() < header + 20 {
        return None;
    }
    let tcp = &ip[header..];
    let syn_only = tcp[13] & 0x12 == 0x02;
    (u16::from_be_bytes([tcp[2], tcp[3]]) == port && syn_only)
        .then(|| std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]))
}

/// PACKET_STATISTICS' `tp_drops`: frames lost to a full receive buffer.
fn packet_drops(socket: &Socket) -> u32 {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of the right size.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "PACKET_STATISTICS: {}",
        std::io::Error::last_os_error()
    );
    stats.tp_drops
}

/// Sends `frames` in rounds from `ns` until `stop` is set, pausing
/// `interval` after each round (`Duration::ZERO`: a flood); returns the
/// number of rounds. Runs on its own thread: join the handle.
pub fn stream_frames(
    ns: &Netns,
    interface: &'static str,
    frames: Vec<Vec<u8>>,
    interval: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        crate::lab::enter(&path);
        let socket = PacketSocket::open(interface);
        let mut rounds = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for frame in &frames {
                socket.send(frame);
            }
            rounds += 1;
            if !interval.is_zero() {
                std::thread::sleep(interval);
            }
        }
        rounds
    })
}

/// Serves one TCP connection on `address` in `ns`: echoes what it reads
/// until the client closes its side, then closes. Returns what it echoed.
pub fn echo_tcp_once(ns: &Netns, address: SocketAddr) -> std::thread::JoinHandle<Vec<u8>> {
    let listener = listen_tcp(ns, address);
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        // Long enough for a daemon to start between two messages on an
        // emulated machine (`cargo xtask vm-test`).
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut echoed = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut stream, &mut buffer) {
                Ok(0) | Err(_) => return echoed,
                Ok(len) => {
                    echoed.extend_from_slice(&buffer[..len]);
                    if std::io::Write::write_all(&mut stream, &buffer[..len]).is_err() {
                        return echoed;
                    }
                }
            }
        }
    })
}

/// A TCP connection from `source` (address and port, in `ns`) to `target`,
/// with reads that give up after [`DROP_WAIT`].
pub fn tcp_stream(
    ns: &Netns,
    source: SocketAddr,
    target: SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    ns.run(move || {
        let socket = tcp_socket(target);
        socket.set_reuse_address(true)?;
        socket.bind(&source.into())?;
        socket.connect_timeout(&target.into(), DROP_WAIT)?;
        let stream: std::net::TcpStream = socket.into();
        stream.set_read_timeout(Some(DROP_WAIT))?;
        Ok(stream)
    })
}

/// Answers each datagram to `address` in `ns` with the same bytes, until
/// none arrives for [`DROP_WAIT`] after the first.
pub fn echo_udp(ns: &Netns, address: SocketAddr) -> std::thread::JoinHandle<usize> {
    let socket = bind_udp(ns, address);
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::thread::spawn(move || {
        let mut answered = 0;
        let mut buffer = [0u8; 2048];
        while let Ok((len, from)) = socket.recv_from(&mut buffer) {
            socket.send_to(&buffer[..len], from).unwrap();
            answered += 1;
            socket.set_read_timeout(Some(DROP_WAIT)).unwrap();
        }
        answered
    })
}

/// Pings `target` from `source` in `ns` once (an ICMP or ICMPv6 datagram
/// socket; needs `net.ipv4.ping_group_range` to include root's group);
/// whether the echo reply came back.
pub fn ping(ns: &Netns, source: IpAddr, target: IpAddr) -> bool {
    ns.run(move || {
        let (domain, protocol, request, reply) = match target {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8, 0),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128, 129),
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(protocol)).expect("ping socket");
        socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
        socket.set_read_timeout(Some(DROP_WAIT)).unwrap();
        // Type, code, checksum and identifier are the kernel's to fill.
        let echo = [request, 0, 0, 0, 0, 0, 0, 1, b'f', b'w'];
        socket
            .send_to(&echo, &SocketAddr::new(target, 0).into())
            .unwrap();
        let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 64];
        match socket.recv(&mut buffer) {
            // SAFETY: `recv` initialised the first byte it reports.
            Ok(len) => len > 0 && unsafe { buffer[0].assume_init() } == reply,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(err) => panic!("ping {source} -> {target}: {err}"),
        }
    })
}

/// What passed to the edge while [`syns_through`] streamed.
#[derive(Debug, Clone, Copy)]
pub struct StreamedSyns {
    /// Rounds sent: one SYN from the stranger and one from the vendor each.
    pub rounds: u64,
    pub stranger_passed: u64,
    pub vendor_passed: u64,
}

/// Streams SYNs to 443 from the stranger and the vendor, a round every
/// `interval`, for 300 ms before `during` runs, while it does, and 300 ms
/// after; counts on the edge's interface what passed. The restart tests:
/// whatever `during` does to the daemon, `stranger_passed` must be 0 and
/// `vendor_passed` must be `rounds`.
pub fn syns_through(
    lab: &crate::lab::Lab,
    interval: Duration,
    during: impl FnOnce(),
) -> StreamedSyns {
    use crate::{addr::*, frames::tcp_v4};
    let sniffer = Sniffer::start(&lab.edge, EDGE_IF, 443);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = stream_frames(
        &lab.peer,
        PEER_IF,
        vec![tcp_v4(STRANGER_V4, 443), tcp_v4(VENDOR_V4, 443)],
        interval,
        stop.clone(),
    );
    let pause = || std::thread::sleep(Duration::from_millis(300));
    pause();
    during();
    pause();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = stream.join().expect("the stream's thread");
    let seen = sniffer.finish();
    assert_eq!(
        seen.missed, 0,
        "the sniffer lost frames; its counts prove nothing"
    );
    StreamedSyns {
        rounds,
        stranger_passed: seen.syns.get(&STRANGER_V4).copied().unwrap_or(0),
        vendor_passed: seen.syns.get(&VENDOR_V4).copied().unwrap_or(0),
    }
}
