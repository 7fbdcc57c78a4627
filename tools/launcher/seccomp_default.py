"""The default syscall policy of containers, as data in Docker's seccomp profile format.

Its coverage is that of Docker's default profile: an allowlist (anything not named fails with
EPERM) of the calls ordinary programs make, and calls that reach kernel state no namespace
isolates (keyrings, BPF, perf, modules, the clock, swap, reboot, new namespaces and mounts)
allowed only with the capability that the kernel itself would ask for (``--cap-add``). Names
that this machine's libseccomp does not know are skipped, so the list may name calls newer than
it. ``python -m pbuild.tools.launcher.seccomp_default`` prints it as JSON, a start for a profile
of one's own (``--security-opt seccomp=FILE``).

Differences from Docker's, each stricter: ``name_to_handle_at`` needs CAP_DAC_READ_SEARCH like
its partner ``open_by_handle_at``; ``pivot_root`` and ``open_tree_attr`` are grouped with the
mount calls under CAP_SYS_ADMIN.
"""

from __future__ import annotations

import json
from typing import Any

# Allowed to everyone, by topic (the topic becomes the entry's "comment").
_ALLOWED: dict[str, str] = {
    "files and directories": """
        access faccessat faccessat2 chdir fchdir getcwd chmod fchmod fchmodat fchmodat2
        chown chown32 fchown fchown32 fchownat lchown lchown32 creat open openat openat2 close
        close_range mkdir mkdirat mknod mknodat rmdir rename renameat renameat2 link linkat
        symlink symlinkat unlink unlinkat readlink readlinkat stat stat64 lstat lstat64 fstat
        fstat64 fstatat64 newfstatat statx statfs statfs64 fstatfs fstatfs64 truncate
        truncate64 ftruncate ftruncate64 fallocate umask utime utimes utimensat
        utimensat_time64 futimesat getdents getdents64 flock fcntl fcntl64 fadvise64
        fadvise64_64 readahead fsync fdatasync sync syncfs sync_file_range inotify_init
        inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark statmount listmount
    """,
    "extended attributes": """
        getxattr lgetxattr fgetxattr getxattrat setxattr lsetxattr fsetxattr setxattrat
        listxattr llistxattr flistxattr listxattrat removexattr lremovexattr fremovexattr
        removexattrat
    """,
    "reading, writing and waiting on file descriptors": """
        read readv pread64 preadv preadv2 write writev pwrite64 pwritev pwritev2 lseek _llseek
        sendfile sendfile64 splice tee vmsplice copy_file_range cachestat dup dup2 dup3 pipe
        pipe2 ioctl select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64
        epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old
        epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd signalfd4 timerfd_create
        timerfd_settime timerfd_settime64 timerfd_gettime timerfd_gettime64 io_setup
        io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64
        ioprio_get ioprio_set
    """,
    "memory": """
        brk mmap mmap2 munmap mremap mprotect madvise mincore msync mlock mlock2 mlockall
        munlock munlockall remap_file_pages membarrier memfd_create memfd_secret pkey_alloc
        pkey_free pkey_mprotect map_shadow_stack mseal process_mrelease
    """,
    "processes and threads": """
        fork vfork execve execveat exit exit_group wait4 waitid waitpid getpid getppid gettid
        getpgid setpgid getpgrp getsid setsid set_tid_address set_robust_list get_robust_list
        rseq restart_syscall prctl seccomp get_thread_area set_thread_area getcpu pidfd_open
        pidfd_send_signal futex futex_time64 futex_waitv futex_wake futex_wait futex_requeue
        landlock_create_ruleset landlock_add_rule landlock_restrict_self uretprobe
    """,
    "signals": """
        kill tkill tgkill rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigsuspend
        rt_sigtimedwait rt_sigtimedwait_time64 rt_sigqueueinfo rt_tgsigqueueinfo sigaltstack
        sigprocmask sigreturn pause alarm
    """,
    "clocks and timers (reading; the kernel checks CAP_SYS_TIME for adjtimex changes)": """
        time gettimeofday clock_gettime clock_gettime64 clock_getres clock_getres_time64
        clock_nanosleep clock_nanosleep_time64 nanosleep adjtimex clock_adjtime
        clock_adjtime64 times getitimer setitimer timer_create timer_delete timer_getoverrun
        timer_gettime timer_gettime64 timer_settime timer_settime64
    """,
    "users, groups and capabilities": """
        getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getresuid
        getresuid32 getresgid getresgid32 getgroups getgroups32 setuid setuid32 setgid setgid32
        setreuid setreuid32 setregid setregid32 setresuid setresuid32 setresgid setresgid32
        setfsuid setfsuid32 setfsgid setfsgid32 setgroups setgroups32 capget capset
    """,
    "limits, scheduling and system information": """
        getrlimit ugetrlimit setrlimit prlimit64 getrusage getpriority setpriority sched_yield
        sched_getaffinity sched_setaffinity sched_getattr sched_setattr sched_getparam
        sched_setparam sched_getscheduler sched_setscheduler sched_get_priority_max
        sched_get_priority_min sched_rr_get_interval sched_rr_get_interval_time64 sysinfo
        uname getrandom
    """,
    "System V and POSIX IPC (the container has its own IPC namespace)": """
        ipc msgget msgsnd msgrcv msgctl semget semop semtimedop semtimedop_time64 semctl shmget
        shmat shmdt shmctl mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive
        mq_timedreceive_time64 mq_notify mq_getsetattr
    """,
    "sockets (socket itself is limited by address family below)": """
        socketpair bind connect listen accept accept4 getsockname getpeername getsockopt
        setsockopt shutdown send sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg
        recvmmsg_time64 socketcall
    """,
}

