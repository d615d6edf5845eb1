"""Nodes of the ``download`` pipeline: the real screen, as a ``raw_screen`` to fetch."""

from __future__ import annotations

from ptrag_kedro.download import DownloadError, RemoteFile
from ptrag_kedro.parameters import DownloadParameters


def download_raw_screen(download: DownloadParameters) -> RemoteFile:
    """The screen of ``download.url``: the ``raw_screen`` dataset streams it to its path.

    The dataset resumes a partial download, checks the size and leaves a complete file alone.
    """
    if not download.url:
        raise DownloadError(
            "parameter download.url is not set in this environment; the real screen is fetched "
            "with `kedro run --env=replogle --pipelines=download`"
        )
    return RemoteFile(
        url=download.url,
        expected_size=download.expected_size,
        chunk_size=download.chunk_size,
        timeout_s=download.timeout_s,
        token_env_var=download.token_env_var,
    )
