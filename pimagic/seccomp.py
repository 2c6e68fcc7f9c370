"""The sandbox's seccomp profile: an allow-list, stricter than Docker's default.

Docker's default profile already refuses the kernel interfaces a container has no
business with (mount, module loading, kexec, reboot, namespaces, ...). It gates some
of them on capabilities, which pimagic drops, so all of those stay refused here. On top,
this profile refuses what an unprivileged hostile process can still use to reach the
kernel's rarer code paths or other processes' memory:

- ``ptrace``, ``process_vm_readv``/``process_vm_writev``, ``kcmp``, ``pidfd_getfd``
  (other processes' memory and file descriptors: the token vault's children);
- ``io_uring_setup``/``io_uring_enter``/``io_uring_register`` (a second syscall path
  that bypasses the LD_PRELOAD firewall and is a rich kernel attack surface);
- ``userfaultfd``, ``perf_event_open``, ``bpf``, ``keyctl``/``add_key``/``request_key``;
- ``unshare``, ``setns``, ``clone`` with any namespace flag (argument filter on the flags),
  ``clone3`` (answered with ENOSYS, so glibc falls back to ``clone``, whose flags can be
  inspected);
- ``mount``/``umount2``/``pivot_root`` and the new mount API (``fsopen``, ``fsconfig``,
  ``fsmount``, ``fspick``, ``move_mount``, ``open_tree``, ``mount_setattr``);
- ``kexec_load``/``kexec_file_load``, ``init_module``/``finit_module``/``delete_module``,
  ``reboot``, ``swapon``/``swapoff``, clock setting, ``acct``, ``quotactl``,
  ``open_by_handle_at`` (the classic container breakout), ``name_to_handle_at``;
- ``personality`` with anything but the default persona (query allowed);
- ``socket``/``socketpair`` of any family but AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK (what
  node, git, gh, python3 and pip use): AF_VSOCK reaches the VM host of a cloud or desktop Docker
  engine, AF_ALG, AF_PACKET, ... are rare kernel code;
- ``ioctl`` TIOCSTI (type into a terminal) and TIOCLINUX: a left-behind agent process must not
  type into the user's ``pimagic run``/``shell`` terminal;
- 32-bit entry points: only the native architecture is listed, so a syscall made
  through the compat ABI (``int 0x80`` on x86_64) does not match and is refused.

Anything not on the allow-list fails with EPERM. ``no-new-privileges`` stays off: the
token vault is setuid (see container/vault/gh-vault.c).
"""

from __future__ import annotations

import json
import platform
from typing import Any

# Syscalls the agent's tools (bash, coreutils, git, gh, python3, node, pi) may make.
# Names that do not exist on an architecture are skipped by the runtime.
ALLOWED: tuple[str, ...] = tuple(
    """
    accept accept4 access adjtimex alarm arch_prctl bind brk cachestat capget capset chdir chmod chown
    clock_getres clock_gettime clock_nanosleep close close_range connect copy_file_range creat dup dup2
    dup3 epoll_create epoll_create1 epoll_ctl epoll_pwait epoll_pwait2 epoll_wait eventfd eventfd2
    execve execveat exit exit_group faccessat faccessat2 fadvise64 fallocate fchdir
    fchmod fchmodat fchmodat2 fchown fchownat fcntl fdatasync fgetxattr flistxattr flock fork
    fremovexattr fsetxattr fstat fstatfs fsync ftruncate futex futex_requeue futex_wait futex_waitv
    futex_wake futimesat get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid
    geteuid getgid getgroups getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom
    getresgid getresuid getrlimit getrusage getsid getsockname getsockopt gettid gettimeofday getuid
    getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy
    io_getevents io_pgetevents io_setup io_submit ioprio_get ioprio_set kill landlock_add_rule
    landlock_create_ruleset landlock_restrict_self lchown lgetxattr link linkat listen listxattr
    llistxattr lremovexattr lseek lsetxattr lstat madvise map_shadow_stack membarrier memfd_create
    memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mprotect mq_getsetattr
    mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink mremap msgctl msgget msgrcv msgsnd msync
    munlock munlockall munmap nanosleep newfstatat open openat openat2
    pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll prctl
    pread64 preadv preadv2 prlimit64 pselect6 pwrite64 pwritev pwritev2 read readahead readlink
    readlinkat readv recvfrom recvmmsg recvmsg remap_file_pages removexattr rename renameat renameat2
    restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn
    rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo sched_get_priority_max sched_get_priority_min
    sched_getaffinity sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select
    semctl semget semop semtimedop sendfile sendmmsg sendmsg sendto set_robust_list set_thread_area
    set_tid_address setfsgid setfsuid setgid setgroups setitimer setpgid setpriority setregid
    setresgid setresuid setreuid setrlimit setsid setsockopt setuid setxattr shmat shmctl shmdt shmget
    shutdown sigaltstack signalfd signalfd4 splice stat statfs statx symlink
    symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
    timer_getoverrun timer_gettime timer_settime timerfd_create timerfd_gettime timerfd_settime times
    tkill truncate umask uname unlink unlinkat utime utimensat utimes vfork vmsplice wait4 waitid
    waitpid write writev
    """.split()
)

