"""Non-SAE baselines of Table 2 (PCA, β-VAE, Random): registry, checkpoints, exact PCA on low-rank
data, β-VAE training (directly and through the streaming trainer), the Random error scale."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from hsae.sae import (
    BaseSAE,
    BetaVAE,
    PCABaseline,
    RandomBaseline,
    build_sae,
    known_architectures,
    load_sae,
    make_config,
)

BASELINES = {"pca": PCABaseline, "beta_vae": BetaVAE, "random": RandomBaseline}
C, K = 4, 3
D = C * K * K  # 36: the flattened h every baseline sees


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    # Shared 2-core machine: tiny matmuls only get slower with competing threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    yield
    torch.set_num_threads(before)


def low_rank_h(n: int, rank: int, seed: int = 0) -> torch.Tensor:
    """n images whose flattened h = offset + (n, rank) · (rank, D): exactly rank `rank` + mean."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, D, generator=g, dtype=torch.float64)
    coef = torch.randn(n, rank, generator=g, dtype=torch.float64) * torch.arange(rank, 0, -1)
    offset = 2.0 + torch.randn(D, generator=g, dtype=torch.float64)
    return (coef @ basis + offset).reshape(n, C, K, K)


def baseline(arch: str, n_latents: int = 6, **kw: object) -> BaseSAE:
    return build_sae(make_config(arch, C, K, n_latents=n_latents, **kw))


def fitted_pca(n_latents: int = 6, n: int = 40, batch: int = 3) -> tuple[PCABaseline, torch.Tensor]:
    h = low_rank_h(n, rank=n_latents)
    pca = baseline("pca", n_latents)
    assert isinstance(pca, PCABaseline)
    return pca.fit(h[i : i + batch] for i in range(0, n, batch)), h


@pytest.mark.parametrize("arch", sorted(BASELINES))
def test_registered_with_latent_codes(arch: str) -> None:
    sae = baseline(arch)
    assert arch in known_architectures() and type(sae) is BASELINES[arch]
    assert sae.code_axes == ("latent",) and sae.cfg.context == "none" and sae.cfg.d_in == D


@pytest.mark.parametrize("arch", sorted(BASELINES))
def test_save_load_round_trip(arch: str, tmp_path: Path) -> None:
    sae = fitted_pca()[0] if arch == "pca" else baseline(arch)
    sae.eval()
    sae.save(tmp_path / arch)
    back = load_sae(tmp_path / arch).eval()
    assert type(back) is type(sae) and back.cfg == sae.cfg
    assert sae.state_dict().keys() == back.state_dict().keys()
    for name, t in sae.state_dict().items():
        assert torch.equal(t, back.state_dict()[name]), name
    h = low_rank_h(5, rank=3, seed=1).float()
    codes = back.encode(h)
    assert codes.shape == (5, sae.cfg.n_latents)
    assert torch.equal(codes, sae.encode(h)) and torch.equal(back.decode(codes), sae.decode(codes))


