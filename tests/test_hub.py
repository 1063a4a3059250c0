"""Hugging Face publishing through the real CLI and the real huggingface_hub, aimed at the fake Hub on 127.0.0.1."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import assert_one_line_error

pytest.importorskip("huggingface_hub")

TOKEN = "hf_test_token_0123456789abcdef"
WEIGHTS = os.urandom(300_000)


@pytest.fixture
def fake_hf():
    from tests.fakes.hf_server import FakeHF

    fake = FakeHF(token=TOKEN, user="alice")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def hub_env(fake_hf, monkeypatch):
    """The SDK's own settings point it at the fake; no token unless a test adds one."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME", "HF_TOKEN_PATH", "REPLICATE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return {"HF_ENDPOINT": fake_hf.base_url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def with_token(env: dict) -> dict:
    return {**env, "HF_TOKEN": TOKEN}


def make_training_folder(root):
    """What ai-toolkit leaves: final weights, step checkpoints, optimizer state, config.yaml, samples per round."""
    out = root / "output" / "my_lora"
    (out / "samples").mkdir(parents=True)
    (out / "my_lora.safetensors").write_bytes(WEIGHTS)
    (out / "my_lora_000000500.safetensors").write_bytes(b"checkpoint 500")
    (out / "my_lora_000001000.safetensors").write_bytes(b"checkpoint 1000")
    (out / "optimizer.pt").write_bytes(b"optimizer")
    (out / "config.yaml").write_text(
        "job: extension\nconfig:\n  name: my_lora\n  process:\n    - type: sd_trainer\n      trigger_word: ohwx\n"
        "      model:\n        name_or_path: black-forest-labs/FLUX.1-dev\n"
        "      sample:\n        prompts:\n          - a photo of [trigger] on a beach\n          - '[trigger] as a painting'\n")
    samples = {
        "1700000000000__000000500_0.jpg": b"p0 step500",
        "1700000900000__000001000_0.jpg": b"p0 step1000 LATEST",
        "1700000000000__000000500_1.jpg": b"p1 step500",
        "1700000500000__000001000_1.jpg": b"p1 step1000 earlier",
        "1700000800000__000001000_1.jpg": b"p1 step1000 LATEST",
        "cover.png": b"not of the trainer's form: kept",
    }
    for name, data in samples.items():
        (out / "samples" / name).write_bytes(data)
    (out / "samples" / "notes.txt").write_text("not an image\n")
    return out


EXPECTED = {"my_lora.safetensors", "samples/1700000900000__000001000_0.jpg",
            "samples/1700000800000__000001000_1.jpg", "samples/cover.png", "README.md"}


# -- the sample rule, on a crafted folder (library level) ---------------------------------------------------
def test_sample_rule_keeps_the_latest_per_prompt_by_step_then_timestamp():
    from ferry.hub.lora import keep_samples

    names = [
        "samples/1700000000000__000000500_0.jpg",
        "samples/1600000000000__000001000_0.jpg",  # older timestamp, higher step: the step decides
        "samples/1700000000000__000001000_1.png",
        "samples/1700000000001__000001000_1.webp",  # same step, later timestamp: wins
        "samples/1700000000000__000000200_2.JPEG",  # only sample of prompt 2
        "samples/final.png",  # not of the form: kept
        "samples/notes.txt",  # not an image: never
    ]
    assert keep_samples(names) == ["samples/1600000000000__000001000_0.jpg",
                                    "samples/1700000000001__000001000_1.webp",
                                    "samples/1700000000000__000000200_2.JPEG", "samples/final.png"]


def test_weights_choice_skips_checkpoints_and_indexes_and_stops_on_several(tmp_path):
    from ferry.errors import FerryError, UsageError
    from ferry.hub.lora import Listing, choose_weights

    (tmp_path / "a.safetensors").write_bytes(b"a")
    (tmp_path / "a_000001000.safetensors").write_bytes(b"c")
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    (tmp_path / "a-index.safetensors").write_bytes(b"i")
    assert choose_weights(Listing.local(tmp_path)).rel == "a.safetensors"
    (tmp_path / "b.safetensors").write_bytes(b"b")
    with pytest.raises(UsageError, match="several final weight files: a.safetensors, b.safetensors"):
        choose_weights(Listing.local(tmp_path))
    assert choose_weights(Listing.local(tmp_path), "b.safetensors").rel == "b.safetensors"
    for name in ("a.safetensors", "b.safetensors"):
        (tmp_path / name).unlink()
    with pytest.raises(FerryError, match="only step checkpoints"):
        choose_weights(Listing.local(tmp_path))


