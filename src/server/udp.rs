//! Batched datagram I/O: many UDP datagrams per system call with `recvmmsg(2)` and
//! `sendmmsg(2)`.
//!
//! Under load, one `recvfrom` and one `sendto` per query put over half of the server's CPU time
//! in the kernel; moving a whole batch per call spreads that cost over the batch. Buffers,
//! addresses, `iovec`s and `mmsghdr`s are allocated once per socket loop and reused, never per
//! packet.
//!
//! Linux only, the platform schoolgate ships on: these calls and their `libc` signatures are
//! Linux's.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Bytes of address space the kernel may write per datagram.
const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// `SO_MEMINFO` (asm-generic/socket.h; sparc numbers it apart); the libc crate does not export it
/// for Linux.
#[cfg(not(target_arch = "sparc64"))]
const SO_MEMINFO: libc::c_int = 55;
#[cfg(target_arch = "sparc64")]
const SO_MEMINFO: libc::c_int = 0x39;

/// Datagrams the kernel dropped on their way to `sock` since it was opened, because its receive
/// buffer was full while the server was busy or paused; 0 if the kernel will not say.
pub fn dropped(sock: &UdpSocket) -> u64 {
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes of u32 counters into `info`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let at = libc::SK_MEMINFO_DROPS as usize;
    if r != 0 || (len as usize) < (at + 1) * 4 {
        return 0;
    }
    u64::from(info[at])
}

/// One received datagram.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The payload (only its start if `truncated`).
    pub data: &'a [u8],
    /// Who sent it.
    pub src: SocketAddr,
    /// The datagram was longer than its buffer and was cut off.
    pub truncated: bool,
}

