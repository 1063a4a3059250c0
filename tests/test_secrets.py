"""Secrets stay home: sync never ships them, --debug never prints them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import git

KEY = "rpa_TOPSECRET_0123456789"


def remote_workdir(ferry) -> Path:
    return Path(json.loads(ferry.ok("status", "--json").stdout)["workdir_root"]) / "proj"


def test_secret_files_stay_home_in_a_git_project(launched, project):
    (project / ".env").write_text(f"RUNPOD_API_KEY={KEY}\n")  # not in .gitignore: git would list it
    (project / ".env.example").write_text("RUNPOD_API_KEY=\n")
    (project / "deploy.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (project / "keys").mkdir()
    (project / "keys" / "id_ed25519").write_text("private\n")
    (project / "keys" / "id_ed25519.pub").write_text("ssh-ed25519 AAAA public\n")
    git(project, "add", "deploy.pem")  # even a tracked one stays home
    proc = launched.ok("sync")
    workdir = remote_workdir(launched)
    for secret in (".env", "deploy.pem", "keys/id_ed25519"):
        assert not (workdir / secret).exists(), secret
    assert (workdir / ".env.example").exists() and (workdir / "keys" / "id_ed25519.pub").exists()
    assert (workdir / "train.py").exists()
    assert KEY not in proc.stdout + proc.stderr
    assert "held back 3 files that look like secrets (.env, deploy.pem, keys/id_ed25519)" in proc.stderr


def test_ferryignore_negation_sends_a_secret_on_purpose(launched, project):
    (project / ".env").write_text("WANDB_MODE=offline\n")
    (project / ".ferryignore").write_text("!.env\n")
    launched.ok("sync")
    assert (remote_workdir(launched) / ".env").read_text() == "WANDB_MODE=offline\n"


def test_debug_output_never_shows_configured_env_values(project, home):
    (project / "tasks.py").write_text("from ferry.tasks import ns\n")
    (project / "invoke.yaml").write_text(f"ferry:\n  env:\n    WANDB_API_KEY: {KEY}\n")
    inv = Path(sys.executable).with_name("inv")
    proc = subprocess.run([str(inv), "--debug", "ls"], cwd=project, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "invoke" in proc.stderr  # debug logging really was on
    assert KEY not in proc.stdout + proc.stderr


def test_a_command_that_outlives_its_timeout_is_one_clean_error(launched):
    import pytest

    import ferry
    from ferry.errors import SSHError

    with pytest.raises(SSHError, match="did not answer within"):
        ferry.box().remote.run("sleep 5", timeout=0.5)


def test_the_rules_prefilter_matches_exactly_what_its_rules_match():
    """The prefilter of a scan's every path shares one "any directory" prefix among the rules that have it
    (half the cost at 100k files); it must answer exactly as the rules one by one."""
    import re

    from ferry.fileset import DEFAULT_EXCLUDES, SECRET_EXCLUDES
    from ferry.heldback import combined, translations

    lines = [*DEFAULT_EXCLUDES, *SECRET_EXCLUDES, "/build/", "docs/*.md", "**/tmp", "!keep.env", "data[0-9]/", "*.c?v"]
    sources = [s for s, include in translations(lines) if include and s is not None]
    prefilter = re.compile(combined(sources))
    paths = ["train.py", ".env", "a/.env", "a/.env.local", "server.pem", "x/y/id_rsa.pub", ".aws/credentials",
             "deep/.ssh/config", "build/x.o", "src/build/x.o", "docs/a.md", "docs/sub/a.md", "a/tmp", "tmp/x",
             "keep.env", "data1/x", "data12/x", "t.csv", "t.cxv", ".venv/lib/x.py", "x/__pycache__/y.pyc",
             "node_modules/a/b.js", "checkpoints/model.pt", "notes.md", "a.env.b", "envs/a"]
    for path in paths:
        one_by_one = any(re.search(s, path) for s in sources)
        assert (prefilter.search(path) is not None) == one_by_one, path


def test_which_names_are_read_for_secrets():
    """No extension, a dotfile, or an extension keys are kept under; never a file too big to be a key."""
    from ferry.heldback import SNIFF_MAX, worth_sniffing

    read = ["id", "deploy/id_ed25519", ".env", "conf/.env", "a/b.c/key", "k.PEM", "x/y.json", "secrets.txt",
            "creds.d/token", "."]
    skipped = ["train.py", "a.b/model.pt", "data.csv", "x/.env.py", "img.png", "a."]
    assert [p for p in read if not worth_sniffing(p, 100)] == []
    assert [p for p in skipped if worth_sniffing(p, 100)] == []
    assert not worth_sniffing(".env", SNIFF_MAX + 1)
