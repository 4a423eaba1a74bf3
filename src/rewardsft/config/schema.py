"""The config schema: small dataclass sections, and one config type per method composed of the sections that
method reads (the type is the schema: a key a method does not read is not a key of its config)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from rewardsft.data.tokenize import MAX_LENGTH, MAX_PROMPT_LENGTH

METHODS = ("sft", "irft", "rft")


@dataclass
class ModelConfig:
    name_or_path: str = ""
    """Hub id or local directory of the policy (a causal LM)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``auto``: float32 on CPU, bfloat16 on GPU (the paper trains in bf16)."""
    trust_remote_code: bool = False
    """Let ``from_pretrained`` run the repository's own modelling code (tokenizer, policy and RFT reward model)."""
    revision: str | None = None
    """Hub branch, tag or commit of ``name_or_path`` for the tokenizer, the initial policy and an RFT reward model
    started from it; None: the default branch."""
    gradient_checkpointing: bool = False
    """Recompute the policy's activations during backward (less memory, more compute); also makes
    ``irft.pair_forward=auto`` choose ``joint``."""
    gguf_file: str | None = None
    """File name inside ``name_or_path`` when the weights are a GGUF file (see OFFLINE.md)."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Attention kernel: ``auto`` is transformers' choice (``sdpa`` wherever the architecture supports it, else
    ``eager``); ``sdpa`` is PyTorch's fused attention (flash/memory-efficient kernels on GPU); ``eager`` plain
    matmuls; ``flash_attention_2`` needs the ``flash-attn`` package and a bf16/fp16 model on a GPU."""


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters instead of all the policy's weights; ``final/`` holds the merged model."""
    r: int = 64
    """Adapter rank (paper's 7B setting: r=64, alpha=16)."""
    alpha: int = 16
    """LoRA scaling: the adapter's update is multiplied by alpha / r (paper: 16)."""
    dropout: float = 0.05
    """Dropout probability on the adapters' input; applies only while ``train.dropout`` is true."""
    target_modules: list[str] | Literal["auto"] = "auto"
    """Module names to adapt; ``auto`` picks the attention and MLP projections of Llama/Mistral/Qwen2/GPT-NeoX/GPT-2
    (for other architectures, every Linear layer except the output head)."""


@dataclass
class DataConfig:
    path: str = ""
    """Hub dataset id, a local .json/.jsonl/.parquet file, or a directory of such files."""
    split: str = "train"
    """Split of ``path`` to train on: a hub or saved-dataset split, or the files of a directory whose name contains
    it (all files when none does); ignored for a single file."""
    eval_path: str | None = None
    """Held-out data, in any form ``path`` accepts; None: ``path`` itself when ``eval_split`` is set, else no
    held-out evaluation."""
    eval_split: str | None = None
    """Split of ``eval_path`` (or of ``path`` when ``eval_path`` is unset); None: ``split`` when ``eval_path`` is
    set, else held-out evaluation is off."""
    format: Literal["auto", "prompt_completion", "messages", "chosen_rejected", "spin"] = "auto"
    """Row format; ``auto`` detects it from the first row's columns (real/generated, chosen/rejected, messages,
    prompt/completion)."""
    max_length: int = MAX_LENGTH
    """Prompt + response tokens (paper: 512)."""
    max_prompt_length: int = MAX_PROMPT_LENGTH
    """Prompt tokens kept, from the end of the prompt (paper: 128)."""
    max_rows: int | None = None
    """Train on the first N rows only (the held-out data is not capped); None: all rows."""
    fallback_template: str = "default"
    """Chat template for tokenizers without one: ``default`` (role-tagged turns) or a Jinja string."""
    system_prompt: str | None = None
    """Prepended as a system turn to message-list prompts that have none."""
    text_prompts: Literal["verbatim", "user_turn"] = "verbatim"
    """Plain-text prompts: ``verbatim`` (as TRL does; right for base models and HH-RLHF dialogues) or
    ``user_turn`` (wrapped as one user message and rendered with the chat template, as a chat model expects)."""


