"""Every model family implements brainlm.model.family.MaskedBrainModel: token layout, pooling and
masked values are asked of the model, and give what the docstrings say on tiny hand-checked input."""

import pytest
import torch

from brainlm.errors import BrainLMInputError
from brainlm.model import BrainLM, BrainLMConfig, MaskSpec, UpstreamBrainLM, UpstreamViTMAE
from brainlm.model.encoder import EncoderOutput
from brainlm.model.family import MaskedBrainModel, require_parcel_patch_tokens
from brainlm.model.upstream import UpstreamBrainLMConfig, UpstreamViTMAEConfig

B, T, P = 2, 4, 3  # windows, TRs, parcels of every tiny model below


def tiny_brainlm() -> BrainLM:
    return BrainLM(BrainLMConfig(window_trs=T, patch_trs=2, dim=8, depth=1, heads=2, decoder_dim=8,
                                 decoder_depth=1, decoder_heads=2, xyz_frequencies=1))


def tiny_upstream() -> UpstreamBrainLM:
    return UpstreamBrainLM(UpstreamBrainLMConfig(window_trs=T, patch_trs=2, n_parcels=P, dim=8, depth=1, heads=2,
                                                 intermediate=16, decoder_dim=8, decoder_depth=1, decoder_heads=2,
                                                 decoder_intermediate=16, conv_kernel=3))


def tiny_vit() -> UpstreamViTMAE:
    """An 8 x 8 image of 2 x 2 patches (a 4 x 4 grid, 16 tokens). The [P=3, T=4] window sits at
    image rows 2..4 and columns 2..5, so tokens 5, 6 (row band 1: parcels 0 and 1) and 9, 10
    (row band 2: parcel 2) hold data; the other 12 are padding only."""
    return UpstreamViTMAE(UpstreamViTMAEConfig(window_trs=T, n_parcels=P, image_size=8, patch_size=2, dim=8,
                                               depth=1, heads=2, intermediate=16, decoder_dim=8, decoder_depth=1,
                                               decoder_heads=2, decoder_intermediate=16))


FAMILIES = {"brainlm": tiny_brainlm, "upstream-brainlm": tiny_upstream, "upstream-vitmae": tiny_vit}


@pytest.fixture(params=list(FAMILIES))
def model(request):
    torch.manual_seed(0)
    return FAMILIES[request.param]().eval()


def test_every_family_satisfies_the_protocol(model):
    assert isinstance(model, MaskedBrainModel)
    assert not isinstance(torch.nn.Linear(2, 2), MaskedBrainModel)


def test_a_forward_pass_through_the_protocol_has_the_documented_shapes(model):
    x, xyz = torch.randn(B, T, P), torch.randn(B, P, 3) * 50
    d = model.config.dim
    with torch.no_grad():
        enc = model.forward_encoder(x, xyz, return_attention=True)
        cls, mean = model.pool_tokens(enc)
        assert cls.shape == mean.shape == (B, d)
        mask = model.sample_mask(MaskSpec("random", 0.5), B, P, torch.Generator().manual_seed(0))
        assert mask.shape == (B, *model.token_grid(P)) and mask.dtype == torch.bool
        _, pred = model(x, xyz, mask)
    assert model.prediction_values(pred).shape == (B, T, P)
    values = model.token_mask_to_values(mask)
    assert values.shape == (B, T, P) and values.dtype == torch.bool and values.any()
    reduction = model.parcel_reduction(P)
    n_tokens = enc.latent.shape[1] - 1
    assert n_tokens == torch.Size(model.token_grid(P)).numel()
    assert reduction.token_vectors(enc.latent[:, 1:]).shape == (B, P, d)
    attention = enc.attentions[0]  # [B, H, 1 + L, 1 + L]
    assert reduction.tokens(attention[:, :, 0, 1:]).shape == (B, attention.shape[1], P)
    pairs = reduction.pairs(attention[:, :, 1:, 1:])
    assert pairs.shape == (attention.shape[1], P, P) and pairs.dtype == torch.float64


def test_token_layout_is_the_family_s():
    assert tiny_brainlm().has_parcel_patch_tokens and tiny_upstream().has_parcel_patch_tokens
    assert tiny_brainlm().token_grid(P) == (P, 2)
    vit = tiny_vit()
    assert not vit.has_parcel_patch_tokens and vit.token_grid(P) == (16,)
    require_parcel_patch_tokens(tiny_upstream(), "this")
    with pytest.raises(BrainLMInputError, match="this needs tokens that are one parcel's time patch"):
        require_parcel_patch_tokens(vit, "this")


