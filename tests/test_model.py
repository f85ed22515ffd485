import numpy as np
import pytest
import torch

from brainlm import BrainLMInputError
from brainlm.model import BrainLM, BrainLMConfig, MaskSpec, masked_mse, preset
from brainlm.tasks.model_input import model_windows


def small(**kw):
    return BrainLM(BrainLMConfig(window_trs=40, patch_trs=10, dim=32, depth=2, heads=4, decoder_dim=16,
                                 decoder_depth=1, decoder_heads=2, **kw))


@pytest.mark.parametrize("name,encoder,total", [
    ("tiny", 341_664, 401_908),
    ("13m", 12_642_304, 19_242_004),       # paper: 13M (encoder)
    ("111m", 85_103_616, 110_748_692),     # paper: 111M (ViT-B encoder + 512 x 8 decoder)
    ("650m", 629_760_000, 655_667_220),    # paper: 650M (ViT-H encoder)
])
def test_preset_parameter_counts(name, encoder, total):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        counts = BrainLM(preset(name)).count_parameters()
    assert counts == {"encoder": encoder, "decoder": total - encoder, "total": total}


@pytest.mark.parametrize("strategy,ratio,expected", [
    ("random", 0.2, 0.2), ("random", 0.75, 0.75), ("random", 0.9, 0.9),
    ("parcels", 0.5, 0.5), ("time", 0.5, 0.5), ("future", None, 0.25)])
def test_mask_strategies(strategy, ratio, expected):
    spec = MaskSpec(strategy, ratio if ratio else 0.75, future_trs=10)
    m = spec.sample(3, 20, 4, 10, torch.Generator().manual_seed(1))
    assert m.shape == (3, 20, 4) and m.dtype == torch.bool
    assert torch.all(m.sum(dim=(1, 2)) == round(expected * 80))
    again = spec.sample(3, 20, 4, 10, torch.Generator().manual_seed(1))
    assert torch.equal(m, again)
    if strategy == "parcels":
        assert torch.all(m.all(dim=2) | ~m.any(dim=2))  # whole parcels
    if strategy == "time":
        assert torch.all(m.all(dim=1) | ~m.any(dim=1))  # whole time patches
    if strategy == "future":
        assert m[:, :, -1].all() and not m[:, :, :-1].any()
    with pytest.raises(BrainLMInputError):
        MaskSpec("random", 1.0)
    with pytest.raises(BrainLMInputError, match="strategy"):
        MaskSpec("blocks")


def test_mask_ratio_range_draws_one_ratio_per_batch():
    spec = MaskSpec("random", 0.2, ratio_max=0.9)
    counts = []
    gen = torch.Generator().manual_seed(3)
    for _ in range(200):
        m = spec.sample(4, 20, 5, 10, gen)
        per_sample = m.sum(dim=(1, 2))
        assert torch.all(per_sample == per_sample[0])  # same count in every sample of a batch
        counts.append(int(per_sample[0]))
    counts = np.array(counts) / 100
    # A grid of 0.05 (a few tensor shapes, not hundreds), ends included.
    assert set(np.round(counts, 2)) == set(np.round(np.arange(0.2, 0.901, 0.05), 2))
    assert counts.min() < 0.3 and counts.max() > 0.8  # the whole range is used
    assert abs(counts.mean() - 0.55) < 0.05
    again = [int(spec.sample(4, 20, 5, 10, g).sum()) for g in [torch.Generator().manual_seed(3)]]
    assert again[0] == round(counts[0] * 100) * 4  # seeded: the same draw again
    # The range applies to whole-parcel masks too; a fixed ratio is unchanged by the new field.
    m = MaskSpec("parcels", 0.25, ratio_max=0.5).sample(2, 20, 5, 10, torch.Generator().manual_seed(0))
    assert 5 <= int(m[0].all(dim=1).sum()) <= 10
    for bad in (0.1, 1.0):
        with pytest.raises(BrainLMInputError, match="largest mask ratio"):
            MaskSpec("random", 0.2, ratio_max=bad)