# Calls the kernel would allow unprivileged but that reach state shared with the host: each
# needs this capability in the container's set.
_WITH_CAPABILITY: dict[str, str] = {
    "CAP_SYS_ADMIN": """
        unshare setns clone clone3 mount umount umount2 pivot_root fsopen fsconfig fsmount
        fspick move_mount open_tree open_tree_attr mount_setattr bpf perf_event_open
        fanotify_init lookup_dcookie quotactl quotactl_fd sethostname setdomainname syslog
        lsm_get_self_attr lsm_set_self_attr lsm_list_modules
    """,
    "CAP_DAC_READ_SEARCH": "open_by_handle_at name_to_handle_at",
    "CAP_SYS_PTRACE": "ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd process_madvise",
    "CAP_SYS_CHROOT": "chroot",
    "CAP_SYS_BOOT": "reboot",
    "CAP_SYS_MODULE": "init_module finit_module delete_module",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYS_RAWIO": "iopl ioperm",
    "CAP_SYS_TIME": "settimeofday stime clock_settime clock_settime64",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_SYS_NICE": "get_mempolicy set_mempolicy set_mempolicy_home_node mbind",
    "CAP_SYSLOG": "syslog",
    "CAP_BPF": "bpf",
    "CAP_PERFMON": "perf_event_open",
}

# Calls that exist on one architecture only (matched against the host's, as Docker does).
_ARCH_SPECIFIC: dict[str, tuple[str, ...]] = {
    "arch_prctl": ("amd64", "x32"),
    "modify_ldt": ("amd64", "x32", "x86"),
    "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls": ("arm", "arm64"),
    "sync_file_range2 swapcontext": ("ppc64le",),
    "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr": ("s390", "s390x"),
    "riscv_flush_icache riscv_hwprobe": ("riscv64",),
}

# Namespace flags of clone(2): without CAP_SYS_ADMIN, clone may create none of them.
_CLONE_NEW = 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00020000
# personality(2): only Linux itself, with or without UNAME26, 64 or 32 bit, and the query.
_PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)
# socket(2) families: AF_ALG (38, the kernel's crypto API) and AF_VSOCK (40, host/VM sockets
# that no network namespace isolates) are refused; 0-37, 39 and 41-45 are the families Linux
# defines. (Where socket goes through socketcall, as on 32-bit x86, its arguments are out of
# reach of a filter, as in Docker.)
_AF_ALLOWED_BELOW = 38
_AF_ALLOWED = (39, 41, 42, 43, 44, 45)


def _names(text: str) -> list[str]:
    return sorted(text.split())


def _allow(names: str, comment: str, **extra: Any) -> dict[str, Any]:
    return {"names": _names(names), "action": "SCMP_ACT_ALLOW", "comment": comment, **extra}


def _arg(index: int, op: str, value: int, value_two: int = 0) -> dict[str, Any]:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def _build() -> dict[str, Any]:
    syscalls = [_allow(names, topic) for topic, names in _ALLOWED.items()]
    syscalls.append(
        _allow(
            "ptrace process_vm_readv process_vm_writev",
            "tracing one's own processes (safe since Linux 4.8, which stopped ptrace from "
            "changing a syscall after the filter saw it)",
            includes={"minKernel": "4.8"},
        )
    )
    syscalls += [
        _allow("personality", "personality: Linux, 32 bit, UNAME26, query", args=[_arg(0, "SCMP_CMP_EQ", p)])
        for p in _PERSONALITIES
    ]
    syscalls.append(_allow("socket", "socket families", args=[_arg(0, "SCMP_CMP_LT", _AF_ALLOWED_BELOW)]))
    syscalls += [
        _allow("socket", "socket families", args=[_arg(0, "SCMP_CMP_EQ", family)]) for family in _AF_ALLOWED
    ]
    syscalls += [
        _allow(names, "architecture specific", includes={"arches": list(arches)})
        for names, arches in _ARCH_SPECIFIC.items()
    ]
    syscalls += [
        _allow(
            "clone",
            "clone without new namespaces",
            args=[_arg(0, "SCMP_CMP_MASKED_EQ", _CLONE_NEW, 0)],
            excludes={"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]},
        ),
        _allow(
            "clone",
            "clone without new namespaces (s390 passes the flags second)",
            args=[_arg(1, "SCMP_CMP_MASKED_EQ", _CLONE_NEW, 0)],
            includes={"arches": ["s390", "s390x"]},
            excludes={"caps": ["CAP_SYS_ADMIN"]},
        ),
        {
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 38,  # ENOSYS: its flags are behind a pointer; libc then falls back to clone
            "comment": "clone3 looks unimplemented, so that libc uses clone",
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
    ]
    syscalls += [
        _allow(names, f"needs {cap}", includes={"caps": [cap]}) for cap, names in _WITH_CAPABILITY.items()
    ]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,  # EPERM
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
            {"architecture": "SCMP_ARCH_PPC64LE", "subArchitectures": []},
            {"architecture": "SCMP_ARCH_S390X", "subArchitectures": ["SCMP_ARCH_S390"]},
            {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": []},
        ],
        "syscalls": syscalls,
    }


DEFAULT_PROFILE: dict[str, Any] = _build()
"""The profile of ``--security-opt seccomp=`` unset, in Docker's JSON layout."""


if __name__ == "__main__":
    print(json.dumps(DEFAULT_PROFILE, indent=2))
