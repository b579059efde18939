//! Batched datagram I/O: many UDP datagrams per system call with `recvmmsg(2)` and
//! `sendmmsg(2)`.
//!
//! Under load, one `recvfrom` and one `sendto` per query put over half of the server's CPU time
//! in the kernel; moving a whole batch per call spreads that cost over the batch. Most of what
//! is left is the kernel's work per datagram, so replies of one size to one client also go down
//! the stack together as one segmented message (see [`SendBatch`]). Buffers, addresses,
//! `iovec`s and `mmsghdr`s are allocated once per socket loop and reused, never per packet.
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

/// `UDP_SEGMENT` (linux/udp.h); the libc crate does not export it for glibc.
const UDP_SEGMENT: libc::c_int = 103;
/// Largest reply joined with others: one that fits any path's MTU (IPv6's minimum of 1280 less
/// headers, the size DNS Flag Day 2020 settled on), so the kernel never refuses a segment for
/// its size on a real network.
const SEGMENT_MAX_BYTES: usize = 1232;
/// Datagrams in one joined message: the kernel's `UDP_MAX_SEGMENTS`.
const SEGMENTS_MAX: usize = 64;
/// Bytes in one joined message: an IP packet's 64 KiB less headers, with room to spare.
const SEGMENTED_MAX_BYTES: usize = 60_000;
/// Joined messages refused in a row, with none taken between, before a socket stops joining.
/// One refusal can be the destination's fault (a spoofed source port 0), not the joining's.
const REFUSALS_TO_STOP: u32 = 8;

/// The control message that tells the kernel to split a message into datagrams of one size.
#[repr(C)]
#[derive(Clone, Copy)]
struct SegmentCmsg {
    hdr: libc::cmsghdr,
    size: u16,
}

/// One message of a batch: which replies it carries (a run of [`SendBatch`]'s `order`).
#[derive(Clone, Copy, Default)]
struct Span {
    /// Where its replies start in `order`.
    at: usize,
    /// How many there are; more than one makes it a segmented message.
    count: usize,
}

/// Replies queued to go out together, each to its own destination.
///
/// Replies of one size to one client go out as one message the kernel splits into datagrams
/// (UDP segmentation offload, Linux 4.18 and later): one route lookup and one pass down the
/// stack for the lot instead of one per reply. That takes several queries from one address and
/// port in a batch: a load generator, a device's burst from one socket, a forwarder that keeps
/// its source port. Forwarders that pick a random port per query, and devices asking directly,
/// leave little to join, and their replies go one per datagram as before. A refused joined
/// message goes again one reply per datagram, so nothing is lost; a kernel or network device
/// that keeps refusing turns joining off for the socket.
pub struct SendBatch {
    bufs: Box<[Vec<u8>]>,
    to: Box<[SocketAddr]>,
    /// Reply indexes, grouped by destination and size.
    order: Box<[usize]>,
    /// One per reply, in `order`.
    iovs: Box<[libc::iovec]>,
    /// One each per message.
    spans: Box<[Span]>,
    dests: Box<[libc::sockaddr_storage]>,
    cmsgs: Box<[SegmentCmsg]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// Replies queued.
    len: usize,
    /// Messages made of them (0 until the first send).
    msgs: usize,
    /// Of those, messages sent (or dropped) so far.
    sent: usize,
    /// Whether replies may be joined.
    segment: bool,
    /// This batch goes one reply per datagram: a joined message of it was refused.
    split: bool,
    /// Joined messages refused since one was last taken.
    refused: u32,
}

