"""The program sandbox and the program_cot reward against what models really write.

Every hostile program below *returns the gold answer after its attack*, so an attack that is not contained
would score 1.0: a 0 proves the program was stopped, and the side-effect checks (canary file, marker
files, a listening socket, the parent's own health) prove nothing escaped. The hostile programs run
together through the pool (one reward call) with short limits, to keep the file fast, once with the Python
guard and once without it (the OS layers alone). The attacks of issue 14, as root and as a normal user,
are in ``test_sandbox_attacks.py``.

Layer tests switch layers off one at a time (``python_guard``, ``seccomp``, ``backend="rlimits"``) to show
what each one holds by itself.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mova.rl import reasoning_rewards
from mova.rl.reasoning_rewards import extract_program, gold_value, outcome_reward
from mova.rl.rewards import get_reward, score
from mova.rl.sandbox import SandboxConfig, SandboxUnavailable, run_program, run_programs

REPO = Path(__file__).resolve().parents[1]

FAST = SandboxConfig(timeout_s=2.0, cpu_seconds=1, memory_bytes=256 * 2**20)


def _solution(body: str) -> str:
    return "def solution():\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"


@pytest.fixture
def fast_sandbox(monkeypatch):
    monkeypatch.setattr(reasoning_rewards, "PROGRAM_SANDBOX", FAST)
    return FAST


def _listening_socket():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve():
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except OSError:
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return server, accepted, stop


def _parent_is_healthy(cwd_before: str, env_before: dict[str, str]) -> None:
    assert os.getcwd() == cwd_before
    assert dict(os.environ) == env_before
    out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "42"  # the parent can still start processes (no fork bomb left over)
    assert bytearray(64 * 2**20)  # and allocate memory


def classic_attacks(tmp_path: Path, canary: Path, outside: Path, marker: Path, port: int, victim_pid: int
                    ) -> dict[str, str]:
    """The 22 things models write that the sandbox has always had to contain (solution() bodies); each returns
    the right answer, 42, after its attack. ``victim_pid`` is the process a program tries to kill and whose
    environment it tries to read (the test process itself, or a stand-in)."""
    return {
        "infinite loop": "while True:\n    pass\nreturn 42",
        "busy loop (cpu)": "x = 0\nwhile True:\n    x += 1\nreturn 42",
        "fork bomb": "import os\nwhile True:\n    os.fork()\nreturn 42",
        "caught fork bomb": "import os\nfor _ in range(50):\n    try:\n        os.fork()\n    except Exception:\n"
                            "        pass\nreturn 42",
        "huge allocation": "x = bytearray(8 * 2**30)\nreturn 42",
        "huge list": "x = [0] * (2**31)\nreturn 42",
        "deep recursion": "def f(n):\n    return f(n + 1)\nf(0)\nreturn 42",
        "raised recursion limit": "import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1) + 1\n"
                                  "f(0)\nreturn 42",
        "write outside": f"open({str(outside)!r}, 'w').write('x')\nreturn 42",
        "write via ..": f"open('../../../..' + {str(outside)!r}, 'w').write('x')\nreturn 42",
        "write via dir_fd": f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
                            f"os.close(os.open({outside.name!r}, os.O_WRONLY | os.O_CREAT, dir_fd=fd))\nreturn 42",
        "delete canary": f"import os\nos.remove({str(canary)!r})\nreturn 42",
        "rename canary": f"import os\nos.rename({str(canary)!r}, 'stolen.txt')\nreturn 42",
        "socket": f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\nreturn 42",
        "_socket": f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\nreturn 42",
        "env var": "import os\nsecret = os.environ['MOVA_TEST_SECRET']\nreturn 42",
        "parent environ": f"data = open('/proc/{victim_pid}/environ').read()\nreturn 42 if 's3cr3t' in data else 0",
        "os.system": f"import os\nos.system('touch {marker}')\nreturn 42",
        "subprocess": f"import subprocess\nsubprocess.run(['touch', {str(marker)!r}])\nreturn 42",
        "ctypes": "import ctypes\nctypes.CDLL(None).system(b'true')\nreturn 42",
        "kill parent": f"import os\nos.kill({victim_pid}, 9)\nreturn 42",
        "huge output": "print('x' * (50 * 2**20))\nreturn 42",
    }


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "guard-off"])
def test_hostile_programs_are_contained_and_score_zero(tmp_path, monkeypatch, guard):
    """Through the real reward (``program_cot``), with the guard and without it (the OS layers alone)."""
    monkeypatch.setattr(reasoning_rewards, "PROGRAM_SANDBOX", replace(FAST, python_guard=guard))
    canary = tmp_path / "canary.txt"
    canary.write_text("keep me")
    outside = tmp_path / "written_by_program.txt"
    system_marker = tmp_path / "os_system_ran"
    monkeypatch.setenv("MOVA_TEST_SECRET", "s3cr3t-value-41")
    server, accepted, stop = _listening_socket()
    attacks = classic_attacks(tmp_path, canary, outside, system_marker, server.getsockname()[1], os.getpid())
    cwd_before, env_before = os.getcwd(), dict(os.environ)
    try:
        rewards = score("program_cot", ["Q:"] * len(attacks), [_solution(b) for b in attacks.values()],
                        answer=["#### 42"] * len(attacks))
    finally:
        stop.set()
    assert dict(zip(attacks, rewards)) == dict.fromkeys(attacks, 0.0)
    assert canary.read_text() == "keep me"
    assert not outside.exists() and not system_marker.exists()
    assert not accepted, "a sandboxed program reached a socket on the host"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]
    _parent_is_healthy(cwd_before, env_before)


def test_well_behaved_programs_score_by_answer(fast_sandbox):
    completions = [
        _solution("apples = 12\neaten = 5\nreturn apples - eaten"),  # right
        _solution("apples = 12\neaten = 5\nreturn apples + eaten"),  # wrong but well formed
        _solution("return 'seven'"),  # not a number
        _solution("return math.sqrt(49)"),  # preloaded module, float 7.0
        _solution("print(3 + 4)"),  # no return: printing is not answering (issue 14), so no answer
        _solution("import collections\nP = collections.namedtuple('P', 'a b')\nreturn P(3, 4).a + 4"),
        _solution("return 1 / 0"),  # crashes
        "I think the answer is 7",  # no program at all
    ]
    rewards = get_reward("program_cot")(["Q"] * len(completions), completions, answer=["7"] * len(completions))
    assert rewards == [1.0, 0.2, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_program_split_between_prompt_and_completion(fast_sandbox):
    """R3 start states put the header and the first k gold lines in the prompt; the reward runs both."""
    prompt = "USER: Tom has 3 bags of 4 apples.\nASSISTANT: def solution():\n    bags = 3\n"
    completion = "    per_bag = 4\n    return bags * per_bag\nUSER: next question"
    assert get_reward("program_cot")([prompt], [completion], answer=["12"]) == [1.0]


def test_completions_stripped_by_the_decoder_still_run(fast_sandbox):
    """Generation strips its text, which takes the indentation off the first line the model wrote."""
    prompts = ["Q\ndef solution():\n", "Q\ndef solution():\n    bags = 3\n", "Q\ndef solution():\n    bags = 3\n"]
    completions = ["bags = 3\n    return bags * 4", "per_bag = 4\n    return bags * per_bag", "return bags * 4"]
    assert get_reward("program_cot")(prompts, completions, answer=["12"] * 3) == [1.0, 1.0, 1.0]


def test_extract_program():
    text = "```python\ndef solution():\n    x = 2\n\n    return x\n```\nprint(solution())"
    assert extract_program(text) == "def solution():\n    x = 2\n\n    return x\n"
    assert extract_program("def other():\n    return 1") is None
    two = "def solution():\n    return 1\ndef solution():\n    return 2\n"
    assert extract_program(two) == "def solution():\n    return 2\n"
    assert extract_program(None) is None  # type: ignore[arg-type]


def test_outcome_reward_scale():
    assert gold_value("She had 3.\n#### 1,200") == 1200
    assert outcome_reward("1200.0", "#### 1,200") == 1.0
    assert outcome_reward("1201", "#### 1,200") == 0.2
    assert outcome_reward(None, "#### 1,200") == 0.0
    assert outcome_reward("many", 5) == 0.0


def test_pool_runs_in_parallel_and_keeps_order():
    """Each program reports when it slept: intervals that overlap prove the pool ran programs at the same
    time, whatever the machine's load (a wall-clock bound on the whole run would not)."""
    import ast

    programs = [f"import time\ndef solution():\n    t0 = time.time()\n    time.sleep(1.0)\n"
                f"    return ({i} * 3, t0, time.time())" for i in range(6)]
    results = run_programs(programs, SandboxConfig(timeout_s=20, cpu_seconds=5), max_workers=6)
    answers = [ast.literal_eval(r.answer) for r in results]
    assert [a[0] for a in answers] == [i * 3 for i in range(6)]  # in input order
    overlapping = sum(1 for i, a in enumerate(answers) for b in answers[i + 1:] if a[1] < b[2] and b[1] < a[2])
    assert overlapping >= 1, answers


