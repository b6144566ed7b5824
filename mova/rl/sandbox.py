"""Run model-written programs (program chain of thought) in separate, limited processes.

A program a policy wrote is untrusted code: during RL it is whatever the sampler produced, including
infinite loops, fork bombs, ``os.system("rm -rf ~")`` and sockets. This module is the only place Mova runs
such code, and it never runs it in the calling process.

API
---
``run_program(source, config=None) -> SandboxResult``
    Run one program and wait for it (at most ``config.timeout_s`` wall-clock seconds).
``run_programs(sources, config=None, max_workers=None) -> list[SandboxResult]``
    Many programs through a small pool (threads, each waiting on its own child process); results in order.
``SandboxConfig``
    The limits (typed; a ``sandbox:`` section of a stage YAML maps onto it).
``probe_isolation(config=None) -> dict``
    What actually holds on this machine (network namespace, uid, process limit), by running an empty program.

What one run does
-----------------
The parent makes a private run folder (mode 0700) holding an empty working folder for the program and the
files its stdout/stderr go to, then starts ``python -I -S -c <launcher>`` (isolated mode: no ``PYTHON*``
variables, no user site, no ``site``), with a cleared environment, a new session (so the whole process
group can be killed), the program on stdin and an extra pipe for the launcher's status report. The
launcher (:mod:`mova.rl.sandbox_launcher`, read as text, never imported) isolates the network, sets the
limits, drops root, installs a Python audit-hook guard, runs the program and prints the entry function's
return value on a marked line. The parent kills the process group at the wall-clock limit, reads at most
``max_output_bytes`` of output, and deletes the run folder.

Guarantees, and where they hold (docs/r3.md has the table)
------------------------------------------------------------
* Always (OS): separate process; wall-clock timeout killing the process group; ``RLIMIT_AS`` (memory),
  ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (also caps the captured output), ``RLIMIT_NOFILE``; empty working folder;
  empty environment; only stdout comes back, capped.
* Network: a new network namespace (no interfaces but a down loopback) when ``unshare`` is allowed -- as
  root directly, otherwise through a user namespace; where neither is allowed, only the Python guard
  (socket creation and ``import socket`` raise) stands between the program and the network, and
  :func:`probe_isolation` / ``SandboxResult.isolation`` say so.
* Processes: ``RLIMIT_NPROC`` is applied once the process is not root (the kernel exempts root). A parent
  running as root drops the child to ``nobody`` first, which also removes write access to every file
  ``nobody`` does not own. A non-root parent's child keeps the parent's uid: the OS then does *not* stop it
  from writing the user's files; only the Python guard does.
* The Python guard (audit hook) ends the process (exit 121, ``error="violation"``; not a catchable
  exception, so ``try: os.fork() except: pass`` cannot carry on to an answer) on forks, ``os.system``,
  ``exec``, ``subprocess``, signals, ``ctypes``, sockets, writes/renames/deletions outside the working
  folder and reads of ``/proc``, ``/sys``, ``/dev``. Audit hooks are not a security boundary on their own
  (CPython documents that determined code can evade them); they turn the common accidents into clean
  failures and back up the OS layer. There is no seccomp filter: pure Python has none to install.

Programs get the standard-library modules in ``config.preload`` that their source names (imported before
the process is locked down, because after dropping to ``nobody`` the interpreter's own files may be
unreadable; only the named ones, because importing all of them would double the start-up time) as globals; other
imports work only where the sandbox user can still read them, and ``config.blocked_modules`` never do.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: the launcher's exit status when its guard stopped the program (kept equal to the launcher's constant).
VIOLATION_EXIT_CODE = 121
#: the line prefix the launcher prints the entry function's return value after.
ANSWER_MARKER = "\x1e__MOVA_SANDBOX_ANSWER__\x1e"

DEFAULT_PRELOAD = ("math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools",
                   "collections", "operator", "re", "string", "heapq", "bisect", "datetime", "random",
                   "numbers", "json")
DEFAULT_BLOCKED = ("socket", "_socket", "ssl", "subprocess", "_posixsubprocess", "multiprocessing", "ctypes",
                   "_ctypes", "pty", "signal", "mmap", "urllib", "http", "ftplib", "smtplib", "asyncio",
                   "selectors", "select", "resource", "shutil", "pathlib", "tempfile", "importlib", "threading",
                   "_thread", "concurrent", "sys_monitoring")


@dataclass
class SandboxConfig:
    """Limits for one program. The defaults suit GSM8K-style programs (milliseconds of arithmetic)."""

    #: wall-clock seconds before the process group is killed.
    timeout_s: float = 5.0
    #: CPU seconds (``RLIMIT_CPU``); SIGXCPU at the limit, SIGKILL a second later.
    cpu_seconds: int = 5
    #: address-space bytes (``RLIMIT_AS``); an allocation beyond it raises ``MemoryError`` in the program.
    memory_bytes: int = 512 * 2**20
    #: ``RLIMIT_NPROC`` once not root: the uid's total process/thread count above which fork fails. The
    #: default 1 means "no new process or thread at all".
    processes: int = 1
    #: largest file the program may write (``RLIMIT_FSIZE``); also the cap on its captured stdout.
    file_bytes: int = 1 * 2**20
    open_files: int = 64
    #: bytes of stdout (and stderr) read back.
    max_output_bytes: int = 64 * 2**10
    #: try a new network namespace (else the Python guard alone blocks sockets).
    network_namespace: bool = True
    #: when the parent is root, the uid/gid the program runs as (``None``: stay root -- not recommended).
    drop_to_uid: int | None = 65534
    drop_to_gid: int | None = 65534
    #: a function the program defines whose return value is the answer (``None``: last printed line only).
    entry: str | None = "solution"
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    blocked_modules: tuple[str, ...] = DEFAULT_BLOCKED
    #: the audit-hook guard; switch off only to test what the OS layer holds by itself.
    python_guard: bool = True
    #: the interpreter (default: this one's base interpreter, so no virtual environment's packages).
    python: str | None = None
    #: parent folder for run folders (default: the system temp folder).
    tmp_dir: str | None = None
    #: pool size for :func:`run_programs` (default: min(8, CPUs)).
    max_workers: int | None = None


@dataclass
class SandboxResult:
    """What came back from one program. ``ok`` means it exited 0 within its limits; ``answer`` is the entry
    function's return value (``repr``) or else the last non-empty stdout line; ``error`` names why not ok:
    ``timeout`` | ``cpu`` | ``memory`` | ``output`` | ``killed`` | ``violation`` (the Python guard ended it) |
    ``exception``."""

    ok: bool
    answer: str | None
    stdout: str
    stderr: str
    returncode: int | None
    error: str | None
    seconds: float
    #: what held in this run: ``network`` (namespace | user+namespace | none), ``uid``, ``process_limit``.
    isolation: dict = field(default_factory=dict)


_LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")


@functools.lru_cache(maxsize=1)
def _launcher_source() -> str:
    return _LAUNCHER.read_text(encoding="utf-8")


def _python(config: SandboxConfig) -> str:
    return config.python or getattr(sys, "_base_executable", None) or sys.executable


def _read_capped(path: Path, cap: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    return data[:cap].decode("utf-8", errors="replace"), len(data) > cap


def _classify(returncode: int | None, stderr: str, timed_out: bool, truncated: bool) -> str | None:
    if timed_out:
        return "timeout"
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
        return "killed"  # SIGKILL from the kernel (out of memory) or a crash (SIGSEGV from runaway C recursion)
    if "MemoryError" in stderr:
        return "memory"
    return "exception"


def _answer(stdout: str) -> str | None:
    marked = [line[len(ANSWER_MARKER):] for line in stdout.splitlines() if line.startswith(ANSWER_MARKER)]
    if marked:
        return marked[-1].strip() or None
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def run_program(source: str, config: SandboxConfig | None = None) -> SandboxResult:
    """Run ``source`` in a new limited process and return what it printed/returned (never raises for a bad
    program; raises only when the sandbox itself cannot start, e.g. the interpreter is missing)."""
    config = config or SandboxConfig()
    start = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="mova-sandbox-", dir=config.tmp_dir))
    try:
        work = run_dir / "work"
        work.mkdir()
        root_drops = os.getuid() == 0 and config.drop_to_uid is not None
        if root_drops:
            os.chown(work, config.drop_to_uid, config.drop_to_gid if config.drop_to_gid is not None else -1)
        os.chmod(run_dir, 0o711)  # the dropped user may enter (to reach work/) but not list or write it
        status_r, status_w = os.pipe()
        launcher_config = {
            "preload": list(config.preload), "blocked_modules": list(config.blocked_modules),
            "network_namespace": config.network_namespace, "drop_to_uid": config.drop_to_uid,
            "drop_to_gid": config.drop_to_gid, "entry": config.entry, "marker": ANSWER_MARKER,
            "status_fd": status_w, "python_guard": config.python_guard,
            "limits": {"memory_bytes": config.memory_bytes, "cpu_seconds": config.cpu_seconds,
                       "file_bytes": config.file_bytes, "open_files": config.open_files,
                       "processes": config.processes},
        }
        out_path, err_path = run_dir / "stdout", run_dir / "stderr"
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    [_python(config), "-I", "-S", "-c", _launcher_source(), json.dumps(launcher_config)],
                    stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work, env={}, start_new_session=True,
                    pass_fds=(status_w,), close_fds=True)
            except BaseException:
                os.close(status_r)
                raise
            finally:
                os.close(status_w)
            try:
                try:
                    proc.stdin.write(source.encode("utf-8", errors="replace"))
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                proc.wait(timeout=config.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)  # also reaps anything left in the group after a normal exit
                proc.wait()
        with os.fdopen(status_r, "rb") as f:
            status_line = f.read(4096).decode(errors="replace").strip()
        try:
            isolation = json.loads(status_line) if status_line else {}
        except json.JSONDecodeError:
            isolation = {}
        stdout, truncated = _read_capped(out_path, config.max_output_bytes)
        stderr, _ = _read_capped(err_path, config.max_output_bytes)
        error = _classify(proc.returncode, stderr, timed_out, truncated)
        return SandboxResult(ok=error is None, answer=_answer(stdout) if error is None else None, stdout=stdout,
                             stderr=stderr[-4000:], returncode=proc.returncode, error=error,
                             seconds=time.monotonic() - start, isolation=isolation)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_programs(sources: Sequence[str], config: SandboxConfig | None = None,
                 max_workers: int | None = None) -> list[SandboxResult]:
    """Run many programs, at most ``max_workers`` at a time; results in input order.

    Threads suffice for the pool: each one only waits on its child process, so the GIL is never the limit.
    """
    config = config or SandboxConfig()
    workers = max_workers or config.max_workers or min(8, os.cpu_count() or 1)
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(sources)), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda s: run_program(s, config), sources))


def probe_isolation(config: SandboxConfig | None = None) -> dict:
    """What the sandbox achieves here, from an empty program: ``network`` (namespace | user+namespace |
    none), ``uid`` the program ran as, ``process_limit`` (whether ``RLIMIT_NPROC`` applies)."""
    result = run_program("", config)
    return dict(result.isolation, ok=result.ok)


def config_dict(config: SandboxConfig) -> dict:
    """The config as a plain dict (for logs and run summaries)."""
    return asdict(config)