# -- publishing through the CLI -----------------------------------------------------------------------------
def test_publish_is_one_private_commit_with_final_weights_latest_samples_and_card(ferry, project, fake_hf, hub_env):
    make_training_folder(project)
    proc = ferry.ok("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "my-lora", env=with_token(hub_env))
    assert "alice/my-lora" in proc.stdout and "private" in proc.stdout
    repo = fake_hf.repos["alice/my-lora"]
    assert repo["private"] is True
    commits = fake_hf.commits("alice/my-lora")
    assert len(commits) == 1 and len(fake_hf.requests_to("/commit/")) == 1
    files = commits[0]["files"]
    assert set(files) == EXPECTED  # no checkpoint, no optimizer, no older sample, no config
    assert files["my_lora.safetensors"] == WEIGHTS  # byte-exact, through git-LFS
    assert files["samples/1700000800000__000001000_1.jpg"] == b"p1 step1000 LATEST"
    card = files["README.md"].decode()
    assert "base_model: black-forest-labs/FLUX.1-dev" in card
    assert "instance_prompt: ohwx" in card and "`ohwx`" in card
    assert "weight_name='my_lora.safetensors'" in card and "alice/my-lora" in card
    assert "a photo of ohwx on a beach" in card and "ohwx as a painting" in card
    assert TOKEN not in proc.stdout + proc.stderr


def test_public_flag_and_json(ferry, project, fake_hf, hub_env):
    make_training_folder(project)
    proc = ferry.ok("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "alice/pub", "--public",
                    "--trigger", "zzq", "--json", env=with_token(hub_env))
    document = json.loads(proc.stdout)
    assert document["result"]["private"] is False and document["plan"]["trigger"] == "zzq"
    assert fake_hf.repos["alice/pub"]["private"] is False
    assert "instance_prompt: zzq" in fake_hf.commits("alice/pub")[0]["files"]["README.md"].decode()


def test_existing_repo_is_refused_without_exist_ok_and_nothing_is_committed(ferry, project, fake_hf, hub_env):
    make_training_folder(project)
    fake_hf.add_repo("alice/taken", private=True, files={"README.md": b"theirs"})
    proc = ferry("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "taken", env=with_token(hub_env))
    err = assert_one_line_error(proc)
    assert "alice/taken already exists (private)" in err and "--exist-ok" in err
    assert fake_hf.commits("alice/taken") == [] and not fake_hf.requests_to("preupload")
    ferry.ok("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "taken", "--exist-ok",
             env=with_token(hub_env))
    assert len(fake_hf.commits("alice/taken")) == 1 and fake_hf.repos["alice/taken"]["private"] is True


def test_visibility_of_an_existing_repo_is_never_changed_silently(ferry, project, fake_hf, hub_env):
    make_training_folder(project)
    fake_hf.add_repo("alice/open", private=False)
    proc = ferry("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "open", "--exist-ok",
                 env=with_token(hub_env))
    assert "alice/open is public" in assert_one_line_error(proc)
    assert fake_hf.commits("alice/open") == []
    fake_hf.add_repo("alice/closed", private=True)
    proc = ferry.ok("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "closed", "--exist-ok", "--public",
                    env=with_token(hub_env))
    assert "alice/closed was private; --public made it public" in proc.stderr
    assert fake_hf.repos["alice/closed"]["private"] is False and len(fake_hf.commits("alice/closed")) == 1


def test_dry_run_prints_the_plan_and_sends_nothing(ferry, project, fake_hf, hub_env):
    make_training_folder(project)
    proc = ferry.ok("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "my-lora", "--dry-run",
                    env=with_token(hub_env))
    out = proc.stdout
    assert "<your user>/my-lora (private)" in out
    for path in EXPECTED:
        assert path in out
    assert "292.97 KB" in out or "293.0 KB" in out
    assert "my_lora_000001000.safetensors" in out  # named among what is left out
    assert "nothing was sent" in out
    assert fake_hf.requests == []


def test_missing_token_fails_before_any_request(ferry, project, fake_hf, hub_env):
    make_training_folder(project)
    proc = ferry("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "my-lora", env=hub_env)
    err = assert_one_line_error(proc)
    assert "no HF_TOKEN found" in err and "hint: set HF_TOKEN" in err
    assert fake_hf.requests == []


def test_token_from_huggingface_hubs_stored_login_and_dotenv(ferry, project, home, fake_hf, hub_env):
    make_training_folder(project)
    stored = home / ".cache" / "huggingface" / "token"
    stored.parent.mkdir(parents=True)
    stored.write_text(TOKEN + "\n")
    ferry.ok("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "a", env=hub_env)
    stored.unlink()
    (project / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    ferry.ok("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "b", env=hub_env)
    assert {"alice/a", "alice/b"} <= set(fake_hf.repos)


def test_a_rejected_token_is_one_clean_error(ferry, project, fake_hf, hub_env):
    make_training_folder(project)
    proc = ferry("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "x",
                 env={**hub_env, "HF_TOKEN": "hf_wrong_token_000000"})
    assert "refused the token" in assert_one_line_error(proc)
    assert "hf_wrong_token_000000" not in proc.stderr


def test_several_final_weights_stop_and_weights_picks(ferry, project, fake_hf, hub_env):
    out = make_training_folder(project)
    (out / "my_lora_v2.safetensors").write_bytes(b"another final")
    proc = ferry("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "x", env=with_token(hub_env))
    err = assert_one_line_error(proc, code=2)
    assert "my_lora.safetensors, my_lora_v2.safetensors" in err and "--weights FILE" in err
    assert fake_hf.requests == []
    ferry.ok("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "x", "--weights", "my_lora_v2.safetensors",
             env=with_token(hub_env))
    assert "my_lora_v2.safetensors" in fake_hf.commits("alice/x")[0]["files"]


def test_list_models(ferry, fake_hf, hub_env):
    fake_hf.add_repo("alice/one", private=True, downloads=12, likes=3)
    fake_hf.add_repo("alice/two", private=False, downloads=7)
    fake_hf.add_repo("bob/other", private=False)
    proc = ferry.ok("hf.list-models", env=with_token(hub_env))
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VISIBILITY", "DOWNLOADS", "LIKES", "MODIFIED"]
    assert lines[1].split()[:4] == ["alice/one", "private", "12", "3"]
    assert lines[2].split()[:2] == ["alice/two", "public"] and "bob/other" not in proc.stdout
    document = json.loads(ferry.ok("hf.list-models", "--user", "bob", "--limit", "5", "--json",
                                   env=with_token(hub_env)).stdout)
    assert [m["name"] for m in document] == ["bob/other"]


def test_config_masks_and_doctor_checks_the_tokens(ferry, project, hub_env):
    env = {**with_token(hub_env), "REPLICATE_API_TOKEN": "r8_secret_token_abcdefgh"}
    proc = ferry.ok("config", env=env)
    assert TOKEN not in proc.stdout and "r8_secret_token_abcdefgh" not in proc.stdout
    assert "huggingface: hf_****ef from $HF_TOKEN" in proc.stdout
    assert "replicate: r8_****gh from $REPLICATE_API_TOKEN" in proc.stdout
    report = json.loads(ferry.ok("config", "--json", env=env).stdout)
    assert report["hub_tokens"]["huggingface"]["set"] is True
    doctor = ferry("doctor", env=hub_env)
    assert "huggingface token (HF_TOKEN): not set" in doctor.stdout
    doctor = ferry("doctor", env=env)
    assert "huggingface token (HF_TOKEN): from $HF_TOKEN" in doctor.stdout and TOKEN not in doctor.stdout


# -- from the instance, where the weights are --------------------------------------------------------------
def test_from_instance_publishes_there_and_the_token_travels_only_as_a_600_file(launched, project, home, fake_hf,
                                                                               hub_env):
    """On the local provider (a real loopback sshd): the weights never pass through the laptop, the token is
    neither on a command line nor left behind on the instance."""
    import sys

    out = make_training_folder(project)
    launched.ok("sync")
    import shutil

    shutil.rmtree(out)  # the laptop no longer has them: only the instance can publish them
    # Look at the instance while the job runs: the fake Hub calls back before the commit is answered.
    seen = {}

    def snoop():
        for path in home.rglob("*"):
            if path.name == "credentials" and path.parent.name == ".ferry" or path.name.startswith("hf-token-"):
                seen[path.name] = oct(path.stat().st_mode & 0o777)

    fake_hf.on_commit = snoop
    proc = launched.ok("hf.publish-lora", "--source-dir", "output/my_lora", "--repo", "far-lora", "--from-instance",
                       "--python", sys.executable, env=with_token(hub_env), timeout=120)
    commits = fake_hf.commits("alice/far-lora")
    assert len(commits) == 1 and set(commits[0]["files"]) == EXPECTED
    assert commits[0]["files"]["my_lora.safetensors"] == WEIGHTS
    assert fake_hf.repos["alice/far-lora"]["private"] is True
    # The publisher read the token file and deleted it before talking to the Hub; its folder is owner-only.
    assert seen == {"credentials": "0o700"}, seen
    assert not list(home.rglob("hf-token-*"))  # and gone afterwards
    leftovers = [p for p in home.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leftovers == []  # not in the job's spec, log or history either
    assert TOKEN not in proc.stdout + proc.stderr
    jobs = launched.ok("jobs", "--json").stdout
    assert TOKEN not in jobs