def test_only_the_return_value_is_the_answer_and_output_is_capped():
    r = run_program("import sys\ndef solution():\n    print('to stderr', file=sys.stderr)\n    print(41)\n"
                    "    return 'b'", SandboxConfig(timeout_s=5))
    assert r.ok and r.answer == "'b'" and r.stdout.strip() == "41" and "to stderr" not in r.stdout
    printed = run_program("print(7)", SandboxConfig(timeout_s=5))  # no entry function: nothing is answered
    assert printed.ok and printed.answer is None and printed.stdout.strip() == "7"
    big = run_program("print('y' * 100000)", SandboxConfig(timeout_s=5, max_output_bytes=1000))
    assert not big.ok and big.error == "output" and len(big.stdout) <= 1000


def test_working_folder_is_empty_private_and_limited():
    cfg = SandboxConfig(timeout_s=5, work_bytes=2**20, work_files=16)
    r = run_program("import os\ndef solution():\n    open('scratch.txt', 'w').write('ok')\n"
                    "    return sorted(os.listdir('.')), os.getcwd()", cfg)
    assert r.ok and r.answer == "(['scratch.txt'], '/work')"
    too_many = run_program("def solution():\n    for i in range(20):\n        open('f%d' % i, 'w').close()\n"
                           "    return 7", cfg)
    too_big = run_program("def solution():\n    for i in range(4):\n"
                          "        open('f%d' % i, 'wb').write(b'x' * 400000)\n    return 7", cfg)
    assert too_many.error == "exception" and "No space left on device" in too_many.stderr
    assert too_big.error == "exception" and "No space left on device" in too_big.stderr


