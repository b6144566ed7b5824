"""Run model-written programs (program chain of thought) in separate, isolated processes.

A program a policy wrote is untrusted code, and under RL the policy *searches* for whatever earns reward:
reading the gold answer from the training data, killing or reading its siblings, switching off in-process
checks. This module is the only place Mova runs such code, and it never runs it in the calling process.

API
---
``run_program(source, config=None) -> SandboxResult``
    Run one program and wait for it (at most ``config.timeout_s`` wall-clock seconds).
``run_programs(sources, config=None, max_workers=None) -> list[SandboxResult]``
    Many programs through a small pool (threads, each waiting on its own child process); results in order.
``SandboxConfig``
    The backend and the limits (typed; a ``sandbox:`` section of a stage YAML maps onto it).
``probe_isolation(config=None) -> dict``
    What actually holds on this machine, layer by layer, measured by running a probe program.

Layers (``backend="bwrap"``, the default)
-----------------------------------------
1. **bubblewrap** (``bwrap``): each program gets its own user, mount, pid, network, ipc, uts and cgroup
   namespaces, a new session, and dies with its parent. Its file system is a fresh read-only root holding
   only the shared libraries (``/usr/lib``), the base interpreter and its standard library (no
   site-packages), ``/dev/null`` and ``/dev/urandom``, and one writable place: a tmpfs at ``/work``
   limited in bytes and in files (``work_bytes``, ``work_files``) that vanishes with the program. No
   project, data, home, ``/tmp``, ``/proc`` or other program is visible. Every capability is dropped
   before the program starts (seccomp also kills any attempt to make a namespace).
2. **seccomp** (:mod:`mova.rl.seccomp`): a filter that kills the process on any system call a maths
   program never needs (new processes and threads, exec, signals and tracing, sockets, device nodes and
   FIFOs, mounts and namespaces, keyrings, BPF, io_uring, ...).
3. **rlimits**: address space, CPU seconds, file size, open files, core dumps (and process count where the
   kernel applies it); hard limits too, so the program cannot raise them.
4. **the Python guard** (an audit hook in :mod:`mova.rl.sandbox_launcher`): turns common attempts into a
   clean ``violation``. Not a boundary on its own (CPython says so); the layers above hold without it,
   which the tests check by switching it off.

The answer travels on a private pipe only the parent reads: the launcher writes ``repr`` of the entry
function's return value and ends the process at once. What the program prints is diagnostics, never the
answer. Standard output and error go to unnamed temporary files (``O_TMPFILE``), so a killed parent leaves
no folder behind.

``backend="rlimits"`` is the old layout without bubblewrap (layers 2-4, a network namespace and a drop to
``nobody`` as root, a private temporary working folder): the program can *read* whatever its user can read
and sees the other programs' processes. It runs only with ``allow_unisolated=True`` and logs a warning,
because that is not a sandbox for RL against a policy that searches for reward.

Programs get the standard-library modules in ``config.preload`` that their source names as globals; other
standard-library imports work, and ``config.blocked_modules`` are refused by the guard.
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import marshal
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: the launcher's exit status when its guard stopped the program (kept equal to the launcher's constant).
VIOLATION_EXIT_CODE = 121
#: the launcher's exit status when it could not finish setting up (e.g. the kernel refused the filter).
SETUP_FAILED_EXIT_CODE = 120
#: where the program's writable tmpfs is mounted inside the bubblewrap sandbox (also its working folder).
WORK_DIR = "/work"
INSTALL_HINT = ("install bubblewrap: `apt-get install -y bubblewrap` (Debian/Ubuntu, as root), "
                "`dnf install bubblewrap` (Fedora/RHEL) or `pacman -S bubblewrap` (Arch)")
OPT_OUT_HINT = ("to run model-written programs WITHOUT isolation anyway (unsafe for RL: a program can read "
                "your data and see other programs), pass SandboxConfig(backend='rlimits', allow_unisolated=True)")

DEFAULT_PRELOAD = ("math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools",
                   "collections", "operator", "re", "string", "heapq", "bisect", "datetime", "random",
                   "numbers", "json")
DEFAULT_BLOCKED = ("socket", "_socket", "ssl", "subprocess", "_posixsubprocess", "multiprocessing", "ctypes",
                   "_ctypes", "pty", "signal", "mmap", "urllib", "http", "ftplib", "smtplib", "asyncio",
                   "selectors", "select", "resource", "shutil", "pathlib", "tempfile", "importlib", "threading",
                   "_thread", "concurrent", "sys_monitoring")


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be had on this machine; the message says how to get it."""


