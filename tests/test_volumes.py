"""4-D NIfTI + atlas image -> parcel time series, on images built from the real HCP AAL2 data.

The labels atlas is a coarse MNI grid whose in-brain voxels take the label of the nearest AAL2
parcel centre (``load_atlas("aal2").xyz``, within 20 mm); the 4-D image paints each HCP parcel
time series into its voxels (plus noise), so parcellating the image must give back the HCP series.
"""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.example_scans import paint, voronoi_labels
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.volumes import (AtlasResampledWarning, extract_volume_signals, load_volume_atlas,
                                  read_labels_table)

N_TRS = 240


def write_labels_tsv(path, atlas, networks=False):
    df = pd.DataFrame({"index": np.arange(1, atlas.n_parcels + 1), "name": atlas.parcel_names})
    if networks:
        df["network"] = ["left" if n.endswith("_L") else "right" for n in atlas.parcel_names]
    df.to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture(scope="module")
def aal2():
    return load_atlas("aal2")


@pytest.fixture(scope="module")
def labels6(aal2):
    return voronoi_labels(aal2.xyz, 6)


@pytest.fixture(scope="module")
def scans(tmp_path_factory, labels6, aal2, hcp):
    """Atlas (6 mm) + labels table + three painted 4-D scans of 240 TRs (float32, int16)."""
    root = tmp_path_factory.mktemp("vol")
    nib.save(labels6, root / "atlas-AAL2vor_dseg.nii.gz")
    write_labels_tsv(root / "atlas-AAL2vor_dseg.tsv", aal2, networks=True)
    bold = root / "bold"
    bold.mkdir()
    for i in range(3):
        img = paint(labels6, hcp[i].timeseries[:N_TRS], noise_sd=20.0, seed=i,
                    dtype=np.int16 if i == 1 else np.float32)
        nib.save(img, bold / f"sub-{hcp[i].subject}_task-rest_bold.nii.gz")
        (bold / f"sub-{hcp[i].subject}_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 0.72}))
    return root


# -- atlas --------------------------------------------------------------------------------------
def test_atlas_centres_come_from_the_image(scans, labels6, aal2):
    va = load_volume_atlas(scans / "atlas-AAL2vor_dseg.nii.gz", scans / "atlas-AAL2vor_dseg.tsv")
    assert va.kind == "labels" and va.atlas.name == "AAL2vor"
    assert va.atlas.parcel_names == aal2.parcel_names
    assert va.atlas.networks[:2] == ("left", "right")
    # Centre of mass of each label's voxels, through the affine (mm), computed independently.
    lab = np.asarray(labels6.dataobj)
    expected = np.array([nib.affines.apply_affine(labels6.affine, np.argwhere(lab == k).mean(0))
                         for k in range(1, 95)])
    np.testing.assert_allclose(va.atlas.xyz, expected, atol=1e-3)
    # ... and close to the AAL2 centres the labels were grown from (cells of a 6 mm grid).
    err = np.linalg.norm(va.atlas.xyz - aal2.xyz, axis=1)
    assert np.median(err) < 5 and err.max() < 15


def test_labels_table_formats(tmp_path, aal2):
    txt = tmp_path / "aal.txt"
    txt.write_text("".join(f"{k} {n} {2000 + k}\n" for k, n in enumerate(aal2.parcel_names[:3], 1)))
    df = read_labels_table(txt)
    assert df["index"].tolist() == [1, 2, 3] and df["name"].tolist() == list(aal2.parcel_names[:3])
    names_only = tmp_path / "names.txt"
    names_only.write_text("A\nB\n")
    assert read_labels_table(names_only)["index"].tolist() == [1, 2]
    csv = tmp_path / "lut.csv"
    pd.DataFrame({"label": [0, 5], "name": ["Background", "X"]}).to_csv(csv, index=False)
    assert read_labels_table(csv).to_dict("list") == {"index": [5], "name": ["X"]}
    pd.DataFrame({"value": [1], "colour": ["red"]}).to_csv(csv, index=False)
    with pytest.raises(BrainLMInputError, match="lut.csv: atlas labels table has no name column"):
        read_labels_table(csv)
    pd.DataFrame({"value": [0, 5], "name": ["Background", "X"]}).to_csv(csv, index=False)
    assert read_labels_table(csv).to_dict("list") == {"index": [5], "name": ["X"]}
    bad = tmp_path / "bad.tsv"
    pd.DataFrame({"index": [1, 1], "name": ["a", "b"]}).to_csv(bad, sep="\t", index=False)
    with pytest.raises(BrainLMInputError, match=r"bad.tsv: .*label value\(s\) \[1\] more than once"):
        read_labels_table(bad)


def test_labels_table_must_match_the_image(scans, aal2, tmp_path):
    short = tmp_path / "short.tsv"
    pd.DataFrame({"index": np.arange(1, 94), "name": aal2.parcel_names[:93]}).to_csv(short, sep="\t", index=False)
    with pytest.raises(BrainLMInputError, match=r"atlas-AAL2vor_dseg.nii.gz: .*label value\(s\) \[94\]"):
        load_volume_atlas(scans / "atlas-AAL2vor_dseg.nii.gz", short)
    extra = tmp_path / "extra.tsv"
    pd.DataFrame({"index": np.arange(1, 96), "name": list(aal2.parcel_names) + ["ghost"]}).to_csv(
        extra, sep="\t", index=False)
    with pytest.raises(BrainLMInputError, match=r"no voxel with label value\(s\) \[95\]"):
        load_volume_atlas(scans / "atlas-AAL2vor_dseg.nii.gz", extra)
    floats = tmp_path / "floats.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 0.5, np.float32), np.eye(4)), floats)
    with pytest.raises(BrainLMInputError, match="non-integer values"):
        load_volume_atlas(floats)


# -- extraction -----------------------------------------------------------------------------------
def test_round_trip_recovers_the_hcp_series(scans, hcp, labels6):
    va = load_volume_atlas(scans / "atlas-AAL2vor_dseg.nii.gz", scans / "atlas-AAL2vor_dseg.tsv")
    path = scans / "bold" / f"sub-{hcp[0].subject}_task-rest_bold.nii.gz"
    sig = extract_volume_signals(path, va, read_volumes=1000)
    assert sig.data.shape == (N_TRS, 94) and sig.empty_parcels == [] and sig.notes == []
    assert sig.header_tr == pytest.approx(0.72)
    # Exactly the mean of each parcel's voxels of the stored image ...
    data = np.asarray(nib.load(path).dataobj, dtype=np.float64)
    lab = np.asarray(labels6.dataobj)
    means = np.stack([data[lab == k].mean(0) for k in range(1, 95)], axis=1)
    np.testing.assert_allclose(sig.data, means, rtol=1e-5)
    # ... which is the HCP series up to the averaged noise (sd 20 / sqrt(voxels)).
    source = hcp[0].timeseries[:N_TRS]
    sizes = np.bincount(lab.ravel(), minlength=95)[1:]
    resid_sd = (sig.data - source).std(0)
    assert np.all(resid_sd < 3 * 20 / np.sqrt(sizes))
    # Reading 7 volumes at a time gives the same numbers.
    np.testing.assert_array_equal(extract_volume_signals(path, va, read_volumes=7).data, sig.data)


def test_atlas_on_another_grid_is_resampled_with_a_warning(scans, hcp, aal2, tmp_path):
    fine = voronoi_labels(aal2.xyz, 4)
    nib.save(fine, tmp_path / "aal2_4mm.nii.gz")
    va = load_volume_atlas(tmp_path / "aal2_4mm.nii.gz", scans / "atlas-AAL2vor_dseg.tsv")
    path = scans / "bold" / f"sub-{hcp[0].subject}_task-rest_bold.nii.gz"
    sig = extract_volume_signals(path, va)
    assert len(sig.notes) == 1 and "resampled to the data grid (6x6x6 mm" in sig.notes[0]
    # The 4 mm and 6 mm Voronoi cells mostly agree: the signals follow the source.
    source = hcp[0].timeseries[:N_TRS]
    ok = [p for p in range(94) if p not in sig.empty_parcels]
    r = [np.corrcoef(sig.data[:, p], source[:, p])[0, 1] for p in ok]
    assert np.median(r) > 0.9 and len(ok) >= 90

    with pytest.warns(AtlasResampledWarning, match="resampled to the data grid"):
        corpus = prepare_corpus([scans / "bold"], tmp_path / "c",
                                PrepareSettings.of(atlas_image=va, min_trs=100,
                                                   contract=PreprocessingContract(bad_parcels="zero")))
    assert corpus.info["ingestion"]["notes"][0].endswith("(3 scans)")


def test_bad_images(scans, tmp_path, hcp):
    va = load_volume_atlas(scans / "atlas-AAL2vor_dseg.nii.gz")
    assert va.atlas.parcel_names[0] == "label-1"
    img = nib.load(scans / "bold" / f"sub-{hcp[0].subject}_task-rest_bold.nii.gz")
    three_d = tmp_path / "sub-x_bold.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj[..., 0]), img.affine), three_d)
    with pytest.raises(BrainLMInputError, match=r"sub-x_bold.nii.gz: image is 3-D .*expected a 4-D"):
        extract_volume_signals(three_d, va)
    far = tmp_path / "sub-far_bold.nii.gz"
    shifted = img.affine.copy()
    shifted[:3, 3] += 500
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj[..., :4]), shifted), far)
    with pytest.raises(BrainLMInputError, match=r"sub-far_bold.nii.gz: atlas image .* does not overlap the data"):
        extract_volume_signals(far, va)


