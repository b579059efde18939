//! A batching UDP load generator for `benches/load.sh`.
//!
//! dnsperf spends a whole core at roughly 125,000-165,000 queries per second on a small machine,
//! so it cannot show a server that is faster than that, and it reports only the average latency.
//! This client sends and receives in batches (`sendmmsg`/`recvmmsg`), keeps a fixed number of
//! queries in flight (or paces them at a fixed rate), and records every answer's latency in a
//! 1-microsecond histogram so it can report percentiles.
//!
//! Modes:
//! - load (default): run for `--seconds`, saturating at `--inflight` queries in flight, or at
//!   `--qps` queries per second; prints one line of `key=value` results.
//! - `--once`: send every query in the file once (to warm caches), then report.
//! - `--probe NAME`: ask for NAME every 2 ms until a NOERROR answer with records arrives; print the
//!   milliseconds since `--since-ns` (a `date +%s%N` taken before the server was started).

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

/// Queries per `sendmmsg` / `recvmmsg` call.
const BATCH: usize = 64;
/// Histogram resolution is 1 us; latencies beyond this land in the last bucket.
const HIST_US: usize = 200_000;
const MAX_PACKET: usize = 1500;
/// Control buffer per received message, in u64 words so it is aligned for a cmsghdr: room for
/// one SCM_TIMESTAMPNS (16-byte header + 16-byte timespec) with space to spare.
const CONTROL_WORDS: usize = 8;
/// The longest sleep while waiting for answers.
const IDLE_WAIT: Duration = Duration::from_millis(1);

#[derive(Parser)]
#[command(about = "Batching DNS load generator (UDP) for the schoolgate load benchmark")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:53")]
    server: SocketAddr,
    /// Query file in dnsperf format (`name TYPE` per line).
    #[arg(long)]
    queries: Option<PathBuf>,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Send at this rate instead of as fast as the window allows.
    #[arg(long)]
    qps: Option<f64>,
    /// Queries in flight at most.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// Source sockets (distinct ports), used in turn.
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// A query unanswered after this many milliseconds is lost.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Start this many queries into the file, so runs after the first still meet names the
    /// server has never seen.
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Send each query in the file once, then stop.
    #[arg(long)]
    once: bool,
    /// Probe mode: the name to ask for until it is answered.
    #[arg(long)]
    probe: Option<String>,
    /// Probe mode: wall-clock start (ns since the epoch) to measure from.
    #[arg(long)]
    since_ns: Option<u128>,
}

fn main() {
    let args = Args::parse();
    // Paced runs sleep until the next query is due, often for a few microseconds; the default
    // 50 us timer slack would stretch each of those sleeps.
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let result = match &args.probe {
        Some(name) => probe(&args, name),
        None => load(&args),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

/// Encodes a query with ID 0 and RD set, no EDNS (as dnsperf sends by default).
fn encode(name: &str, qtype: u16) -> Vec<u8> {
    let mut p = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        p.push(label.len().min(63) as u8);
        p.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p
}

fn qtype_of(s: &str) -> u16 {
    match s.to_ascii_uppercase().as_str() {
        "AAAA" => 28,
        "MX" => 15,
        "TXT" => 16,
        "HTTPS" => 65,
        "CNAME" => 5,
        "NS" => 2,
        _ => 1,
    }
}

fn read_queries(path: &PathBuf) -> std::io::Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            Some(encode(name, qtype_of(f.next().unwrap_or("A"))))
        })
        .collect())
}

