"""Calls to an OpenAI-compatible chat endpoint: cached, budgeted, retried, key redacted.

Every completed call is appended to a JSON-lines cache (one file per job, outside the job's
outputs) as soon as it returns, keyed by a hash of what answers it (the model name, the endpoint
and what the endpoint says it serves under that name: ``served``; or the served GGUF file's
content), the rendered messages and the sampling parameters -- never the key -- so a rerun, or a
job killed midway and started again, pays for no call twice, and new weights behind an old name
are asked again. Only answers are cached: a transport failure (HTTP
408/409/429/5xx after the client's retries, a timeout, a malformed body) is not, and it ends the
job with an error. Any other 4xx stops the job at once with the status and the server's message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import openai

from ..progress import Progress

log = logging.getLogger("drdo.judge")
# An English token is ~4 characters for GPT-style tokenizers; 3 keeps the estimate on the high side.
CHARS_PER_TOKEN = 3.0
TOKENS_PER_MESSAGE = 8  # role markers and the like
RETRYABLE = (408, 409, 429)
# /v1/models fields that do not identify the weights: llama.cpp and vLLM report the time of the
# request as `created`, vLLM a new permission id per request.
VOLATILE = ("created", "permission", "object")


class JudgeError(RuntimeError):
    """A call that cannot be completed; its message never holds the API key."""


# --------------------------------------------------------------------------- keys and cache
def call_key(model: str, messages: list[dict], sampling: dict) -> str:
    blob = json.dumps({"model": model, "messages": messages, "sampling": sampling}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Call:
    key: str
    messages: list[dict]
    sampling: dict  # temperature, max_tokens, response_format


class CallCache:
    """Append-only JSON lines ``{key, content, finish_reason, prompt_tokens, completion_tokens, ...}``.

    A line cut short by a kill is skipped on reading (its call is simply made again), and the file
    is rewritten without it at once: an answer appended after a torn line would otherwise be
    glued onto it and lost on every later read."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        self.skipped = 0
        self._lock = threading.Lock()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self.records[rec["key"]] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.skipped += 1
            if self.skipped:
                self._rewrite()

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def drop(self, keys: set[str]) -> None:
        """Forget the answers under ``keys`` (rewrites the file atomically)."""
        with self._lock:
            self.records = {k: r for k, r in self.records.items() if k not in keys}
            self._rewrite()

    def _rewrite(self) -> None:
        """The file holds exactly ``records`` (written beside it, then renamed over it)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records.values())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def put(self, rec: dict) -> None:
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.records[rec["key"]] = rec


# --------------------------------------------------------------------------- budget
def cost_usd(prompt_tokens: float, completion_tokens: float, prices: dict) -> float:
    return (prompt_tokens * prices["input_per_mtok"] + completion_tokens * prices["output_per_mtok"]) / 1e6


def estimate(calls: list[Call], prices: dict) -> dict:
    """An upper-side estimate of new calls: input from characters, output at max_tokens."""
    prompt = sum(sum(len(m["content"]) for m in c.messages) / CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * len(c.messages)
                 for c in calls)
    completion = sum(c.sampling["max_tokens"] for c in calls)
    return {"requests": len(calls), "prompt_tokens": int(prompt), "completion_tokens": int(completion),
            "usd": cost_usd(prompt, completion, prices)}


def check_budget(est: dict, max_usd: float | None, max_requests: int | None, prices: dict) -> None:
    """Refuse to start a job whose new calls would exceed judge.max_requests or judge.max_usd."""
    if max_requests is not None and est["requests"] > max_requests:
        raise JudgeError(f"judge.max_requests={max_requests}: this job needs {est['requests']} new calls; "
                         "raise the limit or judge fewer prompts (judge.n_prompts, judge.comparisons)")
    if max_usd is not None and est["usd"] > max_usd:
        raise JudgeError(
            f"judge.max_usd={max_usd}: this job's {est['requests']} new calls are estimated at "
            f"${est['usd']:.2f} (~{est['prompt_tokens']:,} input tokens at ${prices['input_per_mtok']}/M, "
            f"up to {est['completion_tokens']:,} output tokens at ${prices['output_per_mtok']}/M); "
            "raise the limit or judge fewer prompts")


# --------------------------------------------------------------------------- redaction
class Redactor(logging.Filter):
    """Replaces the API key in every log record (and in error messages through ``__call__``)."""

    def __init__(self, secret: str | None):
        super().__init__()
        self.secret = secret if secret and len(secret) >= 4 else None

    def __call__(self, text: str) -> str:
        return text.replace(self.secret, "[REDACTED]") if self.secret else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret:
            record.msg = self(record.getMessage())
            record.args = None
        return True


# --------------------------------------------------------------------------- calls
@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0
    reserved: float = 0.0  # estimated cost of the calls in flight (judge.max_usd counts it as spent)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class JudgeClient:
    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float, max_retries: int,
                 redact: Redactor):
        # Local servers ignore the key, but the client insists on one.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "no-key", timeout=timeout_s,
                                    max_retries=max_retries)
        self.base_url, self.model, self.timeout_s, self.max_retries = base_url, model, timeout_s, max_retries
        self.redact = redact
        self.server_id: str | None = None  # recorded with each answer (stage.run sets it)

    def served(self) -> dict:
        """What answers calls to ``model`` here: the endpoint and its /models entry for that name
        (id, owned_by, meta: e.g. llama.cpp's model file and size), or the only entry of a one-model
        server (llama.cpp names it by its file, whatever name the client sends). An endpoint without
        /models is identified by its URL alone (warned)."""
        try:
            listed = [m.model_dump() for m in self.client.models.list().data]
        except openai.NotFoundError:
            log.warning("judge endpoint %s has no /models: its answers are cached under its URL and judge.model "
                        "alone (new weights behind the same name would not be noticed)", self.base_url)
            return {"endpoint": self.base_url, "model": self.model, "served": None}
        except openai.APIStatusError as e:
            raise JudgeError(self.redact(f"judge endpoint {self.base_url}: GET /models (to tell which weights answer) "
                                         f"failed with HTTP {e.status_code}: {_server_message(e)}")) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            raise JudgeError(self.redact(f"judge endpoint {self.base_url}: cannot ask which model it serves "
                                         f"(GET /models): {e}")) from None
        entries = [m for m in listed if m.get("id") == self.model] or (listed if len(listed) == 1 else [])
        if not entries:
            raise JudgeError(f"judge endpoint {self.base_url} does not serve judge.model={self.model!r} "
                             f"(its /models lists {[m.get('id') for m in listed][:20]})")
        served = {k: v for k, v in entries[0].items() if k not in VOLATILE}
        return {"endpoint": self.base_url, "model": self.model, "served": served}

    def complete(self, call: Call) -> dict:
        """One answer as a cache record; raises JudgeError (key redacted) when there is none."""
        kwargs = {"model": self.model, "messages": call.messages, "temperature": call.sampling["temperature"],
                  "max_tokens": call.sampling["max_tokens"]}
        if call.sampling.get("response_format"):
            kwargs["response_format"] = call.sampling["response_format"]
        # The openai client retries 408/409/429/5xx, timeouts and connection errors itself (honouring
        # retry-after); a 200 with an unreadable body is retried here, as many times.
        for attempt in range(self.max_retries + 1):
            try:
                resp = self.client.chat.completions.create(**kwargs)
            except openai.APIStatusError as e:
                status = e.status_code
                what = "still failing after" if status in RETRYABLE or status >= 500 else "refused (not retried,"
                tail = f"{self.max_retries} retries" if what.startswith("still") else "judge.max_retries does not apply)"
                raise JudgeError(self.redact(f"judge endpoint {self.base_url}: HTTP {status} {what} {tail}: "
                                             f"{_server_message(e)}")) from None
            except openai.APITimeoutError:
                raise JudgeError(f"judge endpoint {self.base_url}: no answer within judge.timeout_s={self.timeout_s} s, "
                                 f"still after {self.max_retries} retries (judge.max_retries)") from None
            except openai.APIConnectionError as e:
                raise JudgeError(self.redact(f"judge endpoint {self.base_url}: connection failed after "
                                             f"{self.max_retries} retries: {e}")) from None
            except (ValueError, openai.APIResponseValidationError) as e:  # body is not JSON / not a completion
                problem = f"unreadable response body ({type(e).__name__})"
            else:
                rec, problem = _record(resp)
                if rec is not None:
                    return {"key": call.key, "model": self.model, "server": self.server_id, **rec, "time": time.time()}
            log.warning("malformed answer from the judge endpoint (%s), attempt %d of %d", problem, attempt + 1,
                        self.max_retries + 1)
            if attempt < self.max_retries:
                time.sleep(min(0.5 * 2 ** attempt, 8.0))
        raise JudgeError(f"judge endpoint {self.base_url}: malformed answers ({problem}) in all "
                         f"{self.max_retries + 1} attempts (judge.max_retries)")


def _server_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return str(msg)[:500]
    return str(e.message)[:500]


def _record(resp) -> tuple[dict | None, str]:
    """The cached fields of a chat completion, or (None, problem) when it is not one."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        return None, "no choices"
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None) if message is not None else None
    if content is not None and not isinstance(content, str):
        return None, "content is not text"
    usage = getattr(resp, "usage", None)
    prompt_tokens = getattr(usage, "prompt_tokens", None) if usage is not None else None
    completion_tokens = getattr(usage, "completion_tokens", None) if usage is not None else None
    if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
        return None, "no token usage"  # without it the call cannot be accounted for
    return {"content": content if content is not None else "", "finish_reason": getattr(choices[0], "finish_reason", None),
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}, ""


