"""Streamed, resumable, size-checked downloads (the real screen), and what a node asks for.

The ``download`` node returns a :class:`RemoteFile`; the catalog's ``raw_screen`` dataset saves
it by streaming it to its own path, so the download is an ordinary node output and all file I/O
stays in the dataset.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from tqdm.auto import tqdm

from ptrag_kedro.errors import UserError, one_line

logger = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(UserError, RuntimeError):
    """A download failed; the message is one line naming the URL and the cause."""


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: where it is, its size if known, and how to stream it."""

    url: str
    expected_size: int | None = None
    chunk_size: int = 1 << 20
    timeout_s: float = 30.0
    token_env_var: str = "HF_TOKEN"

    def fetch(self, destination: str | os.PathLike[str]) -> dict[str, Any]:
        """Stream it to ``destination`` (see :func:`download_file`); returns the report."""
        return download_file(
            self.url,
            destination,
            expected_size=self.expected_size,
            chunk_size=self.chunk_size,
            timeout_s=self.timeout_s,
            token_env_var=self.token_env_var,
        )


def _short_reason(exc: BaseException) -> str:
    """The innermost cause of a ``requests`` error, e.g. ``Connection refused``."""
    deepest, current, seen = exc, exc, set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        deepest = current
        # urllib3's MaxRetryError keeps its cause in ``reason``; the others chain it.
        reason = getattr(current, "reason", None)
        current = (
            reason
            if isinstance(reason, BaseException)
            else current.__cause__ or current.__context__
        )
    if isinstance(deepest, OSError) and deepest.strerror:
        return one_line(deepest.strerror, 300)
    return one_line(deepest, 300)