@dataclass
class SandboxConfig:
    """Backend and limits for one program. The defaults suit GSM8K-style programs (milliseconds of
    arithmetic)."""

    #: ``bwrap`` (bubblewrap + seccomp + rlimits + guard; required for untrusted code) or ``rlimits`` (no
    #: bubblewrap; runs only with ``allow_unisolated=True``).
    backend: str = "bwrap"
    #: the explicit opt-out that lets ``backend="rlimits"`` run (logged as a warning).
    allow_unisolated: bool = False
    #: the seccomp filter (needs libseccomp: ``apt-get install libseccomp2``); switch off only to test.
    seccomp: bool = True
    #: wall-clock seconds before the process is killed.
    timeout_s: float = 5.0
    #: CPU seconds (``RLIMIT_CPU``); SIGXCPU at the limit, SIGKILL a second later.
    cpu_seconds: int = 5
    #: address-space bytes (``RLIMIT_AS``); an allocation beyond it raises ``MemoryError`` in the program.
    memory_bytes: int = 512 * 2**20
    #: ``RLIMIT_NPROC`` once not root on the host (seccomp denies new processes in any case).
    processes: int = 1
    #: largest file the program may write (``RLIMIT_FSIZE``); also the cap on its captured stdout.
    file_bytes: int = 1 * 2**20
    #: size of the tmpfs at ``/work``, the only writable place inside bubblewrap (files live in RAM).
    work_bytes: int = 16 * 2**20
    #: most files and folders in that tmpfs (its inode limit: each costs kernel memory, whatever its size).
    work_files: int = 4096
    open_files: int = 64
    #: bytes of stdout (and stderr) read back.
    max_output_bytes: int = 64 * 2**10
    #: ``rlimits`` backend: try a new network namespace (bubblewrap always makes one).
    network_namespace: bool = True
    #: the uid/gid the program runs as inside bubblewrap; for ``rlimits``, what a root parent drops to.
    drop_to_uid: int | None = 65534
    drop_to_gid: int | None = 65534
    #: a function the program defines whose return value is the answer (``None``: no answer, only run it).
    entry: str | None = "solution"
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    blocked_modules: tuple[str, ...] = DEFAULT_BLOCKED
    #: the audit-hook guard; switch off only to test what the OS layers hold by themselves.
    python_guard: bool = True
    #: the interpreter (default: this one's base interpreter, so no virtual environment's packages).
    python: str | None = None
    #: the bubblewrap executable (default: ``bwrap`` on ``PATH``, else ``/usr/bin/bwrap``); set, only this one.
    bwrap: str | None = None
    #: ``rlimits`` backend: parent folder for working folders (default: the system temp folder).
    tmp_dir: str | None = None
    #: pool size for :func:`run_programs` (default: min(8, CPUs)).
    max_workers: int | None = None


@dataclass
class SandboxResult:
    """What came back from one program. ``ok`` means it exited 0 within its limits; ``answer`` is ``repr``
    of the entry function's return value (``None`` when it returned ``None`` or there is none); ``error``
    names why not ok: ``timeout`` | ``cpu`` | ``memory`` | ``output`` | ``killed`` | ``violation`` (the
    seccomp filter or the Python guard ended it) | ``exception`` | ``sandbox`` (the sandbox failed)."""

    ok: bool
    answer: str | None
    stdout: str
    stderr: str
    returncode: int | None
    error: str | None
    seconds: float
    #: what held in this run, as the launcher reported it before the program started (plus the backend).
    isolation: dict = field(default_factory=dict)


_LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")
_SIGSYS = getattr(signal, "SIGSYS", 31)


