"""Model cards with the Hub's YAML metadata for ``final/`` and ``reward_model/``.

Written when a run saves them (so a pushed folder is found and filtered by the Hub's own tools) and rewritten by
``rewardsft report`` with the evaluation results. The metadata follows the Hub's model-card fields:
``base_model`` and ``datasets`` only when they are Hub ids (a local path would not validate on the Hub; it is
stated in the body instead), ``library_name: transformers`` (the folders load with ``from_pretrained``), tags naming
rewardsft and the method, and ``license`` when the base model's own card declares one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

Kind = Literal["policy", "reward_model"]
METHOD_NAMES = {
    "sft": "supervised fine-tuning",
    "irft": "IRFT (implicit reward, Algorithm 2 of arXiv 2405.17888)",
    "rft": "RFT (explicit reward model, Algorithm 1 of arXiv 2405.17888)",
}
# owner/name with the Hub's allowed characters; anything that exists on disk is a local path instead.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub repository id and is not a local path, else None."""
    if not name or Path(name).exists() or not HUB_ID.match(name):
        return None
    return name


def method_tags(config: dict[str, Any]) -> list[str]:
    """``sft``; ``irft`` (plus ``spin`` when T = 1); ``rft``."""
    method = str(config.get("method", ""))
    tags = [method]
    if method == "irft" and (config.get("irft") or {}).get("stages") == 1:
        tags.append("spin")
    return tags


def base_license(name: str | None) -> str | None:
    """The ``license`` of a local base model's own card, when it has one."""
    if not name or not (Path(name) / "README.md").is_file():
        return None
    meta = front_matter((Path(name) / "README.md").read_text(encoding="utf-8", errors="replace"))
    value = meta.get("license")
    return str(value) if value else None


def front_matter(text: str) -> dict[str, Any]:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    if not match:
        return {}
    try:
        loaded = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def card_metadata(config: dict[str, Any], kind: Kind = "policy") -> dict[str, Any]:
    """The YAML header of a run's model card (``config`` as in the run's ``config.yaml``)."""
    base = (config.get("model") or {}).get("name_or_path")
    data = (config.get("data") or {}).get("path")
    tags = ["rewardsft", *method_tags(config), *(["reward-model"] if kind == "reward_model" else [])]
    meta: dict[str, Any] = {"library_name": "transformers", "tags": tags}
    meta["pipeline_tag"] = "text-classification" if kind == "reward_model" else "text-generation"
    if hub_id(base):
        meta["base_model"] = base
    if hub_id(data):
        meta["datasets"] = [data]
    license_name = base_license(base)
    if license_name:
        meta["license"] = license_name
    return meta


def model_card(config: dict[str, Any], name: str, evals: Sequence[str] = (), kind: Kind = "policy") -> str:
    """The card: Hub metadata, what the model is, how it was trained (settings) and its evaluation results."""
    method = str(config.get("method", "?"))
    model, data = config.get("model") or {}, config.get("data") or {}
    settings = {"optim": config.get("optim"), "train": config.get("train"), "lora": config.get("lora")}
    if method in ("irft", "rft"):
        settings[method] = config.get(method)
    if kind == "reward_model":
        settings["reward_model"] = config.get("reward_model")
    what = (
        "The reward model learned by RFT from the demonstrations against the policy's own samples "
        "(`AutoModelForSequenceClassification`, one score per sequence)."
        if kind == "reward_model"
        else f"Trained with rewardsft: {METHOD_NAMES.get(method, method)}."
    )
    return "\n".join(
        [
            "---",
            yaml.safe_dump(card_metadata(config, kind), sort_keys=False).rstrip(),
            "---",
            "",
            f"# {name}" + (" (reward model)" if kind == "reward_model" else ""),
            "",
            what,
            "",
            f"- base model: `{model.get('name_or_path')}`",
            f"- data: `{data.get('path')}` (split `{data.get('split')}`)",
            f"- seed: {config.get('seed')}",
            "",
            "## Settings",
            "",
            "```yaml",
            yaml.safe_dump(settings, sort_keys=False).rstrip(),
            "```",
            "",
            "## Evaluation",
            "",
            *([f"- {e}" for e in evals] or ["- none recorded yet (`rewardsft eval ... --out RUN/eval/NAME`)"]),
            "",
        ]
    )


def write_model_card(folder: Path, config: dict[str, Any], name: str, kind: Kind = "policy") -> None:
    (folder / "README.md").write_text(model_card(config, name, kind=kind), encoding="utf-8")
