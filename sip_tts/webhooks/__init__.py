"""Routes that ask an application (README, "Webhook routes").

A route with ``webhook: URL`` POSTs the new call's details, signed (``signing.py``), and plays
the steps the application returns (``reply.py``: the prompts.yaml step schema, ``connect``
included) or the route's fallback (``source.py``); ``service.py`` is the bounded async HTTP
client; ``status.py`` sends call status callbacks and exports the counters; ``connect.py`` runs
the ``connect`` step (the per-call WebSocket, opened by us to the application).
"""

from .service import Webhooks
from .signing import HEADER, sign, verify
from .status import StatusHooks, WebhookCollector

__all__ = ["HEADER", "StatusHooks", "WebhookCollector", "Webhooks", "sign", "verify"]
