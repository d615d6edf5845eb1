"""A torchrun entry point for tests: the real one, recording a fingerprint of every training
batch each rank draws (``batches_rank<r>.txt`` in the job folder), one line per batch."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from ptrag_kedro.models import distributed, training

RECORD_FILE = "batches_rank{rank}.txt"


def fingerprint(batch: dict[str, torch.Tensor]) -> str:
    """What a batch is: its tensors' bytes, hashed."""
    digest = hashlib.sha1()
    for name in sorted(batch):
        digest.update(name.encode())
        digest.update(batch[name].numpy().tobytes())
    return digest.hexdigest()


def _recording_iter(job_dir: Path):
    draw = training.SentenceStream.__iter__
    record = job_dir / RECORD_FILE.format(rank=os.environ.get("RANK", "0"))

    def recording(stream: training.SentenceStream):
        for batch in draw(stream):
            with record.open("a") as handle:
                handle.write(fingerprint(batch) + "\n")
            yield batch

    return recording


if __name__ == "__main__":
    training.SentenceStream.__iter__ = _recording_iter(Path(sys.argv[1]))
    distributed.main()
