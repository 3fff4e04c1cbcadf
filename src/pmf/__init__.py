"""pixel-meanflow: Pixel MeanFlow (pMF) in PyTorch."""

from .checkpoint import load_checkpoint, load_model  # noqa: E402  (after .nn: checkpoint builds models)
from .config import PRESETS, ModelConfig, model_config
from .errors import CheckpointError, PMFError
from .nn import PMFDiT, build_model, count_parameters, load_release_state_dict, release_state_dict

__version__ = "0.1.0"
__all__ = ["PRESETS", "CheckpointError", "ModelConfig", "PMFDiT", "PMFError", "build_model", "count_parameters",
           "load_checkpoint", "load_model", "load_release_state_dict", "model_config", "release_state_dict"]
