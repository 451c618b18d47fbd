"""Fixtures for the OpenAI-client tests: engine-server subprocesses serving the
bundled demo model (random weights: the text is gibberish, but greedy decoding
and seeded sampling are deterministic, which is what these tests rely on).

The binary is $ENGINE_SERVER, or target/debug/engine-server in the repository
(scripts/test-python.sh sets it). A missing binary is an error, never a skip.
"""

import json
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 30
API_KEY = "secret-key"
# Test prompts are short; a small context keeps the "too long" cases cheap.
MAX_MODEL_LEN = 256


def server_binary() -> Path:
    path = Path(os.environ.get("ENGINE_SERVER", REPO / "target" / "debug" / "engine-server"))
    if not path.is_file() or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"engine-server binary not found at {path}: build it with "
            "`cargo build -p engine-server` or set ENGINE_SERVER"
        )
    return path


class Server:
    """One engine-server process, listening on a free port on 127.0.0.1."""

    def __init__(self, *args: str, api_key: str | None = None):
        self.api_key = api_key
        self.log_file = tempfile.NamedTemporaryFile(
            prefix="engine-server-", suffix=".log", delete=False
        )
        cmd = [str(server_binary()), "--host", "127.0.0.1", "--port", "0",
               "--disable-log-requests", *args]
        if api_key is not None:
            cmd += ["--api-key", api_key]
        env = dict(os.environ)
        env.pop("VLLM_API_KEY", None)  # the key is given only by --api-key
        # The suite expects the bundled fixture as the default model.
        env["ENGINE_DEMO_MODEL"] = str(REPO / "tests" / "fixtures" / "tiny-llama")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        try:
            self.port = self._wait_for_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._wait_until_healthy()
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def _check_alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"engine-server exited with {self.proc.returncode} during startup:\n{self.log()}"
            )

    def _wait_for_port(self) -> int:
        # `--port 0` lets the OS pick a free port (no race with other processes);
        # the first log line says which: "listening on http://127.0.0.1:PORT".
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log())
            if m:
                return int(m.group(1))
            self._check_alive()
            time.sleep(0.05)
        raise RuntimeError(f"engine-server did not report its port:\n{self.log()}")

    def _wait_until_healthy(self):
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"/health was not 200 within {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    def client(self, api_key: str | None = None) -> openai.OpenAI:
        # No retries: a retried request would hide a failing first attempt.
        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=api_key or self.api_key or "unused",
            max_retries=0,
            timeout=30,
        )

    def http(self, method: str, path: str, body=None, headers=None):
        """(status, headers, body bytes) of a plain HTTP request with a JSON body
        (or none); no exception on 4xx/5xx."""
        data = None if body is None else json.dumps(body).encode()
        return self.http_raw(method, path, data, headers)

    def http_raw(self, method: str, path: str, data: bytes | None, headers=None):
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def post_json(self, path: str, body, headers=None):
        status, _, raw = self.http("POST", path, body, headers)
        return status, json.loads(raw)

    def stop(self):
        """SIGTERM, then the process must exit by itself with status 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"engine-server ignored SIGTERM for {SHUTDOWN_TIMEOUT_S} s:\n{self.log()}"
                )
        code = self.proc.returncode
        self.log_file.close()
        if code != 0:
            raise AssertionError(f"engine-server exited with {code} after SIGTERM:\n{self.log()}")
        os.unlink(self.log_file.name)


@pytest.fixture(scope="session")
def server():
    """The default server: model "demo", no API key."""
    s = Server("--max-model-len", str(MAX_MODEL_LEN))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def key_server():
    """A server that requires `Authorization: Bearer secret-key` and answers to
    two model names."""
    s = Server("--max-model-len", str(MAX_MODEL_LEN), "--served-model-name", "demo", "alias",
               api_key=API_KEY)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    return server.client()


@pytest.fixture(scope="session")
def key_client(key_server):
    return key_server.client(API_KEY)


def tokenize(server: Server, prompt: str, add_special_tokens: bool = True) -> list[int]:
    status, body = server.post_json(
        "/tokenize", {"prompt": prompt, "add_special_tokens": add_special_tokens}
    )
    assert status == 200, body
    return body["tokens"]


def assert_serves(server: Server, api_key: str | None = None):
    """The server is still healthy and still completes a request."""
    status, _, _ = server.http("GET", "/health")
    assert status == 200
    r = server.client(api_key).completions.create(
        model="demo", prompt="Still there?", max_tokens=3, temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert r.usage.completion_tokens == 3
    assert r.choices[0].finish_reason == "length"


def pytest_sessionfinish(session, exitstatus):
    # A run where nothing passed (nothing collected, everything skipped or
    # deselected) is a failure, not a success.
    if session.config.option.collectonly:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter else 0
    if exitstatus == 0 and passed == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
