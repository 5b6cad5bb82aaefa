"""Faults: corruption found on read, full disks, one writer per folder, bad values, odd images."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hsae.cli import main
from hsae.data import store as S
from hsae.data.images import BadImageError, ImageDataset, conversion_of, load_image
from hsae.data.store import ActivationStore
from hsae.data.store_format import shard_name
from hsae.data.store_writer import ActivationStoreWriter
from hsae.sae import build_sae, make_config
from hsae.sae.selection import load_checked
from hsae.training import TrainConfig, train
from hsae.training import checkpoint as CK
from hsae.utils import io as IO
from hsae.utils.lock import LOCK_FILE, FolderLock, FolderLockedError

SHAPE = (4, 2, 2)
META = {"model": {"model_id": "unit", "weights": "abc123"}, "timestep": 700, "t": 0.7, "steps": 10}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def write_store(out: Path, n: int = 12, seed: int = 0, **kw) -> np.ndarray:
    h = np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)
    args = dict(meta=META, shape=SHAPE, shard_size=4, ids=[f"{i:03d}.png" for i in range(n)])
    with ActivationStoreWriter.open(out, **{**args, **kw}) as w:
        for i in w.pending_shards():
            a, b = w.shard_rows(i)
            w.write_shard(i, h[a:b])
    return h


def flip_byte(f: Path, at: int = -3) -> None:
    data = bytearray(f.read_bytes())
    data[at] ^= 0x01
    f.write_bytes(bytes(data))


# ----- corruption is detected, never read ----------------------------------------------------
def test_flipped_byte_is_caught_at_the_first_read_and_hashed_once(tmp_path, monkeypatch) -> None:
    h = write_store(tmp_path / "s")
    S._VERIFIED.clear()
    calls: list[str] = []
    real = S.sha256_file
    monkeypatch.setattr(S, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    np.testing.assert_array_equal(ActivationStore(tmp_path / "s")[0:4], h[0:4].astype(np.float16))
    ActivationStore(tmp_path / "s")[0:4]  # a second open in this process: no second hash
    assert calls == [shard_name(0)]
    flip_byte(tmp_path / "s" / shard_name(1))
    store = ActivationStore(tmp_path / "s")  # same size: opening passes
    with pytest.raises(ValueError, match=r"shard-00001\.npy does not match its sha256"):
        store[5]
    np.testing.assert_array_equal(store[8:12], h[8:12].astype(np.float16))  # others still read
    with pytest.raises(ValueError, match=r"checksum mismatch in 1 shard\(s\): shard-00001\.npy"):
        store.verify()


def test_truncated_shard_is_refused_at_open(tmp_path: Path) -> None:
    write_store(tmp_path / "s")
    f = tmp_path / "s" / shard_name(2)
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"shard-00002\.npy is \d+ bytes, manifest\.json says"):
        ActivationStore(tmp_path / "s")


def test_store_verify_command_and_truncated_manifest(tmp_path: Path, capsys) -> None:
    write_store(tmp_path / "s")
    assert main(["store", "verify", str(tmp_path / "s")]) == 0
    assert "3 shard(s)" in capsys.readouterr().out
    flip_byte(tmp_path / "s" / shard_name(0), at=-1)
    flip_byte(tmp_path / "s" / shard_name(2), at=-1)
    assert main(["store", "verify", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "shard-00000.npy, shard-00002.npy" in err
    m = tmp_path / "s" / "manifest.json"
    m.write_text(m.read_text()[:200])
    assert main(["store", "verify", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "manifest.json is not valid JSON (truncated" in err


def test_sae_cfg_not_matching_its_weights_or_the_store(tmp_path: Path) -> None:
    write_store(tmp_path / "s")
    store = ActivationStore(tmp_path / "s")
    cfg = make_config("flat", SHAPE[0], SHAPE[1], n_latents=8)
    sae = build_sae(cfg)
    sae.cfg.model_id, sae.cfg.model_weights = "unit", "abc123"
    sae.save(tmp_path / "sae")
    load_checked(tmp_path / "sae", store)  # matches
    raw = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({**raw, "n_latents": 9}))
    with pytest.raises(ValueError, match=r"sae\.safetensors: tensor .* cfg\.json implies"):
        load_checked(tmp_path / "sae", store)
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({**raw, "d_in": 5}))
    with pytest.raises(ValueError, match=r"sae[/\\]cfg\.json: .*d_in"):
        load_checked(tmp_path / "sae", store)
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({**raw, "model_weights": "fff000"}))
    with pytest.raises(ValueError, match=r"trained on h of model 'unit' \(weights fff000\)"):
        load_checked(tmp_path / "sae", store)
    build_sae(make_config("flat", 4, 3, n_latents=8)).save(tmp_path / "other")
    with pytest.raises(ValueError, match=r"\(4, 3, 3\), but the activation store .* \(4, 2, 2\)"):
        load_checked(tmp_path / "other", store)


# ----- disk full -----------------------------------------------------------------------------
class FullDisk:
    """os.fdopen whose files accept `room` bytes, then fail with ENOSPC, like a full disk."""

    def __init__(self, room: int) -> None:
        self.room, self.real = room, os.fdopen

    def __call__(self, fd: int, mode: str = "r", *a, **kw):
        f = self.real(fd, mode, *a, **kw)
        real_write, disk = f.write, self

        def write(data: bytes) -> int:
            if len(data) > disk.room:
                real_write(data[: disk.room])
                disk.room = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            disk.room -= len(data)
            return real_write(data)

        f.write = write
        return f


def test_disk_full_during_a_shard_write_overwrites_nothing_and_resumes(
    tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "s"
    h = np.random.default_rng(0).standard_normal((12, *SHAPE)).astype(np.float32)
    args = dict(meta=META, shape=SHAPE, shard_size=4, ids=[f"{i:03d}.png" for i in range(12)])
    w = ActivationStoreWriter.open(out, **args)
    w.write_shard(0, h[0:4])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    full = FullDisk(room=40)
    monkeypatch.setattr(IO.os, "fdopen", full)
    with pytest.raises(IO.DiskFullError) as e:
        w.write_shard(1, h[4:8])
    msg = str(e.value)
    assert "\n" not in msg and "no space left" in msg and shard_name(1) in msg
    assert "nothing was overwritten" in msg and "re-run the same command" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp file left either
    w.close()
    monkeypatch.setattr(IO.os, "fdopen", full.real)  # space is back
    write_store(out, **{})  # the same run: resumes
    np.testing.assert_array_equal(ActivationStore(out)[:], h.astype(np.float16))


def test_disk_full_during_a_checkpoint_keeps_the_last_one(tmp_path: Path, monkeypatch) -> None:
    write_store(tmp_path / "s", n=12)
    store = ActivationStore(tmp_path / "s")
    cfg = TrainConfig(steps=8, batch_images=4, warmup_steps=2, checkpoint_every=4, log_every=4)
    cfg.split, cfg.init_images = "all", 12

    def fresh():
        torch.manual_seed(0)
        return build_sae(make_config("flat", *SHAPE[:2], n_latents=8))

    train(fresh(), store, cfg, tmp_path / "ref", progress=False)
    real_save, full, armed = CK.save_checkpoint, FullDisk(room=100), [True]

    def full_at_step_8(out_dir, sae, state):
        if state["trainer"]["step"] == 8 and armed:  # once: the resume must find space
            armed.clear()
            monkeypatch.setattr(IO.os, "fdopen", full)
        return real_save(out_dir, sae, state)

    monkeypatch.setattr("hsae.training.loop.save_checkpoint", full_at_step_8)
    with pytest.raises(IO.DiskFullError, match=r"no space left .*checkpoint"):
        train(fresh(), store, cfg, tmp_path / "run", progress=False)
    monkeypatch.setattr(IO.os, "fdopen", full.real)
    ckpt = CK.checkpoint_dir(tmp_path / "run")
    assert ckpt is not None and CK.read_trainer_state(ckpt)["trainer"]["step"] == 4
    train(fresh(), store, cfg, tmp_path / "run", resume=True, progress=False)
    for f in ("sae.safetensors", "cfg.json", "train_log.jsonl"):
        assert (tmp_path / "run" / f).read_bytes() == (tmp_path / "ref" / f).read_bytes(), f


# ----- one writer per folder -----------------------------------------------------------------
HOLD = textwrap.dedent(
    """
    import sys, time
    from hsae.utils.lock import FolderLock
    lock = FolderLock(sys.argv[1], "test folder").acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_second_writer_refused_and_a_killed_holder_leaves_no_stuck_lock(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "s")], env=env, stdout=subprocess.PIPE
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"locked"
        with pytest.raises(FolderLockedError, match=rf"another process \(pid {p.pid} on host"):
            write_store(tmp_path / "s")
        assert main(["store", "verify", str(tmp_path / "s")]) == 2  # nothing was written
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (tmp_path / "s" / LOCK_FILE).is_file()  # the dead holder's file stays, unlocked
    write_store(tmp_path / "s")
    assert ActivationStore(tmp_path / "s").verify() == 3


