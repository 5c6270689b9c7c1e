"""Every fenced shell command and Python snippet of README.md and docs/*.md, run as a user types it.

A command or import that drifts from the code fails here. The harness (tests/doc_harness.py) extracts each
```bash / ```sh / ```console block (one command per line, ``\\`` continuations joined, ``#`` comments dropped) and
each ```python block, and runs it with ``bash -c`` in a temporary workspace: a folder whose evaluate.py, train.py,
configs/, tools/, benchmarks/, tests/ and docs/ link to the repository (README.md and BENCHMARKS.md are copies), so
``outputs/``, ``.cache/`` and every file a command writes stay out of the repository; the commands of one block run
in order in one workspace (the export finds the checkpoint the training wrote). A Python snippet is written to
``snippet_<line>.py`` in the workspace and run as ``python snippet_<line>.py``.

Markers: HTML comment lines directly above the opening fence (invisible on GitHub)::

    <!-- doc-test: args="--data.init_args.num_test=8 --trainer.limit_test_batches=1" -->
    <!-- doc-test 2: needs=data expect="error: checkpoint file not found: /ckpt/x.pth" -->

``doc-test:`` applies to every command of the block; ``doc-test N:`` to command N (1-based) only, overriding the
block's keys. Keys (values in double quotes when they hold spaces; replace / assert / setup / env / stdout repeat):

- ``args="..."``: appended to the command (the small overrides that cut a long run to a batch or two).
- ``needs="data|weights|gpu|network|cluster"`` + ``expect="error: ..."``: the command needs what the test machine
  lacks; it runs WITHOUT it and must exit with code 2 and print a stderr line starting with ``error:`` that contains
  the text of ``expect`` after ``error: ``.
- ``mode="help|print_config"``: run with ``--help`` / ``--print_config`` instead (commands that cannot be cut, e.g.
  a 16-GPU torchrun; give the reason in ``needs``). Exit code 0 required.
- ``launcher=strip``: ``torchrun <options> train.py ...`` runs as ``python train.py ...``.
- ``skip="reason"``: not run at all; counted and printed with its reason.
- ``installs="reason"``: the ``&&`` steps that create a venv, activate it or pip-install are not run (the test runs
  in the installed environment); any other step of the command still runs. An install step without this marker
  fails the test, so nothing is skipped silently.
- ``replace="OLD=>NEW"``: textual substitution before running (placeholders such as ``<files_at>``, or a real
  checkpoint path in a snippet replaced by ``None``).
- ``setup="code"`` / ``assert="expr"`` (Python snippets): a line run before the snippet / an assertion run after it
  (to check the values the snippet's comments state).
- ``env="K=V"``, ``stdout="text"`` (must appear on stdout), ``timeout="S"`` (default 300 s).
- ``table``: the first markdown table after the block must have the header and the row names of the table the
  command prints.

Commands run through a fork server: ``python`` on the commands' PATH is a shim that hands argv, working directory,
environment and standard streams to a process that has imported torch, Lightning and the project once and forks per
command (runpy runs the script or ``-m`` module as ``__main__`` with that argv): the same command line, parse, exit
code and output, without paying ~7-10 s of CPU of imports per command. ``DOC_TEST_FORK=0`` runs every command in
a fresh interpreter instead. ``DOC_TEST_WORKERS`` (default 2) blocks run at once, one torch thread each.
"""
from __future__ import annotations

import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_harness import DOCS, ROOT, ForkServer, Outcome, all_blocks, make_workspace, run_block  # noqa: E402

BLOCKS = all_blocks()
# Floors and ceiling of the counts (lower a floor only when commands really leave the docs).
MIN_RUN, MIN_CHECKED, MAX_SKIPPED = 24, 6, 6
WATCHED = ["", "configs", "configs/strategies", "tools", "docs", "tests"]  # folders a stray output would land in


