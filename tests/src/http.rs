//! A small HTTP/1.1 server for feed tests: it answers every request with
//! the reply the test set last (status, body, ETag), honours
//! `If-None-Match` with 304, can stall, and counts requests.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::lab::Netns;

/// What the server answers with.
#[derive(Clone, Debug)]
pub enum Reply {
    Body {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
        etag: Option<String>,
    },
    /// Accepts, reads the request, and answers nothing for this long.
    Stall(Duration),
    /// Accepts and closes the connection at once: a server going down.
    Close,
    /// `301 Moved Permanently` to `location` (a path on this server).
    Redirect(String),
}

impl Reply {
    /// 200 with `body`, and an ETag derived from it.
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        let body = body.into();
        Reply::Body {
            status: 200,
            content_type: "application/json",
            etag: Some(format!(
                "\"{:x}\"",
                body.len() * 31 + body.iter().map(|b| *b as usize).sum::<usize>()
            )),
            body,
        }
    }

    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Body {
            status,
            content_type: "text/html",
            body: body.as_bytes().to_vec(),
            etag: None,
        }
    }
}

#[derive(Default)]
struct Shared {
    /// Not listening: connections are refused.
    down: bool,
    reply: Option<Reply>,
    /// Replies by request path, before `reply`.
    paths: std::collections::BTreeMap<String, Reply>,
    requests: usize,
    /// `If-None-Match` of the last request.
    if_none_match: Option<String>,
}