def test_two_writers_in_one_process_and_reentrant_locks(tmp_path: Path) -> None:
    h = np.zeros((12, *SHAPE), np.float32)
    args = dict(meta=META, shape=SHAPE, shard_size=4, ids=[f"{i:03d}.png" for i in range(12)])
    w = ActivationStoreWriter.open(tmp_path / "s", **args)
    with pytest.raises(FolderLockedError, match="another writer in this process"):
        ActivationStoreWriter.open(tmp_path / "s", **args)
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.write_shard(0, h[:4])
    outer, inner = (
        FolderLock(tmp_path / "t", reentrant=True),
        FolderLock(tmp_path / "t", reentrant=True),
    )
    with outer, inner, pytest.raises(FolderLockedError):
        FolderLock(tmp_path / "t").acquire()
    FolderLock(tmp_path / "t").acquire().release()  # both released


# ----- a kill right before an atomic rename ----------------------------------------------------
def test_next_write_removes_temps_no_live_writer_holds(tmp_path: Path) -> None:
    target = tmp_path / "table.json"
    stale, live = (tmp_path / f".table.json.{r}.tmp" for r in ("k1lled00", "w_iting1"))
    others = [tmp_path / ".table.json.not-ours.tmp", tmp_path / ".table.json.b.json.abcdefgh.tmp"]
    for f in (stale, live, *others):
        f.write_text("complete, never renamed")
    fd = os.open(live, os.O_RDONLY)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer that is still at work
        IO.atomic_write_json(target, {"ok": True})
        assert not stale.exists() and live.exists() and all(f.exists() for f in others)
        assert IO.temp_files(target) == [live]
    finally:
        os.close(fd)
    IO.atomic_write_json(target, {"ok": True})  # its writer is gone now
    assert IO.temp_files(target) == [] and json.loads(target.read_text()) == {"ok": True}


