import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from brainlm import BrainLMInputError
from brainlm.data.atlas import load_atlas
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.windows import CorpusDataModule, WindowDataset


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, hcp):
    # Runs of different lengths so tiling is not trivially uniform.
    recs = []
    for rec, n in zip(hcp, [1200, 1000, 650, 420, 1200, 900, 199]):
        r = type(rec)(rec.timeseries[:n], rec.tr, rec.atlas, subject=rec.subject)
        recs.append(r)
    return prepare_corpus(recs, tmp_path_factory.mktemp("w") / "c",
                          PrepareSettings.of(atlas=load_atlas("aal2"), min_trs=100, fractions=(0.6, 0.2, 0.2)))


def test_tiles_are_deterministic_and_cover_each_recording(corpus):
    ds = WindowDataset(corpus, None, window_trs=200, mode="tiles")
    lengths = corpus.manifest["n_trs"].to_numpy()
    fits = lengths >= 200
    assert len(ds) == int((lengths[fits] // 200).sum()) and ds.n_dropped == 1
    seen = [ds.locate(i) for i in range(len(ds))]
    for row in np.flatnonzero(fits):
        starts = [s for r, s in seen if r == row]
        assert starts == list(range(0, lengths[row] - 199, 200))
    item = ds[5]
    row, start = seen[5]
    assert item["window"].shape == (200, 94) and item["window"].dtype == torch.float32
    assert item["xyz"].shape == (94, 3)
    np.testing.assert_array_equal(item["window"].numpy(), corpus.read(row, start, start + 200))
    overl = WindowDataset(corpus, None, window_trs=200, mode="tiles", stride=50)
    assert len(overl) == int(((lengths[fits] - 200) // 50 + 1).sum())


def test_random_crops_vary_and_are_reproducible(corpus):
    ds = WindowDataset(corpus, "train", window_trs=200, crops_per_recording=4)
    assert len(ds) == 4 * len(ds.rows)
    torch.manual_seed(0)
    a = [ds.locate(i) for i in range(len(ds))]
    torch.manual_seed(0)
    b = [ds.locate(i) for i in range(len(ds))]
    assert a == b
    assert len({s for _, s in a}) > len(ds.rows)  # crops differ within a recording
    lengths = dict(zip(range(len(corpus)), corpus.manifest["n_trs"]))
    assert all(0 <= s <= lengths[r] - 200 for r, s in a)
    assert {r for r, _ in a} == set(ds.rows.tolist())
    assert set(corpus.manifest.loc[list(ds.rows), "split"]) == {"train"}


def test_workers_see_the_same_tiles(corpus):
    ds = WindowDataset(corpus, None, window_trs=200, mode="tiles")
    serial = torch.cat([b["window"] for b in DataLoader(ds, batch_size=4)])
    parallel = torch.cat([b["window"] for b in DataLoader(ds, batch_size=4, num_workers=2)])
    assert torch.equal(serial, parallel)


def test_datamodule(corpus):
    dm = CorpusDataModule(corpus.path, window_trs=200, batch_size=3)
    batch = next(iter(dm.train_dataloader()))
    assert batch["window"].shape[1:] == (200, 94) and batch["xyz"].shape[1:] == (94, 3)
    val = [b for b in dm.val_dataloader()]
    assert all(set(corpus.manifest.loc[b["recording"].tolist(), "split"]) == {"val"} for b in val)
    again = [b for b in dm.val_dataloader()]
    assert all(torch.equal(x["window"], y["window"]) for x, y in zip(val, again))


def test_bad_window_options(corpus):
    with pytest.raises(BrainLMInputError, match="no recording in split 'train' has 5000 TRs"):
        WindowDataset(corpus, "train", window_trs=5000)
    with pytest.raises(BrainLMInputError, match="mode"):
        WindowDataset(corpus, "train", mode="sliding")
    with pytest.raises(BrainLMInputError, match="unknown split"):
        WindowDataset(corpus, "training")


def test_a_scaler_replaces_the_corpus_scaling(corpus):
    # Another contract's statistics (a checkpoint's): windows are its scale of the cleaned signal.
    other = type(corpus.contract).from_dict(corpus.contract.to_dict())
    other.median = (np.asarray(corpus.contract.median) + 0.5).tolist()
    other.iqr = (2 * np.asarray(corpus.contract.iqr)).tolist()
    own = WindowDataset(corpus, None, window_trs=200, mode="tiles")
    scaled = WindowDataset(corpus, None, window_trs=200, mode="tiles", scaler=other)
    row, start = scaled.locate(3)
    raw = corpus.read(row, start, start + 200, scaled=False)
    np.testing.assert_array_equal(scaled[3]["window"].numpy(), other.scale(raw))
    assert not np.allclose(scaled[3]["window"].numpy(), own[3]["window"].numpy())
    # The corpus' own contract as the scaler gives exactly the default windows.
    same = WindowDataset(corpus, None, window_trs=200, mode="tiles", scaler=corpus.contract)
    np.testing.assert_array_equal(same[3]["window"].numpy(), own[3]["window"].numpy())
    dm = CorpusDataModule(corpus.path, window_trs=200, batch_size=2, scaler=other)
    batch = next(iter(dm.val_dataloader()))
    r, s = int(batch["recording"][0]), int(batch["start"][0])
    np.testing.assert_array_equal(batch["window"][0].numpy(), other.scale(corpus.read(r, s, s + 200, scaled=False)))
    unfitted = type(corpus.contract)()
    with pytest.raises(BrainLMInputError, match="no fitted scaling"):
        WindowDataset(corpus, None, window_trs=200, scaler=unfitted)
