//! Backups yield to Signal: the agent shares the desktop's CPU and disk, and a user typing a
//! message matters more than a snapshot finishing a second sooner.
//!
//! Two knobs, both per thread on Linux and inherited by the threads a thread starts, so they
//! are set once on the main thread before the runtime and the archive threads exist:
//! - CPU: nice 10 (`setpriority`), a tenth of a nice-0 thread's share under contention
//!   (CFS weights 110 vs 1024), yet all of an idle core.
//! - IO: the lowest best-effort priority (`ioprio_set`, class BE, level 7). Not the idle
//!   class: under a steadily busy disk an idle-class reader can starve past the final
//!   snapshot's deadline.
//!
//! How many threads compress is a separate decision ([`default_threads`]).

/// Lowers this process's CPU and IO priority; logs and carries on if the kernel refuses.
pub fn yield_to_the_desktop() {
    if let Err(err) = rustix::process::setpriority_process(None, NICE) {
        tracing::warn!(error = %err, "could not lower the CPU priority; backing up at normal priority");
    }
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT | IOPRIO_LOWEST_BE_LEVEL,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        tracing::warn!(error = %err, "could not lower the IO priority; backing up at normal IO priority");
    }
}

const NICE: i32 = 10;
// From linux/ioprio.h (not exported by the libc crate).
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_SHIFT: libc::c_int = 13;
const IOPRIO_CLASS_BE: libc::c_int = 2;
const IOPRIO_LOWEST_BE_LEVEL: libc::c_int = 7;

/// Compression threads when `--threads` is not given: what the scheduler lets this process
/// use. Rust's `available_parallelism` already honours the cgroup CPU quota (v1 and v2) and
/// the affinity mask, so in a pod with `limits.cpu: 1` this is 1, not the node's core count.
/// Without a CPU limit it is every core of the node; the manifests set one for that reason.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_the_priority_takes_effect_on_new_threads() {
        // On a thread of its own, so the test runner's other threads keep theirs.
        std::thread::spawn(|| {
            yield_to_the_desktop();
            let inherited = std::thread::spawn(|| rustix::process::getpriority_process(None))
                .join()
                .unwrap()
                .unwrap();
            assert_eq!(inherited, NICE);
            // SAFETY: ioprio_get takes two integers.
            let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
            assert_eq!(
                ioprio as libc::c_int,
                IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT | IOPRIO_LOWEST_BE_LEVEL
            );
        })
        .join()
        .unwrap();
    }
}