@functools.lru_cache(maxsize=1)
def _launcher_source() -> str:
    return _LAUNCHER.read_text(encoding="utf-8")


@dataclass(frozen=True)
class _Interpreter:
    executable: str  # real path
    prefix: str  # sys.base_prefix
    stdlib: str  # prefix/lib/pythonX.Y


@functools.lru_cache(maxsize=8)
def _interpreter(python: str | None) -> _Interpreter:
    """The base interpreter's real path and the folders bubblewrap must show it."""
    if python is None:
        executable = getattr(sys, "_base_executable", None) or sys.executable
        prefix, version = sys.base_prefix, f"{sys.version_info[0]}.{sys.version_info[1]}"
    else:
        out = subprocess.run([python, "-I", "-S", "-c", "import sys; print(sys.base_prefix); "
                              "print('%d.%d' % sys.version_info[:2]); print(sys.executable)"],
                             capture_output=True, text=True, timeout=60, env={}, check=True).stdout.splitlines()
        executable, prefix, version = out[2] or python, out[0], out[1]
    return _Interpreter(os.path.realpath(executable), os.path.realpath(prefix),
                        os.path.join(os.path.realpath(prefix), "lib", f"python{version}"))


def _find_bwrap(config: SandboxConfig) -> str:
    candidates = [config.bwrap] if config.bwrap else [shutil.which("bwrap"), "/usr/bin/bwrap", "/bin/bwrap"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}; or {OPT_OUT_HINT}")


_LIBRARY_DIRS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32")


def _covered(path: str, bound: list[str]) -> bool:
    return any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound)


@functools.lru_cache(maxsize=8)
def _bwrap_prefix(bwrap: str, python: str | None, uid: int, gid: int) -> tuple[str, ...]:
    """The bubblewrap command line up to the interpreter (the same for every program with this config)."""
    interp = _interpreter(python)
    # CAP_SYS_ADMIN (inside the sandbox's own user namespace only) lets the launcher mount the working tmpfs
    # with a file-count limit, which bwrap's --tmpfs cannot set; the launcher drops every capability before
    # the program starts and refuses to go on unless they are gone. Not --disable-userns: it nests a second
    # user namespace that does not own the mount namespace, so the mount would fail; seccomp kills unshare,
    # clone and setns, so the program can create no namespace anyway.
    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--uid", str(uid),
            "--gid", str(gid), "--hostname", "sandbox", "--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN"]
    bound: list[str] = []
    for path in _LIBRARY_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            bound.append(path)
    if not _covered(interp.executable, bound):
        args += ["--ro-bind", interp.executable, interp.executable]
    lib = os.path.dirname(interp.stdlib)  # prefix/lib: the standard library and libpython
    if not _covered(lib, bound):
        args += ["--ro-bind", lib, lib]
    # installed packages are not the standard library: an empty read-only folder hides each of them
    for packages in (os.path.join(interp.stdlib, "site-packages"), os.path.join(interp.stdlib, "dist-packages"),
                     os.path.join(lib, "python3", "dist-packages")):
        if os.path.isdir(packages):
            args += ["--tmpfs", packages, "--remount-ro", packages]
    for dev in ("/dev/null", "/dev/urandom"):
        args += ["--dev-bind", dev, dev]
    args += ["--dir", WORK_DIR, "--remount-ro", "/", "--chdir", WORK_DIR]
    return tuple(args)


@functools.lru_cache(maxsize=1)
def _seccomp_filter() -> tuple[str, int]:
    """The compiled filter, in hex for the launcher's command line, and how many calls it denies."""
    from mova.rl.seccomp import SeccompUnavailable, filter_bpf

    try:
        bpf, names = filter_bpf()
    except SeccompUnavailable as exc:
        raise SandboxUnavailable(f"{exc}; or SandboxConfig(seccomp=False) to run without the filter") from exc
    return bpf.hex(), len(names)


_checked: dict[tuple, dict] = {}
_check_lock = threading.Lock()


