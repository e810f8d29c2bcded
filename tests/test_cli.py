"""The local CLI: a real end-to-end run on packaged weights and data, and clear refusals of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import save_file

from grft_core.cli import app, main
from grft_core.data.samples import digits_image_folder
from grft_core.method.config import GRFTConfig
from tests.conftest import call_main


def run_cli(*args: str, env_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRFT_MODEL_DIR": str(env_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "grft_core.cli", *args], capture_output=True, text=True, env=env, timeout=900
    )


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process (fast) and return (exit status, stdout, stderr)."""
    return call_main(main, capsys, *args)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_image_folder(tmp_path_factory.mktemp("digits"), size=32, limit_per_class=60)


@pytest.mark.slow
class TestEndToEnd:
    def test_train_eval_export_on_real_mobilenet_and_digits(self, digits, tmp_path, model_store):
        out = tmp_path / "adapter"
        train = run_cli(
            "train", "--model", "mobilenetv2_100", "--data", str(digits), "--method", "grft",
            "--k", "4", "--l2", "1e-4", "--axis", "rows", "--epochs", "3", "--batch-size", "32",
            "--lr", "3e-3", "--image-size", "32", "--selection-samples", "128", "--out", str(out),
            env_dir=model_store,
        )  # fmt: skip
        assert train.returncode == 0, train.stderr
        assert "val accuracy" in train.stdout
        metrics = json.loads((out / "metrics.json").read_text())
        # An untrained 10-class head is at chance (~0.1); GRFT must be far above it.
        assert metrics["initial_val_accuracy"] < 0.3
        assert metrics["best_val_accuracy"] >= 0.8
        assert len(metrics["history"]) == 3
        assert 0 < metrics["trainable_share"] < 0.05
        assert metrics["adapter_bytes"] == (out / "adapter_model.safetensors").stat().st_size
        assert {"train_loss", "val_accuracy", "val_loss"} <= set(metrics["history"][0])
        assert sorted(p.name for p in out.iterdir()) == [
            "adapter_config.json", "adapter_model.safetensors", "metrics.json",
        ]  # fmt: skip

        evaluated = run_cli(
            "eval", "--adapter", str(out), "--data", str(digits), "--json", env_dir=model_store
        )
        assert evaluated.returncode == 0, evaluated.stderr
        result = json.loads(evaluated.stdout)
        assert result["accuracy"] >= 0.8
        assert result["items"] == 600

        peft_dir = tmp_path / "peft"
        exported = run_cli("export-peft", "--adapter", str(out), "--out", str(peft_dir), env_dir=model_store)
        assert exported.returncode == 0, exported.stderr
        assert json.loads((peft_dir / "adapter_config.json").read_text())["peft_type"] == "LORA"


class TestBadArguments:
    """Each refusal: exit status 2, one ``error:`` line naming the problem, nothing written."""

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            (["--k", "0"], "k must be between 1 and"),
            (["--k", "abc"], "--k must be an integer or a map"),
            (["--l2", "-1"], "l2_lambda must be between 0"),
            (["--l2-lambda", "-1"], "l2_lambda must be between 0"),
            (["--selection-batch-size", "1"], "selection_batch_size must be between 2 and 4096 (got 1)"),
            (["--scl-temperature", "0"], "scl_temperature must be between 0.001 and 10"),
            (["--precision", "fp8"], "precision must be one of 'auto', 'fp32', 'bf16'"),
            (["--axis", "diagonal"], "axis must be one of 'rows', 'columns'"),
            (["--method", "magic"], "method must be one of"),
            (["--epochs", "0"], "epochs must be between 1 and 1000"),
            (["--model", "no-such-model"], "unknown model 'no-such-model'"),
            (["--data", "/nonexistent/data.csv"], "/nonexistent/data.csv"),
            (["--epochs", "two"], "--epochs must be a number or 'auto' (got 'two')"),
            (["--lr", "fast"], "--lr must be a number or 'auto' (got 'fast')"),
        ],
    )
    def test_refused(self, capsys, digits, tmp_path, extra, message):
        out = tmp_path / "out"
        args = ["train", "--model", "tiny-cnn", "--data", str(digits), "--out", str(out)]
        code, _, err = call(capsys, *args, *extra)
        assert code == 2
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith("error:")
        assert message in lines[0]
        assert not out.exists()

    def test_every_config_field_is_an_option_described_by_its_declaration(self):
        command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
        options = {p.name: p for p in command.params}
        for name, info in GRFTConfig.model_fields.items():
            if name == "auto":  # spelt as a value: --lr auto, --epochs auto, --batch-size auto
                assert name not in options
                continue
            option = options[name]
            assert "--" + name.replace("_", "-") in option.opts, name
            assert info.description is not None
            assert option.help.startswith(info.description), name
        assert options["epochs"].default == "3"  # a number or 'auto'
        assert "Or 'auto'" in options["lr"].help
        assert "[1 to 1000]" in options["epochs"].help  # the bounds, read from the declaration
        assert "One of: rows, columns." in options["axis"].help
        assert "--l2" in options["l2_lambda"].opts
        assert options["train_bias"].secondary_opts == ["--no-train-bias"]

    def test_missing_required_option(self, capsys):
        code, _, err = call(capsys, "train", "--model", "tiny-cnn")
        assert code == 2
        assert err.startswith("error:")
        assert "--data" in err or "--out" in err

    def test_out_folder_with_other_content_is_not_overwritten(self, capsys, digits, tmp_path):
        out = tmp_path / "keep"
        out.mkdir()
        (out / "precious.txt").write_text("mine")
        code, _, err = call(capsys, "train", "--model", "tiny-cnn", "--data", str(digits), "--out", str(out))
        assert code == 2
        assert "refusing to overwrite" in err
        assert (out / "precious.txt").read_text() == "mine"

    def test_text_model_on_images_is_refused(self, capsys, digits, tmp_path):
        code, _, err = call(
            capsys, "train", "--model", "tiny-bert", "--data", str(digits), "--out", str(tmp_path / "o")
        )
        assert code == 2
        assert "takes text inputs but the dataset holds image" in err

    def test_eval_of_missing_adapter(self, capsys, digits, tmp_path):
        code, _, err = call(capsys, "eval", "--adapter", str(tmp_path), "--data", str(digits))
        assert code == 2
        assert "no adapter_config.json" in err


