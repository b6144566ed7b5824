"""The one start token of a sequence, for any tokenizer and chat template.

Mova puts the tokenizer's ``bos_token`` before every sequence it encodes (prompts, training samples, pairs)
because most LLM tokenizers do not add it themselves. A tokenizer whose chat template writes its own start
token (SmolLM2-Instruct's ``bos_token`` is ``<|im_start|>``, which its template writes at every turn) must not
get a second one in front: the doubled token is a prompt the model never saw in training, and it changed
SmolLM2's answer to "What is the capital of France?" from "Paris" to nonsense. Every encoder asks
:func:`start_ids` instead of reading ``bos_token_id``, so generation, SFT, preference pairs and rollouts all
see the same first token.
"""

from __future__ import annotations

from typing import Any

_TEMPLATE_WRITES_START: dict[tuple[str, str], bool] = {}


def template_writes_start(tokenizer: Any) -> bool:
    """Whether the tokenizer's own chat template begins its text with the tokenizer's ``bos_token``: the start
    token then belongs to the template (and to nothing else: raw text gets none either, as the tokenizer itself
    adds none)."""
    template = getattr(tokenizer, "chat_template", None)
    bos = getattr(tokenizer, "bos_token", None)
    if not isinstance(template, str) or not bos:
        return False
    key = (template, bos)
    if key not in _TEMPLATE_WRITES_START:
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                 add_generation_prompt=True)
        except Exception:  # a template that needs other roles or variables: judge by its text alone
            text = template.lstrip()
        _TEMPLATE_WRITES_START[key] = isinstance(text, str) and text.startswith(bos)
    return _TEMPLATE_WRITES_START[key]


def start_ids(tokenizer: Any, text: str = "") -> list[int]:
    """``[bos_token_id]`` to put before ``text``, or ``[]`` when the tokenizer has no start token, ``text``
    already begins with it, or the tokenizer's chat template writes it itself."""
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if bos is None or bos_id is None or text.startswith(bos) or template_writes_start(tokenizer):
        return []
    return [bos_id]
