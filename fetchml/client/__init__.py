"""fetchml client: the async `Client`, the blocking `SyncClient`, the `MetricLogger` of
training loops, and the `fetchml` CLI."""

from .columns import Columns
from .connection import Client
from .errors import (
    AlreadyExists,
    AuthenticationFailed,
    ConfigurationError,
    ConnectFailed,
    ConnectionLost,
    DeliveryTimeout,
    FetchmlConnectionError,
    FetchmlError,
    InvalidRequest,
    JobError,
    JobNotFound,
    MetricsRejected,
    NotFound,
    PermissionDenied,
    ProtocolViolation,
    ServerOverloaded,
    StorageError,
)
from .ledger import LoggerStats
from .logger import MetricLogger
from .models import (
    Experiment,
    ExperimentSummary,
    Job,
    Metric,
    MetricsPage,
    Status,
    WhoAmI,
)
from .runs import Run, RunsPage, RunSummary
from .settings import Settings, resolve_settings
from .sync import SyncClient
from .watch import MetricWatch, WatchOptions

__all__ = [
    "AlreadyExists",
    "AuthenticationFailed",
    "Client",
    "Columns",
    "ConfigurationError",
    "ConnectFailed",
    "ConnectionLost",
    "DeliveryTimeout",
    "Experiment",
    "ExperimentSummary",
    "FetchmlConnectionError",
    "FetchmlError",
    "InvalidRequest",
    "Job",
    "JobError",
    "JobNotFound",
    "LoggerStats",
    "Metric",
    "MetricLogger",
    "MetricWatch",
    "MetricsPage",
    "MetricsRejected",
    "NotFound",
    "PermissionDenied",
    "ProtocolViolation",
    "Run",
    "RunSummary",
    "RunsPage",
    "ServerOverloaded",
    "Settings",
    "Status",
    "StorageError",
    "SyncClient",
    "WatchOptions",
    "WhoAmI",
    "resolve_settings",
]
