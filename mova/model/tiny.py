"""Small random causal LMs with the repository's tiny tokenizer: the text policies of tests, benchmarks and
examples, built in a second on a CPU with no download."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_text_lm(folder: str | Path, seed: int = 0, layers: int = 2, width: int = 64, tied: bool = False) -> Any:
    """A small random Llama with the repository's tiny tokenizer, saved to ``folder``; returns the tokenizer.
    ``tied``: one matrix for the input embeddings and the LM head, as in SmolLM2."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mova.presets import TINY_TOKENIZER

    tok = PreTrainedTokenizerFast.from_pretrained(str(TINY_TOKENIZER))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.1, tie_word_embeddings=tied, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok
