"""IRFT pieces: the three losses by hand, generation, and the three snapshot modes agreeing."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rewardsft.config import GenerationConfig
from rewardsft.data import Example, Renderer, TokenizedExample, tokenize_examples
from rewardsft.generation import Generation, cut_at_eos, generate, generation_stats
from rewardsft.losses import IRFTLoss, irft_loss
from rewardsft.reference import (
    CachedSnapshot,
    CopySnapshot,
    LoraBaseSnapshot,
    Pair,
    compute_ref_logps,
    merge_lora_into_base,
    pair_batch,
    split_logps,
)
from rewardsft.tiny import tiny_model

# Two pairs: policy/ref log-probs of demo and generation, β = 0.5.
POLICY_DEMO, POLICY_GEN = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
REF_DEMO, REF_GEN = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -1.0])
# u = β[(pd − pg) − (rd − rg)]: pair 1: 0.5·[(2) − (0)] = 1.0; pair 2: 0.5·[(−1) − (−4)] = 1.5
MARGINS = [1.0, 1.5]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("sigmoid", [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(-1.5))]),
        ("hinge", [0.0, 0.0]),
        ("linear", [-1.0, -1.5]),
    ],
)
def test_irft_losses_by_hand(kind: str, expected: list[float]) -> None:
    terms = irft_loss(POLICY_DEMO, POLICY_GEN, REF_DEMO, REF_GEN, beta=0.5, kind=IRFTLoss(kind))
    assert terms.loss.tolist() == pytest.approx(expected)
    assert terms.margin.tolist() == pytest.approx(MARGINS)
    assert terms.demo_reward.tolist() == pytest.approx([0.5, 0.5])  # β·(pd − rd)
    assert terms.gen_reward.tolist() == pytest.approx([-0.5, -1.0])  # β·(pg − rg)


def test_hinge_is_active_below_margin_one_and_gradients_point_the_right_way() -> None:
    demo = torch.tensor([-5.0], requires_grad=True)
    gen = torch.tensor([-5.0], requires_grad=True)
    terms = irft_loss(demo, gen, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1, kind=IRFTLoss.HINGE)
    assert terms.loss.item() == pytest.approx(1.0)
    terms.loss.sum().backward()
    assert demo.grad is not None and gen.grad is not None
    assert demo.grad.item() == pytest.approx(-0.1) and gen.grad.item() == pytest.approx(0.1)
    # At u = 0 the sigmoid loss is log 2 with slope β/2 (the SPIN / DPO starting point).
    demo.grad = gen.grad = None
    irft_loss(demo, gen, demo.detach(), gen.detach(), beta=0.1).loss.sum().backward()
    assert demo.grad.item() == pytest.approx(-0.05)


def test_cut_at_eos_and_stats() -> None:
    assert cut_at_eos([5, 6, 2, 0, 0], [2]) == Generation([5, 6, 2], stopped=True)
    assert cut_at_eos([5, 6, 7], [2]) == Generation([5, 6, 7], stopped=False)
    stats = generation_stats([Generation([5, 2], True), Generation([7, 7, 7], False)], [[5, 2], [1, 2]])
    assert stats == {
        "gen/mean_length": 2.5,
        "gen/identical_share": 0.5,
        "gen/max_tokens_share": 0.5,
        "gen/empty_share": 0.0,
    }
    empty = generation_stats([Generation([2], True), Generation([4, 2], True), Generation([], False)], [[1]] * 3)
    assert empty["gen/empty_share"] == pytest.approx(1 / 3)  # only the one that ended its turn at once


@pytest.fixture(scope="module")
def prompts(tokenizer: Any) -> list[list[int]]:
    examples = [
        Example([{"role": "user", "content": q}], "x")
        for q in ["What is the capital of Peru?", "Hi", "What is the opposite of hot? Tell me now."]
    ]
    tokenized, _ = tokenize_examples(examples, Renderer(tokenizer), 64, 48)
    return [ex.prompt_ids for ex in tokenized]


def test_batched_left_padded_generation_equals_one_at_a_time(tokenizer: Any, prompts: list[list[int]]) -> None:
    model = tiny_model(tokenizer, hidden_size=32)
    greedy = GenerationConfig(max_new_tokens=8, do_sample=False, batch_size=3)
    kwargs = {"pad_id": tokenizer.pad_token_id, "eos_ids": [tokenizer.eos_token_id], "seed": 0}
    batched = generate(model, prompts, greedy, **kwargs)
    for prompt, gen in zip(prompts, batched, strict=True):
        alone = generate(model, [prompt], greedy, **kwargs)[0]
        assert gen == alone
    assert model.training  # train mode restored


def test_sampling_is_seeded_and_leaves_global_rng_alone(tokenizer: Any, prompts: list[list[int]]) -> None:
    model = tiny_model(tokenizer, hidden_size=32).eval()
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, batch_size=2)
    kwargs = {"pad_id": tokenizer.pad_token_id, "eos_ids": [tokenizer.eos_token_id]}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = generate(model, prompts, cfg, seed=1, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    assert generate(model, prompts, cfg, seed=1, **kwargs) == first
    assert generate(model, prompts, cfg, seed=2, **kwargs) != first
    assert not model.training


def make_pairs(tokenizer: Any) -> list[Pair]:
    demos = [
        Example("What is the capital of Peru?", " The capital of Peru is Lima."),
        Example("Hi", " Hello! How can I help you today?"),
        Example("What is one plus two?", " One plus two is three."),
    ]
    gens = [" Lima is big.", " What is the opposite of hot?", " three"]
    tokenized, _ = tokenize_examples(demos, Renderer(tokenizer), 64, 32)
    return [
        Pair(d, TokenizedExample(d.prompt_ids, tokenizer(g, add_special_tokens=False)["input_ids"]))
        for d, g in zip(tokenized, gens, strict=True)
    ]


def trained_lora_model(tokenizer: Any, pairs: list[Pair]) -> Any:
    """A LoRA policy whose adapter is no longer zero (as at the start of stage 2), built as ``train irft``
    builds it from the project's own LoRA settings (lora.dropout 0.05, switched off by train.dropout=false)."""
    from rewardsft.config import load_config
    from rewardsft.models import apply_lora, disable_dropout

    config = load_config(
        "irft", overrides=["lora.enabled=true", "lora.r=4", "lora.target_modules=[q_proj, v_proj, up_proj]"]
    )
    model = apply_lora(tiny_model(tokenizer, hidden_size=32, seed=3), config.lora)
    disable_dropout(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    batch = pair_batch(pairs, tokenizer.pad_token_id, torch.device("cpu"))
    for _ in range(3):
        demo, gen = split_logps(model, batch)
        (-(demo - gen).mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


@pytest.mark.parametrize("shared", [False, True])
def test_three_snapshot_modes_agree(tokenizer: Any, shared: bool) -> None:
    """``shared``: every snapshot reads its pairs through the shared-prefix row (irft.pair_forward=shared)."""
    pairs = make_pairs(tokenizer)
    batch = pair_batch(pairs, tokenizer.pad_token_id, torch.device("cpu"))
    ids = list(range(len(pairs)))
    model = trained_lora_model(tokenizer, pairs)
    with torch.no_grad():
        policy_before = split_logps(model.eval(), batch)
    model.train()

    cached = CachedSnapshot(compute_ref_logps(model, pairs, 2, tokenizer.pad_token_id, shared=shared))
    copied = CopySnapshot(model, shared)
    assert merge_lora_into_base(model) == 2 * 3  # 2 layers x (q, v, up)
    lora = LoraBaseSnapshot(model, shared)
    results = {
        name: snap.logps(ids, pairs, tokenizer.pad_token_id, torch.device("cpu"))
        for name, snap in {"cached": cached, "copy": copied, "lora": lora}.items()
    }
    for name in ("copy", "lora"):
        for got, want in zip(results[name], results["cached"], strict=True):
            assert torch.allclose(got, want, atol=1e-4), name
    # The snapshot is the current policy, not the initial model, and merging did not move the policy; the
    # generations' side is the one a shared-prefix mask error would move.
    assert torch.allclose(policy_before[0], results["cached"][0], atol=1e-4)
    assert torch.allclose(policy_before[1], results["cached"][1], atol=1e-4)
    with torch.no_grad():
        policy_after = split_logps(model.train(), batch)  # train mode, as the training step sees the policy
    assert torch.allclose(policy_after[0], policy_before[0], atol=1e-4)
    # Same first-step loss in all three modes: at the stage start the policy equals the snapshot, u = 0.
    for name, (ref_demo, ref_gen) in results.items():
        terms = irft_loss(policy_after[0], policy_after[1], ref_demo, ref_gen, beta=0.1)
        assert terms.loss.mean().item() == pytest.approx(math.log(2), abs=1e-4), name


def pair_gradients(
    base: Any, pairs: list[Pair], spec: Any, pad_id: int, loss_scale: float | None = None
) -> tuple[list[Any], list[Any]]:
    """Gradients and outputs of the joint, split and shared pair backward from copies of ``base`` (train mode).

    ``loss_scale``: backward through a real fp16 ``GradScaler`` at that scale, installed as accelerate installs it
    on a GPU; the gradients returned are then unscaled (divided by the scale) as the optimiser step would see them.
    """
    import copy

    from accelerate import Accelerator

    from rewardsft.steps.pairs import PAIR_BACKWARDS, PairStep, StepSize
    from rewardsft.training.engine import AccelerateEngine
    from tests.amp import install_scaler

    accelerator = Accelerator(cpu=True)
    if loss_scale is not None:
        install_scaler(accelerator, loss_scale)
    engine = AccelerateEngine(accelerator)
    ref_demo, ref_gen = torch.tensor([-40.0, -30.0, -35.0]), torch.tensor([-20.0, -25.0, -10.0])
    grads, outs = [], []
    for backward in (PAIR_BACKWARDS[mode] for mode in ("joint", "split", "shared")):
        model = copy.deepcopy(base).train()
        torch.manual_seed(0)
        size = StepSize(pairs=2 * len(pairs), tokens=40.0, processes=1)  # this chunk as half of a step
        outs.append(backward(PairStep(engine, model, spec, size, pad_id), pairs, ref_demo, ref_gen, True))
        grads.append({n: p.grad / (loss_scale or 1.0) for n, p in model.named_parameters() if p.grad is not None})
    return grads, outs


def same_gradients(grads: list[Any]) -> bool:
    return all(torch.allclose(grads[0][n], other[n], atol=1e-6, rtol=1e-4) for other in grads[1:] for n in grads[0])


@pytest.mark.parametrize(("loss", "sft_weight"), [("sigmoid", 0.0), ("hinge", 0.5), ("linear", 0.0)])
def test_split_joint_and_shared_pair_backward_give_the_same_gradient(
    tokenizer: Any, loss: str, sft_weight: float
) -> None:
    from rewardsft.config import load_config
    from rewardsft.steps.pairs import PairLossSpec

    pairs = make_pairs(tokenizer)
    config = load_config("irft", overrides=[f"irft.loss={loss}", f"irft.sft_weight={sft_weight}", "irft.beta=0.5"])
    grads, outs = pair_gradients(
        tiny_model(tokenizer, hidden_size=32, seed=5), pairs, PairLossSpec.from_config(config), tokenizer.pad_token_id
    )
    assert same_gradients(grads)
    assert any(g.abs().sum() > 0 for g in grads[0].values())
    for other in outs[1:]:
        for joint, got in zip(outs[0], other, strict=True):
            values = (joint, got) if isinstance(joint, torch.Tensor) else (joint.margin, got.margin)
            assert torch.allclose(*values, atol=1e-5)


@pytest.mark.parametrize("sft_weight", [0.0, 1.0])
def test_split_and_joint_agree_under_an_fp16_loss_scaler(tokenizer: Any, sft_weight: float) -> None:
    """Under a GradScaler every backward is scaled once. The split backward used to take the generations'
    coefficient from ``gen_leaf.grad`` after the scaled first backward and scale it again in the second: the
    generations' half of the gradient came out ``scale`` times too large (joint norm 1220, split 865,297 at 1024)."""
    from rewardsft.config import load_config
    from rewardsft.steps.pairs import PairLossSpec

    config = load_config("irft", overrides=[f"irft.sft_weight={sft_weight}", "irft.beta=0.5"])
    base = tiny_model(tokenizer, hidden_size=32, seed=5)
    spec, pad_id = PairLossSpec.from_config(config), tokenizer.pad_token_id
    scaled, _ = pair_gradients(base, make_pairs(tokenizer), spec, pad_id, loss_scale=1024.0)
    plain, _ = pair_gradients(base, make_pairs(tokenizer), spec, pad_id)
    assert same_gradients(scaled)  # split = joint = shared under the scaler
    assert same_gradients([scaled[1], plain[1]])  # and both equal the unscaled gradient


def test_lora_with_the_project_defaults_has_no_dropout_noise_in_irft(tokenizer: Any) -> None:
    """lora.dropout defaults to 0.05: IRFT must switch it off, or the split backward's two forwards of the
    generations draw different masks and its gradient is no longer the joint one."""
    from rewardsft.config import load_config
    from rewardsft.models import apply_lora, disable_dropout
    from rewardsft.steps.pairs import PairLossSpec

    config = load_config("irft", overrides=["lora.enabled=true", "lora.r=4"])
    assert config.lora.dropout > 0 and not config.train.dropout
    spec = PairLossSpec.from_config(config)
    pairs = make_pairs(tokenizer)
    noisy = apply_lora(tiny_model(tokenizer, hidden_size=32, seed=5), config.lora)
    torch.nn.init.normal_(next(p for n, p in noisy.named_parameters() if "lora_B" in n), std=0.5)
    assert not same_gradients(pair_gradients(noisy, pairs, spec, tokenizer.pad_token_id)[0])  # what dropout does
    assert disable_dropout(noisy) > 0
    assert same_gradients(pair_gradients(noisy, pairs, spec, tokenizer.pad_token_id)[0])


def test_disable_dropout_makes_two_train_mode_forwards_agree(tokenizer: Any) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from rewardsft.models import disable_dropout

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        attention_dropout=0.5,
    )
    model = LlamaForCausalLM(config).train()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    assert not torch.equal(model(ids).logits, model(ids).logits)  # attention dropout is a float, not a module
    disable_dropout(model)
    assert model.training and torch.equal(model(ids).logits, model(ids).logits)


def test_pair_forward_auto_is_shared_on_cpu_where_the_model_takes_the_mask(tokenizer: Any) -> None:
    from rewardsft.config import load_config
    from rewardsft.steps.pairs import pair_forward

    model = tiny_model(tokenizer, hidden_size=32)
    assert pair_forward(load_config("irft"), model) == "shared"
    assert pair_forward(load_config("irft", overrides=["model.gradient_checkpointing=true"]), model) == "joint"
    model.config._attn_implementation = "flash_attention_2"
    assert pair_forward(load_config("irft"), model) == "split"


def test_pair_forward_auto_follows_gradient_checkpointing() -> None:
    from rewardsft.config import load_config
    from rewardsft.steps.pairs import pair_forward

    assert pair_forward(load_config("irft")) == "split"  # no model to probe
    assert pair_forward(load_config("irft", overrides=["model.gradient_checkpointing=true"])) == "joint"
    assert (
        pair_forward(load_config("irft", overrides=["irft.pair_forward=split", "model.gradient_checkpointing=true"]))
        == "split"
    )


def test_disable_dropout_covers_rates_read_from_the_config_and_exports_keep_them(tokenizer: Any, tmp_path: Any) -> None:
    """GPT-Neo reads config.attention_dropout inside its forward; the exported config keeps the original rates."""
    import json

    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from rewardsft.models import disable_dropout, original_dropout_config

    config = GPTNeoConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global"], 2]],
        attention_dropout=0.5,
        resid_dropout=0.5,
        embed_dropout=0.5,
    )
    model = GPTNeoForCausalLM(config).train()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    assert not torch.equal(model(ids).logits, model(ids).logits)
    disable_dropout(model)
    assert torch.equal(model(ids).logits, model(ids).logits) and model.config.attention_dropout == 0.0
    with original_dropout_config(model):
        model.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["attention_dropout"] == 0.5
    assert model.config.attention_dropout == 0.0  # still off for the rest of training


