"""Inference: batched generation shared by every evaluation (VQA, safety, ...) and later decoding strategies."""

from mova.inference.generation import Generation, build_prompts, generate_answers, generate_from_prompts, load_model

__all__ = ["Generation", "build_prompts", "generate_answers", "generate_from_prompts", "load_model"]
