"""One generation interface over Mova checkpoints, plain transformers causal LMs and (optionally) vLLM.

Code that only needs "prompts in, answers out" -- Self-Polish, few-shot maths tasks, judges -- takes a
:class:`GenerationBackend` and :class:`SamplingParams`, so the same code runs on the transformers path
(:class:`TransformersBackend`, batched and left-padded, images for Mova) or on vLLM for a text model
(:class:`~mova.inference.vllm_backend.VllmBackend`), and tests can pass a scripted backend.

    backend = load_backend("runs/sft/final")                       # transformers, Mova or plain LM
    backend = load_backend("meta-llama/Llama-3.1-8B", "vllm")       # needs `pip install vllm`
    answers = backend.generate(prompts, params=SamplingParams(max_new_tokens=256, stop=["\\n\\nQ:"]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mova.errors import UnknownNameError
from mova.inference.generation import Generation, build_prompts, generate_from_prompts, load_model
from mova.inference.sampling import SamplingParams


@runtime_checkable
class GenerationBackend(Protocol):
    """What every backend offers. ``prompts`` are fully rendered strings (chat template already applied,
    or a raw few-shot prompt); ``chat`` renders conversations with the model's chat template first."""

    name: str

    def generate(self, prompts: Sequence[str], images: Sequence[Any] | None = None, *,
                 params: SamplingParams | None = None, desc: str = "generate") -> list[Generation]: ...

    def chat(self, conversations: Sequence[list[dict[str, Any]]], images: Sequence[Any] | None = None, *,
             params: SamplingParams | None = None, desc: str = "generate") -> list[Generation]: ...


class TransformersBackend:
    """A loaded model and its processor (Mova) or tokenizer (plain LM), through
    :func:`~mova.inference.generation.generate_from_prompts` (sharded under ``torchrun``)."""

    name = "transformers"

    def __init__(self, model: Any, processor: Any, *, batch_size: int = 16, progress: bool = True,
                 template: str | None = None):
        self.model, self.processor = model, processor
        self.batch_size, self.progress, self.template = batch_size, progress, template

    def generate(self, prompts: Sequence[str], images: Sequence[Any] | None = None, *,
                 params: SamplingParams | None = None, desc: str = "generate") -> list[Generation]:
        return generate_from_prompts(self.model, self.processor, prompts, images, params or SamplingParams(),
                                     batch_size=self.batch_size, progress=self.progress, desc=desc,
                                     return_details=True)

    def chat(self, conversations: Sequence[list[dict[str, Any]]], images: Sequence[Any] | None = None, *,
             params: SamplingParams | None = None, desc: str = "generate") -> list[Generation]:
        imgs = list(images) if images is not None else None
        return self.generate(build_prompts(self.processor, conversations, imgs, self.template), imgs,
                             params=params, desc=desc)


BackendLoader = Callable[..., GenerationBackend]


def _load_transformers(path: str | Path, *, device: str | None = None, dtype: str | None = None,
                       batch_size: int = 16, progress: bool = True, **kwargs: Any) -> GenerationBackend:
    model, processor = load_model(path, device=device, dtype=dtype)
    return TransformersBackend(model, processor, batch_size=batch_size, progress=progress, **kwargs)


def _load_vllm(path: str | Path, **kwargs: Any) -> GenerationBackend:
    from mova.inference.vllm_backend import VllmBackend

    return VllmBackend(path, **kwargs)


#: backend name -> loader(path, **options)
BACKENDS: dict[str, BackendLoader] = {"transformers": _load_transformers, "vllm": _load_vllm}


def load_backend(path: str | Path, backend: str = "transformers", **options: Any) -> GenerationBackend:
    """Load a checkpoint behind the named backend (``transformers`` or ``vllm``)."""
    if backend not in BACKENDS:
        raise UnknownNameError("generation backend", backend, BACKENDS)
    return BACKENDS[backend](path, **options)


__all__ = ["BACKENDS", "GenerationBackend", "SamplingParams", "TransformersBackend", "load_backend"]
