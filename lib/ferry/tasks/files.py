"""Tasks that move files: sync up (once, or watching), credentials, download back."""

from __future__ import annotations

from ._common import NAME_HELP, ferry_task


@ferry_task(help={
    "name": NAME_HELP,
    "dry-run": "list what would be sent and deleted; change nothing",
    "delete": "sent (default): delete remotely the files ferry sent that are gone locally; never: delete nothing",
    "full": "compare every file with the instance instead of trusting the record of the last sync",
    "watch": "keep syncing on every change until Ctrl-C",
    "credentials": "also upload this directory to ~/.ferry/credentials/ on the instance (700/600)",
    "verbose": "name every file sent, replaced or left as the instance has it",
})
def sync(c, name=None, dry_run=False, delete="sent", full=False, watch=False, credentials=None, verbose=False):
    """Send the project's file set (git's view incl. submodules, less .ferryignore) to the instance."""
    import sys

    from .. import flags, output
    from ..handle import get as get_box
    from ..errors import UsageError, cmd
    from ..sync import DELETE_MODES

    flags.choice(delete, "--delete", DELETE_MODES)
    if watch and dry_run:
        raise UsageError("--watch and --dry-run do not go together", hint=f"preview once: {cmd('sync --dry-run')}")
    box = get_box(c, name)
    if credentials:
        if dry_run:
            output.note(f"would upload the files of {credentials} to ~/.ferry/credentials/")
        else:
            output.note(box.upload_credentials(credentials).summary())
    if watch:
        box.watch(delete=delete)
        return
    result = box.sync(dry_run=dry_run, delete=delete, full=full, verbose=verbose)
    if dry_run:
        for path in result.would_send:
            print(f"send {path}")
        for path in result.deleted:
            print(f"delete {path}")
        sys.stdout.flush()


@ferry_task(iterable=["path", "include", "exclude"], help={
    "name": NAME_HELP,
    "path": "a path inside the workdir to fetch, whole (repeatable; default: what the run produced)",
    "force": "take the remote copy even where the local file is newer (the local copy is backed up)",
    "backup-dir": "where replaced local files are kept: each download makes a new <stamp>/ in it (default: .ferry/backups/)",
    "all": "the whole workdir, environments and caches included, with no size guard",
    "include": "a pattern (gitignore syntax) to bring even if unchanged or left by default, e.g. '*.log' (repeatable)",
    "exclude": "a pattern (gitignore syntax) not to bring, e.g. 'logs/' (repeatable)",
    "dry-run": "list what would be fetched; change nothing",
})
def download(c, path=None, name=None, force=False, backup_dir=None, all=False, include=None, exclude=None,
             dry_run=False):
    """Bring home what the run produced (or --path P, --all). Never deletes or silently overwrites a local file."""
    import sys

    from ..handle import get as get_box

    from ..download import check_relative

    for wanted in path or []:
        check_relative(wanted)  # a bad path is a usage error before anything else is looked at
    result = get_box(c, name).download(*(path or []), dry_run=dry_run, force=force, backup_dir=backup_dir,
                                             everything=all, include=include or [], exclude=exclude or [])
    if dry_run:
        for received in result.received:
            print(f"fetch {received}")
        sys.stdout.flush()
