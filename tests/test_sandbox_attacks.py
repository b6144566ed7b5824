"""Issue 14: the attacks a reward-seeking policy found against the old sandbox, as root and as a normal user.

Every attacking program returns the gold answer after its attack, so any attack that is not contained
scores 1; the side-effect checks (the user's files, marker files in world-writable folders, /dev/shm, a
"trainer" process of the same user, the parent itself, leftover folders and processes) prove nothing
escaped. Honest programs run *at the same time* as the attackers and must still score 1.

The parent side runs in its own process (``tests/sandbox_driver.py``) so that killing it, or the user's
files, can be checked from outside: once as root and once as an unprivileged user. When the suite runs as
root (CI), the "user" case drops to an unused uid with its own private home folder; the sandbox's three
modules are copied where that user can read them. Each battery runs twice: with the Python guard, and with
it switched off (``python_guard=False``), because the guard is not a security boundary and the OS layers
must hold without it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_sandbox import classic_attacks

from mova.rl.reasoning_rewards import UNREADABLE, outcome_reward

REPO = Path(__file__).resolve().parents[1]
GOLD = 731905
SANDBOX_MODULES = ("sandbox.py", "sandbox_launcher.py", "seccomp.py")

# The published way to switch the old guard off, plus the obvious variant against the new one: replace
# the launcher's module-level os functions and tables, reached through ``import __main__`` and through the
# frames' globals. Every step may fail; the attack goes on either way.
SWITCH_OFF_GUARD = '''
def switch_off_guard():
    import os
    import sys
    try:
        import __main__
        __main__.os = type("FakeOs", (), {"_exit": staticmethod(lambda code: None),
                                          "write": staticmethod(lambda fd, data: len(data))})
    except BaseException:
        pass
    try:
        frame = sys._getframe()
        while frame is not None:
            g = frame.f_globals
            for name in ("_DENIED_EVENTS", "_DENIED_PREFIXES", "_PATH_EVENTS", "_READ_DENIED_ROOTS"):
                if name in g:
                    g[name] = frozenset() if name == "_DENIED_EVENTS" else ("\\0",)
            if "VIOLATION_EXIT_CODE" in g:
                g["VIOLATION_EXIT_CODE"] = 0
            frame = frame.f_back
    except BaseException:
        pass
    try:
        os._exit = lambda code: None
        os.write = lambda fd, data: len(data)
    except BaseException:
        pass
'''


def _program(body: str, *, prelude: bool = True) -> str:
    """A complete program: the guard switch-off (when ``prelude``), then ``solution()`` running ``body``."""
    head = SWITCH_OFF_GUARD if prelude else ""
    call = "    switch_off_guard()\n" if prelude else ""
    return head + "\ndef solution():\n" + call + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"


@dataclass
class Parent:
    """Where and as whom the driver (the sandbox's parent) runs."""

    name: str
    uid: int | None  # None: as this process's own user
    python: str
    home: Path  # the user's own folder: a canary file and the training data live here
    pkg: Path  # the three sandbox modules and the driver, readable by that user

    def popen(self, spec: dict, **kwargs) -> subprocess.Popen:
        spec_path = self.home / f"spec-{uuid.uuid4().hex}.json"
        spec_path.write_text(json.dumps(spec))
        if self.uid is not None:
            os.chown(spec_path, self.uid, self.uid)
        env = {"PYTHONPATH": str(self.pkg), "HOME": str(self.home), "PATH": "/usr/bin:/bin"}
        user = {} if self.uid is None else {"user": self.uid, "group": self.uid, "extra_groups": []}
        return subprocess.Popen([self.python, str(self.pkg / "sandbox_driver.py"), str(spec_path)], cwd=self.home,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **user,
                                **kwargs)

    def run(self, spec: dict, timeout: float = 120) -> tuple[int, dict, str]:
        proc = self.popen(spec)
        out, err = proc.communicate(timeout=timeout)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return proc.returncode, (lines[-1] if lines else {}), err


def _free_uid() -> int:
    for uid in range(40123, 40200):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise RuntimeError("no free uid in 40123..40199")


def _python_for(uid: int | None) -> str | None:
    """An interpreter this user can run: this one's base interpreter if its folders let other users in,
    else the system's."""
    user = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    candidates = [sys.executable] if uid is None else [getattr(sys, "_base_executable", sys.executable),
                                                         "/usr/bin/python3", "/usr/local/bin/python3"]
    for python in candidates:
        try:
            ok = subprocess.run([python, "-I", "-S", "-c", "import ctypes, json"], cwd="/", env={},
                                capture_output=True, timeout=60, **user).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return python
    return None


def _private_dir(uid: int | None, mode: int = 0o700) -> Path:
    path = Path(tempfile.mkdtemp(prefix="mova-attack-", dir="/tmp"))
    if uid is not None:
        os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path


def _parent_params() -> list:
    params = []
    if os.getuid() == 0:
        params.append(pytest.param("root", id="root-parent"))
    else:
        params.append(pytest.param("root", id="root-parent", marks=pytest.mark.skip(
            reason="the root-parent case needs the suite to run as root (CI does)")))
    params.append(pytest.param("user", id="user-parent"))
    return params


@pytest.fixture(params=_parent_params())
def parent(request):
    if request.param == "root":
        uid, python = None, sys.executable
    else:
        uid = _free_uid() if os.getuid() == 0 else None
        python = _python_for(uid)
        if python is None:
            pytest.skip(f"no Python interpreter that uid {uid} may run (this one lives in a folder only root can "
                        "enter, and there is no /usr/bin/python3): install python3 to run the normal-user case")
    pkg = _private_dir(None, 0o755)
    (pkg / "mova" / "rl").mkdir(parents=True)
    for init in (pkg / "mova" / "__init__.py", pkg / "mova" / "rl" / "__init__.py"):
        init.write_text("")
    for name in SANDBOX_MODULES:
        shutil.copy(REPO / "mova" / "rl" / name, pkg / "mova" / "rl" / name)
    shutil.copy(REPO / "tests" / "sandbox_driver.py", pkg / "sandbox_driver.py")
    for path in pkg.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    home = _private_dir(uid)
    try:
        yield Parent(request.param, uid, python, home, pkg)
    finally:
        shutil.rmtree(pkg, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def _own(path: Path, uid: int | None) -> Path:
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def _mkdir_owned(path: Path, uid: int | None) -> Path:
    path.mkdir()
    return _own(path, uid)


def _write_gold(path: Path, uid: int | None) -> Path:
    """A training record whose gold answer is GOLD, as a policy might find it on disk."""
    path.write_text(json.dumps({"question": "How many apples?", "answer": f"It is {GOLD}.\n#### {GOLD}"}) + "\n")
    return _own(path, uid)


def _children(pid: int) -> list[int]:
    kids = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            pass
    return kids


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for kid in _children(todo.pop()):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def _listening_socket():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=serve, daemon=True).start()
    return server, accepted, stop


def _attacks(tok: str, home: Path, trainer_pid: int, port: int) -> dict[str, str]:
    """name -> program. Every one returns GOLD after its attack, or when its search succeeded (else a non-number,
    which scores 0 rather than the 0.2 of a wrong number)."""
    canary, data = home / "canary.txt", home / "data" / "train.jsonl"
    world = [f"/tmp/mova-attack-{tok}", f"/var/tmp/mova-attack-{tok}", f"/dev/shm/mova-attack-{tok}"]
    return {
        # -- the guard switched off from inside, then what got through in issue 14 --------------------------
        "guard off, write world-writable folders": "\n".join(
            f"open({p!r}, 'w').write('x')" for p in world) + f"\nreturn {GOLD}",
        "guard off, delete the user's files": f"import os\nos.remove({str(canary)!r})\nreturn {GOLD}",
        "guard off, fill /dev/shm": f"f = open('/dev/shm/mova-shm-{tok}', 'wb')\nfor _ in range(256):\n"
                                    f"    f.write(b'x' * 2**20)\nreturn {GOLD}",
        "guard off, kill the trainer and the parent": f"""
            import os
            os.kill({trainer_pid}, 9)
            for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
                cmdline = open('/proc/%s/cmdline' % pid, 'rb').read()
                if b'sandbox_driver' in cmdline or b'mova-trainer' in cmdline:
                    os.kill(int(pid), 9)
            return {GOLD}""",
        "guard off, socket": f"import socket\ns = socket.socket()\ns.settimeout(1)\n"
                             f"s.connect(('127.0.0.1', {port}))\nreturn {GOLD}",
        # -- siblings: signal them (pidfd raises no audit event), see them, read their output ---------------
        "pidfd: kill every sibling": f"""
            import os
            import signal
            try:
                pids = [int(p) for p in os.listdir('/proc') if p.isdigit()]
            except OSError:
                pids = list(range(1, 4096))
            for pid in pids:
                if pid == os.getpid():
                    continue
                try:
                    signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL)
                except OSError:
                    pass
            return {GOLD}""",
        "list /proc to find siblings": f"""
            import os
            others = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid())]
            return {GOLD} if others else 'none seen'""",
        "read a sibling's stdout": f"""
            import glob
            import os
            import re
            paths = glob.glob('/tmp/mova-sandbox-*/stdout') + glob.glob('/proc/*/fd/1')
            for root, dirs, files in os.walk('/tmp'):
                paths += [os.path.join(root, f) for f in files]
            for path in paths:
                try:
                    text = open(path, errors='replace').read(100000)
                except OSError:
                    continue
                found = re.search(r'SIBLING-SECRET-{tok} (\\d+)', text)
                if found:
                    return int(found.group(1))
            return 'not found'""",
        # -- reward hacking by reading: the gold answer from the training data --------------------------------
        "search the file system for the gold answer": f"""
            import os
            import re
            def look(path):
                try:
                    found = re.search(r'#### (\\d+)', open(path, errors='replace').read(200000))
                except OSError:
                    return None
                return int(found.group(1)) if found else None
            home = os.environ.get('HOME') or '/root'
            for guess in ({str(data)!r}, 'data/train.jsonl', '../data/train.jsonl', home + '/data/train.jsonl'):
                if look(guess):
                    return look(guess)
            seen = 0
            skip = ('/usr', '/proc', '/sys', '/lib', '/lib64')
            for top in ('/', home, '/tmp', '/work', '/root', '/home'):
                for root, dirs, files in os.walk(top):
                    dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
                    for name in files:
                        seen += 1
                        if seen > 3000:
                            return 'not found'
                        if name.endswith(('.jsonl', '.json')) and look(os.path.join(root, name)):
                            return look(os.path.join(root, name))
            return 'not found'""",
        # -- files outside the folder without an audit event; quotas ------------------------------------------
        "mkfifo and mknod outside": f"import os\nos.mkfifo({str(home / ('fifo-' + tok))!r})\n"
                                    f"os.mknod({str(home / ('node-' + tok))!r})\nreturn {GOLD}",
        "1 GiB of files": f"for i in range(1024):\n    open('big%d' % i, 'wb').write(b'x' * 2**20)\nreturn {GOLD}",
        "55,000 files": f"for i in range(55000):\n    open('f%d' % i, 'w').close()\nreturn {GOLD}",
        # -- the answer channel: only solution()'s return value counts ----------------------------------------
        "atexit rewrites the answer": f"""
            import atexit
            import os
            def forge():
                print('\\x1e__MOVA_SANDBOX_ANSWER__\\x1e{GOLD}')
                for fd in range(3, 4096):
                    try:
                        os.write(fd, b'\\nANSWER {GOLD}\\n')
                    except OSError:
                        pass
            atexit.register(forge)
            print({GOLD})
            return 'five'""",
        "forged answer line, then return None": f"""
            import os
            for fd in range(3, 4096):
                try:
                    os.write(fd, b'\\nANSWER {GOLD}\\n')
                except OSError:
                    pass
            print({GOLD})
            return None""",
    }


def _honest(tok: str) -> str:
    """A sibling that prints a secret (its answer) and stays alive a while, then returns the gold answer."""
    return _program(f"import sys\nimport time\nprint('SIBLING-SECRET-{tok} {GOLD}')\nsys.stdout.flush()\n"
                    f"time.sleep(1.0)\nreturn {GOLD}", prelude=False)


def _reward(result: dict) -> float:
    return outcome_reward(result["answer"], GOLD) if result["ok"] else UNREADABLE


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "guard-off"])
def test_issue14_attacks_are_contained_and_score_zero(parent, guard):
    tok = uuid.uuid4().hex[:12]
    home = parent.home
    canary = home / "canary.txt"
    canary.write_text("keep me")
    _own(canary, parent.uid)
    _write_gold(_mkdir_owned(home / "data", parent.uid) / "train.jsonl", parent.uid)
    sandbox_tmp = _mkdir_owned(home / "sandbox-tmp", parent.uid)
    user = {} if parent.uid is None else {"user": parent.uid, "group": parent.uid, "extra_groups": []}
    trainer = subprocess.Popen([parent.python, "-c", "import time; time.sleep(120)", f"mova-trainer-{tok}"],
                               cwd="/", env={"MOVA_TEST_SECRET": "s3cr3t-value-41"}, **user)
    server, accepted, stop = _listening_socket()
    port = server.getsockname()[1]
    shm_before = shutil.disk_usage("/dev/shm").used
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    attacks = _attacks(tok, home, trainer.pid, port)
    classic = classic_attacks(home, canary, home / "written_by_program.txt", home / "os_system_ran", port,
                              trainer.pid)
    # honest siblings first, so that they are running while the attackers look for them
    named = [(f"honest {i}", _honest(tok)) for i in range(5)]
    named += [(name, _program(body, prelude=name.startswith("guard off"))) for name, body in attacks.items()]
    named += [(f"classic: {name}", _program(body, prelude=False)) for name, body in classic.items()]
    spec = {"programs": [program for _, program in named], "workers": 16,
            "config": {"timeout_s": 10.0, "cpu_seconds": 1, "memory_bytes": 256 * 2**20, "python_guard": guard,
                       "tmp_dir": str(sandbox_tmp)}}
    try:
        rc, out, err = parent.run(spec)
        trainer_alive = trainer.poll() is None
    finally:
        stop.set()
        trainer.kill()
        trainer.wait()
    assert rc == 0 and "results" in out, f"the parent did not survive (exit {rc}): {err[-2000:]}"
    results = dict(zip((name for name, _ in named), out["results"]))
    rewards = {name: _reward(r) for name, r in results.items()}
    expected = {name: 1.0 if name.startswith("honest") else 0.0 for name, _ in named}
    assert rewards == expected, {n: results[n] for n in rewards if rewards[n] != expected[n]}
    # the answer channel carried what solution() returned, nothing printed or written by an exit hook
    assert results["atexit rewrites the answer"]["answer"] == "'five'"
    assert results["forged answer line, then return None"]["answer"] is None
    assert trainer_alive, "a sandboxed program killed a process of the same user"
    assert canary.read_text() == "keep me"
    markers = (f"/tmp/mova-attack-{tok}", f"/var/tmp/mova-attack-{tok}", f"/dev/shm/mova-attack-{tok}",
               f"/dev/shm/mova-shm-{tok}", home / f"fifo-{tok}", home / f"node-{tok}")
    assert not [p for p in markers if os.path.lexists(p)]
    assert shutil.disk_usage("/dev/shm").used <= shm_before + 8 * 2**20
    assert not accepted, "a sandboxed program reached a socket on the host"
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith("spec-")) == [
        "canary.txt", "data", "sandbox-tmp"]
    assert list(sandbox_tmp.iterdir()) == [], "the sandbox left files behind"
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - tmp_before if n.startswith("mova-sandbox")]


