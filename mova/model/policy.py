"""The one interface every trainer, rollout, scorer and generator uses for the model it trains or runs.

A *policy* here is any model Mova trains: a plain Hugging Face causal LM (text methods: RLHF, R3, RCL) or a
Mova VLM (SPA-VL alignment). The two differ in structure -- where the LLM sits for LoRA, whether experts
and a fusion network exist, who builds a packed row's attention mask, how positions skip padding -- and
those differences live here, in one :class:`PolicyKind` per model type, instead of as ``if mova:``
branches in every trainer. Code above this module asks its policy kind:

* :func:`load_policy` -- a checkpoint (Mova folder, causal-LM folder or hub id) or a fresh Mova model from a
  :class:`~mova.config.ModelConfig`, with its processor (a :class:`MovaProcessor`, or a
  :class:`~mova.model.processing_text.TextProcessor` for a plain LM: every model has a processor);
* :func:`policy_kind` -- the kind of an already built model, through DDP / DeepSpeed / peft wrappers;
* the kind's methods: trainable parts and LoRA, adapters on/off, merging, the packed/tree forward inputs,
  padding-aware positions, expert features computed once per image, saving.

Methods take the model they act on (it may be wrapped by an engine), so one kind object serves a policy,
its frozen reference and its critic alike.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mova.errors import ConfigError
from mova.registry import Registry


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / DeepSpeed wrappers (``.module`` chains)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def _peft_base(model: nn.Module) -> nn.Module:
    """The model under a peft wrapper (``PeftModel.base_model.model``), else the model itself."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _core(model: nn.Module) -> nn.Module:
    model = unwrap(model)
    inner = getattr(model, "policy", None)  # a policy with a value head (PPO's shared critic)
    if isinstance(inner, nn.Module) and not hasattr(model, "config"):
        model = unwrap(inner)
    return _peft_base(model)


def require_bitsandbytes(device: torch.device | str = "cpu") -> Any:
    """The ``bitsandbytes`` module, after checking that it can quantize to 4 bits on ``device``; a ConfigError
    that says what is missing otherwise (not installed, or no 4-bit support for this device: bitsandbytes
    before 0.46 runs 4-bit on CUDA only)."""
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnbf
    except ImportError as e:
        raise ConfigError("train.lora.quantization_bit=4 (QLoRA) needs bitsandbytes, which is not installed here: "
                          "pip install 'bitsandbytes>=0.46' (4-bit on CPU needs >= 0.46; on GPU, CUDA)") from e
    try:
        bnbf.quantize_4bit(torch.zeros(64, 64, device=device), quant_type="nf4")
    except Exception as e:  # bitsandbytes raises RuntimeError, NotImplementedError, ... per backend
        raise ConfigError(f"train.lora.quantization_bit=4: bitsandbytes {getattr(bnb, '__version__', '?')} cannot "
                          f"quantize to 4 bits on {torch.device(device).type} here ({type(e).__name__}: {e}); 4-bit "
                          "needs a CUDA GPU, or bitsandbytes >= 0.46 with its CPU ops") from e
    return bnb