def fault_tools():
    """benchmarks/fault_runner.py, set to fork its runs from this process (as the campaign
    does), and fault_campaign.snapshot (sha256 of visible files, wall-clock fields left out)."""
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import fault_campaign
    import fault_runner

    fault_runner.prepare_fork()
    return fault_runner, fault_campaign.snapshot


@pytest.mark.slow
def test_killed_before_a_shard_rename_verify_names_the_temp_and_extract_removes_it(
    tmp_path: Path, capsys
) -> None:
    from hsae.toy.toyfaces import write_dataset

    fr, snapshot = fault_tools()
    write_dataset(tmp_path / "data", 4, seed=0, progress=False)
    cmd = f"extract --data {tmp_path / 'data'} --out acts --steps 2 --batch 2 --shard-size 2"
    cmd += " --no-progress"
    for d in ("ref", "run"):
        (tmp_path / d).mkdir()
    assert fr.run_hsae(cmd.split(), tmp_path, cwd=tmp_path / "ref").rc == 0
    log = tmp_path / "kill.jsonl"
    killed = fr.run_hsae(
        cmd.split(), tmp_path, log, "rename@shard-00001.npy:1", cwd=tmp_path / "run"
    )
    assert killed.rc == -signal.SIGKILL and killed.events[-1]["op"] == "rename", killed.stderr
    acts = tmp_path / "run" / "acts"
    [temp] = IO.hidden_temps(acts)
    assert temp.name.startswith(f".{shard_name(1)}.") and np.load(temp).shape == (2, 128, 8, 8)
    capsys.readouterr()
    assert main(["store", "verify", str(acts)]) == 0
    out = capsys.readouterr().out
    assert "(incomplete: re-run its `hsae extract` to finish): 1 shard(s)" in out
    assert f"1 leftover temp file(s) of an interrupted write, never read: {temp.name};" in out
    assert fr.run_hsae(cmd.split(), tmp_path, cwd=tmp_path / "run").rc == 0
    assert IO.hidden_temps(acts) == []
    assert snapshot(acts)[0] == snapshot(tmp_path / "ref" / "acts")[0]