/// Receive buffers for up to `count` datagrams of up to `size` bytes each.
pub struct RecvBatch {
    data: Box<[u8]>,
    size: usize,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    len: usize,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` are only ever aimed at `data`, `addrs` and
// `iovs`, owned by the same value, and re-aimed before every call; nothing else holds them, so
// the value can move between threads like the buffers it owns.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Buffers for `count` datagrams of `size` bytes.
    pub fn new(count: usize, size: usize) -> Self {
        let (count, size) = (count.max(1), size.max(1));
        RecvBatch {
            data: vec![0u8; count * size].into_boxed_slice(),
            size,
            addrs: zeroed_addrs(count),
            iovs: empty_iovs(count),
            hdrs: empty_headers(count),
            len: 0,
        }
    }

    /// Reads the datagrams waiting on `sock`, up to the batch size, without waiting.
    /// `WouldBlock` means none were waiting (and clears tokio's readiness, so `readable()` waits).
    pub fn try_recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.len = 0;
        let slots = self.hdrs.iter_mut().zip(self.iovs.iter_mut());
        for ((h, iov), (addr, buf)) in
            slots.zip(self.addrs.iter_mut().zip(self.data.chunks_mut(self.size)))
        {
            *iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            aim(h, addr, ADDR_LEN, iov);
            h.msg_len = 0;
        }
        let fd = sock.as_raw_fd();
        let n = sock.try_io(Interest::READABLE, || self.recv_raw(fd))?;
        self.len = n;
        Ok(n)
    }

    fn recv_raw(&mut self, fd: RawFd) -> io::Result<usize> {
        loop {
            // SAFETY: `try_recv` just aimed every header's name at its own slot of `addrs` (with
            // its full length) and its one iovec at its own `size` bytes of `data`; all of it is
            // owned by `self`, borrowed mutably here, so the kernel's writes alias nothing.
            // A null timeout is allowed (no timeout); MSG_DONTWAIT never blocks.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    self.hdrs.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The datagrams the last [`RecvBatch::try_recv`] read, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = Datagram<'_>> {
        self.hdrs[..self.len]
            .iter()
            .zip(self.addrs.iter())
            .zip(self.data.chunks(self.size))
            .filter_map(|((h, addr), buf)| {
                // SAFETY: the kernel wrote the sender's address into `addr` and its length into
                // `msg_namelen`; on a UDP socket that is a `sockaddr_in` or `sockaddr_in6` whose
                // family tag matches. `as_socket` reads only what that family defines.
                let src = unsafe { SockAddr::new(*addr, h.msg_hdr.msg_namelen) }.as_socket()?;
                Some(Datagram {
                    data: &buf[..(h.msg_len as usize).min(buf.len())],
                    src,
                    truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                })
            })
    }
}

/// Replies queued to go out together, each to its own destination.
pub struct SendBatch {
    bufs: Box<[Vec<u8>]>,
    dests: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// Replies queued.
    len: usize,
    /// Of those, replies sent (or dropped) so far.
    sent: usize,
}

// SAFETY: as for `RecvBatch`: the pointers in `iovs` and `hdrs` are only aimed at `dests`,
// `iovs` and `bufs`, owned by this value, and re-aimed before every send.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Room for `count` replies, each buffer starting with `capacity` bytes.
    pub fn new(count: usize, capacity: usize) -> Self {
        let count = count.max(1);
        SendBatch {
            bufs: (0..count).map(|_| Vec::with_capacity(capacity)).collect(),
            dests: zeroed_addrs(count),
            iovs: empty_iovs(count),
            hdrs: empty_headers(count),
            len: 0,
            sent: 0,
        }
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer for the next reply; it goes out only once [`SendBatch::push`] queues it.
    /// Panics when the batch is full.
    pub fn next_buf(&mut self) -> &mut Vec<u8> {
        &mut self.bufs[self.len]
    }

    /// Queues the reply written into [`SendBatch::next_buf`] for `dest`.
    pub fn push(&mut self, dest: SocketAddr) {
        let addr = SockAddr::from(dest);
        self.hdrs[self.len].msg_hdr.msg_namelen = addr.len();
        self.dests[self.len] = addr.as_storage();
        self.len += 1;
    }

    /// Sends the queued replies the socket takes without waiting; replies left queued (see
    /// [`SendBatch::is_empty`]) mean its send buffer is full (or tokio has not yet seen it
    /// writable). Returns how many were dropped.
    pub fn try_send(&mut self, sock: &UdpSocket) -> usize {
        self.aim_queued();
        let fd = sock.as_raw_fd();
        let mut dropped = 0;
        while self.sent < self.len {
            match sock.try_io(Interest::WRITABLE, || self.send_raw(fd)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return dropped,
                r => dropped += self.advance(r),
            }
        }
        self.clear();
        dropped
    }

    /// Sends every queued reply, waiting for the socket when its send buffer is full.
    /// Returns how many were dropped.
    pub async fn send(&mut self, sock: &UdpSocket) -> usize {
        self.aim_queued();
        let fd = sock.as_raw_fd();
        let mut dropped = 0;
        while self.sent < self.len {
            let r = sock
                .async_io(Interest::WRITABLE, || self.send_raw(fd))
                .await;
            dropped += self.advance(r);
        }
        self.clear();
        dropped
    }

    /// Points each queued header at its destination and reply; the reply buffers may have
    /// moved while they were written.
    fn aim_queued(&mut self) {
        let slots = self.hdrs.iter_mut().zip(self.iovs.iter_mut());
        let replies = self.dests.iter_mut().zip(self.bufs.iter_mut());
        for ((h, iov), (dest, buf)) in slots.zip(replies).take(self.len) {
            *iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let namelen = h.msg_hdr.msg_namelen;
            aim(h, dest, namelen, iov);
        }
    }

    /// Moves past what one `sendmmsg` did. A reply the kernel refuses outright (unreachable,
    /// not permitted, too big) is dropped so the rest still go; returns 1 if one was dropped.
    fn advance(&mut self, r: io::Result<usize>) -> usize {
        match r {
            Ok(n) if n > 0 => {
                self.sent += n;
                0
            }
            Ok(_) => {
                self.sent += 1;
                1
            }
            Err(e) => {
                tracing::debug!(error = %e, "udp reply dropped");
                self.sent += 1;
                1
            }
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.sent = 0;
    }

    /// One `sendmmsg` for the queued replies not yet sent; how many it sent.
    fn send_raw(&mut self, fd: RawFd) -> io::Result<usize> {
        let rest = &mut self.hdrs[self.sent..self.len];
        loop {
            // SAFETY: `aim_queued` aimed each queued header at its own destination in `dests` (length
            // set by `push`) and its one iovec at its reply in `bufs`; nothing has touched them
            // since, all of it is owned by `self`, borrowed mutably for the call, and the kernel
            // only reads it.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn zeroed_addrs(count: usize) -> Box<[libc::sockaddr_storage]> {
    // SAFETY: `sockaddr_storage` is plain old data; all zeroes is a valid (unspecified) address.
    vec![unsafe { std::mem::zeroed::<libc::sockaddr_storage>() }; count].into_boxed_slice()
}

fn empty_iovs(count: usize) -> Box<[libc::iovec]> {
    (0..count)
        .map(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        })
        .collect()
}

fn empty_headers(count: usize) -> Box<[libc::mmsghdr]> {
    // SAFETY: `mmsghdr` is plain old data; all zeroes is a valid empty header (null pointers, no
    // control data, and any private padding fields a libc adds initialised).
    (0..count).map(|_| unsafe { std::mem::zeroed() }).collect()
}

/// Points a header at one address and one buffer, right before a call, so the pointers are
/// always fresh borrows of the batch that owns them.
fn aim(
    h: &mut libc::mmsghdr,
    addr: &mut libc::sockaddr_storage,
    namelen: libc::socklen_t,
    iov: &mut libc::iovec,
) {
    h.msg_hdr.msg_name = std::ptr::from_mut(addr).cast();
    h.msg_hdr.msg_namelen = namelen;
    h.msg_hdr.msg_iov = std::ptr::from_mut(iov);
    h.msg_hdr.msg_iovlen = 1;
    h.msg_hdr.msg_flags = 0;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn bound(addr: &str) -> UdpSocket {
        UdpSocket::bind(addr).await.expect("bind loopback")
    }

    /// Reads until `want` datagrams arrived (or a second passed), batch by batch.
    async fn recv_all(
        rx: &mut RecvBatch,
        sock: &UdpSocket,
        want: usize,
    ) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while got.len() < want {
            tokio::select! {
                r = sock.readable() => r.expect("readable"),
                _ = tokio::time::sleep_until(deadline) => break,
            }
            match rx.try_recv(sock) {
                Ok(_) => got.extend(rx.iter().map(|d| (d.data.to_vec(), d.src))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
        got
    }

    #[tokio::test]
    async fn a_batch_goes_out_in_one_send_and_comes_back_with_its_sources() {
        let a = bound("127.0.0.1:0").await;
        let b = bound("127.0.0.1:0").await;
        let c = bound("127.0.0.1:0").await;
        let mut tx = SendBatch::new(8, 64);
        for i in 0..6u8 {
            tx.next_buf().clear();
            tx.next_buf().extend_from_slice(&[i; 3]);
            let dest = if i % 2 == 0 { &b } else { &c };
            tx.push(dest.local_addr().unwrap());
        }
        a.writable().await.expect("writable");
        assert_eq!(tx.try_send(&a), 0);
        assert!(
            tx.is_empty(),
            "a loopback socket takes six small replies at once"
        );
        let mut rx = RecvBatch::new(8, 512);
        let at_b = recv_all(&mut rx, &b, 3).await;
        let at_c = recv_all(&mut rx, &c, 3).await;
        let from_a = a.local_addr().unwrap();
        assert_eq!(
            at_b,
            vec![
                (vec![0; 3], from_a),
                (vec![2; 3], from_a),
                (vec![4; 3], from_a)
            ]
        );
        assert_eq!(
            at_c,
            vec![
                (vec![1; 3], from_a),
                (vec![3; 3], from_a),
                (vec![5; 3], from_a)
            ]
        );
    }

    #[tokio::test]
    async fn more_waiting_than_a_batch_holds_is_read_over_several_calls() {
        let server = bound("127.0.0.1:0").await;
        let to = server.local_addr().unwrap();
        let clients = [bound("127.0.0.1:0").await, bound("127.0.0.1:0").await];
        for i in 0..10u8 {
            clients[usize::from(i) % 2].send_to(&[i], to).await.unwrap();
        }
        server.readable().await.unwrap();
        let mut rx = RecvBatch::new(4, 64);
        let mut counts = Vec::new();
        let mut got = Vec::new();
        loop {
            match rx.try_recv(&server) {
                Ok(n) => {
                    counts.push(n);
                    got.extend(rx.iter().map(|d| (d.data[0], d.src)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
        assert_eq!(counts, vec![4, 4, 2]);
        let want: Vec<_> = (0..10u8)
            .map(|i| (i, clients[usize::from(i) % 2].local_addr().unwrap()))
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_datagram_longer_than_its_buffer_is_marked_truncated() {
        let a = bound("127.0.0.1:0").await;
        let b = bound("127.0.0.1:0").await;
        a.send_to(&[7; 20], b.local_addr().unwrap()).await.unwrap();
        a.send_to(&[8; 5], b.local_addr().unwrap()).await.unwrap();
        let mut rx = RecvBatch::new(4, 8);
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while seen.len() < 2 && tokio::time::Instant::now() < deadline {
            b.readable().await.unwrap();
            if rx.try_recv(&b).is_ok() {
                seen.extend(rx.iter().map(|d| (d.data.to_vec(), d.truncated)));
            }
        }
        assert_eq!(seen, vec![(vec![7; 8], true), (vec![8; 5], false)]);
    }

    #[tokio::test]
    async fn a_refused_reply_is_dropped_and_the_rest_still_go() {
        let a = bound("127.0.0.1:0").await;
        let b = bound("127.0.0.1:0").await;
        let to = b.local_addr().unwrap();
        let mut tx = SendBatch::new(4, 16);
        for (i, dest) in [to, "[::1]:53".parse().unwrap(), to]
            .into_iter()
            .enumerate()
        {
            tx.next_buf().clear();
            tx.next_buf().push(i as u8);
            tx.push(dest);
        }
        // An IPv4 socket cannot send to an IPv6 address: a hard error for that reply only.
        assert_eq!(tx.send(&a).await, 1);
        let mut rx = RecvBatch::new(4, 16);
        let got: Vec<_> = recv_all(&mut rx, &b, 2)
            .await
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        assert_eq!(got, vec![vec![0], vec![2]]);
    }

    #[tokio::test]
    async fn ipv6_sources_and_destinations_are_kept() {
        let Ok(a) = UdpSocket::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback here; skipping");
            return;
        };
        let b = bound("[::1]:0").await;
        let mut tx = SendBatch::new(2, 16);
        tx.next_buf().clear();
        tx.next_buf().extend_from_slice(b"v6");
        tx.push(b.local_addr().unwrap());
        assert_eq!(tx.send(&a).await, 0);
        let mut rx = RecvBatch::new(2, 16);
        let got = recv_all(&mut rx, &b, 1).await;
        assert_eq!(got, vec![(b"v6".to_vec(), a.local_addr().unwrap())]);
    }
}
