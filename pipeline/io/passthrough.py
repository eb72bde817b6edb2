"""Streams the graph does not process, carried from the input to the output untouched.

A file may hold more than one picture and one sound: a second language, commentary,
subtitles, timed metadata, a second camera angle. The graph works on the first video and the
first audio stream; ffmpeg, asked to keep everything, copies the rest packet for packet, and
so do we. The source's reader demuxes these streams beside the two it decodes and hands
their packets here; a sink that can mux them (`FileSink`) claims the ones its container
takes and muxes each packet once the output has reached its time, so they interleave with
the processed streams. What a sink cannot carry, it names in one log line.

Their timestamps get the same mending the pictures get (`timeline`): a jump back, or a long
jump forward in a format that allows jumps, and the rest of that stream follows on.
"""

from __future__ import annotations

import threading
from collections import deque
from fractions import Fraction
from typing import Any

import av

from pipeline.io.timeline import Continuity

KEPT_TAGS = ("language", "title")  # what a player shows of a stream; counts and durations go stale


def kept_tags(stream: Any) -> dict[str, str]:
    """The tags of an input stream that its copy or its processed version keeps (as ffmpeg does)."""
    metadata = stream.metadata or {}
    return {key: metadata[key] for key in KEPT_TAGS if metadata.get(key)}


def stream_name(stream: Any) -> str:
    """'audio stream #2 (aac, fre)': its kind, index, codec and language, as a log line names it."""
    context = getattr(stream, "codec_context", None)
    details = [name for name in (getattr(context, "name", None), stream.metadata.get("language")) if name]
    return f"{stream.type} stream #{stream.index}" + (f" ({', '.join(details)})" if details else "")


class PassThrough:
    """Packets of the carried streams, from the source's reader thread to the sink's encoder thread."""

    def __init__(self, streams: list[Any], *, jumps_forward: bool):
        self.streams = {stream.index: stream for stream in streams}
        self.jumps_forward = jumps_forward
        self.claimed: set[int] | None = None  # stream indices a sink takes; None until one decides
        self._lock = threading.Lock()
        self._packets: deque[av.Packet] = deque()
        self._continuity: dict[int, Continuity] = {}  # per stream: its timestamps carried on past jumps
        self._end_s: Fraction | None = None  # a run stopped early (--frames): nothing from here on

    def names(self, indices: set[int] | None = None) -> str:
        chosen = self.streams if indices is None else {i: s for i, s in self.streams.items() if i in indices}
        return ", ".join(stream_name(stream) for stream in chosen.values())

    def claim(self, indices: set[int]) -> None:
        """A sink carries these streams (and none of the others): packets of others are let go."""
        with self._lock:
            self.claimed = set(indices)
            self._packets = deque(p for p in self._packets if p.stream_index in self.claimed)

    def put(self, packet: av.Packet) -> None:
        """One demuxed packet of a carried stream (the reader thread)."""
        if self.claimed is not None and packet.stream_index not in self.claimed:
            return
        if packet.size == 0 or packet.stream_index not in self.streams:
            return  # the demuxer's end-of-stream marker
        if not is_timeless(packet):  # a cover picture has no time: it goes in as it is
            self._mend(packet)
            if self._end_s is not None and _decode_s(packet) >= self._end_s:
                return
        with self._lock:
            self._packets.append(packet)

    def end_at(self, seconds: Fraction) -> None:
        """The run stops here on the source's clock (a frame limit): later packets are let go."""
        with self._lock:
            self._end_s = seconds
            self._packets = deque(p for p in self._packets if is_timeless(p) or _decode_s(p) < seconds)

    def take(self, until_s: Fraction | None) -> list[av.Packet]:
        """Packets decoded before `until_s` on the source's clock (None: all of them), each stream's
        in its own order: a stream's packets after its first one not yet due wait with it."""
        with self._lock:
            if until_s is None:
                taken, self._packets = list(self._packets), deque()
                return taken
            taken, kept = [], deque()
            waiting: set[int] = set()
            for packet in self._packets:
                index = packet.stream_index
                if index not in waiting and (is_timeless(packet) or _decode_s(packet) < until_s):
                    taken.append(packet)
                else:
                    waiting.add(index)
                    kept.append(packet)
            self._packets = kept
            return taken

    def _mend(self, packet: av.Packet) -> None:
        """Move the packet's timestamps on past its stream's jumps (by decode time, then both)."""
        continuity = self._continuity.get(packet.stream_index)
        if continuity is None:
            continuity = Continuity(packet.time_base, jumps_forward=self.jumps_forward)
            self._continuity[packet.stream_index] = continuity
        continuity.place(packet.dts if packet.dts is not None else packet.pts, packet.duration or 0)
        if continuity.offset:
            if packet.pts is not None:
                packet.pts += continuity.offset
            if packet.dts is not None:
                packet.dts += continuity.offset


def is_timeless(packet: av.Packet) -> bool:
    """A packet with no time at all: an attached picture (cover art), written once as it is."""
    return packet.pts is None and packet.dts is None


def _decode_s(packet: av.Packet) -> Fraction:
    ts = packet.dts if packet.dts is not None else packet.pts
    return ts * packet.time_base
