from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from reprozoo import zoo
from reprozoo.config import DataConfig
from reprozoo.data.module import (
    Collator,
    LengthGroupedSampler,
    SST5DataModule,
    TokenBudgetBatchSampler,
    TokenizedDataset,
    TokenizedSplit,
)
from reprozoo.data.sst5 import data_fingerprint
from reprozoo.resume import atomic_torch_save


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(zoo.resolve_weights(zoo.get("all-minilm-l6-v2")).path))


def make_module(data_dir: Path, tokenizer, **overrides) -> SST5DataModule:
    cfg = DataConfig(**{"limit_eval_samples": 50, **overrides})
    return SST5DataModule(cfg, data_dir, data_fingerprint(data_dir), tokenizer, max_length=64, batch_size=16, seed=1)


def test_sampler_groups_lengths_and_is_deterministic() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (1000,), generator=g)
    labels = torch.randint(0, 5, (1000,), generator=g)
    sampler = LengthGroupedSampler(lengths, labels, batch_size=32, seed=3, mega_batches=4)
    first = list(sampler)
    assert sorted(first) == list(range(1000)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    batches = sampler.batches()
    assert all(len(b) == 32 for b in batches[:-1]) and len(batches[-1]) == 1000 % 32
    spread = sum(int(lengths[b].max() - lengths[b].min()) for b in batches) / len(batches)
    perm = torch.randperm(1000, generator=g)
    random_spread = sum(int(lengths[perm[i : i + 32]].max() - lengths[perm[i : i + 32]].min()) for i in range(0, 992, 32)) / 31
    assert spread < random_spread / 3  # sorted mega-batches: lengths within a batch are close


def test_balanced_sampler_evens_out_classes() -> None:
    labels = torch.tensor([2] * 900 + [0] * 50 + [1] * 50)
    sampler = LengthGroupedSampler(torch.full((1000,), 5), labels, batch_size=10, seed=0, class_balanced=True)
    counts = torch.bincount(labels[list(sampler)], minlength=5)[:3].float()
    assert (counts / counts.sum() - 1 / 3).abs().max() < 0.06


def test_collator_pads_dynamically_on_either_side() -> None:
    items = [(torch.tensor([5, 6, 7], dtype=torch.int32), 1, 1.0), (torch.tensor([8], dtype=torch.int32), 4, 2.0)]
    right = Collator(pad_id=0, pad_left=False)(items)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]] and right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = Collator(pad_id=9, pad_left=True)(items)
    assert left["input_ids"].tolist() == [[5, 6, 7], [9, 9, 8]]
    assert right["labels"].tolist() == [1, 4] and right["weights"].tolist() == [1.0, 2.0]


def test_a_limited_run_tokenizes_only_the_examples_it_keeps(data_dir: Path, tokenizer, fresh_cache: Path) -> None:
    """The same tensors as the whole splits cut to the limits, from a cache entry of their own."""
    full = make_module(data_dir, tokenizer, granularity="phrases", limit_eval_samples=None)
    limited = make_module(data_dir, tokenizer, granularity="phrases", limit_train_samples=32, limit_eval_samples=16)
    assert limited.cache_path != full.cache_path
    for module in (full, limited):
        module.prepare_data()
        module.setup()
    stored = torch.load(limited.cache_path, weights_only=True)
    assert [len(stored[name]["labels"]) for name in ("train", "dev", "test")] == [32, 16, 16]
    for name, k in (("train", 32), ("dev", 16), ("test", 16)):
        want, got = full.splits[name].subset(k), limited.splits[name]
        for field in ("ids", "offsets", "labels", "weights"):
            assert torch.equal(getattr(got, field), getattr(want, field)), (name, field)


