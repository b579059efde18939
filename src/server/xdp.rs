//! The AF_XDP fast path: UDP queries taken from the network card before the kernel's IP and
//! UDP layers, and answers handed straight back to it.
//!
//! Most of the CPU an answer costs is the kernel's socket path, not the decision: receiving,
//! routing and building each reply took about 3.5 of 4.3 us per answer on the load benchmark.
//! A small XDP program on the interface sends UDP packets for the DNS port to an AF_XDP
//! socket, one per receive queue; replies are written into shared frames and sent with one
//! system call per batch. Knot DNS does the same.
//!
//! Only plain UDP to the listen port is taken (IPv4 without options or fragments, IPv6 without
//! extension headers, addressed to the listen address when there is one); TCP and everything
//! else reach the sockets as before, as do answers a frame cannot hold. Closing the program's
//! link (the server exiting, or crashing) gives the traffic back to the kernel. Needs
//! CAP_NET_ADMIN, CAP_BPF and CAP_NET_RAW; without them the server says why and serves through
//! its sockets.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

use thiserror::Error;

use crate::wire::MAX_UDP_PAYLOAD;

/// Why the fast path could not be set up.
#[derive(Debug, Error)]
pub enum XdpError {
    /// No such interface.
    #[error(
        "no network interface {0:?}; set server.xdp to the interface the listen address is on"
    )]
    NoInterface(String),
    /// The listen addresses give no single port for either family.
    #[error("server.xdp needs the listen addresses of a family (IPv4 or IPv6) to share one port")]
    NoPort,
    /// On loopback the kernel would drop every reply.
    #[error("on loopback the kernel drops the fast path's replies unless `sysctl -w net.ipv4.conf.{0}.route_localnet=1 net.ipv4.conf.{0}.accept_local=1`; loopback is for benchmarks and tests, a school attaches to its LAN interface")]
    Loopback(String),
    /// A system call failed.
    #[error("{what}: {source}{}", hint(.source))]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (the fast path needs CAP_NET_ADMIN, CAP_BPF and CAP_NET_RAW)"
        }
        Some(libc::EBUSY) | Some(libc::EEXIST) => {
            " (another XDP program is attached to the interface)"
        }
        _ => "",
    }
}

fn sys(what: &'static str) -> impl FnOnce(io::Error) -> XdpError {
    move |source| XdpError::Sys { what, source }
}