def _content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, full size) from a Content-Range header; None where absent or unknown."""
    header = response.headers.get("Content-Range", "")
    if match := _CONTENT_RANGE.fullmatch(header.strip()):
        total = match.group(3)
        return int(match.group(1)), int(total) if total.isdigit() else None
    if unsatisfied := re.fullmatch(r"bytes\s+\*/(\d+)", header.strip()):  # the 416 form
        return None, int(unsatisfied.group(1))
    return None, None


def _remote_total(response: requests.Response, offset: int) -> int | None:
    """Full size of the remote file from Content-Range (206) or Content-Length (200)."""
    if response.status_code == 206:
        _, total = _content_range(response)
        if total is not None:
            return total
    length = response.headers.get("Content-Length", "")
    return int(length) + offset if length.isdigit() else None


def _get(url: str, headers: dict[str, str], timeout_s: float) -> requests.Response:
    """Start a streamed GET; connection failures become one-line DownloadErrors."""
    try:
        return requests.get(url, headers=headers, stream=True, timeout=timeout_s)
    except requests.exceptions.Timeout as exc:  # before ConnectionError: ConnectTimeout is both
        raise DownloadError(
            f"{url}: no answer within {timeout_s:g} s ({_short_reason(exc)})"
        ) from exc
    except requests.exceptions.ConnectionError as exc:
        raise DownloadError(f"cannot reach {url} (no network?): {_short_reason(exc)}") from exc
    except requests.exceptions.RequestException as exc:  # bad URL, too many redirects, ...
        raise DownloadError(f"{url}: request failed: {_short_reason(exc)}") from exc


def _open_stream(
    url: str, part: Path, headers: dict[str, str], expected_size: int | None, timeout_s: float
) -> tuple[requests.Response | None, int]:
    """Request what ``part`` lacks: (response, offset its body starts at).

    The response is None when ``part`` already holds the whole file. A part file that does not
    fit the remote file (the server's range starts elsewhere, or the part is longer than the
    file) is discarded and the file requested from byte 0.
    """
    offset = part.stat().st_size if part.exists() else 0
    if not offset:
        return _get(url, headers, timeout_s), 0
    response = _get(url, {**headers, "Range": f"bytes={offset}-"}, timeout_s)
    status = response.status_code
    if status == 200:
        # The server ignores ranges and sends everything: the caller truncates the part file.
        logger.info("%s ignored the resume request; starting again from byte 0", url)
        return response, 0
    if status == 206:
        start, _ = _content_range(response)
        if start == offset:
            return response, offset
        problem = (
            f"answered a resume from byte {offset} "
            f"with Content-Range {response.headers.get('Content-Range')!r}"
        )
    elif status == 416:
        _, remote = _content_range(response)
        total = expected_size if expected_size is not None else remote
        if total == offset:  # nothing left to fetch: the part file is the whole file
            response.close()
            return None, offset
        size = "an unknown number of" if total is None else str(total)
        problem = f"has no bytes past {offset} but the file has {size} bytes"
    else:
        return response, offset  # an HTTP error: the caller reports it
    response.close()
    logger.warning("%s %s; discarding %s and starting again from byte 0", url, problem, part)
    part.unlink()
    return _get(url, headers, timeout_s), 0


def _http_error(url: str, response: requests.Response, token_env_var: str) -> DownloadError:
    message = f"{url} answered HTTP {response.status_code} {response.reason or ''}".rstrip()
    if response.status_code in (401, 403):
        # Gated Hugging Face datasets answer 401/403 without a token that has been granted access.
        if os.environ.get(token_env_var):
            message += f" (the token in ${token_env_var} was refused or lacks access)"
        else:
            message += f" (a gated dataset needs an access token in ${token_env_var})"
    return DownloadError(message)


def _stream_to(
    response: requests.Response,
    part: Path,
    offset: int,
    total: int | None,
    chunk_size: int,
    url: str,
    label: str,
) -> None:
    """Append (offset > 0) or write (offset 0) the body to ``part``, with a progress bar."""
    try:
        with (
            part.open("ab" if offset else "wb") as handle,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=label) as progress,
        ):
            for chunk in response.iter_content(chunk_size=chunk_size):
                handle.write(chunk)
                progress.update(len(chunk))
    except requests.exceptions.RequestException as exc:
        got = part.stat().st_size
        expected = f", expected {total}" if total is not None else ""
        raise DownloadError(
            f"{url}: got {got} bytes{expected} (connection broke: {_short_reason(exc)}); "
            f"{part} is kept so a re-run resumes"
        ) from exc
    except OSError as exc:  # disk full, permissions
        raise DownloadError(
            f"cannot write {part} while downloading {url}: {one_line(exc, 300)}"
        ) from exc


def download_file(
    url: str,
    destination: str | os.PathLike[str],
    expected_size: int | None = None,
    chunk_size: int = 1 << 20,
    timeout_s: float = 30.0,
    token_env_var: str = "HF_TOKEN",
) -> dict[str, Any]:
    """Stream ``url`` to ``destination`` with a progress bar; resume a previous partial download.

    Bytes go to ``<destination>.part``, which is renamed to ``destination`` only once complete and
    of the expected size, so the final name never holds half a file. An existing ``destination``
    of the right size is left alone (no request); one of another size is an error, never
    overwritten. Every failure raises a one-line :class:`DownloadError`.
    """
    destination = Path(destination)
    part = destination.with_name(destination.name + ".part")
    started = time.perf_counter()
    if _already_downloaded(destination, expected_size):
        size = destination.stat().st_size
        logger.info("%s already present (%d bytes); not downloading", destination, size)
        return _report(url, destination, size, 0, True, started)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Byte counts are checked against Content-Length / Content-Range, which count the bytes as
    # sent: a compressed transfer would be decoded to a different size, so ask for none.
    headers = {"Accept-Encoding": "identity"}
    if token := os.environ.get(token_env_var):
        headers["Authorization"] = f"Bearer {token}"

    response, offset = _open_stream(url, part, headers, expected_size, timeout_s)
    if response is None:
        os.replace(part, destination)
        logger.info("%s was already complete in %s (%d bytes)", destination, part, offset)
        return _report(url, destination, offset, offset, False, started)
    with response:
        total = _checked_total(response, url, offset, expected_size, token_env_var)
        if offset:
            logger.info("Resuming %s from byte %d", url, offset)
        _stream_to(response, part, offset, total, chunk_size, url, destination.name)
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(
            f"{url}: got {size} bytes, expected {total}; {part} is kept so a re-run resumes"
        )
    os.replace(part, destination)
    logger.info("Downloaded %s (%d bytes, resumed from %d)", destination, size, offset)
    return _report(url, destination, size, offset, False, started)


def _already_downloaded(destination: Path, expected_size: int | None) -> bool:
    """True for a finished download; a file of the wrong size is an error, never overwritten."""
    if not destination.exists():
        return False
    size = destination.stat().st_size
    if expected_size is None or size == expected_size:
        return True
    raise DownloadError(
        f"{destination} exists with {size} bytes but {expected_size} were expected; "
        "delete it to download again"
    )


def _checked_total(
    response: requests.Response,
    url: str,
    offset: int,
    expected_size: int | None,
    token_env_var: str,
) -> int | None:
    """The file's total size, after refusing an error status or a range we did not ask for."""
    if response.status_code not in (200, 206):
        raise _http_error(url, response, token_env_var)
    if response.status_code == 206 and _content_range(response)[0] != offset:
        raise DownloadError(
            f"{url} answered a request for the whole file with Content-Range "
            f"{response.headers.get('Content-Range')!r}"
        )
    remote = _remote_total(response, offset)
    if expected_size is not None and remote is not None and remote != expected_size:
        raise DownloadError(f"{url} reports {remote} bytes but {expected_size} were expected")
    return expected_size if expected_size is not None else remote


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