# --- layers one at a time ----------------------------------------------------------------------------------
UNISOLATED = SandboxConfig(backend="rlimits", allow_unisolated=True, timeout_s=3, cpu_seconds=2)


def test_seccomp_alone_kills_what_maths_never_needs(tmp_path):
    """No bubblewrap, no guard: the filter by itself ends the process (SIGSYS) at the first forbidden call,
    even when the program catches errors, so it cannot return an answer afterwards."""
    # preloaded (no import statement): run as root, this backend drops to nobody, who may not be able to
    # read the interpreter's standard library afterwards
    cfg = replace(UNISOLATED, python_guard=False, preload=("os", "_thread", "socket", "ctypes"))
    bodies = {
        "fork": "try:\n    os.fork()\nexcept OSError:\n    pass",
        "thread": "_thread.start_new_thread(print, ())",
        "socket": "socket.socket()",
        "kill": "import os\nos.kill(1, 0)",
        "pidfd": "import os\nos.pidfd_open(1)",
        "mkfifo": f"import os\nos.mkfifo({str(tmp_path / 'fifo')!r})",
        "exec": "import os\nos.execv('/bin/true', ['true'])",
        "unshare": "ctypes.CDLL(None).unshare(0x10000000)",
        "memfd": "import os\nos.memfd_create('x')",
    }
    results = run_programs([_solution(b + "\nreturn 42") for b in bodies.values()], cfg)
    assert {n: (r.error, r.returncode) for n, r in zip(bodies, results)} == dict.fromkeys(
        bodies, ("violation", -31))
    assert list(tmp_path.iterdir()) == []


