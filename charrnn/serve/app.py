"""The ASGI application (Starlette): the page and the JSON API over the runs it was given.

    GET  /                 the page (page.py), with its script and style inlined
    GET  /api/info         the runs, the limits and the features of the unit picker
    POST /api/probs        {text, top?, run?} -> the most likely next tokens after the text
    POST /api/score        {text, run?} -> the log-probability of the text
    POST /api/activations  {text, run?, encoding?} -> every state after every token, the top
                           next-token guesses per token and the units ranked per feature
    POST /api/generate     {prefix?, length?, temperature?, top_k?, greedy?, seed?, n?, run?}
                           -> server-sent events as the text is drawn

Errors are JSON {"error": one line, "status": code} with a 4xx status (limits.py); a failure
the server did not foresee is a JSON 500 that says it is a bug. The runs are read once, before
the app is made: no request reads or writes a file. The NumPy work runs in worker threads
(Starlette's thread pool), one at a time per run (engine.py); past `max_pending` requests at
once, or `max_generations` streams, the answer is 429 with Retry-After.
"""
import json

import numpy as np
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from charrnn.base.errors import CharrnnError
from charrnn.serve.engine import activation_payload
from charrnn.serve.features import FEATURES
from charrnn.serve.limits import Fields, Limits, RequestError, parse_body
from charrnn.serve.page import render_page


def error_response(status, message) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 429 else None
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class Admission:
    """Counts the work in progress; a request past the limit is refused (429), never queued without end."""

    def __init__(self, limit, what):
        self.limit, self.what, self.busy = limit, what, 0

    def enter(self):
        if self.busy >= self.limit:
            raise RequestError(429, f"the server is busy: {self.limit} {self.what} at once; try again")
        self.busy += 1

    def leave(self):
        self.busy -= 1


def make_app(runs, limits=None) -> Starlette:
    """The app over `runs` (engine.ServedRun, loaded already); the first is the default run."""
    limits = limits or Limits()
    by_name = {run.name: run for run in runs}
    pending = Admission(limits.max_pending, "requests computing")
    streams = Admission(limits.max_generations, "generations")
    page = render_page()

    async def read_fields(request) -> Fields:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise RequestError(413, f"the request body is over {limits.max_body_bytes:,} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise RequestError(413, f"the request body is over {limits.max_body_bytes:,} bytes")
        return Fields(parse_body(bytes(body), limits), limits)

    def pick_run(fields):
        name = fields._get("run", None)
        if name is None:
            return runs[0]
        if not isinstance(name, str) or name not in by_name:
            raise RequestError(404, f"no run {str(name)[:100]!r} here; the runs: {', '.join(by_name)}")
        return by_name[name]

    async def compute(function, *args):
        pending.enter()
        try:
            return await run_in_threadpool(guarded, function, *args)
        finally:
            pending.leave()

    def endpoint(handler):
        async def wrapped(request):
            try:
                return JSONResponse(await handler(await read_fields(request)))
            except RequestError as err:
                return error_response(err.status, err.message)
        return wrapped

    async def probs(fields):
        run = pick_run(fields)
        text = fields.text("text", limits.max_text_chars)
        top = fields.integer("top", 10, 1, limits.max_top)
        fields.done()
        return await compute(run.probs, text, top)

    async def score(fields):
        run = pick_run(fields)
        text = fields.text("text", limits.max_text_chars)
        fields.done()
        return await compute(run.score, text)

    async def activations(fields):
        run = pick_run(fields)
        text = fields.text("text", limits.max_activation_chars)
        encoding = fields.choice("encoding", "base64", ("base64", "list"))
        fields.done()
        return await compute(lambda: activation_payload(run, text, encoding, limits.max_activation_values)[0])

    async def generate(request):
        try:
            fields = await read_fields(request)
            run = pick_run(fields)
            prefix = fields.text("prefix", limits.max_text_chars, run.config.sample_prefix or run.vocab.token_freqs[0][0])
            length = fields.integer("length", 200, 0, limits.max_length)
            temperature = fields.number("temperature", 1.0, 0.0, limits.max_temperature)
            top_k = fields.integer("top_k", None, 1, 2**31 - 1)
            greedy = fields.flag("greedy")
            seed = fields.integer("seed", 0, 0, 2**63 - 1)
            n = fields.integer("n", 1, 1, limits.max_n)
            fields.done()
            if greedy and ("temperature" in fields.body or top_k is not None):
                raise RequestError(400, "'greedy' takes the most likely token; it cannot be combined with "
                                        "'temperature' or 'top_k'")
            streams.enter()
            release = Release(streams)
            try:
                first = await compute(run.generation, prefix, length, seed, temperature, top_k, greedy)
            except BaseException:
                release()
                raise
        except RequestError as err:
            return error_response(err.status, err.message)
        return StreamingResponse(events(run, first, prefix, length, seed, temperature, top_k, greedy, n, release),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-store"},
                                 background=BackgroundTask(release))

    async def events(run, first, prefix, length, seed, temperature, top_k, greedy, n, release):
        """Server-sent events: per sample {"sample", "prefix", "notes"}, then {"sample", "text"}
        chunks, then {"sample", "end": true}; last {"done": true} (or {"error"} if a draw failed)."""
        try:
            for k in range(n):
                reading, chunks = first if k == 0 else await run_in_threadpool(
                    run.generation, prefix, length, seed + k, temperature, top_k, greedy)
                yield sse({"sample": k, "prefix": reading.preprocessed, "notes": reading.notes})
                while True:
                    chunk = await run_in_threadpool(next_chunk, chunks)
                    if chunk is None:
                        break
                    yield sse({"sample": k, "text": chunk})
                yield sse({"sample": k, "end": True})
            yield sse({"done": True})
        except CharrnnError as err:
            yield sse({"error": str(err)})
        finally:
            release()

    async def info(request):
        return JSONResponse({"runs": [run.describe() for run in runs], "limits": limits.describe(),
                             "features": list(FEATURES)})

    async def index(request):
        return HTMLResponse(page)

    async def http_error(request, exc):
        return error_response(exc.status_code, exc.detail or "error")

    async def bug(request, exc):
        return JSONResponse({"error": f"unexpected {type(exc).__name__} in the server: a bug in charrnn",
                             "status": 500}, status_code=500)

    routes = [Route("/", index), Route("/api/info", info),
              Route("/api/probs", endpoint(probs), methods=["POST"]),
              Route("/api/score", endpoint(score), methods=["POST"]),
              Route("/api/activations", endpoint(activations), methods=["POST"]),
              Route("/api/generate", generate, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: bug})


class Release:
    """Leaves an Admission once, however many of the stream's ends call it (its last event, a
    client gone, a response never started)."""

    def __init__(self, admission):
        self.admission, self.done = admission, False

    def __call__(self):
        if not self.done:
            self.done = True
            self.admission.leave()


def guarded(function, *args):
    """Run NumPy work with no warning printed; a text the run cannot read -> RequestError 422."""
    try:
        with np.errstate(all="ignore"):
            return function(*args)
    except CharrnnError as err:
        raise RequestError(422, str(err)) from None


def next_chunk(chunks):
    with np.errstate(all="ignore"):
        return next(chunks, None)


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