class TestTinyRun:
    def test_train_then_eval_in_process(self, capsys, digits, tmp_path):
        out = tmp_path / "ad"
        code, stdout, err = call(
            capsys, "train", "--model", "tiny-cnn", "--data", str(digits), "--out", str(out),
            "--epochs", "1", "--image-size", "32", "--selection-samples", "32", "--max-items", "100",
            "--fp16", "--k", "conv_pwl=2,*=1",
        )  # fmt: skip
        assert code == 0, err
        assert "wrote" in stdout
        assert "step" in err  # plain progress lines when stderr is not a terminal
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["dtype"] == "float16"
        assert config["base_model"] == "tiny-cnn"
        ks = {m: info["k"] for m, info in config["modules"].items()}
        assert {k for m, k in ks.items() if m.endswith("conv_pwl")} == {2}
        assert {k for m, k in ks.items() if not m.endswith("conv_pwl")} == {1}
        code, stdout, err = call(capsys, "eval", "--adapter", str(out), "--data", str(digits), "--json")
        assert code == 0, err
        assert 0.0 <= json.loads(stdout)["accuracy"] <= 1.0


class TestModels:
    def test_list_shows_builtins(self, capsys):
        code, stdout, _ = call(capsys, "local", "models", "list", "--json")
        assert code == 0
        names = {m["name"] for m in json.loads(stdout)}
        assert {"mobilenetv2_100", "all-minilm-l6-v2", "tiny-vit", "tiny-cnn", "tiny-bert"} <= names

    def test_add_timm_then_list(self, capsys, tmp_path):
        import timm

        weights = tmp_path / "w.safetensors"
        model = timm.create_model("resnet10t", pretrained=False, num_classes=0)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        from grft_core.models.registry import ModelRegistry

        try:
            args = ["local", "models", "add", "my-resnet", "--timm", "resnet10t", "--weights", str(weights)]
            code, stdout, err = call(capsys, *args)
            assert code == 0, err
            assert "registered my-resnet" in stdout
            code, stdout, _ = call(capsys, "local", "models", "list", "--json")
            assert "my-resnet" in {m["name"] for m in json.loads(stdout)}
        finally:
            # The store is shared by the session: leave it as other tests expect it.
            ModelRegistry().remove("my-resnet")

    def test_add_refuses_pickles_and_ambiguous_sources(self, capsys, tmp_path):
        (tmp_path / "w.pth").write_bytes(torch.zeros(1).numpy().tobytes())
        code, _, err = call(
            capsys, "local", "models", "add", "x", "--timm", "resnet10t", "--weights", str(tmp_path / "w.pth")
        )
        assert code == 2
        assert ".safetensors" in err
        code, _, err = call(capsys, "local", "models", "add", "x", "--weights", str(tmp_path / "w.pth"))
        assert code == 2
        assert "exactly one of --timm ARCH or --transformers PATH" in err