def _listing() -> dict[str, set[str]]:
    return {d: {p.name for p in (ROOT / d).iterdir()} for d in WATCHED}


@pytest.fixture(scope="module")
def doc_results(request, tmp_path_factory) -> dict[str, list[Outcome]]:
    """Run the selected blocks (all of them when the summary test is selected), WORKERS at a time."""
    names = {item.name for item in request.session.items if item.module is request.module}
    wanted = [b for b in BLOCKS if f"test_doc_block[{b.id}]" in names or "test_doc_commands_counts" in names]
    tmp = tmp_path_factory.mktemp("doc_commands")
    workers = max(1, int(os.environ.get("DOC_TEST_WORKERS", "2")))
    server = ForkServer(tmp / "server")
    env = {**os.environ, "COLUMNS": "200", "OUT": str(tmp / "device_out"), "PYTHONDONTWRITEBYTECODE": "1",
           "PATH": f"{server.bin}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if workers > 1:
        env["OMP_NUM_THREADS"] = "1"
    (tmp / "device_out").mkdir()
    before = _listing()
    fork = os.environ.get("DOC_TEST_FORK", "1") != "0"
    if fork:
        server.start(env)

    def one(block):
        workspace = tmp / block.id.replace("/", "_").replace(":", "_")
        make_workspace(workspace)
        return block.id, run_block(block, workspace, env)

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(workers) as pool:
            results = dict(pool.map(one, wanted))
        server_cpu = server.cpu_seconds() if fork else 0.0
    finally:
        server.stop()
    results["__time__"] = [Outcome("harness", 0, "", "time" if fork else "time-nofork",
                                   f"{time.monotonic() - started:.0f}", cpu=server_cpu)]
    after = _listing()
    new = {d: sorted(n for n in after[d] - before[d] if not n.endswith((".py", ".md"))) for d in WATCHED}
    # (new .py / .md files are sources someone is writing in the same tree, not outputs of the commands)
    results["__stray__"] = [Outcome("repository", 0, "", "failed", f"new in {d or '.'}/: {names}")
                            for d, names in new.items() if names]
    return results


def _report(outcomes: list[Outcome]) -> str:
    return "\n".join(f"  [{o.status}] {o.block} #{o.index} ({o.seconds:.0f} s): {o.command[:160]}"
                     + (f"\n      {o.detail[:200]}" if o.detail and o.status != "failed" else "") for o in outcomes)


@pytest.mark.parametrize("block_id", [b.id for b in BLOCKS])
def test_doc_block(block_id, doc_results):
    """Each command of the block runs (exit 0), or shows the documented message and exit 2 without its resources."""
    outcomes = doc_results[block_id]
    print(_report(outcomes))
    failed = [o for o in outcomes if o.status == "failed"]
    assert not failed, "\n\n".join(f"{o.block} command {o.index}: {o.command}\n{o.detail}" for o in failed)
    assert outcomes, f"{block_id}: no command found in the block"


def test_doc_commands_counts(doc_results):
    """Counts of run / checked / skipped commands (printed), so the harness cannot silently drop to nothing; nothing
    written into the repository."""
    outcomes = [o for k, v in doc_results.items() if not k.startswith("__") for o in v]
    by = {s: [o for o in outcomes if o.status == s] for s in ("run", "checked", "mode", "skipped", "failed")}
    installs = sum(o.installs_skipped for o in outcomes)
    timing = doc_results["__time__"][0]
    cpu = (f"{sum(o.cpu for o in outcomes):.0f} s CPU in the commands + {timing.cpu:.0f} s in the fork server's "
           "imports" if timing.status == "time" else "CPU not measured without the fork server")
    print(f"\ndoc commands: {len(by['run'])} run, {len(by['checked'])} checked for their documented message, "
          f"{len(by['mode'])} checked by --help / --print_config, {len(by['skipped'])} skipped, "
          f"{installs} install steps not run, {len(by['failed'])} failed; {timing.detail} s wall, {cpu}")
    for o in sorted(outcomes, key=lambda o: -o.cpu)[:8]:
        print(f"  {o.cpu:5.1f} s CPU {o.seconds:5.1f} s wall  {o.block} #{o.index}")
    for o in by["skipped"]:
        print(f"  skipped {o.block} #{o.index}: {o.detail}")
    stray = doc_results["__stray__"]
    assert not stray, stray[0].detail
    assert len(by["run"]) >= MIN_RUN
    assert len(by["checked"]) >= MIN_CHECKED
    assert len(by["skipped"]) <= MAX_SKIPPED
    assert all(o.detail and o.detail != "no reason given" for o in by["skipped"])
    assert len(BLOCKS) == len(doc_results) - 2, "every block of the docs is run"


# ------------------------------------------------------------------------------------------------------------------
# Static checks of what the docs and config comments name outside fenced blocks (inline `python ...` spans)
# ------------------------------------------------------------------------------------------------------------------

def _config_exists(value: str) -> bool:
    """As vidtldr_pl.cli.find_config: the path itself, else a shipped config by relative path or by name."""
    path = Path(value)
    if (ROOT / path).exists() or path.is_absolute() or value.startswith("my") or "<" in value:
        return True  # absolute / placeholder paths are the user's files
    shipped = ROOT / "configs"
    relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) and len(path.parts) > 1 else path
    return (shipped / relative).is_file() or (shipped / path.name).is_file()


