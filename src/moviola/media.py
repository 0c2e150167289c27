"""Opening a user's video file with FFmpeg (PyAV), without torch: the reader (``video_io``) and the API server,
which never loads torch, open uploads the same way.

    with open_video_file(path) as container:   # av.container.InputContainer
        ...
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import av

# FFmpeg demuxers that open other files named inside the one given (concat lists, HLS and DASH playlists): a
# video Moviola reads is one file, never a pointer to others. An upload naming the files beside it had been read
# through them, and a concat list naming itself had opened itself until the process ran out of file handles.
INDIRECT_FORMATS = frozenset({"concat", "hls", "dash"})


class IndirectFileError(ValueError):
    """The file is a playlist or a concat list: it names other files instead of holding a video."""


@lru_cache(maxsize=1)
def _allowed_formats() -> str:
    """FFmpeg's format_whitelist: every format this build has but the indirect ones (FFmpeg checks it after
    probing, before a demuxer opens anything, and passes it on to any file a demuxer opens)."""
    return ",".join(sorted(set(av.formats_available) - INDIRECT_FORMATS))


def _names_other_files(path: str | Path) -> bool:
    """Whether the file begins as a concat list, an HLS playlist or a DASH manifest does."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return text.startswith((b"ffconcat", b"#EXTM3U")) or b"<MPD" in head


def local_path(path: str | Path) -> str:
    """``path`` as FFmpeg must be given a local file: absolute. FFmpeg reads a name's text before a colon as a
    protocol, so a camera's "2024-01-01T10:30:00.mp4" had failed with "Protocol not found" (Python's Path drops
    a leading "./") and "http:clip.mp4" had been fetched over HTTP."""
    return os.path.abspath(os.fspath(path))


def open_video_file(path: str | Path, **kwargs: Any) -> Any:
    """av.open(path) for reading (kwargs passed on), refusing playlists and concat lists (IndirectFileError);
    PyAV's and the OS's other errors pass through."""
    try:
        return av.open(local_path(path), "r", container_options={"format_whitelist": _allowed_formats()}, **kwargs)
    except av.ArgumentError:  # EINVAL: what FFmpeg answers for a format off the list, among other things
        if _names_other_files(path):
            raise IndirectFileError("a playlist or a list of other files (FFmpeg would read the files it "
                                    "names): give the video file itself") from None
        raise
