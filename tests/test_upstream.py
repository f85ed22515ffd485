"""Original BrainLM checkpoints: import, exactness against upstream's own outputs, A424, tasks.

The fixtures (tests/fixtures/upstream_brainlm/) were produced by running the original code on
small random-initialised models of both families; see their README.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import load_pretrained
from brainlm.model.upstream import UpstreamBrainLM, UpstreamViTMAE, noise_order
from brainlm.checkpoints.upstream_import import import_upstream, load_upstream
from brainlm.tasks.embed import embed
from brainlm.tasks.reconstruction import evaluate_reconstruction

FIXTURES = Path(__file__).parent / "fixtures" / "upstream_brainlm"
PAPER, VIT = FIXTURES / "paper_13m_small", FIXTURES / "vitmae_small"
# How far float32 results of the same model may move with the CPU's kernels (tests must pass on
# any x86-64 machine). The longest sums are the attention's, over up to n = 4,241 tokens; kernels
# that add in another order (SIMD width, blocking) change such a sum by about sqrt(n) u of its
# magnitude, u = 2**-24: 4e-6. About six of them lie in series between input and logits (two
# encoder and two decoder attentions, the value convolution, the norms), and their errors add: up
# to 2.5e-5 of the output's scale, which is what another CPU type gave (logits 2.45e-5 off, and so
# did the original code there). RTOL allows 4x that, relative to the largest reference value;
# a real discrepancy (upstream's token-order dependence: 0.11, a wrong scaling: 1) is thousands of
# times larger. On the machine that made the fixtures the outputs agree to 1e-6 (a note, not a
# requirement).
RTOL = 1e-4
RATIOS = {"075": 0.75, "000": 0.0}


def maxdiff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def close(ours, reference) -> bool:
    """Every value within RTOL of the reference's largest magnitude."""
    return maxdiff(ours, reference) <= RTOL * float(np.abs(np.asarray(reference, dtype=np.float64)).max())


@pytest.fixture(scope="module")
def paper():
    model, report = load_upstream(PAPER)
    inp = np.load(PAPER / "inputs.npz")
    x = torch.from_numpy(inp["signal_vectors"]).transpose(1, 2)  # upstream [B, P, T] -> ours [B, T, P]
    return model, report, x, torch.from_numpy(inp["xyz_vectors"])


@pytest.fixture(scope="module")
def vit():
    model, report = load_upstream(VIT)
    inp = np.load(VIT / "inputs.npz")
    return model, report, torch.from_numpy(inp["signal_raw"]).transpose(1, 2), inp


# -- exactness ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", RATIOS)
def test_paper_model_reproduces_upstream(paper, tag):
    model, _, x, xyz = paper
    io = np.load(PAPER / f"io_mask{tag}.npz")
    mask, order = noise_order(torch.from_numpy(io["noise"]), RATIOS[tag])
    mask = mask.view(2, 424, 10)
    assert np.array_equal(mask.numpy(), io["mask"].astype(bool))
    with torch.no_grad():
        enc = model.forward_encoder(x, xyz, mask, order=order, return_attention=True)
        loss, pred = model(x, xyz, mask, order=order)
    n = io["last_hidden_state_first256"].shape[1]
    assert tuple(enc.latent.shape) == tuple(io["last_hidden_state_shape"])
    assert close(enc.latent[:, 0], io["cls_embedding"])
    assert close(enc.latent[:, :n], io["last_hidden_state_first256"])
    rows = io["encoder_attentions_row_ids"]
    assert close(torch.stack(enc.attentions)[:, :, :, rows], io["encoder_attentions_rows"])
    assert tuple(pred.shape) == tuple(io["logits_shape"])
    assert close(pred[:, :64], io["logits_first64_parcels"])
    if RATIOS[tag] > 0:
        assert abs(float(loss) - float(io["loss"])) <= RTOL * abs(float(io["loss"]))
    else:  # upstream divides 0 by 0 when nothing is masked
        assert np.isnan(float(io["loss"])) and torch.isnan(loss)


def test_paper_model_order_dependence(paper):
    """Upstream shuffles tokens by its noise even at mask 0 and the value convolution makes the
    output order-dependent; brainlm's default keeps natural order (upstream with sorted noise)."""
    model, _, x, xyz = paper
    io = np.load(PAPER / "io_mask000.npz")
    _, order = noise_order(torch.from_numpy(io["noise"]), 0.0)
    with torch.no_grad():
        shuffled = model.forward_encoder(x, xyz, None, order=order).latent[:, 0]
        natural = model.forward_encoder(x, xyz, None).latent[:, 0]
        again = model.forward_encoder(x, xyz, None).latent[:, 0]
    assert close(shuffled, io["cls_embedding"])
    assert close(natural, io["cls_embedding_noise_arange"])
    assert maxdiff(natural, shuffled) > 0.1  # upstream's run-to-run change (0.42 here)
    assert torch.equal(natural, again)


