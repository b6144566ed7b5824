"""The first code a sandboxed program's process runs (``python -I -S -c <this file's text> CONFIG``).

Never imported by Mova itself: :mod:`mova.rl.sandbox` reads this file and hands its text to a fresh
interpreter, inside bubblewrap (the ``bwrap`` backend) or directly (the unisolated ``rlimits`` backend). It
only uses the standard library. In order, it:

1. reads the program from stdin;
2. imports the standard-library modules the program names from ``config.preload`` (handed to it as
   globals, as before);
3. under bubblewrap (which set up the namespaces, the user and the read-only file system around this
   process): mounts the program's only writable place, a tmpfs at ``/work`` limited in bytes *and* in
   files (bubblewrap's ``--tmpfs`` cannot limit files), then drops every capability and checks they are
   gone. ``rlimits`` backend: a new network namespace and, when started as root, a drop to ``nobody``;
4. sets the resource limits (address space, CPU seconds, file size, open files, core size; the process
   count once not root). Hard limits are lowered too, so nothing later in the process can raise them;
5. installs the seccomp filter the parent compiled (:mod:`mova.rl.seccomp`): from here on a denied system
   call kills the process, whatever Python code makes it. This is the last step that needs ``ctypes``;
6. reports what held, as the first line on the private answer channel (a pipe only the parent reads);
7. installs the Python guard (an audit hook; a third layer that turns the common attempts into clean,
   fatal errors); everything it uses is bound in its closure, so replacing ``os._exit``, module tables or
   builtins from the program does not switch it off;
8. runs the program as a fresh ``__main__`` module, calls the entry function and writes ``repr`` of its
   return value on the answer channel, then ends the process at once (``os._exit``): no ``atexit`` hook,
   finaliser or later print can change or add to the answer. What the program prints is never the answer.
"""

import marshal
import os
import resource
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
MS_NOSUID = 2
MS_NODEV = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
#: the exit status when the launcher could not set the sandbox up (the parent raises, it is not a program error).
SETUP_FAILED_EXIT_CODE = 120
#: the exit status of a process the guard stopped (the parent reports it as ``violation``).
VIOLATION_EXIT_CODE = 121
#: the longest answer (characters of ``repr``) sent back.
MAX_ANSWER_CHARS = 4096


def _unshare(ctypes, flags):
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare(ctypes.c_int(flags)) == 0


def _install_seccomp(ctypes, bpf):
    """Load the filter (``struct sock_filter[]``) for this process; False when the kernel refused it."""

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    ul = ctypes.c_ulong
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ul(1), ul(0), ul(0), ul(0)) != 0:
        return False
    return libc.prctl(PR_SET_SECCOMP, ul(SECCOMP_MODE_FILTER), ctypes.byref(prog), ul(0), ul(0)) == 0


def _mount_work(ctypes, work, uid, gid):
    """Mount the program's only writable place, a tmpfs limited in bytes and in files, then drop every
    capability (bubblewrap granted CAP_SYS_ADMIN in the sandbox's user namespace for this mount only).
    Returns why it failed, or None."""
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"size={work['bytes']},nr_inodes={work['files']},mode=0700,uid={uid},gid={gid}".encode()
    if libc.mount(b"tmpfs", work["dir"].encode(), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV), options) != 0:
        return f"mount tmpfs: {os.strerror(ctypes.get_errno())}"
    os.chdir(work["dir"])  # the new mount, not the folder underneath it

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    data = (ctypes.c_uint32 * 6)()  # two struct __user_cap_data_struct {effective, permitted, inheritable}
    header = Header(LINUX_CAPABILITY_VERSION_3, 0)
    libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), ctypes.c_ulong(0), ctypes.c_ulong(0),
               ctypes.c_ulong(0))
    if libc.capset(ctypes.byref(header), data) != 0:
        return f"capset: {os.strerror(ctypes.get_errno())}"
    check = (ctypes.c_uint32 * 6)(*([1] * 6))
    header = Header(LINUX_CAPABILITY_VERSION_3, 0)
    if libc.capget(ctypes.byref(header), check) != 0 or any(check):
        return "capabilities are still held after capset"
    return None


def _names(source, name):
    """Whether ``name`` occurs in ``source`` as a whole identifier."""
    start = source.find(name)
    while start != -1:
        before = source[start - 1] if start else " "
        end = start + len(name)
        after = source[end] if end < len(source) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return True
        start = source.find(name, start + 1)
    return False


def _limit(which, value):
    if value is None:
        return
    _, hard = resource.getrlimit(which)
    value = int(value)
    new_hard = value + 1 if which == resource.RLIMIT_CPU else value  # CPU: SIGXCPU, then SIGKILL a second later
    if hard != resource.RLIM_INFINITY:  # an unprivileged process can only lower its hard limits
        value, new_hard = min(value, hard), min(new_hard, hard)
    resource.setrlimit(which, (value, new_hard))


def _fail(answer_fd, why):
    os.write(2, f"sandbox setup failed: {why}\n".encode())
    try:
        os.write(answer_fd, (repr({"setup_error": why}) + "\n").encode())
    finally:
        os._exit(SETUP_FAILED_EXIT_CODE)


