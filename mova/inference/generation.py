"""Batched generation for Mova checkpoints and plain Hugging Face causal LMs.

Every evaluation that asks a model for free-text answers (VQA, the SPA-VL safety evaluation, later GSM8K)
goes through :func:`generate_answers`, so that prompts are rendered, padded and decoded one way:

* the prompt is the model's chat template with the generation prompt (``ASSISTANT:`` for ``vicuna_v1``),
  rendered by :meth:`MovaProcessor.apply_chat_template` or, for a plain LM, by the tokenizer's own
  ``chat_template`` (:mod:`mova.model.templates`);
* samples are sorted by prompt length, longest first, so that a batch holds prompts of similar length
  (little padding) and an out-of-memory error shows in the first batch rather than the last; answers come
  back in input order;
* batches are padded on the left, so that every row's next token follows its own prompt. Mova computes
  position ids from the attention mask and the experts' layouts (padding takes no position), and plain LMs
  from the mask, which makes a padded row give the same logits as the sample alone, at every step (tested
  to 1e-4 in ``tests/test_generation_backend.py``);
* ``stop`` strings end each row at the first stop string of its continuation (the text is cut there) and the
  batch ends when every row has ended (:mod:`mova.inference.decoding`);
* sampling with a ``seed`` draws each sample from its own generator, so answers do not depend on the batch
  size, the sort order or the number of processes;
* under ``torchrun``, inside :func:`~mova.inference.sharding.sharded_generation` (the evaluation entry points
  enter it), each process generates its shard and every process gets the merged answers in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList, StoppingCriteriaList

from mova.data.batch import to_device
from mova.errors import ConfigError, PlaceholderMismatchError
from mova.inference.decoding import SeededSampler, StopOnStrings, truncate_at_stop
from mova.inference.sampling import SamplingParams
from mova.inference.sharding import gather_shards, rank_and_world, shard, sharding_enabled
from mova.model.processing_text import as_processor
from mova.model.templates import IMAGE_PLACEHOLDER, normalize_messages

ImageArg = Any  # a PIL image or a path, a list of them (several images in one sample), or None


@dataclass
class Generation:
    """One generated answer with what an audit needs: ``num_tokens`` (EOS included when the model stopped)
    tells a cut answer (``num_tokens == max_new_tokens`` and no EOS) from a finished one;
    ``first_logits`` (the raw vocabulary logits of the first answer token, before any token suppression, on
    CPU) is kept only on request, and ``step_logits`` (``[num_tokens, vocab]``: the raw logits of every
    answer step) only with ``return_step_logits``. ``stop_reason`` is ``"eos"``, ``"stop"`` (a stop string;
    ``finished`` is then true too) or ``"length"``."""

    text: str
    num_tokens: int
    finished: bool
    first_logits: torch.Tensor | None = None
    step_logits: torch.Tensor | None = None
    stop_reason: str = "length"


def tokenizer_of(processor: Any) -> Any:
    """The tokenizer behind a processor (or a bare tokenizer)."""
    return as_processor(processor).tokenizer


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
    :data:`mova.model.templates.TEMPLATES`); for a plain tokenizer the default is its own ``chat_template``.
    """
    images = list(images) if images is not None else [None] * len(conversations)
    if len(images) != len(conversations):
        raise ValueError(f"got {len(conversations)} conversations but {len(images)} image entries")
    processor = as_processor(processor)
    prompts = []
    for i, (conv, image) in enumerate(zip(conversations, images)):
        messages = normalize_messages(conv)
        n_images = len(_image_list(image))
        n_placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
        if n_images and not processor.multimodal:
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
        prompts.append(processor.apply_chat_template(messages, add_generation_prompt=True, template=template))
    return prompts


def _encode(processor: Any, prompts: list[str], images: list[ImageArg]) -> dict[str, Any]:
    """Left-padded model inputs of rendered prompts (BOS added unless a prompt starts with it)."""
    return dict(as_processor(processor)(prompts, [_image_list(x) for x in images], padding_side="left"))


def prompt_lengths(processor: Any, prompts: list[str], images: list[ImageArg]) -> list[int]:
    """Approximate input lengths for sorting: text tokens plus each image's fixed visual tokens (OCR words,
    which vary per image, are not counted: running OCR twice to sort would cost more than it saves)."""
    processor = as_processor(processor)
    tokenizer, per_image = processor.tokenizer, processor.tokens_per_image()
    return [len(tokenizer(p, add_special_tokens=False).input_ids) + per_image * len(_image_list(x))
            for p, x in zip(prompts, images)]


