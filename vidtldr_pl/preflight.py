"""What evaluate.py / train.py check before the heavy imports (torch, Lightning), so that a usage error costs well
under 2 s of CPU and prints one ``error:`` line with exit code 2:

- ``--config`` files: found as given or among the shipped configs (``find_config``), readable, valid YAML (the
  file, line and column named);
- top-level keys of the configs and of ``--key.sub=value`` options, with a "did you mean" for a typo;
- the inputs a run needs, all reported at once: the data root, the model checkpoint, the resume checkpoint
  (``--ckpt_path``), a tokenizer given as a path, and the optional extra a model family needs (ViFi-CLIP:
  ``vidtldr-pl[vificlip]``; a DeepSpeed strategy: ``vidtldr-pl[deepspeed]``).

Deeper keys (a model or Trainer option) are checked by the parser itself; ``parser_error_line`` turns its
multi-line report into one line with a "did you mean". Stdlib and PyYAML only.
"""
from __future__ import annotations

import difflib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .cli_help import HELP_ALL_FLAG, HELP_FLAGS, config_dir
from .errors import UsageError
TOP_LEVEL_KEYS = ("model", "data", "trainer", "seed_everything", "compare", "split", "results", "ckpt_path", "merge",
                  "optimizer", "lr_scheduler", "config", "print_config")
FLAGS = (*HELP_FLAGS, HELP_ALL_FLAG)
CHECKPOINT_HINT = (
    "official fine-tuned UMT checkpoints are linked from the UMT / vid-TLDR repositories' MODEL_ZOO; pass the file "
    "with --model.init_args.checkpoint=/path/to/file.pth"
)
# model name prefix -> where its fine-tuned checkpoints come from
CHECKPOINT_HINTS = {
    "umt": CHECKPOINT_HINT,
    "videomae": "fine-tuned VideoMAE checkpoints are linked from MCG-NJU/VideoMAE's MODEL_ZOO.md (original layout) "
                "or on the HF hub (MCG-NJU/videomae-*-finetuned-*); pass the file with --model.init_args.checkpoint=PATH",
}


def checkpoint_hint(model: object) -> str:
    """Where the checkpoints of the named model come from (a generic line for other models)."""
    name = model if isinstance(model, str) else ""
    return next((h for prefix, h in CHECKPOINT_HINTS.items() if name.startswith(prefix)),
                "pass the file with --model.init_args.checkpoint=PATH")


# model name prefix -> (module it needs, the extra that installs it)
EXTRAS = {"vificlip": ("open_clip", "vificlip")}


