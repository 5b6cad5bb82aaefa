"""SAE architectures: shapes, Drop, context, hand-computed loss, checkpoints, TopK/AuxK, and a
planted-dictionary recovery test that a random decoder fails."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hsae.sae import (
    CFG_FILE,
    WEIGHTS_FILE,
    BaseSAE,
    ChannelAwareSAE,
    FlatSAE,
    SAEConfig,
    SpatialTopKSAE,
    TopKChannelSAE,
    build_sae,
    known_architectures,
    load_sae,
    make_config,
)

ARCHS = ["channel_aware", "flat", "topk_channel", "spatial_topk"]
C, K, L = 4, 3, 16


def small(arch: str, **kw: object) -> BaseSAE:
    kw = {"n_latents": L, "k": 3, "n_train_images": 5, **kw}
    return build_sae(make_config(arch, C, K, **kw))


def rand_h(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, C, K, K, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(1234)
    yield


def test_registry_lists_every_architecture() -> None:
    assert set(ARCHS) <= set(known_architectures())


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes(arch: str) -> None:
    sae = small(arch)
    h = rand_h()
    h_hat, codes = sae(h, torch.tensor([0, 4]) if sae.cfg.context == "channel+image" else None)
    assert h_hat.shape == h.shape
    token_axes = {"channel": C, "position": K * K}
    want = (2, *[token_axes[a] for a in sae.code_axes[:-1]], L)
    assert sae.code_axes[-1] == "latent" and codes.shape == want
    assert torch.all(codes >= 0)
    with pytest.raises(ValueError, match="expected h of shape"):
        sae.encode(torch.zeros(2, C + 1, K, K))
    with pytest.raises(ValueError, match="expected codes"):
        sae.decode(torch.zeros(2, L + 1))


@pytest.mark.parametrize("arch", ["channel_aware", "topk_channel"])
def test_drop_removes_the_two_context_outputs(arch: str) -> None:
    sae = small(arch)
    assert sae.W_dec.shape == (L, K * K + 2) and sae.b_dec.shape == (K * K + 2,)
    codes = sae.encode(rand_h())
    full = codes @ sae.W_dec + sae.b_dec
    assert torch.allclose(sae.decode(codes), full[..., : K * K].reshape(2, C, K, K))
    with torch.no_grad():  # what the dropped dims hold must not reach h_hat
        sae.W_dec[:, K * K :] = 1e6
        sae.b_dec[K * K :] = -1e6
    assert torch.allclose(sae.decode(codes), full[..., : K * K].reshape(2, C, K, K))


@pytest.mark.parametrize(
    ("context", "d_enc"), [("channel+image", 66), ("channel", 66), ("none", 64)]
)
def test_context_sets_encoder_input_dim(context: str, d_enc: int) -> None:
    sae = build_sae(make_config("channel_aware", 128, 8, context=context, n_train_images=10))
    assert sae.cfg.d_in == 64 and sae.W_enc.shape == (d_enc, 512)
    assert isinstance(sae, ChannelAwareSAE) and (sae.zeta is None) == (context == "none")


def test_channel_context_ignores_image_index() -> None:
    sae = small("channel_aware", context="channel")
    h = rand_h()
    a = sae.encode(h, torch.tensor([0, 1]))
    assert torch.equal(a, sae.encode(h, torch.tensor([3, 4])))
    assert torch.equal(a, sae.encode(h))


def test_image_context_uses_the_index() -> None:
    sae = small("channel_aware")
    h = rand_h()
    assert not torch.allclose(
        sae.encode(h, torch.tensor([0, 0])), sae.encode(h, torch.tensor([4, 4]))
    )


def test_unseen_image_uses_half() -> None:
    # n_train_images = 11: index 5 normalises to 5 / 10 = 0.5.
    sae = small("channel_aware", n_train_images=11)
    assert isinstance(sae, ChannelAwareSAE) and sae.zeta is not None
    h = rand_h()
    assert torch.equal(sae.encode(h), sae.encode(h, torch.tensor([5, 5])))
    seen: list[torch.Tensor] = []

    def record(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0])

    sae.zeta.register_forward_pre_hook(record)
    sae.encode(h)
    chan = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    want = torch.stack([chan, torch.full((C,), 0.5)], dim=-1).expand(2, C, 2)
    assert torch.allclose(seen[0], want)


def test_image_index_validation() -> None:
    sae = small("channel_aware")
    with pytest.raises(ValueError, match="n_train_images=5"):
        sae.encode(rand_h(), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="integer tensor"):
        sae.encode(rand_h(), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="n_train_images >= 1"):
        build_sae(make_config("channel_aware", C, K))


def _set(sae: BaseSAE, **params: list) -> None:
    with torch.no_grad():
        for name, value in params.items():
            getattr(sae, name).copy_(torch.tensor(value))


def test_loss_by_hand_with_context_and_drop() -> None:
    cfg = make_config("channel_aware", 2, 1, n_latents=2, l1_coeff=0.1, n_train_images=3)
    sae = build_sae(cfg)
    assert isinstance(sae, ChannelAwareSAE) and sae.zeta is not None
    last = sae.zeta[2]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():  # ζ outputs the constant (ρ, μ) = (1, -1) for every token
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, -1.0]))
    _set(sae, W_enc=[[1.0, -1.0], [0.5, 0.0], [0.0, 0.5]], b_enc=[0.0, 1.0])
    _set(sae, W_dec=[[2.0, 7.0, 7.0], [1.0, -7.0, -7.0]], b_dec=[0.1, 3.0, 3.0])
    h = torch.tensor([1.0, -2.0]).reshape(1, 2, 1, 1)
    # token x=1:  pre = [1 + .5, -1 + 1 - .5] = [1.5, -.5], α = [1.5, 0], ĥ = 3.1, err 2.1² = 4.41
    # token x=-2: pre = [-2 + .5, 2 + 1 - .5] = [-1.5, 2.5], α = [0, 2.5], ĥ = 2.6, err 4.6² = 21.16
    out = sae.loss(h, torch.tensor([1]))
    assert out["mse"].item() == pytest.approx((4.41 + 21.16) / 2)
    assert out["l1"].item() == pytest.approx((1.5 + 2.5) / 2)
    assert out["l0"].item() == pytest.approx(1.0)
    assert out["loss"].item() == pytest.approx(12.785 + 0.1 * 2.0)


def test_loss_by_hand_sums_over_token_dims() -> None:
    cfg = make_config("channel_aware", 1, 2, n_latents=1, l1_coeff=0.5, context="none")
    sae = build_sae(cfg)
    _set(sae, W_enc=[[1.0], [0.0], [0.0], [0.0]], b_enc=[0.0])
    _set(sae, W_dec=[[1.0, 1.0, 0.0, 0.0]], b_dec=[0.0, 0.0, 0.0, 0.0])
    h = torch.tensor([[3.0, 1.0, 2.0, -1.0], [-1.0, 0.0, 0.0, 2.0]]).reshape(2, 1, 2, 2)
    # image 1: α = 3, ĥ = [3, 3, 0, 0], err 0 + 4 + 4 + 1 = 9; image 2: α = 0, err 1 + 4 = 5
    out = sae.loss(h)
    assert out["mse"].item() == pytest.approx(7.0)
    assert out["l1"].item() == pytest.approx(1.5)
    assert out["l0"].item() == pytest.approx(0.5)
    assert out["loss"].item() == pytest.approx(7.0 + 0.5 * 1.5)


def test_parameter_counts_channel_aware_vs_flat() -> None:
    # Built for real (~0.7 s, 670 MB): the meta device would cost more, importing torch._refs.
    ca = build_sae(make_config("channel_aware", 1280, 8, n_latents=512, n_train_images=100))
    flat = build_sae(make_config("flat", 1280, 8, n_latents=512))
    zeta = (2 * 16 + 16) + (16 * 2 + 2)
    n_ca = sum(p.numel() for p in ca.parameters())
    n_flat = sum(p.numel() for p in flat.parameters())
    assert n_ca == 2 * 66 * 512 + 512 + 66 + zeta == 68_244  # ~6.8e4
    assert n_flat == 2 * 81_920 * 512 + 512 + 81_920 == 83_968_512  # ~8.4e7
    assert isinstance(flat, FlatSAE)


def _perturb(sae: BaseSAE) -> None:
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    if isinstance(sae, TopKChannelSAE | SpatialTopKSAE):
        sae.steps_since_fired.copy_(torch.arange(L))


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(arch: str, tmp_path: Path) -> None:
    sae = small(arch, timestep=700, model_id="toy", store_path="/data/store")
    _perturb(sae)
    sae.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [CFG_FILE, WEIGHTS_FILE]
    back = load_sae(tmp_path / "ckpt")
    assert type(back) is type(sae) and back.cfg == sae.cfg
    idx = torch.tensor([1, 3]) if sae.cfg.context == "channel+image" else None
    for a, b in zip(sae(rand_h(), idx), back(rand_h(), idx), strict=True):
        assert torch.equal(a, b)
    for name, t in sae.state_dict().items():
        assert torch.equal(t, back.state_dict()[name])
    assert type(sae).load(tmp_path / "ckpt").cfg == sae.cfg


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="folder not found"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="SAE config not found"):
        load_sae(tmp_path / "empty")
    ckpt = small("flat").save(tmp_path / "flat")
    with pytest.raises(ValueError, match="holds a 'flat' SAE"):
        ChannelAwareSAE.load(ckpt)
    cfg = json.loads((ckpt / CFG_FILE).read_text())
    (ckpt / CFG_FILE).write_text(json.dumps({**cfg, "n_latents": 2 * L}))
    with pytest.raises(ValueError, match="has shape"):
        load_sae(ckpt)
    (ckpt / CFG_FILE).write_text(json.dumps({**cfg, "architecture": "mystery"}))
    with pytest.raises(ValueError, match=r"unknown SAE architecture 'mystery'.*channel_aware"):
        load_sae(ckpt)
    (ckpt / CFG_FILE).write_text(json.dumps({**cfg, "lambda": 1.0}))
    with pytest.raises(ValueError, match=r"cfg.json: unknown SAE config key\(s\) \['lambda'\]"):
        load_sae(ckpt)
    (ckpt / CFG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_sae(ckpt)
    (ckpt / CFG_FILE).write_text(json.dumps(cfg))
    (ckpt / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        load_sae(ckpt)
    (ckpt / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="weights not found"):
        load_sae(ckpt)


def test_config_json_and_validation() -> None:
    cfg = make_config("topk_channel", C, K, k=4, n_train_images=9)
    assert SAEConfig.from_json(cfg.to_json()) == cfg
    good = cfg.to_dict()
    bad_cases: list[tuple[dict[str, object], str]] = [
        ({"n_latents": "512"}, "must be int"),
        ({"context": "image"}, "context must be one of"),
        ({"k": 0}, "k must be in"),
        ({"n_latents": 0}, "n_latents must be >= 1"),
        ({"unit_norm_decoder": 1}, "must be bool"),
    ]
    for change, msg in bad_cases:
        with pytest.raises(ValueError, match=msg):
            SAEConfig.from_dict({**good, **change})
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['d_in'\]"):
        SAEConfig.from_dict({k: v for k, v in good.items() if k != "d_in"})
    with pytest.raises(ValueError, match="d_in must be 9"):
        build_sae(SAEConfig("channel_aware", d_in=10, n_channels=C, spatial=K, n_train_images=2))
    with pytest.raises(ValueError, match=r"needs cfg\.k"):
        build_sae(make_config("spatial_topk", C, K))
    with pytest.raises(ValueError, match="supports context"):
        build_sae(make_config("flat", C, K, context="channel"))
    assert make_config("flat", C, K).context == "none"
    assert make_config("channel_aware", C, K, n_train_images=2).context == "channel+image"


@pytest.mark.parametrize("arch", ARCHS)
def test_fold_input_scale_keeps_codes(arch: str) -> None:
    sae = small(arch)
    _perturb(sae)
    folded = copy.deepcopy(sae)
    folded.fold_input_scale(4.0)
    h = rand_h() * 4.0
    idx = torch.tensor([0, 2]) if sae.cfg.context == "channel+image" else None
    assert torch.allclose(folded.encode(h, idx), sae.encode(h / 4.0, idx), atol=1e-5)
    assert torch.allclose(folded(h, idx)[0], 4.0 * sae(h / 4.0, idx)[0], atol=1e-4)
    assert folded.cfg.input_scale == 4.0 and sae.cfg.input_scale == 1.0


def test_decoder_bias_and_unit_norm() -> None:
    sae = small("channel_aware", unit_norm_decoder=True)
    assert torch.allclose(sae.decoder_directions.norm(dim=1), torch.ones(L))
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder()
    assert torch.allclose(sae.decoder_directions.norm(dim=1), torch.ones(L))
    mean = torch.arange(K * K, dtype=torch.float32)
    sae.init_decoder_bias(mean)
    assert torch.equal(sae.b_dec[: K * K], mean)
    with pytest.raises(ValueError, match="mean_token must have 9"):
        sae.init_decoder_bias(torch.zeros(4))


@pytest.mark.parametrize("arch", ["topk_channel", "spatial_topk"])
def test_topk_at_most_k_nonzeros_per_token(arch: str) -> None:
    sae = small(arch, k=3)
    codes = sae.encode(rand_h(4))
    nonzero = (codes != 0).sum(-1)
    assert int(nonzero.max()) == 3 and torch.all(nonzero <= 3)


@pytest.mark.parametrize("arch", ["topk_channel", "spatial_topk"])
def test_auxk_zero_without_dead_latents_positive_with(arch: str) -> None:
    sae = small(arch, k=2, dead_steps=5)
    assert isinstance(sae, TopKChannelSAE | SpatialTopKSAE)
    sae.eval()  # loss() must not move the dead-latent counters here
    h = rand_h(3)
    out = sae.loss(h)
    assert out["aux"].item() == 0.0 and out["dead"].item() == 0.0
    sae.steps_since_fired[: L // 2] = 5
    out = sae.loss(h)
    assert out["aux"].item() > 0 and out["dead"].item() == 0.5
    assert out["loss"].item() == pytest.approx((out["mse"] + out["aux"] / 32).item())
    out["loss"].backward()
    assert sae.W_enc.grad is not None and sae.W_enc.grad[:, : L // 2].abs().sum() > 0


def test_dead_latent_counter_advances_only_in_training() -> None:
    sae = small("topk_channel", k=1)
    assert isinstance(sae, TopKChannelSAE)
    h = rand_h(1)
    sae.eval()
    sae.loss(h)
    assert int(sae.steps_since_fired.sum()) == 0
    sae.train()
    codes = sae.encode(h)
    sae.loss(h)
    fired = (codes != 0).reshape(-1, L).any(0)
    assert torch.equal(sae.steps_since_fired, (~fired).long())


# --- planted dictionary -------------------------------------------------------------------------
N_ATOMS, DIM = 32, 16


def planted_tokens(atoms: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n tokens, each 1-3 atoms with coefficients in [0.5, 1.5], plus noise of std 0.01."""
    n_active = torch.randint(1, 4, (n,), generator=g)
    rank = torch.rand(n, N_ATOMS, generator=g).argsort(dim=1).argsort(dim=1)
    coef = (0.5 + torch.rand(n, N_ATOMS, generator=g)) * (rank < n_active[:, None])
    return coef @ atoms + 0.01 * torch.randn(n, DIM, generator=g)