def test_reused_generations_are_matched_by_data_file_row(tokenizer: Any, tmp_path: Any) -> None:
    """A stage's examples carry their data-file row (``index``); when a row was skipped at tokenisation, rows and
    positions in the tokenised list differ, and matching by position refused every resume of such a run."""
    from rewardsft.errors import ConfigError
    from rewardsft.steps.stages import Stage, read_generations, write_generations

    pairs = make_pairs(tokenizer)
    examples = [
        TokenizedExample(p.demo.prompt_ids, p.demo.response_ids, row) for p, row in zip(pairs, [0, 2, 3], strict=True)
    ]
    generations = [Generation(p.gen.response_ids, True) for p in pairs]
    stage = Stage(index=0, example_ids=[0, 1, 2], first_step=0, steps=1)  # positions, not rows
    path = tmp_path / "generations.jsonl"
    settings = {"max_new_tokens": 12, "temperature": 1.0}
    write_generations(path, stage, examples, generations, tokenizer, Renderer(tokenizer), {}, settings)
    assert read_generations(path, examples, settings) == generations
    with pytest.raises(ConfigError, match="other data"):
        read_generations(path, examples[::-1], settings)
    with pytest.raises(ConfigError, match=r"generation\.temperature=0\.7 \(was 1\.0\)"):
        read_generations(path, examples, {**settings, "temperature": 0.7})