def quantize_linears_4bit(module: nn.Module, *, quant_type: str = "nf4", double_quant: bool = True,
                          skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every ``nn.Linear`` in ``module`` (but those named in ``skip``: the output head stays in full
    precision, as in QLoRA) by a bitsandbytes 4-bit layer holding the same weights, quantized now on the
    weights' device. Computation runs in the weights' former dtype. Returns how many layers were replaced."""
    first = next((p for p in module.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    bnb = require_bitsandbytes(device)
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or name in skip:
                continue
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=child.weight.dtype, compress_statistics=double_quant,
                                      quant_type=quant_type, device="meta")
            layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False,
                                             compress_statistics=double_quant, quant_type=quant_type)
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, layer.to(child.weight.device))  # ``to`` quantizes
            count += 1
    return count


def dequantize_linears_4bit(module: nn.Module) -> int:
    """Replace every bitsandbytes 4-bit layer in ``module`` by an ``nn.Linear`` with its dequantized weights (the
    values the adapters were trained against), so the model saves and loads like any other."""
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnbf
    except ImportError:
        return 0
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            weight = bnbf.dequantize_4bit(child.weight.data, child.weight.quant_state)
            dtype = child.compute_dtype or weight.dtype
            linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                               device=weight.device, dtype=dtype)
            with torch.no_grad():
                linear.weight.copy_(weight.reshape(linear.weight.shape).to(dtype))
                if child.bias is not None:
                    linear.bias.copy_(child.bias.to(dtype))
            linear.requires_grad_(False)
            setattr(parent, name, linear)
            count += 1
    return count


def _merge_qlora_layers(model: nn.Module) -> int:
    """Replace each LoRA layer on a 4-bit base by an ``nn.Linear`` of the dequantized base plus the adapters'
    delta, computed in full precision. peft's own merge re-quantizes the sum to 4 bits, which moves the
    function the adapters were trained to compute by as much as the quantization itself."""
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnbf
    except ImportError:
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            base = getattr(child, "base_layer", None)
            if not isinstance(base, bnb.nn.Linear4bit) or not hasattr(child, "get_delta_weight"):
                continue
            dtype = base.compute_dtype or torch.float32
            weight = bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state).float()
            weight = weight.reshape(base.out_features, base.in_features)
            for adapter in child.active_adapters:
                if adapter in getattr(child, "lora_A", {}):
                    weight = weight + child.get_delta_weight(adapter).float()
            linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                               device=weight.device, dtype=dtype)
            with torch.no_grad():
                linear.weight.copy_(weight.to(dtype))
                if base.bias is not None:
                    linear.bias.copy_(base.bias.to(dtype))
            setattr(parent, name, linear.requires_grad_(False))
            count += 1
    return count


def _quantize_for_qlora(lm: nn.Module, lora: Any, train_llm: bool) -> None:
    """QLoRA's base: the LLM's linear layers in 4 bits, when ``lora.quantization_bit`` asks for it."""
    if not getattr(lora, "quantization_bit", None):
        return
    if not train_llm or lora.r <= 0:
        raise ConfigError("train.lora.quantization_bit=4 (QLoRA) trains LoRA adapters on a 4-bit LLM: it needs "
                          "train.lora.r > 0 and a stage that trains the LLM")
    if not lora.merge:
        raise ConfigError("train.lora.quantization_bit=4 needs train.lora.merge=true: the final model is saved "
                          "with the adapters merged into the dequantized weights")
    quantize_linears_4bit(lm, quant_type=lora.quantization_type, double_quant=lora.double_quantization)
    lm.is_loaded_in_4bit = True  # peft reads this to give 4-bit layers its 4-bit LoRA (whose merge knows them)


def _lora_wrap(model: nn.Module, lora: Any) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


class PolicyKind:
    """What differs between model types, as methods on a given model (wrapped or not)."""

    name = "base"

    # --- structure ---------------------------------------------------------------------------------
    def core(self, model: nn.Module) -> nn.Module:
        """The model itself under engine, value-head (PPO's shared critic) and peft wrappers."""
        return _core(model)

    def language_model(self, model: nn.Module) -> nn.Module:
        """The causal LM inside ``model`` (peft-wrapped when LoRA is on): where adapters live."""
        raise NotImplementedError

    def has_adapters(self, model: nn.Module) -> bool:
        return hasattr(self.language_model(model), "disable_adapter")

    def parts(self, model: nn.Module) -> dict[str, nn.Module]:
        """The model's parts that may get their own learning rate, by name (``llm``; a Mova model also
        ``fusion`` and ``experts``), found inside whatever wraps the model (an engine, a value head, a reward
        model's head, peft). Parameters outside every part (a value or score head) belong to none."""
        raise NotImplementedError

    def make_trainable(self, model: nn.Module, *, lora: Any, train_llm: bool = True, train_fusion: bool = False,
                       unfreeze_experts: tuple[str, ...] | list[str] = ()) -> tuple[nn.Module, dict[str, int]]:
        """Freeze what stays fixed, unfreeze what trains (the LLM fully, or through LoRA when ``lora.r > 0``).
        Returns the model to train (a plain LM comes back peft-wrapped under LoRA) and trainable counts."""
        raise NotImplementedError

    @contextlib.contextmanager
    def adapters_disabled(self, model: nn.Module) -> Iterator[None]:
        """Inside the block ``model`` computes with its LoRA adapters off: the start policy, no second copy."""
        lm = self.language_model(model)
        if not hasattr(lm, "disable_adapter"):
            raise ConfigError("the model has no LoRA adapters to disable (set train.lora.r > 0)")
        with lm.disable_adapter():
            yield

    def merge_adapters(self, model: nn.Module) -> nn.Module:
        """``model`` with its LoRA adapters merged into the weights (in place); returns the unwrapped model.
        A model without adapters comes back as it is."""
        return self.unload_adapters(model, merge=True) if self.has_adapters(model) else self.core(model)

    def unload_adapters(self, model: nn.Module, *, merge: bool = True, save_dir: str | Path | None = None) -> nn.Module:
        """Remove the LoRA adapters: merged into the weights (``merge``) or dropped, after saving them to
        ``save_dir`` when given. Returns the model without its peft wrapper (changed in place)."""
        lm = self.language_model(model)
        if save_dir is not None:
            lm.save_pretrained(str(save_dir))
        if merge:
            _merge_qlora_layers(lm)  # 4-bit bases: merged in full precision, not re-quantized
        plain = lm.merge_and_unload() if merge else lm.unload()
        if dequantize_linears_4bit(plain):  # a QLoRA base comes back in its compute dtype
            plain.is_loaded_in_4bit = False
        return self._replace_language_model(model, plain)

    def _replace_language_model(self, model: nn.Module, lm: nn.Module) -> nn.Module:
        raise NotImplementedError

    def merged_copy(self, model: nn.Module) -> nn.Module:
        """A copy of the model with its adapters (if any) merged; the training model keeps its adapters."""
        import copy

        inner = copy.deepcopy(unwrap(model))
        return self.merge_adapters(inner) if self.has_adapters(inner) else inner

    def freeze_frozen_experts(self, model: nn.Module) -> None:
        """Keep frozen experts frozen after a ``requires_grad_(True)`` on a copy (a critic)."""

    # --- forward -----------------------------------------------------------------------------------
    def tree_inputs(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """Model inputs for a packed row or a shared-prompt pair tree (``sequence_ids`` / ``branch_ids``)."""
        raise NotImplementedError

    def position_ids(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     images: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Position ids that skip (left) padding."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def shared_image_features(self, model: nn.Module,
                              images: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """``images`` with each frozen expert's pixels replaced by its features, computed once, so that
        generation and every later scoring pass (policy, reference, critic, reward) reuse them."""
        return images

    def default_template(self, model: nn.Module, processor: Any) -> str:
        return processor.template

    # --- saving --------------------------------------------------------------------------------------
    def save(self, model: nn.Module, folder: str | Path, processor: Any = None) -> None:
        """The model (adapters merged into a copy when it has them) and its processor, as a loadable folder."""
        inner = unwrap(model)
        (self.merged_copy(inner) if self.has_adapters(inner) else inner).save_pretrained(folder)
        if processor is not None:
            processor.save_pretrained(folder)


class CausalLMPolicy(PolicyKind):
    """Any Hugging Face causal LM (Llama, Qwen, SmolLM2, ...)."""

    name = "causal_lm"

    def language_model(self, model: nn.Module) -> nn.Module:
        inner = unwrap(model)
        policy = getattr(inner, "policy", None)
        return unwrap(policy) if isinstance(policy, nn.Module) and not hasattr(inner, "config") else inner

    def make_trainable(self, model: nn.Module, *, lora: Any, train_llm: bool = True, train_fusion: bool = False,
                       unfreeze_experts: tuple[str, ...] | list[str] = ()) -> tuple[nn.Module, dict[str, int]]:
        if train_fusion or unfreeze_experts:
            raise ConfigError("a plain language model has no fusion network or experts to train; set "
                              "train_fusion: false and train.unfreeze_experts: []")
        _quantize_for_qlora(model, lora, train_llm)
        if lora.r > 0:
            model = _lora_wrap(model, lora)
        else:
            model.requires_grad_(train_llm)
        return model, {"language_model": sum(p.numel() for p in model.parameters() if p.requires_grad)}

    def _replace_language_model(self, model: nn.Module, lm: nn.Module) -> nn.Module:
        return lm  # peft changed the original model object's layers in place: ``lm`` is that object

    def parts(self, model: nn.Module) -> dict[str, nn.Module]:
        from transformers import PreTrainedModel

        lm = next((m for m in unwrap(model).modules() if isinstance(m, PreTrainedModel)), None)
        return {"llm": lm} if lm is not None else {}

    def tree_inputs(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        from mova.model.packing import packed_attention_inputs

        if "sequence_ids" not in inputs:
            return inputs
        inputs = dict(inputs)
        seq, branch = inputs.pop("sequence_ids"), inputs.pop("branch_ids", None)
        core = self.core(model)
        impl = getattr(core.config, "_attn_implementation", None) or "eager"
        dtype = next(core.parameters()).dtype
        inputs.update(packed_attention_inputs(seq, impl, dtype, branch))
        return inputs


class MovaPolicy(PolicyKind):
    """A Mova VLM: frozen experts -> fusion network -> causal LM."""

    name = "mova"

    def language_model(self, model: nn.Module) -> nn.Module:
        return self.core(model).language_model

    def make_trainable(self, model: nn.Module, *, lora: Any, train_llm: bool = True, train_fusion: bool = False,
                       unfreeze_experts: tuple[str, ...] | list[str] = ()) -> tuple[nn.Module, dict[str, int]]:
        from mova.errors import UnknownNameError

        core = self.core(model)
        core.requires_grad_(False)
        core.fusion.requires_grad_(train_fusion)
        _quantize_for_qlora(core.language_model, lora, train_llm)
        if train_llm and lora.r > 0:
            core.language_model = _lora_wrap(core.language_model, lora)
        elif train_llm:
            core.language_model.requires_grad_(True)
        for name in unfreeze_experts:
            if name not in core.experts:
                raise UnknownNameError("expert to unfreeze", name, core.experts.keys())
            core.experts[name].cfg.frozen = False
            core.experts[name].requires_grad_(True)
        counts = {part: sum(p.numel() for p in getattr(core, part).parameters() if p.requires_grad)
                  for part in ("experts", "fusion", "language_model")}
        return model, counts

    def _replace_language_model(self, model: nn.Module, lm: nn.Module) -> nn.Module:
        core = self.core(model)
        core.language_model = lm
        return core

    def parts(self, model: nn.Module) -> dict[str, nn.Module]:
        mova = next((m for m in unwrap(model).modules()
                     if getattr(getattr(m, "config", None), "model_type", None) == self.name
                     and all(hasattr(m, a) for a in ("experts", "fusion", "language_model"))), None)
        if mova is None:
            return {}
        return {"experts": mova.experts, "fusion": mova.fusion, "llm": mova.language_model}

    def freeze_frozen_experts(self, model: nn.Module) -> None:
        for expert in self.core(model).experts.values():
            if expert.cfg.frozen:
                expert.requires_grad_(False)

    def tree_inputs(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        return inputs  # the model builds the packed / tree mask from sequence_ids and branch_ids itself

    def position_ids(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     images: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.core(model).compute_position_ids(input_ids, attention_mask, images)

    def shared_image_features(self, model: nn.Module,
                              images: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        if not images:
            return images
        core = self.core(model)
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for key, value in images.items():
                expert = core.experts[key] if key in core.experts else None
                if expert is not None and expert.input_kind == "pixels" and expert.cfg.frozen:
                    param = next(expert.parameters(), None)
                    out[f"{key}.features"] = expert(value.to(core.device,
                                                             dtype=param.dtype if param is not None else None))
                else:
                    out[key] = value
        return out

    def default_template(self, model: nn.Module, processor: Any) -> str:
        return self.core(model).config.template


#: model_type -> the kind that knows its structure; anything not listed is a plain causal LM.
POLICY_KINDS: Registry[PolicyKind] = Registry("policy kind")
POLICY_KINDS.register("mova", MovaPolicy())
CAUSAL_LM = CausalLMPolicy()


def policy_kind(model: nn.Module) -> PolicyKind:
    """The :class:`PolicyKind` of ``model`` (through engine, value-head and peft wrappers)."""
    model_type = getattr(getattr(_core(model), "config", None), "model_type", None)
    return POLICY_KINDS.get(model_type, CAUSAL_LM)


def checkpoint_model_type(path: str | Path) -> str | None:
    """The ``model_type`` in a local folder's ``config.json`` (None for a hub id or a folder without one)."""
    config = Path(path) / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def load_policy(init_from: str | Path | None = None, model_config: Any = None, *, dtype: Any = None,
                what: str = "init_from", **kwargs: Any) -> tuple[nn.Module, Any]:
    """``(model, processor)`` to train or run: the checkpoint ``init_from`` (a Mova folder, or a causal-LM
    folder / hub id, which gets a :class:`TextProcessor`), or without one a fresh Mova model built from
    ``model_config`` (its LLM and experts loading their pretrained weights). ``dtype`` (a name or a
    ``torch.dtype``; ``"auto"``: the checkpoint's own) defaults to the checkpoint's own for Mova folders and
    to float32 for plain LMs (the precision training starts from)."""
    from mova.model.builder import build_model, load_pretrained, torch_dtype
    from mova.model.checkpoints import resolve_checkpoint

    if isinstance(dtype, str) and dtype != "auto":
        dtype = torch_dtype(dtype)
    if not init_from:
        if model_config is None:
            raise ConfigError("nothing to load: give init_from (a checkpoint) or a model config")
        return build_model(model_config, load_weights=True)
    ref = resolve_checkpoint(init_from, what)
    if checkpoint_model_type(ref) == "mova":
        return load_pretrained(ref, **({"dtype": dtype} if dtype not in (None, "auto") else {}), **kwargs)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mova.model.processing_text import TextProcessor

    tokenizer = AutoTokenizer.from_pretrained(ref)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype or torch.float32, **kwargs)
    return model, TextProcessor(tokenizer)


__all__ = ["CAUSAL_LM", "POLICY_KINDS", "CausalLMPolicy", "MovaPolicy", "PolicyKind", "checkpoint_model_type",
           "dequantize_linears_4bit", "load_policy", "policy_kind", "quantize_linears_4bit", "require_bitsandbytes",
           "unwrap"]
