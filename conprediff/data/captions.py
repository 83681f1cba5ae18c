"""Captions beside a folder of images: one ``.txt`` per image, or a JSON-lines file."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["read_captions"]

#: Longest caption file or JSON line read (a caption is a sentence, not a book).
MAX_CAPTION_BYTES = 64 * 1024


def read_captions(root: Path, paths: list[Path], captions: str | os.PathLike) -> list[str]:
    """The caption of each image in ``paths`` (below ``root``), in order.

    ``captions='txt'``: ``<image stem>.txt`` beside each image. Otherwise a JSON-lines file
    (relative to ``root`` unless absolute) of ``{"file": <path relative to root>, "text": ...}``.

    Raises
    ------
    ValueError
        A missing caption (naming the image), a line that is not such an object (naming the
        line), a caption file over :data:`MAX_CAPTION_BYTES`.
    """
    if captions == "txt":
        return [_read_text(p.with_suffix(".txt"), p) for p in paths]
    table = Path(captions)
    table = table if table.is_absolute() else root / table
    if not table.is_file():
        raise ValueError(f"captions: no file {str(table)!r}")
    by_file: dict[str, str] = {}
    with open(table, encoding="utf-8") as f:
        for n, line in enumerate(iter(lambda: f.readline(MAX_CAPTION_BYTES + 1), ""), 1):
            if len(line) > MAX_CAPTION_BYTES:
                raise ValueError(f"{table} line {n}: over {MAX_CAPTION_BYTES} characters")
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except (ValueError, RecursionError) as err:
                raise ValueError(f"{table} line {n}: not JSON ({err})") from None
            if not (isinstance(item, dict) and isinstance(item.get("file"), str)
                    and isinstance(item.get("text"), str)):
                raise ValueError(f'{table} line {n}: expected {{"file": "...", "text": "..."}}')
            by_file[Path(item["file"]).as_posix()] = item["text"]
    out = []
    for p in paths:
        key = p.relative_to(root).as_posix()
        if key not in by_file:
            raise ValueError(f"{table}: no caption for image {key!r}")
        out.append(by_file[key])
    return out


def _read_text(path: Path, image: Path) -> str:
    if not path.is_file():
        raise ValueError(f"captions='txt': no caption file {path.name!r} beside {str(image)!r}")
    if path.stat().st_size > MAX_CAPTION_BYTES:
        raise ValueError(f"caption file {str(path)!r} is over {MAX_CAPTION_BYTES} bytes")
    return path.read_text(encoding="utf-8").strip()