def test_bubblewrap_alone_hides_the_host_and_the_network(tmp_path):
    """No seccomp, no guard: the namespaces and the read-only root by themselves."""
    canary = tmp_path / "canary.txt"
    canary.write_text("keep me")
    server, accepted, stop = _listening_socket()
    cfg = SandboxConfig(timeout_s=5, seccomp=False, python_guard=False, preload=())
    programs = [
        f"import os\ndef solution():\n    return os.path.exists({str(canary)!r}), os.path.exists({str(REPO)!r})",
        "import os\ndef solution():\n    return sorted(os.listdir('/')), os.path.exists('/proc/1')",
        f"import socket\ndef solution():\n    s = socket.socket()\n    s.settimeout(1)\n"
        f"    try:\n        s.connect(('127.0.0.1', {server.getsockname()[1]}))\n    except OSError as e:\n"
        f"        return 'refused'\n    return 'connected'",
        "import os\ndef solution():\n    try:\n        os.mkdir('/usr/lib/x')\n    except OSError as e:\n"
        "        return e.errno",
    ]
    try:
        results = run_programs(programs, cfg)
    finally:
        stop.set()
    assert [r.error for r in results] == [None] * 4, [r.stderr for r in results]
    assert results[0].answer == "(False, False)"
    visible, proc = eval(results[1].answer, {})  # noqa: S307 -- a tuple of lists of folder names
    assert set(visible) <= {"dev", "lib", "lib64", "lib32", "libx32", "usr", "work", "root"} and not proc
    assert results[2].answer == "'refused'" and not accepted
    assert results[3].answer == "30"  # EROFS: read-only file system
    assert canary.read_text() == "keep me"


def test_guard_alone_ends_the_program_on_forbidden_operations(tmp_path):
    """No bubblewrap, no seccomp: the audit hook by itself (exit 121), as before issue 14."""
    cfg = replace(UNISOLATED, seccomp=False)
    bodies = [f"open({str(tmp_path / 'x')!r}, 'w')", "import os\nos.system('true')", "import os\nos.kill(1, 0)",
              "open('/proc/self/environ').read()"]
    results = run_programs([_solution(b + "\nreturn 42") for b in bodies], cfg)
    assert [(r.error, r.returncode) for r in results] == [("violation", 121)] * len(bodies)
    assert list(tmp_path.iterdir()) == []


def test_memory_limit_applies_without_the_guard():
    r = run_program("x = bytearray(2 * 2**30)\nprint('allocated')", SandboxConfig(timeout_s=5, python_guard=False,
                                                                                 memory_bytes=256 * 2**20))
    assert r.error == "memory" and "allocated" not in r.stdout


# --- installation and the opt-out -----------------------------------------------------------------------------
def test_unisolated_backend_needs_an_explicit_and_logged_opt_in(monkeypatch, caplog):
    from mova.rl import sandbox

    monkeypatch.setattr(sandbox, "_checked", {})
    with pytest.raises(SandboxUnavailable, match="allow_unisolated=True") as refused:
        run_programs(["def solution():\n    return 1"], SandboxConfig(backend="rlimits"))
    assert "apt-get install -y bubblewrap" in str(refused.value)
    with caplog.at_level(logging.WARNING, logger="mova.rl.sandbox"):
        [r] = run_programs(["def solution():\n    return 1"], UNISOLATED)
    assert r.ok and r.answer == "1" and r.isolation["unisolated"] is True
    assert any("UNISOLATED SANDBOX" in rec.getMessage() and rec.levelno == logging.WARNING for rec in caplog.records)
    [isolated] = run_programs(["def solution():\n    return 1"], SandboxConfig())
    assert isolated.isolation["unisolated"] is False and isolated.isolation["backend"] == "bwrap"


def test_missing_bubblewrap_says_how_to_install_it():
    with pytest.raises(SandboxUnavailable, match=r"apt-get install -y bubblewrap.*allow_unisolated=True"):
        run_programs(["def solution():\n    return 1"], SandboxConfig(bwrap="/nonexistent/bwrap"))


def test_missing_libseccomp_says_how_to_install_it(monkeypatch):
    import ctypes.util

    from mova.rl import sandbox, seccomp

    caches = (seccomp._lib, seccomp.filter_bpf, sandbox._seccomp_filter)
    monkeypatch.setattr(sandbox, "_checked", {})
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "/nonexistent/libseccomp.so.2")
    for cache in caches:
        cache.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match=r"apt-get install -y libseccomp2.*seccomp=False"):
            run_programs(["def solution():\n    return 1"], SandboxConfig())
    finally:
        monkeypatch.undo()
        for cache in caches:
            cache.cache_clear()
    assert run_program("def solution():\n    return 1").isolation["seccomp"] is True


def test_benchmark_quick_reports_the_pool_throughput(capsys):
    """``benchmarks/sandbox_pool.py --quick``, imported (a new interpreter would spend most of the time
    importing Mova's model code)."""
    spec = importlib.util.spec_from_file_location("sandbox_pool", REPO / "benchmarks" / "sandbox_pool.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick"]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("bwrap"))
    assert float(row[2]) > 0  # programs per second
