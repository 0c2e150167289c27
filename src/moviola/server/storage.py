"""Where the server keeps files, under one storage folder shared by the API and every worker.

    STORAGE/moviola.db                      the default SQLite database
    STORAGE/uploads/<video_id>/input.png    an input_reference image (normalised to PNG)
    STORAGE/uploads/<video_id>/source.<ext> an uploaded video for extensions and edits
    STORAGE/uploads/<video_id>/card<i>.png  a storyboard card's image
    STORAGE/videos/<video_id>/<attempt>/    video.mp4, thumbnail.webp, spritesheet.jpg
    STORAGE/work/<video_id>/<attempt>/      a clip being streamed to disk by a worker (moved into
                                            videos/ when finished; what a killed worker left is
                                            removed with the video)

Outputs go to a folder per attempt: a worker whose lease ran out (and whose job another worker took
over) may still be writing; it never touches the winner's files, and the job record names the folder
of the attempt that completed it. Every file is written atomically (temp file + ``os.replace``); this
module has its own few lines for that because ``moviola.video_io`` imports torch and the API process
must stay light.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

VARIANTS = {  # variant -> (file name, media type)
    "video": ("video.mp4", "video/mp4"),
    "thumbnail": ("thumbnail.webp", "image/webp"),
    "spritesheet": ("spritesheet.jpg", "image/jpeg"),
}


def write_atomic(path: Path, data: bytes) -> Path:
    """Same contract as ``moviola.video_io.atomic_write_bytes``: readers see all of the file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class Storage:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def upload_dir(self, video_id: str) -> Path:
        return self.root / "uploads" / video_id

    def save_upload(self, video_id: str, name: str, data: bytes) -> Path:
        return write_atomic(self.upload_dir(video_id) / name, data)

    def new_attempt_dir(self, video_id: str) -> Path:
        d = self.root / "videos" / video_id / secrets.token_hex(6)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def new_work_dir(self, video_id: str) -> Path:
        """Scratch space for one attempt's outputs while they are made (same file system as videos/)."""
        d = self.root / "work" / video_id / secrets.token_hex(6)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def remove_work(self, video_id: str) -> None:
        shutil.rmtree(self.root / "work" / video_id, ignore_errors=True)

    def remove_other_attempts(self, video_id: str, kept: Path) -> None:
        """The outputs of a video's attempts other than ``kept`` (a worker killed after moving its files into
        place and before recording them leaves a full copy, which nothing else would remove)."""
        for d in (self.root / "videos" / video_id).glob("*"):
            if d.is_dir() and d.resolve() != kept.resolve():
                shutil.rmtree(d, ignore_errors=True)

    def folders(self) -> dict[str, list[Path]]:
        """Per-video folders of requests and attempts in flight (uploads, work), for the sweep of ones without a
        job. Not videos/: finished work is never removed for want of a row (a storage folder shared with
        another database, one restored from a backup)."""
        return {kind: [d for d in (self.root / kind).glob("video_*") if d.is_dir()] for kind in ("uploads", "work")}

    def relative(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.root))

    def resolve(self, relative: str) -> Path:
        p = (self.root / relative).resolve()
        if self.root not in p.parents and p != self.root:  # a record can never point outside storage
            raise ValueError(f"{relative!r} is outside the storage folder")
        return p

    def asset(self, assets: str, variant: str) -> Path:
        return self.resolve(assets) / VARIANTS[variant][0]

    def remove_outputs(self, video_id: str) -> None:
        shutil.rmtree(self.root / "videos" / video_id, ignore_errors=True)

    def remove_all(self, video_id: str) -> None:
        """Outputs and uploads of one video (delete, expiry)."""
        self.remove_outputs(video_id)
        self.remove_work(video_id)
        shutil.rmtree(self.upload_dir(video_id), ignore_errors=True)
