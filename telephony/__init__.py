"""Telephony: SIP signalling, RTP media and calls. Knows nothing of TTS."""