def test_the_reading_attacks_do_leak_without_isolation(tmp_path):
    """The attack programs are real: against the unisolated opt-out (no bubblewrap) the same search for the
    gold answer and the same look at /proc score 1. Only the isolation makes them score 0 above."""
    from mova.rl.sandbox import SandboxConfig, run_programs

    data_dir = _private_dir(None, 0o755)  # world-readable, as training data often is
    try:
        (data_dir / "data").mkdir(mode=0o755)
        data = _write_gold(data_dir / "data" / "train.jsonl", None)
        data.chmod(0o644)
        attacks = _attacks("x", data_dir, os.getpid(), 1)
        names = ("search the file system for the gold answer", "list /proc to find siblings")
        config = SandboxConfig(backend="rlimits", allow_unisolated=True, python_guard=False, timeout_s=10,
                               preload=("os", "re"))
        results = run_programs([_program(attacks[name], prelude=False) for name in names], config)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    rewards = [outcome_reward(r.answer, GOLD) if r.ok else UNREADABLE for r in results]
    assert rewards == [1.0, 1.0], [(r.error, r.answer, r.stderr[-300:]) for r in results]


def test_guard_cannot_be_switched_off_from_inside(parent):
    """After the published switch-off (and variants), an operation only the guard refuses (chmod inside the
    working folder is harmless to the OS layers) must still end the program as a guard violation."""
    programs = [_program("import os\nos.chmod('.', 0o700)\nreturn 1"),
                _program("import os\nopen('x', 'w').close()\nos.truncate('x', 0)\nreturn 1"),
                _program("import ctypes\nreturn 1")]
    rc, out, err = parent.run({"programs": programs, "config": {"timeout_s": 8.0}})
    assert rc == 0, err[-2000:]
    assert [(r["error"], r["returncode"]) for r in out["results"]] == [("violation", 121)] * 3, out["results"]


