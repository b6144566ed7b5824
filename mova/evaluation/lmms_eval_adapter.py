"""A Mova checkpoint as an lmms-eval model, so that lmms-eval's own task code (prompts, answer parsing,
metrics) evaluates it.

    from mova.evaluation.lmms_eval_adapter import register_lmms_eval_model
    register_lmms_eval_model()                      # registers model name "mova"
    lmms_eval.evaluator.simple_evaluate(model="mova", model_args="pretrained=runs/sft/final", tasks=["pope"])

lmms-eval is not a Mova dependency: its release pins ``wandb`` / ``protobuf`` versions that conflict with Mova's
pins, so it is used from a separate environment (``python eval/lmms_eval_check.py`` sets one up with
``pip install --no-deps`` and runs the adapter on a local POPE copy). Only ``generate_until`` tasks are
supported (the VQA-style benchmarks); log-likelihood and multi-round requests raise ``NotImplementedError``.
"""

from __future__ import annotations

from typing import Any


def _sampling(gen_kwargs: dict[str, Any]) -> Any:
    """lmms-eval's ``generation_kwargs`` as Mova's :class:`~mova.inference.sampling.SamplingParams`."""
    from mova.inference.sampling import SamplingParams

    until = gen_kwargs.get("until") or []
    temperature = float(gen_kwargs.get("temperature", 0) or 0)
    do_sample = bool(gen_kwargs.get("do_sample", False)) and temperature > 0
    return SamplingParams(max_new_tokens=int(gen_kwargs.get("max_new_tokens", 128)), do_sample=do_sample,
                          temperature=temperature if do_sample else 1.0,
                          top_p=float(gen_kwargs.get("top_p", 1.0) or 1.0),
                          stop=[until] if isinstance(until, str) else list(until))


def register_lmms_eval_model(name: str = "mova") -> type:
    """Define and register the lmms-eval model class (lmms-eval must be importable); returns the class."""
    from lmms_eval.api.model import lmms
    from lmms_eval.api.registry import register_model

    from mova.inference.generation import generate_answers, load_model

    class MovaLmms(lmms):
        """lmms-eval's model interface over :func:`mova.inference.generate_answers` (one image list per request)."""

        def __init__(self, pretrained: str, device: str | None = None, dtype: str | None = None,
                     batch_size: int | str = 8, **_: Any) -> None:
            super().__init__()
            self.model, self.processor = load_model(pretrained, device=device, dtype=dtype)
            self.batch_size_per_gpu = int(batch_size)

        def generate_until(self, requests: list[Any]) -> list[str]:
            answers: list[str] = []
            for request in requests:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
                images = [v for v in (visuals or []) if v is not None]
                answers += generate_answers(self.model, self.processor, [[{"role": "user", "content": context}]],
                                            [images or None], _sampling(dict(gen_kwargs)), progress=False)
            return answers

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            raise NotImplementedError("the Mova lmms-eval adapter runs generate_until tasks only")

        def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
            raise NotImplementedError("the Mova lmms-eval adapter runs single-turn generate_until tasks only")

    register_model(name)(MovaLmms)
    return MovaLmms