/// A server in a namespace, serving until dropped with the test.
pub struct HttpServer {
    pub address: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

impl HttpServer {
    /// Listens on `address` (port 0 picks one) inside `ns`.
    pub fn start(ns: &Netns, address: SocketAddr) -> HttpServer {
        let listen = move || {
            let listener = TcpListener::bind(address).expect("binding the HTTP server");
            listener.set_nonblocking(true).unwrap();
            listener
        };
        let first = ns.run(listen);
        let address = first.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let serving = shared.clone();
        let netns = format!("/run/netns/{}", ns.name);
        std::thread::spawn(move || {
            crate::lab::enter(&netns);
            let mut listener = Some(first);
            loop {
                let down = serving.lock().unwrap().down;
                if down {
                    // Closed: the kernel refuses connections.
                    listener = None;
                } else if listener.is_none() {
                    let again = TcpListener::bind(address).expect("listening again");
                    again.set_nonblocking(true).unwrap();
                    listener = Some(again);
                }
                match listener.as_ref().map(TcpListener::accept) {
                    Some(Ok((stream, _))) => {
                        stream.set_nonblocking(false).unwrap();
                        let shared = serving.clone();
                        std::thread::spawn(move || serve(stream, &shared));
                    }
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HttpServer { address, shared }
    }

    /// Stops listening (connections are refused), or listens again.
    pub fn set_down(&self, down: bool) {
        self.shared.lock().unwrap().down = down;
        // Past the accept loop's next turn.
        std::thread::sleep(Duration::from_millis(50));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn set(&self, reply: Reply) {
        self.shared.lock().unwrap().reply = Some(reply);
    }

    /// Answers requests for `path` with `reply`, whatever `set` says.
    pub fn set_path(&self, path: &str, reply: Reply) {
        self.shared
            .lock()
            .unwrap()
            .paths
            .insert(path.to_string(), reply);
    }

    pub fn requests(&self) -> usize {
        self.shared.lock().unwrap().requests
    }

    pub fn last_if_none_match(&self) -> Option<String> {
        self.shared.lock().unwrap().if_none_match.clone()
    }
}

fn serve(stream: std::net::TcpStream, shared: &Mutex<Shared>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut if_none_match = None;
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("if-none-match")
        {
            if_none_match = Some(value.trim().to_string());
        }
    }
    let reply = {
        let mut shared = shared.lock().unwrap();
        shared.requests += 1;
        shared.if_none_match = if_none_match.clone();
        shared
            .paths
            .get(&path)
            .cloned()
            .or_else(|| shared.reply.clone())
    };
    let mut stream = stream;
    let (status, content_type, body, etag) = match reply {
        None => (404, "text/plain", b"no reply set".to_vec(), None),
        Some(Reply::Stall(duration)) => {
            std::thread::sleep(duration);
            return;
        }
        Some(Reply::Close) => return,
        Some(Reply::Redirect(location)) => {
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            );
            return;
        }
        Some(Reply::Body {
            status,
            content_type,
            body,
            etag,
        }) => {
            if etag.is_some() && etag == if_none_match {
                (304, content_type, Vec::new(), etag)
            } else {
                (status, content_type, body, etag)
            }
        }
    };
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(etag) = etag {
        head.push_str(&format!("ETag: {etag}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

/// A forward HTTP proxy for `http://` URLs: takes `GET http://host:port/path`,
/// sends it on to the host and relays the answer; counts what it relayed.
pub struct HttpProxy {
    pub address: SocketAddr,
    relayed: Arc<Mutex<usize>>,
}

impl HttpProxy {
    /// Listens on `address` inside `ns`; connects onwards from there too.
    pub fn start(ns: &Netns, address: SocketAddr) -> HttpProxy {
        let listener = ns.run(move || TcpListener::bind(address).expect("binding the proxy"));
        let address = listener.local_addr().unwrap();
        let relayed = Arc::new(Mutex::new(0));
        let counting = relayed.clone();
        let netns = format!("/run/netns/{}", ns.name);
        std::thread::spawn(move || {
            crate::lab::enter(&netns);
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if relay(stream).is_some() {
                    *counting.lock().unwrap() += 1;
                }
            }
        });
        HttpProxy { address, relayed }
    }

    pub fn relayed(&self) -> usize {
        *self.relayed.lock().unwrap()
    }
}

/// Relays one request; `None` if it was not one this proxy takes.
fn relay(client: std::net::TcpStream) -> Option<()> {
    let mut reader = BufReader::new(client.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next()?, parts.next()?);
    let rest = target.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut head = format!(
        "{method} {} HTTP/1.1\r\n",
        if path.is_empty() { "/" } else { path }
    );
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line.trim_end().is_empty() {
            break;
        }
        if !line.to_ascii_lowercase().starts_with("proxy-") {
            head.push_str(&line);
        }
    }
    head.push_str("\r\n");
    let mut upstream = std::net::TcpStream::connect(host).ok()?;
    upstream.write_all(head.as_bytes()).ok()?;
    let mut client = client;
    std::io::copy(&mut upstream, &mut client).ok()?;
    Some(())
}

/// `GET path` from the HTTP server at `address` inside `ns`, closing after
/// the answer: the whole response, head and body.
pub fn get(ns: &Netns, address: SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    ns.run(move || {
        use std::io::Read as _;
        let mut stream = std::net::TcpStream::connect(address).expect("connecting");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
}

/// An HTTPS server in a namespace: `openssl s_server -WWW` serving the
/// files of a directory over TLS, with a certificate for 127.0.0.1 signed
/// by a CA made for this server alone. Stopped on drop.
pub struct HttpsServer {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl HttpsServer {
    /// Serves `files` (name, body) on 127.0.0.1:`port` inside `ns`.
    pub fn start(ns: &Netns, port: u16, files: &[(&str, &[u8])]) -> HttpsServer {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        let openssl = |args: &[&str]| {
            let made = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("running openssl (`cargo xtask setup` installs it)");
            assert!(
                made.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&made.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &key[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=firewall-ctl test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"],
                &key[..],
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName = IP:127.0.0.1\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        let child = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "openssl", "s_server", "-quiet", "-WWW",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .args(["-cert", "server.pem", "-key", "server.key"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting openssl s_server");
        let server = HttpsServer { child, dir, port };
        let listening = crate::daemon::poll(
            Duration::from_secs(10) * crate::slowdown(),
            Duration::from_millis(20),
            || {
                ns.run(move || std::net::TcpStream::connect(("127.0.0.1", port)).ok())
                    .map(|_| ())
            },
        );
        assert!(
            listening.is_some(),
            "openssl s_server did not listen on {port}"
        );
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.port)
    }

    /// The CA that signed the server's certificate, in PEM.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
