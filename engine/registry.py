"""Every TTS engine kind, declared once: the ``kind`` of server.yaml's ``engine:`` section ->
its settings model, which validates the section, builds the engine and its default voice, and
reads the named voices of prompts.yaml (``engine/base.py``: ``EngineSettings``).

Config validation, voice definitions, the prompt renderer and the command line read this table;
adding an engine is its module plus one line here.
"""

from __future__ import annotations

from .chatterbox.settings import ChatterboxSettings
from .espeak import EspeakSettings

ENGINES: dict[str, type] = {
    "espeak": EspeakSettings,  # the default
    "chatterbox": ChatterboxSettings,
}