def test_encoder_sees_only_visible_tokens_and_loss_only_masked():
    torch.manual_seed(0)
    model = small()
    x, xyz = torch.randn(2, 40, 6), torch.randn(2, 6, 3) * 40
    mask = model.sample_mask(MaskSpec(ratio=0.75), 2, 6, torch.Generator().manual_seed(0))
    enc = model.forward_encoder(x, xyz, mask)
    assert enc.latent.shape == (2, 1 + 6, 32)  # 24 tokens, 18 masked -> 6 visible + CLS
    # Changing the values of masked tokens cannot change the encoder output.
    x2 = model.unpatchify(torch.where(mask[..., None], torch.randn(2, 6, 4, 10), model.patchify(x)))
    assert torch.equal(model.forward_encoder(x2, xyz, mask).latent, enc.latent)
    loss, pred = model(x, xyz, mask)
    assert pred.shape == (2, 6, 4, 10)
    # Loss equals MSE over masked tokens only; visible-token errors do not count.
    target = model.patchify(x)
    manual = ((pred - target) ** 2).mean(-1)[mask].mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert masked_mse(torch.where(mask[..., None], target, target + 5), target, mask).item() == 0


def test_attention_weights_on_request_match_fast_path():
    torch.manual_seed(0)
    model = small().eval()
    x, xyz = torch.randn(2, 40, 6), torch.randn(2, 6, 3) * 40
    fast = model.forward_encoder(x, xyz)
    slow = model.forward_encoder(x, xyz, return_attention=True)
    assert fast.attentions is None and len(slow.attentions) == 2
    assert slow.attentions[0].shape == (2, 4, 25, 25)
    torch.testing.assert_close(slow.attentions[0].sum(-1), torch.ones(2, 4, 25))
    torch.testing.assert_close(fast.latent, slow.latent, atol=1e-5, rtol=1e-5)


def test_any_atlas_size_and_coordinate_embedding():
    model = small()
    for p in (5, 17):
        loss, pred = model(torch.randn(1, 40, p), torch.randn(1, p, 3) * 40,
                           model.sample_mask(MaskSpec(), 1, p))
        assert pred.shape == (1, p, 4, 10) and torch.isfinite(loss)
    plain = small(xyz_frequencies=0)
    assert plain.spatial.proj.in_features == 3  # upstream's Linear(3 -> d)
    assert model.spatial.proj.in_features == 3 + 6 * 6


def test_bad_shapes():
    model = small()
    with pytest.raises(BrainLMInputError, match="window has 30 TRs; the model expects 40"):
        model.forward_encoder(torch.randn(1, 30, 4), torch.zeros(1, 4, 3))
    with pytest.raises(BrainLMInputError, match="multiple"):
        BrainLMConfig(window_trs=45, patch_trs=10)
    with pytest.raises(BrainLMInputError, match="unknown preset"):
        preset("huge")
    with pytest.raises(BrainLMInputError, match="needs windows of 40"):
        model_windows(model, np.zeros((20, 4), dtype=np.float32))


def test_tiles_for_the_model_are_deterministic_non_overlapping_windows():
    model = small()
    x = np.arange(130 * 4, dtype=np.float32).reshape(130, 4)
    wins, starts = model_windows(model, x)
    assert wins.shape == (3, 40, 4) and starts.tolist() == [0, 40, 80]
    np.testing.assert_array_equal(wins[1].numpy(), x[40:80])  # the 10-TR tail is not used


def test_the_model_file_is_a_pure_module():
    """The nn.Module knows tensors only: data handling and checkpoint I/O live elsewhere."""
    for name in ("preprocess", "windows", "encode", "reconstruct", "forecast", "check_atlas",
                 "save_pretrained", "from_pretrained", "embed_windows"):
        assert not hasattr(BrainLM, name), name


def _group_loop_decoder(model: BrainLM, h: torch.Tensor) -> torch.Tensor:
    """Reference for the axial decoder: one block call per time patch / per parcel."""
    h = h.clone()  # [B, P, N, D]
    for i, blk in enumerate(model.decoder_blocks):
        if i % 2 == 0:
            h = torch.stack([blk(h[:, :, n])[0] for n in range(h.shape[2])], dim=2)
        else:
            h = torch.stack([blk(h[:, p])[0] for p in range(h.shape[1])], dim=1)
    return h


