"""Peak memory of the API's and the worker's code under the attack inputs of issue 10, limits on or off.

Each attack runs in a fresh Python process that imports what the API or the worker imports, builds
nothing big itself, runs the attacked code and prints its peak RSS (``ru_maxrss``); a baseline process
doing the same imports gives the figure to subtract. ``--limits off`` lifts every bound through the
settings and arguments the service passes (what the code did before the bounds existed).

    uv run --frozen python -m bench.attack_memory            # limits on, then off; a Markdown table
    uv run --frozen python -m bench.attack_memory --limits on

tests/security/test_bombs.py runs the same probes with limits on and asserts their ceilings.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BOMB_SIDE = 9400  # 88.4 M pixels: just under Pillow's own 89.5 M-pixel bomb limit
HUGE = 1 << 40  # "no limit"

_TOKENIZER = """
import os
from grft_core.data import make_preprocessor
from grft_core.models.registry import ModelRegistry
prep = make_preprocessor(ModelRegistry(os.environ.get("GRFT_MODEL_DIR") or None).get("all-minilm-l6-v2"))
"""
# What each process has built before the attack arrives (the baseline builds the same): the worker's
# data code and a tokenizer; the API app, its predict decoding and a tokenizer.
PRELUDES = {
    "data": "import grft_core.data.loading\n" + _TOKENIZER,
    "api": "import tempfile\nimport api.inference.schemas\nfrom api.main import create_app\n"
    "from domain.settings import Settings\napp = create_app(Settings(home=tempfile.mkdtemp()))\n"
    + _TOKENIZER,
}

_EPILOGUE = """
import json as _json, resource as _resource, time as _time
print(_json.dumps({"peak_mb": _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "seconds": _time.perf_counter() - _t0, "outcome": str(outcome)[:300]}))
"""


@dataclass
class Probe:
    peak_mb: float
    seconds: float
    outcome: str


def run_probe(prelude: str, code: str, *, timeout: float = 300) -> Probe:
    """Run ``prelude`` then ``code`` (which sets ``outcome``) in a fresh process; its peak RSS and time."""
    source = prelude + "import time as _t\n_t0 = _t.perf_counter()\n" + textwrap.dedent(code) + _EPILOGUE
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-c", source], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Probe(**json.loads(done.stdout.strip().splitlines()[-1]))


def baseline(kind: str) -> Probe:
    """The same imports, no attack."""
    return run_probe(PRELUDES[kind], "outcome = 'baseline'\n")


# --- the attack inputs (small files) -------------------------------------------------------------


def bomb_png() -> bytes:
    """A black 9400x9400 PNG: about 12 KB (bilevel), 88 M pixels once decoded."""
    out = io.BytesIO()
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(out, "PNG")
    return out.getvalue()


def pixel_bomb_zip(folder: Path, count: int = 6) -> Path:
    """A training zip of ``count`` bomb PNGs in two classes."""
    data, path = bomb_png(), folder / "bombs.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for i in range(count):
            bundle.writestr(f"{'ab'[i % 2]}/{i}.png", data)
    return path


def zero_zip(folder: Path, size: int) -> Path:
    """A zip of one file of ``size`` zero bytes under a class folder (compresses about 1000:1)."""
    path = folder / "zeros.zip"
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        with bundle.open("a/zeros.png", "w", force_zip64=True) as sink:
            for _ in range(size // len(chunk)):
                sink.write(chunk)
        bundle.writestr("b/x.png", b"")
    return path


def zero_tar(folder: Path, members: int, size: int) -> Path:
    """A .tar.gz of ``members`` files of ``size`` zero bytes each."""
    path = folder / "zeros.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as bundle:
        for i in range(members):
            info = tarfile.TarInfo(f"a/{i}.png")
            info.size = size
            bundle.addfile(info, io.BytesIO(bytes(size)))
    return path


def long_line_csv(folder: Path, chars: int) -> Path:
    """A text CSV whose second row's text is ``chars`` characters on one line."""
    path = folder / "long.csv"
    with path.open("w") as out:
        out.write("text,label\nshort one,a\n")
        word = "lorem ipsum dolor sit amet "
        out.write((word * (chars // len(word) + 1))[:chars] + ",b\nanother,a\n")
    return path


# --- the probes ----------------------------------------------------------------------------------


def predict_pixel_bomb(folder: Path, limited: bool) -> Probe:
    """Four bomb PNGs in one predict request, decoded as the predict routes decode them."""
    payload = folder / "predict.txt"
    payload.write_text(base64.b64encode(bomb_png()).decode())
    bounds = "side=256" if limited else f"max_pixels={HUGE}"
    return run_probe(
        PRELUDES["api"],
        f"""
        from api.inference.schemas import RawInput, decode_inputs
        from grft_core.errors import GrftError
        text = open({str(payload)!r}).read()
        raw = [RawInput("image", text, f"inputs[{{i}}].image") for i in range(4)]
        try:
            images = decode_inputs(raw, "image", 4 << 20, "adapter-x", {bounds})
            outcome = [im.size for im in images]
        except GrftError as exc:
            outcome = f"{{exc.status_code}} {{exc.message}}"
        """,
    )


def training_pixel_bomb(folder: Path, limited: bool) -> Probe:
    """Six bomb PNGs in a training zip, loaded as the worker loads it."""
    archive = pixel_bomb_zip(folder)
    limits = "DataLimits()" if limited else f"DataLimits(max_image_pixels={HUGE})"
    return _load(archive, limits)


def _load(path: Path, limits: str) -> Probe:
    return run_probe(
        PRELUDES["data"],
        f"""
        from grft_core.data import DataLimits
        from grft_core.data.loading import load_dataset
        from grft_core.errors import GrftError
        try:
            data = load_dataset({str(path)!r}, limits={limits})
            outcome = f"loaded {{len(data)}} items"
        except GrftError as exc:
            outcome = f"{{exc.status_code}} {{exc.message}}"
        """,
    )


def training_long_line(folder: Path, limited: bool, chars: int = 20 << 20) -> Probe:
    """A CSV with one 20 MB text line: loaded, then tokenised as training's first batch would be."""
    path = long_line_csv(folder, chars)
    limits = "DataLimits()" if limited else f"DataLimits(max_record_bytes={HUGE}, max_text_chars={HUGE})"
    return run_probe(
        PRELUDES["data"],
        f"""
        from grft_core.data import DataLimits, preprocess
        from grft_core.data.loading import load_dataset
        from grft_core.errors import GrftError
        if not {limited}:
            preprocess.CHARS_PER_TOKEN = {HUGE}  # no cut before tokenizing
        try:
            data = load_dataset({str(path)!r}, limits={limits})
            outcome = f"tokenised {{tuple(prep(data.items)['input_ids'].shape)}}"
        except GrftError as exc:
            outcome = f"{{exc.status_code}} {{exc.message}}"
        """,
    )


def predict_text_bomb(limited: bool, chars: int = 4 << 20) -> Probe:
    """One 4 MB text in a predict request: decoded, then tokenised as the model's batcher would."""
    bounds = "" if limited else f", max_chars={HUGE}"
    return run_probe(
        PRELUDES["api"],
        f"""
        from api.inference.schemas import RawInput, decode_inputs
        from grft_core.data import preprocess
        from grft_core.errors import GrftError
        if not {limited}:
            preprocess.CHARS_PER_TOKEN = {HUGE}
        text = ("lorem ipsum dolor sit amet " * ({chars} // 27 + 1))[:{chars}]
        try:
            items = decode_inputs([RawInput("text", text, "inputs[0].text")], "text", 4 << 20, "a"{bounds})
            outcome = f"tokenised {{tuple(prep(items)['input_ids'].shape)}}"
        except GrftError as exc:
            outcome = f"{{exc.status_code}} {{exc.message}}"
        """,
    )


def archive_bomb(folder: Path, limited: bool, size: int, budget: int | None = None) -> Probe:
    """A zip that expands to ``size`` bytes of zeros, against ``budget`` (default: the default limit);
    ``outcome`` also says how much reached the disk when extraction finished."""
    archive = zero_zip(folder, size)
    limits = f"DataLimits(max_extract_bytes={budget or HUGE})" if budget or not limited else "DataLimits()"
    return run_probe(
        PRELUDES["data"],
        f"""
        from grft_core.data import DataLimits
        from grft_core.data import fetch, loading
        from grft_core.errors import GrftError
        fetch.MAX_DATASET_BYTES = {HUGE if not limited else "fetch.MAX_DATASET_BYTES"}
        written = [0]
        real_read_dir = loading._read_dir
        def measured(path, display, limits):
            written[0] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            return real_read_dir(path, display, limits)
        loading._read_dir = measured
        try:
            loading.load_dataset({str(archive)!r}, limits={limits})
            outcome = "loaded"
        except GrftError as exc:
            outcome = f"{{exc.status_code}} {{exc.message}}"
        if written[0]:
            outcome = f"{{outcome}}; extracted {{written[0]:,}} bytes first"
        """,
    )


def json_body_bomb(limited: bool, size: int = 300 << 20) -> Probe:
    """``size`` bytes of JSON to ``POST /v1/fine_tuning/jobs`` without a key, streamed in 1 MiB chunks
    straight into the ASGI app (no client buffering it)."""
    return run_probe(
        PRELUDES["api"],
        f"""
        import asyncio
        if not {limited}:
            app.state.settings.max_json_body_bytes = {HUGE}
        chunk = b"a" * (1 << 20)
        chunks = {size} // len(chunk)
        sent, status = [0], []

        async def receive():
            # One JSON string of {size:,} bytes: '{{"model": "', then 1 MiB chunks, then '"}}'.
            if sent[0] < chunks:
                sent[0] += 1
                body = (b'{{"model": "' if sent[0] == 1 else b"") + chunk
                body += b'"}}' if sent[0] == chunks else b""
                return {{"type": "http.request", "body": body, "more_body": sent[0] < chunks}}
            return {{"type": "http.disconnect"}}

        async def send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body" and message.get("body"):
                status.append(message["body"][:160].decode())

        scope = {{"type": "http", "asgi": {{"version": "3.0"}}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/fine_tuning/jobs", "raw_path": b"/v1/fine_tuning/jobs",
                 "root_path": "", "query_string": b"", "server": ("test", 80), "client": ("test", 1),
                 "headers": [(b"content-type", b"application/json"), (b"host", b"test")]}}
        try:
            asyncio.run(app(scope, receive, send))
        except Exception as exc:  # the app's own 500 is already sent; the middleware re-raises
            status.append(type(exc).__name__)
        outcome = f"{{status}} after {{sent[0]}} MiB read"
        """,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", choices=["on", "off", "both"], default="both")
    parser.add_argument("--archive-bytes", type=int, default=3 * 1024**3)
    args = parser.parse_args()
    import tempfile

    modes = [True, False] if args.limits == "both" else [args.limits == "on"]
    bases = {kind: baseline(kind) for kind in PRELUDES}
    print("| attack | limits | peak RSS over baseline | time | outcome |")
    print("|---|---|---|---|---|")
    for limited in modes:
        with tempfile.TemporaryDirectory() as work:
            folder = Path(work)
            rows = [
                ("4 pixel-bomb PNGs in one predict request", "api", predict_pixel_bomb(folder, limited)),
                ("6 pixel-bomb PNGs in a training zip", "data", training_pixel_bomb(folder, limited)),
                ("20 MB CSV line, loaded and tokenised", "data", training_long_line(folder, limited)),
                ("4 MB text in one predict item", "api", predict_text_bomb(limited)),
                (
                    f"zip expanding to {args.archive_bytes / 1024**3:.0f} GiB",
                    "data",
                    archive_bomb(folder, limited, args.archive_bytes),
                ),  # fmt: skip
                ("300 MB JSON body without a key", "api", json_body_bomb(limited)),
            ]
            for name, kind, probe in rows:
                delta = probe.peak_mb - bases[kind].peak_mb
                state = "on" if limited else "off"
                print(f"| {name} | {state} | {delta:+,.0f} MB | {probe.seconds:.1f} s | {probe.outcome} |")
                sys.stdout.flush()
    print("\nbaselines: " + ", ".join(f"{k} {p.peak_mb:,.0f} MB" for k, p in bases.items()))


if __name__ == "__main__":
    main()