def did_you_mean(word: str, choices: list[str] | tuple[str, ...], cutoff: float = 0.6) -> str:
    """`` (did you mean X?)`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]}?)" if close else ""


def find_config(value: str) -> Path:
    """A config file as given; else a shipped one, by relative path (``strategies/ddp.yaml`` or
    ``configs/strategies/ddp.yaml``) or by name (``msrvtt_umt.yaml``). A missing file: UsageError."""
    path = Path(value)
    if path.exists():
        return path
    shipped = config_dir()
    names = sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*.yaml"))
    if not path.is_absolute():
        relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) and len(path.parts) > 1 else path
        for candidate in (shipped / relative, shipped / path.name):
            if candidate.is_file():
                return candidate
    hint = did_you_mean(path.name, names, cutoff=0.8)
    raise UsageError(f"config file not found: {value}{hint}; `python evaluate.py --help` lists the "
                     f"{len(names)} shipped configs")


def resolve_config_args(argv: list[str]) -> list[str]:
    """Let ``--config msrvtt_umt.yaml`` find the shipped configs/msrvtt_umt.yaml from any directory and from an
    installed (non-editable) package; a missing file: UsageError."""
    out = list(argv)
    for i, arg in enumerate(out):
        value = None
        if arg == "--config" and i + 1 < len(out):
            value, pos = out[i + 1], i + 1
        elif arg.startswith("--config="):
            value, pos = arg.split("=", 1)[1], i
        if value is None:
            continue
        path = find_config(value)
        out[pos] = str(path) if arg == "--config" else f"--config={path}"
    return out


@dataclass
class Options:
    """The merged view of the configs and command-line options, for checks (not for running)."""

    values: dict[str, Any] = field(default_factory=dict)  # nested, later files / options win
    origin: dict[str, str] = field(default_factory=dict)  # dotted key -> where it was set ("file.yaml", "--x")

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.values
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def where(self, dotted: str) -> str:
        return self.origin.get(dotted, f"--{dotted}")


def _merge(into: dict, new: dict, origin: dict[str, str], source: str, prefix: str = "") -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            if "class_path" in value and value.get("class_path") != into[key].get("class_path"):
                into[key] = {}  # another class: its init_args start afresh (as jsonargparse does)
            _merge(into[key], value, origin, source, dotted + ".")
        else:
            into[key] = value
            origin[dotted] = source
            if isinstance(value, dict):
                _mark(value, origin, source, dotted + ".")


def _mark(node: dict, origin: dict[str, str], source: str, prefix: str) -> None:
    for key, value in node.items():
        origin[f"{prefix}{key}"] = source
        if isinstance(value, dict):
            _mark(value, origin, source, f"{prefix}{key}.")


def _load_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"config file {path}: cannot read it ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"config file {path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path}: expected a mapping of keys (model, data, trainer, ...), "
                         f"got {type(data).__name__}")
    return data


def _value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def gather(argv: list[str]) -> Options:
    """Read the ``--config`` files and ``--key=value`` options of argv (configs already resolved)."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg in FLAGS:
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is not None and not nxt.startswith("--"):
                value, i = nxt, i + 1
            else:
                value = "true"
        i += 1
        if key == "config":
            path = Path(value)
            data = _load_yaml(path)
            for top in data:
                if top not in TOP_LEVEL_KEYS:
                    raise UsageError(f"config file {path}: unknown key {top!r}{did_you_mean(top, TOP_LEVEL_KEYS)}; "
                                     f"the top-level keys are {', '.join(TOP_LEVEL_KEYS[:-2])}")
            _merge(opts.values, data, opts.origin, str(path))
            continue
        top = key.split(".", 1)[0]
        if top not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(top, TOP_LEVEL_KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean --{close[0]}{key[len(top):]}?)" if close else ""
            raise UsageError(f"unknown option --{key}{hint}; the options start with "
                             f"{', '.join('--' + k for k in TOP_LEVEL_KEYS[:-2])}")
        node = {}
        cursor = node
        parts = key.split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = _value(value)
        _merge(opts.values, node, opts.origin, f"--{key}")
    return opts


def _is_path_like(value: str) -> bool:
    return "/" in value or value.startswith(".") or Path(value).suffix in {".pth", ".pt", ".bin", ".ckpt",
                                                                           ".safetensors", ".txt", ".csv", ".json"}


def missing_inputs(opts: Options, stage: str) -> list[str]:
    """Every input of the run that is not there, one phrase each."""
    problems: list[str] = []
    root = opts.get("data.init_args.data_root")
    if isinstance(root, str) and root and not Path(root).expanduser().is_dir():
        problems.append(f"data root {root} ({opts.where('data.init_args.data_root')}) is not a folder; pass "
                        "--data.init_args.data_root=/path/to/benchmark")
    ckpt = opts.get("model.init_args.checkpoint")
    if isinstance(ckpt, str) and ckpt and not ckpt.startswith("builtin:") and not Path(ckpt).expanduser().is_file():
        problems.append(f"checkpoint file not found: {ckpt} ({opts.where('model.init_args.checkpoint')}; "
                        f"{checkpoint_hint(opts.get('model.init_args.model'))})")
    resume = opts.get("ckpt_path")
    if stage == "fit" and isinstance(resume, str) and resume not in ("last", "best", "hpc", "registry") \
            and not Path(resume).expanduser().is_file():
        problems.append(f"--ckpt_path {resume}: no such checkpoint file")
    tokenizer = opts.get("data.init_args.tokenizer")
    if isinstance(tokenizer, str) and _is_path_like(tokenizer) and not Path(tokenizer).expanduser().exists():
        problems.append(f"tokenizer path not found: {tokenizer} ({opts.where('data.init_args.tokenizer')})")
    return problems


