"""A write that found the disk full is recognised however a library wraps it (the stage then exits 4)."""

from __future__ import annotations

import errno

from stages.stage_cli import disk_full


class SafetensorError(Exception):  # how safetensors' Rust writer reports the OS error: by message only
    pass


def test_a_full_disk_is_recognised_through_the_wrappers_libraries_put_around_it():
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk_full(
        SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )
    )
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from inner
    except RuntimeError as outer:
        assert disk_full(outer)
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(ValueError("bad value"))