/// A client socket connected to `server`; with `stamps`, the kernel stamps each answer's arrival.
fn socket(server: SocketAddr, stamps: bool) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    let on: libc::c_int = 1;
    // SAFETY: SO_TIMESTAMPNS takes an int flag; the pointer and length describe a live int.
    if stamps
        && unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let local: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0".parse().expect("literal")
    } else {
        "[::1]:0".parse().expect("literal")
    };
    s.bind(&local.into())?;
    s.connect(&server.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Nanoseconds since the run began, on the clock the kernel stamps received packets with.
struct Clock {
    base: u64,
}

impl Clock {
    fn new() -> Self {
        Clock {
            base: realtime_ns(),
        }
    }

    fn now(&self) -> u64 {
        self.since(realtime_ns())
    }

    /// A kernel receive stamp (or any realtime reading) on this clock; never zero, as zero marks
    /// a free slot.
    fn since(&self, realtime: u64) -> u64 {
        realtime.saturating_sub(self.base) + 1
    }
}

fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec for the duration of the call.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Latencies and answer codes.
///
/// In paced runs latency runs from just before the query was sent to when the kernel received
/// the answer (`SO_TIMESTAMPNS`), so time the client itself took to get round to reading it, on a
/// CPU shared with the upstream, is not counted against the server. `read_hist` keeps the latency
/// to when the client read the answer, as dnsperf measures it (and as saturating runs do).
struct Stats {
    hist: Vec<u32>,
    read_hist: Vec<u32>,
    answered: u64,
    sum_ns: u128,
    rcodes: [u64; 16],
    lost: u64,
    sent: u64,
}

impl Stats {
    fn record(&mut self, ns: u64, read_ns: u64, rcode: u8) {
        let bucket = |ns: u64| ((ns / 1000) as usize).min(HIST_US - 1);
        self.hist[bucket(ns)] += 1;
        self.read_hist[bucket(read_ns)] += 1;
        self.answered += 1;
        self.sum_ns += u128::from(ns);
        self.rcodes[(rcode & 0xF) as usize] += 1;
    }
}

/// The `p` percentile of a histogram holding `answered` latencies.
fn percentile_us(hist: &[u32], answered: u64, p: f64) -> usize {
    let want = ((answered as f64) * p).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (us, &n) in hist.iter().enumerate() {
        seen += u64::from(n);
        if seen >= want {
            return us + 1;
        }
    }
    HIST_US
}

/// The in-flight table: send time per query ID, and the IDs in the order they were sent.
///
/// An ID whose query is still waiting is skipped when IDs wrap, so one lost query never holds
/// up the rest until it times out.
struct Flight {
    sent_at: Vec<u64>,
    order: VecDeque<(u16, u64)>,
    next_id: u16,
    outstanding: usize,
}

impl Flight {
    fn room(&self, inflight: usize) -> usize {
        inflight.saturating_sub(self.outstanding)
    }

    /// The next free ID, marked as sent at `now`.
    fn take(&mut self, now: u64) -> Option<u16> {
        for _ in 0..=u16::MAX as usize {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if self.sent_at[id as usize] == 0 {
                self.sent_at[id as usize] = now;
                self.order.push_back((id, now));
                self.outstanding += 1;
                return Some(id);
            }
        }
        None
    }

    /// Gives back IDs whose send failed.
    fn untake(&mut self, id: u16) {
        self.sent_at[id as usize] = 0;
        self.order.pop_back();
        self.outstanding -= 1;
    }

    /// Drops answered entries from the front and counts timed-out ones as lost.
    fn expire(&mut self, now: u64, timeout_ns: u64, stats: &mut Stats) {
        while let Some(&(id, at)) = self.order.front() {
            let slot = &mut self.sent_at[id as usize];
            if *slot == at {
                if now.saturating_sub(at) < timeout_ns {
                    break;
                }
                *slot = 0;
                self.outstanding -= 1;
                stats.lost += 1;
            }
            self.order.pop_front();
        }
    }
}

fn load(args: &Args) -> Result<(), String> {
    let path = args.queries.as_ref().ok_or("--queries is required")?;
    let queries = read_queries(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if queries.is_empty() {
        return Err(format!("{}: no queries", path.display()));
    }
    let socks: Vec<UdpSocket> = (0..args.sockets.max(1))
        // Stamping costs the client a few percent of its peak; only paced runs need it.
        .map(|_| socket(args.server, args.qps.is_some()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("socket: {e}"))?;
    let timeout_ns = args.timeout_ms * 1_000_000;
    let mut stats = Stats {
        hist: vec![0; HIST_US],
        read_hist: vec![0; HIST_US],
        answered: 0,
        sum_ns: 0,
        rcodes: [0; 16],
        lost: 0,
        sent: 0,
    };
    let mut flight = Flight {
        sent_at: vec![0; 65_536],
        order: VecDeque::new(),
        next_id: 0,
        outstanding: 0,
    };
    let mut out_bufs = vec![[0u8; MAX_PACKET]; BATCH];
    let mut out_lens = [0usize; BATCH];
    let mut in_bufs = vec![[0u8; MAX_PACKET]; BATCH];
    let mut next_query = args.skip % queries.len();
    let mut next_sock = 0usize;
    let start = Instant::now();
    let clock = Clock::new();
    let send_for = Duration::from_secs_f64(args.seconds);
    let mut sending_until = None;
    let mut last_answer = start;

    loop {
        let now = clock.now();
        let elapsed = start.elapsed();
        let done_sending = if args.once {
            stats.sent as usize >= queries.len()
        } else {
            elapsed >= send_for
        };
        if done_sending && sending_until.is_none() {
            sending_until = Some(elapsed);
        }
        if done_sending
            && (flight.outstanding == 0
                || elapsed > sending_until.unwrap_or(elapsed) + Duration::from_nanos(timeout_ns))
        {
            break;
        }

        // Send a batch.
        let mut want = if done_sending {
            0
        } else {
            flight.room(args.inflight).min(BATCH)
        };
        if let Some(qps) = args.qps {
            let due = (elapsed.as_secs_f64() * qps) as u64;
            want = want.min(due.saturating_sub(stats.sent) as usize);
        }
        if args.once {
            want = want.min(queries.len() - stats.sent as usize);
        }
        if want > 0 {
            let mut ids = [0u16; BATCH];
            let mut n = 0;
            while n < want {
                let Some(id) = flight.take(now) else { break };
                let q = &queries[next_query];
                next_query = (next_query + 1) % queries.len();
                out_bufs[n][..q.len()].copy_from_slice(q);
                out_bufs[n][..2].copy_from_slice(&id.to_be_bytes());
                out_lens[n] = q.len();
                ids[n] = id;
                n += 1;
            }
            let sock = &socks[next_sock];
            next_sock = (next_sock + 1) % socks.len();
            let sent = send_batch(sock, &mut out_bufs[..n], &out_lens[..n]);
            for &id in ids[sent..n].iter().rev() {
                flight.untake(id);
            }
            stats.sent += sent as u64;
        }

        // Receive whatever has arrived on every socket.
        let mut got = 0;
        for sock in &socks {
            loop {
                let (n, lens, stamps) = recv_batch(sock, &mut in_bufs);
                if n == 0 {
                    break;
                }
                let read = clock.now();
                for ((buf, &len), &stamp) in in_bufs.iter().zip(&lens).zip(&stamps).take(n) {
                    if len < 12 {
                        continue;
                    }
                    let slot = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                    let sent = flight.sent_at[slot];
                    if sent == 0 {
                        continue;
                    }
                    flight.sent_at[slot] = 0;
                    flight.outstanding -= 1;
                    let arrived = if stamp > 0 { clock.since(stamp) } else { read };
                    stats.record(arrived.saturating_sub(sent), read - sent, buf[3]);
                }
                got += n;
                if n < BATCH {
                    break;
                }
            }
        }
        if got > 0 {
            last_answer = Instant::now();
        }
        flight.expire(clock.now(), timeout_ns, &mut stats);

        // Nothing to do until an answer arrives or the next query is due. Paced runs sleep
        // rather than spin, so the upstream sharing the load CPU is not starved, but only until
        // the next query's time: sleeping a whole millisecond would send in bursts, and the
        // queue a burst builds at the server would be measured as its latency.
        if got == 0 && (want == 0 || flight.room(args.inflight) == 0) {
            let next_due = match args.qps {
                Some(qps) if flight.room(args.inflight) > 0 && !done_sending => {
                    let due_at = Duration::from_secs_f64((stats.sent + 1) as f64 / qps);
                    due_at.saturating_sub(start.elapsed())
                }
                _ => IDLE_WAIT,
            };
            if !next_due.is_zero() {
                wait(&socks, next_due.min(IDLE_WAIT));
            }
        }
    }
    let window = last_answer.duration_since(start).as_secs_f64().max(1e-9);
    let avg_us = if stats.answered > 0 {
        stats.sum_ns as f64 / stats.answered as f64 / 1000.0
    } else {
        0.0
    };
    let r = &stats.rcodes;
    println!(
        "sent={} answered={} lost={} seconds={:.3} qps={:.0} avg_us={:.1} p50_us={} p99_us={} p999_us={} read_p99_us={} noerror={} servfail={} nxdomain={} refused={} other={}",
        stats.sent,
        stats.answered,
        stats.lost,
        window,
        stats.answered as f64 / window,
        avg_us,
        percentile_us(&stats.hist, stats.answered, 0.50),
        percentile_us(&stats.hist, stats.answered, 0.99),
        percentile_us(&stats.hist, stats.answered, 0.999),
        percentile_us(&stats.read_hist, stats.answered, 0.99),
        r[0],
        r[2],
        r[3],
        r[5],
        stats.answered - r[0] - r[2] - r[3] - r[5],
    );
    Ok(())
}

/// One message header per buffer, for sendmmsg/recvmmsg.
fn headers(iovs: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    iovs.iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero msghdr is a valid "no address, no control data" header.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect()
}

fn send_batch(sock: &UdpSocket, bufs: &mut [[u8; MAX_PACKET]], lens: &[usize]) -> usize {
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .zip(lens)
        .map(|(b, &len)| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: len,
        })
        .collect();
    let mut msgs = headers(&mut iovs);
    // SAFETY: `msgs` points at live iovecs over live buffers for the duration of the call.
    let n = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as u32,
            libc::MSG_DONTWAIT,
        )
    };
    n.max(0) as usize
}

