"""Pretraining for fresh cohorts (issue 26): augmentations that mimic another site, and the
hybrid's prior dropout, which keeps its encoder learning.

Probabilities are checked with binomial bounds: 400 windows hit with probability 0.5 give a
count with standard deviation 10, so the bounds below (150-250) are 5 standard deviations wide.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.model.brainlm import BrainLM
from brainlm.model.config import preset
from brainlm.train.augment import AUGMENT_PROBABILITY, GAIN_MAX, augment_windows, check_augmentations

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def windows(hcp):
    """400 real windows, [400, 200, 94], scaled per recording (median 0, unit IQR per parcel)."""
    rng = np.random.default_rng(0)
    out = []
    for r in hcp:
        x = r.timeseries.astype(np.float64)
        q1, med, q3 = np.percentile(x, [25, 50, 75], axis=0)
        x = (x - med) / (q3 - q1)
        for start in rng.integers(0, x.shape[0] - 200, size=400 // len(hcp) + 1):
            out.append(x[start:start + 200])
    return torch.tensor(np.stack(out[:400]), dtype=torch.float32)


def test_names_are_checked_and_ordered():
    assert check_augmentations(["noise", "reverse"]) == ("reverse", "noise")
    assert check_augmentations([]) == ()
    with pytest.raises(BrainLMInputError, match="--augment flip.*expected some of reverse,gain,noise"):
        check_augmentations(["flip", "noise"])


def test_no_augmentation_leaves_windows_alone(windows):
    assert augment_windows(windows, ()) is windows


def test_reverse_flips_about_half_the_windows(windows):
    torch.manual_seed(0)
    out = augment_windows(windows, ("reverse",))
    same = torch.isclose(out, windows).flatten(1).all(1)
    flipped = torch.isclose(out, windows.flip(1)).flatten(1).all(1)
    assert bool((same | flipped).all())  # nothing else happened to any window
    assert 150 <= int(flipped.sum()) <= 250
    assert AUGMENT_PROBABILITY == 0.5


def test_gain_scales_each_parcel_about_its_median(windows):
    torch.manual_seed(1)
    out = augment_windows(windows, ("gain",))
    centre = windows.median(dim=1, keepdim=True).values
    ratio = (out - centre).std(dim=1) / (windows - centre).std(dim=1)  # [B, P]: the gain drawn
    hit = ~torch.isclose(ratio, torch.ones_like(ratio), atol=1e-4).all(1)
    assert 150 <= int(hit.sum()) <= 250
    g = ratio[hit]
    assert float(g.min()) >= 1 / GAIN_MAX - 1e-4 and float(g.max()) <= GAIN_MAX + 1e-4
    assert float(g.log().mean().abs()) < 0.05  # log-uniform around 1: mean log gain 0 (sd 0.4/sqrt(n))
    assert torch.allclose(out.median(dim=1).values, windows.median(dim=1).values, atol=1e-5)


def test_noise_lowers_correlation_with_the_signal_but_keeps_the_spread(windows):
    torch.manual_seed(2)
    out = augment_windows(windows, ("noise",))
    hit = ~torch.isclose(out, windows).flatten(1).all(1)
    assert 150 <= int(hit.sum()) <= 250
    x, y = windows[hit], out[hit]
    # (x + n) / sqrt(1 + 1/snr) has the variance of x: the spread is what per-recording scaling
    # of a noisy recording gives (within the sampling error of a 200-TR standard deviation).
    ratio = y.std(dim=1) / x.std(dim=1)
    assert abs(float(ratio.mean()) - 1) < 0.05
    r = torch.stack([torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(x[:, :, 0], y[:, :, 0])])
    # SNR log-uniform in [1, 20]: correlation sqrt(snr / (1 + snr)) between 0.71 and 0.98.
    assert float(r.min()) > 0.6 and float(r.max()) < 0.995


def test_prior_dropout_drops_the_estimate_of_that_fraction_of_windows_in_training_only():
    torch.manual_seed(0)
    model = BrainLM(preset("small", spatial_prior_parcels=6, prior_dropout=0.5, window_trs=40))
    # An estimate far off the data's scale shows which windows received it.
    model.spatial_estimate = lambda x, mask: torch.full((x.shape[0], 6, 2, 20), 1000.0)
    x, xyz = torch.randn(400, 40, 6), torch.randn(400, 6, 3) * 50
    mask = torch.zeros(400, 6, 2, dtype=torch.bool)
    mask[:, :3] = True
    model.train()
    _, pred = model(x, xyz, mask)
    kept = pred.abs().flatten(1).mean(1) > 100
    assert 150 <= int(kept.sum()) <= 250
    model.eval()
    with torch.no_grad():
        _, pred = model(x, xyz, mask)
    assert bool((pred.abs().flatten(1).mean(1) > 100).all())  # never dropped outside training


def test_prior_dropout_needs_the_hybrid_and_a_fraction():
    with pytest.raises(BrainLMInputError, match="prior_dropout.*needs the hybrid"):
        preset("small", prior_dropout=0.5)
    with pytest.raises(BrainLMInputError, match="prior_dropout.*expected a fraction in \\[0, 1\\)"):
        preset("small", spatial_prior_parcels=4, prior_dropout=1.0)


def test_pretrain_with_augmentations_records_them(hcp_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", hcp_corpus.path, "--out", str(run), "--epochs", "1", "--crops-per-recording", "2",
                 "--augment", "reverse,noise", "--spatial-prior", "--prior-dropout", "0.5", "--quiet"]) == 0
    assert json.loads((run / "run_config.json").read_text())["augment"] == ["reverse", "noise"]
    assert json.loads((run / "model" / "config.json").read_text())["model"]["prior_dropout"] == 0.5
    assert main(["pretrain", hcp_corpus.path, "--out", str(tmp_path / "r2"), "--augment", "mixup",
                 "--quiet"]) == 2
    assert "--augment mixup: unknown augmentation" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_a_hybrid_trained_with_prior_dropout_runs_on_another_atlas_without_its_prior():
    torch.manual_seed(0)
    x, xyz = torch.randn(3, 40, 8), torch.randn(3, 8, 3) * 50
    mask = torch.zeros(3, 8, 2, dtype=torch.bool)
    mask[:, :4, 1] = True
    strict = BrainLM(preset("small", spatial_prior_parcels=6, window_trs=40)).eval()
    with pytest.raises(BrainLMInputError, match="covers the 6 parcels.*another \\(8 parcels.*without prior_dropout"):
        strict(x, xyz, mask)
    model = BrainLM(preset("small", spatial_prior_parcels=6, prior_dropout=0.5, window_trs=40)).eval()
    with torch.no_grad():
        _, pred = model(x, xyz, mask)
        enc = model.forward_encoder(x, xyz, mask)
        alone = model.forward_decoder(enc, xyz, 8, prior=torch.zeros(3, 8, 2, 20))
    assert pred.shape == (3, 8, 2, 20) and torch.equal(pred, alone)



def test_a_hybrid_knows_its_atlas_by_coordinates_not_only_by_the_parcel_count():
    from brainlm.data.atlas import load_atlas

    aal2 = load_atlas("aal2")
    own = torch.tensor(np.array(aal2.xyz, dtype=np.float32))[None].expand(2, -1, -1)
    other = own.flip(1)  # 94 parcels too, in another order: the AAL2 covariance does not apply
    torch.manual_seed(0)
    x = torch.randn(2, 40, 94)
    mask = torch.zeros(2, 94, 2, dtype=torch.bool)
    mask[:, :40, 1] = True
    model = BrainLM(preset("small", spatial_prior_parcels=94, prior_dropout=0.5, window_trs=40), atlas=aal2).eval()
    torch.testing.assert_close(model.prior_estimate(x, mask, own), model.spatial_estimate(x, mask), rtol=0, atol=0)
    assert not model.prior_estimate(x, mask, other).any()
    strict = BrainLM(preset("small", spatial_prior_parcels=94, window_trs=40), atlas=aal2).eval()
    with pytest.raises(BrainLMInputError, match="another \\(94 parcels.*without prior_dropout"):
        strict(x, other, mask)
