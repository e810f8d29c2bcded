"""The client commands of ``grft`` against the real app: ``--json`` outputs parse, exit codes say what
happened, ``login`` writes a private config file, and a real job is created, followed to its end (and
its failures and cancels end with exit 1), downloaded, exported and predicted with."""

from __future__ import annotations

import _thread
import json
import stat
import tarfile
from pathlib import Path

import pytest

from api.cli import main
from api.cli.client import follow as follow_module
from tests.client.conftest import HYPERPARAMETERS, LABELS, Server
from tests.conftest import call_main

PARAMS = [arg for k, v in HYPERPARAMETERS.items() for arg in ("-p", f"{k}={v}")]


@pytest.fixture
def env(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The server and key in the environment; a config file of the test's own (returned)."""
    monkeypatch.setenv("GRFT_API_URL", server.url)
    monkeypatch.setenv("GRFT_API_KEY", server.key)
    monkeypatch.delenv("GRFT_PROFILE", raising=False)
    config = tmp_path / "config" / "config.toml"
    monkeypatch.setenv("GRFT_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    return config


def grft(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return call_main(main, capsys, *args)


def grft_json(capsys: pytest.CaptureFixture[str], *args: str):  # type: ignore[no-untyped-def]
    code, out, err = grft(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


class TestConfig:
    def test_login_writes_a_private_profile_that_commands_use(self, capsys, env: Path, monkeypatch, server):
        code, out, err = grft(capsys, "login", "--url", server.url + "/v1", "--key", server.key)
        assert code == 0, err
        assert stat.S_IMODE(env.stat().st_mode) == 0o600
        assert "saved profile 'default'" in out
        monkeypatch.delenv("GRFT_API_URL")
        monkeypatch.delenv("GRFT_API_KEY")
        shown = grft_json(capsys, "config", "show")
        assert shown["api_url"] == server.url
        assert shown["api_key"].endswith("…")
        assert server.key not in json.dumps(shown)
        assert shown["source"] == str(env)
        assert isinstance(grft_json(capsys, "files", "list"), list)

    def test_login_with_a_wrong_key_writes_nothing(self, capsys, env: Path, server):
        code, _, err = grft(capsys, "login", "--url", server.url, "--key", "grft-wrong")
        assert code == 4
        assert "401" in error_line(err)
        assert not env.exists()

    def test_profiles(self, capsys, env: Path, monkeypatch, server):
        assert grft(capsys, "login", "--url", server.url, "--key", server.key, "--profile", "mine")[0] == 0
        monkeypatch.delenv("GRFT_API_URL")
        monkeypatch.delenv("GRFT_API_KEY")
        code, _, err = grft(capsys, "files", "list")
        assert code == 2
        assert "no API URL" in error_line(err)
        assert isinstance(grft_json(capsys, "files", "--profile", "mine", "list"), list)
        monkeypatch.setenv("GRFT_PROFILE", "mine")
        assert isinstance(grft_json(capsys, "jobs", "list"), list)


class TestExitCodes:
    def test_not_found_is_3_with_the_error_as_json(self, capsys, env):
        code, out, err = grft(capsys, "files", "get", "file-missing", "--json")
        assert code == 3
        assert "404 not_found" in error_line(err)
        body = json.loads(out)["error"]
        assert (body["status"], body["code"], body["type"]) == (404, "not_found", "NotFoundError")

    def test_bad_key_is_4(self, capsys, env, monkeypatch):
        monkeypatch.setenv("GRFT_API_KEY", "grft-wrong")
        code, _, err = grft(capsys, "jobs", "list")
        assert code == 4
        assert "401" in error_line(err)

    def test_unreachable_server_is_5(self, capsys, env, monkeypatch, unused_port):
        monkeypatch.setattr("grft_client._client._sleep", lambda s: None)  # the retries' backoff
        code, _, err = grft(capsys, "models", "list", "--api-url", f"http://127.0.0.1:{unused_port}")
        assert code == 2  # --api-url belongs to the group: here it is an unknown option of 'list'
        code, _, err = grft(capsys, "models", "--api-url", f"http://127.0.0.1:{unused_port}", "list")
        assert code == 5
        assert "cannot reach the server" in error_line(err)

    def test_usage_and_refused_requests_are_2(self, capsys, env, server):
        code, _, err = grft(capsys, "jobs", "create", "--model", "tiny-bert")
        assert code == 2
        assert "--training-file" in err
        code, _, err = grft(
            capsys, "jobs", "create", "--model", "tiny-bert", "--training-file", "file-x", "-p", "k"
        )
        assert code == 2
        assert "--param takes KEY=VALUE" in error_line(err)
        code, _, err = grft(capsys, "adapters", "predict", "adapter-x")
        assert code == 2
        assert "--image" in error_line(err)
        code, _, err = grft(
            capsys, "jobs", "create", "--model", "tiny-bert", "--training-file", str(server.csv), "-p", "k=0"
        )
        assert code == 2
        assert "method.grft.hyperparameters.k" in error_line(err.split("\n", 1)[1])  # after "uploaded ..."
        code, _, err = grft(
            capsys, "jobs", "create", "--model", "tiny-bert", "--training-file", "nowhere.csv"
        )
        assert code == 2
        assert "neither a file id" in error_line(err)


class TestFiles:
    def test_upload_list_get_download_delete(self, capsys, env, server, tmp_path):
        uploaded = grft_json(capsys, "files", "upload", str(server.csv))
        assert (uploaded["filename"], uploaded["bytes"]) == ("train.csv", server.csv.stat().st_size)
        assert uploaded["id"] in [
            f["id"] for f in grft_json(capsys, "files", "list", "--all", "--limit", "1")
        ]
        assert grft_json(capsys, "files", "get", uploaded["id"]) == uploaded
        got = grft_json(capsys, "files", "download", uploaded["id"], "-o", str(tmp_path / "copy.csv"))
        assert (tmp_path / "copy.csv").read_bytes() == server.csv.read_bytes()
        assert got["bytes"] == uploaded["bytes"]
        assert grft_json(capsys, "files", "delete", uploaded["id"])["deleted"] is True
        code, out, _ = grft(capsys, "files", "get", uploaded["id"])
        assert code == 3
        code, out, err = grft(capsys, "files", "upload", str(server.csv))
        assert code == 0, err
        assert out.startswith("uploaded train.csv")


def follow_lines(out: str) -> tuple[list[dict], dict]:
    """The JSON lines of a followed job: its events, then the job."""
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert all("event" in r for r in rows[:-1])
    return [r["event"] for r in rows[:-1]], rows[-1]["job"]


class TestRealJob:
    def test_create_follow_and_everything_after(self, capsys, env, server, worker, tmp_path):
        code, out, err = grft(
            capsys, "jobs", "create", "--model", "tiny-bert", "--training-file", str(server.csv),
            *PARAMS, "--seed", "0", "--metadata", "from=cli", "--follow", "--json",
        )  # fmt: skip
        assert code == 0, err
        events, job = follow_lines(out)
        assert job["status"] == "succeeded"
        assert events[0]["message"] == f"Created fine-tuning job: {job['id']}"
        assert events[-1]["message"] == "The job has successfully completed"
        # Following a finished job replays its events, as plain lines, and ends with how it ended.
        code, out, err = grft(capsys, "jobs", "follow", job["id"])
        assert code == 0, err
        assert out.splitlines()[-1].startswith(f"job {job['id']} succeeded: adapter {job['adapter_id']}")
        assert len(out.splitlines()) == len(events) + 1

        assert grft_json(capsys, "jobs", "get", job["id"])["adapter_id"] == job["adapter_id"]
        assert job["id"] in [j["id"] for j in grft_json(capsys, "jobs", "list", "--status", "succeeded")]
        listed = grft_json(capsys, "jobs", "events", job["id"], "--limit", "100")
        assert [e["id"] for e in listed] == [e["id"] for e in events]  # oldest first, like the stream
        assert all(c["step_number"] > 0 for c in grft_json(capsys, "jobs", "checkpoints", job["id"]))
        curves = grft_json(capsys, "jobs", "metrics", job["id"])
        assert [e["epoch"] for e in curves["epochs"]] == [1, 2]
        assert curves["steps"][-1]["train_loss"] is not None
        code, out, _ = grft(capsys, "jobs", "metrics", job["id"])
        assert "valid_accuracy" in out

        adapter = grft_json(capsys, "adapters", "get", job["adapter_id"])
        assert adapter["base_model"] == "tiny-bert"
        assert adapter["id"] in [a["id"] for a in grft_json(capsys, "adapters", "list")]
        native = grft_json(capsys, "adapters", "download", adapter["id"], "-o", str(tmp_path / "a.tar"))
        with tarfile.open(native["path"]) as tar:
            assert "adapter_config.json" in {Path(m.name).name for m in tar.getmembers()}
        lora = grft_json(capsys, "adapters", "export", adapter["id"], "--extract", str(tmp_path / "lora"))
        assert lora["format"] == "peft_lora"
        peft_config = next((tmp_path / "lora").rglob("adapter_config.json"))
        assert json.loads(peft_config.read_text())["peft_type"] == "LORA"
        answers = grft_json(
            capsys, "adapters", "predict", adapter["id"], "--text", "goal match team", "--text", "bank trade"
        )
        assert [a["label"] in LABELS for a in answers] == [True, True]
        code, out, _ = grft(capsys, "adapters", "predict", adapter["id"], "--text", "goal match team")
        assert code == 0
        assert answers[0]["label"] in out
        assert "tiny-bert" in {m["id"] for m in grft_json(capsys, "models", "list")}
        assert grft_json(capsys, "models", "get", "tiny-bert")["modality"] == "text"

    def test_a_failed_job_exits_1(self, capsys, env, worker, tmp_path):
        bad = tmp_path / "bad.csv"
        bad.write_text("sentence,category\nhello,a\nworld,b\n")
        code, out, err = grft(
            capsys, "jobs", "create", "--model", "tiny-bert", "--training-file", str(bad), "--follow"
        )
        assert code == 1, err
        last = out.splitlines()[-1]
        assert " failed: user_error: " in last

    def test_a_cancelled_job_exits_1(self, capsys, env, server):
        job = grft_json(capsys, "jobs", "create", "--model", "tiny-bert", "--training-file", str(server.csv))
        assert grft_json(capsys, "jobs", "cancel", job["id"])["status"] in ("cancelled", "cancelling")
        code, out, err = grft(capsys, "jobs", "follow", job["id"], "--poll", "0.5")
        assert code == 1, err
        assert out.splitlines()[-1] == f"job {job['id']} cancelled"

    def test_ctrl_c_stops_following_and_leaves_the_job_running(
        self, capsys, env, server, worker, monkeypatch
    ):
        long = [a if a != "n_epochs=2" else "n_epochs=500" for a in PARAMS]
        job = grft_json(
            capsys, "jobs", "create", "--model", "tiny-bert", "--training-file", str(server.csv), *long
        )
        original = follow_module.Sink.event

        def event_then_interrupt(self, event, state):  # type: ignore[no-untyped-def]
            original(self, event, state)
            _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread

        monkeypatch.setattr(follow_module.Sink, "event", event_then_interrupt)
        try:
            code, _, err = grft(capsys, "jobs", "follow", job["id"])
            assert code == 130
            assert f"stopped following {job['id']}; it keeps running" in err
            status = grft_json(capsys, "jobs", "get", job["id"])["status"]
            assert status in ("validating_files", "queued", "running")
        finally:
            grft(capsys, "jobs", "cancel", job["id"])


class TestModelsSplit:
    """``grft models`` is the server's catalogue; this machine's store is ``grft local models``."""

    @pytest.fixture(autouse=True)
    def _no_server(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        for var in ("GRFT_API_URL", "GRFT_API_KEY", "GRFT_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("GRFT_CONFIG", str(tmp_path / "none.toml"))

    def test_local_models_need_no_server_and_remote_ones_point_there(self, capsys):
        code, out, err = grft(capsys, "local", "models", "list", "--json")
        assert code == 0, err
        assert "tiny-bert" in {m["name"] for m in json.loads(out)}
        code, _, err = grft(capsys, "models", "list")
        assert code == 2
        assert "this machine's model store is 'grft local models list'" in error_line(err)

    def test_the_old_models_add_still_adds_locally_with_a_note(self, capsys, tmp_path):
        (tmp_path / "w.pth").write_bytes(b"not safetensors")
        code, _, err = grft(capsys, "models", "add", "x", "--weights", str(tmp_path / "w.pth"))
        assert code == 2
        assert err.startswith("note: 'grft models add' is now 'grft local models add'")
        assert "exactly one of --timm ARCH or --transformers PATH" in err
