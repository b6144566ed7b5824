"""The first code a sandboxed program's process runs (``python -I -S -c <this file's text> CONFIG_JSON``).

Never imported by Mova itself: :mod:`mova.rl.sandbox` reads this file and hands its text to a fresh
interpreter. It only uses the standard library. In order, it:

1. reads the program from stdin (so the program needs no file the sandbox user can read);
2. imports the allowed standard-library modules while it still can (after step 5 the process may not be
   able to read the Python installation at all);
3. isolates the network: a new network namespace (``unshare(CLONE_NEWNET)`` when it holds the privilege,
   else a new user + network namespace), with only a down loopback device inside;
4. sets the resource limits (address space, CPU seconds, file size, open files);
5. when started as root, drops to an unprivileged user (``nobody``) with no supplementary groups, so that
   the process-count limit applies (the kernel does not enforce it for root) and files the user does not
   own are out of reach; then sets the process-count limit;
6. reports what held on a status pipe (one JSON line) and closes it;
7. installs the Python guard (an audit hook that ends the process on sockets, subprocesses, forks,
   signals, ctypes, writes or deletions outside the working folder, reads of /proc, /sys, /dev) -- a second
   layer on top of the OS limits, never the only one where the OS layer held;
8. runs the program; when it defines the entry function, calls it and prints its return value on a marked
   line, which the parent takes as the answer.
"""

import json
import os
import resource
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def _unshare(flags):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare(ctypes.c_int(flags)) == 0


def _limit(which, value):
    if value is None:
        return
    _, hard = resource.getrlimit(which)
    value = int(value)
    new_hard = value + 1 if which == resource.RLIMIT_CPU else value  # CPU: SIGXCPU, then SIGKILL a second later
    if hard != resource.RLIM_INFINITY:  # an unprivileged process can only lower its hard limits
        value, new_hard = min(value, hard), min(new_hard, hard)
    resource.setrlimit(which, (value, new_hard))


def main():
    config = json.loads(sys.argv[1])
    source = sys.stdin.read()

    # -- 2. modules a maths program may use, imported before the sandbox closes ------------------------
    # only the ones the program names: importing all of them costs more than starting the interpreter
    import re

    allowed_modules = {}
    for name in config["preload"]:
        if not re.search(r"\b" + re.escape(name) + r"\b", source):
            continue
        try:
            allowed_modules[name] = __import__(name)
        except ImportError:
            pass
    status = {"network": "none", "uid": os.getuid(), "process_limit": False}

    # -- 3. network namespace (privileged form first; the user-namespace form after dropping root) -----
    if config["network_namespace"] and os.geteuid() == 0:
        try:
            if _unshare(CLONE_NEWNET):
                status["network"] = "namespace"
        except Exception:  # noqa: BLE001 -- any failure means "no namespace", reported in status
            pass

    # -- 4. resource limits ----------------------------------------------------------------------------
    limits = config["limits"]
    _limit(resource.RLIMIT_AS, limits["memory_bytes"])
    _limit(resource.RLIMIT_CPU, limits["cpu_seconds"])
    _limit(resource.RLIMIT_FSIZE, limits["file_bytes"])
    _limit(resource.RLIMIT_NOFILE, limits["open_files"])
    _limit(resource.RLIMIT_CORE, 0)

    # -- 5. drop root, then the process-count limit (which the kernel does not apply to root) -----------
    if os.getuid() == 0 and config["drop_to_uid"] is not None:
        try:
            os.setgroups([])
            os.setgid(config["drop_to_gid"])
            os.setuid(config["drop_to_uid"])
        except OSError:
            pass
    status["uid"] = os.getuid()
    if config["network_namespace"] and status["network"] == "none":
        try:
            if _unshare(CLONE_NEWUSER | CLONE_NEWNET):
                status["network"] = "user+namespace"
        except Exception:  # noqa: BLE001
            pass
    if os.getuid() != 0:
        _limit(resource.RLIMIT_NPROC, limits["processes"])
        status["process_limit"] = True
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]

    # -- 6. report what held, on a descriptor the program never sees -----------------------------------
    try:
        os.write(config["status_fd"], (json.dumps(status) + "\n").encode())
        os.close(config["status_fd"])
    except OSError:
        pass

    # -- 7. Python guard -------------------------------------------------------------------------------
    os.environ.clear()  # already empty (the parent passes env={}); cleared again before the guard forbids it
    if config["python_guard"]:
        sys.addaudithook(_make_guard(os.path.realpath(os.getcwd()), frozenset(config["blocked_modules"])))

    # -- 8. the program ----------------------------------------------------------------------------------
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    namespace.update(allowed_modules)
    entry_name, marker = config["entry"], config["marker"]
    del allowed_modules, config
    exec(compile(source, "<program>", "exec"), namespace)
    entry = namespace.get(entry_name) if entry_name else None
    if callable(entry):
        value = entry()
        if value is not None:
            sys.stdout.write("\n" + marker + repr(value) + "\n")
    sys.stdout.flush()


