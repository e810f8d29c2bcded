"""Tenant-scoped object storage against a real S3 server (moto's, on 127.0.0.1).

The worker reads ``s3://`` with the service's own credentials, which can read every bucket of the
endpoint, the artifact store with every tenant's uploads included. Each refused URI below names an
object that exists and that the bare loader *does* read with those credentials: the refusal is the
policy's (``GRFT_DATASET_S3_PREFIX``), not a missing object.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import boto3
import fsspec
import fsspec.config
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from api.jobs.service import check_dataset
from domain.settings import Settings
from grft_core.data.loading import load_dataset, load_train_val
from grft_core.errors import DatasetRejected
from worker.datasets import remote_copy

KEY, SECRET, REGION = "test-key", "test-secret", "us-east-1"


def table(*labels: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    for i, label in enumerate(labels):
        writer.writerow([f"example {i} of {label}", label])
    return out.getvalue().encode()


OBJECTS = {
    ("datasets", "tenant-a/train.csv"): table("pos", "neg", "pos", "neg"),
    ("datasets", "tenant-a/texts/val.csv"): table("neg", "pos"),
    ("datasets", "tenant-ab/train.csv"): table("ab-secret-x", "ab-secret-y"),
    ("datasets", "tenant-b/train.csv"): table("b-secret-x", "b-secret-y"),
    ("datasets", "shared.csv"): table("shared-x", "shared-y"),
    ("grft-artifacts", "files/tenant-b/file-b1"): table("upload-x", "upload-y"),
    ("grft-artifacts", "files/tenant-a/file-a1"): table("mine-x", "mine-y"),
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        client = boto3.client(
            "s3", endpoint_url=url, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION
        )
        for bucket in sorted({bucket for bucket, _ in OBJECTS}):
            client.create_bucket(Bucket=bucket)
        for (bucket, key), body in OBJECTS.items():
            client.put_object(Bucket=bucket, Key=key, Body=body)
        yield url
    finally:
        server.stop()


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The loader's s3 backend pointed at the local server, with the service's (all-reading) credentials."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(
        fsspec.config.conf,
        "s3",
        {"endpoint_url": endpoint, "key": KEY, "secret": SECRET, "client_kwargs": {"region_name": REGION}},
    )
    s3fs.S3FileSystem.clear_instance_cache()
    yield endpoint
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def scoped(tmp_path: Path) -> Settings:
    return Settings(
        env="test",
        secret_key="x",
        home=tmp_path / "home",
        artifact_url="s3://grft-artifacts",
        dataset_s3_prefix="s3://datasets/{tenant}/",
    )


def test_inside_the_prefix_reads_through_the_real_loader(s3: str, scoped: Settings, tmp_path: Path) -> None:
    uri = remote_copy(scoped, "tenant-a", "s3://datasets/tenant-a/train.csv", "training_file", tmp_path)
    assert uri == "s3://datasets/tenant-a/train.csv"  # read in place by the loader, through s3fs
    loaded = load_dataset(uri)
    assert loaded.classes == ["neg", "pos"]
    assert len(loaded) == 4
    # A folder under the prefix, as training and validation data of one job.
    val = remote_copy(scoped, "tenant-a", "s3://datasets/tenant-a/texts/", "validation_file", tmp_path)
    train, held_out = load_train_val(uri, val)
    assert (len(train), len(held_out)) == (4, 2)


def test_api_checks_against_the_callers_prefix(scoped: Settings) -> None:
    # The API's entry point passes the caller's tenant: tenant-a's URI is tenant-b's "outside".
    uri = "s3://datasets/tenant-a/train.csv"
    assert check_dataset(None, "tenant-a", scoped, uri, "training_file") == uri  # type: ignore[arg-type]
    with pytest.raises(DatasetRejected, match="prefix s3://datasets/tenant-b/"):
        check_dataset(None, "tenant-b", scoped, uri, "training_file")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("uri", "what"),
    [
        ("s3://datasets/tenant-b/train.csv", "another tenant's prefix"),
        ("s3://datasets/tenant-ab/train.csv", "a tenant whose id starts with ours"),
        ("s3://datasets/shared.csv", "outside every prefix"),
        ("s3://grft-artifacts/files/tenant-b/file-b1", "another tenant's upload in the artifact store"),
        ("s3://grft-artifacts/files/tenant-a/file-a1", "our own upload: by file id, not by s3 URI"),
    ],
)
def test_outside_the_prefix_is_refused(
    s3: str, scoped: Settings, tmp_path: Path, uri: str, what: str
) -> None:
    # The object is there, and the service's credentials read it (the loader's own backend, fsspec's
    # s3 with the same configuration): the confused deputy that the policy stops.
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    with fsspec.open(uri, "rb") as source:
        assert source.read() == OBJECTS[(bucket, key)], what
    with pytest.raises(DatasetRejected) as info:
        remote_copy(scoped, "tenant-a", uri, "training_file", tmp_path)
    assert info.value.param == "training_file"
    assert "prefix s3://datasets/tenant-a/" in info.value.message
    assert "secret" not in info.value.message
    assert "upload-" not in info.value.message


@pytest.mark.parametrize(
    "uri",
    [
        "s3://datasets/tenant-a/../tenant-b/train.csv",
        "s3://datasets/tenant-a/%2E%2E/tenant-b/train.csv",
        "s3://datasets/tenant-a%2F..%2Ftenant-b/train.csv",
        "s3://datasets/tenant-a/./../tenant-b/train.csv",
        "s3://datasets/tenant-a\\..\\tenant-b/train.csv",
        "s3://datasets/tenant-a/train.csv?versionId=x",
    ],
)
def test_traversal_spellings_are_refused(s3: str, scoped: Settings, tmp_path: Path, uri: str) -> None:
    with pytest.raises(DatasetRejected) as info:
        remote_copy(scoped, "tenant-a", uri, "training_file", tmp_path)
    assert info.value.param == "training_file"


def test_no_prefix_configured_refuses_every_s3_uri(s3: str, scoped: Settings, tmp_path: Path) -> None:
    scoped.dataset_s3_prefix = ""
    with pytest.raises(DatasetRejected, match="not enabled"):
        remote_copy(scoped, "tenant-a", "s3://datasets/tenant-a/train.csv", "training_file", tmp_path)


def test_artifact_bucket_refused_even_when_the_prefix_lives_in_it(
    s3: str, scoped: Settings, tmp_path: Path
) -> None:
    # An operator carved the tenants' dataset area out of the artifact bucket: only that area opens.
    scoped.dataset_s3_prefix = "s3://grft-artifacts/datasets/{tenant}/"
    for uri in ("s3://grft-artifacts/files/tenant-a/file-a1", "s3://grft-artifacts/files/tenant-b/file-b1"):
        with pytest.raises(DatasetRejected, match="prefix s3://grft-artifacts/datasets/tenant-a/"):
            remote_copy(scoped, "tenant-a", uri, "training_file", tmp_path)