def atoms_recovered(sae: BaseSAE, atoms: torch.Tensor) -> float:
    dirs = sae.decoder_directions.detach()
    cos = atoms @ (dirs / dirs.norm(dim=1, keepdim=True)).T
    return (cos.max(dim=1).values > 0.9).float().mean().item()


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Tiny matmuls: threading costs more than it saves, and a DDPM job shares the machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_planted_dictionary_is_recovered(one_thread: None) -> None:
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(N_ATOMS, DIM, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    data = planted_tokens(atoms, 10_000, g).reshape(-1, 1, 4, 4)  # context "none": d_in = 16
    cfg = make_config(
        "channel_aware", 1, 4, n_latents=64, context="none", l1_coeff=0.5, unit_norm_decoder=True
    )
    sae = build_sae(cfg)  # global RNG (seeded by the fixture), independent of the atoms
    assert atoms_recovered(sae, atoms) < 0.1  # a random decoder does not pass
    opt = torch.optim.Adam(sae.parameters(), lr=2e-2)
    for _ in range(400):
        batch = data[torch.randint(0, len(data), (512,), generator=g)]
        out = sae.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sae.normalize_decoder()  # the trainer's job when cfg.unit_norm_decoder
    assert atoms_recovered(sae, atoms) >= 0.8
    assert out["l0"].item() < 8  # sparse: a few of 64 latents per token


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "mm-fallback"])
@pytest.mark.parametrize("context", ["channel+image", "channel", "none"])
def test_fused_channel_aware_loss_matches_the_base_loss(
    context: str, onednn: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 2-D training path of ChannelAwareSAE.loss equals eq. 8 as BaseSAE computes it, with
    oneDNN's fused linear and with the torch.mm fallback."""
    from hsae.sae import channel_aware
    from hsae.sae.base import BaseSAE

    if onednn and not channel_aware._ONEDNN_LINEAR:
        pytest.skip("oneDNN linear is not available in this torch build")
    monkeypatch.setattr(channel_aware, "_ONEDNN_LINEAR", onednn)

    torch.manual_seed(0)
    cfg = make_config("channel_aware", 5, 3, n_latents=12, l1_coeff=0.3, context=context,
                      n_train_images=4)  # fmt: skip
    sae = build_sae(cfg)
    h, idx = torch.randn(4, 5, 3, 3), torch.arange(4)
    fused = sae.loss(h, idx)
    g_fused = torch.autograd.grad(fused["loss"], list(sae.parameters()), allow_unused=True)
    base = BaseSAE.loss(sae, h, idx)
    g_base = torch.autograd.grad(base["loss"], list(sae.parameters()), allow_unused=True)
    for key in ("loss", "mse", "l1", "l0"):
        torch.testing.assert_close(fused[key], base[key])
    for a, b in zip(g_fused, g_base, strict=True):
        if a is None or b is None:  # the dropped context dims of W_dec / b_dec get no gradient
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b)
    codes = sae.encode(h, idx)
    assert torch.equal(fused["fired"], (codes > 0).reshape(-1, 12).any(0))
    # The gradient with respect to h too (the training path skips it unless h requires one).
    h.requires_grad_(True)
    g_h = torch.autograd.grad(sae.loss(h, idx)["loss"], h)[0]
    torch.testing.assert_close(g_h, torch.autograd.grad(BaseSAE.loss(sae, h, idx)["loss"], h)[0])


@pytest.mark.parametrize("n", [0, 1, 6, 7])
def test_positive_counts_match_a_bool_count_across_blocks(n: int) -> None:
    from hsae.sae.channel_aware import _positive_counts

    codes = torch.relu(torch.randn(n, 5))
    codes[:, 2] = 0.0  # a latent that never fires
    counts = _positive_counts(codes, rows=3)
    assert counts.dtype == torch.float64
    assert torch.equal(counts, (codes > 0).sum(0).double())


def test_fused_loss_terms_backpropagate_alone() -> None:
    """Each of mse and l1 has the base loss's gradient when it is the only term used."""
    from hsae.sae.base import BaseSAE

    torch.manual_seed(1)
    cfg = make_config("channel_aware", 4, 2, n_latents=6, n_train_images=3)
    sae = build_sae(cfg)
    h, idx = torch.randn(3, 4, 2, 2), torch.arange(3)
    for term in ("mse", "l1"):
        g = torch.autograd.grad(sae.loss(h, idx)[term], sae.W_enc)[0]
        g_base = torch.autograd.grad(BaseSAE.loss(sae, h, idx)[term], sae.W_enc)[0]
        torch.testing.assert_close(g, g_base)
