"""Replicate tasks (``ferry replicate.*``): run a hosted model with typed inputs, fetch a prediction, see its inputs."""

from __future__ import annotations

from ._common import ferry_task

OUTPUT_DIR_HELP = "where outputs are saved (default: replicate-outputs/<prediction id>/)"


@ferry_task(iterable=["input"], help={
    "model": "OWNER/MODEL or OWNER/MODEL:VERSION",
    "input": "an input as KEY=VALUE, typed by the model's schema; a local file for a file input is uploaded "
             "(repeatable)",
    "output-dir": OUTPUT_DIR_HELP,
    "detach": "print the prediction's id and return; fetch it later with replicate.get",
    "json": "print one JSON document",
})
def run(c, model, input=None, output_dir=None, detach=False, json=False):
    """Run a model on Replicate: inputs checked first, logs streamed, outputs saved. Ctrl-C cancels it."""
    import sys
    from pathlib import Path

    from .. import output
    from ..config import Settings
    from ..errors import FerryError, cmd
    from ..hub import replicate_run as rr

    rr.parse_ref(model)  # a malformed name is a usage error before the token is even looked up
    api = rr.client(Settings.of(c))
    target = rr.lookup(api, model)
    inputs = rr.upload_files(api, rr.typed_inputs(target, list(input or []), Path.cwd()))
    prediction = rr.create(api, target, inputs)
    if detach:
        if json:
            output.emit_json({"id": prediction.id, "status": prediction.status, "model": target.ref})
        else:
            print(prediction.id)
        output.note(f"fetch it later: {cmd(f'replicate.get {prediction.id}')}")
        return

    def show_logs(text: str) -> None:
        output.note(text.rstrip("\n"))

    try:
        prediction = rr.follow(api, prediction, show_logs)
    except KeyboardInterrupt:
        if output.terminal() and not output.confirm(f"\ncancel prediction {prediction.id} on Replicate?"):
            raise FerryError(f"interrupted; prediction {prediction.id} keeps running on Replicate",
                             hint=f"fetch it later: {cmd(f'replicate.get {prediction.id}')}", exit_code=130) from None
        rr.cancel(api, prediction.id)
        raise FerryError(f"interrupted; prediction {prediction.id} canceled",
                         hint=f"its state: {cmd(f'replicate.get {prediction.id}')}", exit_code=130) from None
    _finish(prediction, output_dir, json)
    sys.stdout.flush()


@ferry_task(help={"id": "the prediction's id (what run --detach printed)", "output-dir": OUTPUT_DIR_HELP,
                  "json": "print one JSON document"})
def get(c, id, output_dir=None, json=False):
    """A prediction's state; once it has finished, its outputs saved (failed or canceled: exit 1)."""
    from .. import output
    from ..config import Settings
    from ..errors import cmd
    from ..hub import replicate_run as rr

    api = rr.client(Settings.of(c))
    prediction = rr.get(api, id)
    if prediction.status not in rr.DONE:
        if json:
            output.emit_json(rr.summary(prediction, []))
        else:
            print(f"{prediction.id} {prediction.status}")
        output.note(f"not finished yet; ask again: {cmd(f'replicate.get {prediction.id}')}")
        return
    _finish(prediction, output_dir, json)


def _finish(prediction, output_dir, json) -> None:
    from pathlib import Path

    from .. import output
    from ..errors import FerryError, cmd
    from ..hub import replicate_run as rr

    saved = []
    if prediction.status == "succeeded":
        directory = Path(output_dir) if output_dir else Path("replicate-outputs") / prediction.id
        saved = rr.save_outputs(prediction.output, directory)
    if json:
        output.emit_json(rr.summary(prediction, saved))
    elif prediction.status == "succeeded":
        for path in saved:
            print(path)
        if not saved:
            output.note(f"prediction {prediction.id} succeeded with no output")
    if prediction.status != "succeeded":
        reason = (prediction.error or "no error given").strip().splitlines()
        raise FerryError(f"prediction {prediction.id} {prediction.status}: {reason[-1] if reason else ''}".rstrip(": "),
                         hint=f"its logs and state: {cmd(f'replicate.get {prediction.id}')}")


@ferry_task(help={"model": "OWNER/MODEL or OWNER/MODEL:VERSION", "json": "print one JSON document"})
def inputs(c, model, json=False):
    """A model's inputs as its schema declares them: name, type, default, allowed values, description."""
    from dataclasses import asdict

    from .. import output
    from ..config import Settings
    from ..hub import replicate_run as rr

    rr.parse_ref(model)
    target = rr.lookup(rr.client(Settings.of(c)), model)
    if json:
        output.emit_json({"model": target.ref, "inputs": [asdict(s) for s in target.inputs]})
        return
    if not target.inputs:
        output.note(f"{target.ref} publishes no input schema; -i KEY=VALUE values are sent as strings")
        return
    output.table(["NAME", "TYPE", "DEFAULT", "ALLOWED", "DESCRIPTION"],
                 [[s.name + (" *" if s.required and s.default is None else ""), s.shown_type(),
                   "-" if s.default is None else s.default, s.allowed() or "-", s.description] for s in target.inputs])