@pytest.mark.parametrize("tag", RATIOS)
def test_vitmae_reproduces_upstream(vit, tag):
    model, _, x, inp = vit
    io = np.load(VIT / f"io_mask{tag}.npz")
    # Upstream's input preparation: parcels by A424 y (stable), divided, 3 channels, padded with -1.
    assert np.array_equal(model.parcel_order.numpy(), inp["parcel_order_by_y"])
    rows = model.to_image_rows(x)
    assert torch.equal(rows, torch.from_numpy(inp["signal_raw"][:, inp["parcel_order_by_y"]]
                                              / np.float32(inp["max_val_to_scale"])))
    img = model.image(rows)
    assert img.shape == (2, 3, 432, 432) and float(img[0, :, 0, 0].max()) == -1.0
    torch.manual_seed(int(io["noise_seed"]))  # upstream draws its masking noise from the global RNG
    noise = torch.rand(2, 729)
    assert torch.equal(noise, torch.from_numpy(io["noise"]))
    mask, order = noise_order(noise, RATIOS[tag])
    assert np.array_equal(mask.numpy(), io["token_mask"].astype(bool))
    with torch.no_grad():
        enc = model.forward_encoder(x, None, mask, order=order, return_attention=True)
        decoded = model.forward_decoder(enc)
        loss, pred, pixel_mask = model.forward_image(rows, mask, order)
    n = io["last_hidden_state_first256"].shape[1]
    assert tuple(enc.latent.shape) == tuple(io["last_hidden_state_shape"])
    assert close(enc.latent[:, 0], io["cls_embedding"])
    assert close(enc.latent[:, :n], io["last_hidden_state_first256"])
    ids = io["encoder_attentions_row_ids"]
    assert close(torch.stack(enc.attentions)[:, :, :, ids], io["encoder_attentions_rows"])
    assert close(decoded[:, io["decoder_logits_patch_row13_token_ids"]], io["decoder_logits_patch_row13"])
    assert close(pred[:, :64], io["logits_first64_parcels"])
    assert np.array_equal(pixel_mask[:, :64].numpy(), io["mask"])
    if RATIOS[tag] > 0:
        assert abs(float(loss) - float(io["loss"])) <= RTOL * abs(float(io["loss"]))
    else:
        assert np.isnan(float(io["loss"])) and torch.isnan(loss)
    # Our frame: predictions back in atlas order and input units; the pixel mask likewise.
    with torch.no_grad():
        _, ours = model(x, None, mask, order)
    assert close(model.to_image_rows(ours), pred)
    assert torch.equal(model.to_image_rows(model.pixel_mask(mask).float()) * model.config.input_divisor,
                       pixel_mask)


def test_vitmae_natural_order_is_deterministic(vit):
    """The ViT has no order-dependent layer: natural order gives upstream's CLS up to rounding."""
    model, _, x, _ = vit
    io = np.load(VIT / "io_mask000.npz")
    with torch.no_grad():
        natural = model.forward_encoder(x).latent
    assert close(natural[:, 0], io["cls_embedding"])
    # Upstream's token j >= 1 is image patch ids_shuffle[j - 1]; ours is patch j - 1.
    shuffle = torch.from_numpy(io["noise"]).argsort(dim=1)[:, :255]
    ours = natural[:, 1:].gather(1, shuffle[..., None].expand(-1, -1, natural.shape[-1]))
    assert close(ours, io["last_hidden_state_first256"][:, 1:])


# -- the importer ---------------------------------------------------------------------------------
def test_import_writes_a_checkpoint_that_loads_as_the_right_class(tmp_path, paper, vit):
    for src, cls, (ref, *_rest) in ((PAPER, UpstreamBrainLM, paper), (VIT, UpstreamViTMAE, vit)):
        out = tmp_path / src.name
        report = import_upstream(src, out)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["architecture"] == report.family
        model = load_pretrained(out)
        assert type(model) is cls and model.atlas.name == "a424" and model.atlas.n_parcels == 424
        assert model.contract.scaler_fit["upstream_normalization"]
        for k, v in ref.state_dict().items():
            assert torch.equal(v, model.state_dict()[k]), k
        listed = json.loads((out / "upstream_import.json").read_text())["ignored"]
        if cls is UpstreamBrainLM:
            assert set(listed) == {"decoder.decoder_pred.weight", "decoder.decoder_pred.bias",
                                   "vit.embeddings.pos_embedding.pe", "decoder.pos_embedding.pe"}
            assert report.n_tensors + len(listed) == len(load_file(src / "model.safetensors"))
        else:
            assert listed == {} and report.n_tensors == len(load_file(src / "model.safetensors"))


def test_import_reads_pytorch_model_bin(tmp_path, paper):
    src = tmp_path / "bin"
    src.mkdir()
    shutil.copy(PAPER / "config.json", src)
    torch.save(load_file(PAPER / "model.safetensors"), src / "pytorch_model.bin")
    model, _ = load_upstream(src)
    for k, v in paper[0].state_dict().items():
        assert torch.equal(v, model.state_dict()[k])


def _copy(tmp_path, src=PAPER) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(src, dst)
    return dst


