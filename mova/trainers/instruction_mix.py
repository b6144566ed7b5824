"""Instruction data mixed into preference and RL training: the alignment tax's remedy.

Preference optimisation moves a model towards the chosen answers' style. On SPA-VL those are long,
refusal-or-advice sentences, and a model aligned on them alone forgets the short answers of its
instruction data (the demo's tiny model went from 93% held-out VQA accuracy to almost nothing). Adding the
language-modelling loss of the instruction records the model was fine-tuned on -- LLaVA-format records,
images included -- to every alignment step keeps those answers likely while the preference loss works:
``loss = preference_loss + weight * NLL(instruction batch)``.

:class:`InstructionMix` serves those batches: the records are checked once up front (the same checks, path
confinement and error messages as the ``sft`` stage), reshuffled every epoch from a seeded generator, and
can read their images' expert features from a feature cache (``mova cache-features``), as ``sft`` does.
DPO (``dpo.sft_data``) and PPO (``ppo.ptx_data`` holding LLaVA records) use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mova.config import DataConfig
from mova.data.batch import to_device
from mova.data.llava import LlavaDataset, MovaCollator
from mova.data.records import read_json_records
from mova.errors import ConfigError


def is_conversation_file(path: str | Path) -> bool:
    """Whether a JSON / JSONL file holds LLaVA-format records (``conversations``), read from its first record."""
    rows = read_json_records(path, "instruction data")
    return bool(rows) and isinstance(rows[0], dict) and isinstance(rows[0].get("conversations"), list)


class InstructionMix:
    """Endless, reshuffled batches of LLaVA-format records and their language-modelling loss."""

    def __init__(self, path: str | Path, model: torch.nn.Module, processor: Any, template: str, *,
                 batch_size: int = 8, image_folder: str | None = None, feature_cache: str | None = None,
                 max_length: int | None = None, seed: int = 0, where: str = "instruction data"):
        if batch_size < 1:
            raise ConfigError(f"{where}: batch size must be >= 1, got {batch_size}")
        cfg = DataConfig(data_path=str(path), image_folder=image_folder, max_length=max_length,
                         feature_cache=feature_cache)
        cache = None
        if feature_cache:
            from mova.trainers.stages import open_feature_cache

            cache = open_feature_cache(feature_cache, model)
        self.dataset = LlavaDataset(read_json_records(path, where), processor, cfg, template, progress=False,
                                    feature_cache=cache)
        self.collate = MovaCollator(pad_token_id=processor.pad_token_id())
        self.batch_size = batch_size
        self._generator = torch.Generator().manual_seed(seed)
        self._order: list[int] = []
        #: batches served so far (also what :meth:`state_dict` saves, so a resumed run continues the order).
        self.served = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def next_batch(self) -> dict[str, Any]:
        """The next ``batch_size`` records (a new shuffled epoch starts when the current one runs out)."""
        rows = []
        while len(rows) < self.batch_size:
            if not self._order:
                self._order = torch.randperm(len(self.dataset), generator=self._generator).tolist()
            rows.append(self.dataset[self._order.pop()])
        self.served += 1
        return self.collate(rows)

    def loss(self, model: torch.nn.Module, device: torch.device | str) -> torch.Tensor:
        """Mean token NLL of the next batch under ``model`` (labels cover the assistant turns only; the LM head
        runs at those positions only, :func:`~mova.model.label_loss.label_loss`)."""
        from mova.model.label_loss import label_loss

        return label_loss(model, to_device(self.next_batch(), device))

    def state_dict(self) -> dict[str, Any]:
        return {"served": self.served, "generator": self._generator.get_state().tolist(), "order": self._order}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.served = int(state["served"])
        self._generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        self._order = [int(i) for i in state["order"]]
