"""Training and evaluation: `fit(cfg)` with a `TrainConfig` from a recipe, exact resume, eval, predict.

>>> from resnetlab.train import fit, get_recipe
>>> import dataclasses
>>> cfg = dataclasses.replace(get_recipe("fast"), model="resnet20", epochs=15, out="runs/r20")
>>> result = fit(cfg)  # result.model, result.history, result.run_dir
"""

from resnetlab.train.config import RECIPES, TrainConfig, get_recipe, list_recipes
from resnetlab.train.engine import TrainResult, fit
from resnetlab.train.evaluate import EvalResult, evaluate

__all__ = [
    "RECIPES",
    "EvalResult",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "fit",
    "get_recipe",
    "list_recipes",
]
