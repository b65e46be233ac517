"""No network: whatever needs the Hub fails in seconds with one line naming HF_HUB_OFFLINE=1 and the cache."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import huggingface_hub.constants as hf_constants
import open_clip  # noqa: F401  (imported here so the timings below measure the Hub, not the import)
import pytest
from huggingface_hub import hf_api

from vlmrobust.cli import main
from vlmrobust.models import create_model
from vlmrobust.utils import hub_access
from vlmrobust.utils.hub_access import HubAccessError, probe_hub


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_listener():
    """A port that accepts connections and never answers: a network that hangs instead of refusing."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def _point_hub_at(monkeypatch, tmp_path, endpoint):
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # restored after the test, whatever sets it
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "0")
    monkeypatch.setenv("VLMROBUST_HUB_PROBE_TIMEOUT", "1")
    hub_access.reset_probe()


@pytest.mark.parametrize("network", ["refused", "hangs"])
def test_a_hub_model_without_network_fails_in_seconds_with_the_hint(network, monkeypatch, tmp_path, silent_listener):
    endpoint = f"http://127.0.0.1:{_free_port()}" if network == "refused" else silent_listener
    _point_hub_at(monkeypatch, tmp_path, endpoint)
    t0 = time.perf_counter()
    with pytest.raises(HubAccessError) as info:
        create_model("hf-hub:someone/robust-clip")
    elapsed = time.perf_counter() - t0
    msg = str(info.value)
    assert elapsed < 5, elapsed  # the probe's 1 s, not huggingface_hub's retries with back-off
    assert "\n" not in msg and "'hf-hub:someone/robust-clip'" in msg and "HF_HUB_OFFLINE=1" in msg
    assert str(tmp_path / "empty-cache") in msg and endpoint in msg
    assert hf_constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"  # the process now reads the cache only
    if network == "hangs":
        assert "no answer within 1 s" in msg


@pytest.fixture
def not_a_hub():
    """An endpoint that answers 404 to everything without the Hub's headers (a proxy, a captive portal)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_endpoint_that_is_not_a_hub_gives_one_line_too(monkeypatch, tmp_path, not_a_hub):
    _point_hub_at(monkeypatch, tmp_path, not_a_hub)
    t0 = time.perf_counter()
    with pytest.raises(HubAccessError) as info:
        create_model("hf-hub:someone/robust-clip")
    msg = str(info.value)
    assert time.perf_counter() - t0 < 5 and "\n" not in msg
    assert f"could not be downloaded from {not_a_hub} (HTTP 404 for" in msg and "HF_HUB_OFFLINE=1" in msg
    assert not hf_constants.HF_HUB_OFFLINE  # it answered: no switch to the cache


def test_a_missing_repo_on_a_working_hub_is_one_line(tmp_path):
    from vlmrobust.testing.hub_server import local_hub

    with local_hub():
        with pytest.raises(HubAccessError, match=r"Cannot load 'hf-hub:someone/missing': repository not found"):
            create_model("hf-hub:someone/missing")


def test_offline_mode_set_by_the_user_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubAccessError, match=r"not in the local Hub cache .* and HF_HUB_OFFLINE=1 is set"):
        create_model("hf-clip:someone/robust-clip")
    with pytest.raises(HubAccessError, match="HF_HUB_OFFLINE=1 is set"):
        hub_access.require_hub("push to me/x")


def test_local_models_never_probe(monkeypatch, tmp_path, tiny_open_clip_dir):
    _point_hub_at(monkeypatch, tmp_path, f"http://127.0.0.1:{_free_port()}")
    create_model(f"local-dir:{tiny_open_clip_dir}")
    create_model("open_clip:ViT-B-32")  # no pretrained tag: random weights, nothing to download
    assert hub_access._PROBED == {} and not hf_constants.HF_HUB_OFFLINE


def test_push_and_update_card_fail_at_once_when_the_hub_is_unreachable(monkeypatch, tmp_path, tiny_open_clip_dir,
                                                                      capsys):
    _point_hub_at(monkeypatch, tmp_path, f"http://127.0.0.1:{_free_port()}")
    out = tmp_path / "ckpt"
    create_model(f"local-dir:{tiny_open_clip_dir}").save_pretrained(out, method="fare")
    t0 = time.perf_counter()
    assert main(["push", str(out), "me/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert time.perf_counter() - t0 < 5 and len(err.splitlines()) == 1
    assert "Cannot push to me/x: the Hub at" in err and "unreachable" in err
    assert probe_hub() is not None


def test_eval_exits_non_zero_when_every_dataset_was_skipped(monkeypatch, tmp_path, tiny_open_clip_dir, capsys):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    suite = tmp_path / "hub_only.yaml"
    suite.write_text("name: hub-only\ndatasets:\n  - name: remote\n    source: someone/not-cached\n    split: test\n"
                     "    classnames: [a, b]\n    templates: ['a photo of a {c}.']\n    attacks: []\n")
    rc = main(["eval", "--model", f"local-dir:{tiny_open_clip_dir}", "--suite", str(suite), "--output",
               str(tmp_path / "out"), "--skip-missing", "--no-progress"])
    assert rc == 1 and "every dataset was skipped" in capsys.readouterr().err


def test_cli_eval_without_network_fails_in_seconds_with_one_line(tmp_path):
    """The acceptance run: a new user, no network, no HF_HUB_OFFLINE, `vlmrobust eval ... --suite digits`."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                             "HF_DATASETS_OFFLINE", "HF_HUB_CACHE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_free_port()}", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(Path(__file__).parent.parent))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vlmrobust.cli", "eval", "--model", "open_clip:ViT-B-32/openai",
                           "--suite", "digits", "--output", str(tmp_path / "out"), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[-1].startswith("vlmrobust eval: error: 'open_clip:ViT-B-32/openai' is not in the local Hub cache")
    assert "HF_HUB_OFFLINE=1" in lines[-1] and str(tmp_path / "hf") in lines[-1]
    assert "Traceback" not in proc.stderr and "Retrying" not in proc.stderr
    # the time is mostly importing torch / open_clip on a loaded 2-core runner; the Hub part is the refused probe
    assert elapsed < 60, elapsed
