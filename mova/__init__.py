"""Mova: poly-visual-expert vision-language models, their training and their alignment."""

from mova.model.modeling_mova import MovaConfig, MovaForCausalLM, register_auto_classes
from mova.model.processing_mova import MovaProcessor, register_processor

__version__ = "0.1.0"
__all__ = ["MovaConfig", "MovaForCausalLM", "MovaProcessor", "__version__"]

register_auto_classes()
register_processor()
