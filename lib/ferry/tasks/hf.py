"""Hugging Face tasks (``ferry hf.*``): publish a trained LoRA in one commit, list your models."""

from __future__ import annotations

from ._common import NAME_HELP, ferry_task


@ferry_task(name="publish-lora", help={
    "source-dir": "the training output folder (final *.safetensors, samples/, config.yaml); on the instance "
                  "with --from-instance",
    "repo": "the repo's name (or OWNER/NAME)",
    "user": "the owner (default: the token's user)",
    "trigger": "the trigger word (default: config.yaml's trigger_word)",
    "base-model": "the base model's repo id (default: config.yaml's model.name_or_path)",
    "weights": "the weight file to publish, when the folder holds several final ones",
    "public": "make the repo public (default: private)",
    "exist-ok": "add a commit to a repo that already exists",
    "dry-run": "print the plan (files, sizes, repo, visibility); send nothing",
    "from-instance": "publish from the instance, where the weights are (they never pass through here)",
    "name": NAME_HELP + "; with --from-instance",
    "python": "with --from-instance: the instance's python that has huggingface_hub (default: python3)",
    "json": "print one JSON document",
})
def publish_lora(c, source_dir=None, repo=None, user=None, trigger=None, base_model=None, weights=None, public=False,
                 exist_ok=False, dry_run=False, from_instance=False, name=None, python="python3", json=False):
    """Publish a trained LoRA to Hugging Face: final weights, latest samples, a model card; one commit, private."""
    from .. import output
    from ..config import Settings
    from ..errors import UsageError, cmd
    from ..hub import hf, lora

    if not source_dir or not repo:
        raise UsageError("hf.publish-lora needs --source-dir and --repo",
                         hint=cmd("hf.publish-lora --source-dir output/my_lora --repo my-lora"))
    settings = Settings.of(c)
    box = None
    if from_instance:
        from ..handle import get as get_box

        box = get_box(settings, name)
        listing = hf.remote_listing(box, source_dir)
    else:
        listing = lora.Listing.local(source_dir)
    plan = lora.make_plan(listing, repo, user=user, trigger=trigger, base_model=base_model, public=public,
                          exist_ok=exist_ok, weights=weights)
    if dry_run:
        if json:
            output.emit_json({"dry_run": True, "plan": plan.to_dict()})
            return
        _show_plan(plan, box)
        return
    result = hf.publish_from_instance(settings, box, plan, python=python) if box else hf.publish(settings, plan)
    if result.get("made_public"):
        output.note(f"{result['repo']} was private; --public made it public")
    if json:
        output.emit_json({"dry_run": False, "plan": plan.to_dict(), "result": result})
        return
    created = "created" if result["created"] else "updated"
    print(f"published {result['files']} files to {result['url']} ({'private' if result['private'] else 'public'}, "
          f"{created}) in one commit: {result.get('commit_url') or result.get('commit')}")


def _show_plan(plan, box) -> None:
    from .. import output

    where = f" on {box.name}" if box else ""
    print(f"would publish {plan.source}{where} to {plan.shown_repo()} ({plan.visibility}"
          f"{', adding to it if it exists' if plan.exist_ok else ''}) in one commit:")
    output.table(["FILE", "SIZE"], [[repo_path, output.size(size)] for _, repo_path, size in plan.uploads()]
                 + [["total", output.size(plan.total_size())]], right=("SIZE",))
    print(f"trigger word: {plan.trigger or 'none'}; base model: {plan.base_model or 'not given'}")
    if plan.skipped_checkpoints:
        print(f"left out: {', '.join(plan.skipped_checkpoints)}")
    if plan.skipped_samples:
        print(f"left out: {plan.skipped_samples} older sample{'s' if plan.skipped_samples != 1 else ''} "
              "(the latest of each prompt goes)")
    print("nothing was sent (dry run)")


@ferry_task(name="list-models", help={
    "user": "whose models (default: the token's user)",
    "limit": "at most this many (default 50)",
    "json": "print one JSON document",
})
def list_models(c, user=None, limit=None, json=False):
    """Your Hugging Face models: name, private/public, downloads, likes, last modified."""
    from .. import flags, output
    from ..config import Settings
    from ..hub import hf

    found = hf.list_models(Settings.of(c), user=user, limit=flags.count(limit, "--limit") or 50)
    if json:
        output.emit_json(found)
        return
    if not found:
        output.note(f"no models{f' for {user}' if user else ''}")
        return
    output.table(["NAME", "VISIBILITY", "DOWNLOADS", "LIKES", "MODIFIED"],
                 [[m["name"], "private" if m["private"] else "public", m["downloads"], m["likes"],
                   (m["last_modified"] or "-")[:16].replace("T", " ")] for m in found], right=("DOWNLOADS", "LIKES"))
