"""Activation store: atomic shards, resume, refusal to mix runs, memmap reads, checksums."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hsae.data.store import MANIFEST, ActivationStore
from hsae.data.store_format import shard_name
from hsae.data.store_writer import ActivationStoreWriter

SHAPE = (4, 3, 3)
META = {"model": {"model_id": "unit"}, "t": 0.7, "timestep": 701, "steps": 10, "prompt": ""}
NAMES = ["Smiling", "Hat"]


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def open_writer(out: Path, n: int = 10, **kw) -> ActivationStoreWriter:
    args = dict(
        meta=META,
        shape=SHAPE,
        dtype="float16",
        shard_size=4,
        ids=[f"{i:03d}.png" for i in range(n)],
        attributes=np.where(np.arange(n * 2).reshape(n, 2) % 3 == 0, 1, -1),
        attribute_names=NAMES,
        splits=[0] * (n - 2) + [1, 2],
    )
    args.update(kw)
    return ActivationStoreWriter.open(out, **args)


def write_all(out: Path, h: np.ndarray, **kw) -> ActivationStoreWriter:
    w = open_writer(out, n=len(h), **kw)
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        w.write_shard(i, h[a:b])
    return w


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path: Path, dtype: str) -> None:
    h = rows(10)
    w = write_all(tmp_path / "s", h, dtype=dtype)
    assert w.complete and [w.shard_rows(i) for i in range(3)] == [(0, 4), (4, 8), (8, 10)]
    s = ActivationStore(tmp_path / "s")
    assert len(s) == 10 and s.shape == (10, *SHAPE) and s.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(s[:], h.astype(dtype))
    np.testing.assert_array_equal(s[3], h[3].astype(dtype))
    np.testing.assert_array_equal(s[-1], h[9].astype(dtype))
    idx = np.array([9, 0, 5, 5, 3])
    np.testing.assert_array_equal(s[idx], h[idx].astype(dtype))
    np.testing.assert_array_equal(s[2:9:3], h[2:9:3].astype(dtype))
    assert s.ids[7] == "007.png" and s.attribute_names == NAMES
    assert s.attributes is not None and s.attributes.dtype == np.int8
    assert s.attributes.shape == (10, 2) and set(np.unique(s.attributes)) <= {-1, 1}
    assert s.meta == META and s.splits == [0] * 8 + [1, 2]
    np.testing.assert_array_equal(s.indices_for_split("train"), np.arange(8))
    np.testing.assert_array_equal(s.indices_for_split("test"), [9])
    assert s.verify() == 3


def test_shards_are_memory_mapped_numpy_files(tmp_path: Path) -> None:
    h = rows(10)
    write_all(tmp_path / "s", h)
    mm = np.load(tmp_path / "s" / shard_name(1), mmap_mode="r")
    assert isinstance(mm, np.memmap) and mm.dtype == np.float16
    np.testing.assert_array_equal(mm, h[4:8].astype(np.float16))
    s = ActivationStore(tmp_path / "s")
    assert all(isinstance(m, np.memmap) for m in s._shards.values())


def test_torch_input_and_iter_batches(tmp_path: Path) -> None:
    h = rows(10)
    w = open_writer(tmp_path / "s")
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        w.write_shard(i, torch.from_numpy(h[a:b]))
    s = ActivationStore(tmp_path / "s")
    got = list(s.iter_batches(3))
    assert [len(i) for _, i in got] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), h.astype(np.float16))
    shuf = list(s.iter_batches(4, shuffle=True, seed=1))
    order = np.concatenate([i for _, i in shuf])
    assert sorted(order) == list(range(10)) and list(order) != list(range(10))
    for x, i in shuf:
        np.testing.assert_array_equal(x, h[i].astype(np.float16))
    again = np.concatenate([i for _, i in s.iter_batches(4, shuffle=True, seed=1)])
    np.testing.assert_array_equal(order, again)
    sub = [i for _, i in s.iter_batches(5, indices=s.indices_for_split("val"))]
    assert [list(i) for i in sub] == [[8]]


def test_resume_skips_complete_shards(tmp_path: Path) -> None:
    h = rows(10)
    w = open_writer(tmp_path / "s")
    w.write_shard(0, h[0:4])
    w.write_shard(2, h[8:10])
    before = (tmp_path / "s" / shard_name(0)).stat().st_mtime_ns
    w.close()
    w2 = open_writer(tmp_path / "s")
    assert w2.pending_shards() == [1] and not w2.complete
    w2.write_shard(1, h[4:8])
    assert w2.complete and (tmp_path / "s" / shard_name(0)).stat().st_mtime_ns == before
    np.testing.assert_array_equal(ActivationStore(tmp_path / "s")[:], h.astype(np.float16))
    w2.close()
    assert open_writer(tmp_path / "s").pending_shards() == []


def test_unlisted_shard_file_is_overwritten_and_temps_ignored(tmp_path: Path) -> None:
    out, h = tmp_path / "s", rows(10)
    w = open_writer(out)
    w.write_shard(0, h[0:4])
    # A shard renamed into place but never listed (killed before the manifest rewrite) ...
    np.save(out / shard_name(1), np.full((4, *SHAPE), 7, np.float16))
    # ... and a half-written temp file (killed mid-write).
    (out / f".{shard_name(2)}.abc123.tmp").write_bytes(b"\x93NUMPY garbage")
    w.close()
    s = ActivationStore(out, allow_incomplete=True)
    np.testing.assert_array_equal(s.available_indices(), np.arange(4))
    with pytest.raises(IndexError, match="not written yet"):
        s[5]
    w2 = open_writer(out)
    assert w2.pending_shards() == [1, 2]
    assert not list(out.glob("*.tmp")), "stale temp files are cleaned when a writer opens"
    for i in w2.pending_shards():
        a, b = w2.shard_rows(i)
        w2.write_shard(i, h[a:b])
    np.testing.assert_array_equal(ActivationStore(out)[:], h.astype(np.float16))


def test_listed_shard_that_vanished_is_redone(tmp_path: Path) -> None:
    out, h = tmp_path / "s", rows(10)
    write_all(out, h)
    (out / shard_name(1)).unlink()
    with pytest.raises(FileNotFoundError, match=r"shard-00001\.npy .*missing on disk"):
        ActivationStore(out)
    assert open_writer(out).pending_shards() == [1]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(meta={**META, "timestep": 501}), "meta.timestep"),
        (dict(meta={**META, "model": {"model_id": "other"}}), "meta.model"),
        (dict(shape=(4, 2, 2)), "shape"),
        (dict(dtype="float32"), "dtype"),
        (dict(shard_size=5), "shard_size"),
        (dict(ids=[f"{i:03d}.jpg" for i in range(10)]), "ids"),
        (dict(attribute_names=["A", "B"]), "attribute_names"),
        (dict(attributes=np.ones((10, 2))), "attributes"),
    ],
)
def test_mismatched_run_is_refused(tmp_path: Path, change: dict, field: str) -> None:
    open_writer(tmp_path / "s").write_shard(0, rows(4))
    with pytest.raises(ValueError, match=rf"different {field} .*refusing to mix runs"):
        open_writer(tmp_path / "s", **change)


def test_incomplete_store_refused(tmp_path: Path) -> None:
    open_writer(tmp_path / "s").write_shard(0, rows(4))
    with pytest.raises(ValueError, match=r"incomplete \(1/3 shards written\).*hsae extract"):
        ActivationStore(tmp_path / "s")
    s = ActivationStore(tmp_path / "s", allow_incomplete=True)
    assert not s.complete and len(s) == 10 and s[0:4].shape == (4, *SHAPE)


def test_verify_catches_flipped_byte(tmp_path: Path) -> None:
    out = tmp_path / "s"
    write_all(out, rows(10))
    f = out / shard_name(2)
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01
    f.write_bytes(bytes(data))
    s = ActivationStore(out)  # opening checks geometry only; verify() reads every byte
    with pytest.raises(ValueError, match=r"checksum mismatch in 1 shard\(s\): shard-00002\.npy"):
        s.verify()


def test_bad_manifest_messages(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no activation store at .*manifest\.json missing"):
        ActivationStore(tmp_path / "nowhere")
    out = tmp_path / "s"
    write_all(out, rows(10))
    good = json.loads((out / MANIFEST).read_text())

    def broken(m: object, match: str, exc: type[Exception] = ValueError) -> None:
        (out / MANIFEST).write_text(m if isinstance(m, str) else json.dumps(m))
        with pytest.raises(exc, match=match):
            ActivationStore(out)

    broken("{not json", "not valid JSON")
    broken([1, 2], "not a JSON object")
    broken({**good, "format": "x"}, "not a store manifest")
    broken({**good, "version": 99}, "format version 99")
    broken({k: v for k, v in good.items() if k != "shape"}, r"missing field\(s\) \['shape'\]")
    broken({**good, "ids": good["ids"][:3]}, "3 ids for num_images=10")
    rows_wrong = [dict(s, rows=3) if s["index"] == 0 else s for s in good["shards"]]
    broken({**good, "shards": rows_wrong}, r"shard-00000\.npy has 4 rows \(manifest says 3\)")
    broken({**good, "shape": [4, 3, 2]}, "manifest says float16")


def test_writer_input_errors(tmp_path: Path) -> None:
    w = open_writer(tmp_path / "s")
    with pytest.raises(ValueError, match=r"shape \(3, 4, 3, 3\), expected \(4, 4, 3, 3\)"):
        w.write_shard(0, rows(3))
    with pytest.raises(ValueError, match=r"image\(s\) 000\.png, .*exceeds .*--dtype float32"):
        w.write_shard(0, np.full((4, *SHAPE), 1e6, np.float32))
    with pytest.raises(IndexError, match="3 shards"):
        w.write_shard(3, rows(4))
    with pytest.raises(ValueError, match="dtype"):
        open_writer(tmp_path / "t", dtype="int8")
    with pytest.raises(ValueError, match="ids is empty"):
        open_writer(tmp_path / "t", ids=[], attributes=None, splits=None)
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not empty and holds no manifest\.json"):
        open_writer(tmp_path / "u")
