"""A WebRTC client for tests: aiortc on loopback, sending a real face and real speech."""

from __future__ import annotations

import asyncio
import fractions
import json
import ssl
from typing import Any

import aiohttp
import av
import numpy as np
from aioice import stun
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from voice_kit import resample, spoken

AUDIO_RATE = 48000
CHUNK = 960  # 20 ms


class FaceTrack(VideoStreamTrack):
    """The astronaut's face (scikit-image, public domain) at 30 fps, drifting a little."""

    def __init__(self, size: tuple[int, int] = (320, 240)):
        super().__init__()
        from skimage import data

        width, height = size
        picture = data.astronaut()[:320, 60:380]
        wide = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
        self._scene = wide.reformat(width=width + 40, height=height).to_ndarray(format="rgb24")
        self._width = width
        self.sent = 0
        self.sent_at: list[float] = []  # the event loop's time of each frame handed to the encoder

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        shift = (self.sent // 3) % 40
        view = np.ascontiguousarray(self._scene[:, shift : shift + self._width])
        frame = av.VideoFrame.from_ndarray(view, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        self.sent += 1
        self.sent_at.append(asyncio.get_running_loop().time())
        return frame


class SpeechTrack(AudioStreamTrack):
    """A spoken sentence (eSpeak NG) once, then silence: 20 ms frames of 48 kHz mono."""

    def __init__(self, lead_s: float = 0.5):
        super().__init__()
        speech, _, _ = spoken("Hello, can you see me? I am testing the pipeline.")
        voice = resample(speech, 16000, AUDIO_RATE)
        self._samples = np.concatenate([np.zeros(int(lead_s * AUDIO_RATE), np.float32), voice])
        self.speech_ends_s = len(self._samples) / AUDIO_RATE
        self._at = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if hasattr(self, "_start"):
            self._timestamp += CHUNK
            wait = self._start + self._timestamp / AUDIO_RATE - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)
        else:
            self._start = asyncio.get_running_loop().time()
            self._timestamp = 0
        block = self._samples[self._at : self._at + CHUNK]
        block = np.pad(block, (0, CHUNK - len(block)))
        self._at += CHUNK
        pcm = (np.clip(block, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts, frame.time_base = self._timestamp, fractions.Fraction(1, AUDIO_RATE)
        return frame


class Client:
    """One peer: sends the face and speech, keeps what comes back."""

    def __init__(self, *, audio: bool | None = True):
        """`audio`: True sends speech; False only receives (a browser without a microphone);
        None offers no audio section at all."""
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.face = FaceTrack()
        self.speech = SpeechTrack() if audio else None
        self.pc.addTrack(self.face)
        if self.speech is not None:
            self.pc.addTrack(self.speech)
        elif audio is False:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.channel = self.pc.createDataChannel("analytics")
        self.messages: list[dict[str, Any]] = []
        self.channel.on("message", lambda text: self.messages.append(json.loads(text)))
        self.frames: list[tuple[float, av.VideoFrame]] = []
        self.sound: list[tuple[float, np.ndarray]] = []
        self._readers: list[asyncio.Task] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        self._readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.frames.append((loop.time(), frame))
                else:
                    samples = frame.to_ndarray().astype(np.float32).reshape(-1) / 32768.0
                    self.sound.append((loop.time(), samples))
        except MediaStreamError:
            pass

    async def connect(
        self, url: str, *, token: str | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> aiohttp.ClientResponse | None:
        """Offer, and take the answer (kept as `answer_sdp`); the reply when the server refused."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        offer = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/offer", json=offer, headers=headers, ssl=ssl_context if ssl_context is not None else True
            ) as reply,
        ):
            body = await reply.json()
            if reply.status != 200:
                return reply
        self.answer_sdp = body["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(**body))
        return None

    def send(self, command: dict[str, Any]) -> None:
        self.channel.send(json.dumps(command))

    async def wait_for(self, check, timeout_s: float = 20.0, what: str = "condition"):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            found = check()
            if found:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    async def close(self) -> None:
        await self.pc.close()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


class StunServer(asyncio.DatagramProtocol):
    """A STUN server on loopback that answers every binding request with one made-up public
    address (`MAPPED`, from the documentation range): a peer that uses it offers a server-
    reflexive candidate with that address, which no peer without it could have."""

    MAPPED = ("203.0.113.7", 40000)

    def __init__(self) -> None:
        self.requests = 0
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def start(cls) -> StunServer:
        server = cls()
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
        return server

    @property
    def url(self) -> str:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return f"stun:{host}:{port}"

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            request = stun.parse_message(data)
        except ValueError:
            return
        if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
            return
        self.requests += 1
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = self.MAPPED
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
