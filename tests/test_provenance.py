from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reprozoo import provenance
from reprozoo.provenance import REDACTED, redact, redact_obj


def test_redact_masks_env_secrets_url_credentials_and_token_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz0123456789")
    monkeypatch.setenv("MY_DB_PASSWORD", "correct-horse-battery")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # named like a secret, but not one: must survive
    text = ("login with hf_abcdefghijklmnopqrstuvwxyz0123456789 and correct-horse-battery\n"
            "pkg @ git+https://bob:s3cr3t@example.com/pkg.git\n"
            "+CLEARML_API_SECRET_KEY = 'ABCDEFGH12345'\n"
            "+    tokenizer = AutoTokenizer.from_pretrained(path)\n"
            "other ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 parallelism false\n")
    out = redact(text)
    for secret in ("hf_abcdef", "correct-horse", "s3cr3t", "ABCDEFGH12345", "ghp_ABC"):
        assert secret not in out
    assert "tokenizer = AutoTokenizer.from_pretrained(path)" in out  # code in a diff stays intact
    assert "parallelism false" in out
    assert out.count(REDACTED) == 5  # user:password@ is masked as one


def test_redact_obj_masks_values_and_secret_named_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    data = {"tracking": {"task_name": "run-0123456789abcdef"}, "hf_token": "abc", "lr": 1e-4,
            "items": ["x", None, "hf_NotInTheEnvironmentZYXWVUTSRQPONMLKJIH"]}
    assert redact_obj(data) == {"tracking": {"task_name": f"run-{REDACTED}"}, "hf_token": REDACTED, "lr": 1e-4,
                                "items": ["x", None, REDACTED]}


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_git_state_records_commit_branch_diff_and_untracked(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q", "-b", "feature")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-qm", "one")
    clean = provenance.git_state(tmp_path)
    assert clean.branch == "feature" and len(clean.commit) == 40 and not clean.dirty and clean.untracked == []
    assert clean.repository == f"file://{tmp_path}"  # no remote: the path, honestly
    _git(tmp_path, "remote", "add", "origin", "https://user:pat123456@example.com/org/repo.git")
    (tmp_path / "a.py").write_text("x = 2\n")
    (tmp_path / "new.py").write_text("y = 1\n")
    dirty = provenance.git_state(tmp_path)
    assert dirty.dirty and "-x = 1\n+x = 2" in dirty.diff and dirty.untracked == ["new.py"]
    assert dirty.repository == f"https://{REDACTED}@example.com/org/repo.git"
    assert subprocess.run(["git", "-C", str(tmp_path), "apply", "--check", "-R"], input=dirty.diff, text=True).returncode == 0


def _repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q")
    _git(path, "config", "user.email", "t@example.com")
    _git(path, "config", "user.name", "t")
    return path


LOOKS_SECRET = ('MAX_TOKENS_PER_BATCH = 4096\nTOKEN_ENV = "HF_TOKEN"\nTOKENIZERS_PARALLELISM="false"\n'
                'API_KEY_NAME = "CLEARML_API_SECRET_KEY"\npassword_prompt = "Password: "\n')


