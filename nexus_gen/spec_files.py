"""Declarative YAML files of `datasets_spec/` (recipes, filter policies) found by path or by name."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union


def load_spec_yaml(path_or_name: Union[str, Path], folder: Path, what: str,
                   error: type[Exception]) -> tuple[Any, Path]:
    """Parsed YAML of a file, or of `folder/<name>.yaml` for a bare name; `error(message)` names
    the file and lists the built-in names when nothing is there, or says the YAML is invalid."""
    import yaml

    p = Path(path_or_name)
    if not p.suffix and not p.exists():
        p = folder / f"{path_or_name}.yaml"
    if not p.is_file():
        avail = sorted(x.stem for x in folder.glob("*.yaml"))
        raise error(f"no {what} at {p} (built-in {what}s: {', '.join(avail)})")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8")), p
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(f"{p}: not valid YAML: {exc}") from None
