"""What the demo tests share: run a README demo command for real (clips generated into a temporary folder), and read
a demo's table from the README."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(config: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``python evaluate.py --config <config>`` with the clips under tmp_path and no logger: (the process, the
    JSON rows it wrote). Fails unless it exits 0."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "evaluate.py", "--config", config, f"--results={out}",
         f"--data.init_args.cache_dir={tmp_path / 'synthetic'}", "--trainer.logger=false"],
        cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())["runs"]


def readme_table(heading: str, command: str, header: bool = False) -> dict[str, list[str]]:
    """The first table of the README section ``heading`` (which must show ``command``): first cell -> the others
    (the header row too when ``header``, first)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(heading):]
    section = section[:section.index("\n## ", len(heading))] if "\n## " in section[len(heading):] else section
    assert command in section, (heading, command)
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start:]:  # up to the first line that is not a table row
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return {cells[0]: cells[1:] for cells in rows[0 if header else 1:]}


def printed_table(stdout: str) -> dict[str, list[str]]:
    """The last box table rich printed on ``stdout`` as ``readme_table(..., header=True)`` reads a README table:
    first cell -> the others, the header row (┃ ... ┃) first, then the rows (│ ... │)."""
    rows: list[list[str]] = []
    for line in stdout.splitlines():
        if line.startswith("┃"):
            rows = [[cell.strip() for cell in line.strip("┃").split("┃")]]
        elif line.startswith("│") and rows:
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return {cells[0]: cells[1:] for cells in rows}
