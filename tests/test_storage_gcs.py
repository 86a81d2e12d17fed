"""GcsStore against a real fake-gcs-server (started here alone: no Pub/Sub, no services).

What the worker's client configuration must keep: reads return the bytes written, listings
carry the same times as a stat, and a service store (``trust_env=False``) ignores proxy
variables meant for people's shells, while the CLI's store still honours them.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest

from ocrpipe.local.readiness import START_S, exited, http_answers, wait_until_ready
from ocrpipe.local.stack import fake_gcs_server_binary, free_port
from ocrpipe.storage import GcsStore

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")


@pytest.fixture(scope="module")
def gcs_url() -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(fake_gcs_server_binary()), "-scheme", "http", "-host", "127.0.0.1"]
    command += ["-port", str(port), "-backend", "memory", "-external-url", url]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        answers = http_answers(f"{url}/storage/v1/b?project=p", lambda _: True)
        wait_until_ready(answers, what="fake-gcs-server", timeout=START_S, died=exited(server))
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def bucket(gcs_url: str) -> str:
    name = f"store-{uuid.uuid4().hex[:8]}"
    GcsStore.connect("p", gcs_url).client.create_bucket(name)
    return name


def test_the_worker_store_reads_back_exactly_what_was_written(gcs_url: str, bucket: str) -> None:
    store = GcsStore.connect("p", gcs_url, trust_env=False)
    image = bytes(range(256)) * 800  # a page image's worth of every byte value
    assert store.create(bucket, "doc/page.png", image, "image/png")
    assert store.read(bucket, "doc/page.png") == image
    assert store.create(bucket, "doc/empty.md", b"", "text/markdown")
    assert store.read(bucket, "doc/empty.md") == b""


def test_a_listing_gives_each_object_the_time_a_stat_gives(gcs_url: str, bucket: str) -> None:
    store = GcsStore.connect("p", gcs_url, trust_env=False)
    for page in range(3):
        store.create(bucket, f"times/{page:05d}.md", b"text", "text/markdown")
    listed = store.list(bucket, "times/")
    assert len(listed) == 3
    for info in listed:
        stat = store.stat(bucket, info.name)
        assert stat is not None and stat.updated == info.updated and info.updated > 1.7e9


class _RefusingProxy:
    """An HTTP proxy that answers every request 403 and counts what it was sent."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            with connection:
                self.requests.append(connection.recv(65536).split(b"\r\n", 1)[0])
                connection.sendall(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )

    def close(self) -> None:
        self._socket.close()


def test_a_service_store_ignores_proxy_variables_the_cli_honours(
    gcs_url: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    GcsStore.connect("p", gcs_url).create(bucket, "proxy/a.md", b"a", "text/markdown")
    proxy = _RefusingProxy()
    try:
        for variable in PROXY_VARIABLES:
            monkeypatch.setenv(variable, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)

        worker = GcsStore.connect("p", gcs_url, trust_env=False)
        assert worker.read(bucket, "proxy/a.md") == b"a"
        assert proxy.requests == []

        cli = GcsStore.connect("p", gcs_url)
        with pytest.raises(Exception, match="403"):
            cli.read(bucket, "proxy/a.md")
        assert any(b"/o/proxy%2Fa.md?alt=media" in line for line in proxy.requests)
    finally:
        proxy.close()
