"""Request bodies of the OpenAI API, parsed and validated into frozen dataclasses.

Every problem becomes an :class:`ApiError` with an OpenAI-style JSON body
(``{"error": {"message", "type", "param", "code"}}``): 400 for a body that is not a JSON
object (too deeply nested included) or that holds a field the endpoint does not know (as
OpenAI's API answers ``Unrecognized request argument supplied``: a typo such as
``temprature`` must not pass silently), 422 for a well-formed body with a wrong type, range or
unsupported option, 404 for an unknown model. Options OpenAI defines that batch-size-1
decoding does not offer (``n``, penalties, ``logprobs``, tools, ...) are accepted only at their
neutral value; ``user`` is accepted and ignored. Structured output: ``response_format``
(``text``, ``json_object``, ``json_schema``) and the extension fields ``regex`` and ``grammar``
(llguidance's Lark dialect), at most one of them; a schema, regex or grammar that does not
compile is a 400.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..errors import StagedxError
from ..runtime.constraint import Constraint
from ..runtime.request import DecodeOptions
from ..runtime.sampling import SamplingConfig

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# Options that change the response in ways batch-size-1 decoding does not offer: refused
# unless they hold their neutral value.
UNSUPPORTED = {
    "n": 1,
    "best_of": 1,
    "echo": False,
    "logprobs": None,
    "top_logprobs": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": None,
    "suffix": None,
    "tools": None,
    "functions": None,
}
CONSTRAINT_FIELDS = ("response_format", "regex", "grammar")
SHARED_FIELDS = frozenset(
    {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream", "stream_options", "stop", "user"}
    | set(UNSUPPORTED)
    | set(CONSTRAINT_FIELDS)
)
COMPLETION_FIELDS = SHARED_FIELDS | {"prompt"}
CHAT_FIELDS = SHARED_FIELDS | {"messages", "max_completion_tokens", "tool_choice", "parallel_tool_calls"}


class ApiError(Exception):
    """An HTTP error the client sees as OpenAI-style JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def invalid(param: str, message: str) -> ApiError:
    return ApiError(422, f"{param}: {message}", param=param, code="invalid_value")


@dataclass(frozen=True)
class Limits:
    """What the loaded bundle allows."""

    model: str  # the name /v1/models lists
    context: int  # prompt + completion tokens
    vocab: int


@dataclass(frozen=True)
class DecodeParams:
    """One completion request, whatever the endpoint."""

    prompt: object  # str, or a tuple of token ids
    max_tokens: int | None  # None: the rest of the context
    sampling: SamplingConfig
    seed: int | None
    stop: tuple
    stream: bool
    include_usage: bool
    constraint: Constraint | None = None  # response_format / regex / grammar

    def options(self, max_tokens: int) -> DecodeOptions:
        """The Generator's options for this request, ``max_tokens`` resolved by the caller."""
        try:
            return DecodeOptions(max_tokens, self.sampling, self.seed, self.stop, constraint=self.constraint)
        except StagedxError as exc:
            raise ApiError(400, str(exc)) from None


@dataclass(frozen=True)
class ChatParams:
    messages: tuple  # of {"role": str, "content": str}
    decode: DecodeParams


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def completion_params(body: dict, limits: Limits) -> DecodeParams:
    _check_fields(body, COMPLETION_FIELDS)
    _check_model(body, limits)
    if "prompt" not in body:
        raise invalid("prompt", "required")
    return _decode_params(body, limits, _prompt(body["prompt"], limits), COMPLETION_DEFAULT_MAX_TOKENS)


def chat_params(body: dict, limits: Limits) -> ChatParams:
    _check_fields(body, CHAT_FIELDS)
    _check_model(body, limits)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "a non-empty array of {role, content} objects is required")
    parsed = tuple(_message(i, m) for i, m in enumerate(messages))
    if body.get("max_completion_tokens") is not None and body.get("max_tokens") is None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    return ChatParams(parsed, _decode_params(body, limits, None, None))


def _check_fields(body: dict, known: frozenset) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(
            400,
            f"Unrecognized request argument supplied: {', '.join(unknown)}",
            param=unknown[0],
            code="unknown_parameter",
        )


