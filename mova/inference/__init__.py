"""Inference: batched generation shared by every evaluation (VQA, safety, maths, ...), the backends over it,
and multi-process sharding."""

from mova.inference.backends import GenerationBackend, TransformersBackend, load_backend
from mova.inference.generation import Generation, build_prompts, generate_answers, generate_from_prompts, load_model
from mova.inference.sampling import SamplingParams

__all__ = ["Generation", "GenerationBackend", "SamplingParams", "TransformersBackend", "build_prompts",
           "generate_answers", "generate_from_prompts", "load_backend", "load_model"]
