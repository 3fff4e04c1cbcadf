"""The pmfDiT network, its layers and the release checkpoint format."""

from .model import PMFDiT, Predictions, build_model, count_parameters
from .release import load_release_state_dict, model_from_release, release_state_dict

__all__ = ["PMFDiT", "Predictions", "build_model", "count_parameters", "load_release_state_dict", "model_from_release",
           "release_state_dict"]
