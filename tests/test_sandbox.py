"""The program sandbox and the program_cot reward against what models really write.

Every hostile program below *returns the gold answer after its attack*, so an attack that is not contained
would score 1.0: a 0 proves the program was stopped, and the side-effect checks (canary file, marker
files, a listening socket, the parent's own health) prove nothing escaped. The hostile programs run
together through the pool (one reward call) with short limits, to keep the file fast.

Where the OS layer alone is tested (``python_guard=False``) the test first asks :func:`probe_isolation`
what holds on this machine and skips a layer that cannot hold here (e.g. no process limit when the tests
run as root without a user to drop to); the skip message says which.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from mova.rl import reasoning_rewards
from mova.rl.reasoning_rewards import extract_program, gold_value, outcome_reward
from mova.rl.rewards import get_reward, score
from mova.rl.sandbox import SandboxConfig, probe_isolation, run_program, run_programs

FAST = SandboxConfig(timeout_s=2.0, cpu_seconds=1, memory_bytes=256 * 2**20)


def _solution(body: str) -> str:
    return "def solution():\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"


@pytest.fixture
def fast_sandbox(monkeypatch):
    monkeypatch.setattr(reasoning_rewards, "PROGRAM_SANDBOX", FAST)
    return FAST


@pytest.fixture(scope="module")
def isolation():
    return probe_isolation(FAST)


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


def test_hostile_programs_are_contained_and_score_zero(tmp_path, monkeypatch, fast_sandbox):
    canary = tmp_path / "canary.txt"
    canary.write_text("keep me")
    outside = tmp_path / "written_by_program.txt"
    system_marker = tmp_path / "os_system_ran"
    monkeypatch.setenv("MOVA_TEST_SECRET", "s3cr3t-value-41")
    server, accepted, stop = _listening_socket()
    port = server.getsockname()[1]
    attacks = {
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
        "parent environ": f"data = open('/proc/{os.getpid()}/environ').read()\nreturn 42 if 's3cr3t' in data else 0",
        "os.system": f"import os\nos.system('touch {system_marker}')\nreturn 42",
        "subprocess": f"import subprocess\nsubprocess.run(['touch', {str(system_marker)!r}])\nreturn 42",
        "ctypes": "import ctypes\nctypes.CDLL(None).system(b'true')\nreturn 42",
        "kill parent": f"import os\nos.kill({os.getpid()}, 9)\nreturn 42",
        "huge output": "print('x' * (50 * 2**20))\nreturn 42",
    }
    cwd_before, env_before = os.getcwd(), dict(os.environ)
    start = time.monotonic()
    try:
        rewards = score("program_cot", ["Q:"] * len(attacks), [_solution(b) for b in attacks.values()],
                        answer=["#### 42"] * len(attacks))
    finally:
        stop.set()
    elapsed = time.monotonic() - start
    assert dict(zip(attacks, rewards)) == dict.fromkeys(attacks, 0.0)
    assert canary.read_text() == "keep me"
    assert not outside.exists() and not system_marker.exists()
    assert not accepted, "a sandboxed program reached a socket on the host"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]
    _parent_is_healthy(cwd_before, env_before)
    assert elapsed < 30


def test_well_behaved_programs_score_by_answer(fast_sandbox):
    completions = [
        _solution("apples = 12\neaten = 5\nreturn apples - eaten"),  # right
        _solution("apples = 12\neaten = 5\nreturn apples + eaten"),  # wrong but well formed
        _solution("return 'seven'"),  # not a number
        _solution("return math.sqrt(49)"),  # preloaded module, float 7.0
        _solution("print(3 + 4)"),  # no return: the last printed line is the answer
        _solution("return 1 / 0"),  # crashes
        "I think the answer is 7",  # no program at all
    ]
    rewards = get_reward("program_cot")(["Q"] * len(completions), completions, answer=["7"] * len(completions))
    assert rewards == [1.0, 0.2, 0.0, 1.0, 1.0, 0.0, 0.0]


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
    programs = [f"import time\ntime.sleep(0.5)\nprint({i} * 3)" for i in range(6)]
    start = time.monotonic()
    results = run_programs(programs, SandboxConfig(timeout_s=5), max_workers=6)
    elapsed = time.monotonic() - start
    assert [r.answer for r in results] == [str(i * 3) for i in range(6)]
    assert elapsed < 6 * 0.5  # sequential would take at least 3 s


def test_only_stdout_comes_back_and_it_is_capped():
    r = run_program("import sys\nprint('to stderr', file=sys.stderr)\nprint('a')\nprint('b')",
                    SandboxConfig(timeout_s=5))
    assert r.ok and r.answer == "b" and "to stderr" not in r.stdout
    big = run_program("print('y' * 100000)", SandboxConfig(timeout_s=5, max_output_bytes=1000))
    assert not big.ok and big.error == "output" and len(big.stdout) <= 1000


def test_working_folder_is_empty_and_private():
    r = run_program("import os\nopen('scratch.txt', 'w').write('ok')\nprint(sorted(os.listdir('.')))",
                    SandboxConfig(timeout_s=5))
    assert r.ok and r.answer == "['scratch.txt']"


# --- the OS layer alone (no Python guard): what holds depends on the machine; probe says what ---------------
def test_os_layer_stops_a_fork_bomb(isolation):
    if not isolation.get("process_limit"):
        pytest.skip(f"RLIMIT_NPROC cannot apply here (sandbox uid {isolation.get('uid')}): only the guard holds")
    cfg = SandboxConfig(timeout_s=3, cpu_seconds=2, python_guard=False)
    r = run_program("import os\nwhile True:\n    os.fork()", cfg)
    # the first fork fails at once (BlockingIOError): no child ever ran, so no timeout either
    assert r.error == "exception" and "BlockingIOError" in r.stderr, (r.error, r.stderr[-300:])
    _parent_is_healthy(os.getcwd(), dict(os.environ))


def test_os_layer_has_no_network(isolation):
    if isolation.get("network") == "none":
        pytest.skip("no network namespace allowed here: only the Python guard blocks sockets")
    server, accepted, stop = _listening_socket()
    port = server.getsockname()[1]
    cfg = SandboxConfig(timeout_s=3, python_guard=False, preload=("socket",))
    r = run_program(f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"
                    "print('connected')", cfg)
    stop.set()
    assert not r.ok and "connected" not in r.stdout and not accepted


def test_os_layer_protects_files_when_the_user_is_dropped(isolation, tmp_path):
    if isolation.get("uid") == os.getuid():
        pytest.skip("the program runs as the caller's own user here: only the Python guard protects its files")
    canary = tmp_path / "canary.txt"
    canary.write_text("keep me")
    cfg = SandboxConfig(timeout_s=3, python_guard=False)
    r = run_program(f"import os\nos.remove({str(canary)!r})", cfg)
    assert not r.ok and canary.read_text() == "keep me"


def test_memory_limit_applies_without_the_guard():
    r = run_program("x = bytearray(2 * 2**30)\nprint('allocated')", SandboxConfig(timeout_s=5, python_guard=False,
                                                                                 memory_bytes=256 * 2**20))
    assert r.error == "memory" and "allocated" not in r.stdout
