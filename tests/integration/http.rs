//! A tiny HTTP server on loopback that serves one list, for remote-source tests. What it
//! answers can be changed while it runs, and dropping it stops it (the port then refuses).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the server answers.
#[derive(Clone)]
pub enum Reply {
    /// 200 with this body.
    Body(String),
    /// This status and no body.
    Status(u16),
}

/// A running list server.
pub struct ListServer {
    pub addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ListServer {
    /// Serves `body` at every path.
    pub fn start(body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind list server");
        let addr = listener.local_addr().expect("addr");
        let reply = Arc::new(Mutex::new(Reply::Body(body.to_string())));
        let served = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, n, st) = (reply.clone(), served.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let reply = r.lock().expect("reply").clone();
                    answer(conn, &reply);
                    n.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        ListServer {
            addr,
            reply,
            served,
            stop,
            thread: Some(thread),
        }
    }

    /// The list's URL.
    pub fn url(&self) -> String {
        format!("http://{}/list.txt", self.addr)
    }

    /// Changes what is served from now on.
    pub fn set(&self, reply: Reply) {
        *self.reply.lock().expect("reply") = reply;
    }

    /// Requests answered so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for ListServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(mut conn: TcpStream, reply: &Reply) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let (status, body) = match reply {
        Reply::Body(b) => (200, b.as_str()),
        Reply::Status(s) => (*s, ""),
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body.as_bytes());
}
