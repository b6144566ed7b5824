"""Generate the tiny byte-level BPE tokenizer that ships in ``mova/assets/tiny-tokenizer``.

The tiny preset must build with no download, so its tokenizer lives in the repository. This script
trains it on a small built-in corpus (the words the demo data and templates use, plus digits and
letters), which keeps the vocabulary small (1024 entries) while byte-level BPE still encodes any text.

    python data/generators/make_tiny_tokenizer.py            # rewrite the shipped files
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
WORDS = """
a an the is are was of in on at to and or what which where how many much color colour shape word
written text image picture photo there left right top bottom middle center above below next red
green blue yellow purple orange black white gray grey pink brown circle square triangle star
rectangle one two three four five six seven eight nine ten zero yes no count number describe
question answer user assistant system human gpt chat between curious artificial intelligence gives
helpful detailed polite answers questions safe unsafe harmful benign sorry cannot help with that
please here this that it its you your i me my we they them he she his her read says say shows show
star stars circles squares triangles drawn drawing shapes used colour placed side see text does written
STOP OPEN SALE EXIT PUSH PULL HELP FIRE word words ripe banana grass sky clear day tomato sides wheels
bicycle comes after opposite full moon
""".split()
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {{ m['content'] }}</s>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def corpus() -> list[str]:
    lines = [" ".join(WORDS[i : i + 12]) for i in range(0, len(WORDS), 12)]
    # Every word after a space and at a line start, often enough that each becomes one token.
    lines += [" ".join(p) for p in itertools.product(WORDS, repeat=2)]
    lines += [str(n) for n in range(1000)] + [chr(c) * 3 for c in range(65, 91)]
    return lines


def build(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<image>"],
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "mova" / "assets" / "tiny-tokenizer"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default)
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    build(args.vocab_size).save_pretrained(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
