from __future__ import annotations

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
    name, sha = provenance.lock_file(str(repo))
    assert name == "envs/cpu.txt" and sha == provenance.file_sha256(repo / "envs" / "cpu.txt")
    lock = tmp_path / "colab.txt"
    lock.write_text("torch==2.13.0\n")
    monkeypatch.setenv(provenance.LOCK_ENV, str(lock))
    assert provenance.lock_file(str(repo)) == (str(lock), provenance.file_sha256(lock))


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

    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    monkeypatch.setenv("REPROZOO_REVISION", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("REPROZOO_SOURCE", "https://example.org/reprozoo.git")
    state = provenance.git_state(tmp_path)
    assert state.commit == "0123456789abcdef0123456789abcdef01234567"
    assert state.repository == "https://example.org/reprozoo.git" and not state.dirty


def test_setting_names_with_tokens_are_not_secrets() -> None:
    from reprozoo.provenance import SECRET_NAME_RE

    for secret in ("HF_TOKEN", "GITHUB_TOKEN", "access_token", "CLEARML_API_SECRET_KEY", "DB_PASSWORD"):
        assert SECRET_NAME_RE.search(secret), secret
    for setting in ("max_tokens", "TOKENIZERS_PARALLELISM", "max_length"):
        assert not SECRET_NAME_RE.search(setting), setting
