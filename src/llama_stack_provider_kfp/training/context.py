"""What one process of a train step trains with, handed to the engine explicitly: the job,
where its inputs and outputs are, which rank this process is, where metrics and phase timings
go. Nothing below the train step reads the ranks from the environment (only
training.distributed does, once) or finds the trackers through a side channel."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ..core.phases import Phases
from ..core.spec import JobSpec

if TYPE_CHECKING:  # torch: imported by the train step, not by prepare-data
    from .distributed import Ranks
    from .io import Output
    from .tracking import Tracker


@dataclass(frozen=True)
class TrainingContext:
    spec: JobSpec
    model_dir: Path
    output: Output
    train_path: str
    val_path: str | None
    ranks: Ranks
    tracker: Tracker
    # Where this process's seconds go (core.phases): the engine marks imports_done (by
    # calling imports_done()) and model_loaded, the progress logger first_step and
    # training_done, the engine exports_done and the export seconds of every epoch.
    phases: Phases
    # This process trains this one job and ends (a pipeline step, a torchrun rank), so what
    # its imports built can leave the garbage collector's reach (imports_done).
    one_job_process: bool = False

    def imports_done(self) -> None:
        """The engine has imported its libraries. In a one-job process, their ~440,000
        objects (torch, torchtune, datasets...) are frozen out of the garbage collector: a
        full collection then skips them (torchtune's checkpointer runs one when it loads the
        weights: 0.25 s here, ~0 frozen). A process that trains several jobs does not freeze:
        the garbage of an earlier job would stay for good."""
        self.phases.mark("imports_done")
        if self.one_job_process:
            gc.freeze()


class _JobFile(BaseModel):
    """A job file another process of the step reads: a renamed field fails where it is
    written."""

    model_config = ConfigDict(extra="forbid")

    spec: str  # the JobSpec's JSON
    output_uri: str


class NodeJob(_JobFile):
    """What each node of a TrainJob trains (the job file the train step stages to S3 for
    training.node_main)."""

    model_uri: str
    train_uri: str
    val_uri: str | None


class RankJob(_JobFile):
    """What each rank trains (the job file torchrun's ranks read; rank_main)."""

    model_dir: str
    train_path: str
    val_path: str | None
    # Filled in by launch: where ranks leave the result and their errors.
    exchange: str = ""
