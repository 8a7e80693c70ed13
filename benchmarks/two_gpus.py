"""Two instances (one per GPU) behind our Kamailio dispatcher config, driven end to end.

    python benchmarks/two_gpus.py [--engine chatterbox|espeak] [--calls 128,256,384] [--out DIR]

What runs, all on loopback: ``sip-tts serve`` twice, as ``systemd/sip-tts@.service`` runs it
(``CUDA_VISIBLE_DEVICES=<i>``, ``--listen 127.0.0.1:<port i>``, ``--rtp-ports <range i>``), and
Kamailio with ``config/kamailio/kamailio.cfg`` in front (round robin, OPTIONS probes every
second). Callers talk only to Kamailio: INVITE, ACK and BYE go through it (the ACK and BYE
follow the Record-Route of the 200), RTP flows directly between caller and instance. Which
instance carried a call is read off the 200's Contact.

Phases:
  load   for each N in --calls: N callers at once (over --spread-s), each listening --listen-s
         after its first audible packet, then BYE. Per instance and in total: calls carried,
         INVITE -> 200 and INVITE -> first audible packet p50/p95, RTP packets that came more
         than 30 ms after the previous one by the kernel's receive timestamps (lost / skipped
         slot / late), and the spread of calls between the instances.
  kill   --fault-calls long calls; while they are listening, instance 1 is SIGKILLed and new
         calls start at once: instance 1's calls end (their RTP stops: counted), instance 0's
         calls and every new call complete, the new ones all on instance 0. Instance 1 is then
         restarted: the time from its READY line to Kamailio's "back in rotation" (its first
         healthy OPTIONS), and a wave of calls spread over both again.
  drain  --fault-calls long calls; instance 1 gets SIGTERM while they listen, new calls start:
         instance 1's calls finish (none cut short), new calls all land on instance 0, and
         instance 1 exits 0 once its last call is over.

Callers run in --client-procs processes (the client's own loop must not be what is measured).
Writes two_gpus.json and two_gpus.md into --out (benchmarks/results by default). On a
two-GPU machine: ``bash benchmarks/two_gpus.sh`` (wheels, Kamailio from unpacked debs, logs).
On a CPU box it runs with ``--engine espeak --device cpu`` and small --calls (both instances
then share the CPU; only the wiring and the fault handling are meaningful there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from telephony.sip.message import Request as SipRequest, Response, response_for  # noqa: E402
from e2e_load import Heard, _parse, _RtpReceiver, _Udp, pct  # noqa: E402

HOST = "127.0.0.1"
SIP_PORTS = (5060, 5062)            # as /etc/sip-tts/<i>.env in the README
RTP_RANGES = ((20000, 24999), (25000, 29999))
KAM_PORT = 5070
STOPPED_S = 1.0                      # no RTP for this long while listening: the call's media ended


# ---------------------------------------------------------------------------------------------
# One caller, through the proxy

def _sdp(port: int) -> str:
    return (f"v=0\r\no=caller 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n")


def _msg(method: str, uri: str, call_id: str, cseq: int, my_port: int, to_tag: str | None,
         routes: list[str], extra: str = "", body: str = "") -> bytes:
    to = f"<sip:{uri.split('sip:')[1].split('@')[0]}@{HOST}>" + (f";tag={to_tag}" if to_tag else "")
    head = (f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{my_port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:caller@{HOST}>;tag=c{call_id[:8]}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContact: <sip:caller@{HOST}:{my_port}>\r\n"
            + "".join(f"Route: {r}\r\n" for r in routes) + extra
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body.encode())}\r\n\r\n")
    return (head + body).encode()


async def one_call(kport: int, start: float, listen_s: float, number: str) -> dict:
    """INVITE through Kamailio at monotonic time ``start``; listen; BYE. Never raises."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    sip_t, sip = await loop.create_datagram_endpoint(_Udp, local_addr=(HOST, 0))
    rtp = _RtpReceiver(loop)
    my_port = sip_t.get_extra_info("sockname")[1]
    call_id = uuid.uuid4().hex
    proxy = (HOST, kport)
    out: dict = {"instance_port": None}
    state = {"ack": b"", "server_bye": False, "bye_ok": asyncio.Event(), "final": asyncio.Future()}

    def on_sip() -> None:  # a task per call: answers what the proxy sends us at any time
        while not sip.queue.empty():
            _, data = sip.queue.get_nowait()
            msg = _parse(data)
            if isinstance(msg, Response):
                if msg.cseq[1] == "INVITE" and msg.status >= 200:
                    if not state["final"].done():
                        state["final"].set_result((time.perf_counter(), msg))
                    elif state["ack"]:
                        sip_t.sendto(state["ack"], proxy)  # a retransmitted 200: ACK again
                elif msg.cseq[1] == "BYE" and msg.status >= 200:
                    state["bye_ok"].set()
                elif msg.cseq[1] == "INVITE" and not state["final"].done():
                    state["provisional"] = True
            elif isinstance(msg, SipRequest):
                if msg.method == "BYE":
                    state["server_bye"] = True
                sip_t.sendto(response_for(msg, 200).serialize(), proxy)

    reader = asyncio.create_task(_pump(sip, on_sip))
    try:
        ruri = f"sip:{number}@{HOST}:{kport}"
        inv = _msg("INVITE", ruri, call_id, 1, my_port, None, [],
                   f"X-Order: {int(start * 1e6) % 100000}\r\n", _sdp(rtp.port))
        t0 = time.perf_counter()
        sip_t.sendto(inv, proxy)
        for wait in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0):  # retransmit until the proxy's 100
            try:
                await asyncio.wait_for(asyncio.shield(state["final"]), wait)
                break
            except asyncio.TimeoutError:
                if not state.get("provisional"):
                    sip_t.sendto(inv, proxy)
        if not state["final"].done():
            return dict(out, error="timeout")
        t, msg = state["final"].result()
        if msg.status != 200:
            return dict(out, error=f"INVITE got {msg.status}")
        out["invite_200_ms"] = (t - t0) * 1e3
        contact = re.search(r"<?(sip:[^>;\s]+)", msg.headers.get("Contact") or "").group(1)
        out["instance_port"] = int(contact.rsplit(":", 1)[1])
        routes = list(reversed([r.strip() for h in msg.headers.get_all("Record-Route")
                                for r in h.split(",")]))
        to_tag = (msg.headers.get("To") or "").split("tag=")[1]
        state["ack"] = _msg("ACK", contact, call_id, 1, my_port, to_tag, routes)
        sip_t.sendto(state["ack"], proxy)

        rx = Heard()
        out["end"] = "listened"
        if not await rx.listen(rtp.queue, listen_s, 30, STOPPED_S):
            out["end"] = "server hung up" if state["server_bye"] else "media stopped"
        if missing := rx.first_audio(out, t0):
            return dict(out, error=missing)
        arrivals, audible_at = rx.arrivals, rx.audible_at
        out["listened_s"] = arrivals[-1] - audible_at
        first = next(i for i, a in enumerate(arrivals) if a >= audible_at)
        sizes, at, kinds = rx.gaps(first)
        out.update(gaps_kernel=len(sizes), gap_kinds=kinds, gap_sizes=sizes, gap_at=at,
                   packets=len(arrivals) - first)
        if not state["server_bye"]:
            bye = _msg("BYE", contact, call_id, 2, my_port, to_tag, routes)
            sip_t.sendto(bye, proxy)
            for wait in (0.5, 1.0, 2.0):
                try:
                    await asyncio.wait_for(state["bye_ok"].wait(), wait)
                    break
                except asyncio.TimeoutError:
                    if out["end"] == "media stopped":
                        break  # its instance is gone: the proxy would only time out
                    sip_t.sendto(bye, proxy)
            out["bye_answered"] = state["bye_ok"].is_set()
        return out
    except Exception as exc:  # noqa: BLE001 - a caller reports, never takes the wave down
        return dict(out, error=f"{type(exc).__name__}: {exc}")
    finally:
        reader.cancel()
        sip_t.close()
        rtp.close()


