"""Lines for the avatar from a language model: an OpenAI-compatible or Ollama chat endpoint, off the frame path.

The context stage hands each event and a compact summary of the session to `LLMResponder.respond`,
which returns at once: the request runs on a background thread with a timeout, one at a time
(events that come while one is in flight are answered by the rules instead), and the reply goes
to the speech queue whenever it arrives. A slow or failing endpoint therefore never holds a
frame back; failures are counted, logged once, and answered by the rules.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a friendly animated avatar in a video call. You see the user's face and hear when they speak. "
    "Given what just happened and the session context as JSON, reply with one short, warm sentence to say aloud. "
    "No emojis, no stage directions."
)
MAX_REPLY_CHARS = 200


class LLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str  # the chat endpoint: http://host:11434/api/chat (Ollama) or …/v1/chat/completions (OpenAI-compatible)
    model: str = "llama3.2"
    api: Literal["openai", "ollama"] = "openai"
    timeout_s: float = Field(5.0, gt=0.0, le=120.0)
    api_key: str | None = None  # sent as a bearer token when given


class LLMResponder:
    """Asks the endpoint for a line per event, in the background; `deliver(line)` receives replies."""

    def __init__(self, options: LLMOptions, deliver: Any, fallback: Any):
        self.options = options
        self.deliver = deliver  # called with each reply (from the background thread)
        self.fallback = fallback  # called with the event when the endpoint cannot answer it
        self.requests = 0
        self.replies = 0
        self.failures = 0
        self._busy = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="context-llm")

    def respond(self, event: dict[str, Any], context: dict[str, Any]) -> bool:
        """Start a request for `event`; False when one is already in flight (the caller answers it)."""
        if self._busy.is_set():
            return False
        self._busy.set()
        self.requests += 1
        self._pool.submit(self._ask, event, context)
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _ask(self, event: dict[str, Any], context: dict[str, Any]) -> None:
        try:
            line = self._request(event, context)
            self.replies += 1
            self.deliver(line)
        except Exception as exc:  # any failure: counted, told once, and the rules answer instead
            self.failures += 1
            if self.failures == 1:
                log.warning(
                    "context: language model at %s failed (%s); the rules answer instead", self.options.url, exc
                )
            self.fallback(event)
        finally:
            self._busy.clear()

    def _request(self, event: dict[str, Any], context: dict[str, Any]) -> str:
        options = self.options
        prompt = json.dumps({"event": event, "context": context}, separators=(",", ":"))
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        body: dict[str, Any] = {"model": options.model, "messages": messages, "stream": False}
        if options.api == "openai":
            body["max_tokens"] = 60
        headers = {"Content-Type": "application/json"}
        if options.api_key:
            headers["Authorization"] = f"Bearer {options.api_key}"
        request = urllib.request.Request(options.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=options.timeout_s) as response:
            reply = json.loads(response.read())
        text = reply["message"]["content"] if options.api == "ollama" else reply["choices"][0]["message"]["content"]
        text = " ".join(str(text).split())[:MAX_REPLY_CHARS]
        if not text:
            raise ValueError("empty reply")
        return text
