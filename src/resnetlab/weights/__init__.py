"""Pretrained weights: a registry of checkpoints (torchvision, timm, our own), a cache, and loading.

>>> import resnetlab
>>> model = resnetlab.create_model("resnet20", pretrained="fmnist")  # shipped, works offline
>>> model.pretrained_cfg["classes"][:2]
['T-shirt/top', 'Trouser']

Downloads go to `$RESNETLAB_HOME/weights` (default ~/.cache/resnetlab/weights); a file already in
torch's cache (`$TORCH_HOME/hub/checkpoints/`) is used as it is. See docs/weights.md.
"""

from resnetlab.weights.adapt import adapt_input_conv, fit_state_dict
from resnetlab.weights.cache import cache_dir, cached_path, fetch
from resnetlab.weights.classes import class_names
from resnetlab.weights.entry import Metrics, WeightsEntry
from resnetlab.weights.pretrained import load_pretrained, locate
from resnetlab.weights.registry import default_weights, get_weights, list_weights, model_tags

__all__ = [
    "Metrics",
    "WeightsEntry",
    "adapt_input_conv",
    "cache_dir",
    "cached_path",
    "class_names",
    "default_weights",
    "fetch",
    "fit_state_dict",
    "get_weights",
    "list_weights",
    "load_pretrained",
    "locate",
    "model_tags",
]
