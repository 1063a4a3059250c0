"""Tasks that move files: sync up, download back."""

from __future__ import annotations

from ._common import ferry_task, lazy

lifecycle = lazy("ferry.lifecycle")
output = lazy("ferry.output")
sync_lib = lazy("ferry.sync")


@ferry_task(help={"name": "instance name (default: the project's current instance)",
                  "dry-run": "show what would be sent; send nothing"})
def sync(c, name=None, dry_run=False):
    """Send the project's file set (git's view: tracked + untracked, never ignored) to the instance."""
    instance = lifecycle.resolve(c, name)
    result = sync_lib.sync_up(c, instance, dry_run=dry_run)
    output.note(result.summary("would send" if dry_run else "synced"))


@ferry_task(iterable=["path"], help={"name": "instance name (default: the project's current instance)",
                                     "path": "a path inside the workdir to fetch (repeatable; default: all of it)"})
def download(c, path=None, name=None):
    """Bring results home. Never deletes a local file; keeps local files that are newer."""
    instance = lifecycle.resolve(c, name)
    result = sync_lib.download(c, instance, paths=path or [])
    for skipped in result.skipped:
        output.note(f"kept newer local file: {skipped}")
    output.note(result.summary("downloaded"))
