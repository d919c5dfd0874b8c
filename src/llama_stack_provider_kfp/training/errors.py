"""Record why a step failed where the provider can read it: `<output>/error.json`."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from pathlib import Path

from .. import storage
from ..atomic_json import write_json


@contextlib.contextmanager
def report_errors(output_uri: str, step: str) -> Iterator[None]:
    try:
        yield
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt | SystemExit):
            error = {
                "step": step,
                "message": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-4000:],
            }
            if storage.is_s3(output_uri):
                storage.write_json(storage.join(output_uri, "error.json"), error)
            else:
                write_json(Path(output_uri) / "error.json", error)
        raise
