"""Mova: poly-visual-expert vision-language models, their training and their alignment."""

import logging

# bitsandbytes (imported by peft when installed) looks for an optional CPU kernel on the Hub when it is imported
# and warns twice when it cannot reach it (every offline run, every spawned worker): noise for all the runs that
# never quantize. Set here, before anything imports peft, so worker processes are quiet too.
for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).setLevel(logging.ERROR)

from mova.model.modeling_mova import MovaConfig, MovaForCausalLM, register_auto_classes  # noqa: E402
from mova.model.processing_mova import MovaProcessor, register_processor  # noqa: E402

__version__ = "0.1.0"
__all__ = ["MovaConfig", "MovaForCausalLM", "MovaProcessor", "__version__"]

register_auto_classes()
register_processor()