def main():
    # CONFIG is a marshalled dict in hex: json and re would cost more than the rest of the start-up
    config = marshal.loads(bytes.fromhex(sys.argv[1]))
    answer_fd = config["answer_fd"]
    source = sys.stdin.read()

    # -- 2. modules a maths program may use, imported before the sandbox closes ------------------------
    # only the ones the program names: importing all of them costs more than starting the interpreter
    allowed_modules = {}
    for name in config["preload"]:
        if not _names(source, name):
            continue
        try:
            allowed_modules[name] = __import__(name)
        except ImportError:
            pass
    status = {"network": "none", "uid": os.getuid(), "process_limit": False, "seccomp": False}
    unisolated = config["backend"] == "rlimits"
    # ctypes now, while the interpreter's files are certainly readable (the rlimits backend drops to nobody)
    ctypes = __import__("ctypes")

    # -- 3. rlimits backend: network namespace (privileged form first; user-namespace form after the drop) -
    if unisolated and config["network_namespace"] and os.geteuid() == 0:
        try:
            if _unshare(ctypes, CLONE_NEWNET):
                status["network"] = "namespace"
        except Exception:  # noqa: BLE001 -- any failure means "no namespace", reported in status
            pass
    if not unisolated:
        status["network"] = "namespace"  # bubblewrap's --unshare-net; probe_isolation measures it
        why = _mount_work(ctypes, config["work"], os.getuid(), os.getgid())
        if why:
            _fail(answer_fd, why)

    # -- 4. resource limits ----------------------------------------------------------------------------
    limits = config["limits"]
    _limit(resource.RLIMIT_AS, limits["memory_bytes"])
    _limit(resource.RLIMIT_CPU, limits["cpu_seconds"])
    _limit(resource.RLIMIT_FSIZE, limits["file_bytes"])
    _limit(resource.RLIMIT_NOFILE, limits["open_files"])
    _limit(resource.RLIMIT_CORE, 0)
    if unisolated and os.getuid() == 0 and config["drop_to_uid"] is not None:
        try:
            os.setgroups([])
            os.setgid(config["drop_to_gid"])
            os.setuid(config["drop_to_uid"])
        except OSError:
            pass
    status["uid"] = os.getuid()
    if unisolated and config["network_namespace"] and status["network"] == "none":
        try:
            if _unshare(ctypes, CLONE_NEWUSER | CLONE_NEWNET):
                status["network"] = "user+namespace"
        except Exception:  # noqa: BLE001
            pass
    if os.getuid() != 0:  # the kernel does not apply RLIMIT_NPROC to root
        _limit(resource.RLIMIT_NPROC, limits["processes"])
        status["process_limit"] = True

    # -- 5. seccomp: from here on, a denied system call kills the process ---------------------------------
    if config["seccomp_bpf"]:
        try:
            installed = _install_seccomp(ctypes, bytes.fromhex(config["seccomp_bpf"]))
        except Exception as exc:  # noqa: BLE001 -- reported to the parent, which refuses to go on
            installed, why = False, repr(exc)
        else:
            why = "the kernel refused the filter"
        if not installed:
            _fail(answer_fd, f"seccomp: {why}")
        status["seccomp"] = True
    del ctypes
    blocked = frozenset(config["blocked_modules"]) | {"gc"}
    for name in [m for m in sys.modules if m.split(".")[0] in blocked or m.startswith("_ctypes")]:
        del sys.modules[name]  # a module already imported would otherwise import without an audit event

    # -- 6. report what held, first line on the answer channel -------------------------------------------
    os.write(answer_fd, (repr(status) + "\n").encode())

    # -- 7. Python guard -------------------------------------------------------------------------------
    os.environ.clear()  # already empty (the parent passes env={}); cleared again before the guard forbids it
    if config["python_guard"]:
        sys.addaudithook(_make_guard(os.path.realpath(os.getcwd()), blocked))

    # -- 8. the program ----------------------------------------------------------------------------------
    entry_name = config["entry"]
    del config, status, limits
    _run(compile(source, "<program>", "exec"), allowed_modules, entry_name, answer_fd)


_MODULE_TYPE = type(sys)


def _run(code, globals_, entry_name, answer_fd, _exit=os._exit, _write=os.write, _repr=repr, _exec=exec,
         _type=type, _callable=callable, _module=_MODULE_TYPE, _modules=sys.modules, _stdout=sys.stdout,
         _excepthook=sys.__excepthook__, _encode=str.encode, _replace=bytes.replace, _max=MAX_ANSWER_CHARS):
    """Run the program and end the process. Every name used once the program has started is bound here, as
    a default argument: a program can rebind the launcher's globals and builtins, not these."""
    module = _module("__main__")
    module.__dict__.update(globals_)
    _modules["__main__"] = module  # ``import __main__`` gives the program its own module, not the launcher
    try:
        _exec(code, module.__dict__)
        entry = module.__dict__.get(entry_name) if entry_name else None
        value = entry() if _callable(entry) else None
        text = None if value is None else _repr(value)[:_max]
        try:
            _stdout.flush()
        except Exception:  # noqa: BLE001,S110 -- stdout is diagnostics only
            pass
    except BaseException as exc:  # noqa: BLE001 -- SystemExit too: no answer, and no atexit hooks
        try:
            _stdout.flush()
            _excepthook(_type(exc), exc, exc.__traceback__)
        finally:
            _exit(1)
    # always a last record, even for ``None``: it supersedes anything the program wrote on the channel itself
    line = b"NONE" if text is None else b"ANSWER " + _encode(text, "utf-8", "backslashreplace")
    _write(answer_fd, b"\n" + _replace(line, b"\n", b"\\n") + b"\n")
    _exit(0)


