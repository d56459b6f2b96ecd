import threading
import time

import torch

from dcs_cli.cli.app import app
from dcs_cli.paramserver.client import RemoteStore


def test_paramserver_serves_until_shutdown(runner, tmp_path):
    ready = tmp_path / "address"
    snaps = tmp_path / "snaps"
    result = {}

    def run():
        result["r"] = runner.invoke(
            app,
            [
                "--quiet",
                "paramserver",
                "--bind",
                "tcp://127.0.0.1:*",
                "--ready-file",
                str(ready),
                "--snapshot-dir",
                str(snaps),
                "--lr",
                "0.5",
                "--momentum",
                "0",
                "--weight-decay",
                "0",
            ],
        )

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), result.get("r") and result["r"].output
        with RemoteStore(ready.read_text().strip(), "cli", 10, 2, init_std=0.0) as store:
            store.push(torch.tensor([3]), torch.ones(1, 2))  # --lr 0.5 from the command line
            assert torch.equal(store.rows(torch.tensor([3]))[0], torch.full((1, 2), -0.5))
            store.shutdown_server()
    finally:
        thread.join(timeout=60)
    assert result["r"].exit_code == 0, result["r"].output
    assert (snaps / "paramserver.safetensors").is_file()  # final snapshot on the way out


def test_non_loopback_bind_without_token_is_refused(runner):
    result = runner.invoke(app, ["paramserver", "--bind", "tcp://0.0.0.0:5571"])
    assert result.exit_code == 2
    assert "not a loopback address" in result.output and "--token-file" in result.output


def test_missing_token_file_and_bad_resume_are_clear_errors(runner, tmp_path):
    result = runner.invoke(app, ["paramserver", "--token-file", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "token file" in result.output
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    result = runner.invoke(app, ["paramserver", "--bind", "tcp://127.0.0.1:*", "--resume", str(bad)])
    assert result.exit_code == 1 and "not a readable safetensors file" in result.output


def test_outputs_that_would_replace_a_file_are_refused_before_serving(runner, tmp_path):
    (tmp_path / "notes").write_text("keep me")
    result = runner.invoke(app, ["paramserver", "--bind", f"ipc://{tmp_path / 'notes'}"])
    assert result.exit_code == 2 and "is a file, not a socket" in result.output
    assert (tmp_path / "notes").read_text() == "keep me"
    result = runner.invoke(app, ["paramserver", "--bind", "tcp://127.0.0.1:*",
                                 "--snapshot-dir", str(tmp_path / "notes" / "snaps")])
    assert result.exit_code == 1 and "notes is a file, not a folder" in result.output
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    (snaps / "paramserver.safetensors").write_bytes(b"an earlier run")
    result = runner.invoke(app, ["paramserver", "--bind", "tcp://127.0.0.1:*", "--snapshot-dir", str(snaps)])
    assert result.exit_code == 1 and "holds an earlier server's matrices; continue them with --resume" in result.output
    assert (snaps / "paramserver.safetensors").read_bytes() == b"an earlier run"