# Refused on purpose (documentation and tests; the allow-list is what enforces it).
DENIED: tuple[str, ...] = tuple(
    """
    ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd process_madvise io_uring_setup
    io_uring_enter io_uring_register userfaultfd perf_event_open bpf keyctl add_key request_key unshare
    setns mount umount umount2 pivot_root chroot fsopen fsconfig fsmount fspick move_mount open_tree
    mount_setattr kexec_load kexec_file_load init_module finit_module delete_module create_module
    reboot swapon swapoff acct quotactl quotactl_fd open_by_handle_at name_to_handle_at settimeofday
    clock_settime clock_adjtime stime syslog vhangup iopl ioperm lookup_dcookie nfsservctl uselib
    sysfs _sysctl ustat vm86 vm86old mbind set_mempolicy get_mempolicy move_pages migrate_pages
    fanotify_init fanotify_mark
    """.split()
)

CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00000080  # CLONE_NEWTIME
)
PERSONALITY_ALLOWED = (0x0, 0xFFFFFFFF)  # PER_LINUX, and "query the current persona"
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
SOCKET_FAMILIES = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
IOCTL_DENIED = (TIOCSTI, TIOCLINUX)
ERRNO_EPERM = 1
ERRNO_ENOSYS = 38

_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64"],
    "amd64": ["SCMP_ARCH_X86_64"],
    "aarch64": ["SCMP_ARCH_AARCH64"],
    "arm64": ["SCMP_ARCH_AARCH64"],
}


def profile(machine: str | None = None) -> dict[str, Any]:
    """The seccomp profile as Docker's JSON schema (``defaultAction`` + ``syscalls``)."""
    machine = (machine or platform.machine()).lower()
    arches = _ARCHES.get(machine)
    if arches is None:
        raise ValueError(f"no seccomp profile for architecture {machine!r}")
    rules: list[dict[str, Any]] = [
        {"names": sorted(ALLOWED), "action": "SCMP_ACT_ALLOW"},
        # clone: only without namespace flags (the flags are argument 0 on x86_64 and arm64)
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        },
        # clone3 passes its flags in memory, out of seccomp's sight: ENOSYS makes libc use clone
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ERRNO_ENOSYS},
    ]
    for persona in PERSONALITY_ALLOWED:
        rules.append(
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": persona, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
            }
        )
    # A family with stray high bits matches no rule: refused (fail closed).
    for family in SOCKET_FAMILIES:
        rules.append(
            {
                "names": ["socket", "socketpair"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": family, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
            }
        )
    for mask, value in _complement(IOCTL_DENIED, 32):
        rules.append(
            {
                "names": ["ioctl"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 1, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": ERRNO_EPERM,
        "architectures": arches,
        "syscalls": rules,
    }


def _complement(excluded: tuple[int, ...], bits: int) -> list[tuple[int, int]]:
    """(mask, value) pairs whose masked matches cover every ``bits``-bit number but ``excluded``.

    Why not "allow ioctl, deny TIOCSTI": runc lets an unconditional allow win over a conditional
    deny of the same syscall. Why masks over the low 32 bits: the kernel truncates ioctl's request
    to an unsigned int, so 0x1_00005412 is TIOCSTI too; a 64-bit compare would let it through.
    """
    out: list[tuple[int, int]] = []

    def walk(prefix: int, depth: int) -> None:
        shift = bits - depth
        inside = [v for v in excluded if v >> shift == prefix]
        if not inside:
            out.append((((1 << depth) - 1) << shift, prefix << shift))
        elif depth < bits:
            walk(prefix << 1, depth + 1)
            walk(prefix << 1 | 1, depth + 1)

    walk(0, 0)
    return out


def profile_json(machine: str | None = None) -> str:
    """Compact JSON, as ``security_opt=["seccomp=" + profile_json()]`` wants it."""
    return json.dumps(profile(machine), separators=(",", ":"), sort_keys=True)


def security_opt(machine: str | None = None) -> list[str]:
    return ["seccomp=" + profile_json(machine)]
