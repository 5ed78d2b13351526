"""A SummaryWriter with the scalar surface of torch.utils.tensorboard's, writing to a run:

    from fetchml.integrations.tensorboard import SummaryWriter
    # was: from torch.utils.tensorboard import SummaryWriter

`add_scalar`, `add_scalars` (names `main_tag/tag`), `add_hparams` (params and
metrics), `flush`, `close`, and `with` (the run fails when the block raises).
`walltime` is the point's timestamp. `log_dir` (plus `comment`) becomes the
run's name unless `name=` is given; torch's file options are accepted and
ignored. A missing `global_step` is one more than the name's previous step.
Images, histograms, graphs and text are not supported (AttributeError).
"""

from collections.abc import Mapping
from typing import Any

from fetchml.client import MetricLogger

from . import RunHandle, RunOwner

__all__ = ["SummaryWriter"]


class SummaryWriter(RunOwner):
    def __init__(
        self,
        log_dir: str | None = None,
        comment: str = "",
        purge_step: int | None = None,
        max_queue: int = 10,
        flush_secs: int = 120,
        filename_suffix: str = "",
        *,
        logger: MetricLogger | None = None,
        **logger_kwargs: Any,
    ) -> None:
        """`logger` or MetricLogger keyword arguments (a run it starts and `close()` finishes)."""
        del purge_step, max_queue, flush_secs, filename_suffix  # files only
        if logger is None and log_dir is not None and "name" not in logger_kwargs:
            logger_kwargs["name"] = f"{log_dir}{comment}"
        self.run = RunHandle(logger, logger_kwargs)
        self.run.logger  # noqa: B018 -- start the run now, so a bad key or URL raises here

    def add_scalar(
        self,
        tag: str,
        scalar_value: Any,
        global_step: int | None = None,
        walltime: float | None = None,
        new_style: bool = False,
        double_precision: bool = False,
    ) -> None:
        self.run.log({tag: scalar_value}, global_step, walltime)

    def add_scalars(
        self,
        main_tag: str,
        tag_scalar_dict: Mapping[str, Any],
        global_step: int | None = None,
        walltime: float | None = None,
    ) -> None:
        self.run.log(
            {f"{main_tag}/{tag}": value for tag, value in tag_scalar_dict.items()},
            global_step,
            walltime,
        )

    def add_hparams(
        self,
        hparam_dict: Mapping[str, Any],
        metric_dict: Mapping[str, Any],
        hparam_domain_discrete: Mapping[str, list[Any]] | None = None,
        run_name: str | None = None,
        global_step: int | None = None,
    ) -> None:
        """`hparam_dict` becomes the run's params, `metric_dict` is logged at `global_step`."""
        self.run.set_params(hparam_dict)
        if metric_dict:
            self.run.log(metric_dict, global_step)

    def flush(self) -> None:
        self.run.flush()