async def _pump(sip: _Udp, handle) -> None:
    while True:
        item = await sip.queue.get()
        sip.queue.put_nowait(item)
        handle()


def _worker(kport: int, starts: list[float], listen_s: float, number: str, conn) -> None:
    async def run() -> list[dict]:
        return await asyncio.gather(*(one_call(kport, s, listen_s, number) for s in starts))
    res = asyncio.run(run())
    for r, s in zip(res, starts):
        r["start"] = s
    conn.send(res)
    conn.close()


class Wave:
    """N callers in ``procs`` processes, started at once (spread over ``spread_s``)."""

    def __init__(self, kport: int, n: int, listen_s: float, spread_s: float, procs: int,
                 number: str = "2000", lead_s: float = 0.3) -> None:
        self.t0 = time.monotonic() + lead_s
        starts = [self.t0 + spread_s * i / max(n, 1) for i in range(n)]
        ctx = mp.get_context("fork")
        self.jobs = []
        procs = max(1, min(procs, n))
        for k in range(procs):
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker, args=(kport, starts[k::procs], listen_s, number, child), daemon=True)
            p.start()
            child.close()
            self.jobs.append((p, parent))

    def results(self, timeout: float = 120) -> list[dict]:
        out: list[dict] = []
        end = time.monotonic() + timeout
        for p, conn in self.jobs:
            if conn.poll(max(0.1, end - time.monotonic())):
                out.extend(conn.recv())
            else:
                out.append(dict(error="client process did not report"))
            p.join(5)
            if p.is_alive():
                p.kill()
        return out