def _named_things() -> list[tuple[str, str, str]]:
    """(where, kind, name) for every script, module and config named by a `python ...` span of the docs or a
    command line in a config comment."""
    sources: list[tuple[str, str]] = []
    for rel in DOCS:
        for n, line in enumerate((ROOT / rel).read_text().split("\n"), 1):
            sources += [(f"{rel}:{n}", span) for span in re.findall(r"`(python3? [^`]+)`", line)]
            paths = re.findall(r"`((?:tools|benchmarks|tests)/[\w/]+\.py)", line)
            sources += [(f"{rel}:{n}", path) for path in paths]
    for cfg in sorted((ROOT / "configs").rglob("*.yaml")):
        for n, line in enumerate(cfg.read_text().split("\n"), 1):
            if line.lstrip().startswith("#"):
                where = f"{cfg.relative_to(ROOT)}:{n}"
                sources += [(where, m) for m in re.findall(r"(python3? \S+.*)", line)]
                sources += [(where, m) for m in re.findall(r"((?:tools|benchmarks|tests)/[\w/]+\.py)", line)]
    out = []
    for where, text in dict.fromkeys(sources):
        words = text.split()
        if words[0].startswith("python"):
            words = words[1:]
            if words[:1] == ["-m"] and len(words) > 1:
                out.append((where, "module", words[1]))
            elif words and words[0].endswith(".py"):
                out.append((where, "file", words[0]))
            out += [(where, "config", words[i + 1].split("=")[-1]) for i, w in enumerate(words[:-1]) if w == "--config"]
            out += [(where, "config", w.split("=", 1)[1]) for w in words if w.startswith("--config=")]
        else:
            out.append((where, "file", text))
    return out


def test_named_scripts_modules_and_configs_exist():
    """`python x.py`, `python -m mod`, `--config c.yaml` and tools/... paths named in the docs and in config
    comments exist (the fenced commands are run by test_doc_block; this covers the inline ones)."""
    import importlib.util

    missing = []
    named = _named_things()
    for where, kind, name in named:
        if kind == "file" and not (ROOT / name).is_file():
            missing.append(f"{where}: {name} does not exist")
        elif kind == "module" and name not in ("venv", "pip", "pytest") and importlib.util.find_spec(name) is None:
            missing.append(f"{where}: no module {name}")
        elif kind == "config" and not _config_exists(name):
            missing.append(f"{where}: no config {name}")
    assert len(named) > 40, f"found only {len(named)} names: the extraction broke"
    assert not missing, "\n".join(missing)