def generate_answers(
    model: Any,
    processor: Any,
    conversations: Sequence[list[dict[str, Any]]],
    images: Sequence[ImageArg] | None = None,
    params: SamplingParams | None = None,
    *,
    template: str | None = None,
    **options: Any,
) -> list[str] | list[Generation]:
    """Generate one answer per conversation, batched; answers are returned in input order.

    ``model`` is a :class:`~mova.model.modeling_mova.MovaForCausalLM` with its ``MovaProcessor``, or a plain
    Hugging Face causal LM with its processor or tokenizer (then every image must be ``None``). ``images[i]``
    is the image of sample ``i`` (PIL image or path; a list for several; ``None`` for text-only). Prompts are
    built by :func:`build_prompts` (``template`` overrides the model's chat template). Decoding follows
    ``params`` (:class:`~mova.inference.sampling.SamplingParams`; greedy by default); its fields may also be
    given as keywords (``max_new_tokens=64``). The other options are :func:`generate_from_prompts`'s.
    """
    images = list(images) if images is not None else [None] * len(conversations)
    prompts = build_prompts(processor, conversations, images, template)
    return generate_from_prompts(model, processor, prompts, images, params, **options)


def generate_from_prompts(
    model: Any,
    processor: Any,
    prompts: Sequence[str],
    images: Sequence[ImageArg] | None = None,
    params: SamplingParams | None = None,
    *,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generate",
    return_details: bool = False,
    return_step_logits: bool = False,
    shard_across_processes: bool | None = None,
    **options: Any,
) -> list[str] | list[Generation]:
    """Generate for prompts already rendered (a chat prompt, a judge's raw prompt, a few-shot prompt).

    Each prompt's ``<image>`` placeholders must match its images; BOS is added unless the prompt starts
    with it. Decoding follows ``params`` (greedy by default; sampling fields may also come as keywords, e.g.
    ``max_new_tokens=64, stop=["Question:"]``); any other keyword goes to ``model.generate``.

    Returns the stripped answer texts, or with ``return_details`` one :class:`Generation` per sample (token
    count, why it stopped, first-step logits; every step's logits with ``return_step_logits``). The model is
    in eval mode during the run and its previous mode is restored afterwards. Inside
    :func:`mova.inference.sharding.sharded_generation` under ``torchrun`` (or with
    ``shard_across_processes=True``) the samples are sharded over the processes and every process gets all
    answers; every process must then make the call. Otherwise each process generates everything itself.
    """
    generate_kwargs = dict(options)
    p = SamplingParams.with_options(params, generate_kwargs, max_new_tokens=128, seed=None)
    max_new_tokens, do_sample, temperature, top_p, top_k, seed, stop = (
        p.max_new_tokens, p.do_sample, p.temperature, p.top_p, p.top_k, p.seed, p.stop)
    processor = as_processor(processor)
    prompts = list(prompts)
    n = len(prompts)
    images = list(images) if images is not None else [None] * n
    if len(images) != n:
        raise ValueError(f"got {n} prompts but {len(images)} image entries")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = prompt_lengths(processor, prompts, images)
    order = sorted(range(n), key=lambda i: -lengths[i])  # stable: equal lengths keep input order
    if shard_across_processes is None:
        shard_across_processes = sharding_enabled()
    rank, world = rank_and_world() if shard_across_processes else (0, 1)
    mine = shard(order, rank, world)
    tokenizer = processor.tokenizer
    eos_id = tokenizer.eos_token_id
    seeded = do_sample and seed is not None
    gen_args: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample and not seeded,
                                "pad_token_id": processor.pad_token_id(), "eos_token_id": eos_id}
    if do_sample and not seeded:
        gen_args.update(temperature=temperature, top_p=top_p, top_k=top_k or None)
    want_logits = return_details or return_step_logits
    if want_logits:
        gen_args.update(output_logits=True, return_dict_in_generate=True)
    if processor.image_token_id is not None:
        # An ``<image>`` token in the answer has no image to fill it: the model's next step would refuse the
        # batch (an untrained model does emit it). Suppressed here, so answers are text only.
        gen_args["suppress_tokens"] = [processor.image_token_id]
    if "suppress_tokens" in generate_kwargs:
        generate_kwargs = {**generate_kwargs, "suppress_tokens": [*gen_args.get("suppress_tokens", []),
                                                                  *generate_kwargs["suppress_tokens"]]}
    extra_processors = list(generate_kwargs.pop("logits_processor", None) or [])
    extra_criteria = list(generate_kwargs.pop("stopping_criteria", None) or [])
    gen_args.update(generate_kwargs)
    local: list[tuple[int, Generation]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(mine), desc=desc, unit="q", disable=not progress or rank != 0) as bar:
            for start in range(0, len(mine), batch_size):
                idx = mine[start:start + batch_size]
                batch = to_device(_encode(processor, [prompts[i] for i in idx], [images[i] for i in idx]),
                                  model.device)
                width = batch["input_ids"].shape[1]
                stopper = StopOnStrings(tokenizer, stop, width) if stop else None
                processors = [*extra_processors]
                if seeded:
                    processors.append(SeededSampler(seed, idx, temperature=temperature, top_p=top_p, top_k=top_k))
                criteria = [*extra_criteria, *([stopper] if stopper else [])]
                out = model.generate(**batch, **gen_args, logits_processor=LogitsProcessorList(processors),
                                     stopping_criteria=StoppingCriteriaList(criteria))
                sequences = out.sequences if want_logits else out
                new_tokens = sequences[:, width:].cpu()
                for row, i in enumerate(idx):
                    local.append((i, _finish_row(tokenizer, new_tokens[row].tolist(), eos_id, stop,
                                                 stopper.stopped_at.get(row) if stopper else None,
                                                 out.logits if want_logits else None, row, return_details,
                                                 return_step_logits)))
                bar.update(len(idx))
    finally:
        model.train(was_training)
    done = gather_shards(n, local) if world > 1 else [g for _, g in sorted(local, key=lambda x: x[0])]
    return done if (return_details or return_step_logits) else [r.text for r in done]


