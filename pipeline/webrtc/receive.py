"""Hand each received frame to the decoder as soon as it is whole, not one frame later.

aiortc's receive-side jitter buffer knows a video frame is complete only when the first packet
of the next frame arrives (a new RTP timestamp): every frame waits about one frame interval
(33 ms at 30 fps) before it is decoded. Audio waits longer: four 20 ms packets are buffered
before the first is released (80 ms).

But the sender says when a frame ends: the RTP marker bit is set on a video frame's last
packet (RFC 7741 for VP8, RFC 6184 for H.264). `PromptJitterBuffer` releases a video frame
when its packets, from the oldest held up to one carrying the marker, are all there and in
sequence — at once, on its last packet. An audio packet is a whole frame by itself and is
released as soon as it is next in sequence. Anything else (a gap, packets out of order) falls
back to aiortc's own rule, so a frame that arrives out of order is still assembled whole, and
frames in order are never lost.

`install(pc)` swaps it into each of a peer connection's receivers, after the remote
description is set and before media flows. aiortc keeps the buffer in a private attribute;
when that attribute is not where this release of aiortc keeps it, nothing is changed and one
line says so.
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame

log = logging.getLogger(__name__)

ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"
VIDEO_CAPACITY = 512  # packets, as aiortc sizes them
AUDIO_CAPACITY = 16


class PromptJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, releasing a frame on its last packet; see the module docstring."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        packets = []
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None or (timestamp is not None and packet.timestamp != timestamp):
                break
            timestamp = packet.timestamp
            packets.append(packet)
            if packet.marker or not self._is_video:  # the frame's last packet (audio: its only one)
                self.remove(count + 1)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
        return super()._remove_frame(sequence_number)


def install(pc: Any) -> int:
    """Put a `PromptJitterBuffer` in every receiver of `pc`; the number swapped."""
    swapped = 0
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if not hasattr(receiver, ATTRIBUTE):
            log.info("aiortc keeps its jitter buffer elsewhere in this release; receiving as it does")
            return swapped
        video = transceiver.kind == "video"
        capacity = VIDEO_CAPACITY if video else AUDIO_CAPACITY
        setattr(receiver, ATTRIBUTE, PromptJitterBuffer(capacity=capacity, prefetch=0, is_video=video))
        swapped += 1
    return swapped
