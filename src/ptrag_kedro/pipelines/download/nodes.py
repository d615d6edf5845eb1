"""Nodes of the ``download`` pipeline: fetch the real screen, streaming and resumable."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import requests
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A download failed; the message is one line naming the URL and the cause."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]


def _total_size(response: requests.Response, offset: int) -> int | None:
    """Full size of the remote file from Content-Range (206) or Content-Length (200)."""
    content_range = response.headers.get("Content-Range", "")
    if response.status_code == 206 and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) + offset if length and length.isdigit() else None


def download_file(
    url: str,
    destination: str | os.PathLike,
    expected_size: int | None = None,
    chunk_size: int = 1 << 20,
    timeout_s: float = 30.0,
    token_env_var: str = "HF_TOKEN",
) -> dict[str, Any]:
    """Stream ``url`` to ``destination`` with a progress bar; resume a previous partial download.

    Bytes go to ``<destination>.part``, which is renamed to ``destination`` only once complete and
    of the expected size, so the final name never holds half a file. An existing ``destination``
    of the right size is left alone (no request); one of another size is an error, never
    overwritten.
    """
    destination = Path(destination)
    part = destination.with_name(destination.name + ".part")
    started = time.perf_counter()
    if destination.exists():
        size = destination.stat().st_size
        if expected_size is None or size == expected_size:
            logger.info("%s already present (%d bytes); not downloading", destination, size)
            return _report(url, destination, size, 0, True, started)
        raise DownloadError(
            f"{destination} exists with {size} bytes but {expected_size} were expected; "
            "delete it to download again"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    token = os.environ.get(token_env_var)
    if token:
        headers["Authorization"] = f"Bearer {token}"

    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout_s)
    except requests.exceptions.Timeout as exc:
        raise DownloadError(f"{url}: no answer within {timeout_s:g} s ({_one_line(exc)})") from exc
    except requests.exceptions.ConnectionError as exc:
        raise DownloadError(f"cannot reach {url} (no network?): {_one_line(exc)}") from exc
    with response:
        if response.status_code == 416 and offset:
            # Nothing past the part file's end: complete if its size is the file's size.
            remote_total = response.headers.get("Content-Range", "").rsplit("/", 1)[-1]
            if offset in (expected_size, int(remote_total) if remote_total.isdigit() else None):
                os.replace(part, destination)
                return _report(url, destination, offset, offset, False, started)
        if response.status_code not in (200, 206):
            raise DownloadError(f"{url} answered HTTP {response.status_code} {response.reason}")
        if response.status_code == 200 or not response.headers.get("Content-Range", "").startswith(
            f"bytes {offset}-"
        ):
            if offset:
                logger.info("%s ignored the resume request; starting again from 0", url)
            offset = 0
        total = _total_size(response, offset)
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(f"{url} reports {total} bytes but {expected_size} were expected")
        total = expected_size if expected_size is not None else total
        resumed_from = offset
        try:
            with (
                part.open("ab" if offset else "wb") as handle,
                tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, desc=destination.name
                ) as progress,
            ):
                for chunk in response.iter_content(chunk_size=chunk_size):
                    handle.write(chunk)
                    progress.update(len(chunk))
        except requests.exceptions.RequestException as exc:
            raise DownloadError(
                f"{url}: transfer interrupted after {part.stat().st_size} bytes ({_one_line(exc)}); "
                f"run again to resume from {part}"
            ) from exc
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(
            f"{url}: got {size} bytes, expected {total}; {part} is kept so a re-run resumes"
        )
    os.replace(part, destination)
    logger.info("Downloaded %s (%d bytes, resumed from %d)", destination, size, resumed_from)
    return _report(url, destination, size, resumed_from, False, started)


def _report(
    url: str, destination: Path, size: int, resumed_from: int, skipped: bool, started: float
) -> dict[str, Any]:
    return {
        "url": url,
        "destination": str(destination),
        "bytes": size,
        "resumed_from": resumed_from,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 3),
    }


def download_raw_screen(download: dict[str, Any]) -> dict[str, Any]:
    """Node: download the real screen as the ``download`` parameters say; return a report."""
    return download_file(
        url=download["url"],
        destination=download["destination"],
        expected_size=download.get("expected_size"),
        chunk_size=int(download.get("chunk_size", 1 << 20)),
        timeout_s=float(download.get("timeout_s", 30.0)),
    )
