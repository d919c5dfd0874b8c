"""A registered dataset -> what the backend stages: its URI, or its rows when inline.

Checks a bounded sample of rows against the data format (prepare-data checks every row).
"""

from __future__ import annotations

import asyncio

from llama_stack_api import DatasetIO, Datasets
from llama_stack_api.common.errors import DatasetNotFoundError
from llama_stack_api.datasetio.models import IterRowsRequest
from llama_stack_api.datasets.models import GetDatasetRequest

from ..core import data_uri
from ..core.errors import InvalidRequest
from ..core.rows import RowError, to_messages, to_preference
from ..jobs.backend import DatasetSource

_COLUMNS_HELP = {
    "instruct": "chat_completion_input (JSON list of messages) and expected_answer",
    "dialog": "dialog (JSON list of messages ending with the assistant's)",
    "preference": "prompt, chosen and rejected (strings or lists of messages)",
}


def check_sample(dataset_id: str, rows: list[dict], data_format: str) -> None:
    if not rows:
        raise InvalidRequest(f"dataset {dataset_id!r} is empty; it needs at least one row")
    for i, row in enumerate(rows, 1):
        try:
            if data_format == "preference":
                to_preference(row)
            else:
                to_messages(row, data_format)
        except RowError as e:
            raise InvalidRequest(
                f"dataset {dataset_id!r} row {i} does not match data_format={data_format!r}: "
                f"{e}. Expected columns: {_COLUMNS_HELP[data_format]}"
            ) from None


async def dataset_source(
    datasets: Datasets, datasetio: DatasetIO, dataset_id: str, data_format: str, sample: int
) -> DatasetSource:
    """The dataset's URI, or its rows when registered inline; checks the first `sample` rows."""
    try:
        dataset = await datasets.get_dataset(GetDatasetRequest(dataset_id=dataset_id))
    except DatasetNotFoundError:
        raise InvalidRequest(
            f"dataset {dataset_id!r} is not registered; register it first "
            "(client.beta.datasets.register) or fix the dataset_id"
        ) from None
    source = dataset.source
    found: DatasetSource
    if source.type == "uri":
        if data_uri.has_credentials(source.uri):
            raise InvalidRequest(
                f"dataset {dataset_id!r} carries a credential in its URI; register it without "
                "one and give the token through the environment (HF_TOKEN), which is never "
                "stored in job records or pipeline parameters"
            )
        try:
            rows = await asyncio.to_thread(data_uri.sample_rows, source.uri, sample)
        except data_uri.DataSourceError as e:
            raise InvalidRequest(f"dataset {dataset_id!r}: {e}") from None
        found = source.uri
    else:
        # One call for all rows: each iterrows call rebuilds the whole dataset (FACTS.md).
        page = await datasetio.iterrows(IterRowsRequest(dataset_id=dataset_id, limit=-1))
        found = rows = list(page.data)
    check_sample(dataset_id, rows[:sample], data_format)
    return found
