//! Starting the real `schoolgate serve` on loopback and talking DNS to it.
//!
//! [`Setup`] writes a config and lists into a temporary directory; [`Server`] runs the binary
//! on `127.0.0.1:0`, reads the bound port from its log, and kills the process by its own handle
//! when dropped, so a failing test never leaves a server behind.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{Name, RData, RecordType};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_schoolgate")
}

/// A temporary school: config, lists, state. A server started from it keeps the directory
/// until it stops, so `Setup::new().start(..)` does not delete the files under a running server.
pub struct Setup {
    pub dir: Arc<tempfile::TempDir>,
    server_extra: String,
    logs_extra: String,
    lists_extra: String,
    extra: String,
}

impl Setup {
    /// Categories: illegal (locked, alert), adult, gambling, social_media, circumvention, and
    /// an allow list; one default group blocking all of them.
    pub fn new() -> Self {
        let s = Setup {
            dir: Arc::new(tempfile::tempdir().expect("tempdir")),
            server_extra: String::new(),
            logs_extra: String::new(),
            lists_extra: String::new(),
            extra: String::new(),
        };
        s.list("illegal.txt", "# placeholder\niwf-test.schoolgate.test\n");
        s.list("adult.txt", "pornhub.com\nxvideos.com\n");
        s.list("gambling.txt", "bet365.com\n");
        s.list("social_media.txt", "tiktok.com\ninstagram.com\n");
        s.list("circumvention.txt", "dns.google\ncloudflare-dns.com\n");
        s.list("allow.txt", "childline.org.uk\n");
        s
    }

    /// Writes (or replaces) a list file.
    pub fn list(&self, file: &str, content: &str) -> &Self {
        let dir = self.dir.path().join("blocklists");
        std::fs::create_dir_all(&dir).expect("mkdir blocklists");
        std::fs::write(dir.join(file), content).expect("write list");
        self
    }

    /// Path of a list file.
    pub fn list_path(&self, file: &str) -> PathBuf {
        self.dir.path().join("blocklists").join(file)
    }

    /// Extra lines for the `[server]` table.
    pub fn server(mut self, lines: &str) -> Self {
        self.server_extra.push_str(lines);
        self.server_extra.push('\n');
        self
    }

    /// Extra lines for the `[logs]` table.
    pub fn logs(mut self, lines: &str) -> Self {
        self.logs_extra.push_str(lines);
        self.logs_extra.push('\n');
        self
    }

    /// Extra lines for the `[lists]` table.
    pub fn lists(mut self, lines: &str) -> Self {
        self.lists_extra.push_str(lines);
        self.lists_extra.push('\n');
        self
    }

    /// Extra TOML appended after the categories (groups, clients, sinkhole...).
    pub fn toml(mut self, text: &str) -> Self {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }

    /// The config file path (written on each call).
    /// Where [`Setup::config`] writes the config, for tests that edit it under a running server.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config/schoolgate.toml")
    }

    pub fn config(&self) -> PathBuf {
        let cfg_dir = self.dir.path().join("config");
        std::fs::create_dir_all(&cfg_dir).expect("mkdir config");
        let path = self.config_path();
        let has_default_group = self.extra.contains("[groups.default]");
        let text = format!(
            r#"[server]
listen = ["127.0.0.1:0"]
upstream_timeout_ms = 1000
{server}
[lists]
dir = "../blocklists"
cache_dir = "../state/compiled"
allow = "allow.txt"
{lists}
[logs]
dir = "../state/logs"
{logs}
[[category]]
name = "illegal"
files = ["illegal.txt"]
locked = true
alert = true

[[category]]
name = "adult"
files = ["adult.txt"]

[[category]]
name = "gambling"
files = ["gambling.txt"]

[[category]]
name = "social_media"
files = ["social_media.txt"]

[[category]]
name = "circumvention"
files = ["circumvention.txt"]
{default_group}
{extra}"#,
            server = self.server_extra,
            logs = self.logs_extra,
            lists = self.lists_extra,
            extra = self.extra,
            default_group = if has_default_group {
                ""
            } else {
                "\n[groups.default]\nblock = [\"illegal\", \"adult\", \"gambling\", \"social_media\", \"circumvention\"]\n"
            },
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts `schoolgate serve` forwarding to `upstream`.
    pub fn start(&self, upstream: SocketAddr) -> Server {
        self.start_on("127.0.0.1:0", upstream)
    }

    /// The same, answering on `listen`.
    pub fn start_on(&self, listen: &str, upstream: SocketAddr) -> Server {
        let upstream = upstream.to_string();
        let mut server = Server::start_on(&self.config(), listen, &["--upstream", &upstream]);
        server.dir = Some(self.dir.clone());
        server
    }

    /// Runs another subcommand against this setup's config; returns (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        run(&self.config(), args)
    }
}

