"""``rewardsft audit``: rank a demonstration file's rows by the reward learned from the other rows (docs/audit.md).

:mod:`rewardsft.audits.folds` holds the pure parts (folds, standardisation, flagging); :mod:`rewardsft.audits.runner`
trains one reward per fold through the recipes and scores the held-out fold; :mod:`rewardsft.audits.report` writes
what the user reads.
"""
