"""The seccomp filter for sandboxed programs: a deny list compiled to classic BPF with libseccomp.

A maths program needs to compute, allocate and write to its stdout; it never needs to start processes or
threads, exec, signal or trace other processes, open sockets, make device nodes or FIFOs, mount, enter or
create namespaces, or use the kernel's rarely needed and often exploited interfaces (BPF, perf, io_uring,
userfaultfd, keyrings, System V IPC). Every one of those system calls *kills the whole process*
(``SECCOMP_RET_KILL_PROCESS``, the parent sees ``SIGSYS``) instead of failing with an error: a program
that catches ``PermissionError`` must not go on to return an answer as if its attack had not happened.

The filter is a deny list (everything else allowed) because CPython's own start-up and the standard library
use a long, version-dependent list of ordinary calls; the calls denied here are the ones that reach
outside the process. The calls are named, not numbered: libseccomp resolves each name for this machine's
architecture, rejects other ABIs (e.g. 32-bit ``int 0x80`` calls on x86-64 and the x32 ABI) and emits the
BPF program. The program is built once in the parent (:func:`filter_bpf`) and installed by the launcher
inside the sandbox just before the untrusted program starts (``prctl(PR_SET_SECCOMP)`` with
``no_new_privs``), after the interpreter has started (``execve`` is denied too, so it cannot be installed
earlier).

libseccomp is reached through ``ctypes`` (its C library ``libseccomp.so.2``, Debian/Ubuntu package
``libseccomp2``, which ``apt`` itself depends on), so no Python package is needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import tempfile

#: every system call the sandboxed program may not make, grouped by why.
DENIED_SYSCALLS: dict[str, tuple[str, ...]] = {
    "new processes, threads and programs": (
        "fork", "vfork", "clone", "clone3", "execve", "execveat"),
    "other processes": (
        "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal",
        "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "process_mrelease",
        "kcmp"),
    "network": (
        "socket", "socketpair", "connect", "accept", "accept4", "bind", "listen", "sendto", "recvfrom",
        "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "getsockopt", "setsockopt", "getsockname",
        "getpeername"),
    "special files": ("mknod", "mknodat", "memfd_create", "memfd_secret"),
    "mounts and namespaces": (
        "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen",
        "fsconfig", "fsmount", "fspick", "mount_setattr", "name_to_handle_at", "open_by_handle_at"),
    "identity": (
        "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
        "setgroups", "capset"),
    "System V IPC and message queues": (
        "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget", "msgsnd",
        "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
        "mq_getsetattr"),
    "kernel interfaces": (
        "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
        "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
        "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
        "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "iopl",
        "ioperm", "modify_ldt", "personality", "uselib", "vhangup", "lookup_dcookie", "fanotify_init",
        "move_pages", "migrate_pages", "mbind", "set_mempolicy"),
}

_ACT_KILL_PROCESS = 0x80000000
_ACT_ALLOW = 0x7FFF0000
_ATTR_ACT_BADARCH = 2

#: the apt package that provides the C library (named in error messages).
APT_PACKAGE = "libseccomp2"


class SeccompUnavailable(RuntimeError):
    """libseccomp cannot be loaded or refused to build the filter."""


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(
            f"libseccomp is not installed ({exc}); install it with `apt-get install -y {APT_PACKAGE}` "
            "(Debian/Ubuntu) or `dnf install libseccomp` (Fedora/RHEL)") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    return lib


def denied_syscalls() -> list[str]:
    """The deny list as one flat list of names."""
    return [name for group in DENIED_SYSCALLS.values() for name in group]


@functools.lru_cache(maxsize=1)
def filter_bpf() -> tuple[bytes, tuple[str, ...]]:
    """The compiled filter (raw ``struct sock_filter`` array) and the names it covers on this architecture
    (a name this architecture or libseccomp version does not know, e.g. ``fork`` on arm64, is skipped)."""
    lib = _lib()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        if lib.seccomp_attr_set(ctx, _ATTR_ACT_BADARCH, _ACT_KILL_PROCESS) != 0:
            raise SeccompUnavailable("libseccomp could not set the bad-architecture action")
        covered = []
        for name in denied_syscalls():
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:  # unknown here (__NR_SCMP_ERROR) or a pseudo number for a call this arch lacks
                continue
            rc = lib.seccomp_rule_add_array(ctx, _ACT_KILL_PROCESS, number, 0, None)
            if rc != 0:
                raise SeccompUnavailable(f"libseccomp refused a rule for {name}: {os.strerror(-rc)}")
            covered.append(name)
        with tempfile.TemporaryFile() as f:  # an unnamed file: nothing is left behind
            rc = lib.seccomp_export_bpf(ctx, f.fileno())
            if rc != 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            f.seek(0)
            bpf = f.read()
    finally:
        lib.seccomp_release(ctx)
    if not bpf or len(bpf) % 8:
        raise SeccompUnavailable(f"libseccomp exported a malformed filter ({len(bpf)} bytes)")
    return bpf, tuple(covered)