#: the exit status of a process the guard stopped (the parent reports it as ``violation``).
VIOLATION_EXIT_CODE = 121
_DENIED_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
    "subprocess.Popen", "os.startfile", "os.putenv", "os.unsetenv", "os.chdir", "os.chmod", "os.chown",
    "os.link", "os.symlink", "os.truncate", "shutil.rmtree", "sys.remote_exec", "pty.spawn", "os.setsid",
    "os.listxattr", "os.setxattr", "os.removexattr", "code.__new__", "marshal.loads", "function.__new__",
})
_DENIED_PREFIXES = ("ctypes.", "socket.", "_posixsubprocess", "winreg.", "cpython.", "mmap.")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_READ_ALLOWED = ("/dev/null", "/dev/urandom")
_PATH_EVENTS = ("os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.replace", "os.utime")


def _make_guard(workdir, blocked_modules):
    realpath, fspath = os.path.realpath, os.fspath

    def as_str(path):
        p = fspath(path)
        return p.decode(errors="replace") if isinstance(p, bytes) else p

    def inside(path):
        try:
            real = realpath(as_str(path))
        except TypeError:
            return False
        return real == workdir or real.startswith(workdir + "/")

    def deny(what):
        # Fatal, not an exception: a program that catches the error (``try: os.fork() except: pass``)
        # must not go on to return an answer as if nothing had happened.
        try:
            os.write(2, f"\nsandbox violation: {what} is not allowed\n".encode(errors="replace"))
        finally:
            os._exit(VIOLATION_EXIT_CODE)

    def guard(event, args):
        if event in _DENIED_EVENTS or event.startswith(_DENIED_PREFIXES):
            deny(event)
        if event == "import":
            name = args[0] or ""
            if name.split(".")[0] in blocked_modules:
                deny(f"import {name}")
        elif event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & _WRITE_FLAGS))
            if writing and mode is None:
                # os.open: its dir_fd argument is not in the event, so a relative path may not be what it seems
                deny(f"os.open({path!r}) for writing")
            if writing and not inside(path):
                deny(f"writing {path!r}")
            if not writing:
                real = realpath(as_str(path))
                if real.startswith(("/proc", "/sys", "/dev")) and real not in _READ_ALLOWED:
                    deny(f"reading {path!r}")
        elif event in _PATH_EVENTS:
            # (src, dst, src_dir_fd, dst_dir_fd) for a rename; (path, ..., dir_fd) for the others
            if event in ("os.rename", "os.replace"):
                paths, dir_fds = args[:2], args[2:4]
            else:
                paths, dir_fds = args[:1], args[-1:]
            if any(isinstance(fd, int) and fd != -1 for fd in dir_fds):
                deny(f"{event} relative to a directory descriptor")
            if not all(inside(p) for p in paths):
                deny(f"{event} outside the working folder")

    return guard


if __name__ == "__main__":
    main()
