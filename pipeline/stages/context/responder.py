"""Lines for the avatar from a language model: an OpenAI-compatible or Ollama chat endpoint, off the frame path.

The context stage hands each event and a compact summary of the session to `LLMResponder.respond`.
The request is a side job (`pipeline.side_work`) with a timeout, one at a time (events that come
while one is in flight are answered by the rules instead), and the reply goes to the speech queue
whenever it arrives. On live runs it runs beside the frames, so a slow or failing endpoint never
holds a frame back; on file runs in line, so the reply lands on a known frame. Failures are
counted, logged once, and answered by the rules.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.side_work import JobKind, SideJob

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a friendly animated avatar in a video call. You see the user's face and hear what they say. "
    "Given what just happened and the session context as JSON (its conversation holds what the user and you "
    "said, oldest first), reply with one short, warm sentence to say aloud; when the user said something "
    "(a user_said event), answer it. No emojis, no stage directions."
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
    """Asks the endpoint for a line per event, as a side job; `deliver(line)` receives replies."""

    def __init__(self, options: LLMOptions, deliver: Any, fallback: Any, side_job: Callable[..., SideJob[None]]):
        self.options = options
        self.deliver = deliver  # called with each reply (from the background thread)
        self.fallback = fallback  # called with the event when the endpoint cannot answer it
        self.requests = 0
        self.replies = 0
        self.failures = 0
        # Waiting on the network, not the CPU: no need to start between frames.
        self._asking = side_job(self._ask, "ask", kind=JobKind.LATEST, between_frames=False)

    def respond(self, event: dict[str, Any], context: dict[str, Any]) -> bool:
        """Ask about `event`; False when a request is already in flight (the caller answers it)."""
        if self._asking.busy:
            return False
        self.requests += 1
        self._asking.submit(event, context)
        return True

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
