"""The ablation's JSON archive: every result of a report, committed beside it in
``docs/benchmarks/``, and written back into an output folder that lost them.

Used by ``benchmarks/ablation.py`` (see ``docs/benchmarks/ablation.md``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ablation_run import result_path
from ablation_setup import Protocol, saved_protocol
from common import atomic_json


def archive_results(path: Path, res: dict, command: str, p: Protocol,
                    accuracy: float | None, floor: dict | None) -> int:
    """Write every result record (without its protocol copy) to ``path`` as JSON.

    ``--out`` (checkpoints, features) is not kept in git; this file, committed beside the
    report, is what a later analysis of the run needs. Records already in the file that ``res``
    lacks are kept (``res`` wins where both have one), and so are the classifier's accuracy and
    the floor when not given, so a report rewritten from a folder that lost results does not lose
    them here; NaN is written as null. Returns the number of records.
    """
    def key(r: dict) -> tuple[str, int, int]:
        return (r["arm"], r["seed"], r["step"])

    def finite(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [finite(x) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v

    merged: dict[tuple[str, int, int], dict] = {}
    if path.is_file():
        old = json.loads(path.read_text())
        merged = {key(r): r for r in old.get("results", [])}
        accuracy = old.get("classifier_test_accuracy") if accuracy is None else accuracy
        floor = old.get("floor") if floor is None else floor
    for r in res.values():
        merged[key(r)] = {k: v for k, v in r.items() if k != "protocol"}
    atomic_json(path, finite({"command": command, "protocol": asdict(p),
                              "classifier_test_accuracy": accuracy, "floor": floor,
                              "results": [merged[k] for k in sorted(merged)]}))
    return len(merged)


def restore_archive(path: Path, out: Path) -> int:
    """Write the results of an archive (:func:`archive_results`) that ``out`` lacks into ``out``.

    Also writes ``protocol.json``, ``classifier.json`` and ``floor.json`` where missing; refuses
    an ``out`` whose protocol differs from the archive's. Sample features are not archived, so
    restored results cannot be backfilled with new metrics; a run continued from them retrains
    from scratch where the checkpoints are gone (the same seed gives the same run). Returns the
    number of result files written.
    """
    archive = json.loads(Path(path).read_text())
    proto_path = out / "protocol.json"
    if proto_path.is_file() and (saved_protocol(json.loads(proto_path.read_text()))
                                 != saved_protocol(archive["protocol"])):
        raise SystemExit(f"{out} holds results of another protocol than {path}")
    if not proto_path.is_file():
        atomic_json(proto_path, archive["protocol"])
    if not (out / "classifier.json").is_file() and archive.get("classifier_test_accuracy"):
        atomic_json(out / "classifier.json",
                    {"test_accuracy": archive["classifier_test_accuracy"], "cache": None})
    if not (out / "floor.json").is_file() and archive.get("floor"):
        atomic_json(out / "floor.json", archive["floor"])
    n = 0
    for r in archive["results"]:
        target = result_path(out, r["arm"], r["seed"], r["step"])
        if target.is_file():
            continue
        seconds = r.get("train_seconds")
        atomic_json(target, {**r, "protocol": archive["protocol"],
                             "train_seconds": math.nan if seconds is None else seconds})
        n += 1
    return n
