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
from kedro.io import DatasetError

from ptrag_kedro.datasets import AnnDataDataset
from ptrag_kedro.download import DownloadError, RemoteFile, download_file
from ptrag_kedro.parameters import DownloadParameters
from ptrag_kedro.pipelines.download import create_pipeline
from ptrag_kedro.pipelines.download.nodes import download_raw_screen

PAYLOAD = np.random.default_rng(0).bytes(300_000)


@dataclass
class ServerState:
    """Switches for the handler, and what it was asked."""

    ignore_range: bool = False  # always answer 200 with the whole file
    range_start: int | None = None  # answer a Range request with 206 from this byte instead
    status: int = 200  # anything else: answer with this error
    truncate_to: int | None = None  # send fewer bytes than Content-Length announces
    omit_length: bool = False  # no Content-Length: the body ends when the connection closes
    requests: list[dict[str, str | None]] = field(default_factory=list)

    @property
    def range_headers(self) -> list[str | None]:
        return [request["Range"] for request in self.requests]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        state.requests.append(
            {name: self.headers.get(name) for name in ("Range", "Authorization", "Accept-Encoding")}
        )
        if state.status != 200:
            self.send_error(state.status)
            return
        requested = self.headers.get("Range")
        start = 0
        if requested and not state.ignore_range:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if state.range_start is not None:
                start = state.range_start
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        if not state.omit_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: state.truncate_to] if state.truncate_to is not None else body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = ServerState()
    httpd.state = state  # type: ignore[attr-defined]
    # A short poll interval: shutdown() waits for it, once per test.
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/replogle.h5ad", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # A token in the developer's environment must not leak into the local server's requests.
    monkeypatch.delenv("HF_TOKEN", raising=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_full_download(server, tmp_path: Path) -> None:
    url, state = server
    destination = tmp_path / "raw" / "screen.h5ad"  # the parent folder does not exist yet
    report = download_file(url, destination, chunk_size=65536)
    assert destination.read_bytes() == PAYLOAD
    assert not (tmp_path / "raw" / "screen.h5ad.part").exists()
    assert report["bytes"] == len(PAYLOAD) and report["resumed_from"] == 0
    assert not report["skipped"] and report["destination"] == str(destination)
    assert state.requests == [{"Range": None, "Authorization": None, "Accept-Encoding": "identity"}]


def test_resume_from_partial_file(server, tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "screen.h5ad.part").write_bytes(PAYLOAD[:100_000])
    report = download_file(url, tmp_path / "screen.h5ad", expected_size=len(PAYLOAD))
    assert (tmp_path / "screen.h5ad").read_bytes() == PAYLOAD
    assert not (tmp_path / "screen.h5ad.part").exists()
    assert state.range_headers == ["bytes=100000-"]
    assert report["resumed_from"] == 100_000 and report["bytes"] == len(PAYLOAD)


def test_complete_part_file_is_finished_without_a_body(server, tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "screen.h5ad.part").write_bytes(PAYLOAD)
    report = download_file(url, tmp_path / "screen.h5ad")  # the server answers 416
    assert (tmp_path / "screen.h5ad").read_bytes() == PAYLOAD
    assert state.range_headers == [f"bytes={len(PAYLOAD)}-"]
    assert report["resumed_from"] == len(PAYLOAD)


def test_part_file_longer_than_the_remote_file_is_discarded(server, tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "screen.h5ad.part").write_bytes(PAYLOAD + b"trailing junk")
    report = download_file(url, tmp_path / "screen.h5ad")
    assert (tmp_path / "screen.h5ad").read_bytes() == PAYLOAD
    assert state.range_headers == [f"bytes={len(PAYLOAD) + 13}-", None]
    assert report["resumed_from"] == 0


def test_server_ignoring_range_restarts(server, tmp_path: Path) -> None:
    url, state = server
    state.ignore_range = True
    (tmp_path / "screen.h5ad.part").write_bytes(b"stale bytes from elsewhere")
    report = download_file(url, tmp_path / "screen.h5ad")
    assert (tmp_path / "screen.h5ad").read_bytes() == PAYLOAD
    assert state.range_headers == ["bytes=26-"]
    assert report["resumed_from"] == 0


def test_range_from_the_wrong_byte_restarts(server, tmp_path: Path) -> None:
    url, state = server
    state.range_start = 0  # a 206 from byte 0: appending it would corrupt the file
    (tmp_path / "screen.h5ad.part").write_bytes(PAYLOAD[:100_000])
    report = download_file(url, tmp_path / "screen.h5ad")
    assert (tmp_path / "screen.h5ad").read_bytes() == PAYLOAD
    assert state.range_headers == ["bytes=100000-", None]
    assert report["resumed_from"] == 0


def test_existing_file_is_skipped_without_a_request(server, tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "screen.h5ad").write_bytes(PAYLOAD)
    report = download_file(url, tmp_path / "screen.h5ad", expected_size=len(PAYLOAD))
    assert report["skipped"] and report["bytes"] == len(PAYLOAD)
    assert state.requests == []
    unchecked = download_file(url, tmp_path / "screen.h5ad")  # no expected size: trusted as is
    assert unchecked["skipped"] and state.requests == []


def test_existing_file_of_wrong_size_is_left_alone(server, tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "screen.h5ad").write_bytes(b"user data")
    with pytest.raises(DownloadError, match="exists with 9 bytes but 300000 were expected"):
        download_file(url, tmp_path / "screen.h5ad", expected_size=len(PAYLOAD))
    assert (tmp_path / "screen.h5ad").read_bytes() == b"user data"
    assert state.requests == []


def test_expected_size_mismatch(server, tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(DownloadError, match="reports 300000 bytes but 12345 were expected"):
        download_file(url, tmp_path / "screen.h5ad", expected_size=12345)
    assert not (tmp_path / "screen.h5ad").exists()
    assert not (tmp_path / "screen.h5ad.part").exists()  # raised before any byte was written


def test_http_error_is_one_line(server, tmp_path: Path) -> None:
    url, state = server
    state.status = 404
    with pytest.raises(DownloadError) as error:
        download_file(url, tmp_path / "screen.h5ad")
    message = str(error.value)
    assert f"{url} answered HTTP 404" in message and "\n" not in message
    assert not list(tmp_path.iterdir())


def test_gated_dataset_hint_and_token(server, tmp_path: Path, monkeypatch) -> None:
    url, state = server
    state.status = 401
    with pytest.raises(DownloadError, match=r"HTTP 401.*access token in \$PTRAG_TEST_TOKEN"):
        download_file(url, tmp_path / "screen.h5ad", token_env_var="PTRAG_TEST_TOKEN")
    assert state.requests[-1]["Authorization"] is None
    monkeypatch.setenv("PTRAG_TEST_TOKEN", "hf_secret")
    state.status = 200
    download_file(url, tmp_path / "screen.h5ad", token_env_var="PTRAG_TEST_TOKEN")
    assert state.requests[-1]["Authorization"] == "Bearer hf_secret"


def test_connection_refused_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/replogle.h5ad"  # closed again: nobody listens
    with pytest.raises(DownloadError) as error:
        download_file(url, tmp_path / "screen.h5ad", timeout_s=5)
    message = str(error.value)
    assert message == f"cannot reach {url} (no network?): Connection refused"
    assert isinstance(error.value.__cause__, OSError)  # the requests error is chained, not lost


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/replogle.h5ad"
        with pytest.raises(DownloadError) as error:
            download_file(url, tmp_path / "screen.h5ad", timeout_s=0.2)
    message = str(error.value)
    assert message.startswith(f"{url}: no answer within 0.2 s") and "\n" not in message


def test_short_body_keeps_part_file(server, tmp_path: Path) -> None:
    url, state = server
    state.truncate_to = 50_000
    with pytest.raises(DownloadError, match="is kept so a re-run resumes") as error:
        download_file(url, tmp_path / "screen.h5ad", chunk_size=4096, timeout_s=5)
    assert "expected 300000" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "screen.h5ad").exists()
    kept = (tmp_path / "screen.h5ad.part").stat().st_size
    assert 0 < kept <= 50_000  # the chunks received before the connection dropped
    state.truncate_to = None  # the re-run resumes where the first stopped
    report = download_file(url, tmp_path / "screen.h5ad")
    assert report["resumed_from"] == kept
    assert (tmp_path / "screen.h5ad").read_bytes() == PAYLOAD


def test_body_shorter_than_expected_size(server, tmp_path: Path) -> None:
    url, state = server
    state.omit_length, state.truncate_to = True, 50_000  # the server cannot tell the size
    with pytest.raises(DownloadError) as error:
        download_file(url, tmp_path / "screen.h5ad", expected_size=len(PAYLOAD))
    assert str(error.value) == (
        f"{url}: got 50000 bytes, expected 300000; "
        f"{tmp_path / 'screen.h5ad.part'} is kept so a re-run resumes"
    )
    assert not (tmp_path / "screen.h5ad").exists()
    assert (tmp_path / "screen.h5ad.part").read_bytes() == PAYLOAD[:50_000]


def test_the_node_asks_and_raw_screen_fetches(server, tmp_path: Path) -> None:
    """The node's output is `raw_screen`: the dataset streams it to its own path."""
    url, state = server
    remote = download_raw_screen(
        DownloadParameters(url=url, expected_size=len(PAYLOAD), chunk_size=4096, timeout_s=5)
    )
    assert remote == RemoteFile(url, len(PAYLOAD), 4096, 5.0, "HF_TOKEN")
    raw = tmp_path / "replogle" / "screen.h5ad"
    dataset = AnnDataDataset(filepath=str(raw), write_only_under=str(tmp_path / "replogle"))
    dataset.save(remote)
    assert raw.read_bytes() == PAYLOAD
    requests = len(state.requests)
    dataset.save(remote)  # a complete file is left alone, without a request
    assert len(state.requests) == requests
    elsewhere = AnnDataDataset(
        filepath=str(tmp_path / "user.h5ad"), write_only_under=str(raw.parent)
    )
    with pytest.raises(DatasetError, match="refusing to write"):
        elsewhere.save(remote)
    assert not (tmp_path / "user.h5ad").exists() and not (tmp_path / "user.h5ad.part").exists()
    [only] = create_pipeline().nodes
    assert only.name == "download_raw_screen"
    assert only.inputs == ["params:download"] and only.outputs == ["raw_screen"]


def test_no_url_is_one_line() -> None:
    with pytest.raises(DownloadError, match="kedro run --env=replogle --pipelines=download"):
        download_raw_screen(DownloadParameters())
