"""Every endpoint as a ``Call``: the path, the parameters and the answer's type, written once for both
the sync and the async client."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pydantic import TypeAdapter

from grft_client._base import Call, clean_params, path, raw_bytes
from grft_client.types import (
    Adapter,
    ChatCompletion,
    Checkpoint,
    Deleted,
    FileObject,
    Job,
    JobEvent,
    JobMetrics,
    Model,
    Page,
    Prediction,
    TextCompletion,
)

FileInput = str | Path | bytes | IO[bytes]
#: ``image=`` takes a path, raw bytes, or base64 text already encoded.
ImageInput = str | Path | bytes

_PREDICTIONS = TypeAdapter(list[Prediction])
_MODELS = TypeAdapter(list[Model])


# --- files -------------------------------------------------------------------------------------------


def upload_file(file: FileInput, purpose: str, filename: str | None) -> Call[FileObject]:
    """Not retried: a stream may not be readable twice, and a repeated upload stores a second copy."""
    on_done = None
    if isinstance(file, str | Path):
        source = Path(file)
        content: Any = source.open("rb")  # streamed, not read whole into memory; closed after sending
        on_done = content.close
        name = filename or source.name
    elif isinstance(file, bytes):
        content, name = file, filename or "upload"
    else:
        content, name = file, filename or Path(getattr(file, "name", "upload") or "upload").name
    return Call(
        "POST",
        "/v1/files",
        FileObject.model_validate,
        files={"file": (name, content, "application/octet-stream")},
        data={"purpose": purpose},
        retry=False,
        on_done=on_done,
    )


def list_files(after: str | None, limit: int | None, purpose: str | None) -> Call[Page[FileObject]]:
    return Call(
        "GET",
        "/v1/files",
        Page[FileObject].model_validate,
        params=clean_params(after=after, limit=limit, purpose=purpose),
    )


def get_file(file_id: str) -> Call[FileObject]:
    return Call("GET", path("/v1/files/{}", file_id), FileObject.model_validate)


def delete_file(file_id: str) -> Call[Deleted]:
    return Call("DELETE", path("/v1/files/{}", file_id), Deleted.model_validate)


def file_content(file_id: str) -> Call[bytes]:
    return Call("GET", path("/v1/files/{}/content", file_id), raw_bytes)


# --- jobs --------------------------------------------------------------------------------------------


def create_job(
    model: str,
    training_file: str,
    *,
    validation_file: str | None,
    method: str | Mapping[str, Any],
    hyperparameters: Mapping[str, Any] | None,
    seed: int | None,
    suffix: str | None,
    metadata: Mapping[str, str] | None,
    idempotency_key: str | None,
) -> Call[Job]:
    """``method`` is a type (``"grft"``, ``"lora"``, ...) whose ``hyperparameters`` are given apart,
    or the whole ``method`` object. Retried safely: the request carries an ``Idempotency-Key`` (one is
    made up when none is given), so a repeat returns the job the first one created."""
    if isinstance(method, str):
        method_body: dict[str, Any] = {
            "type": method,
            method: {"hyperparameters": dict(hyperparameters or {})},
        }
    else:
        if hyperparameters:
            raise ValueError("give hyperparameters inside the method object, or method as a type name")
        method_body = dict(method)
    body = clean_params(
        model=model,
        training_file=training_file,
        validation_file=validation_file,
        method=method_body,
        seed=seed,
        suffix=suffix,
        metadata=dict(metadata) if metadata is not None else None,
    )
    key = idempotency_key or f"grft-client-{uuid.uuid4()}"
    return Call(
        "POST", "/v1/fine_tuning/jobs", Job.model_validate, json=body, headers={"Idempotency-Key": key}
    )


def list_jobs(
    after: str | None, limit: int | None, status: str | None, metadata: Mapping[str, str] | None
) -> Call[Page[Job]]:
    params = clean_params(after=after, limit=limit, status=status)
    for key, value in (metadata or {}).items():
        params[f"metadata[{key}]"] = value
    return Call("GET", "/v1/fine_tuning/jobs", Page[Job].model_validate, params=params)


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", path("/v1/fine_tuning/jobs/{}", job_id), Job.model_validate)


def cancel_job(job_id: str) -> Call[Job]:
    # Not retried: after a lost answer, a repeat would report the job it cancelled as a conflict.
    return Call("POST", path("/v1/fine_tuning/jobs/{}/cancel", job_id), Job.model_validate, retry=False)


def delete_job(job_id: str) -> Call[Deleted]:
    return Call("DELETE", path("/v1/fine_tuning/jobs/{}", job_id), Deleted.model_validate)


def list_events(job_id: str, after: str | None, limit: int | None) -> Call[Page[JobEvent]]:
    return Call(
        "GET",
        path("/v1/fine_tuning/jobs/{}/events", job_id),
        Page[JobEvent].model_validate,
        params=clean_params(after=after, limit=limit),
    )


def list_checkpoints(job_id: str, after: str | None, limit: int | None) -> Call[Page[Checkpoint]]:
    return Call(
        "GET",
        path("/v1/fine_tuning/jobs/{}/checkpoints", job_id),
        Page[Checkpoint].model_validate,
        params=clean_params(after=after, limit=limit),
    )


def job_metrics(job_id: str) -> Call[JobMetrics]:
    return Call("GET", path("/v1/fine_tuning/jobs/{}/metrics", job_id), JobMetrics.parse)


def event_stream(job_id: str, after: str | None) -> tuple[str, dict[str, str]]:
    """The path and query of a job's Server-Sent-Events stream, resuming after event ``after``."""
    return path("/v1/fine_tuning/jobs/{}/events", job_id), clean_params(stream="true", after=after)


