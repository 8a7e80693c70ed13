"""Telephony: SIP signalling, RTP media and calls. Knows nothing of TTS."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("sip-tts")
except PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0+unknown"
PRODUCT = f"sip-tts/{VERSION}"  # our User-Agent and Server header
