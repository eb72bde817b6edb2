"""Serving beyond this machine: STUN/TURN servers for both ends, HTTPS, and requests that stall.

A local STUN server answers with a made-up public address, so a peer connection that used it
is recognisable from its candidates; the HTTPS server's certificate is made for the run and
trusted by the test's client only.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest
import torch
from webrtc_kit import Client, StunServer

from pipeline.config import IceServerConfig, load_config, with_ice_servers
from pipeline.errors import ConfigError
from pipeline.webrtc.ice import unused_by_aiortc
from pipeline.webrtc.server import Server
from pipeline.webrtc.tls import fingerprint, from_files, self_signed

pytest.importorskip("skimage", reason="the test face comes from scikit-image")


async def started(config_name: str = "passthrough", servers: list[IceServerConfig] = (), **options) -> Server:
    config = with_ice_servers(load_config(config_name), list(servers))
    server = Server(config, device=torch.device("cpu"), port=0, **options)
    await server.start()
    return server


def test_the_page_and_the_servers_peer_connections_get_the_configured_ice_servers():
    relay = IceServerConfig(urls=["turn:relay.example.org:3478?transport=tcp"], username="u", credential="c")

    async def scenario():
        stun_server = await StunServer.start()
        stun_entry = IceServerConfig(urls=[stun_server.url])
        server = await started(servers=[stun_entry], token="secret")
        client = Client(audio=None)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{server.url}/api/ice") as reply:
                    refused = reply.status
                headers = {"Authorization": "Bearer secret"}
                async with http.get(f"{server.url}/api/ice", headers=headers) as reply:
                    page = await reply.json()
            assert await client.connect(server.url, token="secret") is None
            await client.wait_for(lambda: client.frames, what="a frame back")
            return refused, page, client.answer_sdp, stun_server.requests
        finally:
            await client.close()
            await server.stop()
            stun_server.close()

    refused, page, answer, requests = asyncio.run(scenario())
    assert refused == 401  # TURN credentials are behind the token
    assert page["iceServers"] == [{"urls": [page["iceServers"][0]["urls"][0]]}]
    assert page["iceServers"][0]["urls"][0].startswith("stun:127.0.0.1:")
    # The server's own peer connection asked the STUN server and offers what it answered.
    assert requests >= 1
    assert f"{StunServer.MAPPED[0]} {StunServer.MAPPED[1]} typ srflx" in answer
    # The page gets TURN entries with their credentials, as a browser takes them.
    config = with_ice_servers(load_config("passthrough"), [relay])
    assert config.webrtc.ice_servers[0].model_dump(exclude_none=True) == {
        "urls": ["turn:relay.example.org:3478?transport=tcp"],
        "username": "u",
        "credential": "c",
    }


def test_servers_aiortc_cannot_use_are_named():
    servers = [
        IceServerConfig(urls=["stun:a.example:3478", "stun:b.example:3478"]),
        IceServerConfig(urls=["turns:c.example:5349?transport=udp"], username="u", credential="c"),  # TLS on UDP
        IceServerConfig(urls=["stuns:e.example:5349"]),  # aiortc has no STUN over TLS
        IceServerConfig(urls=["turn:d.example:3478"], username="u", credential="c"),
    ]
    assert unused_by_aiortc(servers) == [
        "stun:b.example:3478",
        "turns:c.example:5349?transport=udp",
        "stuns:e.example:5349",
    ]
    assert unused_by_aiortc([IceServerConfig(urls=["turns:f.example"], username="u", credential="c")]) == []  # TCP


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"urls": "http://stun.example.org"}, "is not a stun:HOST[:PORT] or turn:HOST[:PORT]"),
        ({"urls": "stun:stun.example.org?transport=udp"}, "is not a stun:HOST[:PORT]"),  # aiortc refuses it
        ({"urls": "stun:[::1]:3478"}, "aiortc takes no IPv6 literal"),
        ({"urls": "turn:relay.example.org"}, "a TURN server needs a username and a credential"),
        ({"urls": []}, "at least 1 item"),
    ],
)
def test_a_bad_ice_server_in_a_config_is_one_line_naming_the_key(tmp_path, entry, message):
    import yaml

    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump({"webrtc": {"ice_servers": [entry]}}))
    with pytest.raises(ConfigError, match=r"webrtc\.ice_servers\.0") as caught:
        load_config(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_https_server_answers_offers_and_streams_frames_back_to_a_client_that_trusts_it():
    tls = self_signed("127.0.0.1")

    async def scenario():
        server = await started(tls=tls)
        trusting = ssl.create_default_context(cadata=tls.certificate_pem.decode())
        client = Client(audio=None)
        try:
            async with aiohttp.ClientSession() as http:  # the system's trust store does not know it
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await http.get(f"{server.url}/")
                async with http.get(f"{server.url}/", ssl=trusting) as reply:
                    page = reply.status
            assert await client.connect(server.url, ssl_context=trusting) is None
            await client.wait_for(lambda: len(client.frames) >= 10, what="frames back over the session")
            return server.url, page, len(client.frames)
        finally:
            await client.close()
            await server.stop()

    url, page, frames = asyncio.run(scenario())
    assert url.startswith("https://127.0.0.1:")
    assert page == 200 and frames >= 10
    assert tls.self_signed and tls.fingerprint == fingerprint(tls.certificate_pem)
    assert len(tls.fingerprint.split(":")) == 32


def test_a_server_on_every_address_names_the_urls_another_device_opens():
    server = Server(
        load_config("passthrough"), device=torch.device("cpu"), host="0.0.0.0", port=8443, tls=self_signed("0.0.0.0")
    )
    urls = server.page_urls()
    assert urls and all(url.startswith("https://") and url.endswith(f":8443/?token={server.token}") for url in urls)
    assert server.token and not any("0.0.0.0" in url for url in urls)


def test_a_certificate_and_key_from_files_are_checked_and_a_mismatch_is_one_line(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    made = self_signed("0.0.0.0")  # every address of this machine, its names and loopback
    cert = tmp_path / "cert.pem"
    cert.write_bytes(made.certificate_pem)
    key = tmp_path / "key.pem"  # a key, but not this certificate's
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="not a PEM certificate and its key") as caught:
        from_files(cert, key)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"--tls-key .*: no such file"):
        from_files(cert, tmp_path / "missing.pem")
    names = x509.load_pem_x509_certificate(made.certificate_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "localhost" in names.value.get_values_for_type(x509.DNSName)
    assert {"127.0.0.1", "::1"} <= {str(a) for a in names.value.get_values_for_type(x509.IPAddress)}


def test_half_sent_requests_are_cut_off_and_the_token_is_checked_before_the_body():
    async def scenario():
        server = await started(token="secret", header_timeout_s=0.5, body_timeout_s=0.5)
        host, port = "127.0.0.1", server.port
        loop = asyncio.get_running_loop()
        try:
            # Headers that never end: the connection is closed, not held.
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
            await writer.drain()
            started_at = loop.time()
            closed = await asyncio.wait_for(reader.read(), 5.0) == b""
            headers_cut_s = loop.time() - started_at
            writer.close()
            # A body shorter than its Content-Length, with the token: a 408 once the wait is over.
            reader, writer = await asyncio.open_connection(host, port)
            head = (
                "POST /api/performance/targets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
                "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
            )
            writer.write(head.encode() + b'{"fps": 3')
            await writer.drain()
            body_reply = await asyncio.wait_for(reader.readline(), 5.0)
            writer.close()
            # The same without the token: refused at once, before any of the body is read.
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(head.replace("Authorization: Bearer secret\r\n", "").encode())
            await writer.drain()
            started_at = loop.time()
            token_reply = await asyncio.wait_for(reader.readline(), 5.0)
            token_s = loop.time() - started_at
            writer.close()
            async with aiohttp.ClientSession() as http, http.get(f"{server.url}/api/resource/status") as reply:
                still = reply.status
            return closed, headers_cut_s, body_reply, token_reply, token_s, still
        finally:
            await server.stop()

    closed, headers_cut_s, body_reply, token_reply, token_s, still = asyncio.run(scenario())
    assert closed and headers_cut_s < 3.0
    assert body_reply.startswith(b"HTTP/1.1 408")
    assert token_reply.startswith(b"HTTP/1.1 401") and token_s < 0.4
    assert still == 200
