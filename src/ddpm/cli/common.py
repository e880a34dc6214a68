"""Shared pieces of the console entry points: where the configs live, one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

__all__ = ["CONF_DIR", "check_group_overrides", "fail", "find_conf_dir"]


def find_conf_dir() -> Path:
    """The ``conf/`` folder: the repository's (editable install) or the copy shipped in the wheel."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"ddpm-lab's conf/ folder was not found near {here}")


CONF_DIR = find_conf_dir()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error to stderr and exit."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _options(group: str) -> list[str] | None:
    folder = CONF_DIR / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml"))


def check_group_overrides(argv: list[str]) -> None:
    """Reject ``group=option`` overrides whose option does not exist, naming the group and the choices.

    Hydra would also refuse them, but with a multi-line message; this keeps it to one line. Sweeps
    (``schedule=linear,cosine``) are checked option by option.
    """
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if "." in key or key.startswith("hydra/") or not value or "(" in value:
            continue
        options = _options(key)
        if options is None:
            continue
        for choice in value.split(","):
            if choice in ("null", "none") and choice not in options:
                continue
            if choice not in options:
                fail(
                    f"{key}={choice} is not an option of config group '{key}'; "
                    f"choose one of {', '.join(options)}"
                )