def test_the_step_loss_at_a_stage_start_is_log_2_plus_the_anchor_token_mean_nll(tokenizer: Any) -> None:
    """At a stage start the policy is its snapshot (every margin 0, ℓ = log 2 per pair), so one step's logged loss
    is log 2 + w × the NLL's mean over every demonstration token of the step, computed here by hand from the
    logits, over two micro-batches of unequal lengths. An anchor normalised by pairs instead of tokens (about a
    response length stronger) fails this directly."""
    from accelerate import Accelerator

    from rewardsft.config import load_config
    from rewardsft.steps.pairs import PairLossSpec, accumulate_irft_step
    from rewardsft.training.engine import AccelerateEngine

    pairs, w = make_pairs(tokenizer), 0.5
    model = tiny_model(tokenizer, hidden_size=32, seed=5).train()
    pad_id = tokenizer.pad_token_id
    snapshot = CachedSnapshot(compute_ref_logps(model, pairs, batch_size=3, pad_id=pad_id))
    spec = PairLossSpec.from_config(load_config("irft", overrides=[f"irft.sft_weight={w}"]))
    metrics = accumulate_irft_step(
        AccelerateEngine(Accelerator(cpu=True)), model, snapshot, pairs, [[0], [1, 2]], pad_id, spec
    )

    nll, tokens = 0.0, 0
    with torch.no_grad():
        for pair in pairs:
            ids = torch.tensor([pair.demo.prompt_ids + pair.demo.response_ids])
            logps = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
            start = len(pair.demo.prompt_ids)
            for j in range(start, ids.shape[1]):
                nll -= float(logps[j - 1, ids[0, j]])
                tokens += 1
    assert tokens > len(pairs) * 3  # responses of several tokens: the two normalisers differ a lot
    assert metrics["irft/loss"] == pytest.approx(math.log(2) + w * nll / tokens, abs=1e-5)
    assert metrics["irft/margin"] == pytest.approx(0.0, abs=1e-5)
