"""Pad tokenised examples into batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rewardsft.data.tokenize import IGNORE_INDEX, TokenizedExample


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad prompt+response: ``input_ids``, ``attention_mask`` and ``labels`` (B, T).

    ``labels`` is ``IGNORE_INDEX`` on prompt and padding tokens, the token id on response tokens.
    """
    width = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for batched generation: ``input_ids`` and ``attention_mask`` (B, T)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(list(ids))
            attention_mask[row, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def batch_on(examples: Sequence[TokenizedExample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """:func:`collate` (right padding, labels masked) and move to ``device``."""
    return {key: value.to(device) for key, value in collate(examples, pad_id).items()}


def block_visibility(document: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool, True where query position q may attend to key position k, from two (B, T) labels per
    position: ``document`` (several per row when rows are packed; -1 on padding) and ``branch`` (0 for the part
    every later position of its document sees, 1, 2, ... for parts that see branch 0 and themselves only).

    Causal, within one document, and never from one branch into another. Every position sees itself, padding
    included, so no attention row is empty (an all-masked softmax is NaN, and a NaN in a padded row still reaches
    the gradients through the backward's zeros)."""
    width = document.shape[1]
    q_doc, k_doc = document.unsqueeze(2), document.unsqueeze(1)
    q_branch, k_branch = branch.unsqueeze(2), branch.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=document.device).tril()
    visible = causal & (q_doc == k_doc) & (k_doc >= 0) & ((k_branch == 0) | (k_branch == q_branch))
    return visible | torch.eye(width, dtype=torch.bool, device=document.device)


def collate_branches(
    groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], pad_id: int, width: int | None = None
) -> dict[str, torch.Tensor]:
    """(prompt, K responses) groups laid out ``[prompt | response 1 | ... | response K]``: the prompt computed once
    for all K (RFT's samples of one prompt; IRFT's demonstration and generation, :func:`collate_shared`). One
    group per row, or with ``width`` packed several to a row (:func:`tightest_packing`, each group a document of
    its own), so that less padding is computed.

    Each response must be computed as if it followed the prompt alone, so the rows carry their own
    ``position_ids`` (every response restarts where the first began) and the (R, T) ``document`` and ``branch``
    labels of :func:`block_visibility` (response k is branch k + 1: it sees its prompt and itself, never another
    response or group); the (R, T, T) mask itself is built on the model's device
    (:func:`rewardsft.logprobs.block_mask_logits`). Rows are right-padded.

    Per group g, in input order: ``row_of`` (G,) its row; ``source`` (G, K, L) the position in that row whose
    logits predict each response token and ``labels`` (G, K, L) that token (``IGNORE_INDEX`` past a response's
    end): a response's first token is predicted from the prompt's last position, which every response shares;
    ``read_out`` (G, K) where a reward model reads each response: the last of the prompt's and that response's
    tokens that is not ``pad_id`` (the rule of a row of its own, :func:`rewardsft.reward.read_out_index`).
    """
    counts = {len(responses) for _, responses in groups}
    if len(counts) != 1:
        raise ValueError(f"every row needs as many responses; got {sorted(counts)}")
    k = counts.pop()
    lengths = [len(prompt) + sum(len(r) for r in responses) for prompt, responses in groups]
    rows = tightest_packing(lengths, width) if width is not None else [[g] for g in range(len(groups))]
    row_width = max(sum(lengths[g] for g in row) for row in rows)
    longest = max((len(r) for _, responses in groups for r in responses), default=0)
    input_ids = torch.full((len(rows), row_width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), row_width), dtype=torch.long)
    document = torch.full((len(rows), row_width), -1, dtype=torch.long)
    branch = torch.zeros((len(rows), row_width), dtype=torch.long)
    row_of = torch.zeros(len(groups), dtype=torch.long)
    source = torch.zeros((len(groups), k, longest), dtype=torch.long)
    labels = torch.full((len(groups), k, longest), IGNORE_INDEX, dtype=torch.long)
    read_out = torch.zeros((len(groups), k), dtype=torch.long)
    for row, members in enumerate(rows):
        at = 0
        for doc, g in enumerate(members):
            prompt, responses = groups[g]
            if not prompt:
                raise ValueError("a shared-prefix row needs a prompt of at least one token")
            p, n, end = len(prompt), lengths[g], at + lengths[g]
            input_ids[row, at:end] = torch.tensor([*prompt, *(t for r in responses for t in r)])
            position_ids[row, at:end] = torch.tensor([*range(p), *(q for r in responses for q in range(p, p + len(r)))])
            document[row, at:end] = doc
            branch[row, at:end] = torch.tensor([0] * p + [b + 1 for b, r in enumerate(responses) for _ in r])
            row_of[g] = row
            offset = at + p
            for b, response in enumerate(responses):
                # Token j of a response sits at offset + j and is predicted from the position before it; for j = 0
                # that is the prompt's last token, whichever response it is.
                positions = [at + p - 1, *range(offset, offset + len(response) - 1)][: len(response)]
                source[g, b, : len(response)] = torch.tensor(positions, dtype=torch.long)
                labels[g, b, : len(response)] = torch.tensor(list(response), dtype=torch.long)
                seen = [
                    *((at + i, t) for i, t in enumerate(prompt)),
                    *((offset + j, t) for j, t in enumerate(response)),
                ]
                read_out[g, b] = next((i for i, t in reversed(seen) if t != pad_id), at)
                offset += len(response)
            at += n
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "document": document,
        "branch": branch,
        "row_of": row_of,
        "source": source,
        "labels": labels,
        "read_out": read_out,
    }


def collate_shared(
    triples: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """(prompt, first response, second response) triples as one row each, ``[prompt | first | second]``
    (:func:`collate_branches` with K = 2), the two responses' ``source`` and ``labels`` as ``first_*`` and
    ``second_*`` (B, L) tensors, each as wide as its own longest response."""
    batch = collate_branches([(prompt, [first, second]) for prompt, first, second in triples], pad_id)
    source, labels = batch.pop("source"), batch.pop("labels")
    batch.pop("read_out"), batch.pop("row_of")  # one group per row: row b is pair b
    for k, side in enumerate(("first", "second")):
        width = max(len(t[k + 1]) for t in triples)
        batch[f"{side}_source"], batch[f"{side}_labels"] = source[:, k, :width], labels[:, k, :width]
    return batch


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit decreasing: the indices of ``lengths`` grouped into rows of at most ``width`` tokens (a longer
    item gets a row of its own). Deterministic: ties keep their input order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        target = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
        if target is None:
            rows.append([i])
            room.append(width - lengths[i])
        else:
            rows[target].append(i)
            room[target] -= lengths[i]
    return rows


def tightest_packing(lengths: Sequence[int], max_width: int) -> list[list[int]]:
    """The :func:`pack_rows` grouping with the fewest positions (rows × fullest row) over the row widths worth
    trying: the longest item (never more positions than one row per item) and an even split of the tokens into
    1, 2, ... rows, up to ``max_width``. Packing to ``max_width`` alone can cost more than padding: a last row
    left nearly empty still has the full width."""
    longest, total = max(lengths), sum(lengths)
    widths = {longest} | {-(-total // rows) for rows in range(1, len(lengths) + 1)}
    best: list[list[int]] | None = None
    best_cost = 0
    for width in sorted(w for w in widths if longest <= w <= max(max_width, longest)):
        groups = pack_rows(lengths, width)
        cost = len(groups) * max(sum(lengths[i] for i in group) for group in groups)
        if best is None or cost < best_cost:
            best, best_cost = groups, cost
    assert best is not None  # the longest item's width is always tried
    return best


def collate_packed(
    examples: Sequence[TokenizedExample], pad_id: int, width: int | None = None
) -> dict[str, torch.Tensor]:
    """Several examples per row: ``input_ids``, ``position_ids`` restarting at each example, ``labels`` in
    :func:`collate`'s shifted layout and the ``document``/``branch`` labels of :func:`block_visibility`, each
    example seeing only itself. Rows hold up to ``width`` tokens (default, and at least: the longest example), in
    the grouping that computes the fewest positions (:func:`tightest_packing`), cut to the fullest row.

    An example's first token gets ``IGNORE_INDEX``: unpacked, nothing predicts it, and packed, the position before
    it belongs to another example."""
    groups = tightest_packing([len(ex.input_ids) for ex in examples], width or 0)
    width = max(sum(len(examples[i].input_ids) for i in group) for group in groups)
    input_ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    labels = torch.full((len(groups), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(groups), width), dtype=torch.long)
    document = torch.full((len(groups), width), -1, dtype=torch.long)
    for row, group in enumerate(groups):
        at = 0
        for doc, i in enumerate(group):
            ex = examples[i]
            n = len(ex.input_ids)
            input_ids[row, at : at + n] = torch.tensor(ex.input_ids)
            labels[row, at + 1 : at + n] = torch.tensor(ex.labels[1:], dtype=torch.long)
            position_ids[row, at : at + n] = torch.arange(n)
            document[row, at : at + n] = doc
            at += n
    branch = torch.zeros_like(document)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "labels": labels,
        "document": document,
        "branch": branch,
    }