def test_probabilistic_maps(tmp_path, hcp, aal2):
    """Gaussian maps around 12 AAL2 centres; the image is their weighted sum with the HCP series,
    which NiftiMapsMasker's least-squares fit recovers."""
    from nilearn.datasets import load_mni152_brain_mask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        brain = load_mni152_brain_mask(resolution=6)
    idx = np.arange(0, 94, 8)[:12]
    ijk = np.indices(brain.shape).reshape(3, -1).T
    world = nib.affines.apply_affine(brain.affine, ijk)
    d2 = ((world[:, None, :] - aal2.xyz[idx][None]) ** 2).sum(-1)
    maps = np.exp(-d2 / (2 * 8.0 ** 2)).reshape(brain.shape + (idx.size,)).astype(np.float32)
    maps[maps < 1e-3] = 0
    nib.save(nib.Nifti1Image(maps, brain.affine), tmp_path / "maps.nii.gz")
    names = tmp_path / "maps.tsv"
    pd.DataFrame({"name": [aal2.parcel_names[i] for i in idx]}).to_csv(names, sep="\t", index=False)
    va = load_volume_atlas(tmp_path / "maps.nii.gz", names)
    assert va.kind == "maps" and va.atlas.n_parcels == 12
    np.testing.assert_allclose(va.atlas.xyz, aal2.xyz[idx], atol=6.0)  # within a voxel
    series = hcp[1].timeseries[:100][:, idx].astype(np.float64)
    data = np.tensordot(maps, series.T, axes=([3], [0])).astype(np.float32)
    nib.save(nib.Nifti1Image(data, brain.affine), tmp_path / "sub-m_bold.nii.gz")
    sig = extract_volume_signals(tmp_path / "sub-m_bold.nii.gz", va)
    np.testing.assert_allclose(sig.data, series, rtol=1e-3)


