"""Replicate runs through the real CLI and the real replicate SDK, aimed at the fake API on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import assert_one_line_error

pytest.importorskip("replicate")

TOKEN = "r8_test_token_0123456789"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
WAV = os.urandom(1500)
SCHEMA_PROPS = {
    "prompt": {"type": "string", "title": "Prompt", "x-order": 0, "description": "What to draw"},
    "steps": {"type": "integer", "default": 4, "minimum": 1, "maximum": 50, "x-order": 1},
    "guidance": {"type": "number", "default": 3.5, "minimum": 0, "maximum": 10, "x-order": 2},
    "go_fast": {"type": "boolean", "default": True, "x-order": 3},
    "aspect_ratio": {"allOf": [{"$ref": "#/components/schemas/aspect_ratio"}], "default": "1:1", "x-order": 4},
    "image": {"type": "string", "format": "uri", "x-order": 5, "description": "An image to start from"},
}
ENUMS = {"aspect_ratio": {"type": "string", "enum": ["1:1", "16:9", "9:16"], "title": "aspect_ratio"}}


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
def fake_replicate():
    from tests.fakes.replicate_server import FakeReplicate, input_schema

    fake = FakeReplicate(token=TOKEN)
    fake.schema = input_schema(SCHEMA_PROPS, required=["prompt"], enums=ENUMS)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def env(fake_replicate, monkeypatch):
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    return {"REPLICATE_BASE_URL": fake_replicate.base_url, "REPLICATE_POLL_INTERVAL": "0.02",
            "REPLICATE_API_TOKEN": TOKEN}


def test_run_types_inputs_streams_logs_and_saves_file_outputs_byte_exact(ferry, project, fake_replicate, env):
    fake_replicate.add_model("acme", "flux", schema=fake_replicate.schema,
                             output=[data_uri("image/png", PNG), data_uri("audio/wav", WAV)])
    (project / "start.jpg").write_bytes(b"my local image")
    proc = ferry.ok("replicate.run", "acme/flux", "-i", "prompt=a red fox", "-i", "steps=20", "--input",
                    "guidance=7", "-i", "go_fast=false", "-i", "aspect_ratio=16:9", "-i", "image=start.jpg", env=env)
    [prediction] = fake_replicate.predictions.values()
    assert prediction["input"]["prompt"] == "a red fox"
    assert prediction["input"]["steps"] == 20 and prediction["input"]["guidance"] == 7
    assert prediction["input"]["go_fast"] is False and prediction["input"]["aspect_ratio"] == "16:9"
    [file_id] = fake_replicate.files
    assert fake_replicate.files[file_id] == b"my local image"  # uploaded as a file input
    assert prediction["input"]["image"].endswith(f"/v1/files/{file_id}")
    assert "Loading the model" in proc.stderr  # the model's logs, streamed
    out_dir = project / "replicate-outputs" / prediction["id"]
    assert (out_dir / "output-0.png").read_bytes() == PNG
    assert (out_dir / "output-1.wav").read_bytes() == WAV
    listed = proc.stdout.split()
    assert listed == [f"replicate-outputs/{prediction['id']}/output-0.png",
                      f"replicate-outputs/{prediction['id']}/output-1.wav"]
    assert TOKEN not in proc.stdout + proc.stderr


@pytest.mark.parametrize("pair, why", [
    ("steps=many", "not a whole number"),
    ("steps=99", "above the maximum 50; allowed: 1..50"),
    ("aspect_ratio=4:3", "not one of the allowed values; allowed: 1:1, 16:9, 9:16"),
    ("go_fast=perhaps", "not a boolean"),
    ("image=missing.png", "no such file"),
    ("colour=red", "has no input 'colour'"),
])
def test_bad_typed_input_is_a_usage_error_and_creates_nothing(ferry, fake_replicate, env, pair, why):
    fake_replicate.add_model("acme", "flux", schema=fake_replicate.schema, output=data_uri("image/png", PNG))
    proc = ferry("replicate.run", "acme/flux", "-i", "prompt=x", "-i", pair, env=env)
    assert why in assert_one_line_error(proc, code=2)
    assert fake_replicate.created() == [] and fake_replicate.files == {}


def test_missing_required_input_and_missing_token(ferry, fake_replicate, env):
    fake_replicate.add_model("acme", "flux", schema=fake_replicate.schema)
    proc = ferry("replicate.run", "acme/flux", "-i", "steps=3", env=env)
    assert "needs the input prompt" in assert_one_line_error(proc, code=2)
    assert fake_replicate.created() == []
    fake_replicate.clear_requests()
    proc = ferry("replicate.run", "acme/flux", "-i", "prompt=x", env={**env, "REPLICATE_API_TOKEN": ""})
    assert "no REPLICATE_API_TOKEN found" in assert_one_line_error(proc)
    assert fake_replicate.requests == []


def test_failed_prediction_exits_1_with_its_error(ferry, project, fake_replicate, env):
    fake_replicate.add_model("acme", "broken", schema=fake_replicate.schema, outcome="failed",
                             error="CUDA out of memory")
    proc = ferry("replicate.run", "acme/broken", "-i", "prompt=x", env=env)
    err = assert_one_line_error(proc.__class__(proc.args, proc.returncode, proc.stdout,
                                               "\n".join(l for l in proc.stderr.splitlines()
                                                         if l.startswith(("error:", "hint:")))))
    assert "failed: CUDA out of memory" in err
    assert "Traceback: it broke" in proc.stderr  # its logs came through before the error
    assert not (project / "replicate-outputs").exists()


def test_detach_then_get_fetches_state_and_outputs(ferry, project, fake_replicate, env):
    version = fake_replicate.add_model("acme", "llm", schema=fake_replicate.schema, output=["Hello", ", ", "world"],
                                       steps=1)
    proc = ferry.ok("replicate.run", f"acme/llm:{version}", "-i", "prompt=hi", "--detach", env=env)
    pid = proc.stdout.strip()
    assert pid in fake_replicate.predictions and "replicate.get" in proc.stderr
    assert fake_replicate.requests_to(f"GET /v1/models/acme/llm/versions/{version}")
    first = ferry.ok("replicate.get", pid, env=env)
    assert "processing" in first.stdout or "starting" in first.stdout
    for _ in range(5):
        done = ferry.ok("replicate.get", pid, "--output-dir", "out", "--json", env=env)
        document = json.loads(done.stdout)
        if document["status"] == "succeeded":
            break
    assert document["outputs"] == ["out/output.txt"]
    assert (project / "out" / "output.txt").read_text() == "Hello, world"


def test_inputs_table(ferry, fake_replicate, env):
    fake_replicate.add_model("acme", "flux", schema=fake_replicate.schema)
    proc = ferry.ok("replicate.inputs", "acme/flux", env=env)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "DEFAULT", "ALLOWED", "DESCRIPTION"]
    assert lines[1].split()[:2] == ["prompt", "*"] and "What to draw" in lines[1]
    assert lines[2].split()[:4] == ["steps", "integer", "4", "1..50"]
    assert "1:1, 16:9, 9:16" in proc.stdout and "file" in lines[6]


def test_ctrl_c_cancels_the_prediction(project, fake_replicate, env):
    fake_replicate.add_model("acme", "slow", schema=fake_replicate.schema, hold=True)
    proc = subprocess.Popen([sys.executable, "-m", "ferry", "replicate.run", "acme/slow", "-i", "prompt=x"],
                            cwd=project, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(p["status"] == "processing" and p["_polls"] > 2
                                                      for p in fake_replicate.predictions.values()):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [prediction] = fake_replicate.predictions.values()
    assert proc.returncode == 130, err
    assert prediction["status"] == "canceled" and fake_replicate.requests_to("/cancel")
    assert f"prediction {prediction['id']} canceled" in err
