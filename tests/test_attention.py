"""Attention extraction, the group-attention test (``brainlm attention``) on a synthetic cohort with
a known group effect, the statistics behind it, and the brain figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import load_schaefer100_rest
from brainlm.model import BrainLM, BrainLMConfig
from brainlm.simulate import CohortSpec, LatentEffects, limbic_prefrontal, simulate_cohort, write_cohort
from brainlm.report.brain import (ParcelMapStyle, plot_confusion, plot_network_summary, plot_parcel_networks,
                                  plot_parcel_values)
from brainlm.tasks.attention import extract_attention
from brainlm.tasks.model_input import load_model, model_inputs, preprocess
from brainlm.tasks.group_attention import (group_attention, parcel_set_enrichment, permutation_test,
                                           welch_t)

PNG = b"\x89PNG\r\n\x1a\n"


def small_model(seed=0):
    torch.manual_seed(seed)
    return BrainLM(BrainLMConfig(window_trs=40, patch_trs=10, dim=32, depth=2, heads=4, decoder_dim=16,
                                 decoder_depth=1, decoder_heads=2))


def test_extraction_equals_the_full_attention_weights():
    model = small_model()
    p, n = 6, 4
    x, xyz = torch.randn(5, 40, p), torch.randn(p, 3) * 40
    maps = extract_attention(model, x, xyz, batch_size=2, parcel_matrix=True, token_embeddings=True)
    assert maps.cls.shape == (5, 2, 4, p) and maps.parcel.shape == (2, 4, p, p)
    assert maps.embeddings.shape == (5, p, 32) and maps.cls_self.shape == (5, 2, 4)

    with torch.no_grad():  # the hooks are gone: the encoder returns full weights again
        enc = model.forward_encoder(x, xyz.expand(5, -1, -1), return_attention=True)
    full = [w.numpy() for w in enc.attentions]  # per layer [B, H, 1 + P*N, 1 + P*N]
    for layer, w in enumerate(full):
        tok = w[:, :, 1:, 1:]
        for i in range(p):
            rows = slice(i * n, (i + 1) * n)  # parcel-major tokens of parcel i
            np.testing.assert_allclose(maps.cls[:, layer, :, i], w[:, :, 0, 1:][:, :, rows].mean(-1), rtol=1e-5)
            for j in (0, p - 1):
                cols = slice(j * n, (j + 1) * n)
                expect = tok[:, :, rows, cols].sum(-1).mean(-1).mean(0)
                np.testing.assert_allclose(maps.parcel[layer, :, i, j], expect, rtol=1e-5, atol=1e-7)
    # CLS attention over parcels (times N patches) plus to itself is one; parcel rows plus CLS, too.
    np.testing.assert_allclose(maps.cls.sum(-1) * n + maps.cls_self, 1.0, rtol=1e-5)
    to_cls = np.stack([w[:, :, 1:, 0].reshape(5, 4, p, n).mean(-1).mean(0) for w in full])
    np.testing.assert_allclose(maps.parcel.sum(-1) + to_cls, 1.0, rtol=1e-5)
    emb = enc.latent[:, 1:].reshape(5, p, n, 32).mean(2).numpy()
    np.testing.assert_allclose(maps.embeddings, emb, rtol=1e-5, atol=1e-6)

    # Batching and repetition change nothing; the weight-free path gives the same encoding.
    one = extract_attention(model, x, xyz, batch_size=1, parcel_matrix=True)
    np.testing.assert_allclose(one.cls, maps.cls, rtol=1e-5)
    np.testing.assert_allclose(one.parcel, maps.parcel, rtol=1e-5)
    again = extract_attention(model, x, xyz, batch_size=2, parcel_matrix=True)
    assert np.array_equal(again.cls, maps.cls) and np.array_equal(again.parcel, maps.parcel)
    with torch.no_grad():
        fast = model.forward_encoder(x, xyz.expand(5, -1, -1))
    assert fast.attentions is None
    torch.testing.assert_close(fast.latent, enc.latent, rtol=1e-4, atol=1e-5)
    rel = maps.relative_cls(layers=[1])
    assert rel.shape == (5, p) and np.allclose(rel.mean(1), 1.0)

    with pytest.raises(BrainLMInputError, match="expected"):
        extract_attention(model, x, torch.zeros(p + 1, 3))
    with pytest.raises(BrainLMInputError, match="no windows"):
        extract_attention(model, x[:0], xyz)


def test_model_inputs_from_recordings_and_transfer(trained, hcp):
    model = load_model(trained / "model")
    item = next(model_inputs(model, hcp[:1]))
    assert item.windows.shape == (6, 200, 94) and item.ids["subject"] == hcp[0].subject
    np.testing.assert_array_equal(item.timeseries, preprocess(model, hcp[0])[:1200])
    rest = load_schaefer100_rest()
    with pytest.raises(BrainLMInputError, match="transfer"):
        next(model_inputs(model, [rest]))
    with pytest.raises(BrainLMInputError, match="145 TRs"):  # 2 s TR: shorter than a window
        next(model_inputs(model, [rest], transfer_atlas=True))
    moved = next(model_inputs(model, [rest], transfer_atlas=True, target_tr=0.72))
    assert moved.windows.shape == (2, 200, 100) and moved.atlas.name == "schaefer100"
    # Scaled with the data's own robust statistics: median 0 and IQR 1 per parcel.
    q1, med, q3 = np.percentile(moved.timeseries, [25, 50, 75], axis=0)
    assert np.abs(med).max() < 0.1 and np.abs((q3 - q1) - 1).max() < 0.15


def test_welch_t_and_permutation_test():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 50))
    in_b = np.arange(20) >= 8
    x[in_b, :3] += 3.0  # three truly different columns
    np.testing.assert_allclose(welch_t(x, in_b), stats.ttest_ind(x[in_b], x[~in_b], equal_var=False).statistic)
    r = permutation_test(x, in_b, n_permutations=5000, seed=0)
    assert r["exact"] is False and r["n_permutations"] == 5000
    assert (r["p"][:3] < 0.002).all() and 0.3 < r["p"][3:].mean() < 0.7
    assert np.array_equal(permutation_test(x, in_b, n_permutations=5000, seed=0)["p"], r["p"])
    small = permutation_test(x[:8], in_b[:8] | (np.arange(8) >= 5), n_permutations=5000)
    assert small["exact"] and small["n_permutations"] == math.comb(8, 3)
    assert small["p"].min() >= 1 / math.comb(8, 3)

    members = np.zeros(50, bool)
    members[:3] = True
    e = parcel_set_enrichment(np.abs(r["t"]), members, n_permutations=2000)
    assert e["mean_percentile"] > 0.9 and e["p"] < 0.01
    assert parcel_set_enrichment(-np.abs(r["t"]), members, alternative="greater", n_permutations=2000)["p"] > 0.9
    assert parcel_set_enrichment(-np.abs(r["t"]), members, n_permutations=2000)["p"] < 0.01


def test_group_attention_errors_before_running_the_model(trained, hcp_corpus, tmp_path, capsys):
    ckpt = str(trained / "model")
    code = main(["attention", ckpt, hcp_corpus.path, "--group-by", "site", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "column 'site' has 1 level(s) ['HCP']" in err and "Traceback" not in err
    assert main(["attention", ckpt, hcp_corpus.path, "--group-by", "age", "--out", str(tmp_path / "o")]) == 2
    assert "corpus has no column 'age'" in capsys.readouterr().err
    assert main(["attention", ckpt, hcp_corpus.path, "--group-by", "subject", "--out", str(tmp_path / "o")]) == 2
    assert "has 7 levels" in capsys.readouterr().err and not (tmp_path / "o").exists()
    subjects = sorted(hcp_corpus.manifest["subject"])
    with pytest.raises(BrainLMInputError, match=r"too few subjects per group.*subject=.*: 1"):
        group_attention(ckpt, hcp_corpus.path, "subject", groups=subjects[:2])


def test_group_attention_recovers_the_altered_network(trained, tmp_path, capsys):
    """Synthetic cohort, simulated and prepared as a user would: patients (group 1) have limbic
    hyperconnectivity. In the patient - control t map of CLS attention the limbic parcels must
    stand out as a set, against random parcel sets (two-sided). The group effect is doubled from
    its default so that 24 subjects of 600 TRs suffice; at the default effect the same holds
    with 40 subjects of 1200 TRs (benchmarks/bench_attention.py, seeds 0-2)."""
    recs = simulate_cohort(CohortSpec(24, atlas="aal2", n_trs=600, sites=1, seed=0,
                                      effects=LatentEffects(group_on_coupling=0.30)))
    write_cohort(recs, tmp_path / "cohort")
    corpus = prepare_corpus([tmp_path / "cohort"], tmp_path / "corpus",
                            PrepareSettings.of(atlas=load_atlas("aal2"),
                                               contract=PreprocessingContract(percent_signal_change=True),
                                               progress=False))
    out = tmp_path / "attention"
    assert main(["attention", str(trained / "model"), corpus.path, "--group-by", "group", "--out", str(out),
                 "--permutations", "2000"]) == 0
    assert "CLS attention by group" in capsys.readouterr().out
    r = json.loads((out / "group_attention.json").read_text())
    groups = pd.Series([rec.phenotypes["group"] for rec in recs]).value_counts()
    assert r["n"] == {"0": {"subjects": groups[0], "recordings": groups[0]},
                      "1": {"subjects": groups[1], "recordings": groups[1]}}
    assert r["difference"] == "1 - 0" and r["permutations"]["attention"] == {"n": 2000, "exact": False}

    limbic, _ = limbic_prefrontal(load_atlas("aal2"))
    t = np.array(r["parcels_table"]["attention_t"])
    found = parcel_set_enrichment(t, limbic, n_permutations=5000)
    assert found["p"] < 0.05 and abs(found["mean_percentile"] - 0.5) > 0.1
    # The FC-strength baseline sees the hyperconnectivity too (limbic strength rises in patients).
    fc = parcel_set_enrichment(np.array(r["parcels_table"]["fc_strength_t"]), limbic, alternative="greater",
                               n_permutations=5000)
    assert fc["p"] < 0.05
    # A random relabelling of the subjects finds nothing (the test is not built to succeed).
    table = pd.read_parquet(out / "recordings.parquet")
    x = table[list(load_atlas("aal2").parcel_names)].to_numpy()
    shuffled = np.random.default_rng(1).permutation(table["group"].astype(int).to_numpy() == 1)
    null = parcel_set_enrichment(permutation_test(x, shuffled, n_permutations=200)["t"], limbic,
                                 n_permutations=5000)
    assert null["p"] > 0.05

    parcels = pd.read_csv(out / "parcels.tsv", sep="\t", keep_default_na=False)
    assert len(parcels) == 94 and np.allclose(parcels["attention_t"], t)
    assert (parcels["attention_q"] >= parcels["attention_p"] - 1e-12).all()
    # The task returns numbers only; the command drew the brain maps into --out from the saved files.
    assert "figures" not in r
    pngs = {"difference_map.png", "t_map.png", "network_difference.png", "group_0_map.png",
            "group_1_map.png", "fc_strength_t_map.png"}
    assert {p.name for p in out.glob("*.png")} == pngs
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG
    assert "## relative CLS attention" in (out / "group_attention.md").read_text()


def test_brain_figures(tmp_path):
    atlas = load_atlas("aal2")
    rng = np.random.default_rng(0)
    values = rng.normal(size=94)
    values[5] = np.nan
    for path in (plot_parcel_values(values, atlas, tmp_path / "v.png", title="t", style=ParcelMapStyle(cmap="RdBu_r")),
                 plot_parcel_networks(atlas.networks, atlas, tmp_path / "n.png", marked=values > 1),
                 plot_network_summary(values, atlas.networks, tmp_path / "s.png"),
                 plot_confusion(np.eye(3, dtype=int) * 4 + 1, ["A", "B", "C"], tmp_path / "c.png")):
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "n.png", "s.png", "v.png"]
    # A constant map (an untrained model's uniform CLS attention, within float error) still draws.
    flat = plot_parcel_values(1.0 + 1e-9 * rng.normal(size=94), atlas, tmp_path / "flat.png",
                              style=ParcelMapStyle(symmetric=False))
    assert flat.read_bytes()[:8] == PNG
    flat.unlink()
    with pytest.raises(BrainLMInputError, match=r"expected \(94,\)"):
        plot_parcel_values(values[:90], atlas, tmp_path / "x.png")
    with pytest.raises(BrainLMInputError, match="all NaN"):
        plot_parcel_values(np.full(94, np.nan), atlas, tmp_path / "x.png")
    with pytest.raises(BrainLMInputError, match="expected 94"):
        plot_parcel_networks(["Vis"] * 3, atlas, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