_DENIED_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
    "subprocess.Popen", "os.startfile", "os.putenv", "os.unsetenv", "os.chdir", "os.chmod", "os.chown",
    "os.link", "os.symlink", "os.truncate", "shutil.rmtree", "sys.remote_exec", "pty.spawn", "os.setsid",
    "os.listxattr", "os.setxattr", "os.removexattr", "code.__new__", "marshal.loads", "function.__new__",
    "sys.addaudithook", "sys.settrace", "sys.setprofile", "sys._current_frames", "os.mkfifo", "os.mknod",
    "_thread.start_new_thread", "os.memfd_create", "os.pidfd_open", "signal.pidfd_send_signal",
})
_DENIED_PREFIXES = ("ctypes.", "socket.", "_posixsubprocess", "winreg.", "cpython.", "mmap.", "signal.")
_READ_DENIED_ROOTS = ("/proc", "/sys", "/dev")
_READ_ALLOWED = ("/dev/null", "/dev/urandom")
_PATH_EVENTS = ("os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.replace", "os.utime")


def _make_guard(workdir, blocked_modules):
    """The audit hook. It must not be switchable from inside the program, so everything it calls is bound
    now, in its closure: builtins, ``os`` functions and the tables (all immutable), and nothing refers to the
    hook but the interpreter (``gc`` is blocked). It resolves paths itself (string operations only) instead
    of calling ``os.path``, whose functions a program can replace; the working folder cannot change
    (``os.chdir`` is denied)."""
    _exit, _write, _type, _isinstance, _str, _bytes, _int = os._exit, os.write, type, isinstance, str, bytes, int
    _any, _all, _bool, violation = any, all, bool, VIOLATION_EXIT_CODE
    denied_events, denied_prefixes = _DENIED_EVENTS, _DENIED_PREFIXES
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    read_denied_roots, read_allowed, path_events = _READ_DENIED_ROOTS, _READ_ALLOWED, _PATH_EVENTS
    split, join, startswith = str.split, "/".join, str.startswith
    workdir_prefix = workdir + "/"

    def normal(path):
        """``path`` made absolute (against the working folder) with ``.`` and ``..`` resolved; ``None`` unless
        it is exactly a ``str`` or ``bytes`` (a path-like object could answer differently here than it did
        for the call itself)."""
        if _type(path) is _bytes:
            p = _bytes.decode(path, "utf-8", "replace")
        elif _type(path) is _str:
            p = path
        else:
            return None
        if not startswith(p, "/"):
            p = workdir_prefix + p
        parts = []
        for part in split(p, "/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + join(parts)

    def inside(path):
        real = normal(path)
        return real is not None and (real == workdir or startswith(real, workdir_prefix))

    def deny(what):
        # Fatal, not an exception: a program that catches the error (``try: os.fork() except: pass``)
        # must not go on to return an answer as if nothing had happened.
        try:
            _write(2, f"\nsandbox violation: {what} is not allowed\n".encode(errors="replace"))
        finally:
            _exit(violation)

    def guard(event, args):
        if event in denied_events or startswith(event, denied_prefixes):
            deny(event)
        if event == "import":
            name = args[0] or ""
            if split(name, ".")[0] in blocked_modules:
                deny(f"import {name}")
        elif event == "open":
            path, mode, flags = args
            if _isinstance(path, _int):
                return
            writing = (_isinstance(mode, _str) and _any(c in mode for c in "wax+")) or (
                _isinstance(flags, _int) and _bool(flags & write_flags))
            if writing and mode is None:
                # os.open: its dir_fd argument is not in the event, so a relative path may not be what it seems
                deny(f"os.open({path!r}) for writing")
            if writing and not inside(path):
                deny(f"writing {path!r}")
            if not writing:
                real = normal(path) or ""
                if startswith(real, read_denied_roots) and real not in read_allowed:
                    deny(f"reading {path!r}")
        elif event in path_events:
            # (src, dst, src_dir_fd, dst_dir_fd) for a rename; (path, ..., dir_fd) for the others
            if event in ("os.rename", "os.replace"):
                paths, dir_fds = args[:2], args[2:4]
            else:
                paths, dir_fds = args[:1], args[-1:]
            if _any(_isinstance(fd, _int) and fd != -1 for fd in dir_fds):
                deny(f"{event} relative to a directory descriptor")
            if not _all(inside(p) for p in paths):
                deny(f"{event} outside the working folder")

    return guard


if __name__ == "__main__":
    main()
