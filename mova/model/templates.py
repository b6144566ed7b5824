"""Chat templates, rendered as segments so that training can mask labels to the assistant turns.

A conversation is a list of messages, either ``{"role": "system"|"user"|"assistant", "content": ...}``
or LLaVA's ``{"from": "human"|"gpt", "value": ...}``. A template renders it to a list of
:class:`Segment` (text, is_target); joining the texts gives the prompt string.

* ``plain`` -- LLaVA's stage-1 format: the user turn contributes only its ``<image>`` placeholders,
  the assistant text (a caption) follows, then the EOS token.
* ``vicuna_v1`` -- LLaVA-1.5's conversation format: a system line, ``USER: ... ASSISTANT: ...</s>``.
* ``tokenizer`` -- the tokenizer's own ``chat_template`` (Llama-3, Qwen2 ... instruct models).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mova.errors import ConfigError, UnknownNameError
from mova.registry import Registry

IMAGE_PLACEHOLDER = "<image>"
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "system": "system", "bot": "assistant", "model": "assistant"}
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclass(frozen=True)
class Segment:
    text: str
    is_target: bool = False


def content_text(content: Any) -> Any:
    """A message's content as text: a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts
    (transformers' multimodal form) becomes the parts joined as they are, each image part an ``<image>``
    placeholder, as the exported Jinja templates (:mod:`mova.export.chat_template`) render them. Anything else
    is returned unchanged."""
    if not isinstance(content, list):
        return content
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            pieces.append(IMAGE_PLACEHOLDER)
        elif kind == "text":
            pieces.append(str(part.get("text", "")))
        else:
            raise ConfigError(f"message part {part!r}: expected {{'type': 'image'}} or {{'type': 'text', 'text': ...}}")
    return "".join(pieces)


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Accept role/content or LLaVA from/value messages (content a string or a list of image / text parts);
    return role/content with canonical roles and string content."""
    out = []
    for i, m in enumerate(messages):
        role = m.get("role", m.get("from"))
        content = content_text(m.get("content", m.get("value")))
        if role not in ROLE_ALIASES or not isinstance(content, str):
            raise ConfigError(f"message {i} has role {role!r} and content of type {type(content).__name__}; "
                              f"expected a role in {sorted(ROLE_ALIASES)} and a string or a list of parts")
        out.append({"role": ROLE_ALIASES[role], "content": content})
    return out


Renderer = Callable[[list[dict[str, str]], bool, Any], list[Segment]]
TEMPLATES: Registry[Renderer] = Registry("chat template")
register_template = TEMPLATES.register


@register_template("plain")
def _plain(messages: list[dict[str, str]], add_generation_prompt: bool, tokenizer: Any) -> list[Segment]:
    eos = getattr(tokenizer, "eos_token", None) or ""
    segs: list[Segment] = []
    for m in messages:
        if m["role"] == "user":
            n = m["content"].count(IMAGE_PLACEHOLDER)
            segs.append(Segment(IMAGE_PLACEHOLDER * n))
        elif m["role"] == "assistant":
            segs.append(Segment(m["content"] + eos + "\n", is_target=True))
    return segs


@register_template("vicuna_v1")
def _vicuna(messages: list[dict[str, str]], add_generation_prompt: bool, tokenizer: Any) -> list[Segment]:
    eos = getattr(tokenizer, "eos_token", None) or "</s>"
    system = VICUNA_SYSTEM
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    segs = [Segment(system)]
    for m in messages:
        if m["role"] == "user":
            segs.append(Segment(f" USER: {m['content']} ASSISTANT:"))
        elif m["role"] == "assistant":
            segs.append(Segment(f" {m['content']}{eos}", is_target=True))
    if not add_generation_prompt and messages and messages[-1]["role"] == "user":
        segs[-1] = Segment(segs[-1].text[: -len(" ASSISTANT:")])
    return segs


@register_template("raw")
def _raw(messages: list[dict[str, str]], add_generation_prompt: bool, tokenizer: Any) -> list[Segment]:
    """Texts as they are, each answer followed by EOS: plain-text preference data (``prompt + chosen``)."""
    eos = getattr(tokenizer, "eos_token", None) or ""
    return [Segment(m["content"] + eos, is_target=True) if m["role"] == "assistant" else Segment(m["content"])
            for m in messages]


@register_template("tokenizer")
def _tokenizer_template(messages: list[dict[str, str]], add_generation_prompt: bool, tokenizer: Any) -> list[Segment]:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError("template 'tokenizer' needs a tokenizer with a chat_template")
    segs: list[Segment] = []
    done = ""
    # Render growing prefixes; each assistant turn's added text becomes a target segment.
    for i, m in enumerate(messages):
        is_last = i == len(messages) - 1
        gen = m["role"] != "assistant" and (not is_last or add_generation_prompt) and \
            (is_last or messages[i + 1]["role"] == "assistant")
        text = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False, add_generation_prompt=gen)
        if not text.startswith(done):
            raise ConfigError("the tokenizer's chat_template is not prefix-stable; cannot mask labels by turn")
        segs.append(Segment(text[len(done):], is_target=m["role"] == "assistant"))
        done = text
    return segs


def render(template: str, messages: list[dict[str, Any]], tokenizer: Any = None,
           add_generation_prompt: bool = False) -> list[Segment]:
    """Render ``messages`` with the named template into segments."""
    if template not in TEMPLATES:
        raise UnknownNameError("chat template", template, TEMPLATES)
    return TEMPLATES[template](normalize_messages(messages), add_generation_prompt, tokenizer)


def render_text(template: str, messages: list[dict[str, Any]], tokenizer: Any = None,
                add_generation_prompt: bool = True) -> str:
    """The prompt string of ``messages`` (what a user passes to the processor for generation)."""
    return "".join(s.text for s in render(template, messages, tokenizer, add_generation_prompt))


def user_turn_prompt(tokenizer: Any, text: str) -> str:
    """``text`` as one user turn in the tokenizer's own chat template, followed by the assistant's generation
    prompt: how a raw prompt (few-shot GSM8K, an R3 problem) is put to an instruct model, which otherwise reads
    it as text to continue rather than a question to answer."""
    return render_text("tokenizer", [{"role": "user", "content": text}], tokenizer, True)
