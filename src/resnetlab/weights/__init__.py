"""Weights on disk, in one place: every SOURCE resolved, every format read and written, and one
loader, `load(source) -> (model, Preprocessing)`, below train, export and the experiments.

>>> import resnetlab
>>> model = resnetlab.create_model("resnet20", pretrained="fmnist")  # shipped, works offline
>>> model.pretrained_cfg["classes"][:2]
['T-shirt/top', 'Trouser']
>>> model, preprocessing = resnetlab.weights.load("resnet20.fmnist")  # eval mode, and how to feed it

Downloads go to `$RESNETLAB_HOME/weights` (default ~/.cache/resnetlab/weights); a file already in
torch's cache (`$TORCH_HOME/hub/checkpoints/`) is used as it is; `hf-hub:` repositories go to the
Hugging Face cache. See docs/weights.md.
"""

from resnetlab.weights.adapt import adapt_input_conv, fit_state_dict
from resnetlab.weights.cache import cache_dir, cached_path, fetch
from resnetlab.weights.classes import class_names
from resnetlab.weights.entry import Metrics, WeightsEntry
from resnetlab.weights.load import create_model, load, load_pretrained
from resnetlab.weights.preprocessing import Preprocessing
from resnetlab.weights.registry import default_weights, get_weights, list_weights, model_tags
from resnetlab.weights.source import locate, source_model

__all__ = [
    "Metrics",
    "Preprocessing",
    "WeightsEntry",
    "adapt_input_conv",
    "cache_dir",
    "cached_path",
    "class_names",
    "create_model",
    "default_weights",
    "fetch",
    "fit_state_dict",
    "get_weights",
    "list_weights",
    "load",
    "load_pretrained",
    "locate",
    "model_tags",
    "source_model",
]
