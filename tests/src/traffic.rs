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
struct PacketSocket {
    fd: i32,
    address: libc::sockaddr_ll,
}

impl PacketSocket {
    fn open(interface: &str) -> PacketSocket {
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

/// Sends `frames` over and over from `ns` until `stop` is set; returns how
/// many rounds were sent. Runs on its own thread: join the handle.
pub fn flood_frames(
    ns: &Netns,
    interface: &'static str,
    frames: Vec<Vec<u8>>,
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
        }
        rounds
    })
}
