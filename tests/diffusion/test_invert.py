"""DDIM inversion / resume: the grid, exact oracles (closed forms), and tiny random U-Nets."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import SD_SCHEDULER
from hsae.diffusion.invert import Inversion, capture_h, ddim_grid, invert, resume

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# ----- the grid ----------------------------------------------------------------------------------
def test_grid_honours_steps_offset_and_spacing(sd_backbone, make_pixel_backbone):
    grid = ddim_grid(sd_backbone, 10)  # SD: steps_offset=1, timestep_spacing="leading"
    assert grid.timesteps == tuple(range(1, 1000, 100))
    acp = sd_backbone.scheduler.alphas_cumprod
    assert grid.alphas == tuple(float(acp[t]) for t in grid.timesteps)
    assert grid.alpha_before(0) == 1.0 and grid.alpha_before(3) == grid.alphas[2]
    assert all(a > b for a, b in zip(grid.alphas, grid.alphas[1:], strict=False))
    assert grid.timesteps[grid.index_for(0.7)] == 701
    assert grid.index_for(1.0) == 9

    grid = ddim_grid(make_pixel_backbone(), 10)  # DDPM default config: steps_offset=0
    assert grid.timesteps == tuple(range(0, 1000, 100))
    assert grid.timesteps[grid.index_for(0.7)] == 700
    with pytest.raises(ValueError, match="steps"):
        ddim_grid(sd_backbone, 0)


def test_grid_spacing_override_leaves_the_model_alone(sd_backbone, make_pixel_backbone):
    for bb in (sd_backbone, make_pixel_backbone()):
        trailing = ddim_grid(bb, 10, "trailing")
        assert trailing.timesteps[-1] == 999  # sampling from noise starts at t = T - 1
        assert trailing.timesteps == tuple(range(99, 1000, 100))
        assert bb.scheduler.config.timestep_spacing == "leading"
        assert ddim_grid(bb, 10).timesteps[-1] < 999
    with pytest.raises(ValueError, match="spacing must be one of"):
        ddim_grid(sd_backbone, 10, "random")


@pytest.mark.parametrize("t", [0.0, -0.1, 1.01, 2.0])
def test_t_outside_unit_interval(make_oracle_backbone, t):
    bb = make_oracle_backbone()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        invert(bb, torch.zeros((1, *bb.latent_shape)), t=t, steps=10)


def test_resume_argument_errors(make_oracle_backbone):
    bb = make_oracle_backbone()
    inv = invert(bb, torch.zeros((1, *bb.latent_shape)), t=0.5, steps=10)
    with pytest.raises(ValueError, match="t_index"):
        resume(bb, inv.z_t, 10, inv.grid)
    with pytest.raises(ValueError, match="edit_steps"):
        resume(bb, inv.z_t, inv.t_index, inv.grid, h_edit=lambda h: h, edit_steps=0)


# ----- oracle: exact denoiser of a Gaussian / point-mass data set --------------------------------
def _data(bb, std: float, n: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *bb.latent_shape), generator=g, dtype=torch.float64)
    return bb.unet.mean + std * noise


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_oracle_round_trip_error_is_small_and_shrinks_with_steps(
    make_oracle_backbone, prediction_type
):
    bb = make_oracle_backbone(prediction_type, std=0.5)
    x0 = _data(bb, 0.5)
    errs = []
    for steps in (10, 25, 50):
        inv = invert(bb, x0, t=0.7, steps=steps)
        z0, _ = resume(bb, inv.z_t, inv.t_index, inv.grid)
        errs.append(_max_err(z0, x0))
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < errs[0] / 3, errs  # first order in the step size
    assert errs[2] < 0.15, errs  # (data scale: std 0.5 around a unit-normal mean)


@pytest.mark.parametrize("std", [0.0, 0.5])
def test_oracle_prediction_types_agree(make_oracle_backbone, std):
    """The v / sample → (x0, ε) conversions: identical trajectories to float64 tolerance."""
    results = {}
    for pt in PREDICTION_TYPES:
        bb = make_oracle_backbone(pt, std=std)
        x0 = _data(bb, max(std, 0.3))
        inv = invert(bb, x0, t=0.7, steps=20)
        z0, h = resume(bb, inv.z_t, inv.t_index, inv.grid)
        results[pt] = (inv.z_t, z0, h)
    ref = results["epsilon"]
    for pt in PREDICTION_TYPES[1:]:
        for got, want in zip(results[pt], ref, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_oracle_point_mass_resume_lands_on_the_point(make_oracle_backbone, prediction_type):
    """With an exact point-mass denoiser DDIM is exact: any z_t resumes to x* (ᾱ = 1 at the end)."""
    bb = make_oracle_backbone(prediction_type, std=0.0)
    grid = ddim_grid(bb, 10)
    z_t = torch.randn((2, *bb.latent_shape), generator=torch.Generator().manual_seed(5))
    z0, h = resume(bb, z_t.double(), grid.index_for(0.7), grid)
    torch.testing.assert_close(z0, bb.unet.mean.expand_as(z0), rtol=0, atol=1e-9)
    # h_t is the oracle's ε at z_t: (z_t − √ᾱ x*) / √(1−ᾱ)
    a = grid.alphas[grid.index_for(0.7)]
    want = (z_t.double() - a**0.5 * bb.unet.mean) / (1 - a) ** 0.5
    torch.testing.assert_close(h, want, rtol=0, atol=1e-9)


def _oracle_samples(bb, spacing: str, eta: float, n: int = 4000) -> torch.Tensor:
    grid = ddim_grid(bb, 50, spacing)
    g = torch.Generator().manual_seed(3)
    z = torch.randn((n, *bb.latent_shape), generator=g, dtype=torch.float64)
    return resume(bb, z, len(grid.timesteps) - 1, grid, eta=eta, generator=g)[0]


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_oracle_sampling_from_noise_matches_the_data(make_oracle_backbone, eta):
    """From pure noise at t = T, exact denoisers sample about N(mean, std²), deterministic
    (eta 0) and ancestral (eta 1) DDIM alike. The cosine schedule (the toy's) has ᾱ_T ≈ 0, so
    pure noise is the right start. 50 coarse steps lose a little variance (more with eta 1)."""
    cosine = {**SD_SCHEDULER, "beta_schedule": "squaredcos_cap_v2"}
    bb = make_oracle_backbone("v_prediction", std=0.5, scheduler=cosine)
    x = _oracle_samples(bb, "trailing", eta)
    assert _max_err(x.mean(0), bb.unet.mean) < 0.03
    assert abs(float((x - bb.unet.mean).std()) - 0.5) < 0.04
    if eta == 0.0:  # "leading" starts below T, where pure noise lacks the expected signal
        leading = _oracle_samples(bb, "leading", eta)
        assert _max_err(leading.mean(0), bb.unet.mean) > 1.3 * _max_err(x.mean(0), bb.unet.mean)


def test_eta_noise_is_seeded_and_vanishes_at_a_point_mass(make_oracle_backbone):
    bb = make_oracle_backbone("epsilon", std=0.3)
    grid = ddim_grid(bb, 10, "trailing")
    z = torch.randn((2, *bb.latent_shape), generator=torch.Generator().manual_seed(4)).double()

    def run(eta: float, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return resume(bb, z, len(grid.timesteps) - 1, grid, eta=eta, generator=g)[0]

    torch.testing.assert_close(run(1.0, 0), run(1.0, 0), rtol=0, atol=0)
    assert _max_err(run(1.0, 0), run(1.0, 1)) > 1e-3 and _max_err(run(1.0, 0), run(0.0, 0)) > 1e-3
    point = make_oracle_backbone("epsilon", std=0.0)
    x = resume(point, z, len(grid.timesteps) - 1, grid, eta=1.0, generator=torch.Generator())[0]
    torch.testing.assert_close(x, point.unet.mean.expand_as(x), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="eta must be in"):
        resume(bb, z, 3, grid, eta=1.5)


def _affine_inversion(x0, mean, std, timesteps, acp):
    """The DDIM inversion recurrence written out for the Gaussian oracle (independent of hsae)."""
    z, a_from = x0.clone(), 1.0
    for t in timesteps:
        a_to = float(acp[t])
        eps = math.sqrt(1 - a_to) * (z - math.sqrt(a_to) * mean) / (a_to * std**2 + 1 - a_to)
        x0_hat = (z - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
        z = math.sqrt(a_to) * x0_hat + math.sqrt(1 - a_to) * eps
        a_from = a_to
    return z


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_oracle_full_inversion_closed_form(make_oracle_backbone, prediction_type):
    """t = 1.0: z_T follows the DDIM recurrence over the hand-made grid 1, 101, …, 901, and tends
    to the probability-flow ODE solution √ᾱ_T m + √(ᾱ_T s² + 1 − ᾱ_T) (x0 − m) / s as steps grow."""
    std = 0.5
    bb = make_oracle_backbone(prediction_type, std=std)
    x0, mean = _data(bb, std), bb.unet.mean
    acp = bb.scheduler.alphas_cumprod

    inv = invert(bb, x0, t=1.0, steps=10)
    assert isinstance(inv, Inversion)
    assert inv.timestep == 901 and inv.t_index == 9
    want = _affine_inversion(x0, mean, std, range(1, 1000, 100), acp)
    torch.testing.assert_close(inv.z_t, want, rtol=0, atol=1e-10)

    errs = []
    for steps in (10, 50, 200):
        inv = invert(bb, x0, t=1.0, steps=steps)
        a = inv.grid.alphas[-1]
        ode = math.sqrt(a) * mean + math.sqrt(a * std**2 + 1 - a) * (x0 - mean) / std
        errs.append(_max_err(inv.z_t, ode))
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 0.1, errs


def test_oracle_capture_h_and_edit_steps(make_oracle_backbone):
    bb = make_oracle_backbone("v_prediction", std=0.5)
    inv = invert(bb, _data(bb, 0.5), t=0.7, steps=10)
    _, h_t = resume(bb, inv.z_t, inv.t_index, inv.grid)
    torch.testing.assert_close(capture_h(bb, inv), h_t, rtol=0, atol=0)

    seen = []

    def edit(h):
        seen.append(h)
        return h * 1.5

    z1, h1 = resume(bb, inv.z_t, inv.t_index, inv.grid, h_edit=edit)
    z3, h3 = resume(bb, inv.z_t, inv.t_index, inv.grid, h_edit=edit, edit_steps=3)
    assert len(seen) == 1 + 3
    assert torch.equal(h1, h_t) and torch.equal(h3, h_t)  # h_t is reported before the edit
    assert _max_err(z1, z3) > 1e-6


# ----- tiny random diffusers models --------------------------------------------------------------
@pytest.fixture(params=["pixel-epsilon", "pixel-v_prediction", "sd"])
def random_case(request, sd_backbone, make_pixel_backbone):
    if request.param == "sd":
        bb = sd_backbone
        images = torch.rand((2, 3, 16, 16), generator=torch.Generator().manual_seed(0)) * 2 - 1
        return bb, bb.encode(images), (8, 4, 4), "a cat"
    bb = make_pixel_backbone(request.param.split("-", 1)[1])
    images = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    return bb, bb.encode(images), (16, 8, 8), ""


def test_random_models_invert_resume_edit(random_case):
    bb, z0, h_shape, prompt = random_case
    steps, t = 4, 0.5
    inv = invert(bb, z0, t=t, steps=steps, prompt=prompt)
    assert inv.z_t.shape == z0.shape
    assert inv.timestep == inv.grid.timesteps[inv.t_index]
    assert inv.timestep == 500 + bb.scheduler.config.steps_offset
    assert torch.isfinite(inv.z_t).all()
    assert torch.equal(invert(bb, z0, t=t, steps=steps, prompt=prompt).z_t, inv.z_t)

    def run(h_edit=None):
        return resume(bb, inv.z_t, inv.t_index, inv.grid, prompt=prompt, h_edit=h_edit)

    x, h_t = run()
    assert x.shape == z0.shape and h_t.shape == (z0.shape[0], *h_shape)
    assert torch.isfinite(x).all()
    x2, h2 = run()
    assert torch.equal(x, x2) and torch.equal(h_t, h2)  # deterministic
    assert torch.equal(capture_h(bb, inv, prompt), h_t)
    assert torch.equal(run(lambda h: h)[0], x)
    assert torch.equal(run(h_t.clone())[0], x)  # κ = 1 reproduces the unedited result
    edited, h_e = run(lambda h: h + 0.5 * h.std())
    assert torch.equal(h_e, h_t)
    assert _max_err(edited, x) > 1e-6
    assert bb.decode(x).shape == (z0.shape[0], 3, bb.image_size, bb.image_size)