def run_calls(calls: list[Call], client: JudgeClient, cache: CallCache, max_concurrency: int, prices: dict,
              max_usd: float | None, max_requests: int | None) -> Usage:
    """Make every call not yet cached, ``max_concurrency`` at a time, caching each as it returns.

    On the first failure no new call starts; calls in flight finish (and are cached, they are
    paid), then the failure is raised. The spend is re-checked against the limits before each call:
    a call starts only if the spend so far, the estimated cost of the calls in flight (reserved when
    each was sent, settled with its real cost when it returns) and its own estimate fit judge.max_usd.
    """
    usage = Usage()
    todo = [c for c in calls if c.key not in cache]
    stop = threading.Event()
    progress = Progress(log, "judge", len(todo), "calls")

    def one(call: Call) -> None:
        reserve = estimate([call], prices)["usd"]
        with usage.lock:
            if stop.is_set():
                return
            if max_requests is not None and usage.calls >= max_requests:
                stop.set()
                raise JudgeError(f"judge.max_requests={max_requests} reached during the run")
            if max_usd is not None and usage.usd + usage.reserved + reserve > max_usd:
                stop.set()
                raise JudgeError(f"judge.max_usd={max_usd} reached during the run (spent ${usage.usd:.4f}, "
                                 f"${usage.reserved:.4f} estimated for the calls in flight, ${reserve:.4f} for the next)")
            usage.calls += 1  # counted when it starts: a call in flight may be billed
            usage.reserved += reserve
        try:
            rec = client.complete(call)
        except BaseException:
            stop.set()
            with usage.lock:
                usage.reserved -= reserve
            raise
        cache.put(rec)
        with usage.lock:
            usage.reserved -= reserve
            usage.prompt_tokens += rec["prompt_tokens"]
            usage.completion_tokens += rec["completion_tokens"]
            usage.usd += cost_usd(rec["prompt_tokens"], rec["completion_tokens"], prices)
        progress.update(1, f"${usage.usd:.4f} spent")

    with ThreadPoolExecutor(max_workers=max_concurrency) as pool:
        futures = [pool.submit(one, c) for c in todo]
        wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.done() and f.exception() is not None for f in futures):
            stop.set()
            for f in futures:
                f.cancel()  # calls not started yet; those in flight finish and are cached
    errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
    if errors:
        raise JudgeError(f"{errors[0]} ({len(errors)} call(s) failed; {len(cache.records)} answers are cached in "
                         f"{cache.path} and will not be paid for again)") from None
    return usage
