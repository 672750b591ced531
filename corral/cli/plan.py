"""``corral plan``: how a model fits on this machine (or one described), and why."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from corral.engines import plan as fit
from corral.protocol.plan import PlanRequest
from corral.scheduler.machine import machine_facts
from corral.settings import Settings
from corral.units import format_size


def make_plan(settings: Settings, model: str, ask: PlanRequest) -> fit.Plan:
    """``model`` is a GGUF file, a config.json (or its directory), or a registry name."""
    path = Path(model).expanduser()
    if path.exists():
        shape = fit.shape_of_path(path)
    else:
        from corral.registry.store import Registry

        registry = Registry(settings.home, settings.database_url)
        try:
            shape = fit.shape_of_record(registry.get(model))
        finally:
            registry.close()
    machine = machine_facts(ask, settings.gpu_probe)
    quants = tuple(ask.quants) if ask.quants else None
    return fit.plan(shape, machine, ask.context, ask.slots, quants)


def show(p: fit.Plan, console: Console) -> None:
    f = p.facts
    gpu, ram = p.machine["gpu"], p.machine["ram"]
    console.print(
        f"[bold]{p.model}[/bold] ({p.source}) on {format_size(gpu) if gpu else 'no GPU'} "
        f"+ {format_size(ram)} RAM, {p.context:,} tokens x {p.slots} slot(s)"
    )
    facts = Table(box=None, pad_edge=False, show_header=False)
    active = f" ({f['active_parameters'] / 1e9:.2f}B active a token)" if "experts" in f else ""
    facts.add_row("parameters", f"{f['parameters'] / 1e9:.2f}B{active}")
    if "experts" in f:
        facts.add_row("experts", f"{f['experts']}, {f['experts_used']} a token")
    facts.add_row(
        "layers", f"{f['layers']}, {f['attention_layers']} with a KV cache (full attention)"
    )
    facts.add_row("KV cache", f"{f['kv_bytes_per_token'] / 1024:.1f} KiB a token (f16)")
    if f["state_bytes_per_sequence"]:
        state = format_size(f["state_bytes_per_sequence"])
        facts.add_row("recurrent state", f"{state} a sequence (linear-attention layers)")
    facts.add_row("trained context", f"{f['trained_context']:,}")
    console.print(facts)
    weights = Table("quantization", "weights", "of which experts", box=None, pad_edge=False)
    for w in p.weights:
        experts = format_size(w["expert_bytes"]) if w["expert_bytes"] else "-"
        weights.add_row(w["quant"], format_size(w["bytes"]), experts)
    console.print(weights)
    table = Table(
        "engine", "quant", "how", "GPU", "RAM", "fits", "max context", "tokens/s", box=None
    )
    for x in p.placements:
        rate = f"{x.tokens_per_s:.0f} ({x.speed_class})" if x.tokens_per_s else x.speed_class
        table.add_row(
            x.engine,
            x.quant,
            x.how,
            format_size(x.gpu_bytes) if x.gpu_bytes else "-",
            format_size(x.ram_bytes),
            "yes" if x.fits else "[red]no[/red]",
            f"{x.max_context:,}",
            rate,
        )
    console.print(table)
    for x in p.placements:
        if x.fits and x.flags:
            console.print(f"- {x.engine} {x.quant}: {x.why} Flags: [cyan]{x.flags}[/cyan]")
    console.print(f"[bold]{p.summary}[/bold]")
