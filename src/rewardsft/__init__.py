"""rewardsft: fine-tune language models from demonstrations with reward learning (arXiv 2405.17888)."""

__version__ = "0.1.0"
