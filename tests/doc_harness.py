"""The doc-command harness behind tests/test_doc_commands.py: extract the fenced shell commands and Python snippets
of README.md and docs/*.md, read their ``doc-test`` markers, and run them as a user types them (bash, cwd = a
temporary workspace), through a fork server that has the heavy libraries imported once.

Marker grammar (the top of tests/test_doc_commands.py documents it for doc writers)::

    <!-- doc-test: key="value" key=value ... -->        every command of the next fenced block
    <!-- doc-test 2: key="value" ... -->                command 2 (1-based) of the next block only

Run as ``python tests/doc_harness.py --serve SOCKET`` it is the fork server (see ``serve``).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "console", "shell"}
KEYS = {"args", "needs", "expect", "skip", "installs", "mode", "launcher", "replace", "setup", "assert", "env",
        "stdout", "table", "timeout"}
INSTALL_STEP = re.compile(r"^(python3? -m venv\b|\. \S*activate\b|source \S*activate\b|(python3? -m )?pip3? install\b)")
MARKER = re.compile(r"^\s*<!--\s*doc-test(?:\s+(\d+))?\s*:(.*?)-->\s*$")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
# Libraries the fork server imports once (never the entry-point modules themselves: runpy runs those fresh).
PRELOAD = ["torch", "torchvision", "lightning.pytorch", "jsonargparse", "numpy", "av", "safetensors.torch", "yaml",
           "matplotlib.pyplot", "rich.console", "vidtldr_pl.cli", "vidtldr_pl.tasks.retrieval",
           "vidtldr_pl.tasks.classification", "vidtldr_pl.tasks.qa", "vidtldr_pl.data_modules.retrieval",
           "vidtldr_pl.data_modules.synthetic_qa", "vidtldr_pl.data_modules.classification"]


class MarkerError(ValueError):
    """A malformed doc-test marker (names the file and line)."""


@dataclass
class Command:
    """One command of a block: a shell line (continuations joined) or a whole Python snippet."""

    text: str
    options: dict[str, list[str]]
    index: int  # 1-based within the block

    def opt(self, key: str, default: str | None = None) -> str | None:
        values = self.options.get(key)
        return values[-1] if values else default


@dataclass
class Block:
    """A fenced block of a doc file, with the markers above it."""

    path: str
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    block_options: dict[str, list[str]] = field(default_factory=dict)
    command_options: dict[int, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def is_python(self) -> bool:
        return self.lang == "python"

    def commands(self) -> list[Command]:
        texts = [self.body] if self.is_python else shell_lines(self.body)
        out = []
        for i, text in enumerate(texts, 1):
            options = {k: list(v) for k, v in self.block_options.items()}
            for k, v in self.command_options.get(i, {}).items():
                options[k] = list(v)
            out.append(Command(text, options, i))
        extra = set(self.command_options) - set(range(1, len(out) + 1))
        if extra:
            raise MarkerError(f"{self.id}: a marker names command(s) {sorted(extra)} but the block has {len(out)}")
        return out


def parse_marker(text: str, where: str) -> dict[str, list[str]]:
    """``key="value" key=value`` -> {key: [values]} (a key may repeat: replace, assert, env)."""
    options: dict[str, list[str]] = {}
    for token in shlex.split(text):
        key, sep, value = token.partition("=")
        if key not in KEYS:
            raise MarkerError(f"{where}: unknown doc-test key {key!r} (known: {sorted(KEYS)})")
        options.setdefault(key, []).append(value if sep else "")
    return options


def extract_blocks(rel: str) -> list[Block]:
    """Every fenced shell / python block of ROOT/rel, with its markers (marker lines directly above the fence)."""
    lines = (ROOT / rel).read_text().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2), i
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*```\s*$", lines[j]):
            j += 1
        body = "\n".join(line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:j])
        i = j + 1
        if lang not in SHELL_LANGS and lang != "python":
            continue
        block = Block(rel, start + 1, lang, body)
        k = start - 1
        while k >= 0 and MARKER.match(lines[k]):
            mm = MARKER.match(lines[k])
            options = parse_marker(mm.group(2), f"{rel}:{k + 1}")
            target = block.command_options.setdefault(int(mm.group(1)), {}) if mm.group(1) else block.block_options
            for key, values in options.items():
                target.setdefault(key, [])[:0] = values  # markers read bottom-up: keep the file's order
            k -= 1
        blocks.append(block)
    return blocks


def all_blocks() -> list[Block]:
    return [b for rel in DOCS for b in extract_blocks(rel)]


def shell_lines(body: str) -> list[str]:
    """Commands of a shell block: continuation lines joined, comments and blank lines dropped, a ``$ `` prompt
    (console blocks) removed; in a console block lines without a prompt are output and are dropped."""
    out, pending = [], ""
    console = any(line.lstrip().startswith("$ ") for line in body.splitlines())
    for raw in body.splitlines():
        line = raw.rstrip()
        if not pending:
            stripped = line.strip()
            if console:
                if not stripped.startswith("$ "):
                    continue
                stripped = stripped[2:]
            if not stripped or stripped.startswith("#"):
                continue
            line = stripped
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        out.append((pending + line.strip()) if pending else line)
        pending = ""
    if pending:
        out.append(pending.strip())
    return out


# ----------------------------------------------------------------------------------------------------------------
# Running one command
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What happened to one command: status run / checked / mode / skipped / failed, and why."""

    block: str
    index: int
    command: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    installs_skipped: int = 0
    cpu: float = 0.0  # CPU seconds of the python processes (fork server mode; 0 otherwise)


