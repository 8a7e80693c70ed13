"""sip-tts: the application that wires config, engines and telephony together."""

from telephony import VERSION as __version__

__all__ = ["__version__"]
