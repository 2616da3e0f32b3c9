"""SST5DataModule: tokenisation cached on disk, length-grouped (optionally class-balanced)
sampling, dynamic padding.

The cache is keyed by (data sha256, granularity, tokenizer fingerprint, max length) and written
atomically (temporary file + rename), so concurrent runs never read a torn file and a second
run skips tokenisation entirely. `prepare_data` (one process per node) fills the cache and
`setup` (every rank) reads it, as Lightning expects under DDP.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from reprozoo.config import ConfigError, DataConfig
from reprozoo.data.sst5 import Examples, load_trees, split_examples, token_cache_path
from reprozoo.resume import ResumableDataLoader, atomic_torch_save


def subset_indices(n: int, k: int | None) -> torch.Tensor | None:
    """Which k of n examples a limited run keeps (TokenizedSplit.subset), sorted; None: all of them."""
    if k is None or k >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(20131018))[:k].sort().values


@dataclass
class TokenizedSplit:
    """Ragged token ids stored flat: example i is ids[offsets[i]:offsets[i+1]]."""

    ids: torch.Tensor  # int32
    offsets: torch.Tensor  # int64, len n+1
    labels: torch.Tensor  # int64
    weights: torch.Tensor  # float32

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def subset(self, k: int | None) -> TokenizedSplit:
        """A fixed random subset of k examples (the files are sorted by label, so the first k
        would be one-sided); the same k examples for every run seed, in file order."""
        keep = subset_indices(len(self.labels), k)
        if keep is None:
            return self
        lengths = self.lengths[keep]
        offsets = torch.zeros(k + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        ids = torch.cat([self.ids[self.offsets[i] : self.offsets[i + 1]] for i in keep.tolist()])
        return TokenizedSplit(ids, offsets, self.labels[keep], self.weights[keep])

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"ids": self.ids, "offsets": self.offsets, "labels": self.labels, "weights": self.weights}


class TokenizedDataset(Dataset):
    def __init__(self, split: TokenizedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, float]:
        s = self.split
        return s.ids[s.offsets[index] : s.offsets[index + 1]], int(s.labels[index]), float(s.weights[index])

    def __getitems__(self, indices: list[int]) -> Rows:
        """The DataLoader's batched fetch: one `Rows` for the whole batch instead of one tuple per
        example, so `Collator` pads with a few tensor ops rather than a Python loop."""
        return Rows(self.split, torch.as_tensor(indices, dtype=torch.int64))


@dataclass
class Rows:
    """A batch as (split, example indices); `Collator` turns it into padded tensors."""

    split: TokenizedSplit
    index: torch.Tensor


def tokenize(examples: Examples, tokenizer, max_length: int) -> TokenizedSplit:
    encoded = tokenizer(examples.texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.int64)
    offsets = torch.zeros(len(encoded) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    flat = torch.tensor([i for ids in encoded for i in ids], dtype=torch.int32)
    return TokenizedSplit(flat, offsets, torch.tensor(examples.labels, dtype=torch.int64),
                          torch.tensor(examples.weights, dtype=torch.float32))


class LengthGroupedSampler(Sampler[int]):
    """Shuffle, cut into mega-batches, sort each by length, then shuffle whole batches.

    Batches hold examples of similar length (little padding) while the order stays random.
    With `class_balanced`, each epoch draws its examples (with replacement) so that every
    class is equally likely. Yields indices so that every `batch_size` consecutive ones form a
    batch; the one partial batch comes last. Deterministic in (seed, epoch).

    With `max_tokens`, batches are cut by a token budget instead (`TokenBudgetBatchSampler`):
    each holds as many examples as fit in `max_tokens` padded tokens, so short phrases come
    in large batches and long sentences in small ones.
    """

    def __init__(self, lengths: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                 class_balanced: bool = False, mega_batches: int = 50, max_tokens: int | None = None,
                 num_replicas: int = 1, rank: int = 0) -> None:
        self.lengths, self.labels = lengths, labels
        # DDP: every rank draws the same epoch (same seed) and trains on every num_replicas-th batch,
        # all ranks the same number of batches (a DistributedSampler would re-cut our length-grouped
        # batches into per-example shards).
        self.num_replicas, self.rank = num_replicas, rank
        self.batch_size, self.seed, self.class_balanced = batch_size, seed, class_balanced
        self.mega = batch_size * mega_batches
        self.max_tokens = max_tokens
        if max_tokens is not None:
            # A mega-batch of ~2*mega_batches batches' worth of tokens: sorting that many examples
            # leaves <2% padding on SST-5 phrases (50 batches: ~8%), and the order stays random.
            mean = max(1.0, float(lengths.float().mean())) if len(lengths) else 1.0
            self.mega = max(1, int(2 * mega_batches * max_tokens / mean))
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next pass over `epoch` skips its first `batches_done` batches (exact resume)."""
        self._resume = (epoch, batches_done)

    def epoch_batches(self) -> list[list[int]]:
        """This epoch's batches, less those already done when resuming mid-epoch."""
        skip = 0
        if self._resume is not None:
            epoch, done = self._resume
            self._resume = None
            skip = done if epoch == self.epoch else 0
        return self.rank_batches()[skip:]

    def rank_batches(self) -> list[list[int]]:
        """This rank's share of the epoch's batches (all of them on one device)."""
        batches = self.batches()
        if self.num_replicas == 1:
            return batches
        per_rank = len(batches) // self.num_replicas  # equal step counts: DDP ranks must not wait on each other
        return batches[self.rank :: self.num_replicas][:per_rank]

    def __len__(self) -> int:
        return len(self.lengths) if self.num_replicas == 1 else sum(len(b) for b in self.rank_batches())

    def batches(self) -> list[list[int]]:
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.lengths)
        if self.class_balanced:
            per_class = torch.bincount(self.labels, minlength=5).clamp(min=1).double()
            probs = (1.0 / per_class)[self.labels]
            order = torch.multinomial(probs, n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        batches: list[list[int]] = []
        for start in range(0, n, self.mega):
            chunk = order[start : start + self.mega]
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
            if self.max_tokens is None:
                batches.extend(chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size))
            else:
                batches.extend(_cut_by_tokens(chunk.tolist(), self.lengths[chunk].tolist(), self.max_tokens))
        if self.max_tokens is None:
            full = [b for b in batches if len(b) == self.batch_size]
            partial = [b for b in batches if len(b) != self.batch_size]
            result = [full[i] for i in torch.randperm(len(full), generator=g).tolist()] + partial
        else:
            result = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        self._cached = (self.epoch, result)
        return result

    def __iter__(self) -> Iterator[int]:
        for batch in self.epoch_batches():
            yield from batch