@pytest.mark.slow
def test_train_tidies_a_killed_checkpoint_swap_only_under_the_lock(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """Killed between the two renames of a checkpoint swap (checkpoint → .checkpoint.old done,
    .checkpoint.X.tmp → checkpoint not): a second `hsae train --resume` beside a live writer is
    refused and touches nothing; then a resume killed right before metrics.json's rename leaves
    its temp file, and the next resume removes it and ends on the uninterrupted run's bytes."""
    fr, snapshot = fault_tools()
    write_store(tmp_path / "s", n=12)
    cmd = f"train --store {tmp_path / 's'} --out sae --latents 8 --steps 14 --batch 4"
    cmd += " --checkpoint-every 7 --log-every 5 --warmup 2 --quiet"
    args, resume = cmd.split(), [*cmd.split(), "--resume"]
    for d in ("ref", "run"):
        (tmp_path / d).mkdir()
    assert fr.run_hsae(args, tmp_path, cwd=tmp_path / "ref").rc == 0
    run, log = tmp_path / "run", tmp_path / "kill.jsonl"
    assert fr.run_hsae(args, tmp_path, log, "rename@checkpoint:2", cwd=run).rc == -signal.SIGKILL
    sae = run / "sae"
    swap = sorted(p.name for p in sae.iterdir() if "checkpoint" in p.name)
    assert len(swap) == 2 and ".checkpoint.old" in swap, swap
    assert any(n.startswith(".checkpoint.") and n.endswith(".tmp") for n in swap), swap

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(sae)],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        monkeypatch.chdir(run)
        assert main(resume) == 2
        assert "is being written by another process" in capsys.readouterr().err
        assert sorted(p.name for p in sae.iterdir() if "checkpoint" in p.name) == swap
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    killed = fr.run_hsae(resume, tmp_path, log, "rename@metrics.json:1", cwd=run)
    assert killed.rc == -signal.SIGKILL, killed.stderr
    assert [p.name.split(".")[1] for p in IO.hidden_temps(sae)] == ["metrics"]
    assert fr.run_hsae(resume, tmp_path, cwd=run).rc == 0
    assert IO.hidden_temps(sae) == [] and not (sae / ".checkpoint.old").exists()
    assert snapshot(sae)[0] == snapshot(tmp_path / "ref" / "sae")[0]


# ----- bad values ----------------------------------------------------------------------------
def test_nan_in_h_names_the_images(tmp_path: Path) -> None:
    args = dict(meta=META, shape=SHAPE, shard_size=4, ids=[f"img{i}.png" for i in range(8)])
    with ActivationStoreWriter.open(tmp_path / "s", **args) as w:
        h = np.zeros((4, *SHAPE), np.float32)
        h[2, 0, 0, 0] = np.nan
        with pytest.raises(ValueError, match=r"image\(s\) img2\.png .*model itself returned NaN"):
            w.write_shard(0, h)
        assert w.pending_shards() == [0, 1]


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def test_odd_images_are_counted_in_the_manifest(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    save(Image.new("RGB", (8, 8), (10, 20, 30)), d / "a_plain.png")
    save(Image.new("CMYK", (8, 8)), d / "b_cmyk.jpg")
    save(Image.new("P", (8, 8)), d / "c_palette.png")
    save(Image.fromarray(np.full((8, 8), 40000, np.uint16)), d / "d_16bit.png")
    save(Image.new("RGB", (1, 1)), d / "e_pixel.png")
    frames = [Image.new("RGB", (8, 8), (80 * i, 0, 0)) for i in range(3)]
    save(frames[0], d / "f_anim.gif", save_all=True, append_images=frames[1:])
    save(Image.new("RGB", (12, 8)), d / "g_wide.png")
    ds = ImageDataset(d, 8)
    got = [ds.conversion_of(i) for i in range(len(ds))]
    assert got[0] is None and got[1] == "CMYK->RGB" and got[2] == "P->RGB"
    assert got[3].startswith("I;16") and got[4] == "resized"
    assert got[5] == "P->RGB, animated->first frame" and got[6] == "cropped+resized"

    from hsae.data.extract import summary
    from hsae.data.images import conversion_summary, count_conversions

    counts = count_conversions(got)
    line = conversion_summary(counts, len(ds))
    assert line.startswith("6 of 7: 2 P->RGB")
    assert "1 animated->first frame" in line and "1 CMYK->RGB" in line
    args = dict(meta=META, shape=SHAPE, shard_size=4, ids=ds.ids)
    with ActivationStoreWriter.open(tmp_path / "s", **args) as w:
        for i in w.pending_shards():
            a, b = w.shard_rows(i)
            w.write_shard(i, np.zeros((b - a, *SHAPE)), conversions=count_conversions(got[a:b]))
    store = ActivationStore(tmp_path / "s")
    assert store.conversions() == counts
    assert conversion_summary(store.conversions(), len(store)) == line
    assert f"  converted       {line}" in summary(store).splitlines()


def test_decompression_bomb_and_absurd_sizes_name_pils_limit(tmp_path, monkeypatch) -> None:
    big = save(Image.new("L", (40, 40)), tmp_path / "big.png")  # 1600 pixels
    strip = save(Image.new("L", (1, 30)), tmp_path / "strip.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600: PIL only warns (1x-2x)
    for f in (big, strip):
        with pytest.raises(BadImageError, match=r"MAX_IMAGE_PIXELS|decompression"):
            load_image(f, 8) if f == big else load_image(f, 40)
    with pytest.raises(BadImageError, match="decompression"):
        conversion_of(big, 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # 1600 > 2x: PIL's own error
    with pytest.raises(BadImageError, match=r"^image .*big\.png: .*MAX_IMAGE_PIXELS = 700\)"):
        load_image(big, 8)
    assert load_image(strip, 2).shape == (3, 2, 2)  # resized to 2 x 60 pixels: fine
