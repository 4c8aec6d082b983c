"""The schedule file (`datasets_spec/schedules.yaml`): which flow runs when, with which
parameters. Read by `nexus-gen serve` and mirrored by `prefect.yaml`'s deployments. Everything is
checked before anything is served: an unknown key or flow, a bad cron string or timezone, an
unknown, missing or mistyped parameter, an unknown placeholder in a path, a recipe that does not
load: one error naming the file, the deployment and the problem.

    timezone: UTC                 # default for every entry
    deployments:
      - name: nightly-build       # the Prefect deployment name
        flow: scheduled-build     # scheduled-build | scheduled-benchmark | build-and-publish
        cron: "0 2 * * *"         # or interval: SECONDS
        parameters: {recipe: demo, out: "runs/nightly/demo-{date}"}
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SPEC_FILE = Path(__file__).resolve().parents[1] / "datasets_spec" / "schedules.yaml"
NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class ScheduleError(ValueError):
    """The schedule file is wrong; the message names the file, the entry and the problem."""


class Entry(BaseModel):
    """One scheduled deployment."""

    model_config = ConfigDict(extra="forbid")
    name: str
    flow: str
    cron: Optional[str] = None
    interval: Optional[float] = Field(default=None, gt=0)
    timezone: Optional[str] = None
    description: Optional[str] = None
    tags: list[str] = Field(default_factory=list)
    paused: bool = False
    parameters: dict[str, Any] = Field(default_factory=dict)


class SpecFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timezone: str = "UTC"
    deployments: list[Entry]


def _flows() -> dict[str, Any]:
    from flows.scheduled import SCHEDULED_FLOWS

    return SCHEDULED_FLOWS


def _check_schedule(where: str, e: Entry, timezone: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    if (e.cron is None) == (e.interval is None):
        raise ScheduleError(f"{where}: give exactly one of cron or interval")
    try:
        if e.cron is not None:
            CronSchedule(cron=e.cron, timezone=e.timezone or timezone)
        else:
            from prefect.client.schemas.schedules import IntervalSchedule

            IntervalSchedule(interval=e.interval, timezone=e.timezone or timezone)
    except ValidationError as exc:
        msgs = "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors())
        raise ScheduleError(f"{where}: {msgs}") from None


def _check_call(where: str, flow: Any, params: dict[str, Any], label: str, given: tuple[str, ...] = ()) -> None:
    """`params` fit `flow`'s signature (names, required ones, types); `given` are supplied by
    the caller (not by the file)."""
    import inspect

    sig = inspect.signature(flow.fn)
    names = [n for n in sig.parameters if n not in given]
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ScheduleError(f"{where}: unknown parameter {unknown[0]!r} for {label}; "
                            f"its parameters: {', '.join(names)}")
    missing = [n for n in names if sig.parameters[n].default is inspect.Parameter.empty and n not in params]
    if missing:
        raise ScheduleError(f"{where}: {label} needs parameter {missing[0]!r}")
    quiet = logging.getLogger("prefect.flows")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # it logs every failed validation as an ERROR with a traceback
    try:
        flow.validate_parameters({**params, **{n: "x" for n in given}})
    except Exception as exc:  # prefect's ParameterTypeError: pydantic's message
        msg = " ".join(str(exc).replace("Flow run received invalid parameters:", "").split())
        raise ScheduleError(f"{where}: parameters do not fit {label}: {msg}") from None
    finally:
        quiet.setLevel(level)


def _check_parameters(where: str, e: Entry, flow: Any, base: Path) -> None:
    from flows.scheduled import placeholder_problem

    _check_call(where, flow, e.parameters, f"flow {e.flow}")
    if e.flow == "build-and-publish":  # its `publish` parameters are the publishing flow's
        from flows.publish import publish_flow

        _check_call(where, publish_flow, dict(e.parameters.get("publish") or {}),
                    "publish (flows.publish.publish_flow)", given=("run_dir",))
    out = e.parameters.get("out")
    if isinstance(out, str) and (problem := placeholder_problem(out)):
        raise ScheduleError(f"{where}: parameter out {problem}")
    if "recipe" in e.parameters:
        from nexus_gen.edit.recipe import RecipeError, load_recipe

        recipe = str(e.parameters["recipe"])
        try:
            load_recipe(recipe if Path(recipe).is_absolute() or not (base / recipe).is_file()
                        else base / recipe)
        except RecipeError as exc:
            raise ScheduleError(f"{where}: parameter recipe: {exc}") from None


def load_schedules(path: Union[str, Path, None] = None, base: Optional[Path] = None) -> list[Entry]:
    """The checked entries of a schedule file (default: the shipped one). Relative recipe files
    are looked up under `base` (default: the current folder)."""
    path = Path(path) if path is not None else SPEC_FILE
    base = base or Path.cwd()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScheduleError(f"{path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ScheduleError(f"{path} is not valid YAML: {exc}") from None
    try:
        spec = SpecFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ScheduleError(f"{path}: {loc}: {err['msg']}") from None
    flows = _flows()
    seen: set[str] = set()
    for i, e in enumerate(spec.deployments):
        where = f"{path}: deployments[{i}] ({e.name})"
        if not NAME.match(e.name):
            raise ScheduleError(f"{where}: name must be lowercase letters, digits and dashes")
        if e.name in seen:
            raise ScheduleError(f"{where}: a second deployment named {e.name!r}")
        seen.add(e.name)
        if e.flow not in flows:
            raise ScheduleError(f"{where}: unknown flow {e.flow!r}; known: {', '.join(flows)}")
        _check_schedule(where, e, spec.timezone)
        _check_parameters(where, e, flows[e.flow], base)
        if e.timezone is None:
            e.timezone = spec.timezone
    return spec.deployments


def to_deployment(e: Entry, interval: Optional[float] = None, base: Optional[Path] = None):
    """The Prefect runner deployment of one entry; `interval` (seconds) replaces its schedule
    (for trying a schedule out). Relative `out` paths become absolute under `base` (default:
    the current folder), so flow runs write where `nexus-gen serve` was started."""
    from prefect.schedules import Cron, Interval

    base = base or Path.cwd()
    params = dict(e.parameters)
    if isinstance(params.get("out"), str) and not Path(params["out"]).is_absolute():
        params["out"] = str(base / params["out"])
    recipe = params.get("recipe")
    if isinstance(recipe, str) and not Path(recipe).is_absolute() and (base / recipe).is_file():
        params["recipe"] = str(base / recipe)
    if interval is not None:
        schedule = Interval(interval, timezone=e.timezone)
    elif e.cron is not None:
        schedule = Cron(e.cron, timezone=e.timezone)
    else:
        schedule = Interval(e.interval, timezone=e.timezone)
    return _flows()[e.flow].to_deployment(name=e.name, schedules=[schedule], parameters=params,
                                          description=e.description, tags=e.tags or None,
                                          paused=e.paused)