def _check_model(body: dict, limits: Limits) -> None:
    model = body.get("model")
    if model is None:
        raise invalid("model", "required")
    if not isinstance(model, str):
        raise invalid("model", "must be a string")
    if model != limits.model:
        raise ApiError(
            404,
            f"the model {model!r} does not exist; this server serves {limits.model!r}",
            param="model",
            code="model_not_found",
        )


def _decode_params(body: dict, limits: Limits, prompt, default_max: int | None) -> DecodeParams:
    for name, neutral in UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and value != neutral and value != {} and value != []:
            raise invalid(name, f"not supported by this server (batch size 1; only {neutral!r})")
    max_tokens = _int(body, "max_tokens", default_max, 1, limits.context)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise invalid("top_p", "must be > 0")
    top_k = _int(body, "top_k", 0, 0, limits.vocab)
    seed = _int(body, "seed", None, 0, MAX_SEED)
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("stream_options", "must be an object")
    include_usage = bool((options or {}).get("include_usage", False))
    if temperature == 0.0:
        sampling = SamplingConfig()
    else:
        sampling = SamplingConfig("sample", temperature, top_k=top_k, top_p=top_p)
    stop = _stop(body.get("stop"))
    return DecodeParams(prompt, max_tokens, sampling, seed, stop, stream, include_usage, _constraint(body))


def _constraint(body: dict) -> Constraint | None:
    """``response_format`` (OpenAI's shape) or one of the ``regex`` / ``grammar`` extensions."""
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
            raise invalid("response_format", "must be an object whose type is text, json_object or json_schema")
        if fmt["type"] == "text":
            fmt = None
    given = [
        name
        for name, v in (("response_format", fmt), *((n, body.get(n)) for n in CONSTRAINT_FIELDS[1:]))
        if v is not None
    ]
    if len(given) > 1:
        raise invalid(given[1], f"give at most one of response_format, regex and grammar (got {', '.join(given)})")
    if not given:
        return None
    name = given[0]
    if name == "response_format":
        if fmt["type"] == "json_object":
            build, arg = Constraint.json_object, ()
        else:
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise invalid("response_format", "json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}")
            build, arg = Constraint.json_schema, (schema,)
    else:
        if not isinstance(body[name], str) or not body[name]:
            raise invalid(name, "must be a non-empty string")
        build, arg = (Constraint.regex if name == "regex" else Constraint.grammar), (body[name],)
    try:
        return build(*arg)
    except StagedxError as exc:
        raise ApiError(
            400, str(exc), param=name, code="invalid_" + ("schema" if name == "response_format" else name)
        ) from None


def _prompt(value, limits: Limits):
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one
    if isinstance(value, str):
        if not value:
            raise invalid("prompt", "must not be empty")
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        if min(value) < 0 or max(value) >= limits.vocab:
            raise invalid("prompt", f"token ids must lie in [0, {limits.vocab})")
        return tuple(value)
    if isinstance(value, list) and len(value) > 1:
        raise invalid("prompt", "one prompt per request: this server decodes with batch size 1")
    raise invalid("prompt", "must be a non-empty string or a non-empty array of token ids")


def _message(i: int, m) -> dict:
    param = f"messages[{i}]"
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise invalid(param, "must be an object with a string 'role'")
    content = m.get("content")
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise invalid(f"{param}.content", "only text content parts are supported")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise invalid(f"{param}.content", "must be a string or an array of text parts")
    return {"role": m["role"], "content": content}


def _stop(value) -> tuple:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid("stop", "must be a string or an array of strings")
    if len(items) > MAX_STOP:
        raise invalid("stop", f"at most {MAX_STOP} sequences")
    if any(len(s) > MAX_STOP_CHARS for s in items):
        raise invalid("stop", f"each sequence at most {MAX_STOP_CHARS} characters")
    if any(not s for s in items):
        raise invalid("stop", "stop strings must not be empty")
    return tuple(items)


def _int(body: dict, name: str, default, lo: int, hi: int):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(name, "must be an integer")
    if not lo <= value <= hi:
        raise invalid(name, f"must lie in [{lo}, {hi}], got {value}")
    return value


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise invalid(name, "must be a number")
    if not lo <= value <= hi:
        raise invalid(name, f"must lie in [{lo:g}, {hi:g}], got {value:g}")
    return float(value)


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name, "must be true or false")
    return value