fn check(r: libc::c_long, what: &'static str) -> Result<libc::c_long, XdpError> {
    if r < 0 {
        Err(sys(what)(io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

/// Bytes before the DNS message in a frame: Ethernet, IPv4 without options, UDP.
const HEADERS: usize = 14 + 20 + 8;
/// The same over IPv6 without extension headers.
const HEADERS6: usize = 14 + 40 + 8;
/// Entries in the receive and fill rings: the packets that may wait while the server is busy.
/// 4,096 ride out a 27 ms stall at 150,000 queries a second; the kernel drops what does not fit,
/// and a dropped query costs the device a retry a second or more later.
const RX_RING: u32 = 4096;
/// Entries in the transmit and completion rings: replies on their way out.
const TX_RING: u32 = 256;
/// The kernel's chunk size, the smallest it accepts. Frames are registered unaligned, so a frame
/// may start anywhere, but the kernel wants a chunk's length of UMEM after each start.
const CHUNK: usize = 2048;
/// Receive frames start this far apart and overlap: the program sends only packets up to this
/// size, and the kernel writes each at the same offset in its frame, so a packet never reaches
/// the next one. A DNS query of up to 214 bytes over IPv4 (a name of about 170 characters), 194
/// over IPv6, fits; a longer one takes the kernel's path. All 4,096 cost 1 MiB, where 2 KiB
/// frames would cost 8 MiB.
const RX_SLOT: usize = 256;
/// Transmit frames hold the largest UDP answer with its headers.
const TX_SLOT: usize = HEADERS6 + MAX_UDP_PAYLOAD as usize;
/// The transmit frames, then the receive frames, then the tail the last chunk needs: 1.3 MiB a
/// queue, all of it pinned.
const UMEM: usize = TX_RING as usize * TX_SLOT + (RX_RING as usize - 1) * RX_SLOT + CHUNK;
/// Where the receive frames start.
const RX_BASE: usize = TX_RING as usize * TX_SLOT;
/// An unaligned receive descriptor's address carries the packet's offset in its top 16 bits.
const ADDR_BITS: u32 = 48;
/// Packets taken off the receive ring per pass.
pub const BATCH: u32 = 64;
/// How long a busy queue is waited for at start-up (see [`Xsk::bind`]).
const QUEUE_RELEASE: std::time::Duration = std::time::Duration::from_secs(2);

// bpf(2) commands and types used here (linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;

/// `union bpf_attr`, as words: each command fills the fields it reads, the rest stay zero.
#[repr(C, align(8))]
struct Attr([u32; 36]);

impl Default for Attr {
    fn default() -> Self {
        Attr([0; 36])
    }
}

impl Attr {
    fn u64_at(&mut self, word: usize, v: u64) {
        self.0[word] = v as u32;
        self.0[word + 1] = (v >> 32) as u32;
    }
}

/// bpf(2) with `attr`: its result, or what failed.
fn bpf_call(
    cmd: libc::c_long,
    attr: &mut Attr,
    what: &'static str,
) -> Result<libc::c_long, XdpError> {
    // SAFETY: `attr` is a zero-padded bpf_attr for `cmd`; pointers in it outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, size_of::<Attr>()) };
    check(r, what)
}

/// A bpf(2) command that creates something: the new descriptor.
fn bpf(cmd: libc::c_long, attr: &mut Attr, what: &'static str) -> Result<OwnedFd, XdpError> {
    // SAFETY: a non-negative result of these commands is a new file descriptor we own.
    bpf_call(cmd, attr, what).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// A 16-bit field in network order as the program's little-endian load sees it.
fn be16(v: u16) -> i32 {
    i32::from(u16::from_ne_bytes(v.to_be_bytes()))
}

/// Which queries of one address family the program takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take<A> {
    /// None: they go to the kernel.
    No,
    /// Those to any address of the interface.
    Any,
    /// Those to this address only.
    Only(A),
}

/// What the program takes: UDP to one port, by family.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    /// The listen port.
    pub port: u16,
    /// IPv4 queries.
    pub v4: Take<Ipv4Addr>,
    /// IPv6 queries.
    pub v6: Take<Ipv6Addr>,
}

/// The XDP program: UDP to the listen port (and address, when one is given) over IPv4 without
/// options or fragments, or IPv6 without extension headers, and no longer than a receive slot,
/// goes to the AF_XDP socket of the queue it arrived on; anything else to the kernel.
fn program(map: RawFd, l: &Listen) -> Vec<Insn> {
    const JA: u8 = 0x05;
    const JEQ_K: u8 = 0x15;
    const JGT_X: u8 = 0x2d;
    const JNE_K: u8 = 0x55;
    // A 32-bit compare: a 64-bit one sign-extends the constant, and an address word whose top
    // bit is set (192.168.1.200's last octet) would never match.
    const JNE32_K: u8 = 0x56;
    // Loads of a byte, a half word and a word.
    const B: u8 = 0x71;
    const H: u8 = 0x69;
    const W: u8 = 0x61;
    /// Jump targets, aimed once the program is laid out.
    #[derive(Clone, Copy, PartialEq)]
    enum To {
        V4,
        Redirect,
        Pass,
    }
    type Code = Vec<(Insn, Option<To>)>;
    let op = |p: &mut Code, i: Insn| p.push((i, None));
    let jump = |p: &mut Code, code: u8, dst: u8, src: u8, imm: i32, to: To| {
        p.push((insn(code, dst, src, 0, imm), Some(to)));
    };
    // Loads the field at `offset` into r5 (`load`: its size), and passes unless it is `is`.
    let expect = |p: &mut Code, load: u8, offset: i16, is: i32| {
        op(p, insn(load, 5, 2, offset, 0));
        jump(p, JNE_K, 5, 0, is, To::Pass);
    };
    // The destination address, four bytes at a time from `offset`.
    let address = |p: &mut Code, offset: i16, octets: &[u8]| {
        for (n, word) in octets.chunks_exact(4).enumerate() {
            op(p, insn(W, 5, 2, offset + 4 * n as i16, 0));
            let word = i32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
            jump(p, JNE32_K, 5, 0, word, To::Pass);
        }
    };
    let mut p = Code::new();
    let mut at: Vec<(To, usize)> = Vec::new();
    op(&mut p, insn(W, 2, 1, 0, 0)); // r2 = ctx->data
    op(&mut p, insn(W, 3, 1, 4, 0)); // r3 = ctx->data_end

    // Shorter than IPv4 and UDP headers, or longer than a slot: pass.
    op(&mut p, insn(0xbf, 4, 2, 0, 0)); // r4 = r2
    op(&mut p, insn(0x07, 4, 0, 0, HEADERS as i32));
    jump(&mut p, JGT_X, 4, 3, 0, To::Pass);
    op(&mut p, insn(0xbf, 4, 2, 0, 0));
    op(&mut p, insn(0x07, 4, 0, 0, RX_SLOT as i32));
    jump(&mut p, JGT_X, 3, 4, 0, To::Pass);
    op(&mut p, insn(H, 5, 2, 12, 0)); // r5 = ethertype
    if l.v4 != Take::No {
        jump(&mut p, JEQ_K, 5, 0, be16(0x0800), To::V4);
    }
    if l.v6 != Take::No {
        jump(&mut p, JNE_K, 5, 0, be16(0x86dd), To::Pass);
        op(&mut p, insn(0xbf, 4, 2, 0, 0));
        op(&mut p, insn(0x07, 4, 0, 0, HEADERS6 as i32));
        jump(&mut p, JGT_X, 4, 3, 0, To::Pass);
        expect(&mut p, B, 20, 17); // next header: UDP
        expect(&mut p, H, 56, be16(l.port)); // UDP destination port
        if let Take::Only(a) = l.v6 {
            address(&mut p, 38, &a.octets());
        }
        jump(&mut p, JA, 0, 0, 0, To::Redirect);
    } else {
        jump(&mut p, JA, 0, 0, 0, To::Pass);
    }
    if l.v4 != Take::No {
        at.push((To::V4, p.len()));
        expect(&mut p, B, 14, 0x45); // version 4, no options
        expect(&mut p, B, 23, 17); // protocol: UDP
        op(&mut p, insn(H, 5, 2, 20, 0)); // r5 = fragment flags and offset
        op(&mut p, insn(0x57, 5, 0, 0, be16(0x3fff))); // r5 &= more-fragments | offset
        jump(&mut p, JNE_K, 5, 0, 0, To::Pass);
        expect(&mut p, H, 36, be16(l.port)); // UDP destination port
        if let Take::Only(a) = l.v4 {
            address(&mut p, 30, &a.octets());
        }
    }
    at.push((To::Redirect, p.len()));
    op(&mut p, insn(W, 2, 1, 16, 0)); // r2 = ctx->rx_queue_index
    op(&mut p, insn(0x18, 1, 1, 0, map)); // r1 = the socket map (64-bit load, pseudo map fd)
    op(&mut p, insn(0, 0, 0, 0, 0));
    op(&mut p, insn(0xb7, 3, 0, 0, XDP_PASS)); // no socket on this queue: pass
    op(&mut p, insn(0x85, 0, 0, 0, 51)); // bpf_redirect_map
    op(&mut p, insn(0x95, 0, 0, 0, 0)); // exit
    at.push((To::Pass, p.len()));
    op(&mut p, insn(0xb7, 0, 0, 0, XDP_PASS));
    op(&mut p, insn(0x95, 0, 0, 0, 0));
    p.iter()
        .enumerate()
        .map(|(n, &(mut i, to))| {
            if let Some(to) = to {
                let (_, target) = at
                    .iter()
                    .find(|(t, _)| *t == to)
                    .expect("every target is laid out");
                i.off = (*target as isize - n as isize - 1) as i16;
            }
            i
        })
        .collect()
}

/// Whether replies sent on `interface` reach their sockets. A reply the fast path sends on
/// loopback comes back in without the route a socket's packet carries, so the kernel drops it as
/// a martian unless loopback addresses may be routed and a local source accepted there.
fn loopback_replies_arrive(interface: &str) -> bool {
    let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
    let flags = read(format!("/sys/class/net/{interface}/flags"));
    let loopback = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
        .is_ok_and(|f| f & libc::IFF_LOOPBACK as u32 != 0);
    !loopback
        || ["route_localnet", "accept_local"]
            .iter()
            .all(|k| read(format!("/proc/sys/net/ipv4/conf/{interface}/{k}")).trim() == "1")
}

/// The program attached to an interface, with its sockets. Dropping it detaches the program.
pub struct FastPath {
    /// One socket per receive queue, to be served by [`crate::server`]'s loops.
    pub sockets: Vec<Xsk>,
    /// How it is attached: `driver` or `generic`.
    pub mode: &'static str,
    _link: OwnedFd,
    _map: OwnedFd,
}

/// Attaches the fast path on `interface` for the queries `listen` says.
pub fn attach(interface: &str, listen: &Listen) -> Result<FastPath, XdpError> {
    let name =
        std::ffi::CString::new(interface).map_err(|_| XdpError::NoInterface(interface.into()))?;
    // SAFETY: `name` is a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(XdpError::NoInterface(interface.into()));
    }
    if !loopback_replies_arrive(interface) {
        return Err(XdpError::Loopback(interface.into()));
    }
    let queues = std::fs::read_dir(format!("/sys/class/net/{interface}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(1)
        .max(1);

    let mut a = Attr::default();
    a.0[..4].copy_from_slice(&[BPF_MAP_TYPE_XSKMAP, 4, 4, queues as u32]);
    let map = bpf(BPF_MAP_CREATE, &mut a, "cannot create the XDP socket map")?;

    let insns = program(map.as_raw_fd(), listen);
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut a = Attr::default();
    a.0[0] = BPF_PROG_TYPE_XDP;
    a.0[1] = insns.len() as u32;
    a.u64_at(2, insns.as_ptr() as u64);
    a.u64_at(4, license.as_ptr() as u64);
    a.0[6] = 1;
    a.0[7] = log.len() as u32;
    a.u64_at(8, log.as_mut_ptr() as u64);
    let prog =
        bpf(BPF_PROG_LOAD, &mut a, "the kernel refused the XDP program").inspect_err(|_| {
            let text = String::from_utf8_lossy(&log);
            tracing::debug!(verifier = %text.trim_end_matches('\0'), "XDP program refused");
        })?;

    let sockets = (0..queues as u32)
        .map(|q| Xsk::bind(ifindex, q))
        .collect::<Result<Vec<_>, _>>()?;
    for (q, s) in sockets.iter().enumerate() {
        let (key, value) = (q as u32, s.fd.as_raw_fd() as u32);
        let mut a = Attr::default();
        a.0[0] = map.as_raw_fd() as u32;
        a.u64_at(2, &key as *const u32 as u64);
        a.u64_at(4, &value as *const u32 as u64);
        bpf_call(
            BPF_MAP_UPDATE_ELEM,
            &mut a,
            "cannot add a socket to the map",
        )?;
    }

    // The driver's own hook when it has one, else the generic one every interface has.
    let link = |flags: u32| {
        let mut a = Attr::default();
        a.0[..4].copy_from_slice(&[prog.as_raw_fd() as u32, ifindex, BPF_XDP, flags]);
        bpf(BPF_LINK_CREATE, &mut a, "cannot attach the XDP program")
    };
    let (link, mode) = match link(XDP_FLAGS_DRV_MODE) {
        Ok(l) => (l, "driver"),
        Err(_) => (link(XDP_FLAGS_SKB_MODE)?, "generic"),
    };
    Ok(FastPath {
        sockets,
        mode,
        _link: link,
        _map: map,
    })
}

/// A ring shared with the kernel: producer and consumer indexes and the entries.
struct Ring<T> {
    size: u32,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    entries: NonNull<T>,
    map: NonNull<libc::c_void>,
    map_len: usize,
}

impl<T: Copy> Ring<T> {
    /// Maps the ring at `pgoff` of `fd` as `off` describes it.
    fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        pgoff: i64,
        size: u32,
    ) -> Result<Self, XdpError> {
        let map_len = off.desc as usize + size as usize * size_of::<T>();
        // SAFETY: a shared mapping of the socket's ring, of the size the kernel described.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(sys("cannot map an XDP ring")(io::Error::last_os_error()));
        }
        let at = |o: u64| {
            // SAFETY: the offsets the kernel gave lie within the mapping.
            NonNull::new(unsafe { p.cast::<u8>().add(o as usize) }).expect("mapped")
        };
        Ok(Ring {
            size,
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            entries: at(off.desc).cast(),
            map: NonNull::new(p).expect("mapped"),
            map_len,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping; the kernel and we only touch it atomically.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { self.consumer.as_ref() }
    }

    fn get(&self, index: u32) -> T {
        // SAFETY: the index is reduced modulo the ring size, within the mapping.
        unsafe {
            self.entries
                .as_ptr()
                .add((index % self.size) as usize)
                .read()
        }
    }

    fn set(&self, index: u32, v: T) {
        // SAFETY: as above; the slot belongs to us until the producer index passes it.
        unsafe {
            self.entries
                .as_ptr()
                .add((index % self.size) as usize)
                .write(v)
        }
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; nothing refers to it any more.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}

/// An AF_XDP socket bound to one receive queue, with its frames and rings.
pub struct Xsk {
    fd: OwnedFd,
    /// The interface: the scope of link-local IPv6 sources.
    ifindex: u32,
    umem: NonNull<u8>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    done: Ring<u64>,
    /// Frames free for replies.
    free: Vec<u64>,
    /// Our copies of the indexes we produce or consume.
    rx_next: u32,
    fill_next: u32,
    tx_next: u32,
    done_next: u32,
}

// SAFETY: the socket's mappings are owned by it alone and only used through `&mut self`.
unsafe impl Send for Xsk {}

impl AsRawFd for Xsk {
    /// The socket, to wait on for received packets: the same descriptor for its whole life.
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn sockopt<T>(fd: RawFd, opt: libc::c_int, v: &T, what: &'static str) -> Result<(), XdpError> {
    // SAFETY: `v` is a valid value of the type the option expects.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    check(r.into(), what).map(|_| ())
}

/// Reads an option into `out`, which must be the type the option fills.
fn read_sockopt<T>(
    fd: RawFd,
    opt: libc::c_int,
    out: &mut T,
    what: &'static str,
) -> Result<(), XdpError> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes, the size of `out`.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_XDP, opt, (out as *mut T).cast(), &mut len) };
    check(r.into(), what).map(|_| ())
}

impl Xsk {
    fn bind(ifindex: u32, queue: u32) -> Result<Self, XdpError> {
        // SAFETY: plain socket(2); the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        let raw = check(raw.into(), "cannot open an AF_XDP socket")?;
        // SAFETY: a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        // SAFETY: a private anonymous mapping for the frames.
        let umem = unsafe {
            libc::mmap(
                ptr::null_mut(),
                UMEM,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            return Err(sys("cannot map XDP frames")(io::Error::last_os_error()));
        }
        let umem = NonNull::new(umem.cast::<u8>()).expect("mapped");
        // SAFETY: all-zero is a valid xdp_umem_reg.
        let mut reg: libc::xdp_umem_reg = unsafe { zeroed() };
        reg.addr = umem.as_ptr() as u64;
        reg.len = UMEM as u64;
        reg.chunk_size = CHUNK as u32;
        reg.flags = libc::XDP_UMEM_UNALIGNED_CHUNK_FLAG;
        let raw = fd.as_raw_fd();
        let built = (|| {
            sockopt(raw, libc::XDP_UMEM_REG, &reg, "cannot register XDP frames")?;
            for (opt, size) in [
                (libc::XDP_UMEM_FILL_RING, RX_RING),
                (libc::XDP_UMEM_COMPLETION_RING, TX_RING),
                (libc::XDP_RX_RING, RX_RING),
                (libc::XDP_TX_RING, TX_RING),
            ] {
                sockopt(raw, opt, &size, "cannot size an XDP ring")?;
            }
            // SAFETY: all-zero is valid; the kernel fills it.
            let mut off: libc::xdp_mmap_offsets = unsafe { zeroed() };
            let what = "cannot read XDP ring offsets";
            read_sockopt(raw, libc::XDP_MMAP_OFFSETS, &mut off, what)?;
            let rx = Ring::map(raw, &off.rx, libc::XDP_PGOFF_RX_RING, RX_RING)?;
            let tx = Ring::map(raw, &off.tx, libc::XDP_PGOFF_TX_RING, TX_RING)?;
            let fr = libc::XDP_UMEM_PGOFF_FILL_RING as i64;
            let fill = Ring::map(raw, &off.fr, fr, RX_RING)?;
            let cr = libc::XDP_UMEM_PGOFF_COMPLETION_RING as i64;
            let done = Ring::map(raw, &off.cr, cr, TX_RING)?;
            Ok((rx, tx, fill, done))
        })();
        let (rx, tx, fill, done) = match built {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: unmaps the frames mapped above; the socket goes with `fd`.
                unsafe { libc::munmap(umem.as_ptr().cast(), UMEM) };
                return Err(e);
            }
        };
        let mut s = Xsk {
            fd,
            ifindex,
            umem,
            rx,
            tx,
            fill,
            done,
            free: (0..TX_RING as usize)
                .map(|f| (f * TX_SLOT) as u64)
                .collect(),
            rx_next: 0,
            fill_next: 0,
            tx_next: 0,
            done_next: 0,
        };
        for f in 0..RX_RING {
            s.fill.set(f, (RX_BASE + f as usize * RX_SLOT) as u64);
        }
        s.fill_next = RX_RING;
        s.fill.producer().store(RX_RING, Ordering::Release);

        // SAFETY: all-zero is a valid sockaddr_xdp.
        let mut sa: libc::sockaddr_xdp = unsafe { zeroed() };
        sa.sxdp_family = libc::AF_XDP as u16;
        sa.sxdp_ifindex = ifindex;
        sa.sxdp_queue_id = queue;
        sa.sxdp_flags = libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP;
        // The kernel lets go of a queue some milliseconds after the socket that held it closes:
        // a restarted server would otherwise find its own predecessor's queue busy.
        let deadline = std::time::Instant::now() + QUEUE_RELEASE;
        loop {
            // SAFETY: `sa` is a sockaddr_xdp of the length given.
            let r = unsafe {
                libc::bind(
                    raw,
                    (&sa as *const libc::sockaddr_xdp).cast(),
                    size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            match check(r.into(), "cannot bind the AF_XDP socket to the interface") {
                Ok(_) => return Ok(s),
                Err(XdpError::Sys { source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn frame(&self, addr: u64) -> *mut u8 {
        // SAFETY: frame addresses come from us or the kernel and lie within the UMEM.
        unsafe { self.umem.as_ptr().add(addr as usize) }
    }

    /// Takes frames whose replies the kernel has sent back into the free list.
    fn reclaim(&mut self) {
        let ready = self.done.producer().load(Ordering::Acquire);
        while self.done_next != ready {
            self.free.push(self.done.get(self.done_next));
            self.done_next = self.done_next.wrapping_add(1);
        }
        self.done
            .consumer()
            .store(self.done_next, Ordering::Release);
    }

    /// Hands each waiting UDP query (its DNS message and source) to `answer`, which
    /// writes a reply into its buffer and returns true to send it. Returns the packets taken;
    /// replies that did not fit a frame are returned in `spill` to be sent another way.
    pub fn serve_batch(
        &mut self,
        reply: &mut Vec<u8>,
        spill: &mut Vec<(Vec<u8>, SocketAddr)>,
        mut answer: impl FnMut(&[u8], SocketAddr, &mut Vec<u8>) -> bool,
    ) -> u32 {
        self.reclaim();
        let ready = self.rx.producer().load(Ordering::Acquire);
        let n = ready.wrapping_sub(self.rx_next).min(BATCH);
        for i in 0..n {
            let d = self.rx.get(self.rx_next);
            self.rx_next = self.rx_next.wrapping_add(1);
            if i + 1 < n {
                self.prefetch(self.rx.get(self.rx_next));
            }
            let (frame, at) = self.received(d);
            let len = (d.len as usize).min(RX_SLOT);
            // SAFETY: the kernel filled `len` bytes of this frame and handed it to us.
            let packet = unsafe { std::slice::from_raw_parts(at, len) };
            if let Some((src, dns)) = parse(packet, self.ifindex) {
                reply.clear();
                if answer(dns, src, reply) {
                    self.send_reply(packet, reply, src, spill);
                }
            }
            self.fill.set(self.fill_next, frame);
            self.fill_next = self.fill_next.wrapping_add(1);
        }
        if n > 0 {
            self.rx.consumer().store(self.rx_next, Ordering::Release);
            self.fill
                .producer()
                .store(self.fill_next, Ordering::Release);
            self.kick();
        }
        n
    }

    /// A receive descriptor's frame (what goes back to the fill ring) and where its packet
    /// starts: in unaligned mode the packet's offset in the frame is in the address's top bits.
    fn received(&self, d: libc::xdp_desc) -> (u64, *mut u8) {
        let frame = d.addr & ((1 << ADDR_BITS) - 1);
        (frame, self.frame(frame + (d.addr >> ADDR_BITS)))
    }

    /// Asks for a received packet's bytes ahead of its turn. In copy mode the kernel wrote them
    /// on the CPU that sent the query (on loopback, the client's), so the first read here waits
    /// for them to cross cores; asking one packet early overlaps that wait with this one's work.
    #[inline]
    fn prefetch(&self, d: libc::xdp_desc) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let (_, at) = self.received(d);
            // SAFETY: a prefetch is only a hint: it never faults and changes no memory.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64) as *const i8);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = d;
    }

    fn send_reply(
        &mut self,
        query: &[u8],
        dns: &[u8],
        src: SocketAddr,
        spill: &mut Vec<(Vec<u8>, SocketAddr)>,
    ) {
        let headers = if src.is_ipv4() { HEADERS } else { HEADERS6 };
        let len = headers + dns.len();
        let frame = match self.free.pop() {
            Some(f) if len <= TX_SLOT => f,
            other => {
                self.free.extend(other);
                spill.push((dns.to_vec(), src));
                return;
            }
        };
        // SAFETY: a free frame is ours alone until its descriptor is produced.
        let out = unsafe { std::slice::from_raw_parts_mut(self.frame(frame), len) };
        write_reply(query, dns, out);
        self.tx.set(
            self.tx_next,
            libc::xdp_desc {
                addr: frame,
                len: len as u32,
                options: 0,
            },
        );
        self.tx_next = self.tx_next.wrapping_add(1);
    }

    /// Queries the kernel dropped on their way to this socket since it was bound, because the
    /// receive ring or the free frames ran out while the server was busy or paused; 0 if the
    /// kernel will not say.
    pub fn dropped(&self) -> u64 {
        // SAFETY: all-zero is a valid xdp_statistics.
        let mut stats: libc::xdp_statistics = unsafe { zeroed() };
        let fd = self.fd.as_raw_fd();
        match read_sockopt(fd, libc::XDP_STATISTICS, &mut stats, "XDP statistics") {
            Ok(()) => stats.rx_dropped + stats.rx_ring_full,
            Err(_) => 0,
        }
    }

    /// Publishes queued replies and asks the kernel to send them. In copy mode only a send call
    /// moves them, whatever the ring's wake-up flag says, a few dozen per call.
    fn kick(&mut self) {
        self.tx.producer().store(self.tx_next, Ordering::Release);
        for _ in 0..TX_RING / 16 {
            if self.tx.consumer().load(Ordering::Acquire) == self.tx_next {
                return;
            }
            // SAFETY: sendto with no data on an AF_XDP socket only wakes its transmit path.
            let r = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    ptr::null(),
                    0,
                )
            };
            if r < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) => {}
                    _ => return,
                }
            }
        }
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // SAFETY: the frames mapped in `bind`; the rings unmap themselves, the socket closes.
        unsafe { libc::munmap(self.umem.as_ptr().cast(), UMEM) };
    }
}

/// The source and DNS message of a UDP packet the program let through; a link-local IPv6
/// source is scoped to `ifindex`, so a reply sent another way finds it.
fn parse(p: &[u8], ifindex: u32) -> Option<(SocketAddr, &[u8])> {
    match p.get(12..14)? {
        [0x08, 0x00] => parse4(p).map(|(a, dns)| (SocketAddr::V4(a), dns)),
        [0x86, 0xdd] => parse6(p, ifindex).map(|(a, dns)| (SocketAddr::V6(a), dns)),
        _ => None,
    }
}

fn parse4(p: &[u8]) -> Option<(SocketAddrV4, &[u8])> {
    if p.len() < HEADERS || p[14] != 0x45 || p[23] != 17 {
        return None;
    }
    let ip_len = usize::from(u16::from_be_bytes([p[16], p[17]]));
    let udp_len = usize::from(u16::from_be_bytes([p[38], p[39]]));
    if ip_len < 28 || 14 + ip_len > p.len() || udp_len < 8 || udp_len > ip_len - 20 {
        return None;
    }
    let src = Ipv4Addr::new(p[26], p[27], p[28], p[29]);
    let port = u16::from_be_bytes([p[34], p[35]]);
    Some((SocketAddrV4::new(src, port), &p[HEADERS..34 + udp_len]))
}

fn parse6(p: &[u8], ifindex: u32) -> Option<(SocketAddrV6, &[u8])> {
    if p.len() < HEADERS6 || p[14] >> 4 != 6 || p[20] != 17 {
        return None;
    }
    let payload = usize::from(u16::from_be_bytes([p[18], p[19]]));
    let udp_len = usize::from(u16::from_be_bytes([p[58], p[59]]));
    if 54 + payload > p.len() || udp_len < 8 || udp_len > payload {
        return None;
    }
    let src: [u8; 16] = p[22..38].try_into().ok()?;
    let src = Ipv6Addr::from(src);
    let port = u16::from_be_bytes([p[54], p[55]]);
    let scope = if src.is_unicast_link_local() {
        ifindex
    } else {
        0
    };
    let dns = &p[HEADERS6..54 + udp_len];
    Some((SocketAddrV6::new(src, port, 0, scope), dns))
}

/// Writes the reply frame for `query`: addresses and ports swapped, then `dns`.
fn write_reply(query: &[u8], dns: &[u8], out: &mut [u8]) {
    out[0..6].copy_from_slice(&query[6..12]);
    out[6..12].copy_from_slice(&query[0..6]);
    out[12..14].copy_from_slice(&query[12..14]);
    let udp_len = 8 + dns.len() as u16;
    // The IP header; then where UDP starts, and the pseudo-header's sum (addresses, protocol,
    // UDP length).
    let (udp, pseudo) = if query[12..14] == [0x08, 0x00] {
        out[14..26].copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        out[16..18].copy_from_slice(&(20 + udp_len).to_be_bytes());
        out[26..30].copy_from_slice(&query[30..34]);
        out[30..34].copy_from_slice(&query[26..30]);
        let ip_sum = checksum(0, &out[14..34]);
        out[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        (34, sum16(0, &out[26..34]))
    } else {
        out[14..22].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, 17, 64]);
        out[18..20].copy_from_slice(&udp_len.to_be_bytes());
        out[22..38].copy_from_slice(&query[38..54]);
        out[38..54].copy_from_slice(&query[22..38]);
        (54, sum16(0, &out[22..54]))
    };
    out[udp..udp + 2].copy_from_slice(&query[udp + 2..udp + 4]);
    out[udp + 2..udp + 4].copy_from_slice(&query[udp..udp + 2]);
    out[udp + 4..udp + 6].copy_from_slice(&udp_len.to_be_bytes());
    out[udp + 6..udp + 8].copy_from_slice(&[0, 0]);
    out[udp + 8..].copy_from_slice(dns);
    let sum = sum16(pseudo + 17 + u32::from(udp_len), &out[udp..]);
    let udp_sum = match fold(sum) {
        0xffff => 0xffff,
        s => !s,
    };
    out[udp + 6..udp + 8].copy_from_slice(&udp_sum.to_be_bytes());
}

fn sum16(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `bytes` (RFC 1071).
fn checksum(start: u32, bytes: &[u8]) -> u16 {
    !fold(sum16(start, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of `headers` then `dns`, with its Ethernet header filled in.
    fn ethernet(ethertype: [u8; 2], headers: usize, dns: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; headers + dns.len()];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&ethertype);
        f[headers..].copy_from_slice(dns);
        f
    }

    fn query_frame(dns: &[u8]) -> Vec<u8> {
        let mut f = ethernet([0x08, 0x00], HEADERS, dns);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((28 + dns.len()) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&[192, 168, 1, 20]);
        f[30..34].copy_from_slice(&[192, 168, 1, 2]);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f[38..40].copy_from_slice(&((8 + dns.len()) as u16).to_be_bytes());
        f
    }

    #[test]
    fn a_reply_goes_back_to_the_sender_with_valid_checksums() {
        let q = query_frame(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00");
        let (src, dns) = parse(&q, 1).unwrap();
        assert_eq!(src, "192.168.1.20:40000".parse().unwrap());
        assert_eq!(dns.len(), 12);
        let answer = b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x07";
        let mut out = vec![0u8; HEADERS + answer.len()];
        write_reply(&q, answer, &mut out);
        assert_eq!(&out[0..6], &q[6..12], "to the sender's MAC");
        assert_eq!(&out[30..34], &[192, 168, 1, 20], "to the sender's address");
        assert_eq!(&out[36..38], &40000u16.to_be_bytes(), "and port");
        assert_eq!(&out[34..36], &53u16.to_be_bytes(), "from port 53");
        assert_eq!(checksum(0, &out[14..34]), 0, "IPv4 header checksum");
        let udp_len = u32::from(u16::from_be_bytes([out[38], out[39]]));
        let pseudo = sum16(0, &out[26..34]) + 17 + udp_len;
        assert_eq!(checksum(pseudo, &out[34..]), 0, "UDP checksum");
        assert_eq!(&out[HEADERS..], answer);
    }

    #[test]
    fn packets_the_program_should_not_have_sent_are_left_alone() {
        let mut fragment = query_frame(&[0; 12]);
        fragment[14] = 0x46;
        assert!(parse(&fragment, 1).is_none(), "IP options");
        let mut short = query_frame(&[0; 12]);
        short[16..18].copy_from_slice(&200u16.to_be_bytes());
        assert!(parse(&short, 1).is_none(), "length past the frame");
        let mut padded = query_frame(&[7; 12]);
        padded.extend([0; 6]);
        assert_eq!(
            parse(&padded, 1).unwrap().1,
            &[7; 12],
            "Ethernet padding is not DNS"
        );
    }

    fn query_frame6(src: Ipv6Addr, dns: &[u8]) -> Vec<u8> {
        let mut f = ethernet([0x86, 0xdd], HEADERS6, dns);
        f[14] = 0x60;
        f[18..20].copy_from_slice(&((8 + dns.len()) as u16).to_be_bytes());
        f[20] = 17;
        f[21] = 64;
        f[22..38].copy_from_slice(&src.octets());
        f[38..54].copy_from_slice(&"2001:db8::53".parse::<Ipv6Addr>().unwrap().octets());
        f[54..56].copy_from_slice(&40000u16.to_be_bytes());
        f[56..58].copy_from_slice(&53u16.to_be_bytes());
        f[58..60].copy_from_slice(&((8 + dns.len()) as u16).to_be_bytes());
        f
    }

    #[test]
    fn an_ipv6_reply_goes_back_to_the_sender_with_a_valid_checksum() {
        let device: Ipv6Addr = "2001:db8::20".parse().unwrap();
        let q = query_frame6(device, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00");
        let (src, dns) = parse(&q, 3).unwrap();
        assert_eq!(src, "[2001:db8::20]:40000".parse().unwrap());
        assert_eq!(dns.len(), 12);
        let answer = b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x07";
        let mut out = vec![0u8; HEADERS6 + answer.len()];
        write_reply(&q, answer, &mut out);
        assert_eq!(&out[0..6], &q[6..12], "to the sender's MAC");
        assert_eq!(&out[12..14], &[0x86, 0xdd]);
        assert_eq!(out[14] >> 4, 6);
        assert_eq!(&out[22..38], &q[38..54], "from the address it was sent to");
        assert_eq!(&out[38..54], &device.octets(), "to the sender");
        assert_eq!(&out[54..56], &53u16.to_be_bytes(), "from port 53");
        assert_eq!(&out[56..58], &40000u16.to_be_bytes(), "to its port");
        let udp_len = u32::from(u16::from_be_bytes([out[58], out[59]]));
        assert_eq!(udp_len as usize, 8 + answer.len());
        assert_eq!(
            &out[18..20],
            &(udp_len as u16).to_be_bytes(),
            "payload length"
        );
        let pseudo = sum16(0, &out[22..54]) + 17 + udp_len;
        assert_eq!(checksum(pseudo, &out[54..]), 0, "UDP checksum");
        assert_ne!(&out[60..62], &[0, 0], "IPv6 requires the checksum");
        assert_eq!(&out[HEADERS6..], answer);
    }

    #[test]
    fn a_link_local_sender_is_scoped_to_the_interface() {
        let q = query_frame6("fe80::1".parse().unwrap(), &[0; 12]);
        match parse(&q, 7).unwrap().0 {
            SocketAddr::V6(a) => assert_eq!(a.scope_id(), 7),
            other => panic!("{other}"),
        }
        let mut extension = query_frame6("2001:db8::20".parse().unwrap(), &[0; 12]);
        extension[20] = 0; // hop-by-hop options
        assert!(parse(&extension, 7).is_none(), "extension headers");
        let mut long = query_frame6("2001:db8::20".parse().unwrap(), &[0; 12]);
        long[18..20].copy_from_slice(&500u16.to_be_bytes());
        assert!(parse(&long, 7).is_none(), "length past the frame");
    }
}
