"""Structured-output benchmark: constrained baseline vs constrained staged decoding.

    python -m stagedx.bench.structured BUNDLE --out DIR [--sampling greedy,topk:50]

For each JSON schema of a small fixed set and each prompt (rendered through the bundle's chat
template when it has one), one constrained decode per method and sampling mode. Reported per
(sampling, method): tokens/s and speedup over the constrained baseline, tokens per oracle
call, the share of tokens the grammar forced (accepted from the ``grammar`` stage), mask cost
(grammar engine seconds per generated token, and per mask) and the share of outputs that
parse and validate against their schema (``jsonschema`` when installed, else parse only).
Time it under a quiet machine: ``/work/quiet.sh`` in this project.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import StagedxError

SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "email": {"type": "string", "maxLength": 32},
            "languages": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
            "employed": {"type": "boolean"},
        },
        "required": ["name", "age", "email", "languages", "employed"],
        "additionalProperties": False,
    },
    "file": {
        "type": "object",
        "properties": {
            "path": {"type": "string", "maxLength": 32},
            "size_bytes": {"type": "integer", "minimum": 0, "maximum": 1000000000000},
            "kind": {"enum": ["file", "directory", "symlink"]},
            "permissions": {"type": "string", "pattern": "^[r-][w-][x-]{1}$"},
        },
        "required": ["path", "size_bytes", "kind", "permissions"],
        "additionalProperties": False,
    },
    "tool_call": {
        "type": "object",
        "properties": {
            "function": {"enum": ["get_weather", "search_web", "send_email"]},
            "arguments": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "maxLength": 40},
                    "city": {"type": "string", "maxLength": 20},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["query", "city", "unit"],
                "additionalProperties": False,
            },
        },
        "required": ["function", "arguments"],
        "additionalProperties": False,
    },
    "todo_list": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 16},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "task": {"type": "string", "maxLength": 16},
                        "done": {"type": "boolean"},
                        "priority": {"enum": ["low", "medium", "high"]},
                    },
                    "required": ["task", "done", "priority"],
                    "additionalProperties": False,
                },
                "minItems": 1,
                "maxItems": 3,
            },
        },
        "required": ["title", "items"],
        "additionalProperties": False,
    },
}
PROMPTS = {
    "person": ["Describe a software engineer named Ada as JSON.", "Give a JSON record for a retired teacher."],
    "file": ["Describe the file /etc/hosts as JSON.", "Describe your home directory as JSON."],
    "tool_call": ["What is the weather in Paris? Answer with a tool call.", "Search the web for pasta recipes."],
    "todo_list": ["Make a todo list for moving house.", "Plan a birthday party as a todo list."],
}
METHODS = ("baseline", "staged")


def _validator():
    try:
        import jsonschema
    except ImportError:  # the bench still runs: validity then means "parses as JSON"
        return lambda doc, schema: None
    return jsonschema.validate


def _prompt_text(gen, text: str) -> str:
    from ..serve.chat import template_for

    template = template_for(gen.manifest, gen.tokenizer)
    if template is None:
        return text + "\n"
    return template.render([{"role": "user", "content": text}])


def run(bundle: str, samplings: list, max_new_tokens: int, threads: int | None, seed: int = 0) -> dict:
    from ..runtime import Generator
    from ..runtime.constraint import Constraint

    validate = _validator()
    rows = []
    with Generator(bundle, device="cpu", threads=threads) as gen:
        gen.generate("warm up", max_new_tokens=8, constraint=Constraint.json_object(), strategy="staged")
        for sampling in samplings:
            for name, schema in SCHEMAS.items():
                c = Constraint.json_schema(schema)
                for i, text in enumerate(PROMPTS[name]):
                    prompt = _prompt_text(gen, text)
                    for method in METHODS:
                        t0 = time.perf_counter()
                        res = gen.generate(
                            prompt, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed + i,
                            strategy=method, constraint=c,
                        )  # fmt: skip
                        wall = time.perf_counter() - t0
                        valid = res.finish_reason == "eos"
                        try:
                            validate(json.loads(res.text), schema)
                        except Exception:  # noqa: BLE001 - any failure means invalid
                            valid = False
                        s = res.stats
                        rows.append(
                            {
                                "sampling": sampling, "schema": name, "prompt": i, "method": method,
                                "wall_s": wall, "new_tokens": s.new_tokens, "oracle_calls": s.oracle_calls,
                                "forced": s.accepted_by_stage.get("grammar", 0), "grammar_s": s.time_s["grammar"],
                                "masks": s.grammar_masks, "valid": valid, "finish": res.finish_reason,
                                "accepted_by_stage": dict(s.accepted_by_stage), "text": res.text,
                            }
                        )  # fmt: skip
        info = {"bundle": str(bundle), "device": gen.device, "threads": gen.threads, "vocab": gen.vocab}
    return {"info": info, "max_new_tokens": max_new_tokens, "rows": rows, "summary": summarise(rows)}


def summarise(rows: list) -> list:
    out = []
    for sampling in dict.fromkeys(r["sampling"] for r in rows):
        base_tps = None
        for method in METHODS:
            rs = [r for r in rows if r["sampling"] == sampling and r["method"] == method]
            toks = sum(r["new_tokens"] for r in rs)
            wall = sum(r["wall_s"] for r in rs)
            tps = toks / max(wall, 1e-9)
            base_tps = tps if method == "baseline" else base_tps
            masks = sum(r["masks"] for r in rs)
            grammar_s = sum(r["grammar_s"] for r in rs)
            out.append(
                {
                    "sampling": sampling,
                    "method": method,
                    "runs": len(rs),
                    "tokens": toks,
                    "tokens_per_s": tps,
                    "speedup": tps / base_tps if base_tps else None,
                    "tokens_per_oracle_call": toks / max(1, sum(r["oracle_calls"] for r in rs)),
                    "forced_share": sum(r["forced"] for r in rs) / max(1, toks),
                    "grammar_us_per_token": 1e6 * grammar_s / max(1, toks),
                    "grammar_us_per_mask": 1e6 * grammar_s / max(1, masks),
                    "valid_share": sum(r["valid"] for r in rs) / max(1, len(rs)),
                }
            )
    return out


def table(summary: list) -> str:
    lines = [
        "| sampling | method | runs | tokens | tok/s | speedup | tokens/oracle call | forced share "
        "| grammar us/token | us/mask | valid |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {r['sampling']} | {r['method']} | {r['runs']} | {r['tokens']} | {r['tokens_per_s']:.1f} "
            f"| x{r['speedup']:.2f} | {r['tokens_per_oracle_call']:.2f} | {100 * r['forced_share']:.0f}% "
            f"| {r['grammar_us_per_token']:.0f} | {r['grammar_us_per_mask']:.0f} | {100 * r['valid_share']:.0f}% |"
        )
    return "\n".join(lines)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stagedx.bench.structured", description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--out", required=True, help="folder for results.json and summary.md")
    ap.add_argument("--sampling", default="greedy,topk:50", help="comma-separated sampling modes")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        if args.max_new_tokens < 1:
            raise StagedxError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        result = run(
            args.bundle, [s.strip() for s in args.sampling.split(",") if s.strip()], args.max_new_tokens, args.threads
        )
    except StagedxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    text = table(result["summary"])
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
