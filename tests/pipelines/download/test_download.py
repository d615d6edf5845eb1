"""The resumable download against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from ptrag_kedro.pipelines.download import create_pipeline
from ptrag_kedro.pipelines.download.nodes import DownloadError, download_file, download_raw_screen

PAYLOAD = np.random.default_rng(0).bytes(300_000)


@dataclass
class ServerState:
    ignore_range: bool = False
    status: int = 200
    truncate_to: int | None = None  # send fewer bytes than Content-Length announces
    range_headers: list[str | None] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    state: ServerState

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state = self.server.state  # type: ignore[attr-defined]
        requested = self.headers.get("Range")
        state.range_headers.append(requested)
        if state.status != 200:
            self.send_error(state.status)
            return
        start = 0
        if requested and not state.ignore_range:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: state.truncate_to] if state.truncate_to is not None else body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/replogle.h5ad", httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_full_download(server, tmp_path: Path) -> None:
    url, state = server
    report = download_file(url, tmp_path / "raw" / "screen.h5ad", chunk_size=65536)
    assert (tmp_path / "raw" / "screen.h5ad").read_bytes() == PAYLOAD
    assert not (tmp_path / "raw" / "screen.h5ad.part").exists()
    assert report["bytes"] == len(PAYLOAD) and report["resumed_from"] == 0 and not report["skipped"]
    assert state.range_headers == [None]


def test_resume_from_partial_file(server, tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "screen.h5ad.part").write_bytes(PAYLOAD[:100_000])
    report = download_file(url, tmp_path / "screen.h5ad", expected_size=len(PAYLOAD))
    assert (tmp_path / "screen.h5ad").read_bytes() == PAYLOAD
    assert state.range_headers == ["bytes=100000-"]
    assert report["resumed_from"] == 100_000


def test_complete_part_file_is_finished_without_a_body(server, tmp_path: Path) -> None:
    url, _ = server
    (tmp_path / "screen.h5ad.part").write_bytes(PAYLOAD)
    download_file(url, tmp_path / "screen.h5ad")
    assert (tmp_path / "screen.h5ad").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(server, tmp_path: Path) -> None:
    url, state = server
    state.ignore_range = True
    (tmp_path / "screen.h5ad.part").write_bytes(b"stale bytes from elsewhere")
    report = download_file(url, tmp_path / "screen.h5ad")
    assert (tmp_path / "screen.h5ad").read_bytes() == PAYLOAD
    assert report["resumed_from"] == 0


def test_existing_file_is_skipped_without_a_request(server, tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "screen.h5ad").write_bytes(PAYLOAD)
    report = download_file(url, tmp_path / "screen.h5ad", expected_size=len(PAYLOAD))
    assert report["skipped"] and state.range_headers == []


def test_existing_file_of_wrong_size_is_left_alone(server, tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "screen.h5ad").write_bytes(b"user data")
    with pytest.raises(DownloadError, match="exists with 9 bytes but 300000 were expected"):
        download_file(url, tmp_path / "screen.h5ad", expected_size=len(PAYLOAD))
    assert (tmp_path / "screen.h5ad").read_bytes() == b"user data"
    assert state.range_headers == []


def test_expected_size_mismatch(server, tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(DownloadError, match="reports 300000 bytes but 12345 were expected"):
        download_file(url, tmp_path / "screen.h5ad", expected_size=12345)
    assert not (tmp_path / "screen.h5ad").exists()


def test_http_error_is_one_line(server, tmp_path: Path) -> None:
    url, state = server
    state.status = 404
    with pytest.raises(DownloadError) as error:
        download_file(url, tmp_path / "screen.h5ad")
    assert "404" in str(error.value) and url in str(error.value) and "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())


def test_no_network_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/replogle.h5ad"
    with pytest.raises(DownloadError) as error:
        download_file(url, tmp_path / "screen.h5ad", timeout_s=5)
    message = str(error.value)
    assert message.startswith(f"cannot reach {url} (no network?)") and "\n" not in message


def test_short_body_keeps_part_file(server, tmp_path: Path) -> None:
    url, state = server
    state.truncate_to = 50_000
    with pytest.raises(DownloadError) as error:
        download_file(url, tmp_path / "screen.h5ad", chunk_size=4096, timeout_s=5)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "screen.h5ad").exists()
    kept = (tmp_path / "screen.h5ad.part").stat().st_size
    assert 0 < kept <= 50_000  # whole chunks received before the connection dropped
    state.truncate_to = None  # the re-run resumes where the first stopped
    report = download_file(url, tmp_path / "screen.h5ad")
    assert report["resumed_from"] == kept
    assert (tmp_path / "screen.h5ad").read_bytes() == PAYLOAD


def test_node_and_pipeline(server, tmp_path: Path) -> None:
    url, _ = server
    params = {
        "url": url,
        "destination": str(tmp_path / "screen.h5ad"),
        "expected_size": None,
        "chunk_size": 4096,
        "timeout_s": 5,
    }
    assert download_raw_screen(params)["bytes"] == len(PAYLOAD)
    assert [node.name for node in create_pipeline().nodes] == ["download_raw_screen"]
