"""How human are a model's samples? Two read-outs on sentence embeddings of the samples and of held-out human
demonstrations (``rewardsft eval human-likeness``), neither of which needs a sentiment lexicon or preference labels.

- **MAUVE** (Pillutla et al. 2021; the ``mauve-text`` package, from precomputed features): both sets are quantised
  together by k-means and compared as histograms; 1 means the two distributions cannot be told apart at that
  resolution, near 0 that they share no cluster. Reported as the mean over ``mauve_seeds`` k-means seeds, with the
  lowest and highest seed as its interval (the quantisation is its main source of variance at these sizes).
- **Discriminator accuracy**: an L2-regularised logistic regression on the embeddings that tells the model's
  samples from the human demonstrations, scored out of fold (k folds, each point predicted by a classifier that
  never saw it), as balanced accuracy (classes weighted equally in the fit and the score, so unequal set sizes
  do not inflate it). 0.5 means indistinguishable; lower is better. Per sample, its out-of-fold probability of being
  human (``human_prob``, higher is better) is written per example, so ``eval compare`` pairs two models sample by
  sample on the same prompts.

Both come with a **ceiling**: the same measures between two halves of the human demonstrations, about the value a
model indistinguishable from people would get (at half the reference count, so a little lower than at full size).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rewardsft.config import GenerationConfig
from rewardsft.data import load_examples, load_rows
from rewardsft.data.formats import parse_prompts
from rewardsft.errors import ConfigError
from rewardsft.eval.embedding import MINILM, embed
from rewardsft.layout import SUMMARY_FILE, rendering_for

PER_EXAMPLE_FILE = "per_example.csv"
MIN_SET = 4
"""Fewest samples (and references) the measures accept: MAUVE needs two buckets, the folds two points each."""


@dataclass
class LikenessSettings:
    n: int | None = None
    """The first n prompts (all when None); one sample each."""
    split: str = "train"
    seed: int = 0
    encoder: str = MINILM
    mauve_seeds: int = 5
    folds: int = 5
    l2: float = 1e-2
    """Ridge penalty of the discriminator (per weight, on mean-scaled log-loss)."""
    bootstrap: int = 1000


def mauve_scores(samples: torch.Tensor, references: torch.Tensor, seeds: int) -> dict[str, Any]:
    """MAUVE of samples (P) against references (Q) for k-means seeds 1..``seeds``: the mean and the range over
    seeds (``seed_range``; not a confidence interval: it shows the quantisation's spread, not the sampling's)."""
    try:
        import mauve
    except ImportError:
        raise ConfigError("MAUVE needs `pip install 'rewardsft[eval]'` (mauve-text and faiss-cpu)") from None
    values = [
        float(mauve.compute_mauve(p_features=samples.numpy(), q_features=references.numpy(), seed=seed).mauve)
        for seed in range(1, seeds + 1)
    ]
    return {"mean": sum(values) / len(values), "seed_range": [min(values), max(values)], "per_seed": values}


def fit_logistic(
    features: torch.Tensor, labels: torch.Tensor, l2: float, steps: int = 100, balanced: bool = False
) -> torch.Tensor:
    """Weights (bias last) minimising mean log-loss + ``l2``·‖w‖² (bias unpenalised), by L-BFGS. ``balanced``
    weighs each class's points by the inverse of its share, so unequal set sizes do not move the 0.5 threshold."""
    x = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    weights = torch.zeros(x.shape[1], dtype=features.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=steps, line_search_fn="strong_wolfe")
    positives = float(labels.sum())
    share = (len(labels) - positives) / max(positives, 1.0) if balanced else 1.0
    pos_weight = torch.tensor(share, dtype=features.dtype)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weights
        fit = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
        loss = fit + l2 * (weights[:-1] ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights.detach()


def out_of_fold_human_prob(
    samples: torch.Tensor,
    references: torch.Tensor,
    folds: int,
    l2: float,
    seed: int,
    groups: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(human) of every sample and every reference, each from a classifier fitted on the other folds.

    Points of one group (``groups``: one key per sample, then per reference, e.g. their prompt) share a fold, and
    so do identical points when no groups are given: a held point whose (near-)twin with the other label was
    fitted is pushed to the wrong side. Identical sets scored 0.22 that way, not 0.5; on the demo's reversal
    task, where a sample and its prompt's reference are the same letters, the base scored 0.37."""
    features = torch.cat([samples, references])
    labels = torch.cat([torch.zeros(len(samples)), torch.ones(len(references))]).to(features.dtype)
    keys = list(groups) if groups is not None else [row.numpy().tobytes() for row in features]
    fold_of = grouped_folds(keys, folds, seed)
    probs = torch.zeros(len(features), dtype=features.dtype)
    for fold in range(folds):
        held = torch.nonzero(fold_of == fold).flatten()
        if len(held) == 0:
            continue
        keep = torch.ones(len(features), dtype=torch.bool)
        keep[held] = False
        weights = fit_logistic(features[keep], labels[keep], l2, balanced=True)
        x = torch.cat([features[held], torch.ones(len(held), 1, dtype=features.dtype)], dim=1)
        probs[held] = torch.sigmoid(x @ weights)
    return probs[: len(samples)], probs[len(samples) :]


def grouped_folds(keys: Sequence[Any], folds: int, seed: int) -> torch.Tensor:
    """A fold per point: distinct keys dealt round-robin in a seeded order, points with one key to one fold."""
    distinct = list(dict.fromkeys(keys))
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    fold_of_key = {distinct[i]: rank % folds for rank, i in enumerate(order)}
    return torch.tensor([fold_of_key[k] for k in keys])


def discriminate(
    samples: torch.Tensor,
    references: torch.Tensor,
    settings: LikenessSettings,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Out-of-fold balanced accuracy (the mean of the two sets' accuracies, so a classifier that calls everything
    human scores 0.5 whatever the set sizes) of telling samples from references, its 95% interval (each set
    resampled on its own), and each sample's P(human)."""
    folds = min(settings.folds, len(samples) + len(references))
    gen_prob, ref_prob = out_of_fold_human_prob(samples, references, folds, settings.l2, settings.seed, groups)
    gen_right, ref_right = (gen_prob < 0.5).double(), (ref_prob >= 0.5).double()
    generator = torch.Generator().manual_seed(settings.seed)

    def resampled(values: torch.Tensor) -> torch.Tensor:
        picks = torch.randint(0, len(values), (settings.bootstrap, len(values)), generator=generator)
        return values[picks].mean(dim=1)

    draws = (resampled(gen_right) + resampled(ref_right)) / 2
    lo, hi = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=draws.dtype)).tolist()
    accuracy = float(gen_right.mean() + ref_right.mean()) / 2
    return {"accuracy": {"mean": accuracy, "ci95": [lo, hi]}, "human_prob": gen_prob.tolist()}


def measure(
    samples: torch.Tensor,
    references: torch.Tensor,
    settings: LikenessSettings,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Both read-outs of one set of sample embeddings against the references' (``groups``: fold keys, see
    :func:`out_of_fold_human_prob`)."""
    for name, part in (("samples", samples), ("references", references)):
        if len(part) < MIN_SET:
            raise ConfigError(f"human-likeness needs at least {MIN_SET} {name}, got {len(part)}")
    found = discriminate(samples, references, settings, groups)
    return {"mauve": mauve_scores(samples, references, settings.mauve_seeds), **found}


def ceiling(references: torch.Tensor, settings: LikenessSettings) -> dict[str, Any]:
    """The measures between two seeded halves of the references: what indistinguishable from people reads as."""
    order = torch.randperm(len(references), generator=torch.Generator().manual_seed(settings.seed))
    half = len(references) // 2
    if half < MIN_SET:
        return {"note": f"fewer than {2 * MIN_SET} references: no ceiling"}
    found = measure(references[order[:half]], references[order[half:]], settings)
    return {"mauve": found["mauve"], "accuracy": found["accuracy"]}


def read_references(path: str, split: str) -> tuple[list[str], list[Any]]:
    """The held-out human responses (a demonstration file's responses, or a pair file's chosen side) and their
    prompts."""
    examples, _ = load_examples(path, split)
    return [ex.response for ex in examples], [ex.prompt for ex in examples]


def prompt_groups(prompts: Sequence[Any], reference_prompts: Sequence[Any], folds: int) -> list[str] | None:
    """Fold keys by prompt, so a sample and the reference of its own prompt are never on two sides of a fold;
    None (identical points grouped instead) when there are too few distinct prompts to fill the folds."""
    keys = [json.dumps(p, sort_keys=True) for p in [*prompts, *reference_prompts]]
    return keys if len(set(keys)) >= 2 * folds else None


def human_likeness(
    model: str,
    prompts_path: str,
    references_path: str,
    out: Path | None = None,
    generation: GenerationConfig | None = None,
    settings: LikenessSettings | None = None,
    render: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample ``model`` once per prompt (as ``eval winrate`` does), embed samples and references, and measure how
    human the samples read; writes ``summary.json`` and ``per_example.csv`` under ``out`` when given."""
    from rewardsft.generation import sample_texts

    settings = settings or LikenessSettings()
    generation = generation or GenerationConfig(max_new_tokens=128)
    if settings.mauve_seeds < 1 or settings.folds < 2:
        raise ConfigError("human-likeness needs --mauve-seeds of at least 1 (and at least 2 folds)")
    rows, source = load_rows(prompts_path, settings.split, settings.n)
    prompts = parse_prompts(rows, source)
    references, reference_prompts = read_references(references_path, settings.split)
    # Before any sampling: too few rows is the files' fault, named as such.
    for name, count, path in (
        ("prompts", len(prompts), prompts_path),
        ("references", len(references), references_path),
    ):
        if count < MIN_SET:
            raise ConfigError(f"{path}: {count} {name}; human-likeness needs at least {MIN_SET}")
    texts = sample_texts(rendering_for(model, **(render or {})), prompts, generation, settings.seed)
    sample_features = embed(texts, settings.encoder)
    reference_features = embed(references, settings.encoder)
    groups = prompt_groups(prompts, reference_prompts, settings.folds)
    found = measure(sample_features, reference_features, settings, groups)
    summary = {
        "kind": "human_likeness",
        "model": model,
        "prompts": source,
        "references": references_path,
        "n_samples": len(texts),
        "n_references": len(references),
        "mauve": found["mauve"],
        "discriminator_accuracy": found["accuracy"],
        "human_prob": {"mean": sum(found["human_prob"]) / len(texts)},
        "ceiling": ceiling(reference_features, settings),
        "folds_by": "prompt" if groups is not None else "identical text",
        "paired_metrics": ["human_prob"],
        "generation": asdict(generation),
        "settings": asdict(settings),
    }
    if out is not None:
        write_likeness(out, summary, prompts, texts, found["human_prob"])
    return summary


def write_likeness(
    out: Path, summary: dict[str, Any], prompts: Sequence[Any], texts: Sequence[str], probs: Sequence[float]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / PER_EXAMPLE_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["row", "pair_id", "human_prob", "sample"])
        writer.writeheader()
        for row, (prompt, text, prob) in enumerate(zip(prompts, texts, probs, strict=True), start=1):
            # The prompt's hash (and row) identify the example across models; the sample differs by model.
            pid = hashlib.sha1(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:12]
            writer.writerow({"row": row, "pair_id": pid, "human_prob": prob, "sample": text})
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))  # last: the evaluation is complete


def samples_needed(accuracy_halfwidth: float) -> int:
    """Samples (with as many references) for a discriminator-accuracy interval of about ±``accuracy_halfwidth``
    near 0.5: a proportion over 2n points, 1.96·sqrt(0.25 / 2n) = halfwidth."""
    return math.ceil((1.96 / accuracy_halfwidth) ** 2 * 0.25 / 2)