@dataclass
class TrainConfig:
    epochs: int = 1
    """Passes over the training data (IRFT: repeats of the whole T-stage pass); RFT uses ``rft.iterations``."""
    max_steps: int | None = None
    """Optimiser steps; when set, SFT runs exactly this many (ignoring ``epochs``) and IRFT stops after this many
    (shortening or dropping its last stages)."""
    batch_size: int = 8
    """Examples per device per micro-batch; effective batch = batch_size * grad_accum * processes."""
    eval_batch_size: int | None = None
    """Sequences per no-grad forward (held-out loss, IRFT snapshot log-probs, RFT rollout log-probs and reward
    scoring); None: ``batch_size``."""
    grad_accum: int = 1
    """Micro-batches accumulated into one optimiser step (SFT and IRFT)."""
    packing: bool = False
    """SFT: pack the examples of each micro-batch into rows of up to ``data.max_length`` tokens, each example
    attending only to itself with its own positions: less padding is computed, and the step (its examples, its
    loss) is unchanged (docs/performance.md). IRFT with ``irft.pair_forward=shared``: the same for its pair rows (rows of up to twice ``data.max_length``).
    Needs sdpa or eager attention and no sliding window."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient L2 norm to this before each optimiser step; None: no clipping."""
    save_every: int = 500
    """Optimiser steps (RFT: rounds) between checkpoints (a checkpoint is always written at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept; older ones are deleted once a newer one is complete."""
    eval_every: int | None = None
    """Optimiser steps (RFT: rounds) between held-out evaluations (SFT/IRFT: ``eval/loss``; RFT:
    ``eval/rm_accuracy``, also at the start); always at the end. None: at the end only. Needs held-out data."""
    log_every: int = 1
    """Optimiser steps (RFT: rounds) between metric records (metrics.jsonl and trackers); the last step (of each
    IRFT stage) is always logged."""
    dropout: bool = True
    """Keep the model's dropout (and ``lora.dropout``) active in training. IRFT and RFT default to false: with
    dropout the policy at a stage start is not its snapshot and two forwards of one sequence differ (the
    paper's code and TRL switch it off)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A step whose gradient norm is NaN or infinite (a non-finite loss or gradient): ``stop`` the run before the
    optimiser applies it (the last checkpoint stays the last good one; exit 1 with the step named), or ``skip`` the
    step (nothing applied, counted as ``train/nonfinite_skipped``)."""

    @property
    def eval_batch(self) -> int:
        """Sequences per no-grad forward: ``eval_batch_size``, else ``batch_size``."""
        return self.eval_batch_size or self.batch_size


