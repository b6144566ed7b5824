"""Jinja chat templates for an exported tokenizer, equal to Mova's own templates (:mod:`mova.model.templates`).

Mova renders conversations in Python (so that training can mask labels per turn); a released model is
used through ``tokenizer.apply_chat_template``, which runs Jinja. Each Mova template that can be written
in Jinja has its twin here; the export tests render the same conversations both ways and compare.
The ``tokenizer`` template is the tokenizer's own and needs no twin.

Message content may be a string (Mova's form) or a list of ``{"type": "image"}`` / ``{"type": "text",
"text": ...}`` parts (the Hugging Face multimodal form): an image part becomes the ``<image>``
placeholder that the processor expands.
"""

from __future__ import annotations

from mova.model.templates import IMAGE_PLACEHOLDER, VICUNA_SYSTEM


def _lit(text: str) -> str:
    """``text`` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_CONTENT = (
    "{%- macro content(m) -%}"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'image' -%}" + IMAGE_PLACEHOLDER + "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

#: Mova template name -> the Jinja template that renders the same text.
JINJA_TEMPLATES: dict[str, str] = {
    "vicuna_v1": _CONTENT + (
        "{%- set eos = eos_token if eos_token else '</s>' -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{{ content(messages[0]) }}{%- set turns = messages[1:] -%}"
        "{%- else -%}{{ " + _lit(VICUNA_SYSTEM) + " }}{%- set turns = messages -%}{%- endif -%}"
        "{%- for m in turns -%}"
        "{%- if m['role'] == 'user' -%}{{ ' USER: ' + content(m) }}"
        "{%- if add_generation_prompt or not loop.last -%}{{ ' ASSISTANT:' }}{%- endif -%}"
        "{%- elif m['role'] == 'assistant' -%}{{ ' ' + content(m) + eos }}{%- endif -%}"
        "{%- endfor -%}"
    ),
    "plain": _CONTENT + (
        "{%- set eos = eos_token if eos_token else '' -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'user' -%}{{ '" + IMAGE_PLACEHOLDER + "' * (content(m).count('"
        + IMAGE_PLACEHOLDER + "')) }}"
        "{%- elif m['role'] == 'assistant' -%}{{ content(m) + eos + '\\n' }}{%- endif -%}"
        "{%- endfor -%}"
    ),
    "raw": _CONTENT + (
        "{%- set eos = eos_token if eos_token else '' -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'assistant' -%}{{ content(m) + eos }}{%- else -%}{{ content(m) }}{%- endif -%}"
        "{%- endfor -%}"
    ),
}


def jinja_template(name: str) -> str | None:
    """The Jinja twin of Mova template ``name``; ``None`` for ``tokenizer`` (the tokenizer's own) or a
    template without a twin."""
    return JINJA_TEMPLATES.get(name)
