"""The vendored real fMRI samples and atlases: shapes, metadata, fidelity to the sources, and
basic neuroscience sanity (homotopic and within-network connectivity)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.signal import detrend

from brainlm.data.atlas import EMBEDDED_ATLASES, Atlas, load_atlas
from brainlm.data.samples import load_hcp7_aal2, load_schaefer100_rest

# ../shared beside the checkout (as in CI); tests needing it skip when it is absent.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
YEO7 = {"Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default"}
EXPECTED_PARCELS = {"aal2": 94, "schaefer100": 100, "schaefer200": 200, "schaefer400": 400, "a424": 424}


def _shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"source data {path} not available; the exact comparison with the "
                    "original files needs ../shared/data beside the checkout")
    return path


@pytest.fixture(scope="module")
def hcp():
    return load_hcp7_aal2()


@pytest.fixture(scope="module")
def rest():
    return load_schaefer100_rest()


def _fc(x: np.ndarray) -> np.ndarray:
    return np.corrcoef(detrend(np.asarray(x, dtype=np.float64), axis=0).T)


# -- atlases -----------------------------------------------------------------------------------
def test_every_embedded_atlas_is_tested():
    assert set(EMBEDDED_ATLASES) == set(EXPECTED_PARCELS)


@pytest.mark.parametrize("name", [a for a in EMBEDDED_ATLASES if a != "a424"])
def test_load_atlas_all(name):
    atlas = load_atlas(name)
    assert isinstance(atlas, Atlas)
    assert atlas.name == name
    assert atlas.n_parcels == EXPECTED_PARCELS[name]
    assert atlas.networks is not None
    assert set(atlas.network_names) <= YEO7
    assert np.abs(atlas.xyz).max() < 110
    # Left hemisphere parcels lie at negative x.
    left = [i for i, n in enumerate(atlas.parcel_names) if n.endswith("_L") or "_LH_" in n]
    right = [i for i, n in enumerate(atlas.parcel_names) if n.endswith("_R") or "_RH_" in n]
    assert len(left) + len(right) == atlas.n_parcels
    assert (atlas.xyz[left, 0] < 0).all() and (atlas.xyz[right, 0] > 0).all()


def test_a424_is_the_upstream_parcel_order_without_networks():
    """A424 (the original BrainLM checkpoints' atlas) carries no network labels; its parcels are
    numbered in the order of the upstream coordinate file, both hemispheres present."""
    atlas = load_atlas("a424")
    assert atlas.n_parcels == 424 and atlas.networks is None
    assert atlas.parcel_names[0] == "A424_001" and atlas.parcel_names[-1] == "A424_424"
    assert len(set(atlas.parcel_names)) == 424
    assert np.abs(atlas.xyz).max() < 110
    assert (atlas.xyz[:, 0] < 0).sum() > 150 and (atlas.xyz[:, 0] > 0).sum() > 150


def test_schaefer_atlases_fully_labelled():
    for name in ("schaefer100", "schaefer200", "schaefer400"):
        atlas = load_atlas(name)
        assert all(n is not None for n in atlas.networks), name
        assert set(atlas.networks) == YEO7, name
        # the label is the network field of the Schaefer parcel name
        assert all(p.split("_")[2] == n for p, n in zip(atlas.parcel_names, atlas.networks))
    assert load_atlas("schaefer100").space == "MNI152"
    assert load_atlas("schaefer400").space.startswith("fsaverage5")


def test_aal2_80_cortical_labelled():
    atlas = load_atlas("aal2")
    labelled = [i for i, n in enumerate(atlas.networks) if n is not None]
    assert len(labelled) == 80
    assert set(atlas.networks[i] for i in labelled) <= YEO7
    unlabelled = {atlas.parcel_names[i].rsplit("_", 1)[0]
                  for i in range(94) if atlas.networks[i] is None}
    assert unlabelled == {"Hippocampus", "ParaHippocampal", "Amygdala", "Caudate", "Putamen",
                          "Pallidum", "Thalamus"}


# -- loaders -----------------------------------------------------------------------------------
def test_hcp7_shapes_and_metadata(hcp):
    assert len(hcp) == 7
    atlas = load_atlas("aal2")
    for rec in hcp:
        assert rec.timeseries.shape == (1200, 94)
        assert rec.timeseries.dtype == np.float32
        assert rec.tr == pytest.approx(0.72)
        assert rec.atlas.matches(atlas) and rec.atlas.networks == atlas.networks
        assert rec.subject.isdigit() and len(rec.subject) == 6
        assert (rec.session, rec.run, rec.task, rec.site) == ("1", "1LR", "rest", "HCP")
        assert rec.source == f"brainlm:hcp7_aal2/{rec.subject}"
        assert 5000 < rec.timeseries.mean() < 15000  # raw ROI means, not demeaned
    assert len({r.subject for r in hcp}) == 7
    assert len({r.id for r in hcp}) == 7


def test_schaefer100_shapes_and_metadata(rest):
    assert rest.timeseries.shape == (145, 100)
    assert rest.tr == 2.0
    assert rest.atlas.matches(load_atlas("schaefer100"))
    assert len(set(rest.atlas.networks)) == 7 and None not in rest.atlas.networks
    assert rest.subject == "rest01" and rest.task == "rest"
    conf = rest.confounds
    assert isinstance(conf, pd.DataFrame) and conf.shape == (145, 15)
    assert {"csf", "white_matter", "motion_offset_x", "framewise_displacement"} <= set(conf.columns)
    assert np.isfinite(conf.to_numpy()).all()


def test_schaefer100_dummy_frames(rest):
    full = load_schaefer100_rest(drop_dummy_frames=False)
    assert full.timeseries.shape == (150, 100) and full.confounds.shape == (150, 15)
    np.testing.assert_array_equal(full.timeseries[5:], rest.timeseries)
    pd.testing.assert_frame_equal(full.confounds.iloc[5:].reset_index(drop=True), rest.confounds)
    # the only missing confound value is the FD of the very first frame
    assert full.confounds.isna().to_numpy().sum() == 1
    assert np.isnan(full.confounds.loc[0, "framewise_displacement"])


# -- fidelity to the original files --------------------------------------------------------------
def test_hcp7_equals_source(hcp):
    src = np.load(_shared("hcp7_aal2/hcp7_aal2_rest.npz"), allow_pickle=False)
    assert [r.subject for r in hcp] == [str(s) for s in src["subjects"]]
    for i, rec in enumerate(hcp):
        np.testing.assert_array_equal(rec.timeseries, src["timeseries"][i])
    atlas = load_atlas("aal2")
    assert list(atlas.parcel_names) == [str(n) for n in src["region_names"]]
    np.testing.assert_allclose(atlas.xyz, src["mni_xyz"], atol=6e-4)
    weak = pd.read_csv(_shared("hcp7_aal2/aal2_80cortical_yeo7_weak.tsv"), sep="\t")
    for idx, name, net in zip(weak["aal2_index"], weak["name"], weak["yeo7"]):
        assert atlas.parcel_names[idx - 1] == name and atlas.networks[idx - 1] == net


def test_schaefer100_equals_source():
    folder = _shared("brainfc_rest01_schaefer100")
    rec = load_schaefer100_rest(drop_dummy_frames=False)
    ts = pd.read_csv(folder / "timeseries.tsv", sep="\t")
    rois = pd.read_csv(folder / "rois.tsv", sep="\t")
    assert list(ts.columns) == [str(v) for v in rois["label_value"]]  # columns in rois order
    np.testing.assert_array_equal(rec.timeseries, ts.to_numpy(np.float32))
    conf = pd.read_csv(folder / "confounds.tsv", sep="\t", na_values=["n/a"])
    assert list(rec.confounds.columns) == list(conf.columns)
    np.testing.assert_array_equal(rec.confounds.to_numpy(), conf.to_numpy(np.float32))
    assert list(rec.atlas.parcel_names) == rois["name"].tolist()
    assert list(rec.atlas.networks) == rois["network"].tolist()
    np.testing.assert_allclose(rec.atlas.xyz, rois[["x", "y", "z"]].to_numpy(), atol=6e-4)


@pytest.mark.parametrize("n", [100, 200, 400])
def test_schaefer_atlas_equals_brainspace(n):
    src = np.load(_shared(f"hcp_group_fc_schaefer/schaefer{n}_hcp_group_fc.npz"))
    atlas = load_atlas(f"schaefer{n}")
    assert list(atlas.parcel_names) == [str(p) for p in src["parcel_names"]]
    assert list(atlas.networks) == [str(p) for p in src["network"]]
    if n != 100:  # schaefer100 uses the volumetric MNI centroids of brainfc instead
        np.testing.assert_allclose(atlas.xyz, src["xyz_fsaverage"], atol=6e-4)
    else:  # the two coordinate sets agree to within a centimetre
        dist = np.linalg.norm(atlas.xyz - src["xyz_fsaverage"], axis=1)
        assert np.median(dist) < 5 and dist.max() < 10


# -- real-data sanity --------------------------------------------------------------------------
def test_hcp_homotopic_correlation_positive(hcp):
    names = hcp[0].atlas.parcel_names
    pairs = [(i, names.index(n[:-2] + "_R")) for i, n in enumerate(names) if n.endswith("_L")]
    assert len(pairs) == 47
    li, ri = np.array(pairs).T
    per_subject = []
    for rec in hcp:
        fc = _fc(rec.timeseries)
        homotopic = fc[li, ri].mean()
        per_subject.append(homotopic)
        assert homotopic > fc[np.triu_indices(94, 1)].mean()  # above the average pair
    assert np.mean(per_subject) > 0.3


def test_schaefer100_within_network_exceeds_between(rest):
    nets = np.array(rest.atlas.networks)
    same = nets[:, None] == nets[None, :]
    off_diag = ~np.eye(len(nets), dtype=bool)
    # plain detrended FC
    fc = _fc(rest.timeseries)
    assert fc[same & off_diag].mean() > fc[~same].mean()
    # after regressing out motion and WM/CSF (the provider's confound set) the gap is large
    conf = rest.confounds.drop(columns="framewise_displacement").to_numpy(np.float64)
    t = np.arange(rest.n_timepoints, dtype=np.float64)
    design = np.column_stack([np.ones_like(t), t, conf])
    x = rest.timeseries.astype(np.float64)
    resid = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    fc = np.corrcoef(resid.T)
    assert fc[same & off_diag].mean() - fc[~same].mean() > 0.1


# -- packaging ---------------------------------------------------------------------------------
def _walk(node):
    for child in node.iterdir():
        if child.is_dir():
            yield from _walk(child)
        else:
            yield child


def test_resource_files_small_and_documented():
    root = resources.files("brainlm.data") / "resources"
    files = [f for f in _walk(root) if "__pycache__" not in str(f)]
    names = {f.name for f in files}
    expected = {"aal2.tsv", "schaefer100.tsv", "schaefer200.tsv", "schaefer400.tsv",
                "hcp7_aal2_rest.npz", "schaefer100_rest01.npz", "README.md"}
    assert expected <= names
    total = sum(len(f.read_bytes()) for f in files)
    assert total < 8 * 1024 * 1024, f"package resources take {total / 1e6:.1f} MB"
    readme = (root / "README.md").read_text(encoding="utf-8")
    for fname in expected - {"README.md"}:
        assert fname in readme, f"{fname} not documented in resources/README.md"
