"""Reading and writing policy files: JSON text in, JSON text out, every failure a `PolicyError`.

Reading never lets a raw `OSError`, `UnicodeDecodeError` or `json.JSONDecodeError` escape: a
truncated or non-JSON file is refused with the line and column where parsing stopped. Writing is
atomic (a temporary file in the same folder, then `os.replace`), so a reader never sees half a
policy.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from policies.errors import PolicyError

__all__ = ["parse_json", "read_json", "write_json_atomic"]

_READ_FIX = (
    "check the path, or write the policy with "
    "`sencache-calibrate export --db <store> --out <policy.json>`"
)


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value stored at `path`; `PolicyError` naming the file for every failure."""
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{where}: no such policy file. Fix: {_READ_FIX}.") from None
    except IsADirectoryError:
        raise PolicyError(f"{where}: is a folder, not a policy file. Fix: {_READ_FIX}.") from None
    except OSError as exc:
        raise PolicyError(f"{where}: cannot read the policy file ({exc.strerror or exc}). "
                          f"Fix: {_READ_FIX}.") from None
    try:
        body = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"{where}: not a policy file: byte {exc.start} is not UTF-8 text "
            f"(a policy is a JSON text file). Fix: {_READ_FIX}."
        ) from None
    return parse_json(body, where)


def parse_json(body: str, source: str = "<json>") -> Any:
    """The JSON value in `body`; `PolicyError` with the line and column where parsing stopped."""
    if not body.strip():
        raise PolicyError(f"{source}: the policy is empty. Fix: {_READ_FIX}.")
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        cut = exc.pos >= len(body.rstrip()) or exc.msg.startswith("Unterminated string")
        hint = " (the text looks truncated)" if cut else ""
        msg = exc.msg.removesuffix(" at")
        raise PolicyError(
            f"{source}: not valid JSON: {msg} at line {exc.lineno}, column {exc.colno}{hint}. "
            "Fix: repair the JSON or re-export the policy with "
            "`sencache-calibrate export --db <store> --out <policy.json>`."
        ) from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise PolicyError(f"{source}: not a usable JSON text ({exc}). Fix: {_READ_FIX}.") from None
    except RecursionError:
        raise PolicyError(
            f"{source}: the JSON is nested too deeply to be a policy. Fix: {_READ_FIX}."
        ) from None


def write_json_atomic(path: str | os.PathLike, value: Any) -> Path:
    """Write `value` as indented JSON to `path` atomically; create the parent folder if needed."""
    target = Path(path)
    try:
        text = json.dumps(value, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{target}: the policy is not JSON-serialisable ({exc}).") from None
    tmp_name = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.fchmod(fd, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        tmp_name = None
    except OSError as exc:
        raise PolicyError(
            f"{target}: cannot write the policy file ({exc.strerror or exc}). "
            "Fix: choose a writable path with `--out`."
        ) from None
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return target
