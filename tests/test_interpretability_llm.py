"""The optional LLM explainer/scorer against a local OpenAI-compatible server on 127.0.0.1.

No LLM runs here: the server answers from a script, counts requests, and fails on purpose
(HTTP 429 and 500) to exercise the retries. Every request is bounded by the client's timeout.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from analysis.interpretability.llm import (
    ChatClient,
    balanced_accuracy,
    detect_with_llm,
    explain_with_llm,
    fuzz_with_llm,
    highlight,
)
from replacement.errors import SparseCircuitsError


class FakeChat:
    """Replies by prompt kind; the first `fail` requests get the given HTTP codes."""

    def __init__(self, fail=()):
        self.fail = list(fail)
        self.requests: list[dict] = []
        self.times: list[float] = []


def serve(chat: FakeChat):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            chat.requests.append(
                {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
            )
            chat.times.append(time.monotonic())
            if chat.fail:
                self.send_response(chat.fail.pop(0))
                self.end_headers()
                return
            system = body["messages"][0]["content"]
            user = body["messages"][1]["content"]
            if "[EXPLANATION]" in system:
                reply = "The examples share a keyword.\n[EXPLANATION]: the keyword 'return'"
            else:  # answer 1 where the example mentions return (and, fuzzing, marks it)
                lines = [x for x in user.splitlines() if x.startswith("Example")]
                marked = "<<" in user
                reply = str([int("<<return>>" in x if marked else "return" in x) for x in lines])
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def fake():
    chat = FakeChat()
    server = serve(chat)
    yield chat, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_explain_detect_fuzz_through_the_chat_api(fake, tmp_path):
    chat, url = fake
    client = ChatClient(url, "local-model", api_key="k", cache_dir=tmp_path, timeout_s=5)
    examples = [(["x", " return", " y"], [False, True, False])]
    assert explain_with_llm(client, examples) == "the keyword 'return'"
    first = chat.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer k"
    assert "Example 1: x<< return>> y" in first["body"]["messages"][1]["content"]
    contexts = [["a", " return"], ["b", " c"], [" return"], ["d"]]
    said = detect_with_llm(client, "return", contexts)
    assert said == [1, 0, 1, 0]
    assert balanced_accuracy(said, [True, False, True, False]) == 1.0
    fuzz = fuzz_with_llm(
        client, "return", [(["return", "x"], [True, False]), (["return", "x"], [False, True])]
    )
    assert fuzz == [1, 0]
    # the same request again comes from the disk cache
    n = client.requests_sent
    assert explain_with_llm(client, examples) == "the keyword 'return'"
    assert client.requests_sent == n and len(chat.requests) == n


def test_retries_rate_limit_and_errors(tmp_path):
    chat = FakeChat(fail=[429, 500])
    server = serve(chat)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        client = ChatClient(url, "m", backoff_s=0.01, min_interval_s=0.05, timeout_s=5)
        assert explain_with_llm(client, [(["a"], [True])]) == "the keyword 'return'"
        assert len(chat.requests) == 3  # two failures, then the answer
        # spaced by the rate limit where they leave the client (arrival times at the server
        # also carry the scheduler's jitter)
        gaps = [b - a for a, b in zip(client.sent_at, client.sent_at[1:], strict=False)]
        assert len(client.sent_at) == 3 and min(gaps) >= 0.05
        chat.fail = [400]
        with pytest.raises(SparseCircuitsError, match="HTTP 400"):
            client.chat([{"role": "user", "content": "other"}])
        chat.fail = [503] * 10
        client.max_retries = 2
        with pytest.raises(SparseCircuitsError, match="after 3 attempts"):
            client.chat([{"role": "user", "content": "third"}])
    finally:
        server.shutdown()


def test_highlight_marks_runs():
    assert highlight(["a", " b", " c", " d"], [False, True, True, False]) == "a<< b c>> d"
