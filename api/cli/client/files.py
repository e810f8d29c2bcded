"""``grft files``: datasets uploaded to the server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.cli.client.common import (
    JsonOpt,
    connection,
    errors,
    fields,
    out,
    print_json,
    table,
    when,
)
from api.cli.client.common import group as make_group
from grft_client import FileObject

files_app = make_group("files", "Datasets on the server: upload, list, get, download, delete.")

FileId = Annotated[str, typer.Argument(help="The file's id (file-...).")]


def show_file(file: FileObject) -> None:
    fields(
        [
            ("id", file.id),
            ("filename", file.filename),
            ("bytes", f"{file.bytes:,}"),
            ("purpose", file.purpose),
            ("created", when(file.created_at)),
        ]
    )


@files_app.command("upload")
def upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The dataset file to upload.")],
    purpose: Annotated[str, typer.Option(help="What the file is for.")] = "fine-tune",
    as_json: JsonOpt = False,
) -> None:
    """Upload a dataset (a CSV, JSONL, Parquet file, or a .zip / .tar.gz of an image folder)."""
    with errors(as_json):
        file = connection(ctx).client().files.upload(path, purpose=purpose)
    if as_json:
        print_json(file)
    else:
        out.print(f"uploaded {file.filename} ({file.bytes:,} bytes) as {file.id}", highlight=False)


@files_app.command("list")
def list_files(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=100, help="At most this many (per page with --all).")] = 20,
    after: Annotated[str | None, typer.Option(help="Start after this file id.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Every file, page by page.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List uploaded files, newest first."""
    with errors(as_json):
        client = connection(ctx).client()
        if all_pages:
            items, more = list(client.files.iter(limit=limit)), False
        else:
            page = client.files.list(limit=limit, after=after)
            items, more = page.data, page.has_more
    if as_json:
        print_json(items)
        return
    table(
        ("id", "filename", "bytes", "purpose", "created"),
        [(f.id, f.filename, f"{f.bytes:,}", f.purpose, when(f.created_at)) for f in items],
    )
    if more:
        out.print(f"(more: --after {items[-1].id}, or --all)", highlight=False)


@files_app.command("get")
def get(ctx: typer.Context, file_id: FileId, as_json: JsonOpt = False) -> None:
    """Show one file."""
    with errors(as_json):
        file = connection(ctx).client().files.get(file_id)
    if as_json:
        print_json(file)
    else:
        show_file(file)


@files_app.command("download")
def download(
    ctx: typer.Context,
    file_id: FileId,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Where (default: its filename).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a file's content."""
    with errors(as_json):
        client = connection(ctx).client()
        target = output or Path(client.files.get(file_id).filename)
        size = client.files.download(file_id, target)
    if as_json:
        print_json({"id": file_id, "path": str(target), "bytes": size})
    else:
        out.print(f"wrote {target} ({size:,} bytes)", highlight=False)


@files_app.command("delete")
def delete(ctx: typer.Context, file_id: FileId, as_json: JsonOpt = False) -> None:
    """Delete a file (refused while a job still reads it)."""
    with errors(as_json):
        deleted = connection(ctx).client().files.delete(file_id)
    if as_json:
        print_json(deleted)
    else:
        out.print(f"deleted {deleted.id}", highlight=False)
