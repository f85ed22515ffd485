"""The latent space (``brainlm embed --plot COLUMN``, ``brainlm.tasks.latent``): PCA maps and
separability scores of BrainLM embeddings next to FC, on a simulated cohort with a known site
effect, with a randomly initialised checkpoint (the machinery, not the model's quality)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM
from brainlm.checkpoints.folder import save_pretrained
from brainlm.model.config import preset
from brainlm.report.latent_figures import draw_latent_figure
from brainlm.simulate import CohortSpec, simulate_cohort
from brainlm.tasks.embed import embed_all, fisher_z_fc
from brainlm.tasks.latent import latent_paths, latent_space

# The tests share 2 cores with other jobs: one BLAS/torch thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """24 simulated subjects on AAL2 at three sites (TR 0.72/0.735/0.8 s, different noise),
    resampled to 0.72 s, all in the training split."""
    root = tmp_path_factory.mktemp("latent")
    sims = simulate_cohort(CohortSpec(24, atlas="aal2", n_trs=300, seed=0))
    return prepare_corpus(sims, root / "corpus",
                          PrepareSettings.of(atlas=load_atlas("aal2"),
                                             contract=PreprocessingContract(percent_signal_change=True, target_tr=0.72),
                                             fractions=(1, 0, 0)))


@pytest.fixture(scope="module")
def checkpoint(cohort, tmp_path_factory):
    """A ``tiny`` checkpoint with fresh seeded weights and the cohort's contract and atlas."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("latent_model") / "model"
    save_pretrained(BrainLM(preset("tiny"), contract=cohort.contract, atlas=cohort.atlas), folder)
    return folder


@pytest.fixture(scope="module")
def emb(checkpoint, cohort):
    return embed_all(checkpoint, [cohort.path], fc=True)


def test_fisher_z_fc_is_the_upper_triangle_of_arctanh_correlation():
    x = np.random.default_rng(0).normal(size=(120, 6))
    x[:, 2] += 0.5 * x[:, 1]
    r = np.corrcoef(x.T)
    np.testing.assert_allclose(fisher_z_fc(x), np.arctanh(r[np.triu_indices(6, 1)]), atol=1e-5)
    x[:, 4] = 0.0  # a missing parcel: correlation 0, not NaN
    f = fisher_z_fc(x)
    assert np.isfinite(f).all() and f.shape == (15,)


def test_embeddings_carry_phenotypes_windows_and_fc(emb, cohort):
    rec, win = emb.recordings, emb.windows
    assert len(rec) == 24 and emb.fc.shape == (24, 94 * 93 // 2)
    assert {"site", "age", "group", "trait", "n_windows"} <= set(rec.columns)
    assert len(win) == rec["n_windows"].sum() and "start_tr" in win
    cls = [c for c in rec if c.startswith("cls_")]
    # A recording's embedding is the mean of its windows'.
    means = win.groupby("recording_id", sort=False)[cls].mean()
    np.testing.assert_allclose(rec.set_index("recording_id").loc[means.index, cls], means, atol=1e-6)
    m = cohort.manifest.set_index("recording_id")
    assert rec.set_index("recording_id")["age"].equals(m.loc[rec["recording_id"], "age"])


def test_site_is_separable_in_fc_and_the_maps_have_one_point_per_row(emb):
    r = latent_space(emb, "site")
    assert r["kind"] == "categorical" and r["levels"] == ["A", "B", "C"] and r["score"]["name"] == "silhouette"
    for name in ("brainlm", "fc"):
        pca, sep = r["recordings"][name]["pca"], r["recordings"][name]["separability"]
        assert len(pca["x"]) == len(pca["y"]) == 24 and 0 < sum(pca["explained_variance"]) <= 1 + 1e-9
        assert -1 <= sep["score"] <= 1
    fc = r["recordings"]["fc"]["separability"]
    # Sites differ in noise and TR: the site is above the 95th percentile of permuted sites.
    assert fc["score"] > fc["chance_p95"] and fc["p_value"] < 0.05
    assert len(r["windows"]["brainlm"]["pca"]["x"]) == r["n_windows"] == len(emb.windows)


def test_a_permuted_column_is_near_chance(emb):
    df = emb.recordings.copy()
    df["shuffled_site"] = np.random.default_rng(3).permutation(df["site"].to_numpy())
    r = latent_space(df, "shuffled_site", fc=emb.fc)
    for name in ("brainlm", "fc"):
        sep = r["recordings"][name]["separability"]
        assert sep["p_value"] > 0.05 and abs(sep["score"] - sep["chance_mean"]) < 0.05


def test_a_continuous_column_gets_the_neighbour_score(emb):
    r = latent_space(emb, "age")
    assert r["kind"] == "continuous" and r["score"]["name"] == "neighbour_spearman" and r["levels"] is None
    for name in ("brainlm", "fc"):
        assert -1 <= r["recordings"][name]["separability"]["score"] <= 1
    assert latent_space(emb, "group")["kind"] == "categorical"  # integers 0/1


def test_scores_are_deterministic_and_a_table_gives_the_same_numbers(emb, checkpoint, cohort):
    a = latent_space(emb, "site")
    assert latent_space(emb, "site") == a
    again = embed_all(checkpoint, [cohort.path], fc=True)
    np.testing.assert_array_equal(again.fc, emb.fc)
    # The per-window Parquet table of brainlm embed, with the FC, gives the same recording scores.
    b = latent_space(emb.windows, "site", fc=emb.fc)
    for name in ("brainlm", "fc"):
        assert b["recordings"][name]["separability"]["score"] == pytest.approx(
            a["recordings"][name]["separability"]["score"], abs=1e-5)


def test_bad_columns_are_clear_errors(emb):
    with pytest.raises(BrainLMInputError, match="no column 'nope' to plot; available: recording_id.*site"):
        latent_space(emb, "nope")
    with pytest.raises(BrainLMInputError, match="column 'split' has one value"):
        latent_space(emb, "split")
    with pytest.raises(BrainLMInputError, match="no FC features"):
        latent_space(emb.recordings, "site")


def test_embed_plot_writes_the_numbers_and_the_figure(checkpoint, cohort, tmp_path, capsys):
    out = tmp_path / "emb.parquet"
    assert main(["embed", str(checkpoint), cohort.path, "--out", str(out), "--plot", "site"]) == 0
    json_path, png_path = latent_paths(out, "site")
    assert json_path == tmp_path / "emb.latent-site.json" and png_path.read_bytes()[:4] == b"\x89PNG"
    result = json.loads(json_path.read_text())
    assert result["column"] == "site" and len(pd.read_parquet(out)) == 24
    assert "FC" in capsys.readouterr().out
    # The figure is redrawn from the saved numbers alone.
    draw_latent_figure(json_path, tmp_path / "again.png")
    assert (tmp_path / "again.png").stat().st_size > 0


@pytest.mark.parametrize("column, message", [("nope", "no column 'nope' to plot; available: "),
                                             ("split", "has one value ('train')")])
def test_embed_plot_bad_column_is_one_line_and_writes_nothing(checkpoint, cohort, tmp_path, capsys,
                                                              column, message):
    out = tmp_path / "emb.parquet"
    code = main(["embed", str(checkpoint), cohort.path, "--out", str(out), "--plot", column])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    if column == "nope":
        assert "site" in err and "age" in err
    assert list(tmp_path.iterdir()) == []
