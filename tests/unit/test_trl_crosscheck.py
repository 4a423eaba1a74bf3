"""Cross-check: our sigmoid IRFT loss and implicit rewards equal TRL 1.16's DPOTrainer in fp32.

chosen = demonstration, rejected = generation, TRL's reference model = our snapshot. Token ids are taken
from TRL's own collated batch so both sides score exactly the same sequences; we also check that our
tokenisation of the same text gives those ids.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from rewardsft.data import Example, Renderer, TokenizedExample, tokenize_examples
from rewardsft.losses import irft_loss
from rewardsft.reference import CopySnapshot, Pair, pair_batch, split_logps
from rewardsft.tiny import tiny_model

trl = pytest.importorskip("trl", minversion="1.16")

ROWS = [
    ("What is the capital of Peru?", " The capital of Peru is Lima.", " Lima is a city."),
    ("What is the opposite of hot?", " The opposite of hot is cold.", " hot hot hot"),
    ("Hello! How can I help you today?", " What is two plus two?", " I do not know the answer."),
]


def test_sigmoid_loss_and_rewards_match_trl_dpo(plain_tokenizer: Any, tmp_path: Path) -> None:
    from datasets import Dataset

    tokenizer = plain_tokenizer
    torch.manual_seed(0)
    ref = tiny_model(tokenizer, arch="llama", hidden_size=32, seed=1)
    policy = copy.deepcopy(ref)
    with torch.no_grad():  # make the policy differ from the reference so rewards are not zero
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))

    args = trl.DPOConfig(
        output_dir=str(tmp_path),
        beta=0.1,
        loss_type=["sigmoid"],
        per_device_eval_batch_size=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=None,
        dataset_num_proc=None,
    )
    data = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in ROWS])
    trainer = trl.DPOTrainer(
        model=policy, ref_model=ref, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer
    )
    trainer.model.eval()

    ours, _ = tokenize_examples([Example(p, c, r) for p, c, r in ROWS], Renderer(tokenizer), 256, 128)
    snapshot = CopySnapshot(ref)
    for row, inputs in enumerate(trainer.get_eval_dataloader()):
        trainer._metrics["eval"].clear()
        with torch.no_grad():
            trl_loss = float(trainer.compute_loss(trainer.model, inputs))
        metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}

        ids, completion = inputs["input_ids"], inputs["completion_mask"]
        demo_ids = ids[0][inputs["attention_mask"][0].bool()].tolist()
        gen_ids = ids[1][inputs["attention_mask"][1].bool()].tolist()
        prompt_len = int((completion[0] == 0).sum() - (inputs["attention_mask"][0] == 0).sum())
        demo = TokenizedExample(demo_ids[:prompt_len], demo_ids[prompt_len:])
        gen = TokenizedExample(gen_ids[:prompt_len], gen_ids[prompt_len:])
        assert demo.input_ids == ours[row].input_ids and demo.prompt_ids == ours[row].prompt_ids

        batch = pair_batch([Pair(demo, gen)], tokenizer.pad_token_id, torch.device("cpu"))
        with torch.no_grad():
            policy_demo, policy_gen = split_logps(policy.eval(), batch)
        ref_demo, ref_gen = snapshot.logps([0], [Pair(demo, gen)], tokenizer.pad_token_id, torch.device("cpu"))
        terms = irft_loss(policy_demo, policy_gen, ref_demo, ref_gen, beta=0.1)
        assert float(terms.loss.mean()) == pytest.approx(trl_loss, abs=1e-5)
        assert float(terms.demo_reward[0]) == pytest.approx(metrics["rewards/chosen"], abs=1e-5)
        assert float(terms.gen_reward[0]) == pytest.approx(metrics["rewards/rejected"], abs=1e-5)
        assert float(terms.margin[0]) == pytest.approx(metrics["rewards/margins"], abs=1e-5)
        assert float(policy_demo[0]) == pytest.approx(metrics["logps/chosen"], abs=1e-4)
        assert float(policy_gen[0]) == pytest.approx(metrics["logps/rejected"], abs=1e-4)
    assert row == len(ROWS) - 1
