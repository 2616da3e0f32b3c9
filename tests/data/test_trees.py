from __future__ import annotations

from pathlib import Path

import pytest

from reprozoo.data.trees import MissingSplitError, TreeFormatError, detokenize, parse_tree, read_trees


def test_real_split_sizes(trees) -> None:
    assert [len(trees[s]) for s in ("train", "dev", "test")] == [8544, 1101, 2210]
    assert sum(len(t.spans) for t in trees["train"]) == 318_582
    assert sum(len(t.tokens) for t in trees["train"]) == 163_563
    assert len({tokens for t in trees["train"] for tokens, _ in t.phrases()}) == 159_274


def test_binary_trees_and_root_spans(trees) -> None:
    for tree in trees["dev"]:
        assert len(tree.spans) == 2 * len(tree.tokens) - 1
        assert tree.spans[-1] == (0, len(tree.tokens), tree.label)


def test_leaf_with_space_is_one_token() -> None:
    tree = parse_tree("(2 (2 like) (2 8 1\\/2))")
    assert tree.tokens == ("like", "8 1\\/2")
    assert detokenize(tree.tokens) == "like 8 1/2"


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("(3 (2 a) (4 film)", "never closed"),
        (") (2 a)", "unbalanced ')'"),
        ("(3 (2 a) (4 film)))", "text after the end"),
        ("(7 (2 a) (4 film))", "label 7 is outside 0-4"),
        ("(x (2 a) (4 film))", "expected a label 0-4"),
        ("(3 (2 a) (4 film) (2 b))", "3 children"),
        ("(3 (2 a) (4 film)) (2 b)", "text after the end"),
        ("(3 (2 a) word (4 film))", "unexpected 'word'"),
        ("   ", "empty line"),
    ],
)
def test_malformed_tree_errors_name_the_place(line: str, fragment: str) -> None:
    with pytest.raises(TreeFormatError, match="where.txt:7") as err:
        parse_tree(line, "where.txt:7")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_line_in_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("(3 (2 a) (4 film))\n(2 (2 broken)\n")
    with pytest.raises(TreeFormatError, match=rf"{path}:2: "):
        read_trees(path)


def test_missing_empty_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(MissingSplitError, match="no such split file"):
        read_trees(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(TreeFormatError, match="empty"):
        read_trees(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"(3 (2 a) (4 film))\n(2 (2 caf\xe9) (2 .))\n")
    with pytest.raises(TreeFormatError, match=rf"{latin}:2: bytes that are not UTF-8"):
        read_trees(latin)


def test_binary_labels_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sst2.txt"
    path.write_text("".join(f"({i % 2} (1 good) (0 film))\n" for i in range(120)))
    with pytest.raises(TreeFormatError, match="binary SST-2"):
        read_trees(path)


@pytest.mark.parametrize(
    ("tokens", "text"),
    [
        (["It", "'s", "a", "film", "."], "It's a film."),
        (["do", "n't", "go"], "don't go"),
        (["ca", "n't", "stop", ",", "wo", "n't", "stop"], "can't stop, won't stop"),
        (["the", "-LRB-", "Woo", "'s", "-RRB-", "best"], "the (Woo's) best"),
        (["``", "Hi", "''", "she", "said"], '"Hi" she said'),
        (["a", "`", "tweener", "'", "--", "too", "slick", "..."], "a 'tweener' -- too slick..."),
        (["good\\/bad", "\\*\\*\\*"], "good/bad ***"),
        (["we", "'re", "$", "5", "short"], "we're $5 short"),
    ],
)
def test_detokenize(tokens: list[str], text: str) -> None:
    assert detokenize(tokens) == text


def test_detokenize_leaves_no_ptb_markup(trees) -> None:
    for tree in trees["dev"]:
        text = detokenize(tree.tokens)
        assert "-LRB-" not in text and "``" not in text and " n't" not in text and "\\/" not in text


@pytest.mark.parametrize("edit", ["bom", "crlf", "trailing blank lines", "all three"])
def test_tree_files_as_editors_save_them_read_as_the_same_trees(data_dir: Path, tmp_path: Path, edit: str) -> None:
    original = (data_dir / "dev.txt").read_bytes()
    text = original
    if edit in ("crlf", "all three"):
        text = text.replace(b"\n", b"\r\n")
    if edit in ("trailing blank lines", "all three"):
        text += b"\r\n\n  \n" if edit == "all three" else b"\n\n \n"
    if edit in ("bom", "all three"):
        text = b"\xef\xbb\xbf" + text
    edited = tmp_path / "dev.txt"
    edited.write_bytes(text)
    assert read_trees(edited) == read_trees(data_dir / "dev.txt")


@pytest.mark.parametrize(("content", "where"), [
    (b"\xef\xbb\xbf(2 (2 a) (2 film))\r\n\r\n(3 good)\r\n", ":2: empty line"),  # a blank line inside is still an error
    (b"(2 (2 a) (2 film))\r\n(3 (2 a)\r\n\n", ":2: unbalanced '('"),
    (b"(2 (2 a) (2 film))\n\xef\xbb\xbf(3 good)\n", ":2: unexpected '\\ufeff'"),  # a mark in the middle is no byte-order mark
])
def test_other_defects_still_name_file_and_line(tmp_path: Path, content: bytes, where: str) -> None:
    path = tmp_path / "train.txt"
    path.write_bytes(content)
    with pytest.raises(TreeFormatError) as raised:
        read_trees(path)
    assert str(raised.value).startswith(f"{path}{where}"), str(raised.value)