# ---------------------------------------------------------------------------------------------
# Instances and the proxy

class Instance:
    """``sip-tts serve`` the way ``sip-tts@<index>.service`` runs it."""

    def __init__(self, index: int, work: Path, config: Path, port: int) -> None:
        self.index, self.work, self.config = index, work, config
        self.port = port
        extra_env: dict[str, str] = {}
        self.env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(index), PYTHONUNBUFFERED="1", **extra_env)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.stdout = self.work / f"instance{self.index}.run{self.starts}.out"
        self.log = self.work / f"instance{self.index}.run{self.starts}.log"
        lo, hi = RTP_RANGES[self.index]
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(self.config),
             "--listen", f"{HOST}:{self.port}", "--rtp-ports", f"{lo}-{hi}",
             "--api-listen", f"{HOST}:{8080 + self.index}", "--log-format", "json"],
            cwd=ROOT, env=self.env, stdout=open(self.stdout, "w"), stderr=open(self.log, "w"),
            stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float) -> float:
        """Seconds from start to the READY line."""
        assert self.proc is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "ready" in self.stdout.read_text():
                self.t_ready = time.monotonic()
                return self.t_ready - self.t_start
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise SystemExit(f"instance {self.index} did not start (rc {self.proc.poll()}):\n"
                         + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.send_signal(signal.SIGINT)  # twice: hang up now
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Kamailio:
    def __init__(self, work: Path, ports: list[int], binary: str, modules: str | None, port: int = KAM_PORT) -> None:
        self.work = work / "kamailio"
        self.work.mkdir(exist_ok=True)
        (self.work / "dispatcher.list").write_text("".join(f"1 sip:{HOST}:{p} 0 0\n" for p in ports))
        self.log = self.work / "kamailio.log"
        cmd = [binary, "-f", str(ROOT / "config" / "kamailio" / "kamailio.cfg"), "-l", f"udp:{HOST}:{port}",
               "-A", f'DS_LIST_FILE="{self.work}/dispatcher.list"', "-A", "DS_PING_INTERVAL=1",
               "-A", "DS_PROBE_FAILURES=1", "-Y", str(self.work), "-w", str(self.work),
               "-m", "512", "-M", "32", "-DD", "-E"]
        if modules:
            cmd += ["-L", modules]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        time.sleep(2.5)  # the first OPTIONS probes
        if self.proc.poll() is not None:
            raise SystemExit("kamailio did not start:\n" + self.log.read_text()[-3000:])

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> float | None:
        """Monotonic time at which ``pattern`` first showed in the log past offset ``after``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pattern in self.log.read_text()[after:]:
                return time.monotonic()
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---------------------------------------------------------------------------------------------
# Figures

def summarise(calls: list[dict], ports: list[int]) -> dict:
    """Per instance and in total: carried, setup and first-audio percentiles, kernel-stamped gaps."""
    def block(rows: list[dict]) -> dict:
        ok = [r for r in rows if "error" not in r]
        b = dict(calls=len(rows), carried=len(ok), errors=sorted({r["error"] for r in rows if "error" in r})[:5])
        for key in ("invite_200_ms", "first_audio_ms"):
            vals = [r[key] for r in ok]
            b[key] = dict(p50=pct(vals, 50), p95=pct(vals, 95), max=max(vals) if vals else float("nan"))
        b["ends"] = {e: sum(1 for r in ok if r["end"] == e) for e in sorted({r["end"] for r in ok})}
        b["packets"] = int(sum(r["packets"] for r in ok))
        b["gaps_kernel"] = int(sum(r["gaps_kernel"] for r in ok))
        b["gap_kinds"] = {k: sum(r["gap_kinds"][k] for r in ok) for k in ("lost", "skipped", "late")}
        sizes = [x for r in ok for x in r["gap_sizes"]]
        b["gap_ms_max"] = max(sizes, default=0.0) * 1e3
        return b
    out = dict(total=block(calls))
    for i, p in enumerate(ports):
        out[f"instance{i}"] = block([r for r in calls if r.get("instance_port") == p])
    out["unplaced"] = sum(1 for r in calls if r.get("instance_port") not in ports)
    return out


def _line(tag: str, s: dict) -> str:
    t = s["total"]
    parts = [f"{tag}: carried {t['carried']}/{t['calls']}"]
    for k in ("instance0", "instance1"):
        parts.append(f"{k} {s[k]['carried']}/{s[k]['calls']}")
    parts.append(f"first audio p50/p95 {t['first_audio_ms']['p50']:.0f}/{t['first_audio_ms']['p95']:.0f} ms")
    parts.append(f"INVITE->200 p50/p95 {t['invite_200_ms']['p50']:.0f}/{t['invite_200_ms']['p95']:.0f} ms")
    parts.append(f"kernel gaps {t['gaps_kernel']} {t['gap_kinds']} of {t['packets']} pkts, ends {t['ends']}")
    if t["errors"]:
        parts.append(f"errors {t['errors']}")
    return ", ".join(parts)


def load_phase(a, kport: int, ports: list[int], counts: list[int]) -> list[dict]:
    rows = []
    for n in counts:
        calls = Wave(kport, n, a.listen_s, a.spread_s, a.client_procs or max(1, -(-n // 96))).results()
        s = summarise(calls, ports)
        s["n"] = n
        rows.append(s)
        print("  " + _line(f"load N={n}", s), flush=True)
        time.sleep(a.pause_s)
    return rows


def _fault_waves(a, kport: int, inst: list[Instance], kam: Kamailio, hit) -> tuple[list, list, float | None,
                                                                                  float, int]:
    """``fault_calls`` calls up; ``fault_at_s`` into them ``hit(instance 1's process)``, and half as many
    new calls right after: (the first calls' results, the new ones', when Kamailio took the instance out
    of rotation, when it was hit, client processes used)."""
    n = a.fault_calls
    procs = a.client_procs or max(1, -(-n // 96))
    first = Wave(kport, n, a.fault_listen_s, a.spread_s, procs)
    time.sleep(max(0.0, first.t0 + a.spread_s + a.fault_at_s - time.monotonic()))
    log_at = len(kam.log.read_text())
    hit_at = time.monotonic()
    hit(inst[1].proc)
    second = Wave(kport, n // 2, a.listen_s, a.spread_s, max(1, procs // 2), lead_s=0.1)
    down = kam.wait_for("out of rotation", 10, log_at)
    return first.results(), second.results(), down, hit_at, procs


def kill_phase(a, kport: int, inst: list[Instance], kam: Kamailio) -> dict:
    ports = [i.port for i in inst]
    n = a.fault_calls
    r1, r2, down, killed_at, procs = _fault_waves(a, kport, inst, kam, lambda proc: proc.kill())
    inst[1].proc.wait(5)
    out = dict(fault_calls=n, kill_at_s=a.fault_at_s,
               out_of_rotation_after_s=None if down is None else down - killed_at,
               before=summarise(r1, ports), after=summarise(r2, ports))
    b = out["before"]
    out["killed_calls_ended"] = b["instance1"]["ends"].get("media stopped", 0)
    out["killed_instance_calls"] = b["instance1"]["calls"]
    out["new_calls_on_killed"] = out["after"]["instance1"]["calls"]
    out["new_calls_setup_over_1s"] = sum(1 for r in r2 if r.get("invite_200_ms", 0) > 1000)
    print(f"  kill: instance1 had {out['killed_instance_calls']} calls, {out['killed_calls_ended']} ended when "
          f"killed; out of rotation after {out['out_of_rotation_after_s']} s", flush=True)
    print("  " + _line("kill, calls up before", b), flush=True)
    print("  " + _line("kill, new calls", out["after"]), flush=True)
    time.sleep(1.0)  # the killed server's engine process sees its pipe close and exits
    out["gpu_processes_before_restart"] = _gpu_apps()
    # restart: READY, then Kamailio's first healthy OPTIONS puts it back
    log_at = len(kam.log.read_text())
    inst[1].start()
    out["restart_ready_s"] = inst[1].wait_ready(a.ready_timeout_s)
    up = kam.wait_for(f"back in rotation: sip:{HOST}:{ports[1]}", 15, log_at)
    out["rejoined_after_ready_s"] = None if up is None else up - inst[1].t_ready
    time.sleep(0.5)
    r3 = Wave(kport, a.rejoin_calls, a.listen_s, a.spread_s, max(1, procs // 2)).results()
    out["rejoined"] = summarise(r3, ports)
    print(f"  restart: ready after {out['restart_ready_s']:.1f} s, back in rotation "
          f"{out['rejoined_after_ready_s']} s after READY", flush=True)
    print("  " + _line("after rejoin", out["rejoined"]), flush=True)
    return out


def drain_phase(a, kport: int, inst: list[Instance], kam: Kamailio) -> dict:
    ports = [i.port for i in inst]
    n = a.fault_calls
    r1, r2, down, term_at, _ = _fault_waves(a, kport, inst, kam, lambda proc: proc.send_signal(signal.SIGTERM))
    try:
        rc = inst[1].proc.wait(a.fault_listen_s + 30)
    except subprocess.TimeoutExpired:
        rc = None
    exited = time.monotonic() - term_at
    out = dict(fault_calls=n, term_at_s=a.fault_at_s, exit_code=rc, exited_after_term_s=exited,
               out_of_rotation_after_s=None if down is None else down - term_at,
               before=summarise(r1, ports), after=summarise(r2, ports))
    b = out["before"]["instance1"]
    out["draining_instance_calls"] = b["calls"]
    out["draining_calls_finished"] = b["ends"].get("listened", 0)
    out["new_calls_on_draining"] = out["after"]["instance1"]["calls"]
    print(f"  drain: instance1 had {b['calls']} calls, {out['draining_calls_finished']} finished; exit code {rc} "
          f"{exited:.1f} s after SIGTERM; out of rotation after {out['out_of_rotation_after_s']} s", flush=True)
    print("  " + _line("drain, calls up before", out["before"]), flush=True)
    print("  " + _line("drain, new calls", out["after"]), flush=True)
    return out


# ---------------------------------------------------------------------------------------------

def server_yaml(a, work: Path, max_calls: int) -> Path:
    words = " ".join(["Thank you for calling. Your order {headers[X-Order]} is confirmed for Tuesday at nine."])
    (work / "prompts.yaml").write_text(f'routes:\n  - number: "2000"\n    say: "{words}"\n')
    if a.engine == "chatterbox":
        engine = (f"engine:\n  kind: chatterbox\n  model_dir: {a.model_dir}\n  device: {a.device}\n"
                  f"  max_streams: {a.max_streams}\n  max_tokens: {a.max_tokens}\n  process: true\n")
    else:
        engine = "engine:\n  kind: espeak\n"
    path = work / "server.yaml"
    path.write_text(
        f"sip:\n  listen: {HOST}:{SIP_PORTS[0]}\n  advertised_address: {HOST}\n  tcp: false\n"
        "rtp:\n  port_min: 20000\n  port_max: 24999\n"
        f"{engine}limits:\n  max_calls: {max_calls}\nprompts: prompts.yaml\n"
        f"drain_timeout_s: {int(a.fault_listen_s + 30)}\nhangup_after_prompt_ms: {int(a.tail_s * 1000)}\n")
    return path


def card() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "no GPU (CPU run)"


def _gpu_apps() -> str:
    """What holds the GPUs (after a kill: has the dead server's engine process gone too?)."""
    try:
        return subprocess.run(["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"


def _f(x, fmt="{:.0f}") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else fmt.format(x)


def render_md(res: dict) -> str:
    L = [f"## {res['date']}: {res.get('notes') or 'load, kill, drain'}", "",
         f"Commit {res['commit']}, engine {res['engine']} ({res['device']}), "
         f"max_streams {res.get('max_streams')}, max_tokens {res.get('max_tokens')}.", "",
         f"Card(s): {res['card']}", "",
         "One `sip-tts serve` per GPU (CUDA_VISIBLE_DEVICES=0/1, SIP 5060/5062, RTP 20000-24999/25000-29999, "
         "as `sip-tts@.service`), `config/kamailio/kamailio.cfg` in front (round robin, OPTIONS every 1 s); "
         "callers send INVITE/ACK/BYE through Kamailio, RTP direct; late packets by the kernel's receive "
         f"timestamps (> 30 ms after the previous one); listening {res['listen_s']} s after first audio.", "",
         f"Warm-up before the measured waves: {res.get('warmup_calls', 4)} calls.", "",
         "### Load", "",
         "| calls | where | carried | INVITE->200 p50/p95 ms | first audible p50/p95 ms | kernel-stamped gaps (lost/skipped/late) | packets |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in res.get("load", []):
        for k in ("instance0", "instance1", "total"):
            b = row[k]
            g = b["gap_kinds"]
            L.append(f"| {row['n']} | {k} | {b['carried']}/{b['calls']} | {_f(b['invite_200_ms']['p50'])}/"
                     f"{_f(b['invite_200_ms']['p95'])} | {_f(b['first_audio_ms']['p50'])}/{_f(b['first_audio_ms']['p95'])} "
                     f"| {b['gaps_kernel']} ({g['lost']}/{g['skipped']}/{g['late']}) | {b['packets']} |")
    k = res.get("kill")
    if k:
        L += ["", "### Instance 1 killed (SIGKILL) mid-load, then restarted", "",
              f"- {k['fault_calls']} calls up ({k['before']['instance0']['calls']} on instance 0, "
              f"{k['killed_instance_calls']} on instance 1); SIGKILL {k['kill_at_s']} s into their listening.",
              f"- Instance 1's calls ended (RTP stopped): {k['killed_calls_ended']} of {k['killed_instance_calls']}.",
              f"- Instance 0's calls: {k['before']['instance0']['ends']} of {k['before']['instance0']['calls']} (how each ended), "
              f"kernel-stamped gaps {k['before']['instance0']['gaps_kernel']}.",
              f"- New calls started at the kill: {k['after']['total']['carried']}/{k['after']['total']['calls']} "
              f"carried, {k['new_calls_on_killed']} on instance 1, {k['new_calls_setup_over_1s']} took over 1 s "
              f"to set up (INVITE->200 p50/p95/max {_f(k['after']['total']['invite_200_ms']['p50'])}/"
              f"{_f(k['after']['total']['invite_200_ms']['p95'])}/{_f(k['after']['total']['invite_200_ms']['max'])} ms: "
              "those sent to the dead instance before its probe failed wait for Kamailio's fr_timer, 2 s, then fail over), "
              f"errors {k['after']['total']['errors']}.",
              f"- Out of rotation {_f(k['out_of_rotation_after_s'], '{:.1f}')} s after the kill.",
              f"- Restarted: READY after {_f(k['restart_ready_s'], '{:.1f}')} s; back in rotation "
              f"{_f(k['rejoined_after_ready_s'], '{:.1f}')} s after READY (first healthy OPTIONS).",
              f"- Then {k['rejoined']['total']['calls']} calls: {k['rejoined']['instance0']['calls']} on instance 0, "
              f"{k['rejoined']['instance1']['calls']} on instance 1, {k['rejoined']['total']['carried']} carried, "
              f"kernel-stamped gaps {k['rejoined']['instance0']['gaps_kernel']} / {k['rejoined']['instance1']['gaps_kernel']}.",
              f"- GPU processes after the kill, before the restart: {k.get('gpu_processes_before_restart', '-')}."]
    d = res.get("drain")
    if d:
        L += ["", "### Instance 1 drained (SIGTERM) mid-load", "",
              f"- {d['fault_calls']} calls up ({d['before']['instance0']['calls']} on instance 0, "
              f"{d['draining_instance_calls']} on instance 1); SIGTERM {d['term_at_s']} s into their listening.",
              f"- Instance 1's calls finished: {d['draining_calls_finished']} of {d['draining_instance_calls']} "
              f"(ends {d['before']['instance1']['ends']}, kernel-stamped gaps {d['before']['instance1']['gaps_kernel']}); "
              f"it exited with code {d['exit_code']} {_f(d['exited_after_term_s'], '{:.1f}')} s after SIGTERM.",
              f"- Out of rotation {_f(d['out_of_rotation_after_s'], '{:.1f}')} s after SIGTERM.",
              f"- New calls: {d['after']['total']['carried']}/{d['after']['total']['calls']} carried, "
              f"{d['new_calls_on_draining']} on instance 1, errors {d['after']['total']['errors']}."]
    return "\n".join(L) + "\n"


def render_all(runs: list[dict], preface: str = "") -> str:
    """All runs, newest first, under a table of every load wave's totals."""
    L = ["# Two instances, one per GPU, behind Kamailio (benchmarks/two_gpus.py)", ""]
    if preface:
        L += [preface.strip(), ""]
    L += ["| run | calls | carried (instance 0 / 1) | first audible p50/p95 ms | kernel-stamped gaps (instance 0 / 1) | packets |",
          "| --- | --- | --- | --- | --- | --- |"]
    for res in runs:
        for row in res.get("load", []):
            t, i0, i1 = row["total"], row["instance0"], row["instance1"]
            L.append(f"| {res['date']} | {row['n']} | {t['carried']}/{t['calls']} ({i0['carried']} / {i1['carried']}) "
                     f"| {_f(t['first_audio_ms']['p50'])}/{_f(t['first_audio_ms']['p95'])} "
                     f"| {t['gaps_kernel']} ({i0['gaps_kernel']} / {i1['gaps_kernel']}) | {t['packets']} |")
    return "\n".join(L) + "\n\n" + "\n".join(render_md(r) for r in reversed(runs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="chatterbox", choices=["chatterbox", "espeak"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-dir", default="/tmp/chatterbox-random")
    ap.add_argument("--calls", default="128,256,384")
    ap.add_argument("--max-streams", type=int, default=0, help="per instance (default: half the largest N)")
    ap.add_argument("--max-tokens", type=int, default=150, help="speech tokens per prompt (random weights)")
    ap.add_argument("--listen-s", type=float, default=4.0)
    ap.add_argument("--spread-s", type=float, default=1.0)
    ap.add_argument("--pause-s", type=float, default=2.0)
    ap.add_argument("--tail-s", type=float, default=10.0, help="hangup_after_prompt_ms (at most 10 s): silence after the prompt")
    ap.add_argument("--phases", default="load,kill,drain")
    ap.add_argument("--fault-calls", type=int, default=128)
    ap.add_argument("--fault-listen-s", type=float, default=10.0)
    ap.add_argument("--fault-at-s", type=float, default=3.0, help="kill/SIGTERM this long after the last call began")
    ap.add_argument("--rejoin-calls", type=int, default=64)
    ap.add_argument("--warmup-calls", type=int, default=4, help="a first wave through Kamailio, not measured")
    ap.add_argument("--client-procs", type=int, default=0, help="caller processes (default: one per 96 calls)")
    ap.add_argument("--ready-timeout-s", type=float, default=300)
    ap.add_argument("--sip-ports", default=f"{SIP_PORTS[0]},{SIP_PORTS[1]}", help="the two instances' SIP ports")
    ap.add_argument("--kamailio-port", type=int, default=KAM_PORT)
    ap.add_argument("--kamailio", default=os.environ.get("KAMAILIO", shutil.which("kamailio") or "kamailio"))
    ap.add_argument("--kamailio-modules", default=os.environ.get("KAMAILIO_MODULES"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--logs", help="keep the instances' and Kamailio's logs here")
    ap.add_argument("--notes", default="")
    ap.add_argument("--append", action="store_true", help="add this run to the runs already in --out/two_gpus.json")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="no run: write --out/two_gpus.json/.md from these "
                    "results (each one run, or a file of runs), in this order")
    ap.add_argument("--preface", default="", help="text under the .md's title (with --merge)")
    a = ap.parse_args()
    if a.merge:
        runs: list[dict] = []
        for f in a.merge:
            data = json.loads(Path(f).read_text())
            runs.extend(data.get("runs", [data]))
        write(Path(a.out), runs, a.preface)
        return 0
    counts = [int(x) for x in a.calls.split(",") if x]
    phases = [p for p in a.phases.split(",") if p]
    a.max_streams = a.max_streams or max(1, -(-max(counts + [a.fault_calls]) // 2))
    if a.engine == "chatterbox":
        from engine.chatterbox.random_checkpoint import benchmark_checkpoint
        benchmark_checkpoint(a.model_dir)
    res = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               commit=os.environ.get("GIT_COMMIT") or _git_commit(), card=card(), engine=a.engine,
               device=a.device, max_streams=a.max_streams if a.engine == "chatterbox" else None,
               max_tokens=a.max_tokens if a.engine == "chatterbox" else None, listen_s=a.listen_s,
               spread_s=a.spread_s, calls=counts, warmup_calls=a.warmup_calls, notes=a.notes,
               method="benchmarks/two_gpus.py: two sip-tts instances (one per GPU) behind config/kamailio/kamailio.cfg")
    work = Path(tempfile.mkdtemp(prefix="two_gpus."))
    cfg = server_yaml(a, work, max_calls=max(counts + [a.fault_calls]))
    sip_ports = [int(x) for x in a.sip_ports.split(",")]
    kport = a.kamailio_port
    inst = [Instance(i, work, cfg, sip_ports[i]) for i in (0, 1)]
    kam = None
    try:
        for i in inst:
            i.start()
        res["ready_s"] = [i.wait_ready(a.ready_timeout_s) for i in inst]
        print(f"  instances ready after {res['ready_s'][0]:.1f} / {res['ready_s'][1]:.1f} s", flush=True)
        kam = Kamailio(work, [i.port for i in inst], a.kamailio, a.kamailio_modules, kport)
        # warm-up: the first waves after start-up send late packets that later ones do not (run 1:
        # 124 and 107 at 128 and 256, then 0 at 384 and in every later wave): see two_gpus.md
        w = a.warmup_calls
        Wave(kport, w, a.listen_s if w > 4 else 1.0, a.spread_s if w > 4 else 0.2,
             a.client_procs or max(1, -(-w // 96))).results()
        time.sleep(a.pause_s)
        if "load" in phases:
            res["load"] = load_phase(a, kport, [i.port for i in inst], counts)
        if "kill" in phases:
            res["kill"] = kill_phase(a, kport, inst, kam)
            time.sleep(a.pause_s)
        if "drain" in phases:
            res["drain"] = drain_phase(a, kport, inst, kam)
    finally:
        for i in inst:
            i.stop()
        if kam:
            kam.stop()
        if a.logs:
            Path(a.logs).mkdir(parents=True, exist_ok=True)
            for f in list(work.glob("instance*")) + list(work.glob("kamailio/kamailio.log")):
                shutil.copy(f, Path(a.logs) / f.name)
        out = Path(a.out)
        old = json.loads((out / "two_gpus.json").read_text()) if a.append and (out / "two_gpus.json").exists() else {}
        write(out, old.get("runs", []) + [res], old.get("preface", ""))
        shutil.rmtree(work, ignore_errors=True)
    return 0


def write(out: Path, runs: list[dict], preface: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "two_gpus.json").write_text(json.dumps(dict(preface=preface, runs=runs), indent=1))
    (out / "two_gpus.md").write_text(render_all(runs, preface))


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
