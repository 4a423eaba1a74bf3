"""rewardsft: fine-tune language models from demonstrations with reward learning (arXiv 2405.17888).

The stable Python API is what ``__all__`` lists (see docs/python.md); every other module is internal::

    import rewardsft
    result = rewardsft.train("irft", model={"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                             data={"path": "demos.jsonl"}, irft={"stages": 2}, output_dir="runs/irft")
    rewardsft.evaluate_gap(result.final_dir, "pairs.jsonl")
"""

from rewardsft._version import __version__
from rewardsft.api import (
    RewardModel,
    RunResult,
    audit,
    compare,
    evaluate_gap,
    human_likeness,
    load_config,
    report,
    study,
    train,
    win_rate,
)
from rewardsft.config import IRFTConfig, RFTConfig, RunConfig, SFTConfig
from rewardsft.errors import ConfigError

__all__ = [
    "ConfigError",
    "IRFTConfig",
    "RFTConfig",
    "RewardModel",
    "RunConfig",
    "RunResult",
    "SFTConfig",
    "__version__",
    "audit",
    "compare",
    "evaluate_gap",
    "human_likeness",
    "load_config",
    "report",
    "study",
    "train",
    "win_rate",
]
