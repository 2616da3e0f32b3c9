"""SST-5 as training examples: where the files come from, splits, granularities, class counts.

Dev and test are always scored on whole sentences (the standard SST-5 protocol); only the
training split has a `phrases` granularity, where every labelled node is an example,
deduplicated by text with its occurrence count kept as a loss weight.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from reprozoo.cache import cache_root
from reprozoo.data.trees import NUM_LABELS, Tree, detokenize, read_trees
from reprozoo.errors import UserError
from reprozoo.provenance import file_sha256

SPLITS = ("train", "dev", "test")
OFFICIAL_URL = "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"
# sha256 of the three files inside the official archive (see shared/data/sst5/SOURCE.md).
OFFICIAL_SHA256 = {
    "train": "e2f3f41b0b1e6d4dddc0effe3bfc2d27ed8928079aa9a03d652311614fc5feb7",
    "dev": "0e9336aed6e4730e19f58d00a77b3f0297efdb755f7b5e598c98a05e3f97ea40",
    "test": "6e54806dee95cf80cd918e7dfb3f6770f6df24bf826f289a4d1f709e1c8f6761",
}


class DataSourceError(UserError, RuntimeError):
    """No usable copy of the SST-5 trees; the message says where to put one."""


@dataclass(frozen=True)
class Examples:
    """Parallel lists: detokenised text, label 0-4, weight (occurrence count, or 1)."""

    texts: list[str]
    labels: list[int]
    weights: list[float]

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self, weighted: bool = True) -> list[float]:
        counts = [0.0] * NUM_LABELS
        for label, weight in zip(self.labels, self.weights, strict=True):
            counts[label] += weight if weighted else 1.0
        return counts


def resolve_data_dir(data_dir: str | None, download: bool = True) -> Path:
    """--data-dir / $REPROZOO_DATA_DIR, then the local cache, else download and verify."""
    explicit = data_dir or os.environ.get("REPROZOO_DATA_DIR")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise DataSourceError(f"data directory {path} does not exist; pass --data-dir DIR holding train.txt, dev.txt, test.txt")
        missing = [f"{split}.txt" for split in SPLITS if not (path / f"{split}.txt").is_file()]
        if missing:
            raise DataSourceError(f"{path} lacks {', '.join(missing)}; it must hold the PTB trees train.txt, dev.txt, test.txt")
        return path
    cached = cache_root() / "sst5" / "trees"
    if all((cached / f"{split}.txt").is_file() for split in SPLITS):
        return cached
    if not download:
        raise DataSourceError("no SST-5 data: pass --data-dir DIR or set REPROZOO_DATA_DIR")
    return download_official(cached)


def download_official(target: Path, url: str = OFFICIAL_URL) -> Path:
    """Fetch the official archive and keep its three tree files only if their sha256 match."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            archive = response.read()
    except OSError as err:
        raise DataSourceError(
            f"cannot download SST-5 from {url} ({err}); pass --data-dir DIR or set REPROZOO_DATA_DIR"
        ) from None
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        for split in SPLITS:
            content = zipped.read(f"trees/{split}.txt")
            digest = hashlib.sha256(content).hexdigest()
            if digest != OFFICIAL_SHA256[split]:
                raise DataSourceError(f"downloaded {split}.txt has sha256 {digest}, expected {OFFICIAL_SHA256[split]}; not used")
            tmp = target / f".{split}.txt.tmp"
            tmp.write_bytes(content)
            tmp.replace(target / f"{split}.txt")
    return target


def data_fingerprint(data_dir: Path) -> dict[str, str]:
    return {split: file_sha256(data_dir / f"{split}.txt") for split in SPLITS}


def load_trees(data_dir: Path) -> dict[str, list[Tree]]:
    return {split: read_trees(data_dir / f"{split}.txt") for split in SPLITS}


def sentence_examples(trees: list[Tree]) -> Examples:
    return Examples([detokenize(t.tokens) for t in trees], [t.label for t in trees], [1.0] * len(trees))


def phrase_examples(trees: list[Tree], weighting: str = "count") -> Examples:
    """Every labelled node, deduplicated by its span text, in first-seen order."""
    counts: Counter[tuple[str, ...]] = Counter()
    labels: dict[tuple[str, ...], int] = {}
    for tree in trees:
        for tokens, label in tree.phrases():
            counts[tokens] += 1
            labels.setdefault(tokens, label)
    texts = [detokenize(tokens) for tokens in counts]
    weights = [float(c) if weighting == "count" else 1.0 for c in counts.values()]
    return Examples(texts, list(labels.values()), weights)


def split_examples(trees: dict[str, list[Tree]], granularity: str, weighting: str = "count") -> dict[str, Examples]:
    train = phrase_examples(trees["train"], weighting) if granularity == "phrases" else sentence_examples(trees["train"])
    return {"train": train, "dev": sentence_examples(trees["dev"]), "test": sentence_examples(trees["test"])}


# Bumped when the tokenized cache's layout changes.
CACHE_FORMAT = 1


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Calling the tokenizer sets its truncation/padding state; that is not its identity.
        state.pop("truncation", None)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{text}".encode()).hexdigest()


def token_cache_path(cfg, data_sha256: dict[str, str], tokenizer, max_length: int) -> Path:
    """Where the splits of these trees (by sha256), tokenized by this tokenizer, are cached (a DataConfig `cfg`).
    Here, not in data.module, so that train.prepare can parse new trees before Lightning is imported."""
    # Fingerprint before tokenising: calling the tokenizer changes its truncation state.
    fields = {"format": CACHE_FORMAT, "data": data_sha256, "granularity": cfg.granularity,
              "weighting": cfg.phrase_weighting, "tokenizer": tokenizer_fingerprint(tokenizer), "max_length": max_length}
    if cfg.limit_train_samples is not None or cfg.limit_eval_samples is not None:
        # Only the kept examples are tokenized (data.module); an unlimited run's key is unchanged.
        fields["limits"] = [cfg.limit_train_samples, cfg.limit_eval_samples]
    key = json.dumps(fields, sort_keys=True)
    return cache_root() / "tokens" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
