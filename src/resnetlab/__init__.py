"""resnetlab: build, train, analyse and deploy residual networks [He15, He16]."""

from resnetlab.errors import Error
from resnetlab.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["Error", "create_model", "list_models", "__version__"]