def test_names_that_look_like_secrets_are_recorded_as_they_are_and_replay(tmp_path: Path) -> None:
    """Issue 31, case 4: the diff is recorded unmasked; `redact`'s assignment heuristic would rewrite code
    (`MAX_TOKENS_PER_BATCH = ***`, `TOKEN_ENV = "***"`) and the replay would fail or run other code."""
    repo = _repo(tmp_path / "repo")
    (repo / "settings.py").write_text("x = 1\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    replay = tmp_path / "replay"
    subprocess.run(["git", "clone", "-q", str(repo), str(replay)], check=True)
    (repo / "settings.py").write_text("x = 1\n" + LOOKS_SECRET)
    state = provenance.git_state(repo)
    assert "+MAX_TOKENS_PER_BATCH = 4096\n+TOKEN_ENV = \"HF_TOKEN\"\n" in state.diff and REDACTED not in state.diff
    applied = subprocess.run(["git", "-C", str(replay), "apply"], input=state.diff, text=True, capture_output=True)
    assert applied.returncode == 0, applied.stderr
    assert (replay / "settings.py").read_bytes() == (repo / "settings.py").read_bytes()


@pytest.mark.parametrize(("line", "what"), [
    ('HF = "hf_abcdefghijklmnopqrstuvwxyz0123456789"\n', "the value of $HF_TOKEN"),
    ("client = Client(token='correct-horse-battery')\n", "the value of $MY_DB_PASSWORD"),
    ("GH = 'ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'\n", "a token of the shape ghp_…"),
])
def test_a_real_secret_in_the_uncommitted_changes_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str,
                                                                  what: str) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz0123456789")
    monkeypatch.setenv("MY_DB_PASSWORD", "correct-horse-battery")
    repo = _repo(tmp_path / "repo")
    (repo / "src").mkdir()
    (repo / "src" / "train.py").write_text("a = 1\nb = 2\nc = 3\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    (repo / "src" / "train.py").write_text("a = 1\nb = 2\n" + line + "c = 3\n")
    with pytest.raises(provenance.ConfigError) as raised:
        provenance.git_state(repo)
    message = str(raised.value)
    assert message.startswith(f"the uncommitted changes hold a secret at src/train.py:3 ({what})"), message
    assert "read it from the environment instead" in message and "\n" not in message
    assert "correct-horse" not in message and "abcdefghijkl" not in message and "ABCDEFGHIJ" not in message
    # An untracked source file is recorded too, so it is checked too.
    (repo / "src" / "train.py").write_text("a = 1\nb = 2\nc = 3\n")
    (repo / "src" / "keys.py").write_text(line)
    with pytest.raises(provenance.ConfigError, match=r"at src/keys.py:1 "):
        provenance.git_state(repo)


def test_a_binary_change_is_recorded_and_replays(tmp_path: Path) -> None:
    """Issue 17, case 8: `git diff` without --binary records "Binary files differ", which no replay applies."""
    repo = _repo(tmp_path / "repo")
    (repo / "vocab.bin").write_bytes(bytes(range(256)) * 4)
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    changed = bytes(reversed(range(256))) * 4 + b"\x00\xff"
    (repo / "vocab.bin").write_bytes(changed)
    (repo / "a.py").write_text("x = 2\n")
    state = provenance.git_state(repo)
    replay = tmp_path / "replay"
    _git(tmp_path, "clone", "-q", str(repo), str(replay))
    applied = subprocess.run(["git", "-C", str(replay), "apply"], input=state.diff, text=True, capture_output=True)
    assert applied.returncode == 0, applied.stderr
    assert (replay / "vocab.bin").read_bytes() == changed and (replay / "a.py").read_text() == "x = 2\n"
    assert state.error == ""


def test_untracked_source_files_are_captured_and_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17, case 8: an untracked module the run imports travels in the diff (listed alone, the replay
    would fail or run other code); other untracked files stay a list."""
    repo = _repo(tmp_path / "repo")
    (repo / "src" / "pkg").mkdir(parents=True)
    (repo / "src" / "pkg" / "__init__.py").write_text("from pkg.helper import VALUE\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    (repo / "src" / "pkg" / "helper.py").write_text("VALUE = 42\n")
    (repo / "src" / "pkg" / "table.bin").write_bytes(bytes(range(256)))
    (repo / "notes.txt").write_text("not code\n")
    state = provenance.git_state(repo)
    assert state.untracked == ["notes.txt"] and state.dirty
    replay = tmp_path / "replay"
    _git(tmp_path, "clone", "-q", str(repo), str(replay))
    applied = subprocess.run(["git", "-C", str(replay), "apply"], input=state.diff, text=True, capture_output=True)
    assert applied.returncode == 0, applied.stderr
    assert (replay / "src" / "pkg" / "helper.py").read_text() == "VALUE = 42\n"
    assert (replay / "src" / "pkg" / "table.bin").read_bytes() == bytes(range(256))
    monkeypatch.setattr(provenance, "MAX_UNTRACKED_SOURCE_BYTES", 100)
    with pytest.raises(provenance.ConfigError, match=r"untracked file\(s\) under .* too large to record .*commit them") as refused:
        provenance.git_state(repo)
    assert "\n" not in str(refused.value)


def test_a_git_failure_is_a_warning_the_record_carries(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 17, case 8: a checkout owned by another user ("dubious ownership", e.g. mounted into a
    container) is a warning the record carries, never a silently empty code state."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the checkout to another user")
    repo = _repo(tmp_path / "mounted")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    subprocess.run(["chown", "-R", "65534:65534", str(repo)], check=True)
    state = provenance.git_state(repo)
    assert state.commit == "" and "dubious ownership" in state.error
    assert f"git config --global --add safe.directory {repo}" in state.error
    warning = [line for line in capsys.readouterr().err.splitlines() if "git failed" in line]
    assert len(warning) == 1 and "has no commit or diff" in warning[0]
    plain = tmp_path / "plain"
    plain.mkdir()
    assert provenance.git_state(plain).error == ""  # not a repository at all: no failure, nothing to warn about


def test_image_identity_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(provenance.IMAGE_ENV, raising=False)
    monkeypatch.delenv(provenance.IMAGE_DIGEST_ENV, raising=False)
    assert provenance.image_identity() == ("none", "none")
    digest = "sha256:" + "ab" * 32
    monkeypatch.setenv(provenance.IMAGE_ENV, f"ghcr.io/o/reprozoo:cpu-123@{digest}")
    assert provenance.image_identity() == ("ghcr.io/o/reprozoo:cpu-123", digest)
    monkeypatch.setenv(provenance.IMAGE_ENV, "reprozoo:cpu-123")
    monkeypatch.setenv(provenance.IMAGE_DIGEST_ENV, digest)
    assert provenance.image_identity() == ("reprozoo:cpu-123", digest)


def test_lock_file_default_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.delenv(provenance.LOCK_ENV, raising=False)
    monkeypatch.delenv(provenance.LOCK_SHA256_ENV, raising=False)
    name, sha = provenance.lock_file(str(repo))
    assert name == "envs/cpu.txt" and sha == provenance.file_sha256(repo / "envs" / "cpu.txt")
    from importlib import metadata

    lock = tmp_path / "colab.txt"
    lock.write_text(f"torch=={metadata.version('torch').split('+')[0]}\n")
    monkeypatch.setenv(provenance.LOCK_ENV, str(lock))
    assert provenance.lock_file(str(repo)) == (str(lock), provenance.file_sha256(lock))


def test_a_lock_named_by_reprozoo_lock_is_checked_against_what_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 31, case 7: $REPROZOO_LOCK (a file path; Colab's flavour with its checkout) was recorded
    with its sha256 without comparing it with the installed packages. A lock the environment does not
    match is named with sha256 "none", and the record says how it differs."""
    from importlib import metadata

    monkeypatch.delenv(provenance.LOCK_SHA256_ENV, raising=False)
    lock = tmp_path / "my.lock"
    lock.write_text(f"torch=={metadata.version('torch').split('+')[0]}\nnumpy==0.0.1\n")
    monkeypatch.setenv(provenance.LOCK_ENV, str(lock))
    assert provenance.lock_file(None) == (str(lock), provenance.NONE)
    assert provenance.environment(0, None)["lock_installed"] == f"differs: numpy: {metadata.version('numpy')}, the lock pins 0.0.1"
    # Colab: the notebook sets the flavour and the sha256 of the checkout's envs/colab.lock it installed.
    checkout = tmp_path / "checkout"
    (checkout / "envs").mkdir(parents=True)
    colab = checkout / "envs" / "colab.lock"
    colab.write_text("numpy==0.0.1\n")
    monkeypatch.setenv(provenance.LOCK_ENV, "colab")
    monkeypatch.setenv(provenance.LOCK_SHA256_ENV, provenance.file_sha256(colab))
    assert provenance.lock_file(str(checkout)) == ("envs/colab.lock", provenance.NONE)
    colab.write_text(f"numpy=={metadata.version('numpy')}\n")  # what is installed, but not the file the sha256 names
    assert provenance.lock_file(str(checkout)) == ("envs/colab.lock", provenance.NONE)
    monkeypatch.setenv(provenance.LOCK_SHA256_ENV, provenance.file_sha256(colab))
    assert provenance.lock_file(str(checkout)) == ("envs/colab.lock", provenance.file_sha256(colab))
    assert provenance.lock_state(str(checkout)).installed == "matches"


@pytest.mark.parametrize("flavour", ["cpu", "cuda", "colab"])
def test_the_lock_of_an_image_or_colab_is_recorded(flavour: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17, case 7: the image (docker/Dockerfile) and the Colab notebook set REPROZOO_LOCK to the
    flavour and REPROZOO_LOCK_SHA256 to its lock's sha256: the flavour is not a path, and the record
    names that lock and sha256, not "none"."""
    baked = "ab" * 32
    monkeypatch.setenv(provenance.LOCK_ENV, flavour)
    monkeypatch.setenv(provenance.LOCK_SHA256_ENV, baked)
    assert provenance.lock_file(None) == (f"envs/{flavour}.lock", baked)  # no checkout in an image
    assert provenance.lock_state(None).installed.startswith("not checked")
    monkeypatch.delenv(provenance.LOCK_SHA256_ENV)
    repo = Path(__file__).resolve().parents[1]
    # With the checkout's lock at hand, it is claimed only where what is installed matches it (issue 31, case 7).
    lock = repo / "envs" / f"{flavour}.lock"
    expected = provenance.NONE if provenance.lock_differences(lock) else provenance.file_sha256(lock)
    assert provenance.lock_file(str(repo)) == (f"envs/{flavour}.lock", expected)


def test_a_venv_that_drifted_from_envs_cpu_txt_claims_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    """Issue 17, case 7: outside images envs/cpu.txt is recorded only when what is installed matches it."""
    from importlib import metadata

    monkeypatch.delenv(provenance.LOCK_ENV, raising=False)
    monkeypatch.delenv(provenance.LOCK_SHA256_ENV, raising=False)
    checkout = tmp_path / "checkout"
    (checkout / "envs").mkdir(parents=True)
    torch_version = metadata.version("torch").split("+")[0]
    lock = checkout / "envs" / "cpu.txt"
    lock.write_text(f"# a lock\ntorch=={torch_version}\nnumpy=={metadata.version('numpy')} ; python_version >= '3'\n"
                    "not-on-this-os==1.0 ; sys_platform == 'nonexistent'\n")
    assert provenance.lock_file(str(checkout)) == ("envs/cpu.txt", provenance.file_sha256(lock))
    lock.write_text(lock.read_text() + "torch==1.0.0\nno-such-distribution==1.0\n")
    assert provenance.lock_differences(lock) == [f"torch: {metadata.version('torch')}, the lock pins 1.0.0",
                                                 "no-such-distribution: not installed, the lock pins 1.0"]
    assert provenance.lock_file(str(checkout)) == ("envs/cpu.txt", provenance.NONE)
    warning = [line for line in capsys.readouterr().err.splitlines() if "is not envs/cpu.txt" in line]
    assert len(warning) == 1 and "+1 more" in warning[0] and "make setup" in warning[0]


def test_environment_fingerprint_fields() -> None:
    env = provenance.environment(seed=7, root=None)
    for key in ("image", "image_digest", "lock_file", "lock_sha256", "python", "torch", "cuda", "cudnn", "transformers",
                "lightning", "gpu_model", "gpu_count", "cpu_model", "seed", "determinism"):
        assert key in env, key
    assert env["seed"] == 7 and env["transformers"] != "none" and env["cpu_model"]
    assert "torch==" in provenance.pip_freeze() and "clearml==" in provenance.pip_freeze()


def test_git_state_without_git_uses_the_image_revision(tmp_path, monkeypatch) -> None:
    """Inside the image there is neither a checkout nor a git binary: the baked-in revision is recorded."""
    from reprozoo import provenance

    # A real checkout, dirty, so that with git on PATH the answer would be its commit and diff.
    repo = _repo(tmp_path / "checkout")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-qm", "one")
    (repo / "a.py").write_text("x = 2\n")
    assert provenance.git_state(repo).dirty
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no git on PATH
    monkeypatch.setenv("REPROZOO_REVISION", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("REPROZOO_SOURCE", "https://example.org/reprozoo.git")
    state = provenance.git_state(repo)
    assert state.commit == "0123456789abcdef0123456789abcdef01234567"
    assert state.repository == "https://example.org/reprozoo.git" and not state.dirty and state.error == ""


def test_setting_names_with_tokens_are_not_secrets() -> None:
    from reprozoo.provenance import SECRET_NAME_RE

    for secret in ("HF_TOKEN", "GITHUB_TOKEN", "access_token", "CLEARML_API_SECRET_KEY", "DB_PASSWORD"):
        assert SECRET_NAME_RE.search(secret), secret
    for setting in ("max_tokens", "TOKENIZERS_PARALLELISM", "max_length"):
        assert not SECRET_NAME_RE.search(setting), setting