def split_steps(command: str) -> list[str]:
    """``a && b ; c`` -> [a, b, c]: the docs' chains, split outside quotes (run again joined by ``&&``)."""
    steps, current, quote, i = [], "", None, 0
    while i < len(command):
        c = command[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif command.startswith("&&", i) or c == ";":
            steps.append(current)
            current = ""
            i += 2 if c == "&" else 1
            continue
        current += c
        i += 1
    steps.append(current)
    return [step.strip() for step in steps if step.strip()]


def strip_launcher(command: str) -> str:
    """``torchrun <its options> script.py args`` -> ``python script.py args``."""
    words = shlex.split(command)
    for i, w in enumerate(words):
        if w.endswith(".py"):
            return shlex.join(["python", *words[i:]])
    raise MarkerError(f"launcher=strip: no script in {command!r}")


def prepare(cmd: Command) -> tuple[str, int, str | None]:
    """The shell text to run for cmd (markers applied), the number of install steps dropped, and the skip reason
    when nothing is left to run (None otherwise)."""
    if cmd.opt("skip") is not None:
        return "", 0, cmd.opt("skip") or "no reason given"
    text = cmd.text
    for rep in cmd.options.get("replace", []):
        old, sep, new = rep.partition("=>")
        if not sep or old not in text:
            raise MarkerError(f"replace={rep!r}: {old!r} is not in the command")
        text = text.replace(old, new)
    steps = split_steps(text)
    installs = [s for s in steps if INSTALL_STEP.match(s)]
    if installs and not cmd.opt("installs"):
        raise MarkerError(f"install step(s) {installs} need a marker installs=\"<why they are not run>\"")
    steps = [s for s in steps if not INSTALL_STEP.match(s)]
    if not steps:
        return "", len(installs), f"installs: {cmd.opt('installs')}"
    if cmd.opt("launcher") == "strip":
        steps = [strip_launcher(s) if s.split()[0] in ("torchrun", "srun", "sbatch") else s for s in steps]
    mode = cmd.opt("mode")
    extra = cmd.opt("args", "")
    if mode == "help":
        extra = (extra + " --help").strip()
    elif mode == "print_config":
        extra = (extra + " --print_config").strip()
    elif mode is not None:
        raise MarkerError(f"mode={mode!r}: use help or print_config")
    if extra:
        steps[-1] = f"{steps[-1]} {extra}"
    return " && ".join(steps), len(installs), None


def make_workspace(path: Path) -> None:
    """A folder that looks like the repository root to a command: the read-only parts linked, README.md and
    BENCHMARKS.md copied; its own .cache/ (the few clips a cut command needs take a second to generate, and blocks
    running at the same time then never write into one cache)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("evaluate.py", "train.py", "configs", "tools", "benchmarks", "tests", "docs", "vidtldr_pl",
                 "data_modules", ".ci", "pyproject.toml", "setup.py"):
        (path / name).symlink_to(ROOT / name)
    for name in ("README.md", "BENCHMARKS.md"):  # commands may write into these: copies
        shutil.copy(ROOT / name, path / name)


def rich_table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the last box table rich printed (┃ header ┃, │ rows │)."""
    header, rows = [], []
    for line in stdout.splitlines():
        if line.startswith("┃"):
            header, rows = [c.strip() for c in line.strip("┃").split("┃")], []
        elif line.startswith("│") and header:
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return header, rows


def markdown_table_after(rel: str, line: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the first markdown table after ``line`` (1-based) of doc ``rel``."""
    lines = (ROOT / rel).read_text().split("\n")[line:]
    start = next((i for i, l in enumerate(lines) if l.startswith("| ")), None)
    if start is None:
        return [], []
    table = []
    for l in lines[start:]:
        if not l.startswith("|"):
            break
        if not l.startswith("|---"):
            table.append([c.strip() for c in l.strip().strip("|").split("|")])
    return table[0], table[1:]


def run_command(cmd: Command, block: Block, workspace: Path, env: dict[str, str]) -> Outcome:
    """Run one command of block in workspace and judge it against its markers."""
    try:
        text, installs, skip = prepare(cmd)
    except MarkerError as e:
        return Outcome(block.id, cmd.index, cmd.text, "failed", f"marker: {e}")
    if skip is not None:
        return Outcome(block.id, cmd.index, cmd.text, "skipped", skip, installs_skipped=installs)
    if block.is_python:
        setup = "\n".join(cmd.options.get("setup", []))
        checks = "\n".join(f"assert {a}, {a!r}" for a in cmd.options.get("assert", []))
        script = workspace / f"snippet_{block.line}.py"
        script.write_text(f"{setup}\n{text}\n{checks}\n")
        text = f"python {script.name}"
    run_env = dict(env)
    cpu_log = workspace / f".cpu_{block.line}_{cmd.index}"
    run_env["DOC_TEST_CPU_LOG"] = str(cpu_log)
    for item in cmd.options.get("env", []):
        k, _, v = item.partition("=")
        run_env[k] = v
    start = time.monotonic()
    timeout = float(cmd.opt("timeout", "300"))
    proc = subprocess.Popen(["bash", "-c", text], cwd=workspace, env=run_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        stdout, stderr = proc.communicate()
        return Outcome(block.id, cmd.index, text, "failed", f"timed out after {timeout:.0f} s\n{stderr[-2000:]}",
                       time.monotonic() - start, installs)
    seconds = time.monotonic() - start
    cpu = sum(float(x) for x in cpu_log.read_text().split()) if cpu_log.exists() else 0.0
    rc = proc.returncode
    tail = f"exit code {rc}\n--- stdout (tail)\n{stdout[-1500:]}\n--- stderr (tail)\n{stderr[-3000:]}"

    def fail(why: str) -> Outcome:
        return Outcome(block.id, cmd.index, text, "failed", f"{why}\n{tail}", seconds, installs, cpu)

    needs, expect = cmd.opt("needs"), cmd.opt("expect")
    mode = cmd.opt("mode")
    if needs is not None and not (expect or mode or cmd.options.get("replace")):
        return fail("needs= without expect=\"error: ...\", mode= or replace= (the resource substituted)")
    if expect is not None:
        if not expect.startswith("error: "):
            return fail(f"expect must start with 'error: ', got {expect!r}")
        lines = [l for l in stderr.splitlines() if l.startswith("error: ")]
        if rc != 2 or not any(expect[len("error: "):] in l for l in lines):
            return fail(f"expected exit code 2 and a line {expect!r} on stderr (needs {needs}); error lines: {lines}")
        return Outcome(block.id, cmd.index, text, "checked", f"needs {needs}: {expect}", seconds, installs, cpu)
    if rc != 0:
        return fail("the command failed")
    for want in cmd.options.get("stdout", []):
        if want not in stdout:
            return fail(f"stdout lacks {want!r}")
    if cmd.opt("table") is not None:
        printed, printed_rows = rich_table(stdout)
        documented, documented_rows = markdown_table_after(block.path, block.line)
        if printed != documented:
            return fail(f"the table after the block has header {documented}, the command prints {printed}")
        if [r[0] for r in printed_rows] != [r[0] for r in documented_rows]:
            return fail(f"table rows {[r[0] for r in documented_rows]} != printed {[r[0] for r in printed_rows]}")
    status = "mode" if mode else "run"
    return Outcome(block.id, cmd.index, text, status, f"--{mode}" if mode else "", seconds, installs, cpu)


def run_block(block: Block, workspace: Path, env: dict[str, str]) -> list[Outcome]:
    """The block's commands in order, in one workspace; after a failure the rest are not run (they depend on it)."""
    try:
        commands = block.commands()
    except MarkerError as e:
        return [Outcome(block.id, 0, block.body, "failed", f"marker: {e}")]
    out = []
    for cmd in commands:
        if out and out[-1].status == "failed":
            out.append(Outcome(block.id, cmd.index, cmd.text, "failed", "not run: an earlier command failed"))
            continue
        out.append(run_command(cmd, block, workspace, env))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The fork server: ``python`` on the commands' PATH is a shim that hands its argv, cwd, environment and standard
# streams to a server that imported torch / Lightning / the project once; the server forks, and the child runs
# the script (runpy, as __main__) or ``-m`` module with that argv. Saves ~7-10 s of CPU per command.
# ----------------------------------------------------------------------------------------------------------------

SHIM = """#!{python} -S
import json, os, socket, struct, sys
argv = sys.argv[1:]
forms = ("-m", "-c")
i = 0
while i < len(argv) and argv[i] in ("-u", "-B"):
    i += 1
ok = i < len(argv) and (argv[i] in forms and i + 1 < len(argv) or not argv[i].startswith("-"))
if not ok or os.environ.get("DOC_TEST_FORK") == "0":
    os.execv({python!r}, [{python!r}, *argv])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({sock!r})
payload = json.dumps({{"argv": argv[i:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(s, [struct.pack("!I", len(payload)) + payload], [0, 1, 2])
data = b""
while len(data) < 12:
    chunk = s.recv(12 - len(data))
    if not chunk:
        sys.exit(1)
    data += chunk
code, cpu = struct.unpack("!id", data)
if os.environ.get("DOC_TEST_CPU_LOG"):
    with open(os.environ["DOC_TEST_CPU_LOG"], "a") as f:
        f.write(f"{{cpu}}\\n")
sys.exit(code)
"""


class ForkServer:
    """The server process and the ``python`` shim directory (put first on PATH)."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.sock = str(tmp / "server.sock")
        self.bin = tmp / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        for name in ("python", "python3"):
            shim = self.bin / name
            shim.write_text(SHIM.format(python=sys.executable, sock=self.sock))
            shim.chmod(0o755)
        self.proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", self.sock], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"doc-test fork server did not start: {line}{self.proc.stderr.read()[-3000:]}")

    def cpu_seconds(self) -> float:
        """CPU the server itself used (its imports), from /proc."""
        stat = Path(f"/proc/{self.proc.pid}/stat") if self.proc is not None else None
        if stat is None or not stat.exists():
            return 0.0
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _run_child(request: dict) -> int:
    """In the forked worker: become the requested ``python ...`` process and return its exit code."""
    import atexit
    import runpy
    import traceback

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if "OMP_NUM_THREADS" in os.environ and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        stream = os.fdopen(fd, mode, buffering=1 if mode == "w" else -1, closefd=False, encoding="utf-8",
                           errors="backslashreplace" if fd == 2 else "strict")
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    argv = request["argv"]
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            sys.path[0] = ""
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - the interpreter's own behaviour: traceback, exit 1
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
    return code


def _handle(conn: socket.socket) -> None:
    """In the per-connection process: fork the worker, relay its exit code, kill it if the shim goes away."""
    import select
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    head, fds, _, _ = socket.recv_fds(conn, 4, 3)
    length = struct.unpack("!I", head if len(head) == 4 else head + _recv_exact(conn, 4 - len(head)))[0]
    request = json.loads(_recv_exact(conn, length))
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os._exit(_run_child(request))
    for fd in fds:
        os.close(fd)
    poller = select.poll()
    poller.register(conn, select.POLLIN | select.POLLHUP)
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)  # CPU: the worker and the processes it waited for
            conn.sendall(struct.pack("!id", code if code >= 0 else 128 - code, usage.ru_utime + usage.ru_stime))
            os._exit(0)
        if poller.poll(100):  # the shim never writes after its request: readable means it is gone
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            os._exit(0)


def serve(sock_path: str) -> None:
    """Import PRELOAD, then fork one process per connection (see _handle). Prints ``ready`` when listening."""
    import importlib
    import signal
    import threading

    for name in PRELOAD:  # a speed-up only: what fails to import here is imported (and fails) in the command
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    if threading.active_count() != 1:  # forking a process with threads is unsafe
        raise SystemExit(f"doc-test fork server: {threading.active_count()} threads after the imports")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # reap the per-connection processes
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(32)
    print("ready", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    while True:
        conn, _ = srv.accept()
        if os.fork() == 0:
            srv.close()
            try:
                _handle(conn)
            finally:
                os._exit(1)
        conn.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        sys.path.pop(0)  # not tests/: the worker sets sys.path[0] per command
        sys.path.insert(0, "")
        serve(sys.argv[2])
    else:
        raise SystemExit("usage: python tests/doc_harness.py --serve SOCKET")