def _ensure_backend(config: SandboxConfig) -> None:
    """Refuse loudly, once, before any program runs: an unavailable backend must not turn into silent zero
    rewards, and the unisolated opt-out must be explicit and visible in the logs."""
    key = (config.backend, config.allow_unisolated, config.seccomp, config.python, config.bwrap,
           config.drop_to_uid, config.drop_to_gid, config.work_bytes, config.work_files)
    if key in _checked:
        return
    with _check_lock:
        if key in _checked:
            return
        if config.backend not in ("bwrap", "rlimits"):
            raise ValueError(f"SandboxConfig.backend must be 'bwrap' or 'rlimits', not {config.backend!r}")
        if config.seccomp:
            _seccomp_filter()
        else:
            logger.warning("SANDBOX WITHOUT SECCOMP (SandboxConfig(seccomp=False)): nothing stops a program from "
                           "forking, signalling or opening sockets but the other layers; meant for tests only.")
        if config.backend == "rlimits":
            if not config.allow_unisolated:
                raise SandboxUnavailable(
                    "SandboxConfig(backend='rlimits') runs model-written programs without isolation (they can "
                    "read your files and see each other); set allow_unisolated=True to accept that, or use "
                    f"backend='bwrap' ({INSTALL_HINT})")
            logger.warning(
                "UNISOLATED SANDBOX: model-written programs run without bubblewrap (backend='rlimits', "
                "allow_unisolated=True). They can read every file their user can read (training data "
                "included) and see other processes; only rlimits, %s and the Python guard stand in the way. "
                "Do not use this for RL against a policy that may search for reward. %s.",
                "seccomp" if config.seccomp else "NO seccomp filter", INSTALL_HINT)
        else:
            _find_bwrap(config)
        result = _execute("", config, check=False)
        if result.error is not None or not result.isolation.get("launcher"):
            hint = ""
            if config.backend == "bwrap" and "namespace" in result.stderr.lower():
                hint = (" (user namespaces may be disabled: sysctl kernel.unprivileged_userns_clone=1, or on "
                        "Ubuntu kernel.apparmor_restrict_unprivileged_userns=0, or run as root)")
            raise SandboxUnavailable(f"the {config.backend!r} sandbox does not start here{hint}: "
                                     f"{result.stderr.strip()[-1000:] or result.error}; {OPT_OUT_HINT}")
        _checked[key] = result.isolation


def _read_capped(f, cap: int) -> tuple[str, bool]:
    f.seek(0)
    data = f.read(cap + 1)
    return data[:cap].decode("utf-8", errors="replace"), len(data) > cap


class _Channel:
    """The parent's end of the private answer pipe: the launcher's status line first, then the answer."""

    def __init__(self, fd: int, cap: int = 256 * 2**10):
        self.fd, self.cap, self.data = fd, cap, b""

    def read_until(self, deadline: float, first_line_only: bool = False) -> None:
        poller = select.poll()  # not select.select: a trainer may hold more than 1024 descriptors
        poller.register(self.fd, select.POLLIN | select.POLLHUP)
        while len(self.data) < self.cap and not (first_line_only and b"\n" in self.data):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                return
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return
            self.data += chunk

    def status(self) -> dict:
        first = self.data.split(b"\n", 1)[0]  # repr of a dict of plain values, written before the program ran
        try:
            status = ast.literal_eval(first.decode("utf-8", errors="replace")) if first.strip() else {}
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return {}
        return status if isinstance(status, dict) else {}

    def answer(self) -> str | None:
        # the launcher's answer is the last line, written just before it ends the process
        lines = self.data.split(b"\n")[1:]
        last = next((line for line in reversed(lines) if line), b"")
        if not last.startswith(b"ANSWER "):
            return None
        return last[len(b"ANSWER "):].decode("utf-8", errors="replace").strip() or None


