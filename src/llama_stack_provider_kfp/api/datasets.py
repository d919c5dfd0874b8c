"""A registered dataset -> what the backend stages: its URI, or its rows when inline.

Checks a bounded sample of rows against the data format (prepare-data checks every row): the
first rows, from at most `data_sources.sample_max_bytes` of an s3 or http(s) object; none of a
pvc:// dataset, which the server cannot read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from llama_stack_api import DatasetIO, Datasets
from llama_stack_api.common.errors import DatasetNotFoundError
from llama_stack_api.datasetio.models import IterRowsRequest
from llama_stack_api.datasets.models import GetDatasetRequest

from ..boundary import data_uri
from ..boundary.s3_errors import NoSuchBucket
from ..config import KFPPostTrainingConfig
from ..core.errors import InvalidRequest, Upstream
from ..core.rows import RowError, to_messages, to_preference
from ..jobs.backend import DatasetSource

_SHAPES = ("; or, whatever data_format says, messages (OpenAI chat: a list of {role, content}) "
           "or conversations (ShareGPT: a list of {from: human|gpt|system, value})")  # fmt: skip
_COLUMNS_HELP = {
    "instruct": "chat_completion_input (JSON list of messages) and expected_answer" + _SHAPES,
    "dialog": "dialog (JSON list of messages ending with the assistant's)" + _SHAPES,
    "preference": "prompt, chosen and rejected (strings or lists of messages)",
}


def sample_reader(config: KFPPostTrainingConfig) -> data_uri.SampleReader:
    """How the server reads a dataset's sample: its S3 client on the endpoint the job's steps
    use (remote: remote.s3_endpoint_url; locally the AWS environment), with the request
    timeout, so that a slow store cannot hold a submit."""
    sources, remote = config.data_sources, config.remote
    endpoint = ca = None
    if config.mode == "remote":
        endpoint = remote.s3_endpoint_url
        ca = str(remote.s3_ca_bundle) if remote.s3_ca_bundle else None
    return data_uri.SampleReader(
        http=sources.http_policy(), max_bytes=sources.sample_max_bytes,
        remote=config.mode == "remote", s3_endpoint=endpoint, s3_ca_bundle=ca,
        s3_timeout=sources.timeout_seconds,
    )  # fmt: skip


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
    datasets: Datasets,
    datasetio: DatasetIO,
    dataset_id: str,
    data_format: str,
    sample: int,
    reader: data_uri.SampleReader | None = None,
    check_uri: Callable[[str, str], None] | None = None,
) -> DatasetSource:
    """The dataset's URI, or its rows when registered inline; checks the first `sample` rows
    (read by `reader`). `check_uri(uri, what)` may refuse the URI before anything is read."""
    try:
        dataset = await datasets.get_dataset(GetDatasetRequest(dataset_id=dataset_id))
    except DatasetNotFoundError:
        raise InvalidRequest(
            f"dataset {dataset_id!r} is not registered; register it first "
            "(client.beta.datasets.register) or fix the dataset_id"
        ) from None
    source = dataset.source
    if source.type == "uri":
        if data_uri.has_credentials(source.uri):
            raise InvalidRequest(
                f"dataset {dataset_id!r} carries a credential in its URI (a token, a password "
                "or a presigned URL's signature); register it without one and give the "
                "credential through the environment (HF_TOKEN, AWS_*, data_sources.token_env), "
                "which is never stored in job records or pipeline parameters"
            )
        if check_uri is not None:
            check_uri(source.uri, f"dataset {dataset_id!r}: its file")
        try:
            sampled = await asyncio.to_thread(data_uri.sample_rows, source.uri, sample, reader)
        except InvalidRequest as e:  # DataSourceError, a malformed location
            raise InvalidRequest(f"dataset {dataset_id!r}: {e}") from None
        except NoSuchBucket as e:  # a location the caller named: theirs to fix
            raise InvalidRequest(f"dataset {dataset_id!r}: {e}") from None
        except Upstream as e:  # S3 / an http(s) server refused or failed: 502 / 503
            raise type(e)(f"dataset {dataset_id!r}: {e}") from None
        if sampled is not None:  # None: the server cannot look; prepare-data checks all rows
            check_sample(dataset_id, sampled, data_format)
        return source.uri
    # One call for all rows: each iterrows call rebuilds the whole dataset (FACTS.md).
    page = await datasetio.iterrows(IterRowsRequest(dataset_id=dataset_id, limit=-1))
    rows = list(page.data)
    check_sample(dataset_id, rows[:sample], data_format)
    return rows
