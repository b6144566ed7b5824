"""vLLM behind :class:`~mova.inference.backends.GenerationBackend`, for plain text models only.

vLLM is optional (``pip install vllm``); importing this module works without it and the error comes when a
backend is built. Mova checkpoints (experts, fusion, position schemes) are not a vLLM architecture: they
generate through the transformers backend. vLLM schedules its own batches, so ``batch_size`` does not
apply; a ``seed`` is passed per request, which keeps sampled answers repeatable per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mova.errors import ConfigError
from mova.inference.generation import Generation


def _require_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ConfigError("the vllm generation backend needs vLLM, which is not installed: `pip install vllm` "
                          "(or use --backend transformers)") from e
    return vllm


class VllmBackend:
    name = "vllm"

    def __init__(self, path: str | Path, *, dtype: str | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, progress: bool = True, **_: Any):
        from mova.model.policy import POLICY_KINDS, checkpoint_model_type

        if checkpoint_model_type(path) in POLICY_KINDS:
            raise ConfigError(f"{path} is a Mova checkpoint; vLLM serves plain text models only "
                              "(use the transformers backend)")
        vllm = _require_vllm()
        self._vllm = vllm
        self.progress = progress
        self.llm = vllm.LLM(model=str(path), dtype=dtype or "auto", tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=False)
        self.tokenizer = self.llm.get_tokenizer()

    def _params(self, params: Any, index: int) -> Any:
        from mova.inference.decoding import sample_seed
        from mova.inference.sampling import SamplingParams

        p = params or SamplingParams()
        greedy = not p.do_sample
        return self._vllm.SamplingParams(
            max_tokens=p.max_new_tokens, temperature=0.0 if greedy else p.temperature, top_p=1.0 if greedy else p.top_p,
            top_k=-1 if greedy or not p.top_k else p.top_k, stop=list(p.stop) or None,
            seed=None if p.seed is None or greedy else sample_seed(p.seed, index))

    def generate(self, prompts: Sequence[str], images: Sequence[Any] | None = None, *, params: Any = None,
                 desc: str = "generate") -> list[Generation]:
        if images is not None and any(x is not None for x in images):
            raise ConfigError("the vllm backend is text-only; this evaluation passes images")
        outs = self.llm.generate(list(prompts), [self._params(params, i) for i in range(len(prompts))],
                                 use_tqdm=self.progress)
        results = []
        for o in outs:
            c = o.outputs[0]
            reason = {"stop": "stop" if c.stop_reason is not None and isinstance(c.stop_reason, str) else "eos",
                      "length": "length"}.get(c.finish_reason or "length", "length")
            results.append(Generation(text=c.text.strip(), num_tokens=len(c.token_ids), finished=reason != "length",
                                      stop_reason=reason))
        return results

    def chat(self, conversations: Sequence[list[dict[str, Any]]], images: Sequence[Any] | None = None, *,
             params: Any = None, desc: str = "generate") -> list[Generation]:
        from mova.inference.generation import build_prompts

        return self.generate(build_prompts(self.tokenizer, conversations, images), images, params=params, desc=desc)


__all__ = ["VllmBackend"]