@dataclass
class OptimConfig:
    name: Literal["adamw", "rmsprop"] = "adamw"
    """Optimiser, ``adamw`` or ``rmsprop``; the paper's IRFT runs use RMSprop."""
    lr: float = 2e-5
    """Peak learning rate of the policy (reached after warm-up); the irft preset uses the paper's 5e-7, rft 1e-6."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Learning rate after warm-up: ``linear`` or ``cosine`` decay to 0 at the last step, or ``constant``."""
    warmup_ratio: float = 0.1
    """Share of the optimiser steps (rounded up) over which the learning rate ramps up linearly (paper: linear
    decay with 10% warm-up)."""
    weight_decay: float = 0.0
    """Weight decay: decoupled in AdamW, an L2 term added to the gradient in RMSprop."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's (beta1, beta2) moment decay rates; RMSprop ignores them."""
    eps: float = 1e-8
    """Term added to the optimiser's denominator for numerical stability (AdamW and RMSprop)."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    """Cap on sampled response tokens (paper's 7B setting: 256); a sample is also cut to fit ``data.max_length``."""
    temperature: float = 1.0
    """Sampling temperature; 1.0 samples from pi_theta as the theory requires (the official code decodes
    greedily)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest token set with this much probability (1.0: off; RFT requires 1.0)."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0: off; RFT requires 0)."""
    do_sample: bool = True
    """Sample (true) or decode greedily (false, ignoring temperature/top_p/top_k); RFT requires true."""
    batch_size: int = 16
    """Prompts per ``generate`` call on each process (longest prompts first, to pad less)."""
    cache: Literal["dynamic", "static"] = "dynamic"
    """KV cache of ``generate``: ``static`` pre-allocates it, and on GPU transformers then compiles the decode step
    (much faster for small models and batches, docs/performance.md; each new batch or length shape compiles
    again); ``dynamic`` grows it and needs no compilation. No effect on the samples' distribution."""
    dtype: Literal["auto", "bfloat16"] = "auto"
    """Weights generation runs with: ``auto`` the policy's own; ``bfloat16`` a bf16 copy of an fp32 policy (CPU: about
    1.4-1.6x faster decoding; the samples then come from the rounded policy: mean next-token KL 7e-4 nats on
    SmolLM2-135M, docs/performance.md). Not with FSDP."""
    zero3_gather: bool = True
    """Under DeepSpeed ZeRO-3 only: gather the whole weights once per sampling call (every process holds the whole
    model meanwhile) instead of gathering every layer again for every token. Measured 0.69x the time on
    SmolLM2-135M over 2 CPU processes, where the KV cache outweighs the weights (benchmarks/zero3_decoding.py); at
    7B it adds the whole model per device, so set false where that does not fit beside the training state."""


@dataclass
class LoggingConfig:
    report_to: list[str] = field(default_factory=list)
    """Extra trackers through accelerate: tensorboard, wandb, trackio (metrics.jsonl is always written)."""
    project: str = "rewardsft"
    """Project name passed to the trackers of ``report_to``."""
    progress: bool = True
    """Show a progress bar (main process only)."""


@dataclass
class IRFTSettings:
    stages: int = 5
    """T in Algorithm 2 (paper: T=5 for zephyr-7b); T=1 is SPIN."""
    beta: float = 0.1
    """β, the scale of the implicit reward β·log(π_θ/π_ref) inside ℓ (paper and SPIN: 0.1)."""
    loss: Literal["sigmoid", "hinge", "linear"] = "sigmoid"
    """ℓ(u): sigmoid log(1+e^-u) (SPIN/DPO), hinge max(0, 1-u), linear -u (the theory's form)."""
    sft_weight: float = 0.0
    """Adds this times the demonstrations' token-mean NLL: an anchor against overfitting the snapshot."""
    snapshot: Literal["cached", "copy", "lora"] = "cached"
    """How π_ref = θ_t is held: cached log-probs (SFT memory), a frozen copy, or the LoRA base."""
    pair_forward: Literal["auto", "split", "joint", "shared"] = "auto"
    """``split``: demonstrations and generations backpropagate one after the other (one half's activations at a
    time, one extra no-grad forward); ``joint``: one forward of both (same gradient); ``shared``: one row per pair,
    prompt then demonstration then generation, the prompt computed once for both (same gradient; sdpa or eager
    attention, no sliding window); ``auto``: joint with gradient checkpointing (activations are small, joint is
    faster and leaner); without it, shared on CPU where the model takes the mask (faster than split at the same
    peak memory), else split (docs/performance.md)."""
    epochs_per_stage: int = 1
    """Passes over the stage's chunk; the paper's K (optimiser steps per stage) is this times the chunk's steps
    per pass (ceil(chunk / global batch)). The paper's pythia-1.4b runs used 2 epochs per stage."""
    reset_optimizer_each_stage: bool = False
    """True reproduces the official code, which restarts optimiser and LR schedule every stage."""


SFT_PHASE_FOLDER = "sft"
"""The folder of a run's SFT phase inside the run (``layout.SFT_PHASE_DIR``)."""


@dataclass
class SFTPhaseConfig:
    epochs: int = 0
    """IRFT and RFT: passes of SFT over the same demonstrations before reward learning, in ``OUTPUT_DIR/sft``; the
    reward-learning phase then starts from that model (the paper's protocol, SFT then IRFT, as one resumable run).
    It shares the run's model, LoRA, data, batch, clipping and checkpoint settings and its lr schedule, and trains
    with AdamW; 0: no SFT phase."""
    lr: float = 2e-5
    """Peak learning rate of the SFT phase (the run's ``optim.lr`` is the reward-learning phase's)."""


@dataclass
class RFTSettings:
    iterations: int = 20
    """Outer rounds of Algorithm 1: generate, reward step(s), policy step(s)."""
    prompts_per_iteration: int = 64
    """Demonstration prompts per round (cycling through a seeded shuffle of the data)."""
    samples_per_prompt: int = 4
    """k responses per prompt; RLOO's leave-one-out baseline needs k >= 2."""
    rollout_forward: Literal["auto", "separate", "shared"] = "auto"
    """The forwards over a round's samples: ``separate``, a row per sample (and per demonstration-sample pair in
    the reward step); ``shared``, one row per prompt, ``[prompt | sample 1 | ... | sample k]`` for the policy and
    the reference and ``[prompt | demonstration | sample 1 | ... | sample k]`` for the reward model, the prompt
    (and the demonstration) computed once (the same log-probs and rewards; sdpa or eager attention, no sliding
    window); ``auto``: shared on CPU where the policy and the reward model take the mask (0.53-0.73x the round's
    time, 0.59-0.80x its peak memory), else separate (a GPU has not been measured; docs/performance.md)."""
    reward_steps: int = 1
    """Reward-model optimiser steps per round, each over all (demonstration, generation) pairs of the round."""
    policy_steps: int = 1
    """Policy optimiser steps per round, each over the whole rollout (clipped ratio after the first)."""
    kl_coef: float = 0.05
    """Coefficient of the per-token KL penalty to the initial policy, summed over the response."""
    reward_norm: Literal["none", "whiten"] = "whiten"
    """``whiten``: standardise the KL-penalised rewards over the rollout (zero mean, unit std) before
    RLOO; ``none``: use them as they are."""
    reward_clip: float | None = None
    """Clip the rewards (after ``reward_norm``) to ±this before RLOO; None: no clipping."""
    clip_ratio: float = 0.2
    """ε of the PPO-style clip of π_θ/π_old to [1-ε, 1+ε]; has no effect on a rollout's first policy step."""
    preference_path: str | None = None
    """Optional real preference pairs (chosen/rejected) mixed into the reward step."""
    preference_split: str = "train"
    """Split of ``preference_path``, as ``data.split`` is of ``data.path``."""
    preference_weight: float = 0.0
    """Weight of the preference pairs' BT loss (the official script uses 0)."""


@dataclass
class RewardModelConfig:
    name_or_path: str | None = None
    """None: start from the policy's initial weights with a fresh scalar head."""
    lora: bool = False
    """Train the reward model with LoRA (the ``lora`` section's settings; the head is fully trained)."""
    lr: float = 1e-5
    """Learning rate of the reward model; every other ``optim`` setting (optimiser, schedule, warm-up, weight decay)
    is shared with the policy."""


@dataclass
class RunConfig:
    """The sections every method reads; each method's config type (:data:`CONFIG_TYPES`) adds its own, so a
    setting a method does not read is not a key of its config."""

    method: Literal["sft", "irft", "rft"] = "sft"
    """Set by the command (``rewardsft train METHOD``); a config file's ``method`` must match it."""
    output_dir: str = "runs/sft"
    """Run folder (config.yaml, metrics.jsonl, checkpoints/, final/); the preset is runs/METHOD."""
    seed: int = 42
    """Seeds the RNGs, the data shuffles and the sampling (each stage, round and process derives its own)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in ``output_dir``."""
    overwrite: bool = False
    """Delete an existing non-empty ``output_dir`` first."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy: its weights and how they are loaded."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters for the policy (and for the RFT reward model with ``reward_model.lora``)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Demonstrations, held-out data and how they are rendered and truncated."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batching, run length, evaluation, logging and checkpoint cadence."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule (shared by the RFT reward model, except its ``lr``)."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Progress bar and experiment trackers."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass
class SFTConfig(RunConfig):
    """``rewardsft train sft``: maximum likelihood on the demonstrations."""

    method: Literal["sft", "irft", "rft"] = "sft"
    """Set by the command (``rewardsft train METHOD``); a config file's ``method`` must match it."""


@dataclass
class RewardLearningConfig(RunConfig):
    """What IRFT and RFT both read beyond SFT: sampling from the policy, and an optional SFT phase first."""

    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Sampling of responses from the policy (IRFT stages, RFT rounds)."""
    sft_phase: SFTPhaseConfig = field(default_factory=SFTPhaseConfig)
    """An SFT phase before reward learning in the same run (``sft_phase.epochs`` > 0)."""


@dataclass
class IRFTConfig(RewardLearningConfig):
    """``rewardsft train irft``: the paper's Algorithm 2 (SPIN is T=1)."""

    method: Literal["sft", "irft", "rft"] = "irft"
    """Set by the command (``rewardsft train METHOD``); a config file's ``method`` must match it."""
    irft: IRFTSettings = field(default_factory=IRFTSettings)
    """IRFT (the paper's Algorithm 2)."""


@dataclass
class RFTConfig(RewardLearningConfig):
    """``rewardsft train rft``: the paper's Algorithm 1."""

    method: Literal["sft", "irft", "rft"] = "rft"
    """Set by the command (``rewardsft train METHOD``); a config file's ``method`` must match it."""
    rft: RFTSettings = field(default_factory=RFTSettings)
    """RFT (the paper's Algorithm 1)."""
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """RFT's explicit reward model r_φ."""


CONFIG_TYPES: dict[str, type[RunConfig]] = {"sft": SFTConfig, "irft": IRFTConfig, "rft": RFTConfig}
"""Each method's config type: its fields are the sections ``rewardsft train METHOD`` reads."""


# Per-method defaults that differ from the dataclass defaults, each from the paper.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"output_dir": "runs/sft"},
    # Official IRFT setting (PAPER.md, Algorithm 2): RMSprop, lr 5e-7, linear with 10% warm-up.
    # Dropout off for both reward-learning recipes, as in the paper's code and TRL (TrainConfig.dropout).
    "irft": {"output_dir": "runs/irft", "optim": {"name": "rmsprop", "lr": 5e-7}, "train": {"dropout": False}},
    "rft": {"output_dir": "runs/rft", "optim": {"lr": 1e-6}, "train": {"dropout": False}},
}