@pytest.mark.parametrize("make", [tiny_brainlm, tiny_upstream])
def test_parcel_patch_pooling_and_masked_values_by_hand(make):
    model = make()
    # CLS [9, 9]; the tokens' mean over 3 parcels x 2 patches.
    latent = torch.tensor([[[9., 9.], [1., 2.], [3., 4.], [5., 6.], [7., 8.], [0., 0.], [-4., 4.]]])
    cls, mean = model.pool_tokens(EncoderOutput(latent, None))
    assert cls.tolist() == [[9., 9.]] and mean.tolist() == [[2., 4.]]
    mask = torch.zeros(1, P, 2, dtype=torch.bool)
    mask[0, 1, 1] = True  # parcel 1, second patch: TRs 2 and 3
    expected = torch.zeros(1, T, P, dtype=torch.bool)
    expected[0, 2:, 1] = True
    assert torch.equal(model.token_mask_to_values(mask), expected)
    pred = torch.arange(P * 2 * 2, dtype=torch.float32).view(1, P, 2, 2)  # [B, P, N, k]
    values = model.prediction_values(pred)
    assert values.shape == (1, T, P)
    for p in range(P):
        for t in range(T):
            assert values[0, t, p] == pred[0, p, t // 2, t % 2]


@pytest.mark.parametrize("make", [tiny_brainlm, tiny_upstream])
def test_parcel_patch_reduction_by_hand(make):
    reduction = make().parcel_reduction(P)
    x = torch.tensor([1., 3., 10., 20., -2., 2.])  # parcel-major: parcel p holds tokens 2p, 2p + 1
    assert reduction.tokens(x).tolist() == [2., 15., 0.]
    h = torch.stack([x, 2 * x], dim=1)[None]  # [1, L, 2]
    assert reduction.token_vectors(h).tolist() == [[[2., 4.], [15., 30.], [0., 0.]]]
    w = torch.rand(2, 1, 6, 6)
    expected = torch.zeros(1, P, P, dtype=torch.float64)
    for q in range(P):
        for k in range(P):
            expected[0, q, k] = sum(float(w[b, 0, 2 * q + i, 2 * k:2 * k + 2].sum()) / 2
                                    for b in range(2) for i in range(2))
    torch.testing.assert_close(reduction.pairs(w), expected)


def test_image_pooling_leaves_out_padding_only_tokens_by_hand():
    vit = tiny_vit()
    assert vit.content_tokens().nonzero().flatten().tolist() == [5, 6, 9, 10]
    latent = torch.zeros(1, 17, 2)
    latent[0, 0] = torch.tensor([7., 7.])
    latent[0, 1 + torch.tensor([5, 6, 9, 10])] = torch.tensor([[1., 0.], [3., 0.], [5., 4.], [7., 8.]])
    latent[0, 1] = 100.0  # a padding-only token: left out
    cls, mean = vit.pool_tokens(EncoderOutput(latent, None))
    assert cls.tolist() == [[7., 7.]] and mean.tolist() == [[4., 3.]]


def test_image_masked_values_and_reduction_by_hand():
    vit = tiny_vit()
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 5] = True  # image rows 2-3 (parcels 0 and 1), columns 2-3 (TRs 0 and 1)
    expected = torch.zeros(1, T, P, dtype=torch.bool)
    expected[0, :2, :2] = True
    assert torch.equal(vit.token_mask_to_values(mask), expected)
    mask[0, 0] = True  # padding only: hides nothing more
    assert torch.equal(vit.token_mask_to_values(mask), expected)
    pred = torch.randn(1, T, P)
    assert vit.prediction_values(pred) is pred
    reduction = vit.parcel_reduction(P)
    x = torch.zeros(16)
    x[5], x[6], x[9], x[10], x[0] = 1.0, 3.0, 10.0, 20.0, 99.0
    torch.testing.assert_close(reduction.tokens(x), torch.tensor([2., 2., 15.]))
    torch.testing.assert_close(reduction.token_vectors(x[None, :, None]), torch.tensor([[[2.], [2.], [15.]]]))
    w = torch.ones(1, 1, 16, 16)
    # Query parcel: the mean over its 2 tokens; key parcel: the sum over its 2 tokens.
    torch.testing.assert_close(reduction.pairs(w), torch.full((1, P, P), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("config", [BrainLMConfig(), UpstreamBrainLMConfig(), UpstreamViTMAEConfig()])
def test_config_round_trip_and_unknown_fields(config):
    assert type(config).from_dict(config.to_dict()) == config
    with pytest.raises(BrainLMInputError, match=r"config has unknown field\(s\) \['nope'\]"):
        type(config).from_dict({**config.to_dict(), "nope": 1})


def test_configs_share_n_patches_and_old_brainlm_configs_load():
    assert BrainLMConfig(window_trs=40, patch_trs=10).n_patches == 4
    assert UpstreamBrainLMConfig(window_trs=40, patch_trs=10).n_patches == 4
    old = {k: v for k, v in BrainLMConfig().to_dict().items() if k not in ("decoder_attention",
                                                                          "spatial_prior_parcels")}
    assert BrainLMConfig.from_dict(old) == BrainLMConfig()
