"""``export.json``: what a deployment needs to call the exported files, and their checksums.

Written last, atomically, once every file has passed its parity check, so its presence (with
matching checksums) means "exported"; :func:`is_exported` is what a stage checks to skip a run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kd_modules.dataio import read_json, write_json_atomic

EXPORT_JSON = "export.json"
FORMAT_VERSION = 1


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    """``{"sha256", "bytes"}`` of one exported file."""
    return {"sha256": sha256(path), "bytes": path.stat().st_size}


def io_spec(output_name: str, output_size: int) -> dict:
    """The graphs' inputs and output: names, dtypes and shapes (symbolic axes as names)."""
    return {
        "inputs": [
            {
                "name": "wavs",
                "dtype": "float32",
                "shape": ["batch", "samples"],
                "meaning": "mono waveforms, zero-padded at the end to the longest",
            },
            {
                "name": "lengths",
                "dtype": "int64",
                "shape": ["batch"],
                "meaning": "each waveform's number of samples before padding",
            },
        ],
        "outputs": [{"name": output_name, "dtype": "float32", "shape": ["batch", output_size]}],
    }


def write_export_json(folder: Path, files: dict[str, Path], fields: dict) -> dict:
    """Write ``folder/export.json``: ``fields`` plus ``files`` (role -> path in ``folder``) with
    each file's name, SHA-256 and size; return what was written."""
    record = {
        "format_version": FORMAT_VERSION,
        **fields,
        "files": {role: {"name": path.name, **file_entry(path)} for role, path in files.items()},
    }
    write_json_atomic(folder / EXPORT_JSON, record)
    return record


def read_export_json(folder: Path) -> dict | None:
    """``folder/export.json``, or None when absent."""
    path = folder / EXPORT_JSON
    return read_json(path) if path.is_file() else None


def is_exported(folder: Path, roles: set[str], checkpoint: str) -> bool:
    """Whether ``folder`` holds a finished export of ``checkpoint`` with (at least) the files
    ``roles`` (e.g. ``{"torchscript", "onnx", "onnx_int8"}``), each unchanged since written."""
    record = read_export_json(folder)
    if record is None or record.get("checkpoint") != checkpoint:
        return False
    files = record.get("files", {})
    if not roles <= set(files):
        return False
    for entry in files.values():
        path = folder / entry["name"]
        if not path.is_file() or sha256(path) != entry["sha256"]:
            return False
    return True