SECTION_OWNERS = {
    "generation": ("irft", "rft"),
    "sft_phase": ("irft", "rft"),
    "irft": ("irft",),
    "rft": ("rft",),
    "reward_model": ("rft",),
}
"""The sections only some methods' config types have."""
FOREIGN_SECTION_REASONS: dict[str, dict[str, str]] = {
    "sft": {
        "generation": "SFT does not generate",
        "reward_model": "SFT trains no reward model (`rewardsft train rft` does)",
        "sft_phase": "sft_phase is an SFT run inside `rewardsft train irft` or `rft`; here the whole run is SFT",
    },
    "irft": {
        "reward_model": "IRFT's reward is implicit, β·log(π_θ/π_ref) (irft.beta); `rewardsft train rft` trains one",
    },
}
"""What does the job of a section the method's type lacks, where more can be said than who reads it."""

# Keys of shared sections a method never reads, each with what does that job for the method. Setting one (to
# anything but its default) is an error: a recipe never ignores a setting silently.
UNUSED_BY_METHOD: dict[str, dict[str, str]] = {
    "sft": {},
    "irft": {},
    "rft": {
        "train.packing": "packing is SFT's; RFT's rollouts are not packed",
        "train.epochs": "RFT runs rft.iterations rounds of rft.prompts_per_iteration prompts; set rft.iterations",
        "train.max_steps": "RFT runs rft.iterations rounds; set rft.iterations",
        "train.grad_accum": (
            "one RFT optimiser step covers a whole round (rft.prompts_per_iteration x rft.samples_per_prompt "
            "sequences, micro-batched by train.batch_size); set those instead"
        ),
    },
}


def foreign_section_reason(method: str, section: str) -> str | None:
    """Why ``rewardsft train METHOD`` has no ``section`` (and what does its job), or None if it has it or no
    method does."""
    owners = SECTION_OWNERS.get(section)
    if owners is None or method in owners:
        return None
    said = FOREIGN_SECTION_REASONS.get(method, {}).get(section)
    return said or f"the {section} section is read by {' and '.join(f'`rewardsft train {m}`' for m in owners)} only"


def reads(method: str, key: str) -> bool:
    """Whether ``rewardsft train METHOD`` reads the setting ``key`` at all (its type's sections, less the shared
    keys it never reads; the finer, value-dependent rules of :func:`reject_unused` apply when it is built)."""
    section = key.split(".")[0]
    return foreign_section_reason(method, section) is None and key not in UNUSED_BY_METHOD[method]
