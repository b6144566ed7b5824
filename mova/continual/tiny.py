"""A tiny random Llama with the repository's tiny tokenizer: the starting model of the CPU demo and tests."""

from __future__ import annotations

from pathlib import Path


def save_tiny_lm(folder: str | Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 2,
                 max_positions: int = 512) -> Path:
    """Write a ``hidden_size``-wide, ``layers``-deep random ``LlamaForCausalLM`` and its tokenizer to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mova.presets import TINY_TOKENIZER

    tok = PreTrainedTokenizerFast.from_pretrained(str(TINY_TOKENIZER))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_positions, initializer_range=0.1, tie_word_embeddings=False,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return Path(folder)
