"""Surface scans (GIfTI pairs, CIFTI) + surface atlases, on nilearn's bundled fsaverage5 mesh.

The atlas gives each pial vertex the nearest Schaefer-100 parcel centre of its hemisphere; the
scans paint the real Schaefer-100 run (``load_schaefer100_rest``, 145 TRs, TR 2 s) into it.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel import cifti2
from nibabel.gifti import GiftiDataArray, GiftiImage, GiftiLabel, GiftiLabelTable

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.corpus import Corpus
from brainlm.data.extraction import ImageParcellation
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import load_schaefer100_rest
from brainlm.data.surfaces import (extract_surface_signals, hemisphere_of, load_surface_atlas,
                                   read_cifti_series, read_gifti_series)

HEMIS = ("left", "right")


@pytest.fixture(scope="module")
def schaefer():
    return load_atlas("schaefer100")


@pytest.fixture(scope="module")
def rest():
    return load_schaefer100_rest()


@pytest.fixture(scope="module")
def vertex_labels(schaefer):
    """Parcel number 1..100 of every fsaverage5 pial vertex (left hemisphere 1..50)."""
    from nilearn.datasets import load_fsaverage

    pial = load_fsaverage("fsaverage5").pial
    out = {}
    for hemi, sel in (("left", np.arange(50)), ("right", np.arange(50, 100))):
        v = np.asarray(pial.parts[hemi].coordinates)
        d = ((v[:, None] - schaefer.xyz[sel][None]) ** 2).sum(-1)
        out[hemi] = (sel[d.argmin(1)] + 1).astype(np.int32)
    return out


def label_gifti(path, values, names: dict[int, str]):
    table = GiftiLabelTable()
    for key, name in {0: "???", **names}.items():
        lab = GiftiLabel(key=key, red=0.5, green=0.5, blue=0.5, alpha=1.0)
        lab.label = name
        table.labels.append(lab)
    img = GiftiImage(labeltable=table, darrays=[GiftiDataArray(values.astype(np.int32),
                                                               intent="NIFTI_INTENT_LABEL",
                                                               datatype="NIFTI_TYPE_INT32")])
    nib.save(img, path)


def func_gifti(path, data):
    """(n_vertices, T) as one data array per volume."""
    nib.save(GiftiImage(darrays=[GiftiDataArray(np.ascontiguousarray(col, np.float32),
                                                intent="NIFTI_INTENT_TIME_SERIES")
                                 for col in data.T]), path)


def painted(vertex_labels, series, seed, noise_sd=10.0):
    rng = np.random.default_rng(seed)
    return {h: series[:, vertex_labels[h] - 1].T + rng.normal(0, noise_sd, (vertex_labels[h].size, series.shape[0]))
            for h in HEMIS}


@pytest.fixture(scope="module")
def atlas_files(tmp_path_factory, vertex_labels, schaefer):
    root = tmp_path_factory.mktemp("surf_atlas")
    names = schaefer.parcel_names
    label_gifti(root / "atlas-Sch100_hemi-L.label.gii", vertex_labels["left"],
                {k: names[k - 1] for k in range(1, 51)})
    label_gifti(root / "atlas-Sch100_hemi-R.label.gii", vertex_labels["right"],
                {k: names[k - 1] for k in range(51, 101)})
    # FreeSurfer annotations number each hemisphere 1..50 (0: unknown).
    ctab = np.zeros((51, 5), int)
    ctab[:, :3] = np.arange(51)[:, None] * [5, 3, 2] % 255
    for hemi, offset in (("lh", 0), ("rh", 50)):
        values = vertex_labels["left" if hemi == "lh" else "right"] - offset
        nib.freesurfer.write_annot(root / f"{hemi}.Sch100.annot", values, ctab,
                                   ["unknown"] + list(names[offset:offset + 50]), fill_ctab=True)
    # A CIFTI dlabel (both cortices, every vertex).
    models = (cifti2.BrainModelAxis.from_surface(np.arange(10242), 10242, "CortexLeft")
              + cifti2.BrainModelAxis.from_surface(np.arange(10242), 10242, "CortexRight"))
    table = {0: ("???", (0, 0, 0, 0)), **{k: (names[k - 1], (0.2, 0.4, 0.6, 1.0)) for k in range(1, 101)}}
    lab_axis = cifti2.LabelAxis(["Sch100"], [table])
    data = np.concatenate([vertex_labels["left"], vertex_labels["right"]])[None].astype(np.float32)
    nib.save(cifti2.Cifti2Image(data, header=(lab_axis, models)), root / "atlas-Sch100_dseg.dlabel.nii")
    return root


def test_atlas_files_agree_and_centres_are_mean_vertex_coordinates(atlas_files, vertex_labels, schaefer):
    from nilearn.datasets import load_fsaverage

    gii = load_surface_atlas([atlas_files / "atlas-Sch100_hemi-R.label.gii",
                              atlas_files / "atlas-Sch100_hemi-L.label.gii"])   # order read from names
    annot = load_surface_atlas([atlas_files / "lh.Sch100.annot", atlas_files / "rh.Sch100.annot"])
    dlabel = load_surface_atlas(atlas_files / "atlas-Sch100_dseg.dlabel.nii")
    for a in (gii, annot, dlabel):
        assert a.atlas.parcel_names == schaefer.parcel_names and a.mesh == "fsaverage5"
        for h in HEMIS:
            np.testing.assert_array_equal(a.labels[h], vertex_labels[h])
    assert gii.atlas.name == "Sch100" and gii.atlas.space == "fsaverage5-pial (approx. MNI)"
    pial = load_fsaverage("fsaverage5").pial
    expected = np.array([np.asarray(pial.parts["left" if k < 50 else "right"].coordinates)
                         [vertex_labels["left" if k < 50 else "right"] == k + 1].mean(0) for k in range(100)])
    np.testing.assert_allclose(gii.atlas.xyz, expected, atol=1e-3)
    # Cells grown from the volumetric Schaefer centres lie near them (pial surface vs. grey matter).
    assert np.median(np.linalg.norm(gii.atlas.xyz - schaefer.xyz, axis=1)) < 15
    assert hemisphere_of("lh.aparc.annot") == "left" and hemisphere_of("sub-1_hemi-R_bold.func.gii") == "right"


def test_gifti_round_trip(atlas_files, vertex_labels, rest, tmp_path):
    atlas = load_surface_atlas([atlas_files / "lh.Sch100.annot", atlas_files / "rh.Sch100.annot"])
    data = painted(vertex_labels, rest.timeseries, seed=0)
    func_gifti(tmp_path / "sub-1_task-rest_hemi-L_space-fsaverage5_bold.func.gii", data["left"])
    func_gifti(tmp_path / "sub-1_task-rest_hemi-R_space-fsaverage5_bold.func.gii", data["right"])
    series = read_gifti_series(tmp_path / "sub-1_task-rest_hemi-L_space-fsaverage5_bold.func.gii",
                               tmp_path / "sub-1_task-rest_hemi-R_space-fsaverage5_bold.func.gii")
    sig = extract_surface_signals(series, atlas)
    means = np.stack([data["left" if k < 50 else "right"][vertex_labels["left" if k < 50 else "right"] == k + 1].mean(0)
                      for k in range(100)], axis=1)
    np.testing.assert_allclose(sig.data, means, rtol=1e-5)
    counts = np.bincount(np.concatenate([vertex_labels["left"], vertex_labels["right"]]), minlength=101)[1:]
    assert np.all(np.abs(sig.data - rest.timeseries).std(0) < 3 * 10 / np.sqrt(counts))


def test_cifti_leaves_out_missing_vertices(atlas_files, vertex_labels, rest, tmp_path):
    """A dtseries without the vertices of one parcel (as a medial wall) and 5% random others."""
    atlas = load_surface_atlas(atlas_files / "atlas-Sch100_dseg.dlabel.nii")
    rng = np.random.default_rng(1)
    data = painted(vertex_labels, rest.timeseries, seed=1)
    keep = {h: np.flatnonzero((rng.random(10242) > 0.05) & (vertex_labels[h] != 7 + 50 * (h == "right")))
            for h in HEMIS}
    models = (cifti2.BrainModelAxis.from_surface(keep["left"], 10242, "CortexLeft")
              + cifti2.BrainModelAxis.from_surface(keep["right"], 10242, "CortexRight"))
    series_axis = cifti2.SeriesAxis(start=0, step=2.0, size=rest.n_timepoints)
    matrix = np.concatenate([data["left"][keep["left"]], data["right"][keep["right"]]]).T.astype(np.float32)
    path = tmp_path / "sub-1_task-rest_space-fsaverage5_bold.dtseries.nii"
    nib.save(cifti2.Cifti2Image(matrix, header=(series_axis, models)), path)
    series, tr = read_cifti_series(path)
    assert tr == 2.0 and np.isnan(series["left"][vertex_labels["left"] == 7]).all()
    sig = extract_surface_signals(series, atlas)
    assert sig.empty_parcels == [6, 56]
    expected = data["left"][np.intersect1d(keep["left"], np.flatnonzero(vertex_labels["left"] == 1))].mean(0)
    np.testing.assert_allclose(sig.data[:, 0], expected, rtol=1e-5)
    with pytest.raises(BrainLMInputError, match=r"2 parcel\(s\) have no vertex .*7Networks_LH_Vis_7"):
        ImageParcellation(atlas).extract("cifti", [path], source=str(path))
    raw, info = ImageParcellation(atlas, bad_parcels="zero").extract("cifti", [path], source=str(path))
    assert raw.tr == 2.0 and info["empty_parcels"] == ["7Networks_LH_Vis_7", "7Networks_RH_Vis_7"]


def test_prepare_cli_on_gifti_and_cifti_scans(atlas_files, vertex_labels, rest, tmp_path, capsys):
    root = tmp_path / "fmriprep"
    for i in range(3):
        func = root / f"sub-{i}" / "func"
        func.mkdir(parents=True)
        data = painted(vertex_labels, rest.timeseries, seed=10 + i)
        for hemi, h in (("L", "left"), ("R", "right")):
            stem = f"sub-{i}_task-rest_hemi-{hemi}_space-fsaverage5_bold"
            func_gifti(func / f"{stem}.func.gii", data[h])
            (func / f"{stem}.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    out = tmp_path / "corpus"
    rc = main(["prepare", str(root), "--atlas-image", str(atlas_files / "lh.Sch100.annot"),
               "--atlas-image", str(atlas_files / "rh.Sch100.annot"), "--out", str(out),
               "--min-trs", "100", "--splits", "0.34,0.33,0.33", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    corpus = Corpus(out)
    assert len(corpus.manifest) == 3 and set(corpus.manifest["tr"]) == {2.0}
    assert corpus.atlas.parcel_names == load_atlas("schaefer100").parcel_names
    assert corpus.info["ingestion"]["atlas_image"]["masker"] == "nilearn.maskers.SurfaceLabelsMasker"
    got = corpus.read(0, scaled=False)
    expected = corpus.contract.clean(rest.timeseries, 2.0).data
    assert min(np.corrcoef(got[:, p], expected[:, p])[0, 1] for p in range(100)) > 0.95

    # fMRIPrep confounds beside a GIfTI pair: nilearn's loader finds them from the pair.
    from brainlm.data.example_scans import confounds_table
    from brainlm.data.fmriprep import parse_confound_strategy

    func = root / "sub-0" / "func"
    conf, meta = confounds_table(rest.n_timepoints, seed=0)
    conf.to_csv(func / "sub-0_task-rest_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    (func / "sub-0_task-rest_desc-confounds_timeseries.json").write_text(json.dumps(meta))
    pair = sorted(func.glob("*.func.gii"))
    atlas = load_surface_atlas([atlas_files / "lh.Sch100.annot", atlas_files / "rh.Sch100.annot"])
    raw, info = ImageParcellation(atlas, confounds=parse_confound_strategy("simple")).extract(
        "gifti", pair, source="pair")
    n_cos = len([c for c in conf.columns if c.startswith("cosine")])
    assert info["confound_regressors"] == 24 + 2 + n_cos and raw.data.shape == (rest.n_timepoints - 1, 100)

    # Naming one hemisphere of a GIfTI scan is enough: its twin is found.
    rc = main(["prepare", str(root / "sub-0" / "func" / "sub-0_task-rest_hemi-L_space-fsaverage5_bold.func.gii"),
               "--atlas-image", str(atlas_files / "lh.Sch100.annot"), "--atlas-image",
               str(atlas_files / "rh.Sch100.annot"), "--out", str(tmp_path / "one"), "--min-trs", "100",
               "--splits", "1,0,0", "--quiet"])
    assert rc == 0


def test_surface_bad_input(atlas_files, vertex_labels, tmp_path):
    wrong = tmp_path / "lh.small.label.gii"
    label_gifti(wrong, np.ones(2562, np.int32), {1: "a"})
    label_gifti(tmp_path / "rh.small.label.gii", np.ones(2562, np.int32) * 2, {2: "b"})
    with pytest.raises(BrainLMInputError, match=r"2562 \+ 2562 vertices; only fsaverage5"):
        load_surface_atlas([wrong, tmp_path / "rh.small.label.gii"])
    atlas = load_surface_atlas(atlas_files / "atlas-Sch100_dseg.dlabel.nii")
    with pytest.raises(BrainLMInputError, match=r"scan.gii: the left hemisphere has 2562 vertices; the atlas has 10242"):
        extract_surface_signals({"left": np.zeros((2562, 5)), "right": np.zeros((2562, 5))}, atlas,
                                source="scan.gii")
    with pytest.raises(BrainLMInputError, match="a volumetric scan needs a volumetric atlas image"):
        ImageParcellation(atlas).extract("volume", [tmp_path / "x.nii.gz"], source="x.nii.gz")
    lonely = tmp_path / "sub-1_task-rest_hemi-L_space-fsaverage5_bold.func.gii"
    func_gifti(lonely, np.zeros((10242, 3)))
    with pytest.raises(BrainLMInputError, match="other hemisphere of this GIfTI scan is missing"):
        prepare_corpus([lonely], tmp_path / "c", PrepareSettings.of(atlas_image=atlas, tr=2.0))