# -- prepare end to end ------------------------------------------------------------------------
def test_prepare_cli_from_nifti_matches_prepare_from_tables(scans, hcp, tmp_path, capsys):
    out = tmp_path / "corpus"
    rc = main(["prepare", str(scans / "bold"), "--atlas-image", str(scans / "atlas-AAL2vor_dseg.nii.gz"),
               "--atlas-labels", str(scans / "atlas-AAL2vor_dseg.tsv"), "--out", str(out),
               "--psc", "--min-trs", "100", "--splits", "0.34,0.33,0.33", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    corpus = Corpus(out)
    m = corpus.manifest
    assert len(m) == 3 and set(m["n_trs"]) == {N_TRS} and set(m["tr"]) == {0.72}
    assert corpus.atlas.parcel_names == load_atlas("aal2").parcel_names
    info = corpus.info["ingestion"]
    assert info["atlas_image"]["masker"] == "nilearn.maskers.NiftiLabelsMasker"
    assert info["confounds"]["strategy"] == "none"   # plain NIfTI: no fMRIPrep confounds
    ing = pd.read_parquet(out / "ingestion.parquet")
    assert ing["volumes"].tolist() == [N_TRS] * 3
    # The same contract on the HCP tables gives nearly the same cleaned data (noise averaged out).
    for row in range(3):
        sub = m["subject"].iat[row]
        rec = next(r for r in hcp if r.subject == sub)
        expected = corpus.contract.clean(rec.timeseries[:N_TRS], 0.72).data
        got = corpus.read(row, scaled=False)
        r = [np.corrcoef(got[:, p], expected[:, p])[0, 1] for p in range(94)]
        assert np.min(r) > 0.97


def test_empty_parcels_follow_the_bad_parcels_policy(scans, hcp, tmp_path, labels6):
    """A scan whose field of view stops at z = 0 mm leaves the lower parcels without voxels."""
    src = nib.load(scans / "bold" / f"sub-{hcp[0].subject}_task-rest_bold.nii.gz")
    k0 = int(round(np.linalg.solve(src.affine, [0, 0, 0, 1])[2]))
    cut = nib.Nifti1Image(np.asarray(src.dataobj)[:, :, k0:], src.affine @ nib.affines.from_matvec(
        np.eye(3), [0, 0, k0]))
    folder = tmp_path / "cut"
    folder.mkdir()
    for i in range(3):
        nib.save(cut, folder / f"sub-{i}_task-rest_bold.nii.gz")
    image = (scans / "atlas-AAL2vor_dseg.nii.gz", scans / "atlas-AAL2vor_dseg.tsv")
    with pytest.raises(BrainLMInputError, match=r"sub-0_task-rest_bold.nii.gz: \d+ parcel\(s\) have no voxel .*--bad-parcels zero"):
        prepare_corpus([folder], tmp_path / "c1",
                       PrepareSettings.of(atlas_image=image[0], atlas_labels=image[1], tr=0.72, min_trs=100))
    with pytest.warns(AtlasResampledWarning, match=r"to the data grid \(6x6x6 mm, 34x40x21\)"):
        corpus = prepare_corpus([folder], tmp_path / "c2",
                                PrepareSettings.of(atlas_image=image[0], atlas_labels=image[1], tr=0.72,
                                                   min_trs=100,
                                                   contract=PreprocessingContract(bad_parcels="zero")))
    # Missing: exactly the parcels whose voxels all lie below z = 0 mm.
    lab = np.asarray(labels6.dataobj)
    z = nib.affines.apply_affine(labels6.affine, np.argwhere(lab > 0))[:, 2]
    top = pd.Series(z).groupby(lab[lab > 0]).max()
    expected = {k - 1 for k, zmax in top.items() if zmax < 0}
    assert 5 < len(expected) < 40
    for row in range(3):
        assert set(corpus.manifest["bad_parcels"].iat[row]) == expected
    assert corpus.atlas.parcel_names.index("Temporal_Inf_L") in expected
    assert np.all(corpus.read(0)[:, sorted(expected)] == 0)
    assert np.all(corpus.read(0, scaled=False)[:, sorted(expected)] != corpus.read(0, scaled=False)[:, sorted(expected)])


def test_missing_tr_names_the_sidecar_and_the_header(scans, hcp, tmp_path):
    folder = tmp_path / "nosidecar"
    folder.mkdir()
    src = scans / "bold" / f"sub-{hcp[0].subject}_task-rest_bold.nii.gz"
    (folder / "sub-a_task-rest_bold.nii.gz").symlink_to(src)
    with pytest.raises(BrainLMInputError, match=r"sub-a_task-rest_bold.nii.gz: repetition time unknown.*"
                       r"sub-a_task-rest_bold.json.*NIfTI header says 0.72 s: pass --tr 0.72"):
        prepare_corpus([folder], tmp_path / "c",
                       PrepareSettings.of(atlas_image=scans / "atlas-AAL2vor_dseg.nii.gz", min_trs=100))


def test_options_are_checked(scans, tmp_path):
    with pytest.raises(BrainLMInputError, match="either atlas .* or atlas_image"):
        prepare_corpus([scans / "bold"], tmp_path / "c",
                       PrepareSettings.of(atlas=load_atlas("aal2"),
                                          atlas_image=scans / "atlas-AAL2vor_dseg.nii.gz"))
    with pytest.raises(BrainLMInputError, match="holds NIfTI/GIfTI/CIFTI scans: parcellate them with --atlas-image"):
        prepare_corpus([scans / "bold"], tmp_path / "c", PrepareSettings.of(atlas=load_atlas("aal2")))
    assert main(["prepare", str(scans / "bold"), "--out", str(tmp_path / "c")]) == 2
