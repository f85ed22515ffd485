"""The packaged A424 labels image (``--atlas-image a424``) and the road a new user takes with an
original BrainLM checkpoint: scans -> ``prepare --atlas-image a424 --like IMPORTED`` -> ``embed``,
``evaluate recon`` and ``networks``.

The scans are the embedded real HCP recordings painted into A424 on a 3 mm grid (every A424
parcel survives at 3 mm): each A424 parcel carries the series of the AAL2 parcel whose centre
is nearest, plus noise of its own, so every column is distinguishable and the parcel order of
the prepared corpus can be checked column by column.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.corpus import Corpus
from brainlm.data.example_scans import paint
from brainlm.data.extraction import load_atlas_image
from brainlm.data.samples import load_hcp7_aal2
from brainlm.data.volumes import embedded_volume_atlas, parcel_centroids
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import load_pretrained

FIXTURES = Path(__file__).parent / "fixtures" / "upstream_brainlm"
PAPER, VIT = FIXTURES / "paper_13m_small", FIXTURES / "vitmae_small"
HCP_TR = 0.72


def test_packaged_a424_image_is_the_a424_table_in_label_order():
    image = embedded_volume_atlas("a424")
    table = load_atlas("a424")
    assert image.kind == "labels" and image.values == tuple(range(1, 425))
    assert image.atlas.matches(table) and image.atlas.name == "a424"
    labels = np.asarray(nib.load(str(image.image)).dataobj)
    assert labels.shape == (91, 109, 91)
    assert set(np.unique(labels).astype(int)) == set(range(425))   # every parcel, and background
    # The table's integer centres are not the image's centres of mass, but near them: label k
    # of the image is row k of the table (a shifted order would put rows ~tens of mm apart).
    com = parcel_centroids(nib.load(str(image.image)), list(range(1, 425)))
    dist = np.linalg.norm(com - np.asarray(table.xyz), axis=1)
    assert np.median(dist) < 4.0 and dist.max() < 15.0


def test_atlas_image_name_resolves_and_refuses_labels_and_meshes(tmp_path):
    assert load_atlas_image("a424").atlas.matches(load_atlas("a424"))
    assert load_atlas_image(["A424"]).values == tuple(range(1, 425))
    with pytest.raises(BrainLMInputError, match="has its own labels"):
        load_atlas_image("a424", tmp_path / "names.tsv")
    with pytest.raises(BrainLMInputError, match="expected one of"):
        embedded_volume_atlas("aal2")


def a424_series(subject: int, trs: int, seed: int) -> np.ndarray:
    """(trs, 424) raw-intensity series: the nearest AAL2 parcel's HCP signal per A424 parcel,
    plus independent noise per parcel."""
    aal2 = load_hcp7_aal2()[subject]
    a424 = np.asarray(load_atlas("a424").xyz, dtype=float)
    src = np.asarray(aal2.atlas.xyz, dtype=float)
    nearest = np.linalg.norm(a424[:, None] - src[None], axis=-1).argmin(1)
    x = np.asarray(aal2.timeseries[:trs], dtype=np.float64)
    x = (x - x.mean(0)) / x.std(0)
    noise = np.random.default_rng(seed).standard_normal((trs, 424))
    return 1000.0 + 20.0 * x[:, nearest] + 10.0 * noise


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Four painted A424 scans (3 mm, 230 volumes at HCP's 0.72 s, int16) and the series
    painted into them."""
    root = tmp_path_factory.mktemp("a424_scans")
    atlas = nib.load(str(embedded_volume_atlas("a424").image))
    from nilearn.image import resample_img

    grid = resample_img(atlas, target_affine=np.diag([3.0, 3.0, 3.0]), interpolation="nearest",
                        force_resample=True, copy_header=True)
    grid = nib.Nifti1Image(np.asarray(grid.dataobj).astype(np.int16), grid.affine)
    folder = root / "scans"
    folder.mkdir()
    painted = {}
    for s in range(4):
        x = a424_series(s, 230, seed=s)
        nib.save(paint(grid, x, dtype=np.int16, tr=HCP_TR), folder / f"sub-{s:02d}_task-rest_bold.nii")
        painted[f"{s:02d}"] = x   # BIDS subject label, as the manifest stores it
    return root, folder, painted


