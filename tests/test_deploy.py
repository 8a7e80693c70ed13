"""deploy/: the compose file, the per-instance configs, Kamailio's list and Prometheus's targets agree.

With host networking every instance binds the host's ports directly, so a copied block
that forgets to change one port would only fail on the GPU host; this catches it here.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from config import load_server

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _duration_s(text: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", text))


def test_compose_instances_configs_dispatcher_and_prometheus_agree():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    instances = {name: s for name, s in services.items() if name.startswith("sip-tts-")}
    assert len(instances) >= 2
    assert all(s.get("network_mode") == "host" for s in services.values()), "host networking for every service"
    dispatcher = (DEPLOY / "fleet" / "dispatcher.list").read_text()
    targets = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"][0]
    sip_ports, metrics_ports, api_ports, rtp_ranges, gpus = [], [], [], [], []
    for name, svc in instances.items():
        path = svc["command"][svc["command"].index("--config") + 1]
        assert path.startswith("/etc/sip-tts/fleet/")
        cfg = load_server(DEPLOY / "fleet" / Path(path).name)
        assert cfg.engine.kind == "chatterbox" and cfg.cache.redis_url and cfg.metrics is not None
        assert _duration_s(svc["stop_grace_period"]) > cfg.drain_timeout_s, f"{name}: calls can finish on stop"
        sip_ports.append(cfg.sip.listen_port)
        mport = int(cfg.metrics.listen.rsplit(":", 1)[1])
        metrics_ports.append(mport)
        api_ports.append(cfg.api.listen)
        assert svc["environment"]["SIP_TTS_HEALTH_URL"] == f"http://127.0.0.1:{mport}/health"
        rtp_ranges.append(range(cfg.rtp.port_min, cfg.rtp.port_max + 1))
        gpus += svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        assert f"sip:127.0.0.1:{cfg.sip.listen_port} " in dispatcher, f"{name} is in Kamailio's dispatcher list"
        assert f"127.0.0.1:{mport}" in targets["targets"], f"Prometheus scrapes {name}"
    assert len(set(sip_ports)) == len(sip_ports) and len(set(metrics_ports)) == len(metrics_ports)
    assert len(set(api_ports)) == len(api_ports), "each instance's HTTP API on its own port"
    assert len(set(gpus)) == len(gpus), "one GPU per instance"
    for i, a in enumerate(rtp_ranges):
        for b in rtp_ranges[i + 1:]:
            assert not set(a) & set(b), "RTP ranges overlap"
    assert 5060 not in sip_ports, "5060 is Kamailio's"


def test_images_copy_every_package_the_project_installs():
    """A package added to pyproject.toml but not copied into the images fails here, not at a container's start."""
    import tomllib

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for name in ("Containerfile", "Containerfile.gpu"):
        text = (DEPLOY / name).read_text()
        for pkg in packages:
            assert f"COPY {pkg} /src/{pkg}\n" in text, f"{name} does not copy {pkg}/"
