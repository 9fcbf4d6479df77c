"""Asking an OpenAI-compatible chat endpoint for a reply, through a cache, until the reply passes its checks.

Requests ask for structured output (the reply's JSON schema) where the server supports it; the first
refusal switches to plain JSON for the rest of the run. Every reply is cached under
plans/llm_cache/ by a hash of (model, messages, seed), so a re-run sends no request, and a cached
reply is parsed again like a fresh one. A rejected reply is asked again with the problem fed back,
and every rejection becomes a failure record for plans/llm_failures.jsonl, with its raw text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from curation.core.config import LayoutConfig
from curation.core.errors import CurateError
from curation.core.workspace import Workspace, atomic_write_json
from generators.llm_reply import MAX_REPLY_CHARS, ReplyRejected

if TYPE_CHECKING:
    from openai import OpenAI

T = TypeVar("T")

_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")


def storable_text(text: str) -> str:
    """Unpaired surrogates (what a lone JSON "\\ud800" escape decodes to) and NUL become U+FFFD, one each.

    Surrogates cannot be encoded as UTF-8, so neither the retry request nor plans.jsonl could carry
    them, and NUL ends strings in the C code that reads plans, failure logs and cache files downstream.
    The cache stores the reply after this, so a re-run reads back exactly what the first run used:
    two lone surrogates stored as JSON escapes would otherwise decode as one valid character.
    """
    return _UNSTORABLE.sub("\ufffd", text)


class LLMClient:
    """Sends chat requests through the cache; remembers whether the server takes structured output."""

    def __init__(self, ws: Workspace, config: LayoutConfig):
        from openai import OpenAI

        if not os.environ.get("OPENAI_API_KEY"):
            raise CurateError(
                "layout.planner = 'llm' needs OPENAI_API_KEY (any value for a local server) "
                "and OPENAI_BASE_URL for a non-OpenAI endpoint"
            )
        self.client: OpenAI = OpenAI(max_retries=config.llm_http_retries, timeout=config.llm_timeout)
        self.config = config
        self.cache_dir = ws.root / "plans" / "llm_cache"
        self.structured = True
        self._lock = threading.Lock()

    def ask(self, messages: list[dict], seed: int, schema: type[BaseModel]) -> str:
        """The reply text, from the cache when this exact (model, messages, seed) was asked before.

        Raises:
            CurateError: the endpoint is unreachable or refuses the request (configuration errors).
            openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError: still
                failing after the client's retries with backoff; the caller records them.
        """
        import openai

        model = self.config.llm_model
        key = hashlib.sha256(
            json.dumps({"model": model, "messages": messages, "seed": seed}, sort_keys=True).encode()
        ).hexdigest()
        path = self.cache_dir / f"{key}.json"
        if (cached := _cached_reply(path)) is not None:
            return storable_text(cached)
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "seed": seed,
            "temperature": self.config.llm_temperature,
        }
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": schema.__name__, "strict": True, "schema": schema.model_json_schema()},
        }
        try:
            try:
                response = self.client.chat.completions.create(
                    **kwargs, **({"response_format": response_format} if self.structured else {})
                )
            except openai.BadRequestError:
                if not self.structured:
                    raise
                with self._lock:  # the server has no structured output: plain JSON + repair from now on
                    self.structured = False
                response = self.client.chat.completions.create(**kwargs)
        except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError):
            raise  # transient and already retried with backoff: the caller records it and moves on
        except openai.APIConnectionError as exc:
            raise CurateError(f"cannot reach the LLM endpoint {self.client.base_url}: {exc}") from exc
        except openai.APIStatusError as exc:
            raise CurateError(
                f"the LLM endpoint refused the request: HTTP {exc.status_code}: {exc.message}"
            ) from exc
        reply = storable_text(response.choices[0].message.content or "")
        atomic_write_json(path, {"model": model, "messages": messages, "seed": seed, "reply": reply})
        return reply


def _cached_reply(path: Path) -> str | None:
    """The reply cached at path, or None when there is none or the file is unreadable (asked again).

    Only the file's own JSON is read here; the reply it holds is parsed like a fresh one.
    """
    try:
        reply = json.loads(path.read_text(encoding="utf-8"))["reply"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return reply if isinstance(reply, str) else None


def ask_until_valid(
    llm: LLMClient,
    messages: list[dict],
    seed: int,
    schema: type[BaseModel],
    parse: Callable[[str], T],
    record: dict,
) -> tuple[T | None, str | None, list[dict]]:
    """Ask, parse, and re-ask with the error fed back, up to llm_max_retries times.

    Returns:
        (the parsed value or None, the last raw reply (clipped to MAX_REPLY_CHARS when rejected),
        one failure record per rejected attempt).
    """
    import openai

    failures: list[dict] = []
    raw: str | None = None
    for attempt in range(llm.config.llm_max_retries + 1):
        where = {**record, "attempt": attempt, "model": llm.config.llm_model}
        try:
            raw = llm.ask(messages, seed, schema)
        except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError) as exc:
            failures.append(
                {**where, "error": f"request failed: {type(exc).__name__}: {exc}", "raw_reply": None}
            )
            continue
        try:
            return parse(raw), raw, failures
        except ReplyRejected as exc:
            raw = raw[:MAX_REPLY_CHARS]
            failures.append({**where, "error": str(exc), "raw_reply": raw})
            feedback = f"That reply was rejected: {exc}. Reply again with corrected JSON only."
            messages = [
                *messages,
                {"role": "assistant", "content": raw},
                {"role": "user", "content": feedback},
            ]
    for failure in failures:
        failure["fell_back"] = True
    return None, raw, failures