def _finish_row(tokenizer: Any, tokens: list[int], eos_id: int | None, stop: Sequence[str],
                stopped_at: int | None, logits: Sequence[torch.Tensor] | None, row: int, first: bool,
                steps: bool) -> Generation:
    """One row's :class:`Generation`: its tokens up to EOS or the stop string, the text cut at the stop."""
    eos_at = tokens.index(eos_id) + 1 if eos_id is not None and eos_id in tokens else None
    if stopped_at is not None and (eos_at is None or stopped_at < eos_at):
        length, reason = stopped_at, "stop"
    elif eos_at is not None:
        length, reason = eos_at, "eos"
    else:
        length, reason = len(tokens), "length"
    text = tokenizer.decode(tokens[:length], skip_special_tokens=True)
    if stop:
        text, found = truncate_at_stop(text, stop)
        if found and reason == "length":  # the stop string completed on the very last allowed token
            reason = "stop"
    step_logits = torch.stack([logits[t][row].float().cpu() for t in range(length)]) if steps and logits else None
    first_logits = logits[0][row].float().cpu() if first and logits else None
    return Generation(text=text.strip(), num_tokens=length, finished=reason != "length",
                      first_logits=first_logits, step_logits=step_logits, stop_reason=reason)


def load_model(path: str | Path, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, what: str = "model") -> tuple[Any, Any]:
    """A checkpoint folder ready for :func:`generate_answers`: ``(model, processor)``.

    A Mova folder (``model_type: mova`` in its ``config.json``) loads with
    :func:`~mova.model.builder.load_pretrained`; any other folder or hub id as a plain causal LM with its
    tokenizer (text-only). Weights load from safetensors, or from ``.bin`` with ``weights_only=True``;
    remote code is never run. ``device`` defaults to CUDA when available; ``dtype`` (``bfloat16``, ...)
    to the checkpoint's own.
    """
    from mova.model.policy import load_policy

    model, processor = load_policy(path, dtype=dtype or "auto", what=what, weights_only=True)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.eval(), processor


__all__ = ["Generation", "build_prompts", "generate_answers", "generate_from_prompts", "load_model", "prompt_lengths",
           "tokenizer_of"]