/// Receives up to a batch: the count, each message's length and its kernel receive time.
fn recv_batch(
    sock: &UdpSocket,
    bufs: &mut [[u8; MAX_PACKET]],
) -> (usize, [usize; BATCH], [u64; BATCH]) {
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: MAX_PACKET,
        })
        .collect();
    let mut msgs = headers(&mut iovs);
    let mut control = [[0u64; CONTROL_WORDS]; BATCH];
    for (m, c) in msgs.iter_mut().zip(control.iter_mut()) {
        m.msg_hdr.msg_control = c.as_mut_ptr().cast();
        m.msg_hdr.msg_controllen = std::mem::size_of_val(c);
    }
    // SAFETY: `msgs` points at live iovecs over live, writable buffers, and at live control
    // buffers, for the duration of the call.
    let n = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    let n = n.max(0) as usize;
    let mut lens = [0usize; BATCH];
    let mut stamps = [0u64; BATCH];
    for ((l, t), m) in lens.iter_mut().zip(&mut stamps).zip(&msgs).take(n) {
        *l = m.msg_len as usize;
        *t = receive_stamp(&m.msg_hdr);
    }
    (n, lens, stamps)
}

/// The kernel's receive time (realtime ns) from a received message's control data, or 0.
fn receive_stamp(h: &libc::msghdr) -> u64 {
    // SAFETY: the kernel filled `h`'s control buffer; the CMSG macros walk it within
    // `msg_controllen`, and SCM_TIMESTAMPNS data is one timespec.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                return ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

fn wait(socks: &[UdpSocket], timeout: Duration) {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // SAFETY: `fds` is a live array of pollfd and `ts` a live timespec for the duration of the call.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        );
    }
}