// SAFETY: as for `RecvBatch`: the pointers in `iovs` and `hdrs` are only aimed at `dests`,
// `cmsgs`, `iovs` and `bufs`, owned by this value, and re-aimed before every send.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Room for `count` replies, each buffer starting with `capacity` bytes.
    pub fn new(count: usize, capacity: usize) -> Self {
        let count = count.max(1);
        // SAFETY: `cmsghdr` is plain old data, so all zeroes is a valid one; `CMSG_LEN` only
        // does arithmetic. Only the size changes from message to message.
        let mut hdr: libc::cmsghdr = unsafe { std::mem::zeroed() };
        hdr.cmsg_len = unsafe { libc::CMSG_LEN(std::mem::size_of::<u16>() as libc::c_uint) } as _;
        hdr.cmsg_level = libc::SOL_UDP;
        hdr.cmsg_type = UDP_SEGMENT;
        let cmsg = SegmentCmsg { hdr, size: 0 };
        SendBatch {
            bufs: (0..count).map(|_| Vec::with_capacity(capacity)).collect(),
            to: vec![SocketAddr::from(([0, 0, 0, 0], 0)); count].into_boxed_slice(),
            order: (0..count).collect(),
            iovs: empty_iovs(count),
            spans: vec![Span::default(); count].into_boxed_slice(),
            dests: zeroed_addrs(count),
            cmsgs: vec![cmsg; count].into_boxed_slice(),
            hdrs: empty_headers(count),
            len: 0,
            msgs: 0,
            sent: 0,
            segment: true,
            split: false,
            refused: 0,
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
        self.to[self.len] = dest;
        self.len += 1;
    }

    /// Sends the queued replies the socket takes without waiting; replies left queued (see
    /// [`SendBatch::is_empty`]) mean its send buffer is full (or tokio has not yet seen it
    /// writable). Returns how many were dropped.
    pub fn try_send(&mut self, sock: &UdpSocket) -> usize {
        self.prepare();
        let fd = sock.as_raw_fd();
        let mut dropped = 0;
        while self.sent < self.msgs {
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
        self.prepare();
        let fd = sock.as_raw_fd();
        let mut dropped = 0;
        while self.sent < self.msgs {
            let r = sock
                .async_io(Interest::WRITABLE, || self.send_raw(fd))
                .await;
            dropped += self.advance(r);
        }
        self.clear();
        dropped
    }

    /// Makes the queued replies into messages the first time, then aims every header not yet
    /// sent; the reply buffers may have moved while they were written.
    fn prepare(&mut self) {
        if self.msgs == 0 {
            self.split = false;
            let n = self.len;
            self.order[..n]
                .iter_mut()
                .enumerate()
                .for_each(|(i, o)| *o = i);
            if self.segment {
                // Replies to one client keep their order.
                let (to, bufs) = (&self.to, &self.bufs);
                self.order[..n].sort_unstable_by_key(|&i| (to[i], bufs[i].len(), i));
            }
            self.group(0);
        }
        self.aim_unsent();
    }

    /// Makes the messages from the first one not yet sent, for the replies from `at` in
    /// `order` on: a run of replies of one size to one client is one message.
    fn group(&mut self, mut at: usize) {
        let mut m = self.sent;
        while at < self.len {
            let first = self.order[at];
            let (dest, size) = (self.to[first], self.bufs[first].len());
            let mut count = 1;
            if self.segment && !self.split && (1..=SEGMENT_MAX_BYTES).contains(&size) {
                let most = SEGMENTS_MAX.min(SEGMENTED_MAX_BYTES / size);
                let same = |&i: &usize| self.to[i] == dest && self.bufs[i].len() == size;
                count += self.order[at + 1..self.len]
                    .iter()
                    .take(most - 1)
                    .take_while(|i| same(i))
                    .count();
            }
            self.spans[m] = Span { at, count };
            let addr = SockAddr::from(dest);
            self.hdrs[m].msg_hdr.msg_namelen = addr.len();
            self.dests[m] = addr.as_storage();
            self.cmsgs[m].size = size as u16;
            m += 1;
            at += count;
        }
        self.msgs = m;
    }

    /// Points each unsent header at its destination, replies and (if it joins several) the
    /// segment size.
    fn aim_unsent(&mut self) {
        for (iov, &i) in self.iovs.iter_mut().zip(&self.order[..self.len]) {
            let buf = &self.bufs[i];
            *iov = libc::iovec {
                iov_base: buf.as_ptr().cast_mut().cast(),
                iov_len: buf.len(),
            };
        }
        for m in self.sent..self.msgs {
            let Span { at, count } = self.spans[m];
            let h = &mut self.hdrs[m].msg_hdr;
            h.msg_name = std::ptr::from_mut(&mut self.dests[m]).cast();
            h.msg_iov = std::ptr::from_mut(&mut self.iovs[at]);
            h.msg_iovlen = count as _;
            h.msg_flags = 0;
            if count > 1 {
                h.msg_control = std::ptr::from_mut(&mut self.cmsgs[m]).cast();
                h.msg_controllen = std::mem::size_of::<SegmentCmsg>() as _;
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
    }

    /// Moves past what one `sendmmsg` did. A message the kernel refuses outright (unreachable,
    /// not permitted, too big) is dropped so the rest still go; returns how many replies were
    /// dropped. A joined message refused the way a kernel or device without segmentation
    /// refuses one goes again with the rest of the batch, one reply per datagram.
    fn advance(&mut self, r: io::Result<usize>) -> usize {
        let Span { at, count } = self.spans[self.sent];
        match r {
            Ok(n) if n > 0 => {
                let taken = &self.spans[self.sent..self.sent + n];
                if taken.iter().any(|s| s.count > 1) {
                    self.refused = 0;
                }
                self.sent += n;
                0
            }
            Err(e) if count > 1 && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                self.refused += 1;
                if self.refused == REFUSALS_TO_STOP {
                    self.segment = false;
                    tracing::info!(error = %e, "the kernel refuses segmented UDP sends here; replies go one per datagram from now on");
                }
                self.split = true;
                self.group(at);
                self.aim_unsent();
                0
            }
            r => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "udp reply dropped");
                }
                self.sent += 1;
                count
            }
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.msgs = 0;
        self.sent = 0;
    }

    /// One `sendmmsg` for the messages not yet sent; how many it sent.
    fn send_raw(&mut self, fd: RawFd) -> io::Result<usize> {
        let rest = &mut self.hdrs[self.sent..self.msgs];
        loop {
            // SAFETY: `aim_unsent` aimed each unsent header at its own destination in `dests`
            // (length set by `group`), its run of iovecs over replies in `bufs`, and its own
            // control message in `cmsgs` (or none); nothing has touched them since, all of it
            // is owned by `self`, borrowed mutably for the call, and the kernel only reads it.
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

    /// Queues one reply of `size` bytes for each destination, each starting with its own tag.
    fn queue(tx: &mut SendBatch, replies: &[(u8, usize, SocketAddr)]) {
        for &(tag, size, dest) in replies {
            let buf = tx.next_buf();
            buf.clear();
            buf.push(tag);
            buf.resize(size, 0xee);
            tx.push(dest);
        }
    }

    fn tags(got: &[(Vec<u8>, SocketAddr)]) -> Vec<(u8, usize)> {
        got.iter().map(|(d, _)| (d[0], d.len())).collect()
    }

    #[tokio::test]
    async fn replies_of_one_size_to_one_client_go_out_joined_and_arrive_apart() {
        let a = bound("127.0.0.1:0").await;
        let b = bound("127.0.0.1:0").await;
        let c = bound("127.0.0.1:0").await;
        let (to_b, to_c) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut tx = SendBatch::new(16, 64);
        queue(
            &mut tx,
            &[
                (0, 40, to_b),
                (1, 70, to_b),
                (2, 40, to_c),
                (3, 40, to_b),
                (4, 70, to_b),
                (5, 40, to_b),
                (6, 2000, to_b),
                (7, 2000, to_b),
                (8, 40, to_c),
            ],
        );
        tx.prepare();
        // b: 40 bytes x3, 70 x2, and the two too big to join; c: 40 x2.
        assert_eq!(tx.msgs, 5, "joined runs of one size to one client");
        a.writable().await.unwrap();
        assert_eq!(tx.send(&a).await, 0);
        let mut rx = RecvBatch::new(16, 4096);
        let at_b = recv_all(&mut rx, &b, 7).await;
        let at_c = recv_all(&mut rx, &c, 2).await;
        assert_eq!(
            tags(&at_b),
            vec![
                (0, 40),
                (3, 40),
                (5, 40),
                (1, 70),
                (4, 70),
                (6, 2000),
                (7, 2000)
            ],
            "each reply arrives as a datagram of its own, in order within its size"
        );
        assert!(
            at_b.iter()
                .all(|(d, from)| d[1..].iter().all(|&x| x == 0xee)
                    && *from == a.local_addr().unwrap())
        );
        assert_eq!(tags(&at_c), vec![(2, 40), (8, 40)]);
    }

    #[tokio::test]
    async fn a_refused_joined_message_goes_again_one_reply_per_datagram() {
        let a = bound("127.0.0.1:0").await;
        let b = bound("127.0.0.1:0").await;
        let to_b = b.local_addr().unwrap();
        // Without checksums the kernel cannot segment: each joined send is refused (EINVAL),
        // as on a device without checksum offload (EIO).
        let one: libc::c_int = 1;
        // SAFETY: SO_NO_CHECK takes an int, passed with its size.
        let r = unsafe {
            libc::setsockopt(
                a.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of_val(&one) as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_NO_CHECK: {}", io::Error::last_os_error());
        let mut tx = SendBatch::new(8, 64);
        let mut rx = RecvBatch::new(8, 256);
        for batch in 0..REFUSALS_TO_STOP as u8 {
            queue(
                &mut tx,
                &[(batch, 30, to_b), (batch, 30, to_b), (batch, 30, to_b)],
            );
            assert_eq!(tx.send(&a).await, 0, "nothing is dropped");
            let got = recv_all(&mut rx, &b, 3).await;
            assert_eq!(tags(&got), vec![(batch, 30); 3], "batch {batch}");
        }
        assert!(
            !tx.segment,
            "a socket whose joined sends are always refused stops joining"
        );
        queue(&mut tx, &[(9, 30, to_b), (9, 30, to_b)]);
        tx.prepare();
        assert_eq!(tx.msgs, 2);
        assert_eq!(tx.send(&a).await, 0);
        assert_eq!(tags(&recv_all(&mut rx, &b, 2).await), vec![(9, 30); 2]);
    }

    #[tokio::test]
    async fn a_client_that_cannot_be_answered_does_not_stop_the_joining() {
        let a = bound("127.0.0.1:0").await;
        let b = bound("127.0.0.1:0").await;
        let to_b = b.local_addr().unwrap();
        // Port 0 cannot be sent to (EINVAL): a spoofed source, not a kernel without segmentation.
        let nowhere: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut tx = SendBatch::new(8, 64);
        let mut rx = RecvBatch::new(8, 256);
        for batch in 0..2 * REFUSALS_TO_STOP as u8 {
            queue(
                &mut tx,
                &[
                    (batch, 30, nowhere),
                    (batch, 30, nowhere),
                    (batch, 20, to_b),
                ],
            );
            assert_eq!(tx.send(&a).await, 2, "the replies to port 0 are dropped");
            assert_eq!(tags(&recv_all(&mut rx, &b, 1).await), vec![(batch, 20)]);
            queue(&mut tx, &[(batch, 30, to_b), (batch, 30, to_b)]);
            assert_eq!(tx.send(&a).await, 0);
            assert_eq!(tags(&recv_all(&mut rx, &b, 2).await), vec![(batch, 30); 2]);
        }
        assert!(
            tx.segment,
            "joined replies to a real client are still taken"
        );
    }

    #[test]
    fn the_segment_control_message_is_laid_out_as_the_kernel_reads_it() {
        // SAFETY: `CMSG_SPACE` and `CMSG_LEN` only do arithmetic.
        let (space, len) = unsafe { (libc::CMSG_SPACE(2), libc::CMSG_LEN(2)) };
        assert_eq!(std::mem::size_of::<SegmentCmsg>(), space as usize);
        assert_eq!(std::mem::offset_of!(SegmentCmsg, size) + 2, len as usize);
    }

    #[tokio::test]
    async fn ipv6_sources_and_destinations_are_kept() {
        let Ok(a) = UdpSocket::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback here; skipping");
            return;
        };
        let b = bound("[::1]:0").await;
        let c = bound("[::1]:0").await;
        let (to_b, to_c) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut tx = SendBatch::new(4, 16);
        queue(&mut tx, &[(1, 20, to_b), (2, 20, to_c), (3, 20, to_b)]);
        tx.prepare();
        assert_eq!(tx.msgs, 2, "the two replies to b are joined");
        assert_eq!(tx.send(&a).await, 0);
        let mut rx = RecvBatch::new(4, 64);
        let from_a = a.local_addr().unwrap();
        let at_b = recv_all(&mut rx, &b, 2).await;
        assert_eq!(tags(&at_b), vec![(1, 20), (3, 20)]);
        assert!(at_b.iter().all(|(_, from)| *from == from_a));
        let at_c = recv_all(&mut rx, &c, 1).await;
        assert_eq!(tags(&at_c), vec![(2, 20)]);
        assert_eq!(at_c[0].1, from_a);
    }
}
