"""Posterior: the container, its tidy table, its file and its ArviZ view."""

import json
import os
import stat

import numpy as np
import pytest
import torch

import bayeslib as bl


def make_posterior(chains=3, draws=50, warmup=True):
    g = torch.Generator().manual_seed(0)
    draws_ = {
        "mu": torch.randn(chains, draws, 2, generator=g, dtype=torch.float64),
        "sigma": torch.rand(chains, draws, generator=g, dtype=torch.float64),
        "L": torch.randn(chains, draws, 2, 2, generator=g, dtype=torch.float64),
    }
    stats = {
        "lp": torch.randn(chains, draws, dtype=torch.float64),
        "diverging": torch.rand(chains, draws, generator=g) < 0.1,
        "tree_depth": torch.randint(1, 5, (chains, draws), generator=g),
    }
    kept = {"mu": torch.zeros(chains, 10, 2, dtype=torch.float64)} if warmup else None
    return bl.Posterior(draws_, stats, warmup=kept, attrs={"sampler": "nuts", "seed": 3})


def test_indexing_and_shape():
    post = make_posterior()
    assert post["mu"].shape == (3, 50, 2) and post.shape == (3, 50)
    assert post.chains == 3 and post.num_draws == 50 and post.names == ["mu", "sigma", "L"]
    with pytest.raises(KeyError, match=r"no parameter 'nu'.*\['mu', 'sigma', 'L'\]"):
        post["nu"]


def test_to_dataframe_is_tidy():
    post = make_posterior()
    frame = post.to_dataframe()
    assert list(frame.columns) == [
        "chain",
        "draw",
        "mu[0]",
        "mu[1]",
        "sigma",
        "L[0,0]",
        "L[0,1]",
        "L[1,0]",
        "L[1,1]",
    ]
    assert len(frame) == 150
    row = frame[(frame.chain == 2) & (frame.draw == 7)].iloc[0]
    assert row["mu[1]"] == post["mu"][2, 7, 1].item()
    assert row["L[1,0]"] == post["L"][2, 7, 1, 0].item()


def test_save_load_round_trip(tmp_path):
    post = make_posterior()
    path = post.save(tmp_path / "sub" / "posterior.npz")
    loaded = bl.Posterior.load(path)
    for group in ("draws", "stats", "warmup"):
        for name, value in getattr(post, group).items():
            assert torch.equal(getattr(loaded, group)[name], value)
            assert getattr(loaded, group)[name].dtype == value.dtype
    assert loaded.attrs == post.attrs and loaded.warmup_stats is None
    # an open format: plain NumPy reads it with pickle disabled
    with np.load(path, allow_pickle=False) as npz:
        assert json.loads(str(npz["attrs"])) == {"sampler": "nuts", "seed": 3}
    assert [p.name for p in path.parent.iterdir()] == ["posterior.npz"]  # no temporary left


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = make_posterior().save(tmp_path / "posterior.npz")
    before = path.read_bytes()

    def disk_full(file, **arrays):
        file.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        make_posterior(draws=60).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["posterior.npz"]


def test_load_rejects_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a bayeslib posterior file"):
        bl.Posterior.load(tmp_path / "other.npz")


@pytest.mark.parametrize("cut", [0, 100, -30])
def test_load_of_a_truncated_file_names_it_and_the_fix(tmp_path, cut):
    path = make_posterior().save(tmp_path / "posterior.npz")
    data = path.read_bytes()
    path.write_bytes(data[: cut % len(data)])
    with pytest.raises(ValueError) as error:
        bl.Posterior.load(path)
    message = str(error.value)
    assert str(path) in message and "is truncated or not a bayeslib posterior file" in message
    assert "delete it and rerun" in message


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_save_makes_the_file_with_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = make_posterior().save(tmp_path / "posterior.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_to_arviz():
    post = make_posterior()
    idata = post.to_arviz()
    np.testing.assert_array_equal(idata.posterior["mu"].values, post["mu"].numpy())
    np.testing.assert_array_equal(idata.sample_stats["diverging"].values, post.stats["diverging"])
    assert idata.posterior.sizes["chain"] == 3 and idata.posterior.sizes["draw"] == 50
    assert "warmup_posterior" in idata.groups()
    assert idata.posterior.attrs["sampler"] == "nuts"


def test_bad_shapes():
    with pytest.raises(ValueError, match="same chains and draws"):
        bl.Posterior({"a": torch.zeros(2, 5), "b": torch.zeros(2, 6)})
    with pytest.raises(ValueError, match=r"stats\['lp'\] has shape \(2, 4\)"):
        bl.Posterior({"a": torch.zeros(2, 5)}, stats={"lp": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="draws is empty"):
        bl.Posterior({})