def test_axial_decoder_matches_a_per_group_loop_and_sees_every_token():
    torch.manual_seed(0)
    model = BrainLM(preset("tiny", decoder_depth=2, decoder_attention="axial")).eval()
    b, p, n = 2, 7, model.config.n_patches
    h = torch.randn(b, p * n, model.config.decoder_dim)
    fast = model._axial_decode(h, b, p).view(b, p, n, -1)
    ref = _group_loop_decoder(model, h.view(b, p, n, -1))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    # After two blocks, the output at (parcel 0, patch 0) depends on (parcel 3, patch 5), which
    # shares neither its parcel nor its time patch.
    h.requires_grad_(True)
    model._axial_decode(h, b, p).view(b, p, n, -1)[0, 0, 0].sum().backward()
    assert h.grad.view(b, p, n, -1)[0, 3, 5].abs().sum() > 0
    assert h.grad.view(b, p, n, -1)[1].abs().sum() == 0  # samples stay separate


def test_decoder_attention_config():
    assert preset("13m").decoder_attention == "axial" and preset("tiny").decoder_attention == "full"
    # Checkpoints written before the field existed had full attention.
    legacy = {k: v for k, v in preset("13m").to_dict().items() if k != "decoder_attention"}
    assert BrainLMConfig.from_dict(legacy).decoder_attention == "full"
    with pytest.raises(BrainLMInputError, match="even decoder_depth"):
        preset("tiny", decoder_attention="axial")
    with pytest.raises(BrainLMInputError, match="decoder_attention"):
        preset("13m", decoder_attention="sparse")
    full, axial = (BrainLM(preset("13m", decoder_attention=a)) for a in ("full", "axial"))
    assert full.count_parameters() == axial.count_parameters()


def test_hybrid_spatial_estimate_is_the_spatial_baseline_and_the_decoder_corrects_it(hcp):
    from brainlm.tasks.reconstruction import SpatialImputer

    x = hcp[0].timeseries[:400].astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    imputer = SpatialImputer().fit(x[:200])
    torch.manual_seed(0)
    model = BrainLM(preset("tiny", window_trs=200, spatial_prior_parcels=94))
    model.prior_mean.copy_(torch.from_numpy(imputer.mean_).float())
    model.prior_covariance.copy_(torch.from_numpy(imputer.covariance_).float())
    win = torch.from_numpy(x[200:400])[None]
    mask = model.sample_mask(MaskSpec(ratio=0.75), 1, 94, torch.Generator().manual_seed(0))
    values_mask = mask[0].repeat_interleave(20, dim=1).T.numpy()  # (T, P)
    expected = imputer.impute(win[0].numpy(), values_mask)
    got = model.unpatchify(model.spatial_estimate(win, mask))[0].numpy()
    np.testing.assert_allclose(got[values_mask], expected[values_mask], atol=2e-3)
    np.testing.assert_array_equal(got[~values_mask], win[0].numpy()[~values_mask])  # visible kept
    # The decoder's output is a correction added to the estimate; a model without a prior
    # refuses one, and a hybrid refuses data on another atlas.
    loss, pred = model(win, torch.randn(1, 94, 3) * 50, mask)
    assert pred.shape == (1, 94, 10, 20) and torch.isfinite(loss)
    with pytest.raises(BrainLMInputError, match="cannot transfer to another atlas"):
        model.spatial_estimate(torch.randn(1, 200, 90), mask[:, :90])
    assert "prior_covariance" in model.state_dict() and "prior_covariance" not in BrainLM(preset("tiny")).state_dict()


def test_checkpoint_files_get_the_umask_permissions(tmp_path):
    import os

    from brainlm.checkpoints.folder import save_pretrained

    umask = os.umask(0)
    os.umask(umask)
    save_pretrained(BrainLM(preset("tiny")), tmp_path / "ck")
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "ck").iterdir()}
    # Weights too: a checkpoint shared on a cluster must be readable by whoever the umask allows.
    assert modes["model.safetensors"] == 0o666 & ~umask
    assert set(modes.values()) == {0o666 & ~umask}
