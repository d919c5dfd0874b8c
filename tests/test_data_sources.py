"""Dataset locations with real parts: moto's S3 on loopback, an HTTPS server on loopback with a
CA made on the fly, a private Hugging Face cache; every format at every location."""

from __future__ import annotations

import http.server
import io
import json
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_server import iam_enforced, iam_user, s3_server
from tls import self_signed

from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.boundary.data_uri import (
    DataSourceError,
    SampleReader,
    fetch,
    iter_rows,
    sample_rows,
)
from llama_stack_provider_kfp.boundary.s3_errors import NoSuchBucket
from llama_stack_provider_kfp.core.errors import InvalidRequest, Refused, Unavailable
from llama_stack_provider_kfp.core.http_policy import HttpPolicy
from llama_stack_provider_kfp.core.locations import parse

ROWS = [
    {"messages": json.dumps([{"role": "user", "content": f"q{i}"},
                             {"role": "assistant", "content": f"a{i}"}])}
    for i in range(40)
]  # fmt: skip
SECRET_BODY = "INTERNAL-DETAIL-never-echoed"


def _encode(kind: str, rows: list[dict]) -> bytes:
    if kind == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if kind == "json":
        return json.dumps(rows, indent=1).encode()
    if kind == "csv":
        out = io.StringIO()
        import csv

        w = csv.DictWriter(out, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        return out.getvalue().encode()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


KINDS = ("jsonl", "json", "csv", "parquet")


# ---- HTTPS -------------------------------------------------------------------------------


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    seen: list[tuple[str, dict]] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append((self.path, dict(self.headers)))
        self.path = self.path.split("?", 1)[0]
        port = self.server.server_address[1]
        if self.path == "/elsewhere.jsonl":  # the same server under another host name
            return self._answer(302, b"", {"Location": f"https://localhost:{port}/d.jsonl"})
        if self.path == "/moved.jsonl":
            return self._answer(301, b"", {"Location": "/d.jsonl"})
        if self.path == "/private.jsonl":
            return self._answer(403, SECRET_BODY.encode())
        if self.path == "/broken.jsonl":
            return self._answer(500, SECRET_BODY.encode())
        if self.path == "/auth.jsonl":
            if self.headers.get("Authorization") != "Bearer data-token-xyz":
                return self._answer(401, SECRET_BODY.encode())
            return self._answer(200, self.files["/d.jsonl"])
        body = self.files.get(self.path)
        if body is None:
            return self._answer(404, SECRET_BODY.encode())
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=0-") and self.path != "/norange.jsonl":
            end = int(ranged.removeprefix("bytes=0-"))
            part = body[: end + 1]
            return self._answer(
                206, part, {"Content-Range": f"bytes 0-{len(part) - 1}/{len(body)}"}
            )
        if self.path == "/unsized.jsonl":  # no Content-Length: read until the cap
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            return None
        return self._answer(200, body)

    def _answer(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    files = {f"/d.{k}": _encode(k, ROWS) for k in KINDS}
    files["/norange.jsonl"] = files["/unsized.jsonl"] = files["/d.jsonl"]
    _Files.files = files
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"https://127.0.0.1:{srv.server_address[1]}"
    policy = HttpPolicy(allowed_hosts=["127.0.0.1"], ca_bundle=str(cert))
    yield base, policy
    srv.shutdown()


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_over_https(https, kind, tmp_path):
    base, policy = https
    url = f"{base}/d.{kind}"
    assert list(iter_rows(url, policy)) == ROWS
    reader = SampleReader(http=policy, max_bytes=1 << 20)
    assert sample_rows(url, 5, reader) == ROWS[:5]
    # 1 KiB of a 4 KiB file (Parquet: 1.1 KiB): the complete rows in it.
    got = sample_rows(url, 5, SampleReader(http=policy, max_bytes=1024))
    if kind == "parquet":
        assert got is None  # its index is at the end: not checked from a prefix
    else:
        assert got == ROWS[:5]
    # The step downloads the file under a name that keeps its format.
    local = fetch(url, tmp_path, policy)
    assert local.endswith(f".{kind}") and Path(local).read_bytes() == _Files.files[f"/d.{kind}"]


def test_https_sample_reads_a_bounded_prefix(https):
    base, policy = https
    _Files.seen.clear()
    assert sample_rows(f"{base}/d.jsonl", 3, SampleReader(http=policy, max_bytes=4096)) == ROWS[:3]
    assert _Files.seen[-1][1]["Range"] == "bytes=0-4095"
    # A server that ignores Range: the reader still stops at the cap.
    assert (
        sample_rows(f"{base}/norange.jsonl", 3, SampleReader(http=policy, max_bytes=4096))
        == ROWS[:3]
    )


def test_https_redirects_same_host_only(https):
    base, policy = https
    assert list(iter_rows(f"{base}/moved.jsonl", policy)) == ROWS
    both = policy.model_copy(update={"allowed_hosts": ["127.0.0.1", "localhost"]})
    with pytest.raises(DataSourceError, match="redirects to another host") as err:
        sample_rows(f"{base}/elsewhere.jsonl", 1, SampleReader(http=both))
    assert "localhost" not in str(err.value)  # the answer's Location is not echoed


def test_https_hosts_not_allowed_are_never_contacted(https):
    base, policy = https
    _Files.seen.clear()
    listed = policy.model_copy(update={"allowed_hosts": ["data.example.com"]})
    with pytest.raises(DataSourceError, match=r"not in the provider's data_sources\.allowed_hosts"):
        sample_rows(f"{base}/d.jsonl", 1, SampleReader(http=listed))
    # No list: any public host, but not loopback, private or link-local addresses.
    anyhost = policy.model_copy(update={"allowed_hosts": []})
    for url in (f"{base}/d.jsonl", "http://169.254.169.254/latest.json", "http://10.0.0.1/x.csv"):
        with pytest.raises(DataSourceError, match="not a public address"):
            sample_rows(url, 1, SampleReader(http=anyhost))
    assert _Files.seen == []


def test_https_size_cap(https, tmp_path):
    base, policy = https
    capped = policy.model_copy(update={"max_bytes": 1000})
    for path in ("/d.jsonl", "/unsized.jsonl"):  # declared length, and counted while read
        with pytest.raises(
            DataSourceError, match=r"larger than the provider's data_sources\.max_bytes"
        ):
            fetch(f"{base}{path}", tmp_path, capped)
    with pytest.raises(DataSourceError, match="max_bytes"):
        sample_rows(f"{base}/d.jsonl", 1, SampleReader(http=capped))


def test_https_errors_by_cause_never_echo_the_body(https):
    base, policy = https
    cases = [
        ("/nope.jsonl", DataSourceError, "does not exist (HTTP 404)"),
        ("/private.jsonl", Refused, "HTTP 403"),
        ("/broken.jsonl", Unavailable, "HTTP 500"),
    ]
    for path, kind, words in cases:
        with pytest.raises(kind, match=words.replace("(", r"\(").replace(")", r"\)")) as err:
            sample_rows(f"{base}{path}?sig=abc", 1, SampleReader(http=policy))
        assert SECRET_BODY not in str(err.value) and "sig=abc" not in str(err.value)
    untrusted = policy.model_copy(update={"ca_bundle": None})
    with pytest.raises(Unavailable, match="ca_bundle"):
        sample_rows(f"{base}/d.jsonl", 1, SampleReader(http=untrusted))


def test_https_bearer_token_by_variable_name(https, monkeypatch):
    base, policy = https
    with_token = policy.model_copy(update={"token_env": "DATA_TOKEN"})
    monkeypatch.delenv("DATA_TOKEN", raising=False)
    with pytest.raises(Refused, match="DATA_TOKEN, which holds the token, is not set"):
        sample_rows(f"{base}/auth.jsonl", 1, SampleReader(http=with_token))
    monkeypatch.setenv("DATA_TOKEN", "data-token-xyz")
    assert list(iter_rows(f"{base}/auth.jsonl", with_token)) == ROWS
    monkeypatch.setenv("DATA_TOKEN", "wrong-token")
    with pytest.raises(Refused) as err:
        sample_rows(f"{base}/auth.jsonl", 1, SampleReader(http=with_token))
    assert "wrong-token" not in str(err.value)


def test_data_sources_config():
    from llama_stack_provider_kfp.config import DataSourcesConfig, KFPPostTrainingConfig

    cfg = KFPPostTrainingConfig(data_sources={"allowed_hosts": "a.example.com, b.example.com",
                                              "ca_bundle": "", "token_env": ""})  # fmt: skip
    assert cfg.data_sources.allowed_hosts == ["a.example.com", "b.example.com"]
    assert cfg.data_sources.http_policy().token_env is None
    assert DataSourcesConfig(allowed_hosts="").allowed_hosts == []
    with pytest.raises(ValueError, match=r"token_env needs data_sources\.allowed_hosts"):
        DataSourcesConfig(token_env="DATA_TOKEN")


# ---- S3 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    with s3_server() as env:
        client = storage.client()
        client.create_bucket(Bucket="data")
        for kind in KINDS:
            client.put_object(Bucket="data", Key=f"sets/d.{kind}", Body=_encode(kind, ROWS))
        client.put_object(Bucket="data", Key="sets/empty.jsonl", Body=b"")
        yield env


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_over_s3(s3, kind, tmp_path):
    uri = f"s3://data/sets/d.{kind}"
    assert list(iter_rows(uri)) == ROWS
    assert sample_rows(uri, 5, SampleReader()) == ROWS[:5]
    got = sample_rows(uri, 5, SampleReader(max_bytes=1024))
    assert got == (None if kind == "parquet" else ROWS[:5])
    assert Path(fetch(uri, tmp_path)).read_bytes() == _encode(kind, ROWS)


def test_s3_missing_empty_and_unknown_bucket(s3):
    with pytest.raises(DataSourceError, match=r"s3://data/sets/nope\.jsonl does not exist"):
        sample_rows("s3://data/sets/nope.jsonl", 1, SampleReader())
    with pytest.raises(DataSourceError, match="does not exist"):
        list(iter_rows("s3://data/sets/nope.jsonl"))
    assert sample_rows("s3://data/sets/empty.jsonl", 5, SampleReader()) == []
    with pytest.raises(NoSuchBucket, match="no-such-bucket"):
        sample_rows("s3://no-such-bucket/d.jsonl", 1, SampleReader())
    with pytest.raises(DataSourceError, match=r"end it with \.jsonl, \.json, \.csv or \.parquet"):
        sample_rows("s3://data/sets/d.txt", 1, SampleReader())


def test_s3_denied_read_names_bucket_key_and_operation(s3):
    # In another process, as the server and the step are: moto, in this one, would judge the
    # request by this process's own AWS_* variables.
    keys = iam_user(s3["AWS_ENDPOINT_URL"], "reader-without-rights")
    code = (
        "from llama_stack_provider_kfp.boundary.data_uri import "
        "SampleReader, iter_rows, sample_rows\n"
        "from llama_stack_provider_kfp.core.errors import Refused\n"
        "for read in (lambda u: sample_rows(u, 1, SampleReader()), lambda u: list(iter_rows(u))):\n"
        "    try:\n"
        "        read('s3://data/sets/d.jsonl')\n"
        "    except Refused as e:\n"
        "        print(e)\n"
    )
    with iam_enforced(s3["AWS_ENDPOINT_URL"]):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **keys},
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    sample, download = out.stdout.splitlines()
    # The sample is one ranged GET; the step's download asks for the size first.
    assert "S3 denied GetObject on bucket 'data', key 'sets/d.jsonl'" in sample, out
    assert "S3 denied HeadObject on bucket 'data', key 'sets/d.jsonl'" in download, out
    assert keys["AWS_SECRET_ACCESS_KEY"] not in out.stdout + out.stderr


def test_s3_stopped_server_is_unavailable(monkeypatch):
    with s3_server() as env:
        endpoint = env["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # nothing listens there any more
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(Unavailable, match="could not be reached"):
        sample_rows("s3://data/d.jsonl", 1, SampleReader(s3_timeout=2))


# ---- Hugging Face cache ------------------------------------------------------------------


def test_hf_dataset_from_the_local_cache(tmp_path, monkeypatch):
    snap = tmp_path / "hf" / "hub" / "datasets--acme--chats" / "snapshots" / ("0" * 40)
    (snap / "data").mkdir(parents=True)
    (snap / "other").mkdir()
    (snap / "data" / "train.jsonl").write_bytes(_encode("jsonl", ROWS))
    (snap / "other" / "train.jsonl").write_bytes(_encode("jsonl", ROWS[:3]))
    (snap / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        "    path: data/train.jsonl\n- config_name: short\n  data_files:\n  - split: train\n"
        "    path: other/train.jsonl\n---\n"
    )
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert list(iter_rows("hf://acme/chats")) == ROWS
    assert sample_rows("hf://acme/chats", 4) == ROWS[:4]
    assert list(iter_rows("hf://acme/chats:short?split=train")) == ROWS[:3]
    with pytest.raises(DataSourceError, match=r"is not hf://<organisation>/<dataset>"):
        sample_rows("hf://acme/chats:bad config", 1)
    with pytest.raises((DataSourceError, Unavailable), match=r"acme/not-cached"):
        sample_rows("hf://acme/not-cached", 1)


def test_pvc_location_is_parsed_before_anything(tmp_path):
    with pytest.raises(InvalidRequest, match="pvc://<claim name>"):
        sample_rows("pvc://Bad_Claim/x.jsonl", 1, SampleReader(remote=True))
    assert parse("pvc://data-pvc/x.jsonl").mount_path == "/mnt/models/data-pvc"
