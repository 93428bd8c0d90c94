"""OpenAI response objects: completions, chat completions and their streaming chunks, with
``usage`` and stagedx's own statistics in the ``stagedx`` extension field."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from .metrics import spec_decode

# Generator finish reasons -> OpenAI's: EOS and stop strings are "stop"; the token budget and
# the context limit are "length".
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


@dataclass(frozen=True)
class Reply:
    """What every object of one response shares."""

    chat: bool
    model: str
    id: str
    created: int
    max_tokens_cut: tuple | None = None  # (requested, allowed) when the context cut max_tokens

    def headers(self) -> dict:
        """``X-Stagedx-Max-Tokens-Cut: ALLOWED`` when the context cut the requested max_tokens."""
        return {} if self.max_tokens_cut is None else {"X-Stagedx-Max-Tokens-Cut": str(self.max_tokens_cut[1])}

    def extension(self, result) -> dict:
        ext = stagedx_stats(result)
        if self.max_tokens_cut is not None:
            ext["max_tokens"] = {"requested": self.max_tokens_cut[0], "allowed": self.max_tokens_cut[1]}
        return ext

    @staticmethod
    def new(chat: bool, model: str) -> Reply:
        prefix = "chatcmpl" if chat else "cmpl"
        return Reply(chat, model, f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()))

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, result) -> dict:
        """The non-streaming response for a finished ``GenerationResult``."""
        reason = FINISH[result.finish_reason]
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": reason,
                "logprobs": None,
            }
            body = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": result.text, "finish_reason": reason, "logprobs": None}
            body = self._head("text_completion")
        return {**body, "choices": [choice], "usage": usage(result), "stagedx": self.extension(result)}

    def chunk(self, text: str | None = None, result=None, role: bool = False) -> str:
        """One server-sent event: a text piece, the role opener (chat) or the final chunk
        (``result`` given: finish_reason and stagedx's statistics; ``usage`` comes in its own
        chunk, only when the client asked with ``stream_options.include_usage``, as OpenAI does)."""
        reason = FINISH[result.finish_reason] if result is not None else None
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            body = {
                **self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
            }
        else:
            body = {
                **self._head("text_completion"),
                "choices": [{"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}],
            }
        if result is not None:
            body["stagedx"] = self.extension(result)
        return event(body)

    def usage_chunk(self, result) -> str:
        """``stream_options.include_usage``: the extra last chunk with no choices."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return event({**self._head(obj), "choices": [], "usage": usage(result)})


def event(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


def usage(result) -> dict:
    """OpenAI's token counts, and the decode's speculation figures in ``spec_decode`` (an
    extension; the same quantities as the ``stagedx:spec_decode_*`` counters, for this request)."""
    n = len(result.tokens)
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": n,
        "total_tokens": result.prompt_tokens + n,
        "spec_decode": spec_decode(result.stats),
    }


def stagedx_stats(result) -> dict:
    s = result.stats
    seconds = s.time_s["total"]
    return {
        "strategy": s.strategy,
        "sampling": s.sampling,
        "tokens_per_oracle_call": round(s.tokens_per_oracle_call, 4),
        "oracle_calls": s.oracle_calls,
        "draft_calls": s.draft_calls,
        "rounds": s.rounds,
        "accepted_by_stage": dict(s.accepted_by_stage),
        "finish": result.finish_reason,
        "decode_seconds": round(seconds, 6),
        "tokens_per_second": round(s.new_tokens / seconds, 3) if seconds > 0 else 0.0,
        **({"planner": s.planner.as_dict()} if s.planner is not None else {}),  # strategy auto
    }
