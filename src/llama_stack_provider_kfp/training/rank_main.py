"""One rank of a multi-device train step (started by torchrun, see training.distributed).

Every rank trains; rank 0 writes the outputs through the job's Output and hands the result
back to the step that launched the ranks.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..boundary.files import write_json
from ..core.spec import JobSpec
from .context import RankJob
from .distributed import join_ranks
from .io import Output
from .steps import train


def main(job_file: str) -> None:
    job = RankJob.model_validate_json(Path(job_file).read_text())
    exchange = Path(job.exchange)
    ranks = join_ranks()
    try:
        spec = JobSpec.model_validate_json(job.spec)
        output = Output(job.output_uri)
        result = train(
            spec, Path(job.model_dir), output, job.train_path, job.val_path, ranks,
            one_job_process=True,  # a torchrun rank: one job, then it ends
        )  # fmt: skip
        if ranks.main:
            write_json(exchange / "result.json", result)
    except BaseException as e:
        (exchange / f"error-rank{ranks.rank}.txt").write_text(
            f"rank {ranks.rank}: {type(e).__name__}: {e}"
        )
        raise


if __name__ == "__main__":
    main(sys.argv[1])
