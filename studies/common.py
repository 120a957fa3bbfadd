"""What every study shares: its params section, report files (CSV + Markdown tables made
with pandas, PNG plots, all written atomically) and its own MLflow experiment."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.config import PARAMS, Params, as_given, build, set_key
from pipeline.errors import UserError

REPORTS = Path("reports")


STUDIES = ("hello", "vanishing", "bptt", "variants", "captioning", "generators", "tasks")  # the sections studies.<name>


def check_study_names(studies: dict) -> None:
    """Every key of `studies:` and of each preset names a study (or is preset/presets): a
    misspelled section would otherwise be ignored and the default sizes run."""
    known = ", ".join(STUDIES)
    for key in studies:
        if key not in (*STUDIES, "preset", "presets"):
            raise UserError(f"{PARAMS}: studies.{key}: unknown study (known: {known}; and preset, presets); fix the spelling or remove it")
    presets = studies.get("presets") or {}
    for preset, over in presets.items() if isinstance(presets, dict) else ():
        for key in over or {} if isinstance(over, dict) else ():
            if key not in STUDIES:
                raise UserError(f"{PARAMS}: studies.presets.{preset}.{key}: unknown study (known: {known}); fix the spelling or remove it")


def check_report_dir(out_dir) -> None:
    """A study replaces its report folder whole: a folder that holds anything but an earlier
    report (no result.json: a project's folder, reports/ itself) is refused, not emptied."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: not a folder; give the report's folder (a new one, or an earlier report)")
    if out.is_dir() and any(out.iterdir()) and not (out / "result.json").is_file():
        raise UserError(f"--out {out}: holds files that are no study's report (no result.json), and a report replaces its "
                        "folder whole; give a new or empty folder, or an earlier report's")


def preset_section(params: Params, name: str) -> dict:
    """params.yaml `studies.<name>` with `studies.preset` overlaid, then the user's own overrides
    of it (--set studies.<name>.key=...) again on top: a value given explicitly wins over the
    preset's, as it does for the training presets. An unknown preset is a UserError (a typo
    would otherwise run the default sizes)."""
    studies = params.raw.get("studies") or {}
    if not isinstance(studies, dict):
        raise UserError(f"{PARAMS}: studies: must map study names to their settings")
    check_study_names(studies)
    raw = dict(studies.get(name) or {})
    preset = studies.get("preset") or "default"
    if preset != "default":
        presets = studies.get("presets") or {}
        if not isinstance(presets, dict) or not isinstance(preset, str) or preset not in presets:
            names = ", ".join(map(str, presets)) if isinstance(presets, dict) else "none"
            raise UserError(f"studies.preset: unknown preset {preset!r}; choose default or one of studies.presets ({names or 'none'})")
        over = presets[preset] or {}
        if not isinstance(over, dict) or not isinstance(over.get(name) or {}, dict):
            raise UserError(f"studies.presets.{preset}: must map study names to their settings, e.g. {{{name}: {{...}}}}")
        raw.update(over.get(name) or {})
        given: dict = {}
        for key, value in params.overrides.items():
            set_key(given, key, value)
        mine = (given.get("studies") or {}).get(name) if isinstance(given.get("studies"), dict) else None
        for key, value in (mine or {}).items() if isinstance(mine, dict) else ():
            set_key(raw, str(key), value)
    return raw


def study_params(params: Params, name: str, cls):
    """params.yaml `studies.<name>` (with `studies.preset` overlaid) as dataclass `cls`. A bad
    value the user gave with --set is named as given (`--set studies.hello.steps: ...`)."""
    try:
        return build(cls, preset_section(params, name), f"studies.{name}")
    except UserError as e:
        given = as_given(str(e), params.overrides)
        if given:
            raise UserError(given) from None
        raise


class Repeated:
    """For a study's params dataclass with `seed` and `repeats`: every run is trained from
    each of the seeds seed, seed + 1, ..., seed + repeats - 1."""

    seed: int
    repeats: int

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.repeats)]


def at_least(obj, path: str, keys: tuple[str, ...], low: int = 1) -> None:
    """Each of `keys` (integers) must be >= `low`: one line naming the param otherwise."""
    for key in keys:
        v = getattr(obj, key)
        if v < low:
            raise UserError(f"{PARAMS}: {path}.{key}: must be >= {low}, got {v!r}; set it to {low} or more")


def above_zero(obj, path: str, keys: tuple[str, ...]) -> None:
    """Each of `keys` (numbers) must be > 0: one line naming the param otherwise."""
    for key in keys:
        v = getattr(obj, key)
        if not v > 0:
            raise UserError(f"{PARAMS}: {path}.{key}: must be > 0, got {v!r}; set a positive value")


def distinct(obj, path: str, keys: tuple[str, ...]) -> None:
    """Each of `keys` (lists) names each entry once: one line naming the repeats otherwise."""
    for key in keys:
        values = list(getattr(obj, key))
        twice = sorted({x for x in values if values.count(x) > 1})
        if twice:
            raise UserError(f"{PARAMS}: {path}.{key}: {twice} listed twice; list each once")


def ordered(obj, path: str, low: str, high: str) -> None:
    """Range bounds: `low` <= `high`."""
    if getattr(obj, low) > getattr(obj, high):
        raise UserError(f"{PARAMS}: {path}.{low}: {getattr(obj, low)!r} is above {path}.{high}={getattr(obj, high)!r}; "
                        f"make {low} <= {high}")


def write_table(df: pd.DataFrame, out_dir: Path, name: str, floatfmt: str = ".4g") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=False)
    write_text(out_dir / f"{name}.md", df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
    return out_dir / f"{name}.md"


def save_png(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_study(params: Params, study: str, run_name: str, cfg, metrics: dict, files: list[Path], tags: dict | None = None) -> str | None:
    """One MLflow run in experiment `study-<study>` with params, metrics and report files."""
    if not params.tracking.enabled:
        return None
    from pipeline import tracking

    uri = tracking.tracking_uri(params)
    flat = tracking.flatten(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg))
    run_id = tracking.start_run(uri, f"study-{study}", run_name, flat, {"study": study, **(tags or {}), **tracking.system_facts()}, source=f"studies.{study}")
    tracking.log_artifacts(uri, run_id, files, {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    tracking.end_run(uri, run_id)
    return run_id


def write_result(out_dir: Path, result: dict) -> Path:
    write_json(out_dir / "result.json", result)
    return out_dir / "result.json"


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
