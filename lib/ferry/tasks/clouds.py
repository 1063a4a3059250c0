"""Tasks for seeing and choosing across clouds: offers, config, doctor."""

from __future__ import annotations

from ._common import ferry_task, lazy

offers_lib = lazy("ferry.offers")
output = lazy("ferry.output")
doctor_lib = lazy("ferry.doctor")


@ferry_task(help={"gpu": "GPU alias (H100, A100, RTX4090, ...) or a provider's exact id",
                  "count": "GPUs per instance", "spot": "spot/interruptible offers instead of on-demand",
                  "json": "print one JSON document"})
def offers(c, gpu=None, count=None, spot=False, json=False):
    """Prices for a GPU across the configured clouds, cheapest first."""
    from ..gpus import alias_for

    from ..errors import UsageError

    count = 1 if count is None else count
    if not str(count).isdigit() or int(count) < 1:
        raise UsageError(f"--count must be a positive whole number, not {count!r}")
    skipped: dict[str, str] = {}
    found = offers_lib.collect(c, gpu, int(count), spot=spot, skipped=skipped)
    if json:
        output.emit_json(offers_lib.as_dicts(found))
    elif found:
        output.table(
            ["PROVIDER", "GPU", "COUNT", "$/H", "KIND", "REGION"],
            [[o.provider, alias_for(o.gpu) or "-", o.gpu_count, f"{o.cost_per_hour:.3f}", "spot" if o.spot else "on-demand",
              o.region or "-"] for o in found],
        )
    else:
        output.note(f"no {'spot' if spot else 'on-demand'} offers for {gpu or 'any GPU'}")
    for name, reason in skipped.items():
        output.note(f"skipped {name}: {reason}")


@ferry_task(help={"json": "print one JSON document"})
def config(c, json=False):
    """The resolved settings, with every secret masked, and where each API key comes from."""
    report = doctor_lib.resolved_config(c)
    if json:
        output.emit_json(report)
        return
    for line in doctor_lib.config_lines(report):
        print(line)


@ferry_task(help={"json": "print one JSON document"})
def doctor(c, json=False):
    """Check keys, tools and the current instance; print each problem with its fix."""
    checks = doctor_lib.run_checks(c)
    if json:
        output.emit_json(checks)
    else:
        for check in checks:
            mark = "ok  " if check["ok"] else ("FAIL" if check.get("required") else "--  ")
            print(f"{mark}  {check['what']}: {check['detail']}" + ("" if check["ok"] else f"\n      fix: {check['fix']}"))
    if not all(ch["ok"] for ch in checks if ch.get("required")):
        from invoke.exceptions import Exit

        raise Exit(code=1)
