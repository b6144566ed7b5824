"""Supervised fine-tuning on plain ``{"prompt", "answer"}`` text records, on the shared :class:`MovaTrainer`.

The LLaVA stages (:mod:`mova.trainers.stages`) read conversations with images; continual learning (TRACE,
RCL), R3's warm-up SFT and other LLM-only methods only need "given this prompt, write this answer". This
module is that path, reusable by any of them:

* a sample is ``[BOS] prompt_ids + answer_ids + [EOS]``, where the prompt and the answer are tokenized
  separately (the answer with ``separator`` in front, a space by default) so the boundary between them is
  the same in training and at generation time, when the model continues the bare prompt;
* the loss covers the answer and EOS only (prompt labels are ``-100``): the model learns to answer, not to
  reproduce prompts;
* a sample longer than ``max_length`` loses prompt tokens from the left (the instruction's start), never
  answer tokens; one whose answer alone does not fit is an error naming the record;
* the model is a plain Hugging Face causal LM or a Mova checkpoint used text-only (no images are passed;
  its tokenizer is ``processor.tokenizer``);
* ``train_cfg.lora.r > 0`` trains LoRA adapters (peft) on the LLM and, with ``lora.merge``, merges them into
  the given model at the end, so the caller keeps one plain model object either way;
* ``extra_loss(model) -> tensor`` is added to every step's loss (EWC's penalty uses it).

The model is trained in place; the return value is the run summary (also ``out_dir/summary.json``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from mova.config import RunConfig, TrainConfig
from mova.errors import DataError
from mova.model.policy import policy_kind
from mova.model.processing_text import as_processor
from mova.model.start_token import start_ids
from mova.trainers.base import MovaTrainer, resolve_resume, write_report

logger = logging.getLogger(__name__)


def encode_prompt_answer(tokenizer: Any, prompt: str, answer: str, *, separator: str = " ",
                         max_length: int | None = None, where: str = "record") -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (-100 over BOS and the prompt) of one sample."""
    tok = as_processor(tokenizer).tokenizer
    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    answer_ids = tok(separator + answer if answer else answer, add_special_tokens=False).input_ids
    if tok.eos_token_id is not None:
        answer_ids = answer_ids + [tok.eos_token_id]
    head = start_ids(tok, prompt)
    if max_length is not None:
        room = max_length - len(head) - len(answer_ids)
        if room < 1:
            raise DataError(f"{where}: the answer alone takes {len(answer_ids)} tokens, more than max_length "
                            f"{max_length} allows with a prompt; raise max_length or drop the record")
        prompt_ids = prompt_ids[-room:]
    ids = head + prompt_ids + answer_ids
    labels = [-100] * (len(head) + len(prompt_ids)) + answer_ids
    return {"input_ids": ids, "labels": labels}


class PromptAnswerDataset(torch.utils.data.Dataset):
    """Tokenized prompt/answer samples (tokenized once, up front; text data is small)."""

    def __init__(self, records: Sequence[dict[str, Any]], tokenizer: Any, *, separator: str = " ",
                 max_length: int | None = None):
        self.samples = []
        for i, r in enumerate(records):
            if not isinstance(r.get("prompt"), str) or not isinstance(r.get("answer"), str):
                raise DataError(f"record {i}: needs string 'prompt' and 'answer'; got {str(r)[:120]!r}")
            self.samples.append(encode_prompt_answer(tokenizer, r["prompt"], r["answer"], separator=separator,
                                                     max_length=max_length, where=f"record {i}"))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.samples[i]


class PromptAnswerCollator:
    """Right-padded batches of ``input_ids`` / ``attention_mask`` / ``labels``."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor(b["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class _ExtraLossTrainer(MovaTrainer):
    """MovaTrainer whose loss gets ``extra_loss(model)`` added (a regulariser such as EWC's penalty)."""

    def __init__(self, *args: Any, extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.extra_loss = extra_loss

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                   num_items_in_batch=num_items_in_batch)
        if self.extra_loss is None:
            return out
        loss, outputs = out if return_outputs else (out, None)
        loss = loss + self.extra_loss(model)
        return (loss, outputs) if return_outputs else loss


def train_prompt_answer(model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], train_cfg: TrainConfig,
                        out_dir: str | Path, *, separator: str = " ", max_length: int | None = None,
                        extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None,
                        callbacks: list[Any] | None = None, summary_extra: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``records`` (``{"prompt", "answer"}``), loss on answer tokens only.

    ``train_cfg`` gives the optimisation (epochs or ``max_steps``, batch size, lr, ``lora``, ``save_steps``,
    ``resume_from_checkpoint: latest`` to continue an interrupted run from ``out_dir``'s newest checkpoint);
    its ``output_dir`` is replaced by ``out_dir``. ``tokenizer`` may be a tokenizer or a Mova processor.
    Returns the summary dict written to ``out_dir/summary.json``.
    """
    from mova.trainers.stages import check_fsdp_launch, training_arguments

    out_dir = Path(out_dir)
    if not records:
        raise DataError(f"{out_dir}: no training records")
    tok = as_processor(tokenizer).tokenizer
    set_seed(train_cfg.seed)
    dataset = PromptAnswerDataset(records, tok, separator=separator, max_length=max_length)
    cfg = RunConfig(stage="text_sft", train=train_cfg)
    cfg.train = TrainConfig(**{**train_cfg.__dict__, "output_dir": str(out_dir)})
    args = training_arguments(cfg)
    check_fsdp_launch(args)
    kind = policy_kind(model)
    # text only: a Mova model's experts and fusion network get no gradient, its LLM trains (or its adapters)
    wrapped, counts = kind.make_trainable(model, lora=train_cfg.lora)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    trainer = _ExtraLossTrainer(model=wrapped, args=args, train_dataset=dataset,
                                data_collator=PromptAnswerCollator(pad), extra_loss=extra_loss,
                                max_nonfinite_in_a_row=train_cfg.max_nonfinite_in_a_row,
                                group_by_modality_length=False, callbacks=callbacks)
    resume = resolve_resume(str(out_dir), train_cfg.resume_from_checkpoint)
    trainer.train(resume_from_checkpoint=resume)
    if train_cfg.lora.r > 0:  # merged into the caller's model object, or saved to out_dir/adapter and dropped
        kind.unload_adapters(wrapped, merge=train_cfg.lora.merge,
                             save_dir=None if train_cfg.lora.merge else out_dir / "adapter")
    trainable = sum(counts.values()) if train_cfg.lora.r == 0 else None
    extra = {"stage": "text_sft", "samples": len(dataset), "lora_r": train_cfg.lora.r,
             "trainable_params": trainable, **(summary_extra or {})}
    return write_report(trainer, out_dir, extra)


__all__ = ["PromptAnswerCollator", "PromptAnswerDataset", "encode_prompt_answer", "train_prompt_answer"]
