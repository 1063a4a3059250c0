"""Tasks for seeing and choosing across clouds: offers, config, doctor."""

from __future__ import annotations

from ._common import ferry_task


@ferry_task(help={"gpu": "GPU alias (H100, A100, RTX4090, ...) or a provider's exact id",
                  "gpus": "GPUs per instance", "spot": "spot/interruptible offers instead of on-demand",
                  "json": "print one JSON document"})
def offers(c, gpu=None, gpus=None, spot=False, json=False):
    """Prices for a GPU across the configured clouds, cheapest first."""
    from .. import clouds, flags, output
    from .. import gpus as aliases
    from ..config import Settings

    gpu_count = flags.count(gpus, "--gpus") or 1
    if gpu:
        aliases.check(gpu)
    skipped: dict[str, str] = {}
    found = clouds.offers(Settings.of(c), gpu, gpu_count, spot=spot, skipped=skipped)
    if json:
        output.emit_json([o.to_dict() for o in found])
    elif found:
        output.table(
            ["PROVIDER", "GPU", "COUNT", "$/H", "KIND", "REGION"],
            [[o.provider, aliases.alias_for(o.gpu) or "-", o.gpu_count, f"{o.cost_per_hour:.3f}",
              "spot" if o.spot else "on-demand", o.region or "-"] for o in found], right=("$/H",),
        )
    else:
        output.note(f"no {'spot' if spot else 'on-demand'} offers for {gpu or 'any GPU'}")
    for name, reason in skipped.items():
        output.note(f"skipped {name}: {reason}")


@ferry_task(help={"json": "print one JSON document"})
def config(c, json=False):
    """The resolved settings, with every secret masked, and where each API key comes from."""
    from .. import doctor, output
    from ..config import Settings

    report = doctor.resolved_config(Settings.of(c))
    if json:
        output.emit_json(report)
        return
    for line in doctor.config_lines(report):
        print(line)


@ferry_task(help={"json": "print one JSON document"})
def doctor(c, json=False):
    """Check keys, tools and the current instance; print each problem with its fix."""
    from invoke.exceptions import Exit

    from .. import doctor as checks_lib
    from .. import output
    from ..config import Settings

    checks = checks_lib.run_checks(Settings.of(c))
    if json:
        output.emit_json(checks)
    else:
        for check in checks:
            mark = "ok  " if check["ok"] else ("FAIL" if check.get("required") else "--  ")
            print(f"{mark}  {check['what']}: {check['detail']}" + ("" if check["ok"] else f"\n      fix: {check['fix']}"))
    if not all(ch["ok"] for ch in checks if ch.get("required")):
        raise Exit(code=1)