@pytest.mark.slow
def test_scans_with_a424_like_an_imported_checkpoint_reach_every_task(scans, capsys):
    root, folder, painted = scans
    ckpt = root / "paper"
    assert main(["import-upstream", str(PAPER), "--out", str(ckpt)]) == 0
    corpus_dir = root / "corpus"
    # Half the subjects in split train: the scaling statistics and the in-cohort spatial
    # baseline are fitted on them, and the tasks score the other half.
    assert main(["prepare", str(folder), "--atlas-image", "a424", "--like", str(ckpt), "--tr",
                 str(HCP_TR), "--splits", "0.5,0,0.5", "--out", str(corpus_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "prepared like" in out and "the checkpoint carries no pooled scaling statistics" in out

    corpus = Corpus(corpus_dir)
    model = load_pretrained(ckpt)
    assert corpus.atlas.matches(model.atlas) and corpus.atlas.name == "a424"
    assert corpus.tr == pytest.approx(0.735)          # the checkpoint's contract resamples
    assert corpus.manifest["split"].value_counts().to_dict() == {"train": 2, "test": 2}
    # Column k of the corpus is A424 label k + 1: each cleaned column correlates best with the
    # series painted into that parcel (the noise is independent per parcel).
    for i, row in corpus.manifest.iterrows():
        got = corpus.read(i, scaled=False)
        src = painted[row["subject"]]
        grid = np.arange(len(got)) * 0.735 / HCP_TR     # output frame j, in source frames
        ref = np.stack([np.interp(grid, np.arange(len(src)), src[:, k]) for k in range(424)], 1)
        g, r = got[20:-20] - got[20:-20].mean(0), ref[20:-20] - ref[20:-20].mean(0)
        corr = (g / np.linalg.norm(g, axis=0)).T @ (r / np.linalg.norm(r, axis=0))
        assert (corr.argmax(1) == np.arange(424)).all()
        assert np.diag(corr).min() > 0.8   # measured 0.91-0.95; next best at most 0.89

    assert main(["embed", str(ckpt), str(corpus_dir), "--out", str(root / "emb.parquet")]) == 0
    emb = pd.read_parquet(root / "emb.parquet")
    assert len(emb) == len(corpus.manifest) and np.isfinite(emb.filter(like="emb").to_numpy()).all()
    again = root / "emb2.parquet"
    assert main(["embed", str(ckpt), str(corpus_dir), "--out", str(again)]) == 0
    pd.testing.assert_frame_equal(emb, pd.read_parquet(again))   # deterministic

    study = root / "study" / "results"    # the task outputs, then one report of them
    assert main(["evaluate", "recon", str(ckpt), str(corpus_dir), "--out", str(study / "reconstruction")]) == 0
    recon = json.loads((study / "reconstruction" / "reconstruction.json").read_text())
    assert recon["checkpoint"] == str(ckpt) and recon["recordings"] == 2
    assert {"brainlm", "spatial"} <= set(recon["methods"])

    labels = root / "networks.tsv"
    xyz = np.asarray(load_atlas("a424").xyz, dtype=float)
    y_mid = np.median(xyz[:, 1])
    rows = [f"{n}\t{'L' if x < 0 else 'R'}{'ant' if y > y_mid else 'post'}"
            for n, (x, y, _) in zip(load_atlas("a424").parcel_names, xyz)]
    labels.write_text("name\tnetwork\n" + "\n".join(rows) + "\n")
    assert main(["networks", str(ckpt), str(corpus_dir), "--labels", str(labels),
                 "--out", str(study / "networks-a424")]) == 0
    networks = json.loads((study / "networks-a424" / "networks.json").read_text())
    assert networks["labelled_parcels"] == 424
    assert main(["report", str(study.parent)]) == 0
    page = (study.parent / "report.html").read_text()
    assert f"checkpoint(s) {ckpt}" in page and 'data-figure="networks_confusion"' in page
    # The corpus the results name is described (it is readable from here), with its contract.
    assert "Corpora (splits by subject" in page and "resampled to TR 0.735 s" in page
    assert "scaled (x - median) / IQR per parcel, fitted on the 2 training recordings" in page


@pytest.mark.slow
def test_scans_on_a424_reach_the_image_family_too(scans):
    root, folder, _ = scans
    ckpt = root / "vit"
    assert main(["import-upstream", str(VIT), "--out", str(ckpt)]) == 0
    corpus_dir = root / "corpus_vit"
    assert main(["prepare", str(folder), "--atlas-image", "a424", "--like", str(ckpt), "--tr",
                 str(HCP_TR), "--out", str(corpus_dir), "--quiet"]) == 0
    assert set(Corpus(corpus_dir).manifest["split"]) == {"test"}    # --like's default splits
    assert main(["embed", str(ckpt), str(corpus_dir), "--out", str(root / "vit.parquet")]) == 0
    assert len(pd.read_parquet(root / "vit.parquet")) == 4


def test_another_atlas_on_an_imported_checkpoint_needs_transfer_atlas(tmp_path, capsys):
    # The paper model reads parcel coordinates, so --transfer-atlas runs it on AAL2 (results
    # differ); without the flag the atlas mismatch is a one-line error naming the corpus.
    from brainlm.data.contract import PreprocessingContract
    from brainlm.data.prepare import PrepareSettings, prepare_corpus

    ckpt = tmp_path / "paper"
    assert main(["import-upstream", str(PAPER), "--out", str(ckpt)]) == 0
    corpus = tmp_path / "aal2"
    prepare_corpus(load_hcp7_aal2()[:2], corpus,
                   PrepareSettings.of(atlas=load_atlas("aal2"), fractions=(0.5, 0.0, 0.5),
                                      contract=PreprocessingContract(target_tr=0.735, detrend=True),
                                      progress=False))
    capsys.readouterr()
    assert main(["embed", str(ckpt), str(corpus), "--out", str(tmp_path / "e.parquet")]) == 2
    err = capsys.readouterr().err
    assert "--transfer-atlas" in err and "'aal2'" in err and "'a424'" in err and str(corpus) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e.parquet").exists()
    assert main(["embed", str(ckpt), str(corpus), "--out", str(tmp_path / "e.parquet"), "--transfer-atlas"]) == 0
    assert len(pd.read_parquet(tmp_path / "e.parquet")) == 2


def test_info_says_what_an_imported_checkpoint_expects(tmp_path, capsys):
    ckpt = tmp_path / "old13m"
    assert main(["import-upstream", str(PAPER), "--out", str(ckpt),
                 "--normalization", "subtract-mean-global-std"]) == 0
    capsys.readouterr()
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"checkpoint {ckpt}: upstream-brainlm")
    assert "atlas: a424 (424 parcels)" in out and "detrend False" in out and "TR 0.735 s" in out
    assert "input scaling: demean (recording), statistics each recording's own; gain 0.0241" in out
    assert "normalization subtract-mean-global-std" in out
    assert f"brainlm prepare SCANS --atlas-image a424 --like {ckpt}" in out
    assert main(["info", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preprocessing"]["input_gain"] == pytest.approx(1 / 41.44047)
    assert info["upstream"]["upstream_column"] == "Subtract_Mean_Divide_Global_STD_Normalized_Recording"
    assert info["spatial_baseline"] is False and info["model"]["n_parcels"] == 424
    assert main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "not found: expected a corpus folder, a checkpoint folder, the name of a shipped model" in err
    assert "or a Hub id (hf://ORG/REPO[/SUBFOLDER])" in err