def test_tokenisation_cache_is_reused(data_dir: Path, tokenizer, fresh_cache: Path) -> None:
    first = make_module(data_dir, tokenizer, granularity="sentences")
    first.prepare_data()
    assert first.cache_hit is False and first.cache_path.is_file() and first.cache_path.parent.parent == fresh_cache
    second = make_module(data_dir, tokenizer, granularity="sentences")
    second.prepare_data()
    assert second.cache_hit is True and second.cache_path == first.cache_path
    other = make_module(data_dir, tokenizer, granularity="phrases")
    assert other.cache_path != first.cache_path
    second.setup()
    train = second.splits["train"]
    assert len(train.labels) == 8544 and len(second.splits["dev"].labels) == 50
    ids = train.ids[train.offsets[0] : train.offsets[1]].tolist()
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    batch = next(iter(second.train_dataloader()))
    assert batch["input_ids"].shape[0] == 16 and batch["attention_mask"][:, 0].all()


def test_limit_takes_a_class_mixed_subset(data_dir: Path, tokenizer) -> None:
    module = make_module(data_dir, tokenizer, granularity="sentences", limit_train_samples=300)
    module.prepare_data()
    module.setup()
    labels = module.splits["train"].labels
    assert len(labels) == 300 and torch.bincount(labels, minlength=5).min() > 20  # the file is sorted by label


def test_atomic_save_under_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "cache.pt"
    payloads = [{"x": torch.full((200_000,), float(i))} for i in range(4)]
    threads = [threading.Thread(target=atomic_torch_save, args=(p, path)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded = torch.load(path, weights_only=True)["x"]
    assert loaded.unique().numel() == 1  # one writer's whole file, never a mix
    assert not list(tmp_path.glob(".*tmp"))


def test_subset_keeps_ragged_layout() -> None:
    split = TokenizedSplit(torch.arange(10, dtype=torch.int32), torch.tensor([0, 2, 5, 6, 10]), torch.tensor([0, 1, 2, 3]),
                           torch.ones(4))
    sub = split.subset(2)
    assert len(sub.labels) == 2
    for i in range(2):
        row = sub.ids[sub.offsets[i] : sub.offsets[i + 1]].tolist()
        j = split.labels.tolist().index(int(sub.labels[i]))
        assert row == split.ids[split.offsets[j] : split.offsets[j + 1]].tolist()


def test_token_budget_batches_cover_every_example_once_within_budget() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (2000,), generator=g)
    labels = torch.randint(0, 5, (2000,), generator=g)
    sampler = LengthGroupedSampler(lengths, labels, batch_size=16, seed=3, max_tokens=256)
    batches = TokenBudgetBatchSampler(sampler)
    first = list(batches)
    assert sorted(i for b in first for i in b) == list(range(2000)) and first == list(batches) and len(batches) == len(first)
    assert all(len(b) * int(lengths[b].max()) <= 256 for b in first)
    short = [len(b) for b in first if int(lengths[b].max()) <= 8]
    long = [len(b) for b in first if int(lengths[b].min()) >= 40]
    assert min(short) > max(long)  # short examples come in bigger batches
    real = sum(int(lengths[b].sum()) for b in first)
    assert real / sum(len(b) * int(lengths[b].max()) for b in first) > 0.9  # little padding
    sampler.set_epoch(1)
    assert list(batches) != first


def test_batched_fetch_collates_like_the_per_item_path() -> None:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 12, (30,), generator=g)
    offsets = torch.zeros(31, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    split = TokenizedSplit(torch.randint(5, 999, (int(offsets[-1]),), dtype=torch.int32, generator=g), offsets,
                           torch.randint(0, 5, (30,), generator=g), torch.rand(30, generator=g))
    dataset = TokenizedDataset(split)
    index = [7, 0, 29, 3, 3]
    for pad_left in (False, True):
        collate = Collator(pad_id=1, pad_left=pad_left)
        slow, fast = collate([dataset[i] for i in index]), collate(dataset.__getitems__(index))
        assert slow.keys() == fast.keys()
        for key in slow:
            assert slow[key].dtype == fast[key].dtype and torch.equal(slow[key], fast[key]), key
