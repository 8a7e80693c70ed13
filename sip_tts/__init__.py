"""sip-tts: the application that wires config, engines and telephony together."""

__version__ = "0.1.0"
