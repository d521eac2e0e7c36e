"""torch.hub entry points: one per registered resnetlab model, each taking `pretrained=`.

>>> model = torch.hub.load("path/to/resnetlab", "resnet20", source="local", pretrained="fmnist")
>>> model = torch.hub.load("path/to/resnetlab", "resnet50", source="local", pretrained=True)

`pretrained` takes what `resnetlab.create_model` takes (True, a tag, a file, a URL, a run
directory); other keyword arguments are the model's options (num_classes, in_chans, ...).
"""

import os
import sys

dependencies = ["torch", "safetensors", "numpy", "tqdm"]

# A checkout that is not pip-installed: import the package from its src/ folder.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

# Private names: torch.hub offers every public callable of this module as a model.
from resnetlab import create_model as _create_model  # noqa: E402
from resnetlab.models import list_models as _list_models  # noqa: E402
from resnetlab.models.factory import get_builder as _get_builder  # noqa: E402


def _entry_point(name):
    def entry_point(*, pretrained=None, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__doc__ = f"{_get_builder(name).__doc__}\n\npretrained: see resnetlab.create_model."
    return entry_point


# One entry point per registered model, named as the registry names it.
globals().update({name: _entry_point(name) for name in _list_models()})
