//! Advice to the kernel's scheduler about the threads that answer queries.
//!
//! On a core shared by several runnable threads, a thread woken by a packet waits until the one
//! running has used its slice: about 1.4 ms by default on a two-core machine, which alone is
//! over the 1 ms a query's answer should take. Since Linux 6.12 a thread may ask for shorter
//! slices; it then waits less when woken and lets others in sooner, with the same share of the
//! core.

use std::mem::size_of;
use std::time::Duration;

/// Asks the scheduler to run the calling thread in slices of `slice` (Linux 6.12 and later; older
/// kernels ignore it). Advice only: the thread keeps its policy and nice value, and a refusal
/// changes nothing else.
pub fn short_slices(slice: Duration) {
    /// `struct sched_attr` (linux/sched/types.h), first version.
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    // SAFETY: plain system calls about the calling thread; `attr` outlives the call.
    unsafe {
        let policy = libc::sched_getscheduler(0);
        if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
            return;
        }
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice == -1 && *libc::__errno_location() != 0 {
            return;
        }
        let attr = SchedAttr {
            size: size_of::<SchedAttr>() as u32,
            policy: policy as u32,
            flags: 0,
            nice,
            priority: 0,
            runtime: slice.as_nanos() as u64,
            deadline: 0,
            period: 0,
        };
        libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0);
    }
}