def test_repository_paths_and_links_in_the_docs_exist():
    """Every `path` in the docs that starts at a folder of the repository (vidtldr_pl/, configs/, tools/, tests/,
    ...) and every relative markdown link exists."""
    tops = {"vidtldr_pl", "data_modules", "configs", "tools", "benchmarks", "tests", "docs", ".ci"}  # tracked
    missing, checked = [], 0
    for rel in DOCS:
        for n, line in enumerate((ROOT / rel).read_text().split("\n"), 1):
            for span in re.findall(r"`([^`]+)`", line):
                for token in re.findall(r"[\w.\-/]+", span):
                    parts = token.rstrip(".,:;").split("/")
                    if len(parts) > 1 and parts[0] in tops and "*" not in token:
                        checked += 1
                        if not (ROOT / token.rstrip(".,:;")).exists():
                            missing.append(f"{rel}:{n}: {token}")
            for link in re.findall(r"\]\(([^)#\s]+)", line):
                if not link.startswith(("http://", "https://", "mailto:")):
                    checked += 1
                    if not ((ROOT / rel).parent / link).exists():
                        missing.append(f"{rel}:{n}: link {link}")
    assert checked > 50, f"only {checked} paths found: the extraction broke"
    assert not missing, "\n".join(missing)


def test_dotted_names_in_the_docs_resolve():
    """Every `vidtldr_pl.x.y.Name` the docs name (prose, inline code, YAML class_path) imports and resolves."""
    import importlib

    names: dict[str, str] = {}
    for rel in DOCS:
        for n, line in enumerate((ROOT / rel).read_text().split("\n"), 1):
            for name in re.findall(r"\bvidtldr_pl(?:\.\w+)+", line):
                names.setdefault(name.rstrip("."), f"{rel}:{n}")
    broken = []
    for name, where in names.items():
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError as e:
                broken.append(f"{where}: {name}: {e}")
            break
        else:
            broken.append(f"{where}: {name}: no such module")
    assert len(names) > 20, f"only {len(names)} names found: the extraction broke"
    assert not broken, "\n".join(broken)


def test_harness_fails_drift_and_checks_messages(tmp_path):
    """The harness itself (plain interpreters, no fork server): a failing command is a failure, a ``needs`` command
    must print its documented line and exit 2, an unmarked install step is refused, a later command of a block is
    not run after a failure, and continuation lines are joined."""
    from doc_harness import Block, parse_marker, shell_lines

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    says = "python -c 'import sys; print(\"error: data root /data is not a folder\", file=sys.stderr); sys.exit(2)'"

    def run(body: str, marker: str = "") -> list:
        return run_block(Block("README.md", 1, "bash", body, parse_marker(marker, "test")), tmp_path, env)

    assert shell_lines("# comment\npython a.py \\\n    --x=1\n\npython b.py") == ["python a.py --x=1", "python b.py"]
    drift, after = run("python -c 'import vidtldr_pl.no_such_module'\npython -c 'print(1)'")
    assert drift.status == "failed" and "ModuleNotFoundError" in drift.detail
    assert after.status == "failed" and "not run" in after.detail
    assert run(says, 'needs=data expect="error: data root /data"')[0].status == "checked"
    assert run(says, 'needs=data expect="error: checkpoint file not found"')[0].status == "failed"
    assert run(says)[0].status == "failed"  # exit 2 without a needs marker
    assert run("python -c 'import sys; sys.exit(2)'", 'needs=data expect="error: data root"')[0].status == "failed"
    refused = run("pip install nothing && python -c 'print(1)'")[0]
    assert refused.status == "failed" and "installs=" in refused.detail
    ran = run("pip install nothing && python -c 'print(1)'", 'installs="test" stdout=1')[0]
    assert ran.status == "run" and ran.installs_skipped == 1