def _classify(returncode: int | None, stderr: str, timed_out: bool, truncated: bool, started: bool) -> str | None:
    if timed_out:
        return "timeout"
    if not started:
        return "sandbox"
    if returncode == 0:
        return "output" if truncated else None
    if returncode == VIOLATION_EXIT_CODE:
        return "violation"
    if returncode is not None and returncode < 0:
        sig = -returncode
        if sig == signal.SIGXCPU:
            return "cpu"
        if sig == signal.SIGXFSZ:
            return "output"
        if sig == _SIGSYS:
            return "violation"  # the seccomp filter
        return "killed"  # SIGKILL from the kernel (out of memory) or a crash (SIGSEGV from runaway C recursion)
    if "MemoryError" in stderr:
        return "memory"
    return "exception"


def _kill(proc: subprocess.Popen) -> None:
    # bwrap is the process-group leader; its death takes the sandbox's pid namespace down with it
    # (--die-with-parent). For the rlimits backend the group is the program itself.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def _launcher_config(config: SandboxConfig, answer_fd: int) -> dict:
    seccomp_hex = _seccomp_filter()[0] if config.seccomp else ""
    return {"backend": config.backend, "preload": list(config.preload),
            "blocked_modules": list(config.blocked_modules), "network_namespace": config.network_namespace,
            "drop_to_uid": config.drop_to_uid, "drop_to_gid": config.drop_to_gid, "entry": config.entry,
            "answer_fd": answer_fd, "python_guard": config.python_guard, "seccomp_bpf": seccomp_hex,
            "limits": {"memory_bytes": config.memory_bytes, "cpu_seconds": config.cpu_seconds,
                       "file_bytes": config.file_bytes, "open_files": config.open_files,
                       "processes": config.processes},
            "work": {"dir": WORK_DIR, "bytes": config.work_bytes, "files": config.work_files}}


def _execute(source: str, config: SandboxConfig, check: bool = True, pass_fds: Sequence[int] = (),
             on_started: Callable[[subprocess.Popen, dict], None] | None = None) -> SandboxResult:
    """One program, start to finish. ``on_started`` (the probe's hook) runs once the launcher has reported
    its status, while the program is still running."""
    if check:
        _ensure_backend(config)
    start = time.monotonic()
    interp = _interpreter(config.python)
    answer_r, answer_w = os.pipe()
    launcher = [interp.executable, "-I", "-S", "-B", "-c", _launcher_source(),
                marshal.dumps(_launcher_config(config, answer_w)).hex()]
    run_dir = None
    if config.backend == "bwrap":
        uid = config.drop_to_uid if config.drop_to_uid is not None else 65534
        gid = config.drop_to_gid if config.drop_to_gid is not None else 65534
        argv = [*_bwrap_prefix(_find_bwrap(config), config.python, uid, gid), "--", *launcher]
        cwd = "/"
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="mova-sandbox-", dir=config.tmp_dir))
        cwd = str(run_dir / "work")
        os.mkdir(cwd)
        if os.getuid() == 0 and config.drop_to_uid is not None:
            os.chown(cwd, config.drop_to_uid, config.drop_to_gid if config.drop_to_gid is not None else -1)
        os.chmod(run_dir, 0o711)  # the dropped user may enter (to reach work/) but not list or write it
        argv = launcher
    channel = _Channel(answer_r)
    timed_out = False
    try:
        # unnamed files (O_TMPFILE): nothing to find on disk, nothing left if the parent is killed
        with tempfile.TemporaryFile(dir=config.tmp_dir) as out, tempfile.TemporaryFile(dir=config.tmp_dir) as err:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=cwd, env={},
                                        start_new_session=True, pass_fds=(answer_w, *pass_fds), close_fds=True)
            finally:
                os.close(answer_w)
            deadline = start + config.timeout_s
            try:
                try:
                    proc.stdin.write(source.encode("utf-8", errors="replace"))
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                if on_started is not None:
                    channel.read_until(deadline, first_line_only=True)
                    on_started(proc, channel.status())
                channel.read_until(deadline)  # returns at EOF: the sandbox has ended (or at the deadline)
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill(proc)  # also ends anything left behind after a normal exit
                proc.wait()
            channel.read_until(time.monotonic() + 1.0)
            stdout, truncated = _read_capped(out, config.max_output_bytes)
            stderr, _ = _read_capped(err, config.max_output_bytes)
    finally:
        os.close(answer_r)
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
    timed_out = timed_out or (proc.returncode != 0 and time.monotonic() >= start + config.timeout_s)
    returncode = proc.returncode
    if config.backend == "bwrap" and returncode is not None and returncode > 128:
        returncode = -(returncode - 128)  # bwrap reports a child killed by signal N as 128 + N
    status = channel.status()
    started = "uid" in status
    error = _classify(returncode, stderr, timed_out, truncated, started)
    isolation = dict(status, backend=config.backend, launcher=started, unisolated=config.backend != "bwrap")
    if config.backend == "bwrap" and os.getuid() == 0:
        # the sandbox uid maps to the caller's, and the kernel exempts root from RLIMIT_NPROC (seccomp's
        # denial of fork/clone is what stops new processes there)
        isolation["process_limit"] = False
    isolation.pop("setup_error", None)
    return SandboxResult(ok=error is None, answer=channel.answer() if error is None else None, stdout=stdout,
                         stderr=stderr[-4000:], returncode=returncode, error=error,
                         seconds=time.monotonic() - start, isolation=isolation)


