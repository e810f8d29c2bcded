"""The causal-LM registry entries and the command line: ``grft models add NAME PATH``, ``grft models
list`` with kinds, and ``grft train`` end to end on a tiny LLaMA and a few chat lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import BertConfig, BertModel

from grft_core.cli import main
from grft_core.errors import ConfigError, FingerprintMismatch
from grft_core.models.registry import ModelRegistry
from grft_core.models.serialization import fingerprint_state_dict, load_safetensors
from tests.conftest import call_main
from tests.lm.helpers import chat_lines, write_jsonl


class TestRegistry:
    def test_folder_is_converted_once_into_the_store(self, tiny_lm_source: Path, tmp_path: Path) -> None:
        registry = ModelRegistry(tmp_path / "store")
        spec = registry.add_causal_lm("my-lm", tiny_lm_source)

        assert (spec.kind, spec.family, spec.modality, spec.arch) == (
            "causal_lm", "transformers", "text", "LlamaForCausalLM",
        )  # fmt: skip
        folder = tmp_path / "store" / "my-lm"
        assert (folder / "model.safetensors").is_file()
        assert (folder / "config.json").is_file()
        assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".my-lm")]
        stored = load_safetensors(folder / "model.safetensors")
        assert "lm_head.weight" not in stored  # tied: stored once
        assert fingerprint_state_dict(stored) == spec.fingerprint

        model, tokenizer, again = registry.load_causal_lm("my-lm")
        assert again == spec
        assert tokenizer.chat_template
        assert model.config.tie_word_embeddings
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        assert registry.get("my-lm").kind == "causal_lm"

    def test_builtin_is_listed_before_it_is_converted(self, tmp_path: Path) -> None:
        listed = {s.name: s for s in ModelRegistry(tmp_path / "store").list()}
        smol = listed["smollm2-135m-instruct"]
        assert (smol.kind, smol.fingerprint) == ("causal_lm", "")
        assert "converted on first use" in smol.description
        assert not (tmp_path / "store" / "smollm2-135m-instruct").exists()

    def test_refusals(self, tmp_path: Path, tiny_lm_source: Path) -> None:
        registry = ModelRegistry(tmp_path / "store")
        bert = tmp_path / "bert"
        BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64)).save_pretrained(str(bert))  # fmt: skip
        with pytest.raises(ConfigError, match="not a causal language model") as caught:
            registry.add_causal_lm("bert", bert)
        assert caught.value.param == "path"
        with pytest.raises(ConfigError, match="neither a .gguf file nor"):
            registry.add_causal_lm("nothing", tmp_path / "missing.bin")
        assert not (tmp_path / "store" / "bert").exists()
        registry.add_causal_lm("lm", tiny_lm_source)
        with pytest.raises(ConfigError, match="causal language model: load it with load_causal_lm"):
            registry.load("lm", num_labels=2)
        with pytest.raises(ConfigError, match="not a causal language model"):
            registry.load_causal_lm("tiny-bert")

    def test_changed_weights_are_refused(self, tmp_path: Path, tiny_lm_source: Path) -> None:
        registry = ModelRegistry(tmp_path / "store")
        spec = registry.add_causal_lm("lm", tiny_lm_source)
        state = load_safetensors(Path(spec.weights))
        state["model.norm.weight"] = state["model.norm.weight"] + 1
        from safetensors.torch import save_file

        save_file(state, spec.weights, metadata={"format": "pt"})
        with pytest.raises(FingerprintMismatch):
            registry.load_causal_lm("lm")


class TestCommandLine:
    def test_models_add_list_and_train(
        self, capsys: pytest.CaptureFixture[str], tiny_lm_source: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        monkeypatch.setenv("GRFT_MODEL_DIR", str(tmp_path / "store"))
        code, out, err = call_main(main, capsys, "local", "models", "add", "chat-lm", str(tiny_lm_source))
        assert code == 0, err
        assert "registered chat-lm (causal_lm, LlamaForCausalLM" in out

        code, out, err = call_main(main, capsys, "local", "models", "list", "--json")
        assert code == 0, err
        kinds = {m["name"]: m["kind"] for m in json.loads(out)}
        assert (kinds["chat-lm"], kinds["smollm2-135m-instruct"], kinds["tiny-bert"]) == (
            "causal_lm", "causal_lm", "classifier",
        )  # fmt: skip
        code, out, _ = call_main(main, capsys, "local", "models", "list")
        assert "causal_lm" in out

        train = write_jsonl(tmp_path / "train.jsonl", chat_lines(40))
        val = write_jsonl(tmp_path / "val.jsonl", chat_lines(8, seed=1))
        adapter = tmp_path / "adapter"
        code, out, err = call_main(
            main, capsys, "train", "--model", "chat-lm", "--data", str(train), "--val-data", str(val),
            "--k", "4", "--epochs", "2", "--batch-size", "8", "--lr", "0.05", "--max-length", "64",
            "--out", str(adapter),
        )  # fmt: skip
        assert code == 0, err
        assert "val accuracy" in out
        metrics = json.loads((adapter / "metrics.json").read_text())
        assert metrics["data"]["validation"]["examples"] == 8
        assert metrics["data"]["max_length"] == 64
        assert metrics["history"][-1]["val_loss"] < metrics["history"][0]["val_loss"]
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert (config["task"], config["base_model"], config["config"]["selection_loss"]) == (
            "causal_lm", "chat-lm", "ce",
        )  # fmt: skip
        assert metrics["trained_tokens"] == 2 * metrics["data"]["train"]["tokens"]

    def test_auto_learning_rate_is_chosen_and_recorded(
        self, capsys: pytest.CaptureFixture[str], tiny_lm: str, tmp_path: Path
    ) -> None:
        train = write_jsonl(tmp_path / "train.jsonl", chat_lines(40))
        val = write_jsonl(tmp_path / "val.jsonl", chat_lines(8, seed=1))
        adapter = tmp_path / "adapter"
        code, _, err = call_main(
            main, capsys, "train", "--model", tiny_lm, "--data", str(train), "--val-data", str(val),
            "--k", "4", "--epochs", "2", "--batch-size", "8", "--lr", "auto", "--max-length", "64",
            "--out", str(adapter),
        )  # fmt: skip
        assert code == 0, err
        metrics = json.loads((adapter / "metrics.json").read_text())
        chosen = metrics["hyperparameters"]["learning_rate"]
        assert isinstance(chosen, float)
        assert metrics["autotune"]
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["autotune"] == metrics["autotune"]
        assert config["config"]["lr"] == chosen

    def test_bad_chat_line_is_a_clear_error(
        self, capsys: pytest.CaptureFixture[str], tiny_lm: str, tmp_path: Path
    ) -> None:
        rows: list[object] = list(chat_lines(4))
        rows[2] = {"messages": [{"role": "robot", "content": "x"}]}
        code, _, err = call_main(
            main, capsys, "train", "--model", tiny_lm, "--data", str(write_jsonl(tmp_path / "t.jsonl", rows)),
            "--out", str(tmp_path / "a"),
        )  # fmt: skip
        assert code != 0
        assert "line 3" in err
        assert "messages[0].role" in err
        assert not (tmp_path / "a").exists()