def missing_extras(opts: Options) -> list[str]:
    """The optional extras this run needs that are not installed."""
    needed: list[str] = []
    model = opts.get("model.init_args.model")
    if isinstance(model, str):
        for prefix, (module, extra) in EXTRAS.items():
            if model.startswith(prefix) and importlib.util.find_spec(module) is None:
                needed.append(f"model {model} needs the {extra} extra ({module} is not installed): "
                              f"pip install 'vidtldr-pl[{extra}]'")
    strategy = opts.get("trainer.strategy")
    name = strategy.get("class_path", "") if isinstance(strategy, dict) else strategy
    if isinstance(name, str) and "deepspeed" in name.lower() and importlib.util.find_spec("deepspeed") is None:
        needed.append("the DeepSpeed strategy needs the deepspeed extra: pip install 'vidtldr-pl[deepspeed]'")
    return needed


def check(argv: list[str], stage: str) -> list[str]:
    """Resolve shipped config names and check argv (see the module docstring); returns the resolved argv.
    Raises UsageError with one line naming every problem found."""
    argv = resolve_config_args(argv)
    if any(a in FLAGS for a in argv):
        return argv
    opts = gather(argv)
    if any(a.startswith("--print_config") for a in argv):  # shows the resolved config; runs nothing
        return argv
    problems = missing_extras(opts) + missing_inputs(opts, stage)
    if len(problems) == 1:
        raise UsageError(problems[0])
    if problems:
        raise UsageError(f"{len(problems)} problems: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))
    return argv


# ------------------------------------------------------------------ the parser's own errors, as one line
_NOT_ACCEPTED = re.compile(r"class_path '([\w.]+)':\s*Option '([\w.]+)' is not accepted")
_PARSER_KEY = re.compile(r'Parser key "([\w.]+)":\s*(.*)')
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.+)")
_CLASS_UNRECOGNIZED = re.compile(r"class_path '([\w.]+)':\s*unrecognized arguments: --([\w]+)[\w.]*")


def _accepted(class_path: str) -> list[str]:
    import inspect
    from importlib import import_module

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(import_module(module), name)
    except (ImportError, AttributeError):
        return []
    names: list[str] = []
    for klass in getattr(cls, "__mro__", [cls]):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def parser_error_line(message: str) -> str:
    """One line for a jsonargparse / argparse error: the option, what is wrong, and a "did you mean"."""
    text = str(message)
    top = re.match(r'Parser key "(\w+)"', text)
    group = top.group(1) if top else None
    # an option the class does not take: given whole, or nested (--model.init_args.<option>.<key>=...)
    found = _NOT_ACCEPTED.search(text) or _CLASS_UNRECOGNIZED.search(text)
    if found:
        class_path, option = found.groups()
        where = f"--{group}.init_args.{option}" if group else option
        return f"{where}: not an option of {class_path}{did_you_mean(option, _accepted(class_path))}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    inner = [m for m in (_PARSER_KEY.match(line) for line in lines) if m]
    if inner:
        key = inner[-1].group(1)
        index = lines.index(inner[-1].group(0))
        detail = inner[-1].group(2) or (lines[index + 1] if index + 1 < len(lines) else "invalid value")
        prefix = f"--{group}.init_args.{key}" if group and key != group else f"--{key}"
        return f"{prefix}: {detail.rstrip(':')}"
    unknown = _UNRECOGNIZED.search(text)
    if unknown:
        return f"unrecognized option(s): {unknown.group(1)}"
    for line in lines:
        if "Expected" in line or "not accepted" in line or "not expected" in line or "Unable" in line:
            return line
    return lines[0] if lines else "invalid command line"


__all__ = ["check", "did_you_mean", "find_config", "gather", "missing_inputs",
           "parser_error_line", "resolve_config_args"]
