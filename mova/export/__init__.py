"""Hugging Face release: ``mova export`` writes a folder that loads with or without Mova installed.

* :mod:`mova.export.bundle` -- the model code as flat remote-code modules, ``auto_map``;
* :mod:`mova.export.chat_template` -- Mova's chat templates as Jinja for the tokenizer;
* :mod:`mova.export.lora` -- loading a checkpoint, merging LoRA adapters on request;
* :mod:`mova.export.card` -- the model card: architecture, training recipe, evaluation tables;
* :mod:`mova.export.export` -- the folder itself;
* :mod:`mova.export.verify` -- the standalone check (a fresh process where Mova cannot be imported);
* :mod:`mova.export.push` -- upload through huggingface_hub.
"""