# --- adapters, predictions, models -------------------------------------------------------------------


def list_adapters(after: str | None, limit: int | None) -> Call[Page[Adapter]]:
    return Call(
        "GET", "/v1/adapters", Page[Adapter].model_validate, params=clean_params(after=after, limit=limit)
    )


def get_adapter(adapter_id: str) -> Call[Adapter]:
    return Call("GET", path("/v1/adapters/{}", adapter_id), Adapter.model_validate)


def delete_adapter(adapter_id: str) -> Call[Deleted]:
    return Call("DELETE", path("/v1/adapters/{}", adapter_id), Deleted.model_validate)


def adapter_content(adapter_id: str, format: str) -> tuple[str, dict[str, str]]:
    """The path and query of an adapter's tar: ``grft`` as trained, ``peft_lora`` its PEFT export."""
    if format not in ("grft", "peft_lora"):
        raise ValueError(f"format must be 'grft' or 'peft_lora' (got {format!r})")
    return path("/v1/adapters/{}/content", adapter_id), {"format": format}


def image_input(image: ImageInput) -> dict[str, str]:
    """``{"image": <base64>}`` from a path, the file's bytes, or base64 text."""
    if isinstance(image, Path) or (isinstance(image, str) and Path(image).is_file()):
        image = Path(image).read_bytes()
    if isinstance(image, bytes):
        return {"image": base64.b64encode(image).decode("ascii")}
    return {"image": image}


def predict_inputs(images: Iterable[ImageInput], texts: Iterable[str]) -> list[dict[str, str]]:
    inputs = [image_input(i) for i in images] + [{"text": t} for t in texts]
    if not inputs:
        raise ValueError("give at least one image or text to predict on")
    return inputs


def predict(
    adapter_id: str, images: Iterable[ImageInput] = (), texts: Iterable[str] = ()
) -> Call[list[Prediction]]:
    """One prediction per input, images first, then texts (a prediction changes nothing: retried)."""
    return Call(
        "POST",
        path("/v1/adapters/{}/predict", adapter_id),
        lambda body: _PREDICTIONS.validate_python(body["data"]),
        json={"inputs": predict_inputs(images, texts)},
    )


def predictions(items: Sequence[tuple[str, Mapping[str, str]]]) -> Call[list[Prediction]]:
    """Items ``(adapter_id, {"image": b64} | {"text": ...})`` answered in order, batched by base model."""
    body = {"items": [{"adapter": a, "input": dict(i)} for a, i in items]}
    return Call("POST", "/v1/predictions", lambda b: _PREDICTIONS.validate_python(b["data"]), json=body)


def list_models() -> Call[list[Model]]:
    return Call("GET", "/v1/models", lambda body: _MODELS.validate_python(body["data"]))


def get_model(model_id: str) -> Call[Model]:
    return Call("GET", path("/v1/models/{}", model_id), Model.model_validate)


# --- text generation -----------------------------------------------------------------------------------


def sampling(
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: str | Sequence[str] | None,
    seed: int | None,
) -> dict[str, Any]:
    return clean_params(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop if stop is None or isinstance(stop, str) else list(stop),
        seed=seed,
    )


def chat_body(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    return {"model": model, "messages": [dict(m) for m in messages], **params}


def chat_completion(body: Mapping[str, Any]) -> Call[ChatCompletion]:
    """A reply; retried like a prediction (generating changes nothing on the server)."""
    return Call("POST", "/v1/chat/completions", ChatCompletion.model_validate, json={**body, "stream": False})


def text_completion(body: Mapping[str, Any]) -> Call[TextCompletion]:
    return Call("POST", "/v1/completions", TextCompletion.model_validate, json={**body, "stream": False})
