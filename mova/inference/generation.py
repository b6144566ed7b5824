"""Batched generation for Mova checkpoints and plain Hugging Face causal LMs.

Every evaluation that asks a model for free-text answers (VQA, the SPA-VL safety evaluation, later GSM8K)
goes through :func:`generate_answers`, so that prompts are rendered, padded and decoded one way:

* the prompt is the model's chat template with the generation prompt (``ASSISTANT:`` for ``vicuna_v1``),
  rendered by :meth:`MovaProcessor.apply_chat_template` or, for a plain LM, by the tokenizer's own
  ``chat_template`` (:mod:`mova.data.templates`);
* samples are sorted by prompt length, longest first, so that a batch holds prompts of similar length
  (little padding) and an out-of-memory error shows in the first batch rather than the last; answers come
  back in input order;
* batches are padded on the left, so that every row's next token follows its own prompt. Mova computes
  position ids from the attention mask and the experts' layouts (padding takes no position), and plain LMs
  from the mask, which makes a padded row give the same logits as the sample alone (tested to 1e-4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mova.data.templates import IMAGE_PLACEHOLDER, normalize_messages, render_text
from mova.errors import ConfigError, PlaceholderMismatchError

ImageArg = Any  # a PIL image or a path, a list of them (several images in one sample), or None


@dataclass
class Generation:
    """One generated answer with what an audit needs: ``num_tokens`` (EOS included when the model stopped)
    tells a cut answer (``num_tokens == max_new_tokens`` and no EOS) from a finished one;
    ``first_logits`` (the raw vocabulary logits of the first answer token, before any token suppression, on
    CPU) is kept only on request."""

    text: str
    num_tokens: int
    finished: bool
    first_logits: torch.Tensor | None = None


def is_mova_processor(processor: Any) -> bool:
    """True for a :class:`~mova.model.processing_mova.MovaProcessor` (duck-typed: it processes images)."""
    return hasattr(processor, "process_images") and hasattr(processor, "tokenizer")


def tokenizer_of(processor: Any) -> Any:
    return processor.tokenizer if is_mova_processor(processor) else processor


def _image_list(image: ImageArg) -> list[Any]:
    if image is None:
        return []
    if isinstance(image, (list, tuple)):
        return list(image)
    return [image]


def build_prompts(processor: Any, conversations: Sequence[list[dict[str, Any]]],
                  images: Sequence[ImageArg] | None = None, template: str | None = None) -> list[str]:
    """The prompt strings (chat template + generation prompt) of ``conversations``.

    A conversation is a list of messages in either LLaVA (``from``/``value``) or role/content form, ending
    with the user's turn. A sample given images but holding no ``<image>`` placeholder gets one per image at
    the start of its first user turn (as LLaVA's evaluation does); a placeholder without an image is an
    error, never silently dropped. ``template`` overrides the model's template (a name from
    :data:`mova.data.templates.TEMPLATES`); for a plain tokenizer the default is its own ``chat_template``.
    """
    images = list(images) if images is not None else [None] * len(conversations)
    if len(images) != len(conversations):
        raise ValueError(f"got {len(conversations)} conversations but {len(images)} image entries")
    mova = is_mova_processor(processor)
    prompts = []
    for i, (conv, image) in enumerate(zip(conversations, images)):
        messages = normalize_messages(conv)
        n_images = len(_image_list(image))
        n_placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
        if n_images and not mova:
            raise ConfigError(f"sample {i} has an image but the model is a plain language model; drop the "
                              "images (and their <image> placeholders) for a text-only evaluation")
        if n_images and not n_placeholders:
            first_user = next((m for m in messages if m["role"] == "user"), None)
            if first_user is None:
                raise PlaceholderMismatchError(f"sample {i} has an image but no user turn to put it in")
            first_user["content"] = (IMAGE_PLACEHOLDER + "\n") * n_images + first_user["content"]
        elif n_placeholders != n_images:
            raise PlaceholderMismatchError(
                f"sample {i} holds {n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {n_images} image(s)")
        if mova:
            prompts.append(processor.apply_chat_template(messages, add_generation_prompt=True, template=template))
        else:
            prompts.append(render_text(template or "tokenizer", messages, processor, add_generation_prompt=True))
    return prompts


def _pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def _encode_plain(tokenizer: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded ids and mask for a plain LM; padded here so that the caller's tokenizer is not modified
    (many LLM tokenizers have no pad token) and BOS is not doubled when the chat template already wrote it."""
    bos = tokenizer.bos_token
    seqs = []
    for p in prompts:
        add_special = not (bos and p.startswith(bos))
        seqs.append(tokenizer(p, add_special_tokens=add_special).input_ids)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), _pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _encode(processor: Any, prompts: list[str], images: list[ImageArg]) -> dict[str, Any]:
    if is_mova_processor(processor):
        return dict(processor(prompts, [_image_list(x) for x in images], padding_side="left"))
    return _encode_plain(processor, prompts)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device)
        elif isinstance(v, dict):
            out[k] = {kk: vv.to(device) if isinstance(vv, torch.Tensor) else vv for kk, vv in v.items()}
        else:
            out[k] = v
    return out


def prompt_lengths(processor: Any, prompts: list[str], images: list[ImageArg]) -> list[int]:
    """Approximate input lengths for sorting: text tokens plus each image's fixed visual tokens (OCR words,
    which vary per image, are not counted: running OCR twice to sort would cost more than it saves)."""
    tokenizer = tokenizer_of(processor)
    per_image = processor.layout.num_tokens() if is_mova_processor(processor) else 0
    return [len(tokenizer(p, add_special_tokens=False).input_ids) + per_image * len(_image_list(x))
            for p, x in zip(prompts, images)]


