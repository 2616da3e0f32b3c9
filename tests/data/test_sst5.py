from __future__ import annotations

from pathlib import Path

import pytest

from reprozoo.data import sst5

SOURCE_SHA256 = {
    "train": "e2f3f41b0b1e6d4dddc0effe3bfc2d27ed8928079aa9a03d652311614fc5feb7",
    "dev": "0e9336aed6e4730e19f58d00a77b3f0297efdb755f7b5e598c98a05e3f97ea40",
    "test": "6e54806dee95cf80cd918e7dfb3f6770f6df24bf826f289a4d1f709e1c8f6761",
}


def test_fingerprint_matches_official_checksums(data_dir: Path) -> None:
    assert sst5.data_fingerprint(data_dir) == SOURCE_SHA256 == sst5.OFFICIAL_SHA256


def test_sentence_and_phrase_examples(trees) -> None:
    ex = sst5.split_examples(trees, "phrases")
    assert len(ex["train"]) == 159_274
    assert sum(ex["train"].weights) == 318_582
    # SOURCE.md: every node with duplicates, and unique spans, per class.
    assert ex["train"].class_counts() == [8245, 34362, 219788, 44194, 11993]
    assert ex["train"].class_counts(weighted=False) == [7233, 27711, 81658, 33361, 9311]
    # Dev and test are always scored on sentences.
    assert len(ex["dev"]) == 1101 and len(ex["test"]) == 2210
    assert ex["test"].class_counts() == [279, 633, 389, 510, 399]
    sentences = sst5.split_examples(trees, "sentences")["train"]
    assert len(sentences) == 8544 and sentences.class_counts() == [1092, 2218, 1624, 2322, 1288]


def test_uniform_phrase_weighting(trees) -> None:
    ex = sst5.phrase_examples(trees["dev"], weighting="uniform")
    assert set(ex.weights) == {1.0} and len(ex) == 24_772


def test_data_dir_resolution(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sst5.resolve_data_dir(str(data_dir)) == data_dir
    monkeypatch.setenv("REPROZOO_DATA_DIR", str(data_dir))
    assert sst5.resolve_data_dir(None) == data_dir
    with pytest.raises(sst5.DataSourceError, match="does not exist"):
        sst5.resolve_data_dir(str(tmp_path / "missing"))
    (tmp_path / "train.txt").write_text("(2 (2 a) (2 b))\n")
    with pytest.raises(sst5.DataSourceError, match=r"lacks dev\.txt, test\.txt"):
        sst5.resolve_data_dir(str(tmp_path))


def test_cache_is_used_before_download(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPROZOO_DATA_DIR", raising=False)
    monkeypatch.setenv("REPROZOO_CACHE_DIR", str(tmp_path))
    cached = tmp_path / "sst5" / "trees"
    cached.mkdir(parents=True)
    for split in sst5.SPLITS:
        (cached / f"{split}.txt").write_bytes((data_dir / f"{split}.txt").read_bytes())
    assert sst5.resolve_data_dir(None) == cached


def test_download_failure_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The official archive cannot be reached from here; point at a closed loopback port.
    with pytest.raises(sst5.DataSourceError, match="pass --data-dir DIR"):
        sst5.download_official(tmp_path, url="http://127.0.0.1:9/trainDevTestTrees_PTB.zip")


def _serve_archive(tmp_path: Path, data_dir: Path, corrupt: str | None):
    """A real HTTP server on loopback standing in for the Stanford site."""
    import functools
    import http.server
    import threading
    import zipfile

    with zipfile.ZipFile(tmp_path / "trainDevTestTrees_PTB.zip", "w") as zipped:
        for split in sst5.SPLITS:
            content = (data_dir / f"{split}.txt").read_bytes()
            zipped.writestr(f"trees/{split}.txt", content + b"\n" if split == corrupt else content)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/trainDevTestTrees_PTB.zip"


@pytest.mark.parametrize("corrupt", [None, "dev"])
def test_download_verifies_checksums(tmp_path: Path, data_dir: Path, corrupt: str | None) -> None:
    server, url = _serve_archive(tmp_path, data_dir, corrupt)
    try:
        if corrupt:
            with pytest.raises(sst5.DataSourceError, match="dev.txt has sha256"):
                sst5.download_official(tmp_path / "out", url=url)
            assert not (tmp_path / "out" / "dev.txt").exists()
        else:
            target = sst5.download_official(tmp_path / "out", url=url)
            assert sst5.data_fingerprint(target) == SOURCE_SHA256
    finally:
        server.shutdown()
