"""``sip-tts call URI|NUMBER --say TEXT``: place a call through a running server's HTTP API.

For operators: it POSTs /v1/calls and, unless ``--no-wait``, follows the call to its end by
giving the server a status callback on a local port (the server must reach this host: it
normally runs on it) and printing each step.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FINAL = {"busy", "declined", "not_found", "no_answer", "unreachable", "cancelled", "failed", "ended"}


def add_parser(sub, default_config: str) -> None:
    p = sub.add_parser("call", help="place a call through a running server (POST /v1/calls) and follow it")
    p.add_argument("to", help="SIP URI (sip:...), or a number sent through --trunk")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--say", help="what the callee hears when answering")
    what.add_argument("--steps", help="a JSON list of script steps (prompts.yaml's) instead of --say")
    p.add_argument("--from", dest="from_", help="caller: a SIP URI or a number")
    p.add_argument("--trunk", help="a trunk of server.yaml (default: the only one, for a number)")
    p.add_argument("--voice", help="a voice of prompts.yaml")
    p.add_argument("--ring-timeout", type=float, help="seconds to ring before giving up (CANCEL)")
    p.add_argument("--api", help="the server's API URL (default: http:// + api.listen of --config)")
    p.add_argument("--key", default=os.environ.get("SIP_TTS_API_KEY"), help="API key (default: $SIP_TTS_API_KEY)")
    p.add_argument("--no-wait", action="store_true", help="print the call id and return at once")
    p.add_argument("--config", default=default_config)


def run(args: argparse.Namespace, api_listen: str) -> int:
    """Exit status: 0 answered (and ended), 1 not answered (busy, no answer...), 2 refused by the API."""
    import httpx

    base = (args.api or f"http://{api_listen}").rstrip("/")
    body: dict = {"to": args.to}
    if args.say is not None:
        body["say"] = args.say
    else:
        try:
            body["steps"] = json.loads(args.steps)
        except json.JSONDecodeError as exc:
            print(f"--steps: not JSON: {exc}", file=sys.stderr)
            return 2
    for name, value in (("from", args.from_), ("trunk", args.trunk), ("voice", args.voice),
                        ("ring_timeout_s", args.ring_timeout)):
        if value is not None:
            body[name] = value
    events: queue.Queue[dict] = queue.Queue()
    receiver = None if args.no_wait else _receiver(events)
    if receiver is not None:
        body["status_callback"] = f"http://127.0.0.1:{receiver.server_address[1]}/status"
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    try:
        r = httpx.post(f"{base}/v1/calls", json=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"call: cannot reach {base}: {exc}", file=sys.stderr)
        return 2
    if r.status_code != 201:
        try:
            error = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            error = r.text
        print(f"call: {r.status_code}: {error}", file=sys.stderr)
        return 2
    call_id = r.json()["call_id"]
    print(call_id, flush=True)
    if receiver is None:
        return 0
    answered = False
    try:
        while True:
            ev = events.get()
            code = f" ({ev['sip_status']} {ev.get('reason', '')})" if ev.get("sip_status") else ""
            print(f"  {ev['event']}{code}", flush=True)
            answered = answered or ev["event"] == "answered"
            if ev["event"] in FINAL:
                return 0 if answered else 1
    except KeyboardInterrupt:
        return 1
    finally:
        receiver.shutdown()


def _receiver(events: queue.Queue) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            try:
                events.put(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            except ValueError:
                pass
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
