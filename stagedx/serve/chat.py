"""Chat templates: the Jinja2 template a Hugging Face tokenizer carries (``chat_template`` in
its tokenizer_config.json, copied into the bundle's manifest at export), rendered in a
sandbox exactly as ``transformers``' ``apply_chat_template`` does (trim_blocks,
lstrip_blocks, ``raise_exception``, ``add_generation_prompt``)."""

from __future__ import annotations

from .schemas import ApiError


class ChatTemplate:
    def __init__(self, source: str, bos_token: str, eos_token: str):
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ApiError(422, f"messages: the chat template refused them: {message}", param="messages")

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = raise_exception
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            from ..errors import StagedxError

            raise StagedxError(f"the bundle's chat template does not compile: {exc}") from exc
        self._tokens = {"bos_token": bos_token, "eos_token": eos_token}
        self._error = jinja2.TemplateError

    def render(self, messages) -> str:
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=True, **self._tokens)
        except self._error as exc:
            raise ApiError(422, f"messages: the chat template failed on them: {exc}", param="messages") from None


def template_for(manifest, tokenizer) -> ChatTemplate | None:
    """The bundle's chat template (None when its tokenizer has none), with the BOS / EOS
    strings it may use decoded by the bundle's tokenizer."""
    source = getattr(manifest.tokenizer, "chat_template", None)
    if not source:
        return None
    special = {}
    for key in ("bos_token_id", "eos_token_id"):
        token_id = getattr(manifest.tokenizer, key)
        special[key] = "" if token_id is None else tokenizer.decode([token_id])
    return ChatTemplate(source, special["bos_token_id"], special["eos_token_id"])
