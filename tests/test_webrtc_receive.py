"""The prompt jitter buffer against aiortc's own, on the same RTP packets."""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from pipeline.webrtc.receive import PromptJitterBuffer


def packet(seq: int, timestamp: int, data: bytes, *, marker: bool = False) -> RtpPacket:
    p = RtpPacket(sequence_number=seq, timestamp=timestamp, marker=int(marker))
    p._data = data  # what the depayloader leaves on a packet
    return p


def video_frames(count: int, first_seq: int = 1000) -> list[RtpPacket]:
    """`count` frames of three packets each, the last one marked."""
    packets = []
    for frame in range(count):
        for part in range(3):
            seq = first_seq + 3 * frame + part
            packets.append(packet(seq, 3000 * frame, bytes([frame, part]), marker=part == 2))
    return packets


def released(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, int, bytes]]:
    """(index of the packet whose arrival released it, timestamp, data) per frame released."""
    out = []
    for i, p in enumerate(packets):
        _, frame = buffer.add(p)
        if frame is not None:
            out.append((i, frame.timestamp, frame.data))
    return out


def test_a_video_frame_is_released_on_its_last_packet_not_on_the_next_frames_first():
    packets = video_frames(4)
    prompt = released(PromptJitterBuffer(capacity=512, is_video=True), packets)
    stock = released(JitterBuffer(capacity=512, is_video=True), packets)
    assert [i for i, _, _ in prompt] == [2, 5, 8, 11]  # each frame's marked packet
    assert [i for i, _, _ in stock] == [3, 6, 9]  # one packet into the next frame, and the last never
    assert [data for _, _, data in prompt[:3]] == [data for _, _, data in stock]  # the same frames
    assert prompt[0][2] == bytes([0, 0, 0, 1, 0, 2])


def test_packets_out_of_order_still_make_whole_frames_in_order():
    packets = video_frames(3)
    packets[3], packets[4] = packets[4], packets[3]  # frame 1's first two packets swapped
    packets[7], packets[8] = packets[8], packets[7]  # frame 2's marker before its middle packet
    prompt = released(PromptJitterBuffer(capacity=512, is_video=True), packets)
    assert [ts for _, ts, _ in prompt] == [0, 3000, 6000]
    assert [data for _, _, data in prompt] == [bytes([f, 0, f, 1, f, 2]) for f in range(3)]
    assert [i for i, _, _ in prompt] == [2, 5, 8]  # each as soon as its last missing packet came


def test_a_missing_packet_holds_its_frame_and_nothing_after_it_is_released_early():
    packets = video_frames(2)
    del packets[1]  # frame 0 lost its middle packet
    prompt = released(PromptJitterBuffer(capacity=512, is_video=True), packets)
    stock = released(JitterBuffer(capacity=512, is_video=True), packets)
    assert prompt == stock == []  # held as aiortc holds it (until a retransmission fills the gap): never torn


def test_audio_packets_go_out_as_they_arrive():
    packets = [packet(50 + i, 960 * i, bytes([i])) for i in range(6)]
    prompt = released(PromptJitterBuffer(capacity=16, prefetch=0, is_video=False), packets)
    stock = released(JitterBuffer(capacity=16, prefetch=4), packets)
    assert [i for i, _, _ in prompt] == [0, 1, 2, 3, 4, 5]
    assert [i for i, _, _ in stock] == [4, 5]  # aiortc waits for four packets behind the first


def test_install_swaps_the_buffer_of_every_receiver_of_a_real_connection():
    """aiortc keeps the buffer in a private attribute; if a release moves it, install() swaps
    nothing (and says so in the log), and this test is where that shows."""
    import asyncio

    from aiortc import RTCPeerConnection

    from pipeline.webrtc.receive import ATTRIBUTE, install

    async def scenario():
        offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
        try:
            offerer.addTransceiver("video")
            offerer.addTransceiver("audio")
            await offerer.setLocalDescription(await offerer.createOffer())
            await answerer.setRemoteDescription(offerer.localDescription)
            swapped = install(answerer)
            buffers = [getattr(t.receiver, ATTRIBUTE) for t in answerer.getTransceivers()]
            return swapped, buffers
        finally:
            await offerer.close()
            await answerer.close()

    swapped, buffers = asyncio.run(scenario())
    assert swapped == 2
    assert [type(b) for b in buffers] == [PromptJitterBuffer, PromptJitterBuffer]
    assert [b._is_video for b in buffers] == [True, False]
