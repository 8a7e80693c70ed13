"""RTP media: packets and the pacer that sends every call's frames on one clock."""

from .pacer import FrameQueue, Pacer, RtpSender
from .packet import RtpPacket

__all__ = ["FrameQueue", "Pacer", "RtpPacket", "RtpSender"]