def run_program(source: str, config: SandboxConfig | None = None) -> SandboxResult:
    """Run ``source`` in a new isolated process and return its entry function's answer (never raises for a
    bad program; raises :class:`SandboxUnavailable` when the sandbox itself cannot run here, with how to fix
    it)."""
    return _execute(source, config or SandboxConfig())


def run_programs(sources: Sequence[str], config: SandboxConfig | None = None,
                 max_workers: int | None = None) -> list[SandboxResult]:
    """Run many programs, at most ``max_workers`` at a time; results in input order.

    Threads suffice for the pool: each one only waits on its child process, so the GIL is never the limit.
    """
    config = config or SandboxConfig()
    workers = max_workers or config.max_workers or min(8, os.cpu_count() or 1)
    if not sources:
        return []
    _ensure_backend(config)  # once, in this thread, before the pool starts
    with ThreadPoolExecutor(max_workers=min(workers, len(sources)), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda s: run_program(s, config), sources))


def config_dict(config: SandboxConfig) -> dict:
    """The config as a plain dict (for logs and run summaries)."""
    return asdict(config)


_PROBE = '''
def solution():  # os and resource are preloaded: run as root, the rlimits backend drops to nobody first
    facts = {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd()}
    try:
        facts["root"] = sorted(os.listdir("/"))
    except OSError:
        facts["root"] = None
    try:
        facts["processes_visible"] = sum(name.isdigit() for name in os.listdir("/proc"))
    except OSError:
        facts["processes_visible"] = 0
    facts["readable"] = [p for p in READ_PATHS if os.access(p, os.R_OK)]
    writable = []
    for folder in WRITE_PATHS:
        target = os.path.join(folder, ".mova-probe-%d" % os.getpid())
        try:
            with open(target, "w") as f:
                f.write("x")
            os.remove(target)
            writable.append(folder)
        except OSError:
            pass
    facts["writable"] = writable
    st = os.statvfs(".")
    facts["cwd_bytes"] = st.f_blocks * st.f_frsize
    facts["rlimits"] = {name: resource.getrlimit(getattr(resource, name))[1]
                        for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC")}
    os.read(GO_FD, 1)  # the parent measures this process from outside meanwhile
    return facts
'''


def _sample_files(folders: list[str], per_folder: int = 4) -> list[str]:
    """A few of the caller's own files (what a program hunting for data would try to open)."""
    files = []
    for folder in folders:
        try:
            entries = sorted(e.path for e in os.scandir(folder) if e.is_file(follow_symlinks=False))
        except OSError:
            continue
        files += entries[:per_folder]
    return files


def _descendants_leaf(pid: int) -> int:
    """The deepest process under ``pid`` (bwrap -> its pid-1 init -> the interpreter)."""
    for _ in range(8):
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = f.read().split()
        except OSError:
            break
        if not children:
            break
        pid = int(children[-1])
    return pid


