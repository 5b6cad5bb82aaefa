"""Inversion with diffusers' multistep inverse solver: the grid, the closed form of the Gaussian
oracle, prediction types, the round trip, and tiny random U-Nets (pixel and latent)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hsae.diffusion.invert import Inversion, capture_h, ddim_grid, invert, resume
from hsae.diffusion.solvers import InverseSolver, resume_solver, solver_timesteps

STD = 0.5


def _data(bb, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return bb.unet.mean + STD * torch.randn((n, *bb.latent_shape), generator=g, dtype=torch.float64)


def _ode_error(bb, x0: torch.Tensor, inv: Inversion) -> float:
    """Max distance of z_t from the probability-flow ODE's exact solution (Gaussian oracle)."""
    a, m = float(bb.scheduler.alphas_cumprod[inv.timestep]), bb.unet.mean
    exact = math.sqrt(a) * m + math.sqrt(a * STD**2 + 1 - a) * (x0 - m) / STD
    return float((inv.z_t - exact).abs().max())


@pytest.mark.parametrize("spacing", ["logsnr", "time"])
def test_solver_grid_is_strictly_increasing_between_the_ends(sd_backbone, spacing) -> None:
    for calls in (1, 2, 8, 40, 700):
        ts = solver_timesteps(sd_backbone, 1, 701, calls, spacing)
        assert len(ts) == calls + 1 and ts[0] == 1 and ts[-1] == 701
        assert all(b > a for a, b in itertools.pairwise(ts)), ts
    with pytest.raises(ValueError, match="use at most 700 calls"):
        solver_timesteps(sd_backbone, 1, 701, 701, spacing)


def test_specs_and_one_message_per_bad_value() -> None:
    assert InverseSolver.parse("ddim") == InverseSolver()
    assert InverseSolver.parse("dpm++3m:8") == InverseSolver("dpm++3m", 8)
    assert InverseSolver.parse("dpm++2m:12:time").label() == "dpm++2m:12:time"
    assert InverseSolver("dpm++3m").record() == {"inverse_scheduler": "dpm++3m", "inverse_calls": 8}
    assert InverseSolver().record() == {}  # DDIM stores keep their metadata (they still resume)
    for bad, match in [
        (lambda: InverseSolver("euler"), "must be one of"),
        (lambda: InverseSolver("dpm++2m", 0), ">= 1"),
        (lambda: InverseSolver("ddim", 8), "applies to a solver"),
        (lambda: InverseSolver("dpm++2m", 8, "karras"), "spacing must be one of"),
        (lambda: InverseSolver.parse("dpm++2m:x"), "NAME"),
    ]:
        with pytest.raises(ValueError, match=match):
            bad()


def test_ddim_is_the_plain_inversion(make_oracle_backbone) -> None:
    bb = make_oracle_backbone("epsilon", std=STD)
    x0 = _data(bb)
    got, want = InverseSolver().invert(bb, x0, 0.7, 20), invert(bb, x0, 0.7, 20)
    torch.testing.assert_close(got.z_t, want.z_t, rtol=0, atol=0)


def test_first_order_is_ddim_at_the_current_point(make_oracle_backbone) -> None:
    """dpm++1: the first call's ε takes the clean image to the first timestep and on to the
    second; then each step is DDIM's update with ε at the current point and timestep (the update
    of diffusers' DDIMInverseScheduler)."""
    bb = make_oracle_backbone("epsilon", std=STD)
    x0 = _data(bb)
    solver = InverseSolver("dpm++1", 5)
    inv = solver.invert(bb, x0, 0.7, 50)
    acp = bb.scheduler.alphas_cumprod.double()
    ts = solver_timesteps(bb, 1, 701, 5)
    eps = bb.unet(x0, torch.tensor([ts[0]])).sample  # one call: the hop and the first step
    z = acp[ts[0]].sqrt() * x0 + (1 - acp[ts[0]]).sqrt() * eps
    for i, (s, t) in enumerate(itertools.pairwise(ts)):
        eps = eps if i == 0 else bb.unet(z, torch.tensor([s])).sample
        x0_hat = (z - (1 - acp[s]).sqrt() * eps) / acp[s].sqrt()
        z = acp[t].sqrt() * x0_hat + (1 - acp[t]).sqrt() * eps
    torch.testing.assert_close(inv.z_t, z, rtol=0, atol=1e-5)  # the scheduler's float32 sigmas


def test_higher_orders_reach_the_ode_in_far_fewer_calls(make_oracle_backbone) -> None:
    bb = make_oracle_backbone("epsilon", std=STD)
    x0 = _data(bb)
    ddim50 = invert(bb, x0, 0.7, 50)  # 36 U-Net calls
    err = {s: _ode_error(bb, x0, InverseSolver.parse(s).invert(bb, x0, 0.7, 50)) for s in (
        "dpm++1:8", "dpm++2m:8", "dpm++3m:8")}  # fmt: skip
    assert err["dpm++3m:8"] < err["dpm++2m:8"] < err["dpm++1:8"], err
    assert err["dpm++3m:8"] < _ode_error(bb, x0, ddim50) / 4, err


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_prediction_types_give_the_same_inversion(make_oracle_backbone, prediction_type) -> None:
    solver = InverseSolver("dpm++3m", 6)
    ref = make_oracle_backbone("epsilon", std=STD)
    bb = make_oracle_backbone(prediction_type, std=STD)
    want = solver.invert(ref, _data(ref), 0.7, 50).z_t
    torch.testing.assert_close(solver.invert(bb, _data(bb), 0.7, 50).z_t, want, rtol=0, atol=1e-9)


def test_same_inversion_shape_and_the_solver_round_trip(make_oracle_backbone) -> None:
    bb = make_oracle_backbone("v_prediction", std=STD)
    x0 = _data(bb)
    solver = InverseSolver("dpm++2m", 8)
    inv = solver.invert(bb, x0, 0.7, 50)
    assert (inv.timestep, inv.t_index, inv.grid) == (701, 35, ddim_grid(bb, 50))
    _, h = resume(bb, inv.z_t, inv.t_index, inv.grid)  # the DDIM resume takes it unchanged
    torch.testing.assert_close(capture_h(bb, inv), h, rtol=0, atol=0)
    back = resume_solver(bb, inv.z_t, solver, 0.7, 50)
    assert float((back - x0).abs().max()) < 0.05
    with pytest.raises(ValueError, match="DDIM inversion resumes"):
        resume_solver(bb, inv.z_t, InverseSolver(), 0.7, 50)


def test_tiny_random_unets_pixel_and_latent(sd_backbone, make_pixel_backbone) -> None:
    for bb in (sd_backbone, make_pixel_backbone()):
        z0 = torch.randn((2, *bb.latent_shape), generator=torch.Generator().manual_seed(0))
        for spec in ("dpm++1:3", "dpm++2m:3", "dpm++3m:4"):
            solver = InverseSolver.parse(spec)
            inv = solver.invert(bb, z0, 0.5, 10)
            assert inv.z_t.shape == z0.shape and torch.isfinite(inv.z_t).all()
            assert inv.timestep == invert(bb, z0[:1], 0.5, 10).timestep
            assert torch.isfinite(resume_solver(bb, inv.z_t, solver, 0.5, 10)).all()