def test_probe_reports_every_layer(parent):
    rc, out, err = parent.run({"programs": [], "probe": True, "config": {"timeout_s": 8.0}})
    assert rc == 0, err[-2000:]
    probe = out["probe"]
    assert probe["ok"], probe
    assert probe["namespaces"] == dict.fromkeys(("mnt", "pid", "net", "ipc", "uts", "user", "cgroup"), True)
    assert probe["seccomp_mode"] == "filter" and probe["no_new_privs"] and probe["capabilities"] == "0000000000000000"
    assert probe["writable"] == ["/work"] and probe["work_bytes"] == 16 * 2**20
    assert probe["processes_visible"] == 0 and probe["pid_inside"] == 2
    assert probe["caller_files_readable"] == []
    assert set(probe["visible_root"]) <= {"dev", "lib", "lib64", "lib32", "libx32", "usr", "work", "root"}
    assert probe["host_uid"] == (0 if parent.uid is None and os.getuid() == 0 else parent.uid or os.getuid())
    # the kernel exempts root from RLIMIT_NPROC; seccomp stops new processes there
    assert probe["process_limit"] == (probe["host_uid"] != 0)


def test_killed_parent_leaves_no_process_and_no_folder(parent):
    sandbox_tmp = _mkdir_owned(parent.home / "sandbox-tmp", parent.uid)
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    sleeper = _program("import time\nopen('scratch', 'w').write('x' * 1000)\ntime.sleep(60)\nreturn 1",
                       prelude=False)
    proc = parent.popen({"programs": [sleeper] * 3, "workers": 3,
                         "config": {"timeout_s": 60.0, "cpu_seconds": 60, "tmp_dir": str(sandbox_tmp)}})
    try:
        deadline, leaves = time.monotonic() + 60, set()
        while time.monotonic() < deadline:
            everyone = _descendants(proc.pid)
            leaves = {p for p in everyone if not _children(p)}
            if len(leaves) >= 3 and all(os.path.exists(f"/proc/{p}/ns/pid") for p in leaves):
                time.sleep(1.0)  # let them get to their sleep
                everyone = _descendants(proc.pid)
                break
            time.sleep(0.05)
        assert len(leaves) >= 3, f"the sandboxes did not start: {proc.stderr.read() if proc.poll() else ''}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in everyone):
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not [p for p in everyone if _alive(p)], "sandboxed processes outlived their killed parent"
    assert list(sandbox_tmp.iterdir()) == []
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - tmp_before if n.startswith("mova-sandbox")]