fn probe(args: &Args, name: &str) -> Result<(), String> {
    let sock = socket(args.server, false).map_err(|e| format!("socket: {e}"))?;
    let mut q = encode(name, 1);
    let give_up = Instant::now() + Duration::from_millis(args.timeout_ms.max(1000) * 60);
    let mut buf = [0u8; MAX_PACKET];
    let mut id: u16 = 0;
    while Instant::now() < give_up {
        id = id.wrapping_add(1);
        q[..2].copy_from_slice(&id.to_be_bytes());
        let _ = sock.send(&q);
        let deadline = Instant::now() + Duration::from_millis(2);
        while Instant::now() < deadline {
            match sock.recv(&mut buf) {
                Ok(n)
                    if n >= 12 && buf[3] & 0xF == 0 && u16::from_be_bytes([buf[6], buf[7]]) > 0 =>
                {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_err(|e| e.to_string())?
                        .as_nanos();
                    let since = args.since_ns.unwrap_or(now);
                    println!("startup_ms={:.1}", now.saturating_sub(since) as f64 / 1e6);
                    return Ok(());
                }
                Ok(_) => {}
                Err(_) => wait(std::slice::from_ref(&sock), IDLE_WAIT),
            }
        }
    }
    Err(format!("no answer for {name} from {}", args.server))
}
