"""fetchml: a metrics and job daemon for ML training, its client and its wire codec.

`fetchml.MetricLogger` logs from a training loop, `fetchml.Client` is the async
client and `fetchml.SyncClient` the blocking one for plain scripts; `fetchml.server` is
the daemon and `fetchml.protocol` the codec.
"""

__version__ = "0.1.0"

from .client import *  # noqa: F403
from .client import __all__ as _client_all

__all__ = ["__version__", *_client_all]
