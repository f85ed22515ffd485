import numpy as np
import pytest

from brainlm import Atlas, BrainLMInputError, Recording, load_atlas


def small_atlas(p=4):
    return Atlas("toy", [f"p{i}" for i in range(p)], np.arange(p * 3).reshape(p, 3) * 10.0,
                 networks=["A", "A", "B", "B"][:p])


def test_atlas_validation_messages(tmp_path):
    with pytest.raises(BrainLMInputError, match="duplicates"):
        Atlas("x", ["a", "a"], np.zeros((2, 3)))
    with pytest.raises(BrainLMInputError, match=r"shape \(2, 2\); expected \(2, 3\)"):
        Atlas("x", ["a", "b"], np.zeros((2, 2)))
    with pytest.raises(BrainLMInputError, match="Voxel indices"):
        Atlas("x", ["a", "b"], np.full((2, 3), 250.0))
    bad = tmp_path / "atlas.tsv"
    bad.write_text("label\tx\ty\tz\na\t1\t2\t3\n")
    with pytest.raises(BrainLMInputError, match=r"atlas.tsv.*lacks column\(s\) \['name'\]"):
        Atlas.from_table(bad)
    with pytest.raises(BrainLMInputError, match="unknown atlas 'nope'"):
        load_atlas("nope")


def test_atlas_round_trips_through_table_and_dict(tmp_path):
    a = load_atlas("schaefer100")
    a.to_table(tmp_path / "a.tsv")
    b = Atlas.from_table(tmp_path / "a.tsv", name="schaefer100")
    assert b.matches(a) and b.networks == a.networks
    c = Atlas.from_dict(a.to_dict())
    assert c.matches(a) and c.network_names == ["Vis", "SomMot", "DorsAttn", "SalVentAttn",
                                                 "Limbic", "Cont", "Default"]


@pytest.mark.parametrize("name,n", [("aal2", 94), ("schaefer100", 100), ("schaefer200", 200),
                                    ("schaefer400", 400)])
def test_embedded_atlases_have_brain_coordinates(name, n):
    a = load_atlas(name)
    assert a.n_parcels == n
    # Left-hemisphere parcels sit at negative x in MNI space.
    left = np.array(["_LH_" in nm or nm.endswith("_L") for nm in a.parcel_names])
    assert left.sum() == n // 2
    assert (a.xyz[left, 0] < 0).mean() > 0.9
    assert np.abs(a.xyz).max() < 110


def test_recording_validation():
    atlas = small_atlas()
    x = np.random.default_rng(0).standard_normal((50, 4))
    r = Recording(x, 0.8, atlas, subject="sub-07", session="1", run=2)
    assert r.timeseries.dtype == np.float32 and r.subject == "07" and r.run == "2"
    assert r.id == "sub-07_ses-1_run-2" and r.duration_s == pytest.approx(40.0)
    with pytest.raises(BrainLMInputError, match="transpose"):
        Recording(x.T, 0.8, atlas, subject="a")
    with pytest.raises(BrainLMInputError, match="expected a repetition time > 0"):
        Recording(x, 0, atlas, subject="a")
    with pytest.raises(BrainLMInputError, match="milliseconds"):
        Recording(x, 720, atlas, subject="a")
    y = x.copy()
    y[3, 2] = np.nan
    with pytest.raises(BrainLMInputError, match=r"non-finite.*TR 3.*\['p2'\]"):
        Recording(y, 0.8, atlas, subject="a", source="f.npy")
    with pytest.raises(BrainLMInputError, match="subject"):
        Recording(x, 0.8, atlas, subject=" ")
    with pytest.raises(BrainLMInputError, match="confounds have 10 rows; expected 50"):
        Recording(x, 0.8, atlas, subject="a", confounds=np.zeros((10, 2)))


def test_network_display_order_puts_yeo7_first_and_drops_unlabelled():
    from brainlm.data.atlas import network_order

    assert network_order(["Default", None, "", "Vis", "Zeta", "Alpha", "Vis"]) == ["Vis", "Default", "Alpha", "Zeta"]
    assert network_order(load_atlas("schaefer100").networks) == [
        "Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default"]