def generate_answers(
    model: Any,
    processor: Any,
    conversations: Sequence[list[dict[str, Any]]],
    images: Sequence[ImageArg] | None = None,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    template: str | None = None,
    progress: bool = True,
    desc: str = "generate",
    return_details: bool = False,
    **generate_kwargs: Any,
) -> list[str] | list[Generation]:
    """Generate one answer per conversation, batched; answers are returned in input order.

    ``model`` is a :class:`~mova.model.modeling_mova.MovaForCausalLM` with its ``MovaProcessor``, or a plain
    Hugging Face causal LM with its tokenizer (then every image must be ``None``). ``images[i]`` is the
    image of sample ``i`` (PIL image or path; a list for several; ``None`` for text-only). Prompts are built
    by :func:`build_prompts` (``template`` overrides the model's chat template). Greedy decoding by default;
    ``do_sample`` uses ``temperature`` and ``top_p`` (and ``seed``, when given, seeds torch first, for a
    repeatable run on one machine and batch size). Extra keyword arguments go to ``model.generate``.

    Returns the stripped answer texts, or with ``return_details`` one :class:`Generation` per sample (token
    count, whether EOS was reached, first-step logits). The model is in eval mode during the run and its
    previous mode is restored afterwards.
    """
    images = list(images) if images is not None else [None] * len(conversations)
    prompts = build_prompts(processor, conversations, images, template)
    return generate_from_prompts(model, processor, prompts, images, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                 top_p=top_p, seed=seed, progress=progress, desc=desc,
                                 return_details=return_details, **generate_kwargs)


def generate_from_prompts(
    model: Any,
    processor: Any,
    prompts: Sequence[str],
    images: Sequence[ImageArg] | None = None,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    progress: bool = True,
    desc: str = "generate",
    return_details: bool = False,
    **generate_kwargs: Any,
) -> list[str] | list[Generation]:
    """:func:`generate_answers` for prompts already rendered (a judge that writes its own raw prompt).

    Each prompt's ``<image>`` placeholders must match its images; BOS is added unless the prompt starts
    with it.
    """
    prompts = list(prompts)
    n = len(prompts)
    images = list(images) if images is not None else [None] * n
    if len(images) != n:
        raise ValueError(f"got {n} prompts but {len(images)} image entries")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = prompt_lengths(processor, prompts, images)
    order = sorted(range(n), key=lambda i: -lengths[i])  # stable: equal lengths keep input order
    tokenizer = tokenizer_of(processor)
    eos_id = tokenizer.eos_token_id
    gen_args: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                                "pad_token_id": _pad_id(tokenizer), "eos_token_id": eos_id}
    if do_sample:
        gen_args.update(temperature=temperature, top_p=top_p)
    if return_details:
        gen_args.update(output_logits=True, return_dict_in_generate=True)
    if is_mova_processor(processor):
        # An ``<image>`` token in the answer has no image to fill it: the model's next step would refuse the
        # batch (an untrained model does emit it). Suppressed here, so answers are text only.
        gen_args["suppress_tokens"] = [processor.image_token_id]
    if "suppress_tokens" in generate_kwargs:
        generate_kwargs = {**generate_kwargs, "suppress_tokens": [*gen_args.get("suppress_tokens", []),
                                                                  *generate_kwargs["suppress_tokens"]]}
    gen_args.update(generate_kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    results: list[Generation | None] = [None] * n
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=n, desc=desc, unit="q", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                batch = _to_device(_encode(processor, [prompts[i] for i in idx], [images[i] for i in idx]),
                                   model.device)
                out = model.generate(**batch, **gen_args)
                sequences = out.sequences if return_details else out
                new_tokens = sequences[:, batch["input_ids"].shape[1]:].cpu()
                for row, i in enumerate(idx):
                    tokens = new_tokens[row].tolist()
                    finished = eos_id is not None and eos_id in tokens
                    stop = tokens.index(eos_id) + 1 if finished else len(tokens)
                    text = tokenizer.decode(tokens[:stop], skip_special_tokens=True).strip()
                    first = out.logits[0][row].float().cpu() if return_details and out.logits else None
                    results[i] = Generation(text=text, num_tokens=stop, finished=finished, first_logits=first)
                bar.update(len(idx))
    finally:
        model.train(was_training)
    done = [r for r in results if r is not None]
    return done if return_details else [r.text for r in done]


def load_model(path: str | Path, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None) -> tuple[Any, Any]:
    """A checkpoint folder ready for :func:`generate_answers`: ``(model, processor)``.

    A Mova folder (``model_type: mova`` in its ``config.json``) loads with
    :func:`~mova.model.builder.load_pretrained`; any other folder or hub id as a plain causal LM with its
    tokenizer (text-only). Weights load from safetensors, or from ``.bin`` with ``weights_only=True``;
    remote code is never run. ``device`` defaults to CUDA when available; ``dtype`` (``bfloat16``, ...)
    to the checkpoint's own.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mova.model.builder import load_pretrained, torch_dtype

    kwargs: dict[str, Any] = {"weights_only": True}
    if dtype is not None:
        kwargs["dtype"] = torch_dtype(dtype) if isinstance(dtype, str) else dtype
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    if config.model_type == "mova":
        model, processor = load_pretrained(path, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False, **kwargs)
        processor = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.eval(), processor


__all__ = ["Generation", "build_prompts", "generate_answers", "generate_from_prompts", "is_mova_processor",
           "load_model", "prompt_lengths", "tokenizer_of"]
