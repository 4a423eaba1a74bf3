"""A run folder's layout, named once: what ``rewardsft train`` writes and what evaluation and the report read.

::

    RUN/config.yaml          the resolved config (read back to render prompts exactly as the run trained)
    RUN/run.json             processes, device, library versions
    RUN/metrics.jsonl        one JSON object per logged step
    RUN/checkpoints/step-N/  resumable state (see training/checkpoint.py)
    RUN/stages/stage-t/      IRFT: generations.jsonl, stats.json, snapshot log-prob caches
    RUN/final/               the policy, loadable with from_pretrained
    RUN/adapter/             LoRA runs whose base is unchanged: the adapter alone (base + adapter == final/)
    RUN/reward_model/        RFT: the reward model, loadable with AutoModelForSequenceClassification
    RUN/eval/NAME/summary.json  evaluation results (per-example files beside them)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from rewardsft.config import RunConfig, config_from_dict
from rewardsft.config.schema import SFT_PHASE_FOLDER
from rewardsft.data.tokenize import RenderSettings
from rewardsft.errors import ConfigError

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
STAGES = "stages"
GENERATIONS_FILE = "generations.jsonl"
FINAL = "final"
SFT_PHASE_DIR = SFT_PHASE_FOLDER
"""A run's SFT phase (``sft_phase.epochs`` > 0), an SFT run of its own inside the IRFT or RFT run's folder (its
name comes from the config schema, which builds the phase's config and sits below this module)."""
ADAPTER = "adapter"
REWARD_MODEL = "reward_model"
REWARD_ADAPTER = "reward_adapter"
"""A checkpoint's reward model when it trains with LoRA: its adapter and head (resumable)."""
EVAL = "eval"
SUMMARY_FILE = "summary.json"


def stage_dir(run_dir: Path, stage_name: str) -> Path:
    return run_dir / STAGES / stage_name


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def run_of(model_path: str | Path) -> Path | None:
    """The run a model folder belongs to: the folder itself when it is a run, its parent for ``final/`` or
    ``reward_model/``; None for anything else (a hub id, a plain model folder)."""
    path = Path(model_path)
    if is_run_dir(path):
        return path
    if path.name in (FINAL, REWARD_MODEL) and is_run_dir(path.parent):
        return path.parent
    return None


def run_config(run_dir: Path) -> RunConfig:
    """The settings a run trained with (its ``config.yaml``, every setting filled in), of its method's type."""
    path = run_dir / CONFIG_FILE
    try:
        return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError, TypeError) as err:
        raise ConfigError(f"{path}: cannot read the run's config ({err})") from None


def run_render_settings(run_dir: Path) -> RenderSettings:
    """How the run rendered its prompts and responses (its ``config.yaml``'s ``data`` section)."""
    return render_settings(run_config(run_dir).data)


def render_settings(data: Any) -> RenderSettings:
    """The rendering keys of a ``data`` config section (:class:`rewardsft.config.DataConfig`), the one mapping."""
    return RenderSettings(**{f.name: getattr(data, f.name) for f in fields(RenderSettings)})


@dataclass(frozen=True)
class Rendering:
    """Where to load a model for evaluation and how to render prompts for it."""

    path: str
    settings: RenderSettings


def rendering_for(model_path: str | Path, **flags: Any) -> Rendering:
    """One model's :class:`Rendering` (see :func:`renderings_for`)."""
    return renderings_for([model_path], **flags)[0]


def renderings_for(model_paths: Sequence[str | Path], **flags: Any) -> list[Rendering]:
    """How each model of one evaluation renders its prompts.

    A run (its folder, ``final/`` or ``reward_model/``) renders exactly as it trained, from its
    ``config.yaml``, so evaluation sees the prompt ids training saw; a run folder stands for its ``final/``.
    Any other model (a hub id, a plain folder) takes the flags that are not None; without flags it renders like
    the first run among ``model_paths`` (so a base model compared with a run sees the run's prompts), else with
    the :class:`RenderSettings` defaults. Flags that no model would use (every model is a run) are refused.
    """
    given = {key: value for key, value in flags.items() if value is not None}
    runs = [run_of(path) for path in model_paths]
    if given and all(run is not None for run in runs):
        names = ", ".join("--" + key.replace("_", "-") for key in given)
        raise ConfigError(
            f"{model_paths[0]} belongs to the run {runs[0]}, which renders prompts exactly as it trained "
            f"({runs[0] / CONFIG_FILE if runs[0] else CONFIG_FILE}); drop {names}"
        )
    first_run = next((run for run in runs if run is not None), None)
    default = RenderSettings(**given) if given or first_run is None else run_render_settings(first_run)
    out = []
    for path, run in zip(model_paths, runs, strict=True):
        if run is None:
            out.append(Rendering(str(path), default))
        else:
            model = run / FINAL if Path(path) == run else Path(path)
            out.append(Rendering(str(model), run_render_settings(run)))
    return out