def test_pca_reconstructs_low_rank_data_and_matches_svd() -> None:
    pca, h = fitted_pca(n_latents=6, n=40, batch=3)  # batches of 3 < 6 components: buffered
    h32 = h.float()
    rel = (pca(h32)[0] - h32).norm() / h32.norm()
    assert rel < 1e-5
    x = h.flatten(1).numpy()
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    want = s[:6] ** 2 / (len(x) - 1)
    np.testing.assert_allclose(pca.explained_variance.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(pca.mean.numpy(), x.mean(0), rtol=1e-6, atol=1e-6)
    eye = pca.components @ pca.components.T
    torch.testing.assert_close(eye, torch.eye(6), atol=1e-5, rtol=0)
    assert int(pca.n_samples_seen) == 40


def test_pca_needs_enough_images_and_a_fit() -> None:
    pca = baseline("pca", n_latents=6)
    assert isinstance(pca, PCABaseline)
    with pytest.raises(RuntimeError, match="not fitted"):
        pca.encode(low_rank_h(2, 2).float())
    with pytest.raises(ValueError, match="at least 6 images, got 5"):
        pca.fit([low_rank_h(3, 2), low_rank_h(2, 2)])
    with pytest.raises(ValueError, match="cannot exceed"):
        baseline("pca", n_latents=D + 1)
    with pytest.raises(ValueError, match="chunk_rows"):
        pca.fit([low_rank_h(8, 2)], chunk_rows=5)


def test_pca_max_images_stops_an_endless_source() -> None:
    h = low_rank_h(4, rank=3)
    source = itertools.cycle([(h, torch.arange(4))])  # trainer-style (h, image_index) tuples
    pca = baseline("pca", n_latents=3)
    assert isinstance(pca, PCABaseline)
    pca.fit(source, max_images=10)
    assert int(pca.n_samples_seen) == 10


def test_pca_fold_input_scale_keeps_codes() -> None:
    pca, h = fitted_pca()
    h = h.float()
    before = pca.encode(h / 4.0)
    var = pca.explained_variance.clone()
    pca.fold_input_scale(4.0)
    torch.testing.assert_close(pca.encode(h), before, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(pca.explained_variance, 16.0 * var)


def test_beta_vae_loss_decreases_and_eval_is_deterministic() -> None:
    vae = baseline("beta_vae", n_latents=4, l1_coeff=0.5)  # β = l1_coeff
    assert isinstance(vae, BetaVAE) and vae.beta == 0.5
    h = low_rank_h(64, rank=3).float()
    h = h / h.pow(2).mean().sqrt()
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    vae.train()
    losses = []
    for _ in range(50):
        out = vae.loss(h)
        assert {"loss", "mse", "l0", "kl"} <= out.keys()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    torch.testing.assert_close(out["loss"], out["mse"] + 0.5 * out["kl"])
    assert not torch.equal(vae.loss(h)["mse"], vae.loss(h)["mse"])  # z is sampled in training
    vae.eval()
    assert torch.equal(vae.encode(h), vae.encode(h))
    assert torch.equal(vae.loss(h)["loss"], vae.loss(h)["loss"])  # z = μ in eval mode
    torch.testing.assert_close(vae.loss(h)["mse"], (vae(h)[0] - h).pow(2).sum() / 64)
    assert vae.decoder_directions.shape == (4, D)


def test_beta_vae_fold_input_scale_is_exact() -> None:
    vae = baseline("beta_vae", n_latents=4).eval()
    h = low_rank_h(3, rank=3).float()
    codes, h_hat = vae.encode(h / 3.0), vae(h / 3.0)[0]
    vae.fold_input_scale(3.0)
    torch.testing.assert_close(vae.encode(h), codes, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vae(h)[0], 3.0 * h_hat, rtol=1e-5, atol=1e-5)


def test_beta_vae_trains_with_the_streaming_trainer(tmp_path: Path, monkeypatch) -> None:
    from hsae.data.store import ActivationStore
    from hsae.data.store_writer import ActivationStoreWriter
    from hsae.training import loop as T

    monkeypatch.setattr(T, "plot_curves", lambda history, path: Path(path).write_bytes(b""))
    n = 16
    w = ActivationStoreWriter.open(
        tmp_path / "store",
        meta={"model": "synthetic"},
        shape=(C, K, K),
        shard_size=8,
        ids=[f"{i:02d}" for i in range(n)],
        splits=[0] * n,
    )
    h = low_rank_h(n, rank=3).float().numpy()
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        w.write_shard(i, h[a:b])
    vae = baseline("beta_vae", n_latents=4, l1_coeff=0.1)
    cfg = T.TrainConfig(steps=6, batch_images=4, warmup_steps=2, checkpoint_every=6, log_every=3)
    metrics = T.train(
        vae, ActivationStore(tmp_path / "store"), cfg, tmp_path / "run", progress=False
    )
    assert np.isfinite(metrics["final"]["loss"]) and metrics["final"]["l0"] == 4
    back = load_sae(tmp_path / "run").eval()
    assert isinstance(back, BetaVAE) and back.cfg.input_scale == metrics["input_scale"]
    x = torch.from_numpy(h)
    torch.testing.assert_close(back(x)[0], vae.eval()(x)[0])


def test_random_error_has_the_expected_huge_scale() -> None:
    rnd = baseline("random", n_latents=16)
    assert isinstance(rnd, RandomBaseline)
    assert rnd.fit(iter(())) is rnd and not list(rnd.parameters())  # nothing to train
    h = torch.randn(256, C, K, K)
    err = (rnd(h)[0] - h).pow(2).sum(dim=(1, 2, 3)) / h.pow(2).sum(dim=(1, 2, 3))
    want = RandomBaseline.expected_sq_error_ratio(D, 16)  # d·L + 1 = 577
    assert abs(np.log10(float(err.mean())) - np.log10(want)) < 0.3  # within a factor of 2
