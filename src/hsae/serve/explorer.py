"""What `hsae serve` holds while it runs: the run folder, the loaded setup, the feature catalog,
the edit engine and the one-at-a-time job queue; `open_explorer` builds them from the options."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsae.serve.catalog import Catalog
from hsae.serve.engine import EditEngine, EngineSettings
from hsae.serve.jobs import JobQueue
from hsae.serve.run import EDITBENCH_JSON, RunFolder, shown


@dataclass
class ServeOptions:
    """The settings `hsae serve` takes besides host and port (the edit flags of `hsae edit`)."""

    run: Path
    sae: Path | None = None
    store: Path | None = None
    model: str | None = None
    t: float | None = None
    steps: int | None = None
    prompt: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    cache_dir: Path | None = None
    no_cache: bool = False
    stats_images: int = 512
    engine: EngineSettings = field(default_factory=EngineSettings)


@dataclass
class Explorer:
    run: RunFolder
    setup: Any  # editing.setup.EditSetup
    catalog: Catalog
    engine: EditEngine
    jobs: JobQueue

    def summary(self) -> dict[str, Any]:
        cfg, st = self.setup.sae.cfg, self.setup.store
        return {
            "run": str(self.run.root),
            "model": self.setup.backbone.model_id,
            "sae": f"{cfg.architecture}, {cfg.n_latents} latents",
            "store": f"{len(st)} images" if st is not None else "none",
            "stats_rows": len(self.catalog.rows),
            "t": self.setup.t,
            "steps": self.setup.steps,
            "effects": self.catalog.effect_notes,
        }

    def close(self) -> None:
        self.jobs.close()


def setup_argv(opts: ServeOptions, run: RunFolder) -> list[str]:
    """The `hsae edit` flags that load the same model, SAE, store and cache as the explorer."""
    argv = ["--sae", shown(run.sae_dir)]
    if run.acts_dir is not None:
        argv += ["--store", shown(run.acts_dir)]
    for flag, value in (("--model", opts.model), ("--t", opts.t), ("--steps", opts.steps),
                        ("--prompt", opts.prompt), ("--cache-dir", opts.cache_dir)):  # fmt: skip
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--device", opts.device, "--dtype", opts.dtype]
    return argv + (["--no-cache"] if opts.no_cache else [])


def open_explorer(opts: ServeOptions) -> Explorer:
    """Load everything once: the same `load_setup` as `hsae edit`, then the catalog."""
    from hsae.editing.setup import load_setup
    from hsae.sae.selection import TARGET_SPARSITY

    run = RunFolder.open(opts.run, opts.sae, opts.store)
    args = argparse.Namespace(
        sae=run.sae_dir, store=run.acts_dir, model=opts.model, t=opts.t, steps=opts.steps,
        prompt=opts.prompt, threshold_k="auto", target_sparsity=TARGET_SPARSITY,
        dtype=opts.dtype, device=opts.device, cache_dir=opts.cache_dir, no_cache=opts.no_cache,
        no_progress=True,
    )  # fmt: skip
    setup = load_setup(args)
    if setup.store is None:
        raise FileNotFoundError(
            f"no activation store for {run.root}: expected {run.root / 'acts'} or pass --store"
        )
    catalog = Catalog(setup.sae, setup.store, opts.stats_images, run.read_doc(EDITBENCH_JSON))
    settings = EngineSettings(**{**vars(opts.engine), "setup_argv": setup_argv(opts, run)})
    engine = EditEngine(run, setup, catalog, settings)
    engine.warm()
    return Explorer(run, setup, catalog, engine, JobQueue(engine.run_edit))
