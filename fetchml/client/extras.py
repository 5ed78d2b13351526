"""Optional dependencies (the package's extras), imported when a feature needs one."""

import importlib
from typing import Any

from .errors import ConfigurationError


def load_optional(module: str, extra: str, feature: str) -> Any:
    """Import an optional dependency, or explain which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigurationError(
            f"{feature} needs the optional {module} package: pip install 'fetchml[{extra}]'"
        ) from None
