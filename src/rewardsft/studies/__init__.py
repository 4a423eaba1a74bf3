"""``rewardsft study``: does reward learning get more out of *your* demonstrations than SFT tuned as carefully?

:func:`run_study` tunes each method's learning rate on a dev part of the held-out data with the same number of
tries, trains the chosen settings over seeds, adds a budget-matched SFT control for every method that starts from
the SFT model, and gives paired verdicts on a test part no choice was made on (docs/study.md).
"""

from rewardsft.studies.runner import StudySettings, run_study
from rewardsft.studies.split import DataSpec

__all__ = ["DataSpec", "StudySettings", "run_study"]