def _one_line_error(src, *must_contain):
    with pytest.raises(BrainLMInputError) as e:
        load_upstream(src)
    msg = str(e.value)
    assert "\n" not in msg
    for s in must_contain:
        assert s in msg, msg
    return msg


def test_import_refuses_another_model_type(tmp_path):
    src = _copy(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(model_type="bert", architectures=["BertForMaskedLM"])
    (src / "config.json").write_text(json.dumps(cfg))
    _one_line_error(src, "config.json", "bert")


def test_import_refuses_sizes_that_disagree_with_the_tensors(tmp_path):
    src = _copy(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (src / "config.json").write_text(json.dumps(cfg))
    _one_line_error(src, "model.safetensors", "vit.encoder.layer.0.intermediate.dense.", "config.json implies")


def test_import_refuses_a_truncated_weights_file(tmp_path):
    src = _copy(tmp_path, VIT)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    _one_line_error(src, "model.safetensors", "truncated")
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"\x80\x02not a pickle at all")
    _one_line_error(src, "pytorch_model.bin", "cannot read")


def test_import_names_a_missing_or_unknown_tensor(tmp_path):
    src = _copy(tmp_path)
    state = load_file(src / "model.safetensors")
    missing = dict(state)
    del missing["decoder.decoder_pred1.weight"]
    save_file(missing, src / "model.safetensors")
    _one_line_error(src, "missing tensor 'decoder.decoder_pred1.weight'")
    extra = dict(state, **{"vit.encoder.layer.2.output.dense.bias": state["vit.layernorm.bias"].clone()})
    save_file(extra, src / "model.safetensors")
    _one_line_error(src, "vit.encoder.layer.2.output.dense.bias")


# -- A424 ---------------------------------------------------------------------------------------
def test_a424_is_packaged_in_checkpoint_order():
    atlas = load_atlas("a424")
    assert atlas.n_parcels == 424 and atlas.parcel_names[0] == "A424_001" and atlas.parcel_names[-1] == "A424_424"
    assert atlas.xyz[0].tolist() == [14, -78, 4] and atlas.xyz[1].tolist() == [44, -64, 4]
    inp = np.load(VIT / "inputs.npz")  # the ViT-MAE tutorials' y order, from upstream's own table
    assert np.array_equal(np.argsort(atlas.xyz[:, 1], kind="stable"), inp["parcel_order_by_y"])


# -- tasks on an imported checkpoint --------------------------------------------------------------
@pytest.fixture(scope="module")
def a424_corpus(tmp_path_factory):
    """Eight simulated A424 recordings (AR(1) noise with a shared slow component), 420 TRs at
    UK Biobank's TR, prepared with the imported checkpoint's cleaning."""
    root = tmp_path_factory.mktemp("a424")
    atlas = load_atlas("a424")
    rng = np.random.default_rng(0)
    recs = []
    for s in range(8):
        e = rng.standard_normal((420, 424)).astype(np.float32)
        x = np.zeros_like(e)
        for t in range(1, 420):
            x[t] = 0.7 * x[t - 1] + e[t]
        x += rng.standard_normal((420, 1)).cumsum(0).astype(np.float32) * 0.1
        recs.append(Recording(x, 0.735, atlas, subject=f"sub-{s:02d}"))
    contract = PreprocessingContract(target_tr=0.735, detrend=True)
    prepare_corpus(recs, root / "corpus",
                   PrepareSettings.of(atlas=atlas, contract=contract, fractions=(0.5, 0.25, 0.25)))
    ckpt = root / "old13m_small"
    import_upstream(PAPER, ckpt)
    return root / "corpus", ckpt


@pytest.mark.slow
def test_embed_runs_on_an_imported_checkpoint(a424_corpus, tmp_path):
    corpus, ckpt = a424_corpus
    df = embed(ckpt, [corpus], tmp_path / "emb.parquet")
    again = embed(ckpt, [corpus])
    assert len(df) == 8 and "cls_0031" in df.columns and "cls_0032" not in df.columns
    cols = [c for c in df.columns if c.startswith(("cls_", "mean_"))]
    assert np.array_equal(df[cols].to_numpy(), again[cols].to_numpy())  # deterministic
    assert np.isfinite(df[cols].to_numpy()).all() and df[cols].to_numpy().std() > 0


@pytest.mark.slow
def test_evaluate_recon_runs_on_an_imported_checkpoint(a424_corpus, tmp_path):
    corpus, ckpt = a424_corpus
    result = evaluate_reconstruction(ckpt, corpus, ratios=[0.75], out=tmp_path / "recon")
    assert (tmp_path / "recon" / "reconstruction.json").is_file()
    text = result.dumps()   # the JSON text of the typed result, as reconstruction.json holds it
    assert "brainlm" in text and "spatial" in text


def test_import_upstream_command(tmp_path, capsys):
    assert main(["import-upstream", str(PAPER), "--out", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "upstream-brainlm" in out and "not used: decoder.decoder_pred.weight" in out
    assert type(load_pretrained(tmp_path / "ck")) is UpstreamBrainLM
    assert main(["import-upstream", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json" in err