def _outside_view(pid: int) -> dict:
    """This process's namespaces compared with the sandboxed process's, and its credentials as the host
    kernel sees them (``/proc/<pid>/status``): measured, not reported by the sandbox."""
    view: dict = {"namespaces": {}}
    for ns in ("mnt", "pid", "net", "ipc", "uts", "user", "cgroup"):
        try:
            view["namespaces"][ns] = os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            view["namespaces"][ns] = None
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return view
    view["host_uid"] = int(status.get("Uid", "-1").split()[0])
    view["capabilities"] = status.get("CapEff", "?").strip()
    view["no_new_privs"] = status.get("NoNewPrivs", "0").strip() == "1"
    view["seccomp_mode"] = {"0": "off", "1": "strict", "2": "filter"}.get(status.get("Seccomp", "").strip(), "?")
    return view


def probe_isolation(config: SandboxConfig | None = None) -> dict:
    """What holds here, layer by layer, from a probe program run exactly like a model's (its own code, with
    the Python guard off so that it can look around): the namespaces it got (compared from outside with
    the caller's), its uid inside and on the host, capabilities, ``no_new_privs`` and seccomp as the host
    kernel reports them, what it sees at ``/``, how many processes it can see, which of the caller's folders
    it can read or write, the size of its writable folder and its hard rlimits. Raises
    :class:`SandboxUnavailable` where the configured backend cannot run."""
    config = config or SandboxConfig()
    _ensure_backend(config)
    probe_config = SandboxConfig(**{**asdict(config), "python_guard": False, "entry": "solution",
                                    "preload": ("os", "resource"), "timeout_s": max(config.timeout_s, 10.0)})
    interp = _interpreter(config.python)
    read_paths = _sample_files([os.getcwd(), os.path.expanduser("~"), tempfile.gettempdir(), "/etc"])
    write_paths = sorted({"/", "/usr/lib", "/dev", "/dev/shm", "/tmp", WORK_DIR, interp.prefix,
                          tempfile.gettempdir(), os.path.expanduser("~"), os.getcwd()})
    go_r, go_w = os.pipe()
    outside: dict = {}

    def measure(proc: subprocess.Popen, status: dict) -> None:
        outside.update(_outside_view(_descendants_leaf(proc.pid) if config.backend == "bwrap" else proc.pid))
        os.write(go_w, b"g")

    source = (f"READ_PATHS = {read_paths!r}\nWRITE_PATHS = {write_paths!r}\nGO_FD = {go_r}\n" + _PROBE)
    try:
        result = _execute(source, probe_config, check=False, pass_fds=(go_r,), on_started=measure)
    finally:
        os.close(go_r)
        os.close(go_w)
    facts = ast.literal_eval(result.answer) if result.ok and result.answer else {}
    report = {"backend": config.backend, "ok": result.ok and bool(facts), "unisolated": config.backend != "bwrap",
              **outside, "uid": facts.get("uid"), "pid_inside": facts.get("pid"),
              "seccomp_denied_syscalls": _seccomp_filter()[1] if config.seccomp else 0,
              "visible_root": facts.get("root"), "processes_visible": facts.get("processes_visible"),
              "caller_files_readable": facts.get("readable"),
              "writable": facts.get("writable"), "work_bytes": facts.get("cwd_bytes"),
              "rlimits": facts.get("rlimits"), "process_limit": result.isolation.get("process_limit"),
              "python_guard": config.python_guard}
    report["network"] = "namespace" if (report.get("namespaces") or {}).get("net") else "none"
    if config.backend == "bwrap":
        report["bwrap"] = _find_bwrap(config)
    if not report["ok"]:
        report["error"] = result.error
        report["stderr"] = result.stderr[-2000:]
    return report


if __name__ == "__main__":  # python -m mova.rl.sandbox [--backend rlimits]: what holds on this machine
    import argparse

    parser = argparse.ArgumentParser(description="Print what the program sandbox holds here, layer by layer.")
    parser.add_argument("--backend", default="bwrap", choices=["bwrap", "rlimits"])
    cli = parser.parse_args()
    print(json.dumps(probe_isolation(SandboxConfig(backend=cli.backend, allow_unisolated=cli.backend == "rlimits")),
                     indent=1, sort_keys=True))
