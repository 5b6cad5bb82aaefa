"""The committed toy DDPM's sample check (scripts/check_toy_model.py) must be a passing check of
the committed weights: new weights without a new check, or a check that failed, fail here."""

from __future__ import annotations

import json

from hsae.diffusion.backbone import TOY_MODEL_DIR, DiffusionBackbone

RECHECK = (
    "re-run `python scripts/check_toy_model.py --data data/toyfaces --n 1000 --batch 250 "
    "--eta 1 --render-judge --out src/hsae/assets/toy-ddpm` and commit its sample_check.json"
)


def test_committed_check_judged_the_committed_weights_and_passed(monkeypatch):
    monkeypatch.delenv("HSAE_TOY_MODEL", raising=False)
    check = json.loads((TOY_MODEL_DIR / "sample_check.json").read_text())
    assert check.get("weights") == DiffusionBackbone.load("toy").weights_fingerprint(), RECHECK
    assert check["n"] >= 1000, RECHECK
    worst = max(abs(row["gap"]) for row in check["attributes"].values())
    assert check["pass"] and worst == check["max_abs_gap"] <= 0.10
    assert (check["model"], check["steps"]) == ("toy", 50)