def _cut_by_tokens(indices: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Cut a list sorted by descending length into batches of at most `max_tokens` padded tokens
    (the first, longest example of a batch sets its width); at least one example per batch."""
    out: list[list[int]] = []
    i = 0
    while i < len(indices):
        size = max(1, max_tokens // max(1, lengths[i]))
        out.append(indices[i : i + size])
        i += size
    return out


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Variable-size batches from a `LengthGroupedSampler` with `max_tokens` set."""

    def __init__(self, sampler: LengthGroupedSampler) -> None:
        self.sampler = sampler  # Lightning calls sampler.set_epoch through this attribute

    def __len__(self) -> int:
        return len(self.sampler.rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.sampler.epoch_batches()


class Collator:
    """Dynamic padding to the longest example of the batch, on the tokenizer's side.

    Takes a `Rows` (the batched fetch of `TokenizedDataset`: pads with a handful of tensor
    ops) or a list of (ids, label, weight) tuples; both give the same tensors.
    """

    def __init__(self, pad_id: int, pad_left: bool) -> None:
        self.pad_id, self.pad_left = pad_id, pad_left

    def __call__(self, items: Rows | list[tuple[torch.Tensor, int, float]]) -> dict[str, torch.Tensor]:
        if isinstance(items, Rows):
            return self._collate_rows(items)
        width = max(len(ids) for ids, _, _ in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(items):
            span = slice(width - len(ids), width) if self.pad_left else slice(0, len(ids))
            input_ids[row, span] = ids.long()
            mask[row, span] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": torch.tensor([label for _, label, _ in items], dtype=torch.long),
            "weights": torch.tensor([w for _, _, w in items], dtype=torch.float32),
        }

    def _collate_rows(self, rows: Rows) -> dict[str, torch.Tensor]:
        split, index = rows.split, rows.index
        starts = split.offsets[index]
        lengths = split.offsets[index + 1] - starts
        width = int(lengths.max())
        column = torch.arange(width).unsqueeze(0)  # position within the padded row
        if self.pad_left:
            column = column - (width - lengths).unsqueeze(1)  # position within the example
        mask = (column >= 0) & (column < lengths.unsqueeze(1))
        source = (starts.unsqueeze(1) + column).clamp_(0, max(len(split.ids) - 1, 0))
        input_ids = torch.where(mask, split.ids[source].long(), self.pad_id)
        return {
            "input_ids": input_ids,
            "attention_mask": mask.long(),
            "labels": split.labels[index].long(),
            "weights": split.weights[index].float(),
        }


def _kept(examples: Examples, keep: torch.Tensor | None) -> Examples:
    if keep is None:
        return examples
    index = keep.tolist()
    return Examples([examples.texts[i] for i in index], [examples.labels[i] for i in index],
                    [examples.weights[i] for i in index])


class SST5DataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, data_dir: Path, data_sha256: dict[str, str], tokenizer,
                 max_length: int, batch_size: int, seed: int, trees: dict | None = None,
                 cache_path: Path | None = None) -> None:
        """`trees`: data_dir's trees already parsed (load_trees), else parsed here when the cache misses;
        `cache_path`: their token_cache_path, when the caller has it already (it hashes the tokenizer)."""
        super().__init__()
        self.cfg, self.data_dir, self.data_sha256 = cfg, data_dir, data_sha256
        self.tokenizer, self.max_length, self.batch_size, self.seed = tokenizer, max_length, batch_size, seed
        self.trees = trees
        self.splits: dict[str, TokenizedSplit] = {}
        self.cache_hit: bool | None = None
        self.cache_path = cache_path or token_cache_path(cfg, data_sha256, tokenizer, max_length)

    @property
    def limits(self) -> dict[str, int | None]:
        """How many examples of each split the run keeps (None: all)."""
        return {"train": self.cfg.limit_train_samples, "dev": self.cfg.limit_eval_samples, "test": self.cfg.limit_eval_samples}

    def prepare_data(self) -> None:
        path = self.cache_path
        if path.is_file():
            if self.cache_hit is None:
                self.cache_hit = True
            return
        self.cache_hit = False
        trees = self.trees if self.trees is not None else load_trees(self.data_dir)
        examples = split_examples(trees, self.cfg.granularity, self.cfg.phrase_weighting)
        # A limited run tokenizes only the examples it keeps (all 159k train phrases take seconds);
        # its cache entry is its own (token_cache_path keys the limits).
        kept = {name: _kept(ex, subset_indices(len(ex), self.limits[name])) for name, ex in examples.items()}
        tokenized = {name: tokenize(ex, self.tokenizer, self.max_length).to_dict() for name, ex in kept.items()}
        atomic_torch_save(tokenized, path)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        stored = torch.load(self.cache_path, weights_only=True)
        self.splits = {name: TokenizedSplit(**stored[name]).subset(self.limits[name]) for name in ("train", "dev", "test")}

    def class_counts(self) -> list[float]:
        split = self.splits["train"]
        return torch.bincount(split.labels, weights=split.weights.double(), minlength=5).tolist()

    def _collator(self) -> Collator:
        return Collator(self.tokenizer.pad_token_id or 0, getattr(self.tokenizer, "padding_side", "right") == "left")

    def train_dataloader(self) -> DataLoader:
        split = self.splits["train"]
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = LengthGroupedSampler(split.lengths, split.labels, self.batch_size, self.seed,
                                       class_balanced=self.cfg.imbalance == "balanced-sampler",
                                       max_tokens=self.cfg.max_tokens, num_replicas=world, rank=rank)
        workers = {"collate_fn": self._collator(), "num_workers": self.cfg.num_workers,
                   "persistent_workers": self.cfg.num_workers > 0, "generator": self._loader_generator()}
        if self.cfg.max_tokens is not None:
            if world > 1:
                raise ConfigError("data.max_tokens (token-budget batches) is single-device only; use data.batch_size with several devices")
            return ResumableDataLoader(TokenizedDataset(split), batch_sampler=TokenBudgetBatchSampler(sampler),
                                       position=sampler, progress=self._batches_done, **workers)
        return ResumableDataLoader(TokenizedDataset(split), batch_size=self.batch_size, sampler=sampler,
                                   position=sampler, progress=self._batches_done, **workers)

    def _loader_generator(self) -> torch.Generator:
        """Each loader's own: a DataLoader without one draws its workers' base seed from the global
        RNG every time an iteration starts (each epoch, each evaluation), so the dropout stream would
        depend on how many loaders had started, which a resumed run cannot replay."""
        return torch.Generator().manual_seed(self.seed)

    def _batches_done(self) -> int:
        """Batches processed in the current epoch, as the trainer's loop counts them."""
        trainer = getattr(self, "trainer", None)
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    def _eval_loader(self, name: str) -> DataLoader:
        # Not sharded under DDP (the trainer adds no DistributedSampler): every rank scores the whole
        # split, so the metrics are exact (a DistributedSampler pads shards with repeated examples).
        split = self.splits[name]
        return DataLoader(TokenizedDataset(split), batch_size=self.cfg.eval_batch_size, sampler=self.eval_order(name),
                          collate_fn=self._collator(), num_workers=self.cfg.num_workers,
                          generator=self._loader_generator())

    def eval_order(self, name: str) -> list[int]:
        """The order an evaluation loader yields `name`'s examples in: longest first (least padding)."""
        return torch.argsort(self.splits[name].lengths, descending=True, stable=True).tolist()

    def misclassified(self, name: str, predictions: list[int]) -> list[dict[str, Any]]:
        """The examples of `name` whose prediction (in eval_order; fewer with fast_dev_run, which scores one
        batch) is wrong, in file order, with their text as the tokenizer reads it back (the run keeps token
        ids, not the sentences)."""
        split, order = self.splits[name], self.eval_order(name)
        wrong = sorted((index, predicted) for index, predicted in zip(order[:len(predictions)], predictions, strict=True)
                       if predicted != int(split.labels[index]))
        return [{"index": index, "label": int(split.labels[index]), "predicted": predicted,
                 "text": self.tokenizer.decode(split.ids[split.offsets[index]:split.offsets[index + 1]].tolist(),
                                               skip_special_tokens=True)} for index, predicted in wrong]

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("dev")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
