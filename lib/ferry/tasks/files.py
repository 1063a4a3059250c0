"""Tasks that move files: sync up (once, or watching), credentials, download back."""

from __future__ import annotations

import sys

from ._common import ferry_task, lazy

lifecycle = lazy("ferry.lifecycle")
output = lazy("ferry.output")
sync_lib = lazy("ferry.sync")
watch_lib = lazy("ferry.watch")
credentials_lib = lazy("ferry.credentials")
errors = lazy("ferry.errors")


@ferry_task(help={
    "name": "instance name (default: the project's current instance)",
    "dry-run": "list what would be sent and deleted; change nothing",
    "delete": "sent (default): delete remotely the files ferry sent that are gone locally; never: delete nothing",
    "full": "compare every file with the instance instead of trusting the record of the last sync",
    "watch": "keep syncing on every change until Ctrl-C",
    "credentials": "also upload this directory to ~/.ferry/credentials/ on the instance (700/600)",
})
def sync(c, name=None, dry_run=False, delete="sent", full=False, watch=False, credentials=None):
    """Send the project's file set (git's view incl. submodules, less .ferryignore) to the instance."""
    if delete not in sync_lib.DELETE_MODES:
        raise errors.UsageError(f"bad --delete value {delete!r}", hint="use --delete=sent (default) or --delete=never")
    if watch and dry_run:
        raise errors.UsageError("--watch and --dry-run do not go together", hint="preview once: inv sync --dry-run")
    instance = lifecycle.resolve(c, name)
    if credentials:
        if dry_run:
            output.note(f"would upload the files of {credentials} to ~/.ferry/credentials/")
        else:
            output.note(credentials_lib.upload(c, instance, credentials).summary())
    if watch:
        watch_lib.watch(c, instance.name, delete=delete)
        return
    result = sync_lib.sync_up(c, instance, dry_run=dry_run, delete=delete, full=full)
    if dry_run:
        for path in result.would_send:
            print(f"send {path}")
        for path in result.deleted:
            print(f"delete {path}")
        sys.stdout.flush()
    sync_lib.report(result, output.note, "would send" if dry_run else "synced")


@ferry_task(iterable=["path", "include", "exclude"], help={
    "name": "instance name (default: the project's current instance)",
    "path": "a path inside the workdir to fetch, whole (repeatable; default: all of the workdir)",
    "force": "take the remote copy even where the local file is newer (the local copy is backed up)",
    "backup-dir": "where replaced local files are kept: each download makes a new <stamp>/ in it (default: .ferry/backups/)",
    "all": "do not apply the default excludes (venvs, caches, weights, checkpoints/, outputs/, secrets)",
    "include": "an rsync pattern to fetch even if excluded, e.g. '*.pt' (repeatable)",
    "exclude": "an rsync pattern not to fetch, e.g. 'logs/' (repeatable)",
    "dry-run": "list what would be fetched; change nothing",
})
def download(c, path=None, name=None, force=False, backup_dir=None, all=False, include=None, exclude=None,
             dry_run=False):
    """Bring results home. Never deletes a local file; keeps newer local files; backs up what it replaces."""
    instance = lifecycle.resolve(c, name)
    result = sync_lib.download(
        c, instance, paths=path or [], dry_run=dry_run, force=force, backup_dir=backup_dir,
        everything=all, include=include or [], exclude=exclude or [],
    )
    if dry_run:
        for received in result.received:
            print(f"fetch {received}")
        sys.stdout.flush()
    sync_lib.report(result, output.note, "would fetch" if dry_run else "downloaded")
