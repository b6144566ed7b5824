"""A scalar reward model on any causal LM or Mova VLM, also the PPO critic's starting point.

:class:`RewardModel` puts one linear head (``score_head``: hidden -> 1) on the backbone's last-layer
hidden states. The head runs on every position, giving per-token ``values`` (what a PPO critic
initialised from the reward model needs), and a sequence's reward is the value at its last real token
(``scores``). The backbone keeps its LM head: the optional LM loss on chosen responses and the critic's
shared trunk both use the same weights, and ``save_pretrained`` writes a folder that the backbone's own
``from_pretrained`` still reads.

Why the last token: a causal model's last position is the only one that has seen the whole response.
Every training layout (:mod:`mova.data.pairs`) ends a response with the EOS token, so that is where the
reward is read, at training and at scoring time alike (:func:`score_texts` appends EOS when missing).

A saved reward model is a folder holding the backbone (its usual ``save_pretrained`` files), the
processor or tokenizer, ``score_head.safetensors`` and ``reward_model.json`` (what the folder is).
Loading never unpickles: weights come from safetensors only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mova.errors import ConfigError
from mova.model.policy import PolicyKind, load_policy, policy_kind, unwrap
from mova.model.processing_text import as_processor
from mova.rl.ppo_math import last_token_index

HEAD_FILE = "score_head.safetensors"
INFO_FILE = "reward_model.json"
FORMAT = "mova-reward-model"
FORMAT_VERSION = 1


@dataclass
class RewardOutput:
    """``values`` ``[B, T]`` (the head at every position), ``scores`` ``[B]`` (value at each row's last real
    token), ``hidden_states`` ``[B, T, H]`` (last layer, the features the head reads) and the backbone's
    ``logits`` for the positions asked with ``logits_to_keep``."""

    values: torch.Tensor
    scores: torch.Tensor
    hidden_states: torch.Tensor
    logits: torch.Tensor | None = None


class RewardModel(nn.Module):
    """``backbone`` (a Hugging Face causal LM, possibly peft-wrapped, or a Mova VLM) + ``score_head``."""

    def __init__(self, backbone: nn.Module, head: nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        hidden = hidden_size(backbone)
        if head is None:
            head = nn.Linear(hidden, 1)
            # Small initial rewards: the first BT losses sit near log 2 and no pair starts saturated.
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)
        if head.in_features != hidden or head.out_features != 1:
            raise ConfigError(f"score head is {head.in_features} -> {head.out_features}; the backbone needs "
                              f"{hidden} -> 1")
        dtype = next((p.dtype for p in backbone.parameters() if p.is_floating_point()), torch.float32)
        self.score_head = head.to(dtype)
        #: optional trainable modules of auxiliary losses (e.g. SwAV prototypes); never saved with the model.
        self.aux = nn.ModuleDict()

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, model: nn.Module) -> RewardModel:
        """Wrap a loaded causal LM or Mova model with a fresh score head."""
        return cls(model)

    @property
    def kind(self) -> PolicyKind:
        """The backbone's :class:`~mova.model.policy.PolicyKind` (how to feed it packed rows, where LoRA is)."""
        return policy_kind(self.backbone)

    @property
    def config(self) -> Any:
        """The backbone's config (trainers and PPO read ``hidden_size``, ``model_type`` ... from it)."""
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return self.score_head.weight.device

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, branch_ids: torch.Tensor | None = None,
                sequence_ids: torch.Tensor | None = None, logits_to_keep: int | torch.Tensor = 1,
                **mova_inputs: Any) -> RewardOutput:
        """Values at every position and each row's score at its last real token.

        ``sequence_ids`` / ``branch_ids`` (packed rows, shared-prompt pair trees from
        :class:`~mova.data.pairs.SharedPromptCollator`) make ``scores`` meaningless (a row holds several
        responses): read those with :meth:`scores_at` or :func:`pair_scores`. ``mova_inputs`` (``images``
        ...) go to a Mova backbone. ``logits_to_keep`` is passed to the backbone (1 by default: the
        LM head costs one position).
        """
        if input_ids is None and "inputs_embeds" not in mova_inputs:
            raise ValueError("RewardModel.forward needs input_ids (or inputs_embeds)")
        ref = input_ids if input_ids is not None else mova_inputs["inputs_embeds"][..., 0]
        if attention_mask is None:
            attention_mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
        kind = self.kind
        if sequence_ids is not None:
            kwargs = kind.tree_inputs(self.backbone, {**mova_inputs, "attention_mask": attention_mask,
                                                      "sequence_ids": sequence_ids, "branch_ids": branch_ids})
            mask_for_model = kwargs.pop("attention_mask")
        else:
            kwargs, mask_for_model = dict(mova_inputs), attention_mask
            if position_ids is None and input_ids is not None:
                # left padding needs positions from the mask (a plain HF LM numbers 0..T-1 whatever the padding)
                position_ids = kind.position_ids(self.backbone, input_ids, attention_mask, mova_inputs.get("images"))
        out = self.backbone(input_ids=input_ids, attention_mask=mask_for_model, position_ids=position_ids,
                            output_hidden_states=True, use_cache=False, logits_to_keep=logits_to_keep, **kwargs)
        hidden = out.hidden_states[-1]
        values = self.score_head(hidden.to(self.score_head.weight.dtype)).squeeze(-1)
        rows = torch.arange(values.shape[0], device=values.device)
        scores = values[rows, last_token_index(attention_mask).to(values.device)]
        return RewardOutput(values=values, scores=scores, hidden_states=hidden, logits=getattr(out, "logits", None))

    @staticmethod
    def scores_at(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``values[rows[i], cols[i]]``: rewards at given token positions (packed / tree layouts)."""
        return values[rows.to(values.device), cols.to(values.device)]

    # --- devices: the memory item (reward model on CPU between phases) -----------------------------
    def to_cpu(self) -> RewardModel:
        """Move every weight to CPU (and free the accelerator's cache); returns ``self``."""
        self.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self

    @contextlib.contextmanager
    def on_device(self, device: torch.device | str) -> Iterator[RewardModel]:
        """``with rm.on_device("cuda"): ...`` -- on ``device`` inside the block, back where it was after."""
        before = self.device
        self.to(device)
        try:
            yield self
        finally:
            self.to(before)
            if before.type == "cpu" and torch.cuda.is_available():
                torch.cuda.empty_cache()

    # --- activation checkpointing passes through to the backbone ------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        fn = getattr(self.backbone, "gradient_checkpointing_enable", None)
        if fn is None:
            raise ConfigError("the reward model's backbone has no gradient checkpointing")
        fn(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def activation_checkpointing_enable(self, *args: Any, **kwargs: Any) -> None:
        fn = getattr(self.backbone, "activation_checkpointing_enable", None) or \
            self.backbone.gradient_checkpointing_enable
        fn(*args, **kwargs)

    # --- saving / loading -------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, processor: Any = None, extra: dict[str, Any] | None = None) -> Path:
        """Write the backbone, the head (safetensors), ``reward_model.json`` and optionally the processor."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        backbone = unwrap(self.backbone)
        backbone.save_pretrained(path)
        head = {k: v.detach().to("cpu").contiguous() for k, v in self.score_head.state_dict().items()}
        save_file(head, str(path / HEAD_FILE))
        info = {"format": FORMAT, "version": FORMAT_VERSION, "backbone": self.kind.name,
                "hidden_size": self.score_head.in_features, "score_position": "last_token", **(extra or {})}
        (path / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if processor is not None:
            processor.save_pretrained(path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None) -> RewardModel:
        return load_reward_model(path, device=device, dtype=dtype)[0]


def hidden_size(model: nn.Module) -> int:
    config = unwrap(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "hidden_size", None)
    if size is None:
        raise ConfigError(f"cannot find the hidden size of {type(unwrap(model)).__name__}'s config")
    return int(size)


def read_info(path: str | Path) -> dict[str, Any]:
    """``reward_model.json`` of a saved reward model, checked."""
    path = Path(path)
    info_file = path / INFO_FILE
    if not info_file.is_file():
        raise ConfigError(f"{path} is not a saved reward model (no {INFO_FILE}); train one with `mova train rm`")
    info = json.loads(info_file.read_text())
    if info.get("format") != FORMAT:
        raise ConfigError(f"{info_file}: format {info.get('format')!r}, expected {FORMAT!r}")
    if int(info.get("version", 0)) > FORMAT_VERSION:
        raise ConfigError(f"{info_file}: version {info['version']} is newer than this code reads ({FORMAT_VERSION})")
    return info


def load_reward_model(path: str | Path, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> tuple[RewardModel, Any]:
    """``(reward_model, processor_or_tokenizer)`` from a folder written by :meth:`RewardModel.save_pretrained`."""
    from safetensors.torch import load_file

    path = Path(path)
    info = read_info(path)
    backbone, processor = load_policy(path, dtype=dtype, what="reward model")
    head = nn.Linear(int(info["hidden_size"]), 1)
    head.load_state_dict(load_file(str(path / HEAD_FILE)))
    rm = RewardModel(backbone, head)
    if dtype is not None:
        rm.to(dtype)
    if device is not None:
        rm.to(device)
    return rm.eval(), processor


# --- pair layouts ---------------------------------------------------------------------------------
def response_end_positions(batch: dict[str, Any], num_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` ``[2 * num_pairs]`` of each response's last token: chosen 0..n-1, then rejected.

    Both collators of :mod:`mova.data.pairs` are understood. The padded layout has one response per row
    (chosen rows first), ending at the row's last real token. The shared layout packs prompt / chosen /
    rejected trees: a response is a run of equal ``(sequence_id, branch_id)`` with branch > 0, and the
    runs appear in the same order as the collator's ``score_owner`` entries, which name the response.
    """
    if "branch_ids" not in batch:
        mask = batch["attention_mask"]
        if mask.shape[0] != 2 * num_pairs:
            raise ValueError(f"padded pair batch has {mask.shape[0]} rows for {num_pairs} pairs (expected 2 per pair)")
        return torch.arange(2 * num_pairs, device=mask.device), last_token_index(mask)
    seq, branch = batch["sequence_ids"], batch["branch_ids"]
    nxt_seq = torch.nn.functional.pad(seq[:, 1:], (0, 1), value=-2)
    nxt_branch = torch.nn.functional.pad(branch[:, 1:], (0, 1), value=-1)
    is_end = (branch > 0) & (seq >= 0) & ((nxt_seq != seq) | (nxt_branch != branch))
    rows, cols = is_end.nonzero(as_tuple=True)  # row-major: the collator's order
    owners = torch.unique_consecutive(batch["score_owner"].to(rows.device))
    if owners.numel() != rows.numel() or owners.numel() != 2 * num_pairs:
        raise ValueError(f"shared pair batch: {rows.numel()} response runs, {owners.numel()} owners, "
                         f"{num_pairs} pairs")
    out_rows = torch.empty_like(rows)
    out_cols = torch.empty_like(cols)
    out_rows[owners] = rows
    out_cols[owners] = cols
    return out_rows, out_cols


PAIR_KEYS = ("score_rows", "score_pred", "score_targets", "score_owner", "pair_index")


def pair_scores(rm: nn.Module, batch: dict[str, Any], num_pairs: int,
                logits_to_keep: int | torch.Tensor = 1) -> tuple[torch.Tensor, torch.Tensor, RewardOutput,
                                                                  tuple[torch.Tensor, torch.Tensor]]:
    """Rewards of the chosen and rejected responses of a pair batch in one pass.

    Returns ``(r_c, r_r, output, (rows, cols))``; ``rows, cols`` locate each response's last token (chosen
    first), e.g. to read features from ``output.hidden_states``.
    """
    inputs = {k: v for k, v in batch.items() if k not in PAIR_KEYS}
    out = rm(**inputs, logits_to_keep=logits_to_keep)
    rows, cols = response_end_positions(batch, num_pairs)
    scores = RewardModel.scores_at(out.values, rows, cols)
    return scores[:num_pairs], scores[num_pairs:], out, (rows, cols)


# --- convenience scoring ------------------------------------------------------------------------------
@torch.no_grad()
def score_texts(rm: RewardModel, processor: Any, prompts: Sequence[str], responses: Sequence[str],
                images: Sequence[Any] | None = None, batch_size: int = 8, append_eos: bool = True,
                progress: bool = False) -> list[float]:
    """Rewards of rendered ``prompt + response`` strings, in batches (one float per pair).

    ``prompts`` are already rendered with the model's chat template (e.g. the text a policy was prompted
    with); ``responses`` are the texts after them. ``images`` (one per prompt, or ``None`` entries) need
    a Mova reward model and an ``<image>`` placeholder in the prompt. EOS is appended to a response that
    does not end with it, as the training layouts do.
    """
    from tqdm.auto import tqdm

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if images is not None and len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    processor = as_processor(processor)
    tokenizer = processor.tokenizer
    eos = tokenizer.eos_token or ""
    texts = [p + (r if (not append_eos or not eos or r.endswith(eos)) else r + eos) for p, r in zip(prompts, responses)]
    was_training = rm.training
    rm.eval()
    out: list[float] = []
    for start in tqdm(range(0, len(texts), batch_size), desc="reward", disable=not progress):
        chunk = texts[start:start + batch_size]
        imgs = None
        if images is not None:
            imgs = [[im] if im is not None else [] for im in images[start:start + batch_size]]
        enc = processor(chunk, imgs)
        enc = {k: (v.to(rm.device) if isinstance(v, torch.Tensor) else
                   {kk: vv.to(rm.device) for kk, vv in v.items()} if isinstance(v, dict) else v)
               for k, v in dict(enc).items() if k in ("input_ids", "attention_mask", "images")}
        out.extend(rm(**enc).scores.float().cpu().tolist())
    rm.train(was_training)
    return out
