"""The recipes' step components, apart from their loops: SFT's micro-step (``sft``), IRFT's pair loss and pair
backwards (``pairs``) and stages (``stages``), RFT's rollout, reward step and policy step (``rollout``). A recipe
in :mod:`rewardsft.recipes` wires them together; tests and benchmarks import them from here."""
