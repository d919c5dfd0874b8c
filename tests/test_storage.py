"""S3 staging through real boto3 against an S3-compatible server on loopback (moto, a
stand-in for MinIO/ODF/Ceph), and safe tarball extraction."""

from __future__ import annotations

import filecmp
import io
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from s3_server import s3_server

from harness.server import ROOT
from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.core.errors import Refused, Unavailable
from llama_stack_provider_kfp.core.locations import parse


@pytest.fixture(scope="module")
def s3():
    with s3_server() as env:
        storage.client().create_bucket(Bucket="models")
        yield env


@pytest.mark.parametrize("layout", ["hf", "meta"])
def test_upload_model_round_trip(s3, tiny_models, tmp_path, layout):
    src = tiny_models / layout
    uri = f"s3://models/tiny-{layout}.tar.gz"
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "upload-model.py"), str(src), uri],
        check=True, capture_output=True, text=True, env={**s3, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert "uploaded" in out.stdout
    archive = storage.download_file(parse(uri), tmp_path / "m.tar.gz")
    assert archive.read_bytes()[:2] == b"\x1f\x8b"  # really gzip
    with tarfile.open(archive) as tar:
        first = tar.getnames()[0]
    assert first in ("config.json", "params.json")  # architecture readable without the weights
    extracted = storage.safe_extract(archive, tmp_path / "x")
    cmp = filecmp.dircmp(src, extracted)
    files = [p.relative_to(src) for p in src.rglob("*") if p.is_file()]
    for rel in files:
        assert filecmp.cmp(src / rel, extracted / rel, shallow=False), rel
    assert not cmp.left_only and not cmp.right_only


def test_upload_model_help_and_refusals(tmp_path):
    script = str(ROOT / "scripts" / "upload-model.py")
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert "gzip tarball" in help_text.stdout and "AWS_ENDPOINT_URL" in help_text.stdout
    bad = subprocess.run(
        [sys.executable, script, str(tmp_path), "s3://b/model.tar"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and ".tar.gz" in bad.stderr


def _tarball(path: Path, member: tarfile.TarInfo) -> Path:
    with tarfile.open(path, mode="w:gz") as tar:
        tar.addfile(member, io.BytesIO(b"x") if member.isfile() else None)
    return path


@pytest.mark.parametrize("kind", ["traversal", "symlink-out"])
def test_safe_extract_refuses_escapes(tmp_path, kind):
    info = tarfile.TarInfo("../evil.txt" if kind == "traversal" else "link")
    if kind == "symlink-out":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        info.size = 1
    archive = _tarball(tmp_path / "evil.tar.gz", info)
    with pytest.raises(tarfile.FilterError):
        storage.safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_keeps_absolute_names_inside(tmp_path):
    info = tarfile.TarInfo(str(tmp_path / "outside.txt"))
    info.size = 1
    dest = storage.safe_extract(_tarball(tmp_path / "abs.tar.gz", info), tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()
    assert (dest / str(tmp_path).lstrip("/") / "outside.txt").is_file()


def test_prefix_download_and_json(s3, tmp_path):
    s3c = storage.client()
    for key in ("m/config.json", "m/sub/w.safetensors"):
        s3c.put_object(Bucket="models", Key=key, Body=b"{}")
    got = storage.download_prefix(parse("s3://models/m"), tmp_path / "m")
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == [
        "config.json",
        "sub/w.safetensors",
    ]
    storage.write_json(parse("s3://models/j/progress.json"), {"step": 3})
    assert storage.read_json(parse("s3://models/j/progress.json")) == {"step": 3}
    assert storage.read_json(parse("s3://models/j/missing.json")) is None


def test_storage_failures_are_explained_by_cause(s3, tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("{}\n")
    with pytest.raises(Refused) as refused:
        storage.upload_file(f, parse("s3://no-such-bucket/x.jsonl"))
    assert "NoSuchBucket" in str(refused.value) and "'no-such-bucket'" in str(refused.value)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    dead = storage.client(closed)
    dead.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(Unavailable) as unreachable:
        storage.upload_file(f, parse("s3://models/x.jsonl"), dead)
    assert "could not be reached" in str(unreachable.value)


def test_a_blackholed_s3_endpoint_fails_within_the_timeout(monkeypatch):
    """The server's S3 client gives up (ReadTimeout) instead of hanging a request: a socket
    that accepts and never answers stands in for a blackholed route."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        s3 = storage.client(f"http://127.0.0.1:{hole.getsockname()[1]}", timeout=0.3)
        with pytest.raises(Unavailable) as err:
            storage.list_keys(parse("s3://models/m"), s3)
    assert "could not be reached for ListObjectsV2 on bucket 'models'" in str(err.value)
    assert "ReadTimeoutError" in str(err.value)