/// Runs `schoolgate --config CONFIG ARGS...`.
pub fn run(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run schoolgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `schoolgate serve`.
pub struct Server {
    child: Child,
    /// The address it answers on.
    pub addr: SocketAddr,
    /// The admin (metrics) endpoint.
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    /// The school directory it runs in, removed only after the process is stopped.
    dir: Option<Arc<tempfile::TempDir>>,
}

impl Server {
    /// Starts the server and waits until it says it is ready.
    pub fn start(config: &Path, extra: &[&str]) -> Server {
        Server::start_on(config, "127.0.0.1:0", extra)
    }

    /// The same, answering on `listen`.
    pub fn start_on(config: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(bin())
            .arg("--config")
            .arg(config)
            .arg("serve")
            .args(["--listen", listen, "--admin", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn schoolgate serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut server = Server {
            child,
            addr: "0.0.0.0:0".parse().expect("addr"),
            admin: None,
            log,
            dir: None,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                    }
                    if let Some(rest) = line.split("admin endpoint on http://").nth(1) {
                        server.admin = rest.split('/').next().and_then(|a| a.parse().ok());
                    }
                    if line.trim_end().ends_with(": ready") {
                        break;
                    }
                }
                Err(_) => panic!("server did not become ready:\n{}", server.log()),
            }
        }
        server.addr = addr.expect("server logged its address");
        server
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Waits (up to 15 s) for `needle` in the server's log; fails the test with the log if it
    /// never appears.
    pub fn expect_log(&self, needle: &str) {
        assert!(
            self.wait_for_log(needle, Duration::from_secs(15)),
            "{needle:?} is not in the server's log:\n{}",
            self.log()
        );
    }

    /// The process ID (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to this server only (by PID).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "could not signal server");
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Queries over UDP with EDNS from 127.0.0.1.
    pub fn query(&self, name: &str, rtype: RecordType) -> Message {
        Ask::new(name, rtype).send(self.addr).expect("an answer")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One DNS question and how to ask it.
pub struct Ask {
    name: String,
    rtype: RecordType,
    tcp: bool,
    edns: bool,
    from: IpAddr,
    timeout: Duration,
    options: Vec<EdnsOption>,
}

impl Ask {
    /// UDP, EDNS, from 127.0.0.1, 3 s timeout.
    pub fn new(name: &str, rtype: RecordType) -> Self {
        Ask {
            name: name.to_string(),
            rtype,
            tcp: false,
            edns: true,
            from: IpAddr::from([127, 0, 0, 1]),
            timeout: Duration::from_secs(3),
            options: Vec::new(),
        }
    }

    /// Over TCP.
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// Without EDNS.
    pub fn no_edns(mut self) -> Self {
        self.edns = false;
        self
    }

    /// From another loopback address (127.0.0.2 ...), as a different device.
    pub fn from(mut self, ip: &str) -> Self {
        self.from = ip.parse().expect("source ip");
        self
    }

    /// Adds an EDNS option (Client Subnet, dnsmasq `add-mac`), as a forwarder would.
    pub fn edns_option(mut self, option: EdnsOption) -> Self {
        self.options.push(option);
        self
    }

    /// How long to wait.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The encoded query.
    pub fn bytes(&self) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = rand_id();
        m.metadata.recursion_desired = true;
        let name = Name::from_ascii(format!("{}.", self.name.trim_end_matches('.'))).expect("name");
        m.add_query(Query::query(name, self.rtype));
        if self.edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            for o in &self.options {
                e.options_mut().insert(o.clone());
            }
            m.set_edns(e);
        }
        m.to_vec().expect("encode")
    }

    /// The source address to use towards `server` (IPv6 loopback for an IPv6 server).
    fn source_towards(&self, server: SocketAddr) -> IpAddr {
        match (server, self.from) {
            (SocketAddr::V6(_), IpAddr::V4(_)) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            _ => self.from,
        }
    }

    /// Sends and returns the answer, or `None` on timeout.
    pub fn send(&self, server: SocketAddr) -> Option<Message> {
        let bytes = self.bytes();
        let reply = if self.tcp {
            raw_tcp_from(server, self.source_towards(server), &bytes, self.timeout)?
        } else {
            raw_udp_from(server, self.source_towards(server), &bytes, self.timeout)?
        };
        Some(Message::from_vec(&reply).expect("decodable answer"))
    }
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos()
        & 0xFFFF) as u16
}

/// Sends raw bytes over UDP from 127.0.0.1; returns the reply bytes.
pub fn raw_udp(server: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    raw_udp_from(server, IpAddr::from([127, 0, 0, 1]), bytes, timeout)
}

fn raw_udp_from(
    server: SocketAddr,
    from: IpAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind(SocketAddr::new(from, 0)).expect("bind client");
    sock.set_read_timeout(Some(timeout)).expect("timeout");
    sock.send_to(bytes, server).expect("send");
    let mut buf = vec![0u8; 65535];
    let (len, _) = sock.recv_from(&mut buf).ok()?;
    buf.truncate(len);
    Some(buf)
}

/// Sends raw bytes over TCP (length-prefixed); returns the reply bytes.
pub fn raw_tcp(server: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let from = match server {
        SocketAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
        SocketAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    };
    raw_tcp_from(server, from, bytes, timeout)
}

/// Sends raw bytes over TCP from a chosen loopback address (a different device).
fn raw_tcp_from(
    server: SocketAddr,
    from: IpAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        None,
    )
    .ok()?;
    sock.bind(&SocketAddr::new(from, 0).into()).ok()?;
    sock.connect_timeout(&server.into(), timeout).ok()?;
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// The addresses in an answer, as strings.
pub fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// CNAME targets in an answer.
pub fn cnames(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::CNAME(c) => Some(c.0.to_ascii().trim_end_matches('.').to_string()),
            _ => None,
        })
        .collect()
}

/// The Extended DNS Error text, if any.
pub fn ede_text(m: &Message) -> Option<String> {
    let edns = m.edns.as_ref()?;
    edns.options().options.iter().find_map(|(code, opt)| {
        if u16::from(*code) != 15 {
            return None;
        }
        match opt {
            hickory_proto::rr::rdata::opt::EdnsOption::Unknown(_, data) if data.len() >= 2 => {
                Some(String::from_utf8_lossy(&data[2..]).into_owned())
            }
            _ => None,
        }
    })
}

/// Runs `dig` against the server (installed by `.ci/run`).
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tries=1", "+time=3"])
        .args(args)
        .output()
        .expect("dig is installed (apt-get install dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
