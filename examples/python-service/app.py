"""A small WSGI service (stdlib wsgiref) instrumented with the real sentry-sdk, whose
transactions link to the profiles the agent sends: each transaction carries the agent's
profiler_id and the kernel thread id of the thread that served it (see README.md here).

    SENTRY_DSN=... PROFILER_ID_FILE=/run/app/profiler-id python app.py --port 8000

Endpoints: /work (a CPU-bound view, ~60 ms), /flush (sentry_sdk.flush(), for tests).
"""
import argparse
import os
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

import sentry_sdk
from sentry_sdk.integrations.wsgi import SentryWsgiMiddleware

PROFILER_ID_FILE = os.environ.get("PROFILER_ID_FILE", "/run/app/profiler-id")


def read_profiler_id():
    try:
        with open(PROFILER_ID_FILE) as f:
            return f.read().strip() or None
    except OSError:
        return None  # no agent running: send the transaction unlinked


def link_to_agent_profile(event, hint):
    profiler_id = read_profiler_id()
    if profiler_id is None:
        return event
    # sentry-python names threads by threading.get_ident(); the agent by kernel thread id.
    native = {str(t.ident): str(t.native_id) for t in threading.enumerate()}
    contexts = event.setdefault("contexts", {})
    contexts["profile"] = {"profiler_id": profiler_id}
    data = contexts.setdefault("trace", {}).setdefault("data", {})
    data["profiler_id"] = profiler_id
    data["thread.id"] = native.get(str(data.get("thread.id")), str(threading.get_native_id()))
    for span in event.get("spans", []):
        span_data = span.setdefault("data", {})
        span_data["profiler_id"] = profiler_id
        if "thread.id" in span_data:
            span_data["thread.id"] = native.get(str(span_data["thread.id"]), span_data["thread.id"])
    return event


sentry_sdk.init(
    dsn=os.environ.get("SENTRY_DSN"),
    traces_sample_rate=1.0,
    before_send_transaction=link_to_agent_profile,
    # no profile_session_sample_rate / profiles_sample_rate: the agent is the profiler
)


def compute_report(n):
    total = 0
    for i in range(n):
        total += i * i % 13
    return total


def work_view(environ, start_response):
    deadline = time.perf_counter() + 0.06
    rounds = 0
    while time.perf_counter() < deadline:
        compute_report(20000)
        rounds += 1
    body = f"rounds {rounds}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def flush_view(environ, start_response):
    sentry_sdk.flush(timeout=5)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/flush":
        return flush_view(environ, start_response)
    return work_view(environ, start_response)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    server = make_server("127.0.0.1", args.port, SentryWsgiMiddleware(app), handler_class=QuietHandler)
    print(f"ready {os.getpid()} {server.server_port} {threading.get_native_id()}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
