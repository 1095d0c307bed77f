"""`bertfit push` through huggingface_hub against a stub of the Hub's HTTP API on a loopback port (no network here):
the repository creation, the preupload check and the commit, as huggingface_hub sends them."""

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from conftest import sample_run_args

# Training subprocesses, servers and process groups: the full suite runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow


class StubHub(BaseHTTPRequestHandler):
    """Answers create-repo, preupload (every file 'regular': sent inline in the commit) and commit; records them."""

    calls: list = []
    files: dict = {}
    token = "hf_stub_token"

    def log_message(self, *args):
        pass

    def reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.calls.append((self.path, self.headers.get("authorization")))
        if self.headers.get("authorization") != f"Bearer {self.token}":
            return self.reply(401, {"error": "Invalid credentials in Authorization header"})
        if self.path == "/api/repos/create":
            request = json.loads(body)
            self.calls.append(("create", request))
            url = f"http://{self.headers['host']}/{request['organization']}/{request['name']}"
            return self.reply(200, {"url": url})
        if self.path == "/api/validate-yaml":  # the card's front matter, checked as the Hub parses it
            front = json.loads(body)["content"].split("---")[1]
            self.calls.append(("card", yaml.safe_load(front)))
            return self.reply(200, {"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self.reply(
                200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if "/commit/" in self.path:
            for line in body.decode().splitlines():
                record = json.loads(line)
                if record["key"] == "file":
                    self.files[record["value"]["path"]] = base64.b64decode(record["value"]["content"])
            url = f"http://{self.headers['host']}/me/tiny-sst2/commit/{'1' * 40}"
            return self.reply(200, {"commitUrl": url, "commitOid": "1" * 40, "success": True})
        return self.reply(404, {"error": f"stub has no {self.path}"})


@pytest.fixture
def hub():
    StubHub.calls, StubHub.files = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def push(run, endpoint, token, *extra, offline="0"):
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": offline, "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "bertfit", "push", str(run), "--repo-id", "me/tiny-sst2", *extra],
        capture_output=True,
        text=True,
        env={**env, "HF_HOME": str(run.parent / "hf-home")},
        timeout=300,
    )


@pytest.fixture(scope="module")
def finished(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("push") / "run"
    args = sample_run_args(tiny_bert, out, "--max-steps", 4, "--eval-every", 2, "--batch-size", 8, "--lr", "1e-3")
    done = subprocess.run([sys.executable, "-m", "bertfit", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_push_creates_the_repo_and_uploads_the_run_without_checkpoints(finished, hub):
    done = push(finished, hub, StubHub.token, "--private")
    assert done.returncode == 0, done.stderr
    assert "pushed" in done.stdout and f"{hub}/me/tiny-sst2/commit/" in done.stdout
    (create,) = [request for path, request in StubHub.calls if path == "create"]
    assert create["name"] == "tiny-sst2" and create["organization"] == "me"
    assert create.get("visibility") == "private" or create.get("private") is True
    card = [request for path, request in StubHub.calls if path == "card"][-1]
    assert card["model-index"][0]["results"] and "bertfit" in card["tags"]
    uploaded = set(StubHub.files)
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "metrics.json"} <= uploaded
    assert not any(path.startswith(("checkpoints/", ".bertfit")) for path in uploaded)
    assert StubHub.files["README.md"] == (finished / "README.md").read_bytes()
    assert StubHub.files["model.safetensors"] == (finished / "model.safetensors").read_bytes()


def test_an_unauthenticated_push_is_one_line(finished, hub):
    done = push(finished, hub, None)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: the Hub refused the push: not logged in; run `hf auth login` or set HF_TOKEN, then push again"
    ]


def test_an_offline_push_is_one_line(finished, hub):
    done = push(finished, hub, StubHub.token, offline="1")
    assert done.returncode == 2 and "cannot push while HF_HUB_OFFLINE is set" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not StubHub.calls


def test_an_unreachable_hub_is_one_line(finished):
    done = push(finished, "http://127.0.0.1:9", StubHub.token)
    assert done.returncode == 2 and "the Hub cannot be reached" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
