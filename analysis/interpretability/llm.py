"""An optional LLM explainer and scorer through an OpenAI-compatible chat endpoint.

vLLM, ollama, llama.cpp's server and OpenRouter all serve `POST {base_url}/chat/completions`.
Prompts follow delphi's structure: the explainer sees numbered examples with the activating
tokens marked <<like this>> and answers with a line `[EXPLANATION]: ...`; the detection scorer
sees the explanation and numbered contexts and answers with a list of 0/1 (does the feature
fire in each?); the fuzzing scorer sees contexts with marked tokens and answers 0/1 (is the
marking correct?). Replies are cached on disk (keyed by a digest of the request), requests
are retried with exponential backoff, and spaced by a rate limit. Standard library only.

No LLM is run by this project's tests or runs: the client is tested against a small local
HTTP server on 127.0.0.1 that speaks this API (tests/test_interpretability_llm.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from replacement.atomic import write_text
from replacement.errors import SparseCircuitsError

EXPLAINER_SYSTEM = (
    "You are a meticulous AI researcher conducting an important investigation into patterns "
    "found in language. Your task is to analyze text and provide an explanation that thoroughly "
    "encapsulates possible patterns found in it. You will be given a list of text examples on "
    "which special words are selected and between delimiters like <<this>>. If a sequence of "
    "consecutive tokens all are important, the entire sequence of tokens will be contained "
    "between delimiters <<just like this>>. Produce a concise final description. Simply make "
    "a list of words or phrases, or describe the shared pattern. The last line of your "
    "response must be the formatted explanation, using [EXPLANATION]:"
)
DETECTION_SYSTEM = (
    "You are an intelligent and meticulous linguistics researcher. You will be given a certain "
    'feature of text, such as "male pronouns" or "text with negative sentiment". You will '
    "then be given several text examples. Your task is to determine which examples possess the "
    "feature. For each example in turn, return 1 if the sentence is correctly labeled or 0 if "
    "the tokens are mislabeled. You must return your response in a valid Python list. Do not "
    "return anything else besides a Python list."
)
FUZZING_SYSTEM = (
    "You are an intelligent and meticulous linguistics researcher. You will be given a certain "
    'feature of text, such as "male pronouns" or "text with negative sentiment". You will '
    "be given a few examples of text that contain this feature. Portions of the sentence which "
    "strongly represent this feature are between tokens << and >>. Some examples might be "
    "mislabeled. Your task is to determine if every single token within << and >> is correctly "
    "labeled. Consider that all provided examples could be correct, none of the examples could "
    "be correct, or a mix. For each example in turn, return 1 if the sentence is correctly "
    "labeled or 0 if the tokens are mislabeled. You must return your response in a valid "
    "Python list. Do not return anything else besides a Python list."
)


def highlight(tokens: Sequence[str], marked: Sequence[bool]) -> str:
    """Text with runs of marked tokens between << and >>."""
    out, inside = [], False
    for tok, m in zip(tokens, marked, strict=True):
        if m and not inside:
            out.append("<<")
        if not m and inside:
            out.append(">>")
        inside = bool(m)
        out.append(tok)
    if inside:
        out.append(">>")
    return "".join(out)


@dataclass
class ChatClient:
    """A minimal OpenAI-compatible chat client with a disk cache, retries and a rate limit."""

    base_url: str
    """e.g. http://localhost:8000/v1 (the path before /chat/completions)."""
    model: str
    api_key: str | None = None
    cache_dir: str | Path | None = None
    max_retries: int = 4
    backoff_s: float = 1.0
    min_interval_s: float = 0.0
    """Smallest time between two requests (the rate limit)."""
    timeout_s: float = 60.0
    temperature: float = 0.0
    max_tokens: int = 300
    _last: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    requests_sent: int = 0
    """Requests that reached the server (cache hits excluded)."""
    sent_at: list[float] = field(default_factory=list, repr=False)
    """When each request left (time.monotonic), spaced by min_interval_s."""

    def _cache_path(self, payload: dict) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return Path(self.cache_dir) / f"{key}.json"

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply to `messages` (from the cache when the same request was made)."""
        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        path = self._cache_path(payload)
        if path is not None and path.is_file():
            return json.loads(path.read_text())["reply"]
        reply = self._post(payload)
        if path is not None:
            write_text(path, json.dumps({"request": payload, "reply": reply}))
        return reply

    def _post(self, payload: dict) -> str:
        url = self.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = json.dumps(payload).encode()
        error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            with self._lock:  # rate limit: space requests by min_interval_s
                wait = self._last + self.min_interval_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self._last = time.monotonic()
                self.sent_at.append(self._last)
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                self.requests_sent += 1
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    data = json.loads(response.read())
                return data["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as exc:
                if exc.code not in (408, 409, 429) and exc.code < 500:
                    raise SparseCircuitsError(
                        f"chat endpoint {url} refused the request: HTTP {exc.code} {exc.reason}"
                    ) from exc
                error = exc
            except (urllib.error.URLError, TimeoutError, KeyError, ValueError) as exc:
                error = exc
            time.sleep(self.backoff_s * 2**attempt)
        raise SparseCircuitsError(
            f"chat endpoint {url} failed after {self.max_retries + 1} attempts: {error}"
        )


def explain_with_llm(
    client: ChatClient, examples: Sequence[tuple[Sequence[str], Sequence[bool]]]
) -> str:
    """An explanation of a feature from (tokens, fires) examples (delphi's explainer prompt)."""
    body = "\n".join(f"Example {i + 1}: {highlight(t, m)}" for i, (t, m) in enumerate(examples))
    reply = client.chat(
        [
            {"role": "system", "content": EXPLAINER_SYSTEM},
            {"role": "user", "content": body},
        ]
    )
    found = re.findall(r"\[EXPLANATION\]:\s*(.+)", reply)
    return found[-1].strip() if found else reply.strip().splitlines()[-1] if reply.strip() else ""


def _answers(reply: str, n: int) -> list[int]:
    match = re.search(r"\[[\s\d,]*\]", reply)
    if not match:
        return [0] * n
    values = [int(v) for v in re.findall(r"\d", match.group())]
    return (values + [0] * n)[:n]


def detect_with_llm(
    client: ChatClient, explanation: str, contexts: Sequence[Sequence[str]]
) -> list[int]:
    """For each context, 1 when the scorer says the feature fires in it (detection)."""
    body = f"Feature explanation: {explanation}\n\nText examples:\n\n" + "\n".join(
        f"Example {i + 1}: {''.join(t)}" for i, t in enumerate(contexts)
    )
    reply = client.chat(
        [
            {"role": "system", "content": DETECTION_SYSTEM},
            {"role": "user", "content": body},
        ]
    )
    return _answers(reply, len(contexts))


def fuzz_with_llm(
    client: ChatClient,
    explanation: str,
    contexts: Sequence[tuple[Sequence[str], Sequence[bool]]],
) -> list[int]:
    """For each highlighted context, 1 when the scorer says the highlighting fits (fuzzing)."""
    body = f"Feature explanation: {explanation}\n\nText examples:\n\n" + "\n".join(
        f"Example {i + 1}: {highlight(t, m)}" for i, (t, m) in enumerate(contexts)
    )
    reply = client.chat(
        [
            {"role": "system", "content": FUZZING_SYSTEM},
            {"role": "user", "content": body},
        ]
    )
    return _answers(reply, len(contexts))


def balanced_accuracy(predicted: Sequence[int], truth: Sequence[bool]) -> float:
    """Mean of the true-positive and true-negative rates."""
    pos = [p for p, t in zip(predicted, truth, strict=True) if t]
    neg = [p for p, t in zip(predicted, truth, strict=True) if not t]
    tpr = sum(pos) / len(pos) if pos else 0.0
    tnr = (len(neg) - sum(neg)) / len(neg) if neg else 0.0
    return (tpr + tnr) / 2
